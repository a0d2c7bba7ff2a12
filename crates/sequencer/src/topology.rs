//! The sequencer's side of topology: validating the domain manager's signed
//! transactions before they are sequenced, recording them with their
//! effective time in the batch that sequences them, and applying them to the
//! member table when they become effective (allowlist, mediators).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use domain_identity::{DomainId, MemberRole, PublicKey};
use domain_proto::confirmation::v1 as confirmation_pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::topology::v1 as pb;
use domain_time::Timestamp;
use domain_topology::{Mapping, Operation, SequencedTopology, TopologyState, TopologyTransaction};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::SequencerError;
use crate::metrics as m;
use crate::store::{self, StoreError};
use crate::timestamp::clock;

/// A verified topology transaction travelling with its submission to the writer.
#[derive(Debug, Clone)]
pub struct PendingTopology {
    pub tx: TopologyTransaction,
    /// Encoded SignedTopologyTransaction as received.
    pub signed: Vec<u8>,
}

/// Row to insert into `seq_topology` inside the writer batch. Its effective time is
/// computed in that batch's transaction (`store::commit_batch`), from the topology
/// stored at that moment and the transactions before it in the batch.
#[derive(Debug, Clone)]
pub struct TopologyRow {
    pub serial: i64,
    pub sequenced_ts: Timestamp,
    pub tx: TopologyTransaction,
    pub kind: &'static str,
    pub operation: &'static str,
    pub member: Option<String>,
    pub permission: Option<&'static str>,
    pub signed: Vec<u8>,
}

impl TopologyRow {
    pub fn new(p: &PendingTopology, sequenced_ts: Timestamp) -> Self {
        let permission = match &p.tx.mapping {
            Mapping::Participant { permission, .. } => Some(permission.as_str()),
            _ => None,
        };
        Self {
            serial: i64::try_from(p.tx.serial).unwrap_or(i64::MAX),
            sequenced_ts,
            tx: p.tx.clone(),
            kind: p.tx.mapping.kind(),
            operation: match p.tx.operation {
                Operation::Replace => "replace",
                Operation::Remove => "remove",
            },
            member: p.tx.mapping.member().map(ToString::to_string),
            permission,
            signed: p.signed.clone(),
        }
    }
}

