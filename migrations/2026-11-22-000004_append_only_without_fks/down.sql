ALTER TABLE inbound_callbacks ADD CONSTRAINT inbound_callbacks_event_id_fkey
    FOREIGN KEY (event_id) REFERENCES order_events (id);
ALTER TABLE order_events ADD CONSTRAINT order_events_vendor_order_id_fkey
    FOREIGN KEY (vendor, order_id) REFERENCES orders (vendor, order_id);
COMMENT ON COLUMN order_events.order_id IS NULL;
COMMENT ON COLUMN inbound_callbacks.event_id IS 'The order_events row this request produced (applied only).';
