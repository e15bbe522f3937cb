-- The poll schedule, lease and call budget of each order move out of
-- `orders` into `order_polls`, one row per tracked order.
--
-- Why a side table rather than diesel's 64-column-tables feature: `orders`
-- was at diesel's 32-column limit with three concerns in one row (what we
-- know of the order; when we ask next; which process holds it and how many
-- calls it used today). The last two change on every poll (a lease taken,
-- a call counted, the lease released: several updates per query), and each
-- update of the wide row (with its jsonb details) wrote a new copy of all of
-- it. In a narrow table with free space on its pages (fillfactor 80) those
-- updates are HOT and small, `orders` changes only when the order does, and
-- both tables have room to grow. The feature flag would also slow every
-- build of diesel for a limit we would only hit again.
--
-- No foreign key between the two, like the append-only tables: the store
-- writes both in the transaction that creates or locks the order.

CREATE TABLE order_polls (
    vendor text NOT NULL,
    order_id text NOT NULL,
    next_check_at timestamptz,
    quiet_polls integer NOT NULL DEFAULT 0,
    lease_owner text,
    lease_until timestamptz,
    calls_day date,
    calls_today integer NOT NULL DEFAULT 0,
    last_poll_outcome text,
    tracking_expired_at timestamptz,
    tracked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vendor, order_id)
) WITH (fillfactor = 80);

COMMENT ON TABLE order_polls IS 'How and when the poller asks a vendor about each tracked order: its next check, backoff, lease and per-day call budget. One row per orders row.';
COMMENT ON COLUMN order_polls.next_check_at IS 'When the poller will next ask the vendor about this order (null: never again: terminal, or silent past the tracking horizon).';
COMMENT ON COLUMN order_polls.quiet_polls IS 'Consecutive polls that brought nothing new; the re-check interval grows with it. Reset by any news.';
COMMENT ON COLUMN order_polls.lease_owner IS 'The poller process holding this order while it queries the vendor.';
COMMENT ON COLUMN order_polls.lease_until IS 'The lease expires at this time (a crashed poller''s lease lapses by itself; POLL_LEASE).';
COMMENT ON COLUMN order_polls.calls_day IS 'China-time (UTC+8) day that calls_today counts.';
COMMENT ON COLUMN order_polls.calls_today IS 'Vendor queries spent on this order on calls_day (per-order daily limit).';
COMMENT ON COLUMN order_polls.last_poll_outcome IS 'Outcome of the latest query: ok, not_found, blocked, vendor_error, http_error, transport_error, timeout, unparseable, ...';
COMMENT ON COLUMN order_polls.tracked_at IS 'When tracking started or was restarted by ops; the tracking horizon counts from the later of this and orders.last_heard_at.';
COMMENT ON COLUMN order_polls.tracking_expired_at IS 'Set when the order was silent longer than the tracking horizon and polling stopped; see the expired_orders view.';

INSERT INTO order_polls (vendor, order_id, next_check_at, quiet_polls, lease_owner, lease_until,
                         calls_day, calls_today, last_poll_outcome, tracking_expired_at, tracked_at)
SELECT vendor, order_id, next_check_at, quiet_polls, lease_owner, lease_until,
       calls_day, calls_today, last_poll_outcome, tracking_expired_at, tracked_at
FROM orders;

CREATE INDEX order_polls_due_idx ON order_polls (vendor, next_check_at) WHERE next_check_at IS NOT NULL;

DROP VIEW overdue_orders;
DROP VIEW expired_orders;
DROP VIEW damaijia_orders;

ALTER TABLE orders
    DROP COLUMN next_check_at,
    DROP COLUMN quiet_polls,
    DROP COLUMN lease_owner,
    DROP COLUMN lease_until,
    DROP COLUMN calls_day,
    DROP COLUMN calls_today,
    DROP COLUMN last_poll_outcome,
    DROP COLUMN tracking_expired_at,
    DROP COLUMN tracked_at;

