//! 大麦家 polling against the simulator's 大麦家 on 127.0.0.1 (acceptance
//! points of the 大麦家 issue).

use std::time::Duration;

use diesel::connection::SimpleConnection;
use haoka_sync::vendors::Vendor;

use haoka_sync::sim::{
    SimConfig, Simulator, APP_ID, APP_SECRET, RECEIVER_ADDRESS, RECEIVER_NAME, RECEIVER_PHONE,
};

use crate::helpers::*;

const TOKEN: &str = "tok-env";

/// The app polling the simulator's 大麦家, which accepts `TOKEN`.
async fn setup(extra: &[(&str, &str)]) -> (TestApp, Simulator) {
    let sim = start_sim(SimConfig {
        damaijia_token: TOKEN.into(),
        ..sim_config()
    })
    .await;
    let mut env = sim.damaijia().env();
    env.push(("DAMAIJIA_OWNER_ID", "pdd-shop-1"));
    env.extend_from_slice(extra);
    let app = TestApp::spawn_with(&env).await;
    (app, sim)
}

fn future_ms(hours: i64) -> i64 {
    (chrono::Utc::now() + chrono::Duration::hours(hours)).timestamp_millis()
}

fn sns(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("201117-{prefix}{i:04}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn forty_five_due_orders_in_batches_of_twenty_take_three_calls_and_all_update() {
    let (app, sim) = setup(&[]).await;
    let fake = sim.damaijia();
    let ids = sns("B", 45);
    for (i, sn) in ids.iter().enumerate() {
        fake.order(sn, 1 + (i as i64 % 3), 1, future_ms(48));
    }
    app.track_for("damaijia", &refs(&ids)).await;
    let s = app.poll_vendor(Vendor::Damaijia).await;
    assert_eq!(
        (s.queried, s.calls, s.not_found, s.errors),
        (45, 3, 0, 0),
        "{s}"
    );

    let calls = fake.calls();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        let body = &call.body;
        assert_eq!(call.authorization, TOKEN, "raw token, no Bearer");
        assert!(
            body.get("edition").is_none(),
            "no edition unless configured: {body}"
        );
        assert_eq!(body["owner_id"], "pdd-shop-1");
        assert!(body["order_sns"].as_array().unwrap().len() <= 20);
    }
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders WHERE vendor = 'damaijia' AND status = 'new'"
        ),
        0
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM damaijia_orders WHERE status = 'pending' AND goods_name = '流量卡'"), 15);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders WHERE vendor = 'damaijia' AND status = 'shipped'"
        ),
        15
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders WHERE vendor = 'damaijia' AND status = 'completed'"
        ),
        15
    );
    // Every call is on the books with what it cost.
    assert_eq!(
        count(
            &mut c,
            "SELECT cost::bigint AS n FROM vendor_call_costs WHERE vendor = 'damaijia'"
        ),
        12
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT calls AS n FROM vendor_call_costs WHERE vendor = 'damaijia'"
        ),
        3
    );
}

#[tokio::test]
async fn edition_is_sent_only_when_configured() {
    let (app, sim) = setup(&[("DAMAIJIA_EDITION", "2")]).await;
    let fake = sim.damaijia();
    fake.order("201117-E1", 1, 1, future_ms(48));
    app.track_for("damaijia", &["201117-E1"]).await;
    app.poll_vendor(Vendor::Damaijia).await;
    assert_eq!(fake.calls()[0].body["edition"], "2");
}

#[tokio::test]
async fn a_rejected_token_with_credentials_logs_in_once_and_retries() {
    let (app, sim) = setup(&[
        ("DAMAIJIA_APP_ID", APP_ID),
        ("DAMAIJIA_APP_SECRET", APP_SECRET),
    ])
    .await;
    let fake = sim.damaijia();
    fake.order("201117-A1", 2, 1, future_ms(48));
    fake.revoke_tokens();
    app.track_for("damaijia", &["201117-A1"]).await;
    let s = app.poll_vendor(Vendor::Damaijia).await;
    assert_eq!((s.queried, s.errors), (1, 0), "{s}");
    assert_eq!(fake.logins(), 1);
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "the failed call and one retry");
    let login_token = calls[1].authorization.clone();
    assert_eq!(fake.tokens(), [login_token.as_str()], "the login's token");
    let mut c = app.db.conn();
    assert_eq!(order_of(&mut c, "damaijia", "201117-A1"), "shipped");

    // The new token is kept for the next pass: no second login.
    app.make_all_due();
    app.poll_vendor(Vendor::Damaijia).await;
    assert_eq!(fake.logins(), 1);
    assert_eq!(fake.calls().last().unwrap().authorization, login_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_with_a_rejected_token_log_in_only_once() {
    let (app, sim) = setup(&[
        ("DAMAIJIA_APP_ID", APP_ID),
        ("DAMAIJIA_APP_SECRET", APP_SECRET),
    ])
    .await;
    let fake = sim.damaijia();
    let ids = sns("P", 40);
    for sn in &ids {
        fake.order(sn, 1, 1, future_ms(48));
    }
    fake.revoke_tokens();
    app.track_for("damaijia", &refs(&ids)).await;
    let env = [
        ("DATABASE_URL", app.db.url.expose()),
        ("DAMAIJIA_BASE_URL", sim.damaijia_url()),
        ("DAMAIJIA_TOKEN", TOKEN),
        ("DAMAIJIA_OWNER_ID", "pdd-shop-1"),
        ("DAMAIJIA_APP_ID", APP_ID),
        ("DAMAIJIA_APP_SECRET", APP_SECRET),
    ];
    let config = haoka_sync::config::Config::with(&env).unwrap();
    let pool = haoka_sync::db::pool(&config.database_url, 4, Duration::from_secs(2));
    let other = haoka_sync::startup::poller(&config, pool).unwrap();
    let (a, b) = tokio::join!(
        app.poller.run_pass(Some(Vendor::Damaijia)),
        other.run_pass(Some(Vendor::Damaijia))
    );
    let (a, b) = (a.unwrap().remove(0).unwrap(), b.unwrap().remove(0).unwrap());
    assert_eq!(a.queried + b.queried, 40, "{a} / {b}");
    assert_eq!(fake.logins(), 1, "one login for the deployment");
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders WHERE vendor = 'damaijia' AND status = 'pending'"
        ),
        40
    );
}

