//! Fake 172号卡: `GetOrderInfo` with the vendor's checks, and the callback
//! push engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use chrono::TimeZone;
use serde_json::{json, Value};

use super::lifecycle::{Lifecycle172, Rng, Step};
use super::sign::{callback_sign, expected_user_sign};
use super::{lock, Shared, SimConfig};

const TERMINAL: [&str; 5] = ["已撤单", "审核不通过", "已取消", "已结算", "无法结算"];

/// Simulated time: one real second is one hour, from 2026-11-01 00:00 China.
fn sim_time(at: Duration) -> String {
    let base = chrono::FixedOffset::east_opt(8 * 3600)
        .and_then(|tz| tz.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).single())
        .map(|t| t.naive_local())
        .unwrap_or_default();
    (base + chrono::Duration::seconds((at.as_secs_f64() * 3600.0) as i64))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn phone(o: &Lifecycle172) -> String {
    let n: u64 = o.order_no_172.bytes().map(u64::from).sum();
    format!("1309554{:04}", n % 10_000)
}

/// The order as the vendor knows it at one step, in the callback's names.
fn callback_data(o: &Lifecycle172, s: &Step) -> Value {
    let submitted = s.label != "待处理" && s.label != "正在进单";
    json!({
        "OrderNo": o.order_no,
        "OrderNo172": o.order_no_172,
        "OrderStatus": s.label,
        "ThirdPhone": if submitted { Value::from(phone(o)) } else { Value::Null },
        "Remark": format!("[{}]", s.label),
        "ExpressName": if s.shipped { Value::from("京东") } else { Value::Null },
        "ExpressCode": if s.shipped { Value::from(format!("JDV{}", &o.order_no_172[4..])) } else { Value::Null },
        "CardStatus": if s.shipped { Value::from(if s.activated { "已激活" } else { "未激活" }) } else { Value::Null },
        "ActiveTime": if s.activated { Value::from(sim_time(s.at)) } else { Value::Null },
        "Iccid": if s.shipped { Value::from(format!("8986{}", &o.order_no_172[4..])) } else { Value::Null },
        "IsFirstCharge": i32::from(s.first_charge),
        "FirstCharge": if s.first_charge { "50" } else { "" },
    })
}

pub(super) async fn get_order_info(
    form: web::Form<HashMap<String, String>>,
    state: web::Data<Shared>,
    cfg: web::Data<Arc<SimConfig>>,
) -> HttpResponse {
    let f = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (uid, ts, down, sign) = (
        f("user_id"),
        f("Timestamp"),
        f("DownOrderID"),
        f("user_sign"),
    );
    let mut s = lock(&state);
    if uid != cfg.user_id || sign != expected_user_sign(&down, &ts, &uid, &cfg.secret) {
        s.stats.get_order_info_bad_sign += 1;
        return HttpResponse::Ok().json(json!({"code": -1, "message": "签名错误", "errs": null}));
    }
    let now = chrono::Utc::now();
    let fresh = ts.len() == 10
        && ts
            .parse::<i64>()
            .is_ok_and(|t| (t - now.timestamp()).abs() <= 300);
    if !fresh {
        s.stats.get_order_info_bad_timestamp += 1;
        return HttpResponse::Ok().json(json!({"code": -1, "message": "时间戳超时", "errs": null}));
    }
    s.stats.get_order_info_calls += 1;
    let t = Instant::now();
    s.recent_calls.push_back(t);
    while s
        .recent_calls
        .front()
        .is_some_and(|u| t.duration_since(*u) >= Duration::from_secs(60))
    {
        s.recent_calls.pop_front();
    }
    let in_minute = s.recent_calls.len() as u64;
    s.stats.max_calls_per_minute = s.stats.max_calls_per_minute.max(in_minute);
    if in_minute > 200 {
        s.stats.get_order_info_blocked += 1;
        return HttpResponse::Ok()
            .json(json!({"code": -1, "message": "调用过于频繁,已拦截", "errs": null}));
    }
    let day = crate::rules::schedule::china_day(now);
    let n = {
        let c = s
            .calls_per_order_day
            .entry((down.clone(), day))
            .or_insert(0);
        *c += 1;
        *c
    };
    s.stats.max_calls_per_order_day = s.stats.max_calls_per_order_day.max(n);
    let elapsed = s.elapsed().unwrap_or_default();
    let Some(&i) = s.index.get(&down) else {
        return HttpResponse::Ok().json(json!({"code": -1, "message": "订单不存在", "errs": null}));
    };
    let o = &s.orders[i];
    let Some(step) = o.steps.iter().rev().find(|st| st.at <= elapsed).cloned() else {
        return HttpResponse::Ok().json(json!({"code": -1, "message": "订单不存在", "errs": null}));
    };
    let d = callback_data(o, &step);
    let body = json!({
        "data": {
            "orderNo": d["OrderNo172"], "downOrderNo": d["OrderNo"], "name": "田**",
            "expressName": d["ExpressName"].as_str().unwrap_or(""),
            "expressCode": d["ExpressCode"].as_str().unwrap_or(""),
            "orderStatus": step.label, "createTime": sim_time(o.steps[0].at),
            "thirdPhone": d["ThirdPhone"].as_str().unwrap_or(""), "remark": d["Remark"],
            "cardStatus": d["CardStatus"].as_str().unwrap_or(""),
            "activationTime": d["ActiveTime"].as_str().unwrap_or(""),
            "isFirstCharge": if step.first_charge { "1" } else { "0" },
            "firstCharge": d["FirstCharge"],
        },
        "code": 0, "message": "成功", "errs": null
    });
    if TERMINAL.contains(&step.label) && !s.answered_terminal.insert(down.clone()) {
        s.stats.calls_after_terminal += 1;
    }
    HttpResponse::Ok().json(body)
}

