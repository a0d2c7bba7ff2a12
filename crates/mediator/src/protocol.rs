//! The mediator's confirmation protocol as a pure state machine: sequenced
//! events in, state changes (to persist) and signed verdicts out. No I/O, no
//! clock: every decision is a deterministic function of the event stream, so a
//! replica that replays the same events from the same persisted state reaches
//! the same verdicts, byte for byte (ed25519 signatures are deterministic).
//!
//! Rules (docs/mediator.md has the full table):
//! - a `ConfirmationRequest` addressed to this mediator and sent by a
//!   participant opens a request whose id is the event's sequencing timestamp
//!   and whose deadline is `request id + participant response timeout` (the
//!   parameters in force at the request time); a malformed request, or one whose
//!   submitter lacks `submission` or a confirmer lacks a confirming permission at
//!   the request time, is rejected at once;
//! - a signed `ConfirmationResponse` counts only if every check passes (see
//!   [`IgnoreReason`] for what is ignored and why); the first reject decides
//!   `Rejected`, approvals from every confirmer decide `Approved`;
//! - before anything else in an event, every pending request whose deadline is
//!   earlier than the event's timestamp times out (`TimedOut` naming the silent
//!   confirmers), so a response sequenced after the deadline never counts;
//! - topology transactions count only from the domain manager member.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use domain_identity::{DomainId, MemberId, MemberRole, PublicKey, SigningKeyPair};
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::topology::v1 as topology_pb;
use domain_time::Timestamp;
use domain_topology::{Permission, SequencedTopology, TopologyState};
use prost::Message as _;

pub use domain_confirmation::{
    Event, Outcome, VERDICT_MESSAGE_PREFIX, parse_verdict_message_id, verdict_message_id,
    verify_verdict,
};
use domain_confirmation::{sign, verify_signature};

/// How long (sequencer time) after its deadline a decided request is still
/// remembered in memory, to classify stray responses as `late` or `decided`
/// rather than `unknown_request`. Only metrics and logs depend on it.
pub const DECIDED_RETENTION: Duration = Duration::from_secs(5 * 60);

/// Why a confirmation response was ignored: the label of
/// `mediator_responses_ignored_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IgnoreReason {
    /// Missing, undecodable or unverifiable signature, or a signer key that is
    /// not the sending participant's.
    BadSignature,
    /// The sender is not a confirming participant of the request, or cannot
    /// confirm at the request time.
    NotConfirming,
    /// No request with this id was ever seen (or it is long forgotten).
    UnknownRequest,
    /// Sequenced after the request's deadline.
    Late,
    /// The response names another participant than its sender, another domain,
    /// or another root hash than the request.
    Mismatch,
    /// The response bytes do not decode, or the decision is unspecified.
    Malformed,
    /// A second response from the same participant (the first one counts).
    Duplicate,
    /// The request was already decided (e.g. rejected by another confirmer)
    /// and the response is within the deadline.
    Decided,
}

impl IgnoreReason {
    pub const ALL: [IgnoreReason; 8] = [
        IgnoreReason::BadSignature,
        IgnoreReason::NotConfirming,
        IgnoreReason::UnknownRequest,
        IgnoreReason::Late,
        IgnoreReason::Mismatch,
        IgnoreReason::Malformed,
        IgnoreReason::Duplicate,
        IgnoreReason::Decided,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::BadSignature => "bad_signature",
            IgnoreReason::NotConfirming => "not_confirming",
            IgnoreReason::UnknownRequest => "unknown_request",
            IgnoreReason::Late => "late",
            IgnoreReason::Mismatch => "mismatch",
            IgnoreReason::Malformed => "malformed",
            IgnoreReason::Duplicate => "duplicate",
            IgnoreReason::Decided => "decided",
        }
    }
}

/// A participant's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Decision::Approve),
            "reject" => Some(Decision::Reject),
            _ => None,
        }
    }
}

