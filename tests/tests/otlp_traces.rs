//! Traces across members (issue 15 item 5): every component exports spans over OTLP/gRPC to a
//! real OTLP receiver (the collector `TraceService` from `opentelemetry-proto`, served by tonic
//! inside this test), and one participant admin `Ping` yields spans from both participants,
//! the sequencer and the mediator that share one trace id: the submitter's trace context
//! travels in the `SendRequest`, is stored with the sequenced event and restored on delivery,
//! and the mediator's verdict and the recipients' responses carry it on.

use crate::participant_common as common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::{Domain, Layout, ping_rpc};
use domain_e2e::checks::keep_logs_on_error;
use domain_testkit::process::TestLogs;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One received span: (service.name, service.instance.id, trace id hex, span name).
type Received = (String, String, String, String);

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.into_inner().resource_spans {
            let attr = |key: &str| {
                rs.resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == key))
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            let (service, instance) = (attr("service.name"), attr("service.instance.id"));
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    spans.push((
                        service.clone(),
                        instance.clone(),
                        hex_of(&span.trace_id),
                        span.name.clone(),
                    ));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_ping_is_one_trace_across_members() -> anyhow::Result<()> {
    let logs = TestLogs::for_current_test();
    keep_logs_on_error(&logs, body(logs.clone())).await
}

async fn body(logs: TestLogs) -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // An inline table, so the line can go anywhere among a config's top-level keys.
    let tracing = format!("tracing = {{ otlp-endpoint = \"http://127.0.0.1:{port}\" }}");
    let layout = Layout {
        sequencer_config: tracing.clone(),
        mediator_config: tracing.clone(),
        participant_config: tracing,
        ..Layout::default()
    };
    let domain = Domain::start_with(
        logs,
        layout,
        &[("alice", "payload"), ("bob", "payload")],
        "10s",
    )
    .await?;
    let (alice, bob) = (&domain.participants[0], &domain.participants[1]);
    let mut admin = alice.admin().await?;
    let pong = ping_rpc(&mut admin, &bob.uid, Duration::from_secs(20))
        .await
        .context("ping")?;
    ensure!(
        pong.verdict() == domain_proto::participant::admin::v1::PingVerdict::Approved,
        "ping: {pong:?}"
    );

    // The trace of the ping: the one of alice's admin Ping request span.
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected: BTreeSet<&str> = ["sequencer", "mediator", "participant"].into();
    loop {
        let spans = receiver.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ping_traces: BTreeSet<String> = spans
            .iter()
            .filter(|(s, _, _, name)| s == "participant" && name == "grpc_request")
            .map(|(_, _, t, _)| t.clone())
            .collect();
        // Per trace of a participant request: the services, and the participant instances.
        let mut found = None;
        for trace in &ping_traces {
            let mut services: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (service, instance, t, _) in &spans {
                if t == trace {
                    services.entry(service).or_default().insert(instance);
                }
            }
            let all = expected.iter().all(|s| services.contains_key(s));
            let both = services.get("participant").is_some_and(|i| i.len() >= 2);
            if all && both {
                found = Some((trace.clone(), services.len()));
            }
        }
        if let Some((trace, _)) = found {
            let names: BTreeSet<(String, String)> = spans
                .iter()
                .filter(|(_, _, t, _)| *t == trace)
                .map(|(s, _, _, n)| (s.clone(), n.clone()))
                .collect();
            println!("trace {trace}: {names:?}");
            ensure!(
                names.contains(&("mediator".into(), "mediator_event".into()))
                    && names.contains(&("mediator".into(), "mediator_verdict_send".into())),
                "the mediator's processing and verdict are not in the trace: {names:?}"
            );
            ensure!(
                names.contains(&("participant".into(), "participant_event".into())),
                "no participant event processing in the trace: {names:?}"
            );
            break;
        }
        if Instant::now() > deadline {
            let mut by_trace: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
            for (s, i, t, n) in &spans {
                by_trace
                    .entry(t.clone())
                    .or_default()
                    .insert((format!("{s}@{i}"), n.clone()));
            }
            let relevant: Vec<_> = by_trace
                .iter()
                .filter(|(t, _)| ping_traces.contains(*t))
                .collect();
            anyhow::bail!(
                "no trace of the ping spans participants (both), sequencer and mediator; \
                 {} spans received, traces of participant requests: {relevant:#?}",
                spans.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.abort();
    Ok(())
}
