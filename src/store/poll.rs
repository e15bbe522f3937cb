//! SQL for polling: registering orders, claiming due ones under a lease,
//! the deployment-wide call budget, recording results, vendor pauses.
//!
//! Everything that must hold across processes is decided here, in
//! PostgreSQL: a claimed order is leased (`FOR UPDATE SKIP LOCKED`), a call is
//! reserved in `vendor_calls` under an advisory lock before it is sent, and
//! per-order daily counts live on the order row.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Date, Integer, Nullable, Text, Timestamptz};

use super::ingest::{self, InboundRequest, Receipt};
use super::{apply_observation, Applied};
use crate::db::schema::{order_polls, orders, vendor_calls, vendor_pauses};
use crate::rules::schedule::{china_day, Event, NextCheck, Schedule};
use crate::rules::status::{Observation, Status};
use crate::vendors::Vendor;

/// Register orders to track. New ones start as `new` and are first checked
/// after `overdue[new]` (at once when callbacks for them wait unverified);
/// known ones are left alone, except that an order whose tracking had
/// expired is tracked again. Returns how many were new.
pub fn register(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_ids: &[String],
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    register_reporting(conn, vendor, order_ids, schedule, now, |_| {}).map(|new| new.len())
}

/// `register`, telling `progress` how many ids are done after each chunk
/// (a long `track --file` prints it); returns the ids that were new.
pub fn register_reporting(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_ids: &[String],
    schedule: &Schedule,
    now: DateTime<Utc>,
    mut progress: impl FnMut(usize),
) -> QueryResult<Vec<String>> {
    let next = schedule
        .next_check(vendor, "", Event::Registered, NextCheck::default(), now)
        .at;
    conn.transaction(|conn| {
        let mut created = Vec::new();
        let mut done = 0;
        for chunk in order_ids.chunks(1000) {
            // An order with callbacks kept unverified (signed over a vendor
            // number nobody vouched for yet) is asked about at once.
            let new: Vec<Claimed> = diesel::sql_query(
                "INSERT INTO orders (vendor, order_id, created_at, updated_at) \
                 SELECT $1, k.oid, $2, $2 FROM unnest($3::text[]) AS k(oid) \
                 ON CONFLICT (vendor, order_id) DO NOTHING RETURNING order_id",
            )
            .bind::<Text, _>(vendor.as_str())
            .bind::<Timestamptz, _>(now)
            .bind::<Array<Text>, _>(chunk)
            .load(conn)?;
            let new: Vec<String> = new.into_iter().map(|c| c.order_id).collect();
            // An order with callbacks kept unverified (signed over a vendor
            // number nobody vouched for yet) is asked about at once.
            if !new.is_empty() {
            diesel::sql_query(
                "INSERT INTO order_polls (vendor, order_id, next_check_at, tracked_at) \
                 SELECT $1, k.oid, CASE WHEN EXISTS (SELECT 1 FROM inbound_callbacks i \
                                                     WHERE i.order_id = k.oid AND i.vendor = $1 AND i.outcome = 'unverified' \
                                                       AND COALESCE(i.replay_outcome, 'unverified') = 'unverified') \
                                        THEN $3 ELSE $2 END, $3 \
                 FROM unnest($4::text[]) AS k(oid) \
                 ON CONFLICT (vendor, order_id) DO NOTHING",
            )
            .bind::<Text, _>(vendor.as_str())
            .bind::<Nullable<Timestamptz>, _>(next)
            .bind::<Timestamptz, _>(now)
            .bind::<Array<Text>, _>(&new)
            .execute(conn)?;
            }
            // Known ones whose tracking had expired are tracked again. Found
            // through the small partial index of expired orders, never by a
            // scan of the vendor's orders: statistics are stale while a long
            // list loads in one transaction, and such a plan made 200k ids
            // take minutes.
            let fresh: std::collections::HashSet<&str> = new.iter().map(String::as_str).collect();
            let known: Vec<&String> = chunk.iter().filter(|i| !fresh.contains(i.as_str())).collect();
            let expired: Vec<Claimed> = if known.is_empty() {
                Vec::new()
            } else {
                diesel::sql_query(
                    "SELECT order_id FROM order_polls \
                     WHERE vendor = $1 AND order_id = ANY($2) AND tracking_expired_at IS NOT NULL",
                )
                .bind::<Text, _>(vendor.as_str())
                .bind::<Array<Text>, _>(&known)
                .load(conn)?
            };
            if !expired.is_empty() {
                let expired: Vec<String> = expired.into_iter().map(|c| c.order_id).collect();
                diesel::sql_query(
                    "UPDATE order_polls p SET tracking_expired_at = NULL, tracked_at = $3, \
                            next_check_at = $3, quiet_polls = 0 \
                     FROM orders o \
                     WHERE o.vendor = p.vendor AND o.order_id = p.order_id AND NOT o.is_terminal \
                       AND p.vendor = $1 AND p.order_id = ANY($2)",
                )
                .bind::<Text, _>(vendor.as_str())
                .bind::<Array<Text>, _>(&expired)
                .bind::<Timestamptz, _>(now)
                .execute(conn)?;
            }
            created.extend(new);
            done += chunk.len();
            progress(done);
        }
        Ok(created)
    })
}

