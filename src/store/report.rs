//! SQL for `haoka-sync report`: one China-time day's reconciliation (对账),
//! read in one read-only, repeatable-read transaction so that every figure
//! comes from the same snapshot. Reads only; every query is set-based.
//!
//! The day's figures go through the time indexes: callbacks through
//! `inbound_callbacks_received_at_idx`, status changes through
//! `order_change_log_at_idx` (the view `order_changes`), vendor calls
//! through `vendor_calls_vendor_called_at_idx` (one range per vendor: the
//! same rows as `vendor_call_costs WHERE day_china = <day>`, whose
//! expression on `called_at` no index serves). What is stuck now is read
//! from `orders` in one sequential scan (and `order_links`, a join over
//! `orders`): there is no index for "non-terminal and old", and once a day
//! a scan is cheaper than keeping one.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};

use crate::rules::Vendor;

/// The instants a report covers, and when it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The day's China midnight (included).
    pub start: DateTime<Utc>,
    /// The next China midnight (excluded).
    pub end: DateTime<Utc>,
    /// What "stuck" is judged against.
    pub now: DateTime<Utc>,
    /// 172 orders activated before this are past their expected settlement
    /// (`rules::settlement::activated_before_is_past_settlement(now)`).
    pub settlement_cutoff: DateTime<Utc>,
}

/// A count per vendor and one key (an outcome, a source, a status).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Count {
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

/// Vendor calls of the day per vendor, api and outcome, and what they cost
/// (null when none was billed).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Calls {
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Text)]
    pub api: String,
    #[diesel(sql_type = Text)]
    pub outcome: String,
    #[diesel(sql_type = BigInt)]
    pub calls: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub cost: Option<i64>,
}

/// An order that reached `settled` or `settlement_failed` in the day (its
/// first such change).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Settlement {
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Text)]
    pub order_id: String,
    #[diesel(sql_type = Text)]
    pub to_status: String,
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
}

/// A non-terminal order that is stuck in at least one way, now.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Stuck {
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Text)]
    pub order_id: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    /// When it entered its status (`status_changed_at`, else `created_at`).
    #[diesel(sql_type = Timestamptz)]
    pub since: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub activated_at: Option<DateTime<Utc>>,
    /// Its status's overdue time (`schedule_settings`), seconds: set when
    /// it has been in its status longer than that.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub overdue_secs: Option<i64>,
    /// A 172 order shipped or completed, its card not activated.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub not_activated: bool,
    /// A 172 order activated without a first top-up reported.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub no_first_top_up: bool,
    /// A 172 order activated before `Window::settlement_cutoff`.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub past_settlement: bool,
}

/// An open contradiction between a 172 order and its PDD order.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Contradiction {
    #[diesel(sql_type = Text)]
    pub haoka172_order_id: String,
    #[diesel(sql_type = Text)]
    pub damaijia_order_sn: String,
    #[diesel(sql_type = Text)]
    pub contradiction: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub haoka172_status: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub damaijia_status: Option<String>,
}

/// A callback gap whose silence overlaps the day.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Gap {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Timestamptz)]
    pub silent_since: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub resumed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    pub detected_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub expected_callbacks: i32,
    #[diesel(sql_type = BigInt)]
    pub swept_orders: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub closed_at: Option<DateTime<Utc>>,
}

/// Everything a report prints, sorted as printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Callbacks received in the day, per vendor and outcome.
    pub callbacks: Vec<Count>,
    /// Vendor calls made in the day.
    pub calls: Vec<Calls>,
    /// Status changes of the day per vendor and source.
    pub changes_by_source: Vec<Count>,
    /// Status changes of the day per vendor and status reached.
    pub changes_by_status: Vec<Count>,
    /// Orders that reached `settled` or `settlement_failed` in the day, in
    /// time order.
    pub settlements: Vec<Settlement>,
    /// Non-terminal orders stuck now, longest in their status first.
    pub stuck: Vec<Stuck>,
    /// The vendors whose overdue times are recorded in `schedule_settings`
    /// (the others' orders cannot be judged overdue).
    pub vendors_with_waits: Vec<String>,
    /// Open contradictions with PDD, now.
    pub contradictions: Vec<Contradiction>,
    /// Callback gaps whose silence overlaps the day.
    pub gaps: Vec<Gap>,
}

/// Callbacks per vendor and outcome, received in the day.
const CALLBACKS_SQL: &str = "SELECT vendor, outcome AS key, count(*) AS n FROM inbound_callbacks \
     WHERE received_at >= $1 AND received_at < $2 GROUP BY 1, 2 ORDER BY 1, 2";

/// Vendor calls per vendor, api and outcome, and their cost: one index
/// range per vendor.
const CALLS_SQL: &str =
    "SELECT vendor, api, outcome, count(*) AS calls, sum(cost)::bigint AS cost \
     FROM vendor_calls WHERE vendor = ANY($3) AND called_at >= $1 AND called_at < $2 \
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

/// Status changes of the day per vendor and `by` (`source` or `to_status`).
fn changes_sql(by: &str) -> String {
    format!(
        "SELECT vendor, {by} AS key, count(*) AS n FROM order_changes \
         WHERE at >= $1 AND at < $2 GROUP BY 1, 2 ORDER BY 1, 2"
    )
}

