DROP INDEX order_polls_expired_idx;
DROP VIEW overdue_orders;
DROP VIEW order_poll_state;

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
