//! Retention: `prune` removes exactly the rows past `RETENTION` from each
//! append-only table (whole monthly partitions dropped, their disk given
//! back; the straddling month and the unpartitioned tables trimmed by
//! batches), leaves `orders` and newer rows alone, and is idempotent; a dry
//! run counts the same and removes nothing; RequidId dedup holds across a
//! partition boundary and past the inbox's retention; `serve` prunes by
//! itself and two replicas never prune at once.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use haoka_sync::config::Config;
use haoka_sync::startup::Application;

use crate::helpers::*;

/// Days back of each backdated row: every 9 days over 15 months, each at
/// noon-ish offsets so that none sits within hours of a cutoff.
fn ages() -> Vec<i64> {
    (0..51).map(|k| k * 9 + 1).collect()
}

/// Rows in every append-only table at each age, and a few orders.
fn fill(c: &mut PgConnection) {
    let ages = ages()
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    c.batch_execute(&format!(
        "INSERT INTO orders (vendor, order_id, status) VALUES ('haoka172', 'O1', 'shipped'), ('haoka172', 'O2', 'pending');
         INSERT INTO inbound_callbacks (vendor, received_at, outcome, headers, body, body_size, request_id)
           SELECT 'haoka172', now() - make_interval(days => a, hours => 12), 'applied', '{{}}', repeat('x', 2000), 2000, 'R' || a || '-' || n
           FROM unnest(ARRAY[{ages}]) a, generate_series(1, 20) n;
         INSERT INTO vendor_calls (vendor, called_at, api, order_ids, caller, outcome)
           SELECT 'haoka172', now() - make_interval(days => a, hours => 12), 'GetOrderInfo', ARRAY['O1'], 'test', 'ok'
           FROM unnest(ARRAY[{ages}]) a, generate_series(1, 5) n;
         INSERT INTO order_events (vendor, order_id, source, status, applied, effect, request_id, observed, received_at)
           SELECT 'haoka172', 'O1', 'callback', 'shipped', true, 'same', 'E' || a || '-' || n, '{{}}', now() - make_interval(days => a, hours => 12)
           FROM unnest(ARRAY[{ages}]) a, generate_series(1, 4) n;
         -- More rows at one instant than a delete batch takes: the keyset
         -- batches resume at a tie and leave none of them behind.
         INSERT INTO order_events (vendor, order_id, source, status, applied, effect, request_id, observed, received_at)
           SELECT 'haoka172', 'O1', 'callback', 'shipped', true, 'same', 'T' || n, '{{}}', now() - interval '200 days 5 hours'
           FROM generate_series(1, {tie}) n;
         INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at, order_seq)
           SELECT nextval('order_change_log_id_seq'), 0, 'haoka172', 'O1', 'pending', 'shipped', 'callback', now() - make_interval(days => a, hours => 12), 1
           FROM unnest(ARRAY[{ages}]) a, generate_series(1, 2) n",
        tie = haoka_sync::store::retention::BATCH * 2 + 7
    ))
    .unwrap();
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = Nullable<BigInt>)]
    n: Option<i64>,
}

fn scalar(c: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<N>(c)
        .unwrap()
        .n
        .unwrap_or(0)
}

/// Rows of `table` at or after `cutoff` by its time column.
fn newer(c: &mut PgConnection, table: &str, col: &str, cutoff: DateTime<Utc>) -> i64 {
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM {table} WHERE {col} >= $1"
    ))
    .bind::<Timestamptz, _>(cutoff)
    .get_result::<N>(c)
    .unwrap()
    .n
    .unwrap_or(0)
}

/// The disk the partitions of `parent` take (a partitioned parent has none).
fn disk(c: &mut PgConnection, parent: &str) -> i64 {
    scalar(
        c,
        &format!(
            "SELECT sum(pg_total_relation_size(partition))::bigint AS n FROM haoka_sync_partitions.bounds WHERE parent = '{parent}'::regclass"
        ),
    )
}

