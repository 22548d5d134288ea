-- Membership version of a channel: bumped by every join and leave, in the transaction
-- that changes `members`. MessageCreated events and ListMembers carry it, so a consumer
-- (notification) can cache a channel's member list exactly: same version, same members.
ALTER TABLE channels ADD COLUMN members_version bigint NOT NULL DEFAULT 1;
