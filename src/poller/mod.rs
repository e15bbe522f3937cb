//! The fallback poller: decides *when* to ask a vendor (see `schedule`) and
//! *how much* (deployment-wide budgets kept in PostgreSQL), then asks through
//! the vendor clients and feeds the answers through the same status model as
//! callbacks. A pass is a plain async function; the cron job only triggers it.
//!
//! While the pool's health says the database is down, a pass is not
//! started (nothing could be claimed or recorded); the cron tick says so
//! once per outage.
//!
//! Must never: query a terminal order, exceed a vendor budget (whatever the
//! number of processes), or query one order from two processes at once.

mod pass;
mod reschedule;
mod token;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use crate::db::{self, DbError, PgPool};
use crate::metrics::Metrics;
use crate::rules::gaps;
use crate::rules::schedule::Schedule;
use crate::store::gaps::{self as gstore, GapEvent};
use crate::store::poll::{self as pstore, ClaimLimit, PassStart, PassWork};
use crate::vendors::{Asker, Limits, Vendor};

/// How long a claimed order stays ours by default (well above one call's
/// timeout; `POLL_LEASE`).
pub const LEASE: Duration = Duration::from_secs(300);
/// Consecutive transport/HTTP/garbage failures that pause a vendor.
const FAILURES_BEFORE_PAUSE: u32 = 5;

/// Per vendor: how to ask it, or why its polling is off (what to set).
pub type Askers = BTreeMap<Vendor, Result<Arc<dyn Asker>, String>>;

