//! Unit tests of the pure decision logic: events in, decisions and ignore
//! reasons out, no database and no network.

use std::collections::BTreeMap;
use std::time::Duration;

use domain_identity::UniqueId;
use domain_topology::{DomainParameters, Mapping, Operation, TopologyTransaction, TrustLevel};

use super::*;
use domain_identity::SignaturePurpose;
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::topology::v1 as topology_pb;
use domain_sequencer_client::to_proto_signature;

const T0: i64 = 1_700_000_000_000_000;
/// Topology sent at T0 is effective 250 ms later (default change delay).
const REQ: i64 = T0 + 1_000_000;
const TIMEOUT: i64 = 2_000_000;
const NOW: i64 = T0 + 10_000_000;

/// A member with the key of `seed`.
pub(crate) fn member(role: MemberRole, name: &str, seed: u8) -> (MemberId, Arc<SigningKeyPair>) {
    let key = SigningKeyPair::from_seed(&[seed; 32]);
    let id = MemberId::new(role, UniqueId::new(name, *key.fingerprint()).expect("id"));
    (id, Arc::new(key))
}

/// `participant` allowlisted with `permission`, trust level ordinary, no key.
pub(crate) fn allowlisted(participant: MemberId, permission: Permission) -> Mapping {
    Mapping::Participant {
        participant,
        permission,
        trust_level: TrustLevel::Ordinary,
        public_key: None,
    }
}

