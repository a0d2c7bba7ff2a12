//! A real sequencer cluster for end-to-end tests and benchmarks: keys, a test
//! PKI, config files, N `sequencer` processes over one database, and member
//! identities registered through the admin API.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use domain_identity::{DomainId, MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_proto::sequencer::admin::v1 as pb;
use domain_proto::sequencer::admin::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use domain_sequencer_client::{MemberIdentity, SequencerConnection};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use domain_testkit::certs::{PkiFiles, TestPki};
use domain_testkit::pg::TestDatabase;
use domain_testkit::process::{
    ManagedProcess, ProcessBuilder, TestLogs, binary_path, wait_for_health,
};

use crate::config::{self, Listeners};

/// Ports and files of one sequencer instance.
pub struct SequencerNode {
    pub name: String,
    /// Its listen address and ports.
    pub listeners: Listeners,
    pub config_path: PathBuf,
    pub process: Option<ManagedProcess>,
    pub extra_env: Vec<(String, String)>,
    /// Where the instance runs and listens (loopback in the root namespace by default).
    pub placement: Placement,
}

/// Where an instance runs: a network namespace (see [`domain_testkit::netns`]) and the
/// address its listeners bind, and how it reaches the database from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Run through `ip netns exec <netns>`; the root namespace when `None`.
    pub netns: Option<String>,
    /// The address every listener of the instance binds.
    pub addr: IpAddr,
    /// The database URL of this instance, when it differs from the cluster's (e.g. the
    /// server's address as seen from the namespace).
    pub database_url: Option<String>,
}

impl Placement {
    /// The process of service `binary` (a workspace binary) placed here, reading
    /// `config_file` and logging JSON at `info`.
    pub fn service(&self, binary: &str, config_file: &std::path::Path) -> ProcessBuilder {
        match &self.netns {
            None => ProcessBuilder::new(binary_path(binary)),
            Some(ns) => ProcessBuilder::new(domain_testkit::netns::ip_path())
                .args(["netns", "exec", ns.as_str()])
                .arg(binary_path(binary)),
        }
        .arg("--config-file")
        .arg(config_file.as_os_str())
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info")
    }

    /// In the root namespace, listening on `addr`, with the cluster's database URL.
    pub fn on(addr: IpAddr) -> Self {
        Self {
            netns: None,
            addr,
            database_url: None,
        }
    }
}

