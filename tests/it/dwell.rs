//! `status_dwell` on a history with known stays: counts, quantiles, the
//! share that outlived the overdue time, stays still going on censored (not
//! dropped, not counted as ended), and what `show` and `status-dwell` print.

use std::process::Command;

use chrono::{DateTime, Duration as Td, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};
use haoka_sync::config::Config;
use haoka_sync::rules::schedule::Schedule;
use haoka_sync::rules::status::{Observation, OrderFields, SignedOver, Source, Status};
use haoka_sync::store::dwell::{self as dstore, Refresh};
use haoka_sync::store::poll as pstore;
use haoka_sync::store::schedule as sstore;
use haoka_sync::store::{apply_batch, Item};
use haoka_sync::vendors::Vendor;

use crate::helpers::*;

const H: i64 = 3600;

/// One observation of `order`, heard at `at`.
fn heard(
    c: &mut PgConnection,
    s: &Schedule,
    vendor: Vendor,
    order: &str,
    label: &str,
    source: Source,
    at: DateTime<Utc>,
) {
    let status = match vendor {
        Vendor::Haoka172 => haoka_sync::vendors::haoka172::labels::status_of(label),
        Vendor::Damaijia => Status::Pending,
    };
    let obs = Observation {
        vendor,
        order_id: order.into(),
        source,
        vendor_status: Some(label.into()),
        status,
        fields: OrderFields::default(),
    };
    let rid = format!("R-{order}-{}", at.timestamp_micros());
    let item = Item {
        obs: &obs,
        request_id: (source == Source::Callback).then_some(rid.as_str()),
        signed_over: (source == Source::Callback).then_some(SignedOver::OrderId),
    };
    c.transaction(|c| apply_batch(c, &[item], at, s)).unwrap();
}

#[derive(Debug, PartialEq, QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    vendor: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    orders: i64,
    #[diesel(sql_type = BigInt)]
    finished: i64,
    #[diesel(sql_type = BigInt)]
    still_open: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    p50: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    p90: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    p99: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    overdue: Option<i64>,
    #[diesel(sql_type = Nullable<Double>)]
    outlived: Option<f64>,
}

/// `status_dwell` as ops read it, intervals in seconds.
fn dwell(c: &mut PgConnection, vendor: &str, status: &str) -> Row {
    diesel::sql_query(
        "SELECT vendor, status, orders, finished, still_open, \
                extract(epoch FROM p50)::bigint AS p50, extract(epoch FROM p90)::bigint AS p90, \
                extract(epoch FROM p99)::bigint AS p99, extract(epoch FROM overdue)::bigint AS overdue, \
                outlived_overdue::float8 AS outlived \
         FROM status_dwell WHERE vendor = $1 AND status = $2",
    )
    .bind::<Text, _>(vendor)
    .bind::<Text, _>(status)
    .get_result(c)
    .unwrap()
}

fn row(
    status: &str,
    counts: (i64, i64, i64),
    q: [Option<i64>; 3],
    overdue: i64,
    outlived: Option<f64>,
) -> Row {
    Row {
        vendor: "haoka172".into(),
        status: status.into(),
        orders: counts.0,
        finished: counts.1,
        still_open: counts.2,
        p50: q[0],
        p90: q[1],
        p99: q[2],
        overdue: Some(overdue),
        outlived,
    }
}

/// Shares to four places, as the view rounds them.
fn rounded(mut r: Row) -> Row {
    r.outlived = r.outlived.map(|s| (s * 10_000.0).round() / 10_000.0);
    r
}

