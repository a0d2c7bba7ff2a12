//! Phases 2 and 3: senders with bounded concurrency (optionally paced by a token
//! bucket) and subscribers that verify every event they receive.
//!
//! Each envelope's content starts with a header: the send instant (wall-clock
//! micros, i64 LE), the sender index (u32 LE), the sender's sequence number (u64
//! LE) and the phase (u8), followed by filler up to `--payload-bytes`. A subscriber
//! computes send→deliver latency from the header, and uses the ids to prove that
//! every acknowledged message arrives exactly once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use domain_proto::common::v1 as common_pb;
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::{ClientError, SequencerConnection, StreamValidator};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use crate::{Percentiles, micros_histogram, now_micros};

/// Bytes of the header at the start of every payload.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 1;

/// The ids and send instant at the start of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Wall-clock micros when the send started.
    pub sent_at: i64,
    pub sender: u32,
    /// The sender's sequence number.
    pub seq: u64,
    pub phase: u8,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `content`.
    ///
    /// # Panics
    ///
    /// Panics if `content` is shorter than [`HEADER_LEN`] (`--payload-bytes` is
    /// validated to be at least that).
    pub fn write(&self, content: &mut [u8]) {
        content[0..8].copy_from_slice(&self.sent_at.to_le_bytes());
        content[8..12].copy_from_slice(&self.sender.to_le_bytes());
        content[12..20].copy_from_slice(&self.seq.to_le_bytes());
        content[20] = self.phase;
    }

    /// Reads the header of a received payload.
    pub fn read(c: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            c.len() >= HEADER_LEN,
            "payload of {} bytes is shorter than the {HEADER_LEN}-byte header",
            c.len()
        );
        Ok(Self {
            sent_at: i64::from_le_bytes(c[0..8].try_into()?),
            sender: u32::from_le_bytes(c[8..12].try_into()?),
            seq: u64::from_le_bytes(c[12..20].try_into()?),
            phase: c[20],
        })
    }
}

/// Pseudo-random filler of `len` bytes (the same for every run), overwritten by the
/// header at the start.
pub fn filler(len: usize) -> Vec<u8> {
    (0..len)
        .scan(0x9E37_79B9_7F4A_7C15u64, |s, _| {
            *s ^= *s << 13;
            *s ^= *s >> 7;
            *s ^= *s << 17;
            Some(*s as u8)
        })
        .collect()
}

/// The rotation slot of message `seq` of `sender` among `subscribers`: the first of
/// its addressees.
pub fn rotation_slot(sender: u32, seq: u64, subscribers: usize) -> usize {
    ((sender as u64 + seq) % subscribers as u64) as usize
}

/// The subscribers message `seq` of `sender` is addressed to: `fanout` consecutive
/// ones (mod `subscribers`) from its rotation slot.
pub fn targets(sender: u32, seq: u64, subscribers: usize, fanout: usize) -> Vec<usize> {
    let first = rotation_slot(sender, seq, subscribers);
    (0..fanout).map(|j| (first + j) % subscribers).collect()
}

/// Counters and histograms shared by senders, subscribers and the driver.
pub struct Stats {
    /// True inside the measured window: acks and deliveries are counted and timed.
    pub recording: AtomicBool,
    pub acks_window: AtomicU64,
    pub delivered_window: AtomicU64,
    pub acked_total: AtomicU64,
    pub send_errors: AtomicU64,
    pub resubscribes: AtomicU64,
    /// Per subscriber: deliveries owed (from acknowledged sends) and received.
    pub expected: Vec<AtomicU64>,
    pub delivered: Vec<AtomicU64>,
    /// Send instant (in the payload) to delivery, µs.
    pub e2e: Mutex<Histogram<u64>>,
    /// Send call to acknowledgement (durable), µs.
    pub ack: Mutex<Histogram<u64>>,
    /// Paced phases: how late a send started after its token-bucket slot, µs.
    pub sched_lag: Mutex<Histogram<u64>>,
    /// A verification failure; the driver aborts the run with it.
    pub fatal: Mutex<Option<String>>,
    pub first_send_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn new(subscribers: usize) -> Arc<Self> {
        Arc::new(Self {
            recording: AtomicBool::new(false),
            acks_window: AtomicU64::new(0),
            delivered_window: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            resubscribes: AtomicU64::new(0),
            expected: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            e2e: Mutex::new(micros_histogram()),
            ack: Mutex::new(micros_histogram()),
            sched_lag: Mutex::new(micros_histogram()),
            fatal: Mutex::new(None),
            first_send_error: Mutex::new(None),
        })
    }

