//! `haoka-sync simulate`: the vendor simulator alone (fake 172号卡 and
//! 大麦家), until Ctrl-C; and the simulation options `demo` shares.

use super::{CliError, CliResult};
use crate::config::Config;
use crate::startup::shutdown_signal;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum SignOver {
    OrderNo,
    /// Spelled as README and docs/contract.md write it; clap's own spelling
    /// `order-no172`, the only one accepted before, still works.
    #[value(name = "order-no-172", alias = "order-no172")]
    OrderNo172,
}

#[derive(Debug, clap::Args)]
pub(super) struct SimArgs {
    /// Fraction of callback pushes lost.
    #[arg(long, default_value_t = 0.15)]
    pub(super) drop: f64,
    /// Fraction of callback pushes delivered twice.
    #[arg(long, default_value_t = 0.05)]
    pub(super) duplicate: f64,
    /// Fraction of callback pushes delivered after the next one.
    #[arg(long, default_value_t = 0.05)]
    pub(super) reorder: f64,
    /// Mean time between two status changes of an order, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(super) step_ms: u64,
    #[arg(long, default_value_t = 172)]
    pub(super) seed: u64,
}

#[derive(Debug, clap::Args)]
pub(super) struct SimulateArgs {
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

pub(super) fn sim_config(
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

pub(super) async fn run(config: &Config, args: SimulateArgs) -> CliResult {
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
