//! A stand-in for both vendors, following docs/vendors.md: for the integration
//! and end-to-end tests, the benchmarks, and `haoka-sync simulate` / `demo`.
//!
//! - Fake 172号卡: `GetOrderInfo` checks `user_sign` and the 5-minute
//!   timestamp window, answers "blocked" above 200 calls a minute, counts
//!   calls per order per day and calls made after it already answered a
//!   terminal status. Every order lives through a lifecycle on an accelerated
//!   clock, and each status change is pushed as a signed callback, retried
//!   with the same `RequidId` on failure; pushes can be dropped, duplicated and
//!   delivered out of order on purpose. A test can script any order's answer
//!   (a label, not found, an HTTP status, garbage, a refusal, a delay),
//!   including orders no lifecycle made ([`Haoka172`]).
//! - Fake 大麦家: token auth (a login replaces older tokens), batch
//!   `mpagingOrders` in rotating answer shapes, `deduct_money` per call,
//!   scripted order states and status codes ([`Damaijia`]).
//! - What arrived: a timestamped log of the requests to each fake, the most
//!   requests about one order in flight at once, the ground truth (each
//!   order's final status) and the counters (`truth()`, `stats()`, and
//!   `GET /sim/truth`, `GET /sim/stats`).
//!
//! It must never be used by the service itself, and never borrow the
//! service's vendor code (signing, parsing): a protocol mistake shared by
//! both sides would pass every test. It lives in this crate rather than its
//! own because `haoka-sync simulate` and `demo` ship it in the same binary,
//! so a separate crate would not take a single dependency out of it.

mod calls;
mod damaijia;
mod haoka172;
pub mod lifecycle;
pub mod receiver;
pub mod sign;
#[cfg(test)]
mod tests;

pub use damaijia::{
    DamaijiaCall, ShopState, APP_ID, APP_SECRET, RECEIVER_ADDRESS, RECEIVER_NAME, RECEIVER_PHONE,
};
pub use haoka172::{Answer, Call, BLOCKED_MESSAGE, NOT_FOUND_MESSAGE};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use serde::Serialize;

use lifecycle::{Lifecycle172, LifecycleShop, Rng};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub haoka172_orders: usize,
    pub damaijia_orders: usize,
    pub seed: u64,
    /// Mean real time between two status changes of one order.
    pub step: Duration,
    /// Orders start within this window.
    pub spread: Duration,
    /// Fractions of callback pushes lost, delivered twice, delivered late.
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
    /// Sign callbacks over `OrderNo172` instead of `OrderNo`.
    pub sign_over_172: bool,
    pub user_id: String,
    pub secret: String,
    pub damaijia_token: String,
    pub damaijia_app_id: String,
    pub damaijia_app_secret: String,
    /// Prefix of every order id (keeps runs apart).
    pub prefix: String,
    pub bind_172: SocketAddr,
    pub bind_damaijia: SocketAddr,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            haoka172_orders: 200,
            damaijia_orders: 50,
            seed: 172,
            step: Duration::from_secs(1),
            spread: Duration::from_secs(5),
            drop: 0.15,
            duplicate: 0.05,
            reorder: 0.05,
            sign_over_172: false,
            user_id: "sim-agent".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
            damaijia_token: "sim-token-0".into(),
            damaijia_app_id: APP_ID.into(),
            damaijia_app_secret: APP_SECRET.into(),
            prefix: "SIM".into(),
            bind_172: SocketAddr::from(([127, 0, 0, 1], 0)),
            bind_damaijia: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Counters a test or the demo compares with the service's view.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SimStats {
    pub pushes_planned: u64,
    pub pushes_dropped: u64,
    pub pushes_duplicated: u64,
    pub pushes_reordered: u64,
    /// Deliveries attempted (first tries, duplicates and retries).
    pub push_attempts: u64,
    pub pushes_acknowledged: u64,
    pub push_retries: u64,
    /// Pushes that were never acknowledged after every retry.
    pub pushes_given_up: u64,
    pub get_order_info_calls: u64,
    pub get_order_info_bad_sign: u64,
    pub get_order_info_bad_timestamp: u64,
    /// Calls answered "blocked" for being over 200 a minute (not scripted
    /// blocks).
    pub get_order_info_blocked: u64,
    pub max_calls_per_minute: u64,
    pub max_calls_per_order_day: u64,
    /// Queries for an order after it was already answered terminal.
    pub calls_after_terminal: u64,
    /// The most GetOrderInfo requests about one order in flight at the same
    /// time (from arrival to answer): more than 1 means the order was asked
    /// about twice at once.
    pub max_concurrent_per_order: u64,
    pub damaijia_calls: u64,
    pub damaijia_cost: u64,
    pub damaijia_logins: u64,
    pub damaijia_auth_failures: u64,
    pub damaijia_rate_violations: u64,
    /// The most `mpagingOrders` requests naming one order in flight at the
    /// same time.
    pub damaijia_max_concurrent_per_order: u64,
}

