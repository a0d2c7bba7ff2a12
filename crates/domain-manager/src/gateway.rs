//! The domain manager's view of the sequencers: sending topology transactions
//! (with failover across endpoints), discovering sequencer ids at bootstrap,
//! and listing instances for `ListSequencers`.
//!
//! [`SequencerGateway`] is a trait so that the topology logic can be tested
//! against an in-process fake; [`GrpcGateway`] is the real implementation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain_identity::{DomainId, MemberId, MemberRole, PublicKey};
use domain_proto::v1::sequencer_service_client::SequencerServiceClient;
use domain_proto::v1::{self as pb, sequencer_admin_service_client::SequencerAdminServiceClient};
use domain_runtime::telemetry::TraceContextInterceptor;
use domain_sequencer_client::{ClientError, MemberIdentity, SequencerConnection, connect_channel};
use futures::future::BoxFuture;
use prost::Message as _;
use tokio::time::Instant;
use tonic::transport::ClientTlsConfig;

use crate::config::{SequencerEndpointConfig, parse_endpoint};
use crate::error::DomainManagerError;

/// Connect timeout towards one sequencer endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time limit of sequencer discovery (`GetDomainInfo` on every endpoint, in parallel).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);
/// First and largest pause between rounds over all endpoints.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the sequencer answered for one topology transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    pub sequencing_ts: i64,
    /// The sequencer recognised a resend of an already sequenced message id.
    pub deduplicated: bool,
}

/// What came of sending one topology transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Sequenced now, or earlier (a deduplicated resend answers the original timestamp).
    Sequenced(Sequenced),
    /// Refused because its max sequencing time has passed (`SEQ_MAX_SEQUENCING_TIME_EXCEEDED`)
    /// while the sequencer holds no deduplication record of the message id. That does not
    /// prove it was never sequenced (the record may have been pruned):
    /// [`SequencerGateway::find_receipt`] tells.
    DeadlinePassed,
}

/// One send of a topology transaction: every resend of a message id repeats the same max
/// sequencing time, so the sequencer either deduplicates it or refuses it as too late.
#[derive(Debug, Clone, Copy)]
pub struct TopologySend<'a> {
    pub serial: u64,
    pub message_id: &'a str,
    /// Sequencer time (microseconds) after which the message must not be sequenced.
    pub max_sequencing_ts: i64,
    pub signed: &'a pb::SignedTopologyTransaction,
}

/// A sequencer found through `GetDomainInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredSequencer {
    pub sequencer_id: MemberId,
    pub public_key: PublicKey,
}

/// Result of `ListInstances` on the first admin endpoint that answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceList {
    pub instances: Vec<pb::InstanceInfo>,
    /// The sequencer id of the answering endpoint, when it could be learned.
    pub sequencer_id: Option<String>,
}

