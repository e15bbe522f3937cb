-- A leaner outbox row. Every delivery is inserted by the transaction that
-- commits its change, on the saturated callback path, and each of its index
-- entries is WAL that commit must flush. Measured on a copy of the table
-- (51,200 rows in batches of 256, BENCHMARKS.md, Forwarding): the six
-- indexes made an insert cost 1,260 bytes of WAL per row, against 774 for
-- the heap alone; these changes bring it to 1,062 and the insert time down
-- by 28 %.
--
-- * The text key on webhook_id becomes a unique (change_id, target_id):
--   webhook_id is msg_<change_id>_<target_id>, so it is the same
--   uniqueness with an 8+8 byte key instead of a ~20 byte text one.
-- * forward_deliveries_change_idx (vendor, order_id, change_id) goes: the
--   only readers (deliveries --order, redeliver --order) find the order's
--   changes in order_change_log (its (vendor, order_id, id) index) and
--   their deliveries by the unique key above.
-- * created_at, read only by the prune and by redeliver's time window,
--   becomes a BRIN index: rows are inserted in created_at order, so a few
--   pages of summary do what a B-tree entry per row did.
ALTER TABLE forward_deliveries DROP CONSTRAINT forward_deliveries_webhook_id_key;
ALTER TABLE forward_deliveries ADD CONSTRAINT forward_deliveries_change_target_key UNIQUE (change_id, target_id);
DROP INDEX forward_deliveries_change_idx;
DROP INDEX forward_deliveries_created_at_idx;
CREATE INDEX forward_deliveries_created_at_idx ON forward_deliveries USING brin (created_at);
COMMENT ON COLUMN forward_deliveries.webhook_id IS 'The Standard Webhooks webhook-id, msg_<change_id>_<target_id> (unique through forward_deliveries_change_target_key), the same on every attempt and redelivery: receivers dedupe on it.';
