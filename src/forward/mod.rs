//! The forwarding worker inside `serve`: sends the deliveries the change
//! feed wrote (`store::forward`), signed per Standard Webhooks, and records
//! every attempt. Many at once (`FORWARD_CONCURRENCY`), but one order's
//! changes to one target strictly in order (the claim only offers the
//! earliest pending delivery of each target and order). Several replicas
//! share the work through leases; a delivery is sent twice only when a
//! process died (or its lease ran out) between sending and recording,
//! always with the same `webhook-id`.
//!
//! Must never: send a later change of an order before an earlier one is
//! delivered or exhausted, delete a delivery, or log a secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Semaphore;

use crate::db::{self, PgPool};
use crate::metrics::Metrics;
use crate::rules::forward::{self as rules, after_failure, callbacks_first, Policy};
use crate::store::forward::{self as fstore, AttemptResult, Claimed};
use crate::store::ingest::WriterLoad;

/// What the worker needs to know (`FORWARD_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    /// An answer later than this is a failure.
    pub timeout: Duration,
    /// Deliveries in flight at once, in this process.
    pub concurrency: usize,
    /// Percent of the callback writers' time busy from which forwarding
    /// gives way (`FORWARD_YIELD_AT`; 0 never).
    pub yield_at: u8,
}

/// A new signing secret for a target (`whsec_` and 24 random bytes).
pub fn new_target_secret() -> Result<String, getrandom::Error> {
    let mut random = [0u8; 24];
    getrandom::fill(&mut random)?;
    Ok(rules::new_secret(random))
}

/// Between claims when nothing is due.
const IDLE: Duration = Duration::from_millis(200);
/// Between deliveries while forwarding gives way to callbacks.
const YIELD_GAP: Duration = Duration::from_millis(100);
/// How often the callback writers' load is looked at.
const LOAD_WINDOW: Duration = Duration::from_millis(250);
/// Between claims when the last one took all that was due.
const GATHER: Duration = Duration::from_millis(25);
/// Bytes of an answer kept with its attempt.
const SAMPLE: usize = 512;

pub struct Forwarder {
    pool: PgPool,
    client: reqwest::Client,
    settings: Settings,
    owner: String,
    metrics: Arc<Metrics>,
    load: Option<Arc<WriterLoad>>,
}

impl Forwarder {
    pub fn new(pool: PgPool, settings: Settings, metrics: Arc<Metrics>) -> Forwarder {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("haoka-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Forwarder {
            pool,
            client,
            owner: crate::owner::worker(),
            settings,
            metrics,
            load: None,
        }
    }

    /// Give way to the callbacks these writers commit when they are busy
    /// (`FORWARD_YIELD_AT`).
    pub fn giving_way_to(mut self, load: Arc<WriterLoad>) -> Forwarder {
        self.load = Some(load);
        self
    }

    /// Claim and send until the task is dropped.
    pub async fn run_forever(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let full_batch = (self.settings.concurrency / 2).max(1);
        let mut failing_logged = false;
        let mut pressure = self
            .load
            .clone()
            .map(|l| Pressure::new(l, self.settings.yield_at));
        loop {
            if !self.pool.health().is_up() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let yielding = pressure.as_mut().is_some_and(|p| p.yielding(&self.metrics));
            // Claim in batches: once half the slots are free (a claim costs
            // about the same for one delivery as for a hundred); one at a
            // time while callbacks come first.
            let batch = if yielding { 1 } else { full_batch };
            let free = slots.available_permits();
            if free < batch {
                // Wait until that many deliveries in flight are done.
                if let Ok(p) = Arc::clone(&slots).acquire_many_owned(batch as u32).await {
                    drop(p);
                }
                continue;
            }
            let claimed = self.claim(if yielding { 1 } else { free as i64 }).await;
            let claimed = match claimed {
                Ok(c) => {
                    failing_logged = false;
                    c
                }
                Err(e) => {
                    if !failing_logged {
                        log::warn!("forward: cannot claim deliveries ({e}); retrying every second");
                        failing_logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                tokio::time::sleep(IDLE).await;
                continue;
            }
            // Fewer due than asked for: what is due is taken; let a few
            // more changes come before the next claim.
            let drained = claimed.len() < free;
            for c in claimed {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    me.deliver(c).await;
                    drop(permit);
                });
            }
            if yielding {
                tokio::time::sleep(YIELD_GAP).await;
            } else if drained {
                tokio::time::sleep(GATHER).await;
            }
        }
    }

