//! The ops HTTP server over a real TCP connection: Prometheus exposition and health endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use domain_runtime::metrics::build_recorder;
use domain_runtime::ops::{Readiness, serve_ops};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// GET `path` from the ops server at `addr` (one connection, `Connection: close`).
async fn get(addr: SocketAddr, path: &str) -> domain_probe::Response {
    domain_probe::get(&format!("http://{addr}{path}"), Duration::from_secs(5))
        .await
        .expect("reply within 5s")
}

/// Checks one sample line: `name{label="value",...} value` (labels optional).
fn check_sample_line(line: &str) -> Result<(), String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err(format!("bad metric name `{name}`: {line}"));
    }
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        let close = labels
            .rfind('}')
            .ok_or_else(|| format!("unclosed labels: {line}"))?;
        for pair in labels[..close].split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("bad label `{pair}`: {line}"))?;
            let key_ok = !key.is_empty()
                && key.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())
                });
            let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
            if !(key_ok && quoted) {
                return Err(format!("bad label `{pair}`: {line}"));
            }
        }
        rest = &labels[close + 1..];
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before value: {line}"))?;
    let value = value.split(' ').next().unwrap_or_default();
    let parses = matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok();
    if parses {
        Ok(())
    } else {
        Err(format!("bad value `{value}`: {line}"))
    }
}

#[tokio::test]
async fn metrics_endpoint_serves_valid_prometheus_histograms() {
    let recorder = build_recorder("test-component").expect("recorder");
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("ops_test_events_total", "kind" => "a").increment(3);
        metrics::histogram!("ops_test_latency_seconds").record(0.003);
        metrics::histogram!("ops_test_latency_seconds").record(0.2);
        metrics::histogram!("ops_test_batch_size").record(7.0);
        metrics::histogram!("ops_test_other").record(0.5);
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = serve_ops(listener, handle, Readiness::new(), shutdown.clone());

    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    let content_type = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .expect("content type");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = reply.body;

    assert!(
        !text.contains("quantile="),
        "histograms must not be summaries:\n{text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        check_sample_line(line).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
    assert!(
        text.contains("# TYPE ops_test_latency_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE ops_test_events_total counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"ops_test_events_total{component="test-component",kind="a"} 3"#),
        "{text}"
    );
    for expected in [
        r#"ops_test_latency_seconds_bucket{component="test-component",le="0.0025"} 0"#,
        r#"ops_test_latency_seconds_bucket{component="test-component",le="0.005"} 1"#,
        r#"ops_test_latency_seconds_bucket{component="test-component",le="0.25"} 2"#,
        r#"ops_test_latency_seconds_bucket{component="test-component",le="+Inf"} 2"#,
        r#"ops_test_latency_seconds_sum{component="test-component"} 0.203"#,
        r#"ops_test_latency_seconds_count{component="test-component"} 2"#,
        // `_size` histograms use count buckets.
        r#"ops_test_batch_size_bucket{component="test-component",le="5"} 0"#,
        r#"ops_test_batch_size_bucket{component="test-component",le="10"} 1"#,
        r#"ops_test_batch_size_bucket{component="test-component",le="1000"} 1"#,
        // Histograms with other names still get (latency) buckets, never a summary.
        r#"ops_test_other_bucket{component="test-component",le="0.5"} 1"#,
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(
        !text.contains(r#"ops_test_batch_size_bucket{component="test-component",le="0.005"}"#),
        "{text}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("ops server stops within 5s")
        .expect("ops task");
}

#[tokio::test]
async fn health_endpoints_follow_readiness() {
    let recorder = build_recorder("test-component").expect("recorder");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let readiness = Readiness::new();
    let shutdown = CancellationToken::new();
    let server = serve_ops(
        listener,
        recorder.handle(),
        readiness.clone(),
        shutdown.clone(),
    );

    assert_eq!(get(addr, "/health/live").await.status, 200);
    assert_eq!(get(addr, "/health/ready").await.status, 503);
    readiness.set_ready(true);
    assert_eq!(get(addr, "/health/ready").await.status, 200);
    readiness.set_ready(false);
    assert_eq!(get(addr, "/health/ready").await.status, 503);
    assert_eq!(get(addr, "/health/live").await.status, 200);
    assert_eq!(get(addr, "/nope").await.status, 404);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("ops server stops within 5s")
        .expect("ops task");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener is closed after shutdown"
    );
}

#[tokio::test]
async fn a_taken_ops_address_is_named_in_the_error() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr");
    let error = domain_runtime::ops::bind(addr)
        .await
        .err()
        .map(|e| (e.kind(), e.to_string()));
    let Some((kind, message)) = error else {
        panic!("binding {addr} twice succeeded");
    };
    assert_eq!(kind, std::io::ErrorKind::AddrInUse);
    assert!(
        message.starts_with(&format!("cannot bind `ops-listen` {addr}: ")),
        "{message}"
    );
}

#[tokio::test]
async fn metrics_endpoint_appends_scrape_time_series() {
    let recorder = build_recorder("test-component").expect("recorder");
    let handle = recorder.handle();
    domain_runtime::scrape::replace_gauge_family(
        "ops_test_lag_seconds",
        "test family",
        "sequencer_index",
        vec![("3".into(), 1.5), ("9".into(), 0.25)],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = serve_ops(listener, handle, Readiness::new(), shutdown.clone());

    let text = get(addr, "/metrics").await.body;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        check_sample_line(line).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
    assert!(text.contains("# TYPE ops_test_lag_seconds gauge"), "{text}");
    assert!(
        text.contains(r#"ops_test_lag_seconds{sequencer_index="3"} 1.5"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ops_test_lag_seconds{sequencer_index="9"} 0.25"#),
        "{text}"
    );
    for process_metric in [
        "# TYPE process_cpu_seconds_total counter",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "process_threads ",
    ] {
        assert!(
            text.contains(process_metric),
            "no {process_metric}:\n{text}"
        );
    }

    // A row that is no longer reported is gone from the next scrape.
    domain_runtime::scrape::replace_gauge_family(
        "ops_test_lag_seconds",
        "test family",
        "sequencer_index",
        vec![("9".into(), 0.5)],
    );
    let text = get(addr, "/metrics").await.body;
    assert!(!text.contains(r#"sequencer_index="3""#), "{text}");
    assert!(
        text.contains(r#"ops_test_lag_seconds{sequencer_index="9"} 0.5"#),
        "{text}"
    );
    // An empty family disappears entirely, HELP and TYPE included.
    domain_runtime::scrape::replace_gauge_family(
        "ops_test_lag_seconds",
        "test family",
        "sequencer_index",
        Vec::new(),
    );
    let text = get(addr, "/metrics").await.body;
    assert!(!text.contains("ops_test_lag_seconds"), "{text}");

    shutdown.cancel();
    server.await.expect("ops server task");
}
