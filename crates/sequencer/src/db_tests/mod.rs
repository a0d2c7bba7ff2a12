//! The sequencer's store against a real PostgreSQL (the shared test cluster), with the
//! helpers those tests share. In-crate so the store can stay private.

mod checkpoints;
mod peer_offline;
mod read_limits;
mod topology_apply_order;
mod write_batch;

use domain_storage::DatabaseConfig;
use domain_testkit::pg::PgCluster;

/// A fresh database of the shared test cluster with the sequencer's migrations applied.
pub async fn migrated(prefix: &str) -> DatabaseConfig {
    let db = PgCluster::shared().create_database(prefix).await;
    let cfg = DatabaseConfig::from_url(db.url.clone());
    let pool = domain_storage::connect_sqlx(&cfg).await.expect("sqlx pool");
    domain_storage::run_migrations(&pool, &crate::MIGRATOR)
        .await
        .expect("migrations");
    pool.close().await;
    cfg
}
