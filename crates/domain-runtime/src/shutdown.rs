//! Graceful shutdown: a token cancelled by SIGTERM/SIGINT, and a deadline-bounded drain.
//!
//! The expected sequence in a binary: the token fires → flip readiness to not ready → stop
//! accepting (servers watch the token) → [`drain`] in-flight work within the grace period →
//! exit non-zero if the deadline passed. A second signal during the drain exits at once with
//! code 130, for operators who do not want to wait.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit code used when a second signal cuts the drain short (128 + SIGINT).
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Environment variable a supervisor (devnet, the test kit) sets to its own pid. The service
/// then shuts down gracefully as soon as that process is gone, like on SIGTERM: a supervisor
/// killed with SIGKILL cannot forward a signal, and its children would otherwise keep their
/// ports, leases and database connections. Services started any other way ignore it.
pub const EXIT_WITH_PARENT_ENV: &str = "DOMAIN_EXIT_WITH_PARENT";

/// How often the parent is checked when [`EXIT_WITH_PARENT_ENV`] is set.
const PARENT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Returns a token cancelled on the first SIGTERM or SIGINT (or when the supervisor named by
/// [`EXIT_WITH_PARENT_ENV`] is gone); a second signal exits the process immediately with
/// [`EXIT_SECOND_SIGNAL`]. Must be called inside a tokio runtime.
///
/// Fails if the signal handlers cannot be registered or [`EXIT_WITH_PARENT_ENV`] is not a
/// process id.
pub fn shutdown_signal() -> std::io::Result<CancellationToken> {
    let supervisor = supervisor_pid(std::env::var(EXIT_WITH_PARENT_ENV).ok().as_deref())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
            () = supervisor_gone(supervisor) => "supervisor exited",
        };
        tracing::info!(reason, "shutdown requested, draining");
        trigger.cancel();
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal, exiting without draining");
        std::process::exit(EXIT_SECOND_SIGNAL);
    });
    Ok(token)
}

/// Parses [`EXIT_WITH_PARENT_ENV`]: unset or empty means no supervisor.
fn supervisor_pid(value: Option<&str>) -> std::io::Result<Option<u32>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => match text.parse::<u32>() {
            Ok(pid) if pid > 1 => Ok(Some(pid)),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{EXIT_WITH_PARENT_ENV}={text:?} is not the process id of a supervisor"),
            )),
        },
    }
}

/// Resolves once this process's parent is no longer `supervisor`; never without one.
///
/// When a parent dies its children are re-parented (to init or a subreaper), so a changed
/// parent id means the supervisor is gone. Comparing with the pid the supervisor passed in,
/// rather than the parent seen at startup, also catches a supervisor that died before this
/// check first ran.
async fn supervisor_gone(supervisor: Option<u32>) {
    let Some(supervisor) = supervisor else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(PARENT_CHECK_INTERVAL);
    loop {
        tick.tick().await;
        let parent = std::os::unix::process::parent_id();
        if parent != supervisor {
            tracing::warn!(supervisor, parent, "supervisor process is gone");
            return;
        }
    }
}

/// The drain deadline passed before all work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutdown drain did not finish within {deadline:?}")]
pub struct DrainTimedOut {
    /// The deadline that passed.
    pub deadline: Duration,
}

/// Waits for all `futures` (e.g. server and task `JoinHandle`s), at most `deadline`; returns
/// their outputs in order, or [`DrainTimedOut`].
pub async fn drain<F>(
    deadline: Duration,
    futures: impl IntoIterator<Item = F>,
) -> Result<Vec<F::Output>, DrainTimedOut>
where
    F: Future,
{
    tokio::time::timeout(deadline, futures::future::join_all(futures))
        .await
        .map_err(|_| DrainTimedOut { deadline })
}

/// Closes `tracker` and waits for its tasks, at most `deadline`.
pub async fn drain_tracker(deadline: Duration, tracker: &TaskTracker) -> Result<(), DrainTimedOut> {
    tracker.close();
    tokio::time::timeout(deadline, tracker.wait())
        .await
        .map_err(|_| DrainTimedOut { deadline })
}

/// The clock of a periodic background task: a tick every `period` (a late tick delays the
/// next ones rather than bunching them) until the task's stop token is cancelled.
#[derive(Debug)]
pub struct Ticks {
    interval: tokio::time::Interval,
    stop: CancellationToken,
}

impl Ticks {
    /// Ticks every `period`, the first one at once.
    pub fn new(period: Duration, stop: &CancellationToken) -> Self {
        Self::from_interval(tokio::time::interval(period), stop)
    }

    /// Ticks every `period`, the first one after one period.
    pub fn after_first_period(period: Duration, stop: &CancellationToken) -> Self {
        let start = tokio::time::Instant::now() + period;
        Self::from_interval(tokio::time::interval_at(start, period), stop)
    }

    fn from_interval(mut interval: tokio::time::Interval, stop: &CancellationToken) -> Self {
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            interval,
            stop: stop.clone(),
        }
    }

    /// Waits for the next tick: `true` when it came, `false` once the stop token is
    /// cancelled (the task should return).
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_reports_completion_and_timeout() {
        let quick = drain(Duration::from_secs(1), [1, 2].map(std::future::ready)).await;
        assert_eq!(quick, Ok(vec![1, 2]));

        let slow = drain(
            Duration::from_millis(50),
            [tokio::time::sleep(Duration::from_secs(60))],
        )
        .await;
        assert_eq!(
            slow,
            Err(DrainTimedOut {
                deadline: Duration::from_millis(50)
            })
        );
    }

    #[test]
    fn supervisor_pid_is_validated() {
        assert_eq!(supervisor_pid(None).ok(), Some(None));
        assert_eq!(supervisor_pid(Some(" ")).ok(), Some(None));
        assert_eq!(supervisor_pid(Some("4242")).ok(), Some(Some(4242)));
        for bad in ["abc", "-3", "1", "0", "12x"] {
            let error = supervisor_pid(Some(bad)).err().map(|e| e.to_string());
            assert!(
                error
                    .as_deref()
                    .is_some_and(|e| e.contains(EXIT_WITH_PARENT_ENV) && e.contains(bad)),
                "{bad}: {error:?}"
            );
        }
    }

    #[tokio::test]
    async fn supervisor_gone_follows_the_parent() {
        // Our real parent is alive for the whole test: never resolves.
        let alive = supervisor_gone(Some(std::os::unix::process::parent_id()));
        assert!(
            tokio::time::timeout(Duration::from_millis(700), alive)
                .await
                .is_err()
        );
        // A pid that is not our parent means the supervisor is gone: resolves at once.
        let gone = supervisor_gone(Some(std::os::unix::process::parent_id() + 1));
        assert!(
            tokio::time::timeout(Duration::from_secs(5), gone)
                .await
                .is_ok()
        );
        // No supervisor: never resolves.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), supervisor_gone(None))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn drain_tracker_waits_for_tasks() {
        let tracker = TaskTracker::new();
        tracker.spawn(tokio::time::sleep(Duration::from_millis(10)));
        assert_eq!(
            drain_tracker(Duration::from_secs(1), &tracker).await,
            Ok(())
        );

        let tracker = TaskTracker::new();
        tracker.spawn(tokio::time::sleep(Duration::from_secs(60)));
        assert!(
            drain_tracker(Duration::from_millis(50), &tracker)
                .await
                .is_err()
        );
    }
}
