//! The writer: one task per instance that owns an instance index, assigns
//! partitioned timestamps, signs each event once, and group-commits batches
//! together with its watermark (one fsync per batch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain_backoff::{Backoff, BackoffConfig};
use domain_identity::{DomainId, MemberId, SignaturePurpose, SigningKeyPair, batch};
use domain_proto::sequencer::v1::SignedEventContent;
use domain_time::Timestamp;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::SequencerError;
use crate::metrics as m;
use crate::overload::{QueueBudget, QueueCharge, SUBMISSION_OVERHEAD, ShedReason};
use crate::store::{
    self, DedupKey, FaultHooks, InstanceClaim, NewEvent, NewRegistration, StoreError,
    WriterStatements, uuid_like::Owner,
};
use crate::timestamp::{PartitionedTimestampGenerator, clock};
use crate::topology::{PendingTopology, TopologyRow};

/// A validated submission waiting to be sequenced.
pub struct Submission {
    pub sender_id: i32,
    pub sender: String,
    pub message_id: String,
    /// Resolved recipient ids, sender included; `[BROADCAST_MEMBER_ID]` for a broadcast.
    pub recipients: Vec<i32>,
    pub submission: Vec<u8>,
    pub envelope_hashes: Vec<Vec<u8>>,
    pub time_proof: bool,
    pub max_sequencing_ts: Timestamp,
    /// Exclusive lower bound of the event's timestamp: the highest `registered_ts` of
    /// the sender and the named recipients (a member's stream starts strictly after it).
    pub not_before_ts: Timestamp,
    /// The sender's validated `traceparent` (see [`crate::service::accepted_trace_context`]).
    pub trace_context: Option<String>,
    /// Verified topology transactions (domain manager submissions only).
    pub topology: Vec<PendingTopology>,
    pub reply: oneshot::Sender<Result<SendOutcome, SequencerError>>,
    pub enqueued: Instant,
    /// Its share of the queue's byte budget, taken by [`WriterHandle::try_enqueue`] and
    /// released when the submission is dropped (answered, or failed with the queue).
    pub charge: Option<QueueCharge>,
}

impl Submission {
    /// Bytes the submission holds while queued, as charged to `writer.max-queue-bytes`.
    pub fn queued_bytes(&self) -> usize {
        self.submission.len()
            + self.message_id.len()
            + self.recipients.len() * 4
            + self.envelope_hashes.iter().map(Vec::len).sum::<usize>()
            + SUBMISSION_OVERHEAD
    }
}

impl WriteCommand {
    /// Bytes the command adds to a batch (`writer.max-batch-bytes`).
    fn batch_bytes(&self) -> usize {
        match self {
            WriteCommand::Submit(sub) => sub.submission.len(),
            WriteCommand::Register { .. } => 0,
        }
    }
}

/// Result of a successful send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    pub ts: Timestamp,
    pub deduplicated: bool,
}

pub enum WriteCommand {
    Submit(Submission),
    Register {
        member: MemberId,
        public_key: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<Timestamp, SequencerError>>,
    },
}

/// What the writer publishes about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterState {
    pub online: bool,
    pub index: Option<i16>,
    pub watermark: Timestamp,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub modulus: u16,
    pub max_batch: usize,
    /// A batch stops taking submissions once their bytes reach this.
    pub max_batch_bytes: usize,
    pub keepalive: Duration,
    pub commit_timeout: Duration,
    /// How often a writer inside a batch refreshes its heartbeat from a second
    /// connection (a quarter of `ha.offline-after`).
    pub batch_heartbeat: Duration,
    pub address: String,
    pub faults: FaultHooks,
    /// `writer.batch-signatures`: one signature per batch, or one per event.
    pub batch_signatures: bool,
}

/// Cheap handle used by the gRPC handlers.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteCommand>,
    state: watch::Receiver<WriterState>,
    budget: Arc<QueueBudget>,
}

impl WriterHandle {
    pub fn state(&self) -> WriterState {
        *self.state.borrow()
    }

    pub fn watch_state(&self) -> watch::Receiver<WriterState> {
        self.state.clone()
    }

