//! Recorded histories of fault scenarios and the checker of the domain's invariants
//! (issue 16): clients record every send with its outcome and every delivered event per
//! member; [`check`] verifies I1–I7 afterwards, from the record alone.
//!
//! | id | invariant                                                                   |
//! |----|-----------------------------------------------------------------------------|
//! | I1 | no acknowledged send is lost: delivered to every recorded recipient          |
//! | I2 | no duplicate delivery: one operation reaches a member at one counter only    |
//! | I3 | one order: an operation has one timestamp everywhere, counters follow time   |
//! | I4 | no fork: a (member, counter) never maps to two different events              |
//! | I5 | at most one writer per lease epoch (mediator, domain manager)                |
//! | I6 | an unknown outcome resolves to delivered-to-all or to nobody; a failed send is never delivered |
//! | I7 | bounded unavailability: the longest time without a successful send          |
//!
//! The checker is pure: it reads a [`History`] and reports every violation it finds, so its
//! own tests (below) feed it hand-made violating histories, one per invariant.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain_identity::MemberId;
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::{ClientError, DomainClient, SequencerConnection};
use sha2::{Digest as _, Sha256};

/// Prefix of every payload the recorder generates: `hist:<op>;` then padding.
const PAYLOAD_PREFIX: &[u8] = b"hist:";

/// How a send ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged with this sequencing timestamp (a deduplicated answer included).
    Ok { timestamp: i64 },
    /// Definitely not sequenced: refused for a reason no attempt could have passed
    /// (bad signature, unknown member, invalid request).
    Fail { error: String },
    /// The client cannot tell (timeout, connection lost, max sequencing time passed while
    /// retrying): sequenced at most once, possibly not at all.
    Unknown { error: String },
}

impl Outcome {
    /// Classifies a send result. Only statuses that the same request bytes would get from
    /// every instance on every attempt count as [`Outcome::Fail`]; everything else may
    /// have been sequenced by an earlier attempt whose answer was lost.
    pub fn of_send(result: &Result<pb::SendResponse, ClientError>) -> Self {
        match result {
            Ok(r) => Outcome::Ok {
                timestamp: r.sequencing_timestamp_micros,
            },
            Err(e @ ClientError::Status(st))
                if matches!(
                    st.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::NotFound
                ) =>
            {
                Outcome::Fail {
                    error: e.to_string(),
                }
            }
            Err(e) => Outcome::Unknown {
                error: e.to_string(),
            },
        }
    }
}

/// One send as invoked and (maybe) completed.
#[derive(Debug, Clone)]
pub struct Op {
    pub id: u64,
    pub sender: String,
    pub recipients: Vec<String>,
    /// Since the history started.
    pub invoked: Duration,
    pub completed: Option<Duration>,
    /// `None`: still pending when the history was taken (treated as unknown).
    pub outcome: Option<Outcome>,
}

/// One event as a member received it from one instance.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub member: String,
    /// The instance (endpoint) that delivered it.
    pub endpoint: String,
    /// Which subscription of the recorder delivered it (a resubscription counts as new).
    pub subscription: u64,
    pub counter: i64,
    pub timestamp: i64,
    pub previous_timestamp: i64,
    /// SHA-256 of the signed content: two deliveries are the same event iff equal.
    pub digest: [u8; 32],
    /// The recorder's operation the event carries, if any (topology events and time
    /// proofs carry none).
    pub op: Option<u64>,
    pub at: Duration,
}

/// A write observed under a lease epoch (I5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    pub resource: String,
    pub epoch: i64,
    pub holder: String,
}

/// Everything recorded in one scenario.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub deliveries: Vec<Delivery>,
    pub lease_writes: Vec<LeaseWrite>,
    /// Faults injected and healed, with when (for the report).
    pub marks: Vec<(Duration, String)>,
    /// Sends and deliveries made while `load_window` is open count for I7.
    pub load_window: Option<(Duration, Duration)>,
}

