//! Starting a sequencer cluster over a database of its own, with a client of that database
//! for the tests' checks.

use domain_localnet::sequencers::SequencerCluster;
use domain_testkit::{pg::PgCluster, process::TestLogs};

use crate::checks::db_client;

/// A fresh database `db_name` on the shared PostgreSQL, a cluster of `instances` sequencers
/// over it with `config` (and per-instance environment `env`, may be empty), and a client
/// of the database.
pub async fn start_with_db(
    logs: TestLogs,
    db_name: &str,
    instances: usize,
    config: &str,
    env: &[Vec<(String, String)>],
) -> anyhow::Result<(SequencerCluster, tokio_postgres::Client)> {
    let database = PgCluster::shared().create_database(db_name).await;
    let cluster =
        SequencerCluster::start_with_env(logs, database.clone(), instances, config, env).await?;
    let db = db_client(&database.url).await?;
    Ok((cluster, db))
}

/// The environment of a one-instance cluster that sets `key` to `value`.
pub fn one_instance_env(key: &str, value: impl ToString) -> Vec<Vec<(String, String)>> {
    vec![vec![(key.to_string(), value.to_string())]]
}

/// The log of instance `i` of the cluster so far (empty if it has no process).
pub fn node_log(cluster: &SequencerCluster, i: usize) -> String {
    cluster
        .nodes
        .get(i)
        .and_then(|n| n.process.as_ref())
        .map(|p| p.read_log())
        .unwrap_or_default()
}
