DROP INDEX forward_deliveries_created_at_idx;
CREATE INDEX forward_deliveries_created_at_idx ON forward_deliveries (created_at);
CREATE INDEX forward_deliveries_change_idx ON forward_deliveries (vendor, order_id, change_id);
ALTER TABLE forward_deliveries DROP CONSTRAINT forward_deliveries_change_target_key;
ALTER TABLE forward_deliveries ADD CONSTRAINT forward_deliveries_webhook_id_key UNIQUE (webhook_id);
COMMENT ON COLUMN forward_deliveries.webhook_id IS 'The Standard Webhooks webhook-id, the same on every attempt and redelivery: receivers dedupe on it.';
