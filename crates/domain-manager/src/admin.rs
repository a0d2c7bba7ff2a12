//! `domain.manager.admin.v1.DomainAdminService`: writes go through the active replica's
//! [`Core`]; reads are answered by any replica from the database.

use crate::error::ServiceError as _;
use std::sync::Arc;
use std::time::Duration;

use domain_proto::common::v1 as common_pb;
use domain_proto::manager::admin::v1 as pb;
use domain_proto::manager::admin::v1::domain_admin_service_server::DomainAdminService;
use domain_proto::topology::v1 as topology_pb;
use domain_topology::{DomainParameters, Mapping, Operation};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::config::{ComponentKind, ConnectionConfig};
use crate::error::DomainManagerError;
use crate::manager::{
    Core, Retirement, WriteOutcome, parse_participant_id, parse_permission, parse_trust_level,
};
use crate::metrics as m;
use crate::status::{PROBE_TIMEOUT, probe_ready};
use crate::store::TopologyRecord;
use domain_identity::PublicKey;

/// Deadline of `ListSequencers`.
const LIST_SEQUENCERS_TIMEOUT: Duration = Duration::from_secs(5);

/// A component probed by `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub name: String,
    pub kind: ComponentKind,
    pub ops_url: String,
}

#[derive(Clone)]
pub struct DomainAdmin {
    pub core: Arc<Core>,
    /// This replica's advertised admin address (for `Status`).
    pub advertised_address: String,
    /// Components `Status` probes.
    pub probes: Arc<Vec<ProbeTarget>>,
    /// What connection bundles say (`[connection]`), if configured.
    pub connection: Option<Arc<ConnectionConfig>>,
}

/// The key of a `SetParticipantState` request, checked against the participant id.
fn request_key(
    key: Option<&common_pb::PublicKey>,
    participant: &domain_identity::MemberId,
) -> Result<Option<PublicKey>, DomainManagerError> {
    let Some(key) = key else { return Ok(None) };
    let key = domain_proto::identity::ed25519_key(key)
        .map_err(|e| DomainManagerError::InvalidArgument(format!("public key: {e}")))?;
    if !participant.matches_key(&key) {
        return Err(DomainManagerError::InvalidArgument(format!(
            "public key {} does not match the fingerprint of {participant}",
            key.fingerprint()
        )));
    }
    Ok(Some(key))
}

/// Parses the `grpc-timeout` request header (`<digits><H|M|S|m|u|n>`).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Records the call's outcome and maps the error to its status.
fn finish<T>(method: &'static str, result: Result<T, DomainManagerError>) -> Result<T, Status> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    metrics::counter!(m::ADMIN_REQUESTS, "method" => method, "outcome" => outcome).increment(1);
    result.map_err(|e| {
        match &e {
            DomainManagerError::Internal(_) => {
                tracing::error!(method, error = %e, "admin call failed")
            }
            DomainManagerError::InvalidArgument(_) | DomainManagerError::UnknownParticipant(_) => {
                tracing::debug!(method, error = %e, "admin call refused");
            }
            DomainManagerError::NotActive { .. } => {
                tracing::info!(method, error = %e, "admin write refused: not active");
            }
            _ => tracing::warn!(method, error = %e, "admin call failed"),
        }
        e.to_status()
    })
}

fn state_change(o: WriteOutcome) -> Option<pb::ParticipantStateChange> {
    Some(pb::ParticipantStateChange {
        serial: o.serial,
        effective_at_micros: o.effective_ts,
        changed: o.changed,
    })
}

/// The participant info of a latest row; `None` for removals.
fn participant_info(r: &TopologyRecord) -> Option<pb::ParticipantInfo> {
    let effective = r.sequenced()?.effective_ts;
    match (&r.tx.operation, &r.tx.mapping) {
        (
            Operation::Replace,
            Mapping::Participant {
                participant,
                permission,
                trust_level,
                ..
            },
        ) => Some(pb::ParticipantInfo {
            participant_id: participant.to_string(),
            permission: permission.to_proto() as i32,
            trust_level: trust_level.to_proto() as i32,
            effective_at_micros: effective,
            serial: r.tx.serial,
        }),
        _ => None,
    }
}

