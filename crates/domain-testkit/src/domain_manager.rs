//! Real `domain-manager` replicas in front of a [`SequencerCluster`], and the
//! `domainctl` CLI pointed at them.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cluster::{Placement, SequencerCluster};
use crate::pg::TestDatabase;
use crate::process::{
    ManagedProcess, ProcessBuilder, TestLogs, binary_path, free_port, http_status, wait_for_http_ok,
};

/// Ports and files of one replica.
pub struct DomainManagerNode {
    pub name: String,
    pub admin_port: u16,
    pub ops_port: u16,
    pub config_path: PathBuf,
    pub process: Option<ManagedProcess>,
    /// Where the replica runs and listens (loopback in the root namespace by default).
    pub placement: Placement,
}

impl DomainManagerNode {
    /// `http://127.0.0.1:<port>` on loopback; off loopback the admin API needs TLS with
    /// client certificates, so `https://<addr>:<port>` (its certificate names the address).
    pub fn admin_endpoint(&self) -> String {
        let addr = std::net::SocketAddr::new(self.placement.addr, self.admin_port);
        if self.placement.addr.is_loopback() {
            format!("http://{addr}")
        } else {
            format!("https://{addr}")
        }
    }
    pub fn ops_url(&self) -> String {
        format!(
            "http://{}",
            std::net::SocketAddr::new(self.placement.addr, self.ops_port)
        )
    }
    pub fn process(&mut self) -> anyhow::Result<&mut ManagedProcess> {
        self.process.as_mut().context("replica is not running")
    }
    /// Whether `/health/ready` answers 200 (only the active replica is ready).
    pub async fn is_ready(&self) -> bool {
        matches!(
            http_status(&format!("{}/health/ready", self.ops_url())).await,
            Ok(200)
        )
    }
}

/// Domain-manager replicas sharing one database and the cluster's namespace key.
pub struct DomainManagers {
    pub logs: TestLogs,
    pub database: TestDatabase,
    pub nodes: Vec<DomainManagerNode>,
    /// `--ca/--cert/--key` for `domainctl` when the admin APIs use TLS.
    pub domainctl_tls: Vec<String>,
}

impl DomainManagers {
    /// Writes configs for `replicas` replicas (every sequencer instance of
    /// `cluster` as an endpoint), starts them, and waits until one is active.
    /// `extra_config` is inserted at the top level of every config.
    pub async fn start(
        cluster: &SequencerCluster,
        database: TestDatabase,
        replicas: usize,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        let placements = vec![Placement::default(); replicas];
        Self::start_placed(cluster, database, extra_config, &placements).await
    }

