//! `haoka-sync demo`: the service and the simulator on this machine, until
//! every order matches the simulator's truth. Its database,
//! `<DATABASE_URL's database>_demo`, is recreated at the start and dropped
//! at the end (whatever the outcome) unless `--keep-db`.

use super::simulate::{sim_config, SimArgs};
use super::{failed, CliResult};
use crate::config::Config;
use crate::db;
use crate::startup::shutdown_signal;

#[derive(Debug, clap::Args)]
pub(super) struct DemoArgs {
    #[arg(long, default_value_t = 300)]
    orders_172: usize,
    #[arg(long, default_value_t = 60)]
    orders_damaijia: usize,
    /// Give up (exit 1) when not converged after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Keep the demo database at the end, to look at it with SQL (it is
    /// dropped otherwise; the next demo recreates it anyway).
    #[arg(long)]
    keep_db: bool,
    #[command(flatten)]
    sim: SimArgs,
}

pub(super) async fn run(config: &Config, args: DemoArgs) -> CliResult {
    let sim_cfg = sim_config(config, &args.sim, args.orders_172, args.orders_damaijia)?;
    let name = format!("{}_demo", config.database_url.database_name());
    let url = config.database_url.with_database(&name);
    let fresh = url.clone();
    tokio::task::spawn_blocking(move || recreate_database(&fresh)).await??;
    println!(
        "demo: {} 172 orders and {} 大麦家 orders; {:.0}% of callback pushes lost, {:.0}% duplicated, {:.0}% late; database {name} (recreated, {})",
        args.orders_172,
        args.orders_damaijia,
        args.sim.drop * 100.0,
        args.sim.duplicate * 100.0,
        args.sim.reorder * 100.0,
        if args.keep_db {
            "kept at the end"
        } else {
            "dropped at the end unless --keep-db"
        }
    );
    let result = watch(&url, sim_cfg, &args).await;
    if args.keep_db {
        println!("demo: database {name} kept");
        return result;
    }
    let gone = url.clone();
    let dropped = match tokio::task::spawn_blocking(move || drop_database(&gone)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match (result, dropped) {
        (result, Ok(())) => {
            println!("demo: database {name} dropped");
            result
        }
        (Ok(()), Err(e)) => Err(failed(format!("cannot drop database {name}: {e}"))),
        (Err(result), Err(e)) => {
            let msg = format!("cannot drop database {name}: {e}");
            let kvs = [("database", name.as_str())];
            super::log_format::note(
                log::Level::Error,
                module_path!(),
                "haoka-sync: ",
                &msg,
                &kvs,
            );
            Err(result)
        }
    }
}

/// Start the service and the simulator on `url`, print progress until every
/// order matches the truth (or the timeout, or Ctrl-C), then stop both.
async fn watch(
    url: &crate::config::DatabaseUrl,
    sim_cfg: crate::sim::SimConfig,
    args: &DemoArgs,
) -> CliResult {
    let started = std::time::Instant::now();
    let demo = crate::demo::Demo::start(url, sim_cfg, &[])
        .await
        .map_err(failed)?;
    println!(
        "service at {} ; simulator 172 at {} , 大麦家 at {} ; every change forwarded to {}",
        demo.service_url,
        demo.sim.haoka172_url(),
        demo.sim.damaijia_url(),
        demo.receiver.url()
    );
    let deadline = started + std::time::Duration::from_secs(args.timeout_secs);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            _ = shutdown_signal() => break Err(failed("interrupted".into())),
            _ = tick.tick() => {}
        }
        let p = match demo.progress().await {
            Ok(p) => p,
            Err(e) => break Err(e.into()),
        };
        println!("{}", p.line(started.elapsed()));
        if p.converged() {
            let s = &p.sim;
            println!(
                "converged in {:.0}s: every order matches the simulator's truth. {} pushes lost, {} GetOrderInfo calls; {} duplicate and {} late pushes absorbed; vendor limits: max {} calls/minute, max {} calls per order per day, {} calls after terminal, {} blocked",
                started.elapsed().as_secs_f64(), s.pushes_dropped, p.get_order_info_calls, s.pushes_duplicated,
                s.pushes_reordered, s.max_calls_per_minute, s.max_calls_per_order_day, s.calls_after_terminal, s.get_order_info_blocked
            );
            println!("forwarding: {}", p.forwarding());
            let r = &p.received;
            if r.verified != r.received || r.out_of_order > 0 {
                break Err(failed(format!(
                    "forwarding broke its guarantees: {}",
                    p.forwarding()
                )));
            }
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
    drop_database(url)?;
    db::prepare(url).map(|_| ())
}

/// Drop the demo database if it exists (and any connection still open to it).
fn drop_database(url: &crate::config::DatabaseUrl) -> Result<(), db::DbError> {
    use diesel::connection::SimpleConnection;
    let mut conn = db::connect(
        url,
        &url.with_database("postgres"),
        &format!("to recreate the demo database {}", url.database_name()),
    )?;
    let name = url.database_name().replace('"', "\"\"");
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
    Ok(())
}