struct Harness {
    domain_key: SigningKeyPair,
    domain_id: DomainId,
    mediator: (MemberId, Arc<SigningKeyPair>),
    a: (MemberId, Arc<SigningKeyPair>),
    b: (MemberId, Arc<SigningKeyPair>),
    c: (MemberId, Arc<SigningKeyPair>),
    /// Observation permission only.
    d: (MemberId, Arc<SigningKeyPair>),
    /// Never allowlisted.
    e: (MemberId, Arc<SigningKeyPair>),
    p: Processor,
    counter: i64,
    /// Every event fed, for replays.
    log: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        let domain_key = SigningKeyPair::from_seed(&[1; 32]);
        let domain_id = DomainId::new(UniqueId::new("dom", *domain_key.fingerprint()).expect("id"));
        let mediator = member(MemberRole::Mediator, "med", 2);
        let p = Processor::new(Self::settings(&mediator, &domain_id));
        let mut h = Self {
            domain_key,
            domain_id,
            a: member(MemberRole::Participant, "alice", 3),
            b: member(MemberRole::Participant, "bob", 4),
            c: member(MemberRole::Participant, "carol", 5),
            d: member(MemberRole::Participant, "dave", 6),
            e: member(MemberRole::Participant, "eve", 7),
            mediator,
            p,
            counter: 0,
            log: Vec::new(),
        };
        let txs = vec![
            (h.a.0.clone(), Permission::Submission),
            (h.b.0.clone(), Permission::Confirmation),
            (h.c.0.clone(), Permission::Submission),
            (h.d.0.clone(), Permission::Observation),
        ];
        for (serial, (id, permission)) in txs.into_iter().enumerate() {
            h.topology(
                T0 + serial as i64,
                serial as u64 + 1,
                allowlisted(id, permission),
            );
        }
        h.topology(
            T0 + 10,
            5,
            Mapping::Parameters(DomainParameters {
                participant_response_timeout: Duration::from_micros(TIMEOUT as u64),
                ..DomainParameters::default()
            }),
        );
        h
    }

    fn settings(
        mediator: &(MemberId, Arc<SigningKeyPair>),
        domain_id: &DomainId,
    ) -> ProcessorSettings {
        ProcessorSettings {
            mediator_id: mediator.0.clone(),
            domain_id: domain_id.clone(),
            key: mediator.1.clone(),
            verdict_ttl: std::time::Duration::from_secs(60),
            // The harness's domain key (`Harness::new`).
            namespace_key: Some(SigningKeyPair::from_seed(&[1; 32]).public_key().clone()),
        }
    }

    fn dom(&self) -> String {
        domain_topology::domain_manager_member(&self.domain_id).to_string()
    }

    fn topology(&mut self, ts: i64, serial: u64, mapping: Mapping) -> Changes {
        let tx = TopologyTransaction {
            serial,
            operation: Operation::Replace,
            mapping,
        };
        let signed = tx.sign(&self.domain_id, &self.domain_key);
        let env = sequencer_pb::Envelope {
            content: msg(pb::domain_message::Message::Topology(signed)).into(),
            recipients: vec![],
            broadcast: true,
        };
        let dom = self.dom();
        self.event(ts, &dom, vec![env])
    }

    fn event(&mut self, ts: i64, sender: &str, envelopes: Vec<sequencer_pb::Envelope>) -> Changes {
        self.raw(Event {
            counter: self.counter,
            ts,
            sender: sender.to_string(),
            message_id: String::new(),
            time_proof: false,
            envelopes,
        })
    }

    fn raw(&mut self, event: Event) -> Changes {
        self.counter = event.counter + 1;
        self.log.push(event.clone());
        self.p.process_batch(&[event], NOW)
    }

    fn time_proof(&mut self, ts: i64) -> Changes {
        self.raw(Event {
            counter: self.counter,
            ts,
            sender: self.mediator.0.to_string(),
            message_id: format!("tp-{ts}"),
            time_proof: true,
            envelopes: vec![],
        })
    }

    fn request_msg(
        &self,
        submitter: &MemberId,
        informees: &[&MemberId],
        confirmers: &[&MemberId],
    ) -> pb::ConfirmationRequest {
        pb::ConfirmationRequest {
            submitter: submitter.to_string(),
            informees: informees.iter().map(|m| m.to_string()).collect(),
            confirming_participants: confirmers.iter().map(|m| m.to_string()).collect(),
            root_hash: b"root-hash".to_vec(),
            payload: b"payload".to_vec(),
            mediator: self.mediator.0.to_string(),
        }
    }

    /// Sends `req` from `sender` to the mediator and every informee and confirmer.
    fn request_from(
        &mut self,
        ts: i64,
        sender: &MemberId,
        req: pb::ConfirmationRequest,
    ) -> Changes {
        let mut recipients = vec![self.mediator.0.to_string()];
        recipients.extend(req.informees.iter().cloned());
        recipients.extend(req.confirming_participants.iter().cloned());
        let env = sequencer_pb::Envelope {
            content: msg(pb::domain_message::Message::ConfirmationRequest(req)).into(),
            recipients,
            broadcast: false,
        };
        self.event(ts, &sender.to_string(), vec![env])
    }

    /// alice submits with informees/confirmers alice and bob.
    fn standard_request(&mut self, ts: i64) -> Changes {
        let (a, b) = (self.a.0.clone(), self.b.0.clone());
        let req = self.request_msg(&a, &[&a, &b], &[&a, &b]);
        self.request_from(ts, &a, req)
    }

    fn response_msg(
        &self,
        who: &(MemberId, Arc<SigningKeyPair>),
        request_id: i64,
        decision: pb::ConfirmationDecision,
        reason: &str,
    ) -> pb::ConfirmationResponse {
        pb::ConfirmationResponse {
            request_id,
            participant: who.0.to_string(),
            root_hash: b"root-hash".to_vec(),
            decision: decision as i32,
            reason: reason.to_string(),
            domain_id: self.domain_id.to_string(),
        }
    }

    fn sign(
        &self,
        who: &(MemberId, Arc<SigningKeyPair>),
        response: &pb::ConfirmationResponse,
    ) -> pb::SignedConfirmationResponse {
        domain_confirmation::sign(&who.1, &self.domain_id, response)
    }

    fn send_response(
        &mut self,
        ts: i64,
        sender: &MemberId,
        signed: pb::SignedConfirmationResponse,
    ) -> Changes {
        let env = sequencer_pb::Envelope {
            content: msg(pb::domain_message::Message::ConfirmationResponse(signed)).into(),
            recipients: vec![self.mediator.0.to_string()],
            broadcast: false,
        };
        self.event(ts, &sender.to_string(), vec![env])
    }

    fn respond(
        &mut self,
        ts: i64,
        who: &(MemberId, Arc<SigningKeyPair>),
        request_id: i64,
        decision: pb::ConfirmationDecision,
        reason: &str,
    ) -> Changes {
        let r = self.response_msg(who, request_id, decision, reason);
        let signed = self.sign(who, &r);
        let id = who.0.clone();
        self.send_response(ts, &id, signed)
    }

    fn verdict(&self, d: &DecidedVerdict) -> pb::Verdict {
        let signed =
            pb::SignedVerdict::decode(d.signed_verdict.as_slice()).expect("signed verdict");
        verify_verdict(&signed, &self.mediator.0, &self.domain_id).expect("verdict verifies")
    }
}

