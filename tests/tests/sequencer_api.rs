//! Acceptance tests of the sequencer's public and admin API against real
//! `sequencer` processes over one PostgreSQL:
//!
//! - a retried send is sequenced once, whichever instance the retry reaches;
//! - bad inputs are rejected with the documented gRPC code and `domain-error-code`
//!   and leave no trace in the database;
//! - a disabled member is cut off at once;
//! - acknowledged events are pruned and resuming below the bound is refused;
//! - health turns NOT_SERVING when the database becomes unreachable.
//!
//! The tests of this file run one at a time (they share 2 cores and measure times).

use domain_e2e::e2e_test;
use domain_e2e::seq_cluster::{node_log, one_instance_env, start_with_db};
use domain_e2e::seq_db;
use domain_e2e::seq_member::{add_participants, send_to, send_within};
use domain_e2e::seq_rpc::challenge_request;
use domain_e2e::seq_rpc::rejected;
use domain_e2e::topology::{Member, new_participant};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_e2e::checks::{
    ERROR_CODE, content_of, db_client, error_code, expect_status, next_event, status_of,
    stream_end, subscribe_error,
};
use domain_e2e::proxy::TcpProxy;
use domain_e2e::{connect, envelope, now_micros};
use domain_identity::{MemberId, MemberRole, SignaturePurpose, SigningKeyPair, UniqueId};
use domain_localnet::config;
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::sequencer::admin::v1 as sequencer_admin_pb;
use domain_proto::sequencer::admin::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use domain_sequencer::SequencerConfig;
use domain_sequencer_client::{
    ClientError, SequencerConnection, StreamValidator, connect_channel, to_proto_signature,
};
use domain_testkit::{pg::PgCluster, process::TestLogs};
use futures::StreamExt as _;
use prost::Message as _;
use prost::bytes::{Buf as _, BufMut as _};
use tokio_postgres::types::FromSqlOwned;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Serialises the tests of this file: each starts its own cluster, and two clusters
/// on 2 cores would distort the measured times.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Row counts of the tables a send or an authentication may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    events: i64,
    recipients: i64,
    dedup: i64,
    tokens: i64,
    nonces: i64,
    members: i64,
}

async fn counts(db: &tokio_postgres::Client) -> anyhow::Result<Counts> {
    let r = db
        .query_one(
            "SELECT (SELECT count(*) FROM seq_events), (SELECT count(*) FROM seq_recipients),
                    (SELECT count(*) FROM seq_dedup), (SELECT count(*) FROM seq_tokens),
                    (SELECT count(*) FROM seq_nonces), (SELECT count(*) FROM seq_members)",
            &[],
        )
        .await?;
    Ok(Counts {
        events: r.get(0),
        recipients: r.get(1),
        dedup: r.get(2),
        tokens: r.get(3),
        nonces: r.get(4),
        members: r.get(5),
    })
}

/// Asserts the database did not change since `before`, and that nothing was
/// recorded under `message_id`.
async fn assert_no_trace(
    db: &tokio_postgres::Client,
    before: Counts,
    message_id: Option<&str>,
    case: &str,
) -> anyhow::Result<()> {
    let after = counts(db).await?;
    ensure!(
        after == before,
        "{case}: database changed: before {before:?}, after {after:?}"
    );
    if let Some(id) = message_id {
        let r = db
            .query_one(
                "SELECT (SELECT count(*) FROM seq_events WHERE message_id = $1),
                        (SELECT count(*) FROM seq_dedup WHERE message_id = $1)",
                &[&id],
            )
            .await?;
        let (events, dedup): (i64, i64) = (r.get(0), r.get(1));
        ensure!(
            events == 0 && dedup == 0,
            "{case}: message id {id} left {events} event(s) and {dedup} dedup row(s)"
        );
    }
    Ok(())
}

fn raw_status_of<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, Status>,
    case: &str,
) -> anyhow::Result<Status> {
    rejected(r.map(tonic::Response::into_inner), case)
}

fn submission(
    sender: &MemberId,
    message_id: &str,
    envelopes: Vec<pb::Envelope>,
) -> pb::SubmissionRequest {
    pb::SubmissionRequest {
        sender: sender.to_string(),
        message_id: message_id.to_string(),
        envelopes,
        max_sequencing_time_micros: now_micros() + 60_000_000,
        time_proof: false,
    }
}

/// Column `column` of `member`'s row in `seq_members`.
async fn member_column<T: FromSqlOwned>(
    db: &tokio_postgres::Client,
    column: &str,
    member: &MemberId,
) -> anyhow::Result<T> {
    let sql = format!("SELECT {column} FROM seq_members WHERE member = $1");
    seq_db::one(db, &sql, &[&member.to_string()]).await
}

/// The configuration of the tests that prune only when asked, up to the acknowledgements.
const PRUNE_ON_DEMAND: &str = "pruning.interval = \"0s\"\npruning.retention = \"0s\"";

/// The start of most tests here: a cluster of `instances` over a fresh database `db_name`
/// with `config`, a client of that database for the checks, and the participants `names`
/// registered.
async fn start_members<const N: usize>(
    logs: TestLogs,
    db_name: &str,
    instances: usize,
    config: &str,
    names: [&str; N],
) -> anyhow::Result<(SequencerCluster, tokio_postgres::Client, [Member; N])> {
    let (cluster, db) = start_with_db(logs, db_name, instances, config, &[]).await?;
    let members = add_participants(&cluster, names).await?;
    Ok((cluster, db, members))
}

/// Disables `member` through the admin API of instance 0.
async fn disable(cluster: &SequencerCluster, member: &MemberId) -> anyhow::Result<()> {
    cluster
        .admin(0)
        .await?
        .disable_member(sequencer_admin_pb::DisableMemberRequest {
            member: member.to_string(),
        })
        .await?;
    Ok(())
}

/// One pruning round, run now through `admin`.
async fn prune(
    admin: &mut SequencerAdminServiceClient<Channel>,
) -> anyhow::Result<sequencer_admin_pb::PruneResponse> {
    Ok(admin
        .prune(sequencer_admin_pb::PruneRequest::default())
        .await?
        .into_inner())
}

async fn channel_to(cluster: &SequencerCluster, i: usize) -> anyhow::Result<Channel> {
    let node = cluster.nodes.get(i).context("no such instance")?;
    Ok(connect_channel(
        &node.public_endpoint(),
        Some(cluster.client_tls()),
        Duration::from_secs(5),
    )
    .await?)
}

