//! The participant's side of the confirmation protocol as a pure state machine: verified
//! sequenced events in, state changes (to persist in one transaction with the processed
//! counter) and outgoing confirmation responses out. No I/O, no clock.
//!
//! Rules:
//! - topology transactions count only when the event's sender (covered by the sequencer
//!   signature) is the domain manager member `DOM::<domain>` and their namespace signature
//!   verifies with the domain's namespace key (the sequencer checked it too, but a member does
//!   not take a sequencer's word for the topology: one with a stolen or unverified key must not
//!   be able to allowlist, swap the mediator or change the parameters); a transaction failing
//!   either check is ignored (`participant_envelopes_ignored_total`) and never applied;
//! - a `ConfirmationRequest` whose submitter is the event's sender and that names this
//!   participant as informee or confirming participant (or that we sent) is remembered
//!   as pending under its request id (the event's sequencing timestamp);
//! - if it lists this participant as confirming participant, a signed
//!   `ConfirmationResponse` (purpose CONFIRMATION_RESPONSE, over the encoded response) is
//!   put in the outbox for the request's mediator, message id
//!   `response-<request id>-<participant name>`, decided by the auto-confirm policy;
//! - a `SignedVerdict` counts only when sent by the mediator it names, signed by a key
//!   whose fingerprint is that mediator's (purpose VERDICT, this domain), for a pending
//!   request with that mediator and root hash; an approval commits the transaction.

use domain_confirmation::sign;
pub use domain_confirmation::{Event, Outcome, verify_verdict};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use domain_identity::{
    DomainId, MemberId, MemberRole, PublicKey, SignaturePurpose, SigningKeyPair,
};
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::topology::v1 as topology_pb;
use domain_sequencer_client::to_proto_signature;
use domain_topology::{Permission, SequencedTopology, TopologyState};
use prost::Message as _;

use crate::config::AutoConfirm;

/// Prefix of our confirmation responses' message ids.
pub const RESPONSE_MESSAGE_PREFIX: &str = "response-";
/// Prefix of ping requests' message ids.
pub const PING_MESSAGE_PREFIX: &str = "ping-";
/// Pending requests without a verdict are forgotten this long (sequencer time) after
/// their deadline. Only reached when a mediator never answers.
pub const PENDING_RETENTION_MICROS: i64 = 10 * 60 * 1_000_000;

/// The message id of this participant's response to `request_id`.
pub fn response_message_id(request_id: i64, participant_name: &str) -> String {
    format!("{RESPONSE_MESSAGE_PREFIX}{request_id}-{participant_name}")
}

/// A request we are an informee of, until its verdict (a row of `par_pending_requests`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingRequest {
    pub request_id: i64,
    pub submitter: String,
    pub informees: Vec<String>,
    pub confirmers: Vec<String>,
    pub mediator: String,
    pub root_hash: Vec<u8>,
    pub payload: Vec<u8>,
    /// Our submission's message id when we sent it, else empty.
    pub message_id: String,
}

/// A committed (approved) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub request_id: i64,
    pub root_hash: Vec<u8>,
    pub submitter: String,
    pub payload: Vec<u8>,
    /// Encoded SignedVerdict as received.
    pub signed_verdict: Vec<u8>,
    /// Sequencing timestamp of the verdict.
    pub sequenced_ts: i64,
}

/// A confirmation response to send (a row of `par_outbox`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Outgoing {
    pub message_id: String,
    /// Encoded, signed SendRequest.
    pub send_request: Vec<u8>,
    pub max_sequencing_micros: i64,
    pub approve: bool,
}

/// A verdict that decided one of our pending requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedRequest {
    pub request_id: i64,
    pub outcome: Outcome,
    /// Our submission's message id when we sent the request (pings).
    pub message_id: String,
}

/// A topology transaction to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyRecord {
    pub serial: u64,
    pub sequenced_ts: i64,
    pub effective_ts: i64,
    /// Encoded SignedTopologyTransaction.
    pub signed: Vec<u8>,
}

/// Everything a batch of events changed. Persisted in one transaction with the counter.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub events: u64,
    pub last_counter: i64,
    pub last_ts: i64,
    /// The last processed event, encoded.
    pub last_event: Vec<u8>,
    pub topology: Vec<TopologyRecord>,
    pub new_pending: Vec<PendingRequest>,
    /// Request ids no longer pending (decided or expired).
    pub removed_pending: Vec<i64>,
    pub committed: Vec<Committed>,
    pub outbox: Vec<Outgoing>,
    pub decided: Vec<DecidedRequest>,
    /// Why envelopes were ignored (metric labels).
    pub ignored: Vec<&'static str>,
}

