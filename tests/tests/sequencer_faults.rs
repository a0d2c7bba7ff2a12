//! Fault tests of the active-active sequencer: a commit-order race between instances, a
//! SIGKILLed instance under load, and a SIGSTOPped (hung) instance that comes back.
//!
//! Every test compares what subscribers received with what senders had acknowledged:
//! exactly the acknowledged timestamps, each once, gap-free counters, strictly increasing
//! timestamps, verified signatures. The only timing assertions are the delivery-stall bounds
//! on surviving instances; every other figure is printed.
//!
//! The tests of this file run one at a time (they share two cores with three sequencers
//! and PostgreSQL, and measure stalls).

use domain_e2e::flt_util::{log_of, query_i64};
use domain_e2e::seq_member::add_participants;
use domain_e2e::streams::{Collected, collect, signed_key};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_e2e::{connect_member, envelope, metrics_summary, now_micros};
use domain_identity::{MemberId, MemberRole, SigningKeyPair};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::{
    ClientError, SequencerConnection, StreamValidator, check_event_content,
};
use domain_testkit::pg::PgCluster;
use domain_testkit::process::{TestLogs, wait_for_health, wait_for_http_ok};
use prost::Message as _;
use tokio::sync::{Semaphore, watch};

type Member = (MemberId, Arc<SigningKeyPair>);

/// Largest accepted delivery stall on a surviving instance (target 2 s, plus slack for
/// two loaded cores).
const STALL_BOUND: Duration = Duration::from_millis(2500);

// ---------------------------------------------------------------------------------------
// Harness: one test at a time, logs kept on failure.
// ---------------------------------------------------------------------------------------

use domain_e2e::run_test as run_serial;

// ---------------------------------------------------------------------------------------
// Sending with failover: the same signed request until it is acknowledged.
// ---------------------------------------------------------------------------------------

/// One acknowledged submission.
#[derive(Debug, Clone)]
struct Ack {
    sender: String,
    message_id: String,
    ts: i64,
    acked_at: Instant,
    /// Instance that acknowledged it.
    via: usize,
    attempts: u32,
    deduplicated: bool,
}

/// A load-generating sender: one member, connections to one or more instances (the first
/// is its home), pacing and a bound on in-flight submissions.
struct LoadSender {
    conns: Vec<(usize, SequencerConnection)>,
    recipients: Vec<MemberId>,
    /// Pause between starting two submissions; zero means "as fast as `in_flight` allows".
    interval: Duration,
    in_flight: usize,
    attempt_timeout: Duration,
    prefix: String,
    /// Index into `conns` of the connection to use next; failures move it on, the test may
    /// move it back (e.g. to a recovered instance).
    preferred: Arc<AtomicUsize>,
}

/// Whether an error may be retried with the same request (possibly elsewhere).
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Status(st) => !matches!(
            st.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::PermissionDenied
                | tonic::Code::FailedPrecondition
                | tonic::Code::Unauthenticated
                | tonic::Code::OutOfRange
        ),
        _ => true,
    }
}

/// Sends `request` through `conns[preferred]`; on a retryable failure or a timeout moves on to
/// the next connection and retries the SAME signed request (same message id), so that
/// deduplication makes it exactly-once. Gives up at `deadline`.
async fn send_with_failover(
    conns: &[(usize, SequencerConnection)],
    preferred: &AtomicUsize,
    request: pb::SendRequest,
    attempt_timeout: Duration,
    deadline: Instant,
    label: &str,
) -> anyhow::Result<(pb::SendResponse, usize, u32)> {
    let mut attempts = 0u32;
    loop {
        let i = preferred.load(Ordering::Relaxed) % conns.len();
        let (instance, conn) = &conns[i];
        attempts += 1;
        let outcome =
            tokio::time::timeout(attempt_timeout, conn.send_signed(request.clone())).await;
        let error = match outcome {
            Ok(Ok(resp)) => return Ok((resp, *instance, attempts)),
            Ok(Err(e)) if !retryable(&e) => {
                return Err(e).with_context(|| format!("send {label} via seq-{instance}"));
            }
            Ok(Err(e)) => format!("{e}"),
            Err(_) => format!("no answer within {attempt_timeout:?}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "send {label}: giving up after {attempts} attempts; last via seq-{instance}: {error}"
            );
        }
        if attempts <= 2 {
            println!("send {label} via seq-{instance} failed ({error}); retrying the same request");
        }
        // Move on to the next instance unless a concurrent send already did.
        if conns.len() > 1 {
            let _ = preferred.compare_exchange(
                i,
                (i + 1) % conns.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl LoadSender {
    /// Sends until `stop` is set, then waits for every started submission to be acknowledged.
    async fn run(self, stop: Arc<AtomicBool>, deadline: Instant) -> anyhow::Result<Vec<Ack>> {
        let conns = Arc::new(self.conns);
        let preferred = self.preferred;
        let permits = Arc::new(Semaphore::new(self.in_flight));
        let recipients: Vec<&MemberId> = self.recipients.iter().collect();
        let sender = conns[0].1.member.id.to_string();
        let max_seq = now_micros() + 300_000_000;
        let mut tasks = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let permit = permits.clone().acquire_owned().await?;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let message_id = format!("{}-{n}", self.prefix);
            let request = conns[0].1.sign_submission(&pb::SubmissionRequest {
                sender: sender.clone(),
                message_id: message_id.clone(),
                envelopes: vec![envelope(
                    format!("payload of {message_id}").into_bytes(),
                    &recipients,
                )],
                max_sequencing_time_micros: max_seq,
                time_proof: false,
            });
            let (conns, preferred, sender) = (conns.clone(), preferred.clone(), sender.clone());
            let timeout = self.attempt_timeout;
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let (resp, via, attempts) =
                    send_with_failover(&conns, &preferred, request, timeout, deadline, &message_id)
                        .await?;
                ensure!(
                    attempts > 1 || !resp.deduplicated,
                    "first attempt of {message_id} was deduplicated"
                );
                Ok::<_, anyhow::Error>(Ack {
                    sender,
                    message_id,
                    ts: resp.sequencing_timestamp_micros,
                    acked_at: Instant::now(),
                    via,
                    attempts,
                    deduplicated: resp.deduplicated,
                })
            }));
            n += 1;
            if !self.interval.is_zero() {
                tokio::time::sleep(self.interval).await;
            }
        }
        let mut acks = Vec::with_capacity(tasks.len());
        for t in tasks {
            acks.push(t.await??);
        }
        Ok(acks)
    }
}

