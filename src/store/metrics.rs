//! SQL behind the database gauges of `GET /metrics`: orders per status, the
//! due backlog and its oldest order, the last callback heard, open callback
//! gaps and vendor pauses, read in one short transaction that every replica
//! runs every `METRICS_REFRESH` (so they all report the same numbers).
//!
//! Every statement costs O(what changed or is due), never O(orders):
//! orders per status come from the counts the `orders` triggers keep
//! (migration `2026-12-08-000013_metrics`: deltas appended per statement,
//! folded here under an advisory lock), the oldest due order from the first
//! entry of `order_polls_due_idx`, the last callback from
//! `inbound_callbacks_received_at_idx` walked back from its newest entry.
//! Counting the due orders is the one O(due) statement: the caller spaces
//! it out when the backlog is huge (`metrics::count_due_now`). Must never
//! scan `orders` or the whole inbox.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};

use crate::metrics::DbGauges;
use crate::rules::{Status, Vendor};

/// The advisory lock one process at a time folds the deltas under.
pub const FOLD_LOCK: i64 = 7217200300;

/// Move the oldest 100,000 committed deltas into `order_counts` (one
/// statement; the rest, and deltas committed meanwhile, wait for the next
/// fold: readers add them anyway).
pub const FOLD_SQL: &str = "WITH moved AS (DELETE FROM order_count_deltas WHERE id IN \
       (SELECT id FROM order_count_deltas ORDER BY id LIMIT 100000) RETURNING vendor, status, delta) \
     INSERT INTO order_counts (vendor, status, orders) \
     SELECT vendor, status, sum(delta) FROM moved GROUP BY vendor, status \
     ON CONFLICT (vendor, status) DO UPDATE SET orders = order_counts.orders + excluded.orders";

/// Orders per vendor and status: the folded counts plus the deltas not
/// folded yet (the view adds them).
pub const ORDER_COUNTS_SQL: &str = "SELECT vendor, status, orders FROM order_status_counts";

/// Per vendor in $1: orders due at $2, one range of `order_polls_due_idx`
/// each, O(due) (index-only where the visibility map allows).
pub const DUE_SQL: &str = "SELECT v.vendor, d.due \
     FROM unnest($1::text[]) AS v(vendor) \
     CROSS JOIN LATERAL (SELECT count(*) AS due FROM order_polls p \
                         WHERE p.vendor = v.vendor AND p.next_check_at <= $2) d";

/// Per vendor in $1: the earliest next check (the first entry of
/// `order_polls_due_idx`).
pub const NEXT_CHECK_SQL: &str = "SELECT v.vendor, \
            (SELECT min(p.next_check_at) FROM order_polls p \
             WHERE p.vendor = v.vendor AND p.next_check_at IS NOT NULL) AS at \
     FROM unnest($1::text[]) AS v(vendor)";

/// When the last complete prune started, and until when both partitioned
/// tables have partitions (rows after that cannot be inserted): a tiny
/// table and the catalog.
pub const LIFECYCLE_SQL: &str = "SELECT \
       (SELECT max(started_at) FROM retention_runs \
        WHERE finished_at IS NOT NULL AND error IS NULL AND NOT dry_run) AS pruned, \
       (SELECT min(until) FROM (SELECT max(to_ts) AS until FROM haoka_sync_partitions.bounds \
                                WHERE NOT detach_pending GROUP BY parent) p) AS covered";

#[derive(QueryableByName)]
struct LifecycleRow {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pruned: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    covered: Option<DateTime<Utc>>,
}

/// How long any statement of a refresh may run. Counting the due orders
/// and a process's first look for the last callback (the two that can take
/// long) run in savepoints: past this, the refresh goes on without them.
pub const STATEMENT_TIMEOUT: &str = "30s";

/// Vendors paused at $1.
pub const PAUSED_SQL: &str = "SELECT vendor FROM vendor_pauses WHERE paused_until > $1";

/// Vendors with a callback gap open.
pub const GAPS_OPEN_SQL: &str = "SELECT DISTINCT vendor FROM callback_gaps WHERE closed_at IS NULL";

/// The last callback heard from $1 and the newest request of any outcome,
/// among those received after $2 (the previous mark, less `LAG`): each a
/// walk back from the newest request that stops at the first match, so
/// O(1) while callbacks are heard, and at most the requests since $2 while
/// every one is rejected (a wrong secret).
pub const HEARD_SINCE_SQL: &str = "SELECT \
       (SELECT max(received_at) FROM inbound_callbacks \
        WHERE vendor = $1 AND outcome IN ('applied', 'duplicate') AND received_at > $2) AS heard, \
       (SELECT max(received_at) FROM inbound_callbacks WHERE vendor = $1 AND received_at > $2) AS seen";

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
}

#[derive(QueryableByName)]
struct NextRow {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
}

/// What counting the due orders came to in a refresh that tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DueCount {
    /// Counted in this long.
    Counted(std::time::Duration),
    /// It ran past `STATEMENT_TIMEOUT` (or failed) after this long: the
    /// gauge keeps the last count; the error, for the log.
    Failed(std::time::Duration, String),
}

