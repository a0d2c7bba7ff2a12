//! Metric names of the sequencer. They are an API: docs/metrics.md lists them
//! and renaming one breaks dashboards and alerts.

pub const SENDS: &str = "sequencer_sends_total";
pub const SEND_REJECTIONS: &str = "sequencer_send_rejections_total";
pub const TRACE_CONTEXT_DROPPED: &str = "sequencer_trace_context_dropped_total";
pub const BATCH_SIZE: &str = "sequencer_batch_size";
pub const SEND_LATENCY: &str = "sequencer_send_latency_seconds";
pub const COMMIT_SECONDS: &str = "sequencer_commit_seconds";
pub const WATERMARK_LAG: &str = "sequencer_watermark_lag_seconds";
pub const INSTANCES_ONLINE: &str = "sequencer_instances_online";
pub const INSTANCES_MARKED_OFFLINE: &str = "sequencer_instances_marked_offline_total";
pub const PEER_WATERMARKS_IGNORED: &str = "sequencer_peer_watermarks_ignored_total";
pub const EVENTS_READ: &str = "sequencer_events_read_total";
pub const EVENTS_DELIVERED: &str = "sequencer_events_delivered_total";
pub const ACTIVE_SUBSCRIPTIONS: &str = "sequencer_active_subscriptions";
pub const SUBSCRIBERS_CUT: &str = "sequencer_subscribers_cut_total";
pub const SUBSCRIPTIONS_REFUSED: &str = "sequencer_subscriptions_refused_total";
pub const FEED_BYTES: &str = "sequencer_feed_bytes";
pub const WRITER_ONLINE: &str = "sequencer_writer_online";
pub const INSTANCE_INDEX: &str = "sequencer_instance_index";
pub const DB_POOL: &str = "sequencer_db_pool_connections";
pub const DB_POOL_MAX: &str = "sequencer_db_pool_max_connections";
pub const AUTH: &str = "sequencer_authentications_total";
pub const EVENTS_PRUNED: &str = "sequencer_events_pruned_total";
pub const PRUNED_ROWS: &str = "sequencer_pruned_rows_total";
pub const PRUNING_BOUND_AGE: &str = "sequencer_pruning_lower_bound_age_seconds";
pub const PRUNING_CANDIDATE_AGE: &str = "sequencer_pruning_candidate_bound_age_seconds";
pub const PRUNING_RETENTION: &str = "sequencer_pruning_retention_seconds";
pub const PRUNING_HOLDING_BACK: &str = "sequencer_pruning_holding_back";
pub const STORED_ROWS: &str = "sequencer_stored_rows";
pub const ACKNOWLEDGEMENTS: &str = "sequencer_acknowledgements_total";
pub const CHECKPOINTS_WRITTEN: &str = "sequencer_checkpoints_written_total";
pub const TOPOLOGY_APPLIED: &str = "sequencer_topology_applied_total";
pub const TOPOLOGY_TRANSACTIONS: &str = "sequencer_topology_transactions";
pub const LOAD_SHED: &str = "sequencer_load_shed_total";
pub const WRITER_QUEUE_BYTES: &str = "sequencer_writer_queue_bytes";

