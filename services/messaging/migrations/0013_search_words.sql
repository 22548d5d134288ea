-- Typo-tolerant and substring search (issue 17): the words of the messages, each once,
-- with a trigram index. A one-word query is widened with the words that contain it or
-- look like it (pg_trgm on this small table), and the messages are then found through the
-- full-text index alone: no trigram comparison against every candidate message, which
-- made searches for common words take over a second on a million messages
-- (bench/NOTES.md). Filled in the background from the messages (search.rs). The index
-- messaging builds at start beside `messages_fts_<config>` is now `messages_created_at`
-- (newest-first reads for common words), no longer the trigram index on bodies that 0012's
-- comment names.
CREATE TABLE search_words (
    word text PRIMARY KEY
);
CREATE INDEX search_words_trgm ON search_words USING gin (word gin_trgm_ops);

-- How far the words job has read: messages up to (created_at, id).
CREATE TABLE search_words_position (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    created_at timestamptz NOT NULL,
    id         uuid        NOT NULL
);

-- A database that ran a build of 0012's time has that trigram index on bodies: it costs
-- every send and no query uses it any more.
DROP INDEX IF EXISTS messages_body_trgm;
