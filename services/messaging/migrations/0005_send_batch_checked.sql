-- A send batch as one statement (batch.rs, the fast path): a lane that already knows its
-- channels' counters (it wrote their previous messages) assigns seqs and encodes the events
-- before it touches the database, then this function, in one round trip and in its own
-- (autocommit) transaction, locks the channels in id order, checks that nothing moved
-- since (counter, membership version, every sender a member, no earlier send with the same
-- client_msg_id), and writes counters, messages and outbox events. If anything moved it
-- writes nothing and returns no row: the caller falls back to the five-statement
-- transaction. The lock is held for this statement and the commit only.
-- Additive (expand/contract): an older messaging never calls it.
CREATE FUNCTION send_batch_checked(
    at         timestamptz,
    c_ids      uuid[],  -- the batch's channels, sorted by id
    c_seen     int8[],  -- last_seq the caller assumed
    c_versions int8[],  -- members_version the caller assumed (its events carry it)
    c_new      int8[],  -- last_seq after the batch
    m_channel  uuid[],
    m_seq      int8[],
    m_id       uuid[],
    m_sender   text[],
    m_cid      text[],
    m_body     text[],
    e_id       uuid[],
    e_topic    text[],
    e_payload  bytea[],
    done       int8[]   -- published outbox rows to delete (earlier batches)
) RETURNS TABLE (outbox_id int8, event_id uuid)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    unchanged int;
BEGIN
    -- Lock in id order (the sort sits below the row locks, as in the five-statement path,
    -- so the two paths and every replica take channel locks in one order). A row updated
    -- by a concurrent transaction is re-checked against its committed version.
    SELECT count(*) INTO unchanged FROM (
        SELECT c.id FROM channels c
        JOIN unnest(c_ids, c_seen, c_versions) AS v(id, seen, version) ON c.id = v.id
        WHERE c.last_seq = v.seen AND c.members_version = v.version
        ORDER BY c.id
        FOR NO KEY UPDATE OF c
    ) locked;
    IF unchanged <> cardinality(c_ids) THEN
        RETURN;
    END IF;
    -- A new statement, a new snapshot: it sees everything committed before the locks were
    -- granted, and nobody can add to these channels while they are held.
    -- One index probe per message (LATERAL … LIMIT 1): a plain NOT EXISTS under OR is
    -- planned as a hash of the whole members table, on every call.
    IF EXISTS (
        SELECT 1
        FROM unnest(m_channel, m_sender, m_cid) AS r(channel_id, sender_id, client_msg_id)
        LEFT JOIN LATERAL (
            SELECT true AS yes FROM members m
            WHERE m.channel_id = r.channel_id AND m.user_id = r.sender_id
            LIMIT 1
        ) member ON true
        LEFT JOIN LATERAL (
            SELECT true AS yes FROM messages e
            WHERE e.channel_id = r.channel_id AND e.sender_id = r.sender_id
              AND e.client_msg_id = r.client_msg_id
            LIMIT 1
        ) earlier ON true
        WHERE member.yes IS NULL OR earlier.yes
    ) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH counters AS (
        UPDATE channels c SET last_seq = v.last_seq, last_activity_at = at
        FROM unnest(c_ids, c_new) AS v(id, last_seq)
        WHERE c.id = v.id
    ), published AS (
        DELETE FROM outbox o WHERE o.id = ANY(done)
    ), inserted AS (
        INSERT INTO messages (channel_id, seq, id, sender_id, client_msg_id, body, created_at)
        SELECT x.channel_id, x.seq, x.id, x.sender_id, x.client_msg_id, x.body, at
        FROM unnest(m_channel, m_seq, m_id, m_sender, m_cid, m_body)
             AS x(channel_id, seq, id, sender_id, client_msg_id, body)
    )
    INSERT INTO outbox AS o (event_id, topics, payload)
    SELECT e.event_id, ARRAY[e.topic], e.payload
    FROM unnest(e_id, e_topic, e_payload) WITH ORDINALITY AS e(event_id, topic, payload, i)
    ORDER BY e.i
    RETURNING o.id, o.event_id;
END
$$;
