//! Subcommand execution: local validation into an [`Action`], then the RPC(s) and rendering.

use domain_proto::common::v1 as common_pb;
use domain_proto::manager::admin::v1 as pb;
use domain_proto::sequencer::admin::v1 as sequencer_admin_pb;
use domain_proto::topology::v1 as topology_pb;

use crate::cli::{
    Command, DomainCommand, MediatorsCommand, OutputFormat, ParametersCommand, ParticipantsCommand,
    PruningCommand, SequencersCommand, SetParametersArgs, duration_to_micros, parse_participant_id,
};
use crate::client::Replicas;
use crate::error::CliError;
use crate::output::{
    MediatorListView, MediatorView, ParametersChangeView, ParametersView, ParticipantListView,
    ParticipantView, PruneOutcomeView, PruningStatusView, SequencerListView, SequencerView,
    StateChangeView, StatusView, render, rfc3339_micros,
};

/// A validated command, ready to send. Building one checks all local input, so a command
/// that fails validation never opens a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `participants set-state`.
    SetParticipantState(pb::SetParticipantStateRequest),
    /// `participants list`.
    ListParticipants,
    /// `participants get`.
    GetParticipant(String),
    /// `participants disable`.
    DisableParticipant(String),
    /// `participants remove`.
    RemoveParticipant(String),
    /// `mediators list`.
    ListMediators,
    /// `sequencers list`.
    ListSequencers,
    /// `parameters get`.
    GetParameters,
    /// `parameters set`: the fields to overlay on the current parameters.
    SetParameters(ParameterChanges),
    /// `status`.
    Status,
    /// `pruning status`.
    PruningStatus,
    /// `pruning prune`.
    Prune { dry_run: bool },
    /// `pruning force`: the resolved bound in microseconds.
    ForcePrune { below_micros: i64, dry_run: bool },
    /// `domain export-connection`.
    ExportConnection {
        alias: String,
        output_file: Option<std::path::PathBuf>,
    },
}

/// Reads and verifies an identity file (`participants set-state --identity-file`); every
/// refusal is a usage error (exit 2) naming the file, the reason and its code.
fn read_identity_file(
    path: &std::path::Path,
) -> Result<domain_identity::onboarding::VerifiedIdentity, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!("cannot read identity file {}: {e}", path.display()))
    })?;
    domain_identity::onboarding::verify_identity(&text).map_err(|e| {
        CliError::Usage(format!(
            "identity file {} refused: {e} [{}]; nothing was sent",
            path.display(),
            e.code()
        ))
    })
}

use domain_time::now_micros;

/// The parameters given to `parameters set`, in protocol units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParameterChanges {
    /// New participant response timeout, microseconds.
    pub participant_response_timeout_micros: Option<i64>,
    /// New max request size, bytes.
    pub max_request_size: Option<u64>,
    /// New topology change delay, microseconds.
    pub topology_change_delay_micros: Option<i64>,
}

impl ParameterChanges {
    fn from_args(args: &SetParametersArgs) -> Result<Self, CliError> {
        let micros = |d: Option<std::time::Duration>| {
            d.map(duration_to_micros)
                .transpose()
                .map_err(CliError::Usage)
        };
        Ok(Self {
            participant_response_timeout_micros: micros(args.participant_response_timeout)?,
            max_request_size: args.max_request_size,
            topology_change_delay_micros: micros(args.topology_change_delay)?,
        })
    }

    /// `current` with the given fields replaced.
    #[must_use]
    pub fn overlay(
        &self,
        current: &topology_pb::DomainParameters,
    ) -> topology_pb::DomainParameters {
        topology_pb::DomainParameters {
            participant_response_timeout_micros: self
                .participant_response_timeout_micros
                .unwrap_or(current.participant_response_timeout_micros),
            max_request_size: self.max_request_size.unwrap_or(current.max_request_size),
            topology_change_delay_micros: self
                .topology_change_delay_micros
                .unwrap_or(current.topology_change_delay_micros),
        }
    }
}

