//! gRPC server settings, the configured tonic server builder, the health and reflection
//! services, and serving on an already-bound listener.
//!
//! Health follows the Canton charts' probe convention: service `""` is readiness (NOT_SERVING
//! until the component says it is ready) and service `"liveness"` is always SERVING while the
//! process runs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Server, server::ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::ops::Readiness;
use crate::tls::{ServerTlsFiles, TlsError, server_tls_config};

/// Health service name that is SERVING for as long as the process runs (liveness probe).
pub const LIVENESS_SERVICE: &str = "liveness";

/// Default limit for one encoded or decoded gRPC message: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Pending-accept reset streams tolerated per connection before it is closed (HTTP/2
/// rapid-reset guard, CVE-2023-44487).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Settings for one gRPC listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GrpcServerConfig {
    /// Address to listen on, e.g. `0.0.0.0:5001`. Components override the default port.
    /// Default: `0.0.0.0:0`.
    pub listen: SocketAddr,
    /// Largest gRPC message accepted or sent, in bytes. Applied per service, with
    /// `max_decoding_message_size` / `max_encoding_message_size` on the generated server.
    /// Default: 4 MiB.
    pub max_message_size: usize,
    /// Concurrent HTTP/2 streams (in-flight RPCs) per connection. Default: 1024.
    pub max_concurrent_streams: u32,
    /// Interval between HTTP/2 PINGs that detect dead connections. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// How long to wait for a PING acknowledgement before closing. Default: `5s`.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// Close connections after this age (with a grace period of the same length), so clients
    /// behind an L4 load balancer re-spread over replicas. Default: unset (never).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<Duration>,
    /// TLS for this listener; plaintext when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsFiles>,
    /// Serve gRPC server reflection (`grpc.reflection.v1`) on this listener. Turn it off on
    /// a port exposed to other organisations, where listing every service and message type
    /// helps nobody but a prober. Default: `true`.
    pub reflection: bool,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_concurrent_streams: 1024,
            http2_keepalive_interval: Duration::from_secs(10),
            http2_keepalive_timeout: Duration::from_secs(5),
            max_connection_age: None,
            tls: None,
            reflection: true,
        }
    }
}

impl GrpcServerConfig {
    /// Why this listener must not serve an admin API as configured, if it must not: on an
    /// address other than loopback it needs `tls`, and with `mutual` also `client-ca` with
    /// `require-client-cert = true`. An admin API changes the domain (allowlist, pruning,
    /// members); plaintext or anonymous off the host would hand that to the network.
    pub fn admin_exposure_problem(&self, mutual: bool) -> Option<String> {
        if self.listen.ip().is_loopback() {
            return None;
        }
        match &self.tls {
            None => Some(format!(
                "listens on {} (not loopback) without `tls`: an admin API off the host needs TLS{}; \
                 or listen on 127.0.0.1",
                self.listen,
                if mutual {
                    " with client certificates (`client-ca`, `require-client-cert = true`)"
                } else {
                    ""
                }
            )),
            Some(tls) if mutual && (tls.client_ca.is_none() || !tls.require_client_cert) => {
                Some(format!(
                    "listens on {} (not loopback) without required client certificates: set \
                     `tls.client-ca` and `tls.require-client-cert = true` (mutual TLS), or listen \
                     on 127.0.0.1",
                    self.listen
                ))
            }
            Some(_) => None,
        }
    }

    /// Returns the defaults with a component-specific listen address.
    pub fn with_listen(listen: SocketAddr) -> Self {
        Self {
            listen,
            ..Self::default()
        }
    }
}

/// A gRPC server that cannot be set up or that failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// TLS files are missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// tonic rejected the TLS settings or failed while serving.
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listen address cannot be bound.
    #[error("failed to bind grpc listener on {addr}: {error}")]
    Bind {
        /// Configured address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// The reflection service rejected a descriptor set.
    #[error("failed to build reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Returns a tonic server builder with the listener settings from `config` (keepalive, stream
/// limits, rapid-reset guard, TCP_NODELAY and TLS). Add layers and services to it.
pub fn server_builder(config: &GrpcServerConfig) -> Result<Server, GrpcError> {
    let tls: Option<ServerTlsConfig> = config.tls.as_ref().map(server_tls_config).transpose()?;
    let mut server = Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS));
    if let Some(age) = config.max_connection_age {
        server = server.max_connection_age(age).max_connection_age_grace(age);
    }
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    Ok(server)
}

/// A router with the layers every API of ours gets: trace context first, then gRPC metrics.
pub type ServiceRouter = Router<
    tower::layer::util::Stack<
        crate::metrics::GrpcMetricsLayer,
        tower::layer::util::Stack<
            crate::telemetry::TraceContextLayer,
            tower::layer::util::Identity,
        >,
    >,
