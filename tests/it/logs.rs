//! `LOG_FORMAT=json`: every line a command writes to stderr is one JSON
//! object, with the ids as fields; nothing personal or secret in it
//! (docs/contract.md#logs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::cli::cmd;
use crate::helpers::*;

type Line = Map<String, Value>;

/// Every line of `stderr` as a JSON object with the fields every line has;
/// fails naming the first line that is not one.
fn json_lines(stderr: &str) -> Vec<Line> {
    stderr.lines().map(|line| json_line(line, stderr)).collect()
}

/// One line (of `all`, shown on failure) as such an object.
fn json_line(line: &str, all: &str) -> Line {
    let m = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => m,
        other => panic!("not a JSON object: {line:?} ({other:?})\nin:\n{all}"),
    };
    let time = m["time"].as_str().unwrap_or_else(|| panic!("time: {line}"));
    // RFC 3339, UTC, milliseconds: 2026-12-01T02:03:04.567Z
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok()
            && time.len() == 24
            && time.ends_with('Z'),
        "time: {line}"
    );
    assert!(
        ["error", "warn", "info", "debug", "trace"].contains(&m["level"].as_str().unwrap_or("")),
        "level: {line}"
    );
    assert!(
        m["target"].as_str().is_some_and(|t| !t.is_empty()),
        "target: {line}"
    );
    assert!(m["message"].is_string(), "message: {line}");
    m
}

fn text(m: &Line, key: &str) -> String {
    m.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

/// The one line matching `pred`, or a failure showing them all.
fn find<'a>(lines: &'a [Line], what: &str, pred: impl Fn(&Line) -> bool) -> &'a Line {
    lines
        .iter()
        .find(|l| pred(l))
        .unwrap_or_else(|| panic!("no {what} line in:\n{lines:#?}"))
}

