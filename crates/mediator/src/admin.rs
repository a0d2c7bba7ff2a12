//! `MediatorAdminService`: the operator's view of one replica.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use domain_lease::LeaseHandle;
use domain_proto::mediator::admin::v1 as pb;
use domain_proto::mediator::admin::v1::mediator_admin_service_server::MediatorAdminService;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::error::MediatorError;

/// Bound on the database queries of a passive replica's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct MediatorAdmin {
    pub shared: Arc<Shared>,
    pub lease: LeaseHandle,
    pub pool: deadpool_postgres::Pool,
}

#[tonic::async_trait]
impl MediatorAdminService for MediatorAdmin {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let lease = self.lease.status();
        let (last_counter, pending) = if self.shared.session_running.load(Ordering::SeqCst) {
            (
                self.shared.last_counter.load(Ordering::SeqCst),
                self.shared.pending.load(Ordering::SeqCst),
            )
        } else {
            // Passive (or between sessions): what the active last committed.
            let query = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                crate::store::status(&client)
                    .await
                    .map_err(|e| e.to_string())
            };
            let (counter, pending) = tokio::time::timeout(STATUS_TIMEOUT, query)
                .await
                .map_err(|_| {
                    MediatorError::Database(format!("no answer within {STATUS_TIMEOUT:?}"))
                })?
                .map_err(MediatorError::Database)?;
            (counter, u64::try_from(pending).unwrap_or_default())
        };
        Ok(Response::new(pb::StatusResponse {
            mediator_id: self.shared.mediator_id.to_string(),
            active: lease.is_active(),
            lease_epoch: u64::try_from(lease.epoch).unwrap_or_default(),
            pending_requests: pending,
            last_processed_counter: last_counter,
        }))
    }
}
