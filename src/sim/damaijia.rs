//! Fake 大麦家: token auth, batch `mpagingOrders` in rotating answer shapes,
//! a billed `deduct_money` per call, and error codes on demand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{lock, Shared, SimConfig};

/// What one call costs (fen), whatever the number of orders.
const COST: u64 = 4;

pub(super) async fn orders(
    req: HttpRequest,
    body: web::Json<Value>,
    state: web::Data<Shared>,
) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut s = lock(&state);
    let t = Instant::now();
    s.damaijia_recent.push_back(t);
    while s
        .damaijia_recent
        .front()
        .is_some_and(|u| t.duration_since(*u) >= Duration::from_secs(1))
    {
        s.damaijia_recent.pop_front();
    }
    if s.damaijia_recent.len() > 10 {
        s.stats.damaijia_rate_violations += 1;
    }
    if !s.damaijia_tokens.contains(&auth) {
        s.stats.damaijia_auth_failures += 1;
        return HttpResponse::Ok().json(json!({"status": 200, "err": "认证失败", "data": []}));
    }
    if let Some((status, times)) = s.damaijia_fail {
        s.damaijia_fail = (times > 1).then_some((status, times - 1));
        return HttpResponse::Ok()
            .json(json!({"status": status, "err": format!("模拟错误 {status}"), "data": []}));
    }
    s.stats.damaijia_calls += 1;
    s.stats.damaijia_cost += COST;
    let n = s.stats.damaijia_calls;
    let elapsed = s.elapsed().unwrap_or_default();
    let sns: Vec<String> = body["order_sns"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let found: Vec<Value> = sns
        .iter()
        .filter_map(|sn| {
            let o = &s.shops[*s.shop_index.get(sn)?];
            let st = o.steps.iter().rev().find(|st| st.at <= elapsed)?;
            Some(if n % 2 == 0 {
                json!({"receiver_name": "模拟人", "receiver_phone": "13800138000", "province": "广东省",
                       "city": "深圳市", "town": "南山区", "receiver_address": "模拟路1号",
                       "order_sn": sn, "goods_name": "流量卡", "goods_count": 1, "pay_amount": 9.9,
                       "pay_time": 1763700000000_i64, "last_ship_time": o.last_ship_ms,
                       "order_status": st.order_status, "refund_status": st.refund_status,
                       "deduct_money": COST})
            } else {
                json!({"receiverName": "模拟人", "receiverPhone": "13800138000", "province": "广东省",
                       "city": "深圳市", "receiverAddress": "模拟路1号", "orderSn": sn,
                       "goodsName": "流量卡", "goodsCount": "1", "payAmount": "9.9",
                       "payTime": "2025-11-21 12:00:00", "lastShipTime": o.last_ship_ms.to_string(),
                       "orderStatus": st.order_status.to_string(),
                       "refundStatus": st.refund_status.to_string(), "deductMoney": COST.to_string()})
            })
        })
        .collect();
    let data = match n % 4 {
        0 => json!({"content": found, "deduct_money": COST}),
        1 => json!(found),
        2 => Value::Object(
            found
                .into_iter()
                .enumerate()
                .map(|(i, o)| (i.to_string(), o))
                .collect(),
        ),
        _ => json!({"list": found}),
    };
    HttpResponse::Ok().json(json!({"status": 0, "data": data}))
}

pub(super) async fn login(
    body: web::Json<Value>,
    state: web::Data<Shared>,
    cfg: web::Data<Arc<SimConfig>>,
) -> HttpResponse {
    if body["app_id"] != cfg.damaijia_app_id.as_str()
        || body["app_secret"] != cfg.damaijia_app_secret.as_str()
    {
        return HttpResponse::Ok().json(json!({"status": 422, "err": "app_id 或 app_secret 错误"}));
    }
    let mut s = lock(&state);
    s.stats.damaijia_logins += 1;
    let token = format!("sim-token-{}", s.stats.damaijia_logins);
    // A login replaces every older token.
    s.damaijia_tokens = vec![token.clone()];
    HttpResponse::Ok().json(json!({"status": 0, "data": {"access_token": token}}))
}

/// `POST /sim/damaijia/fail {"status": 2010, "times": 3}`.
pub(super) async fn fail_handler(body: web::Json<Value>, state: web::Data<Shared>) -> HttpResponse {
    let status = body["status"].as_i64().unwrap_or(500);
    let times = u32::try_from(body["times"].as_u64().unwrap_or(1)).unwrap_or(1);
    lock(&state).damaijia_fail = Some((status, times));
    HttpResponse::Ok().json(json!({"ok": true}))
}
