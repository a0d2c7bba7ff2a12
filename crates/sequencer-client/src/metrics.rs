//! Metrics of the multi-endpoint client ([`crate::DomainClient`]), recorded through the
//! `metrics` facade (whatever recorder the process installed, e.g. the Prometheus exporter
//! of `domain-runtime`):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `sequencer_client_endpoint_healthy` | gauge | `alias`, `endpoint` | 1 while the endpoint passes its health check |
//! | `sequencer_client_failovers_total` | counter | `alias` | send (and acknowledge) attempts moved to another endpoint after a failure |
//! | `sequencer_client_resubscriptions_total` | counter | `alias` | subscriptions reopened (on another endpoint when there is one) |
//! | `sequencer_client_send_seconds` | histogram | `alias`, `outcome` = `ok`, `error` | a send from first attempt to final answer, retries included |
//! | `sequencer_client_token_refreshes_total` | counter | `alias`, `reason` = `expiry`, `rejected` | new tokens obtained after the first |

use std::time::Duration;

pub const ENDPOINT_HEALTHY: &str = "sequencer_client_endpoint_healthy";
pub const FAILOVERS: &str = "sequencer_client_failovers_total";
pub const RESUBSCRIPTIONS: &str = "sequencer_client_resubscriptions_total";
pub const SEND_SECONDS: &str = "sequencer_client_send_seconds";
pub const TOKEN_REFRESHES: &str = "sequencer_client_token_refreshes_total";

pub(crate) fn endpoint_healthy(alias: &str, endpoint: &str, healthy: bool) {
    metrics::gauge!(ENDPOINT_HEALTHY, "alias" => alias.to_string(), "endpoint" => endpoint.to_string())
        .set(if healthy { 1.0 } else { 0.0 });
}

pub(crate) fn failover(alias: &str) {
    metrics::counter!(FAILOVERS, "alias" => alias.to_string()).increment(1);
}

pub(crate) fn resubscription(alias: &str) {
    metrics::counter!(RESUBSCRIPTIONS, "alias" => alias.to_string()).increment(1);
}

pub(crate) fn send_finished(alias: &str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!(SEND_SECONDS, "alias" => alias.to_string(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn token_refreshed(alias: &str, rejected: bool) {
    let reason = if rejected { "rejected" } else { "expiry" };
    metrics::counter!(TOKEN_REFRESHES, "alias" => alias.to_string(), "reason" => reason)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            endpoint_healthy("mydomain", "https://seq1:5001", true);
            endpoint_healthy("mydomain", "https://seq2:5001", false);
            failover("mydomain");
            failover("mydomain");
            resubscription("mydomain");
            send_finished("mydomain", true, Duration::from_millis(20));
            token_refreshed("mydomain", false);
        });
        // "name{label=value,...} value" for every series, to compare as text.
        let mut seen: Vec<String> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                let value = match value {
                    DebugValue::Counter(c) => c.to_string(),
                    DebugValue::Gauge(g) => g.into_inner().to_string(),
                    DebugValue::Histogram(h) => format!("{} samples", h.len()),
                };
                format!("{}{{{}}} {value}", key.name(), labels.join(","))
            })
            .collect();
        seen.sort();
        for needle in [
            "sequencer_client_endpoint_healthy{alias=mydomain,endpoint=https://seq1:5001} 1",
            "sequencer_client_endpoint_healthy{alias=mydomain,endpoint=https://seq2:5001} 0",
            "sequencer_client_failovers_total{alias=mydomain} 2",
            "sequencer_client_resubscriptions_total{alias=mydomain} 1",
            "sequencer_client_send_seconds{alias=mydomain,outcome=ok} 1 samples",
            "sequencer_client_token_refreshes_total{alias=mydomain,reason=expiry} 1",
        ] {
            assert!(
                seen.iter().any(|s| s == needle),
                "missing {needle} in {seen:#?}"
            );
        }
    }
}
