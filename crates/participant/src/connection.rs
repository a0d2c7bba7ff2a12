//! The domain connection (`connect-multi`): one alias, several sequencer endpoints of one
//! domain and the provider's root CA, checked against the endpoints and persisted in the
//! data directory as `domain-connection.toml` (the CA is copied next to it as
//! `domain-ca-<alias>.pem`, so the node does not depend on where the operator kept it).
//!
//! The check needs no allowlisting: it runs `Handshake` and `GetDomainInfo` over TLS, which
//! every sequencer answers without a token. At least one endpoint must answer; every
//! endpoint that answers must show the same domain. Without a pinned sequencer key (bundle,
//! `--expect-sequencer-key`), an endpoint is only believed when the key it presents is the
//! one the domain's namespace-signed sequencer registration names
//! ([`domain_sequencer_client::trust`]); one that is not is refused and not saved, whatever
//! its place in the list.

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_identity::{DomainId, MemberId, MemberRole, UniqueId};
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use domain_runtime::tls::{ClientTlsFiles, TlsError, client_tls_config};
use domain_sequencer_client::DomainInfo;
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
    /// Fingerprint of the sequencer key the endpoints must present (pinned from a bundle,
    /// `--expect-sequencer-key`, or what they showed at connect time). The domain id above
    /// is always pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequencer_key: Option<String>,
    /// Trust the system's CA roots too (endpoints with certificates of public CAs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system_roots: bool,
    /// Copy of the client certificate (PEM) presented to the sequencers (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Copy of its private key (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Copy of the verified connection bundle this connection was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
}

/// Where a system's CA roots are looked for: `SSL_CERT_FILE`, then the usual bundle files
/// of Debian/Ubuntu/Alpine, Fedora/RHEL, and others.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA roots as PEM.
pub fn system_roots_pem() -> Result<(PathBuf, Vec<u8>), ConnectError> {
    let candidates: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_ROOTS.iter().map(PathBuf::from))
        .collect();
    for path in &candidates {
        if let Ok(pem) = std::fs::read(path) {
            return Ok((path.clone(), pem));
        }
    }
    Err(ConnectError::NoSystemRoots {
        tried: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The TLS settings of a connection: its CA copy and/or the system roots, and the client
/// certificate. `None` for `http://` endpoints.
pub fn connection_tls(conn: &DomainConnection) -> Result<Option<ClientTlsConfig>, ConnectError> {
    let uses_tls = conn.endpoints.iter().any(|e| e.starts_with("https://"));
    if !uses_tls {
        return Ok(None);
    }
    let ca_pem = match &conn.ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| IdentityError::File {
            path: path.clone(),
            reason: format!("cannot read: {e}"),
        })?),
        None => None,
    };
    let client = match (&conn.client_cert, &conn.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    build_tls(ca_pem.as_deref(), conn.system_roots, client).map(Some)
}

/// Client TLS from a CA (PEM), the system roots, and an optional client certificate.
pub fn build_tls(
    ca_pem: Option<&[u8]>,
    system_roots: bool,
    client: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, ConnectError> {
    let mut roots = Vec::new();
    if let Some(pem) = ca_pem {
        parse_ca(pem)?;
        roots.extend_from_slice(pem);
        roots.push(b'\n');
    }
    if system_roots {
        roots.extend(system_roots_pem()?.1);
    }
    if roots.is_empty() {
        return Err(ConnectError::MissingCa);
    }
    let mut config =
        ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(roots));
    if let Some((cert, key)) = client {
        config = config.identity(domain_runtime::tls::load_identity(
            cert,
            key,
            "client certificate",
            "client key",
        )?);
    }
    Ok(config)
}

/// Checks that `pem` holds at least one certificate.
fn parse_ca(pem: &[u8]) -> Result<(), ConnectError> {
    use rustls_pki_types::pem::PemObject as _;
    let count = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .filter(Result::is_ok)
        .count();
    if count == 0 {
        return Err(ConnectError::InvalidCa);
    }
    Ok(())
}

/// What the endpoints must show (bundle, `--expect-…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub domain_id: Option<String>,
    pub sequencer_key: Option<String>,
}

