//! The participant-side client of one domain with several sequencer endpoints:
//! health-checked round-robin sends with retries on another endpoint, one subscription that
//! fails over transparently, and a token that is refreshed before it expires.
//!
//! ```no_run
//! # async fn t(member: domain_sequencer_client::MemberIdentity) -> Result<(), domain_sequencer_client::ClientError> {
//! use domain_sequencer_client::{ClientOptions, ClientTlsFiles, DomainClient};
//! let tls = ClientTlsFiles {
//!     ca: "provider-ca.pem".into(),
//!     cert: None,
//!     key: None,
//!     domain_name: None,
//! };
//! let endpoints = ["https://seq1:5001".to_string(), "https://seq2:5001".to_string()];
//! let client =
//!     DomainClient::connect("mydomain", &endpoints, tls, member, ClientOptions::default()).await?;
//! let mut events = client.subscribe(0)?;
//! client.send("m-1", vec![], 0).await?;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} at {}", event.event.counter, event.event.timestamp_micros);
//! }
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - **Connect.** One lazy gRPC channel per endpoint (rustls, trusting only the given CA;
//!   optional client certificate). `connect` asks every endpoint for the domain info until
//!   one *trusted* answer comes (up to [`ClientOptions::connect_timeout`]; a TLS failure such
//!   as an unknown issuer on every endpoint fails at once), then authenticates. An answer is
//!   trusted when it keeps the [`DomainPins`] and, without a pinned sequencer key, when its
//!   sequencer key is the one the domain's namespace-signed sequencer registration names
//!   ([`crate::trust`]): being first proves nothing. Without a pinned domain id, every
//!   endpoint that answers within the call timeout must show the same domain and key, or
//!   the connect fails. Endpoints that were down join later, once their health check passes
//!   and they show the same domain id and sequencer key.
//! - **Health.** Every endpoint's `grpc.health.v1` service `""` is checked every
//!   [`ClientOptions::health_interval`] with [`ClientOptions::health_timeout`]; a transport
//!   error or `UNAVAILABLE` from any call marks the endpoint unhealthy at once.
//! - **Sends** go round-robin over the healthy endpoints, leaving out those whose health-check
//!   round trip is far above the best one's (more than twice it plus 100 ms, e.g. behind a
//!   slow cross-region link) while another healthy endpoint is left. A retryable failure
//!   ([`crate::retry`]) is retried, on another endpoint when there is one, with the same
//!   signed bytes (so the same message id: the sequencer deduplicates), after an
//!   exponential backoff with jitter, until the submission's max sequencing time. An
//!   attempt is abandoned after [`ClientOptions::call_timeout`] (connect included) or as
//!   soon as its endpoint turns unhealthy. Definitive errors are returned at once.
//! - **Token.** One token, valid on every instance of the domain (the sequencer stores
//!   tokens in the shared database), obtained through any healthy endpoint. It is renewed
//!   at [`ClientOptions::token_refresh_fraction`] (2/3) of its lifetime and swapped
//!   atomically, so calls never go out without a valid token; an `UNAUTHENTICATED`
//!   `SEQ_TOKEN_INVALID` answer triggers one re-authentication and a retry.
//! - **Subscription.** See [`crate::subscription`]: one stream, resumed on another endpoint
//!   from the last processed counter, with fork detection and full event validation.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain_identity::{PublicKey, SignaturePurpose};
use domain_proto::sequencer::v1 as pb;
pub use domain_tls::{ClientTlsFiles, TlsError};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::ClientTlsConfig;
use tonic::{Request, Status};

use crate::backoff::{Backoff, BackoffConfig};
use crate::health::{
    DomainInfo, EndpointHandle, fetch_domain_info, health_loop, is_slow, pick_preferring,
};
use crate::retry::{RetryClass, classify, classify_status, error_code};
use crate::subscription::{Start, Subscription};
use crate::{ClientError, MemberIdentity, metrics, to_proto_signature};

/// TLS settings of [`DomainClient::connect`].
#[derive(Debug, Clone)]
pub enum DomainTls {
    /// PEM files, loaded and checked up front: a missing or invalid file is an error naming
    /// it ([`ClientError::Tls`]).
    Files(ClientTlsFiles),
    /// Ready tonic settings (the caller loaded the certificates).
    Config(ClientTlsConfig),
    /// No TLS: `http://` endpoints only (local tests).
    Plaintext,
}

impl From<ClientTlsFiles> for DomainTls {
    fn from(files: ClientTlsFiles) -> Self {
        Self::Files(files)
    }
}

impl From<ClientTlsConfig> for DomainTls {
    fn from(config: ClientTlsConfig) -> Self {
        Self::Config(config)
    }
}

impl DomainTls {
    fn load(&self) -> Result<Option<ClientTlsConfig>, ClientError> {
        match self {
            Self::Files(files) => Ok(Some(domain_tls::client_tls_config(files)?)),
            Self::Config(config) => Ok(Some(config.clone())),
            Self::Plaintext => Ok(None),
        }
    }
}

/// Timeouts and pacing of a [`DomainClient`]. The defaults suit a domain on a LAN or in one
/// region; every field is documented with its default.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long [`DomainClient::connect`] keeps trying to reach a first endpoint and
    /// authenticate. Default `10s`.
    pub connect_timeout: Duration,
    /// Bound on one attempt of a unary call (send, acknowledge, challenge, authenticate,
    /// domain info, opening a subscription), connecting included. Default `2s`.
    pub call_timeout: Duration,
    /// Pause between two health checks of an endpoint. Default `500ms`.
    pub health_interval: Duration,
    /// A health check not answered within this marks the endpoint unhealthy. Default `1s`.
    pub health_timeout: Duration,
    /// A subscription whose endpoint is unhealthy and that has received nothing for this long
    /// is dropped and resumed elsewhere. (A healthy idle stream is never cut: an idle
    /// sequencer sends nothing.) Default `1s`.
    pub subscription_idle: Duration,
    /// Delays between failed attempts. Default 50 ms doubling to 2 s, ±20 % jitter.
    pub backoff: BackoffConfig,
    /// Renew the token after this fraction of its lifetime; `None` disables proactive
    /// renewal (the token is then only renewed when a call is refused with
    /// `SEQ_TOKEN_INVALID`). Default `Some(2/3)`.
    pub token_refresh_fraction: Option<f64>,
    /// Events buffered between the subscription task and its consumer. Default 256.
    pub subscription_buffer: usize,
    /// Max sequencing time of [`DomainClient::send_time_proof`], from now. Default `10s`.
    pub time_proof_ttl: Duration,
    /// How long [`DomainClient::acknowledge`] retries. Default `10s`.
    pub acknowledge_timeout: Duration,
    /// What the domain must be (from a connection bundle or `--expect-…`). Default: no
    /// pins (the sequencer key must then be confirmed by a namespace-signed registration,
    /// and the endpoints that answer must agree on the domain).
    pub pins: DomainPins,
}

