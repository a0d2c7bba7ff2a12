//! Client side of the sequencer API: challenge/authenticate, signed sends, and
//! verification of every received event (signature, envelope hashes, counter
//! continuity, increasing timestamps).
//!
//! Two levels:
//! - [`SequencerConnection`]: one authenticated connection to one sequencer endpoint.
//! - [`DomainClient`]: a member's connection to a domain through several endpoints, with
//!   health checks, round-robin sends retried on another endpoint, one subscription that
//!   fails over with fork detection, token renewal and metrics ([`metrics`]).

/// Exponential backoff with jitter ([`domain_backoff`], re-exported so the client's API
/// keeps `backoff::{Backoff, BackoffConfig}`).
pub use domain_backoff as backoff;
mod auth;
pub mod domain_client;
pub mod health;
pub mod metrics;
pub mod retry;
pub mod subscription;
pub mod trust;

pub use backoff::BackoffConfig;
pub use domain_client::{
    ClientOptions, ClientStats, ClientTlsFiles, DomainClient, DomainPins, DomainTls, SendReceipt,
    TlsError, error_chain,
};
pub use health::DomainInfo;
pub use subscription::{Subscription, VerifiedEvent, check_redelivered, event_trace_context};

use std::sync::Arc;
use std::time::Duration;

use domain_identity::{MemberId, PublicKey, Signature, SignaturePurpose, SigningKeyPair, batch};
use domain_proto::common::v1 as common_pb;
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::RwLock;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("sequencer returned {}", status_text(.0))]
    Status(#[from] Status),
    #[error("invalid domain info: {0}")]
    DomainInfo(String),
    /// The endpoint's sequencer key is not confirmed by a namespace-signed sequencer
    /// registration and no key is pinned (see [`trust`]); retried at connect, as the
    /// registration may not be sequenced yet.
    #[error("untrusted sequencer: {0}")]
    Untrusted(String),
    #[error("event validation failed: {0}")]
    InvalidEvent(String),
    /// A TLS file is missing or invalid; the message names the file.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No endpoint of the domain could be used; `details` lists each endpoint's problem.
    #[error("cannot reach domain {alias}: {details}")]
    Unavailable { alias: String, details: String },
    /// An endpoint re-delivered a processed event differently: the sequencers disagree on
    /// the history.
    #[error("fork detected at counter {counter} on {endpoint}: {details}")]
    ForkDetected {
        counter: i64,
        endpoint: String,
        details: String,
    },
    /// Invalid arguments or settings.
    #[error("invalid client settings: {0}")]
    Config(String),
}

/// A status as the server sent it, with its `domain-error-code` (the stable code operators
/// search logs for) appended when present.
fn status_text(status: &Status) -> String {
    match retry::error_code(status) {
        Some(code) => format!("{status} [{code}]"),
        None => status.to_string(),
    }
}

/// A member's identity: its id and signing key.
#[derive(Clone)]
pub struct MemberIdentity {
    pub id: MemberId,
    pub key: Arc<SigningKeyPair>,
}

/// Opens a channel to one sequencer endpoint (`https://host:port` with TLS).
pub async fn connect_channel(
    endpoint: &str,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
) -> Result<Channel, ClientError> {
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| ClientError::Endpoint {
            endpoint: endpoint.into(),
            reason: e.to_string(),
        })?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        ep = ep.tls_config(tls).map_err(|e| ClientError::Endpoint {
            endpoint: endpoint.into(),
            reason: e.to_string(),
        })?;
    }
    ep.connect().await.map_err(|e| ClientError::Connect {
        endpoint: endpoint.into(),
        reason: format!("{e:?}"),
    })
}

/// How long [`SequencerConnection::authenticate`] waits for each of its two calls.
pub const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An authenticated connection of one member to one sequencer endpoint.
#[derive(Clone)]
pub struct SequencerConnection {
    client: SequencerServiceClient<Channel>,
    pub member: MemberIdentity,
    pub domain_id: String,
    pub sequencer_key: PublicKey,
    token: Arc<RwLock<Option<auth::Granted>>>,
    /// Batch roots whose signature [`Self::verify_event`] checked (shared by clones).
    batch_roots: Arc<std::sync::Mutex<BatchRoots>>,
}

