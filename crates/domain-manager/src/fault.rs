//! Test-only faults, compiled in with the `fault-injection` feature and driven by the
//! environment; without the feature every hook is a no-op.
//!
//! - `DOMAIN_MANAGER_FAULT_DROP_REPLY_FILE=<path>`: while `<path>` exists, every answer
//!   the sequencer gives to a topology `Send` is thrown away as if the connection had
//!   died after the sequencer committed (logged as "fault injection: dropped the
//!   sequencer's reply"). Tests use it for a reply lost after sequencing.

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    const DROP_ENV: &str = "DOMAIN_MANAGER_FAULT_DROP_REPLY_FILE";

    fn drop_file() -> Option<&'static PathBuf> {
        static DROP: OnceLock<Option<PathBuf>> = OnceLock::new();
        DROP.get_or_init(|| {
            let path = std::env::var_os(DROP_ENV).map(PathBuf::from)?;
            tracing::warn!(
                hook = DROP_ENV,
                path = %path.display(),
                "fault injection active: sequencer replies are dropped while the file exists"
            );
            Some(path)
        })
        .as_ref()
    }

    /// Reads the environment once, so the hook is announced at start-up.
    pub fn init() {
        let _ = drop_file();
    }

    /// Whether the reply to the send of `message_id` is to be dropped.
    pub fn drop_reply(message_id: &str) -> bool {
        let drop = drop_file().is_some_and(|p| p.exists());
        if drop {
            tracing::warn!(message_id, "fault injection: dropped the sequencer's reply");
        }
        drop
    }
}

#[cfg(feature = "fault-injection")]
pub(crate) use enabled::{drop_reply, init};

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn init() {}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn drop_reply(_message_id: &str) -> bool {
    false
}
