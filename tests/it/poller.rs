//! The fallback poller against the simulator's 172 on 127.0.0.1 (acceptance
//! points of the poller issue).

use std::time::Duration;

use diesel::connection::SimpleConnection;

use crate::helpers::*;
use haoka_sync::sim::Answer;

#[tokio::test]
async fn by_default_fresh_orders_and_orders_just_called_back_are_not_queried() {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("已发货".into())));
    app.track(&["T1", "T2", "T3"]).await;
    assert_eq!(app.send("R1", "C1", "待处理").await.0, 200);
    assert_eq!(app.send("R2", "C2", "已发货").await.0, 200);
    let s = app.poll().await;
    assert_eq!((s.due, s.queried), (0, 0), "{s}");
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn with_zero_overdue_one_pass_queries_each_non_terminal_order_once_and_no_terminal_one() {
    let (app, sim) = TestApp::with_sim(&[("HAOKA172_OVERDUE", ZERO_OVERDUE), CONFIRM_OFF]).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("已提运营商".into())));
    let tracked = ["T1", "T2", "T3", "T4"];
    app.track(&tracked).await;
    for (rid, id, label) in [
        ("R1", "P1", "待处理"),
        ("R2", "P2", "已发货"),
        ("R3", "S1", "已结算"),
        ("R4", "X1", "已取消"),
        ("R5", "J1", "审核不通过"),
    ] {
        assert_eq!(app.send(rid, id, label).await.0, 200);
    }
    let s = app.poll().await;
    assert_eq!(s.queried, 6, "{s}");
    for id in tracked.iter().chain(&["P1", "P2"]) {
        assert_eq!(fake.calls_for(id), 1, "{id}");
    }
    for id in ["S1", "X1", "J1"] {
        assert_eq!(fake.calls_for(id), 0, "terminal {id} queried");
    }
    assert_eq!(
        fake.refused(),
        (0, 0),
        "signature and timestamp accepted by the vendor rules"
    );
    // The same pass never asks twice; an immediate second pass finds nothing due.
    let again = app.poll().await;
    assert_eq!(again.queried, 0, "{again}");
}

