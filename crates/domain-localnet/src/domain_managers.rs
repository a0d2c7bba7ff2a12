//! Real `domain-manager` replicas in front of a [`SequencerCluster`], and the
//! `domainctl` CLI pointed at them.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use domain_manager::DomainManagerConfig;
use domain_manager::config::ComponentKind;
use domain_testkit::pg::TestDatabase;
use domain_testkit::process::{
    ManagedProcess, TestLogs, binary_path, ensure_success, http_status, wait_for_http_ok,
};

use crate::config::{self, Listeners};
use crate::sequencers::{Placement, SequencerCluster};

/// Ports and files of one replica.
pub struct DomainManagerNode {
    pub name: String,
    /// Its listen address and ports.
    pub listeners: Listeners,
    pub config_path: PathBuf,
    pub process: Option<ManagedProcess>,
    /// Where the replica runs and listens (loopback in the root namespace by default).
    pub placement: Placement,
}

impl DomainManagerNode {
    /// See [`Listeners::admin_url`] (off loopback its certificate names the address).
    pub fn admin_endpoint(&self) -> String {
        self.listeners.admin_url()
    }
    pub fn ops_url(&self) -> String {
        self.listeners.ops_url()
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
        Self::start_configured(cluster, database, extra_config, placements, |_, _| {}).await
    }

    /// [`Self::start_placed`], with `configure(i, &mut config)` applied to replica `i`'s
    /// config before `extra_config` (e.g. the genesis mediators, the connection bundle).
    pub async fn start_configured(
        cluster: &SequencerCluster,
        database: TestDatabase,
        extra_config: &str,
        placements: &[Placement],
        configure: impl Fn(usize, &mut DomainManagerConfig),
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
            Some(config::mutual_tls(
                &cert_path,
                &key_path,
                &cluster.pki_files,
            ))
        } else {
            None
        };
        let listeners: Vec<Listeners> =
            placements.iter().map(|p| Listeners::free(p.addr)).collect();
        let sequencers: Vec<Listeners> = cluster.nodes.iter().map(|n| n.listeners).collect();
        let sequencers = config::SequencerEndpoints {
            sequencers: &sequencers,
            // Sequencer admin APIs off loopback require a client certificate too.
            client_cert: sequencers.iter().any(|s| !s.is_loopback()),
        };
        let status: Vec<_> = cluster
            .nodes
            .iter()
            .map(|n| config::status_component(&n.name, ComponentKind::Sequencer, &n.listeners))
            .chain(listeners.iter().enumerate().map(|(i, at)| {
                config::status_component(&format!("dm-{i}"), ComponentKind::DomainManager, at)
            }))
            .collect();
        let extra = config::layer(extra_config)?;
        let mut nodes = Vec::new();
        for (i, at) in listeners.into_iter().enumerate() {
            let name = format!("dm-{i}");
            let placement = placements[i].clone();
            let mut dm = config::domain_manager(
                cluster.domain_id.name(),
                &cluster.domain_key_path,
                placement.database_url.as_deref().unwrap_or(&database.url),
                &at,
                &cluster.pki_files,
                &sequencers,
                status.clone(),
            );
            if !at.is_loopback() {
                dm.admin_api.tls.clone_from(&admin_tls);
            }
            configure(i, &mut dm);
            let config_path = logs.path(&format!("{name}.toml"));
            config::write(&config_path, &dm, std::slice::from_ref(&extra))?;
            nodes.push(DomainManagerNode {
                name,
                listeners: at,
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
        node.process = Some(
            node.placement
                .service("domain-manager", &node.config_path)
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

impl DomainManagers {
    /// `domainctl participants set-state <member> --permission <permission> <extra>...`.
    pub async fn set_state(
        &self,
        member: &str,
        permission: &str,
        extra: &[&str],
    ) -> anyhow::Result<Output> {
        let mut args = vec![
            "participants",
            "set-state",
            member,
            "--permission",
            permission,
        ];
        args.extend_from_slice(extra);
        self.domainctl(&args).await
    }

    /// Admits `member` as an operator does: permission `submission`, trust level
    /// `ordinary`; fails unless `domainctl` succeeds.
    pub async fn allowlist(&self, member: &str) -> anyhow::Result<()> {
        let out = self
            .set_state(member, "submission", &["--trust-level", "ordinary"])
            .await?;
        ensure_success(&out, &format!("set-state {member}"))
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
