//! `haoka-sync track <vendor> <order-id>... [--file PATH]`: register orders
//! to track; say which were tracked already and when they are next checked.

use std::time::{Duration, Instant};

use super::{prepare, CliError, CliResult};
use crate::config::TrackingConfig;
use crate::db;
use crate::rules::schedule::china_time;
use crate::rules::Vendor;

/// Known orders listed one by one at most.
const LIST_KNOWN: i64 = 10;

pub(super) async fn run(
    config: TrackingConfig,
    vendor: Vendor,
    args: Vec<String>,
    file: Option<std::path::PathBuf>,
) -> CliResult {
    let mut items: Vec<(String, String)> = args
        .into_iter()
        .enumerate()
        .map(|(i, id)| (format!("argument {}", i + 1), id))
        .collect();
    if let Some(path) = file {
        let (name, text) = if path.as_os_str() == "-" {
            (
                "stdin".to_owned(),
                std::io::read_to_string(std::io::stdin())?,
            )
        } else {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?;
            (path.display().to_string(), text)
        };
        items.extend(
            text.lines()
                .enumerate()
                .map(|(i, id)| (format!("line {} of {name}", i + 1), id.to_owned())),
        );
    }
    let ids = crate::rules::ids::clean_list(items).map_err(CliError::Usage)?;
    prepare(&config.database.url).await?;
    let pool = db::pool(&config.database.url, 1, config.database.timeout);
    let schedule = config.schedule;
    let n = ids.len();
    let (created, known) = db::run(&pool, move |conn| {
        let started = Instant::now();
        let mut last = Instant::now();
        let created = crate::store::poll::register_reporting(
            conn,
            vendor,
            &ids,
            &schedule,
            chrono::Utc::now(),
            |done| {
                // A long list says how far it is, every few seconds.
                if last.elapsed() >= Duration::from_secs(2) {
                    last = Instant::now();
                    let msg = format!(
                        "track: {done} of {n} ids registered ({:.0}s)",
                        started.elapsed().as_secs_f64()
                    );
                    let kvs = [("registered", done), ("ids", n)];
                    super::log_format::note(log::Level::Info, module_path!(), "", &msg, &kvs);
                }
            },
        )?;
        let new: std::collections::HashSet<&String> = created.iter().collect();
        let old: Vec<String> = ids.iter().filter(|i| !new.contains(i)).cloned().collect();
        let known = if old.is_empty() || old.len() > LIST_KNOWN as usize {
            Vec::new()
        } else {
            crate::store::poll::next_checks(conn, vendor, &old, LIST_KNOWN)?
        };
        Ok((created.len(), known))
    })
    .await?;
    println!(
        "{vendor}: {n} order(s): {created} newly tracked, {} already tracked",
        n - created
    );
    if created < n && n - created <= LIST_KNOWN as usize {
        let now = chrono::Utc::now();
        for k in known {
            let next = match k.next_check_at {
                Some(t) if t <= now => "due now".to_owned(),
                Some(t) => format!("next check {}", china_time(t)),
                None => "never checked again".to_owned(),
            };
            println!("  {}: already tracked ({}), {next}", k.order_id, k.status);
        }
    }
    Ok(())
}
