//! Mediator configuration. Every field is documented with its unit and
//! default; `mediator --dump-config` prints the effective values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use domain_identity::{DomainId, UniqueId};
use domain_lease::LeaseConfig;
use domain_runtime::grpc::GrpcServerConfig;
use domain_runtime::tls::ClientTlsFiles;
use domain_storage::DatabaseConfig;
use serde::{Deserialize, Serialize};

/// Name of the lease row all replicas of one mediator compete for.
pub const LEASE_NAME: &str = "mediator";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MediatorConfig {
    /// Name part of the mediator id `MED::<name>::<fingerprint>`. Identical on every
    /// replica. Default: `mediator`.
    pub name: String,
    /// PKCS#8 PEM ed25519 key shared by every replica (`mediator generate-key <path>`).
    /// Required.
    pub signing_key_file: PathBuf,
    /// Domain id (`name::1220…`) every signature is bound to. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<DomainId>,
    /// The mediator's own PostgreSQL database, shared by its replicas (state and lease).
    pub database: DatabaseConfig,
    /// Public API endpoints of the sequencer instances (`https://host:port`, or
    /// `http://` for plaintext); the mediator uses one at a time and moves to the next
    /// when it fails. Required, at least one.
    pub sequencers: Vec<String>,
    /// Trust anchors (and optional client certificate) for `https://` sequencer
    /// endpoints. Required when any endpoint is `https://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequencer_tls: Option<ClientTlsFiles>,
    /// Admin API (`MediatorAdminService` and gRPC health). Default listen
    /// `127.0.0.1:4502`: loopback only.
    pub admin_api: GrpcServerConfig,
    /// Plaintext ops HTTP port: `/metrics`, `/health/live`, `/health/ready`.
    /// Default `0.0.0.0:4503`.
    pub ops_listen: SocketAddr,
    /// Where operators reach this replica's admin API; stored in the lease row so
    /// passive replicas can name the active one. Default: empty.
    pub advertised_admin_address: String,
    /// Leader lease (see the domain-lease crate). `lease.name` defaults to `mediator`.
    pub lease: LeaseConfig,
    /// How often the active sends a time proof while requests are pending, so that it
    /// sees sequencer time pass (and deadlines expire) on an idle domain.
    /// Default `200ms`.
    #[serde(with = "humantime_serde")]
    pub time_proof_interval: Duration,
    /// A verdict's max sequencing time is fixed at decision time to `max(decision
    /// time, local clock) + verdict-ttl`; every resend reuses it, so the sequencer's
    /// deduplication covers all of them and none can be sequenced later.
    /// Default `60s`.
    #[serde(with = "humantime_serde")]
    pub verdict_ttl: Duration,
    /// Most events processed (and persisted) in one database transaction. Default 256.
    pub max_batch_events: usize,
    /// Verdict sends in flight at once. Default 64.
    pub max_inflight_verdicts: usize,
    /// Decided requests whose verdict needs nothing more (acknowledged, sequenced, expired
    /// or undeliverable) are deleted, with their responses, once their deadline is this far
    /// behind the last processed event (sequencer time). At least `5m`: responses arriving
    /// that long after a deadline are still classified as late rather than unknown.
    /// Default `24h`.
    #[serde(with = "humantime_serde")]
    pub request_retention: Duration,
    /// How often the active replica acknowledges to the sequencer the timestamp up to
    /// which its processed counter and pending requests are persisted, so the sequencer
    /// can prune. Passive replicas never acknowledge. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub acknowledge_interval: Duration,
    /// Connecting the sequencer client may take twice this; each call attempt is bounded
    /// by `min(this, 2s)` (a send is then retried on another endpoint). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub sequencer_timeout: Duration,
    /// How long shutdown waits for in-flight work. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// OTLP span export (`[tracing]`, shared by every service; off by default).
    pub tracing: domain_runtime::telemetry::TracingConfig,
}

