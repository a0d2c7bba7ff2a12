//! Test-only faults, compiled in with the `fault-injection` feature and driven by the
//! environment; without the feature every hook is a no-op.
//!
//! - `MEDIATOR_FAULT_HOLD_FENCED_TX_FILE=<path>`: while `<path>` exists, the next batch
//!   persisted holds its fenced transaction open after its writes, before the commit,
//!   until the file is removed (logged as "fault injection: holding a fenced transaction
//!   open"). Tests use it to pause the active replica (`SIGSTOP`) inside a fenced
//!   transaction.

#[cfg(feature = "fault-injection")]
static HOLD_FENCED_TX: domain_runtime::fault::FileHook = domain_runtime::fault::FileHook::new(
    "MEDIATOR_FAULT_HOLD_FENCED_TX_FILE",
    "fault injection active: fenced transactions are held open while the file exists",
);

/// Reads the environment once, so the hook is announced at start-up.
pub(crate) fn init() {
    #[cfg(feature = "fault-injection")]
    HOLD_FENCED_TX.init();
}

/// Holds the calling fenced transaction open while the trigger file exists.
pub(crate) async fn hold_fenced_transaction() {
    #[cfg(feature = "fault-injection")]
    {
        let Some(path) = HOLD_FENCED_TX.path() else {
            return;
        };
        if !path.exists() {
            return;
        }
        tracing::warn!(path = %path.display(), "fault injection: holding a fenced transaction open");
        while path.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::warn!("fault injection: released the held fenced transaction");
    }
}
