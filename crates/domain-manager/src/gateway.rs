//! The domain manager's view of the sequencers: sending topology transactions
//! (through the sequencer-client library's [`DomainClient`], which fails over across
//! endpoints), discovering sequencer ids at bootstrap, and listing instances for
//! `ListSequencers`.
//!
//! [`SequencerGateway`] is a trait so that the topology logic can be tested
//! against an in-process fake; [`GrpcGateway`] is the real implementation.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain_backoff::{Backoff, BackoffConfig};
use domain_identity::{DomainId, Fingerprint, MemberId, MemberRole, PublicKey};
use domain_proto::confirmation::v1 as confirmation_pb;
use domain_proto::sequencer::admin::v1 as pb;
use domain_proto::sequencer::admin::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_proto::sequencer::v1::sequencer_service_client::SequencerServiceClient;
use domain_proto::topology::v1 as topology_pb;
use domain_runtime::telemetry::TraceContextInterceptor;
use domain_sequencer_client::{
    ClientError, ClientOptions, DomainClient, DomainPins, DomainTls, MemberIdentity,
    connect_channel,
};
use futures::future::BoxFuture;
use prost::Message as _;
use tokio::time::Instant;
use tonic::transport::ClientTlsConfig;

use crate::config::{SequencerEndpointConfig, parse_endpoint};
use crate::error::DomainManagerError;

/// Connect timeout towards one sequencer endpoint (discovery, `ListSequencers`), and how
/// long connecting the [`DomainClient`] keeps trying (within the caller's deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time limit of sequencer discovery (`GetDomainInfo` on every endpoint, in parallel).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

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
    pub signed: &'a topology_pb::SignedTopologyTransaction,
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

    /// The sequencer key the domain manager trusts from now on: the one its latest
    /// sequencer registration names (sequenced or pending), or the one it is about to
    /// register. Sends and reads of its own stream go only to endpoints showing it.
    fn trust_sequencer_key(&self, key: &PublicKey) {
        let _ = key;
    }
}

/// The oldest counter a `SEQ_EVENTS_PRUNED` refusal names ("... the oldest retained
/// counter is N").
fn oldest_retained(e: &ClientError) -> Option<i64> {
    let ClientError::Status(status) = e else {
        return None;
    };
    if domain_sequencer_client::retry::error_code(status) != Some("SEQ_EVENTS_PRUNED") {
        return None;
    }
    status.message().rsplit(' ').next()?.parse().ok()
}

/// The real gateway over gRPC. Topology sends and reads of the domain manager's own stream
/// go through one [`DomainClient`] (the sequencer-client library's failover client, as in
/// the mediator): health-checked endpoints, retries with jittered backoff on another
/// endpoint with the same signed bytes, one token for every instance. The client is
/// connected on first use and kept; it is rebuilt when the trusted sequencer key changes.
///
/// Trust: the domain id is pinned (the domain manager's own), and so is the sequencer key
/// the core names through [`SequencerGateway::trust_sequencer_key`]: the key of its latest
/// sequencer registration (sequenced or pending, i.e. signed by its own namespace key), or
/// the key it is about to register at bootstrap. An endpoint showing another domain or key
/// is refused. Discovery (`GetDomainInfo` at bootstrap) is what the domain manager
/// registers, over the CA-checked TLS channel; no key is trusted before that.
pub struct GrpcGateway {
    endpoints: Vec<SequencerEndpointConfig>,
    tls: Option<ClientTlsConfig>,
    member: MemberIdentity,
    domain_id: DomainId,
    /// The sequencer key sends and stream reads trust (see the type's documentation).
    trusted_key: Mutex<Option<PublicKey>>,
    /// The connected client and the key it was pinned to.
    client: tokio::sync::Mutex<Option<(Option<Fingerprint>, DomainClient)>>,
}

impl GrpcGateway {
    pub fn new(
        endpoints: Vec<SequencerEndpointConfig>,
        tls: Option<ClientTlsConfig>,
        member: MemberIdentity,
        domain_id: DomainId,
    ) -> Self {
        Self {
            endpoints,
            tls,
            member,
            domain_id,
            trusted_key: Mutex::new(None),
            client: tokio::sync::Mutex::new(None),
        }
    }

    fn tls_for(&self, url: &str) -> Option<ClientTlsConfig> {
        match parse_endpoint(url) {
            Ok(ep) if ep.https => self.tls.clone(),
            _ => None,
        }
    }

