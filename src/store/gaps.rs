//! SQL for callback gaps (`poller::gaps` holds the rules): find silences in
//! the callbacks heard since the last look, record them in `callback_gaps`,
//! and make the orders they may have hidden due for a query. The poller's
//! claim then queries them within every budget.
//!
//! Each look costs O(callbacks heard since the previous one): the inbox is
//! read through `inbound_callbacks_received_at_idx` from `callback_watch`'s
//! mark on. One process at a time, under an advisory lock per vendor.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text, Timestamptz};

use crate::rules::gaps::{expected_per_day, GapPolicy, GapStep, OpenGap, HISTORY_DAYS};
use crate::rules::schedule::swept_at;
use crate::rules::Status;
use crate::vendors::Vendor;

/// What a look found or did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GapEvent {
    /// Silent since then, longer than those hours allow: callbacks are being
    /// lost now.
    Silent {
        since: DateTime<Utc>,
        expected_per_day: i64,
    },
    /// A silence between two callbacks (found after it ended, e.g. after
    /// our own downtime, or the end of one seen while it lasted).
    Resumed {
        since: DateTime<Utc>,
        resumed_at: DateTime<Utc>,
        expected_per_day: i64,
    },
    /// Orders made due because of the gap that began at `since`;
    /// `closing`: the recovery after callbacks resumed (else a resweep).
    Swept {
        since: DateTime<Utc>,
        orders: usize,
        closing: bool,
    },
    /// A sweep failed part way; it is retried after `SWEEP_LEASE`.
    SweepFailed { since: DateTime<Utc>, error: String },
}

/// The latest callback heard (applied or duplicate) after `after`.
pub const LAST_HEARD_SQL: &str = "SELECT max(received_at) AS at FROM inbound_callbacks \
     WHERE vendor = $1 AND outcome IN ('applied', 'duplicate') AND received_at > $2";

/// Silences of at least $3 seconds between callbacks heard after $2 ($2
/// counts as the one before the first).
pub const HOLES_SQL: &str = "SELECT prev AS since, at AS resumed_at FROM ( \
       SELECT received_at AS at, lag(received_at, 1, $2) OVER (ORDER BY received_at) AS prev \
       FROM inbound_callbacks \
       WHERE vendor = $1 AND outcome IN ('applied', 'duplicate') AND received_at > $2) s \
     WHERE at - prev >= make_interval(secs => $3) ORDER BY at";

/// Callbacks heard in the same clock hours ($2 to $3) on each of the $4
/// previous days, counted up to $5.
pub const HISTORY_SQL: &str = "SELECT count(*) AS n FROM ( \
       SELECT 1 FROM generate_series(1, $4) AS k \
       CROSS JOIN LATERAL ( \
         SELECT 1 FROM inbound_callbacks \
         WHERE vendor = $1 AND outcome IN ('applied', 'duplicate') \
           AND received_at > $2 - k * interval '1 day' AND received_at <= $3 - k * interval '1 day' \
         LIMIT $5) c \
       LIMIT $5) s";

/// One chunk of a sweep, first the walk: the next $6 tracked orders after
/// the cursor ($4, $5) in `order_polls_due_idx` order; of those, the ones
/// due later than $3 (now) and not heard from since $2. Returns how many it
/// walked, those orders, and the new cursor.
///
/// The index is `(vendor, next_check_at, order_id)`: the walk reads $6
/// entries from the cursor, already in order, whatever the size of the
/// table or of a group of orders due at the same time. `orders` is looked
/// up per walked order by `orders_pkey`, in an expression subquery, which
/// the planner never turns into a join (as a join it sorted and hash-joined
/// every order due later against a scan of the vendor's orders, chunk after
/// chunk).
pub const SWEEP_WALK_SQL: &str = "WITH c AS ( \
       SELECT p.order_id, p.next_check_at, \
              p.next_check_at > $3 AND (SELECT COALESCE(o.last_heard_at, p.tracked_at) < $2 FROM orders o \
                                        WHERE o.vendor = p.vendor AND o.order_id = p.order_id) AS stale \
       FROM order_polls p \
       WHERE p.vendor = $1 AND p.next_check_at >= $4 AND (p.next_check_at, p.order_id) > ($4, $5) \
       ORDER BY p.next_check_at, p.order_id LIMIT $6) \
     SELECT count(*) AS walked, \
            COALESCE(array_agg(order_id) FILTER (WHERE stale), '{}') AS stale, \
            (array_agg(next_check_at ORDER BY next_check_at DESC, order_id DESC))[1] AS at, \
            (array_agg(order_id ORDER BY next_check_at DESC, order_id DESC))[1] AS id \
     FROM c";

