//! Participant node configuration (`participant run`). Every field is documented with its
//! unit and default; `participant run --dump-config` prints the effective values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use domain_runtime::grpc::GrpcServerConfig;
use domain_storage::DatabaseConfig;
use serde::{Deserialize, Serialize};

/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "participant-data";
/// Default admin API address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = domain_runtime::config::loopback(4602);
/// Default ops listen address.
pub const DEFAULT_OPS_LISTEN: SocketAddr = domain_runtime::config::all_interfaces(4603);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ParticipantConfig {
    /// Directory holding the key, the identity and the domain connection (written by
    /// `participant init` / `connect-multi`). Default `participant-data`.
    pub data_dir: PathBuf,
    /// The participant's own PostgreSQL database (stream position, pending requests,
    /// committed transactions). Migrations are applied at start.
    pub database: DatabaseConfig,
    /// Admin API (`domain.participant.admin.v1.ParticipantAdminService`, gRPC health,
    /// reflection). Default listen `127.0.0.1:4602`: loopback only.
    pub admin_api: GrpcServerConfig,
    /// Plaintext ops HTTP port: `/metrics`, `/health/live`, `/health/ready`.
    /// Default `0.0.0.0:4603`.
    pub ops_listen: SocketAddr,
    /// How this participant answers confirmation requests that list it as a confirming
    /// participant. Default `payload`.
    pub auto_confirm: AutoConfirm,
    /// Events processed (and persisted) in one database transaction at most. Default 128.
    pub max_batch_events: usize,
    /// How often the last processed event is acknowledged to the sequencer (lets it prune).
    /// Default `10s`.
    #[serde(with = "humantime_serde")]
    pub acknowledge_interval: Duration,
    /// Timeout of `connect-multi` checks and of one sequencer call attempt. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub sequencer_timeout: Duration,
    /// Pings without a `timeout_micros` wait this long for the verdict. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// How long shutdown waits for in-flight calls to drain. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// OTLP span export (`[tracing]`, shared by every service; off by default).
    pub tracing: domain_runtime::telemetry::TracingConfig,
}

impl Default for ParticipantConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database: DatabaseConfig {
                pool_max_size: 4,
                ..DatabaseConfig::default()
            },
            admin_api: GrpcServerConfig::with_listen(DEFAULT_ADMIN_LISTEN),
            ops_listen: DEFAULT_OPS_LISTEN,
            auto_confirm: AutoConfirm::Payload,
            max_batch_events: 128,
            acknowledge_interval: Duration::from_secs(10),
            sequencer_timeout: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            tracing: domain_runtime::telemetry::TracingConfig::default(),
        }
    }
}

/// The automatic confirmation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoConfirm {
    /// Approve, unless the request's payload starts with the bytes `reject`.
    Payload,
    /// Approve every request.
    Approve,
    /// Reject every request.
    Reject,
    /// Never answer (the mediator times the request out).
    Off,
}

impl AutoConfirm {
    /// The decision for a payload, or `None` when no response is sent.
    pub fn decide(self, payload: &[u8]) -> Option<(bool, &'static str)> {
        match self {
            AutoConfirm::Payload if payload.starts_with(b"reject") => {
                Some((false, "payload starts with `reject`"))
            }
            AutoConfirm::Payload | AutoConfirm::Approve => Some((true, "")),
            AutoConfirm::Reject => Some((false, "auto-confirm policy rejects everything")),
            AutoConfirm::Off => None,
        }
    }
}

/// A configuration value that is well-typed but unusable; names the key.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` {reason}")]
pub struct ConfigProblem {
    pub key: &'static str,
    pub reason: String,
}

impl ParticipantConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        let problem = |key, reason: &str| ConfigProblem {
            key,
            reason: reason.to_owned(),
        };
        if let Some(reason) = self.admin_api.admin_exposure_problem(false) {
            return Err(problem("admin-api", &reason));
        }
        if let Err((key, reason)) = self.admin_api.validate() {
            return Err(problem("admin-api", &format!("`{key}`: {reason}")));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(problem("data-dir", "must not be empty"));
        }
        if self.max_batch_events == 0 {
            return Err(problem("max-batch-events", "must be at least 1"));
        }
        if self.acknowledge_interval.is_zero() {
            return Err(problem("acknowledge-interval", "must be greater than 0"));
        }
        if self.sequencer_timeout.is_zero() {
            return Err(problem("sequencer-timeout", "must be greater than 0"));
        }
        if self.ping_timeout.is_zero() {
            return Err(problem("ping-timeout", "must be greater than 0"));
        }
        if self.database.pool_max_size < 2 {
            return Err(problem(
                "database.pool-max-size",
                "must be at least 2 (the instance lock holds one connection)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert_eq!(AutoConfirm::Payload.decide(b"ping 1"), Some((true, "")));
        assert_eq!(
            AutoConfirm::Payload.decide(b"reject me").map(|d| d.0),
            Some(false)
        );
        assert_eq!(
            AutoConfirm::Approve.decide(b"reject me").map(|d| d.0),
            Some(true)
        );
        assert_eq!(
            AutoConfirm::Reject.decide(b"ping").map(|d| d.0),
            Some(false)
        );
        assert_eq!(AutoConfirm::Off.decide(b"ping"), None);
    }

    #[test]
    fn admin_api_off_loopback_requires_tls() {
        let mut c = ParticipantConfig::default();
        c.admin_api.listen = "0.0.0.0:4602".parse().expect("address");
        let err = c.validate().expect_err("plaintext admin API off the host");
        assert_eq!(err.key, "admin-api");
    }

    #[test]
    fn loads_toml_and_names_bad_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "data-dir = \"/var/lib/p\"\nauto-confirm = \"off\"\n[admin-api]\nlisten = \"127.0.0.1:1\"\n",
        )
        .expect("write");
        let c: ParticipantConfig =
            domain_runtime::config::load(Some(&path), Vec::new(), "PARTICIPANT", &[])
                .expect("load");
        assert_eq!(c.auto_confirm, AutoConfirm::Off);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/p"));
        c.validate().expect("valid");
        std::fs::write(&path, "auto-confirm = \"maybe\"\n").expect("write");
        let e = domain_runtime::config::load::<ParticipantConfig>(
            Some(&path),
            Vec::new(),
            "PARTICIPANT",
            &[],
        )
        .expect_err("bad value");
        assert_eq!(e.key(), Some("auto-confirm"));
        let c = ParticipantConfig {
            max_batch_events: 0,
            ..ParticipantConfig::default()
        };
        assert_eq!(c.validate().expect_err("zero").key, "max-batch-events");
    }
}
