//! The running node: one *session* per domain connection (connect with the failover
//! [`DomainClient`], load the persisted state, resume the subscription after the last
//! processed event, process events in batches, each batch one transaction), the response
//! outbox sender, and the ping round trip.
//!
//! A session ends on shutdown, on a new `ConnectMulti`, or on the first error; the next one
//! starts again from the database (after a backoff for errors), so memory never runs ahead
//! of what was committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use domain_backoff::{Backoff, BackoffConfig};
use domain_identity::{DomainId, Fingerprint, MemberId};
use domain_proto::confirmation::v1 as pb;
use domain_proto::sequencer::v1 as sequencer_pb;
use domain_runtime::ops::Readiness;
use domain_sequencer_client::{
    ClientError, ClientOptions, DomainClient, DomainPins, DomainTls, MemberIdentity,
};
use futures::FutureExt as _;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::ParticipantConfig;
use crate::connection::DomainConnection;
use crate::error::ParticipantError;
use crate::identity::Identity;
use crate::metrics as m;
use crate::protocol::{
    Changes, Event, Outcome, Outgoing, PING_MESSAGE_PREFIX, Processor, ProcessorSettings,
};
use crate::store::{self, StoreError};

/// Pauses between failed sessions: 200 ms doubling to 5 s (with jitter).
const BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_millis(200), Duration::from_secs(5));

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Client(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the subscription ended")]
    SubscriptionEnded,
    #[error("{0}")]
    Config(String),
}

impl SessionError {
    fn label(&self) -> &'static str {
        match self {
            SessionError::Client(_) => "client",
            SessionError::Store(_) => "database",
            SessionError::SubscriptionEnded => "subscription_ended",
            SessionError::Config(_) => "config",
        }
    }
}

fn client_error(e: &ClientError) -> SessionError {
    SessionError::Client(crate::connection::error_chain(e))
}

/// What the admin API reads about the live session.
#[derive(Clone)]
pub struct Live {
    pub client: DomainClient,
    pub alias: String,
    /// The mediator requests go to now.
    pub mediator: Option<String>,
    pub last_counter: i64,
}

/// The result of a ping.
#[derive(Debug, Clone)]
pub struct PingResult {
    pub outcome: Outcome,
    pub round_trip: Duration,
}

/// The running participant.
pub struct Node {
    pub identity: Identity,
    pub config: ParticipantConfig,
    pub pool: PgPool,
    connection: watch::Sender<Option<DomainConnection>>,
    live: RwLock<Option<Live>>,
    pings: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    readiness: Readiness,
    connect_lock: tokio::sync::Mutex<()>,
}

