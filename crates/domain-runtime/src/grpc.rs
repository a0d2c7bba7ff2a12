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
use tonic::transport::server::Router;
use tonic::transport::{Server, server::ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::listener::{ConnectionLimits, LimitedIncoming};
use crate::ops::Readiness;
use crate::tls::{ServerTlsFiles, TlsError, server_tls_config};

/// Health service name that is SERVING for as long as the process runs (liveness probe).
pub const LIVENESS_SERVICE: &str = "liveness";

/// Default limit for one encoded or decoded gRPC message: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Pending-accept reset streams tolerated per connection before it is closed (HTTP/2
/// rapid-reset guard, CVE-2023-44487).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

// Streams the server itself resets are deliberately *not* capped per connection (tonic's
// default; hyper's own would be 1024). h2 counts every stream we answer before reading its
// request body (an unknown method, a call shed by the overload layer with SEQ_OVERLOADED), so
// a cap would close the connection of a legitimate client that retries through a stretch of
// load shedding, and of any client after 1024 unimplemented calls. Such a stream costs what
// any request costs and is bounded by the concurrency limits; the client-driven rapid reset
// is capped below (MAX_PENDING_ACCEPT_RESET_STREAMS).

/// HTTP/2 flow-control windows: how much request data a peer may send unread, per stream and
/// per connection. The connection window bounds what one connection can make us buffer.
/// (hyper's defaults, made explicit.)
const INITIAL_STREAM_WINDOW_SIZE: u32 = 1024 * 1024;
const INITIAL_CONNECTION_WINDOW_SIZE: u32 = 1024 * 1024;

/// Largest HTTP/2 frame payload we accept (the protocol's minimum and h2's default, made
/// explicit): also bounds each CONTINUATION frame of a header block.
const MAX_FRAME_SIZE: u32 = 16 * 1024;

/// Default for [`GrpcServerConfig::max_header_list_size`]: 16 KiB, hyper's default; our
/// requests carry a few hundred bytes of headers (path, authorization token, traceparent).
pub const DEFAULT_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Bounds of [`GrpcServerConfig::max_header_list_size`]: below 1 KiB ordinary requests with
/// a bearer token fail; above 1 MiB one request could hold a megabyte per stream.
const HEADER_LIST_SIZE_RANGE: std::ops::RangeInclusive<u32> = 1024..=1024 * 1024;

/// Default for [`GrpcServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Upper bound of [`GrpcServerConfig::max_connections`]: each connection is a file
/// descriptor, and the tests and images run with a soft limit around 20 000 or more.
const MAX_MAX_CONNECTIONS: usize = 100_000;

/// Default for [`GrpcServerConfig::tls_handshake_timeout`].
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Open connections of this listener, TLS handshakes in progress included. A connection
    /// beyond it is closed right after accept and counted in
    /// `grpc_server_connections_refused_total{reason="max_connections"}`. 1 to 100 000.
    /// Default: 1024.
    pub max_connections: usize,
    /// Open connections from one IPv4 address or one IPv6 /64. A connection beyond it is
    /// closed right after accept (`reason="max_connections_per_ip"`). Leave unset when clients
    /// reach the listener through a NAT or a proxy that hides their address. At least 1 and at
    /// most `max-connections`. Default: unset (only `max-connections` applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// Time a client has to complete the TLS handshake after connecting; then the connection
    /// is closed. 100 ms to 5 min. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Largest decoded HTTP/2 header list (all headers of one request) accepted; a larger
    /// one is refused before the request reaches a service. 1 KiB to 1 MiB. Default: 16 KiB.
    pub max_header_list_size: u32,
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_SIZE,
            tls: None,
            reflection: true,
        }
    }
}