/// The sequencer operations the domain manager needs.
pub trait SequencerGateway: Send + Sync + 'static {
    /// Sends the transaction as a broadcast from the domain manager member under
    /// `send.message_id` with `send.max_sequencing_ts`, retrying across endpoints until
    /// `deadline`.
    fn send_topology<'a>(
        &'a self,
        send: TopologySend<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<SendOutcome, DomainManagerError>>;

    /// Whether the domain manager's message `message_id`, sent only after sequencer time
    /// `sequenced_after` and whose max sequencing time `max_sequencing_ts` has passed, was
    /// sequenced, and at which timestamp: reads the domain manager's own event stream
    /// (where every message it sent has its receipt, at the timestamp every member sees)
    /// up to a time proof sequenced after `max_sequencing_ts`. The sequencer never
    /// sequences a message after its max sequencing time, so `None` is final. Fails
    /// (rather than answer `None`) when the stream is pruned past `sequenced_after`: the
    /// receipt may have been among the pruned events. Retries across endpoints until
    /// `deadline`.
    fn find_receipt<'a>(
        &'a self,
        message_id: &'a str,
        sequenced_after: i64,
        max_sequencing_ts: i64,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Option<i64>, DomainManagerError>>;

    /// Asks every endpoint for its sequencer id and key (`GetDomainInfo`); returns the
    /// distinct sequencers that answered, and an error only if none did.
    fn discover_sequencers(
        &self,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Vec<DiscoveredSequencer>, DomainManagerError>>;

    /// `ListInstances` on the first configured admin endpoint that answers.
    fn list_instances(
        &self,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<InstanceList, DomainManagerError>>;
}

/// How one attempt on one endpoint failed.
enum AttemptError {
    /// Past the max sequencing time, with no deduplication record.
    DeadlinePassed,
    /// Anything else; the next endpoint may do better.
    Failed(String),
}

impl From<String> for AttemptError {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

/// Classifies a failed send: `SEQ_MAX_SEQUENCING_TIME_EXCEEDED` is an answer, not a failure.
fn send_error(e: &ClientError) -> AttemptError {
    match e {
        ClientError::Status(s)
            if domain_sequencer_client::retry::error_code(s)
                == Some("SEQ_MAX_SEQUENCING_TIME_EXCEEDED") =>
        {
            AttemptError::DeadlinePassed
        }
        other => AttemptError::Failed(describe_client_error(other)),
    }
}

/// The oldest counter a `SEQ_EVENTS_PRUNED` refusal names ("... the oldest retained
/// counter is N").
fn oldest_retained(status: &tonic::Status) -> Option<i64> {
    if domain_sequencer_client::retry::error_code(status) != Some("SEQ_EVENTS_PRUNED") {
        return None;
    }
    status.message().rsplit(' ').next()?.parse().ok()
}

use domain_time::now_micros;

/// The real gateway over gRPC.
pub struct GrpcGateway {
    endpoints: Vec<SequencerEndpointConfig>,
    tls: Option<ClientTlsConfig>,
    member: MemberIdentity,
    domain_id: DomainId,
    connections: Mutex<Vec<Option<SequencerConnection>>>,
    preferred: AtomicUsize,
}

impl GrpcGateway {
    pub fn new(
        endpoints: Vec<SequencerEndpointConfig>,
        tls: Option<ClientTlsConfig>,
        member: MemberIdentity,
        domain_id: DomainId,
    ) -> Self {
        let n = endpoints.len();
        Self {
            endpoints,
            tls,
            member,
            domain_id,
            connections: Mutex::new(vec![None; n]),
            preferred: AtomicUsize::new(0),
        }
    }

    fn tls_for(&self, url: &str) -> Option<ClientTlsConfig> {
        match parse_endpoint(url) {
            Ok(ep) if ep.https => self.tls.clone(),
            _ => None,
        }
    }

    fn cached(&self, i: usize) -> Option<SequencerConnection> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
            .cloned()
            .flatten()
    }

    fn store(&self, i: usize, conn: Option<SequencerConnection>) {
        if let Some(slot) = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(i)
        {
            *slot = conn;
        }
    }

    /// An authenticated connection to endpoint `i` (cached).
    async fn connection(&self, i: usize) -> Result<SequencerConnection, String> {
        if let Some(conn) = self.cached(i) {
            return Ok(conn);
        }
        let url = &self.endpoints[i].public_endpoint;
        let channel = connect_channel(url, self.tls_for(url), CONNECT_TIMEOUT)
            .await
            .map_err(|e| describe_client_error(&e))?;
        let conn = SequencerConnection::new(channel, self.member.clone())
            .await
            .map_err(|e| describe_client_error(&e))?;
        if conn.domain_id != self.domain_id.to_string() {
            return Err(format!(
                "serves domain {}, not {}: check `sequencers`",
                conn.domain_id, self.domain_id
            ));
        }
        conn.authenticate()
            .await
            .map_err(|e| format!("authentication failed: {}", describe_client_error(&e)))?;
        self.store(i, Some(conn.clone()));
        Ok(conn)
    }

    /// One attempt on endpoint `i`; re-authenticates once when the token was refused.
    async fn attempt(
        &self,
        i: usize,
        message_id: &str,
        envelopes: &[pb::Envelope],
        max_sequencing_ts: i64,
    ) -> Result<pb::SendResponse, AttemptError> {
        let conn = self.connection(i).await?;
        let response = match conn
            .send(message_id, envelopes.to_vec(), max_sequencing_ts)
            .await
        {
            Err(ClientError::Status(s)) if s.code() == tonic::Code::Unauthenticated => {
                conn.authenticate().await.map_err(|e| {
                    format!("re-authentication failed: {}", describe_client_error(&e))
                })?;
                conn.send(message_id, envelopes.to_vec(), max_sequencing_ts)
                    .await
            }
            other => other,
        };
        match response {
            Ok(_) if crate::fault::drop_reply(message_id) => Err(AttemptError::Failed(
                "connection lost before the reply (fault injection)".into(),
            )),
            Ok(response) => Ok(response),
            Err(e) => Err(send_error(&e)),
        }
    }

    /// [`SequencerGateway::find_receipt`] on endpoint `i`.
    async fn find_receipt_on(
        &self,
        i: usize,
        message_id: &str,
        sequenced_after: i64,
        max_sequencing_ts: i64,
    ) -> Result<Option<i64>, String> {
        let conn = self.connection(i).await?;
        // A time proof sequenced after the deadline: once its receipt is read, every
        // event of ours at or before the deadline has been seen.
        let proof_id = format!("dm-time-proof-{}", now_micros());
        let proof = pb::SubmissionRequest {
            sender: conn.member.id.to_string(),
            message_id: proof_id.clone(),
            envelopes: Vec::new(),
            max_sequencing_time_micros: 0,
            time_proof: true,
        };
        let proof_ts = conn
            .send_signed(conn.sign_submission(&proof))
            .await
            .map_err(|e| format!("time proof: {}", describe_client_error(&e)))?
            .sequencing_timestamp_micros;
        if proof_ts <= max_sequencing_ts {
            return Err(format!(
                "sequencer time {proof_ts} has not passed the max sequencing time \
                 {max_sequencing_ts} of {message_id} yet"
            ));
        }
        let mut from = 0;
        // Whether the events below `from` are pruned; then the first one read tells (by
        // its predecessor's timestamp) how far the pruning reached.
        let mut pruned = false;
        'subscribe: loop {
            let mut stream = match conn.subscribe(from).await {
                Ok(stream) => stream,
                Err(ClientError::Status(s)) if oldest_retained(&s).is_some_and(|o| o > from) => {
                    from = oldest_retained(&s).unwrap_or(from);
                    pruned = true;
                    continue 'subscribe;
                }
                Err(e) => return Err(format!("subscribe: {}", describe_client_error(&e))),
            };
            loop {
                let event = match stream.message().await {
                    Ok(Some(pb::SubscribeResponse { event: Some(event) })) => event,
                    Ok(Some(_)) => return Err("subscription sent an empty response".into()),
                    Ok(None) => {
                        return Err("subscription ended before the time proof's receipt".into());
                    }
                    // Events at the start of our stream are pruned (we acknowledged them):
                    // start at the oldest one kept. Ours is later than every acknowledged
                    // one (nothing after it was sent before it is settled).
                    Err(s) if oldest_retained(&s).is_some_and(|o| o > from) => {
                        from = oldest_retained(&s).unwrap_or(from);
                        pruned = true;
                        continue 'subscribe;
                    }
                    Err(s) => return Err(format!("subscription: {}", describe_status(&s))),
                };
                let content = conn
                    .verify_event(&event)
                    .map_err(|e| format!("event {}: {e}", event.counter))?;
                if std::mem::take(&mut pruned) && event.previous_timestamp_micros > sequenced_after
                {
                    // The domain manager does not hold back the sequencer's pruning: with a
                    // `pruning.retention` shorter than the outage, the receipt may be gone.
                    return Err(format!(
                        "our event stream is pruned up to {} (past {sequenced_after}, before \
                         which {message_id} cannot have been sequenced): whether it was \
                         sequenced cannot be told any more; the sequencer's \
                         `pruning.retention` is shorter than the outage",
                        event.previous_timestamp_micros
                    ));
                }
                let ts = content.timestamp_micros;
                if event.message_id == message_id {
                    return Ok(Some(ts));
                }
                if event.message_id == proof_id || ts >= proof_ts {
                    tracing::info!(
                        message_id,
                        from_counter = from,
                        up_to_counter = event.counter,
                        time_proof_ts = proof_ts,
                        "no receipt in our own event stream up to a time proof past the max \
                         sequencing time"
                    );
                    return Ok(None);
                }
            }
        }
    }

    async fn find_receipt_inner(
        &self,
        message_id: &str,
        sequenced_after: i64,
        max_sequencing_ts: i64,
        deadline: Instant,
    ) -> Result<Option<i64>, DomainManagerError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut backoff = BACKOFF_START;
        let mut last = String::from("deadline passed before any attempt");
        let mut attempt = 0usize;
        while n > 0 && Instant::now() < deadline {
            let i = (start + attempt) % n;
            let url = &self.endpoints[i].public_endpoint;
            match tokio::time::timeout_at(
                deadline,
                self.find_receipt_on(i, message_id, sequenced_after, max_sequencing_ts),
            )
            .await
            {
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(reason)) => {
                    tracing::warn!(message_id, endpoint = %url, %reason, "cannot read our own stream; trying the next sequencer");
                    self.store(i, None);
                    last = format!("{url}: {reason}");
                }
                Err(_) => {
                    self.store(i, None);
                    last = format!("{url}: timed out");
                }
            }
            attempt += 1;
            if attempt.is_multiple_of(n) {
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        Err(DomainManagerError::SequencerUnavailable(format!(
            "cannot tell whether {message_id} was sequenced before its max sequencing time \
             passed (it stays pending): {last}"
        )))
    }

    async fn send_inner(
        &self,
        send: TopologySend<'_>,
        deadline: Instant,
    ) -> Result<SendOutcome, DomainManagerError> {
        let TopologySend {
            serial,
            message_id,
            max_sequencing_ts,
            signed,
        } = send;
        let n = self.endpoints.len();
        if n == 0 {
            return Err(DomainManagerError::SequencerUnavailable(
                "no sequencer endpoint configured".into(),
            ));
        }
        let content = pb::DomainMessage {
            message: Some(pb::domain_message::Message::Topology(signed.clone())),
        }
        .encode_to_vec();
        let envelopes = vec![pb::Envelope {
            content: content.into(),
            recipients: Vec::new(),
            broadcast: true,
        }];
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let per_attempt =
            (deadline.saturating_duration_since(Instant::now()) / 2).max(Duration::from_secs(2));
        let mut backoff = BACKOFF_START;
        let mut errors: Vec<String> = Vec::new();
        let mut attempt = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let i = (start + attempt) % n;
            let url = &self.endpoints[i].public_endpoint;
            let limit = per_attempt.min(deadline - now);
            let sent = self.attempt(i, message_id, &envelopes, max_sequencing_ts);
            match tokio::time::timeout(limit, sent).await {
                Ok(Ok(response)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    self.acknowledge(i, response.sequencing_timestamp_micros);
                    return Ok(SendOutcome::Sequenced(Sequenced {
                        sequencing_ts: response.sequencing_timestamp_micros,
                        deduplicated: response.deduplicated,
                    }));
                }
                // Every instance answers alike (the deduplication records are shared).
                Ok(Err(AttemptError::DeadlinePassed)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(SendOutcome::DeadlinePassed);
                }
                Ok(Err(AttemptError::Failed(reason))) => {
                    tracing::warn!(serial, endpoint = %url, %reason, "topology send failed; trying the next sequencer");
                    self.store(i, None);
                    errors.push(format!("{url}: {reason}"));
                }
                Err(_) => {
                    tracing::warn!(serial, endpoint = %url, timeout = ?limit, "topology send timed out; trying the next sequencer");
                    self.store(i, None);
                    errors.push(format!("{url}: timed out after {limit:?}"));
                }
            }
            attempt += 1;
            if attempt.is_multiple_of(n) {
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        // Keep the message short: the last error of each endpoint.
        let mut last: Vec<String> = Vec::new();
        for e in errors.iter().rev() {
            let ep = e.split(": ").next().unwrap_or_default();
            if !last.iter().any(|l| l.starts_with(ep)) {
                last.push(e.clone());
            }
        }
        Err(DomainManagerError::SequencerUnavailable(
            if last.is_empty() {
                "deadline passed before any attempt".to_owned()
            } else {
                format!("gave up after {attempt} attempt(s): {}", last.join("; "))
            },
        ))
    }

    /// The domain manager never reads its own event stream; acknowledging what it sent
    /// keeps it from holding back the sequencer's pruning. Best effort, in the background.
    fn acknowledge(&self, i: usize, ts: i64) {
        if let Some(conn) = self.cached(i) {
            tokio::spawn(async move {
                let result =
                    tokio::time::timeout(Duration::from_secs(2), conn.acknowledge(ts)).await;
                if let Ok(Err(e)) = result {
                    tracing::debug!(error = %describe_client_error(&e), "acknowledgement failed");
                }
            });
        }
    }

    async fn domain_info(&self, i: usize) -> Result<DiscoveredSequencer, String> {
        let url = &self.endpoints[i].public_endpoint;
        let channel = connect_channel(url, self.tls_for(url), CONNECT_TIMEOUT)
            .await
            .map_err(|e| describe_client_error(&e))?;
        let mut client = SequencerServiceClient::with_interceptor(channel, TraceContextInterceptor);
        let info = client
            .get_domain_info(pb::GetDomainInfoRequest {})
            .await
            .map_err(|s| describe_status(&s))?
            .into_inner();
        if info.domain_id != self.domain_id.to_string() {
            return Err(format!(
                "serves domain {}, not {}: check `sequencers`",
                info.domain_id, self.domain_id
            ));
        }
        let sequencer_id = MemberId::parse(&info.sequencer_id)
            .map_err(|e| format!("sequencer id {:?}: {e}", info.sequencer_id))?;
        if sequencer_id.role() != MemberRole::Sequencer {
            return Err(format!("{sequencer_id} is not a sequencer id"));
        }
        let key = info
            .sequencer_public_key
            .ok_or_else(|| "no sequencer public key in GetDomainInfo".to_owned())?;
        let public_key = PublicKey::from_bytes(&key.key).map_err(|e| e.to_string())?;
        if !sequencer_id.matches_key(&public_key) {
            return Err(format!(
                "public key {} does not match {sequencer_id}",
                public_key.fingerprint()
            ));
        }
        Ok(DiscoveredSequencer {
            sequencer_id,
            public_key,
        })
    }

    async fn discover_inner(
        &self,
        deadline: Instant,
    ) -> Result<Vec<DiscoveredSequencer>, DomainManagerError> {
        // Bounded well below the write deadline: a black-holed endpoint must not eat the
        // time the registrations themselves need.
        let deadline = deadline.min(Instant::now() + DISCOVERY_TIMEOUT);
        let probes = (0..self.endpoints.len()).map(|i| async move {
            let limit = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(limit, self.domain_info(i)).await {
                Ok(r) => r,
                Err(_) => Err("timed out".to_owned()),
            }
        });
        let results = futures::future::join_all(probes).await;
        let mut found: Vec<DiscoveredSequencer> = Vec::new();
        let mut errors = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(s) => {
                    if !found.iter().any(|f| f.sequencer_id == s.sequencer_id) {
                        found.push(s);
                    }
                }
                Err(e) => {
                    let url = &self.endpoints[i].public_endpoint;
                    tracing::warn!(endpoint = %url, reason = %e, "sequencer discovery failed");
                    errors.push(format!("{url}: {e}"));
                }
            }
        }
        if found.is_empty() {
            return Err(DomainManagerError::SequencerUnavailable(format!(
                "no sequencer answered GetDomainInfo: {}",
                errors.join("; ")
            )));
        }
        Ok(found)
    }

    async fn list_inner(&self, deadline: Instant) -> Result<InstanceList, DomainManagerError> {
        let mut errors = Vec::new();
        for (i, s) in self.endpoints.iter().enumerate() {
            let Some(admin) = &s.admin_endpoint else {
                continue;
            };
            let limit = deadline.saturating_duration_since(Instant::now());
            let call = async {
                let channel = connect_channel(admin, self.tls_for(admin), CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| describe_client_error(&e))?;
                let mut client =
                    SequencerAdminServiceClient::with_interceptor(channel, TraceContextInterceptor);
                client
                    .list_instances(pb::ListInstancesRequest {})
                    .await
                    .map(|r| r.into_inner().instances)
                    .map_err(|s| describe_status(&s))
            };
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(instances)) => {
                    let sequencer_id = tokio::time::timeout(
                        deadline.saturating_duration_since(Instant::now()),
                        self.domain_info(i),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|d| d.sequencer_id.to_string());
                    return Ok(InstanceList {
                        instances,
                        sequencer_id,
                    });
                }
                Ok(Err(e)) => errors.push(format!("{admin}: {e}")),
                Err(_) => errors.push(format!("{admin}: timed out")),
            }
        }
        Err(DomainManagerError::SequencerUnavailable(
            if errors.is_empty() {
                "no sequencer admin-endpoint is configured".to_owned()
            } else {
                format!(
                    "no sequencer admin endpoint answered: {}",
                    errors.join("; ")
                )
            },
        ))
    }
}