/// A counted response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub participant: String,
    /// Sequencing timestamp of the response.
    pub ts: Timestamp,
    pub decision: Decision,
    pub reason: String,
}

/// A request as opened: what is persisted, and (while pending) what the
/// processor keeps in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Sequencing timestamp of the request.
    pub request_id: i64,
    /// Counter of the request event in the mediator's stream.
    pub counter: i64,
    pub submitter: String,
    pub informees: Vec<String>,
    pub confirmers: Vec<String>,
    /// Who gets the verdict: the sender, and the informees and confirmers that
    /// were recipients of the request (so the sequencer knew them).
    pub recipients: Vec<String>,
    pub root_hash: Vec<u8>,
    /// Responses sequenced after it do not count.
    pub deadline: Timestamp,
    /// Counted responses by participant.
    pub responses: BTreeMap<String, ResponseRecord>,
}

/// A decided request, with its signed verdict ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedVerdict {
    pub request_id: i64,
    pub outcome: Outcome,
    /// Sequencing timestamp of the event that decided it.
    pub decided_ts: i64,
    /// Encoded `SignedVerdict`.
    pub signed_verdict: Vec<u8>,
    pub recipients: Vec<String>,
    /// Fixed once, at decision time: every (re)send uses it, so the sequencer's
    /// deduplication covers every resend and nothing can be sequenced after it.
    pub max_sequencing_ts: Timestamp,
}

/// An accepted topology transaction, to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyRecord {
    pub serial: u64,
    pub sequenced_ts: Timestamp,
    pub effective_ts: Timestamp,
    pub counter: i64,
    /// Encoded `SignedTopologyTransaction` as sequenced.
    pub signed: Vec<u8>,
}

/// Everything a batch of events changed, to be persisted in one transaction
/// together with the new processed counter. Metric increments ride along and
/// are emitted only after the commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub events: u64,
    /// Processed counter and timestamp after the batch.
    pub last_counter: i64,
    pub last_ts: i64,
    pub topology: Vec<TopologyRecord>,
    pub new_requests: Vec<Request>,
    pub responses: Vec<(i64, ResponseRecord)>,
    pub decisions: Vec<DecidedVerdict>,
    /// Our own verdicts seen sequenced.
    pub receipts: Vec<VerdictReceipt>,
    pub ignored: Vec<IgnoreReason>,
    /// Envelopes that were not for us or not understood, by reason label.
    pub envelopes_ignored: Vec<&'static str>,
}

impl Changes {
    pub fn is_empty_state(&self) -> bool {
        self.topology.is_empty()
            && self.new_requests.is_empty()
            && self.responses.is_empty()
            && self.decisions.is_empty()
            && self.receipts.is_empty()
    }
}

/// One of our own verdicts, seen sequenced in our stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictReceipt {
    pub request_id: i64,
    /// When the verdict was sequenced.
    pub sequenced_ts: Timestamp,
}

/// What a processor is restored from (the persisted state).
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// -1 before the first event.
    pub last_counter: i64,
    pub last_ts: i64,
    pub topology: Vec<SequencedTopology>,
    pub pending: Vec<Request>,
    /// Recently decided requests.
    pub decided: Vec<DecidedDeadline>,
}

/// A recently decided request's id and deadline: enough to classify a stray response as
/// `late` or `decided`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecidedDeadline {
    pub request_id: i64,
    pub deadline: Timestamp,
}

/// Static settings of a processor.
#[derive(Clone)]
pub struct ProcessorSettings {
    pub mediator_id: MemberId,
    pub domain_id: DomainId,
    pub key: Arc<SigningKeyPair>,
    /// Added to the decision time to fix a verdict's max sequencing time.
    pub verdict_ttl: Duration,
    /// The domain's namespace key, which topology transactions must be signed with; learnt
    /// from the sequencers (checked against the domain id), so `None` until connected.
    pub namespace_key: Option<PublicKey>,
}