/// Records a history from many tasks at once.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<History>>,
    next_op: Arc<std::sync::atomic::AtomicU64>,
    next_subscription: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(History::default())),
            next_op: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            next_subscription: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Time since the recorder was created.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The message id to send operation `op` with.
    pub fn message_id(op: u64) -> String {
        format!("hist-{op}")
    }

    /// Envelope content carrying the operation id, padded to at least `size` bytes.
    pub fn payload(op: u64, size: usize) -> Vec<u8> {
        let mut p = format!("hist:{op};").into_bytes();
        if p.len() < size {
            p.resize(size, b'.');
        }
        p
    }

    /// The operation id a payload carries, if it is one of ours.
    pub fn op_of_payload(content: &[u8]) -> Option<u64> {
        let rest = content.strip_prefix(PAYLOAD_PREFIX)?;
        let end = rest.iter().position(|b| *b == b';')?;
        std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
    }

    /// A fresh subscription number for [`Self::deliver`].
    pub fn new_subscription(&self) -> u64 {
        self.next_subscription
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the start of a send; returns its operation id.
    pub fn invoke(&self, sender: &MemberId, recipients: &[MemberId]) -> u64 {
        let id = self
            .next_op
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let invoked = self.elapsed();
        self.with(|h| {
            h.ops.push(Op {
                id,
                sender: sender.to_string(),
                recipients: recipients.iter().map(|r| r.to_string()).collect(),
                invoked,
                completed: None,
                outcome: None,
            })
        });
        id
    }

    /// Records how operation `op` ended.
    pub fn complete(&self, op: u64, outcome: Outcome) {
        let at = self.elapsed();
        self.with(|h| {
            if let Some(o) = h.ops.iter_mut().rev().find(|o| o.id == op) {
                o.completed = Some(at);
                o.outcome = Some(outcome);
            }
        });
    }

    /// [`Self::complete`] with the outcome classified by [`Outcome::of_send`].
    pub fn complete_send(&self, op: u64, result: &Result<pb::SendResponse, ClientError>) {
        self.complete(op, Outcome::of_send(result));
    }

    /// Records an event delivered to `member` by `endpoint`.
    pub fn deliver(
        &self,
        member: &MemberId,
        endpoint: &str,
        subscription: u64,
        event: &pb::SequencedEvent,
    ) {
        let op = event
            .envelopes
            .iter()
            .filter_map(|d| d.envelope.as_ref())
            .find_map(|e| Self::op_of_payload(&e.content));
        let delivery = Delivery {
            member: member.to_string(),
            endpoint: endpoint.to_string(),
            subscription,
            counter: event.counter,
            timestamp: event.timestamp_micros,
            previous_timestamp: event.previous_timestamp_micros,
            digest: Sha256::digest(&event.content).into(),
            op,
            at: self.elapsed(),
        };
        self.with(|h| h.deliveries.push(delivery));
    }

    /// Records a write made by `holder` under `epoch` of the lease on `resource`.
    pub fn lease_write(&self, resource: &str, epoch: i64, holder: &str) {
        self.with(|h| {
            h.lease_writes.push(LeaseWrite {
                resource: resource.into(),
                epoch,
                holder: holder.into(),
            })
        });
    }

    /// Records a fault injected or healed (shown in the report).
    pub fn mark(&self, label: &str) {
        let at = self.elapsed();
        println!("[{:>7.3}s] {label}", at.as_secs_f64());
        self.with(|h| h.marks.push((at, label.to_string())));
    }

    /// Opens the load window (I7 measures unavailability inside it).
    pub fn load_started(&self) {
        let at = self.elapsed();
        self.with(|h| h.load_window = Some((at, at)));
    }

    /// Closes the load window.
    pub fn load_stopped(&self) {
        let at = self.elapsed();
        self.with(|h| {
            if let Some((s, _)) = h.load_window {
                h.load_window = Some((s, at));
            }
        });
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> History {
        self.with(|h| h.clone())
    }

    /// Acknowledged operations some recorded subscriber has not received yet.
    pub fn undelivered(&self, subscribers: &[MemberId]) -> usize {
        let subs: BTreeSet<String> = subscribers.iter().map(|m| m.to_string()).collect();
        self.with(|h| {
            let got: BTreeSet<(&str, u64)> = h
                .deliveries
                .iter()
                .filter_map(|d| Some((d.member.as_str(), d.op?)))
                .collect();
            h.ops
                .iter()
                .filter(|o| matches!(o.outcome, Some(Outcome::Ok { .. })))
                .map(|o| {
                    o.recipients
                        .iter()
                        .filter(|r| subs.contains(*r) && !got.contains(&(r.as_str(), o.id)))
                        .count()
                })
                .sum()
        })
    }
}

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    I1,
    I2,
    I3,
    I4,
    I5,
    I6,
    I7,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

/// What to check a history against.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Members (as `MemberId` strings) whose whole stream was recorded from counter 0 until
    /// the end: I1 and I6 are checked for them only (a member that was never subscribed
    /// cannot be asked for its deliveries).
    pub subscribers: Vec<String>,
    /// I7: the longest interval without a successful send inside the load window must
    /// not exceed this. `None`: measured and reported only.
    pub unavailability_bound: Option<Duration>,
}

