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
    /// Run the vendor simulator (fake 172号卡 and 大麦家) until Ctrl-C.
    Simulate(SimulateArgs),
    /// Run the service against the simulator on this machine and watch it
    /// converge (no vendor credentials needed).
    Demo(DemoArgs),
    /// Print an order's current state and its event history.
    Show {
        /// haoka172 or damaijia
        vendor: Vendor,
        order_id: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SignOver {
    OrderNo,
    OrderNo172,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Fraction of callback pushes lost.
    #[arg(long, default_value_t = 0.15)]
    drop: f64,
    /// Fraction of callback pushes delivered twice.
    #[arg(long, default_value_t = 0.05)]
    duplicate: f64,
    /// Fraction of callback pushes delivered after the next one.
    #[arg(long, default_value_t = 0.05)]
    reorder: f64,
    /// Mean time between two status changes of an order, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    step_ms: u64,
    #[arg(long, default_value_t = 172)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    #[arg(long, default_value_t = 200)]
    orders_172: usize,
    #[arg(long, default_value_t = 50)]
    orders_damaijia: usize,
    /// Push callbacks here (e.g. http://127.0.0.1:8080/callbacks/haoka172).
    #[arg(long)]
    callback_url: Option<String>,
    /// Which order number the callback signature encrypts.
    #[arg(long, value_enum, default_value = "order-no")]
    sign_over: SignOver,
    #[arg(long, default_value = "127.0.0.1:9172")]
    listen_172: std::net::SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9173")]
    listen_damaijia: std::net::SocketAddr,
    /// Write the ground truth (each order's final status) here on exit.
    #[arg(long)]
    truth_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    #[arg(long, default_value_t = 300)]
    orders_172: usize,
    #[arg(long, default_value_t = 60)]
    orders_damaijia: usize,
    /// Give up (exit 1) when not converged after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    #[command(flatten)]
    sim: SimArgs,
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
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(&config).await,
            Command::Show { vendor, order_id } => show(&config, vendor, &order_id).await,
            Command::Track {
                vendor,
                order_ids,
                file,
            } => track(&config, vendor, order_ids, file).await,
            Command::PollOnce { vendor } => poll_once(&config, vendor).await,
            Command::Simulate(args) => simulate(&config, args).await,
            Command::Demo(args) => demo(&config, args).await,
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
    match (config.haoka172.confirm_terminal, config.haoka172.can_poll()) {
        (true, true) => log::info!(
            "a 172 callback that would make its order terminal is held until GetOrderInfo confirms it (HAOKA172_CONFIRM_TERMINAL=off applies it at once)"
        ),
        (true, false) => log::warn!(
            "HAOKA172_USER_ID is not set, so nothing can confirm a callback's terminal status: such callbacks apply at once, and a replayed signature can make an order terminal; callbacks signed over an OrderNo172 we cannot corroborate stay unverified"
        ),
        (false, _) => log::warn!(
            "HAOKA172_CONFIRM_TERMINAL=off: a callback's terminal status applies at once; the vendor's signature covers only the order number, so a replayed signature can make an order terminal"
        ),
    }
    if config.damaijia.token.is_none() || config.damaijia.owner_id.is_none() {
        log::info!("DAMAIJIA_TOKEN / DAMAIJIA_OWNER_ID not set: the 大麦家 poller is off");
    }
    if config.admin_token.is_none() {
        log::info!("ADMIN_TOKEN is not set: /api/* answers 403");
    }
    log_callback_sources(&config);
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

/// The sender's address is the only check a forger cannot pass by knowing
/// an order number, so an operator should see at start whether it is on.
fn log_callback_sources(config: &Config) {
    let Some(nets) = &config.callback_allowed_sources else {
        log::info!(
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

async fn show(config: &Config, vendor: Vendor, order_id: &str) -> CliResult {
    let pool = db::pool(&config.database_url, 1, config.db_timeout);
    let id = order_id.to_owned();
    let found = db::run(&pool, move |conn| {
        let order = crate::store::find_order(conn, vendor, &id)?;
        let history = crate::store::order_history(conn, vendor, &id)?;
        let confirmations = crate::store::order_confirmations(conn, vendor, &id)?;
        Ok(order.map(|o| (o, history, confirmations)))
    })
    .await?;
    let Some((o, history, confirmations)) = found else {
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
            .map(crate::rules::mask::phone)
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
    for c in &confirmations {
        let what = match c.reason.as_str() {
            "terminal" => format!("claimed {}", c.claimed_status),
            _ => "was signed over an OrderNo172 nobody vouched for".to_owned(),
        };
        match (&c.result, &c.vendor_status) {
            (Some(result), answer) => println!(
                "  callback {} {what}: {result} by GetOrderInfo{}",
                c.request_id,
                answer
                    .as_deref()
                    .map(|a| format!(" (answered {a})"))
                    .unwrap_or_default()
            ),
            (None, _) => println!(
                "  callback {} {what}: awaiting GetOrderInfo since {}{}",
                c.request_id,
                c.requested_at.format("%Y-%m-%d %H:%M:%S UTC"),
                if c.expedited {
                    " (asked at once)"
                } else {
                    " (at its next scheduled check)"
                }
            ),
        }
    }
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
    let schedule = config.schedule();
    let n = ids.len();
    let created = db::run(&pool, move |conn| {
        crate::store::poll::register(conn, vendor, &ids, &schedule, chrono::Utc::now())
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
    let schedule = std::sync::Arc::new(config.schedule());
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

fn sim_config(
    config: &Config,
    a: &SimArgs,
    orders_172: usize,
    orders_damaijia: usize,
) -> Result<crate::sim::SimConfig, CliError> {
    for (name, v) in [
        ("--drop", a.drop),
        ("--duplicate", a.duplicate),
        ("--reorder", a.reorder),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(CliError::Usage(format!("{name} must be between 0 and 1")));
        }
    }
    let mut c = crate::sim::SimConfig {
        haoka172_orders: orders_172,
        damaijia_orders: orders_damaijia,
        seed: a.seed,
        step: std::time::Duration::from_millis(a.step_ms.max(50)),
        drop: a.drop,
        duplicate: a.duplicate,
        reorder: a.reorder,
        ..Default::default()
    };
    // Use the configured credentials when there are any, so a service with
    // the same environment verifies the simulator's signatures.
    if let Some(u) = &config.haoka172.user_id {
        c.user_id = u.clone();
    }
    if let Some(s) = &config.haoka172.secret {
        c.secret = s.expose().to_owned();
    }
    if let Some(t) = &config.damaijia.token {
        c.damaijia_token = t.expose().to_owned();
    }
    Ok(c)
}

async fn simulate(config: &Config, args: SimulateArgs) -> CliResult {
    let mut c = sim_config(config, &args.sim, args.orders_172, args.orders_damaijia)?;
    c.sign_over_172 = matches!(args.sign_over, SignOver::OrderNo172);
    c.bind_172 = args.listen_172;
    c.bind_damaijia = args.listen_damaijia;
    let sim = crate::sim::Simulator::start(c).await?;
    let cfg = sim.config();
    println!(
        "simulator: 172号卡 at {} , 大麦家 at {}",
        sim.haoka172_url(),
        sim.damaijia_url()
    );
    println!("configure the service with:");
    println!(
        "  HAOKA172_BASE_URL={} HAOKA172_USER_ID={} HAOKA172_SECRET=<the simulator's secret>",
        sim.haoka172_url(),
        cfg.user_id
    );
    println!(
        "  DAMAIJIA_BASE_URL={} DAMAIJIA_OWNER_ID=sim-shop DAMAIJIA_TOKEN=<the simulator's token>",
        sim.damaijia_url()
    );
    println!(
        "truth: GET {}/sim/truth, counters: GET {}/sim/stats",
        sim.haoka172_url(),
        sim.haoka172_url()
    );
    sim.run(args.callback_url.clone());
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = tick.tick() => {
                let s = sim.stats();
                println!(
                    "pushes {} acknowledged / {} dropped / {} given up; GetOrderInfo {} (blocked {}); 大麦家 calls {}{}",
                    s.pushes_acknowledged, s.pushes_dropped, s.pushes_given_up, s.get_order_info_calls,
                    s.get_order_info_blocked, s.damaijia_calls,
                    if sim.finished() { "; every lifecycle is over" } else { "" }
                );
            }
        }
    }
    if let Some(path) = args.truth_file {
        std::fs::write(&path, serde_json::to_vec_pretty(&sim.truth())?)?;
        println!("truth written to {}", path.display());
    }
    sim.stop().await;
    Ok(())
}

async fn demo(config: &Config, args: DemoArgs) -> CliResult {
    let sim_cfg = sim_config(config, &args.sim, args.orders_172, args.orders_damaijia)?;
    let name = format!("{}_demo", config.database_url.database_name());
    let url = config.database_url.with_database(&name);
    let fresh = url.clone();
    tokio::task::spawn_blocking(move || recreate_database(&fresh)).await??;
    println!(
        "demo: {} 172 orders and {} 大麦家 orders; {:.0}% of callback pushes lost, {:.0}% duplicated, {:.0}% late; database {name} (recreated)",
        args.orders_172,
        args.orders_damaijia,
        args.sim.drop * 100.0,
        args.sim.duplicate * 100.0,
        args.sim.reorder * 100.0
    );
    let started = std::time::Instant::now();
    let demo = crate::demo::Demo::start(&url, sim_cfg, &[])
        .await
        .map_err(failed)?;
    println!(
        "service at {} ; simulator 172 at {} , 大麦家 at {}",
        demo.service_url,
        demo.sim.haoka172_url(),
        demo.sim.damaijia_url()
    );
    let deadline = started + std::time::Duration::from_secs(args.timeout_secs);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            _ = shutdown_signal() => break Err(failed("interrupted".into())),
            _ = tick.tick() => {}
        }
        let p = demo.progress().await?;
        println!("{}", p.line(started.elapsed()));
        if p.converged() {
            let s = &p.sim;
            println!(
                "converged in {:.0}s: every order matches the simulator's truth. {} pushes lost, {} GetOrderInfo calls; {} duplicate and {} late pushes absorbed; vendor limits: max {} calls/minute, max {} calls per order per day, {} calls after terminal, {} blocked",
                started.elapsed().as_secs_f64(), s.pushes_dropped, p.get_order_info_calls, s.pushes_duplicated,
                s.pushes_reordered, s.max_calls_per_minute, s.max_calls_per_order_day, s.calls_after_terminal, s.get_order_info_blocked
            );
            break Ok(());
        }
        if std::time::Instant::now() > deadline {
            break Err(failed(format!(
                "not converged after {}s: {} orders disagree with the truth",
                args.timeout_secs, p.disagree
            )));
        }
    };
    demo.stop().await;
    result
}

/// Drop and create the demo database, so every demo starts clean.
fn recreate_database(url: &crate::config::DatabaseUrl) -> Result<(), db::DbError> {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let admin = url.with_database("postgres");
    let mut conn = diesel::PgConnection::establish(admin.expose())
        .map_err(|e| db::DbError::Unavailable(format!("cannot connect to {admin}: {e}")))?;
    let name = url.database_name().replace('"', "\"\"");
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
    db::prepare(url).map(|_| ())
}
