//! Issue 11 item 3: an instance's memory is bounded in bytes, not item counts, and what
//! is over a bound is shed with the retryable `SEQ_OVERLOADED`. Real `sequencer`
//! processes over one PostgreSQL:
//!
//! - a send over the writer queue's byte budget (or its sender's share of it) is refused
//!   at once with `SEQ_OVERLOADED` and leaves no trace;
//! - a member flooding an instance with max-size sends and idle catch-up subscriptions
//!   keeps the instance's RSS under a bound derived from the configured budgets, while
//!   another member keeps sending and receiving.
//!
//! The tests of this file run one at a time (they measure memory and share 2 cores).

use domain_e2e::e2e_test;
use domain_e2e::seq_cluster::{one_instance_env, start_with_db};
use domain_e2e::seq_member::add_participants;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_e2e::checks::error_code;
use domain_e2e::{connect, envelope, http_get, now_micros};
use domain_identity::{MemberId, SigningKeyPair};
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::{ClientError, ClientOptions, DomainClient, SequencerConnection};
use domain_testkit::process::TestLogs;
use tonic::Code;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Member = (MemberId, Arc<SigningKeyPair>);

/// Sum of the samples of `name` (with `labels` inside its braces, if given) in a
/// Prometheus text page.
fn metric(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.is_empty() || l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `VmRSS` or `VmHWM` of a process, in bytes, from `/proc/<pid>/status`.
fn vm_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()
        .with_context(|| format!("bad {field} line {line:?}"))?;
    Ok(kib * 1024)
}

const MIB: u64 = 1024 * 1024;

/// The outcome of a raw send (no retries): `Ok(true)` sequenced, `Ok(false)` refused with
/// `SEQ_OVERLOADED`, `Err` anything else.
fn overloaded(
    r: &Result<domain_proto::sequencer::v1::SendResponse, ClientError>,
) -> anyhow::Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(ClientError::Status(st))
            if st.code() == Code::ResourceExhausted && error_code(st) == Some("SEQ_OVERLOADED") =>
        {
            Ok(false)
        }
        Err(e) => anyhow::bail!("unexpected send error: {e}"),
    }
}

// ---------------------------------------------------------------------------
// A send over the queue's byte budget is refused and stores nothing
// ---------------------------------------------------------------------------

e2e_test! {
    /// With every batch held 1.5 s before its commit (fault hook), concurrent sends of
    /// ~40 KiB fill the writer queue's byte budget: of 4 concurrent sends by alice two fit
    /// her share (`writer.max-member-queue-bytes` = 100,000: two submissions of ~41,500
    /// bytes + 512 bookkeeping each), the others get `SEQ_OVERLOADED` at once
    /// (`member_queue_bytes`); bob's first send then fits the total budget
    /// (`writer.max-queue-bytes` = 140,000: room for three), his second does not
    /// (`queue_bytes`). Every refused message id is absent from the database, every accepted
    /// one is sequenced. A send of alice's through the client library meanwhile is refused
    /// too, retried with backoff, and sequenced once her share has room again. Before the
    /// byte budget every send was queued (count bound 20,000).
    serial send_over_queue_budget_is_overloaded_and_stores_nothing_item_3 => queue_budget_body
}

