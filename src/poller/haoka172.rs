//! One 172 pass: one `GetOrderInfo` per due order, a few in flight, each
//! reserved against the deployment-wide per-minute budget before it is sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::Connection;

use super::{paused_summary, Haoka172Poll, PassSummary, PollError, Poller, FAILURES_BEFORE_PAUSE};
use crate::db::{self, DbError, PgPool};
use crate::rules::schedule::{china_day, Schedule};
use crate::store::ingest::{self, InboundRequest, Receipt};
use crate::store::poll::{self as pstore, CallBudget, PassStart, PollResult, Settled};
use crate::store::Applied;
use crate::vendors::haoka172::callback;
use crate::vendors::haoka172::client::{Haoka172Client, QueryError};
use crate::vendors::haoka172::sign::CallbackKey;
use crate::vendors::Vendor;

/// The budget window: the vendor counts per minute; one extra second covers
/// the time between our reservation and the request reaching it.
pub const RATE_WINDOW: Duration = Duration::from_secs(61);
/// Calls in flight at once within one pass.
const CONCURRENCY: usize = 8;
const VENDOR: Vendor = Vendor::Haoka172;

impl Poller {
    pub(super) async fn haoka172_pass(&self, p: &Haoka172Poll) -> Result<PassSummary, PollError> {
        self.callback_gaps(VENDOR).await;
        let per_minute = p.per_minute;
        let prep = self
            .prepare(VENDOR, Some(p.per_day), move |conn| {
                Ok(per_minute - pstore::recent_calls(conn, VENDOR, RATE_WINDOW)?)
            })
            .await?;
        let work = match prep {
            PassStart::Paused(until) => return Ok(paused_summary(VENDOR, until)),
            PassStart::Work(w) => w,
        };
        let mut summary = work.summary(VENDOR);
        let unclaimed = work.unclaimed();
        let mut stop = false;
        let mut consecutive_failures = 0;
        let mut db_error = None;
        let mut queue = work.claimed.into_iter();
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            while in_flight.len() < CONCURRENCY && !stop {
                let Some(order_id) = queue.next() else { break };
                in_flight.spawn(poll_one(
                    self.pool.clone(),
                    p.client.clone(),
                    Arc::clone(&p.keys),
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
                    db_error.get_or_insert(e);
                    stop = true;
                    continue;
                }
                Err(e) => {
                    log::error!("{VENDOR} poll task failed: {e}");
                    summary.errors += 1;
                    continue;
                }
            };
            let e = match outcome {
                OneOutcome::Skipped => {
                    summary.skipped_for_limits += 1;
                    continue;
                }
                OneOutcome::Observed { changed, .. } => {
                    summary.queried += 1;
                    summary.changed += u32::from(changed);
                    consecutive_failures = 0;
                    continue;
                }
                OneOutcome::Failed(e) => e,
            };
            summary.queried += 1;
            match &e {
                QueryError::NotFound => summary.not_found += 1,
                _ => summary.errors += 1,
            }
            if e.is_vendor_trouble() {
                consecutive_failures += 1;
            } else if !matches!(e, QueryError::Blocked(_)) {
                consecutive_failures = 0;
            }
            let reason = match &e {
                QueryError::Blocked(m) => Some(format!("blocked by the vendor ({m})")),
                _ if consecutive_failures >= FAILURES_BEFORE_PAUSE => Some(format!(
                    "{consecutive_failures} consecutive failures, last: {e}"
                )),
                _ => None,
            };
            if let (Some(reason), false) = (reason, stop) {
                stop = true;
                summary.paused_until = Some(self.pause(VENDOR, p.cooloff, reason).await?);
            }
        }
        // Orders claimed but not started (pause or database trouble) go back.
        let rest: Vec<String> = queue.collect();
        summary.skipped_for_limits += u32::try_from(rest.len()).unwrap_or(u32::MAX);
        self.release(VENDOR, rest).await?;
        if let Some(e) = db_error {
            return Err(e.into());
        }
        summary.skipped_for_limits += unclaimed;
        Ok(summary)
    }
}

enum OneOutcome {
    /// The deployment-wide budget was spent before this order's turn.
    Skipped,
    Observed {
        changed: bool,
        replayed: Vec<Receipt>,
        settled: Vec<Settled>,
        label: String,
    },
    Failed(QueryError),
}

