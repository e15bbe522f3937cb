//! `haoka-sync redeliver [--id N...] [--order ID] [--target ID] [--since T]
//! [--until T]`: send deliveries again, whatever their state, with their
//! own `webhook-id` (receivers that already have one dedupe it); each is
//! retried for FORWARD_RETRY_FOR from now.

use chrono::{DateTime, Utc};

use super::{prepare, CliError, CliResult};
use crate::config::DatabaseConfig;
use crate::store::forward::{self as fstore, Selection};

#[derive(Debug, clap::Args)]
pub(super) struct RedeliverArgs {
    /// These deliveries (forward_deliveries.id), space- or comma-separated.
    #[arg(long = "id", value_name = "N", num_args = 1.., value_delimiter = ',')]
    ids: Vec<i64>,
    /// Only this order's (any vendor).
    #[arg(long)]
    order: Option<String>,
    /// Only this target's.
    #[arg(long)]
    target: Option<i64>,
    /// Only changes committed at or after TIME (RFC 3339 or China time, as `show` prints).
    #[arg(long, value_name = "TIME", value_parser = crate::rules::time::parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only changes committed before TIME.
    #[arg(long, value_name = "TIME", value_parser = crate::rules::time::parse_time)]
    until: Option<DateTime<Utc>>,
}

pub(super) async fn run(db: &DatabaseConfig, a: RedeliverArgs) -> CliResult {
    if a.ids.is_empty()
        && a.order.is_none()
        && a.target.is_none()
        && a.since.is_none()
        && a.until.is_none()
    {
        return Err(CliError::Usage(
            "redeliver needs a selection: --id N..., --order ID, --target ID and/or --since/--until TIME".into(),
        ));
    }
    prepare(&db.url).await?;
    let pool = crate::db::pool(&db.url, 1, db.timeout);
    let sel = Selection {
        ids: a.ids,
        vendor: None,
        order_id: a.order,
        target: a.target,
        since: a.since,
        until: a.until,
    };
    let ids = crate::db::run(&pool, move |c| fstore::redeliver(c, &sel, Utc::now())).await?;
    let shown: Vec<String> = ids.iter().take(20).map(|i| i.to_string()).collect();
    println!(
        "redeliver: {} deliveries due now{}{}",
        ids.len(),
        if ids.is_empty() {
            String::new()
        } else {
            format!(" ({}", shown.join(", "))
        },
        match ids.len() {
            0 => String::new(),
            n if n > 20 => format!(" and {} more)", n - 20),
            _ => ")".to_owned(),
        }
    );
    log::info!("redeliver: {} deliveries made due now", ids.len());
    Ok(())
}