#[tokio::test]
async fn a_poll_moves_an_order_forward_but_never_back() {
    let (app, sim) = TestApp::with_sim(&[("HAOKA172_OVERDUE", ZERO_OVERDUE)]).await;
    let fake = sim.haoka172();
    assert_eq!(app.send("R1", "UP", "待处理").await.0, 200);
    assert_eq!(app.send("R2", "DOWN", "已完成").await.0, 200);
    fake.answer("UP", Answer::Label("已发货".into()));
    fake.answer("DOWN", Answer::Label("已发货".into()));
    let s = app.poll().await;
    // Both count as changed: the stale answer still fills the express fields.
    assert_eq!(s.queried, 2, "{s}");
    let mut c = app.db.conn();
    assert_eq!(order(&mut c, "UP").unwrap().status, "shipped");
    assert_eq!(order(&mut c, "DOWN").unwrap().status, "completed");
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_events WHERE order_id = 'UP' AND source = 'poll' AND effect = 'advanced'"),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_events WHERE order_id = 'DOWN' AND source = 'poll' AND effect = 'stale'"),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE order_id = 'UP' AND last_source = 'poll' AND quiet_polls = 0"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_due_orders_never_exceed_the_per_minute_limit_and_the_rest_come_later() {
    // Only `new` is overdue at once; answered `submitted`, an order waits 2 days.
    let (app, sim) = TestApp::with_sim(&[
        ("HAOKA172_OVERDUE", "new=0"),
        ("HAOKA172_MAX_CALLS_PER_MINUTE", "200"),
    ])
    .await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("已提运营商".into())));
    let ids: Vec<String> = (0..300).map(|i| format!("RL{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.track(&refs).await;

    let first = app.poll().await;
    assert_eq!(first.due, 300);
    assert_eq!(first.queried, 200, "{first}");
    assert_eq!(first.skipped_for_limits, 100, "{first}");
    let second = app.poll().await;
    assert_eq!(second.queried, 0, "budget spent: {second}");
    assert_eq!(second.skipped_for_limits, 100, "{second}");

    // A later pass, once the minute has passed, takes the rest.
    tokio::time::sleep(Duration::from_secs(62)).await;
    let third = app.poll().await;
    assert_eq!(third.queried, 100, "{third}");
    assert_eq!(fake.calls().len(), 300);
    assert!(ids.iter().all(|id| fake.calls_for(id) == 1));
    let peak = fake.max_in_window(Duration::from_secs(60));
    assert!(peak <= 200, "{peak} calls within 60 s");
    assert_eq!(peak, 200);
}

#[tokio::test]
async fn repeated_passes_never_query_an_order_more_than_the_daily_limit() {
    let (app, sim) = TestApp::with_sim(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("HAOKA172_MAX_CALLS_PER_ORDER_PER_DAY", "10"),
    ])
    .await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("待处理".into())));
    app.track(&["D1", "D2"]).await;
    let mut skipped = 0;
    for _ in 0..14 {
        let s = app.poll().await;
        skipped += s.skipped_for_limits;
        app.make_all_due();
    }
    assert_eq!(fake.calls_for("D1"), 10);
    assert_eq!(fake.calls_for("D2"), 10);
    assert!(skipped >= 8, "later passes report the limit ({skipped})");
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE calls_today = 10"
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pollers_on_one_database_query_each_due_order_once_in_total() {
    let (app, sim) = TestApp::with_sim(&[("HAOKA172_OVERDUE", ZERO_OVERDUE)]).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("已提运营商".into())));
    fake.delay(Duration::from_millis(20));
    let ids: Vec<String> = (0..60).map(|i| format!("TW{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.track(&refs).await;

    // A second process: its own pool and poller on the same database.
    let mut env = fake.env();
    env.extend([
        ("DATABASE_URL", app.db.url.expose()),
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
    ]);
    let config = haoka_sync::config::Config::with(&env).unwrap();
    let pool = haoka_sync::db::pool(&config.database_url, 4, Duration::from_secs(2));
    let other = haoka_sync::startup::poller(&config, pool).unwrap();

    let vendor = Some(haoka_sync::vendors::Vendor::Haoka172);
    let (a, b) = tokio::join!(app.poller.run_pass(vendor), other.run_pass(vendor));
    let qa = a.unwrap().remove(0).unwrap().queried;
    let qb = b.unwrap().remove(0).unwrap().queried;
    assert_eq!(qa + qb, 60, "a {qa} + b {qb}");
    assert!(
        ids.iter().all(|id| fake.calls_for(id) == 1),
        "an order was queried twice"
    );
}

#[tokio::test]
async fn not_found_500_timeout_and_garbage_are_recorded_backed_off_and_the_pass_finishes() {
    let (app, sim) = TestApp::with_sim(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("HAOKA172_TIMEOUT_SECS", "1"),
    ])
    .await;
    let fake = sim.haoka172();
    fake.answer("NF", Answer::NotFound);
    fake.answer("E500", Answer::Http(500));
    fake.answer("SLOW", Answer::NotFound.after(Duration::from_secs(3)));
    fake.answer("GARB", Answer::Garbage);
    fake.answer("OK", Answer::Label("已发货".into()));
    app.track(&["NF", "E500", "SLOW", "GARB", "OK"]).await;

    let s = app.poll().await;
    assert_eq!((s.queried, s.not_found, s.errors), (5, 1, 3), "{s}");
    let mut c = app.db.conn();
    for (id, outcome) in [
        ("NF", "not_found"),
        ("E500", "http_error"),
        ("SLOW", "timeout"),
        ("GARB", "unparseable"),
        ("OK", "ok"),
    ] {
        assert_eq!(
            count(&mut c, &format!("SELECT count(*) AS n FROM vendor_calls WHERE order_ids = ARRAY['{id}'] AND outcome = '{outcome}'")),
            1,
            "{id} call recorded as {outcome}"
        );
        assert_eq!(
            count(&mut c, &format!("SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE order_id = '{id}' AND last_poll_outcome = '{outcome}' AND lease_owner IS NULL")),
            1,
            "{id} order shows {outcome}"
        );
    }
    // Failures back off (at least about a minute), never an immediate retry.
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE order_id IN ('NF','E500','SLOW','GARB') AND quiet_polls = 1 AND next_check_at > now() + interval '40 seconds'"),
        4
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM vendor_pauses"),
        0,
        "four failures do not pause"
    );
    let again = app.poll().await;
    assert_eq!(again.queried, 0, "{again}");
}

