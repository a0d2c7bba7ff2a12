//! Seed inputs for every fuzz target, built from real encoded messages signed with the
//! [`Fixture`](crate::Fixture)'s keys, so the fuzzer starts from inputs that pass the
//! signature checks and reach the protocol logic. `tests/corpus.rs` runs them through their
//! targets and, with `DOMAIN_FUZZ_WRITE_SEEDS=1`, writes them to `fuzz/corpus/<target>/seed-*`.

use std::time::Duration;

use domain_identity::{MemberId, SignaturePurpose, SigningKeyPair};
use domain_proto::common::v1 as common_pb;
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::topology::v1 as topology_pb;
use domain_sequencer_client::to_proto_signature;
use domain_topology::{
    DomainParameters, Mapping, Operation, Permission, TopologyTransaction, TrustLevel,
};
use prost::Message as _;

use crate::{Fixture, GRPC_TYPES};

/// One seed: its target, a file name (without the `seed-` prefix) and its bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub data: Vec<u8>,
}

const T0: i64 = 1_700_000_000_000_000;
const REQUEST_TS: i64 = T0 + 1_000_000;

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let f = Fixture::new();
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, data: Vec<u8>| {
        out.push(Seed {
            target,
            name: name.to_owned(),
            data,
        })
    };

    // --- messages the other seeds are made of --------------------------------------------
    let topology = topology_txs(&f);
    let request = request_message(&f);
    let request_envelope = envelope(&request, &[&f.mediator.0, &f.alice.0, &f.bob.0], false);
    let response = response_message(&f, pb::ConfirmationDecision::Approve);
    let verdict = verdict_message(&f);

    // --- send_request ----------------------------------------------------------------------
    let alice_send = send(
        &f,
        &f.alice.0.to_string(),
        &f.alice.1,
        vec![request_envelope.clone()],
        "req-1",
        false,
    );
    add(
        "send_request",
        "participant-request",
        [&[0u8][..], &alice_send.encode_to_vec()].concat(),
    );
    let time_proof = send(&f, &f.alice.0.to_string(), &f.alice.1, vec![], "tp-1", true);
    add(
        "send_request",
        "time-proof",
        [&[0u8][..], &time_proof.encode_to_vec()].concat(),
    );
    for (i, signed) in topology.iter().enumerate() {
        let env = envelope(
            &pb::domain_message::Message::Topology(signed.clone()),
            &[],
            true,
        );
        let dom_send = send(
            &f,
            &f.domain_manager.to_string(),
            &f.namespace_key,
            vec![env],
            &domain_topology::message_id(i as u64 + 1),
            false,
        );
        add(
            "send_request",
            &format!("domain-manager-topology-{i}"),
            [&[1u8][..], &dom_send.encode_to_vec()].concat(),
        );
    }

    // --- topology ----------------------------------------------------------------------------
    for (i, signed) in topology.iter().enumerate() {
        add("topology", &format!("tx-{i}"), signed.encode_to_vec());
    }

    // --- sequenced_event ---------------------------------------------------------------------
    let event = sequenced(
        &f,
        0,
        REQUEST_TS,
        0,
        &f.alice.0.to_string(),
        std::slice::from_ref(&request_envelope),
        "req-1",
    );
    add("sequenced_event", "request-receipt", event.encode_to_vec());
    let tp = sequenced(
        &f,
        7,
        REQUEST_TS + 5,
        REQUEST_TS,
        &f.alice.0.to_string(),
        &[],
        "",
    );
    add("sequenced_event", "time-proof", tp.encode_to_vec());
    // The sequencer's form since batch signatures: the same two events and a third as one
    // signed batch, each with its inclusion proof.
    let third = sequenced(
        &f,
        8,
        REQUEST_TS + 6,
        REQUEST_TS + 5,
        &f.alice.0.to_string(),
        &[],
        "",
    );
    for (i, e) in batch_signed(&f, &[event.clone(), tp.clone(), third])
        .iter()
        .enumerate()
    {
        add(
            "sequenced_event",
            &format!("batch-leaf-{i}"),
            e.encode_to_vec(),
        );
    }

    // --- mediator_events / participant_events --------------------------------------------------
    let mut stream = Vec::new();
    for (ts, signed) in (T0..).zip(&topology) {
        let env = envelope(
            &pb::domain_message::Message::Topology(signed.clone()),
            &[],
            true,
        );
        stream.push(sequenced(
            &f,
            0,
            ts,
            0,
            &f.domain_manager.to_string(),
            &[env],
            "",
        ));
    }
    let setup = stream.clone();
    stream.push(sequenced(
        &f,
        0,
        REQUEST_TS,
        0,
        &f.alice.0.to_string(),
        std::slice::from_ref(&request_envelope),
        "",
    ));
    let mut mediator_stream = stream.clone();
    let response_env = envelope(&response, &[&f.mediator.0], false);
    mediator_stream.push(sequenced(
        &f,
        0,
        REQUEST_TS + 10,
        0,
        &f.bob.0.to_string(),
        &[response_env],
        "",
    ));
    add(
        "mediator_events",
        "approve",
        length_delimited(&mediator_stream),
    );
    let mut rejected = stream.clone();
    let reject_env = envelope(
        &response_message(&f, pb::ConfirmationDecision::Reject),
        &[&f.mediator.0],
        false,
    );
    rejected.push(sequenced(
        &f,
        0,
        REQUEST_TS + 10,
        0,
        &f.bob.0.to_string(),
        &[reject_env],
        "",
    ));
    add("mediator_events", "reject", length_delimited(&rejected));
    let mut timed_out = stream.clone();
    timed_out.push(sequenced(
        &f,
        0,
        REQUEST_TS + 120_000_000,
        0,
        &f.alice.0.to_string(),
        &[],
        "",
    ));
    add("mediator_events", "timeout", length_delimited(&timed_out));
    add("mediator_events", "topology", length_delimited(&setup));

    let mut participant_stream = stream;
    let verdict_env = envelope(&verdict, &[&f.alice.0, &f.bob.0], false);
    participant_stream.push(sequenced(
        &f,
        0,
        REQUEST_TS + 20,
        0,
        &f.mediator.0.to_string(),
        &[verdict_env],
        "",
    ));
    add(
        "participant_events",
        "verdict",
        length_delimited(&participant_stream),
    );

    // --- grpc_codec ----------------------------------------------------------------------------
    let index = |name: &str| -> u8 {
        let i = GRPC_TYPES
            .iter()
            .position(|(n, _)| *n == name)
            .expect("a listed type");
        u8::try_from(i).expect("fewer than 256 types")
    };
    let codec = |name: &str, chunk: u8, messages: &[Vec<u8>]| {
        let mut data = vec![index(name), chunk];
        for m in messages {
            data.push(0);
            data.extend_from_slice(&u32::try_from(m.len()).expect("small").to_be_bytes());
            data.extend_from_slice(m);
        }
        data
    };
    let challenge = sequencer_pb::ChallengeRequest {
        member: f.alice.0.to_string(),
        public_key: Some(common_pb::PublicKey {
            algorithm: common_pb::KeyAlgorithm::Ed25519 as i32,
            key: f.alice.1.public_key().to_bytes().to_vec(),
        }),
    };
    let auth = sequencer_pb::AuthenticateRequest {
        member: f.alice.0.to_string(),
        nonce: vec![7; 32],
        signature: Some(to_proto_signature(
            &f.alice
                .1
                .sign(SignaturePurpose::AuthChallenge, &f.domain_id, &[7; 32]),
            SignaturePurpose::AuthChallenge,
        )),
    };
    let subscribe = sequencer_pb::SubscribeRequest {
        member: f.alice.0.to_string(),
        from_counter: 3,
    };
    let handshake = sequencer_pb::HandshakeRequest {
        client_protocol_versions: vec![domain_proto::PROTOCOL_VERSION.into()],
    };
    let subscribe_response = sequencer_pb::SubscribeResponse { event: Some(event) };
    // (seed name, message type, chunk size, messages on one stream)
    #[rustfmt::skip]
    let grpc_seeds = [
        ("send", "sequencer_pb.SendRequest", 0, vec![alice_send.encode_to_vec()]),
        ("send-chunked", "sequencer_pb.SendRequest", 7, vec![alice_send.encode_to_vec()]),
        ("challenge", "sequencer_pb.ChallengeRequest", 0, vec![challenge.encode_to_vec()]),
        ("authenticate", "sequencer_pb.AuthenticateRequest", 0, vec![auth.encode_to_vec()]),
        ("subscribe-twice", "sequencer_pb.SubscribeRequest", 3, vec![subscribe.encode_to_vec(), subscribe.encode_to_vec()]),
        ("handshake", "sequencer_pb.HandshakeRequest", 0, vec![handshake.encode_to_vec()]),
        ("subscribe-response", "sequencer_pb.SubscribeResponse", 0, vec![subscribe_response.encode_to_vec()]),
        ("empty-ack", "sequencer_pb.AcknowledgeRequest", 0, vec![Vec::new()]),
    ];
    for (name, message_type, chunk, messages) in grpc_seeds {
        add("grpc_codec", name, codec(message_type, chunk, &messages));
    }

    // --- identity ------------------------------------------------------------------------------
    add("identity", "member-id", f.alice.0.to_string().into_bytes());
    add(
        "identity",
        "domain-manager-id",
        f.domain_manager.to_string().into_bytes(),
    );
    add(
        "identity",
        "domain-id",
        f.domain_id.to_string().into_bytes(),
    );
    add(
        "identity",
        "fingerprint",
        f.alice.1.fingerprint().to_string().into_bytes(),
    );
    add(
        "identity",
        "public-key",
        f.alice.1.public_key().to_bytes().to_vec(),
    );
    let sig = f
        .alice
        .1
        .sign(SignaturePurpose::Submission, &f.domain_id, b"x");
    add(
        "identity",
        "signature",
        [&sig.to_bytes()[..], sig.signer().to_string().as_bytes()].concat(),
    );
    add(
        "identity",
        "verdict-message-id",
        b"verdict-1700000001000000".to_vec(),
    );
    add(
        "identity",
        "traceparent",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
    );
    if let Ok(text) = domain_identity::onboarding::export_identity(
        &f.alice.0,
        &f.alice.1,
        Some("Alice".into()),
        Some("ops@alice.example".into()),
    ) {
        add("identity", "identity-file", text.into_bytes());
    }
    let sequencer_id = MemberId::new(
        domain_identity::MemberRole::Sequencer,
        domain_identity::UniqueId::new("sequencer", *f.sequencer_key.fingerprint())
            .expect("valid name"),
    );
    if let Ok(text) = domain_identity::onboarding::export_bundle(
        &f.domain_id,
        &f.namespace_key,
        domain_identity::onboarding::BundleContents {
            alias: "fuzz".into(),
            endpoints: vec![
                "https://seq1.example:5001".into(),
                "https://seq2.example:5001".into(),
            ],
            sequencer_id,
            sequencer_key: f.sequencer_key.public_key().clone(),
            ca_pem: None,
            system_roots: true,
            protocol_version: domain_proto::PROTOCOL_VERSION.into(),
        },
    ) {
        add("identity", "connection-bundle", text.into_bytes());
    }

    // --- config --------------------------------------------------------------------------------
    let domain = f.domain_id.to_string();
    let sequencer = format!(
        "domain-id = \"{domain}\"\nsigning-key-file = \"/etc/seq/key.pem\"\nmax-request-size = 1048576\n\
         bootstrap-members = [\"{}\"]\n\n[database]\nurl = \"postgres://seq@db/seq\"\n\n\
         [public-api]\nlisten = \"0.0.0.0:5001\"\n\n[pruning]\nretention = \"7days\"\ninterval = \"10m\"\n",
        f.mediator.0
    );
    add("config", "sequencer", sequencer.into_bytes());
    let mediator = format!(
        "name = \"mediator\"\ndomain-id = \"{domain}\"\nsigning-key-file = \"/etc/med/key.pem\"\n\
         sequencers = [\"http://seq1:5001\", \"http://seq2:5001\"]\nverdict-ttl = \"30s\"\n\n\
         [database]\nurl = \"postgres://med@db/med\"\n\n[lease]\nname = \"mediator\"\n\
         \0ops-listen=\"127.0.0.1:9\"\ntime-proof-interval=\"100ms\""
    );
    add("config", "mediator-with-overrides", mediator.into_bytes());
    add(
        "config",
        "participant",
        b"data-dir = \"/var/lib/participant\"\nauto-confirm = \"approve\"\nmax-batch-events = 64\n\n[admin-api]\nlisten = \"127.0.0.1:5011\"\n".to_vec(),
    );
    let domain_manager = format!(
        "domain-name = \"fuzzdomain\"\nnamespace-key-file = \"/etc/dm/namespace.pem\"\n\n\
         [[sequencers]]\npublic-endpoint = \"http://seq1:5001\"\nadmin-endpoint = \"http://seq1:5002\"\n\
         ops-url = \"http://seq1:5003\"\n\n[genesis]\nmediators = [\"{}\"]\n\n\
         [connection]\npublic-endpoints = [\"https://seq.example:5001\"]\nsystem-roots = true\n",
        f.mediator.0
    );
    add("config", "domain-manager", domain_manager.into_bytes());
    out
}

