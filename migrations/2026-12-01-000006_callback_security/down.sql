CREATE OR REPLACE VIEW overdue_orders AS
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

DROP TABLE callback_confirmations;
DELETE FROM order_events WHERE effect = 'unconfirmed';
ALTER TABLE order_events DROP CONSTRAINT order_events_effect_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_effect_check CHECK (effect IN (
    'advanced', 'same', 'stale', 'conflict', 'unknown_status'));
ALTER TABLE inbound_callbacks
    DROP COLUMN source_addr,
    DROP COLUMN replayed_at,
    DROP COLUMN replay_outcome,
    DROP COLUMN replay_event_id;
DELETE FROM inbound_callbacks WHERE outcome IN ('unverified', 'forbidden_source', 'internal_error');
ALTER TABLE inbound_callbacks DROP CONSTRAINT inbound_callbacks_outcome_check;
ALTER TABLE inbound_callbacks ADD CONSTRAINT inbound_callbacks_outcome_check CHECK (outcome IN (
    'applied', 'duplicate', 'test', 'bad_signature', 'malformed', 'too_large', 'not_configured'));
