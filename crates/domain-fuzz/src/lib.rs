//! Fuzz harnesses: one function per fuzz target, each feeding arbitrary bytes to the real
//! decoding and verification code a service runs on what a peer (or an operator's file)
//! sends. The libFuzzer targets in `fuzz/fuzz_targets/` are one line each around these;
//! `tests/corpus.rs` replays every file of `fuzz/corpus/<target>/` through them on stable,
//! so every input the fuzzer found interesting (and every crash once fixed) stays a
//! regression test. docs/fuzzing.md explains how to run them.
//!
//! A harness never asserts anything about the outcome: any error is a correct answer to
//! garbage. What it must not do is panic, loop or allocate without bound.
//!
//! Signatures: a mutated input almost never carries a valid signature, so a harness that
//! stopped at the first failed verification would only ever fuzz the envelope. Where a peer
//! signs what it sends (submissions, confirmation responses, verdicts, topology), a malicious
//! peer can sign any bytes, so the harnesses run the code after the verification on the
//! decoded content whatever the verification said; the processors' inputs are "already
//! verified" events by contract, and the harnesses build them as the subscription would.

use std::path::Path;
use std::sync::Arc;

use bytes::{Buf as _, Bytes};
use domain_identity::{DomainId, MemberId, MemberRole, PublicKey, Signature, SigningKeyPair};
use domain_proto::manager::admin::v1 as manager_admin_pb;
use domain_proto::mediator::admin::v1 as mediator_admin_pb;
use domain_proto::participant::admin::v1 as participant_admin_pb;
use domain_proto::sequencer::admin::v1 as sequencer_admin_pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::topology::v1 as topology_pb;
use prost::Message as _;

pub mod seeds;

/// A fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the corpus folder
/// `fuzz/corpus/<name>/`) and its harness.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every fuzz target, in the order the script runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "grpc_codec",
        run: grpc_codec,
    },
    Target {
        name: "send_request",
        run: send_request,
    },
    Target {
        name: "sequenced_event",
        run: sequenced_event,
    },
    Target {
        name: "topology",
        run: topology,
    },
    Target {
        name: "mediator_events",
        run: mediator_events,
    },
    Target {
        name: "participant_events",
        run: participant_events,
    },
    Target {
        name: "identity",
        run: identity,
    },
    Target {
        name: "config",
        run: config,
    },
];

/// The fixed keys and ids every harness and seed uses (deterministic: ed25519 signing is, so
/// the generated seeds are byte-for-byte reproducible except for the timestamps that the
/// onboarding files embed).
pub struct Fixture {
    pub namespace_key: SigningKeyPair,
    pub domain_id: DomainId,
    pub domain_manager: MemberId,
    pub sequencer_key: SigningKeyPair,
    pub mediator: (MemberId, Arc<SigningKeyPair>),
    pub alice: (MemberId, Arc<SigningKeyPair>),
    pub bob: (MemberId, Arc<SigningKeyPair>),
}

fn member(role: MemberRole, name: &str, seed: u8) -> (MemberId, Arc<SigningKeyPair>) {
    let key = SigningKeyPair::from_seed(&[seed; 32]);
    let uid = domain_identity::UniqueId::new(name, *key.fingerprint())
        .expect("the fixture's names are valid");
    (MemberId::new(role, uid), Arc::new(key))
}

impl Fixture {
    pub fn new() -> Self {
        let namespace_key = SigningKeyPair::from_seed(&[1; 32]);
        let domain_id = DomainId::new(
            domain_identity::UniqueId::new("fuzzdomain", *namespace_key.fingerprint())
                .expect("the fixture's domain name is valid"),
        );
        Self {
            domain_manager: domain_topology::domain_manager_member(&domain_id),
            namespace_key,
            domain_id,
            sequencer_key: SigningKeyPair::from_seed(&[2; 32]),
            mediator: member(MemberRole::Mediator, "mediator", 3),
            alice: member(MemberRole::Participant, "alice", 4),
            bob: member(MemberRole::Participant, "bob", 5),
        }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// The fixture's namespace key as a PEM file (in a fresh temporary folder), for the
/// domain manager's configuration checks, which load it.
fn namespace_key_file() -> &'static Path {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("domain-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        let path = dir.join("namespace.pem");
        fixture()
            .namespace_key
            .save_pem(&path)
            .expect("write the namespace key");
        path
    })
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(Fixture::new)
}