fn msg(m: pb::domain_message::Message) -> Vec<u8> {
    pb::DomainMessage { message: Some(m) }.encode_to_vec()
}

use pb::ConfirmationDecision::{Approve as APPROVE, Reject as REJECT};

/// `c` decided nothing and ignored its one response for `reason`.
fn assert_ignored_undecided(c: &Changes, reason: IgnoreReason) {
    assert!(c.decisions.is_empty(), "{reason:?} must not decide: {c:?}");
    assert_eq!(c.ignored, vec![reason]);
}

fn only_decision(c: &Changes) -> &DecidedVerdict {
    assert_eq!(c.decisions.len(), 1, "expected exactly one decision: {c:?}");
    &c.decisions[0]
}

#[test]
fn topology_is_taken_from_the_domain_manager_only() {
    let mut h = Harness::new();
    assert_eq!(h.p.topology().len(), 5);
    assert_eq!(
        h.p.topology()
            .participant_at(&h.a.0.to_string(), REQ)
            .map(|a| a.permission),
        Some(Permission::Submission)
    );
    // The same transaction sent by a participant does not count.
    let tx = TopologyTransaction {
        serial: 6,
        operation: Operation::Replace,
        mapping: allowlisted(h.e.0.clone(), Permission::Submission),
    };
    let signed = tx.sign(&h.domain_id, &h.domain_key);
    let env = sequencer_pb::Envelope {
        content: msg(pb::domain_message::Message::Topology(signed)).into(),
        recipients: vec![],
        broadcast: true,
    };
    let e = h.e.0.to_string();
    let c = h.event(REQ, &e, vec![env]);
    assert!(c.topology.is_empty());
    assert_eq!(
        c.envelopes_ignored,
        vec!["topology_not_from_domain_manager"]
    );
    assert_eq!(h.p.topology().len(), 5);
    assert_eq!(h.p.last_counter(), 5);
}

/// Issue 11 item 12: a topology transaction under the domain manager's sender without a
/// valid namespace signature (what a sequencer with an unverified or stolen key could
/// deliver) is ignored and never applied; the same serial properly signed still counts.
#[test]
fn item_12_topology_with_a_bad_namespace_signature_is_not_applied() {
    let mut h = Harness::new();
    let tx = TopologyTransaction {
        serial: 6,
        operation: Operation::Replace,
        mapping: allowlisted(h.e.0.clone(), Permission::Submission),
    };
    let rogue = SigningKeyPair::from_seed(&[9; 32]);
    let forged = tx.sign(&h.domain_id, &rogue);
    let mut tampered = tx.sign(&h.domain_id, &h.domain_key);
    if let Some(sig) = tampered.signature.as_mut() {
        sig.signature[0] ^= 1;
    }
    let dom = h.dom();
    for bad in [forged, tampered] {
        let env = sequencer_pb::Envelope {
            content: msg(pb::domain_message::Message::Topology(bad)).into(),
            recipients: vec![],
            broadcast: true,
        };
        let c = h.event(REQ, &dom, vec![env]);
        assert!(
            c.topology.is_empty(),
            "a badly signed transaction was applied"
        );
        assert_eq!(c.envelopes_ignored, vec!["topology_bad_signature"]);
    }
    assert_eq!(h.p.topology().len(), 5);
    assert_eq!(
        h.p.topology().participant_at(&h.e.0.to_string(), i64::MAX),
        None
    );
    let c = h.topology(REQ + 1, 6, tx.mapping.clone());
    assert_eq!(c.topology.len(), 1);
    assert_eq!(h.p.topology().len(), 6);
}