impl Node {
    pub fn new(
        identity: Identity,
        config: ParticipantConfig,
        pool: PgPool,
        connection: Option<DomainConnection>,
        readiness: Readiness,
    ) -> Arc<Self> {
        Arc::new(Self {
            identity,
            config,
            pool,
            connection: watch::Sender::new(connection),
            live: RwLock::new(None),
            pings: Mutex::new(HashMap::new()),
            readiness,
            connect_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The live session, if connected.
    pub fn live(&self) -> Option<Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_live(&self, live: Option<Live>) {
        let connected = live.is_some();
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
        self.readiness.set_ready(connected);
        ::metrics::gauge!(m::CONNECTED).set(if connected { 1.0 } else { 0.0 });
    }

    fn update_live(&self, f: impl FnOnce(&mut Live)) {
        if let Some(live) = self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            f(live);
        }
    }

    /// The persisted connection the node uses (or waits for).
    pub fn connection(&self) -> Option<DomainConnection> {
        self.connection.borrow().clone()
    }

    /// `ConnectMulti` on the running node: checks and persists like the offline command,
    /// then moves the node to the new connection. A database that already belongs to
    /// another domain is refused.
    pub async fn connect_multi(
        &self,
        alias: &str,
        endpoints: &[String],
        ca_pem: Option<&[u8]>,
    ) -> Result<DomainConnection, ParticipantError> {
        let _guard = self.connect_lock.lock().await;
        let (connection, _) = crate::connection::connect_multi(
            &self.config.data_dir,
            alias,
            endpoints,
            ca_pem,
            None,
            self.config.sequencer_timeout,
        )
        .await
        .map_err(|e| match e {
            crate::connection::ConnectError::Unreachable { .. }
            | crate::connection::ConnectError::Untrusted { .. }
            | crate::connection::ConnectError::DifferentDomains { .. } => {
                ParticipantError::ConnectFailed(e.to_string())
            }
            crate::connection::ConnectError::File(_) => ParticipantError::Internal(e.to_string()),
            other => ParticipantError::InvalidArgument(other.to_string()),
        })?;
        let owner = store::domain_of(&self.pool)
            .await
            .map_err(|e| ParticipantError::Database(e.to_string()))?;
        if let Some(owner) = owner
            && owner != connection.domain_id
        {
            return Err(ParticipantError::DomainMismatch(format!(
                "this participant's database belongs to domain {owner}; the endpoints serve {}",
                connection.domain_id
            )));
        }
        tracing::info!(alias, domain = %connection.domain_id, endpoints = ?endpoints, "domain connection updated");
        self.connection.send_replace(Some(connection.clone()));
        Ok(connection)
    }

    /// Runs a ping: a two-party confirmation request (submitter and informees: this
    /// participant and `target`, both confirming) through the mediator; waits for the
    /// verdict.
    pub async fn ping(
        &self,
        target: MemberId,
        timeout: Duration,
    ) -> Result<PingResult, ParticipantError> {
        let live = self
            .live()
            .ok_or_else(|| ParticipantError::NotConnected(self.not_connected_reason()))?;
        let mediator = live.mediator.clone().ok_or(ParticipantError::NoMediator)?;
        let me = self.identity.member.to_string();
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| ParticipantError::Internal(e.to_string()))?;
        let nonce = hex::encode(nonce);
        let payload = format!("ping {nonce}").into_bytes();
        let message_id = format!("{PING_MESSAGE_PREFIX}{nonce}");
        let mut parties = vec![me.clone()];
        if target.to_string() != me {
            parties.push(target.to_string());
        }
        let request = pb::ConfirmationRequest {
            submitter: me.clone(),
            informees: parties.clone(),
            confirming_participants: parties.clone(),
            root_hash: Sha256::digest(&payload).to_vec(),
            payload,
            mediator: mediator.clone(),
        };
        let mut recipients = vec![mediator];
        recipients.extend(parties);
        let envelope = sequencer_pb::Envelope {
            content: pb::DomainMessage {
                message: Some(pb::domain_message::Message::ConfirmationRequest(request)),
            }
            .encode_to_vec()
            .into(),
            recipients,
            broadcast: false,
        };
        let (tx, rx) = oneshot::channel();
        self.pings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(message_id.clone(), tx);
        let forget = || {
            self.pings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&message_id);
        };
        let started = Instant::now();
        let max_sequencing = domain_sequencer_client::domain_client::now_micros()
            + i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
        let sent = tokio::time::timeout(
            timeout,
            live.client
                .send(&message_id, vec![envelope], max_sequencing),
        )
        .await;
        let response = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                forget();
                ::metrics::counter!(m::PINGS, "outcome" => "send_failed").increment(1);
                return Err(ParticipantError::SendFailed(
                    crate::connection::error_chain(&e),
                ));
            }
            Err(_) => {
                forget();
                ::metrics::counter!(m::PINGS, "outcome" => "send_failed").increment(1);
                return Err(ParticipantError::SendFailed(format!(
                    "not sequenced within {timeout:?}"
                )));
            }
        };
        let remaining = timeout.saturating_sub(started.elapsed());
        let outcome = match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) | Err(_) => {
                forget();
                ::metrics::counter!(m::PINGS, "outcome" => "no_verdict").increment(1);
                return Err(ParticipantError::PingTimeout(timeout));
            }
        };
        let round_trip = started.elapsed();
        ::metrics::counter!(m::PINGS, "outcome" => outcome.label()).increment(1);
        ::metrics::histogram!(m::PING_RTT).record(round_trip.as_secs_f64());
        tracing::info!(
            target = %target,
            request_id = response.sequencing_timestamp_micros,
            outcome = outcome.label(),
            rtt_ms = round_trip.as_secs_f64() * 1000.0,
            "ping finished"
        );
        Ok(PingResult {
            outcome,
            round_trip,
        })
    }

    fn not_connected_reason(&self) -> String {
        match self.connection() {
            None => "run `participant connect-multi <alias> <url>... --ca <pem>` first".into(),
            Some(c) => format!(
                "connecting to domain {} ({}) via {}; see the participant log",
                c.alias,
                c.domain_id,
                c.endpoints.join(", ")
            ),
        }
    }

    fn complete_ping(&self, message_id: &str, outcome: &Outcome) {
        let waiter = self
            .pings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(message_id);
        if let Some(tx) = waiter {
            let _ = tx.send(outcome.clone());
        }
    }
}

