//! The 172 callback endpoint, acceptance points 1–6 of the receiver issue.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn callbacks_signed_over_order_no_or_a_known_order_no_172_are_accepted_and_normalized() {
    let app = TestApp::spawn().await;
    // Signed over OrderNo; it also tells the vendor number, mlkjDOWN001.
    let (status, body) = app.send("R-1", "DOWN001", "已提运营商").await;
    assert_eq!(status, 200);
    assert_eq!(body, SUCCESS);
    // Signed over OrderNo172, which is now known to be DOWN001's.
    let cb = callback("R-2", "DOWN001", "已发货");
    let (status, body) = app
        .post_callback(&cb, Some(&app.key.encrypt("mlkjDOWN001")))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, SUCCESS);
    // Signed over an OrderNo172 nobody vouched for: not applied yet.
    let cb = callback("R-3", "DOWN002", "已发货");
    let (status, _) = app
        .post_callback(&cb, Some(&app.key.encrypt("mlkjDOWN002")))
        .await;
    assert_eq!(status, 503, "the vendor retries it later");

    let mut c = app.db.conn();
    let o1 = order(&mut c, "DOWN001").expect("order created by its first callback");
    assert_eq!(o1.status, "shipped");
    assert_eq!(o1.vendor_status.as_deref(), Some("已发货"));
    assert!(
        order(&mut c, "DOWN002").is_none(),
        "an unverified callback creates no order"
    );

    let rows = inbound(&mut c);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].outcome, "applied");
    assert_eq!(rows[0].sign_matched.as_deref(), Some("order_no"));
    assert_eq!(rows[1].outcome, "applied");
    assert_eq!(rows[1].sign_matched.as_deref(), Some("order_no_172"));
    assert_eq!(rows[2].outcome, "unverified");
    assert!(rows[2].body.contains("mlkjDOWN002"), "raw body kept");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM order_events WHERE source = 'callback' AND applied"
        ),
        2
    );
}

#[tokio::test]
async fn a_redelivered_request_id_is_acknowledged_recorded_as_duplicate_and_changes_nothing() {
    let app = TestApp::spawn().await;
    assert_eq!(app.send("R-dup", "DOWN010", "待处理").await.0, 200);
    let mut c = app.db.conn();
    let before = order(&mut c, "DOWN010").unwrap();

    // Same RequidId, even with a different (later) status: a redelivery.
    let (status, body) = app.send("R-dup", "DOWN010", "已发货").await;
    assert_eq!((status, body.as_str()), (200, SUCCESS));

    let after = order(&mut c, "DOWN010").unwrap();
    assert_eq!(after.status, "pending");
    assert_eq!(after.updated_at, before.updated_at);
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 1);
    let outcomes: Vec<_> = inbound(&mut c).into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, ["applied", "duplicate"]);
}

#[tokio::test]
async fn a_late_shipped_after_settled_leaves_the_order_settled_with_the_event_in_history() {
    let app = TestApp::spawn_with(&[CONFIRM_OFF]).await;
    assert_eq!(app.send("R-s1", "DOWN020", "已结算").await.0, 200);
    assert_eq!(app.send("R-s2", "DOWN020", "已发货").await.0, 200);
    let mut c = app.db.conn();
    let o = order(&mut c, "DOWN020").unwrap();
    assert_eq!(o.status, "settled");
    assert_eq!(o.vendor_status.as_deref(), Some("已结算"));
    #[derive(diesel::QueryableByName, Debug)]
    struct Ev {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        effect: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        applied: bool,
    }
    use diesel::RunQueryDsl;
    let evs: Vec<Ev> = diesel::sql_query(
        "SELECT status, effect, applied FROM order_events WHERE order_id = 'DOWN020' ORDER BY id",
    )
    .load(&mut c)
    .unwrap();
    assert_eq!(evs.len(), 2);
    assert_eq!(
        (
            evs[1].status.as_str(),
            evs[1].effect.as_str(),
            evs[1].applied
        ),
        ("shipped", "stale", false)
    );
}

