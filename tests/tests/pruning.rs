//! Pruning in a full domain (2 sequencers, active/passive mediator, domain manager,
//! participants pinging), with real processes and one real PostgreSQL:
//!
//! - the sequencer's tables stop growing while traffic goes on (rows measured against the
//!   events sequenced, not against a time), every member's acknowledgement stays close to
//!   the head (`domainctl pruning status`);
//! - after a SIGKILL of the active mediator the new active's first acknowledgement is not
//!   above what its database holds, and pruning goes on;
//! - a member that stops acknowledging holds pruning back and is named; `pruning force`
//!   moves past it and its resume below the bound gets `SEQ_EVENTS_PRUNED`;
//! - a participant admitted after all this still learns the topology (the mediator) and
//!   pings, and the others resume and ping.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_e2e::checks::{db_client, keep_logs_on_error};
use domain_proto::participant::admin::v1::PingVerdict;
use domain_testkit::process::{TestLogs, binary_path, wait_for_http_ok};
use serde_json::Value;

use domain_e2e::flt_participant::start_alice_and_bob;
use domain_e2e::participant::{Domain, Layout, ping_rpc, text};

/// Tables whose growth pruning must bound.
const TABLES: [&str; 5] = [
    "seq_events",
    "seq_recipients",
    "seq_dedup",
    "seq_nonces",
    "seq_tokens",
];

/// Runs `domainctl --sequencer-admin <every instance> <args>`.
async fn pruning_ctl(domain: &Domain, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(binary_path("domainctl"));
    for node in &domain.cluster.nodes {
        cmd.arg("--sequencer-admin").arg(node.admin_endpoint());
    }
    cmd.args(args).env_remove("DOMAINCTL_SEQUENCER_ADMIN");
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .context("domainctl did not finish within 30 s")?
        .context("cannot run domainctl")
}

async fn pruning_json(domain: &Domain, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = pruning_ctl(domain, &all).await?;
    ensure!(
        out.status.success(),
        "domainctl {args:?} failed: {}",
        text(&out)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Exact row counts of [`TABLES`].
async fn rows(db: &tokio_postgres::Client) -> anyhow::Result<BTreeMap<&'static str, i64>> {
    let mut out = BTreeMap::new();
    for t in TABLES {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await?
            .get(0);
        out.insert(t, n);
    }
    Ok(out)
}

/// Rows pruning deleted from each table so far, summed over the instances' metrics. An
/// instance whose metrics cannot be read this time (busy, or down) counts with the last
/// values read from it, so the sum never goes backwards.
async fn deleted(
    domain: &Domain,
    last: &mut Vec<BTreeMap<String, f64>>,
) -> anyhow::Result<BTreeMap<String, f64>> {
    last.resize(domain.cluster.nodes.len(), BTreeMap::new());
    for (i, node) in domain.cluster.nodes.iter().enumerate() {
        let Ok(text) = domain_e2e::http_get(&node.ops_url(), "/metrics").await else {
            continue;
        };
        let mut current = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("sequencer_pruned_rows_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Some(table) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("table=\""))
                .and_then(|t| t.strip_suffix('"'))
            else {
                continue;
            };
            *current.entry(table.to_owned()).or_default() += value.parse::<f64>().unwrap_or(0.0);
        }
        for (table, value) in current {
            let known = last[i].entry(table).or_default();
            *known = known.max(value);
        }
    }
    let mut out = BTreeMap::new();
    for per_instance in last.iter() {
        for (table, value) in per_instance {
            *out.entry(table.clone()).or_default() += value;
        }
    }
    Ok(out)
}

struct Sample {
    at: Duration,
    rows: BTreeMap<&'static str, i64>,
    deleted: BTreeMap<String, f64>,
}

impl Sample {
    /// Rows ever written to `table`: stored plus deleted by pruning.
    fn written(&self, table: &str) -> f64 {
        self.rows[table] as f64 + self.deleted.get(table).copied().unwrap_or(0.0)
    }
}