// ---------------------------------------------------------------------------------------
// Subscribing and checking streams.
// ---------------------------------------------------------------------------------------

/// Verifies events. The sequencer signs an event's content once for all recipients, so the
/// signature over identical (content, signature) bytes is checked once with
/// [`SequencerConnection::verify_event`] (ed25519 verification is slow in debug builds); every
/// event still gets the per-recipient checks: timestamp and message id bound to the signed
/// content, each delivered envelope covered by the signed hashes.
#[derive(Default)]
struct EventVerifier {
    verified: HashSet<[u8; 32]>,
    full_checks: usize,
}

impl EventVerifier {
    fn verify(
        &mut self,
        conn: &SequencerConnection,
        event: &pb::SequencedEvent,
    ) -> anyhow::Result<pb::SignedEventContent> {
        let key = signed_key(event)?;
        if !self.verified.contains(&key) {
            let content = conn.verify_event(event)?;
            self.verified.insert(key);
            self.full_checks += 1;
            return Ok(content);
        }
        Ok(check_event_content(event)?)
    }
}

/// Fault injection variable of the sequencer: hold every batch this many ms before COMMIT.
const DELAY_BEFORE_COMMIT: &str = "SEQUENCER_FAULT_DELAY_BEFORE_COMMIT_MS";
/// Fault injection variable of the sequencer: its clock runs this many ms off.
const CLOCK_OFFSET: &str = "SEQUENCER_FAULT_CLOCK_OFFSET_MS";

/// `instances` sequencer instances (default configuration) on a fresh database `db_name`.
async fn cluster_on_fresh_db(
    logs: TestLogs,
    db_name: &str,
    instances: usize,
) -> anyhow::Result<SequencerCluster> {
    let db = PgCluster::shared().create_database(db_name).await;
    SequencerCluster::start(logs, db, instances, "").await
}

/// A 2-instance cluster on a fresh database `db_name` whose instance `faulted` runs with
/// the fault injection variable `var = value` (the other without); also the database URL.
async fn faulted_pair(
    logs: TestLogs,
    db_name: &str,
    faulted: usize,
    var: &str,
    value: &str,
) -> anyhow::Result<(SequencerCluster, String)> {
    let db = PgCluster::shared().create_database(db_name).await;
    let url = db.url.clone();
    let mut env = vec![vec![], vec![]];
    env.get_mut(faulted)
        .with_context(|| format!("no instance {faulted} in a pair"))?
        .push((var.to_string(), value.to_string()));
    let cluster = SequencerCluster::start_with_env(logs, db, 2, "", &env).await?;
    Ok((cluster, url))
}

/// `member` connected to instance 0 and to instance 1.
async fn connect_to_both(
    cluster: &SequencerCluster,
    member: &Member,
) -> anyhow::Result<[SequencerConnection; 2]> {
    Ok([
        connect_member(cluster, 0, member).await?,
        connect_member(cluster, 1, member).await?,
    ])
}

/// Sends `payload` to `to` alone through `conn`.
async fn send_to(
    conn: &SequencerConnection,
    message_id: &str,
    payload: &[u8],
    to: &MemberId,
    max_sequencing_time_micros: i64,
) -> Result<pb::SendResponse, ClientError> {
    conn.send(
        message_id,
        vec![envelope(payload.to_vec(), &[to])],
        max_sequencing_time_micros,
    )
    .await
}

/// Streams of `(member, instance)` pairs, read from counter 0 in the background until they
/// are told how many events to expect.
struct Readers<'a> {
    subs: Vec<(&'a Member, usize)>,
    conns: Vec<SequencerConnection>,
    targets: Vec<watch::Sender<Option<usize>>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Collected>>>,
}

impl<'a> Readers<'a> {
    async fn start(
        cluster: &SequencerCluster,
        subs: Vec<(&'a Member, usize)>,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        let (mut conns, mut targets, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for &(m, inst) in &subs {
            let conn = connect_member(cluster, inst, m).await?;
            let (tx, rx) = watch::channel(None);
            targets.push(tx);
            tasks.push(tokio::spawn(collect(
                conn.clone(),
                0,
                rx,
                deadline,
                Duration::from_millis(500),
            )));
            conns.push(conn);
        }
        Ok(Self {
            subs,
            conns,
            targets,
            tasks,
        })
    }

    /// Tells every reader to expect `n` events; their streams, in the order of `subs`.
    async fn collected(&mut self, n: usize) -> anyhow::Result<Vec<Collected>> {
        for tx in &self.targets {
            tx.send_replace(Some(n));
        }
        let mut collected = Vec::new();
        for task in self.tasks.drain(..) {
            collected.push(task.await??);
        }
        Ok(collected)
    }

    /// [`check_stream`] of every collected stream (from counter 0) against `by_ts`; prints
    /// `<member> on seq-<i>: all <n> <what> (<k> resubscribes)`.
    fn check(
        &self,
        collected: &[Collected],
        by_ts: &HashMap<i64, &Ack>,
        what: &str,
    ) -> anyhow::Result<EventVerifier> {
        let mut verifier = EventVerifier::default();
        for ((c, &(m, inst)), conn) in collected.iter().zip(&self.subs).zip(&self.conns) {
            let label = format!("{} on seq-{inst}", m.0.name());
            check_stream(&label, &mut verifier, conn, &c.events, 0, by_ts)?;
            println!(
                "{label}: all {} {what} ({} resubscribes)",
                c.events.len(),
                c.resubscribes
            );
        }
        Ok(verifier)
    }
}