/// Everything a connection is made from.
#[derive(Debug, Clone, Default)]
pub struct ConnectSpec {
    pub alias: String,
    pub endpoints: Vec<String>,
    /// The CA (PEM) to copy into the data directory.
    pub ca_pem: Option<Vec<u8>>,
    pub system_roots: bool,
    /// Client certificate and key files (copied into the data directory).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub mediator: Option<String>,
    pub pins: Pins,
    /// The verified bundle's text, kept next to the connection.
    pub bundle: Option<String>,
    pub timeout: Duration,
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
    #[error("https:// endpoints need the domain's root CA (--ca <pem>) or --system-roots")]
    MissingCa,
    #[error("the CA holds no PEM certificate")]
    InvalidCa,
    #[error("--system-roots: no CA bundle found (tried {tried}; set SSL_CERT_FILE)")]
    NoSystemRoots { tried: String },
    #[error("--client-cert and --client-key go together")]
    ClientCertPair,
    #[error("no endpoint of {alias} shows the pinned domain and sequencer key: {details}")]
    NoPinnedEndpoint { alias: String, details: String },
    #[error(
        "no endpoint of {alias} presents a sequencer key confirmed by the domain's \
         namespace-signed sequencer registration (use a connection bundle or \
         --expect-sequencer-key to pin one): {details}"
    )]
    Untrusted { alias: String, details: String },
    #[error("invalid pin {value:?}: {reason}")]
    Pin { value: String, reason: String },
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
    /// Domain id, sequencer id and sequencer key fingerprint shown, or why none.
    pub result: Result<(String, String, String), String>,
    /// The endpoint answered but broke a pin, or (with no pinned key) presented a sequencer
    /// key no namespace-signed registration confirms: it is refused and not saved.
    pub refused: bool,
    /// Why the key it presented is not confirmed by a registration (None when it is).
    unregistered: Option<String>,
}

/// The outcome of checking every endpoint.
#[derive(Debug, Clone)]
pub struct CheckedDomain {
    pub domain_id: String,
    pub sequencer_id: String,
    /// Fingerprint of the sequencer key shown.
    pub sequencer_key: String,
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
/// `timeout`). An endpoint breaking a pin is refused (the others still count). Succeeds
/// when at least one endpoint answers within the pins and all those agree on the domain.
pub async fn check_endpoints(
    alias: &str,
    endpoints: &[String],
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    pins: &Pins,
) -> Result<CheckedDomain, ConnectError> {
    let mut untrusted = false;
    let mut checks = futures::future::join_all(endpoints.iter().map(|e| {
        let tls = tls.clone();
        async move {
            let result = tokio::time::timeout(timeout, check_one(e, tls, timeout))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            let (result, unregistered) = match result {
                Ok(info) => {
                    let unregistered = info.unregistered_reason();
                    (
                        Ok((
                            info.domain_id,
                            info.sequencer_id,
                            info.sequencer_key.fingerprint().to_string(),
                        )),
                        unregistered,
                    )
                }
                Err(e) => (Err(e), None),
            };
            EndpointCheck {
                endpoint: e.clone(),
                result,
                refused: false,
                unregistered,
            }
        }
    }))
    .await;
    for c in &mut checks {
        let Ok((domain, _, key)) = &c.result else {
            continue;
        };
        let violation = if let Some(d) = pins.domain_id.as_ref().filter(|d| *d != domain) {
            Some(format!(
                "refused: serves domain {domain}, not the pinned domain {d}"
            ))
        } else if let Some(k) = &pins.sequencer_key {
            (k != key)
                .then(|| format!("refused: presents sequencer key {key}, not the pinned key {k}"))
        } else if let Some(reason) = c.unregistered.take() {
            untrusted = true;
            Some(format!("refused: {reason}"))
        } else {
            None
        };
        if let Some(v) = violation {
            c.result = Err(v);
            c.refused = true;
        }
    }
    let answered: Vec<&(String, String, String)> = checks
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
        if untrusted {
            return Err(ConnectError::Untrusted {
                alias: alias.to_owned(),
                details,
            });
        }
        if checks.iter().any(|c| c.refused) {
            return Err(ConnectError::NoPinnedEndpoint {
                alias: alias.to_owned(),
                details,
            });
        }
        return Err(ConnectError::Unreachable {
            alias: alias.to_owned(),
            details,
        });
    };
    if answered.iter().any(|a| a.0 != first.0 || a.2 != first.2) {
        let details = checks
            .iter()
            .filter_map(|c| {
                c.result
                    .as_ref()
                    .ok()
                    .map(|(d, _, k)| format!("{} serves {d} with sequencer key {k}", c.endpoint))
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ConnectError::DifferentDomains { details });
    }
    Ok(CheckedDomain {
        domain_id: first.0.clone(),
        sequencer_id: first.1.clone(),
        sequencer_key: first.2.clone(),
        endpoints: checks,
    })
}

async fn check_one(
    endpoint: &str,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
) -> Result<DomainInfo, String> {
    let channel = domain_sequencer_client::connect_channel(endpoint, tls, timeout)
        .await
        .map_err(|e| explain_tls(error_chain(&e)))?;
    let mut client = SequencerServiceClient::new(channel);
    let handshake = client
        .handshake(pb::HandshakeRequest {
            client_protocol_versions: vec![domain_proto::PROTOCOL_VERSION.to_owned()],
        })
        .await
        .map_err(|s| explain_tls(format!("Handshake: {:?}: {}", s.code(), error_chain(&s))))?
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
    DomainInfo::from_proto(info).map_err(|e| format!("GetDomainInfo: {e}"))
}

/// Says which side of a TLS connection refused and why, when `text` (an error chain) shows
/// a TLS failure; otherwise returns `text` unchanged.
pub fn explain_tls(text: String) -> String {
    let why = if text.contains("CertificateRequired") {
        "the sequencer refused the connection: it requires a client certificate (give --client-cert and --client-key)"
    } else if text.contains("received fatal alert") {
        "the sequencer refused our client certificate (not signed by a CA it accepts for clients, or expired)"
    } else if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") {
        "we refused the sequencer's certificate: it does not chain to the trusted CA (wrong --ca, or --system-roots needed)"
    } else if text.contains("connection closed")
        || text.contains("broken pipe")
        || text.contains("connection reset")
    {
        // TLS 1.3: the server checks the client certificate after the client considers the
        // handshake done, and its alert can lose the race with the connection close; all we
        // then see is the close.
        "the sequencer refused the connection (closed it right after the TLS handshake): it most likely requires a client certificate (give --client-cert and --client-key) or refused ours"
    } else {
        return text;
    };
    format!("{why}: {text}")
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
    connect(
        data_dir,
        ConnectSpec {
            alias: alias.to_owned(),
            endpoints: endpoints.to_vec(),
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            mediator,
            timeout,
            ..ConnectSpec::default()
        },
    )
    .await
}

