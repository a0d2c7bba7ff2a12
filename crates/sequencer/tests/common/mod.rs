//! Helpers shared by the sequencer crate's database tests.

use domain_storage::DatabaseConfig;
use domain_testkit::pg::PgCluster;

/// A fresh database of the shared test cluster with the sequencer's migrations applied.
pub async fn migrated(prefix: &str) -> DatabaseConfig {
    let db = PgCluster::shared().create_database(prefix).await;
    let cfg = DatabaseConfig::from_url(db.url.clone());
    let pool = domain_storage::connect_sqlx(&cfg).await.expect("sqlx pool");
    domain_storage::run_migrations(&pool, &domain_sequencer::MIGRATOR)
        .await
        .expect("migrations");
    pool.close().await;
    cfg
}
