//! Database faults under load (issue 16): failover of the sequencers' PostgreSQL to a
//! streaming standby — synchronous and asynchronous replication — and the PostgreSQL data
//! volume filling up. Two sequencer instances, three load clients (`DomainClient`s over both
//! instances, each subscribed from counter 0 and sending to all three), the history recorded
//! and checked at the end (`domain_e2e::history`, I1–I7).
//!
//! - `sync_standby_failover_loses_nothing`: primary SIGKILLed under load (its WAL sender
//!   stopped for a moment first, so commits are in flight, waiting for the standby, when it
//!   dies), standby promoted, sequencers reconnect through the multi-host URL. I1–I4 and I6
//!   hold; the unavailability is measured and bounded by [`SYNC_FAILOVER_BOUND`]; fresh
//!   subscriptions after the failover (read from the promoted standby) serve the same events
//!   at the same counters.
//! - `async_standby_failover_is_detected`: the same with asynchronous replication and a
//!   standby lagging by [`ASYNC_LAG`] when the primary dies. The commits of the lag window
//!   are lost, acknowledged ones included; the sequencer instances detect that the database
//!   went back in time and stop, and after they are restarted every member that had
//!   received a lost event gets `ForkDetected`. Never silent divergence.
//! - `disk_full_fails_sends_retryably`: the data volume (a `pgha-` tmpfs) is filled with a
//!   ballast file: sends fail with a retryable `UNAVAILABLE`, nothing acknowledged is lost,
//!   and sending resumes once the ballast is removed.
//!
//! The tests of this file run one at a time (each starts its own PostgreSQL servers and two
//! sequencers on two shared cores). Figures: docs/reliability.md, "Database failover and
//! disk full".

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_e2e::history::{
    self, CheckOptions, History, LoadHandle, LoadOptions, Outcome, Recorder, Report,
};
use domain_e2e::{connect_member, envelope, load_clients, now_micros};
use domain_identity::{MemberId, SigningKeyPair};
use domain_localnet::sequencers::SequencerCluster;
use domain_sequencer_client::{ClientError, ClientOptions, DomainClient};
use domain_testkit::pg::TestDatabase;
use domain_testkit::pg_ha::{PgDiskFull, PgHaPair, Replication};
use domain_testkit::process::TestLogs;

type Member = (MemberId, Arc<SigningKeyPair>);

/// Largest accepted interval without a successful send across a synchronous failover with
/// the standby promoted at once (the failure detection of an HA manager such as Patroni
/// comes on top). Measured 0.5–0.8 s here (docs/reliability.md); Canton's database sequencer
/// stalls 8–13 s after losing a writer.
const SYNC_FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// How far behind the asynchronous standby is when the primary dies: its WAL sender is
/// stopped for this long under load first.
const ASYNC_LAG: Duration = Duration::from_millis(1500);
/// How long the data volume stays full.
const DISK_FULL_HOLD: Duration = Duration::from_secs(3);
/// Database settings of the sequencers in these tests. A dead primary refuses connections
/// at once; only the pool's waits are shortened (defaults 2 s and 3 s) so a request does
/// not sit on a dead pool for long.
const DATABASE_CONFIG: &str =
    "connect-timeout = \"1s\"\npool-wait-timeout = \"1s\"\npool-create-timeout = \"2s\"\n";

use domain_e2e::run_test as run_serial;

/// Two sequencers on `db` with [`DATABASE_CONFIG`], three load clients, and the clients'
/// identities (for fresh raw streams later).
async fn start_domain(
    logs: TestLogs,
    db: TestDatabase,
) -> anyhow::Result<(SequencerCluster, Vec<DomainClient>, Vec<Member>)> {
    let cluster =
        SequencerCluster::start_with_database_config(logs, db, 2, "", &[], DATABASE_CONFIG).await?;
    let clients = load_clients(&cluster, 3, ClientOptions::default()).await?;
    let members = clients
        .iter()
        .map(|c| (c.member().id.clone(), c.member().key.clone()))
        .collect();
    Ok((cluster, clients, members))
}

/// A domain (see [`start_domain`]) under load, once 50 sends were acknowledged.
struct Loaded {
    cluster: SequencerCluster,
    members: Vec<Member>,
    ids: Vec<MemberId>,
    recorder: Recorder,
}