/// Each order's real final status (normalized names).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Truth {
    pub haoka172: BTreeMap<String, &'static str>,
    pub damaijia: BTreeMap<String, &'static str>,
}

struct State {
    started: Option<Instant>,
    orders: Vec<Lifecycle172>,
    index: HashMap<String, usize>,
    shops: Vec<LifecycleShop>,
    shop_index: HashMap<String, usize>,
    stats: SimStats,
    recent_calls: VecDeque<Instant>,
    calls_172: calls::Log<Call>,
    flight_172: calls::InFlight,
    /// Scripted 172 answers: per order, and for every other order.
    answers: HashMap<String, Answer>,
    default_answer: Option<Answer>,
    delay_172: Duration,
    calls_per_order_day: HashMap<(String, chrono::NaiveDate), u64>,
    answered_terminal: HashSet<String>,
    pushes_in_flight: u64,
    pushes_scheduled: u64,
    /// Per order: the latest any of its pushes was acknowledged, compared
    /// with when it was planned.
    lateness: HashMap<String, Duration>,
    damaijia_tokens: Vec<String>,
    damaijia_recent: VecDeque<Instant>,
    damaijia_forced: Option<damaijia::Forced>,
    /// Scripted 大麦家 states, overriding the lifecycles.
    shop_script: HashMap<String, ShopState>,
    damaijia_log: calls::Log<DamaijiaCall>,
    flight_damaijia: calls::InFlight,
    damaijia_delay: Duration,
}

