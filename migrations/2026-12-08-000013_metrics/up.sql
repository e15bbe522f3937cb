-- Orders per vendor and status for the `haoka_sync_orders` metric (and the
-- `order_status_counts` view), exact and cheap at any table size, without a
-- row every writer updates.
--
-- Counting `orders` is a scan (10M rows: seconds), so the count is kept:
-- statement-level triggers on `orders` append what each statement changed,
-- per vendor and status, to `order_count_deltas` (a few rows per statement,
-- and none for the many updates that leave the status alone). Appending
-- never waits for another writer: a single counter row would serialize
-- every transaction that touches an order until it commits. The metrics
-- refresh folds the deltas into `order_counts` every few seconds, one
-- process at a time (an advisory lock); readers add the unfolded deltas, so
-- a read equals `SELECT vendor, status, count(*) FROM orders GROUP BY 1, 2`
-- in its snapshot, whatever wrote the rows (callbacks, polls, tracking,
-- ops' own SQL, even TRUNCATE).
--
-- The triggers are created before the first count: creating them locks
-- `orders` against writes until this migration commits, so no change is
-- missed or counted twice. The first count reads the table once.

CREATE TABLE order_counts (
    vendor text NOT NULL,
    status text NOT NULL,
    orders bigint NOT NULL,
    PRIMARY KEY (vendor, status)
);

COMMENT ON TABLE order_counts IS 'Orders per vendor and status as of the last fold of order_count_deltas (the metrics refresh folds them every few seconds). The current count is this plus the unfolded deltas: read the order_status_counts view.';

CREATE TABLE order_count_deltas (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vendor text NOT NULL,
    status text NOT NULL,
    delta bigint NOT NULL
);

COMMENT ON TABLE order_count_deltas IS 'What each statement on orders changed in the count of a vendor and status, appended by triggers; folded into order_counts (and deleted) by the metrics refresh.';

CREATE FUNCTION order_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (vendor, status, delta)
    SELECT vendor, status, count(*) FROM inserted GROUP BY vendor, status;
    RETURN NULL;
END
$$;

CREATE FUNCTION order_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (vendor, status, delta)
    SELECT vendor, status, sum(d) FROM (
        SELECT vendor, status, -1 AS d FROM before_update
        UNION ALL
        SELECT vendor, status, 1 FROM after_update) c
    GROUP BY vendor, status
    HAVING sum(d) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION order_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (vendor, status, delta)
    SELECT vendor, status, -count(*) FROM deleted GROUP BY vendor, status;
    RETURN NULL;
END
$$;

-- TRUNCATE waits for every transaction writing orders, so their deltas are
-- committed and visible here.
CREATE FUNCTION order_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM order_count_deltas;
    DELETE FROM order_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER order_count_insert AFTER INSERT ON orders
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION order_count_inserted();
CREATE TRIGGER order_count_update AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION order_count_updated();
CREATE TRIGGER order_count_delete AFTER DELETE ON orders
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION order_count_deleted();
CREATE TRIGGER order_count_truncate AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION order_count_truncated();

INSERT INTO order_counts (vendor, status, orders)
SELECT vendor, status, count(*) FROM orders GROUP BY vendor, status;

-- Same columns as before, now without a scan.
CREATE OR REPLACE VIEW order_status_counts AS
SELECT vendor, status, sum(orders)::bigint AS orders
FROM (SELECT vendor, status, orders FROM order_counts
      UNION ALL
      SELECT vendor, status, delta FROM order_count_deltas) c
GROUP BY vendor, status
HAVING sum(orders) <> 0;

COMMENT ON VIEW order_status_counts IS 'Orders per vendor and normalized status (kept by triggers: order_counts plus the unfolded order_count_deltas; no scan of orders).';
