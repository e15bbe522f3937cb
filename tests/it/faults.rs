//! Faults with real `serve` processes on one real PostgreSQL: a process
//! killed with SIGKILL under concurrent callbacks loses none it acknowledged;
//! one stopped with SIGTERM answers every request it took and exits 0;
//! three processes polling one database never ask about an order twice at
//! once and keep the per-minute budget together; the orders of a process
//! killed mid-pass go to the others once its lease runs out, and a process
//! too slow for its lease leaves them to whoever claimed them.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz};
use haoka_sync::sim::Answer;
use haoka_sync::vendors::haoka172::sign::CallbackKey;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_haoka-sync");

/// The binary with a clean environment (no developer `.env`).
fn cmd() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    c
}

/// One `serve` process on port 0, its stderr collected. Killed (SIGKILL) and
/// reaped when dropped, so a failed assertion leaves no process behind.
struct Serve {
    name: String,
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Serve {
    /// Start `serve` as `name` (its `HOSTNAME`, so its leases and calls say
    /// who made them) and wait for its `listening on` line.
    fn start(name: &str, db: &TestDb, vars: &[(&str, &str)]) -> Serve {
        let mut c = cmd();
        c.arg("serve")
            .env("DATABASE_URL", db.url.expose())
            .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
            .env("HOSTNAME", name)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("start serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(port) = line
                        .split("listening on 127.0.0.1:")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|p| p.parse::<u16>().ok())
                    {
                        let _ = tx.send(port);
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            })
        };
        let mut serve = Serve {
            name: name.to_owned(),
            child,
            port: 0,
            log,
            reader: Some(reader),
            exited: None,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => serve.port = port,
            Err(_) => panic!("{name} did not start listening:\n{}", serve.log()),
        }
        serve
    }

    fn callback_url(&self) -> String {
        format!("http://127.0.0.1:{}/callbacks/haoka172", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, and reap it.
    fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.exited = Some(self.child.wait().expect("reap"));
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {}", self.pid());
    }

    /// Whether it has exited, without waiting.
    fn has_exited(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited.is_some()
    }

    /// Wait up to `timeout` for it to exit; then its whole log is in.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.exited
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log());
        }
    }
}

