//! Service runtime shared by every domain binary (sequencer, mediator, domain-manager,
//! participant, devnet): everything a `main` needs that is not domain logic.
//!
//! This crate owns:
//! - [`config`]: layered configuration (defaults → TOML file → environment → `--set` flags)
//!   with errors that name the offending key and the layer it came from, plus the shared CLI
//!   flags ([`config::CommonArgs`]).
//! - [`telemetry`]: log set-up (JSON or text) and W3C `traceparent` propagation for gRPC,
//!   server side as a tower layer and client side as an interceptor.
//! - [`metrics`]: the Prometheus recorder (histograms always with explicit buckets) and a
//!   tower layer recording go-grpc-prometheus style RPC metrics.
//! - [`ops`]: the plaintext HTTP ops listener serving `/metrics`, `/health/live` and
//!   `/health/ready`, and the [`ops::Readiness`] flag behind it.
//! - [`tls`]: PEM loading for tonic server and client TLS, with errors naming the file.
//! - [`grpc`]: gRPC server settings, the server builder, health and reflection services, and
//!   `serve` over an already-bound listener.
//! - [`fault`]: the trigger-file hook behind the services' test-only fault injection.
//! - [`shutdown`]: the SIGTERM/SIGINT cancellation token and a deadline-bounded drain.
//!
//! A binary's `main` is expected to: install the rustls ring provider
//! (`rustls::crypto::ring::default_provider().install_default()`), call
//! [`config::load_or_exit`], [`telemetry::init_logging`] and [`metrics::install_recorder`],
//! bind its listeners, then run its service until [`shutdown::shutdown_signal`] fires.

pub mod config;
pub mod fault;
pub mod grpc;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod scrape;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
