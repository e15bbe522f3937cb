DROP INDEX forward_deliveries_claim_idx;
CREATE INDEX forward_deliveries_due_idx ON forward_deliveries (next_attempt_at) WHERE state = 'pending';