impl SequencerConnection {
    /// Fetches domain info over `channel`; call [`Self::authenticate`] next.
    pub async fn new(channel: Channel, member: MemberIdentity) -> Result<Self, ClientError> {
        let mut client = SequencerServiceClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let info = client
            .get_domain_info(pb::GetDomainInfoRequest {})
            .await?
            .into_inner();
        let key = info
            .sequencer_public_key
            .ok_or_else(|| ClientError::DomainInfo("no sequencer public key".into()))?;
        let sequencer_key =
            PublicKey::try_from(&key).map_err(|e| ClientError::DomainInfo(e.to_string()))?;
        Ok(Self {
            client,
            member,
            domain_id: info.domain_id,
            sequencer_key,
            token: Arc::new(RwLock::new(None)),
            batch_roots: Arc::default(),
        })
    }

    /// Opens a channel to `endpoint`, fetches domain info and authenticates.
    pub async fn connect(
        endpoint: &str,
        tls: Option<ClientTlsConfig>,
        member: MemberIdentity,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let channel = connect_channel(endpoint, tls, timeout).await?;
        let conn = Self::new(channel, member).await?;
        conn.authenticate().await?;
        Ok(conn)
    }

    /// Runs challenge → signature → token and keeps the token for later calls. Each call
    /// waits at most [`AUTH_CALL_TIMEOUT`].
    pub async fn authenticate(&self) -> Result<(), ClientError> {
        let mut client = self.client.clone();
        let granted = auth::authenticate(
            &mut client,
            &self.member,
            &self.domain_id,
            "the sequencer",
            AUTH_CALL_TIMEOUT,
        )
        .await?;
        *self.token.write().await = Some(granted);
        Ok(())
    }

    /// Returns the current token, if authenticated.
    pub async fn token(&self) -> Option<String> {
        self.token.read().await.as_ref().map(|g| g.token.clone())
    }