impl Action {
    /// Validates `command` (participant ids, durations) without any network access.
    pub fn from_command(command: &Command) -> Result<Self, CliError> {
        let id = |raw: &str| parse_participant_id(raw).map(|id| id.to_string());
        Ok(match command {
            Command::Participants(ParticipantsCommand::SetState {
                participant_id,
                identity_file,
                permission,
                trust_level,
            }) => {
                let verified = identity_file
                    .as_deref()
                    .map(read_identity_file)
                    .transpose()?;
                let participant_id = match (participant_id, &verified) {
                    (Some(raw), Some(v)) => {
                        let given = id(raw)?;
                        if given != v.participant.to_string() {
                            return Err(CliError::Usage(format!(
                                "participant id {given} differs from the identity file's {}; nothing was sent",
                                v.participant
                            )));
                        }
                        given
                    }
                    (Some(raw), None) => id(raw)?,
                    (None, Some(v)) => v.participant.to_string(),
                    (None, None) => {
                        return Err(CliError::Usage(
                            "give a participant id or --identity-file".into(),
                        ));
                    }
                };
                Action::SetParticipantState(pb::SetParticipantStateRequest {
                    participant_id,
                    permission: topology_pb::ParticipantPermission::from(*permission) as i32,
                    trust_level: topology_pb::TrustLevel::from(*trust_level) as i32,
                    public_key: verified.map(|v| common_pb::PublicKey::from(&v.public_key)),
                })
            }
            Command::Domain(DomainCommand::ExportConnection { output_file, alias }) => {
                if let Some(a) = alias {
                    domain_identity::UniqueId::validate_name(a)
                        .map_err(|e| CliError::Usage(format!("invalid alias {a:?}: {e}")))?;
                }
                Action::ExportConnection {
                    alias: alias.clone().unwrap_or_default(),
                    output_file: output_file.clone(),
                }
            }
            Command::Participants(ParticipantsCommand::List) => Action::ListParticipants,
            Command::Participants(ParticipantsCommand::Get { participant_id }) => {
                Action::GetParticipant(id(participant_id)?)
            }
            Command::Participants(ParticipantsCommand::Disable { participant_id }) => {
                Action::DisableParticipant(id(participant_id)?)
            }
            Command::Participants(ParticipantsCommand::Remove { participant_id }) => {
                Action::RemoveParticipant(id(participant_id)?)
            }
            Command::Mediators(MediatorsCommand::List) => Action::ListMediators,
            Command::Sequencers(SequencersCommand::List) => Action::ListSequencers,
            Command::Parameters(ParametersCommand::Get) => Action::GetParameters,
            Command::Parameters(ParametersCommand::Set(args)) => {
                Action::SetParameters(ParameterChanges::from_args(args)?)
            }
            Command::Status => Action::Status,
            Command::Pruning(PruningCommand::Status) => Action::PruningStatus,
            Command::Pruning(PruningCommand::Prune { dry_run }) => {
                Action::Prune { dry_run: *dry_run }
            }
            Command::Pruning(PruningCommand::Force { below, dry_run, .. }) => Action::ForcePrune {
                below_micros: below.resolve(now_micros())?,
                dry_run: *dry_run,
            },
        })
    }

