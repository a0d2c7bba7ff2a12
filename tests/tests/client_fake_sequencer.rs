//! `DomainClient` against scripted in-process sequencers (plaintext gRPC on loopback), for the
//! behaviours real processes cannot be made to show on demand: a fork between endpoints,
//! scripted retryable/definitive answers, a refused token, a call that never returns, an
//! impostor answering first with a key the domain's namespace never registered.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use domain_identity::{DomainId, MemberId, MemberRole, SignaturePurpose, SigningKeyPair, UniqueId};
use domain_proto::common::v1 as common_pb;
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_server::{
    SequencerService, SequencerServiceServer,
};
use domain_proto::topology::v1 as topology_pb;
use domain_sequencer_client::{
    BackoffConfig, ClientError, ClientOptions, DomainClient, DomainPins, DomainTls, MemberIdentity,
    SendReceipt, to_proto_signature,
};
use domain_topology::{Mapping, Operation, TopologyTransaction};
use futures::StreamExt as _;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;

/// The fake domain's namespace key (fixed, so every fake of a test shares the domain).
static NAMESPACE: LazyLock<SigningKeyPair> = LazyLock::new(|| SigningKeyPair::from_seed(&[42; 32]));
static DOMAIN_ID: LazyLock<DomainId> = LazyLock::new(|| {
    DomainId::new(UniqueId::new("fake", *NAMESPACE.fingerprint()).expect("domain id"))
});
static DOMAIN: LazyLock<String> = LazyLock::new(|| DOMAIN_ID.to_string());

/// What a fake answers to Send.
#[derive(Debug, Clone)]
enum SendBehaviour {
    Ok,
    Fail(Code, &'static str),
    Hang,
}

/// What the instances of one fake domain share (like the real ones share a database).
struct Shared {
    key: SigningKeyPair,
    /// The sequencer id shown in GetDomainInfo.
    sequencer_id: String,
    /// The namespace-signed sequencer registrations shown in GetDomainInfo.
    registrations: Vec<topology_pb::SignedTopologyTransaction>,
    tokens: Mutex<HashSet<String>>,
    authentications: AtomicUsize,
}

impl Shared {
    /// A sequencer the domain's namespace registered (what the domain manager does).
    fn new() -> Arc<Self> {
        let key = SigningKeyPair::generate();
        let sequencer = MemberId::new(
            MemberRole::Sequencer,
            UniqueId::new("fake", *key.fingerprint()).expect("uid"),
        );
        let registration = TopologyTransaction {
            serial: 1,
            operation: Operation::Replace,
            mapping: Mapping::Sequencer {
                sequencer: sequencer.clone(),
                public_key: Some(key.public_key().clone()),
            },
        }
        .sign(&DOMAIN_ID, &NAMESPACE);
        Arc::new(Self {
            key,
            sequencer_id: sequencer.to_string(),
            registrations: vec![registration],
            tokens: Mutex::default(),
            authentications: AtomicUsize::new(0),
        })
    }