    async fn authed<T>(&self, msg: T) -> Result<Request<T>, ClientError> {
        let token = self
            .token()
            .await
            .ok_or_else(|| Status::unauthenticated("not authenticated"))?;
        let mut req = Request::new(msg);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not valid metadata"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }

    /// Encodes and signs a submission, with the current trace context.
    pub fn sign_submission(&self, submission: &pb::SubmissionRequest) -> pb::SendRequest {
        let bytes = submission.encode_to_vec();
        let sig = self
            .member
            .key
            .sign_with_domain_str(SignaturePurpose::Submission, &self.domain_id, &bytes)
            .ok();
        pb::SendRequest {
            submission: bytes,
            signature: sig.map(|s| to_proto_signature(&s, SignaturePurpose::Submission)),
            trace_context: current_trace_context(),
        }
    }

    /// Sends an already signed request.
    pub async fn send_signed(
        &self,
        request: pb::SendRequest,
    ) -> Result<pb::SendResponse, ClientError> {
        let req = self.authed(request).await?;
        Ok(self.client.clone().send(req).await?.into_inner())
    }

    /// Builds, signs and sends a submission.
    pub async fn send(
        &self,
        message_id: &str,
        envelopes: Vec<pb::Envelope>,
        max_sequencing_time_micros: i64,
    ) -> Result<pb::SendResponse, ClientError> {
        let sub = pb::SubmissionRequest {
            sender: self.member.id.to_string(),
            message_id: message_id.to_string(),
            envelopes,
            max_sequencing_time_micros,
            time_proof: false,
        };
        self.send_signed(self.sign_submission(&sub)).await
    }

    /// Opens the member's event stream from `from_counter`.
    pub async fn subscribe(
        &self,
        from_counter: i64,
    ) -> Result<tonic::Streaming<pb::SubscribeResponse>, ClientError> {
        let req = self
            .authed(pb::SubscribeRequest {
                member: self.member.id.to_string(),
                from_counter,
            })
            .await?;
        Ok(self.client.clone().subscribe(req).await?.into_inner())
    }

    pub async fn acknowledge(&self, timestamp_micros: i64) -> Result<(), ClientError> {
        let req = self
            .authed(pb::AcknowledgeRequest {
                member: self.member.id.to_string(),
                timestamp_micros,
            })
            .await?;
        self.client.clone().acknowledge(req).await?;
        Ok(())
    }

    /// Verifies an event's sequencer signature and that every delivered envelope
    /// is one the signature covers; a batch's signature is checked once per connection.
    pub fn verify_event(
        &self,
        event: &pb::SequencedEvent,
    ) -> Result<pb::SignedEventContent, ClientError> {
        // A panic elsewhere while holding the lock leaves only a list of verified roots,
        // every one of which is still verified.
        let mut roots = self
            .batch_roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        verify_event_with(
            &self.sequencer_key,
            &self.domain_id,
            event,
            Some(&mut roots),
        )
    }
}

/// The `trace_context` to put in a `SendRequest`: the `traceparent` of the current span when
/// there is a current trace context (an RPC being handled, or an event being processed inside
/// [`domain_trace::TraceContext::scope`]), otherwise empty. The sequencer stores it
/// with the event and delivers it to every recipient, so their processing joins this trace.
pub fn current_trace_context() -> String {
    domain_trace::TraceContext::current()
        .map(|ctx| ctx.to_traceparent())
        .unwrap_or_default()
}

/// Verifies an event against the sequencer key and domain id: the sequencer
/// signature (over the event, or over its batch's root with the event's inclusion proof),
/// then [`check_event_content`]. Checks every signature it meets; a stream verifier keeps a
/// [`BatchRoots`] and calls [`verify_event_with`] to check each batch's signature once.
pub fn verify_event(
    key: &PublicKey,
    domain_id: &str,
    event: &pb::SequencedEvent,
) -> Result<pb::SignedEventContent, ClientError> {
    verify_event_with(key, domain_id, event, None)
}

/// [`verify_event`], skipping the signature check of a batch root found in `roots` and
/// remembering each batch root whose signature it checked.
pub fn verify_event_with(
    key: &PublicKey,
    domain_id: &str,
    event: &pb::SequencedEvent,
    roots: Option<&mut BatchRoots>,
) -> Result<pb::SignedEventContent, ClientError> {
    let sig = event
        .signature
        .as_ref()
        .ok_or_else(|| ClientError::InvalidEvent("missing signature".into()))?;
    match &event.batch_proof {
        None => {
            let signature =
                Signature::try_from(sig).map_err(|e| ClientError::InvalidEvent(e.to_string()))?;
            key.verify_with_domain_str(
                SignaturePurpose::SequencedEvent,
                domain_id,
                &event.content,
                &signature,
            )
            .map_err(|e| ClientError::InvalidEvent(format!("bad sequencer signature: {e}")))?;
        }
        Some(proof) => {
            let root = batch::root_from_path(
                batch::leaf_hash(&event.content),
                proof.leaf_index,
                proof.leaf_count,
                &proof.path,
            )
            .map_err(|e| ClientError::InvalidEvent(format!("bad batch proof: {e}")))?;
            let payload = batch::root_payload(proof.leaf_count, &root);
            let known = roots.as_ref().is_some_and(|r| r.contains(&payload));
            if !known {
                let signature = Signature::try_from(sig)
                    .map_err(|e| ClientError::InvalidEvent(e.to_string()))?;
                key.verify_with_domain_str(
                    SignaturePurpose::SequencedBatch,
                    domain_id,
                    &payload,
                    &signature,
                )
                .map_err(|e| {
                    ClientError::InvalidEvent(format!(
                        "bad sequencer signature (over the batch root): {e}"
                    ))
                })?;
                if let Some(roots) = roots {
                    roots.insert(payload);
                }
            }
        }
    }
    check_event_content(event)
}

/// Batch roots (with their leaf counts) whose sequencer signature a verifier has checked,
/// for one sequencer key and domain: the most recent [`BatchRoots::CAPACITY`], since the
/// events of one batch reach a member one after the other.
#[derive(Debug, Clone, Default)]
pub struct BatchRoots {
    recent: std::collections::VecDeque<[u8; batch::ROOT_PAYLOAD_LEN]>,
}

impl BatchRoots {
    pub const CAPACITY: usize = 16;

    fn contains(&self, payload: &[u8; batch::ROOT_PAYLOAD_LEN]) -> bool {
        self.recent.iter().any(|p| p == payload)
    }

