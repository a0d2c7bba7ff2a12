//! Process and PostgreSQL faults under load (issue 16 item 3), each checked from the
//! recorded history (`domain_e2e::history`: I1–I4, I6 and I7, the longest time without a
//! successful send, against the bound documented in docs/reliability.md):
//!
//! - PostgreSQL restarted with `pg_ctl restart -m fast` and `-m immediate` (crash
//!   recovery) under load;
//! - PostgreSQL (the postmaster and every backend, by process group) SIGSTOPped for
//!   [`PG_STOP`], longer than every database timeout of the sequencer, then SIGCONTed:
//!   every instance reports NOT_SERVING and a send fails with a retryable status while it
//!   is stopped, and the domain recovers;
//! - a random instance of three SIGKILLed and restarted every few seconds for a minute
//!   (Kafka's replication tests), with a `DomainClient` load over all of them.
//!
//! The PostgreSQL scenarios run on a private server of their own (never the shared test
//! cluster). Each test shows that its fault took effect (new postmaster, crash recovery in
//! the server log, NOT_SERVING, kills counted and failovers seen by the clients), so none
//! can pass without the fault.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_e2e::history::{
    CheckOptions, History, LoadHandle, LoadOptions, Outcome, Recorder, Report, check,
    record_instance_stream, start_load,
};
use domain_e2e::{connect_member, envelope, now_micros};
use domain_identity::{MemberId, MemberRole, SigningKeyPair};
use domain_localnet::sequencers::SequencerCluster;
use domain_proto::sequencer::v1 as pb;
use domain_sequencer_client::retry::{RetryClass, classify_status};
use domain_sequencer_client::{ClientOptions, ClientTlsFiles, DomainClient, MemberIdentity};
use domain_testkit::pg::{ClusterOptions, PgCluster};
use domain_testkit::process::TestLogs;
use tonic_health::pb::health_check_response::ServingStatus;

type Member = (MemberId, std::sync::Arc<SigningKeyPair>);

/// How long PostgreSQL stays SIGSTOPped: longer than every database timeout the sequencer
/// has (`statement-timeout` and `idle-in-transaction-session-timeout` 10 s, the pool's
/// 2–3 s, `connect-timeout` 3 s, `writer.commit-timeout` 2 s, `ha.db-health-grace` 1 s).
const PG_STOP: Duration = Duration::from_secs(12);
/// I7 bound of a PostgreSQL restart (fast or immediate): every connection of every
/// instance is cut and re-established. See docs/reliability.md for the measured figures.
const PG_RESTART_BOUND: Duration = Duration::from_secs(10);
/// I7 bound of the SIGSTOP scenario: the stop itself plus the recovery.
const PG_STOP_BOUND: Duration = Duration::from_secs(12 + 8);
/// I7 bound of the repeated-kill scenario: one of three instances is down at a time; the
/// clients fail over (see `client_failover.rs`: 1 s for one kill on an idle box).
const REPEATED_KILL_BOUND: Duration = Duration::from_secs(3);
/// Repeated-kill schedule.
const KILL_PHASE: Duration = Duration::from_secs(60);
const KILL_EVERY: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

use domain_e2e::run_test as run;

/// A private PostgreSQL of one test, in a temporary directory; resumed (if paused) and
/// stopped when dropped, also when the test fails.
struct PrivatePg {
    cluster: PgCluster,
    /// Processes SIGSTOPped by [`Self::pause`] and not yet resumed.
    paused: Vec<u32>,
    _dir: tempfile::TempDir,
}

