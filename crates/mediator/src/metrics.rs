//! Metric names of the mediator. They are an API: docs/mediator.md lists them
//! and renaming one breaks dashboards and alerts. The lease metrics
//! (`lease_active`, `lease_epoch`, `lease_takeovers_total`, ...) come from the
//! domain-lease crate, with `lease="mediator"`.

/// Confirmation requests addressed to this mediator, by `result` (`opened`,
/// `rejected`: refused at once by the mediator's own checks).
pub const REQUESTS: &str = "mediator_requests_total";
/// Verdicts decided, by `outcome` (`approved`, `rejected`, `timed_out`).
pub const VERDICTS: &str = "mediator_verdicts_total";
/// Sequencer time from a request to its decision, by `outcome`.
pub const DECISION_LATENCY: &str = "mediator_decision_latency_seconds";
/// Requests waiting for a decision.
pub const PENDING: &str = "mediator_pending_requests";
/// Confirmation responses counted, by `decision`.
pub const RESPONSES: &str = "mediator_responses_total";
/// Confirmation responses ignored, by `reason`.
pub const RESPONSES_IGNORED: &str = "mediator_responses_ignored_total";
/// Envelopes that were not for the mediator or not understood, by `reason`.
pub const ENVELOPES_IGNORED: &str = "mediator_envelopes_ignored_total";
/// Verdict sends, by `result` (`sequenced`, `deduplicated`, `expired`,
/// `undeliverable`, `retried`).
pub const VERDICT_SENDS: &str = "mediator_verdict_sends_total";
/// Wall time from a verdict's commit to the sequencer's acknowledgement.
pub const VERDICT_SEND_SECONDS: &str = "mediator_verdict_send_seconds";
/// Time proofs requested, by `result` (`sent`, `failed`).
pub const TIME_PROOFS: &str = "mediator_time_proofs_total";
/// Events processed (persisted) by the active replica.
pub const EVENTS: &str = "mediator_events_processed_total";
/// Events per processing transaction.
pub const BATCH_SIZE: &str = "mediator_batch_size";
/// Duration of one processing transaction, commit included.
pub const PERSIST_SECONDS: &str = "mediator_persist_seconds";
/// Counter of the last processed event.
pub const LAST_COUNTER: &str = "mediator_last_processed_counter";
/// Topology transactions the mediator knows (0 means it saw no allowlisting at all).
pub const TOPOLOGY_TRANSACTIONS: &str = "mediator_topology_transactions";
/// Subscriptions opened by the mediator, by `reason` (`activation`,
/// `subscription_failed`, `invalid_event`, `stream_ended`); failovers within one are
/// the client's `sequencer_client_resubscriptions_total`.
pub const SUBSCRIPTIONS: &str = "mediator_subscriptions_total";
/// 1 for the sequencer endpoint the active replica's stream is open on, 0 for the others.
pub const SUBSCRIPTION_ENDPOINT: &str = "mediator_subscription_endpoint";
/// Decided requests deleted after `request-retention`.
pub const REQUESTS_PRUNED: &str = "mediator_requests_pruned_total";
/// Acknowledgements sent to the sequencer, by `result` (`accepted`, `failed`).
pub const ACKNOWLEDGEMENTS: &str = "mediator_acknowledgements_total";
/// Sequencer timestamp (seconds) last acknowledged by this replica while active.
pub const ACKNOWLEDGED_TIMESTAMP: &str = "mediator_acknowledged_timestamp_seconds";
/// 1 while this replica is active and subscribed (ready), else 0.
pub const ACTIVE: &str = "mediator_active";
/// Activations of this replica (after acquiring the lease or a failed session).
pub const ACTIVATIONS: &str = "mediator_activations_total";
/// Time from acquiring the lease to a live subscription (state loaded).
pub const ACTIVATION_SECONDS: &str = "mediator_activation_seconds";
/// Processing sessions that ended with an error, by `reason` (`fenced`,
/// `database`, `invariant`, `lease_lost`).
pub const SESSION_FAILURES: &str = "mediator_session_failures_total";

/// Buckets of [`DECISION_LATENCY`]: up to the response timeout and beyond
/// (Canton's default timeout is 30 s; the shared `_seconds` buckets stop at 10 s).
pub const DECISION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Registers descriptions so `/metrics` carries HELP lines.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Confirmation requests addressed to this mediator, by result (opened, rejected)"
    );
    describe_counter!(
        VERDICTS,
        "Verdicts decided, by outcome (approved, rejected, timed_out)"
    );
    describe_histogram!(
        DECISION_LATENCY,
        Unit::Seconds,
        "Sequencer time from a request to the event that decided it, by outcome"
    );
    describe_gauge!(PENDING, "Requests waiting for a decision");
    describe_counter!(RESPONSES, "Confirmation responses counted, by decision");
    describe_counter!(
        RESPONSES_IGNORED,
        "Confirmation responses ignored, by reason (bad_signature, not_confirming, unknown_request, late, mismatch, malformed, duplicate, decided)"
    );
    describe_counter!(
        ENVELOPES_IGNORED,
        "Envelopes not for the mediator or not understood, by reason"
    );
    describe_counter!(
        VERDICT_SENDS,
        "Verdict sends, by result (sequenced, deduplicated, expired, undeliverable, retried)"
    );
    describe_histogram!(
        VERDICT_SEND_SECONDS,
        Unit::Seconds,
        "Wall time from a verdict's commit to the sequencer's acknowledgement"
    );
    describe_counter!(
        TIME_PROOFS,
        "Time proofs requested, by result (sent, failed)"
    );
    describe_counter!(
        EVENTS,
        "Events processed and persisted by the active replica"
    );
    describe_histogram!(BATCH_SIZE, "Events per processing transaction");
    describe_histogram!(
        PERSIST_SECONDS,
        Unit::Seconds,
        "Duration of one processing transaction, commit included"
    );
    describe_gauge!(LAST_COUNTER, "Counter of the last processed event");
    describe_gauge!(
        TOPOLOGY_TRANSACTIONS,
        "Topology transactions known to the active replica (accepted from the domain manager)"
    );
    describe_counter!(
        SUBSCRIPTIONS,
        "Subscriptions opened, by reason (activation, subscription_failed, invalid_event, stream_ended)"
    );
    describe_gauge!(
        SUBSCRIPTION_ENDPOINT,
        "1 for the sequencer endpoint the event stream is open on, else 0"
    );
    describe_counter!(
        REQUESTS_PRUNED,
        "Decided requests deleted (with their responses) after request-retention"
    );
    describe_counter!(
        ACKNOWLEDGEMENTS,
        "Acknowledgements of persisted state sent to the sequencer, by result"
    );
    describe_gauge!(
        ACKNOWLEDGED_TIMESTAMP,
        Unit::Seconds,
        "Sequencer timestamp last acknowledged by this replica (persisted state only)"
    );
    describe_gauge!(
        ACTIVE,
        "1 while this replica is active and subscribed (ready), else 0"
    );
    describe_counter!(ACTIVATIONS, "Activations of this replica");
    describe_histogram!(
        ACTIVATION_SECONDS,
        Unit::Seconds,
        "Time from acquiring the lease to a live subscription"
    );
    describe_counter!(
        SESSION_FAILURES,
        "Processing sessions that ended with an error, by reason (fenced, database, invariant, lease_lost)"
    );
    domain_lease::describe_metrics();
}
