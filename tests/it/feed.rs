//! The change feed: one `haoka_sync_order_changed` notification per applied
//! status change (callback batches, a poll pass, a manual change), none for
//! duplicates or observations that change no status, `order_changes` with
//! the same changes in id order, and ids that increase in commit order
//! under concurrent writers (a reader catching up by id misses nothing).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::prelude::*;
use haoka_sync::rules::schedule::Schedule;
use haoka_sync::rules::status::{Observation, OrderFields, Source, Status};
use haoka_sync::sim::Answer;
use haoka_sync::store::feed::{self, FeedRow, CHANNEL};
use haoka_sync::store::{apply_batch, apply_observation, Item};
use haoka_sync::vendors::Vendor;

use crate::helpers::*;

fn schedule() -> Schedule {
    haoka_sync::config::Config::with(&[CONFIRM_OFF])
        .unwrap()
        .schedule()
}

/// A connection that LISTENs on the feed's channel.
fn listener(db: &TestDb) -> PgConnection {
    let mut c = db.conn();
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(&mut c)
        .unwrap();
    c
}

/// Every notification that arrives within `quiet` of the last one (or of
/// the start), parsed.
fn drain(c: &mut PgConnection, quiet: Duration) -> Vec<FeedRow> {
    let mut got = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        let mut any = false;
        for n in c.notifications_iter() {
            let n = n.expect("read notifications");
            assert_eq!(n.channel, CHANNEL);
            let row: FeedRow = serde_json::from_str(&n.payload).unwrap_or_else(|e| {
                panic!("payload {} is not the contract's JSON: {e}", n.payload)
            });
            got.push(row);
            any = true;
        }
        if any {
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    got
}

fn changes(c: &mut PgConnection) -> Vec<FeedRow> {
    feed::since(c, 0, None, 100_000).unwrap()
}

fn obs(order: &str, status: Status, source: Source) -> Observation {
    Observation {
        vendor: Vendor::Haoka172,
        order_id: order.into(),
        source,
        vendor_status: Some(status.as_str().into()),
        status,
        fields: OrderFields::default(),
    }
}

/// (order, from, to, source) of each row.
fn moves(rows: &[FeedRow]) -> Vec<(String, String, String, String)> {
    rows.iter()
        .map(|r| {
            (
                r.order_id.clone(),
                r.from_status.clone(),
                r.to_status.clone(),
                r.source.clone(),
            )
        })
        .collect()
}

fn mv(order: &str, from: &str, to: &str, source: &str) -> (String, String, String, String) {
    (order.into(), from.into(), to.into(), source.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_applied_status_change_is_announced_once_and_listed_in_id_order() {
    let (app, sim) = TestApp::with_sim(&[("HAOKA172_OVERDUE", ZERO_OVERDUE), CONFIRM_OFF]).await;
    let mut listen = listener(&app.db);

    // Callbacks, sent together so that they share group commits: 12 new
    // orders to pending, then 6 of them to shipped and 2 to settled.
    let ids: Vec<String> = (0..12).map(|i| format!("F{i:02}")).collect();
    let firsts: Vec<(String, String, &str)> = ids
        .iter()
        .map(|o| (format!("R-{o}-1"), o.clone(), "待处理"))
        .collect();
    send_all(&app, &firsts).await;
    let seconds: Vec<(String, String, &str)> = ids[..8]
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let label = if i < 6 { "已发货" } else { "已结算" };
            (format!("R-{o}-2"), o.clone(), label)
        })
        .collect();
    send_all(&app, &seconds).await;
    // What changes no status: every first callback again (same RequidId:
    // duplicates), the same status under a new RequidId, an older status.
    let mut repeats = firsts.clone();
    repeats.push(("R-F10-3".into(), "F10".into(), "待处理"));
    repeats.push(("R-F00-4".into(), "F00".into(), "待处理"));
    send_all(&app, &repeats).await;

    // A poll pass: P1 is shipped, P2 unknown to the vendor, F11 (pending)
    // answered with its own status.
    let fake = sim.haoka172();
    fake.answer("P1", Answer::label("已发货"));
    fake.answer("P2", Answer::NotFound);
    fake.answer("F11", Answer::label("待处理"));
    app.track(&["P1", "P2", "F11"]).await;
    let pass = app.poll().await;
    assert!(pass.queried >= 3, "{pass}");

    // A manual change (as an operator's tool records one).
    let mut c = app.db.conn();
    let manual = obs("F09", Status::Shipped, Source::Manual);
    apply_observation(&mut c, &manual, None, Utc::now(), &schedule()).unwrap();

    let heard = drain(&mut listen, Duration::from_millis(700));
    let listed = changes(&mut c);
    assert_eq!(
        heard, listed,
        "notifications and order_changes agree, in order"
    );
    let ids_listed: Vec<i64> = listed.iter().map(|r| r.id).collect();
    assert!(ids_listed.windows(2).all(|w| w[0] < w[1]), "{ids_listed:?}");

    let mut want: Vec<_> = ids
        .iter()
        .map(|o| mv(o, "new", "pending", "callback"))
        .collect();
    for (i, o) in ids[..8].iter().enumerate() {
        let to = if i < 6 { "shipped" } else { "settled" };
        want.push(mv(o, "pending", to, "callback"));
    }
    want.push(mv("P1", "new", "shipped", "poll"));
    want.push(mv("F09", "pending", "shipped", "manual"));
    let mut got = moves(&listed);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Each order's own changes come in the order they happened.
    for o in &ids[..8] {
        let mine: Vec<_> = listed.iter().filter(|r| &r.order_id == o).collect();
        assert_eq!(mine[0].to_status, "pending", "{o}");
    }
    // The rows point at the events that made them.
    let linked = count(
        &mut c,
        "SELECT count(*) AS n FROM order_changes ch JOIN order_events e ON e.id = ch.event_id \
         WHERE e.order_id = ch.order_id AND e.status = ch.to_status AND e.applied AND e.source = ch.source",
    );
    assert_eq!(linked as usize, listed.len());

    // Duplicates again, later, alone: nothing is announced.
    for (rid, o, label) in &seconds {
        assert_eq!(app.send(rid, o, label).await.0, 200);
    }
    assert!(drain(&mut listen, Duration::from_millis(300)).is_empty());
    assert_eq!(changes(&mut c).len(), listed.len());
}

#[test]
fn two_changes_of_one_order_in_one_batch_are_two_changes_and_a_rollback_announces_none() {
    let db = TestDb::new();
    let mut c = db.conn();
    let mut listen = listener(&db);
    let s = schedule();
    let o = [
        obs("B1", Status::Pending, Source::Callback),
        obs("B1", Status::Shipped, Source::Callback),
        obs("B1", Status::Pending, Source::Callback),
    ];
    let rids = ["b-1", "b-2", "b-3"];
    let items: Vec<Item<'_>> = o
        .iter()
        .zip(rids)
        .map(|(obs, r)| Item {
            obs,
            request_id: Some(r),
            signed_over: None,
        })
        .collect();
    // Rolled back: no row, no notification.
    let _ = c.transaction::<(), diesel::result::Error, _>(|c| {
        apply_batch(c, &items, Utc::now(), &s).unwrap();
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(drain(&mut listen, Duration::from_millis(200)).is_empty());
    assert!(changes(&mut c).is_empty());

    c.transaction::<_, diesel::result::Error, _>(|c| apply_batch(c, &items, Utc::now(), &s))
        .unwrap();
    let heard = drain(&mut listen, Duration::from_millis(300));
    assert_eq!(heard, changes(&mut c));
    assert_eq!(
        moves(&heard),
        vec![
            mv("B1", "new", "pending", "callback"),
            mv("B1", "pending", "shipped", "callback"),
        ]
    );
}

#[test]
fn a_reader_catching_up_by_id_under_concurrent_writers_misses_no_change() {
    let db = TestDb::new();
    const WRITERS: usize = 4;
    const BATCHES: usize = 40;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut c = db.conn();
            std::thread::spawn(move || {
                let s = schedule();
                for b in 0..BATCHES {
                    let o: Vec<Observation> = (0..(1 + (b * 7 + w) % 9))
                        .map(|i| obs(&format!("W{w}-{b}-{i}"), Status::Pending, Source::Poll))
                        .collect();
                    let items: Vec<Item<'_>> = o.iter().map(Item::trusted).collect();
                    c.transaction::<_, diesel::result::Error, _>(|c| {
                        apply_batch(c, &items, Utc::now(), &s)?;
                        // Work after the change, before the commit: a
                        // writer that drew a smaller id commits later.
                        diesel::sql_query("SELECT pg_sleep(0.002)").execute(c)?;
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let mut c = db.conn();
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = 0;
            loop {
                let done = stop.load(std::sync::atomic::Ordering::SeqCst);
                for r in feed::since(&mut c, last, None, 1000).unwrap() {
                    last = r.id;
                    seen.push(r.id);
                }
                if done {
                    return seen;
                }
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let all: Vec<i64> = changes(&mut db.conn()).iter().map(|r| r.id).collect();
    let expected: usize = (0..WRITERS)
        .flat_map(|w| (0..BATCHES).map(move |b| 1 + (b * 7 + w) % 9))
        .sum();
    assert_eq!(all.len(), expected);
    let seen_set: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen_set.len(), seen.len(), "each change read once");
    assert_eq!(seen, all, "read in id order, none skipped");
}

/// Lines a child process prints, as they come.
fn collect_lines(
    r: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = std::sync::Arc::clone(&lines);
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(r).lines() {
            let Ok(l) = l else { return };
            into.lock().unwrap().push(l);
        }
    });
    lines
}

async fn until_lines(lines: &std::sync::Mutex<Vec<String>>, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} lines: {:?}",
            lines.lock().unwrap().len(),
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send one change for each of `orders` (new orders to pending).
async fn changes_for(app: &TestApp, orders: &[String]) {
    let cbs: Vec<(String, String, &str)> = orders
        .iter()
        .map(|o| (format!("R-{o}"), o.clone(), "待处理"))
        .collect();
    send_all(app, &cbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_prints_every_change_and_resumes_without_a_gap_when_the_database_comes_back() {
    let app = TestApp::spawn_with(&[CONFIRM_OFF]).await;
    let proxy = PgProxy::start().await;
    let names = |from: usize, n: usize| -> Vec<String> {
        (from..from + n).map(|i| format!("WA{i:03}")).collect()
    };
    // Changes from before the watch started, caught up with --since-id 0.
    changes_for(&app, &names(0, 5)).await;
    let mut child = crate::cli::cmd()
        .env("DATABASE_URL", app.db.url_via(proxy.port))
        .args(["watch", "--since-id", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect_lines(child.stdout.take().unwrap());
    let err = collect_lines(child.stderr.take().unwrap());
    until_lines(&out, 5, "caught up").await;
    changes_for(&app, &names(5, 10)).await;
    until_lines(&out, 15, "followed").await;

    // The watcher's database goes away for 2 s; changes go on meanwhile.
    proxy.cut();
    changes_for(&app, &names(15, 10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    changes_for(&app, &names(25, 5)).await;
    proxy.restore().await;
    changes_for(&app, &names(30, 5)).await;
    until_lines(&out, 35, "resumed").await;
    let _ = child.kill();
    let _ = child.wait();

    let listed = changes(&mut app.db.conn());
    assert_eq!(listed.len(), 35);
    let printed: Vec<String> = out.lock().unwrap().clone();
    let want: Vec<String> = listed
        .iter()
        .map(|r| {
            format!(
                "#{} {} {} {} {} -> {} ({})",
                r.id,
                haoka_sync::rules::schedule::china_time(r.at),
                r.vendor,
                r.order_id,
                r.from_status,
                r.to_status,
                r.source
            )
        })
        .collect();
    assert_eq!(printed, want, "every change once, in id order, no gap");
    let err = err.lock().unwrap().join("\n");
    assert!(
        err.contains("watch: following order_changes after id 0"),
        "{err}"
    );
    assert!(err.contains("watch: lost the database ("), "{err}");
    assert!(err.contains("watch: reconnected after "), "{err}");
}

#[test]
fn watch_on_a_missing_database_fails_in_one_line_and_filters_by_vendor() {
    let out = crate::cli::cmd()
        .env(
            "DATABASE_URL",
            haoka_sync::config::DatabaseUrl::parse(&admin_url())
                .unwrap()
                .with_database("haoka_watch_missing_db")
                .expose(),
        )
        .args(["watch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("does not exist (DATABASE_URL): `haoka-sync migrate` creates it"),
        "{err}"
    );

    // --vendor: another vendor's changes are not printed.
    let db = TestDb::new();
    let mut c = db.conn();
    let s = schedule();
    let o = [obs("V1", Status::Pending, Source::Poll)];
    let items: Vec<Item<'_>> = o.iter().map(Item::trusted).collect();
    c.transaction::<_, diesel::result::Error, _>(|c| apply_batch(c, &items, Utc::now(), &s))
        .unwrap();
    let watch_json = |vendor: &str| {
        crate::cli::cmd()
            .env("DATABASE_URL", db.url.expose())
            .args([
                "watch",
                "--since-id",
                "0",
                "--vendor",
                vendor,
                "--format",
                "json",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = watch_json("damaijia");
    let printed = collect_lines(child.stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();
    assert!(printed.lock().unwrap().is_empty());
    let mut child = watch_json("haoka172");
    let printed = collect_lines(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while printed.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = printed.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let row: FeedRow = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(
        (row.order_id.as_str(), row.to_status.as_str()),
        ("V1", "pending")
    );
}