    fn insert(&mut self, payload: [u8; batch::ROOT_PAYLOAD_LEN]) {
        if self.recent.len() == Self::CAPACITY {
            self.recent.pop_front();
        }
        self.recent.push_back(payload);
    }
}

/// The per-recipient part of event verification, once the signature over
/// `event.content` is known to be valid (the sequencer signs the content once for
/// every recipient, so a verifier may cache that): the timestamp and message id
/// are the signed ones, and every delivered envelope is covered by a signed hash.
pub fn check_event_content(
    event: &pb::SequencedEvent,
) -> Result<pb::SignedEventContent, ClientError> {
    let content = pb::SignedEventContent::decode(event.content.as_slice())
        .map_err(|e| ClientError::InvalidEvent(format!("undecodable content: {e}")))?;
    if content.timestamp_micros != event.timestamp_micros {
        return Err(ClientError::InvalidEvent(
            "timestamp differs from the signed one".into(),
        ));
    }
    for d in &event.envelopes {
        let env = d
            .envelope
            .as_ref()
            .ok_or_else(|| ClientError::InvalidEvent("empty envelope".into()))?;
        let hash = Sha256::digest(env.encode_to_vec()).to_vec();
        if content.envelope_hashes.get(d.index as usize) != Some(&hash) {
            return Err(ClientError::InvalidEvent(format!(
                "envelope {} is not covered by the signature",
                d.index
            )));
        }
    }
    if !event.message_id.is_empty()
        && Sha256::digest(event.message_id.as_bytes()).as_slice()
            != content.message_id_hash.as_slice()
    {
        return Err(ClientError::InvalidEvent(
            "message id does not match the signed hash".into(),
        ));
    }
    Ok(content)
}

/// Checks counter continuity and increasing timestamps across a stream.
#[derive(Debug, Clone, Default)]
pub struct StreamValidator {
    last: Option<(i64, i64)>,
}

impl StreamValidator {
    pub fn starting_after(counter: i64, timestamp: i64) -> Self {
        Self {
            last: Some((counter, timestamp)),
        }
    }

    pub fn check(&mut self, event: &pb::SequencedEvent) -> Result<(), ClientError> {
        if let Some((c, ts)) = self.last {
            // Counters are peer input: `c + 1` would overflow (a panic with overflow checks).
            let Some(next) = c.checked_add(1) else {
                return Err(ClientError::InvalidEvent(format!(
                    "no event can follow counter {c}"
                )));
            };
            if event.counter != next {
                return Err(ClientError::InvalidEvent(format!(
                    "counter gap: expected {next}, got {}",
                    event.counter
                )));
            }
            if event.timestamp_micros <= ts {
                return Err(ClientError::InvalidEvent(format!(
                    "timestamp {} not after {ts}",
                    event.timestamp_micros
                )));
            }
            if event.previous_timestamp_micros != ts {
                return Err(ClientError::InvalidEvent(format!(
                    "previous timestamp {} differs from the last seen {ts}",
                    event.previous_timestamp_micros
                )));
            }
        }
        self.last = Some((event.counter, event.timestamp_micros));
        Ok(())
    }
}

/// Verifies a payload signed by a member that ships its own public key (confirmation
/// responses, verdicts): the key must be ed25519 and match `member`'s fingerprint,
/// and the signature must be for `purpose` in `domain_id` over `payload`.
pub fn verify_member_signature(
    signer_key: Option<&common_pb::PublicKey>,
    signature: Option<&common_pb::Signature>,
    member: &MemberId,
    purpose: SignaturePurpose,
    domain_id: &domain_identity::DomainId,
    payload: &[u8],
) -> Result<(), String> {
    let key = signer_key.ok_or_else(|| "no signer key".to_string())?;
    let key = domain_proto::identity::ed25519_key(key).map_err(|e| match e {
        domain_proto::identity::KeyConversionError::NotEd25519 => {
            "signer key is not ed25519".to_string()
        }
        domain_proto::identity::KeyConversionError::Key(e) => format!("invalid signer key: {e}"),
    })?;
    if !member.matches_key(&key) {
        return Err(format!(
            "signer key {} is not the key of {member}",
            key.fingerprint()
        ));
    }
    let sig = signature.ok_or_else(|| "no signature".to_string())?;
    if !sig.purpose_is(purpose) {
        return Err(format!(
            "signature purpose is not {}",
            purpose.tag().to_uppercase().replace('-', "_")
        ));
    }
    let signature = Signature::try_from(sig).map_err(|e| format!("invalid signature: {e}"))?;
    key.verify(purpose, domain_id, payload, &signature)
        .map_err(|e| e.to_string())
}

/// The wire form of `sig`; see [`domain_proto::identity`].
pub fn to_proto_signature(sig: &Signature, purpose: SignaturePurpose) -> common_pb::Signature {
    common_pb::Signature::from_identity(sig, purpose)
}

#[cfg(test)]
mod stream_validator_tests {
    use super::*;

