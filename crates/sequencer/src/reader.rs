//! The shared reader: one per instance. It follows the safe watermark (woken
//! by LISTEN/NOTIFY, polling only as a fallback), reads every newly deliverable
//! event once, decodes it once, and publishes it to all local subscriptions, so
//! database reads do not grow with the number of subscribers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use domain_proto::sequencer::v1::{Envelope, SubmissionRequest};
use domain_time::Timestamp;
use prost::Message as _;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::event_auth::EventAuth;
use crate::history_guard::HistoryGuard;
use crate::metrics as m;
use crate::store::{self, BROADCAST_MEMBER_ID, StoredEvent};

/// An event decoded once for every subscriber of this instance.
#[derive(Debug)]
pub struct GlobalEvent {
    pub ts: Timestamp,
    pub sender: i32,
    pub message_id: String,
    pub recipients: Vec<i32>,
    pub envelopes: Vec<Envelope>,
    pub content: Vec<u8>,
    pub auth: EventAuth,
    /// The sender's `traceparent`, delivered to every recipient.
    pub trace_context: Option<String>,
}

impl GlobalEvent {
    pub fn from_stored(e: StoredEvent) -> Self {
        // Stored submissions were decoded and validated before they were written;
        // a decode failure here would mean a corrupted row, and an empty envelope
        // list keeps counters consistent while the signature check exposes it.
        let envelopes = SubmissionRequest::decode(e.submission.as_slice())
            .map(|s| s.envelopes)
            .unwrap_or_default();
        Self {
            ts: e.ts,
            sender: e.sender,
            message_id: e.message_id,
            recipients: e.recipients,
            envelopes,
            content: e.content,
            auth: EventAuth::from_stored(e.signature),
            trace_context: e.trace_context,
        }
    }

    /// Returns true when the event belongs to the member's stream.
    pub fn is_for(&self, member_id: i32, registered_ts: Timestamp) -> bool {
        if self.recipients.first() == Some(&BROADCAST_MEMBER_ID) {
            self.ts > registered_ts
        } else {
            self.recipients.contains(&member_id)
        }
    }
}

/// A contiguous slice of the global stream: every event in `(after, up_to]`.
#[derive(Debug)]
pub struct EventBatch {
    pub after: Timestamp,
    pub up_to: Timestamp,
    pub events: Vec<Arc<GlobalEvent>>,
}

/// How much of the live stream the feed keeps for subscribers that have not taken it yet.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    /// Most batches kept (`reader.feed-buffer`).
    pub batches: usize,
    /// Most bytes kept, by the stored size of the events (`reader.feed-bytes`).
    pub bytes: u64,
}

struct Slot {
    batch: Arc<EventBatch>,
    bytes: u64,
    /// Receivers this batch concerns (ascending ids), as of its publication.
    interested: Vec<u64>,
    /// Interested receivers that have not taken this batch yet.
    remaining: usize,
}

impl Slot {
    fn concerns(&self, receiver: u64) -> bool {
        self.interested.binary_search(&receiver).is_ok()
    }
}

/// One receiver's place in the feed.
struct ReceiverState {
    /// The member whose events it wants; `None` wants every batch.
    member: Option<i32>,
    /// Sequence number of the next batch it looks at.
    next: u64,
    /// A batch it had not taken was dropped to keep the feed in its limits.
    lagged: bool,
    /// Woken when a batch that concerns it is published, and on close.
    wake: Arc<tokio::sync::Notify>,
}

struct FeedState {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot>,
    bytes: u64,
    /// `up_to` of the last batch dropped from the front: every receiver that is behind
    /// `base` and not lagged has nothing to take below it.
    dropped_through: Timestamp,
    receivers: std::collections::BTreeMap<u64, ReceiverState>,
    /// Receiver ids by member, for the members receivers asked for.
    by_member: std::collections::HashMap<i32, Vec<u64>>,
    /// Receivers of every batch.
    everything: Vec<u64>,
    next_id: u64,
    closed: bool,
}