/// What one pass did, for logs and `poll-once`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub vendor: Option<Vendor>,
    pub due: i64,
    /// Orders asked about (in `calls` calls when a call asks about several).
    pub queried: u32,
    pub calls: u32,
    /// Calls that brought no answer at all (not counting "not found").
    pub failed_calls: u32,
    /// The last of those failures, for `poll-once` to say why.
    pub last_failure: Option<String>,
    /// Several orders per call: the summary shows `calls`.
    pub batched: bool,
    pub changed: u32,
    pub not_found: u32,
    pub errors: u32,
    pub skipped_for_limits: u32,
    /// Claimed but left unasked because the pass paused the vendor.
    pub left_by_pause: u32,
    /// Claimed but left unasked because their lease ran out before their
    /// turn came and another process claimed them.
    pub lease_lost: u32,
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
        if self.batched {
            write!(f, ", calls {}", self.calls)?;
        }
        if self.left_by_pause > 0 {
            write!(f, ", left unasked by the pause {}", self.left_by_pause)?;
        }
        if self.lease_lost > 0 {
            write!(
                f,
                ", left to another process when their lease ran out {}",
                self.lease_lost
            )?;
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

/// One per process. Cheap to share behind an `Arc`.
pub struct Poller {
    pool: PgPool,
    schedule: Arc<Schedule>,
    askers: Askers,
    /// Identifies this process in leases and the call log.
    owner: String,
    lease: Duration,
    /// Held for the length of a pass: overlapping ticks never run two.
    running: Mutex<()>,
    /// The outage (by its start) whose skipped ticks were logged.
    skipped_outage: std::sync::Mutex<Option<DateTime<Utc>>>,
    /// Counts every call once `vendor_calls` records how it went.
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("{0} polling is off: {1}")]
    Disabled(Vendor, String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl Poller {
    /// `askers` is built once at startup (`startup::askers`): it is the one
    /// answer to "does this vendor poll", for `serve`, `poll-once` and here.
    pub fn new(pool: PgPool, schedule: Arc<Schedule>, askers: Askers, lease: Duration) -> Poller {
        Poller {
            pool,
            schedule,
            askers,
            owner: crate::owner::worker(),
            lease,
            running: Mutex::new(()),
            skipped_outage: std::sync::Mutex::new(None),
            metrics: Arc::default(),
        }
    }

    /// Count the calls into `metrics` (`haoka_sync_vendor_calls_total`)
    /// rather than into a registry nobody reads.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Poller {
        self.metrics = metrics;
        self
    }

    /// Vendors whose polling is off, and what to set to turn it on.
    pub fn off(&self) -> Vec<(Vendor, &str)> {
        self.askers
            .iter()
            .filter_map(|(v, a)| a.as_ref().err().map(|why| (*v, why.as_str())))
            .collect()
    }

    /// Vendors this process can poll (credentials configured).
    pub fn enabled(&self) -> Vec<Vendor> {
        self.askers
            .iter()
            .filter(|(_, a)| a.is_ok())
            .map(|(v, _)| *v)
            .collect()
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
        let health = self.pool.health();
        let mut out = Vec::new();
        for v in vendors {
            if !health.is_up() {
                // Down before or during the pass: ask no vendor anything
                // whose answer could not be recorded.
                out.push(Err(PollError::Db(health.unavailable())));
                continue;
            }
            out.push(match self.askers.get(&v) {
                Some(Ok(asker)) => self.pass(asker).await,
                Some(Err(why)) => Err(PollError::Disabled(v, why.clone())),
                None => Err(PollError::Disabled(v, "not configured".into())),
            });
        }
        Some(out)
    }

    /// The cron tick: run a pass, log what it did; never fails. While the
    /// database is down the pass is skipped, logged once per outage.
    pub async fn scheduled_tick(&self) {
        let health = self.pool.health();
        if !health.is_up() {
            let since = health.since();
            let mut logged = self
                .skipped_outage
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *logged != Some(since) {
                *logged = Some(since);
                log::warn!(
                    "poll passes skipped: {}; they resume at the first tick after it answers",
                    health.unavailable()
                );
            }
            return;
        }
        match self.run_pass(None).await {
            None => log::info!("poll tick skipped: the previous pass is still running"),
            Some(results) => {
                for r in results {
                    match r {
                        Ok(s) => {
                            let quiet = s.due == 0 && s.expired == 0 && s.paused_until.is_none();
                            let level = if quiet {
                                log::Level::Debug
                            } else {
                                log::Level::Info
                            };
                            let paused_until = s.paused_until.map(|t| t.to_rfc3339());
                            log::log!(
                                level,
                                vendor = s.vendor.map(Vendor::as_str), due = s.due,
                                queried = s.queried, changed = s.changed, not_found = s.not_found,
                                errors = s.errors, skipped_for_limits = s.skipped_for_limits,
                                calls = s.calls, left_by_pause = s.left_by_pause,
                                lease_lost = s.lease_lost, expired = s.expired,
                                paused_until = paused_until.as_deref();
                                "poll pass: {s}"
                            )
                        }
                        Err(e) => {
                            let vendor = match &e {
                                PollError::Disabled(v, _) => Some(v.as_str()),
                                PollError::Db(_) => None,
                            };
                            log::error!(vendor = vendor, error:% = e; "poll pass failed: {e}")
                        }
                    }
                }
            }
        }
    }

    /// The start of every pass (`store::poll::start_pass`), in one trip to
    /// the blocking pool; logs a pause that ended.
    async fn prepare(&self, vendor: Vendor, limits: &Limits) -> Result<PassStart, DbError> {
        let schedule = Arc::clone(&self.schedule);
        let owner = self.owner.clone();
        let lease = self.lease;
        let claim = ClaimLimit {
            per_call: limits.per_call,
            per_pass: limits.per_pass,
            window: (!limits.wait_for_slot).then_some((limits.per_window, limits.window)),
            per_order_per_day: limits.per_order_per_day,
        };
        let start = db::run(&self.pool, move |conn| {
            pstore::start_pass(conn, vendor, Utc::now(), &schedule, &claim, &owner, lease)
        })
        .await?;
        if let PassStart::Work(PassWork {
            resumed: Some(reason),
            ..
        }) = &start
        {
            log::info!(
                vendor = vendor.as_str(), reason = reason.as_str();
                "{vendor} polling resumed (was paused: {reason})"
            );
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
            Err(e) => log::error!(
                vendor = vendor.as_str(), error:% = e;
                "{vendor} callback gap check failed: {e}"
            ),
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
                vendor = vendor.as_str(), paused_until:% = until.to_rfc3339(), reason = reason.as_str();
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
    fn summary(&self, vendor: Vendor, batched: bool) -> PassSummary {
        PassSummary {
            vendor: Some(vendor),
            batched,
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
            vendor = vendor.as_str(), silent_since:% = since.to_rfc3339(),
            expected_per_day = *expected_per_day;
            "no {vendor} callbacks heard since {} (those hours usually bring {expected_per_day}): callbacks are being lost; once they resume, every tracked order not heard from since will be queried",
            t(since)
        ),
        GapEvent::Resumed {
            since,
            resumed_at,
            expected_per_day,
        } => log::warn!(
            vendor = vendor.as_str(), silent_since:% = since.to_rfc3339(),
            resumed_at:% = resumed_at.to_rfc3339(), expected_per_day = *expected_per_day;
            "{vendor} callbacks were silent from {} to {} (those hours usually bring {expected_per_day}): the orders not heard from since will be queried",
            t(since),
            t(resumed_at)
        ),
        GapEvent::Swept {
            since,
            orders,
            closing,
        } => log::info!(
            vendor = vendor.as_str(), silent_since:% = since.to_rfc3339(), orders = *orders,
            recovery_done = *closing;
            "{vendor} callback gap since {}: {orders} tracked orders made due for a query{}",
            t(since),
            if *closing { " (recovery done)" } else { " (still silent)" }
        ),
        GapEvent::SweepFailed { since, error } => log::error!(
            vendor = vendor.as_str(), silent_since:% = since.to_rfc3339(), error = error.as_str();
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