/// Pins of a connection: once set, an endpoint showing another domain id or sequencer key
/// is refused (with the reason in [`DomainClient::endpoint_problems`]) and its key is
/// never adopted, even when it answers first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainPins {
    /// The domain id (`name::1220…`).
    pub domain_id: Option<String>,
    /// Fingerprint of the sequencer key (`1220…`).
    pub sequencer_key: Option<domain_identity::Fingerprint>,
}

impl DomainPins {
    /// Why `info` breaks a pin, if it does.
    #[must_use]
    pub fn violation(&self, info: &DomainInfo) -> Option<String> {
        if let Some(d) = &self.domain_id
            && &info.domain_id != d
        {
            return Some(format!(
                "serves domain {}, but the connection is pinned to domain {d}",
                info.domain_id
            ));
        }
        if let Some(k) = &self.sequencer_key
            && info.sequencer_key.fingerprint() != k
        {
            return Some(format!(
                "presents sequencer key {}, but the connection is pinned to key {k}",
                info.sequencer_key.fingerprint()
            ));
        }
        None
    }

    /// Why `info`'s sequencer key cannot be trusted on these pins, if it cannot: a pinned
    /// key is trusted by the pin; otherwise a namespace-signed registration must name it.
    #[must_use]
    pub fn untrusted(&self, info: &DomainInfo) -> Option<String> {
        if self.sequencer_key.is_some() {
            return None;
        }
        info.unregistered_reason()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(2),
            health_interval: Duration::from_millis(500),
            health_timeout: Duration::from_secs(1),
            subscription_idle: Duration::from_secs(1),
            backoff: BackoffConfig::default(),
            token_refresh_fraction: Some(2.0 / 3.0),
            subscription_buffer: 256,
            time_proof_ttl: Duration::from_secs(10),
            acknowledge_timeout: Duration::from_secs(10),
            pins: DomainPins::default(),
        }
    }
}

/// The outcome of a send, with how it got there.
#[derive(Debug, Clone)]
pub struct SendReceipt {
    pub response: pb::SendResponse,
    /// The endpoint that answered.
    pub endpoint: String,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    /// Attempts that went to another endpoint than the previous one.
    pub failovers: u32,
    /// From the first attempt to the answer.
    pub elapsed: Duration,
}

/// Counters of one client (the same events as the metrics, per client instance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Sends answered successfully.
    pub sends: u64,
    /// Send attempts after the first, over all sends.
    pub send_retries: u64,
    /// Attempts (sends, acknowledgements) moved to another endpoint after a failure.
    pub failovers: u64,
    /// Subscriptions reopened after a failure.
    pub resubscriptions: u64,
    /// Tokens renewed before expiry.
    pub token_refreshes: u64,
    /// Calls refused with `SEQ_TOKEN_INVALID`/`SEQ_MISSING_CREDENTIALS`, each followed by a
    /// re-authentication.
    pub token_rejections: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    sends: AtomicU64,
    send_retries: AtomicU64,
    failovers: AtomicU64,
    pub(crate) resubscriptions: AtomicU64,
    token_refreshes: AtomicU64,
    token_rejections: AtomicU64,
}

