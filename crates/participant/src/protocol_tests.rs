use super::*;
use domain_identity::UniqueId;
use domain_identity::{PublicKey, Signature};
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::topology::v1 as topology_pb;
use domain_topology::{Mapping, Operation, TopologyTransaction, TrustLevel};

struct World {
    domain_key: SigningKeyPair,
    domain: DomainId,
    mediator_key: SigningKeyPair,
    mediator: MemberId,
    me_key: Arc<SigningKeyPair>,
    me: MemberId,
    other: MemberId,
}

fn world() -> World {
    let domain_key = SigningKeyPair::from_seed(&[1; 32]);
    let domain = DomainId::new(UniqueId::new("dom", *domain_key.fingerprint()).expect("uid"));
    let mediator_key = SigningKeyPair::from_seed(&[2; 32]);
    let mediator = MemberId::new(
        MemberRole::Mediator,
        UniqueId::new("mediator", *mediator_key.fingerprint()).expect("uid"),
    );
    let me_key = Arc::new(SigningKeyPair::from_seed(&[3; 32]));
    let me = MemberId::new(
        MemberRole::Participant,
        UniqueId::new("alice", *me_key.fingerprint()).expect("uid"),
    );
    let other_key = SigningKeyPair::from_seed(&[4; 32]);
    let other = MemberId::new(
        MemberRole::Participant,
        UniqueId::new("bob", *other_key.fingerprint()).expect("uid"),
    );
    World {
        domain_key,
        domain,
        mediator_key,
        mediator,
        me_key,
        me,
        other,
    }
}

fn processor(w: &World, policy: AutoConfirm, hint: bool) -> Processor {
    Processor::new(ProcessorSettings {
        participant: w.me.clone(),
        domain_id: w.domain.clone(),
        key: w.me_key.clone(),
        policy,
        mediator_hint: hint.then(|| w.mediator.to_string()),
        namespace_key: w.domain_key.public_key().clone(),
    })
}

fn env(message: pb::domain_message::Message) -> sequencer_pb::Envelope {
    sequencer_pb::Envelope {
        content: pb::DomainMessage {
            message: Some(message),
        }
        .encode_to_vec()
        .into(),
        recipients: vec![],
        broadcast: false,
    }
}

fn event(counter: i64, ts: i64, sender: &str, message: pb::domain_message::Message) -> Event {
    Event {
        counter,
        ts,
        sender: sender.to_string(),
        message_id: String::new(),
        time_proof: false,
        envelopes: vec![env(message)],
    }
}

fn request(w: &World, submitter: &MemberId, payload: &[u8]) -> pb::ConfirmationRequest {
    pb::ConfirmationRequest {
        submitter: submitter.to_string(),
        informees: vec![w.other.to_string(), w.me.to_string()],
        confirming_participants: vec![w.other.to_string(), w.me.to_string()],
        root_hash: vec![7; 32],
        payload: payload.to_vec(),
        mediator: w.mediator.to_string(),
    }
}

fn verdict(w: &World, key: &SigningKeyPair, request_id: i64, approve: bool) -> pb::SignedVerdict {
    let verdict = pb::Verdict {
        request_id,
        root_hash: vec![7; 32],
        mediator: w.mediator.to_string(),
        domain_id: w.domain.to_string(),
        outcome: Some(if approve {
            pb::verdict::Outcome::Approved(pb::Approved {})
        } else {
            pb::verdict::Outcome::Rejected(pb::Rejected {
                participant: w.other.to_string(),
                reason: "no".into(),
            })
        }),
    };
    domain_confirmation::sign(key, &w.domain, &verdict)
}

use pb::domain_message::Message as M;

/// Processes `ev` (its encoding left empty) and returns what it changed.
fn feed(p: &mut Processor, ev: &Event) -> Changes {
    let mut c = Changes::default();
    p.process(ev, vec![], &mut c);
    c
}