/// Poll `cond` every 50 ms until it holds; panic after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `haoka-sync track haoka172 <ids>` on `db`.
fn track(db: &TestDb, ids: &[String], vars: &[(&str, &str)]) {
    let mut c = cmd();
    c.args(["track", "haoka172"])
        .args(ids)
        .env("DATABASE_URL", db.url.expose())
        .env("RUST_LOG", "warn");
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().expect("run track");
    assert!(
        out.status.success(),
        "track: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(QueryableByName)]
struct Str {
    #[diesel(sql_type = Text)]
    s: String,
}

/// The strings a query selects `AS s`.
fn strings(c: &mut PgConnection, sql: &str) -> HashSet<String> {
    diesel::sql_query(sql)
        .load::<Str>(c)
        .unwrap()
        .into_iter()
        .map(|r| r.s)
        .collect()
}

// ---- callbacks under load ----

/// One signed callback, ready to send.
struct Prepared {
    request_id: String,
    sign: String,
    body: String,
}

/// `n` distinct callbacks (distinct RequidIds) for `n / 10` orders, ten each
/// along the non-terminal labels, interleaved so that concurrent requests
/// contend for the same orders.
fn callbacks(prefix: &str, n: usize) -> Vec<Prepared> {
    let key = CallbackKey::from_secret(SECRET);
    let labels = ["待处理", "正在进单", "已提运营商", "已发货", "已完成"];
    let orders = (n / 10).max(1);
    (0..n)
        .map(|i| {
            let order_no = format!("{prefix}O{:04}", i % orders);
            let request_id = format!("{prefix}R{i:05}");
            let label = labels[(i / orders) % labels.len()];
            Prepared {
                sign: key.encrypt(&order_no),
                body: callback(&request_id, &order_no, label).to_string(),
                request_id,
            }
        })
        .collect()
}

/// What the sender saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// 200 with exactly the success body.
    Acked,
    /// Any other answer.
    Answered(u16, String),
    /// No connection: refused at connect.
    Refused(String),
    /// Sent (or being sent) on a connection that broke before an answer.
    CutOff(String),
}

struct Sent {
    index: usize,
    started: Instant,
    reply: Reply,
}

/// `concurrency` senders working through `todo`, as the vendor's push
/// workers would: each request waits for its answer before the sender takes
/// the next one.
struct Load {
    acked: Arc<AtomicUsize>,
    in_flight: Arc<Mutex<HashSet<usize>>>,
    sent: Arc<Mutex<Vec<Sent>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, todo: Arc<Vec<Prepared>>, concurrency: usize) -> Load {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let sent = Arc::new(Mutex::new(Vec::with_capacity(todo.len())));
        let workers = (0..concurrency)
            .map(|_| {
                let (client, url, todo, next) = (
                    client.clone(),
                    url.clone(),
                    Arc::clone(&todo),
                    Arc::clone(&next),
                );
                let (acked, in_flight, sent) = (
                    Arc::clone(&acked),
                    Arc::clone(&in_flight),
                    Arc::clone(&sent),
                );
                tokio::spawn(async move {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(cb) = todo.get(index) else { return };
                        in_flight.lock().unwrap().insert(index);
                        let started = Instant::now();
                        let reply = send(&client, &url, cb).await;
                        if reply == Reply::Acked {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        sent.lock().unwrap().push(Sent {
                            index,
                            started,
                            reply,
                        });
                        in_flight.lock().unwrap().remove(&index);
                    }
                })
            })
            .collect();
        Load {
            acked,
            in_flight,
            sent,
            workers,
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Every request done (answered or failed), in no particular order.
    async fn finish(self) -> Vec<Sent> {
        for w in self.workers {
            w.await.unwrap();
        }
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

async fn send(client: &reqwest::Client, url: &str, cb: &Prepared) -> Reply {
    let r = client
        .post(url)
        .header("sign", &cb.sign)
        .header("content-type", "application/json")
        .body(cb.body.clone())
        .send()
        .await;
    let resp = match r {
        Ok(resp) => resp,
        Err(e) if e.is_connect() => return Reply::Refused(format!("{e:?}")),
        Err(e) => return Reply::CutOff(format!("{e:?}")),
    };
    let status = resp.status().as_u16();
    match resp.text().await {
        Ok(body) if status == 200 && body == SUCCESS => Reply::Acked,
        Ok(body) => Reply::Answered(status, body),
        Err(e) => Reply::CutOff(format!("{e:?}")),
    }
}

/// What the database holds of the callbacks: the RequidIds stored as
/// applied or duplicate, and those with an `order_events` row.
fn stored(c: &mut PgConnection) -> (HashSet<String>, HashSet<String>) {
    let inbound = strings(
        c,
        "SELECT request_id AS s FROM inbound_callbacks \
         WHERE outcome IN ('applied', 'duplicate') AND request_id IS NOT NULL",
    );
    let events = strings(
        c,
        "SELECT request_id AS s FROM order_events WHERE request_id IS NOT NULL",
    );
    (inbound, events)
}

fn ids_of<'a>(
    todo: &'a [Prepared],
    sent: &'a [Sent],
    keep: impl Fn(&Sent) -> bool + 'a,
) -> HashSet<String> {
    sent.iter()
        .filter(|s| keep(s))
        .map(|s| todo[s.index].request_id.clone())
        .collect()
}

const CALLBACK_SERVE: [(&str, &str); 3] = [
    ("HAOKA172_SECRET", SECRET),
    // No pass runs during these tests.
    ("POLL_CRON", "0 0 0 1 1 *"),
    ("DB_TIMEOUT_SECS", "5"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_concurrent_callbacks_loses_no_callback_it_acknowledged() {
    let db = TestDb::new();
    let mut serve = Serve::start("killed", &db, &CALLBACK_SERVE);
    let todo = Arc::new(callbacks("K", 3000));
    let started = Instant::now();
    let load = Load::start(serve.callback_url(), Arc::clone(&todo), 48);
    wait_for(
        "a third of the callbacks acknowledged",
        Duration::from_secs(120),
        || load.acked() >= todo.len() / 3,
    )
    .await;
    let in_flight_at_kill = load.in_flight.lock().unwrap().len();
    serve.kill9();
    let sent = load.finish().await;
    let took = started.elapsed();

    assert_eq!(sent.len(), todo.len());
    let unexpected: Vec<_> = sent
        .iter()
        .filter_map(|s| match &s.reply {
            Reply::Answered(status, body) => {
                Some((todo[s.index].request_id.as_str(), status, body))
            }
            _ => None,
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "every answer is the success body: {unexpected:?}"
    );
    let acked = ids_of(&todo, &sent, |s| s.reply == Reply::Acked);
    let refused = ids_of(&todo, &sent, |s| matches!(s.reply, Reply::Refused(_)));
    let cut_off = ids_of(&todo, &sent, |s| matches!(s.reply, Reply::CutOff(_)));
    let mut c = db.conn();
    let (inbound, events) = stored(&mut c);
    let missing: Vec<_> = acked.difference(&inbound).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in inbound_callbacks: {missing:?}"
    );
    let missing: Vec<_> = acked.difference(&events).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but no order_events row: {missing:?}"
    );
    // A request is stored with its event or not at all, and only what was
    // sent is stored.
    assert_eq!(inbound, events, "inbound rows and events disagree");
    let all: HashSet<String> = todo.iter().map(|p| p.request_id.clone()).collect();
    assert!(inbound.is_subset(&all));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome <> 'applied'"
        ),
        0,
        "distinct RequidIds are all applied"
    );
    let unacked_stored: HashSet<_> = inbound.difference(&acked).cloned().collect();
    // What the kill lost is only answers: each such request was cut off in
    // flight, never refused before it reached the server.
    assert!(unacked_stored.is_subset(&cut_off), "{unacked_stored:?}");
    eprintln!(
        "kill -9: sent {}, acknowledged {}, cut off in flight {}, refused at connect {}, \
         stored {} (of which not acknowledged {}), lost acknowledged 0; {} in flight at the kill; {:?}",
        todo.len(),
        acked.len(),
        cut_off.len(),
        refused.len(),
        inbound.len(),
        unacked_stored.len(),
        in_flight_at_kill,
        took
    );

    // The vendor retries what it did not see acknowledged: against a new
    // process on the same database each is applied once, or is a
    // duplicate when its commit had survived the kill.
    let serve = Serve::start("restarted", &db, &CALLBACK_SERVE);
    let retry: Vec<Prepared> = callbacks("K", 3000)
        .into_iter()
        .filter(|p| !acked.contains(&p.request_id))
        .collect();
    let retry = Arc::new(retry);
    let resent = Load::start(serve.callback_url(), Arc::clone(&retry), 48)
        .finish()
        .await;
    assert!(
        resent.iter().all(|s| s.reply == Reply::Acked),
        "every retry acknowledged"
    );
    let (inbound, events) = stored(&mut c);
    assert_eq!(inbound, all);
    assert_eq!(events, all);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'duplicate'"
        ),
        unacked_stored.len() as i64,
        "the retries of the committed-but-unanswered ones are duplicates"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_events"),
        todo.len() as i64,
        "one event per callback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_every_request_it_took_commits_every_2xx_and_exits_0() {
    // A request the server *took* is one it read and handed to the callback
    // handler. While the database is up every such request leaves its
    // `inbound_callbacks` row, so the requests taken are exactly the stored
    // ones, and the claim is: stored = answered with the success body. What
    // may fail is only what it never took: a request on a keep-alive
    // connection that reaches it after the drain began (the connection is
    // closed instead of starting it), or one sent after the listener closed
    // (refused at connect).
    let db = TestDb::new();
    let mut serve = Serve::start("stopped", &db, &CALLBACK_SERVE);
    let todo = Arc::new(callbacks("T", 3000));
    let concurrency = 48;
    let load = Load::start(serve.callback_url(), Arc::clone(&todo), concurrency);
    wait_for(
        "a fifth of the callbacks acknowledged",
        Duration::from_secs(120),
        || load.acked() >= todo.len() / 5,
    )
    .await;
    // Hold every commit: the requests in flight pile up inside the server
    // (read, waiting for their commit), so the signal finds them there.
    let mut blocker = db.conn();
    blocker
        .batch_execute("BEGIN; LOCK TABLE inbound_callbacks IN SHARE ROW EXCLUSIVE MODE")
        .unwrap();
    wait_for(
        "every sender waiting for an answer",
        Duration::from_secs(30),
        || load.in_flight.lock().unwrap().len() == concurrency,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight_at_term: HashSet<usize> = load.in_flight.lock().unwrap().clone();
    let term_at = Instant::now();
    serve.sigterm();

    // The shutdown has begun: no new connection is taken, yet the process
    // waits for the requests it holds.
    let port = serve.port;
    wait_for("the listener to close", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !serve.has_exited(),
        "exited while requests waited for their commit"
    );
    blocker.batch_execute("COMMIT").unwrap();
    let released_at = Instant::now();

    let exit = serve.wait_exit(Duration::from_secs(20)).await;
    let stop_took = term_at.elapsed();
    let after_release = released_at.elapsed();
    let log = serve.log();
    let exit = exit.unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{log}"));
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(
        after_release < Duration::from_secs(10),
        "took {after_release:?} to exit once its requests could commit"
    );
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(
        log.lines().last().unwrap_or("").ends_with("stopped"),
        "{log}"
    );
    let sent = load.finish().await;

    // Taken = stored; exactly those were answered, and with success.
    let answered: Vec<_> = sent
        .iter()
        .filter(|s| matches!(s.reply, Reply::Acked | Reply::Answered(..)))
        .collect();
    let unexpected: Vec<_> = answered
        .iter()
        .filter(|s| s.reply != Reply::Acked)
        .map(|s| (&todo[s.index].request_id, &s.reply))
        .collect();
    assert!(
        unexpected.is_empty(),
        "every answer is the success body: {unexpected:?}"
    );
    let acked = ids_of(&todo, &sent, |s| s.reply == Reply::Acked);
    let mut c = db.conn();
    let (inbound, events) = stored(&mut c);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM inbound_callbacks"),
        inbound.len() as i64,
        "every stored request applied"
    );
    let unanswered: Vec<_> = inbound.difference(&acked).collect();
    assert!(
        unanswered.is_empty(),
        "taken (stored) but never answered: {unanswered:?}"
    );
    let lost: Vec<_> = acked.difference(&inbound).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert_eq!(inbound, events);
    // The requests held at the signal were answered after it.
    let held_answered = sent
        .iter()
        .filter(|s| in_flight_at_term.contains(&s.index) && s.reply == Reply::Acked)
        .count();
    assert!(
        held_answered > 0,
        "no request in flight at SIGTERM was answered"
    );
    let failed_before: Vec<_> = sent
        .iter()
        .filter(|s| s.started < term_at && s.reply != Reply::Acked)
        .map(|s| (&todo[s.index].request_id, &s.reply))
        .collect();
    let after = sent.iter().filter(|s| s.started >= term_at);
    let (mut refused, mut cut_off) = (0, 0);
    for s in after {
        match s.reply {
            Reply::Refused(_) => refused += 1,
            Reply::CutOff(_) => cut_off += 1,
            _ => {}
        }
    }
    eprintln!(
        "SIGTERM: sent {}, acknowledged {} (= stored {}), in flight at the signal {} of which answered {}, \
         failed among those started before it {}, started after it: refused at connect {}, cut off {}; \
         exit 0 {:?} after the signal, {:?} after the commits could proceed",
        todo.len(),
        acked.len(),
        inbound.len(),
        in_flight_at_term.len(),
        held_answered,
        failed_before.len(),
        refused,
        cut_off,
        stop_took,
        after_release
    );
    assert!(
        failed_before
            .iter()
            .all(|(rid, _)| !inbound.contains(rid.as_str())),
        "{failed_before:?}"
    );
}

// ---- several processes polling one database ----

#[derive(QueryableByName, Debug)]
struct Lease {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    lease_owner: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lease_until: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

#[derive(QueryableByName, Debug)]
struct VendorCall {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Text)]
    caller: String,
    #[diesel(sql_type = Timestamptz)]
    called_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    outcome: String,
}

