//! SQL behind the database gauges of `GET /metrics`: orders per status, the
//! due backlog and its oldest order, the last callback heard, open callback
//! gaps and vendor pauses, read in one short transaction that every replica
//! runs every `METRICS_REFRESH` (so they all report the same numbers).
//!
//! Every statement costs O(what changed or is due), never O(orders):
//! orders per status come from the counts the `orders` triggers keep
//! (migration `2026-12-08-000013_metrics`: deltas appended per statement,
//! folded here under an advisory lock), the backlog from
//! `order_polls_due_idx`, the last callback from
//! `inbound_callbacks_received_at_idx` from the previous refresh's mark on.
//! Must never scan `orders` or the whole inbox.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};

use crate::metrics::DbGauges;
use crate::rules::{Status, Vendor};

/// The advisory lock one process at a time folds the deltas under.
pub const FOLD_LOCK: i64 = 7217200300;

/// Move every committed delta into `order_counts` (one statement; deltas
/// committed meanwhile wait for the next fold).
pub const FOLD_SQL: &str =
    "WITH moved AS (DELETE FROM order_count_deltas RETURNING vendor, status, delta) \
     INSERT INTO order_counts (vendor, status, orders) \
     SELECT vendor, status, sum(delta) FROM moved GROUP BY vendor, status \
     ON CONFLICT (vendor, status) DO UPDATE SET orders = order_counts.orders + excluded.orders";

/// Orders per vendor and status: the folded counts plus the deltas not
/// folded yet (the view adds them).
pub const ORDER_COUNTS_SQL: &str = "SELECT vendor, status, orders FROM order_status_counts";

/// Per vendor in $1: orders due at $2 and the oldest due time, one range of
/// `order_polls_due_idx` each.
pub const DUE_SQL: &str = "SELECT v.vendor, d.due, d.oldest \
     FROM unnest($1::text[]) AS v(vendor) \
     CROSS JOIN LATERAL (SELECT count(*) AS due, min(p.next_check_at) AS oldest FROM order_polls p \
                         WHERE p.vendor = v.vendor AND p.next_check_at <= $2) d";

/// Vendors paused at $1.
pub const PAUSED_SQL: &str = "SELECT vendor FROM vendor_pauses WHERE paused_until > $1";

/// Vendors with a callback gap open.
pub const GAPS_OPEN_SQL: &str = "SELECT DISTINCT vendor FROM callback_gaps WHERE closed_at IS NULL";

/// The last callback heard from $1 and the newest request of any outcome,
/// among those received after $2 (the previous mark, less `LAG`).
pub const HEARD_SINCE_SQL: &str =
    "SELECT max(received_at) FILTER (WHERE outcome IN ('applied', 'duplicate')) AS heard, \
            max(received_at) AS seen \
     FROM inbound_callbacks WHERE vendor = $1 AND received_at > $2";

/// The first look of a process: the last callback heard from $1, searched
/// back to the mark of the callback-gap search when there is one (it is a
/// heard callback), and the newest request of any outcome.
pub const HEARD_FIRST_SQL: &str = "SELECT \
       (SELECT max(received_at) FROM inbound_callbacks \
        WHERE vendor = $1 AND outcome IN ('applied', 'duplicate') \
          AND received_at >= COALESCE((SELECT heard_until FROM callback_watch WHERE vendor = $1), '-infinity')) AS heard, \
       (SELECT max(received_at) FROM inbound_callbacks WHERE vendor = $1) AS seen";

/// How far back each look at the inbox starts before the newest request the
/// previous look saw: a request is stamped when its batch starts and
/// committed a moment later, so one stamped earlier can appear after a
/// later one was seen. A stamp older than this at its commit is missed
/// until the next callback heard (the gauge then lags; nothing else).
pub const LAG: chrono::Duration = chrono::Duration::seconds(10);

/// Where the inbox was last looked at, per vendor (kept by the refresher
/// between refreshes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeardMarks(BTreeMap<Vendor, Mark>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    heard: Option<DateTime<Utc>>,
    /// The newest request seen; None before the first look found one.
    seen: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    orders: i64,
}

