//! The command line, one file per command, each a small function over the
//! library (as crates.io does for its admin commands). Exit code 2 for bad
//! usage or bad configuration (one line on stderr), 1 for a failure at run
//! time (docs/contract.md#exit-codes).

mod deliveries;
mod demo;
mod envfile;
mod log_format;
mod logging;
mod migrate;
mod poll_once;
mod prune;
mod recheck;
mod redeliver;
mod replay;
mod report;
mod serve;
mod show;
mod simulate;
mod status_dwell;
mod targets;
mod track;
mod watch;

use std::future::Future;

use clap::{Parser, Subcommand};

use crate::config::{
    Config, ConfigError, DatabaseConfig, DatabaseUrl, ForwardConfig, LogFormat, PruneConfig,
    ReplayConfig, TrackingConfig,
};
use crate::db;
use crate::rules::Vendor;
use envfile::EnvFile;

#[derive(Debug, Parser)]
#[command(
    name = "haoka-sync",
    version,
    about = "Phone-card order status sync: vendor callbacks + overdue polling into PostgreSQL",
    after_help = "Configuration: environment variables (and a .env file in this directory); see README.md, section Configuration, or docs/contract.md"
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
    /// Make tracked orders due now: the next pass asks about them, within
    /// every limit.
    Recheck {
        /// haoka172 or damaijia
        vendor: Vendor,
        #[arg(required = true)]
        order_ids: Vec<String>,
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
    /// Print an order's current state, poll state and event history.
    Show {
        /// haoka172 or damaijia
        vendor: Vendor,
        order_id: String,
    },
    /// Judge stored callback requests again with the current configuration
    /// and commit those that now verify, as if they had just arrived.
    #[command(
        after_help = "Reads DATABASE_URL, HAOKA172_SECRET (required), HAOKA172_SECRET_PREVIOUS, CALLBACK_ALLOWED_SOURCES and the schedule variables track reads. Calls no vendor. Exit 0 when it ran (whatever the requests' results), 2 for bad usage or configuration, 1 for a database error; running it again is safe. See docs/contract.md, haoka-sync replay."
    )]
    Replay(replay::ReplayArgs),
    /// Print how long orders stay in each status (the status_dwell view)
    /// next to the overdue times.
    StatusDwell {
        /// Recompute it now (serve does daily).
        #[arg(long)]
        refresh: bool,
    },
    /// Print each applied status change as it commits (the change feed),
    /// catching up from --since-id first; reconnects by itself.
    #[command(
        after_help = "Reads DATABASE_URL only; read-only. Runs until stopped. Exit 1 when the database is missing or not migrated at start; later losses of the database are retried, resuming after the last id printed. See docs/contract.md, haoka-sync watch."
    )]
    Watch(watch::WatchArgs),
    /// Apply RETENTION now: drop what is past it from the raw callbacks,
    /// the events and change feed, and the vendor calls (serve does daily).
    #[command(
        after_help = "Reads DATABASE_URL and RETENTION (default inbound=90d,events=400d,vendor_calls=90d; off keeps everything; orders are never pruned). Migrates first. Exit 0 when it ran, 1 when another process is pruning or the database fails, 2 for a bad RETENTION. See docs/contract.md, haoka-sync prune."
    )]
    Prune {
        /// Count what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print one China-time day's reconciliation (对账): callbacks, vendor
    /// calls and cost, status changes, settlements, and what is stuck now.
    #[command(
        after_help = "Reads DATABASE_URL only; read-only. --day is a China-time day, YYYY-MM-DD (default: yesterday, China time); a day in the future is refused. Exit 2 for bad usage, 1 when the database is missing or not migrated. See docs/contract.md, haoka-sync report."
    )]
    Report(report::ReportArgs),
    /// Where status changes are forwarded: add, list, disable, enable,
    /// rotate-secret.
    #[command(
        subcommand,
        after_help = "Reads DATABASE_URL (and FORWARD_SECRET_GRACE for rotate-secret). A new secret is printed once and never logged. See docs/contract.md, haoka-sync targets."
    )]
    Targets(targets::TargetsCommand),
    /// The forwarding log: deliveries, newest first, with their attempts.
    #[command(
        after_help = "Reads DATABASE_URL only. See docs/contract.md, haoka-sync deliveries."
    )]
    Deliveries(deliveries::DeliveriesArgs),
    /// Send forwarding deliveries again (same webhook-id), by id, order,
    /// target and/or time window.
    #[command(after_help = "Reads DATABASE_URL only. See docs/contract.md, haoka-sync redeliver.")]
    Redeliver(redeliver::RedeliverArgs),
}

