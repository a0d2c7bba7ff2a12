//! Detection of a database that went back in time.
//!
//! With asynchronous replication, promoting the standby loses the primary's last commits,
//! acknowledged ones included (docs/reliability.md, "Database failover and disk full"). The
//! database then serves a shorter history than this process already acknowledged and
//! delivered: live subscriptions count counters in memory on top of events that no longer
//! exist, and would go on diverging from what any fresh subscription reads. Three checks find
//! it, none of which can fire on a database that only ever moves forward:
//!
//! - the writer, when it comes back online after a database error, finds its instance row's
//!   watermark below the last watermark the database acknowledged to it (watermarks only
//!   rise; [`crate::store::go_online_checked`]);
//! - the shared reader finds the safe watermark below the position it already published
//!   (the safe watermark never decreases: instances come online above every watermark);
//! - the shared reader, after a failed read, finds the newest event it published no longer
//!   stored and not below the pruning bound (only pruning deletes events, after raising the
//!   bound).
//!
//! Either reports here; [`crate::run`] then shuts the instance down and fails with
//! `SEQ_DATABASE_HISTORY_LOST`. A restarted instance serves what the database holds, and a
//! member that received a lost event gets `ForkDetected` when it resubscribes (the event at
//! its last counter differs).

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The code in the log line and the exit error.
pub const HISTORY_LOST_CODE: &str = "SEQ_DATABASE_HISTORY_LOST";

/// Shared by the writer, the reader and [`crate::run`].
#[derive(Debug, Default)]
pub struct HistoryGuard {
    lost: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl HistoryGuard {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records that the database lost history this process saw (the first reason is kept)
    /// and wakes [`Self::lost`].
    pub fn report(&self, reason: String) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(
                code = HISTORY_LOST_CODE,
                %reason,
                "the database went back in time: acknowledged and delivered events are gone; \
                 stopping this instance (a restarted one serves what the database holds; \
                 members that received lost events see a fork)"
            );
            *slot = Some(reason);
        }
        drop(slot);
        self.lost.cancel();
    }

    /// Whether a loss was reported.
    #[cfg(test)]
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Waits until a loss is reported; returns its reason.
    pub async fn lost(&self) -> String {
        self.lost.cancelled().await;
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reason_wins() {
        let g = HistoryGuard::new();
        assert!(!g.is_lost());
        g.report("a".into());
        g.report("b".into());
        assert!(g.is_lost());
        assert_eq!(g.lost().await, "a");
    }
}
