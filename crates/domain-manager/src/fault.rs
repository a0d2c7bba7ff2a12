//! Test-only faults, compiled in with the `fault-injection` feature and driven by the
//! environment; without the feature every hook is a no-op.
//!
//! - `DOMAIN_MANAGER_FAULT_DROP_REPLY_FILE=<path>`: while `<path>` exists, every answer
//!   the sequencer gives to a topology `Send` is thrown away as if the connection had
//!   died after the sequencer committed (logged as "fault injection: dropped the
//!   sequencer's reply"). Tests use it for a reply lost after sequencing.

#[cfg(feature = "fault-injection")]
static DROP_REPLY: domain_runtime::fault::FileHook = domain_runtime::fault::FileHook::new(
    "DOMAIN_MANAGER_FAULT_DROP_REPLY_FILE",
    "fault injection active: sequencer replies are dropped while the file exists",
);

/// Reads the environment once, so the hook is announced at start-up.
pub(crate) fn init() {
    #[cfg(feature = "fault-injection")]
    DROP_REPLY.init();
}

/// Whether the reply to the send of `message_id` is to be dropped.
#[cfg(feature = "fault-injection")]
pub(crate) fn drop_reply(message_id: &str) -> bool {
    let drop = DROP_REPLY.is_armed();
    if drop {
        tracing::warn!(message_id, "fault injection: dropped the sequencer's reply");
    }
    drop
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn drop_reply(_message_id: &str) -> bool {
    false
}