    /// Clears the per-phase window figures (totals are kept across phases).
    pub fn reset_window(&self) {
        self.recording.store(false, Ordering::SeqCst);
        self.acks_window.store(0, Ordering::SeqCst);
        self.delivered_window.store(0, Ordering::SeqCst);
        self.send_errors.store(0, Ordering::SeqCst);
        lock(&self.e2e).reset();
        lock(&self.ack).reset();
        lock(&self.sched_lag).reset();
    }

    pub fn fail(&self, msg: String) {
        let mut f = lock(&self.fatal);
        if f.is_none() {
            eprintln!("seqbench: FATAL: {msg}");
            *f = Some(msg);
        }
    }

    /// Accounts a durable acknowledgement of a send started at `started` and addressed to
    /// subscribers `targets`: each now expects it.
    pub fn acked(&self, targets: &[usize], started: Instant) {
        for t in targets {
            self.expected[*t].fetch_add(1, Ordering::SeqCst);
        }
        self.acked_total.fetch_add(1, Ordering::SeqCst);
        if self.recording.load(Ordering::Relaxed) {
            self.acks_window.fetch_add(1, Ordering::Relaxed);
            Stats::record(&self.ack, started.elapsed().as_micros() as i64);
        }
    }

    /// Accounts a failed send; the first failure is kept for the report. The outcome is
    /// unknown (the message may still be stored and delivered), so the caller stops the
    /// worker: the delivery accounting would then report the surplus.
    pub fn send_failed(&self, message_id: &str, error: &dyn std::fmt::Display) {
        self.send_errors.fetch_add(1, Ordering::SeqCst);
        let mut first = lock(&self.first_send_error);
        if first.is_none() {
            eprintln!("seqbench: send {message_id} failed: {error}");
            *first = Some(format!("{message_id}: {error}"));
        }
    }

    /// The first failed send of the phase (empty when none failed).
    pub fn first_send_error(&self) -> String {
        lock(&self.first_send_error).clone().unwrap_or_default()
    }

    pub fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    pub(crate) fn record(h: &Mutex<Histogram<u64>>, micros: i64) {
        let v = micros.clamp(1, 100_000_000) as u64;
        let _ = lock(h).record(v);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one measured window of a load phase (the sequencer's or JetStream's) achieved:
/// durable acknowledgements and deliveries, their rates and latencies.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Window {
    pub seconds: f64,
    /// Acknowledged (durable) sends in the window.
    pub acked: u64,
    pub acked_per_sec: f64,
    /// Events received by subscribers in the window (= acked × fanout).
    pub delivered: u64,
    pub delivered_per_sec: f64,
    /// Send instant (embedded in the payload) to receipt by a subscriber.
    pub send_to_deliver: Percentiles,
    /// Send call to its durable acknowledgement.
    pub send_to_ack: Percentiles,
}

impl Window {
    /// The window `stats` recorded over `seconds`.
    pub fn of(stats: &Stats, seconds: f64) -> Self {
        let acked = stats.acks_window.load(Ordering::SeqCst);
        let delivered = stats.delivered_window.load(Ordering::SeqCst);
        Self {
            seconds,
            acked,
            acked_per_sec: acked as f64 / seconds,
            delivered,
            delivered_per_sec: delivered as f64 / seconds,
            send_to_deliver: Percentiles::of(&lock(&stats.e2e)),
            send_to_ack: Percentiles::of(&lock(&stats.ack)),
        }
    }
}

/// What the senders of one phase do.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub phase: u8,
    pub in_flight: usize,
    /// Events/s over all senders; None = unbounded.
    pub rate: Option<f64>,
    pub payload_bytes: usize,
    pub fanout: usize,
}

