//! Building and running the service; callable from tests (bind port 0, read
//! `port()`), from `serve`, and later from `demo`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::db::{self, PgPool};
use crate::http::source::SourcePolicy;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::poller::{Askers, Poller};
use crate::store::ingest::Ingest;
use crate::vendors::damaijia::ask::DamaijiaAsker;
use crate::vendors::damaijia::client::DamaijiaClient;
use crate::vendors::haoka172::ask::Haoka172Asker;
use crate::vendors::haoka172::client::Haoka172Client;
use crate::vendors::haoka172::sign::CallbackKey;
use crate::vendors::{Asker, Vendor};

/// The keys 172 callbacks are verified with: the current secret first, the
/// previous one during a rotation.
pub fn callback_keys(config: &Config) -> Vec<CallbackKey> {
    [&config.haoka172.secret, &config.haoka172.previous_secret]
        .into_iter()
        .flatten()
        .map(|s| CallbackKey::from_secret(s.expose()))
        .collect()
}

/// Per vendor: how to ask it, or exactly what to set to turn its polling
/// on. Built once; the one answer to "does this vendor poll" for `serve`'s
/// start-up lines, `poll-once` and the poller. `Err` for a configuration
/// that cannot work (a bad base URL).
pub fn askers(config: &Config) -> Result<Askers, String> {
    let mut out = Askers::new();
    let c = &config.haoka172;
    let haoka172: Result<Arc<dyn Asker>, String> = match (&c.user_id, &c.secret) {
        (Some(user), Some(secret)) => Ok(Arc::new(Haoka172Asker::new(
            Haoka172Client::new(&c.base_url, user, secret.clone(), c.timeout)?,
            callback_keys(config),
            c.max_calls_per_minute,
            c.max_calls_per_order_per_day,
            c.cooloff,
        ))),
        (None, Some(_)) => {
            Err("set HAOKA172_USER_ID (the 172 login; HAOKA172_SECRET is set)".into())
        }
        (Some(_), None) => Err("set HAOKA172_SECRET (HAOKA172_USER_ID is set)".into()),
        (None, None) => Err("set HAOKA172_USER_ID and HAOKA172_SECRET".into()),
    };
    out.insert(Vendor::Haoka172, haoka172);
    let d = &config.damaijia;
    let app = match (&d.app_id, &d.app_secret) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        _ => None,
    };
    let damaijia: Result<Arc<dyn Asker>, String> = match (&d.owner_id, &d.token, &app) {
        (Some(owner), token, app) if token.is_some() || app.is_some() => Ok(Arc::new(DamaijiaAsker::new(
            DamaijiaClient::new(&d.base_url, owner, d.edition.clone(), app.clone(), d.timeout)?,
            token.clone(),
            d.batch_size as usize,
            d.cooloff,
        ))),
        (None, _, _) => Err("set DAMAIJIA_OWNER_ID, and DAMAIJIA_TOKEN (or DAMAIJIA_APP_ID and DAMAIJIA_APP_SECRET)".into()),
        _ => Err(match (&d.app_id, &d.app_secret) {
            (Some(_), None) => "set DAMAIJIA_APP_SECRET (DAMAIJIA_APP_ID is set), or DAMAIJIA_TOKEN",
            (None, Some(_)) => "set DAMAIJIA_APP_ID (DAMAIJIA_APP_SECRET is set), or DAMAIJIA_TOKEN",
            _ => "set DAMAIJIA_TOKEN, or DAMAIJIA_APP_ID and DAMAIJIA_APP_SECRET (DAMAIJIA_OWNER_ID is set)",
        }
        .into()),
    };
    out.insert(Vendor::Damaijia, damaijia);
    Ok(out)
}

/// The poller a command runs on its own (`poll-once`, tests).
pub fn poller(config: &Config, pool: PgPool) -> Result<Poller, String> {
    Ok(Poller::new(
        pool,
        Arc::new(config.schedule()),
        askers(config)?,
        config.poll_lease,
    ))
}