    async fn claim(&self, limit: i64) -> Result<Vec<Claimed>, db::DbError> {
        let owner = self.owner.clone();
        let policy = self.settings.policy;
        // Past the timeout, plus room to record: a lease outlives a send.
        let lease = self.settings.timeout * 2 + Duration::from_secs(30);
        db::run(&self.pool, move |conn| {
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
            fstore::claim(conn, &owner, now, until, limit, &policy)
        })
        .await
    }

    /// Send one delivery and record how it went.
    pub async fn deliver(&self, c: Claimed) {
        if let Some(from) = &c.taken_from {
            // Its lease ran out: that process died or hung mid-send, and may
            // have sent it. The receiver dedupes on the webhook-id.
            self.metrics.delivery(c.target_id, "taken_over");
            log::warn!(
                target_id = c.target_id, delivery_id = c.id, order_id = c.order_id.as_str();
                "forward: taking over delivery {} ({}) from {from}, whose lease ran out: it may have been sent already, and is sent again with the same webhook-id",
                c.id, c.webhook_id
            );
        }
        let keys: Vec<Vec<u8>> = c
            .secrets
            .iter()
            .filter_map(|s| match rules::key(s) {
                Ok(k) => Some(k),
                Err(e) => {
                    log::error!(target_id = c.target_id; "forward: target {}: {e}; rotate its secret (haoka-sync targets rotate-secret {})", c.target_id, c.target_id);
                    None
                }
            })
            .collect();
        let started_at = Utc::now();
        let timestamp = started_at.timestamp();
        let started = Instant::now();
        // A body that cannot be built is never sent: the attempt records
        // why, and the delivery is exhausted (kept, visible).
        let sent = match &c.body {
            Ok(body) => Some(
                self.client
                    .post(&c.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &c.webhook_id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header(
                        "webhook-signature",
                        rules::signatures(&keys, &c.webhook_id, timestamp, body.as_bytes()),
                    )
                    .body(body.clone())
                    .send()
                    .await,
            ),
            Err(_) => None,
        };
        let (status, retry_after, sample, error) = match sent {
            None => (None, None, None, c.body.clone().err()),
            Some(Ok(mut resp)) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| rules::retry_after(v, Utc::now()));
                let mut sample = Vec::new();
                while sample.len() < SAMPLE {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => sample.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                sample.truncate(SAMPLE);
                let error = (!status.is_success()).then(|| format!("HTTP {}", status.as_u16()));
                (
                    Some(i32::from(status.as_u16())),
                    retry_after,
                    Some(String::from_utf8_lossy(&sample).into_owned()),
                    error,
                )
            }
            Some(Err(e)) => {
                let why = if e.is_timeout() {
                    format!(
                        "no answer within {} s (FORWARD_TIMEOUT)",
                        self.settings.timeout.as_secs()
                    )
                } else if e.is_connect() {
                    "connection failed".to_owned()
                } else {
                    "request failed".to_owned()
                };
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                (None, None, None, Some(format!("{why}{cause}")))
            }
        };
        let latency = started.elapsed();
        let now = Utc::now();
        let ok = error.is_none();
        let next = (!ok).then(|| {
            if c.body.is_err() {
                return rules::Next::Exhausted;
            }
            after_failure(
                &self.settings.policy,
                (c.attempts + 1).max(1) as u32,
                c.retry_from,
                now,
                retry_after,
                jitter(c.id, c.attempts),
            )
        });
        let outcome = match (ok, next) {
            (true, _) => "delivered",
            (false, Some(rules::Next::Exhausted)) => "exhausted",
            (false, _) => "failed",
        };
        self.metrics.delivery(c.target_id, outcome);
        let result = AttemptResult {
            at: started_at,
            http_status: status,
            latency_ms: i32::try_from(latency.as_millis()).unwrap_or(i32::MAX),
            error: error.clone(),
            response_sample: sample,
            next,
        };
        let owner = self.owner.clone();
        let policy = self.settings.policy;
        let claimed = c.clone();
        let recorded = db::run(&self.pool, move |conn| {
            fstore::record(conn, &claimed, &owner, &result, &policy)
        })
        .await;
        match recorded {
            Ok(change) => {
                if change.lease_lost {
                    self.metrics.delivery(c.target_id, "lease_lost");
                    log::warn!(
                        target_id = c.target_id, delivery_id = c.id, order_id = c.order_id.as_str();
                        "forward: delivery {} ({}) took longer than its lease; another process has it now and may send it again with the same webhook-id",
                        c.id, c.webhook_id
                    );
                }
                if change.now_failing {
                    log::warn!(
                        target_id = c.target_id;
                        "forward: target {} has failed for {} min ({}): marked failing; it is probed with one delivery every {} s until it answers 2xx",
                        c.target_id,
                        self.settings.policy.failing_after.as_secs() / 60,
                        error.as_deref().unwrap_or("-"),
                        self.settings.policy.probe_every.as_secs()
                    );
                }
                if change.recovered {
                    log::info!(
                        target_id = c.target_id;
                        "forward: target {} answers again: its waiting deliveries are due now",
                        c.target_id
                    );
                }
                if let Some(rules::Next::Exhausted) = next {
                    log::warn!(
                        target_id = c.target_id, delivery_id = c.id, order_id = c.order_id.as_str();
                        "forward: delivery {} ({} {}, {}) exhausted after {} attempts ({}); kept: haoka-sync redeliver --id {} sends it again",
                        c.id, c.vendor, c.order_id, c.webhook_id, c.attempts + 1,
                        error.as_deref().unwrap_or("-"), c.id
                    );
                }
            }
            Err(e) => log::warn!(
                delivery_id = c.id;
                "forward: delivery {} was sent ({outcome}) but could not be recorded ({e}); it is sent again after its lease, with the same webhook-id",
                c.id
            ),
        }
    }
}

