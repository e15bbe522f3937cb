//! Driver for `bench/poller` (see BENCHMARKS.md). Both modes run the
//! service's own store code against a real PostgreSQL database; only the
//! vendor and, for `converge`, the clock are simulated.
//!
//! - `pass-cost`: fill `orders` with N rows, then print each statement of a
//!   pass start with its plan's access paths and execution time (EXPLAIN
//!   ANALYZE), and the cost of the whole `store::poll::start_pass`: wall time
//!   and CPU time of the server backend and of this process.
//! - `converge`: live realistic 172 order lifecycles (days between status
//!   changes) on a virtual clock with a callback outage, while polling with
//!   haoka-sync's poller (callback-gap check, `start_pass` + `record_poll`,
//!   one pass a minute) or a naive policy (every non-terminal order each sweep). Prints
//!   GetOrderInfo calls per day before the outage, calls from the outage start
//!   until every order matches the vendor again, and how long that took.
//!
//! - `schedule-cost`: a schedule settings change (the reschedule of every
//!   tracked order) and the `status_dwell` refresh at one table size
//!   (`poller_bench_parts/schedule.rs`).
//!
//! `cargo run --release --example poller_bench -- pass-cost --db URL --orders N`
//! `cargo run --release --example poller_bench -- converge --db URL --policy haoka-sync`

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Date, Integer, Text, Timestamptz};

use haoka_sync::config::Config;
use haoka_sync::poller::LEASE;
use haoka_sync::rules::gaps::HISTORY_DAYS;
use haoka_sync::rules::schedule::{china_day, next_china_midnight, Schedule};
use haoka_sync::rules::status::{Observation, OrderFields, SignedOver, Source, Status};
use haoka_sync::sim::lifecycle::{haoka172_with_gaps, Lifecycle172, Rng};
use haoka_sync::store::gaps as gstore;
use haoka_sync::store::poll::{self as pstore, ClaimLimit, PassStart, PollResult};
use haoka_sync::store::{apply_batch, Applied, Item};
use haoka_sync::vendors::Vendor;

#[path = "poller_bench_parts/schedule.rs"]
mod schedule_part;

