-- Deployment-wide silences of a vendor's callbacks (our outage, the vendor's,
-- a broken secret, a lost registration), found by the poller, and the
-- recovery sweeps they triggered.
CREATE TABLE callback_gaps (
    id bigserial PRIMARY KEY,
    vendor text NOT NULL,
    silent_since timestamptz NOT NULL,
    resumed_at timestamptz,
    detected_at timestamptz NOT NULL,
    expected_callbacks integer NOT NULL,
    swept_at timestamptz,
    swept_orders bigint NOT NULL DEFAULT 0,
    closed_at timestamptz,
    sweep_started_at timestamptz,
    UNIQUE (vendor, silent_since)
);

COMMENT ON TABLE callback_gaps IS 'Silences of a vendor''s callbacks long enough, for the usual traffic of those hours, to mean callbacks were lost (HAOKA172_CALLBACK_GAP), and the sweeps that re-checked the orders they may have hidden. Needs recovery while closed_at is null.';
COMMENT ON COLUMN callback_gaps.silent_since IS 'The last callback heard (applied or duplicate) before the silence.';
COMMENT ON COLUMN callback_gaps.resumed_at IS 'The first callback heard after the silence; null while it lasts.';
COMMENT ON COLUMN callback_gaps.detected_at IS 'When a poll pass found the silence.';
COMMENT ON COLUMN callback_gaps.expected_callbacks IS 'Callbacks the same clock hours brought on an average day of the past week (counted up to 10 x the threshold).';
COMMENT ON COLUMN callback_gaps.swept_at IS 'The last time the orders not heard from since were made due for a query.';
COMMENT ON COLUMN callback_gaps.swept_orders IS 'Orders made due by all sweeps of this gap.';
COMMENT ON COLUMN callback_gaps.closed_at IS 'When the recovery sweep after the resumption was done.';
COMMENT ON COLUMN callback_gaps.sweep_started_at IS 'A sweep in progress since then (it commits in chunks); one left by a process that died is taken over after 10 minutes.';

-- How far each vendor's callbacks have been searched for silences. The
-- searches read inbound_callbacks_received_at_idx, from here on: nothing new
-- on the ingest path.
CREATE TABLE callback_watch (
    vendor text PRIMARY KEY,
    heard_until timestamptz NOT NULL,
    checked_at timestamptz NOT NULL
);

COMMENT ON TABLE callback_watch IS 'Per vendor: the latest callback heard (applied or duplicate) that the silence search has seen, and when it ran.';
