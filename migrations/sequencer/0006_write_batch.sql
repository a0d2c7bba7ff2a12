-- One writer batch of events in one statement (issue 17).
--
-- The writer used to send a batch as six dependent round trips on one connection (BEGIN,
-- dedup, events, recipients, watermark + NOTIFY, COMMIT), and PostgreSQL spent most of
-- each batch idle in transaction waiting for the next statement. Called as one
-- autocommit statement this function is the whole transaction: one round trip, one
-- commit, the same statements in the same order, so the same locks are taken in the same
-- order as before:
--   1. the dedup rows, in the caller's (sender, message_id) order, so two instances'
--      batches cannot deadlock on them;
--   2. events and recipient rows of the fresh keys only;
--   3. (fault injection only) a pause of p_hold_ms with the dedup rows held;
--   4. the instance's watermark row, fenced by owner and online: a fenced instance gets
--      SQLSTATE SQ001 and the whole batch rolls back, nothing of it visible;
--   5. the watermark notification (delivered at commit).
--
-- Returns the batch's duplicates: keys sequenced before (or by a concurrent batch that
-- committed first), with the timestamp they were sequenced at. A fresh key's row holds
-- this batch's timestamp, a duplicate's an earlier one (timestamps are unique), so the
-- lookup, a separate statement with a snapshot that sees the concurrent commit it waited
-- for, tells them apart by the timestamp.
--
-- Batches with registrations or topology transactions take the multi-statement path in
-- `store::commit_batch`; both paths stay in use and are tested.
CREATE FUNCTION seq_write_batch(
    p_index             smallint,
    p_owner             uuid,
    p_watermark         bigint,
    p_ts                bigint[],
    p_sender            integer[],
    p_message_id        text[],
    p_max_sequencing_ts bigint[],
    p_recipients        text[],
    p_submission        bytea[],
    p_content           bytea[],
    p_signature         bytea[],
    p_trace_context     text[],
    p_hold_ms           integer
) RETURNS TABLE (dup_sender integer, dup_message_id text, dup_ts bigint)
LANGUAGE plpgsql AS $$
DECLARE
    fresh bigint;
BEGIN
    WITH input AS (
        SELECT *
        FROM unnest(p_ts, p_sender, p_message_id, p_max_sequencing_ts, p_recipients,
                    p_submission, p_content, p_signature, p_trace_context)
            WITH ORDINALITY
            AS t(ts, sender, message_id, mst, recipients, submission, content, signature,
                 trace_context, n)
    ), kept AS (
        INSERT INTO seq_dedup AS d (sender, message_id, ts, max_sequencing_ts)
        SELECT i.sender, i.message_id, i.ts, i.mst FROM input i ORDER BY i.n
        ON CONFLICT (sender, message_id) DO UPDATE
            SET ts = EXCLUDED.ts, max_sequencing_ts = EXCLUDED.max_sequencing_ts
            WHERE d.max_sequencing_ts < EXCLUDED.ts
        RETURNING d.sender, d.message_id
    ), ev AS (
        INSERT INTO seq_events (ts, instance_index, sender, message_id, recipients,
                                submission, content, signature, trace_context)
        SELECT i.ts, p_index, i.sender, i.message_id, i.recipients::integer[],
               i.submission, i.content, i.signature, i.trace_context
        FROM input i JOIN kept k ON k.sender = i.sender AND k.message_id = i.message_id
        RETURNING seq_events.ts, seq_events.recipients
    ), rec AS (
        INSERT INTO seq_recipients (member_id, ts)
        SELECT unnest(ev.recipients), ev.ts FROM ev
    )
    SELECT count(*) INTO fresh FROM ev;

    IF fresh < coalesce(array_length(p_ts, 1), 0) THEN
        RETURN QUERY
            SELECT d.sender, d.message_id, d.ts
            FROM seq_dedup d
            JOIN unnest(p_sender, p_message_id, p_ts) AS k(sender, message_id, ts)
              ON d.sender = k.sender AND d.message_id = k.message_id
            WHERE d.ts <> k.ts;
    END IF;

    IF p_hold_ms > 0 THEN
        PERFORM pg_sleep(p_hold_ms / 1000.0);
    END IF;

    UPDATE seq_instances SET watermark_ts = p_watermark, heartbeat_at = clock_timestamp()
    WHERE instance_index = p_index AND owner = p_owner AND online;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance % is fenced: marked offline or owned by another process',
            p_index USING ERRCODE = 'SQ001';
    END IF;

    PERFORM pg_notify('seq_watermark',
        p_index::text || ':' || p_watermark::text || ':'
        || CASE WHEN coalesce(array_length(p_ts, 1), 0) = 0 THEN 'h' ELSE 'e' END);
END
$$;
