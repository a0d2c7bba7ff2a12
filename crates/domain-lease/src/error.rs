//! The lease error type.

use std::time::Duration;

/// Errors of lease configuration, fencing and lease database operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// A [`LeaseConfig`](crate::LeaseConfig) setting is invalid; `key` is the kebab-case
    /// key at fault (the reason names any other key involved).
    #[error("invalid lease configuration: `{key}` {reason}")]
    InvalidConfig {
        /// The kebab-case key, e.g. `renew-interval`.
        key: &'static str,
        /// What is wrong, naming the other keys involved.
        reason: String,
    },

    /// The fence is stale: lease `name` is no longer held at `epoch` by this holder
    /// (expired, released, or taken over). The transaction must be rolled back, and the
    /// caller must stop acting as active.
    #[error("lease {name} is no longer held at epoch {epoch}: write fenced off")]
    Fenced {
        /// The lease name.
        name: String,
        /// The stale epoch.
        epoch: i64,
    },

    /// A lease database operation did not finish within `op-timeout`.
    #[error("timed out after {after:?} while {action}")]
    Timeout {
        /// What was being done, e.g. "renewing the lease".
        action: &'static str,
        /// The limit.
        after: Duration,
    },

    /// The connection pool could not hand out a connection.
    #[error("database pool error: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),

    /// An error from tokio-postgres.
    #[error("postgres error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl LeaseError {
    /// Returns true for [`LeaseError::Fenced`].
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }
}