/// The whole command line; returns the process's exit code (`main` ends
/// the process with it).
pub fn main() -> u8 {
    // Until `.env` is read, the environment's LOG_FORMAT says how to report
    // a usage error.
    log_format::assume(LogFormat::from_env().unwrap_or_default());
    // The arguments first: `--help` works whatever the configuration.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version: clap's own output, on stdout.
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(0);
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // No command at all: clap would print the whole help.
            return exit_line(2, &no_command_line());
        }
        Err(e) => {
            let args: Vec<String> = std::env::args().collect();
            return exit_line(
                2,
                &usage_line(&e.render().to_string(), subcommand_of(&args)),
            );
        }
    };
    let env_file = match envfile::load() {
        Ok(f) => f.unwrap_or_default(),
        Err(why) => return exit_line(2, &format!("configuration error: {why}")),
    };
    // Every command logs in the format asked for; a bad value is reported
    // in text, the one format certain to be read.
    let format = match LogFormat::from_env() {
        Ok(f) => f,
        Err(e) => {
            log_format::assume(LogFormat::Text);
            return exit_line(2, &config_error(&e, &env_file));
        }
    };
    // The demo prints its own progress; the service's per-callback lines
    // would drown it.
    let default_log = match cli.command {
        Command::Demo(_) | Command::Simulate(_) => "warn",
        // The libraries' internals (scheduler set-up, worker start and stop)
        // are not the operator's business unless asked for.
        _ => "info,tokio_cron_scheduler=warn,actix_server=warn",
    };
    let spec = std::env::var("RUST_LOG").ok();
    let (filter, warning) =
        logging::filter(spec.as_deref(), env_file.source_of("RUST_LOG"), default_log);
    log_format::init(format, &filter);
    if let Some(warning) = warning {
        log_format::note(
            log::Level::Warn,
            "haoka_sync::config",
            "haoka-sync: warning: ",
            &warning,
            &[("var", "RUST_LOG")],
        );
    }
    match run(cli.command, &env_file) {
        Ok(()) => 0,
        Err(CliError::Usage(e)) => exit_line(2, &one_line(&e)),
        Err(CliError::Failed(e)) => exit_line(1, &one_line(&e.to_string())),
    }
}

/// The last line of a command that fails, `haoka-sync: <why>` (a JSON
/// `error` line with `exit_code` in JSON mode), and its exit code.
fn exit_line(code: u8, why: &str) -> u8 {
    log_format::note(
        log::Level::Error,
        "haoka_sync",
        "haoka-sync: ",
        why,
        &[("exit_code", code)],
    );
    code
}

/// `configuration error: VAR (from .env): why`.
fn config_error(e: &ConfigError, env_file: &EnvFile) -> String {
    let from = env_file
        .source_of(e.var)
        .map(|f| format!(" (from {f})"))
        .unwrap_or_default();
    format!("configuration error: {}{from}: {}", e.var, e.msg)
}