    /// Queues a command; a queue that is full (by count, by bytes, or by the sender's
    /// share of the bytes) is an explicit, retryable overload: the command is refused at
    /// once rather than held in memory until there is room.
    pub fn try_enqueue(&self, mut cmd: WriteCommand) -> Result<(), SequencerError> {
        if !self.state.borrow().online {
            return Err(SequencerError::InstanceOffline(
                "writer is recovering".into(),
            ));
        }
        if let WriteCommand::Submit(sub) = &mut cmd {
            let charge = self
                .budget
                .try_charge(sub.sender_id, sub.queued_bytes())
                .map_err(ShedReason::shed)?;
            sub.charge = Some(charge);
        }
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ShedReason::QueueFull.shed(),
            mpsc::error::TrySendError::Closed(_) => {
                SequencerError::InstanceOffline("writer stopped".into())
            }
        })
    }

    /// Registers a member through the writer so its registration timestamp is
    /// covered by the watermark protocol like any event.
    ///
    /// Unlike a send, a registration waits for a queue slot instead of being shed, and is
    /// not charged to the byte budget: it is a few hundred bytes, comes from an operator
    /// (admin API, `bootstrap-members`, topology) or from an open-mode `Authenticate`, which
    /// `auth.open-registrations-per-second` already bounds, and failing it spuriously would
    /// make an operator or a new participant start over.
    pub async fn register(
        &self,
        member: MemberId,
        public_key: Option<Vec<u8>>,
    ) -> Result<Timestamp, SequencerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriteCommand::Register {
                member,
                public_key,
                reply,
            })
            .await
            .map_err(|_| SequencerError::InstanceOffline("writer stopped".into()))?;
        rx.await
            .map_err(|_| SequencerError::InstanceOffline("writer dropped the request".into()))?
    }
}

pub struct Writer {
    pub settings: WriterSettings,
    pub db: domain_storage::DatabaseConfig,
    pub domain: DomainId,
    pub key: Arc<SigningKeyPair>,
    /// Highest watermark another instance announced with an event batch.
    pub peer_event_watermark: watch::Receiver<Timestamp>,
    pub last_db_success: Arc<std::sync::atomic::AtomicI64>,
    /// Where a database that went back in time is reported.
    pub history: Arc<crate::history_guard::HistoryGuard>,
    /// Instance index and watermark of the last commit the database acknowledged to this
    /// process (claim, heartbeat or batch): checked when coming back online.
    pub committed: Option<InstanceClaim>,
}

pub fn channel(
    queue: usize,
    budget: Arc<QueueBudget>,
) -> (
    mpsc::Sender<WriteCommand>,
    mpsc::Receiver<WriteCommand>,
    watch::Sender<WriterState>,
    WriterHandle,
) {
    let (tx, rx) = mpsc::channel(queue);
    let (state_tx, state_rx) = watch::channel(WriterState::default());
    let handle = WriterHandle {
        tx: tx.clone(),
        state: state_rx,
        budget,
    };
    (tx, rx, state_tx, handle)
}

