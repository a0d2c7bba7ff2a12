//! `ParticipantAdminService`: Id, ConnectMulti, Ping, Status.

use std::sync::Arc;
use std::time::Duration;

use domain_confirmation::Outcome;
use domain_proto::participant::admin::v1 as pb;
use domain_proto::participant::admin::v1::participant_admin_service_server::ParticipantAdminService;
use tonic::{Request, Response, Status};

use crate::error::ParticipantError;
use crate::identity::parse_participant_id;
use crate::node::Node;
use crate::store;

/// Longest ping a caller may ask for.
const MAX_PING_TIMEOUT: Duration = Duration::from_secs(300);

pub struct ParticipantAdmin {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl ParticipantAdminService for ParticipantAdmin {
    async fn id(
        &self,
        _request: Request<pb::IdRequest>,
    ) -> Result<Response<pb::IdResponse>, Status> {
        Ok(Response::new(pb::IdResponse {
            participant_id: self.node.identity.uid.to_string(),
        }))
    }

    async fn connect_multi(
        &self,
        request: Request<pb::ConnectMultiRequest>,
    ) -> Result<Response<pb::ConnectMultiResponse>, Status> {
        let req = request.into_inner();
        let ca = (!req.ca_pem.trim().is_empty()).then_some(req.ca_pem.as_bytes());
        let connection = self
            .node
            .connect_multi(&req.alias, &req.endpoints, ca)
            .await?;
        Ok(Response::new(pb::ConnectMultiResponse {
            domain_id: connection.domain_id,
        }))
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let req = request.into_inner();
        let target = parse_participant_id(&req.target_participant_id)
            .map_err(ParticipantError::InvalidArgument)?;
        let timeout = match req.timeout_micros {
            t if t < 0 => {
                return Err(ParticipantError::InvalidArgument(
                    "timeout_micros must not be negative".into(),
                )
                .into());
            }
            0 => self.node.config.ping_timeout,
            t => Duration::from_micros(u64::try_from(t).unwrap_or(u64::MAX)).min(MAX_PING_TIMEOUT),
        };
        let result = self.node.ping(target, timeout).await?;
        let verdict = match result.outcome {
            Outcome::Approved => pb::PingVerdict::Approved,
            Outcome::Rejected { .. } => pb::PingVerdict::Rejected,
            Outcome::TimedOut { .. } => pb::PingVerdict::TimedOut,
        };
        Ok(Response::new(pb::PingResponse {
            round_trip_micros: i64::try_from(result.round_trip.as_micros()).unwrap_or(i64::MAX),
            verdict: verdict as i32,
            description: result.outcome.describe(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let committed = store::committed_count(&self.node.pool)
            .await
            .map_err(|e| ParticipantError::Database(e.to_string()))?;
        let (alias, endpoints, last_counter) = match self.node.live() {
            Some(live) => (
                live.alias.clone(),
                live.client
                    .endpoint_health()
                    .into_iter()
                    .map(|(endpoint, healthy)| pb::EndpointStatus { endpoint, healthy })
                    .collect(),
                live.last_counter,
            ),
            None => {
                let last = store::last_counter(&self.node.pool)
                    .await
                    .map_err(|e| ParticipantError::Database(e.to_string()))?;
                match self.node.connection() {
                    Some(c) => (
                        c.alias,
                        c.endpoints
                            .into_iter()
                            .map(|endpoint| pb::EndpointStatus {
                                endpoint,
                                healthy: false,
                            })
                            .collect(),
                        last,
                    ),
                    None => (String::new(), Vec::new(), last),
                }
            }
        };
        Ok(Response::new(pb::StatusResponse {
            participant_id: self.node.identity.uid.to_string(),
            alias,
            endpoints,
            last_counter,
            committed_transactions: u64::try_from(committed).unwrap_or_default(),
        }))
    }
}
