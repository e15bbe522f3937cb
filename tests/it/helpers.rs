//! Test scaffolding: a fresh database per test (created, migrated, dropped
//! on `Drop`), the app on port 0 (alone or polling the vendor simulator),
//! signed 172 callbacks, and a TCP proxy in front of PostgreSQL that can be
//! cut and restored.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use haoka_sync::config::{Config, DatabaseUrl};
use haoka_sync::db;
use haoka_sync::sim::{SimConfig, Simulator};
use haoka_sync::startup::Application;
use haoka_sync::vendors::haoka172::sign::CallbackKey;
use serde_json::{json, Value};

pub const SECRET: &str = "0123456789abcdef0123456789abcdef";
pub const SUCCESS: &str = r#"{"code":0,"message":"上传成功"}"#;

/// Admin connection for creating test databases.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The migrated template every test database is cloned from, named after
/// the migrations' contents (a changed migration gets a new one) and the
/// month (its partitions reach from 16 months back to 2 ahead).
fn template_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut files: Vec<_> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
        files.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for dir in files {
            dir.file_name().hash(&mut h);
            std::fs::read(dir.join("up.sql"))
                .unwrap_or_default()
                .hash(&mut h);
        }
        chrono::Utc::now().format("%Y-%m").to_string().hash(&mut h);
        format!("haoka_test_tpl_{:016x}", h.finish())
    })
}

/// The template, made once per test process (see `build_template`).
fn template() -> &'static str {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| build_template(template_name()));
    template_name()
}

/// Make the template `name` if it is missing: under a temporary name,
/// renamed when complete, under an advisory lock (several test processes
/// may start at once); older templates are dropped.
fn build_template(name: &str) {
    let mut c = PgConnection::establish(&admin_url()).expect("connect to the admin database");
    c.batch_execute("SELECT pg_advisory_lock(7217209999)")
        .unwrap();
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let existing: Vec<String> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'haoka_test_tpl_%'")
            .load::<Name>(&mut c)
            .unwrap()
            .into_iter()
            .map(|n| n.datname)
            .collect();
    if !existing.iter().any(|e| e == name) {
        let building = format!("{name}_building");
        let _ = c.batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
        ));
        let admin = DatabaseUrl::parse(&admin_url()).unwrap();
        let url = admin.with_database(&building);
        db::prepare(&url).expect("create and migrate the template");
        // Tests backdate rows: the partitions of the past months too.
        let now = chrono::Utc::now();
        let mut t = PgConnection::establish(url.expose()).unwrap();
        haoka_sync::store::retention::ensure_partitions(
            &mut t,
            now - chrono::Duration::days(16 * 31),
            now + chrono::Duration::days(62),
        )
        .expect("create the template's partitions");
        drop(t);
        c.batch_execute(&format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        ))
        .unwrap();
        for old in existing.iter().filter(|e| *e != name) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)"));
        }
    }
    c.batch_execute("SELECT pg_advisory_unlock(7217209999)")
        .unwrap();
}

/// A database of this test's own, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: DatabaseUrl,
}

impl TestDb {
    /// A fresh database cloned from the migrated template (made once per
    /// migration set, see `template`): cheaper than migrating each one as
    /// the migrations grow, and every test starts from the same schema.
    pub fn new() -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "haoka_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            nanos
        );
        let admin = DatabaseUrl::parse(&admin_url()).unwrap();
        let url = admin.with_database(&name);
        let mut c = PgConnection::establish(&admin_url()).expect("connect to the admin database");
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{}\"", template());
        let mut attempt = 0;
        while let Err(e) = c.batch_execute(&create) {
            // The tests of a checkout with other migrations, sharing this
            // server, dropped our template as an older one: make it again.
            assert!(
                attempt < 3 && e.to_string().contains("does not exist"),
                "create the test database from the template: {e}"
            );
            attempt += 1;
            build_template(template_name());
        }
        TestDb { name, url }
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(self.url.expose()).expect("connect to test db")
    }

    /// This database reached through another port (the proxy).
    pub fn url_via(&self, port: u16) -> String {
        let mut u = url::Url::parse(self.url.expose()).unwrap();
        u.set_port(Some(port)).unwrap();
        u.to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&admin_url()) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub db: TestDb,
    pub client: reqwest::Client,
    pub key: CallbackKey,
    pub poller: std::sync::Arc<haoka_sync::poller::Poller>,
    /// The database's health as the app sees it.
    pub health: std::sync::Arc<haoka_sync::db::DbHealth>,
}