impl State {
    fn elapsed(&self) -> Option<Duration> {
        self.started.map(|s| s.elapsed())
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a handle on one fake holds: the state both fakes share, the
/// configuration, and the fake's address.
#[derive(Clone)]
struct Endpoint {
    state: Shared,
    cfg: Arc<SimConfig>,
    url: String,
}

/// The test's handle on the fake 172号卡: its address and credentials, the
/// answers it gives, and the calls it received.
#[derive(Clone)]
pub struct Haoka172(Endpoint);

/// The test's handle on the fake 大麦家: its address and credentials, the
/// orders and failures it answers, and the requests it received.
#[derive(Clone)]
pub struct Damaijia(Endpoint);

pub struct Simulator {
    cfg: Arc<SimConfig>,
    state: Shared,
    haoka172: Haoka172,
    damaijia: Damaijia,
    servers: Vec<ServerHandle>,
}

impl Simulator {
    /// Draw every lifecycle and bind both fake vendors. The clock starts at
    /// `run`; scripted answers work without it, and with zero lifecycle
    /// orders the fakes answer only what a test scripts.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        let mut rng = Rng::new(cfg.seed);
        let orders: Vec<Lifecycle172> = (0..cfg.haoka172_orders)
            .map(|i| {
                let start = cfg.spread.mul_f64(rng.unit());
                lifecycle::haoka172(&mut rng, format!("{}{:05}", cfg.prefix, i), start, cfg.step)
            })
            .collect();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let shops: Vec<LifecycleShop> = (0..cfg.damaijia_orders)
            .map(|i| {
                let start = cfg.spread.mul_f64(rng.unit());
                let sn = format!(
                    "261121-{}{:09}",
                    cfg.prefix.len(),
                    rng.next_u64() % 1_000_000_000 + i as u64
                );
                lifecycle::shop(&mut rng, sn, start, cfg.step, now_ms)
            })
            .collect();
        let state = Arc::new(Mutex::new(State {
            started: None,
            index: orders
                .iter()
                .enumerate()
                .map(|(i, o)| (o.order_no.clone(), i))
                .collect(),
            shop_index: shops
                .iter()
                .enumerate()
                .map(|(i, o)| (o.order_sn.clone(), i))
                .collect(),
            orders,
            shops,
            stats: SimStats::default(),
            recent_calls: VecDeque::new(),
            calls_172: calls::Log::new(),
            flight_172: calls::InFlight::default(),
            answers: HashMap::new(),
            default_answer: None,
            delay_172: Duration::ZERO,
            calls_per_order_day: HashMap::new(),
            answered_terminal: HashSet::new(),
            pushes_in_flight: 0,
            pushes_scheduled: 0,
            lateness: HashMap::new(),
            damaijia_tokens: vec![cfg.damaijia_token.clone()],
            damaijia_recent: VecDeque::new(),
            damaijia_forced: None,
            shop_script: HashMap::new(),
            damaijia_log: calls::Log::new(),
            flight_damaijia: calls::InFlight::default(),
            damaijia_delay: Duration::ZERO,
        }));
        let cfg = Arc::new(cfg);
        let (s1, c1) = (Arc::clone(&state), Arc::clone(&cfg));
        let server_172 = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Arc::clone(&s1)))
                .app_data(web::Data::new(Arc::clone(&c1)))
                .route(
                    "/api/order/GetOrderInfo",
                    web::post().to(haoka172::get_order_info),
                )
                .route("/sim/truth", web::get().to(truth_handler))
                .route("/sim/stats", web::get().to(stats_handler))
                .route("/sim/damaijia/fail", web::post().to(damaijia::fail_handler))
        })
        .workers(2)
        .disable_signals()
        .bind(cfg.bind_172)?;
        let url_172 = format!("http://{}", server_172.addrs()[0]);
        let (s2, c2) = (Arc::clone(&state), Arc::clone(&cfg));
        let server_dmj = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Arc::clone(&s2)))
                .app_data(web::Data::new(Arc::clone(&c2)))
                .route(
                    "/vv/external/mpagingOrders",
                    web::post().to(damaijia::orders),
                )
                .route("/vv/external/user_login", web::post().to(damaijia::login))
        })
        .workers(2)
        .disable_signals()
        .bind(cfg.bind_damaijia)?;
        let url_damaijia = format!("http://{}", server_dmj.addrs()[0]);
        let (a, b) = (server_172.run(), server_dmj.run());
        let servers = vec![a.handle(), b.handle()];
        tokio::spawn(a);
        tokio::spawn(b);
        Ok(Simulator {
            haoka172: Haoka172(Endpoint {
                state: Arc::clone(&state),
                cfg: Arc::clone(&cfg),
                url: url_172,
            }),
            damaijia: Damaijia(Endpoint {
                state: Arc::clone(&state),
                cfg: Arc::clone(&cfg),
                url: url_damaijia,
            }),
            cfg,
            state,
            servers,
        })
    }

    /// Start the clock; with a callback URL, push every status change to it.
    pub fn run(&self, callback_url: Option<String>) {
        lock(&self.state).started = Some(Instant::now());
        if let Some(url) = callback_url {
            haoka172::spawn_pushes(Arc::clone(&self.state), Arc::clone(&self.cfg), url);
        }
    }

    pub fn haoka172_url(&self) -> &str {
        &self.haoka172.0.url
    }

    pub fn damaijia_url(&self) -> &str {
        &self.damaijia.0.url
    }

    /// The fake 172号卡: scripted answers and the calls it received.
    pub fn haoka172(&self) -> &Haoka172 {
        &self.haoka172
    }

    /// The fake 大麦家: scripted orders and failures, the requests it received.
    pub fn damaijia(&self) -> &Damaijia {
        &self.damaijia
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// When each order is placed (its first status), oldest first: an agent
    /// registers its orders for tracking at that moment.
    pub fn placements(&self) -> Vec<(Duration, crate::vendors::Vendor, String)> {
        use crate::vendors::Vendor;
        let s = lock(&self.state);
        let mut v: Vec<_> =
            s.orders
                .iter()
                .filter_map(|o| Some((o.steps.first()?.at, Vendor::Haoka172, o.order_no.clone())))
                .chain(s.shops.iter().filter_map(|o| {
                    Some((o.steps.first()?.at, Vendor::Damaijia, o.order_sn.clone()))
                }))
                .collect();
        v.sort();
        v
    }

    /// Orders with a push acknowledged at least `late` after its planned
    /// time (a loaded machine, retries): for those, silence the service may
    /// rightly take for a lost callback.
    pub fn late_orders(&self, late: Duration) -> HashSet<String> {
        lock(&self.state)
            .lateness
            .iter()
            .filter(|(_, d)| **d >= late)
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// When the clock started (None before `run`).
    pub fn started_at(&self) -> Option<Instant> {
        lock(&self.state).started
    }

    pub fn truth(&self) -> Truth {
        truth_of(&lock(&self.state))
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats.clone()
    }

    /// Every lifecycle is over and every push delivered or given up.
    pub fn finished(&self) -> bool {
        let s = lock(&self.state);
        let Some(elapsed) = s.elapsed() else {
            return false;
        };
        let last = s
            .orders
            .iter()
            .filter_map(|o| o.steps.last().map(|x| x.at))
            .chain(s.shops.iter().filter_map(|o| o.steps.last().map(|x| x.at)))
            .max()
            .unwrap_or_default();
        elapsed > last && s.pushes_in_flight == 0 && s.pushes_scheduled == 0
    }

    pub async fn stop(&self) {
        for h in &self.servers {
            h.stop(false).await;
        }
    }
}

fn truth_of(s: &State) -> Truth {
    Truth {
        haoka172: s
            .orders
            .iter()
            .map(|o| (o.order_no.clone(), o.truth))
            .collect(),
        damaijia: s
            .shops
            .iter()
            .map(|o| (o.order_sn.clone(), o.truth))
            .collect(),
    }
}

async fn truth_handler(state: web::Data<Shared>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(truth_of(&lock(&state)))
}

async fn stats_handler(state: web::Data<Shared>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(lock(&state).stats.clone())
}