/// The domain's topology: alice may submit, bob may confirm, the mediator and the sequencer
/// are registered, and parameters with a 2 s response timeout.
fn topology_txs(f: &Fixture) -> Vec<topology_pb::SignedTopologyTransaction> {
    let sequencer = MemberId::new(
        domain_identity::MemberRole::Sequencer,
        domain_identity::UniqueId::new("sequencer", *f.sequencer_key.fingerprint())
            .expect("valid name"),
    );
    let mappings = vec![
        Mapping::Participant {
            participant: f.alice.0.clone(),
            permission: Permission::Submission,
            trust_level: TrustLevel::Ordinary,
            public_key: Some(f.alice.1.public_key().clone()),
        },
        Mapping::Participant {
            participant: f.bob.0.clone(),
            permission: Permission::Confirmation,
            trust_level: TrustLevel::Vip,
            public_key: None,
        },
        Mapping::Mediator {
            mediator: f.mediator.0.clone(),
            public_key: Some(f.mediator.1.public_key().clone()),
        },
        Mapping::Sequencer {
            sequencer,
            public_key: Some(f.sequencer_key.public_key().clone()),
        },
        Mapping::Parameters(DomainParameters {
            participant_response_timeout: Duration::from_secs(2),
            ..DomainParameters::default()
        }),
    ];
    mappings
        .into_iter()
        .enumerate()
        .map(|(i, mapping)| {
            TopologyTransaction {
                serial: i as u64 + 1,
                operation: Operation::Replace,
                mapping,
            }
            .sign(&f.domain_id, &f.namespace_key)
        })
        .collect()
}

