-- Blocks between users (issue 16), a projection of messaging's BlockChanged events: a
-- blocker gets no pushes for the messages of a user they blocked. A lifted block stays as
-- a row with active = false, so an older event arriving late never overrides a newer one.
CREATE TABLE blocks (
    blocker text        NOT NULL,
    blocked text        NOT NULL,
    active  boolean     NOT NULL,
    at      timestamptz NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker) WHERE active;