/// Runs sessions until `shutdown`: waits for a connection, runs a session, restarts it
/// after errors (with backoff) or when `ConnectMulti` changes the connection.
pub async fn run_sessions(node: Arc<Node>, shutdown: CancellationToken) {
    let mut changes = node.connection.subscribe();
    let mut backoff = Backoff::new(BACKOFF);
    loop {
        let connection = changes.borrow_and_update().clone();
        let Some(connection) = connection else {
            tracing::info!(
                "no domain connection yet: waiting for `participant connect-multi` (or the ConnectMulti admin call)"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            continue;
        };
        let started = Instant::now();
        let cancel = shutdown.child_token();
        let result = tokio::select! {
            r = session(&node, connection.clone(), cancel.clone()) => Some(r),
            r = changes.changed() => {
                cancel.cancel();
                if r.is_err() { return }
                None
            }
        };
        node.set_live(None);
        if shutdown.is_cancelled() {
            return;
        }
        match result {
            None => {
                tracing::info!("connection changed; starting a new session");
                backoff.reset();
                continue;
            }
            Some(Ok(())) => return,
            Some(Err(e)) => {
                ::metrics::counter!(m::SESSION_FAILURES, "reason" => e.label()).increment(1);
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(
                    alias = %connection.alias,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "domain session ended; retrying"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                    r = changes.changed() => if r.is_err() { return },
                }
            }
        }
    }
}

async fn session(
    node: &Arc<Node>,
    connection: DomainConnection,
    cancel: CancellationToken,
) -> Result<(), SessionError> {
    let domain_id = DomainId::parse(&connection.domain_id)
        .map_err(|e| SessionError::Config(format!("invalid domain id in the connection: {e}")))?;
    let tls = match crate::connection::connection_tls(&connection)
        .map_err(|e| SessionError::Config(e.to_string()))?
    {
        Some(config) => DomainTls::Config(config),
        None => DomainTls::Plaintext,
    };
    // The client never adopts another domain or sequencer key than the connection's: an
    // endpoint showing one is refused, even when it answers first.
    let pins = DomainPins {
        domain_id: Some(connection.domain_id.clone()),
        sequencer_key: match &connection.sequencer_key {
            Some(k) => Some(Fingerprint::parse(k).map_err(|e| {
                SessionError::Config(format!("invalid sequencer-key in the connection: {e}"))
            })?),
            None => None,
        },
    };
    let member = MemberIdentity {
        id: node.identity.member.clone(),
        key: node.identity.key.clone(),
    };
    let options = ClientOptions {
        call_timeout: node.config.sequencer_timeout.min(Duration::from_secs(2)),
        pins,
        ..ClientOptions::default()
    };
    let client = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = DomainClient::connect(&connection.alias, &connection.endpoints, tls, member, options) => {
            r.map_err(|e| client_error(&e))?
        }
    };
    if client.domain_id() != connection.domain_id {
        return Err(SessionError::Config(format!(
            "the endpoints now serve domain {}, but the connection is for {}; run connect-multi again",
            client.domain_id(),
            connection.domain_id
        )));
    }
    // Topology is verified against the namespace key (checked against the domain id by the
    // client). The sequencers know it once the domain manager has authenticated, which it
    // does before sending any topology; until then the session retries.
    let Some(namespace_key) = client.namespace_key().cloned() else {
        return Err(SessionError::Config(format!(
            "the sequencers of {} do not know the domain's namespace key yet (the domain \
             manager has not connected); topology could not be verified",
            connection.domain_id
        )));
    };
    let me = node.identity.member.to_string();
    store::claim(&node.pool, &me, &connection.domain_id).await?;
    let loaded = store::load(&node.pool, &connection.domain_id).await?;
    let mut processor = Processor::restore(
        ProcessorSettings {
            participant: node.identity.member.clone(),
            domain_id: domain_id.clone(),
            key: node.identity.key.clone(),
            policy: node.config.auto_confirm,
            mediator_hint: connection.mediator.clone(),
            namespace_key,
        },
        loaded.restored,
    );
    tracing::info!(
        alias = %connection.alias,
        domain = %connection.domain_id,
        last_counter = processor.last_counter(),
        pending = processor.pending_count(),
        outbox = loaded.outbox.len(),
        topology_transactions = processor.topology().len(),
        "connected; resuming after the last processed event"
    );

    // Child tasks end with the session.
    let tasks = cancel.child_token();
    let _stop_tasks = tasks.clone().drop_guard();
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
    for o in loaded.outbox {
        let _ = out_tx.send(o);
    }
    tokio::spawn(outbox_sender(
        client.clone(),
        node.pool.clone(),
        out_rx,
        tasks.clone(),
    ));
    tokio::spawn(endpoint_gauges(client.clone(), tasks.clone()));
    let mut subscription = match loaded.last_event {
        Some(last) => client.subscribe_after(last),
        None => client.subscribe(0),
    }
    .map_err(|e| client_error(&e))?;

    node.set_live(Some(Live {
        client: client.clone(),
        alias: connection.alias.clone(),
        mediator: processor.mediator_at(domain_sequencer_client::domain_client::now_micros()),
        last_counter: processor.last_counter(),
    }));
    ::metrics::gauge!(m::LAST_COUNTER).set(processor.last_counter() as f64);
    ::metrics::gauge!(m::PENDING).set(processor.pending_count() as f64);

    let max_batch = node.config.max_batch_events.max(1);
    let mut last_ack = Instant::now();
    let mut acked_ts = 0i64;
    // Also acknowledge on a timer: after the last event of a burst nothing else would
    // move the acknowledgement, and the unacknowledged tail would hold pruning back.
    let mut ack_tick = tokio::time::interval(node.config.acknowledge_interval);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            item = subscription.next() => item,
            _ = ack_tick.tick() => {
                // processor.last_ts() only covers committed events here: a failed commit
                // ends the session before this point is reached again.
                if processor.last_ts() > acked_ts {
                    last_ack = Instant::now();
                    acked_ts = processor.last_ts();
                    spawn_acknowledge(&client, acked_ts);
                }
                continue;
            }
        };
        let mut items = vec![first];
        while items.len() < max_batch {
            match subscription.next().now_or_never() {
                Some(item) => items.push(item),
                None => break,
            }
        }
        let mut changes = Changes::default();
        let mut end: Option<SessionError> = None;
        for item in items {
            match item {
                Some(Ok(verified)) => {
                    let event = Event::from_verified(&verified.event, &verified.content);
                    // Processed inside a span continuing the sender's trace; responses
                    // built here carry it on (see `current_trace_context`).
                    let span =
                        tracing::info_span!("participant_event", counter = verified.event.counter);
                    let ctx =
                        domain_runtime::telemetry::remote_span(&span, verified.trace_context());
                    span.in_scope(|| {
                        ctx.sync_scope(|| {
                            processor.process(&event, verified.event.encode_to_vec(), &mut changes)
                        })
                    });
                }
                Some(Err(e)) => {
                    end = Some(client_error(&e));
                    break;
                }
                None => {
                    end = Some(SessionError::SubscriptionEnded);
                    break;
                }
            }
        }
        if changes.events > 0 {
            store::commit(&node.pool, &changes).await?;
            after_commit(node, &processor, &changes, &out_tx);
            if processor.last_ts() > acked_ts
                && last_ack.elapsed() >= node.config.acknowledge_interval
            {
                last_ack = Instant::now();
                acked_ts = processor.last_ts();
                spawn_acknowledge(&client, acked_ts);
            }
        }
        if let Some(e) = end {
            return Err(e);
        }
    }
}