impl Default for MediatorConfig {
    fn default() -> Self {
        Self {
            name: "mediator".into(),
            signing_key_file: PathBuf::new(),
            domain_id: None,
            database: DatabaseConfig {
                pool_max_size: 6,
                ..DatabaseConfig::default()
            },
            sequencers: Vec::new(),
            sequencer_tls: None,
            admin_api: GrpcServerConfig::with_listen(domain_runtime::config::loopback(4502)),
            ops_listen: domain_runtime::config::all_interfaces(4503),
            advertised_admin_address: String::new(),
            lease: LeaseConfig::new(LEASE_NAME),
            time_proof_interval: Duration::from_millis(200),
            verdict_ttl: Duration::from_secs(60),
            max_batch_events: 256,
            max_inflight_verdicts: 64,
            request_retention: Duration::from_secs(24 * 3600),
            acknowledge_interval: Duration::from_secs(5),
            sequencer_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            tracing: domain_runtime::telemetry::TracingConfig::default(),
        }
    }
}

/// A configuration value that is well-typed but unusable; names the key.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` {reason}")]
pub struct ConfigProblem {
    pub key: String,
    pub reason: String,
}

fn problem(key: &str, reason: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        key: key.into(),
        reason: reason.into(),
    }
}

impl MediatorConfig {
    /// Checks what serde cannot: required values and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        if let Some(reason) = self.admin_api.admin_exposure_problem(false) {
            return Err(problem("admin-api", reason));
        }
        if let Err((key, reason)) = self.admin_api.validate() {
            return Err(problem(&format!("admin-api.{key}"), reason));
        }
        // A value that is no domain id is refused when the file is read (naming the key).
        if self.domain_id.is_none() {
            return Err(problem(
                "domain-id",
                "is required (e.g. \"mydomain::1220…\")",
            ));
        }
        UniqueId::validate_name(&self.name).map_err(|e| {
            problem(
                "name",
                format!("= {:?} is not a valid name: {e}", self.name),
            )
        })?;
        if self.signing_key_file.as_os_str().is_empty() {
            return Err(problem(
                "signing-key-file",
                "is required (create one with `mediator generate-key <path>`)",
            ));
        }
        if self.sequencers.is_empty() {
            return Err(problem(
                "sequencers",
                "must list at least one sequencer endpoint, e.g. [\"https://sequencer-1:5001\"]",
            ));
        }
        for (i, url) in self.sequencers.iter().enumerate() {
            let key = format!("sequencers[{i}]");
            match endpoint_scheme(url) {
                Some(Scheme::Https) if self.sequencer_tls.is_none() => {
                    return Err(problem(
                        "sequencer-tls",
                        format!(
                            "is required for the https endpoint {url:?} (set sequencer-tls.ca)"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(ConfigProblem {
                        key,
                        reason: format!("= {url:?} must be http://host:port or https://host:port"),
                    });
                }
            }
        }
        if self.lease.name.trim().is_empty() {
            return Err(problem("lease.name", "must not be empty"));
        }
        if let Err(domain_lease::LeaseError::InvalidConfig { key, reason }) = self.lease.validate()
        {
            return Err(problem(&format!("lease.{key}"), reason));
        }
        if self.time_proof_interval.is_zero() {
            return Err(problem("time-proof-interval", "must be greater than 0"));
        }
        if self.verdict_ttl < Duration::from_secs(1) {
            return Err(problem("verdict-ttl", "must be at least 1s"));
        }
        if self.max_batch_events == 0 {
            return Err(problem("max-batch-events", "must be at least 1"));
        }
        if self.request_retention < Duration::from_secs(300) {
            return Err(problem(
                "request-retention",
                "must be at least 5m (late responses are classified against decided requests that long)",
            ));
        }
        if self.acknowledge_interval.is_zero() {
            return Err(problem("acknowledge-interval", "must be greater than 0"));
        }
        if self.max_inflight_verdicts == 0 {
            return Err(problem("max-inflight-verdicts", "must be at least 1"));
        }
        if self.sequencer_timeout.is_zero() {
            return Err(problem("sequencer-timeout", "must be greater than 0"));
        }
        if self.database.pool_max_size < 3 {
            return Err(problem(
                "database.pool-max-size",
                "must be at least 3 (event processing, verdict sending and admin queries each hold one)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// The scheme of an endpoint URL with a non-empty authority, or `None`.
pub fn endpoint_scheme(url: &str) -> Option<Scheme> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return None;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    (!authority.is_empty()).then_some(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> MediatorConfig {
        MediatorConfig {
            domain_id: Some(
                DomainId::parse(&format!("dom::1220{}", "a".repeat(64))).expect("domain id"),
            ),
            signing_key_file: "/keys/mediator.pem".into(),
            sequencers: vec!["http://127.0.0.1:5001".into()],
            ..MediatorConfig::default()
        }
    }

    #[test]
    fn defaults_need_the_required_keys() {
        let e = MediatorConfig::default()
            .validate()
            .expect_err("domain-id missing");
        assert_eq!(e.key, "domain-id");
        valid().validate().expect("valid");
    }

    #[test]
    fn errors_name_the_key() {
        type Change = Box<dyn Fn(&mut MediatorConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.domain_id = None), "domain-id"),
            (
                Box::new(|c| c.signing_key_file = PathBuf::new()),
                "signing-key-file",
            ),
            (Box::new(|c| c.sequencers.clear()), "sequencers"),
            (
                Box::new(|c| c.sequencers.push("ftp://x".into())),
                "sequencers[1]",
            ),
            (
                Box::new(|c| c.sequencers = vec!["https://seq:5001".into()]),
                "sequencer-tls",
            ),
            (
                Box::new(|c| c.lease.renew_interval = Duration::from_secs(5)),
                "lease.renew-interval",
            ),
            (
                Box::new(|c| c.time_proof_interval = Duration::ZERO),
                "time-proof-interval",
            ),
            (Box::new(|c| c.name = "a::b".into()), "name"),
            (
                Box::new(|c| c.database.pool_max_size = 1),
                "database.pool-max-size",
            ),
            (
                Box::new(|c| c.request_retention = Duration::from_secs(60)),
                "request-retention",
            ),
        ];
        for (change, key) in cases {
            let mut c = valid();
            change(&mut c);
            let e = c.validate().expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn loads_from_toml_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("mediator-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.toml");
        std::fs::write(
            &path,
            "sequencers = [\"http://a:1\"]\ntime-proof-interval = \"50ms\"\n[lease]\nttl = \"1s\"\nrenew-interval = \"200ms\"\n",
        )
        .expect("write");
        let c: MediatorConfig =
            domain_runtime::config::load(Some(&path), Vec::new(), "MEDIATOR", &[]).expect("load");
        assert_eq!(c.time_proof_interval, Duration::from_millis(50));
        assert_eq!(c.lease.name, LEASE_NAME);
        assert_eq!(c.lease.ttl, Duration::from_secs(1));
        std::fs::write(&path, "sequencerz = []\n").expect("write");
        let e = domain_runtime::config::load::<MediatorConfig>(
            Some(&path),
            Vec::new(),
            "MEDIATOR",
            &[],
        )
        .expect_err("unknown key");
        assert_eq!(e.key(), Some("sequencerz"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The Kubernetes example config loads and is valid once its placeholder domain id is
    /// replaced (as an operator must), with one endpoint per sequencer pod.
    #[test]
    fn the_kubernetes_example_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/k8s/base/mediator.toml");
        let domain_id = format!("domain-id=\"dom::1220{}\"", "a".repeat(64));
        let c: MediatorConfig =
            domain_runtime::config::load(Some(&path), Vec::new(), "MEDIATOR", &[domain_id])
                .expect("deploy/k8s/base/mediator.toml loads");
        c.validate()
            .expect("deploy/k8s/base/mediator.toml is valid");
        assert_eq!(
            c.sequencers,
            (0..3)
                .map(|i| format!("https://sequencer-{i}.sequencer-pods:5001"))
                .collect::<Vec<_>>()
        );
    }

    /// The domain id is parsed when the file is read: a bad one is refused naming the key,
    /// and a good one serializes back to the same TOML string.
    #[test]
    fn domain_id_is_parsed_when_read_and_serializes_back() {
        let load = |set: &str| {
            domain_runtime::config::load_text::<MediatorConfig>(
                None,
                Vec::new(),
                "MEDIATOR",
                &[set.to_owned()],
            )
        };
        let err = load("domain-id=\"d::1220ab\"").expect_err("short fingerprint");
        assert_eq!(err.key(), Some("domain-id"), "{err}");
        assert!(
            err.to_string()
                .contains("fingerprint must be 68 characters long, got 6"),
            "{err}"
        );
        let id = format!("dom::1220{}", "a".repeat(64));
        let c = load(&format!("domain-id=\"{id}\"")).expect("valid");
        assert_eq!(
            c.domain_id.as_ref().map(ToString::to_string),
            Some(id.clone())
        );
        let text = toml::to_string(&c).expect("serialize");
        assert!(text.contains(&format!("domain-id = \"{id}\"")), "{text}");
    }
}