/// Why the service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `HAOKA_SYNC_BIND` names an address this process cannot listen on:
    /// a configuration problem, fixed by another address.
    #[error("cannot listen on {addr} ({why}): set HAOKA_SYNC_BIND to {fix}")]
    Bind {
        addr: SocketAddr,
        why: String,
        fix: &'static str,
    },
    /// A vendor client or the proxy header cannot be built.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BuildError {
    /// From binding `addr`: the kinds a different `HAOKA_SYNC_BIND` fixes
    /// become `Bind`; anything else stays an I/O failure.
    fn bind(addr: SocketAddr, e: std::io::Error) -> BuildError {
        use std::io::ErrorKind;
        let (why, fix) = match e.kind() {
            ErrorKind::AddrInUse => ("address already in use".to_owned(), "a free address"),
            ErrorKind::AddrNotAvailable => (
                "no network interface of this host has that address".to_owned(),
                "an address of this host (0.0.0.0:PORT listens on all of them)",
            ),
            ErrorKind::PermissionDenied if addr.port() < 1024 => (
                "permission denied: ports below 1024 need privileges".to_owned(),
                "a port above 1023",
            ),
            ErrorKind::PermissionDenied => (
                "permission denied".to_owned(),
                "an address this process may listen on",
            ),
            _ => {
                return BuildError::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}"),
                ))
            }
        };
        BuildError::Bind { addr, why, fix }
    }
}

pub struct Application {
    port: u16,
    server: Server,
    pool: PgPool,
    ingest: Arc<Ingest>,
    poller: Arc<Poller>,
    poll_cron: String,
    /// The one prober of the database's health; stops with the app.
    prober: db::Prober,
    metrics: Arc<Metrics>,
    metrics_refresh: std::time::Duration,
    database_url: db::DatabaseUrl,
    retention: crate::rules::retention::Retention,
    forwarder: Arc<crate::forward::Forwarder>,
}

impl Application {
    /// Bind and wire everything. Does not wait for the database (the pool
    /// connects lazily; the prober looks at once), so it starts even while
    /// PostgreSQL is down.
    pub fn build(config: &Config) -> Result<Application, BuildError> {
        let pool = db::pool(&config.database_url, config.db_pool_size, config.db_timeout);
        let prober = db::Prober::start(pool.health())?;
        let schedule = Arc::new(config.schedule());
        let metrics = Arc::new(Metrics::new());
        for v in http::CALLBACK_VENDORS {
            metrics.callback_vendor(v);
        }
        let ingest = Ingest::start_with_metrics(
            pool.clone(),
            config.ingest_writers,
            config.ingest_max_batch,
            Arc::clone(&schedule),
            Arc::clone(&metrics),
        );
        let askers = askers(config).map_err(BuildError::Invalid)?;
        for asker in askers.values().flatten() {
            metrics.vendor_api(asker.vendor(), asker.api());
        }
        let poller = Arc::new(
            Poller::new(
                pool.clone(),
                Arc::clone(&schedule),
                askers,
                config.poll_lease,
            )
            .with_metrics(Arc::clone(&metrics)),
        );
        let keys = callback_keys(config);
        // `Config` keeps the header name as text (checked there), so that
        // it needs no HTTP types.
        let header = config
            .trusted_proxy_header
            .as_deref()
            .map(|h| actix_web::http::header::HeaderName::from_bytes(h.as_bytes()))
            .transpose()
            .map_err(|e| BuildError::Invalid(format!("TRUSTED_PROXY_HEADER: {e}")))?;
        let callback_sources = SourcePolicy::new(
            config.callback_allowed_sources.clone(),
            header,
            config.trusted_proxies.clone(),
        );
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            ingest: Arc::clone(&ingest),
            haoka172_keys: keys,
            callback_max_body_bytes: config.callback_max_body_bytes,
            callback_sources,
            admin_token: config.admin_token.clone(),
            schema_version: db::latest_migration(),
            schedule,
            metrics: Arc::clone(&metrics),
        });
        let listener =
            TcpListener::bind(config.bind).map_err(|e| BuildError::bind(config.bind, e))?;
        let port = listener.local_addr()?.port();
        let server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
                .listen(listener)?
                .disable_signals()
                .shutdown_timeout(30)
                .run();
        let forwarder = Arc::new(
            crate::forward::Forwarder::new(
                pool.clone(),
                crate::forward::Settings {
                    policy: config.forward.policy,
                    timeout: config.forward.timeout,
                    concurrency: config.forward.concurrency,
                    yield_at: config.forward.yield_at,
                },
                Arc::clone(&metrics),
            )
            .giving_way_to(ingest.load()),
        );
        Ok(Application {
            port,
            server,
            pool,
            ingest,
            poller,
            poll_cron: config.poll_cron.clone(),
            prober,
            metrics,
            metrics_refresh: config.metrics_refresh,
            database_url: config.database_url.clone(),
            retention: config.retention,
            forwarder,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stop the server from elsewhere (signals, tests).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn poller(&self) -> Arc<Poller> {
        Arc::clone(&self.poller)
    }

    /// This service's metrics (what `GET /metrics` shows).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serve (and poll on `POLL_CRON`, and refresh the database gauges on
    /// `METRICS_REFRESH`) until stopped; in-flight requests finish, then
    /// queued callbacks are committed before this returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let maintenance = tokio::spawn(maintain(Arc::clone(&self.poller), self.pool.clone()));
        let retention_stop = Arc::new(tokio::sync::Notify::new());
        let retention = tokio::spawn(retain(
            self.database_url.clone(),
            self.retention,
            Arc::clone(&retention_stop),
        ));
        let forwarding = tokio::spawn(Arc::clone(&self.forwarder).run_forever());
        let scheduler = start_scheduler(&self.poll_cron, Arc::clone(&self.poller)).await;
        let gauges = tokio::spawn(http::metrics::refresh_forever(
            self.pool.clone(),
            Arc::clone(&self.metrics),
            http::CALLBACK_VENDORS.to_vec(),
            self.metrics_refresh,
        ));
        let result = self.server.await;
        gauges.abort();
        maintenance.abort();
        // Its work runs on its own connection on a blocking thread: wait
        // for it (a libpq call still in flight when the process exits can
        // crash it), at most 10 s.
        retention_stop.notify_one();
        if tokio::time::timeout(std::time::Duration::from_secs(10), retention)
            .await
            .is_err()
        {
            log::warn!("retention: still working at shutdown after 10 s; exiting anyway");
        }
        forwarding.abort();
        if let Some(mut s) = scheduler {
            if let Err(e) = s.shutdown().await {
                log::warn!("poll scheduler did not stop cleanly: {e}");
            }
        }
        let (ingest, prober) = (self.ingest, self.prober);
        let _ = tokio::task::spawn_blocking(move || {
            ingest.close();
            // Waits for its last probe: no connect in flight at exit.
            drop(prober);
        })
        .await;
        result
    }
}

