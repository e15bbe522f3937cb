//! The attacks of the security issue, each reproduced against the real
//! service and shown refused: an attacker who has read one callback and can
//! send anything to the callback URL.

use diesel::connection::SimpleConnection;
use diesel::RunQueryDsl;
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;
use haoka_sync::sim::Answer;

const BAD_SIGNATURE: &str = r#"{"code":-1,"message":"bad signature"}"#;

/// The order's status, vendor number and last change, to show it untouched.
#[derive(Debug, PartialEq, diesel::QueryableByName)]
struct Snapshot {
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    vendor_order_no: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    updated_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    events: i64,
}

fn snapshot(app: &TestApp, order_id: &str) -> Option<Snapshot> {
    let mut c = app.db.conn();
    diesel::sql_query(
        "SELECT o.status, o.vendor_order_no, o.updated_at, \
                (SELECT count(*) FROM order_events e WHERE e.order_id = o.order_id) AS events \
         FROM orders o WHERE o.vendor = 'haoka172' AND o.order_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(order_id)
    .get_result(&mut c)
    .ok()
}

fn outcomes(app: &TestApp, request_id_prefix: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct O {
        #[diesel(sql_type = diesel::sql_types::Text)]
        outcome: String,
    }
    let mut c = app.db.conn();
    diesel::sql_query(
        "SELECT outcome FROM inbound_callbacks WHERE request_id LIKE $1 || '%' ORDER BY id",
    )
    .bind::<diesel::sql_types::Text, _>(request_id_prefix)
    .load::<O>(&mut c)
    .unwrap()
    .into_iter()
    .map(|o| o.outcome)
    .collect()
}

/// A callback whose `Data` names `order_no` and `order_no_172` freely, as
/// an attacker writes it.
fn forged(request_id: &str, order_no: &str, order_no_172: &str, label: &str) -> Value {
    let data = json!({
        "OrderNo": order_no, "OrderNo172": order_no_172, "OrderStatus": label,
        "ThirdPhone": "13000000000", "Remark": "", "IsFirstCharge": 1, "FirstCharge": "50"
    });
    json!({"RequidId": request_id, "Data": data.to_string()})
}

const TERMINAL_LABELS: [&str; 8] = [
    "已撤单",
    "已结算",
    "审核不通过",
    "已取消",
    "无法结算",
    "审核失败",
    "已结算",
    "已撤单",
];

#[tokio::test]
async fn a_captured_sign_moved_into_order_no_172_changes_no_other_order() {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    // A: its genuine callbacks (signed over OrderNo) tell its vendor number;
    // the attacker captured one signed over its OrderNo172 as well.
    assert_eq!(app.send("A-1", "A", "已发货").await.0, 200);
    let captured = app.key.encrypt("mlkjA");
    let genuine = callback("A-2", "A", "已发货");
    assert_eq!(app.post_callback(&genuine, Some(&captured)).await.0, 200);
    // B: vendor number known. C: tracked, vendor number not known yet.
    assert_eq!(app.send("B-1", "B", "已提运营商").await.0, 200);
    app.track(&["C"]).await;
    let before = ["A", "B", "C"].map(|o| snapshot(&app, o));

    // 8 forgeries for B with the captured sign in the header, 8 with it as
    // a body field: every one refused with the same answer.
    for (i, label) in TERMINAL_LABELS.iter().enumerate() {
        let body = forged(&format!("FH-{i}"), "B", "mlkjA", label);
        assert_eq!(
            app.post_callback(&body, Some(&captured)).await,
            (401, BAD_SIGNATURE.to_owned()),
            "{label}"
        );
        let mut body = forged(&format!("FB-{i}"), "B", "mlkjA", label);
        body["sign"] = Value::String(captured.clone());
        assert_eq!(
            app.post_callback(&body, None).await,
            (401, BAD_SIGNATURE.to_owned()),
            "{label}"
        );
    }
    // For C (no vendor number yet) the forgery cannot be decided without the
    // vendor: kept, answered so a genuine sender would retry, nothing applied.
    let (status, _) = app
        .post_callback(&forged("FC-1", "C", "mlkjA", "已结算"), Some(&captured))
        .await;
    assert_eq!(status, 503);
    // For an order we do not track, nothing is created.
    let (status, _) = app
        .post_callback(&forged("FD-1", "D", "mlkjA", "已结算"), Some(&captured))
        .await;
    assert_eq!(status, 503);
    assert_eq!(snapshot(&app, "D"), None, "no order created for D");
    let after = ["A", "B", "C"].map(|o| snapshot(&app, o));
    assert_eq!(before, after, "no order changed");
    assert_eq!(outcomes(&app, "FH-"), vec!["bad_signature"; 8]);
    assert_eq!(outcomes(&app, "FB-"), vec!["bad_signature"; 8]);
    assert_eq!(outcomes(&app, "FC-"), ["unverified"]);

    // The one query for C tells its real vendor number: the stored forgery
    // is then judged again and rejected; C ends at the vendor's truth.
    fake.answer("C", Answer::Label("已发货".into()));
    let s = app.poll().await;
    assert_eq!(s.queried, 1, "{s}");
    assert_eq!(fake.calls_for("C"), 1);
    let c_now = snapshot(&app, "C").unwrap();
    assert_eq!(c_now.status, "shipped");
    assert_eq!(c_now.vendor_order_no.as_deref(), Some("mlkjC"));
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE request_id = 'FC-1' AND replay_outcome = 'bad_signature'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM callback_confirmations WHERE request_id = 'FC-1' AND result = 'rejected'"
        ),
        1
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_events WHERE source = 'callback' AND order_id IN ('B', 'C', 'D')"),
        1,
        "only B's own genuine callback"
    );
}

