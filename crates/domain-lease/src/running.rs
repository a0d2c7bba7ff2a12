//! The one way an active-passive service starts and stops its lease keeper.

use std::time::Duration;

use domain_storage::DatabaseConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{LeaseConfig, LeaseError, LeaseHandle, LeaseKeeper};

/// Why the keeper could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build the lease database pool: {0}")]
    Pool(#[source] domain_storage::StorageError),
    #[error("invalid `lease`: {0}")]
    Config(#[source] LeaseError),
}

/// A lease keeper running in its own task, on its own two-connection pool so renewals never
/// wait behind the service's own database work.
#[derive(Debug)]
pub struct RunningLease {
    handle: LeaseHandle,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningLease {
    /// Builds the pool (`application_name` tells the lease connections apart in
    /// `pg_stat_activity`), advertises `holder_address` to the standbys, and spawns the keeper.
    pub fn start(
        database: &DatabaseConfig,
        application_name: &str,
        lease: &LeaseConfig,
        holder_address: &str,
    ) -> Result<Self, StartError> {
        let lease_db = DatabaseConfig {
            pool_max_size: 2,
            application_name: Some(application_name.to_owned()),
            ..database.clone()
        };
        let pool = domain_storage::hot_pool(&lease_db).map_err(StartError::Pool)?;
        let config = LeaseConfig {
            holder_address: holder_address.to_owned(),
            ..lease.clone()
        };
        let keeper = LeaseKeeper::new(pool, config).map_err(StartError::Config)?;
        tracing::info!(holder = keeper.holder(), lease = %keeper.config().name, "lease keeper configured");
        let handle = keeper.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(keeper.run(stop.clone()));
        Ok(Self { handle, stop, task })
    }

    /// A cloneable handle on the lease state, for request handlers and the work loops.
    pub fn handle(&self) -> LeaseHandle {
        self.handle.clone()
    }

    /// Stops the keeper, which releases an active lease so a standby takes over at once.
    /// Call it only after the service's work stopped, so the successor starts from its last
    /// commit. Waits at most 2 s for the release.
    pub async fn release(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}
