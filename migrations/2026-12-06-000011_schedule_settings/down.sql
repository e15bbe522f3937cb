ALTER TABLE order_polls DROP COLUMN last_polled_at;
DROP TABLE schedule_settings;
