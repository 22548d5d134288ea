-- Attachments (issue 17): files a client uploads straight to S3-compatible object storage
-- through a presigned PUT; messaging keeps their metadata. Additive (expand/contract): an
-- older messaging ignores the new table and column.

-- One uploaded (or announced) file. Its object's key is `storage.key_prefix` +
-- `<channel_id>/<id>`. No foreign keys: a row outlives its message or channel until the
-- clean-up job has deleted its object (`doomed_at` set), then the row goes.
CREATE TABLE attachments (
    id           uuid        PRIMARY KEY,
    channel_id   uuid        NOT NULL,
    uploader_id  text        NOT NULL,
    filename     text        NOT NULL,
    content_type text        NOT NULL,
    size         bigint      NOT NULL CHECK (size >= 0),
    width        integer,
    height       integer,
    duration_ms  integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- When a HEAD of the object matched the announced size and type (checked once).
    verified_at  timestamptz,
    -- The message that carries it (set in the send's transaction; one message per upload).
    message_id   uuid,
    -- Set when its message or channel was deleted, or it stayed unsent past
    -- `attachments.orphan_ttl_secs`: the clean-up job deletes the object, then the row.
    doomed_at    timestamptz
);

-- The clean-up job: unsent uploads by age, and the doomed.
CREATE INDEX attachments_unsent ON attachments (created_at) WHERE message_id IS NULL AND doomed_at IS NULL;
CREATE INDEX attachments_doomed ON attachments (doomed_at) WHERE doomed_at IS NOT NULL;
-- A user's upload rate and storage quota.
CREATE INDEX attachments_by_uploader ON attachments (uploader_id, created_at);
-- A deleted message's attachments; a deleted channel's.
CREATE INDEX attachments_by_message ON attachments (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX attachments_by_channel ON attachments (channel_id);

-- The attachments' metadata a message carries (JSON array of {id, filename, content_type,
-- size, width?, height?, duration_ms?}); NULL when it has none. Cleared on delete.
ALTER TABLE messages ADD COLUMN attachments text;
