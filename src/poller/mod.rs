//! The fallback poller: decides *when* to ask a vendor (see `schedule`) and
//! *how much* (deployment-wide budgets kept in PostgreSQL), then asks through
//! the vendor clients and feeds the answers through the same status model as
//! callbacks. A pass is a plain async function; the cron job only triggers it.
//!
//! Must never: query a terminal order, exceed a vendor budget (whatever the
//! number of processes), or query one order from two processes at once.

mod damaijia;
mod haoka172;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::db::{self, DbError, PgPool};
use crate::rules::gaps;
use crate::rules::schedule::Schedule;
use crate::secret::Secret;
use crate::store::gaps::{self as gstore, GapEvent};
use crate::store::poll::{self as pstore, PassStart, PassWork};
use crate::vendors::damaijia::client::DamaijiaClient;
use crate::vendors::haoka172::client::Haoka172Client;
use crate::vendors::haoka172::sign::CallbackKey;
use crate::vendors::Vendor;

/// How long a claimed order stays ours by default (well above one call's
/// timeout; `POLL_LEASE`).
pub const LEASE: Duration = Duration::from_secs(300);
/// Consecutive transport/HTTP/garbage failures that pause a vendor.
const FAILURES_BEFORE_PAUSE: u32 = 5;

/// What one pass did, for logs and `poll-once`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub vendor: Option<Vendor>,
    pub due: i64,
    /// Orders asked about (for 大麦家: order numbers sent, in `calls` calls).
    pub queried: u32,
    pub calls: u32,
    pub changed: u32,
    pub not_found: u32,
    pub errors: u32,
    pub skipped_for_limits: u32,
    pub expired: u32,
    pub paused_until: Option<DateTime<Utc>>,
}

impl std::fmt::Display for PassSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vendor = self.vendor.map(Vendor::as_str).unwrap_or("-");
        write!(
            f,
            "{vendor}: due {}, queried {}, changed {}, not found {}, errors {}, skipped for limits {}",
            self.due, self.queried, self.changed, self.not_found, self.errors, self.skipped_for_limits
        )?;
        if self.vendor == Some(Vendor::Damaijia) {
            write!(f, ", calls {}", self.calls)?;
        }
        if self.expired > 0 {
            write!(
                f,
                ", stopped tracking {} silent past the horizon",
                self.expired
            )?;
        }
        if let Some(t) = self.paused_until {
            write!(f, ", paused until {}", t.format("%Y-%m-%d %H:%M:%S UTC"))?;
        }
        Ok(())
    }
}

struct Haoka172Poll {
    client: Haoka172Client,
    /// Callback keys, to judge stored callbacks again after an answer.
    keys: Arc<Vec<CallbackKey>>,
    per_minute: i64,
    per_day: i32,
    cooloff: Duration,
}

struct DamaijiaPoll {
    client: DamaijiaClient,
    env_token: Option<Secret>,
    batch_size: usize,
    cooloff: Duration,
}