    /// The connected [`DomainClient`], connecting it first (or again, after the trusted
    /// key changed or the last connect failed). Concurrent callers wait for one attempt.
    async fn client(&self) -> Result<DomainClient, String> {
        let key = self
            .trusted_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|k| *k.fingerprint());
        let mut slot = self.client.lock().await;
        if let Some((pinned, client)) = slot.as_ref()
            && *pinned == key
        {
            return Ok(client.clone());
        }
        let tls = match &self.tls {
            Some(config) => DomainTls::Config(config.clone()),
            None => DomainTls::Plaintext,
        };
        let options = ClientOptions {
            connect_timeout: CONNECT_TIMEOUT,
            pins: DomainPins {
                domain_id: Some(self.domain_id.to_string()),
                // Without a key of its own registration (only before the first bootstrap
                // sends anything), the sequencer key must be confirmed by a registration
                // signed with our namespace key, as for every other member.
                sequencer_key: key,
            },
            ..ClientOptions::default()
        };
        let urls: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.public_endpoint.clone())
            .collect();
        let client = DomainClient::connect("domain", &urls, tls, self.member.clone(), options)
            .await
            .map_err(|e| describe_client_error(&e))?;
        tracing::info!(endpoints = ?urls, sequencer_key = ?key.map(|k| k.to_string()), "connected to the sequencers");
        *slot = Some((key, client.clone()));
        Ok(client)
    }

    async fn send_inner(
        &self,
        send: TopologySend<'_>,
        deadline: Instant,
    ) -> Result<SendOutcome, DomainManagerError> {
        let (serial, message_id, max_sequencing_ts) =
            (send.serial, send.message_id, send.max_sequencing_ts);
        if self.endpoints.is_empty() {
            return Err(DomainManagerError::SequencerUnavailable(
                "no sequencer endpoint configured".into(),
            ));
        }
        let content = confirmation_pb::DomainMessage {
            message: Some(confirmation_pb::domain_message::Message::Topology(
                send.signed.clone(),
            )),
        }
        .encode_to_vec();
        let envelopes = vec![sequencer_pb::Envelope {
            content: content.into(),
            recipients: Vec::new(),
            broadcast: true,
        }];
        let sent = async {
            let client = self.client().await?;
            // The client retries (elsewhere, same bytes) until the max sequencing time;
            // only a reply dropped by fault injection makes us send again, as a lost
            // connection would.
            let mut dropped = Backoff::new(BackoffConfig::default());
            loop {
                match client
                    .send(message_id, envelopes.clone(), max_sequencing_ts)
                    .await
                {
                    Ok(_) if crate::fault::drop_reply(message_id) => {
                        tokio::time::sleep(dropped.next_delay()).await;
                    }
                    Ok(response) => {
                        acknowledge(&client, response.sequencing_timestamp_micros);
                        return Ok(SendOutcome::Sequenced(Sequenced {
                            sequencing_ts: response.sequencing_timestamp_micros,
                            deduplicated: response.deduplicated,
                        }));
                    }
                    // Refused as too late with no deduplication record: an answer (every
                    // instance answers alike, the records are shared).
                    Err(ClientError::Status(s))
                        if domain_sequencer_client::retry::error_code(&s)
                            == Some("SEQ_MAX_SEQUENCING_TIME_EXCEEDED") =>
                    {
                        return Ok(SendOutcome::DeadlinePassed);
                    }
                    Err(e) => return Err(describe_client_error(&e)),
                }
            }
        };
        let reason = match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(outcome)) => return Ok(outcome),
            Ok(Err(reason)) => reason,
            Err(_) => "no sequencer sequenced it before the deadline".to_owned(),
        };
        tracing::warn!(serial, message_id, %reason, "topology send failed");
        Err(DomainManagerError::SequencerUnavailable(format!(
            "{reason}{}",
            self.endpoint_problems()
        )))
    }

    /// `; <endpoint>: <problem>` for each unhealthy endpoint of the connected client.
    fn endpoint_problems(&self) -> String {
        // Never waits: a connect in progress has nothing to tell yet.
        let Some((_, client)) = self.client.try_lock().ok().and_then(|slot| slot.clone()) else {
            return String::new();
        };
        client
            .endpoint_problems()
            .into_iter()
            .filter_map(|(url, problem)| problem.map(|p| format!("; {url}: {p}")))
            .collect()
    }

    /// [`SequencerGateway::find_receipt`] through the client.
    async fn find_receipt_once(
        &self,
        message_id: &str,
        sequenced_after: i64,
        max_sequencing_ts: i64,
    ) -> Result<Option<i64>, String> {
        let client = self.client().await?;
        // A time proof sequenced after the deadline: once its receipt is read, every
        // event of ours at or before the deadline has been seen.
        let proof_ts = client
            .send_time_proof()
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
            let mut stream = client
                .subscribe(from)
                .map_err(|e| format!("subscribe: {}", describe_client_error(&e)))?;
            loop {
                let event = match stream.next().await {
                    Some(Ok(event)) => event,
                    // Events at the start of our stream are pruned (we acknowledged them):
                    // start at the oldest one kept. Ours is later than every acknowledged
                    // one (nothing after it was sent before it is settled).
                    Some(Err(e)) if oldest_retained(&e).is_some_and(|o| o > from) => {
                        from = oldest_retained(&e).unwrap_or(from);
                        pruned = true;
                        continue 'subscribe;
                    }
                    Some(Err(e)) => {
                        return Err(format!("subscription: {}", describe_client_error(&e)));
                    }
                    None => {
                        return Err("subscription ended before the time proof's receipt".into());
                    }
                };
                if std::mem::take(&mut pruned)
                    && event.event.previous_timestamp_micros > sequenced_after
                {
                    // The domain manager does not hold back the sequencer's pruning: with a
                    // `pruning.retention` shorter than the outage, the receipt may be gone.
                    return Err(format!(
                        "our event stream is pruned up to {} (past {sequenced_after}, before \
                         which {message_id} cannot have been sequenced): whether it was \
                         sequenced cannot be told any more; the sequencer's \
                         `pruning.retention` is shorter than the outage",
                        event.event.previous_timestamp_micros
                    ));
                }
                let ts = event.content.timestamp_micros;
                if event.event.message_id == message_id {
                    return Ok(Some(ts));
                }
                if ts >= proof_ts {
                    tracing::info!(
                        message_id,
                        from_counter = from,
                        up_to_counter = event.event.counter,
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
        let lookup = self.find_receipt_once(message_id, sequenced_after, max_sequencing_ts);
        let reason = match tokio::time::timeout_at(deadline, lookup).await {
            Ok(Ok(found)) => return Ok(found),
            Ok(Err(reason)) => reason,
            Err(_) => "timed out".to_owned(),
        };
        tracing::warn!(message_id, %reason, "cannot read our own event stream");
        Err(DomainManagerError::SequencerUnavailable(format!(
            "cannot tell whether {message_id} was sequenced before its max sequencing time \
             passed (it stays pending): {reason}{}",
            self.endpoint_problems()
        )))
    }

    async fn domain_info(&self, i: usize) -> Result<DiscoveredSequencer, String> {
        let url = &self.endpoints[i].public_endpoint;
        let channel = connect_channel(url, self.tls_for(url), CONNECT_TIMEOUT)
            .await
            .map_err(|e| describe_client_error(&e))?;
        let mut client = SequencerServiceClient::with_interceptor(channel, TraceContextInterceptor);
        let info = client
            .get_domain_info(sequencer_pb::GetDomainInfoRequest {})
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
        let public_key = PublicKey::try_from(&key).map_err(|e| e.to_string())?;
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

    fn trust_sequencer_key(&self, key: &PublicKey) {
        let mut trusted = self
            .trusted_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if trusted.as_ref() != Some(key) {
            tracing::info!(sequencer_key = %key.fingerprint(), "trusting the registered sequencer key");
            *trusted = Some(key.clone());
        }
    }
}

/// The domain manager never reads its own event stream but to settle a refused resend;
/// acknowledging what it sent keeps it from holding back the sequencer's pruning. Best
/// effort, in the background.
fn acknowledge(client: &DomainClient, ts: i64) {
    let client = client.clone();
    tokio::spawn(async move {
        let result = tokio::time::timeout(Duration::from_secs(2), client.acknowledge(ts)).await;
        if let Ok(Err(e)) = result {
            tracing::debug!(error = %describe_client_error(&e), "acknowledgement failed");
        }
    });
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
