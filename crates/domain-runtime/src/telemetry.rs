//! Logging set-up and W3C trace-context propagation over gRPC.
//!
//! Logs go to stderr (stdout is kept for command output such as `--dump-config`), filtered by
//! `RUST_LOG` (default `info`), as text or as one JSON object per line.
//!
//! Every incoming request handled behind [`TraceContextLayer`] runs inside a `grpc_request`
//! span carrying `trace_id` and `span_id`, so JSON log lines emitted while handling it include
//! them (under `span` and `spans`). The trace id comes from the caller's `traceparent`
//! metadata (`00-<32 hex>-<16 hex>-<2 hex>`) when that is valid, and is freshly generated
//! otherwise.
//!
//! **Current trace context.** The context of the request being handled is kept in a tokio
//! `task_local` (not in span extensions): it needs no cooperating subscriber layer and is
//! visible to any code polled inside the request future, including tonic client calls made
//! from a handler, where [`TraceContextInterceptor`] injects it into outgoing `traceparent`
//! metadata. It does not follow `tokio::spawn`; wrap spawned futures with
//! [`TraceContext::scope`] to carry it over.
//!
//! **Span export (OTLP).** With `[tracing] otlp-endpoint` set in a service's configuration
//! ([`TracingConfig`]), spans are also exported over OTLP/gRPC through `tracing-opentelemetry`,
//! with `service.name` = the component and `service.instance.id` = host and pid (or
//! `service-instance`). The exported span of a `grpc_request` (and of every span made with
//! [`remote_span`]) is parented on the incoming trace context, and the current
//! [`TraceContext`] is taken from that exported span, so what is sent on (`traceparent`
//! metadata, the `trace_context` of a submission) names a span the collector receives. Off by
//! default; [`shutdown_tracing`] flushes what is buffered.

use std::task::{Context, Poll};

use std::sync::Mutex;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use tokio::task::futures::TaskLocalFuture;
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use domain_trace::{InvalidTraceparent, TRACEPARENT, TraceContext};

/// Log line format, chosen with `--log-format`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with event fields flattened and span fields included.
    Json,
}

/// Logging could not be initialised (usually: a global subscriber is already installed, or
/// the `[tracing]` settings are invalid).
#[derive(Debug, thiserror::Error)]
#[error("failed to initialise logging: {0}")]
pub struct TelemetryError(String);

/// The `[tracing]` section every service's configuration has: OTLP span export.
///
/// ```toml
/// [tracing]
/// otlp-endpoint = "http://otel-collector.monitoring:4317"  # OTLP/gRPC; unset = no export
/// sampling-ratio = 0.1           # share of new traces exported (default 1.0)
/// service-instance = "seq-0"     # service.instance.id (default <host>:<pid>)
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TracingConfig {
    /// OTLP/gRPC collector endpoint (`http://host:4317`, plaintext). Unset: spans are not
    /// exported (the default).
    pub otlp_endpoint: Option<String>,
    /// Share of new traces (those started here) that are sampled, 0.0 to 1.0. A trace
    /// continued from a caller or a delivered event follows the sampled flag it came with,
    /// so a trace is exported by every member or by none.
    pub sampling_ratio: f64,
    /// `service.instance.id` resource attribute; default `<host>:<pid>`.
    pub service_instance: Option<String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_instance: None,
        }
    }
}

impl TracingConfig {
    /// Checks the settings without connecting anywhere.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(format!(
                "tracing.sampling-ratio must be between 0.0 and 1.0, got {}",
                self.sampling_ratio
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|e| format!("tracing.otlp-endpoint {endpoint:?} is not a URI: {e}"))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(format!(
                    "tracing.otlp-endpoint {endpoint:?} must be http://host:port (OTLP/gRPC \
                     without TLS; run a collector agent next to the service)"
                ));
            }
        }
        Ok(())
    }
}

/// The exporter's provider, kept for [`shutdown_tracing`], and the runtime its gRPC channel
/// runs on. The service's own runtime does not exist yet when logging is set up (and is gone
/// when the last spans are flushed), so the exporter gets a one-thread runtime of its own.
static EXPORT: Mutex<
    Option<(
        opentelemetry_sdk::trace::SdkTracerProvider,
        tokio::runtime::Runtime,
    )>,
> = Mutex::new(None);

