//! `GET /metrics` against what the database holds: every contract family,
//! counters equal to the rows they count, gauges read from the database
//! (the same from a second service), `haoka_sync_db_up` following the
//! database, and exact order counts whatever writes `orders`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use haoka_sync::config::Config;
use haoka_sync::rules::{Status, Vendor};
use haoka_sync::sim::Answer;
use haoka_sync::startup::Application;
use haoka_sync::store::metrics as mstore;
use serde_json::json;

use crate::helpers::*;

// ---- reading the exposition text ----

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The text format as Prometheus reads it: `# TYPE` lines give each
/// family's type; every other non-comment line is a sample. Label values
/// unescape `\\`, `\"` and `\n`.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

pub fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| bad("TYPE"))?;
            out.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(bad("metric name"));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(r) => parse_labels(r).map_err(bad)?,
            None => (BTreeMap::new(), &line[name_end..]),
        };
        let value = rest
            .trim()
            .split(' ')
            .next()
            .ok_or_else(|| bad("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value"))?,
        };
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// `a="x",b="y"}` and what follows the closing brace.
fn parse_labels(mut r: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = r.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = r.split_once("=\"").ok_or("label without =\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err("bad escape"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unclosed label value"),
            }
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("label name");
        }
        labels.insert(name.to_owned(), value);
        r = &after[end + 1..];
        r = r.strip_prefix(',').unwrap_or(r);
        if !r.starts_with('}') && r.find("=\"").is_none() {
            return Err("after a label value");
        }
    }
}

impl Exposition {
    /// The value of the sample with exactly these labels (0 if absent: an
    /// unset series reads 0 to `sum`, and the counters start at 0).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    pub fn of(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

mod parser_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The test's reader gives back what the crate's encoder wrote,
        /// whatever the label values hold (quotes, backslashes, newlines).
        #[test]
        fn the_reader_reads_back_what_the_encoder_wrote(
            series in prop::collection::btree_map(
                (any::<String>(), "[a-z_]{0,8}"), 0u32..1_000_000, 1..8)
        ) {
            use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
            let r = Registry::new();
            let c = IntCounterVec::new(Opts::new("t_total", "help with \\ and \n"), &["a", "b"]).unwrap();
            r.register(Box::new(c.clone())).unwrap();
            for ((a, b), n) in &series {
                c.with_label_values(&[a.as_str(), b.as_str()]).inc_by(u64::from(*n));
            }
            let mut buf = Vec::new();
            TextEncoder::new().encode(&r.gather(), &mut buf).unwrap();
            let parsed = parse_exposition(&String::from_utf8(buf).unwrap()).unwrap();
            prop_assert_eq!(parsed.types.get("t_total").map(String::as_str), Some("counter"));
            prop_assert_eq!(parsed.samples.len(), series.len());
            for ((a, b), n) in &series {
                prop_assert_eq!(parsed.value("t_total", &[("a", a), ("b", b)]), Some(f64::from(*n)));
            }
        }
    }
}

// ---- the service's metrics ----

/// The families docs/contract.md names, with their types.
const FAMILIES: [(&str, &str); 13] = [
    ("haoka_sync_callbacks_total", "counter"),
    ("haoka_sync_callback_duration_seconds", "histogram"),
    ("haoka_sync_ingest_batch_size", "histogram"),
    ("haoka_sync_vendor_calls_total", "counter"),
    ("haoka_sync_orders", "gauge"),
    ("haoka_sync_orders_due", "gauge"),
    ("haoka_sync_oldest_due_age_seconds", "gauge"),
    ("haoka_sync_last_callback_timestamp_seconds", "gauge"),
    ("haoka_sync_callback_gap_open", "gauge"),
    ("haoka_sync_vendor_paused", "gauge"),
    ("haoka_sync_db_up", "gauge"),
    ("haoka_sync_retention_last_run_timestamp_seconds", "gauge"),
    ("haoka_sync_partitions_until_timestamp_seconds", "gauge"),
];

