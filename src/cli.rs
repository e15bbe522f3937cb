//! Command line: `serve`, `migrate`, `show`. Exit code 2 for bad usage or
//! bad configuration (one line on stderr), 1 for a failure at run time.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db;
use crate::startup::{shutdown_signal, Application};
use crate::vendors::Vendor;

#[derive(Debug, Parser)]
#[command(
    name = "haoka-sync",
    version,
    about = "Phone-card order status sync: vendor callbacks + overdue polling into PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate, then serve HTTP (callbacks, health, admin API) until SIGTERM/SIGINT.
    Serve,
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Register orders to track (ids as arguments and/or one per line in --file).
    Track {
        /// haoka172 or damaijia
        vendor: Vendor,
        order_ids: Vec<String>,
        /// A file with one order id per line (`-` for stdin).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Run one reconciliation pass now and print a one-line summary per vendor.
    PollOnce {
        /// Only this vendor (default: every vendor with credentials).
        #[arg(long)]
        vendor: Option<Vendor>,
    },
    /// Print an order's current state and its event history.
    Show {
        /// haoka172 or damaijia
        vendor: Vendor,
        order_id: String,
    },
}

pub fn main() -> ExitCode {
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("haoka-sync: configuration error: .env: {e}");
            return ExitCode::from(2);
        }
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("haoka-sync: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("haoka-sync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(&config).await,
            Command::Show { vendor, order_id } => show(&config, vendor, &order_id).await,
            Command::Track {
                vendor,
                order_ids,
                file,
            } => track(&config, vendor, order_ids, file).await,
            Command::PollOnce { vendor } => poll_once(&config, vendor).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(e)) => {
            eprintln!("haoka-sync: {e}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("haoka-sync: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Usage and configuration problems exit 2; failures at run time exit 1.
#[derive(Debug)]
enum CliError {
    Usage(String),
    Failed(Box<dyn std::error::Error>),
}

impl<E: std::error::Error + 'static> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Failed(Box::new(e))
    }
}

fn failed(msg: String) -> CliError {
    CliError::Failed(msg.into())
}

type CliResult = Result<(), CliError>;

async fn prepare(config: &Config) -> CliResult {
    let url = config.database_url.clone();
    let applied = tokio::task::spawn_blocking(move || db::prepare(&url)).await??;
    for m in &applied {
        log::info!("applied migration {m}");
    }
    Ok(())
}

async fn migrate(config: &Config) -> CliResult {
    prepare(config).await?;
    println!(
        "database {} is up to date",
        config.database_url.database_name()
    );
    Ok(())
}

async fn serve(config: Config) -> CliResult {
    prepare(&config).await?;
    if config.haoka172.secret.is_none() {
        log::warn!(
            "HAOKA172_SECRET is not set: 172 callbacks cannot be verified (they are stored and answered 503) and the 172 poller is off"
        );
    }
    if config.damaijia.token.is_none() || config.damaijia.owner_id.is_none() {
        log::info!("DAMAIJIA_TOKEN / DAMAIJIA_OWNER_ID not set: the 大麦家 poller is off");
    }
    if config.admin_token.is_none() {
        log::info!("ADMIN_TOKEN is not set: /api/* answers 403");
    }
    let app = Application::build(&config)?;
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

async fn show(config: &Config, vendor: Vendor, order_id: &str) -> CliResult {
    let pool = db::pool(&config.database_url, 1, config.db_timeout);
    let id = order_id.to_owned();
    let found = db::run(&pool, move |conn| {
        let order = crate::store::find_order(conn, vendor, &id).map_err(db::DbError::from_query)?;
        let history =
            crate::store::order_history(conn, vendor, &id).map_err(db::DbError::from_query)?;
        Ok(order.map(|o| (o, history)))
    })
    .await?;
    let Some((o, history)) = found else {
        return Err(failed(format!("no {vendor} order {order_id}")));
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("{} {}", o.vendor, o.order_id);
    println!("  status:        {} ({})", o.status, opt(&o.vendor_status));
    if o.conflict {
        println!("  CONFLICT:      a different terminal status was reported later (see history)");
    }
    if let Some(u) = &o.unknown_vendor_status {
        println!("  unmapped label: {u}");
    }
    println!("  vendor order:  {}", opt(&o.vendor_order_no));
    println!(
        "  express:       {} {}",
        opt(&o.express_name),
        opt(&o.express_code)
    );
    println!(
        "  phone:         {}",
        o.third_phone
            .as_deref()
            .map(crate::mask::phone)
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  card:          {} activated_at={}",
        opt(&o.card_status),
        o.activated_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  first top-up:  {} {}",
        o.first_charge
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into()),
        opt(&o.first_charge_amount)
    );
    println!(
        "  last heard:    {} via {}",
        o.last_heard_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into()),
        opt(&o.last_source)
    );
    println!("  history ({} events):", history.len());
    for e in history {
        println!(
            "    {}  {:<8} {:<17} {:<14} {:<8} {}",
            e.received_at.format("%Y-%m-%d %H:%M:%S"),
            e.source,
            e.status,
            e.effect,
            if e.applied { "applied" } else { "-" },
            e.vendor_status.unwrap_or_default()
        );
    }
    Ok(())
}

async fn track(
    config: &Config,
    vendor: Vendor,
    mut ids: Vec<String>,
    file: Option<std::path::PathBuf>,
) -> CliResult {
    if let Some(path) = file {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(&path)
                .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?
        };
        ids.extend(text.lines().map(str::to_owned));
    }
    let ids = crate::store::poll::clean_order_ids(ids).map_err(CliError::Usage)?;
    prepare(config).await?;
    let pool = db::pool(&config.database_url, 1, config.db_timeout);
    let schedule = crate::poller::schedule::Schedule::from_config(config);
    let n = ids.len();
    let created = db::run(&pool, move |conn| {
        crate::store::poll::register(conn, vendor, &ids, &schedule, chrono::Utc::now())
            .map_err(db::DbError::from_query)
    })
    .await?;
    println!(
        "{vendor}: {n} order(s): {created} newly tracked, {} already tracked",
        n - created
    );
    Ok(())
}

async fn poll_once(config: &Config, vendor: Option<Vendor>) -> CliResult {
    prepare(config).await?;
    let pool = db::pool(&config.database_url, 4, config.db_timeout);
    let schedule = std::sync::Arc::new(crate::poller::schedule::Schedule::from_config(config));
    let poller = crate::poller::Poller::new(config, pool, schedule).map_err(CliError::Usage)?;
    if vendor.is_none() && poller.enabled().is_empty() {
        return Err(CliError::Usage(
            "no vendor has polling credentials (set HAOKA172_USER_ID and HAOKA172_SECRET, or DAMAIJIA_OWNER_ID and DAMAIJIA_TOKEN)".into(),
        ));
    }
    let results = poller
        .run_pass(vendor)
        .await
        .ok_or_else(|| failed("a pass is already running".into()))?;
    let mut first_err = None;
    for r in results {
        match r {
            Ok(summary) => println!("{summary}"),
            Err(crate::poller::PollError::Disabled(v, why)) => {
                first_err.get_or_insert(CliError::Usage(format!("{v} polling is off: {why}")));
            }
            Err(e) => {
                first_err.get_or_insert(failed(e.to_string()));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