/// One per process. Cheap to share behind an `Arc`.
pub struct Poller {
    pool: PgPool,
    schedule: Arc<Schedule>,
    haoka172: Option<Haoka172Poll>,
    damaijia: Option<DamaijiaPoll>,
    /// Identifies this process in leases and the call log.
    owner: String,
    lease: Duration,
    /// Held for the length of a pass: overlapping ticks never run two.
    running: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("{0} polling is off: {1}")]
    Disabled(Vendor, &'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Poller {
    pub fn new(config: &Config, pool: PgPool, schedule: Arc<Schedule>) -> Result<Poller, String> {
        let c = &config.haoka172;
        let haoka172 = match (&c.user_id, &c.secret) {
            (Some(user), Some(secret)) => Some(Haoka172Poll {
                client: Haoka172Client::new(&c.base_url, user, secret.clone(), c.timeout)?,
                keys: Arc::new(
                    [Some(secret), c.previous_secret.as_ref()]
                        .into_iter()
                        .flatten()
                        .map(|s| CallbackKey::from_secret(s.expose()))
                        .collect(),
                ),
                per_minute: i64::from(c.max_calls_per_minute),
                per_day: i32::try_from(c.max_calls_per_order_per_day).unwrap_or(i32::MAX),
                cooloff: c.cooloff,
            }),
            _ => None,
        };
        let d = &config.damaijia;
        let app = match (&d.app_id, &d.app_secret) {
            (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
            _ => None,
        };
        let damaijia = match &d.owner_id {
            Some(owner) if d.token.is_some() || app.is_some() => Some(DamaijiaPoll {
                client: DamaijiaClient::new(&d.base_url, owner, d.edition.clone(), app, d.timeout)?,
                env_token: d.token.clone(),
                batch_size: d.batch_size as usize,
                cooloff: d.cooloff,
            }),
            _ => None,
        };
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        Ok(Poller {
            pool,
            schedule,
            haoka172,
            damaijia,
            owner: format!(
                "{host}:{}:{:x}",
                std::process::id(),
                Utc::now().timestamp_subsec_nanos()
            ),
            running: Mutex::new(()),
            lease: config.poll_lease,
        })
    }

    /// Vendors this process can poll (credentials configured).
    pub fn enabled(&self) -> Vec<Vendor> {
        let mut v = Vec::new();
        if self.haoka172.is_some() {
            v.push(Vendor::Haoka172);
        }
        if self.damaijia.is_some() {
            v.push(Vendor::Damaijia);
        }
        v
    }

    /// One pass over `vendor` (or every enabled vendor). Returns None when a
    /// pass is already running in this process (the tick is skipped).
    pub async fn run_pass(
        &self,
        vendor: Option<Vendor>,
    ) -> Option<Vec<Result<PassSummary, PollError>>> {
        let _guard = self.running.try_lock().ok()?;
        let vendors = match vendor {
            Some(v) => vec![v],
            None => self.enabled(),
        };
        let mut out = Vec::new();
        for v in vendors {
            out.push(match v {
                Vendor::Haoka172 => match &self.haoka172 {
                    Some(p) => self.haoka172_pass(p).await,
                    None => Err(PollError::Disabled(v, "set HAOKA172_USER_ID and HAOKA172_SECRET")),
                },
                Vendor::Damaijia => match &self.damaijia {
                    Some(p) => self.damaijia_pass(p).await,
                    None => Err(PollError::Disabled(
                        v,
                        "set DAMAIJIA_OWNER_ID and DAMAIJIA_TOKEN (or DAMAIJIA_APP_ID and DAMAIJIA_APP_SECRET)",
                    )),
                },
            });
        }
        Some(out)
    }

    /// The cron tick: run a pass, log what it did; never fails.
    pub async fn scheduled_tick(&self) {
        match self.run_pass(None).await {
            None => log::info!("poll tick skipped: the previous pass is still running"),
            Some(results) => {
                for r in results {
                    match r {
                        Ok(s) if s.due == 0 && s.expired == 0 && s.paused_until.is_none() => {
                            log::debug!("poll pass: {s}")
                        }
                        Ok(s) => log::info!("poll pass: {s}"),
                        Err(e) => log::error!("poll pass failed: {e}"),
                    }
                }
            }
        }
    }

    /// The start of every pass (`store::poll::start_pass`), in one trip to
    /// the blocking pool; logs a pause that ended.
    async fn prepare<F>(
        &self,
        vendor: Vendor,
        per_day: Option<i32>,
        limit: F,
    ) -> Result<PassStart, DbError>
    where
        F: FnOnce(&mut diesel::PgConnection) -> diesel::QueryResult<i64> + Send + 'static,
    {
        let schedule = Arc::clone(&self.schedule);
        let owner = self.owner.clone();
        let lease = self.lease;
        let start = db::run(&self.pool, move |conn| {
            pstore::start_pass(
                conn,
                vendor,
                Utc::now(),
                &schedule,
                per_day,
                &owner,
                lease,
                limit,
            )
        })
        .await?;
        if let PassStart::Work(PassWork {
            resumed: Some(reason),
            ..
        }) = &start
        {
            log::info!("{vendor} polling resumed (was paused: {reason})");
        }
        Ok(start)
    }

    /// Look for a deployment-wide silence of the vendor's callbacks and make
    /// the orders it may have hidden due (`gaps`). Logs what it found; a
    /// failure is logged and the pass goes on without it.
    async fn callback_gaps(&self, vendor: Vendor) {
        let Some(policy) = self.schedule.callback_gap.clone() else {
            return;
        };
        let found = db::run(&self.pool, move |conn| {
            gstore::check(conn, vendor, Utc::now(), &policy)
        })
        .await;
        match found {
            Ok(events) => events.iter().for_each(|e| log_gap(vendor, e)),
            Err(e) => log::error!("{vendor} callback gap check failed: {e}"),
        }
    }

    /// Pause a vendor; log it only when it was not paused already.
    async fn pause(
        &self,
        vendor: Vendor,
        cooloff: Duration,
        reason: String,
    ) -> Result<DateTime<Utc>, DbError> {
        let until = Utc::now() + chrono::Duration::from_std(cooloff).unwrap_or_default();
        let r = reason.clone();
        let newly = db::run(&self.pool, move |conn| {
            pstore::pause(conn, vendor, until, &r, Utc::now())
        })
        .await?;
        if newly {
            log::warn!(
                "{vendor} polling paused until {} ({reason})",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
        Ok(until)
    }

    /// Give leased orders back untouched (budget spent, pause).
    async fn release(&self, vendor: Vendor, ids: Vec<String>) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        let owner = self.owner.clone();
        db::run(&self.pool, move |conn| {
            pstore::release(conn, vendor, &ids, &owner)
        })
        .await
        .map(|_| ())
    }
}

impl PassWork {
    fn summary(&self, vendor: Vendor) -> PassSummary {
        PassSummary {
            vendor: Some(vendor),
            due: self.due,
            expired: u32::try_from(self.expired).unwrap_or(u32::MAX),
            skipped_for_limits: u32::try_from(self.deferred).unwrap_or(u32::MAX),
            ..Default::default()
        }
    }

    /// Due orders the limit did not let us claim (they wait for a later pass).
    fn unclaimed(&self) -> u32 {
        let n = self.due - i64::try_from(self.deferred).unwrap_or(0) - self.claimed.len() as i64;
        u32::try_from(n.max(0)).unwrap_or(u32::MAX)
    }
}

fn log_gap(vendor: Vendor, e: &GapEvent) {
    let t = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    match e {
        GapEvent::Silent {
            since,
            expected_per_day,
        } => log::warn!(
            "no {vendor} callbacks heard since {} (those hours usually bring {expected_per_day}): callbacks are being lost; once they resume, every tracked order not heard from since will be queried",
            t(since)
        ),
        GapEvent::Resumed {
            since,
            resumed_at,
            expected_per_day,
        } => log::warn!(
            "{vendor} callbacks were silent from {} to {} (those hours usually bring {expected_per_day}): the orders not heard from since will be queried",
            t(since),
            t(resumed_at)
        ),
        GapEvent::Swept {
            since,
            orders,
            closing,
        } => log::info!(
            "{vendor} callback gap since {}: {orders} tracked orders made due for a query{}",
            t(since),
            if *closing { " (recovery done)" } else { " (still silent)" }
        ),
        GapEvent::SweepFailed { since, error } => log::error!(
            "{vendor} callback gap since {}: the sweep failed part way ({error}); retried in {} minutes",
            t(since),
            gaps::SWEEP_LEASE.as_secs() / 60
        ),
    }
}

fn paused_summary(vendor: Vendor, until: DateTime<Utc>) -> PassSummary {
    PassSummary {
        vendor: Some(vendor),
        paused_until: Some(until),
        ..Default::default()
    }
}
