//! Domain-manager configuration. Every field is documented with its unit and
//! default; `domain-manager --dump-config` prints the effective values, and
//! [`DomainManagerConfig::validate`] checks everything that deserialization
//! cannot (ids, files, URLs, relations), naming the offending key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use domain_identity::{MemberId, MemberRole, UniqueId};
use domain_lease::LeaseConfig;
use domain_runtime::grpc::GrpcServerConfig;
use domain_runtime::tls::ClientTlsFiles;
use domain_storage::DatabaseConfig;
use domain_topology::DomainParameters;
use serde::{Deserialize, Serialize};

/// Name of the lease row all replicas of one domain manager share.
pub const LEASE_NAME: &str = "domain-manager";

/// Default admin API listen address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = domain_runtime::config::loopback(4402);

/// Default ops listen address.
pub const DEFAULT_OPS_LISTEN: SocketAddr = domain_runtime::config::all_interfaces(4403);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DomainManagerConfig {
    /// Name part of the domain id `<domain-name>::<fingerprint of the namespace key>`.
    /// Required (`[A-Za-z0-9_.-]{1,185}`).
    pub domain_name: String,
    /// The domain namespace key (PKCS#8 PEM ed25519, shared by all replicas), created by
    /// `domain-manager init`. Required.
    pub namespace_key_file: PathBuf,
    /// The domain manager's own PostgreSQL database (topology store and lease).
    pub database: DatabaseConfig,
    /// Admin API (`domain.manager.admin.v1.DomainAdminService`, used by `domainctl`). Default
    /// listen `127.0.0.1:4402`: loopback only. Configure `admin-api.tls` with `client-ca` and
    /// `require-client-cert = true` before exposing it (mutual TLS).
    pub admin_api: GrpcServerConfig,
    /// Plaintext ops HTTP port: `/metrics`, `/health/live`, `/health/ready`.
    /// Default `0.0.0.0:4403`.
    pub ops_listen: SocketAddr,
    /// URL of this replica's admin API as clients can reach it; stored in the lease row
    /// so passive replicas can name the active one in UNAVAILABLE answers.
    /// Default: empty, meaning `http://<bound admin address>` (`https://` with TLS).
    pub advertised_admin_address: String,
    /// Leader lease. `name` defaults to `domain-manager`; `holder-address` is always set
    /// to `advertised-admin-address`.
    pub lease: LeaseConfig,
    /// The sequencer endpoints topology transactions are sent through, tried in order
    /// (with failover). At least one is required.
    pub sequencers: Vec<SequencerEndpointConfig>,
    /// TLS towards the sequencers (public and admin endpoints): the CA and, for mutual
    /// TLS, a client certificate and key. Required when an endpoint is `https://`.
    /// Default: unset (plaintext, `http://` endpoints only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequencer_tls: Option<ClientTlsFiles>,
    /// Genesis topology, written by the first active replica (idempotently).
    pub genesis: GenesisConfig,
    /// Components whose ops `/health/ready` the `Status` call probes.
    pub status_components: Vec<StatusComponentConfig>,
    /// How long one admin write may take to get its topology transaction sequenced,
    /// retries across sequencer endpoints included, before it fails with
    /// `DM_SEQUENCER_UNAVAILABLE` (the transaction stays pending and is resent in the
    /// background). Default `10s`.
    #[serde(with = "humantime_serde")]
    pub send_deadline: Duration,
    /// Max sequencing time of a topology transaction: this long after its message id was
    /// chosen (when the transaction was written). Every resend repeats it, so a resend is
    /// deduplicated by the sequencer or refused as too late, never sequenced twice; after
    /// a refusal the domain manager reads its own event stream to learn whether the
    /// transaction was sequenced, and sends it again under a new message id only if not.
    /// Must be at least `send-deadline` and at most `1h`. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub max_sequencing_window: Duration,
    /// How often an active replica retries pending transactions (and a failed bootstrap).
    /// Default `1s`.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// How long shutdown waits for in-flight calls to drain. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// OTLP span export (`[tracing]`, shared by every service; off by default).
    pub tracing: domain_runtime::telemetry::TracingConfig,
    /// What `domainctl domain export-connection` puts in the connection bundle for parties
    /// joining from outside (docs/onboarding.md). Default: unset (export refused with
    /// `DM_CONNECTION_NOT_CONFIGURED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionConfig>,
}