/// A token with its renewal time.
#[derive(Debug)]
pub(crate) struct Token {
    value: String,
    expires_at: Instant,
    refresh_at: Option<Instant>,
    pub(crate) generation: u64,
}

/// Why a token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenReason {
    Initial,
    Expiry,
    Rejected,
}

pub(crate) struct Inner {
    pub(crate) alias: String,
    pub(crate) member: MemberIdentity,
    pub(crate) options: ClientOptions,
    pub(crate) info: Arc<DomainInfo>,
    pub(crate) endpoints: Vec<Arc<EndpointHandle>>,
    cursor: AtomicUsize,
    token: watch::Sender<Option<Arc<Token>>>,
    auth_lock: tokio::sync::Mutex<()>,
    pub(crate) subscription_endpoint: Mutex<Option<String>>,
    subscription_cancel: Mutex<Option<CancellationToken>>,
    pub(crate) stats: Stats,
}

/// Stops the background tasks when the last clone of a [`DomainClient`] is dropped.
struct TaskGuard {
    stop: CancellationToken,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A member's connection to one domain through several sequencer endpoints. Cheap to clone;
/// background tasks (health checks, token renewal) stop when the last clone and the last
/// [`Subscription`] are dropped.
#[derive(Clone)]
pub struct DomainClient {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<TaskGuard>,
}

impl std::fmt::Debug for DomainClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainClient")
            .field("alias", &self.inner.alias)
            .field("member", &self.inner.member.id.to_string())
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

impl DomainClient {
    /// Connects `member` to the domain `alias` served by `endpoints`
    /// (`https://host:port`), trusting `tls`'s CA only.
    ///
    /// Fails with [`ClientError::Tls`] when a TLS file is missing or invalid (the error names
    /// the file), with [`ClientError::Unavailable`] when no endpoint could be reached within
    /// [`ClientOptions::connect_timeout`] or every endpoint failed the TLS handshake (e.g.
    /// its certificate is not signed by the trusted CA), and with the sequencer's status when
    /// authentication is refused (e.g. `PERMISSION_DENIED` for a member that is not
    /// allowlisted).
    pub async fn connect(
        alias: &str,
        endpoints: &[String],
        tls: impl Into<DomainTls>,
        member: MemberIdentity,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Config(format!(
                "domain {alias}: no sequencer endpoint given"
            )));
        }
        if options.health_interval.is_zero() || options.call_timeout.is_zero() {
            return Err(ClientError::Config(
                "health_interval and call_timeout must be positive".into(),
            ));
        }
        let tls = tls.into().load()?;
        let handles = endpoints
            .iter()
            .map(|url| EndpointHandle::new(alias, url, tls.clone(), options.call_timeout))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>();
        let deadline = Instant::now() + options.connect_timeout;
        let info = Arc::new(discover(alias, &handles, &options, deadline).await?);
        // First health checks now, until one endpoint is healthy (a hung endpoint does not
        // hold up the connect; the health loops settle the others).
        {
            let mut checks: FuturesUnordered<_> = handles
                .iter()
                .map(|h| h.check_once(&info, options.health_timeout))
                .collect();
            while let Some(healthy) = checks.next().await {
                if healthy {
                    break;
                }
            }
        }

