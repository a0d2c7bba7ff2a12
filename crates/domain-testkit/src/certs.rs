//! Throwaway X.509 PKI for tests: one self-signed CA per [`TestPki`], and server and client
//! leaf certificates issued by it, all generated in memory with rcgen.
//!
//! Keys are ECDSA P-256 (`PKCS_ECDSA_P256_SHA256`), which rustls with the ring provider accepts
//! for both TLS 1.2 and 1.3. Certificates are valid from 1975 to 4096, so they never expire in CI.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A PEM certificate and the PEM (PKCS#8) private key that goes with it.
#[derive(Debug, Clone)]
pub struct CertifiedKeyPem {
    /// The leaf certificate, `-----BEGIN CERTIFICATE-----`.
    pub cert_pem: String,
    /// The leaf's private key, `-----BEGIN PRIVATE KEY-----`.
    pub key_pem: String,
}

/// Paths written by [`TestPki::write_files`].
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The CA certificate (trust anchor for both servers and clients).
    pub ca: PathBuf,
    /// A server certificate for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The server certificate's private key.
    pub server_key: PathBuf,
    /// A client certificate with common name `test-client`.
    pub client_cert: PathBuf,
    /// The client certificate's private key.
    pub client_key: PathBuf,
}

/// A test certificate authority that issues server and client certificates.
pub struct TestPki {
    /// Signs the leaves; owns the CA parameters and key.
    issuer: Issuer<'static, KeyPair>,
    /// The self-signed CA certificate handed out as the trust anchor.
    ca_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// Creates a fresh CA with a new P-256 key.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_name("domain test ca")
    }

    /// Creates a fresh CA whose subject common name is `common_name`.
    pub fn with_name(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("failed to generate ca key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .context("failed to self-sign ca certificate")?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
        })
    }

    /// Returns the CA certificate in PEM form.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a server certificate whose SANs are `names`; each entry that parses as an IP
    /// address becomes an IP SAN, the rest become DNS SANs (pass `"localhost"` and
    /// `"127.0.0.1"` for loopback tests).
    pub fn issue_server(&self, names: &[&str]) -> anyhow::Result<CertifiedKeyPem> {
        let sans = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*name).try_into().with_context(|| {
                    format!("invalid dns name `{name}` for server certificate")
                })?)),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let common_name = names.first().copied().unwrap_or("server");
        self.issue(
            common_name,
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        )
    }

    /// Issues a client certificate with subject common name `common_name`.
    pub fn issue_client(&self, common_name: &str) -> anyhow::Result<CertifiedKeyPem> {
        self.issue(
            common_name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        )
    }

    /// Writes the CA, a server leaf for `localhost`/`127.0.0.1` and a client leaf (CN
    /// `test-client`) as PEM files into `dir`, and returns their paths.
    pub fn write_files(&self, dir: &Path) -> anyhow::Result<PkiFiles> {
        let server = self.issue_server(&["localhost", "127.0.0.1"])?;
        let client = self.issue_client("test-client")?;
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for (path, contents) in [
            (&files.ca, self.ca_pem.as_str()),
            (&files.server_cert, server.cert_pem.as_str()),
            (&files.server_key, server.key_pem.as_str()),
            (&files.client_cert, client.cert_pem.as_str()),
            (&files.client_key, client.key_pem.as_str()),
        ] {
            std::fs::write(path, contents)
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        Ok(files)
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        what: &str,
    ) -> anyhow::Result<CertifiedKeyPem> {
        let key = KeyPair::generate().with_context(|| format!("failed to generate {what} key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("failed to sign {what} certificate"))?;
        Ok(CertifiedKeyPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_and_writes_files() -> anyhow::Result<()> {
        let pki = TestPki::new()?;
        assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = pki.issue_server(&["localhost", "127.0.0.1"])?;
        assert!(server.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(server.key_pem.contains("BEGIN PRIVATE KEY"));
        let dir = tempfile::tempdir()?;
        let files = pki.write_files(dir.path())?;
        for path in [
            &files.ca,
            &files.server_cert,
            &files.server_key,
            &files.client_cert,
            &files.client_key,
        ] {
            assert!(std::fs::metadata(path)?.len() > 0, "{}", path.display());
        }
        Ok(())
    }
}
