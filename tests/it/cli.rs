//! The binary: migrate, configuration errors, serve with graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_haoka-sync");

pub(crate) fn cmd() -> Command {
    let mut c = Command::new(BIN);
    // A clean environment: only what the test sets (no developer .env).
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    c
}

#[test]
fn migrate_creates_the_database_when_missing_and_is_idempotent() {
    let name = format!("haoka_cli_{}_{}", std::process::id(), rand_suffix());
    let admin = haoka_sync::config::DatabaseUrl::parse(&admin_url()).unwrap();
    let url = admin.with_database(&name);
    struct Drop_(String);
    impl Drop for Drop_ {
        fn drop(&mut self) {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            if let Ok(mut c) = diesel::PgConnection::establish(&admin_url()) {
                let _ = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.0
                ));
            }
        }
    }
    let _guard = Drop_(name.clone());
    for _ in 0..2 {
        let out = cmd()
            .arg("migrate")
            .env("DATABASE_URL", url.expose())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    }
    use diesel::Connection;
    let mut c = diesel::PgConnection::establish(url.expose()).unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM information_schema.tables WHERE table_name IN ('orders','order_events','inbound_callbacks')"),
        3
    );
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

#[test]
fn bad_configuration_exits_2_with_one_clear_line() {
    // `serve` reads every variable (`migrate` would not read this one).
    let out = cmd()
        .arg("serve")
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/never_reached",
        )
        .env("HAOKA172_MAX_CALLS_PER_MINUTE", "500")
        .env("HAOKA172_SECRET", "do-not-print-me")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("HAOKA172_MAX_CALLS_PER_MINUTE") && err.contains("200"),
        "{err}"
    );
    assert!(!err.contains("do-not-print-me"));

    let out = cmd().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad usage");
}

