//! Metric names of the domain manager. They are an API: docs/domain-manager.md
//! lists them and renaming one breaks dashboards and alerts. Lease metrics
//! (`lease_*`, label `lease="domain-manager"`) come from the domain-lease crate.

/// Counter, label `kind`: topology transactions this replica got sequenced.
pub const TOPOLOGY_TRANSACTIONS: &str = "dm_topology_transactions_total";
/// Gauge: participants whose latest sequenced state has a permission other than disabled.
pub const ALLOWLIST_SIZE: &str = "dm_allowlist_size";
/// Counter, labels `method` and `outcome` (`ok` or the error code): admin API calls.
pub const ADMIN_REQUESTS: &str = "dm_admin_requests_total";
/// Histogram (seconds): time to get one topology transaction sequenced, retries included.
pub const TOPOLOGY_SEND_SECONDS: &str = "dm_topology_send_seconds";

/// Registers descriptions so `/metrics` carries HELP lines (and the lease metrics').
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        TOPOLOGY_TRANSACTIONS,
        "Topology transactions sequenced by this replica, by kind"
    );
    describe_gauge!(
        ALLOWLIST_SIZE,
        "Participants whose latest sequenced permission is not disabled"
    );
    describe_counter!(
        ADMIN_REQUESTS,
        "Admin API calls, by method and outcome (ok or the domain-error-code)"
    );
    describe_histogram!(
        TOPOLOGY_SEND_SECONDS,
        Unit::Seconds,
        "Time to get one topology transaction sequenced, retries across sequencers included"
    );
    domain_lease::describe_metrics();
}
