//! The pings between the participants, and their figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::Args;
use crate::net::Devnet;
use crate::procs;

/// Outcome of the ping phase.
pub struct PingStats {
    pub ok: usize,
    pub failed: usize,
    pub rtts_ms: Vec<f64>,
    /// No component died.
    pub healthy: bool,
}

impl PingStats {
    pub fn summary(&self) -> String {
        let mut v = self.rtts_ms.clone();
        v.sort_by(f64::total_cmp);
        let rtt = if v.is_empty() {
            String::new()
        } else {
            format!(
                "; round trip min {:.1} ms, median {:.1} ms, max {:.1} ms",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1]
            )
        };
        format!("pings: {} approved, {} failed{rtt}", self.ok, self.failed)
    }
}

impl Devnet {
    /// Pings both ways every `ping_interval` until `--duration` passed or a stop signal.
    pub async fn ping_loop(&mut self, args: &Args, cancel: &CancellationToken) -> PingStats {
        let mut stats = PingStats {
            ok: 0,
            failed: 0,
            rtts_ms: Vec::new(),
            healthy: true,
        };
        let end = args.duration.map(|d| Instant::now() + d);
        match args.duration {
            Some(d) => say!(self, "pinging every {:?} for {d:?}", args.ping_interval()),
            None => say!(
                self,
                "pinging every {:?}; Ctrl-C to stop",
                args.ping_interval()
            ),
        }
        'rounds: loop {
            for (from, to) in [(0usize, 1usize), (1, 0)] {
                if cancel.is_cancelled() {
                    break 'rounds;
                }
                let (from_name, to_name, to_member, admin) = {
                    let f = &self.participants[from];
                    let t = &self.participants[to];
                    (
                        f.name.clone(),
                        t.name.clone(),
                        t.member.clone(),
                        f.admin.clone(),
                    )
                };
                match ping(&self.pinger(), &admin, &to_member, args.ping_timeout).await {
                    Ok(line) => {
                        stats.ok += 1;
                        if let Some(ms) = parse_rtt_ms(&line) {
                            stats.rtts_ms.push(ms);
                        }
                        say!(self, "{from_name} -> {to_name}: {line}");
                    }
                    Err(e) => {
                        stats.failed += 1;
                        say!(self, "{from_name} -> {to_name}: FAILED: {e}");
                    }
                }
            }
            if let Some(dead) = self.first_dead() {
                eprintln!("devnet: error: {dead}");
                stats.healthy = false;
                break;
            }
            let now = Instant::now();
            let wait = match end {
                Some(end) if now >= end => break,
                Some(end) => args.ping_interval().min(end - now),
                None => args.ping_interval(),
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            if end.is_some_and(|end| Instant::now() >= end) {
                break;
            }
        }
        stats
    }

    /// What a ping needs, detached from `self` (the chaos mode pings from its own task).
    pub fn pinger(&self) -> PingSetup {
        PingSetup {
            participant: self.bin("participant"),
            dir: self.dir.clone(),
            log: self.logs.join("pings.log"),
        }
    }
}

/// The `participant` binary, working directory and log of the pings.
#[derive(Clone)]
pub struct PingSetup {
    pub participant: PathBuf,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// One `participant ping` through the participant at `admin` to `to_member`: the
/// `ping … approved in 23.4 ms` line, or why it failed.
pub async fn ping(
    setup: &PingSetup,
    admin: &str,
    to_member: &str,
    timeout: Duration,
) -> Result<String, String> {
    let timeout_arg = format!("{}ms", timeout.as_millis());
    let out = procs::run(
        &setup.participant,
        &[
            "ping",
            to_member,
            "--admin-endpoint",
            admin,
            "--timeout",
            &timeout_arg,
        ],
        &setup.dir,
        &setup.log,
        timeout + Duration::from_secs(15),
    )
    .await;
    match out {
        Ok(o) if o.status.success() => Ok(o.stdout.trim().to_owned()),
        Ok(o) => Err(o.stderr.trim().to_owned()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// The round trip in a `ping … approved in 23.4 ms` line.
pub fn parse_rtt_ms(line: &str) -> Option<f64> {
    let (_, rest) = line.rsplit_once(" in ")?;
    rest.strip_suffix(" ms")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_lines() {
        assert_eq!(
            parse_rtt_ms("ping PAR::b::1220ab approved in 23.4 ms"),
            Some(23.4)
        );
        assert_eq!(parse_rtt_ms("ping failed"), None);
    }
}
