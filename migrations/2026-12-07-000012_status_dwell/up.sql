-- How long orders really stay in each status, from this deployment's own
-- history, to tune HAOKA172_OVERDUE and DAMAIJIA_REFRESH. The service
-- computes it (the Kaplan–Meier estimate over the applied status changes
-- in order_events, stays still going on counted as censored, not as
-- finished) daily in `serve`, one process at a time, or on demand
-- (`haoka-sync status-dwell --refresh`), and keeps the result here: reading
-- status_dwell is instant.

CREATE TABLE status_dwell_stats (
    vendor text NOT NULL,
    status text NOT NULL,
    stays bigint NOT NULL,
    finished bigint NOT NULL,
    still_open bigint NOT NULL,
    p50_secs bigint,
    p90_secs bigint,
    p99_secs bigint,
    overdue_secs bigint,
    outlived_overdue double precision,
    since timestamptz NOT NULL,
    refreshed_at timestamptz NOT NULL,
    PRIMARY KEY (vendor, status)
);

COMMENT ON TABLE status_dwell_stats IS 'The latest status_dwell refresh, one row per vendor and non-terminal status (read it through the status_dwell view).';

CREATE VIEW status_dwell AS
SELECT vendor,
       status,
       stays AS orders,
       finished,
       still_open,
       justify_hours(make_interval(secs => p50_secs)) AS p50,
       justify_hours(make_interval(secs => p90_secs)) AS p90,
       justify_hours(make_interval(secs => p99_secs)) AS p99,
       justify_hours(make_interval(secs => overdue_secs)) AS overdue,
       round(outlived_overdue::numeric, 4) AS outlived_overdue,
       since,
       refreshed_at
FROM status_dwell_stats;

COMMENT ON VIEW status_dwell IS 'Per vendor and non-terminal status: how long orders stay in it before their next status (stays entered since `since`; open stays censored: Kaplan-Meier), the configured overdue time, and the share that outlived it. Refreshed daily by serve; haoka-sync status-dwell --refresh recomputes now.';
COMMENT ON COLUMN status_dwell.orders IS 'Stays in this status that began since `since`: finished + still_open (an order enters each status at most once).';
COMMENT ON COLUMN status_dwell.finished IS 'Stays that ended with the order''s next status.';
COMMENT ON COLUMN status_dwell.still_open IS 'Orders still in this status (censored at the refresh, or when their tracking expired).';
COMMENT ON COLUMN status_dwell.p50 IS 'Median stay (Kaplan-Meier, times grouped to 0.1 %); null while too many are still open to tell.';
COMMENT ON COLUMN status_dwell.p90 IS '90th percentile of the stay; null while too many are still open to tell.';
COMMENT ON COLUMN status_dwell.p99 IS '99th percentile of the stay; null while too many are still open to tell.';
COMMENT ON COLUMN status_dwell.overdue IS 'The overdue time of this status when refreshed (HAOKA172_OVERDUE / DAMAIJIA_REFRESH, from schedule_settings).';
COMMENT ON COLUMN status_dwell.outlived_overdue IS 'Estimated share of orders that stay longer than `overdue` (0 to 1): each is queried at least once if its callbacks say nothing meanwhile.';
COMMENT ON COLUMN status_dwell.since IS 'Stays that began at or after this count (the last 90 days).';
