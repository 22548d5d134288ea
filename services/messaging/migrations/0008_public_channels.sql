-- Public channels (issue 16): a group anyone can find by name and join.
ALTER TABLE channels DROP CONSTRAINT channels_kind_check;
ALTER TABLE channels ADD CONSTRAINT channels_kind_check
    CHECK (kind IN ('group', 'direct', 'public'));
-- Discovery walks public channels by name (keyset on lower(name), id).
CREATE INDEX channels_public_by_name ON channels (lower(name), id) WHERE kind = 'public';
