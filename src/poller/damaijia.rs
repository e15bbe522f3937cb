//! One 大麦家 pass: due orders in batches of `DAMAIJIA_BATCH_SIZE`, one
//! billed `mpagingOrders` call per batch, under 10 calls a second for the
//! whole deployment. An expired token is replaced by one login for the whole
//! deployment; errors that need a person pause polling with the fix named.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::{paused_summary, DamaijiaPoll, PassSummary, PollError, Poller, FAILURES_BEFORE_PAUSE};
use crate::db::{self, DbError};
use crate::rules::schedule::china_day;
use crate::secret::Secret;
use crate::store::poll::{self as pstore, CallBudget, PassStart, PollResult};
use crate::store::{tokens, Applied};
use crate::vendors::damaijia::client::{Batch, DamaijiaError};
use crate::vendors::Vendor;

const VENDOR: Vendor = Vendor::Damaijia;
/// The vendor allows about 10 requests a second; stay under it.
const CALLS_PER_SECOND: i64 = 8;
/// Most calls (batches) one pass makes: calls are billed.
const MAX_CALLS_PER_PASS: i64 = 50;
/// How long one login may hold the deployment-wide login lease.
const LOGIN_LEASE: Duration = Duration::from_secs(30);

const NO_CREDENTIALS: &str = "token rejected (认证失败): set DAMAIJIA_TOKEN to a fresh token, or set DAMAIJIA_APP_ID and DAMAIJIA_APP_SECRET so the service can log in";

impl Poller {
    pub(super) async fn damaijia_pass(&self, p: &DamaijiaPoll) -> Result<PassSummary, PollError> {
        let limit = MAX_CALLS_PER_PASS * p.batch_size as i64;
        let prep = self.prepare(VENDOR, None, move |_| Ok(limit)).await?;
        let work = match prep {
            PassStart::Paused(until) => return Ok(paused_summary(VENDOR, until)),
            PassStart::Work(w) => w,
        };
        let mut summary = work.summary(VENDOR);
        summary.skipped_for_limits += work.unclaimed();
        let batches: Vec<Vec<String>> = work
            .claimed
            .chunks(p.batch_size.max(1))
            .map(<[String]>::to_vec)
            .collect();
        let mut token = self.damaijia_token(p).await?;
        let mut relogged = false;
        let mut consecutive_failures = 0;
        let mut batches = batches.into_iter();
        while let Some(batch) = batches.next() {
            let mut result = self.damaijia_call(p, token.as_ref(), &batch).await?;
            if matches!(result, Some(Err(DamaijiaError::AuthFailed)))
                && p.client.can_login()
                && !relogged
            {
                relogged = true;
                match self.relogin(p, token.as_ref()).await? {
                    Ok(t) => {
                        token = Some(t);
                        result = self.damaijia_call(p, token.as_ref(), &batch).await?;
                    }
                    Err(e) => {
                        log::error!("{VENDOR} login failed: {e}");
                        result = Some(Err(DamaijiaError::AuthFailed));
                    }
                }
            }
            let Some(result) = result else {
                // The per-second budget stayed spent: try again next pass.
                summary.skipped_for_limits += u32::try_from(batch.len()).unwrap_or(u32::MAX);
                self.release(VENDOR, batch).await?;
                continue;
            };
            summary.calls += 1;
            let pause_reason = match result {
                Ok(b) => {
                    consecutive_failures = 0;
                    summary.queried += u32::try_from(batch.len()).unwrap_or(u32::MAX);
                    summary.not_found += u32::try_from(b.missing.len()).unwrap_or(u32::MAX);
                    summary.changed += self.record_batch(b).await?;
                    None
                }
                Err(DamaijiaError::AuthFailed) => {
                    self.release(VENDOR, batch).await?;
                    Some(if p.client.can_login() {
                        "token rejected (认证失败) even after a new login: check DAMAIJIA_APP_ID / DAMAIJIA_APP_SECRET".to_owned()
                    } else {
                        NO_CREDENTIALS.to_owned()
                    })
                }
                Err(DamaijiaError::NeedsFix { status, fix }) => {
                    self.release(VENDOR, batch).await?;
                    Some(format!("status {status}: {fix}"))
                }
                Err(e) => {
                    summary.queried += u32::try_from(batch.len()).unwrap_or(u32::MAX);
                    if e == DamaijiaError::NotFound {
                        summary.not_found += u32::try_from(batch.len()).unwrap_or(u32::MAX);
                    } else {
                        summary.errors += u32::try_from(batch.len()).unwrap_or(u32::MAX);
                    }
                    if let DamaijiaError::BadRequest { .. } = &e {
                        log::error!("{VENDOR}: our request was refused, a bug to report: {e}");
                    } else if e != DamaijiaError::NotFound {
                        log::warn!("{VENDOR} batch of {} failed: {e}", batch.len());
                    }
                    consecutive_failures = if e.is_vendor_trouble() {
                        consecutive_failures + 1
                    } else {
                        0
                    };
                    self.backoff(batch, e.outcome()).await?;
                    (consecutive_failures >= FAILURES_BEFORE_PAUSE)
                        .then(|| format!("{consecutive_failures} consecutive failures, last: {e}"))
                }
            };
            if let Some(reason) = pause_reason {
                summary.paused_until = Some(self.pause(VENDOR, p.cooloff, reason).await?);
                let rest: Vec<String> = batches.by_ref().flatten().collect();
                summary.skipped_for_limits += u32::try_from(rest.len()).unwrap_or(u32::MAX);
                self.release(VENDOR, rest).await?;
                break;
            }
        }
        Ok(summary)
    }

