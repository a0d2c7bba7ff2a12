-- Sequencer schema, shared by every sequencer instance of one domain.
-- All timestamps named *_ts are int64 microseconds of sequencer time; columns
-- named *_at are database-clock timestamptz (used for liveness and expiry so
-- that instances with skewed clocks still agree).

-- Members, interned to small ints used in the hot tables.
CREATE TABLE seq_members (
    id             integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member         text    NOT NULL UNIQUE,
    -- Raw ed25519 key; bound when first presented (its fingerprint must match the id).
    public_key     bytea,
    enabled        boolean NOT NULL DEFAULT true,
    -- Sequencing timestamp of the registration: the member reads events strictly after it.
    -- Assigned by a writer inside its batch transaction so it is covered by the watermark.
    registered_ts  bigint  NOT NULL,
    -- Latest timestamp the member acknowledged (never moves backwards).
    acknowledged_ts bigint
);

-- Broadcast events are stored once under this pseudo member id.
-- (Identity columns start at 1, so -1 can never collide.)

-- One row per writer instance index. A writer's event batch and its watermark
-- advance commit in the same transaction, guarded by `owner` and `online`, so
-- no event above a watermark ever becomes visible.
CREATE TABLE seq_instances (
    instance_index smallint    PRIMARY KEY,
    -- Random token of the process that holds this index; fences stale processes.
    owner          uuid        NOT NULL,
    online         boolean     NOT NULL,
    -- Promise: this instance never writes an event with ts <= watermark_ts again.
    watermark_ts   bigint      NOT NULL,
    -- Database clock at the last watermark advance; peers mark the instance
    -- offline when this grows older than the offline threshold.
    heartbeat_at   timestamptz NOT NULL,
    -- Backend pid of the writer connection, so a peer can abort a writer that
    -- stalls inside a transaction while holding this row.
    writer_pid     integer,
    public_address text
);

-- One row per sequenced event.
CREATE TABLE seq_events (
    ts             bigint   PRIMARY KEY,
    instance_index smallint NOT NULL,
    sender         integer  NOT NULL,
    message_id     text     NOT NULL,
    -- Member ids of the recipients (sender included); {-1} for a broadcast.
    recipients     integer[] NOT NULL,
    -- The submission as signed by the sender (encoded SubmissionRequest).
    submission     bytea    NOT NULL,
    -- Encoded SignedEventContent and the sequencer's signature over it.
    content        bytea    NOT NULL,
    signature      bytea    NOT NULL
);

-- Fan-out index: a member's events in timestamp order.
CREATE TABLE seq_recipients (
    member_id integer NOT NULL,
    ts        bigint  NOT NULL,
    PRIMARY KEY (member_id, ts)
);

-- Counter checkpoints: the member's event with counter `counter` has timestamp `ts`.
-- Counter -1 at registered_ts is inserted at registration, so every member has one.
-- Resuming from counter c scans only from the nearest checkpoint below c.
CREATE TABLE seq_checkpoints (
    member_id integer NOT NULL,
    counter   bigint  NOT NULL,
    ts        bigint  NOT NULL,
    PRIMARY KEY (member_id, counter)
);

-- Deduplication of (sender, message_id) until the submission's max sequencing time.
CREATE TABLE seq_dedup (
    sender     integer NOT NULL,
    message_id text    NOT NULL,
    ts         bigint  NOT NULL,
    max_sequencing_ts bigint NOT NULL,
    PRIMARY KEY (sender, message_id)
);

-- Single-use authentication nonces and bearer tokens, shared by all instances.
CREATE TABLE seq_nonces (
    nonce      bytea       PRIMARY KEY,
    member     text        NOT NULL,
    public_key bytea       NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE TABLE seq_tokens (
    -- SHA-256 of the token; the token itself is never stored.
    token_hash bytea       PRIMARY KEY,
    member     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX seq_tokens_member ON seq_tokens (member);

-- Exclusive lower bound of readable events after pruning (single row).
CREATE TABLE seq_lower_bound (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    ts        bigint  NOT NULL
);
INSERT INTO seq_lower_bound (ts) VALUES (0);

-- Hot tables churn: vacuum and analyze them often.
ALTER TABLE seq_events SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000,
                            autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 100000);
ALTER TABLE seq_recipients SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000,
                                autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 100000);
