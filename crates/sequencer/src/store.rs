//! All SQL of the sequencer. Hot paths (batch commit, heartbeats, reads) go
//! through tokio-postgres; the schema lives in `migrations/sequencer/`.
//!
//! Ordering invariant (see docs/architecture.md): a writer's events and its
//! watermark advance commit in one transaction guarded by `owner` and `online`,
//! so every committed event of an instance is at or below its watermark, and
//! readers deliver only events at or below the safe watermark
//! (min over online instances). No event can ever commit below a position a
//! reader has already passed.

use std::time::Duration;

use domain_time::Timestamp;
use tokio_postgres::{Client, GenericClient, error::SqlState, types::ToSql};

/// Pseudo member id under which broadcast events are indexed.
pub const BROADCAST_MEMBER_ID: i32 = -1;

/// Failures of the sequencer store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // tokio-postgres prints a server error as just "db error": say what the server said.
    #[error("database error: {}", db_error_text(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool error: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The instance lost its index (marked offline or taken over): it must recover.
    #[error("instance {index} is fenced: marked offline or owned by another process")]
    Fenced { index: i16 },
    #[error("all {0} instance indexes are in use")]
    NoFreeIndex(u16),
    #[error("database operation timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("{0}")]
    Internal(String),
    /// The database no longer holds a commit this process saw acknowledged: it went back
    /// in time (an asynchronous standby promoted, a backup restored). Never retried.
    #[error(
        "SEQ_DATABASE_HISTORY_LOST: instance {index} committed watermark {committed} but the \
         database holds {}: acknowledged commits were lost (asynchronous standby promoted or \
         backup restored?)",
        .stored.map_or_else(|| "no row for it".to_string(), |w| format!("watermark {w}"))
    )]
    HistoryLost {
        index: i16,
        committed: Timestamp,
        stored: Option<Timestamp>,
    },
}

/// The server's message and SQLSTATE for a database error, else the client's text.
fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// Returns true when the error means the database could not be reached or answered.
    pub fn is_connection_error(&self) -> bool {
        match self {
            StoreError::Db(e) => e.is_closed() || e.code().is_none(),
            StoreError::Pool(_) | StoreError::Timeout(_) | StoreError::Connect(_) => true,
            _ => false,
        }
    }
}

/// A registered member as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub id: i32,
    pub member: String,
    pub public_key: Option<Vec<u8>>,
    pub enabled: bool,
    pub registered_ts: Timestamp,
    pub acknowledged_ts: Option<Timestamp>,
}

/// An event about to be written by a writer batch.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub ts: Timestamp,
    pub sender: i32,
    pub message_id: String,
    /// Member ids, sender included; `[BROADCAST_MEMBER_ID]` for a broadcast.
    pub recipients: Vec<i32>,
    pub submission: Vec<u8>,
    pub content: Vec<u8>,
    pub signature: Vec<u8>,
    pub max_sequencing_ts: Timestamp,
    /// The sender's W3C `traceparent` (version 00, 55 bytes), already validated; delivered back
    /// with the event so recipients join the sender's trace.
    pub trace_context: Option<String>,
    /// Topology transactions the event carries (domain manager only).
    pub topology: Vec<crate::topology::TopologyRow>,
}

/// A member registration sequenced inside a writer batch.
#[derive(Debug, Clone)]
pub struct NewRegistration {
    pub member: domain_identity::MemberId,
    pub public_key: Option<Vec<u8>>,
    pub ts: Timestamp,
}

/// A stored event as read back.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub ts: Timestamp,
    pub sender: i32,
    pub message_id: String,
    pub recipients: Vec<i32>,
    pub submission: Vec<u8>,
    pub content: Vec<u8>,
    pub signature: Vec<u8>,
    /// The sender's `traceparent`; NULL for events sequenced without one (or before 0004).
    pub trace_context: Option<String>,
}

impl StoredEvent {
    /// The bytes a read page is budgeted by: the stored byte columns, exactly as
    /// [`PAGE_BYTES_SQL`] counts them on the server.
    pub fn page_bytes(&self) -> u64 {
        (self.submission.len() + self.content.len() + self.signature.len()) as u64
    }
}

/// A page of events read under a row limit and a byte budget.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Whether the page stopped at one of its limits, i.e. more events may follow in the
    /// range read.
    pub truncated: bool,
}

impl EventPage {
    fn new(events: Vec<StoredEvent>, limit: i64, max_bytes: i64) -> Self {
        let bytes: u64 = events.iter().map(StoredEvent::page_bytes).sum();
        // A row is left out only once the rows before it reached the budget, so a page
        // that stayed below both limits read everything there was.
        let truncated = events.len() as i64 >= limit || bytes >= max_bytes.max(0) as u64;
        Self { events, truncated }
    }
}

/// What happened to each submission of a committed batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Submissions that were already sequenced, with the original timestamp.
    pub duplicates: Vec<SequencedBefore>,
    /// Registered (or re-enabled) members with their registration timestamp.
    pub registered: Vec<Registered>,
}

/// The deduplication key of a submission: its sender's member row id and its message id.
pub type DedupKey = (i32, String);

/// A submission found already sequenced (its deduplication row exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedBefore {
    pub sender: i32,
    pub message_id: String,
    /// When it was sequenced.
    pub ts: Timestamp,
}

/// A member registered (or re-enabled) by a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub member: domain_identity::MemberId,
    pub registered_ts: Timestamp,
}

/// An instance index held with the watermark it is (or was) online at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceClaim {
    pub index: i16,
    pub watermark: Timestamp,
}

/// A member's checkpoint: `counter` events of its stream lie at or below `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub counter: i64,
    pub ts: Timestamp,
}

/// A sequenced topology transaction as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTopology {
    pub sequenced_ts: Timestamp,
    pub effective_ts: Timestamp,
    /// The `SignedTopologyTransaction` bytes.
    pub signed: Vec<u8>,
}

/// One topology transaction applied to the member table by [`apply_due_topology`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedTopology {
    /// `participant_state`, `mediator`, `sequencer` or `domain_parameters`.
    pub kind: &'static str,
    /// The member it is about, if any.
    pub member: Option<String>,
    /// `enabled`, `disabled`, `superseded` or `recorded`.
    pub effect: &'static str,
}

/// What one [`apply_due_topology`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyPass {
    pub applied: Vec<AppliedTopology>,
    /// When the next unapplied transaction becomes effective.
    pub next_due: Option<Timestamp>,
}

/// A live token: the member it was issued to and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub member: String,
    pub expires_at: Timestamp,
}

/// One row of `seq_instances`.
#[derive(Debug, Clone)]
pub struct InstanceRow {
    pub index: i16,
    pub online: bool,
    pub watermark_ts: Timestamp,
    /// How far the watermark lies behind the database clock (negative when ahead).
    pub lag_micros: i64,
    pub address: Option<String>,
}