const RETENTION: &str = "inbound=30d,events=100d,vendor_calls=45d";

fn prune(db: &TestDb, dry_run: bool) -> String {
    let mut args = vec!["prune"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = crate::cli::cmd()
        .env("DATABASE_URL", db.url.expose())
        .env("RETENTION", RETENTION)
        .env("HOSTNAME", "tester")
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `table N rows` in a prune line.
fn said(line: &str, table: &str) -> i64 {
    let at = line
        .find(&format!("{table} "))
        .unwrap_or_else(|| panic!("{table} in {line}"));
    line[at + table.len() + 1..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{table} count in {line}"))
}

#[test]
fn prune_removes_exactly_the_rows_past_retention_and_gives_the_disk_back() {
    let db = TestDb::new();
    let mut c = db.conn();
    fill(&mut c);
    let now = Utc::now();
    let cut = |d: i64| now - chrono::Duration::days(d);
    let tables = [
        ("inbound_callbacks", "received_at", cut(30)),
        ("vendor_calls", "called_at", cut(45)),
        ("order_events", "received_at", cut(100)),
        ("order_change_log", "at", cut(100)),
    ];
    let before: Vec<(i64, i64)> = tables
        .iter()
        .map(|(t, col, cutoff)| {
            (
                scalar(&mut c, &format!("SELECT count(*) AS n FROM {t}")),
                newer(&mut c, t, col, *cutoff),
            )
        })
        .collect();
    let orders = scalar(&mut c, "SELECT count(*) AS n FROM orders");
    let disk_before = disk(&mut c, "inbound_callbacks");
    let parts_before = scalar(
        &mut c,
        "SELECT count(*) AS n FROM haoka_sync_partitions.bounds",
    );

    // A dry run counts what would go and removes nothing.
    let dry = prune(&db, true);
    assert!(dry.contains("dry run: nothing removed"), "{dry}");
    for ((t, ..), (all, kept)) in tables.iter().zip(&before) {
        assert_eq!(said(&dry, t), all - kept, "{t} in {dry}");
        assert_eq!(
            scalar(&mut c, &format!("SELECT count(*) AS n FROM {t}")),
            *all,
            "{t}"
        );
    }

    let done = prune(&db, false);
    for ((t, col, cutoff), (all, kept)) in tables.iter().zip(&before) {
        assert!(all > kept && *kept > 0, "{t}: the fill spans the cutoff");
        assert_eq!(said(&done, t), all - kept, "{t} in {done}");
        // Exactly the rows past retention left: every newer row is there.
        assert_eq!(
            scalar(&mut c, &format!("SELECT count(*) AS n FROM {t}")),
            *kept,
            "{t}"
        );
        assert_eq!(newer(&mut c, t, col, *cutoff), *kept, "{t}");
    }
    assert_eq!(scalar(&mut c, "SELECT count(*) AS n FROM orders"), orders);
    // Whole months went as partitions, and their disk with them.
    assert!(done.contains("partitions dropped"), "{done}");
    let parts_after = scalar(
        &mut c,
        "SELECT count(*) AS n FROM haoka_sync_partitions.bounds",
    );
    assert!(
        parts_after < parts_before,
        "{parts_before} -> {parts_after}"
    );
    let disk_after = disk(&mut c, "inbound_callbacks");
    assert!(
        disk_after * 2 < disk_before,
        "inbound_callbacks: {disk_before} -> {disk_after} bytes"
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) AS n FROM haoka_sync_partitions.bounds WHERE parent = 'inbound_callbacks'::regclass AND to_ts <= now() - interval '30 days'",
        ),
        0
    );
    // Recorded.
    let runs = scalar(
        &mut c,
        "SELECT count(*) AS n FROM retention_runs WHERE finished_at IS NOT NULL AND error IS NULL AND owner LIKE 'tester:%'",
    );
    assert_eq!(runs, 2);

    // Again: nothing more to remove.
    let again = prune(&db, false);
    for (t, ..) in &tables {
        assert_eq!(said(&again, t), 0, "{t} in {again}");
    }
}

#[test]
fn prune_keeps_pending_deliveries_with_their_changes_and_attempts() {
    let db = TestDb::new();
    let mut c = db.conn();
    // Four changes of O1: three past the events' retention (200 days old),
    // delivered, exhausted and still pending, and one of today, delivered;
    // each delivery with two attempts of its age.
    c.batch_execute(
        "INSERT INTO forward_targets (id, name, url, secret) VALUES (1, 't', 'http://127.0.0.1:9/', 'whsec_AAAA');
         INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at, order_seq)
           SELECT k, 0, 'haoka172', 'O1', 'pending', 'shipped', 'callback', now() - make_interval(days => d), k
           FROM (VALUES (1, 200), (2, 200), (3, 200), (4, 0)) v(k, d);
         INSERT INTO forward_deliveries (target_id, change_id, vendor, order_id, seq, webhook_id, payload, state, created_at)
           SELECT 1, k, 'haoka172', 'O1', k, 'msg_' || k || '_1', '{}', s, now() - make_interval(days => d)
           FROM (VALUES (1, 200, 'delivered'), (2, 200, 'exhausted'), (3, 200, 'pending'), (4, 0, 'delivered')) v(k, d, s);
         INSERT INTO forward_attempts (delivery_id, at, worker, http_status, latency_ms)
           SELECT d.id, d.created_at, 'w', 500, 3 FROM forward_deliveries d, generate_series(1, 2)",
    )
    .unwrap();
    let out = prune(&db, false);
    let line = out
        .lines()
        .find(|l| l.contains("forward_deliveries "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(said(line, "forward_deliveries"), 2, "{out}");
    assert_eq!(said(line, "forward_attempts"), 4, "{out}");
    assert_eq!(said(line, "order_change_log"), 2, "{out}");
    let ids = |c: &mut PgConnection, sql: &str| -> Vec<i64> {
        #[derive(QueryableByName)]
        struct I {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        diesel::sql_query(sql)
            .load::<I>(c)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect()
    };
    assert_eq!(
        ids(&mut c, "SELECT id FROM order_change_log ORDER BY id"),
        [3, 4],
        "the pending delivery's change is kept"
    );
    assert_eq!(
        ids(
            &mut c,
            "SELECT change_id AS id FROM forward_deliveries ORDER BY id"
        ),
        [3, 4]
    );
    assert_eq!(
        ids(
            &mut c,
            "SELECT d.change_id AS id FROM forward_attempts a JOIN forward_deliveries d ON d.id = a.delivery_id ORDER BY d.change_id, a.id"
        ),
        [3, 3, 4, 4]
    );
    // Delivered at last, it goes with the next prune, change and all.
    c.batch_execute("UPDATE forward_deliveries SET state = 'delivered' WHERE change_id = 3")
        .unwrap();
    let out = prune(&db, false);
    assert!(out.contains("forward_deliveries 1 "), "{out}");
    assert_eq!(
        ids(&mut c, "SELECT id FROM order_change_log ORDER BY id"),
        [4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requid_id_redelivered_after_its_partition_boundary_is_a_duplicate() {
    let app = TestApp::spawn_with(&[CONFIRM_OFF]).await;
    let mut c = app.db.conn();
    assert_eq!(app.send("R-OLD", "D1", "待处理").await.0, 200);
    // Its inbox row and event move to the month before last (another
    // partition), 40 days back.
    c.batch_execute(
        "UPDATE inbound_callbacks SET received_at = now() - interval '40 days' WHERE request_id = 'R-OLD';
         UPDATE order_events SET received_at = now() - interval '40 days' WHERE request_id = 'R-OLD'",
    )
    .unwrap();
    let parts = scalar(
        &mut c,
        "SELECT count(DISTINCT tableoid)::bigint AS n FROM inbound_callbacks WHERE request_id = 'R-OLD'",
    );
    assert_eq!(parts, 1);
    assert_eq!(app.send("R-OLD", "D1", "已发货").await.0, 200);
    let outcomes = |c: &mut PgConnection| -> Vec<String> {
        #[derive(QueryableByName)]
        struct O {
            #[diesel(sql_type = diesel::sql_types::Text)]
            outcome: String,
        }
        diesel::sql_query(
            "SELECT outcome FROM inbound_callbacks WHERE request_id = 'R-OLD' ORDER BY received_at",
        )
        .load::<O>(c)
        .unwrap()
        .into_iter()
        .map(|o| o.outcome)
        .collect()
    };
    assert_eq!(outcomes(&mut c), ["applied", "duplicate"]);
    let distinct_parts = scalar(
        &mut c,
        "SELECT count(DISTINCT tableoid)::bigint AS n FROM inbound_callbacks WHERE request_id = 'R-OLD'",
    );
    assert_eq!(
        distinct_parts, 2,
        "the two rows are in different partitions"
    );
    assert_eq!(order(&mut c, "D1").unwrap().status, "pending");

    // Past the inbox's retention the first row goes, the event stays (events
    // are kept at least as long): still a duplicate. (The service's own
    // look at start is done first: one process prunes at a time.)
    until_serve_pruned(&mut c).await;
    let out = crate::cli::cmd()
        .env("DATABASE_URL", app.db.url.expose())
        .env("RETENTION", "inbound=30d")
        .args(["prune"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(outcomes(&mut c), ["duplicate"]);
    assert_eq!(app.send("R-OLD", "D1", "已发货").await.0, 200);
    assert_eq!(outcomes(&mut c), ["duplicate", "duplicate"]);
    assert_eq!(order(&mut c, "D1").unwrap().status, "pending");
}

/// Until `serve`'s prune at start has finished.
async fn until_serve_pruned(c: &mut PgConnection) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = scalar(
            c,
            "SELECT count(*) AS n FROM retention_runs WHERE finished_at IS NOT NULL",
        );
        let running = scalar(
            c,
            "SELECT count(*) AS n FROM retention_runs WHERE finished_at IS NULL",
        );
        if done >= 1 && running == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no prune by serve");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_prunes_by_itself_and_two_replicas_never_prune_at_once() {
    let db = TestDb::new();
    let mut c = db.conn();
    fill(&mut c);
    let cutoff = Utc::now() - chrono::Duration::days(30);
    let kept = newer(&mut c, "inbound_callbacks", "received_at", cutoff);
    let vars = |name: &'static str| {
        vec![
            ("DATABASE_URL", db.url.expose().to_owned()),
            ("HAOKA_SYNC_BIND", "127.0.0.1:0".to_owned()),
            ("POLL_CRON", "0 0 0 1 1 *".to_owned()),
            ("RETENTION", RETENTION.to_owned()),
            ("HOSTNAME", name.to_owned()),
        ]
    };
    // Two replicas start together; each looks at once whether a prune is due.
    let mut apps = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let v = vars(name);
        let refs: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let app = Application::build(&Config::with(&refs).unwrap()).unwrap();
        apps.push(tokio::spawn(app.run_until_stopped()));
    }
    until_serve_pruned(&mut c).await;
    // Give the slower replica its look too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for a in &apps {
        a.abort();
    }
    assert_eq!(
        scalar(&mut c, "SELECT count(*) AS n FROM inbound_callbacks"),
        kept
    );
    // One prune ran: the replica that got the lock found it due, the other
    // (under the same lock, after it) found it fresh.
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) AS n FROM retention_runs WHERE trigger = 'serve' AND error IS NULL"
        ),
        1
    );
    // And none ever overlapped another.
    assert_eq!(
        scalar(
            &mut c,
            "SELECT count(*) AS n FROM retention_runs a JOIN retention_runs b ON a.id < b.id \
             AND tstzrange(a.started_at, a.finished_at) && tstzrange(b.started_at, b.finished_at)"
        ),
        0
    );
}
