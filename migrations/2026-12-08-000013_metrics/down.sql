CREATE OR REPLACE VIEW order_status_counts AS
SELECT vendor, status, count(*) AS orders
FROM orders
GROUP BY vendor, status;

COMMENT ON VIEW order_status_counts IS 'Orders per vendor and normalized status.';

DROP TRIGGER order_count_truncate ON orders;
DROP TRIGGER order_count_delete ON orders;
DROP TRIGGER order_count_update ON orders;
DROP TRIGGER order_count_insert ON orders;
DROP FUNCTION order_count_truncated();
DROP FUNCTION order_count_deleted();
DROP FUNCTION order_count_updated();
DROP FUNCTION order_count_inserted();
DROP TABLE order_count_deltas;
DROP TABLE order_counts;