pub const WATERMARK_CHANNEL: &str = "seq_watermark";
pub const MEMBERS_CHANNEL: &str = "seq_members";
/// Notified when a batch sequenced topology transactions.
pub const TOPOLOGY_CHANNEL: &str = "seq_topology";
/// Advisory lock key under which instances apply due topology transactions.
pub(crate) const TOPOLOGY_APPLY_LOCK: i64 = domain_storage::locks::SEQ_TOPOLOGY_APPLY;

/// Claims a free instance index (random among those not online) and brings it
/// online above every existing watermark and the wall clock. Runs on the
/// writer's own connection so its backend pid is recorded for peers.
#[cfg(test)]
pub async fn go_online(
    client: &mut Client,
    modulus: u16,
    owner: uuid_like::Owner,
    clock: Timestamp,
    address: &str,
    preferred: Option<i16>,
) -> Result<InstanceClaim, StoreError> {
    go_online_checked(client, modulus, owner, clock, address, preferred, None).await
}

/// [`go_online`] for a process that already committed: `committed` is the instance index
/// and watermark of the last commit of this process the database acknowledged. A watermark
/// only ever rises (whoever owns the row), so finding that row below it means the database
/// lost acknowledged commits — it went back in time, e.g. an asynchronous standby was
/// promoted — and this fails with [`StoreError::HistoryLost`] without claiming anything.
pub async fn go_online_checked(
    client: &mut Client,
    modulus: u16,
    owner: uuid_like::Owner,
    clock: Timestamp,
    address: &str,
    preferred: Option<i16>,
    committed: Option<InstanceClaim>,
) -> Result<InstanceClaim, StoreError> {
    // A previous writer connection of this process (same owner) can have died on our side
    // only: after a client-side connection loss the server keeps its backend, idle in
    // transaction with our instance row and ROW EXCLUSIVE on the table, until its TCP
    // keepalive runs out (hours). The LOCK below would then time out on every attempt,
    // and a single instance has no peer to clear it. It is ours: end it first, waiting
    // up to 2 s for it to go. (Matched on database and role too, against pid reuse.)
    client
        .execute(
            "SELECT pg_terminate_backend(i.writer_pid, 2000) FROM seq_instances i
             JOIN pg_stat_activity a ON a.pid = i.writer_pid
             WHERE i.owner = $1::text::uuid AND i.writer_pid <> pg_backend_pid()
               AND a.datname = current_database() AND a.usename = current_user",
            &[&owner.0],
        )
        .await?;
    let tx = client.transaction().await?;
    // Serialises against every watermark update, so the max we read stays the max
    // until we are online (a reader can never have passed our first timestamp).
    tx.batch_execute(
        "SET LOCAL lock_timeout = '2s'; LOCK TABLE seq_instances IN SHARE ROW EXCLUSIVE MODE",
    )
    .await?;
    let rows = tx
        .query(
            "SELECT instance_index, online, watermark_ts, owner::text = $1 FROM seq_instances",
            &[&owner.0],
        )
        .await?;
    if let Some(InstanceClaim {
        index: committed_index,
        watermark: committed_wm,
    }) = committed
    {
        let stored = rows
            .iter()
            .find(|row| row.get::<_, i16>(0) == committed_index)
            .map(|row| row.get::<_, Timestamp>(2));
        if stored.is_none_or(|wm| wm < committed_wm) {
            return Err(StoreError::HistoryLost {
                index: committed_index,
                committed: committed_wm,
                stored,
            });
        }
    }
    let mut busy = std::collections::HashSet::new();
    let mut max_wm = Timestamp::EPOCH;
    for row in &rows {
        let idx: i16 = row.get(0);
        let online: bool = row.get(1);
        let wm: Timestamp = row.get(2);
        max_wm = max_wm.max(wm);
        // Our own rows (this process, before a recovery) are free to reclaim: the
        // new claim fences anything the old connection might still try to write.
        let ours: bool = row.get(3);
        if online && !ours {
            busy.insert(idx);
        }
    }
    let free: Vec<i16> = (0..modulus as i16).filter(|i| !busy.contains(i)).collect();
    let Some(first) = free.first().copied() else {
        return Err(StoreError::NoFreeIndex(modulus));
    };
    let index = match preferred {
        Some(p) if free.contains(&p) => p,
        _ => {
            let mut b = [0u8; 2];
            let _ = getrandom::fill(&mut b);
            let pick = usize::from(u16::from_le_bytes(b)) % free.len();
            free.get(pick).copied().unwrap_or(first)
        }
    };
    let watermark = max_wm.max(clock);
    // Release every other index this process held, so recoveries never leak online slots.
    tx.execute(
        "UPDATE seq_instances SET online = false WHERE owner = $1::text::uuid AND instance_index <> $2",
        &[&owner.0, &index],
    )
    .await?;
    tx.execute(
        "INSERT INTO seq_instances (instance_index, owner, online, watermark_ts, heartbeat_at, writer_pid, public_address)
         VALUES ($1, $2::text::uuid, true, $3, clock_timestamp(), pg_backend_pid(), $4)
         ON CONFLICT (instance_index) DO UPDATE SET owner = EXCLUDED.owner, online = true,
             watermark_ts = greatest(seq_instances.watermark_ts, EXCLUDED.watermark_ts),
             heartbeat_at = EXCLUDED.heartbeat_at, writer_pid = EXCLUDED.writer_pid,
             public_address = EXCLUDED.public_address",
        &[&index, &owner.0, &watermark, &address],
    )
    .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&WATERMARK_CHANNEL, &format!("{index}:{watermark}")],
    )
    .await?;
    tx.commit().await?;
    Ok(InstanceClaim { index, watermark })
}

/// Marks this instance offline (best effort, on shutdown) so peers stop waiting for it.
pub async fn go_offline(
    client: &Client,
    index: i16,
    owner: &uuid_like::Owner,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE seq_instances SET online = false WHERE instance_index = $1 AND owner = $2::text::uuid",
            &[&index, &owner.0],
        )
        .await?;
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&WATERMARK_CHANNEL, &format!("{index}:offline")],
        )
        .await?;
    Ok(())
}

/// Prepared statements of the writer connection.
pub struct WriterStatements {
    dedup: tokio_postgres::Statement,
    dedup_lookup: tokio_postgres::Statement,
    events: tokio_postgres::Statement,
    recipients: tokio_postgres::Statement,
    watermark: tokio_postgres::Statement,
    /// `seq_write_batch` (migration 0006): a batch of events in one round trip.
    write_batch: tokio_postgres::Statement,
}

/// SQLSTATE `seq_write_batch` raises for a fenced instance.
const FENCED_SQLSTATE: &str = "SQ001";

