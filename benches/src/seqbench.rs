//! Orchestration of `seqbench`: a fresh database, phase 1 (raw PostgreSQL), a
//! real sequencer cluster with TLS, members, verifying subscribers, phase 2
//! (unbounded throughput) and phase 3 (paced latency), then the report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use domain_identity::{MemberId, SigningKeyPair};
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::SequencerConnection;
use domain_testkit::pg::PgCluster;
use domain_testkit::process::TestLogs;

use crate::cli::Args;
use crate::idle::{self, IdleResult};
use crate::load::{self, SendConfig, Stats, Window};
use crate::prom::{self, Scrape, SequencerMetrics};
use crate::report::{CpuPerEvent, Machine, PhaseResult, Shape, Summary};
use crate::sysstat::{self, CpuUsage};
use crate::{Percentiles, rawpg};

/// Phase 0b's warm-up and window: enough for a stable rate, short beside phases 2 and 3.
const FLOOR_WARMUP: Duration = Duration::from_secs(2);
const FLOOR_WINDOW: Duration = Duration::from_secs(5);

/// How long subscribers may take to receive everything acknowledged after a phase.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs every phase and returns the summary; fails on any verification error.
pub async fn run(args: Args) -> anyhow::Result<Summary> {
    args.validate()?;
    let unix_time = u64::try_from(crate::now_micros() / 1_000_000).unwrap_or(0);
    let mut summary = Summary {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        unix_time,
        machine: Machine::detect(),
        shape: Shape {
            instances: args.instances,
            senders: args.senders,
            subscribers: args.subscribers,
            fanout: args.fanout,
            idle_subscribers_per_instance: args.idle_subscribers,
            payload_bytes: args.payload_bytes,
            in_flight_per_sender: args.in_flight,
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: args.duration.as_secs_f64(),
            tls: true,
            sequencer_config: args.sequencer_config.clone(),
        },
        ..Summary::default()
    };

    // Resolved first, so a missing nats-server fails before the long phases.
    let nats_server = match &args.jetstream {
        Some(explicit) => Some(crate::jetstream::find_server(explicit.as_deref())?),
        None => None,
    };

    let crypto = crate::crypto::measure(args.payload_bytes)?;
    eprintln!(
        "seqbench: phase 0: ed25519 sign {:.1} us, verify {:.1} us",
        crypto.sign_us, crypto.verify_us
    );
    summary.crypto = Some(crypto);

    if !args.skip_floor {
        let floor = crate::floor::run(
            args.payload_bytes,
            args.senders,
            args.in_flight,
            args.subscribers,
            FLOOR_WARMUP,
            FLOOR_WINDOW,
        )
        .await
        .context("phase 0b (transport floor)")?;
        eprintln!(
            "seqbench: phase 0b: transport floor {:.0} events/s, {:.1} us CPU per event",
            floor.events_per_sec, floor.cpu_micros_per_event
        );
        summary.transport_floor = Some(floor);
    }

    let pg = PgCluster::shared();
    let db = pg
        .try_create_database("bench")
        .await
        .context("cannot create the bench database")?;
    eprintln!(
        "seqbench: database {} on {}",
        db.name,
        redact(pg.admin_url())
    );
    let others = crate::pgstat::other_databases(&db.url).await?;
    summary.server_databases = others;
    if others > crate::pgstat::MANY_DATABASES {
        eprintln!(
            "seqbench: WARNING: the server holds {others} databases (kept by failed tests?); \
             autovacuum visiting them costs PostgreSQL CPU during the run. Drop them for \
             figures worth comparing."
        );
    }

    if !args.skip_raw {
        eprintln!(
            "seqbench: phase 1: raw PostgreSQL, {} connections x {} rows/txn for {:?}",
            args.raw_connections, args.raw_batch, args.raw_duration
        );
        let raw = rawpg::run(
            &db.url,
            args.raw_connections,
            args.raw_batch,
            args.raw_duration,
            args.payload_bytes,
        )
        .await?;
        eprintln!(
            "seqbench: phase 1: {:.0} rows/s, txn p50 {:.2} ms p99 {:.2} ms",
            raw.rows_per_sec, raw.txn_latency.p50_ms, raw.txn_latency.p99_ms
        );
        summary.raw_postgres = Some(raw);
    }
    if let (Some(f), Some(c)) = (&summary.transport_floor, &summary.crypto) {
        let row_us = summary
            .raw_postgres
            .as_ref()
            .map_or(0.0, |r| r.postgres_cpu_micros_per_row);
        summary.ceiling = Some(crate::floor::Ceiling::of(f, c.sign_us, c.verify_us, row_us));
    }

    let logs = TestLogs::new("seqbench");
    if args.keep_logs {
        logs.keep();
    }
    let extra = args.sequencer_config.replace("\\n", "\n");
    let mut cluster = SequencerCluster::start(logs.clone(), db.clone(), args.instances, &extra)
        .await
        .context("cannot start the sequencer cluster")?;
    eprintln!(
        "seqbench: {} sequencer instances up; logs in {}",
        args.instances,
        logs.dir().display()
    );
    let result = drive(&args, &cluster, &mut summary).await;
    match &result {
        Ok(()) => logs.passed(),
        Err(_) => logs.mark_failed(),
    }
    for node in &mut cluster.nodes {
        if let Some(p) = node.process.as_mut()
            && let Err(e) = p.terminate(Duration::from_secs(10)).await
        {
            eprintln!("seqbench: {e:#}");
        }
    }
    drop(cluster);
    if result.is_ok() && !args.keep_logs {
        if let Err(e) = pg.drop_database(&db).await {
            eprintln!("seqbench: could not drop database {}: {e:#}", db.name);
        }
    } else {
        eprintln!("seqbench: database {} kept", db.name);
    }
    result?;
    // After the sequencer cluster has stopped, so the two do not compete for the box.
    if let Some(binary) = &nats_server {
        let js = crate::jetstream::run(&args, binary).await?;
        eprintln!(
            "seqbench: phase 4: {:.0} acked/s, {:.0} delivered/s, send->deliver p50 {:.2} ms p99 {:.2} ms",
            js.window.acked_per_sec,
            js.window.delivered_per_sec,
            js.window.send_to_deliver.p50_ms,
            js.window.send_to_deliver.p99_ms
        );
        summary.jetstream = Some(js);
    }
    summary.evaluate_targets();
    Ok(summary)
}