/// Checks the envelopes of a submission for topology transactions.
///
/// The domain manager (`DOM::` sender, whose key is the namespace key) may
/// only send broadcast envelopes that each carry one signed topology
/// transaction; anyone else may not send topology transactions at all.
pub fn validate_submission(
    sender_role: MemberRole,
    sender_key: &PublicKey,
    domain_id: &DomainId,
    envelopes: &[sequencer_pb::Envelope],
) -> Result<Vec<PendingTopology>, SequencerError> {
    let mut out = Vec::new();
    for env in envelopes {
        let message = confirmation_pb::DomainMessage::decode(&env.content[..]).ok();
        let topology = match message.and_then(|m| m.message) {
            Some(confirmation_pb::domain_message::Message::Topology(t)) => Some(t),
            _ => None,
        };
        match (sender_role, topology) {
            (MemberRole::DomainManager, Some(signed)) => {
                if !env.broadcast {
                    return Err(SequencerError::TopologyInvalid(
                        "topology transactions must be broadcast".into(),
                    ));
                }
                let tx = domain_topology::verify_signed(&signed, domain_id, sender_key)
                    .map_err(|e| SequencerError::TopologyInvalid(e.to_string()))?;
                out.push(PendingTopology {
                    tx,
                    signed: signed.encode_to_vec(),
                });
            }
            (MemberRole::DomainManager, None) => {
                return Err(SequencerError::TopologyInvalid(
                    "the domain manager sends only topology transactions".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(SequencerError::TopologyInvalid(
                    "only the domain manager may send topology transactions".into(),
                ));
            }
            (_, None) => {}
        }
    }
    Ok(out)
}

/// The sequenced topology as stored in `seq_topology`, read through `client` (inside a
/// batch transaction, it sees what that transaction sees).
pub async fn load_state(
    client: &impl tokio_postgres::GenericClient,
    domain_id: &str,
) -> Result<TopologyState, StoreError> {
    let mut state = TopologyState::new();
    for store::StoredTopology {
        sequenced_ts,
        effective_ts,
        signed,
    } in store::load_topology(client).await?
    {
        // Verified before it was sequenced; decode without re-verifying.
        let decoded = pb::SignedTopologyTransaction::decode(signed.as_slice())
            .ok()
            .and_then(|s| pb::TopologyTransaction::decode(s.transaction.as_slice()).ok())
            .and_then(|t| TopologyTransaction::from_proto(&t, domain_id).ok());
        let Some(tx) = decoded else {
            tracing::error!(
                sequenced_ts = sequenced_ts.as_micros(),
                "stored topology transaction does not decode"
            );
            continue;
        };
        state.insert(SequencedTopology {
            sequenced_ts: sequenced_ts.as_micros(),
            effective_ts: effective_ts.as_micros(),
            tx,
        });
    }
    Ok(state)
}

/// This instance's copy of the sequenced topology, reloaded on notification.
pub struct TopologyCache {
    state: RwLock<TopologyState>,
    /// Whether any parameters transaction exists (until then, config limits apply).
    has_parameters: RwLock<bool>,
}

impl TopologyCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(TopologyState::new()),
            has_parameters: RwLock::new(false),
        })
    }

    /// Reloads every sequenced transaction (the table holds one row per
    /// topology change: small).
    pub async fn reload(
        &self,
        client: &impl tokio_postgres::GenericClient,
        domain_id: &str,
    ) -> Result<(), StoreError> {
        let state = load_state(client, domain_id).await?;
        let has_parameters = state
            .entries()
            .any(|e| matches!(e.tx.mapping, Mapping::Parameters(_)));
        *self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        *self
            .has_parameters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = has_parameters;
        Ok(())
    }

    /// The max request size in force now, if a parameters transaction set one.
    pub fn max_request_size_now(&self) -> Option<u64> {
        if !*self
            .has_parameters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return None;
        }
        Some(
            self.state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .parameters_at(clock().as_micros())
                .max_request_size,
        )
    }

    pub fn transaction_count(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// Applies due topology transactions to `seq_members` at their effective
/// time. Every instance runs one; the advisory lock inside
/// [`store::apply_due_topology`] makes them take turns.
pub async fn run_applier(
    pool: deadpool_postgres::Pool,
    cache: Arc<TopologyCache>,
    domain_id: DomainId,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    // Without notifications (listen connection down) changes are still seen.
    const FALLBACK_POLL: Duration = Duration::from_millis(500);
    let domain_id = domain_id.to_string();
    loop {
        let next_due = match pool.get().await {
            Ok(client) => {
                if let Err(error) = cache.reload(&**client, &domain_id).await {
                    tracing::warn!(%error, "cannot reload topology");
                }
                metrics::gauge!(m::TOPOLOGY_TRANSACTIONS).set(cache.transaction_count() as f64);
                drop(client);
                match pool.get().await {
                    Ok(mut client) => match store::apply_due_topology(&mut client, clock()).await {
                        Ok(store::TopologyPass { applied, next_due }) => {
                            for store::AppliedTopology {
                                kind,
                                member,
                                effect,
                            } in applied
                            {
                                metrics::counter!(m::TOPOLOGY_APPLIED, "kind" => kind).increment(1);
                                tracing::info!(
                                    kind,
                                    member = member.as_deref().unwrap_or(""),
                                    effect,
                                    "topology change applied"
                                );
                            }
                            next_due
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot apply topology");
                            None
                        }
                    },
                    Err(error) => {
                        tracing::warn!(%error, "cannot apply topology");
                        None
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reload topology");
                None
            }
        };
        let sleep = match next_due {
            Some(ts) => ts
                .duration_since(clock())
                .unwrap_or_default()
                .min(FALLBACK_POLL),
            None => FALLBACK_POLL,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// What applying a mapping does to the member table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEffect {
    /// Register the member (or re-enable it).
    Enable,
    /// Disable it: revoke tokens, end subscriptions.
    Disable,
    /// Nothing (sequencer registrations, parameters).
    None,
}

/// The key a stored participant-state transaction records (allowlisted from an identity
/// file), bound to the member when the change is applied, so the member's first
/// authentication must present exactly that key. The transaction was verified (signature,
/// key matching the id's fingerprint) before it was sequenced.
pub fn recorded_participant_key(signed: &[u8]) -> Option<Vec<u8>> {
    let signed = pb::SignedTopologyTransaction::decode(signed).ok()?;
    let tx = pb::TopologyTransaction::decode(signed.transaction.as_slice()).ok()?;
    match tx.mapping? {
        pb::topology_transaction::Mapping::ParticipantState(p) => p.public_key.map(|k| k.key),
        _ => None,
    }
}

/// Maps a stored row (kind, operation, permission) to its member effect.
pub fn member_effect(kind: &str, operation: &str, permission: Option<&str>) -> MemberEffect {
    match (kind, operation) {
        ("participant_state", "replace") => match permission {
            Some("disabled") | None => MemberEffect::Disable,
            Some(_) => MemberEffect::Enable,
        },
        ("participant_state", _) | ("mediator", "remove") => MemberEffect::Disable,
        ("mediator", _) => MemberEffect::Enable,
        _ => MemberEffect::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_effects() {
        use MemberEffect::{Disable, Enable, None};
        // (kind, operation, permission, effect)
        #[rustfmt::skip]
        let table = [
            ("participant_state", "replace", Some("submission"), Enable),
            ("participant_state", "replace", Some("observation"), Enable),
            ("participant_state", "replace", Some("disabled"), Disable),
            ("participant_state", "remove", Some("submission"), Disable),
            ("mediator", "replace", Option::None, Enable),
            ("mediator", "remove", Option::None, Disable),
            ("sequencer", "replace", Option::None, None),
            ("domain_parameters", "replace", Option::None, None),
        ];
        for (kind, operation, permission, effect) in table {
            assert_eq!(
                member_effect(kind, operation, permission),
                effect,
                "{kind} {operation} {permission:?}"
            );
        }
    }
}