/// Acknowledges committed events in the background (a failure is retried with the next).
fn spawn_acknowledge(client: &DomainClient, ts: i64) {
    let client = client.clone();
    tokio::spawn(async move {
        match client.acknowledge(ts).await {
            Ok(()) => ::metrics::counter!(m::ACKNOWLEDGEMENTS, "result" => "accepted").increment(1),
            Err(e) => {
                ::metrics::counter!(m::ACKNOWLEDGEMENTS, "result" => "failed").increment(1);
                tracing::debug!(error = %e, "acknowledgement failed (retried with the next one)");
            }
        }
    });
}

fn after_commit(
    node: &Node,
    processor: &Processor,
    changes: &Changes,
    out_tx: &mpsc::UnboundedSender<Outgoing>,
) {
    ::metrics::counter!(m::EVENTS).increment(changes.events);
    ::metrics::gauge!(m::LAST_COUNTER).set(changes.last_counter as f64);
    ::metrics::gauge!(m::PENDING).set(processor.pending_count() as f64);
    ::metrics::counter!(m::COMMITTED).increment(changes.committed.len() as u64);
    for reason in &changes.ignored {
        ::metrics::counter!(m::IGNORED, "reason" => *reason).increment(1);
    }
    for o in &changes.outbox {
        let _ = out_tx.send(o.clone());
    }
    for d in &changes.decided {
        ::metrics::counter!(m::VERDICTS, "outcome" => d.outcome.label()).increment(1);
        if !d.message_id.is_empty() {
            node.complete_ping(&d.message_id, &d.outcome);
        }
    }
    let mediator = processor
        .mediator_at(domain_sequencer_client::domain_client::now_micros().max(processor.last_ts()));
    node.update_live(|live| {
        live.last_counter = changes.last_counter;
        live.mediator = mediator;
    });
}