async fn drive(
    args: &Args,
    cluster: &SequencerCluster,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let instances = cluster.nodes.len();
    let senders = idle::register(cluster, "sender", args.senders).await?;
    let subscribers = idle::register(cluster, "subscriber", args.subscribers).await?;
    // Registered before the first RSS reading, so that the member tables a sequencer may
    // cache count in neither the before nor the after of the idle subscribers' cost.
    let registering = Instant::now();
    let idle_members = idle::register(cluster, "idle", args.idle_subscribers * instances).await?;
    let register_seconds = registering.elapsed().as_secs_f64();
    if !idle_members.is_empty() {
        eprintln!(
            "seqbench: {} idle members registered in {register_seconds:.1}s",
            idle_members.len()
        );
    }
    let mut sender_conns: Vec<SequencerConnection> = Vec::new();
    for (i, m) in senders.iter().enumerate() {
        sender_conns.push(
            cluster
                .connect(i % instances, m)
                .await
                .with_context(|| format!("sender {i}"))?,
        );
    }
    let stats = Stats::new(args.subscribers);
    let verified = load::VerifiedEvents::for_fanout(args.fanout);
    let subscriber_ids: Arc<Vec<String>> =
        Arc::new(subscribers.iter().map(|m| m.0.to_string()).collect());
    let mut sub_tasks = Vec::new();
    for (i, m) in subscribers.iter().enumerate() {
        let conn = cluster
            .connect(i % instances, m)
            .await
            .with_context(|| format!("subscriber {i}"))?;
        sub_tasks.push(load::spawn_subscriber(
            i,
            conn,
            stats.clone(),
            args.payload_bytes,
            args.inject_fault.filter(|_| i == 0),
            verified.clone(),
        ));
    }
    let pids: Vec<u32> = cluster
        .nodes
        .iter()
        .filter_map(|n| n.process.as_ref().map(|p| p.pid()))
        .collect();
    if !idle_members.is_empty() {
        match connect_idle(args, cluster, &idle_members, &stats, &pids).await {
            Ok((tasks, mut result)) => {
                sub_tasks.extend(tasks);
                result.register_seconds = register_seconds;
                summary.idle = Some(result);
            }
            Err(e) => {
                for t in sub_tasks {
                    t.abort();
                }
                return Err(e);
            }
        }
    }
    let ops: Vec<String> = cluster.nodes.iter().map(|n| n.ops_url()).collect();

    let rig = Rig {
        args,
        sender_conns: &sender_conns,
        subscriber_ids: &subscriber_ids,
        stats: &stats,
        pids: &pids,
        ops: &ops,
        db_url: &cluster.database.url,
    };
    let result = async {
        let mut measured = 0.0;
        if !args.skip_throughput {
            let p2 = rig.run_phase("throughput", 2, None).await?;
            measured = p2.window.acked_per_sec;
            summary.throughput = Some(p2);
        }
        if !args.skip_latency {
            let rate = match args.rate {
                Some(0) => None,
                Some(r) => Some(r as f64),
                None => Some((measured / 4.0).max(1.0)),
            };
            summary.latency = Some(rig.run_phase("latency", 3, rate).await?);
        }
        anyhow::Ok(())
    }
    .await;
    for t in sub_tasks {
        t.abort();
    }
    result
}