/// Registers descriptions so `/metrics` carries HELP lines.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SENDS,
        "Submissions answered, by outcome (sequenced, deduplicated, failed, max_sequencing_time_exceeded)"
    );
    describe_counter!(
        SEND_REJECTIONS,
        "Submissions rejected by validation before any write, by error code"
    );
    describe_counter!(
        TRACE_CONTEXT_DROPPED,
        "Submissions whose trace_context was dropped (not a valid traceparent, or over 512 bytes); they are sequenced without it"
    );
    describe_histogram!(
        BATCH_SIZE,
        "Events per committed writer batch (group commit)"
    );
    describe_histogram!(
        SEND_LATENCY,
        Unit::Seconds,
        "Time from a validated submission entering the writer queue to its durable acknowledgement"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one writer batch transaction, commit included"
    );
    describe_gauge!(INSTANCES_ONLINE, "Writer instances currently marked online");
    describe_counter!(
        LOAD_SHED,
        "Requests refused with SEQ_OVERLOADED, by reason (concurrency, caller_concurrency, queue_bytes, member_queue_bytes, queue_full)"
    );
    describe_gauge!(
        WRITER_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes of submissions waiting for the writer or in its current batch (budget writer.max-queue-bytes)"
    );
    describe_counter!(
        PEER_WATERMARKS_IGNORED,
        "Watermark notifications not followed, by reason (malformed, ahead_of_clock: further ahead of this instance's clock than ha.max-clock-skew)"
    );
    describe_counter!(
        INSTANCES_MARKED_OFFLINE,
        "Peers this instance marked offline after their heartbeat stalled"
    );
    describe_counter!(EVENTS_READ, "Events read by this instance's shared reader");
    describe_counter!(
        EVENTS_DELIVERED,
        "Events delivered to subscribers of this instance"
    );
    describe_gauge!(ACTIVE_SUBSCRIPTIONS, "Open subscriptions on this instance");
    describe_counter!(
        SUBSCRIBERS_CUT,
        "Subscriptions cut with RESOURCE_EXHAUSTED because the subscriber fell behind"
    );
    describe_counter!(
        SUBSCRIPTIONS_REFUSED,
        "Subscriptions refused with SEQ_TOO_MANY_SUBSCRIPTIONS: the member already had reader.max-subscriptions-per-member open on this instance"
    );
    describe_gauge!(
        FEED_BYTES,
        Unit::Bytes,
        "Bytes (stored event size) the live feed keeps for subscribers that have not taken them yet, as of its latest batch; at most reader.feed-bytes plus one batch"
    );
    describe_gauge!(
        WRITER_ONLINE,
        "1 while this instance's writer is online, else 0"
    );
    describe_gauge!(INSTANCE_INDEX, "Instance index this process holds");
    describe_gauge!(
        DB_POOL,
        "Hot-path connection pool: connections by state (in_use, idle)"
    );
    describe_gauge!(DB_POOL_MAX, "Hot-path connection pool: maximum size");
    describe_counter!(AUTH, "Challenge/authenticate outcomes");
    describe_counter!(EVENTS_PRUNED, "Events deleted by pruning");
    describe_counter!(
        PRUNED_ROWS,
        "Rows deleted by pruning and housekeeping, by table (seq_nonces and seq_tokens: expired authentication rows)"
    );
    describe_gauge!(
        PRUNING_BOUND_AGE,
        Unit::Seconds,
        "Sequencer time minus the pruning lower bound (before the first prune: minus the oldest stored event)"
    );
    describe_gauge!(
        PRUNING_CANDIDATE_AGE,
        Unit::Seconds,
        "Sequencer time minus the bound a prune would move to now"
    );
    describe_gauge!(
        PRUNING_RETENTION,
        Unit::Seconds,
        "Configured pruning retention window"
    );
    describe_gauge!(
        PRUNING_HOLDING_BACK,
        "1 for the member whose unacknowledged events limit pruning, 0 for members that did before"
    );
    describe_gauge!(
        STORED_ROWS,
        "Live rows per pruned table (PostgreSQL statistics estimate, sampled)"
    );
    describe_counter!(
        ACKNOWLEDGEMENTS,
        "Acknowledge calls, by result (accepted, ahead, malformed)"
    );
    describe_counter!(CHECKPOINTS_WRITTEN, "Counter checkpoints written");
    describe_counter!(
        TOPOLOGY_APPLIED,
        "Topology transactions this instance applied to the member table at their effective time, by kind"
    );
    describe_gauge!(
        TOPOLOGY_TRANSACTIONS,
        "Sequenced topology transactions known to this instance"
    );
}

/// Label of [`WATERMARK_LAG`]: the instance index of the row. Not `instance`, which
/// Prometheus's own target label would rename to `exported_instance`.
pub const SEQUENCER_INDEX_LABEL: &str = "sequencer_index";

/// Replaces the watermark-lag series with one per `(instance index, lag seconds)`; rows not
/// listed (gone offline, or every row while the database is unreachable) vanish from the
/// next scrape.
pub fn set_watermark_lags(lags: Vec<(String, f64)>) {
    domain_runtime::scrape::replace_gauge_family(
        WATERMARK_LAG,
        "Database clock minus the watermark of each online instance, by sequencer_index (seconds)",
        SEQUENCER_INDEX_LABEL,
        lags,
    );
}
