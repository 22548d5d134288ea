-- Invites to channels (issue 16): a code admits whoever accepts it until it expires or has
-- been used max_uses times.
CREATE TABLE invites (
    code       text        PRIMARY KEY,
    channel_id uuid        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    max_uses   integer     NOT NULL CHECK (max_uses > 0),
    uses       integer     NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses)
);
CREATE INDEX invites_by_channel ON invites (channel_id);
