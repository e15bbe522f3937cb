DROP INDEX order_polls_due_idx;
CREATE INDEX order_polls_due_idx ON order_polls (vendor, next_check_at) WHERE next_check_at IS NOT NULL;