#[tokio::test]
async fn a_blocked_answer_pauses_polling_and_the_pause_ends_by_itself() {
    let (app, sim) = TestApp::with_sim(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("HAOKA172_COOLOFF", "2s"),
    ])
    .await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Blocked));
    app.track(&["B1", "B2", "B3"]).await;
    let s = app.poll().await;
    assert!(s.paused_until.is_some(), "{s}");
    let mut c = app.db.conn();
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM vendor_pauses WHERE vendor = 'haoka172' AND reason LIKE 'blocked%'"), 1);

    app.make_all_due();
    let calls_before = fake.calls().len();
    let paused = app.poll().await;
    assert_eq!(paused.queried, 0, "{paused}");
    assert!(paused.paused_until.is_some());
    assert_eq!(fake.calls().len(), calls_before, "no call while paused");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    fake.answer_all(Some(Answer::Label("已发货".into())));
    let resumed = app.poll().await;
    assert_eq!(resumed.queried, 3, "{resumed}");
    assert!(resumed.paused_until.is_none());
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM vendor_pauses"), 0);
    assert_eq!(order(&mut c, "B1").unwrap().status, "shipped");
}

#[tokio::test]
async fn the_cron_schedule_runs_passes_inside_serve() {
    let (app, sim) = TestApp::with_sim(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("POLL_CRON", "*/1 * * * * *"),
    ])
    .await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("已发货".into())));
    app.track(&["CRON1"]).await;
    let mut shipped = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut c = app.db.conn();
        if order(&mut c, "CRON1").map(|o| o.status) == Some("shipped".into()) {
            shipped = true;
            break;
        }
    }
    assert!(shipped, "no scheduled pass within 10 s");
    assert_eq!(fake.calls_for("CRON1"), 1);
}

#[tokio::test]
async fn orders_silent_past_the_horizon_stop_being_polled_and_are_listed() {
    let (app, sim) = TestApp::with_sim(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("TRACKING_HORIZON", "1d"),
    ])
    .await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("待处理".into())));
    app.track(&["OLD", "FRESH"]).await;
    let mut c = app.db.conn();
    c.batch_execute(
        "UPDATE order_polls SET tracked_at = now() - interval '2 days' WHERE order_id = 'OLD'",
    )
    .unwrap();
    let s = app.poll().await;
    assert_eq!((s.queried, s.expired), (1, 1), "{s}");
    assert_eq!(fake.calls_for("OLD"), 0);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM expired_orders WHERE order_id = 'OLD'"
        ),
        1
    );
    // Tracking it again resumes polling.
    app.track(&["OLD"]).await;
    let s = app.poll().await;
    assert_eq!(fake.calls_for("OLD"), 1, "{s}");
}