impl Writer {
    /// Runs until `shutdown`: connect, go online, write; on any failure go
    /// through recovery (a fresh online transition) before writing again.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<WriteCommand>,
        state: watch::Sender<WriterState>,
        shutdown: CancellationToken,
    ) {
        let owner = Owner::random();
        let mut backoff = Backoff::new(BackoffConfig::new(
            Duration::from_millis(50),
            Duration::from_secs(1),
        ));
        let mut preferred = None;
        while !shutdown.is_cancelled() {
            match self
                .run_online(&owner, &mut rx, &state, &shutdown, &mut preferred)
                .await
            {
                Ok(()) => break,
                Err(e @ StoreError::HistoryLost { .. }) => {
                    // Not recoverable in this process: its acknowledgements and live
                    // streams are ahead of the database. `run` stops the instance.
                    self.history.report(e.to_string());
                    break;
                }
                Err(e) => {
                    state.send_modify(|s| s.online = false);
                    metrics::gauge!(m::WRITER_ONLINE).set(0.0);
                    tracing::warn!(error = %e, "writer left online state; recovering");
                    // The cause goes to the senders too (e.g. the database is out of space).
                    let reason = format!("writer is recovering after: {e}");
                    fail_queued(&mut rx, || SequencerError::InstanceOffline(reason.clone()));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        state.send_modify(|s| s.online = false);
        fail_queued(&mut rx, || {
            SequencerError::InstanceOffline("sequencer is shutting down".into())
        });
    }

    async fn run_online(
        &mut self,
        owner: &Owner,
        rx: &mut mpsc::Receiver<WriteCommand>,
        state: &watch::Sender<WriterState>,
        shutdown: &CancellationToken,
        preferred: &mut Option<i16>,
    ) -> Result<(), StoreError> {
        let (mut client, conn_task) = domain_storage::dedicated_connection(&self.db)
            .await
            .map_err(|e| StoreError::Connect(e.to_string()))?;
        let _abort_conn = AbortOnDrop(conn_task);
        let stmts = WriterStatements::prepare(&client).await?;
        let claim = store::go_online_checked(
            &mut client,
            self.settings.modulus,
            owner.clone(),
            clock(),
            &self.settings.address,
            *preferred,
            self.committed,
        )
        .await?;
        self.committed = Some(claim);
        let InstanceClaim {
            index,
            watermark: floor,
        } = claim;
        *preferred = Some(index);
        let mut generator =
            PartitionedTimestampGenerator::new(index as u16, self.settings.modulus, floor);
        tracing::info!(
            instance = index,
            watermark = floor.as_micros(),
            "writer online"
        );
        self.mark_db_success();
        state.send_replace(WriterState {
            online: true,
            index: Some(index),
            watermark: floor,
        });
        metrics::gauge!(m::WRITER_ONLINE).set(1.0);
        metrics::gauge!(m::INSTANCE_INDEX).set(f64::from(index));
        let (busy_tx, busy_rx) = watch::channel(None);
        let _beacon = TaskOnDrop(tokio::spawn(batch_heartbeat(
            self.db.clone(),
            index,
            owner.clone(),
            busy_rx,
            self.settings.batch_heartbeat,
            self.settings.commit_timeout,
        )));

        let mut keepalive = tokio::time::interval(self.settings.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_write = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = store::go_offline(&client, index, owner).await;
                    return Ok(());
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    let batch = fill_batch(
                        cmd,
                        rx,
                        self.settings.max_batch,
                        self.settings.max_batch_bytes,
                    );
                    busy_tx.send_replace(Some(Instant::now()));
                    let written = self.write_batch(&mut client, &stmts, index, owner, &mut generator, batch, state).await;
                    busy_tx.send_replace(None);
                    written?;
                    last_write = Instant::now();
                }
                changed = self.peer_event_watermark.changed() => {
                    if changed.is_err() { continue; }
                    let peer = *self.peer_event_watermark.borrow_and_update();
                    // Readers wait for min(watermarks): overtake a peer's event batch at
                    // once instead of at the next keep-alive.
                    if peer >= generator.last() {
                        let wm = generator.next_above(clock(), peer);
                        self.heartbeat(&client, &stmts, index, owner, wm, state).await?;
                        last_write = Instant::now();
                    }
                }
                _ = keepalive.tick() => {
                    if last_write.elapsed() >= self.settings.keepalive {
                        let wm = generator.next(clock());
                        self.heartbeat(&client, &stmts, index, owner, wm, state).await?;
                        last_write = Instant::now();
                    }
                }
            }
        }
    }

    async fn heartbeat(
        &mut self,
        client: &tokio_postgres::Client,
        stmts: &WriterStatements,
        index: i16,
        owner: &Owner,
        wm: Timestamp,
        state: &watch::Sender<WriterState>,
    ) -> Result<(), StoreError> {
        match tokio::time::timeout(
            self.settings.commit_timeout,
            store::heartbeat(client, stmts, index, owner, wm),
        )
        .await
        {
            Ok(Ok(())) => {
                self.mark_db_success();
                self.committed = Some(InstanceClaim {
                    index,
                    watermark: wm,
                });
                state.send_modify(|s| s.watermark = wm);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Timeout(self.settings.commit_timeout)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_batch(
        &mut self,
        client: &mut tokio_postgres::Client,
        stmts: &WriterStatements,
        index: i16,
        owner: &Owner,
        generator: &mut PartitionedTimestampGenerator,
        batch: Vec<WriteCommand>,
        state: &watch::Sender<WriterState>,
    ) -> Result<(), StoreError> {
        let now = clock();
        let peer = *self.peer_event_watermark.borrow();
        let domain_id = self.domain.to_string();
        let mut events: Vec<NewEvent> = Vec::with_capacity(batch.len());
        // `None`: the same (sender, message id) came earlier in this batch.
        let mut pending: Vec<(Submission, Option<Timestamp>)> = Vec::with_capacity(batch.len());
        let mut registrations = Vec::new();
        let mut reg_replies = Vec::new();
        let mut seen = std::collections::HashMap::new();
        let mut expired: Vec<(Submission, Timestamp)> = Vec::new();
        let mut first = true;
        for cmd in batch {
            let floor = match &cmd {
                WriteCommand::Submit(sub) => sub.not_before_ts,
                WriteCommand::Register { .. } => Timestamp::from_micros(i64::MIN),
            };
            // The first timestamp overtakes the peers' event batches (readers wait for
            // min(watermarks)); every event lies above its members' registrations.
            let ts = generator.next_above(now, if first { peer.max(floor) } else { floor });
            first = false;
            match cmd {
                WriteCommand::Register {
                    member,
                    public_key,
                    reply,
                } => {
                    registrations.push(NewRegistration {
                        member,
                        public_key,
                        ts,
                    });
                    reg_replies.push(reply);
                }
                WriteCommand::Submit(mut sub) => {
                    if ts > sub.max_sequencing_ts {
                        // Answered after the batch: a retry of a message sequenced before
                        // learns its original timestamp, not that the deadline passed.
                        expired.push((sub, ts));
                        continue;
                    }
                    let key = (sub.sender_id, sub.message_id.clone());
                    if seen.contains_key(&key) {
                        // Same (sender, message id) twice in one batch: the second is a retry.
                        pending.push((sub, None));
                        continue;
                    }
                    seen.insert(key, ts);
                    let content = SignedEventContent {
                        domain_id: domain_id.clone(),
                        timestamp_micros: ts.as_micros(),
                        sender: sub.sender.clone(),
                        message_id_hash: Sha256::digest(sub.message_id.as_bytes()).to_vec(),
                        envelope_hashes: sub.envelope_hashes.clone(),
                        time_proof: sub.time_proof,
                    }
                    .encode_to_vec();
                    events.push(NewEvent {
                        ts,
                        sender: sub.sender_id,
                        message_id: sub.message_id.clone(),
                        recipients: sub.recipients.clone(),
                        // Moved, not copied: the bytes are not needed to answer the sender
                        // (its queue charge stays until then and covers them).
                        submission: std::mem::take(&mut sub.submission),
                        content,
                        // Signed below, once for the whole batch.
                        signature: Vec::new(),
                        max_sequencing_ts: sub.max_sequencing_ts,
                        trace_context: sub.trace_context.clone(),
                        // The effective time is computed inside the batch transaction
                        // from the stored topology (`store::commit_batch`).
                        topology: sub
                            .topology
                            .iter()
                            .map(|p| TopologyRow::new(p, ts))
                            .collect(),
                    });
                    pending.push((sub, Some(ts)));
                }
            }
        }
        // Dedup rows are locked in one global order so concurrent batches on
        // different instances cannot deadlock.
        events.sort_by(|a, b| (a.sender, &a.message_id).cmp(&(b.sender, &b.message_id)));
        if self.settings.batch_signatures {
            sign_batch(&self.key, &domain_id, &mut events)?;
        } else {
            sign_each(&self.key, &domain_id, &mut events)?;
        }
        let watermark = generator.last();
        metrics::histogram!(m::BATCH_SIZE).record(events.len() as f64);
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.settings.commit_timeout,
            store::commit_batch(
                client,
                stmts,
                index,
                owner,
                &events,
                &registrations,
                watermark,
                &domain_id,
                &self.settings.faults,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(StoreError::Timeout(self.settings.commit_timeout)));
        metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        let ret = match result {
            Ok(outcome) => {
                self.mark_db_success();
                self.committed = Some(InstanceClaim { index, watermark });
                state.send_modify(|s| s.watermark = watermark);
                let dups: std::collections::HashMap<DedupKey, Timestamp> = outcome
                    .duplicates
                    .into_iter()
                    .map(|d| ((d.sender, d.message_id), d.ts))
                    .collect();
                for (sub, ts) in pending {
                    let key = (sub.sender_id, sub.message_id.clone());
                    let result = if let Some(orig) = dups.get(&key) {
                        SendOutcome {
                            ts: *orig,
                            deduplicated: true,
                        }
                    } else if let Some(ts) = ts {
                        SendOutcome {
                            ts,
                            deduplicated: false,
                        }
                    } else {
                        match dups.get(&key).copied().or_else(|| seen.get(&key).copied()) {
                            Some(orig) => SendOutcome {
                                ts: orig,
                                deduplicated: true,
                            },
                            None => continue,
                        }
                    };
                    let outcome = if result.deduplicated {
                        "deduplicated"
                    } else {
                        "sequenced"
                    };
                    metrics::counter!(m::SENDS, "outcome" => outcome).increment(1);
                    metrics::histogram!(m::SEND_LATENCY)
                        .record(sub.enqueued.elapsed().as_secs_f64());
                    let _ = sub.reply.send(Ok(result));
                }
                for (registered, reply) in outcome.registered.into_iter().zip(reg_replies) {
                    let _ = reply.send(Ok(registered.registered_ts));
                }
                Ok(())
            }
            Err(e) => {
                // Fenced means the transaction rolled back: nothing was written and a
                // retry is safe. Any other failure may have committed: the sender must
                // retry with the same message id, which deduplication makes exactly-once.
                let fenced = matches!(e, StoreError::Fenced { .. });
                // The server refused a statement for lack of disk space: it rolled the
                // transaction back, so nothing was written; say so, retryably.
                let disk_full = match &e {
                    StoreError::Db(db)
                        if db.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL) =>
                    {
                        Some(format!(
                            "the database is out of disk space, nothing was written ({e}); \
                             retry with the same message id"
                        ))
                    }
                    _ => None,
                };
                for (sub, _) in pending {
                    metrics::counter!(m::SENDS, "outcome" => "failed").increment(1);
                    let err = if fenced {
                        SequencerError::InstanceOffline("instance was fenced; retry".into())
                    } else if let Some(reason) = &disk_full {
                        SequencerError::Database(reason.clone())
                    } else {
                        SequencerError::OutcomeUnknown
                    };
                    let _ = sub.reply.send(Err(err));
                }
                for reply in reg_replies {
                    let _ = reply.send(Err(SequencerError::OutcomeUnknown));
                }
                Err(e)
            }
        };
        if !expired.is_empty() {
            self.answer_expired(client, stmts, expired).await;
        }
        ret
    }

    /// Answers submissions whose max sequencing time passed before they got a timestamp:
    /// deduplicated with the original timestamp when the message was sequenced before,
    /// else `SEQ_MAX_SEQUENCING_TIME_EXCEEDED`.
    async fn answer_expired(
        &self,
        client: &tokio_postgres::Client,
        stmts: &WriterStatements,
        expired: Vec<(Submission, Timestamp)>,
    ) {
        let keys: Vec<DedupKey> = expired
            .iter()
            .map(|(s, _)| (s.sender_id, s.message_id.clone()))
            .collect();
        let found = tokio::time::timeout(
            self.settings.commit_timeout,
            store::sequenced_before(client, stmts, &keys),
        )
        .await
        .unwrap_or_else(|_| Err(StoreError::Timeout(self.settings.commit_timeout)));
        for (sub, ts) in expired {
            let key = (sub.sender_id, sub.message_id.clone());
            let answer = match &found {
                Ok(map) => match map.get(&key) {
                    Some(orig) => {
                        metrics::counter!(m::SENDS, "outcome" => "deduplicated").increment(1);
                        Ok(SendOutcome {
                            ts: *orig,
                            deduplicated: true,
                        })
                    }
                    None => {
                        metrics::counter!(m::SENDS, "outcome" => "max_sequencing_time_exceeded")
                            .increment(1);
                        Err(SequencerError::MaxSequencingTimeExceeded {
                            max_sequencing_time: sub.max_sequencing_ts,
                            now: ts,
                        })
                    }
                },
                // Cannot tell whether it was sequenced before: the retry (same id) will.
                Err(_) => Err(SequencerError::OutcomeUnknown),
            };
            let _ = sub.reply.send(answer);
        }
    }

    fn mark_db_success(&self) {
        self.last_db_success
            .store(clock().as_micros(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Group commit: after `first`, takes whatever queued up while the last batch committed,
/// so batches grow with load and latency stays low when idle; up to `max_batch` commands
/// and until their bytes reach `max_bytes`, so a batch of large submissions still commits
/// well within `writer.commit-timeout` (and PostgreSQL's 1 GiB message limit).
fn fill_batch(
    first: WriteCommand,
    rx: &mut mpsc::Receiver<WriteCommand>,
    max_batch: usize,
    max_bytes: usize,
) -> Vec<WriteCommand> {
    let mut bytes = first.batch_bytes();
    let mut batch = vec![first];
    while batch.len() < max_batch && bytes < max_bytes {
        match rx.try_recv() {
            Ok(c) => {
                bytes += c.batch_bytes();
                batch.push(c);
            }
            Err(_) => break,
        }
    }
    batch
}

fn fail_queued(rx: &mut mpsc::Receiver<WriteCommand>, err: impl Fn() -> SequencerError) {
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            WriteCommand::Submit(s) => {
                let _ = s.reply.send(Err(err()));
            }
            WriteCommand::Register { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
        }
    }
}

/// Keeps a writer that is inside a batch looking alive to its peers.
///
/// Peers mark an instance offline when its `heartbeat_at` is older than
/// `ha.offline-after` (1 s), but a batch may legitimately take up to
/// `writer.commit-timeout` (2 s): its watermark update is the batch's last statement, so
/// a slow (not stuck) batch got its instance fenced, and its retry, just as slow, again.
/// While a batch is in flight this task refreshes `heartbeat_at` (not the watermark) from
/// its own connection, but only until the batch has run for `commit-timeout`: a batch
/// stuck for longer stops beating and the peers fence it as before. A paused or
/// partitioned process stops this task too, so detection of those is unchanged.
async fn batch_heartbeat(
    db: domain_storage::DatabaseConfig,
    index: i16,
    owner: Owner,
    busy: watch::Receiver<Option<Instant>>,
    every: Duration,
    commit_timeout: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(tokio_postgres::Client, AbortOnDrop)> = None;
    loop {
        tick.tick().await;
        let Some(since) = *busy.borrow() else {
            continue;
        };
        if since.elapsed() >= commit_timeout {
            continue;
        }
        if conn.is_none() {
            match domain_storage::dedicated_connection(&db).await {
                Ok((client, task)) => {
                    let task = AbortOnDrop(task);
                    // Never queue behind the batch's own watermark update for long.
                    if client
                        .batch_execute(
                            "SET lock_timeout = '200ms'; SET statement_timeout = '500ms'",
                        )
                        .await
                        .is_ok()
                    {
                        conn = Some((client, task));
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "batch heartbeat cannot connect");
                    continue;
                }
            }
        }
        let Some((client, _)) = &conn else { continue };
        let beat = client
            .execute(
                "UPDATE seq_instances SET heartbeat_at = clock_timestamp()
                 WHERE instance_index = $1 AND owner = $2::text::uuid AND online",
                &[&index, &owner.0],
            )
            .await;
        if let Err(error) = beat {
            tracing::debug!(%error, "batch heartbeat failed");
            if client.is_closed() {
                conn = None;
            }
        }
    }
}

struct TaskOnDrop(tokio::task::JoinHandle<()>);

impl Drop for TaskOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Signs every event on its own (`writer.batch-signatures = false`): the form every
/// client verifies, including those that predate batch signatures.
fn sign_each(
    key: &SigningKeyPair,
    domain_id: &str,
    events: &mut [NewEvent],
) -> Result<(), StoreError> {
    for event in events {
        let signature = key
            .sign_with_domain_str(SignaturePurpose::SequencedEvent, domain_id, &event.content)
            .map_err(|e| StoreError::Internal(format!("cannot sign event: {e}")))?;
        event.signature = signature.to_bytes().to_vec();
    }
    Ok(())
}

/// Signs a batch of events once: the Merkle root of their contents, in `events`' order,
/// and stores with each event the signature and its inclusion proof
/// ([`crate::event_auth::stored_signature`]). Every event of a batch carries the same
/// signature, so a recipient verifies it once per batch (issue 17).
fn sign_batch(
    key: &SigningKeyPair,
    domain_id: &str,
    events: &mut [NewEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        // A batch of registrations only.
        return Ok(());
    }
    let contents: Vec<&[u8]> = events.iter().map(|e| e.content.as_slice()).collect();
    let (payload, proofs) = batch::prepare(&contents)
        .ok_or_else(|| StoreError::Internal("batch of more than 2^32 events".into()))?;
    let signature = key
        .sign_with_domain_str(SignaturePurpose::SequencedBatch, domain_id, &payload)
        .map_err(|e| StoreError::Internal(format!("cannot sign batch: {e}")))?;
    for (event, proof) in events.iter_mut().zip(proofs) {
        event.signature = crate::event_auth::stored_signature(&signature, proof);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                ts: Timestamp::from_micros(100 + i as i64),
                sender: 1,
                message_id: format!("m-{i}"),
                recipients: vec![1],
                submission: vec![],
                content: format!("content {i}").into_bytes(),
                signature: vec![],
                max_sequencing_ts: Timestamp::from_micros(1_000),
                trace_context: None,
                topology: vec![],
            })
            .collect()
    }

    /// Issue 17: with `writer.batch-signatures` every stored event carries the batch's one
    /// signature over leaf count || root and a proof from its content to that root; without
    /// it, each event is signed on its own, as every client (old ones too) verifies.
    #[test]
    fn events_are_signed_per_batch_or_each_on_its_own() {
        use crate::event_auth::EventAuth;
        use domain_proto::common::v1::SignaturePurpose as Proto;
        let key = SigningKeyPair::from_seed(&[8; 32]);
        let domain = "d::1220aa";

        let mut batch_signed = events(5);
        sign_batch(&key, domain, &mut batch_signed).expect("sign");
        let mut signatures = std::collections::HashSet::new();
        for (i, e) in batch_signed.iter().enumerate() {
            let auth = EventAuth::from_stored(e.signature.clone());
            assert_eq!(auth.purpose, Proto::SequencedBatch);
            let proof = auth.batch_proof.expect("a proof");
            assert_eq!((proof.leaf_index, proof.leaf_count), (i as u32, 5));
            let root = batch::root_from_path(
                batch::leaf_hash(&e.content),
                proof.leaf_index,
                proof.leaf_count,
                &proof.path,
            )
            .expect("the proof leads to a root");
            let sig = domain_identity::Signature::from_bytes(&auth.signature, *key.fingerprint())
                .expect("64 bytes");
            key.public_key()
                .verify_with_domain_str(
                    SignaturePurpose::SequencedBatch,
                    domain,
                    &batch::root_payload(5, &root),
                    &sig,
                )
                .expect("the batch signature verifies");
            signatures.insert(auth.signature);
        }
        assert_eq!(signatures.len(), 1, "one signature for the whole batch");

        let mut each_signed = events(3);
        sign_each(&key, domain, &mut each_signed).expect("sign");
        for e in &each_signed {
            let auth = EventAuth::from_stored(e.signature.clone());
            assert_eq!(auth.purpose, Proto::SequencedEvent);
            assert!(auth.batch_proof.is_none());
            let sig = domain_identity::Signature::from_bytes(&auth.signature, *key.fingerprint())
                .expect("64 bytes");
            key.public_key()
                .verify_with_domain_str(SignaturePurpose::SequencedEvent, domain, &e.content, &sig)
                .expect("the event's own signature verifies");
        }
    }

    fn submit(bytes: usize) -> WriteCommand {
        let (reply, _) = oneshot::channel();
        WriteCommand::Submit(Submission {
            sender_id: 1,
            sender: "PAR::a::1220".into(),
            message_id: format!("m-{bytes}"),
            recipients: vec![1],
            submission: vec![0; bytes],
            envelope_hashes: Vec::new(),
            time_proof: false,
            max_sequencing_ts: Timestamp::MAX,
            not_before_ts: Timestamp::EPOCH,
            trace_context: None,
            topology: Vec::new(),
            reply,
            enqueued: Instant::now(),
            charge: None,
        })
    }

    fn sizes(batch: &[WriteCommand]) -> Vec<usize> {
        batch.iter().map(WriteCommand::batch_bytes).collect()
    }

    /// Issue 11 item 3: a batch closes once its bytes reach `writer.max-batch-bytes` (it
    /// was closed by count only: 1,000 submissions of up to 1 MiB each), and always takes
    /// at least one submission, however large.
    #[tokio::test]
    async fn batch_closes_at_its_byte_budget_item_3() {
        let (tx, mut rx) = mpsc::channel(16);
        for b in [400, 400, 400, 400, 5000, 10, 10, 10] {
            assert!(tx.try_send(submit(b)).is_ok());
        }
        let mut next = |max_batch, max_bytes| {
            let first = rx.try_recv().expect("queued");
            sizes(&fill_batch(first, &mut rx, max_batch, max_bytes))
        };
        assert_eq!(
            next(1000, 1000),
            [400, 400, 400],
            "closes once 1000 is reached"
        );
        assert_eq!(
            next(1000, 1000),
            [400, 5000],
            "may end above the budget by one"
        );
        assert_eq!(next(2, 1000), [10, 10], "the count limit still applies");
        assert_eq!(next(1000, 1), [10], "always at least one");
    }
}