impl FeedState {
    /// Drops the front batches no receiver still has to take.
    fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| s.remaining == 0) {
            if let Some(slot) = self.slots.pop_front() {
                self.drop_front(slot);
            }
        }
    }

    fn drop_front(&mut self, slot: Slot) {
        self.bytes -= slot.bytes;
        self.dropped_through = self.dropped_through.max(slot.batch.up_to);
        let seq = self.base;
        self.base += 1;
        if slot.remaining > 0 {
            // Dropped to stay in the limits while some interested receivers had not taken
            // it: they must resume from the database.
            for id in &slot.interested {
                if let Some(r) = self.receivers.get_mut(id)
                    && r.next <= seq
                {
                    r.lagged = true;
                    r.wake.notify_one();
                }
            }
        }
    }

    /// The receivers a batch concerns: those of its recipients' members, every receiver
    /// for a broadcast, and the receivers of everything. Ascending, without duplicates.
    fn interested(&self, batch: &EventBatch) -> Vec<u64> {
        if batch
            .events
            .iter()
            .any(|e| e.recipients.first() == Some(&BROADCAST_MEMBER_ID))
        {
            return self.receivers.keys().copied().collect();
        }
        let mut ids = self.everything.clone();
        for e in &batch.events {
            for m in &e.recipients {
                if let Some(r) = self.by_member.get(m) {
                    ids.extend_from_slice(r);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The live feed: the batches the reader publishes, bounded in batches *and* bytes. A
/// receiver follows one member (or everything) and is woken only by batches that concern
/// it: with a thousand idle subscriptions, a batch for two members wakes two tasks, not a
/// thousand (issue 17). A batch stays only until every receiver it concerns has taken it;
/// when a slow receiver would make the feed keep more than its limits, the oldest batches
/// go and that receiver gets [`FeedError::Lagged`] (its subscription is cut and resumes
/// from the database), so the memory one instance holds for its subscribers does not grow
/// with their slowness.
pub struct Feed {
    state: std::sync::Mutex<FeedState>,
    limits: FeedLimits,
}

/// Why [`FeedReceiver::recv`] returned no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// Batches this receiver had not taken were dropped to keep the feed in its limits.
    Lagged,
    /// The reader stopped.
    Closed,
}

impl Feed {
    pub fn new(limits: FeedLimits) -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new(FeedState {
                base: 0,
                slots: VecDeque::new(),
                bytes: 0,
                dropped_through: Timestamp::EPOCH,
                receivers: std::collections::BTreeMap::new(),
                by_member: std::collections::HashMap::new(),
                everything: Vec::new(),
                next_id: 0,
                closed: false,
            }),
            limits: FeedLimits {
                batches: limits.batches.max(1),
                bytes: limits.bytes,
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        // The state stays consistent across a panic elsewhere (no user code runs under
        // the lock), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of every batch published from now on (the tests' view of the feed).
    #[cfg(test)]
    pub fn subscribe(self: &Arc<Self>) -> FeedReceiver {
        self.subscribe_for(None)
    }

    /// A receiver of the batches published from now on that hold events for `member_id`
    /// (its own or broadcasts); it skips the others without being woken.
    pub fn subscribe_member(self: &Arc<Self>, member_id: i32) -> FeedReceiver {
        self.subscribe_for(Some(member_id))
    }

    fn subscribe_for(self: &Arc<Self>, member: Option<i32>) -> FeedReceiver {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        let wake = Arc::new(tokio::sync::Notify::new());
        let next = st.base + st.slots.len() as u64;
        st.receivers.insert(
            id,
            ReceiverState {
                member,
                next,
                lagged: false,
                wake: wake.clone(),
            },
        );
        match member {
            Some(m) => st.by_member.entry(m).or_default().push(id),
            None => st.everything.push(id),
        }
        FeedReceiver {
            feed: self.clone(),
            id,
            wake,
            skipped_through: None,
        }
    }

    /// Publishes a batch of `bytes` (stored size) to the receivers it concerns.
    pub fn publish(&self, batch: Arc<EventBatch>, bytes: u64) {
        let mut st = self.lock();
        let interested = st.interested(&batch);
        let remaining = interested.len();
        for id in &interested {
            if let Some(r) = st.receivers.get(id) {
                r.wake.notify_one();
            }
        }
        st.slots.push_back(Slot {
            batch,
            bytes,
            interested,
            remaining,
        });
        st.bytes += bytes;
        // The newest batch always stays, however large: receivers that keep up need it.
        while st.slots.len() > 1
            && (st.slots.len() > self.limits.batches || st.bytes > self.limits.bytes)
        {
            if let Some(slot) = st.slots.pop_front() {
                st.drop_front(slot);
            }
        }
        // A batch nobody needs (no receiver, or none it concerns) goes at once.
        st.trim();
        metrics::gauge!(m::FEED_BYTES).set(st.bytes as f64);
    }

    /// Ends the feed: receivers get [`FeedError::Closed`] once they took what is left.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        for r in st.receivers.values() {
            r.wake.notify_one();
        }
    }

    /// Bytes currently kept for receivers.
    #[cfg(test)]
    pub fn buffered_bytes(&self) -> u64 {
        self.lock().bytes
    }
}

/// One subscriber's position in the [`Feed`].
pub struct FeedReceiver {
    feed: Arc<Feed>,
    id: u64,
    wake: Arc<tokio::sync::Notify>,
    /// `up_to` of the newest batch skipped since the last [`Self::take_skipped_through`]:
    /// batches that held nothing for this receiver's member.
    skipped_through: Option<Timestamp>,
}

impl FeedReceiver {
    /// The next batch that concerns this receiver, waiting for it if needed. Batches in
    /// between held nothing for it; [`Self::take_skipped_through`] says how far they went.
    pub async fn recv(&mut self) -> Result<Arc<EventBatch>, FeedError> {
        loop {
            {
                let mut st = self.feed.lock();
                let st = &mut *st;
                let Some(r) = st.receivers.get_mut(&self.id) else {
                    return Err(FeedError::Closed);
                };
                if r.lagged {
                    return Err(FeedError::Lagged);
                }
                if r.next < st.base {
                    // Everything below `base` that concerned us we took (or we would be
                    // lagged): the rest held nothing for us.
                    r.next = st.base;
                    self.skipped_through = Some(
                        self.skipped_through
                            .map_or(st.dropped_through, |t| t.max(st.dropped_through)),
                    );
                }
                while let Some(slot) = st.slots.get_mut((r.next - st.base) as usize) {
                    r.next += 1;
                    if slot.concerns(self.id) {
                        slot.remaining -= 1;
                        let batch = slot.batch.clone();
                        st.trim();
                        return Ok(batch);
                    }
                    let up_to = slot.batch.up_to;
                    self.skipped_through =
                        Some(self.skipped_through.map_or(up_to, |t| t.max(up_to)));
                }
                if st.closed {
                    return Err(FeedError::Closed);
                }
            }
            // A publish between the look above and this wait left a permit: not missed.
            self.wake.notified().await;
        }
    }

    /// How far the batches skipped since the last call went (none: `None`). They held no
    /// event for this receiver, so a subscriber's position may move past them.
    pub fn take_skipped_through(&mut self) -> Option<Timestamp> {
        self.skipped_through.take()
    }
}

impl Drop for FeedReceiver {
    fn drop(&mut self) {
        let mut st = self.feed.lock();
        let Some(r) = st.receivers.remove(&self.id) else {
            return;
        };
        match r.member {
            Some(m) => {
                if let Some(ids) = st.by_member.get_mut(&m) {
                    ids.retain(|i| *i != self.id);
                    if ids.is_empty() {
                        st.by_member.remove(&m);
                    }
                }
            }
            None => st.everything.retain(|i| *i != self.id),
        }
        let from = r.next.max(st.base);
        let start = (from - st.base) as usize;
        for slot in st.slots.iter_mut().skip(start) {
            if slot.concerns(self.id) {
                slot.remaining -= 1;
            }
        }
        st.trim();
    }
}

struct ReaderInner {
    position: Timestamp,
    /// Timestamp of the newest event published, checked to still exist after a read
    /// failure (the database may have failed over meanwhile).
    last_event: Option<Timestamp>,
    /// A read failed since the last check of `last_event`.
    verify_last_event: bool,
}

/// A `seq_watermark` notification, as the reader uses it: a hint of when reading is worth
/// a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// The instance committed (or came online at) this watermark.
    Watermark { index: i16, watermark: Timestamp },
    /// The instance went offline: it no longer holds the safe watermark back.
    Offline { index: i16 },
}

/// The online instances' watermarks, as of the last read plus the notifications since.
/// Only a hint: the read takes the safe watermark from the database, in the snapshot of
/// the events it returns. A stale hint costs a query (too high) or delays delivery to the
/// next poll (too low), never correctness.
#[derive(Debug, Default)]
struct Hints {
    online: std::collections::HashMap<i16, Timestamp>,
    /// Set by a read; until then every wake-up reads.
    known: bool,
}

impl Hints {
    fn apply(&mut self, a: Announcement) {
        match a {
            Announcement::Watermark { index, watermark } => {
                let w = self.online.entry(index).or_insert(watermark);
                *w = (*w).max(watermark);
            }
            Announcement::Offline { index } => {
                self.online.remove(&index);
            }
        }
    }

    /// Whether the safe watermark may have passed `position`.
    fn may_have_passed(&self, position: Timestamp) -> bool {
        !self.known || self.online.values().min().is_none_or(|m| *m > position)
    }
}

/// Handle shared between the reader task and subscriptions.
pub struct SharedReader {
    inner: Mutex<ReaderInner>,
    feed: Arc<Feed>,
    pub wake: Notify,
    started: tokio::sync::watch::Sender<bool>,
    hints: std::sync::Mutex<Hints>,
    touched: std::sync::Mutex<Touched>,
}

/// Members that received events this reader published since the checkpointer last looked
/// ([`SharedReader::take_touched`]), so it probes those instead of every member: its cost
/// then follows the events, not the number of registered members (issue 17).
#[derive(Debug, Default)]
pub struct Touched {
    pub members: std::collections::HashSet<i32>,
    /// A broadcast reached every member.
    pub broadcast: bool,
}

impl Touched {
    fn record(&mut self, events: &[Arc<GlobalEvent>]) {
        for e in events {
            if e.recipients.first() == Some(&BROADCAST_MEMBER_ID) {
                self.broadcast = true;
            } else if !self.broadcast {
                self.members.extend(e.recipients.iter().copied());
            }
        }
        if self.broadcast {
            // Every member is probed anyway; the set need not grow.
            self.members.clear();
        }
    }

    fn merge(&mut self, other: Touched) {
        self.broadcast |= other.broadcast;
        if self.broadcast {
            self.members.clear();
        } else {
            self.members.extend(other.members);
        }
    }
}

impl SharedReader {
    pub fn new(limits: FeedLimits) -> Arc<Self> {
        let (started, _) = tokio::sync::watch::channel(false);
        Arc::new(Self {
            inner: Mutex::new(ReaderInner {
                position: Timestamp::EPOCH,
                last_event: None,
                verify_last_event: false,
            }),
            feed: Feed::new(limits),
            wake: Notify::new(),
            started,
            hints: std::sync::Mutex::new(Hints::default()),
            touched: std::sync::Mutex::new(Touched::default()),
        })
    }

    /// The members touched since the last call (and forgets them).
    pub fn take_touched(&self) -> Touched {
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Gives back what [`Self::take_touched`] returned when it could not be used.
    pub fn restore_touched(&self, touched: Touched) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge(touched);
    }

    /// Follows a watermark notification, waking the reader only when the safe watermark
    /// may have moved past what it published: with two instances, half the notifications
    /// (a batch of one instance before the other overtakes it) cannot make anything
    /// deliverable, and each used to cost a query.
    pub fn announce(&self, a: Announcement) {
        self.hints_lock().apply(a);
        self.wake.notify_one();
    }

    /// Forgets the hints and wakes the reader: the next round reads whatever they said
    /// (after the notification connection was lost, or a payload that could not be
    /// followed).
    pub fn resync(&self) {
        self.hints_lock().known = false;
        self.wake.notify_one();
    }

    fn hints_lock(&self) -> std::sync::MutexGuard<'_, Hints> {
        // A plain map: consistent across a panic elsewhere, so a poisoned lock is usable.
        self.hints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to live batches. Returns the position from which live batches
    /// start: the caller must read everything up to it from the database.
    pub async fn subscribe(&self, member_id: i32) -> (Timestamp, FeedReceiver) {
        let mut started = self.started.subscribe();
        let _ = started.wait_for(|s| *s).await;
        let inner = self.inner.lock().await;
        (inner.position, self.feed.subscribe_member(member_id))
    }

    /// Runs the reader loop until shutdown.
    pub async fn run(
        self: Arc<Self>,
        pool: deadpool_postgres::Pool,
        poll_interval: Duration,
        page: ReadPage,
        history: Arc<HistoryGuard>,
        shutdown: CancellationToken,
    ) {
        self.run_inner(pool, poll_interval, page, &history, shutdown)
            .await;
        self.feed.close();
    }

    async fn run_inner(
        &self,
        pool: deadpool_postgres::Pool,
        poll_interval: Duration,
        page: ReadPage,
        history: &HistoryGuard,
        shutdown: CancellationToken,
    ) {
        // Start at the current safe watermark: subscriptions catch up from the
        // database themselves, the live feed only needs what comes next.
        loop {
            let start = match pool.get().await {
                Ok(c) => store::safe_watermark(&**c).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match start {
                Ok(p) => {
                    self.inner.lock().await.position = p;
                    self.started.send_replace(true);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "reader cannot read the safe watermark");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        // Held across rounds: taking it from the pool on every wake-up cost the pool's
        // validation query. Dropped after any failure, so the next round reconnects.
        let mut conn = None;
        loop {
            if let Err(error) = self.catch_up(&pool, &mut conn, page).await {
                conn = None;
                match error {
                    // Stop publishing: what follows would be counted on top of events the
                    // database no longer has. `run` stops the instance.
                    CatchUpError::WentBack { safe, position } => {
                        history.report(format!(
                            "the safe watermark is {safe} but this instance already delivered \
                             events up to {position}"
                        ));
                        return;
                    }
                    CatchUpError::EventGone { ts } => {
                        history.report(format!(
                            "the event at {ts}, the last this instance delivered, is no longer \
                             in the database (and not pruned)"
                        ));
                        return;
                    }
                    CatchUpError::Db(_) => {}
                }
                self.inner.lock().await.verify_last_event = true;
                tracing::warn!(%error, "reader failed to read events");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            // Fallback only: notifications normally wake us first.
            let poll = tokio::time::sleep(poll_interval);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut poll => break,
                    _ = self.wake.notified() => {
                        let position = self.inner.lock().await.position;
                        if self.hints_lock().may_have_passed(position) {
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn catch_up(
        &self,
        pool: &deadpool_postgres::Pool,
        conn: &mut Option<deadpool_postgres::Object>,
        page: ReadPage,
    ) -> Result<(), CatchUpError> {
        let client: &deadpool_postgres::Object = match conn {
            Some(c) => c,
            None => conn.insert(pool.get().await.map_err(|e| e.to_string())?),
        };
        // After a failure the database may be another server (a promoted standby): the
        // newest event delivered must still be there.
        let (verify, last_event) = {
            let inner = self.inner.lock().await;
            (inner.verify_last_event, inner.last_event)
        };
        if verify {
            if let Some(ts) = last_event
                && !store::event_retained_or_pruned(&***client, ts)
                    .await
                    .map_err(|e| e.to_string())?
            {
                return Err(CatchUpError::EventGone { ts });
            }
            self.inner.lock().await.verify_last_event = false;
        }
        loop {
            let position = self.inner.lock().await.position;
            let store::Deliverable {
                safe,
                online,
                page: read,
            } = store::read_deliverable(client, position, page.rows, page.bytes)
                .await
                .map_err(|e| e.to_string())?;
            {
                let mut hints = self.hints_lock();
                hints.online = online.into_iter().collect();
                hints.known = true;
            }
            if safe < position {
                // The safe watermark never decreases in a database that only moves forward
                // (instances come online above every watermark, offline ones leave the
                // minimum): the database lost commits this reader already published.
                return Err(CatchUpError::WentBack { safe, position });
            }
            if safe == position {
                return Ok(());
            }
            let full = read.truncated;
            let up_to = if full {
                read.events.last().map_or(safe, |e| e.ts)
            } else {
                safe
            };
            let bytes: u64 = read.events.iter().map(StoredEvent::page_bytes).sum();
            let events: Vec<Arc<GlobalEvent>> = read
                .events
                .into_iter()
                .map(|e| Arc::new(GlobalEvent::from_stored(e)))
                .collect();
            metrics::counter!(m::EVENTS_READ).increment(events.len() as u64);
            self.touched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(&events);
            let mut inner = self.inner.lock().await;
            if let Some(last) = events.last() {
                inner.last_event = Some(last.ts);
            }
            let batch = Arc::new(EventBatch {
                after: inner.position,
                up_to,
                events,
            });
            inner.position = up_to;
            self.feed.publish(batch, bytes);
            drop(inner);
            if !full {
                return Ok(());
            }
        }
    }
}

/// Why a catch-up round stopped.
#[derive(Debug)]
enum CatchUpError {
    /// A database error (retried).
    Db(String),
    /// The safe watermark is below what was already published.
    WentBack {
        safe: Timestamp,
        position: Timestamp,
    },
    /// The newest event published is gone (and not pruned).
    EventGone { ts: Timestamp },
}

impl From<String> for CatchUpError {
    fn from(e: String) -> Self {
        Self::Db(e)
    }
}

impl std::fmt::Display for CatchUpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Db(e) => f.write_str(e),
            Self::EventGone { ts } => write!(f, "published event {ts} is gone"),
            Self::WentBack { safe, position } => {
                write!(
                    f,
                    "safe watermark {safe} below the published position {position}"
                )
            }
        }
    }
}

/// Limits of one read query: rows, and bytes by the stored size of the events (a query
/// stops adding rows once the budget is reached, after at least one).
#[derive(Debug, Clone, Copy)]
pub struct ReadPage {
    pub rows: i64,
    pub bytes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event per entry of `recipients`, at timestamps `after + 1`, `after + 2`, ...
    fn events_to(after: i64, recipients: &[&[i32]]) -> Vec<Arc<GlobalEvent>> {
        (after + 1..)
            .zip(recipients)
            .map(|(ts, r)| {
                Arc::new(GlobalEvent {
                    ts: Timestamp::from_micros(ts),
                    sender: 1,
                    message_id: String::new(),
                    recipients: r.to_vec(),
                    envelopes: vec![],
                    content: vec![],
                    auth: EventAuth::from_stored(vec![]),
                    trace_context: None,
                })
            })
            .collect()
    }

    fn touched_by(recipients: &[&[i32]]) -> Touched {
        let events = events_to(0, recipients);
        let mut t = Touched::default();
        t.record(&events);
        t
    }

    #[test]
    fn touched_members_accumulate_until_taken_and_a_broadcast_means_everyone() {
        let t = touched_by(&[&[1, 2], &[2, 3]]);
        assert!(!t.broadcast);
        let mut ids: Vec<i32> = t.members.iter().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 2, 3]);

        let reader = SharedReader::new(FeedLimits {
            batches: 4,
            bytes: 1024,
        });
        reader.restore_touched(t);
        reader.restore_touched(touched_by(&[&[7]]));
        let taken = reader.take_touched();
        assert_eq!(taken.members.len(), 4);
        assert!(reader.take_touched().members.is_empty(), "taking forgets");

        let b = touched_by(&[&[1], &[BROADCAST_MEMBER_ID], &[5]]);
        assert!(b.broadcast);
        assert!(b.members.is_empty());
        let mut merged = touched_by(&[&[9]]);
        merged.merge(b);
        assert!(merged.broadcast && merged.members.is_empty());
    }

    fn batch(after: i64) -> Arc<EventBatch> {
        let after = Timestamp::from_micros(after);
        Arc::new(EventBatch {
            after,
            up_to: after + Duration::from_micros(1),
            events: Vec::new(),
        })
    }

    const LIMITS: FeedLimits = FeedLimits {
        batches: 100,
        bytes: 1000,
    };

    /// Issue 17: a wake-up reads only when the announced watermarks may have carried the
    /// safe watermark past the position; unknown hints always read.
    #[test]
    fn hints_skip_reads_that_cannot_deliver() {
        let t = Timestamp::from_micros;
        let mut h = Hints::default();
        assert!(h.may_have_passed(t(100)), "nothing read yet: read");
        h.known = true;
        h.online = [(0, t(100)), (1, t(90))].into_iter().collect();
        assert!(!h.may_have_passed(t(90)), "instance 1 holds it at 90");
        // Instance 0's next batch: still held back by instance 1.
        h.apply(Announcement::Watermark {
            index: 0,
            watermark: t(120),
        });
        assert!(!h.may_have_passed(t(90)));
        // Instance 1 overtakes: the minimum is now 120.
        h.apply(Announcement::Watermark {
            index: 1,
            watermark: t(121),
        });
        assert!(h.may_have_passed(t(90)));
        // A stale announcement never lowers a watermark.
        h.apply(Announcement::Watermark {
            index: 1,
            watermark: t(80),
        });
        assert!(h.may_have_passed(t(119)));
        // Instance 0 goes offline: instance 1 alone decides.
        h.apply(Announcement::Offline { index: 0 });
        assert!(h.may_have_passed(t(120)));
        assert!(!h.may_have_passed(t(121)));
        // Nobody online: the safe watermark is the highest stored one, so read.
        h.apply(Announcement::Offline { index: 1 });
        assert!(h.may_have_passed(t(1_000)));
    }

    /// Issue 11 item 3 (read side): the feed keeps at most its byte budget for a
    /// subscriber that does not take batches (plus the newest one), and that subscriber
    /// learns it lagged instead of silently missing batches.
    #[tokio::test]
    async fn feed_is_bounded_in_bytes_and_lags_the_slow_receiver_item_3() {
        let feed = Feed::new(LIMITS);
        let mut slow = feed.subscribe();
        let mut fast = feed.subscribe();
        for i in 0..10 {
            feed.publish(batch(i), 300);
            let b = fast.recv().await.expect("the fast receiver keeps up");
            assert_eq!(b.after.as_micros(), i);
            assert!(
                feed.buffered_bytes() <= LIMITS.bytes,
                "{} bytes kept after batch {i}",
                feed.buffered_bytes()
            );
        }
        // 1000 bytes hold the last 3 batches of 300.
        assert_eq!(feed.buffered_bytes(), 900);
        assert_eq!(
            slow.recv().await.map(|b| b.after.as_micros()),
            Err(FeedError::Lagged)
        );
        drop(slow);
        assert_eq!(
            feed.buffered_bytes(),
            0,
            "nobody needs the batches any more"
        );
    }

    /// The newest batch is kept even when it alone exceeds the budget, so receivers that
    /// keep up are never cut by one large batch; the batch limit applies too.
    #[tokio::test]
    async fn feed_keeps_the_newest_batch_and_applies_the_batch_limit() {
        let feed = Feed::new(FeedLimits {
            batches: 2,
            bytes: 1000,
        });
        let mut r = feed.subscribe();
        feed.publish(batch(0), 5000);
        assert_eq!(r.recv().await.map(|b| b.after.as_micros()), Ok(0));
        for i in 1..=3 {
            feed.publish(batch(i), 1);
        }
        assert_eq!(
            r.recv().await.map(|b| b.after.as_micros()),
            Err(FeedError::Lagged)
        );
        let mut r = feed.subscribe();
        feed.publish(batch(4), 1);
        feed.publish(batch(5), 1);
        assert_eq!(r.recv().await.map(|b| b.after.as_micros()), Ok(4));
        assert_eq!(r.recv().await.map(|b| b.after.as_micros()), Ok(5));
    }

    fn batch_for(after: i64, recipients: &[&[i32]]) -> Arc<EventBatch> {
        let after_ts = Timestamp::from_micros(after);
        Arc::new(EventBatch {
            after: after_ts,
            up_to: after_ts + Duration::from_micros(10),
            events: events_to(after, recipients),
        })
    }

    /// Not ready now: the receiver would wait (polled once, no clock involved).
    async fn waits(r: &mut FeedReceiver) -> bool {
        tokio::time::timeout(std::time::Duration::ZERO, r.recv())
            .await
            .is_err()
    }

    /// Issue 17 (subscriber curve): a member's receiver is woken only by batches holding
    /// its events or a broadcast; the batches it skipped are reported so its position can
    /// pass them, and their being dropped does not count as lagging.
    #[tokio::test]
    async fn a_member_receiver_takes_only_its_batches_and_broadcasts() {
        let feed = Feed::new(LIMITS);
        let mut one = feed.subscribe_member(1);
        let mut two = feed.subscribe_member(2);
        let mut idle = feed.subscribe_member(3);
        let mut all = feed.subscribe();

        feed.publish(batch_for(0, &[&[1, 9]]), 10);
        assert_eq!(one.recv().await.map(|b| b.after.as_micros()), Ok(0));
        assert!(waits(&mut two).await, "nothing for member 2 yet");
        assert!(waits(&mut idle).await);

        feed.publish(batch_for(10, &[&[2]]), 10);
        assert_eq!(two.recv().await.map(|b| b.after.as_micros()), Ok(10));
        assert_eq!(
            two.take_skipped_through(),
            Some(Timestamp::from_micros(10)),
            "member 2 passed the first batch (up to 10) without taking it"
        );
        assert_eq!(two.take_skipped_through(), None);

        // The receiver of everything takes both.
        assert_eq!(all.recv().await.map(|b| b.after.as_micros()), Ok(0));
        assert_eq!(all.recv().await.map(|b| b.after.as_micros()), Ok(10));
        assert_eq!(all.take_skipped_through(), None);
        assert_eq!(
            feed.buffered_bytes(),
            0,
            "every concerned receiver took them"
        );

        // A broadcast concerns everyone, the idle member too.
        feed.publish(batch_for(20, &[&[BROADCAST_MEMBER_ID]]), 10);
        for r in [&mut one, &mut two, &mut idle, &mut all] {
            assert_eq!(r.recv().await.map(|b| b.after.as_micros()), Ok(20));
        }
        assert_eq!(
            idle.take_skipped_through(),
            Some(Timestamp::from_micros(20)),
            "the idle member passed batches 0 and 10, dropped before it looked"
        );
        drop(all);

        // Many batches for member 1 go past the limits while member 2 never looks: member 1
        // keeps up, member 2 is not lagged (none concerned it), an empty batch wakes nobody.
        for i in 0..20 {
            feed.publish(batch_for(30 + 10 * i, &[&[1]]), 300);
            assert_eq!(
                one.recv().await.map(|b| b.after.as_micros()),
                Ok(30 + 10 * i)
            );
        }
        feed.publish(batch_for(230, &[]), 0);
        assert!(waits(&mut one).await, "an empty batch concerns nobody");
        feed.publish(batch_for(240, &[&[2]]), 10);
        assert_eq!(two.recv().await.map(|b| b.after.as_micros()), Ok(240));
        assert_eq!(
            two.take_skipped_through(),
            Some(Timestamp::from_micros(240))
        );

        // Member 2 does not take its batches: once they are dropped, it is lagged, and
        // member 1, which takes its own, is not.
        for i in 0..5 {
            feed.publish(batch_for(250 + 10 * i, &[&[1], &[2]]), 300);
            assert!(one.recv().await.is_ok());
        }
        assert_eq!(
            two.recv().await.map(|b| b.after.as_micros()),
            Err(FeedError::Lagged)
        );
        feed.close();
        assert_eq!(one.recv().await.map(|_| ()), Err(FeedError::Closed));
    }

    /// Batches are kept only while a receiver still needs them, nothing is stored
    /// without receivers, a waiting receiver is woken by a publish, and close ends it.
    #[tokio::test]
    async fn feed_frees_taken_batches_and_wakes_waiters() {
        let feed = Feed::new(LIMITS);
        feed.publish(batch(0), 10);
        assert_eq!(feed.buffered_bytes(), 0);
        let mut r = feed.subscribe();
        let waiter = tokio::spawn(async move {
            let b = r.recv().await.map(|b| b.after.as_micros());
            (b, r)
        });
        tokio::task::yield_now().await;
        feed.publish(batch(1), 10);
        let (got, mut r) = waiter.await.expect("waiter");
        assert_eq!(got, Ok(1));
        assert_eq!(feed.buffered_bytes(), 0, "taken by its only receiver");
        feed.publish(batch(2), 10);
        feed.close();
        assert_eq!(r.recv().await.map(|b| b.after.as_micros()), Ok(2));
        assert_eq!(
            r.recv().await.map(|b| b.after.as_micros()),
            Err(FeedError::Closed)
        );
    }
}
