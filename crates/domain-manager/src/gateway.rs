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
    /// Sends the transaction with `serial` as a broadcast from the domain manager member
    /// with message id `topology-<serial>`, retrying across endpoints until `deadline`.
    fn send_topology<'a>(
        &'a self,
        serial: u64,
        signed: &'a pb::SignedTopologyTransaction,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Sequenced, DomainManagerError>>;

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
    ) -> Result<pb::SendResponse, String> {
        let conn = self.connection(i).await?;
        match conn.send(message_id, envelopes.to_vec(), 0).await {
            Ok(response) => Ok(response),
            Err(ClientError::Status(s)) if s.code() == tonic::Code::Unauthenticated => {
                conn.authenticate().await.map_err(|e| {
                    format!("re-authentication failed: {}", describe_client_error(&e))
                })?;
                conn.send(message_id, envelopes.to_vec(), 0)
                    .await
                    .map_err(|e| describe_client_error(&e))
            }
            Err(e) => Err(describe_client_error(&e)),
        }
    }

    async fn send_inner(
        &self,
        serial: u64,
        signed: &pb::SignedTopologyTransaction,
        deadline: Instant,
    ) -> Result<Sequenced, DomainManagerError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(DomainManagerError::SequencerUnavailable(
                "no sequencer endpoint configured".into(),
            ));
        }
        let message_id = domain_topology::message_id(serial);
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
            match tokio::time::timeout(limit, self.attempt(i, &message_id, &envelopes)).await {
                Ok(Ok(response)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    self.acknowledge(i, response.sequencing_timestamp_micros);
                    return Ok(Sequenced {
                        sequencing_ts: response.sequencing_timestamp_micros,
                        deduplicated: response.deduplicated,
                    });
                }
                Ok(Err(reason)) => {
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
        serial: u64,
        signed: &'a pb::SignedTopologyTransaction,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Sequenced, DomainManagerError>> {
        Box::pin(self.send_inner(serial, signed, deadline))
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
    let code = status
        .metadata()
        .get(crate::error::ERROR_CODE_METADATA)
        .and_then(|v| v.to_str().ok())
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