/// Token bucket of one sender (bucket depth 1): slot k is due at start + k/rate.
/// Slots missed while every worker was busy are sent as soon as a worker frees up.
struct Pacer {
    start: Instant,
    interval: Duration,
    next: AtomicU64,
}

impl Pacer {
    fn slot(&self) -> Instant {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        self.start + self.interval.mul_f64(k as f64)
    }
}

/// The running load tasks of one phase (the sequencer's senders or JetStream's
/// publishers): each loops until the shared stop flag is raised.
pub struct Workers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        }
    }

    /// The flag every task polls between sends.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Stops at once, abandoning outstanding sends (after a failure).
    pub fn abort(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.abort();
        }
    }

    /// Stops issuing new sends and waits for every outstanding one to be answered.
    pub async fn stop_and_join(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.context("a load task panicked")?;
        }
        Ok(())
    }
}

impl Default for Workers {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts the sequencer's senders of one phase: `cfg.in_flight` workers per sender
/// connection.
pub fn start_senders(
    conns: &[SequencerConnection],
    subscriber_ids: Arc<Vec<String>>,
    stats: Arc<Stats>,
    cfg: SendConfig,
) -> Workers {
    let mut workers = Workers::new();
    let stop = workers.stop_flag();
    let filler: Arc<Vec<u8>> = Arc::new(filler(cfg.payload_bytes));
    for (sender_idx, conn) in conns.iter().enumerate() {
        let seq = Arc::new(AtomicU64::new(0));
        let pacer = cfg.rate.filter(|r| *r > 0.0).map(|r| {
            let per_sender = r / conns.len() as f64;
            Arc::new(Pacer {
                start: Instant::now(),
                interval: Duration::from_secs_f64(1.0 / per_sender),
                next: AtomicU64::new(0),
            })
        });
        for _ in 0..cfg.in_flight {
            let w = Worker {
                sender_idx: sender_idx as u32,
                conn: conn.clone(),
                subscriber_ids: subscriber_ids.clone(),
                stats: stats.clone(),
                cfg: cfg.clone(),
                seq: seq.clone(),
                pacer: pacer.clone(),
                stop: stop.clone(),
                filler: filler.clone(),
            };
            workers.spawn(w.run());
        }
    }
    workers
}

struct Worker {
    sender_idx: u32,
    conn: SequencerConnection,
    subscriber_ids: Arc<Vec<String>>,
    stats: Arc<Stats>,
    cfg: SendConfig,
    seq: Arc<AtomicU64>,
    pacer: Option<Arc<Pacer>>,
    stop: Arc<AtomicBool>,
    filler: Arc<Vec<u8>>,
}

impl Worker {
    async fn run(self) {
        let m = self.subscriber_ids.len();
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(p) = &self.pacer {
                let slot = p.slot();
                tokio::time::sleep_until(slot.into()).await;
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                if self.stats.recording.load(Ordering::Relaxed) {
                    Stats::record(&self.stats.sched_lag, slot.elapsed().as_micros() as i64);
                }
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let targets = targets(self.sender_idx, seq, m, self.cfg.fanout);
            let mut content = self.filler.as_ref().clone();
            let sent_at = now_micros();
            Header {
                sent_at,
                sender: self.sender_idx,
                seq,
                phase: self.cfg.phase,
            }
            .write(&mut content);
            let envelope = pb::Envelope {
                content: content.into(),
                recipients: targets
                    .iter()
                    .map(|t| self.subscriber_ids[*t].clone())
                    .collect(),
                broadcast: false,
            };
            let message_id = format!("p{}-s{}-{seq}", self.cfg.phase, self.sender_idx);
            let started = Instant::now();
            match self
                .conn
                .send(&message_id, vec![envelope], sent_at + 60_000_000)
                .await
            {
                Ok(resp) if resp.deduplicated => {
                    self.stats.fail(format!(
                        "fresh message {message_id} was reported as deduplicated"
                    ));
                }
                Ok(_) => self.stats.acked(&targets, started),
                Err(e) => {
                    self.stats.send_failed(&message_id, &e);
                    break;
                }
            }
        }
    }
}

/// A deliberate corruption of the received stream, to show the checks fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Flip a bit of one event's signed content.
    BadSignature,
    /// Drop one event as if the transport lost it.
    Gap,
}

