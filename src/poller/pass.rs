//! One poll pass, the same loop for every vendor: claim due orders within
//! the limits, ask about them a call at a time (a few in flight), record
//! each call and what it brought in one transaction, and stop asking as soon
//! as a pause is decided.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::Connection;

use super::{paused_summary, PassSummary, PollError, Poller, FAILURES_BEFORE_PAUSE};
use crate::db::{self, DbError};
use crate::rules::schedule::china_day;
use crate::secret::Secret;
use crate::store::ingest::{self, InboundRequest, Receipt};
use crate::store::poll::{self as pstore, CallBudget, PassStart, PollResult, Reservation, Settled};
use crate::store::Applied;
use crate::vendors::{Asked, Asker, Failure, FailureKind};

/// How long a pass waits for a slot in a short window (`wait_for_slot`).
const SLOT_WAIT: Duration = Duration::from_secs(3);

/// What one call came to.
enum Called {
    /// The deployment-wide budget had no slot: the orders wait.
    Skipped(usize),
    /// The pass paused before this call was sent: the orders wait.
    LeftByPause(usize),
    /// The lease of an order ran out while the call waited its turn, and
    /// another process claimed it: not asked here.
    LeaseLost(usize),
    Answered {
        asked: usize,
        changed: u32,
        not_found: u32,
    },
    Failed {
        asked: usize,
        failure: Failure,
    },
}

/// Shared by the calls of one pass.
struct Pass<'a> {
    poller: &'a Poller,
    asker: &'a dyn Asker,
    /// Set when the pass decides to pause: no call is sent after it.
    stop: AtomicBool,
    token: tokio::sync::Mutex<Option<Secret>>,
    /// One new login per pass at most.
    relogged: AtomicBool,
}

