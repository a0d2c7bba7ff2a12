//! Participant metric names (an API: listed in docs/participant.md) and their help texts.
//! Histograms get explicit buckets from the recorder builder in `main.rs`.

/// Pings run through the admin API, by `outcome` (`approved`, `rejected`, `timed_out`,
/// `no_verdict`, `send_failed`).
pub const PINGS: &str = "participant_pings_total";
/// Round trip of a ping: submission sent → verdict processed.
pub const PING_RTT: &str = "participant_ping_rtt_seconds";
/// Explicit buckets of [`PING_RTT`] (seconds): 1 ms to 30 s.
pub const PING_RTT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Confirmation responses sequenced, by `decision` (`approve`, `reject`).
pub const CONFIRMATIONS_SENT: &str = "participant_confirmations_sent_total";
/// Confirmation responses given up (max sequencing time passed, refused), by `reason`.
pub const CONFIRMATIONS_FAILED: &str = "participant_confirmations_failed_total";
/// Transactions committed (approved verdicts recorded in the participant's database).
pub const COMMITTED: &str = "participant_committed_transactions_total";
/// Verdicts received for pending requests, by `outcome`.
pub const VERDICTS: &str = "participant_verdicts_total";
/// Events processed from the subscription.
pub const EVENTS: &str = "participant_events_processed_total";
/// Envelopes ignored, by `reason`.
pub const IGNORED: &str = "participant_envelopes_ignored_total";
/// Counter of the last processed event.
pub const LAST_COUNTER: &str = "participant_last_counter";
/// 1 while connected to the domain and subscribed, else 0.
pub const CONNECTED: &str = "participant_connected";
/// Requests waiting for a verdict.
pub const PENDING: &str = "participant_pending_requests";
/// 1 for the sequencer endpoint the subscription reads from, 0 for the others, by
/// `endpoint`.
pub const SUBSCRIBED_ENDPOINT: &str = "participant_subscription_endpoint";
/// Acknowledgements of committed events sent to the sequencer, by `result`
/// (`accepted`, `failed`).
pub const ACKNOWLEDGEMENTS: &str = "participant_acknowledgements_total";
/// Domain sessions that ended with an error, by `reason`.
pub const SESSION_FAILURES: &str = "participant_session_failures_total";

/// Registers help texts with the installed recorder.
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(PINGS, "pings run through the admin API, by outcome");
    describe_histogram!(
        PING_RTT,
        Unit::Seconds,
        "ping round trip: request sent to verdict processed"
    );
    describe_counter!(
        CONFIRMATIONS_SENT,
        "confirmation responses sequenced, by decision"
    );
    describe_counter!(
        CONFIRMATIONS_FAILED,
        "confirmation responses given up, by reason"
    );
    describe_counter!(
        COMMITTED,
        "transactions committed (approved verdicts recorded)"
    );
    describe_counter!(
        VERDICTS,
        "verdicts received for pending requests, by outcome"
    );
    describe_counter!(EVENTS, "sequenced events processed");
    describe_counter!(IGNORED, "envelopes ignored, by reason");
    describe_gauge!(LAST_COUNTER, "counter of the last processed event");
    describe_gauge!(CONNECTED, "1 while connected and subscribed to the domain");
    describe_gauge!(PENDING, "requests waiting for a verdict");
    describe_gauge!(
        SUBSCRIBED_ENDPOINT,
        "1 for the sequencer endpoint the subscription reads from"
    );
    describe_counter!(SESSION_FAILURES, "domain sessions that ended with an error");
    describe_counter!(
        ACKNOWLEDGEMENTS,
        "acknowledgements of committed events sent to the sequencer, by result"
    );
}
