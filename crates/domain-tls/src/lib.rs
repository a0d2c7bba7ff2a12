//! TLS settings for gRPC clients and (feature `server`) servers, loaded from PEM files.
//!
//! Files are read and checked up front (PEM parsed with `rustls-pki-types`, the key checked
//! against the certificate with the ring provider), so a bad file fails at start-up with an
//! error naming the file and what is wrong, instead of a handshake failure later.
//!
//! tonic's TLS bakes the certificate in at start-up; rotating certificates means restarting
//! the process.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[cfg(feature = "server")]
use tonic::transport::ServerTlsConfig;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[cfg(feature = "server")]
/// Server certificate, key and (for mutual TLS) the CA that client certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for the leaf certificate.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are verified against. Without it, client
    /// certificates are not requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Refuse clients that do not present a certificate signed by `client-ca` (mutual TLS).
    /// When false and `client-ca` is set, client certificates are optional but verified.
    #[serde(default)]
    pub require_client_cert: bool,
}

/// The CA a client trusts and, for mutual TLS, its own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientTlsFiles {
    /// PEM CA certificates the server certificate must chain to; the only trust anchors
    /// (system roots are not used).
    pub ca: PathBuf,
    /// PEM client certificate chain, for mutual TLS; requires `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Name to verify the server certificate against, when it differs from the host in the
    /// endpoint URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file does not exist.
    #[error("{what} file {} does not exist", path.display())]
    Missing {
        /// What the file was for (e.g. `server certificate`).
        what: &'static str,
        /// Path as configured.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("{what} file {} cannot be read: {error}", path.display())]
    Unreadable {
        /// What the file was for.
        what: &'static str,
        /// Path as configured.
        path: PathBuf,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// The file is not PEM, or holds no item of the expected kind.
    #[error("{what} file {} is invalid: {problem}", path.display())]
    Invalid {
        /// What the file was for.
        what: &'static str,
        /// Path as configured.
        path: PathBuf,
        /// E.g. `no certificate found`, `no private key found`.
        problem: String,
    },
    /// Settings that contradict each other.
    #[error("invalid tls settings: {0}")]
    Settings(&'static str),
}

#[cfg(feature = "server")]
/// Builds the tonic server TLS settings from `files`.
pub fn server_tls_config(files: &ServerTlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let identity = load_identity(&files.cert, &files.key, "server certificate", "server key")?;
    let mut config = ServerTlsConfig::new().identity(identity);
    match &files.client_ca {
        Some(ca) => {
            let ca = load_certificates(ca, "client ca")?;
            config = config
                .client_ca_root(ca)
                .client_auth_optional(!files.require_client_cert);
        }
        None if files.require_client_cert => {
            return Err(TlsError::Settings(
                "require-client-cert needs client-ca to verify client certificates against",
            ));
        }
        None => {}
    }
    Ok(config)
}

/// Builds the tonic client TLS settings from `files`, trusting only `files.ca`.
pub fn client_tls_config(files: &ClientTlsFiles) -> Result<ClientTlsConfig, TlsError> {
    let mut config = ClientTlsConfig::new().ca_certificate(load_certificates(&files.ca, "ca")?);
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(load_identity(
                cert,
                key,
                "client certificate",
                "client key",
            )?);
        }
        (None, None) => {}
        _ => {
            return Err(TlsError::Settings(
                "client cert and key must be set together",
            ));
        }
    }
    if let Some(name) = &files.domain_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// Reads a PEM file with one or more certificates.
pub fn load_certificates(path: &Path, what: &'static str) -> Result<Certificate, TlsError> {
    let pem = read(path, what)?;
    parse_certificates(&pem, path, what)?;
    Ok(Certificate::from_pem(pem))
}

/// Reads a certificate chain and its private key, checking that they belong together.
pub fn load_identity(
    cert_path: &Path,
    key_path: &Path,
    cert_what: &'static str,
    key_what: &'static str,
) -> Result<Identity, TlsError> {
    let cert_pem = read(cert_path, cert_what)?;
    let chain = parse_certificates(&cert_pem, cert_path, cert_what)?;
    let key_pem = read(key_path, key_what)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::Invalid {
        what: key_what,
        path: key_path.to_owned(),
        problem: match error {
            rustls_pki_types::pem::Error::NoItemsFound => "no private key found".to_owned(),
            other => format!("not a valid PEM private key: {other}"),
        },
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|error| {
        TlsError::Invalid {
            what: key_what,
            path: key_path.to_owned(),
            problem: format!(
                "private key is unusable with certificate {}: {error}",
                cert_path.display()
            ),
        }
    })?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => TlsError::Missing {
            what,
            path: path.to_owned(),
        },
        _ => TlsError::Unreadable {
            what,
            path: path.to_owned(),
            error,
        },
    })
}

fn parse_certificates(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |problem: String| TlsError::Invalid {
        what,
        path: path.to_owned(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("not valid PEM: {error}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate found".to_owned()));
    }
    record_expiry(&certs, path, what);
    Ok(certs)
}

/// A certificate read by this crate: what it was for, the file, its subject and `notAfter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCertificate {
    /// What the file was for (e.g. `server certificate`).
    pub role: String,
    pub path: String,
    pub subject: String,
    /// `notAfter` as a Unix timestamp.
    pub not_after_unix: i64,
}

/// Certificates loaded so far, keyed by (role, path, subject): loading the same again
/// overwrites the entry.
static LOADED: Mutex<BTreeMap<(String, String, String), i64>> = Mutex::new(BTreeMap::new());

/// Every certificate loaded by this process, for the `tls_certificate_expiry_timestamp_seconds`
/// gauge (rendered by the service runtime at scrape time).
pub fn loaded_certificates() -> Vec<LoadedCertificate> {
    let loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    loaded
        .iter()
        .map(|((role, path, subject), not_after)| LoadedCertificate {
            role: role.clone(),
            path: path.clone(),
            subject: subject.clone(),
            not_after_unix: *not_after,
        })
        .collect()
}

/// Remembers every certificate in the file for [`loaded_certificates`]. A certificate the
/// X.509 parser cannot read is left out, not refused: rustls decides what is acceptable
/// when the handshake uses it.
fn record_expiry(certs: &[CertificateDer<'_>], path: &Path, what: &str) {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    for cert in certs {
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            loaded.insert(
                (
                    what.to_owned(),
                    path.display().to_string(),
                    parsed.subject().to_string(),
                ),
                parsed.validity().not_after.timestamp(),
            );
        }
    }
}
