//! `haoka-sync track <vendor> <order-id>... [--file PATH]`: register orders
//! to track.

use super::{prepare, CliError, CliResult};
use crate::config::TrackingConfig;
use crate::db;
use crate::rules::Vendor;

pub(super) async fn run(
    config: TrackingConfig,
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
    prepare(&config.database.url).await?;
    let pool = db::pool(&config.database.url, 1, config.database.timeout);
    let schedule = config.schedule;
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
