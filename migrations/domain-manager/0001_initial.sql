-- Domain-manager schema (database owned by the domain manager replicas).
--
-- Migrations are a reviewed API: never edit a migration once it has been applied
-- anywhere (sqlx verifies checksums); change the schema with a new NNNN_*.sql file.
-- The binary embeds this folder and applies it at start-up under sqlx's advisory lock,
-- so replicas starting together are safe.
--
-- Conventions: *_ts columns are int64 microseconds of SEQUENCER time; *_at columns are
-- DATABASE-clock timestamptz. Every state-changing write of the active replica runs in a
-- transaction whose first statement is the lease fence check (domain_lease::Fence::check),
-- and stamps written_epoch with the fence's epoch, so a stale or split-brain replica
-- cannot get a write accepted.

-- Leader lease of the domain-manager replicas (lease name 'domain-manager').
-- Copied verbatim from migrations/lease_template.sql (owned by the domain-lease crate).
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    holder_address text NOT NULL DEFAULT '',
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL
);

-- The domain this database belongs to: one row, written by the first active replica.
-- A replica configured with another domain id (other namespace key or domain name)
-- refuses to start against this database.
CREATE TABLE dm_domain (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- '<domain-name>::<fingerprint of the namespace key>'
    domain_id   text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Every topology transaction the domain manager ever signed, by serial.
--
-- Life cycle: a row is inserted 'pending' (serial allocated, transaction signed) before
-- it is sent through the sequencer with message id 'topology-<serial>', then updated to
-- 'sequenced' with the sequencing timestamp the sequencer answered and the effective
-- time (sequenced_ts + topology change delay in force at sequenced_ts). A pending row
-- is resent with the same message id (deduplicated by the sequencer) until sequenced;
-- new serials are only allocated once no row is pending, so serial order is
-- sequencing order.
CREATE TABLE dm_topology (
    -- Domain-wide serial, strictly increasing from 1; receivers ignore serials seen before.
    serial         bigint      PRIMARY KEY CHECK (serial > 0),
    -- Later transactions with the same key replace earlier ones: 'participant/<id>',
    -- 'mediator/<id>', 'sequencer/<id>' or 'parameters'.
    mapping_key    text        NOT NULL,
    kind           text        NOT NULL
        CHECK (kind IN ('participant_state', 'mediator', 'sequencer', 'domain_parameters')),
    operation      text        NOT NULL CHECK (operation IN ('replace', 'remove')),
    -- Encoded domain.v1.TopologyTransaction (exactly the bytes the signature covers).
    transaction    bytea       NOT NULL,
    -- Encoded domain.v1.SignedTopologyTransaction, as sent to the sequencer.
    signed         bytea       NOT NULL,
    state          text        NOT NULL CHECK (state IN ('pending', 'sequenced')),
    sequenced_ts   bigint      NULL,
    effective_ts   bigint      NULL,
    -- Lease epoch of the replica that last wrote the row, and when (database clock).
    written_epoch  bigint      NOT NULL,
    written_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((state = 'sequenced') = (sequenced_ts IS NOT NULL AND effective_ts IS NOT NULL)),
    CHECK (effective_ts IS NULL OR effective_ts >= sequenced_ts)
);

-- Latest transaction per key (reads, idempotence checks).
CREATE INDEX dm_topology_by_key ON dm_topology (mapping_key, serial DESC);

-- The resend queue.
CREATE INDEX dm_topology_pending ON dm_topology (serial) WHERE state = 'pending';
