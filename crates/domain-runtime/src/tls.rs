//! TLS settings for gRPC servers and clients, loaded from PEM files: the `domain-tls` crate
//! with its server half, re-exported so services keep one path.

pub use domain_tls::*;