/// The sequencer's default `max-request-size` (1 MiB), which is also the gRPC frame limit of
/// its public API.
const MAX_MESSAGE_SIZE: usize = 1 << 20;

/// gRPC codec: tonic's length-prefixed framing (`Streaming`, as the generated servers use
/// it, with the services' frame limit) around [`domain_proto::codec::DomainCodec`]'s decoder,
/// for every request message of every service and the responses the sequencer client decodes.
///
/// Input: `[message type][chunk size][body]`; the body is delivered in chunks of that size
/// (0 = one chunk) so frame headers and payloads split across HTTP/2 data frames.
pub fn grpc_codec(data: &[u8]) {
    let [kind, chunk, body @ ..] = data else {
        return;
    };
    let (_, decode) = GRPC_TYPES[usize::from(*kind) % GRPC_TYPES.len()];
    decode(Bytes::copy_from_slice(body), usize::from(*chunk));
}

macro_rules! grpc_types {
    ($($package:ident::$t:ident),* $(,)?) => {
        &[$((concat!(stringify!($package), ".", stringify!($t)), frames::<$package::$t>)),*]
    };
}

/// The message types [`grpc_codec`] decodes, selected by its first input byte (modulo the
/// length): every request of every service, then what the sequencer client decodes. Names are
/// `<module>.<message>` (e.g. `sequencer_pb.SendRequest`: `domain.sequencer.v1.SendRequest`).
#[allow(clippy::type_complexity)]
pub const GRPC_TYPES: &[(&str, fn(Bytes, usize))] = grpc_types![
    // domain.sequencer.v1.SequencerService
    sequencer_pb::HandshakeRequest,
    sequencer_pb::GetDomainInfoRequest,
    sequencer_pb::ChallengeRequest,
    sequencer_pb::AuthenticateRequest,
    sequencer_pb::SendRequest,
    sequencer_pb::SubscribeRequest,
    sequencer_pb::AcknowledgeRequest,
    // what the sequencer client decodes from a sequencer
    sequencer_pb::HandshakeResponse,
    sequencer_pb::GetDomainInfoResponse,
    sequencer_pb::ChallengeResponse,
    sequencer_pb::AuthenticateResponse,
    sequencer_pb::SendResponse,
    sequencer_pb::SubscribeResponse,
    sequencer_pb::AcknowledgeResponse,
    // admin services (mutual TLS, but still bytes off a socket)
    participant_admin_pb::ConnectMultiRequest,
    sequencer_admin_pb::DisableMemberRequest,
    manager_admin_pb::DisableParticipantRequest,
    manager_admin_pb::StatusRequest,
    manager_admin_pb::ExportConnectionRequest,
    sequencer_admin_pb::ForcePruneRequest,
    manager_admin_pb::GetParametersRequest,
    manager_admin_pb::GetParticipantRequest,
    participant_admin_pb::IdRequest,
    sequencer_admin_pb::ListInstancesRequest,
    manager_admin_pb::ListMediatorsRequest,
    sequencer_admin_pb::ListMembersRequest,
    manager_admin_pb::ListParticipantsRequest,
    manager_admin_pb::ListSequencersRequest,
    mediator_admin_pb::StatusRequest,
    participant_admin_pb::StatusRequest,
    participant_admin_pb::PingRequest,
    sequencer_admin_pb::PruneRequest,
    sequencer_admin_pb::PruningStatusRequest,
    sequencer_admin_pb::RegisterMemberRequest,
    manager_admin_pb::RemoveParticipantRequest,
    manager_admin_pb::SetParametersRequest,
    manager_admin_pb::SetParticipantStateRequest,
];

fn frames<T: prost::Message + Default + Send + 'static>(body: Bytes, chunk: usize) {
    use tonic::codec::Codec as _;
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = if chunk == 0 {
        vec![Ok(http_body::Frame::data(body))]
    } else {
        let mut body = body;
        let mut out = Vec::new();
        while body.has_remaining() {
            let n = chunk.min(body.len());
            out.push(Ok(http_body::Frame::data(body.split_to(n))));
        }
        out
    };
    let stream = http_body_util::StreamBody::new(futures::stream::iter(chunks));
    let mut codec = domain_proto::codec::DomainCodec::<T, T>::default();
    let mut streaming =
        tonic::Streaming::new_request(codec.decoder(), stream, None, Some(MAX_MESSAGE_SIZE));
    futures::executor::block_on(async {
        // Each message is re-encoded: the encoder must take whatever the decoder produced.
        while let Ok(Some(message)) = streaming.message().await {
            let _ = message.encode_to_vec();
        }
    });
}

