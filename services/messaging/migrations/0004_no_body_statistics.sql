-- No query filters or joins on a message's body or an outbox payload, so the planner never
-- uses their statistics; ANALYZE stops computing them (autovacuum analyzes `messages`
-- again and again as it grows). Measured on 1M messages of ~110-byte bodies: ANALYZE
-- 155-180 ms -> 136-140 ms (bench/NOTES.md).
ALTER TABLE messages ALTER COLUMN body SET STATISTICS 0;
ALTER TABLE outbox ALTER COLUMN payload SET STATISTICS 0;