/// `n` events of `conn`'s stream from counter `from` (30 s at most, then 300 ms more for
/// extra events).
async fn read_events(conn: &SequencerConnection, from: i64, n: usize) -> anyhow::Result<Collected> {
    let (_tx, rx) = watch::channel(Some(n));
    collect(
        conn.clone(),
        from,
        rx,
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(300),
    )
    .await
}

/// The streams `x` and `y` (of `whose` member, read from two places: `between`) are byte
/// for byte the same, as far as both go.
fn ensure_same_bytes(
    x: &Collected,
    y: &Collected,
    whose: &str,
    between: &str,
) -> anyhow::Result<()> {
    for (x, y) in x.events.iter().zip(&y.events) {
        ensure!(
            x.encode_to_vec() == y.encode_to_vec(),
            "{whose} event {} differs between {between}",
            x.counter
        );
    }
    Ok(())
}

/// Checks a stream read from `first_counter`: verified events, gap-free counters, strictly
/// increasing and chained timestamps, no duplicate message, and exactly the `expected`
/// acknowledged timestamps, each event carrying the acknowledged sender and message.
fn check_stream(
    label: &str,
    verifier: &mut EventVerifier,
    conn: &SequencerConnection,
    events: &[pb::SequencedEvent],
    first_counter: i64,
    expected: &HashMap<i64, &Ack>,
) -> anyhow::Result<()> {
    let mut validator = StreamValidator::default();
    let mut seen_ts = HashSet::new();
    let mut seen_payload: HashMap<Vec<u8>, i64> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let content = verifier
            .verify(conn, event)
            .with_context(|| format!("{label}: event {i} does not verify"))?;
        if i == 0 && first_counter > 0 {
            validator =
                StreamValidator::starting_after(first_counter - 1, event.previous_timestamp_micros);
        }
        validator
            .check(event)
            .with_context(|| format!("{label}: stream invalid at event {i}"))?;
        ensure!(
            event.counter == first_counter + i as i64,
            "{label}: event {i} has counter {}, expected {}",
            event.counter,
            first_counter + i as i64
        );
        ensure!(
            seen_ts.insert(event.timestamp_micros),
            "{label}: timestamp {} delivered twice",
            event.timestamp_micros
        );
        let payload: Vec<u8> = event
            .envelopes
            .iter()
            .filter_map(|d| d.envelope.as_ref())
            .flat_map(|e| e.content.to_vec())
            .collect();
        // A sender's own copy (receipt) carries the message id instead of envelopes.
        let payload = if event.message_id.is_empty() {
            payload
        } else {
            ensure!(
                payload.is_empty(),
                "{label}: receipt at {} carries envelopes",
                event.timestamp_micros
            );
            format!("payload of {}", event.message_id).into_bytes()
        };
        if let Some(prev) = seen_payload.insert(payload.clone(), event.timestamp_micros) {
            bail!(
                "{label}: the same submission ({}) was sequenced twice, at {prev} and {}",
                String::from_utf8_lossy(&payload),
                event.timestamp_micros
            );
        }
        let ack = expected.get(&event.timestamp_micros).with_context(|| {
            format!(
                "{label}: event at {} ({}) matches no acknowledged send",
                event.timestamp_micros,
                String::from_utf8_lossy(&payload)
            )
        })?;
        ensure!(
            content.sender == ack.sender
                && payload == format!("payload of {}", ack.message_id).into_bytes(),
            "{label}: event at {} is {} from {}, but {} was acknowledged at that timestamp",
            event.timestamp_micros,
            String::from_utf8_lossy(&payload),
            content.sender,
            ack.message_id
        );
    }
    let got: HashSet<i64> = seen_ts;
    let mut missing: Vec<&i64> = expected.keys().filter(|ts| !got.contains(ts)).collect();
    missing.sort();
    ensure!(
        missing.is_empty(),
        "{label}: {} acknowledged events missing (first: {:?})",
        missing.len(),
        missing
            .iter()
            .take(10)
            .map(|ts| (**ts, expected[ts].message_id.as_str()))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Indexes acknowledgements by timestamp; two acknowledged messages must never share one,
/// and one message must never be acknowledged with two different timestamps.
fn index_acks(acks: &[Ack]) -> anyhow::Result<HashMap<i64, &Ack>> {
    let mut by_ts = HashMap::new();
    let mut by_id: HashMap<(&str, &str), i64> = HashMap::new();
    for a in acks {
        if let Some(prev) = by_ts.insert(a.ts, a) {
            bail!(
                "{} and {} were both acknowledged at {}",
                prev.message_id,
                a.message_id,
                a.ts
            );
        }
        if let Some(prev) = by_id.insert((&a.sender, &a.message_id), a.ts) {
            bail!(
                "{} acknowledged twice, at {prev} and {}",
                a.message_id,
                a.ts
            );
        }
    }
    Ok(by_ts)
}

/// Largest gap between consecutive arrivals that ended within `[from, to]` (so a stall that
/// began before `from` counts in full), with the instant it ended.
fn largest_gap(arrivals: &[Instant], from: Instant, to: Instant) -> (Duration, Option<Instant>) {
    let mut best = (Duration::ZERO, None);
    for w in arrivals.windows(2) {
        if w[1] < from || w[1] > to {
            continue;
        }
        let gap = w[1] - w[0];
        if gap > best.0 {
            best = (gap, Some(w[1]));
        }
    }
    best
}

/// The `n` largest gaps between consecutive arrivals after `from`, as (end offset from
/// `reference`, gap) in milliseconds, for the log.
fn top_gaps(
    arrivals: &[Instant],
    from: Instant,
    reference: Instant,
    n: usize,
) -> Vec<(i128, u128)> {
    let mut gaps: Vec<(i128, u128)> = arrivals
        .windows(2)
        .filter(|w| w[1] >= from)
        .map(|w| {
            let end = if w[1] >= reference {
                (w[1] - reference).as_millis() as i128
            } else {
                -((reference - w[1]).as_millis() as i128)
            };
            (end, (w[1] - w[0]).as_millis())
        })
        .collect();
    gaps.sort_by_key(|g| std::cmp::Reverse(g.1));
    gaps.truncate(n);
    gaps
}

fn summarize_acks(label: &str, acks: &[Ack], t0: Instant) {
    let mut via: BTreeMap<usize, usize> = BTreeMap::new();
    for a in acks {
        *via.entry(a.via).or_default() += 1;
    }
    let retried = acks.iter().filter(|a| a.attempts > 1).count();
    let dedup = acks.iter().filter(|a| a.deduplicated).count();
    let last = acks
        .iter()
        .map(|a| a.acked_at)
        .max()
        .map(|t| t - t0)
        .unwrap_or_default();
    println!(
        "{label}: {} acknowledged (via {via:?}), {retried} retried, {dedup} deduplicated, last ack at +{last:.1?}",
        acks.len()
    );
}

/// Counts "writer online" lines in an instance's log (each is one go-online transition).
fn writer_online_count(cluster: &SequencerCluster, i: usize) -> usize {
    cluster.nodes[i]
        .process
        .as_ref()
        .map_or(0, |p| p.read_log().matches("\"writer online\"").count())
}

// ---------------------------------------------------------------------------------------
// 1. Commit-order race between instances.
// ---------------------------------------------------------------------------------------

/// Instance 0 holds every batch 300 ms before COMMIT (below the 1 s offline threshold), so
/// instance 1 commits and acknowledges later timestamps while instance 0's earlier ones are
/// still invisible. Readers must wait for them instead of skipping them.
#[test]
fn commit_order_race_never_skips() -> anyhow::Result<()> {
    run_serial("commit_order_race_never_skips", commit_order_race)
}

async fn commit_order_race(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, _) = faulted_pair(logs, "seq_race", 0, DELAY_BEFORE_COMMIT, "300").await?;
    let [a, b, r] = add_participants(&cluster, ["alice", "bob", "reader"]).await?;

    // Every event reaches all three members: alice -> {reader, bob}, bob -> {reader, alice}.
    let deadline = Instant::now() + Duration::from_secs(60);
    let subs: Vec<(&Member, usize)> = vec![(&r, 0), (&r, 1), (&a, 1), (&b, 0)];
    let mut readers = Readers::start(&cluster, subs, deadline).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let alice = LoadSender {
        conns: vec![(0, connect_member(&cluster, 0, &a).await?)],
        recipients: vec![r.0.clone(), b.0.clone()],
        interval: Duration::ZERO,
        in_flight: 3,
        attempt_timeout: Duration::from_secs(10),
        prefix: "alice".into(),
        preferred: Arc::default(),
    };
    let bob = LoadSender {
        conns: vec![(1, connect_member(&cluster, 1, &b).await?)],
        recipients: vec![r.0.clone(), a.0.clone()],
        interval: Duration::from_millis(70),
        in_flight: 4,
        attempt_timeout: Duration::from_secs(10),
        prefix: "bob".into(),
        preferred: Arc::default(),
    };
    let t0 = Instant::now();
    let alice_task = tokio::spawn(alice.run(stop.clone(), deadline));
    let bob_task = tokio::spawn(bob.run(stop.clone(), deadline));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let alice_acks = alice_task.await??;
    let bob_acks = bob_task.await??;
    summarize_acks("alice via seq-0 (delayed commits)", &alice_acks, t0);
    summarize_acks("bob via seq-1", &bob_acks, t0);
    ensure!(
        !alice_acks.is_empty() && !bob_acks.is_empty(),
        "both senders must have been acknowledged"
    );

    // The race happened: some event of instance 0 got a smaller timestamp than an event of
    // instance 1 that was acknowledged earlier.
    let mut inversions = 0usize;
    let mut overtaken = 0usize;
    let mut widest = Duration::ZERO;
    for x in &alice_acks {
        let mut hit = false;
        for y in &bob_acks {
            if x.ts < y.ts && y.acked_at < x.acked_at {
                inversions += 1;
                hit = true;
                widest = widest.max(x.acked_at - y.acked_at);
            }
        }
        overtaken += usize::from(hit);
    }
    println!(
        "commit-order inversions: {inversions} (instance-1 ack before an earlier-stamped instance-0 ack); \
         {overtaken} of {} instance-0 events overtaken; widest ack gap {widest:.0?}",
        alice_acks.len()
    );
    ensure!(
        inversions >= 1,
        "the fault did not produce a single commit-order inversion; the test proves nothing"
    );

    let all: Vec<Ack> = alice_acks.iter().chain(&bob_acks).cloned().collect();
    let by_ts = index_acks(&all)?;
    let collected = readers.collected(all.len()).await?;
    let verifier = readers.check(&collected, &by_ts, "events, in order, gap-free")?;
    // The reader's stream is byte-identical on both instances.
    ensure_same_bytes(&collected[0], &collected[1], "reader's", "instances")?;
    println!(
        "{} distinct events signature-verified",
        verifier.full_checks
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        println!("seq-{i}: {}", metrics_summary(&node.ops_url()).await);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. SIGKILL of one instance under load.
// ---------------------------------------------------------------------------------------

/// Kills instance 0 mid-load. Surviving instances stall delivery only until the peer is
/// marked offline (~1 s), senders fail over with the same request, nothing is lost or
/// duplicated, and the restarted instance serves the same history and new sends.
#[test]
fn sigkill_one_instance_under_load() -> anyhow::Result<()> {
    run_serial("sigkill_one_instance_under_load", sigkill_under_load)
}

async fn sigkill_under_load(logs: TestLogs) -> anyhow::Result<()> {
    let mut cluster = cluster_on_fresh_db(logs, "seq_kill", 3).await?;
    let mut senders: Vec<Member> = Vec::new();
    for i in 0..3 {
        senders.push(
            cluster
                .add_member(MemberRole::Participant, &format!("sender{i}"))
                .await?,
        );
    }
    let [o1, o2] = add_participants(&cluster, ["observer1", "observer2"]).await?;

    let deadline = Instant::now() + Duration::from_secs(90);
    let obs: Vec<(&Member, usize)> = vec![(&o1, 1), (&o2, 2)];
    let mut readers = Readers::start(&cluster, obs, deadline).await?;

    // sender0 lives on instance 0 and fails over to 1 and 2; sender1/2 on 1/2 fail over to
    // the other survivor.
    let homes = [vec![0, 1, 2], vec![1, 2], vec![2, 1]];
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, order) in homes.iter().enumerate() {
        let mut conns = Vec::new();
        for &inst in order {
            conns.push((inst, connect_member(&cluster, inst, &senders[i]).await?));
        }
        let sender = LoadSender {
            conns,
            recipients: vec![o1.0.clone(), o2.0.clone()],
            interval: Duration::from_millis(90),
            in_flight: 6,
            attempt_timeout: Duration::from_secs(3),
            prefix: format!("s{i}"),
            preferred: Arc::default(),
        };
        tasks.push(tokio::spawn(sender.run(stop.clone(), deadline)));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    let status = cluster.nodes[0].process()?.kill()?;
    println!("SIGKILLed seq-0 at +{:.1?} ({status})", killed_at - t0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let stopped_at = Instant::now();
    let mut acks = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let a = t.await??;
        summarize_acks(&format!("sender{i}"), &a, t0);
        acks.extend(a);
    }
    let by_ts = index_acks(&acks)?;
    let collected = readers.collected(acks.len()).await?;

    // Delivery stall on the survivors around the kill.
    let mut worst = Duration::ZERO;
    for (c, &(m, inst)) in collected.iter().zip(&readers.subs) {
        let (before, _) = largest_gap(&c.arrivals, t0 + Duration::from_millis(500), killed_at);
        let (gap, ended) =
            largest_gap(&c.arrivals, killed_at, stopped_at + Duration::from_secs(60));
        println!(
            "{} on seq-{inst}: largest delivery gap before the kill {} ms, after the kill {} ms \
             (ended at kill+{} ms); largest gaps (end ms rel. to kill, gap ms): {:?}",
            m.0.name(),
            before.as_millis(),
            gap.as_millis(),
            ended.map(|e| e - killed_at).unwrap_or_default().as_millis(),
            top_gaps(&c.arrivals, t0, killed_at, 4)
        );
        worst = worst.max(gap);
    }
    println!(
        "delivery stall on surviving instances after SIGKILL: {} ms (bound {STALL_BOUND:?})",
        worst.as_millis()
    );
    ensure!(
        worst <= STALL_BOUND,
        "delivery stalled for {worst:?} after the kill (bound {STALL_BOUND:?})"
    );
    let marked = (1..3).any(|i| {
        cluster.nodes[i]
            .process
            .as_ref()
            .is_some_and(|p| p.read_log().contains("marked stalled peer offline"))
    });
    ensure!(marked, "no survivor marked the killed seq-0 offline");

    // No loss, no duplicate, identical streams.
    let mut verifier = readers.check(&collected, &by_ts, "acknowledged events exactly once")?;
    for (x, y) in collected[0].events.iter().zip(&collected[1].events) {
        ensure!(
            x.timestamp_micros == y.timestamp_micros,
            "observers disagree on the order at counter {}",
            x.counter
        );
    }

    // Restart instance 0: it serves the same history, byte for byte, and accepts sends.
    let restart = Instant::now();
    cluster.start_node(0).await?;
    println!(
        "seq-0 restarted and SERVING after {:.1?}",
        restart.elapsed()
    );
    let s0 = connect_member(&cluster, 0, &senders[0]).await?;
    let mut after = Vec::new();
    for n in 0..10 {
        let message_id = format!("after-restart-{n}");
        let resp = s0
            .send(
                &message_id,
                vec![envelope(
                    format!("payload of {message_id}").into_bytes(),
                    &[&o1.0, &o2.0],
                )],
                now_micros() + 60_000_000,
            )
            .await
            .with_context(|| format!("send {message_id} via restarted seq-0"))?;
        ensure!(!resp.deduplicated, "{message_id} deduplicated");
        after.push(Ack {
            sender: senders[0].0.to_string(),
            message_id,
            ts: resp.sequencing_timestamp_micros,
            acked_at: Instant::now(),
            via: 0,
            attempts: 1,
            deduplicated: false,
        });
    }
    let all: Vec<Ack> = acks.iter().chain(&after).cloned().collect();
    let by_ts_all = index_acks(&all)?;
    let history = collected[0].events.len();
    let o1_on_0 = connect_member(&cluster, 0, &o1).await?;
    let replay = read_events(&o1_on_0, 0, all.len()).await?;
    check_stream(
        "observer1 on restarted seq-0",
        &mut verifier,
        &o1_on_0,
        &replay.events,
        0,
        &by_ts_all,
    )?;
    ensure_same_bytes(
        &collected[0],
        &replay,
        "observer1's",
        "seq-1 and restarted seq-0",
    )?;
    // The new events reach instance 2's subscribers too.
    let o2_conn = &readers.conns[1];
    let tail = read_events(o2_conn, history as i64, after.len()).await?;
    let after_ts: HashMap<i64, &Ack> = after.iter().map(|a| (a.ts, a)).collect();
    check_stream(
        "observer2 on seq-2 after the restart",
        &mut verifier,
        o2_conn,
        &tail.events,
        history as i64,
        &after_ts,
    )?;
    println!(
        "restarted seq-0 replays {history} events byte-identically and sequenced {} new sends; {} distinct events verified",
        after.len(),
        verifier.full_checks
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. A paused (hung) instance is excluded and recovers.
// ---------------------------------------------------------------------------------------

/// SIGSTOPs instance 0: instance 1 marks it offline and resumes delivery; after SIGCONT
/// instance 0 is fenced, goes through recovery, reports SERVING again, and its subscribers
/// see the complete, consistent stream.
#[test]
fn paused_instance_is_excluded_and_recovers() -> anyhow::Result<()> {
    run_serial("paused_instance_is_excluded_and_recovers", paused_instance)
}

async fn paused_instance(logs: TestLogs) -> anyhow::Result<()> {
    let mut cluster = cluster_on_fresh_db(logs, "seq_pause", 2).await?;
    let [s0m, s1m, r] = add_participants(&cluster, ["sender0", "sender1", "reader"]).await?;

    let deadline = Instant::now() + Duration::from_secs(90);
    let subs: Vec<(&Member, usize)> = vec![(&r, 1), (&r, 0)];
    let mut readers = Readers::start(&cluster, subs, deadline).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let sender1 = LoadSender {
        conns: vec![(1, connect_member(&cluster, 1, &s1m).await?)],
        recipients: vec![r.0.clone()],
        interval: Duration::from_millis(60),
        in_flight: 6,
        attempt_timeout: Duration::from_secs(5),
        prefix: "s1".into(),
        preferred: Arc::default(),
    };
    // sender0 prefers the paused instance and fails over to instance 1 on timeouts.
    let sender0 = LoadSender {
        conns: vec![
            (0, connect_member(&cluster, 0, &s0m).await?),
            (1, connect_member(&cluster, 1, &s0m).await?),
        ],
        recipients: vec![r.0.clone()],
        interval: Duration::from_millis(150),
        in_flight: 4,
        attempt_timeout: Duration::from_millis(1500),
        prefix: "s0".into(),
        preferred: Arc::default(),
    };
    let sender0_preferred = sender0.preferred.clone();
    let t0 = Instant::now();
    let tasks = [
        tokio::spawn(sender1.run(stop.clone(), deadline)),
        tokio::spawn(sender0.run(stop.clone(), deadline)),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;

    let onlines_before = writer_online_count(&cluster, 0);
    let paused_at = Instant::now();
    cluster.nodes[0].process()?.pause()?;
    println!("SIGSTOPped seq-0 at +{:.1?}", paused_at - t0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let resumed_at = Instant::now();
    cluster.nodes[0].process()?.resume()?;
    println!(
        "SIGCONTed seq-0 after a {:.1?} pause",
        resumed_at - paused_at
    );

    // Recovery: a fresh go-online transition, then ready on the ops port and SERVING on gRPC.
    let recover_deadline = Instant::now() + Duration::from_secs(20);
    while writer_online_count(&cluster, 0) <= onlines_before {
        ensure!(
            Instant::now() < recover_deadline,
            "seq-0's writer never went online again after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writer_back = resumed_at.elapsed();
    let node = &cluster.nodes[0];
    wait_for_http_ok(
        &format!("{}/health/ready", node.ops_url()),
        Duration::from_secs(15),
    )
    .await?;
    wait_for_health(
        &node.public_endpoint(),
        Some(cluster.client_tls()),
        "",
        Duration::from_secs(15),
    )
    .await?;
    println!(
        "seq-0 recovered: writer online again {writer_back:.0?} and SERVING {:.0?} after SIGCONT",
        resumed_at.elapsed()
    );
    // sender0 goes back to its (recovered) home instance.
    sender0_preferred.store(0, Ordering::Relaxed);
    let recovered_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let stopped_at = Instant::now();
    let mut acks = Vec::new();
    for (name, t) in ["sender1", "sender0"].iter().zip(tasks) {
        let a = t.await??;
        summarize_acks(name, &a, t0);
        acks.extend(a);
    }
    let via0_after = acks
        .iter()
        .filter(|a| a.via == 0 && a.acked_at > recovered_at)
        .count();
    println!("sends acknowledged by seq-0 after its recovery: {via0_after}");
    ensure!(via0_after > 0, "the recovered seq-0 acknowledged no send");

    let by_ts = index_acks(&acks)?;
    let collected = readers.collected(acks.len()).await?;
    // Delivery on instance 1 resumes once seq-0 is marked offline.
    let (before, _) = largest_gap(
        &collected[0].arrivals,
        t0 + Duration::from_millis(500),
        paused_at,
    );
    let (gap, ended) = largest_gap(
        &collected[0].arrivals,
        paused_at,
        stopped_at + Duration::from_secs(60),
    );
    println!(
        "reader on seq-1: largest delivery gap before the pause {} ms, during/after it {} ms \
         (resumed at pause+{} ms; bound {STALL_BOUND:?}); largest gaps (end ms rel. to pause, gap ms): {:?}",
        before.as_millis(),
        gap.as_millis(),
        ended.map(|e| e - paused_at).unwrap_or_default().as_millis(),
        top_gaps(&collected[0].arrivals, t0, paused_at, 4)
    );
    ensure!(
        gap <= STALL_BOUND,
        "delivery on seq-1 stalled for {gap:?} while seq-0 was paused"
    );
    let during = collected[0]
        .arrivals
        .iter()
        .filter(|t| **t > paused_at && **t < resumed_at)
        .count();
    println!("reader on seq-1 received {during} events while seq-0 was stopped");
    ensure!(
        during > 0,
        "seq-1 delivered nothing while seq-0 was stopped: it was never excluded"
    );
    let seq1_log = log_of(cluster.nodes[1].process.as_ref());
    ensure!(
        seq1_log.contains("marked stalled peer offline"),
        "seq-1 never marked the stopped seq-0 offline"
    );

    readers.check(&collected, &by_ts, "events exactly once, consistent")?;
    ensure_same_bytes(&collected[0], &collected[1], "reader's", "instances")
}

// ---------------------------------------------------------------------------------------
// Diagnostics.
// ---------------------------------------------------------------------------------------

/// A sequencer stopped (SIGSTOP) in the middle of a batch transaction keeps the dedup rows
/// of that batch locked. A client that retries the same message id on another instance
/// must not wait for the stopped process: once the peers mark it offline (stale heartbeat)
/// they terminate its writer backend, the stuck transaction aborts, and the retry is
/// sequenced, exactly once. (Found in CI: the retry blocked the other instances' batches,
/// their writers timed out one after the other and pings stopped for 10 s.)
#[test]
fn paused_inside_a_batch_does_not_block_retries() -> anyhow::Result<()> {
    run_serial(
        "paused_inside_a_batch_does_not_block_retries",
        paused_inside_a_batch,
    )
}

async fn paused_inside_a_batch(logs: TestLogs) -> anyhow::Result<()> {
    // seq-0 holds every batch open for 600 ms before its commit: time to stop it inside.
    // (A frozen process also stops the heartbeat its writer keeps up during a slow batch,
    // so its peers mark it offline after `offline-after`.)
    let (mut cluster, url) =
        faulted_pair(logs, "seq_paused_batch", 0, DELAY_BEFORE_COMMIT, "600").await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;
    let [via0, via1] = connect_to_both(&cluster, &alice).await?;
    let max_ts = now_micros() + 60_000_000;
    let message = envelope(b"sent while the instance froze".to_vec(), &[&bob.0]);

    let first = tokio::spawn({
        let message = message.clone();
        async move { via0.send("frozen-1", vec![message], max_ts).await }
    });
    // Inside seq-0's batch transaction: the dedup row is written, the commit is pending.
    tokio::time::sleep(Duration::from_millis(250)).await;
    cluster.nodes[0].process()?.pause()?;
    let paused_at = Instant::now();
    let retry = tokio::time::timeout(
        Duration::from_secs(15),
        via1.send("frozen-1", vec![message], max_ts),
    )
    .await;
    let took = paused_at.elapsed();
    cluster.nodes[0].process()?.resume()?;
    first.abort();
    let response = retry
        .context("the retry on seq-1 was still blocked 15 s after seq-0 froze")?
        .context("the retry on seq-1 failed")?;
    println!(
        "retry on seq-1 of the message seq-0 froze with: sequenced {took:?} after the freeze \
         (deduplicated: {})",
        response.deduplicated
    );
    let client = domain_e2e::checks::db_client(&url).await?;
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM seq_events WHERE message_id = 'frozen-1'",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        rows == 1,
        "{rows} events for the message, expected exactly 1"
    );
    ensure!(
        !response.deduplicated,
        "the frozen transaction cannot have committed"
    );
    ensure!(
        took <= STALL_BOUND,
        "the retry waited {took:?} for the frozen instance (bound {STALL_BOUND:?})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Issue 11 item 9: a batch slower than `offline-after` but within `commit-timeout`.
// ---------------------------------------------------------------------------------------

/// seq-0 holds every batch 1.2 s before its commit: longer than `ha.offline-after` (1 s),
/// shorter than `writer.commit-timeout` (2 s). The instance is alive and its batches
/// succeed, so its peer must not mark it offline (which fences the batch, and the retry
/// is just as slow, so it loops). Every send through it is acknowledged and it never goes
/// through a second online transition.
#[test]
fn slow_commit_within_commit_timeout_does_not_fence() -> anyhow::Result<()> {
    run_serial(
        "slow_commit_within_commit_timeout_does_not_fence",
        slow_commit_within_commit_timeout,
    )
}

async fn slow_commit_within_commit_timeout(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, _) =
        faulted_pair(logs, "seq_slow_commit", 0, DELAY_BEFORE_COMMIT, "1200").await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;
    let via0 = connect_member(&cluster, 0, &alice).await?;
    let online_before = writer_online_count(&cluster, 0);
    for i in 0..3 {
        let max_ts = now_micros() + 30_000_000;
        let message = envelope(format!("slow {i}").into_bytes(), &[&bob.0]);
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            via0.send(&format!("slow-{i}"), vec![message], max_ts),
        )
        .await
        .with_context(|| format!("send {i} through the slow instance hung"))?
        .with_context(|| format!("send {i} through the slow instance failed"))?;
        ensure!(
            !response.deduplicated,
            "send {i} was answered as a duplicate"
        );
    }
    let online_after = writer_online_count(&cluster, 0);
    let log = log_of(cluster.nodes[0].process.as_ref());
    ensure!(
        online_after == online_before,
        "the slow instance went online {} more time(s): its peer fenced it although every \
         batch finished within commit-timeout (fenced lines: {})",
        online_after - online_before,
        log.matches("fenced").count()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Issue 11 item 5: one instance's clock jumps forward; a forged watermark notification.
// ---------------------------------------------------------------------------------------

/// seq-1's clock runs an hour ahead. Its event batches announce watermarks an hour in the
/// future; seq-0 must not follow them (it did: every later timestamp of seq-0 was an hour
/// ahead, so sends with a normal max sequencing time failed). Then a forged NOTIFY with a
/// watermark near `i64::MAX` is ignored and logged, and sends keep working.
#[test]
fn clock_jump_of_one_instance_does_not_drag_time_forward() -> anyhow::Result<()> {
    run_serial(
        "clock_jump_of_one_instance_does_not_drag_time_forward",
        clock_jump_of_one_instance,
    )
}

async fn clock_jump_of_one_instance(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, url) = faulted_pair(logs, "seq_clock_jump", 1, CLOCK_OFFSET, "3600000").await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;
    let [via0, via1] = connect_to_both(&cluster, &alice).await?;

    // An event batch of the fast instance: its watermark notification is an hour ahead.
    let ahead = send_to(
        &via1,
        "from-the-future",
        b"fast clock",
        &bob.0,
        now_micros() + 2 * 3_600_000_000,
    )
    .await
    .context("send through the fast instance")?;
    ensure!(
        ahead.sequencing_timestamp_micros > now_micros() + 3_000_000_000,
        "the clock offset hook did not take effect (ts {})",
        ahead.sequencing_timestamp_micros
    );
    // Give seq-0 time to see the notification.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = domain_e2e::checks::db_client(&url).await?;
    for round in 0..2 {
        if round == 1 {
            client
                .execute(
                    "SELECT pg_notify('seq_watermark', '31:9223372036854775000:e')",
                    &[],
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for i in 0..3 {
            let sent_at = now_micros();
            let response = send_to(
                &via0,
                &format!("normal-{round}-{i}"),
                b"normal deadline",
                &bob.0,
                sent_at + 10_000_000,
            )
            .await
            .with_context(|| {
                format!(
                    "round {round}: a send through seq-0 with a 10 s max sequencing time \
                         failed (time dragged forward?)"
                )
            })?;
            ensure!(
                response.sequencing_timestamp_micros < sent_at + 10_000_000,
                "timestamp {} is beyond the send's deadline",
                response.sequencing_timestamp_micros
            );
        }
    }
    let log = log_of(cluster.nodes[0].process.as_ref());
    let ignored = log.matches("ignored a watermark notification").count();
    ensure!(
        ignored >= 2,
        "seq-0 logged {ignored} ignored watermark notifications, expected the fast peer's and \
         the forged one"
    );
    let metrics = domain_e2e::http_get(&cluster.nodes[0].ops_url(), "/metrics").await?;
    ensure!(
        metrics.lines().any(
            |l| l.starts_with("sequencer_peer_watermarks_ignored_total{")
                && l.contains("reason=\"ahead_of_clock\"")
        ),
        "the ignored watermarks are not counted in /metrics"
    );
    Ok(())
}

/// Issue 11 item 6: a member's stream starts strictly after its `registered_ts`, so an
/// event sequenced at or below it is stored and acknowledged but never delivered. seq-1's
/// clock runs 600 ms behind (within `ha.max-clock-skew`); a member registered through
/// seq-0 is sent to at once through seq-1, whose clock would place the event before the
/// registration. It must be delivered. Then a member registered further ahead of seq-1's
/// clock than the skew bound: the send is refused (retryable, nothing stored) rather than
/// dragging seq-1's time forward.
#[test]
fn event_to_a_member_registered_moments_earlier_is_delivered_item_6() -> anyhow::Result<()> {
    run_serial(
        "event_to_a_member_registered_moments_earlier_is_delivered_item_6",
        registered_moments_earlier,
    )
}

async fn registered_moments_earlier(logs: TestLogs) -> anyhow::Result<()> {
    let (cluster, url) = faulted_pair(logs, "seq_fresh_member", 1, CLOCK_OFFSET, "-600").await?;
    let [alice] = add_participants(&cluster, ["alice"]).await?;
    let via1 = connect_member(&cluster, 1, &alice).await?;
    let client = domain_e2e::checks::db_client(&url).await?;
    for round in 0..3 {
        // Registered through seq-0 (the cluster's admin calls go to the first instance).
        let fresh = cluster
            .add_member(MemberRole::Participant, &format!("fresh{round}"))
            .await?;
        let sent = send_to(
            &via1,
            &format!("to-fresh-{round}"),
            b"welcome",
            &fresh.0,
            now_micros() + 10_000_000,
        )
        .await
        .with_context(|| format!("round {round}: send to the fresh member through seq-1"))?;
        let registered: i64 = client
            .query_one(
                "SELECT registered_ts FROM seq_members WHERE member = $1",
                &[&fresh.0.to_string()],
            )
            .await?
            .get(0);
        ensure!(
            sent.sequencing_timestamp_micros > registered,
            "round {round}: the event got timestamp {} at or below the recipient's \
             registered_ts {registered}: its stream starts after it, so it is never delivered",
            sent.sequencing_timestamp_micros
        );
        let conn = connect_member(&cluster, 0, &fresh).await?;
        let mut stream = conn.subscribe(0).await?;
        let event = domain_e2e::checks::next_event(&mut stream, "fresh member's stream")
            .await
            .with_context(|| format!("round {round}: the event to the fresh member"))?;
        ensure!(
            event.timestamp_micros == sent.sequencing_timestamp_micros,
            "round {round}: first event of the fresh member is at {}, the send was sequenced at {}",
            event.timestamp_micros,
            sent.sequencing_timestamp_micros
        );
    }

    // A registration 5 s ahead of every clock (as if made by an instance whose clock is
    // fast): refused with SEQ_REGISTERED_AHEAD, nothing stored, seq-1 keeps its time.
    let ahead = SigningKeyPair::generate();
    let ahead_id = MemberId::new(
        MemberRole::Participant,
        domain_identity::UniqueId::new("ahead", *ahead.fingerprint())?,
    );
    client
        .execute(
            "INSERT INTO seq_members (member, registered_ts) VALUES ($1, $2)",
            &[&ahead_id.to_string(), &(now_micros() + 5_000_000)],
        )
        .await?;
    let events_before = query_i64(&client, "SELECT count(*) FROM seq_events", &[]).await?;
    match send_to(
        &via1,
        "to-ahead",
        b"too early",
        &ahead_id,
        now_micros() + 10_000_000,
    )
    .await
    {
        Ok(r) => bail!(
            "a send to a member registered 5 s ahead was sequenced at {} (time dragged forward)",
            r.sequencing_timestamp_micros
        ),
        Err(e) => {
            let text = format!("{e:#}");
            ensure!(
                text.contains("SEQ_REGISTERED_AHEAD"),
                "expected SEQ_REGISTERED_AHEAD, got: {text}"
            );
        }
    }
    let events_after = query_i64(&client, "SELECT count(*) FROM seq_events", &[]).await?;
    ensure!(
        events_after == events_before,
        "the refused send stored {} event(s)",
        events_after - events_before
    );
    let sent_at = now_micros();
    let normal = send_to(
        &via1,
        "after-ahead",
        b"normal",
        &alice.0,
        sent_at + 10_000_000,
    )
    .await?;
    ensure!(
        normal.sequencing_timestamp_micros < sent_at + 2_000_000,
        "seq-1's time moved forward: {} for a send at {sent_at}",
        normal.sequencing_timestamp_micros
    );
    Ok(())
}