#[test]
fn confirms_with_a_signed_response_to_the_mediator() {
    let w = world();
    let mut p = processor(&w, AutoConfirm::Payload, true);
    let mut c = Changes::default();
    let ev = event(
        0,
        1_000,
        &w.other.to_string(),
        M::ConfirmationRequest(request(&w, &w.other, b"ping 1")),
    );
    p.process(&ev, vec![1], &mut c);
    assert_eq!(c.new_pending.len(), 1);
    assert_eq!(c.outbox.len(), 1);
    let out = &c.outbox[0];
    assert_eq!(out.message_id, "response-1000-alice");
    assert!(out.approve);
    // Default response timeout is 30 s.
    assert_eq!(out.max_sequencing_micros, 1_000 + 30_000_000);
    let send = sequencer_pb::SendRequest::decode(out.send_request.as_slice()).expect("send");
    let sig = send.signature.expect("sig");
    let sig = Signature::from_parts(&sig.signature, &sig.signer_fingerprint).expect("sig");
    w.me_key
        .public_key()
        .verify(
            SignaturePurpose::Submission,
            &w.domain,
            &send.submission,
            &sig,
        )
        .expect("submission signature");
    let sub = sequencer_pb::SubmissionRequest::decode(send.submission.as_slice()).expect("sub");
    assert_eq!(sub.sender, w.me.to_string());
    assert_eq!(sub.envelopes[0].recipients, vec![w.mediator.to_string()]);
    let msg = pb::DomainMessage::decode(&sub.envelopes[0].content[..]).expect("msg");
    let Some(M::ConfirmationResponse(signed)) = msg.message else {
        panic!("not a response")
    };
    let key = PublicKey::from_bytes(&signed.signer_key.expect("key").key).expect("key");
    assert!(w.me.matches_key(&key));
    let sig = signed.signature.expect("sig");
    assert_eq!(sig.purpose, SignaturePurpose::ConfirmationResponse.as_i32());
    let sig = Signature::from_parts(&sig.signature, &sig.signer_fingerprint).expect("sig");
    key.verify(
        SignaturePurpose::ConfirmationResponse,
        &w.domain,
        &signed.response,
        &sig,
    )
    .expect("response signature");
    let resp = pb::ConfirmationResponse::decode(signed.response.as_slice()).expect("resp");
    assert_eq!(resp.request_id, 1_000);
    assert_eq!(resp.participant, w.me.to_string());
    assert_eq!(resp.decision, pb::ConfirmationDecision::Approve as i32);
    assert_eq!(resp.domain_id, w.domain.to_string());
    assert_eq!(c.last_counter, 0);
    assert_eq!(c.last_event, vec![1]);
}

#[test]
fn payload_policy_rejects_and_off_stays_silent() {
    let w = world();
    let mut p = processor(&w, AutoConfirm::Payload, true);
    let ev = event(
        0,
        5,
        &w.other.to_string(),
        M::ConfirmationRequest(request(&w, &w.other, b"reject this")),
    );
    let c = feed(&mut p, &ev);
    assert!(!c.outbox[0].approve);
    let mut p = processor(&w, AutoConfirm::Off, true);
    let c = feed(&mut p, &ev);
    assert!(c.outbox.is_empty());
    assert_eq!(c.new_pending.len(), 1, "still tracked for the verdict");
}

#[test]
fn requests_not_for_us_or_with_a_forged_submitter_are_ignored() {
    let w = world();
    let mut p = processor(&w, AutoConfirm::Payload, true);
    let mut req = request(&w, &w.other, b"x");
    req.informees = vec![w.other.to_string()];
    req.confirming_participants = vec![w.other.to_string()];
    let c = feed(
        &mut p,
        &event(0, 5, &w.other.to_string(), M::ConfirmationRequest(req)),
    );
    assert!(c.new_pending.is_empty());
    assert_eq!(c.ignored, vec!["not_informee"]);
    let req = request(&w, &w.me, b"x");
    let c = feed(
        &mut p,
        &event(1, 6, &w.other.to_string(), M::ConfirmationRequest(req)),
    );
    assert_eq!(c.ignored, vec!["submitter_mismatch"]);
    assert!(c.outbox.is_empty());
}

#[test]
fn approved_verdicts_commit_and_forged_ones_do_not() {
    let w = world();
    let mut p = processor(&w, AutoConfirm::Payload, true);
    let mut ev = event(
        0,
        100,
        &w.me.to_string(),
        M::ConfirmationRequest(request(&w, &w.me, b"ping x")),
    );
    ev.message_id = "ping-abc".into();
    let c = feed(&mut p, &ev);
    assert_eq!(c.new_pending[0].message_id, "ping-abc");

    // Signed by a key that is not the mediator's.
    let forged = verdict(&w, &w.domain_key, 100, true);
    let c = feed(
        &mut p,
        &event(1, 200, &w.mediator.to_string(), M::Verdict(forged)),
    );
    assert_eq!(c.ignored, vec!["bad_verdict_signature"]);
    assert!(c.committed.is_empty());

    // Valid signature, but not sent by the mediator.
    let good = verdict(&w, &w.mediator_key, 100, true);
    let c = feed(
        &mut p,
        &event(2, 300, &w.other.to_string(), M::Verdict(good.clone())),
    );
    assert_eq!(c.ignored, vec!["bad_verdict"]);

    let c = feed(
        &mut p,
        &event(3, 400, &w.mediator.to_string(), M::Verdict(good.clone())),
    );
    assert_eq!(c.committed.len(), 1);
    assert_eq!(c.committed[0].request_id, 100);
    assert_eq!(c.committed[0].sequenced_ts, 400);
    assert_eq!(c.committed[0].payload, b"ping x");
    assert_eq!(c.removed_pending, vec![100]);
    assert_eq!(c.decided[0].message_id, "ping-abc");
    assert_eq!(c.decided[0].outcome, Outcome::Approved);
    assert_eq!(p.pending_count(), 0);

    // A second copy is for an unknown request now.
    let c = feed(
        &mut p,
        &event(4, 500, &w.mediator.to_string(), M::Verdict(good)),
    );
    assert_eq!(c.ignored, vec!["unknown_request"]);
}

