-- Storage settings for the hot tables (measured in bench/NOTES.md).
-- The outbox is a queue: every send inserts a row and deletes it right after publishing,
-- so it is all dead tuples unless vacuumed often. Vacuum it by row count, not by a
-- fraction of a table that is always nearly empty, and without cost-based sleeping.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000
);
-- Every send updates its channel row (last_seq, last_activity_at): leave room in each page
-- so the update stays HOT (no index change, pruned in place).
ALTER TABLE channels SET (fillfactor = 70);
-- The sweeper finds old rows by scanning the primary key (ids grow with time), so the
-- created_at index only cost an insert and a delete per event.
DROP INDEX IF EXISTS outbox_by_age;
