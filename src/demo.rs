//! `haoka-sync demo`: the service and the vendor simulator wired together on
//! this machine, so the whole system can be watched without vendor
//! credentials. Also the harness of the end-to-end convergence tests.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;

use crate::config::{Config, DatabaseUrl};
use crate::db::{self, DbError, PgPool};
use crate::rules::schedule::Schedule;
use crate::sim::receiver::{Receiver, Tally};
use crate::sim::{SimConfig, SimStats, Simulator, Truth};
use crate::startup::Application;
use crate::vendors::Vendor;

/// The service configuration that fits a simulator run: its URLs and
/// credentials, a pass every second, and overdue times scaled to the
/// simulated clock: six status-change steps (ten for an order never heard
/// of), well beyond the longest gap between two on-time callbacks (a late
/// push lands at most two steps after its time), so on-time orders are never
/// queried even on a loaded machine.
pub fn service_env(sim: &Simulator, database_url: &str) -> Vec<(String, String)> {
    let c = sim.config();
    let steps = |n: u32| format!("{}s", (c.step * n).as_secs_f64().ceil().max(1.0) as u64);
    let (o, new) = (steps(6), steps(10));
    let vendors = [
        sim.haoka172().env(),
        sim.damaijia().env(),
        sim.damaijia().login_env(),
    ];
    let vendors = vendors.iter().flatten().map(|(k, v)| (*k, (*v).to_owned()));
    [
        ("DATABASE_URL", database_url.to_owned()),
        ("HAOKA_SYNC_BIND", "127.0.0.1:0".to_owned()),
        (
            "HAOKA172_OVERDUE",
            format!("new={new},pending={o},submitted={o},shipped={o},completed={o},unknown={o}"),
        ),
        ("HAOKA172_MAX_CALLS_PER_MINUTE", "180".to_owned()),
        ("HAOKA172_COOLOFF", "5s".to_owned()),
        ("DAMAIJIA_OWNER_ID", "sim-shop".to_owned()),
        (
            "DAMAIJIA_REFRESH",
            "new=0,pending=2s,submitted=2s,shipped=2s,completed=10s,unknown=2s".to_owned(),
        ),
        ("DAMAIJIA_COOLOFF", "5s".to_owned()),
        ("POLL_CRON", "* * * * * *".to_owned()),
        ("POLL_MIN_RECHECK", "2s".to_owned()),
    ]
    .into_iter()
    .chain(vendors)
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub struct Demo {
    pub sim: Simulator,
    pub service_url: String,
    pub pool: PgPool,
    /// The agent's own system, as the simulator plays it: every applied
    /// status change is forwarded to it (one target, every change), and it
    /// checks each signature.
    pub receiver: Receiver,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Where the run stands, as the service's database sees it next to the
/// simulator's truth.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub callbacks: BTreeMap<String, i64>,
    pub get_order_info_calls: i64,
    pub damaijia_calls: i64,
    pub statuses: BTreeMap<String, i64>,
    /// Callbacks that awaited the vendor's word, by result (`pending` while
    /// they still do).
    pub confirmations: BTreeMap<String, i64>,
    /// Orders whose status differs from the truth (missing counts too).
    pub disagree: usize,
    pub sim_finished: bool,
    pub sim: SimStats,
    /// Deliveries to the demo's receiver by state (`pending`, `delivered`,
    /// `exhausted`).
    pub deliveries: BTreeMap<String, i64>,
    /// What the receiver saw.
    pub received: Tally,
}

impl Progress {
    /// Every order matches the truth and every change has been forwarded.
    pub fn converged(&self) -> bool {
        self.sim_finished && self.disagree == 0 && self.forward_pending() == 0
    }

    pub fn forward_pending(&self) -> i64 {
        self.deliveries.get("pending").copied().unwrap_or(0)
    }

    /// The forwarding in one phrase.
    pub fn forwarding(&self) -> String {
        let r = &self.received;
        format!(
            "forwarded {} (pending {}, exhausted {}); receiver: {} requests, {} verified, {} distinct webhook-ids, {} out of order",
            self.deliveries.get("delivered").copied().unwrap_or(0),
            self.forward_pending(),
            self.deliveries.get("exhausted").copied().unwrap_or(0),
            r.received,
            r.verified,
            r.unique,
            r.out_of_order
        )
    }

    pub fn line(&self, elapsed: Duration) -> String {
        let cb: Vec<String> = self
            .callbacks
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let st: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let conf: Vec<String> = self
            .confirmations
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "[{:>4.0}s] callbacks: {} | confirmations: {} | GetOrderInfo calls {} (pushes dropped {}) | 大麦家 calls {} | orders: {} | disagree with truth: {} | {}",
            elapsed.as_secs_f64(),
            if cb.is_empty() { "none".into() } else { cb.join(", ") },
            if conf.is_empty() { "none".into() } else { conf.join(", ") },
            self.get_order_info_calls,
            self.sim.pushes_dropped,
            self.damaijia_calls,
            st.join(", "),
            self.disagree,
            self.forwarding()
        )
    }
}