    /// Like [`Self::start`], one replica per entry of `placements` (network namespace,
    /// listen address, database URL). Off loopback the admin APIs serve TLS with a
    /// certificate naming the addresses and require client certificates of the cluster's
    /// CA; [`Self::domainctl`] passes them.
    pub async fn start_placed(
        cluster: &SequencerCluster,
        database: TestDatabase,
        extra_config: &str,
        placements: &[Placement],
    ) -> anyhow::Result<Self> {
        let replicas = placements.len();
        let logs = cluster.logs.clone();
        let off_loopback = placements.iter().any(|p| !p.addr.is_loopback());
        let mut domainctl_tls = Vec::new();
        let admin_tls = if off_loopback {
            let mut names = vec!["localhost".to_owned()];
            names.extend(placements.iter().map(|p| p.addr.to_string()));
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let cert = cluster.pki.issue_server(&names)?;
            let (cert_path, key_path) = (logs.path("dm-admin.crt"), logs.path("dm-admin.key"));
            std::fs::write(&cert_path, &cert.cert_pem)?;
            std::fs::write(&key_path, &cert.key_pem)?;
            for (flag, path) in [
                ("--ca", &cluster.pki_files.ca),
                ("--cert", &cluster.pki_files.client_cert),
                ("--key", &cluster.pki_files.client_key),
            ] {
                domainctl_tls.push(flag.to_owned());
                domainctl_tls.push(path.display().to_string());
            }
            format!(
                "\n[admin-api.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient-ca = \"{}\"\nrequire-client-cert = true\n",
                cert_path.display(),
                key_path.display(),
                cluster.pki_files.ca.display()
            )
        } else {
            String::new()
        };
        // Sequencer admin APIs off loopback require a client certificate too.
        let sequencer_client_cert = if cluster
            .nodes
            .iter()
            .any(|n| !n.placement.addr.is_loopback())
        {
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                cluster.pki_files.client_cert.display(),
                cluster.pki_files.client_key.display()
            )
        } else {
            String::new()
        };
        let ports: Vec<(u16, u16)> = (0..replicas).map(|_| (free_port(), free_port())).collect();
        let mut sequencers = String::new();
        let mut components = String::new();
        for n in &cluster.nodes {
            sequencers.push_str(&format!(
                "\n[[sequencers]]\npublic-endpoint = \"{}\"\nadmin-endpoint = \"{}\"\nops-url = \"{}\"\n",
                n.public_endpoint(),
                n.admin_endpoint(),
                n.ops_url()
            ));
            components.push_str(&format!(
                "\n[[status-components]]\nname = \"{}\"\nkind = \"sequencer\"\nops-url = \"{}\"\n",
                n.name,
                n.ops_url()
            ));
        }
        for (i, (_, ops)) in ports.iter().enumerate() {
            let ops = std::net::SocketAddr::new(placements[i].addr, *ops);
            components.push_str(&format!(
                "\n[[status-components]]\nname = \"dm-{i}\"\nkind = \"domain-manager\"\nops-url = \"http://{ops}\"\n"
            ));
        }
        let mut nodes = Vec::new();
        for (i, (admin_port, ops_port)) in ports.into_iter().enumerate() {
            let name = format!("dm-{i}");
            let placement = placements[i].clone();
            let ops_listen = std::net::SocketAddr::new(placement.addr, ops_port);
            let admin_listen = std::net::SocketAddr::new(placement.addr, admin_port);
            let advertised = if placement.addr.is_loopback() {
                format!("http://{admin_listen}")
            } else {
                format!("https://{admin_listen}")
            };
            let admin_tls = if placement.addr.is_loopback() {
                ""
            } else {
                admin_tls.as_str()
            };
            let config = format!(
                r#"domain-name = "{domain_name}"
namespace-key-file = "{key}"
ops-listen = "{ops_listen}"
advertised-admin-address = "{advertised}"
{extra_config}

[database]
url = "{url}"

[admin-api]
listen = "{admin_listen}"
{admin_tls}
[sequencer-tls]
ca = "{ca}"
domain-name = "localhost"
{sequencer_client_cert}{sequencers}{components}"#,
                domain_name = cluster.domain_id.name(),
                key = cluster.domain_key_path.display(),
                url = placement.database_url.as_deref().unwrap_or(&database.url),
                ca = cluster.pki_files.ca.display(),
            );
            let config_path = logs.path(&format!("{name}.toml"));
            std::fs::write(&config_path, config)?;
            nodes.push(DomainManagerNode {
                name,
                admin_port,
                ops_port,
                config_path,
                process: None,
                placement,
            });
        }
        let mut managers = Self {
            logs,
            database,
            nodes,
            domainctl_tls,
        };
        for i in 0..replicas {
            managers.start_node(i).await?;
        }
        managers.wait_active(Duration::from_secs(30)).await?;
        Ok(managers)
    }

    /// The file that makes replica `i` drop every reply the sequencer gives to its sends
    /// while it exists (`DOMAIN_MANAGER_FAULT_DROP_REPLY_FILE`), as if the connection died
    /// right after the sequencer committed.
    pub fn drop_reply_file(&self, i: usize) -> std::path::PathBuf {
        self.logs.path(&format!("dm-{i}.drop-replies"))
    }

    /// (Re)starts replica `i` and waits until its ops port is live.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(i).context("no such replica")?;
        let builder = match &node.placement.netns {
            None => ProcessBuilder::new(binary_path("domain-manager")),
            Some(ns) => ProcessBuilder::new(crate::netns::ip_path())
                .args(["netns", "exec", ns.as_str()])
                .arg(binary_path("domain-manager")),
        };
        node.process = Some(
            builder
                .arg("--config-file")
                .arg(node.config_path.as_os_str())
                .arg("--log-format")
                .arg("json")
                .env("RUST_LOG", "info")
                // Test fault hook: while this file exists, the replica throws away the
                // sequencer's replies to its sends (see `drop_reply_file`).
                .env(
                    "DOMAIN_MANAGER_FAULT_DROP_REPLY_FILE",
                    self.logs.path(&format!("{}.drop-replies", node.name)),
                )
                .name(node.name.clone())
                .logs(&self.logs)
                .spawn()?,
        );
        wait_for_http_ok(
            &format!("{}/health/live", node.ops_url()),
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("{} did not come up", node.name))
    }

    /// Waits until exactly one running replica is ready (active); returns its index.
    pub async fn wait_active(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ready = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                if n.process.is_some() && n.is_ready().await {
                    ready.push(i);
                }
            }
            if let [one] = ready.as_slice() {
                return Ok(*one);
            }
            if Instant::now() >= deadline {
                bail!("no single active domain manager within {timeout:?} (ready: {ready:?})");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Admin endpoints of all replicas, comma-separated (for `--endpoint`).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(DomainManagerNode::admin_endpoint)
            .collect()
    }

    /// Runs `domainctl` with `--endpoint` for every replica (and the TLS files when the
    /// admin APIs use TLS) and `args`.
    pub async fn domainctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all: Vec<&str> = self.domainctl_tls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        domainctl(&self.endpoints(), &all).await
    }
}

/// Runs `domainctl --endpoint <e>... <args>` and returns its output.
pub async fn domainctl(endpoints: &[String], args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(binary_path("domainctl"));
    for e in endpoints {
        cmd.arg("--endpoint").arg(e);
    }
    cmd.args(args).env_remove("DOMAINCTL_ENDPOINT");
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .context("domainctl did not finish within 30 s")?
        .context("cannot run domainctl")
}
