DROP TABLE inbound_callbacks;
DROP TABLE order_events;
DROP TABLE orders;
