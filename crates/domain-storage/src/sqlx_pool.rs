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
///
/// A multi-host `url` is walked like libpq and tokio-postgres do: the servers are tried
/// in order and the pool is opened on the first one that accepts a connection meeting
/// `target-session-attrs` (so a promoted standby listed second is found after a
/// failover); the error of the last server is returned when none does.
pub async fn connect_sqlx(cfg: &DatabaseConfig) -> Result<PgPool, StorageError> {
    let per_host = cfg.sqlx_options_per_host()?;
    let hosts = cfg.hosts()?;
    let mut last_error = None;
    for (i, options) in per_host.into_iter().enumerate() {
        let host = hosts.get(i).map(ToString::to_string).unwrap_or_default();
        match connect_sqlx_host(cfg, options, &host).await {
            Ok(pool) => return Ok(pool),
            Err(e) => {
                if hosts.len() > 1 {
                    tracing::info!(
                        %host,
                        error = %e,
                        "database server not usable; trying the next one of the url"
                    );
                }
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| StorageError::InvalidConfig {
        reason: format!("database url {} names no host", cfg.url),
    }))
}

async fn connect_sqlx_host(
    cfg: &DatabaseConfig,
    options: sqlx::postgres::PgConnectOptions,
    host: &str,
) -> Result<PgPool, StorageError> {
    let tls = cfg.tls_settings()?;
    let max = u32::try_from(cfg.pool_max_size)
        .unwrap_or(u32::MAX)
        .clamp(1, SQLX_POOL_MAX_SIZE);
    let acquire_timeout = cfg.connect_timeout + cfg.pool_wait_timeout;
    let require_writable = cfg.target_session_attrs == TargetSessionAttrs::ReadWrite;
    if require_writable {
        // One probe connection first: the pool would retry a read-only server until its
        // acquire timeout and then report only the timeout.
        use sqlx::Connection as _;
        let mut probe = tokio::time::timeout(
            cfg.connect_timeout,
            sqlx::postgres::PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| StorageError::Timeout {
            action: "connecting to the database",
            after: cfg.connect_timeout,
        })?
        .map_err(|e| crate::error::name_tls_settings_sqlx(e, &tls))?;
        let read_only: String =
            sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
                .fetch_one(&mut probe)
                .await?;
        let _ = probe.close().await;
        if read_only == "on" {
            return Err(StorageError::ReadOnlyServer {
                host: host.to_owned(),
            });
        }
    }
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
            other => crate::error::name_tls_settings_sqlx(other, &tls),
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

/// Refuses to run against a server whose commit mode can lose a commit that was already
/// acknowledged, unless `allow_async_commit` (`database.allow-async-commit`) is set:
///
/// - `synchronous_commit = off`: PostgreSQL acknowledges before its WAL is flushed, so a
///   crash of the server itself can lose events we already told clients were sequenced.
/// - `synchronous_commit = local` while `synchronous_standby_names` is set: the server is
///   part of a synchronous-replication (HA) setup, but this session's commits are
///   acknowledged once flushed locally, before any standby has them, so a failover to the
///   standby loses them. (`local` without synchronous standbys is as durable as `on`.)
///
/// `on` and `remote_apply` are accepted. `remote_write` is accepted too: the standby has
/// the WAL in its memory before the commit is acknowledged, so losing it takes the
/// primary failing *and* the standby's operating system crashing before it writes to
/// disk. With no synchronous standby but streaming (asynchronous) standbys attached, a
/// failover can also lose acknowledged commits; PostgreSQL's settings cannot tell whether
/// such a standby is a failover target, so that only logs a warning.
///
/// The values are read from the session, so per-role and per-database settings
/// (`ALTER ROLE ... SET synchronous_commit`) and `options` in the URL count.
pub async fn check_commit_mode(
    pool: &PgPool,
    allow_async_commit: bool,
) -> Result<(), StorageError> {
    let (value, standby_names): (String, String) = sqlx::query_as(
        "SELECT current_setting('synchronous_commit'), \
                current_setting('synchronous_standby_names')",
    )
    .fetch_one(pool)
    .await?;
    let mode = value.to_ascii_lowercase();
    let standby_names = standby_names.trim().to_owned();
    let refusal = match mode.as_str() {
        "off" => Some(StorageError::UnsafeCommitMode {
            value: value.clone(),
        }),
        "local" if !standby_names.is_empty() => Some(StorageError::UnreplicatedCommitMode {
            value: value.clone(),
            standby_names: standby_names.clone(),
        }),
        _ => None,
    };
    if let Some(refusal) = refusal {
        if allow_async_commit {
            tracing::warn!(
                synchronous_commit = %value,
                synchronous_standby_names = %standby_names,
                "database acknowledges commits that a crash or failover can lose; allowed by \
                 database.allow-async-commit"
            );
            return Ok(());
        }
        return Err(refusal);
    }
    if standby_names.is_empty() {
        // Visible to every role (the detail columns are not, but the count is enough).
        let async_standbys: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication")
            .fetch_one(pool)
            .await?;
        if async_standbys > 0 {
            tracing::warn!(
                async_standbys,
                "the database streams to standbys asynchronously (synchronous_standby_names \
                 is empty): a failover to one of them can lose acknowledged commits; \
                 configure synchronous replication for HA"
            );
        }
    }
    tracing::debug!(
        synchronous_commit = %value,
        synchronous_standby_names = %standby_names,
        "database commit mode is durable"
    );
    Ok(())
}