#[tokio::test]
async fn bad_signatures_are_401_malformed_bodies_400_oversized_413_and_all_are_quarantined() {
    let app = TestApp::spawn_with(&[("CALLBACK_MAX_BODY_BYTES", "2048")]).await;
    let wrong = haoka_sync::vendors::haoka172::sign::CallbackKey::from_secret(
        "ffffffffffffffffffffffffffffffff",
    );
    let cb = callback("R-bad", "DOWN030", "已发货");

    let cases: Vec<(u16, &str, (u16, String))> = vec![
        (
            401,
            "bad_signature",
            app.post_callback(&cb, Some(&wrong.encrypt("DOWN030")))
                .await,
        ),
        (401, "bad_signature", app.post_callback(&cb, None).await),
        (
            401,
            "bad_signature",
            app.post_callback(&cb, Some("not*base64!")).await,
        ),
        (
            401,
            "bad_signature",
            app.post_callback(&cb, Some("AAAAAAAAAAAAAAAAAAAAAA=="))
                .await,
        ),
        (
            400,
            "malformed",
            app.post_raw("application/json", b"{\"RequidId\": ".to_vec(), None)
                .await,
        ),
        (
            400,
            "malformed",
            app.post_raw("application/json", br#"{"RequidId":"R-x"}"#.to_vec(), None)
                .await,
        ),
        (
            413,
            "too_large",
            app.post_raw("application/json", vec![b'x'; 10_000], None)
                .await,
        ),
    ];
    for (want_status, _, (status, body)) in &cases {
        assert_eq!(status, want_status, "body {body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], -1, "{body}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    let mut c = app.db.conn();
    let rows = inbound(&mut c);
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    let want: Vec<&str> = cases.iter().map(|(_, o, _)| *o).collect();
    assert_eq!(outcomes, want);
    assert!(rows.iter().all(|r| r.error.is_some()));
    assert_eq!(
        rows[1].error.as_deref(),
        Some("bad signature: sign missing")
    );
    assert_eq!(
        rows[5].error.as_deref(),
        Some("malformed callback: Data missing")
    );
    assert_eq!(
        rows[0].request_id.as_deref(),
        Some("R-bad"),
        "ids read even when rejected"
    );
    let big = &rows[6];
    assert!(big.body_truncated);
    assert_eq!(big.body_size, 10_000);
    assert!(
        big.body.len() <= 4096 && big.body.len() >= 2048,
        "bounded sample, got {}",
        big.body.len()
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM orders"),
        0,
        "no order touched"
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 0);
}

#[tokio::test]
async fn urlencoded_multipart_data_objects_and_first_charge_types_all_work() {
    let app = TestApp::spawn().await;
    let sign = app.key.encrypt("DOWN040");
    let data = |rid_status: &str, first: serde_json::Value| {
        json!({"OrderNo": "DOWN040", "OrderNo172": "mlkj1", "OrderStatus": rid_status,
               "IsFirstCharge": first, "FirstCharge": "50.00"})
    };

    // urlencoded, with the sign as a body field and IsFirstCharge as "1".
    let form = serde_urlencoded::to_string([
        ("RequidId", "R-form"),
        ("Data", &data("已提运营商", json!("1")).to_string()),
        ("sign", &sign),
    ])
    .unwrap();
    let r = app
        .post_raw("application/x-www-form-urlencoded", form.into_bytes(), None)
        .await;
    assert_eq!(r, (200, SUCCESS.to_owned()));

    // multipart.
    let d = data("已发货", json!(1)).to_string();
    let mp = format!(
        "--B0und\r\nContent-Disposition: form-data; name=\"RequidId\"\r\n\r\nR-mp\r\n\
         --B0und\r\nContent-Disposition: form-data; name=\"Data\"\r\n\r\n{d}\r\n--B0und--\r\n"
    );
    let r = app
        .post_raw(
            "multipart/form-data; boundary=B0und",
            mp.into_bytes(),
            Some(&sign),
        )
        .await;
    assert_eq!(r, (200, SUCCESS.to_owned()));

    // Data as an object, IsFirstCharge as the integer 1.
    let body = json!({"RequidId": "R-obj", "Data": data("已完成", json!(1))});
    assert_eq!(
        app.post_callback(&body, Some(&sign)).await,
        (200, SUCCESS.to_owned())
    );

    let mut c = app.db.conn();
    let o = order(&mut c, "DOWN040").unwrap();
    assert_eq!(o.status, "completed");
    assert_eq!(o.first_charge, Some(true));
    let outcomes: Vec<_> = inbound(&mut c).into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, ["applied", "applied", "applied"]);

    // IsFirstCharge "1" alone (string) on a fresh order.
    let body = json!({"RequidId": "R-str", "Data": {"OrderNo": "DOWN041", "OrderStatus": "已完成", "IsFirstCharge": "1"}});
    assert_eq!(
        app.post_callback(&body, Some(&app.key.encrypt("DOWN041")))
            .await
            .0,
        200
    );
    assert_eq!(order(&mut c, "DOWN041").unwrap().first_charge, Some(true));
}

#[tokio::test]
async fn the_back_office_test_push_is_acknowledged_and_changes_no_order() {
    let app = TestApp::spawn().await;
    let body = json!({"RequidId": "R-test", "Data": json!({
        "OrderNo": "TEST", "OrderNo172": "TestOrder172", "OrderStatus": "待处理", "Remark": "推送测试"
    }).to_string()});
    assert_eq!(
        app.post_callback(&body, None).await,
        (200, SUCCESS.to_owned())
    );
    let mut c = app.db.conn();
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM orders"), 0);
    let rows = inbound(&mut c);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "test");
}

#[tokio::test]
async fn an_unknown_label_is_kept_verbatim_flagged_and_does_not_overwrite() {
    let app = TestApp::spawn().await;
    assert_eq!(app.send("R-u1", "DOWN050", "已发货").await.0, 200);
    assert_eq!(app.send("R-u2", "DOWN050", "已失效").await.0, 200);
    let mut c = app.db.conn();
    let o = order(&mut c, "DOWN050").unwrap();
    assert_eq!(o.status, "shipped");
    assert_eq!(o.unknown_vendor_status.as_deref(), Some("已失效"));
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_events WHERE status = 'unknown' AND vendor_status = '已失效' AND effect = 'unknown_status'"),
        1
    );
}

