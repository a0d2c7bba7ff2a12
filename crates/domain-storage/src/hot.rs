//! The deadpool-postgres pool for the hot path.

use crate::{DatabaseConfig, StorageError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

/// Builds the hot-path connection pool.
///
/// Connections are opened lazily on first `get()`. Each one uses
/// [`DatabaseConfig::tokio_postgres_config`] (keepalives, `tcp_user_timeout`,
/// `statement_timeout`, ...). All three pool timeouts are set, because deadpool's default is
/// to wait forever: `get()` fails with [`StorageError::PoolTimeout`] (via `?` or
/// `StorageError::from`) when the pool is exhausted for `pool-wait-timeout`, a new
/// connection takes longer than `pool-create-timeout`, or verifying a returned connection
/// takes longer than `pool-recycle-timeout`. Returned connections are verified with a
/// trivial query before reuse, so hard-closed connections are dropped rather than handed out.
pub fn hot_pool(cfg: &DatabaseConfig) -> Result<Pool, StorageError> {
    if cfg.pool_max_size == 0 {
        return Err(StorageError::InvalidConfig {
            reason: "database.pool-max-size must be at least 1".to_owned(),
        });
    }
    let pg = cfg.tokio_postgres_config()?;
    // Built now, so an unreadable sslrootcert fails the start rather than the first query.
    let tls = cfg.tls_connector()?;
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(cfg.pool_max_size)
        .wait_timeout(Some(cfg.pool_wait_timeout))
        .create_timeout(Some(cfg.pool_create_timeout))
        .recycle_timeout(Some(cfg.pool_recycle_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StorageError::PoolBuild {
            reason: e.to_string(),
        })?;
    tracing::debug!(url = %cfg.url, max_size = cfg.pool_max_size, "built hot pool");
    Ok(pool)
}
