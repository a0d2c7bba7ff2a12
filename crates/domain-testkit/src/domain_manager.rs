//! Real `domain-manager` replicas in front of a [`SequencerCluster`], and the
//! `domainctl` CLI pointed at them.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cluster::SequencerCluster;
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
}

impl DomainManagerNode {
    pub fn admin_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
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
        let logs = cluster.logs.clone();
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
            components.push_str(&format!(
                "\n[[status-components]]\nname = \"dm-{i}\"\nkind = \"domain-manager\"\nops-url = \"http://127.0.0.1:{ops}\"\n"
            ));
        }
        let mut nodes = Vec::new();
        for (i, (admin_port, ops_port)) in ports.into_iter().enumerate() {
            let name = format!("dm-{i}");
            let config = format!(
                r#"domain-name = "{domain_name}"
namespace-key-file = "{key}"
ops-listen = "127.0.0.1:{ops_port}"
advertised-admin-address = "http://127.0.0.1:{admin_port}"
{extra_config}

[database]
url = "{url}"

[admin-api]
listen = "127.0.0.1:{admin_port}"

[sequencer-tls]
ca = "{ca}"
domain-name = "localhost"
{sequencers}{components}"#,
                domain_name = cluster.domain_id.name(),
                key = cluster.domain_key_path.display(),
                url = database.url,
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
            });
        }
        let mut managers = Self {
            logs,
            database,
            nodes,
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
        node.process = Some(
            ProcessBuilder::new(binary_path("domain-manager"))
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

    /// Runs `domainctl` with `--endpoint` for every replica and `args`.
    pub async fn domainctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        domainctl(&self.endpoints(), args).await
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
