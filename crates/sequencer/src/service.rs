//! The public gRPC API: authentication, validation before any write, and the
//! hand-off to the writer and the subscriptions.

use crate::error::ServiceError as _;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain_identity::{DomainId, MemberId, MemberRole, PublicKey, Signature, SignaturePurpose};
use domain_proto::common::v1 as common_pb;
use domain_proto::identity::KeyConversionError;
use domain_proto::sequencer::v1 as pb;
use domain_proto::sequencer::v1::sequencer_service_server::SequencerService;
use domain_proto::topology::v1 as topology_pb;
use domain_time::Timestamp;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::SequencerError;
use crate::members::Members;
use crate::metrics as m;
use crate::reader::SharedReader;
use crate::store::{self, BROADCAST_MEMBER_ID, MemberRow};
use crate::subscription::{self, SubscriptionContext};
use crate::timestamp::clock;
use crate::topology::TopologyCache;
use crate::writer::{Submission, WriteCommand, WriterHandle};

/// Longest accepted message id.
const MAX_MESSAGE_ID_LEN: usize = 256;
/// Tokens are looked up in the shared database and cached this long, which
/// bounds how long a revoked token can still be used on an instance.
const TOKEN_CACHE_TTL: Duration = Duration::from_millis(500);

pub struct ServiceSettings {
    pub sequencer_id: MemberId,
    pub public_key: PublicKey,
    pub max_request_size: usize,
    pub nonce_ttl: Duration,
    pub token_ttl: Duration,
    pub default_max_sequencing: Duration,
    pub subscription_buffer: usize,
    pub subscription_buffer_bytes: usize,
    pub read_page: crate::reader::ReadPage,
    /// Subscriptions one member may have open on this instance.
    pub max_subscriptions_per_member: usize,
    /// Open mode: any participant key gets registered on its first challenge.
    pub open_participant_access: bool,
    /// The domain every signature is bound to.
    pub domain: DomainId,
    /// Open-mode registrations admitted per second on this instance (also the burst).
    pub open_registrations_per_second: u32,
    /// `ha.max-clock-skew`: how far a recipient's registration may lie ahead of this
    /// instance's clock before a send to it is refused rather than followed.
    pub max_clock_skew: Duration,
}

/// Token bucket bounding open-mode registrations on one instance: each one writes a
/// member row, makes every instance reload its member table and pins pruning until
/// the member acknowledges, so a stream of fresh keys must not register at line rate.
struct RegistrationLimiter {
    rate: f64,
    state: std::sync::Mutex<(f64, Instant)>,
}

