//! SQL for `status_dwell`: the stays of orders in each status, read from
//! the applied status changes in `order_events` (and, for `new`, when the
//! order was registered), grouped by vendor, status and time (to 0.1 %),
//! then estimated by `rules::dwell` and written to `status_dwell_stats` in
//! one transaction, so that a reader sees the previous refresh or this one.
//! One process at a time (a transaction-scoped advisory lock); the others
//! skip.
//!
//! A stay begins when the order entered the status (as the service heard
//! it: callback or poll) and ends when it entered the next one; a stay
//! still going on is censored at the refresh, or when the order's tracking
//! expired (nothing was looked at since). Only stays that began in the
//! last `WINDOW` count, so the estimate follows how the vendor behaves now.
//! Never writes anything but `status_dwell_stats`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Double, Nullable, Text, Timestamptz};

use crate::rules::dwell::{estimate, Dwell, Stays};
use crate::rules::schedule::StatusDurations;
use crate::rules::Status;
use crate::vendors::Vendor;

/// Stays that began this long before the refresh count.
pub const WINDOW: Duration = Duration::from_secs(90 * 86400);

/// A refresh older than this is done again (`serve` looks every hour).
pub const MAX_AGE: Duration = Duration::from_secs(86400);

/// Advisory lock of the refresh (one process at a time, whatever vendor).
const LOCK: i64 = 7217201200;

/// The stays that began at or after $1, censored at $2, of the statuses $3,
/// grouped: per vendor and status, times within 0.1 % of each other
/// together (the longest of them stands for the group) and never across
/// the status's overdue time (from `schedule_settings`), how many ended
/// and how many are still going on.
///
/// Status changes are the applied events that moved the status: every
/// `advanced` one, and the first applied `unknown_status` one of an order
/// that never advanced (it moved `new` to `unknown`; any other leaves the
/// status as it was). A `new` stay begins when the order was created and
/// counts only when the order waited in it (created by its first callback,
/// it never did: a stay under a second).
pub const STAYS_SQL: &str = "WITH moves AS ( \
       SELECT o.vendor, o.order_id, 0::bigint AS id, o.created_at AS at, 'new'::text AS status \
       FROM orders o WHERE o.created_at >= $1 \
       UNION ALL \
       SELECT e.vendor, e.order_id, e.id, e.received_at, e.status FROM order_events e \
       WHERE e.received_at >= $1 AND e.applied \
         AND (e.effect = 'advanced' OR (e.effect = 'unknown_status' AND NOT EXISTS ( \
               SELECT 1 FROM order_events b \
               WHERE b.vendor = e.vendor AND b.order_id = e.order_id AND b.id < e.id \
                 AND b.applied AND b.effect IN ('advanced', 'unknown_status'))))), \
     stays AS ( \
       SELECT vendor, order_id, status, at, \
              lead(at) OVER (PARTITION BY vendor, order_id ORDER BY id) AS left_at \
       FROM moves), \
     timed AS ( \
       SELECT s.vendor, s.status, s.left_at IS NOT NULL AS finished, \
              GREATEST(0, floor(extract(epoch FROM COALESCE(s.left_at, x.tracking_expired_at, $2) - s.at)))::bigint AS secs \
       FROM stays s \
       LEFT JOIN order_polls x ON s.left_at IS NULL AND x.tracking_expired_at IS NOT NULL \
            AND x.vendor = s.vendor AND x.order_id = s.order_id \
       WHERE s.status = ANY($3) \
         AND NOT (s.status = 'new' AND s.left_at IS NOT NULL AND s.left_at < s.at + interval '1 second')), \
     overdue AS ( \
       SELECT ss.vendor, w.key AS status, w.value::bigint AS secs \
       FROM schedule_settings ss, jsonb_each_text(ss.settings -> 'waits') w) \
     SELECT t.vendor, t.status, max(t.secs) AS secs, \
            count(*) FILTER (WHERE t.finished) AS finished, \
            count(*) FILTER (WHERE NOT t.finished) AS open \
     FROM timed t LEFT JOIN overdue w ON w.vendor = t.vendor AND w.status = t.status \
     GROUP BY t.vendor, t.status, floor(ln(1 + t.secs::float8) / ln(1.001::float8)), \
              t.secs > COALESCE(w.secs, -1)";