/// The externally visible view of the domain, for connection bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConnectionConfig {
    /// The sequencer public API URLs as parties outside the provider's network reach them
    /// (`https://seq-1.example.com:5001`), not in-cluster names. At least one.
    pub public_endpoints: Vec<String>,
    /// PEM CA certificates those endpoints' certificates chain to, copied into the bundle
    /// (several during a CA rotation). Optional when `system-roots` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Whether the endpoints use certificates of public CAs (the party trusts its system
    /// roots). Default false.
    #[serde(default)]
    pub system_roots: bool,
    /// Suggested alias of the connection. Default: the domain name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl Default for DomainManagerConfig {
    fn default() -> Self {
        Self {
            domain_name: String::new(),
            namespace_key_file: PathBuf::new(),
            database: DatabaseConfig::default(),
            admin_api: GrpcServerConfig::with_listen(DEFAULT_ADMIN_LISTEN),
            ops_listen: DEFAULT_OPS_LISTEN,
            advertised_admin_address: String::new(),
            lease: LeaseConfig::new(LEASE_NAME),
            sequencers: Vec::new(),
            sequencer_tls: None,
            genesis: GenesisConfig::default(),
            status_components: Vec::new(),
            send_deadline: Duration::from_secs(10),
            max_sequencing_window: Duration::from_secs(60),
            retry_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            tracing: domain_runtime::telemetry::TracingConfig::default(),
            connection: None,
        }
    }
}

/// One sequencer (instance) the domain manager talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SequencerEndpointConfig {
    /// Public API URL (`http://host:5001` or `https://…`): `GetDomainInfo` at bootstrap,
    /// authentication and `Send`. Required.
    pub public_endpoint: String,
    /// Admin API URL, used by `ListSequencers` (`ListInstances`). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_endpoint: Option<String>,
    /// Ops URL (`http://host:5003`), probed by `Status`. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_url: Option<String>,
}

/// The genesis topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GenesisConfig {
    /// Mediator member ids (`MED::name::1220…`) registered at bootstrap. Default: none.
    pub mediators: Vec<String>,
    /// Domain parameters written at bootstrap if the store has none yet.
    pub parameters: GenesisParameters,
}

/// Domain parameters in configuration form (humantime durations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GenesisParameters {
    /// How long confirming participants have to answer a request. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub participant_response_timeout: Duration,
    /// Largest accepted submission in bytes. Default 1 MiB.
    pub max_request_size: u64,
    /// Delay between sequencing a topology change and it taking effect. Default `250ms`.
    #[serde(with = "humantime_serde")]
    pub topology_change_delay: Duration,
}

impl Default for GenesisParameters {
    fn default() -> Self {
        let d = DomainParameters::default();
        Self {
            participant_response_timeout: d.participant_response_timeout,
            max_request_size: d.max_request_size,
            topology_change_delay: d.topology_change_delay,
        }
    }
}

impl From<GenesisParameters> for DomainParameters {
    fn from(p: GenesisParameters) -> Self {
        DomainParameters {
            participant_response_timeout: p.participant_response_timeout,
            max_request_size: p.max_request_size,
            topology_change_delay: p.topology_change_delay,
        }
    }
}

/// What kind of component a status entry is; decides how its readiness is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    DomainManager,
    Mediator,
    Sequencer,
    Participant,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DomainManager => "domain-manager",
            Self::Mediator => "mediator",
            Self::Sequencer => "sequencer",
            Self::Participant => "participant",
        }
    }

    /// Active-passive components report `active`/`passive`, others `serving`/`not-serving`.
    pub fn is_active_passive(self) -> bool {
        matches!(self, Self::DomainManager | Self::Mediator)
    }
}

/// One component probed by `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StatusComponentConfig {
    /// Display name, e.g. `mediator-1`.
    pub name: String,
    /// `domain-manager`, `mediator`, `sequencer` or `participant`.
    pub kind: ComponentKind,
    /// Ops base URL, e.g. `http://mediator-1:4503`; `GET <ops-url>/health/ready` is probed.
    pub ops_url: String,
}

/// A configuration value that deserialized but is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}`: {reason}")]
pub struct InvalidConfig {
    /// The dotted kebab-case key, e.g. `sequencers[0].public-endpoint`.
    pub key: String,
    pub reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A parsed `http(s)://host:port[/path]` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without trailing slash (empty for none).
    pub path: String,
}