impl RegistrationLimiter {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self {
            rate,
            state: std::sync::Mutex::new((rate, Instant::now())),
        }
    }

    fn try_acquire(&self) -> bool {
        // A poisoned lock only means another handler panicked mid-update; the
        // bucket's numbers are still usable.
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *guard;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A bearer token's member, as last read from `seq_tokens`.
#[derive(Debug, Clone)]
struct CachedToken {
    member: String,
    expires_at: Timestamp,
    read_at: Instant,
    /// Set while one request re-reads the row after `TOKEN_CACHE_TTL`.
    refreshing: Option<Instant>,
}

impl CachedToken {
    /// The member, or `None` when this request must read the row. Past the TTL, one
    /// request re-reads it while the others keep using the entry until that read answers
    /// (at most one lookup, bounded by the TTL): under load every entry expired at once
    /// for all the requests in flight, and each of them read the row (issue 17: ~180
    /// lookups/s at 4k sends/s, 8 % of PostgreSQL's busy samples). The token's own expiry
    /// always holds.
    fn use_or_refresh(&mut self, now: Timestamp, at: Instant) -> Option<String> {
        if self.expires_at <= now {
            return None;
        }
        let fresh = at.saturating_duration_since(self.read_at) < TOKEN_CACHE_TTL;
        let being_refreshed = self
            .refreshing
            .is_some_and(|since| at.saturating_duration_since(since) < TOKEN_CACHE_TTL);
        if fresh || being_refreshed {
            return Some(self.member.clone());
        }
        self.refreshing = Some(at);
        None
    }
}

/// Everything the handlers share.
pub struct SequencerCore {
    pub settings: ServiceSettings,
    pub pool: deadpool_postgres::Pool,
    pub members: Arc<Members>,
    pub writer: WriterHandle,
    pub reader: Arc<SharedReader>,
    pub shutdown: CancellationToken,
    pub topology: Arc<TopologyCache>,
    tokens: Mutex<HashMap<Vec<u8>, CachedToken>>,
    registrations: RegistrationLimiter,
    subscriptions: subscription::MemberSlots,
    domain_trust: Mutex<Option<(Instant, Arc<DomainTrust>)>>,
    keys: ParsedKeys,
}

/// Members' public keys parsed once, by their stored bytes. Parsing checks the point is
/// canonical and not weak, a decompression and a compression (two field inversions'
/// worth of work, about a third of a verification), which every send used to repeat.
#[derive(Default)]
struct ParsedKeys(std::sync::Mutex<HashMap<Vec<u8>, PublicKey>>);

impl ParsedKeys {
    /// At most this many keys are kept; past it the map starts over. Keys are only ever
    /// bound by registration, so this is the number of members, not anything a peer can
    /// inflate on its own.
    const CAPACITY: usize = 100_000;

    fn get(&self, bytes: &[u8]) -> Result<PublicKey, domain_identity::KeyError> {
        let lock = || {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(key) = lock().get(bytes) {
            return Ok(key.clone());
        }
        let key = PublicKey::from_bytes(bytes)?;
        let mut map = lock();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(bytes.to_vec(), key.clone());
        Ok(key)
    }
}

/// How long GetDomainInfo's namespace key and sequencer registrations are cached.
const DOMAIN_TRUST_CACHE_TTL: Duration = Duration::from_secs(1);

/// The part of GetDomainInfo read from the database (see [`SequencerCore::domain_trust`]).
#[derive(Default)]
struct DomainTrust {
    namespace_key: Option<common_pb::PublicKey>,
    registrations: Vec<topology_pb::SignedTopologyTransaction>,
}

impl SequencerCore {
    pub fn new(
        settings: ServiceSettings,
        pool: deadpool_postgres::Pool,
        members: Arc<Members>,
        writer: WriterHandle,
        reader: Arc<SharedReader>,
        shutdown: CancellationToken,
        topology: Arc<TopologyCache>,
    ) -> Arc<Self> {
        let registrations = RegistrationLimiter::new(settings.open_registrations_per_second);
        let subscriptions = subscription::MemberSlots::new(settings.max_subscriptions_per_member);
        Arc::new(Self {
            settings,
            pool,
            members,
            writer,
            reader,
            shutdown,
            topology,
            tokens: Mutex::new(HashMap::new()),
            registrations,
            subscriptions,
            domain_trust: Mutex::new(None),
            keys: ParsedKeys::default(),
        })
    }

    /// What GetDomainInfo shows so that a client can check the sequencer key without
    /// trusting this instance: the namespace key (the domain manager member's bound key) and
    /// the namespace-signed sequencer registrations, read from the shared database. Cached for
    /// [`DOMAIN_TRUST_CACHE_TTL`]: GetDomainInfo needs no token, so a flood of it must not
    /// turn into a flood of queries. When the database does not answer, the last values
    /// (or none) are shown: GetDomainInfo keeps answering, a client that needs them retries.
    async fn domain_trust(&self) -> Arc<DomainTrust> {
        let mut cache = self.domain_trust.lock().await;
        if let Some((at, trust)) = cache.as_ref()
            && at.elapsed() < DOMAIN_TRUST_CACHE_TTL
        {
            return trust.clone();
        }
        match self.load_domain_trust().await {
            Ok(trust) => {
                let trust = Arc::new(trust);
                *cache = Some((Instant::now(), trust.clone()));
                trust
            }
            Err(e) => {
                tracing::warn!(error = %e, "GetDomainInfo: cannot read the namespace key and sequencer registrations; showing the last known");
                cache
                    .as_ref()
                    .map(|(_, t)| t.clone())
                    .unwrap_or_else(|| Arc::new(DomainTrust::default()))
            }
        }
    }

    async fn load_domain_trust(&self) -> Result<DomainTrust, SequencerError> {
        let client = self.db().await?;
        let dom = domain_topology::domain_manager_member(&self.settings.domain).to_string();
        let namespace_key = store::load_member(&**client, &dom)
            .await?
            .and_then(|row| row.public_key)
            .and_then(|bytes| PublicKey::from_bytes(&bytes).ok())
            // The row's key was checked against the DOM id's fingerprint when it was bound;
            // checked again so that this answer never shows a key that is not the namespace's.
            .filter(|key| self.settings.domain.matches_key(key))
            .map(|key| common_pb::PublicKey::from(&key));
        let rows = client
            .query(
                "SELECT signed FROM seq_topology WHERE kind = 'sequencer' ORDER BY serial",
                &[],
            )
            .await
            .map_err(store::StoreError::from)?;
        let registrations = rows
            .iter()
            .filter_map(|r| {
                let bytes: Vec<u8> = r.get(0);
                topology_pb::SignedTopologyTransaction::decode(bytes.as_slice()).ok()
            })
            .collect();
        Ok(DomainTrust {
            namespace_key,
            registrations,
        })
    }

    /// Forgets cached tokens of a member (called when it is disabled).
    pub async fn forget_tokens(&self, member: &str) {
        self.tokens.lock().await.retain(|_, t| t.member != member);
    }

    /// Checks out a pooled connection; a full pool is `Overloaded` (retryable).
    pub(crate) async fn db(&self) -> Result<deadpool_postgres::Object, SequencerError> {
        self.pool.get().await.map_err(|e| match e {
            // Every connection is busy: the instance is saturated, not broken.
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                SequencerError::Overloaded
            }
            other => SequencerError::Database(other.to_string()),
        })
    }

    /// Resolves the bearer token to an enabled member.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Arc<MemberRow>, SequencerError> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or(SequencerError::MissingCredentials(
                "no authorization metadata",
            ))?
            .to_str()
            .map_err(|_| {
                SequencerError::MissingCredentials("authorization metadata is not ASCII")
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(SequencerError::MissingCredentials(
                "authorization must be `Bearer <token>`",
            ))?;
        let hash = Sha256::digest(token.as_bytes()).to_vec();
        let now = clock();
        let cached = {
            let mut cache = self.tokens.lock().await;
            match cache.get_mut(&hash) {
                Some(entry) => entry.use_or_refresh(now, Instant::now()),
                None => None,
            }
        };
        let member = match cached {
            Some(m) => m,
            None => {
                let looked_up = match self.db().await {
                    Ok(client) => store::lookup_token(&**client, &hash)
                        .await
                        .map_err(SequencerError::from),
                    Err(e) => Err(e),
                };
                let mut cache = self.tokens.lock().await;
                let row = match looked_up {
                    Ok(Some(row)) => row,
                    Ok(None) => {
                        // Revoked or expired: nobody may go on using the cached entry.
                        cache.remove(&hash);
                        return Err(SequencerError::TokenInvalid);
                    }
                    Err(e) => {
                        // The next request tries again (requests meanwhile fail the same
                        // way unless another refresh is in flight).
                        if let Some(entry) = cache.get_mut(&hash) {
                            entry.refreshing = None;
                        }
                        return Err(e);
                    }
                };
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(
                    hash,
                    CachedToken {
                        member: row.member.clone(),
                        expires_at: row.expires_at,
                        read_at: Instant::now(),
                        refreshing: None,
                    },
                );
                row.member
            }
        };
        if let Some(claimed) = req
            .metadata()
            .get("domain-member")
            .and_then(|v| v.to_str().ok())
            && claimed != member
        {
            return Err(SequencerError::MemberMismatch {
                authenticated: member,
                requested: claimed.to_string(),
            });
        }
        let row = self
            .members
            .get(&member)
            .await?
            .ok_or_else(|| SequencerError::MemberUnknown(member.clone()))?;
        if !row.enabled {
            return Err(SequencerError::MemberDisabled(member));
        }
        Ok(row)
    }

    /// The sequencing timestamp of `(sender, message_id)` if it was sequenced (its
    /// deduplication row exists).
    async fn sequenced_ts_of(
        &self,
        sender_id: i32,
        message_id: &str,
    ) -> Result<Option<Timestamp>, SequencerError> {
        let db = self.db().await?;
        let row = db
            .query_opt(
                "SELECT ts FROM seq_dedup WHERE sender = $1 AND message_id = $2",
                &[&sender_id, &message_id],
            )
            .await
            .map_err(|e| SequencerError::from(crate::store::StoreError::from(e)))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Validates a send completely before anything is written. Takes the request by value:
    /// its bytes move into the [`Submission`] instead of being copied (a queued
    /// submission used to be held three times over).
    async fn validate(
        &self,
        sender: &MemberRow,
        req: pb::SendRequest,
    ) -> Result<Validated, SequencerError> {
        // The domain parameter (once set by topology) can only lower the
        // instance's configured limit, which also bounds the gRPC frame size.
        let limit =
            self.topology
                .max_request_size_now()
                .map_or(self.settings.max_request_size, |p| {
                    self.settings
                        .max_request_size
                        .min(usize::try_from(p).unwrap_or(usize::MAX))
                });
        let (sub, signature) = decode_send(&sender.member, &req, limit)?;
        // The key may have been bound through another instance since our cache loaded.
        let refreshed;
        let key_source = if sender.public_key.is_none() {
            self.members.reload().await?;
            refreshed = self.members.get(&sender.member).await?;
            refreshed.as_deref().unwrap_or(sender)
        } else {
            sender
        };
        let key_bytes = key_source.public_key.as_ref().ok_or_else(|| {
            SequencerError::SubmissionSignatureInvalid("no key bound to the sender".into())
        })?;
        let key = self
            .keys
            .get(key_bytes)
            .map_err(|e| SequencerError::Internal(format!("stored key invalid: {e}")))?;
        // ed25519 verification (~45 us) is the heaviest CPU step of a send. It runs inline:
        // on the blocking pool each send cost two thread wake-ups and context switches,
        // about a tenth of the sequencer's CPU under load (perf, issue 17), and 45 us is
        // short enough not to hold a runtime worker from the writer and the reader.
        let domain_id = self.settings.domain.to_string();
        let pb::SendRequest {
            submission: payload,
            trace_context,
            ..
        } = req;
        let verified = key.verify_with_domain_str(
            SignaturePurpose::Submission,
            &domain_id,
            &payload,
            &signature,
        );
        verified.map_err(|e| SequencerError::SubmissionSignatureInvalid(e.to_string()))?;
        check_submission_shape(&sub)?;
        let mut broadcast = false;
        let mut recipients = BTreeSet::new();
        recipients.insert(sender.id);
        // A member's stream starts strictly after its `registered_ts`, so an event at or
        // below it would be stored and acknowledged but never delivered to that member. A
        // member registered a moment ago through an instance whose clock is ahead of ours
        // is exactly that case: the writer places the event above every registration.
        let mut not_before_ts = sender.registered_ts;
        for env in &sub.envelopes {
            broadcast |= env.broadcast;
            for r in &env.recipients {
                let row = self
                    .members
                    .get(r)
                    .await?
                    .ok_or_else(|| SequencerError::RecipientUnknown(r.clone()))?;
                if !row.enabled {
                    return Err(SequencerError::RecipientDisabled(r.clone()));
                }
                not_before_ts = not_before_ts.max(row.registered_ts);
                recipients.insert(row.id);
            }
        }
        let now = clock();
        let max_sequencing_ts = if sub.max_sequencing_time_micros == 0 {
            now + self.settings.default_max_sequencing
        } else {
            Timestamp::from_micros(sub.max_sequencing_time_micros)
        };
        if max_sequencing_ts < now {
            // A late retry of a message that *was* sequenced (its reply was lost) must learn
            // that, with the original timestamp, not that the deadline passed "before
            // sequencing": deduplication is checked before the deadline.
            if let Some(ts) = self.sequenced_ts_of(sender.id, &sub.message_id).await? {
                return Ok(Validated::AlreadySequenced(ts));
            }
            return Err(SequencerError::MaxSequencingTimeExceeded {
                max_sequencing_time: max_sequencing_ts,
                now,
            });
        }
        if not_before_ts > now + self.settings.max_clock_skew {
            // Following it would drag this instance's timestamps forward (issue 11 item 5).
            return Err(SequencerError::RegisteredAhead {
                registered_ts: not_before_ts,
                now,
            });
        }
        let sender_role = MemberId::parse(&sender.member)
            .map_err(|e| SequencerError::Internal(format!("stored member id invalid: {e}")))?
            .role();
        let topology = crate::topology::validate_submission(
            sender_role,
            &key,
            &self.settings.domain,
            &sub.envelopes,
        )?;
        let envelope_hashes = sub
            .envelopes
            .iter()
            .map(|e| Sha256::digest(e.encode_to_vec()).to_vec())
            .collect();
        let (reply, _) = oneshot::channel();
        Ok(Validated::New(Box::new(Submission {
            sender_id: sender.id,
            sender: sender.member.clone(),
            message_id: sub.message_id,
            recipients: if broadcast {
                vec![BROADCAST_MEMBER_ID]
            } else {
                recipients.into_iter().collect()
            },
            submission: payload,
            trace_context: accepted_trace_context(&trace_context),
            envelope_hashes,
            time_proof: sub.time_proof,
            max_sequencing_ts,
            not_before_ts,
            topology,
            reply,
            enqueued: Instant::now(),
            charge: None,
        })))
    }
}

/// The first checks of a send, which need neither the database nor the sender's key: the
/// size `limit`, that `req.submission` decodes as a `SubmissionRequest` of the authenticated
/// `sender`, and that a SUBMISSION signature is attached and well-formed (not yet verified).
/// Public so the fuzz targets (`fuzz/`, docs/fuzzing.md) drive exactly this code with peer bytes.
pub fn decode_send(
    sender: &str,
    req: &pb::SendRequest,
    limit: usize,
) -> Result<(pb::SubmissionRequest, Signature), SequencerError> {
    if req.submission.len() > limit {
        return Err(SequencerError::RequestTooLarge {
            size: req.submission.len(),
            limit,
        });
    }
    let sub = pb::SubmissionRequest::decode(req.submission.as_slice()).map_err(|e| {
        SequencerError::Malformed(format!("submission is not a SubmissionRequest: {e}"))
    })?;
    if sub.sender != sender {
        return Err(SequencerError::MemberMismatch {
            authenticated: sender.to_owned(),
            requested: sub.sender,
        });
    }
    let sig = req
        .signature
        .as_ref()
        .ok_or_else(|| SequencerError::Malformed("missing signature".into()))?;
    if !sig.purpose_is(SignaturePurpose::Submission) {
        return Err(SequencerError::SubmissionSignatureInvalid(
            "signature purpose is not SUBMISSION".into(),
        ));
    }
    let signature = Signature::try_from(sig)
        .map_err(|e| SequencerError::SubmissionSignatureInvalid(e.to_string()))?;
    Ok((sub, signature))
}

/// The checks of a (signature-verified) submission's shape that need no member lookup:
/// the message id's length, a time proof without envelopes or else some envelope with
/// content, and recipients (or broadcast) on every envelope.
pub fn check_submission_shape(sub: &pb::SubmissionRequest) -> Result<(), SequencerError> {
    if sub.message_id.is_empty() || sub.message_id.len() > MAX_MESSAGE_ID_LEN {
        return Err(SequencerError::Malformed(format!(
            "message id must have 1..={MAX_MESSAGE_ID_LEN} bytes"
        )));
    }
    if sub.time_proof {
        if !sub.envelopes.is_empty() {
            return Err(SequencerError::Malformed(
                "a time proof carries no envelopes".into(),
            ));
        }
    } else if !sub.envelopes.iter().any(|e| !e.content.is_empty()) {
        return Err(SequencerError::EmptySubmission);
    }
    if sub
        .envelopes
        .iter()
        .any(|env| env.recipients.is_empty() && !env.broadcast)
    {
        return Err(SequencerError::Malformed(
            "an envelope has no recipients".into(),
        ));
    }
    Ok(())
}

/// What a valid send turns out to be.
enum Validated {
    /// To be sequenced.
    New(Box<Submission>),
    /// Past its max sequencing time but sequenced before, at this timestamp.
    AlreadySequenced(Timestamp),
}

/// The tonic service over [`SequencerCore`].
#[derive(Clone)]
pub struct SequencerApi(pub Arc<SequencerCore>);

/// Longest `trace_context` a sender may attach; longer values are dropped unread. The W3C
/// format allows later versions to append fields, so this is looser than the 55 bytes of version
/// 00, but it bounds what a sender can make the sequencer parse.
pub const MAX_TRACE_CONTEXT_BYTES: usize = 512;

/// The trace context to store with a submission: the sender's `traceparent` normalised to
/// version 00 (so a stored value is always 55 bytes), or `None` when it sent none, sent one
/// longer than [`MAX_TRACE_CONTEXT_BYTES`] or one that does not parse.
///
/// Dropped rather than refused: the field is advisory and outside the signed bytes, and a
/// tracing bug in a sender must not stop its submissions.
pub fn accepted_trace_context(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    let parsed = (value.len() <= MAX_TRACE_CONTEXT_BYTES)
        .then(|| domain_runtime::telemetry::TraceContext::parse_traceparent(value).ok())
        .flatten();
    if parsed.is_none() {
        metrics::counter!(m::TRACE_CONTEXT_DROPPED).increment(1);
        tracing::debug!(
            len = value.len(),
            "dropping an invalid trace context of a submission"
        );
    }
    parsed.map(|ctx| ctx.to_traceparent())
}

fn reject(e: SequencerError) -> Status {
    metrics::counter!(m::SEND_REJECTIONS, "code" => e.code()).increment(1);
    e.to_status()
}

impl SequencerApi {
    async fn send_inner(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let core = &self.0;
        let sender = core.authenticate(&req).await.map_err(reject)?;
        let mut submission = match core.validate(&sender, req.into_inner()).await {
            Ok(Validated::New(s)) => *s,
            Ok(Validated::AlreadySequenced(ts)) => {
                metrics::counter!(m::SENDS, "outcome" => "deduplicated").increment(1);
                return Ok(Response::new(pb::SendResponse {
                    sequencing_timestamp_micros: ts.as_micros(),
                    deduplicated: true,
                }));
            }
            Err(e) => return Err(reject(e)),
        };
        let (reply, rx) = oneshot::channel();
        submission.reply = reply;
        core.writer
            .try_enqueue(WriteCommand::Submit(submission))
            .map_err(reject)?;
        let outcome = rx
            .await
            .map_err(|_| SequencerError::OutcomeUnknown.to_status())?
            .map_err(Status::from)?;
        Ok(Response::new(pb::SendResponse {
            sequencing_timestamp_micros: outcome.ts.as_micros(),
            deduplicated: outcome.deduplicated,
        }))
    }
}

#[tonic::async_trait]
impl SequencerService for SequencerApi {
    async fn handshake(
        &self,
        req: Request<pb::HandshakeRequest>,
    ) -> Result<Response<pb::HandshakeResponse>, Status> {
        let accepted = req
            .get_ref()
            .client_protocol_versions
            .iter()
            .any(|v| v == domain_proto::PROTOCOL_VERSION);
        Ok(Response::new(pb::HandshakeResponse {
            server_protocol_version: domain_proto::PROTOCOL_VERSION.to_string(),
            accepted,
            reason: if accepted {
                String::new()
            } else {
                format!("server speaks {} only", domain_proto::PROTOCOL_VERSION)
            },
        }))
    }

    async fn get_domain_info(
        &self,
        _req: Request<pb::GetDomainInfoRequest>,
    ) -> Result<Response<pb::GetDomainInfoResponse>, Status> {
        let core = &self.0;
        let s = &core.settings;
        let trust = core.domain_trust().await;
        Ok(Response::new(pb::GetDomainInfoResponse {
            domain_id: s.domain.to_string(),
            sequencer_id: s.sequencer_id.to_string(),
            sequencer_public_key: Some(common_pb::PublicKey::from(&s.public_key)),
            protocol_version: domain_proto::PROTOCOL_VERSION.to_string(),
            max_request_size: s.max_request_size as u64,
            namespace_public_key: trust.namespace_key.clone(),
            sequencer_registrations: trust.registrations.clone(),
        }))
    }

    async fn challenge(
        &self,
        req: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::ChallengeResponse>, Status> {
        let core = &self.0;
        let r = req.into_inner();
        let result: Result<_, SequencerError> = async {
            let member = MemberId::parse(&r.member)
                .map_err(|e| SequencerError::Malformed(format!("member id: {e}")))?;
            let pk = r
                .public_key
                .ok_or_else(|| SequencerError::Malformed("missing public key".into()))?;
            let key = domain_proto::identity::ed25519_key(&pk).map_err(|e| match e {
                KeyConversionError::NotEd25519 => SequencerError::Malformed(e.to_string()),
                KeyConversionError::Key(e) => SequencerError::Malformed(format!("public key: {e}")),
            })?;
            if !member.matches_key(&key) {
                return Err(SequencerError::KeyMismatch {
                    member: member.clone(),
                    key: key.fingerprint().to_string(),
                });
            }
            let row = core.members.get(&r.member).await?;
            // Open mode: an unknown participant gets a nonce bound to the key it claims,
            // but no registration. A Challenge proves nothing (the public key is public);
            // `authenticate` registers once the nonce's signature verifies.
            let open_newcomer = row.is_none()
                && core.settings.open_participant_access
                && member.role() == MemberRole::Participant;
            if !open_newcomer {
                let row = row.ok_or_else(|| SequencerError::MemberUnknown(r.member.clone()))?;
                if !row.enabled {
                    return Err(SequencerError::MemberDisabled(r.member.clone()));
                }
                if let Some(bound) = &row.public_key
                    && bound.as_slice() != key.as_bytes()
                {
                    return Err(SequencerError::KeyMismatch {
                        member: member.clone(),
                        key: key.fingerprint().to_string(),
                    });
                }
            }
            let mut nonce = [0u8; 32];
            getrandom::fill(&mut nonce)
                .map_err(|e| SequencerError::Internal(format!("no randomness: {e}")))?;
            let client = core.db().await?;
            let expires = store::insert_nonce(
                &**client,
                &nonce,
                &r.member,
                key.as_bytes(),
                core.settings.nonce_ttl,
            )
            .await?;
            Ok(pb::ChallengeResponse {
                nonce: nonce.to_vec(),
                domain_id: core.settings.domain.to_string(),
                expires_at_micros: expires.as_micros(),
            })
        }
        .await;
        let outcome = if result.is_ok() {
            "challenged"
        } else {
            "challenge_refused"
        };
        metrics::counter!(m::AUTH, "outcome" => outcome).increment(1);
        result.map(Response::new).map_err(Status::from)
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let core = &self.0;
        let r = req.into_inner();
        let result: Result<_, SequencerError> = async {
            let member = MemberId::parse(&r.member)
                .map_err(|e| SequencerError::Malformed(format!("member id: {e}")))?;
            let sig = r
                .signature
                .ok_or_else(|| SequencerError::Malformed("missing signature".into()))?;
            let signature = Signature::try_from(&sig)
                .map_err(|e| SequencerError::ChallengeSignatureInvalid(e.to_string()))?;
            let client = core.db().await?;
            // Consumed before verification: a nonce is single-use even when the signature is wrong.
            let key_bytes = store::take_nonce(&**client, &r.nonce, &r.member)
                .await?
                .ok_or(SequencerError::NonceInvalid)?;
            let key = PublicKey::from_bytes(&key_bytes)
                .map_err(|e| SequencerError::Internal(e.to_string()))?;
            key.verify_with_domain_str(
                SignaturePurpose::AuthChallenge,
                &core.settings.domain.to_string(),
                &r.nonce,
                &signature,
            )
            .map_err(|e| SequencerError::ChallengeSignatureInvalid(e.to_string()))?;
            let mut row = core.members.get(&r.member).await?;
            if row.is_none()
                && core.settings.open_participant_access
                && member.role() == MemberRole::Participant
            {
                // Open mode: the participant has now proven its key (the nonce was issued
                // for this member and key, and its signature verified).
                if !core.registrations.try_acquire() {
                    return Err(SequencerError::RegistrationRateLimited);
                }
                let ts = core
                    .writer
                    .register(member.clone(), Some(key.as_bytes().to_vec()))
                    .await?;
                tracing::info!(member = %r.member, registered_ts = ts.as_micros(), "participant admitted in open mode");
                core.members.reload().await?;
                row = core.members.get(&r.member).await?;
            }
            let row = row.ok_or_else(|| SequencerError::MemberUnknown(r.member.clone()))?;
            if !row.enabled {
                return Err(SequencerError::MemberDisabled(r.member.clone()));
            }
            let bound = store::bind_public_key(&**client, &r.member, key.as_bytes()).await?;
            if bound.as_deref() != Some(key.as_bytes().as_slice()) {
                return Err(SequencerError::KeyMismatch {
                    member: member.clone(),
                    key: key.fingerprint().to_string(),
                });
            }
            if row.public_key.is_none() {
                core.members.reload().await?;
            }
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw)
                .map_err(|e| SequencerError::Internal(format!("no randomness: {e}")))?;
            let token = hex::encode(raw);
            let hash = Sha256::digest(token.as_bytes()).to_vec();
            let expires =
                store::insert_token(&**client, &hash, &r.member, core.settings.token_ttl).await?;
            Ok(pb::AuthenticateResponse {
                token,
                expires_at_micros: expires.as_micros(),
            })
        }
        .await;
        let outcome = if result.is_ok() {
            "authenticated"
        } else {
            "refused"
        };
        metrics::counter!(m::AUTH, "outcome" => outcome).increment(1);
        result.map(Response::new).map_err(Status::from)
    }

    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        // The sender's client sends no `traceparent` metadata; its trace context travels in
        // the request. Sequencing joins that trace.
        let parent = match req.get_ref().trace_context.as_str() {
            "" => None,
            value if value.len() > MAX_TRACE_CONTEXT_BYTES => None,
            value => domain_runtime::telemetry::TraceContext::parse_traceparent(value).ok(),
        };
        match parent {
            Some(parent) => {
                let span = tracing::info_span!("sequencer_send");
                domain_runtime::telemetry::in_remote_span(span, Some(parent), self.send_inner(req))
                    .await
            }
            None => self.send_inner(req).await,
        }
    }

    type SubscribeStream = subscription::SubscriptionStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let core = &self.0;
        // Listen for revocations before authenticating: a disable handled between the
        // token check and this subscription would otherwise never reach the stream.
        let revoked = core.members.revoked.subscribe();
        let member = core.authenticate(&req).await.map_err(Status::from)?;
        let r = req.get_ref();
        if r.member != member.member {
            return Err(SequencerError::MemberMismatch {
                authenticated: member.member.clone(),
                requested: r.member.clone(),
            }
            .to_status());
        }
        if r.from_counter < 0 {
            return Err(SequencerError::Malformed("from_counter must be >= 0".into()).to_status());
        }
        if !core.writer.state().online {
            return Err(SequencerError::InstanceOffline("writer is not online".into()).to_status());
        }
        // Counted until the subscription task ends, however it ends.
        let slot = core.subscriptions.acquire(&member).map_err(Status::from)?;
        let (tx, rx) = subscription::outbox(
            core.settings.subscription_buffer,
            core.settings.subscription_buffer_bytes,
        );
        let ctx = SubscriptionContext {
            pool: core.pool.clone(),
            reader: core.reader.clone(),
            sequencer_fingerprint: core.settings.public_key.fingerprint().to_string(),
            revoked,
            shutdown: core.shutdown.clone(),
            page: core.settings.read_page,
        };
        tokio::spawn(subscription::run(ctx, member, r.from_counter, tx, slot));
        Ok(Response::new(rx))
    }

    async fn acknowledge(
        &self,
        req: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let core = &self.0;
        let member = core.authenticate(&req).await.map_err(Status::from)?;
        let r = req.get_ref();
        if r.member != member.member {
            return Err(SequencerError::MemberMismatch {
                authenticated: member.member.clone(),
                requested: r.member.clone(),
            }
            .to_status());
        }
        if r.timestamp_micros < 0 {
            metrics::counter!(crate::metrics::ACKNOWLEDGEMENTS, "result" => "malformed")
                .increment(1);
            return Err(SequencerError::Malformed(format!(
                "timestamp_micros {} is negative",
                r.timestamp_micros
            ))
            .to_status());
        }
        let client = core.db().await.map_err(Status::from)?;
        // The safe watermark bounds everything any instance can have delivered to this
        // member: an acknowledgement above it would let pruning delete events the member
        // has not seen yet (and that may still be written).
        let safe = store::safe_watermark(&**client)
            .await
            .map_err(|e| SequencerError::from(e).to_status())?;
        let timestamp = Timestamp::from_micros(r.timestamp_micros);
        if timestamp > safe {
            metrics::counter!(crate::metrics::ACKNOWLEDGEMENTS, "result" => "ahead").increment(1);
            return Err(SequencerError::AcknowledgeAhead {
                timestamp,
                safe_watermark: safe,
            }
            .to_status());
        }
        let acknowledged = store::acknowledge(&**client, member.id, timestamp)
            .await
            .map_err(|e| SequencerError::from(e).to_status())?;
        metrics::counter!(crate::metrics::ACKNOWLEDGEMENTS, "result" => "accepted").increment(1);
        Ok(Response::new(pb::AcknowledgeResponse {
            acknowledged_micros: acknowledged.as_micros(),
        }))
    }
}