/// Run `f` in a savepoint under `STATEMENT_TIMEOUT`: a failure rolls back
/// only what `f` did, and the refresh goes on.
fn apart<T>(
    conn: &mut PgConnection,
    f: impl FnOnce(&mut PgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    conn.transaction(|conn| {
        conn.batch_execute(&format!(
            "SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"
        ))?;
        f(conn)
    })
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
/// (unless another process is folding), then read every gauge; count the
/// due orders only when `count_due` (the caller spaces out costly counts),
/// in a savepoint with its own time limit, so that a huge backlog never
/// holds up or fails the rest. The last callback is looked up for
/// `callback_vendors` only (the others push none), from `marks` on; the
/// marks move only when the refresh commits.
pub fn refresh(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    callback_vendors: &[Vendor],
    marks: &mut HeardMarks,
    count_due: bool,
) -> QueryResult<(DbGauges, Option<DueCount>)> {
    let mut next = marks.clone();
    let vendors: Vec<&str> = Vendor::ALL.iter().map(|v| v.as_str()).collect();
    let gauges = conn.transaction(|conn| {
        // A refresh must never hang on a statement.
        conn.batch_execute(&format!(
            "SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"
        ))?;
        fold(conn)?;
        let orders = order_counts(conn)?;
        let next_check = diesel::sql_query(NEXT_CHECK_SQL)
            .bind::<Array<Text>, _>(&vendors)
            .load::<NextRow>(conn)?
            .into_iter()
            .filter_map(|r| Some((r.vendor.parse().ok()?, r.at?)))
            .collect();
        let paused = vendors_of(
            diesel::sql_query(PAUSED_SQL)
                .bind::<Timestamptz, _>(now)
                .load(conn)?,
        );
        let gaps_open = vendors_of(diesel::sql_query(GAPS_OPEN_SQL).load(conn)?);
        let lifecycle: LifecycleRow = diesel::sql_query(LIFECYCLE_SQL).get_result(conn)?;
        let forward = super::forward::gauges(conn)?
            .into_iter()
            .map(|g| crate::metrics::ForwardGauge {
                target_id: g.target_id,
                pending: g.pending,
                oldest_pending: g.oldest_pending,
                failing: g.failing,
                exhausted: g.exhausted,
            })
            .collect();
        let mut last_callback = Vec::new();
        for v in callback_vendors {
            let mark = next.0.entry(*v).or_default();
            *mark = look(conn, *v, *mark, now)?;
            if let Some(t) = mark.heard {
                last_callback.push((*v, t));
            }
        }
        let (due, counted) = if count_due {
            let started = std::time::Instant::now();
            let due = apart(conn, |conn| due_counts(conn, &vendors, now));
            let took = started.elapsed();
            match due {
                Ok(due) => (Some(due), Some(DueCount::Counted(took))),
                Err(e) => (None, Some(DueCount::Failed(took, e.to_string()))),
            }
        } else {
            (None, None)
        };
        let gauges = DbGauges {
            orders,
            due,
            next_check,
            last_callback,
            gaps_open,
            paused,
            last_pruned: lifecycle.pruned,
            partitions_until: lifecycle.covered,
            forward,
            now,
        };
        QueryResult::Ok((gauges, counted))
    })?;
    *marks = next;
    Ok(gauges)
}

/// Orders due at `now` per vendor (`DUE_SQL`).
pub fn due_counts(
    conn: &mut PgConnection,
    vendors: &[&str],
    now: DateTime<Utc>,
) -> QueryResult<Vec<(Vendor, i64)>> {
    Ok(diesel::sql_query(DUE_SQL)
        .bind::<Array<Text>, _>(vendors)
        .bind::<Timestamptz, _>(now)
        .load::<DueRow>(conn)?
        .into_iter()
        .filter_map(|r| Some((r.vendor.parse().ok()?, r.due)))
        .collect())
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

/// The inbox since the mark; the first time, back to the last callback
/// heard. A first look that cannot finish in time (a huge inbox of rejected
/// requests and no mark of the gap search to start from) starts the marks
/// at `now` instead: the gauge then appears with the next callback heard.
fn look(
    conn: &mut PgConnection,
    vendor: Vendor,
    mark: Mark,
    now: DateTime<Utc>,
) -> QueryResult<Mark> {
    let row: HeardRow = match mark.seen {
        Some(seen) => diesel::sql_query(HEARD_SINCE_SQL)
            .bind::<Text, _>(vendor.as_str())
            .bind::<Timestamptz, _>(seen - LAG)
            .get_result(conn)?,
        None => {
            let first = apart(conn, |conn| {
                diesel::sql_query(HEARD_FIRST_SQL)
                    .bind::<Text, _>(vendor.as_str())
                    .get_result(conn)
            });
            match first {
                Ok(row) => row,
                Err(e) => {
                    log::warn!(
                        "metrics: the last {vendor} callback heard could not be found ({e}); haoka_sync_last_callback_timestamp_seconds starts with the next one"
                    );
                    HeardRow {
                        heard: None,
                        seen: Some(now),
                    }
                }
            }
        }
    };
    Ok(Mark {
        heard: mark.heard.max(row.heard),
        seen: mark.seen.max(row.seen),
    })
}