#[test]
fn serve_takes_callbacks_and_stops_gracefully_on_sigterm() {
    let db = TestDb::new();
    let mut child = cmd()
        .arg("serve")
        .env("DATABASE_URL", db.url.expose())
        .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
        .env("HAOKA172_SECRET", SECRET)
        .env("ADMIN_TOKEN", "admin-s3cret")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let port = loop {
        let line = lines.next().expect("serve exited early").unwrap();
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap();
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = haoka_sync::vendors::haoka172::sign::CallbackKey::from_secret(SECRET);
    let (status, body) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/callbacks/haoka172"))
            .header("sign", key.encrypt("DOWN900"))
            .json(&callback("R-cli", "DOWN900", "已发货"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!((status, body.as_str()), (200, SUCCESS));
    let api = rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!(
                "http://127.0.0.1:{port}/api/orders/haoka172/DOWN900"
            ))
            .bearer_auth("admin-s3cret")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(api.0, 200, "{}", api.1);
    assert!(!api.1.contains("13012345678"), "{}", api.1);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains(SECRET), "secret in logs");
    assert!(!log.contains("13012345678"), "phone in logs");
    // One access line per admin API request, without its token.
    assert!(
        log.lines().any(|l| l.contains("haoka_sync::api")
            && l.contains(r#""GET /api/orders/haoka172/DOWN900 HTTP/1.1" 200"#)),
        "{log}"
    );
    assert!(!log.contains("admin-s3cret"), "token in logs");
    let mut c = db.conn();
    assert_eq!(order(&mut c, "DOWN900").unwrap().status, "shipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_and_poll_once_print_one_line_summaries_and_exit_0() {
    let sim = start_sim(sim_config()).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(haoka_sync::sim::Answer::Label("已发货".into())));
    let db = TestDb::new();
    let dir = tempdir();
    std::fs::write(dir.join("ids.txt"), "F1\n\nF2\nP1\n").unwrap();
    let run = |args: &[&str]| {
        let mut c = cmd();
        c.args(args)
            .env("DATABASE_URL", db.url.expose())
            .env("HAOKA172_OVERDUE", ZERO_OVERDUE)
            .env("RUST_LOG", "warn")
            .current_dir(&dir);
        for (k, v) in fake.env() {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&["track", "haoka172", "P1", "P2", "--file", "ids.txt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "haoka172: 4 order(s): 4 newly tracked, 0 already tracked"
    );
    let again = run(&["track", "haoka172", "P1"]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "haoka172: 1 order(s): 0 newly tracked, 1 already tracked\n  P1: already tracked (new), due now"
    );

    let out = run(&["poll-once", "--vendor", "haoka172"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "haoka172: due 4, queried 4, changed 4, not found 0, errors 0, skipped for limits 0"
    );
    assert_eq!(fake.calls().len(), 4);
    let mut c = db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM orders WHERE status = 'shipped'"
        ),
        4
    );

    let off = run(&["poll-once", "--vendor", "damaijia"]);
    assert_eq!(
        off.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&off.stderr)
    );
    let bad = run(&["track", "haoka172"]);
    assert_eq!(bad.status.code(), Some(2), "no ids is a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recheck_makes_an_order_due_now_the_next_pass_asks_once_and_show_prints_the_poll_state() {
    let sim = start_sim(sim_config()).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(haoka_sync::sim::Answer::Label("已发货".into())));
    let db = TestDb::new();
    let dir = tempdir();
    let run = |args: &[&str]| {
        // The default schedule: a new order is first asked about hours
        // from now.
        let mut c = cmd();
        c.args(args)
            .env("DATABASE_URL", db.url.expose())
            .env("RUST_LOG", "warn")
            .current_dir(&dir);
        for (k, v) in fake.env() {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["track", "haoka172", "R1", "R2"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = run(&["poll-once", "--vendor", "haoka172"]);
    assert!(out.starts_with("haoka172: due 0, queried 0"), "{out}");

    // Tracking it again says so, and when it is next checked (China time).
    let (_, out, _) = run(&["track", "haoka172", "R1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "haoka172: 1 order(s): 0 newly tracked, 1 already tracked"
    );
    assert!(
        lines[1].starts_with("  R1: already tracked (new), next check 2")
            && lines[1].ends_with(" +08:00"),
        "{out}"
    );

    let (code, out, err) = run(&["recheck", "haoka172", "R1", "NOPE"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        "haoka172: 1 due now (the next pass asks, within every limit), 0 terminal (never asked again), 1 not tracked\n  NOPE: not tracked: haoka-sync track haoka172 NOPE"
    );
    let (code, out, err) = run(&["poll-once", "--vendor", "haoka172"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("haoka172: due 1, queried 1, changed 1"),
        "{out}"
    );
    assert_eq!(fake.calls_for("R1"), 1);
    assert_eq!(fake.calls_for("R2"), 0, "only the rechecked order is asked");
    // Once: after its answer it is scheduled again as usual.
    let (_, out, _) = run(&["poll-once", "--vendor", "haoka172"]);
    assert!(out.starts_with("haoka172: due 0, queried 0"), "{out}");
    assert_eq!(fake.calls().len(), 1);

    let (code, out, err) = run(&["show", "haoka172", "R1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("  status:        shipped (已发货)"), "{out}");
    let next = out
        .lines()
        .find(|l| l.starts_with("  next check:    "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        next.contains(" +08:00: no news since ") && next.ends_with("while shipped"),
        "{next}"
    );
    assert!(
        out.contains("  last poll:     ok (quiet polls 0, calls today 1, tracked since 2"),
        "{out}"
    );
    // The phone the vendor answered is stored in full and shown masked.
    let mut c = db.conn();
    #[derive(diesel::QueryableByName)]
    struct Phone {
        #[diesel(sql_type = diesel::sql_types::Text)]
        third_phone: String,
    }
    let phone = diesel::RunQueryDsl::get_result::<Phone>(
        diesel::sql_query("SELECT third_phone FROM orders WHERE order_id = 'R1'"),
        &mut c,
    )
    .unwrap()
    .third_phone;
    assert!(!out.contains(&phone), "{out}");
    assert!(
        out.contains(&haoka_sync::rules::mask::phone(&phone)),
        "{out}"
    );

    // A bad id names its line and the rule.
    std::fs::write(dir.join("ids.txt"), "OK1\nBAD ID\n").unwrap();
    let (code, _, err) = run(&["track", "haoka172", "--file", "ids.txt"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "line 2 of ids.txt: `BAD ID` contains a space; order ids are at most 128 bytes"
        ),
        "{err}"
    );
}

#[test]
fn show_says_in_one_line_when_the_database_is_missing_or_not_migrated() {
    let db = TestDb::new();
    let missing = db.url.expose().rsplit_once('/').unwrap().0.to_owned() + "/haoka_no_such_db";
    let show = |url: &str| {
        let started = std::time::Instant::now();
        let out = cmd()
            .args(["show", "haoka172", "X1"])
            .env("DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    };
    let (code, err, took) = show(&missing);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "haoka-sync: database haoka_no_such_db does not exist (DATABASE_URL): `haoka-sync migrate` creates it"
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "no pool timeout: {took:?}"
    );

    let mut c = db.conn();
    diesel::connection::SimpleConnection::batch_execute(
        &mut c,
        "DROP SCHEMA public CASCADE; CREATE SCHEMA public;",
    )
    .unwrap();
    let (code, err, _) = show(db.url.expose());
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is not migrated (has no migration")
            && err.contains("run `haoka-sync migrate`"),
        "{err}"
    );

    let (code, err, _) = show("postgres://postgres@127.0.0.1:9/x");
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("haoka-sync: cannot reach PostgreSQL at 127.0.0.1:9 to read the database x (DATABASE_URL): connection refused"),
        "{err}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "haoka-cli-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn demo_converges_on_this_machine_in_under_two_minutes_and_exits_0() {
    let name = format!("haoka_cli_demo_{}_{}", std::process::id(), rand_suffix());
    let admin = haoka_sync::config::DatabaseUrl::parse(&admin_url()).unwrap();
    struct DropDb(String);
    impl Drop for DropDb {
        fn drop(&mut self) {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            if let Ok(mut c) = diesel::PgConnection::establish(&admin_url()) {
                let _ = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.0
                ));
            }
        }
    }
    let _guard = DropDb(format!("{name}_demo"));
    let started = std::time::Instant::now();
    // Fewer orders than the default: every terminal callback waits for one
    // confirming query, and queries drain at 180 a minute.
    let out = cmd()
        .args(["demo", "--orders-172", "100", "--orders-damaijia", "30"])
        .env("DATABASE_URL", admin.with_database(&name).expose())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < std::time::Duration::from_secs(120), "{took:?}");
    assert!(stdout.contains("converged in"), "{stdout}");
    assert!(stdout.contains("disagree with truth: 0"), "{stdout}");
    // Forwarding, shown by the demo: every change delivered to its
    // receiver, every request verified, none out of order.
    let fwd = stdout
        .lines()
        .find_map(|l| l.strip_prefix("forwarding: "))
        .unwrap_or_else(|| panic!("no forwarding line:\n{stdout}"));
    let num = |after: &str| -> i64 {
        let (_, rest) = fwd
            .split_once(after)
            .unwrap_or_else(|| panic!("{after}: {fwd}"));
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let delivered = num("forwarded");
    assert!(delivered > 130, "at least one change per order: {fwd}");
    assert_eq!(num("(pending"), 0, "{fwd}");
    assert_eq!(num("exhausted"), 0, "{fwd}");
    // A request may be repeated (a retry after a timeout), never missing,
    // and it has the same webhook-id.
    let requests = num("receiver:");
    assert!(requests >= delivered, "{fwd}");
    assert!(
        fwd.contains(&format!(
            "{requests} verified, {delivered} distinct webhook-ids, 0 out of order"
        )),
        "{fwd}"
    );
    assert!(
        !database_exists(&format!("{name}_demo")),
        "the demo leaves its database behind:\n{stdout}"
    );
    eprintln!(
        "demo took {took:?}: {}",
        stdout.lines().last().unwrap_or("")
    );
}

fn database_exists(name: &str) -> bool {
    use diesel::Connection;
    let mut c = diesel::PgConnection::establish(&admin_url()).unwrap();
    count(
        &mut c,
        &format!(
            "SELECT count(*) AS n FROM pg_database WHERE datname = '{}'",
            name.replace('\'', "''")
        ),
    ) == 1
}

#[test]
fn demo_drops_its_database_also_when_it_fails_and_keeps_it_with_keep_db() {
    let name = format!(
        "haoka_cli_demokeep_{}_{}",
        std::process::id(),
        rand_suffix()
    );
    let admin = haoka_sync::config::DatabaseUrl::parse(&admin_url()).unwrap();
    struct DropDb(String);
    impl Drop for DropDb {
        fn drop(&mut self) {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            if let Ok(mut c) = diesel::PgConnection::establish(&admin_url()) {
                let _ = c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.0
                ));
            }
        }
    }
    let demo_db = format!("{name}_demo");
    let _guard = DropDb(demo_db.clone());
    // No time to converge: the demo gives up (exit 1) at its first look.
    let demo = |keep: bool| {
        let mut c = cmd();
        c.args(["demo", "--orders-172", "20", "--orders-damaijia", "0"])
            .args(["--timeout-secs", "0"])
            .env("DATABASE_URL", admin.with_database(&name).expose());
        if keep {
            c.arg("--keep-db");
        }
        c.output().unwrap()
    };
    let out = demo(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("database {demo_db} kept")),
        "{stdout}"
    );
    assert!(database_exists(&demo_db), "{stdout}");

    let out = demo(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("database {demo_db} dropped")),
        "{stdout}"
    );
    assert!(!database_exists(&demo_db), "{stdout}");
}

#[test]
fn simulate_serves_both_vendors_and_writes_its_truth_on_sigterm() {
    let dir = tempdir();
    let truth = dir.join("truth.json");
    let mut child = cmd()
        .args([
            "simulate",
            "--orders-172",
            "5",
            "--orders-damaijia",
            "2",
            "--listen-172",
            "127.0.0.1:0",
        ])
        .args(["--listen-damaijia", "127.0.0.1:0", "--truth-file"])
        .arg(&truth)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("{url}/sim/truth"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(body["haoka172"].as_object().unwrap().len(), 5);
    assert_eq!(body["damaijia"].as_object().unwrap().len(), 2);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
    assert_eq!(written, body);
}

/// `serve`'s start-up lines for these variables (it is stopped at once).
fn serve_log(db: &TestDb, vars: &[(&str, &str)]) -> String {
    let mut c = cmd();
    c.arg("serve")
        .env("DATABASE_URL", db.url.expose())
        .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
        .env("POLL_CRON", "0 0 0 1 1 *")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    for (k, v) in vars {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    log
}

#[test]
fn serve_and_poll_once_agree_on_which_vendors_poll() {
    let db = TestDb::new();
    let poll_once = |vars: &[(&str, &str)]| {
        let mut c = cmd();
        c.args(["poll-once", "--vendor", "damaijia"])
            .env("DATABASE_URL", db.url.expose())
            .env("RUST_LOG", "warn");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Only app credentials for 大麦家, no token: it polls (it can log in).
    let app_only = [
        ("DAMAIJIA_OWNER_ID", "shop-1"),
        ("DAMAIJIA_APP_ID", "app-1"),
        ("DAMAIJIA_APP_SECRET", "app-secret-1"),
        ("DAMAIJIA_BASE_URL", "http://127.0.0.1:9"),
    ];
    let log = serve_log(&db, &app_only);
    assert!(!log.contains("damaijia poller is off"), "{log}");
    assert!(
        log.contains("the haoka172 poller is off: set HAOKA172_USER_ID and HAOKA172_SECRET"),
        "{log}"
    );
    let out = poll_once(&app_only);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("damaijia: due 0"), "{stdout}");
    assert!(!stderr.contains("polling is off"), "{stderr}");

    // The app id alone: both name the one variable that is missing.
    let half = [
        ("DAMAIJIA_OWNER_ID", "shop-1"),
        ("DAMAIJIA_APP_ID", "app-1"),
    ];
    let log = serve_log(&db, &half);
    assert!(
        log.contains("the damaijia poller is off: set DAMAIJIA_APP_SECRET (DAMAIJIA_APP_ID is set), or DAMAIJIA_TOKEN"),
        "{log}"
    );
    let out = poll_once(&half);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("set DAMAIJIA_APP_SECRET (DAMAIJIA_APP_ID is set)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn poll_once_exits_1_and_says_why_when_every_call_failed() {
    let db = TestDb::new();
    let run = |args: &[&str]| {
        cmd()
            .args(args)
            .env("DATABASE_URL", db.url.expose())
            .env("HAOKA172_OVERDUE", ZERO_OVERDUE)
            .env("HAOKA172_USER_ID", "demo")
            .env("HAOKA172_SECRET", SECRET)
            .env("HAOKA172_BASE_URL", "http://127.0.0.1:9")
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    assert!(run(&["track", "haoka172", "F1", "F2"]).status.success());
    let out = run(&["poll-once", "--vendor", "haoka172"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.starts_with("haoka172: due 2, queried 2"), "{stdout}");
    assert!(
        stderr.contains("every haoka172 call failed")
            && stderr.contains("127.0.0.1: connection refused"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_postgresql_at_start_and_says_so_then_gives_up_after_db_wait_secs() {
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    proxy.cut();
    let spawn = |wait: &str| {
        cmd()
            .arg("serve")
            .env("DATABASE_URL", db.url_via(proxy.port))
            .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
            .env("DB_WAIT_SECS", wait)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // PostgreSQL comes back while serve waits: it starts.
    let mut child = spawn("30");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    assert!(
        first.contains("retrying in") && first.contains("DB_WAIT_SECS"),
        "{first}"
    );
    proxy.restore().await;
    let mut log = first;
    let listening = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("listening on") {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "{log}");

    // It never comes back: serve gives up after DB_WAIT_SECS, exit 1.
    proxy.cut();
    let started = std::time::Instant::now();
    let out = spawn("2").wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gave up after waiting") && err.contains("DB_WAIT_SECS=2"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// What a run printed on stderr, trimmed.
fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[test]
fn an_unreachable_server_is_named_with_the_database_being_created() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = cmd()
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres:hunter2-pw@127.0.0.1:{port}/haoka_nowhere"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out),
        format!(
            "haoka-sync: cannot reach PostgreSQL at 127.0.0.1:{port} to create the database haoka_nowhere (DATABASE_URL): connection refused"
        )
    );
}

#[test]
fn a_busy_address_exits_2_naming_it_and_haoka_sync_bind() {
    let db = TestDb::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = cmd()
        .arg("serve")
        .env("DATABASE_URL", db.url.expose())
        .env("HAOKA_SYNC_BIND", addr.to_string())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out),
        format!(
            "haoka-sync: cannot listen on {addr} (address already in use): set HAOKA_SYNC_BIND to a free address"
        )
    );
}

#[test]
fn numeric_variables_state_their_real_range() {
    let out = cmd()
        .arg("serve")
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/never_reached",
        )
        .env("HAOKA172_MAX_CALLS_PER_MINUTE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_of(&out),
        "haoka-sync: configuration error: HAOKA172_MAX_CALLS_PER_MINUTE: 0 is out of range: use a whole number from 1 to 200"
    );
}

#[test]
fn usage_errors_are_one_line_and_help_and_version_exit_0() {
    let out = cmd().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_of(&out),
        "haoka-sync: unrecognized subcommand 'frobnicate'; see haoka-sync --help"
    );
    let out = cmd()
        .args(["track", "haoka172", "--fil", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.ends_with("; see haoka-sync track --help"), "{err}");

    let out = cmd().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: haoka-sync <COMMAND>"), "{help}");
    assert!(
        help.contains("Configuration: environment variables (and a .env file in this directory); see README.md, section Configuration, or docs/contract.md"),
        "{help}"
    );
    assert!(out.stderr.is_empty());
    let out = cmd().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("haoka-sync {}", env!("CARGO_PKG_VERSION"))
    );
    let out = cmd().args(["simulate", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("order-no-172"), "{help}");
}

#[test]
fn a_broken_env_line_is_placed_by_line_and_column_and_never_shown() {
    let secret = "s3cr3t-in-dotenv";
    for (text, at) in [
        (
            format!("DATABASE_URL=postgres://127.0.0.1:1/x\nHAOKA172_SECRET=\"{secret}\nPOLL_CRON=bogus\n"),
            "line 2, column 17: the quote opened here is never closed",
        ),
        (
            format!("# the 172 secret\nHAOKA172_SECRET {secret}\n"),
            "line 2, column 17: expected = after the variable name",
        ),
        (
            format!("ADMIN_TOKEN={secret} more\n"),
            "line 1, column 30: text after a space in an unquoted value",
        ),
    ] {
        let dir = tempdir();
        std::fs::write(dir.join(".env"), &text).unwrap();
        let out = cmd()
            .arg("migrate")
            .current_dir(&dir)
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/never_reached")
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("haoka-sync: configuration error: .env, {at}")),
            "{text:?}: `{err}` should name `.env, {at}`"
        );
        assert!(!err.contains(secret), "the secret is printed: {err}");
        assert!(!err.contains("s3cr3t"), "part of the secret is printed: {err}");
    }
}

#[test]
fn a_rust_log_that_is_not_understood_warns_and_logs_at_info() {
    let db = TestDb::new();
    let log = serve_log(&db, &[("RUST_LOG", "nonsense")]);
    let warning = log
        .lines()
        .find(|l| l.contains("RUST_LOG"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        warning.starts_with("haoka-sync: warning: RUST_LOG `nonsense` is not understood"),
        "{warning}"
    );
    assert!(
        warning.ends_with("falling back to `info,tokio_cron_scheduler=warn,actix_server=warn`"),
        "{warning}"
    );
    assert!(log.contains("listening on"), "info lines are on:\n{log}");
}

#[test]
fn a_value_from_env_says_so_and_migrate_ignores_the_pollers_settings() {
    let db = TestDb::new();
    let dir = tempdir();
    std::fs::write(
        dir.join(".env"),
        "POLL_CRON=bogus\nHAOKA172_OVERDUE=pending=6x\n",
    )
    .unwrap();
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut c = cmd();
        c.args(args)
            .current_dir(&dir)
            .env("DATABASE_URL", db.url.expose())
            .env("RUST_LOG", "warn");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // serve needs every setting: the first bad one, from .env.
    let out = run(&["serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.starts_with("haoka-sync: configuration error: HAOKA172_OVERDUE (from .env): "),
        "{err}"
    );
    // The environment wins over .env, and its value is not "from .env".
    let out = run(&["poll-once"], &[("HAOKA172_OVERDUE", "pending=1h")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out)
            .starts_with("haoka-sync: configuration error: POLL_CRON (from .env): `bogus`"),
        "{}",
        stderr_of(&out)
    );
    let out = run(
        &["poll-once"],
        &[("HAOKA172_OVERDUE", "pending=1h"), ("POLL_CRON", "x")],
    );
    assert!(
        stderr_of(&out).starts_with("haoka-sync: configuration error: POLL_CRON: `x`"),
        "{}",
        stderr_of(&out)
    );

    // migrate and show need only the database.
    let out = run(&["migrate"], &[("HAOKA172_MAX_CALLS_PER_MINUTE", "0")]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is up to date"));
    let out = run(&["show", "haoka172", "NOPE"], &[("HAOKA_SYNC_BIND", "x")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out),
        "haoka-sync: no haoka172 order NOPE (`haoka-sync track haoka172 NOPE` starts tracking it)"
    );
    // track needs the schedule (HAOKA172_OVERDUE), not POLL_CRON.
    let out = run(&["track", "haoka172", "T1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("HAOKA172_OVERDUE (from .env)"),
        "{}",
        stderr_of(&out)
    );
    let out = run(
        &["track", "haoka172", "T1"],
        &[("HAOKA172_OVERDUE", "pending=1h")],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
}

#[test]
fn the_172_poller_names_the_variable_that_turns_it_on() {
    let db = TestDb::new();
    let poll_once = |vars: &[(&str, &str)]| {
        let mut c = cmd();
        c.args(["poll-once", "--vendor", "haoka172"])
            .env("DATABASE_URL", db.url.expose())
            .env("RUST_LOG", "warn");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    for (vars, why) in [
        (
            &[("HAOKA172_SECRET", SECRET)][..],
            "set HAOKA172_USER_ID (the 172 login; HAOKA172_SECRET is set)",
        ),
        (
            &[("HAOKA172_USER_ID", "agent-1")][..],
            "set HAOKA172_SECRET (HAOKA172_USER_ID is set)",
        ),
        (&[][..], "set HAOKA172_USER_ID and HAOKA172_SECRET"),
    ] {
        let log = serve_log(&db, vars);
        assert!(
            log.contains(&format!("the haoka172 poller is off: {why}")),
            "{vars:?}:\n{log}"
        );
        assert!(!log.contains(SECRET), "secret in the log");
        let out = poll_once(vars);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {err}");
        assert!(
            err.ends_with(&format!("haoka172 polling is off: {why}")),
            "{vars:?}: {err}"
        );
        assert!(!err.contains(SECRET), "secret on stderr");
    }
}

#[test]
fn serve_logs_by_default_what_an_operator_acts_on_and_not_the_libraries_internals() {
    let db = TestDb::new();
    let mut child = cmd()
        .arg("serve")
        .env("DATABASE_URL", db.url.expose())
        .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
        .env("HAOKA172_SECRET", SECRET)
        .env("HAOKA172_USER_ID", "demo")
        .env("HAOKA172_BASE_URL", "http://127.0.0.1:9")
        .env("POLL_CRON", "*/1 * * * * *")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());
    let log = reader.join().unwrap();
    for wanted in [
        "listening on 127.0.0.1:",
        "poller on: a pass runs on",
        "stopped",
    ] {
        assert!(log.contains(wanted), "{wanted}: {log}");
    }
    for noise in ["tokio_cron_scheduler", "actix_server"] {
        assert!(!log.contains(noise), "{noise}: {log}");
    }
}

/// While PostgreSQL is down, `serve` logs the outage once with its cause,
/// every callback it could not take once (its RequidId, what it was judged,
/// "database unavailable"), the skipped poll passes once however many
/// ticks pass, and the return once with how long it lasted; r2d2's own
/// per-attempt errors stay out of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_an_outage_once_each_way_and_each_callback_it_could_not_take_once() {
    let proxy = PgProxy::start().await;
    let db = TestDb::new();
    let mut child = cmd()
        .arg("serve")
        .env("DATABASE_URL", db.url_via(proxy.port))
        .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
        .env("HAOKA172_SECRET", SECRET)
        .env("HAOKA172_USER_ID", "demo")
        // Nothing is tracked, so nothing is ever asked.
        .env("HAOKA172_BASE_URL", "http://127.0.0.1:9")
        .env("POLL_CRON", "* * * * * *")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let port = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("serve listens");
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap();
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let key = haoka_sync::vendors::haoka172::sign::CallbackKey::from_secret(SECRET);
    let post = |rid: &str, sign_over: &str| {
        client
            .post(format!("{base}/callbacks/haoka172"))
            .header("sign", key.encrypt(sign_over))
            .json(&callback(rid, "LOG1", "已发货"))
            .send()
    };
    let ready = || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post("FD-0", "LOG1").await.unwrap().status(), 200);

    proxy.cut();
    while ready().await != 503 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for rid in ["FD-1", "FD-2", "FD-3"] {
        assert_eq!(post(rid, "LOG1").await.unwrap().status(), 503);
    }
    assert_eq!(post("FD-bad", "OTHER").await.unwrap().status(), 503);
    let r = client
        .post(format!("{base}/callbacks/haoka172"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // At least two poll ticks while down.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    proxy.restore().await;
    let started = std::time::Instant::now();
    while ready().await != 200 {
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(post("FD-4", "LOG1").await.unwrap().status(), 200);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
        log.push_str(&line);
        log.push('\n');
    }
    let lines = |pred: &dyn Fn(&str) -> bool| log.lines().filter(|l| pred(l)).count();
    let name = db.name.clone();
    assert_eq!(
        lines(&|l| l.contains(&format!(
            "database {name} at 127.0.0.1:{} unavailable: ",
            proxy.port
        )) && l.contains("callbacks are answered 503 at once")),
        1,
        "{log}"
    );
    assert_eq!(
        lines(&|l| l.contains(&format!(
            "database {name} at 127.0.0.1:{} answers again after ",
            proxy.port
        ))),
        1,
        "{log}"
    );
    for rid in ["FD-1", "FD-2", "FD-3"] {
        let mine: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("request_id={rid}")))
            .collect();
        assert_eq!(mine.len(), 1, "{rid}: {log}");
        assert!(
            mine[0].contains("order=LOG1")
                && mine[0]
                    .contains("not stored, answered 503 (judged: signed): database unavailable"),
            "{}",
            mine[0]
        );
    }
    assert_eq!(
        lines(&|l| l.contains("request_id=FD-bad")
            && l.contains("(judged: bad_signature, ")
            && l.contains("): database unavailable")),
        1,
        "{log}"
    );
    assert_eq!(
        lines(&|l| l.contains("request_id=-")
            && l.contains("(judged: malformed, malformed callback: ")
            && l.contains("): database unavailable")),
        1,
        "{log}"
    );
    assert_eq!(
        lines(&|l| l.contains("poll passes skipped: database unavailable")),
        1,
        "{log}"
    );
    assert_eq!(lines(&|l| l.contains(" r2d2]")), 0, "{log}");
    let mut c = db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE request_id LIKE 'FD-%'"
        ),
        2
    );
}
