-- The forwarding worker's claim walks the due pending deliveries oldest due
-- first and stops after the batch it wants ("ORDER BY next_attempt_at, id
-- LIMIT n"). With the due index on next_attempt_at alone PostgreSQL read
-- every due pending row (a bitmap scan) and sorted them, so one claim cost
-- grew with the backlog: ~100 ms at 50,000 pending (bench/forward). Keyed
-- on (next_attempt_at, id) the index hands the rows over in claim order and
-- a claim reads about as many rows as it takes (BENCHMARKS.md, Forwarding).
DROP INDEX forward_deliveries_due_idx;
CREATE INDEX forward_deliveries_due_idx ON forward_deliveries (next_attempt_at, id) WHERE state = 'pending';