impl SequencerGateway for GrpcGateway {
    fn send_topology<'a>(
        &'a self,
        send: TopologySend<'a>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<SendOutcome, DomainManagerError>> {
        Box::pin(self.send_inner(send, deadline))
    }

    fn find_receipt<'a>(
        &'a self,
        message_id: &'a str,
        sequenced_after: i64,
        max_sequencing_ts: i64,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Option<i64>, DomainManagerError>> {
        Box::pin(self.find_receipt_inner(message_id, sequenced_after, max_sequencing_ts, deadline))
    }

    fn discover_sequencers(
        &self,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Vec<DiscoveredSequencer>, DomainManagerError>> {
        Box::pin(self.discover_inner(deadline))
    }

    fn list_instances(
        &self,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<InstanceList, DomainManagerError>> {
        Box::pin(self.list_inner(deadline))
    }
}

/// `CODE: message [domain-error-code]` of a status, short enough for logs and answers.
pub fn describe_status(status: &tonic::Status) -> String {
    let code = domain_proto::error::error_code(status)
        .map(|c| format!(" [{c}]"))
        .unwrap_or_default();
    format!("{:?}: {}{code}", status.code(), status.message())
}

fn describe_client_error(e: &ClientError) -> String {
    match e {
        ClientError::Status(s) => describe_status(s),
        other => other.to_string(),
    }
}

/// Shared handle type used by the core.
pub type Gateway = Arc<dyn SequencerGateway>;