/// A codec that sends and receives raw message bytes, so a test can put anything
/// on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;
#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;
#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Calls unary method `path` with `body` as the encoded request message.
async fn raw_unary(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let mut req = tonic::Request::new(body);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not valid metadata"))?;
        req.metadata_mut().insert("authorization", value);
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(req, path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// One `grpc.health.v1.Health/Check` for the whole server (service ""), bounded to 500 ms.
async fn health(channel: &Channel) -> anyhow::Result<i32> {
    let body = HealthCheckRequest {
        service: String::new(),
    }
    .encode_to_vec();
    let call = raw_unary(channel.clone(), "/grpc.health.v1.Health/Check", body, None);
    let bytes = tokio::time::timeout(Duration::from_millis(500), call)
        .await
        .context("health check timed out")?
        .map_err(|st| anyhow::anyhow!("health check failed: {st}"))?;
    Ok(HealthCheckResponse::decode(bytes.as_slice())?.status)
}

/// Polls health every 20 ms until it reports `want`; returns the time it took.
async fn wait_health(channel: &Channel, want: i32, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match health(channel).await {
            Ok(s) if s == want => return Ok(start.elapsed()),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("health did not report {want} within {limit:?}; last: {last}")
}

// ---------------------------------------------------------------------------
// A. retries are deduplicated across instances
// ---------------------------------------------------------------------------

e2e_test! {
    serial retry_on_other_instance_is_deduplicated => retry_on_other_instance_is_deduplicated_body
}

async fn retry_on_other_instance_is_deduplicated_body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, db, [alice, bob]) =
        start_members(logs, "seq_api_dedup", 2, PRUNE_ON_DEMAND, ["alice", "bob"]).await?;
    let a0 = connect(&cluster, 0, &alice).await?;
    let a1 = connect(&cluster, 1, &alice).await?;
    let alice_db: i32 = member_column(&db, "id", &alice.0).await?;

    // Sequential: the retry reaches the other instance after the first send answered.
    let req = a0.sign_submission(&submission(
        &alice.0,
        "retry-1",
        vec![envelope(b"payload retry-1".to_vec(), &[&bob.0])],
    ));
    let first = a0.send_signed(req.clone()).await?;
    let second = a1.send_signed(req.clone()).await?;
    let third = a0.send_signed(req.clone()).await?;
    println!(
        "sequential: first {first:?}, retry on instance 1 {second:?}, retry on instance 0 {third:?}"
    );
    ensure!(!first.deduplicated, "the first send is not a duplicate");
    ensure!(
        second.deduplicated && third.deduplicated,
        "retries are reported as deduplicated"
    );
    ensure!(
        second.sequencing_timestamp_micros == first.sequencing_timestamp_micros
            && third.sequencing_timestamp_micros == first.sequencing_timestamp_micros,
        "a retry answers with the original sequencing timestamp"
    );

    // Concurrent: the same request reaches both instances at once.
    let mut ids = vec!["retry-1".to_string()];
    let mut timestamps = BTreeMap::new();
    timestamps.insert(first.sequencing_timestamp_micros, "retry-1".to_string());
    for k in 0..5 {
        let id = format!("race-{k}");
        let req = a0.sign_submission(&submission(
            &alice.0,
            &id,
            vec![envelope(format!("payload {id}").into_bytes(), &[&bob.0])],
        ));
        let (r0, r1) = tokio::join!(a0.send_signed(req.clone()), a1.send_signed(req));
        let (r0, r1) = (
            r0.with_context(|| format!("{id} on instance 0"))?,
            r1.with_context(|| format!("{id} on instance 1"))?,
        );
        println!("concurrent {id}: instance 0 {r0:?}, instance 1 {r1:?}");
        ensure!(
            r0.sequencing_timestamp_micros == r1.sequencing_timestamp_micros,
            "{id}: both answers carry the same sequencing timestamp"
        );
        ensure!(
            r0.deduplicated != r1.deduplicated,
            "{id}: exactly one of the concurrent sends is the original"
        );
        timestamps.insert(r0.sequencing_timestamp_micros, id.clone());
        ids.push(id);
    }

    // Exactly one stored event, recipient rows and dedup row per (sender, message id).
    for id in &ids {
        let r = db
            .query_one(
                "SELECT (SELECT count(*) FROM seq_events WHERE sender = $1 AND message_id = $2),
                        (SELECT count(*) FROM seq_dedup WHERE sender = $1 AND message_id = $2),
                        (SELECT count(*) FROM seq_recipients r JOIN seq_events e ON e.ts = r.ts
                          WHERE e.sender = $1 AND e.message_id = $2)",
                &[&alice_db, id],
            )
            .await?;
        let (events, dedup, recipients): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        println!(
            "db {id}: {events} event row(s), {dedup} dedup row(s), {recipients} recipient row(s)"
        );
        ensure!(
            events == 1 && dedup == 1,
            "{id}: {events} events and {dedup} dedup rows, expected 1 and 1"
        );
        ensure!(
            recipients == 2,
            "{id}: {recipients} recipient rows, expected 2 (sender and bob)"
        );
    }

    // A marker sent last: everything before it in a stream has been delivered.
    let marker = send_to(&a1, "marker", b"marker", &bob.0).await?;
    timestamps.insert(marker.sequencing_timestamp_micros, "marker".to_string());
    let expected: Vec<Vec<u8>> = timestamps
        .values()
        .map(|id| {
            if id == "marker" {
                b"marker".to_vec()
            } else {
                format!("payload {id}").into_bytes()
            }
        })
        .collect();

    // Bob reads exactly one event per message id, the same on both instances.
    let mut per_instance = Vec::new();
    for i in 0..2 {
        let b = connect(&cluster, i, &bob).await?;
        let mut stream = b.subscribe(0).await?;
        let mut validator = StreamValidator::default();
        let mut events = Vec::new();
        loop {
            let e = next_event(&mut stream, &format!("bob on instance {i}")).await?;
            b.verify_event(&e)?;
            validator.check(&e)?;
            let done = content_of(&e) == b"marker";
            events.push(e);
            if done {
                break;
            }
        }
        let contents: Vec<Vec<u8>> = events.iter().map(content_of).collect();
        println!(
            "bob on instance {i}: {} events: {:?}",
            events.len(),
            contents
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
        );
        ensure!(
            contents == expected,
            "bob on instance {i} got {contents:?}, expected {expected:?}"
        );
        // Nothing else follows (a duplicate would be sequenced after the marker at the latest).
        if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await
        {
            bail!("bob on instance {i}: unexpected item after the marker: {extra:?}");
        }
        per_instance.push(events);
    }
    ensure!(
        per_instance[0] == per_instance[1],
        "both instances deliver identical events"
    );

    // Alice gets exactly one receipt per message id.
    let mut stream = a1.subscribe(0).await?;
    let mut receipts: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let e = next_event(&mut stream, "alice receipts").await?;
        a1.verify_event(&e)?;
        *receipts.entry(e.message_id.clone()).or_default() += 1;
        if e.message_id == "marker" {
            break;
        }
    }
    println!("alice receipts: {receipts:?}");
    ensure!(
        receipts.len() == ids.len() + 1 && receipts.values().all(|n| *n == 1),
        "one receipt per message id: {receipts:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// B. bad inputs are rejected and leave no trace
// ---------------------------------------------------------------------------

e2e_test! {
    serial bad_inputs_are_rejected_without_trace => bad_inputs_are_rejected_without_trace_body
}

/// A member a bad-input case names: alice, bob, or the ghost (a well-formed participant id
/// that was never registered).
#[derive(Debug, Clone, Copy)]
enum Who {
    Alice,
    Bob,
    Ghost,
}

/// Whose token a bad-input request carries. Tokens live 1 s, so the driver authenticates
/// that member right before the case.
#[derive(Debug, Clone, Copy)]
enum Token {
    Alice,
    Bob,
    /// Alice's, left to expire (1.6 s against the token-ttl of 1 s).
    AliceExpired,
}

/// How alice's signed submission is spoiled before it is sent.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    Nothing,
    /// A bit of signature byte 10 flipped.
    SignatureByte,
    /// Its content "hello" changed to "jello" after signing.
    Content,
}

impl Tamper {
    fn apply(self, req: &mut pb::SendRequest) -> anyhow::Result<()> {
        match self {
            Tamper::Nothing => {}
            Tamper::SignatureByte => {
                if let Some(sig) = req.signature.as_mut() {
                    sig.signature[10] ^= 0x01;
                }
            }
            Tamper::Content => {
                let pos = req
                    .submission
                    .windows(5)
                    .position(|w| w == b"hello")
                    .context("content in submission")?;
                req.submission[pos] = b'j';
            }
        }
        Ok(())
    }
}

/// The key a `Challenge` presents.
#[derive(Debug, Clone, Copy)]
enum Key {
    /// The member's own.
    Own,
    /// A fresh key, whose fingerprint is not the member id's.
    Other,
}

/// The request of a bad-input case.
enum BadRequest {
    /// These bytes as the whole body of a `Send` call to instance 0, with alice's token.
    SendBody(Vec<u8>),
    /// A `SendRequest` whose `submission` is these bytes, correctly signed by alice.
    SignedBytes(Vec<u8>),
    /// Alice's signed submission of one envelope with `content` to bob under the case's
    /// message id, spoiled by `tamper`, sent with `token`.
    Submission {
        content: Vec<u8>,
        tamper: Tamper,
        token: Token,
    },
    /// A send of alice's through the client API under the case's message id: one envelope
    /// per `(content, recipients)`, to be sequenced within `within_micros` from now.
    Send {
        envelopes: Vec<(&'static [u8], Vec<Who>)>,
        within_micros: i64,
        token: Token,
    },
    /// A subscription of alice's from counter 0, with `token`.
    Subscribe(Token),
    /// Alice authenticates with a fresh challenge on instance 0 (checked: that stores a
    /// token and consumes the nonce); then the same `AuthenticateRequest` goes to instance
    /// `on`.
    ReplayedAuthenticate { on: usize },
    /// A `Challenge` for `member`, presenting `key`, to instance `on`.
    Challenge { member: Who, key: Key, on: usize },
}

/// One bad input: the request, the status it must be refused with, and what must stay
/// unchanged: the row counts of every table a send or an authentication writes, and (with
/// `message_id`, the id the request carries) any event or dedup row under that id.
struct BadInput {
    name: String,
    request: BadRequest,
    message_id: Option<&'static str>,
    code: Code,
    domain_code: Option<&'static str>,
    /// Text the status message must contain.
    message: Option<&'static str>,
}

/// The cases of `bad_inputs_are_rejected_without_trace`, in the order they run.
fn bad_inputs() -> Vec<BadInput> {
    const FAR: i64 = 60_000_000;
    let hello = |to: Vec<Who>| vec![(&b"hello"[..], to)];
    let hello_submission = |tamper, token| BadRequest::Submission {
        content: b"hello".to_vec(),
        tamper,
        token,
    };
    let send = |envelopes, within_micros, token| BadRequest::Send {
        envelopes,
        within_micros,
        token,
    };
    // (1a) Garbage as the whole request body: the codec rejects it before the handler runs.
    // Plain tonic-prost answers INTERNAL "failed to decode Protobuf message" with no
    // metadata; the generated services use domain_proto::codec::DomainCodec, which remaps
    // that to INVALID_ARGUMENT with code MALFORMED_PROTOBUF (docs/errors.md).
    let garbage_bodies = [
        vec![0xffu8; 16],
        vec![0x0a, 0x50, 0x01],
        vec![0x12, 0x03, 0xff],
    ];
    let mut cases: Vec<BadInput> = garbage_bodies
        .into_iter()
        .enumerate()
        .map(|(n, garbage)| BadInput {
            name: format!("(1a) garbage body #{n} {garbage:02x?}"),
            request: BadRequest::SendBody(garbage),
            message_id: None,
            code: Code::InvalidArgument,
            domain_code: Some("MALFORMED_PROTOBUF"),
            message: Some("failed to decode"),
        })
        .collect();
    cases.extend([
        // (1b) Garbage inside SendRequest.submission, correctly signed.
        BadInput {
            name: "(1b) garbage submission".into(),
            request: BadRequest::SignedBytes(vec![0xffu8; 32]),
            message_id: None,
            code: Code::InvalidArgument,
            domain_code: Some("SEQ_MALFORMED_REQUEST"),
            message: None,
        },
        // (2a) Submission above max-request-size (10000 bytes).
        BadInput {
            name: "(2a) 20 KB submission".into(),
            request: BadRequest::Submission {
                content: vec![7u8; 20_000],
                tamper: Tamper::Nothing,
                token: Token::Alice,
            },
            message_id: Some("too-large"),
            code: Code::ResourceExhausted,
            domain_code: Some("SEQ_REQUEST_TOO_LARGE"),
            message: None,
        },
        // (2b) A message above the gRPC limit (4 MiB): tonic 0.14's framing decoder answers
        // OUT_OF_RANGE ("decoded message length too large") before any codec runs, no domain
        // metadata. NOTE: docs/errors.md and the gRPC spec say RESOURCE_EXHAUSTED; this
        // asserts what the server does today.
        BadInput {
            name: "(2b) 5 MiB message".into(),
            request: BadRequest::Submission {
                content: vec![7u8; 5 * 1024 * 1024],
                tamper: Tamper::Nothing,
                token: Token::Alice,
            },
            message_id: Some("above-grpc-limit"),
            code: Code::OutOfRange,
            domain_code: None,
            message: Some("too large"),
        },
        // (3) Bad signature: a flipped signature byte, and a submission changed after signing.
        BadInput {
            name: "(3a) flipped signature byte".into(),
            request: hello_submission(Tamper::SignatureByte, Token::Alice),
            message_id: Some("bad-signature"),
            code: Code::InvalidArgument,
            domain_code: Some("SEQ_SUBMISSION_SIGNATURE_INVALID"),
            message: None,
        },
        BadInput {
            name: "(3b) submission changed after signing".into(),
            request: hello_submission(Tamper::Content, Token::Alice),
            message_id: Some("bad-signature"),
            code: Code::InvalidArgument,
            domain_code: Some("SEQ_SUBMISSION_SIGNATURE_INVALID"),
            message: None,
        },
        // (4) Bob's token with a submission alice signed for herself.
        BadInput {
            name: "(4) bob's token, alice's submission".into(),
            request: hello_submission(Tamper::Nothing, Token::Bob),
            message_id: Some("other-members-token"),
            code: Code::PermissionDenied,
            domain_code: Some("SEQ_MEMBER_MISMATCH"),
            message: None,
        },
        // (5) A replayed AuthenticateRequest: no second token.
        BadInput {
            name: "(5) replayed nonce, same instance".into(),
            request: BadRequest::ReplayedAuthenticate { on: 0 },
            message_id: None,
            code: Code::Unauthenticated,
            domain_code: Some("SEQ_NONCE_INVALID"),
            message: None,
        },
        BadInput {
            name: "(5) replayed nonce, other instance".into(),
            request: BadRequest::ReplayedAuthenticate { on: 1 },
            message_id: None,
            code: Code::Unauthenticated,
            domain_code: Some("SEQ_NONCE_INVALID"),
            message: None,
        },
        // (6) An expired token (token-ttl 1 s).
        BadInput {
            name: "(6) expired token, send".into(),
            request: send(hello(vec![Who::Bob]), FAR, Token::AliceExpired),
            message_id: Some("expired-token"),
            code: Code::Unauthenticated,
            domain_code: Some("SEQ_TOKEN_INVALID"),
            message: None,
        },
        BadInput {
            name: "(6) expired token, subscribe".into(),
            request: BadRequest::Subscribe(Token::AliceExpired),
            message_id: None,
            code: Code::Unauthenticated,
            domain_code: Some("SEQ_TOKEN_INVALID"),
            message: None,
        },
        // (7) A well-formed recipient that was never registered.
        BadInput {
            name: "(7) unknown recipient".into(),
            request: send(hello(vec![Who::Bob, Who::Ghost]), FAR, Token::Alice),
            message_id: Some("unknown-recipient"),
            code: Code::InvalidArgument,
            domain_code: Some("SEQ_RECIPIENT_UNKNOWN"),
            message: None,
        },
        // (8) An unregistered member cannot even get a challenge: no nonce.
        BadInput {
            name: "(8) unknown member challenge".into(),
            request: BadRequest::Challenge {
                member: Who::Ghost,
                key: Key::Own,
                on: 1,
            },
            message_id: None,
            code: Code::PermissionDenied,
            domain_code: Some("SEQ_MEMBER_UNKNOWN"),
            message: None,
        },
        // (9) Max sequencing time already passed.
        BadInput {
            name: "(9) deadline in the past".into(),
            request: send(hello(vec![Who::Bob]), -1_000_000, Token::Alice),
            message_id: Some("deadline-passed"),
            code: Code::FailedPrecondition,
            domain_code: Some("SEQ_MAX_SEQUENCING_TIME_EXCEEDED"),
            message: None,
        },
        // (10) No envelope with content: empty content, and no envelopes at all.
        BadInput {
            name: "(10a) empty content".into(),
            request: send(vec![(&b""[..], vec![Who::Bob])], FAR, Token::Alice),
            message_id: Some("empty"),
            code: Code::InvalidArgument,
            domain_code: Some("SEQ_EMPTY_SUBMISSION"),
            message: None,
        },
        BadInput {
            name: "(10b) no envelopes".into(),
            request: send(Vec::new(), FAR, Token::Alice),
            message_id: Some("empty"),
            code: Code::InvalidArgument,
            domain_code: Some("SEQ_EMPTY_SUBMISSION"),
            message: None,
        },
        // (11) A challenge with a key whose fingerprint is not the member id's: no nonce.
        BadInput {
            name: "(11) key does not match the id".into(),
            request: BadRequest::Challenge {
                member: Who::Alice,
                key: Key::Other,
                on: 0,
            },
            message_id: None,
            code: Code::Unauthenticated,
            domain_code: Some("SEQ_KEY_MISMATCH"),
            message: None,
        },
    ]);
    cases
}

/// A bad-input request ready to go: built, with the authentications it needs done (they
/// write tokens and nonces, so they come before the counts it must leave unchanged).
enum Ready<'a> {
    RawSend {
        token: String,
        body: Vec<u8>,
    },
    Signed {
        via: &'a SequencerConnection,
        request: pb::SendRequest,
    },
    Send {
        via: &'a SequencerConnection,
        message_id: &'static str,
        envelopes: Vec<pb::Envelope>,
        max_sequencing: i64,
    },
    Subscribe(&'a SequencerConnection),
    Authenticate {
        on: usize,
        request: pb::AuthenticateRequest,
    },
    Challenge {
        on: usize,
        request: pb::ChallengeRequest,
    },
}

/// The cluster, members and connections the bad-input cases run against.
struct BadInputs {
    cluster: SequencerCluster,
    db: tokio_postgres::Client,
    alice: Member,
    bob: Member,
    ghost: Member,
    /// Alice's connection to instance 0.
    a: SequencerConnection,
    /// Bob's connection to instance 1.
    b: SequencerConnection,
}

impl BadInputs {
    fn member(&self, who: Who) -> &Member {
        match who {
            Who::Alice => &self.alice,
            Who::Bob => &self.bob,
            Who::Ghost => &self.ghost,
        }
    }

    /// The connection whose token a request carries, freshly authenticated (and for
    /// `AliceExpired` left until the token expired).
    async fn authenticated(&self, token: Token) -> anyhow::Result<&SequencerConnection> {
        let conn = match token {
            Token::Alice | Token::AliceExpired => &self.a,
            Token::Bob => &self.b,
        };
        conn.authenticate().await?;
        if let Token::AliceExpired = token {
            tokio::time::sleep(Duration::from_millis(1600)).await;
        }
        Ok(conn)
    }

    /// Alice authenticates with a fresh challenge on instance 0, which must store a token
    /// and consume the nonce; returns the `AuthenticateRequest` to replay.
    async fn first_authentication(&self) -> anyhow::Result<pb::AuthenticateRequest> {
        let (alice, key) = &self.alice;
        let mut raw = SequencerServiceClient::new(channel_to(&self.cluster, 0).await?);
        let challenge = raw
            .challenge(challenge_request(alice, key))
            .await?
            .into_inner();
        let sig = key.sign_with_domain_str(
            SignaturePurpose::AuthChallenge,
            &challenge.domain_id,
            &challenge.nonce,
        )?;
        let auth = pb::AuthenticateRequest {
            member: alice.to_string(),
            nonce: challenge.nonce.clone(),
            signature: Some(to_proto_signature(&sig, SignaturePurpose::AuthChallenge)),
        };
        let before = counts(&self.db).await?;
        let token = raw.authenticate(auth.clone()).await?.into_inner();
        ensure!(!token.token.is_empty(), "the first authentication succeeds");
        let after = counts(&self.db).await?;
        ensure!(
            after.tokens == before.tokens + 1 && after.nonces == before.nonces - 1,
            "the first authentication stores a token and consumes the nonce: {before:?} -> {after:?}"
        );
        Ok(auth)
    }

    /// Builds the request of `case` (the request builder of the table).
    async fn prepare(&self, case: &BadInput) -> anyhow::Result<Ready<'_>> {
        let message_id = || case.message_id.context("the request needs a message id");
        Ok(match &case.request {
            BadRequest::SendBody(body) => {
                let a = self.authenticated(Token::Alice).await?;
                let token = a.token().await.context("token")?;
                Ready::RawSend {
                    token,
                    body: body.clone(),
                }
            }
            BadRequest::SignedBytes(bytes) => {
                let via = self.authenticated(Token::Alice).await?;
                let sig = self.alice.1.sign_with_domain_str(
                    SignaturePurpose::Submission,
                    &via.domain_id,
                    bytes,
                )?;
                let request = pb::SendRequest {
                    submission: bytes.clone(),
                    signature: Some(to_proto_signature(&sig, SignaturePurpose::Submission)),
                    trace_context: String::new(),
                };
                Ready::Signed { via, request }
            }
            BadRequest::Submission {
                content,
                tamper,
                token,
            } => {
                let via = self.authenticated(*token).await?;
                let mut request = self.a.sign_submission(&submission(
                    &self.alice.0,
                    message_id()?,
                    vec![envelope(content.clone(), &[&self.bob.0])],
                ));
                println!(
                    "  {}: submission of {} bytes, message of {} bytes",
                    case.name,
                    request.submission.len(),
                    request.encoded_len()
                );
                tamper.apply(&mut request)?;
                Ready::Signed { via, request }
            }
            BadRequest::Send {
                envelopes,
                within_micros,
                token,
            } => {
                let via = self.authenticated(*token).await?;
                let envelopes = envelopes
                    .iter()
                    .map(|(content, to)| {
                        let to: Vec<&MemberId> = to.iter().map(|w| &self.member(*w).0).collect();
                        envelope(*content, &to)
                    })
                    .collect();
                Ready::Send {
                    via,
                    message_id: message_id()?,
                    envelopes,
                    max_sequencing: now_micros() + within_micros,
                }
            }
            BadRequest::Subscribe(token) => Ready::Subscribe(self.authenticated(*token).await?),
            BadRequest::ReplayedAuthenticate { on } => Ready::Authenticate {
                on: *on,
                request: self.first_authentication().await?,
            },
            BadRequest::Challenge { member, key, on } => {
                let (id, own) = self.member(*member);
                let other = SigningKeyPair::generate();
                let key = match key {
                    Key::Own => own.as_ref(),
                    Key::Other => &other,
                };
                Ready::Challenge {
                    on: *on,
                    request: challenge_request(id, key),
                }
            }
        })
    }

    /// Sends a prepared request, which must be refused; the status.
    async fn refusal(&self, ready: Ready<'_>, case: &str) -> anyhow::Result<Status> {
        match ready {
            Ready::RawSend { token, body } => {
                let r = raw_unary(
                    channel_to(&self.cluster, 0).await?,
                    "/domain.sequencer.v1.SequencerService/Send",
                    body,
                    Some(&token),
                )
                .await;
                rejected(r, case)
            }
            Ready::Signed { via, request } => status_of(via.send_signed(request).await, case),
            Ready::Send {
                via,
                message_id,
                envelopes,
                max_sequencing,
            } => status_of(via.send(message_id, envelopes, max_sequencing).await, case),
            Ready::Subscribe(via) => subscribe_error(via, 0, case).await,
            Ready::Authenticate { on, request } => {
                let mut raw = SequencerServiceClient::new(channel_to(&self.cluster, on).await?);
                raw_status_of(raw.authenticate(request).await, case)
            }
            Ready::Challenge { on, request } => {
                let mut raw = SequencerServiceClient::new(channel_to(&self.cluster, on).await?);
                raw_status_of(raw.challenge(request).await, case)
            }
        }
    }

    /// The driver: runs one case. Its request is refused with the case's gRPC code, domain
    /// error code (and message text), and leaves the database unchanged.
    async fn check(&self, case: &BadInput) -> anyhow::Result<()> {
        let name = case.name.as_str();
        let ready = self.prepare(case).await?;
        let before = counts(&self.db).await?;
        let st = self.refusal(ready, name).await?;
        expect_status(&st, case.code, case.domain_code, name)?;
        if let Some(text) = case.message {
            ensure!(st.message().contains(text), "{name}: {}", st.message());
        }
        assert_no_trace(&self.db, before, case.message_id, name).await
    }

    /// Control: the same checks see a valid send.
    async fn control(&self) -> anyhow::Result<()> {
        let (a, b) = (&self.a, &self.b);
        a.authenticate().await?;
        let before = counts(&self.db).await?;
        let sent = send_to(a, "valid", b"hello", &self.bob.0).await?;
        ensure!(!sent.deduplicated);
        let after = counts(&self.db).await?;
        println!("  control: a valid send changed {before:?} -> {after:?}");
        ensure!(
            after.events == before.events + 1
                && after.recipients == before.recipients + 2
                && after.dedup == before.dedup + 1,
            "a valid send writes one event, two recipient rows and one dedup row"
        );
        b.authenticate().await?;
        let mut stream = b.subscribe(0).await?;
        let first = next_event(&mut stream, "bob").await?;
        ensure!(
            content_of(&first) == b"hello" && first.counter == 0,
            "bob's only event is the valid send"
        );
        Ok(())
    }
}

async fn bad_inputs_are_rejected_without_trace_body(logs: TestLogs) -> anyhow::Result<()> {
    // Tokens live 1 s (case 6), so every case re-authenticates right before it.
    let config = "max-request-size = 10000\nauth.token-ttl = \"1s\"\npruning.interval = \"0s\"";
    let (cluster, db, [alice, bob]) =
        start_members(logs, "seq_api_bad", 2, config, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let b = connect(&cluster, 1, &bob).await?;
    let bad = BadInputs {
        ghost: new_participant("ghost")?,
        cluster,
        db,
        alice,
        bob,
        a,
        b,
    };
    for case in bad_inputs() {
        bad.check(&case)
            .await
            .with_context(|| format!("bad input {}", case.name))?;
    }
    bad.control().await.context("control: a valid send")
}

// ---------------------------------------------------------------------------
// C. a disabled member is cut off
// ---------------------------------------------------------------------------

e2e_test! {
    serial disabled_member_is_cut_off => disabled_member_is_cut_off_body
}

async fn disabled_member_is_cut_off_body(logs: TestLogs) -> anyhow::Result<()> {
    let names = ["alice", "bob", "carol"];
    let (cluster, db, [alice, bob, carol]) =
        start_members(logs, "seq_api_disable", 2, PRUNE_ON_DEMAND, names).await?;
    let a0 = connect(&cluster, 0, &alice).await?;
    let a1 = connect(&cluster, 1, &alice).await?;
    let b0 = connect(&cluster, 0, &bob).await?;
    let b1 = connect(&cluster, 1, &bob).await?;

    // Alice follows her stream live on both instances.
    let mut s0 = a0.subscribe(0).await?;
    let mut s1 = a1.subscribe(0).await?;
    send_to(&b0, "hi", b"hi alice", &alice.0).await?;
    for (i, s) in [&mut s0, &mut s1].into_iter().enumerate() {
        let e = next_event(s, &format!("alice live on instance {i}")).await?;
        ensure!(e.counter == 0 && content_of(&e) == b"hi alice");
    }

    let t0 = Instant::now();
    disable(&cluster, &alice.0).await?;
    let admin_done = t0.elapsed();
    let (r0, r1) = tokio::join!(
        stream_end(s0, "alice on instance 0".into()),
        stream_end(s1, "alice on instance 1".into())
    );
    let ((st0, at0), (st1, at1)) = (r0?, r1?);
    let (d0, d1) = (at0 - t0, at1 - t0);
    println!(
        "disable call took {admin_done:?}; alice's stream ended after {d0:?} on instance 0 (the admin's) and {d1:?} on instance 1"
    );
    expect_status(
        &st0,
        Code::PermissionDenied,
        Some("SEQ_MEMBER_DISABLED"),
        "stream on instance 0",
    )?;
    expect_status(
        &st1,
        Code::PermissionDenied,
        Some("SEQ_MEMBER_DISABLED"),
        "stream on instance 1",
    )?;
    let bound = Duration::from_millis(1500);
    ensure!(
        d0 <= bound && d1 <= bound,
        "streams must end within ~1 s (bound {bound:?}): {d0:?}, {d1:?}"
    );

    let r = db
        .query_one(
            "SELECT enabled, (SELECT count(*) FROM seq_tokens WHERE member = $1) FROM seq_members WHERE member = $1",
            &[&alice.0.to_string()],
        )
        .await?;
    let (enabled, tokens): (bool, i64) = (r.get(0), r.get(1));
    ensure!(
        !enabled && tokens == 0,
        "alice disabled ({enabled}) with her tokens revoked ({tokens} left)"
    );

    // Her token no longer works, on either instance, for any call.
    let before = counts(&db).await?;
    for (i, a) in [&a0, &a1].into_iter().enumerate() {
        let checks = [
            (
                "send",
                status_of(
                    send_to(a, &format!("after-disable-{i}"), b"x", &bob.0).await,
                    "send",
                )?,
            ),
            ("subscribe", subscribe_error(a, 1, "subscribe").await?),
            (
                "acknowledge",
                status_of(a.acknowledge(now_micros()).await, "acknowledge")?,
            ),
        ];
        for (call, st) in checks {
            let case = format!("alice's token on instance {i}: {call}");
            match st.code() {
                Code::Unauthenticated => {
                    expect_status(&st, Code::Unauthenticated, Some("SEQ_TOKEN_INVALID"), &case)?
                }
                _ => expect_status(
                    &st,
                    Code::PermissionDenied,
                    Some("SEQ_MEMBER_DISABLED"),
                    &case,
                )?,
            }
        }
        // She cannot get a new token either.
        let st = status_of(a.authenticate().await, "challenge")?;
        expect_status(
            &st,
            Code::PermissionDenied,
            Some("SEQ_MEMBER_DISABLED"),
            &format!("alice's challenge on instance {i}"),
        )?;
    }

    // Nobody can address her any more.
    for (i, b) in [&b0, &b1].into_iter().enumerate() {
        let id = format!("to-disabled-{i}");
        let st = status_of(
            b.send(
                &id,
                vec![envelope(b"x".to_vec(), &[&carol.0, &alice.0])],
                now_micros() + 60_000_000,
            )
            .await,
            "send",
        )?;
        expect_status(
            &st,
            Code::FailedPrecondition,
            Some("SEQ_RECIPIENT_DISABLED"),
            &format!("bob addresses alice via instance {i}"),
        )?;
        assert_no_trace(&db, before, Some(&id), "sends to a disabled member").await?;
    }
    assert_no_trace(&db, before, Some("after-disable-0"), "alice's sends").await?;
    assert_no_trace(&db, before, Some("after-disable-1"), "alice's sends").await?;

    // Others are unaffected.
    send_to(&b1, "to-carol", b"x", &carol.0).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// D. acknowledged events are pruned
// ---------------------------------------------------------------------------

e2e_test! {
    serial acknowledged_events_are_pruned => acknowledged_events_are_pruned_body
}

async fn acknowledged_events_are_pruned_body(logs: TestLogs) -> anyhow::Result<()> {
    const N: usize = 20;
    const K: usize = 9; // everyone acknowledges the timestamp of bob's event K
    let (cluster, db, [alice, bob]) =
        start_members(logs, "seq_api_prune", 2, PRUNE_ON_DEMAND, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let b = connect(&cluster, 1, &bob).await?;

    for i in 0..N {
        a.send(
            &format!("m-{i}"),
            vec![envelope(format!("event {i}").into_bytes(), &[&bob.0])],
            now_micros() + 60_000_000,
        )
        .await?;
    }
    let read_all = |conn: SequencerConnection, from: i64, n: usize, what: &'static str| async move {
        let mut stream = conn.subscribe(from).await?;
        let mut events = Vec::new();
        for _ in 0..n {
            let e = next_event(&mut stream, what).await?;
            conn.verify_event(&e)?;
            events.push(e);
        }
        anyhow::Ok(events)
    };
    let bob_events = read_all(b.clone(), 0, N, "bob before pruning").await?;
    let alice_events = read_all(a.clone(), 0, N, "alice before pruning").await?;
    for (i, e) in bob_events.iter().enumerate() {
        ensure!(
            e.counter == i as i64 && content_of(e) == format!("event {i}").into_bytes(),
            "bob's event {i}"
        );
    }
    let ack = bob_events[K].timestamp_micros;
    ensure!(
        alice_events[K].timestamp_micros == ack,
        "alice's receipts have the same timestamps"
    );

    let mut admin = cluster.admin(1).await?;
    // Only alice acknowledged: nothing may go.
    a.acknowledge(ack).await?;
    let partial = prune(&mut admin).await?;
    println!("prune with only alice's acknowledgement: {partial:?}");
    ensure!(
        partial.events_deleted == 0,
        "events bob did not acknowledge were pruned: {partial:?}"
    );
    ensure!(
        db.query_one("SELECT count(*) FROM seq_events", &[])
            .await?
            .get::<_, i64>(0)
            == N as i64,
        "all events still stored"
    );

    b.acknowledge(ack).await?;
    let pruned = prune(&mut admin).await?;
    println!("prune after everyone acknowledged {ack}: {pruned:?}");
    ensure!(pruned.events_deleted > 0, "nothing pruned");
    ensure!(
        pruned.events_deleted == (K + 1) as u64,
        "expected the {} acknowledged events pruned: {pruned:?}",
        K + 1
    );
    // Both are done with everything up to just below their next unacknowledged event.
    let next = bob_events[K + 1].timestamp_micros;
    ensure!(
        pruned.pruned_below_micros == next - 1,
        "pruning bound {} != just below the first unacknowledged event {next}",
        pruned.pruned_below_micros
    );
    let r = db
        .query_one("SELECT count(*), min(ts) FROM seq_events", &[])
        .await?;
    let (left, min_ts): (i64, Option<i64>) = (r.get(0), r.get(1));
    println!("{left} events left, oldest at {min_ts:?}");
    ensure!(
        left == (N - K - 1) as i64 && min_ts.is_some_and(|t| t > ack),
        "only unacknowledged events remain"
    );

    // Below the bound: refused, on both instances, for both members.
    for i in 0..2 {
        let b_i = connect(&cluster, i, &bob).await?;
        for from in [0, K as i64] {
            let st = subscribe_error(&b_i, from, "pruned").await?;
            expect_status(
                &st,
                Code::OutOfRange,
                Some("SEQ_EVENTS_PRUNED"),
                &format!("bob from {from} on instance {i}"),
            )?;
        }
        let a_i = connect(&cluster, i, &alice).await?;
        let st = subscribe_error(&a_i, 0, "pruned").await?;
        expect_status(
            &st,
            Code::OutOfRange,
            Some("SEQ_EVENTS_PRUNED"),
            &format!("alice from 0 on instance {i}"),
        )?;
    }

    // From the first retained counter: exactly the events delivered before pruning.
    for i in 0..2 {
        let b_i = connect(&cluster, i, &bob).await?;
        let again = read_all(b_i, (K + 1) as i64, N - K - 1, "bob after pruning").await?;
        ensure!(
            again.as_slice() == &bob_events[K + 1..],
            "bob's retained events differ after pruning (instance {i})"
        );
        let a_i = connect(&cluster, i, &alice).await?;
        let again = read_all(a_i, (K + 1) as i64, N - K - 1, "alice after pruning").await?;
        ensure!(
            again.as_slice() == &alice_events[K + 1..],
            "alice's retained receipts differ after pruning (instance {i})"
        );
        println!(
            "instance {i}: counters {}..{} re-delivered identically",
            K + 1,
            N - 1
        );
    }
    // The stream continues normally after the retained events.
    let mut stream = b.subscribe((K + 1) as i64).await?;
    let mut validator = StreamValidator::starting_after(K as i64, ack);
    for _ in K + 1..N {
        validator.check(&next_event(&mut stream, "bob").await?)?;
    }
    let last = send_to(&a, "after-prune", b"after prune", &bob.0).await?;
    let e = next_event(&mut stream, "bob live after pruning").await?;
    validator.check(&e)?;
    ensure!(
        e.counter == N as i64
            && e.timestamp_micros == last.sequencing_timestamp_micros
            && content_of(&e) == b"after prune"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// E. health follows database reachability
// ---------------------------------------------------------------------------

/// Restarts instance `i` with its database reached through a new [`TcpProxy`].
async fn restart_behind_proxy(
    cluster: &mut SequencerCluster,
    i: usize,
    url: &str,
) -> anyhow::Result<TcpProxy> {
    let target = db_addr(url)?;
    let proxy = TcpProxy::start(target).await?;
    let proxied_url = url.replacen(&target.to_string(), &proxy.local_addr().to_string(), 1);
    ensure!(proxied_url != url, "proxy url");
    let node = &mut cluster.nodes[i];
    node.process()?.terminate(Duration::from_secs(15)).await?;
    config::edit(&node.config_path, |c: &mut SequencerConfig| {
        c.database.url = proxied_url.as_str().into();
    })?;
    cluster.start_node(i).await?;
    Ok(proxy)
}

/// `host:port` of a `postgres://user@host:port/db` URL.
fn db_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").context("url scheme")?.1;
    let authority = rest.split(['/', '?']).next().context("url authority")?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    Ok(host_port.parse()?)
}

e2e_test! {
    serial health_turns_not_serving_when_database_unreachable => health_turns_not_serving_when_database_unreachable_body
}

async fn health_turns_not_serving_when_database_unreachable_body(
    logs: TestLogs,
) -> anyhow::Result<()> {
    let database = PgCluster::shared().create_database("seq_api_health").await;
    let mut cluster = SequencerCluster::start(logs, database.clone(), 2, PRUNE_ON_DEMAND).await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;

    // Restart instance 1 with its database behind the proxy.
    let proxy = restart_behind_proxy(&mut cluster, 1, &database.url).await?;
    ensure!(
        proxy.accepted() > 0,
        "instance 1 reaches the database through the proxy"
    );
    println!(
        "instance 1 uses the database through {} ({} connections so far)",
        proxy.local_addr(),
        proxy.accepted()
    );

    let ch0 = channel_to(&cluster, 0).await?;
    let ch1 = channel_to(&cluster, 1).await?;
    ensure!(
        health(&ch1).await? == SERVING && health(&ch0).await? == SERVING,
        "both SERVING before the cut"
    );
    let a1 = connect(&cluster, 1, &alice).await?;
    send_to(&a1, "before-cut", b"x", &bob.0).await?;

    let bound = Duration::from_secs(2);
    for (mode, cut) in [
        ("connections closed and refused", false),
        ("black hole (stalled)", true),
    ] {
        if cut {
            proxy.stall();
        } else {
            proxy.block();
        }
        let down = wait_health(&ch1, NOT_SERVING, Duration::from_secs(10))
            .await
            .with_context(|| format!("{mode}: instance 1 never reported NOT_SERVING"))?;
        println!("{mode}: instance 1 NOT_SERVING after {down:?}");
        ensure!(
            health(&ch0).await? == SERVING,
            "{mode}: instance 0 (direct database) stays SERVING"
        );
        ensure!(
            down <= bound,
            "{mode}: NOT_SERVING after {down:?}, bound {bound:?}"
        );
        // A send on the cut instance fails fast and explicitly instead of hanging.
        let send_started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            send_to(&a1, &format!("during-cut-{cut}"), b"x", &bob.0),
        )
        .await;
        match &r {
            Ok(Err(ClientError::Status(st))) => println!(
                "  {mode}: send during the cut -> {:?} {ERROR_CODE}={:?} after {:?}",
                st.code(),
                error_code(st),
                send_started.elapsed()
            ),
            other => println!(
                "  {mode}: send during the cut -> {other:?} after {:?}",
                send_started.elapsed()
            ),
        }
        // Keep the cut a little longer than the writer's commit timeout, so recovery runs.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        ensure!(
            health(&ch1).await? == NOT_SERVING,
            "{mode}: still NOT_SERVING while cut"
        );

        proxy.unblock();
        let up = wait_health(&ch1, SERVING, Duration::from_secs(30))
            .await
            .with_context(|| format!("{mode}: instance 1 did not return to SERVING"))?;
        println!("{mode}: instance 1 SERVING again {up:?} after the link was restored");
        // SERVING means usable: a send through instance 1 works at once.
        a1.authenticate().await?;
        let sent = send_to(&a1, &format!("after-cut-{cut}"), b"x", &bob.0)
            .await
            .with_context(|| format!("{mode}: send after recovery"))?;
        ensure!(!sent.deduplicated);
    }
    drop(proxy);
    Ok(())
}

// ---------------------------------------------------------------------------
// F. acknowledgements are clamped; housekeeping runs when the bound cannot move
// ---------------------------------------------------------------------------

/// The member's stored acknowledgement.
async fn stored_ack(db: &tokio_postgres::Client, member: &MemberId) -> anyhow::Result<Option<i64>> {
    member_column(db, "acknowledged_ts", member).await
}

e2e_test! {
    /// An `Acknowledge` above the safe watermark (nothing can have been delivered there), for
    /// another member, or negative is refused with a precise code and changes nothing; a
    /// lower one than before is accepted and changes nothing either.
    serial acknowledge_is_clamped_to_the_delivered_head => acknowledge_is_clamped_body
}

async fn acknowledge_is_clamped_body(logs: TestLogs) -> anyhow::Result<()> {
    let config = "pruning.interval = \"0s\"";
    let (cluster, db, [alice, bob]) =
        start_members(logs, "seq_api_ack", 2, config, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let sent = send_to(&a, "ack-1", b"to bob", &bob.0).await?;
    let ts = sent.sequencing_timestamp_micros;
    // A member acknowledges what it received: before delivery the other instance's
    // watermark may still be below `ts`, and the ack would be (rightly) refused as ahead.
    let mut receipts = a.subscribe(0).await?;
    let receipt = next_event(&mut receipts, "alice's receipt").await?;
    ensure!(
        receipt.timestamp_micros == ts,
        "alice's first event is at {}, her send at {ts}",
        receipt.timestamp_micros
    );
    a.acknowledge(ts).await?;
    ensure!(
        stored_ack(&db, &alice.0).await? == Some(ts),
        "accepted ack stored"
    );

    // Ahead of the safe watermark: an hour in the future.
    let ahead = now_micros() + 3_600_000_000;
    let st = status_of_unit(a.acknowledge(ahead).await, "ack ahead")?;
    expect_status(
        &st,
        Code::InvalidArgument,
        Some("SEQ_ACKNOWLEDGE_AHEAD"),
        "acknowledge above the safe watermark",
    )?;
    ensure!(
        stored_ack(&db, &alice.0).await? == Some(ts),
        "a refused acknowledgement changed the stored one"
    );

    // For another member, with alice's token.
    let token = a.token().await.context("alice's token")?;
    let mut raw = SequencerServiceClient::new(channel_to(&cluster, 1).await?);
    let mut req = tonic::Request::new(pb::AcknowledgeRequest {
        member: bob.0.to_string(),
        timestamp_micros: ts,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let st = raw_status_of(raw.acknowledge(req).await, "ack for bob")?;

    expect_status(
        &st,
        Code::PermissionDenied,
        Some("SEQ_MEMBER_MISMATCH"),
        "alice acknowledging for bob",
    )?;
    ensure!(
        stored_ack(&db, &bob.0).await?.is_none(),
        "alice's acknowledgement for bob was stored"
    );

    // Negative.
    let st = status_of_unit(a.acknowledge(-5).await, "negative ack")?;
    expect_status(
        &st,
        Code::InvalidArgument,
        Some("SEQ_MALFORMED_REQUEST"),
        "negative acknowledgement",
    )?;

    // Backwards: accepted, the stored value stays.
    a.acknowledge(ts - 1_000).await?;
    ensure!(
        stored_ack(&db, &alice.0).await? == Some(ts),
        "an older acknowledgement moved the stored one backwards"
    );
    Ok(())
}

/// The status of a failed unit call of the connection API.
fn status_of_unit(r: Result<(), ClientError>, case: &str) -> anyhow::Result<Status> {
    match r {
        Ok(()) => bail!("{case}: expected a rejection"),
        Err(ClientError::Status(st)) => Ok(st),
        Err(e) => bail!("{case}: expected a status, got {e}"),
    }
}

e2e_test! {
    /// Expired nonces and deduplication rows go on every pruning round, also when a member
    /// that acknowledges nothing keeps the event bound where it is (before, the cleanup sat
    /// after the early return of an unmoved bound, so these tables grew with every Challenge).
    serial housekeeping_runs_when_the_bound_cannot_move => housekeeping_body
}

async fn housekeeping_body(logs: TestLogs) -> anyhow::Result<()> {
    let config = format!("{PRUNE_ON_DEMAND}\nauth.nonce-ttl = \"1s\"");
    let (cluster, db, [alice, bob]) =
        start_members(logs, "seq_api_housekeeping", 1, &config, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    // An event bob never acknowledges holds the bound just below it; its deduplication
    // row expires after one second.
    send_within(
        &a,
        "short-lived",
        b"for bob",
        &bob.0,
        Duration::from_secs(1),
    )
    .await?;
    let mut admin = cluster.admin(0).await?;
    let first = prune(&mut admin).await?.outcome.context("outcome")?;
    println!("first prune: {first:?}");
    // Nonces nobody uses: unauthenticated Challenges.
    let mut raw = SequencerServiceClient::new(channel_to(&cluster, 0).await?);
    for _ in 0..20 {
        raw.challenge(challenge_request(&alice.0, &alice.1)).await?;
    }
    let nonces: i64 = db
        .query_one("SELECT count(*) FROM seq_nonces", &[])
        .await?
        .get(0);
    ensure!(nonces >= 20, "challenges stored {nonces} nonces");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let second = prune(&mut admin).await?.outcome.context("outcome")?;
    println!("second prune: {second:?}");
    ensure!(
        second.bound_micros == first.bound_micros,
        "bob holds the bound: it must not move ({} -> {})",
        first.bound_micros,
        second.bound_micros
    );
    let left = |table: &'static str| {
        let db = &db;
        async move {
            anyhow::Ok(
                db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await?
                    .get::<_, i64>(0),
            )
        }
    };
    ensure!(
        left("seq_nonces").await? == 0,
        "expired nonces survived a round whose bound did not move"
    );
    ensure!(
        left("seq_dedup").await? == 0,
        "an expired deduplication row survived a round whose bound did not move"
    );
    ensure!(
        left("seq_events").await? >= 1,
        "bob's unacknowledged event was pruned"
    );
    let reported = |t: &str| {
        second
            .deleted
            .iter()
            .filter(|d| d.table == t)
            .map(|d| d.rows)
            .sum::<u64>()
    };
    ensure!(
        reported("seq_nonces") >= 20 && reported("seq_dedup") == 1,
        "the outcome reports what housekeeping deleted: {second:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Issue 11 item 10: a left-over writer transaction after a client-side connection loss
// ---------------------------------------------------------------------------

e2e_test! {
    /// One instance, its database behind a proxy, every batch paused 1.5 s after its
    /// watermark update (holding the instance row and ROW EXCLUSIVE on `seq_instances`).
    /// Inside that pause the proxy strands the writer's connection: closed on the sequencer's
    /// side, open and silent on PostgreSQL's, so the backend stays idle in transaction until
    /// the server's TCP keepalive (hours). The writer recovers on a fresh connection; its
    /// `go_online` must not wait behind its own left-over transaction, and no peer exists
    /// that would clear it.
    serial left_over_writer_transaction_does_not_block_recovery => left_over_writer_transaction_body
}

async fn left_over_writer_transaction_body(logs: TestLogs) -> anyhow::Result<()> {
    let env = one_instance_env("SEQUENCER_FAULT_DELAY_AFTER_WATERMARK_MS", 1500);
    let (mut cluster, db) = start_with_db(logs, "seq_api_leftover", 1, "", &env).await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;

    let database_url = cluster.database.url.clone();
    let proxy = restart_behind_proxy(&mut cluster, 0, &database_url).await?;
    let a = connect(&cluster, 0, &alice).await?;

    let first = tokio::spawn({
        let a = a.clone();
        let message = envelope(b"cut mid-commit".to_vec(), &[&bob.0]);
        async move {
            a.send("cut-1", vec![message], now_micros() + 60_000_000)
                .await
        }
    });
    // Inside the 1.5 s pause after the watermark update.
    tokio::time::sleep(Duration::from_millis(600)).await;
    proxy.strand();
    let outcome = first.await?;
    println!("the send cut mid-commit answered: {outcome:?}");

    let left_over: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await?
        .get(0);
    println!("idle-in-transaction backends right after the cut: {left_over}");

    // The instance must recover and sequence again (every batch still takes 1.5 s).
    let started = Instant::now();
    let mut last_error = None;
    let mut sequenced = false;
    while started.elapsed() < Duration::from_secs(20) {
        let message = envelope(b"after the cut".to_vec(), &[&bob.0]);
        match a
            .send("after-cut", vec![message], now_micros() + 60_000_000)
            .await
        {
            Ok(_) => {
                sequenced = true;
                break;
            }
            Err(e) => {
                last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let log = node_log(&cluster, 0);
    ensure!(
        sequenced,
        "the instance did not sequence again within 20 s of losing its connection \
         mid-commit (last error: {last_error:?}; go_online lock timeouts in its log: {})",
        log.matches("lock timeout").count()
    );
    let still: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'
               AND xact_start < now() - interval '5 seconds'",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        still == 0,
        "{still} left-over idle-in-transaction backend(s) remain"
    );
    drop(proxy);
    Ok(())
}

// ---------------------------------------------------------------------------
// Issue 11 item 11: a late retry of a sequenced message
// ---------------------------------------------------------------------------

e2e_test! {
    /// A message is sequenced, its reply "lost"; the client retries the same submission after
    /// its max sequencing time has passed. The answer must be `deduplicated = true` with the
    /// original timestamp (it used to be SEQ_MAX_SEQUENCING_TIME_EXCEEDED, "passed before
    /// sequencing", which the client takes as definitive: an application would resubmit
    /// under a new id, a double submission).
    serial late_retry_after_deadline_is_deduplicated => late_retry_body
}

async fn late_retry_body(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, _, [alice, bob]) =
        start_members(logs, "seq_api_late", 2, "", ["alice", "bob"]).await?;
    let via0 = connect(&cluster, 0, &alice).await?;
    let via1 = connect(&cluster, 1, &alice).await?;
    let deadline = now_micros() + 1_000_000;
    let message = envelope(b"sequenced, reply lost".to_vec(), &[&bob.0]);
    let first = via0
        .send("late-1", vec![message.clone()], deadline)
        .await
        .context("first attempt")?;
    ensure!(!first.deduplicated);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    ensure!(now_micros() > deadline, "the deadline has passed");
    for (name, conn) in [("same instance", &via0), ("other instance", &via1)] {
        let retry = conn
            .send("late-1", vec![message.clone()], deadline)
            .await
            .with_context(|| format!("late retry on the {name}"))?;
        ensure!(
            retry.deduplicated
                && retry.sequencing_timestamp_micros == first.sequencing_timestamp_micros,
            "late retry on the {name}: {retry:?}, first attempt {first:?}"
        );
    }
    // A message that was never sequenced still gets the deadline error.
    let never = via1
        .send("late-never", vec![message], deadline)
        .await
        .err()
        .context("a send past its deadline that was never sequenced must fail")?;
    ensure!(
        format!("{never}").contains("SEQ_MAX_SEQUENCING_TIME_EXCEEDED"),
        "unexpected error: {never}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Issue 11 item 13 (second part): bootstrap-members never re-enables a disabled member
// ---------------------------------------------------------------------------

e2e_test! {
    /// A participant listed in `bootstrap-members` and then disabled stays disabled when the
    /// instance restarts (bootstrap used to register it again, which re-enabled it).
    serial bootstrap_members_never_re_enable_a_disabled_member => bootstrap_re_enable_body
}

async fn bootstrap_re_enable_body(logs: TestLogs) -> anyhow::Result<()> {
    let database = PgCluster::shared().create_database("seq_api_boot").await;
    let key = SigningKeyPair::generate();
    let p = MemberId::new(
        MemberRole::Participant,
        UniqueId::new("bootp", *key.fingerprint())?,
    );
    let mut cluster = SequencerCluster::start(
        logs,
        database.clone(),
        1,
        &format!("bootstrap-members = [\"{p}\"]"),
    )
    .await?;
    let db = domain_e2e::checks::db_client(&database.url).await?;
    // Bootstrap registers it (in the background, once the writer is online).
    let started = Instant::now();
    while member_enabled(&db, &p).await? != Some(true) {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "bootstrap never registered {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    disable(&cluster, &p).await?;
    let node = &mut cluster.nodes[0];
    node.process()?.terminate(Duration::from_secs(15)).await?;
    cluster.start_node(0).await?;
    // Give the bootstrap task every chance to run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = member_enabled(&db, &p).await?;
    ensure!(
        state == Some(false),
        "after a restart {p} is {state:?}: bootstrap-members re-enabled a disabled member"
    );
    Ok(())
}

async fn member_enabled(
    db: &tokio_postgres::Client,
    member: &MemberId,
) -> anyhow::Result<Option<bool>> {
    Ok(db
        .query_opt(
            "SELECT enabled FROM seq_members WHERE member = $1",
            &[&member.to_string()],
        )
        .await?
        .map(|r| r.get(0)))
}

// ---------------------------------------------------------------------------
// Issue 11 item 13 (first part): a member disabled during its catch-up
// ---------------------------------------------------------------------------

e2e_test! {
    /// Alice has a backlog of 1,000 events of 8 KiB and reads it slowly (pages of 20, a
    /// buffer of 4). She is disabled after her first events: the stream must end soon after,
    /// not after delivering her whole backlog (catch-up used to ignore revocations). What was
    /// already in flight (a page, the buffers, the HTTP/2 and TCP windows) may still arrive.
    serial revocation_during_catch_up_ends_the_stream => revocation_during_catch_up_body
}

async fn revocation_during_catch_up_body(logs: TestLogs) -> anyhow::Result<()> {
    const BACKLOG: usize = 1_000;
    let (cluster, _, [alice, bob]) =
        start_members(logs, "seq_api_revoke", 1, SLOW_READER, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let b = connect(&cluster, 0, &bob).await?;
    let mut sends = futures::stream::iter(0..BACKLOG)
        .map(|i| {
            let b = b.clone();
            let to = alice.0.clone();
            async move {
                b.send(
                    &format!("backlog-{i}"),
                    vec![envelope(vec![(i % 251) as u8; 8 * 1024], &[&to])],
                    now_micros() + 60_000_000,
                )
                .await
            }
        })
        .buffer_unordered(16);
    while let Some(r) = sends.next().await {
        r?;
    }
    let mut stream = a.subscribe(0).await?;
    for i in 0..5 {
        next_event(&mut stream, &format!("backlog event {i}")).await?;
    }
    disable(&cluster, &alice.0).await?;
    // Let the revocation reach the instance before reading on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after = 0usize;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => bail!("stream still open 10 s after the disable ({after} events since)"),
            Ok(Err(st)) => break st,
            Ok(Ok(None)) => bail!("stream ended without a status after {after} events"),
            Ok(Ok(Some(_))) => after += 1,
        }
    };
    println!("{after} events delivered after the disable, then {status:?}");
    ensure!(
        status.code() == Code::PermissionDenied,
        "expected PERMISSION_DENIED, got {status:?}"
    );
    ensure!(
        after <= 200,
        "{after} of the {} remaining backlog events were delivered after the member was \
         disabled (bound 200: a page of 20, the buffers and the transport windows)",
        BACKLOG - 5
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Issue 11 item 1: metric labels never come from an arbitrary request path
// ---------------------------------------------------------------------------

/// The distinct `(grpc_service, grpc_method)` label pairs of the gRPC server metrics.
fn grpc_label_pairs(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_"))
        .filter_map(|l| {
            let labels = l.split_once('{')?.1.split_once('}')?.0;
            let get = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
            };
            Some(format!("{}/{}", get("grpc_service")?, get("grpc_method")?))
        })
        .collect()
}

e2e_test! {
    /// 10,000 unauthenticated requests to distinct made-up paths add no series but the one
    /// `unknown` method (each path used to become its own label pair, unbounded).
    serial metric_labels_ignore_unknown_paths => metric_labels_body
}

async fn metric_labels_body(logs: TestLogs) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let database = PgCluster::shared().create_database("seq_api_labels").await;
    let cluster = SequencerCluster::start(logs, database, 1, "").await?;
    let ops = cluster.nodes[0].ops_url();
    let channel = channel_to(&cluster, 0).await?;
    // One real call first, so the known series exist before we count.
    let _ = health(&channel).await?;
    let before = grpc_label_pairs(&domain_e2e::http_get(&ops, "/metrics").await?);
    let mut calls = futures::stream::iter(0..10_000u32)
        .map(|i| {
            let channel = channel.clone();
            async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
                    "/bogus{i}.Service/Method{i}"
                ))
                .map_err(|e| Status::internal(e.to_string()))?;
                grpc.unary(tonic::Request::new(Vec::new()), path, RawCodec)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(64);
    let mut unimplemented = 0usize;
    while let Some(r) = calls.next().await {
        match r {
            Err(st) if st.code() == Code::Unimplemented => unimplemented += 1,
            other => bail!("a bogus path was answered {other:?}"),
        }
    }
    ensure!(unimplemented == 10_000);
    let after = grpc_label_pairs(&domain_e2e::http_get(&ops, "/metrics").await?);
    let added: Vec<&String> = after.difference(&before).collect();
    println!(
        "grpc label pairs: {} before, {} after 10,000 bogus paths; added {:?}",
        before.len(),
        after.len(),
        added.iter().take(5).collect::<Vec<_>>()
    );
    ensure!(
        added.iter().all(|p| p.as_str() == "unknown/unknown"),
        "{} label pairs were added by bogus paths (first: {:?})",
        added.len(),
        added.first()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Issue 11 item 17: admin APIs refuse a non-loopback address without (mutual) TLS
// ---------------------------------------------------------------------------

/// The sequencer and the mediator exit with the usage code (64) before binding anything,
/// naming `admin-api`, when their admin API would listen off the host without TLS (the
/// sequencer: without mutual TLS). The domain manager and participant run the same check
/// in their config validation (unit tests in their crates).
#[test]
fn admin_api_off_loopback_requires_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    const OFF_HOST: &str = "[admin-api]\nlisten = \"0.0.0.0:0\"\n";
    for (binary, extra) in [
        ("sequencer", OFF_HOST),
        ("mediator", OFF_HOST),
        // TLS without client certificates is not enough for the sequencer's admin API.
        (
            "sequencer",
            "[admin-api]\nlisten = \"0.0.0.0:0\"\n\
             tls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n",
        ),
    ] {
        let path = dir.path().join(format!("{binary}.toml"));
        std::fs::write(&path, extra)?;
        let out = std::process::Command::new(domain_testkit::process::binary_path(binary))
            .arg("--config-file")
            .arg(&path)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(64) && stderr.contains("`admin-api`"),
            "{binary} with {extra:?}: exit {:?}, stderr {stderr}",
            out.status.code()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Issue 11 item 2: catch-up holds no pooled connection or snapshot while it waits on
// the client; subscriptions per member are capped
// ---------------------------------------------------------------------------

/// A reader that catches up slowly: pages of 20 events, a subscription buffer of 4.
const SLOW_READER: &str = "reader.page-size = 20\nreader.subscription-buffer = 4";

/// A 64 KiB payload whose first 8 bytes carry `i`, so a delivered event names its send.
fn numbered_payload(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; 64 * 1024];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

/// The send number `numbered_payload` put in an event.
fn payload_number(e: &pb::SequencedEvent) -> Option<u64> {
    let c = content_of(e);
    Some(u64::from_be_bytes(c.get(..8)?.try_into().ok()?))
}

/// Sends `n` numbered 64 KiB events from `from` to `to`, 16 at a time. Returns them in
/// sequencing order as `(timestamp, send number)`: the recipient's counter `k` is entry `k`.
async fn send_backlog(
    from: &SequencerConnection,
    to: &MemberId,
    n: usize,
) -> anyhow::Result<Vec<(i64, u64)>> {
    let mut sends = futures::stream::iter(0..n)
        .map(|i| {
            let from = from.clone();
            let to = to.clone();
            async move {
                let r = from
                    .send(
                        &format!("backlog-{i}"),
                        vec![envelope(numbered_payload(i), &[&to])],
                        now_micros() + 60_000_000,
                    )
                    .await?;
                anyhow::Ok((r.sequencing_timestamp_micros, i as u64))
            }
        })
        .buffer_unordered(16);
    let mut sequenced = Vec::with_capacity(n);
    while let Some(r) = sends.next().await {
        sequenced.push(r?);
    }
    sequenced.sort_unstable();
    Ok(sequenced)
}

/// Checks that `e` is the recipient's event number `k` of a [`send_backlog`].
fn check_backlog_event(
    e: &pb::SequencedEvent,
    k: usize,
    backlog: &[(i64, u64)],
) -> anyhow::Result<()> {
    let (ts, number) = backlog.get(k).copied().context("beyond the backlog")?;
    ensure!(
        e.counter == k as i64 && e.timestamp_micros == ts && payload_number(e) == Some(number),
        "event {k}: counter {} at {} carries send {:?}; expected counter {k} at {ts} carrying send {number}",
        e.counter,
        e.timestamp_micros,
        payload_number(e)
    );
    Ok(())
}

/// Backends of this database that have sat inside a transaction without running a
/// statement for more than half a second: `(pid, application_name, seconds, last query)`.
async fn idle_in_transaction(
    db: &tokio_postgres::Client,
) -> anyhow::Result<Vec<(i32, String, f64, String)>> {
    let rows = db
        .query(
            "SELECT pid, application_name, extract(epoch FROM now() - state_change)::float8, query
             FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'
               AND state_change < now() - interval '500 milliseconds'",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// A gauge or counter of `/metrics`, summed over its label sets.
async fn metric_value(ops_url: &str, name: &str) -> anyhow::Result<f64> {
    let text = domain_e2e::http_get(ops_url, "/metrics").await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

e2e_test! {
    serial catch_up_does_not_hold_connections_item_2 => catch_up_does_not_hold_connections_body
}

async fn catch_up_does_not_hold_connections_body(logs: TestLogs) -> anyhow::Result<()> {
    // More stalled subscriptions than pooled connections, each with a backlog far larger
    // than what the buffers and the HTTP/2 windows (a few MiB) take.
    const POOL: usize = 4;
    const STALLED: usize = 6;
    const BACKLOG: usize = 150;
    let database = PgCluster::shared().create_database("seq_api_catchup").await;
    let cluster = SequencerCluster::start_with_env(
        logs,
        database.clone(),
        1,
        SLOW_READER,
        &[vec![(
            "SEQUENCER__DATABASE__POOL_MAX_SIZE".into(),
            POOL.to_string(),
        )]],
    )
    .await?;
    let db = db_client(&database.url).await?;
    let [alice, bob, carol] = add_participants(&cluster, ["alice", "bob", "carol"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let b = connect(&cluster, 0, &bob).await?;
    let c = connect(&cluster, 0, &carol).await?;
    let backlog = send_backlog(&b, &alice.0, BACKLOG).await?;
    // Carol follows live; she has nothing to catch up.
    let mut carol_stream = c.subscribe(0).await?;

    // Alice opens subscriptions from 0 and never reads them.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(a.subscribe(0).await?);
    }
    // Long enough for every catch-up to fill its buffers and the windows and block.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Another member still sends, and live delivery still works.
    for i in 0..3 {
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            b.send(
                &format!("live-{i}"),
                vec![envelope(format!("live {i}").into_bytes(), &[&carol.0])],
                now_micros() + 60_000_000,
            ),
        )
        .await
        .context("bob's send took more than 10 s")?
        .with_context(|| format!("bob's send {i} while alice's catch-ups stall"))?;
        let e = next_event(&mut carol_stream, &format!("carol's live event {i}")).await?;
        ensure!(
            e.counter == i && e.timestamp_micros == sent.sequencing_timestamp_micros,
            "carol got counter {} at {} instead of {i} at {}",
            e.counter,
            e.timestamp_micros,
            sent.sequencing_timestamp_micros
        );
        c.verify_event(&e)?;
    }
    // A new member can still authenticate (nonce and token need the pool).
    let dave = cluster.add_member(MemberRole::Participant, "dave").await?;
    tokio::time::timeout(Duration::from_secs(10), connect(&cluster, 0, &dave))
        .await
        .context("dave's authentication took more than 10 s")??;

    // No catch-up sits in an open transaction (snapshot) while its client does not read.
    for _ in 0..3 {
        let idle = idle_in_transaction(&db).await?;
        ensure!(
            idle.is_empty(),
            "backends idle in transaction while subscriptions wait on their clients: {idle:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The stalled subscriptions all still wait for their clients (none failed for want
    // of a connection), next to carol's.
    let ops = cluster.nodes[0].ops_url();
    let active = metric_value(&ops, "sequencer_active_subscriptions").await?;
    println!("{active} subscriptions open, {STALLED} of them stalled");
    ensure!(
        active >= (STALLED + 1) as f64,
        "the stalled subscriptions must all still be open (and carol's), got {active}"
    );

    // The stalled streams are intact: reading one now delivers the backlog gap-free.
    let mut first = stalled.swap_remove(0);
    drop(stalled);
    let mut validator = StreamValidator::default();
    for k in 0..BACKLOG {
        let e = next_event(&mut first, &format!("alice's backlog event {k}")).await?;
        validator.check(&e)?;
        check_backlog_event(&e, k, &backlog)?;
    }
    Ok(())
}

e2e_test! {
    serial subscriptions_per_member_are_capped_item_2 => subscriptions_capped_body
}

async fn subscriptions_capped_body(logs: TestLogs) -> anyhow::Result<()> {
    const CAP: usize = 3;
    let config = format!("reader.max-subscriptions-per-member = {CAP}");
    let (cluster, _, [alice, bob]) =
        start_members(logs, "seq_api_subcap", 1, &config, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let b = connect(&cluster, 0, &bob).await?;
    let mut open = Vec::new();
    for _ in 0..CAP {
        open.push(a.subscribe(0).await?);
    }
    let st = subscribe_error(&a, 0, "one subscription over the cap").await?;
    expect_status(
        &st,
        Code::ResourceExhausted,
        Some("SEQ_TOO_MANY_SUBSCRIPTIONS"),
        "alice's subscription over the cap",
    )?;
    let ops = cluster.nodes[0].ops_url();
    ensure!(
        metric_value(&ops, "sequencer_subscriptions_refused_total").await? >= 1.0,
        "refusal not counted"
    );
    // The cap is per member: bob is not affected.
    let mut bob_stream = b.subscribe(0).await?;
    let sent = send_to(&a, "to-bob", b"hello", &bob.0).await?;
    let e = next_event(&mut bob_stream, "bob's event").await?;
    ensure!(e.timestamp_micros == sent.sequencing_timestamp_micros);
    // Every open stream of alice still works.
    for (i, s) in open.iter_mut().enumerate() {
        let e = next_event(s, &format!("alice's receipt on stream {i}")).await?;
        ensure!(e.timestamp_micros == sent.sequencing_timestamp_micros);
    }
    // A stream that ends frees its slot: the instance notices the reset stream shortly.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        match a.subscribe(0).await {
            Ok(mut s) => match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
                Ok(Ok(Some(_))) => break s,
                Ok(Err(st)) if error_code(&st) == Some("SEQ_TOO_MANY_SUBSCRIPTIONS") => {}
                other => bail!("resubscribing after closing a stream: {other:?}"),
            },
            Err(ClientError::Status(st))
                if error_code(&st) == Some("SEQ_TOO_MANY_SUBSCRIPTIONS") => {}
            Err(e) => bail!("resubscribing after closing a stream: {e}"),
        }
        ensure!(
            Instant::now() < deadline,
            "the closed stream still counted against the cap after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let st = subscribe_error(&a, 0, "over the cap again").await?;
    expect_status(
        &st,
        Code::ResourceExhausted,
        Some("SEQ_TOO_MANY_SUBSCRIPTIONS"),
        "alice at the cap again",
    )?;
    // Streams that end with an error free their slots too: disabling alice ends all.
    disable(&cluster, &alice.0).await?;
    let (st, _) = stream_end(again, "alice's stream".into()).await?;
    ensure!(st.code() == Code::PermissionDenied, "{st:?}");
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let active = metric_value(&ops, "sequencer_active_subscriptions").await?;
        if active <= 1.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{active} subscriptions still open 10 s after alice was disabled (only bob's should be)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

e2e_test! {
    serial catch_up_pruned_between_pages_item_2 => catch_up_pruned_between_pages_body
}

/// Each catch-up page has its own snapshot now, so an operator's forced prune can pass a
/// slow subscriber's cursor between two pages: the stream must deliver a gap-free prefix
/// and then end with `SEQ_EVENTS_PRUNED` naming exactly the next counter, never skip.
async fn catch_up_pruned_between_pages_body(logs: TestLogs) -> anyhow::Result<()> {
    const BACKLOG: usize = 200;
    const BOUND_AT: usize = 150; // the forced bound is this event's timestamp
    let config = format!("{SLOW_READER}\npruning.interval = \"0s\"");
    let (cluster, _, [alice, bob]) =
        start_members(logs, "seq_api_catchup_prune", 1, &config, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let b = connect(&cluster, 0, &bob).await?;
    let backlog = send_backlog(&b, &alice.0, BACKLOG).await?;
    let mut stream = a.subscribe(0).await?;
    let mut validator = StreamValidator::default();
    let mut delivered = 0usize;
    for _ in 0..5 {
        let e = next_event(&mut stream, "alice before the prune").await?;
        validator.check(&e)?;
        check_backlog_event(&e, delivered, &backlog)?;
        delivered += 1;
    }
    // The catch-up is now blocked on the full buffers, a few pages in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcome = cluster
        .admin(0)
        .await?
        .force_prune(sequencer_admin_pb::ForcePruneRequest {
            below_micros: backlog[BOUND_AT].0,
            dry_run: false,
        })
        .await?
        .into_inner();
    println!("forced prune below event {BOUND_AT}: {outcome:?}");
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Err(_) => bail!("no event or status within 10 s after {delivered} events"),
            Ok(Ok(None)) => bail!("stream ended without a status after {delivered} events"),
            Ok(Err(st)) => break st,
            Ok(Ok(Some(r))) => {
                let e = r.event.context("response without event")?;
                validator.check(&e)?;
                check_backlog_event(&e, delivered, &backlog)?;
                delivered += 1;
            }
        }
    };
    println!("{delivered} events delivered, then {status:?}");
    ensure!(
        delivered <= BOUND_AT,
        "the whole pruned range was delivered ({delivered} events): the prune did not \
         reach the catch-up between pages"
    );
    expect_status(
        &status,
        Code::OutOfRange,
        Some("SEQ_EVENTS_PRUNED"),
        "catch-up passed by the prune",
    )?;
    ensure!(
        status.message().contains(&format!("counter {delivered} "))
            && status
                .message()
                .contains(&format!("oldest retained counter is {}", BOUND_AT + 1)),
        "EVENTS_PRUNED must name the next counter {delivered} and the oldest retained {}: {}",
        BOUND_AT + 1,
        status.message()
    );
    // From the oldest retained counter, the rest arrives intact.
    let mut rest = a.subscribe((BOUND_AT + 1) as i64).await?;
    let mut validator = StreamValidator::starting_after(BOUND_AT as i64, backlog[BOUND_AT].0);
    for k in BOUND_AT + 1..BACKLOG {
        let e = next_event(&mut rest, &format!("alice's retained event {k}")).await?;
        validator.check(&e)?;
        check_backlog_event(&e, k, &backlog)?;
    }
    Ok(())
}
