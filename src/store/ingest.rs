//! Group commit for inbound callbacks. Handlers submit a request and await
//! its receipt; a few writer threads each take whatever is queued (up to a
//! batch limit), write it in one transaction, and answer every request in the
//! batch only after that transaction commits. Under load many callbacks share
//! one commit (one WAL flush); when idle a batch is a single request.
//!
//! Invariant: a receipt is `Ok` only after its rows are committed. If the
//! database is unreachable every request in the batch gets `Unavailable`.
//! Runs sync diesel on its own threads, never on an async worker.

use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use chrono::Utc;
use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::{apply_batch, insert_inbound, Applied, Item};
use crate::db::models::NewInboundCallback;
use crate::db::{DbError, PgConn, PgPool};
use crate::poller::schedule::Schedule;
use crate::status::{Effect, Observation, Status};

/// The raw request, as it will be kept in `inbound_callbacks`.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub vendor: &'static str,
    pub content_type: Option<String>,
    pub remote_addr: Option<String>,
    pub headers: serde_json::Value,
    /// The body as text (lossy when it was not clean UTF-8).
    pub body: String,
    /// The exact bytes, only when `body` could not hold them.
    pub body_raw: Option<Vec<u8>>,
    pub body_size: i32,
    pub body_truncated: bool,
}

impl RawRequest {
    /// Keep `bytes` as text when that is lossless, else as text plus bytes.
    pub fn body_fields(bytes: &[u8]) -> (String, Option<Vec<u8>>) {
        match std::str::from_utf8(bytes) {
            Ok(s) if !s.contains('\0') => (s.to_owned(), None),
            _ => (
                String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}"),
                Some(bytes.to_vec()),
            ),
        }
    }
}

/// How a request was judged before storage.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Verified: apply the observation, deduplicated on `request_id`.
    Apply {
        request_id: String,
        sign_matched: Option<&'static str>,
        observation: Box<Observation>,
    },
    /// The back office's test push: record, change nothing.
    Test { request_id: String },
    /// Rejected: record (quarantine) only.
    Reject {
        outcome: Outcome,
        error: String,
        request_id: Option<String>,
        order_id: Option<String>,
    },
}

/// The `inbound_callbacks.outcome` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Test,
    BadSignature,
    Malformed,
    TooLarge,
    NotConfigured,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Test => "test",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::NotConfigured => "not_configured",
        }
    }

    /// Acknowledged to the sender as received.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Duplicate | Outcome::Test)
    }
}

/// What was committed for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub outcome: Outcome,
    /// For applied requests: what the observation did and the order's status.
    pub effect: Option<(Effect, Status)>,
}

pub struct InboundRequest {
    pub raw: RawRequest,
    pub disposition: Disposition,
}

struct Job {
    req: InboundRequest,
    reply: oneshot::Sender<Result<Receipt, DbError>>,
}