#[test]
fn approves_when_every_confirmer_approves() {
    let mut h = Harness::new();
    let c = h.standard_request(REQ);
    assert_eq!(c.new_requests.len(), 1);
    let r = &c.new_requests[0];
    assert_eq!(
        (r.request_id, r.deadline),
        (REQ, Timestamp::from_micros(REQ + TIMEOUT))
    );
    assert!(c.decisions.is_empty());
    assert_eq!(h.p.pending_count(), 1);

    let b = h.b.clone();
    let c = h.respond(REQ + 10, &b, REQ, APPROVE, "");
    assert_eq!(c.responses.len(), 1);
    assert!(
        c.decisions.is_empty(),
        "one approval of two decides nothing"
    );
    let a = h.a.clone();
    let c = h.respond(REQ + 20, &a, REQ, APPROVE, "");
    let d = only_decision(&c);
    assert_eq!(d.outcome, Outcome::Approved);
    assert_eq!(d.decided_ts, REQ + 20);
    assert_eq!(d.max_sequencing_ts.as_micros(), NOW + 60_000_000);
    let mut expected = vec![h.a.0.to_string(), h.b.0.to_string()];
    expected.sort();
    assert_eq!(d.recipients, expected);
    let v = h.verdict(d);
    assert_eq!(v.request_id, REQ);
    assert_eq!(v.root_hash, b"root-hash");
    assert_eq!(v.mediator, h.mediator.0.to_string());
    assert_eq!(v.domain_id, h.domain_id.to_string());
    assert!(matches!(v.outcome, Some(pb::verdict::Outcome::Approved(_))));
    assert_eq!(h.p.pending_count(), 0);
    assert_eq!(verdict_message_id(REQ), format!("verdict-{REQ}"));
    assert_eq!(
        parse_verdict_message_id(&verdict_message_id(REQ)),
        Some(REQ)
    );
}