/// Each command reads the configuration it uses: `migrate`, `show`,
/// `recheck`, `status-dwell`, `watch` and `report` only the database,
/// `track` the database and the schedule, `replay` also the callback
/// secrets and sources, the others all of it (docs/contract.md#commands).
fn run(command: Command, env_file: &EnvFile) -> CliResult {
    let configured = |e: ConfigError| CliError::Usage(config_error(&e, env_file));
    match command {
        Command::Migrate => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(migrate::run(&db))
        }
        Command::Show { vendor, order_id } => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(show::run(&db, vendor, &order_id))
        }
        Command::StatusDwell { refresh } => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(status_dwell::run(&db, refresh))
        }
        Command::Watch(args) => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(watch::run(&db, args))
        }
        Command::Prune { dry_run } => {
            let config = PruneConfig::from_env().map_err(configured)?;
            block_on(prune::run(&config, dry_run))
        }
        Command::Report(args) => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(report::run(&db, args))
        }
        Command::Targets(cmd) => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            let forward = ForwardConfig::from_env().map_err(configured)?;
            block_on(targets::run(&db, &forward, cmd))
        }
        Command::Deliveries(args) => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(deliveries::run(&db, args))
        }
        Command::Redeliver(args) => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(redeliver::run(&db, args))
        }
        Command::Recheck { vendor, order_ids } => {
            let db = DatabaseConfig::from_env().map_err(configured)?;
            block_on(recheck::run(&db, vendor, order_ids))
        }
        Command::Track {
            vendor,
            order_ids,
            file,
        } => {
            let config = TrackingConfig::from_env().map_err(configured)?;
            block_on(track::run(config, vendor, order_ids, file))
        }
        Command::Replay(args) => {
            let config = ReplayConfig::from_env().map_err(configured)?;
            block_on(replay::run(config, args))
        }
        command => {
            let config = Config::from_env().map_err(configured)?;
            block_on(async move {
                match command {
                    Command::Serve => serve::run(config).await,
                    Command::PollOnce { vendor } => poll_once::run(&config, vendor).await,
                    Command::Simulate(args) => simulate::run(&config, args).await,
                    Command::Demo(args) => demo::run(&config, args).await,
                    Command::Migrate
                    | Command::Show { .. }
                    | Command::StatusDwell { .. }
                    | Command::Watch(_)
                    | Command::Prune { .. }
                    | Command::Report(_)
                    | Command::Targets(_)
                    | Command::Deliveries(_)
                    | Command::Redeliver(_)
                    | Command::Recheck { .. }
                    | Command::Track { .. }
                    | Command::Replay(_) => {
                        unreachable!("handled above")
                    }
                }
            })
        }
    }
}

fn block_on(work: impl Future<Output = CliResult>) -> CliResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(work)
}

/// `haoka-sync` alone: which commands there are, in one line.
fn no_command_line() -> String {
    use clap::CommandFactory;
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .filter(|n| n != "help")
        .collect();
    format!(
        "a command is required ({}); see haoka-sync --help",
        names.join(", ")
    )
}

/// The subcommand named in `args` (the first word that is not an option),
/// when it is one.
fn subcommand_of(args: &[String]) -> Option<&str> {
    use clap::CommandFactory;
    let word = args.iter().skip(1).find(|a| !a.starts_with('-'))?;
    Cli::command()
        .find_subcommand(word)
        .is_some()
        .then_some(word.as_str())
}