/// Handle to the writer threads. Cheap to share; `close` drains and stops.
pub struct Ingest {
    tx: RwLock<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Ingest {
    pub fn start(
        pool: PgPool,
        writers: usize,
        max_batch: usize,
        schedule: Arc<Schedule>,
    ) -> Arc<Ingest> {
        let (tx, rx) = mpsc::channel::<Job>(max_batch.max(1) * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..writers.max(1))
            .map(|i| {
                let rx = Arc::clone(&rx);
                let pool = pool.clone();
                let schedule = Arc::clone(&schedule);
                std::thread::Builder::new()
                    .name(format!("ingest-writer-{i}"))
                    .spawn(move || writer_loop(&rx, &pool, max_batch.max(1), &schedule))
                    .expect("spawn ingest writer thread")
            })
            .collect();
        Arc::new(Ingest {
            tx: RwLock::new(Some(tx)),
            threads: Mutex::new(threads),
        })
    }

    /// Queue a request and wait until its batch is committed (or failed).
    pub async fn submit(&self, req: InboundRequest) -> Result<Receipt, DbError> {
        let tx = self
            .tx
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| DbError::Unavailable("shutting down".into()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(Job { req, reply })
            .await
            .map_err(|_| DbError::Unavailable("ingest stopped".into()))?;
        rx.await
            .map_err(|_| DbError::Unavailable("ingest writer stopped".into()))?
    }

    /// Stop accepting, let the writers finish what is queued, join them.
    pub fn close(&self) {
        self.tx.write().unwrap_or_else(|e| e.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn writer_loop(
    rx: &Mutex<mpsc::Receiver<Job>>,
    pool: &PgPool,
    max_batch: usize,
    schedule: &Schedule,
) {
    // Each writer keeps its connection between batches: a checkout from the
    // pool costs a round trip (the pool tests every connection it hands out).
    let mut conn = None;
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.blocking_recv() {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        conn = write_batch(pool, conn, batch, schedule);
    }
}

/// Commit a batch and answer each request; returns the connection to keep
/// for the next batch (none after a failure, so the next one is checked out
/// and tested). A connection kept from an earlier batch may have died since
/// (database restart, idle cut): then the batch is tried once more on a
/// fresh one before anyone is told the database is unavailable.
fn write_batch(
    pool: &PgPool,
    kept: Option<PgConn>,
    batch: Vec<Job>,
    schedule: &Schedule,
) -> Option<PgConn> {
    let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.req, j.reply)).unzip();
    let was_kept = kept.is_some();
    let mut conn = kept;
    let mut results = Vec::new();
    for attempt in 0..2 {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match pool.get() {
                Ok(c) => c,
                Err(e) => {
                    let e = DbError::from(e);
                    log::error!("ingest: {} callback(s) not stored: {e}", reqs.len());
                    results = reqs
                        .iter()
                        .map(|_| Err(DbError::Unavailable(e.to_string())))
                        .collect();
                    break;
                }
            },
        };
        results = commit_with_fallback(&mut c, &reqs, schedule, attempt == 0 && was_kept);
        if results.iter().all(Result::is_ok) {
            conn = Some(c);
            break;
        }
        // Only when nothing was stored: the whole batch failed on the
        // connection.
        let retry = attempt == 0
            && was_kept
            && results
                .iter()
                .all(|r| matches!(r, Err(e) if e.is_unavailable()));
        if !retry {
            break;
        }
    }
    for (reply, result) in replies.into_iter().zip(results) {
        // The handler may have gone away (client disconnected); the rows are
        // committed either way.
        let _ = reply.send(result);
    }
    conn
}

/// One transaction for the batch; if it fails for a reason other than the
/// connection, each request is retried alone so one bad request cannot sink
/// the others.
fn commit_with_fallback(
    conn: &mut PgConnection,
    reqs: &[InboundRequest],
    schedule: &Schedule,
    will_retry_unavailable: bool,
) -> Vec<Result<Receipt, DbError>> {
    match commit_retrying(conn, reqs, schedule) {
        Ok(receipts) => receipts.into_iter().map(Ok).collect(),
        Err(e) if e.is_unavailable() => {
            if will_retry_unavailable {
                log::info!("ingest: connection lost ({e}); retrying on a new one");
            } else {
                log::error!("ingest: {} callback(s) not stored: {e}", reqs.len());
            }
            let msg = e.to_string();
            reqs.iter()
                .map(|_| Err(DbError::Unavailable(msg.clone())))
                .collect()
        }
        Err(e) if reqs.len() == 1 => {
            log::error!("ingest: callback not stored: {e}");
            vec![Err(e)]
        }
        Err(e) => {
            log::warn!(
                "ingest: batch of {} failed ({e}); retrying one by one",
                reqs.len()
            );
            reqs.iter()
                .map(
                    |r| match commit_retrying(conn, std::slice::from_ref(r), schedule) {
                        Ok(mut v) => Ok(v.remove(0)),
                        Err(e) => {
                            log::error!("ingest: callback not stored: {e}");
                            Err(e)
                        }
                    },
                )
                .collect()
        }
    }
}

fn commit_retrying(
    conn: &mut PgConnection,
    reqs: &[InboundRequest],
    schedule: &Schedule,
) -> Result<Vec<Receipt>, DbError> {
    let mut attempt = 0;
    loop {
        match conn.transaction(|conn| commit(conn, reqs, schedule)) {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 3 && is_retryable(&e) => attempt += 1,
            Err(e) => return Err(DbError::from_query(e)),
        }
    }
}

fn is_retryable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        // Another batch committed the same RequidId first: the retry sees it
        // as a duplicate.
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            info.constraint_name() == Some("order_events_request_id_key")
        }
        Error::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}

