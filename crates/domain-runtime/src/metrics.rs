//! The Prometheus recorder and per-RPC gRPC server metrics.
//!
//! Every histogram is rendered as a real Prometheus histogram with explicit buckets, never as
//! a summary (summaries cannot be aggregated across replicas):
//! - names ending `_size` (including `_batch_size`) use [`COUNT_BUCKETS`];
//! - everything else, in particular names ending `_seconds`, uses [`SECONDS_BUCKETS`].
//!
//! Every series carries the global label `component="<component>"`.
//!
//! [`GrpcMetricsLayer`] records the go-grpc-prometheus names, so existing dashboards work:
//! `grpc_server_started_total{grpc_service,grpc_method}`,
//! `grpc_server_handled_total{grpc_service,grpc_method,grpc_code}` and the histogram
//! `grpc_server_handling_seconds{grpc_service,grpc_method}`.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Buckets (seconds) for latency histograms: 0.5 ms to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for count-style histograms (names ending `_size` / `_batch_size`).
pub const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Name of the counter of RPCs started.
pub const GRPC_SERVER_STARTED: &str = "grpc_server_started_total";
/// Name of the counter of RPCs completed, by status code.
pub const GRPC_SERVER_HANDLED: &str = "grpc_server_handled_total";
/// Name of the histogram of RPC durations, until the response stream ends.
pub const GRPC_SERVER_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// Name of the gauge of open connections of a gRPC listener (TLS handshakes included).
pub const GRPC_SERVER_CONNECTIONS: &str = "grpc_server_connections";
/// Name of the counter of connections closed right after accept because a cap was reached.
pub const GRPC_SERVER_CONNECTIONS_REFUSED: &str = "grpc_server_connections_refused_total";

/// Name of the gauge (always 1) whose labels carry the version and commit of the binary.
pub const BUILD_INFO: &str = "domain_build_info";
/// Version of the workspace this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Commit the binary was built from: `DOMAIN_BUILD_COMMIT` at compile time (the image build
/// sets it), else `unknown`.
pub const COMMIT: &str = match option_env!("DOMAIN_BUILD_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// Renders `/metrics`: the recorder's series, then the scrape-time ones of [`crate::scrape`].
pub fn render(handle: &PrometheusHandle) -> String {
    let mut out = handle.render();
    out.push_str(&crate::scrape::render());
    out
}

/// The recorder cannot be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter rejected its configuration.
    #[error("failed to build prometheus recorder: {0}")]
    Build(#[from] BuildError),
    /// A recorder for another component is already installed in this process.
    #[error("metrics recorder already installed for component `{installed}`, not `{requested}`")]
    AlreadyInstalled {
        /// Component the installed recorder labels series with.
        installed: String,
        /// Component of the rejected call.
        requested: String,
    },
}

/// Returns a `PrometheusBuilder` with this crate's buckets and the `component` label.
pub fn builder(component: &str) -> Result<PrometheusBuilder, MetricsError> {
    Ok(PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_size".to_owned()), COUNT_BUCKETS)?
        .add_global_label("component", component))
}

/// Builds a recorder that is not installed globally; for tests, use it with
/// `metrics::with_local_recorder` / `metrics::set_default_local_recorder` and render through
/// `recorder.handle()`.
pub fn build_recorder(component: &str) -> Result<PrometheusRecorder, MetricsError> {
    Ok(builder(component)?.build_recorder())
}

/// Process-wide record of the installed recorder, so a repeated call is harmless.
static INSTALLED: Mutex<Option<(String, PrometheusHandle)>> = Mutex::new(None);

/// Installs the global recorder for `component` and returns the handle `/metrics` renders.
///
/// Calling it again for the same component returns the same handle; calling it for another
/// component is an error. The caller must render or run upkeep periodically (the ops server
/// does both).
pub fn install_recorder(component: &str) -> Result<PrometheusHandle, MetricsError> {
    install_recorder_with(component, &[], &[])
}

/// [`install_recorder`], with buckets of its own for each named histogram (for ranges the
/// shared buckets do not cover, e.g. a latency that reaches minutes).
pub fn install_recorder_with_buckets(
    component: &str,
    buckets: &[(&str, &[f64])],
) -> Result<PrometheusHandle, MetricsError> {
    install_recorder_with(component, &[], buckets)
}

/// [`install_recorder_with_buckets`], plus global labels of the caller's (e.g. `domain`,
/// `member`) on every series, the scrape-time ones of [`crate::scrape`] included. Empty
/// values are left out. Also sets `domain_build_info` to 1.
pub fn install_recorder_with(
    component: &str,
    labels: &[(&str, String)],
    buckets: &[(&str, &[f64])],
) -> Result<PrometheusHandle, MetricsError> {
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((name, handle)) = installed.as_ref() {
        return if name == component {
            Ok(handle.clone())
        } else {
            Err(MetricsError::AlreadyInstalled {
                installed: name.clone(),
                requested: component.to_owned(),
            })
        };
    }
    let mut builder = builder(component)?;
    let mut globals = vec![("component".to_owned(), component.to_owned())];
    for (key, value) in labels.iter().filter(|(_, v)| !v.is_empty()) {
        builder = builder.add_global_label(*key, value.clone());
        globals.push(((*key).to_owned(), value.clone()));
    }
    for (metric, bounds) in buckets {
        builder = builder.set_buckets_for_metric(Matcher::Full((*metric).to_owned()), bounds)?;
    }
    let handle = builder.install_recorder()?;
    describe_grpc_metrics();
    crate::scrape::set_global_labels(globals);
    ::metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the version and commit of the running binary"
    );
    ::metrics::gauge!(BUILD_INFO, "version" => VERSION, "commit" => COMMIT).set(1.0);
    *installed = Some((component.to_owned(), handle.clone()));
    Ok(handle)
}

