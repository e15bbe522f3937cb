//! SQL for applying new schedule settings to the orders already scheduled
//! (`rules::reschedule` holds the rule): `schedule_settings` records, per
//! vendor, the settings its tracked orders' next checks follow; when a
//! starting process's settings differ, it walks every tracked order in
//! `order_id` order, a chunk per transaction that commits the cursor with
//! the orders it moved (a run that dies is resumed where it stopped), under
//! a lease on the vendor's row so that one process walks at a time, and
//! records its settings in the transaction of the last chunk: once per
//! change.
//!
//! Never touches a terminal or expired order (no next check), an order due
//! now (its answer schedules it), or one leased to a pass (the same), and
//! never a column but `next_check_at`: quiet counts, leases, budgets and
//! pauses stay as they are.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamptz};

use crate::rules::reschedule::{Heard, ScheduleSettings};
use crate::rules::schedule::Schedule;
use crate::rules::status::{Source, Status};
use crate::vendors::Vendor;

/// Tracked orders one chunk walks (and at most updates) in one
/// transaction; their row locks last that long.
pub const RESCHEDULE_CHUNK: i64 = 5000;

/// How long the walk of a process that stopped answering blocks the others;
/// renewed with every chunk (a chunk takes well under a second).
pub const RESCHEDULE_LEASE: Duration = Duration::from_secs(120);

/// A next check that moves by less than this is left alone: the stored
/// times are microseconds, the rule's nanoseconds.
const SAME_TIME: chrono::Duration = chrono::Duration::seconds(1);

/// What a starting process finds for one vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The orders already follow these settings.
    UpToDate,
    /// Nothing was recorded yet (a new database, or the first start of a
    /// build that records them): these settings are recorded as the ones
    /// the orders follow, and nothing moves.
    Recorded,
    /// Another process holds the walk until `until`, moving the orders to
    /// `to`.
    Busy {
        owner: String,
        until: DateTime<Utc>,
        to: Option<ScheduleSettings>,
    },
    /// This process walks now: call `reschedule_chunk` until it is done.
    Reschedule(Plan),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The settings recorded so far (`None`: unreadable).
    pub from: Option<ScheduleSettings>,
    /// Another process's walk to other settings, left unfinished: some
    /// orders follow those.
    pub unfinished: Option<ScheduleSettings>,
    /// Tracked orders (with a next check) of the vendor, to walk.
    pub tracked: i64,
    /// Continuing a walk to the same settings that stopped: its cursor and
    /// what it had done.
    pub resumed: Option<Resumed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    pub after: String,
    pub walked: i64,
    pub moved: i64,
}

