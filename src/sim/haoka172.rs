//! Fake 172号卡: `GetOrderInfo` with the vendor's checks and the answers a
//! test scripts per order, and the callback push engine. It signs with its
//! own `sign.rs`, never with the service's code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use chrono::TimeZone;
use serde_json::{json, Value};

use super::calls::{Arrival, Flight};
use super::lifecycle::{Lifecycle172, Rng, Step};
use super::sign::{callback_sign, expected_user_sign};
use super::{lock, Haoka172, Shared, SimConfig, State};

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

/// What the vendor knows about one order at one moment: a lifecycle step,
/// or a label a test scripted.
struct Known<'a> {
    order_no: &'a str,
    order_no_172: &'a str,
    label: &'a str,
    shipped: bool,
    activated: bool,
    first_charge: bool,
    /// When this status was reached and when the order was placed.
    at: Duration,
    created: Duration,
}

impl<'a> Known<'a> {
    fn step(o: &'a Lifecycle172, s: &'a Step) -> Self {
        Known {
            order_no: &o.order_no,
            order_no_172: &o.order_no_172,
            label: s.label,
            shipped: s.shipped,
            activated: s.activated,
            first_charge: s.first_charge,
            at: s.at,
            created: o.steps.first().map_or(s.at, |f| f.at),
        }
    }

    /// A scripted label has no history: the express fields follow from the
    /// label alone, and the card is never activated.
    fn scripted(order_no: &'a str, order_no_172: &'a str, label: &'a str) -> Self {
        Known {
            order_no,
            order_no_172,
            label,
            shipped: matches!(label, "已发货" | "已完成" | "已结算" | "无法结算"),
            activated: false,
            first_charge: false,
            at: Duration::ZERO,
            created: Duration::ZERO,
        }
    }

    fn digits(&self) -> &str {
        self.order_no_172
            .strip_prefix("mlkj")
            .unwrap_or(self.order_no_172)
    }

    fn phone(&self) -> String {
        let n: u64 = self.order_no_172.bytes().map(u64::from).sum();
        format!("1309554{:04}", n % 10_000)
    }

    /// The order in the callback's names.
    fn callback_data(&self) -> Value {
        let submitted = self.label != "待处理" && self.label != "正在进单";
        let shipped = |v: String| {
            if self.shipped {
                Value::from(v)
            } else {
                Value::Null
            }
        };
        json!({
            "OrderNo": self.order_no,
            "OrderNo172": self.order_no_172,
            "OrderStatus": self.label,
            "ThirdPhone": if submitted { Value::from(self.phone()) } else { Value::Null },
            "Remark": format!("[{}]", self.label),
            "ExpressName": shipped("京东".into()),
            "ExpressCode": shipped(format!("JDV{}", self.digits())),
            "CardStatus": shipped(if self.activated { "已激活" } else { "未激活" }.into()),
            "ActiveTime": if self.activated { Value::from(sim_time(self.at)) } else { Value::Null },
            "Iccid": shipped(format!("8986{}", self.digits())),
            "IsFirstCharge": i32::from(self.first_charge),
            "FirstCharge": if self.first_charge { "50" } else { "" },
        })
    }

    /// The order as a GetOrderInfo success, in that answer's names.
    fn order_info(&self) -> Value {
        let d = self.callback_data();
        let text = |k: &str| d[k].as_str().unwrap_or("").to_owned();
        json!({
            "data": {
                "orderNo": self.order_no_172, "downOrderNo": self.order_no, "name": "田**",
                "expressName": text("ExpressName"), "expressCode": text("ExpressCode"),
                "orderStatus": self.label, "createTime": sim_time(self.created),
                "thirdPhone": text("ThirdPhone"), "remark": d["Remark"],
                "cardStatus": text("CardStatus"), "activationTime": text("ActiveTime"),
                "isFirstCharge": if self.first_charge { "1" } else { "0" },
                "firstCharge": d["FirstCharge"],
            },
            "code": 0, "message": "成功", "errs": null
        })
    }
}

/// The vendor's refusal when an account calls more than 200 times a minute.
pub const BLOCKED_MESSAGE: &str = "调用过于频繁,已拦截";
/// The vendor's answer for an order it does not know.
pub const NOT_FOUND_MESSAGE: &str = "订单不存在";

