-- The settings each vendor's poll schedule was computed with, so that a
-- change of HAOKA172_OVERDUE, DAMAIJIA_REFRESH or POLL_MIN_RECHECK reaches
-- the orders already scheduled: a starting `serve` or `poll-once` compares
-- its own settings with these and, when they differ, reschedules every
-- tracked order from what it last heard, in chunks that commit with the
-- cursor below (a run that dies is resumed), one process at a time (the
-- lease), and records its settings at the end.

CREATE TABLE schedule_settings (
    vendor text PRIMARY KEY,
    settings jsonb NOT NULL,
    recorded_at timestamptz NOT NULL,
    rescheduling_to jsonb,
    reschedule_started_at timestamptz,
    resume_after text,
    walked bigint NOT NULL DEFAULT 0,
    moved bigint NOT NULL DEFAULT 0,
    lease_owner text,
    lease_until timestamptz
);

COMMENT ON TABLE schedule_settings IS 'Per vendor: the settings the next checks of its tracked orders follow, and a reschedule to new settings while one runs.';
COMMENT ON COLUMN schedule_settings.settings IS 'waits: seconds per non-terminal status (HAOKA172_OVERDUE / DAMAIJIA_REFRESH); min_recheck: POLL_MIN_RECHECK in seconds; max_recheck, rule: of the build.';
COMMENT ON COLUMN schedule_settings.recorded_at IS 'When every tracked order began to follow settings (a reschedule finished, or the first start recorded them).';
COMMENT ON COLUMN schedule_settings.rescheduling_to IS 'The settings a reschedule in progress moves the orders to; null when none runs.';
COMMENT ON COLUMN schedule_settings.reschedule_started_at IS 'When the latest reschedule started.';
COMMENT ON COLUMN schedule_settings.resume_after IS 'The last order_id the reschedule in progress finished (it walks order_id order); null before its first chunk.';
COMMENT ON COLUMN schedule_settings.walked IS 'Tracked orders the latest reschedule looked at.';
COMMENT ON COLUMN schedule_settings.moved IS 'Of those, the orders whose next check it changed.';
COMMENT ON COLUMN schedule_settings.lease_owner IS 'The process rescheduling (<HOSTNAME>:<pid>:<suffix>); another one takes over after lease_until.';
COMMENT ON COLUMN schedule_settings.lease_until IS 'The reschedule lease runs out then; renewed with every chunk.';

-- When the latest query about the order was answered or failed: a quiet
-- poll's backoff counts from it, and a reschedule needs it for orders whose
-- last query brought no observation.
ALTER TABLE order_polls ADD COLUMN last_polled_at timestamptz;

COMMENT ON COLUMN order_polls.last_polled_at IS 'When the latest query about this order was recorded (answered or failed); null if never since this column exists.';
