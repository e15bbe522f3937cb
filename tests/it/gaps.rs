//! Callback gaps: a deployment-wide silence of 172 callbacks is found (while
//! it lasts, or afterwards between two callbacks), recorded once, and the
//! orders it may have hidden are made due for a query, once, after the
//! callbacks resume. Store-level tests run on a chosen clock; the last test
//! goes through the poller and the simulator's 172.

use chrono::{DateTime, Duration, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text, Timestamptz};
use haoka_sync::rules::gaps::GapPolicy;
use haoka_sync::store::gaps::{check, sweep, GapEvent};
use haoka_sync::vendors::Vendor;

use crate::helpers::*;
use haoka_sync::sim::Answer;

const V: Vendor = Vendor::Haoka172;

fn base() -> DateTime<Utc> {
    // Whole seconds: timestamps round-trip through PostgreSQL exactly.
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

/// Inbox rows heard (outcome applied) at these times.
fn heard(conn: &mut PgConnection, times: &[DateTime<Utc>]) {
    diesel::sql_query(
        "INSERT INTO inbound_callbacks (vendor, received_at, outcome, request_id, headers, body, body_size) \
         SELECT 'haoka172', t, 'applied', 'H' || row_number() OVER () || '-' || extract(epoch FROM t), '{}', '', 0 \
         FROM unnest($1::timestamptz[]) AS t",
    )
    .bind::<Array<Timestamptz>, _>(times)
    .execute(conn)
    .unwrap();
}

/// One callback every `every` minutes from `from` to `to`.
fn steady(from: DateTime<Utc>, to: DateTime<Utc>, every: i64) -> Vec<DateTime<Utc>> {
    let mut v = Vec::new();
    let mut t = from;
    while t <= to {
        v.push(t);
        t += Duration::minutes(every);
    }
    v
}

/// The same traffic (one callback every `every` minutes over the whole
/// day) on each of the 7 days before `day`.
fn past_week(conn: &mut PgConnection, day: DateTime<Utc>, every: i64) {
    for k in 1..=7 {
        let d = day - Duration::days(k);
        heard(
            conn,
            &steady(d - Duration::hours(12), d + Duration::hours(12), every),
        );
    }
}

fn add_order(
    conn: &mut PgConnection,
    id: &str,
    status: &str,
    last_heard: Option<DateTime<Utc>>,
    next_check: Option<DateTime<Utc>>,
    tracked: DateTime<Utc>,
) {
    diesel::sql_query(
        "WITH o AS (INSERT INTO orders (vendor, order_id, status, last_heard_at, created_at) \
                    VALUES ('haoka172', $1, $2, $3, $5)) \
         INSERT INTO order_polls (vendor, order_id, next_check_at, tracked_at) \
         VALUES ('haoka172', $1, $4, $5)",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(status)
    .bind::<Nullable<Timestamptz>, _>(last_heard)
    .bind::<Nullable<Timestamptz>, _>(next_check)
    .bind::<Timestamptz, _>(tracked)
    .execute(conn)
    .unwrap();
}

#[derive(QueryableByName)]
struct Next {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_check_at: Option<DateTime<Utc>>,
}

fn next_check(conn: &mut PgConnection, id: &str) -> Option<DateTime<Utc>> {
    diesel::sql_query(
        "SELECT next_check_at FROM order_polls WHERE vendor = 'haoka172' AND order_id = $1",
    )
    .bind::<Text, _>(id)
    .get_result::<Next>(conn)
    .unwrap()
    .next_check_at
}

#[derive(QueryableByName, Debug, PartialEq)]
struct GapRow {
    #[diesel(sql_type = Timestamptz)]
    silent_since: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    resumed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    swept_orders: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    closed_at: Option<DateTime<Utc>>,
}

fn gaps(conn: &mut PgConnection) -> Vec<GapRow> {
    diesel::sql_query(
        "SELECT silent_since, resumed_at, swept_orders, closed_at FROM callback_gaps ORDER BY id",
    )
    .load(conn)
    .unwrap()
}

#[test]
fn a_silence_found_after_a_restart_sweeps_the_orders_not_heard_since_once() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let p = GapPolicy::default();
    let t = base();
    let silent = t - Duration::hours(6);
    let resumed = t - Duration::hours(1);
    // A callback every 2 minutes, every day of the past week.
    past_week(c, t, 2);
    heard(c, &steady(t - Duration::hours(10), silent, 2));
    // The last pass before our downtime saw callbacks up to `silent`.
    assert_eq!(
        check(c, V, silent + Duration::minutes(1), &p).unwrap(),
        vec![]
    );
    // We were down; callbacks came back at `resumed`.
    heard(c, &steady(resumed, t, 2));
    let far = Some(t + Duration::days(5));
    add_order(
        c,
        "SHIPPED-SILENT",
        "shipped",
        Some(silent - Duration::hours(3)),
        far,
        t - Duration::days(9),
    );
    add_order(
        c,
        "PENDING-SILENT",
        "pending",
        Some(silent - Duration::hours(1)),
        far,
        t - Duration::days(1),
    );
    add_order(c, "NEVER-HEARD", "new", None, far, t - Duration::days(2));
    add_order(
        c,
        "HEARD-SINCE",
        "shipped",
        Some(resumed + Duration::minutes(10)),
        far,
        t - Duration::days(3),
    );
    add_order(
        c,
        "ALREADY-DUE",
        "pending",
        Some(silent - Duration::hours(2)),
        Some(t - Duration::minutes(1)),
        t - Duration::days(3),
    );
    add_order(
        c,
        "SETTLED",
        "settled",
        Some(silent - Duration::hours(2)),
        None,
        t - Duration::days(3),
    );

    let events = check(c, V, t, &p).unwrap();
    assert_eq!(
        events,
        vec![
            GapEvent::Resumed {
                since: silent,
                resumed_at: resumed,
                expected_per_day: 150,
            },
            GapEvent::Swept {
                since: silent,
                orders: 3,
                closing: true,
            },
        ]
    );
    // Due now, earlier statuses first; the others untouched.
    assert_eq!(
        next_check(c, "PENDING-SILENT"),
        Some(t - Duration::seconds(3))
    );
    assert_eq!(next_check(c, "NEVER-HEARD"), Some(t - Duration::seconds(3)));
    assert_eq!(
        next_check(c, "SHIPPED-SILENT"),
        Some(t - Duration::seconds(1))
    );
    assert_eq!(next_check(c, "HEARD-SINCE"), far);
    assert_eq!(next_check(c, "ALREADY-DUE"), Some(t - Duration::minutes(1)));
    assert_eq!(next_check(c, "SETTLED"), None);
    assert_eq!(
        gaps(c),
        vec![GapRow {
            silent_since: silent,
            resumed_at: Some(resumed),
            swept_orders: 3,
            closed_at: Some(t),
        }]
    );
    // Once: later looks neither record nor sweep it again.
    c.batch_execute("UPDATE order_polls SET next_check_at = now() + interval '5 days' WHERE next_check_at IS NOT NULL")
        .unwrap();
    assert_eq!(check(c, V, t + Duration::minutes(1), &p).unwrap(), vec![]);
    assert_eq!(check(c, V, t + Duration::minutes(30), &p).unwrap(), vec![]);
    assert_eq!(gaps(c).len(), 1);
    assert_eq!(
        count(
            c,
            "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE next_check_at <= now()"
        ),
        0
    );
}

#[test]
fn an_ongoing_silence_is_reported_once_resweeps_daily_and_recovers_after_it_settles() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let p = GapPolicy::default();
    let s = base() - Duration::days(3);
    past_week(c, s, 3);
    heard(c, &steady(s - Duration::hours(2), s, 3));
    assert_eq!(check(c, V, s + Duration::minutes(1), &p).unwrap(), vec![]);
    add_order(
        c,
        "QUIET",
        "submitted",
        Some(s - Duration::hours(5)),
        Some(s + Duration::days(20)),
        s - Duration::days(1),
    );

    // Shorter than `silence`: nothing yet.
    assert_eq!(check(c, V, s + Duration::minutes(59), &p).unwrap(), vec![]);
    // An hour without the usual 20 a day (here 20 an hour): callbacks are being lost.
    let events = check(c, V, s + Duration::minutes(61), &p).unwrap();
    assert_eq!(
        events,
        vec![GapEvent::Silent {
            since: s,
            expected_per_day: 20,
        }]
    );
    // Reported once.
    assert_eq!(check(c, V, s + Duration::minutes(90), &p).unwrap(), vec![]);
    assert_eq!(gaps(c).len(), 1);
    assert_eq!(next_check(c, "QUIET"), Some(s + Duration::days(20)));
    // A day after detection, still silent: the orders not heard for a day are due.
    let day_later = s + Duration::minutes(61) + Duration::days(1);
    assert_eq!(
        check(c, V, day_later, &p).unwrap(),
        vec![GapEvent::Swept {
            since: s,
            orders: 1,
            closing: false,
        }]
    );
    assert_eq!(
        next_check(c, "QUIET"),
        Some(day_later - Duration::seconds(2))
    );
    // The poller queried it (heard now); callbacks come back an hour later.
    c.batch_execute("UPDATE order_polls SET next_check_at = now() + interval '20 days'")
        .unwrap();
    diesel::sql_query("UPDATE orders SET last_heard_at = $1")
        .bind::<Timestamptz, _>(day_later)
        .execute(c)
        .unwrap();
    let back = day_later + Duration::hours(1);
    heard(c, &[back]);
    let events = check(c, V, back + Duration::minutes(5), &p).unwrap();
    assert!(
        matches!(events.as_slice(), [GapEvent::Resumed { since, resumed_at, .. }] if *since == s && *resumed_at == back),
        "{events:?}"
    );
    // Redeliveries may still arrive: no sweep before `settle` (15 min).
    assert_eq!(
        check(c, V, back + Duration::minutes(14), &p).unwrap(),
        vec![]
    );
    let settled = back + Duration::minutes(15);
    assert_eq!(
        check(c, V, settled, &p).unwrap(),
        vec![GapEvent::Swept {
            since: s,
            orders: 1,
            closing: true,
        }]
    );
    assert_eq!(next_check(c, "QUIET"), Some(settled - Duration::seconds(2)));
    assert_eq!(
        gaps(c),
        vec![GapRow {
            silent_since: s,
            resumed_at: Some(back),
            swept_orders: 2,
            closed_at: Some(settled),
        }]
    );
}

