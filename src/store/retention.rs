//! Applying `RETENTION` (`haoka-sync prune`, and `serve` once a day): the
//! monthly partitions of `inbound_callbacks` and `vendor_calls` past
//! retention are detached concurrently and dropped, the rows past it in the
//! month that straddles the cutoff, and in `order_events` and
//! `order_change_log`, are deleted in small batches with pauses between
//! them, so the callback path never waits on a prune. One process prunes at
//! a time (a session advisory lock on the caller's own connection); each
//! run is recorded in `retention_runs`. Also keeps the partitions of the
//! coming months created (`ensure_ahead`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Months, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz};

use crate::rules::retention::{plan_partitions, rest_after_drop, Partition, Retention};

/// The session advisory lock a prune holds.
pub const LOCK: i64 = 7217201500;
/// Months of partitions kept created past the current one.
pub const MONTHS_AHEAD: u32 = 2;
/// Rows a delete batch removes. Small, so that with the rests of `PACE`
/// the deletes' WAL comes in short pieces the callbacks' commits barely
/// wait behind, rather than in bursts a commit queues for (BENCHMARKS.md,
/// "Retention": 5,000 a batch gave 2.8x the p99 during the deletes; 500,
/// with `compress_wal`, 1.0-1.3x).
pub const BATCH: i64 = 500;
/// After each batch (and each partition dropped) a prune rests this many
/// times as long as the work took: at most a third of the time is spent
/// pruning, so the callback path keeps the machine (measured in
/// BENCHMARKS.md, "Retention").
pub const PACE: u32 = 2;
/// A partition larger than this (in pages, 100 MB) is not counted row by
/// row before it is dropped (that would read it all): its row count is the
/// statistics' (`pg_class.reltuples` after ANALYZE, else
/// `pg_stat_user_tables.n_live_tup`, exact for these insert-only tables
/// unless statistics were reset).
pub const COUNT_PAGES: i64 = 12_800;
/// Serve prunes when its last complete run is older than this.
pub const EVERY: chrono::Duration = chrono::Duration::hours(23);

/// Create the partitions for every month from `from` through `to` that do
/// not exist (returns how many). `CREATE TABLE ... PARTITION OF` takes the
/// parent exclusively for a moment: it gives up after 2 s rather than queue
/// the writers behind a long query, and the caller tries again later.
pub fn ensure_partitions(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> QueryResult<i32> {
    #[derive(QueryableByName)]
    struct Created {
        #[diesel(sql_type = Integer)]
        n: i32,
    }
    conn.transaction(|conn| {
        conn.batch_execute("SET LOCAL lock_timeout = '2s'")?;
        let c: Created = diesel::sql_query(
            "SELECT haoka_sync_partitions.ensure_months('inbound_callbacks', $1, $2) \
                  + haoka_sync_partitions.ensure_months('vendor_calls', $1, $2) AS n",
        )
        .bind::<Timestamptz, _>(from)
        .bind::<Timestamptz, _>(to)
        .get_result(conn)?;
        Ok(c.n)
    })
}

/// The partitions of this month and the next `MONTHS_AHEAD`.
pub fn ensure_ahead(conn: &mut PgConnection, now: DateTime<Utc>) -> QueryResult<i32> {
    let to = now
        .checked_add_months(Months::new(MONTHS_AHEAD))
        .unwrap_or(now);
    ensure_partitions(conn, now, to)
}

/// What a prune removed from one table (or would, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub table: &'static str,
    /// Every row removed: in dropped partitions and deleted.
    pub rows: i64,
    pub partitions_dropped: i64,
    /// The size of the dropped partitions, back to the file system.
    pub bytes_freed: i64,
    /// `None` when the table is kept whole (`off`).
    #[serde(skip)]
    pub cutoff: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub enum Prune {
    Done {
        removed: Vec<Removed>,
        run_id: i64,
    },
    /// Another process holds the lock.
    Busy,
    /// `only_if_due` and the last complete run is recent.
    NotDue {
        last: DateTime<Utc>,
    },
}

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Serve,
    Command,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Serve => "serve",
            Trigger::Command => "command",
        }
    }
}

/// A partitioned table, its time column and its primary key.
struct Parted {
    table: &'static str,
    column: &'static str,
    key: &'static str,
}

const INBOUND: Parted = Parted {
    table: "inbound_callbacks",
    column: "received_at",
    key: "(id, received_at)",
};
const CALLS: Parted = Parted {
    table: "vendor_calls",
    column: "called_at",
    key: "(id, called_at)",
};

