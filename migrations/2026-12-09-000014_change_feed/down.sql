DROP VIEW order_changes;
DROP TABLE order_change_log;