/// Reads the sequencers' RSS, subscribes the idle members, lets the processes settle and
/// reads it again.
async fn connect_idle(
    args: &Args,
    cluster: &SequencerCluster,
    members: &[(MemberId, Arc<SigningKeyPair>)],
    stats: &Arc<Stats>,
    pids: &[u32],
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, IdleResult)> {
    anyhow::ensure!(
        pids.len() == cluster.nodes.len(),
        "only {} of {} sequencer processes are running",
        pids.len(),
        cluster.nodes.len()
    );
    wait_checking(stats, idle::SETTLE, None).await?;
    let rss_before_bytes = idle::rss_of(pids)?;
    let subscribing = Instant::now();
    let (tasks, connections, busy_retries) = idle::subscribe(
        cluster,
        members,
        args.idle_subscribers,
        args.idle_streams_per_connection,
        stats,
    )
    .await?;
    let subscribe_seconds = subscribing.elapsed().as_secs_f64();
    let after = async {
        wait_checking(stats, idle::SETTLE, None).await?;
        idle::rss_of(pids)
    }
    .await;
    let rss_after_bytes = match after {
        Ok(r) => r,
        Err(e) => {
            for t in tasks {
                t.abort();
            }
            return Err(e);
        }
    };
    let result = IdleResult {
        per_instance: args.idle_subscribers,
        total: members.len(),
        streams_per_connection: args.idle_streams_per_connection,
        connections,
        register_seconds: 0.0,
        subscribe_seconds,
        busy_retries,
        rss_per_idle_subscriber_bytes: IdleResult::per_subscriber(
            &rss_before_bytes,
            &rss_after_bytes,
            members.len(),
        ),
        rss_before_bytes,
        rss_after_bytes,
    };
    eprintln!(
        "seqbench: {} idle subscribers on {} connections subscribed in {subscribe_seconds:.1}s ({busy_retries} busy retries); \
         sequencer RSS {:.1} -> {:.1} MiB, {:.0} bytes per idle subscriber",
        result.total,
        connections,
        mib(result.rss_before_bytes.iter().sum()),
        mib(result.rss_after_bytes.iter().sum()),
        result.rss_per_idle_subscriber_bytes
    );
    Ok((tasks, result))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What every measured phase drives and samples: the senders' connections, the verifying
/// subscribers' shared stats, and the processes, ops endpoints and database it measures.
struct Rig<'a> {
    args: &'a Args,
    sender_conns: &'a [SequencerConnection],
    subscriber_ids: &'a Arc<Vec<String>>,
    stats: &'a Arc<Stats>,
    pids: &'a [u32],
    ops: &'a [String],
    db_url: &'a str,
}

impl Rig<'_> {
    /// Runs measured phase `phase` at `rate` events/s (None: unbounded).
    async fn run_phase(
        &self,
        name: &str,
        phase: u8,
        rate: Option<f64>,
    ) -> anyhow::Result<PhaseResult> {
        let args = self.args;
        let cfg = SendConfig {
            phase,
            in_flight: args.in_flight,
            rate,
            payload_bytes: args.payload_bytes,
            fanout: args.fanout,
        };
        run_phase(name, self, cfg).await
    }
}

