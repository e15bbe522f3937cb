//! `haoka-sync serve`: migrate, then serve HTTP and run the poll schedule
//! until SIGINT/SIGTERM; say at start what is on and off.

use super::{prepare, CliError, CliResult};
use crate::config::Config;
use crate::startup::{shutdown_signal, Application, BuildError};

pub(super) async fn run(config: Config) -> CliResult {
    wait_for_database(&config).await?;
    if config.haoka172.secret.is_none() {
        log::warn!(
            var = "HAOKA172_SECRET";
            "HAOKA172_SECRET is not set: 172 callbacks cannot be verified (they are stored and answered 503) and the 172 poller is off"
        );
    }
    match (config.haoka172.confirm_terminal, config.haoka172.can_poll()) {
        (true, true) => log::info!(
            "a 172 callback that would make its order terminal is held until GetOrderInfo confirms it (HAOKA172_CONFIRM_TERMINAL=off applies it at once)"
        ),
        (true, false) => log::warn!(
            var = "HAOKA172_USER_ID";
            "HAOKA172_USER_ID is not set, so nothing can confirm a callback's terminal status: such callbacks apply at once, and a replayed signature can make an order terminal; callbacks signed over an OrderNo172 we cannot corroborate stay unverified"
        ),
        (false, _) => log::warn!(
            var = "HAOKA172_CONFIRM_TERMINAL";
            "HAOKA172_CONFIRM_TERMINAL=off: a callback's terminal status applies at once; the vendor's signature covers only the order number, so a replayed signature can make an order terminal"
        ),
    }
    if config.admin_token.is_none() {
        log::info!(var = "ADMIN_TOKEN"; "ADMIN_TOKEN is not set: /api/* answers 403");
    }
    log_callback_sources(&config);
    let app = Application::build(&config).map_err(|e| match e {
        // Another address fixes it: a configuration problem (exit 2).
        BuildError::Bind { .. } => CliError::Usage(e.to_string()),
        e => CliError::from(e),
    })?;
    for (vendor, why) in app.poller().off() {
        log::info!(vendor = vendor.as_str(); "the {vendor} poller is off: {why}");
    }
    log::info!(
        "haoka-sync listening on {} (database {}); callback URL path /callbacks/haoka172",
        config.bind.ip().to_string() + ":" + &app.port().to_string(),
        config.database_url.database_name()
    );
    let handle = app.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        log::info!("shutdown requested: finishing in-flight requests");
        handle.stop(true).await;
    });
    app.run_until_stopped().await?;
    log::info!("stopped");
    Ok(())
}

/// The sender's address is the only check a forger cannot pass by knowing
/// an order number, so an operator should see at start whether it is on.
fn log_callback_sources(config: &Config) {
    let Some(nets) = &config.callback_allowed_sources else {
        log::info!(
            var = "CALLBACK_ALLOWED_SOURCES";
            "CALLBACK_ALLOWED_SOURCES is not set: callbacks are accepted from any address; setting it to the vendor's addresses is the strongest defence against forged callbacks (the vendor's signature covers only the order number)"
        );
        return;
    };
    let judged = match &config.trusted_proxy_header {
        Some(h) => format!(
            "the address in {h} is judged when the peer is one of the {} TRUSTED_PROXIES ranges, else the peer",
            config.trusted_proxies.len()
        ),
        None => "the TCP peer address is judged (no TRUSTED_PROXY_HEADER)".to_owned(),
    };
    log::info!(
        "callbacks accepted only from the {} address ranges in CALLBACK_ALLOWED_SOURCES; {judged}",
        nets.len()
    );
}

/// Migrate, waiting for PostgreSQL while it is not reachable yet (a service
/// manager may start us first), up to `DB_WAIT_SECS`; every retry says what
/// it waits for and how to change that.
async fn wait_for_database(config: &Config) -> CliResult {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        match prepare(&config.database_url).await {
            Err(super::CliError::Failed(e)) if is_unavailable(&*e) => {
                // libpq's messages span lines; a log line must not.
                let e = e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let waited = started.elapsed();
                if waited + pause > config.db_wait {
                    return Err(super::failed(format!(
                        "{e}; gave up after waiting {}s (DB_WAIT_SECS={})",
                        waited.as_secs(),
                        config.db_wait.as_secs()
                    )));
                }
                log::warn!(
                    var = "DB_WAIT_SECS", retry_in_secs = pause.as_secs();
                    "{e}; retrying in {}s (serve waits up to DB_WAIT_SECS={}s for PostgreSQL)",
                    pause.as_secs(),
                    config.db_wait.as_secs()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<crate::db::DbError>()
        .is_some_and(crate::db::DbError::is_unavailable)
}
