//! Group commit for inbound callbacks. Handlers submit a request and await
//! its receipt; a few writer threads each take whatever is queued (up to a
//! batch limit), write it in one transaction, and answer every request in the
//! batch only after that transaction commits. Under load many callbacks share
//! one commit (one WAL flush); when idle a batch is a single request.
//!
//! Invariant: a receipt is `Ok` only after its rows are committed. If the
//! database is unreachable every request in the batch gets `Unavailable`.
//! While the pool's health says it is down, a request is answered
//! `Unavailable` at once without being queued, and one already queued or
//! in a writer's hands is answered as soon as the state flips (a writer
//! stuck on a hung connection finishes, or not, on its own: a late commit
//! is then a redelivery's `duplicate`). Every request the store could not
//! take is logged once, here, with its ids (`Ingest::submit`).
//! Runs sync diesel on its own threads, never on an async worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::{apply_batch, insert_inbound, Applied, Item};
use crate::db::models::NewInboundCallback;
use crate::db::{DbError, DbHealth, PgConn, PgPool};
use crate::metrics::Metrics;
use crate::rules::inbound::{Outcome, Verdict};
use crate::rules::schedule::Schedule;
use crate::rules::status::{Effect, Status};
use crate::rules::Vendor;

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
    /// The client address judged against `CALLBACK_ALLOWED_SOURCES`.
    pub source_addr: Option<String>,
}

impl RawRequest {
    /// The exact bytes received (a sample, when too large).
    pub fn bytes(&self) -> &[u8] {
        self.body_raw.as_deref().unwrap_or(self.body.as_bytes())
    }

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

/// What was committed for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub outcome: Outcome,
    /// For applied requests: what the observation did and the order's status
    /// (for a held one: `Unconfirmed` and the status it claimed).
    pub effect: Option<(Effect, Status)>,
    /// Why it did not count, when the store decided that (a signature over a
    /// vendor number that does not corroborate; a failure to store).
    pub error: Option<String>,
    /// The held or unverified request made its order due for a query now.
    pub expedited: bool,
    /// The request's ids, when it had usable ones (for the log).
    pub request_id: Option<String>,
    pub order_id: Option<String>,
}

impl Receipt {
    /// The request's ids and, for a rejection, its reason.
    fn with_ids(&mut self, verdict: &Verdict) {
        let (rid, oid) = verdict.ids();
        self.request_id = rid.map(str::to_owned);
        self.order_id = oid.map(str::to_owned);
        if self.error.is_none() {
            self.error = verdict.error().map(str::to_owned);
        }
    }

    fn of(outcome: Outcome) -> Self {
        Receipt {
            outcome,
            effect: None,
            error: None,
            expedited: false,
            request_id: None,
            order_id: None,
        }
    }
}

/// Where a request's row goes.
#[derive(Debug, Clone)]
pub enum Record {
    /// A request as it arrived: a new `inbound_callbacks` row.
    New(RawRequest),
    /// A stored request judged again: its row keeps the original outcome and
    /// records the replay (`replayed_at`, `replay_outcome`).
    Replay { inbox_id: i64 },
}

#[derive(Debug, Clone)]
pub struct InboundRequest {
    pub record: Record,
    pub verdict: Verdict,
}

struct Job {
    req: InboundRequest,
    reply: oneshot::Sender<Result<Receipt, DbError>>,
    queued: Instant,
}

/// A request that has waited this long for its commit makes the prober
/// look at the database now (a hung connection reports no error).
const SLOW_COMMIT: Duration = Duration::from_millis(300);

/// Handle to the writer threads. Cheap to share; `close` drains and stops.
pub struct Ingest {
    tx: RwLock<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    health: Arc<DbHealth>,
    load: Arc<WriterLoad>,
}

/// How busy the writers are: the time they have spent committing batches,
/// summed over writers, and the time callbacks have waited for a writer to
/// take them, summed over callbacks. Whoever wants to know how loaded the
/// callback path is (the forwarder, which gives way to callbacks) samples
/// it twice.
#[derive(Debug)]
pub struct WriterLoad {
    writers: usize,
    busy_ns: AtomicU64,
    waited_ns: AtomicU64,
}

impl WriterLoad {
    pub fn new(writers: usize) -> WriterLoad {
        WriterLoad {
            writers: writers.max(1),
            busy_ns: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
        }
    }