/// No run of 11 digits starting with 1 (a mainland mobile number) anywhere.
fn no_phone_number(s: &str) -> bool {
    s.split(|c: char| !c.is_ascii_digit())
        .all(|run| !(run.len() == 11 && run.starts_with('1')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_in_json_mode_writes_only_json_lines_with_the_ids_as_fields() {
    let sim = start_sim(sim_config()).await;
    let fake = sim.haoka172();
    fake.answer_all(Some(haoka_sync::sim::Answer::Label("已发货".into())));
    let db = TestDb::new();
    let base = |c: &mut Command| {
        c.env("DATABASE_URL", db.url.expose())
            .env("HAOKA172_OVERDUE", ZERO_OVERDUE)
            .env("LOG_FORMAT", "json");
        for (k, v) in fake.env() {
            c.env(k, v);
        }
    };
    // An order for the poll pass; track's own output stays text on stdout.
    let mut track = cmd();
    track.args(["track", "haoka172", "POLL1"]);
    base(&mut track);
    let out = track.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "haoka172: 1 order(s): 1 newly tracked, 0 already tracked"
    );
    json_lines(&stderr);

    let mut serve = cmd();
    serve
        .arg("serve")
        .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
        .env("POLL_CRON", "*/1 * * * * *")
        // A configuration warning at start.
        .env("HAOKA172_CONFIRM_TERMINAL", "off")
        // The libraries' own lines too.
        .env(
            "RUST_LOG",
            "info,actix_server=debug,actix_web=debug,tokio_cron_scheduler=debug",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    base(&mut serve);
    let mut child = serve.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    // Lines until one satisfies `until`, at most 20 s.
    let read_until = |log: &mut String, until: &dyn Fn(&Line) -> bool| -> Option<Line> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let line = rx.recv_timeout(left).ok()?;
            log.push_str(&line);
            log.push('\n');
            let m = json_line(&line, log);
            if until(&m) {
                return Some(m);
            }
        }
        None
    };
    let listening = read_until(&mut log, &|m| text(m, "message").contains("listening on"))
        .unwrap_or_else(|| panic!("serve did not start:\n{log}"));
    let port: u16 = text(&listening, "message")
        .split("listening on 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();

    let url = format!("http://127.0.0.1:{port}/callbacks/haoka172");
    let client = reqwest::Client::new();
    let key = haoka_sync::vendors::haoka172::sign::CallbackKey::from_secret(SECRET);
    let wrong = haoka_sync::vendors::haoka172::sign::CallbackKey::from_secret(
        "ffffffffffffffffffffffffffffffff",
    );
    let post = |body: String, sign: Option<String>| {
        let mut r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = sign {
            r = r.header("sign", s);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let good = callback("R-good", "GOOD1", "已发货").to_string();
    assert_eq!(post(good, Some(key.encrypt("GOOD1"))).await, 200);
    let forged = callback("R-bad", "BAD1", "已发货").to_string();
    assert_eq!(post(forged, Some(wrong.encrypt("BAD1"))).await, 401);
    let broken = r#"{"RequidId":"R-broken","Data":"{\"OrderNo\":"#.to_owned();
    assert_eq!(post(broken, Some(key.encrypt("X"))).await, 400);

    // A poll pass that asked the simulator.
    let pass = read_until(&mut log, &|m| {
        text(m, "target") == "haoka_sync::poller"
            && text(m, "message").starts_with("poll pass: haoka172")
            && m.get("queried").and_then(Value::as_u64).unwrap_or(0) >= 1
    });
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(exit.success(), "exit {exit:?}\n{log}");
    let pass = pass.unwrap_or_else(|| panic!("no poll pass:\n{log}"));

    let lines = json_lines(&log);
    assert!(lines.len() >= 10, "{log}");
    assert_eq!(stdout.join().unwrap(), "", "serve writes nothing to stdout");
    assert!(!log.contains(SECRET), "secret in the log:\n{log}");
    assert!(no_phone_number(&log), "a phone number in the log:\n{log}");
    assert!(!fake.calls().is_empty());

    let callback_line = |rid: &str| {
        find(&lines, rid, |l| {
            text(l, "target") == "haoka_sync::http::callbacks" && text(l, "request_id") == rid
        })
    };
    let applied = callback_line("R-good");
    assert_eq!(text(applied, "level"), "info");
    assert_eq!(text(applied, "vendor"), "haoka172");
    assert_eq!(text(applied, "order_id"), "GOOD1");
    assert_eq!(text(applied, "outcome"), "applied");
    assert_eq!(text(applied, "status"), "shipped");
    // The message reads as the text line does.
    assert!(
        text(applied, "message")
            .starts_with("callback haoka172 order=GOOD1 request_id=R-good: applied"),
        "{applied:?}"
    );
    let rejected = callback_line("R-bad");
    assert_eq!(text(rejected, "level"), "warn");
    assert_eq!(text(rejected, "vendor"), "haoka172");
    assert_eq!(text(rejected, "order_id"), "BAD1");
    assert_eq!(text(rejected, "outcome"), "bad_signature");
    assert!(
        rejected.get("error").is_some_and(Value::is_string),
        "{rejected:?}"
    );
    let malformed = find(&lines, "malformed callback", |l| {
        text(l, "target") == "haoka_sync::http::callbacks" && text(l, "outcome") == "malformed"
    });
    assert_eq!(text(malformed, "vendor"), "haoka172");
    assert_eq!(text(malformed, "level"), "warn");

    let asked = find(&lines, "poll call", |l| {
        text(l, "target") == "haoka_sync::poller::pass" && text(l, "order_id") == "POLL1"
    });
    assert_eq!(text(asked, "vendor"), "haoka172");
    assert_eq!(text(asked, "api"), "GetOrderInfo");
    assert_eq!(text(asked, "outcome"), "changed");
    assert_eq!(text(&pass, "vendor"), "haoka172");
    for count in [
        "due",
        "queried",
        "changed",
        "not_found",
        "errors",
        "skipped_for_limits",
    ] {
        assert!(
            pass.get(count).is_some_and(Value::is_u64),
            "{count}: {pass:?}"
        );
    }

    let warning = find(&lines, "configuration warning", |l| {
        text(l, "var") == "HAOKA172_CONFIRM_TERMINAL"
    });
    assert_eq!(text(warning, "level"), "warn");
    assert!(
        lines
            .iter()
            .any(|l| text(l, "target").starts_with("actix_server")),
        "the HTTP server's own lines are JSON too:\n{log}"
    );
    assert!(
        lines.iter().any(|l| text(l, "message") == "stopped"),
        "{log}"
    );
}

#[test]
fn every_command_reports_in_json_and_a_bad_log_format_exits_2_naming_it() {
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut c = cmd();
        c.args(args).env("LOG_FORMAT", "json");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let db = TestDb::new();

    // A warning written before the logger exists, then the command's lines;
    // its own output stays text on stdout.
    let out = run(
        &["migrate"],
        &[("DATABASE_URL", db.url.expose()), ("RUST_LOG", "nonsense")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is up to date"));
    let lines = json_lines(&stderr(&out));
    let warning = find(&lines, "RUST_LOG warning", |l| text(l, "var") == "RUST_LOG");
    assert_eq!(text(warning, "level"), "warn");
    assert!(
        text(warning, "message").starts_with("RUST_LOG `nonsense` is not understood"),
        "{warning:?}"
    );

    // A command's last line when it fails: one JSON error line with its exit code.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere = format!("postgres://postgres:hunter2-pw@127.0.0.1:{port}/haoka_nowhere");
    for (args, vars, code, starts) in [
        (
            &["migrate"][..],
            &[("DATABASE_URL", nowhere.as_str())][..],
            1,
            format!("cannot reach PostgreSQL at 127.0.0.1:{port}"),
        ),
        (
            &["poll-once"][..],
            &[("DATABASE_URL", nowhere.as_str()), ("POLL_CRON", "x")][..],
            2,
            "configuration error: POLL_CRON: `x`".to_owned(),
        ),
        (
            &["frobnicate"][..],
            &[][..],
            2,
            "unrecognized subcommand 'frobnicate'".to_owned(),
        ),
    ] {
        let out = run(args, vars);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        let lines = json_lines(&err);
        assert_eq!(lines.len(), 1, "{err}");
        assert_eq!(text(&lines[0], "level"), "error", "{err}");
        assert_eq!(lines[0]["exit_code"], code, "{err}");
        assert!(text(&lines[0], "message").starts_with(&starts), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    // Any other format: exit 2, one text line naming the variable, for
    // every command, also from .env.
    let dir = std::env::temp_dir().join(format!("haoka_logs_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), "LOG_FORMAT=xml\n").unwrap();
    let allowed = "is not a log format: use text (the default) or json";
    for (args, from_env_file) in [
        (&["serve"][..], false),
        (&["track", "haoka172", "T1"][..], true),
    ] {
        let mut c = cmd();
        c.args(args)
            .env("DATABASE_URL", nowhere.as_str())
            .current_dir(&dir);
        if !from_env_file {
            c.env("LOG_FORMAT", "xml");
        }
        let out = c.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let from = if from_env_file { " (from .env)" } else { "" };
        assert_eq!(
            err.trim(),
            format!("haoka-sync: configuration error: LOG_FORMAT{from}: `xml` {allowed}")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