impl WriterStatements {
    pub async fn prepare(client: &Client) -> Result<Self, StoreError> {
        Ok(Self {
            dedup: client
                .prepare(
                    "INSERT INTO seq_dedup (sender, message_id, ts, max_sequencing_ts)
                     SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[], $4::bigint[])
                     ON CONFLICT (sender, message_id) DO UPDATE
                        SET ts = EXCLUDED.ts, max_sequencing_ts = EXCLUDED.max_sequencing_ts
                        WHERE seq_dedup.max_sequencing_ts < EXCLUDED.ts
                     RETURNING sender, message_id",
                )
                .await?,
            dedup_lookup: client
                .prepare(
                    "SELECT d.sender, d.message_id, d.ts FROM seq_dedup d
                     JOIN unnest($1::int[], $2::text[]) AS k(sender, message_id)
                       ON d.sender = k.sender AND d.message_id = k.message_id",
                )
                .await?,
            events: client
                .prepare(
                    "INSERT INTO seq_events (ts, instance_index, sender, message_id, recipients, submission, content, signature, trace_context)
                     SELECT t.ts, $2, t.sender, t.message_id, t.recipients::int[], t.submission, t.content, t.signature, t.trace_context
                     FROM unnest($1::bigint[], $3::int[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::bytea[], $9::text[])
                       AS t(ts, sender, message_id, recipients, submission, content, signature, trace_context)",
                )
                .await?,
            recipients: client
                .prepare("INSERT INTO seq_recipients (member_id, ts) SELECT * FROM unnest($1::int[], $2::bigint[])")
                .await?,
            watermark: client
                .prepare(
                    "WITH u AS (
                        UPDATE seq_instances SET watermark_ts = $1, heartbeat_at = clock_timestamp()
                        WHERE instance_index = $2 AND owner = $3::text::uuid AND online
                        RETURNING instance_index)
                     SELECT pg_notify('seq_watermark', $2::text || ':' || $1::text || ':' || $4::text) FROM u",
                )
                .await?,
            write_batch: client
                .prepare(
                    "SELECT dup_sender, dup_message_id, dup_ts FROM seq_write_batch(
                        $1, $2::text::uuid, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .await?,
        })
    }
}

/// Test-only fault injection: a pause right before the batch's COMMIT.
#[derive(Debug, Clone, Default)]
pub struct FaultHooks {
    pub delay_before_commit: Option<Duration>,
    /// A pause after the batch's watermark update, before COMMIT: the instance row and
    /// the table's ROW EXCLUSIVE lock are held meanwhile.
    pub delay_after_watermark: Option<Duration>,
}

