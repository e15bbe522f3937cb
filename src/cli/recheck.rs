//! `haoka-sync recheck <vendor> <order-id>...`: make tracked orders due now;
//! the next pass asks about them within every limit.

use super::{prepare, CliError, CliResult};
use crate::config::Config;
use crate::db;
use crate::rules::Vendor;

pub(super) async fn run(config: &Config, vendor: Vendor, args: Vec<String>) -> CliResult {
    let items = args
        .into_iter()
        .enumerate()
        .map(|(i, id)| (format!("argument {}", i + 1), id));
    let ids = crate::rules::ids::clean_list(items).map_err(CliError::Usage)?;
    prepare(config).await?;
    let pool = db::pool(&config.database_url, 1, config.db_timeout);
    let done = db::run(&pool, move |conn| {
        crate::store::poll::recheck(conn, vendor, &ids, chrono::Utc::now())
    })
    .await?;
    println!(
        "{vendor}: {} due now (the next pass asks, within every limit), {} terminal (never asked again), {} not tracked",
        done.due.len(),
        done.terminal.len(),
        done.unknown.len()
    );
    for id in done.unknown.iter().take(10) {
        println!("  {id}: not tracked: haoka-sync track {vendor} {id}");
    }
    Ok(())
}