/// What the processor is restored from.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    pub last_counter: i64,
    pub last_ts: i64,
    pub topology: Vec<SequencedTopology>,
    pub pending: Vec<PendingRequest>,
}

/// Static settings.
#[derive(Clone)]
pub struct ProcessorSettings {
    pub participant: MemberId,
    pub domain_id: DomainId,
    pub key: Arc<SigningKeyPair>,
    pub policy: AutoConfirm,
    /// Mediator used while topology shows none (from `connect-multi --mediator`).
    pub mediator_hint: Option<String>,
    /// The domain's namespace key (its fingerprint is the domain id's): topology
    /// transactions must carry its signature.
    pub namespace_key: PublicKey,
}

/// The participant's protocol state.
pub struct Processor {
    settings: ProcessorSettings,
    me: String,
    domain: String,
    topology: TopologyState,
    pending: BTreeMap<i64, PendingRequest>,
    last_counter: i64,
    last_ts: i64,
}

impl Processor {
    pub fn restore(settings: ProcessorSettings, restored: Restored) -> Self {
        let mut topology = TopologyState::new();
        for t in restored.topology {
            topology.insert(t);
        }
        Self {
            me: settings.participant.to_string(),
            domain: settings.domain_id.to_string(),
            settings,
            topology,
            pending: restored
                .pending
                .into_iter()
                .map(|p| (p.request_id, p))
                .collect(),
            last_counter: restored.last_counter,
            last_ts: restored.last_ts,
        }
    }

    pub fn new(settings: ProcessorSettings) -> Self {
        Self::restore(
            settings,
            Restored {
                last_counter: -1,
                ..Restored::default()
            },
        )
    }

    pub fn last_counter(&self) -> i64 {
        self.last_counter
    }

