//! Total order across three active-active sequencer instances under concurrent load.
//!
//! Six members send ~10k submissions through three instances at once (direct messages to
//! random members, multi-envelope submissions, ~10% broadcasts). Every member reads its
//! stream from counter 0 on another instance than the one it sends through, and two members
//! read it on a second instance as well. The streams are compared with the send results:
//! exact membership, gap-free counters, strictly increasing timestamps, one global order,
//! and byte-identical events across instances, also when resuming from a later counter.
//!
//! Size: 6 x 1700 = 10 200 submissions, 16 in flight per sender. This needs ed25519 at
//! optimized speed (the workspace's `[profile.dev.package."*"] opt-level = 2`); in a build
//! with unoptimized crypto one verification costs ~25 ms (the sequencer verifies every
//! submission, the test every distinct event), so the test measures that cost first and
//! falls back to 6 x 250 with 4 in flight. `SEQ_ORDER_SENDS_PER_MEMBER` and
//! `SEQ_ORDER_IN_FLIGHT` override the size; `SEQ_TEST_SEED` replays a run.

use domain_e2e::streams::{collect, signed_key};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_e2e::{connect_member, metrics_summary, now_micros};
use domain_identity::{MemberId, MemberRole, SigningKeyPair};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::{
    ClientError, SequencerConnection, StreamValidator, check_event_content,
};
use domain_testkit::{pg::PgCluster, process::TestLogs};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;

const INSTANCES: usize = 3;
const MEMBERS: usize = 6;
/// How much each sender submits, and how many of its submissions are in flight at once.
#[derive(Debug, Clone, Copy)]
struct Load {
    sends_per_member: usize,
    in_flight: usize,
}

/// With fast crypto: 6 x 1700 = 10 200 submissions in total, 16 in flight per sender.
const FULL_LOAD: Load = Load {
    sends_per_member: 1700,
    in_flight: 16,
};
/// When ed25519 runs unoptimized (debug build): more than 4 in flight only queues up behind
/// signature checks and overloads two cores.
const DEBUG_LOAD: Load = Load {
    sends_per_member: 250,
    in_flight: 4,
};
/// Members that read their stream from a second instance too.
const DOUBLE_READERS: [usize; 2] = [0, 3];

/// A tiny deterministic PRNG (splitmix64), so the test needs no extra dependency and a
/// failing run can be replayed with `SEQ_TEST_SEED`.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Average cost of one ed25519 verification in this build.
fn verify_cost() -> Duration {
    let key = SigningKeyPair::generate();
    let sig = key
        .sign_with_domain_str(
            domain_identity::SignaturePurpose::Submission,
            "calibration::1220",
            b"payload",
        )
        .expect("signing works");
    let started = Instant::now();
    for _ in 0..3 {
        key.public_key()
            .verify_with_domain_str(
                domain_identity::SignaturePurpose::Submission,
                "calibration::1220",
                b"payload",
                &sig,
            )
            .expect("own signature verifies");
    }
    started.elapsed() / 3
}

/// Submissions per member and in-flight submissions per sender: full size with fast crypto,
/// reduced in an unoptimized build; `SEQ_ORDER_SENDS_PER_MEMBER` / `SEQ_ORDER_IN_FLIGHT`
/// override.
fn load_size() -> (usize, usize) {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
    };
    let cost = verify_cost();
    let load = if cost < Duration::from_millis(3) {
        FULL_LOAD
    } else {
        println!(
            "ed25519 verify costs {cost:.1?} (unoptimized build): reduced load; set \
             SEQ_ORDER_SENDS_PER_MEMBER={} or optimize the crypto crates for the 10k run",
            FULL_LOAD.sends_per_member
        );
        DEBUG_LOAD
    };
    let per_member = env("SEQ_ORDER_SENDS_PER_MEMBER").unwrap_or(load.sends_per_member);
    let in_flight = env("SEQ_ORDER_IN_FLIGHT").unwrap_or(load.in_flight).max(1);

    println!(
        "ed25519 verify {cost:.2?}; {MEMBERS} x {per_member} submissions, {in_flight} in flight per sender"
    );
    (per_member, in_flight)
}