#[test]
fn a_quiet_night_or_a_small_deployment_is_no_gap() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let p = GapPolicy::default();
    let t = base();
    // Two callbacks an hour: a 5-hour silence usually holds 10, not 20.
    past_week(c, t, 30);
    let silent = t - Duration::hours(5);
    heard(c, &steady(silent - Duration::hours(3), silent, 30));
    assert_eq!(
        check(c, V, silent + Duration::minutes(1), &p).unwrap(),
        vec![]
    );
    add_order(
        c,
        "O1",
        "pending",
        Some(silent - Duration::hours(1)),
        Some(t + Duration::hours(3)),
        t - Duration::days(1),
    );
    assert_eq!(check(c, V, t, &p).unwrap(), vec![]);
    heard(c, &[t]);
    assert_eq!(check(c, V, t + Duration::hours(1), &p).unwrap(), vec![]);
    assert!(gaps(c).is_empty());
    assert_eq!(next_check(c, "O1"), Some(t + Duration::hours(3)));
    // Rejected requests are not callbacks heard: a silence full of them
    // (a wrong secret, say) is still a silence.
    let db = TestDb::new();
    let c = &mut db.conn();
    past_week(c, t, 2);
    heard(c, &steady(silent - Duration::hours(1), silent, 2));
    assert_eq!(
        check(c, V, silent + Duration::minutes(1), &p).unwrap(),
        vec![]
    );
    c.batch_execute(
        "INSERT INTO inbound_callbacks (vendor, received_at, outcome, headers, body, body_size) \
         SELECT 'haoka172', now() - g * interval '1 minute', 'bad_signature', '{}', '', 0 FROM generate_series(1, 100) g",
    )
    .unwrap();
    assert!(matches!(
        check(c, V, t, &p).unwrap().as_slice(),
        [GapEvent::Silent { .. }]
    ));
}