fn request_message(f: &Fixture) -> pb::domain_message::Message {
    pb::domain_message::Message::ConfirmationRequest(pb::ConfirmationRequest {
        submitter: f.alice.0.to_string(),
        informees: vec![f.alice.0.to_string(), f.bob.0.to_string()],
        confirming_participants: vec![f.bob.0.to_string()],
        root_hash: vec![0xab; 32],
        payload: b"ping".to_vec(),
        mediator: f.mediator.0.to_string(),
    })
}

fn response_message(
    f: &Fixture,
    decision: pb::ConfirmationDecision,
) -> pb::domain_message::Message {
    let response = pb::ConfirmationResponse {
        request_id: REQUEST_TS,
        participant: f.bob.0.to_string(),
        root_hash: vec![0xab; 32],
        decision: decision as i32,
        reason: String::new(),
        domain_id: f.domain_id.to_string(),
    };
    pb::domain_message::Message::ConfirmationResponse(domain_confirmation::sign(
        &f.bob.1,
        &f.domain_id,
        &response,
    ))
}

fn verdict_message(f: &Fixture) -> pb::domain_message::Message {
    let verdict = pb::Verdict {
        request_id: REQUEST_TS,
        root_hash: vec![0xab; 32],
        outcome: Some(pb::verdict::Outcome::Approved(pb::Approved {})),
        mediator: f.mediator.0.to_string(),
        domain_id: f.domain_id.to_string(),
    };
    pb::domain_message::Message::Verdict(domain_confirmation::sign(
        &f.mediator.1,
        &f.domain_id,
        &verdict,
    ))
}

