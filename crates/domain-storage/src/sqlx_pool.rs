//! The sqlx pool: migrations, low-rate admin queries and the start-up commit-mode check.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor as _, Row as _};

use crate::{DatabaseConfig, StorageError, TargetSessionAttrs};

/// Upper bound on sqlx pool connections: it only serves migrations and admin queries, so
/// it should not compete with the hot pool for `max_connections` on the server.
pub const SQLX_POOL_MAX_SIZE: u32 = 4;

/// Opens the sqlx pool used for migrations and low-rate queries, and checks that one
/// connection can be established.
///
/// Up to [`SQLX_POOL_MAX_SIZE`] connections (fewer if `pool-max-size` is smaller), each
/// with `statement_timeout` as a startup option. Acquiring waits at most
/// `connect-timeout + pool-wait-timeout`. With `target-session-attrs = read-write`, a
/// connection that lands on a read-only server is rejected.
pub async fn connect_sqlx(cfg: &DatabaseConfig) -> Result<PgPool, StorageError> {
    let options = cfg.sqlx_options()?;
    let max = u32::try_from(cfg.pool_max_size)
        .unwrap_or(u32::MAX)
        .clamp(1, SQLX_POOL_MAX_SIZE);
    let acquire_timeout = cfg.connect_timeout + cfg.pool_wait_timeout;
    let require_writable = cfg.target_session_attrs == TargetSessionAttrs::ReadWrite;
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if require_writable {
                    // sqlx has no target_session_attrs; check it here so a failover that
                    // leaves us on a standby fails loudly instead of on the first write.
                    let row = conn
                        .fetch_one("SELECT current_setting('transaction_read_only')")
                        .await?;
                    let read_only: String = row.try_get(0)?;
                    if read_only == "on" {
                        return Err(sqlx::Error::Configuration(
                            "connected to a read-only server but database.target-session-attrs \
                             is read-write"
                                .into(),
                        ));
                    }
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| match e {
            sqlx::Error::PoolTimedOut => StorageError::Timeout {
                action: "connecting to the database",
                after: acquire_timeout,
            },
            other => StorageError::Sqlx(other),
        })?;
    tracing::debug!(url = %cfg.url, max_connections = max, "opened sqlx pool");
    Ok(pool)
}

/// Applies the pending migrations of `migrator`, holding sqlx's migration advisory lock.
///
/// Runs on one connection with `statement_timeout` disabled, since a migration (an index
/// build, a backfill) may legitimately run longer than any query on the hot path.
pub async fn run_migrations(
    pool: &PgPool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StorageError> {
    let mut conn = pool.acquire().await?;
    conn.execute("SET statement_timeout = 0").await?;
    let result = migrator.run(&mut *conn).await;
    // RESET restores the startup-option value; if that fails, do not hand the connection
    // back to the pool without its timeout.
    if conn.execute("RESET statement_timeout").await.is_err() {
        drop(conn.detach());
    }
    result?;
    tracing::info!(
        migrations = migrator.iter().count(),
        "database migrations up to date"
    );
    Ok(())
}

/// Refuses to run against a server whose `synchronous_commit` is `off`, unless
/// `allow_async_commit` (`database.allow-async-commit`) is set.
///
/// With `off`, PostgreSQL acknowledges a commit before its WAL is flushed, so a crash can
/// lose events we already told clients were sequenced. `on`, `remote_write`,
/// `remote_apply` and `local` all flush locally before acknowledging and are accepted.
pub async fn check_commit_mode(
    pool: &PgPool,
    allow_async_commit: bool,
) -> Result<(), StorageError> {
    let value: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(pool)
        .await?;
    if value.eq_ignore_ascii_case("off") {
        if allow_async_commit {
            tracing::warn!(
                synchronous_commit = %value,
                "database acknowledges commits before they are durable; allowed by \
                 database.allow-async-commit"
            );
            return Ok(());
        }
        return Err(StorageError::UnsafeCommitMode { value });
    }
    tracing::debug!(synchronous_commit = %value, "database commit mode is durable");
    Ok(())
}
