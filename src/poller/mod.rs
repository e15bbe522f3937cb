//! The fallback poller: decides *when* to ask a vendor (see `schedule`) and
//! *how much* (deployment-wide budgets kept in PostgreSQL), then asks through
//! the vendor clients and feeds the answers through the same status model as
//! callbacks. A pass is a plain async function; the cron job only triggers it.
//!
//! Must never: query a terminal order, exceed a vendor budget (whatever the
//! number of processes), or query one order from two processes at once.

pub mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::db::{self, DbError, PgPool};
use crate::store::poll::{self as pstore, CallBudget, PollResult};
use crate::store::Applied;
use crate::vendors::haoka172::client::{Haoka172Client, QueryError};
use crate::vendors::Vendor;
use schedule::{china_day, next_china_midnight, Schedule};

/// The budget window: the vendor counts per minute; one extra second covers
/// the time between our reservation and the request reaching it.
pub const RATE_WINDOW: Duration = Duration::from_secs(61);
/// How long a claimed order stays ours (well above one call's timeout).
pub const LEASE: Duration = Duration::from_secs(300);
/// Calls in flight at once within one pass.
const CONCURRENCY: usize = 8;
/// Consecutive transport/HTTP/garbage failures that pause the vendor.
const FAILURES_BEFORE_PAUSE: u32 = 5;

/// What one pass did, for logs and `poll-once`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub vendor: Option<Vendor>,
    pub due: i64,
    pub queried: u32,
    pub changed: u32,
    pub not_found: u32,
    pub errors: u32,
    pub skipped_for_limits: u32,
    pub expired: u32,
    pub paused_until: Option<chrono::DateTime<Utc>>,
}

impl std::fmt::Display for PassSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vendor = self.vendor.map(Vendor::as_str).unwrap_or("-");
        write!(
            f,
            "{vendor}: due {}, queried {}, changed {}, not found {}, errors {}, skipped for limits {}",
            self.due, self.queried, self.changed, self.not_found, self.errors, self.skipped_for_limits
        )?;
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
    per_minute: i64,
    per_day: i32,
    cooloff: Duration,
}

