//! `haoka-sync poll-once [--vendor V]`: one reconciliation pass now, in the
//! foreground, one summary line per vendor; tracked orders are first
//! rescheduled when the schedule settings changed.

use super::{failed, prepare, CliError, CliResult};
use crate::config::Config;
use crate::db;
use crate::rules::Vendor;

pub(super) async fn run(config: &Config, vendor: Option<Vendor>) -> CliResult {
    prepare(&config.database_url).await?;
    let pool = db::pool(&config.database_url, 4, config.db_timeout);
    let poller = crate::startup::poller(config, pool).map_err(CliError::Usage)?;
    if vendor.is_none() && poller.enabled().is_empty() {
        let why: Vec<String> = poller
            .off()
            .iter()
            .map(|(v, why)| format!("{v}: {why}"))
            .collect();
        return Err(CliError::Usage(format!(
            "no vendor has polling credentials ({})",
            why.join("; ")
        )));
    }
    // Orders scheduled under other settings move first, so that this pass
    // asks about the ones the current settings make due.
    poller.reconcile_schedules(false).await?;
    let results = poller
        .run_pass(vendor)
        .await
        .ok_or_else(|| failed("a pass is already running".into()))?;
    let mut first_err = None;
    for r in results {
        match r {
            Ok(summary) => {
                println!("{summary}");
                if summary.calls > 0 && summary.failed_calls == summary.calls {
                    let vendor = summary.vendor.map(|v| v.as_str()).unwrap_or("-");
                    first_err.get_or_insert(failed(format!(
                        "every {vendor} call failed (last: {})",
                        summary.last_failure.as_deref().unwrap_or("-")
                    )));
                }
            }
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