/// `Send` on the sequencer: the encoded `SendRequest` (as the codec delivers it), checked by
/// [`domain_sequencer::untrusted::decode_send`] for an authenticated participant or the domain
/// manager (first input byte), the signature verified with that member's key, then the shape
/// checks, the topology checks of every envelope (`validate_submission`) and the trace
/// context.
pub fn send_request(data: &[u8]) {
    send_request_accepted(data);
}

/// [`send_request`], returning whether the send passed every check (signature included).
pub fn send_request_accepted(data: &[u8]) -> bool {
    use domain_sequencer::untrusted as service;
    let [who, body @ ..] = data else {
        return false;
    };
    let f = fixture();
    let (sender, key): (String, &PublicKey) = if who & 1 == 0 {
        (f.alice.0.to_string(), f.alice.1.public_key())
    } else {
        (f.domain_manager.to_string(), f.namespace_key.public_key())
    };
    let Ok(req) = sequencer_pb::SendRequest::decode(body) else {
        return false;
    };
    let _ = service::accepted_trace_context(&req.trace_context);
    // Decoding errors come first, as in `validate`; past them, see the module doc on signatures.
    let (sub, verified) = match service::decode_send(&sender, &req, MAX_MESSAGE_SIZE) {
        Ok((sub, signature)) => {
            let verified = key
                .verify_with_domain_str(
                    domain_identity::SignaturePurpose::Submission,
                    &f.domain_id.to_string(),
                    &req.submission,
                    &signature,
                )
                .is_ok();
            (sub, verified)
        }
        Err(_) => match sequencer_pb::SubmissionRequest::decode(req.submission.as_slice()) {
            Ok(sub) => (sub, false),
            Err(_) => return false,
        },
    };
    let shape = service::check_submission_shape(&sub).is_ok();
    let topology = MemberId::parse(&sender).is_ok_and(|m| {
        domain_sequencer::untrusted::validate_submission(
            m.role(),
            key,
            &f.domain_id,
            &sub.envelopes,
        )
        .is_ok()
    });
    verified && shape && topology
}

/// A sequenced event as a member receives it: the sequencer signature
/// (`verify_event`), the per-recipient content checks (`check_event_content`: the
/// `SignedEventContent`, envelope hashes, message id hash) and the stream validator.
pub fn sequenced_event(data: &[u8]) {
    use domain_sequencer_client as client;
    let Ok(event) = sequencer_pb::SequencedEvent::decode(data) else {
        return;
    };
    let f = fixture();
    let _ = client::verify_event(
        f.sequencer_key.public_key(),
        &f.domain_id.to_string(),
        &event,
    );
    let _ = client::check_event_content(&event);
    let mut stream = client::StreamValidator::default();
    let _ = stream.check(&event);
    let _ = stream.check(&event);
    let mut after = client::StreamValidator::starting_after(
        event.counter.saturating_sub(1),
        event.previous_timestamp_micros,
    );
    let _ = after.check(&event);
}

/// A signed topology transaction: the sequencer's verification against the namespace key
/// (`verify_signed`), the members' decoding (`TopologyTransaction::from_signed`, which they
/// trust the sequencer to have verified), the sequencer's re-read of a stored one
/// (`recorded_participant_key`) and the time-indexed state built from it.
pub fn topology(data: &[u8]) {
    use domain_topology::{TopologyState, TopologyTransaction};
    let f = fixture();
    let _ = domain_sequencer::untrusted::recorded_participant_key(data);
    let Ok(signed) = topology_pb::SignedTopologyTransaction::decode(data) else {
        return;
    };
    let _ = domain_topology::verify_signed(&signed, &f.domain_id, f.namespace_key.public_key());
    let Ok(tx) = TopologyTransaction::from_signed(&signed, &f.domain_id.to_string()) else {
        return;
    };
    let _ = tx.to_proto(&f.domain_id.to_string()).encode_to_vec();
    let mut state = TopologyState::new();
    let ts = 1_000_000;
    if let Some(effective) = state.add(ts, tx) {
        for t in [ts, effective, effective.saturating_add(1), i64::MAX] {
            let _ = state.parameters_at(t);
            let _ = state.participants_at(t);
            let _ = state.mediators_at(t);
            let _ = state.participant_at(&f.alice.0.to_string(), t);
            let _ = state.pending_after(t);
        }
    }
}