    /// The token to use: the one the deployment last logged in for, else the
    /// configured one; with neither, log in.
    async fn damaijia_token(&self, p: &DamaijiaPoll) -> Result<Option<Secret>, PollError> {
        let stored = db::run(&self.pool, |conn| tokens::stored(conn, VENDOR)).await?;
        match stored.or_else(|| p.env_token.clone()) {
            Some(t) => Ok(Some(t)),
            None => Ok(self.relogin(p, None).await?.ok()),
        }
    }

    /// Reserve a call within the per-second budget (waiting up to ~3 s for a
    /// slot), make it, record the call. None when no slot came free.
    async fn damaijia_call(
        &self,
        p: &DamaijiaPoll,
        token: Option<&Secret>,
        batch: &[String],
    ) -> Result<Option<Result<Batch, DamaijiaError>>, PollError> {
        let Some(token) = token else {
            return Ok(Some(Err(DamaijiaError::AuthFailed)));
        };
        let mut call_id = None;
        for _ in 0..30 {
            let ids = batch.to_vec();
            let owner = self.owner.clone();
            call_id = db::run(&self.pool, move |conn| {
                let budget = CallBudget {
                    vendor: VENDOR,
                    api: "mpagingOrders",
                    per_window: CALLS_PER_SECOND,
                    window: Duration::from_secs(1),
                    caller: &owner,
                };
                pstore::reserve_call(conn, &budget, &ids, china_day(Utc::now()))
            })
            .await?;
            if call_id.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(call_id) = call_id else {
            return Ok(None);
        };
        let started = Instant::now();
        let result = p.client.orders(token, batch).await;
        let took = started.elapsed();
        let (outcome, http, error, cost) = match &result {
            Ok(b) => ("ok", Some(200), None, b.cost),
            Err(e) => (
                e.outcome(),
                match e {
                    DamaijiaError::Http(s) => Some(i32::from(*s)),
                    _ => None,
                },
                Some(e.to_string()),
                None,
            ),
        };
        db::run(&self.pool, move |conn| {
            pstore::finish_call(conn, call_id, outcome, http, took, error.as_deref(), cost)
        })
        .await?;
        Ok(Some(result))
    }

    /// Apply a batch answer: found orders through the status model, missing
    /// ones as not found. Returns how many orders changed.
    async fn record_batch(&self, b: Batch) -> Result<u32, DbError> {
        let schedule = std::sync::Arc::clone(&self.schedule);
        let owner = self.owner.clone();
        db::run(&self.pool, move |conn| {
            let now = Utc::now();
            let mut changed = 0;
            for obs in &b.found {
                let applied = pstore::record_poll(
                    conn,
                    VENDOR,
                    &obs.order_id,
                    &owner,
                    PollResult::Observed(obs),
                    &schedule,
                    now,
                    now,
                    &[],
                )?;
                changed += u32::from(matches!(
                    applied.applied,
                    Some(Applied::Event { changed: true, .. })
                ));
            }
            for sn in &b.missing {
                let failed = PollResult::Failed {
                    outcome: "not_found",
                };
                pstore::record_poll(conn, VENDOR, sn, &owner, failed, &schedule, now, now, &[])?;
            }
            Ok(changed)
        })
        .await
    }

    /// Record a failed batch on each of its orders (they back off).
    async fn backoff(&self, batch: Vec<String>, outcome: &'static str) -> Result<(), DbError> {
        let schedule = std::sync::Arc::clone(&self.schedule);
        let owner = self.owner.clone();
        db::run(&self.pool, move |conn| {
            let now = Utc::now();
            for sn in &batch {
                pstore::record_poll(
                    conn,
                    VENDOR,
                    sn,
                    &owner,
                    PollResult::Failed { outcome },
                    &schedule,
                    now,
                    now,
                    &[],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Get a token that replaces `failed`: log in ourselves if we win the
    /// deployment-wide login lease, otherwise wait for whoever holds it. A
    /// login that someone else finished meanwhile is reused, never repeated.
    async fn relogin(
        &self,
        p: &DamaijiaPoll,
        failed: Option<&Secret>,
    ) -> Result<Result<Secret, DamaijiaError>, DbError> {
        let is_new = |t: &Option<Secret>| t.as_ref().filter(|t| Some(*t) != failed).cloned();
        for _ in 0..80 {
            let owner = self.owner.clone();
            let (won, stored) = db::run(&self.pool, move |conn| {
                let won = tokens::acquire_login(conn, VENDOR, &owner, LOGIN_LEASE)?;
                Ok((won, tokens::stored(conn, VENDOR)?))
            })
            .await?;
            if let Some(t) = is_new(&stored) {
                if won {
                    let owner = self.owner.clone();
                    db::run(&self.pool, move |conn| {
                        tokens::release_login(conn, VENDOR, &owner)
                    })
                    .await?;
                }
                return Ok(Ok(t));
            }
            if won {
                let login = p.client.login().await;
                let owner = self.owner.clone();
                let token = login.clone().ok();
                db::run(&self.pool, move |conn| match &token {
                    Some(t) => tokens::store(conn, VENDOR, &owner, t),
                    None => tokens::release_login(conn, VENDOR, &owner),
                })
                .await?;
                if login.is_ok() {
                    log::info!("{VENDOR}: logged in for a new token");
                }
                return Ok(login);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(Err(DamaijiaError::AuthFailed))
    }
}