/// Flip the last byte of the block before the last: the probe a padding
/// oracle attack makes 256 times per byte.
fn probe(sign: &str, byte: u8) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ct = b64.decode(sign).unwrap();
    let i = ct.len() - 17;
    ct[i] = byte;
    b64.encode(ct)
}

#[tokio::test]
async fn every_signature_failure_answers_the_same_so_a_padding_oracle_learns_nothing() {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    assert_eq!(app.send("B-1", "ORDERB", "已提运营商").await.0, 200);
    app.track(&["ORDERC"]).await;
    let captured = app.key.encrypt("mlkjORDERB-captured!");
    let wrong = haoka_sync::vendors::haoka172::sign::CallbackKey::from_secret(
        "ffffffffffffffffffffffffffffffff",
    );
    let body = callback("P-0", "ORDERB", "已结算");
    // One of each failure the verifier knows, then the oracle's probes.
    let mut answers = vec![
        app.post_callback(&body, None).await,
        app.post_callback(&callback("P-1", "ORDERB", "已结算"), Some("not*base64!"))
            .await,
        app.post_callback(&callback("P-2", "ORDERB", "已结算"), Some("AAAA"))
            .await,
        app.post_callback(
            &callback("P-3", "ORDERB", "已结算"),
            Some(&wrong.encrypt("ORDERB")),
        )
        .await,
        app.post_callback(
            &callback("P-4", "ORDERB", "已结算"),
            Some(&app.key.encrypt("SOMETHING-ELSE")),
        )
        .await,
        // Decrypts to the OrderNo172 the body states, which is not ORDERB's.
        app.post_callback(
            &forged("P-5", "ORDERB", "mlkjORDERB-captured!", "已结算"),
            Some(&captured),
        )
        .await,
    ];
    let app_ref = &app;
    let probes = join_all((0..=255u8).map(|b| {
        let body = callback(&format!("PO-{b}"), "ORDERB", "已结算");
        let sign = probe(&captured, b);
        async move { app_ref.post_callback(&body, Some(&sign)).await }
    }))
    .await;
    answers.extend(probes);
    let distinct: std::collections::BTreeSet<&(u16, String)> = answers.iter().collect();
    assert_eq!(
        distinct.into_iter().collect::<Vec<_>>(),
        [&(401, BAD_SIGNATURE.to_owned())],
        "one answer for every failure"
    );
    // The precise causes are kept for the operator, not told to the sender.
    let mut c = app.db.conn();
    #[derive(diesel::QueryableByName)]
    struct E {
        #[diesel(sql_type = diesel::sql_types::Text)]
        error: String,
    }
    let errors: std::collections::BTreeSet<String> = diesel::sql_query(
        "SELECT DISTINCT error FROM inbound_callbacks WHERE request_id LIKE 'P%'",
    )
    .load::<E>(&mut c)
    .unwrap()
    .into_iter()
    .map(|e| e.error)
    .collect();
    for want in [
        "sign missing",
        "not valid Base64",
        "bad padding",
        "does not match",
        "vendor number",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{want} in {errors:?}"
        );
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE request_id LIKE 'P%'"
        ),
        6 + 256,
        "every probe stored"
    );

    // Whatever an oracle would have produced: a ciphertext that decrypts to
    // bytes of the attacker's choosing, sent with those bytes as OrderNo172.
    let garbage = "q#9@Zt!~Lm2&Xv7^";
    let forged_sign = app.key.encrypt(garbage);
    let before = (snapshot(&app, "ORDERB"), snapshot(&app, "ORDERC"));
    let r = app
        .post_callback(
            &forged("G-1", "ORDERB", garbage, "已结算"),
            Some(&forged_sign),
        )
        .await;
    assert_eq!(
        r,
        (401, BAD_SIGNATURE.to_owned()),
        "ORDERB holds its number"
    );
    let (status, _) = app
        .post_callback(
            &forged("G-2", "ORDERC", garbage, "已结算"),
            Some(&forged_sign),
        )
        .await;
    assert_eq!(status, 503, "kept until the vendor tells ORDERC's number");
    fake.answer("ORDERC", Answer::Label("已提运营商".into()));
    app.poll().await;
    assert_eq!(snapshot(&app, "ORDERB"), before.0);
    let c_now = snapshot(&app, "ORDERC").unwrap();
    assert_eq!(
        c_now.status, "submitted",
        "the vendor's truth, not the forgery"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM order_events WHERE request_id LIKE 'G-%' OR request_id LIKE 'P%'"
        ),
        0
    );
}

