-- Leader-lease table of the domain-lease crate (canonical text).
--
-- This file is a TEMPLATE, not a migration: sqlx never runs it. Every active-passive
-- component (mediator, domain manager) copies the statement below verbatim into one of its
-- own migrations (migrations/<component>/NNNN_leases.sql), so the lease lives in the same
-- database as the state it fences. The domain-lease crate embeds this file as
-- `domain_lease::LEASE_TABLE_DDL` for its tests; change it only together with the crate.
--
-- One row per lease name (normally one per component database):
--   name            lease name, e.g. 'mediator'
--   holder          unique id of the holding process, e.g. 'mediator-host1-1a2b3c4d'
--   holder_address  what passive replicas tell clients (the active's admin endpoint)
--   epoch           fencing token: incremented on every acquisition, never decremented
--   expires_at      DATABASE clock (clock_timestamp()) time after which the row may be taken
--   acquired_at     DATABASE clock time of the acquisition that set the current epoch
--
-- All times are written and compared by the database clock only; hosts never compare
-- their own clocks with these columns.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    holder_address text NOT NULL DEFAULT '',
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL
);