/// What `recheck` did with each order asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rechecked {
    /// Due now (the next pass asks, within every limit).
    pub due: Vec<String>,
    /// Terminal: never asked again.
    pub terminal: Vec<String>,
    /// Not tracked.
    pub unknown: Vec<String>,
}

/// Make tracked, non-terminal orders due now (an order whose tracking had
/// expired is tracked again); the ordinary pass then asks about them
/// within every limit, the per-order daily budget included.
pub fn recheck(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_ids: &[String],
    now: DateTime<Utc>,
) -> QueryResult<Rechecked> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        order_id: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        is_terminal: bool,
    }
    conn.transaction(|conn| {
        let mut out = Rechecked::default();
        for chunk in order_ids.chunks(1000) {
            let known: Vec<Row> = diesel::sql_query(
                "SELECT order_id, is_terminal FROM orders WHERE vendor = $1 AND order_id = ANY($2)",
            )
            .bind::<Text, _>(vendor.as_str())
            .bind::<Array<Text>, _>(chunk)
            .load(conn)?;
            let known: std::collections::HashMap<String, bool> = known
                .into_iter()
                .map(|r| (r.order_id, r.is_terminal))
                .collect();
            let mut due = Vec::new();
            for id in chunk {
                match known.get(id) {
                    Some(true) => out.terminal.push(id.clone()),
                    Some(false) => due.push(id.clone()),
                    None => out.unknown.push(id.clone()),
                }
            }
            diesel::sql_query(
                "UPDATE order_polls SET next_check_at = $3, tracking_expired_at = NULL \
                 WHERE vendor = $1 AND order_id = ANY($2)",
            )
            .bind::<Text, _>(vendor.as_str())
            .bind::<Array<Text>, _>(&due)
            .bind::<Timestamptz, _>(now)
            .execute(conn)?;
            out.due.extend(due);
        }
        Ok(out)
    })
}

/// A known order's next check, for telling a person about orders that were
/// already tracked.
#[derive(Debug, Clone, QueryableByName)]
pub struct Known {
    #[diesel(sql_type = Text)]
    pub order_id: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub next_check_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    pub status: String,
}

/// The next checks of up to `limit` of these orders.
pub fn next_checks(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_ids: &[String],
    limit: i64,
) -> QueryResult<Vec<Known>> {
    diesel::sql_query(
        "SELECT o.order_id, p.next_check_at, o.status FROM orders o \
         LEFT JOIN order_polls p ON p.vendor = o.vendor AND p.order_id = o.order_id \
         WHERE o.vendor = $1 AND o.order_id = ANY($2) ORDER BY o.order_id LIMIT $3",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Array<Text>, _>(order_ids)
    .bind::<BigInt, _>(limit)
    .load(conn)
}

/// Where one tracked order stands with the poller, from the
/// `order_poll_state` view (the reason is worded there, once).
#[derive(Debug, Clone, QueryableByName)]
pub struct PollState {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub next_check_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Integer)]
    pub quiet_polls: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_poll_outcome: Option<String>,
    #[diesel(sql_type = Integer)]
    pub calls_today: i32,
    #[diesel(sql_type = Timestamptz)]
    pub tracked_at: DateTime<Utc>,
}

