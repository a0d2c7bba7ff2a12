//! Test-only faults, compiled in with the `fault-injection` feature and driven by the
//! environment; without the feature every hook is a no-op.
//!
//! - `MEDIATOR_FAULT_HOLD_FENCED_TX_FILE=<path>`: while `<path>` exists, the next batch
//!   persisted holds its fenced transaction open after its writes, before the commit,
//!   until the file is removed (logged as "fault injection: holding a fenced transaction
//!   open"). Tests use it to pause the active replica (`SIGSTOP`) inside a fenced
//!   transaction.

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    const HOLD_ENV: &str = "MEDIATOR_FAULT_HOLD_FENCED_TX_FILE";

    fn hold_file() -> Option<&'static PathBuf> {
        static HOLD: OnceLock<Option<PathBuf>> = OnceLock::new();
        HOLD.get_or_init(|| {
            let path = std::env::var_os(HOLD_ENV).map(PathBuf::from)?;
            tracing::warn!(
                hook = HOLD_ENV,
                path = %path.display(),
                "fault injection active: fenced transactions are held open while the file exists"
            );
            Some(path)
        })
        .as_ref()
    }

    /// Reads the environment once, so the hook is announced at start-up.
    pub fn init() {
        let _ = hold_file();
    }

    /// Holds the calling fenced transaction open while the trigger file exists.
    pub async fn hold_fenced_transaction() {
        let Some(path) = hold_file() else { return };
        if !path.exists() {
            return;
        }
        tracing::warn!(path = %path.display(), "fault injection: holding a fenced transaction open");
        while path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("fault injection: released the held fenced transaction");
    }
}

#[cfg(feature = "fault-injection")]
pub(crate) use enabled::{hold_fenced_transaction, init};

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn init() {}

#[cfg(not(feature = "fault-injection"))]
pub(crate) async fn hold_fenced_transaction() {}
