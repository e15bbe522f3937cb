-- Fallback polling: when each order is next checked, who holds it, how many
-- vendor calls it used today, every vendor call made, and vendor pauses.

ALTER TABLE orders
    ADD COLUMN next_check_at timestamptz,
    ADD COLUMN quiet_polls integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_owner text,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN calls_day date,
    ADD COLUMN calls_today integer NOT NULL DEFAULT 0,
    ADD COLUMN last_poll_outcome text,
    ADD COLUMN tracking_expired_at timestamptz,
    ADD COLUMN tracked_at timestamptz NOT NULL DEFAULT now();

UPDATE orders SET tracked_at = created_at;

COMMENT ON COLUMN orders.next_check_at IS 'When the poller will next ask the vendor about this order (null: never again: terminal, or silent past the tracking horizon).';
COMMENT ON COLUMN orders.quiet_polls IS 'Consecutive polls that brought nothing new; the re-check interval grows with it. Reset by any news.';
COMMENT ON COLUMN orders.lease_owner IS 'The poller process holding this order while it queries the vendor.';
COMMENT ON COLUMN orders.lease_until IS 'The lease expires at this time (a crashed poller''s lease lapses by itself).';
COMMENT ON COLUMN orders.calls_day IS 'China-time (UTC+8) day that calls_today counts.';
COMMENT ON COLUMN orders.calls_today IS 'Vendor queries spent on this order on calls_day (per-order daily limit).';
COMMENT ON COLUMN orders.last_poll_outcome IS 'Outcome of the latest query: ok, not_found, blocked, vendor_error, http_error, transport_error, timeout, unparseable.';
COMMENT ON COLUMN orders.tracked_at IS 'When tracking started or was restarted by ops; the tracking horizon counts from the later of this and last_heard_at.';
COMMENT ON COLUMN orders.tracking_expired_at IS 'Set when the order was silent longer than the tracking horizon and polling stopped; see the expired_orders view.';

-- Orders tracked before polling existed: check within the hour.
UPDATE orders SET next_check_at = COALESCE(last_heard_at, created_at) + interval '1 hour'
WHERE NOT is_terminal;

CREATE INDEX orders_due_idx ON orders (vendor, next_check_at) WHERE next_check_at IS NOT NULL;

CREATE TABLE vendor_calls (
    id bigserial PRIMARY KEY,
    vendor text NOT NULL,
    called_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    api text NOT NULL,
    order_ids text[] NOT NULL,
    caller text NOT NULL,
    outcome text NOT NULL DEFAULT 'pending',
    http_status integer,
    duration_ms integer,
    error text,
    cost bigint
);

COMMENT ON TABLE vendor_calls IS 'Every outbound vendor API call, one row each, reserved before it is sent: the per-minute budget is counted here for the whole deployment.';
COMMENT ON COLUMN vendor_calls.called_at IS 'When the call was reserved (just before sending).';
COMMENT ON COLUMN vendor_calls.api IS 'Vendor endpoint, e.g. GetOrderInfo or mpagingOrders.';
COMMENT ON COLUMN vendor_calls.caller IS 'Which process made the call (host:pid).';
COMMENT ON COLUMN vendor_calls.outcome IS 'pending while in flight, then ok, not_found, blocked, vendor_error, http_error, transport_error, timeout, unparseable, ...';
COMMENT ON COLUMN vendor_calls.cost IS 'What the vendor billed for the call, in its unit (大麦家 deduct_money); null when free.';

CREATE INDEX vendor_calls_vendor_called_at_idx ON vendor_calls (vendor, called_at);

CREATE TABLE vendor_pauses (
    vendor text PRIMARY KEY,
    paused_until timestamptz NOT NULL,
    reason text NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE vendor_pauses IS 'Polling of a vendor is paused until paused_until (blocked, repeated failures, or a configuration problem). Delete the row to resume early.';

CREATE VIEW overdue_orders AS
SELECT vendor,
       order_id,
       status,
       vendor_status,
       last_heard_at,
       last_source,
       next_check_at,
       now() - next_check_at AS overdue_by,
       CASE
           WHEN status = 'new' AND quiet_polls = 0 THEN 'tracked, never heard of'
           WHEN quiet_polls > 0 THEN format('re-check after %s quiet poll(s), last: %s', quiet_polls, last_poll_outcome)
           ELSE format('no news since %s while %s', to_char(COALESCE(last_heard_at, tracked_at), 'YYYY-MM-DD HH24:MI:SS TZ'), status)
       END AS reason,
       CASE WHEN calls_day = (now() AT TIME ZONE 'Asia/Shanghai')::date THEN calls_today ELSE 0 END AS calls_today,
       lease_owner,
       lease_until
FROM orders
WHERE next_check_at <= now();

COMMENT ON VIEW overdue_orders IS 'Orders the poller should query now, and why.';

CREATE VIEW order_status_counts AS
SELECT vendor, status, count(*) AS orders
FROM orders
GROUP BY vendor, status;

COMMENT ON VIEW order_status_counts IS 'Orders per vendor and normalized status.';

CREATE VIEW expired_orders AS
SELECT vendor, order_id, status, vendor_status, last_heard_at, tracked_at, created_at, tracking_expired_at
FROM orders
WHERE tracking_expired_at IS NOT NULL AND NOT is_terminal;

COMMENT ON VIEW expired_orders IS 'Non-terminal orders silent past the tracking horizon: no longer polled, for ops to resolve (track them again to resume).';