fn seed() -> u64 {
    std::env::var("SEQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_micros() as u64)
}

/// What one member planned to send.
#[derive(Clone, Debug)]
struct Planned {
    sender: usize,
    message_id: String,
    envelopes: Vec<pb::Envelope>,
    broadcast: bool,
    /// Members (indexes) addressed directly by some envelope.
    addressed: Vec<usize>,
}

/// A planned submission with its result.
#[derive(Clone, Debug)]
struct Sent {
    plan: Planned,
    ts: i64,
}

/// Builds sender `s`'s `n`-th submission: ~10% broadcasts, otherwise 1-3 random other
/// members, a quarter of them split over two envelopes with different recipients.
fn plan_submission(rng: &mut Rng, ids: &[MemberId], s: usize, n: usize) -> Planned {
    let message_id = format!("m{s}-{n}");
    let content = |i: usize| {
        format!("{message_id}/{i}/payload-{:016x}", n as u64 * 31 + s as u64).into_bytes()
    };
    if rng.chance(10) {
        return Planned {
            sender: s,
            envelopes: vec![pb::Envelope {
                content: content(0).into(),
                recipients: vec![],
                broadcast: true,
            }],
            message_id,
            broadcast: true,
            addressed: vec![],
        };
    }
    let mut others: Vec<usize> = (0..ids.len()).filter(|&m| m != s).collect();
    let k = 1 + rng.below(3);
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        chosen.push(others.swap_remove(rng.below(others.len())));
    }
    chosen.sort_unstable();
    let to = |ms: &[usize]| ms.iter().map(|&m| ids[m].to_string()).collect::<Vec<_>>();
    let envelopes = if chosen.len() >= 2 && rng.chance(25) {
        let split = 1 + rng.below(chosen.len() - 1);
        vec![
            pb::Envelope {
                content: content(0).into(),
                recipients: to(&chosen[..split]),
                broadcast: false,
            },
            pb::Envelope {
                content: content(1).into(),
                recipients: to(&chosen[split..]),
                broadcast: false,
            },
        ]
    } else {
        vec![pb::Envelope {
            content: content(0).into(),
            recipients: to(&chosen),
            broadcast: false,
        }]
    };
    Planned {
        sender: s,
        message_id,
        envelopes,
        broadcast: false,
        addressed: chosen,
    }
}

/// The sequencer signs an event's content once for every recipient: verifies each distinct
/// signed part once with the client's `verify_event` (ed25519 is slow in debug builds), on
/// two threads. Returns the verified keys (see [`signed_key`]).
fn verify_signatures(
    conn: &SequencerConnection,
    streams: &[&[pb::SequencedEvent]],
) -> anyhow::Result<HashSet<[u8; 32]>> {
    let mut distinct: HashMap<[u8; 32], &pb::SequencedEvent> = HashMap::new();
    for stream in streams {
        for e in stream.iter() {
            distinct.entry(signed_key(e)?).or_insert(e);
        }
    }
    let work: Vec<([u8; 32], &pb::SequencedEvent)> = distinct.into_iter().collect();
    let (key, domain) = (&conn.sequencer_key, conn.domain_id.as_str());
    let results: Vec<anyhow::Result<Vec<[u8; 32]>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks(work.len().div_ceil(2).max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(k, e)| {
                            domain_sequencer_client::verify_event(key, domain, e)
                                .map(|_| *k)
                                .with_context(|| {
                                    format!("event at {} does not verify", e.timestamp_micros)
                                })
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("verifier thread panicked"))
            .collect()
    });
    let mut verified = HashSet::new();
    for r in results {
        verified.extend(r?);
    }
    Ok(verified)
}

/// Per-event part of `verify_event` once the signature of identical content has been
/// verified: timestamp and message id bound to the signed content, every delivered envelope
/// covered by the signed hashes.
fn check_binding(
    event: &pb::SequencedEvent,
    verified: &HashSet<[u8; 32]>,
) -> anyhow::Result<pb::SignedEventContent> {
    ensure!(
        verified.contains(&signed_key(event)?),
        "signature not verified"
    );
    Ok(check_event_content(event)?)
}