#[tokio::test]
async fn without_a_secret_callbacks_are_stored_and_refused_with_503() {
    let app = TestApp::spawn_with(&[("HAOKA172_SECRET", "")]).await;
    let (status, body) = app.send("R-nc", "DOWN060", "已发货").await;
    assert_eq!(status, 503);
    assert!(body.contains("HAOKA172_SECRET"), "{body}");
    let mut c = app.db.conn();
    assert_eq!(inbound(&mut c)[0].outcome, "not_configured");
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM orders"), 0);
}

#[tokio::test]
async fn probe_health_and_the_admin_api() {
    let app = TestApp::spawn_with(&[("ADMIN_TOKEN", "t0ken")]).await;
    let get = |p: &str| app.client.get(format!("{}{p}", app.address)).send();
    assert_eq!(get("/callbacks/haoka172").await.unwrap().status(), 200);
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    assert_eq!(app.send("R-api", "DOWN070", "已发货").await.0, 200);
    let url = format!("{}/api/orders/haoka172/DOWN070", app.address);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = app
        .client
        .get(&url)
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let v: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(v["order"]["status"], "shipped");
    assert_eq!(v["history"].as_array().unwrap().len(), 1);
    // The order, not its lease and budget bookkeeping; personal data masked.
    for hidden in [
        "lease_owner",
        "lease_until",
        "calls_day",
        "calls_today",
        "quiet_polls",
    ] {
        assert!(v["order"].get(hidden).is_none(), "{hidden} in {v}");
        assert!(v["order"]["poll"].get(hidden).is_none(), "{hidden} in {v}");
    }
    assert!(v["order"]["poll"]["next_check_at"].is_string(), "{v}");
    assert_eq!(v["order"]["third_phone"], "130****5678");
    assert_eq!(v["history"][0]["observed"]["third_phone"], "130****5678");
    assert!(!v.to_string().contains("13012345678"), "{v}");
    let missing = app
        .client
        .get(format!("{}/api/orders/haoka172/NOPE", app.address))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let off = TestApp::spawn_with(&[("ADMIN_TOKEN", "")]).await;
    let r = off
        .client
        .get(format!("{}/api/orders/haoka172/DOWN070", off.address))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no ADMIN_TOKEN: the API is off");
}