const V: Vendor = Vendor::Haoka172;
const OWNER: &str = "bench";

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A schedule settings change and the status_dwell refresh at one table
    /// size (fills an empty, migrated database).
    ScheduleCost {
        #[arg(long)]
        db: String,
        #[arg(long)]
        orders: i64,
    },
    /// Per-pass cost at one table size (fills an empty, migrated database).
    PassCost {
        #[arg(long)]
        db: String,
        #[arg(long)]
        orders: i64,
        /// Orders due now (a backlog larger than one pass can take).
        #[arg(long, default_value_t = 2000)]
        due: i64,
        /// Passes timed (each rolled back, so each sees the same table).
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Calls to converge after a callback outage, for one policy.
    Converge {
        #[arg(long)]
        db: String,
        #[arg(long, value_enum)]
        policy: Policy,
        #[arg(long, default_value_t = 10_000)]
        orders: usize,
        /// Orders are placed uniformly over this many days.
        #[arg(long, default_value_t = 30)]
        place_days: u64,
        #[arg(long, default_value_t = 25)]
        outage_day: u64,
        #[arg(long, default_value_t = 12)]
        outage_hours: u64,
        /// Naive policy: minutes between sweeps (180: 8 sweeps a day stay
        /// under the vendor's 10 calls per order per day).
        #[arg(long, default_value_t = 180)]
        naive_every: i64,
        /// haoka-sync policy: HAOKA172_OVERDUE (empty: the defaults).
        #[arg(long, default_value = "")]
        overdue: String,
        /// haoka-sync policy: HAOKA172_CALLBACK_GAP (empty: the defaults;
        /// `off`: no recovery sweep after a callback gap).
        #[arg(long, default_value = "")]
        callback_gap: String,
        #[arg(long, default_value_t = 150)]
        per_minute: i64,
        #[arg(long, default_value_t = 10)]
        per_day: i32,
        #[arg(long, default_value_t = 172)]
        seed: u64,
        /// Give up this many days after the outage.
        #[arg(long, default_value_t = 60)]
        max_days_after: i64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Policy {
    /// Query only overdue orders (the service's poller).
    HaokaSync,
    /// Query every non-terminal order each sweep.
    Naive,
}

fn main() {
    let args = Args::parse();
    let result = match args.cmd {
        Cmd::ScheduleCost { db, orders } => schedule_part::schedule_cost(&db, orders),
        Cmd::PassCost {
            db,
            orders,
            due,
            runs,
        } => pass_cost(&db, orders, due, runs),
        Cmd::Converge {
            db,
            policy,
            orders,
            place_days,
            outage_day,
            outage_hours,
            naive_every,
            overdue,
            callback_gap,
            per_minute,
            per_day,
            seed,
            max_days_after,
        } => converge(&Scenario {
            db,
            policy,
            orders,
            place_days,
            outage_day,
            outage_hours,
            naive_every,
            overdue,
            callback_gap,
            per_minute,
            per_day,
            seed,
            max_days_after,
        }),
    };
    if let Err(e) = result {
        eprintln!("poller_bench: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn schedule(overdue: &str, callback_gap: &str) -> Res<Schedule> {
    let mut vars = vec![];
    if !overdue.is_empty() {
        vars.push(("HAOKA172_OVERDUE", overdue));
    }
    if !callback_gap.is_empty() {
        vars.push(("HAOKA172_CALLBACK_GAP", callback_gap));
    }
    Ok(Config::with(&vars)?.schedule())
}

// ---------------------------------------------------------------- pass-cost

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(column_name = "QUERY PLAN", sql_type = Text)]
    line: String,
}

#[derive(QueryableByName)]
struct OrderId {
    #[diesel(sql_type = Text)]
    order_id: String,
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// CPU time a thread or process has run, from schedstat (nanoseconds).
fn cpu_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The monthly partitions of the fill's past (and the simulation's future).
fn partitions(conn: &mut PgConnection) -> Res<()> {
    let now = chrono::Utc::now();
    haoka_sync::store::retention::ensure_partitions(
        conn,
        now - chrono::Duration::days(16 * 31),
        now + chrono::Duration::days(14 * 31),
    )?;
    Ok(())
}

fn pass_cost(url: &str, orders: i64, due: i64, runs: usize) -> Res<()> {
    let mut conn = PgConnection::establish(url)?;
    partitions(&mut conn)?;
    let fill_started = Instant::now();
    // 70 % terminal (no next check), 30 % tracked with next checks spread
    // over the next 30 days; among the first rows, `due` tracked ones are
    // due now (up to 10 minutes overdue).
    diesel::sql_query(
        "INSERT INTO orders (vendor, order_id, status, last_heard_at, created_at) \
         SELECT 'haoka172', 'BP' || lpad(g::text, 9, '0'), \
                CASE WHEN g % 10 < 7 THEN 'settled' WHEN g % 10 = 7 THEN 'pending' \
                     WHEN g % 10 = 8 THEN 'shipped' ELSE 'submitted' END, \
                now() - (g % 1000) * interval '1 minute', now() - interval '1 day' \
         FROM generate_series(1, $1) g",
    )
    .bind::<BigInt, _>(orders)
    .execute(&mut conn)?;
    diesel::sql_query(
        "INSERT INTO order_polls (vendor, order_id, next_check_at, tracked_at) \
         SELECT 'haoka172', 'BP' || lpad(g::text, 9, '0'), \
                CASE WHEN g % 10 < 7 THEN NULL \
                     WHEN g <= $2 * 10 / 3 THEN now() - (g % 600) * interval '1 second' \
                     ELSE now() + interval '1 hour' + (g * 7919 % 43200) * interval '1 minute' END, \
                now() - interval '1 day' \
         FROM generate_series(1, $1) g",
    )
    .bind::<BigInt, _>(orders)
    .bind::<BigInt, _>(due)
    .execute(&mut conn)?;
    // The inbox of the last 8 days (the callback-gap check reads it), at the
    // rate such a table implies: orders placed over a year, 5 callbacks each,
    // spread evenly up to now. Bodies of a realistic size.
    let inbox = (orders * 5 * 8 / 365).max(1);
    diesel::sql_query(
        "INSERT INTO inbound_callbacks (vendor, received_at, outcome, request_id, order_id, headers, body, body_size) \
         SELECT 'haoka172', now() - (g * 8 * 86400 / $1) * interval '1 second', 'applied', \
                'R' || g, 'BP' || lpad((g * 7 % $2 + 1)::text, 9, '0'), \
                '{\"content-type\": \"application/json\"}', repeat('x', 420), 420 \
         FROM generate_series(0, $1 - 1) g",
    )
    .bind::<BigInt, _>(inbox)
    .bind::<BigInt, _>(orders)
    .execute(&mut conn)?;
    // The service relies on autovacuum for statistics; this machine may have
    // it off, so analyze explicitly.
    conn.batch_execute("VACUUM ANALYZE orders")?;
    conn.batch_execute("VACUUM ANALYZE order_polls")?;
    conn.batch_execute("VACUUM ANALYZE inbound_callbacks")?;
    let fill_s = fill_started.elapsed().as_secs_f64();

    let sched = schedule("", "")?;
    let now = Utc::now();
    let today = china_day(now);
    let cutoff = sched.horizon_cutoff(now);
    let tomorrow = next_china_midnight(now);
    let lease_until = now + chrono::Duration::minutes(5);
    let gap_policy = sched
        .callback_gap
        .clone()
        .ok_or("callback-gap recovery is off")?;
    // The orders the first chunk of a sweep of everything would update.
    let first_chunk: Vec<String> = diesel::sql_query(
        "SELECT order_id FROM order_polls WHERE vendor = $1 AND next_check_at > $2 \
         ORDER BY next_check_at, order_id LIMIT $3",
    )
    .bind::<Text, _>(V.as_str())
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(gstore::SWEEP_CHUNK)
    .load::<OrderId>(&mut conn)?
    .into_iter()
    .map(|o| o.order_id)
    .collect();
    let explain = |conn: &mut PgConnection, sql: &str| -> Res<(f64, String, bool)> {
        let q = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
        let q = diesel::sql_query(q.as_str());
        // Inside a transaction that is rolled back: the table stays as it was.
        conn.batch_execute("BEGIN")?;
        let rows: QueryResult<Vec<PlanLine>> = match sql {
            s if s == pstore::EXPIRE_SILENT_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(cutoff)
                .bind::<Timestamptz, _>(now)
                .load(conn),
            s if s == pstore::COUNT_DUE_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(now)
                .load(conn),
            s if s == pstore::DEFER_EXHAUSTED_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(now)
                .bind::<Date, _>(today)
                .bind::<Integer, _>(10)
                .bind::<Timestamptz, _>(tomorrow)
                .load(conn),
            s if s == pstore::CLAIM_DUE_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(now)
                .bind::<Text, _>(OWNER)
                .bind::<Timestamptz, _>(lease_until)
                .bind::<Date, _>(today)
                .bind::<Integer, _>(10)
                .bind::<BigInt, _>(150)
                .load(conn),
            s if s == gstore::HOLES_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(now - chrono::Duration::minutes(1))
                .bind::<diesel::sql_types::Double, _>(3600.0)
                .load(conn),
            s if s == gstore::HISTORY_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(now - chrono::Duration::hours(2))
                .bind::<Timestamptz, _>(now - chrono::Duration::hours(1))
                .bind::<Integer, _>(HISTORY_DAYS as i32)
                .bind::<BigInt, _>(gap_policy.count_cap())
                .load(conn),
            s if s == gstore::SWEEP_WALK_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(now)
                .bind::<Timestamptz, _>(now)
                .bind::<Timestamptz, _>(now)
                .bind::<Text, _>("")
                .bind::<BigInt, _>(gstore::SWEEP_CHUNK)
                .load(conn),
            s if s == gstore::SWEEP_SQL => q
                .bind::<Text, _>(V.as_str())
                .bind::<Timestamptz, _>(now)
                .bind::<Timestamptz, _>(now)
                .bind::<Array<Text>, _>(&first_chunk)
                .bind::<Array<Text>, _>(vec!["pending", "submitted", "shipped", "completed"])
                .bind::<Array<Timestamptz>, _>(vec![now; 4])
                .load(conn),
            _ => q.bind::<Text, _>(V.as_str()).load(conn),
        };
        conn.batch_execute("ROLLBACK")?;
        let lines: Vec<String> = rows?.into_iter().map(|p| p.line).collect();
        let ms = lines
            .iter()
            .find_map(|l| l.strip_prefix("Execution Time: "))
            .and_then(|l| l.trim_end_matches(" ms").parse().ok())
            .unwrap_or(f64::NAN);
        let paths: Vec<String> = lines
            .iter()
            .filter_map(|l| {
                let l = l.trim_start_matches([' ', '-', '>']);
                l.contains("Scan")
                    .then(|| l.split("  (").next().unwrap_or(l).to_owned())
            })
            .collect();
        let seq = paths.iter().any(|p| p.starts_with("Seq Scan"));
        Ok((ms, paths.join("; "), seq))
    };

    println!(
        "orders {orders}, due {due}, {inbox} inbox rows over 8 days; filled and analyzed in {fill_s:.1} s"
    );
    println!("  {:<16} {:>9}  plan", "statement", "exec ms");
    let naive_sql = "SELECT order_id FROM orders WHERE vendor = $1 AND NOT is_terminal";
    let statements = [
        ("expire_silent", pstore::EXPIRE_SILENT_SQL),
        ("count_due", pstore::COUNT_DUE_SQL),
        ("defer_exhausted", pstore::DEFER_EXHAUSTED_SQL),
        ("claim_due", pstore::CLAIM_DUE_SQL),
        ("gap holes", gstore::HOLES_SQL),
        ("gap history", gstore::HISTORY_SQL),
        ("sweep walk", gstore::SWEEP_WALK_SQL),
        ("sweep update", gstore::SWEEP_SQL),
        ("naive selection", naive_sql),
    ];
    let mut scans = Vec::new();
    for (name, sql) in statements {
        // Median of 5.
        let mut runs_ms = Vec::new();
        let mut plan = String::new();
        let mut seq = false;
        for _ in 0..5 {
            let (ms, p, s) = explain(&mut conn, sql)?;
            runs_ms.push(ms);
            plan = p;
            seq = s;
        }
        runs_ms.sort_by(f64::total_cmp);
        println!("  {name:<16} {:>9.3}  {plan}", runs_ms[2]);
        if seq && sql != naive_sql {
            scans.push(name);
        }
    }

    // The whole pass start, as the poller runs it, rolled back each time.
    let backend: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(&mut conn)?;
    let server_stat = format!("/proc/{}/schedstat", backend.pid);
    let server0 = cpu_ns(&server_stat);
    let client0 = cpu_ns("/proc/thread-self/schedstat");
    let mut walls = Vec::with_capacity(runs);
    let mut claimed = 0;
    for _ in 0..runs {
        let started = Instant::now();
        conn.batch_execute("BEGIN")?;
        let limit = ClaimLimit {
            per_call: 1,
            per_pass: Some(150),
            window: None,
            per_order_per_day: Some(10),
        };
        let start = pstore::start_pass(&mut conn, V, now, &sched, &limit, OWNER, LEASE);
        conn.batch_execute("ROLLBACK")?;
        if let PassStart::Work(w) = start? {
            claimed = w.claimed.len();
        }
        walls.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let server_ms = (cpu_ns(&server_stat) - server0) as f64 / 1e6 / runs as f64;
    let client_ms = (cpu_ns("/proc/thread-self/schedstat") - client0) as f64 / 1e6 / runs as f64;
    walls.sort_by(f64::total_cmp);
    let p = |q: f64| walls[((walls.len() - 1) as f64 * q).round() as usize];
    println!(
        "  start_pass: claimed {claimed}; wall p50 {:.2} ms, p90 {:.2} ms; CPU per pass: server {:.2} ms, client {:.2} ms",
        p(0.5),
        p(0.9),
        server_ms,
        client_ms
    );

    // The refresh of the /metrics database gauges every replica runs every
    // METRICS_REFRESH, next to the pass (the sweep below makes every
    // tracked order due: measured again after it).
    metrics_cost(&mut conn, orders, "a backlog of due orders")?;

    // The callback-gap check each 172 pass makes first (each rolled back):
    // with callbacks flowing (the mark a minute old), and with none for
    // 90 minutes (the silence is measured against the past week's same
    // hours and recorded). Then the one-off sweep when a gap ends, with
    // every tracked order not heard from since.
    conn.batch_execute(
        "INSERT INTO callback_watch (vendor, heard_until, checked_at) \
         VALUES ('haoka172', now() - interval '1 minute', now())",
    )?;
    let rolled_back = |conn: &mut PgConnection,
                       before: &str,
                       f: &dyn Fn(&mut PgConnection) -> QueryResult<usize>|
     -> Res<(f64, usize)> {
        let mut out = (0.0, 0);
        let r = conn.transaction::<(), diesel::result::Error, _>(|c| {
            if !before.is_empty() {
                c.batch_execute(before)?;
            }
            let started = Instant::now();
            let n = f(c)?;
            out = (started.elapsed().as_secs_f64() * 1000.0, n);
            Err(diesel::result::Error::RollbackTransaction)
        });
        match r {
            Err(diesel::result::Error::RollbackTransaction) => Ok(out),
            Err(e) => Err(e.into()),
            Ok(()) => unreachable!(),
        }
    };
    let median = |before: &str,
                  f: &dyn Fn(&mut PgConnection) -> QueryResult<usize>,
                  conn: &mut PgConnection|
     -> Res<(f64, usize)> {
        let mut ms = Vec::new();
        let mut n = 0;
        for _ in 0..11 {
            let (t, k) = rolled_back(conn, before, f)?;
            ms.push(t);
            n = k;
        }
        ms.sort_by(f64::total_cmp);
        Ok((ms[5], n))
    };
    let check = |c: &mut PgConnection| gstore::check(c, V, now, &gap_policy).map(|e| e.len());
    let (flowing_ms, _) = median("", &check, &mut conn)?;
    let (silent_ms, silent_events) = median(
        "DELETE FROM inbound_callbacks WHERE received_at > now() - interval '90 minutes'; \
         UPDATE callback_watch SET heard_until = (SELECT max(received_at) FROM inbound_callbacks)",
        &check,
        &mut conn,
    )?;
    // Last, as it runs (committing each chunk): everything tracked is swept.
    let started = Instant::now();
    let swept = gstore::sweep(&mut conn, V, now, now, gstore::SWEEP_CHUNK)?;
    let sweep_ms = started.elapsed().as_secs_f64() * 1000.0;
    metrics_cost(
        &mut conn,
        orders,
        "every tracked order due (after a gap sweep)",
    )?;
    let chunk_ms = sweep_ms / swept.chunks as f64;
    let swept = swept.orders;
    println!(
        "  gap check: callbacks flowing {flowing_ms:.2} ms; silent 90 min {silent_ms:.2} ms ({silent_events} event); \
         sweep when a gap ends (once per gap) {sweep_ms:.0} ms for {swept} orders, {chunk_ms:.0} ms per chunk of {}",
        gstore::SWEEP_CHUNK
    );
    println!(
        "RESULT orders={orders} claim_plan={} start_pass_p50_ms={:.2} server_cpu_ms={server_ms:.2} client_cpu_ms={client_ms:.2} \
         gap_check_ms={flowing_ms:.2} gap_silent_ms={silent_ms:.2} sweep_ms={sweep_ms:.0} swept={swept} chunk_ms={chunk_ms:.0} seq_scans={}",
        if scans.is_empty() { "index" } else { "SCAN" },
        p(0.5),
        if scans.is_empty() {
            "none".to_owned()
        } else {
            scans.join(",")
        }
    );
    Ok(())
}

/// Statements of a metrics refresh whose plan must not scan a large table.
const LARGE_TABLES: [&str; 4] = ["orders", "order_polls", "inbound_callbacks", "order_events"];

/// The cost of one refresh of the database gauges (`store::metrics::refresh`)
/// in the state a busy service leaves between two refreshes: 400 unfolded
/// order-count deltas (5 s of status changes) and 10 s of callbacks at
/// 200/s. Each statement with its plan (EXPLAIN ANALYZE), then the whole
/// refresh: a process's first look at the inbox, and the refreshes after it.
/// Everything rolled back, so the tables stay as they were.
fn metrics_cost(conn: &mut PgConnection, orders: i64, state: &str) -> Res<()> {
    use haoka_sync::store::metrics::{self as mstore, HeardMarks};
    let busy = "INSERT INTO order_count_deltas (vendor, status, delta) \
                SELECT 'haoka172', (ARRAY['pending', 'submitted', 'shipped', 'completed'])[g % 4 + 1], \
                       CASE WHEN g % 2 = 0 THEN 1 ELSE -1 END FROM generate_series(1, 400) g; \
                INSERT INTO inbound_callbacks (vendor, received_at, outcome, request_id, order_id, headers, body, body_size) \
                SELECT 'haoka172', now() - (g * interval '5 milliseconds'), 'applied', 'M' || g, 'BP' || lpad(g::text, 9, '0'), \
                       '{}', repeat('x', 420), 420 FROM generate_series(1, 2000) g";
    let in_rollback = |conn: &mut PgConnection,
                       f: &mut dyn FnMut(&mut PgConnection) -> QueryResult<()>|
     -> Res<()> {
        let r = conn.transaction::<(), diesel::result::Error, _>(|c| {
            c.batch_execute(busy)?;
            f(c)?;
            Err(diesel::result::Error::RollbackTransaction)
        });
        match r {
            Err(diesel::result::Error::RollbackTransaction) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(()) => unreachable!(),
        }
    };
    let now = Utc::now();
    let vendors: Vec<&str> = Vendor::ALL.iter().map(|v| v.as_str()).collect();
    let statements = [
        ("fold", mstore::FOLD_SQL),
        ("order counts", mstore::ORDER_COUNTS_SQL),
        ("next check", mstore::NEXT_CHECK_SQL),
        ("due count", mstore::DUE_SQL),
        ("paused", mstore::PAUSED_SQL),
        ("gaps open", mstore::GAPS_OPEN_SQL),
        ("heard (first)", mstore::HEARD_FIRST_SQL),
        ("heard (since)", mstore::HEARD_SINCE_SQL),
    ];
    let mut lines_out = Vec::new();
    let mut scans = Vec::new();
    for (name, sql) in statements {
        let mut ms = Vec::new();
        let mut plan = String::new();
        for _ in 0..5 {
            let mut lines = Vec::new();
            in_rollback(conn, &mut |c| {
                let q = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
                let q = diesel::sql_query(q.as_str());
                let rows: Vec<PlanLine> = match name {
                    "next check" => q.bind::<Array<Text>, _>(&vendors).load(c)?,
                    "due count" => q
                        .bind::<Array<Text>, _>(&vendors)
                        .bind::<Timestamptz, _>(now)
                        .load(c)?,
                    "paused" => q.bind::<Timestamptz, _>(now).load(c)?,
                    "heard (first)" => q.bind::<Text, _>(V.as_str()).load(c)?,
                    "heard (since)" => q
                        .bind::<Text, _>(V.as_str())
                        .bind::<Timestamptz, _>(now - chrono::Duration::seconds(15))
                        .load(c)?,
                    _ => q.load(c)?,
                };
                lines = rows.into_iter().map(|p| p.line).collect();
                Ok(())
            })?;
            ms.push(
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix("Execution Time: "))
                    .and_then(|l| l.trim_end_matches(" ms").parse().ok())
                    .unwrap_or(f64::NAN),
            );
            let paths: Vec<String> = lines
                .iter()
                .filter_map(|l| {
                    let l = l.trim_start_matches([' ', '-', '>']);
                    l.contains("Scan")
                        .then(|| l.split("  (").next().unwrap_or(l).to_owned())
                })
                .collect();
            plan = paths.join("; ");
            if paths.iter().any(|p| {
                LARGE_TABLES.iter().any(|t| {
                    // A monthly partition (`inbound_callbacks_2026_11`) counts as its table.
                    p.starts_with(&format!("Seq Scan on {t} "))
                        || p == &format!("Seq Scan on {t}")
                        || p.starts_with(&format!("Seq Scan on {t}_20"))
                })
            }) && !scans.contains(&name)
            {
                scans.push(name);
            }
        }
        ms.sort_by(f64::total_cmp);
        lines_out.push(format!("    {name:<14} {:>9.3}  {plan}", ms[2]));
    }
    // The whole refresh as the service runs it.
    let (mut first, mut steady, mut counting) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..11 {
        in_rollback(conn, &mut |c| {
            let mut marks = HeardMarks::default();
            let t = Instant::now();
            mstore::refresh(c, Utc::now(), &[V], &mut marks, true)?;
            first.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            mstore::refresh(c, Utc::now(), &[V], &mut marks, false)?;
            steady.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            mstore::refresh(c, Utc::now(), &[V], &mut marks, true)?;
            counting.push(t.elapsed().as_secs_f64() * 1000.0);
            Ok(())
        })?;
    }
    first.sort_by(f64::total_cmp);
    steady.sort_by(f64::total_cmp);
    counting.sort_by(f64::total_cmp);
    let due: Count = diesel::sql_query(pstore::COUNT_DUE_SQL)
        .bind::<Text, _>(V.as_str())
        .bind::<Timestamptz, _>(now)
        .get_result(conn)?;
    println!(
        "  metrics refresh, {state} ({} due; 400 unfolded deltas, 200 callbacks/s): p50 {:.2} ms, p90 {:.2} ms without the due count, {:.2} ms with it; a process's first {:.2} ms",
        due.n, steady[5], steady[9], counting[5], first[5]
    );
    println!("    {:<14} {:>9}  plan", "statement", "exec ms");
    for l in lines_out {
        println!("{l}");
    }
    println!(
        "METRICS orders={orders} due={} refresh_p50_ms={:.2} refresh_p90_ms={:.2} counting_ms={:.2} first_ms={:.2} seq_scans={}",
        due.n,
        steady[5],
        steady[9],
        counting[5],
        first[5],
        if scans.is_empty() { "none".to_owned() } else { scans.join(",") }
    );
    Ok(())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

// ----------------------------------------------------------------- converge

struct Scenario {
    db: String,
    policy: Policy,
    orders: usize,
    place_days: u64,
    outage_day: u64,
    outage_hours: u64,
    naive_every: i64,
    overdue: String,
    callback_gap: String,
    per_minute: i64,
    per_day: i32,
    seed: u64,
    max_days_after: i64,
}

const DAY: u64 = 86_400;

/// Log-uniform between `lo` and `hi` hours: most changes come early, some
/// take long.
fn hours(rng: &mut Rng, lo: f64, hi: f64) -> Duration {
    let h = (lo.ln() + (hi.ln() - lo.ln()) * rng.unit()).exp();
    Duration::from_secs_f64(h * 3600.0)
}

/// How long a 172 order stays in a status before the next one (assumed for
/// the benchmark: hours to reach the carrier, days to ship and activate,
/// weeks to settle).
fn realistic_gap(rng: &mut Rng, from: &str, to: &str) -> Duration {
    match (from, to) {
        (_, "已提运营商") => hours(rng, 0.1, 4.0),
        (_, "已撤单") => hours(rng, 0.5, 48.0),
        (_, "审核不通过") | (_, "已取消") => hours(rng, 1.0, 72.0),
        (_, "已发货") => hours(rng, 4.0, 72.0),
        (_, "已完成") => hours(rng, 24.0, 240.0),
        (_, "已结算") => hours(rng, 240.0, 960.0),
        _ => hours(rng, 480.0, 1080.0), // 无法结算
    }
}

struct Sim {
    lifecycles: Vec<Lifecycle172>,
    index: HashMap<String, usize>,
    /// What the vendor says now, and what the database holds (None before
    /// the order is placed).
    truth: Vec<Option<Status>>,
    held: Vec<Option<Status>>,
    wrong: HashSet<usize>,
    calls_by_day: HashMap<i64, u64>,
    calls_per_order_day: HashMap<(usize, chrono::NaiveDate), i32>,
    max_per_order_day: i32,
    max_per_minute: i64,
    /// Calls for an order after the vendor already answered it terminal.
    after_terminal: u64,
    answered_terminal: HashSet<usize>,
    calls: u64,
}

impl Sim {
    fn set_truth(&mut self, i: usize, s: Status) {
        self.truth[i] = Some(s);
        self.refresh(i);
    }

    fn set_held(&mut self, i: usize, s: Status) {
        self.held[i] = Some(s);
        self.refresh(i);
    }

    fn refresh(&mut self, i: usize) {
        if self.truth[i].is_some() && self.truth[i] != self.held[i] {
            self.wrong.insert(i);
        } else {
            self.wrong.remove(&i);
        }
    }

    /// What GetOrderInfo answers for order `i` at `at`.
    fn answer(&self, i: usize, at: Duration) -> Option<Observation> {
        let o = &self.lifecycles[i];
        let step = o.steps.iter().rev().find(|s| s.at <= at)?;
        Some(observation(o, step.label, Source::Poll))
    }
}

fn observation(o: &Lifecycle172, label: &str, source: Source) -> Observation {
    Observation {
        vendor: V,
        order_id: o.order_no.clone(),
        source,
        vendor_status: Some(label.to_owned()),
        status: haoka_sync::vendors::haoka172::labels::status_of(label),
        fields: OrderFields {
            vendor_order_no: Some(o.order_no_172.clone()),
            ..Default::default()
        },
    }
}

fn converge(sc: &Scenario) -> Res<()> {
    let wall = Instant::now();
    let mut conn = PgConnection::establish(&sc.db)?;
    partitions(&mut conn)?;
    // A simulation: durability of each commit does not matter here.
    conn.batch_execute("SET synchronous_commit = off")?;
    let sched = schedule(&sc.overdue, &sc.callback_gap)?;
    let t0: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .ok_or("bad start time")?;
    let at = |d: Duration| t0 + chrono::Duration::from_std(d).unwrap_or_default();
    let minute = |m: i64| Duration::from_secs(m.max(0) as u64 * 60);

    let mut rng = Rng::new(sc.seed);
    let lifecycles: Vec<Lifecycle172> = (0..sc.orders)
        .map(|i| {
            let start = Duration::from_secs_f64(sc.place_days as f64 * DAY as f64 * rng.unit());
            haoka172_with_gaps(&mut rng, format!("C{i:06}"), start, realistic_gap)
        })
        .collect();
    // (when, order, step): every status change, in time order.
    let mut changes: Vec<(Duration, usize, usize)> = lifecycles
        .iter()
        .enumerate()
        .flat_map(|(i, o)| o.steps.iter().enumerate().map(move |(k, s)| (s.at, i, k)))
        .collect();
    changes.sort();
    let outage_start = Duration::from_secs(sc.outage_day * DAY);
    let outage_end = outage_start + Duration::from_secs(sc.outage_hours * 3600);
    let (os_min, oe_min) = (
        (outage_start.as_secs() / 60) as i64,
        (outage_end.as_secs() / 60) as i64,
    );
    // The naive policy polls from one day before the outage (it does the same
    // every day; a day shows its rate without replaying a month of calls).
    let naive_from = os_min - 24 * 60;
    let give_up = oe_min + sc.max_days_after * 24 * 60;

    let mut sim = Sim {
        index: lifecycles
            .iter()
            .enumerate()
            .map(|(i, o)| (o.order_no.clone(), i))
            .collect(),
        truth: vec![None; lifecycles.len()],
        held: vec![None; lifecycles.len()],
        lifecycles,
        wrong: HashSet::new(),
        calls_by_day: HashMap::new(),
        calls_per_order_day: HashMap::new(),
        max_per_order_day: 0,
        max_per_minute: 0,
        after_terminal: 0,
        answered_terminal: HashSet::new(),
        calls: 0,
    };
    let mut next_change = 0;
    let mut m: i64 = 0;
    let mut naive_queue: Vec<String> = Vec::new();
    let mut calls_at_outage_start = None;
    let mut wrong_at_outage_end = None;
    let mut half_at = None;
    let mut ninety_at = None;
    let mut converged_at = None;
    let mut minutes_simulated = 0u64;
    loop {
        minutes_simulated += 1;
        let now = at(minute(m));
        if m >= os_min && calls_at_outage_start.is_none() {
            calls_at_outage_start = Some(sim.calls);
        }
        // The pass at the top of the minute.
        let polled = match sc.policy {
            Policy::HaokaSync => haoka_sync_pass(&mut conn, &mut sim, &sched, sc, now, minute(m))?,
            Policy::Naive if m >= naive_from => {
                if (m - naive_from) % sc.naive_every == 0 {
                    naive_queue = non_terminal(&mut conn)?;
                    naive_queue.reverse();
                }
                naive_pass(
                    &mut conn,
                    &mut sim,
                    &sched,
                    sc,
                    &mut naive_queue,
                    now,
                    minute(m),
                )?
            }
            Policy::Naive => 0,
        };
        sim.max_per_minute = sim.max_per_minute.max(polled);
        // Status changes during the minute: the order is registered when it
        // is placed; each change is pushed as a callback unless the callback
        // endpoint is down.
        let mut register = Vec::new();
        let mut pushed = Vec::new();
        while next_change < changes.len() && changes[next_change].0 < minute(m + 1) {
            let (t, i, k) = changes[next_change];
            next_change += 1;
            let o = &sim.lifecycles[i];
            if k == 0 {
                register.push(o.order_no.clone());
            }
            let label = o.steps[k].label;
            let lost = t >= outage_start && t < outage_end;
            if !lost {
                pushed.push((
                    format!("CB-{i}-{k}"),
                    observation(o, label, Source::Callback),
                ));
            }
            if k == 0 {
                sim.set_held(i, Status::New);
            }
            sim.set_truth(i, haoka_sync::vendors::haoka172::labels::status_of(label));
        }
        let later = now + chrono::Duration::seconds(30);
        if !register.is_empty() {
            pstore::register(&mut conn, V, &register, &sched, later)?;
        }
        if !pushed.is_empty() {
            let items: Vec<Item<'_>> = pushed
                .iter()
                .map(|(rid, obs)| Item {
                    obs,
                    request_id: Some(rid),
                    signed_over: Some(SignedOver::OrderId),
                })
                .collect();
            let applied = conn.transaction(|c| {
                let applied = apply_batch(c, &items, later, &sched)?;
                // The inbox rows the service writes with them (the callback
                // gap check reads them).
                let rids: Vec<&str> = pushed.iter().map(|(rid, _)| rid.as_str()).collect();
                let oids: Vec<&str> = pushed.iter().map(|(_, o)| o.order_id.as_str()).collect();
                diesel::sql_query(
                    "INSERT INTO inbound_callbacks (vendor, received_at, outcome, request_id, order_id, headers, body, body_size) \
                     SELECT 'haoka172', $1, 'applied', r, o, '{}', '', 0 FROM unnest($2::text[], $3::text[]) AS u(r, o)",
                )
                .bind::<Timestamptz, _>(later)
                .bind::<Array<Text>, _>(&rids)
                .bind::<Array<Text>, _>(&oids)
                .execute(c)?;
                diesel::QueryResult::Ok(applied)
            })?;
            for ((_, obs), a) in pushed.iter().zip(applied) {
                if let Applied::Event { status, .. } = a {
                    let i = sim.index[&obs.order_id];
                    sim.set_held(i, status);
                }
            }
        }
        // Convergence after the outage.
        if m + 1 >= oe_min {
            let wrong = sim.wrong.len();
            let d0 = *wrong_at_outage_end.get_or_insert(wrong);
            if half_at.is_none() && wrong * 2 <= d0 {
                half_at = Some(m + 1);
            }
            if ninety_at.is_none() && wrong * 10 <= d0 {
                ninety_at = Some(m + 1);
            }
            if wrong == 0 {
                converged_at = Some(m + 1);
                break;
            }
        }
        if m >= give_up {
            break;
        }
        // Skip minutes in which nothing can happen.
        let next_event = changes
            .get(next_change)
            .map_or(i64::MAX, |c| (c.0.as_secs() / 60) as i64);
        let next_poll = match sc.policy {
            Policy::HaokaSync => next_due_minute(&mut conn, t0)?,
            Policy::Naive if !naive_queue.is_empty() => m + 1,
            Policy::Naive => {
                let k = ((m + 1 - naive_from) as f64 / sc.naive_every as f64).ceil() as i64;
                naive_from + k.max(0) * sc.naive_every
            }
        };
        let mut target = next_event.min(next_poll);
        if m + 1 < oe_min {
            // Convergence is measured from the outage's end: stop there.
            target = target.min(oe_min - 1);
        }
        m = target.max(m + 1);
    }

    // The harness's bookkeeping must agree with the database.
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        order_id: String,
        #[diesel(sql_type = Text)]
        status: String,
    }
    let rows: Vec<Row> =
        diesel::sql_query("SELECT order_id, status FROM orders WHERE vendor = 'haoka172'")
            .load(&mut conn)?;
    let mismatched = rows
        .iter()
        .filter(|r| {
            sim.index
                .get(&r.order_id)
                .and_then(|&i| sim.held[i])
                .map(Status::as_str)
                != Some(r.status.as_str())
        })
        .count();

    let policy = match sc.policy {
        Policy::HaokaSync if sched.callback_gap.is_none() => "haoka-sync/no-gap-sweep".to_owned(),
        Policy::HaokaSync => "haoka-sync".to_owned(),
        Policy::Naive => format!("naive/{}min", sc.naive_every),
    };
    let start_calls = calls_at_outage_start.unwrap_or(sim.calls);
    let day_before = sc.outage_day as i64 - 1;
    let per_day_before = sim.calls_by_day.get(&day_before).copied().unwrap_or(0);
    let fmt_after = |t: Option<i64>| match t {
        Some(t) => {
            let mins = t - oe_min;
            if mins < 120 {
                format!("{mins}m")
            } else if mins < 48 * 60 {
                format!("{:.1}h", mins as f64 / 60.0)
            } else {
                format!("{:.1}d", mins as f64 / 1440.0)
            }
        }
        None => "never".to_owned(),
    };
    println!(
        "RESULT policy={policy} orders={} calls_day_before={per_day_before} wrong_at_outage_end={} calls_to_converge={} converged_after={} half_after={} ninety_after={} max_per_minute={} max_per_order_day={} calls_after_terminal={} bookkeeping_mismatches={mismatched} simulated_minutes={minutes_simulated} wall_s={:.0}",
        sc.orders,
        wrong_at_outage_end.unwrap_or(0),
        if converged_at.is_some() {
            (sim.calls - start_calls).to_string()
        } else {
            format!(">{}", sim.calls - start_calls)
        },
        fmt_after(converged_at),
        fmt_after(half_at),
        fmt_after(ninety_at),
        sim.max_per_minute,
        sim.max_per_order_day,
        sim.after_terminal,
        wall.elapsed().as_secs_f64(),
    );
    if mismatched > 0 {
        return Err(
            format!("{mismatched} orders differ between the harness and the database").into(),
        );
    }
    Ok(())
}

#[derive(QueryableByName)]
struct NextDue {
    #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
}

/// The minute of the next pass that will find something due.
fn next_due_minute(conn: &mut PgConnection, t0: DateTime<Utc>) -> Res<i64> {
    let r: NextDue = diesel::sql_query(
        "SELECT min(next_check_at) AS at FROM order_polls WHERE vendor = 'haoka172' AND next_check_at IS NOT NULL",
    )
    .get_result(conn)?;
    Ok(match r.at {
        Some(t) => {
            let secs = (t - t0).num_seconds().max(0);
            (secs + 59) / 60
        }
        None => i64::MAX,
    })
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    order_id: String,
}

fn non_terminal(conn: &mut PgConnection) -> Res<Vec<String>> {
    let ids: Vec<Id> = diesel::sql_query(
        "SELECT order_id FROM orders WHERE vendor = 'haoka172' AND NOT is_terminal ORDER BY order_id",
    )
    .load(conn)?;
    Ok(ids.into_iter().map(|r| r.order_id).collect())
}

/// Ask the vendor about one order and record the answer as the poller does.
fn poll_one(
    conn: &mut PgConnection,
    sim: &mut Sim,
    sched: &Schedule,
    order_id: &str,
    now: DateTime<Utc>,
    at: Duration,
) -> Res<()> {
    let i = sim.index[order_id];
    let today = china_day(now);
    pstore::count_order_calls(conn, V, &[order_id.to_owned()], today)?;
    sim.calls += 1;
    *sim.calls_by_day
        .entry((at.as_secs() / DAY) as i64)
        .or_default() += 1;
    let n = sim.calls_per_order_day.entry((i, today)).or_default();
    *n += 1;
    sim.max_per_order_day = sim.max_per_order_day.max(*n);
    if sim.answered_terminal.contains(&i) {
        sim.after_terminal += 1;
    }
    let answer = sim.answer(i, at);
    let result = match &answer {
        Some(obs) => PollResult::Observed(obs),
        None => PollResult::Failed {
            outcome: "not_found",
        },
    };
    if let Some(Applied::Event { status, .. }) =
        pstore::record_poll(conn, V, order_id, OWNER, result, sched, now, now, &[])?.applied
    {
        sim.set_held(i, status);
    }
    if answer.is_some_and(|o| o.status.is_terminal()) {
        sim.answered_terminal.insert(i);
    }
    Ok(())
}

fn haoka_sync_pass(
    conn: &mut PgConnection,
    sim: &mut Sim,
    sched: &Schedule,
    sc: &Scenario,
    now: DateTime<Utc>,
    at: Duration,
) -> Res<i64> {
    if let Some(policy) = &sched.callback_gap {
        for e in gstore::check(conn, V, now, policy)? {
            if let gstore::GapEvent::SweepFailed { error, .. } = &e {
                return Err(format!("gap sweep failed: {error}").into());
            }
            println!("  day {:.2}: {e:?}", at.as_secs_f64() / DAY as f64);
        }
    }
    let limit = ClaimLimit {
        per_call: 1,
        per_pass: Some(sc.per_minute),
        window: None,
        per_order_per_day: Some(sc.per_day),
    };
    let start = pstore::start_pass(conn, V, now, sched, &limit, OWNER, LEASE)?;
    let PassStart::Work(work) = start else {
        return Ok(0);
    };
    conn.transaction::<_, Box<dyn std::error::Error>, _>(|c| {
        for id in &work.claimed {
            poll_one(c, sim, sched, id, now, at)?;
        }
        Ok(())
    })?;
    Ok(work.claimed.len() as i64)
}

/// Up to the per-minute budget from the sweep's queue, skipping orders that
/// became terminal or used their daily budget.
fn naive_pass(
    conn: &mut PgConnection,
    sim: &mut Sim,
    sched: &Schedule,
    sc: &Scenario,
    queue: &mut Vec<String>,
    now: DateTime<Utc>,
    at: Duration,
) -> Res<i64> {
    let today = china_day(now);
    let mut n = 0;
    conn.transaction::<_, Box<dyn std::error::Error>, _>(|c| {
        while n < sc.per_minute {
            let Some(id) = queue.pop() else { break };
            let i = sim.index[&id];
            let used = sim
                .calls_per_order_day
                .get(&(i, today))
                .copied()
                .unwrap_or(0);
            if sim.held[i].is_some_and(Status::is_terminal) || used >= sc.per_day {
                continue;
            }
            poll_one(c, sim, sched, &id, now, at)?;
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}