/// Checks one member's stream against the send results; returns its timestamps in order.
fn check_stream(
    label: &str,
    verified: &HashSet<[u8; 32]>,
    member: usize,
    ids: &[MemberId],
    events: &[pb::SequencedEvent],
    by_ts: &HashMap<i64, &Sent>,
    expected: &HashSet<i64>,
) -> anyhow::Result<Vec<i64>> {
    let mut validator = StreamValidator::default();
    let mut seen = HashSet::new();
    let mut order = Vec::with_capacity(events.len());
    let me = ids[member].to_string();
    for (i, event) in events.iter().enumerate() {
        let content = check_binding(event, verified)
            .with_context(|| format!("{label}: event {i} does not verify"))?;
        validator
            .check(event)
            .with_context(|| format!("{label}: stream invalid at event {i}"))?;
        ensure!(
            event.counter == i as i64,
            "{label}: event {i} has counter {}",
            event.counter
        );
        ensure!(
            seen.insert(event.timestamp_micros),
            "{label}: duplicate timestamp {}",
            event.timestamp_micros
        );
        let sent = by_ts.get(&event.timestamp_micros).with_context(|| {
            format!(
                "{label}: event at {} matches no acknowledged send",
                event.timestamp_micros
            )
        })?;
        ensure!(
            content.sender == ids[sent.plan.sender].to_string(),
            "{label}: event at {} has sender {} but {} was sequenced there",
            event.timestamp_micros,
            content.sender,
            sent.plan.message_id
        );
        let expected_envelopes: Vec<(u32, &pb::Envelope)> = sent
            .plan
            .envelopes
            .iter()
            .enumerate()
            .filter(|(_, e)| e.broadcast || e.recipients.contains(&me))
            .map(|(j, e)| (j as u32, e))
            .collect();
        let got: Vec<(u32, &pb::Envelope)> = event
            .envelopes
            .iter()
            .map(|d| {
                (
                    d.index,
                    d.envelope.as_ref().expect("verified envelopes are present"),
                )
            })
            .collect();
        ensure!(
            got == expected_envelopes,
            "{label}: event at {} ({}) delivers envelopes {got:?}, expected {expected_envelopes:?}",
            event.timestamp_micros,
            sent.plan.message_id
        );
        let expected_id = if sent.plan.sender == member {
            sent.plan.message_id.as_str()
        } else {
            ""
        };
        ensure!(
            event.message_id == expected_id,
            "{label}: event at {} carries message id {:?}, expected {expected_id:?}",
            event.timestamp_micros,
            event.message_id
        );
        order.push(event.timestamp_micros);
    }
    let got: HashSet<i64> = order.iter().copied().collect();
    let missing: Vec<_> = expected.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(expected).take(10).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{label}: {} events, expected {}; missing (first 10) {missing:?}, unexpected {extra:?}",
        got.len(),
        expected.len()
    );
    Ok(order)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_order_across_three_instances() -> anyhow::Result<()> {
    let logs = TestLogs::for_current_test();
    let result = total_order(logs.clone()).await;
    match &result {
        Ok(()) => logs.passed(),
        Err(_) => logs.mark_failed(),
    }
    result
}