        let stop = CancellationToken::new();
        let (token, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            alias: alias.to_string(),
            member,
            options,
            info: info.clone(),
            endpoints: handles,
            cursor: AtomicUsize::new(0),
            token,
            auth_lock: tokio::sync::Mutex::new(()),
            subscription_endpoint: Mutex::new(None),
            subscription_cancel: Mutex::new(None),
            stats: Stats::default(),
        });
        // Health loops start before authentication so that an endpoint that fails during
        // it is noticed.
        for ep in &inner.endpoints {
            tokio::spawn(health_loop(
                ep.clone(),
                info.clone(),
                inner.options.health_interval,
                inner.options.health_timeout,
                stop.clone(),
            ));
        }
        let client = Self {
            inner: inner.clone(),
            _guard: Arc::new(TaskGuard { stop: stop.clone() }),
        };
        inner.obtain_token(deadline, TokenReason::Initial).await?;
        tokio::spawn(refresh_loop(inner, stop));
        tracing::info!(
            alias,
            member = %client.inner.member.id,
            domain = %info.domain_id,
            endpoints = ?endpoints,
            "connected to domain"
        );
        Ok(client)
    }

    /// The alias given at connect.
    pub fn alias(&self) -> &str {
        &self.inner.alias
    }

    /// The connected member.
    pub fn member(&self) -> &MemberIdentity {
        &self.inner.member
    }

    /// Domain id, sequencer id and key, as shown by every used endpoint.
    pub fn domain_info(&self) -> &DomainInfo {
        &self.inner.info
    }

    pub fn domain_id(&self) -> &str {
        &self.inner.info.domain_id
    }

    pub fn sequencer_key(&self) -> &PublicKey {
        &self.inner.info.sequencer_key
    }

    /// The domain's namespace key (checked against the domain id), to verify topology
    /// transactions with; `None` when the endpoints did not know it at connect (only possible
    /// with a pinned sequencer key).
    pub fn namespace_key(&self) -> Option<&PublicKey> {
        self.inner.info.namespace_key.as_ref()
    }

    /// Every endpoint with whether it is currently healthy, in the order given at connect.
    pub fn endpoint_health(&self) -> Vec<(String, bool)> {
        self.inner
            .endpoints
            .iter()
            .map(|e| (e.url.clone(), e.is_healthy()))
            .collect()
    }

    /// Why each unhealthy endpoint was last marked so (None for healthy ones).
    pub fn endpoint_problems(&self) -> Vec<(String, Option<String>)> {
        self.inner
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.url.clone(),
                    (!e.is_healthy()).then(|| e.problem()).flatten(),
                )
            })
            .collect()
    }

    /// The endpoint the live subscription currently reads from, if one is open.
    pub fn current_subscription_endpoint(&self) -> Option<String> {
        self.inner
            .subscription_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This client's counters.
    pub fn stats(&self) -> ClientStats {
        let s = &self.inner.stats;
        ClientStats {
            sends: s.sends.load(Ordering::Relaxed),
            send_retries: s.send_retries.load(Ordering::Relaxed),
            failovers: s.failovers.load(Ordering::Relaxed),
            resubscriptions: s.resubscriptions.load(Ordering::Relaxed),
            token_refreshes: s.token_refreshes.load(Ordering::Relaxed),
            token_rejections: s.token_rejections.load(Ordering::Relaxed),
        }
    }

    /// Encodes and signs a submission (purpose SUBMISSION, bound to the domain id). The
    /// request carries the current trace context (see [`crate::current_trace_context`]).
    pub fn sign_submission(
        &self,
        submission: &pb::SubmissionRequest,
    ) -> Result<pb::SendRequest, ClientError> {
        let bytes = submission.encode_to_vec();
        let sig = self
            .inner
            .member
            .key
            .sign_with_domain_str(SignaturePurpose::Submission, self.domain_id(), &bytes)
            .map_err(|e| ClientError::DomainInfo(format!("cannot sign for the domain: {e}")))?;
        Ok(pb::SendRequest {
            submission: bytes,
            signature: Some(to_proto_signature(&sig, SignaturePurpose::Submission)),
            trace_context: crate::current_trace_context(),
        })
    }

    /// Builds, signs and sends a submission; retries as described in the module docs until
    /// `max_sequencing_time_micros` (sequencer time, microseconds since the epoch).
    pub async fn send(
        &self,
        message_id: &str,
        envelopes: Vec<pb::Envelope>,
        max_sequencing_time_micros: i64,
    ) -> Result<pb::SendResponse, ClientError> {
        Ok(self
            .send_detailed(message_id, envelopes, max_sequencing_time_micros)
            .await?
            .response)
    }

    /// [`Self::send`], returning which endpoint answered after how many attempts.
    pub async fn send_detailed(
        &self,
        message_id: &str,
        envelopes: Vec<pb::Envelope>,
        max_sequencing_time_micros: i64,
    ) -> Result<SendReceipt, ClientError> {
        let submission = pb::SubmissionRequest {
            sender: self.inner.member.id.to_string(),
            message_id: message_id.to_string(),
            envelopes,
            max_sequencing_time_micros,
            time_proof: false,
        };
        let request = self.sign_submission(&submission)?;
        self.send_signed(request).await
    }

    /// Sends an already signed request (e.g. from [`Self::sign_submission`]), retrying the
    /// same bytes until the max sequencing time they carry.
    pub async fn send_signed(&self, request: pb::SendRequest) -> Result<SendReceipt, ClientError> {
        let submission = pb::SubmissionRequest::decode(request.submission.as_slice())
            .map_err(|e| ClientError::Config(format!("undecodable submission: {e}")))?;
        let deadline = instant_of_micros(submission.max_sequencing_time_micros);
        let started = Instant::now();
        let result = self
            .inner
            .call_with_failover("send", deadline, |ep, token| {
                let request = request.clone();
                async move {
                    let req = authed(request, &token)?;
                    Ok(ep.client().send(req).await?.into_inner())
                }
            })
            .await;
        let elapsed = started.elapsed();
        metrics::send_finished(&self.inner.alias, result.is_ok(), elapsed);
        let (response, call) = result?;
        let stats = &self.inner.stats;
        stats.sends.fetch_add(1, Ordering::Relaxed);
        stats
            .send_retries
            .fetch_add(u64::from(call.attempts - 1), Ordering::Relaxed);
        Ok(SendReceipt {
            response,
            endpoint: call.endpoint,
            attempts: call.attempts,
            failovers: call.failovers,
            elapsed,
        })
    }

    /// Sends a time proof (no envelopes): the receipt's timestamp shows that sequencer time
    /// has passed. Its max sequencing time is [`ClientOptions::time_proof_ttl`] from now.
    pub async fn send_time_proof(&self) -> Result<pb::SendResponse, ClientError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce)
            .map_err(|e| ClientError::Config(format!("no randomness for a message id: {e}")))?;
        let submission = pb::SubmissionRequest {
            sender: self.inner.member.id.to_string(),
            message_id: format!("time-proof-{}", hex_encode(&nonce)),
            envelopes: Vec::new(),
            max_sequencing_time_micros: now_micros()
                + self.inner.options.time_proof_ttl.as_micros() as i64,
            time_proof: true,
        };
        let request = self.sign_submission(&submission)?;
        Ok(self.send_signed(request).await?.response)
    }

    /// Tells the domain this member will never read events at or before `timestamp_micros`
    /// again (allows pruning). Retried on other endpoints for
    /// [`ClientOptions::acknowledge_timeout`].
    pub async fn acknowledge(&self, timestamp_micros: i64) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.inner.options.acknowledge_timeout;
        let member = self.inner.member.id.to_string();
        self.inner
            .call_with_failover("acknowledge", deadline, |ep, token| {
                let msg = pb::AcknowledgeRequest {
                    member: member.clone(),
                    timestamp_micros,
                };
                async move {
                    let req = authed(msg, &token)?;
                    ep.client().acknowledge(req).await?;
                    Ok(())
                }
            })
            .await?;
        Ok(())
    }

    /// Opens the member's event stream from `from_counter` (inclusive). The returned
    /// [`Subscription`] yields every counter exactly once, in order, each event verified,
    /// failing over between endpoints transparently; it ends with an error only for a
    /// definitive failure (fork, invalid event, member disabled, events pruned...).
    ///
    /// One subscription at a time: opening a new one ends the previous one.
    pub fn subscribe(&self, from_counter: i64) -> Result<Subscription, ClientError> {
        if from_counter < 0 {
            return Err(ClientError::Config("from_counter must be >= 0".into()));
        }
        Ok(self.start_subscription(Start::Counter(from_counter)))
    }

    /// Resumes after an event the consumer already processed (e.g. stored before a restart):
    /// the stream is re-requested from that event's counter and the re-delivered event must
    /// be identical to `last_processed` ([`ClientError::ForkDetected`] otherwise); delivery
    /// starts at the next counter.
    pub fn subscribe_after(
        &self,
        last_processed: pb::SequencedEvent,
    ) -> Result<Subscription, ClientError> {
        crate::verify_event(self.sequencer_key(), self.domain_id(), &last_processed)?;
        Ok(self.start_subscription(Start::After(last_processed)))
    }

    fn start_subscription(&self, start: Start) -> Subscription {
        let cancel = CancellationToken::new();
        {
            let mut slot = self
                .inner
                .subscription_cancel
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(previous) = slot.replace(cancel.clone()) {
                previous.cancel();
            }
        }
        Subscription::spawn(self.clone(), start, cancel)
    }
}

