-- Retention (RETENTION; docs/contract.md, "Retention"). The two append-only
-- tables that grow with traffic and are kept shortest, inbound_callbacks
-- (raw requests with headers, ~0.5-1 KB a row, 90 days) and vendor_calls
-- (90 days), become monthly range partitions of their time column: a month
-- past retention leaves as a whole (DETACH PARTITION ... CONCURRENTLY, then
-- DROP TABLE), which gives its disk back at once, writes no WAL for its rows
-- and never locks out the writers. There is no DEFAULT partition (it would
-- make DETACH CONCURRENTLY impossible); instead the service keeps the
-- partitions of this month and the next two months created (at migrate, at
-- start and daily: haoka_sync_partitions.ensure_months). The rows of the
-- oldest kept month that are past retention are deleted in small batches,
-- so retention is exact to the row.
--
-- order_events (and order_change_log) stay one table, pruned by small keyset
-- batches: the RequidId dedup key (vendor, request_id) is a unique index on
-- order_events, and a unique index on a partitioned table must include the
-- partition key, which would let a RequidId redelivered in a later month
-- through. Events are kept 400 days, at least as long as the raw inbox (the
-- service refuses a RETENTION that keeps events shorter), so dedup holds for
-- every callback whose inbox row is retained. BENCHMARKS.md ("Retention")
-- has the measurements behind both choices.
--
-- Partitions live in the schema haoka_sync_partitions, out of the way of
-- `\dt` and of diesel print-schema (their names depend on the day the
-- database was migrated); the parents keep their names, columns, comments
-- and indexes, and every query reads the parent.

CREATE SCHEMA haoka_sync_partitions;
COMMENT ON SCHEMA haoka_sync_partitions IS 'Monthly partitions of inbound_callbacks and vendor_calls (named <table>_YYYY_MM, UTC months), created ahead and dropped past RETENTION by haoka-sync; query the parents in public.';