async fn run_phase(name: &str, rig: &Rig<'_>, cfg: SendConfig) -> anyhow::Result<PhaseResult> {
    let Rig {
        args,
        sender_conns,
        subscriber_ids,
        stats,
        pids,
        ops,
        db_url,
    } = *rig;
    let phase = cfg.phase;
    let target_rate = cfg.rate;
    eprintln!(
        "seqbench: phase {phase} ({name}): {} senders x {} in flight, rate {}; warm-up {:?}, window {:?}",
        sender_conns.len(),
        cfg.in_flight,
        target_rate.map_or("unbounded".to_string(), |r| format!("{r:.0}/s")),
        args.warmup,
        args.duration
    );
    stats.reset_window();
    let set = load::start_senders(sender_conns, subscriber_ids.clone(), stats.clone(), cfg);
    let measured = async {
        wait_checking(stats, args.warmup, None).await?;
        let scrapes_before = scrape_all(ops).await?;
        let pg_before = crate::pgstat::sample(db_url).await?;
        let cpu_before = sysstat::sample(pids);
        let started = Instant::now();
        stats.recording.store(true, Ordering::SeqCst);
        wait_checking(stats, args.duration, Some(phase)).await?;
        stats.recording.store(false, Ordering::SeqCst);
        let seconds = started.elapsed().as_secs_f64();
        let cpu_after = sysstat::sample(pids);
        let pg_after = crate::pgstat::sample(db_url).await?;
        let scrapes_after = scrape_all(ops).await?;
        anyhow::Ok((
            seconds,
            scrapes_before,
            scrapes_after,
            pg_before,
            pg_after,
            cpu_before,
            cpu_after,
        ))
    }
    .await;
    let (seconds, scrapes_before, scrapes_after, pg_before, pg_after, cpu_before, cpu_after) =
        match measured {
            Ok(m) => m,
            Err(e) => {
                set.abort();
                return Err(e);
            }
        };

    set.stop_and_join().await?;
    let drained = Instant::now();
    load::drain(stats, DRAIN_TIMEOUT).await?;
    eprintln!(
        "seqbench: phase {phase}: all acknowledged events delivered and verified (drain {:?})",
        drained.elapsed()
    );

    let acked = stats.acks_window.load(Ordering::SeqCst);
    let cpu = CpuUsage::between(&cpu_before, &cpu_after);
    let result = PhaseResult {
        name: name.to_string(),
        target_rate,
        window: Window::of(stats, seconds),
        schedule_lag: target_rate.map(|_| Percentiles::of(&load::lock(&stats.sched_lag))),
        send_errors: stats.send_errors.load(Ordering::SeqCst),
        resubscribes: stats.resubscribes.load(Ordering::SeqCst),
        cpu_micros_per_event: CpuPerEvent::of(&cpu, acked as f64 / seconds),
        cpu_micros_per_delivery: CpuPerEvent::of(
            &cpu,
            stats.delivered_window.load(Ordering::SeqCst) as f64 / seconds,
        ),
        cpu,
        sequencer: SequencerMetrics::between(&scrapes_before, &scrapes_after),
        postgres: crate::pgstat::PgDelta::between(&pg_before, &pg_after, seconds, acked),
    };
    if result.send_errors > 0 {
        anyhow::bail!(
            "phase {phase}: {} sends failed; first: {}",
            result.send_errors,
            stats.first_send_error()
        );
    }
    Ok(result)
}

/// Sleeps `total`, aborting on a fatal verification error; prints progress for
/// measured windows.
pub(crate) async fn wait_checking(
    stats: &Stats,
    total: Duration,
    progress: Option<u8>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = (
        Instant::now(),
        stats.acks_window.load(Ordering::Relaxed),
        stats.delivered_window.load(Ordering::Relaxed),
    );
    let mut next_print = Duration::from_secs(5);
    while start.elapsed() < total {
        if let Some(f) = stats.fatal() {
            anyhow::bail!("{f}");
        }
        if stats.send_errors.load(Ordering::Relaxed) > 0 {
            anyhow::bail!("send failed: {}", stats.first_send_error());
        }
        tokio::time::sleep((total - start.elapsed()).min(Duration::from_millis(100))).await;
        if let Some(phase) = progress
            && start.elapsed() >= next_print
        {
            next_print += Duration::from_secs(5);
            let now = (
                Instant::now(),
                stats.acks_window.load(Ordering::Relaxed),
                stats.delivered_window.load(Ordering::Relaxed),
            );
            let dt = now.0.duration_since(last.0).as_secs_f64();
            eprintln!(
                "seqbench: phase {phase} t={:>3.0}s  acked {:>7.0}/s  delivered {:>7.0}/s",
                start.elapsed().as_secs_f64(),
                (now.1 - last.1) as f64 / dt,
                (now.2 - last.2) as f64 / dt
            );
            last = now;
        }
    }
    Ok(())
}

async fn scrape_all(ops: &[String]) -> anyhow::Result<Vec<Scrape>> {
    let mut out = Vec::new();
    for url in ops {
        out.push(
            prom::scrape(url)
                .await
                .with_context(|| format!("scraping {url}/metrics"))?,
        );
    }
    Ok(out)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}