#[cfg(test)]
mod token_cache_tests {
    use super::*;

    fn entry(read_at: Instant) -> CachedToken {
        CachedToken {
            member: "PAR::a::1220".into(),
            expires_at: Timestamp::from_micros(1_000),
            read_at,
            refreshing: None,
        }
    }

    /// Issue 17: past the TTL exactly one request re-reads the token; the others keep the
    /// entry until that read answers or the TTL passes again; the token's expiry always
    /// holds.
    #[test]
    fn one_request_refreshes_an_entry_past_its_ttl() {
        let t0 = Instant::now();
        let now = Timestamp::from_micros(500);
        let mut e = entry(t0);
        assert!(e.use_or_refresh(now, t0).is_some(), "fresh");
        let later = t0 + TOKEN_CACHE_TTL;
        assert_eq!(
            e.use_or_refresh(now, later),
            None,
            "the first request past the TTL reads"
        );
        assert!(
            e.use_or_refresh(now, later + Duration::from_millis(5))
                .is_some(),
            "the others keep the entry while that read is in flight"
        );
        assert_eq!(
            e.use_or_refresh(now, later + TOKEN_CACHE_TTL),
            None,
            "a refresh that never answered is taken over after another TTL"
        );
        assert_eq!(
            e.use_or_refresh(Timestamp::from_micros(1_000), t0),
            None,
            "an expired token is never served from the cache"
        );
    }
}

#[cfg(test)]
mod parsed_keys_tests {
    use super::*;

    #[test]
    fn a_key_is_parsed_once_and_bad_bytes_are_refused_every_time() {
        let keys = ParsedKeys::default();
        let pair = domain_identity::SigningKeyPair::from_seed(&[4; 32]);
        let bytes = pair.public_key().as_bytes().to_vec();
        let first = keys.get(&bytes).expect("valid key");
        assert_eq!(first.fingerprint(), pair.public_key().fingerprint());
        assert_eq!(keys.0.lock().expect("lock").len(), 1);
        let again = keys.get(&bytes).expect("cached");
        assert_eq!(again.as_bytes(), first.as_bytes());
        assert_eq!(keys.0.lock().expect("lock").len(), 1);
        // Not a key: refused, and nothing is cached for it.
        assert!(keys.get(&[0u8; 31]).is_err());
        assert!(
            keys.get(&[0u8; 32]).is_err(),
            "a small-order point is refused"
        );
        assert_eq!(keys.0.lock().expect("lock").len(), 1);
    }
}
