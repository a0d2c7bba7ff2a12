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

/// Returns a token cancelled on the first SIGTERM or SIGINT; a second one exits the process
/// immediately with [`EXIT_SECOND_SIGNAL`]. Must be called inside a tokio runtime.
///
/// Fails only if the signal handlers cannot be registered.
pub fn shutdown_signal() -> std::io::Result<CancellationToken> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested, draining");
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