#[tokio::test]
async fn ids_of_10_to_100_kb_are_malformed_and_stored_never_a_500() {
    let app = TestApp::spawn_with(&[("CALLBACK_MAX_BODY_BYTES", "1048576")]).await;
    let sends = (0..100usize).map(|i| {
        let long = "9".repeat(10_000 + i * 909);
        let body = match i % 3 {
            0 => callback(&long, "DOWN-LONG", "已发货"),
            1 => callback(&format!("R-long-{i}"), &long, "已发货"),
            _ => forged(&format!("R-long-{i}"), "DOWN-LONG", &long, "已发货"),
        };
        let sign = app.key.encrypt("DOWN-LONG");
        let app = &app;
        async move {
            let (status, text) = app.post_callback(&body, Some(&sign)).await;
            (i, status, text)
        }
    });
    let results: Vec<(usize, u16, String)> = futures_util::stream::iter(sends)
        .buffer_unordered(20)
        .collect()
        .await;
    for (i, status, text) in &results {
        assert_eq!(*status, 400, "#{i}: {text}");
        assert!(text.contains("at most 128 bytes"), "#{i}: {text}");
    }
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'malformed' AND body_size >= 10000"
        ),
        100,
        "every request stored with its raw body"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE length(request_id) > 128 OR length(order_id) > 128"
        ),
        0,
        "no over-long id in an indexed column"
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM orders"), 0);

    // The same bound for ids given to the admin API.
    let long = "x".repeat(200);
    let r = app
        .client
        .get(format!("{}/api/orders/haoka172/{long}", app.address))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .post(format!("{}/api/orders", app.address))
        .bearer_auth(ADMIN)
        .json(&json!({"vendor": "haoka172", "order_id": long}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_genuine_sign_over_order_no_172_applies_when_the_number_is_known_and_else_after_one_query(
) {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    // K's vendor number comes from a GetOrderInfo answer.
    app.track(&["K", "U"]).await;
    app.make_all_due();
    fake.answer("K", Answer::Label("已提运营商".into()));
    fake.answer("U", Answer::NotFound);
    app.poll().await;
    assert_eq!(
        snapshot(&app, "K").unwrap().vendor_order_no.as_deref(),
        Some("mlkjK")
    );
    let (status, body) = app
        .post_callback(
            &callback("K-1", "K", "已发货"),
            Some(&app.key.encrypt("mlkjK")),
        )
        .await;
    assert_eq!((status, body.as_str()), (200, SUCCESS));
    assert_eq!(snapshot(&app, "K").unwrap().status, "shipped");

    // U's number is unknown: kept as unverified, and U is due at once.
    let cb = callback("U-1", "U", "已发货");
    let sign = app.key.encrypt("mlkjU");
    assert_eq!(app.post_callback(&cb, Some(&sign)).await.0, 503);
    assert_eq!(outcomes(&app, "U-1"), ["unverified"]);
    assert_eq!(snapshot(&app, "U").unwrap().status, "new");
    let calls_before = fake.calls_for("U");
    fake.answer("U", Answer::Label("已发货".into()));
    let s = app.poll().await;
    assert_eq!(s.queried, 1, "{s}");
    assert_eq!(fake.calls_for("U"), calls_before + 1, "one GetOrderInfo");
    let u = snapshot(&app, "U").unwrap();
    assert_eq!(u.status, "shipped", "the vendor's truth");
    assert_eq!(u.vendor_order_no.as_deref(), Some("mlkjU"));
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks i JOIN order_events e ON e.id = i.replay_event_id \
             WHERE i.request_id = 'U-1' AND i.outcome = 'unverified' AND i.replay_outcome = 'applied' \
               AND i.replayed_at IS NOT NULL AND e.source = 'callback'"
        ),
        1,
        "the stored callback applied by the replay, its original outcome kept"
    );
    // The vendor's retry of the same push is now a duplicate.
    assert_eq!(
        app.post_callback(&cb, Some(&sign)).await,
        (200, SUCCESS.to_owned())
    );
    assert_eq!(outcomes(&app, "U-1"), ["unverified", "duplicate"]);
    // Nothing is due any more: no second query.
    assert_eq!(app.poll().await.queried, 0);
}

