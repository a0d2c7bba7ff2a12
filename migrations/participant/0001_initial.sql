-- Reference participant schema (database owned by one participant node).
--
-- Migrations are a reviewed API: never edit a migration once it has been applied anywhere
-- (sqlx verifies checksums); change the schema with a new NNNN_*.sql file. The binary
-- embeds this folder (sqlx::migrate!) and applies it at start-up.
--
-- Conventions: *_ts columns are int64 microseconds of SEQUENCER time; *_at columns are
-- DATABASE-clock timestamptz. Every processed batch of events changes requests, committed
-- transactions, topology, the outbox AND the processed counter in ONE transaction, so a
-- restart resumes from exactly the state the counter describes.

-- Position in the participant's event stream on its domain: one row, written at the first
-- connection. A node whose participant id or domain id differs refuses this database.
CREATE TABLE par_state (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    participant_id text        NOT NULL,
    domain_id      text        NOT NULL,
    -- Counter of the last processed event; -1 before the first.
    last_counter   bigint      NOT NULL DEFAULT -1,
    last_ts        bigint      NOT NULL DEFAULT 0,
    -- The last processed event (encoded domain.v1.SequencedEvent): the resubscription
    -- requests it again and checks the re-delivered copy is identical (fork detection).
    last_event     bytea,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Topology transactions accepted from the domain manager member, by serial.
CREATE TABLE par_topology (
    serial        bigint PRIMARY KEY,
    sequenced_ts  bigint NOT NULL,
    effective_ts  bigint NOT NULL,
    -- Encoded domain.v1.SignedTopologyTransaction as sequenced.
    signed        bytea  NOT NULL
);

-- Confirmation requests this participant is an informee of, until their verdict arrives.
CREATE TABLE par_pending_requests (
    -- Sequencing timestamp of the request event.
    request_id    bigint PRIMARY KEY,
    submitter     text   NOT NULL,
    informees     text[] NOT NULL,
    confirmers    text[] NOT NULL,
    mediator      text   NOT NULL,
    root_hash     bytea  NOT NULL,
    payload       bytea  NOT NULL,
    -- Message id of our own submission when we sent the request (pings), else ''.
    message_id    text   NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Committed transactions: requests whose verdict (verified mediator signature) approved them.
CREATE TABLE par_transactions (
    request_id     bigint      PRIMARY KEY,
    root_hash      bytea       NOT NULL,
    submitter      text        NOT NULL,
    payload        bytea       NOT NULL,
    -- Only approved verdicts commit a transaction.
    verdict        text        NOT NULL CHECK (verdict = 'approved'),
    -- The verdict as received (encoded domain.v1.SignedVerdict): evidence of the commit.
    signed_verdict bytea       NOT NULL,
    -- Sequencing timestamp of the verdict event.
    sequenced_ts   bigint      NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- Confirmation responses decided but maybe not yet sequenced. Written in the batch that
-- processed the request, deleted once the sequencer answered; resent at start-up (the
-- message id `response-<request id>-<participant name>` makes resends deduplicated).
CREATE TABLE par_outbox (
    message_id            text   PRIMARY KEY,
    -- Encoded, signed domain.v1.SendRequest.
    send_request          bytea  NOT NULL,
    max_sequencing_micros bigint NOT NULL,
    -- The decision the response carries (metrics label only).
    approve               boolean NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now()
);