/// Registers help text for the gRPC server metrics with the current recorder.
pub fn describe_grpc_metrics() {
    ::metrics::describe_counter!(GRPC_SERVER_STARTED, "RPCs started on the server");
    ::metrics::describe_counter!(
        GRPC_SERVER_HANDLED,
        "RPCs completed on the server, regardless of success or failure"
    );
    ::metrics::describe_histogram!(
        GRPC_SERVER_HANDLING_SECONDS,
        ::metrics::Unit::Seconds,
        "time from receiving an RPC until its response stream ends"
    );
    ::metrics::describe_gauge!(
        GRPC_SERVER_CONNECTIONS,
        "open connections of a gRPC listener, TLS handshakes in progress included"
    );
    ::metrics::describe_counter!(
        GRPC_SERVER_CONNECTIONS_REFUSED,
        "connections closed right after accept because max-connections or \
         max-connections-per-ip was reached"
    );
}

/// Tower layer recording `grpc_server_*` metrics for every request; use with
/// `tonic::transport::Server::builder().layer(GrpcMetricsLayer)`.
///
/// The status code is read from `grpc-status` in the response trailers, or in the headers
/// for trailers-only responses (errors returned by handlers); a response that ends without
/// one counts as `OK`, one dropped before its end (client gone) as `Canceled`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner }
    }
}

/// The service made by [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<GrpcMetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (mut service, mut method) = split_path(request.uri().path());
        // Labels come only from methods our protos declare: any client (no token needed)
        // picks the request path, and a label per bogus path would be a series per
        // request, without bound.
        let kind = grpc_type(&service, &method);
        if kind == "unknown" {
            service = "unknown".to_owned();
            method = "unknown".to_owned();
        }
        ::metrics::counter!(
            GRPC_SERVER_STARTED,
            "grpc_service" => service.clone(),
            "grpc_method" => method.clone(),
            "grpc_type" => kind,
        )
        .increment(1);
        GrpcMetricsFuture {
            inner: self.inner.call(request),
            call: Some(CallRecord {
                service,
                method,
                kind,
                start: Instant::now(),
                code: None,
                finished: false,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`GrpcMetricsService`].
    pub struct GrpcMetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<CallRecord>,
    }
}