#[tokio::test]
async fn a_replayed_terminal_sign_the_vendor_does_not_confirm_leaves_the_order_non_terminal() {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    assert_eq!(app.send("R-1", "ORD", "已发货").await.0, 200);
    // The attacker replays ORD's sign (over its OrderNo) with a terminal
    // status: acknowledged, kept, not applied.
    let (status, body) = app.send("X-1", "ORD", "已结算").await;
    assert_eq!((status, body.as_str()), (200, SUCCESS));
    assert_eq!(snapshot(&app, "ORD").unwrap().status, "shipped");
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM order_events WHERE request_id = 'X-1' AND effect = 'unconfirmed' AND NOT applied"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM overdue_orders WHERE order_id = 'ORD'"
        ),
        1,
        "due at once for the confirming query"
    );
    // The vendor says shipped: refuted, the order stays non-terminal.
    fake.answer("ORD", Answer::Label("已发货".into()));
    let s = app.poll().await;
    assert_eq!((s.queried, fake.calls_for("ORD")), (1, 1), "{s}");
    assert_eq!(snapshot(&app, "ORD").unwrap().status, "shipped");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM callback_confirmations WHERE request_id = 'X-1' \
             AND reason = 'terminal' AND claimed_status = 'settled' AND result = 'refuted' AND vendor_status = '已发货'"
        ),
        1,
        "kept and flagged"
    );
    // A second forgery is held too, but the order is not expedited again:
    // a replayed sign can cost at most one extra query per order.
    assert_eq!(app.send("X-2", "ORD", "已撤单").await.0, 200);
    assert_eq!(app.poll().await.queried, 0);
    assert_eq!(fake.calls_for("ORD"), 1);
    assert_eq!(snapshot(&app, "ORD").unwrap().status, "shipped");
    // It waits for the ordinary schedule; when that query comes and the
    // vendor has really revoked the order, the order follows the vendor.
    app.make_all_due();
    fake.answer("ORD", Answer::Label("已撤单".into()));
    app.poll().await;
    assert_eq!(snapshot(&app, "ORD").unwrap().status, "revoked");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM callback_confirmations WHERE request_id = 'X-2' AND result = 'confirmed'"
        ),
        1
    );
}

#[tokio::test]
async fn a_genuine_terminal_callback_is_final_after_one_confirming_query_or_at_once_when_off() {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    assert_eq!(app.send("G-1", "GEN", "已完成").await.0, 200);
    assert_eq!(app.send("G-2", "GEN", "已结算").await.0, 200);
    assert_eq!(snapshot(&app, "GEN").unwrap().status, "completed");
    fake.answer("GEN", Answer::Label("已结算".into()));
    assert_eq!(app.poll().await.queried, 1);
    assert_eq!(snapshot(&app, "GEN").unwrap().status, "settled");
    let mut c = app.db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM callback_confirmations WHERE request_id = 'G-2' AND result = 'confirmed'"
        ),
        1
    );
    // Terminal now: never queried again.
    app.make_all_due();
    assert_eq!(app.poll().await.queried, 0);
    assert_eq!(fake.calls_for("GEN"), 1);

    // Turned off, a terminal callback is final at once, without a query.
    let (off, sim_off) = TestApp::with_sim(&[CONFIRM_OFF]).await;
    let fake_off = sim_off.haoka172();
    assert_eq!(off.send("O-1", "OFF", "已结算").await.0, 200);
    assert_eq!(snapshot(&off, "OFF").unwrap().status, "settled");
    off.make_all_due();
    assert_eq!(off.poll().await.queried, 0);
    assert_eq!(fake_off.calls().len(), 0);
}