impl CheckOptions {
    /// Options checking the streams of `members`, with an unavailability bound.
    pub fn new(members: &[MemberId], unavailability_bound: Option<Duration>) -> Self {
        Self {
            subscribers: members.iter().map(|m| m.to_string()).collect(),
            unavailability_bound,
        }
    }
}

/// The checker's findings and the figures of the scenario.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub ops_unknown: usize,
    /// Unknown outcomes that turned out sequenced (delivered) / not sequenced.
    pub unknown_delivered: usize,
    pub unknown_not_delivered: usize,
    pub deliveries: usize,
    /// Distinct (member, counter) pairs seen.
    pub events: usize,
    /// I7: the longest interval in the load window without a send completing successfully,
    /// and where it started (since the history started).
    pub max_unavailability: Duration,
    pub max_unavailability_at: Duration,
    pub marks: Vec<(Duration, String)>,
}

impl Report {
    /// `Err` listing every violation (at most 20 per invariant), `Ok` when there is none.
    pub fn ensure_ok(&self) -> anyhow::Result<()> {
        if self.violations.is_empty() {
            return Ok(());
        }
        let mut per: BTreeMap<Invariant, Vec<&str>> = BTreeMap::new();
        for v in &self.violations {
            per.entry(v.invariant).or_default().push(&v.detail);
        }
        let mut text = String::new();
        for (inv, details) in per {
            text.push_str(&format!("{inv}: {} violation(s)\n", details.len()));
            for d in details.iter().take(20) {
                text.push_str(&format!("  - {d}\n"));
            }
        }
        anyhow::bail!("history check failed ({self})\n{text}")
    }

    /// Whether invariant `inv` was violated.
    pub fn violates(&self, inv: Invariant) -> bool {
        self.violations.iter().any(|v| v.invariant == inv)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sends: {} ok, {} failed, {} unknown ({} sequenced, {} not); {} deliveries of {} events; \
             longest unavailability {} ms at {:.3}s; {} violation(s)",
            self.ops_ok,
            self.ops_failed,
            self.ops_unknown,
            self.unknown_delivered,
            self.unknown_not_delivered,
            self.deliveries,
            self.events,
            self.max_unavailability.as_millis(),
            self.max_unavailability_at.as_secs_f64(),
            self.violations.len()
        )
    }
}

