//! PostgreSQL goes away and comes back: nothing is acknowledged while it is
//! gone, and the service recovers without a restart.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_unreachable_callbacks_get_503_and_recover_when_it_returns() {
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let via = db.url_via(proxy.port);
    let app = TestApp::spawn_on(db, Some(via), &[]).await;
    let ready = |app: &TestApp| {
        let url = format!("{}/readyz", app.address);
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };

    assert_eq!(app.send("R-o1", "DOWN100", "待处理").await.0, 200);
    assert_eq!(ready(&app).await, 200);

    proxy.cut();
    let (status, body) = app.send("R-o2", "DOWN100", "已发货").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], -1);
    assert_eq!(ready(&app).await, 503);

    proxy.restore().await;
    // The vendor retries the same push; it now lands.
    let mut last = (0, String::new());
    for _ in 0..20 {
        last = app.send("R-o2", "DOWN100", "已发货").await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(last, (200, SUCCESS.to_owned()));
    assert_eq!(ready(&app).await, 200);

    let mut c = app.db.conn();
    assert_eq!(order(&mut c, "DOWN100").unwrap().status, "shipped");
    // The refused attempt left no acknowledged trace; the retry applied once.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM order_events WHERE request_id = 'R-o2'"
        ),
        1
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM inbound_callbacks WHERE request_id = 'R-o2' AND outcome = 'applied'"), 1);
}

/// Ingest writers keep their connection between batches. When the server
/// drops it while idle (restart, idle cut, an admin's pg_terminate_backend),
/// the next batch is retried on a fresh connection instead of answering 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_writer_connection_that_died_is_replaced_without_a_503() {
    let app = TestApp::spawn().await;
    for i in 0..6 {
        let (status, body) = app.send(&format!("R-k{i}"), "KEPT100", "待处理").await;
        assert_eq!((status, body.as_str()), (200, SUCCESS));
    }
    let mut c = app.db.conn();
    let up_since = app.health.since();
    // Every connection of the app's, the prober's included: a pool whose
    // connections are all broken is not an outage.
    let killed = count(
        &mut c,
        &format!(
            "SELECT count(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()) t",
            app.db.name
        ),
    );
    assert!(killed >= 1, "the writers held connections");
    for i in 0..6 {
        let (status, body) = app.send(&format!("R-a{i}"), "KEPT100", "已发货").await;
        assert_eq!((status, body.as_str()), (200, SUCCESS), "callback {i}");
    }
    assert_eq!(order(&mut c, "KEPT100").unwrap().status, "shipped");
    assert!(app.health.is_up());
    assert_eq!(app.health.since(), up_since, "never counted as down");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE request_id LIKE 'R-a%' AND outcome = 'applied'"
        ),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_unavailable_in_the_admin_api_and_the_poller_never_an_internal_error() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let via = db.url_via(proxy.port);
    let (app, sim) = {
        let sim = start_sim(sim_config()).await;
        let mut env = sim.haoka172().env();
        env.push(("HAOKA172_OVERDUE", ZERO_OVERDUE));
        let env: Vec<(&str, &str)> = env.to_vec();
        (TestApp::spawn_on(db, Some(via.clone()), &env).await, sim)
    };
    let _ = &sim;
    app.track(&["LOST1"]).await;
    // A connection that dies while in use: the classification diesel errors
    // get on their way into `DbError`.
    let mut direct = diesel::PgConnection::establish(&via).unwrap();
    direct.batch_execute("SELECT 1").unwrap();
    proxy.cut();
    let e = haoka_sync::db::DbError::from(direct.batch_execute("SELECT 1").unwrap_err());
    assert!(e.is_unavailable(), "{e:?}");

    let r = app
        .client
        .get(format!("{}/api/orders/haoka172/LOST1", app.address))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "database unavailable, retry later");

    let results = app
        .poller
        .run_pass(Some(haoka_sync::vendors::Vendor::Haoka172))
        .await
        .unwrap();
    match &results[0] {
        Err(haoka_sync::poller::PollError::Db(e)) => assert!(e.is_unavailable(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    proxy.restore().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_checks_the_schema_answers_within_a_second_and_health_answers_head() {
    use diesel::connection::SimpleConnection;
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let via = db.url_via(proxy.port);
    let app = TestApp::spawn_on(db, Some(via), &[("DB_TIMEOUT_SECS", "3")]).await;
    let probe = |method: reqwest::Method, path: &str| {
        let req = app.client.request(method, format!("{}{path}", app.address));
        async move {
            let started = std::time::Instant::now();
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap(), started.elapsed())
        }
    };
    assert_eq!(probe(reqwest::Method::HEAD, "/healthz").await.0, 200);
    assert_eq!(probe(reqwest::Method::HEAD, "/readyz").await.0, 200);
    assert_eq!(probe(reqwest::Method::GET, "/readyz").await.0, 200);

    // The database recreated empty: it answers, but cannot take callbacks.
    let mut c = app.db.conn();
    c.batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .unwrap();
    let (status, body, _) = probe(reqwest::Method::GET, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("schema behind") && body.contains("haoka-sync migrate"),
        "{body}"
    );
    let (status, body) = app.send("R-empty", "EMPTY1", "已发货").await;
    assert_eq!(status, 503, "never a 500: {body}");
    // It answers: a schema problem, not an outage (readiness says which).
    assert!(app.health.is_up());
    assert!(!body.contains("database unavailable"), "{body}");

    // PostgreSQL unreachable: not ready within about a second, not after
    // the pool's 3 s.
    proxy.cut();
    let (status, _, took) = probe(reqwest::Method::GET, "/readyz").await;
    assert_eq!(status, 503);
    assert!(took < std::time::Duration::from_millis(1500), "{took:?}");
    proxy.restore().await;
}