/// `store::poll::expire_silent` on a chosen clock: an order is silent past
/// the horizon when neither its last callback nor the start of its tracking
/// is as recent as the cutoff, and only due orders are looked at.
#[test]
fn expiry_counts_silence_from_the_later_of_the_last_callback_and_tracking_start() {
    use chrono::{DateTime, Duration as D, Utc};
    use diesel::prelude::*;
    use diesel::sql_types::{Nullable, Text, Timestamptz};
    use haoka_sync::store::poll::expire_silent;
    use haoka_sync::vendors::Vendor;

    let db = TestDb::new();
    let c = &mut db.conn();
    // Whole seconds: timestamps round-trip through PostgreSQL exactly.
    let t = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let cutoff = t - D::days(60);
    let due = Some(t - D::minutes(1));
    // Hours after the cutoff.
    let h = |hours: i64| cutoff + D::hours(hours);
    // id, last heard, tracked since, next check, expired
    let orders = [
        ("NEVER-HEARD-OLD", None, h(-1), due, true),
        ("NEVER-HEARD-NEW", None, h(1), due, false),
        ("HEARD-SINCE", Some(h(1)), h(-240), due, false),
        ("RETRACKED", Some(h(-240)), h(1), due, false),
        ("BOTH-OLD", Some(h(-1)), h(-2), due, true),
        ("HEARD-AT-CUTOFF", Some(cutoff), h(-24), due, false),
        ("TRACKED-AT-CUTOFF", None, cutoff, due, false),
        ("NOT-DUE", Some(h(-1)), h(-2), Some(t + D::hours(1)), false),
        ("DUE-NOW", Some(h(-1)), h(-2), Some(t), true),
    ];
    for (id, heard, tracked, next, _) in orders {
        diesel::sql_query(
            "WITH o AS (INSERT INTO orders (vendor, order_id, status, last_heard_at, created_at) \
                        VALUES ('haoka172', $1, 'shipped', $2, $3)) \
             INSERT INTO order_polls (vendor, order_id, next_check_at, tracked_at) \
             VALUES ('haoka172', $1, $4, $3)",
        )
        .bind::<Text, _>(id)
        .bind::<Nullable<Timestamptz>, _>(heard)
        .bind::<Timestamptz, _>(tracked)
        .bind::<Nullable<Timestamptz>, _>(next)
        .execute(c)
        .unwrap();
    }
    assert_eq!(expire_silent(c, Vendor::Haoka172, cutoff, t).unwrap(), 3);
    #[derive(QueryableByName)]
    struct Poll {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        next_check_at: Option<DateTime<Utc>>,
        #[diesel(sql_type = Nullable<Timestamptz>)]
        tracking_expired_at: Option<DateTime<Utc>>,
    }
    for (id, _, _, next, expired) in orders {
        let p: Poll = diesel::sql_query(
            "SELECT next_check_at, tracking_expired_at FROM order_polls WHERE order_id = $1",
        )
        .bind::<Text, _>(id)
        .get_result(c)
        .unwrap();
        let want = if expired {
            (None, Some(t))
        } else {
            (next, None)
        };
        assert_eq!((p.next_check_at, p.tracking_expired_at), want, "{id}");
    }
    assert_eq!(count(c, "SELECT count(*) AS n FROM expired_orders"), 3);
}

