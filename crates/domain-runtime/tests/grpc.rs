//! A plaintext gRPC server built from the runtime pieces: health following readiness,
//! reflection, trace-context and RPC-metrics layers, and graceful shutdown.

use std::time::Duration;

use domain_runtime::grpc::{self, GrpcServerConfig};
use domain_runtime::metrics::{GrpcMetricsLayer, build_recorder};
use domain_runtime::ops::Readiness;
use domain_runtime::telemetry::{TraceContextInterceptor, TraceContextLayer};
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

mod common;
use common::Served;

/// Polls `f` until it returns true, for at most 5 s.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// A current-thread runtime keeps every server task on this thread, where the local recorder
// is the default; the global recorder is never touched.
#[tokio::test(flavor = "current_thread")]
async fn health_follows_readiness_and_rpcs_are_measured() {
    let recorder = build_recorder("test-component").expect("recorder");
    let _local = metrics::set_default_local_recorder(&recorder);
    let handle = recorder.handle();

    let config = GrpcServerConfig::with_listen("127.0.0.1:0".parse().expect("addr"));
    let listener = grpc::bind(&config).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (health, health_service) = grpc::health_service(config.max_message_size).await;
    let readiness = Readiness::new();
    let follower = health.follow(&readiness);
    let router = grpc::server_builder(&config)
        .expect("builder")
        .layer(TraceContextLayer)
        .layer(GrpcMetricsLayer)
        .add_service(health_service)
        .add_service(grpc::reflection_service().expect("reflection"));
    let limits = config.connection_limits();
    let server = Served::spawn(|shutdown| grpc::serve(router, listener, limits, "test", shutdown));

    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::with_interceptor(channel, TraceContextInterceptor);
    let mut status = async |service: &str| {
        client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    };

    assert_eq!(status("").await, Ok(ServingStatus::NotServing));
    assert_eq!(
        status(grpc::LIVENESS_SERVICE).await,
        Ok(ServingStatus::Serving)
    );
    assert_eq!(status("no.such.Service").await, Err(tonic::Code::NotFound));

    readiness.set_ready(true);
    eventually("readiness to reach grpc health", async || {
        status("").await == Ok(ServingStatus::Serving)
    })
    .await;
    readiness.set_ready(false);
    eventually("not-ready to reach grpc health", async || {
        status("").await == Ok(ServingStatus::NotServing)
    })
    .await;

    // A server stream (health Watch), ended by the client after its first message: counted
    // with its type, but kept out of the latency histogram.
    let channel2 = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut watcher = HealthClient::new(channel2);
    let mut stream = watcher
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    stream.message().await.expect("first watch message");
    drop(stream);
    let watch =
        r#"grpc_service="grpc.health.v1.Health",grpc_method="Watch",grpc_type="server_stream""#;
    eventually("the watch stream to be counted as handled", async || {
        handle.render().contains(&format!(
            r#"grpc_server_handled_total{{component="test-component",{watch}"#
        ))
    })
    .await;
    let text = handle.render();
    assert!(
        text.contains(&format!(
            r#"grpc_server_started_total{{component="test-component",{watch}}} 1"#
        )),
        "{text}"
    );
    assert!(
        !text.contains(r#"grpc_server_handling_seconds_bucket{component="test-component",grpc_service="grpc.health.v1.Health",grpc_method="Watch""#),
        "streams must not be in the latency histogram:\n{text}"
    );

    let labels = r#"component="test-component",grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_type="unary""#;
    let ok = format!(r#"grpc_server_handled_total{{{labels},grpc_code="OK"}}"#);
    let not_found = format!(r#"grpc_server_handled_total{{{labels},grpc_code="NotFound"}} 1"#);
    eventually("handled counters", async || {
        let text = handle.render();
        text.contains(&ok) && text.contains(&not_found)
    })
    .await;
    let text = handle.render();
    assert!(
        text.contains(&format!("grpc_server_started_total{{{labels}}}")),
        "{text}"
    );
    assert!(
        text.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"grpc_server_handling_seconds_bucket{{{labels},le="+Inf"}}"#
        )),
        "{text}"
    );

    server.stop().await;
    drop(readiness);
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("follower ends once readiness is dropped")
        .expect("follower task");
}

/// Lists the services a server announces over reflection v1, or the gRPC code it answered.
async fn reflected_services(addr: std::net::SocketAddr) -> Result<Vec<String>, tonic::Code> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .map_err(|s| s.code())?
        .into_inner();
    let first = responses
        .message()
        .await
        .map_err(|s| s.code())?
        .expect("one reflection response");
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// `reflection = false` (the knob for a port other organisations reach) removes the
/// reflection service from a `service_router`, health stays; the default keeps it.
#[tokio::test]
async fn reflection_follows_the_listener_setting() {
    for reflection in [true, false] {
        let config = GrpcServerConfig {
            reflection,
            ..GrpcServerConfig::with_listen("127.0.0.1:0".parse().expect("addr"))
        };
        let listener = grpc::bind(&config).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_health, health_service) = grpc::health_service(config.max_message_size).await;
        let router = grpc::service_router(&config, health_service).expect("router");
        let limits = config.connection_limits();
        let server =
            Served::spawn(|shutdown| grpc::serve(router, listener, limits, "test", shutdown));

        let answer = reflected_services(addr).await;
        if reflection {
            let services = answer.expect("reflection served by default");
            assert!(
                services.iter().any(|s| s == "grpc.health.v1.Health"),
                "{services:?}"
            );
        } else {
            assert_eq!(answer, Err(tonic::Code::Unimplemented));
        }

        server.stop().await;
    }
}
