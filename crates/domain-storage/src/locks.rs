//! Every PostgreSQL advisory-lock key of the domain, in one place.
//!
//! Advisory locks share one 64-bit key space per database; components that may share a
//! database (or a test cluster) must never pick the same key for different purposes. Keys
//! are allocated here, each with who takes it and why; a test checks they are distinct.
//! Changing a key is a rolling-upgrade hazard (old and new replicas would not exclude each
//! other), like changing a migration.

/// Sequencer: the one instance writing checkpoints in a round (transaction-scoped,
/// `pg_try_advisory_xact_lock`; the others skip the round).
pub const SEQ_CHECKPOINTS: i64 = 7_301_001;
/// Sequencer: whichever instance or admin call prunes (session-scoped).
pub const SEQ_PRUNING: i64 = 7_301_002;
/// Sequencer: instances applying due topology transactions (transaction-scoped). The
/// value spells "seq_topo".
pub const SEQ_TOPOLOGY_APPLY: i64 = 0x7365_715f_746f_706f;
/// Participant: one participant process per database (session-scoped, held for life).
pub const PARTICIPANT_INSTANCE: i64 = 7_301_601;

/// Every key above, for the uniqueness test (and for operators reading `pg_locks`).
pub const ALL: &[(&str, i64)] = &[
    ("sequencer checkpoints", SEQ_CHECKPOINTS),
    ("sequencer pruning", SEQ_PRUNING),
    ("sequencer topology apply", SEQ_TOPOLOGY_APPLY),
    ("participant instance", PARTICIPANT_INSTANCE),
];

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_distinct() {
        let mut keys: Vec<i64> = super::ALL.iter().map(|(_, k)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), super::ALL.len());
    }
}
