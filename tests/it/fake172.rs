//! A fake 172号卡 `GetOrderInfo` on 127.0.0.1: verifies `user_sign` with the
//! seed's formula (written out here, not shared with the client), rejects
//! timestamps more than 5 minutes off, blocks above 200 calls a minute like
//! the vendor, and answers per order as a test configures it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use md5::{Digest, Md5};
use serde_json::json;

#[derive(Debug, Clone)]
pub enum Answer {
    Label(String),
    NotFound,
    Http500,
    Slow(Duration),
    Garbage,
    Blocked,
}

#[derive(Default)]
struct State {
    answers: HashMap<String, Answer>,
    default: Option<Answer>,
    calls: Vec<(Instant, String)>,
    bad_sign: u32,
    bad_timestamp: u32,
    delay: Duration,
}

pub struct Fake172 {
    pub url: String,
    state: Arc<Mutex<State>>,
    user_id: String,
    secret: String,
}

impl Fake172 {
    pub async fn start(user_id: &str, secret: &str) -> Fake172 {
        let state = Arc::new(Mutex::new(State::default()));
        let (s, u, k) = (Arc::clone(&state), user_id.to_owned(), secret.to_owned());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new((Arc::clone(&s), u.clone(), k.clone())))
                .route("/api/order/GetOrderInfo", web::post().to(get_order_info))
        })
        .workers(2)
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.disable_signals().run());
        Fake172 {
            url: format!("http://127.0.0.1:{port}"),
            state,
            user_id: user_id.to_owned(),
            secret: secret.to_owned(),
        }
    }

    pub fn answer(&self, order_id: &str, a: Answer) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(order_id.to_owned(), a);
    }

    /// The answer for orders without one of their own.
    pub fn answer_all(&self, a: Option<Answer>) {
        self.state.lock().unwrap().default = a;
    }

    /// Every request waits this long before answering.
    pub fn delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    pub fn calls(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(_, o)| o.clone())
            .collect()
    }

    pub fn calls_for(&self, order_id: &str) -> usize {
        self.calls().iter().filter(|o| *o == order_id).count()
    }

    /// The most calls that arrived within any `window`.
    pub fn max_in_window(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self
            .state
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|(t, _)| *t)
            .collect();
        let mut best = 0;
        for (i, t) in times.iter().enumerate() {
            best = best.max(
                times[i..]
                    .iter()
                    .take_while(|u| u.duration_since(*t) < window)
                    .count(),
            );
        }
        best
    }

    /// Requests refused for a bad signature or timestamp (must stay 0).
    pub fn refused(&self) -> (u32, u32) {
        let s = self.state.lock().unwrap();
        (s.bad_sign, s.bad_timestamp)
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("HAOKA172_BASE_URL", self.url.as_str()),
            ("HAOKA172_USER_ID", self.user_id.as_str()),
            ("HAOKA172_SECRET", self.secret.as_str()),
        ]
    }
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

type Shared = web::Data<(Arc<Mutex<State>>, String, String)>;

async fn get_order_info(form: web::Form<HashMap<String, String>>, data: Shared) -> HttpResponse {
    let (state, user_id, secret) = (&data.0, &data.1, &data.2);
    let f = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (uid, ts, down, sign) = (
        f("user_id"),
        f("Timestamp"),
        f("DownOrderID"),
        f("user_sign"),
    );
    // Seed 000 §2.3, literally.
    let want = md5_hex(&format!(
        "DownOrderID={down}&Timestamp={ts}&user_id={uid}{secret}"
    ));
    if uid != *user_id || sign != want {
        state.lock().unwrap().bad_sign += 1;
        return HttpResponse::Ok().json(json!({"code": -1, "message": "签名错误", "errs": null}));
    }
    let now = chrono::Utc::now().timestamp();
    let ok_ts = ts.len() == 10 && ts.parse::<i64>().is_ok_and(|t| (t - now).abs() <= 300);
    if !ok_ts {
        state.lock().unwrap().bad_timestamp += 1;
        return HttpResponse::Ok().json(json!({"code": -1, "message": "时间戳错误", "errs": null}));
    }
    let (answer, delay, over_limit) = {
        let mut s = state.lock().unwrap();
        let t = Instant::now();
        s.calls.push((t, down.clone()));
        let last_minute = s
            .calls
            .iter()
            .filter(|(u, _)| t.duration_since(*u) < Duration::from_secs(60))
            .count();
        let a = s.answers.get(&down).cloned().or_else(|| s.default.clone());
        (a, s.delay, last_minute > 200)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if over_limit {
        return HttpResponse::Ok()
            .json(json!({"code": -1, "message": "调用过于频繁,已拦截", "errs": null}));
    }
    match answer.unwrap_or(Answer::NotFound) {
        Answer::Label(label) => HttpResponse::Ok().json(json!({
            "data": {"orderNo": format!("mlkj{down}"), "downOrderNo": down, "name": "田**",
                     "expressName": "京东", "expressCode": "JDV0001", "orderStatus": label,
                     "createTime": "2026-11-20 10:00:00", "thirdPhone": "1309554****", "remark": "",
                     "cardStatus": "未激活", "activationTime": "", "isFirstCharge": "0", "firstCharge": ""},
            "code": 0, "message": "成功", "errs": null})),
        Answer::NotFound => HttpResponse::Ok().json(json!({"code": -1, "message": "订单不存在", "errs": null})),
        Answer::Http500 => HttpResponse::InternalServerError().body("internal error"),
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            HttpResponse::Ok().json(json!({"code": -1, "message": "订单不存在", "errs": null}))
        }
        Answer::Garbage => HttpResponse::Ok().content_type("text/html").body("<html>维护中</html>"),
        Answer::Blocked => HttpResponse::Ok().json(json!({"code": -1, "message": "调用过于频繁,已拦截", "errs": null})),
    }
}
