//! The domain connection (`connect-multi`): one alias, several sequencer endpoints of one
//! domain and the provider's root CA, checked against the endpoints and persisted in the
//! data directory as `domain-connection.toml` (the CA is copied next to it as
//! `domain-ca-<alias>.pem`, so the node does not depend on where the operator kept it).
//!
//! The check needs no allowlisting: it runs `Handshake` and `GetDomainInfo` over TLS, which
//! every sequencer answers without a token. At least one endpoint must answer; every
//! endpoint that answers must show the same domain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_identity::{DomainId, MemberId, MemberRole, UniqueId};
use domain_proto::v1::{self as pb, sequencer_service_client::SequencerServiceClient};
use domain_runtime::tls::{ClientTlsFiles, TlsError, client_tls_config};
use serde::{Deserialize, Serialize};
use tonic::transport::ClientTlsConfig;

use crate::identity::{IdentityError, write_atomically};

/// Connection file name inside the data directory.
pub const CONNECTION_FILE: &str = "domain-connection.toml";

/// What `connect-multi` persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DomainConnection {
    /// Local name of the domain connection.
    pub alias: String,
    /// Sequencer public API endpoints (`https://host:port`), all of one domain.
    pub endpoints: Vec<String>,
    /// Copy of the domain's root CA (PEM) in the data directory; absent for `http://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Domain id shown by the endpoints at `connect-multi` time.
    pub domain_id: String,
    /// Sequencer id shown by the endpoints.
    pub sequencer_id: String,
    /// Mediator to address requests to while the participant has not seen a mediator
    /// registration in its own event stream (see docs/participant.md, "Topology").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mediator: Option<String>,
}

/// Why a connection cannot be set up; every message names the file, endpoint or value.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid alias {alias:?}: {reason}")]
    Alias { alias: String, reason: String },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("no sequencer endpoint given")]
    NoEndpoint,
    #[error("mixing http:// and https:// endpoints is not supported")]
    MixedSchemes,
    #[error("https:// endpoints need the domain's root CA (--ca <pem>)")]
    MissingCa,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid mediator id {id:?}: {reason}")]
    Mediator { id: String, reason: String },
    #[error("cannot reach domain {alias}: no endpoint answered Handshake/GetDomainInfo: {details}")]
    Unreachable { alias: String, details: String },
    #[error("the endpoints belong to different domains: {details}")]
    DifferentDomains { details: String },
    #[error(transparent)]
    File(#[from] IdentityError),
}

/// What one endpoint answered (or why it did not).
#[derive(Debug, Clone)]
pub struct EndpointCheck {
    pub endpoint: String,
    pub result: Result<(String, String), String>,
}

/// The outcome of checking every endpoint.
#[derive(Debug, Clone)]
pub struct CheckedDomain {
    pub domain_id: String,
    pub sequencer_id: String,
    pub endpoints: Vec<EndpointCheck>,
}

/// Validates the alias: `[A-Za-z0-9_.-]{1,185}` (it becomes part of a file name).
pub fn validate_alias(alias: &str) -> Result<(), ConnectError> {
    UniqueId::validate_name(alias).map_err(|e| ConnectError::Alias {
        alias: alias.to_owned(),
        reason: e.to_string(),
    })
}