/// How often `serve` looks whether `status_dwell` is due for a refresh.
const DWELL_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The service's own upkeep beside the passes: first bring the tracked
/// orders' next checks to this process's schedule settings (a walk when
/// they changed, shared with the other processes), retrying while the
/// database is unavailable; then keep `status_dwell` at most a day old
/// (and made with the current overdue times). Dispatches only.
/// How often `serve` looks whether the daily prune is due.
const RETENTION_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Keep the coming months' partitions created and apply `RETENTION` once a
/// day (`store::retention`): at start and then every hour it looks, and the
/// replica that gets the lock and finds the last run older than 23 hours
/// prunes. On its own connection (the lock is the session's).
async fn retain(
    url: db::DatabaseUrl,
    retention: crate::rules::retention::Retention,
    stop: Arc<tokio::sync::Notify>,
) {
    use crate::store::retention::{self as rstore, Prune, Trigger};
    let owner = crate::owner::process();
    loop {
        let (url, owner) = (url.clone(), owner.clone());
        let looked = tokio::task::spawn_blocking(move || -> Result<(i32, Prune), String> {
            let mut conn =
                db::connect(&url, &url, "to apply RETENTION").map_err(|e| e.to_string())?;
            let now = chrono::Utc::now();
            let created = rstore::ensure_ahead(&mut conn, now)
                .map_err(|e| format!("creating the coming months' partitions: {e}"))?;
            let mut progress = |line: String| log::info!("{line}");
            let pruned = rstore::prune(
                &mut conn,
                &retention,
                now,
                false,
                Trigger::Serve,
                &owner,
                true,
                &mut progress,
            )
            .map_err(|e| format!("pruning: {e}"))?;
            Ok((created, pruned))
        })
        .await;
        match looked {
            Ok(Ok((created, pruned))) => {
                if created > 0 {
                    log::info!("retention: created {created} partitions for the coming months");
                }
                match pruned {
                    Prune::Done { removed, run_id } => log::info!(
                        "retention (RETENTION={}): {} (retention_runs.id {run_id})",
                        retention.describe(),
                        rstore::summary(&removed, false)
                    ),
                    Prune::Busy => log::debug!("retention: another process is pruning"),
                    Prune::NotDue { last } => log::debug!(
                        "retention: last pruned {}",
                        crate::rules::schedule::china_time(last)
                    ),
                }
            }
            Ok(Err(e)) => log::warn!(
                "retention: {e}; tried again in {} minutes",
                RETENTION_LOOK_EVERY.as_secs() / 60
            ),
            Err(e) => log::warn!("retention: the task failed: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETENTION_LOOK_EVERY) => {}
            () = stop.notified() => return,
        }
    }
}

async fn maintain(poller: Arc<Poller>, pool: PgPool) {
    let mut pause = std::time::Duration::from_secs(5);
    while let Err(e) = poller.reconcile_schedules(true).await {
        log::warn!(
            "could not check the schedule settings of the tracked orders ({e}); retrying in {}s",
            pause.as_secs()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(300));
    }
    loop {
        refresh_status_dwell(&pool).await;
        tokio::time::sleep(DWELL_LOOK_EVERY).await;
    }
}

/// Refresh `status_dwell` when it is due, one process at a time; says what
/// it did, or why it failed (tried again at the next look).
async fn refresh_status_dwell(pool: &PgPool) {
    use crate::store::dwell::{self as dstore, Refresh};
    let started = std::time::Instant::now();
    match db::run(pool, |conn| dstore::refresh(conn, chrono::Utc::now(), false)).await {
        Ok(Refresh::Done {
            stays, open, since, ..
        }) => log::info!(
            "status_dwell refreshed: {stays} stays begun since {} ({open} still going on), in {:.1}s",
            crate::rules::schedule::china_time(since),
            started.elapsed().as_secs_f64()
        ),
        Ok(Refresh::Fresh) => log::debug!("status_dwell is fresh"),
        Ok(Refresh::Busy) => log::debug!("another process is refreshing status_dwell"),
        Err(e) => log::warn!(
            "status_dwell refresh failed ({e}); tried again in {} minutes",
            DWELL_LOOK_EVERY.as_secs() / 60
        ),
    }
}

/// Run a poll pass on every `cron` tick. The job only dispatches to
/// `Poller::scheduled_tick`, which logs its own failures, so a failing pass
/// never stops the schedule.
async fn start_scheduler(
    cron: &str,
    poller: Arc<Poller>,
) -> Option<tokio_cron_scheduler::JobScheduler> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    if poller.enabled().is_empty() {
        log::info!("poller off: no vendor has polling credentials");
        return None;
    }
    let job = Job::new_async(cron, move |_, _| {
        let poller = Arc::clone(&poller);
        Box::pin(async move { poller.scheduled_tick().await })
    });
    let started = async {
        let sched = JobScheduler::new().await?;
        sched.add(job?).await?;
        sched.start().await?;
        Ok::<_, tokio_cron_scheduler::JobSchedulerError>(sched)
    };
    match started.await {
        Ok(s) => {
            log::info!("poller on: a pass runs on `{cron}`");
            Some(s)
        }
        Err(e) => {
            log::error!("poll scheduler could not start: {e}");
            None
        }
    }
}

