//! Fake 大麦家: token auth (a login replaces every older token), batch
//! `mpagingOrders` in the rotating answer shapes docs/vendors.md lists, a billed
//! `deduct_money` per call, order states and status codes a test scripts,
//! and a log of every request. It parses requests its own way, never with
//! the service's `vendors::damaijia` code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::calls::{Arrival, Flight};
use super::{lock, Damaijia, Shared, SimConfig, State};

/// What one call costs (fen), whatever the number of orders.
const COST: u64 = 4;

/// Personal data the fake puts in every order. The service must never store
/// or log it (the tests look for it everywhere).
pub const RECEIVER_NAME: &str = "罗小明";
pub const RECEIVER_PHONE: &str = "15574757515";
pub const RECEIVER_ADDRESS: &str = "幸福路88号3栋1201";

/// The app credentials `user_login` accepts unless the configuration says
/// otherwise.
pub const APP_ID: &str = "sim-app";
pub const APP_SECRET: &str = "sim-app-secret";

/// A PDD order as the fake tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShopState {
    pub order_status: i64,
    pub refund_status: i64,
    /// Promised ship-by time, epoch milliseconds.
    pub last_ship_ms: i64,
}

/// One request to `mpagingOrders`, whatever it was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct DamaijiaCall {
    pub at: Instant,
    /// The `Authorization` header as sent ("" when missing).
    pub authorization: String,
    /// The JSON body; the body as a string when it was not JSON.
    pub body: Value,
}

impl DamaijiaCall {
    pub fn order_sns(&self) -> Vec<&str> {
        order_sns(&self.body).unwrap_or_default()
    }
}

impl Arrival for DamaijiaCall {
    fn at(&self) -> Instant {
        self.at
    }
}

/// A status every call answers instead of the orders.
#[derive(Debug, Clone, Copy)]
pub(super) struct Forced {
    status: i64,
    /// Calls left; `None`: every call until cleared.
    remaining: Option<u32>,
}

fn order_sns(body: &Value) -> Option<Vec<&str>> {
    body.get("order_sns")?
        .as_array()?
        .iter()
        .map(Value::as_str)
        .collect()
}

/// The `err` of a refusal: the wording docs/vendors.md records for the documented
/// codes, a neutral one for the rest.
fn refusal(status: i64) -> Value {
    let err = match status {
        132 => "请求格式必须为JSON".to_owned(),
        422 => "参数列表不合法".to_owned(),
        200 => "认证失败".to_owned(),
        209 => "余额不足".to_owned(),
        _ => format!("模拟错误 {status}"),
    };
    json!({"status": status, "err": err, "data": []})
}

/// An order object in one of the casings seen in the wild: snake_case with
/// numbers; the document's sample (camelCase receiver fields, `goodsSpec`);
/// camelCase throughout with numbers as strings and a China-time pay time.
fn order_json(sn: &str, o: ShopState, variant: u64) -> Value {
    let ShopState {
        order_status: os,
        refund_status: rs,
        last_ship_ms: ship,
    } = o;
    match variant % 3 {
        0 => json!({
            "receiver_name": RECEIVER_NAME, "receiver_phone": RECEIVER_PHONE, "province": "广东省",
            "city": "深圳市", "town": "南山区", "receiver_address": RECEIVER_ADDRESS,
            "order_sn": sn, "goods_name": "流量卡", "goods_count": 1, "pay_amount": 9.9,
            "pay_time": 1763700000000_i64, "last_ship_time": ship, "order_status": os,
            "refund_status": rs, "deduct_money": COST
        }),
        1 => json!({
            "receiverName": RECEIVER_NAME, "receiverPhone": RECEIVER_PHONE, "province": "广东省",
            "city": "深圳市", "town": "南山区", "receiverAddress": RECEIVER_ADDRESS,
            "order_sn": sn, "goods_name": "流量卡", "goodsSpec": "月租19元", "goods_count": 1,
            "pay_amount": 9.9, "pay_time": 1763700000000_i64, "last_ship_time": ship,
            "order_status": os, "refund_status": rs, "deduct_money": COST
        }),
        _ => json!({
            "receiverName": RECEIVER_NAME, "receiverPhone": RECEIVER_PHONE, "province": "广东省",
            "city": "深圳市", "receiverAddress": RECEIVER_ADDRESS, "orderSn": sn,
            "goodsName": "流量卡", "goodsCount": "1", "payAmount": "9.9",
            "payTime": "2025-11-21 12:00:00", "lastShipTime": ship.to_string(),
            "orderStatus": os.to_string(), "refundStatus": rs.to_string(),
            "deductMoney": COST.to_string()
        }),
    }
}

/// `data` in one of the shapes the upstream uses: a `content` array with the
/// cost beside it, a bare list, an object keyed "0", "1", …, a `list` array.
fn data_shape(found: Vec<Value>, n: u64) -> Value {
    match n % 4 {
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
    }
}

fn authorization(req: &HttpRequest) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