#[tokio::test]
async fn without_the_172_poller_terminal_callbacks_apply_at_once() {
    // Nothing could confirm them: holding them would hold them forever.
    let app = TestApp::spawn_with(&[("HAOKA172_USER_ID", "")]).await;
    assert_eq!(app.send("N-1", "NOPOLL", "已结算").await.0, 200);
    assert_eq!(snapshot(&app, "NOPOLL").unwrap().status, "settled");
}

#[tokio::test]
async fn the_php_integrations_sign_over_order_no_verifies_from_the_header_and_the_body() {
    let app = TestApp::spawn().await;
    // docs/vendors.md vector: OpenSSL's AES-256-CBC of the OrderNo, as the PHP
    // integration (openssl_decrypt) expects it.
    let vector = "1xdJ6RqsV/yikhtfNiDfgA==";
    let body = callback("PHP-1", "DOWN20240101001", "已发货");
    assert_eq!(
        app.post_callback(&body, Some(vector)).await,
        (200, SUCCESS.to_owned())
    );
    // The PHP code falls back to a `sign` body field; `sign` wins over `Sign`.
    let mut body = callback("PHP-2", "DOWN20240101001", "已完成");
    body["sign"] = Value::String(vector.into());
    body["Sign"] = Value::String("garbage".into());
    assert_eq!(
        app.post_callback(&body, None).await,
        (200, SUCCESS.to_owned())
    );
    let mut c = app.db.conn();
    assert_eq!(
        order(&mut c, "DOWN20240101001").unwrap().status,
        "completed"
    );
    let rows = inbound(&mut c);
    assert!(rows
        .iter()
        .all(|r| r.sign_matched.as_deref() == Some("order_no")));
}

#[tokio::test]
async fn a_vendor_number_once_known_only_a_query_answer_replaces_it() {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    // An attacker replays R's sign (over OrderNo) before its genuine
    // callbacks, writing a vendor number of their choosing.
    assert_eq!(
        app.post_callback(
            &forged("Z-1", "R", "mlkjEVIL", "已提运营商"),
            Some(&app.key.encrypt("R"))
        )
        .await
        .0,
        200
    );
    // Later callbacks cannot change it...
    assert_eq!(
        app.post_callback(
            &forged("Z-2", "R", "mlkjOTHER", "已发货"),
            Some(&app.key.encrypt("R"))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        snapshot(&app, "R").unwrap().vendor_order_no.as_deref(),
        Some("mlkjEVIL")
    );
    // ...but the vendor's own answer does, even when its status is older.
    let mut c = app.db.conn();
    c.batch_execute("UPDATE order_polls SET next_check_at = now() WHERE order_id = 'R'")
        .unwrap();
    fake.answer("R", Answer::Label("已提运营商".into()));
    app.poll().await;
    let r = snapshot(&app, "R").unwrap();
    assert_eq!(r.vendor_order_no.as_deref(), Some("mlkjR"));
    assert_eq!(r.status, "shipped", "a stale answer moves nothing back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_the_database_refuses_is_kept_raw_and_answered_503_never_500() {
    let app = TestApp::spawn().await;
    // Fault injection: the database refuses any event for order BOOM.
    let mut c = app.db.conn();
    c.batch_execute("ALTER TABLE order_events ADD CONSTRAINT boom CHECK (order_id <> 'BOOM')")
        .unwrap();
    let app_ref = &app;
    let results = join_all((0..20).map(|i| async move {
        let order = if i % 5 == 0 { "BOOM" } else { "FINE" };
        app_ref.send(&format!("I-{i}"), order, "已发货").await
    }))
    .await;
    for (i, (status, body)) in results.iter().enumerate() {
        let want = if i % 5 == 0 { 503 } else { 200 };
        assert_eq!(*status, want, "#{i}: {body}");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'internal_error' AND order_id = 'BOOM' AND error LIKE '%boom%'"
        ),
        4,
        "kept raw, with the cause"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'applied'"
        ),
        16,
        "the others in the same batches are applied"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders WHERE order_id = 'BOOM'"
        ),
        0
    );
}