impl Demo {
    /// Migrate `database_url`, start the simulator and the service (with
    /// `extra` configuration on top), track the shop orders, start the clock.
    pub async fn start(
        database_url: &DatabaseUrl,
        sim_cfg: SimConfig,
        extra: &[(&str, &str)],
    ) -> Result<Demo, String> {
        let url = database_url.clone();
        tokio::task::spawn_blocking(move || db::prepare(&url))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let sim = Simulator::start(sim_cfg)
            .await
            .map_err(|e| format!("simulator: {e}"))?;
        let env = service_env(&sim, database_url.expose());
        let mut vars: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.extend_from_slice(extra);
        let config = Config::with(&vars).map_err(|e| e.to_string())?;
        let app = Application::build(&config).map_err(|e| e.to_string())?;
        let service_url = format!("http://127.0.0.1:{}", app.port());
        let pool = app.pool().clone();
        let secret = crate::forward::new_target_secret()
            .map_err(|e| format!("no randomness for a secret: {e}"))?;
        let receiver = Receiver::start(vec![secret.clone()])
            .await
            .map_err(|e| format!("receiver: {e}"))?;
        let hook = receiver.url();
        db::run(&pool, move |c| {
            crate::store::forward::add_target(c, "demo receiver", &hook, None, None, &secret)
        })
        .await
        .map_err(|e| format!("forward target: {e}"))?;
        let handle = app.handle();
        let server = tokio::spawn(app.run_until_stopped());
        sim.run(Some(format!("{service_url}/callbacks/haoka172")));
        tokio::spawn(track_as_placed(
            sim.placements(),
            sim.started_at().unwrap_or_else(std::time::Instant::now),
            pool.clone(),
            config.schedule(),
        ));
        Ok(Demo {
            sim,
            service_url,
            pool,
            receiver,
            handle,
            server,
        })
    }

    pub async fn progress(&self) -> Result<Progress, DbError> {
        let truth = self.sim.truth();
        let sim_finished = self.sim.finished();
        let stats = self.sim.stats();
        let mut p = db::run(&self.pool, move |conn| progress_from_db(conn, &truth)).await?;
        p.sim_finished = sim_finished;
        p.sim = stats;
        p.received = self.receiver.tally();
        Ok(p)
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.server.await;
        self.sim.stop().await;
        self.receiver.stop().await;
    }
}

/// Register each order when the simulated agent places it, as a real agent
/// would when its order is accepted: an order whose every callback is lost is
/// still known, and so still reconciled.
async fn track_as_placed(
    placements: Vec<(Duration, Vendor, String)>,
    started: std::time::Instant,
    pool: PgPool,
    schedule: Schedule,
) {
    let schedule = std::sync::Arc::new(schedule);
    let mut rest = placements.as_slice();
    // Placed but not yet registered (a failed registration is retried).
    let mut pending: Vec<(Vendor, String)> = Vec::new();
    while !rest.is_empty() || !pending.is_empty() {
        let elapsed = started.elapsed();
        let n = rest.iter().take_while(|(at, _, _)| *at <= elapsed).count();
        let (now, later) = rest.split_at(n);
        rest = later;
        pending.extend(now.iter().map(|(_, v, id)| (*v, id.clone())));
        for vendor in Vendor::ALL {
            let ids: Vec<String> = pending
                .iter()
                .filter(|p| p.0 == vendor)
                .map(|p| p.1.clone())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let schedule = std::sync::Arc::clone(&schedule);
            let r = db::run(&pool, move |conn| {
                crate::store::poll::register(conn, vendor, &ids, &schedule, chrono::Utc::now())
            })
            .await;
            match r {
                Ok(_) => pending.retain(|p| p.0 != vendor),
                Err(e) => log::warn!("demo: tracking placed orders failed, will retry: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(QueryableByName)]
struct KeyCount {
    #[diesel(sql_type = diesel::sql_types::Text)]
    key: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct OrderStatus {
    #[diesel(sql_type = diesel::sql_types::Text)]
    vendor: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    order_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
}

fn progress_from_db(conn: &mut PgConnection, truth: &Truth) -> QueryResult<Progress> {
    let pairs = |sql: &str, conn: &mut PgConnection| -> QueryResult<BTreeMap<String, i64>> {
        let rows: Vec<KeyCount> = diesel::sql_query(sql).load(conn)?;
        Ok(rows.into_iter().map(|r| (r.key, r.n)).collect())
    };
    let callbacks = pairs(
        "SELECT outcome AS key, count(*) AS n FROM inbound_callbacks GROUP BY outcome",
        conn,
    )?;
    let calls = pairs(
        "SELECT vendor AS key, count(*) AS n FROM vendor_calls WHERE outcome <> 'pending' GROUP BY vendor",
        conn,
    )?;
    let statuses = pairs(
        "SELECT vendor || ':' || status AS key, count(*) AS n FROM orders GROUP BY 1",
        conn,
    )?;
    let confirmations = pairs(
        "SELECT COALESCE(result, 'pending') AS key, count(*) AS n FROM callback_confirmations GROUP BY 1",
        conn,
    )?;
    let deliveries = pairs(
        "SELECT state AS key, count(*) AS n FROM forward_deliveries GROUP BY state",
        conn,
    )?;
    let rows: Vec<OrderStatus> =
        diesel::sql_query("SELECT vendor, order_id, status FROM orders").load(conn)?;
    let held: BTreeMap<(String, String), String> = rows
        .into_iter()
        .map(|r| ((r.vendor, r.order_id), r.status))
        .collect();
    let mut disagree = 0;
    for (vendor, map) in [("haoka172", &truth.haoka172), ("damaijia", &truth.damaijia)] {
        for (id, want) in map {
            if held
                .get(&(vendor.to_owned(), id.clone()))
                .map(String::as_str)
                != Some(*want)
            {
                disagree += 1;
            }
        }
    }
    Ok(Progress {
        callbacks,
        get_order_info_calls: calls.get("haoka172").copied().unwrap_or(0),
        damaijia_calls: calls.get("damaijia").copied().unwrap_or(0),
        statuses,
        confirmations,
        disagree,
        sim_finished: false,
        sim: SimStats::default(),
        deliveries,
        received: Tally::default(),
    })
}
