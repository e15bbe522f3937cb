-- Forwarding (docs/contract.md, "Forwarding"): every applied status change
-- that matches an enabled target gets a delivery row in the transaction
-- that commits the change (store::feed::publish inserts the change, its
-- deliveries and its notification in one statement), so a change is never
-- committed without its deliveries and a rolled-back change has none.
-- A worker in serve sends them, signed per Standard Webhooks, in order per
-- (target, order), and records every attempt.
--
-- No foreign keys: the rows are written by construction in the same
-- transaction (as order_events, see 2026-11-22-000004), and a per-row
-- trigger on the callback path is what that migration removed.

-- A contiguous per-order number for every change (1, 2, 3, ...), so a
-- receiver can tell it missed one. Drawn while the order's row is locked.
ALTER TABLE order_change_log ADD COLUMN order_seq bigint;
UPDATE order_change_log c SET order_seq = s.n
FROM (SELECT id, row_number() OVER (PARTITION BY vendor, order_id ORDER BY id) AS n FROM order_change_log) s
WHERE s.id = c.id;
ALTER TABLE order_change_log ALTER COLUMN order_seq SET NOT NULL;
COMMENT ON COLUMN order_change_log.order_seq IS 'The change''s number among its order''s changes: 1, 2, 3, ... in id order (restarts only if every earlier change of the order was pruned).';

CREATE OR REPLACE VIEW order_changes AS
SELECT id, vendor, order_id, from_status, to_status, source, at, event_id, order_seq
FROM order_change_log;

CREATE TABLE forward_targets (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    url text NOT NULL CHECK (url ~ '^https?://'),
    vendor text CHECK (vendor IN ('haoka172', 'damaijia')),
    statuses text[],
    secret text NOT NULL,
    previous_secret text,
    previous_until timestamptz,
    enabled boolean NOT NULL DEFAULT true,
    failing_since timestamptz,
    marked_failing_at timestamptz,
    probe_after timestamptz,
    last_success_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE forward_targets IS 'Where status changes are forwarded (haoka-sync targets): URL, which changes (vendor, statuses; null = all), the signing secret. Never deleted: disable instead.';
COMMENT ON COLUMN forward_targets.statuses IS 'Normalized statuses (to_status) forwarded; null forwards every change.';
COMMENT ON COLUMN forward_targets.secret IS 'The Standard Webhooks signing secret, whsec_<base64>; shown once by targets add / rotate-secret, never logged.';
COMMENT ON COLUMN forward_targets.previous_secret IS 'After rotate-secret: the old secret, which still signs (a second v1 signature) until previous_until.';
COMMENT ON COLUMN forward_targets.failing_since IS 'First failed attempt of the current run of failures (null after a success).';
COMMENT ON COLUMN forward_targets.probe_after IS 'While failing: the next probe (one delivery) is not sent before this.';
COMMENT ON COLUMN forward_targets.marked_failing_at IS 'When the target was marked failing (an hour of failures): it is then probed with one delivery at a time.';

CREATE TABLE forward_deliveries (
    id bigserial PRIMARY KEY,
    target_id bigint NOT NULL,
    change_id bigint NOT NULL,
    vendor text NOT NULL,
    order_id text NOT NULL,
    seq bigint NOT NULL,
    webhook_id text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'exhausted')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    retry_from timestamptz NOT NULL DEFAULT now(),
    redeliveries integer NOT NULL DEFAULT 0,
    lease_owner text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status integer,
    last_error text,
    delivered_at timestamptz,
    CONSTRAINT forward_deliveries_webhook_id_key UNIQUE (webhook_id)
);
COMMENT ON TABLE forward_deliveries IS 'One row per applied status change and matching target, written with the change (transactional outbox); pending until a 2xx (delivered) or the retry time runs out (exhausted, kept).';
COMMENT ON COLUMN forward_deliveries.webhook_id IS 'The Standard Webhooks webhook-id, the same on every attempt and redelivery: receivers dedupe on it.';
COMMENT ON COLUMN forward_deliveries.seq IS 'order_change_log.order_seq: the change''s number among its order''s changes.';
COMMENT ON COLUMN forward_deliveries.payload IS 'The JSON body, fixed when the change committed (the order''s fields as they were then).';
COMMENT ON COLUMN forward_deliveries.retry_from IS 'Retries stop FORWARD_RETRY_FOR after this: the change''s commit, or the latest redeliver.';
COMMENT ON COLUMN forward_deliveries.lease_owner IS 'The serve process sending it now (host:pid), until lease_until; after that another takes it over.';
CREATE INDEX forward_deliveries_due_idx ON forward_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX forward_deliveries_order_idx ON forward_deliveries (target_id, vendor, order_id, id) WHERE state = 'pending';
CREATE INDEX forward_deliveries_change_idx ON forward_deliveries (vendor, order_id, change_id);
CREATE INDEX forward_deliveries_created_at_idx ON forward_deliveries (created_at);
CREATE INDEX forward_deliveries_exhausted_idx ON forward_deliveries (target_id) WHERE state = 'exhausted';

CREATE TABLE forward_attempts (
    id bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL,
    at timestamptz NOT NULL,
    worker text NOT NULL,
    http_status integer,
    latency_ms integer NOT NULL,
    error text,
    response_sample text,
    redelivery boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE forward_attempts IS 'Every attempt to send a delivery: when, by which process, the HTTP status (null when no answer), latency, error, the first 512 bytes of the answer.';
CREATE INDEX forward_attempts_delivery_idx ON forward_attempts (delivery_id, id);
CREATE INDEX forward_attempts_at_idx ON forward_attempts (at);