/// A table trimmed row by row: what identifies a row, the time column a
/// row is past retention by (`< cutoff`), any further condition, and the
/// order the batches take rows in (an indexed column that follows the
/// time: `forward_deliveries` has only a BRIN index on its time).
struct Trim {
    table: &'static str,
    key: &'static str,
    before: &'static str,
    also: &'static str,
    order: &'static str,
    /// The SQL type of `order` (the batches resume from the last value).
    order_type: &'static str,
}

/// The unpartitioned tables that follow the `events` retention, in this
/// order. Forwarding follows the events too; a pending delivery (and its
/// attempts, and the change it delivers) is never pruned, and a change
/// goes only once no delivery of it is left (a delivery's body is built
/// from its change, on every attempt and redelivery).
const TRIMMED: [Trim; 4] = [
    Trim {
        table: "order_events",
        key: "id",
        before: "received_at",
        also: "",
        order: "received_at",
        order_type: "timestamptz",
    },
    Trim {
        table: "forward_deliveries",
        key: "id",
        before: "created_at",
        also: " AND state <> 'pending'",
        order: "id",
        order_type: "bigint",
    },
    Trim {
        table: "order_change_log",
        key: "id",
        before: "at",
        also: " AND NOT EXISTS (SELECT 1 FROM forward_deliveries d \
                WHERE d.change_id = order_change_log.id)",
        order: "at",
        order_type: "timestamptz",
    },
    Trim {
        table: "forward_attempts",
        key: "id",
        before: "at",
        also: " AND NOT EXISTS (SELECT 1 FROM forward_deliveries d \
                WHERE d.id = forward_attempts.delivery_id AND d.state = 'pending')",
        order: "at",
        order_type: "timestamptz",
    },
];

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    b: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Bound {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Timestamptz)]
    from_ts: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    to_ts: DateTime<Utc>,
    #[diesel(sql_type = Bool)]
    detach_pending: bool,
}

#[derive(QueryableByName)]
struct LastRun {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
}

/// When the last complete, real run started.
pub fn last_run(conn: &mut PgConnection) -> QueryResult<Option<DateTime<Utc>>> {
    let r: LastRun = diesel::sql_query(
        "SELECT max(started_at) AS at FROM retention_runs \
         WHERE finished_at IS NOT NULL AND error IS NULL AND NOT dry_run",
    )
    .get_result(conn)?;
    Ok(r.at)
}

/// Apply `retention` at `now` on `conn`, which must not be in a
/// transaction (a detach runs concurrently) and should be the caller's own
/// (the lock is the session's). `only_if_due`: skip when the last complete
/// run started within `EVERY` (checked under the lock, so two processes
/// asking at once prune once). `progress` gets a line every 2 s on long runs.
#[allow(clippy::too_many_arguments)]
pub fn prune(
    conn: &mut PgConnection,
    retention: &Retention,
    now: DateTime<Utc>,
    dry_run: bool,
    trigger: Trigger,
    owner: &str,
    only_if_due: bool,
    progress: &mut dyn FnMut(String),
) -> QueryResult<Prune> {
    let got: Flag = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS b")
        .bind::<BigInt, _>(LOCK)
        .get_result(conn)?;
    if !got.b {
        return Ok(Prune::Busy);
    }
    let result = locked(
        conn,
        retention,
        now,
        dry_run,
        trigger,
        owner,
        only_if_due,
        progress,
    );
    // A lost connection releases it too.
    let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK})"));
    result
}

