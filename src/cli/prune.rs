//! `haoka-sync prune [--dry-run]`: apply `RETENTION` now (`serve` does it
//! once a day) and say what left: partitions dropped and the disk they gave
//! back, rows deleted. One process at a time; progress on long runs.

use super::{failed, prepare, CliResult};
use crate::config::PruneConfig;
use crate::db;
use crate::store::retention::{self as rstore, Prune, Trigger};

pub(super) async fn run(config: &PruneConfig, dry_run: bool) -> CliResult {
    prepare(&config.database.url).await?;
    let url = config.database.url.clone();
    let retention = config.retention;
    let owner = crate::owner::process();
    let started = std::time::Instant::now();
    let pruned = tokio::task::spawn_blocking(move || -> Result<Prune, String> {
        let name = url.database_name();
        let mut conn = db::connect(&url, &url, &format!("to prune the database {name}"))
            .map_err(|e| e.to_string())?;
        let mut progress = |line: String| eprintln!("{line}");
        rstore::prune(
            &mut conn,
            &retention,
            chrono::Utc::now(),
            dry_run,
            Trigger::Command,
            &owner,
            false,
            &mut progress,
        )
        .map_err(|e| format!("database {name}: {e}"))
    })
    .await?
    .map_err(failed)?;
    match pruned {
        Prune::Done { removed, run_id } => {
            let line = format!(
                "prune (RETENTION={}{}): {} in {:.1}s (retention_runs.id {run_id})",
                retention.describe(),
                if dry_run { ", dry run: nothing removed" } else { "" },
                rstore::summary(&removed, dry_run),
                started.elapsed().as_secs_f64()
            );
            log::info!("{line}");
            println!("{line}");
            Ok(())
        }
        Prune::Busy => Err(failed(
            "another process is pruning now (serve's daily run or another prune): run this again when it is done".into(),
        )),
        Prune::NotDue { .. } => unreachable!("prune runs whether due or not"),
    }
}
