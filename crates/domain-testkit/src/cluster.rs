//! A real sequencer cluster for end-to-end tests and benchmarks: keys, a test
//! PKI, config files, N `sequencer` processes over one database, and member
//! identities registered through the admin API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use domain_identity::{DomainId, MemberId, MemberRole, SigningKeyPair, UniqueId};
use domain_proto::v1::{self as pb, sequencer_admin_service_client::SequencerAdminServiceClient};
use tonic::transport::{Certificate, ClientTlsConfig};

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
}

impl SequencerNode {
    pub fn public_endpoint(&self) -> String {
        format!("https://localhost:{}", self.public_port)
    }
    pub fn admin_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
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
        Self::start_with_database_config(logs, database, instances, extra_config, node_env, "")
            .await
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
        for i in 0..instances {
            let name = format!("seq-{i}");
            let (public_port, admin_port, ops_port) = (free_port(), free_port(), free_port());
            let config = format!(
                r#"domain-id = "{domain_id}"
signing-key-file = "{key}"
ops-listen = "127.0.0.1:{ops_port}"
advertised-address = "https://localhost:{public_port}"
{extra_config}

[database]
url = "{url}"
{database_config}

[public-api]
listen = "127.0.0.1:{public_port}"

[public-api.tls]
cert = "{cert}"
key = "{tkey}"

[admin-api]
listen = "127.0.0.1:{admin_port}"
"#,
                key = seq_key_path.display(),
                url = database.url,
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
        let mut builder = ProcessBuilder::new(binary_path("sequencer"))
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
        let node = self.nodes.first().context("no instance")?;
        let mut admin = SequencerAdminServiceClient::connect(node.admin_endpoint()).await?;
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
        Ok(SequencerAdminServiceClient::connect(node.admin_endpoint()).await?)
    }
}
