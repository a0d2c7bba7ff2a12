//! Small helpers shared by the fault, failover and protocol tests.

use domain_testkit::process::ManagedProcess;

/// The largest of `f` over `items` (e.g. the longest call), or the default when empty.
pub fn max_of<T, D: Ord + Default>(items: impl IntoIterator<Item = T>, f: impl FnMut(T) -> D) -> D {
    items.into_iter().map(f).max().unwrap_or_default()
}

/// The log of a node's process so far; empty when it is not running.
pub fn log_of(process: Option<&ManagedProcess>) -> String {
    process.map(ManagedProcess::read_log).unwrap_or_default()
}

/// The single `i64` (e.g. a count) that `sql` selects.
pub async fn query_i64(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<i64> {
    Ok(db.query_one(sql, params).await?.get(0))
}