pub fn poll_state(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
) -> QueryResult<Option<PollState>> {
    diesel::sql_query(
        "SELECT next_check_at, reason, quiet_polls, last_poll_outcome, calls_today, tracked_at \
         FROM order_poll_state WHERE vendor = $1 AND order_id = $2",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Text, _>(order_id)
    .get_result(conn)
    .optional()
}

/// The active pause of a vendor, if any: (until, reason).
pub fn active_pause(
    conn: &mut PgConnection,
    vendor: Vendor,
    now: DateTime<Utc>,
) -> QueryResult<Option<(DateTime<Utc>, String)>> {
    vendor_pauses::table
        .find(vendor.as_str())
        .filter(vendor_pauses::paused_until.gt(now))
        .select((vendor_pauses::paused_until, vendor_pauses::reason))
        .first(conn)
        .optional()
}

/// Remove a pause that has run out; returns its reason (to log "resumed" once).
pub fn clear_expired_pause(
    conn: &mut PgConnection,
    vendor: Vendor,
    now: DateTime<Utc>,
) -> QueryResult<Option<String>> {
    diesel::delete(
        vendor_pauses::table
            .filter(vendor_pauses::vendor.eq(vendor.as_str()))
            .filter(vendor_pauses::paused_until.le(now)),
    )
    .returning(vendor_pauses::reason)
    .get_result(conn)
    .optional()
}

/// Pause a vendor until `until`. Returns true when it was not already
/// paused (so the caller logs it once).
pub fn pause(
    conn: &mut PgConnection,
    vendor: Vendor,
    until: DateTime<Utc>,
    reason: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    conn.transaction(|conn| {
        let was_active = active_pause(conn, vendor, now)?.is_some();
        diesel::insert_into(vendor_pauses::table)
            .values((
                vendor_pauses::vendor.eq(vendor.as_str()),
                vendor_pauses::paused_until.eq(until),
                vendor_pauses::reason.eq(reason),
                vendor_pauses::paused_at.eq(now),
            ))
            .on_conflict(vendor_pauses::vendor)
            .do_update()
            .set((
                vendor_pauses::paused_until.eq(until),
                vendor_pauses::reason.eq(reason),
            ))
            .execute(conn)?;
        Ok(!was_active)
    })
}

/// Stop polling due orders silent since before `cutoff`; they are listed in
/// the `expired_orders` view. Returns how many stopped.
///
/// Only orders that are due are looked at, so a pass costs O(due), not
/// O(tracked): an order silent past the horizon comes due within the longest
/// re-check interval and is stopped then, before it is ever queried.
pub fn expire_silent(
    conn: &mut PgConnection,
    vendor: Vendor,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(EXPIRE_SILENT_SQL)
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(cutoff)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
}

/// `expire_silent` ($1 vendor, $2 cutoff, $3 now): silent since before the
/// cutoff is `GREATEST(last_heard_at, tracked_at) < $2`, split so that
/// `order_polls` alone narrows the due orders (`order_polls_due_idx` from
/// the start, then `tracked_at`) and `orders` is read only for those left,
/// one `orders_pkey` lookup each. The lookup is an expression subquery,
/// which the planner never turns into a join: as a join (or an `EXISTS`
/// semi-join) it could trade the lookups for a scan of the vendor's orders,
/// and did, at 100k orders. An order without its `orders` row is left alone,
/// as the join did.
pub const EXPIRE_SILENT_SQL: &str =
    "UPDATE order_polls p SET next_check_at = NULL, tracking_expired_at = $3 \
     WHERE p.vendor = $1 AND p.next_check_at <= $3 AND p.tracked_at < $2 \
       AND (SELECT o.last_heard_at IS NULL OR o.last_heard_at < $2 FROM orders o \
            WHERE o.vendor = p.vendor AND o.order_id = p.order_id)";

/// Orders due now.
pub fn count_due(conn: &mut PgConnection, vendor: Vendor, now: DateTime<Utc>) -> QueryResult<i64> {
    let r: Count = diesel::sql_query(COUNT_DUE_SQL)
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(now)
        .get_result(conn)?;
    Ok(r.n)
}

/// `count_due` ($1 vendor, $2 now).
pub const COUNT_DUE_SQL: &str =
    "SELECT count(*) AS n FROM order_polls WHERE vendor = $1 AND next_check_at <= $2";

/// Due orders that already used today's per-order budget wait for the next
/// China-time day. Returns how many were deferred.
pub fn defer_exhausted(
    conn: &mut PgConnection,
    vendor: Vendor,
    now: DateTime<Utc>,
    today: NaiveDate,
    max_per_day: i32,
    tomorrow: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(DEFER_EXHAUSTED_SQL)
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(now)
        .bind::<Date, _>(today)
        .bind::<Integer, _>(max_per_day)
        .bind::<Timestamptz, _>(tomorrow)
        .execute(conn)
}

/// `defer_exhausted` ($1 vendor, $2 now, $3 China day, $4 per-order daily
/// budget, $5 next China midnight).
pub const DEFER_EXHAUSTED_SQL: &str = "UPDATE order_polls SET next_check_at = $5 \
     WHERE vendor = $1 AND next_check_at <= $2 AND calls_day = $3 AND calls_today >= $4";

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    order_id: String,
}