#[test]
fn status_dwell_reports_known_stays_and_counts_open_ones_as_censored() {
    let db = TestDb::new();
    let mut c = db.conn();
    // Terminal callbacks apply at once (no 172 login to confirm them).
    let s = Config::with(&[("HAOKA172_OVERDUE", "submitted=12h")])
        .unwrap()
        .schedule();
    for v in Vendor::ALL {
        sstore::begin(
            &mut c,
            v,
            &s.settings(v),
            "t",
            sstore::RESCHEDULE_LEASE,
            Utc::now(),
        )
        .unwrap();
    }
    let now = Utc::now();
    let base = now - Td::days(10);
    let at = |secs: i64| base + Td::seconds(secs);
    let cb = |c: &mut PgConnection, id: &str, label: &str, t: DateTime<Utc>| {
        heard(c, &s, Vendor::Haoka172, id, label, Source::Callback, t)
    };

    // pending, every stay ended (1 h to 10 h, then revoked): the plain
    // quantiles. P9 also gets a label we cannot map half way: it changes
    // no status, so it ends no stay.
    for k in 1..=10 {
        let id = format!("P{k}");
        cb(&mut c, &id, "待处理", at(0));
        if k == 9 {
            cb(&mut c, &id, "已失效", at(5 * H));
        }
        cb(&mut c, &id, "已撤单", at(k * H));
    }
    // submitted: five ended (1, 2, 10, 20, 30 h, then shipped); two
    // entered half an hour ago and two 40 hours ago, still in it; one
    // entered at `base` whose tracking expired after 5 h (censored then).
    for (id, hours) in [("S1", 1), ("S2", 2), ("S3", 10), ("S4", 20), ("S5", 30)] {
        cb(&mut c, id, "已提运营商", at(0));
        cb(&mut c, id, "已发货", at(hours * H));
    }
    for id in ["S6", "S7"] {
        cb(&mut c, id, "已提运营商", now - Td::minutes(30));
    }
    for id in ["S8", "S9"] {
        cb(&mut c, id, "已提运营商", now - Td::hours(40));
    }
    cb(&mut c, "X1", "已提运营商", at(0));
    diesel::sql_query(
        "UPDATE order_polls SET next_check_at = NULL, tracking_expired_at = $1 WHERE order_id = 'X1'",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(at(5 * H))
    .execute(&mut c)
    .unwrap();
    // completed: ten ended (1 h to 10 h, then settled), one still in it
    // after ten days.
    for k in 1..=11 {
        let id = format!("C{k}");
        cb(&mut c, &id, "已完成", at(0));
        if k <= 10 {
            cb(&mut c, &id, "已结算", at(k * H));
        }
    }
    // new: registered orders until their first status (30 min, 1 h, 90
    // min), one never heard of; orders created by their first callback
    // (all the above) never waited as new. U1's first label is unmapped:
    // new, then unknown for 2 h.
    let registered: Vec<String> = ["N1", "N2", "N3", "U1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    pstore::register(&mut c, Vendor::Haoka172, &registered, &s, base).unwrap();
    cb(&mut c, "N1", "已撤单", at(30 * 60));
    cb(&mut c, "N2", "已撤单", at(90 * 60));
    cb(&mut c, "U1", "已失效", at(H));
    cb(&mut c, "U1", "已撤单", at(3 * H));
    // 大麦家 has its own rows: registered, read pending after 2 h.
    pstore::register(&mut c, Vendor::Damaijia, &["D1".to_string()], &s, base).unwrap();
    heard(
        &mut c,
        &s,
        Vendor::Damaijia,
        "D1",
        "待发货",
        Source::Poll,
        at(2 * H),
    );

    let done = dstore::refresh(&mut c, now, true).unwrap();
    let Refresh::Done { stays, open, .. } = done else {
        panic!("{done:?}")
    };
    // new 4, pending 10, submitted 10, shipped 5, completed 11, unknown 1;
    // 大麦家 new 1 and pending 1.
    assert_eq!((stays, open), (43, 13));

    assert_eq!(
        dwell(&mut c, "haoka172", "pending"),
        row(
            "pending",
            (10, 10, 0),
            [Some(5 * H), Some(9 * H), Some(10 * H)],
            6 * H,
            Some(0.4)
        ),
        "no stay open: the plain quantiles (percentile_disc), 4 of 10 over 6 h"
    );
    // 0.5 h ×2 (open), 1 h, 2 h, 5 h (open: expired), 10 h, 20 h, 30 h,
    // 40 h ×2 (open). At risk 8 at 1 h: 7/8; 2 h: × 6/7 = 0.75; 10 h: × 4/5
    // = 0.6; 20 h: × 3/4 = 0.45, the median. Dropping the open stays gives
    // 10 h, counting them as ended 5 h; and the expired one counted open
    // until now would make the share over 12 h 0.625, not 0.6.
    assert_eq!(
        rounded(dwell(&mut c, "haoka172", "submitted")),
        row(
            "submitted",
            (10, 5, 5),
            [Some(20 * H), None, None],
            12 * H,
            Some(0.6)
        )
    );
    // 10 ended of 11: the median is the 6th (S = 5/11), p90 the 10th
    // (1/11); p99 never reached while one stays open. Dropping it would
    // give 5 h and 9 h. Whether more than 1/11 outlive 15 d is not known
    // yet: every stay seen is shorter, and one is still going on.
    assert_eq!(
        dwell(&mut c, "haoka172", "completed"),
        row(
            "completed",
            (11, 10, 1),
            [Some(6 * H), Some(10 * H), None],
            15 * 24 * H,
            None
        )
    );
    assert_eq!(
        rounded(dwell(&mut c, "haoka172", "new")),
        row("new", (4, 3, 1), [Some(H), None, None], 30 * 60, Some(0.75))
    );
    assert_eq!(
        dwell(&mut c, "haoka172", "unknown"),
        row("unknown", (1, 1, 0), [Some(2 * H); 3], H, Some(1.0))
    );
    assert_eq!(
        dwell(&mut c, "haoka172", "shipped"),
        row("shipped", (5, 0, 5), [None; 3], 7 * 24 * H, Some(1.0))
    );
    let d = dwell(&mut c, "damaijia", "new");
    assert_eq!(
        (d.orders, d.finished, d.p50, d.overdue),
        (1, 1, Some(2 * H), Some(0))
    );
    assert_eq!(dwell(&mut c, "damaijia", "pending").still_open, 1);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM status_dwell"),
        12,
        "every vendor and non-terminal status"
    );

    // Daily: a second look the same day does nothing; a new overdue time
    // makes it due again.
    assert_eq!(dstore::refresh(&mut c, now, false).unwrap(), Refresh::Fresh);
    c.batch_execute(
        "UPDATE schedule_settings SET settings = jsonb_set(settings, '{waits,submitted}', '86400') WHERE vendor = 'haoka172'",
    )
    .unwrap();
    assert!(matches!(
        dstore::refresh(&mut c, now, false).unwrap(),
        Refresh::Done { .. }
    ));
    assert_eq!(dwell(&mut c, "haoka172", "submitted").overdue, Some(24 * H));

    // What ops read: the table, and an order past its peers' p90.
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_haoka-sync"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", db.url.expose())
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = run(&["status-dwell"]);
    let pending = table
        .lines()
        .find(|l| l.starts_with("haoka172  pending"))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        pending.split_whitespace().collect::<Vec<_>>(),
        ["haoka172", "pending", "10", "10", "0", "5h", "9h", "10h", "6h", "40.0", "%"],
        "{table}"
    );
    let shown = run(&["show", "haoka172", "C11"]);
    assert!(
        shown.contains("  in status:     10d (since ")
            && shown.contains(
                "): longer than 90 % of haoka172 completed orders (p90 10h, status_dwell)"
            ),
        "{shown}"
    );
    let shown = run(&["show", "haoka172", "S6"]);
    assert!(
        shown.contains("  in status:     30m")
            && shown.contains("): haoka172 submitted orders stay p50 20h (status_dwell)"),
        "{shown}"
    );
    assert!(!shown.contains("longer than"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refreshes_status_dwell_when_it_is_due() {
    let app = TestApp::spawn().await;
    let mut c = app.db.conn();
    for _ in 0..200 {
        if count(&mut c, "SELECT count(*) AS n FROM status_dwell") == 12 {
            // Made with the overdue times serve recorded at start.
            let d = dwell(&mut c, "haoka172", "shipped");
            assert_eq!((d.orders, d.overdue), (0, Some(7 * 24 * H)));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("serve did not refresh status_dwell at start");
}
