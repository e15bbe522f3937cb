//! `haoka-sync status-dwell [--refresh]`: how long orders stay in each
//! status (the `status_dwell` view) next to the configured overdue times, to
//! tune `HAOKA172_OVERDUE` and `DAMAIJIA_REFRESH`; `--refresh` recomputes it
//! now instead of waiting for `serve`'s daily refresh.

use chrono::Utc;

use super::{failed, prepare, CliResult};
use crate::config::DatabaseConfig;
use crate::rules::duration::human_duration;
use crate::rules::schedule::china_time;
use crate::store::dwell::{self as dstore, DwellRow, Refresh};

pub(super) async fn run(db: &DatabaseConfig, refresh: bool) -> CliResult {
    prepare(&db.url).await?;
    let pool = crate::db::pool(&db.url, 1, db.timeout);
    let started = std::time::Instant::now();
    let (done, rows) = crate::db::run(&pool, move |conn| {
        let done = if refresh {
            Some(dstore::refresh(conn, Utc::now(), true)?)
        } else {
            None
        };
        Ok((done, dstore::all(conn)?))
    })
    .await?;
    match done {
        Some(Refresh::Busy) => {
            return Err(failed(
                "another process is refreshing status_dwell now: run this again in a minute".into(),
            ))
        }
        Some(Refresh::Done { stays, open, .. }) => eprintln!(
            "status-dwell: refreshed from {stays} stays ({open} still going on) in {:.1}s",
            started.elapsed().as_secs_f64()
        ),
        Some(Refresh::Fresh) | None => {}
    }
    let Some(first) = rows.first() else {
        println!("status_dwell has not been computed yet: `haoka-sync status-dwell --refresh` computes it now (serve does daily)");
        return Ok(());
    };
    println!(
        "{:<9} {:<10} {:>8} {:>8} {:>8}  {:<8} {:<8} {:<8} {:<8} outlived",
        "vendor", "status", "orders", "finished", "open", "p50", "p90", "p99", "overdue"
    );
    for r in &rows {
        println!("{}", line(r));
    }
    println!(
        "stays begun since {}, refreshed {} (daily by serve; --refresh recomputes now); open stays count as still going on, and a quantile shows - until enough have ended to tell",
        china_time(first.since),
        china_time(first.refreshed_at)
    );
    Ok(())
}

fn line(r: &DwellRow) -> String {
    let d = |s: Option<i64>| s.map_or("-".to_owned(), |s| human_duration(s.max(0) as u64));
    format!(
        "{:<9} {:<10} {:>8} {:>8} {:>8}  {:<8} {:<8} {:<8} {:<8} {}",
        r.vendor,
        r.status,
        r.stays,
        r.finished,
        r.still_open,
        d(r.p50_secs),
        d(r.p90_secs),
        d(r.p99_secs),
        d(r.overdue_secs),
        r.outlived_overdue
            .map_or("-".to_owned(), |s| format!("{:.1} %", s * 100.0))
    )
}
