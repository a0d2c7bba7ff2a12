//! The one-command local domain: runs the real `devnet` binary for 20 s of pinging and
//! checks what it promises: every process started and was healthy, every metrics URL
//! answered (devnet fetches each `/metrics` at the start and at the end of the ping
//! phase and prints `metrics ok` per process), pings succeeded both ways and committed
//! transactions in both participants' databases, and everything shut down cleanly (exit 0).
//!
//! Needs the binaries: `cargo build --workspace --bins` first. Uses a private PostgreSQL
//! (as `cargo run --bin devnet` does) when the PostgreSQL 15 binaries are installed, else
//! the `DATABASE_URL` server.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_testkit::process::binary_path;

const COMPONENTS: [&str; 8] = [
    "sequencer-1",
    "sequencer-2",
    "domain-manager-1",
    "domain-manager-2",
    "mediator-1",
    "mediator-2",
    "participant1",
    "participant2",
];

fn pg_binaries_installed() -> bool {
    let dir = std::env::var_os("PG_BIN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join("initdb").is_file()
}

/// The number in `<prefix><number><suffix>` on some line.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (_, rest) = l.split_once(prefix)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// How a `devnet` run to its end went.
struct DevnetRun {
    private_pg: bool,
    elapsed: Duration,
    stdout: String,
    /// Exit, time, stdout and stderr, for error messages.
    report: String,
}

/// Runs `devnet args` to its end (at most `limit`; printing its exit and output) and
/// requires exit 0. With a private PostgreSQL (its binaries installed) devnet runs in `dir`
/// with everything it creates; on the shared server it gets `--rm`, which also drops the
/// databases.
async fn run_devnet(args: &[&str], dir: &Path, limit: Duration) -> anyhow::Result<DevnetRun> {
    let mut cmd = tokio::process::Command::new(binary_path("devnet"));
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let private_pg = pg_binaries_installed();
    if private_pg {
        cmd.env_remove("DATABASE_URL");
        cmd.arg("--dir").arg(dir);
    } else {
        cmd.arg("--rm");
    }
    let started = Instant::now();
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("devnet {args:?} did not finish within {limit:?}"))??;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = format!(
        "exit {:?} after {elapsed:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status.code()
    );
    eprintln!("{report}");
    ensure!(output.status.success(), "devnet {args:?} failed:\n{report}");
    Ok(DevnetRun {
        private_pg,
        elapsed,
        stdout,
        report,
    })
}

#[tokio::test]
async fn devnet_runs_a_domain_pings_and_stops_cleanly() -> anyhow::Result<()> {
    // With a private PostgreSQL everything devnet creates is in its directory, so the run
    // directory is kept (a temporary one) to check the onboarding files afterwards; on a
    // shared server only the printed paths are checked.
    let run_dir = tempfile::tempdir()?;
    let dir = run_dir.path().join("devnet");
    let DevnetRun {
        private_pg,
        elapsed,
        stdout,
        report,
    } = run_devnet(
        &["--duration", "20s", "--ping-interval", "2s", "--no-build"],
        &dir,
        Duration::from_secs(150),
    )
    .await?;

    for name in COMPONENTS {
        let ok_lines = stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(name) && l.contains("metrics ok"))
            .count();
        ensure!(
            ok_lines >= 2,
            "{name}: `metrics ok` printed {ok_lines} times, expected at the start and the end of the run"
        );
    }
    // Both directions were pinged and approved.
    for (from, to) in [
        ("participant1", "participant2"),
        ("participant2", "participant1"),
    ] {
        let approved = stdout
            .lines()
            .filter(|l| {
                l.contains(&format!("{from} -> {to}: ping PAR::{to}::"))
                    && l.contains(" approved in ")
            })
            .count();
        ensure!(
            approved >= 3,
            "{from} -> {to}: only {approved} approved pings"
        );
    }
    let approved = number_after(&stdout, "pings: ").context("no ping summary")?;
    let failed = number_after(&stdout, " approved, ").context("no failure count")?;
    ensure!(approved >= 8, "only {approved} pings approved in 20 s");
    ensure!(failed == 0, "{failed} pings failed");
    // Every approved ping is a committed transaction in both participants' databases.
    for p in ["participant1", "participant2"] {
        let committed = number_after(&stdout, &format!("{p}: committed transactions "))
            .with_context(|| format!("no status of {p}"))?;
        ensure!(
            committed >= approved,
            "{p} committed {committed} transactions, but {approved} pings were approved"
        );
    }
    for name in COMPONENTS {
        ensure!(
            stdout.contains(&format!("stopped {name} (")),
            "{name} was not stopped cleanly"
        );
    }
    if private_pg {
        ensure!(
            stdout.contains("stopped PostgreSQL"),
            "PostgreSQL not stopped"
        );
    }
    ensure!(stdout.contains("devnet finished cleanly"));
    // The joining flow (docs/onboarding.md): two identity files and one bundle, printed.
    let printed = |prefix: &str| -> Vec<std::path::PathBuf> {
        stdout
            .lines()
            .filter_map(|l| l.split_once(prefix).map(|(_, p)| p.trim().into()))
            .collect()
    };
    let identities = printed("identity file: ");
    let bundles = printed("connection bundle: ");
    ensure!(
        identities.len() >= 2 && !bundles.is_empty(),
        "devnet did not print the identity files and the bundle:\n{report}"
    );
    ensure!(
        stdout.contains("from its identity file"),
        "participants were not allowlisted from their identity files"
    );
    if private_pg {
        for f in identities.iter().take(2) {
            let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
            let v = domain_identity::onboarding::verify_identity(&text)?;
            ensure!(v.participant.to_string().starts_with("PAR::participant"));
        }
        let text = std::fs::read_to_string(&bundles[0])?;
        let b = domain_identity::onboarding::verify_bundle(&text)?;
        ensure!(
            b.body.endpoints.len() == 2,
            "bundle endpoints {:?}",
            b.body.endpoints
        );
        ensure!(b.body.ca_pem.is_some(), "bundle without the CA");
        for p in ["participant1", "participant2"] {
            let conn = std::fs::read_to_string(dir.join(p).join("domain-connection.toml"))?;
            ensure!(
                conn.contains("sequencer-key = \"1220") && conn.contains("bundle = "),
                "{p} did not connect from the bundle:\n{conn}"
            );
        }
    }
    ensure!(
        elapsed < Duration::from_secs(60),
        "devnet took {elapsed:?} for a 20 s run"
    );
    Ok(())
}