impl DomainAdmin {
    async fn export_connection_inner(
        &self,
        alias: &str,
    ) -> Result<pb::ExportConnectionResponse, DomainManagerError> {
        let Some(config) = &self.connection else {
            return Err(DomainManagerError::ConnectionNotConfigured(
                "the domain manager has no [connection] section (public-endpoints, ca-file)".into(),
            ));
        };
        // Only the active replica signs: it is the one whose namespace key and view of the
        // topology are in use, and a bundle is a statement of the domain.
        if !self.core.is_ready() {
            return Err(self.core.not_active());
        }
        let alias = if !alias.is_empty() {
            domain_identity::UniqueId::validate_name(alias)
                .map_err(|e| DomainManagerError::InvalidArgument(format!("alias: {e}")))?;
            alias.to_owned()
        } else {
            config
                .alias
                .clone()
                .unwrap_or_else(|| self.core.domain_id.name().to_owned())
        };
        let sequencer = self
            .core
            .latest("sequencer")
            .await?
            .into_iter()
            .find_map(|r| match (r.tx.operation, r.tx.mapping) {
                (
                    Operation::Replace,
                    Mapping::Sequencer {
                        sequencer,
                        public_key: Some(key),
                    },
                ) => Some((sequencer, key)),
                _ => None,
            })
            .ok_or_else(|| {
                DomainManagerError::ConnectionNotConfigured(
                    "no sequencer with a key is registered yet".into(),
                )
            })?;
        // Read at each export, so a rotated CA file is picked up without a restart.
        let ca_pem = match &config.ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                DomainManagerError::ConnectionNotConfigured(format!(
                    "connection.ca-file {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let bundle_json = domain_identity::onboarding::export_bundle(
            &self.core.domain_id,
            self.core.namespace_key(),
            domain_identity::onboarding::BundleContents {
                alias,
                endpoints: config.public_endpoints.clone(),
                sequencer_id: sequencer.0,
                sequencer_key: sequencer.1,
                ca_pem,
                system_roots: config.system_roots,
                protocol_version: domain_proto::PROTOCOL_VERSION.to_owned(),
            },
        )
        .map_err(|e| DomainManagerError::Internal(e.to_string()))?;
        Ok(pb::ExportConnectionResponse { bundle_json })
    }

    async fn get_participant_inner(
        &self,
        participant_id: &str,
    ) -> Result<pb::ParticipantInfo, DomainManagerError> {
        let id = parse_participant_id(participant_id)?;
        let latest = self.core.latest_for(&format!("participant/{id}")).await?;
        latest
            .as_ref()
            .and_then(participant_info)
            .ok_or_else(|| DomainManagerError::UnknownParticipant(id.to_string()))
    }

    /// DisableParticipant and RemoveParticipant: retires the participant and logs it.
    async fn retire_inner(
        &self,
        participant_id: &str,
        retirement: Retirement,
        deadline: Instant,
    ) -> Result<Option<pb::ParticipantStateChange>, DomainManagerError> {
        let id = parse_participant_id(participant_id)?;
        let outcome = self
            .core
            .retire_participant(&id, retirement, deadline)
            .await?;
        tracing::info!(
            participant = %id,
            serial = outcome.serial,
            effective_ts = outcome.effective_ts,
            changed = outcome.changed,
            "{}",
            retirement.done()
        );
        Ok(state_change(outcome))
    }

    async fn list_participants_inner(
        &self,
    ) -> Result<pb::ListParticipantsResponse, DomainManagerError> {
        let latest = self.core.latest("participant_state").await?;
        let mut participants: Vec<_> = latest.iter().filter_map(participant_info).collect();
        participants.sort_by(|a, b| a.participant_id.cmp(&b.participant_id));
        Ok(pb::ListParticipantsResponse { participants })
    }

    async fn list_mediators_inner(&self) -> Result<pb::ListMediatorsResponse, DomainManagerError> {
        let latest = self.core.latest("mediator").await?;
        let mut mediators: Vec<_> = latest
            .iter()
            .filter_map(|r| match (&r.tx.operation, &r.tx.mapping) {
                (
                    Operation::Replace,
                    Mapping::Mediator {
                        mediator,
                        public_key,
                    },
                ) => Some(pb::MediatorInfo {
                    mediator_id: mediator.to_string(),
                    public_key: public_key.as_ref().map(common_pb::PublicKey::from),
                }),
                _ => None,
            })
            .collect();
        mediators.sort_by(|a, b| a.mediator_id.cmp(&b.mediator_id));
        Ok(pb::ListMediatorsResponse { mediators })
    }

    async fn list_sequencers_inner(
        &self,
    ) -> Result<pb::ListSequencersResponse, DomainManagerError> {
        let registered: Vec<String> = self
            .core
            .latest("sequencer")
            .await?
            .iter()
            .filter_map(|r| match (&r.tx.operation, &r.tx.mapping) {
                (Operation::Replace, Mapping::Sequencer { sequencer, .. }) => {
                    Some(sequencer.to_string())
                }
                _ => None,
            })
            .collect();
        let list = self
            .core
            .gateway()
            .list_instances(Instant::now() + LIST_SEQUENCERS_TIMEOUT)
            .await?;
        // Instances of one sequencer share its id: the registered one when there is a
        // single registration, else the one the answering endpoint reports.
        let sequencer_id = match registered.as_slice() {
            [only] => only.clone(),
            _ => list.sequencer_id.unwrap_or_default(),
        };
        Ok(pb::ListSequencersResponse {
            instances: list
                .instances
                .into_iter()
                .map(|i| pb::SequencerInstanceInfo {
                    sequencer_id: sequencer_id.clone(),
                    index: i.index,
                    online: i.online,
                    watermark_micros: i.watermark_micros,
                    lag_micros: i.lag_micros,
                })
                .collect(),
        })
    }

    async fn get_parameters_inner(
        &self,
    ) -> Result<topology_pb::DomainParameters, DomainManagerError> {
        let latest = self.core.latest_for("parameters").await?;
        let params = match latest.map(|r| r.tx.mapping) {
            Some(Mapping::Parameters(p)) => p,
            _ => DomainParameters::default(),
        };
        Ok(params.to_proto())
    }

    async fn status_inner(&self) -> Result<pb::StatusResponse, DomainManagerError> {
        let lease = self.core.lease().status();
        let own_state = if self.core.lease().is_active() {
            pb::ComponentState::Active
        } else {
            pb::ComponentState::Passive
        };
        let own_detail = match (&lease.holder, &lease.holder_address, own_state) {
            (_, _, pb::ComponentState::Active) => {
                format!("this replica, lease epoch {}", lease.epoch)
            }
            (Some(h), Some(a), _) => format!("this replica; active replica is {h} at {a}"),
            (Some(h), None, _) => format!("this replica; active replica is {h}"),
            _ => "this replica; no active replica known".to_owned(),
        };
        let mut components = vec![pb::ComponentStatus {
            component: "domain-manager".into(),
            endpoint: self.advertised_address.clone(),
            state: own_state as i32,
            detail: own_detail,
        }];
        let probes = self.probes.iter().map(|t| async move {
            let probe = probe_ready(&t.ops_url, PROBE_TIMEOUT).await;
            pb::ComponentStatus {
                component: t.name.clone(),
                endpoint: t.ops_url.clone(),
                state: probe.state(t.kind) as i32,
                detail: format!("{}: {}", t.kind.as_str(), probe.detail()),
            }
        });
        components.extend(futures::future::join_all(probes).await);
        Ok(pb::StatusResponse {
            domain_id: self.core.domain_id.to_string(),
            components,
            lease_epoch: u64::try_from(lease.epoch).unwrap_or(0),
        })
    }
}

#[tonic::async_trait]
impl DomainAdminService for DomainAdmin {
    async fn export_connection(
        &self,
        req: Request<pb::ExportConnectionRequest>,
    ) -> Result<Response<pb::ExportConnectionResponse>, Status> {
        let result = self.export_connection_inner(&req.get_ref().alias).await;
        if result.is_ok() {
            tracing::info!("connection bundle exported");
        }
        finish("ExportConnection", result).map(Response::new)
    }