impl TestApp {
    /// The app with the synthetic secret, on a fresh database.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(overrides: &[(&str, &str)]) -> TestApp {
        Self::spawn_on(TestDb::new(), None, overrides).await
    }

    /// `db_url` overrides how the app reaches the database (e.g. a proxy).
    pub async fn spawn_on(
        db: TestDb,
        db_url: Option<String>,
        overrides: &[(&str, &str)],
    ) -> TestApp {
        let url = db_url.unwrap_or_else(|| db.url.expose().to_owned());
        let mut vars: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", &url),
            ("HAOKA_SYNC_BIND", "127.0.0.1:0"),
            ("HAOKA172_SECRET", SECRET),
            ("HAOKA172_USER_ID", "demo"),
            ("DB_TIMEOUT_SECS", "1"),
            // No stray passes during tests; a test that wants cron sets it.
            ("POLL_CRON", "0 0 0 1 1 *"),
            ("ADMIN_TOKEN", ADMIN),
        ];
        vars.extend_from_slice(overrides);
        let config = Config::with(&vars).expect("test config");
        let app = Application::build(&config).expect("build app");
        let address = format!("http://127.0.0.1:{}", app.port());
        let poller = app.poller();
        let health = std::sync::Arc::clone(app.pool().health());
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            db,
            client: reqwest::Client::new(),
            key: CallbackKey::from_secret(SECRET),
            poller,
            health,
        }
    }

    pub async fn post_callback(&self, body: &Value, sign: Option<&str>) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}/callbacks/haoka172", self.address))
            .json(body);
        if let Some(s) = sign {
            req = req.header("sign", s);
        }
        let resp = req.send().await.expect("send callback");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: Vec<u8>,
        sign: Option<&str>,
    ) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}/callbacks/haoka172", self.address))
            .header("content-type", content_type)
            .body(body);
        if let Some(s) = sign {
            req = req.header("sign", s);
        }
        let resp = req.send().await.expect("send callback");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// A callback signed over `OrderNo`, posted as JSON.
    pub async fn send(&self, request_id: &str, order_no: &str, label: &str) -> (u16, String) {
        let body = callback(request_id, order_no, label);
        self.post_callback(&body, Some(&self.key.encrypt(order_no)))
            .await
    }
}

/// Send every (RequidId, order, label) at once (they share group
/// commits); each must be acknowledged.
pub async fn send_all(app: &TestApp, cbs: &[(String, String, &str)]) {
    let sent = cbs.iter().map(|(rid, o, label)| app.send(rid, o, label));
    for (status, body) in futures_util::future::join_all(sent).await {
        assert_eq!(status, 200, "{body}");
    }
}

/// The simulator as the tests drive it: no lifecycle orders (a test scripts
/// what each vendor answers), the tests' 172 credentials.
pub fn sim_config() -> SimConfig {
    SimConfig {
        haoka172_orders: 0,
        damaijia_orders: 0,
        user_id: "demo".into(),
        secret: SECRET.into(),
        ..SimConfig::default()
    }
}

pub async fn start_sim(cfg: SimConfig) -> Simulator {
    Simulator::start(cfg).await.expect("start the simulator")
}

impl TestApp {
    /// The app polling the simulator's 172 on 127.0.0.1, with `extra`
    /// configuration.
    pub async fn with_sim(extra: &[(&str, &str)]) -> (TestApp, Simulator) {
        let sim = start_sim(sim_config()).await;
        let mut env = sim.haoka172().env();
        env.extend_from_slice(extra);
        (TestApp::spawn_with(&env).await, sim)
    }

    /// Register 172 orders through the admin API.
    pub async fn track(&self, ids: &[&str]) {
        self.track_for("haoka172", ids).await
    }