/// Checks every invariant over `history`.
pub fn check(history: &History, options: &CheckOptions) -> Report {
    let mut report = Report {
        deliveries: history.deliveries.len(),
        marks: history.marks.clone(),
        ..Report::default()
    };
    let mut v = |invariant: Invariant, detail: String| {
        report.violations.push(Violation { invariant, detail });
    };
    let subscribers: BTreeSet<&str> = options.subscribers.iter().map(String::as_str).collect();

    // Index: per member, op -> counters; per (member, counter) -> distinct events.
    let mut counters_of_op: HashMap<(&str, u64), BTreeSet<i64>> = HashMap::new();
    let mut event_at: BTreeMap<(&str, i64), Vec<&Delivery>> = BTreeMap::new();
    let mut ts_of_op: HashMap<u64, BTreeSet<i64>> = HashMap::new();
    for d in &history.deliveries {
        event_at
            .entry((d.member.as_str(), d.counter))
            .or_default()
            .push(d);
        if let Some(op) = d.op {
            counters_of_op
                .entry((d.member.as_str(), op))
                .or_default()
                .insert(d.counter);
            ts_of_op.entry(op).or_default().insert(d.timestamp);
        }
    }
    report.events = event_at.len();

    // I4: a (member, counter) is one event everywhere; the chain links counters.
    for ((member, counter), ds) in &event_at {
        let first = ds[0];
        for d in &ds[1..] {
            if d.digest != first.digest || d.timestamp != first.timestamp {
                v(
                    Invariant::I4,
                    format!(
                        "{member} counter {counter}: timestamp {} from {} (subscription {}) but {} from {} (subscription {})",
                        first.timestamp,
                        first.endpoint,
                        first.subscription,
                        d.timestamp,
                        d.endpoint,
                        d.subscription
                    ),
                );
                break;
            }
        }
        if *counter > 0
            && let Some(prev) = event_at.get(&(*member, counter - 1))
            && prev[0].timestamp != first.previous_timestamp
        {
            v(
                Invariant::I4,
                format!(
                    "{member} counter {counter}: previous timestamp {} but counter {} has {}",
                    first.previous_timestamp,
                    counter - 1,
                    prev[0].timestamp
                ),
            );
        }
    }
    // Gap-free within each subscription.
    let mut by_sub: BTreeMap<(&str, u64), Vec<i64>> = BTreeMap::new();
    for d in &history.deliveries {
        by_sub
            .entry((d.member.as_str(), d.subscription))
            .or_default()
            .push(d.counter);
    }
    for ((member, sub), counters) in &by_sub {
        for w in counters.windows(2) {
            if w[1] != w[0] + 1 {
                v(
                    Invariant::I4,
                    format!(
                        "{member} subscription {sub}: counter {} followed by {} (gap or reorder)",
                        w[0], w[1]
                    ),
                );
                break;
            }
        }
    }

    // I3: counters follow time for every member, and an operation has one timestamp for
    // everybody (including its acknowledgement); two operations never share one.
    let mut per_member: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for ((member, counter), ds) in &event_at {
        per_member
            .entry(member)
            .or_default()
            .push((*counter, ds[0].timestamp));
    }
    for (member, seq) in &per_member {
        for w in seq.windows(2) {
            if w[1].1 <= w[0].1 {
                v(
                    Invariant::I3,
                    format!(
                        "{member}: counter {} at {} but counter {} at {}",
                        w[0].0, w[0].1, w[1].0, w[1].1
                    ),
                );
                break;
            }
        }
    }
    let mut op_of_ts: HashMap<i64, u64> = HashMap::new();
    for (op, tss) in &ts_of_op {
        if tss.len() > 1 {
            v(
                Invariant::I3,
                format!("op {op} delivered with different timestamps {tss:?}"),
            );
        }
        for ts in tss {
            if let Some(other) = op_of_ts.insert(*ts, *op)
                && other != *op
            {
                v(
                    Invariant::I3,
                    format!("ops {other} and {op} both delivered at timestamp {ts}"),
                );
            }
        }
    }

    // I2: one operation at one counter per member.
    for ((member, op), counters) in &counters_of_op {
        if counters.len() > 1 {
            v(
                Invariant::I2,
                format!("op {op} delivered to {member} at counters {counters:?}"),
            );
        }
    }

    // I1 and I6, per operation.
    for op in &history.ops {
        let expected: Vec<&str> = op
            .recipients
            .iter()
            .map(String::as_str)
            .filter(|r| subscribers.contains(*r))
            .collect();
        let got: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|r| counters_of_op.contains_key(&(*r, op.id)))
            .collect();
        match &op.outcome {
            Some(Outcome::Ok { timestamp }) => {
                report.ops_ok += 1;
                for r in &expected {
                    if !got.contains(r) {
                        v(
                            Invariant::I1,
                            format!(
                                "op {} acknowledged at {timestamp}, never delivered to {r}",
                                op.id
                            ),
                        );
                    }
                }
                if let Some(tss) = ts_of_op.get(&op.id)
                    && tss.iter().any(|t| t != timestamp)
                {
                    v(
                        Invariant::I3,
                        format!(
                            "op {} acknowledged at {timestamp} but delivered at {tss:?}",
                            op.id
                        ),
                    );
                }
            }
            Some(Outcome::Fail { error }) => {
                report.ops_failed += 1;
                if ts_of_op.contains_key(&op.id) {
                    v(
                        Invariant::I6,
                        format!("op {} failed ({error}) but was delivered", op.id),
                    );
                }
            }
            Some(Outcome::Unknown { .. }) | None => {
                report.ops_unknown += 1;
                if got.is_empty() && !ts_of_op.contains_key(&op.id) {
                    report.unknown_not_delivered += 1;
                } else {
                    report.unknown_delivered += 1;
                    if got.len() != expected.len() {
                        v(
                            Invariant::I6,
                            format!(
                                "op {} (outcome unknown) delivered to {got:?} but not to all of {expected:?}",
                                op.id
                            ),
                        );
                    }
                }
            }
        }
    }

    // I5: one holder per (resource, epoch).
    let mut holders: BTreeMap<(&str, i64), BTreeSet<&str>> = BTreeMap::new();
    for w in &history.lease_writes {
        holders
            .entry((w.resource.as_str(), w.epoch))
            .or_default()
            .insert(w.holder.as_str());
    }
    for ((resource, epoch), hs) in &holders {
        if hs.len() > 1 {
            v(
                Invariant::I5,
                format!("{resource} epoch {epoch} written by {hs:?}"),
            );
        }
    }

    // I7: the longest interval inside the load window with no send completing successfully.
    if let Some((start, end)) = history.load_window {
        let mut done: Vec<Duration> = history
            .ops
            .iter()
            .filter(|o| matches!(o.outcome, Some(Outcome::Ok { .. })))
            .filter_map(|o| o.completed)
            .filter(|t| *t >= start && *t <= end)
            .collect();
        done.sort();
        let mut last = start;
        for t in done.into_iter().chain(std::iter::once(end)) {
            if t - last > report.max_unavailability {
                report.max_unavailability = t - last;
                report.max_unavailability_at = last;
            }
            last = t;
        }
        if let Some(bound) = options.unavailability_bound
            && report.max_unavailability > bound
        {
            let gap = report.max_unavailability;
            let at = report.max_unavailability_at;
            v(
                Invariant::I7,
                format!(
                    "no successful send for {} ms from {:.3}s (bound {} ms)",
                    gap.as_millis(),
                    at.as_secs_f64(),
                    bound.as_millis()
                ),
            );
        }
    }
    report
}