impl GrpcServerConfig {
    /// Checks the limits serde cannot: returns the offending key (relative to this listener's
    /// section, e.g. `max-connections`) and why, for the component to report under its
    /// section name (`public-api.max-connections`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_concurrent_streams == 0 {
            return Err((
                "max-concurrent-streams",
                "must be at least 1 (0 would refuse every RPC)".to_owned(),
            ));
        }
        if self.http2_keepalive_interval.is_zero() || self.http2_keepalive_timeout.is_zero() {
            return Err((
                "http2-keepalive-interval",
                "`http2-keepalive-interval` and `http2-keepalive-timeout` must be above 0"
                    .to_owned(),
            ));
        }
        if self.max_connection_age.is_some_and(|age| age.is_zero()) {
            return Err((
                "max-connection-age",
                "must be above 0 (leave it unset for no limit)".to_owned(),
            ));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err((
                "max-connections",
                format!(
                    "{} is out of range: must be 1 to {MAX_MAX_CONNECTIONS}",
                    self.max_connections
                ),
            ));
        }
        if let Some(per_ip) = self.max_connections_per_ip
            && !(1..=self.max_connections).contains(&per_ip)
        {
            return Err((
                "max-connections-per-ip",
                format!(
                    "{per_ip} is out of range: must be 1 to `max-connections` ({})",
                    self.max_connections
                ),
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300))
            .contains(&self.tls_handshake_timeout)
        {
            return Err((
                "tls-handshake-timeout",
                format!(
                    "{} is out of range: must be 100ms to 5m",
                    humantime_serde::re::humantime::format_duration(self.tls_handshake_timeout)
                ),
            ));
        }
        if !HEADER_LIST_SIZE_RANGE.contains(&self.max_header_list_size) {
            return Err((
                "max-header-list-size",
                format!(
                    "{} is out of range: must be {} to {} bytes",
                    self.max_header_list_size,
                    HEADER_LIST_SIZE_RANGE.start(),
                    HEADER_LIST_SIZE_RANGE.end()
                ),
            ));
        }
        Ok(())
    }

    /// The connection caps [`serve`] applies.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }

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
    /// A listener limit is out of range (see [`GrpcServerConfig::validate`]).
    #[error("invalid `{key}`: {reason}")]
    Limit {
        /// The key within the listener's section.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// Returns a tonic server builder with the listener settings from `config` (keepalive, stream
/// limits, HTTP/2 abuse guards, TCP_NODELAY and TLS with a handshake timeout). Add layers and
/// services to it. The connection caps are applied by [`serve`].
///
/// Every HTTP/2 limit that bounds what one connection can cost is set here explicitly, also
/// where it equals the library default, so a dependency update cannot loosen it silently.
/// Which attack each one bounds is in docs/operations.md ("gRPC listener limits").
pub fn server_builder(config: &GrpcServerConfig) -> Result<Server, GrpcError> {
    config
        .validate()
        .map_err(|(key, reason)| GrpcError::Limit { key, reason })?;
    let tls: Option<ServerTlsConfig> = config
        .tls
        .as_ref()
        .map(server_tls_config)
        .transpose()?
        // Without a timeout tonic waits for a handshake forever: a client that connects and
        // sends nothing (or one byte a minute) holds its socket and TLS state indefinitely.
        .map(|tls| tls.timeout(config.tls_handshake_timeout));
    let mut server = Server::builder()
        .tcp_nodelay(true)
        .accept_http1(false)
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_header_list_size(config.max_header_list_size)
        .max_frame_size(MAX_FRAME_SIZE)
        .initial_stream_window_size(INITIAL_STREAM_WINDOW_SIZE)
        .initial_connection_window_size(INITIAL_CONNECTION_WINDOW_SIZE);
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
/// Connections beyond `limits` are closed right after accept (see [`crate::listener`]); `api`
/// labels the connection metrics (`public`, `admin`). Connections get TCP_NODELAY (tonic drops
/// its own TCP settings for caller-provided listeners, so they are applied here).
pub async fn serve<L, ResBody>(
    router: Router<L>,
    listener: TcpListener,
    limits: ConnectionLimits,
    api: &'static str,
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
    let incoming = LimitedIncoming::new(listener, limits, api);
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

/// Creates the gRPC reflection service (v1) for the `domain.*` and `grpc.health.v1` services,
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

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn key_of(config: GrpcServerConfig) -> Option<&'static str> {
        config.validate().err().map(|(key, _)| key)
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(GrpcServerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn out_of_range_limits_name_their_key() {
        let d = GrpcServerConfig::default;
        let cases = [
            (
                GrpcServerConfig {
                    max_connections: 0,
                    ..d()
                },
                "max-connections",
            ),
            (
                GrpcServerConfig {
                    max_connections: 100_001,
                    ..d()
                },
                "max-connections",
            ),
            (
                GrpcServerConfig {
                    max_connections_per_ip: Some(0),
                    ..d()
                },
                "max-connections-per-ip",
            ),
            (
                GrpcServerConfig {
                    max_connections: 10,
                    max_connections_per_ip: Some(11),
                    ..d()
                },
                "max-connections-per-ip",
            ),
            (
                GrpcServerConfig {
                    tls_handshake_timeout: Duration::from_millis(99),
                    ..d()
                },
                "tls-handshake-timeout",
            ),
            (
                GrpcServerConfig {
                    tls_handshake_timeout: Duration::from_secs(301),
                    ..d()
                },
                "tls-handshake-timeout",
            ),
            (
                GrpcServerConfig {
                    max_header_list_size: 1023,
                    ..d()
                },
                "max-header-list-size",
            ),
            (
                GrpcServerConfig {
                    max_header_list_size: 1024 * 1024 + 1,
                    ..d()
                },
                "max-header-list-size",
            ),
            (
                GrpcServerConfig {
                    max_concurrent_streams: 0,
                    ..d()
                },
                "max-concurrent-streams",
            ),
            (
                GrpcServerConfig {
                    http2_keepalive_timeout: Duration::ZERO,
                    ..d()
                },
                "http2-keepalive-interval",
            ),
            (
                GrpcServerConfig {
                    max_connection_age: Some(Duration::ZERO),
                    ..d()
                },
                "max-connection-age",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(key_of(config.clone()), Some(key), "{config:?}");
            assert!(
                matches!(server_builder(&config), Err(GrpcError::Limit { key: k, .. }) if k == key),
                "server_builder accepts {config:?}"
            );
        }
        let edge = GrpcServerConfig {
            max_connections: 10,
            max_connections_per_ip: Some(10),
            tls_handshake_timeout: Duration::from_millis(100),
            max_header_list_size: 1024,
            ..d()
        };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    fn limits_are_read_from_kebab_case_keys() {
        let config: GrpcServerConfig = toml::from_str(
            "max-connections = 50\nmax-connections-per-ip = 5\n\
             tls-handshake-timeout = \"3s\"\nmax-header-list-size = 8192\n",
        )
        .expect("parse");
        assert_eq!(config.max_connections, 50);
        assert_eq!(config.max_connections_per_ip, Some(5));
        assert_eq!(config.tls_handshake_timeout, Duration::from_secs(3));
        assert_eq!(config.max_header_list_size, 8192);
    }
}