#[tokio::test]
async fn a_rejected_token_without_credentials_pauses_with_one_call_and_a_clear_reason() {
    let (app, sim) = setup(&[]).await;
    let fake = sim.damaijia();
    let ids = sns("N", 30);
    for sn in &ids {
        fake.order(sn, 1, 1, future_ms(48));
    }
    fake.revoke_tokens();
    app.track_for("damaijia", &refs(&ids)).await;
    let s = app.poll_vendor(Vendor::Damaijia).await;
    assert!(s.paused_until.is_some(), "{s}");
    assert_eq!(fake.calls().len(), 1, "no retry storm");
    assert_eq!(fake.logins(), 0);
    let mut c = app.db.conn();
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM vendor_pauses WHERE vendor = 'damaijia' AND reason LIKE '%DAMAIJIA_TOKEN%'"),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE lease_owner IS NOT NULL"
        ),
        0,
        "leases given back"
    );
    let again = app.poll_vendor(Vendor::Damaijia).await;
    assert!(again.paused_until.is_some());
    assert_eq!(fake.calls().len(), 1, "paused: no call");
}

#[tokio::test]
async fn balance_and_shop_binding_errors_pause_and_name_the_fix() {
    for (code, fix) in [
        (209, "top up"),
        (2011, "DAMAIJIA_OWNER_ID"),
        (2000, "enable it"),
        (2012, "subscribe"),
    ] {
        let (app, sim) = setup(&[]).await;
        let fake = sim.damaijia();
        fake.order("201117-F1", 1, 1, future_ms(48));
        fake.fail_always(code);
        app.track_for("damaijia", &["201117-F1"]).await;
        let s = app.poll_vendor(Vendor::Damaijia).await;
        assert!(s.paused_until.is_some(), "{code}: {s}");
        let mut c = app.db.conn();
        let sql = format!("SELECT count(*) AS n FROM vendor_pauses WHERE reason LIKE '%{code}%' AND reason LIKE '%{fix}%'");
        assert_eq!(count(&mut c, &sql), 1, "{code} names its fix");
        assert_eq!(fake.calls().len(), 1);
    }
}

#[tokio::test]
async fn transient_failures_back_off_and_2004_marks_not_found() {
    let (app, sim) = setup(&[]).await;
    let fake = sim.damaijia();
    fake.order("201117-T1", 1, 1, future_ms(48));
    app.track_for("damaijia", &["201117-T1"]).await;
    fake.fail_always(2010);
    let s = app.poll_vendor(Vendor::Damaijia).await;
    assert_eq!((s.errors, s.paused_until.is_some()), (1, false), "{s}");
    let mut c = app.db.conn();
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE order_id = '201117-T1' AND last_poll_outcome = 'vendor_error' AND quiet_polls = 1 AND next_check_at > now()"),
        1
    );
    fake.fail_always(2004);
    app.make_all_due();
    let s = app.poll_vendor(Vendor::Damaijia).await;
    assert_eq!(s.not_found, 1, "{s}");
}

