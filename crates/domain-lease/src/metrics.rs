//! Metric names of the lease keeper. They are an API (listed in docs/metrics.md): renaming
//! one breaks dashboards and alerts. Every metric carries the label `lease` (the lease
//! name).

/// Gauge: 1 while this process holds the lease as active, else 0.
pub const ACTIVE: &str = "lease_active";
/// Histogram (seconds): round-trip time of successful renewals.
pub const RENEW_SECONDS: &str = "lease_renew_seconds";
/// Counter: acquisitions by this process (each one starts a new epoch).
pub const TAKEOVERS: &str = "lease_takeovers_total";
/// Counter: times this process stopped being active without releasing the lease itself
/// (local deadline passed, renewal failed, timed out or found the lease taken).
pub const LOSSES: &str = "lease_losses_total";
/// Counter: database sessions this process terminated because they were still inside a
/// fenced transaction of an expired lease (of a paused or cut-off holder) when it tried
/// to take the lease over.
pub const TERMINATED: &str = "lease_expired_transactions_terminated_total";
/// Gauge: the lease's current epoch as last seen by this process (its own while active).
pub const EPOCH: &str = "lease_epoch";

/// Registers descriptions so the Prometheus `/metrics` output carries HELP lines. Call once
/// after installing the recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        ACTIVE,
        "1 while this process holds the lease as active, else 0"
    );
    describe_histogram!(
        RENEW_SECONDS,
        Unit::Seconds,
        "Round-trip time of successful lease renewals"
    );
    describe_counter!(
        TAKEOVERS,
        "Lease acquisitions by this process (each starts a new epoch)"
    );
    describe_counter!(
        LOSSES,
        "Times this process stopped being active without releasing the lease (deadline passed, renewal failed or lease taken)"
    );
    describe_counter!(
        TERMINATED,
        "Database sessions terminated because they were still inside a fenced transaction of an expired lease when this process took it over"
    );
    describe_gauge!(
        EPOCH,
        "Current epoch of the lease as last seen by this process"
    );
}