/// clap's error (`error: <what>`, maybe indented detail lines, a tip, the
/// usage, a pointer to `--help`) as the one line the contract promises:
/// `<what> <detail> (tip: …); see haoka-sync track --help`. `subcommand`
/// names the help to point to when the error shows no usage.
fn usage_line(rendered: &str, subcommand: Option<&str>) -> String {
    let mut paragraphs = rendered
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty());
    let what = paragraphs.next().unwrap_or_default();
    let what = what.strip_prefix("error: ").unwrap_or(&what).to_owned();
    let mut tips = Vec::new();
    let mut command = match subcommand {
        Some(sub) => format!("haoka-sync {sub}"),
        None => "haoka-sync".to_owned(),
    };
    for p in paragraphs {
        if let Some(tip) = p.strip_prefix("tip: ") {
            tips.push(tip.to_owned());
        } else if let Some(usage) = p.strip_prefix("Usage: ") {
            // `haoka-sync track <VENDOR> [ORDER_IDS]...` → `haoka-sync track`
            command = usage
                .split(' ')
                .take_while(|w| !w.starts_with(['<', '[', '-']))
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    let tips = match tips.is_empty() {
        true => String::new(),
        false => format!(" (tip: {})", tips.join("; ")),
    };
    format!("{what}{tips}; see {command} --help")
}

/// A message as one line: a driver's or a library's may have several.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
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

/// One direct connection (not a pool) for a command that only reads: a
/// database that is missing, down or not migrated is said at once, in one
/// line, and nothing is created.
pub(crate) fn read_only_connection(url: &DatabaseUrl) -> Result<diesel::PgConnection, String> {
    let name = url.database_name();
    let mut conn = db::connect(url, url, &format!("to read the database {name}")).map_err(|e| {
        if e.to_string()
            .contains(&format!("database \"{name}\" does not exist"))
        {
            format!(
                "database {name} does not exist (DATABASE_URL): `haoka-sync migrate` creates it"
            )
        } else {
            e.to_string()
        }
    })?;
    let schema = db::schema(&mut conn, &db::latest_migration())
        .map_err(|e| format!("database {name}: {e}"))?;
    if let db::Schema::Behind { has, wants } = schema {
        return Err(format!(
            "database {name} is not migrated (has {}, this build needs {wants}): run `haoka-sync migrate`",
            has.as_deref().unwrap_or("no migration")
        ));
    }
    Ok(conn)
}

/// Create and migrate the database when needed, and create the partitions
/// of this month and the next ones (`store::retention::ensure_ahead`).
pub(crate) async fn prepare(url: &DatabaseUrl) -> CliResult {
    let url = url.clone();
    let (applied, created) = tokio::task::spawn_blocking(move || -> Result<_, db::DbError> {
        let applied = db::prepare(&url)?;
        let name = url.database_name();
        let mut conn = db::connect(&url, &url, &format!("to migrate the database {name}"))?;
        let created = crate::store::retention::ensure_ahead(&mut conn, chrono::Utc::now())
            .map_err(|e| {
                db::DbError::Migration(format!(
                    "database {name}: creating the coming months' partitions: {e}"
                ))
            })?;
        Ok((applied, created))
    })
    .await??;
    for m in &applied {
        log::info!("applied migration {m}");
    }
    if created > 0 {
        log::info!("created {created} partitions for the coming months");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn usage_error(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        assert!(e.use_stderr(), "{args:?} is not an error");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        usage_line(&e.render().to_string(), subcommand_of(&args))
    }

    #[test]
    fn usage_errors_are_one_line_pointing_to_help() {
        for (args, want) in [
            (
                &["haoka-sync", "frobnicate"][..],
                "unrecognized subcommand 'frobnicate'; see haoka-sync --help",
            ),
            (
                &["haoka-sync", "serv"][..],
                "unrecognized subcommand 'serv' (tip: a similar subcommand exists: 'serve'); see haoka-sync --help",
            ),
            (
                &["haoka-sync", "track"][..],
                "the following required arguments were not provided: <VENDOR>; see haoka-sync track --help",
            ),
            (
                &["haoka-sync", "poll-once", "--vendor", "x"][..],
                "invalid value 'x' for '--vendor <VENDOR>': unknown vendor `x` (expected haoka172 or damaijia); see haoka-sync poll-once --help",
            ),
        ] {
            let line = usage_error(args);
            assert_eq!(line, want, "{args:?}");
        }
        let e = Cli::try_parse_from(["haoka-sync"]).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(
            no_command_line(),
            "a command is required (serve, migrate, track, recheck, poll-once, simulate, demo, show, replay, status-dwell, watch, prune, report, targets, deliveries, redeliver); see haoka-sync --help"
        );
    }

    #[test]
    fn help_points_to_the_configuration() {
        let help = Cli::command().render_help().to_string();
        assert!(
            help.contains("Configuration: environment variables (and a .env file in this directory); see README.md, section Configuration, or docs/contract.md"),
            "{help}"
        );
    }

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

    #[test]
    fn messages_print_as_one_line() {
        assert_eq!(one_line("a\n\tb\n\n"), "a b");
    }
}