/// Installs the global tracing subscriber for `component` in the given format, writing to
/// stderr, filtered by `RUST_LOG` (default `info`), and exporting spans over OTLP when
/// `tracing.otlp-endpoint` is set. Fails if a global subscriber is already set or the
/// settings are invalid.
pub fn init_logging(
    component: &str,
    format: LogFormat,
    tracing: &TracingConfig,
) -> Result<(), TelemetryError> {
    tracing.validate().map_err(TelemetryError)?;
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let tracer = match &tracing.otlp_endpoint {
        Some(endpoint) => Some(start_export(component, endpoint, tracing)?),
        None => None,
    };
    build_subscriber(format, filter, std::io::stderr, tracer)
        .try_init()
        .map_err(|e| TelemetryError(e.to_string()))?;
    ::tracing::info!(
        component,
        ?format,
        otlp_endpoint = tracing.otlp_endpoint.as_deref().unwrap_or("off"),
        "logging initialised"
    );
    Ok(())
}

fn start_export(
    component: &str,
    endpoint: &str,
    config: &TracingConfig,
) -> Result<opentelemetry_sdk::trace::SdkTracer, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::Sampler;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| TelemetryError(format!("cannot start the OTLP export runtime: {e}")))?;
    // The tonic channel spawns its connection task on the runtime current at build time.
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError(format!("cannot set up OTLP export to {endpoint}: {e}")))?
    };
    let instance = config.service_instance.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".to_owned());
        format!("{host}:{}", std::process::id())
    });
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(component.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance,
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(component.to_owned());
    *EXPORT.lock().unwrap_or_else(|p| p.into_inner()) = Some((provider, runtime));
    Ok(tracer)
}

/// Flushes and stops span export (no-op when it is off); call once, when the service has
/// stopped. Blocks until the buffered spans are sent or the exporter's timeout passes.
pub fn shutdown_tracing() {
    let taken = EXPORT.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((provider, runtime)) = taken {
        if let Err(error) = provider.shutdown() {
            eprintln!("warning: flushing exported spans failed: {error}");
        }
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    }
}

/// Builds the subscriber [`init_logging`] installs (without span export), writing to
/// `writer`; exposed so tests can capture log lines with `tracing::subscriber::with_default`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    build_subscriber(format, filter, writer, None)
}

fn build_subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The filter comes first so it applies to the exporter too: spans below `RUST_LOG` are
    // neither logged nor exported.
    let otel = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let base = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Json => Box::new(
            base.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    // Also list enclosing spans: a handler's own span becomes the current
                    // span, and the request span with `trace_id` must still appear.
                    .with_span_list(true)
                    .with_writer(writer),
            ),
        ),
        LogFormat::Text => {
            Box::new(base.with(tracing_subscriber::fmt::layer().with_writer(writer)))
        }
    }
}

/// Makes `span` continue `parent` in exported traces and returns the trace context to make
/// current inside it: the exported span's own ids when span export is on (so what is sent on
/// names a span the collector has), otherwise a child of `parent` (or a new trace).
///
/// Without a `parent`, the span starts a new trace (sampled by `tracing.sampling-ratio`).
pub fn remote_span(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    if let Some(parent) = parent {
        let remote = opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(parent.trace_id_bytes()),
            opentelemetry::trace::SpanId::from_bytes(parent.span_id_bytes()),
            opentelemetry::trace::TraceFlags::new(parent.flags()),
            true,
            opentelemetry::trace::TraceState::default(),
        );
        // Fails only when export is off or the span is disabled: then there is nothing to
        // parent, and the fallback below keeps logs and propagation working.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let exported = span.context();
    let exported = exported.span().span_context().clone();
    if exported.is_valid() {
        return TraceContext::from_parts(
            exported.trace_id().to_bytes(),
            exported.span_id().to_bytes(),
            exported.trace_flags().to_u8(),
        );
    }
    parent.map_or_else(TraceContext::generate, |p| p.child())
}

/// Runs `future` inside `span`, continuing `parent` (see [`remote_span`]) with the span's
/// context current, so sends made by `future` carry it on.
pub fn in_remote_span<F: Future>(
    span: tracing::Span,
    parent: Option<TraceContext>,
    future: F,
) -> Instrumented<TaskLocalFuture<TraceContext, F>> {
    let ctx = remote_span(&span, parent);
    ctx.scope(future).instrument(span)
}

/// Server-side tower layer: gives every request a trace context (from `traceparent` or new),
/// runs it inside a `grpc_request` span with `trace_id`, and makes the context current.
///
/// Use with `tonic::transport::Server::builder().layer(TraceContextLayer)`. The context is
/// also inserted into the request extensions, so handlers can read it with
/// `request.extensions().get::<TraceContext>()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> tower::Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