/// The confirmation-protocol state machine of one mediator.
pub struct Processor {
    mediator: String,
    domain: String,
    domain_id: DomainId,
    key: Arc<SigningKeyPair>,
    verdict_ttl: Duration,
    namespace_key: Option<PublicKey>,
    topology: TopologyState,
    pending: BTreeMap<i64, Request>,
    /// (deadline, request id) of every pending request.
    deadlines: BTreeSet<(Timestamp, i64)>,
    /// Recently decided: request id → deadline.
    decided: BTreeMap<i64, Timestamp>,
    decided_by_deadline: BTreeSet<(Timestamp, i64)>,
    last_counter: i64,
    last_ts: i64,
}

impl Processor {
    /// A processor that has seen nothing yet.
    pub fn new(settings: ProcessorSettings) -> Self {
        Self::restore(
            settings,
            Restored {
                last_counter: -1,
                ..Restored::default()
            },
        )
    }

    /// A processor continuing from persisted state.
    pub fn restore(settings: ProcessorSettings, restored: Restored) -> Self {
        let mut topology = TopologyState::new();
        for entry in restored.topology {
            topology.insert(entry);
        }
        let mut pending = BTreeMap::new();
        let mut deadlines = BTreeSet::new();
        for r in restored.pending {
            deadlines.insert((r.deadline, r.request_id));
            pending.insert(r.request_id, r);
        }
        let mut decided = BTreeMap::new();
        let mut decided_by_deadline = BTreeSet::new();
        for DecidedDeadline {
            request_id,
            deadline,
        } in restored.decided
        {
            decided.insert(request_id, deadline);
            decided_by_deadline.insert((deadline, request_id));
        }
        Self {
            mediator: settings.mediator_id.to_string(),
            domain: settings.domain_id.to_string(),
            domain_id: settings.domain_id,
            key: settings.key,
            verdict_ttl: settings.verdict_ttl,
            namespace_key: settings.namespace_key,
            topology,
            pending,
            deadlines,
            decided,
            decided_by_deadline,
            last_counter: restored.last_counter,
            last_ts: restored.last_ts,
        }
    }

    /// Sets the namespace key topology transactions are verified with.
    pub fn set_namespace_key(&mut self, key: PublicKey) {
        self.namespace_key = Some(key);
    }