/// Shape of [`start_load`]'s traffic.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent send loops per client.
    pub senders_per_client: usize,
    /// Pause between two sends of one loop.
    pub pause: Duration,
    /// Max sequencing time of each send, from its start.
    pub max_sequencing_time: Duration,
    /// Envelope size in bytes.
    pub payload_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            senders_per_client: 2,
            pause: Duration::from_millis(20),
            max_sequencing_time: Duration::from_secs(20),
            payload_bytes: 64,
        }
    }
}

/// Running load: send loops and one recording subscriber per client.
pub struct LoadHandle {
    recorder: Recorder,
    members: Vec<MemberId>,
    stop_sending: Stop,
    senders: Vec<tokio::task::JoinHandle<()>>,
    readers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A stop flag for the send loops (a watch channel: no extra dependency).
#[derive(Clone)]
struct Stop(
    Arc<tokio::sync::watch::Sender<bool>>,
    tokio::sync::watch::Receiver<bool>,
);

impl Stop {
    fn new() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Self(Arc::new(tx), rx)
    }
    fn stop(&self) {
        let _ = self.0.send(true);
    }
    fn is_stopped(&self) -> bool {
        *self.1.borrow()
    }
    async fn stopped(&self) {
        let mut rx = self.1.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Starts load over `clients`: each client subscribes from counter 0 (every delivery is
/// recorded) and runs `senders_per_client` loops, each sending to every client's member.
/// Opens the recorder's load window.
pub fn start_load(
    clients: Vec<DomainClient>,
    recorder: Recorder,
    options: LoadOptions,
) -> LoadHandle {
    let members: Vec<MemberId> = clients.iter().map(|c| c.member().id.clone()).collect();
    let stop = Stop::new();
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    recorder.load_started();
    for client in &clients {
        let rec = recorder.clone();
        let client_r = client.clone();
        readers.push(tokio::spawn(async move {
            let member = client_r.member().id.clone();
            let mut sub = client_r.subscribe(0)?;
            let n = rec.new_subscription();
            while let Some(item) = sub.next().await {
                let ev = item.map_err(|e| anyhow::anyhow!("{member}: subscription failed: {e}"))?;
                rec.deliver(&member, &ev.endpoint, n, &ev.event);
            }
            Ok(())
        }));
        for _ in 0..options.senders_per_client {
            let rec = recorder.clone();
            let client_s = client.clone();
            let members = members.clone();
            let stop = stop.clone();
            let options = options.clone();
            senders.push(tokio::spawn(async move {
                let me = client_s.member().id.clone();
                while !stop.is_stopped() {
                    let op = rec.invoke(&me, &members);
                    let recipients: Vec<&MemberId> = members.iter().collect();
                    let env =
                        crate::envelope(Recorder::payload(op, options.payload_bytes), &recipients);
                    let mst = crate::now_micros() + options.max_sequencing_time.as_micros() as i64;
                    let result = client_s
                        .send(&Recorder::message_id(op), vec![env], mst)
                        .await;
                    rec.complete_send(op, &result);
                    tokio::select! {
                        () = tokio::time::sleep(options.pause) => {}
                        () = stop.stopped() => {}
                    }
                }
            }));
        }
    }
    LoadHandle {
        recorder,
        members,
        stop_sending: stop,
        senders,
        readers,
    }
}

impl LoadHandle {
    /// The members the load sends to (every one subscribed from counter 0).
    pub fn members(&self) -> &[MemberId] {
        &self.members
    }

    /// Stops sending (waiting for sends in flight), closes the load window, then waits up
    /// to `drain` until every acknowledged send reached all its recipients, and stops the
    /// readers. A reader that failed (fork detected, invalid event) is an error.
    pub async fn stop(self, drain: Duration) -> anyhow::Result<()> {
        self.stop_sending.stop();
        for s in self.senders {
            let _ = s.await;
        }
        self.recorder.load_stopped();
        let deadline = Instant::now() + drain;
        while self.recorder.undelivered(&self.members) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Unknown outcomes may still arrive; give them a moment beyond the acked ones.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut failures = Vec::new();
        for r in self.readers {
            if r.is_finished() {
                match r.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.push(format!("{e:#}")),
                    Err(e) => failures.push(format!("reader panicked: {e}")),
                }
            } else {
                r.abort();
            }
        }
        anyhow::ensure!(
            failures.is_empty(),
            "subscribers failed: {}",
            failures.join("; ")
        );
        Ok(())
    }
}

/// Records `member`'s raw stream from one instance (no failover), from counter 0, until the
/// stream ends or the task is aborted: I3/I4 then compare what each instance served.
pub fn record_instance_stream(
    conn: SequencerConnection,
    member: MemberId,
    endpoint: String,
    recorder: Recorder,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let n = recorder.new_subscription();
        let Ok(mut stream) = conn.subscribe(0).await else {
            return;
        };
        while let Ok(Some(r)) = stream.message().await {
            if let Some(ev) = r.event {
                recorder.deliver(&member, &endpoint, n, &ev);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    //! Each invariant shown detecting a hand-made violation, and a clean history passing.

    use super::*;

    const A: &str = "PAR::a::1220aa";
    const B: &str = "PAR::b::1220bb";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn op(id: u64, outcome: Option<Outcome>, done: u64) -> Op {
        Op {
            id,
            sender: A.into(),
            recipients: vec![A.into(), B.into()],
            invoked: ms(done.saturating_sub(5)),
            completed: outcome.as_ref().map(|_| ms(done)),
            outcome,
        }
    }

    fn ok(ts: i64) -> Option<Outcome> {
        Some(Outcome::Ok { timestamp: ts })
    }

    fn dl(member: &str, sub: u64, counter: i64, ts: i64, prev: i64, op: Option<u64>) -> Delivery {
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&ts.to_be_bytes());
        digest[8..16].copy_from_slice(&op.unwrap_or(0).to_be_bytes());
        Delivery {
            member: member.into(),
            endpoint: "seq-0".into(),
            subscription: sub,
            counter,
            timestamp: ts,
            previous_timestamp: prev,
            digest,
            op,
            at: ms(0),
        }
    }

    /// Two ops, both delivered to both members in the same order.
    fn clean() -> History {
        History {
            ops: vec![op(1, ok(100), 10), op(2, ok(200), 20)],
            deliveries: vec![
                dl(A, 1, 0, 100, 0, Some(1)),
                dl(A, 1, 1, 200, 100, Some(2)),
                dl(B, 2, 0, 100, 0, Some(1)),
                dl(B, 2, 1, 200, 100, Some(2)),
            ],
            load_window: Some((ms(0), ms(30))),
            ..History::default()
        }
    }

    fn check_subs(h: &History) -> Report {
        check_with(h, &[A, B], None)
    }

    fn check_with(h: &History, subs: &[&str], bound: Option<Duration>) -> Report {
        let options = CheckOptions {
            subscribers: subs.iter().map(|s| s.to_string()).collect(),
            unavailability_bound: bound,
        };
        check(h, &options)
    }

    #[test]
    fn clean_history_passes() {
        let r = check_subs(&clean());
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.ops_ok, 2);
        assert_eq!(r.events, 4);
    }

    #[test]
    fn i1_lost_acknowledged_send() {
        let mut h = clean();
        h.deliveries.retain(|d| !(d.member == B && d.counter == 1));
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I1), "{:?}", r.violations);
        // A member not recorded as subscriber is not asked for its deliveries.
        assert!(!check_with(&h, &[A], None).violates(Invariant::I1));
    }