/// Validates a mediator id hint (`MED::name::1220…`).
pub fn validate_mediator(id: &str) -> Result<(), ConnectError> {
    match MemberId::parse(id) {
        Ok(m) if m.role() == MemberRole::Mediator => Ok(()),
        Ok(_) => Err(ConnectError::Mediator {
            id: id.to_owned(),
            reason: "not a mediator id (MED::<name>::1220…)".into(),
        }),
        Err(e) => Err(ConnectError::Mediator {
            id: id.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Checks endpoint syntax; returns whether they use TLS (`https://`).
pub fn validate_endpoints(endpoints: &[String]) -> Result<bool, ConnectError> {
    if endpoints.is_empty() {
        return Err(ConnectError::NoEndpoint);
    }
    let mut tls = None;
    for e in endpoints {
        let (is_tls, rest) = if let Some(rest) = e.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = e.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(ConnectError::Endpoint {
                endpoint: e.clone(),
                reason: "must be https://host:port (or http://host:port without TLS)".into(),
            });
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(ConnectError::Endpoint {
                endpoint: e.clone(),
                reason: "has no host".into(),
            });
        }
        if let Err(err) = tonic::transport::Endpoint::from_shared(e.clone()) {
            return Err(ConnectError::Endpoint {
                endpoint: e.clone(),
                reason: err.to_string(),
            });
        }
        match tls {
            None => tls = Some(is_tls),
            Some(t) if t != is_tls => return Err(ConnectError::MixedSchemes),
            Some(_) => {}
        }
    }
    Ok(tls.unwrap_or(false))
}

/// Loads the client TLS settings for a CA file (the error names the file when it is missing
/// or holds no PEM certificate).
pub fn ca_tls(ca: &Path) -> Result<ClientTlsConfig, ConnectError> {
    Ok(client_tls_config(&ClientTlsFiles {
        ca: ca.to_owned(),
        cert: None,
        key: None,
        domain_name: None,
    })?)
}

/// Asks every endpoint for `Handshake` and `GetDomainInfo` (in parallel, each bounded by
/// `timeout`). Succeeds when at least one answers and all that answer agree on the domain.
pub async fn check_endpoints(
    alias: &str,
    endpoints: &[String],
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
) -> Result<CheckedDomain, ConnectError> {
    let checks = futures::future::join_all(endpoints.iter().map(|e| {
        let tls = tls.clone();
        async move {
            let result = tokio::time::timeout(timeout, check_one(e, tls, timeout))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            EndpointCheck {
                endpoint: e.clone(),
                result,
            }
        }
    }))
    .await;
    let answered: Vec<&(String, String)> = checks
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .collect();
    let Some(first) = answered.first() else {
        let details = checks
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c.endpoint,
                    c.result.as_ref().err().map_or("", |e| e)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ConnectError::Unreachable {
            alias: alias.to_owned(),
            details,
        });
    };
    if answered.iter().any(|a| a.0 != first.0) {
        let details = checks
            .iter()
            .filter_map(|c| {
                c.result
                    .as_ref()
                    .ok()
                    .map(|(d, _)| format!("{} serves {d}", c.endpoint))
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ConnectError::DifferentDomains { details });
    }
    Ok(CheckedDomain {
        domain_id: first.0.clone(),
        sequencer_id: first.1.clone(),
        endpoints: checks,
    })
}

async fn check_one(
    endpoint: &str,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
) -> Result<(String, String), String> {
    let channel = domain_sequencer_client::connect_channel(endpoint, tls, timeout)
        .await
        .map_err(|e| error_chain(&e))?;
    let mut client = SequencerServiceClient::new(channel);
    let handshake = client
        .handshake(pb::HandshakeRequest {
            client_protocol_versions: vec![domain_proto::PROTOCOL_VERSION.to_owned()],
        })
        .await
        .map_err(|s| format!("Handshake: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    if !handshake.accepted {
        return Err(format!(
            "protocol {} refused by the sequencer (speaks {}): {}",
            domain_proto::PROTOCOL_VERSION,
            handshake.server_protocol_version,
            handshake.reason
        ));
    }
    let info = client
        .get_domain_info(pb::GetDomainInfoRequest {})
        .await
        .map_err(|s| format!("GetDomainInfo: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    DomainId::parse(&info.domain_id)
        .map_err(|e| format!("shows an invalid domain id {:?}: {e}", info.domain_id))?;
    Ok((info.domain_id, info.sequencer_id))
}

/// An error with its sources (TLS failures hide in `source()`).
pub use domain_sequencer_client::error_chain;

/// Path of the persisted connection in `data_dir`.
pub fn connection_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONNECTION_FILE)
}

/// Loads the persisted connection, if `connect-multi` ran.
pub fn load(data_dir: &Path) -> Result<Option<DomainConnection>, ConnectError> {
    let path = connection_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(IdentityError::File {
                path,
                reason: format!("cannot read: {e}"),
            }
            .into());
        }
    };
    toml::from_str(&text).map(Some).map_err(|e| {
        IdentityError::File {
            path,
            reason: format!("invalid connection file: {e}"),
        }
        .into()
    })
}

/// Validates, checks against the endpoints and persists a connection. `ca_pem` is the CA
/// content (required for `https://` endpoints); `mediator` an optional mediator hint, kept
/// from the previous connection to the same domain when `None`.
pub async fn connect_multi(
    data_dir: &Path,
    alias: &str,
    endpoints: &[String],
    ca_pem: Option<&[u8]>,
    mediator: Option<String>,
    timeout: Duration,
) -> Result<(DomainConnection, CheckedDomain), ConnectError> {
    validate_alias(alias)?;
    let uses_tls = validate_endpoints(endpoints)?;
    if let Some(m) = &mediator {
        validate_mediator(m)?;
    }
    crate::identity::create_private_dir(data_dir)?;
    let (ca_path, tls) = match (uses_tls, ca_pem) {
        (true, None) => return Err(ConnectError::MissingCa),
        (true, Some(pem)) => {
            let final_path = data_dir.join(format!("domain-ca-{alias}.pem"));
            let staged = data_dir.join(format!("domain-ca-{alias}.pem.new"));
            write_atomically(&staged, pem)?;
            match ca_tls(&staged) {
                Ok(tls) => (Some((staged, final_path)), Some(tls)),
                Err(e) => {
                    let _ = std::fs::remove_file(&staged);
                    return Err(e);
                }
            }
        }
        (false, _) => (None, None),
    };
    let checked = match check_endpoints(alias, endpoints, tls, timeout).await {
        Ok(c) => c,
        Err(e) => {
            if let Some((staged, _)) = &ca_path {
                let _ = std::fs::remove_file(staged);
            }
            return Err(e);
        }
    };
    let ca = match ca_path {
        Some((staged, final_path)) => {
            std::fs::rename(&staged, &final_path).map_err(|e| IdentityError::File {
                path: final_path.clone(),
                reason: format!("cannot write: {e}"),
            })?;
            Some(final_path)
        }
        None => None,
    };
    let previous = load(data_dir).ok().flatten();
    let mediator = mediator.or_else(|| {
        previous
            .filter(|p| p.domain_id == checked.domain_id)
            .and_then(|p| p.mediator)
    });
    let connection = DomainConnection {
        alias: alias.to_owned(),
        endpoints: endpoints.to_vec(),
        ca,
        domain_id: checked.domain_id.clone(),
        sequencer_id: checked.sequencer_id.clone(),
        mediator,
    };
    let text = toml::to_string_pretty(&connection).map_err(|e| IdentityError::File {
        path: connection_path(data_dir),
        reason: e.to_string(),
    })?;
    write_atomically(&connection_path(data_dir), text.as_bytes())?;
    Ok((connection, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_syntax() {
        assert!(validate_endpoints(&["https://localhost:5001".into()]).expect("ok"));
        assert!(!validate_endpoints(&["http://localhost:5001".into()]).expect("ok"));
        assert!(matches!(
            validate_endpoints(&[]),
            Err(ConnectError::NoEndpoint)
        ));
        assert!(matches!(
            validate_endpoints(&["https://a:1".into(), "http://b:2".into()]),
            Err(ConnectError::MixedSchemes)
        ));
        let e = validate_endpoints(&["localhost:5001".into()]).expect_err("no scheme");
        assert!(e.to_string().contains("localhost:5001"), "{e}");
        assert!(validate_alias("devnet").is_ok());
        assert!(validate_alias("a/b").is_err());
    }

    #[test]
    fn missing_or_invalid_ca_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let e = ca_tls(&missing).expect_err("missing");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").expect("write");
        let e = ca_tls(&bad).expect_err("not pem");
        assert!(e.to_string().contains("bad.pem"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_endpoints_fail_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = domain_testkit::process::free_port();
        let e = connect_multi(
            dir.path(),
            "dom",
            &[format!("http://127.0.0.1:{port}")],
            None,
            None,
            Duration::from_millis(500),
        )
        .await
        .expect_err("nothing listens");
        let text = e.to_string();
        assert!(text.contains("cannot reach domain dom"), "{text}");
        assert!(text.contains(&port.to_string()), "{text}");
        assert!(
            load(dir.path()).expect("load").is_none(),
            "nothing persisted"
        );
    }
}
