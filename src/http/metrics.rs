//! `GET /metrics` (the Prometheus text format, no authentication: bind or
//! proxy it privately), the timing of callback requests, and the loop that
//! keeps the database gauges fresh. The handler only renders the registry:
//! a scrape never touches the database, whatever the scrape rate or the
//! database's state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use chrono::Utc;

use super::AppState;
use crate::db::{self, PgPool};
use crate::metrics::{count_due_now, Metrics, DUE_COUNT_DUTY};
use crate::store::metrics::{self as mstore, DueCount, HeardMarks};
use crate::vendors::Vendor;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // The prober's word is the freshest: a dead database shows at once,
    // not at the next refresh.
    state.metrics.set_db_health(state.pool.health().is_up());
    let (body, content_type) = state.metrics.render();
    HttpResponse::Ok().content_type(content_type).body(body)
}

/// Time a 172 callback request from its arrival (before its body is read)
/// to its answer (`haoka_sync_callback_duration_seconds`).
pub async fn time_haoka172(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| Arc::clone(&s.metrics));
    let res = next.call(req).await;
    if let Some(m) = metrics {
        m.callback_answered(Vendor::Haoka172, started.elapsed());
    }
    res
}

/// Refresh the database gauges every `every` until the task is dropped:
/// one short transaction on the blocking pool (`store::metrics::refresh`);
/// the due orders are counted in it while that is cheap, and at most 1 % of
/// the time when the backlog makes it costly (`metrics::count_due_now`).
/// `haoka_sync_db_up` says whether the last one reached the database (and
/// the prober that it still answers); a refresh is skipped while the prober
/// knows the database is down. A failure the prober has not seen yet and
/// the recovery are logged once each, not every tick (the outage itself is
/// logged by `db::health`).
pub async fn refresh_forever(
    pool: PgPool,
    metrics: Arc<Metrics>,
    callback_vendors: Vec<Vendor>,
    every: Duration,
) {
    let mut marks = HeardMarks::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<Instant> = None;
    // The last count of the due orders: when, and what it cost.
    let mut due_counted: Option<(Instant, Duration)> = None;
    loop {
        ticks.tick().await;
        let started = Instant::now();
        if !pool.health().is_up() {
            // The prober says it is down: a refresh would only wait for
            // the pool's timeout. The gauges keep their last values.
            metrics.set_db_down();
            down_since.get_or_insert(started);
            continue;
        }
        let count_due = count_due_now(
            due_counted.map(|(_, cost)| cost),
            due_counted.map_or(Duration::ZERO, |(at, _)| at.elapsed()),
            every,
        );
        let vendors = callback_vendors.clone();
        let mut m = marks.clone();
        let refreshed = db::run(&pool, move |conn| {
            mstore::refresh(conn, Utc::now(), &vendors, &mut m, count_due).map(|g| (g, m))
        })
        .await;
        match refreshed {
            Ok(((gauges, counted), m)) => {
                marks = m;
                match counted {
                    Some(DueCount::Counted(took)) => due_counted = Some((started, took)),
                    Some(DueCount::Failed(took, e)) => {
                        due_counted = Some((started, took));
                        log::warn!(
                            "metrics: counting the due orders failed after {} ms ({e}); haoka_sync_orders_due keeps its last value and is counted again in {} s",
                            took.as_millis(),
                            (took * DUE_COUNT_DUTY).as_secs()
                        );
                    }
                    None => {}
                }
                metrics.set_db(&gauges, started.elapsed());
                if let Some(since) = down_since.take() {
                    log::info!(
                        "metrics: the database answers again (gauges were stale for {} s)",
                        since.elapsed().as_secs()
                    );
                }
            }
            Err(e) => {
                metrics.set_db_down();
                if down_since.is_none() {
                    down_since = Some(started);
                    log::error!(
                        "metrics: the database gauges cannot be refreshed ({e}); haoka_sync_db_up is 0 and the other gauges keep their last values until it answers"
                    );
                }
            }
        }
    }
}
