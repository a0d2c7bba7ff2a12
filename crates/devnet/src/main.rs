//! `devnet`: a whole domain on one machine with one command.
//!
//! Starts a throwaway PostgreSQL (or uses `DATABASE_URL`), 2 sequencers (TLS public API),
//! 2 domain managers, 2 mediator replicas and 2 participants from the sibling binaries,
//! allowlists and connects the participants, then pings between them every few seconds
//! until Ctrl-C or `--duration`, and stops everything in reverse order. See docs/devnet.md.

/// Writes a line to stdout with the time since start.
macro_rules! say {
    ($net:expr, $($arg:tt)*) => {{
        println!("[{:>6.1}s] {}", $net.started.elapsed().as_secs_f64(), format!($($arg)*));
    }};
}

mod chaos;
mod net;
mod ping;
mod procs;
mod setup;
mod start;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::net::Devnet;

/// A whole Canton-style domain on this machine: PostgreSQL, 2 sequencers, 2 domain
/// managers, 2 mediators, 2 participants, and pings between the participants.
#[derive(Parser, Debug)]
#[command(name = "devnet", version)]
pub struct Args {
    /// Run directory for configs, keys, TLS files, logs and the PostgreSQL data; must be
    /// empty or not exist. Default: a fresh temporary directory (printed at start).
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// Stop after pinging for this long (e.g. `60s`, `5m`). Default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Pause between two ping rounds (each round pings both ways). Default `2s`, with
    /// `--chaos` `500ms` (finer interruption figures).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// How long one ping waits for its verdict.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_timeout: Duration,
    /// Never run `cargo build` for the sibling binaries (by default devnet builds them
    /// when started by cargo, i.e. when `CARGO` is set, so they match the sources).
    #[arg(long)]
    pub no_build: bool,
    /// Delete the run directory (and, with DATABASE_URL, the databases) after a
    /// successful run.
    #[arg(long)]
    pub rm: bool,
    /// While pinging, kill (SIGKILL, then start again), pause (SIGSTOP, then SIGCONT) or
    /// restart (SIGTERM, then start again) a random sequencer, domain-manager or mediator
    /// replica every `--chaos-interval`, wait until it is back and pings flow again, and
    /// print a summary of the faults and interruptions at the end. See docs/devnet.md.
    #[arg(long)]
    pub chaos: bool,
    /// Pause between the recovery from one fault and the next fault (with `--chaos`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub chaos_interval: Duration,
    /// Seed of the fault schedule (with `--chaos`); the same seed picks the same faults,
    /// components and pause lengths. Default: from the clock (printed at start).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Args {
    pub fn ping_interval(&self) -> Duration {
        self.ping_interval.unwrap_or(if self.chaos {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("devnet: cannot install the rustls crypto provider");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("devnet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let dir = match setup::prepare_dir(args.dir.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("devnet: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let bin_dir = match setup::ensure_binaries(args.no_build) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("devnet: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut net = Devnet::new(dir.clone(), bin_dir);
    say!(
        net,
        "run directory {} (logs in {})",
        dir.display(),
        net.logs.display()
    );

    let started = tokio::select! {
        r = net.start(&args) => r,
        _ = cancel.cancelled() => Err(anyhow!("interrupted during start-up")),
    };
    let mut ok = true;
    match started {
        Err(e) => {
            eprintln!("devnet: error: {e:#}");
            ok = false;
        }
        Ok(()) => {
            say!(net, "domain {} is up", net.domain_id);
            // The two files of the joining flow (docs/onboarding.md).
            for f in &net.identity_files {
                say!(net, "identity file: {}", f.display());
            }
            if let Some(b) = &net.bundle_path {
                say!(net, "connection bundle: {}", b.display());
            }
            ok &= net.print_status().await;
            let pings = if args.chaos {
                chaos::run(&mut net, &args, &cancel).await
            } else {
                net.ping_loop(&args, &cancel).await
            };
            ok &= pings.healthy;
            ok &= net.print_status().await;
            net.print_participants().await;
            say!(net, "{}", pings.summary());
            if pings.ok == 0 {
                eprintln!("devnet: error: no ping succeeded");
                ok = false;
            }
        }
    }
    ok &= net.shutdown().await;
    if ok {
        say!(net, "devnet finished cleanly");
        if args.rm {
            net.drop_databases().await;
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => say!(net, "removed {}", dir.display()),
                Err(e) => eprintln!("devnet: cannot remove {}: {e}", dir.display()),
            }
        } else {
            say!(net, "logs, configs and keys are in {}", dir.display());
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("devnet: FAILED; logs are in {}", net.logs.display());
        ExitCode::FAILURE
    }
}

fn spawn_signal_handler(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("devnet: cannot install signal handlers; stop with --duration");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        println!("devnet: stop requested; shutting down (again to kill everything)");
        cancel.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("devnet: second signal: exiting at once");
        std::process::exit(130);
    });
}
