-- 大麦家: the current API token shared by every process (each login kills
-- the previous token), explicit links between shop and card orders, and views
-- for ops.

CREATE TABLE vendor_tokens (
    vendor text PRIMARY KEY,
    token text,
    obtained_at timestamptz,
    login_owner text,
    login_lease_until timestamptz
);

COMMENT ON TABLE vendor_tokens IS 'The API token the service obtained by logging in (大麦家). Every login invalidates older tokens, so one process at a time logs in (login lease) and all processes use the token stored here. A credential: restrict access like the service''s configuration.';
COMMENT ON COLUMN vendor_tokens.login_lease_until IS 'A login is in progress until this time; other processes wait for its token instead of logging in themselves.';

CREATE TABLE order_link_overrides (
    haoka172_order_id text NOT NULL,
    damaijia_order_sn text NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (haoka172_order_id, damaijia_order_sn)
);

COMMENT ON TABLE order_link_overrides IS 'Links between a 172 order and a PDD shop order whose ids differ, entered by ops (same ids link by themselves).';

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

CREATE VIEW order_links AS
WITH pairs AS (
    SELECT h.order_id AS haoka172_order_id, d.order_id AS damaijia_order_sn, 'same_id' AS linked_by
    FROM orders h
    JOIN orders d ON d.vendor = 'damaijia' AND d.order_id = h.order_id
    WHERE h.vendor = 'haoka172'
    UNION
    SELECT haoka172_order_id, damaijia_order_sn, 'manual' FROM order_link_overrides
)
SELECT p.haoka172_order_id,
       p.damaijia_order_sn,
       p.linked_by,
       h.status AS haoka172_status,
       h.vendor_status AS haoka172_vendor_status,
       d.status AS damaijia_status,
       d.vendor_status AS damaijia_vendor_status,
       (d.details ->> 'last_ship_time')::timestamptz AS pdd_last_ship_time,
       CASE
           WHEN d.status = 'cancelled'
                AND h.status IN ('pending', 'submitted', 'shipped', 'completed', 'settled')
               THEN 'pdd_refunded_but_172_proceeds'
           WHEN h.status IN ('shipped', 'completed', 'settled')
                AND d.status = 'pending'
                AND (d.details ->> 'last_ship_time')::timestamptz < now()
               THEN '172_shipped_but_pdd_unshipped_past_ship_by'
       END AS contradiction
FROM pairs p
LEFT JOIN orders h ON h.vendor = 'haoka172' AND h.order_id = p.haoka172_order_id
LEFT JOIN orders d ON d.vendor = 'damaijia' AND d.order_id = p.damaijia_order_sn;

COMMENT ON VIEW order_links IS 'A 172 card order next to its PDD shop order (same id, or linked in order_link_overrides); contradiction is set when the two sides disagree.';

CREATE VIEW vendor_call_costs AS
SELECT vendor,
       (called_at AT TIME ZONE 'Asia/Shanghai')::date AS day_china,
       api,
       count(*) AS calls,
       count(*) FILTER (WHERE outcome <> 'ok') AS failed_calls,
       COALESCE(sum(cost), 0) AS cost
FROM vendor_calls
GROUP BY 1, 2, 3;

COMMENT ON VIEW vendor_call_costs IS 'Vendor calls and their billed cost (大麦家 deduct_money) per China-time day.';
