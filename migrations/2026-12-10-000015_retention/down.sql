DROP TABLE retention_runs;
DROP VIEW vendor_call_costs;

ALTER TABLE vendor_calls RENAME TO vendor_calls_partitioned;
ALTER TABLE vendor_calls_partitioned RENAME CONSTRAINT vendor_calls_pkey TO vendor_calls_partitioned_pkey;
ALTER SEQUENCE vendor_calls_id_seq OWNED BY NONE;
CREATE TABLE vendor_calls (
    LIKE vendor_calls_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS
);
ALTER SEQUENCE vendor_calls_id_seq OWNED BY vendor_calls.id;
INSERT INTO vendor_calls SELECT * FROM vendor_calls_partitioned;
DROP TABLE vendor_calls_partitioned;
ALTER TABLE vendor_calls ADD CONSTRAINT vendor_calls_pkey PRIMARY KEY (id);
CREATE INDEX vendor_calls_vendor_called_at_idx ON vendor_calls (vendor, called_at);
COMMENT ON TABLE vendor_calls IS 'Every outbound vendor API call, one row each, reserved before it is sent: the per-minute budget is counted here for the whole deployment.';

ALTER TABLE inbound_callbacks RENAME TO inbound_callbacks_partitioned;
ALTER TABLE inbound_callbacks_partitioned RENAME CONSTRAINT inbound_callbacks_pkey TO inbound_callbacks_partitioned_pkey;
ALTER SEQUENCE inbound_callbacks_id_seq OWNED BY NONE;
CREATE TABLE inbound_callbacks (
    LIKE inbound_callbacks_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS
);
ALTER SEQUENCE inbound_callbacks_id_seq OWNED BY inbound_callbacks.id;
INSERT INTO inbound_callbacks SELECT * FROM inbound_callbacks_partitioned;
DROP TABLE inbound_callbacks_partitioned;
ALTER TABLE inbound_callbacks ADD CONSTRAINT inbound_callbacks_pkey PRIMARY KEY (id);
CREATE INDEX inbound_callbacks_order_id_idx ON inbound_callbacks (order_id, received_at);
CREATE INDEX inbound_callbacks_received_at_idx ON inbound_callbacks (received_at);
CREATE INDEX inbound_callbacks_rejected_idx ON inbound_callbacks (outcome, received_at)
    WHERE outcome <> ALL (ARRAY['applied', 'duplicate', 'test']);
CREATE INDEX inbound_callbacks_request_id_idx ON inbound_callbacks (request_id);
COMMENT ON TABLE inbound_callbacks IS 'Every request to a callback URL, kept raw whatever happened to it (quarantine for the rejected ones).';

CREATE VIEW vendor_call_costs AS
SELECT vendor,
       (called_at AT TIME ZONE 'Asia/Shanghai')::date AS day_china,
       api,
       count(*) AS calls,
       count(*) FILTER (WHERE outcome <> 'ok') AS failed_calls,
       coalesce(sum(cost), 0::numeric) AS cost
FROM vendor_calls
GROUP BY vendor, (called_at AT TIME ZONE 'Asia/Shanghai')::date, api;
COMMENT ON VIEW vendor_call_costs IS 'Vendor calls and their billed cost (大麦家 deduct_money) per China-time day.';

DROP SCHEMA haoka_sync_partitions CASCADE;
