//! The storage error type.

use std::path::PathBuf;
use std::time::Duration;

/// Errors from opening, using or migrating a component database.
///
/// Messages never contain the database password: URLs are printed through
/// [`DatabaseUrl`](crate::DatabaseUrl), and driver errors do not echo credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The `[database]` section is unusable (e.g. the URL does not parse).
    #[error("invalid database configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, with the redacted URL where relevant.
        reason: String,
    },

    /// `database.password-file` could not be read.
    #[error("failed to read database password file {}: {source}", path.display())]
    PasswordFile {
        /// The configured path.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// `database.password-env` names a variable that is not set (or not UTF-8).
    #[error("database password environment variable {var} is not set")]
    PasswordEnv {
        /// The variable name.
        var: String,
    },

    /// Opening a connection did not finish in time.
    #[error("timed out after {after:?} while {action}")]
    Timeout {
        /// What was being done, e.g. "connecting to the database".
        action: &'static str,
        /// The configured limit.
        after: Duration,
    },

    /// The server only accepts reads (a standby, e.g. after a failover) while
    /// `target-session-attrs` is `read-write`.
    #[error(
        "database server {host} is read-only (a standby?) but database.target-session-attrs \
         is read-write"
    )]
    ReadOnlyServer {
        /// `host:port` of the server.
        host: String,
    },

    /// The hot pool could not hand out a connection in time.
    #[error("database pool timed out while {}", .0.describe())]
    PoolTimeout(PoolTimeoutKind),

    /// The hot pool has been closed.
    #[error("database pool is closed")]
    PoolClosed,

    /// The hot pool could not be built.
    #[error("failed to build database pool: {reason}")]
    PoolBuild {
        /// Why building failed.
        reason: String,
    },

    /// An error from tokio-postgres (hot pool, dedicated and LISTEN connections). The
    /// message includes the server's own (tokio-postgres displays a server error as just
    /// "db error", which hid e.g. why a login was refused).
    #[error("postgres error: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),

    /// An error from sqlx (migration and admin pool).
    #[error("postgres error: {0}")]
    Sqlx(#[from] sqlx::Error),

    /// Applying migrations failed.
    #[error("failed to apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// TLS to the server failed: the handshake (unknown CA, wrong host name, bad client
    /// certificate) or, with a mode that requires TLS, a server that does not offer it.
    /// There is no plaintext fallback.
    #[error("TLS connection to the database failed ({settings}): {reason}")]
    Tls {
        /// The `database.ssl*` settings in force, e.g. `database.sslmode = verify-full`.
        settings: String,
        /// What went wrong.
        reason: String,
    },

    /// The server runs with `synchronous_commit = off`, which can lose acknowledged
    /// commits on a crash, and the config does not allow it.
    #[error(
        "refusing to start: the database has synchronous_commit = {value}, which can lose \
         acknowledged commits on a crash; fix the server setting or set \
         database.allow-async-commit = true to accept the risk"
    )]
    UnsafeCommitMode {
        /// The server's `synchronous_commit` value.
        value: String,
    },

    /// The server replicates synchronously (`synchronous_standby_names` is set), but this
    /// session's `synchronous_commit = local` acknowledges commits before a standby has
    /// them, so a failover can lose them, and the config does not allow it.
    #[error(
        "refusing to start: the database has synchronous_commit = {value} while \
         synchronous_standby_names = '{standby_names}', so commits are acknowledged before \
         a standby has them and a failover can lose acknowledged commits; set \
         synchronous_commit to on, remote_apply or remote_write for this role or database, \
         or set database.allow-async-commit = true to accept the risk"
    )]
    UnreplicatedCommitMode {
        /// The session's `synchronous_commit` value.
        value: String,
        /// The server's `synchronous_standby_names`.
        standby_names: String,
    },
}

/// Which phase of getting a pooled connection timed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolTimeoutKind {
    /// Waiting for a free slot: every connection was in use (`pool-wait-timeout`).
    Wait,
    /// Opening a new connection (`pool-create-timeout`).
    Create,
    /// Verifying a returned connection before reuse (`pool-recycle-timeout`).
    Recycle,
}

impl PoolTimeoutKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Wait => "waiting for a free connection (pool-wait-timeout)",
            Self::Create => "opening a new connection (pool-create-timeout)",
            Self::Recycle => "verifying a pooled connection (pool-recycle-timeout)",
        }
    }
}

impl StorageError {
    /// Returns true for timeouts: connect, pool, and statements cancelled by
    /// `statement_timeout` (SQLSTATE 57014).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::PoolTimeout(_) => true,
            Self::Postgres(e) => e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            Self::Sqlx(sqlx::Error::Database(e)) => e.code().as_deref() == Some("57014"),
            Self::Sqlx(sqlx::Error::PoolTimedOut) => true,
            _ => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        match err {
            PoolError::Timeout(TimeoutType::Wait) => Self::PoolTimeout(PoolTimeoutKind::Wait),
            PoolError::Timeout(TimeoutType::Create) => Self::PoolTimeout(PoolTimeoutKind::Create),
            PoolError::Timeout(TimeoutType::Recycle) => Self::PoolTimeout(PoolTimeoutKind::Recycle),
            PoolError::Backend(e) => Self::Postgres(e),
            PoolError::Closed => Self::PoolClosed,
            PoolError::NoRuntimeSpecified => Self::PoolBuild {
                reason: "no async runtime configured".to_owned(),
            },
            PoolError::PostCreateHook(e) => Self::PoolBuild {
                reason: format!("post-create hook failed: {e}"),
            },
        }
    }
}

/// `error` with the server's message, SQLSTATE and detail when it carries a server error.
fn postgres_detail(error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        return error.to_string();
    };
    let mut out = format!(
        "{}: {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    if let Some(detail) = db.detail() {
        out.push_str(": ");
        out.push_str(detail);
    }
    out
}

/// Turns a tokio-postgres connect error caused by TLS into [`StorageError::Tls`], so the
/// message names the settings in force; other errors pass through.
pub(crate) fn name_tls_settings(
    error: tokio_postgres::Error,
    settings: &crate::tls::TlsSettings,
) -> StorageError {
    // tokio-postgres does not expose its error kinds; its TLS failures (including "server
    // does not support TLS" under sslmode=require) all display as this text, with the
    // detail in `source()`.
    if !error
        .to_string()
        .starts_with("error performing TLS handshake")
    {
        return StorageError::Postgres(error);
    }
    let reason = std::error::Error::source(&error)
        .map(|cause| cause.to_string())
        .unwrap_or_else(|| error.to_string());
    StorageError::Tls {
        settings: settings.describe(),
        reason,
    }
}

/// Turns an sqlx connect error caused by TLS into [`StorageError::Tls`]; other errors pass
/// through.
pub(crate) fn name_tls_settings_sqlx(
    error: sqlx::Error,
    settings: &crate::tls::TlsSettings,
) -> StorageError {
    let reason = match &error {
        sqlx::Error::Tls(inner) => Some(inner.to_string()),
        // sqlx reports a failed handshake as the I/O error rustls turned it into.
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|tls| format!("TLS handshake failed: {tls}")),
        _ => None,
    };
    match reason {
        Some(reason) => StorageError::Tls {
            settings: settings.describe(),
            reason,
        },
        None => StorageError::Sqlx(error),
    }
}