/// Lease up to `limit` due orders for `owner`, oldest due first. Rows leased
/// or locked by another process are skipped, never waited for.
#[allow(clippy::too_many_arguments)]
pub fn claim_due(
    conn: &mut PgConnection,
    vendor: Vendor,
    now: DateTime<Utc>,
    limit: i64,
    owner: &str,
    lease: Duration,
    today: NaiveDate,
    max_per_day: i32,
) -> QueryResult<Vec<String>> {
    let lease_until =
        now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5));
    let rows: Vec<Claimed> = diesel::sql_query(CLAIM_DUE_SQL)
        .bind::<Text, _>(vendor.as_str())
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(owner)
        .bind::<Timestamptz, _>(lease_until)
        .bind::<Date, _>(today)
        .bind::<Integer, _>(max_per_day)
        .bind::<BigInt, _>(limit)
        .load(conn)?;
    Ok(rows.into_iter().map(|r| r.order_id).collect())
}

/// `claim_due` ($1 vendor, $2 now, $3 owner, $4 lease until, $5 China day,
/// $6 per-order daily budget, $7 limit): walks `order_polls_due_idx` in
/// `next_check_at` order and stops after `limit` rows; a terminal order is
/// never claimed, whatever its schedule says.
pub const CLAIM_DUE_SQL: &str = "UPDATE order_polls p SET lease_owner = $3, lease_until = $4 \
     FROM (SELECT d.vendor, d.order_id FROM order_polls d \
           JOIN orders o ON o.vendor = d.vendor AND o.order_id = d.order_id \
           WHERE d.vendor = $1 AND d.next_check_at <= $2 AND NOT o.is_terminal \
             AND (d.lease_until IS NULL OR d.lease_until < $2) \
             AND (d.calls_day IS DISTINCT FROM $5 OR d.calls_today < $6) \
           ORDER BY d.next_check_at \
           LIMIT $7 \
           FOR UPDATE OF d SKIP LOCKED) due \
     WHERE p.vendor = due.vendor AND p.order_id = due.order_id \
     RETURNING p.order_id";

/// What the start of a pass found.
#[derive(Debug)]
pub enum PassStart {
    /// Polling of the vendor is paused until then.
    Paused(DateTime<Utc>),
    Work(PassWork),
}

#[derive(Debug, Default)]
pub struct PassWork {
    /// The reason of a pause that ran out and was lifted (log "resumed").
    pub resumed: Option<String>,
    /// Orders that stopped being tracked (silent past the horizon).
    pub expired: usize,
    pub due: i64,
    /// Due orders out of today's per-order budget, moved to the next day.
    pub deferred: usize,
    /// Orders leased to this pass, oldest due first.
    pub claimed: Vec<String>,
}

/// How many due orders a pass may claim: data from the vendor's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimLimit {
    /// Orders per call.
    pub per_call: usize,
    /// Calls one pass makes at most.
    pub per_pass: Option<i64>,
    /// `(calls, window)`: claim only what the deployment-wide budget has
    /// left in the window now (for a pass that does not wait for slots).
    pub window: Option<(i64, Duration)>,
    /// Calls per order per China-time day.
    pub per_order_per_day: Option<i32>,
}