#[test]
fn first_reject_decides_and_later_responses_are_ignored() {
    let mut h = Harness::new();
    h.standard_request(REQ);
    let b = h.b.clone();
    let c = h.respond(REQ + 10, &b, REQ, REJECT, "insufficient funds");
    let d = only_decision(&c);
    assert_eq!(
        d.outcome,
        Outcome::Rejected {
            participant: h.b.0.to_string(),
            reason: "insufficient funds".into()
        }
    );
    let v = h.verdict(d);
    match v.outcome {
        Some(pb::verdict::Outcome::Rejected(r)) => {
            assert_eq!(r.participant, h.b.0.to_string());
            assert_eq!(r.reason, "insufficient funds");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let a = h.a.clone();
    let c = h.respond(REQ + 20, &a, REQ, APPROVE, "");
    assert_ignored_undecided(&c, IgnoreReason::Decided);
}

#[test]
fn times_out_when_a_time_proof_passes_the_deadline() {
    let mut h = Harness::new();
    h.standard_request(REQ);
    let a = h.a.clone();
    h.respond(REQ + 10, &a, REQ, APPROVE, "");
    // At the deadline itself nothing happens.
    let c = h.time_proof(REQ + TIMEOUT);
    assert!(c.decisions.is_empty());
    let c = h.time_proof(REQ + TIMEOUT + 1);
    let d = only_decision(&c);
    assert_eq!(
        d.outcome,
        Outcome::TimedOut {
            missing_confirmers: vec![h.b.0.to_string()]
        }
    );
    assert_eq!(d.decided_ts, REQ + TIMEOUT + 1);
    assert!(
        matches!(h.verdict(d).outcome, Some(pb::verdict::Outcome::TimedOut(t)) if t.missing_confirmers == vec![h.b.0.to_string()])
    );
    // b answers after the deadline: late, ignored, nothing decided again.
    let b = h.b.clone();
    let c = h.respond(REQ + TIMEOUT + 5, &b, REQ, REJECT, "too late");
    assert_ignored_undecided(&c, IgnoreReason::Late);
}

#[test]
fn a_response_at_the_deadline_counts_and_a_later_one_does_not() {
    let mut h = Harness::new();
    h.standard_request(REQ);
    let a = h.a.clone();
    h.respond(REQ + TIMEOUT, &a, REQ, APPROVE, "");
    // The response event of b comes after the deadline: the timeout is decided
    // first (by that very event), then b's response is late.
    let b = h.b.clone();
    let c = h.respond(REQ + TIMEOUT + 1, &b, REQ, APPROVE, "");
    assert_eq!(c.ignored, vec![IgnoreReason::Late]);
    assert_eq!(
        only_decision(&c).outcome,
        Outcome::TimedOut {
            missing_confirmers: vec![h.b.0.to_string()]
        }
    );
}

#[test]
fn any_later_event_times_out_every_overdue_request_in_deadline_order() {
    let mut h = Harness::new();
    h.standard_request(REQ);
    h.standard_request(REQ + 5);
    // An unrelated event (a topology transaction) long after both deadlines.
    let c = h.topology(
        REQ + 10 * TIMEOUT,
        9,
        allowlisted(h.e.0.clone(), Permission::Observation),
    );
    let ids: Vec<i64> = c.decisions.iter().map(|d| d.request_id).collect();
    assert_eq!(ids, vec![REQ, REQ + 5]);
    assert!(c.decisions.iter().all(|d| matches!(&d.outcome, Outcome::TimedOut { missing_confirmers } if missing_confirmers.len() == 2)));
    assert_eq!(c.topology.len(), 1);
}

#[test]
fn invalid_requests_are_rejected_at_once_with_a_reason() {
    let mut h = Harness::new();
    let (a, b, c, d, e) = (
        h.a.0.clone(),
        h.b.0.clone(),
        h.c.0.clone(),
        h.d.0.clone(),
        h.e.0.clone(),
    );
    let cases: Vec<(MemberId, pb::ConfirmationRequest, &str)> = vec![
        (
            c.clone(),
            h.request_msg(&a, &[&a], &[&a]),
            "is not the sender",
        ),
        (
            b.clone(),
            h.request_msg(&b, &[&b], &[&b]),
            "has no submission permission at the request time (permission: confirmation)",
        ),
        (
            e.clone(),
            h.request_msg(&e, &[&a], &[&a]),
            "(permission: not allowlisted)",
        ),
        (
            a.clone(),
            h.request_msg(&a, &[&a, &d], &[&a, &d]),
            "confirming participant PAR::dave",
        ),
        (
            a.clone(),
            h.request_msg(&a, &[&a, &e], &[&a, &e]),
            "(permission: not allowlisted)",
        ),
        (
            a.clone(),
            h.request_msg(&a, &[], &[&a]),
            "the request lists no informee",
        ),
        (
            a.clone(),
            h.request_msg(&a, &[&a], &[]),
            "the request lists no confirming participant",
        ),
        (
            a.clone(),
            h.request_msg(&a, &[&a, &a], &[&a]),
            "is listed twice",
        ),
        (
            a.clone(),
            {
                let mut r = h.request_msg(&a, &[&a], &[&a]);
                r.informees.push("not-an-id".into());
                r
            },
            "\"not-an-id\" is not a participant id",
        ),
        (
            a.clone(),
            {
                let mut r = h.request_msg(&a, &[&a], &[&a]);
                r.root_hash.clear();
                r
            },
            "root hash is empty",
        ),
    ];
    let mut ts = REQ;
    for (sender, req, expected) in cases {
        ts += 100;
        let changes = h.request_from(ts, &sender, req);
        assert_eq!(changes.new_requests.len(), 1, "{expected}");
        let decision = only_decision(&changes);
        match &decision.outcome {
            Outcome::Rejected {
                participant,
                reason,
            } => {
                assert_eq!(participant, &h.mediator.0.to_string());
                assert!(
                    reason.contains(expected),
                    "reason {reason:?} should contain {expected:?}"
                );
            }
            other => panic!("{expected}: expected a rejection, got {other:?}"),
        }
        assert!(decision.recipients.contains(&sender.to_string()));
        assert_eq!(h.p.pending_count(), 0);
    }

    // An informee the request was not sent to (the sequencer never checked it).
    let mut req = h.request_msg(&a, &[&a, &b], &[&a]);
    req.informees.push(c.to_string());
    let env = sequencer_pb::Envelope {
        content: msg(pb::domain_message::Message::ConfirmationRequest(req)).into(),
        recipients: vec![h.mediator.0.to_string(), a.to_string(), b.to_string()],
        broadcast: false,
    };
    let changes = h.event(ts + 100, &a.to_string(), vec![env]);
    let decision = only_decision(&changes);
    assert!(
        matches!(&decision.outcome, Outcome::Rejected { reason, .. } if reason.contains("is not a recipient of the request"))
    );
    assert!(
        !decision.recipients.contains(&c.to_string()),
        "verdict recipients must be known to the sequencer"
    );
}

#[test]
fn requests_for_other_mediators_or_from_non_participants_are_ignored() {
    let mut h = Harness::new();
    let a = h.a.0.clone();
    let mut req = h.request_msg(&a, &[&a], &[&a]);
    req.mediator = "MED::other::1220aa".into();
    let c = h.request_from(REQ, &a, req);
    assert!(c.new_requests.is_empty() && c.decisions.is_empty());
    assert_eq!(c.envelopes_ignored, vec!["other_mediator"]);

    let req = h.request_msg(&a, &[&a], &[&a]);
    let dom = h.dom();
    let env = sequencer_pb::Envelope {
        content: msg(pb::domain_message::Message::ConfirmationRequest(req)).into(),
        recipients: vec![h.mediator.0.to_string()],
        broadcast: false,
    };
    let c = h.event(REQ + 1, &dom, vec![env]);
    assert!(c.new_requests.is_empty());
    assert_eq!(c.envelopes_ignored, vec!["request_not_from_participant"]);

    let garbage = sequencer_pb::Envelope {
        content: b"\xff\xff not a message".to_vec().into(),
        recipients: vec![h.mediator.0.to_string()],
        broadcast: false,
    };
    let c = h.event(REQ + 2, &a.to_string(), vec![garbage]);
    assert_eq!(c.envelopes_ignored, vec!["undecodable"]);
}

#[test]
fn every_ignore_reason_is_detected_and_never_changes_the_verdict() {
    let mut h = Harness::new();
    h.standard_request(REQ);
    let (a, b, c, e) = (h.a.clone(), h.b.clone(), h.c.clone(), h.e.clone());
    let mut ts = REQ + 1;
    let mut next = || {
        ts += 1;
        ts
    };
    let expect = |h: &mut Harness, changes: Changes, reason: IgnoreReason| {
        assert_ignored_undecided(&changes, reason);
        assert!(changes.responses.is_empty(), "{reason:?} must not count");
        assert_eq!(h.p.pending(REQ).map(|r| r.responses.len()), Some(0));
    };

    // bad_signature: a reject signed with another key but carrying b's key.
    let r = h.response_msg(&b, REQ, REJECT, "forged");
    let mut forged = h.sign(&c, &r);
    forged.signer_key = h.sign(&b, &r).signer_key;
    let ch = h.send_response(next(), &b.0, forged);
    expect(&mut h, ch, IgnoreReason::BadSignature);
    // bad_signature: a corrupted signature.
    let mut corrupted = h.sign(&b, &r);
    if let Some(s) = corrupted.signature.as_mut() {
        s.signature[0] ^= 1;
    }
    let ch = h.send_response(next(), &b.0, corrupted);
    expect(&mut h, ch, IgnoreReason::BadSignature);
    // bad_signature: the signer key of somebody else (fingerprint mismatch).
    let ch = h.send_response(next(), &b.0, h.sign(&c, &r));
    expect(&mut h, ch, IgnoreReason::BadSignature);
    // bad_signature: the right key, the wrong purpose.
    let mut wrong_purpose = h.sign(&b, &r);
    let sig = b.1.sign(
        SignaturePurpose::Verdict,
        &h.domain_id,
        &wrong_purpose.response,
    );
    wrong_purpose.signature = Some(to_proto_signature(
        &sig,
        SignaturePurpose::ConfirmationResponse,
    ));
    let ch = h.send_response(next(), &b.0, wrong_purpose);
    expect(&mut h, ch, IgnoreReason::BadSignature);
    // bad_signature: no signature at all.
    let mut unsigned = h.sign(&b, &r);
    unsigned.signature = None;
    let ch = h.send_response(next(), &b.0, unsigned);
    expect(&mut h, ch, IgnoreReason::BadSignature);

    // not_confirming: carol is allowlisted but not a confirmer of the request.
    let ch = h.respond(next(), &c, REQ, REJECT, "not mine");
    expect(&mut h, ch, IgnoreReason::NotConfirming);
    // unknown_request
    let ch = h.respond(next(), &a, REQ + 999, REJECT, "");
    expect(&mut h, ch, IgnoreReason::UnknownRequest);
    // mismatch: the response names alice but bob sent it (signed by alice).
    let ra = h.response_msg(&a, REQ, REJECT, "");
    let ch = h.send_response(next(), &b.0, h.sign(&a, &ra));
    expect(&mut h, ch, IgnoreReason::Mismatch);
    // mismatch: another root hash.
    let mut other_hash = h.response_msg(&b, REQ, REJECT, "");
    other_hash.root_hash = b"other".to_vec();
    let ch = h.send_response(next(), &b.0, h.sign(&b, &other_hash));
    expect(&mut h, ch, IgnoreReason::Mismatch);
    // mismatch: another domain id in the response.
    let mut other_domain = h.response_msg(&b, REQ, REJECT, "");
    other_domain.domain_id = "other::1220ab".into();
    let ch = h.send_response(next(), &b.0, h.sign(&b, &other_domain));
    expect(&mut h, ch, IgnoreReason::Mismatch);
    // malformed: undecodable response bytes (validly signed).
    let bytes = b"\xff\xff\xff".to_vec();
    let sig =
        b.1.sign(SignaturePurpose::ConfirmationResponse, &h.domain_id, &bytes);
    let garbage = pb::SignedConfirmationResponse {
        response: bytes,
        signature: Some(to_proto_signature(
            &sig,
            SignaturePurpose::ConfirmationResponse,
        )),
        signer_key: h.sign(&b, &r).signer_key,
    };
    let ch = h.send_response(next(), &b.0, garbage);
    expect(&mut h, ch, IgnoreReason::Malformed);
    // malformed: unspecified decision.
    let mut unspecified = h.response_msg(&b, REQ, REJECT, "");
    unspecified.decision = 0;
    let ch = h.send_response(next(), &b.0, h.sign(&b, &unspecified));
    expect(&mut h, ch, IgnoreReason::Malformed);
    // not_confirming: eve is not a participant of the domain at all.
    let ch = h.respond(next(), &e, REQ, REJECT, "");
    expect(&mut h, ch, IgnoreReason::NotConfirming);

    // The genuine answers still decide as if nothing happened.
    let ch = h.respond(next(), &a, REQ, APPROVE, "");
    assert!(ch.decisions.is_empty() && ch.responses.len() == 1);
    // duplicate: alice again (even with a reject) does not count.
    let ch = h.respond(next(), &a, REQ, REJECT, "changed my mind");
    assert_eq!(ch.ignored, vec![IgnoreReason::Duplicate]);
    assert!(ch.decisions.is_empty() && ch.responses.is_empty());
    let ch = h.respond(next(), &b, REQ, APPROVE, "");
    assert_eq!(only_decision(&ch).outcome, Outcome::Approved);
    // decided: bob rejects after the approval, within the deadline.
    let ch = h.respond(next(), &b, REQ, REJECT, "");
    assert_eq!(ch.ignored, vec![IgnoreReason::Decided]);
    assert!(ch.decisions.is_empty());
    // late: after the deadline.
    let ch = h.respond(REQ + TIMEOUT + 1, &b, REQ, REJECT, "");
    assert_eq!(ch.ignored, vec![IgnoreReason::Late]);
    assert!(ch.decisions.is_empty());
}

#[test]
fn permissions_are_taken_at_the_request_time() {
    let mut h = Harness::new();
    h.standard_request(REQ);
    // bob is disabled right after the request (effective 250 ms later): his
    // response still counts, since the request was made while he could confirm.
    h.topology(REQ + 1, 6, allowlisted(h.b.0.clone(), Permission::Disabled));
    let (a, b) = (h.a.clone(), h.b.clone());
    h.respond(REQ + 500_000, &a, REQ, APPROVE, "");
    let c = h.respond(REQ + 600_000, &b, REQ, APPROVE, "");
    assert_eq!(only_decision(&c).outcome, Outcome::Approved);
    // A new request naming bob as a confirmer is now rejected at once.
    let c = h.standard_request(REQ + 700_000);
    assert!(
        matches!(&only_decision(&c).outcome, Outcome::Rejected { reason, .. } if reason.contains("(permission: disabled)"))
    );
}

#[test]
fn own_verdict_receipts_are_reported() {
    let mut h = Harness::new();
    let me = h.mediator.0.to_string();
    let c = h.raw(Event {
        counter: h.counter,
        ts: REQ,
        sender: me,
        message_id: verdict_message_id(REQ - 7),
        time_proof: false,
        envelopes: vec![],
    });
    assert_eq!(
        c.receipts,
        vec![VerdictReceipt {
            request_id: REQ - 7,
            sequenced_ts: domain_time::Timestamp::from_micros(REQ),
        }]
    );
}

/// The persisted state, rebuilt from `Changes` the way the store writes them.
#[derive(Default)]
struct MemStore {
    last_counter: i64,
    last_ts: i64,
    topology: BTreeMap<u64, TopologyRecord>,
    requests: BTreeMap<i64, (Request, Option<DecidedVerdict>)>,
}

impl MemStore {
    fn apply(&mut self, c: &Changes) {
        self.last_counter = c.last_counter;
        self.last_ts = c.last_ts;
        for t in &c.topology {
            self.topology.insert(t.serial, t.clone());
        }
        for r in &c.new_requests {
            assert!(
                self.requests
                    .insert(r.request_id, (r.clone(), None))
                    .is_none()
            );
        }
        for (id, resp) in &c.responses {
            let entry = self
                .requests
                .get_mut(id)
                .expect("response for a stored request");
            entry
                .0
                .responses
                .insert(resp.participant.clone(), resp.clone());
        }
        for d in &c.decisions {
            let entry = self
                .requests
                .get_mut(&d.request_id)
                .expect("decision for a stored request");
            assert!(entry.1.is_none(), "decided twice");
            entry.1 = Some(d.clone());
        }
    }

    fn restored(&self, domain: &str) -> Restored {
        Restored {
            last_counter: self.last_counter,
            last_ts: self.last_ts,
            topology: self
                .topology
                .values()
                .map(|t| {
                    let signed =
                        topology_pb::SignedTopologyTransaction::decode(t.signed.as_slice())
                            .expect("signed");
                    let tx =
                        topology_pb::TopologyTransaction::decode(signed.transaction.as_slice())
                            .expect("tx");
                    SequencedTopology {
                        sequenced_ts: t.sequenced_ts.as_micros(),
                        effective_ts: t.effective_ts.as_micros(),
                        tx: TopologyTransaction::from_proto(&tx, domain).expect("valid"),
                    }
                })
                .collect(),
            pending: self
                .requests
                .values()
                .filter(|(_, d)| d.is_none())
                .map(|(r, _)| r.clone())
                .collect(),
            decided: self
                .requests
                .values()
                .filter(|(_, d)| d.is_some())
                .map(|(r, _)| DecidedDeadline {
                    request_id: r.request_id,
                    deadline: r.deadline,
                })
                .collect(),
        }
    }
}

/// A stream with every kind of step: after a restart at any point from the
/// persisted state, the replica decides exactly what an uninterrupted one does.
#[test]
fn a_restored_processor_decides_exactly_like_an_uninterrupted_one() {
    let mut h = Harness::new();
    let (a, b, c) = (h.a.clone(), h.b.clone(), h.c.clone());
    let mut ts = REQ;
    for i in 0..30i64 {
        ts += 1000;
        let req_id = ts;
        let (ai, bi) = (a.0.clone(), b.0.clone());
        let req = h.request_msg(&ai, &[&ai, &bi], &[&ai, &bi]);
        h.request_from(req_id, &ai, req);
        ts += 1000;
        h.respond(ts, &a, req_id, APPROVE, "");
        match i % 4 {
            0 => {
                ts += 1000;
                h.respond(ts, &b, req_id, APPROVE, "");
            }
            1 => {
                ts += 1000;
                h.respond(ts, &b, req_id, REJECT, "no");
            }
            2 => {
                ts += 1000;
                h.respond(ts, &c, req_id, REJECT, "stray");
            }
            _ => {}
        }
    }
    ts += TIMEOUT + 10;
    h.time_proof(ts);
    let events = h.log.clone();

    let fresh = || Processor::new(Harness::settings(&h.mediator, &h.domain_id));
    let mut reference = fresh();
    let all = reference.process_batch(&events, NOW);
    assert_eq!(all.decisions.len(), 30);
    let by_outcome =
        |d: &[DecidedVerdict], l: &str| d.iter().filter(|v| v.outcome.label() == l).count();
    assert_eq!(by_outcome(&all.decisions, "approved"), 8);
    assert_eq!(by_outcome(&all.decisions, "rejected"), 8);
    assert_eq!(by_outcome(&all.decisions, "timed_out"), 14);

    for split in [1, 7, 40, 61, events.len() - 1] {
        let mut store = MemStore::default();
        let mut first = fresh();
        // Persist in uneven batches, as the service does.
        for chunk in events[..split].chunks(3) {
            store.apply(&first.process_batch(chunk, NOW));
        }
        let mut second = Processor::restore(
            Harness::settings(&h.mediator, &h.domain_id),
            store.restored(&h.domain_id.to_string()),
        );
        store.apply(&second.process_batch(&events[split..], NOW));
        let decided: Vec<&DecidedVerdict> = store
            .requests
            .values()
            .filter_map(|(_, d)| d.as_ref())
            .collect();
        assert_eq!(decided.len(), all.decisions.len(), "split at {split}");
        for d in &all.decisions {
            let (_, got) = &store.requests[&d.request_id];
            assert_eq!(
                got.as_ref(),
                Some(d),
                "split at {split}: request {}",
                d.request_id
            );
        }
        assert_eq!(second.pending_count(), 0);
        assert_eq!(second.last_counter(), reference.last_counter());
    }
}