/// Write a batch: every observation through one `apply_batch` (a fixed
/// number of statements, orders locked in key order), then every raw request
/// in one insert.
fn commit(
    conn: &mut PgConnection,
    reqs: &[InboundRequest],
    schedule: &Schedule,
) -> QueryResult<Vec<Receipt>> {
    let now = Utc::now();
    let mut applying = Vec::new();
    let mut items = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        if let Disposition::Apply {
            request_id,
            observation,
            ..
        } = &r.disposition
        {
            applying.push(i);
            items.push(Item {
                obs: observation,
                request_id: Some(request_id),
            });
        }
    }
    let applied = apply_batch(conn, &items, now, schedule)?;
    let mut receipts: Vec<Receipt> = reqs
        .iter()
        .map(|r| Receipt {
            outcome: match &r.disposition {
                Disposition::Test { .. } => Outcome::Test,
                Disposition::Reject { outcome, .. } => *outcome,
                Disposition::Apply { .. } => Outcome::Duplicate,
            },
            effect: None,
        })
        .collect();
    let mut event_ids: Vec<Option<i64>> = vec![None; reqs.len()];
    for (i, a) in applying.into_iter().zip(applied) {
        if let Applied::Event {
            event_id,
            effect,
            status,
            ..
        } = a
        {
            event_ids[i] = Some(event_id);
            receipts[i] = Receipt {
                outcome: Outcome::Applied,
                effect: Some((effect, status)),
            };
        }
    }
    let rows: Vec<NewInboundCallback<'_>> = reqs
        .iter()
        .zip(&receipts)
        .zip(&event_ids)
        .map(|((r, receipt), event_id)| inbound_row(r, receipt.outcome, *event_id, now))
        .collect();
    insert_inbound(conn, &rows)?;
    Ok(receipts)
}

fn inbound_row<'a>(
    r: &'a InboundRequest,
    outcome: Outcome,
    event_id: Option<i64>,
    now: chrono::DateTime<Utc>,
) -> NewInboundCallback<'a> {
    let (request_id, order_id, sign_matched, error) = match &r.disposition {
        Disposition::Apply {
            request_id,
            sign_matched,
            observation,
        } => (
            Some(request_id.as_str()),
            Some(observation.order_id.as_str()),
            *sign_matched,
            None,
        ),
        Disposition::Test { request_id } => (Some(request_id.as_str()), None, None, None),
        Disposition::Reject {
            error,
            request_id,
            order_id,
            ..
        } => (
            request_id.as_deref(),
            order_id.as_deref(),
            None,
            Some(error.as_str()),
        ),
    };
    NewInboundCallback {
        vendor: r.raw.vendor,
        received_at: now,
        outcome: outcome.as_str(),
        error,
        request_id,
        order_id,
        event_id,
        sign_matched,
        content_type: r.raw.content_type.as_deref(),
        remote_addr: r.raw.remote_addr.as_deref(),
        headers: &r.raw.headers,
        body: &r.raw.body,
        body_raw: r.raw.body_raw.as_deref(),
        body_size: r.raw.body_size,
        body_truncated: r.raw.body_truncated,
    }
}
