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

#[tokio::test]
async fn devnet_runs_a_domain_pings_and_stops_cleanly() -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(binary_path("devnet"));
    cmd.args([
        "--duration",
        "20s",
        "--ping-interval",
        "2s",
        "--no-build",
        "--rm",
    ])
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let private_pg = pg_binaries_installed();
    if private_pg {
        cmd.env_remove("DATABASE_URL");
    }
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(150), cmd.output())
        .await
        .context("devnet did not finish within 150 s")??;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = format!(
        "exit {:?} after {elapsed:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status.code()
    );
    eprintln!("{report}");

    ensure!(output.status.success(), "devnet failed:\n{report}");
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
    ensure!(
        elapsed < Duration::from_secs(60),
        "devnet took {elapsed:?} for a 20 s run"
    );
    Ok(())
}