impl PrivatePg {
    async fn start() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new().prefix("chaos-pg-").tempdir()?;
        // The server runs as `postgres` when we are root: it must reach <dir>/pg.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let base = dir.path().join("pg");
        let cluster = tokio::task::spawn_blocking(move || {
            PgCluster::start_private_with(&base, &ClusterOptions::default())
        })
        .await??;
        Ok(Self {
            cluster,
            paused: Vec::new(),
            _dir: dir,
        })
    }

    fn postmaster(&self) -> anyhow::Result<u32> {
        self.cluster
            .postmaster_pid()?
            .context("postmaster.pid missing: the server is not running")
    }

    fn server_log(&self) -> String {
        self.cluster
            .server_log()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// `pg_ctl restart -m <mode>`; blocks this worker thread only (the load keeps running
    /// on the other).
    fn restart(&self, mode: &str) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.cluster.restart(mode))
    }

    /// SIGSTOPs the postmaster, then every child of it (backends, checkpointer, WAL
    /// writer, …: each backend is its own process group, so signalling the postmaster's
    /// group would miss them); a stopped postmaster forks no new ones. Returns how many
    /// processes were stopped.
    fn pause(&mut self) -> anyhow::Result<usize> {
        let pid = self.postmaster()?;
        signal("STOP", pid)?;
        let mut stopped = vec![pid];
        for child in children_of(pid) {
            // A backend may exit between the scan and the signal.
            if signal("STOP", child).is_ok() {
                stopped.push(child);
            }
        }
        let n = stopped.len();
        self.paused = stopped;
        Ok(n)
    }

    /// SIGCONT to every stopped process, children first.
    fn resume(&mut self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        while let Some(pid) = self.paused.pop() {
            if let Err(e) = signal("CONT", pid) {
                failed.push(format!("{pid}: {e:#}"));
            }
        }
        // Only processes that exited meanwhile can fail; the postmaster must not.
        ensure!(
            self.postmaster().is_ok(),
            "PostgreSQL is gone after SIGCONT ({failed:?})"
        );
        Ok(())
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.resume();
        let _ = self.cluster.stop();
    }
}

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses): state ppid …
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && parent_of(child) == Some(pid)
            {
                out.push(child);
            }
        }
    }
    out
}

fn signal(signal: &str, pid: u32) -> anyhow::Result<()> {
    domain_testkit::process::send_signal(pid, signal)
}

/// A sequencer cluster with two members, a `DomainClient` each over every instance, and
/// the recorded load running.
struct Scenario {
    cluster: SequencerCluster,
    members: Vec<Member>,
    clients: Vec<DomainClient>,
    recorder: Recorder,
    load: Option<LoadHandle>,
}

async fn connect_client(
    cluster: &SequencerCluster,
    member: &Member,
) -> anyhow::Result<DomainClient> {
    let options = ClientOptions {
        pins: domain_e2e::cluster_pins(cluster)?,
        ..ClientOptions::default()
    };
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.public_endpoint()).collect();
    DomainClient::connect(
        "testdomain",
        &endpoints,
        ClientTlsFiles {
            ca: cluster.pki_files.ca.clone(),
            cert: None,
            key: None,
            domain_name: None,
        },
        MemberIdentity {
            id: member.0.clone(),
            key: member.1.clone(),
        },
        options,
    )
    .await
    .with_context(|| format!("connect {}", member.0))
}

impl Scenario {
    async fn start(
        logs: TestLogs,
        db: domain_testkit::pg::TestDatabase,
        instances: usize,
    ) -> anyhow::Result<Self> {
        let cluster = SequencerCluster::start(logs, db, instances, "").await?;
        let mut members = Vec::new();
        for name in ["alice", "bob"] {
            members.push(cluster.add_member(MemberRole::Participant, name).await?);
        }
        let mut clients = Vec::new();
        for m in &members {
            clients.push(connect_client(&cluster, m).await?);
        }
        let recorder = Recorder::new();
        let load = start_load(
            clients.clone(),
            recorder.clone(),
            LoadOptions {
                senders_per_client: 2,
                pause: Duration::from_millis(25),
                max_sequencing_time: Duration::from_secs(30),
                payload_bytes: 64,
            },
        );
        let s = Self {
            cluster,
            members,
            clients,
            recorder,
            load: Some(load),
        };
        s.wait_for_acks(20, Duration::from_secs(15), "before the fault")
            .await?;
        Ok(s)
    }