    pub fn mediator_id(&self) -> &str {
        &self.mediator
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

    pub fn pending(&self, request_id: i64) -> Option<&Request> {
        self.pending.get(&request_id)
    }

    pub fn topology(&self) -> &TopologyState {
        &self.topology
    }

    /// Earliest deadline among the pending requests.
    pub fn earliest_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Processes a batch of consecutive events. `now_micros` is the local clock,
    /// used only to fix the max sequencing time of verdicts decided in the batch.
    pub fn process_batch(&mut self, events: &[Event], now_micros: i64) -> Changes {
        self.process_batch_in(events, now_micros, |_| tracing::Span::none())
    }

    /// [`Self::process_batch`], processing event `i` inside the span `span_for(i)` (the
    /// session parents it on the event's trace context).
    pub fn process_batch_in(
        &mut self,
        events: &[Event],
        now_micros: i64,
        mut span_for: impl FnMut(usize) -> tracing::Span,
    ) -> Changes {
        let mut changes = Changes {
            last_counter: self.last_counter,
            last_ts: self.last_ts,
            ..Changes::default()
        };
        for (i, event) in events.iter().enumerate() {
            span_for(i).in_scope(|| self.process(event, now_micros, &mut changes));
        }
        changes
    }

    /// Processes one event into `changes`.
    pub fn process(&mut self, event: &Event, now_micros: i64, changes: &mut Changes) {
        if event.counter <= self.last_counter {
            // Already processed (a replayed event): the stream validator makes this
            // impossible; skip rather than apply twice.
            tracing::warn!(
                counter = event.counter,
                last = self.last_counter,
                "skipped an event at or below the processed counter"
            );
            return;
        }
        changes.events += 1;
        // Time passes first: a response sequenced after a deadline never counts.
        self.expire(event.ts, now_micros, changes);
        if event.sender == self.mediator {
            if let Some(request_id) = parse_verdict_message_id(&event.message_id) {
                changes.receipts.push(VerdictReceipt {
                    request_id,
                    sequenced_ts: Timestamp::from_micros(event.ts),
                });
            }
        } else {
            for envelope in &event.envelopes {
                self.envelope(event, envelope, now_micros, changes);
            }
        }
        self.forget_decided(event.ts);
        self.last_counter = event.counter;
        self.last_ts = event.ts;
        changes.last_counter = event.counter;
        changes.last_ts = event.ts;
    }

    fn expire(&mut self, ts: i64, now_micros: i64, changes: &mut Changes) {
        while let Some(&(deadline, request_id)) = self.deadlines.first() {
            if deadline >= Timestamp::from_micros(ts) {
                break;
            }
            self.deadlines.pop_first();
            let Some(request) = self.pending.remove(&request_id) else {
                continue;
            };
            let missing: Vec<String> = request
                .confirmers
                .iter()
                .filter(|c| {
                    !matches!(
                        request.responses.get(*c).map(|r| r.decision),
                        Some(Decision::Approve)
                    )
                })
                .cloned()
                .collect();
            tracing::info!(
                request_id,
                deadline = deadline.as_micros(),
                event_ts = ts,
                missing = ?missing,
                "request timed out"
            );
            self.decide(
                &request,
                Outcome::TimedOut {
                    missing_confirmers: missing,
                },
                ts,
                now_micros,
                changes,
            );
        }
    }

    fn forget_decided(&mut self, ts: i64) {
        while let Some(&(deadline, id)) = self.decided_by_deadline.first() {
            if deadline + DECIDED_RETENTION >= Timestamp::from_micros(ts) {
                break;
            }
            self.decided_by_deadline.pop_first();
            self.decided.remove(&id);
        }
    }

    fn envelope(
        &mut self,
        event: &Event,
        envelope: &sequencer_pb::Envelope,
        now_micros: i64,
        changes: &mut Changes,
    ) {
        let message = match pb::DomainMessage::decode(&envelope.content[..]) {
            Ok(m) => m.message,
            Err(error) => {
                tracing::warn!(
                    sender = %event.sender,
                    event_ts = event.ts,
                    %error,
                    "ignored an undecodable envelope"
                );
                changes.envelopes_ignored.push("undecodable");
                return;
            }
        };
        use pb::domain_message::Message;
        match message {
            Some(Message::Topology(signed)) => self.topology_tx(event, signed, changes),
            Some(Message::ConfirmationRequest(request)) => {
                self.request(event, envelope, request, now_micros, changes)
            }
            Some(Message::ConfirmationResponse(signed)) => {
                self.response(event, &signed, now_micros, changes)
            }
            Some(Message::Verdict(_)) | Some(Message::Application(_)) => {
                changes.envelopes_ignored.push("not_for_mediator");
            }
            None => {
                tracing::warn!(
                    sender = %event.sender,
                    event_ts = event.ts,
                    "ignored an envelope without a message"
                );
                changes.envelopes_ignored.push("undecodable");
            }
        }
    }

    /// Topology transactions count only from the domain manager member and with a
    /// valid namespace signature. The sequencer checked both before sequencing, but
    /// the mediator does not take a sequencer's word for the topology (one whose key
    /// was not verified, or was stolen, must not be able to swap mediators or change
    /// the parameters): a transaction failing either check is ignored and counted,
    /// never applied.
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
            &self.domain_id,
            self.namespace_key.as_ref(),
        ) {
            Ok(Some(accepted)) => changes.topology.push(TopologyRecord {
                serial: accepted.serial,
                sequenced_ts: Timestamp::from_micros(event.ts),
                effective_ts: Timestamp::from_micros(accepted.effective_ts),
                counter: event.counter,
                signed: signed.encode_to_vec(),
            }),
            Ok(None) => {}
            Err(ignored) => changes.envelopes_ignored.push(ignored.label()),
        }
    }

    fn permission_at(&self, participant: &str, ts: i64) -> Option<Permission> {
        self.topology
            .participant_at(participant, ts)
            .map(|a| a.permission)
    }

    fn request(
        &mut self,
        event: &Event,
        envelope: &sequencer_pb::Envelope,
        req: pb::ConfirmationRequest,
        now_micros: i64,
        changes: &mut Changes,
    ) {
        if req.mediator != self.mediator {
            tracing::debug!(
                mediator = %req.mediator,
                event_ts = event.ts,
                "ignored a confirmation request for another mediator"
            );
            changes.envelopes_ignored.push("other_mediator");
            return;
        }
        let from_participant = MemberId::parse(&event.sender)
            .map(|m| m.role() == MemberRole::Participant)
            .unwrap_or(false);
        if !from_participant {
            tracing::warn!(
                sender = %event.sender,
                event_ts = event.ts,
                "ignored a confirmation request not sent by a participant"
            );
            changes
                .envelopes_ignored
                .push("request_not_from_participant");
            return;
        }
        let request_id = event.ts;
        let timeout = self
            .topology
            .parameters_at(request_id)
            .participant_response_timeout;
        let deadline = Timestamp::from_micros(request_id) + timeout;
        let was_recipient =
            |m: &str| envelope.broadcast || envelope.recipients.iter().any(|r| r == m);
        let mut recipients: BTreeSet<String> = BTreeSet::new();
        recipients.insert(event.sender.clone());
        for m in req.informees.iter().chain(&req.confirming_participants) {
            if is_participant_id(m) && was_recipient(m) {
                recipients.insert(m.clone());
            }
        }
        let request = Request {
            request_id,
            counter: event.counter,
            submitter: req.submitter.clone(),
            informees: req.informees.clone(),
            confirmers: req.confirming_participants.clone(),
            recipients: recipients.into_iter().collect(),
            root_hash: req.root_hash.clone(),
            deadline,
            responses: BTreeMap::new(),
        };
        changes.new_requests.push(request.clone());
        match self.validate_request(event, &req, &was_recipient) {
            Ok(()) => {
                tracing::debug!(
                    request_id,
                    deadline = deadline.as_micros(),
                    submitter = %req.submitter,
                    confirmers = request.confirmers.len(),
                    "request opened"
                );
                self.deadlines.insert((deadline, request_id));
                self.pending.insert(request_id, request);
            }
            Err(reason) => {
                tracing::info!(request_id, submitter = %req.submitter, %reason, "request rejected by the mediator");
                let outcome = Outcome::Rejected {
                    participant: self.mediator.clone(),
                    reason,
                };
                self.decide(&request, outcome, event.ts, now_micros, changes);
            }
        }
    }

    /// The checks a request must pass; the error is the reject reason. The order
    /// is fixed so the reason is deterministic.
    fn validate_request(
        &self,
        event: &Event,
        req: &pb::ConfirmationRequest,
        was_recipient: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        let ts = event.ts;
        if req.submitter != event.sender {
            return Err(format!(
                "submitter {:?} is not the sender {} of the request",
                req.submitter, event.sender
            ));
        }
        match self.permission_at(&req.submitter, ts) {
            Some(Permission::Submission) => {}
            other => {
                return Err(format!(
                    "submitter {} has no submission permission at the request time (permission: {})",
                    req.submitter,
                    permission_name(other)
                ));
            }
        }
        if req.root_hash.is_empty() {
            return Err("root hash is empty".into());
        }
        check_members("informee", &req.informees, was_recipient)?;
        check_members(
            "confirming participant",
            &req.confirming_participants,
            was_recipient,
        )?;
        for c in &req.confirming_participants {
            let permission = self.permission_at(c, ts);
            if !permission.is_some_and(Permission::can_confirm) {
                return Err(format!(
                    "confirming participant {c} has no confirmation permission at the request time (permission: {})",
                    permission_name(permission)
                ));
            }
        }
        Ok(())
    }

    fn ignore(
        &self,
        changes: &mut Changes,
        reason: IgnoreReason,
        event: &Event,
        request_id: Option<i64>,
        detail: &str,
    ) {
        match reason {
            IgnoreReason::Late | IgnoreReason::Duplicate | IgnoreReason::Decided => {
                tracing::info!(
                    reason = reason.as_str(),
                    sender = %event.sender,
                    event_ts = event.ts,
                    request_id,
                    detail,
                    "ignored confirmation response"
                );
            }
            _ => {
                tracing::warn!(
                    reason = reason.as_str(),
                    sender = %event.sender,
                    event_ts = event.ts,
                    request_id,
                    detail,
                    "ignored confirmation response"
                );
            }
        }
        changes.ignored.push(reason);
    }

    fn response(
        &mut self,
        event: &Event,
        signed: &pb::SignedConfirmationResponse,
        now_micros: i64,
        changes: &mut Changes,
    ) {
        use IgnoreReason as R;
        let response = match pb::ConfirmationResponse::decode(signed.response.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                return self.ignore(
                    changes,
                    R::Malformed,
                    event,
                    None,
                    &format!("undecodable response: {e}"),
                );
            }
        };
        let rid = Some(response.request_id);
        if response.participant != event.sender {
            let detail = format!(
                "response names participant {:?} but was sent by {}",
                response.participant, event.sender
            );
            return self.ignore(changes, R::Mismatch, event, rid, &detail);
        }
        let sender_id = match MemberId::parse(&event.sender) {
            Ok(id) if id.role() == MemberRole::Participant => id,
            _ => {
                return self.ignore(
                    changes,
                    R::NotConfirming,
                    event,
                    rid,
                    "the sender is not a participant",
                );
            }
        };
        if let Err(detail) = verify_signature(signed, &sender_id, &self.domain_id) {
            return self.ignore(changes, R::BadSignature, event, rid, &detail);
        }
        if response.domain_id != self.domain {
            let detail = format!("response is for domain {:?}", response.domain_id);
            return self.ignore(changes, R::Mismatch, event, rid, &detail);
        }
        let decision = match pb::ConfirmationDecision::try_from(response.decision) {
            Ok(pb::ConfirmationDecision::Approve) => Decision::Approve,
            Ok(pb::ConfirmationDecision::Reject) => Decision::Reject,
            _ => {
                let detail = format!(
                    "decision {} is neither approve nor reject",
                    response.decision
                );
                return self.ignore(changes, R::Malformed, event, rid, &detail);
            }
        };
        let request_id = response.request_id;
        let Some(request) = self.pending.get(&request_id) else {
            return match self.decided.get(&request_id) {
                Some(&deadline) if Timestamp::from_micros(event.ts) > deadline => {
                    let detail = format!("sequenced at {} after the deadline {deadline}", event.ts);
                    self.ignore(changes, R::Late, event, rid, &detail)
                }
                Some(_) => self.ignore(
                    changes,
                    R::Decided,
                    event,
                    rid,
                    "the request is already decided",
                ),
                None => self.ignore(changes, R::UnknownRequest, event, rid, "no such request"),
            };
        };
        if !request.confirmers.iter().any(|c| c == &event.sender) {
            return self.ignore(
                changes,
                R::NotConfirming,
                event,
                rid,
                "not a confirming participant of the request",
            );
        }
        if !self
            .permission_at(&event.sender, request_id)
            .is_some_and(Permission::can_confirm)
        {
            return self.ignore(
                changes,
                R::NotConfirming,
                event,
                rid,
                "no confirmation permission at the request time",
            );
        }
        if response.root_hash != request.root_hash {
            return self.ignore(
                changes,
                R::Mismatch,
                event,
                rid,
                "root hash differs from the request's",
            );
        }
        if Timestamp::from_micros(event.ts) > request.deadline {
            let detail = format!(
                "sequenced at {} after the deadline {}",
                event.ts, request.deadline
            );
            return self.ignore(changes, R::Late, event, rid, &detail);
        }
        if request.responses.contains_key(&event.sender) {
            return self.ignore(
                changes,
                R::Duplicate,
                event,
                rid,
                "a response from this participant was already counted",
            );
        }
        let record = ResponseRecord {
            participant: event.sender.clone(),
            ts: Timestamp::from_micros(event.ts),
            decision,
            reason: response.reason.clone(),
        };
        changes.responses.push((request_id, record.clone()));
        let Some(request) = self.pending.get_mut(&request_id) else {
            return;
        };
        request.responses.insert(event.sender.clone(), record);
        let outcome = match decision {
            Decision::Reject => Some(Outcome::Rejected {
                participant: event.sender.clone(),
                reason: response.reason,
            }),
            Decision::Approve
                if request.confirmers.iter().all(|c| {
                    matches!(
                        request.responses.get(c).map(|r| r.decision),
                        Some(Decision::Approve)
                    )
                }) =>
            {
                Some(Outcome::Approved)
            }
            Decision::Approve => None,
        };
        if let Some(outcome) = outcome
            && let Some(request) = self.pending.remove(&request_id)
        {
            self.deadlines.remove(&(request.deadline, request_id));
            self.decide(&request, outcome, event.ts, now_micros, changes);
        }
    }

    fn decide(
        &mut self,
        request: &Request,
        outcome: Outcome,
        decided_ts: i64,
        now_micros: i64,
        changes: &mut Changes,
    ) {
        let signed: pb::SignedVerdict = sign(
            &self.key,
            &self.domain_id,
            &pb::Verdict {
                request_id: request.request_id,
                root_hash: request.root_hash.clone(),
                mediator: self.mediator.clone(),
                domain_id: self.domain.clone(),
                outcome: Some(outcome.to_proto()),
            },
        );
        self.decided.insert(request.request_id, request.deadline);
        self.decided_by_deadline
            .insert((request.deadline, request.request_id));
        changes.decisions.push(DecidedVerdict {
            request_id: request.request_id,
            outcome,
            decided_ts,
            signed_verdict: signed.encode_to_vec(),
            recipients: request.recipients.clone(),
            max_sequencing_ts: Timestamp::from_micros(decided_ts.max(now_micros))
                + self.verdict_ttl,
        });
    }
}

fn permission_name(p: Option<Permission>) -> &'static str {
    p.map_or("not allowlisted", Permission::as_str)
}

fn is_participant_id(s: &str) -> bool {
    MemberId::parse(s).is_ok_and(|m| m.role() == MemberRole::Participant)
}

fn check_members(
    what: &str,
    members: &[String],
    was_recipient: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    if members.is_empty() {
        return Err(format!("the request lists no {what}"));
    }
    let mut seen = HashSet::new();
    for m in members {
        if !is_participant_id(m) {
            return Err(format!("{what} {m:?} is not a participant id"));
        }
        if !seen.insert(m.as_str()) {
            return Err(format!("{what} {m} is listed twice"));
        }
        if !was_recipient(m) {
            return Err(format!("{what} {m} is not a recipient of the request"));
        }
    }
    Ok(())
}

/// Wraps an encoded `SignedVerdict` into the `DomainMessage` envelope content.
pub fn verdict_envelope_content(signed_verdict: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
    let signed = pb::SignedVerdict::decode(signed_verdict)?;
    Ok(pb::DomainMessage {
        message: Some(pb::domain_message::Message::Verdict(signed)),
    }
    .encode_to_vec())
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
pub(crate) mod tests;
