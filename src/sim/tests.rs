//! The fakes' own behaviour, over HTTP, without the service: what the
//! integration tests rely on when they script an answer or read a log.

use std::time::Duration;

use serde_json::{json, Value};

use super::sign::expected_user_sign;
use super::*;

async fn scripted_only() -> Simulator {
    Simulator::start(SimConfig {
        haoka172_orders: 0,
        damaijia_orders: 0,
        ..SimConfig::default()
    })
    .await
    .expect("start the simulator")
}

/// A GetOrderInfo request signed the way the vendor documents it.
async fn get_order_info(sim: &Simulator, id: &str, secret: &str) -> (u16, String) {
    let ts = chrono::Utc::now().timestamp().to_string();
    let user = sim.config().user_id.clone();
    let sign = expected_user_sign(id, &ts, &user, secret);
    let form = [
        ("user_id", user.as_str()),
        ("Timestamp", ts.as_str()),
        ("DownOrderID", id),
        ("user_sign", sign.as_str()),
    ];
    let r = reqwest::Client::new()
        .post(format!("{}/api/order/GetOrderInfo", sim.haoka172_url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn ask(sim: &Simulator, id: &str) -> (u16, String) {
    get_order_info(sim, id, &sim.config().secret.clone()).await
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn scripted_answers_cover_orders_no_lifecycle_made_and_every_failure_kind() {
    let sim = scripted_only().await;
    let fake = sim.haoka172();
    fake.answer("L", Answer::label("已发货"));
    fake.answer("NF", Answer::NotFound);
    fake.answer("H", Answer::Http(503));
    fake.answer("G", Answer::Garbage);
    fake.answer("B", Answer::Blocked);
    fake.answer(
        "R",
        Answer::Refusal {
            code: 7,
            message: "系统维护".into(),
        },
    );
    let (status, body) = ask(&sim, "L").await;
    let v = json_of(&body);
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{body}");
    assert_eq!(v["data"]["orderStatus"], "已发货");
    assert_eq!(v["data"]["downOrderNo"], "L");
    assert_eq!(v["data"]["orderNo"], "mlkjL");
    assert_eq!(v["data"]["expressName"], "京东", "shipped: express told");
    assert_eq!(
        json_of(&ask(&sim, "NF").await.1)["message"],
        NOT_FOUND_MESSAGE
    );
    assert_eq!(ask(&sim, "H").await.0, 503);
    let (status, body) = ask(&sim, "G").await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    assert_eq!(json_of(&ask(&sim, "B").await.1)["message"], BLOCKED_MESSAGE);
    let v = json_of(&ask(&sim, "R").await.1);
    assert_eq!(
        (v["code"].as_i64(), v["message"].as_str()),
        (Some(7), Some("系统维护"))
    );
    // Without a script of its own: the default, else not found.
    assert_eq!(
        json_of(&ask(&sim, "OTHER").await.1)["message"],
        NOT_FOUND_MESSAGE
    );
    fake.answer_all(Some(Answer::label("待处理")));
    assert_eq!(
        json_of(&ask(&sim, "OTHER").await.1)["data"]["orderStatus"],
        "待处理"
    );
    assert_eq!(
        json_of(&ask(&sim, "L").await.1)["data"]["orderStatus"],
        "已发货"
    );

    let ids: Vec<String> = fake.calls().into_iter().map(|c| c.order_id).collect();
    assert_eq!(ids, ["L", "NF", "H", "G", "B", "R", "OTHER", "OTHER", "L"]);
    assert!(fake.calls().windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(fake.calls_for("L"), 2);
    assert_eq!(fake.max_in_window(Duration::from_secs(60)), 9);
    assert_eq!(fake.refused(), (0, 0));
    sim.stop().await;
}

#[tokio::test]
async fn a_bad_sign_is_refused_counted_and_left_out_of_the_call_log() {
    let sim = scripted_only().await;
    sim.haoka172().answer_all(Some(Answer::label("已发货")));
    let (_, body) = get_order_info(&sim, "X", "not-the-secret").await;
    assert_eq!(json_of(&body)["message"], "签名错误");
    assert_eq!(sim.haoka172().refused(), (1, 0));
    assert!(sim.haoka172().calls().is_empty());
    assert_eq!(sim.stats().get_order_info_calls, 0);
    sim.stop().await;
}

#[tokio::test]
async fn a_terminal_answer_counts_every_later_call_for_that_order() {
    let sim = scripted_only().await;
    sim.haoka172().answer("T", Answer::label("已结算"));
    for _ in 0..3 {
        ask(&sim, "T").await;
    }
    let s = sim.stats();
    assert_eq!((s.calls_after_terminal, s.max_calls_per_order_day), (2, 3));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_about_one_order_in_flight_together_are_counted_and_delays_add_up() {
    let sim = scripted_only().await;
    let fake = sim.haoka172();
    fake.answer(
        "SLOW",
        Answer::label("已发货").after(Duration::from_millis(150)),
    );
    // Long enough that the three requests overlap even on a loaded machine.
    fake.delay(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let (a, b, c, d) = tokio::join!(
        ask(&sim, "A"),
        ask(&sim, "A"),
        ask(&sim, "A"),
        ask(&sim, "SLOW")
    );
    assert!([a.0, b.0, c.0, d.0].iter().all(|s| *s == 200));
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "both delays"
    );
    assert_eq!(sim.stats().max_concurrent_per_order, 3);
    // One after the other, nothing overlaps.
    let sim = scripted_only().await;
    for _ in 0..3 {
        ask(&sim, "A").await;
    }
    assert_eq!(sim.stats().max_concurrent_per_order, 1);
}

async fn mpaging(sim: &Simulator, token: &str, body: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/vv/external/mpagingOrders", sim.damaijia_url()))
        .header("authorization", token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

fn request(sns: &[&str]) -> String {
    json!({"owner_id": "shop", "order_sns": sns}).to_string()
}

#[tokio::test]
async fn damaijia_answers_scripted_orders_in_rotating_shapes_and_logs_every_request() {
    let sim = scripted_only().await;
    let fake = sim.damaijia();
    let token = sim.config().damaijia_token.clone();
    fake.order("S1", 2, 1, 1_800_000_000_000);
    let mut shapes = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let v = mpaging(&sim, &token, &request(&["S1", "MISSING"])).await;
        assert_eq!(v["status"], 0, "{v}");
        let text = v.to_string();
        assert!(text.contains("S1") && !text.contains("MISSING"), "{text}");
        assert!(text.contains(RECEIVER_PHONE));
        let data = &v["data"];
        shapes.insert(if data.is_array() {
            "list"
        } else if data.get("content").is_some() {
            "content"
        } else if data.get("list").is_some() {
            "list key"
        } else {
            "keyed"
        });
    }
    assert_eq!(shapes.len(), 4, "{shapes:?}");
    assert_eq!(sim.stats().damaijia_cost, 16);
    let calls = fake.calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0].authorization, token);
    assert_eq!(calls[0].order_sns(), ["S1", "MISSING"]);
    assert_eq!(fake.calls_for("S1"), 4);
    assert_eq!(fake.max_in_window(Duration::from_secs(60)), 4);
    sim.stop().await;
}

#[tokio::test]
async fn damaijia_refuses_bad_requests_forced_statuses_and_replaced_tokens() {
    let sim = scripted_only().await;
    let fake = sim.damaijia();
    let token = sim.config().damaijia_token.clone();
    assert_eq!(mpaging(&sim, &token, "not json").await["status"], 132);
    assert_eq!(
        mpaging(&sim, &token, r#"{"owner_id":"x"}"#).await["status"],
        422
    );
    fake.fail_next(2010, 2);
    for want in [2010, 2010, 0] {
        assert_eq!(
            mpaging(&sim, &token, &request(&["S"])).await["status"],
            want
        );
    }
    fake.fail_always(209);
    for _ in 0..3 {
        let v = mpaging(&sim, &token, &request(&["S"])).await;
        assert_eq!(
            (v["status"].as_i64(), v["err"].as_str()),
            (Some(209), Some("余额不足"))
        );
    }
    fake.stop_failing();
    assert_eq!(mpaging(&sim, &token, &request(&["S"])).await["status"], 0);

    // A login replaces every older token; a wrong secret gets none.
    let login = |secret: &str| {
        let url = format!("{}/vv/external/user_login", sim.damaijia_url());
        let body = json!({"app_id": APP_ID, "app_secret": secret});
        async move {
            let r = reqwest::Client::new().post(url).json(&body).send().await;
            r.unwrap().json::<Value>().await.unwrap()
        }
    };
    assert_eq!(login("wrong").await["status"], 422);
    let issued = login(APP_SECRET).await["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fake.tokens(), [issued.as_str()]);
    assert_eq!(fake.logins(), 1);
    let v = mpaging(&sim, &token, &request(&["S"])).await;
    assert_eq!(
        (v["status"].as_i64(), v["err"].as_str()),
        (Some(200), Some("认证失败"))
    );
    assert_eq!(mpaging(&sim, &issued, &request(&["S"])).await["status"], 0);
    assert_eq!(sim.stats().damaijia_auth_failures, 1);
    sim.stop().await;
}