#[derive(QueryableByName)]
struct Group {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    secs: i64,
    #[diesel(sql_type = BigInt)]
    finished: i64,
    #[diesel(sql_type = BigInt)]
    open: i64,
}

#[derive(QueryableByName)]
struct Overdue {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    secs: i64,
}

/// One row of `status_dwell`, as the service reads it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct DwellRow {
    #[diesel(sql_type = Text)]
    pub vendor: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub stays: i64,
    #[diesel(sql_type = BigInt)]
    pub finished: i64,
    #[diesel(sql_type = BigInt)]
    pub still_open: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub p50_secs: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub p90_secs: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub p99_secs: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub overdue_secs: Option<i64>,
    #[diesel(sql_type = Nullable<Double>)]
    pub outlived_overdue: Option<f64>,
    #[diesel(sql_type = Timestamptz)]
    pub since: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub refreshed_at: DateTime<Utc>,
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq)]
pub enum Refresh {
    /// Refreshed: stays counted (of them still going on), and the groups
    /// of times read.
    Done {
        stays: i64,
        open: i64,
        groups: usize,
        since: DateTime<Utc>,
    },
    /// The last refresh is recent and was made with the current overdue
    /// times.
    Fresh,
    /// Another process is refreshing now.
    Busy,
}

/// Refresh `status_dwell` when it is due (never done, older than
/// `MAX_AGE`, or made with other overdue times than the recorded ones), or
/// always with `force`.
pub fn refresh(conn: &mut PgConnection, now: DateTime<Utc>, force: bool) -> QueryResult<Refresh> {
    if !force && !is_due(conn, now)? {
        return Ok(Refresh::Fresh);
    }
    conn.transaction(|conn| {
        #[derive(QueryableByName)]
        struct Locked {
            #[diesel(sql_type = Bool)]
            locked: bool,
        }
        let l: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(LOCK)
            .get_result(conn)?;
        if !l.locked {
            return Ok(Refresh::Busy);
        }
        // Another process may have finished one while we waited to look.
        if !force && !is_due(conn, now)? {
            return Ok(Refresh::Fresh);
        }
        // The stays are sorted per order once; keep that sort in memory.
        conn.batch_execute("SET LOCAL work_mem = '64MB'")?;
        let since = now - chrono::Duration::from_std(WINDOW).unwrap_or_default();
        let statuses: Vec<&str> = StatusDurations::KEYS.iter().map(|s| s.as_str()).collect();
        let groups: Vec<Group> = diesel::sql_query(STAYS_SQL)
            .bind::<Timestamptz, _>(since)
            .bind::<Timestamptz, _>(now)
            .bind::<Array<Text>, _>(&statuses)
            .load(conn)?;
        let overdue: Vec<Overdue> = diesel::sql_query(
            "SELECT ss.vendor, w.key AS status, w.value::bigint AS secs \
             FROM schedule_settings ss, jsonb_each_text(ss.settings -> 'waits') w",
        )
        .load(conn)?;
        let overdue: BTreeMap<(String, String), u64> = overdue
            .into_iter()
            .map(|o| ((o.vendor, o.status), o.secs.max(0) as u64))
            .collect();
        let mut per: BTreeMap<(String, String), Vec<Stays>> = BTreeMap::new();
        for g in &groups {
            per.entry((g.vendor.clone(), g.status.clone()))
                .or_default()
                .push(Stays {
                    secs: g.secs.max(0) as u64,
                    finished: g.finished.max(0) as u64,
                    open: g.open.max(0) as u64,
                });
        }
        diesel::sql_query("DELETE FROM status_dwell_stats").execute(conn)?;
        let (mut stays, mut open) = (0, 0);
        for vendor in Vendor::ALL {
            for status in StatusDurations::KEYS {
                let key = (vendor.as_str().to_owned(), status.as_str().to_owned());
                let limit = overdue.get(&key).copied();
                let d = estimate(per.get(&key).map_or(&[][..], Vec::as_slice), limit);
                stays += (d.finished + d.open) as i64;
                open += d.open as i64;
                insert(conn, vendor, status, &d, limit, since, now)?;
            }
        }
        Ok(Refresh::Done {
            stays,
            open,
            groups: groups.len(),
            since,
        })
    })
}

