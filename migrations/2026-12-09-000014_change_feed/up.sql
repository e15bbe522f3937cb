-- The change feed (docs/contract.md, "Change feed"): every applied status
-- change, once, with an id that increases in commit order, and a
-- pg_notify on haoka_sync_order_changed from the committing transaction.
--
-- Why a table of its own and not a view over order_events: order_events.id
-- comes from a sequence at insert time, so with several ingest writers and
-- the poller committing at once a later id can commit first, and a
-- consumer reading "everything after id N" would skip the earlier one for
-- good. Here `id` is drawn from its sequence under one transaction-scoped
-- advisory lock (7217201400) taken as the last lock of the transaction
-- (store::feed::publish, after the orders rows are locked), and held to the
-- commit: ids are handed out in commit order, and a row with a smaller id
-- is always visible by the time one with a larger id is. The cost is that
-- transactions which change a status commit one after another; each holds
-- the lock only for its last statements and its commit.
CREATE TABLE order_change_log (
    id bigint PRIMARY KEY,
    event_id bigint NOT NULL,
    vendor text NOT NULL,
    order_id text NOT NULL,
    from_status text NOT NULL,
    to_status text NOT NULL,
    source text NOT NULL CHECK (source IN ('callback', 'poll', 'manual')),
    at timestamptz NOT NULL
);

CREATE SEQUENCE order_change_log_id_seq OWNED BY order_change_log.id;

COMMENT ON TABLE order_change_log IS 'The change feed behind the view order_changes: one row per applied status change, id in commit order (assigned under an advisory lock held to the commit). Append-only; pruned with order_events (RETENTION events).';
COMMENT ON COLUMN order_change_log.id IS 'Increases in commit order: a consumer that has read every id up to N reads WHERE id > N next and misses nothing.';
COMMENT ON COLUMN order_change_log.event_id IS 'order_events.id of the observation that made the change.';
COMMENT ON COLUMN order_change_log.from_status IS 'The order''s normalized status before the change (new for an order first heard of by this observation).';
COMMENT ON COLUMN order_change_log.to_status IS 'The normalized status after the change.';
COMMENT ON COLUMN order_change_log.source IS 'Who told us: callback, poll or manual.';
COMMENT ON COLUMN order_change_log.at IS 'When the change was committed (the batch''s time).';

CREATE INDEX order_change_log_order_idx ON order_change_log (vendor, order_id, id);
CREATE INDEX order_change_log_at_idx ON order_change_log (at);

-- The changes already in order_events before the feed existed, in event
-- order: every applied event that moved its order's status forward
-- (effect advanced), from the status of the one before (new for the
-- first). A move to `unknown` (an unmapped label on a new order) is not
-- reconstructed; from here on every change is recorded as it commits.
INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at)
SELECT nextval('order_change_log_id_seq'), e.id, e.vendor, e.order_id, e.from_status, e.status, e.source, e.received_at
FROM (
    SELECT id, vendor, order_id, status, source, received_at,
           coalesce(lag(status) OVER (PARTITION BY vendor, order_id ORDER BY id), 'new') AS from_status
    FROM order_events
    WHERE applied AND effect = 'advanced'
    ORDER BY id
) e
WHERE e.from_status <> e.status
ORDER BY e.id;

CREATE VIEW order_changes AS
SELECT id, vendor, order_id, from_status, to_status, source, at, event_id
FROM order_change_log;

COMMENT ON VIEW order_changes IS 'The applied status changes, id increasing in commit order: read WHERE id > <last id you handled> ORDER BY id to catch up; LISTEN haoka_sync_order_changed to hear of new ones.';