/// [`start_domain`] on `db`, load from its clients, and the first 50 acknowledgements.
async fn start_loaded(logs: TestLogs, db: TestDatabase) -> anyhow::Result<(Loaded, LoadHandle)> {
    let (cluster, clients, members) = start_domain(logs, db).await?;
    let ids = members.iter().map(|m| m.0.clone()).collect();
    let recorder = Recorder::new();
    let load = history::start_load(clients, recorder.clone(), load_options());
    wait_for_successes(&recorder, Duration::ZERO, 50, Duration::from_secs(10)).await?;
    let loaded = Loaded {
        cluster,
        members,
        ids,
        recorder,
    };
    Ok((loaded, load))
}

/// A PostgreSQL primary and standby with `replication`, the database `name` on them, and
/// a loaded domain on that database ([`start_loaded`]).
async fn start_on_pair(
    logs: TestLogs,
    replication: Replication,
    name: &str,
) -> anyhow::Result<(PgHaPair, TestDatabase, Loaded, LoadHandle)> {
    let pair = PgHaPair::start(replication)?;
    let db = pair.create_database(name).await?;
    println!("database url: {}", db.url);
    let (loaded, load) = start_loaded(logs, db.clone()).await?;
    Ok((pair, db, loaded, load))
}

impl Loaded {
    /// Waits for 20 sends acknowledged after `fault_end` (20 s at most) and marks it, `what`
    /// being what ended the fault; returns the first of them.
    async fn wait_sends_back(&self, fault_end: Duration, what: &str) -> anyhow::Result<Duration> {
        let back =
            wait_for_successes(&self.recorder, fault_end, 20, Duration::from_secs(20)).await?;
        self.recorder.mark(&format!(
            "sends succeed again, {} ms after {what}",
            (back - fault_end).as_millis()
        ));
        Ok(back)
    }

    /// Lets the load run `settle` longer, stops it, records fresh streams of every member
    /// and checks the history (unavailability `bound`); prints the report as `label`.
    async fn stop_and_check(
        &self,
        load: LoadHandle,
        settle: Duration,
        bound: Option<Duration>,
        label: &str,
    ) -> anyhow::Result<(History, Report)> {
        tokio::time::sleep(settle).await;
        load.stop(Duration::from_secs(10)).await?;
        // What the database serves now, from counter 0 on every instance.
        record_fresh_streams(&self.cluster, &self.members, &self.recorder).await?;
        let h = self.recorder.snapshot();
        let report = history::check(&h, &CheckOptions::new(&self.ids, bound));
        println!("{label}: {report}");
        report.ensure_ok()?;
        Ok((h, report))
    }
}

/// Prints a scenario's figures on one line: `FIGURES <scenario> <name>=<value> …`.
fn print_figures(scenario: &str, figures: &[(&str, String)]) {
    let figures: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("FIGURES {scenario} {}", figures.join(" "));
}

fn load_options() -> LoadOptions {
    LoadOptions {
        senders_per_client: 2,
        pause: Duration::from_millis(20),
        max_sequencing_time: Duration::from_secs(20),
        payload_bytes: 64,
    }
}