/// Where a call went and how often it was tried.
#[derive(Debug)]
pub(crate) struct CallInfo {
    pub(crate) endpoint: String,
    pub(crate) attempts: u32,
    pub(crate) failovers: u32,
}

impl Inner {
    /// The endpoint for the next attempt (round-robin, healthy and not slow first, not
    /// `avoid` if possible).
    pub(crate) fn pick(&self, avoid: Option<usize>) -> Result<usize, ClientError> {
        let healthy: Vec<bool> = self.endpoints.iter().map(|e| e.is_healthy()).collect();
        let usable: Vec<bool> = self.endpoints.iter().map(|e| e.is_usable()).collect();
        let best = self
            .endpoints
            .iter()
            .filter(|e| e.is_healthy())
            .filter_map(|e| e.rtt())
            .min();
        let slow: Vec<bool> = self
            .endpoints
            .iter()
            .map(|e| is_slow(e.rtt(), best))
            .collect();
        let cursor = self.cursor.fetch_add(1, Ordering::Relaxed);
        pick_preferring(&healthy, &slow, &usable, cursor, avoid).ok_or_else(|| {
            ClientError::Unavailable {
                alias: self.alias.clone(),
                details: "no usable endpoint (every endpoint shows another domain's identity)"
                    .into(),
            }
        })
    }

    /// The current token, obtaining one if there is none.
    pub(crate) async fn token(&self) -> Result<Arc<Token>, ClientError> {
        if let Some(t) = self.token.borrow().clone() {
            return Ok(t);
        }
        let _guard = self.auth_lock.lock().await;
        if let Some(t) = self.token.borrow().clone() {
            return Ok(t);
        }
        self.obtain_token(
            Instant::now() + self.options.connect_timeout,
            TokenReason::Initial,
        )
        .await?;
        self.token
            .borrow()
            .clone()
            .ok_or_else(|| ClientError::DomainInfo("no token after authentication".into()))
    }

