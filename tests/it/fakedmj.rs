//! A fake 大麦家 on 127.0.0.1: token auth (a login replaces every older
//! token), batch `mpagingOrders` answered in the mixed shapes vendors.md §5
//! lists, `deduct_money` per call, and any status code on demand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

pub const APP_ID: &str = "app-1";
pub const APP_SECRET: &str = "app-secret-1";
/// Personal data the fake puts in every order; it must never be stored or logged.
pub const RECEIVER_NAME: &str = "罗小明";
pub const RECEIVER_PHONE: &str = "15574757515";
pub const RECEIVER_ADDRESS: &str = "幸福路88号3栋1201";

#[derive(Default)]
struct State {
    valid_tokens: Vec<String>,
    logins: u32,
    /// order_sn → (order_status, refund_status, last_ship_time ms)
    orders: HashMap<String, (i64, i64, i64)>,
    /// Answer every call with this status instead.
    force_status: Option<i64>,
    /// Requests: (Authorization header, JSON body).
    calls: Vec<(String, Value)>,
}

pub struct FakeDmj {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeDmj {
    pub async fn start(token: &str) -> FakeDmj {
        let state = Arc::new(Mutex::new(State {
            valid_tokens: vec![token.to_owned()],
            ..Default::default()
        }));
        let s = Arc::clone(&state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Arc::clone(&s)))
                .route("/vv/external/mpagingOrders", web::post().to(orders))
                .route("/vv/external/user_login", web::post().to(login))
        })
        .workers(2)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.disable_signals().run());
        FakeDmj {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    pub fn order(&self, sn: &str, order_status: i64, refund_status: i64, last_ship_ms: i64) {
        self.state
            .lock()
            .unwrap()
            .orders
            .insert(sn.to_owned(), (order_status, refund_status, last_ship_ms));
    }

    pub fn force_status(&self, s: Option<i64>) {
        self.state.lock().unwrap().force_status = s;
    }

    /// Replace every token (as a login by someone else would).
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().valid_tokens.clear();
    }

    pub fn calls(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn logins(&self) -> u32 {
        self.state.lock().unwrap().logins
    }
}

/// An order object in one of the shapes/casings seen in the wild.
fn order_json(sn: &str, (os, rs, ship): (i64, i64, i64), variant: usize) -> Value {
    match variant % 3 {
        0 => json!({
            "receiver_name": RECEIVER_NAME, "receiver_phone": RECEIVER_PHONE, "province": "广东省",
            "city": "深圳市", "town": "南山区", "receiver_address": RECEIVER_ADDRESS,
            "order_sn": sn, "goods_name": "流量卡", "goods_count": 1, "pay_amount": 9.9,
            "pay_time": 1605595841000_i64, "last_ship_time": ship, "order_status": os,
            "refund_status": rs, "deduct_money": 4
        }),
        1 => json!({
            "receiverName": RECEIVER_NAME, "receiverPhone": RECEIVER_PHONE, "province": "广东省",
            "city": "深圳市", "town": "南山区", "receiverAddress": RECEIVER_ADDRESS,
            "order_sn": sn, "goods_name": "流量卡", "goodsSpec": "月租19元", "goods_count": 1,
            "pay_amount": 9.9, "pay_time": 1605595841000_i64, "last_ship_time": ship,
            "order_status": os, "refund_status": rs, "deduct_money": 4
        }),
        _ => json!({
            "receiverName": RECEIVER_NAME, "receiverPhone": RECEIVER_PHONE, "province": "广东省",
            "city": "深圳市", "receiverAddress": RECEIVER_ADDRESS, "orderSn": sn,
            "goodsName": "流量卡", "goodsCount": "1", "payAmount": "9.9", "payTime": "1605595841000",
            "lastShipTime": ship.to_string(), "orderStatus": os.to_string(), "refundStatus": rs.to_string(),
            "deductMoney": "4"
        }),
    }
}

async fn orders(
    req: HttpRequest,
    body: web::Json<Value>,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut s = state.lock().unwrap();
    s.calls.push((auth.clone(), body.0.clone()));
    let n = s.calls.len();
    if !s.valid_tokens.contains(&auth) {
        return HttpResponse::Ok().json(json!({"status": 200, "err": "认证失败", "data": []}));
    }
    if let Some(code) = s.force_status {
        return HttpResponse::Ok()
            .json(json!({"status": code, "err": format!("错误 {code}"), "data": []}));
    }
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
        .filter_map(|sn| s.orders.get(sn).map(|o| order_json(sn, *o, n)))
        .collect();
    // Rotate through the answer shapes from call to call.
    let data = match n % 4 {
        0 => json!({"content": found, "deduct_money": 4}),
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

async fn login(body: web::Json<Value>, state: web::Data<Arc<Mutex<State>>>) -> HttpResponse {
    if body["app_id"] != APP_ID || body["app_secret"] != APP_SECRET {
        return HttpResponse::Ok().json(json!({"status": 422, "err": "app_id 或 app_secret 错误"}));
    }
    let mut s = state.lock().unwrap();
    s.logins += 1;
    let token = format!("tok-login-{}", s.logins);
    // Every login invalidates the previous token.
    s.valid_tokens = vec![token.clone()];
    HttpResponse::Ok().json(json!({"status": 0, "data": {"access_token": token}}))
}
