-- The forwarding worker's claim takes, per target, the earliest due pending
-- deliveries ("WHERE target_id = t ... ORDER BY next_attempt_at, id LIMIT
-- n"). Without an index in that order PostgreSQL read every pending row of
-- the target (a bitmap scan of forward_deliveries_order_idx, then a sort):
-- one claim cost grew with the backlog, ~100-150 ms at 50,000 pending
-- (bench/forward), and stale statistics right after a burst kept it there.
-- With this index a claim reads about as many rows as it takes
-- (BENCHMARKS.md, Forwarding). It replaces forward_deliveries_due_idx
-- (next_attempt_at alone): every query that read that one names a target
-- too, and the callback path, which inserts the deliveries, keeps the same
-- number of indexes to maintain.
DROP INDEX forward_deliveries_due_idx;
CREATE INDEX forward_deliveries_claim_idx ON forward_deliveries (target_id, next_attempt_at, id) WHERE state = 'pending';