const LABELS: [&str; 5] = ["vendor", "status", "outcome", "api", "le"];

async fn scrape(client: &reqwest::Client, address: &str) -> Exposition {
    let r = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse_exposition(&r.text().await.unwrap()).unwrap()
}

/// Scrape until the database gauges come from a refresh that started after
/// `after` (Unix seconds).
async fn scrape_refreshed_after(client: &reqwest::Client, address: &str, after: f64) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = scrape(client, address).await;
        let at = m
            .value("haoka_sync_db_refresh_timestamp_seconds", &[])
            .unwrap_or(0.0);
        if at > after {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh after {after} (last {at})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[derive(QueryableByName, Debug)]
struct Grouped {
    #[diesel(sql_type = diesel::sql_types::Text)]
    a: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    b: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    c: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// `SELECT a, b, c, n ...` as a map (queries pad with '' where fewer keys).
fn grouped(conn: &mut PgConnection, sql: &str) -> BTreeMap<(String, String, String), i64> {
    diesel::sql_query(sql)
        .load::<Grouped>(conn)
        .unwrap()
        .into_iter()
        .map(|g| ((g.a, g.b, g.c), g.n))
        .collect()
}

#[derive(QueryableByName)]
struct Epoch {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    t: Option<f64>,
}

fn epoch(conn: &mut PgConnection, sql: &str) -> Option<f64> {
    diesel::sql_query(sql).get_result::<Epoch>(conn).unwrap().t
}

/// Orders due at a fixed past time, so that the backlog and its age do not
/// move while the test reads them.
const DUE_SINCE: &str = "2026-01-01 00:00:00+00";

/// The same database's gauges as `m` shows them, checked against SQL run
/// now (the test holds everything still meanwhile).
fn assert_gauges_match_the_database(m: &Exposition, conn: &mut PgConnection) {
    let orders = grouped(
        conn,
        "SELECT vendor AS a, status AS b, '' AS c, count(*) AS n FROM orders GROUP BY 1, 2",
    );
    let refreshed = m
        .value("haoka_sync_db_refresh_timestamp_seconds", &[])
        .unwrap();
    for v in Vendor::ALL {
        for s in Status::ALL {
            let want = orders
                .get(&(v.as_str().into(), s.as_str().into(), String::new()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                m.value(
                    "haoka_sync_orders",
                    &[("vendor", v.as_str()), ("status", s.as_str())]
                ),
                Some(want as f64),
                "orders {v} {s}"
            );
        }
        let due = count(
            conn,
            &format!(
                "SELECT count(*) AS n FROM order_polls WHERE vendor = '{v}' AND next_check_at <= now()"
            ),
        );
        assert_eq!(
            m.value("haoka_sync_orders_due", &[("vendor", v.as_str())]),
            Some(due as f64),
            "due {v}"
        );
        let oldest = epoch(
            conn,
            &format!("SELECT extract(epoch FROM min(next_check_at))::float8 AS t FROM order_polls WHERE vendor = '{v}' AND next_check_at <= now()"),
        );
        let age = m
            .value(
                "haoka_sync_oldest_due_age_seconds",
                &[("vendor", v.as_str())],
            )
            .unwrap();
        match oldest {
            Some(t) => assert!(
                (age - (refreshed - t)).abs() < 0.01,
                "oldest due {v}: {age} vs {}",
                refreshed - t
            ),
            None => assert_eq!(age, 0.0, "nothing due for {v}"),
        }
        let paused = count(
            conn,
            &format!("SELECT count(*) AS n FROM vendor_pauses WHERE vendor = '{v}' AND paused_until > now()"),
        );
        assert_eq!(
            m.value("haoka_sync_vendor_paused", &[("vendor", v.as_str())]),
            Some(paused as f64),
            "paused {v}"
        );
        let gaps = count(
            conn,
            &format!("SELECT count(*) AS n FROM callback_gaps WHERE vendor = '{v}' AND closed_at IS NULL"),
        );
        assert_eq!(
            m.value("haoka_sync_callback_gap_open", &[("vendor", v.as_str())]),
            Some(gaps.min(1) as f64),
            "gap {v}"
        );
    }
    let last = epoch(
        conn,
        "SELECT extract(epoch FROM max(received_at))::float8 AS t FROM inbound_callbacks \
         WHERE vendor = 'haoka172' AND outcome IN ('applied', 'duplicate')",
    )
    .expect("callbacks were heard");
    let shown = m
        .value(
            "haoka_sync_last_callback_timestamp_seconds",
            &[("vendor", "haoka172")],
        )
        .unwrap();
    assert!(
        (shown - last).abs() < 0.002,
        "last callback {shown} vs {last}"
    );
    assert_eq!(m.value("haoka_sync_db_up", &[]), Some(1.0));
    // The data lifecycle: partitions exist until the end of the newest
    // month of the table that has the fewest; the last prune (serve's own at
    // start, which may not have finished by this refresh).
    let until = epoch(
        conn,
        "SELECT extract(epoch FROM min(u))::float8 AS t FROM (SELECT max(to_ts) AS u          FROM haoka_sync_partitions.bounds GROUP BY parent) p",
    )
    .expect("partitions");
    assert_eq!(
        m.value("haoka_sync_partitions_until_timestamp_seconds", &[]),
        Some(until)
    );
    let pruned = m
        .value("haoka_sync_retention_last_run_timestamp_seconds", &[])
        .unwrap();
    let runs = epoch(
        conn,
        "SELECT extract(epoch FROM max(started_at))::float8 AS t FROM retention_runs",
    );
    assert!(
        pruned == 0.0 || runs.is_some_and(|r| (r - pruned).abs() < 0.002),
        "last prune {pruned} vs {runs:?}"
    );
}

#[tokio::test]
async fn metrics_show_every_family_with_the_counts_the_database_holds() {
    let (app, sim) = TestApp::with_sim(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("METRICS_REFRESH", "1s"),
        CONFIRM_OFF,
    ])
    .await;
    let fake = sim.haoka172();
    fake.answer("T1", Answer::label("已发货"));
    fake.answer("T2", Answer::NotFound);
    fake.answer("T3", Answer::Http(502));
    app.track(&["T1", "T2", "T3"]).await;
    // Good, duplicate, unsigned, badly signed and malformed callbacks.
    assert_eq!(app.send("R1", "C1", "待处理").await.0, 200);
    assert_eq!(app.send("R2", "C2", "已发货").await.0, 200);
    assert_eq!(app.send("R3", "C3", "已结算").await.0, 200);
    assert_eq!(app.send("R1", "C1", "待处理").await.0, 200, "duplicate");
    let cb = callback("R4", "C4", "已发货");
    assert_eq!(app.post_callback(&cb, None).await.0, 401, "unsigned");
    let other = app.key.encrypt("SOMEONE-ELSE");
    assert_eq!(
        app.post_callback(&cb, Some(&other)).await.0,
        401,
        "bad sign"
    );
    let (status, _) = app
        .post_raw("application/json", b"{not json".to_vec(), None)
        .await;
    assert_eq!(status, 400, "malformed");
    let (status, _) = app
        .post_callback(&json!({"RequidId": "R5"}), Some(&app.key.encrypt("C5")))
        .await;
    assert_eq!(status, 400, "Data missing");
    // One poll pass: GetOrderInfo answers, a not found and an HTTP error.
    let s = app.poll().await;
    assert!(s.queried >= 3, "{s}");
    // Ops' own SQL, a pause and an open gap; the backlog pinned in time.
    let mut c = app.db.conn();
    c.batch_execute(&format!(
        "UPDATE orders SET status = 'cancelled' WHERE order_id = 'C2'; \
         INSERT INTO orders (vendor, order_id, status) VALUES ('damaijia', 'PDD1', 'pending'); \
         INSERT INTO vendor_pauses (vendor, paused_until, reason) VALUES ('damaijia', now() + interval '1 hour', 'test'); \
         INSERT INTO callback_gaps (vendor, silent_since, detected_at, expected_callbacks) VALUES ('haoka172', now() - interval '2 hours', now(), 20); \
         UPDATE order_polls SET next_check_at = now() + interval '1 day'; \
         UPDATE order_polls SET next_check_at = '{DUE_SINCE}' WHERE order_id IN ('T1', 'C1')"
    ))
    .unwrap();
    let m = scrape_refreshed_after(&app.client, &app.address, unix_now()).await;

    for (name, kind) in FAMILIES {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
        let present = m
            .samples
            .iter()
            .any(|s| s.name == name || s.name.starts_with(&format!("{name}_")));
        assert!(present, "{name} has no sample");
    }
    // Callbacks by outcome: exactly the stored rows, every outcome.
    let stored = grouped(
        &mut c,
        "SELECT vendor AS a, outcome AS b, '' AS c, count(*) AS n FROM inbound_callbacks GROUP BY 1, 2",
    );
    assert!(stored.len() >= 4, "{stored:?}");
    for o in haoka_sync::rules::inbound::Outcome::ALL {
        let want = stored
            .get(&("haoka172".into(), o.as_str().into(), String::new()))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            m.value(
                "haoka_sync_callbacks_total",
                &[("vendor", "haoka172"), ("outcome", o.as_str())]
            ),
            Some(want as f64),
            "callbacks {}",
            o.as_str()
        );
    }
    let requests = count(&mut c, "SELECT count(*) AS n FROM inbound_callbacks");
    assert_eq!(requests, 8);
    assert_eq!(
        m.value("haoka_sync_ingest_batch_size_sum", &[]),
        Some(requests as f64),
        "every stored request in one batch"
    );
    assert_eq!(
        m.value(
            "haoka_sync_callback_duration_seconds_count",
            &[("vendor", "haoka172")]
        ),
        Some(requests as f64),
        "every request timed"
    );
    // Vendor calls by api and outcome: exactly the recorded calls.
    let calls = grouped(
        &mut c,
        "SELECT vendor AS a, api AS b, outcome AS c, count(*) AS n FROM vendor_calls GROUP BY 1, 2, 3",
    );
    let outcomes: BTreeSet<&str> = calls.keys().map(|k| k.2.as_str()).collect();
    assert!(
        ["ok", "not_found", "http_error"]
            .iter()
            .all(|o| outcomes.contains(o)),
        "{calls:?}"
    );
    let shown: BTreeMap<(String, String, String), i64> = m
        .of("haoka_sync_vendor_calls_total")
        .into_iter()
        .filter(|s| s.value > 0.0)
        .map(|s| {
            (
                (
                    s.labels["vendor"].clone(),
                    s.labels["api"].clone(),
                    s.labels["outcome"].clone(),
                ),
                s.value as i64,
            )
        })
        .collect();
    assert_eq!(shown, calls);
    assert_gauges_match_the_database(&m, &mut c);
    assert_eq!(
        m.value("haoka_sync_orders_due", &[("vendor", "haoka172")]),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "haoka_sync_orders",
            &[("vendor", "haoka172"), ("status", "cancelled")]
        ),
        Some(1.0),
        "the manual update counts"
    );
    // Labels: only the contract's, never an id.
    let ids = [
        "T1", "T2", "T3", "C1", "C2", "C3", "C4", "C5", "R1", "R2", "R3", "R4", "R5", "PDD1",
    ];
    for s in &m.samples {
        for (k, v) in &s.labels {
            assert!(LABELS.contains(&k.as_str()), "{} has label {k}", s.name);
            assert!(!ids.iter().any(|id| v.contains(id)), "{} {k}={v}", s.name);
        }
    }
}