/// Parses a gRPC or ops endpoint URL (`http://host:port` or `https://host:port`).
pub fn parse_endpoint(url: &str) -> Result<HttpEndpoint, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok(HttpEndpoint {
        https,
        host,
        port,
        path,
    })
}

impl DomainManagerConfig {
    /// Fills in derived defaults (lease name) and checks every value deserialization
    /// cannot. Does not touch the network or the database; reads the key file.
    pub fn validate(&mut self) -> Result<(), InvalidConfig> {
        UniqueId::validate_name(&self.domain_name).map_err(|e| {
            invalid(
                "domain-name",
                if self.domain_name.is_empty() {
                    "must be set (the name part of the domain id)".to_owned()
                } else {
                    e.to_string()
                },
            )
        })?;
        if self.namespace_key_file.as_os_str().is_empty() {
            return Err(invalid(
                "namespace-key-file",
                "must be set (create the key with `domain-manager init`)",
            ));
        }
        if !self.namespace_key_file.exists() {
            return Err(invalid(
                "namespace-key-file",
                format!(
                    "{} does not exist (create it with `domain-manager init --key-file {} --domain-name {}`)",
                    self.namespace_key_file.display(),
                    self.namespace_key_file.display(),
                    self.domain_name
                ),
            ));
        }
        domain_identity::SigningKeyPair::load_pem(&self.namespace_key_file)
            .map_err(|e| invalid("namespace-key-file", e.to_string()))?;

        if self.lease.name.trim().is_empty() {
            self.lease.name = LEASE_NAME.to_owned();
        }
        self.lease.validate().map_err(|e| match e {
            domain_lease::LeaseError::InvalidConfig { key, reason } => {
                invalid(format!("lease.{key}"), reason)
            }
            other => invalid("lease", other.to_string()),
        })?;

        if self.sequencers.is_empty() {
            return Err(invalid(
                "sequencers",
                "at least one sequencer endpoint is required ([[sequencers]] public-endpoint = \"http://host:5001\")",
            ));
        }
        let mut any_https = false;
        for (i, s) in self.sequencers.iter().enumerate() {
            let ep = parse_endpoint(&s.public_endpoint)
                .map_err(|r| invalid(format!("sequencers[{i}].public-endpoint"), r))?;
            any_https |= ep.https;
            if let Some(admin) = &s.admin_endpoint {
                let ep = parse_endpoint(admin)
                    .map_err(|r| invalid(format!("sequencers[{i}].admin-endpoint"), r))?;
                any_https |= ep.https;
            }
            if let Some(ops) = &s.ops_url {
                let ep = parse_endpoint(ops)
                    .map_err(|r| invalid(format!("sequencers[{i}].ops-url"), r))?;
                if ep.https {
                    return Err(invalid(
                        format!("sequencers[{i}].ops-url"),
                        "ops endpoints are plaintext: use http://",
                    ));
                }
            }
        }
        if let Some(c) = &self.connection {
            if c.public_endpoints.is_empty() {
                return Err(invalid(
                    "connection.public-endpoints",
                    "at least one externally visible sequencer URL is required",
                ));
            }
            for (i, e) in c.public_endpoints.iter().enumerate() {
                parse_endpoint(e)
                    .map_err(|r| invalid(format!("connection.public-endpoints[{i}]"), r))?;
            }
            match &c.ca_file {
                Some(ca) => {
                    domain_runtime::tls::load_certificates(ca, "connection ca")
                        .map_err(|e| invalid("connection.ca-file", e.to_string()))?;
                }
                None if !c.system_roots => {
                    return Err(invalid(
                        "connection.ca-file",
                        "must be set unless connection.system-roots = true",
                    ));
                }
                None => {}
            }
            if let Some(alias) = &c.alias {
                UniqueId::validate_name(alias)
                    .map_err(|e| invalid("connection.alias", e.to_string()))?;
            }
        }
        match &self.sequencer_tls {
            Some(files) => {
                domain_runtime::tls::client_tls_config(files)
                    .map_err(|e| invalid("sequencer-tls", e.to_string()))?;
            }
            None if any_https => {
                return Err(invalid(
                    "sequencer-tls",
                    "an https:// sequencer endpoint needs `sequencer-tls.ca`",
                ));
            }
            None => {}
        }
        if let Some(reason) = self.admin_api.admin_exposure_problem(true) {
            return Err(invalid("admin-api", reason));
        }
        if let Err((key, reason)) = self.admin_api.validate() {
            return Err(invalid(format!("admin-api.{key}"), reason));
        }
        if let Some(tls) = &self.admin_api.tls {
            domain_runtime::tls::server_tls_config(tls)
                .map_err(|e| invalid("admin-api.tls", e.to_string()))?;
        }
        if !self.advertised_admin_address.is_empty() {
            parse_endpoint(&self.advertised_admin_address)
                .map_err(|r| invalid("advertised-admin-address", r))?;
        }

        for (i, m) in self.genesis.mediators.iter().enumerate() {
            let id = MemberId::parse(m)
                .map_err(|e| invalid(format!("genesis.mediators[{i}]"), format!("{m:?}: {e}")))?;
            if id.role() != MemberRole::Mediator {
                return Err(invalid(
                    format!("genesis.mediators[{i}]"),
                    format!("{m:?} is not a mediator id (MED::name::1220…)"),
                ));
            }
        }
        DomainParameters::from(self.genesis.parameters)
            .validate()
            .map_err(|e| invalid("genesis.parameters", e.to_string()))?;

        for (i, c) in self.status_components.iter().enumerate() {
            if c.name.trim().is_empty() {
                return Err(invalid(
                    format!("status-components[{i}].name"),
                    "must not be empty",
                ));
            }
            let ep = parse_endpoint(&c.ops_url)
                .map_err(|r| invalid(format!("status-components[{i}].ops-url"), r))?;
            if ep.https {
                return Err(invalid(
                    format!("status-components[{i}].ops-url"),
                    "ops endpoints are plaintext: use http://",
                ));
            }
        }
        if self.send_deadline < Duration::from_millis(100) {
            return Err(invalid("send-deadline", "must be at least 100ms"));
        }
        if self.retry_interval.is_zero() {
            return Err(invalid("retry-interval", "must be greater than 0"));
        }
        if self.max_sequencing_window < self.send_deadline
            || self.max_sequencing_window > Duration::from_secs(3600)
        {
            return Err(invalid(
                "max-sequencing-window",
                format!(
                    "= {} must be at least `send-deadline` (= {}), so that one write's \
                     attempts all fall within it, and at most 1h",
                    humantime_serde::re::humantime::format_duration(self.max_sequencing_window),
                    humantime_serde::re::humantime::format_duration(self.send_deadline)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let ep = parse_endpoint("https://seq-1.example:5001").expect("valid");
        assert!(ep.https);
        assert_eq!(ep.host, "seq-1.example");
        assert_eq!(ep.port, 5001);
        let ep = parse_endpoint("http://127.0.0.1:4503/prefix/").expect("valid");
        assert_eq!(ep.path, "/prefix");
        let ep = parse_endpoint("http://[::1]:80").expect("valid");
        assert_eq!(ep.host, "::1");
        assert!(parse_endpoint("seq-1:5001").is_err());
        assert!(parse_endpoint("ftp://x:1").is_err());
    }

    #[test]
    fn admin_api_off_loopback_requires_mutual_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = valid_config(dir.path());
        c.validate().expect("loopback admin API is fine");
        c.admin_api.listen = "0.0.0.0:4402".parse().expect("address");
        let err = c.validate().expect_err("plaintext admin API off the host");
        assert_eq!(err.key, "admin-api");
        assert!(err.reason.contains("client certificates"), "{}", err.reason);
    }

    fn valid_config(dir: &std::path::Path) -> DomainManagerConfig {
        let key = dir.join("ns.pem");
        if !key.exists() {
            domain_identity::SigningKeyPair::generate()
                .save_pem(&key)
                .expect("write key");
        }
        DomainManagerConfig {
            domain_name: "mydomain".into(),
            namespace_key_file: key,
            sequencers: vec![SequencerEndpointConfig {
                public_endpoint: "http://127.0.0.1:5001".into(),
                admin_endpoint: Some("http://127.0.0.1:5002".into()),
                ops_url: None,
            }],
            ..DomainManagerConfig::default()
        }
    }

    #[test]
    fn validation_names_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ok = valid_config(dir.path());
        ok.validate().expect("valid");

        let mut c = valid_config(dir.path());
        c.sequencers.clear();
        assert_eq!(c.validate().expect_err("empty").key, "sequencers");

        let mut c = valid_config(dir.path());
        c.domain_name = "bad name".into();
        assert_eq!(c.validate().expect_err("bad name").key, "domain-name");

        let mut c = valid_config(dir.path());
        c.namespace_key_file = dir.path().join("missing.pem");
        assert_eq!(c.validate().expect_err("missing").key, "namespace-key-file");

        let mut c = valid_config(dir.path());
        c.genesis.mediators = vec!["PAR::x::1220".into()];
        assert_eq!(
            c.validate().expect_err("bad mediator").key,
            "genesis.mediators[0]"
        );

        let mut c = valid_config(dir.path());
        c.sequencers[0].public_endpoint = "https://seq:5001".into();
        assert_eq!(c.validate().expect_err("no tls").key, "sequencer-tls");

        let mut c = valid_config(dir.path());
        c.lease.name = String::new();
        c.validate().expect("lease name defaulted");
        assert_eq!(c.lease.name, LEASE_NAME);

        let mut c = valid_config(dir.path());
        c.lease.renew_interval = Duration::from_secs(5);
        assert_eq!(
            c.validate().expect_err("bad lease").key,
            "lease.renew-interval"
        );
    }

    #[test]
    fn config_round_trips_through_toml_with_unknown_keys_rejected() {
        let text = r#"
            domain-name = "mydomain"
            namespace-key-file = "/keys/ns.pem"
            [[sequencers]]
            public-endpoint = "http://seq-1:5001"
            [genesis]
            mediators = []
            [genesis.parameters]
            topology-change-delay = "100ms"
        "#;
        let c: DomainManagerConfig = toml::from_str(text).expect("parses");
        assert_eq!(
            c.genesis.parameters.topology_change_delay,
            Duration::from_millis(100)
        );
        assert_eq!(c.admin_api.listen, DEFAULT_ADMIN_LISTEN);
        assert!(toml::from_str::<DomainManagerConfig>("domain-nam = \"x\"").is_err());
        let dumped = toml::to_string(&c).expect("serializes");
        let again: DomainManagerConfig = toml::from_str(&dumped).expect("re-parses");
        assert_eq!(again.sequencers, c.sequencers);
    }

    /// The Kubernetes example config loads and is valid, with every sequencer pod's endpoint
    /// and ops URL. The files it expects from Secrets (mounted at /keys and /tls in the pod)
    /// are created in a temporary directory and the paths moved there.
    #[test]
    fn the_kubernetes_example_config_is_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("keys")).expect("keys dir");
        std::fs::create_dir_all(root.join("tls")).expect("tls dir");
        domain_identity::SigningKeyPair::generate()
            .save_pem(root.join("keys/namespace.pem"))
            .expect("write key");
        let pki = domain_testkit::certs::TestPki::new().expect("test pki");
        let server = pki.issue_server(&["domain-manager"]).expect("server cert");
        for (file, pem) in [
            ("tls/ca.crt", pki.ca_pem()),
            ("tls/client-ca.crt", pki.ca_pem()),
            ("tls/tls.crt", server.cert_pem.as_str()),
            ("tls/tls.key", server.key_pem.as_str()),
        ] {
            std::fs::write(root.join(file), pem).expect("write pem");
        }
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy/k8s/base/domain-manager.toml"),
        )
        .expect("read deploy/k8s/base/domain-manager.toml");
        let moved = root.join("domain-manager.toml");
        let prefix = root.display().to_string();
        std::fs::write(
            &moved,
            example
                .replace("\"/keys/", &format!("\"{prefix}/keys/"))
                .replace("\"/tls/", &format!("\"{prefix}/tls/")),
        )
        .expect("write config");
        let mut c: DomainManagerConfig =
            domain_runtime::config::load(Some(&moved), Vec::new(), "DOMAIN_MANAGER", &[])
                .expect("deploy/k8s/base/domain-manager.toml loads");
        c.validate()
            .expect("deploy/k8s/base/domain-manager.toml is valid");
        let endpoints: Vec<_> = c
            .sequencers
            .iter()
            .map(|s| (s.public_endpoint.as_str(), s.ops_url.as_deref()))
            .collect();
        assert_eq!(
            endpoints,
            [
                (
                    "https://sequencer-0.sequencer-pods:5001",
                    Some("http://sequencer-0.sequencer-pods:5003")
                ),
                (
                    "https://sequencer-1.sequencer-pods:5001",
                    Some("http://sequencer-1.sequencer-pods:5003")
                ),
                (
                    "https://sequencer-2.sequencer-pods:5001",
                    Some("http://sequencer-2.sequencer-pods:5003")
                ),
            ]
        );
    }
}