/// Splits input into the events of a stream: each a length-delimited `SequencedEvent` whose
/// `content` is its `SignedEventContent`, kept as the subscription would after verification:
/// counters made consecutive, events whose timestamp does not increase dropped.
fn verified_events(
    data: &[u8],
) -> Vec<(
    sequencer_pb::SequencedEvent,
    sequencer_pb::SignedEventContent,
)> {
    let mut buf = data;
    let mut out = Vec::new();
    let mut stream = domain_sequencer_client::StreamValidator::default();
    let mut last: Option<(i64, i64)> = None;
    while buf.has_remaining() {
        let Ok(mut event) = sequencer_pb::SequencedEvent::decode_length_delimited(&mut buf) else {
            break;
        };
        let Ok(content) = sequencer_pb::SignedEventContent::decode(event.content.as_slice()) else {
            continue;
        };
        if let Some((counter, ts)) = last {
            event.counter = counter.saturating_add(1);
            event.previous_timestamp_micros = ts;
        }
        if stream.check(&event).is_err() {
            continue;
        }
        last = Some((event.counter, event.timestamp_micros));
        out.push((event, content));
        if out.len() >= 64 {
            break;
        }
    }
    out
}

/// The mediator's confirmation protocol (`Processor`) over a stream of verified events:
/// confirmation requests, signed confirmation responses, topology from the domain manager.
/// The mediator is `fixture().mediator`; its verdicts are signed for real.
pub fn mediator_events(data: &[u8]) {
    mediator_verdicts(data);
}

/// [`mediator_events`], returning the outcome label of every verdict the mediator decided
/// (the seeds' test checks that they reach the decisions).
pub fn mediator_verdicts(data: &[u8]) -> Vec<&'static str> {
    use domain_mediator::protocol::{Event, Processor, ProcessorSettings};
    let f = fixture();
    let mut processor = Processor::new(ProcessorSettings {
        mediator_id: f.mediator.0.clone(),
        domain_id: f.domain_id.clone(),
        key: f.mediator.1.clone(),
        verdict_ttl: std::time::Duration::from_secs(60),
        namespace_key: Some(f.namespace_key.public_key().clone()),
    });
    let mut outcomes = Vec::new();
    for (event, content) in verified_events(data) {
        let event = Event::from_verified(event, &content);
        let changes = processor.process_batch(std::slice::from_ref(&event), event.ts);
        for d in &changes.decisions {
            let _ = domain_mediator::protocol::verdict_envelope_content(&d.signed_verdict);
            outcomes.push(d.outcome.label());
        }
    }
    outcomes
}

/// The reference participant's protocol (`Processor`) over a stream of verified events:
/// requests it is informee or confirmer of, verdicts (decoded and verified with
/// `verify_verdict`), topology from the domain manager. The participant is `fixture().bob`.
pub fn participant_events(data: &[u8]) {
    participant_outcomes(data);
}

/// [`participant_events`], returning the outcome label of every request the participant
/// saw decided (the seeds' test checks that they reach the verdicts).
pub fn participant_outcomes(data: &[u8]) -> Vec<&'static str> {
    use domain_participant::config::AutoConfirm;
    use domain_participant::protocol::{Changes, Event, Processor, ProcessorSettings};
    let f = fixture();
    let mut processor = Processor::new(ProcessorSettings {
        participant: f.bob.0.clone(),
        domain_id: f.domain_id.clone(),
        key: f.bob.1.clone(),
        policy: AutoConfirm::Payload,
        mediator_hint: Some(f.mediator.0.to_string()),
        namespace_key: f.namespace_key.public_key().clone(),
    });
    let mut outcomes = Vec::new();
    for (event, content) in verified_events(data) {
        let encoded = event.encode_to_vec();
        let event = Event::from_verified(&event, &content);
        let mut changes = Changes::default();
        processor.process(&event, encoded, &mut changes);
        let _ = processor.mediator_at(event.ts);
        outcomes.extend(changes.decided.iter().map(|d| d.outcome.label()));
    }
    outcomes
}

