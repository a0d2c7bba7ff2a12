//! TLS to PostgreSQL: the libpq-style `sslmode` settings, and a rustls connector for
//! tokio-postgres (the hot pool, dedicated and LISTEN connections). sqlx gets the same
//! settings through its own rustls support (see [`DatabaseConfig::sqlx_options`]).
//!
//! Both use rustls with the ring provider, like every other TLS endpoint of the workspace.
//!
//! [`DatabaseConfig::sqlx_options`]: crate::DatabaseConfig::sqlx_options

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::StorageError;

/// How a connection uses TLS, with libpq's names and meanings (`sslmode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS if the server offers it, plaintext otherwise; the certificate is not checked.
    /// Protects against passive eavesdropping only.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (but see `sslrootcert`: with
    /// it, `require` behaves like `verify-ca`, as in libpq).
    Require,
    /// TLS; the server certificate must chain to `sslrootcert`. The host name is not checked.
    VerifyCa,
    /// TLS; the certificate must chain to `sslrootcert` and name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The value as written in a URL or config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// True when the connection must be encrypted (no plaintext fallback).
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS parameters libpq accepts in a connection URL's query string. They are taken out
/// of the URL before it reaches tokio-postgres, which does not know most of them.
pub(crate) const URL_TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The effective TLS settings of one `[database]` section: config keys over URL parameters,
/// checked for consistency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// The effective mode; `require` with a root certificate is already turned into
    /// `verify-ca` (libpq's rule), so both drivers verify the same way.
    pub mode: SslMode,
    /// `sslrootcert`: the CA bundle server certificates must chain to.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`: an optional client certificate, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// Combines the config keys with the URL's `params` (percent-decoded `sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey`); a config key wins over the URL parameter.
    pub(crate) fn resolve(
        mode: Option<SslMode>,
        root_cert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        params: &[(String, String)],
    ) -> Result<Self, StorageError> {
        let param = |name: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mode = match (mode, param("sslmode")) {
            (Some(mode), _) => mode,
            (None, Some(value)) => SslMode::parse(value).ok_or_else(|| {
                invalid(format!(
                    "sslmode={value} in database.url is not one of disable, prefer, require, \
                 verify-ca, verify-full"
                ))
            })?,
            (None, None) => SslMode::default(),
        };
        let path = |configured: Option<&Path>, name: &str| {
            configured
                .map(Path::to_path_buf)
                .or_else(|| param(name).filter(|v| !v.is_empty()).map(PathBuf::from))
        };
        let root_cert = path(root_cert, "sslrootcert");
        let cert = path(cert, "sslcert");
        let key = path(key, "sslkey");
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "database.sslcert is set but database.sslkey is not; a client \
                     certificate needs its private key"
                        .to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "database.sslkey is set but database.sslcert is not; a client key \
                     needs its certificate"
                        .to_owned(),
                ));
            }
        };
        let mode = match mode {
            SslMode::Disable if root_cert.is_some() || client.is_some() => {
                return Err(invalid(
                    "database.sslmode = disable, yet database.sslrootcert, sslcert or sslkey \
                     is set; remove them or choose a mode that uses TLS"
                        .to_owned(),
                ));
            }
            // libpq's prefer never verifies, even with a root certificate; refuse rather
            // than let an operator believe the server is being authenticated.
            SslMode::Prefer if root_cert.is_some() => {
                return Err(invalid(
                    "database.sslrootcert is set but database.sslmode = prefer never checks \
                     the server certificate; use verify-full (or verify-ca)"
                        .to_owned(),
                ));
            }
            SslMode::Require if root_cert.is_some() => SslMode::VerifyCa,
            SslMode::VerifyCa | SslMode::VerifyFull if root_cert.is_none() => {
                return Err(invalid(format!(
                    "database.sslmode = {mode} needs database.sslrootcert: the CA \
                     certificate(s) that signed the server's certificate"
                )));
            }
            other => other,
        };
        Ok(Self {
            mode,
            root_cert,
            client,
        })
    }

    /// The settings as an operator wrote them, for error messages:
    /// `database.sslmode = verify-full, database.sslrootcert = /etc/db/ca.crt`.
    pub(crate) fn describe(&self) -> String {
        let mut out = format!("database.sslmode = {}", self.mode);
        if let Some(root) = &self.root_cert {
            out.push_str(&format!(", database.sslrootcert = {}", root.display()));
        }
        if let Some((cert, _)) = &self.client {
            out.push_str(&format!(", database.sslcert = {}", cert.display()));
        }
        out
    }

    /// The tokio-postgres mode: the verify modes are `require` there, the verification
    /// itself is done by [`PgTls`].
    pub(crate) fn tokio_postgres_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// Builds the tokio-postgres connector: reads the root and client certificate files now,
    /// so a missing or unreadable file fails at start, naming the setting.
    pub(crate) fn connector(&self) -> Result<PgTls, StorageError> {
        if self.mode == SslMode::Disable {
            return Ok(PgTls {
                config: None,
                settings: Arc::from(self.describe()),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("cannot set up TLS: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(LenientVerifier {
                provider,
                chain: None,
            }),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = self.root_store()?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            invalid(format!(
                                "database.sslrootcert is unusable as a trust anchor: {e}"
                            ))
                        })?;
                if self.mode == SslMode::VerifyCa {
                    Arc::new(LenientVerifier {
                        provider,
                        chain: Some(webpki),
                    })
                } else {
                    webpki
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert, "database.sslcert")?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    invalid(format!(
                        "cannot read a private key from database.sslkey = {}: {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    invalid(format!(
                        "database.sslcert = {} and database.sslkey = {} do not form a usable \
                         client certificate: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
        };
        Ok(PgTls {
            config: Some(Arc::new(config)),
            settings: Arc::from(self.describe()),
        })
    }

    fn root_store(&self) -> Result<RootCertStore, StorageError> {
        let Some(path) = &self.root_cert else {
            return Err(invalid(format!(
                "database.sslmode = {} needs database.sslrootcert",
                self.mode
            )));
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs(path, "database.sslrootcert")? {
            roots.add(cert).map_err(|e| {
                invalid(format!(
                    "database.sslrootcert = {} holds an unusable certificate: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(roots)
    }
}

fn invalid(reason: String) -> StorageError {
    StorageError::InvalidConfig { reason }
}

/// Reads every PEM certificate in `path`; none at all is an error naming `setting`.
fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, StorageError> {
    let bytes = std::fs::read(path)
        .map_err(|e| invalid(format!("cannot read {setting} = {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(format!(
                "{setting} = {} is not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{setting} = {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The certificate checks short of `verify-full`. Without a chain (`prefer` and `require`
/// without a root certificate): encrypt, but accept any server certificate (libpq's
/// behaviour). With one (`verify-ca`): the full webpki chain check, except that a
/// certificate for another host name is accepted. The handshake signature is checked in
/// both cases, so the server must hold the key of the certificate it presents.
#[derive(Debug)]
struct LenientVerifier {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the name last, so the chain is already known to be good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // The signature checks are webpki's own: the chain verifier is built from the same
    // provider, so its algorithms are `provider.signature_verification_algorithms`.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connector for cancel requests (`CancelToken::cancel_query`) where the `[database]`
/// section is not at hand, e.g. in a lease keeper that only has a pool.
///
/// A cancel token made under `sslmode = require` or a verify mode insists on TLS, so
/// `NoTls` can never deliver it. This connector encrypts without checking the server
/// certificate: a cancel request carries only the backend pid and its one-time cancel key,
/// which allow nothing but cancelling that backend's current query. Under `prefer` or
/// `disable` it behaves like the connection did.
pub fn cancel_connector() -> PgTls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|builder| {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LenientVerifier {
                    provider,
                    chain: None,
                }))
                .with_no_client_auth()
        });
    PgTls {
        // The ring provider supports the default protocol versions; should that ever
        // fail, cancelling over TLS fails like NoTls did, and the server-side
        // statement_timeout still ends the query.
        config: config.ok().map(Arc::new),
        settings: Arc::from("a cancel request (certificate not checked)"),
    }
}

/// The tokio-postgres TLS connector built from a `[database]` section (see
/// [`DatabaseConfig::tls_connector`](crate::DatabaseConfig::tls_connector)).
///
/// Cheap to clone. With `sslmode = disable` tokio-postgres never asks it for a handshake
/// (and it would refuse one).
#[derive(Clone)]
pub struct PgTls {
    config: Option<Arc<ClientConfig>>,
    /// The operator's settings, named in handshake errors.
    settings: Arc<str>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = PgTlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, PgTlsError> {
        let server_name = ServerName::try_from(domain.to_owned()).map_err(|e| PgTlsError {
            message: format!(
                "host {domain:?} cannot be checked against a TLS certificate ({e}) under {}",
                self.settings
            ),
        })?;
        Ok(PgTlsConnect {
            config: self.config.clone(),
            server_name,
            settings: self.settings.clone(),
        })
    }
}

/// One TLS handshake towards one host; made by [`PgTls`].
pub struct PgTlsConnect {
    config: Option<Arc<ClientConfig>>,
    server_name: ServerName<'static>,
    settings: Arc<str>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, PgTlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some(config) = self.config else {
                return Err(PgTlsError {
                    message: format!("TLS requested although {}", self.settings),
                });
            };
            let host = host_of(&self.server_name);
            tokio_rustls::TlsConnector::from(config)
                .connect(self.server_name, stream)
                .await
                .map(PgTlsStream)
                .map_err(|e| PgTlsError {
                    message: format!(
                        "TLS handshake with {host} failed under {}: {e}",
                        self.settings
                    ),
                })
        })
    }
}

fn host_of(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// A TLS handshake failure, naming the `database.ssl*` settings in force.
#[derive(Debug)]
pub struct PgTlsError {
    message: String,
}

impl fmt::Display for PgTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PgTlsError {}

/// An encrypted connection to PostgreSQL.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point needs the hash named by the certificate's signature
        // algorithm; a wrong guess would fail SCRAM authentication outright, so offer no
        // binding (SCRAM-SHA-256 without -PLUS, as libpq with channel_binding=prefer does
        // when it cannot bind).
        ChannelBinding::none()
    }
}

/// Splits a URL's query string into percent-decoded pairs and returns the URL without the
/// [`URL_TLS_PARAMS`].
pub(crate) fn split_tls_params(url: &str) -> (String, Vec<(String, String)>) {
    let Some(q) = url.find('?') else {
        return (url.to_owned(), Vec::new());
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut kept = Vec::new();
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key_decoded = percent_decode(key);
        if URL_TLS_PARAMS.contains(&key_decoded.as_str()) {
            params.push((key_decoded, percent_decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let stripped = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (stripped, params)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_params_are_split_off_and_decoded() {
        let (url, params) = split_tls_params(
            "postgres://u@h/d?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(url, "postgres://u@h/d?application_name=x");
        assert_eq!(
            params,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca.pem".to_owned())
            ]
        );
        let (url, params) = split_tls_params("postgres://u@h/d?sslmode=require");
        assert_eq!(url, "postgres://u@h/d");
        assert_eq!(params.len(), 1);
        assert_eq!(split_tls_params("postgres://u@h/d").0, "postgres://u@h/d");
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    /// [`TlsSettings::resolve`] with paths and URL parameters written as strings.
    fn resolve(
        mode: Option<SslMode>,
        root: Option<&str>,
        cert: Option<&str>,
        key: Option<&str>,
        url_params: &[(&str, &str)],
    ) -> Result<TlsSettings, StorageError> {
        let url_params: Vec<(String, String)> = url_params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TlsSettings::resolve(
            mode,
            root.map(Path::new),
            cert.map(Path::new),
            key.map(Path::new),
            &url_params,
        )
    }

    #[test]
    fn config_keys_win_over_url_params() {
        let s = resolve(
            Some(SslMode::VerifyFull),
            Some("/etc/ca.pem"),
            None,
            None,
            &[("sslmode", "disable"), ("sslrootcert", "/other")],
        )
        .expect("valid");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let s = resolve(None, None, None, None, &[]).expect("valid");
        assert_eq!(s.mode, SslMode::Prefer);
    }

    #[test]
    fn inconsistent_settings_are_refused_naming_the_setting() {
        let err = |mode, root, cert, key| {
            resolve(mode, root, cert, key, &[])
                .expect_err("inconsistent")
                .to_string()
        };
        assert!(
            err(Some(SslMode::VerifyFull), None, None, None).contains("needs database.sslrootcert")
        );
        assert!(
            err(Some(SslMode::VerifyCa), None, None, None)
                .contains("verify-ca needs database.sslrootcert")
        );
        assert!(err(None, Some("/ca"), None, None).contains("sslmode = prefer never checks"));
        assert!(err(Some(SslMode::Disable), None, Some("/c"), Some("/k")).contains("disable"));
        assert!(
            err(Some(SslMode::Require), None, Some("/c"), None).contains("database.sslkey is not")
        );
        assert!(
            err(Some(SslMode::Require), None, None, Some("/k")).contains("database.sslcert is not")
        );
        let bad = resolve(None, None, None, None, &[("sslmode", "verify_full")])
            .expect_err("bad value")
            .to_string();
        assert!(bad.contains("sslmode=verify_full in database.url"), "{bad}");
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let s = resolve(Some(SslMode::Require), Some("/ca"), None, None, &[]).expect("valid");
        assert_eq!(s.mode, SslMode::VerifyCa);
    }
}