    /// Called after a call was refused with a token error: authenticates again unless the
    /// token was replaced meanwhile (by the renewal task or a concurrent call).
    pub(crate) async fn reauthenticate(
        &self,
        refused_generation: u64,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        self.stats.token_rejections.fetch_add(1, Ordering::Relaxed);
        let _guard = self.auth_lock.lock().await;
        let current = self.token.borrow().as_ref().map(|t| t.generation);
        if current.is_some_and(|g| g != refused_generation) {
            return Ok(());
        }
        let deadline = deadline.max(Instant::now() + self.options.call_timeout * 2);
        self.obtain_token(deadline, TokenReason::Rejected).await
    }

    /// Challenge → signature → token through some endpoint, retried until `deadline`; swaps
    /// the token in on success. The caller holds `auth_lock` (or is `connect`).
    async fn obtain_token(
        &self,
        deadline: Instant,
        reason: TokenReason,
    ) -> Result<(), ClientError> {
        let mut backoff = Backoff::new(self.options.backoff);
        let mut avoid = None;
        let mut nonce_retries = 0;
        loop {
            let idx = self.pick(avoid)?;
            let ep = &self.endpoints[idx];
            let error = match self.authenticate_via(ep).await {
                Ok(granted) => {
                    self.store_token(granted);
                    match reason {
                        TokenReason::Initial => {}
                        TokenReason::Expiry => {
                            self.stats.token_refreshes.fetch_add(1, Ordering::Relaxed);
                            metrics::token_refreshed(&self.alias, false);
                        }
                        TokenReason::Rejected => metrics::token_refreshed(&self.alias, true),
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            let nonce_problem = matches!(&error, ClientError::Status(st)
                if error_code(st) == Some("SEQ_NONCE_INVALID"));
            match classify(&error) {
                _ if nonce_problem && nonce_retries < 3 => nonce_retries += 1,
                RetryClass::Retry { endpoint_down } => {
                    if endpoint_down {
                        ep.mark_down(&format!("authentication: {}", describe_error(&error)));
                    }
                }
                RetryClass::Definitive | RetryClass::Reauthenticate => return Err(error),
            }
            avoid = Some(idx);
            let now = Instant::now();
            if now >= deadline {
                return Err(error);
            }
            tracing::debug!(alias = %self.alias, endpoint = %ep.url, error = %describe_error(&error), "authentication failed; retrying");
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        }
    }

    async fn authenticate_via(
        &self,
        ep: &EndpointHandle,
    ) -> Result<crate::auth::Granted, ClientError> {
        crate::auth::authenticate(
            &mut ep.client(),
            &self.member,
            &self.info.domain_id,
            &ep.url,
            self.options.call_timeout,
        )
        .await
    }

    fn store_token(&self, granted: crate::auth::Granted) {
        let now = Instant::now();
        let lifetime = granted
            .expires_at
            .duration_since(domain_time::Timestamp::now())
            .unwrap_or_default();
        let value = granted.token;
        let refresh_at = self
            .options
            .token_refresh_fraction
            .map(|f| now + lifetime.mul_f64(f.clamp(0.0, 1.0)));
        self.token.send_modify(|slot| {
            let generation = slot.as_ref().map_or(1, |t| t.generation + 1);
            *slot = Some(Arc::new(Token {
                value,
                expires_at: now + lifetime,
                refresh_at,
                generation,
            }));
        });
    }

    /// Runs `call` on an endpoint, retrying retryable failures (on another endpoint when
    /// there is one) with backoff until `deadline`. Each attempt is bounded by the call
    /// timeout and abandoned when its endpoint turns unhealthy.
    pub(crate) async fn call_with_failover<T, F, Fut>(
        &self,
        what: &str,
        deadline: Instant,
        mut call: F,
    ) -> Result<(T, CallInfo), ClientError>
    where
        F: FnMut(Arc<EndpointHandle>, Arc<Token>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut backoff = Backoff::new(self.options.backoff);
        let mut attempts = 0u32;
        let mut failovers = 0u32;
        let mut last_failed: Option<usize> = None;
        let mut reauthenticated = false;
        loop {
            let idx = self.pick(last_failed)?;
            let ep = self.endpoints[idx].clone();
            if last_failed.is_some_and(|prev| prev != idx) {
                failovers += 1;
                self.stats.failovers.fetch_add(1, Ordering::Relaxed);
                metrics::failover(&self.alias);
            }
            attempts += 1;
            let token = self.token().await?;
            let generation = token.generation;
            let timeout = self.options.call_timeout;
            let was_healthy = ep.is_healthy();
            let mut health = ep.watch_health();
            let attempt = call(ep.clone(), token);
            let result = tokio::select! {
                r = tokio::time::timeout(timeout, attempt) => match r {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Status(Status::deadline_exceeded(format!(
                        "{what}: no answer from {} within {timeout:?}", ep.url
                    )))),
                },
                _ = async { let _ = health.wait_for(|h| !*h).await; }, if was_healthy => {
                    Err(ClientError::Status(Status::unavailable(format!(
                        "{what}: {} turned unhealthy during the call", ep.url
                    ))))
                }
            };
            let error = match result {
                Ok(v) => {
                    return Ok((
                        v,
                        CallInfo {
                            endpoint: ep.url.clone(),
                            attempts,
                            failovers,
                        },
                    ));
                }
                Err(e) => e,
            };
            match classify(&error) {
                RetryClass::Definitive => return Err(error),
                RetryClass::Reauthenticate if !reauthenticated => {
                    reauthenticated = true;
                    tracing::info!(alias = %self.alias, endpoint = %ep.url, "{what}: token refused; authenticating again");
                    self.reauthenticate(generation, deadline).await?;
                    continue;
                }
                RetryClass::Reauthenticate => return Err(error),
                RetryClass::Retry { endpoint_down } => {
                    let description = describe_error(&error);
                    if endpoint_down {
                        ep.mark_down(&format!("{what}: {description}"));
                    }
                    last_failed = Some(idx);
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(error);
                    }
                    tracing::debug!(alias = %self.alias, endpoint = %ep.url, attempt = attempts, error = %description, "{what} failed; retrying");
                    tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
                }
            }
        }
    }
}

/// Finds the domain's identity: asks every endpoint until a trusted answer comes (see the
/// module documentation), retrying with backoff until `deadline`. Endpoints that show
/// another identity are rejected.
async fn discover(
    alias: &str,
    handles: &[Arc<EndpointHandle>],
    options: &ClientOptions,
    deadline: Instant,
) -> Result<DomainInfo, ClientError> {
    let mut backoff = Backoff::new(options.backoff);
    // With a pinned domain id, the first trusted answer is the domain (trust ties it to the
    // pinned namespace). Without one, a server holding its own namespace key could show a
    // self-consistent other domain: every answer of the round counts, and they must agree.
    let wait_for_all = options.pins.domain_id.is_none();
    loop {
        let mut answers: FuturesUnordered<_> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| async move {
                (
                    i,
                    fetch_domain_info(h.channel(), options.call_timeout).await,
                )
            })
            .collect();
        let mut errors: Vec<(usize, ClientError)> = Vec::new();
        let mut trusted: Vec<(usize, DomainInfo)> = Vec::new();
        let mut untrusted: Vec<(usize, DomainInfo)> = Vec::new();
        while let Some((i, answer)) = answers.next().await {
            match answer {
                // A pinned connection never adopts what an endpoint reports: an endpoint
                // breaking a pin is refused however fast it answers, the others still count.
                Ok(info) => match options.pins.violation(&info) {
                    None => match options.pins.untrusted(&info) {
                        None => {
                            trusted.push((i, info));
                            if !wait_for_all {
                                break;
                            }
                        }
                        Some(reason) => {
                            tracing::warn!(alias, endpoint = %handles[i].url, %reason, "endpoint not trusted");
                            errors.push((i, ClientError::Untrusted(reason)));
                            untrusted.push((i, info));
                        }
                    },
                    Some(reason) => {
                        tracing::error!(alias, endpoint = %handles[i].url, %reason, "endpoint refused");
                        handles[i].refuse(&reason);
                        errors.push((i, ClientError::DomainInfo(reason)));
                    }
                },
                Err(e) => errors.push((i, e)),
            }
        }
        if let Some((_, info)) = trusted.first() {
            let info = info.clone();
            if trusted.iter().any(|(_, t)| {
                t.domain_id != info.domain_id || t.sequencer_key != info.sequencer_key
            }) {
                let details = trusted
                    .iter()
                    .map(|(i, t)| {
                        format!(
                            "{} serves {} with sequencer key {}",
                            handles[*i].url,
                            t.domain_id,
                            t.sequencer_key.fingerprint()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(ClientError::DomainInfo(format!(
                    "the endpoints of {alias} disagree on the domain or its sequencer key, and \
                     no domain id is pinned to tell which is right: {details}"
                )));
            }
            // Endpoints that answered but could not be trusted on their own are judged
            // against the trusted identity: the same key is fine, another one is rejected.
            for (i, shown) in trusted.iter().chain(untrusted.iter()) {
                handles[*i].validate(&info, shown);
            }
            return Ok(info);
        }
        errors.sort_by_key(|(i, _)| *i);
        let details = errors
            .iter()
            .map(|(i, e)| format!("{}: {}", handles[*i].url, describe_error(e)))
            .collect::<Vec<_>>()
            .join("; ");
        let all_definitive = errors.iter().all(|(_, e)| connect_error_is_definitive(e));
        if all_definitive || Instant::now() >= deadline {
            return Err(ClientError::Unavailable {
                alias: alias.to_string(),
                details,
            });
        }
        tracing::debug!(alias, %details, "no trusted sequencer endpoint answered yet; retrying");
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.next_delay().min(remaining)).await;
    }
}

/// Whether a failure to reach an endpoint at connect will not go away by itself: a TLS
/// problem (untrusted or invalid certificate), an endpoint that is not a sequencer of this
/// kind, bad domain info.
fn connect_error_is_definitive(e: &ClientError) -> bool {
    match e {
        ClientError::Status(st) => {
            tls_problem(st).is_some()
                || classify_status(st) == RetryClass::Definitive
                || matches!(st.code(), tonic::Code::Unimplemented)
        }
        ClientError::DomainInfo(_) => true,
        _ => false,
    }
}

/// Adds the bearer token to a request.
pub(crate) fn authed<T>(msg: T, token: &Token) -> Result<Request<T>, ClientError> {
    let mut req = Request::new(msg);
    let value = format!("Bearer {}", token.value)
        .parse()
        .map_err(|_| Status::internal("token is not valid metadata"))?;
    req.metadata_mut().insert("authorization", value);
    Ok(req)
}

/// Renews the token at its refresh time until `stop`.
async fn refresh_loop(inner: Arc<Inner>, stop: CancellationToken) {
    if inner.options.token_refresh_fraction.is_none() {
        return;
    }
    let mut changes = inner.token.subscribe();
    let mut backoff = Backoff::new(inner.options.backoff);
    loop {
        let current = changes.borrow_and_update().clone();
        let Some(token) = current else {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            continue;
        };
        let Some(refresh_at) = token.refresh_at else {
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => { if r.is_err() { return } continue; }
            _ = tokio::time::sleep_until(refresh_at.into()) => {}
        }
        let result = {
            let _guard = inner.auth_lock.lock().await;
            if inner.token.borrow().as_ref().map(|t| t.generation) != Some(token.generation) {
                continue;
            }
            let deadline = token
                .expires_at
                .max(Instant::now() + inner.options.call_timeout * 2);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = inner.obtain_token(deadline, TokenReason::Expiry) => r,
            }
        };
        match result {
            Ok(()) => {
                backoff.reset();
                tracing::debug!(alias = %inner.alias, "token renewed");
            }
            Err(e) => {
                tracing::warn!(alias = %inner.alias, error = %describe_error(&e), "token renewal failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

pub use domain_time::now_micros;

/// The local instant at which the wall clock reaches `micros`.
fn instant_of_micros(micros: i64) -> Instant {
    let remaining = (micros - now_micros()).max(0) as u64;
    Instant::now() + Duration::from_micros(remaining)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error with its sources (tonic hides the useful part, e.g. "connection refused" or
/// "invalid peer certificate: UnknownIssuer", in `source()`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A status as `Code: message [DOMAIN_CODE]: source chain`.
pub(crate) fn describe_status(status: &Status) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    if let Some(code) = error_code(status) {
        out.push_str(&format!(" [{code}]"));
    }
    // The source chain, without the parts the message already says ("transport error"
    // adds nothing either).
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) && text != "transport error" {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    if let Some(tls) = tls_problem(status)
        && !out.contains(&tls)
    {
        out.push_str(&format!(" (TLS: {tls})"));
    }
    out
}

/// A client error with the details of a status.
pub(crate) fn describe_error(e: &ClientError) -> String {
    match e {
        ClientError::Status(st) => describe_status(st),
        other => other.to_string(),
    }
}

/// The TLS failure behind an error, if any (e.g. `invalid peer certificate: UnknownIssuer`).
pub(crate) fn tls_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_meet_the_failover_budget() {
        let o = ClientOptions::default();
        // A hung endpoint is noticed by the health check within interval + timeout, and an
        // attempt never waits longer than the call timeout: both well under 3 s.
        assert!(o.health_interval + o.health_timeout <= Duration::from_secs(2));
        assert!(o.call_timeout <= Duration::from_secs(2));
        assert!(o.subscription_idle <= o.health_timeout);
        assert_eq!(o.backoff.initial, Duration::from_millis(50));
        assert_eq!(o.backoff.max, Duration::from_secs(2));
    }

    #[test]
    fn tls_errors_are_found_in_the_chain() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let status = Status::from_error(Box::new(io));
        let found = tls_problem(&status).expect("tls problem found");
        assert!(found.contains("UnknownIssuer"), "{found}");
        assert!(
            connect_error_is_definitive(&ClientError::Status(status)),
            "an untrusted certificate does not go away by retrying"
        );
        assert!(!connect_error_is_definitive(&ClientError::Status(
            Status::unavailable("connection refused")
        )));
    }

    #[test]
    fn missing_ca_file_is_named() {
        let tls = DomainTls::Files(ClientTlsFiles {
            ca: "/nonexistent/provider-ca.pem".into(),
            cert: None,
            key: None,
            domain_name: None,
        });
        let err = tls.load().expect_err("missing file");
        let text = err.to_string();
        assert!(text.contains("/nonexistent/provider-ca.pem"), "{text}");
        assert!(matches!(err, ClientError::Tls(_)));
    }

    #[test]
    fn instants_of_past_and_future_times() {
        let now = Instant::now();
        assert!(instant_of_micros(0) <= Instant::now());
        assert!(instant_of_micros(0) >= now);
        let later = instant_of_micros(now_micros() + 5_000_000);
        assert!(later >= now + Duration::from_millis(4_900));
        assert!(later <= Instant::now() + Duration::from_millis(5_100));
    }
}