fn vendor_calls(c: &mut PgConnection) -> Vec<VendorCall> {
    diesel::sql_query(
        "SELECT order_ids[1] AS order_id, caller, called_at, outcome FROM vendor_calls \
         WHERE vendor = 'haoka172' ORDER BY id",
    )
    .load(c)
    .unwrap()
}

/// The process a `vendor_calls.caller` or lease owner names
/// (`<HOSTNAME>:<pid>:<suffix>`).
fn host(caller: &str) -> &str {
    caller.split(':').next().unwrap_or(caller)
}

fn order_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_polling_one_database_never_ask_about_an_order_twice_and_keep_the_budget_together(
) {
    const BUDGET: usize = 40;
    let sim = start_sim(sim_config()).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::label("已提运营商")));
    // Calls overlap, within a process (8 at a time) and across processes.
    fake.delay(Duration::from_millis(300));
    let db = TestDb::new();
    let ids = order_ids("M", 300);
    // Tracked, but not due until all three processes run.
    track(&db, &ids, &[]);
    let budget = BUDGET.to_string();
    let mut vars = fake.env();
    vars.extend_from_slice(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("HAOKA172_MAX_CALLS_PER_MINUTE", &budget),
        ("POLL_CRON", "* * * * * *"),
    ]);
    let replicas: Vec<Serve> = ["replica-a", "replica-b", "replica-c"]
        .iter()
        .map(|name| Serve::start(name, &db, &vars))
        .collect();
    let mut c = db.conn();
    c.batch_execute("UPDATE order_polls SET next_check_at = now()")
        .unwrap();
    let due_at = Instant::now();
    wait_for("the budget to be spent", Duration::from_secs(30), || {
        fake.calls().len() >= BUDGET
    })
    .await;
    let spent_in = due_at.elapsed();
    wait_for("every call recorded", Duration::from_secs(10), || {
        vendor_calls(&mut c)
            .iter()
            .all(|call| call.outcome != "pending")
    })
    .await;
    // Two more passes of each process, with orders still due.
    let passes = |r: &Serve| r.log().matches("poll pass: haoka172: due").count();
    let before: Vec<usize> = replicas.iter().map(passes).collect();
    wait_for(
        "two more passes of each process",
        Duration::from_secs(30),
        || {
            replicas
                .iter()
                .zip(&before)
                .all(|(r, n)| passes(r) >= n + 2)
        },
    )
    .await;
    let observed = due_at.elapsed();

    let stats = sim.stats();
    let calls = fake.calls();
    let in_window = fake.max_in_window(Duration::from_secs(60));
    let mut per_order: BTreeMap<&str, usize> = BTreeMap::new();
    for call in &calls {
        *per_order.entry(call.order_id.as_str()).or_default() += 1;
    }
    let recorded = vendor_calls(&mut c);
    let mut per_process: BTreeMap<&str, usize> = BTreeMap::new();
    for call in &recorded {
        *per_process.entry(host(&call.caller)).or_default() += 1;
    }
    eprintln!(
        "three processes: {} calls in {:?} ({:?} observed), most in a 60 s window {in_window} (budget {BUDGET}), \
         per process {per_process:?}, most calls for one order {}, most in flight for one order {}",
        calls.len(),
        spent_in,
        observed,
        per_order.values().max().unwrap_or(&0),
        stats.max_concurrent_per_order
    );
    assert!(
        stats.max_concurrent_per_order <= 1,
        "an order was asked about twice at once: {}",
        stats.max_concurrent_per_order
    );
    assert_eq!(
        in_window, BUDGET,
        "the deployment's budget is used and not exceeded"
    );
    assert_eq!(calls.len(), BUDGET);
    let twice: Vec<_> = per_order.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "asked about more than once: {twice:?}");
    assert_eq!(
        recorded.len(),
        calls.len(),
        "the processes' vendor_calls are exactly what the vendor received"
    );
    assert_eq!(per_process.values().sum::<usize>(), calls.len());
    assert!(
        recorded.iter().all(|call| call.outcome == "ok"),
        "{recorded:?}"
    );
    let asked: HashSet<&str> = recorded.iter().map(|call| call.order_id.as_str()).collect();
    assert_eq!(asked, per_order.keys().copied().collect());
    assert!(
        per_process.len() >= 2,
        "the budget was shared: {per_process:?}"
    );
    assert!(per_process
        .keys()
        .all(|h| ["replica-a", "replica-b", "replica-c"].contains(h)));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders WHERE status = 'submitted'"
        ),
        BUDGET as i64
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM order_polls WHERE lease_owner IS NOT NULL"
        ),
        0,
        "orders claimed beyond the budget went back"
    );
    assert_eq!(fake.refused(), (0, 0));
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_orders_of_a_process_killed_mid_pass_are_asked_by_the_others_only_after_its_lease() {
    const ORDERS: usize = 12;
    // The calls one pass has in flight (the 172 asker's limit).
    const IN_FLIGHT: usize = 8;
    let sim = start_sim(sim_config()).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::label("已提运营商")));
    fake.delay(Duration::from_secs(30));
    let db = TestDb::new();
    let ids = order_ids("L", ORDERS);
    track(&db, &ids, &[("HAOKA172_OVERDUE", ZERO_OVERDUE)]);
    let mut vars = fake.env();
    vars.extend_from_slice(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("HAOKA172_MAX_CALLS_PER_MINUTE", "60"),
        ("POLL_CRON", "* * * * * *"),
        ("POLL_LEASE", "3s"),
    ]);
    let mut slow_vars = vars.clone();
    slow_vars.push(("HAOKA172_TIMEOUT_SECS", "60"));
    let mut doomed = Serve::start("doomed", &db, &slow_vars);
    wait_for(
        "the doomed process's calls to reach the vendor",
        Duration::from_secs(20),
        || fake.calls().len() >= IN_FLIGHT,
    )
    .await;
    let mut c = db.conn();
    let leases: Vec<Lease> = diesel::sql_query(
        "SELECT order_id, lease_owner, lease_until, clock_timestamp() AS now FROM order_polls ORDER BY order_id",
    )
    .load(&mut c)
    .unwrap();
    doomed.kill9();
    let killed_at = Instant::now();
    let db_now_at_kill: DateTime<Utc> =
        diesel::select(diesel::dsl::sql::<Timestamptz>("clock_timestamp()"))
            .get_result(&mut c)
            .unwrap();
    let in_flight_at_kill: HashSet<String> =
        fake.calls().into_iter().map(|call| call.order_id).collect();
    assert_eq!(in_flight_at_kill.len(), IN_FLIGHT, "{in_flight_at_kill:?}");
    assert_eq!(leases.len(), ORDERS);
    for l in &leases {
        assert_eq!(l.lease_owner.as_deref().map(host), Some("doomed"), "{l:?}");
        assert!(l.lease_until.unwrap() > l.now, "{l:?}");
    }
    let lease_until: BTreeMap<String, DateTime<Utc>> = leases
        .iter()
        .map(|l| (l.order_id.clone(), l.lease_until.unwrap()))
        .collect();
    let first_expiry = *lease_until.values().min().unwrap();
    assert!(
        db_now_at_kill < first_expiry,
        "killed at {db_now_at_kill}, after its leases ran out at {first_expiry}: the machine is too slow for this test"
    );

    fake.delay(Duration::ZERO);
    let survivors = [
        Serve::start("survivor-b", &db, &vars),
        Serve::start("survivor-c", &db, &vars),
    ];
    wait_for(
        "every order queried and updated",
        Duration::from_secs(30),
        || {
            count(
                &mut c,
                "SELECT count(*) AS n FROM order_polls WHERE last_poll_outcome = 'ok' AND lease_owner IS NULL",
            ) == ORDERS as i64
        },
    )
    .await;
    let picked_up_in = killed_at.elapsed();

    let recorded = vendor_calls(&mut c);
    let by_doomed: Vec<&VendorCall> = recorded
        .iter()
        .filter(|call| host(&call.caller) == "doomed")
        .collect();
    assert_eq!(by_doomed.len(), IN_FLIGHT);
    assert!(
        by_doomed.iter().all(|call| call.outcome == "pending"),
        "the dead process never recorded an answer: {by_doomed:?}"
    );
    let by_survivors: Vec<&VendorCall> = recorded
        .iter()
        .filter(|call| host(&call.caller) != "doomed")
        .collect();
    let mut per_survivor: BTreeMap<&str, usize> = BTreeMap::new();
    for call in &by_survivors {
        *per_survivor.entry(host(&call.caller)).or_default() += 1;
        let until = lease_until[&call.order_id];
        assert!(
            call.called_at >= until,
            "{} asked about {} at {}, before the dead process's lease ran out at {until}",
            call.caller,
            call.order_id,
            call.called_at
        );
        assert_eq!(call.outcome, "ok");
    }
    let asked: Vec<&str> = by_survivors.iter().map(|c| c.order_id.as_str()).collect();
    let asked_set: HashSet<&str> = asked.iter().copied().collect();
    assert_eq!(
        asked.len(),
        ORDERS,
        "each order asked once by the survivors: {asked:?}"
    );
    assert_eq!(asked_set.len(), ORDERS);
    // What the vendor saw agrees: after the kill, each order once, and none
    // before its lease ran out (both clocks are this machine's).
    let after_kill: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|call| call.at >= killed_at)
        .collect();
    assert_eq!(after_kill.len(), ORDERS);
    for call in &after_kill {
        let left = (lease_until[&call.order_id] - db_now_at_kill)
            .to_std()
            .unwrap_or_default();
        assert!(
            call.at + Duration::from_millis(50) >= killed_at + left,
            "{} reached the vendor {:?} after the kill, its lease had {left:?} left",
            call.order_id,
            call.at - killed_at
        );
    }
    for id in &ids {
        assert_eq!(order(&mut c, id).unwrap().status, "submitted", "{id}");
    }
    assert_eq!(recorded.len(), fake.calls().len());
    let earliest = by_survivors.iter().map(|c| c.called_at).min().unwrap();
    eprintln!(
        "lease takeover: {ORDERS} orders leased by the killed process ({IN_FLIGHT} in flight at the kill, {} never sent), \
         lease left at the kill {:?}, first survivor call {:?} after the first lease ran out, \
         survivors' calls {per_survivor:?}, all updated {:?} after the kill; \
         most in flight for one order at the vendor {}",
        ORDERS - IN_FLIGHT,
        (first_expiry - db_now_at_kill).to_std().unwrap_or_default(),
        (earliest - first_expiry).to_std().unwrap_or_default(),
        picked_up_in,
        sim.stats().max_concurrent_per_order
    );
    drop(survivors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_process_never_asks_about_an_order_whose_lease_ran_out_while_it_waited_its_turn() {
    // 20 orders claimed at once, asked 8 at a time, 2 s a call: the third
    // round starts 4 s after the claim, past the 3 s lease, while each call
    // fits well within a lease counted from its own start.
    const ORDERS: usize = 20;
    let sim = start_sim(sim_config()).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(Answer::label("已提运营商")));
    fake.delay(Duration::from_secs(2));
    let db = TestDb::new();
    let ids = order_ids("Q", ORDERS);
    track(&db, &ids, &[("HAOKA172_OVERDUE", ZERO_OVERDUE)]);
    let mut vars = fake.env();
    vars.extend_from_slice(&[
        ("HAOKA172_OVERDUE", ZERO_OVERDUE),
        ("HAOKA172_MAX_CALLS_PER_MINUTE", "60"),
        ("POLL_CRON", "* * * * * *"),
        ("POLL_LEASE", "3s"),
    ]);
    let slow = Serve::start("slow", &db, &vars);
    wait_for("the first round of calls", Duration::from_secs(20), || {
        !fake.calls().is_empty()
    })
    .await;
    let other = Serve::start("other", &db, &vars);
    let mut c = db.conn();
    wait_for(
        "every order queried and updated",
        Duration::from_secs(30),
        || {
            count(
                &mut c,
                "SELECT count(*) AS n FROM order_polls WHERE last_poll_outcome = 'ok' AND lease_owner IS NULL",
            ) == ORDERS as i64
        },
    )
    .await;
    // The slow process's pass is over: it has made every call it would.
    wait_for(
        "the slow process's pass to end",
        Duration::from_secs(30),
        || slow.log().contains("poll pass: haoka172: due"),
    )
    .await;
    let stats = sim.stats();
    let recorded = vendor_calls(&mut c);
    let mut per_process: BTreeMap<&str, usize> = BTreeMap::new();
    for call in &recorded {
        *per_process.entry(host(&call.caller)).or_default() += 1;
    }
    let twice: Vec<_> = ids.iter().filter(|id| fake.calls_for(id) > 1).collect();
    eprintln!(
        "slow process: {} calls {per_process:?}, orders asked twice {}, most in flight for one order {}",
        recorded.len(),
        twice.len(),
        stats.max_concurrent_per_order
    );
    assert!(
        stats.max_concurrent_per_order <= 1,
        "an order was asked about by two processes at once"
    );
    assert!(twice.is_empty(), "asked twice: {twice:?}");
    assert_eq!(recorded.len(), ORDERS, "{recorded:?}");
    // What the other process asked about is exactly what the slow one left.
    let taken = per_process.get("other").copied().unwrap_or(0);
    let line = slow
        .log()
        .lines()
        .find(|l| l.contains("poll pass: haoka172: due"))
        .unwrap_or_default()
        .to_owned();
    if taken > 0 {
        assert!(
            line.ends_with(&format!(
                "left to another process when their lease ran out {taken}"
            )),
            "{line}"
        );
    } else {
        assert!(!line.contains("lease ran out"), "{line}");
    }
    drop((slow, other));
}