    /// Found by the `sequenced_event` fuzz target (fuzz/corpus/sequenced_event/
    /// crash-counter-overflow): an event at counter `i64::MAX` followed by another panicked
    /// with "attempt to add with overflow" instead of refusing the stream.
    #[test]
    fn item_15_counter_overflow_is_refused_not_a_panic() {
        let event = pb::SequencedEvent {
            counter: i64::MAX,
            timestamp_micros: 1,
            ..Default::default()
        };
        let mut validator = StreamValidator::default();
        validator.check(&event).expect("a first event is accepted");
        let next = pb::SequencedEvent {
            timestamp_micros: 2,
            previous_timestamp_micros: 1,
            ..event
        };
        match validator.check(&next) {
            Err(ClientError::InvalidEvent(reason)) => {
                assert_eq!(reason, format!("no event can follow counter {}", i64::MAX))
            }
            other => panic!("expected InvalidEvent, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod batch_signature_tests {
    use super::*;

    const DOMAIN: &str = "d::1220aa";

    fn content(ts: i64) -> Vec<u8> {
        pb::SignedEventContent {
            domain_id: DOMAIN.into(),
            timestamp_micros: ts,
            sender: "s".into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn proto_sig(
        key: &SigningKeyPair,
        purpose: SignaturePurpose,
        payload: &[u8],
    ) -> common_pb::Signature {
        let sig = key
            .sign_with_domain_str(purpose, DOMAIN, payload)
            .expect("sign");
        common_pb::Signature {
            signature: sig.to_bytes().to_vec(),
            signer_fingerprint: key.fingerprint().to_string(),
            purpose: purpose.as_i32(),
        }
    }

    /// A batch of `n` events signed the way the sequencer's writer does.
    fn batch_of(key: &SigningKeyPair, n: usize) -> Vec<pb::SequencedEvent> {
        let contents: Vec<Vec<u8>> = (0..n).map(|i| content(100 + i as i64)).collect();
        let (payload, proofs) = batch::prepare(&contents).expect("non-empty");
        let signature = proto_sig(key, SignaturePurpose::SequencedBatch, &payload);
        contents
            .into_iter()
            .zip(proofs)
            .enumerate()
            .map(|(i, (content, proof))| pb::SequencedEvent {
                counter: i as i64,
                timestamp_micros: 100 + i as i64,
                content,
                signature: Some(signature.clone()),
                batch_proof: Some(proof.into()),
                ..Default::default()
            })
            .collect()
    }

    fn rejected(result: Result<pb::SignedEventContent, ClientError>) -> String {
        match result {
            Err(ClientError::InvalidEvent(reason)) => reason,
            other => panic!("expected InvalidEvent, got {other:?}"),
        }
    }

    #[test]
    fn every_event_of_a_signed_batch_verifies() {
        let key = SigningKeyPair::from_seed(&[5; 32]);
        for n in [1, 2, 3, 7, 27] {
            for event in batch_of(&key, n) {
                verify_event(key.public_key(), DOMAIN, &event).expect("valid");
            }
        }
    }

    #[test]
    fn a_batch_event_is_refused_when_anything_signed_changes() {
        let key = SigningKeyPair::from_seed(&[5; 32]);
        let events = batch_of(&key, 5);
        let pk = key.public_key();

        let mut tampered = events[2].clone();
        tampered.content = content(999);
        tampered.timestamp_micros = 999;
        assert!(
            rejected(verify_event(pk, DOMAIN, &tampered))
                .contains("bad sequencer signature (over the batch root)")
        );

        let mut moved = events[2].clone();
        if let Some(p) = moved.batch_proof.as_mut() {
            p.leaf_index = 3;
        }
        assert!(
            rejected(verify_event(pk, DOMAIN, &moved))
                .contains("bad sequencer signature (over the batch root)")
        );

        let mut recounted = events[2].clone();
        if let Some(p) = recounted.batch_proof.as_mut() {
            p.leaf_count = 9;
        }
        let reason = rejected(verify_event(pk, DOMAIN, &recounted));
        assert!(reason.contains("batch"), "{reason}");

        let mut out_of_range = events[2].clone();
        if let Some(p) = out_of_range.batch_proof.as_mut() {
            p.leaf_index = 5;
        }
        assert!(rejected(verify_event(pk, DOMAIN, &out_of_range)).contains("bad batch proof"));

        let mut too_long = events[2].clone();
        if let Some(p) = too_long.batch_proof.as_mut() {
            p.path = vec![vec![0; 32]; batch::MAX_PATH_LEN + 1];
        }
        assert!(rejected(verify_event(pk, DOMAIN, &too_long)).contains("bad batch proof"));

        // The root's signature made for a single event's purpose is not a batch signature.
        let mut wrong_purpose = events[0].clone();
        let Some(p) = events[0].batch_proof.as_ref() else {
            panic!("proof")
        };
        let leaves: Vec<batch::Hash> = events
            .iter()
            .map(|e| batch::leaf_hash(&e.content))
            .collect();
        let (root, _) = batch::tree(&leaves).expect("non-empty");
        assert_eq!(p.leaf_count, 5);
        wrong_purpose.signature = Some(proto_sig(
            &key,
            SignaturePurpose::SequencedEvent,
            &batch::root_payload(5, &root),
        ));
        rejected(verify_event(pk, DOMAIN, &wrong_purpose));

        // Another key's batch signature.
        let other = SigningKeyPair::from_seed(&[6; 32]);
        rejected(verify_event(other.public_key(), DOMAIN, &events[1]));
        // Another domain.
        rejected(verify_event(pk, "d::1220bb", &events[1]));
    }

    #[test]
    fn a_per_event_signature_still_verifies_and_is_not_a_batch_one() {
        let key = SigningKeyPair::from_seed(&[5; 32]);
        let c = content(100);
        let event = pb::SequencedEvent {
            timestamp_micros: 100,
            signature: Some(proto_sig(&key, SignaturePurpose::SequencedEvent, &c)),
            content: c,
            ..Default::default()
        };
        verify_event(key.public_key(), DOMAIN, &event).expect("valid");
        // Adding a proof makes the same signature a (wrong) batch signature.
        let with_proof = pb::SequencedEvent {
            batch_proof: Some(pb::BatchProof {
                leaf_index: 0,
                leaf_count: 1,
                path: vec![],
            }),
            ..event
        };
        rejected(verify_event(key.public_key(), DOMAIN, &with_proof));
    }

    #[test]
    fn a_verified_root_is_not_checked_again_and_a_new_one_is() {
        let key = SigningKeyPair::from_seed(&[5; 32]);
        let pk = key.public_key();
        let events = batch_of(&key, 4);
        let mut roots = BatchRoots::default();
        verify_event_with(pk, DOMAIN, &events[0], Some(&mut roots)).expect("valid");
        // The second event of the batch with a garbage signature: its proof leads to the
        // root already verified, so the signature is not looked at (the cache is in use)...
        let mut garbled = events[1].clone();
        if let Some(s) = garbled.signature.as_mut() {
            s.signature = vec![0; 64];
        }
        verify_event_with(pk, DOMAIN, &garbled, Some(&mut roots)).expect("root known");
        // ...while without the cache it is.
        rejected(verify_event(pk, DOMAIN, &garbled));
        // An event of another batch is checked: a garbage signature there is refused.
        let mut other = batch_of(&key, 3)[0].clone();
        if let Some(s) = other.signature.as_mut() {
            s.signature = vec![0; 64];
        }
        rejected(verify_event_with(pk, DOMAIN, &other, Some(&mut roots)));
        // The cache is bounded.
        for n in 1..=40 {
            verify_event_with(pk, DOMAIN, &batch_of(&key, n)[0], Some(&mut roots)).expect("valid");
        }
        assert_eq!(roots.recent.len(), BatchRoots::CAPACITY);
    }
}
