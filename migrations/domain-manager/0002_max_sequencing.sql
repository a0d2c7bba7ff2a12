-- Explicit max sequencing time of topology sends (issue 11 item 14).
--
-- A transaction used to be sent without a max sequencing time, so the sequencer applied
-- its default window from each attempt's arrival: a resend after a lost reply and an
-- outage longer than that window was sequenced a second time, and the domain manager
-- recorded the second timestamp while members kept the first. Now every pending row
-- carries the message id it is sent under and the max sequencing time fixed when that
-- id was chosen; every resend repeats both, so the sequencer either deduplicates it
-- (answering the original timestamp) or refuses it as past its deadline. In the latter
-- case the domain manager reads its own event stream past the deadline to learn whether
-- the message was sequenced (and at which timestamp) before it sends the transaction
-- again under a new message id.
--
-- NULL in rows written before this migration: message id 'topology-<serial>', and a max
-- sequencing time is fixed at the next send.
ALTER TABLE dm_topology ADD COLUMN message_id text NULL;
ALTER TABLE dm_topology ADD COLUMN max_sequencing_ts bigint NULL;