#[tokio::test]
async fn ops_views_show_what_is_due_and_why_and_counts_per_status() {
    let (app, _sim) = TestApp::with_sim(&[("HAOKA172_OVERDUE", ZERO_OVERDUE), CONFIRM_OFF]).await;
    app.track(&["V1", "V2"]).await;
    assert_eq!(app.send("R1", "V3", "已结算").await.0, 200);
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM overdue_orders WHERE reason = 'tracked, never heard of'"
        ),
        2
    );
    assert_eq!(count(&mut c, "SELECT orders AS n FROM order_status_counts WHERE vendor = 'haoka172' AND status = 'new'"), 2);
    assert_eq!(
        count(
            &mut c,
            "SELECT orders AS n FROM order_status_counts WHERE status = 'settled'"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ticks_never_run_two_passes_in_one_process() {
    let (app, sim) = TestApp::with_sim(&[("HAOKA172_OVERDUE", ZERO_OVERDUE)]).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Label("已发货".into())));
    fake.delay(Duration::from_millis(300));
    app.track(&["OV1", "OV2"]).await;
    let vendor = Some(haoka_sync::vendors::Vendor::Haoka172);
    let (a, b) = tokio::join!(app.poller.run_pass(vendor), app.poller.run_pass(vendor));
    assert!(
        a.is_some() != b.is_some(),
        "exactly one of two overlapping passes runs"
    );
    assert_eq!(fake.calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_sends_nothing_after_the_failure_that_pauses_it_and_counts_what_it_left_as_paused() {
    let (app, sim) = TestApp::with_sim(&[("HAOKA172_OVERDUE", ZERO_OVERDUE)]).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::Http(500)));
    fake.delay(Duration::from_millis(150));
    let ids: Vec<String> = (0..40).map(|i| format!("PZ{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.track(&refs).await;
    let s = app.poll().await;
    assert!(s.paused_until.is_some(), "{s}");
    assert_eq!(s.errors, s.queried, "{s}");
    assert!(s.queried >= 5, "{s}");
    assert_eq!(s.left_by_pause, 40 - s.queried, "{s}");
    assert_eq!(
        s.skipped_for_limits, 0,
        "paused work is not 'skipped for limits': {s}"
    );
    assert!(s.to_string().contains("left unasked by the pause"), "{s}");
    assert_eq!(fake.calls().len() as u32, s.queried);
    // No call was sent after the failure that decided the pause. Every call
    // fails, so after the first failure the pass starts nothing new while
    // one is on its way: the calls sent are the first wave (haoka172 keeps 8
    // in flight) and nothing after it. A pass that went on after the fifth
    // failure would have asked all 40. (Timestamps cannot show this: under
    // load a first-wave call may reserve its slot only after others ended.)
    const FIRST_WAVE: u32 = 8;
    assert!(s.queried <= FIRST_WAVE, "{s}");
    let mut c = app.db.conn();
    // Nor reserved after the pause was written (a reserved call that was not
    // sent is recorded as not_sent and reaches no vendor).
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM vendor_calls, vendor_pauses p \
             WHERE called_at > p.paused_at AND outcome <> 'not_sent'"
        ),
        0
    );
}

#[tokio::test]
async fn a_vendor_that_cannot_be_reached_is_named_with_the_cause_in_the_log_and_the_pause() {
    let app = TestApp::spawn_with(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("HAOKA172_BASE_URL", "http://127.0.0.1:9"),
    ])
    .await;
    let ids: Vec<String> = (0..6).map(|i| format!("UNREACH{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.track(&refs).await;
    let s = app.poll().await;
    assert!(s.paused_until.is_some(), "{s}");
    #[derive(diesel::QueryableByName)]
    struct Reason {
        #[diesel(sql_type = diesel::sql_types::Text)]
        reason: String,
    }
    use diesel::RunQueryDsl;
    let mut c = app.db.conn();
    let r: Reason = diesel::sql_query("SELECT reason FROM vendor_pauses WHERE vendor = 'haoka172'")
        .get_result(&mut c)
        .unwrap();
    assert!(
        r.reason.contains("127.0.0.1: connection refused"),
        "{}",
        r.reason
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM vendor_calls WHERE error LIKE '%127.0.0.1: connection refused%'"
        ),
        s.queried as i64
    );

    // A name that does not resolve says so.
    let client = haoka_sync::vendors::haoka172::client::Haoka172Client::new(
        &url::Url::parse("http://no-such-vendor-host.invalid").unwrap(),
        "demo",
        haoka_sync::secret::Secret::new(SECRET),
        Duration::from_secs(3),
    )
    .unwrap();
    let e = client.get_order_info("X").await.unwrap_err().to_string();
    assert!(e.contains("no-such-vendor-host.invalid"), "{e}");
    assert!(
        e.contains("DNS lookup failed") || e.contains("no answer"),
        "{e}"
    );
}