impl<F, ResBody, E> Future for GrpcMetricsFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<GrpcMetricsBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        match result {
            Ok(response) => {
                if let Some(call) = call.as_mut() {
                    // Trailers-only responses (handler errors) carry the status in the headers.
                    call.code = grpc_status(response.headers());
                }
                Poll::Ready(Ok(response.map(|inner| GrpcMetricsBody { inner, call })))
            }
            Err(error) => {
                if let Some(call) = call.as_mut() {
                    call.code = Some(tonic::Code::Unknown);
                }
                Poll::Ready(Err(error))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Response body of [`GrpcMetricsService`]: records the RPC as handled when the body ends
    /// or is dropped.
    pub struct GrpcMetricsBody<B> {
        #[pin]
        inner: B,
        call: Option<CallRecord>,
    }
}

impl<B: Body> Body for GrpcMetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let result = ready!(this.inner.poll_frame(cx));
        match &result {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(call) = this.call.as_mut() {
                        if let Some(code) = grpc_status(trailers) {
                            call.code = Some(code);
                        }
                        // Trailers are the last frame; the server may never poll again.
                        call.finished = true;
                    }
                    this.call.take();
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.as_mut() {
                    call.code = Some(tonic::Code::Unknown);
                }
                this.call.take();
            }
            None => {
                if let Some(call) = this.call.as_mut() {
                    call.finished = true;
                }
                this.call.take();
            }
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One RPC in flight; records `handled` and the duration exactly once, when dropped.
struct CallRecord {
    service: String,
    method: String,
    kind: &'static str,
    start: Instant,
    code: Option<tonic::Code>,
    finished: bool,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(if self.finished {
            tonic::Code::Ok
        } else {
            tonic::Code::Cancelled
        });
        ::metrics::counter!(
            GRPC_SERVER_HANDLED,
            "grpc_service" => self.service.clone(),
            "grpc_method" => self.method.clone(),
            "grpc_type" => self.kind,
            "grpc_code" => code_name(code),
        )
        .increment(1);
        // A stream lives as long as its subscriber (hours), far above the top bucket; its
        // duration says nothing about latency, so only unary calls are timed.
        if self.kind == "unary" {
            ::metrics::histogram!(
                GRPC_SERVER_HANDLING_SECONDS,
                "grpc_service" => self.service.clone(),
                "grpc_method" => self.method.clone(),
                "grpc_type" => self.kind,
            )
            .record(self.start.elapsed().as_secs_f64());
        }
    }
}

/// The go-grpc-prometheus `grpc_type` of a method (`unary`, `client_stream`, `server_stream`,
/// `bidi_stream`), from the descriptors of every service this runtime serves; `unknown` for
/// a method none of them declares.
pub fn grpc_type(service: &str, method: &str) -> &'static str {
    use prost::Message as _;
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static TYPES: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    let types = TYPES.get_or_init(|| {
        let mut types = HashMap::new();
        for set in [
            domain_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            // The sets are compiled in; one that does not decode only loses its labels.
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for svc in file.service {
                    let name = svc.name.unwrap_or_default();
                    let full = if package.is_empty() {
                        name
                    } else {
                        format!("{package}.{name}")
                    };
                    for m in svc.method {
                        let kind = match (
                            m.client_streaming.unwrap_or(false),
                            m.server_streaming.unwrap_or(false),
                        ) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        types.insert(format!("{full}/{}", m.name.unwrap_or_default()), kind);
                    }
                }
            }
        }
        types
    });
    types
        .get(&format!("{service}/{method}"))
        .copied()
        .unwrap_or("unknown")
}

/// Splits `/package.Service/Method`; anything else becomes `unknown` to bound cardinality.
fn split_path(path: &str) -> (String, String) {
    match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method))
            if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
        {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.trim().parse::<i32>().ok().map(tonic::Code::from_i32)
}

/// The code names go-grpc-prometheus uses (Go's `codes.Code.String()`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_type_of_every_served_method() {
        assert_eq!(
            grpc_type("domain.sequencer.v1.SequencerService", "Subscribe"),
            "server_stream"
        );
        assert_eq!(
            grpc_type("domain.sequencer.v1.SequencerService", "Send"),
            "unary"
        );
        assert_eq!(grpc_type("grpc.health.v1.Health", "Watch"), "server_stream");
        assert_eq!(grpc_type("grpc.health.v1.Health", "Check"), "unary");
        assert_eq!(
            grpc_type(
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo"
            ),
            "bidi_stream"
        );
        assert_eq!(grpc_type("unknown", "unknown"), "unknown");
    }

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health".to_owned(), "Check".to_owned())
        );
        for bad in ["/", "", "/a", "/a/", "//b", "/a/b/c", "a/b"] {
            assert_eq!(
                split_path(bad),
                ("unknown".to_owned(), "unknown".to_owned()),
                "{bad}"
            );
        }
    }

    #[test]
    fn reads_grpc_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert_eq!(grpc_status(&headers), Some(tonic::Code::InvalidArgument));
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    }
}
