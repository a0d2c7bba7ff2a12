//! A real sequencer cluster for end-to-end tests and benchmarks: keys, a test
//! PKI, config files, N `sequencer` processes over one database, and member
//! identities registered through the admin API.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use domain_identity::{DomainId, MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_proto::sequencer::admin::v1 as pb;
use domain_proto::sequencer::admin::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::certs::{PkiFiles, TestPki};
use crate::pg::TestDatabase;
use crate::process::{
    ManagedProcess, ProcessBuilder, TestLogs, binary_path, free_port, wait_for_health,
};

/// Ports and files of one sequencer instance.
pub struct SequencerNode {
    pub name: String,
    pub public_port: u16,
    pub admin_port: u16,
    pub ops_port: u16,
    pub config_path: PathBuf,
    pub process: Option<ManagedProcess>,
    pub extra_env: Vec<(String, String)>,
    /// Where the instance runs and listens (loopback in the root namespace by default).
    pub placement: Placement,
}

/// Where a sequencer instance runs: a network namespace (see [`crate::netns`]) and the
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

impl Default for Placement {
    fn default() -> Self {
        Self {
            netns: None,
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            database_url: None,
        }
    }
}

impl SequencerNode {
    /// `https://localhost:<port>` on loopback, `https://<addr>:<port>` otherwise (the test
    /// certificate names `localhost`; clients set the TLS domain name to it).
    pub fn public_endpoint(&self) -> String {
        if self.placement.addr.is_loopback() {
            format!("https://localhost:{}", self.public_port)
        } else {
            format!(
                "https://{}",
                SocketAddr::new(self.placement.addr, self.public_port)
            )
        }
    }
    /// `http://127.0.0.1:<port>` on loopback; off loopback the admin API requires TLS with
    /// a client certificate (the sequencer refuses anything else), so `https://`.
    pub fn admin_endpoint(&self) -> String {
        let scheme = if self.placement.addr.is_loopback() {
            "http"
        } else {
            "https"
        };
        format!(
            "{scheme}://{}",
            SocketAddr::new(self.placement.addr, self.admin_port)
        )
    }
    pub fn ops_url(&self) -> String {
        format!(
            "http://{}",
            SocketAddr::new(self.placement.addr, self.ops_port)
        )
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
        Self::start_placed(logs, database, extra_config, node_env, &placements).await
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
        Self::start_placed_with_database_config(
            logs,
            database,
            extra_config,
            node_env,
            &placements,
            database_config,
        )
        .await
    }

    /// Like [`Self::start_with_env`], with one instance per entry of `placements`, each
    /// in its namespace and listening on its address.
    pub async fn start_placed(
        logs: TestLogs,
        database: TestDatabase,
        extra_config: &str,
        node_env: &[Vec<(String, String)>],
        placements: &[Placement],
    ) -> anyhow::Result<Self> {
        Self::start_placed_with_database_config(
            logs,
            database,
            extra_config,
            node_env,
            placements,
            "",
        )
        .await
    }

    /// [`Self::start_placed`] with extra `[database]` keys (see
    /// [`Self::start_with_database_config`]).
    pub async fn start_placed_with_database_config(
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
        for (i, placement) in placements.iter().enumerate() {
            let name = format!("seq-{i}");
            let (public_port, admin_port, ops_port) = (free_port(), free_port(), free_port());
            let addr = placement.addr;
            let advertised = if addr.is_loopback() {
                format!("https://localhost:{public_port}")
            } else {
                format!("https://{}", SocketAddr::new(addr, public_port))
            };
            let ops_listen = SocketAddr::new(addr, ops_port);
            let public_listen = SocketAddr::new(addr, public_port);
            let admin_listen = SocketAddr::new(addr, admin_port);
            // Off loopback the admin API must use TLS with client certificates.
            let admin_tls = if addr.is_loopback() {
                String::new()
            } else {
                format!(
                    "\n[admin-api.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient-ca = \"{}\"\nrequire-client-cert = true\n",
                    pki_files.server_cert.display(),
                    pki_files.server_key.display(),
                    pki_files.ca.display()
                )
            };
            let config = format!(
                r#"domain-id = "{domain_id}"
signing-key-file = "{key}"
ops-listen = "{ops_listen}"
advertised-address = "{advertised}"
{extra_config}

[database]
url = "{url}"
{database_config}

[public-api]
listen = "{public_listen}"

[public-api.tls]
cert = "{cert}"
key = "{tkey}"

[admin-api]
listen = "{admin_listen}"
{admin_tls}"#,
                key = seq_key_path.display(),
                url = placement.database_url.as_deref().unwrap_or(&database.url),
                cert = pki_files.server_cert.display(),
                tkey = pki_files.server_key.display(),
            );
            let config_path = dir.join(format!("{name}.toml"));
            std::fs::write(&config_path, config)?;
            nodes.push(SequencerNode {
                name,
                public_port,
                admin_port,
                ops_port,
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

    /// (Re)starts instance `i` and waits until its health reports SERVING.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let tls = self.client_tls();
        let node = self.nodes.get_mut(i).context("no such instance")?;
        let mut builder = match &node.placement.netns {
            None => ProcessBuilder::new(binary_path("sequencer")),
            Some(ns) => ProcessBuilder::new(crate::netns::ip_path())
                .args(["netns", "exec", ns.as_str()])
                .arg(binary_path("sequencer")),
        }
        .arg("--config-file")
        .arg(node.config_path.as_os_str())
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info")
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