impl Poller {
    pub(super) async fn pass(&self, asker: &Arc<dyn Asker>) -> Result<PassSummary, PollError> {
        let asker = asker.as_ref();
        let vendor = asker.vendor();
        let limits = asker.limits().clone();
        if asker.pushes_callbacks() {
            self.callback_gaps(vendor).await;
        }
        let work = match self.prepare(vendor, &limits).await? {
            PassStart::Paused(until) => return Ok(paused_summary(vendor, until)),
            PassStart::Work(w) => w,
        };
        let mut summary = work.summary(vendor, limits.per_call > 1);
        summary.skipped_for_limits += work.unclaimed();
        let token = if asker.uses_token() && !work.claimed.is_empty() {
            self.current_token(asker).await?
        } else {
            None
        };
        let pass = Pass {
            poller: self,
            asker,
            stop: AtomicBool::new(false),
            token: tokio::sync::Mutex::new(token),
            relogged: AtomicBool::new(false),
        };
        let mut queue: VecDeque<Vec<String>> = work
            .claimed
            .chunks(limits.per_call.max(1))
            .map(<[String]>::to_vec)
            .collect();
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut consecutive_failures = 0;
        let mut db_error = None;
        loop {
            // After trouble, one call at a time until one succeeds: the call
            // that decides a pause is then the last one sent, not one of
            // several already on their way.
            let width = if consecutive_failures > 0 {
                1
            } else {
                limits.in_flight.max(1)
            };
            while in_flight.len() < width && !pass.stop.load(Ordering::SeqCst) {
                let Some(ids) = queue.pop_front() else { break };
                in_flight.push(pass.call(ids));
            }
            let Some(done) = futures_util::StreamExt::next(&mut in_flight).await else {
                break;
            };
            let failure = match done {
                Err(e) => {
                    db_error.get_or_insert(e);
                    pass.stop.store(true, Ordering::SeqCst);
                    continue;
                }
                Ok(Called::Skipped(n)) => {
                    summary.skipped_for_limits += count(n);
                    continue;
                }
                Ok(Called::LeftByPause(n)) => {
                    summary.left_by_pause += count(n);
                    continue;
                }
                Ok(Called::LeaseLost(n)) => {
                    summary.lease_lost += count(n);
                    continue;
                }
                Ok(Called::Answered {
                    asked,
                    changed,
                    not_found,
                }) => {
                    summary.calls += 1;
                    summary.queried += count(asked);
                    summary.changed += changed;
                    summary.not_found += not_found;
                    consecutive_failures = 0;
                    continue;
                }
                Ok(Called::Failed { asked, failure }) => {
                    summary.calls += 1;
                    if failure.kind != FailureKind::NotFound {
                        summary.failed_calls += 1;
                        summary.last_failure = Some(failure.to_string());
                    }
                    if !matches!(
                        failure.kind,
                        FailureKind::AuthFailed | FailureKind::NeedsFix
                    ) {
                        summary.queried += count(asked);
                    }
                    match failure.kind {
                        FailureKind::NotFound => summary.not_found += count(asked),
                        _ => summary.errors += count(asked),
                    }
                    failure
                }
            };
            consecutive_failures = match failure.kind {
                FailureKind::Trouble => consecutive_failures + 1,
                FailureKind::Blocked => consecutive_failures,
                _ => 0,
            };
            let reason = match failure.kind {
                FailureKind::Blocked => {
                    Some(format!("blocked by the vendor ({})", failure.message))
                }
                FailureKind::AuthFailed => Some(asker.token_help().to_owned()),
                FailureKind::NeedsFix => Some(failure.message.clone()),
                FailureKind::Trouble if consecutive_failures >= FAILURES_BEFORE_PAUSE => Some(
                    format!("{consecutive_failures} consecutive failures, last: {failure}"),
                ),
                _ => None,
            };
            if let Some(reason) = reason {
                if !pass.stop.swap(true, Ordering::SeqCst) {
                    summary.paused_until = Some(self.pause(vendor, limits.cooloff, reason).await?);
                }
            }
        }
        // Orders claimed but never asked (a pause, database trouble) go back.
        let rest: Vec<String> = queue.into_iter().flatten().collect();
        if summary.paused_until.is_some() {
            summary.left_by_pause += count(rest.len());
        } else {
            summary.skipped_for_limits += count(rest.len());
        }
        self.release(vendor, rest).await?;
        match db_error {
            Some(e) => Err(e.into()),
            None => Ok(summary),
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Pass<'_> {
    /// Reserve a call, make it, record it and what it brought. The orders'
    /// leases are released in every case.
    async fn call(&self, ids: Vec<String>) -> Result<Called, DbError> {
        let vendor = self.asker.vendor();
        let mut token = self.token.lock().await.clone();
        if self.asker.uses_token() && token.is_none() {
            self.poller.release(vendor, ids.clone()).await?;
            let failure = Failure::new(
                FailureKind::AuthFailed,
                "auth_failed",
                self.asker.token_help(),
            );
            return Ok(Called::Failed {
                asked: ids.len(),
                failure,
            });
        }
        loop {
            let call_id = match self.reserve(&ids).await? {
                Reservation::Call(id) => id,
                Reservation::BudgetSpent => {
                    self.poller.release(vendor, ids.clone()).await?;
                    return Ok(Called::Skipped(ids.len()));
                }
                Reservation::LeaseLost => {
                    log::warn!(
                        vendor = vendor.as_str(), outcome = "lease_lost", order_ids:% = ids.join(", ");
                        "poll {vendor}: the lease of {} ran out while the call waited its turn (POLL_LEASE is short for this pass); left to the process that claimed it",
                        ids.join(", ")
                    );
                    self.poller.release(vendor, ids.clone()).await?;
                    return Ok(Called::LeaseLost(ids.len()));
                }
            };
            if self.stop.load(Ordering::SeqCst) {
                // Reserved, but the pass paused meanwhile: never sent.
                let pool = &self.poller.pool;
                db::run(pool, move |conn| {
                    pstore::finish_call(conn, call_id, "not_sent", None, Duration::ZERO, None, None)
                })
                .await?;
                self.poller
                    .metrics
                    .vendor_call(vendor, self.asker.api(), "not_sent");
                self.poller.release(vendor, ids.clone()).await?;
                return Ok(Called::LeftByPause(ids.len()));
            }
            let asked_at = Utc::now();
            let started = Instant::now();
            let asked = self.asker.ask(&ids, token.as_ref()).await;
            let took = started.elapsed();
            let auth_failed = matches!(&asked.result, Err(f) if f.kind == FailureKind::AuthFailed);
            if auth_failed
                && self.asker.login().is_some()
                && !self.relogged.swap(true, Ordering::SeqCst)
            {
                // The refused call is recorded; the orders stay ours for
                // the retry with a new token.
                let (outcome, message) = asked
                    .result
                    .as_ref()
                    .err()
                    .map(|f| (f.outcome, f.message.clone()))
                    .unwrap_or(("auth_failed", String::new()));
                let pool = &self.poller.pool;
                db::run(pool, move |conn| {
                    pstore::finish_call(conn, call_id, outcome, None, took, Some(&message), None)
                })
                .await?;
                self.poller
                    .metrics
                    .vendor_call(vendor, self.asker.api(), outcome);
                if let Ok(t) = self.poller.relogin(self.asker, token.as_ref()).await? {
                    *self.token.lock().await = Some(t.clone());
                    token = Some(t);
                    continue;
                }
                self.poller.release(vendor, ids.clone()).await?;
                let failure = Failure::new(
                    FailureKind::AuthFailed,
                    "auth_failed",
                    self.asker.token_help(),
                );
                return Ok(Called::Failed {
                    asked: ids.len(),
                    failure,
                });
            }
            return self.record(call_id, &ids, asked, took, asked_at).await;
        }
    }

    /// A slot in the deployment-wide budget (waiting a little for one in a
    /// short window), while the orders are still ours; the call is counted
    /// against each order's daily budget and the leases renewed.
    async fn reserve(&self, ids: &[String]) -> Result<Reservation, DbError> {
        let limits = self.asker.limits();
        let deadline = Instant::now() + SLOT_WAIT;
        loop {
            let (vendor, api, owner) = (
                self.asker.vendor(),
                self.asker.api(),
                self.poller.owner.clone(),
            );
            let (per_window, window, ids) = (limits.per_window, limits.window, ids.to_vec());
            let lease = self.poller.lease;
            let id = db::run(&self.poller.pool, move |conn| {
                let budget = CallBudget {
                    vendor,
                    api,
                    per_window,
                    window,
                    caller: &owner,
                    lease,
                };
                pstore::reserve_call(conn, &budget, &ids, china_day(Utc::now()))
            })
            .await?;
            if id != Reservation::BudgetSpent || !limits.wait_for_slot || Instant::now() >= deadline
            {
                return Ok(id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The call's row, the observations, the orders not found or backed off,
    /// and (for a vendor that pushes callbacks) its stored unverified
    /// callbacks judged again, all in one transaction: an answer is never
    /// recorded without the call, nor the call without what it brought.
    async fn record(
        &self,
        call_id: i64,
        ids: &[String],
        asked: Asked,
        took: Duration,
        asked_at: chrono::DateTime<Utc>,
    ) -> Result<Called, DbError> {
        let vendor = self.asker.vendor();
        let owner = self.poller.owner.clone();
        let schedule = Arc::clone(&self.poller.schedule);
        let batch = ids.to_vec();
        let (outcome, error) = match &asked.result {
            Ok(_) => ("ok", None),
            Err(f) => (f.outcome, Some(f.message.clone())),
        };
        let http = asked.http_status.map(i32::from);
        let cost = asked.cost;
        // The judge runs here, on the async side: it is pure and cheap.
        let pending: Vec<_> = match &asked.result {
            Ok(answer) if self.asker.pushes_callbacks() => {
                let wanted: Vec<String> = answer.found.iter().map(|o| o.order_id.clone()).collect();
                db::run(&self.poller.pool, move |conn| {
                    let mut all = Vec::new();
                    for id in &wanted {
                        all.push((id.clone(), ingest::pending_unverified(conn, vendor, id)?));
                    }
                    Ok(all)
                })
                .await?
            }
            _ => Vec::new(),
        };
        let replays: Vec<(String, Vec<InboundRequest>)> = pending
            .into_iter()
            .map(|(id, stored)| {
                let judged = stored
                    .iter()
                    .filter_map(|r| {
                        let v = self.asker.judge_stored(
                            r.content_type.as_deref(),
                            r.body(),
                            r.sign.as_deref(),
                        )?;
                        Some(r.replay(|_| v))
                    })
                    .collect();
                (id, judged)
            })
            .collect();
        let result = asked.result.clone();
        let recorded = db::run(&self.poller.pool, move |conn| {
            let now = Utc::now();
            conn.transaction(|conn| {
                pstore::finish_call(conn, call_id, outcome, http, took, error.as_deref(), cost)?;
                let mut report = Report::default();
                // No answer about these orders: they back off.
                let back_off = |conn: &mut diesel::PgConnection, ids: &[String], outcome| {
                    for id in ids {
                        let failed = PollResult::Failed { outcome };
                        pstore::record_poll(
                            conn,
                            vendor,
                            id,
                            &owner,
                            failed,
                            &schedule,
                            now,
                            asked_at,
                            &[],
                        )?;
                    }
                    diesel::QueryResult::Ok(())
                };
                match &result {
                    Ok(answer) => {
                        for obs in &answer.found {
                            let replays = replays
                                .iter()
                                .find(|(id, _)| *id == obs.order_id)
                                .map(|(_, r)| r.as_slice())
                                .unwrap_or_default();
                            let rec = pstore::record_poll(
                                conn,
                                vendor,
                                &obs.order_id,
                                &owner,
                                PollResult::Observed(obs),
                                &schedule,
                                now,
                                asked_at,
                                replays,
                            )?;
                            if matches!(rec.applied, Some(Applied::Event { changed: true, .. })) {
                                report.changed.push(obs.order_id.clone());
                            }
                            report.replayed.push((obs.order_id.clone(), rec.replayed));
                            let label = obs.vendor_status.clone().unwrap_or_default();
                            report.settled.extend(
                                rec.settled
                                    .into_iter()
                                    .map(|s| (obs.order_id.clone(), label.clone(), s)),
                            );
                        }
                        back_off(conn, &answer.missing, "not_found")?;
                    }
                    // The account, not the orders: they go back untouched.
                    Err(f) if matches!(f.kind, FailureKind::AuthFailed | FailureKind::NeedsFix) => {
                        pstore::release(conn, vendor, &batch, &owner)?;
                    }
                    Err(f) => back_off(conn, &batch, f.outcome)?,
                }
                Ok(report)
            })
        })
        .await?;
        self.poller
            .metrics
            .vendor_call(vendor, self.asker.api(), outcome);
        Ok(self.report(ids, asked.result, recorded))
    }

    fn report(
        &self,
        ids: &[String],
        result: Result<crate::vendors::Answer, Failure>,
        r: Report,
    ) -> Called {
        let (vendor, api) = (self.asker.vendor(), self.asker.api());
        for id in &r.changed {
            log::info!(
                vendor = vendor.as_str(), api = api, order_id = id, outcome = "changed";
                "poll {vendor} order={id}: changed"
            );
        }
        for (id, replayed) in &r.replayed {
            log_replays(vendor, id, replayed);
        }
        for (id, label, s) in &r.settled {
            log_settled(vendor, id, label, s);
        }
        match result {
            Ok(answer) => {
                if ids.len() == 1 && !answer.missing.is_empty() {
                    log::info!(
                        vendor = vendor.as_str(), api = api, order_id = ids[0], outcome = "not_found";
                        "poll {vendor} order={}: not found at the vendor", ids[0]
                    );
                }
                Called::Answered {
                    asked: ids.len(),
                    changed: count(r.changed.len()),
                    not_found: count(answer.missing.len()),
                }
            }
            Err(failure) => {
                let what = match ids {
                    [one] => format!("order={one}"),
                    many => format!("batch of {}", many.len()),
                };
                let order_id = match ids {
                    [one] => Some(one.as_str()),
                    _ => None,
                };
                let (outcome, orders) = (failure.outcome, ids.len());
                match failure.kind {
                    FailureKind::NotFound => log::info!(
                        vendor = vendor.as_str(), api = api, order_id = order_id, orders = orders,
                        outcome = outcome;
                        "poll {vendor} {what}: not found at the vendor"
                    ),
                    FailureKind::BadRequest => log::error!(
                        vendor = vendor.as_str(), api = api, order_id = order_id, orders = orders,
                        outcome = outcome, error:% = failure;
                        "poll {vendor} {what}: our request was refused, a bug to report: {failure}"
                    ),
                    _ => log::warn!(
                        vendor = vendor.as_str(), api = api, order_id = order_id, orders = orders,
                        outcome = outcome, error:% = failure;
                        "poll {vendor} {what}: {failure}"
                    ),
                }
                Called::Failed {
                    asked: ids.len(),
                    failure,
                }
            }
        }
    }
}

/// What a recorded answer did, for the log lines after the commit.
#[derive(Default)]
struct Report {
    changed: Vec<String>,
    replayed: Vec<(String, Vec<Receipt>)>,
    settled: Vec<(String, String, Settled)>,
}

fn log_replays(vendor: crate::vendors::Vendor, order_id: &str, replayed: &[Receipt]) {
    if replayed.is_empty() {
        return;
    }
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in replayed {
        *by.entry(r.outcome.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(o, n)| format!("{n} {o}")).collect();
    log::info!(
        vendor = vendor.as_str(), order_id = order_id;
        "poll {vendor} order={order_id}: judged its unverified callbacks again now that its vendor number is known: {}",
        parts.join(", ")
    );
}

fn log_settled(vendor: crate::vendors::Vendor, order_id: &str, label: &str, s: &Settled) {
    let rid = &s.request_id;
    let (reason, result, claimed) = (s.reason.as_str(), s.result.as_str(), &s.claimed_status);
    match (reason, result) {
        ("terminal", "confirmed") => log::info!(
            vendor = vendor.as_str(), order_id = order_id, request_id = rid, reason = reason,
            result = result, claimed = claimed;
            "poll {vendor} order={order_id}: the vendor confirms {} (callback request_id={rid})",
            s.claimed_status
        ),
        ("terminal", _) => log::warn!(
            vendor = vendor.as_str(), order_id = order_id, request_id = rid, reason = reason,
            result = result, claimed = claimed, answer = label;
            "poll {vendor} order={order_id}: a callback (request_id={rid}) claimed {} but the vendor answers {label}: not applied, kept in callback_confirmations (a replayed signature, or the vendor's query lags its callbacks)",
            s.claimed_status
        ),
        (_, "verified") => log::info!(
            vendor = vendor.as_str(), order_id = order_id, request_id = rid, reason = reason,
            result = result;
            "poll {vendor} order={order_id}: the vendor number a callback was signed over (request_id={rid}) is confirmed"
        ),
        _ => log::warn!(
            vendor = vendor.as_str(), order_id = order_id, request_id = rid, reason = reason,
            result = result;
            "poll {vendor} order={order_id}: a callback (request_id={rid}) was signed over a vendor number that is not this order's: rejected"
        ),
    }
}