/// The first change of each order to `settled` or `settlement_failed` in
/// the day (a terminal status is reached once; a manual repeat counts
/// once).
const SETTLEMENTS_SQL: &str = "SELECT vendor, order_id, to_status, source, at FROM ( \
       SELECT DISTINCT ON (vendor, order_id, to_status) vendor, order_id, to_status, source, at, id \
       FROM order_changes \
       WHERE at >= $1 AND at < $2 AND to_status IN ('settled', 'settlement_failed') \
       ORDER BY vendor, order_id, to_status, id) s \
     ORDER BY at, id";

/// Every non-terminal order stuck in some way at `$1`, in one scan of
/// `orders` (see the module comment): longer in its status than the
/// status's overdue time recorded in `schedule_settings.settings -> 'waits'`
/// (seconds); and, for 172 orders (大麦家's PDD orders carry no
/// activation), shipped or completed without activation, activated without
/// a first top-up, or activated before `$2` (past the expected settlement).
const STUCK_SQL: &str = "WITH waits AS ( \
       SELECT ss.vendor, w.key AS status, w.value::bigint AS secs \
       FROM schedule_settings ss, jsonb_each_text(ss.settings -> 'waits') w), \
     judged AS ( \
       SELECT o.vendor, o.order_id, o.status, COALESCE(o.status_changed_at, o.created_at) AS since, \
              o.activated_at, w.secs AS wait_secs, \
              (o.vendor = 'haoka172' AND o.status IN ('shipped', 'completed') AND o.activated_at IS NULL) AS not_activated, \
              (o.vendor = 'haoka172' AND o.activated_at IS NOT NULL AND o.first_charge IS NOT TRUE) AS no_first_top_up, \
              (o.vendor = 'haoka172' AND o.activated_at IS NOT NULL AND o.activated_at < $2) AS past_settlement \
       FROM orders o LEFT JOIN waits w ON w.vendor = o.vendor AND w.status = o.status \
       WHERE NOT o.is_terminal) \
     SELECT vendor, order_id, status, since, activated_at, \
            CASE WHEN since < $1 - wait_secs * interval '1 second' THEN wait_secs END AS overdue_secs, \
            not_activated, no_first_top_up, past_settlement \
     FROM judged \
     WHERE since < $1 - wait_secs * interval '1 second' OR not_activated OR no_first_top_up OR past_settlement \
     ORDER BY since, vendor, order_id";

/// The open contradictions with PDD now.
const CONTRADICTIONS_SQL: &str = "SELECT haoka172_order_id, damaijia_order_sn, contradiction, \
            haoka172_status, damaijia_status \
     FROM order_links WHERE contradiction IS NOT NULL ORDER BY 1, 2";

/// Gaps whose silence, from the last callback heard to the first after it
/// (or on, while it lasts), overlaps the day.
const GAPS_SQL: &str =
    "SELECT id, vendor, silent_since, resumed_at, detected_at, expected_callbacks, \
            swept_orders, closed_at \
     FROM callback_gaps WHERE silent_since < $2 AND (resumed_at IS NULL OR resumed_at > $1) \
     ORDER BY silent_since, id";

#[derive(QueryableByName)]
struct VendorName {
    #[diesel(sql_type = Text)]
    vendor: String,
}

/// Read the report of `w` in one read-only snapshot.
pub fn read(conn: &mut PgConnection, w: &Window) -> QueryResult<Report> {
    conn.build_transaction()
        .read_only()
        .repeatable_read()
        .run(|conn| {
            let vendors: Vec<&str> = Vendor::ALL.iter().map(|v| v.as_str()).collect();
            let counts = |conn: &mut PgConnection, sql: &str| -> QueryResult<Vec<Count>> {
                diesel::sql_query(sql)
                    .bind::<Timestamptz, _>(w.start)
                    .bind::<Timestamptz, _>(w.end)
                    .load(conn)
            };
            let callbacks = counts(conn, CALLBACKS_SQL)?;
            let changes_by_source = counts(conn, &changes_sql("source"))?;
            let changes_by_status = counts(conn, &changes_sql("to_status"))?;
            let calls = diesel::sql_query(CALLS_SQL)
                .bind::<Timestamptz, _>(w.start)
                .bind::<Timestamptz, _>(w.end)
                .bind::<Array<Text>, _>(&vendors)
                .load(conn)?;
            let settlements = diesel::sql_query(SETTLEMENTS_SQL)
                .bind::<Timestamptz, _>(w.start)
                .bind::<Timestamptz, _>(w.end)
                .load(conn)?;
            let stuck = diesel::sql_query(STUCK_SQL)
                .bind::<Timestamptz, _>(w.now)
                .bind::<Timestamptz, _>(w.settlement_cutoff)
                .load(conn)?;
            let vendors_with_waits = diesel::sql_query(
                "SELECT vendor FROM schedule_settings WHERE settings -> 'waits' IS NOT NULL ORDER BY vendor",
            )
            .load::<VendorName>(conn)?
            .into_iter()
            .map(|v| v.vendor)
            .collect();
            let contradictions = diesel::sql_query(CONTRADICTIONS_SQL).load(conn)?;
            let gaps = diesel::sql_query(GAPS_SQL)
                .bind::<Timestamptz, _>(w.start)
                .bind::<Timestamptz, _>(w.end)
                .load(conn)?;
            Ok(Report {
                callbacks,
                calls,
                changes_by_source,
                changes_by_status,
                settlements,
                stuck,
                vendors_with_waits,
                contradictions,
                gaps,
            })
        })
}
