//! The Prometheus metrics of one running service (`GET /metrics`): the
//! registry and typed handles the layers above call when something happens
//! (a callback stored, a batch committed, a vendor call recorded), and the
//! database gauges a background refresh sets from what the database holds.
//! Names, types and labels are fixed by docs/contract.md ("Metrics").
//!
//! A leaf: it imports nothing of the crate above `rules`, so `store`,
//! `poller` and `http` can all use it. One registry per `Application` (not
//! a global), so that two services in one process count apart.
//!
//! Must never: take a label value that is not from a small fixed set (an
//! order id, a request id, an error text), or block (every update is an
//! atomic add).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::rules::inbound::Outcome;
use crate::rules::{Status, Vendor};

/// `haoka_sync_callback_duration_seconds`: 1 ms to 10 s. An answer comes
/// after a commit (a few ms when healthy); the vendor's own timeout is a
/// few seconds, so the top buckets show answers it may not have waited for.
pub const CALLBACK_SECONDS_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `haoka_sync_ingest_batch_size`: powers of two up to 1024 (the default
/// `INGEST_MAX_BATCH` is 256).
pub const BATCH_SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// What a refresh read from the database (`store::metrics::refresh`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbGauges {
    /// Orders per vendor and status (only the pairs that have any).
    pub orders: Vec<(Vendor, Status, i64)>,
    /// Per vendor: orders due now; None when this refresh did not count
    /// them (`count_due_now`), and the gauge keeps the last count.
    pub due: Option<Vec<(Vendor, i64)>>,
    /// Per vendor: the earliest next check of any tracked order.
    pub next_check: Vec<(Vendor, DateTime<Utc>)>,
    /// Per vendor: the last `applied` or `duplicate` callback, when one was
    /// ever heard.
    pub last_callback: Vec<(Vendor, DateTime<Utc>)>,
    /// Vendors with a callback gap open (`callback_gaps.closed_at` null).
    pub gaps_open: Vec<Vendor>,
    /// Vendors whose polling is paused now.
    pub paused: Vec<Vendor>,
    /// When the last complete prune (`retention_runs`) started.
    pub last_pruned: Option<DateTime<Utc>>,
    /// Until when every partitioned table has its partitions.
    pub partitions_until: Option<DateTime<Utc>>,
    /// Per forwarding target.
    pub forward: Vec<ForwardGauge>,
    /// The time the refresh judged "now" by.
    pub now: DateTime<Utc>,
}

/// A forwarding target's deliveries, as the database has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForwardGauge {
    pub target_id: i64,
    pub pending: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
    pub failing: bool,
    pub exhausted: i64,
}

/// Every (vendor, status) pair with its count, zero where the database has
/// none, so that a status that empties reads 0 rather than vanishing.
pub fn order_series(counts: &[(Vendor, Status, i64)]) -> Vec<(Vendor, Status, i64)> {
    let mut by: BTreeMap<(Vendor, &str), i64> = BTreeMap::new();
    for (v, s, n) in counts {
        *by.entry((*v, s.as_str())).or_default() += n;
    }
    Vendor::ALL
        .iter()
        .flat_map(|v| Status::ALL.iter().map(move |s| (*v, *s)))
        .map(|(v, s)| (v, s, by.get(&(v, s.as_str())).copied().unwrap_or(0)))
        .collect()
}

/// How much of the time counting the due orders may take, at most: the
/// count is O(due), and after a callback gap the sweep can make millions of
/// orders due at once (hours of backlog for the per-minute budget).
pub const DUE_COUNT_DUTY: u32 = 100;

/// A count of the due orders this fast is made at every refresh.
pub const DUE_COUNT_CHEAP: Duration = Duration::from_millis(100);

/// Whether a refresh, `since` after the last count of the due orders that
/// took `last_cost` (None: never counted), counts them again: every refresh
/// while that is cheap (`DUE_COUNT_CHEAP`), else once the count takes at
/// most 1 / `DUE_COUNT_DUTY` of the time since the last one (a count of
/// 400 ms: every 40 s).
pub fn count_due_now(last_cost: Option<Duration>, since: Duration, every: Duration) -> bool {
    last_cost.is_none_or(|c| {
        c <= DUE_COUNT_CHEAP || c.saturating_mul(DUE_COUNT_DUTY) <= since.max(every)
    })
}

