//! Whether PostgreSQL answers, as one process sees it, shared by every
//! path that uses the pool: the ingest writers, the poller, the admin API
//! and readiness read it before they wait for a connection, and answer
//! "unavailable" at once while it is down instead of after the pool
//! timeout.
//!
//! Any path that meets a connection error, a pool timeout or a commit that
//! does not come only reports a suspicion (`DbHealth::suspect`); the one
//! `Prober` of the process confirms it on its own connection and flips the
//! state (the rules are `rules::db_health`), so one killed connection or a
//! busy pool is never an outage. It logs each transition once: down with
//! the cause, up with how long it was down. While down it probes every
//! 250 ms, with a short connect timeout and a deadline per probe, so the
//! state is up again within a second of the database's return, and a
//! black-holed address cannot hang it.
//!
//! For whoever reports the state (metrics, readiness): `DbHealth::is_up()`,
//! `DbHealth::since()` (when the current state began), `DbHealth::cause()`
//! (why it is down). Without a running `Prober` (one-shot commands) the
//! state stays up and every call waits as long as it always did.
//!
//! Must never: decide what is committed, block its callers (they read a
//! flag or await a change; probes run on threads of their own), or log a
//! password (causes pass through `DatabaseUrl::redact`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

use super::{connection_reason, DatabaseUrl, DbError};
use crate::rules::db_health::{Probe, Tracker, Transition, DOWN_INTERVAL, PROBE_DEADLINE};

/// Probes still running past their deadline (hung on a black-holed
/// address) before no new one is started; each ends by itself within the
/// connect timeout, or when the hung connection breaks.
const MAX_HUNG_PROBES: usize = 8;
/// libpq's `connect_timeout` for probe connections (it treats anything
/// below 2 s as 2 s).
const PROBE_CONNECT_TIMEOUT_SECS: &str = "2";
/// How long a stopping prober waits for its probes still connecting: a
/// process must not exit while libpq is inside a connect on another thread.
const STOP_WAIT: Duration = Duration::from_secs(3);

pub struct DbHealth {
    /// The state, readable without the lock (every request reads it).
    up: AtomicBool,
    inner: Mutex<Inner>,
    wake: Condvar,
    /// The same state for async waiters (`wait_down`).
    changes: tokio::sync::watch::Sender<bool>,
    /// `database haoka_sync at 127.0.0.1:5432`, for the transition lines.
    label: String,
    url: DatabaseUrl,
}

struct Inner {
    tracker: Tracker,
    since: DateTime<Utc>,
    /// Why a caller asked for a probe now.
    suspected: Option<String>,
    stopped: bool,
}

impl std::fmt::Debug for DbHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbHealth")
            .field("label", &self.label)
            .field("up", &self.is_up())
            .finish()
    }
}

impl DbHealth {
    /// Up, as of now, until a probe says otherwise.
    pub fn new(url: &DatabaseUrl) -> Arc<DbHealth> {
        let (changes, _) = tokio::sync::watch::channel(true);
        Arc::new(DbHealth {
            up: AtomicBool::new(true),
            inner: Mutex::new(Inner {
                tracker: Tracker::new(Instant::now()),
                since: Utc::now(),
                suspected: None,
                stopped: false,
            }),
            wake: Condvar::new(),
            changes,
            label: format!("database {} at {}", url.database_name(), url.server()),
            url: url.clone(),
        })
    }

    /// Whether the database answered the latest probe (or no outage was
    /// confirmed since the process started).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// When the current state (up or down) began.
    pub fn since(&self) -> DateTime<Utc> {
        self.lock().since
    }

    /// Why it is down; none while up.
    pub fn cause(&self) -> Option<String> {
        self.lock().tracker.cause().map(str::to_owned)
    }

    /// The error every path answers while the database is down.
    pub fn unavailable(&self) -> DbError {
        let inner = self.lock();
        DbError::Unavailable(format!(
            "down since {} ({})",
            inner.since.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            inner.tracker.cause().unwrap_or("no answer")
        ))
    }

    /// A caller met something that may be an outage (a connection error,
    /// a pool timeout, a commit that does not come): probe now. Cheap, and
    /// harmless when the database is fine.
    pub fn suspect(&self, why: &str) {
        let mut inner = self.lock();
        if inner.tracker.is_up() && inner.suspected.is_none() {
            log::debug!("{}: probing now: {}", self.label, self.url.redact(why));
            inner.suspected = Some(why.to_owned());
            self.wake.notify_all();
        }
    }