/// Identities: member, domain and unique ids and fingerprints as strings (how they arrive in
/// every request), signatures and public keys as bytes, and the onboarding files a peer
/// hands over: a participant's identity file (to the domain operator) and a domain's
/// connection bundle (to a participant).
pub fn identity(data: &[u8]) {
    let _ = PublicKey::from_bytes(data);
    if let Some((sig, fp)) = data.split_first_chunk::<64>() {
        let _ = Signature::from_parts(sig, &String::from_utf8_lossy(fp));
    }
    let _ =
        domain_identity::SignaturePurpose::from_i32(i32::from(data.first().copied().unwrap_or(0)));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = domain_identity::Fingerprint::parse(text);
    let _ = domain_identity::UniqueId::parse(text);
    let _ = DomainId::parse(text);
    let _ = domain_identity::MemberRole::from_prefix(text);
    if let Ok(id) = MemberId::parse(text) {
        let _ = id.matches_key(fixture().alice.1.public_key());
        let _ = MemberId::parse(&id.to_string());
    }
    let _ = domain_identity::onboarding::verify_identity(text);
    if let Ok(bundle) = domain_identity::onboarding::verify_bundle(text) {
        let _ = domain_participant::connection::validate_endpoints(&bundle.body.endpoints);
    }
    let _ = domain_mediator::protocol::parse_verdict_message_id(text);
    let _ = domain_runtime::telemetry::TraceContext::parse_traceparent(text);
}

/// Configuration: TOML text through `domain_runtime::config::load_text` (the loader every
/// service uses) into each service's configuration, then the checks each binary runs before
/// it starts. Input: `<toml>[\0<--set override per line>]`.
pub fn config(data: &[u8]) {
    config_accepted(data);
}

/// [`config`], returning the services whose configuration loaded and passed its checks.
pub fn config_accepted(data: &[u8]) -> Vec<&'static str> {
    use domain_runtime::config::load_text;
    let mut accepted = Vec::new();
    let (toml, overrides) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(toml) = std::str::from_utf8(toml) else {
        return accepted;
    };
    let overrides: Vec<String> = String::from_utf8_lossy(overrides)
        .lines()
        .map(str::to_owned)
        .collect();
    let file = Some((Path::new("fuzz.toml"), toml));
    let no_env = std::iter::empty::<(String, String)>;
    if let Ok(c) =
        load_text::<domain_sequencer::SequencerConfig>(file, no_env(), "SEQUENCER", &overrides)
        && c.pruning.validate().is_ok()
        && c.admin_api.admin_exposure_problem(true).is_none()
        && c.domain_id.is_some()
    {
        accepted.push("sequencer");
    }
    if let Ok(c) =
        load_text::<domain_mediator::config::MediatorConfig>(file, no_env(), "MEDIATOR", &overrides)
        && c.validate().is_ok()
    {
        accepted.push("mediator");
    }
    if let Ok(c) = load_text::<domain_participant::config::ParticipantConfig>(
        file,
        no_env(),
        "PARTICIPANT",
        &overrides,
    ) && c.validate().is_ok()
    {
        accepted.push("participant");
    }
    if let Ok(mut c) = load_text::<domain_manager::DomainManagerConfig>(
        file,
        no_env(),
        "DOMAIN_MANAGER",
        &overrides,
    ) && {
        // Its checks read the files named: the fixture's key, and a missing file for every
        // other one, instead of any path the fuzzer names (`/dev/zero` would hang the
        // harness, not find a bug).
        let missing = || std::path::PathBuf::from("/nonexistent/domain-fuzz.pem");
        c.namespace_key_file = namespace_key_file().to_owned();
        if let Some(connection) = &mut c.connection
            && connection.ca_file.is_some()
        {
            connection.ca_file = Some(missing());
        }
        if let Some(files) = &mut c.sequencer_tls {
            files.ca = missing();
            files.cert = files.cert.as_ref().map(|_| missing());
            files.key = files.key.as_ref().map(|_| missing());
        }
        if let Some(files) = &mut c.admin_api.tls {
            files.cert = missing();
            files.key = missing();
            files.client_ca = files.client_ca.as_ref().map(|_| missing());
        }
        c.validate().is_ok()
    } {
        accepted.push("domain-manager");
    }
    accepted
}