-- Create the monthly partitions of `parent` (UTC months) from the month of
-- `from_ts` through the month of `to_ts` that do not exist yet; returns how
-- many it created. Locks: CREATE TABLE ... PARTITION OF briefly takes the
-- parent exclusively, so callers set a lock_timeout and retry later.
CREATE FUNCTION haoka_sync_partitions.ensure_months(parent regclass, from_ts timestamptz, to_ts timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    m timestamp := date_trunc('month', from_ts AT TIME ZONE 'UTC');
    last_month timestamp := date_trunc('month', to_ts AT TIME ZONE 'UTC');
    base text := (SELECT relname FROM pg_class WHERE oid = parent);
    part text;
    created integer := 0;
BEGIN
    WHILE m <= last_month LOOP
        part := format('%s_%s', base, to_char(m, 'YYYY_MM'));
        IF to_regclass(format('haoka_sync_partitions.%I', part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE haoka_sync_partitions.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                part, parent, (m AT TIME ZONE 'UTC')::text, ((m + interval '1 month') AT TIME ZONE 'UTC')::text);
            created := created + 1;
        END IF;
        m := m + interval '1 month';
    END LOOP;
    RETURN created;
END
$$;
COMMENT ON FUNCTION haoka_sync_partitions.ensure_months(regclass, timestamptz, timestamptz) IS 'Create the missing monthly (UTC) partitions of a haoka-sync table for the months from from_ts to to_ts; returns how many were created.';

-- The partitions of `parent` with their bounds, read from the catalog (never
-- from the names), oldest first; `detach_pending` for one whose DETACH ...
-- CONCURRENTLY was interrupted (finish it with DETACH ... FINALIZE).
CREATE VIEW haoka_sync_partitions.bounds AS
SELECT p.oid::regclass AS parent,
       c.oid::regclass AS partition,
       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz AS from_ts,
       substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS to_ts,
       i.inhdetachpending AS detach_pending
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname IN ('inbound_callbacks', 'vendor_calls')
  AND p.relnamespace = 'public'::regnamespace;
COMMENT ON VIEW haoka_sync_partitions.bounds IS 'Each partition of inbound_callbacks and vendor_calls with its bounds as the catalog has them.';

-- inbound_callbacks, partitioned by received_at.
DROP VIEW IF EXISTS vendor_call_costs;
ALTER TABLE inbound_callbacks RENAME TO inbound_callbacks_unpartitioned;
ALTER TABLE inbound_callbacks_unpartitioned RENAME CONSTRAINT inbound_callbacks_pkey TO inbound_callbacks_unpartitioned_pkey;
ALTER SEQUENCE inbound_callbacks_id_seq OWNED BY NONE;
CREATE TABLE inbound_callbacks (
    LIKE inbound_callbacks_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS
) PARTITION BY RANGE (received_at);
ALTER SEQUENCE inbound_callbacks_id_seq OWNED BY inbound_callbacks.id;
ALTER TABLE inbound_callbacks ADD CONSTRAINT inbound_callbacks_pkey PRIMARY KEY (id, received_at);
SELECT haoka_sync_partitions.ensure_months('inbound_callbacks',
    coalesce((SELECT min(received_at) FROM inbound_callbacks_unpartitioned), now()), now() + interval '2 months');
INSERT INTO inbound_callbacks SELECT * FROM inbound_callbacks_unpartitioned;
DROP TABLE inbound_callbacks_unpartitioned;
CREATE INDEX inbound_callbacks_order_id_idx ON inbound_callbacks (order_id, received_at);
CREATE INDEX inbound_callbacks_received_at_idx ON inbound_callbacks (received_at);
CREATE INDEX inbound_callbacks_rejected_idx ON inbound_callbacks (outcome, received_at)
    WHERE outcome <> ALL (ARRAY['applied', 'duplicate', 'test']);
CREATE INDEX inbound_callbacks_request_id_idx ON inbound_callbacks (request_id);
COMMENT ON TABLE inbound_callbacks IS 'Every request to a callback URL, kept raw whatever happened to it (quarantine for the rejected ones). Monthly partitions by received_at (schema haoka_sync_partitions), kept for RETENTION inbound (default 90 days).';

-- vendor_calls, partitioned by called_at.
ALTER TABLE vendor_calls RENAME TO vendor_calls_unpartitioned;
ALTER TABLE vendor_calls_unpartitioned RENAME CONSTRAINT vendor_calls_pkey TO vendor_calls_unpartitioned_pkey;
ALTER SEQUENCE vendor_calls_id_seq OWNED BY NONE;
CREATE TABLE vendor_calls (
    LIKE vendor_calls_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS
) PARTITION BY RANGE (called_at);
ALTER SEQUENCE vendor_calls_id_seq OWNED BY vendor_calls.id;
ALTER TABLE vendor_calls ADD CONSTRAINT vendor_calls_pkey PRIMARY KEY (id, called_at);
SELECT haoka_sync_partitions.ensure_months('vendor_calls',
    coalesce((SELECT min(called_at) FROM vendor_calls_unpartitioned), now()), now() + interval '2 months');
INSERT INTO vendor_calls SELECT * FROM vendor_calls_unpartitioned;
DROP TABLE vendor_calls_unpartitioned;
CREATE INDEX vendor_calls_vendor_called_at_idx ON vendor_calls (vendor, called_at);
COMMENT ON TABLE vendor_calls IS 'Every outbound vendor API call, one row each, reserved before it is sent: the per-minute budget is counted here for the whole deployment. Monthly partitions by called_at (schema haoka_sync_partitions), kept for RETENTION vendor_calls (default 90 days).';

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

-- Every prune, by serve's daily run or haoka-sync prune: when, by whom, what
-- left. One process prunes at a time (a session advisory lock, 7217201500).
CREATE TABLE retention_runs (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    owner text NOT NULL,
    trigger text NOT NULL CHECK (trigger IN ('serve', 'command')),
    dry_run boolean NOT NULL,
    retention text NOT NULL,
    removed jsonb NOT NULL DEFAULT '{}',
    error text
);
COMMENT ON TABLE retention_runs IS 'Each application of RETENTION: started/finished, by which process, serve''s daily run or haoka-sync prune, the settings, and per table the rows removed and partitions dropped (removed), or why it failed (error).';
COMMENT ON COLUMN retention_runs.removed IS 'Per table: rows (deleted or in dropped partitions), partitions dropped, bytes given back.';
CREATE INDEX retention_runs_started_at_idx ON retention_runs (started_at);