/// What GetOrderInfo answers for an order instead of its lifecycle, as a
/// test scripts it (`Haoka172::answer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Success with this `orderStatus` label, any text.
    Label(String),
    /// `{"code":-1,"message":"订单不存在"}`.
    NotFound,
    /// This HTTP status, with a plain-text body.
    Http(u16),
    /// HTTP 200 with a body that is not JSON (a maintenance page).
    Garbage,
    /// The vendor's "called too often, blocked" refusal.
    Blocked,
    /// `{"code":code,"message":message}`.
    Refusal { code: i64, message: String },
    /// The inner answer, after this wait (beyond the client's timeout: a
    /// timeout).
    Delayed(Duration, Box<Answer>),
}

impl Answer {
    pub fn label(label: &str) -> Answer {
        Answer::Label(label.to_owned())
    }

    /// This answer, `wait` later.
    pub fn after(self, wait: Duration) -> Answer {
        Answer::Delayed(wait, Box::new(self))
    }
}

/// One GetOrderInfo request that passed the signature and timestamp checks
/// (the ones the vendor counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub at: Instant,
    pub order_id: String,
}

impl Arrival for Call {
    fn at(&self) -> Instant {
        self.at
    }
}

/// What the fake sends back, decided under the lock and sent after it.
enum Reply {
    Json(Value),
    Http(u16),
    Garbage,
}

impl Reply {
    fn refusal(code: i64, message: &str) -> Reply {
        Reply::Json(json!({"code": code, "message": message, "errs": null}))
    }

    fn into_response(self) -> HttpResponse {
        match self {
            Reply::Json(v) => HttpResponse::Ok().json(v),
            Reply::Http(code) => HttpResponse::build(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            )
            .content_type("text/plain; charset=utf-8")
            .body(format!("simulated HTTP {code}")),
            Reply::Garbage => HttpResponse::Ok()
                .content_type("text/html")
                .body("<html>维护中</html>"),
        }
    }
}

