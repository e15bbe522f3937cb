//! Fail fast while PostgreSQL is down: once the service knows, callbacks,
//! readiness, the admin API and the poller answer at once instead of after
//! the pool timeout, and everything resumes by itself within a second or
//! two of the database's return. Nothing acknowledged is lost.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// One callback of a steady stream: when it was sent, how long its answer
/// took, and what it was.
#[derive(Debug, Clone)]
struct Sent {
    request_id: String,
    at: Instant,
    took: Duration,
    status: u16,
}

impl Sent {
    fn answered(&self) -> Instant {
        self.at + self.took
    }
}

/// Send a callback every `every` until `stop` says so, each on its own
/// task (a slow answer does not hold back the next one), and collect them.
struct Stream {
    sent: Arc<std::sync::Mutex<Vec<Sent>>>,
    running: Arc<std::sync::atomic::AtomicBool>,
    driver: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl Stream {
    fn start(app: &TestApp, prefix: &str, every: Duration) -> Stream {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (client, address, key) = (app.client.clone(), app.address.clone(), app.key.clone());
        let (s, r, prefix) = (Arc::clone(&sent), Arc::clone(&running), prefix.to_owned());
        let driver = tokio::spawn(async move {
            let mut tasks = Vec::new();
            let mut tick = tokio::time::interval(every);
            let mut i = 0u32;
            while r.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                i += 1;
                let request_id = format!("{prefix}-{i}");
                let order = format!("{prefix}O{}", i % 8);
                let body = callback(&request_id, &order, "待处理");
                let req = client
                    .post(format!("{address}/callbacks/haoka172"))
                    .header("sign", key.encrypt(&order))
                    .timeout(Duration::from_secs(10))
                    .json(&body);
                let s = Arc::clone(&s);
                tasks.push(tokio::spawn(async move {
                    let at = Instant::now();
                    let status = match req.send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    s.lock().unwrap().push(Sent {
                        request_id,
                        at,
                        took: at.elapsed(),
                        status,
                    });
                }));
            }
            tasks
        });
        Stream {
            sent,
            running,
            driver,
        }
    }