fn envelope(
    message: &pb::domain_message::Message,
    recipients: &[&MemberId],
    broadcast: bool,
) -> sequencer_pb::Envelope {
    sequencer_pb::Envelope {
        content: pb::DomainMessage {
            message: Some(message.clone()),
        }
        .encode_to_vec()
        .into(),
        recipients: recipients.iter().map(ToString::to_string).collect(),
        broadcast,
    }
}

fn send(
    f: &Fixture,
    sender: &str,
    key: &SigningKeyPair,
    envelopes: Vec<sequencer_pb::Envelope>,
    message_id: &str,
    time_proof: bool,
) -> sequencer_pb::SendRequest {
    let submission = sequencer_pb::SubmissionRequest {
        sender: sender.to_owned(),
        message_id: message_id.to_owned(),
        envelopes,
        max_sequencing_time_micros: 0,
        time_proof,
    }
    .encode_to_vec();
    let sig = key.sign(SignaturePurpose::Submission, &f.domain_id, &submission);
    sequencer_pb::SendRequest {
        submission,
        signature: Some(to_proto_signature(&sig, SignaturePurpose::Submission)),
        trace_context: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    }
}

/// An event as the sequencer signs it and delivers it to a recipient of every envelope.
fn sequenced(
    f: &Fixture,
    counter: i64,
    ts: i64,
    previous: i64,
    sender: &str,
    envelopes: &[sequencer_pb::Envelope],
    message_id: &str,
) -> sequencer_pb::SequencedEvent {
    let content = sequencer_pb::SignedEventContent {
        domain_id: f.domain_id.to_string(),
        timestamp_micros: ts,
        sender: sender.to_owned(),
        message_id_hash: digest(message_id.as_bytes()),
        envelope_hashes: envelopes
            .iter()
            .map(|e| digest(&e.encode_to_vec()))
            .collect(),
        time_proof: envelopes.is_empty(),
    }
    .encode_to_vec();
    let sig = f
        .sequencer_key
        .sign(SignaturePurpose::SequencedEvent, &f.domain_id, &content);
    sequencer_pb::SequencedEvent {
        counter,
        timestamp_micros: ts,
        previous_timestamp_micros: previous,
        content,
        signature: Some(to_proto_signature(&sig, SignaturePurpose::SequencedEvent)),
        envelopes: envelopes
            .iter()
            .enumerate()
            .map(|(i, e)| sequencer_pb::DeliveredEnvelope {
                index: u32::try_from(i).expect("few envelopes"),
                envelope: Some(e.clone()),
            })
            .collect(),
        message_id: message_id.to_owned(),
        trace_context: String::new(),
        batch_proof: None,
    }
}

/// `events` re-signed as one batch, the way the sequencer signs (one signature over the
/// Merkle root of their contents, an inclusion proof in each).
fn batch_signed(
    f: &Fixture,
    events: &[sequencer_pb::SequencedEvent],
) -> Vec<sequencer_pb::SequencedEvent> {
    let contents: Vec<&[u8]> = events.iter().map(|e| e.content.as_slice()).collect();
    let Some((payload, proofs)) = domain_identity::batch::prepare(&contents) else {
        return Vec::new();
    };
    let sig = f
        .sequencer_key
        .sign(SignaturePurpose::SequencedBatch, &f.domain_id, &payload);
    events
        .iter()
        .zip(proofs)
        .map(|(e, proof)| sequencer_pb::SequencedEvent {
            signature: Some(to_proto_signature(&sig, SignaturePurpose::SequencedBatch)),
            batch_proof: Some(proof.into()),
            ..e.clone()
        })
        .collect()
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).to_vec()
}

fn length_delimited(events: &[sequencer_pb::SequencedEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        e.encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
    }
    out
}