/// One per process. Cheap to share behind an `Arc`.
pub struct Poller {
    pool: PgPool,
    schedule: Arc<Schedule>,
    haoka172: Option<Haoka172Poll>,
    /// Identifies this process in leases and the call log.
    owner: String,
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
                per_minute: i64::from(c.max_calls_per_minute),
                per_day: i32::try_from(c.max_calls_per_order_per_day).unwrap_or(i32::MAX),
                cooloff: c.cooloff,
            }),
            _ => None,
        };
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        Ok(Poller {
            pool,
            schedule,
            haoka172,
            owner: format!(
                "{host}:{}:{:x}",
                std::process::id(),
                Utc::now().timestamp_subsec_nanos()
            ),
            running: Mutex::new(()),
        })
    }

    /// Vendors this process can poll (credentials configured).
    pub fn enabled(&self) -> Vec<Vendor> {
        let mut v = Vec::new();
        if self.haoka172.is_some() {
            v.push(Vendor::Haoka172);
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
                    None => Err(PollError::Disabled(
                        v,
                        "set HAOKA172_USER_ID and HAOKA172_SECRET",
                    )),
                },
                Vendor::Damaijia => Err(PollError::Disabled(
                    v,
                    "大麦家 polling is not available yet",
                )),
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

    async fn haoka172_pass(&self, p: &Haoka172Poll) -> Result<PassSummary, PollError> {
        let vendor = Vendor::Haoka172;
        let now = Utc::now();
        let today = china_day(now);
        let schedule = Arc::clone(&self.schedule);
        let owner = self.owner.clone();
        let (per_minute, per_day) = (p.per_minute, p.per_day);
        // Housekeeping and claiming, in one trip to the blocking pool.
        let prep = db::run(&self.pool, move |conn| {
            let q = DbError::from_query;
            if let Some(reason) = pstore::clear_expired_pause(conn, vendor, now).map_err(q)? {
                log::info!("{vendor} polling resumed (was paused: {reason})");
            }
            if let Some((until, _)) = pstore::active_pause(conn, vendor, now).map_err(q)? {
                return Ok(Prep::Paused(until));
            }
            let expired = pstore::expire_silent(conn, vendor, schedule.horizon_cutoff(now), now)
                .map_err(q)?;
            let due = pstore::count_due(conn, vendor, now).map_err(q)?;
            let deferred = pstore::defer_exhausted(
                conn,
                vendor,
                now,
                today,
                per_day,
                next_china_midnight(now),
            )
            .map_err(q)?;
            let budget =
                (per_minute - pstore::recent_calls(conn, vendor, RATE_WINDOW).map_err(q)?).max(0);
            let claimed = if budget > 0 {
                pstore::claim_due(conn, vendor, now, budget, &owner, LEASE, today, per_day)
                    .map_err(q)?
            } else {
                Vec::new()
            };
            Ok(Prep::Work {
                expired,
                due,
                deferred,
                claimed,
            })
        })
        .await?;
        let (expired, due, deferred, claimed) = match prep {
            Prep::Paused(until) => {
                return Ok(PassSummary {
                    vendor: Some(vendor),
                    paused_until: Some(until),
                    ..Default::default()
                })
            }
            Prep::Work {
                expired,
                due,
                deferred,
                claimed,
            } => (expired, due, deferred, claimed),
        };
        let mut summary = PassSummary {
            vendor: Some(vendor),
            due,
            expired: u32::try_from(expired).unwrap_or(u32::MAX),
            skipped_for_limits: u32::try_from(deferred).unwrap_or(u32::MAX),
            ..Default::default()
        };
        // Due orders the budget did not let us claim wait for a later pass.
        let unclaimed = (due - i64::try_from(deferred).unwrap_or(0) - claimed.len() as i64).max(0);
        let mut state = PassState::default();
        let mut queue = claimed.into_iter();
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            while in_flight.len() < CONCURRENCY && !state.stop {
                let Some(order_id) = queue.next() else { break };
                in_flight.spawn(poll_one(
                    self.pool.clone(),
                    p.client.clone(),
                    Arc::clone(&self.schedule),
                    self.owner.clone(),
                    per_minute,
                    order_id,
                ));
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let outcome = match joined {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    state.db_error.get_or_insert(e);
                    state.stop = true;
                    continue;
                }
                Err(e) => {
                    log::error!("{vendor} poll task failed: {e}");
                    summary.errors += 1;
                    continue;
                }
            };
            match outcome {
                OneOutcome::Skipped => summary.skipped_for_limits += 1,
                OneOutcome::Observed { changed } => {
                    summary.queried += 1;
                    summary.changed += u32::from(changed);
                    state.consecutive_failures = 0;
                }
                OneOutcome::Failed(e) => {
                    summary.queried += 1;
                    match &e {
                        QueryError::NotFound => summary.not_found += 1,
                        _ => summary.errors += 1,
                    }
                    if e.is_vendor_trouble() {
                        state.consecutive_failures += 1;
                    } else if !matches!(e, QueryError::Blocked(_)) {
                        state.consecutive_failures = 0;
                    }
                    let reason = match &e {
                        QueryError::Blocked(m) => Some(format!("blocked by the vendor ({m})")),
                        _ if state.consecutive_failures >= FAILURES_BEFORE_PAUSE => Some(format!(
                            "{} consecutive failures, last: {e}",
                            state.consecutive_failures
                        )),
                        _ => None,
                    };
                    if let (Some(reason), false) = (reason, state.stop) {
                        state.stop = true;
                        let until =
                            Utc::now() + chrono::Duration::from_std(p.cooloff).unwrap_or_default();
                        let r = reason.clone();
                        let newly = db::run(&self.pool, move |conn| {
                            pstore::pause(conn, vendor, until, &r, Utc::now())
                                .map_err(DbError::from_query)
                        })
                        .await?;
                        if newly {
                            log::warn!(
                                "{vendor} polling paused until {} ({reason})",
                                until.format("%Y-%m-%d %H:%M:%S UTC")
                            );
                        }
                        summary.paused_until = Some(until);
                    }
                }
            }
        }
        // Orders claimed but not started (pause or database trouble) go back.
        let rest: Vec<String> = queue.collect();
        if !rest.is_empty() {
            summary.skipped_for_limits += u32::try_from(rest.len()).unwrap_or(u32::MAX);
            let owner = self.owner.clone();
            db::run(&self.pool, move |conn| {
                pstore::release(conn, vendor, &rest, &owner).map_err(DbError::from_query)
            })
            .await?;
        }
        if let Some(e) = state.db_error {
            return Err(e.into());
        }
        summary.skipped_for_limits += u32::try_from(unclaimed).unwrap_or(u32::MAX);
        Ok(summary)
    }
}

