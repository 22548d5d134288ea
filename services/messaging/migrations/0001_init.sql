-- Schema `messaging` (created by the service before migrating; search_path points here).
-- Channels: one row per channel. `last_seq` is the per-channel sequence counter: a send
-- increments it inside the transaction that inserts the message, so seqs are gapless in
-- what is committed and the row lock serialises concurrent sends to one channel.
CREATE TABLE channels (
    id               uuid PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('group', 'direct')),
    name             text        NOT NULL,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_seq         bigint      NOT NULL DEFAULT 0,
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    member_count     integer     NOT NULL DEFAULT 0,
    -- "<user a>\n<user b>" (sorted) for direct channels: one direct channel per pair.
    direct_key       text UNIQUE
);

CREATE TABLE members (
    channel_id uuid        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    text        NOT NULL,
    role       text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, user_id)
);
-- A user's channels (channel list, positions on connect).
CREATE INDEX members_by_user ON members (user_id, channel_id);

-- Messages: keyset history is an index range scan on the primary key.
CREATE TABLE messages (
    channel_id    uuid        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    seq           bigint      NOT NULL,
    id            uuid        NOT NULL UNIQUE,
    sender_id     text        NOT NULL,
    client_msg_id text        NOT NULL,
    body          text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    edited_at     timestamptz,
    deleted       boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (channel_id, seq),
    -- Idempotency: a retried send returns the original.
    UNIQUE (channel_id, sender_id, client_msg_id)
);

-- Transactional outbox: written in the same transaction as the change it describes,
-- deleted once published to Redis. Rows left behind by a crash are republished by the
-- sweeper (FOR UPDATE SKIP LOCKED, so replicas share the work).
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    event_id   uuid        NOT NULL,
    topics     text[]      NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_by_age ON outbox (created_at);
