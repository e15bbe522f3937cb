-- pgbench baseline for bench/ingest: the SQL work of one callback as a naive
-- handler would do it, one transaction per callback: order upsert, event row,
-- raw inbox row. `:client_id` and a random number make request ids distinct.
\set oid random(1, 20000)
\set rid random(1, 1000000000)
BEGIN;
INSERT INTO orders (vendor, order_id, status, vendor_status, last_source, last_heard_at, updated_at)
  VALUES ('haoka172', 'PGB' || :oid, 'shipped', '已发货', 'callback', now(), now())
  ON CONFLICT (vendor, order_id) DO UPDATE
  SET status = EXCLUDED.status, vendor_status = EXCLUDED.vendor_status,
      last_heard_at = now(), updated_at = now();
INSERT INTO order_events (vendor, order_id, source, status, vendor_status, applied, effect, request_id, observed)
  VALUES ('haoka172', 'PGB' || :oid, 'callback', 'shipped', '已发货', true, 'advanced',
          'PGB-' || :client_id || '-' || :rid, '{"express_name":"京东","express_code":"JDV000000000001"}')
  ON CONFLICT (vendor, request_id) DO NOTHING;
INSERT INTO inbound_callbacks (vendor, outcome, request_id, order_id, sign_matched, content_type, headers, body, body_size)
  VALUES ('haoka172', 'applied', 'PGB-' || :client_id || '-' || :rid, 'PGB' || :oid, 'order_no', 'application/json',
          '{"content-type":"application/json","sign":"1xdJ6RqsV/yikhtfNiDfgA=="}',
          '{"RequidId":"PGB","Data":"{\"OrderNo\":\"PGB1\",\"OrderStatus\":\"已发货\",\"ExpressName\":\"京东\",\"ExpressCode\":\"JDV000000000001\"}"}',
          330);
COMMIT;