/// The service made by [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContextService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for TraceContextService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<TaskLocalFuture<TraceContext, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let parent = TraceContext::from_headers(request.headers());
        // ERROR level so the span is enabled under any filter: with `RUST_LOG=warn` an info
        // span would be filtered out and warnings inside the request would lose `trace_id`.
        let span = tracing::error_span!(
            "grpc_request",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
            rpc = %request.uri().path(),
        );
        let ctx = remote_span(&span, parent);
        request.extensions_mut().insert(ctx);
        span.record("trace_id", tracing::field::display(ctx.trace_id()));
        span.record("span_id", tracing::field::display(ctx.span_id()));
        if let Some(parent) = parent {
            span.record("parent_span_id", tracing::field::display(parent.span_id()));
        }
        let future = {
            let _entered = span.enter();
            ctx.scope(self.inner.call(request))
        };
        future.instrument(span)
    }
}

/// Client-side interceptor that sends `traceparent` for the current trace context (a child
/// span of it), or for a new trace when there is none.
///
/// `Client::with_interceptor(channel, TraceContextInterceptor)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_traceparent(request.metadata_mut());
        Ok(request)
    }
}

/// Sets `traceparent` in outgoing metadata to a child of the current trace context (or a new
/// trace), and returns the context sent.
pub fn inject_traceparent(metadata: &mut MetadataMap) -> TraceContext {
    let ctx = TraceContext::current().map_or_else(TraceContext::generate, |c| c.child());
    if let Ok(value) = MetadataValue::try_from(ctx.to_traceparent()) {
        metadata.insert(TRACEPARENT, value);
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("capture lock").clone()).expect("utf-8 logs")
        }
    }

    /// What the inner service saw: extension, current context, context sent on an outgoing call.
    type Seen = (Option<TraceContext>, Option<TraceContext>, TraceContext);

    /// Sends one request with `traceparent` through the layer and returns what the handler saw
    /// and the JSON logs.
    fn handle(traceparent: Option<&str>) -> (Seen, String) {
        use tower::{Layer as _, Service as _, ServiceExt as _};

        let capture = Capture::default();
        let subscriber = subscriber(LogFormat::Json, EnvFilter::new("info"), capture.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let seen = tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let inner = tower::service_fn(|request: http::Request<()>| async move {
                    tracing::info!("handling request");
                    let mut outgoing = MetadataMap::new();
                    let sent = inject_traceparent(&mut outgoing);
                    assert_eq!(TraceContext::from_metadata(&outgoing), Some(sent));
                    let extension = request.extensions().get::<TraceContext>().copied();
                    Ok::<Seen, std::convert::Infallible>((extension, TraceContext::current(), sent))
                });
                let mut service = TraceContextLayer.layer(inner);
                let mut request = http::Request::builder().uri("/domain.test.v1.TestService/Call");
                if let Some(value) = traceparent {
                    request = request.header(TRACEPARENT, value);
                }
                let request = request.body(()).expect("request");
                let ready = service.ready().await.expect("ready");
                ready.call(request).await.expect("call")
            })
        });
        (seen, capture.text())
    }

    #[test]
    fn server_layer_continues_a_valid_incoming_trace() {
        let ((extension, current, sent), logs) = handle(Some(SAMPLE));
        let current = current.expect("context is current inside the handler");
        assert_eq!(extension, Some(current));
        assert_eq!(current.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            current.span_id(),
            "00f067aa0ba902b7",
            "server span is a child"
        );
        assert_eq!(
            sent.trace_id(),
            current.trace_id(),
            "outgoing calls continue the trace"
        );
        assert_ne!(sent.span_id(), current.span_id());

        let line = logs
            .lines()
            .find(|line| line.contains("handling request"))
            .expect("handler log line");
        assert!(
            line.contains(r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736""#),
            "{line}"
        );
        assert!(
            line.contains(r#""parent_span_id":"00f067aa0ba902b7""#),
            "{line}"
        );
    }

    #[test]
    fn server_layer_replaces_invalid_or_missing_traceparent() {
        let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        for header in [Some(invalid), Some("nonsense"), None] {
            let ((_, current, _), logs) = handle(header);
            let current = current.expect("a fresh context is current");
            assert_ne!(current.trace_id(), "00000000000000000000000000000000");
            assert_eq!(
                TraceContext::parse_traceparent(&current.to_traceparent()),
                Ok(current)
            );
            let expected = format!(r#""trace_id":"{}""#, current.trace_id());
            assert!(logs.contains(&expected), "{logs}");
        }
    }

    #[test]
    fn interceptor_starts_a_trace_outside_requests() {
        let mut metadata = MetadataMap::new();
        let sent = inject_traceparent(&mut metadata);
        assert_eq!(TraceContext::from_metadata(&metadata), Some(sent));
    }
}