/// Commits one writer batch: dedup, events, recipients, registrations and the
/// watermark advance in a single transaction (one fsync for the whole batch).
#[allow(clippy::too_many_arguments)]
pub async fn commit_batch(
    client: &mut Client,
    stmts: &WriterStatements,
    index: i16,
    owner: &uuid_like::Owner,
    events: &[NewEvent],
    registrations: &[NewRegistration],
    watermark: Timestamp,
    domain_id: &str,
    faults: &FaultHooks,
) -> Result<BatchOutcome, StoreError> {
    if registrations.is_empty() && events.iter().all(|e| e.topology.is_empty()) {
        return commit_events(client, stmts, index, owner, events, watermark, faults).await;
    }
    let tx = client.transaction().await?;
    let mut outcome = BatchOutcome::default();
    let mut fresh = std::collections::HashSet::new();
    if !events.is_empty() {
        // Keys are sorted by the caller so concurrent batches lock dedup rows in
        // one global order and cannot deadlock.
        let senders: Vec<i32> = events.iter().map(|e| e.sender).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
        let tss: Vec<Timestamp> = events.iter().map(|e| e.ts).collect();
        let msts: Vec<Timestamp> = events.iter().map(|e| e.max_sequencing_ts).collect();
        for row in tx
            .query(&stmts.dedup, &[&senders, &ids, &tss, &msts])
            .await?
        {
            let s: i32 = row.get(0);
            let m: String = row.get(1);
            fresh.insert((s, m));
        }
        if fresh.len() < events.len() {
            let dup: Vec<&NewEvent> = events
                .iter()
                .filter(|e| !fresh.contains(&(e.sender, e.message_id.clone())))
                .collect();
            let ds: Vec<i32> = dup.iter().map(|e| e.sender).collect();
            let di: Vec<&str> = dup.iter().map(|e| e.message_id.as_str()).collect();
            for row in tx.query(&stmts.dedup_lookup, &[&ds, &di]).await? {
                outcome.duplicates.push(SequencedBefore {
                    sender: row.get(0),
                    message_id: row.get(1),
                    ts: row.get(2),
                });
            }
        }
        let new: Vec<&NewEvent> = events
            .iter()
            .filter(|e| fresh.contains(&(e.sender, e.message_id.clone())))
            .collect();
        if !new.is_empty() {
            let ts: Vec<Timestamp> = new.iter().map(|e| e.ts).collect();
            let sender: Vec<i32> = new.iter().map(|e| e.sender).collect();
            let mid: Vec<&str> = new.iter().map(|e| e.message_id.as_str()).collect();
            let rec: Vec<String> = new
                .iter()
                .map(|e| int_array_literal(&e.recipients))
                .collect();
            let sub: Vec<&[u8]> = new.iter().map(|e| e.submission.as_slice()).collect();
            let con: Vec<&[u8]> = new.iter().map(|e| e.content.as_slice()).collect();
            let sig: Vec<&[u8]> = new.iter().map(|e| e.signature.as_slice()).collect();
            let trace: Vec<Option<&str>> = new.iter().map(|e| e.trace_context.as_deref()).collect();
            let params: [&(dyn ToSql + Sync); 9] =
                [&ts, &index, &sender, &mid, &rec, &sub, &con, &sig, &trace];
            tx.execute(&stmts.events, &params).await?;
            let mut rm = Vec::new();
            let mut rt = Vec::new();
            for e in &new {
                for r in &e.recipients {
                    rm.push(*r);
                    rt.push(e.ts);
                }
            }
            tx.execute(&stmts.recipients, &[&rm, &rt]).await?;
            // Effective times by the members' computation (`TopologyState::add`): the
            // change delay in force at the sequencing time, from the topology stored now
            // (this transaction's snapshot, not a cache that may not have reloaded yet) and
            // the transactions before it in this batch, in stream order. Only the domain
            // manager sends topology, one submission at a time, so every transaction
            // sequenced before this one has committed and is visible here.
            let mut rows: Vec<(Timestamp, usize, &crate::topology::TopologyRow)> = new
                .iter()
                .flat_map(|e| e.topology.iter().enumerate().map(|(i, r)| (e.ts, i, r)))
                .collect();
            rows.sort_by_key(|(ts, i, _)| (*ts, *i));
            let mut state = if rows.is_empty() {
                None
            } else {
                Some(crate::topology::load_state(&tx, domain_id).await?)
            };
            let any_topology = !rows.is_empty();
            for (_, _, row) in rows {
                let Some(effective_ts) = state
                    .as_mut()
                    .and_then(|s| s.add(row.sequenced_ts.as_micros(), row.tx.clone()))
                    .map(Timestamp::from_micros)
                else {
                    // A serial seen before (a replayed transaction under a new
                    // message id) is ignored, as every member ignores it.
                    continue;
                };
                tx.execute(
                    "INSERT INTO seq_topology (serial, sequenced_ts, effective_ts, kind, operation, member, permission, signed)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (serial) DO NOTHING",
                    &[
                        &row.serial,
                        &row.sequenced_ts,
                        &effective_ts,
                        &row.kind,
                        &row.operation,
                        &row.member,
                        &row.permission,
                        &row.signed,
                    ],
                )
                .await?;
            }
            if any_topology {
                tx.execute("SELECT pg_notify($1, 'sequenced')", &[&TOPOLOGY_CHANNEL])
                    .await?;
            }
        }
    }
    // Rows are locked in member order: two instances registering the same members in
    // opposite order would otherwise deadlock and lose both batches. Replies are
    // matched to `registrations` by position, so the results keep the caller's order.
    let mut order: Vec<usize> = (0..registrations.len()).collect();
    // By the member text, as the rows are keyed.
    order.sort_by_cached_key(|&i| registrations[i].member.to_string());
    let mut registered: Vec<Option<Registered>> = vec![None; registrations.len()];
    for &i in &order {
        let reg = &registrations[i];
        let row = tx
            .query_one(
                "INSERT INTO seq_members (member, public_key, registered_ts) VALUES ($1, $2, $3)
                 ON CONFLICT (member) DO UPDATE SET enabled = true,
                     public_key = coalesce(seq_members.public_key, EXCLUDED.public_key)
                 RETURNING id, registered_ts",
                &[&reg.member.to_string(), &reg.public_key, &reg.ts],
            )
            .await?;
        let id: i32 = row.get(0);
        let registered_ts: Timestamp = row.get(1);
        tx.execute(
            "INSERT INTO seq_checkpoints (member_id, counter, ts) VALUES ($1, -1, $2) ON CONFLICT DO NOTHING",
            &[&id, &registered_ts],
        )
        .await?;
        registered[i] = Some(Registered {
            member: reg.member.clone(),
            registered_ts,
        });
    }
    outcome.registered.extend(registered.into_iter().flatten());
    if !registrations.is_empty() {
        tx.execute("SELECT pg_notify($1, 'registered')", &[&MEMBERS_CHANNEL])
            .await?;
    }
    if let Some(delay) = faults.delay_before_commit {
        tokio::time::sleep(delay).await;
    }
    // A registration is announced like an event: peers overtake its timestamp at once,
    // so their next events to the new member land above its `registered_ts`.
    let kind = if events.is_empty() && registrations.is_empty() {
        "h"
    } else {
        "e"
    };
    let updated = tx
        .query(&stmts.watermark, &[&watermark, &index, &owner.0, &kind])
        .await?;
    if updated.is_empty() {
        // Dropping the transaction rolls it back: nothing of this batch is visible.
        return Err(StoreError::Fenced { index });
    }
    if let Some(delay) = faults.delay_after_watermark {
        tokio::time::sleep(delay).await;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// The common batch, events only (no registration, no topology transaction): one call of
/// `seq_write_batch`, one round trip and one commit (issue 17). The explicit transaction
/// around it exists only under fault injection.
async fn commit_events(
    client: &mut Client,
    stmts: &WriterStatements,
    index: i16,
    owner: &uuid_like::Owner,
    events: &[NewEvent],
    watermark: Timestamp,
    faults: &FaultHooks,
) -> Result<BatchOutcome, StoreError> {
    let ts: Vec<Timestamp> = events.iter().map(|e| e.ts).collect();
    let sender: Vec<i32> = events.iter().map(|e| e.sender).collect();
    let mid: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
    let mst: Vec<Timestamp> = events.iter().map(|e| e.max_sequencing_ts).collect();
    let rec: Vec<String> = events
        .iter()
        .map(|e| int_array_literal(&e.recipients))
        .collect();
    let sub: Vec<&[u8]> = events.iter().map(|e| e.submission.as_slice()).collect();
    let con: Vec<&[u8]> = events.iter().map(|e| e.content.as_slice()).collect();
    let sig: Vec<&[u8]> = events.iter().map(|e| e.signature.as_slice()).collect();
    let trace: Vec<Option<&str>> = events.iter().map(|e| e.trace_context.as_deref()).collect();
    // The pause before the watermark update runs inside the function, where the old
    // multi-statement batch paused: dedup rows held, the instance row not yet locked.
    let hold_ms = faults
        .delay_before_commit
        .map_or(0, |d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    let params: [&(dyn ToSql + Sync); 13] = [
        &index, &owner.0, &watermark, &ts, &sender, &mid, &mst, &rec, &sub, &con, &sig, &trace,
        &hold_ms,
    ];
    let rows = if faults.delay_before_commit.is_none() && faults.delay_after_watermark.is_none() {
        client.query(&stmts.write_batch, &params).await
    } else {
        // Under fault injection the batch keeps an explicit transaction, committed in a
        // round trip of its own: a process stopped during the pause then leaves it open
        // with its locks held, as a batch with registrations or topology still can, and
        // the fault tests cover what its peers do about that.
        let tx = client.transaction().await?;
        let rows = tx.query(&stmts.write_batch, &params).await;
        if rows.is_ok() {
            if let Some(delay) = faults.delay_after_watermark {
                tokio::time::sleep(delay).await;
            }
            tx.commit().await?;
        }
        rows
    };
    let rows = rows.map_err(|e| match e.code() {
        Some(code) if code.code() == FENCED_SQLSTATE => StoreError::Fenced { index },
        _ => StoreError::Db(e),
    })?;
    Ok(BatchOutcome {
        duplicates: rows
            .iter()
            .map(|row| SequencedBefore {
                sender: row.get(0),
                message_id: row.get(1),
                ts: row.get(2),
            })
            .collect(),
        registered: Vec::new(),
    })
}

/// Sequencing timestamps of the `(sender, message id)` pairs that were sequenced (their
/// deduplication rows exist).
pub async fn sequenced_before(
    client: &Client,
    stmts: &WriterStatements,
    keys: &[DedupKey],
) -> Result<std::collections::HashMap<DedupKey, Timestamp>, StoreError> {
    let senders: Vec<i32> = keys.iter().map(|k| k.0).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    Ok(client
        .query(&stmts.dedup_lookup, &[&senders, &ids])
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Advances the watermark without events (idle keep-alive).
pub async fn heartbeat(
    client: &Client,
    stmts: &WriterStatements,
    index: i16,
    owner: &uuid_like::Owner,
    watermark: Timestamp,
) -> Result<(), StoreError> {
    let rows = client
        .query(&stmts.watermark, &[&watermark, &index, &owner.0, &"h"])
        .await?;
    if rows.is_empty() {
        return Err(StoreError::Fenced { index });
    }
    Ok(())
}

/// Marks peers offline whose heartbeat is older than `offline_after` or whose writer's
/// database backend has disappeared (the process died). A peer
/// stuck inside a transaction holds its row lock; after `lock_timeout` we abort
/// its backend so the row can be marked. Returns the indexes marked offline.
pub async fn mark_lagging_offline(
    client: &mut impl GenericClientExt,
    own_index: i16,
    offline_after: Duration,
) -> Result<Vec<i16>, StoreError> {
    let secs = offline_after.as_secs_f64();
    match client.mark_offline(own_index, secs).await {
        Ok(v) => Ok(v),
        Err(StoreError::Db(e)) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            client.terminate_stuck(own_index, secs).await?;
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Which peers `mark_offline` marks (`$1` own index, `$2` offline-after in seconds).
///
/// Two ways a peer is known gone. Its heartbeat is stale (paused,
/// partitioned, stuck). Or its writer's backend no longer exists: every
/// online transition records the writer connection's pid in the same
/// transaction, and a process that died (SIGKILL, OOM, node loss) has its
/// connection closed by the kernel, so PostgreSQL drops the backend at once.
/// A writer whose backend is gone cannot commit anything, so readers need
/// not wait the full `offline-after` for it. A reused pid only delays
/// detection to the heartbeat rule.
const OFFLINE_CONDITION: &str = "online AND instance_index <> $1
     AND (heartbeat_at < clock_timestamp() - make_interval(secs => $2)
          OR (writer_pid IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = i.writer_pid)))";

/// The two statements of offline detection, implemented for pooled clients.
pub trait GenericClientExt {
    fn mark_offline(
        &mut self,
        own_index: i16,
        secs: f64,
    ) -> impl std::future::Future<Output = Result<Vec<i16>, StoreError>> + Send;
    fn terminate_stuck(
        &mut self,
        own_index: i16,
        secs: f64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl GenericClientExt for deadpool_postgres::Object {
    async fn mark_offline(&mut self, own_index: i16, secs: f64) -> Result<Vec<i16>, StoreError> {
        // Nearly every check finds nothing: one autocommit read then, instead of a
        // four-round-trip transaction (this runs every 100 ms on every instance).
        let probe = self
            .prepare_cached(&format!(
                "SELECT 1 FROM seq_instances i WHERE {OFFLINE_CONDITION} LIMIT 1"
            ))
            .await?;
        let suspect = self.query_opt(&probe, &[&own_index, &secs]).await?;
        if suspect.is_none() {
            return Ok(Vec::new());
        }
        let tx = self.transaction().await?;
        tx.batch_execute("SET LOCAL lock_timeout = '200ms'").await?;
        let rows = tx
            .query(
                &format!(
                    "UPDATE seq_instances i SET online = false WHERE {OFFLINE_CONDITION}
                     RETURNING instance_index, writer_pid, heartbeat_at"
                ),
                &[&own_index, &secs],
            )
            .await?;
        let marked: Vec<i16> = rows.iter().map(|r| r.get(0)).collect();
        for idx in &marked {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&WATERMARK_CHANNEL, &format!("{idx}:offline")],
            )
            .await?;
        }
        tx.commit().await?;
        // A peer that is alive but stalled (SIGSTOP, a long GC-like pause, a partition
        // the database has not noticed yet) may be stopped *inside* a batch transaction.
        // Its own instance row is only locked at the end of a batch, so marking it did not
        // wait; but the dedup rows it inserted stay locked, and a client retrying the same
        // message id on a live instance would block that instance's whole batch behind
        // them (seen in CI: survivors' writers timing out one after the other for 10 s).
        // So its writer backend is terminated: the stuck transaction aborts and its locks
        // go. The instance is offline already; when it resumes, it reconnects and goes
        // online again like after any fencing. Only a backend older than the peer's last
        // heartbeat can be its writer (a reused pid belongs to a later backend).
        for row in &rows {
            let idx: i16 = row.get(0);
            let Some(pid) = row.get::<_, Option<i32>>(1) else {
                continue;
            };
            let heartbeat: std::time::SystemTime = row.get(2);
            let terminated = self
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE pid = $1 AND backend_start < $2",
                    &[&pid, &heartbeat],
                )
                .await;
            match terminated {
                Ok(rows) if !rows.is_empty() => {
                    tracing::warn!(
                        instance = idx,
                        pid,
                        "terminated the writer backend of a peer marked offline"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(instance = idx, pid, %error, "cannot terminate the writer backend of a peer marked offline");
                }
            }
        }
        Ok(marked)
    }

    async fn terminate_stuck(&mut self, own_index: i16, secs: f64) -> Result<(), StoreError> {
        let rows = self
            .query(
                // Only a backend that existed before the instance's last heartbeat can
                // be its writer: a reused pid belongs to a backend started later.
                "SELECT i.instance_index, i.writer_pid, pg_terminate_backend(a.pid)
                 FROM seq_instances i JOIN pg_stat_activity a ON a.pid = i.writer_pid
                 WHERE i.online AND i.instance_index <> $1
                   AND a.backend_start < i.heartbeat_at
                   AND i.heartbeat_at < clock_timestamp() - make_interval(secs => $2)",
                &[&own_index, &secs],
            )
            .await?;
        for row in rows {
            let idx: i16 = row.get(0);
            let pid: i32 = row.get(1);
            tracing::warn!(
                instance = idx,
                pid,
                "aborted writer stuck inside a transaction"
            );
        }
        Ok(())
    }
}

/// Returns the safe watermark: readers may deliver every event at or below it.
pub async fn safe_watermark(client: &impl GenericClient) -> Result<Timestamp, StoreError> {
    let row = client
        .query_one(
            "SELECT coalesce(min(watermark_ts) FILTER (WHERE online), max(watermark_ts), 0)::bigint FROM seq_instances",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn list_instances(client: &impl GenericClient) -> Result<Vec<InstanceRow>, StoreError> {
    let rows = client
        .query(
            "SELECT instance_index, online, watermark_ts,
                    (extract(epoch FROM clock_timestamp()) * 1000000)::bigint - watermark_ts, public_address
             FROM seq_instances ORDER BY instance_index",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| InstanceRow {
            index: r.get(0),
            online: r.get(1),
            watermark_ts: r.get(2),
            lag_micros: r.get(3),
            address: r.get(4),
        })
        .collect())
}

const EVENT_COLUMNS: &str = "e.ts, e.sender, e.message_id, e.recipients, e.submission, e.content, e.signature, e.trace_context";

fn event_from_row(r: &tokio_postgres::Row) -> StoredEvent {
    event_from_row_at(r, 0)
}

/// An event whose [`EVENT_COLUMNS`] start at column `at`.
fn event_from_row_at(r: &tokio_postgres::Row, at: usize) -> StoredEvent {
    StoredEvent {
        ts: r.get(at),
        sender: r.get(at + 1),
        message_id: r.get(at + 2),
        recipients: r.get(at + 3),
        submission: r.get(at + 4),
        content: r.get(at + 5),
        signature: r.get(at + 6),
        trace_context: r.get(at + 7),
    }
}

/// The stored size of an event row (`e`) that a read page is budgeted by; see
/// [`StoredEvent::page_bytes`]. `octet_length` of a TOASTed value reads its header only.
const PAGE_BYTES_SQL: &str =
    "(octet_length(e.submission) + octet_length(e.content) + octet_length(e.signature))::bigint";

/// Wraps an ordered, limited event query (columns [`EVENT_COLUMNS`], ordered by `e.ts`) so
/// that it returns only the rows that start before `max_bytes` (parameter `$n`) is reached
/// by the rows before them: always at least one row, and a page's memory is bounded by the
/// budget plus one event rather than by `limit` times the largest event.
fn byte_budgeted(inner: &str, n: usize) -> String {
    format!(
        "SELECT ts, sender, message_id, recipients, submission, content, signature, trace_context FROM (
           SELECT p.*, coalesce(sum(p.page_bytes) OVER (ORDER BY p.ts ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
           FROM ({inner}) p) b
         WHERE b.before < ${n}::bigint ORDER BY b.ts"
    )
}

/// What the shared reader may deliver next: the safe watermark, the online instances'
/// watermarks and the first page of events in `(after, safe]`, all from one statement and
/// so one snapshot (issue 17: the reader used to take a pooled connection, which the pool
/// verified with a query, then prepare and run the watermark query and the page query,
/// five round trips and three transactions per wake-up).
#[derive(Debug)]
pub struct Deliverable {
    pub safe: Timestamp,
    /// `(instance_index, watermark_ts)` of every online instance.
    pub online: Vec<(i16, Timestamp)>,
    pub page: EventPage,
}

/// Reads [`Deliverable`] above `after`: at most `limit` events, and no more once
/// `max_bytes` is reached (at least one). Prepared once per connection.
pub async fn read_deliverable(
    client: &deadpool_postgres::Object,
    after: Timestamp,
    limit: i64,
    max_bytes: i64,
) -> Result<Deliverable, StoreError> {
    let events = byte_budgeted(
        &format!(
            "SELECT {EVENT_COLUMNS}, {PAGE_BYTES_SQL} AS page_bytes FROM seq_events e
             WHERE e.ts > $1 AND e.ts <= w.safe ORDER BY e.ts LIMIT $2"
        ),
        3,
    );
    let sql = format!(
        "WITH w AS (
           SELECT coalesce(min(watermark_ts) FILTER (WHERE online), max(watermark_ts), 0)::bigint AS safe,
                  coalesce(array_agg(instance_index) FILTER (WHERE online), '{{}}') AS idx,
                  coalesce(array_agg(watermark_ts) FILTER (WHERE online), '{{}}') AS wms
           FROM seq_instances)
         SELECT w.safe, w.idx, w.wms, p.* FROM w LEFT JOIN LATERAL ({events}) p ON true ORDER BY p.ts"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &[&after, &limit, &max_bytes]).await?;
    let Some(first) = rows.first() else {
        return Err(StoreError::Internal(
            "the deliverable read returned no row".into(),
        ));
    };
    let safe: Timestamp = first.get(0);
    let idx: Vec<i16> = first.get(1);
    let wms: Vec<Timestamp> = first.get(2);
    // A range without events is one row whose event columns are NULL.
    let events = rows
        .iter()
        .filter(|r| r.get::<_, Option<Timestamp>>(3).is_some())
        .map(|r| event_from_row_at(r, 3))
        .collect();
    Ok(Deliverable {
        safe,
        online: idx.into_iter().zip(wms).collect(),
        page: EventPage::new(events, limit, max_bytes),
    })
}

/// The member's event timestamps in `(after, up_to]`: its own recipient rows
/// merged with broadcasts after its registration, via two ordered index scans.
/// Below the lower bound `$6` only retained topology events count
/// ([`crate::pruning::BELOW_BOUND_RULE`]), so a half-finished prune is invisible.
const MEMBER_TS_UNION: &str =
    "(SELECT ts FROM seq_recipients WHERE member_id = $1 AND ts > $2 AND ts <= $3
       AND (ts > $6 OR ts IN (SELECT sequenced_ts FROM seq_topology)) ORDER BY ts LIMIT $4)
     UNION ALL
     (SELECT ts FROM seq_recipients WHERE member_id = -1 AND ts > greatest($2, $5) AND ts <= $3
       AND (ts > $6 OR ts IN (SELECT sequenced_ts FROM seq_topology)) ORDER BY ts LIMIT $4)";

/// Returns up to `limit` timestamps of the member's events in `(after, up_to]`.
pub async fn member_timestamps(
    client: &impl GenericClient,
    member_id: i32,
    registered_ts: Timestamp,
    after: Timestamp,
    up_to: Timestamp,
    limit: i64,
    lower_bound: Timestamp,
) -> Result<Vec<Timestamp>, StoreError> {
    let sql = format!("SELECT ts FROM ({MEMBER_TS_UNION}) u ORDER BY ts LIMIT $4");
    let rows = client
        .query(
            &sql,
            &[
                &member_id,
                &after,
                &up_to,
                &limit,
                &registered_ts,
                &lower_bound,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Returns the member's full events in `(after, up_to]`: at most `limit`, and no more
/// once `max_bytes` is reached (at least one).
#[allow(clippy::too_many_arguments)]
pub async fn member_events(
    client: &impl GenericClient,
    member_id: i32,
    registered_ts: Timestamp,
    after: Timestamp,
    up_to: Timestamp,
    limit: i64,
    lower_bound: Timestamp,
    max_bytes: i64,
) -> Result<EventPage, StoreError> {
    let sql = byte_budgeted(
        &format!(
            "SELECT {EVENT_COLUMNS}, {PAGE_BYTES_SQL} AS page_bytes
             FROM ({MEMBER_TS_UNION}) u JOIN seq_events e ON e.ts = u.ts ORDER BY e.ts LIMIT $4"
        ),
        7,
    );
    let rows = client
        .query(
            &sql,
            &[
                &member_id,
                &after,
                &up_to,
                &limit,
                &registered_ts,
                &lower_bound,
                &max_bytes,
            ],
        )
        .await?;
    Ok(EventPage::new(
        rows.iter().map(event_from_row).collect(),
        limit,
        max_bytes,
    ))
}

/// The member's newest checkpoint `(counter, ts)` at or below `ts`: how many of its events
/// lie at or below `ts` (its counter is the last of them).
pub async fn checkpoint_at_or_below(
    client: &impl GenericClient,
    member_id: i32,
    ts: Timestamp,
) -> Result<Option<Checkpoint>, StoreError> {
    let row = client
        .query_opt(
            "SELECT counter, ts FROM seq_checkpoints WHERE member_id = $1 AND ts <= $2 ORDER BY counter DESC LIMIT 1",
            &[&member_id, &ts],
        )
        .await?;
    Ok(row.map(|r| Checkpoint {
        counter: r.get(0),
        ts: r.get(1),
    }))
}

/// Returns the nearest checkpoint `(counter, ts)` strictly below `counter`.
pub async fn checkpoint_below(
    client: &impl GenericClient,
    member_id: i32,
    counter: i64,
) -> Result<Option<Checkpoint>, StoreError> {
    let row = client
        .query_opt(
            "SELECT counter, ts FROM seq_checkpoints WHERE member_id = $1 AND counter < $2 ORDER BY counter DESC LIMIT 1",
            &[&member_id, &counter],
        )
        .await?;
    Ok(row.map(|r| Checkpoint {
        counter: r.get(0),
        ts: r.get(1),
    }))
}

/// Writes checkpoints at `up_to` (a safe watermark) for every member with at
/// least `min_new` events since its last checkpoint. Deterministic, so several
/// instances may run it; an advisory lock keeps them from doing it at once.
///
/// `only` restricts the probe to those member ids (the ones that received events since the
/// last run, [`crate::reader::Touched`]); `None` probes every member. A member left out only
/// gets its checkpoint at a later run: checkpoints bound how far a resume scans, and each
/// one written is counted from the rows, whichever members are probed.
///
/// `None` when another instance is writing checkpoints right now (nothing was done).
pub async fn write_checkpoints(
    client: &mut deadpool_postgres::Object,
    up_to: Timestamp,
    min_new: i64,
    only: Option<&[i32]>,
) -> Result<Option<u64>, StoreError> {
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&domain_storage::locks::SEQ_CHECKPOINTS],
        )
        .await?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let rule = crate::pruning::BELOW_BOUND_RULE.replace("$L", "(SELECT ts FROM seq_lower_bound)");
    let n = match only {
        None => {
            tx.execute(
                &crate::pruning::checkpoints_sql(&rule, "$2", "true"),
                &[&up_to, &min_new],
            )
            .await?
        }
        Some([]) => 0,
        Some(ids) => {
            tx.execute(
                &crate::pruning::checkpoints_sql(&rule, "$2", "m.id = ANY($3)"),
                &[&up_to, &min_new, &ids],
            )
            .await?
        }
    };
    tx.commit().await?;
    Ok(Some(n))
}

pub async fn load_member(
    client: &impl GenericClient,
    member: &str,
) -> Result<Option<MemberRow>, StoreError> {
    let row = client
        .query_opt(
            "SELECT id, member, public_key, enabled, registered_ts, acknowledged_ts FROM seq_members WHERE member = $1",
            &[&member],
        )
        .await?;
    Ok(row.as_ref().map(member_from_row))
}

/// Maps a row of `SELECT id, member, public_key, enabled, registered_ts, acknowledged_ts`.
fn member_from_row(r: &tokio_postgres::Row) -> MemberRow {
    MemberRow {
        id: r.get(0),
        member: r.get(1),
        public_key: r.get(2),
        enabled: r.get(3),
        registered_ts: r.get(4),
        acknowledged_ts: r.get(5),
    }
}

pub async fn load_members(client: &impl GenericClient) -> Result<Vec<MemberRow>, StoreError> {
    let rows = client
        .query(
            "SELECT id, member, public_key, enabled, registered_ts, acknowledged_ts FROM seq_members",
            &[],
        )
        .await?;
    Ok(rows.iter().map(member_from_row).collect())
}

/// Binds a member's public key if none is bound yet; returns the bound key.
pub async fn bind_public_key(
    client: &impl GenericClient,
    member: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE seq_members SET public_key = coalesce(public_key, $2) WHERE member = $1 RETURNING public_key",
            &[&member, &key],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Disables a member, revokes its tokens and nonces, and tells every instance.
pub async fn disable_member(
    client: &mut deadpool_postgres::Object,
    member: &str,
) -> Result<bool, StoreError> {
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            "UPDATE seq_members SET enabled = false WHERE member = $1",
            &[&member],
        )
        .await?;
    tx.execute("DELETE FROM seq_tokens WHERE member = $1", &[&member])
        .await?;
    tx.execute("DELETE FROM seq_nonces WHERE member = $1", &[&member])
        .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&MEMBERS_CHANNEL, &format!("disabled:{member}")],
    )
    .await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// Every sequenced topology transaction, in serial order.
pub async fn load_topology(client: &impl GenericClient) -> Result<Vec<StoredTopology>, StoreError> {
    let rows = client
        .query(
            "SELECT sequenced_ts, effective_ts, signed FROM seq_topology ORDER BY serial",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredTopology {
            sequenced_ts: r.get(0),
            effective_ts: r.get(1),
            signed: r.get(2),
        })
        .collect())
}

/// Applies every unapplied topology transaction effective at or before `now`
/// to the member table, in (effective_ts, serial) order, and marks it applied.
/// Returns what was applied and the next due time.
pub async fn apply_due_topology(
    client: &mut deadpool_postgres::Object,
    now: Timestamp,
) -> Result<TopologyPass, StoreError> {
    use crate::topology::{MemberEffect, member_effect};
    const NEXT_DUE: &str = "SELECT min(effective_ts) FROM seq_topology WHERE NOT applied";
    let next_due: Option<Timestamp> = client.query_one(NEXT_DUE, &[]).await?.get(0);
    if next_due.is_none_or(|ts| ts > now) {
        return Ok(TopologyPass {
            applied: Vec::new(),
            next_due,
        });
    }
    let tx = client.transaction().await?;
    // Instances take turns, so two never apply an enable and a later disable
    // of one member in opposite orders.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TOPOLOGY_APPLY_LOCK])
        .await?;
    // The members' rule (`domain_topology::TopologyState`): per mapping, among the
    // transactions effective at a time, the highest serial wins. Effective times are not
    // monotonic in serials (a disable sequenced under a 10 s change delay can become
    // effective after a later enable sequenced once the delay was lowered to 0), so a due
    // row takes effect only if no effective row of the same mapping has a higher serial;
    // otherwise it is superseded and only marked applied.
    let rows = tx
        .query(
            "SELECT t.serial, t.effective_ts, t.kind, t.operation, t.member, t.permission, t.signed,
                    t.member IS NULL OR NOT EXISTS (
                        SELECT 1 FROM seq_topology u
                        WHERE u.kind = t.kind AND u.member = t.member
                          AND u.effective_ts <= $1 AND u.serial > t.serial) AS current
             FROM seq_topology t
             WHERE NOT t.applied AND t.effective_ts <= $1 ORDER BY t.effective_ts, t.serial",
            &[&now],
        )
        .await?;
    let mut applied = Vec::new();
    for r in &rows {
        let serial: i64 = r.get(0);
        let effective_ts: Timestamp = r.get(1);
        let kind: String = r.get(2);
        let operation: String = r.get(3);
        let member: Option<String> = r.get(4);
        let permission: Option<String> = r.get(5);
        let current: bool = r.get(7);
        let effect = if current {
            member_effect(&kind, &operation, permission.as_deref())
        } else {
            MemberEffect::None
        };
        let label = match effect {
            MemberEffect::Enable => "enabled",
            MemberEffect::Disable => "disabled",
            MemberEffect::None if !current => "superseded",
            MemberEffect::None => "recorded",
        };
        match (effect, &member) {
            (MemberEffect::Enable, Some(m)) => {
                // A new member's stream starts just before the domain's first
                // topology transaction, so it receives the topology history
                // (mediators, parameters, other participants) as broadcasts before
                // anything else: every member derives the same topology state from its
                // own stream. Pruning never deletes topology events, and below the
                // lower bound only they count (crate::pruning), so this holds however
                // much has been pruned. A member that was disabled before keeps its
                // registration (and its counters).
                // A key recorded with the allowlist entry (identity file) is bound now;
                // an already bound key is kept (it has the same fingerprint).
                let signed: Vec<u8> = r.get(6);
                let key = crate::topology::recorded_participant_key(&signed);
                let row = tx
                    .query_one(
                        "INSERT INTO seq_members (member, registered_ts, public_key)
                         VALUES ($1, least($2, (SELECT min(sequenced_ts) - 1 FROM seq_topology)), $3)
                         ON CONFLICT (member) DO UPDATE SET enabled = true,
                             public_key = coalesce(seq_members.public_key, EXCLUDED.public_key)
                         RETURNING id, registered_ts",
                        &[m, &effective_ts, &key],
                    )
                    .await?;
                let id: i32 = row.get(0);
                let registered_ts: Timestamp = row.get(1);
                tx.execute(
                    "INSERT INTO seq_checkpoints (member_id, counter, ts) VALUES ($1, -1, $2) ON CONFLICT DO NOTHING",
                    &[&id, &registered_ts],
                )
                .await?;
                tx.execute("SELECT pg_notify($1, 'registered')", &[&MEMBERS_CHANNEL])
                    .await?;
            }
            (MemberEffect::Disable, Some(m)) => {
                tx.execute(
                    "UPDATE seq_members SET enabled = false WHERE member = $1",
                    &[m],
                )
                .await?;
                tx.execute("DELETE FROM seq_tokens WHERE member = $1", &[m])
                    .await?;
                tx.execute("DELETE FROM seq_nonces WHERE member = $1", &[m])
                    .await?;
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[&MEMBERS_CHANNEL, &format!("disabled:{m}")],
                )
                .await?;
            }
            _ => {}
        }
        tx.execute(
            "UPDATE seq_topology SET applied = true WHERE serial = $1",
            &[&serial],
        )
        .await?;
        let kind: &'static str = match kind.as_str() {
            "participant_state" => "participant_state",
            "mediator" => "mediator",
            "sequencer" => "sequencer",
            _ => "domain_parameters",
        };
        applied.push(AppliedTopology {
            kind,
            member,
            effect: label,
        });
    }
    let next_due: Option<Timestamp> = tx.query_one(NEXT_DUE, &[]).await?.get(0);
    tx.commit().await?;
    Ok(TopologyPass { applied, next_due })
}

pub async fn insert_nonce(
    client: &impl GenericClient,
    nonce: &[u8],
    member: &str,
    public_key: &[u8],
    ttl: Duration,
) -> Result<Timestamp, StoreError> {
    let row = client
        .query_one(
            "INSERT INTO seq_nonces (nonce, member, public_key, expires_at)
             VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))
             RETURNING (extract(epoch FROM expires_at) * 1000000)::bigint",
            &[&nonce, &member, &public_key, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(row.get(0))
}

/// Consumes a nonce (single use). Returns the public key it was issued for,
/// or None when it is unknown, expired, already used or for another member.
pub async fn take_nonce(
    client: &impl GenericClient,
    nonce: &[u8],
    member: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = client
        .query_opt(
            "DELETE FROM seq_nonces WHERE nonce = $1 AND member = $2 RETURNING public_key, expires_at > clock_timestamp()",
            &[&nonce, &member],
        )
        .await?;
    Ok(row.and_then(|r| {
        if r.get::<_, bool>(1) {
            Some(r.get(0))
        } else {
            None
        }
    }))
}

pub async fn insert_token(
    client: &impl GenericClient,
    token_hash: &[u8],
    member: &str,
    ttl: Duration,
) -> Result<Timestamp, StoreError> {
    let row = client
        .query_one(
            "INSERT INTO seq_tokens (token_hash, member, expires_at)
             VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
             RETURNING (extract(epoch FROM expires_at) * 1000000)::bigint",
            &[&token_hash, &member, &ttl.as_secs_f64()],
        )
        .await?;
    Ok(row.get(0))
}

/// Returns the member and expiry of a live token.
pub async fn lookup_token(
    client: &impl GenericClient,
    token_hash: &[u8],
) -> Result<Option<TokenRow>, StoreError> {
    let row = client
        .query_opt(
            "SELECT member, (extract(epoch FROM expires_at) * 1000000)::bigint FROM seq_tokens
             WHERE token_hash = $1 AND expires_at > clock_timestamp()",
            &[&token_hash],
        )
        .await?;
    Ok(row.map(|r| TokenRow {
        member: r.get(0),
        expires_at: r.get(1),
    }))
}

/// Moves a member's acknowledgement forward (never backwards); returns the stored value.
pub async fn acknowledge(
    client: &impl GenericClient,
    member_id: i32,
    ts: Timestamp,
) -> Result<Timestamp, StoreError> {
    let row = client
        .query_opt(
            "UPDATE seq_members SET acknowledged_ts = greatest(coalesce(acknowledged_ts, 0), $2) WHERE id = $1
             RETURNING acknowledged_ts",
            &[&member_id, &ts],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<Timestamp>>(0))
        .unwrap_or(ts))
}

/// Whether the event at `ts` is still stored, or lies at or below the pruning bound (so
/// its absence is pruning's doing). One statement, so one snapshot for both.
pub async fn event_retained_or_pruned(
    client: &impl GenericClient,
    ts: Timestamp,
) -> Result<bool, StoreError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM seq_events WHERE ts = $1)
                    OR $1 <= (SELECT ts FROM seq_lower_bound)",
            &[&ts],
        )
        .await?
        .get(0))
}

pub async fn lower_bound(client: &impl GenericClient) -> Result<Timestamp, StoreError> {
    Ok(client
        .query_one("SELECT ts FROM seq_lower_bound", &[])
        .await?
        .get(0))
}

fn int_array_literal(v: &[i32]) -> String {
    let mut s = String::with_capacity(2 + v.len() * 4);
    s.push('{');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push('}');
    s
}

/// The owner token of a writer process (a random UUID in text form, so we need
/// no uuid crate; Postgres parses it).
pub mod uuid_like {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Owner(pub String);

    impl Owner {
        pub fn random() -> Self {
            let mut b = [0u8; 16];
            let _ = getrandom::fill(&mut b);
            b[6] = (b[6] & 0x0f) | 0x40;
            b[8] = (b[8] & 0x3f) | 0x80;
            let h = hex::encode(b);
            Owner(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_array_literal_formats() {
        assert_eq!(int_array_literal(&[]), "{}");
        assert_eq!(int_array_literal(&[1, -1, 30]), "{1,-1,30}");
    }

    #[test]
    fn owner_is_uuid_shaped() {
        let o = uuid_like::Owner::random();
        assert_eq!(o.0.len(), 36);
        assert_eq!(o.0.matches('-').count(), 4);
    }
}
