-- One definition of where each tracked order stands with the poller: when
-- it is next asked and why. `overdue_orders` becomes the due part of it, and
-- `haoka-sync show` prints the same reason, so ops read one wording in SQL,
-- the CLI and the API.

CREATE VIEW order_poll_state AS
SELECT o.vendor,
       o.order_id,
       o.status,
       o.vendor_status,
       o.is_terminal,
       o.last_heard_at,
       o.last_source,
       p.next_check_at,
       CASE
           WHEN c.reason = 'terminal' THEN format('confirming a callback that claims %s', c.claimed_status)
           WHEN c.reason = 'vendor_order_no' THEN 'learning the vendor number a callback was signed over'
           WHEN p.next_check_at IS NULL AND p.tracking_expired_at IS NOT NULL
               THEN 'silent past the tracking horizon: not asked again (track it to resume)'
           WHEN p.next_check_at IS NULL AND o.is_terminal THEN format('terminal (%s): never asked again', o.status)
           WHEN p.next_check_at IS NULL THEN 'not scheduled'
           WHEN o.status = 'new' AND p.quiet_polls = 0 THEN 'tracked, never heard of'
           WHEN p.quiet_polls > 0 THEN format('re-check after %s quiet poll(s), last: %s', p.quiet_polls, p.last_poll_outcome)
           ELSE format('no news since %s while %s', to_char(COALESCE(o.last_heard_at, p.tracked_at), 'YYYY-MM-DD HH24:MI:SS TZ'), o.status)
       END AS reason,
       p.quiet_polls,
       p.last_poll_outcome,
       CASE WHEN p.calls_day = (now() AT TIME ZONE 'Asia/Shanghai')::date THEN p.calls_today ELSE 0 END AS calls_today,
       p.tracked_at,
       p.tracking_expired_at,
       p.lease_owner,
       p.lease_until
FROM order_polls p
JOIN orders o ON o.vendor = p.vendor AND o.order_id = p.order_id
LEFT JOIN LATERAL (
    SELECT reason, claimed_status FROM callback_confirmations c
    WHERE c.vendor = o.vendor AND c.order_id = o.order_id AND c.resolved_at IS NULL
    ORDER BY c.id LIMIT 1
) c ON true;

COMMENT ON VIEW order_poll_state IS 'Every tracked order: when the poller next asks the vendor and why, its last poll outcome, quiet polls and calls today (China day).';

DROP VIEW overdue_orders;

CREATE VIEW overdue_orders AS
SELECT vendor,
       order_id,
       status,
       vendor_status,
       last_heard_at,
       last_source,
       next_check_at,
       now() - next_check_at AS overdue_by,
       reason,
       calls_today,
       lease_owner,
       lease_until
FROM order_poll_state
WHERE next_check_at <= now();

COMMENT ON VIEW overdue_orders IS 'Orders the poller should query now, and why.';

-- The few orders whose tracking expired, found without scanning the rest
-- (`track` looks them up among every id it is given).
CREATE INDEX order_polls_expired_idx ON order_polls (vendor, order_id) WHERE tracking_expired_at IS NOT NULL;
