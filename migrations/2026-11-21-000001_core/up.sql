-- Core tables: one row per order, the append-only event history, and the raw
-- inbox of every callback request. Ops read these directly.

CREATE TABLE orders (
    vendor text NOT NULL CHECK (vendor IN ('haoka172', 'damaijia')),
    order_id text NOT NULL CHECK (order_id <> ''),
    status text NOT NULL DEFAULT 'new' CHECK (status IN (
        'new', 'pending', 'submitted', 'shipped', 'completed', 'settled',
        'settlement_failed', 'revoked', 'rejected', 'cancelled', 'unknown')),
    vendor_status text,
    is_terminal boolean NOT NULL GENERATED ALWAYS AS (
        status IN ('settled', 'settlement_failed', 'revoked', 'rejected', 'cancelled')) STORED,
    vendor_order_no text,
    express_name text,
    express_code text,
    third_phone text,
    iccid text,
    card_status text,
    activated_at timestamptz,
    first_charge boolean,
    first_charge_amount text,
    remark text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    conflict boolean NOT NULL DEFAULT false,
    unknown_vendor_status text,
    last_source text CHECK (last_source IN ('callback', 'poll', 'manual')),
    last_heard_at timestamptz,
    status_changed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vendor, order_id)
);

COMMENT ON TABLE orders IS 'Current state of every tracked order: one row per (vendor, order_id), merged from all observations by the normalized status rules.';
COMMENT ON COLUMN orders.order_id IS 'haoka172: the agent''s DownOrderID (callback OrderNo); damaijia: the PDD order_sn.';
COMMENT ON COLUMN orders.status IS 'Normalized status (contract.md). new = tracked but never heard of. Never moves backwards; terminal statuses absorb.';
COMMENT ON COLUMN orders.vendor_status IS 'The vendor''s own label behind status, verbatim (e.g. 已发货).';
COMMENT ON COLUMN orders.is_terminal IS 'Derived from status: settled, settlement_failed, revoked, rejected or cancelled. Terminal orders are never queried again.';
COMMENT ON COLUMN orders.vendor_order_no IS 'haoka172: the vendor''s order number (OrderNo172, mlkj...).';
COMMENT ON COLUMN orders.third_phone IS 'The phone number issued to the customer (办理号码).';
COMMENT ON COLUMN orders.card_status IS 'Card activation label verbatim (已激活 / 未激活); once 已激活 it never reverts.';
COMMENT ON COLUMN orders.activated_at IS 'First activation time we were told; never overwritten.';
COMMENT ON COLUMN orders.first_charge IS 'First top-up done (IsFirstCharge); once true it stays true.';
COMMENT ON COLUMN orders.first_charge_amount IS 'First top-up amount as the vendor sent it; keeps its first value.';
COMMENT ON COLUMN orders.details IS 'Vendor-specific extra fields, merged key by key.';
COMMENT ON COLUMN orders.conflict IS 'True when a terminal order later received a different terminal status; see order_events with effect = conflict.';
COMMENT ON COLUMN orders.unknown_vendor_status IS 'Latest vendor label we could not map to a status; set for review, the status was not changed by it.';
COMMENT ON COLUMN orders.last_source IS 'Source of the latest observation: callback, poll or manual.';
COMMENT ON COLUMN orders.last_heard_at IS 'When we last received any observation of this order, applied or not.';
COMMENT ON COLUMN orders.status_changed_at IS 'When status last moved forward.';
COMMENT ON COLUMN orders.updated_at IS 'When anything in this row last changed.';

CREATE INDEX orders_vendor_status_idx ON orders (vendor, status);
CREATE INDEX orders_vendor_order_no_idx ON orders (vendor_order_no) WHERE vendor_order_no IS NOT NULL;
CREATE INDEX orders_needs_review_idx ON orders (vendor, order_id)
    WHERE conflict OR unknown_vendor_status IS NOT NULL;

