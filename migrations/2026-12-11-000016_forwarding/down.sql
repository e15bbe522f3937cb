DROP TABLE forward_attempts;
DROP TABLE forward_deliveries;
DROP TABLE forward_targets;
DROP VIEW order_changes;
CREATE VIEW order_changes AS
SELECT id, vendor, order_id, from_status, to_status, source, at, event_id
FROM order_change_log;
COMMENT ON VIEW order_changes IS 'The applied status changes, id increasing in commit order: read WHERE id > <last id you handled> ORDER BY id to catch up; LISTEN haoka_sync_order_changed to hear of new ones.';
ALTER TABLE order_change_log DROP COLUMN order_seq;