/// `n` tracked orders (and every tenth terminal): next checks in 7 groups of
/// equal times (ties across chunk boundaries), last heard before `since` for
/// odd numbers, after it for even ones.
fn many_orders(c: &mut PgConnection, n: i64, since: DateTime<Utc>, t: DateTime<Utc>) {
    diesel::sql_query(
        "WITH o AS (INSERT INTO orders (vendor, order_id, status, last_heard_at, created_at) \
           SELECT 'haoka172', 'M' || g, CASE WHEN g % 10 = 0 THEN 'settled' WHEN g % 3 = 0 THEN 'shipped' ELSE 'submitted' END, \
                  CASE WHEN g % 2 = 1 THEN $2 - interval '1 hour' ELSE $2 + interval '1 hour' END, \
                  $2 - interval '9 days' \
           FROM generate_series(1, $1) g) \
         INSERT INTO order_polls (vendor, order_id, next_check_at, tracked_at) \
         SELECT 'haoka172', 'M' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE $3 + (g % 7 + 1) * interval '1 day' END, \
                $2 - interval '9 days' \
         FROM generate_series(1, $1) g",
    )
    .bind::<diesel::sql_types::BigInt, _>(n)
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(t)
    .execute(c)
    .unwrap();
}

#[test]
fn a_large_sweep_commits_in_chunks_and_misses_no_order() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let t = base();
    let since = t - Duration::hours(5);
    many_orders(c, 2345, since, t);
    let silent_tracked = count(
        c,
        "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE next_check_at IS NOT NULL AND order_id::text ~ '[13579]$'",
    );
    let heard_tracked = count(
        c,
        "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE next_check_at IS NOT NULL AND order_id::text ~ '[02468]$'",
    );
    assert_eq!((silent_tracked, heard_tracked), (1173, 938));

    let done = sweep(c, V, since, t, 100).unwrap();
    assert_eq!(done.orders as i64, silent_tracked);
    // Every tracked order walked once, 100 per transaction.
    assert_eq!(
        done.chunks as i64,
        (silent_tracked + heard_tracked) / 100 + 1
    );
    assert_eq!(
        count(
            c,
            "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE next_check_at IS NOT NULL AND order_id ~ '[13579]$' \
             AND next_check_at <= now()"
        ),
        silent_tracked
    );
    assert_eq!(
        count(
            c,
            "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE order_id ~ '[02468]$' AND next_check_at > now() + interval '23 hours'"
        ),
        heard_tracked
    );
    assert_eq!(
        count(
            c,
            "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE status = 'settled' AND next_check_at IS NULL"
        ),
        234
    );
    // Submitted before shipped.
    assert_eq!(
        count(
            c,
            "SELECT count(DISTINCT next_check_at) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE order_id ~ '[13579]$' AND status = 'submitted'"
        ),
        1
    );
    assert!(
        count(
            c,
            "SELECT count(*) AS n FROM orders so JOIN order_polls s ON s.vendor = so.vendor AND s.order_id = so.order_id, \
                    orders ho JOIN order_polls h ON h.vendor = ho.vendor AND h.order_id = ho.order_id \
             WHERE so.status = 'submitted' AND ho.status = 'shipped' \
             AND s.order_id ~ '[13579]$' AND h.order_id ~ '[13579]$' AND s.next_check_at >= h.next_check_at"
        ) == 0
    );
    // Repeating it (a sweep taken over after a crash) finds nothing more.
    let again = sweep(c, V, since, t, 100).unwrap();
    assert_eq!(again.orders, 0);
}