fn insert(
    conn: &mut PgConnection,
    vendor: Vendor,
    status: Status,
    d: &Dwell,
    overdue: Option<u64>,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    let secs = |s: Option<u64>| s.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    diesel::sql_query(
        "INSERT INTO status_dwell_stats (vendor, status, stays, finished, still_open, p50_secs, p90_secs, \
           p99_secs, overdue_secs, outlived_overdue, since, refreshed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Text, _>(status.as_str())
    .bind::<BigInt, _>((d.finished + d.open) as i64)
    .bind::<BigInt, _>(d.finished as i64)
    .bind::<BigInt, _>(d.open as i64)
    .bind::<Nullable<BigInt>, _>(secs(d.p50))
    .bind::<Nullable<BigInt>, _>(secs(d.p90))
    .bind::<Nullable<BigInt>, _>(secs(d.p99))
    .bind::<Nullable<BigInt>, _>(secs(overdue))
    .bind::<Nullable<Double>, _>(d.outlived)
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
}

/// Never refreshed, older than `MAX_AGE`, or refreshed with overdue times
/// other than the ones recorded now (a settings change).
fn is_due(conn: &mut PgConnection, now: DateTime<Utc>) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Due {
        #[diesel(sql_type = Bool)]
        due: bool,
    }
    let d: Due = diesel::sql_query(
        "SELECT NOT EXISTS (SELECT 1 FROM status_dwell_stats) \
             OR EXISTS (SELECT 1 FROM status_dwell_stats WHERE refreshed_at < $1) \
             OR EXISTS (SELECT 1 FROM status_dwell_stats d \
                        JOIN schedule_settings ss ON ss.vendor = d.vendor \
                        WHERE d.overdue_secs IS DISTINCT FROM (ss.settings -> 'waits' ->> d.status)::bigint) AS due",
    )
    .bind::<Timestamptz, _>(now - chrono::Duration::from_std(MAX_AGE).unwrap_or_default())
    .get_result(conn)?;
    Ok(d.due)
}

/// Every row of the latest refresh, vendors and statuses in their order.
pub fn all(conn: &mut PgConnection) -> QueryResult<Vec<DwellRow>> {
    let mut rows: Vec<DwellRow> = diesel::sql_query(
        "SELECT vendor, status, stays, finished, still_open, p50_secs, p90_secs, p99_secs, overdue_secs, \
                outlived_overdue, since, refreshed_at FROM status_dwell_stats",
    )
    .load(conn)?;
    let place = |r: &DwellRow| {
        (
            Vendor::ALL.iter().position(|v| v.as_str() == r.vendor),
            StatusDurations::KEYS
                .iter()
                .position(|s| s.as_str() == r.status),
        )
    };
    rows.sort_by_key(place);
    Ok(rows)
}

/// The latest refresh's row for one vendor and status.
pub fn of(
    conn: &mut PgConnection,
    vendor: Vendor,
    status: Status,
) -> QueryResult<Option<DwellRow>> {
    diesel::sql_query(
        "SELECT vendor, status, stays, finished, still_open, p50_secs, p90_secs, p99_secs, overdue_secs, \
                outlived_overdue, since, refreshed_at FROM status_dwell_stats WHERE vendor = $1 AND status = $2",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Text, _>(status.as_str())
    .get_result(conn)
    .optional()
}
