//! A downstream receiver of forwarded status changes, as an agent's system
//! or a sub-agent would run one: `POST /hook`, verifying the Standard
//! Webhooks signature with its own HMAC code (never the service's), and
//! answering as told: 2xx, an error status (with `Retry-After`), a timeout,
//! or not at all (stopped). Records every request it saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 at once.
    Ok,
    /// This status, with `Retry-After: <secs>` when given.
    Status(u16, Option<u64>),
    /// Waits this long, then 200 (the sender has given up by then).
    Slow(Duration),
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub webhook_id: String,
    pub timestamp: String,
    /// Every `v1,` signature of the header.
    pub signatures: Vec<String>,
    /// How many of them verify with one of the receiver's secrets.
    pub verified: usize,
    pub body: serde_json::Value,
    /// The body's bytes as they came (what the signatures sign).
    pub raw: String,
    /// What it answered.
    pub status: u16,
}

/// What a receiver saw, in a few numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests.
    pub received: usize,
    /// Requests with a signature that verified.
    pub verified: usize,
    /// Distinct `webhook-id`s.
    pub unique: usize,
    /// Requests answered 2xx that arrived after a later change of the same
    /// order had been accepted (the body's `seq` went back).
    pub out_of_order: usize,
}

struct State {
    mode: Mode,
    secrets: Vec<String>,
    received: Vec<Received>,
}

pub struct Receiver {
    addr: SocketAddr,
    handle: ServerHandle,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Listen on 127.0.0.1 (a free port), verifying with `secrets`.
    pub async fn start(secrets: Vec<String>) -> std::io::Result<Receiver> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), secrets).await
    }

    /// Listen on `addr` (port 0: a free one), verifying with `secrets`.
    pub async fn start_on(addr: SocketAddr, secrets: Vec<String>) -> std::io::Result<Receiver> {
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Ok,
            secrets,
            received: Vec::new(),
        }));
        let shared = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/hook", web::post().to(hook))
        })
        .workers(2)
        .disable_signals()
        .bind(addr)?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Receiver {
            addr,
            handle,
            state,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    pub fn set_secrets(&self, secrets: Vec<String>) {
        self.lock().secrets = secrets;
    }

    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    pub fn tally(&self) -> Tally {
        let s = self.lock();
        let mut ids = std::collections::HashSet::new();
        let mut last: std::collections::HashMap<(String, String), i64> = Default::default();
        let mut t = Tally {
            received: s.received.len(),
            ..Tally::default()
        };
        for r in &s.received {
            if r.verified > 0 {
                t.verified += 1;
            }
            ids.insert(r.webhook_id.as_str());
            if r.status >= 300 {
                continue;
            }
            let key = (
                r.body["vendor"].as_str().unwrap_or("").to_owned(),
                r.body["order_id"].as_str().unwrap_or("").to_owned(),
            );
            let seq = r.body["seq"].as_i64().unwrap_or(0);
            let prev = last.entry(key).or_insert(0);
            if seq < *prev {
                t.out_of_order += 1;
            }
            *prev = (*prev).max(seq);
        }
        t.unique = ids.len();
        t
    }

    /// Go away: the port stops answering.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn hook(req: HttpRequest, body: web::Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let signatures: Vec<String> = sig
        .split(' ')
        .filter(|s| s.starts_with("v1,"))
        .map(str::to_owned)
        .collect();
    let (mode, secrets) = {
        let s = state.lock().unwrap_or_else(|e| e.into_inner());
        (s.mode.clone(), s.secrets.clone())
    };
    let expected: Vec<String> = secrets
        .iter()
        .filter_map(|s| sign(s, &id, &ts, &body))
        .collect();
    let verified = signatures.iter().filter(|s| expected.contains(s)).count();
    let status = match &mode {
        Mode::Ok | Mode::Slow(_) => 200,
        Mode::Status(code, _) => *code,
    };
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .received
        .push(Received {
            at: Instant::now(),
            webhook_id: id,
            timestamp: ts,
            signatures,
            verified,
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            raw: String::from_utf8_lossy(&body).into_owned(),
            status,
        });
    match mode {
        Mode::Ok => HttpResponse::Ok().body("ok"),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            HttpResponse::Ok().body("late")
        }
        Mode::Status(code, after) => {
            let mut r = HttpResponse::build(
                actix_web::http::StatusCode::from_u16(code)
                    .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
            );
            if let Some(s) = after {
                r.insert_header(("retry-after", s.to_string()));
            }
            r.body("receiver told to fail")
        }
    }
}

/// The receiver's own Standard Webhooks signature of `{id}.{ts}.{body}`.
fn sign(secret: &str, id: &str, ts: &str, body: &[u8]) -> Option<String> {
    let b64 = engine();
    let key = b64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", b64.encode(mac.finalize().into_bytes())))
}

fn engine() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}