#[derive(QueryableByName)]
struct SettingsRow {
    #[diesel(sql_type = Jsonb)]
    settings: serde_json::Value,
    #[diesel(sql_type = Nullable<Jsonb>)]
    rescheduling_to: Option<serde_json::Value>,
    #[diesel(sql_type = Nullable<Text>)]
    resume_after: Option<String>,
    #[diesel(sql_type = BigInt)]
    walked: i64,
    #[diesel(sql_type = BigInt)]
    moved: i64,
    #[diesel(sql_type = Nullable<Text>)]
    lease_owner: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lease_until: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn json(s: &ScheduleSettings) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

fn read(v: &serde_json::Value) -> Option<ScheduleSettings> {
    serde_json::from_value(v.clone()).ok()
}

/// The settings `vendor`'s orders follow, as recorded (`None` before the
/// first start records them).
pub fn recorded(conn: &mut PgConnection, vendor: Vendor) -> QueryResult<Option<ScheduleSettings>> {
    let row: Option<SettingsRow> = diesel::sql_query(
        "SELECT settings, rescheduling_to, resume_after, walked, moved, lease_owner, lease_until \
         FROM schedule_settings WHERE vendor = $1",
    )
    .bind::<Text, _>(vendor.as_str())
    .get_result(conn)
    .optional()?;
    Ok(row.and_then(|r| read(&r.settings)))
}

/// Compare `settings` (this process's) with what `vendor`'s orders follow,
/// and take the walk when they differ and nobody else holds it (or its
/// holder's lease ran out). One short transaction on the vendor's row.
pub fn begin(
    conn: &mut PgConnection,
    vendor: Vendor,
    settings: &ScheduleSettings,
    owner: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> QueryResult<Begin> {
    conn.transaction(|conn| {
        let inserted = diesel::sql_query(
            "INSERT INTO schedule_settings (vendor, settings, recorded_at) VALUES ($1, $2, $3) \
             ON CONFLICT (vendor) DO NOTHING",
        )
        .bind::<Text, _>(vendor.as_str())
        .bind::<Jsonb, _>(json(settings))
        .bind::<Timestamptz, _>(now)
        .execute(conn)?;
        if inserted == 1 {
            return Ok(Begin::Recorded);
        }
        let row: SettingsRow = diesel::sql_query(
            "SELECT settings, rescheduling_to, resume_after, walked, moved, lease_owner, lease_until \
             FROM schedule_settings WHERE vendor = $1 FOR UPDATE",
        )
        .bind::<Text, _>(vendor.as_str())
        .get_result(conn)?;
        let from = read(&row.settings);
        let target = row.rescheduling_to.as_ref().map(read);
        if target.is_none() && from.as_ref() == Some(settings) {
            return Ok(Begin::UpToDate);
        }
        if let (Some(holder), Some(until)) = (&row.lease_owner, row.lease_until) {
            if until > now && holder != owner {
                return Ok(Begin::Busy {
                    owner: holder.clone(),
                    until,
                    to: target.flatten(),
                });
            }
        }
        let target = target.flatten();
        let resumed = (target.as_ref() == Some(settings)).then(|| Resumed {
            after: row.resume_after.clone().unwrap_or_default(),
            walked: row.walked,
            moved: row.moved,
        });
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        diesel::sql_query(
            "UPDATE schedule_settings SET rescheduling_to = $2, lease_owner = $3, lease_until = $4, \
               resume_after = CASE WHEN $5 THEN resume_after END, \
               walked = CASE WHEN $5 THEN walked ELSE 0 END, \
               moved = CASE WHEN $5 THEN moved ELSE 0 END, \
               reschedule_started_at = CASE WHEN $5 THEN reschedule_started_at ELSE $6 END \
             WHERE vendor = $1",
        )
        .bind::<Text, _>(vendor.as_str())
        .bind::<Jsonb, _>(json(settings))
        .bind::<Text, _>(owner)
        .bind::<Timestamptz, _>(lease_until)
        .bind::<diesel::sql_types::Bool, _>(resumed.is_some())
        .bind::<Timestamptz, _>(now)
        .execute(conn)?;
        let tracked: Count = diesel::sql_query(TRACKED_SQL)
            .bind::<Text, _>(vendor.as_str())
            .get_result(conn)?;
        Ok(Begin::Reschedule(Plan {
            unfinished: target.filter(|t| t != settings),
            from,
            tracked: tracked.n,
            resumed,
        }))
    })
}

/// Tracked orders of $1 (a next check set): an index-only walk of
/// `order_polls_due_idx`.
pub const TRACKED_SQL: &str =
    "SELECT count(*) AS n FROM order_polls WHERE vendor = $1 AND next_check_at IS NOT NULL";

/// The next $3 tracked orders of $1 after order $2, locked in key order
/// (ingest batches lock theirs in the same order), with what their schedule
/// was decided from.
pub const WALK_SQL: &str = "SELECT p.order_id, p.next_check_at, p.quiet_polls, p.lease_until, \
            p.tracked_at, p.last_polled_at, o.status, o.is_terminal, o.last_heard_at, o.last_source \
     FROM order_polls p JOIN orders o ON o.vendor = p.vendor AND o.order_id = p.order_id \
     WHERE p.vendor = $1 AND p.order_id > $2 AND p.next_check_at IS NOT NULL \
     ORDER BY p.order_id LIMIT $3 FOR UPDATE OF p";

/// The new next checks ($2 orders, $3 times) of vendor $1.
pub const MOVE_SQL: &str = "UPDATE order_polls p SET next_check_at = m.at \
     FROM unnest($2::text[], $3::timestamptz[]) AS m(order_id, at) \
     WHERE p.vendor = $1 AND p.order_id = m.order_id";

#[derive(QueryableByName)]
struct Walked {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_check_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Integer)]
    quiet_polls: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lease_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    tracked_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_polled_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    is_terminal: bool,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_heard_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    last_source: Option<String>,
}

impl Walked {
    /// The order's new next check, when it moves.
    fn moved(
        &self,
        vendor: Vendor,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let held = self.next_check_at?;
        if self.is_terminal || held <= now || self.lease_until.is_some_and(|l| l > now) {
            return None;
        }
        let source = match self.last_source.as_deref() {
            Some("poll") => Source::Poll,
            Some("manual") => Source::Manual,
            _ => Source::Callback,
        };
        let heard = Heard {
            status: self.status.parse().unwrap_or(Status::Unknown),
            quiet_polls: self.quiet_polls,
            last_heard: self.last_heard_at.map(|t| (t, source)),
            tracked_at: self.tracked_at,
            last_polled_at: self.last_polled_at,
        };
        let at = schedule.rescheduled(vendor, &self.order_id, &heard).at?;
        ((at - held).abs() >= SAME_TIME).then_some(at)
    }
}