fn print_samples(samples: &[Sample]) {
    print!("{:>6}", "t(s)");
    for t in TABLES {
        print!(" {:>22}", format!("{t} rows/written"));
    }
    println!();
    for s in samples {
        print!("{:>6}", s.at.as_secs());
        for t in TABLES {
            print!(" {:>22}", format!("{}/{}", s.rows[t], s.written(t) as i64));
        }
        println!();
    }
}

/// Pings `from` → `to` in a loop until `stop`; returns (approved, failed).
async fn pinger(
    mut from: domain_proto::participant::admin::v1::participant_admin_service_client::ParticipantAdminServiceClient<
        tonic::transport::Channel,
    >,
    to: String,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    while !stop.load(Ordering::SeqCst) {
        match ping_rpc(&mut from, &to, Duration::from_secs(5)).await {
            Ok(r) if r.verdict() == PingVerdict::Approved => ok += 1,
            _ => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    (ok, failed)
}

/// Every counted member's status entry.
fn members(status: &Value) -> anyhow::Result<&Vec<Value>> {
    status["members"].as_array().context("members array")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_bounds_storage_in_a_full_domain() -> anyhow::Result<()> {
    let logs = TestLogs::for_current_test();
    keep_logs_on_error(&logs, body(logs.clone())).await
}

async fn body(logs: TestLogs) -> anyhow::Result<()> {
    let layout = Layout {
        sequencer_config: "pruning.interval = \"1s\"\npruning.retention = \"0s\"".to_owned(),
        mediator_replicas: 2,
        mediator_config: "acknowledge-interval = \"1s\"\nverdict-ttl = \"5s\"".to_owned(),
        participant_config: "acknowledge-interval = \"1s\"".to_owned(),
        ..Layout::default()
    };
    let mut domain = start_alice_and_bob(logs, layout, "approve", "5s").await?;
    let seq_db = db_client(&domain.cluster.database.url).await?;
    let alice = domain.participants[0].member.clone();
    let bob = domain.participants[1].member.clone();

    // --- 1. steady load: storage levels off -------------------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let pingers = vec![
        tokio::spawn(pinger(
            domain.participants[0].admin().await?,
            bob.clone(),
            stop.clone(),
        )),
        tokio::spawn(pinger(
            domain.participants[1].admin().await?,
            alice.clone(),
            stop.clone(),
        )),
    ];
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut per_instance = Vec::new();
    const WARMUP: Duration = Duration::from_secs(25);
    const RUN: Duration = Duration::from_secs(70);
    while started.elapsed() < RUN {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push(Sample {
            at: started.elapsed(),
            rows: rows(&seq_db).await?,
            deleted: deleted(&domain, &mut per_instance).await?,
        });
    }
    print_samples(&samples);
    let first = samples
        .iter()
        .position(|s| s.at >= WARMUP)
        .context("a sample after the warm-up")?;
    let (base, last) = (&samples[first], samples.last().context("samples")?);
    // Unbounded storage keeps every row written; bounded storage keeps a window. Over the
    // measured stretch the stored rows may grow by at most a quarter of the rows written,
    // and enough must have been written for that to mean something.
    for t in ["seq_events", "seq_recipients", "seq_dedup"] {
        let written = last.written(t) - base.written(t);
        let peak = samples[first..]
            .iter()
            .map(|s| s.rows[t])
            .max()
            .unwrap_or(0);
        let growth = (peak - base.rows[t]) as f64;
        println!(
            "{t}: {written} rows written after the warm-up, stored {} -> peak {peak}",
            base.rows[t]
        );
        ensure!(
            written >= 300.0,
            "{t}: only {written} rows written in the measured stretch; the load did not run"
        );
        ensure!(
            growth <= 0.25 * written,
            "{t}: stored rows grew by {growth} while {written} were written: not bounded"
        );
    }
    // Authentication rows: one token per member and instance, nonces consumed at once.
    for t in ["seq_nonces", "seq_tokens"] {
        let peak = samples[first..]
            .iter()
            .map(|s| s.rows[t])
            .max()
            .unwrap_or(0);
        ensure!(
            peak <= base.rows[t] + 8,
            "{t}: grew from {} to {peak} under steady load",
            base.rows[t]
        );
    }

    let status = pruning_json(&domain, &["pruning", "status"]).await?;
    println!("pruning status under load: {status:#}");
    ensure!(
        status["lower_bound_micros"].as_i64().unwrap_or(0) > 0,
        "pruning never moved the bound"
    );
    for m in members(&status)? {
        let kind = m["kind"].as_str().unwrap_or("");
        if kind == "domain-manager" {
            ensure!(
                m["counted"] == false,
                "the domain manager must not hold pruning back: {m}"
            );
            continue;
        }
        let age = m["acknowledged_age_micros"]
            .as_i64()
            .with_context(|| format!("{kind} never acknowledged: {m}"))?;
        ensure!(
            age <= 10_000_000,
            "{kind} {} acknowledged {age} µs ago, not within seconds of the head",
            m["member"]
        );
    }

    // --- 2. mediator failover: the new active acknowledges only what it persisted ------
    let bound_before = status["lower_bound_micros"].as_i64().unwrap_or(0);
    domain
        .mediator
        .as_mut()
        .context("active mediator")?
        .kill()?;
    let (standby, standby_ops) = domain
        .standby_mediators
        .first_mut()
        .context("standby mediator")?;
    wait_for_http_ok(
        &format!("{standby_ops}/health/ready"),
        Duration::from_secs(30),
    )
    .await
    .context("the standby mediator did not take over")?;
    let standby = standby.as_mut().context("standby process")?;
    standby
        .wait_for_log(
            "first acknowledgement of this session",
            Duration::from_secs(30),
        )
        .await?;
    let first_ack = standby
        .read_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "first acknowledgement of this session")
        .and_then(|v| v["acknowledged_ts"].as_i64())
        .context("acknowledged_ts in the new active's log")?;
    let med_db = db_client(&domain.mediator_db.url).await?;
    let persisted: i64 = med_db
        .query_one("SELECT last_ts FROM med_state", &[])
        .await?
        .get(0);
    println!("new active's first acknowledgement {first_ack}, persisted {persisted}");
    ensure!(
        first_ack <= persisted,
        "the new active acknowledged {first_ack}, above its persisted state {persisted}"
    );
    // Pruning goes on behind the new active.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = pruning_json(&domain, &["pruning", "status"]).await?;
        let bound = s["lower_bound_micros"].as_i64().unwrap_or(0);
        if bound > first_ack.max(bound_before) {
            println!("pruning continued after the failover: bound {bound_before} -> {bound}");
            break;
        }
        if Instant::now() >= deadline {
            bail!("pruning did not move past {first_ack} after the mediator failover: {s:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // --- 3. a member that stops acknowledging holds pruning back -------------------------
    stop.store(true, Ordering::SeqCst);
    let mut pings = (0, 0);
    for p in pingers {
        let (ok, failed) = p.await?;
        pings.0 += ok;
        pings.1 += failed;
    }
    println!(
        "pings during the run: {} approved, {} failed",
        pings.0, pings.1
    );
    ensure!(pings.0 > 0, "no ping succeeded");
    // Bob stops (his node is gone); alice keeps sending him pings he never processes.
    domain.participants[1]
        .process
        .as_mut()
        .context("bob's process")?
        .kill()?;
    let mut alice_admin = domain.participants[0].admin().await?;
    for _ in 0..3 {
        let _ = ping_rpc(&mut alice_admin, &bob, Duration::from_secs(1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let held = loop {
        let s = pruning_json(&domain, &["pruning", "status"]).await?;
        if s["holding_back"] == Value::String(bob.clone()) {
            break s;
        }
        if Instant::now() >= deadline {
            bail!("bob stopped acknowledging but is not named as holding pruning back: {s:#}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let table = pruning_ctl(&domain, &["pruning", "status"]).await?;
    println!("{}", String::from_utf8_lossy(&table.stdout));
    let bob_ack = members(&held)?
        .iter()
        .find(|m| m["member"] == Value::String(bob.clone()))
        .and_then(|m| m["acknowledged_micros"].as_i64())
        .context("bob's acknowledgement")?;
    // Bad input is refused before anything changes.
    for (args, why) in [
        (
            vec!["pruning", "force", "--below", "1h"],
            "no --dry-run/--yes",
        ),
        (
            vec![
                "pruning",
                "force",
                "--below",
                "2999-01-01T00:00:00Z",
                "--yes",
            ],
            "future bound",
        ),
        (
            vec!["pruning", "force", "--below", "next tuesday", "--yes"],
            "malformed time",
        ),
    ] {
        let out = pruning_ctl(&domain, &args).await?;
        ensure!(
            out.status.code() == Some(2),
            "{why}: expected exit 2, got {}",
            text(&out)
        );
    }
    let unchanged = pruning_json(&domain, &["pruning", "status"]).await?;
    ensure!(
        unchanged["lower_bound_micros"].as_i64() <= held["candidate_bound_micros"].as_i64(),
        "a refused force moved the bound"
    );
    // A dry run changes nothing; the real force moves past bob's unprocessed events (the
    // pings above, sent after his node died).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dry = pruning_json(&domain, &["pruning", "force", "--below", "1s", "--dry-run"]).await?;
    println!("force dry run: {dry:#}");
    ensure!(dry["dry_run"] == true, "dry run flagged");
    let after_dry = pruning_json(&domain, &["pruning", "status"]).await?;
    ensure!(
        after_dry["lower_bound_micros"] == unchanged["lower_bound_micros"]
            || after_dry["lower_bound_micros"].as_i64() <= held["candidate_bound_micros"].as_i64(),
        "the dry run moved the bound past what regular pruning allows"
    );
    let forced = pruning_json(&domain, &["pruning", "force", "--below", "1s", "--yes"]).await?;
    println!("forced: {forced:#}");
    let forced_bound = forced["bound_micros"].as_i64().unwrap_or(0);
    ensure!(
        forced_bound > bob_ack && forced["dry_run"] == false,
        "force did not move the bound past bob's acknowledgement {bob_ack}: {forced:#}"
    );
    // Bob resumes below the bound: refused with SEQ_EVENTS_PRUNED.
    domain.start_participant_no_wait(1)?;
    domain.participants[1]
        .process
        .as_ref()
        .context("bob's process")?
        .wait_for_log("[SEQ_EVENTS_PRUNED]", Duration::from_secs(30))
        .await
        .context("bob's resume below the forced bound was not refused with SEQ_EVENTS_PRUNED")?;
    // Bob cannot come back; an operator disables him, then pruning is free again.
    let out = domain
        .dms
        .domainctl(&["participants", "disable", &bob])
        .await?;
    ensure!(out.status.success(), "disable bob: {}", text(&out));
    domain.participants[1]
        .process
        .as_mut()
        .context("bob's process")?
        .kill()?;

    // --- 4. late joiner learns the topology; the others resume and ping ----------------
    let carol_i = domain.add_participant("carol", "approve", true).await?;
    let carol = domain.participants[carol_i].member.clone();
    let mut carol_admin = domain.participants[carol_i].admin().await?;
    // Connected is not caught up: until carol has read the topology history (kept by
    // pruning) she knows no mediator and refuses to ping with FAILED_PRECONDITION.
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match ping_rpc(&mut carol_admin, &alice, Duration::from_secs(10)).await {
            Ok(r) => break r,
            Err(st)
                if st.code() == tonic::Code::FailedPrecondition && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(st) => bail!("carol, admitted after pruning, cannot ping alice: {st}"),
        }
    };
    ensure!(r.verdict() == PingVerdict::Approved, "carol's ping: {r:?}");
    println!("carol, admitted after pruning, learned the mediator and pinged alice");
    // Alice restarts and resumes after her last processed event.
    domain.participants[0]
        .process
        .as_mut()
        .context("alice's process")?
        .terminate(Duration::from_secs(10))
        .await?;
    domain.start_participant(0).await?;
    let mut alice_admin = domain.participants[0].admin().await?;
    let r = ping_rpc(&mut alice_admin, &carol, Duration::from_secs(10))
        .await
        .context("alice, resumed, pings carol")?;
    ensure!(
        r.verdict() == PingVerdict::Approved,
        "alice's ping after resume: {r:?}"
    );
    let last = pruning_json(&domain, &["pruning", "status"]).await?;
    println!("final pruning status: {last:#}");
    Ok(())
}