#[test]
fn rejections_are_reported_not_committed() {
    let w = world();
    let mut p = processor(&w, AutoConfirm::Payload, true);
    feed(
        &mut p,
        &event(
            0,
            100,
            &w.other.to_string(),
            M::ConfirmationRequest(request(&w, &w.other, b"x")),
        ),
    );
    let v = verdict(&w, &w.mediator_key, 100, false);
    let c = feed(
        &mut p,
        &event(1, 200, &w.mediator.to_string(), M::Verdict(v)),
    );
    assert!(c.committed.is_empty());
    assert_eq!(c.decided[0].outcome.label(), "rejected");
    assert!(
        c.decided[0]
            .outcome
            .describe()
            .contains("rejected by PAR::bob::")
    );
}

fn topology(w: &World, serial: u64, mapping: Mapping) -> topology_pb::SignedTopologyTransaction {
    TopologyTransaction {
        serial,
        operation: Operation::Replace,
        mapping,
    }
    .sign(&w.domain, &w.domain_key)
}

#[test]
fn topology_only_from_the_domain_manager_and_mediator_from_topology() {
    let w = world();
    let mut p = processor(&w, AutoConfirm::Payload, false);
    assert_eq!(p.mediator_at(0), None);
    let dm = domain_topology::domain_manager_member(&w.domain).to_string();
    let med = topology(
        &w,
        1,
        Mapping::Mediator {
            mediator: w.mediator.clone(),
            public_key: None,
        },
    );
    let c = feed(
        &mut p,
        &event(0, 1_000, &w.other.to_string(), M::Topology(med.clone())),
    );
    assert_eq!(c.ignored, vec!["topology_not_from_domain_manager"]);
    assert_eq!(p.mediator_at(10_000_000), None);
    let c = feed(&mut p, &event(1, 2_000, &dm, M::Topology(med)));
    assert_eq!(c.topology.len(), 1);
    assert_eq!(c.topology[0].effective_ts, 2_000 + 250_000);
    assert_eq!(p.mediator_at(2_000), None, "not effective yet");
    assert_eq!(p.mediator_at(252_000), Some(w.mediator.to_string()));

    // Disabled at request time: no response.
    let state = topology(
        &w,
        2,
        Mapping::Participant {
            participant: w.me.clone(),
            permission: Permission::Observation,
            trust_level: TrustLevel::Ordinary,
            public_key: None,
        },
    );
    feed(&mut p, &event(2, 300_000, &dm, M::Topology(state)));
    let c = feed(
        &mut p,
        &event(
            3,
            600_000,
            &w.other.to_string(),
            M::ConfirmationRequest(request(&w, &w.other, b"x")),
        ),
    );
    assert!(c.outbox.is_empty());
    assert_eq!(c.ignored, vec!["cannot_confirm"]);
}

/// Issue 11 item 12: a topology transaction delivered under the domain manager's sender but
/// without a valid namespace signature (a sequencer with a stolen or unverified key can put
/// any sender on an event) is ignored and never applied; the same serial, properly signed,
/// still counts afterwards.
#[test]
fn item_12_topology_with_a_bad_namespace_signature_is_not_applied() {
    let w = world();
    let mut p = processor(&w, AutoConfirm::Payload, false);
    let dm = domain_topology::domain_manager_member(&w.domain).to_string();
    let tx = TopologyTransaction {
        serial: 1,
        operation: Operation::Replace,
        mapping: Mapping::Mediator {
            mediator: w.mediator.clone(),
            public_key: None,
        },
    };
    // Signed by another key (the fake sequencer's own "namespace").
    let rogue = SigningKeyPair::from_seed(&[9; 32]);
    let forged = tx.sign(&w.domain, &rogue);
    // The right signer's fingerprint on a signature that does not verify.
    let mut tampered = tx.sign(&w.domain, &w.domain_key);
    if let Some(sig) = tampered.signature.as_mut() {
        sig.signature[0] ^= 1;
    }
    // No signature at all.
    let mut unsigned = tx.sign(&w.domain, &w.domain_key);
    unsigned.signature = None;
    for (i, bad) in [forged, tampered, unsigned].into_iter().enumerate() {
        let c = feed(
            &mut p,
            &event(i as i64, 1_000 + i as i64, &dm, M::Topology(bad)),
        );
        assert!(c.topology.is_empty(), "bad transaction {i} was applied");
        assert_eq!(c.ignored, vec!["topology_bad_signature"], "transaction {i}");
    }
    assert_eq!(p.topology().len(), 0);
    assert_eq!(p.mediator_at(10_000_000), None);
    let good = tx.sign(&w.domain, &w.domain_key);
    let c = feed(&mut p, &event(3, 2_000, &dm, M::Topology(good)));
    assert_eq!(c.topology.len(), 1);
    assert_eq!(p.mediator_at(10_000_000), Some(w.mediator.to_string()));
}
