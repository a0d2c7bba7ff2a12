-- Pruning keeps the events that carry topology (crates/sequencer/src/pruning.rs): every
-- read and count of a member's events below the lower bound, and every pruning delete,
-- looks its timestamp up here.
CREATE INDEX seq_topology_sequenced ON seq_topology (sequenced_ts);