/// Counter of the event the injected fault hits.
const FAULT_AT_COUNTER: i64 = 10;

/// Events whose sequencer signature one subscriber of this process verified, for the other
/// recipients of the same event (fanout > 1).
///
/// The sequencer signs an event's content once for all its recipients, and every
/// recipient receives the same content and signature. Real recipients are separate
/// processes and each verifies; here all of them share the bench process and its share of
/// the 2 cores, so verifying each of 100 copies would make the bench, not the sequencer,
/// what a fanout run measures. A copy counts as verified only when its content and
/// signature are byte-identical to a verified one; the per-recipient checks
/// ([`domain_sequencer_client::check_event_content`]) still run on every copy.
pub struct VerifiedEvents {
    /// Recipients of every event (`--fanout`).
    copies: usize,
    /// Signed content -> its verified signature and the copies still to come.
    pending: Mutex<HashMap<Vec<u8>, Pending>>,
}

/// A verified event of [`VerifiedEvents`]: (its sequencer signature, copies still to come).
type Pending = (Option<common_pb::Signature>, usize);

impl VerifiedEvents {
    /// None for fanout 1, where no event has a second copy.
    pub fn for_fanout(fanout: usize) -> Option<Arc<Self>> {
        (fanout > 1).then(|| {
            Arc::new(Self {
                copies: fanout,
                pending: Mutex::new(HashMap::new()),
            })
        })
    }

    /// What [`SequencerConnection::verify_event`] checks, with the signature check skipped
    /// for a copy of an already verified event.
    fn verify(
        &self,
        conn: &SequencerConnection,
        event: &pb::SequencedEvent,
    ) -> Result<(), ClientError> {
        let content: &[u8] = &event.content[..];
        let known = {
            let mut pending = lock(&self.pending);
            match pending.get_mut(content) {
                Some((signature, left)) if *signature == event.signature => {
                    *left -= 1;
                    if *left == 0 {
                        pending.remove(content);
                    }
                    true
                }
                _ => false,
            }
        };
        if known {
            return domain_sequencer_client::check_event_content(event).map(|_| ());
        }
        conn.verify_event(event)?;
        let mut pending = lock(&self.pending);
        match pending.entry(content.to_vec()) {
            // Another copy was verified concurrently: this one is one of those to come.
            Entry::Occupied(mut e) if e.get().0 == event.signature => {
                e.get_mut().1 -= 1;
                if e.get().1 == 0 {
                    e.remove();
                }
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(v) => {
                v.insert((event.signature.clone(), self.copies - 1));
            }
        }
        Ok(())
    }
}

/// Spawns subscriber `idx`: subscribes from counter 0 and follows its stream for
/// the whole run, verifying each event (sequencer signature, envelope hashes,
/// counter continuity, increasing timestamps, exactly-once payload ids). A cut
/// (RESOURCE_EXHAUSTED or UNAVAILABLE) is resumed from the next counter; any
/// other failure is fatal.
pub fn spawn_subscriber(
    idx: usize,
    conn: SequencerConnection,
    stats: Arc<Stats>,
    payload_bytes: usize,
    fault: Option<Fault>,
    verified: Option<Arc<VerifiedEvents>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = follow(
            idx,
            &conn,
            &stats,
            payload_bytes,
            fault,
            verified.as_deref(),
        )
        .await
        {
            stats.fail(format!("subscriber {idx} ({}): {e:#}", conn.member.id));
        }
    })
}