/// Whether forwarding gives way to callbacks now, from the callback
/// writers' busy time over the last `LOAD_WINDOW` or more; says so in the
/// log (at most once a minute) and in `haoka_sync_forward_yielding`.
struct Pressure {
    load: Arc<WriterLoad>,
    yield_at: u8,
    since: Instant,
    busy: Duration,
    waited: Duration,
    yielding: bool,
    began: Option<Instant>,
    logged: Option<Instant>,
}

impl Pressure {
    fn new(load: Arc<WriterLoad>, yield_at: u8) -> Pressure {
        Pressure {
            busy: load.busy(),
            waited: load.waited(),
            load,
            yield_at,
            since: Instant::now(),
            yielding: false,
            began: None,
            logged: None,
        }
    }

    fn yielding(&mut self, metrics: &Metrics) -> bool {
        let wall = self.since.elapsed();
        if wall < LOAD_WINDOW {
            return self.yielding;
        }
        let busy = self.load.busy();
        let waited = self.load.waited();
        let (busy_in, waited_in) = (
            busy.saturating_sub(self.busy),
            waited.saturating_sub(self.waited),
        );
        log::trace!(
            "forward: callback writers busy {:.0} %, {:.2} callbacks waiting for one on average",
            busy_in.as_secs_f64() * 100.0 / (wall.as_secs_f64() * self.load.writers() as f64),
            waited_in.as_secs_f64() / wall.as_secs_f64()
        );
        self.waited = waited;
        let now = callbacks_first(busy_in, waited_in, wall, self.load.writers(), self.yield_at);
        self.busy = busy;
        self.since = Instant::now();
        if now != self.yielding {
            metrics.forward_yielding(now);
            if now {
                self.began = Some(Instant::now());
                if self
                    .logged
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    self.logged = Some(Instant::now());
                    log::info!(
                        "forward: the callback writers are busy at least {} % of the time (FORWARD_YIELD_AT) and callbacks queue for them: forwarding gives way, one delivery at a time (10 a second), until they ease",
                        self.yield_at
                    );
                }
            } else if let Some(b) = self.began.take() {
                log::debug!(
                    "forward: callbacks eased after {:.1} s: forwarding at full speed again",
                    b.elapsed().as_secs_f64()
                );
            }
            self.yielding = now;
        }
        self.yielding
    }
}

/// A spread in [0, 1) that differs between deliveries and attempts, the
/// same every time for one of them (no randomness needed to decorrelate).
fn jitter(id: i64, attempt: i32) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, attempt).hash(&mut h);
    (h.finish() % 10_000) as f64 / 10_000.0
}
