//! Building and running the service; callable from tests (bind port 0, read
//! `port()`), from `serve`, and later from `demo`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::db::{self, PgPool};
use crate::http::{self, AppState};
use crate::store::ingest::Ingest;
use crate::vendors::haoka172::sign::CallbackKey;

pub struct Application {
    port: u16,
    server: Server,
    pool: PgPool,
    ingest: Arc<Ingest>,
}

impl Application {
    /// Bind and wire everything. Does not touch the database (the pool
    /// connects lazily), so it starts even while PostgreSQL is down.
    pub fn build(config: &Config) -> std::io::Result<Application> {
        let pool = db::pool(&config.database_url, config.db_pool_size, config.db_timeout);
        let ingest = Ingest::start(pool.clone(), config.ingest_writers, config.ingest_max_batch);
        let keys = [&config.haoka172.secret, &config.haoka172.previous_secret]
            .into_iter()
            .flatten()
            .map(|s| CallbackKey::from_secret(s.expose()))
            .collect();
        let state = web::Data::new(AppState {
            pool: pool.clone(),
            ingest: Arc::clone(&ingest),
            haoka172_keys: keys,
            callback_max_body_bytes: config.callback_max_body_bytes,
            admin_token: config.admin_token.clone(),
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

    /// Serve until stopped; in-flight requests finish, then queued callbacks
    /// are committed before this returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || ingest.close()).await;
        result
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
