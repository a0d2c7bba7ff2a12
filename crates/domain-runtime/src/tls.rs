//! TLS settings for gRPC servers and clients, loaded from PEM files: the `domain-tls` crate
//! with its server half, re-exported so services keep one path.

pub use domain_tls::*;

/// The client TLS settings for the sequencers (`sequencer-tls`), if configured; the error
/// names the setting.
pub fn sequencer_client_tls(
    files: Option<&ClientTlsFiles>,
) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use anyhow::Context as _;
    files
        .map(client_tls_config)
        .transpose()
        .context("invalid `sequencer-tls`")
}