CREATE VIEW overdue_orders AS
SELECT o.vendor,
       o.order_id,
       o.status,
       o.vendor_status,
       o.last_heard_at,
       o.last_source,
       p.next_check_at,
       now() - p.next_check_at AS overdue_by,
       CASE
           WHEN c.reason = 'terminal' THEN format('confirming a callback that claims %s', c.claimed_status)
           WHEN c.reason = 'vendor_order_no' THEN 'learning the vendor number a callback was signed over'
           WHEN o.status = 'new' AND p.quiet_polls = 0 THEN 'tracked, never heard of'
           WHEN p.quiet_polls > 0 THEN format('re-check after %s quiet poll(s), last: %s', p.quiet_polls, p.last_poll_outcome)
           ELSE format('no news since %s while %s', to_char(COALESCE(o.last_heard_at, p.tracked_at), 'YYYY-MM-DD HH24:MI:SS TZ'), o.status)
       END AS reason,
       CASE WHEN p.calls_day = (now() AT TIME ZONE 'Asia/Shanghai')::date THEN p.calls_today ELSE 0 END AS calls_today,
       p.lease_owner,
       p.lease_until
FROM order_polls p
JOIN orders o ON o.vendor = p.vendor AND o.order_id = p.order_id
LEFT JOIN LATERAL (
    SELECT reason, claimed_status FROM callback_confirmations c
    WHERE c.vendor = o.vendor AND c.order_id = o.order_id AND c.resolved_at IS NULL
    ORDER BY c.id LIMIT 1
) c ON true
WHERE p.next_check_at <= now();

COMMENT ON VIEW overdue_orders IS 'Orders the poller should query now, and why.';

CREATE VIEW expired_orders AS
SELECT o.vendor, o.order_id, o.status, o.vendor_status, o.last_heard_at, p.tracked_at, o.created_at, p.tracking_expired_at
FROM order_polls p
JOIN orders o ON o.vendor = p.vendor AND o.order_id = p.order_id
WHERE p.tracking_expired_at IS NOT NULL AND NOT o.is_terminal;

COMMENT ON VIEW expired_orders IS 'Non-terminal orders silent past the tracking horizon: no longer polled, for ops to resolve (track them again to resume).';

CREATE VIEW damaijia_orders AS
SELECT o.order_id AS order_sn,
       o.status,
       o.vendor_status,
       (o.details ->> 'order_status')::int AS order_status,
       (o.details ->> 'refund_status')::int AS refund_status,
       o.details ->> 'goods_name' AS goods_name,
       (o.details ->> 'goods_count')::int AS goods_count,
       (o.details ->> 'pay_amount')::numeric AS pay_amount,
       (o.details ->> 'pay_time')::timestamptz AS pay_time,
       (o.details ->> 'last_ship_time')::timestamptz AS last_ship_time,
       o.details ->> 'receiver_name' AS receiver_name_masked,
       o.details ->> 'receiver_phone' AS receiver_phone_masked,
       COALESCE((o.details ->> 'refund_status')::int IN (2, 3), false) AS refund_in_progress,
       CASE
           WHEN o.status = 'pending' AND (o.details ->> 'last_ship_time')::timestamptz < now() THEN 'past_ship_by'
           WHEN o.status = 'pending' AND (o.details ->> 'last_ship_time')::timestamptz < now() + interval '24 hours' THEN 'ship_by_within_24h'
       END AS ship_by_alert,
       o.last_heard_at,
       p.next_check_at,
       p.last_poll_outcome
FROM orders o
LEFT JOIN order_polls p ON p.vendor = o.vendor AND p.order_id = o.order_id
WHERE o.vendor = 'damaijia';

COMMENT ON VIEW damaijia_orders IS 'PDD shop orders with their 大麦家 fields as columns. refund_in_progress: after-sale or refund under way (status unchanged). ship_by_alert: still 待发货 and past, or within 24 h of, the promised ship-by time.';