/// Waits until `n` sends completed successfully after `since` (recorder time); returns the
/// first of them.
async fn wait_for_successes(
    recorder: &Recorder,
    since: Duration,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + timeout;
    loop {
        let done: Vec<Duration> = recorder
            .snapshot()
            .successes()
            .into_iter()
            .filter(|t| *t > since)
            .collect();
        if done.len() >= n {
            return Ok(done[0]);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} successful sends within {timeout:?} after {:.3}s",
                done.len(),
                since.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records a fresh stream from counter 0 of every member on every instance (endpoint
/// `fresh seq-<i>`) until the recorded deliveries stop growing: what the database serves
/// now, compared by the checker (I1, I4) with what the members received live.
async fn record_fresh_streams(
    cluster: &SequencerCluster,
    members: &[Member],
    recorder: &Recorder,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..cluster.nodes.len() {
        for member in members {
            let conn = connect_member(cluster, i, member).await?;
            tasks.push(history::record_instance_stream(
                conn,
                member.0.clone(),
                format!("fresh seq-{i}"),
                recorder.clone(),
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = recorder.snapshot().deliveries.len();
        if n != last {
            last = n;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Message ids of the events stored in the database at `url`.
async fn stored_message_ids(url: &str) -> anyhow::Result<HashSet<String>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect {url}"))?;
    tokio::spawn(conn);
    Ok(client
        .query("SELECT message_id FROM seq_events", &[])
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

// ---------------------------------------------------------------------------------------
// Synchronous standby: nothing acknowledged is lost.
// ---------------------------------------------------------------------------------------

#[test]
fn sync_standby_failover_loses_nothing() -> anyhow::Result<()> {
    run_serial("sync_standby_failover_loses_nothing", sync_failover)
}

async fn sync_failover(logs: TestLogs) -> anyhow::Result<()> {
    let (pair, db, d, load) = start_on_pair(logs, Replication::Synchronous, "pgha_sync").await?;
    let recorder = &d.recorder;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Commits in flight when the primary dies: stop its WAL sender (commits wait for the
    // synchronous standby, unacknowledged), then kill the primary with all its processes.
    let walsender = pair.pause_wal_sender()?;
    recorder.mark(&format!("primary's WAL sender (pid {walsender}) stopped"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = recorder.elapsed();
    pair.kill_primary()?;
    recorder.mark("primary SIGKILLed");
    let took = pair.promote_standby()?;
    recorder.mark(&format!("standby promoted (pg_ctl promote -w: {took:?})"));
    println!("standby log:\n{}", pair.log_tail(true, 15));
    ensure!(!pair.primary_running(), "the primary survived SIGKILL");
    ensure!(
        !pair.in_recovery(true)?,
        "the standby is still in recovery after promotion"
    );
    let back = d.wait_sends_back(killed_at, "the kill").await?;
    // Fresh streams: what the promoted standby serves.
    let (h, report) = d
        .stop_and_check(
            load,
            Duration::from_secs(2),
            Some(SYNC_FAILOVER_BOUND),
            "sync failover",
        )
        .await?;
    // The fault took effect: the longest gap without a successful send starts before the
    // kill (commits waited for the stopped WAL sender), lasts at least that stop and ends
    // only after the kill; and the promoted standby holds every acknowledged send.
    let gap = back - killed_at;
    ensure!(
        report.max_unavailability >= Duration::from_millis(300)
            && report.max_unavailability_at <= killed_at
            && report.max_unavailability_at + report.max_unavailability > killed_at,
        "sends did not stall across the failover (first success {gap:?} after the kill, \
         longest gap {:?})",
        report.max_unavailability
    );
    let stored = stored_message_ids(&pair.standby_url(&db.name)).await?;
    let acked: Vec<u64> = h
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Some(Outcome::Ok { .. })))
        .map(|o| o.id)
        .collect();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|op| !stored.contains(&Recorder::message_id(*op)))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} acknowledged sends are not in the promoted standby: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let fresh = h
        .deliveries
        .iter()
        .filter(|d| d.endpoint.starts_with("fresh"))
        .count();
    ensure!(fresh > 0, "the fresh streams delivered nothing");
    print_figures(
        "sync-failover",
        &[
            (
                "unavailability_ms",
                report.max_unavailability.as_millis().to_string(),
            ),
            ("first_success_after_kill_ms", gap.as_millis().to_string()),
            ("acked", acked.len().to_string()),
            (
                "unknown",
                format!(
                    "{} (sequenced {})",
                    report.ops_unknown, report.unknown_delivered
                ),
            ),
            ("fresh_deliveries", fresh.to_string()),
        ],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Asynchronous standby: what is lost, and that members see it.
// ---------------------------------------------------------------------------------------

#[test]
fn async_standby_failover_is_detected() -> anyhow::Result<()> {
    run_serial("async_standby_failover_is_detected", async_failover)
}

async fn async_failover(logs: TestLogs) -> anyhow::Result<()> {
    let (
        pair,
        db,
        Loaded {
            mut cluster,
            members,
            ids,
            recorder,
        },
        load,
    ) = start_on_pair(logs, Replication::Asynchronous, "pgha_async").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The standby falls behind: the primary goes on acknowledging commits it does not send.
    let walsender = pair.pause_wal_sender()?;
    let lag_from = recorder.elapsed();
    recorder.mark(&format!(
        "primary's WAL sender (pid {walsender}) stopped: the standby falls behind"
    ));
    tokio::time::sleep(ASYNC_LAG).await;
    pair.kill_primary()?;
    // Taken once the primary is dead: an acknowledgement on its way counts as before.
    let killed_at = recorder.elapsed();
    recorder.mark("primary SIGKILLed");
    let took = pair.promote_standby()?;
    recorder.mark(&format!("standby promoted (pg_ctl promote -w: {took:?})"));
    let h = recorder.snapshot();
    let acked_in_lag = h
        .successes()
        .into_iter()
        .filter(|t| *t > lag_from && *t <= killed_at)
        .count();
    ensure!(
        acked_in_lag > 0,
        "no send was acknowledged while the standby lagged: the fault did not bite"
    );

    // Every instance finds the database behind what it committed or served and stops.
    for i in 0..cluster.nodes.len() {
        let node = &mut cluster.nodes[i];
        let process = node.process()?;
        let status = process
            .wait_exit(Duration::from_secs(15))
            .await
            .with_context(|| {
                format!(
                    "seq-{i} kept running on a database that lost acknowledged events \
                 (silent divergence)"
                )
            })?;
        let log = process.read_log();
        let line = log
            .lines()
            .find(|l| l.contains("SEQ_DATABASE_HISTORY_LOST"))
            .with_context(|| {
                format!("seq-{i} exited ({status}) without reporting the lost history")
            })?;
        println!("seq-{i}: {line}");
        recorder.mark(&format!(
            "seq-{i} stopped: the database lost acknowledged events"
        ));
    }
    // An orchestrator restarts them; they serve what the promoted standby has.
    for i in 0..cluster.nodes.len() {
        cluster.start_node(i).await?;
        recorder.mark(&format!("seq-{i} restarted"));
    }
    let restarted_at = recorder.elapsed();
    wait_for_successes(&recorder, restarted_at, 20, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = load.stop(Duration::from_secs(5)).await;
    record_fresh_streams(&cluster, &members, &recorder).await?;
    let h = recorder.snapshot();

    // What was lost: acknowledged sends missing from the promoted standby.
    let stored = stored_message_ids(&pair.standby_url(&db.name)).await?;
    let lost: BTreeSet<u64> = h
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Some(Outcome::Ok { .. })))
        .filter(|o| !stored.contains(&Recorder::message_id(o.id)))
        .map(|o| o.id)
        .collect();
    ensure!(
        !lost.is_empty(),
        "no acknowledged send was lost although the standby lagged {ASYNC_LAG:?}"
    );
    // Only the lag window: each lost send was acknowledged while the WAL sender was stopped
    // (or moments before, still unsent).
    for o in h.ops.iter().filter(|o| lost.contains(&o.id)) {
        let done = o.completed.unwrap_or_default();
        ensure!(
            done + Duration::from_millis(200) >= lag_from && done <= killed_at,
            "op {} acknowledged at {:.3}s was lost, outside the lag window {:.3}s..{:.3}s",
            o.id,
            done.as_secs_f64(),
            lag_from.as_secs_f64(),
            killed_at.as_secs_f64()
        );
    }
    // Who received lost events live must have been told: ForkDetected ended its stream.
    let mut received_lost: BTreeMap<&str, usize> = BTreeMap::new();
    for d in h
        .deliveries
        .iter()
        .filter(|d| !d.endpoint.starts_with("fresh"))
    {
        if d.op.is_some_and(|op| lost.contains(&op)) {
            *received_lost.entry(d.member.as_str()).or_default() += 1;
        }
    }
    let failures = match &stopped {
        Ok(()) => String::new(),
        Err(e) => format!("{e:#}"),
    };
    println!("load subscribers: {failures}");
    for (member, n) in &received_lost {
        let fork = failures
            .split("; ")
            .any(|f| f.contains(*member) && f.contains("fork detected") && !f.contains("invalid"));
        ensure!(
            fork,
            "{member} received {n} lost events live but its subscription did not report a fork: \
             {failures}"
        );
    }
    // Nothing else failed, and what the instances serve now is one consistent history that
    // holds every acknowledged send that survived, each once.
    for f in failures.split("; ").filter(|f| !f.is_empty()) {
        ensure!(
            f.contains("fork detected"),
            "a subscriber failed otherwise: {f}"
        );
    }
    let fresh_only = History {
        ops: h
            .ops
            .iter()
            .filter(|o| !lost.contains(&o.id))
            .cloned()
            .collect(),
        deliveries: h
            .deliveries
            .iter()
            .filter(|d| d.endpoint.starts_with("fresh"))
            .cloned()
            .collect(),
        ..History::default()
    };
    let report = history::check(&fresh_only, &CheckOptions::new(&ids, None));
    println!("async failover, after restart (fresh streams): {report}");
    report.ensure_ok()?;
    let full = history::check(&h, &CheckOptions::new(&ids, None));
    print_figures(
        "async-failover",
        &[
            ("acked_in_lag_window", acked_in_lag.to_string()),
            ("lost_acked", lost.len().to_string()),
            ("members_told_fork", received_lost.len().to_string()),
            (
                "unavailability_ms",
                format!(
                    "{} (whole history: {full})",
                    full.max_unavailability.as_millis()
                ),
            ),
        ],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------------------

#[test]
fn disk_full_fails_sends_retryably() -> anyhow::Result<()> {
    run_serial("disk_full_fails_sends_retryably", disk_full)
}

async fn disk_full(logs: TestLogs) -> anyhow::Result<()> {
    let disk = PgDiskFull::start(64)?;
    let db = disk.create_database("pgha_disk").await?;
    let (d, load) = start_loaded(logs, db.clone()).await?;
    let Loaded {
        cluster,
        members,
        ids,
        recorder,
    } = &d;

    // A raw connection (no client-side retries) to see what a send gets.
    let probe = connect_member(cluster, 0, &members[0]).await?;
    let filled = disk.fill()?;
    let full_at = recorder.elapsed();
    recorder.mark(&format!(
        "data volume full ({} MiB ballast, {} bytes free)",
        filled >> 20,
        disk.free_bytes()?
    ));
    // Sends fail, retryably, while the volume is full.
    let mut refusal = None;
    let deadline = Instant::now() + DISK_FULL_HOLD;
    let mut probes = 0;
    while Instant::now() < deadline {
        probes += 1;
        let op = recorder.invoke(&members[0].0, ids);
        let recipients: Vec<&MemberId> = ids.iter().collect();
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            probe.send(
                &Recorder::message_id(op),
                vec![envelope(Recorder::payload(op, 64), &recipients)],
                now_micros() + 20_000_000,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Status(tonic::Status::deadline_exceeded(
                "probe send timed out",
            )))
        });
        recorder.complete_send(op, &result);
        match &result {
            Ok(_) => {}
            Err(ClientError::Status(status)) => {
                // Every refusal must be retryable.
                ensure!(
                    status.code() == tonic::Code::Unavailable,
                    "a send on a full disk failed with {:?} (not retryable): {}",
                    status.code(),
                    status.message()
                );
                let names_disk =
                    status.message().contains("disk") || status.message().contains("space");
                if refusal
                    .as_ref()
                    .is_none_or(|(named, _)| !named && names_disk)
                {
                    refusal = Some((names_disk, status.clone()));
                }
            }
            Err(e) => bail!("a send on a full disk failed on the client side: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (names_disk, refusal) =
        refusal.context("no send failed while the database's disk was full")?;
    let code = domain_e2e::checks::error_code(&refusal)
        .unwrap_or("")
        .to_owned();
    println!(
        "a send while the disk was full: {:?} {code}: {}",
        refusal.code(),
        refusal.message()
    );
    // Some refusals only say the writer is recovering; at least one names the cause.
    ensure!(
        names_disk,
        "no refusal says the database is out of space: {code} {}",
        refusal.message()
    );
    let h = recorder.snapshot();
    let during = h
        .successes()
        .into_iter()
        .filter(|t| *t > full_at + Duration::from_millis(500) && *t <= recorder.elapsed())
        .count();
    disk.free()?;
    let freed_at = recorder.elapsed();
    recorder.mark(&format!(
        "ballast removed ({probes} probe sends while full; {during} load sends succeeded \
         0.5 s or more into the fault)"
    ));
    let back = d.wait_sends_back(freed_at, "space returned").await?;
    let (_, report) = d
        .stop_and_check(load, Duration::from_secs(1), None, "disk full")
        .await?;
    ensure!(
        report.max_unavailability >= Duration::from_millis(500),
        "sends did not stall while the disk was full (longest gap {:?})",
        report.max_unavailability
    );
    print_figures(
        "disk-full",
        &[
            (
                "unavailability_ms",
                report.max_unavailability.as_millis().to_string(),
            ),
            (
                "recovery_after_free_ms",
                (back - freed_at).as_millis().to_string(),
            ),
            ("load_successes_while_full", during.to_string()),
        ],
    );
    Ok(())
}