/// Silence is judged by the last callback, or, for an order never heard
/// of, by when its tracking began; only orders due later than now, and with
/// a status that is ever asked about, are made due.
#[test]
fn a_sweep_judges_silence_by_the_last_callback_else_by_the_start_of_tracking() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let t = base();
    let since = t - Duration::hours(5);
    let far = Some(t + Duration::days(2));
    let soon = Some(t + Duration::seconds(1));
    // Minutes after `since`; seconds before now.
    let m = |minutes: i64| since + Duration::minutes(minutes);
    let ago = |secs: i64| Some(t - Duration::seconds(secs));
    let (silent, old) = (Some(m(-60)), m(-24 * 60));
    // id, status, last heard, next check, tracked since, next check after
    let orders = [
        ("RETRACKED", "shipped", silent, far, m(60), ago(1)),
        ("HEARD-SINCE", "pending", Some(m(1)), far, old, far),
        ("UNHEARD-NEW", "new", None, far, m(60), far),
        ("UNHEARD-OLD", "new", None, far, m(-1), ago(3)),
        ("HEARD-AT-SINCE", "pending", Some(since), far, old, far),
        ("DUE-NOW", "pending", silent, Some(t), old, Some(t)),
        ("TERMINAL", "settled", silent, far, old, far),
        ("COMPLETED", "completed", silent, far, old, Some(t)),
        ("SUBMITTED", "submitted", silent, soon, old, ago(2)),
    ];
    for (id, status, heard, next, tracked, _) in orders {
        add_order(c, id, status, heard, next, tracked);
    }
    // Two orders a chunk: chunk boundaries fall between equal next checks.
    let done = sweep(c, V, since, t, 2).unwrap();
    assert_eq!((done.orders, done.chunks), (4, 5));
    for (id, _, _, _, _, after) in orders {
        assert_eq!(next_check(c, id), after, "{id}");
    }
}