#[tokio::test]
async fn a_number_missing_from_the_reply_is_not_found_and_the_others_apply() {
    let (app, sim) = setup(&[]).await;
    let fake = sim.damaijia();
    fake.order("201117-M1", 2, 1, future_ms(48));
    fake.order("201117-M3", 3, 1, future_ms(48));
    app.track_for("damaijia", &["201117-M1", "201117-M2", "201117-M3"])
        .await;
    let s = app.poll_vendor(Vendor::Damaijia).await;
    assert_eq!((s.queried, s.not_found, s.calls), (3, 1, 1), "{s}");
    let mut c = app.db.conn();
    assert_eq!(order_of(&mut c, "damaijia", "201117-M1"), "shipped");
    assert_eq!(order_of(&mut c, "damaijia", "201117-M3"), "completed");
    assert_eq!(order_of(&mut c, "damaijia", "201117-M2"), "new");
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM orders JOIN order_polls USING (vendor, order_id) WHERE order_id = '201117-M2' AND last_poll_outcome = 'not_found'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_receiver_name_phone_or_address_reaches_any_table_or_log() {
    let (app, sim) = setup(&[]).await;
    let fake = sim.damaijia();
    let ids = sns("PII", 30);
    for sn in &ids {
        fake.order(sn, 1, 1, future_ms(48));
    }
    app.track_for("damaijia", &refs(&ids)).await;
    // Two passes so every answer shape is used; then the binary, to read its logs.
    app.poll_vendor(Vendor::Damaijia).await;
    app.make_all_due();
    app.poll_vendor(Vendor::Damaijia).await;
    app.make_all_due();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_haoka-sync"));
    cmd.env_clear()
        .args(["poll-once", "--vendor", "damaijia"])
        .env("DATABASE_URL", app.db.url.expose())
        .env("DAMAIJIA_BASE_URL", sim.damaijia_url())
        .env("DAMAIJIA_TOKEN", TOKEN)
        .env("DAMAIJIA_OWNER_ID", "pdd-shop-1")
        .env("RUST_LOG", "debug")
        .current_dir(std::env::temp_dir());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("damaijia: due 30, queried 30"), "{logs}");
    assert!(fake.calls().len() >= 6, "several answer shapes were seen");

    let secrets = [RECEIVER_NAME, RECEIVER_PHONE, RECEIVER_ADDRESS, "幸福路"];
    for s in secrets {
        assert!(!logs.contains(s), "{s} in the logs");
    }
    let mut c = app.db.conn();
    #[derive(diesel::QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
    }
    use diesel::RunQueryDsl;
    let tables: Vec<T> = diesel::sql_query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .load(&mut c)
    .unwrap();
    assert!(tables.len() >= 8);
    for t in tables {
        for s in secrets {
            let sql = format!(
                "SELECT count(*) AS n FROM \"{0}\" x WHERE x::text LIKE '%{s}%'",
                t.table_name
            );
            assert_eq!(count(&mut c, &sql), 0, "{s} stored in {}", t.table_name);
        }
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM damaijia_orders WHERE receiver_phone_masked = '155****7515' AND receiver_name_masked = '罗**'"),
        30
    );
}

#[tokio::test]
async fn linked_orders_show_contradictions() {
    let (app, sim) = setup(&[]).await;
    let fake = sim.damaijia();
    // Same id on both sides: PDD refunded while 172 shipped.
    let linked = "201117-LINK0001";
    fake.order(linked, 2, 4, future_ms(48));
    assert_eq!(app.send("R-L1", linked, "已发货").await.0, 200);
    // Different ids, linked by ops: 172 shipped, PDD still 待发货 past its ship-by time.
    fake.order("201117-LATE0001", 1, 1, future_ms(-2));
    assert_eq!(app.send("R-L2", "DOWN-LATE", "已发货").await.0, 200);
    // A consistent pair.
    fake.order("201117-OK0001", 2, 1, future_ms(48));
    assert_eq!(app.send("R-L3", "201117-OK0001", "已发货").await.0, 200);
    app.track_for("damaijia", &[linked, "201117-LATE0001", "201117-OK0001"])
        .await;
    let mut c = app.db.conn();
    c.batch_execute("INSERT INTO order_link_overrides (haoka172_order_id, damaijia_order_sn) VALUES ('DOWN-LATE', '201117-LATE0001')")
        .unwrap();
    app.poll_vendor(Vendor::Damaijia).await;

    assert_eq!(order_of(&mut c, "damaijia", linked), "cancelled");
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) AS n FROM order_links WHERE haoka172_order_id = '{linked}' AND linked_by = 'same_id' AND contradiction = 'pdd_refunded_but_172_proceeds'")),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_links WHERE haoka172_order_id = 'DOWN-LATE' AND linked_by = 'manual' AND contradiction = '172_shipped_but_pdd_unshipped_past_ship_by'"),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_links WHERE haoka172_order_id = '201117-OK0001' AND contradiction IS NULL"),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM damaijia_orders WHERE order_sn = '201117-LATE0001' AND ship_by_alert = 'past_ship_by'"),
        1
    );
}

fn order_of(c: &mut diesel::PgConnection, vendor: &str, id: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
    }
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT status FROM orders WHERE vendor = $1 AND order_id = $2")
        .bind::<diesel::sql_types::Text, _>(vendor)
        .bind::<diesel::sql_types::Text, _>(id)
        .get_result::<S>(c)
        .unwrap()
        .status
}
