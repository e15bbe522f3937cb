//! New schedule settings reach the orders already scheduled: the walk of
//! `store::schedule` (once per change, in chunks, resumable, one process at
//! a time, leaving terminal, expired, due and leased orders alone), and a
//! real `serve` (`TestApp`) and `poll-once` after a change.

use std::process::Command;

use chrono::{DateTime, Duration as Td, SubsecRound, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Nullable, Text, Timestamptz};
use haoka_sync::config::Config;
use haoka_sync::rules::reschedule::ScheduleSettings;
use haoka_sync::rules::schedule::Schedule;
use haoka_sync::rules::status::{Observation, OrderFields, SignedOver, Source, Status};
use haoka_sync::store::poll::{self as pstore, PollResult};
use haoka_sync::store::schedule::{self as sstore, Begin, Chunk, RESCHEDULE_LEASE};
use haoka_sync::store::{apply_batch, Item};
use haoka_sync::vendors::Vendor;

use crate::helpers::*;

const V: Vendor = Vendor::Haoka172;

fn schedule(vars: &[(&str, &str)]) -> Schedule {
    Config::with(vars).unwrap().schedule()
}

fn obs(order: &str, status: Status, label: &str, source: Source) -> Observation {
    Observation {
        vendor: V,
        order_id: order.into(),
        source,
        vendor_status: Some(label.into()),
        status,
        fields: OrderFields::default(),
    }
}

/// Callbacks for `orders`, all heard at `at` (one batch).
fn callbacks(
    c: &mut PgConnection,
    orders: &[(&str, Status, &str)],
    at: DateTime<Utc>,
    s: &Schedule,
) {
    let obs: Vec<Observation> = orders
        .iter()
        .map(|(id, st, label)| obs(id, *st, label, Source::Callback))
        .collect();
    let rids: Vec<String> = orders
        .iter()
        .map(|(id, ..)| format!("R-{id}-{at}"))
        .collect();
    let items: Vec<Item<'_>> = obs
        .iter()
        .zip(&rids)
        .map(|(o, r)| Item {
            obs: o,
            request_id: Some(r),
            signed_over: Some(SignedOver::OrderId),
        })
        .collect();
    c.transaction(|c| apply_batch(c, &items, at, s)).unwrap();
}

#[derive(Debug, Clone, PartialEq, QueryableByName)]
struct Poll {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_check_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Integer)]
    quiet_polls: i32,
    #[diesel(sql_type = Nullable<Text>)]
    lease_owner: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lease_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Integer)]
    calls_today: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    tracking_expired_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_polled_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    last_heard_at: Option<DateTime<Utc>>,
}

fn polls(c: &mut PgConnection) -> Vec<Poll> {
    diesel::sql_query(
        "SELECT p.order_id, p.next_check_at, p.quiet_polls, p.lease_owner, p.lease_until, p.calls_today, \
                p.tracking_expired_at, p.last_polled_at, o.last_heard_at \
         FROM order_polls p JOIN orders o USING (vendor, order_id) ORDER BY p.order_id",
    )
    .load(c)
    .unwrap()
}

fn poll_of<'a>(rows: &'a [Poll], id: &str) -> &'a Poll {
    rows.iter().find(|p| p.order_id == id).unwrap()
}

fn begin(c: &mut PgConnection, s: &Schedule, owner: &str, now: DateTime<Utc>) -> Begin {
    sstore::begin(c, V, &s.settings(V), owner, RESCHEDULE_LEASE, now).unwrap()
}

/// Chunks until done; the chunks it took.
fn walk(
    c: &mut PgConnection,
    s: &Schedule,
    owner: &str,
    chunk: i64,
    now: DateTime<Utc>,
) -> Vec<Chunk> {
    let mut out = Vec::new();
    loop {
        let done = sstore::reschedule_chunk(c, V, s, owner, RESCHEDULE_LEASE, chunk, now)
            .unwrap()
            .expect("the walk is ours");
        out.push(done);
        if done.done {
            return out;
        }
        assert!(out.len() < 100, "a walk that never ends");
    }
}

