DROP VIEW overdue_orders;
DROP VIEW expired_orders;
DROP VIEW damaijia_orders;

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

UPDATE orders o SET next_check_at = p.next_check_at, quiet_polls = p.quiet_polls,
    lease_owner = p.lease_owner, lease_until = p.lease_until, calls_day = p.calls_day,
    calls_today = p.calls_today, last_poll_outcome = p.last_poll_outcome,
    tracking_expired_at = p.tracking_expired_at, tracked_at = p.tracked_at
FROM order_polls p WHERE p.vendor = o.vendor AND p.order_id = o.order_id;

CREATE INDEX orders_due_idx ON orders (vendor, next_check_at) WHERE next_check_at IS NOT NULL;
DROP TABLE order_polls;

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
           WHEN c.reason = 'terminal' THEN format('confirming a callback that claims %s', c.claimed_status)
           WHEN c.reason = 'vendor_order_no' THEN 'learning the vendor number a callback was signed over'
           WHEN status = 'new' AND quiet_polls = 0 THEN 'tracked, never heard of'
           WHEN quiet_polls > 0 THEN format('re-check after %s quiet poll(s), last: %s', quiet_polls, last_poll_outcome)
           ELSE format('no news since %s while %s', to_char(COALESCE(last_heard_at, tracked_at), 'YYYY-MM-DD HH24:MI:SS TZ'), status)
       END AS reason,
       CASE WHEN calls_day = (now() AT TIME ZONE 'Asia/Shanghai')::date THEN calls_today ELSE 0 END AS calls_today,
       lease_owner,
       lease_until
FROM orders o
LEFT JOIN LATERAL (
    SELECT reason, claimed_status FROM callback_confirmations c
    WHERE c.vendor = o.vendor AND c.order_id = o.order_id AND c.resolved_at IS NULL
    ORDER BY c.id LIMIT 1
) c ON true
WHERE next_check_at <= now();

COMMENT ON VIEW overdue_orders IS 'Orders the poller should query now, and why.';

CREATE VIEW expired_orders AS
SELECT vendor, order_id, status, vendor_status, last_heard_at, tracked_at, created_at, tracking_expired_at
FROM orders
WHERE tracking_expired_at IS NOT NULL AND NOT is_terminal;

COMMENT ON VIEW expired_orders IS 'Non-terminal orders silent past the tracking horizon: no longer polled, for ops to resolve (track them again to resume).';

CREATE VIEW damaijia_orders AS
SELECT order_id AS order_sn,
       status,
       vendor_status,
       (details ->> 'order_status')::int AS order_status,
       (details ->> 'refund_status')::int AS refund_status,
       details ->> 'goods_name' AS goods_name,
       (details ->> 'goods_count')::int AS goods_count,
       (details ->> 'pay_amount')::numeric AS pay_amount,
       (details ->> 'pay_time')::timestamptz AS pay_time,
       (details ->> 'last_ship_time')::timestamptz AS last_ship_time,
       details ->> 'receiver_name' AS receiver_name_masked,
       details ->> 'receiver_phone' AS receiver_phone_masked,
       COALESCE((details ->> 'refund_status')::int IN (2, 3), false) AS refund_in_progress,
       CASE
           WHEN status = 'pending' AND (details ->> 'last_ship_time')::timestamptz < now() THEN 'past_ship_by'
           WHEN status = 'pending' AND (details ->> 'last_ship_time')::timestamptz < now() + interval '24 hours' THEN 'ship_by_within_24h'
       END AS ship_by_alert,
       last_heard_at,
       next_check_at,
       last_poll_outcome
FROM orders
WHERE vendor = 'damaijia';

COMMENT ON VIEW damaijia_orders IS 'PDD shop orders with their 大麦家 fields as columns. refund_in_progress: after-sale or refund under way (status unchanged). ship_by_alert: still 待发货 and past, or within 24 h of, the promised ship-by time.';