async fn queue_budget_body(logs: TestLogs) -> anyhow::Result<()> {
    // A held batch delays the database success that readiness waits for: without a longer
    // grace, health would turn NOT_SERVING and the library would abandon its attempt.
    let config = "max-request-size = 65536

[writer]
max-queue-bytes = 140000
max-member-queue-bytes = 100000

[ha]
db-health-grace = \"10s\"
";
    let env = one_instance_env("SEQUENCER_FAULT_DELAY_BEFORE_COMMIT_MS", 1500);
    let (cluster, db) = start_with_db(logs, "seq_overload_queue", 1, config, &env).await?;
    let [alice, bob] = add_participants(&cluster, ["alice", "bob"]).await?;
    let a = connect(&cluster, 0, &alice).await?;
    let b = connect(&cluster, 0, &bob).await?;
    let alice_client = connect_client(&cluster, &alice).await?;
    let deadline = now_micros() + 60_000_000;
    let payload = vec![7u8; 40 * 1024];

    // Alice: 4 at once. The first is in the (held) batch, the second waits in the queue.
    let sends = (0..4).map(|i| {
        let a = a.clone();
        let m = envelope(payload.clone(), &[&alice.0]);
        async move { a.send(&format!("a-{i}"), vec![m], deadline).await }
    });
    let alice_sends = tokio::spawn(futures::future::join_all(sends));
    // Give alice's sends time to reach the queue (they are answered only after the batch).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let library_send = {
        let m = envelope(payload.clone(), &[&alice.0]);
        tokio::spawn(async move {
            alice_client
                .send_detailed("a-client", vec![m], deadline)
                .await
        })
    };
    let mut bob_results = Vec::new();
    for i in 0..2 {
        let m = envelope(payload.clone(), &[&bob.0]);
        let b = b.clone();
        bob_results.push(tokio::spawn(async move {
            b.send(&format!("b-{i}"), vec![m], deadline).await
        }));
        // Bob's first must be queued before his second asks.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice_results = alice_sends.await?;
    let receipt = library_send
        .await?
        .context("the client library retries SEQ_OVERLOADED until the send fits")?;
    ensure!(
        receipt.attempts >= 2,
        "alice's share was full when the library send started, so it needed a retry: {receipt:?}"
    );
    let mut bob_out = Vec::new();
    for h in bob_results {
        bob_out.push(h.await?);
    }

    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (who, results) in [("a", &alice_results), ("b", &bob_out)] {
        for (i, r) in results.iter().enumerate() {
            let id = format!("{who}-{i}");
            if overloaded(r).with_context(|| id.clone())? {
                accepted.push(id);
            } else {
                refused.push(id);
            }
        }
    }
    accepted.sort();
    refused.sort();
    // Alice's 4 race each other: any two of hers fit, then bob's first.
    let alice_ok = accepted.iter().filter(|m| m.starts_with("a-")).count();
    ensure!(
        alice_ok == 2 && accepted.len() == 3 && accepted.contains(&"b-0".to_string()),
        "expected two of alice's sends and bob's first to fit the budgets; accepted {accepted:?}, refused {refused:?}"
    );
    for id in &refused {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM seq_dedup WHERE message_id = $1",
                &[id],
            )
            .await?
            .get(0);
        ensure!(n == 0, "refused send {id} left a deduplication row");
    }
    let stored: i64 = db
        .query_one("SELECT count(*) FROM seq_events", &[])
        .await?
        .get(0);
    ensure!(
        stored == accepted.len() as i64 + 1,
        "{stored} events stored, {} raw sends and the library send accepted",
        accepted.len()
    );
    let page = http_get(&cluster.nodes[0].ops_url(), "/metrics").await?;
    let member = metric(
        &page,
        "sequencer_load_shed_total",
        "reason=\"member_queue_bytes\"",
    );
    let total = metric(&page, "sequencer_load_shed_total", "reason=\"queue_bytes\"");
    // Alice's two raw refusals, and the library's first attempt at least.
    ensure!(
        member >= 3.0 && total == 1.0,
        "load-shed counters: member_queue_bytes {member}, queue_bytes {total}"
    );
    ensure!(
        metric(&page, "sequencer_writer_queue_bytes", "") == 0.0,
        "every charge is released once the sends are answered"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// One member flooding an instance: RSS stays bounded, the others keep working
// ---------------------------------------------------------------------------

/// Content bytes of a flood message: just under `max-request-size` (256 KiB) once
/// wrapped in a `SubmissionRequest`.
const FLOOD_CONTENT: usize = 255 * 1024;
/// Sends the flooding member keeps in flight (each task sends again as soon as it has
/// an answer, without backoff).
const FLOOD_IN_FLIGHT: usize = 128;
/// Catch-up subscriptions the flooding member opens from counter 0 (one reads an event
/// every 500 ms, the others never read).
const CATCH_UPS: usize = 4;
/// How long the flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(12);

/// The instance's budgets in this test, and what they bound (the derivation of
/// [`rss_bound`]):
///
/// | key | value |
/// |---|---|
/// | `max-request-size` (R) | 256 KiB |
/// | `public-api.max-message-size` (M) | 320 KiB |
/// | `overload.max-concurrent-requests` (C) | 16 (12 per caller: more than the member's queue share holds) |
/// | `writer.max-queue-bytes` (Q) | 4 MiB (`max-member-queue-bytes` 2 MiB) |
/// | `writer.max-batch-bytes` (B) | 1 MiB |
/// | `reader.page-size` (P) | 4 events |
/// | `reader.feed-buffer` (F) | 16 pages |
/// | `reader.subscription-buffer` (S) | 4 events |
const CONFIG: &str = "max-request-size = 262144

[overload]
max-concurrent-requests = 16
max-concurrent-requests-per-caller = 12

[writer]
max-queue-bytes = 4194304
max-member-queue-bytes = 2097152
max-batch-bytes = 1048576

[reader]
page-size = 4
feed-buffer = 16
subscription-buffer = 4
";

/// Most the instance's RSS may grow over its idle baseline under the flood:
///
/// - calls being handled: C × 3M (tonic's receive buffer, the decoded request, the decoded
///   `SubmissionRequest` during validation) = 16 × 960 KiB = 15 MiB;
/// - calls shed on arrival: their bodies are dropped unread; HTTP/2 flow control keeps
///   at most the 1 MiB connection window per connection in buffers: 4 connections
///   (the flooder's two, the other member's, its health checks) = 4 MiB;
/// - the writer: Q of queued and batched submissions, plus the batch's encoded statement
///   (≤ B + R, copied once more into the socket buffer): 4 + 2 × 1.25 = 6.5 MiB;
/// - the shared reader: F pages of P events of ≤ R bytes, plus the page being read and
///   decoded (2 × P × R): 16 + 2 = 18 MiB;
/// - each subscription (4 catch-ups + the other member's): its page read and decoded
///   (2 × P × R), its buffer towards the client (S × R) and HTTP/2's send buffer (400 KiB):
///   5 × (2 + 1 + 0.4) = 17 MiB.
///
/// That is 60.5 MiB; the allocator keeps freed blocks of many threads' arenas for reuse,
/// so the bound allows as much again for fragmentation: 120 MiB.
///
/// Before the byte budgets (counts only), the flooding member's 128 sends in flight were
/// all accepted, each held three times (request, queued copy, batch copy; ~100 MiB), and
/// batched up to 1,000 at a time.
fn rss_bound() -> u64 {
    120 * MIB
}

e2e_test! {
    serial memory_bounded_in_bytes_item_3 => memory_bounded_body
}

async fn memory_bounded_body(logs: TestLogs) -> anyhow::Result<()> {
    let env = one_instance_env("SEQUENCER__PUBLIC_API__MAX_MESSAGE_SIZE", 320 * 1024);
    let (mut cluster, _db) = start_with_db(logs, "seq_overload_rss", 1, CONFIG, &env).await?;
    let [flooder, other] = add_participants(&cluster, ["flooder", "other"]).await?;

    let pid = cluster.nodes[0].process()?.pid();
    let ops = cluster.nodes[0].ops_url();

    let other_client = connect_client(&cluster, &other).await?;
    let mut other_events = other_client.subscribe(0)?;
    let flood = connect(&cluster, 0, &flooder).await?;
    // The flooder's catch-ups go through a connection (and token) of their own: its
    // sending connection has every slot it may hold busy.
    let flood_reader = connect(&cluster, 0, &flooder).await?;
    // The other member works before the flood.
    round_trip(&other_client, &mut other_events, &other.0, "warm-up").await?;
    let baseline = vm_bytes(pid, "VmRSS")?;

    let stop = Arc::new(AtomicBool::new(false));
    let sequenced = Arc::new(AtomicU64::new(0));
    let shed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let content: Vec<u8> = (0..FLOOD_CONTENT).map(|i| (i * 31 % 251) as u8).collect();
    for t in 0..FLOOD_IN_FLIGHT {
        let (flood, stop, sequenced, shed, content, me) = (
            flood.clone(),
            stop.clone(),
            sequenced.clone(),
            shed.clone(),
            content.clone(),
            flooder.0.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = flood
                    .send(
                        &format!("flood-{t}-{n}"),
                        vec![envelope(content.clone(), &[&me])],
                        now_micros() + 60_000_000,
                    )
                    .await;
                match overloaded(&r) {
                    Ok(true) => sequenced.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => shed.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err(e),
                };
            }
            anyhow::Ok(())
        }));
    }

    // RSS sampler.
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(rss) = vm_bytes(pid, "VmRSS") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Once there is something to catch up on: catch-ups from counter 0 that never read
    // (one reads slowly).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut catch_ups = Vec::new();
    for _ in 0..CATCH_UPS {
        catch_ups.push(subscribe_retrying(&flood_reader).await?);
    }
    let slow_reader = {
        let mut stream = catch_ups.pop().context("a catch-up")?;
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if stream.message().await.ok().flatten().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Meanwhile the other member keeps sending to itself and receiving.
    let started = Instant::now();
    let mut trips = 0;
    while started.elapsed() < FLOOD_FOR {
        round_trip(
            &other_client,
            &mut other_events,
            &other.0,
            &format!("other-{trips}"),
        )
        .await
        .with_context(|| format!("other member's round trip {trips} during the flood"))?;
        trips += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let _ = sampler.await;
    slow_reader.abort();
    drop(catch_ups);

    let hwm = vm_bytes(pid, "VmHWM")?;
    let peak = peak.load(Ordering::Relaxed).max(hwm);
    let page = http_get(&ops, "/metrics").await?;
    let report = format!(
        "baseline RSS {} MiB, peak {} MiB (bound baseline + {} MiB); flooder: {} sequenced, {} shed; \
         other member: {trips} round trips in {:?}; load shed: concurrency {}, caller_concurrency {}, queue_bytes {}, member_queue_bytes {}",
        baseline / MIB,
        peak / MIB,
        rss_bound() / MIB,
        sequenced.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        FLOOD_FOR,
        metric(&page, "sequencer_load_shed_total", "reason=\"concurrency\""),
        metric(
            &page,
            "sequencer_load_shed_total",
            "reason=\"caller_concurrency\""
        ),
        metric(&page, "sequencer_load_shed_total", "reason=\"queue_bytes\""),
        metric(
            &page,
            "sequencer_load_shed_total",
            "reason=\"member_queue_bytes\""
        ),
    );
    eprintln!("{report}");
    ensure!(
        cluster.nodes[0].process()?.is_running(),
        "the instance died: {report}"
    );
    ensure!(
        sequenced.load(Ordering::Relaxed) >= 20,
        "the flood must actually reach the database: {report}"
    );
    ensure!(
        peak <= baseline + rss_bound(),
        "RSS grew past its bound: {report}"
    );
    ensure!(trips >= 5, "the other member was starved: {report}");
    Ok(())
}

/// Opens a subscription from counter 0, retrying while the instance sheds it.
async fn subscribe_retrying(
    conn: &SequencerConnection,
) -> anyhow::Result<tonic::Streaming<domain_proto::sequencer::v1::SubscribeResponse>> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match conn.subscribe(0).await {
            Ok(s) => return Ok(s),
            Err(ClientError::Status(st))
                if error_code(&st) == Some("SEQ_OVERLOADED") && Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).context("catch-up subscription"),
        }
    }
}

/// A client of `member` over every instance of `cluster`.
async fn connect_client(
    cluster: &SequencerCluster,
    member: &Member,
) -> anyhow::Result<DomainClient> {
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.public_endpoint()).collect();
    domain_e2e::domain_client(cluster, &endpoints, member, ClientOptions::default()).await
}

/// Sends a small message to `me` through the client library (which retries
/// `SEQ_OVERLOADED` with backoff) and waits until it arrives on `events`.
async fn round_trip(
    client: &DomainClient,
    events: &mut domain_sequencer_client::Subscription,
    me: &MemberId,
    id: &str,
) -> anyhow::Result<()> {
    let sent = client
        .send(
            id,
            vec![envelope(id.as_bytes().to_vec(), &[me])],
            now_micros() + 20_000_000,
        )
        .await
        .with_context(|| format!("send {id}"))?;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.next())
            .await
            .with_context(|| format!("{id} not delivered within 20 s"))?
            .context("subscription ended")?
            .context("subscription failed")?;
        if event.event.timestamp_micros == sent.sequencing_timestamp_micros {
            return Ok(());
        }
    }
}
