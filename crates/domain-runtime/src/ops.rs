//! The plaintext HTTP/1 ops listener: `/metrics`, `/health/live`, `/health/ready`.
//!
//! It lives on its own port, without TLS, so Prometheus and Kubernetes probes can reach it
//! without client certificates, whatever the gRPC ports require.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the ops server runs recorder upkeep, so histograms do not grow between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Whether the service is ready for traffic: cheap to clone, flipped by the service, read by
/// `/health/ready` (and mirrored into gRPC health by [`crate::grpc::HealthHandle::follow`]).
///
/// Starts not ready.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<watch::Sender<bool>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Creates a flag that starts not ready.
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Marks the service ready or not ready.
    pub fn set_ready(&self, ready: bool) {
        self.state.send_replace(ready);
    }

    /// Returns whether the service is ready now.
    pub fn is_ready(&self) -> bool {
        *self.state.borrow()
    }

    /// Returns a receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

/// Binds the ops listener; the error names the `ops-listen` setting and the address.
pub async fn bind(listen: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("cannot bind `ops-listen` {listen}: {error}"),
        )
    })
}

/// Spawns [`run_ops`] on the current runtime.
pub fn serve_ops(
    listener: TcpListener,
    handle: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run_ops(listener, handle, readiness, shutdown))
}

/// Serves the ops endpoints on `listener` until `shutdown` is cancelled, then lets open
/// connections finish their current request. Also runs recorder upkeep periodically.
pub async fn run_ops(
    listener: TcpListener,
    handle: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Accept errors (e.g. EMFILE) are transient; back off instead of spinning.
                    tracing::warn!(%error, "failed to accept ops connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = route(&request, &handle, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "ops connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn route<B>(
    request: &Request<B>,
    handle: &PrometheusHandle,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response =
                Response::new(Full::new(Bytes::from(crate::metrics::render(handle))));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            );
            response
        }
        "/health/live" => text(StatusCode::OK, "live\n"),
        "/health/ready" if readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/health/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