/// Another service on `db`'s database (not polling), on its own port.
async fn second_service(db: &TestDb) -> String {
    let url = db.url.expose().to_owned();
    let config = Config::with(&[
        ("DATABASE_URL", &url),
        ("HAOKA_SYNC_BIND", "127.0.0.1:0"),
        ("POLL_CRON", "0 0 0 1 1 *"),
        ("METRICS_REFRESH", "1s"),
    ])
    .unwrap();
    let other = Application::build(&config).unwrap();
    let address = format!("http://127.0.0.1:{}", other.port());
    tokio::spawn(other.run_until_stopped());
    address
}

#[tokio::test]
async fn a_second_service_on_the_same_database_shows_the_same_gauges() {
    let app = TestApp::spawn_with(&[("METRICS_REFRESH", "1s"), CONFIRM_OFF]).await;
    let other = second_service(&app.db).await;
    app.track(&["A1", "A2"]).await;
    assert_eq!(app.send("R1", "B1", "已发货").await.0, 200);
    assert_eq!(app.send("R2", "B2", "已完成").await.0, 200);
    let mut c = app.db.conn();
    c.batch_execute(&format!(
        "UPDATE order_polls SET next_check_at = '{DUE_SINCE}' WHERE order_id = 'A1'; \
         INSERT INTO vendor_pauses (vendor, paused_until, reason) VALUES ('haoka172', now() + interval '1 hour', 'test')"
    ))
    .unwrap();
    let after = unix_now();
    let mine = scrape_refreshed_after(&app.client, &app.address, after).await;
    let theirs = scrape_refreshed_after(&app.client, &other, after).await;
    assert_gauges_match_the_database(&mine, &mut c);
    assert_gauges_match_the_database(&theirs, &mut c);
    let gauges = |m: &Exposition| -> Vec<Sample> {
        m.samples
            .iter()
            .filter(|s| {
                [
                    "haoka_sync_orders",
                    "haoka_sync_orders_due",
                    "haoka_sync_last_callback_timestamp_seconds",
                    "haoka_sync_callback_gap_open",
                    "haoka_sync_vendor_paused",
                    "haoka_sync_db_up",
                ]
                .contains(&s.name.as_str())
            })
            .cloned()
            .collect()
    };
    assert_eq!(gauges(&mine), gauges(&theirs));
    // The other service stored nothing itself: its counters say so.
    assert_eq!(
        theirs.value(
            "haoka_sync_callbacks_total",
            &[("vendor", "haoka172"), ("outcome", "applied")]
        ),
        Some(0.0)
    );
    assert_eq!(
        mine.value(
            "haoka_sync_callbacks_total",
            &[("vendor", "haoka172"), ("outcome", "applied")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn db_up_follows_the_database_and_the_last_gauges_stay() {
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let via = db.url_via(proxy.port);
    let app = TestApp::spawn_on(db, Some(via), &[("METRICS_REFRESH", "1s")]).await;
    assert_eq!(app.send("R1", "U1", "待处理").await.0, 200);
    let wait_for = |up: f64| {
        let (client, address) = (app.client.clone(), app.address.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let m = scrape(&client, &address).await;
                if m.value("haoka_sync_db_up", &[]) == Some(up) {
                    return m;
                }
                assert!(Instant::now() < deadline, "db_up never {up}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let before = scrape_refreshed_after(&app.client, &app.address, unix_now()).await;
    assert_eq!(before.value("haoka_sync_db_up", &[]), Some(1.0));
    let pending = |m: &Exposition| {
        m.value(
            "haoka_sync_orders",
            &[("vendor", "haoka172"), ("status", "pending")],
        )
    };
    assert_eq!(pending(&before), Some(1.0));
    proxy.cut();
    let down = wait_for(0.0).await;
    assert_eq!(pending(&down), Some(1.0), "the last values stay");
    proxy.restore().await;
    wait_for(1.0).await;
}

// ---- the order counts the triggers keep ----

#[derive(QueryableByName, Debug)]
struct CountRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    vendor: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn counted(conn: &mut PgConnection) -> BTreeMap<(String, String), i64> {
    diesel::sql_query("SELECT vendor, status, count(*) AS n FROM orders GROUP BY 1, 2")
        .load::<CountRow>(conn)
        .unwrap()
        .into_iter()
        .map(|r| ((r.vendor, r.status), r.n))
        .collect()
}

fn kept(conn: &mut PgConnection) -> BTreeMap<(String, String), i64> {
    mstore::order_counts(conn)
        .unwrap()
        .into_iter()
        .map(|(v, s, n)| ((v.as_str().to_owned(), s.as_str().to_owned()), n))
        .collect()
}

/// A small deterministic generator (the sequence is printed on failure by
/// its seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn order_counts_stay_exact_through_any_mix_of_writes_folds_and_open_transactions() {
    let db = TestDb::new();
    let mut writer = db.conn();
    let mut other = db.conn();
    let mut folder = db.conn();
    let statuses: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
    let vendors = ["haoka172", "damaijia"];
    let seed = 0x5eed_0000_0172;
    let mut rng = Lcg(seed);
    // `other` keeps a transaction open across steps; the folder folds
    // while it is open, and it then commits or rolls back.
    let mut other_open = false;
    for step in 0..120 {
        let v = vendors[rng.next(2) as usize];
        let s = statuses[rng.next(statuses.len() as u64) as usize];
        let t = statuses[rng.next(statuses.len() as u64) as usize];
        let k = rng.next(40);
        let sql = match rng.next(9) {
            0 => format!(
                "INSERT INTO orders (vendor, order_id, status) SELECT '{v}', 'O' || g, '{s}' FROM generate_series({k}, {k} + 5) g ON CONFLICT DO NOTHING"
            ),
            1 => format!(
                "INSERT INTO orders (vendor, order_id, status) SELECT '{v}', 'O' || g, '{s}' FROM generate_series({k}, {k} + 3) g \
                 ON CONFLICT (vendor, order_id) DO UPDATE SET status = '{t}'"
            ),
            2 => format!("UPDATE orders SET status = '{t}' WHERE vendor = '{v}' AND status = '{s}'"),
            3 => format!("UPDATE orders SET status = '{t}' WHERE order_id LIKE 'O{}%'", k % 10),
            4 => "UPDATE orders SET remark = 'touched'".to_owned(),
            5 => format!("DELETE FROM orders WHERE order_id LIKE 'O{}%' AND vendor = '{v}'", k % 10),
            6 if !other_open => "TRUNCATE orders".to_owned(),
            7 => format!(
                "BEGIN; UPDATE orders SET status = '{t}' WHERE vendor = '{v}'; ROLLBACK"
            ),
            _ => format!(
                "WITH x AS (UPDATE orders SET status = '{t}' WHERE order_id = 'O{k}' RETURNING 1) \
                 INSERT INTO orders (vendor, order_id, status) VALUES ('{v}', 'N{step}', '{s}')"
            ),
        };
        writer
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("seed {seed:#x} step {step}: {sql}: {e}"));
        match (other_open, rng.next(4)) {
            (false, 0) => {
                other
                    .batch_execute(&format!(
                        "BEGIN; INSERT INTO orders (vendor, order_id, status) VALUES ('{v}', 'T{step}', '{t}')"
                    ))
                    .unwrap();
                other_open = true;
            }
            (true, 0) => {
                other.batch_execute("COMMIT").unwrap();
                other_open = false;
            }
            (true, 1) => {
                other.batch_execute("ROLLBACK").unwrap();
                other_open = false;
            }
            _ => {}
        }
        if rng.next(3) == 0 {
            folder.transaction(|c| mstore::fold(c).map(|_| ())).unwrap();
        }
        assert_eq!(
            kept(&mut folder),
            counted(&mut folder),
            "seed {seed:#x} step {step} after {sql}"
        );
    }
    if other_open {
        other.batch_execute("COMMIT").unwrap();
    }
    folder.transaction(|c| mstore::fold(c).map(|_| ())).unwrap();
    assert_eq!(kept(&mut folder), counted(&mut folder));
    assert_eq!(
        count(&mut folder, "SELECT count(*) AS n FROM order_count_deltas"),
        0,
        "a fold leaves no delta behind"
    );
}

#[test]
fn only_one_process_folds_at_a_time_and_the_others_still_read_exact_counts() {
    let db = TestDb::new();
    let mut a = db.conn();
    let mut b = db.conn();
    a.batch_execute(
        "INSERT INTO orders (vendor, order_id, status) SELECT 'haoka172', 'F' || g, 'pending' FROM generate_series(1, 7) g",
    )
    .unwrap();
    a.batch_execute("BEGIN").unwrap();
    assert!(mstore::fold(&mut a).unwrap().is_some(), "a folds");
    b.batch_execute("BEGIN").unwrap();
    assert_eq!(mstore::fold(&mut b).unwrap(), None, "b leaves it to a");
    b.batch_execute("UPDATE orders SET status = 'shipped' WHERE order_id = 'F1'")
        .unwrap();
    b.batch_execute("COMMIT").unwrap();
    a.batch_execute("COMMIT").unwrap();
    assert_eq!(kept(&mut b), counted(&mut b));
    assert_eq!(
        kept(&mut b).get(&("haoka172".to_owned(), "shipped".to_owned())),
        Some(&1)
    );
}

#[test]
fn the_last_callback_is_found_once_then_followed_from_where_the_last_look_stopped() {
    let db = TestDb::new();
    let mut c = db.conn();
    let at = |secs_ago: i64, outcome: &str| {
        format!(
            "INSERT INTO inbound_callbacks (vendor, received_at, outcome, headers, body, body_size) \
             VALUES ('haoka172', '2026-06-01 12:00:00+00'::timestamptz - interval '{secs_ago} seconds', '{outcome}', '{{}}', '', 0);"
        )
    };
    let noon: chrono::DateTime<chrono::Utc> = "2026-06-01T12:00:00Z".parse().unwrap();
    let ago = |s: i64| noon - chrono::Duration::seconds(s);
    c.batch_execute(&(at(100, "applied") + &at(50, "bad_signature")))
        .unwrap();
    let mut marks = mstore::HeardMarks::default();
    let mut refresh = |c: &mut PgConnection, count_due: bool| {
        mstore::refresh(c, noon, &[Vendor::Haoka172], &mut marks, count_due).unwrap()
    };
    let (g, counted) = refresh(&mut c, true);
    assert_eq!(g.last_callback, vec![(Vendor::Haoka172, ago(100))]);
    assert!(matches!(counted, Some(mstore::DueCount::Counted(_))));
    assert_eq!(
        g.due,
        Some(vec![(Vendor::Haoka172, 0), (Vendor::Damaijia, 0)])
    );
    // Committed after the look, stamped a little before what it saw: found.
    c.batch_execute(&at(55, "duplicate")).unwrap();
    let (g, counted) = refresh(&mut c, false);
    assert_eq!(g.last_callback, vec![(Vendor::Haoka172, ago(55))]);
    assert_eq!((g.due, counted), (None, None), "not counted this time");
    // Rejected ones move nothing; the next heard one does.
    c.batch_execute(&(at(20, "bad_signature") + &at(10, "not_configured")))
        .unwrap();
    assert_eq!(
        refresh(&mut c, false).0.last_callback,
        vec![(Vendor::Haoka172, ago(55))]
    );
    c.batch_execute(&(at(5, "applied") + &at(1, "malformed")))
        .unwrap();
    assert_eq!(
        refresh(&mut c, false).0.last_callback,
        vec![(Vendor::Haoka172, ago(5))]
    );
}
