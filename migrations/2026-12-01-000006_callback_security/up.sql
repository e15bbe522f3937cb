-- Callback security (a captured sign must not change orders it was not made
-- for). The vendor's AES sign covers one order number and nothing else, so:
--
-- * a sign over OrderNo172 counts only when OrderNo172 equals the vendor
--   order number we already hold from an authenticated source; otherwise the
--   request is kept as `unverified` and settled after one GetOrderInfo;
-- * a callback that would make an order terminal (absorbing) is held until
--   the vendor confirms it (callback_confirmations);
-- * a callback from an address outside CALLBACK_ALLOWED_SOURCES is refused
--   (`forbidden_source`); a request that cannot be stored in full is kept raw
--   as `internal_error` (answered 503, never 500).

ALTER TABLE inbound_callbacks DROP CONSTRAINT inbound_callbacks_outcome_check;
ALTER TABLE inbound_callbacks ADD CONSTRAINT inbound_callbacks_outcome_check CHECK (outcome IN (
    'applied', 'duplicate', 'test', 'bad_signature', 'malformed', 'too_large', 'not_configured',
    'unverified', 'forbidden_source', 'internal_error'));

ALTER TABLE inbound_callbacks
    ADD COLUMN source_addr text,
    ADD COLUMN replayed_at timestamptz,
    ADD COLUMN replay_outcome text,
    ADD COLUMN replay_event_id bigint;

COMMENT ON COLUMN inbound_callbacks.outcome IS 'applied: committed as an observation (see its event''s effect: an unconfirmed one awaits the vendor''s word); duplicate: RequidId seen before, nothing changed; test: back-office test push; unverified: signed over an OrderNo172 we could not corroborate yet (answered 503, settled after one GetOrderInfo); bad_signature / malformed / too_large / not_configured / forbidden_source: rejected with a non-2xx answer; internal_error: could not be stored in full, kept raw (503).';
COMMENT ON COLUMN inbound_callbacks.error IS 'The precise reason the request was not applied. Signature failures all get the same answer; only this column and the log say which check failed.';
COMMENT ON COLUMN inbound_callbacks.request_id IS 'The RequidId, when one could be read (null when longer than 128 bytes or holding control characters: the body keeps it).';
COMMENT ON COLUMN inbound_callbacks.sign_matched IS 'Which order number the AES sign decrypted to: order_no (OrderNo) or order_no_172 (OrderNo172, which counts only when it equals the vendor number we hold).';
COMMENT ON COLUMN inbound_callbacks.source_addr IS 'The client address judged against CALLBACK_ALLOWED_SOURCES: the TCP peer, or the address a trusted proxy put in TRUSTED_PROXY_HEADER.';
COMMENT ON COLUMN inbound_callbacks.replayed_at IS 'When the stored request was judged again (an unverified one after GetOrderInfo learned the vendor number); the original outcome is kept.';
COMMENT ON COLUMN inbound_callbacks.replay_outcome IS 'The outcome of the latest re-judgement (applied, duplicate, bad_signature, ...).';
COMMENT ON COLUMN inbound_callbacks.replay_event_id IS 'The order_events row the re-judgement produced, if any.';

ALTER TABLE order_events DROP CONSTRAINT order_events_effect_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_effect_check CHECK (effect IN (
    'advanced', 'same', 'stale', 'conflict', 'unknown_status', 'unconfirmed'));
COMMENT ON COLUMN order_events.effect IS 'advanced: status moved forward; same: same status; stale: older than the held status (ignored); conflict: a different terminal status for a terminal order; unknown_status: unmapped label; unconfirmed: a callback that would have made the order terminal, held until the vendor confirms it (see callback_confirmations).';

CREATE TABLE callback_confirmations (
    id bigserial PRIMARY KEY,
    vendor text NOT NULL,
    order_id text NOT NULL,
    reason text NOT NULL CHECK (reason IN ('terminal', 'vendor_order_no')),
    request_id text NOT NULL,
    claimed_status text NOT NULL,
    claimed_vendor_order_no text,
    event_id bigint,
    requested_at timestamptz NOT NULL,
    expedited boolean NOT NULL,
    resolved_at timestamptz,
    result text CHECK (result IN ('confirmed', 'refuted', 'verified', 'rejected')),
    vendor_status text
);

COMMENT ON TABLE callback_confirmations IS 'Callbacks that await the vendor''s word (GetOrderInfo) before they count: one that would make its order terminal (reason terminal), or one signed over an OrderNo172 we could not corroborate (reason vendor_order_no). Pending while resolved_at is null; result refuted means a callback claimed what the vendor denies (a replayed signature, or a vendor lag): kept, never applied.';
COMMENT ON COLUMN callback_confirmations.claimed_status IS 'The normalized status the callback claimed.';
COMMENT ON COLUMN callback_confirmations.event_id IS 'The held order_events row (effect unconfirmed), for reason terminal.';
COMMENT ON COLUMN callback_confirmations.expedited IS 'This request made the order due for a query at once. At most once per order and reason, so a replayed signature can cost at most two extra queries in an order''s lifetime; later ones wait for the ordinary schedule.';
COMMENT ON COLUMN callback_confirmations.result IS 'terminal: confirmed (the vendor answered the claimed status, which the poll applied) or refuted; vendor_order_no: verified or rejected (the vendor number the vendor answered differs).';
COMMENT ON COLUMN callback_confirmations.vendor_status IS 'The label the vendor answered when it was resolved.';

CREATE INDEX callback_confirmations_order_idx ON callback_confirmations (vendor, order_id);
CREATE UNIQUE INDEX callback_confirmations_expedited_key ON callback_confirmations (vendor, order_id, reason) WHERE expedited;
CREATE INDEX callback_confirmations_pending_idx ON callback_confirmations (requested_at) WHERE resolved_at IS NULL;

-- Say why an order is due when a callback is waiting for the vendor's word.
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

-- Before this migration a sign over OrderNo172 was trusted on its own, so a
-- vendor number that only such callbacks ever reported is not authenticated:
-- forget it (the next GetOrderInfo answer brings the real one).
UPDATE orders o SET vendor_order_no = NULL
WHERE o.vendor = 'haoka172' AND o.vendor_order_no IS NOT NULL
  AND EXISTS (SELECT 1 FROM inbound_callbacks i
              WHERE i.order_id = o.order_id AND i.vendor = o.vendor
                AND i.outcome = 'applied' AND i.sign_matched = 'order_no_172')
  AND NOT EXISTS (SELECT 1 FROM order_events e
                  WHERE e.vendor = o.vendor AND e.order_id = o.order_id AND e.source = 'poll'
                    AND e.observed ->> 'vendor_order_no' = o.vendor_order_no)
  AND NOT EXISTS (SELECT 1 FROM inbound_callbacks i JOIN order_events e ON e.id = i.event_id
                  WHERE i.order_id = o.order_id AND i.vendor = o.vendor AND i.sign_matched = 'order_no'
                    AND e.observed ->> 'vendor_order_no' = o.vendor_order_no);
