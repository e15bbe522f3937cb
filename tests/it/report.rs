//! `haoka-sync report` on a history with known figures, written straight
//! into the tables: callbacks, vendor calls and status changes inside and
//! just outside the China-time day, orders stuck in each way and orders
//! that are not, contradictions with PDD and callback gaps; the text and
//! the csv give the same figures. Also: lists bounded in text and whole in
//! csv, and the one-line errors (a bad or future `--day`, a missing or
//! unmigrated database).

use chrono::{DateTime, Duration as Td, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Jsonb, Nullable, Text, Timestamptz};
use haoka_sync::rules::schedule::china_time;
use haoka_sync::rules::settlement::{activated_before_is_past_settlement, expected_settlement};
use haoka_sync::rules::time::china_day_bounds;

use crate::helpers::*;

/// The day reconciled.
const DAY: &str = "2026-11-15";

fn day() -> (DateTime<Utc>, DateTime<Utc>) {
    china_day_bounds(NaiveDate::parse_from_str(DAY, "%Y-%m-%d").unwrap())
}

fn us(n: i64) -> Td {
    Td::microseconds(n)
}

fn callback(c: &mut PgConnection, outcome: &str, at: DateTime<Utc>) {
    diesel::sql_query(
        "INSERT INTO inbound_callbacks (vendor, received_at, outcome, headers, body, body_size) \
         VALUES ('haoka172', $1, $2, '{}', '{}', 2)",
    )
    .bind::<Timestamptz, _>(at)
    .bind::<Text, _>(outcome)
    .execute(c)
    .unwrap();
}

fn call(
    c: &mut PgConnection,
    vendor: &str,
    api: &str,
    outcome: &str,
    cost: Option<i64>,
    at: DateTime<Utc>,
) {
    diesel::sql_query(
        "INSERT INTO vendor_calls (vendor, called_at, api, order_ids, caller, outcome, cost) \
         VALUES ($1, $2, $3, ARRAY['X'], 'test:1:a', $4, $5)",
    )
    .bind::<Text, _>(vendor)
    .bind::<Timestamptz, _>(at)
    .bind::<Text, _>(api)
    .bind::<Text, _>(outcome)
    .bind::<Nullable<diesel::sql_types::BigInt>, _>(cost)
    .execute(c)
    .unwrap();
}

fn change(
    c: &mut PgConnection,
    vendor: &str,
    order: &str,
    from: &str,
    to: &str,
    source: &str,
    at: DateTime<Utc>,
) {
    diesel::sql_query(
        "INSERT INTO order_change_log (id, event_id, vendor, order_id, from_status, to_status, source, at, order_seq) \
         VALUES (nextval('order_change_log_id_seq'), 1, $1, $2, $3, $4, $5, $6, 1)",
    )
    .bind::<Text, _>(vendor)
    .bind::<Text, _>(order)
    .bind::<Text, _>(from)
    .bind::<Text, _>(to)
    .bind::<Text, _>(source)
    .bind::<Timestamptz, _>(at)
    .execute(c)
    .unwrap();
}

/// An order in `status` since `since`, with its card's activation and
/// first top-up; a phone number and a receiver's name that the report must
/// never print.
fn order(
    c: &mut PgConnection,
    vendor: &str,
    id: &str,
    status: &str,
    since: DateTime<Utc>,
    activated: Option<DateTime<Utc>>,
    first_charge: Option<bool>,
) {
    order_with(c, vendor, id, status, since, activated, first_charge, "{}");
}

#[allow(clippy::too_many_arguments)]
fn order_with(
    c: &mut PgConnection,
    vendor: &str,
    id: &str,
    status: &str,
    since: DateTime<Utc>,
    activated: Option<DateTime<Utc>>,
    first_charge: Option<bool>,
    details: &str,
) {
    let mut details: serde_json::Value = serde_json::from_str(details).unwrap();
    details["receiver_name"] = "张三丰".into();
    diesel::sql_query(
        "INSERT INTO orders (vendor, order_id, status, status_changed_at, created_at, activated_at, \
                             first_charge, third_phone, details) \
         VALUES ($1, $2, $3, $4, $4 - interval '1 day', $5, $6, '13912345678', $7)",
    )
    .bind::<Text, _>(vendor)
    .bind::<Text, _>(id)
    .bind::<Text, _>(status)
    .bind::<Timestamptz, _>(since)
    .bind::<Nullable<Timestamptz>, _>(activated)
    .bind::<Nullable<Bool>, _>(first_charge)
    .bind::<Jsonb, _>(details)
    .execute(c)
    .unwrap();
}

