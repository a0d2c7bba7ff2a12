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
    fn names_and_labels_render() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.01, 0.1, 1.0])
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            endpoint_healthy("mydomain", "https://seq1:5001", true);
            endpoint_healthy("mydomain", "https://seq2:5001", false);
            failover("mydomain");
            failover("mydomain");
            resubscription("mydomain");
            send_finished("mydomain", true, Duration::from_millis(20));
            token_refreshed("mydomain", false);
        });
        let text = handle.render();
        for needle in [
            "sequencer_client_endpoint_healthy{alias=\"mydomain\",endpoint=\"https://seq1:5001\"} 1",
            "sequencer_client_endpoint_healthy{alias=\"mydomain\",endpoint=\"https://seq2:5001\"} 0",
            "sequencer_client_failovers_total{alias=\"mydomain\"} 2",
            "sequencer_client_resubscriptions_total{alias=\"mydomain\"} 1",
            "sequencer_client_send_seconds_bucket{alias=\"mydomain\",outcome=\"ok\",le=\"0.1\"} 1",
            "sequencer_client_token_refreshes_total{alias=\"mydomain\",reason=\"expiry\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
