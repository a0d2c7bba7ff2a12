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

use domain_identity::{MemberId, PublicKey, Signature, SignaturePurpose, SigningKeyPair};
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
    /// is one the signature covers.
    pub fn verify_event(
        &self,
        event: &pb::SequencedEvent,
    ) -> Result<pb::SignedEventContent, ClientError> {
        verify_event(&self.sequencer_key, &self.domain_id, event)
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
/// signature, then [`check_event_content`].
pub fn verify_event(
    key: &PublicKey,
    domain_id: &str,
    event: &pb::SequencedEvent,
) -> Result<pb::SignedEventContent, ClientError> {
    let sig = event
        .signature
        .as_ref()
        .ok_or_else(|| ClientError::InvalidEvent("missing signature".into()))?;
    let signature =
        Signature::try_from(sig).map_err(|e| ClientError::InvalidEvent(e.to_string()))?;
    key.verify_with_domain_str(
        SignaturePurpose::SequencedEvent,
        domain_id,
        &event.content,
        &signature,
    )
    .map_err(|e| ClientError::InvalidEvent(format!("bad sequencer signature: {e}")))?;
    check_event_content(event)
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