/// The overdue times as `serve` records them (the defaults).
fn schedule_settings(c: &mut PgConnection) {
    diesel::sql_query(
        "INSERT INTO schedule_settings (vendor, settings, recorded_at) VALUES \
         ('haoka172', '{\"waits\": {\"new\": 1800, \"pending\": 21600, \"submitted\": 172800, \"shipped\": 604800, \"completed\": 1296000, \"unknown\": 3600}, \"min_recheck\": 60, \"max_recheck\": 2592000, \"rule\": 1}', now()), \
         ('damaijia', '{\"waits\": {\"new\": 0, \"pending\": 7200, \"submitted\": 21600, \"shipped\": 43200, \"completed\": 86400, \"unknown\": 3600}, \"min_recheck\": 60, \"max_recheck\": 2592000, \"rule\": 1}', now())",
    )
    .execute(c)
    .unwrap();
}

fn gap(c: &mut PgConnection, silent: DateTime<Utc>, resumed: Option<DateTime<Utc>>) -> i64 {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    diesel::sql_query(
        "INSERT INTO callback_gaps (vendor, silent_since, resumed_at, detected_at, expected_callbacks, swept_orders, closed_at) \
         VALUES ('haoka172', $1, $2, $1 + interval '1 hour', 40, 12, $2 + interval '15 minutes') RETURNING id",
    )
    .bind::<Timestamptz, _>(silent)
    .bind::<Nullable<Timestamptz>, _>(resumed)
    .get_result::<Id>(c)
    .unwrap()
    .id
}

/// Run `report` with `args` on `db`: (exit code, stdout, stderr).
fn report(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let out = crate::cli::cmd()
        .env("DATABASE_URL", db.url.expose())
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The csv, parsed: its rows as `[section, vendor, item, value, order_id,
/// detail]`, after checking the header.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        r.headers().unwrap(),
        vec!["section", "vendor", "item", "value", "order_id", "detail"],
        "{text}"
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            assert_eq!(rec.len(), 6, "{rec:?}");
            rec.iter().map(str::to_owned).collect()
        })
        .collect()
}

/// The figure of `section`, `vendor`, `item` (a row without an order).
fn figure(rows: &[Vec<String>], section: &str, vendor: &str, item: &str) -> Option<String> {
    let found: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[0] == section && r[1] == vendor && r[2] == item && r[4].is_empty())
        .collect();
    assert!(found.len() <= 1, "{found:?}");
    found.first().map(|r| r[3].clone())
}

/// Every figure of `section` as `(vendor, item, value)`, and its detail.
fn figures(rows: &[Vec<String>], section: &str) -> Vec<(String, String, String)> {
    rows.iter()
        .filter(|r| r[0] == section && r[4].is_empty() && r[2] != "gap" && r[2] != "note")
        .map(|r| (r[1].clone(), r[2].clone(), r[3].clone()))
        .collect()
}

/// The order ids `section` lists, in order.
fn listed(rows: &[Vec<String>], section: &str) -> Vec<String> {
    rows.iter()
        .filter(|r| r[0] == section && r[2] == "order")
        .map(|r| {
            assert!(r[3].is_empty() && !r[4].is_empty(), "{r:?}");
            r[4].clone()
        })
        .collect()
}

fn f(v: &str, item: &str, n: &str) -> (String, String, String) {
    (v.into(), item.into(), n.into())
}

/// The lines of `text` that list orders under the line starting with
/// `head`, up to the next numbered or lettered line.
fn block<'a>(text: &'a str, head: &str) -> (&'a str, Vec<&'a str>) {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(head));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no line starting {head:?} in\n{text}"));
    let items = lines
        .take_while(|l| l.starts_with("      "))
        .collect::<Vec<_>>();
    (first, items)
}