/// Reserve a call, make it, record it and its result. The lease is released
/// in every case. After an answer, the order's stored callbacks that were
/// signed over a vendor number we did not hold are judged again, exactly as
/// on arrival, in the same transaction: the answer may have taught the
/// number.
async fn poll_one(
    pool: PgPool,
    client: Haoka172Client,
    keys: Arc<Vec<CallbackKey>>,
    schedule: Arc<Schedule>,
    owner: String,
    per_minute: i64,
    order_id: String,
) -> Result<OneOutcome, DbError> {
    let ids = vec![order_id.clone()];
    let owner2 = owner.clone();
    let reserved = db::run(&pool, move |conn| {
        let budget = CallBudget {
            vendor: VENDOR,
            api: "GetOrderInfo",
            per_window: per_minute,
            window: RATE_WINDOW,
            caller: &owner2,
        };
        let id = pstore::reserve_call(conn, &budget, &ids, china_day(Utc::now()))?;
        if id.is_none() {
            pstore::release(conn, VENDOR, &ids, &owner2)?;
        }
        Ok(id)
    })
    .await?;
    let Some(call_id) = reserved else {
        return Ok(OneOutcome::Skipped);
    };
    let asked_at = Utc::now();
    let started = Instant::now();
    let result = client.get_order_info(&order_id).await;
    let took = started.elapsed();
    let id = order_id.clone();
    let recorded = db::run(&pool, move |conn| {
        let now = Utc::now();
        conn.transaction(|conn| match &result {
            Ok(obs) => {
                pstore::finish_call(conn, call_id, "ok", Some(200), took, None, None)?;
                let replays: Vec<InboundRequest> = ingest::pending_unverified(conn, VENDOR, &id)?
                    .iter()
                    .map(|r| {
                        r.replay(|r| {
                            callback::check(
                                r.content_type.as_deref(),
                                r.body(),
                                r.sign.as_deref(),
                                &keys,
                            )
                        })
                    })
                    .collect();
                let rec = pstore::record_poll(
                    conn,
                    VENDOR,
                    &id,
                    &owner,
                    PollResult::Observed(obs),
                    &schedule,
                    now,
                    asked_at,
                    &replays,
                )?;
                Ok(OneOutcome::Observed {
                    changed: matches!(rec.applied, Some(Applied::Event { changed: true, .. })),
                    replayed: rec.replayed,
                    settled: rec.settled,
                    label: obs.vendor_status.clone().unwrap_or_default(),
                })
            }
            Err(e) => {
                let http = match e {
                    QueryError::Http(s) => Some(i32::from(*s)),
                    _ => None,
                };
                let msg = e.to_string();
                pstore::finish_call(conn, call_id, e.outcome(), http, took, Some(&msg), None)?;
                let failed = PollResult::Failed {
                    outcome: e.outcome(),
                };
                pstore::record_poll(
                    conn,
                    VENDOR,
                    &id,
                    &owner,
                    failed,
                    &schedule,
                    now,
                    asked_at,
                    &[],
                )?;
                Ok(OneOutcome::Failed(e.clone()))
            }
        })
    })
    .await?;
    match &recorded {
        OneOutcome::Observed {
            changed,
            replayed,
            settled,
            label,
        } => {
            if *changed {
                log::info!("poll {VENDOR} order={order_id}: changed");
            }
            log_replays(&order_id, replayed);
            for s in settled {
                log_settled(&order_id, label, s);
            }
        }
        OneOutcome::Failed(QueryError::NotFound) => {
            log::info!("poll {VENDOR} order={order_id}: not found at the vendor")
        }
        OneOutcome::Failed(e) => log::warn!("poll {VENDOR} order={order_id}: {e}"),
        OneOutcome::Skipped => {}
    }
    Ok(recorded)
}

fn log_replays(order_id: &str, replayed: &[Receipt]) {
    if replayed.is_empty() {
        return;
    }
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in replayed {
        *by.entry(r.outcome.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(o, n)| format!("{n} {o}")).collect();
    log::info!(
        "poll {VENDOR} order={order_id}: judged its unverified callbacks again now that its vendor number is known: {}",
        parts.join(", ")
    );
}

fn log_settled(order_id: &str, label: &str, s: &Settled) {
    let rid = &s.request_id;
    match (s.reason.as_str(), s.result.as_str()) {
        ("terminal", "confirmed") => log::info!(
            "poll {VENDOR} order={order_id}: the vendor confirms {} (callback request_id={rid})",
            s.claimed_status
        ),
        ("terminal", _) => log::warn!(
            "poll {VENDOR} order={order_id}: a callback (request_id={rid}) claimed {} but the vendor answers {label}: not applied, kept in callback_confirmations (a replayed signature, or the vendor's query lags its callbacks)",
            s.claimed_status
        ),
        (_, "verified") => log::info!(
            "poll {VENDOR} order={order_id}: the vendor number a callback was signed over (request_id={rid}) is confirmed"
        ),
        _ => log::warn!(
            "poll {VENDOR} order={order_id}: a callback (request_id={rid}) was signed over a vendor number that is not this order's: rejected"
        ),
    }
}