pub(super) async fn orders(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Shared>,
) -> HttpResponse {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let body = parsed
        .clone()
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let sns: Vec<String> = order_sns(&body)
        .unwrap_or_default()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (_flight, wait, reply) = {
        let mut s = lock(&state);
        let (flight, peak) = Flight::enter(&state, &mut s, |s| &mut s.flight_damaijia, sns);
        s.stats.damaijia_max_concurrent_per_order =
            s.stats.damaijia_max_concurrent_per_order.max(peak);
        let call = DamaijiaCall {
            at: Instant::now(),
            authorization: authorization(&req),
            body,
        };
        let reply = decide(&mut s, &call, parsed.is_some());
        s.damaijia_log.push(call);
        (flight, s.damaijia_delay, reply)
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    HttpResponse::Ok().json(reply)
}

/// Rate, token, a forced status, the request's shape, then the orders.
fn decide(s: &mut State, call: &DamaijiaCall, is_json: bool) -> Value {
    s.damaijia_recent.push_back(call.at);
    while s
        .damaijia_recent
        .front()
        .is_some_and(|u| call.at.duration_since(*u) >= Duration::from_secs(1))
    {
        s.damaijia_recent.pop_front();
    }
    if s.damaijia_recent.len() > 10 {
        s.stats.damaijia_rate_violations += 1;
    }
    if !s.damaijia_tokens.contains(&call.authorization) {
        s.stats.damaijia_auth_failures += 1;
        return refusal(200);
    }
    if let Some(f) = s.damaijia_forced {
        s.damaijia_forced = match f.remaining {
            Some(n) if n <= 1 => None,
            Some(n) => Some(Forced {
                remaining: Some(n - 1),
                ..f
            }),
            None => Some(f),
        };
        return refusal(f.status);
    }
    if !is_json {
        return refusal(132);
    }
    let (Some(sns), Some(_)) = (
        order_sns(&call.body),
        call.body.get("owner_id").and_then(Value::as_str),
    ) else {
        return refusal(422);
    };
    s.stats.damaijia_calls += 1;
    s.stats.damaijia_cost += COST;
    let n = s.stats.damaijia_calls;
    let elapsed = s.elapsed().unwrap_or_default();
    let found: Vec<Value> = sns
        .iter()
        .filter_map(|sn| {
            let state = s.shop_script.get(*sn).copied().or_else(|| {
                let o = &s.shops[*s.shop_index.get(*sn)?];
                let st = o.steps.iter().rev().find(|st| st.at <= elapsed)?;
                Some(ShopState {
                    order_status: st.order_status,
                    refund_status: st.refund_status,
                    last_ship_ms: o.last_ship_ms,
                })
            })?;
            Some(order_json(sn, state, n))
        })
        .collect();
    json!({"status": 0, "data": data_shape(found, n)})
}

pub(super) async fn login(
    body: web::Bytes,
    state: web::Data<Shared>,
    cfg: web::Data<Arc<SimConfig>>,
) -> HttpResponse {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::Ok().json(refusal(132));
    };
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
    force(&state, status, Some(times));
    HttpResponse::Ok().json(json!({"ok": true}))
}

fn force(state: &Shared, status: i64, remaining: Option<u32>) {
    lock(state).damaijia_forced = (remaining != Some(0)).then_some(Forced { status, remaining });
}

impl Damaijia {
    /// The service configuration that points at this fake with a valid token
    /// (the service also needs `DAMAIJIA_OWNER_ID`; any value does).
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("DAMAIJIA_BASE_URL", self.0.url.as_str()),
            ("DAMAIJIA_TOKEN", self.0.cfg.damaijia_token.as_str()),
        ]
    }

    /// The app credentials that let the service log in.
    pub fn login_env(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("DAMAIJIA_APP_ID", self.0.cfg.damaijia_app_id.as_str()),
            (
                "DAMAIJIA_APP_SECRET",
                self.0.cfg.damaijia_app_secret.as_str(),
            ),
        ]
    }

    /// Tell this state for `order_sn` from now on, whatever its lifecycle
    /// says; the number need not be one the lifecycle generator made.
    pub fn order(&self, order_sn: &str, order_status: i64, refund_status: i64, last_ship_ms: i64) {
        lock(&self.0.state).shop_script.insert(
            order_sn.to_owned(),
            ShopState {
                order_status,
                refund_status,
                last_ship_ms,
            },
        );
    }

    /// Answer `status` instead of the orders for the next `calls` calls that
    /// pass the token check.
    pub fn fail_next(&self, status: i64, calls: u32) {
        force(&self.0.state, status, Some(calls));
    }

    /// Answer `status` instead of the orders for every call that passes the
    /// token check, until `stop_failing`.
    pub fn fail_always(&self, status: i64) {
        force(&self.0.state, status, None);
    }

    pub fn stop_failing(&self) {
        lock(&self.0.state).damaijia_forced = None;
    }

    /// Every request waits this long before it is answered.
    pub fn delay(&self, wait: Duration) {
        lock(&self.0.state).damaijia_delay = wait;
    }

    /// Invalidate every token, as a login by someone else would.
    pub fn revoke_tokens(&self) {
        lock(&self.0.state).damaijia_tokens.clear();
    }

    /// The tokens that authenticate now: the configured one until the first
    /// login, then the one the latest login issued.
    pub fn tokens(&self) -> Vec<String> {
        lock(&self.0.state).damaijia_tokens.clone()
    }

    pub fn logins(&self) -> u64 {
        lock(&self.0.state).stats.damaijia_logins
    }

    /// Every `mpagingOrders` request, oldest first.
    pub fn calls(&self) -> Vec<DamaijiaCall> {
        lock(&self.0.state).damaijia_log.to_vec()
    }

    /// Requests that asked about `order_sn`.
    pub fn calls_for(&self, order_sn: &str) -> usize {
        lock(&self.0.state)
            .damaijia_log
            .count(|c| c.order_sns().contains(&order_sn))
    }

    /// The most requests that arrived within any `window`.
    pub fn max_in_window(&self, window: Duration) -> usize {
        lock(&self.0.state).damaijia_log.max_in_window(window)
    }
}