#[test]
fn a_sweep_left_by_a_process_that_died_is_taken_over_after_its_lease() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let p = GapPolicy::default();
    let t = base();
    let since = t - Duration::hours(5);
    many_orders(c, 50, since, t);
    // A gap that resumed and settled; another process began its recovery
    // sweep 5 minutes ago and died half way.
    diesel::sql_query(
        "INSERT INTO callback_gaps (vendor, silent_since, resumed_at, detected_at, expected_callbacks, sweep_started_at) \
         VALUES ('haoka172', $1, $2, $2, 150, $3)",
    )
    .bind::<Timestamptz, _>(since - Duration::hours(1))
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(t - Duration::minutes(5))
    .execute(c)
    .unwrap();
    assert_eq!(check(c, V, t, &p).unwrap(), vec![]);
    assert_eq!(gaps(c)[0].closed_at, None);
    let later = t + Duration::minutes(5);
    assert_eq!(
        check(c, V, later, &p).unwrap(),
        vec![GapEvent::Swept {
            since: since - Duration::hours(1),
            orders: 25,
            closing: true,
        }]
    );
    let g = gaps(c);
    assert_eq!((g[0].swept_orders, g[0].closed_at), (25, Some(later)));
    assert_eq!(
        count(
            c,
            "SELECT count(*) AS n FROM callback_gaps WHERE sweep_started_at IS NULL"
        ),
        1
    );
}

#[tokio::test]
async fn after_a_callback_gap_the_next_pass_queries_the_orders_not_heard_since() {
    // No settling: recover in the pass that sees the callbacks back.
    let (app, sim) = TestApp::with_sim(&[("HAOKA172_CALLBACK_GAP", "settle=0")]).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("已发货".into())));
    let t = base();
    {
        let c = &mut app.db.conn();
        past_week(c, t, 2);
        heard(
            c,
            &steady(t - Duration::hours(8), t - Duration::hours(3), 2),
        );
    }
    app.track(&["T1", "T2"]).await;
    // The first pass marks where it looked; a 3-hour silence is going on.
    let first = app.poll().await;
    assert_eq!(first.queried, 0, "{first}");
    assert_eq!(gaps(&mut app.db.conn()).len(), 1);
    // Callbacks come back.
    assert_eq!(app.send("R1", "P1", "待处理").await.0, 200);
    let s = app.poll().await;
    assert_eq!(s.queried, 2, "{s}");
    assert_eq!(fake.calls_for("T1"), 1);
    assert_eq!(fake.calls_for("T2"), 1);
    assert_eq!(fake.calls_for("P1"), 0, "heard after the gap: not queried");
    let g = gaps(&mut app.db.conn());
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].swept_orders, 2);
    assert!(g[0].closed_at.is_some());
    // With the feature off nothing is recorded (the default schedule would
    // not query these orders for another 30 minutes).
    let off =
        TestApp::spawn_with(&[fake.env().as_slice(), &[("HAOKA172_CALLBACK_GAP", "off")]].concat())
            .await;
    {
        let c = &mut off.db.conn();
        past_week(c, t, 2);
        heard(
            c,
            &steady(t - Duration::hours(8), t - Duration::hours(3), 2),
        );
    }
    off.track(&["U1"]).await;
    assert_eq!(off.poll().await.queried, 0);
    assert_eq!(off.send("R1", "P1", "待处理").await.0, 200);
    assert_eq!(off.poll().await.queried, 0);
    assert!(gaps(&mut off.db.conn()).is_empty());
}
