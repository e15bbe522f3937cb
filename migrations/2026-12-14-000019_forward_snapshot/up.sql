-- The outbox row, leaner again (BENCHMARKS.md, Forwarding 2026-12-03).
-- Right after a checkpoint and with random order ids, as a real run pays
-- it, a delivery wrote 1,146 bytes of WAL on the callback path: ~530 of
-- them the JSON body, ~180 the order-head index's random leaves.
--
-- * The body is no longer stored. What it says of the change (from, to,
--   source, at, seq) is in order_change_log already, and the order's
--   fields as they were at the commit (which the contract fixes) are kept
--   as typed columns, the phone masked as before: a small jsonb is mostly
--   its keys. The worker builds the JSON when it sends, the same bytes on
--   every attempt. Rows written before this migration keep their payload
--   and are sent with it (payload is null for the others); retention takes
--   them away with the rest.
-- * forward_deliveries_order_idx goes. The claim finds whether an earlier
--   change of the order is still pending for the target through the
--   order's changes (order_change_log_order_idx) and their deliveries
--   (forward_deliveries_change_target_key), a few index probes per
--   candidate, instead of keeping an index entry per pending delivery.
ALTER TABLE forward_deliveries ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE forward_deliveries
    ADD COLUMN order_status text,
    ADD COLUMN vendor_status text,
    ADD COLUMN vendor_order_no text,
    ADD COLUMN express_name text,
    ADD COLUMN express_code text,
    ADD COLUMN third_phone_masked text,
    ADD COLUMN iccid text,
    ADD COLUMN card_status text,
    ADD COLUMN activated_at timestamptz,
    ADD COLUMN first_charge boolean,
    ADD COLUMN first_charge_amount text,
    ADD COLUMN remark text;
DROP INDEX forward_deliveries_order_idx;
COMMENT ON COLUMN forward_deliveries.payload IS 'Rows written before migration 019 only: their JSON body, sent as it is. Null for the others, whose body is built when sent from the change (order_change_log) and the order''s fields below.';
COMMENT ON COLUMN forward_deliveries.order_status IS 'The order''s fields as they were when the change committed (orders.status, then the columns after it, third_phone masked): the body''s "order" object.';