    async fn set_participant_state(
        &self,
        req: Request<pb::SetParticipantStateRequest>,
    ) -> Result<Response<pb::SetParticipantStateResponse>, Status> {
        let deadline = self.core.request_deadline(grpc_timeout(req.metadata()));
        let r = req.into_inner();
        let result = async {
            let id = parse_participant_id(&r.participant_id)?;
            let permission = parse_permission(r.permission)?;
            let trust_level = parse_trust_level(r.trust_level)?;
            let public_key = request_key(r.public_key.as_ref(), &id)?;
            let key_bound = public_key.is_some();
            let outcome = self
                .core
                .set_participant_state(&id, permission, trust_level, public_key, deadline)
                .await?;
            tracing::info!(
                participant = %id,
                %permission,
                %trust_level,
                serial = outcome.serial,
                effective_ts = outcome.effective_ts,
                changed = outcome.changed,
                key_bound,
                "participant state set"
            );
            Ok(pb::SetParticipantStateResponse {
                change: state_change(outcome),
            })
        }
        .await;
        finish("SetParticipantState", result).map(Response::new)
    }

    async fn get_participant(
        &self,
        req: Request<pb::GetParticipantRequest>,
    ) -> Result<Response<pb::GetParticipantResponse>, Status> {
        let result = self
            .get_participant_inner(&req.get_ref().participant_id)
            .await
            .map(|info| pb::GetParticipantResponse {
                participant: Some(info),
            });
        finish("GetParticipant", result).map(Response::new)
    }