#[allow(clippy::too_many_arguments)]
fn locked(
    conn: &mut PgConnection,
    retention: &Retention,
    now: DateTime<Utc>,
    dry_run: bool,
    trigger: Trigger,
    owner: &str,
    only_if_due: bool,
    progress: &mut dyn FnMut(String),
) -> QueryResult<Prune> {
    if only_if_due {
        if let Some(last) = last_run(conn)? {
            if now - last < EVERY {
                return Ok(Prune::NotDue { last });
            }
        }
    }
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let run: Id = diesel::sql_query(
        "INSERT INTO retention_runs (started_at, owner, trigger, dry_run, retention) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Text, _>(owner)
    .bind::<Text, _>(trigger.as_str())
    .bind::<Bool, _>(dry_run)
    .bind::<Text, _>(retention.describe())
    .get_result(conn)?;
    let cut = retention.cutoffs(now);
    let compressing = !dry_run && compress_wal(conn, progress);
    let mut removed = Vec::new();
    let mut work = || -> QueryResult<()> {
        removed.push(prune_parted(
            conn,
            &INBOUND,
            cut.inbound,
            dry_run,
            progress,
        )?);
        removed.push(prune_parted(
            conn,
            &CALLS,
            cut.vendor_calls,
            dry_run,
            progress,
        )?);
        for t in &TRIMMED {
            removed.push(delete_old(conn, t, cut.events, dry_run, progress)?);
        }
        Ok(())
    };
    let outcome = work();
    if compressing {
        let _ = conn.batch_execute("RESET wal_compression");
    }
    let summary = serde_json::to_value(
        removed
            .iter()
            .map(|r| (r.table, r))
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap_or_default();
    diesel::sql_query(
        "UPDATE retention_runs SET finished_at = clock_timestamp(), removed = $2, error = $3 WHERE id = $1",
    )
    .bind::<BigInt, _>(run.id)
    .bind::<Jsonb, _>(summary)
    .bind::<Nullable<Text>, _>(outcome.as_ref().err().map(|e| e.to_string()))
    .execute(conn)?;
    outcome?;
    Ok(Prune::Done {
        removed,
        run_id: run.id,
    })
}

/// Most of what a delete writes is full-page images: the first change to
/// each old page after a checkpoint logs the whole page. When the server
/// does not compress them, ask for it on this session, for the prune only
/// (`wal_compression` is a superuser setting; lz4, else pglz). Refused, it
/// says so once and prunes anyway. True when it set it (to reset after).
fn compress_wal(conn: &mut PgConnection, progress: &mut dyn FnMut(String)) -> bool {
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        v: String,
    }
    let now: Option<Setting> = diesel::sql_query("SELECT current_setting('wal_compression') AS v")
        .get_result(conn)
        .ok();
    if now.is_none_or(|s| s.v != "off") {
        return false;
    }
    let mut why = String::new();
    for method in ["lz4", "pglz"] {
        match conn.batch_execute(&format!("SET wal_compression = {method}")) {
            Ok(()) => return true,
            Err(e) => why = e.to_string(),
        }
    }
    progress(format!(
        "prune: the deletes' full-page images are written uncompressed ({}): \
         wal_compression = lz4 in postgresql.conf (or a superuser DATABASE_URL for prune) makes them smaller",
        why.trim()
    ));
    false
}

fn prune_parted(
    conn: &mut PgConnection,
    t: &Parted,
    cutoff: Option<DateTime<Utc>>,
    dry_run: bool,
    progress: &mut dyn FnMut(String),
) -> QueryResult<Removed> {
    let mut r = Removed {
        table: t.table,
        cutoff,
        ..Removed::default()
    };
    let Some(cutoff) = cutoff else {
        return Ok(r);
    };
    let bounds: Vec<Bound> = diesel::sql_query(
        "SELECT partition::text AS name, from_ts, to_ts, detach_pending \
         FROM haoka_sync_partitions.bounds WHERE parent = $1::regclass ORDER BY from_ts",
    )
    .bind::<Text, _>(t.table)
    .load(conn)?;
    let parts: Vec<Partition> = bounds
        .iter()
        .map(|b| Partition {
            name: b.name.clone(),
            from: b.from_ts,
            to: b.to_ts,
        })
        .collect();
    let plan = plan_partitions(&parts, cutoff);
    for name in &plan.drop {
        let pending = bounds.iter().any(|b| &b.name == name && b.detach_pending);
        let bytes: Count = diesel::sql_query("SELECT pg_total_relation_size($1::regclass) AS n")
            .bind::<Text, _>(name)
            .get_result(conn)?;
        r.bytes_freed += bytes.n;
        r.partitions_dropped += 1;
        if dry_run {
            // Counted below with the rest before the cutoff.
            continue;
        }
        let rows = partition_rows(conn, name)?;
        r.rows += rows.n;
        // Concurrently: the writers of the newer months never wait. An
        // interrupted detach left the partition pending: finish it.
        let detach = if pending { "FINALIZE" } else { "CONCURRENTLY" };
        let dropping = Instant::now();
        conn.batch_execute(&format!(
            "ALTER TABLE {} DETACH PARTITION {name} {detach}",
            t.table
        ))?;
        conn.batch_execute(&format!("DROP TABLE {name}"))?;
        // Paced like the batches: the writers keep most of the machine.
        std::thread::sleep(rest_after_drop(dropping.elapsed(), bytes.n, PACE));
        progress(format!(
            "prune: {}: dropped partition {name} ({} rows, {} bytes)",
            t.table, rows.n, bytes.n
        ));
    }
    let straddling = Trim {
        table: t.table,
        key: t.key,
        before: t.column,
        also: "",
        order: t.column,
        order_type: "timestamptz",
    };
    let deleted = delete_old(conn, &straddling, Some(cutoff), dry_run, progress)?;
    r.rows += deleted.rows;
    Ok(r)
}

/// Rows of a partition about to be dropped: counted when small, else the
/// statistics' number (reading a large one whole would only slow the
/// writers down).
fn partition_rows(conn: &mut PgConnection, name: &str) -> QueryResult<Count> {
    #[derive(QueryableByName)]
    struct Size {
        #[diesel(sql_type = BigInt)]
        pages: i64,
        #[diesel(sql_type = BigInt)]
        estimate: i64,
    }
    let size: Size = diesel::sql_query(
        "SELECT c.relpages::bigint AS pages, \
                greatest(c.reltuples::bigint, coalesce(s.n_live_tup, 0))::bigint AS estimate \
         FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = $1::regclass",
    )
    .bind::<Text, _>(name)
    .get_result(conn)?;
    if size.pages > COUNT_PAGES {
        return Ok(Count { n: size.estimate });
    }
    diesel::sql_query(format!("SELECT count(*) AS n FROM {name}")).get_result(conn)
}

/// Delete the rows of `t` before `cutoff` in batches of `BATCH`, each its
/// own transaction, resting `PACE` times as long as the batch took; in a
/// dry run, count them. Keyset batches: each starts at the last `order`
/// value the one before deleted, so a batch reads about the rows it
/// deletes, not the index entries of every row deleted before it (dead
/// until a vacuum).
fn delete_old(
    conn: &mut PgConnection,
    t: &Trim,
    cutoff: Option<DateTime<Utc>>,
    dry_run: bool,
    progress: &mut dyn FnMut(String),
) -> QueryResult<Removed> {
    let table = t.table;
    let mut r = Removed {
        table,
        cutoff,
        ..Removed::default()
    };
    let Some(cutoff) = cutoff else {
        return Ok(r);
    };
    let rows = format!("{} < $1{}", t.before, t.also);
    // `(id, at)` IN (SELECT id, at ...) for a composite key.
    let columns = t.key.trim_start_matches('(').trim_end_matches(')');
    let delete = format!(
        "WITH gone AS ( \
           DELETE FROM {table} WHERE {key} IN \
             (SELECT {columns} FROM {table} WHERE {rows} \
                AND ($3::text IS NULL OR {order} >= $3::text::{ty}) \
              ORDER BY {order} LIMIT $2) \
           RETURNING {order} AS k) \
         SELECT count(*) AS n, max(k)::text AS last FROM gone",
        key = t.key,
        order = t.order,
        ty = t.order_type,
    );
    let count = format!("SELECT count(*) AS n FROM {table} WHERE {rows}");
    if dry_run {
        let c: Count = diesel::sql_query(&count)
            .bind::<Timestamptz, _>(cutoff)
            .get_result(conn)?;
        r.rows = c.n;
        return Ok(r);
    }
    #[derive(QueryableByName)]
    struct Batch {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = Nullable<Text>)]
        last: Option<String>,
    }
    let started = Instant::now();
    let mut said = Instant::now();
    let mut last: Option<String> = None;
    loop {
        let t = Instant::now();
        let b: Batch = diesel::sql_query(&delete)
            .bind::<Timestamptz, _>(cutoff)
            .bind::<BigInt, _>(BATCH)
            .bind::<Nullable<Text>, _>(last.as_deref())
            .get_result(conn)?;
        r.rows += b.n;
        if b.n < BATCH {
            break;
        }
        last = b.last;
        if said.elapsed() >= Duration::from_secs(2) {
            said = Instant::now();
            progress(format!(
                "prune: {table}: {} rows deleted ({:.0}s)",
                r.rows,
                started.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep((t.elapsed() * PACE).min(Duration::from_secs(2)));
    }
    Ok(r)
}

/// One line for the log and `prune`'s stdout: `prune: inbound_callbacks
/// 1200 rows (2 partitions dropped, 1.5 MB freed), vendor_calls 0 rows,
/// order_events 30 rows, order_change_log 12 rows`, kept tables as `kept`.
pub fn summary(removed: &[Removed], dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    let parts: Vec<String> = removed
        .iter()
        .map(|r| match r.cutoff {
            None => format!("{} kept (off)", r.table),
            Some(_) if r.partitions_dropped > 0 => format!(
                "{} {} rows ({} partition{} dropped, {} freed)",
                r.table,
                r.rows,
                r.partitions_dropped,
                if r.partitions_dropped == 1 { "" } else { "s" },
                human_bytes(r.bytes_freed)
            ),
            Some(_) => format!("{} {} rows", r.table, r.rows),
        })
        .collect();
    format!("{verb}: {}", parts.join(", "))
}

fn human_bytes(b: i64) -> String {
    let b = b.max(0) as f64;
    match b {
        b if b >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GB", b / 1024.0 / 1024.0 / 1024.0),
        b if b >= 1024.0 * 1024.0 => format!("{:.1} MB", b / 1024.0 / 1024.0),
        b if b >= 1024.0 => format!("{:.0} kB", b / 1024.0),
        b => format!("{b:.0} B"),
    }
}
