//! Forwarding: a target receives exactly one delivery per matching applied
//! change, in per-order order, each signature verifying with the test's own
//! Standard Webhooks code; a target that fails (500, timeouts) for a while
//! gets every delivery afterwards, in order, with growing retry intervals;
//! `redeliver` by time window re-sends exactly those; after `rotate-secret`
//! a delivery carries a signature per secret; a claim on statistics taken
//! before a burst reads about what it takes.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use haoka_sync::sim::receiver::{Mode, Receiver};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::helpers::*;

/// The Standard Webhooks check, written here from the specification: the
/// key is the base64 after `whsec_`; the signed content is
/// `{webhook-id}.{webhook-timestamp}.{body}`; the header holds
/// space-separated `v1,<base64>` signatures, any of which may match.
fn verifies(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &[String]) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header.contains(&want)
}

/// `haoka-sync targets add ...`: (id, secret).
fn add_target(db: &TestDb, args: &[&str]) -> (i64, String) {
    let out = crate::cli::cmd()
        .env("DATABASE_URL", db.url.expose())
        .args(["targets", "add"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .strip_prefix("target ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("target id in {stdout}"));
    let secret = stdout.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{stdout}");
    (id, secret)
}

fn cli(db: &TestDb, args: &[&str]) -> String {
    let out = crate::cli::cmd()
        .env("DATABASE_URL", db.url.expose())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Three changes for each order, stage by stage across the orders at once,
/// and every callback of the first stage again (duplicates).
async fn history(app: &TestApp, orders: &[String]) {
    for (stage, label) in ["待处理", "已发货", "已结算"].iter().enumerate() {
        let cbs: Vec<(String, String, &str)> = orders
            .iter()
            .map(|o| (format!("R-{o}-{stage}"), o.clone(), *label))
            .collect();
        send_all(app, &cbs).await;
        if stage == 0 {
            send_all(app, &cbs).await;
        }
    }
}

fn changes(c: &mut PgConnection) -> i64 {
    count(c, "SELECT count(*) AS n FROM order_changes")
}

async fn until<F: Fn() -> bool>(what: &str, secs: u64, f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn orders(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_receives_each_matching_change_once_in_order_with_a_valid_signature() {
    let app = TestApp::spawn_with(&[CONFIRM_OFF]).await;
    let all = Receiver::start(vec![]).await.unwrap();
    let settled = Receiver::start(vec![]).await.unwrap();
    let (_, secret) = add_target(&app.db, &["--url", &all.url(), "--vendor", "haoka172"]);
    all.set_secrets(vec![secret.clone()]);
    let (_, secret2) = add_target(
        &app.db,
        &[
            "--url",
            &settled.url(),
            "--status",
            "settled",
            "--name",
            "sub-agent",
        ],
    );
    settled.set_secrets(vec![secret2]);
    let ids = orders("FW", 8);
    history(&app, &ids).await;
    let mut c = app.db.conn();
    let want = changes(&mut c);
    assert_eq!(want, 24, "three changes per order");
    until("every change delivered", 30, || {
        all.received().len() as i64 >= want
    })
    .await;
    until("every settlement delivered", 30, || {
        settled.received().len() >= 8
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = all.received();
    assert_eq!(got.len() as i64, want, "exactly one delivery per change");
    let unique: HashSet<&str> = got.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(unique.len(), got.len());
    let mut per_order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &got {
        // The receiver's own check, on the raw bytes it got.
        assert_eq!(r.verified, 1, "{} verified with its secret", r.webhook_id);
        let o = r.body["order_id"].as_str().unwrap().to_owned();
        per_order
            .entry(o)
            .or_default()
            .push(r.body["seq"].as_i64().unwrap());
        for k in ["vendor", "order_id", "from", "to", "source", "at", "seq"] {
            assert!(!r.body[k].is_null(), "{k} in {}", r.body);
        }
    }
    for (o, seqs) in &per_order {
        assert_eq!(seqs, &[1, 2, 3], "{o}: in order");
    }
    // The other target: only the settlements, every one of them.
    let s = settled.received();
    assert_eq!(s.len(), 8);
    assert!(s
        .iter()
        .all(|r| r.body["to"] == "settled" && r.verified == 1));
    // The test's own Standard Webhooks check, on the bytes received; and
    // the body is the change as the feed has it, with the order's fields as
    // they were at its commit (the phone masked).
    #[derive(QueryableByName)]
    struct Logged {
        #[diesel(sql_type = diesel::sql_types::Text)]
        from_status: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        to_status: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        source: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        order_seq: i64,
    }
    for r in &got {
        assert!(
            verifies(
                &secret,
                &r.webhook_id,
                &r.timestamp,
                r.raw.as_bytes(),
                &r.signatures
            ),
            "{}",
            r.webhook_id
        );
        let change_id = r.body["change_id"].as_i64().unwrap();
        assert_eq!(r.webhook_id, format!("msg_{change_id}_1"));
        let l: Logged = diesel::sql_query(
            "SELECT from_status, to_status, source, order_seq FROM order_change_log WHERE id = $1",
        )
        .bind::<diesel::sql_types::BigInt, _>(change_id)
        .get_result(&mut c)
        .unwrap();
        assert_eq!(r.body["from"], l.from_status.as_str(), "{}", r.raw);
        assert_eq!(r.body["to"], l.to_status.as_str(), "{}", r.raw);
        assert_eq!(r.body["source"], l.source.as_str(), "{}", r.raw);
        assert_eq!(r.body["seq"], l.order_seq, "{}", r.raw);
        assert_eq!(r.body["order"]["status"], r.body["to"], "{}", r.raw);
        assert_eq!(r.body["order"]["third_phone"], "130****5678", "masked");
        let order_id = r.body["order_id"].as_str().unwrap();
        assert_eq!(
            r.body["order"]["vendor_order_no"],
            format!("mlkj{order_id}"),
            "{}",
            r.raw
        );
        assert!(
            chrono::DateTime::parse_from_rfc3339(r.body["at"].as_str().unwrap()).is_ok(),
            "{}",
            r.raw
        );
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM forward_deliveries WHERE state <> 'delivered'"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_outage_of_the_target_every_delivery_arrives_in_order_with_growing_retries() {
    let app = TestApp::spawn_with(&[
        CONFIRM_OFF,
        ("FORWARD_FIRST_RETRY", "1s"),
        ("FORWARD_MAX_RETRY", "8s"),
        ("FORWARD_FAILING_AFTER", "4s"),
        ("FORWARD_PROBE_EVERY", "1s"),
        ("FORWARD_TIMEOUT", "1s"),
    ])
    .await;
    let rx = Receiver::start(vec![]).await.unwrap();
    let (target, secret) = add_target(&app.db, &["--url", &rx.url()]);
    rx.set_secrets(vec![secret]);
    rx.set_mode(Mode::Status(500, None));
    let ids = orders("OU", 5);
    history(&app, &ids).await;
    let mut c = app.db.conn();
    let want = changes(&mut c);
    // Down for 12 s: 500s, then answers too slow, then 503 with Retry-After.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rx.set_mode(Mode::Slow(Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failing = count(
        &mut c,
        &format!("SELECT count(*) AS n FROM forward_targets WHERE id = {target} AND marked_failing_at IS NOT NULL"),
    );
    assert_eq!(failing, 1, "marked failing after FORWARD_FAILING_AFTER");
    rx.set_mode(Mode::Status(503, Some(1)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    rx.set_mode(Mode::Ok);
    let delivered = || {
        rx.received()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.webhook_id.clone())
            .collect::<HashSet<_>>()
    };
    until("every delivery after the outage", 60, || {
        delivered().len() as i64 >= want
    })
    .await;
    until("recorded", 10, || {
        count(
            &mut app.db.conn(),
            "SELECT count(*) AS n FROM forward_deliveries WHERE state = 'delivered'",
        ) == want
    })
    .await;
    // In order per order, among the answered ones.
    let mut per_order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in rx.received().iter().filter(|r| r.status == 200) {
        per_order
            .entry(r.body["order_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.body["seq"].as_i64().unwrap());
    }
    for (o, seqs) in &per_order {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, &sorted, "{o}: delivered in order");
        assert_eq!(sorted.first(), Some(&1), "{o}");
    }
    assert_eq!(
        count(&mut c, &format!("SELECT count(*) AS n FROM forward_targets WHERE id = {target} AND marked_failing_at IS NULL AND failing_since IS NULL")),
        1,
        "healthy again"
    );
    // The first delivery's failed attempts came further and further apart
    // (its last, answered, attempt may have been pulled forward when a probe
    // of another delivery found the target back).
    #[derive(QueryableByName)]
    struct Gap {
        #[diesel(sql_type = diesel::sql_types::Double)]
        secs: f64,
    }
    let gaps: Vec<f64> = diesel::sql_query(
        "SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY id))::float8 AS secs FROM forward_attempts \
         WHERE delivery_id = (SELECT min(id) FROM forward_deliveries) AND error IS NOT NULL ORDER BY id OFFSET 1",
    )
    .load::<Gap>(&mut c)
    .unwrap()
    .into_iter()
    .map(|g| g.secs)
    .collect();
    assert!(gaps.len() >= 3, "{gaps:?}");
    assert!(
        gaps.last().unwrap() > &(gaps[0] * 2.0),
        "retries spread out: {gaps:?}"
    );
    for w in gaps.windows(2).take(3) {
        assert!(
            w[1] >= w[0] * 0.9,
            "non-decreasing before the cap: {gaps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redeliver_by_window_resends_exactly_those_and_a_rotated_secret_signs_twice() {
    let app = TestApp::spawn_with(&[CONFIRM_OFF]).await;
    let rx = Receiver::start(vec![]).await.unwrap();
    let (target, old) = add_target(&app.db, &["--url", &rx.url()]);
    rx.set_secrets(vec![old.clone()]);
    let ids = orders("RD", 6);
    history(&app, &ids).await;
    let mut c = app.db.conn();
    let want = changes(&mut c);
    until("delivered", 30, || rx.received().len() as i64 >= want).await;
    // Three of them as if their changes committed two hours ago.
    c.batch_execute(
        "UPDATE forward_deliveries SET created_at = now() - interval '2 hours' \
         WHERE id IN (SELECT id FROM forward_deliveries ORDER BY id LIMIT 3)",
    )
    .unwrap();
    #[derive(QueryableByName)]
    struct W {
        #[diesel(sql_type = diesel::sql_types::Text)]
        webhook_id: String,
    }
    let old_ones: HashSet<String> = diesel::sql_query(
        "SELECT webhook_id FROM forward_deliveries WHERE created_at < now() - interval '1 hour'",
    )
    .load::<W>(&mut c)
    .unwrap()
    .into_iter()
    .map(|w| w.webhook_id)
    .collect();
    assert_eq!(old_ones.len(), 3);
    let before = rx.received().len();
    let since = haoka_sync::rules::schedule::china_time(
        chrono::Utc::now() - chrono::Duration::minutes(150),
    );
    let until_t =
        haoka_sync::rules::schedule::china_time(chrono::Utc::now() - chrono::Duration::minutes(90));
    let out = cli(
        &app.db,
        &["redeliver", "--since", &since, "--until", &until_t],
    );
    assert!(out.starts_with("redeliver: 3 deliveries due now"), "{out}");
    until("redelivered", 30, || rx.received().len() >= before + 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again: Vec<String> = rx.received()[before..]
        .iter()
        .map(|r| r.webhook_id.clone())
        .collect();
    assert_eq!(again.len(), 3, "{again:?}");
    assert_eq!(
        again.iter().cloned().collect::<HashSet<_>>(),
        old_ones,
        "the same webhook-ids"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM forward_attempts WHERE redelivery"
        ),
        3
    );
    let listed = cli(&app.db, &["deliveries", "--target", &target.to_string()]);
    assert!(listed.contains("(redelivery)"), "{listed}");

    // By order: the log and redeliver find exactly that order's deliveries
    // (through its changes: the outbox has no index by order of its own).
    let one = &ids[1];
    let of_one = count(
        &mut c,
        &format!("SELECT count(*) AS n FROM order_changes WHERE order_id = '{one}'"),
    );
    assert!(of_one >= 2, "{of_one}");
    let listed = cli(&app.db, &["deliveries", "--order", one]);
    let lines: Vec<&str> = listed.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(lines.len() as i64, of_one, "{listed}");
    assert!(
        lines.iter().all(|l| l.contains(&format!(" {one} seq "))),
        "{listed}"
    );
    let seen = rx.received().len();
    let out = cli(&app.db, &["redeliver", "--order", one]);
    assert!(
        out.starts_with(&format!("redeliver: {of_one} deliveries due now")),
        "{out}"
    );
    until("redelivered by order", 30, || {
        rx.received().len() >= seen + of_one as usize
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = rx.received()[seen..].to_vec();
    assert_eq!(again.len() as i64, of_one);
    assert!(
        again.iter().all(|r| r.body["order_id"] == one.as_str()),
        "only {one}'s"
    );
    // The body is built from the stored row on every attempt: a redelivery
    // sends the very bytes of the first delivery.
    let first: BTreeMap<String, String> = rx.received()[..seen]
        .iter()
        .map(|r| (r.webhook_id.clone(), r.raw.clone()))
        .collect();
    for r in &again {
        assert_eq!(first[&r.webhook_id], r.raw, "{}", r.webhook_id);
    }

    // Rotation: both secrets sign during the grace.
    let out = cli(&app.db, &["targets", "rotate-secret", &target.to_string()]);
    let new = out.lines().last().unwrap().trim().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{out}");
    rx.set_secrets(vec![old.clone(), new.clone()]);
    let seen = rx.received().len();
    send_all(&app, &[("R-ROT".into(), "RDX1".into(), "待处理")]).await;
    until("after the rotation", 30, || rx.received().len() > seen).await;
    let r = rx.received().last().unwrap().clone();
    assert_eq!(r.signatures.len(), 2, "{:?}", r.signatures);
    assert_eq!(r.verified, 2, "one signature per secret");
    let listed = cli(&app.db, &["targets", "list"]);
    assert!(
        listed.contains("the previous secret signs too until"),
        "{listed}"
    );
    assert!(
        !listed.contains("whsec_"),
        "no secret in the list: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_serves_and_a_kill_9_lose_no_delivery_and_repeat_only_a_webhook_id() {
    // Replica 1 in this process, replicas 2 and 3 as processes; the receiver
    // answers slowly, so deliveries are in flight when replica 3 is killed.
    // Four in flight each: 30 orders keep all three busy, so the victim
    // cannot be left without work by the other two.
    let app = TestApp::spawn_with(&[
        CONFIRM_OFF,
        ("FORWARD_TIMEOUT", "2s"),
        ("FORWARD_CONCURRENCY", "4"),
    ])
    .await;
    let rx = Receiver::start(vec![]).await.unwrap();
    let (_, secret) = add_target(&app.db, &["--url", &rx.url()]);
    rx.set_secrets(vec![secret]);
    rx.set_mode(Mode::Slow(Duration::from_millis(300)));
    let serve = |name: &str| {
        crate::cli::cmd()
            .env("DATABASE_URL", app.db.url.expose())
            .env("HAOKA_SYNC_BIND", "127.0.0.1:0")
            .env("HAOKA172_SECRET", SECRET)
            .env("POLL_CRON", "0 0 0 1 1 *")
            .env("FORWARD_TIMEOUT", "2s")
            .env("FORWARD_CONCURRENCY", "4")
            .env("RETENTION", "off")
            .env("HOSTNAME", name)
            .args(["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut survivor = serve("survivor");
    let mut victim = serve("victim");
    let ids = orders("K9", 30);
    history(&app, &ids).await;
    let mut c = app.db.conn();
    let want = changes(&mut c);
    until("the victim holds deliveries", 60, || {
        count(
            &mut app.db.conn(),
            "SELECT count(*) AS n FROM forward_deliveries WHERE lease_owner LIKE 'victim:%'",
        ) > 0
    })
    .await;
    // kill -9 mid-delivery: what it held stays leased to it until the
    // lease runs out (2 x timeout + 30 s), then another replica takes it.
    victim.kill().unwrap();
    victim.wait().unwrap();
    let held: HashSet<String> = {
        #[derive(QueryableByName)]
        struct W {
            #[diesel(sql_type = diesel::sql_types::Text)]
            webhook_id: String,
        }
        diesel::sql_query(
            "SELECT webhook_id FROM forward_deliveries WHERE lease_owner LIKE 'victim:%' AND state = 'pending'",
        )
        .load::<W>(&mut c)
        .unwrap()
        .into_iter()
        .map(|w| w.webhook_id)
        .collect()
    };
    until("every delivery recorded as delivered", 120, || {
        count(
            &mut app.db.conn(),
            "SELECT count(*) AS n FROM forward_deliveries WHERE state = 'delivered'",
        ) == want
    })
    .await;
    let _ = survivor.kill();
    let _ = survivor.wait();
    let got = rx.received();
    let unique: HashSet<&str> = got.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(
        unique.len() as i64,
        want,
        "every change received, none lost"
    );
    // Repeats: only deliveries the killed replica held, with their own id.
    let mut seen = HashSet::new();
    let repeated: Vec<&str> = got
        .iter()
        .filter(|r| !seen.insert(r.webhook_id.as_str()))
        .map(|r| r.webhook_id.as_str())
        .collect();
    for id in &repeated {
        assert!(
            held.contains(*id),
            "{id} repeated but the killed replica did not hold it"
        );
    }
    // Taken over and counted as such (in the attempts' log: a second
    // replica sent them), and in order per order by first arrival.
    let held_list: Vec<String> = held.iter().cloned().collect();
    #[derive(QueryableByName)]
    struct N2 {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let taken_over = diesel::sql_query(
        "SELECT count(*) AS n FROM forward_deliveries d WHERE d.webhook_id = ANY ($1) AND d.state = 'delivered' \
           AND EXISTS (SELECT 1 FROM forward_attempts a WHERE a.delivery_id = d.id AND a.worker NOT LIKE 'victim:%')",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&held_list)
    .get_result::<N2>(&mut c)
    .unwrap()
    .n;
    assert_eq!(
        taken_over as usize,
        held.len(),
        "another replica delivered each one the killed one held"
    );
    let mut first: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut firsts = HashSet::new();
    for r in &got {
        if firsts.insert(r.webhook_id.clone()) {
            first
                .entry(r.body["order_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(r.body["seq"].as_i64().unwrap());
        }
    }
    for (o, seqs) in &first {
        assert_eq!(seqs, &[1, 2, 3], "{o}: in order");
    }
    eprintln!(
        "kill -9: {} deliveries held by the killed replica, {} received twice",
        held.len(),
        repeated.len()
    );
}

/// `haoka_sync_forward_yielding` as `/metrics` shows it now.
async fn yielding(client: &reqwest::Client, app: &TestApp) -> Option<bool> {
    let text = client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("haoka_sync_forward_yielding "))
        .map(|v| v.trim() == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_gives_way_while_the_callback_writers_are_busy_and_loses_nothing() {
    // FORWARD_YIELD_AT=1: writers busy 1 % of the time already come first.
    let app = TestApp::spawn_with(&[CONFIRM_OFF, ("FORWARD_YIELD_AT", "1")]).await;
    let rx = Receiver::start(vec![]).await.unwrap();
    let (_, secret) = add_target(&app.db, &["--url", &rx.url()]);
    rx.set_secrets(vec![secret]);
    let client = reqwest::Client::new();
    assert_eq!(
        yielding(&client, &app).await,
        Some(false),
        "idle: full speed"
    );
    let ids = orders("GW", 120);
    let load = history(&app, &ids);
    tokio::pin!(load);
    let mut seen_yielding = false;
    loop {
        tokio::select! {
            () = &mut load => break,
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                seen_yielding |= yielding(&client, &app).await == Some(true);
            }
        }
    }
    assert!(
        seen_yielding,
        "forwarding gave way while callbacks were committed"
    );
    let mut c = app.db.conn();
    let want = changes(&mut c);
    // Afterwards: full speed again, every change delivered once, in order.
    until("every delivery after the callbacks", 60, || {
        count(
            &mut app.db.conn(),
            "SELECT count(*) AS n FROM forward_deliveries WHERE state = 'delivered'",
        ) == want
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while yielding(&client, &app).await != Some(false) {
        assert!(Instant::now() < deadline, "full speed once callbacks ease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = rx.received();
    let unique: HashSet<&str> = got.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(unique.len() as i64, want);
    let mut per_order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &got {
        per_order
            .entry(r.body["order_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.body["seq"].as_i64().unwrap());
    }
    for (o, seqs) in &per_order {
        assert_eq!(seqs, &[1, 2, 3], "{o}: in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_body_is_sent_as_it_is_and_a_delivery_without_its_change_is_exhausted_unsent() {
    let app = TestApp::spawn_with(&[CONFIRM_OFF]).await;
    let rx = Receiver::start(vec![]).await.unwrap();
    let (target, secret) = add_target(&app.db, &["--url", &rx.url()]);
    rx.set_secrets(vec![secret.clone()]);
    let mut c = app.db.conn();
    // A delivery written before migration 019 (its body stored, its change
    // pruned meanwhile), and one whose change is gone and that has no body.
    c.batch_execute(&format!(
        "INSERT INTO forward_deliveries (target_id, change_id, vendor, order_id, seq, webhook_id, payload) VALUES \
           ({target}, -1, 'haoka172', 'OLD1', 1, 'msg_-1_{target}', \
            '{{\"vendor\": \"haoka172\", \"order_id\": \"OLD1\", \"from\": \"new\", \"to\": \"shipped\", \
              \"source\": \"callback\", \"at\": \"2026-11-01T08:00:00+00:00\", \"seq\": 1, \
              \"order\": {{\"status\": \"shipped\", \"third_phone\": \"130****5678\"}}}}'), \
           ({target}, -2, 'haoka172', 'OLD2', 1, 'msg_-2_{target}', NULL)"
    ))
    .unwrap();
    #[derive(QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Text)]
        body: String,
    }
    let stored = diesel::sql_query(
        "SELECT payload::text AS body FROM forward_deliveries WHERE change_id = -1",
    )
    .get_result::<Stored>(&mut c)
    .unwrap()
    .body;
    until("both attempted", 30, || {
        count(
            &mut app.db.conn(),
            "SELECT count(*) AS n FROM forward_deliveries WHERE state <> 'pending'",
        ) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = rx.received();
    assert_eq!(got.len(), 1, "only the one with a body is sent");
    assert_eq!(got[0].webhook_id, format!("msg_-1_{target}"));
    assert_eq!(got[0].raw, stored, "the stored bytes");
    assert!(verifies(
        &secret,
        &got[0].webhook_id,
        &got[0].timestamp,
        got[0].raw.as_bytes(),
        &got[0].signatures
    ));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM forward_deliveries WHERE change_id = -2 AND state = 'exhausted' \
               AND attempts = 1 AND last_error LIKE '%no longer in order_change_log%'"
        ),
        1,
        "exhausted at its first attempt, with why"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM forward_attempts a JOIN forward_deliveries d ON d.id = a.delivery_id \
             WHERE d.change_id = -2 AND a.http_status IS NULL AND a.error LIKE '%order_change_log%'"
        ),
        1,
        "the attempt is recorded"
    );
    let listed = cli(&app.db, &["deliveries", "--failed"]);
    assert!(listed.contains("OLD2"), "{listed}");
}

/// Index entries of `forward_deliveries_claim_idx` read so far, once this
/// connection's statistics are flushed.
fn claim_index_reads(c: &mut PgConnection) -> i64 {
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    // The flush happens when the connection goes idle after that statement.
    c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    count(
        c,
        "SELECT idx_tup_read AS n FROM pg_stat_user_indexes WHERE indexrelname = 'forward_deliveries_claim_idx'",
    )
}

#[test]
fn a_claim_on_statistics_taken_before_a_burst_reads_about_what_it_takes() {
    let db = TestDb::new();
    let mut c = db.conn();
    // Statistics taken when every delivery was delivered, then a burst of
    // 20,000 pending (one per order), as after a busy minute with
    // autovacuum behind: the planner believes nothing is pending.
    c.batch_execute(
        "INSERT INTO forward_targets (id, name, url, secret) VALUES (1, 't', 'http://127.0.0.1:9/', 'whsec_AAAA');
         INSERT INTO forward_deliveries (target_id, change_id, vendor, order_id, seq, webhook_id, payload, state)
           SELECT 1, -g, 'haoka172', 'A' || g, 1, 'msg_-' || g || '_1', '{}', 'delivered'
           FROM generate_series(1, 20000) g;
         INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at, order_seq)
           SELECT -g, 0, 'haoka172', 'A' || g, 'new', 'pending', 'callback', now(), 1 FROM generate_series(1, 20000) g;
         ANALYZE forward_deliveries;
         ANALYZE order_change_log;
         INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at, order_seq)
           SELECT g, 0, 'haoka172', 'B' || g, 'new', 'pending', 'callback', now(), 1 FROM generate_series(1, 20000) g;
         INSERT INTO forward_deliveries (target_id, change_id, vendor, order_id, seq, webhook_id, payload, next_attempt_at)
           SELECT 1, g, 'haoka172', 'B' || g, 1, 'msg_' || g || '_1', '{}', now() - interval '1 minute'
           FROM generate_series(1, 20000) g;
         -- A later change of B1, due before all the others: it waits for
         -- B1's first.
         INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at, order_seq)
           VALUES (50000, 0, 'haoka172', 'B1', 'pending', 'shipped', 'callback', now(), 2);
         INSERT INTO forward_deliveries (target_id, change_id, vendor, order_id, seq, webhook_id, payload, next_attempt_at)
           VALUES (1, 50000, 'haoka172', 'B1', 2, 'msg_50000_1', '{}', now() - interval '2 minutes')",
    )
    .unwrap();
    let before = claim_index_reads(&mut c);
    let now = chrono::Utc::now();
    let claimed = haoka_sync::store::forward::claim(
        &mut c,
        "tester",
        now,
        now + chrono::Duration::seconds(60),
        8,
        &haoka_sync::rules::forward::Policy::default(),
    )
    .unwrap();
    let read = claim_index_reads(&mut c) - before;
    let mut ids: Vec<i64> = claimed.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (20_001..=20_008).collect::<Vec<i64>>(),
        "the 8 oldest due that are their order's earliest pending (not B1's second)"
    );
    // The candidates' walk reads about 8 entries; locking them by key reads
    // none. (Locking through the claim index, and the failing targets'
    // probe check as a semi-join, read all 20,000 each: 40,008.)
    assert!(read < 100, "{read} claim index entries read for 8 claimed");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM forward_deliveries WHERE lease_owner = 'tester'"
        ),
        8
    );
}
