//! End to end: the service and the vendor simulator in-process, on an
//! accelerated clock, with lost, duplicated and late callbacks.

use std::time::{Duration, Instant};

use haoka_sync::demo::{Demo, Progress};
use haoka_sync::sim::SimConfig;

use crate::helpers::*;

/// One simulated run at a time: two at once on two cores would measure the
/// machine, not the service.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_to_convergence(demo: &Demo, timeout: Duration) -> Progress {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let p = demo.progress().await.expect("progress");
        if p.converged() {
            eprintln!("{}", p.line(started.elapsed()));
            return p;
        }
        assert!(
            started.elapsed() < timeout,
            "not converged: {}",
            p.line(started.elapsed())
        );
    }
}

fn assert_vendor_limits_held(p: &Progress) {
    let s = &p.sim;
    assert_eq!(
        (s.get_order_info_bad_sign, s.get_order_info_bad_timestamp),
        (0, 0),
        "{s:?}"
    );
    assert_eq!(s.get_order_info_blocked, 0, "{s:?}");
    assert!(s.max_calls_per_minute <= 200, "{s:?}");
    assert!(s.max_calls_per_order_day <= 10, "{s:?}");
    assert_eq!(
        s.calls_after_terminal, 0,
        "a terminal order was queried again: {s:?}"
    );
    assert_eq!(s.damaijia_rate_violations, 0, "{s:?}");
    assert_eq!(
        s.pushes_given_up, 0,
        "every delivered push was acknowledged: {s:?}"
    );
}

fn no_event_applied_twice(db: &TestDb) {
    let mut c = db.conn();
    let events = count(
        &mut c,
        "SELECT count(*) AS n FROM order_events WHERE source = 'callback'",
    );
    let distinct = count(
        &mut c,
        "SELECT count(DISTINCT request_id) AS n FROM inbound_callbacks WHERE outcome IN ('applied', 'duplicate')",
    );
    assert_eq!(events, distinct, "one event per RequidId");
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM (SELECT request_id FROM order_events WHERE request_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1) x"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_orders_with_lost_duplicated_and_late_callbacks_converge_to_the_truth() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new();
    let cfg = SimConfig {
        haoka172_orders: 1000,
        damaijia_orders: 200,
        drop: 0.15,
        duplicate: 0.05,
        reorder: 0.05,
        seed: 2026,
        ..SimConfig::default()
    };
    // Terminal callbacks apply at once: confirming 1,000 of them would take
    // the per-minute budget for over five minutes. The confirming path has
    // its own end-to-end test below.
    let demo = Demo::start(&db.url, cfg, &[CONFIRM_OFF]).await.unwrap();
    let p = run_to_convergence(&demo, Duration::from_secs(240)).await;
    assert_eq!(p.disagree, 0);
    assert_vendor_limits_held(&p);
    no_event_applied_twice(&db);
    let s = &p.sim;
    assert!(
        s.pushes_dropped > 400 && s.pushes_duplicated > 100 && s.pushes_reordered > 100,
        "{s:?}"
    );
    let mut c = db.conn();
    assert!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'duplicate'"
        ) >= s.pushes_duplicated as i64
    );
    eprintln!(
        "GetOrderInfo calls: {} for {} dropped pushes ({} planned); 大麦家 calls {} costing {}",
        p.get_order_info_calls,
        s.pushes_dropped,
        s.pushes_planned,
        s.damaijia_calls,
        s.damaijia_cost
    );
    assert!(
        p.get_order_info_calls as u64 <= s.pushes_dropped,
        "more queries ({}) than lost pushes ({})",
        p.get_order_info_calls,
        s.pushes_dropped
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_lost_callbacks_no_order_whose_callbacks_arrived_on_time_is_queried() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new();
    let cfg = SimConfig {
        haoka172_orders: 1000,
        damaijia_orders: 200,
        drop: 0.0,
        duplicate: 0.05,
        reorder: 0.05,
        seed: 2027,
        ..SimConfig::default()
    };
    // As above; with confirmation on every order is queried once more, to
    // confirm its terminal status (see the next test).
    let demo = Demo::start(&db.url, cfg, &[CONFIRM_OFF]).await.unwrap();
    let p = run_to_convergence(&demo, Duration::from_secs(180)).await;
    // Keep watching a little: nothing on time may look overdue afterwards.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = demo.progress().await.unwrap();
    assert_vendor_limits_held(&later);
    no_event_applied_twice(&db);
    // Overdue is 6 steps (6 s) and on-time callbacks of one order are at most
    // ~2 s apart, so a query needs a push at least ~3 s late (machine load).
    let late = demo.sim.late_orders(Duration::from_secs(3));
    let mut c = db.conn();
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    use diesel::RunQueryDsl;
    let polled: Vec<Id> = diesel::sql_query(
        "SELECT DISTINCT unnest(order_ids) AS id FROM vendor_calls WHERE vendor = 'haoka172'",
    )
    .load(&mut c)
    .unwrap();
    let on_time_but_queried: Vec<&str> = polled
        .iter()
        .map(|p| p.id.as_str())
        .filter(|id| !late.contains(*id))
        .collect();
    eprintln!(
        "no drops: {} GetOrderInfo calls ({} at convergence); {} orders had a push >= 3 s late",
        later.get_order_info_calls,
        p.get_order_info_calls,
        late.len()
    );
    assert!(
        on_time_but_queried.is_empty(),
        "queried although every callback was on time: {on_time_but_queried:?}"
    );
    demo.stop().await;
}