/// Whether process `pid` is gone: no `/proc` entry, or a zombie nobody reaped yet.
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

/// Killed with SIGKILL, devnet cannot stop its children: each notices that its supervisor
/// is gone (`DOMAIN_EXIT_WITH_PARENT`) and shuts down by itself, so no service is left
/// holding ports, leases and database connections. Runs against the tests' PostgreSQL
/// through `DATABASE_URL`: a throwaway server of devnet's own would outlive it (a server
/// started by `pg_ctl` is not devnet's child; see docs/devnet.md).
#[tokio::test]
async fn devnet_killed_leaves_no_service_running() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;

    let logs = domain_testkit::process::TestLogs::for_current_test();
    let pg = domain_testkit::pg::PgCluster::shared();
    let dir = logs.dir().join("devnet-run");
    let stderr = std::fs::File::create(logs.dir().join("devnet.stderr"))?;
    let mut devnet = tokio::process::Command::new(binary_path("devnet"))
        .args([
            "--duration",
            "10m",
            "--ping-interval",
            "1s",
            "--no-build",
            "--dir",
        ])
        .arg(&dir)
        .env("DATABASE_URL", pg.admin_url())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start devnet")?;
    let stdout = devnet.stdout.take().context("no stdout pipe")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();

    // "[  0.3s] started sequencer-1 (pid 4242)" for most components, then "domain … is up".
    let mut pids = Vec::new();
    let mut seen = String::new();
    let up = tokio::time::timeout(Duration::from_secs(150), async {
        while let Some(line) = lines.next_line().await? {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("] started ")
                && let Some(pid) = number_after(&line, "(pid ")
            {
                pids.push(u32::try_from(pid)?);
            }
            if line.contains("] domain ") && line.contains(" is up") {
                return Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await;
    ensure!(
        matches!(up, Ok(Ok(true))),
        "devnet did not come up ({up:?}); its output:\n{seen}"
    );
    // The participants are started without a "(pid …)" line: take every child from /proc.
    let devnet_pid = devnet.id().context("devnet already exited")?;
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{devnet_pid}/task"))? {
        let list = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    ensure!(
        pids.iter().all(|pid| children.contains(pid)),
        "started components {pids:?} are not all children {children:?} of devnet"
    );
    pids = children;
    ensure!(
        pids.len() >= COMPONENTS.len(),
        "expected {} running components, devnet has children {pids:?}:\n{seen}",
        COMPONENTS.len()
    );
    ensure!(
        pids.iter().all(|&pid| !process_gone(pid)),
        "a component is not running before the kill: {pids:?}"
    );

    devnet.start_kill().context("cannot SIGKILL devnet")?;
    devnet.wait().await?;
    let killed = Instant::now();
    let mut running = pids.clone();
    while !running.is_empty() && killed.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        running.retain(|&pid| !process_gone(pid));
    }
    println!(
        "devnet SIGKILLed: {} of its {} child processes exited within {:?}",
        pids.len() - running.len(),
        pids.len(),
        killed.elapsed()
    );
    ensure!(
        running.is_empty(),
        "still running 30 s after devnet was killed: pids {running:?} (logs in {})",
        dir.display()
    );
    logs.passed();
    Ok(())
}

/// The numbers of a `chaos summary` table row (`component kill pause restart total
/// recovered …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ChaosRow {
    kill: u64,
    pause: u64,
    restart: u64,
    total: u64,
    recovered: u64,
}

/// The row of the table starting with `label`, after the `chaos summary` line.
fn chaos_row(stdout: &str, label: &str) -> Option<ChaosRow> {
    let table = stdout.split_once("chaos summary: ")?.1;
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(5)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if n.len() != 5 {
        return None;
    }
    Some(ChaosRow {
        kill: n[0],
        pause: n[1],
        restart: n[2],
        total: n[3],
        recovered: n[4],
    })
}

/// Seconds in `<prefix>12.3 s`.
fn seconds_after(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (_, rest) = l.split_once(prefix)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `devnet --chaos` (issue 16 item 4): for 25 s it kills, pauses and restarts random
/// sequencer, domain-manager and mediator replicas while the participants ping, and must
/// exit 0 with a summary whose figures agree with each other and with the fault lines it
/// printed: every kind of fault injected, every fault recovered from, pings approved.
#[tokio::test]
async fn devnet_chaos_injects_faults_and_recovers() -> anyhow::Result<()> {
    let run_dir = tempfile::tempdir()?;
    let stdout = run_devnet(
        &[
            "--chaos",
            "--duration",
            "25s",
            "--chaos-interval",
            "1s",
            "--no-build",
        ],
        &run_dir.path().join("devnet"),
        Duration::from_secs(300),
    )
    .await?
    .stdout;

    // The table: rows per component kind add up to the total row; every fault recovered.
    let total = chaos_row(&stdout, "total").context("no total row in the chaos summary")?;
    let mut sum = ChaosRow::default();
    for kind in ["sequencer", "domain-manager", "mediator"] {
        let r = chaos_row(&stdout, kind).with_context(|| format!("no {kind} row"))?;
        ensure!(
            r.kill + r.pause + r.restart == r.total && r.recovered == r.total,
            "{kind} row inconsistent: {r:?}"
        );
        sum.kill += r.kill;
        sum.pause += r.pause;
        sum.restart += r.restart;
        sum.total += r.total;
        sum.recovered += r.recovered;
    }
    ensure!(
        sum == total,
        "rows {sum:?} do not add up to the total {total:?}"
    );
    ensure!(
        total.kill > 0 && total.pause > 0 && total.restart > 0,
        "not every kind of fault was injected: {total:?}"
    );
    ensure!(
        total.recovered == total.total,
        "unrecovered faults: {total:?}"
    );
    // The headline and the fault lines agree with the table.
    let headline = stdout
        .lines()
        .find(|l| l.contains("chaos summary: "))
        .context("no summary headline")?;
    let faults = number_after(headline, "chaos summary: ").context("no fault count")?;
    let recovered = number_after(headline, "), ").context("no recovered count")?;
    ensure!(faults == total.total && recovered == total.total);
    let fault_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("] fault ") && l.contains("; back after "))
        .collect();
    ensure!(
        fault_lines.len() as u64 == total.total,
        "{} fault lines for {} faults",
        fault_lines.len(),
        total.total
    );
    for (kind, signal, count) in [
        ("kill", "SIGKILL", total.kill),
        ("pause", "SIGSTOP", total.pause),
        ("restart", "SIGTERM", total.restart),
    ] {
        let lines = fault_lines
            .iter()
            .filter(|l| l.contains(&format!(": {kind} ")) && l.contains(signal))
            .count() as u64;
        ensure!(
            lines == count,
            "{lines} {kind} lines, the table says {count}"
        );
    }
    // Pings: approved ones, and the interruption figures present and ordered.
    let ok = number_after(&stdout, "    pings: ").context("no ping line in the summary")?;
    ensure!(ok > 0, "no ping approved");
    let longest =
        seconds_after(&stdout, "longest interruption: ").context("no longest interruption")?;
    let median =
        seconds_after(&stdout, "median interruption: ").context("no median interruption")?;
    ensure!(
        median <= longest,
        "median {median} s above the longest {longest} s"
    );
    // Every approved ping is a transaction committed by both participants, faults or not.
    let approved = number_after(&stdout, "] pings: ").context("no final ping summary")?;
    ensure!(
        approved == ok,
        "{approved} approved in the final line, {ok} in the table"
    );
    let committed: Vec<u64> = ["participant1", "participant2"]
        .iter()
        .map(|p| number_after(&stdout, &format!("{p}: committed transactions ")))
        .collect::<Option<_>>()
        .context("no committed transactions of a participant")?;
    ensure!(
        committed[0] == committed[1] && committed[0] >= approved,
        "committed transactions {committed:?}, approved pings {approved}"
    );
    ensure!(
        number_after(&stdout, "unexpected exits: ") == Some(0),
        "components exited on their own"
    );
    ensure!(stdout.contains("chaos: PASSED"));
    ensure!(stdout.contains("devnet finished cleanly"));
    Ok(())
}