    /// Runs the action against the domain-manager `replicas` (or, for `pruning …`, the
    /// `sequencers`' admin endpoints) and renders the result in `format`.
    pub async fn execute(
        self,
        replicas: &Replicas,
        sequencers: &Replicas,
        format: OutputFormat,
    ) -> Result<String, CliError> {
        match self {
            Action::PruningStatus => {
                let response = sequencers
                    .call_sequencer(
                        sequencer_admin_pb::PruningStatusRequest {},
                        |mut c, r| async move { c.pruning_status(r).await },
                    )
                    .await?;
                render(&PruningStatusView::from(&response), format)
            }
            Action::Prune { dry_run } => {
                let response = sequencers
                    .call_sequencer(
                        sequencer_admin_pb::PruneRequest { dry_run },
                        |mut c, r| async move { c.prune(r).await },
                    )
                    .await?;
                let outcome = response.outcome.ok_or_else(|| {
                    CliError::Local("the sequencer answered without a prune outcome".to_owned())
                })?;
                render(&PruneOutcomeView::from(&outcome), format)
            }
            Action::ForcePrune {
                below_micros,
                dry_run,
            } => {
                let request = sequencer_admin_pb::ForcePruneRequest {
                    below_micros,
                    dry_run,
                };
                let response = sequencers
                    .call_sequencer(request, |mut c, r| async move { c.force_prune(r).await })
                    .await?;
                let outcome = response.outcome.ok_or_else(|| {
                    CliError::Local("the sequencer answered without a prune outcome".to_owned())
                })?;
                render(&PruneOutcomeView::from(&outcome), format)
            }
            Action::ExportConnection { alias, output_file } => {
                let response = replicas
                    .call(
                        pb::ExportConnectionRequest { alias },
                        |mut c, r| async move { c.export_connection(r).await },
                    )
                    .await?;
                // Checked here too: what is handed to another company must verify.
                let bundle = domain_identity::onboarding::verify_bundle(&response.bundle_json)
                    .map_err(|e| {
                        CliError::Local(format!("the domain manager's bundle does not verify: {e}"))
                    })?;
                match output_file {
                    None => Ok(response.bundle_json),
                    Some(path) => {
                        std::fs::write(&path, response.bundle_json.as_bytes()).map_err(|e| {
                            CliError::Local(format!("cannot write {}: {e}", path.display()))
                        })?;
                        Ok(format!(
                            "wrote the connection bundle of domain {} ({} endpoint(s), sequencer {}) to {}\n",
                            bundle.domain_id,
                            bundle.body.endpoints.len(),
                            bundle.sequencer_id,
                            path.display()
                        ))
                    }
                }
            }
            Action::SetParticipantState(request) => {
                let participant_id = request.participant_id.clone();
                let response = replicas
                    .call(request, |mut c, r| async move {
                        c.set_participant_state(r).await
                    })
                    .await?;
                let change = state_change(response.change)?;
                render(&StateChangeView::new(participant_id, &change), format)
            }
            Action::ListParticipants => {
                let response = replicas
                    .call(pb::ListParticipantsRequest {}, |mut c, r| async move {
                        c.list_participants(r).await
                    })
                    .await?;
                let view = ParticipantListView {
                    participants: response.participants.iter().map(Into::into).collect(),
                };
                render(&view, format)
            }
            Action::GetParticipant(participant_id) => {
                let request = pb::GetParticipantRequest { participant_id };
                let response = replicas
                    .call(
                        request,
                        |mut c, r| async move { c.get_participant(r).await },
                    )
                    .await?;
                let info = response.participant.ok_or_else(|| {
                    CliError::Local("the domain manager answered without a participant".to_owned())
                })?;
                render(&ParticipantView::from(&info), format)
            }
            Action::DisableParticipant(participant_id) => {
                let request = pb::DisableParticipantRequest {
                    participant_id: participant_id.clone(),
                };
                let response = replicas
                    .call(
                        request,
                        |mut c, r| async move { c.disable_participant(r).await },
                    )
                    .await?;
                let change = state_change(response.change)?;
                render(&StateChangeView::new(participant_id, &change), format)
            }
            Action::RemoveParticipant(participant_id) => {
                let request = pb::RemoveParticipantRequest {
                    participant_id: participant_id.clone(),
                };
                let response = replicas
                    .call(
                        request,
                        |mut c, r| async move { c.remove_participant(r).await },
                    )
                    .await?;
                let change = state_change(response.change)?;
                render(&StateChangeView::new(participant_id, &change), format)
            }
            Action::ListMediators => {
                let response = replicas
                    .call(pb::ListMediatorsRequest {}, |mut c, r| async move {
                        c.list_mediators(r).await
                    })
                    .await?;
                let view = MediatorListView {
                    mediators: response.mediators.iter().map(MediatorView::from).collect(),
                };
                render(&view, format)
            }
            Action::ListSequencers => {
                let response = replicas
                    .call(pb::ListSequencersRequest {}, |mut c, r| async move {
                        c.list_sequencers(r).await
                    })
                    .await?;
                let view = SequencerListView {
                    instances: response.instances.iter().map(SequencerView::from).collect(),
                };
                render(&view, format)
            }
            Action::GetParameters => {
                let parameters = get_parameters(replicas).await?;
                render(&ParametersView::from(&parameters), format)
            }
            Action::SetParameters(changes) => {
                // SetParameters replaces the whole set, so unchanged fields must be sent with
                // their current values. The read may come from a passive replica; the
                // window for racing another operator is the same as with any
                // read-modify-write admin tool.
                let current = get_parameters(replicas).await?;
                let parameters = changes.overlay(&current);
                let request = pb::SetParametersRequest {
                    parameters: Some(parameters),
                };
                let response = replicas
                    .call(request, |mut c, r| async move { c.set_parameters(r).await })
                    .await?;
                let view = ParametersChangeView {
                    serial: response.serial,
                    effective_at_micros: response.effective_at_micros.into(),
                    effective_at: rfc3339_micros(response.effective_at_micros),
                    parameters: ParametersView::from(&parameters),
                };
                render(&view, format)
            }
            Action::Status => {
                let response = replicas
                    .call(
                        pb::StatusRequest {},
                        |mut c, r| async move { c.status(r).await },
                    )
                    .await?;
                render(&StatusView::from(&response), format)
            }
        }
    }
}

