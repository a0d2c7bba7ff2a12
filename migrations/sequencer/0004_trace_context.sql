-- The sender's W3C traceparent (issue 15 item 5), stored with the event and delivered back so
-- the recipients' processing joins the sender's trace. Nullable: events sequenced before this
-- migration, and submissions without (or with an invalid) trace context, have none. The
-- service only stores validated version-00 values, so a row holds at most 55 bytes here.
ALTER TABLE seq_events ADD COLUMN trace_context TEXT;