fn settings_row(c: &mut PgConnection) -> (ScheduleSettings, bool, i64, i64) {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        settings: serde_json::Value,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        running: bool,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        walked: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        moved: i64,
    }
    let r: Row = diesel::sql_query(
        "SELECT settings, rescheduling_to IS NOT NULL AS running, walked, moved \
         FROM schedule_settings WHERE vendor = 'haoka172'",
    )
    .get_result(c)
    .unwrap();
    (
        serde_json::from_value(r.settings).unwrap(),
        r.running,
        r.walked,
        r.moved,
    )
}

/// Tracked orders of every kind, all heard at the same instants (so that
/// any cursor on time would tie across chunk boundaries): five shipped by
/// callback, three new, one pending with a failed query (an hour from
/// `t0`), one due now, one leased to a pass; and, not tracked, one
/// terminal and one expired.
fn orders_of_every_kind(c: &mut PgConnection, a: &Schedule, t0: DateTime<Utc>) {
    let ids: Vec<String> = [
        "D1", "E1", "L1", "N1", "N2", "N3", "P1", "S1", "S2", "S3", "S4", "S5", "T1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    pstore::register(c, V, &ids, a, t0).unwrap();
    let heard = t0 + Td::minutes(1);
    let shipped: Vec<(&str, Status, &str)> = ["S1", "S2", "S3", "S4", "S5"]
        .iter()
        .map(|id| (*id, Status::Shipped, "已发货"))
        .collect();
    callbacks(c, &shipped, heard, a);
    callbacks(
        c,
        &[
            ("P1", Status::Pending, "待处理"),
            ("T1", Status::Settled, "已结算"),
            ("D1", Status::Shipped, "已发货"),
            ("L1", Status::Shipped, "已发货"),
            ("E1", Status::Shipped, "已发货"),
        ],
        heard,
        a,
    );
    // P1: a query that failed, an hour later (a quiet poll).
    let failed = PollResult::Failed { outcome: "timeout" };
    let asked = t0 + Td::hours(1);
    pstore::record_poll(c, V, "P1", "test", failed, a, asked, asked, &[]).unwrap();
    c.batch_execute(
        "UPDATE order_polls SET next_check_at = now() - interval '1 minute' WHERE order_id = 'D1'; \
         UPDATE order_polls SET lease_owner = 'another-pass', lease_until = now() + interval '4 minutes' WHERE order_id = 'L1'; \
         UPDATE order_polls SET next_check_at = NULL, tracking_expired_at = now() WHERE order_id = 'E1'",
    )
    .unwrap();
}

#[test]
fn a_changed_setting_moves_every_tracked_order_once_in_chunks_and_nothing_else() {
    let db = TestDb::new();
    let mut c = db.conn();
    let a = schedule(&[]);
    let b = schedule(&[("HAOKA172_OVERDUE", "shipped=0s")]);
    let now = Utc::now();
    let t0 = now - Td::minutes(10);
    // The first start records its settings and moves nothing.
    assert_eq!(begin(&mut c, &a, "p1", now), Begin::Recorded);
    orders_of_every_kind(&mut c, &a, t0);
    assert_eq!(begin(&mut c, &a, "p1", now), Begin::UpToDate);
    let before = polls(&mut c);
    assert!(
        before
            .iter()
            .filter(|p| p.order_id.starts_with('S'))
            .all(|p| p.next_check_at == p.last_heard_at.map(|h| h + Td::days(7))),
        "scheduled under shipped=7d: {before:#?}"
    );

    // shipped=0s: a walk, two orders per chunk.
    let Begin::Reschedule(plan) = begin(&mut c, &b, "p1", now) else {
        panic!("a change starts a walk")
    };
    assert_eq!(plan.tracked, 11, "every order with a next check");
    assert_eq!(plan.from, Some(a.settings(V)));
    assert_eq!(plan.resumed, None);
    let chunks = walk(&mut c, &b, "p1", 2, now);
    assert_eq!(chunks.len(), 6, "11 orders, 2 a chunk: {chunks:?}");
    assert!(chunks.iter().all(|k| k.walked <= 2));
    assert_eq!(chunks.iter().map(|k| k.walked).sum::<usize>(), 11);
    assert_eq!(chunks.iter().map(|k| k.moved).sum::<usize>(), 5);
    assert_eq!(chunks.iter().map(|k| k.due_now).sum::<usize>(), 5);

    let after = polls(&mut c);
    for p in &after {
        let was = poll_of(&before, &p.order_id);
        if p.order_id.starts_with('S') {
            // Due at once: heard of 9 minutes ago, 0 s to wait.
            assert_eq!(p.next_check_at, p.last_heard_at, "{p:?}");
            assert!(p.next_check_at.unwrap() <= now);
            assert_eq!(
                Poll {
                    next_check_at: was.next_check_at,
                    ..p.clone()
                },
                *was,
                "only the next check moves"
            );
        } else {
            // New and pending orders keep their times (their waits did not
            // change: the rule gives them back the same, backoff jitter
            // included); terminal, expired, due and leased orders are not
            // touched.
            assert_eq!(p, was, "{}", p.order_id);
        }
    }
    assert_eq!(
        settings_row(&mut c),
        (b.settings(V), false, 11, 5),
        "recorded by the last chunk"
    );
    // The 大麦家 orders are a walk of their own (none here).
    assert_eq!(
        sstore::begin(
            &mut c,
            Vendor::Damaijia,
            &b.settings(Vendor::Damaijia),
            "p1",
            RESCHEDULE_LEASE,
            now
        )
        .unwrap(),
        Begin::Recorded
    );

    // Once per change: another start with the same settings touches nothing.
    assert_eq!(begin(&mut c, &b, "p2", now), Begin::UpToDate);
    assert_eq!(polls(&mut c), after);
}

#[test]
fn a_walk_that_stopped_is_resumed_by_the_next_process_after_its_lease() {
    let db = TestDb::new();
    let mut c = db.conn();
    let a = schedule(&[]);
    let now = Utc::now();
    let t0 = now - Td::minutes(10);
    assert_eq!(begin(&mut c, &a, "x", now), Begin::Recorded);
    orders_of_every_kind(&mut c, &a, t0);
    // As PostgreSQL keeps them.
    let heard = (t0 + Td::minutes(1)).trunc_subsecs(6);
    let asked = (t0 + Td::hours(1)).trunc_subsecs(6);

    let b = schedule(&[("HAOKA172_OVERDUE", "shipped=3d,pending=10m")]);
    let Begin::Reschedule(_) = begin(&mut c, &b, "x", now) else {
        panic!("a change")
    };
    // Process x does one chunk (D1, L1, N1, N2: none moves) and dies.
    let first = sstore::reschedule_chunk(&mut c, V, &b, "x", RESCHEDULE_LEASE, 4, now)
        .unwrap()
        .unwrap();
    assert_eq!((first.walked, first.moved, first.done), (4, 0, false));
    // While its lease runs, y leaves the walk to it.
    match begin(&mut c, &b, "y", now + Td::seconds(60)) {
        Begin::Busy { owner, to, .. } => {
            assert_eq!(owner, "x");
            assert_eq!(to, Some(b.settings(V)));
        }
        other => panic!("{other:?}"),
    }
    // Then takes it over where it stopped.
    let later = now + Td::from_std(RESCHEDULE_LEASE).unwrap() + Td::seconds(1);
    let Begin::Reschedule(plan) = begin(&mut c, &b, "y", later) else {
        panic!("taken over")
    };
    let resumed = plan.resumed.expect("resumed, not restarted");
    assert_eq!((resumed.after.as_str(), resumed.walked), ("N2", 4));
    let rest = walk(&mut c, &b, "y", 4, later);
    assert_eq!(
        rest.iter().map(|k| k.walked).sum::<usize>(),
        7,
        "the rest only"
    );
    // x, back, finds the walk gone.
    assert_eq!(
        sstore::reschedule_chunk(&mut c, V, &b, "x", RESCHEDULE_LEASE, 4, later).unwrap(),
        None
    );
    assert_eq!(settings_row(&mut c), (b.settings(V), false, 11, 6));
    let after = polls(&mut c);
    for id in ["S1", "S2", "S3", "S4", "S5"] {
        assert_eq!(
            poll_of(&after, id).next_check_at,
            Some(heard + Td::days(3)),
            "{id}"
        );
    }
    // The pending order backs off from its failed query, 10 minutes ±20 %
    // (its quiet count stays 1).
    let p1 = poll_of(&after, "P1");
    assert_eq!(p1.quiet_polls, 1);
    assert_eq!(p1.last_polled_at, Some(asked));
    let wait = p1.next_check_at.unwrap() - asked;
    assert!(wait >= Td::minutes(8) && wait <= Td::minutes(12), "{wait}");
}

#[test]
fn a_walk_with_the_settings_the_orders_were_scheduled_with_moves_none() {
    // Orders scheduled by every path (registration, callbacks, a poll with
    // news, a quiet poll, a failed one), then walked with the same settings
    // as if a change had been recorded: the rule gives each its time back.
    let db = TestDb::new();
    let mut c = db.conn();
    let a = schedule(&[("POLL_MIN_RECHECK", "30s")]);
    let now = Utc::now();
    let t0 = now - Td::minutes(10);
    let ids: Vec<String> = ["A1", "A2", "A3", "A4", "A5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    pstore::register(&mut c, V, &ids, &a, t0).unwrap();
    callbacks(
        &mut c,
        &[
            ("A2", Status::Pending, "待处理"),
            ("A3", Status::Pending, "待处理"),
            ("A4", Status::Submitted, "已提运营商"),
        ],
        t0 + Td::seconds(7),
        &a,
    );
    let at = t0 + Td::milliseconds(61_234);
    let news = obs("A3", Status::Shipped, "已发货", Source::Poll);
    pstore::record_poll(
        &mut c,
        V,
        "A3",
        "t",
        PollResult::Observed(&news),
        &a,
        at,
        at,
        &[],
    )
    .unwrap();
    let same = obs("A4", Status::Submitted, "已提运营商", Source::Poll);
    pstore::record_poll(
        &mut c,
        V,
        "A4",
        "t",
        PollResult::Observed(&same),
        &a,
        at,
        at,
        &[],
    )
    .unwrap();
    let failed = PollResult::Failed {
        outcome: "not_found",
    };
    pstore::record_poll(&mut c, V, "A5", "t", failed, &a, at, at, &[]).unwrap();
    let before = polls(&mut c);
    assert!(
        before.iter().all(|p| p.next_check_at.unwrap() > now),
        "none due: {before:#?}"
    );
    assert_eq!(poll_of(&before, "A4").quiet_polls, 1);
    assert_eq!(poll_of(&before, "A5").quiet_polls, 1);

    c.batch_execute(
        "INSERT INTO schedule_settings (vendor, settings, recorded_at) VALUES ('haoka172', '{}', now())",
    )
    .unwrap();
    let Begin::Reschedule(plan) = begin(&mut c, &a, "p", now) else {
        panic!("unreadable settings are a change")
    };
    assert_eq!((plan.from, plan.tracked), (None, 5));
    let chunks = walk(&mut c, &a, "p", 1000, now);
    assert_eq!(
        chunks
            .iter()
            .map(|k| (k.walked, k.moved))
            .collect::<Vec<_>>(),
        [(5, 0)]
    );
    assert_eq!(polls(&mut c), before);
}

/// The settings a running service recorded, when it has.
fn recorded(db: &TestDb) -> Option<ScheduleSettings> {
    sstore::recorded(&mut db.conn(), V).unwrap()
}

async fn until_recorded(db: &TestDb, want: &ScheduleSettings) {
    for _ in 0..200 {
        if recorded(db).as_ref() == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the service did not record {want:?}: {:?}", recorded(db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_scheduled_under_shipped_7d_are_due_at_once_after_a_restart_with_shipped_0s() {
    let (app, sim) = TestApp::with_sim(&[CONFIRM_OFF]).await;
    until_recorded(&app.db, &schedule(&[]).settings(V)).await;
    app.track(&["S1", "S2", "N1"]).await;
    for id in ["S1", "S2"] {
        assert_eq!(app.send(&format!("r-{id}"), id, "已发货").await.0, 200);
    }
    let week = Utc::now() + Td::days(6);
    let mut c = app.db.conn();
    assert!(
        polls(&mut c)
            .iter()
            .filter(|p| p.order_id.starts_with('S'))
            .all(|p| p.next_check_at.unwrap() > week),
        "shipped=7d"
    );
    assert_eq!(app.poll().await.due, 0);

    // Restarted with shipped=0s (the first service stays up, idle).
    let TestApp { db, .. } = app;
    let mut env = sim.haoka172().env();
    env.extend_from_slice(&[("HAOKA172_OVERDUE", "shipped=0s"), CONFIRM_OFF]);
    let app = TestApp::spawn_on(db, None, &env).await;
    until_recorded(
        &app.db,
        &schedule(&[("HAOKA172_OVERDUE", "shipped=0s")]).settings(V),
    )
    .await;
    sim.haoka172()
        .answer_all(Some(haoka_sync::sim::Answer::label("已发货")));
    let pass = app.poll().await;
    assert_eq!((pass.due, pass.queried), (2, 2), "{pass}");
    assert_eq!(sim.haoka172().calls_for("S1"), 1);
    assert_eq!(sim.haoka172().calls_for("N1"), 0, "new=30m did not change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_once_reschedules_once_after_a_change_and_says_what_changed() {
    let sim = start_sim(sim_config()).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(haoka_sync::sim::Answer::label("已发货")));
    let db = TestDb::new();
    let run = |args: &[&str], overdue: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_haoka-sync"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .args(args)
            .env("DATABASE_URL", db.url.expose())
            .env("HAOKA172_OVERDUE", overdue)
            .env("RUST_LOG", "info");
        for (k, v) in fake.env() {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    run(&["track", "haoka172", "N1", "N2"], "");
    let (out, err) = run(&["poll-once", "--vendor", "haoka172"], "");
    assert!(out.starts_with("haoka172: due 0, queried 0"), "{out}");
    assert!(
        err.contains("recorded the haoka172 schedule settings (HAOKA172_OVERDUE new=30m,"),
        "{err}"
    );

    let (out, err) = run(&["poll-once", "--vendor", "haoka172"], "new=0");
    assert!(
        err.contains("haoka172 schedule settings changed (HAOKA172_OVERDUE new 30m → 0): rescheduling 2 tracked orders"),
        "{err}"
    );
    assert!(
        err.contains("haoka172 tracked orders rescheduled under the new settings: 2 of 2 moved (2 due now) in "),
        "{err}"
    );
    assert!(
        out.starts_with("haoka172: due 2, queried 2, changed 2"),
        "{out}"
    );
    assert_eq!(fake.calls().len(), 2);

    let (out, err) = run(&["poll-once", "--vendor", "haoka172"], "new=0");
    assert!(
        !err.contains("schedule settings changed"),
        "once per change: {err}"
    );
    assert!(out.starts_with("haoka172: due 0, queried 0"), "{out}");
}