    /// An impostor of `real`: same domain id, sequencer id, namespace key and registrations
    /// (all public), but its own sequencer key, which the namespace never registered.
    fn impostor_of(real: &Shared) -> Arc<Self> {
        Arc::new(Self {
            key: SigningKeyPair::generate(),
            sequencer_id: real.sequencer_id.clone(),
            registrations: real.registrations.clone(),
            tokens: Mutex::default(),
            authentications: AtomicUsize::new(0),
        })
    }
}

struct FakeState {
    shared: Arc<Shared>,
    /// The member's events by counter.
    history: Vec<pb::SequencedEvent>,
    /// Events per stream before it breaks with UNAVAILABLE (None: stay open).
    break_after: Option<usize>,
    send_script: Mutex<VecDeque<SendBehaviour>>,
    send_default: Mutex<SendBehaviour>,
    sends: Mutex<Vec<pb::SendRequest>>,
    subscribes: Mutex<Vec<i64>>,
    reject_next_token: AtomicBool,
    /// Delay before answering GetDomainInfo (to decide who answers first).
    info_delay: Mutex<Duration>,
}

#[derive(Clone)]
struct Fake(Arc<FakeState>);

fn coded(code: Code, domain_code: &str) -> Status {
    let mut st = Status::new(code, format!("fake: {domain_code}"));
    st.metadata_mut().insert(
        domain_proto::error::ERROR_CODE_HEADER,
        domain_code.parse().expect("ascii"),
    );
    st
}

impl Fake {
    fn check_token<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| coded(Code::Unauthenticated, "SEQ_MISSING_CREDENTIALS"))?;
        if self.0.reject_next_token.swap(false, Ordering::SeqCst)
            || !self.0.shared.tokens.lock().expect("lock").contains(token)
        {
            return Err(coded(Code::Unauthenticated, "SEQ_TOKEN_INVALID"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl SequencerService for Fake {
    async fn handshake(
        &self,
        _: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_domain_info(
        &self,
        _: Request<pb::GetDomainInfoRequest>,
    ) -> Result<Response<pb::GetDomainInfoResponse>, Status> {
        let delay = *self.0.info_delay.lock().expect("lock");
        tokio::time::sleep(delay).await;
        Ok(Response::new(pb::GetDomainInfoResponse {
            domain_id: DOMAIN.clone(),
            sequencer_id: self.0.shared.sequencer_id.clone(),
            sequencer_public_key: Some(common_pb::PublicKey {
                algorithm: common_pb::KeyAlgorithm::Ed25519 as i32,
                key: self.0.shared.key.public_key().to_bytes().to_vec(),
            }),
            protocol_version: domain_proto::PROTOCOL_VERSION.into(),
            max_request_size: 1 << 20,
            namespace_public_key: Some(common_pb::PublicKey {
                algorithm: common_pb::KeyAlgorithm::Ed25519 as i32,
                key: NAMESPACE.public_key().to_bytes().to_vec(),
            }),
            sequencer_registrations: self.0.shared.registrations.clone(),
        }))
    }

    async fn challenge(
        &self,
        _: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::ChallengeResponse>, Status> {
        Ok(Response::new(pb::ChallengeResponse {
            nonce: vec![7; 20],
            domain_id: DOMAIN.clone(),
            expires_at_micros: 0,
        }))
    }

    async fn authenticate(
        &self,
        _: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let n = self.0.shared.authentications.fetch_add(1, Ordering::SeqCst);
        let token = format!("token-{n}");
        self.0
            .shared
            .tokens
            .lock()
            .expect("lock")
            .insert(token.clone());
        Ok(Response::new(pb::AuthenticateResponse {
            token,
            expires_at_micros: now_micros() + 3_600_000_000,
        }))
    }

    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        self.check_token(&req)?;
        self.0
            .sends
            .lock()
            .expect("lock")
            .push(req.get_ref().clone());
        let behaviour = self
            .0
            .send_script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| self.0.send_default.lock().expect("lock").clone());
        match behaviour {
            SendBehaviour::Ok => Ok(Response::new(pb::SendResponse {
                sequencing_timestamp_micros: 42,
                deduplicated: false,
            })),
            SendBehaviour::Fail(code, domain_code) => Err(coded(code, domain_code)),
            SendBehaviour::Hang => {
                futures::future::pending::<()>().await;
                unreachable!()
            }
        }
    }

    type SubscribeStream =
        futures::stream::BoxStream<'static, Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.check_token(&req)?;
        let from = req.get_ref().from_counter;
        self.0.subscribes.lock().expect("lock").push(from);
        let events: Vec<_> = self
            .0
            .history
            .iter()
            .skip(from as usize)
            .take(self.0.break_after.unwrap_or(usize::MAX))
            .cloned()
            .map(|e| Ok(pb::SubscribeResponse { event: Some(e) }))
            .collect();
        let stream = futures::stream::iter(events);
        let stream: Self::SubscribeStream = match self.0.break_after {
            Some(_) => stream
                .chain(futures::stream::iter([Err(Status::unavailable(
                    "fake: stream broken",
                ))]))
                .boxed(),
            None => stream.chain(futures::stream::pending()).boxed(),
        };
        Ok(Response::new(stream))
    }

    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        self.check_token(&req)?;
        Ok(Response::new(pb::AcknowledgeResponse::default()))
    }
}

use domain_time::now_micros;

/// A validly signed history of `n` events; `tweak(counter)` shifts that event's timestamp
/// (a different history from that counter on).
fn history(key: &SigningKeyPair, n: i64, tweak: impl Fn(i64) -> i64) -> Vec<pb::SequencedEvent> {
    let mut prev = 0;
    (0..n)
        .map(|c| {
            let ts = 1_000 + c * 10 + tweak(c);
            let content = pb::SignedEventContent {
                domain_id: DOMAIN.clone(),
                timestamp_micros: ts,
                sender: "PAR::other::1220dd".into(),
                message_id_hash: vec![],
                envelope_hashes: vec![],
                time_proof: true,
            }
            .encode_to_vec();
            let sig = key
                .sign_with_domain_str(SignaturePurpose::SequencedEvent, &DOMAIN, &content)
                .expect("sign");
            let e = pb::SequencedEvent {
                counter: c,
                timestamp_micros: ts,
                previous_timestamp_micros: prev,
                content,
                signature: Some(to_proto_signature(&sig, SignaturePurpose::SequencedEvent)),
                envelopes: vec![],
                message_id: String::new(),
                trace_context: String::new(),
                batch_proof: None,
            };
            prev = ts;
            e
        })
        .collect()
}

struct Running {
    fake: Fake,
    url: String,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(
    shared: &Arc<Shared>,
    history: Vec<pb::SequencedEvent>,
    break_after: Option<usize>,
) -> Running {
    let fake = Fake(Arc::new(FakeState {
        shared: shared.clone(),
        history,
        break_after,
        send_script: Mutex::new(VecDeque::new()),
        send_default: Mutex::new(SendBehaviour::Ok),
        sends: Mutex::default(),
        subscribes: Mutex::default(),
        reject_next_token: AtomicBool::new(false),
        info_delay: Mutex::new(Duration::ZERO),
    }));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(SequencerServiceServer::new(fake.clone()));
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()));
    Running {
        fake,
        url,
        health,
        stop,
    }
}

fn member() -> MemberIdentity {
    let key = SigningKeyPair::generate();
    MemberIdentity {
        id: MemberId::new(
            MemberRole::Participant,
            UniqueId::new("alice", *key.fingerprint()).expect("uid"),
        ),
        key: Arc::new(key),
    }
}

fn fast_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_millis(500),
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(300),
        subscription_idle: Duration::from_millis(300),
        backoff: BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            jitter: 0.2,
        },
        ..ClientOptions::default()
    }
}