    pub async fn track_for(&self, vendor: &str, ids: &[&str]) {
        let r = self
            .client
            .post(format!("{}/api/orders", self.address))
            .bearer_auth(ADMIN)
            .json(&json!({"vendor": vendor, "order_ids": ids}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "track: {}", r.status());
    }

    /// One 172 pass now.
    pub async fn poll(&self) -> haoka_sync::poller::PassSummary {
        self.poll_vendor(haoka_sync::vendors::Vendor::Haoka172)
            .await
    }

    pub async fn poll_vendor(
        &self,
        v: haoka_sync::vendors::Vendor,
    ) -> haoka_sync::poller::PassSummary {
        let mut r = self
            .poller
            .run_pass(Some(v))
            .await
            .expect("no pass running");
        r.remove(0).expect("pass succeeds")
    }

    /// Pretend time passed: every scheduled order is due now.
    pub fn make_all_due(&self) {
        let mut c = self.db.conn();
        c.batch_execute("UPDATE order_polls SET next_check_at = now() - interval '1 second' WHERE next_check_at IS NOT NULL")
            .unwrap();
    }
}

pub const ADMIN: &str = "admin-token";

/// For tests about something else than the security rules: a callback that
/// makes its order terminal applies at once instead of waiting for a
/// confirming query (the default holds it; see `security`).
pub const CONFIRM_OFF: (&str, &str) = ("HAOKA172_CONFIRM_TERMINAL", "off");

/// Every overdue time zero: all tracked non-terminal orders are due.
pub const ZERO_OVERDUE: &str = "new=0,pending=0,submitted=0,shipped=0,completed=0,unknown=0";

/// A callback envelope with `Data` as a JSON string.
pub fn callback(request_id: &str, order_no: &str, label: &str) -> Value {
    callback_with(request_id, order_no, label, json!({}))
}

pub fn callback_with(request_id: &str, order_no: &str, label: &str, extra: Value) -> Value {
    let mut data = json!({
        "OrderNo": order_no,
        "OrderNo172": format!("mlkj{order_no}"),
        "OrderStatus": label,
        "ThirdPhone": "13012345678",
        "Remark": "",
        "ExpressName": null,
        "ExpressCode": null,
        "CardStatus": null,
        "ActiveTime": null,
        "IsFirstCharge": 0,
        "FirstCharge": ""
    });
    if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
        d.extend(e);
    }
    json!({"RequidId": request_id, "Data": data.to_string()})
}

// ---- reading the database in assertions ----

#[derive(Debug, QueryableByName)]
pub struct OrderRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub vendor_status: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub unknown_vendor_status: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
    pub first_charge: Option<bool>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub fn order(conn: &mut PgConnection, order_id: &str) -> Option<OrderRow> {
    diesel::sql_query(
        "SELECT status, vendor_status, unknown_vendor_status, first_charge, updated_at \
         FROM orders WHERE vendor = 'haoka172' AND order_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(order_id)
    .get_result(conn)
    .optional()
    .unwrap()
}

#[derive(Debug, QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// `SELECT count(*) ...` for assertions.
pub fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n
}

#[derive(Debug, QueryableByName)]
pub struct InboundRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub outcome: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub request_id: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub sign_matched: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub body: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub body_size: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub body_truncated: bool,
}

/// Inbound rows, oldest first.
pub fn inbound(conn: &mut PgConnection) -> Vec<InboundRow> {
    diesel::sql_query(
        "SELECT outcome, request_id, error, sign_matched, body, body_size, body_truncated \
         FROM inbound_callbacks ORDER BY id",
    )
    .load(conn)
    .unwrap()
}

// ---- a cuttable path to PostgreSQL ----

/// Forwards 127.0.0.1:<port> to PostgreSQL. `cut` refuses new connections
/// and kills the open ones (the server is gone); `black_hole` keeps
/// accepting and holding connections but forwards nothing either way (a
/// partition, a hung server: the TCP connect succeeds, queries hang);
/// `restore` undoes either (after a black hole, held data flows again, as
/// when a partition heals).
pub struct PgProxy {
    pub port: u16,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    flowing: tokio::sync::watch::Sender<bool>,
    listening: std::sync::atomic::AtomicBool,
}

impl PgProxy {
    pub async fn start() -> PgProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = PgProxy {
            port,
            tasks: Arc::new(Mutex::new(Vec::new())),
            flowing: tokio::sync::watch::channel(true).0,
            listening: std::sync::atomic::AtomicBool::new(true),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let tasks = Arc::clone(&self.tasks);
        let upstream = {
            let u = url::Url::parse(&admin_url()).unwrap();
            format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5432))
        };
        let flowing = self.flowing.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let mut gate = flowing.subscribe();
                let conn = tokio::spawn(async move {
                    // Held, unanswered, while black-holed.
                    if gate.wait_for(|f| *f).await.is_err() {
                        return;
                    }
                    if let Ok(out) = tokio::net::TcpStream::connect(upstream).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = out.into_split();
                        tokio::join!(pump(ri, wo, gate.clone()), pump(ro, wi, gate));
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Refuse new connections and kill the open ones: the database is "down".
    pub fn cut(&self) {
        self.listening
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Accept, but forward nothing: connects succeed, queries hang.
    pub fn black_hole(&self) {
        self.flowing.send_replace(false);
    }

    pub async fn restore(&self) {
        self.flowing.send_replace(true);
        if self
            .listening
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind proxy port: {e}"),
            }
        };
        self.serve(listener);
    }
}

/// Copy one direction, holding each chunk while the gate is closed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if gate.wait_for(|f| *f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