CREATE TABLE order_events (
    id bigserial PRIMARY KEY,
    vendor text NOT NULL,
    order_id text NOT NULL,
    source text NOT NULL CHECK (source IN ('callback', 'poll', 'manual')),
    status text NOT NULL,
    vendor_status text,
    applied boolean NOT NULL,
    effect text NOT NULL CHECK (effect IN ('advanced', 'same', 'stale', 'conflict', 'unknown_status')),
    request_id text,
    observed jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (vendor, order_id) REFERENCES orders (vendor, order_id),
    CONSTRAINT order_events_request_id_key UNIQUE (vendor, request_id)
);

COMMENT ON TABLE order_events IS 'Append-only history: every observation of an order from any source, whether it changed the order or not. Callback redeliveries (same RequidId) are not repeated here; see inbound_callbacks.';
COMMENT ON COLUMN order_events.status IS 'Normalized status of this observation (unknown when the label could not be mapped).';
COMMENT ON COLUMN order_events.vendor_status IS 'The vendor''s label in this observation, verbatim.';
COMMENT ON COLUMN order_events.applied IS 'True when this observation changed the orders row (status, a field or a flag).';
COMMENT ON COLUMN order_events.effect IS 'advanced: status moved forward; same: same status; stale: older than the held status (ignored); conflict: a different terminal status for a terminal order; unknown_status: unmapped label.';
COMMENT ON COLUMN order_events.request_id IS 'The callback RequidId (deduplication key, unique per vendor); null for polls.';
COMMENT ON COLUMN order_events.observed IS 'Every normalized field of the observation.';

CREATE INDEX order_events_order_idx ON order_events (vendor, order_id, id);
CREATE INDEX order_events_received_at_idx ON order_events (received_at);

CREATE TABLE inbound_callbacks (
    id bigserial PRIMARY KEY,
    vendor text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    outcome text NOT NULL CHECK (outcome IN (
        'applied', 'duplicate', 'test', 'bad_signature', 'malformed', 'too_large', 'not_configured')),
    error text,
    request_id text,
    order_id text,
    event_id bigint REFERENCES order_events (id),
    sign_matched text CHECK (sign_matched IN ('order_no', 'order_no_172')),
    content_type text,
    remote_addr text,
    headers jsonb NOT NULL,
    body text NOT NULL,
    body_raw bytea,
    body_size integer NOT NULL,
    body_truncated boolean NOT NULL DEFAULT false
);

COMMENT ON TABLE inbound_callbacks IS 'Every request to a callback URL, kept raw whatever happened to it (quarantine for the rejected ones).';
COMMENT ON COLUMN inbound_callbacks.outcome IS 'applied: committed as an observation; duplicate: RequidId seen before, nothing changed; test: back-office test push; bad_signature / malformed / too_large / not_configured: rejected with a non-2xx answer.';
COMMENT ON COLUMN inbound_callbacks.error IS 'Why the request was rejected, as answered to the sender.';
COMMENT ON COLUMN inbound_callbacks.request_id IS 'The RequidId, when one could be read.';
COMMENT ON COLUMN inbound_callbacks.event_id IS 'The order_events row this request produced (applied only).';
COMMENT ON COLUMN inbound_callbacks.sign_matched IS 'Which order number the AES sign decrypted to: order_no (OrderNo) or order_no_172 (OrderNo172).';
COMMENT ON COLUMN inbound_callbacks.headers IS 'Request headers (credentials such as Authorization and Cookie redacted).';
COMMENT ON COLUMN inbound_callbacks.body IS 'The raw body as text; for too_large only a bounded sample of its start.';
COMMENT ON COLUMN inbound_callbacks.body_raw IS 'The exact bytes, only when body could not hold them (not UTF-8, or NUL bytes).';
COMMENT ON COLUMN inbound_callbacks.body_size IS 'Bytes received (for too_large: the declared or read size).';

CREATE INDEX inbound_callbacks_request_id_idx ON inbound_callbacks (request_id);
CREATE INDEX inbound_callbacks_order_id_idx ON inbound_callbacks (order_id, received_at);
CREATE INDEX inbound_callbacks_received_at_idx ON inbound_callbacks (received_at);
CREATE INDEX inbound_callbacks_rejected_idx ON inbound_callbacks (outcome, received_at)
    WHERE outcome NOT IN ('applied', 'duplicate', 'test');