#[tokio::test]
async fn the_admin_api_answers_json_errors_that_say_what_to_change() {
    let app = TestApp::spawn().await;
    let post = |path: &str, ctype: Option<&str>, body: &str, token: Option<&str>| {
        let mut r = app
            .client
            .post(format!("{}{path}", app.address))
            .body(body.to_owned());
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let v: serde_json::Value = r.json().await.expect("a JSON error body");
            (
                status,
                ctype,
                v["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let json = Some("application/json");
    let (s, c, e) = post("/api/orders", json, "{not json", Some(ADMIN)).await;
    assert_eq!((s, c.as_str()), (400, "application/json"), "{e}");
    assert!(
        e.starts_with("the body is not the JSON this route takes: "),
        "{e}"
    );
    let (s, _, e) = post("/api/orders", json, r#"{"order_ids":["A"]}"#, Some(ADMIN)).await;
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("missing field `vendor`"), "{e}");
    let (s, _, e) = post(
        "/api/orders",
        Some("text/plain"),
        r#"{"vendor":"haoka172","order_id":"A"}"#,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, 415, "{e}");
    assert!(e.contains("Content-Type: application/json"), "{e}");
    let (s, _, e) = post(
        "/api/orders",
        None,
        r#"{"vendor":"haoka172","order_id":"A"}"#,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, 415, "{e}");
    let (s, _, e) = post(
        "/api/orders",
        json,
        r#"{"vendor":"haoka172","order_ids":["A","B C"]}"#,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e.starts_with("order_ids[1]: `B C` contains a space; order ids are at most 128 bytes"),
        "{e}"
    );
    let (s, _, e) = post(
        "/api/orders",
        json,
        r#"{"vendor":"nokia","order_id":"A"}"#,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("haoka172") && e.contains("damaijia"), "{e}");
    // The token is checked before the body is read.
    let (s, _, e) = post("/api/orders", json, "{not json", None).await;
    assert_eq!(s, 401, "{e}");
    let (s, _, e) = post("/api/nothing/here", json, "{}", Some(ADMIN)).await;
    assert_eq!(s, 404, "{e}");
    assert!(
        e.contains("POST /api/nothing/here") && e.contains("docs/contract.md"),
        "{e}"
    );
    let mut c = app.db.conn();
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM orders"), 0);
}

#[tokio::test]
async fn recheck_through_the_admin_api_makes_tracked_orders_due_and_the_next_pass_asks_once() {
    let (app, sim) = TestApp::with_sim(&[]).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(haoka_sync::sim::Answer::Label("已发货".into())));
    app.track(&["A1", "A2"]).await;
    assert_eq!(app.poll().await.queried, 0, "not due yet");
    let r = app
        .client
        .post(format!("{}/api/orders/recheck", app.address))
        .bearer_auth(ADMIN)
        .json(&json!({"vendor": "haoka172", "order_ids": ["A1", "ZZ"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["due_now"], json!(["A1"]), "{v}");
    assert_eq!(v["not_tracked"], json!(["ZZ"]), "{v}");
    assert_eq!(v["terminal"], json!([]), "{v}");
    let pass = app.poll().await;
    assert_eq!(pass.queried, 1, "{pass:?}");
    assert_eq!(fake.calls_for("A1"), 1);
    assert_eq!(fake.calls_for("A2"), 0);
    assert_eq!(app.poll().await.queried, 0, "once");
}

/// Interop with the public PHP integration and clients that label every
/// POST as a form (issue 15, acceptance 6).
#[tokio::test]
async fn a_json_body_is_json_whatever_its_content_type_and_a_body_sign_beats_sign_with_a_capital() {
    let app = TestApp::spawn().await;
    let json_bytes = |v: &serde_json::Value| serde_json::to_vec(v).unwrap();
    for (i, ct) in [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=UTF-8",
        "text/plain",
    ]
    .into_iter()
    .enumerate()
    {
        let order_no = format!("IOP{i}");
        let body = json_bytes(&callback(&format!("R-iop-{i}"), &order_no, "已发货"));
        let sign = app.key.encrypt(&order_no);
        assert_eq!(
            app.post_raw(ct, body, Some(&sign)).await,
            (200, SUCCESS.to_owned()),
            "{ct}"
        );
        let mut c = app.db.conn();
        assert_eq!(order(&mut c, &order_no).unwrap().status, "shipped", "{ct}");
    }

    // Both body fields, no header: `sign` decides.
    let good = app.key.encrypt("IOP-S1");
    let wrong = app.key.encrypt("IOP-S-other");
    let mut both = callback("R-iop-s1", "IOP-S1", "待处理");
    both["sign"] = json!(good);
    both["Sign"] = json!(wrong);
    assert_eq!(app.post_callback(&both, None).await.0, 200);
    let mut reverse = callback("R-iop-s2", "IOP-S1", "已发货");
    reverse["sign"] = json!(wrong);
    reverse["Sign"] = json!(good);
    let (status, body) = app.post_callback(&reverse, None).await;
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"code":-1,"message":"bad signature"}"#)
    );

    let mut c = app.db.conn();
    assert_eq!(order(&mut c, "IOP-S1").unwrap().status, "pending");
    let rows = inbound(&mut c);
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["applied", "applied", "applied", "applied", "bad_signature"]
    );
    assert!(
        rows[4]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("bad signature"),
        "{:?}",
        rows[4].error
    );
}
