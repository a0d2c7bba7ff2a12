//! The start-up sequence every service runs on its database before it serves.

use sqlx::postgres::PgPool;

use crate::{
    DatabaseConfig, StorageError, check_commit_mode, connect_sqlx, hot_pool, run_migrations,
};

/// Which start-up step failed, so the operator reads "cannot migrate", not just an SQL error.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] StorageError),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[source] StorageError),
    #[error(transparent)]
    CommitMode(StorageError),
    #[error("cannot build the database pool: {0}")]
    Pool(#[source] StorageError),
}

/// Connects with sqlx, refuses a server that acknowledges commits before they are durable
/// (unless `allow-async-commit`), and applies `migrator`. Returns the sqlx pool for callers
/// that keep using it (the participant); the others use [`open`].
pub async fn prepare(
    cfg: &DatabaseConfig,
    migrator: &sqlx::migrate::Migrator,
) -> Result<PgPool, OpenError> {
    let pool = connect_sqlx(cfg).await.map_err(OpenError::Connect)?;
    // Refuse an unsafe server before changing anything on it.
    check_commit_mode(&pool, cfg.allow_async_commit)
        .await
        .map_err(OpenError::CommitMode)?;
    run_migrations(&pool, migrator)
        .await
        .map_err(OpenError::Migrate)?;
    Ok(pool)
}

/// [`prepare`], then closes the sqlx pool and returns the hot (deadpool) pool the service
/// runs on.
pub async fn open(
    cfg: &DatabaseConfig,
    migrator: &sqlx::migrate::Migrator,
) -> Result<deadpool_postgres::Pool, OpenError> {
    prepare(cfg, migrator).await?.close().await;
    hot_pool(cfg).map_err(OpenError::Pool)
}