/// How long the longest-waiting due order has been due at `now`: zero when
/// nothing is due (the earliest next check is still ahead, or none).
pub fn oldest_due_age(oldest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> f64 {
    oldest
        .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// Unix time in seconds, with the fraction.
fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The registry and its handles. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    callbacks: IntCounterVec,
    callbacks_unstored: IntCounterVec,
    callback_duration: HistogramVec,
    ingest_batch: Histogram,
    vendor_calls: IntCounterVec,
    deliveries: IntCounterVec,
    forward_pending: IntGaugeVec,
    forward_oldest: GaugeVec,
    forward_failing: IntGaugeVec,
    forward_exhausted: IntGaugeVec,
    forward_yielding: IntGauge,
    orders: IntGaugeVec,
    orders_due: IntGaugeVec,
    oldest_due: GaugeVec,
    last_callback: GaugeVec,
    gap_open: IntGaugeVec,
    paused: IntGaugeVec,
    db_up: IntGauge,
    /// Whether the last refresh reached the database.
    refresh_ok: AtomicBool,
    refreshed_at: Gauge,
    refresh_seconds: Gauge,
    last_pruned: Gauge,
    partitions_until: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Register `m` and hand it back; the definitions are constants, so a
/// failure is a programming error a test catches.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("metric definitions are valid and distinct");
    m
}

impl Metrics {
    /// A fresh registry. Families with labels start with the series that
    /// are known up front (callbacks of every outcome at 0), so that
    /// `rate()` and alerts see them from the first scrape.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
            )
        };
        Metrics {
            callbacks: counter(
                "haoka_sync_callbacks_total",
                "Callback requests stored, by vendor and inbound_callbacks.outcome.",
                &["vendor", "outcome"],
            ),
            callbacks_unstored: counter(
                "haoka_sync_callbacks_unstored_total",
                "Callback requests answered 503 without being stored (database unavailable); the sender retries.",
                &["vendor"],
            ),
            callback_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "haoka_sync_callback_duration_seconds",
                        "Callback requests from received to answered.",
                    )
                    .buckets(CALLBACK_SECONDS_BUCKETS.to_vec()),
                    &["vendor"],
                )
                .expect("valid histogram"),
            ),
            ingest_batch: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "haoka_sync_ingest_batch_size",
                        "Callbacks committed per group commit.",
                    )
                    .buckets(BATCH_SIZE_BUCKETS.to_vec()),
                )
                .expect("valid histogram"),
            ),
            vendor_calls: counter(
                "haoka_sync_vendor_calls_total",
                "Vendor API calls, by vendor, api and outcome (as vendor_calls records them; logins too).",
                &["vendor", "api", "outcome"],
            ),
            deliveries: counter(
                "haoka_sync_deliveries_total",
                "Forwarding attempts, by target id and outcome (delivered, failed, exhausted; lease_lost when another process took a slow one over).",
                &["target", "outcome"],
            ),
            forward_pending: int_gauge(
                "haoka_sync_deliveries_pending",
                "Deliveries waiting to be sent (or retried), per target (from the database).",
                &["target"],
            ),
            forward_oldest: gauge(
                "haoka_sync_deliveries_oldest_pending_age_seconds",
                "How long the oldest pending delivery of a target has waited since its change (from the database).",
                &["target"],
            ),
            forward_failing: int_gauge(
                "haoka_sync_forward_target_failing",
                "1 while a target is marked failing (an hour of failures; probed gently) (from the database).",
                &["target"],
            ),
            forward_exhausted: int_gauge(
                "haoka_sync_deliveries_exhausted",
                "Deliveries whose retries ran out, kept until redelivered or pruned, per target (from the database).",
                &["target"],
            ),
            orders: int_gauge(
                "haoka_sync_orders",
                "Orders per vendor and normalized status (from the database).",
                &["vendor", "status"],
            ),
            orders_due: int_gauge(
                "haoka_sync_orders_due",
                "Orders due for a check now (from the database).",
                &["vendor"],
            ),
            oldest_due: gauge(
                "haoka_sync_oldest_due_age_seconds",
                "How long the longest-waiting due order has been due (0 when none is).",
                &["vendor"],
            ),
            last_callback: gauge(
                "haoka_sync_last_callback_timestamp_seconds",
                "Unix time of the last applied or duplicate callback (from the database).",
                &["vendor"],
            ),
            gap_open: int_gauge(
                "haoka_sync_callback_gap_open",
                "1 while a callback gap is open (callback_gaps.closed_at is null).",
                &["vendor"],
            ),
            paused: int_gauge(
                "haoka_sync_vendor_paused",
                "1 while polling of the vendor is paused (vendor_pauses).",
                &["vendor"],
            ),
            forward_yielding: reg(
                &r,
                IntGauge::new(
                    "haoka_sync_forward_yielding",
                    "1 while forwarding gives way to callbacks (the callback writers are busy at least FORWARD_YIELD_AT percent of the time and callbacks queue for them): one delivery at a time, 10 a second.",
                )
                .expect("valid gauge"),
            ),
            db_up: reg(
                &r,
                IntGauge::new(
                    "haoka_sync_db_up",
                    "1 when the database answers: the prober says so and the last refresh of the database gauges reached it.",
                )
                .expect("valid gauge"),
            ),
            refresh_ok: AtomicBool::new(false),
            refreshed_at: reg(
                &r,
                Gauge::new(
                    "haoka_sync_db_refresh_timestamp_seconds",
                    "Unix time of the last successful refresh of the database gauges.",
                )
                .expect("valid gauge"),
            ),
            refresh_seconds: reg(
                &r,
                Gauge::new(
                    "haoka_sync_db_refresh_duration_seconds",
                    "How long the last refresh of the database gauges took.",
                )
                .expect("valid gauge"),
            ),
            last_pruned: reg(
                &r,
                Gauge::new(
                    "haoka_sync_retention_last_run_timestamp_seconds",
                    "Unix time the last complete prune (RETENTION, retention_runs) started; 0 before the first.",
                )
                .expect("valid gauge"),
            ),
            partitions_until: reg(
                &r,
                Gauge::new(
                    "haoka_sync_partitions_until_timestamp_seconds",
                    "Unix time until which inbound_callbacks and vendor_calls have partitions; a row after it cannot be stored.",
                )
                .expect("valid gauge"),
            ),
            registry: r,
        }
    }

    /// Start the series of a vendor that receives callbacks at zero.
    pub fn callback_vendor(&self, vendor: Vendor) {
        for o in Outcome::ALL {
            self.callbacks
                .with_label_values(&[vendor.as_str(), o.as_str()]);
        }
        self.callbacks_unstored
            .with_label_values(&[vendor.as_str()]);
        self.callback_duration.with_label_values(&[vendor.as_str()]);
    }

    /// Start a vendor API's successful calls at zero.
    pub fn vendor_api(&self, vendor: Vendor, api: &'static str) {
        self.vendor_calls
            .with_label_values(&[vendor.as_str(), api, "ok"]);
    }

    /// A callback request committed with this outcome (once per stored
    /// row; never for a stored request judged again).
    pub fn callback_stored(&self, vendor: &str, outcome: Outcome) {
        self.callbacks
            .with_label_values(&[vendor, outcome.as_str()])
            .inc();
    }

    /// A callback request that could not be stored (answered 503).
    pub fn callback_unstored(&self, vendor: Vendor) {
        self.callbacks_unstored
            .with_label_values(&[vendor.as_str()])
            .inc();
    }

    /// A callback request answered after `took`.
    pub fn callback_answered(&self, vendor: Vendor, took: Duration) {
        self.callback_duration
            .with_label_values(&[vendor.as_str()])
            .observe(took.as_secs_f64());
    }

    /// One group commit of `n` callbacks.
    pub fn ingest_batch(&self, n: usize) {
        self.ingest_batch.observe(n as f64);
    }

    /// A vendor call recorded with `outcome` (`vendor_calls.outcome`).
    pub fn vendor_call(&self, vendor: Vendor, api: &str, outcome: &str) {
        self.vendor_calls
            .with_label_values(&[vendor.as_str(), api, outcome])
            .inc();
    }

    /// A forwarding attempt to target `target` ended with `outcome`.
    /// Forwarding gives way to callbacks (1) or runs at full speed (0).
    pub fn forward_yielding(&self, yielding: bool) {
        self.forward_yielding.set(i64::from(yielding));
    }

    pub fn delivery(&self, target: i64, outcome: &str) {
        self.deliveries
            .with_label_values(&[&target.to_string(), outcome])
            .inc();
    }

    /// The database answered a refresh that took `took`: set every gauge.
    pub fn set_db(&self, g: &DbGauges, took: Duration) {
        for (v, s, n) in order_series(&g.orders) {
            self.orders
                .with_label_values(&[v.as_str(), s.as_str()])
                .set(n);
        }
        for v in Vendor::ALL {
            if let Some(due) = &g.due {
                let n = due.iter().find(|(d, _)| *d == v).map_or(0, |(_, n)| *n);
                self.orders_due.with_label_values(&[v.as_str()]).set(n);
            }
            let next = g.next_check.iter().find(|(d, _)| *d == v).map(|(_, t)| *t);
            self.oldest_due
                .with_label_values(&[v.as_str()])
                .set(oldest_due_age(next, g.now));
            self.gap_open
                .with_label_values(&[v.as_str()])
                .set(i64::from(g.gaps_open.contains(&v)));
            self.paused
                .with_label_values(&[v.as_str()])
                .set(i64::from(g.paused.contains(&v)));
        }
        for (v, t) in &g.last_callback {
            self.last_callback
                .with_label_values(&[v.as_str()])
                .set(unix_seconds(*t));
        }
        self.refresh_ok.store(true, Ordering::Relaxed);
        self.db_up.set(1);
        self.refreshed_at.set(unix_seconds(g.now));
        self.refresh_seconds.set(took.as_secs_f64());
        self.last_pruned
            .set(g.last_pruned.map_or(0.0, unix_seconds));
        for f in &g.forward {
            let t = f.target_id.to_string();
            self.forward_pending.with_label_values(&[&t]).set(f.pending);
            let age = f.oldest_pending.map_or(0.0, |o| {
                (g.now - o).num_milliseconds().max(0) as f64 / 1000.0
            });
            self.forward_oldest.with_label_values(&[&t]).set(age);
            self.forward_failing
                .with_label_values(&[&t])
                .set(i64::from(f.failing));
            self.forward_exhausted
                .with_label_values(&[&t])
                .set(f.exhausted);
        }
        self.partitions_until
            .set(g.partitions_until.map_or(0.0, unix_seconds));
    }

    /// The database did not answer a refresh: the other gauges keep the
    /// last values it gave.
    pub fn set_db_down(&self) {
        self.refresh_ok.store(false, Ordering::Relaxed);
        self.db_up.set(0);
    }

    /// What the database prober says now: `haoka_sync_db_up` is 1 only
    /// while it says up and the last refresh reached the database.
    pub fn set_db_health(&self, up: bool) {
        let ok = up && self.refresh_ok.load(Ordering::Relaxed);
        self.db_up.set(i64::from(ok));
    }

    /// Whether the last refresh reached the database.
    pub fn db_up(&self) -> bool {
        self.db_up.get() == 1
    }

    /// The text exposition format, and its content type.
    pub fn render(&self) -> (String, &'static str) {
        let encoder = TextEncoder::new();
        let mut buf = Vec::new();
        // Encoding our own families into memory cannot fail.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        (
            String::from_utf8_lossy(&buf).into_owned(),
            prometheus::TEXT_FORMAT,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vendor() -> impl Strategy<Value = Vendor> {
        prop::sample::select(Vendor::ALL.to_vec())
    }

    fn status() -> impl Strategy<Value = Status> {
        prop::sample::select(Status::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn order_series_has_every_pair_once_with_the_counts_given(
            counts in prop::collection::vec((vendor(), status(), 0i64..1_000_000), 0..40)
        ) {
            let series = order_series(&counts);
            prop_assert_eq!(series.len(), Vendor::ALL.len() * Status::ALL.len());
            let pairs: std::collections::BTreeSet<_> =
                series.iter().map(|(v, s, _)| (*v, s.as_str())).collect();
            prop_assert_eq!(pairs.len(), series.len());
            for (v, s, n) in &series {
                let want: i64 = counts.iter().filter(|(cv, cs, _)| cv == v && cs == s).map(|c| c.2).sum();
                prop_assert_eq!(*n, want);
            }
        }

        #[test]
        fn counting_the_due_orders_takes_at_most_a_hundredth_of_the_time(
            cost_ms in 0u64..100_000, since_ms in 0u64..10_000_000, every_s in 1u64..3600
        ) {
            let (cost, since, every) = (
                Duration::from_millis(cost_ms),
                Duration::from_millis(since_ms),
                Duration::from_secs(every_s),
            );
            let counts = count_due_now(Some(cost), since, every);
            if cost <= DUE_COUNT_CHEAP {
                prop_assert!(counts, "a cheap count is never skipped");
            } else if counts {
                // A costly count's share of the time since the last one.
                prop_assert!(cost_ms * u64::from(DUE_COUNT_DUTY) <= since.max(every).as_millis() as u64);
            } else {
                prop_assert!(cost * DUE_COUNT_DUTY > since.max(every));
            }
        }

        #[test]
        fn the_oldest_due_age_is_never_negative_and_counts_from_the_oldest(
            offset in -1_000_000i64..1_000_000
        ) {
            let now = Utc::now();
            let oldest = now - chrono::Duration::milliseconds(offset);
            let age = oldest_due_age(Some(oldest), now);
            prop_assert!(age >= 0.0);
            prop_assert_eq!(age, offset.max(0) as f64 / 1000.0);
        }
    }

    #[test]
    fn nothing_due_is_age_zero() {
        assert_eq!(oldest_due_age(None, Utc::now()), 0.0);
    }

    #[test]
    fn a_fresh_registry_shows_the_callback_series_at_zero_and_no_db_gauges() {
        let m = Metrics::new();
        m.callback_vendor(Vendor::Haoka172);
        let (text, ct) = m.render();
        assert!(ct.starts_with("text/plain; version=0.0.4"));
        assert!(text.contains(
            "haoka_sync_callbacks_total{outcome=\"bad_signature\",vendor=\"haoka172\"} 0"
        ));
        assert!(text.contains("haoka_sync_db_up 0"), "{text}");
        assert!(
            !text.contains("haoka_sync_orders{"),
            "no refresh yet: {text}"
        );
    }

    #[test]
    fn set_db_zero_fills_and_marks_the_database_up() {
        let m = Metrics::new();
        let now = Utc::now();
        m.set_db(
            &DbGauges {
                orders: vec![(Vendor::Haoka172, Status::Shipped, 3)],
                due: Some(vec![(Vendor::Haoka172, 2)]),
                next_check: vec![
                    (Vendor::Haoka172, now - chrono::Duration::seconds(90)),
                    (Vendor::Damaijia, now + chrono::Duration::seconds(90)),
                ],
                last_callback: vec![],
                gaps_open: vec![Vendor::Haoka172],
                paused: vec![Vendor::Damaijia],
                last_pruned: None,
                partitions_until: Some(now + chrono::Duration::seconds(100)),
                forward: vec![],
                now,
            },
            Duration::from_millis(3),
        );
        let (text, _) = m.render();
        for line in [
            "haoka_sync_orders{status=\"shipped\",vendor=\"haoka172\"} 3",
            "haoka_sync_orders{status=\"new\",vendor=\"damaijia\"} 0",
            "haoka_sync_orders_due{vendor=\"haoka172\"} 2",
            "haoka_sync_orders_due{vendor=\"damaijia\"} 0",
            "haoka_sync_oldest_due_age_seconds{vendor=\"haoka172\"} 90",
            "haoka_sync_oldest_due_age_seconds{vendor=\"damaijia\"} 0",
            "haoka_sync_callback_gap_open{vendor=\"haoka172\"} 1",
            "haoka_sync_vendor_paused{vendor=\"damaijia\"} 1",
            "haoka_sync_vendor_paused{vendor=\"haoka172\"} 0",
            "haoka_sync_db_up 1",
            "haoka_sync_retention_last_run_timestamp_seconds 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("haoka_sync_last_callback_timestamp_seconds{"));
        m.set_db_down();
        assert!(!m.db_up());
        // A refresh that did not count the due orders keeps the last count.
        m.set_db(
            &DbGauges {
                due: None,
                now,
                ..DbGauges::default()
            },
            Duration::from_millis(1),
        );
        let (text, _) = m.render();
        assert!(text.contains("haoka_sync_orders_due{vendor=\"haoka172\"} 2"));
        assert!(m.db_up());
    }

    #[test]
    fn the_due_orders_are_counted_every_refresh_while_cheap() {
        let every = Duration::from_secs(5);
        assert!(count_due_now(None, Duration::ZERO, every), "never counted");
        assert!(count_due_now(Some(Duration::from_millis(90)), every, every));
        assert!(!count_due_now(
            Some(Duration::from_millis(400)),
            every,
            every
        ));
        assert!(count_due_now(
            Some(Duration::from_millis(400)),
            Duration::from_secs(40),
            every
        ));
    }
}