/// What one chunk of a walk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Tracked orders looked at.
    pub walked: usize,
    /// Of those, the ones whose next check changed.
    pub moved: usize,
    /// Of those, the ones now due.
    pub due_now: usize,
    /// The walk is complete and the settings recorded.
    pub done: bool,
}

/// One chunk of this process's walk: the next `chunk` tracked orders after
/// the cursor get their next check under `schedule`; the cursor and the
/// lease move with them in the same transaction. The chunk that finds no
/// order left records the settings. `None` when the walk is no longer this
/// process's (its lease ran out and another took over).
pub fn reschedule_chunk(
    conn: &mut PgConnection,
    vendor: Vendor,
    schedule: &Schedule,
    owner: &str,
    lease: Duration,
    chunk: i64,
    now: DateTime<Utc>,
) -> QueryResult<Option<Chunk>> {
    let settings = schedule.settings(vendor);
    conn.transaction(|conn| {
        let row: Option<SettingsRow> = diesel::sql_query(
            "SELECT settings, rescheduling_to, resume_after, walked, moved, lease_owner, lease_until \
             FROM schedule_settings WHERE vendor = $1 AND lease_owner = $2 FOR UPDATE",
        )
        .bind::<Text, _>(vendor.as_str())
        .bind::<Text, _>(owner)
        .get_result(conn)
        .optional()?;
        let Some(row) = row.filter(|r| r.rescheduling_to.as_ref().and_then(read).as_ref() == Some(&settings)) else {
            return Ok(None);
        };
        let after = row.resume_after.unwrap_or_default();
        let rows: Vec<Walked> = diesel::sql_query(WALK_SQL)
            .bind::<Text, _>(vendor.as_str())
            .bind::<Text, _>(&after)
            .bind::<BigInt, _>(chunk.max(1))
            .load(conn)?;
        let (ids, ats): (Vec<&str>, Vec<DateTime<Utc>>) = rows
            .iter()
            .filter_map(|r| Some((r.order_id.as_str(), r.moved(vendor, schedule, now)?)))
            .unzip();
        if !ids.is_empty() {
            diesel::sql_query(MOVE_SQL)
                .bind::<Text, _>(vendor.as_str())
                .bind::<Array<Text>, _>(&ids)
                .bind::<Array<Timestamptz>, _>(&ats)
                .execute(conn)?;
        }
        let last = rows.last().map_or(after.clone(), |r| r.order_id.clone());
        // A locked row that changed meanwhile may drop out of the chunk, so
        // a short chunk does not prove the end: look past it.
        let done = (rows.len() as i64) < chunk.max(1) && !any_after(conn, vendor, &last)?;
        let done_chunk = Chunk {
            walked: rows.len(),
            moved: ids.len(),
            due_now: ats.iter().filter(|t| **t <= now).count(),
            done,
        };
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        diesel::sql_query(
            "UPDATE schedule_settings SET walked = walked + $2, moved = moved + $3, \
               resume_after = CASE WHEN $4 THEN NULL ELSE $5 END, \
               settings = CASE WHEN $4 THEN rescheduling_to ELSE settings END, \
               recorded_at = CASE WHEN $4 THEN $6 ELSE recorded_at END, \
               rescheduling_to = CASE WHEN $4 THEN NULL ELSE rescheduling_to END, \
               lease_owner = CASE WHEN $4 THEN NULL ELSE lease_owner END, \
               lease_until = CASE WHEN $4 THEN NULL ELSE $7 END \
             WHERE vendor = $1",
        )
        .bind::<Text, _>(vendor.as_str())
        .bind::<BigInt, _>(done_chunk.walked as i64)
        .bind::<BigInt, _>(done_chunk.moved as i64)
        .bind::<diesel::sql_types::Bool, _>(done)
        .bind::<Text, _>(&last)
        .bind::<Timestamptz, _>(now)
        .bind::<Timestamptz, _>(lease_until)
        .execute(conn)?;
        Ok(Some(done_chunk))
    })
}

fn any_after(conn: &mut PgConnection, vendor: Vendor, after: &str) -> QueryResult<bool> {
    let n: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM (SELECT 1 FROM order_polls \
         WHERE vendor = $1 AND order_id > $2 AND next_check_at IS NOT NULL LIMIT 1) s",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Text, _>(after)
    .get_result(conn)?;
    Ok(n.n > 0)
}
