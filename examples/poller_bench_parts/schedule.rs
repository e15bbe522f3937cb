//! `poller_bench schedule-cost`: what a schedule settings change and the
//! `status_dwell` refresh cost at one table size. Fills an empty, migrated
//! database with N 172 orders and their status history (70 % settled after
//! five status changes, the rest still pending, submitted or shipped), then
//!
//! - the reschedule after `HAOKA172_OVERDUE` changes: `store::schedule`'s
//!   walk over every tracked order, chunk by chunk as the service runs it
//!   (time per chunk, total, orders moved), the plan of one chunk's walk,
//!   and the cost of a start that finds the settings unchanged;
//! - the `status_dwell` refresh (`store::dwell::refresh`): its wall time
//!   and the full plan of the stays query.

use std::time::Instant;

use chrono::Utc;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};

use haoka_sync::store::dwell::{self as dstore, Refresh};
use haoka_sync::store::schedule::{self as sstore, Begin, RESCHEDULE_CHUNK, RESCHEDULE_LEASE};

use super::{partitions, schedule, PlanLine, Res, V};

pub fn schedule_cost(url: &str, orders: i64) -> Res<()> {
    let mut conn = PgConnection::establish(url)?;
    partitions(&mut conn)?;
    let fill_started = Instant::now();
    // Orders placed over the last 80 days (inside status_dwell's 90), each
    // moved through its statuses by callbacks: new for up to an hour, then
    // pending, submitted, shipped, completed and settled after spreads of
    // hours to weeks; the 30 % not settled stop at pending, shipped or
    // submitted. Times are a hash of the order number, so runs repeat.
    conn.batch_execute("SET synchronous_commit = off")?;
    diesel::sql_query(
        "CREATE TEMP TABLE plan AS \
         SELECT g, 'BP' || lpad(g::text, 9, '0') AS order_id, \
                now() - ((g * 7919) % (80 * 86400)) * interval '1 second' AS created, \
                CASE WHEN g % 10 < 7 THEN 5 WHEN g % 10 = 7 THEN 1 WHEN g % 10 = 8 THEN 3 ELSE 2 END AS steps \
         FROM generate_series(1, $1) g",
    )
    .bind::<BigInt, _>(orders)
    .execute(&mut conn)?;
    // (step, status, label, seconds after the previous step, as a spread).
    conn.batch_execute(
        "CREATE TEMP TABLE steps (k int, status text, label text, lo int, span int); \
         INSERT INTO steps VALUES \
           (1, 'pending', '待处理', 60, 3600), \
           (2, 'submitted', '已提运营商', 360, 4 * 3600), \
           (3, 'shipped', '已发货', 4 * 3600, 68 * 3600), \
           (4, 'completed', '已完成', 86400, 9 * 86400), \
           (5, 'settled', '已结算', 10 * 86400, 30 * 86400); \
         CREATE TEMP TABLE moves AS \
         SELECT p.g, p.order_id, s.k, s.status, s.label, \
                p.created + sum(s.lo + (p.g * (7 + s.k * 13)) % s.span) \
                  OVER (PARTITION BY p.g ORDER BY s.k) * interval '1 second' AS at \
         FROM plan p JOIN steps s ON s.k <= p.steps; \
         DELETE FROM moves WHERE at > now();",
    )?;
    conn.batch_execute(
        "INSERT INTO orders (vendor, order_id, status, vendor_status, last_source, last_heard_at, status_changed_at, created_at, updated_at) \
         SELECT 'haoka172', p.order_id, COALESCE(m.status, 'new'), m.label, CASE WHEN m.at IS NOT NULL THEN 'callback' END, \
                m.at, m.at, p.created, COALESCE(m.at, p.created) \
         FROM plan p LEFT JOIN (SELECT DISTINCT ON (g) g, status, label, at FROM moves ORDER BY g, k DESC) m ON m.g = p.g; \
         INSERT INTO order_events (vendor, order_id, source, status, vendor_status, applied, effect, request_id, observed, received_at) \
         SELECT 'haoka172', order_id, 'callback', status, label, true, 'advanced', 'R' || g || '-' || k, '{}', at FROM moves; \
         INSERT INTO order_polls (vendor, order_id, next_check_at, tracked_at) \
         SELECT o.vendor, o.order_id, \
                CASE WHEN o.is_terminal THEN NULL \
                     ELSE greatest(now() + interval '1 hour', COALESCE(o.last_heard_at, o.created_at) + interval '7 days') END, \
                o.created_at \
         FROM orders o;",
    )?;
    // The service relies on autovacuum for statistics; this machine may have
    // it off, so analyze explicitly (one statement each: not in a
    // transaction).
    for table in ["orders", "order_events", "order_polls"] {
        conn.batch_execute(&format!("VACUUM ANALYZE {table}"))?;
    }
    conn.batch_execute("SET synchronous_commit = on")?;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n = |conn: &mut PgConnection, sql: &str| -> Res<i64> {
        Ok(diesel::sql_query(sql).get_result::<N>(conn)?.n)
    };
    let events = n(&mut conn, "SELECT count(*) AS n FROM order_events")?;
    let tracked = n(
        &mut conn,
        "SELECT count(*) AS n FROM order_polls WHERE next_check_at IS NOT NULL",
    )?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    println!(
        "orders {orders}, {tracked} tracked, {events} status changes over 80 days; filled and analyzed in {fill_s:.1} s"
    );

    // The reschedule: the service recorded the defaults, then starts with
    // shipped=2d and pending=3h.
    let before = schedule("", "")?;
    let after = schedule("shipped=2d,pending=3h", "")?;
    let now = Utc::now();
    let recorded = sstore::begin(
        &mut conn,
        V,
        &before.settings(V),
        "bench",
        RESCHEDULE_LEASE,
        now,
    )?;
    assert_eq!(recorded, Begin::Recorded, "a fresh database");
    let walk_plan = {
        conn.batch_execute("BEGIN")?;
        let lines: Vec<PlanLine> =
            diesel::sql_query(format!("EXPLAIN (ANALYZE, BUFFERS) {}", sstore::WALK_SQL))
                .bind::<Text, _>(V.as_str())
                .bind::<Text, _>("")
                .bind::<BigInt, _>(RESCHEDULE_CHUNK)
                .load(&mut conn)?;
        conn.batch_execute("ROLLBACK")?;
        summary(&lines)
    };
    let started = Instant::now();
    let Begin::Reschedule(plan) = sstore::begin(
        &mut conn,
        V,
        &after.settings(V),
        "bench",
        RESCHEDULE_LEASE,
        now,
    )?
    else {
        return Err("a changed setting must start a walk".into());
    };
    let begin_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut chunk_ms = Vec::new();
    let (mut walked, mut moved, mut due) = (0, 0, 0);
    loop {
        let t = Instant::now();
        let c = sstore::reschedule_chunk(
            &mut conn,
            V,
            &after,
            "bench",
            RESCHEDULE_LEASE,
            RESCHEDULE_CHUNK,
            Utc::now(),
        )?
        .ok_or("the walk was taken over")?;
        chunk_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        walked += c.walked;
        moved += c.moved;
        due += c.due_now;
        if c.done {
            break;
        }
    }
    let reschedule_s = started.elapsed().as_secs_f64();
    let t = Instant::now();
    let again = sstore::begin(
        &mut conn,
        V,
        &after.settings(V),
        "bench2",
        RESCHEDULE_LEASE,
        Utc::now(),
    )?;
    let unchanged_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(again, Begin::UpToDate);
    let mut sorted = chunk_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let chunk_p50 = sorted[sorted.len() / 2];
    let chunk_max = sorted[sorted.len() - 1];
    println!(
        "  reschedule (shipped 7d → 2d, pending 6h → 3h): {walked} of {} tracked orders walked, {moved} moved ({due} due now), \
         {} chunks of {RESCHEDULE_CHUNK}: p50 {chunk_p50:.0} ms, max {chunk_max:.0} ms; {reschedule_s:.1} s in all (start {begin_ms:.0} ms); \
         a start with unchanged settings {unchanged_ms:.1} ms",
        plan.tracked,
        chunk_ms.len()
    );
    println!("  walk plan (one chunk): {walk_plan}");

    // The status_dwell refresh, as serve runs it daily; then its query's
    // plan.
    let t = Instant::now();
    let done = dstore::refresh(&mut conn, Utc::now(), true)?;
    let dwell_s = t.elapsed().as_secs_f64();
    let Refresh::Done {
        stays,
        open,
        groups,
        since,
    } = done
    else {
        return Err(format!("refresh: {done:?}").into());
    };
    println!(
        "  status_dwell refresh: {stays} stays ({open} open) read as {groups} groups in {dwell_s:.1} s"
    );
    let statuses: Vec<&str> = haoka_sync::rules::schedule::StatusDurations::KEYS
        .iter()
        .map(|s| s.as_str())
        .collect();
    conn.batch_execute("BEGIN; SET LOCAL work_mem = '64MB'")?;
    let lines: Vec<PlanLine> =
        diesel::sql_query(format!("EXPLAIN (ANALYZE, BUFFERS) {}", dstore::STAYS_SQL))
            .bind::<Timestamptz, _>(since)
            .bind::<Timestamptz, _>(Utc::now())
            .bind::<Array<Text>, _>(&statuses)
            .load(&mut conn)?;
    conn.batch_execute("ROLLBACK")?;
    println!("  status_dwell stays query plan:");
    for l in &lines {
        println!("    {}", l.line);
    }
    println!(
        "  status_dwell p50 / p90: pending {}, submitted {}, shipped {}",
        quantiles(&mut conn, "pending")?,
        quantiles(&mut conn, "submitted")?,
        quantiles(&mut conn, "shipped")?
    );
    println!(
        "SCHEDULE orders={orders} tracked={tracked} events={events} fill_s={fill_s:.0} reschedule_s={reschedule_s:.1} walked={walked} \
         moved={moved} due_now={due} chunks={} chunk_p50_ms={chunk_p50:.0} chunk_max_ms={chunk_max:.0} unchanged_ms={unchanged_ms:.1} \
         dwell_s={dwell_s:.1} dwell_stays={stays} dwell_groups={groups} walk_plan={}",
        chunk_ms.len(),
        walk_plan.replace(' ', "_")
    );
    Ok(())
}

/// `p50 / p90` of a 172 status, as `status_dwell` shows them.
fn quantiles(conn: &mut PgConnection, status: &str) -> Res<String> {
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        p: Option<String>,
    }
    let p: P = diesel::sql_query(
        "SELECT COALESCE(p50::text, '-') || ' / ' || COALESCE(p90::text, '-') AS p \
         FROM status_dwell WHERE vendor = 'haoka172' AND status = $1",
    )
    .bind::<Text, _>(status)
    .get_result(conn)?;
    Ok(p.p.unwrap_or_else(|| "-".into()))
}

/// The access paths of a plan, in one line.
fn summary(lines: &[PlanLine]) -> String {
    let paths: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let l = l.line.trim_start_matches([' ', '-', '>']);
            (l.contains("Scan") || l.starts_with("LockRows") || l.starts_with("Nested Loop"))
                .then(|| l.split("  (").next().unwrap_or(l).to_owned())
        })
        .collect();
    let ms = lines
        .iter()
        .find_map(|l| l.line.strip_prefix("Execution Time: "))
        .unwrap_or("?");
    format!("{} ({ms})", paths.join("; "))
}