    fn acked_since(&self, since: Duration) -> usize {
        acked_between(&self.recorder.snapshot(), since, Duration::MAX)
    }

    /// Waits until `n` sends completed successfully after now.
    async fn wait_for_acks(
        &self,
        n: usize,
        limit: Duration,
        what: &str,
    ) -> anyhow::Result<Duration> {
        let from = self.recorder.elapsed();
        let start = Instant::now();
        loop {
            let got = self.acked_since(from);
            if got >= n {
                return Ok(start.elapsed());
            }
            ensure!(
                start.elapsed() < limit,
                "{what}: only {got} sends acknowledged within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load, drains, checks the history against `bound`; prints the report.
    async fn finish(&mut self, name: &str, bound: Duration) -> anyhow::Result<(History, Report)> {
        let load = self.load.take().context("load already stopped")?;
        let ids: Vec<MemberId> = load.members().to_vec();
        load.stop(Duration::from_secs(20)).await?;
        let history = self.recorder.snapshot();
        let report = check(&history, &CheckOptions::new(&ids, Some(bound)));
        println!("{name}: {report}");
        for (at, label) in &report.marks {
            println!("    {:>7.3}s  {label}", at.as_secs_f64());
        }
        for (i, c) in self.clients.iter().enumerate() {
            println!("    client {i}: {:?}", c.stats());
        }
        report.ensure_ok()?;
        ensure!(
            report.ops_ok > 50,
            "{name}: only {} sends acknowledged in the whole run",
            report.ops_ok
        );
        Ok((history, report))
    }
}

/// Sends that completed successfully in `[from, to)` (offsets of the recorder).
fn acked_between(h: &History, from: Duration, to: Duration) -> usize {
    h.ops
        .iter()
        .filter(|o| matches!(o.outcome, Some(Outcome::Ok { .. })))
        .filter(|o| o.completed.is_some_and(|c| c >= from && c < to))
        .count()
}

/// The load goes on after the fault: at least 20 sends acknowledged after `healed` (the
/// moment the fault ended, described by `after`).
fn ensure_load_after(h: &History, healed: Duration, after: &str) -> anyhow::Result<()> {
    ensure!(
        acked_between(h, healed, Duration::MAX) >= 20,
        "no load after {after}"
    );
    Ok(())
}

/// The interval without a successful send that contains `t`: from the last completion
/// before `t` to the first one after it.
fn gap_around(h: &History, t: Duration) -> Duration {
    let done = h.successes();
    let before = done.iter().rev().find(|c| **c <= t).copied().unwrap_or(t);
    let after = done.iter().find(|c| **c > t).copied().unwrap_or(t);
    after.saturating_sub(before)
}

/// One gRPC health check of a sequencer's public endpoint (TLS), bounded to 1 s.
async fn health(cluster: &SequencerCluster, i: usize) -> anyhow::Result<ServingStatus> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let ep = tonic::transport::Endpoint::from_shared(cluster.nodes[i].public_endpoint())?
        .tls_config(cluster.client_tls())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1));
    let channel = tokio::time::timeout(Duration::from_secs(1), ep.connect())
        .await
        .context("connect timed out")??;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(resp.into_inner().status())
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

// ---------------------------------------------------------------------------------------
// PostgreSQL restart, fast and immediate
// ---------------------------------------------------------------------------------------

#[test]
fn postgres_fast_restart_under_load() -> anyhow::Result<()> {
    run("fault_pg_restart_fast", |logs| pg_restart(logs, "fast"))
}

#[test]
fn postgres_immediate_restart_under_load() -> anyhow::Result<()> {
    run("fault_pg_restart_immediate", |logs| {
        pg_restart(logs, "immediate")
    })
}

async fn pg_restart(logs: TestLogs, mode: &'static str) -> anyhow::Result<()> {
    let name = format!("pg restart -m {mode}");
    let pg = PrivatePg::start().await?;
    let db = pg.cluster.try_create_database("fault_pg_restart").await?;
    let mut s = Scenario::start(logs, db, 2).await?;
    // Raw streams of one member from each instance: I3/I4 across instances.
    let mut raw = Vec::new();
    for i in 0..s.cluster.nodes.len() {
        let conn = connect_member(&s.cluster, i, &s.members[0]).await?;
        raw.push(record_instance_stream(
            conn,
            s.members[0].0.clone(),
            s.cluster.nodes[i].public_endpoint(),
            s.recorder.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before_pid = pg.postmaster()?;
    s.recorder
        .mark(&format!("{name}: start (postmaster {before_pid})"));
    let t0 = s.recorder.elapsed();
    let started = Instant::now();
    pg.restart(mode)?;
    let took = started.elapsed();
    let after_pid = pg.postmaster()?;
    s.recorder.mark(&format!(
        "{name}: done in {} ms (postmaster {after_pid})",
        millis(took)
    ));
    let t1 = s.recorder.elapsed();
    let back = s
        .wait_for_acks(20, Duration::from_secs(30), "after the restart")
        .await?;
    s.recorder.mark("20 sends acknowledged after the restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in &raw {
        r.abort();
    }
    let (history, report) = s.finish(&name, PG_RESTART_BOUND).await?;

    // The fault took effect: a new postmaster, and (immediate) crash recovery.
    ensure!(
        after_pid != before_pid,
        "the postmaster pid did not change ({before_pid}): no restart happened"
    );
    let log = pg.server_log();
    if mode == "immediate" {
        ensure!(
            log.contains("was not properly shut down") || log.contains("automatic recovery"),
            "no crash recovery in the server log after -m immediate"
        );
    } else {
        ensure!(
            log.contains("received fast shutdown request"),
            "no fast shutdown in the server log"
        );
    }
    let gap = gap_around(&history, t0 + (t1 - t0) / 2);
    println!(
        "{name}: pg_ctl took {} ms; first 20 acks {} ms after it returned; gap around the \
         restart {} ms; longest unavailability {} ms (bound {PG_RESTART_BOUND:?}); acks during \
         the restart {}",
        millis(took),
        millis(back),
        millis(gap),
        millis(report.max_unavailability),
        acked_between(&history, t0, t1)
    );
    ensure_load_after(&history, t1, "the restart")
}

// ---------------------------------------------------------------------------------------
// PostgreSQL SIGSTOPped longer than every timeout
// ---------------------------------------------------------------------------------------

#[test]
fn postgres_sigstop_longer_than_every_timeout() -> anyhow::Result<()> {
    run("fault_pg_sigstop", pg_sigstop)
}

async fn pg_sigstop(logs: TestLogs) -> anyhow::Result<()> {
    let mut pg = PrivatePg::start().await?;
    let db = pg.cluster.try_create_database("fault_pg_stop").await?;
    let mut s = Scenario::start(logs, db, 2).await?;
    // A connection per instance opened before the stop, for one single-attempt send each
    // during it (authentication needs the database).
    let mut probes = Vec::new();
    for i in 0..s.cluster.nodes.len() {
        probes.push(connect_member(&s.cluster, i, &s.members[1]).await?);
    }
    for i in 0..s.cluster.nodes.len() {
        ensure!(health(&s.cluster, i).await? == ServingStatus::Serving);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stopped_processes = pg.pause()?;
    let stopped_at = Instant::now();
    s.recorder.mark(&format!(
        "SIGSTOP PostgreSQL ({stopped_processes} processes) for {PG_STOP:?}"
    ));
    let t0 = s.recorder.elapsed();

    // During the stop: every instance goes NOT_SERVING; a send fails with a retryable status.
    let mut not_serving = vec![None; s.cluster.nodes.len()];
    let mut probe_errors = Vec::new();
    let mut probed = false;
    while stopped_at.elapsed() < PG_STOP {
        for (i, slot) in not_serving.iter_mut().enumerate() {
            if slot.is_none()
                && matches!(health(&s.cluster, i).await, Ok(ServingStatus::NotServing))
            {
                *slot = Some(stopped_at.elapsed());
            }
        }
        if !probed && stopped_at.elapsed() > Duration::from_secs(3) {
            probed = true;
            for (i, conn) in probes.iter().enumerate() {
                let recipients = [&s.members[0].0];
                let req = conn.sign_submission(&pb::SubmissionRequest {
                    sender: s.members[1].0.to_string(),
                    message_id: format!("probe-during-stop-{i}"),
                    envelopes: vec![envelope(b"probe".to_vec(), &recipients)],
                    max_sequencing_time_micros: now_micros() + 5_000_000,
                    time_proof: false,
                });
                let r = tokio::time::timeout(Duration::from_secs(5), conn.send_signed(req)).await;
                probe_errors.push(match r {
                    Err(_) => (i, "no answer within 5 s".to_owned(), true),
                    Ok(Ok(resp)) => (
                        i,
                        format!("ACKNOWLEDGED at {}", resp.sequencing_timestamp_micros),
                        false,
                    ),
                    Ok(Err(domain_sequencer_client::ClientError::Status(st))) => {
                        let retryable = !matches!(classify_status(&st), RetryClass::Definitive);
                        (
                            i,
                            format!(
                                "{:?} {} ({})",
                                st.code(),
                                domain_sequencer_client::retry::error_code(&st).unwrap_or("-"),
                                st.message()
                            ),
                            retryable,
                        )
                    }
                    Ok(Err(e)) => (i, format!("{e}"), true),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked_during = acked_between(
        &s.recorder.snapshot(),
        t0 + Duration::from_secs(1),
        s.recorder.elapsed(),
    );
    pg.resume()?;
    s.recorder.mark("SIGCONT PostgreSQL");
    let t1 = s.recorder.elapsed();
    let back = s
        .wait_for_acks(20, Duration::from_secs(30), "after SIGCONT")
        .await?;
    s.recorder.mark("20 sends acknowledged after SIGCONT");
    let mut serving_again = Vec::new();
    for i in 0..s.cluster.nodes.len() {
        let t = Instant::now();
        domain_testkit::process::wait_for_health(
            &s.cluster.nodes[i].public_endpoint(),
            Some(s.cluster.client_tls()),
            "",
            Duration::from_secs(20),
        )
        .await?;
        serving_again.push(t.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (history, report) = s.finish("pg sigstop", PG_STOP_BOUND).await?;

    println!(
        "pg sigstop: NOT_SERVING after {:?}; probe sends during the stop: {probe_errors:?}; \
         acks during the stop {acked_during}; first 20 acks {} ms after SIGCONT; gap around \
         the stop {} ms; longest unavailability {} ms (bound {PG_STOP_BOUND:?})",
        not_serving,
        millis(back),
        millis(gap_around(&history, t0 + (t1 - t0) / 2)),
        millis(report.max_unavailability)
    );
    // The fault took effect and was seen as the docs say.
    for (i, ns) in not_serving.iter().enumerate() {
        ensure!(
            ns.is_some(),
            "seq-{i} never reported NOT_SERVING while PostgreSQL was stopped"
        );
    }
    ensure!(
        probe_errors.len() == probes.len(),
        "not every instance was probed"
    );
    for (i, what, retryable) in &probe_errors {
        ensure!(
            *retryable && !what.starts_with("ACKNOWLEDGED"),
            "seq-{i}: a send during the stop got {what}, expected a retryable failure"
        );
    }
    ensure!(
        acked_during == 0,
        "{acked_during} sends acknowledged while PostgreSQL was stopped"
    );
    ensure!(
        report.max_unavailability >= PG_STOP - Duration::from_secs(2),
        "longest unavailability {:?} is shorter than the stop: the fault did not take effect",
        report.max_unavailability
    );
    ensure_load_after(&history, t1, "SIGCONT")
}

// ---------------------------------------------------------------------------------------
// Repeated SIGKILL of a random instance for a minute
// ---------------------------------------------------------------------------------------

#[test]
fn repeated_kill_of_a_random_instance_for_a_minute() -> anyhow::Result<()> {
    run("fault_repeated_kill", repeated_kill)
}

async fn repeated_kill(logs: TestLogs) -> anyhow::Result<()> {
    let db = PgCluster::shared()
        .create_database("fault_repeated_kill")
        .await;
    let mut s = Scenario::start(logs, db, 3).await?;
    #[expect(clippy::disallowed_methods, reason = "a seed, not a timestamp")]
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(1);
    println!("repeated kill: seed {seed}");
    // splitmix64: a seed of at most 30 bits (the sub-second nanos) still gives well-mixed
    // output from the first draw, which a bare xorshift64 does not.
    let mut rng = seed;
    let mut next = || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // Victims come in rounds: each round kills every instance once, in a random order, so
    // every instance (and so every client's stream) is hit whatever the draw.
    let mut round: Vec<usize> = Vec::new();
    let phase = Instant::now();
    let mut kills: Vec<(usize, Duration)> = Vec::new();
    let mut restart_times = Vec::new();
    while phase.elapsed() < KILL_PHASE {
        tokio::time::sleep(KILL_EVERY).await;
        if round.is_empty() {
            round = (0..s.cluster.nodes.len()).collect();
            for i in (1..round.len()).rev() {
                let j = (next() % (i as u64 + 1)) as usize;
                round.swap(i, j);
            }
        }
        let Some(victim) = round.pop() else {
            anyhow::bail!("no sequencer instance to kill");
        };
        let status = s.cluster.nodes[victim].process()?.kill()?;
        s.recorder.mark(&format!("SIGKILL seq-{victim} ({status})"));
        kills.push((victim, s.recorder.elapsed()));
        let t = Instant::now();
        s.cluster.start_node(victim).await?;
        restart_times.push(t.elapsed());
        s.recorder.mark(&format!("seq-{victim} serving again"));
    }
    s.wait_for_acks(20, Duration::from_secs(20), "after the last kill")
        .await?;
    let failovers: u64 = s.clients.iter().map(|c| c.stats().resubscriptions).sum();
    let (history, report) = s.finish("repeated kill", REPEATED_KILL_BOUND).await?;

    let mut gaps: Vec<Duration> = kills
        .iter()
        .map(|(_, t)| gap_around(&history, *t))
        .collect();
    gaps.sort();
    let mut per_instance = [0usize; 3];
    for (v, _) in &kills {
        per_instance[*v] += 1;
    }
    println!(
        "repeated kill: {} kills (per instance {per_instance:?}); restart to SERVING max {} ms; \
         gap around each kill min {} / median {} / max {} ms; longest unavailability {} ms \
         (bound {REPEATED_KILL_BOUND:?}); resubscriptions {failovers}",
        kills.len(),
        restart_times.iter().max().map(|d| millis(*d)).unwrap_or(0),
        gaps.first().map(|d| millis(*d)).unwrap_or(0),
        gaps.get(gaps.len() / 2).map(|d| millis(*d)).unwrap_or(0),
        gaps.last().map(|d| millis(*d)).unwrap_or(0),
        millis(report.max_unavailability)
    );
    // The faults took effect: every kill happened, and the clients had to move.
    ensure!(
        kills.len() >= 10,
        "only {} kills in {KILL_PHASE:?}",
        kills.len()
    );
    ensure!(
        failovers > 0,
        "no client ever resubscribed: the kills did not reach the clients' streams"
    );
    Ok(())
}
