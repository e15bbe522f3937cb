CREATE INDEX forward_deliveries_order_idx ON forward_deliveries (target_id, vendor, order_id, id) WHERE state = 'pending';
UPDATE forward_deliveries d SET payload = (SELECT jsonb_build_object('vendor', d.vendor, 'order_id', d.order_id,
        'from', c.from_status, 'to', c.to_status, 'source', c.source, 'at', c.at, 'seq', d.seq, 'change_id', d.change_id,
        'order', jsonb_build_object('status', d.order_status, 'vendor_status', d.vendor_status,
          'vendor_order_no', d.vendor_order_no, 'express_name', d.express_name, 'express_code', d.express_code,
          'third_phone', d.third_phone_masked, 'iccid', d.iccid, 'card_status', d.card_status,
          'activated_at', d.activated_at, 'first_charge', d.first_charge,
          'first_charge_amount', d.first_charge_amount, 'remark', d.remark))
      FROM (SELECT NULL) AS one LEFT JOIN order_change_log c ON c.id = d.change_id)
    WHERE d.payload IS NULL;
ALTER TABLE forward_deliveries
    DROP COLUMN order_status, DROP COLUMN vendor_status, DROP COLUMN vendor_order_no,
    DROP COLUMN express_name, DROP COLUMN express_code, DROP COLUMN third_phone_masked,
    DROP COLUMN iccid, DROP COLUMN card_status, DROP COLUMN activated_at,
    DROP COLUMN first_charge, DROP COLUMN first_charge_amount, DROP COLUMN remark;
ALTER TABLE forward_deliveries ALTER COLUMN payload SET NOT NULL;
COMMENT ON COLUMN forward_deliveries.payload IS 'The JSON body, fixed when the change committed (the order''s fields as they were then).';