/// How a pass starts, in one place for every vendor: lift a pause that ran
/// out, stop if paused, stop tracking silent orders, count what is due, defer
/// orders out of daily budget, and lease as many due orders as `limit` lets
/// the pass ask about. Every statement costs O(due), whatever the number of
/// orders tracked.
pub fn start_pass(
    conn: &mut PgConnection,
    vendor: Vendor,
    now: DateTime<Utc>,
    schedule: &Schedule,
    limit: &ClaimLimit,
    owner: &str,
    lease: Duration,
) -> QueryResult<PassStart> {
    let today = china_day(now);
    let resumed = clear_expired_pause(conn, vendor, now)?;
    if let Some((until, _)) = active_pause(conn, vendor, now)? {
        return Ok(PassStart::Paused(until));
    }
    let expired = expire_silent(conn, vendor, schedule.horizon_cutoff(now), now)?;
    let due = count_due(conn, vendor, now)?;
    let per_day = limit.per_order_per_day.unwrap_or(i32::MAX);
    let deferred = defer_exhausted(
        conn,
        vendor,
        now,
        today,
        per_day,
        schedule.after_daily_budget(now),
    )?;
    let mut calls = limit.per_pass.unwrap_or(i64::MAX);
    if let Some((per_window, window)) = limit.window {
        calls = calls.min(per_window - recent_calls(conn, vendor, window)?);
    }
    let orders = calls
        .max(0)
        .saturating_mul(i64::try_from(limit.per_call.max(1)).unwrap_or(1));
    let claimed = if orders > 0 {
        claim_due(conn, vendor, now, orders, owner, lease, today, per_day)?
    } else {
        Vec::new()
    };
    Ok(PassStart::Work(PassWork {
        resumed,
        expired,
        due,
        deferred,
        claimed,
    }))
}

/// Give leased orders back without touching their schedule.
pub fn release(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_ids: &[String],
    owner: &str,
) -> QueryResult<usize> {
    diesel::update(
        order_polls::table
            .filter(order_polls::vendor.eq(vendor.as_str()))
            .filter(order_polls::order_id.eq_any(order_ids))
            .filter(order_polls::lease_owner.eq(owner)),
    )
    .set((
        order_polls::lease_owner.eq(None::<String>),
        order_polls::lease_until.eq(None::<DateTime<Utc>>),
    ))
    .execute(conn)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Calls made by the whole deployment within the budget window.
pub fn recent_calls(conn: &mut PgConnection, vendor: Vendor, window: Duration) -> QueryResult<i64> {
    let r: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM vendor_calls \
         WHERE vendor = $1 AND called_at > clock_timestamp() - make_interval(secs => $2)",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<diesel::sql_types::Double, _>(window.as_secs_f64())
    .get_result(conn)?;
    Ok(r.n)
}

/// A call slot to spend now.
pub struct CallBudget<'a> {
    pub vendor: Vendor,
    pub api: &'a str,
    pub per_window: i64,
    pub window: Duration,
    /// The process asking: it must still hold the orders' leases.
    pub caller: &'a str,
    /// How long the leases last from the moment the call is reserved.
    pub lease: Duration,
}

/// What `reserve_call` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The call is reserved (its `vendor_calls` id) and the orders' leases
    /// run a full `POLL_LEASE` from now.
    Call(i64),
    /// The deployment-wide budget is spent for now.
    BudgetSpent,
    /// Some order is no longer leased to this caller: its lease ran out while
    /// the call waited its turn in the pass, and another process claimed it.
    LeaseLost,
}