/// The production default: a callback that would make its order terminal
/// waits for GetOrderInfo to confirm it, and one signed over an `OrderNo172`
/// we cannot tie to its order yet is kept until a query tells the number.
/// Both cost at most one query per order and reason.
async fn converge_under_the_security_rules(sign_over_172: bool, drop: f64, seed: u64) {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new();
    let orders = 60;
    let cfg = SimConfig {
        haoka172_orders: orders,
        damaijia_orders: 0,
        drop,
        duplicate: 0.05,
        reorder: 0.05,
        sign_over_172,
        seed,
        ..SimConfig::default()
    };
    let demo = Demo::start(&db.url, cfg, &[]).await.unwrap();
    let p = run_to_convergence(&demo, Duration::from_secs(150)).await;
    let s = &p.sim;
    assert_eq!(s.get_order_info_blocked, 0, "{s:?}");
    assert!(s.max_calls_per_minute <= 200, "{s:?}");
    assert_eq!(s.calls_after_terminal, 0, "{s:?}");
    no_event_applied_twice(&db);
    let mut c = db.conn();
    let pending = count(
        &mut c,
        "SELECT count(*) AS n FROM callback_confirmations WHERE resolved_at IS NULL",
    );
    let refuted = count(
        &mut c,
        "SELECT count(*) AS n FROM callback_confirmations WHERE result IN ('refuted', 'rejected')",
    );
    assert_eq!(
        (pending, refuted),
        (0, 0),
        "genuine callbacks are confirmed"
    );
    let expedited = count(
        &mut c,
        "SELECT count(*) AS n FROM callback_confirmations WHERE expedited",
    );
    assert!(
        expedited <= 2 * orders as i64,
        "at most one expedited query per order and reason: {expedited}"
    );
    // Every callback ever stored unverified ended applied (by a replay or by
    // the vendor's retry): nothing the vendor sent is lost.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks i WHERE outcome = 'unverified' \
             AND NOT EXISTS (SELECT 1 FROM order_events e WHERE e.vendor = i.vendor AND e.request_id = i.request_id)"
        ),
        0
    );
    if sign_over_172 {
        assert_eq!(
            count(
                &mut c,
                "SELECT count(*) AS n FROM inbound_callbacks WHERE sign_matched = 'order_no'"
            ),
            0
        );
        assert!(
            count(
                &mut c,
                "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'applied' AND sign_matched = 'order_no_172'"
            ) >= orders as i64
        );
    }
    let calls = p.get_order_info_calls as u64;
    // A push that lands seconds late (machine load) may rightly be polled.
    let late = demo.sim.late_orders(Duration::from_secs(3));
    eprintln!(
        "security rules (sign over 172: {sign_over_172}): {calls} GetOrderInfo calls for {orders} orders, {} lost pushes, {expedited} expedited",
        s.pushes_dropped
    );
    // At most one query per order to learn its vendor number and one to
    // confirm its terminal status; beyond that only lost or late pushes.
    #[derive(diesel::QueryableByName)]
    struct PerOrder {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    use diesel::RunQueryDsl;
    let per_order: Vec<PerOrder> = diesel::sql_query(
        "SELECT unnest(order_ids) AS id, count(*) AS n FROM vendor_calls WHERE vendor = 'haoka172' GROUP BY 1",
    )
    .load(&mut c)
    .unwrap();
    let for_confirmation = if sign_over_172 { 2 } else { 1 };
    if drop == 0.0 {
        for o in per_order.iter().filter(|o| !late.contains(&o.id)) {
            assert!(o.n <= for_confirmation, "{} queried {} times", o.id, o.n);
        }
    }
    assert!(
        calls <= for_confirmation as u64 * orders as u64 + s.pushes_dropped + late.len() as u64,
        "queries ({calls}) beyond confirmations, lost pushes ({}) and late orders ({})",
        s.pushes_dropped,
        late.len()
    );
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminal_callbacks_are_confirmed_and_lost_ones_recovered_under_the_default_rules() {
    converge_under_the_security_rules(false, 0.15, 2028).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_signed_over_order_no_172_converge_through_one_query_per_order() {
    converge_under_the_security_rules(true, 0.0, 2029).await;
}
