DROP VIEW vendor_call_costs;
DROP VIEW order_links;
DROP VIEW damaijia_orders;
DROP TABLE order_link_overrides;
DROP TABLE vendor_tokens;
