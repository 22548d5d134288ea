-- Schema `receipts` (created by the service before migrating; search_path points here).
--
-- Storage is O(channels + memberships): watermarks are two numbers per (channel, user),
-- never one row per message. Both tables are a projection of messaging's event stream
-- (`messaging:events`), corrected on demand by asking messaging (see docs/receipts.md).
--
-- fillfactor 80: the hot updates (a channel's last_seq on every message, a member's
-- watermarks on every mark) touch no indexed column, so with free space on the page
-- Postgres updates them in place (HOT) without new index entries.

-- One row per channel receipts has heard of. `last_seq` only grows (GREATEST), whatever
-- order events arrive in and however often they are redelivered.
CREATE TABLE channels (
    id       uuid   PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
) WITH (fillfactor = 80);

-- One row per (channel, user) that ever was a member (or sent a message before its join
-- event arrived). A leave keeps the row as a tombstone (`active = false`) so that a late or
-- replayed older join cannot resurrect the membership: membership events are applied last
-- writer wins by (member_at, member_event) = (event occurred_at, event_id).
CREATE TABLE members (
    channel_id    uuid        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id       text        NOT NULL,
    active        boolean     NOT NULL,
    -- The channel's last_seq when the user (last) joined: messages up to it never count
    -- as unread for this user.
    joined_seq    bigint      NOT NULL DEFAULT 0,
    -- Watermarks: only ever raised with GREATEST, clamped to channels.last_seq.
    delivered_seq bigint      NOT NULL DEFAULT 0,
    read_seq      bigint      NOT NULL DEFAULT 0,
    -- When a watermark last moved (NULL while both are 0).
    updated_at    timestamptz,
    -- Order key of the membership event applied last ('-infinity' / nil for rows created
    -- by a sender's message or by messaging's confirmation before any membership event).
    member_at     timestamptz NOT NULL DEFAULT '-infinity',
    member_event  uuid        NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    PRIMARY KEY (channel_id, user_id),
    CHECK (read_seq <= delivered_seq)
) WITH (fillfactor = 80);

-- GetUnread: a user's current channels as one index range scan; each row then probes
-- channels by primary key. Partial on `active`, so left channels cost nothing. Watermarks
-- are deliberately not INCLUDEd: an index-only scan would save ~1 ms per GetUnread of a
-- user in 1,000 channels, but every MarkRead would become a non-HOT update writing a new
-- entry into this index (and the visibility map it relies on is cleared by those very
-- updates).
CREATE INDEX members_by_user ON members (user_id, channel_id) WHERE active;