async fn follow(
    idx: usize,
    conn: &SequencerConnection,
    stats: &Stats,
    payload_bytes: usize,
    mut fault: Option<Fault>,
    verified: Option<&VerifiedEvents>,
) -> anyhow::Result<()> {
    let mut validator = StreamValidator::default();
    let mut next_counter = 0i64;
    let mut seen: HashSet<(u8, u32, u64)> = HashSet::new();
    loop {
        let mut stream = conn
            .subscribe(next_counter)
            .await
            .context("subscribe failed")?;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    eprintln!(
                        "seqbench: subscriber {idx}: stream ended at counter {next_counter}; resubscribing"
                    );
                    break;
                }
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                    ) =>
                {
                    eprintln!(
                        "seqbench: subscriber {idx}: stream cut at counter {next_counter} ({:?}: {}); resubscribing",
                        status.code(),
                        status.message()
                    );
                    break;
                }
                Err(status) => {
                    anyhow::bail!("stream failed: {:?}: {}", status.code(), status.message())
                }
            };
            let received_at = now_micros();
            let mut event = msg.event.context("response without event")?;
            if event.counter == FAULT_AT_COUNTER {
                match fault {
                    Some(Fault::BadSignature) => {
                        if let Some(b) = event.content.last_mut() {
                            *b ^= 1;
                        }
                    }
                    Some(Fault::Gap) => {
                        // Pretend the transport lost this event.
                        fault = None;
                        continue;
                    }
                    None => {}
                }
            }
            match verified {
                Some(v) => v.verify(conn, &event),
                None => conn.verify_event(&event).map(|_| ()),
            }
            .with_context(|| format!("event with counter {} failed verification", event.counter))?;
            if event.counter != next_counter {
                anyhow::bail!(
                    "counter gap: expected {next_counter}, got {}",
                    event.counter
                );
            }
            validator
                .check(&event)
                .context("stream validation failed")?;
            next_counter += 1;
            anyhow::ensure!(
                event.message_id.is_empty(),
                "a recipient saw the sender's message id"
            );
            anyhow::ensure!(
                event.envelopes.len() == 1,
                "expected 1 envelope, got {}",
                event.envelopes.len()
            );
            let env = event.envelopes[0]
                .envelope
                .as_ref()
                .context("empty delivered envelope")?;
            let c = &env.content[..];
            anyhow::ensure!(
                c.len() == payload_bytes,
                "payload has {} bytes, expected {payload_bytes}",
                c.len()
            );
            let Header {
                sent_at,
                sender,
                seq,
                phase,
            } = Header::read(c)?;
            if !seen.insert((phase, sender, seq)) {
                anyhow::bail!("duplicate delivery of phase {phase} sender {sender} seq {seq}");
            }
            stats.delivered[idx].fetch_add(1, Ordering::SeqCst);
            if stats.recording.load(Ordering::Relaxed) {
                stats.delivered_window.fetch_add(1, Ordering::Relaxed);
                Stats::record(&stats.e2e, received_at - sent_at);
            }
        }
        stats.resubscribes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until every subscriber received everything it is owed; fails on
/// missing or surplus deliveries.
pub async fn drain(stats: &Stats, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(f) = stats.fatal() {
            anyhow::bail!("{f}");
        }
        let mut done = true;
        for (i, (e, d)) in stats.expected.iter().zip(&stats.delivered).enumerate() {
            let (e, d) = (e.load(Ordering::SeqCst), d.load(Ordering::SeqCst));
            if d > e {
                anyhow::bail!(
                    "subscriber {i} received {d} events but only {e} were acknowledged for it"
                );
            }
            if d < e {
                done = false;
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "subscriber {i} is missing {} of {e} acknowledged events after {timeout:?}",
                        e - d
                    );
                }
            }
        }
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
