-- `order_polls_due_idx` gains `order_id` as its last column. The claim
-- still reads it in `next_check_at` order; the callback-gap sweep's keyset
-- walk (`(next_check_at, order_id) > cursor ORDER BY next_check_at,
-- order_id LIMIT n`) now reads n entries from the cursor, in order, instead
-- of sorting what it found: all of a group of orders due at the same time
-- (orders registered together share one next check) or, when the planner
-- misjudged how many were left, every order due later. Replaced rather than
-- added, so that a change of `next_check_at` still updates one index, not
-- two; the name stays, as the docs and plans know it.
--
-- The build reads every tracked order once and holds writes to
-- `order_polls` meanwhile.

DROP INDEX order_polls_due_idx;
CREATE INDEX order_polls_due_idx ON order_polls (vendor, next_check_at, order_id) WHERE next_check_at IS NOT NULL;