enum Prep {
    Paused(chrono::DateTime<Utc>),
    Work {
        expired: usize,
        due: i64,
        deferred: usize,
        claimed: Vec<String>,
    },
}

#[derive(Default)]
struct PassState {
    stop: bool,
    consecutive_failures: u32,
    db_error: Option<DbError>,
}

enum OneOutcome {
    /// The deployment-wide budget was spent before this order's turn.
    Skipped,
    Observed {
        changed: bool,
    },
    Failed(QueryError),
}

/// Reserve a call, make it, record it and its result. The lease is released
/// in every case.
async fn poll_one(
    pool: PgPool,
    client: Haoka172Client,
    schedule: Arc<Schedule>,
    owner: String,
    per_minute: i64,
    order_id: String,
) -> Result<OneOutcome, DbError> {
    let vendor = Vendor::Haoka172;
    let ids = vec![order_id.clone()];
    let owner2 = owner.clone();
    let reserved = db::run(&pool, move |conn| {
        let budget = CallBudget {
            vendor,
            api: "GetOrderInfo",
            per_window: per_minute,
            window: RATE_WINDOW,
            caller: &owner2,
        };
        let id = pstore::reserve_call(conn, &budget, &ids, china_day(Utc::now()))
            .map_err(DbError::from_query)?;
        if id.is_none() {
            pstore::release(conn, vendor, &ids, &owner2).map_err(DbError::from_query)?;
        }
        Ok(id)
    })
    .await?;
    let Some(call_id) = reserved else {
        return Ok(OneOutcome::Skipped);
    };
    let started = Instant::now();
    let result = client.get_order_info(&order_id).await;
    let took = started.elapsed();
    let id = order_id.clone();
    let recorded = db::run(&pool, move |conn| {
        let q = DbError::from_query;
        let now = Utc::now();
        match &result {
            Ok(obs) => {
                pstore::finish_call(conn, call_id, "ok", Some(200), took, None, None).map_err(q)?;
                let applied = pstore::record_poll(
                    conn,
                    vendor,
                    &id,
                    &owner,
                    PollResult::Observed(obs),
                    &schedule,
                    now,
                )
                .map_err(q)?;
                Ok(OneOutcome::Observed {
                    changed: matches!(applied, Some(Applied::Event { changed: true, .. })),
                })
            }
            Err(e) => {
                let http = match e {
                    QueryError::Http(s) => Some(i32::from(*s)),
                    _ => None,
                };
                pstore::finish_call(
                    conn,
                    call_id,
                    e.outcome(),
                    http,
                    took,
                    Some(&e.to_string()),
                    None,
                )
                .map_err(q)?;
                pstore::record_poll(
                    conn,
                    vendor,
                    &id,
                    &owner,
                    PollResult::Failed {
                        outcome: e.outcome(),
                    },
                    &schedule,
                    now,
                )
                .map_err(q)?;
                Ok(OneOutcome::Failed(e.clone()))
            }
        }
    })
    .await?;
    match &recorded {
        OneOutcome::Observed { changed: true } => {
            log::info!("poll {vendor} order={order_id}: changed")
        }
        OneOutcome::Failed(QueryError::NotFound) => {
            log::info!("poll {vendor} order={order_id}: not found at the vendor")
        }
        OneOutcome::Failed(e) => log::warn!("poll {vendor} order={order_id}: {e}"),
        _ => {}
    }
    Ok(recorded)
}