/// Reserve one call for `order_ids` if the deployment-wide budget allows
/// and the caller still holds every order's lease: count the window and
/// insert the call row under one advisory lock per vendor, so concurrent
/// processes cannot both take the last slot. The leases are renewed for a
/// full `budget.lease` from now, so that a call waiting its turn in a long
/// pass starts with the whole lease, and an order whose lease ran out and
/// was claimed by another process is never asked about by both. Also counts
/// the call against each order's daily budget.
pub fn reserve_call(
    conn: &mut PgConnection,
    budget: &CallBudget<'_>,
    order_ids: &[String],
    today: NaiveDate,
) -> QueryResult<Reservation> {
    conn.transaction(|conn| {
        super::lock_vendor(conn, 7217200100, budget.vendor)?;
        if recent_calls(conn, budget.vendor, budget.window)? >= budget.per_window {
            return Ok(Reservation::BudgetSpent);
        }
        // A claim takes an order only once its lease has run out, and makes
        // the claimer its owner; while the owner is still us, nobody else
        // has it, and from here on nobody can take it until the renewed
        // lease runs out.
        let held = diesel::sql_query(
            "UPDATE order_polls SET lease_until = clock_timestamp() + make_interval(secs => $4) \
             WHERE vendor = $1 AND order_id = ANY($2) AND lease_owner = $3",
        )
        .bind::<Text, _>(budget.vendor.as_str())
        .bind::<Array<Text>, _>(order_ids)
        .bind::<Text, _>(budget.caller)
        .bind::<diesel::sql_types::Double, _>(budget.lease.as_secs_f64())
        .execute(conn)?;
        if held < order_ids.len() {
            return Ok(Reservation::LeaseLost);
        }
        let id: i64 = diesel::insert_into(vendor_calls::table)
            .values((
                vendor_calls::vendor.eq(budget.vendor.as_str()),
                vendor_calls::api.eq(budget.api),
                vendor_calls::order_ids.eq(order_ids
                    .iter()
                    .map(|s| Some(s.as_str()))
                    .collect::<Vec<_>>()),
                vendor_calls::caller.eq(budget.caller),
            ))
            .returning(vendor_calls::id)
            .get_result(conn)?;
        count_order_calls(conn, budget.vendor, order_ids, today)?;
        Ok(Reservation::Call(id))
    })
}

/// Count one call against each order's budget for `today` (China time).
pub fn count_order_calls(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_ids: &[String],
    today: NaiveDate,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE order_polls SET calls_today = CASE WHEN calls_day = $3 THEN calls_today + 1 ELSE 1 END, \
                           calls_day = $3 \
         WHERE vendor = $1 AND order_id = ANY($2)",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Array<Text>, _>(order_ids)
    .bind::<Date, _>(today)
    .execute(conn)
}

/// Record how a reserved call went.
pub fn finish_call(
    conn: &mut PgConnection,
    call_id: i64,
    outcome: &str,
    http_status: Option<i32>,
    duration: Duration,
    error: Option<&str>,
    cost: Option<i64>,
) -> QueryResult<usize> {
    diesel::update(vendor_calls::table.filter(vendor_calls::id.eq(call_id)))
        .set((
            vendor_calls::outcome.eq(outcome),
            vendor_calls::http_status.eq(http_status),
            vendor_calls::duration_ms.eq(i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)),
            vendor_calls::error.eq(error),
            vendor_calls::cost.eq(cost),
        ))
        .execute(conn)
}

/// What a poll of one order found.
pub enum PollResult<'a> {
    Observed(&'a Observation),
    /// No observation: `outcome` as in `vendor_calls.outcome`.
    Failed {
        outcome: &'a str,
    },
}

/// What recording a poll did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// What the observation did, if there was one.
    pub applied: Option<Applied>,
    /// The stored requests judged again after the answer, in order.
    pub replayed: Vec<Receipt>,
    /// Callbacks that awaited the vendor's word and were settled by it.
    pub settled: Vec<Settled>,
}

/// A callback settled by a query answer (`callback_confirmations`).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Settled {
    /// `terminal` or `vendor_order_no`.
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Text)]
    pub request_id: String,
    #[diesel(sql_type = Text)]
    pub claimed_status: String,
    /// `confirmed` / `refuted` (terminal), `verified` / `rejected` (vendor
    /// order number).
    #[diesel(sql_type = Text)]
    pub result: String,
}

