//! Building and running the service; callable from tests (bind port 0, read
//! `port()`), from `serve`, and later from `demo`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::db::{self, PgPool};
use crate::http::source::SourcePolicy;
use crate::http::{self, AppState};
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

pub struct Application {
    port: u16,
    server: Server,
    pool: PgPool,
    ingest: Arc<Ingest>,
    poller: Arc<Poller>,
    poll_cron: String,
}

impl Application {
    /// Bind and wire everything. Does not touch the database (the pool
    /// connects lazily), so it starts even while PostgreSQL is down.
    pub fn build(config: &Config) -> std::io::Result<Application> {
        let pool = db::pool(&config.database_url, config.db_pool_size, config.db_timeout);
        let schedule = Arc::new(config.schedule());
        let ingest = Ingest::start(
            pool.clone(),
            config.ingest_writers,
            config.ingest_max_batch,
            Arc::clone(&schedule),
        );
        let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let poller = Arc::new(Poller::new(
            pool.clone(),
            Arc::clone(&schedule),
            askers(config).map_err(invalid)?,
            config.poll_lease,
        ));
        let keys = callback_keys(config);
        // `Config` keeps the header name as text (checked there), so that
        // it needs no HTTP types.
        let header = config
            .trusted_proxy_header
            .as_deref()
            .map(|h| actix_web::http::header::HeaderName::from_bytes(h.as_bytes()))
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
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
        });
        let listener = TcpListener::bind(config.bind)?;
        let port = listener.local_addr()?.port();
        let server =
            HttpServer::new(move || App::new().app_data(state.clone()).configure(http::routes))
                .listen(listener)?
                .disable_signals()
                .shutdown_timeout(30)
                .run();
        Ok(Application {
            port,
            server,
            pool,
            ingest,
            poller,
            poll_cron: config.poll_cron.clone(),
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

    /// Serve (and poll on `POLL_CRON`) until stopped; in-flight requests
    /// finish, then queued callbacks are committed before this returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let scheduler = start_scheduler(&self.poll_cron, Arc::clone(&self.poller)).await;
        let result = self.server.await;
        if let Some(mut s) = scheduler {
            if let Err(e) = s.shutdown().await {
                log::warn!("poll scheduler did not stop cleanly: {e}");
            }
        }
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.close()).await;
        result
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