    /// Time callbacks have spent queued for a writer so far (over a window,
    /// divided by the window: how many wait on average).
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    fn waited_for(&self, job: &Job) {
        let ns = u64::try_from(job.queued.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn writers(&self) -> usize {
        self.writers
    }

    /// Writer time spent on batches so far.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }

    fn add(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Ingest {
    /// Writers whose counts go nowhere (tools that commit callbacks outside
    /// a running service).
    pub fn start(
        pool: PgPool,
        writers: usize,
        max_batch: usize,
        schedule: Arc<Schedule>,
    ) -> Arc<Ingest> {
        Self::start_with_metrics(pool, writers, max_batch, schedule, Arc::default())
    }

    /// Writers that count every batch and every request they store into
    /// `metrics` (`haoka_sync_ingest_batch_size`, `haoka_sync_callbacks_total`).
    pub fn start_with_metrics(
        pool: PgPool,
        writers: usize,
        max_batch: usize,
        schedule: Arc<Schedule>,
        metrics: Arc<Metrics>,
    ) -> Arc<Ingest> {
        let (tx, rx) = mpsc::channel::<Job>(max_batch.max(1) * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let load = Arc::new(WriterLoad::new(writers));
        let threads = (0..writers.max(1))
            .map(|i| {
                let rx = Arc::clone(&rx);
                let load = Arc::clone(&load);
                let pool = pool.clone();
                let schedule = Arc::clone(&schedule);
                let metrics = Arc::clone(&metrics);
                std::thread::Builder::new()
                    .name(format!("ingest-writer-{i}"))
                    .spawn(move || {
                        writer_loop(&rx, &pool, max_batch.max(1), &schedule, &metrics, &load)
                    })
                    .expect("spawn ingest writer thread")
            })
            .collect();
        Arc::new(Ingest {
            tx: RwLock::new(Some(tx)),
            threads: Mutex::new(threads),
            health: Arc::clone(pool.health()),
            load,
        })
    }

    /// How busy the writers are (shared; sample it as often as needed).
    pub fn load(&self) -> Arc<WriterLoad> {
        Arc::clone(&self.load)
    }

    /// Queue a request and wait until its batch is committed (or failed).
    /// A request it could not take is logged here, one line with its ids,
    /// so none is dropped silently.
    pub async fn submit(&self, req: InboundRequest) -> Result<Receipt, DbError> {
        let untaken = Untaken::of(&req);
        let result = self.queue(req).await;
        if let Err(e) = &result {
            untaken.log(e);
        }
        result
    }

    async fn queue(&self, req: InboundRequest) -> Result<Receipt, DbError> {
        if !self.health.is_up() {
            return Err(self.health.unavailable());
        }
        let tx = self
            .tx
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| DbError::Unavailable("shutting down".into()))?;
        let (reply, mut rx) = oneshot::channel();
        let stopped = || DbError::Unavailable("ingest writer stopped".into());
        let committed = async {
            tx.send(Job {
                req,
                reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| DbError::Unavailable("ingest stopped".into()))?;
            match tokio::time::timeout(SLOW_COMMIT, &mut rx).await {
                Ok(r) => r.map_err(|_| stopped())?,
                Err(_) => {
                    self.health.suspect(&format!(
                        "a callback has waited {} ms for its commit",
                        SLOW_COMMIT.as_millis()
                    ));
                    rx.await.map_err(|_| stopped())?
                }
            }
        };
        tokio::select! {
            biased;
            r = committed => r,
            () = self.health.wait_down() => Err(self.health.unavailable()),
        }
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

/// What the log says of a request the store could not take (its body
/// has moved into the queue by then).
struct Untaken {
    vendor: &'static str,
    replay_of: Option<i64>,
    request_id: Option<String>,
    order_id: Option<String>,
    judged: String,
}

impl Untaken {
    fn of(req: &InboundRequest) -> Untaken {
        let (rid, oid) = req.verdict.ids();
        let (vendor, replay_of) = match &req.record {
            Record::New(raw) => (raw.vendor, None),
            Record::Replay { inbox_id } => ("-", Some(*inbox_id)),
        };
        Untaken {
            vendor,
            replay_of,
            request_id: rid.map(str::to_owned),
            order_id: oid.map(str::to_owned),
            judged: match &req.verdict {
                Verdict::Apply { .. } => "signed".to_owned(),
                Verdict::Test { .. } => "test push".to_owned(),
                Verdict::Reject { outcome, error, .. } => format!("{}, {error}", outcome.as_str()),
            },
        }
    }

    /// One line: the ids when they could be read, what the request was
    /// judged, and why it was not stored (`database unavailable: …`).
    fn log(&self, e: &DbError) {
        let rid = self.request_id.as_deref().unwrap_or("-");
        let oid = self.order_id.as_deref().unwrap_or("-");
        let judged = &self.judged;
        match self.replay_of {
            None => log::warn!(
                vendor:% = self.vendor, order_id = self.order_id.as_deref(),
                request_id = self.request_id.as_deref(), outcome = judged.as_str(), error:% = e;
                "callback {} order={oid} request_id={rid}: not stored, answered 503 (judged: {judged}): {e}",
                self.vendor
            ),
            Some(id) => log::warn!(
                inbox_id = id, order_id = self.order_id.as_deref(),
                request_id = self.request_id.as_deref(), outcome = judged.as_str(), error:% = e;
                "replay of inbound_callbacks id={id} order={oid} request_id={rid}: not recorded (judged: {judged}): {e}"
            ),
        }
    }
}

fn writer_loop(
    rx: &Mutex<mpsc::Receiver<Job>>,
    pool: &PgPool,
    max_batch: usize,
    schedule: &Schedule,
    metrics: &Metrics,
    load: &WriterLoad,
) {
    // Each writer keeps its connection between batches: a checkout from the
    // pool costs a round trip (the pool tests every connection it hands out).
    let mut conn = None;
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.blocking_recv() {
                Some(job) => {
                    load.waited_for(&job);
                    batch.push(job);
                }
                None => return,
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        load.waited_for(&job);
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let started = Instant::now();
        conn = write_batch(pool, conn, batch, schedule, metrics);
        load.add(started.elapsed());
    }
}

/// Commit a batch and answer each request; returns the connection to keep
/// for the next batch (none after a failure, so the next one is checked out
/// and tested). A connection kept from an earlier batch may have died since
/// (database restart, idle cut): then the batch is tried once more on a
/// fresh one before anyone is told the database is unavailable.
///
/// Each request that arrived (not one judged again) and was stored is
/// counted once by its outcome, after the commit and before its answer.
fn write_batch(
    pool: &PgPool,
    kept: Option<PgConn>,
    batch: Vec<Job>,
    schedule: &Schedule,
    metrics: &Metrics,
) -> Option<PgConn> {
    let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|j| (j.req, j.reply)).unzip();
    if !pool.health().is_up() {
        // Their handlers have answered already; the kept connection may
        // be the one that hangs.
        for reply in replies {
            let _ = reply.send(Err(pool.health().unavailable()));
        }
        return None;
    }
    metrics.ingest_batch(reqs.len());
    let was_kept = kept.is_some();
    let mut conn = kept;
    let mut results = Vec::new();
    for attempt in 0..2 {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match pool.get() {
                Ok(c) => c,
                Err(e) => {
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
    for (req, result) in reqs.iter().zip(&results) {
        if let (Record::New(raw), Ok(receipt)) = (&req.record, result) {
            metrics.callback_stored(raw.vendor, receipt.outcome);
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
/// the others, and a request that cannot be stored in full is kept raw as
/// `internal_error`: every request leaves its row.
pub(super) fn commit_with_fallback(
    conn: &mut PgConnection,
    reqs: &[InboundRequest],
    schedule: &Schedule,
    will_retry_unavailable: bool,
) -> Vec<Result<Receipt, DbError>> {
    match commit_retrying(conn, reqs, schedule) {
        Ok(receipts) => receipts.into_iter().map(Ok).collect(),
        Err(e) if e.is_unavailable() => {
            // Each request is logged by `submit`; the outage by the prober.
            if will_retry_unavailable {
                log::info!(
                    callbacks = reqs.len(), error:% = e;
                    "ingest: connection lost ({e}); retrying on a new one"
                );
            }
            let msg = e.to_string();
            reqs.iter()
                .map(|_| Err(DbError::Unavailable(msg.clone())))
                .collect()
        }
        Err(e) if reqs.len() == 1 => vec![keep_raw(conn, &reqs[0], &e)],
        Err(e) => {
            log::warn!(
                callbacks = reqs.len(), error:% = e;
                "ingest: batch of {} failed ({e}); retrying one by one",
                reqs.len()
            );
            reqs.iter()
                .map(
                    |r| match commit_retrying(conn, std::slice::from_ref(r), schedule) {
                        Ok(mut v) => Ok(v.remove(0)),
                        Err(e) if e.is_unavailable() => Err(e),
                        Err(e) => keep_raw(conn, r, &e),
                    },
                )
                .collect()
        }
    }
}

/// The last resort for a request whose full commit failed: its raw row alone,
/// outcome `internal_error` (answered 503, so the sender retries).
fn keep_raw(
    conn: &mut PgConnection,
    r: &InboundRequest,
    cause: &DbError,
) -> Result<Receipt, DbError> {
    let error = format!("could not be stored in full: {cause}");
    let now = Utc::now();
    let stored = conn.transaction(|conn| match &r.record {
        Record::New(raw) => {
            let row = NewInboundCallback {
                outcome: Outcome::InternalError.as_str(),
                error: Some(&error),
                event_id: None,
                ..inbound_row(raw, &r.verdict, Outcome::InternalError, None, None, now)
            };
            insert_inbound(conn, std::slice::from_ref(&row)).map(|_| ())
        }
        Record::Replay { inbox_id } => {
            mark_replayed(conn, &[(*inbox_id, Outcome::InternalError, None)], now).map(|_| ())
        }
    });
    match stored {
        Ok(()) => {
            let (request_id, order_id) = r.verdict.ids();
            log::error!(
                order_id = order_id, request_id = request_id, outcome = Outcome::InternalError.as_str(), error:% = cause;
                "ingest: callback order={} request_id={} could not be stored in full ({cause}); kept raw as internal_error",
                order_id.unwrap_or("-"),
                request_id.unwrap_or("-")
            );
            let mut receipt = Receipt {
                error: Some(error),
                ..Receipt::of(Outcome::InternalError)
            };
            receipt.with_ids(&r.verdict);
            Ok(receipt)
        }
        Err(e) => {
            // Not even the raw row: `submit` logs the request with this.
            log::debug!("ingest: the raw row failed too after: {cause}");
            Err(DbError::from(e))
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
            Err(e) => return Err(DbError::from(e)),
        }
    }
}

pub(super) fn is_retryable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        // Another batch committed the same RequidId first, or expedited the
        // same order first: the retry sees what it did.
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => matches!(
            info.constraint_name(),
            Some("order_events_request_id_key" | "callback_confirmations_expedited_key")
        ),
        Error::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}

/// Write a batch inside the caller's transaction: every observation through
/// one `apply_batch` (a fixed number of statements, orders locked in key
/// order), then every raw request in one insert and every replayed one in
/// one update. The same path for live callbacks and for stored ones judged
/// again, so a replay is exactly an arrival.
pub fn commit(
    conn: &mut PgConnection,
    reqs: &[InboundRequest],
    schedule: &Schedule,
) -> QueryResult<Vec<Receipt>> {
    let now = Utc::now();
    let mut applying = Vec::new();
    let mut items = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        if let Verdict::Apply {
            request_id,
            observation,
            signed_over,
        } = &r.verdict
        {
            applying.push(i);
            items.push(Item {
                obs: observation,
                request_id: Some(request_id),
                signed_over: Some(*signed_over),
            });
        }
    }
    let applied = if items.is_empty() {
        Vec::new()
    } else {
        apply_batch(conn, &items, now, schedule)?
    };
    let mut receipts: Vec<Receipt> = reqs
        .iter()
        .map(|r| {
            Receipt::of(match &r.verdict {
                Verdict::Test { .. } => Outcome::Test,
                Verdict::Reject { outcome, .. } => *outcome,
                Verdict::Apply { .. } => Outcome::Duplicate,
            })
        })
        .collect();
    let mut event_ids: Vec<Option<i64>> = vec![None; reqs.len()];
    for (i, a) in applying.into_iter().zip(applied) {
        receipts[i] = match a {
            Applied::Event {
                event_id,
                effect,
                status,
                ..
            } => {
                event_ids[i] = Some(event_id);
                Receipt {
                    effect: Some((effect, status)),
                    ..Receipt::of(Outcome::Applied)
                }
            }
            Applied::Held {
                event_id,
                claimed,
                expedited,
            } => {
                event_ids[i] = Some(event_id);
                Receipt {
                    effect: Some((Effect::Unconfirmed, claimed)),
                    expedited,
                    ..Receipt::of(Outcome::Applied)
                }
            }
            Applied::Duplicate => Receipt::of(Outcome::Duplicate),
            Applied::Unverified { expedited } => Receipt {
                error: Some(UNVERIFIED.to_owned()),
                expedited,
                ..Receipt::of(Outcome::Unverified)
            },
            Applied::Mismatch => Receipt {
                error: Some(MISMATCH.to_owned()),
                ..Receipt::of(Outcome::BadSignature)
            },
        };
    }
    for (r, receipt) in reqs.iter().zip(&mut receipts) {
        receipt.with_ids(&r.verdict);
    }
    let mut rows = Vec::new();
    let mut replayed = Vec::new();
    for ((r, receipt), event_id) in reqs.iter().zip(&receipts).zip(&event_ids) {
        match &r.record {
            Record::New(raw) => rows.push(inbound_row(
                raw,
                &r.verdict,
                receipt.outcome,
                *event_id,
                receipt.error.as_deref(),
                now,
            )),
            Record::Replay { inbox_id } => replayed.push((*inbox_id, receipt.outcome, *event_id)),
        }
    }
    insert_inbound(conn, &rows)?;
    mark_replayed(conn, &replayed, now)?;
    Ok(receipts)
}

/// The inbox error of a request signed over an `OrderNo172` we cannot tie to
/// its order yet.
pub const UNVERIFIED: &str = "bad signature: the sign decrypts to OrderNo172, which is not yet known to be this order's vendor number; kept until GetOrderInfo tells it";
/// The inbox error of a request signed over an `OrderNo172` that is not the
/// order's vendor number.
pub const MISMATCH: &str = "bad signature: the sign decrypts to OrderNo172, but this order's vendor number (from GetOrderInfo or a callback signed over OrderNo) is another";

/// Record the re-judgement of stored requests (one statement). The time and
/// outcome are the latest replay's; the event a replay produced stays linked
/// when a later one produces none (it then finds the request a duplicate).
fn mark_replayed(
    conn: &mut PgConnection,
    replayed: &[(i64, Outcome, Option<i64>)],
    now: chrono::DateTime<Utc>,
) -> QueryResult<usize> {
    if replayed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = replayed.iter().map(|r| r.0).collect();
    let outcomes: Vec<&str> = replayed.iter().map(|r| r.1.as_str()).collect();
    let events: Vec<Option<i64>> = replayed.iter().map(|r| r.2).collect();
    diesel::sql_query(
        "UPDATE inbound_callbacks i SET replayed_at = $1, replay_outcome = u.outcome, \
         replay_event_id = COALESCE(u.event_id, i.replay_event_id) \
         FROM unnest($2::bigint[], $3::text[], $4::bigint[]) AS u(id, outcome, event_id) WHERE i.id = u.id",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(&ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&outcomes)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Nullable<diesel::sql_types::BigInt>>, _>(&events)
    .execute(conn)
}

fn inbound_row<'a>(
    raw: &'a RawRequest,
    verdict: &'a Verdict,
    outcome: Outcome,
    event_id: Option<i64>,
    store_error: Option<&'a str>,
    now: chrono::DateTime<Utc>,
) -> NewInboundCallback<'a> {
    let (request_id, order_id, sign_matched, error) = match verdict {
        Verdict::Apply {
            request_id,
            signed_over,
            observation,
        } => (
            Some(request_id.as_str()),
            Some(observation.order_id.as_str()),
            Some(signed_over.as_str()),
            store_error,
        ),
        Verdict::Test { request_id } => (Some(request_id.as_str()), None, None, None),
        Verdict::Reject {
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
        vendor: raw.vendor,
        received_at: now,
        outcome: outcome.as_str(),
        error,
        request_id,
        order_id,
        event_id,
        sign_matched,
        content_type: raw.content_type.as_deref(),
        remote_addr: raw.remote_addr.as_deref(),
        headers: &raw.headers,
        body: &raw.body,
        body_raw: raw.body_raw.as_deref(),
        body_size: raw.body_size,
        body_truncated: raw.body_truncated,
        source_addr: raw.source_addr.as_deref(),
    }
}

/// A stored request as it arrived, to be judged again.
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredRequest {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub content_type: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    body: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bytea>)]
    body_raw: Option<Vec<u8>>,
    /// The `sign` header it came with.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub sign: Option<String>,
}

impl StoredRequest {
    /// The exact bytes received.
    pub fn body(&self) -> &[u8] {
        self.body_raw.as_deref().unwrap_or(self.body.as_bytes())
    }

    /// The request for the commit path, judged by `judge`.
    pub fn replay(&self, judge: impl FnOnce(&StoredRequest) -> Verdict) -> InboundRequest {
        InboundRequest {
            record: Record::Replay { inbox_id: self.id },
            verdict: judge(self),
        }
    }
}

/// The order's stored requests still `unverified` (signed over an
/// `OrderNo172` that no replay has settled), oldest first, at most 100.
pub fn pending_unverified(
    conn: &mut PgConnection,
    vendor: Vendor,
    order_id: &str,
) -> QueryResult<Vec<StoredRequest>> {
    diesel::sql_query(
        "SELECT id, content_type, body, body_raw, headers ->> 'sign' AS sign FROM inbound_callbacks \
         WHERE order_id = $1 AND vendor = $2 AND outcome = 'unverified' \
           AND COALESCE(replay_outcome, 'unverified') = 'unverified' \
         ORDER BY id LIMIT 100",
    )
    .bind::<diesel::sql_types::Text, _>(order_id)
    .bind::<diesel::sql_types::Text, _>(vendor.as_str())
    .load(conn)
}
