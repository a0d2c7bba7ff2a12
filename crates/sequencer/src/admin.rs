//! Operator API of a sequencer instance (admin port: loopback or mTLS).

use std::sync::Arc;

use domain_identity::{MemberId, PublicKey};
use domain_proto::v1::{self as pb, sequencer_admin_service_server::SequencerAdminService};
use tonic::{Request, Response, Status};

use crate::error::SequencerError;
use crate::metrics as m;
use crate::service::SequencerCore;
use crate::store;

#[derive(Clone)]
pub struct SequencerAdmin {
    pub core: Arc<SequencerCore>,
    pub prune_batch: i64,
}

fn st(e: impl Into<SequencerError>) -> Status {
    e.into().into_status()
}

#[tonic::async_trait]
impl SequencerAdminService for SequencerAdmin {
    async fn register_member(
        &self,
        req: Request<pb::RegisterMemberRequest>,
    ) -> Result<Response<pb::RegisterMemberResponse>, Status> {
        let r = req.into_inner();
        let member = MemberId::parse(&r.member)
            .map_err(|e| st(SequencerError::Malformed(format!("member id: {e}"))))?;
        let key = match r.public_key {
            Some(pk) => {
                let key = PublicKey::from_bytes(&pk.key)
                    .map_err(|e| st(SequencerError::Malformed(format!("public key: {e}"))))?;
                if !member.matches_key(&key) {
                    return Err(st(SequencerError::KeyMismatch {
                        member: r.member,
                        key: key.fingerprint().to_string(),
                    }));
                }
                Some(key.to_bytes().to_vec())
            }
            None => None,
        };
        let ts = self
            .core
            .writer
            .register(member.to_string(), key)
            .await
            .map_err(st)?;
        self.core.members.reload().await.map_err(st)?;
        tracing::info!(member = %member, registered_ts = ts, "member registered");
        Ok(Response::new(pb::RegisterMemberResponse {
            registered_at_micros: ts,
        }))
    }

    async fn disable_member(
        &self,
        req: Request<pb::DisableMemberRequest>,
    ) -> Result<Response<pb::DisableMemberResponse>, Status> {
        let r = req.into_inner();
        let mut client = self.core.db().await.map_err(st)?;
        if !store::disable_member(&mut client, &r.member)
            .await
            .map_err(st)?
        {
            return Err(st(SequencerError::MemberUnknown(r.member)));
        }
        self.core.forget_tokens(&r.member).await;
        self.core.members.reload().await.map_err(st)?;
        tracing::info!(member = %r.member, "member disabled");
        Ok(Response::new(pb::DisableMemberResponse {}))
    }

    async fn list_members(
        &self,
        _req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let client = self.core.db().await.map_err(st)?;
        let mut members: Vec<pb::MemberInfo> = store::load_members(&**client)
            .await
            .map_err(st)?
            .into_iter()
            .map(|m| pb::MemberInfo {
                member: m.member,
                enabled: m.enabled,
                registered_at_micros: m.registered_ts,
                acknowledged_micros: m.acknowledged_ts.unwrap_or(0),
            })
            .collect();
        members.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(Response::new(pb::ListMembersResponse { members }))
    }

    async fn list_instances(
        &self,
        _req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let client = self.core.db().await.map_err(st)?;
        let instances = store::list_instances(&**client)
            .await
            .map_err(st)?
            .into_iter()
            .map(|i| pb::InstanceInfo {
                index: i32::from(i.index),
                online: i.online,
                watermark_micros: i.watermark_ts,
                lag_micros: i.lag_micros,
                address: i.address.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn prune(
        &self,
        _req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let mut client = self.core.db().await.map_err(st)?;
        let safe = store::safe_watermark(&**client).await.map_err(st)?;
        let (bound, deleted) = store::prune(&mut client, safe, self.prune_batch)
            .await
            .map_err(st)?;
        metrics::counter!(m::EVENTS_PRUNED).increment(deleted);
        Ok(Response::new(pb::PruneResponse {
            pruned_below_micros: bound,
            events_deleted: deleted,
        }))
    }
}