impl Default for Placement {
    /// Loopback in the root namespace.
    fn default() -> Self {
        Self::on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

impl SequencerNode {
    /// See [`Listeners::public_url`].
    pub fn public_endpoint(&self) -> String {
        self.listeners.public_url()
    }
    /// See [`Listeners::admin_url`].
    pub fn admin_endpoint(&self) -> String {
        self.listeners.admin_url()
    }
    pub fn ops_url(&self) -> String {
        self.listeners.ops_url()
    }
    pub fn process(&mut self) -> anyhow::Result<&mut ManagedProcess> {
        self.process.as_mut().context("instance is not running")
    }
}

/// A running multi-instance sequencer over one database.
pub struct SequencerCluster {
    pub logs: TestLogs,
    pub pki: TestPki,
    pub pki_files: PkiFiles,
    pub domain_id: DomainId,
    /// The domain namespace key (also written to `domain_key_path`), for
    /// signing topology transactions or running a domain manager.
    pub domain_key: Arc<SigningKeyPair>,
    pub domain_key_path: PathBuf,
    pub database: TestDatabase,
    pub nodes: Vec<SequencerNode>,
}

impl SequencerCluster {
    /// Writes configs for `instances` sequencers and starts them all.
    pub async fn start(
        logs: TestLogs,
        database: TestDatabase,
        instances: usize,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(logs, database, instances, extra_config, &[]).await
    }

    /// Like [`Self::start`], with extra environment variables per instance
    /// (`node_env[i]` for instance `i`), e.g. fault-injection hooks.
    pub async fn start_with_env(
        logs: TestLogs,
        database: TestDatabase,
        instances: usize,
        extra_config: &str,
        node_env: &[Vec<(String, String)>],
    ) -> anyhow::Result<Self> {
        let placements = vec![Placement::default(); instances];
        Self::start_placed(logs, database, extra_config, node_env, &placements, "").await
    }

    /// Like [`Self::start_with_env`], with extra keys of the `[database]` section (e.g.
    /// `connect-timeout = "1s"`), which `extra_config` cannot add since the section is
    /// written after it.
    pub async fn start_with_database_config(
        logs: TestLogs,
        database: TestDatabase,
        instances: usize,
        extra_config: &str,
        node_env: &[Vec<(String, String)>],
        database_config: &str,
    ) -> anyhow::Result<Self> {
        let placements = vec![Placement::default(); instances];
        Self::start_placed(
            logs,
            database,
            extra_config,
            node_env,
            &placements,
            database_config,
        )
        .await
    }

    /// Like [`Self::start_with_database_config`], with one instance per entry of
    /// `placements`, each in its namespace and listening on its address.
    pub async fn start_placed(
        logs: TestLogs,
        database: TestDatabase,
        extra_config: &str,
        node_env: &[Vec<(String, String)>],
        placements: &[Placement],
        database_config: &str,
    ) -> anyhow::Result<Self> {
        let instances = placements.len();
        let dir = logs.dir().to_path_buf();
        let pki = TestPki::new()?;
        let pki_files = pki.write_files(&dir)?;
        let domain_key = SigningKeyPair::generate();
        let domain_id = DomainId::new(UniqueId::new("testdomain", *domain_key.fingerprint())?);
        let domain_key_path = dir.join("domain-key.pem");
        domain_key.save_pem(&domain_key_path)?;
        let seq_key_path = dir.join("sequencer-key.pem");
        SigningKeyPair::generate().save_pem(&seq_key_path)?;
        let mut nodes = Vec::new();
        let database_layer = config::section_layer("database", database_config)?;
        let extra = config::layer(extra_config)?;
        for (i, placement) in placements.iter().enumerate() {
            let name = format!("seq-{i}");
            let at = Listeners::free(placement.addr);
            let url = placement.database_url.as_deref().unwrap_or(&database.url);
            let config_path = config::config_path(&dir, &name);
            config::write(
                &config_path,
                &config::sequencer(&domain_id.to_string(), &seq_key_path, url, &at, &pki_files)?,
                &[extra.clone(), database_layer.clone()],
            )?;
            nodes.push(SequencerNode {
                name,
                listeners: at,
                config_path,
                process: None,
                extra_env: node_env.get(i).cloned().unwrap_or_default(),
                placement: placement.clone(),
            });
        }
        let mut cluster = Self {
            logs,
            pki,
            pki_files,
            domain_id,
            domain_key: Arc::new(domain_key),
            domain_key_path,
            database,
            nodes,
        };
        for i in 0..instances {
            cluster.start_node(i).await?;
        }
        Ok(cluster)
    }

    /// Client TLS trusting the cluster's test CA.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.pki.ca_pem()))
            .domain_name("localhost")
    }

    /// Connects and authenticates `member` to instance `i` (TLS, 5 s to connect).
    pub async fn connect(
        &self,
        i: usize,
        member: &(MemberId, Arc<SigningKeyPair>),
    ) -> anyhow::Result<SequencerConnection> {
        let node = self
            .nodes
            .get(i)
            .with_context(|| format!("no instance {i}"))?;
        let member = MemberIdentity {
            id: member.0.clone(),
            key: member.1.clone(),
        };
        Ok(SequencerConnection::connect(
            &node.public_endpoint(),
            Some(self.client_tls()),
            member,
            Duration::from_secs(5),
        )
        .await?)
    }

    /// (Re)starts instance `i` and waits until its health reports SERVING.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let tls = self.client_tls();
        let node = self.nodes.get_mut(i).context("no such instance")?;
        let mut builder = node
            .placement
            .service("sequencer", &node.config_path)
            .name(node.name.clone())
            .logs(&self.logs);
        for (k, v) in &node.extra_env {
            builder = builder.env(k, v);
        }
        node.process = Some(builder.spawn()?);
        wait_for_health(
            &node.public_endpoint(),
            Some(tls),
            "",
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("{} did not become healthy", node.name))
    }

    /// Generates a member identity and registers it through instance 0's admin API.
    pub async fn add_member(
        &self,
        role: MemberRole,
        name: &str,
    ) -> anyhow::Result<(MemberId, Arc<SigningKeyPair>)> {
        let key = SigningKeyPair::generate();
        let id = MemberId::new(role, UniqueId::new(name, *key.fingerprint())?);
        self.register(&id).await?;
        Ok((id, Arc::new(key)))
    }

    pub async fn register(&self, id: &MemberId) -> anyhow::Result<()> {
        let mut admin = self.admin(0).await?;
        admin
            .register_member(pb::RegisterMemberRequest {
                member: id.to_string(),
                public_key: None,
            })
            .await?;
        Ok(())
    }

    pub async fn admin(
        &self,
        i: usize,
    ) -> anyhow::Result<SequencerAdminServiceClient<tonic::transport::Channel>> {
        let node = self.nodes.get(i).context("no such instance")?;
        if node.placement.addr.is_loopback() {
            return Ok(SequencerAdminServiceClient::connect(node.admin_endpoint()).await?);
        }
        let identity = Identity::from_pem(
            std::fs::read(&self.pki_files.client_cert)?,
            std::fs::read(&self.pki_files.client_key)?,
        );
        let channel = Endpoint::from_shared(node.admin_endpoint())?
            .tls_config(self.client_tls().identity(identity))?
            .connect()
            .await?;
        Ok(SequencerAdminServiceClient::new(channel))
    }
}