async fn total_order(logs: TestLogs) -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = seed();
    println!("seed {seed} (replay with SEQ_TEST_SEED={seed})");
    let (per_member, in_flight) = load_size();
    let db = PgCluster::shared().create_database("seq_order").await;
    let cluster = SequencerCluster::start(logs, db, INSTANCES, "").await?;
    let mut members: Vec<(MemberId, Arc<SigningKeyPair>)> = Vec::new();
    for m in 0..MEMBERS {
        members.push(
            cluster
                .add_member(MemberRole::Participant, &format!("p{m}"))
                .await?,
        );
    }
    let ids: Vec<MemberId> = members.iter().map(|m| m.0.clone()).collect();

    // Send connections: two members per instance. Read connections: each member on the
    // next instance, the double readers also on the one after.
    let send_instance = |m: usize| m / 2 % INSTANCES;
    let mut senders = Vec::new();
    for (m, member) in members.iter().enumerate() {
        senders.push(connect_member(&cluster, send_instance(m), member).await?);
    }
    let mut readers: Vec<(usize, usize)> = (0..MEMBERS)
        .map(|m| (m, (send_instance(m) + 1) % INSTANCES))
        .collect();
    for m in DOUBLE_READERS {
        readers.push((m, (send_instance(m) + 2) % INSTANCES));
    }
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut targets = Vec::new();
    let mut collectors = Vec::new();
    for &(m, inst) in &readers {
        let conn = connect_member(&cluster, inst, &members[m]).await?;
        let (tx, rx) = watch::channel(None);
        targets.push(tx);
        collectors.push(tokio::spawn(collect(
            conn,
            0,
            rx,
            deadline,
            Duration::from_millis(500),
        )));
    }

    // Plan everything up front so the send loop is only I/O.
    let mut rng = Rng(seed);
    let plans: Vec<Vec<Planned>> = (0..MEMBERS)
        .map(|s| {
            (0..per_member)
                .map(|n| plan_submission(&mut rng, &ids, s, n))
                .collect()
        })
        .collect();
    let send_started = Instant::now();
    let max_seq = now_micros() + 600_000_000;
    let mut send_tasks = Vec::new();
    for (s, plans) in plans.into_iter().enumerate() {
        let conn = senders[s].clone();
        send_tasks.push(tokio::spawn(async move {
            let results: Vec<anyhow::Result<(Sent, u32)>> = futures::stream::iter(plans)
                .map(|plan| {
                    let conn = conn.clone();
                    async move {
                        let request = conn.sign_submission(&pb::SubmissionRequest {
                            sender: conn.member.id.to_string(),
                            message_id: plan.message_id.clone(),
                            envelopes: plan.envelopes.clone(),
                            max_sequencing_time_micros: max_seq,
                            time_proof: false,
                        });
                        let (resp, retries) =
                            send_retrying(&conn, request, &plan.message_id).await?;
                        ensure!(
                            retries > 0 || !resp.deduplicated,
                            "first send of {} was deduplicated",
                            plan.message_id
                        );
                        Ok((
                            Sent {
                                plan,
                                ts: resp.sequencing_timestamp_micros,
                            },
                            retries,
                        ))
                    }
                })
                .buffer_unordered(in_flight)
                .collect()
                .await;
            results
                .into_iter()
                .collect::<anyhow::Result<Vec<(Sent, u32)>>>()
        }));
    }
    let mut sent: Vec<Sent> = Vec::new();
    let mut retried = 0;
    for t in send_tasks {
        for (s, retries) in t.await?? {
            retried += usize::from(retries > 0);
            sent.push(s);
        }
    }
    let send_elapsed = send_started.elapsed();
    println!(
        "sent {} submissions ({} broadcasts, {retried} needed a retry) in {:.2?} ({:.0}/s)",
        sent.len(),
        sent.iter().filter(|s| s.plan.broadcast).count(),
        send_elapsed,
        sent.len() as f64 / send_elapsed.as_secs_f64()
    );

    // Every acknowledged send has its own timestamp.
    let mut by_ts: HashMap<i64, &Sent> = HashMap::new();
    for s in &sent {
        if let Some(prev) = by_ts.insert(s.ts, s) {
            bail!(
                "{} and {} were both sequenced at {}",
                prev.plan.message_id,
                s.plan.message_id,
                s.ts
            );
        }
    }
    // Expected timestamps per member: its receipts, what is addressed to it, all broadcasts.
    let mut expected: Vec<HashSet<i64>> = vec![HashSet::new(); MEMBERS];
    for s in &sent {
        expected[s.plan.sender].insert(s.ts);
        for &m in &s.plan.addressed {
            expected[m].insert(s.ts);
        }
        if s.plan.broadcast {
            for e in expected.iter_mut() {
                e.insert(s.ts);
            }
        }
    }
    for (tx, &(m, _)) in targets.iter().zip(&readers) {
        tx.send_replace(Some(expected[m].len()));
    }
    let mut collected = Vec::new();
    for c in collectors {
        collected.push(c.await??);
    }
    println!(
        "all subscriptions complete after {:.2?} from the first send",
        send_started.elapsed()
    );
    drop(targets);

    // Per stream: signatures, counters, timestamps, exact membership, envelopes.
    let verifier = connect_member(&cluster, 0, &members[0]).await?;
    let verify_started = Instant::now();
    let streams: Vec<&[pb::SequencedEvent]> =
        collected.iter().map(|c| c.events.as_slice()).collect();
    let verified = verify_signatures(&verifier, &streams)?;
    println!(
        "{} distinct signed events verified in {:.1?}",
        verified.len(),
        verify_started.elapsed()
    );
    let mut orders: Vec<Option<Vec<i64>>> = vec![None; MEMBERS];
    let mut first_read: BTreeMap<usize, &Vec<pb::SequencedEvent>> = BTreeMap::new();
    let mut delivered = 0;
    for (c, &(m, inst)) in collected.iter().zip(&readers) {
        let label = format!("{} read on seq-{inst}", ids[m]);
        let order = check_stream(&label, &verified, m, &ids, &c.events, &by_ts, &expected[m])?;
        println!(
            "{label}: {} events ok ({} resubscribes)",
            c.events.len(),
            c.resubscribes
        );
        delivered += c.events.len();
        match first_read.get(&m) {
            None => {
                first_read.insert(m, &c.events);
                orders[m] = Some(order);
            }
            Some(first) => {
                // Same member on two instances: byte-identical at every counter.
                ensure!(
                    first.len() == c.events.len(),
                    "{label}: {} events vs {}",
                    c.events.len(),
                    first.len()
                );
                for (a, b) in first.iter().zip(&c.events) {
                    ensure!(
                        a.encode_to_vec() == b.encode_to_vec(),
                        "{label}: event at counter {} differs between instances: {a:?} vs {b:?}",
                        a.counter
                    );
                }
                println!("{label}: byte-identical to its other instance");
            }
        }
    }

    // One global order: for every pair of members, their common events appear in the
    // same relative order in both streams.
    let positions: Vec<HashMap<i64, usize>> = orders
        .iter()
        .map(|o| {
            o.as_ref()
                .map(|o| o.iter().enumerate().map(|(i, ts)| (*ts, i)).collect())
                .unwrap_or_default()
        })
        .collect();
    let mut pairs_checked = 0usize;
    for a in 0..MEMBERS {
        for b in a + 1..MEMBERS {
            let order_a = orders[a].as_ref().context("member not read")?;
            let mut last_b: Option<usize> = None;
            let mut common = 0;
            for ts in order_a {
                if let Some(&pb_pos) = positions[b].get(ts) {
                    if let Some(prev) = last_b {
                        ensure!(
                            pb_pos > prev,
                            "{} and {} disagree on the order of the event at {ts}",
                            ids[a],
                            ids[b]
                        );
                    }
                    last_b = Some(pb_pos);
                    common += 1;
                }
            }
            ensure!(common > 0, "{} and {} share no events", ids[a], ids[b]);
            pairs_checked += common;
        }
    }
    // Resuming from a later counter (served from the nearest counter checkpoint) on an
    // instance that did not serve the member yet yields the same bytes at the same counters.
    for (&m, full) in &first_read {
        let used: Vec<usize> = readers.iter().filter(|r| r.0 == m).map(|r| r.1).collect();
        let inst = (0..INSTANCES)
            .find(|i| !used.contains(i))
            .unwrap_or(send_instance(m));
        let from = full.len() * 2 / 3;
        let n = (full.len() - from).min(8);
        let conn = connect_member(&cluster, inst, &members[m]).await?;
        let (_tx, rx) = watch::channel(Some(n));
        let resumed = collect(
            conn,
            from as i64,
            rx,
            Instant::now() + Duration::from_secs(30),
            Duration::ZERO,
        )
        .await?;
        ensure!(
            resumed.events.len() >= n,
            "{} resumed at {from} on seq-{inst}: only {} events",
            ids[m],
            resumed.events.len()
        );
        for (a, b) in full[from..from + n].iter().zip(&resumed.events) {
            ensure!(
                a.encode_to_vec() == b.encode_to_vec(),
                "{} resumed at {from} on seq-{inst}: event at counter {} differs: {a:?} vs {b:?}",
                ids[m],
                a.counter
            );
        }
    }
    println!(
        "resuming every member at 2/3 of its stream on a fresh instance gives identical events"
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        println!("seq-{i}: {}", metrics_summary(&node.ops_url()).await);
    }
    println!(
        "ok: {} submissions, {delivered} deliveries over {} subscriptions, {pairs_checked} common-event pairs ordered \
         consistently; total {:.2?}",
        sent.len(),
        readers.len(),
        started.elapsed()
    );
    Ok(())
}

/// Sends `request`, retrying the same signed request on UNAVAILABLE / RESOURCE_EXHAUSTED
/// (retryable by contract: deduplication by message id makes it exactly-once). Returns the
/// response and the number of retries.
async fn send_retrying(
    conn: &SequencerConnection,
    request: pb::SendRequest,
    label: &str,
) -> anyhow::Result<(pb::SendResponse, u32)> {
    let mut retries = 0;
    loop {
        match conn.send_signed(request.clone()).await {
            Ok(resp) => return Ok((resp, retries)),
            Err(ClientError::Status(st))
                if retries < 20
                    && matches!(
                        st.code(),
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                    ) =>
            {
                retries += 1;
                if retries == 1 {
                    println!(
                        "send {label}: {} ({}); retrying with the same request",
                        st.code(),
                        st.message()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(retries))).await;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("send {label} failed after {retries} retries"));
            }
        }
    }
}