/// One delivery to make.
struct Push {
    due: Duration,
    request_id: String,
    order_no: String,
    plaintext_for_sign: String,
    data: String,
}

/// Plan every push (with the configured losses, duplicates and late ones),
/// then deliver each at its time, retrying failures with the same RequidId.
pub(super) fn spawn_pushes(state: Shared, cfg: Arc<SimConfig>, url: String) {
    let mut rng = Rng::new(cfg.seed ^ 0x5EED_CA11);
    let mut plan = Vec::new();
    {
        let mut s = lock(&state);
        let (mut dropped, mut reordered, mut duplicated) = (0, 0, 0);
        for o in &s.orders {
            for (k, step) in o.steps.iter().enumerate() {
                let push = |due| Push {
                    due,
                    request_id: format!("{}-{}-{k}", cfg.prefix, o.order_no),
                    order_no: o.order_no.clone(),
                    plaintext_for_sign: if cfg.sign_over_172 {
                        o.order_no_172.clone()
                    } else {
                        o.order_no.clone()
                    },
                    data: callback_data(o, step).to_string(),
                };
                if rng.chance(cfg.drop) {
                    dropped += 1;
                    continue;
                }
                let mut due = step.at;
                if let Some(next) = o.steps.get(k + 1) {
                    if rng.chance(cfg.reorder) {
                        // Arrives after the next status change's push.
                        due = next.at + cfg.step / 2;
                        reordered += 1;
                    }
                }
                if rng.chance(cfg.duplicate) {
                    duplicated += 1;
                    plan.push(push(due + Duration::from_millis(150)));
                }
                plan.push(push(due));
            }
        }
        s.stats.pushes_dropped = dropped;
        s.stats.pushes_reordered = reordered;
        s.stats.pushes_duplicated = duplicated;
        s.stats.pushes_planned = plan.len() as u64;
        s.pushes_scheduled = plan.len() as u64;
    }
    plan.sort_by_key(|p| p.due);
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let limit = Arc::new(tokio::sync::Semaphore::new(64));
        let started = lock(&state).started.unwrap_or_else(Instant::now);
        for p in plan {
            tokio::time::sleep_until((started + p.due).into()).await;
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                return;
            };
            {
                let mut s = lock(&state);
                s.pushes_scheduled -= 1;
                s.pushes_in_flight += 1;
            }
            let (client, state, url, secret) = (
                client.clone(),
                Arc::clone(&state),
                url.clone(),
                cfg.secret.clone(),
            );
            tokio::spawn(async move {
                deliver(&client, &state, &url, &secret, &p, started).await;
                lock(&state).pushes_in_flight -= 1;
                drop(permit);
            });
        }
    });
}

/// Up to 5 tries, 0.5 s, 1 s, 2 s, 4 s apart; acknowledged means a 2xx with
/// `code` 0.
async fn deliver(
    client: &reqwest::Client,
    state: &Shared,
    url: &str,
    secret: &str,
    p: &Push,
    started: Instant,
) {
    let body = json!({"RequidId": p.request_id, "Data": p.data});
    let sign = callback_sign(secret, &p.plaintext_for_sign);
    for attempt in 0..5u32 {
        if attempt > 0 {
            lock(state).stats.push_retries += 1;
            tokio::time::sleep(Duration::from_millis(500 << (attempt - 1))).await;
        }
        lock(state).stats.push_attempts += 1;
        let resp = client
            .post(url)
            .header("sign", &sign)
            .json(&body)
            .send()
            .await;
        let acked = match resp {
            Ok(r) if r.status().is_success() => r
                .json::<Value>()
                .await
                .map(|v| v["code"] == 0)
                .unwrap_or(false),
            _ => false,
        };
        if acked {
            let late = started.elapsed().saturating_sub(p.due);
            let mut s = lock(state);
            s.stats.pushes_acknowledged += 1;
            let worst = s.lateness.entry(p.order_no.clone()).or_default();
            *worst = (*worst).max(late);
            return;
        }
    }
    log::warn!("sim: push {} for {} given up", p.request_id, p.order_no);
    lock(state).stats.pushes_given_up += 1;
}