/// Validates the pins' syntax.
pub fn validate_pins(pins: &Pins) -> Result<(), ConnectError> {
    if let Some(d) = &pins.domain_id {
        DomainId::parse(d).map_err(|e| ConnectError::Pin {
            value: d.clone(),
            reason: e.to_string(),
        })?;
    }
    if let Some(k) = &pins.sequencer_key {
        domain_identity::Fingerprint::parse(k).map_err(|e| ConnectError::Pin {
            value: k.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Stages `bytes` as `name` in `data_dir` (`name.new`, renamed by [`commit`]).
fn stage(data_dir: &Path, name: &str, bytes: &[u8]) -> Result<(PathBuf, PathBuf), ConnectError> {
    let final_path = data_dir.join(name);
    let staged = data_dir.join(format!("{name}.new"));
    write_atomically(&staged, bytes)?;
    Ok((staged, final_path))
}

fn commit(files: &[(PathBuf, PathBuf)]) -> Result<(), ConnectError> {
    for (staged, final_path) in files {
        std::fs::rename(staged, final_path).map_err(|e| IdentityError::File {
            path: final_path.clone(),
            reason: format!("cannot write: {e}"),
        })?;
    }
    Ok(())
}

fn discard(files: &[(PathBuf, PathBuf)]) {
    for (staged, _) in files {
        let _ = std::fs::remove_file(staged);
    }
}

/// Makes a connection: validates everything locally, checks the endpoints against the pins,
/// and only then writes the connection file and its copies (CA, client certificate and
/// key, bundle). A refusal leaves the data directory as it was.
pub async fn connect(
    data_dir: &Path,
    spec: ConnectSpec,
) -> Result<(DomainConnection, CheckedDomain), ConnectError> {
    let alias = spec.alias.as_str();
    validate_alias(alias)?;
    let uses_tls = validate_endpoints(&spec.endpoints)?;
    if let Some(m) = &spec.mediator {
        validate_mediator(m)?;
    }
    validate_pins(&spec.pins)?;
    crate::identity::create_private_dir(data_dir)?;
    let client_pem = match &spec.client_cert {
        Some((cert, key)) => {
            // Loaded together first: a mismatching pair is named before any copy.
            domain_runtime::tls::load_identity(cert, key, "client certificate", "client key")?;
            let read = |p: &Path| {
                std::fs::read(p).map_err(|e| IdentityError::File {
                    path: p.to_owned(),
                    reason: format!("cannot read: {e}"),
                })
            };
            Some((read(cert)?, read(key)?))
        }
        None => None,
    };
    let tls = if uses_tls {
        let client = spec
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        Some(build_tls(
            spec.ca_pem.as_deref(),
            spec.system_roots,
            client,
        )?)
    } else {
        None
    };
    let checked = check_endpoints(alias, &spec.endpoints, tls, spec.timeout, &spec.pins).await?;
    let mut files = Vec::new();
    let result = (|| {
        let ca = match (&spec.ca_pem, uses_tls) {
            (Some(pem), true) => {
                let f = stage(data_dir, &format!("domain-ca-{alias}.pem"), pem)?;
                let path = f.1.clone();
                files.push(f);
                Some(path)
            }
            _ => None,
        };
        let (client_cert, client_key) = match &client_pem {
            Some((cert, key)) => {
                let c = stage(data_dir, &format!("domain-client-{alias}.pem"), cert)?;
                let k = stage(data_dir, &format!("domain-client-{alias}.key"), key)?;
                restrict(&k.0)?;
                let paths = (Some(c.1.clone()), Some(k.1.clone()));
                files.push(c);
                files.push(k);
                paths
            }
            None => (None, None),
        };
        let bundle = match &spec.bundle {
            Some(text) => {
                let f = stage(
                    data_dir,
                    &format!("domain-bundle-{alias}.json"),
                    text.as_bytes(),
                )?;
                let path = f.1.clone();
                files.push(f);
                Some(path)
            }
            None => None,
        };
        Ok::<_, ConnectError>((ca, client_cert, client_key, bundle))
    })();
    let (ca, client_cert, client_key, bundle) = match result {
        Ok(v) => v,
        Err(e) => {
            discard(&files);
            return Err(e);
        }
    };
    if let Err(e) = commit(&files) {
        discard(&files);
        return Err(e);
    }
    let previous = load(data_dir).ok().flatten();
    let mediator = spec.mediator.clone().or_else(|| {
        previous
            .filter(|p| p.domain_id == checked.domain_id)
            .and_then(|p| p.mediator)
    });
    // Endpoints that broke a pin are not kept; unreachable ones are (they may come back).
    let endpoints = checked
        .endpoints
        .iter()
        .filter(|c| !c.refused)
        .map(|c| c.endpoint.clone())
        .collect();
    let connection = DomainConnection {
        alias: alias.to_owned(),
        endpoints,
        ca,
        domain_id: checked.domain_id.clone(),
        sequencer_id: checked.sequencer_id.clone(),
        mediator,
        sequencer_key: Some(checked.sequencer_key.clone()),
        system_roots: spec.system_roots && uses_tls,
        client_cert,
        client_key,
        bundle,
    };
    let text = toml::to_string_pretty(&connection).map_err(|e| IdentityError::File {
        path: connection_path(data_dir),
        reason: e.to_string(),
    })?;
    write_atomically(&connection_path(data_dir), text.as_bytes())?;
    Ok((connection, checked))
}

/// Mode 0600 for a copied private key.
fn restrict(path: &Path) -> Result<(), ConnectError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        IdentityError::File {
            path: path.to_owned(),
            reason: format!("cannot restrict permissions: {e}"),
        }
        .into()
    })
}

/// Reads and verifies a connection bundle file.
pub fn read_bundle(
    path: &Path,
) -> Result<(String, domain_identity::onboarding::VerifiedBundle), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read bundle {}: {e}", path.display()))?;
    let bundle = domain_identity::onboarding::verify_bundle(&text).map_err(|e| {
        format!(
            "connection bundle {} refused: {e} [{}]; nothing was changed",
            path.display(),
            e.code()
        )
    })?;
    Ok((text, bundle))
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
