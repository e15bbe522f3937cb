-- The append-only tables lose their foreign keys. Each was checked by a
-- per-row trigger whose cached plan, made while the referenced table was
-- small, could scan the whole table (measured: 15-20 ms per batch of callbacks
-- once orders held ~15k rows). The store writes an event only after creating
-- or locking its order in the same transaction, and an inbox row's event_id
-- only from the event it just inserted, so the references hold by
-- construction. Without foreign keys the tables can also be partitioned by
-- time and old partitions dropped (design.md, "Scaling out").

ALTER TABLE order_events DROP CONSTRAINT order_events_vendor_order_id_fkey;
ALTER TABLE inbound_callbacks DROP CONSTRAINT inbound_callbacks_event_id_fkey;

COMMENT ON COLUMN order_events.order_id IS 'The order (orders.vendor, orders.order_id). Always names an orders row: written in the same transaction that creates or locks it (no foreign key, so the table can be partitioned by time).';
COMMENT ON COLUMN inbound_callbacks.event_id IS 'The order_events row this request produced (applied only); written in the same transaction (no foreign key).';
