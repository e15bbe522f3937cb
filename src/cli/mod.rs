//! The command line, one file per command, each a small function over the
//! library (as crates.io does for its admin commands). Exit code 2 for bad
//! usage or bad configuration (one line on stderr), 1 for a failure at run
//! time (docs/contract.md#exit-codes).

mod demo;
mod migrate;
mod poll_once;
mod serve;
mod show;
mod simulate;
mod track;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::db;
use crate::rules::Vendor;

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
    /// Run the vendor simulator (fake 172号卡 and 大麦家) until Ctrl-C.
    Simulate(simulate::SimulateArgs),
    /// Run the service against the simulator on this machine and watch it
    /// converge (no vendor credentials needed).
    Demo(demo::DemoArgs),
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
    let cli = Cli::parse();
    // The demo prints its own progress; the service's per-callback lines
    // would drown it.
    let default_log = match cli.command {
        Command::Demo(_) | Command::Simulate(_) => "warn",
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
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
            Command::Serve => serve::run(config).await,
            Command::Migrate => migrate::run(&config).await,
            Command::Show { vendor, order_id } => show::run(&config, vendor, &order_id).await,
            Command::Track {
                vendor,
                order_ids,
                file,
            } => track::run(&config, vendor, order_ids, file).await,
            Command::PollOnce { vendor } => poll_once::run(&config, vendor).await,
            Command::Simulate(args) => simulate::run(&config, args).await,
            Command::Demo(args) => demo::run(&config, args).await,
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
pub(crate) enum CliError {
    Usage(String),
    Failed(Box<dyn std::error::Error>),
}

impl<E: std::error::Error + 'static> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Failed(Box::new(e))
    }
}

pub(crate) fn failed(msg: String) -> CliError {
    CliError::Failed(msg.into())
}

pub(crate) type CliResult = Result<(), CliError>;

pub(crate) async fn prepare(config: &Config) -> CliResult {
    let url = config.database_url.clone();
    let applied = tokio::task::spawn_blocking(move || db::prepare(&url)).await??;
    for m in &applied {
        log::info!("applied migration {m}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sign_over_takes_the_values_readme_documents() {
        for v in ["order-no", "order-no-172", "order-no172"] {
            let parsed = Cli::try_parse_from(["haoka-sync", "simulate", "--sign-over", v]);
            assert!(parsed.is_ok(), "{v}: {parsed:?}");
        }
        let help = Cli::command()
            .find_subcommand_mut("simulate")
            .map(|c| c.render_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("order-no, order-no-172"), "{help}");
    }
}