    pub fn last_ts(&self) -> i64 {
        self.last_ts
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn topology(&self) -> &TopologyState {
        &self.topology
    }

    /// The mediator to address requests to at `ts`: the first (by id) mediator registered
    /// in the topology this participant has seen, else the configured hint.
    pub fn mediator_at(&self, ts: i64) -> Option<String> {
        let mut seen: Vec<String> = self
            .topology
            .mediators_at(ts)
            .into_iter()
            .map(|m| m.to_string())
            .collect();
        seen.sort();
        seen.into_iter()
            .next()
            .or_else(|| self.settings.mediator_hint.clone())
    }

    /// Our permission at `ts`, when the topology we saw says it.
    pub fn permission_at(&self, participant: &str, ts: i64) -> Option<Permission> {
        self.topology
            .participant_at(participant, ts)
            .map(|a| a.permission)
    }

    /// Processes one event (the caller verified it and its counter continuity).
    pub fn process(&mut self, event: &Event, encoded: Vec<u8>, changes: &mut Changes) {
        self.expire(event.ts, changes);
        for envelope in &event.envelopes {
            self.envelope(event, envelope, changes);
        }
        self.last_counter = event.counter;
        self.last_ts = event.ts;
        changes.events += 1;
        changes.last_counter = event.counter;
        changes.last_ts = event.ts;
        changes.last_event = encoded;
    }

    fn expire(&mut self, ts: i64, changes: &mut Changes) {
        let expired: Vec<i64> = self
            .pending
            .keys()
            .copied()
            .filter(|id| {
                let timeout = self.response_timeout_micros(*id);
                id.saturating_add(timeout)
                    .saturating_add(PENDING_RETENTION_MICROS)
                    < ts
            })
            .collect();
        for id in expired {
            tracing::warn!(
                request_id = id,
                "no verdict long after the deadline; forgetting the request"
            );
            self.pending.remove(&id);
            changes.removed_pending.push(id);
            changes.ignored.push("expired_without_verdict");
        }
    }

    fn response_timeout_micros(&self, ts: i64) -> i64 {
        let t = self.topology.parameters_at(ts).participant_response_timeout;
        i64::try_from(t.as_micros()).unwrap_or(i64::MAX)
    }

    fn envelope(
        &mut self,
        event: &Event,
        envelope: &sequencer_pb::Envelope,
        changes: &mut Changes,
    ) {
        use pb::domain_message::Message;
        let message = match pb::DomainMessage::decode(&envelope.content[..]) {
            Ok(m) => m.message,
            Err(error) => {
                tracing::warn!(sender = %event.sender, event_ts = event.ts, %error, "ignored an undecodable envelope");
                changes.ignored.push("undecodable");
                return;
            }
        };
        match message {
            Some(Message::Topology(signed)) => self.topology_tx(event, signed, changes),
            Some(Message::ConfirmationRequest(req)) => self.request(event, req, changes),
            Some(Message::Verdict(signed)) => self.verdict(event, signed, changes),
            Some(Message::ConfirmationResponse(_)) => changes.ignored.push("not_for_participant"),
            Some(Message::Application(_)) => changes.ignored.push("application"),
            None => changes.ignored.push("undecodable"),
        }
    }

    fn topology_tx(
        &mut self,
        event: &Event,
        signed: topology_pb::SignedTopologyTransaction,
        changes: &mut Changes,
    ) {
        match self.topology.apply_sequenced(
            &event.sender,
            event.ts,
            &signed,
            &self.settings.domain_id,
            Some(&self.settings.namespace_key),
        ) {
            Ok(Some(accepted)) => changes.topology.push(TopologyRecord {
                serial: accepted.serial,
                sequenced_ts: event.ts,
                effective_ts: accepted.effective_ts,
                signed: signed.encode_to_vec(),
            }),
            Ok(None) => {}
            Err(ignored) => changes.ignored.push(ignored.label()),
        }
    }

    fn request(&mut self, event: &Event, req: pb::ConfirmationRequest, changes: &mut Changes) {
        let ours = event.sender == self.me;
        let informee = req.informees.iter().any(|i| i == &self.me);
        let confirmer = req.confirming_participants.iter().any(|c| c == &self.me);
        if req.submitter != event.sender {
            tracing::warn!(submitter = %req.submitter, sender = %event.sender, event_ts = event.ts, "ignored a confirmation request whose submitter is not its sender");
            changes.ignored.push("submitter_mismatch");
            return;
        }
        if !(ours || informee || confirmer) {
            changes.ignored.push("not_informee");
            return;
        }
        if !MemberId::parse(&req.mediator).is_ok_and(|m| m.role() == MemberRole::Mediator) {
            tracing::warn!(mediator = %req.mediator, event_ts = event.ts, "ignored a confirmation request without a valid mediator id");
            changes.ignored.push("bad_mediator");
            return;
        }
        let known: BTreeSet<String> = self
            .topology
            .mediators_at(event.ts)
            .into_iter()
            .map(|m| m.to_string())
            .collect();
        if !known.is_empty() && !known.contains(&req.mediator) {
            tracing::warn!(mediator = %req.mediator, event_ts = event.ts, "ignored a confirmation request for a mediator the topology does not know");
            changes.ignored.push("unknown_mediator");
            return;
        }
        let request_id = event.ts;
        let pending = PendingRequest {
            request_id,
            submitter: req.submitter.clone(),
            informees: req.informees.clone(),
            confirmers: req.confirming_participants.clone(),
            mediator: req.mediator.clone(),
            root_hash: req.root_hash.clone(),
            payload: req.payload.clone(),
            message_id: if ours {
                event.message_id.clone()
            } else {
                String::new()
            },
        };
        tracing::debug!(request_id, submitter = %req.submitter, confirmer, "request pending");
        self.pending.insert(request_id, pending.clone());
        changes.new_pending.push(pending);
        if !confirmer {
            return;
        }
        if let Some(p) = self.permission_at(&self.me, request_id)
            && !p.can_confirm()
        {
            tracing::warn!(request_id, permission = %p, "not answering: no confirmation permission at the request time");
            changes.ignored.push("cannot_confirm");
            return;
        }
        let Some((approve, reason)) = self.settings.policy.decide(&req.payload) else {
            tracing::info!(request_id, "auto-confirm is off; not answering");
            return;
        };
        let deadline = request_id.saturating_add(self.response_timeout_micros(request_id));
        changes
            .outbox
            .push(self.response(request_id, &req, approve, reason, deadline));
    }

    fn response(
        &self,
        request_id: i64,
        req: &pb::ConfirmationRequest,
        approve: bool,
        reason: &str,
        max_sequencing_micros: i64,
    ) -> Outgoing {
        let key = &self.settings.key;
        let signed: pb::SignedConfirmationResponse = sign(
            key,
            &self.settings.domain_id,
            &pb::ConfirmationResponse {
                request_id,
                participant: self.me.clone(),
                root_hash: req.root_hash.clone(),
                decision: if approve {
                    pb::ConfirmationDecision::Approve as i32
                } else {
                    pb::ConfirmationDecision::Reject as i32
                },
                reason: reason.to_owned(),
                domain_id: self.domain.clone(),
            },
        );
        let content = pb::DomainMessage {
            message: Some(pb::domain_message::Message::ConfirmationResponse(signed)),
        }
        .encode_to_vec();
        let message_id = response_message_id(request_id, self.settings.participant.name());
        let submission = sequencer_pb::SubmissionRequest {
            sender: self.me.clone(),
            message_id: message_id.clone(),
            envelopes: vec![sequencer_pb::Envelope {
                content: content.into(),
                recipients: vec![req.mediator.clone()],
                broadcast: false,
            }],
            max_sequencing_time_micros: max_sequencing_micros,
            time_proof: false,
        };
        let bytes = submission.encode_to_vec();
        let sig = key.sign(
            SignaturePurpose::Submission,
            &self.settings.domain_id,
            &bytes,
        );
        let send = sequencer_pb::SendRequest {
            submission: bytes,
            signature: Some(to_proto_signature(&sig, SignaturePurpose::Submission)),
            // The trace context of the event being processed (set by the node), so the
            // mediator sees this response in the submitter's trace.
            trace_context: domain_sequencer_client::current_trace_context(),
        };
        Outgoing {
            message_id,
            send_request: send.encode_to_vec(),
            max_sequencing_micros,
            approve,
        }
    }

    fn verdict(&mut self, event: &Event, signed: pb::SignedVerdict, changes: &mut Changes) {
        let claimed = match pb::Verdict::decode(signed.verdict.as_slice()) {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(sender = %event.sender, %error, "ignored an undecodable verdict");
                changes.ignored.push("bad_verdict");
                return;
            }
        };
        let mediator = match MemberId::parse(&claimed.mediator) {
            Ok(m) if m.role() == MemberRole::Mediator => m,
            _ => {
                tracing::warn!(mediator = %claimed.mediator, "ignored a verdict naming no valid mediator");
                changes.ignored.push("bad_verdict");
                return;
            }
        };
        if event.sender != claimed.mediator {
            tracing::warn!(sender = %event.sender, mediator = %claimed.mediator, "ignored a verdict not sent by the mediator it names");
            changes.ignored.push("bad_verdict");
            return;
        }
        let verdict = match verify_verdict(&signed, &mediator, &self.settings.domain_id) {
            Ok(v) => v,
            Err(error) => {
                tracing::warn!(sender = %event.sender, %error, "ignored a verdict with an invalid signature");
                changes.ignored.push("bad_verdict_signature");
                return;
            }
        };
        if verdict.domain_id != self.domain {
            changes.ignored.push("bad_verdict");
            return;
        }
        let request_id = verdict.request_id;
        let Some(pending) = self.pending.get(&request_id) else {
            tracing::info!(
                request_id,
                "verdict for a request we do not know (or already decided)"
            );
            changes.ignored.push("unknown_request");
            return;
        };
        if pending.mediator != verdict.mediator || pending.root_hash != verdict.root_hash {
            tracing::warn!(
                request_id,
                "ignored a verdict whose mediator or root hash differ from the request's"
            );
            changes.ignored.push("verdict_mismatch");
            return;
        }
        let Some(outcome) = Outcome::from_proto(verdict.outcome) else {
            changes.ignored.push("bad_verdict");
            return;
        };
        let Some(pending) = self.pending.remove(&request_id) else {
            return;
        };
        tracing::info!(request_id, outcome = outcome.label(), submitter = %pending.submitter, "verdict received");
        if outcome == Outcome::Approved {
            changes.committed.push(Committed {
                request_id,
                root_hash: pending.root_hash.clone(),
                submitter: pending.submitter.clone(),
                payload: pending.payload.clone(),
                signed_verdict: signed.encode_to_vec(),
                sequenced_ts: event.ts,
            });
        }
        changes.removed_pending.push(request_id);
        changes.decided.push(DecidedRequest {
            request_id,
            outcome,
            message_id: pending.message_id,
        });
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