async fn connect(servers: &[&Running], options: ClientOptions) -> DomainClient {
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    DomainClient::connect("fake", &urls, DomainTls::Plaintext, member(), options)
        .await
        .expect("connect")
}

/// Sends the empty message `id` (10 s to be sequenced), which must be accepted through
/// `endpoint`.
async fn send_through(client: &DomainClient, id: &str, endpoint: &str) -> SendReceipt {
    let r = client
        .send_detailed(id, vec![], now_micros() + 10_000_000)
        .await
        .expect("sent");
    assert_eq!(r.endpoint, endpoint, "{id} went through another endpoint");
    r
}

async fn wait_all_healthy(client: &DomainClient) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client.endpoint_health().iter().all(|(_, h)| *h) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            client.endpoint_problems()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_across_endpoints_each_counter_once() {
    let d = Shared::new();
    let key = &d.key;
    let h = history(key, 30, |_| 0);
    // Both serve the same history but break every stream after 4 events.
    let a = start(&d, h.clone(), Some(4)).await;
    let b = start(&d, h.clone(), Some(4)).await;
    let client = connect(&[&a, &b], fast_options()).await;
    wait_all_healthy(&client).await;
    let mut sub = client.subscribe(0).expect("subscribe");
    let mut endpoints = HashSet::new();
    for expected in 0..30 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("valid");
        assert_eq!(e.event.counter, expected);
        assert_eq!(e.event, h[expected as usize]);
        endpoints.insert(e.endpoint);
    }
    assert_eq!(endpoints.len(), 2, "both endpoints served events");
    let stats = client.stats();
    assert!(stats.resubscriptions >= 9, "{stats:?}");
    // Every resubscription asked for the last processed counter again (not +1).
    let mut asked: Vec<i64> = a.fake.0.subscribes.lock().expect("lock").clone();
    asked.extend(b.fake.0.subscribes.lock().expect("lock").iter());
    asked.sort();
    assert_eq!(asked[0], 0);
    for w in asked.windows(2) {
        assert_eq!(
            w[1] - w[0],
            3,
            "resumed at the last processed counter: {asked:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_redelivered_event_is_a_fork() {
    let d = Shared::new();
    let key = &d.key;
    // From counter 2 on, b's history has other timestamps (still validly signed and linked).
    let a = start(&d, history(key, 10, |_| 0), Some(3)).await;
    let b = start(
        &d,
        history(key, 10, |c| if c >= 2 { 5 } else { 0 }),
        Some(3),
    )
    .await;
    let client = connect(&[&a, &b], fast_options()).await;
    wait_all_healthy(&client).await;
    let mut sub = client.subscribe(0).expect("subscribe");
    let mut delivered = Vec::new();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("in time")
        {
            Some(Ok(e)) => delivered.push(e.event.counter),
            Some(Err(e)) => break e,
            None => panic!("ended without error"),
        }
    };
    assert_eq!(
        delivered,
        vec![0, 1, 2],
        "nothing after the fork is delivered"
    );
    match err {
        ClientError::ForkDetected {
            counter, details, ..
        } => {
            assert_eq!(counter, 2);
            assert!(details.contains("timestamp"), "{details}");
        }
        other => panic!("expected a fork, got {other}"),
    }
    assert!(
        sub.next().await.is_none(),
        "the subscription ends after a fork"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_move_to_another_endpoint_with_the_same_bytes() {
    let d = Shared::new();
    let a = start(&d, vec![], None).await;
    let b = start(&d, vec![], None).await;
    *a.fake.0.send_default.lock().expect("lock") =
        SendBehaviour::Fail(Code::Unavailable, "SEQ_OUTCOME_UNKNOWN");
    let client = connect(&[&a, &b], fast_options()).await;
    wait_all_healthy(&client).await;
    for i in 0..6 {
        send_through(&client, &format!("m-{i}"), &b.url).await;
        wait_all_healthy(&client).await;
    }
    let to_a = a.fake.0.sends.lock().expect("lock").clone();
    let to_b = b.fake.0.sends.lock().expect("lock").clone();
    assert!(!to_a.is_empty(), "round-robin never tried a");
    assert!(client.stats().failovers >= 1);
    // Every request that failed on a was retried on b with exactly the same bytes.
    for r in &to_a {
        assert!(to_b.contains(r), "a retry changed the signed bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitive_errors_are_returned_at_once() {
    let d = Shared::new();
    let a = start(&d, vec![], None).await;
    let b = start(&d, vec![], None).await;
    for s in [&a, &b] {
        *s.fake.0.send_default.lock().expect("lock") =
            SendBehaviour::Fail(Code::InvalidArgument, "SEQ_RECIPIENT_UNKNOWN");
    }
    let client = connect(&[&a, &b], fast_options()).await;
    let err = client
        .send("m", vec![], now_micros() + 10_000_000)
        .await
        .expect_err("refused");
    match err {
        ClientError::Status(st) => assert_eq!(st.code(), Code::InvalidArgument),
        other => panic!("{other}"),
    }
    let total =
        a.fake.0.sends.lock().expect("lock").len() + b.fake.0.sends.lock().expect("lock").len();
    assert_eq!(total, 1, "a definitive error must not be retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_max_sequencing_time() {
    let d = Shared::new();
    let a = start(&d, vec![], None).await;
    *a.fake.0.send_default.lock().expect("lock") =
        SendBehaviour::Fail(Code::ResourceExhausted, "SEQ_OVERLOADED");
    let client = connect(&[&a], fast_options()).await;
    let started = Instant::now();
    let err = client
        .send("m", vec![], now_micros() + 400_000)
        .await
        .expect_err("never accepted");
    let took = started.elapsed();
    assert!(
        matches!(&err, ClientError::Status(st) if st.code() == Code::ResourceExhausted),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(a.fake.0.sends.lock().expect("lock").len() >= 3, "retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_triggers_one_reauthentication() {
    let d = Shared::new();
    let a = start(&d, vec![], None).await;
    let client = connect(&[&a], fast_options()).await;
    assert_eq!(d.authentications.load(Ordering::SeqCst), 1);
    a.fake.0.reject_next_token.store(true, Ordering::SeqCst);
    let r = client
        .send_detailed("m", vec![], now_micros() + 10_000_000)
        .await
        .expect("sent after re-authentication");
    assert_eq!(r.attempts, 2);
    assert_eq!(d.authentications.load(Ordering::SeqCst), 2);
    assert_eq!(client.stats().token_rejections, 1);
    // A token the sequencer forgot is replaced the same way.
    d.tokens.lock().expect("lock").clear();
    let r = client.send("m2", vec![], now_micros() + 10_000_000).await;
    assert!(r.is_ok(), "a fresh token works: {r:?}");
    assert_eq!(d.authentications.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_returns_is_abandoned() {
    let d = Shared::new();
    let a = start(&d, vec![], None).await;
    let b = start(&d, vec![], None).await;
    *a.fake.0.send_default.lock().expect("lock") = SendBehaviour::Hang;
    let client = connect(&[&a, &b], fast_options()).await;
    wait_all_healthy(&client).await;
    // a stays SERVING: only the call timeout (500 ms here) rescues the send.
    let mut slowest = Duration::ZERO;
    for i in 0..4 {
        let r = send_through(&client, &format!("m-{i}"), &b.url).await;
        slowest = slowest.max(r.elapsed);
    }
    assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    assert!(!a.fake.0.sends.lock().expect("lock").is_empty());

    // Now a turns NOT_SERVING while a call hangs on it: abandoned as soon as the health
    // check notices, well before the call timeout.
    let options = ClientOptions {
        call_timeout: Duration::from_secs(5),
        ..fast_options()
    };
    let client = connect(&[&a, &b], options).await;
    wait_all_healthy(&client).await;
    let health = a.health.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    });
    let started = Instant::now();
    for i in 0..2 {
        send_through(&client, &format!("n-{i}"), &b.url).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(!client.endpoint_health()[0].1, "a is unhealthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_on_unhealthy_endpoint_moves_healthy_idle_stream_stays() {
    let d = Shared::new();
    let key = &d.key;
    let h = history(key, 5, |_| 0);
    // Streams stay open after the history (idle).
    let a = start(&d, h.clone(), None).await;
    let b = start(&d, h.clone(), None).await;
    let client = connect(&[&a, &b], fast_options()).await;
    wait_all_healthy(&client).await;
    let mut sub = client.subscribe(0).expect("subscribe");
    for _ in 0..5 {
        sub.next().await.expect("open").expect("valid");
    }
    let first = client.current_subscription_endpoint().expect("subscribed");
    // Idle and healthy for well over the idle limit: the stream stays.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(client.current_subscription_endpoint(), Some(first.clone()));
    assert_eq!(client.stats().resubscriptions, 0);
    // Its endpoint turns NOT_SERVING: moved within health interval + idle limit.
    let victim = if first == a.url { &a } else { &b };
    victim
        .health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let started = Instant::now();
    while client.current_subscription_endpoint().as_deref() == Some(first.as_str())
        || client.current_subscription_endpoint().is_none()
    {
        assert!(started.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().resubscriptions, 1);
    // Nothing re-delivered to the consumer.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err()
    );
}

/// Issue 11 item 12: an impostor listed first and answering first (same domain id, sequencer
/// id, namespace key and registrations, but its own key) is not adopted: the client connects
/// to the sequencer whose key the namespace registered, refuses the impostor, and sends and
/// subscribes through the real one. Without pins, and with only the domain id pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_12_an_impostor_answering_first_is_rejected_and_the_registered_key_used() {
    for pins in [
        DomainPins::default(),
        DomainPins {
            domain_id: Some(DOMAIN.clone()),
            sequencer_key: None,
        },
    ] {
        let real = Shared::new();
        let impostor = Shared::impostor_of(&real);
        let h = history(&real.key, 3, |_| 0);
        let fake = start(&impostor, history(&impostor.key, 3, |_| 0), None).await;
        let good = start(&real, h.clone(), None).await;
        // The impostor answers first.
        *good.fake.0.info_delay.lock().expect("lock") = Duration::from_millis(200);
        let client = connect(
            &[&fake, &good],
            ClientOptions {
                pins: pins.clone(),
                ..fast_options()
            },
        )
        .await;
        assert_eq!(
            client.sequencer_key(),
            real.key.public_key(),
            "{pins:?}: the impostor's key was adopted"
        );
        assert_eq!(client.namespace_key(), Some(NAMESPACE.public_key()));
        let problems = client.endpoint_problems();
        let fake_problem = problems[0].1.clone().unwrap_or_default();
        assert!(
            fake_problem.contains(&impostor.key.fingerprint().to_string()),
            "{pins:?}: {problems:?}"
        );
        // Sends go to the real one only; the subscription shows its history.
        for i in 0..4 {
            let r = client
                .send_detailed(&format!("m-{i}"), vec![], now_micros() + 5_000_000)
                .await
                .expect("send");
            assert_eq!(r.endpoint, good.url, "{pins:?}");
        }
        assert!(fake.fake.0.sends.lock().expect("lock").is_empty());
        let mut sub = client.subscribe(0).expect("subscribe");
        for expected in &h {
            let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("event in time")
                .expect("open")
                .expect("valid");
            assert_eq!(&e.event, expected);
            assert_eq!(e.endpoint, good.url);
        }
    }
}

/// Without a pinned domain id, endpoints showing two different identities that each check out
/// on their own (here two registered sequencer keys) are not resolved by who answers first:
/// the connect fails and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_12_unpinned_endpoints_that_disagree_do_not_connect() {
    let a = Shared::new();
    let b = Shared::new();
    let fa = start(&a, vec![], None).await;
    let fb = start(&b, vec![], None).await;
    *fb.fake.0.info_delay.lock().expect("lock") = Duration::from_millis(100);
    let urls = vec![fa.url.clone(), fb.url.clone()];
    let err = DomainClient::connect(
        "fake",
        &urls,
        DomainTls::Plaintext,
        member(),
        fast_options(),
    )
    .await
    .expect_err("disagreeing endpoints");
    let text = err.to_string();
    assert!(text.contains("disagree"), "{text}");
}
