//! Operator API of a sequencer instance (admin port: loopback or mTLS).

use crate::error::ServiceError as _;
use std::sync::Arc;
use std::time::Duration;

use domain_identity::{MemberId, PublicKey};
use domain_proto::sequencer::admin::v1 as pb;
use domain_proto::sequencer::admin::v1::sequencer_admin_service_server::SequencerAdminService;
use domain_time::Timestamp;
use tonic::{Request, Response, Status};

use crate::config::PruningConfig;
use crate::error::SequencerError;
use crate::pruning;
use crate::service::SequencerCore;
use crate::store;

#[derive(Clone)]
pub struct SequencerAdmin {
    pub core: Arc<SequencerCore>,
    pub pruning: PruningConfig,
}

/// How long an admin prune waits for a round already running elsewhere.
const PRUNING_LOCK_WAIT: Duration = Duration::from_secs(10);

impl SequencerAdmin {
    /// Takes the pruning lock, waiting for a running round to finish.
    async fn lock(&self) -> Result<pruning::LockedClient, Status> {
        let deadline = tokio::time::Instant::now() + PRUNING_LOCK_WAIT;
        loop {
            let client = self.core.db().await.map_err(st)?;
            if let Some(locked) = pruning::LockedClient::try_lock(client).await.map_err(st)? {
                return Ok(locked);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(st(SequencerError::PruningBusy));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn outcome_pb(o: &pruning::PruneOutcome) -> pb::PruneOutcome {
    pb::PruneOutcome {
        dry_run: o.dry_run,
        previous_bound_micros: o.previous_bound.as_micros(),
        bound_micros: o.bound.as_micros(),
        deleted: o
            .deleted
            .iter()
            .map(|(table, rows)| pb::TableRows {
                table: (*table).to_owned(),
                rows: *rows,
            })
            .collect(),
    }
}

fn st(e: impl Into<SequencerError>) -> Status {
    e.into().to_status()
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
                let key = PublicKey::try_from(&pk)
                    .map_err(|e| st(SequencerError::Malformed(format!("public key: {e}"))))?;
                if !member.matches_key(&key) {
                    return Err(st(SequencerError::KeyMismatch {
                        member,
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
            .register(member.clone(), key)
            .await
            .map_err(st)?;
        self.core.members.reload().await.map_err(st)?;
        tracing::info!(member = %member, registered_ts = ts.as_micros(), "member registered");
        Ok(Response::new(pb::RegisterMemberResponse {
            registered_at_micros: ts.as_micros(),
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
                registered_at_micros: m.registered_ts.as_micros(),
                acknowledged_micros: m.acknowledged_ts.map_or(0, Timestamp::as_micros),
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
                watermark_micros: i.watermark_ts.as_micros(),
                lag_micros: i.lag_micros,
                address: i.address.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn pruning_status(
        &self,
        _req: Request<pb::PruningStatusRequest>,
    ) -> Result<Response<pb::PruningStatusResponse>, Status> {
        let client = self.core.db().await.map_err(st)?;
        let view = pruning::view(&**client, self.pruning.retention)
            .await
            .map_err(st)?;
        let tables = pruning::table_rows(&**client).await.map_err(st)?;
        let members = view
            .members
            .iter()
            .map(|m| pb::MemberPruningInfo {
                member: m.member.clone(),
                kind: member_kind(m.kind) as i32,
                enabled: m.enabled,
                acknowledged_micros: m.acknowledged_ts.map_or(0, Timestamp::as_micros),
                bound_micros: if m.counted { m.bound.as_micros() } else { 0 },
                counted: m.counted,
                holding_back: view.holding_back.as_deref() == Some(m.member.as_str()),
            })
            .collect();
        Ok(Response::new(pb::PruningStatusResponse {
            lower_bound_micros: view.lower_bound.as_micros(),
            candidate_bound_micros: view.candidate.as_micros(),
            retention_micros: i64::try_from(view.retention.as_micros()).unwrap_or(i64::MAX),
            retention_bound_micros: view.retention_bound.as_micros(),
            safe_watermark_micros: view.safe_watermark.as_micros(),
            now_micros: view.now.as_micros(),
            members,
            tables: tables
                .into_iter()
                .map(|(table, rows)| pb::TableRows { table, rows })
                .collect(),
        }))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let dry_run = req.get_ref().dry_run;
        let (view, outcome) = if dry_run {
            // Reads only: no lock, changes nothing.
            let mut client = self.core.db().await.map_err(st)?;
            pruning::prune_round(
                &mut client,
                self.pruning.retention,
                self.pruning.batch_size,
                true,
            )
            .await
            .map_err(st)?
        } else {
            let mut locked = self.lock().await?;
            let result = pruning::prune_round(
                locked.client(),
                self.pruning.retention,
                self.pruning.batch_size,
                false,
            )
            .await;
            locked.release().await;
            result.map_err(st)?
        };
        pruning::record(&outcome);
        tracing::info!(
            dry_run,
            bound = outcome.bound.as_micros(),
            previous = outcome.previous_bound.as_micros(),
            holding_back = view.holding_back.as_deref().unwrap_or(""),
            deleted = ?outcome.deleted,
            "prune requested by an operator"
        );
        Ok(Response::new(pb::PruneResponse {
            pruned_below_micros: outcome.bound.as_micros(),
            events_deleted: outcome.deleted_from("seq_events"),
            outcome: Some(outcome_pb(&outcome)),
        }))
    }

    async fn force_prune(
        &self,
        req: Request<pb::ForcePruneRequest>,
    ) -> Result<Response<pb::ForcePruneResponse>, Status> {
        let r = req.into_inner();
        let mut locked = if r.dry_run {
            None
        } else {
            Some(self.lock().await?)
        };
        let result = async {
            let mut plain;
            let client = match locked.as_mut() {
                Some(l) => l.client(),
                None => {
                    plain = self.core.db().await?;
                    &mut plain
                }
            };
            let view = pruning::view(&***client, self.pruning.retention).await?;
            let below = check_force_bound(r.below_micros, &view)?;
            let limits = pruning::housekeeping(&view, self.pruning.batch_size);
            // Forced: members' acknowledgements and retention do not limit the bound.
            let outcome = pruning::prune_to(client, below, limits, r.dry_run, None).await?;
            Ok::<_, SequencerError>((view, outcome))
        }
        .await;
        if let Some(l) = locked {
            l.release().await;
        }
        let (view, outcome) = result.map_err(st)?;
        pruning::record(&outcome);
        tracing::warn!(
            dry_run = r.dry_run,
            bound = outcome.bound.as_micros(),
            previous = outcome.previous_bound.as_micros(),
            holding_back = view.holding_back.as_deref().unwrap_or(""),
            deleted = ?outcome.deleted,
            "forced prune requested by an operator"
        );
        Ok(Response::new(pb::ForcePruneResponse {
            outcome: Some(outcome_pb(&outcome)),
        }))
    }
}

/// A forced bound must name a time every instance has passed: not in the future and not
/// above the safe watermark (events there may still be written or delivered).
fn check_force_bound(
    below_micros: i64,
    view: &pruning::PruningView,
) -> Result<Timestamp, SequencerError> {
    if below_micros <= 0 {
        return Err(SequencerError::PruneBoundInvalid(format!(
            "bound {below_micros} is not a positive timestamp (microseconds since the epoch)"
        )));
    }
    let below = Timestamp::from_micros(below_micros);
    if below > view.now {
        return Err(SequencerError::PruneBoundInvalid(format!(
            "bound {below} lies in the future (sequencer time {})",
            view.now
        )));
    }
    if below > view.safe_watermark {
        return Err(SequencerError::PruneBoundInvalid(format!(
            "bound {below} lies above the safe watermark {}",
            view.safe_watermark
        )));
    }
    Ok(below)
}

/// The wire form of [`pruning::member_kind`]'s names.
fn member_kind(kind: &str) -> pb::MemberKind {
    match kind {
        "participant" => pb::MemberKind::Participant,
        "mediator" => pb::MemberKind::Mediator,
        "domain-manager" => pb::MemberKind::DomainManager,
        "sequencer" => pb::MemberKind::Sequencer,
        _ => pb::MemberKind::Unspecified,
    }
}