/// Resolve on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::BuildError;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_bind_error_names_the_address_and_what_to_set() {
        let cases = [
            ("127.0.0.1:8080", ErrorKind::AddrInUse, "cannot listen on 127.0.0.1:8080 (address already in use): set HAOKA_SYNC_BIND to a free address"),
            ("10.9.9.9:8080", ErrorKind::AddrNotAvailable, "cannot listen on 10.9.9.9:8080 (no network interface of this host has that address): set HAOKA_SYNC_BIND to an address of this host (0.0.0.0:PORT listens on all of them)"),
            ("0.0.0.0:80", ErrorKind::PermissionDenied, "cannot listen on 0.0.0.0:80 (permission denied: ports below 1024 need privileges): set HAOKA_SYNC_BIND to a port above 1023"),
        ];
        for (addr, kind, want) in cases {
            let e = BuildError::bind(addr.parse().unwrap(), Error::from(kind));
            assert!(matches!(e, BuildError::Bind { .. }), "{kind:?}");
            assert_eq!(e.to_string(), want);
        }
        let e = BuildError::bind(
            "127.0.0.1:1".parse().unwrap(),
            Error::from(ErrorKind::OutOfMemory),
        );
        assert!(
            matches!(e, BuildError::Io(_)),
            "not a matter of the address"
        );
        assert!(
            e.to_string().starts_with("cannot listen on 127.0.0.1:1: "),
            "{e}"
        );
    }
}