pub(super) async fn get_order_info(
    form: web::Form<HashMap<String, String>>,
    state: web::Data<Shared>,
    cfg: web::Data<Arc<SimConfig>>,
) -> HttpResponse {
    let f = |k: &str| form.get(k).cloned().unwrap_or_default();
    let req = Request {
        user_id: f("user_id"),
        timestamp: f("Timestamp"),
        down: f("DownOrderID"),
        sign: f("user_sign"),
    };
    let (_flight, wait, reply) = {
        let mut s = lock(&state);
        let (flight, peak) =
            Flight::enter(&state, &mut s, |s| &mut s.flight_172, [req.down.clone()]);
        s.stats.max_concurrent_per_order = s.stats.max_concurrent_per_order.max(peak);
        let (wait, reply) = decide(&mut s, &cfg, &req);
        (flight, wait, reply)
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    reply.into_response()
}

struct Request {
    user_id: String,
    timestamp: String,
    down: String,
    sign: String,
}

/// The vendor's checks in its order, then the scripted answer or the
/// lifecycle's; returns how long to wait before replying.
fn decide(s: &mut State, cfg: &SimConfig, r: &Request) -> (Duration, Reply) {
    let expected = expected_user_sign(&r.down, &r.timestamp, &r.user_id, &cfg.secret);
    if r.user_id != cfg.user_id || r.sign != expected {
        s.stats.get_order_info_bad_sign += 1;
        return (Duration::ZERO, Reply::refusal(-1, "签名错误"));
    }
    let now = chrono::Utc::now();
    let fresh = r.timestamp.len() == 10
        && r.timestamp
            .parse::<i64>()
            .is_ok_and(|t| (t - now.timestamp()).abs() <= 300);
    if !fresh {
        s.stats.get_order_info_bad_timestamp += 1;
        return (Duration::ZERO, Reply::refusal(-1, "时间戳超时"));
    }
    s.stats.get_order_info_calls += 1;
    let t = Instant::now();
    s.calls_172.push(Call {
        at: t,
        order_id: r.down.clone(),
    });
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
    let mut wait = s.delay_172;
    if in_minute > 200 {
        s.stats.get_order_info_blocked += 1;
        return (wait, Reply::refusal(-1, BLOCKED_MESSAGE));
    }
    let day = crate::rules::schedule::china_day(now);
    let n = {
        let c = s
            .calls_per_order_day
            .entry((r.down.clone(), day))
            .or_insert(0);
        *c += 1;
        *c
    };
    s.stats.max_calls_per_order_day = s.stats.max_calls_per_order_day.max(n);
    let lifecycle = s.index.get(&r.down).map(|&i| &s.orders[i]);
    let scripted = s.answers.get(&r.down).or(s.default_answer.as_ref());
    let (label, reply) = match scripted {
        Some(a) => {
            let no_172 = lifecycle.map(|o| o.order_no_172.clone());
            let no_172 = no_172.unwrap_or_else(|| format!("mlkj{}", r.down));
            let (extra, label, reply) = scripted_reply(a, &r.down, &no_172);
            wait += extra;
            (label, reply)
        }
        None => {
            let elapsed = s.elapsed().unwrap_or_default();
            let step = lifecycle.and_then(|o| {
                let step = o.steps.iter().rev().find(|st| st.at <= elapsed)?;
                Some((o, step))
            });
            match step {
                Some((o, step)) => (
                    Some(step.label.to_owned()),
                    Reply::Json(Known::step(o, step).order_info()),
                ),
                None => (None, Reply::refusal(-1, NOT_FOUND_MESSAGE)),
            }
        }
    };
    if let Some(label) = label {
        if TERMINAL.contains(&label.as_str()) && !s.answered_terminal.insert(r.down.clone()) {
            s.stats.calls_after_terminal += 1;
        }
    }
    (wait, reply)
}

/// A scripted answer: the extra wait, the label it tells (for the terminal
/// check) and the reply.
fn scripted_reply(a: &Answer, down: &str, no_172: &str) -> (Duration, Option<String>, Reply) {
    let (label, reply) = match a {
        Answer::Delayed(d, inner) => {
            let (wait, label, reply) = scripted_reply(inner, down, no_172);
            return (wait + *d, label, reply);
        }
        Answer::Label(label) => (
            Some(label.clone()),
            Reply::Json(Known::scripted(down, no_172, label).order_info()),
        ),
        Answer::NotFound => (None, Reply::refusal(-1, NOT_FOUND_MESSAGE)),
        Answer::Http(code) => (None, Reply::Http(*code)),
        Answer::Garbage => (None, Reply::Garbage),
        Answer::Blocked => (None, Reply::refusal(-1, BLOCKED_MESSAGE)),
        Answer::Refusal { code, message } => (None, Reply::refusal(*code, message)),
    };
    (Duration::ZERO, label, reply)
}

impl Haoka172 {
    /// The service configuration that points at this fake and signs as it
    /// expects.
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("HAOKA172_BASE_URL", self.0.url.as_str()),
            ("HAOKA172_USER_ID", self.0.cfg.user_id.as_str()),
            ("HAOKA172_SECRET", self.0.cfg.secret.as_str()),
        ]
    }

    /// Answer this for `order_id` from now on, whatever its lifecycle says;
    /// the order need not be one the lifecycle generator made.
    pub fn answer(&self, order_id: &str, answer: Answer) {
        lock(&self.0.state)
            .answers
            .insert(order_id.to_owned(), answer);
    }

    /// The answer for every order without a scripted answer of its own,
    /// lifecycle orders included (`None`: back to the lifecycles, and "not
    /// found" for the rest).
    pub fn answer_all(&self, answer: Option<Answer>) {
        lock(&self.0.state).default_answer = answer;
    }

    /// Every accepted request waits this long before it is answered.
    pub fn delay(&self, wait: Duration) {
        lock(&self.0.state).delay_172 = wait;
    }

    /// The accepted requests, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.0.state).calls_172.to_vec()
    }

    pub fn calls_for(&self, order_id: &str) -> usize {
        lock(&self.0.state)
            .calls_172
            .count(|c| c.order_id == order_id)
    }

    /// The most accepted requests that arrived within any `window`.
    pub fn max_in_window(&self, window: Duration) -> usize {
        lock(&self.0.state).calls_172.max_in_window(window)
    }

    /// Requests refused for a bad signature and for a stale timestamp: a
    /// service that follows the vendor's rules keeps both at 0.
    pub fn refused(&self) -> (u64, u64) {
        let s = lock(&self.0.state);
        (
            s.stats.get_order_info_bad_sign,
            s.stats.get_order_info_bad_timestamp,
        )
    }
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
                    data: Known::step(o, step).callback_data().to_string(),
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
    log::warn!(
        request_id = p.request_id.as_str(), order_id = p.order_no.as_str();
        "sim: push {} for {} given up", p.request_id, p.order_no
    );
    lock(state).stats.pushes_given_up += 1;
}