    async fn list_participants(
        &self,
        _req: Request<pb::ListParticipantsRequest>,
    ) -> Result<Response<pb::ListParticipantsResponse>, Status> {
        let result = self.list_participants_inner().await;
        finish("ListParticipants", result).map(Response::new)
    }

    async fn disable_participant(
        &self,
        req: Request<pb::DisableParticipantRequest>,
    ) -> Result<Response<pb::DisableParticipantResponse>, Status> {
        let deadline = self.core.request_deadline(grpc_timeout(req.metadata()));
        let result = self
            .retire_inner(&req.get_ref().participant_id, Retirement::Disable, deadline)
            .await
            .map(|change| pb::DisableParticipantResponse { change });
        finish("DisableParticipant", result).map(Response::new)
    }

    async fn remove_participant(
        &self,
        req: Request<pb::RemoveParticipantRequest>,
    ) -> Result<Response<pb::RemoveParticipantResponse>, Status> {
        let deadline = self.core.request_deadline(grpc_timeout(req.metadata()));
        let result = self
            .retire_inner(&req.get_ref().participant_id, Retirement::Remove, deadline)
            .await
            .map(|change| pb::RemoveParticipantResponse { change });
        finish("RemoveParticipant", result).map(Response::new)
    }

    async fn list_mediators(
        &self,
        _req: Request<pb::ListMediatorsRequest>,
    ) -> Result<Response<pb::ListMediatorsResponse>, Status> {
        let result = self.list_mediators_inner().await;
        finish("ListMediators", result).map(Response::new)
    }

    async fn list_sequencers(
        &self,
        _req: Request<pb::ListSequencersRequest>,
    ) -> Result<Response<pb::ListSequencersResponse>, Status> {
        let result = self.list_sequencers_inner().await;
        finish("ListSequencers", result).map(Response::new)
    }

    async fn get_parameters(
        &self,
        _req: Request<pb::GetParametersRequest>,
    ) -> Result<Response<pb::GetParametersResponse>, Status> {
        let result =
            self.get_parameters_inner()
                .await
                .map(|parameters| pb::GetParametersResponse {
                    parameters: Some(parameters),
                });
        finish("GetParameters", result).map(Response::new)
    }

    async fn set_parameters(
        &self,
        req: Request<pb::SetParametersRequest>,
    ) -> Result<Response<pb::SetParametersResponse>, Status> {
        let deadline = self.core.request_deadline(grpc_timeout(req.metadata()));
        let r = req.into_inner();
        let result = async {
            let proto = r.parameters.ok_or_else(|| {
                DomainManagerError::InvalidArgument("parameters must be set".into())
            })?;
            let params = DomainParameters::from_proto(&proto)
                .map_err(|e| DomainManagerError::InvalidArgument(e.to_string()))?;
            let outcome = self.core.set_parameters(params, deadline).await?;
            tracing::info!(
                parameters = ?params,
                serial = outcome.serial,
                effective_ts = outcome.effective_ts,
                changed = outcome.changed,
                "domain parameters set"
            );
            Ok(pb::SetParametersResponse {
                serial: outcome.serial,
                effective_at_micros: outcome.effective_ts,
            })
        }
        .await;
        finish("SetParameters", result).map(Response::new)
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let result = self.status_inner().await;
        finish("Status", result).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&md), None);
        for (raw, expected) in [
            ("5S", Duration::from_secs(5)),
            ("4999m", Duration::from_millis(4999)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("250000u", Duration::from_millis(250)),
            ("1000n", Duration::from_micros(1)),
        ] {
            md.insert("grpc-timeout", raw.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&md), Some(expected), "{raw}");
        }
        for bad in ["5", "S", "5s", "-5S", "1234567890S"] {
            md.insert("grpc-timeout", bad.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&md), None, "{bad}");
        }
    }
}
