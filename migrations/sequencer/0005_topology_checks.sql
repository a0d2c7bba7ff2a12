-- seq_topology gets the CHECK constraints dm_topology has had from the start: the values the
-- writer stores are validated in code (domain-topology) before they get here, so these
-- only catch a bug or a hand edit, and they document the column domains in the schema.
-- Existing rows all passed that validation, so adding the constraints validates cleanly.
ALTER TABLE seq_topology
    ADD CONSTRAINT seq_topology_serial_positive CHECK (serial > 0),
    ADD CONSTRAINT seq_topology_kind
        CHECK (kind IN ('participant_state', 'mediator', 'sequencer', 'domain_parameters')),
    ADD CONSTRAINT seq_topology_operation CHECK (operation IN ('replace', 'remove')),
    ADD CONSTRAINT seq_topology_permission
        CHECK (permission IS NULL
               OR permission IN ('submission', 'confirmation', 'observation', 'disabled')),
    ADD CONSTRAINT seq_topology_member
        CHECK ((member IS NULL) = (kind = 'domain_parameters')),
    ADD CONSTRAINT seq_topology_effective_after_sequenced CHECK (effective_ts >= sequenced_ts);
