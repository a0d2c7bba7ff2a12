//! Resuming a long stream from an old counter starts from the nearest counter
//! checkpoint: it delivers the right event, and the catch-up queries read a
//! number of rows bounded by the checkpoint spacing, not by the stream length.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_backoff::{Backoff, BackoffConfig};
use domain_e2e::checks::db_client;
use domain_e2e::seq_db;
use domain_e2e::{connect, envelope, now_micros};
use domain_identity::MemberRole;
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::{ClientError, StreamValidator};
use domain_testkit::{pg::PgCluster, process::TestLogs};
use tonic::Code;

/// Events wanted; fewer are sent when the machine cannot do it within `BUDGET`.
const TARGET: usize = 100_000;
/// Never fewer than this, whatever it takes (override: `SEQ_RESUME_MIN_EVENTS`, e.g. for
/// a quick local run of a debug build, where ed25519 verification bounds the rate).
const MINIMUM: usize = 30_000;

fn minimum() -> usize {
    std::env::var("SEQ_RESUME_MIN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MINIMUM)
}
const BUDGET: Duration = Duration::from_secs(60);
/// Sends in flight at once (one HTTP/2 connection).
const CONCURRENCY: usize = 64;
/// `reader.checkpoint-every-events` (the default, set explicitly).
const CHECKPOINT_EVERY: i64 = 512;
/// Events requested before the end of the stream.
const BACK: usize = 10;
/// LIMIT the subscription's skip phase uses (subscription.rs).
const SKIP_LIMIT: i64 = 10_000;

// SQL copied verbatim from crates/sequencer/src/store.rs.
const SAFE_WATERMARK_SQL: &str = "SELECT coalesce(min(watermark_ts) FILTER (WHERE online), max(watermark_ts), 0)::bigint FROM seq_instances";
const CHECKPOINT_BELOW_SQL: &str = "SELECT counter, ts FROM seq_checkpoints WHERE member_id = $1 AND counter < $2 ORDER BY counter DESC LIMIT 1";
const MEMBER_TS_UNION: &str = "(SELECT ts FROM seq_recipients WHERE member_id = $1 AND ts > $2 AND ts <= $3 ORDER BY ts LIMIT $4)
     UNION ALL
     (SELECT ts FROM seq_recipients WHERE member_id = -1 AND ts > greatest($2, $5) AND ts <= $3 ORDER BY ts LIMIT $4)";

fn member_timestamps_sql() -> String {
    format!("SELECT ts FROM ({MEMBER_TS_UNION}) u ORDER BY ts LIMIT $4")
}

/// One plan node of an EXPLAIN ANALYZE.
#[derive(Debug)]
struct PlanNode {
    node_type: String,
    relation: String,
    index: String,
    condition: String,
    actual_rows: i64,
    loops: i64,
    removed: i64,
}

impl PlanNode {
    /// Rows the node produced or discarded over all its loops.
    fn rows_read(&self) -> i64 {
        self.actual_rows * self.loops + self.removed
    }
}

/// Runs `EXPLAIN (ANALYZE, FORMAT JSON)` of `sql` as a prepared statement executed
/// with `args` (SQL literals), the way tokio-postgres runs it (a custom plan for
/// these parameter values); returns the plan nodes in document order and the
/// execution time in ms.
async fn explain(
    db: &tokio_postgres::Client,
    name: &str,
    sql: &str,
    args: &[String],
) -> anyhow::Result<(Vec<PlanNode>, f64)> {
    db.batch_execute(&format!("DEALLOCATE ALL; PREPARE {name} AS {sql}"))
        .await?;
    let messages = db
        .simple_query(&format!(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE {name}({})",
            args.join(", ")
        ))
        .await?;
    let json = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .context("EXPLAIN returned no row")?;
    db.batch_execute(&format!("DEALLOCATE {name}")).await?;
    // PostgreSQL parses its own JSON for us.
    let rows = db
        .query(
            "SELECT p->>'Node Type', coalesce(p->>'Relation Name', ''), coalesce(p->>'Index Name', ''),
                    coalesce(p->>'Index Cond', p->>'Filter', ''),
                    coalesce((p->>'Actual Rows')::numeric, 0)::bigint,
                    coalesce((p->>'Actual Loops')::numeric, 1)::bigint,
                    coalesce((p->>'Rows Removed by Filter')::numeric, 0)::bigint
                      + coalesce((p->>'Rows Removed by Index Recheck')::numeric, 0)::bigint
             FROM jsonb_path_query($1::text::jsonb, 'strict $.**') p
             WHERE jsonb_typeof(p) = 'object' AND p ? 'Node Type'",
            &[&json],
        )
        .await?;
    let nodes = rows
        .iter()
        .map(|r| PlanNode {
            node_type: r.get(0),
            relation: r.get(1),
            index: r.get(2),
            condition: r.get(3),
            actual_rows: r.get(4),
            loops: r.get(5),
            removed: r.get(6),
        })
        .collect();
    let exec: f64 = seq_db::one(
        db,
        "SELECT ($1::text::jsonb -> 0 ->> 'Execution Time')::float8",
        &[&json],
    )
    .await?;
    Ok((nodes, exec))
}

fn print_plan(title: &str, nodes: &[PlanNode], exec_ms: f64) {
    println!("plan of {title} (execution {exec_ms:.3} ms):");
    for n in nodes {
        println!(
            "  {:<18} {:<16} {:<22} rows={} loops={} removed={} {}",
            n.node_type, n.relation, n.index, n.actual_rows, n.loops, n.removed, n.condition
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_old_counter_uses_checkpoint() -> anyhow::Result<()> {
    let logs = TestLogs::new("resume_from_old_counter_uses_checkpoint");
    let result = resume_body(logs.clone()).await;
    if result.is_err() {
        // Returning Err is no panic: keep the logs and print their tails anyway.
        logs.mark_failed();
    } else {
        logs.passed();
    }
    result
}

async fn resume_body(logs: TestLogs) -> anyhow::Result<()> {
    let database = PgCluster::shared().create_database("seq_resume").await;
    let config = domain_localnet::config::settings(&[
        ("reader.checkpoint-interval", "200ms".into()),
        ("reader.checkpoint-every-events", CHECKPOINT_EVERY.into()),
        ("pruning.interval", "0s".into()),
    ]);
    let cluster = SequencerCluster::start(logs, database.clone(), 1, &config).await?;
    let db = db_client(&database.url).await?;
    let alice = cluster.add_member(MemberRole::Participant, "alice").await?;
    let bob = cluster.add_member(MemberRole::Participant, "bob").await?;
    let a = connect(&cluster, 0, &alice).await?;

    // What one client-side signature costs in this build (the sequencer verifies it and
    // signs the event once more, so this bounds the rate on 2 cores).
    let probe = pb::SubmissionRequest {
        sender: alice.0.to_string(),
        message_id: "probe".into(),
        envelopes: vec![envelope(b"ev-probe".to_vec(), &[&bob.0])],
        max_sequencing_time_micros: now_micros() + 120_000_000,
        time_proof: false,
    };
    let t = Instant::now();
    for _ in 0..200 {
        std::hint::black_box(a.sign_submission(std::hint::black_box(&probe)));
    }
    println!(
        "client: one sign_submission takes {:?} in this build",
        t.elapsed() / 200
    );

    // --- load: small events to bob, many in flight ---------------------------------
    let minimum = minimum();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (a, next, bob_id) = (a.clone(), next.clone(), bob.0.clone());
        workers.spawn(async move {
            let mut sent: Vec<(i64, usize)> = Vec::new();
            let mut retries: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                if started.elapsed() >= BUDGET && next.load(Ordering::Relaxed) >= minimum {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= TARGET {
                    break;
                }
                let sub = pb::SubmissionRequest {
                    sender: a.member.id.to_string(),
                    message_id: format!("m-{i}"),
                    envelopes: vec![envelope(format!("ev-{i}").into_bytes(), &[&bob_id])],
                    max_sequencing_time_micros: now_micros() + 120_000_000,
                    time_proof: false,
                };
                let req = a.sign_submission(&sub);
                let first_try = Instant::now();
                let mut backoff = Backoff::new(BackoffConfig::new(
                    Duration::from_millis(50),
                    Duration::from_secs(1),
                ));
                let resp = loop {
                    match a.send_signed(req.clone()).await {
                        Ok(r) => break r,
                        // Overload, a recovering writer or an unknown outcome: retry with the
                        // same message id, deduplication makes it exactly-once.
                        Err(ClientError::Status(st))
                            if first_try.elapsed() < Duration::from_secs(60)
                                && matches!(
                                    st.code(),
                                    Code::Unavailable | Code::ResourceExhausted
                                ) =>
                        {
                            let code = domain_e2e::checks::error_code(&st);
                            *retries
                                .entry(format!("{:?}/{}", st.code(), code.unwrap_or("-")))
                                .or_default() += 1;
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                        Err(e) => bail!("send m-{i} failed: {e}"),
                    }
                };
                sent.push((resp.sequencing_timestamp_micros, i));
            }
            anyhow::Ok((sent, retries))
        });
    }
    let mut progress = tokio::time::interval(Duration::from_secs(30));
    progress.tick().await;
    let mut sent: Vec<(i64, usize)> = Vec::new();
    let mut retries: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(r) => {
                    let (s, n) = r??;
                    sent.extend(s);
                    for (code, k) in n {
                        *retries.entry(code).or_default() += k;
                    }
                }
                None => break,
            },
            _ = progress.tick() => {
                let issued = next.load(Ordering::Relaxed).min(TARGET);
                println!("  {:>5.1}s: ~{issued} sends issued", started.elapsed().as_secs_f64());
            }
        }
    }
    let elapsed = started.elapsed();
    let n = sent.len();
    println!(
        "sent {n} events in {elapsed:.1?}: {:.0} events/s through gRPC ({CONCURRENCY} in flight; retried sends by cause: {retries:?}){}",
        n as f64 / elapsed.as_secs_f64(),
        if n < TARGET {
            format!("; {TARGET} did not fit in {BUDGET:?}")
        } else {
            String::new()
        }
    );
    ensure!(n >= minimum, "only {n} events sent");
    sent.sort_unstable();
    ensure!(
        sent.windows(2).all(|w| w[0].0 < w[1].0),
        "sequencing timestamps are unique"
    );

    // --- checkpoints ---------------------------------------------------------------
    let (bob_id, bob_registered): (i32, i64) = seq_db::two(
        &db,
        "SELECT id, registered_ts FROM seq_members WHERE member = $1",
        &[&bob.0.to_string()],
    )
    .await?;
    // The checkpointer checkpoints every 512 new events; wait until it has caught up
    // with the end of the stream (fewer than 512 events after the last checkpoint).
    let wait_start = Instant::now();
    let last_cp = loop {
        let last: i64 = seq_db::one(
            &db,
            "SELECT coalesce(max(counter), -1) FROM seq_checkpoints WHERE member_id = $1",
            &[&bob_id],
        )
        .await?;
        if (n as i64 - 1) - last < CHECKPOINT_EVERY {
            break last;
        }
        if wait_start.elapsed() > Duration::from_secs(60) {
            bail!("checkpoints did not catch up: last counter {last} of {n} events");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counters: Vec<i64> = db
        .query(
            "SELECT counter FROM seq_checkpoints WHERE member_id = $1 ORDER BY counter",
            &[&bob_id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let gaps: Vec<i64> = counters.windows(2).map(|w| w[1] - w[0]).collect();
    let max_gap = gaps
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(n as i64 - 1 - last_cp);
    let min_gap = gaps.iter().skip(1).copied().min().unwrap_or(0);
    println!(
        "{} checkpoints for bob (last at counter {last_cp}), spacing min {min_gap} / max {max_gap} events \
         (checkpoint-every-events {CHECKPOINT_EVERY}, interval 200ms); waited {:?}",
        counters.len(),
        wait_start.elapsed()
    );
    // Checkpoints at exactly the counters the stream had: each one's timestamp is
    // that counter's event timestamp.
    for r in db
        .query(
            "SELECT counter, ts FROM seq_checkpoints WHERE member_id = $1 AND counter >= 0",
            &[&bob_id],
        )
        .await?
    {
        let (c, ts): (i64, i64) = (r.get(0), r.get(1));
        let event_ts = usize::try_from(c)
            .ok()
            .and_then(|c| sent.get(c))
            .map(|e| e.0);
        ensure!(
            event_ts == Some(ts),
            "checkpoint {c} has ts {ts}, the event with that counter has {event_ts:?}"
        );
    }

    // --- resume near the end ---------------------------------------------------------
    let from = n - BACK;
    let b = connect(&cluster, 0, &bob).await?;
    let resume_started = Instant::now();
    let mut stream = b.subscribe(from as i64).await?;
    let mut validator = StreamValidator::starting_after(from as i64 - 1, sent[from - 1].0);
    for (k, &(want_ts, want_index)) in sent.iter().enumerate().skip(from) {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .with_context(|| format!("no event {k} within 30s"))??
            .and_then(|r| r.event)
            .context("stream ended")?;
        if k == from {
            println!(
                "first event after resuming from {from}: counter {} after {:?}",
                e.counter,
                resume_started.elapsed()
            );
        }
        b.verify_event(&e)?;
        validator.check(&e)?;
        let content = e
            .envelopes
            .first()
            .and_then(|d| d.envelope.as_ref())
            .map(|env| env.content.to_vec());
        let expected = format!("ev-{want_index}").into_bytes();
        ensure!(
            e.counter == k as i64
                && e.timestamp_micros == want_ts
                && content.as_deref() == Some(expected.as_slice()),
            "counter {k}: got counter {} ts {} content {:?}, expected ts {} content {:?}",
            e.counter,
            e.timestamp_micros,
            content.map(|c| String::from_utf8_lossy(&c).into_owned()),
            want_ts,
            String::from_utf8_lossy(&expected)
        );
    }
    println!(
        "resumed from counter {from}: counters {from}..{} delivered with the right content",
        n - 1
    );

    // --- the catch-up queries, as the subscription runs them ---------------------------
    let up_to: i64 = seq_db::one(&db, SAFE_WATERMARK_SQL, &[]).await?;

    let (cp_counter, cp_ts): (i64, i64) = db
        .query_opt(CHECKPOINT_BELOW_SQL, &[&bob_id, &(from as i64)])
        .await?
        .map_or((-1, bob_registered), |r| (r.get(0), r.get(1)));
    println!(
        "checkpoint_below({from}) = counter {cp_counter} at ts {cp_ts}; safe watermark {up_to}"
    );
    ensure!(cp_counter >= 0, "a checkpoint exists below counter {from}");

    let (cp_plan, cp_ms) = explain(
        &db,
        "seq_checkpoint_below",
        CHECKPOINT_BELOW_SQL,
        &[bob_id.to_string(), from.to_string()],
    )
    .await?;
    print_plan("checkpoint_below", &cp_plan, cp_ms);
    let cp_rows: i64 = cp_plan
        .iter()
        .filter(|p| p.relation == "seq_checkpoints")
        .map(PlanNode::rows_read)
        .sum();
    ensure!(
        cp_rows <= 1,
        "checkpoint_below reads {cp_rows} checkpoint rows, expected one index probe"
    );

    let args = [
        bob_id.to_string(),
        cp_ts.to_string(),
        up_to.to_string(),
        SKIP_LIMIT.to_string(),
        bob_registered.to_string(),
    ];
    let (ts_plan, ts_ms) = explain(
        &db,
        "seq_member_timestamps",
        &member_timestamps_sql(),
        &args,
    )
    .await?;
    print_plan("member_timestamps (skip phase)", &ts_plan, ts_ms);
    let scans: Vec<&PlanNode> = ts_plan
        .iter()
        .filter(|p| p.relation == "seq_recipients")
        .collect();
    ensure!(!scans.is_empty(), "the plan scans seq_recipients");
    // Index Scan / Index Only Scan, or a Bitmap Heap Scan over a Bitmap Index Scan
    // (chosen while the table has no statistics yet): never a Seq Scan.
    ensure!(
        scans
            .iter()
            .all(|p| p.node_type.contains("Index") || p.node_type == "Bitmap Heap Scan"),
        "seq_recipients must be read through its index: {scans:?}"
    );
    let rows_read: i64 = scans.iter().map(|p| p.rows_read()).sum();
    let after_checkpoint = n as i64 - 1 - cp_counter;
    let remainder = n as i64 - from as i64;
    let bound = max_gap.max(CHECKPOINT_EVERY) + remainder;
    println!(
        "timestamp scan read {rows_read} seq_recipients rows for a stream of {n} events: {after_checkpoint} events after \
         checkpoint {cp_counter}; bound = spacing {} + remainder {remainder} = {bound}",
        max_gap.max(CHECKPOINT_EVERY)
    );
    ensure!(
        rows_read == after_checkpoint,
        "the scan should read exactly the {after_checkpoint} events after the checkpoint, read {rows_read}"
    );
    ensure!(
        rows_read <= bound,
        "the scan read {rows_read} rows, more than spacing + remainder = {bound}"
    );
    ensure!(
        rows_read * 10 < n as i64,
        "the scan read {rows_read} rows: proportional to the stream ({n}), not to the checkpoint spacing"
    );
    ensure!(
        max_gap * 10 < n as i64,
        "checkpoints are too sparse: spacing {max_gap} for {n} events"
    );
    Ok(())
}
