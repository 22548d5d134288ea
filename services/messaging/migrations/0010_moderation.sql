-- Lifecycle, moderation and blocking (issue 16). Additive (expand/contract): an older
-- messaging ignores the new columns and tables, and the replaced send_batch_checked keeps
-- its signature.

-- An archived channel is read-only (sends and edits refused with `archived`).
ALTER TABLE channels ADD COLUMN archived_at timestamptz;

-- A system event in a channel's history (moderation): JSON of {action, target_user_id,
-- reason?, expires_at?}; NULL for every message a user wrote.
ALTER TABLE messages ADD COLUMN system text;

-- Bans: the user is not a member and cannot be added, join or accept an invite until
-- expires_at (NULL: until lifted). Outlives the membership it ended.
CREATE TABLE bans (
    channel_id uuid        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    text        NOT NULL,
    banned_by  text        NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (channel_id, user_id)
);

-- Mutes: the member reads but cannot send or edit until expires_at (NULL: until lifted).
-- Kept apart from `members` so leaving and joining again does not lift it.
CREATE TABLE mutes (
    channel_id uuid        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    text        NOT NULL,
    muted_by   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    PRIMARY KEY (channel_id, user_id)
);

-- Blocks between users: `blocked` cannot open a direct channel with `blocker` nor send in
-- one they share; the blocker gets no pushes for `blocked`'s messages (notification keeps a
-- projection from the BlockChanged events).
CREATE TABLE blocks (
    blocker    text        NOT NULL,
    blocked    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);

-- Who did what to whom in a channel: every role change, transfer, archive, unarchive,
-- delete, ban, unban, mute and unmute. No foreign key: it outlives deleted channels.
CREATE TABLE audit_log (
    id         bigserial   PRIMARY KEY,
    channel_id uuid        NOT NULL,
    actor_id   text        NOT NULL,
    action     text        NOT NULL,
    target_id  text        NOT NULL DEFAULT '',
    details    text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_by_channel ON audit_log (channel_id, id);

-- The one-statement send (0005) now also refuses (writes nothing, so the transaction path
-- decides and answers with the exact code) when a channel is archived, a sender is muted,
-- or a sender is blocked by the other member of a direct channel.
CREATE OR REPLACE FUNCTION send_batch_checked(
    at         timestamptz,
    c_ids      uuid[],
    c_seen     int8[],
    c_versions int8[],
    c_new      int8[],
    m_channel  uuid[],
    m_seq      int8[],
    m_id       uuid[],
    m_sender   text[],
    m_cid      text[],
    m_body     text[],
    e_id       uuid[],
    e_topic    text[],
    e_payload  bytea[],
    done       int8[]
) RETURNS TABLE (outbox_id int8, event_id uuid)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    unchanged int;
BEGIN
    SELECT count(*) INTO unchanged FROM (
        SELECT c.id FROM channels c
        JOIN unnest(c_ids, c_seen, c_versions) AS v(id, seen, version) ON c.id = v.id
        WHERE c.last_seq = v.seen AND c.members_version = v.version
          AND c.archived_at IS NULL
        ORDER BY c.id
        FOR NO KEY UPDATE OF c
    ) locked;
    IF unchanged <> cardinality(c_ids) THEN
        RETURN;
    END IF;
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
        LEFT JOIN LATERAL (
            SELECT true AS yes FROM mutes u
            WHERE u.channel_id = r.channel_id AND u.user_id = r.sender_id
              AND (u.expires_at IS NULL OR u.expires_at > at)
            LIMIT 1
        ) muted ON true
        LEFT JOIN LATERAL (
            SELECT true AS yes FROM blocks b
            JOIN members o ON o.channel_id = r.channel_id AND o.user_id = b.blocker
            WHERE b.blocked = r.sender_id
              AND EXISTS (SELECT 1 FROM channels d WHERE d.id = r.channel_id AND d.kind = 'direct')
            LIMIT 1
        ) blocked ON true
        WHERE member.yes IS NULL OR earlier.yes OR muted.yes OR blocked.yes
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