#[derive(QueryableByName)]
struct DueRow {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = BigInt)]
    due: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct VendorRow {
    #[diesel(sql_type = Text)]
    vendor: String,
}

#[derive(QueryableByName)]
struct HeardRow {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    heard: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    seen: Option<DateTime<Utc>>,
}

/// One refresh at `now`, in one transaction: fold the order-count deltas
/// (unless another process is folding), then read every gauge. The last
/// callback is looked up for `callback_vendors` only (the others push none),
/// from `marks` on; the marks move only when the refresh commits.
pub fn refresh(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    callback_vendors: &[Vendor],
    marks: &mut HeardMarks,
) -> QueryResult<DbGauges> {
    let mut next = marks.clone();
    let gauges = conn.transaction(|conn| {
        // A refresh must never pile up behind a slow statement.
        conn.batch_execute("SET LOCAL statement_timeout = '10s'")?;
        fold(conn)?;
        let orders = order_counts(conn)?;
        let vendors: Vec<&str> = Vendor::ALL.iter().map(|v| v.as_str()).collect();
        let due = diesel::sql_query(DUE_SQL)
            .bind::<Array<Text>, _>(&vendors)
            .bind::<Timestamptz, _>(now)
            .load::<DueRow>(conn)?
            .into_iter()
            .filter_map(|r| Some((r.vendor.parse().ok()?, r.due, r.oldest)))
            .collect();
        let paused = vendors_of(
            diesel::sql_query(PAUSED_SQL)
                .bind::<Timestamptz, _>(now)
                .load(conn)?,
        );
        let gaps_open = vendors_of(diesel::sql_query(GAPS_OPEN_SQL).load(conn)?);
        let mut last_callback = Vec::new();
        for v in callback_vendors {
            let mark = next.0.entry(*v).or_default();
            *mark = look(conn, *v, *mark)?;
            if let Some(t) = mark.heard {
                last_callback.push((*v, t));
            }
        }
        QueryResult::Ok(DbGauges {
            orders,
            due,
            last_callback,
            gaps_open,
            paused,
            now,
        })
    })?;
    *marks = next;
    Ok(gauges)
}

/// Fold the deltas into `order_counts` if no other process is doing it;
/// returns how many count rows changed (None: another process holds the
/// lock, and readers add the deltas anyway).
pub fn fold(conn: &mut PgConnection) -> QueryResult<Option<usize>> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let got: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
        .bind::<BigInt, _>(FOLD_LOCK)
        .get_result(conn)?;
    if !got.locked {
        return Ok(None);
    }
    diesel::sql_query(FOLD_SQL).execute(conn).map(Some)
}

/// Orders per vendor and status, as `count(*)` over `orders` would say.
pub fn order_counts(conn: &mut PgConnection) -> QueryResult<Vec<(Vendor, Status, i64)>> {
    Ok(diesel::sql_query(ORDER_COUNTS_SQL)
        .load::<CountRow>(conn)?
        .into_iter()
        .filter_map(|r| {
            Some((
                r.vendor.parse().ok()?,
                r.status.parse::<Status>().ok()?,
                r.orders,
            ))
        })
        .collect())
}

fn vendors_of(rows: Vec<VendorRow>) -> Vec<Vendor> {
    rows.into_iter()
        .filter_map(|r| r.vendor.parse().ok())
        .collect()
}

/// The inbox since the mark (or, the first time, back to the last callback
/// heard).
fn look(conn: &mut PgConnection, vendor: Vendor, mark: Mark) -> QueryResult<Mark> {
    let row: HeardRow = match mark.seen {
        Some(seen) => diesel::sql_query(HEARD_SINCE_SQL)
            .bind::<Text, _>(vendor.as_str())
            .bind::<Timestamptz, _>(seen - LAG)
            .get_result(conn)?,
        None => diesel::sql_query(HEARD_FIRST_SQL)
            .bind::<Text, _>(vendor.as_str())
            .get_result(conn)?,
    };
    Ok(Mark {
        heard: mark.heard.max(row.heard),
        seen: mark.seen.max(row.seen),
    })
}