/// Then the update of the orders the walk found ($4), their conditions
/// checked again (a callback may have come in between): due when the rules
/// say for their status (`Event::Swept`: $5 statuses, $6 times, all at or
/// before $3, now), out of the range later chunks (and a sweep taken over)
/// walk.
///
/// Found by `order_polls_pkey`; `orders` is read by `orders_pkey` in two
/// expression subqueries per order (the check, then the status's time),
/// never joined: a join let the planner scan every order of the vendor, or
/// every tracked one, for each chunk of 2,000. Being per row, the check also
/// makes the key lookups the planner's cheapest way to find the rows.
pub const SWEEP_SQL: &str = "UPDATE order_polls p \
     SET next_check_at = (SELECT ($6::timestamptz[])[array_position($5::text[], o.status)] FROM orders o \
                          WHERE o.vendor = p.vendor AND o.order_id = p.order_id) \
     WHERE p.vendor = $1 AND p.order_id = ANY($4) AND p.next_check_at > $3 \
       AND (SELECT o.status = ANY($5) AND COALESCE(o.last_heard_at, p.tracked_at) < $2 FROM orders o \
            WHERE o.vendor = p.vendor AND o.order_id = p.order_id)";

/// Orders a sweep chunk walks (and at most updates, in one transaction: the
/// row locks it holds, which callbacks for those orders wait on, last a few
/// tens of milliseconds).
pub const SWEEP_CHUNK: i64 = 2000;

#[derive(QueryableByName)]
struct At {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Hole {
    #[diesel(sql_type = Timestamptz)]
    since: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    resumed_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Walk {
    #[diesel(sql_type = BigInt)]
    walked: i64,
    #[diesel(sql_type = diesel::sql_types::Array<Text>)]
    stale: Vec<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    id: Option<String>,
}

#[derive(QueryableByName)]
struct GapRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Timestamptz)]
    silent_since: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    resumed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    detected_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    swept_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    sweep_started_at: Option<DateTime<Utc>>,
}

/// One look at `vendor`'s callbacks at `now` (a poll pass does one before it
/// claims): record new silences, then sweep for the gaps that need it.
///
/// The look and the choice of sweeps are one transaction under an advisory
/// lock; each sweep then commits in chunks (`SWEEP_CHUNK`), its gap marked
/// as being swept so that another process leaves it alone, or takes it over
/// if this one dies (`SWEEP_LEASE`).
pub fn check(
    conn: &mut PgConnection,
    vendor: Vendor,
    now: DateTime<Utc>,
    policy: &GapPolicy,
) -> QueryResult<Vec<GapEvent>> {
    let (mut events, sweeps) = conn.transaction(|conn| {
        super::lock_vendor(conn, 7217200200, vendor)?;
        let mut events = Vec::new();
        find_silences(conn, vendor, now, policy, &mut events)?;
        let mut sweeps = Vec::new();
        for gap in open_gaps(conn, vendor)? {
            let (since, closing) = match gap.step(policy, now) {
                GapStep::Wait => continue,
                GapStep::Resweep { since } => (since, false),
                GapStep::Recover { since } => (since, true),
            };
            diesel::sql_query("UPDATE callback_gaps SET sweep_started_at = $2 WHERE id = $1")
                .bind::<BigInt, _>(gap.id)
                .bind::<Timestamptz, _>(now)
                .execute(conn)?;
            sweeps.push((gap, since, closing));
        }
        QueryResult::Ok((events, sweeps))
    })?;
    for (gap, since, closing) in sweeps {
        let swept = sweep(conn, vendor, since, now, SWEEP_CHUNK).and_then(|s| {
            // Only while it is still ours (not taken over).
            diesel::sql_query(
                "UPDATE callback_gaps SET swept_at = $2, swept_orders = swept_orders + $3, \
                 closed_at = CASE WHEN $4 THEN $2 END, sweep_started_at = NULL \
                 WHERE id = $1 AND sweep_started_at = $2",
            )
            .bind::<BigInt, _>(gap.id)
            .bind::<Timestamptz, _>(now)
            .bind::<BigInt, _>(s.orders as i64)
            .bind::<diesel::sql_types::Bool, _>(closing)
            .execute(conn)?;
            Ok(s)
        });
        events.push(match swept {
            Ok(s) => GapEvent::Swept {
                since: gap.silent_since,
                orders: s.orders,
                closing,
            },
            Err(e) => GapEvent::SweepFailed {
                since: gap.silent_since,
                error: e.to_string(),
            },
        });
    }
    Ok(events)
}

