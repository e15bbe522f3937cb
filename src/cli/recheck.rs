//! `haoka-sync recheck <vendor> <order-id>...`: make tracked orders due now;
//! the next pass asks about them within every limit.

use super::{prepare, CliError, CliResult};
use crate::config::DatabaseConfig;

use crate::rules::Vendor;

pub(super) async fn run(db: &DatabaseConfig, vendor: Vendor, args: Vec<String>) -> CliResult {
    let items = args
        .into_iter()
        .enumerate()
        .map(|(i, id)| (format!("argument {}", i + 1), id));
    let ids = crate::rules::ids::clean_list(items).map_err(CliError::Usage)?;
    prepare(&db.url).await?;
    let pool = crate::db::pool(&db.url, 1, db.timeout);
    let done = crate::db::run(&pool, move |conn| {
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
