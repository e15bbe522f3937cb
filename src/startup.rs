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
use crate::poller::Poller;
use crate::store::ingest::Ingest;
use crate::vendors::haoka172::sign::CallbackKey;

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
        let poller = Arc::new(
            Poller::new(config, pool.clone(), Arc::clone(&schedule))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        );
        let keys = [&config.haoka172.secret, &config.haoka172.previous_secret]
            .into_iter()
            .flatten()
            .map(|s| CallbackKey::from_secret(s.expose()))
            .collect();
        let callback_sources = SourcePolicy::from_config(config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            ingest: Arc::clone(&ingest),
            haoka172_keys: keys,
            callback_max_body_bytes: config.callback_max_body_bytes,
            callback_sources,
            admin_token: config.admin_token.clone(),
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