/// Publishes which endpoint the subscription reads from (endpoint health is published by
/// the client library as `sequencer_client_endpoint_healthy`).
async fn endpoint_gauges(client: DomainClient, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tick.tick() => false,
        };
        let current = if stop {
            None
        } else {
            client.current_subscription_endpoint()
        };
        for (url, _) in client.endpoint_health() {
            let subscribed = current.as_deref() == Some(url.as_str());
            ::metrics::gauge!(m::SUBSCRIBED_ENDPOINT, "endpoint" => url).set(if subscribed {
                1.0
            } else {
                0.0
            });
        }
        if stop {
            return;
        }
    }
}

/// Sends outbox entries (each in its own task, so one slow send does not hold the others)
/// and removes them once sequenced or definitively refused.
async fn outbox_sender(
    client: DomainClient,
    pool: PgPool,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    cancel: CancellationToken,
) {
    loop {
        let outgoing = tokio::select! {
            _ = cancel.cancelled() => return,
            o = rx.recv() => match o { Some(o) => o, None => return },
        };
        let client = client.clone();
        let pool = pool.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let request = match sequencer_pb::SendRequest::decode(outgoing.send_request.as_slice())
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(message_id = %outgoing.message_id, error = %e, "undecodable outbox entry; dropping it");
                    let _ = store::outbox_done(&pool, &outgoing.message_id).await;
                    return;
                }
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = client.send_signed(request) => r,
            };
            let decision = if outgoing.approve {
                "approve"
            } else {
                "reject"
            };
            match result {
                Ok(receipt) => {
                    ::metrics::counter!(m::CONFIRMATIONS_SENT, "decision" => decision).increment(1);
                    tracing::debug!(
                        message_id = %outgoing.message_id,
                        decision,
                        sequenced_ts = receipt.response.sequencing_timestamp_micros,
                        deduplicated = receipt.response.deduplicated,
                        attempts = receipt.attempts,
                        "confirmation response sequenced"
                    );
                }
                Err(e) => {
                    let reason = match &e {
                        ClientError::Status(s) => domain_sequencer_client::retry::error_code(s)
                            .unwrap_or("refused")
                            .to_owned(),
                        _ => "unavailable".to_owned(),
                    };
                    ::metrics::counter!(m::CONFIRMATIONS_FAILED, "reason" => reason.clone())
                        .increment(1);
                    tracing::warn!(
                        message_id = %outgoing.message_id,
                        error = %crate::connection::error_chain(&e),
                        "confirmation response could not be sequenced; giving up"
                    );
                }
            }
            if let Err(e) = store::outbox_done(&pool, &outgoing.message_id).await {
                tracing::warn!(message_id = %outgoing.message_id, error = %e, "cannot clear the outbox entry (it is resent, deduplicated, at the next session)");
            }
        });
    }
}