    #[test]
    fn i2_duplicate_delivery() {
        let mut h = clean();
        h.deliveries.push(dl(B, 2, 2, 300, 200, Some(2)));
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I2), "{:?}", r.violations);
    }

    #[test]
    fn i3_different_order() {
        // B sees op 2 before op 1: same timestamps per op, but B's counters go back in time.
        let mut h = clean();
        h.deliveries[2] = dl(B, 2, 0, 200, 0, Some(2));
        h.deliveries[3] = dl(B, 2, 1, 100, 200, Some(1));
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I3), "{:?}", r.violations);
    }

    #[test]
    fn i3_acknowledged_timestamp_differs_from_delivered() {
        let mut h = clean();
        h.ops[0].outcome = ok(99);
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I3), "{:?}", r.violations);
    }

    #[test]
    fn i4_fork_across_instances() {
        let mut h = clean();
        let mut other = dl(A, 3, 1, 250, 100, None);
        other.endpoint = "seq-1".into();
        h.deliveries.push(other);
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I4), "{:?}", r.violations);
    }

    #[test]
    fn i4_gap_in_a_subscription() {
        let mut h = clean();
        h.deliveries.push(dl(A, 1, 3, 400, 300, None));
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I4), "{:?}", r.violations);
    }

    #[test]
    fn i5_two_writers_in_one_epoch() {
        let mut h = clean();
        h.lease_writes.push(LeaseWrite {
            resource: "mediator".into(),
            epoch: 3,
            holder: "med-0".into(),
        });
        h.lease_writes.push(LeaseWrite {
            resource: "mediator".into(),
            epoch: 4,
            holder: "med-1".into(),
        });
        assert!(check_subs(&h).violations.is_empty());
        h.lease_writes.push(LeaseWrite {
            resource: "mediator".into(),
            epoch: 3,
            holder: "med-1".into(),
        });
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I5), "{:?}", r.violations);
    }

    #[test]
    fn i6_unknown_delivered_to_some_only() {
        let mut h = clean();
        h.ops.push(op(
            3,
            Some(Outcome::Unknown {
                error: "timeout".into(),
            }),
            25,
        ));
        // Not delivered at all: fine.
        let r = check_subs(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.unknown_not_delivered, 1);
        // Delivered to A only: a partial delivery.
        h.deliveries.push(dl(A, 1, 2, 300, 200, Some(3)));
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I6), "{:?}", r.violations);
        // Delivered to both: resolved as sequenced.
        h.deliveries.push(dl(B, 2, 2, 300, 200, Some(3)));
        let r = check_subs(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.unknown_delivered, 1);
    }

    #[test]
    fn i6_failed_send_delivered() {
        let mut h = clean();
        h.ops[1].outcome = Some(Outcome::Fail {
            error: "PERMISSION_DENIED".into(),
        });
        let r = check_subs(&h);
        assert!(r.violates(Invariant::I6), "{:?}", r.violations);
    }

    #[test]
    fn i7_unavailability_over_the_bound() {
        let mut h = clean();
        h.load_window = Some((ms(0), ms(2_000)));
        let r = check_with(&h, &[A, B], Some(ms(500)));
        assert!(r.violates(Invariant::I7), "{:?}", r.violations);
        assert_eq!(r.max_unavailability, ms(1_980));
        let r = check_with(&h, &[A, B], Some(ms(2_000)));
        assert!(!r.violates(Invariant::I7), "{:?}", r.violations);
    }

    #[test]
    fn payload_round_trip() {
        let p = Recorder::payload(42, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(Recorder::op_of_payload(&p), Some(42));
        assert_eq!(Recorder::op_of_payload(b"other"), None);
        assert_eq!(Recorder::op_of_payload(b"hist:x;"), None);
    }
}