#[test]
fn report_gives_the_days_figures_and_what_is_stuck_now_in_text_and_csv() {
    let db = TestDb::new();
    let mut c = db.conn();
    let (start, end) = day();
    let h = Td::hours(1);

    // 1. Callbacks: 7 in the day (its first and last microsecond among
    // them), 2 just outside.
    for (outcome, at) in [
        ("applied", start),
        ("applied", start + h * 5),
        ("applied", end - us(1)),
        ("duplicate", start + h * 6),
        ("duplicate", start + h * 7),
        ("bad_signature", start + h * 8),
        ("test", start + h * 9),
        ("applied", start - us(1)),
        ("bad_signature", end),
    ] {
        callback(&mut c, outcome, at);
    }

    // 2. Vendor calls: 172 free, 大麦家 billed 4 a call; one of each
    // outside the day.
    for (vendor, api, outcome, cost, at) in [
        ("haoka172", "GetOrderInfo", "ok", None, start),
        ("haoka172", "GetOrderInfo", "ok", None, start + h),
        ("haoka172", "GetOrderInfo", "ok", None, end - us(1)),
        ("haoka172", "GetOrderInfo", "timeout", None, start + h * 2),
        ("haoka172", "GetOrderInfo", "ok", None, start - us(1)),
        ("damaijia", "mpagingOrders", "ok", Some(4), start + h),
        ("damaijia", "mpagingOrders", "ok", Some(4), start + h * 3),
        (
            "damaijia",
            "mpagingOrders",
            "vendor_error",
            None,
            start + h * 4,
        ),
        ("damaijia", "mpagingOrders", "ok", Some(4), end),
    ] {
        call(&mut c, vendor, api, outcome, cost, at);
    }

    // 3 and 4. Status changes: 7 in the day, one settled and one failed
    // settlement among them; settlements just outside the day do not count.
    for (vendor, order, from, to, source, at) in [
        ("haoka172", "A1", "new", "pending", "callback", start),
        ("haoka172", "A2", "new", "pending", "callback", start + h),
        (
            "haoka172",
            "A1",
            "pending",
            "shipped",
            "poll",
            start + h * 2,
        ),
        (
            "haoka172",
            "S1",
            "completed",
            "settled",
            "callback",
            start + h * 3,
        ),
        (
            "haoka172",
            "F1",
            "completed",
            "settlement_failed",
            "poll",
            end - us(1),
        ),
        (
            "haoka172",
            "A3",
            "shipped",
            "completed",
            "manual",
            start + h * 4,
        ),
        ("damaijia", "D1", "new", "pending", "poll", start + h * 5),
        (
            "haoka172",
            "S0",
            "completed",
            "settled",
            "callback",
            start - us(1),
        ),
        ("haoka172", "S9", "completed", "settled", "callback", end),
    ] {
        change(&mut c, vendor, order, from, to, source, at);
    }

    // 5. Orders, judged now.
    schedule_settings(&mut c);
    let now = Utc::now();
    let d = Td::days(1);
    // Activated two months and more ago: past the expected settlement
    // whatever today is (M + 2 months is at most 62 days after).
    let long_ago = now - d * 70;
    // Activated exactly at the cut-off: expected at the start of next
    // month, not yet past.
    let at_cutoff = activated_before_is_past_settlement(now);
    for (vendor, id, status, since, activated, first_charge) in [
        // Stuck:
        (
            "haoka172",
            "O1",
            "shipped",
            now - d * 8,
            Some(now - d * 7),
            Some(true),
        ), // a (7d)
        ("haoka172", "O2", "shipped", now - d, None, None), // b
        ("haoka172", "O3", "completed", now - d * 2, None, None), // b
        (
            "haoka172",
            "O4",
            "completed",
            now - d,
            Some(now - d * 3),
            None,
        ), // c
        (
            "haoka172",
            "O5",
            "completed",
            now - d * 10,
            Some(long_ago),
            Some(true),
        ), // d
        (
            "haoka172",
            "O6",
            "completed",
            now - d * 20,
            Some(long_ago - d),
            Some(false),
        ), // a (15d), c, d
        ("damaijia", "D2", "pending", now - h * 3, None, None), // a (2h)
        // Not stuck:
        (
            "haoka172",
            "N1",
            "settled",
            now - d * 100,
            Some(now - d * 100),
            Some(false),
        ),
        ("haoka172", "N2", "revoked", now - d * 100, None, None),
        ("haoka172", "N3", "pending", now - h, None, None),
        (
            "haoka172",
            "N4",
            "shipped",
            now - d * 2,
            Some(now - d),
            Some(true),
        ),
        ("damaijia", "N5", "shipped", now - h, None, None), // PDD orders carry no activation
        (
            "haoka172",
            "N6",
            "completed",
            now - d,
            Some(at_cutoff),
            Some(true),
        ),
    ] {
        order(&mut c, vendor, id, status, since, activated, first_charge);
    }

    // 6. Contradictions with PDD: L1 refunded on PDD while 172 shipped, L3
    // shipped by 172 while PDD is unshipped past its ship-by time; L2
    // agrees.
    let ship_by = format!(r#"{{"last_ship_time": "{}"}}"#, (now - h * 2).to_rfc3339());
    order(
        &mut c,
        "haoka172",
        "L1",
        "shipped",
        now - h,
        Some(now - h),
        Some(true),
    );
    order(&mut c, "damaijia", "L1", "cancelled", now - h, None, None);
    order(&mut c, "haoka172", "L2", "pending", now - h, None, None);
    order(&mut c, "damaijia", "L2", "pending", now - h, None, None);
    order(
        &mut c,
        "haoka172",
        "L3",
        "completed",
        now - h,
        Some(now - h * 2),
        Some(true),
    );
    order_with(
        &mut c,
        "damaijia",
        "L3",
        "pending",
        now - h,
        None,
        None,
        &ship_by,
    );

    // 7. Callback gaps: one over the day's start, one open since its last
    // hour; one ended before it, one began after it.
    let g1 = gap(&mut c, start - h * 2, Some(start + h));
    let g2 = gap(&mut c, end - h, None);
    gap(&mut c, start - h * 5, Some(start - us(1)));
    gap(&mut c, end, None);

    let (code, text, err) = report(&db, &["--day", DAY]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    for private in ["13912345678", "张三丰"] {
        assert!(!text.contains(private), "{text}");
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "haoka-sync report for 2026-11-15, China time (2026-11-15 00:00:00 +08:00 to 2026-11-16 00:00:00 +08:00)",
        "{text}"
    );
    for want in [
        "1. Callbacks received: 7",
        "   haoka172: 7 (applied 3, bad_signature 1, duplicate 2, test 1)",
        "2. Vendor calls: 7",
        "   damaijia mpagingOrders: 3 (ok 2, vendor_error 1), cost 8",
        "   haoka172 GetOrderInfo: 4 (ok 3, timeout 1)",
        "3. Status changes: 7",
        "   damaijia by source: poll 1",
        "   damaijia by status reached: pending 1",
        "   haoka172 by source: callback 3, manual 1, poll 2",
        "   haoka172 by status reached: pending 2, shipped 1, completed 1, settled 1, settlement_failed 1",
        "4. Newly settled: 1",
        &format!(
            "      - haoka172 S1 at {} (callback)",
            china_time(start + h * 3)
        ),
        "   Newly failed settlement: 1",
        &format!("      - haoka172 F1 at {} (poll)", china_time(end - us(1))),
        "6. Open contradictions with PDD now (order_links): 2 (172_shipped_but_pdd_unshipped_past_ship_by 1, pdd_refunded_but_172_proceeds 1)",
        "      - haoka172 L1: pdd_refunded_but_172_proceeds: damaijia L1; haoka172 shipped, damaijia cancelled",
        "      - haoka172 L3: 172_shipped_but_pdd_unshipped_past_ship_by: damaijia L3; haoka172 completed, damaijia pending",
        "7. Callback gaps overlapping the day: 2",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in\n{text}");
    }

    // Stuck, as of when it ran.
    let (head, _) = block(&text, "5. Stuck orders now");
    let as_of = head
        .strip_prefix("5. Stuck orders now (as of ")
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("{head}"));
    let ran = haoka_sync::rules::time::parse_time(as_of).unwrap();
    assert!(ran >= now - Td::seconds(1) && ran <= Utc::now(), "{as_of}");
    let (a, a_items) = block(&text, "   a. ");
    assert_eq!(
        a,
        "   a. longer in their status than its overdue time: 3 (damaijia pending 1, haoka172 shipped 1, haoka172 completed 1)"
    );
    let ids = |items: &[&str]| -> Vec<String> {
        items
            .iter()
            .map(|l| {
                l.trim_start_matches("      - ")
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // Longest in its status first.
    assert_eq!(ids(&a_items), ["haoka172 O6", "haoka172 O1", "damaijia D2"]);
    assert!(
        a_items[0].starts_with(&format!(
            "      - haoka172 O6: completed since {} (20d",
            china_time(now - d * 20)
        )) && a_items[0].ends_with("overdue after 15d"),
        "{}",
        a_items[0]
    );
    assert!(a_items[2].ends_with("overdue after 2h"), "{}", a_items[2]);
    let (b, b_items) = block(&text, "   b. ");
    assert_eq!(
        b,
        "   b. shipped or completed, card not activated (haoka172): 2 (haoka172 shipped 1, haoka172 completed 1)"
    );
    assert_eq!(ids(&b_items), ["haoka172 O3", "haoka172 O2"]);
    let (c_head, c_items) = block(&text, "   c. ");
    assert_eq!(
        c_head,
        "   c. activated, no first top-up (haoka172): 2 (haoka172 completed 2)"
    );
    // Earliest activated first.
    assert_eq!(ids(&c_items), ["haoka172 O6", "haoka172 O4"]);
    let (d_head, d_items) = block(&text, "   d. ");
    assert_eq!(
        d_head,
        "   d. past expected settlement (haoka172: activated in month M, not settled by the end of M+1): 2 (haoka172 completed 2)"
    );
    assert_eq!(ids(&d_items), ["haoka172 O6", "haoka172 O5"]);
    assert!(
        d_items[1].ends_with(&format!(
            ", settlement expected by {}",
            china_time(expected_settlement(long_ago))
        )),
        "{}",
        d_items[1]
    );
    let (_, gaps) = block(&text, "7. ");
    assert_eq!(gaps.len(), 2, "{text}");
    assert!(
        gaps[0].starts_with(&format!(
            "      - haoka172 gap {g1}: silent from {} until {}",
            china_time(start - h * 2),
            china_time(start + h)
        )),
        "{}",
        gaps[0]
    );
    assert!(
        gaps[1].starts_with(&format!(
            "      - haoka172 gap {g2}: silent from {} on (callbacks have not resumed)",
            china_time(end - h)
        )),
        "{}",
        gaps[1]
    );

    // The csv: the same figures, every order.
    let (code, csv_text, err) = report(&db, &["--day", DAY, "--format", "csv"]);
    assert_eq!(code, Some(0), "{err}");
    for private in ["13912345678", "张三丰"] {
        assert!(!csv_text.contains(private), "{csv_text}");
    }
    let rows = parse_csv(&csv_text);
    assert_eq!(figure(&rows, "report", "", "day").as_deref(), Some(DAY));
    assert_eq!(figure(&rows, "report", "", "from"), Some(china_time(start)));
    assert_eq!(figure(&rows, "report", "", "until"), Some(china_time(end)));
    let csv_ran =
        haoka_sync::rules::time::parse_time(&figure(&rows, "report", "", "as_of").unwrap())
            .unwrap();
    assert!(csv_ran >= ran, "{csv_ran} {ran}");
    assert_eq!(
        figures(&rows, "callbacks"),
        [
            f("", "all", "7"),
            f("haoka172", "applied", "3"),
            f("haoka172", "bad_signature", "1"),
            f("haoka172", "duplicate", "2"),
            f("haoka172", "test", "1"),
        ]
    );
    let calls: Vec<(String, String, String, String)> = rows
        .iter()
        .filter(|r| r[0] == "vendor_calls")
        .map(|r| (r[1].clone(), r[2].clone(), r[5].clone(), r[3].clone()))
        .collect();
    let call = |v: &str, api: &str, outcome: &str, n: &str| {
        (
            v.to_owned(),
            api.to_owned(),
            outcome.to_owned(),
            n.to_owned(),
        )
    };
    assert_eq!(
        calls,
        [
            call("", "all", "", "7"),
            call("damaijia", "mpagingOrders", "ok", "2"),
            call("damaijia", "mpagingOrders", "vendor_error", "1"),
            call("haoka172", "GetOrderInfo", "ok", "3"),
            call("haoka172", "GetOrderInfo", "timeout", "1"),
        ]
    );
    assert_eq!(
        figures(&rows, "vendor_call_cost"),
        [f("damaijia", "mpagingOrders", "8")]
    );
    assert_eq!(
        figures(&rows, "changes_by_source"),
        [
            f("", "all", "7"),
            f("damaijia", "poll", "1"),
            f("haoka172", "callback", "3"),
            f("haoka172", "manual", "1"),
            f("haoka172", "poll", "2"),
        ]
    );
    assert_eq!(
        figures(&rows, "changes_by_status"),
        [
            f("", "all", "7"),
            f("damaijia", "pending", "1"),
            f("haoka172", "pending", "2"),
            f("haoka172", "shipped", "1"),
            f("haoka172", "completed", "1"),
            f("haoka172", "settled", "1"),
            f("haoka172", "settlement_failed", "1"),
        ]
    );
    assert_eq!(figures(&rows, "newly_settled"), [f("", "all", "1")]);
    assert_eq!(listed(&rows, "newly_settled"), ["S1"]);
    assert_eq!(
        figures(&rows, "newly_settlement_failed"),
        [f("", "all", "1")]
    );
    assert_eq!(listed(&rows, "newly_settlement_failed"), ["F1"]);
    assert_eq!(
        figures(&rows, "stuck_overdue"),
        [
            f("", "all", "3"),
            f("damaijia", "pending", "1"),
            f("haoka172", "shipped", "1"),
            f("haoka172", "completed", "1"),
        ]
    );
    assert_eq!(listed(&rows, "stuck_overdue"), ["O6", "O1", "D2"]);
    assert_eq!(
        figures(&rows, "stuck_not_activated"),
        [
            f("", "all", "2"),
            f("haoka172", "shipped", "1"),
            f("haoka172", "completed", "1"),
        ]
    );
    assert_eq!(listed(&rows, "stuck_not_activated"), ["O3", "O2"]);
    assert_eq!(
        figures(&rows, "stuck_no_first_top_up"),
        [f("", "all", "2"), f("haoka172", "completed", "2")]
    );
    assert_eq!(listed(&rows, "stuck_no_first_top_up"), ["O6", "O4"]);
    assert_eq!(
        figures(&rows, "stuck_past_settlement"),
        [f("", "all", "2"), f("haoka172", "completed", "2")]
    );
    assert_eq!(listed(&rows, "stuck_past_settlement"), ["O6", "O5"]);
    assert_eq!(
        figures(&rows, "contradictions"),
        [
            f("", "all", "2"),
            f("", "172_shipped_but_pdd_unshipped_past_ship_by", "1"),
            f("", "pdd_refunded_but_172_proceeds", "1"),
        ]
    );
    assert_eq!(listed(&rows, "contradictions"), ["L1", "L3"]);
    assert_eq!(figures(&rows, "callback_gaps"), [f("", "all", "2")]);
    let gap_rows: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[0] == "callback_gaps" && r[2] == "gap")
        .collect();
    assert_eq!(gap_rows.len(), 2);
    // Each list row of the csv says what the text's line says.
    for (section, head) in [
        ("stuck_overdue", "   a. "),
        ("stuck_not_activated", "   b. "),
        ("stuck_no_first_top_up", "   c. "),
        ("stuck_past_settlement", "   d. "),
    ] {
        let (_, items) = block(&text, head);
        let in_csv: Vec<String> = rows
            .iter()
            .filter(|r| r[0] == section && r[2] == "order")
            .map(|r| format!("      - {} {}: {}", r[1], r[4], r[5]))
            .collect();
        // The times ago may differ by the second between the two runs.
        let cut = |l: &str| l.split(" ago").next().unwrap_or(l).to_owned();
        assert_eq!(
            items.iter().map(|l| cut(l)).collect::<Vec<_>>(),
            in_csv.iter().map(|l| cut(l)).collect::<Vec<_>>(),
            "{section}"
        );
    }
    assert_eq!(
        gap_rows[0][5],
        gaps[0].trim_start_matches("      - haoka172 ")
    );
    assert!(
        !rows.iter().any(|r| r[2] == "note"),
        "both vendors have overdue times"
    );
}

#[test]
fn text_lists_at_most_20_orders_a_list_and_the_csv_all_of_them() {
    let db = TestDb::new();
    let mut c = db.conn();
    let now = Utc::now();
    for i in 0..25 {
        order(
            &mut c,
            "haoka172",
            &format!("B{i:02}"),
            "shipped",
            now - Td::hours(48 - i),
            None,
            None,
        );
    }
    let (code, text, err) = report(&db, &["--day", DAY]);
    assert_eq!(code, Some(0), "{err}");
    let (head, items) = block(&text, "   b. ");
    assert_eq!(
        head,
        "   b. shipped or completed, card not activated (haoka172): 25 (haoka172 shipped 25)"
    );
    assert_eq!(items.len(), 21, "{text}");
    assert!(items[0].starts_with("      - haoka172 B00: shipped since "));
    assert!(items[19].starts_with("      - haoka172 B19: "));
    assert_eq!(items[20], "      and 5 more (--format csv lists them all)");
    // No overdue times recorded yet: said, not guessed.
    let (_, a_items) = block(&text, "   a. ");
    assert_eq!(
        a_items,
        [
            "      (haoka172: not judged: no overdue times recorded in schedule_settings yet; serve or poll-once records them)",
            "      (damaijia: not judged: no overdue times recorded in schedule_settings yet; serve or poll-once records them)",
        ]
    );

    let (code, csv_text, err) = report(&db, &["--day", DAY, "--format", "csv"]);
    assert_eq!(code, Some(0), "{err}");
    let rows = parse_csv(&csv_text);
    let want: Vec<String> = (0..25).map(|i| format!("B{i:02}")).collect();
    assert_eq!(listed(&rows, "stuck_not_activated"), want);
    assert_eq!(
        figure(&rows, "stuck_not_activated", "", "all").as_deref(),
        Some("25")
    );
    let notes: Vec<&Vec<String>> = rows.iter().filter(|r| r[2] == "note").collect();
    assert_eq!(notes.len(), 2, "{csv_text}");
    assert!(notes.iter().all(|r| r[0] == "stuck_overdue"));
}

#[test]
fn report_refuses_a_bad_or_future_day_and_a_missing_or_unmigrated_database_in_one_line() {
    let db = TestDb::new();
    for bad in ["2026-11-31", "15.11.2026", "2026-1-5", "yesterday"] {
        let (code, out, err) = report(&db, &["--day", bad]);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("haoka-sync: invalid value")
                && err.contains("is not a day: use YYYY-MM-DD, a China-time day")
                && err.contains("see haoka-sync report --help"),
            "{err}"
        );
    }
    let tomorrow = haoka_sync::rules::schedule::china_day(Utc::now() + Td::days(1));
    let (code, _, err) = report(&db, &["--day", &tomorrow.to_string()]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("--day {tomorrow} is in the future")),
        "{err}"
    );
    let (code, _, err) = report(&db, &["--format", "xml"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Without --day: yesterday, China time.
    let (code, out, err) = report(&db, &[]);
    assert_eq!(code, Some(0), "{err}");
    let yesterday = haoka_sync::rules::schedule::china_day(Utc::now() - Td::days(1));
    assert!(
        out.starts_with(&format!("haoka-sync report for {yesterday}, China time (")),
        "{out}"
    );

    let admin = haoka_sync::config::DatabaseUrl::parse(&admin_url()).unwrap();
    let missing = admin.with_database("haoka_report_missing_db");
    let out = crate::cli::cmd()
        .env("DATABASE_URL", missing.expose())
        .arg("report")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "database haoka_report_missing_db does not exist (DATABASE_URL): `haoka-sync migrate` creates it"
        ),
        "{err}"
    );

    // An empty database (never migrated): one line, nothing created.
    let name = format!("haoka_report_bare_{}", std::process::id());
    let mut a = PgConnection::establish(&admin_url()).unwrap();
    use diesel::connection::SimpleConnection;
    a.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .unwrap();
    a.batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .unwrap();
    let out = crate::cli::cmd()
        .env("DATABASE_URL", admin.with_database(&name).expose())
        .arg("report")
        .output()
        .unwrap();
    let mut bare = PgConnection::establish(admin.with_database(&name).expose()).unwrap();
    let tables = count(
        &mut bare,
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'",
    );
    drop(bare);
    a.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("database {name} is not migrated"))
            && err.contains("haoka-sync migrate"),
        "{err}"
    );
    assert_eq!(tables, 0, "report created nothing");
}