async fn get_parameters(replicas: &Replicas) -> Result<topology_pb::DomainParameters, CliError> {
    replicas
        .call(pb::GetParametersRequest {}, |mut c, r| async move {
            c.get_parameters(r).await
        })
        .await?
        .parameters
        .ok_or_else(|| CliError::Local("the domain manager answered without parameters".to_owned()))
}

/// The state change a SetParticipantState, DisableParticipant or RemoveParticipant answer
/// carries.
fn state_change(
    change: Option<pb::ParticipantStateChange>,
) -> Result<pb::ParticipantStateChange, CliError> {
    change.ok_or_else(|| {
        CliError::Local("the domain manager answered without a state change".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Permission, Trust};
    use std::time::Duration;

    const FP: &str = "1220bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn set_state_action_carries_canonical_request() {
        let id = format!("PAR::bob::{FP}");
        let action = Action::from_command(&Command::Participants(ParticipantsCommand::SetState {
            participant_id: Some(id.clone()),
            identity_file: None,
            permission: Permission::Observation,
            trust_level: Trust::Vip,
        }))
        .expect("valid");
        assert_eq!(
            action,
            Action::SetParticipantState(pb::SetParticipantStateRequest {
                participant_id: id,
                permission: topology_pb::ParticipantPermission::Observation as i32,
                trust_level: topology_pb::TrustLevel::Vip as i32,
                public_key: None,
            })
        );
    }

    #[test]
    fn invalid_ids_fail_before_any_call() {
        for command in [
            Command::Participants(ParticipantsCommand::Get {
                participant_id: "garbage".into(),
            }),
            Command::Participants(ParticipantsCommand::Disable {
                participant_id: format!("SEQ::s::{FP}"),
            }),
            Command::Participants(ParticipantsCommand::Remove {
                participant_id: format!("MED::m::{FP}"),
            }),
        ] {
            let error = Action::from_command(&command).expect_err("invalid id");
            assert_eq!(error.exit_code(), 2);
        }
    }

    #[test]
    fn parameter_overlay_keeps_unset_fields() {
        let changes = ParameterChanges::from_args(&SetParametersArgs {
            participant_response_timeout: None,
            max_request_size: Some(2048),
            topology_change_delay: Some(Duration::from_millis(250)),
        })
        .expect("valid");
        let current = topology_pb::DomainParameters {
            participant_response_timeout_micros: 30_000_000,
            max_request_size: 1024,
            topology_change_delay_micros: 0,
        };
        assert_eq!(
            changes.overlay(&current),
            topology_pb::DomainParameters {
                participant_response_timeout_micros: 30_000_000,
                max_request_size: 2048,
                topology_change_delay_micros: 250_000,
            }
        );
    }
}
