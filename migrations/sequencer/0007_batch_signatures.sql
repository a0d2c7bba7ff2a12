-- Batch signatures (issue 17): the sequencer signs the Merkle root of each batch once
-- instead of every event, and each event keeps its inclusion proof. No data changes: rows
-- written before keep their per-event signature and are delivered as before. The column's
-- two forms are told apart by length (crates/sequencer/src/event_auth.rs).
COMMENT ON COLUMN seq_events.signature IS
    '64 bytes: ed25519 signature (purpose SEQUENCED_EVENT) over content. '
    'Longer: 64-byte ed25519 signature (purpose SEQUENCED_BATCH) over the batch root, '
    'followed by the encoded domain.sequencer.v1.BatchProof of this event.';