    async fn stop(self) -> Vec<Sent> {
        self.running
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.driver.await.unwrap() {
            t.await.unwrap();
        }
        let mut v = self.sent.lock().unwrap().clone();
        v.sort_by_key(|s| s.at);
        v
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Every RequidId acknowledged is committed as applied.
fn assert_acknowledged_are_stored(app: &TestApp, sent: &[Sent]) -> (usize, usize) {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Rid {
        #[diesel(sql_type = diesel::sql_types::Text)]
        request_id: String,
    }
    let mut c = app.db.conn();
    let stored: BTreeSet<String> = diesel::sql_query(
        "SELECT request_id FROM inbound_callbacks WHERE outcome = 'applied' AND request_id IS NOT NULL",
    )
    .load::<Rid>(&mut c)
    .unwrap()
    .into_iter()
    .map(|r| r.request_id)
    .collect();
    let acked: BTreeSet<String> = sent
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.request_id.clone())
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    (acked.len(), stored.len())
}

/// Wait until the app's health is `up`; how long that took.
async fn wait_for_health(app: &TestApp, up: bool, within: Duration) -> Duration {
    let started = Instant::now();
    while app.health.is_up() != up {
        assert!(
            started.elapsed() < within,
            "not {} within {within:?}: {:?} since {}",
            if up { "up" } else { "down" },
            app.health.cause(),
            app.health.since()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Acceptance 4: callbacks flowing at a steady rate (25 a second), the
/// path to PostgreSQL cut; after the first failure at least 95 % are
/// answered 503 within 1 s (not after `DB_TIMEOUT_SECS` = 3), none 2xx;
/// restored, callbacks succeed again within 2 s, without a restart; every
/// acknowledged RequidId is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgresql_cut_off_callbacks_get_503_at_once_and_succeed_within_2_s_of_its_return() {
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let via = db.url_via(proxy.port);
    let app = TestApp::spawn_on(db, Some(via), &[("DB_TIMEOUT_SECS", "3")]).await;
    assert_eq!(app.send("FF-warm", "FFwarm", "待处理").await.0, 200);

    let stream = Stream::start(&app, "FF", Duration::from_millis(40));
    tokio::time::sleep(Duration::from_millis(400)).await;
    proxy.cut();
    let cut_at = Instant::now();
    let detected = wait_for_health(&app, false, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.restore().await;
    let restored_at = Instant::now();
    let back = wait_for_health(&app, true, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sent = stream.stop().await;

    let first_failure = sent
        .iter()
        .filter(|s| s.status != 200)
        .map(Sent::answered)
        .min()
        .expect("some callback failed while the database was cut off");
    // Sent after the first failure and answered before the database came
    // back: every one a 503, and fast.
    let down: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.at >= first_failure && s.answered() < restored_at)
        .collect();
    assert!(down.len() >= 20, "{} callbacks while down", down.len());
    let not_503: Vec<_> = down.iter().filter(|s| s.status != 503).collect();
    assert!(not_503.is_empty(), "while down: {not_503:?}");
    let within_1s = down
        .iter()
        .filter(|s| s.took < Duration::from_secs(1))
        .count();
    let p95 = percentile(down.iter().map(|s| s.took).collect(), 0.95);
    let p50 = percentile(down.iter().map(|s| s.took).collect(), 0.50);
    assert!(
        within_1s * 100 >= down.len() * 95,
        "{within_1s} of {} within 1 s",
        down.len()
    );
    assert!(p95 < Duration::from_secs(1), "p95 {p95:?}");
    // No 2xx for anything sent once the path was cut.
    let acked_while_down: Vec<_> = sent
        .iter()
        .filter(|s| s.at >= cut_at && s.answered() < restored_at && s.status == 200)
        .collect();
    assert!(acked_while_down.is_empty(), "{acked_while_down:?}");

    // Back: the first success within 2 s of the return, and from then on
    // every callback succeeds.
    let first_ok = sent
        .iter()
        .filter(|s| s.at >= restored_at && s.status == 200)
        .map(|s| s.at)
        .min()
        .expect("a callback succeeded after the return");
    assert!(
        first_ok - restored_at < Duration::from_secs(2),
        "{:?}",
        first_ok - restored_at
    );
    let failed_after: Vec<_> = sent
        .iter()
        .filter(|s| s.at > first_ok && s.status != 200)
        .collect();
    assert!(failed_after.is_empty(), "{failed_after:?}");
    let (acked, stored) = assert_acknowledged_are_stored(&app, &sent);
    eprintln!(
        "cut: seen down after {detected:?}; {} callbacks while down, p50 {p50:?}, p95 {p95:?}, max {:?}; seen back {back:?} after the return, first success {:?} after it; {acked} acknowledged, {stored} stored",
        down.len(),
        down.iter().map(|s| s.took).max().unwrap_or_default(),
        first_ok - restored_at,
    );
}

/// The half-open case: connections are accepted but nothing comes back
/// (a partition, a hung server), so no error ever arrives. The wait for a
/// commit makes the prober look, 1.5 s without an answer make it down, and
/// from then on callbacks get their 503 at once; when the path heals,
/// callbacks succeed again, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_queries_hanging_callbacks_get_503_within_2_5_s_and_recover_when_the_path_heals() {
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let via = db.url_via(proxy.port);
    let app = TestApp::spawn_on(db, Some(via), &[("DB_TIMEOUT_SECS", "3")]).await;
    assert_eq!(app.send("BH-warm", "BHwarm", "待处理").await.0, 200);

    let stream = Stream::start(&app, "BH", Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.black_hole();
    let holed_at = Instant::now();
    let detected = wait_for_health(&app, false, Duration::from_secs(4)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.restore().await;
    let restored_at = Instant::now();
    wait_for_health(&app, true, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sent = stream.stop().await;

    let cause = app.health.cause();
    assert!(cause.is_none(), "up again: {cause:?}");
    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.at >= holed_at && s.answered() < restored_at)
        .collect();
    assert!(!during.is_empty());
    assert!(
        during.iter().all(|s| s.status == 503),
        "{:?}",
        during
            .iter()
            .filter(|s| s.status != 503)
            .collect::<Vec<_>>()
    );
    let slowest = during.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(slowest < Duration::from_millis(2500), "slowest {slowest:?}");
    // Once the hang is known, at once.
    let known_at = holed_at + detected;
    let after: Vec<Duration> = during
        .iter()
        .filter(|s| s.at > known_at)
        .map(|s| s.took)
        .collect();
    let p95 = percentile(after.clone(), 0.95);
    assert!(p95 < Duration::from_secs(1), "p95 {p95:?}");
    let first_ok = sent
        .iter()
        .filter(|s| s.at >= restored_at && s.status == 200)
        .map(|s| s.at)
        .min()
        .expect("a callback succeeded after the path healed");
    assert!(first_ok - restored_at < Duration::from_secs(2));
    let (acked, stored) = assert_acknowledged_are_stored(&app, &sent);
    eprintln!(
        "black hole: seen down after {detected:?}; slowest answer {slowest:?}; {} after that, p95 {p95:?}; first success {:?} after the path healed; {acked} acknowledged, {stored} stored",
        after.len(),
        first_ok - restored_at
    );
}

/// While down, `/readyz` answers 503 within a second, the admin API 503
/// at once, and the poller asks the vendor nothing (a pass returns at once
/// with the outage); back, `/readyz` is 200 within 2 s and the next pass
/// asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_down_readiness_and_the_admin_api_answer_503_at_once_and_the_poller_asks_nothing() {
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let via = db.url_via(proxy.port);
    let sim = start_sim(sim_config()).await;
    let mut env = sim.haoka172().env();
    env.push(("HAOKA172_OVERDUE", ZERO_OVERDUE));
    env.push(("DB_TIMEOUT_SECS", "3"));
    let app = TestApp::spawn_on(db, Some(via), &env).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(haoka_sync::sim::Answer::Label("已发货".into())));
    app.track(&["RD1"]).await;
    let get = |path: &str| {
        let req = app
            .client
            .get(format!("{}{path}", app.address))
            .bearer_auth(ADMIN);
        async move {
            let started = Instant::now();
            let status = req.send().await.unwrap().status().as_u16();
            (status, started.elapsed())
        }
    };
    assert_eq!(get("/readyz").await.0, 200);

    proxy.cut();
    // No traffic: readiness itself finds the outage, within a second.
    let (status, took) = get("/readyz").await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_secs(1), "{took:?}");
    wait_for_health(&app, false, Duration::from_secs(1)).await;
    for path in ["/readyz", "/api/orders/haoka172/RD1"] {
        let (status, took) = get(path).await;
        assert_eq!(status, 503, "{path}");
        assert!(took < Duration::from_millis(200), "{path}: {took:?}");
    }
    for _ in 0..3 {
        let started = Instant::now();
        let results = app
            .poller
            .run_pass(Some(haoka_sync::vendors::Vendor::Haoka172))
            .await
            .unwrap();
        match &results[0] {
            Err(haoka_sync::poller::PollError::Db(e)) => assert!(e.is_unavailable(), "{e:?}"),
            other => panic!("{other:?}"),
        }
        app.poller.scheduled_tick().await;
        assert!(started.elapsed() < Duration::from_millis(200));
    }
    assert!(
        fake.calls().is_empty(),
        "asked while down: {:?}",
        fake.calls()
    );

    proxy.restore().await;
    let restored_at = Instant::now();
    loop {
        let (status, _) = get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            restored_at.elapsed() < Duration::from_secs(2),
            "not ready again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "readyz: ready again {:?} after the return",
        restored_at.elapsed()
    );
    assert_eq!(get("/api/orders/haoka172/RD1").await.0, 200);
    let s = app.poll().await;
    assert_eq!(s.queried, 1, "{s}");
    assert_eq!(fake.calls().len(), 1);
}
