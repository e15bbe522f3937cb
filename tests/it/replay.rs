//! `haoka-sync replay`: stored callback requests judged again with the
//! configuration of now and committed as arrivals (issue 15, acceptance 3).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;

use crate::cli::cmd;
use crate::helpers::*;

/// `haoka-sync replay <args>` against `db`, with the tests' secret unless
/// `env` sets another; (exit code, stdout, stderr).
fn replay(db: &TestDb, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = cmd();
    c.arg("replay")
        .args(args)
        .env("DATABASE_URL", db.url.expose())
        .env("HAOKA172_SECRET", SECRET)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[derive(Debug, PartialEq, QueryableByName)]
struct Replayed {
    /// `-` when none could be read.
    #[diesel(sql_type = diesel::sql_types::Text)]
    request_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    outcome: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    replay_outcome: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The event with the request's `RequidId`, when the replay linked it.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    linked: bool,
}

/// Every inbox row, oldest first, with what replays recorded on it.
fn replayed(c: &mut PgConnection) -> Vec<Replayed> {
    diesel::sql_query(
        "SELECT COALESCE(i.request_id, '-') AS request_id, i.outcome, i.replay_outcome, i.replayed_at, \
           (i.replay_event_id IS NOT NULL AND i.replay_event_id = e.id) AS linked \
         FROM inbound_callbacks i LEFT JOIN order_events e ON e.request_id = i.request_id \
         ORDER BY i.id",
    )
    .load(c)
    .unwrap()
}

#[derive(Debug, PartialEq, QueryableByName)]
struct OrderState {
    #[diesel(sql_type = diesel::sql_types::Text)]
    order_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    vendor_status: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    updated_at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    events: i64,
}

fn orders(c: &mut PgConnection) -> Vec<OrderState> {
    diesel::sql_query(
        "SELECT o.order_id, o.status, o.vendor_status, o.updated_at, \
           (SELECT count(*) FROM order_events e WHERE e.vendor = o.vendor AND e.order_id = o.order_id) AS events \
         FROM orders o ORDER BY o.order_id",
    )
    .load(c)
    .unwrap()
}

/// The inbox id of each stored request with this `RequidId`, oldest first.
fn inbox_ids(c: &mut PgConnection, request_id: &str) -> Vec<i64> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    diesel::sql_query("SELECT id FROM inbound_callbacks WHERE request_id = $1 ORDER BY id")
        .bind::<diesel::sql_types::Text, _>(request_id)
        .load::<Id>(c)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_stored_without_a_secret_are_recovered_by_one_replay_with_no_vendor_call() {
    // A service started without HAOKA172_SECRET: 25 orders, two callbacks
    // each, all stored and answered 503.
    let first = TestApp::spawn_with(&[("HAOKA172_SECRET", "")]).await;
    let mut sent = Vec::new();
    for i in 0..25 {
        let order_no = format!("REP{i:02}");
        let last = if i % 2 == 0 { "已发货" } else { "已完成" };
        for (suffix, label) in [("a", "已提运营商"), ("b", last)] {
            let rid = format!("R-{order_no}-{suffix}");
            let (status, body) = first.send(&rid, &order_no, label).await;
            assert_eq!(status, 503, "{body}");
            sent.push(rid);
        }
    }
    let TestApp { db, .. } = first;
    let mut c = db.conn();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM inbound_callbacks WHERE outcome = 'not_configured'"
        ),
        50
    );
    assert!(orders(&mut c).is_empty());

    // Restarted with the secret, polling the fake 172.
    let sim = start_sim(sim_config()).await;
    let app = TestApp::spawn_on(db, None, &sim.haoka172().env()).await;

    // Without a filter, or without the secret, it refuses and says why.
    let (code, out, err) = replay(&app.db, &[], &[]);
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--outcome") && err.contains("--since") && err.contains("--id"),
        "{err}"
    );
    let (code, _, err) = replay(
        &app.db,
        &[("HAOKA172_SECRET", "")],
        &["--outcome", "not_configured"],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("HAOKA172_SECRET is not set"), "{err}");
    let (code, _, err) = replay(&app.db, &[], &["--since", "last tuesday"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");
    let (code, _, err) = replay(&app.db, &[], &["--outcome", "not_configued"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("not_configued") && err.contains("not_configured"),
        "{err}"
    );

    // A dry run says what would happen and commits nothing.
    let (code, out, err) = replay(&app.db, &[], &["--outcome", "not_configured", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "replay (dry run, nothing committed): 50 selected: 50 would apply, 0 duplicate, 0 still rejected, 0 not replayable"
    );
    assert!(orders(&mut c).is_empty(), "a dry run creates no order");
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 0);
    assert!(replayed(&mut c).iter().all(|r| r.replayed_at.is_none()));

    // The replay applies all 50, in the order they arrived.
    let (code, out, err) = replay(&app.db, &[], &["--outcome", "not_configured"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "replay: 50 selected: 50 applied, 0 duplicate, 0 still rejected, 0 not replayable"
    );
    let after = orders(&mut c);
    assert_eq!(after.len(), 25);
    for (i, o) in after.iter().enumerate() {
        let (status, label) = if i % 2 == 0 {
            ("shipped", "已发货")
        } else {
            ("completed", "已完成")
        };
        assert_eq!(
            (o.status.as_str(), o.vendor_status.as_deref(), o.events),
            (status, Some(label), 2),
            "{o:?}"
        );
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM order_events WHERE source = 'callback' AND applied AND request_id IS NOT NULL"),
        50
    );
    let rows = replayed(&mut c);
    assert_eq!(
        rows.iter()
            .map(|r| r.request_id.clone())
            .collect::<Vec<_>>(),
        sent
    );
    for r in &rows {
        assert_eq!(r.outcome, "not_configured", "the original outcome is kept");
        assert_eq!(r.replay_outcome.as_deref(), Some("applied"));
        assert!(r.linked, "{r:?}");
    }

    // A second replay changes nothing: every request is a duplicate. The
    // summary is also the one log line.
    let (code, out, err) = replay(
        &app.db,
        &[("RUST_LOG", "info")],
        &["--outcome", "not_configured"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "replay: 50 selected: 0 applied, 50 duplicate, 0 still rejected, 0 not replayable"
    );
    let logged: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("haoka_sync::cli::replay"))
        .collect();
    assert_eq!(logged.len(), 1, "{err}");
    assert!(
        logged[0].contains(&format!("{out}; selected by outcome not_configured")),
        "{err}"
    );
    assert_eq!(orders(&mut c), after, "orders and their events unchanged");
    let again = replayed(&mut c);
    for (r, before) in again.iter().zip(&rows) {
        assert_eq!(r.outcome, "not_configured");
        assert_eq!(r.replay_outcome.as_deref(), Some("duplicate"));
        assert!(
            r.replayed_at > before.replayed_at,
            "the latest replay is recorded"
        );
        assert!(r.linked, "the event the first replay produced stays linked");
    }

    // No vendor was asked, and nothing is left for the poller to ask.
    let pass = app.poll().await;
    assert_eq!(pass.queried, 0, "{pass:?}");
    assert_eq!(sim.haoka172().calls().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_apply_once_the_secret_is_fixed_by_id_or_by_outcome_and_the_summary_counts_each(
) {
    // A wrong secret: every signed callback is a bad signature.
    let wrong = TestApp::spawn_with(&[
        ("HAOKA172_SECRET", "a-secret-that-is-not-the-vendors"),
        ("CALLBACK_MAX_BODY_BYTES", "1024"),
    ])
    .await;
    for (rid, order_no) in [("R-B1", "BAD1"), ("R-B2", "BAD2"), ("R-B3", "BAD3")] {
        assert_eq!(wrong.send(rid, order_no, "已发货").await.0, 401);
    }
    let (status, _) = wrong
        .post_raw("application/json", br#"{"RequidId":"R-M1"}"#.to_vec(), None)
        .await;
    assert_eq!(status, 400);
    let big = callback_with(
        "R-T1",
        "BIG1",
        "已发货",
        json!({"Remark": "x".repeat(2000)}),
    );
    let (status, _) = wrong
        .post_callback(&big, Some(&wrong.key.encrypt("BIG1")))
        .await;
    assert_eq!(status, 413);
    let TestApp { db, .. } = wrong;

    // Fixed; the vendor's retry of R-B1 arrives live.
    let app = TestApp::spawn_on(db, None, &[]).await;
    assert_eq!(app.send("R-B1", "BAD1", "已发货").await.0, 200);
    let mut c = app.db.conn();
    let b2 = inbox_ids(&mut c, "R-B2")[0];
    let live_b1 = inbox_ids(&mut c, "R-B1")[1];

    // One request by its id.
    let (code, out, err) = replay(&app.db, &[], &["--id", &b2.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "replay: 1 selected: 1 applied, 0 duplicate, 0 still rejected, 0 not replayable"
    );
    assert_eq!(order(&mut c, "BAD2").unwrap().status, "shipped");
    assert!(order(&mut c, "BAD3").is_none(), "only the id asked for");

    // Everything rejected for its signature, body or size.
    let (code, out, err) = replay(
        &app.db,
        &[],
        &[
            "--outcome",
            "bad_signature,malformed",
            "--outcome",
            "too_large",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "replay: 5 selected: 1 applied, 2 duplicate, 1 still rejected (malformed 1), \
         1 not replayable (too_large: only a sample of the body was kept)"
    );
    assert_eq!(order(&mut c, "BAD3").unwrap().status, "shipped");
    assert!(order(&mut c, "BIG1").is_none());
    let rows = replayed(&mut c);
    let outcomes: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r.request_id.as_str(),
                r.outcome.as_str(),
                r.replay_outcome.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("R-B1", "bad_signature", Some("duplicate")),
            ("R-B2", "bad_signature", Some("duplicate")),
            ("R-B3", "bad_signature", Some("applied")),
            ("R-M1", "malformed", Some("malformed")),
            ("-", "too_large", None),
            ("R-B1", "applied", None),
        ]
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 3);

    // Ids not selected are explained; the others still run.
    let (code, out, err) = replay(
        &app.db,
        &[],
        &["--id", &b2.to_string(), &live_b1.to_string(), "999999"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "replay: 1 selected: 0 applied, 1 duplicate, 0 still rejected, 0 not replayable"
    );
    assert!(
        err.contains(&format!("--id {live_b1}: stored as applied, not among the outcomes replayed (add --outcome applied to replay it)")),
        "{err}"
    );
    assert!(
        err.contains("--id 999999: no stored haoka172 callback request has this id"),
        "{err}"
    );
    // Named, an applied request is judged again safely: a duplicate.
    let (_, out, _) = replay(
        &app.db,
        &[],
        &["--id", &live_b1.to_string(), "--outcome", "applied"],
    );
    assert_eq!(
        out,
        "replay: 1 selected: 0 applied, 1 duplicate, 0 still rejected, 0 not replayable"
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM order_events"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_selects_by_arrival_and_the_source_rule_is_the_current_one() {
    let strict = TestApp::spawn_with(&[("CALLBACK_ALLOWED_SOURCES", "203.0.113.0/24")]).await;
    for i in 1..=4 {
        assert_eq!(
            strict
                .send(&format!("R-W{i}"), &format!("WIN{i}"), "待处理")
                .await
                .0,
            403
        );
    }
    let TestApp { db, .. } = strict;
    let mut c = db.conn();
    // Arrivals around a China-time hour, W1 to W4 (a refused sender's
    // request is not parsed, so its row has no request id).
    c.batch_execute(
        "UPDATE inbound_callbacks i SET received_at = t.at FROM ( \
           SELECT id, (ARRAY[timestamptz '2026-12-01 09:59:59+08', '2026-12-01 10:00:00+08', \
                             '2026-12-01 10:59:59.9+08', '2026-12-01 11:00:00+08'])[row_number() OVER (ORDER BY id)] AS at \
           FROM inbound_callbacks) t WHERE i.id = t.id",
    )
    .unwrap();
    let window = [
        "--since",
        "2026-12-01 10:00:00",
        "--until",
        "2026-12-01T03:00:00Z",
    ];

    // Still outside the allowed sources: judged again, still refused.
    let strict_env = [("CALLBACK_ALLOWED_SOURCES", "203.0.113.0/24")];
    let (code, out, err) = replay(&db, &strict_env, &window);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "replay: 2 selected: 0 applied, 0 duplicate, 2 still rejected (forbidden_source 2), 0 not replayable"
    );
    // The sender's address is allowed now: the two in the window apply.
    let allowed = [("CALLBACK_ALLOWED_SOURCES", "127.0.0.1")];
    let (_, out, _) = replay(&db, &allowed, &window);
    assert_eq!(
        out,
        "replay: 2 selected: 2 applied, 0 duplicate, 0 still rejected, 0 not replayable"
    );
    let ids: Vec<String> = orders(&mut c).into_iter().map(|o| o.order_id).collect();
    assert_eq!(ids, ["WIN2", "WIN3"]);
    // A day from its China midnight, no end.
    let (_, out, _) = replay(&db, &allowed, &["--since", "2026-12-01"]);
    assert_eq!(
        out,
        "replay: 4 selected: 2 applied, 2 duplicate, 0 still rejected, 0 not replayable"
    );
    let (_, out, _) = replay(&db, &allowed, &["--since", "2026-12-02 00:00:00 +08:00"]);
    assert_eq!(
        out,
        "replay: 0 selected: 0 applied, 0 duplicate, 0 still rejected, 0 not replayable"
    );
    assert_eq!(count(&mut c, "SELECT count(*) AS n FROM orders"), 4);
    let (code, _, err) = replay(
        &db,
        &allowed,
        &["--since", "2026-12-02", "--until", "2026-12-01"],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("is not before --until"), "{err}");
}

#[test]
fn replay_fails_in_one_line_without_a_usable_database() {
    let mut c = cmd();
    let out = c
        .args(["replay", "--outcome", "not_configured"])
        .env("HAOKA172_SECRET", SECRET)
        .env(
            "DATABASE_URL",
            haoka_sync::config::DatabaseUrl::parse(&admin_url())
                .unwrap()
                .with_database(&format!("haoka_absent_{}", std::process::id()))
                .expose(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("does not exist") && err.contains("no callbacks to replay"),
        "{err}"
    );
}