/// Silences among the callbacks heard since the watch mark, and the one
/// going on now; moves the mark.
fn find_silences(
    conn: &mut PgConnection,
    vendor: Vendor,
    now: DateTime<Utc>,
    policy: &GapPolicy,
    events: &mut Vec<GapEvent>,
) -> QueryResult<()> {
    let mark: Option<At> =
        diesel::sql_query("SELECT heard_until AS at FROM callback_watch WHERE vendor = $1")
            .bind::<Text, _>(vendor.as_str())
            .get_result(conn)
            .optional()?;
    let latest = match mark.and_then(|m| m.at) {
        Some(mark) => {
            silences_since(conn, vendor, mark, now, policy, events)?;
            last_heard(conn, vendor, mark)?.unwrap_or(mark)
        }
        // First look: from the latest callback, if any was ever heard.
        None => match last_heard(conn, vendor, DateTime::<Utc>::UNIX_EPOCH)? {
            Some(latest) => latest,
            None => return Ok(()),
        },
    };
    set_mark(conn, vendor, latest, now)?;
    if policy.long_enough(latest, now) {
        let known: Option<Count> = diesel::sql_query(
            "SELECT 1::bigint AS n FROM callback_gaps WHERE vendor = $1 AND silent_since = $2",
        )
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(latest)
        .get_result(conn)
        .optional()?;
        if known.is_none() {
            let history = history(conn, vendor, latest, now, policy)?;
            if policy.is_gap(history) {
                diesel::sql_query(
                    "INSERT INTO callback_gaps (vendor, silent_since, detected_at, expected_callbacks) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (vendor, silent_since) DO NOTHING",
                )
                .bind::<Text, _>(vendor.as_str())
                .bind::<Timestamptz, _>(latest)
                .bind::<Timestamptz, _>(now)
                .bind::<Integer, _>(i32::try_from(expected_per_day(history)).unwrap_or(i32::MAX))
                .execute(conn)?;
                events.push(GapEvent::Silent {
                    since: latest,
                    expected_per_day: expected_per_day(history),
                });
            }
        }
    }
    Ok(())
}

/// Ended silences among the callbacks heard after `mark`.
fn silences_since(
    conn: &mut PgConnection,
    vendor: Vendor,
    mark: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: &GapPolicy,
    events: &mut Vec<GapEvent>,
) -> QueryResult<()> {
    let holes: Vec<Hole> = diesel::sql_query(HOLES_SQL)
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(mark)
        .bind::<Double, _>(policy.silence.as_secs_f64())
        .load(conn)?;
    for h in holes {
        let history = history(conn, vendor, h.since, h.resumed_at, policy)?;
        if !policy.is_gap(history) {
            continue;
        }
        // Seen while it lasted: now it ended. Otherwise a new, ended gap.
        let n = diesel::sql_query(
            "INSERT INTO callback_gaps (vendor, silent_since, resumed_at, detected_at, expected_callbacks) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (vendor, silent_since) DO UPDATE SET resumed_at = excluded.resumed_at \
             WHERE callback_gaps.resumed_at IS NULL",
        )
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(h.since)
        .bind::<Timestamptz, _>(h.resumed_at)
        .bind::<Timestamptz, _>(now)
        .bind::<Integer, _>(i32::try_from(expected_per_day(history)).unwrap_or(i32::MAX))
        .execute(conn)?;
        if n > 0 {
            events.push(GapEvent::Resumed {
                since: h.since,
                resumed_at: h.resumed_at,
                expected_per_day: expected_per_day(history),
            });
        }
    }
    Ok(())
}