    /// Resolves as soon as the database is down (at once if it is).
    pub async fn wait_down(&self) {
        let mut rx = self.changes.subscribe();
        if rx.wait_for(|up| !*up).await.is_err() {
            // The sender lives as long as `self`: never reached.
            std::future::pending::<()>().await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One probe's result; logs a transition once.
    fn observe(&self, probe: Probe) {
        let mut inner = self.lock();
        let Some(t) = inner.tracker.observe(probe, Instant::now()) else {
            return;
        };
        inner.since = Utc::now();
        inner.suspected = None;
        let up = inner.tracker.is_up();
        self.up.store(up, Ordering::Release);
        self.changes.send_replace(up);
        drop(inner);
        match t {
            Transition::Down { cause } => log::error!(
                "{} unavailable: {}; until it answers, callbacks are answered 503 at once (the sender retries), /readyz and the admin API answer 503 and poll passes are skipped; probing every {} ms",
                self.label,
                self.url.redact(&cause),
                DOWN_INTERVAL.as_millis()
            ),
            Transition::Up { down_for } => log::info!(
                "{} answers again after {:.1} s unavailable: callbacks, the admin API and poll passes resume",
                self.label,
                down_for.as_secs_f64()
            ),
        }
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }
}

/// The background prober of one process; dropping it stops it and waits
/// (a few milliseconds, at most `STOP_WAIT`) for its probes to end.
pub struct Prober {
    health: Arc<DbHealth>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Probe `health`'s database on a thread of its own, at once and then
    /// as `rules::db_health` says.
    pub fn start(health: &Arc<DbHealth>) -> std::io::Result<Prober> {
        let h = Arc::clone(health);
        let url = health
            .url
            .with_default_param("connect_timeout", PROBE_CONNECT_TIMEOUT_SECS);
        let thread = std::thread::Builder::new()
            .name("db-prober".into())
            .spawn(move || probe_loop(&h, &url))?;
        Ok(Prober {
            health: Arc::clone(health),
            thread: Some(thread),
        })
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.health.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn probe_loop(health: &DbHealth, url: &DatabaseUrl) {
    // The probe's own connection, kept while it answers: a liveness probe
    // is then one round trip, not a new backend.
    let mut kept: Option<PgConnection> = None;
    let mut probes = Probes::new();
    let mut last: Option<Instant> = None;
    loop {
        probes.take_late(health, &mut kept);
        {
            let mut inner = health.lock();
            loop {
                if inner.stopped {
                    drop(inner);
                    probes.settle();
                    return;
                }
                let since_last = last.map_or(Duration::MAX, |l| l.elapsed());
                let wait = inner
                    .tracker
                    .next_probe(since_last, inner.suspected.is_some());
                if wait.is_zero() {
                    break;
                }
                inner = health
                    .wake
                    .wait_timeout(inner, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            inner.suspected = None;
        }
        last = Some(Instant::now());
        let probe = probes.run(url, &mut kept, health);
        health.observe(probe);
    }
}

type ProbeResult = (u64, Result<PgConnection, String>);

/// Probes run on threads of their own, each waited for at most
/// `PROBE_DEADLINE`: a connect or a query that hangs is left to finish on
/// its own, and an answer that comes late still counts (a loaded machine
/// is slow, not down).
struct Probes {
    tx: mpsc::Sender<ProbeResult>,
    rx: mpsc::Receiver<ProbeResult>,
    next: u64,
    running: Arc<AtomicUsize>,
}

impl Probes {
    fn new() -> Probes {
        let (tx, rx) = mpsc::channel();
        Probes {
            tx,
            rx,
            next: 0,
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn run(
        &mut self,
        url: &DatabaseUrl,
        kept: &mut Option<PgConnection>,
        health: &DbHealth,
    ) -> Probe {
        if self.running.load(Ordering::Acquire) >= MAX_HUNG_PROBES {
            return Probe::NoAnswer;
        }
        let id = self.next;
        self.next += 1;
        let (tx, conn, url) = (self.tx.clone(), kept.take(), url.clone());
        let running = Arc::clone(&self.running);
        running.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name("db-probe".into())
            .spawn(move || {
                let _ = tx.send((id, probe_once(&url, conn)));
                running.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return Probe::Failed(format!("cannot start a probe thread: {e}"));
        }
        let deadline = Instant::now() + PROBE_DEADLINE;
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((i, Ok(conn))) if i == id => {
                    *kept = Some(conn);
                    return Probe::Answered;
                }
                Ok((i, Err(reason))) if i == id => return Probe::Failed(reason),
                Ok((_, late)) => Self::late(late, kept, health),
                Err(_) => return Probe::NoAnswer,
            }
        }
    }

    /// Wait for the probes still running (bounded: one may hang for good
    /// on a black-holed connection).
    fn settle(&self) {
        let end = Instant::now() + STOP_WAIT;
        while self.running.load(Ordering::Acquire) > 0 && Instant::now() < end {
            let _ = self.rx.recv_timeout(Duration::from_millis(10));
        }
    }

    /// Answers of probes that missed their deadline.
    fn take_late(&self, health: &DbHealth, kept: &mut Option<PgConnection>) {
        while let Ok((_, late)) = self.rx.try_recv() {
            Self::late(late, kept, health);
        }
    }

    /// A late answer means the database answers; a late failure says
    /// nothing newer than what the state already holds.
    fn late(
        result: Result<PgConnection, String>,
        kept: &mut Option<PgConnection>,
        health: &DbHealth,
    ) {
        if let Ok(conn) = result {
            kept.get_or_insert(conn);
            health.observe(Probe::Answered);
        }
    }
}

/// `SELECT 1` on the kept connection, or on a new one when it has none or
/// it broke.
fn probe_once(url: &DatabaseUrl, kept: Option<PgConnection>) -> Result<PgConnection, String> {
    if let Some(mut c) = kept {
        if c.batch_execute("SELECT 1").is_ok() {
            return Ok(c);
        }
    }
    let mut c = PgConnection::establish(url.expose())
        .map_err(|e| url.redact(&connection_reason(&e.to_string())))?;
    c.batch_execute("SELECT 1")
        .map_err(|e| url.redact(&connection_reason(&e.to_string())))?;
    Ok(c)
}
