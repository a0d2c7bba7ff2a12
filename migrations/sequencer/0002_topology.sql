-- Topology transactions of the domain manager, as sequenced. Written by the
-- writer in the same transaction as the event that carries them, so a
-- transaction exists here exactly when its event is sequenced.
--
-- Every instance applies due rows (effective_ts <= now) to seq_members under
-- a transaction-scoped advisory lock, in (effective_ts, serial) order, and
-- marks them applied; applying is idempotent, so whichever instance comes
-- first does the work and the others find nothing to do.
CREATE TABLE seq_topology (
    -- Domain-wide serial chosen by the domain manager; a serial seen before is ignored.
    serial        bigint   PRIMARY KEY,
    -- Sequencing timestamp of the carrying event.
    sequenced_ts  bigint   NOT NULL,
    -- sequenced_ts + the topology change delay in force at sequenced_ts.
    effective_ts  bigint   NOT NULL,
    -- 'participant_state' | 'mediator' | 'sequencer' | 'domain_parameters'.
    kind          text     NOT NULL,
    -- 'replace' | 'remove'.
    operation     text     NOT NULL,
    -- The member the mapping is about (NULL for domain parameters).
    member        text,
    -- Participant permission ('submission' … 'disabled'); NULL for other kinds.
    permission    text,
    -- The encoded SignedTopologyTransaction exactly as the domain manager signed it.
    signed        bytea    NOT NULL,
    applied       boolean  NOT NULL DEFAULT false
);

-- The applier's work queue.
CREATE INDEX seq_topology_pending ON seq_topology (effective_ts, serial) WHERE NOT applied;