>;

/// Returns a server on `config` (see [`server_builder`]) with the trace-context and
/// gRPC-metrics layers, serving `health` and (unless `config.reflection` is false)
/// reflection; add the component's own services.
pub fn service_router(
    config: &GrpcServerConfig,
    health: HealthServer<HealthService>,
) -> Result<ServiceRouter, GrpcError> {
    let router = server_builder(config)?
        .layer(crate::telemetry::TraceContextLayer)
        .layer(crate::metrics::GrpcMetricsLayer)
        .add_service(health);
    Ok(if config.reflection {
        router.add_service(reflection_service()?)
    } else {
        router
    })
}

/// Binds `config.listen`.
pub async fn bind(config: &GrpcServerConfig) -> Result<TcpListener, GrpcError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|error| GrpcError::Bind {
            addr: config.listen,
            error,
        })
}

/// Serves `router` on an already-bound `listener` until `shutdown` is cancelled, then stops
/// accepting and waits for in-flight RPCs to finish.
///
/// Connections get TCP_NODELAY (tonic drops its own TCP settings for caller-provided
/// listeners, so they are applied here).
pub async fn serve<L, ResBody>(
    router: Router<L>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GrpcError>
where
    L: tower::Layer<Routes>,
    L::Service: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    ResBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Updates the statuses served by the gRPC health service.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    reporter: HealthReporter,
}

/// Creates the `grpc.health.v1.Health` service: `""` NOT_SERVING until
/// [`HealthHandle::set_ready`], `"liveness"` SERVING.
pub async fn health_service(
    max_message_size: usize,
) -> (HealthHandle, HealthServer<HealthService>) {
    let reporter = HealthReporter::new();
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()))
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size);
    (HealthHandle { reporter }, server)
}

impl HealthHandle {
    /// Sets overall readiness (service `""`).
    pub async fn set_ready(&self, ready: bool) {
        self.reporter
            .set_service_status("", serving_status(ready))
            .await;
    }

    /// Sets the status of one service by name.
    pub async fn set_service_ready(&self, service_name: &str, ready: bool) {
        self.reporter
            .set_service_status(service_name, serving_status(ready))
            .await;
    }

    /// Sets the status of the service implemented by `S`.
    pub async fn set_ready_for<S: NamedService>(&self, ready: bool) {
        self.set_service_ready(S::NAME, ready).await;
    }

    /// Mirrors `readiness` into service `""` until every `Readiness` clone is dropped, so the
    /// ops `/health/ready` endpoint and gRPC health always agree.
    pub fn follow(&self, readiness: &Readiness) -> JoinHandle<()> {
        let handle = self.clone();
        let mut changes = readiness.subscribe();
        tokio::spawn(async move {
            loop {
                let ready = *changes.borrow_and_update();
                handle.set_ready(ready).await;
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
    }

    /// Returns the underlying tonic reporter.
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }
}

fn serving_status(ready: bool) -> ServingStatus {
    if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Creates the gRPC reflection service (v1) for the `domain.v1` and `grpc.health.v1` services,
/// so grpcurl and ghz work without .proto files.
pub fn reflection_service() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    GrpcError,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(domain_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

#[cfg(test)]
mod admin_exposure_tests {
    use super::*;
    use crate::tls::ServerTlsFiles;

    fn with(listen: &str, tls: Option<ServerTlsFiles>) -> GrpcServerConfig {
        GrpcServerConfig {
            listen: listen.parse().expect("address"),
            tls,
            ..GrpcServerConfig::default()
        }
    }

    fn tls(client_ca: bool, required: bool) -> Option<ServerTlsFiles> {
        Some(ServerTlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: client_ca.then(|| "ca.pem".into()),
            require_client_cert: required,
        })
    }

    #[test]
    fn loopback_needs_nothing() {
        assert_eq!(with("127.0.0.1:1", None).admin_exposure_problem(true), None);
        assert_eq!(with("[::1]:1", None).admin_exposure_problem(true), None);
    }

    #[test]
    fn off_host_needs_tls_and_for_mutual_client_certificates() {
        let p = with("0.0.0.0:1", None).admin_exposure_problem(false);
        assert!(p.is_some_and(|p| p.contains("without `tls`")));
        assert_eq!(
            with("10.0.0.1:1", tls(false, false)).admin_exposure_problem(false),
            None
        );
        for (ca, req) in [(false, false), (true, false), (false, true)] {
            let p = with("0.0.0.0:1", tls(ca, req)).admin_exposure_problem(true);
            assert!(
                p.is_some_and(|p| p.contains("require-client-cert")),
                "{ca} {req}"
            );
        }
        assert_eq!(
            with("0.0.0.0:1", tls(true, true)).admin_exposure_problem(true),
            None
        );
    }
}