fn last_heard(
    conn: &mut PgConnection,
    vendor: Vendor,
    after: DateTime<Utc>,
) -> QueryResult<Option<DateTime<Utc>>> {
    let r: At = diesel::sql_query(LAST_HEARD_SQL)
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(after)
        .get_result(conn)?;
    Ok(r.at)
}

fn set_mark(
    conn: &mut PgConnection,
    vendor: Vendor,
    heard_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO callback_watch (vendor, heard_until, checked_at) VALUES ($1, $2, $3) \
         ON CONFLICT (vendor) DO UPDATE SET heard_until = excluded.heard_until, checked_at = excluded.checked_at",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Timestamptz, _>(heard_until)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
}

fn history(
    conn: &mut PgConnection,
    vendor: Vendor,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    policy: &GapPolicy,
) -> QueryResult<i64> {
    let r: Count = diesel::sql_query(HISTORY_SQL)
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(from)
        .bind::<Timestamptz, _>(to)
        .bind::<Integer, _>(HISTORY_DAYS as i32)
        .bind::<BigInt, _>(policy.count_cap())
        .get_result(conn)?;
    Ok(r.n)
}

fn open_gaps(conn: &mut PgConnection, vendor: Vendor) -> QueryResult<Vec<OpenGap>> {
    let rows: Vec<GapRow> = diesel::sql_query(
        "SELECT id, silent_since, resumed_at, detected_at, swept_at, sweep_started_at FROM callback_gaps \
         WHERE vendor = $1 AND closed_at IS NULL ORDER BY silent_since",
    )
    .bind::<Text, _>(vendor.as_str())
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| OpenGap {
            id: r.id,
            silent_since: r.silent_since,
            resumed_at: r.resumed_at,
            detected_at: r.detected_at,
            swept_at: r.swept_at,
            sweep_started_at: r.sweep_started_at,
        })
        .collect())
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Orders made due.
    pub orders: usize,
    /// Chunks it walked (each a walk and at most one update).
    pub chunks: usize,
}

/// Make the tracked orders not heard from since `since` due now, `chunk`
/// orders walked per transaction. Safe to repeat or to run after a sweep
/// that died half way: swept orders are due, out of its range.
pub fn sweep(
    conn: &mut PgConnection,
    vendor: Vendor,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    chunk: i64,
) -> QueryResult<Swept> {
    let (statuses, ats): (Vec<&str>, Vec<DateTime<Utc>>) = Status::ALL
        .into_iter()
        .filter_map(|status| Some((status.as_str(), swept_at(status, now)?)))
        .unzip();
    let mut cursor = (now, String::new());
    let mut done = Swept {
        orders: 0,
        chunks: 0,
    };
    loop {
        let w: Walk = diesel::sql_query(SWEEP_WALK_SQL)
            .bind::<Text, _>(vendor.as_str())
            .bind::<Timestamptz, _>(since)
            .bind::<Timestamptz, _>(now)
            .bind::<Timestamptz, _>(cursor.0)
            .bind::<Text, _>(&cursor.1)
            .bind::<BigInt, _>(chunk)
            .get_result(conn)?;
        if !w.stale.is_empty() {
            done.orders += diesel::sql_query(SWEEP_SQL)
                .bind::<Text, _>(vendor.as_str())
                .bind::<Timestamptz, _>(since)
                .bind::<Timestamptz, _>(now)
                .bind::<diesel::sql_types::Array<Text>, _>(&w.stale)
                .bind::<diesel::sql_types::Array<Text>, _>(&statuses)
                .bind::<diesel::sql_types::Array<Timestamptz>, _>(&ats)
                .execute(conn)?;
        }
        done.chunks += 1;
        match (w.at, w.id) {
            (Some(at), Some(id)) if w.walked >= chunk => cursor = (at, id),
            _ => return Ok(done),
        }
    }
}