/// Apply a poll result and release the lease, in one transaction. An
/// observation goes through the same merge as callbacks (source `poll`); a
/// failure backs the order off.
///
/// After an answer, `replays` (stored requests of this order that were
/// signed over a vendor number we did not hold, judged again by the caller)
/// go through the same commit as arriving callbacks, now that the answer
/// may have taught the number; then every callback of the order that awaited
/// the vendor's word since before `asked_at` is settled by the answer. One
/// that arrived while the question was out waits for the next, which is due
/// at once when it was expedited.
#[allow(clippy::too_many_arguments)]
pub fn record_poll(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
    owner: &str,
    result: PollResult<'_>,
    schedule: &Schedule,
    now: DateTime<Utc>,
    asked_at: DateTime<Utc>,
    replays: &[InboundRequest],
) -> QueryResult<Recorded> {
    conn.transaction(|conn| {
        let mut recorded = Recorded::default();
        let outcome = match result {
            PollResult::Observed(obs) => {
                recorded.applied = Some(apply_observation(conn, obs, None, now, schedule)?);
                // The time the answer scheduled the order from (a reschedule
                // decides again from it).
                diesel::update(order_polls::table.find((vendor.as_str(), order_id)))
                    .set(order_polls::last_polled_at.eq(now))
                    .execute(conn)?;
                if !replays.is_empty() {
                    recorded.replayed = ingest::commit(conn, replays, schedule)?;
                }
                recorded.settled =
                    settle_confirmations(conn, vendor, order_id, obs, asked_at, now)?;
                "ok"
            }
            PollResult::Failed { outcome } => {
                let status: String = orders::table
                    .find((vendor.as_str(), order_id))
                    .select(orders::status)
                    .for_update()
                    .first(conn)?;
                let quiet: i32 = order_polls::table
                    .find((vendor.as_str(), order_id))
                    .select(order_polls::quiet_polls)
                    .first(conn)?;
                let status: Status = status.parse().unwrap_or(Status::Unknown);
                let held = NextCheck {
                    at: None,
                    quiet_polls: quiet,
                };
                let next =
                    schedule.next_check(vendor, order_id, Event::PollQuiet { status }, held, now);
                diesel::update(order_polls::table.find((vendor.as_str(), order_id)))
                    .set((
                        order_polls::next_check_at.eq(next.at),
                        order_polls::quiet_polls.eq(next.quiet_polls),
                        order_polls::last_polled_at.eq(now),
                    ))
                    .execute(conn)?;
                outcome
            }
        };
        diesel::update(
            order_polls::table
                .find((vendor.as_str(), order_id))
                .filter(order_polls::lease_owner.eq(owner)),
        )
        .set((
            order_polls::last_poll_outcome.eq(outcome),
            order_polls::lease_owner.eq(None::<String>),
            order_polls::lease_until.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)?;
        Ok(recorded)
    })
}

/// Settle the callbacks of an order that awaited the vendor's word, by its
/// answer `obs` to a question asked at `asked_at`: a held terminal claim is
/// confirmed when the vendor answers that status (the answer itself made the
/// order terminal) and refuted otherwise; an unverified vendor number is
/// verified when it is the one the order now holds (whenever it came: the
/// number does not change). A terminal claim that came while the question
/// was out waits for the next answer (and keeps the order due when it was
/// expedited), unless this answer made the order terminal: a terminal order
/// is never asked again, and its status is final.
fn settle_confirmations(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
    obs: &Observation,
    asked_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<Vec<Settled>> {
    let settled: Vec<Settled> = diesel::sql_query(
        "UPDATE callback_confirmations c SET resolved_at = $3, vendor_status = $4, \
           result = CASE WHEN c.reason = 'terminal' \
                         THEN CASE WHEN c.claimed_status = $5 THEN 'confirmed' ELSE 'refuted' END \
                         ELSE CASE WHEN c.claimed_vendor_order_no = o.vendor_order_no THEN 'verified' ELSE 'rejected' END END \
         FROM orders o \
         WHERE o.vendor = c.vendor AND o.order_id = c.order_id \
           AND c.vendor = $1 AND c.order_id = $2 AND c.resolved_at IS NULL \
           AND CASE WHEN c.reason = 'terminal' THEN c.requested_at <= $6 OR o.is_terminal \
                    ELSE o.vendor_order_no IS NOT NULL END \
         RETURNING c.reason, c.request_id, c.claimed_status, c.result",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Text, _>(order_id)
    .bind::<Timestamptz, _>(now)
    .bind::<Nullable<Text>, _>(obs.vendor_status.as_deref())
    .bind::<Text, _>(obs.status.as_str())
    .bind::<Timestamptz, _>(asked_at)
    .load(conn)?;
    diesel::sql_query(
        "UPDATE order_polls p SET next_check_at = $3 FROM orders o \
         WHERE o.vendor = p.vendor AND o.order_id = p.order_id \
           AND p.vendor = $1 AND p.order_id = $2 AND NOT o.is_terminal AND EXISTS ( \
           SELECT 1 FROM callback_confirmations c \
           WHERE c.vendor = $1 AND c.order_id = $2 AND c.resolved_at IS NULL AND c.expedited)",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Text, _>(order_id)
    .bind::<Timestamptz, _>(now)
    .execute(conn)?;
    Ok(settled)
}
