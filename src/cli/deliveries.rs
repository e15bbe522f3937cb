//! `haoka-sync deliveries [--target ID] [--failed] [--order ID]`: the
//! forwarding log, newest first, each delivery with its attempts.

use super::{prepare, CliResult};
use crate::config::DatabaseConfig;
use crate::rules::schedule::china_time;
use crate::store::forward as fstore;

#[derive(Debug, clap::Args)]
pub(super) struct DeliveriesArgs {
    /// Only this target's.
    #[arg(long)]
    target: Option<i64>,
    /// Only those not delivered whose last attempt failed, and the exhausted.
    #[arg(long)]
    failed: bool,
    /// Only this order's.
    #[arg(long)]
    order: Option<String>,
    /// At most this many.
    #[arg(long, default_value = "50")]
    limit: i64,
}

pub(super) async fn run(db: &DatabaseConfig, a: DeliveriesArgs) -> CliResult {
    prepare(&db.url).await?;
    let pool = crate::db::pool(&db.url, 1, db.timeout);
    let (target, failed, order, limit) = (
        a.target,
        a.failed,
        a.order.clone(),
        a.limit.clamp(1, 10_000),
    );
    let (rows, attempts) = crate::db::run(&pool, move |c| {
        let rows = fstore::deliveries(c, target, failed, order.as_deref(), limit)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        Ok((rows, fstore::attempts(c, &ids)?))
    })
    .await?;
    if rows.is_empty() {
        println!("no deliveries match");
        return Ok(());
    }
    for r in &rows {
        let change = |v: &Option<String>| v.as_deref().unwrap_or("-").to_owned();
        println!(
            "#{} target {} {} {} seq {} {} -> {} ({}) {}: {}, {} attempt{}{}",
            r.id,
            r.target_id,
            r.vendor,
            r.order_id,
            r.seq,
            change(&r.from_status),
            change(&r.to_status),
            change(&r.source),
            r.webhook_id,
            r.state,
            r.attempts,
            if r.attempts == 1 { "" } else { "s" },
            match r.state.as_str() {
                "pending" => format!(", next {}", china_time(r.next_attempt_at)),
                _ => String::new(),
            }
        );
        for t in attempts.iter().filter(|t| t.delivery_id == r.id) {
            println!(
                "    {} {} {} ms{}{}",
                china_time(t.at),
                t.http_status
                    .map_or("no answer".to_owned(), |s| format!("HTTP {s}")),
                t.latency_ms,
                t.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                if t.redelivery { " (redelivery)" } else { "" }
            );
        }
    }
    Ok(())
}
