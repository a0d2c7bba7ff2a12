-- Mediator schema (database owned by the mediator replicas).
--
-- Migrations are a reviewed API: never edit a migration once it has been applied
-- anywhere (sqlx verifies checksums); change the schema with a new NNNN_*.sql file.
-- The binary embeds this folder and applies it at start-up under sqlx's advisory lock,
-- so replicas starting together are safe.
--
-- Conventions: *_ts columns are int64 microseconds of SEQUENCER time; *_at columns are
-- DATABASE-clock timestamptz. Every state-changing write of the active replica runs in a
-- transaction whose first statement is the lease fence check (domain_lease::Fence::check)
-- and stamps written_epoch with the fence's epoch, so a stale replica cannot get a write
-- accepted. Each processed batch of events changes requests, responses, topology AND the
-- processed counter in that one transaction: a replica that takes over resumes from
-- exactly the state the counter describes.

-- Leader lease of the mediator replicas (lease name 'mediator').
-- Copied verbatim from migrations/lease_template.sql (owned by the domain-lease crate).
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    holder_address text NOT NULL DEFAULT '',
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL
);

-- Position in the mediator's event stream: one row, written by the first active replica.
-- A replica configured with another mediator id or domain id refuses this database.
CREATE TABLE med_state (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    mediator_id   text        NOT NULL,
    domain_id     text        NOT NULL,
    -- Counter of the last processed event; -1 before the first one.
    last_counter  bigint      NOT NULL CHECK (last_counter >= -1),
    -- Sequencing timestamp of that event; 0 before the first one.
    last_ts       bigint      NOT NULL,
    written_epoch bigint      NOT NULL,
    written_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Topology transactions accepted from the domain manager (sender DOM::...), by serial.
-- Reloaded at activation to rebuild the time-indexed topology state.
CREATE TABLE med_topology (
    serial        bigint      PRIMARY KEY CHECK (serial > 0),
    sequenced_ts  bigint      NOT NULL,
    -- sequenced_ts + the topology change delay in force at sequenced_ts.
    effective_ts  bigint      NOT NULL CHECK (effective_ts >= sequenced_ts),
    -- Counter of the event that carried it.
    counter       bigint      NOT NULL,
    -- Encoded domain.v1.SignedTopologyTransaction, as sequenced.
    signed        bytea       NOT NULL,
    written_epoch bigint      NOT NULL
);

-- Every confirmation request addressed to this mediator.
--
-- Life cycle: inserted 'pending' (or directly decided when the mediator rejects it at
-- once); 'decided' with the signed verdict in the same transaction as the event that
-- decided it; verdict_state then goes 'unsent' -> 'sent' (the sequencer acknowledged the
-- send of message id 'verdict-<request_id>') -> 'sequenced' (the mediator saw the receipt
-- in its own stream). 'expired': the fixed max sequencing time passed before any send
-- was acknowledged; 'undeliverable': the sequencer refused it permanently.
CREATE TABLE med_requests (
    -- Sequencing timestamp of the request.
    request_id          bigint      PRIMARY KEY,
    counter             bigint      NOT NULL,
    submitter           text        NOT NULL,
    informees           text[]      NOT NULL,
    confirmers          text[]      NOT NULL,
    -- Who receives the verdict (sender, and informees/confirmers the request reached).
    recipients          text[]      NOT NULL,
    root_hash           bytea       NOT NULL,
    -- request_id + participant response timeout in force at request_id.
    deadline_ts         bigint      NOT NULL,
    state               text        NOT NULL CHECK (state IN ('pending', 'decided')),
    outcome             text        NULL CHECK (outcome IN ('approved', 'rejected', 'timed_out')),
    -- Sequencing timestamp of the event that decided the request.
    decided_ts          bigint      NULL,
    -- Encoded domain.v1.SignedVerdict (signed once, at decision time).
    verdict             bytea       NULL,
    -- Max sequencing time of every (re)send, fixed at decision time.
    max_sequencing_ts   bigint      NULL,
    verdict_state       text        NOT NULL DEFAULT 'none'
        CHECK (verdict_state IN ('none', 'unsent', 'sent', 'sequenced', 'expired', 'undeliverable')),
    -- Sequencing timestamp of the verdict event (from the receipt).
    verdict_ts          bigint      NULL,
    written_epoch       bigint      NOT NULL,
    decided_at          timestamptz NULL,
    CHECK ((state = 'decided') = (outcome IS NOT NULL AND decided_ts IS NOT NULL
                                  AND verdict IS NOT NULL AND max_sequencing_ts IS NOT NULL)),
    CHECK ((state = 'pending') = (verdict_state = 'none'))
);

-- Activation loads the pending requests and the resend queue.
CREATE INDEX med_requests_pending ON med_requests (request_id) WHERE state = 'pending';
CREATE INDEX med_requests_unsent ON med_requests (request_id) WHERE verdict_state = 'unsent';
-- Activation loads recently decided requests (to classify stray responses).
CREATE INDEX med_requests_deadline ON med_requests (deadline_ts);

-- Counted confirmation responses (the first one per participant and request).
CREATE TABLE med_responses (
    request_id    bigint NOT NULL REFERENCES med_requests (request_id),
    participant   text   NOT NULL,
    -- Sequencing timestamp of the response.
    ts            bigint NOT NULL,
    decision      text   NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason        text   NOT NULL DEFAULT '',
    written_epoch bigint NOT NULL,
    PRIMARY KEY (request_id, participant)
);
