//! `haoka-sync report [--day YYYY-MM-DD] [--format text|csv]`: the agent's
//! daily reconciliation (对账) of one China-time day (default: yesterday),
//! in one screen: callbacks by outcome, vendor calls and what they cost,
//! status changes by source and status reached, orders newly settled or
//! failed settlement; and, judged when the report runs, the orders stuck,
//! the open contradictions with PDD, and the callback gaps over the day.
//! Counts first, then the orders (at most `LISTED` per list in text; the
//! csv lists every one). Order ids, statuses and times only: never a phone
//! number, a name or an address. Read-only: a missing or unmigrated
//! database is one line, as for `show`.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};

use super::{failed, CliError, CliResult};
use crate::config::DatabaseConfig;
use crate::rules::duration::human_duration;
use crate::rules::schedule::china_time;
use crate::rules::settlement::{activated_before_is_past_settlement, expected_settlement};
use crate::rules::time::{china_day_bounds, parse_day, report_day};
use crate::rules::Status;
use crate::store::report::{self as rstore, Count, Report, Settlement, Stuck, Window};

/// Orders listed per list in text (the csv lists all).
pub(super) const LISTED: usize = 20;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// For people: one screen, lists cut at 20 orders.
    Text,
    /// One CSV document, `section,vendor,item,value,order_id,detail`.
    Csv,
}

#[derive(Debug, clap::Args)]
pub(super) struct ReportArgs {
    /// The China-time day to reconcile (default: yesterday, China time).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_day)]
    day: Option<NaiveDate>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub(super) async fn run(db: &DatabaseConfig, args: ReportArgs) -> CliResult {
    let now = Utc::now();
    let day = report_day(args.day, now).map_err(CliError::Usage)?;
    let (start, end) = china_day_bounds(day);
    let window = Window {
        start,
        end,
        now,
        settlement_cutoff: activated_before_is_past_settlement(now),
    };
    let url = db.url.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<Report, String> {
        let mut conn = super::read_only_connection(&url)?;
        rstore::read(&mut conn, &window)
            .map_err(|e| format!("database {}: {e}", url.database_name()))
    })
    .await?
    .map_err(failed)?;
    let out = match args.format {
        Format::Text => text(day, &window, &report).into_bytes(),
        Format::Csv => {
            csv(day, &window, &report).map_err(|e| failed(format!("cannot write the csv: {e}")))?
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&out).and_then(|()| stdout.flush()) {
        // `report | head` is fine.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(failed(format!("cannot write the output: {e}")))
        }
        _ => Ok(()),
    }
}

/// The report's lists, each in the order it is printed.
struct Lists<'a> {
    settled: Vec<&'a Settlement>,
    settlement_failed: Vec<&'a Settlement>,
    /// Longest in its status first.
    overdue: Vec<&'a Stuck>,
    not_activated: Vec<&'a Stuck>,
    /// Earliest activated first.
    no_first_top_up: Vec<&'a Stuck>,
    past_settlement: Vec<&'a Stuck>,
    /// Vendors whose orders cannot be judged overdue (no waits recorded).
    no_waits: Vec<&'static str>,
}

impl<'a> Lists<'a> {
    fn of(r: &'a Report) -> Lists<'a> {
        let stuck =
            |f: fn(&Stuck) -> bool| -> Vec<&'a Stuck> { r.stuck.iter().filter(|s| f(s)).collect() };
        let by_activation = |mut v: Vec<&'a Stuck>| {
            v.sort_by(|a, b| {
                (a.activated_at, &a.vendor, &a.order_id).cmp(&(
                    b.activated_at,
                    &b.vendor,
                    &b.order_id,
                ))
            });
            v
        };
        let settled = |to: &str| r.settlements.iter().filter(|s| s.to_status == to).collect();
        Lists {
            settled: settled("settled"),
            settlement_failed: settled("settlement_failed"),
            overdue: stuck(|s| s.overdue_secs.is_some()),
            not_activated: stuck(|s| s.not_activated),
            no_first_top_up: by_activation(stuck(|s| s.no_first_top_up)),
            past_settlement: by_activation(stuck(|s| s.past_settlement)),
            no_waits: crate::rules::Vendor::ALL
                .iter()
                .map(|v| v.as_str())
                .filter(|v| !r.vendors_with_waits.iter().any(|w| w == v))
                .collect(),
        }
    }
}

/// Statuses in the model's order (`new` … `unknown`), others after.
fn status_rank(s: &str) -> (usize, &str) {
    let place = Status::ALL.iter().position(|x| x.as_str() == s);
    (place.unwrap_or(Status::ALL.len()), s)
}

/// Counts per vendor, keys in `rank` order: `[(vendor, [(key, n)])]`.
fn per_vendor(counts: &[Count], rank: fn(&str) -> (usize, &str)) -> Vec<(&str, Vec<(&str, i64)>)> {
    let mut per: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
    for c in counts {
        per.entry(&c.vendor).or_default().push((&c.key, c.n));
    }
    per.into_iter()
        .map(|(v, mut keys)| {
            keys.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)));
            (v, keys)
        })
        .collect()
}

fn by_name(s: &str) -> (usize, &str) {
    (0, s)
}

/// Stuck orders per vendor and status, in the model's order.
fn by_status<'a>(orders: &[&'a Stuck]) -> Vec<((&'a str, &'a str), usize)> {
    let mut per: BTreeMap<(&str, (usize, &str)), usize> = BTreeMap::new();
    for s in orders {
        *per.entry((&s.vendor, status_rank(&s.status))).or_default() += 1;
    }
    per.into_iter()
        .map(|((v, (_, status)), n)| ((v, status), n))
        .collect()
}

fn sum(counts: &[Count]) -> i64 {
    counts.iter().map(|c| c.n).sum()
}

/// A time and how long ago it was at `now`.
fn since(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ({} ago)",
        china_time(t),
        human_duration((now - t).num_seconds().max(0) as u64)
    )
}

fn secs(s: i64) -> String {
    human_duration(s.max(0) as u64)
}

/// What each list says of one order (text and csv alike).
fn settlement_detail(s: &Settlement) -> String {
    format!("at {} ({})", china_time(s.at), s.source)
}

fn overdue_detail(s: &Stuck, now: DateTime<Utc>) -> String {
    format!(
        "{} since {}, overdue after {}",
        s.status,
        since(s.since, now),
        secs(s.overdue_secs.unwrap_or_default())
    )
}

fn in_status_detail(s: &Stuck, now: DateTime<Utc>) -> String {
    format!("{} since {}", s.status, since(s.since, now))
}

fn activated_detail(s: &Stuck, now: DateTime<Utc>) -> String {
    format!(
        "{}, activated {}",
        s.status,
        s.activated_at.map(|t| since(t, now)).unwrap_or_default()
    )
}

fn settlement_due_detail(s: &Stuck, now: DateTime<Utc>) -> String {
    format!(
        "{}, settlement expected by {}",
        activated_detail(s, now),
        s.activated_at
            .map(|t| china_time(expected_settlement(t)))
            .unwrap_or_default()
    )
}

fn contradiction_detail(c: &rstore::Contradiction) -> String {
    let st = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    format!(
        "{}: damaijia {}; haoka172 {}, damaijia {}",
        c.contradiction,
        c.damaijia_order_sn,
        st(&c.haoka172_status),
        st(&c.damaijia_status)
    )
}

fn gap_detail(g: &rstore::Gap) -> String {
    let mut out = format!(
        "gap {}: silent from {} {}, detected {}, usually {} callbacks in those hours, {} orders swept",
        g.id,
        china_time(g.silent_since),
        g.resumed_at
            .map(|t| format!("until {}", china_time(t)))
            .unwrap_or_else(|| "on (callbacks have not resumed)".into()),
        china_time(g.detected_at),
        g.expected_callbacks,
        g.swept_orders
    );
    match g.closed_at {
        Some(t) => out.push_str(&format!(", recovery done {}", china_time(t))),
        None => out.push_str(", recovery not done yet"),
    }
    out
}

/// Said of a vendor whose orders cannot be judged overdue.
const NO_WAITS: &str =
    "not judged: no overdue times recorded in schedule_settings yet; serve or poll-once records them";

/// The day's title: the day and its bounds, and whether it is over.
fn title(day: NaiveDate, w: &Window) -> String {
    format!(
        "haoka-sync report for {day}, China time ({} to {}){}",
        china_time(w.start),
        china_time(w.end),
        if w.end > w.now {
            format!(": the day is not over, figures up to {}", china_time(w.now))
        } else {
            String::new()
        }
    )
}

/// The report for people.
fn text(day: NaiveDate, w: &Window, r: &Report) -> String {
    let lists = Lists::of(r);
    let mut out = Vec::<String>::new();
    let mut push = |s: String| out.push(s);
    push(title(day, w));
    push(String::new());

    push(format!("1. Callbacks received: {}", sum(&r.callbacks)));
    for (vendor, keys) in per_vendor(&r.callbacks, by_name) {
        push(format!(
            "   {vendor}: {} ({})",
            keys.iter().map(|k| k.1).sum::<i64>(),
            joined(&keys)
        ));
    }

    let calls: i64 = r.calls.iter().map(|c| c.calls).sum();
    push(format!("2. Vendor calls: {calls}"));
    for ((vendor, api), rows) in &calls_by_api(r) {
        let outcomes: Vec<(&str, i64)> =
            rows.iter().map(|c| (c.outcome.as_str(), c.calls)).collect();
        let cost = cost_of(rows);
        push(format!(
            "   {vendor} {api}: {} ({}){}",
            rows.iter().map(|c| c.calls).sum::<i64>(),
            joined(&outcomes),
            cost.map(|c| format!(", cost {c}")).unwrap_or_default()
        ));
    }

    push(format!("3. Status changes: {}", sum(&r.changes_by_source)));
    let statuses = per_vendor(&r.changes_by_status, status_rank);
    for (vendor, keys) in per_vendor(&r.changes_by_source, by_name) {
        push(format!("   {vendor} by source: {}", joined(&keys)));
        if let Some((_, to)) = statuses.iter().find(|(v, _)| *v == vendor) {
            push(format!("   {vendor} by status reached: {}", joined(to)));
        }
    }

    push(format!("4. Newly settled: {}", lists.settled.len()));
    listed(&mut push, &lists.settled, |s| {
        format!("{} {} {}", s.vendor, s.order_id, settlement_detail(s))
    });
    push(format!(
        "   Newly failed settlement: {}",
        lists.settlement_failed.len()
    ));
    listed(&mut push, &lists.settlement_failed, |s| {
        format!("{} {} {}", s.vendor, s.order_id, settlement_detail(s))
    });

    let now = w.now;
    push(format!(
        "5. Stuck orders now (as of {}, when this report ran; terminal orders are never stuck):",
        china_time(now)
    ));
    let stuck_line = |label: &str, orders: &[&Stuck]| {
        let per = by_status(orders);
        let breakdown = per
            .iter()
            .map(|((v, s), n)| format!("{v} {s} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "   {label}: {}{}",
            orders.len(),
            if per.is_empty() {
                String::new()
            } else {
                format!(" ({breakdown})")
            }
        )
    };
    push(stuck_line(
        "a. longer in their status than its overdue time",
        &lists.overdue,
    ));
    for v in &lists.no_waits {
        push(format!("      ({v}: {NO_WAITS})"));
    }
    listed(&mut push, &lists.overdue, |s| {
        format!("{} {}: {}", s.vendor, s.order_id, overdue_detail(s, now))
    });
    push(stuck_line(
        "b. shipped or completed, card not activated (haoka172)",
        &lists.not_activated,
    ));
    listed(&mut push, &lists.not_activated, |s| {
        format!("{} {}: {}", s.vendor, s.order_id, in_status_detail(s, now))
    });
    push(stuck_line(
        "c. activated, no first top-up (haoka172)",
        &lists.no_first_top_up,
    ));
    listed(&mut push, &lists.no_first_top_up, |s| {
        format!("{} {}: {}", s.vendor, s.order_id, activated_detail(s, now))
    });
    push(stuck_line(
        "d. past expected settlement (haoka172: activated in month M, not settled by the end of M+1)",
        &lists.past_settlement,
    ));
    listed(&mut push, &lists.past_settlement, |s| {
        format!(
            "{} {}: {}",
            s.vendor,
            s.order_id,
            settlement_due_detail(s, now)
        )
    });

    let kinds = contradiction_kinds(r);
    push(format!(
        "6. Open contradictions with PDD now (order_links): {}{}",
        r.contradictions.len(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                kinds
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    listed(&mut push, &r.contradictions, |c| {
        format!(
            "haoka172 {}: {}",
            c.haoka172_order_id,
            contradiction_detail(c)
        )
    });

    push(format!(
        "7. Callback gaps overlapping the day: {}",
        r.gaps.len()
    ));
    listed(&mut push, &r.gaps, |g| {
        format!("{} {}", g.vendor, gap_detail(g))
    });
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// `a 1, b 2`.
fn joined(keys: &[(&str, i64)]) -> String {
    keys.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The day's calls per vendor and api.
fn calls_by_api(r: &Report) -> BTreeMap<(&str, &str), Vec<&rstore::Calls>> {
    let mut apis: BTreeMap<(&str, &str), Vec<&rstore::Calls>> = BTreeMap::new();
    for c in &r.calls {
        apis.entry((&c.vendor, &c.api)).or_default().push(c);
    }
    apis
}

/// Open contradictions per kind.
fn contradiction_kinds(r: &Report) -> BTreeMap<&str, usize> {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &r.contradictions {
        *kinds.entry(&c.contradiction).or_default() += 1;
    }
    kinds
}

/// The summed cost of some calls; none when none was billed.
fn cost_of(rows: &[&rstore::Calls]) -> Option<i64> {
    rows.iter().filter_map(|c| c.cost).reduce(|a, b| a + b)
}

/// At most `LISTED` of `items`, one a line, then how many more.
fn listed<T>(push: &mut impl FnMut(String), items: &[T], line: impl Fn(&T) -> String) {
    for i in items.iter().take(LISTED) {
        push(format!("      - {}", line(i)));
    }
    if items.len() > LISTED {
        push(format!(
            "      and {} more (--format csv lists them all)",
            items.len() - LISTED
        ));
    }
}

/// The csv's columns.
pub(super) const COLUMNS: [&str; 6] = ["section", "vendor", "item", "value", "order_id", "detail"];

/// One csv row.
struct Row {
    section: &'static str,
    vendor: String,
    item: String,
    value: String,
    order_id: String,
    detail: String,
}

impl Row {
    /// A figure: `value` per vendor and item (no vendor and item `all`: the
    /// section's total).
    fn figure(section: &'static str, vendor: &str, item: &str, value: impl ToString) -> Row {
        Row {
            section,
            vendor: vendor.to_owned(),
            item: item.to_owned(),
            value: value.to_string(),
            order_id: String::new(),
            detail: String::new(),
        }
    }

    fn total(section: &'static str, value: impl ToString) -> Row {
        Row::figure(section, "", "all", value)
    }

    /// One order of a list.
    fn order(section: &'static str, vendor: &str, order_id: &str, detail: String) -> Row {
        Row {
            section,
            vendor: vendor.to_owned(),
            item: "order".into(),
            value: String::new(),
            order_id: order_id.to_owned(),
            detail,
        }
    }

    fn with_detail(mut self, detail: String) -> Row {
        self.detail = detail;
        self
    }
}

/// The report as rows of the long format (docs/contract.md, haoka-sync
/// report): figures, then the orders they count, every one.
fn rows(day: NaiveDate, w: &Window, r: &Report) -> Vec<Row> {
    let lists = Lists::of(r);
    let now = w.now;
    let mut rows = vec![
        Row::figure("report", "", "day", day),
        Row::figure("report", "", "from", china_time(w.start)),
        Row::figure("report", "", "until", china_time(w.end)),
        Row::figure("report", "", "as_of", china_time(now))
            .with_detail("when stuck orders and contradictions were judged".into()),
    ];
    rows.push(Row::total("callbacks", sum(&r.callbacks)));
    for c in &r.callbacks {
        rows.push(Row::figure("callbacks", &c.vendor, &c.key, c.n));
    }
    rows.push(Row::total(
        "vendor_calls",
        r.calls.iter().map(|c| c.calls).sum::<i64>(),
    ));
    for c in &r.calls {
        rows.push(
            Row::figure("vendor_calls", &c.vendor, &c.api, c.calls).with_detail(c.outcome.clone()),
        );
    }
    for ((vendor, api), calls) in &calls_by_api(r) {
        if let Some(cost) = cost_of(calls) {
            rows.push(Row::figure("vendor_call_cost", vendor, api, cost));
        }
    }
    for (section, counts, rank) in [
        (
            "changes_by_source",
            &r.changes_by_source,
            by_name as fn(&str) -> (usize, &str),
        ),
        ("changes_by_status", &r.changes_by_status, status_rank),
    ] {
        rows.push(Row::total(section, sum(counts)));
        for (vendor, keys) in per_vendor(counts, rank) {
            for (key, n) in keys {
                rows.push(Row::figure(section, vendor, key, n));
            }
        }
    }
    for (section, list) in [
        ("newly_settled", &lists.settled),
        ("newly_settlement_failed", &lists.settlement_failed),
    ] {
        rows.push(Row::total(section, list.len()));
        for s in list {
            rows.push(Row::order(
                section,
                &s.vendor,
                &s.order_id,
                settlement_detail(s),
            ));
        }
    }
    type Detail = fn(&Stuck, DateTime<Utc>) -> String;
    for (section, list, detail) in [
        ("stuck_overdue", &lists.overdue, overdue_detail as Detail),
        (
            "stuck_not_activated",
            &lists.not_activated,
            in_status_detail,
        ),
        (
            "stuck_no_first_top_up",
            &lists.no_first_top_up,
            activated_detail,
        ),
        (
            "stuck_past_settlement",
            &lists.past_settlement,
            settlement_due_detail,
        ),
    ] {
        rows.push(Row::total(section, list.len()));
        for ((vendor, status), n) in by_status(list) {
            let row = Row::figure(section, vendor, status, n);
            rows.push(match section {
                "stuck_overdue" => {
                    let wait = list
                        .iter()
                        .find(|s| s.vendor == vendor && s.status == status)
                        .and_then(|s| s.overdue_secs)
                        .unwrap_or_default();
                    row.with_detail(format!("overdue after {}", secs(wait)))
                }
                _ => row,
            });
        }
        if section == "stuck_overdue" {
            for v in &lists.no_waits {
                rows.push(Row {
                    section,
                    vendor: (*v).to_owned(),
                    item: "note".into(),
                    value: String::new(),
                    order_id: String::new(),
                    detail: NO_WAITS.into(),
                });
            }
        }
        for s in list {
            rows.push(Row::order(section, &s.vendor, &s.order_id, detail(s, now)));
        }
    }
    rows.push(Row::total("contradictions", r.contradictions.len()));
    let kinds = contradiction_kinds(r);
    for (kind, n) in kinds {
        rows.push(Row::figure("contradictions", "", kind, n));
    }
    for c in &r.contradictions {
        rows.push(Row::order(
            "contradictions",
            "haoka172",
            &c.haoka172_order_id,
            contradiction_detail(c),
        ));
    }
    rows.push(Row::total("callback_gaps", r.gaps.len()));
    for g in &r.gaps {
        rows.push(Row {
            section: "callback_gaps",
            vendor: g.vendor.clone(),
            item: "gap".into(),
            value: String::new(),
            order_id: String::new(),
            detail: gap_detail(g),
        });
    }
    rows
}

/// The report as one CSV document (header, then rows), quoted by the csv
/// crate.
fn csv(day: NaiveDate, w: &Window, r: &Report) -> Result<Vec<u8>, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(COLUMNS)?;
    for row in rows(day, w, r) {
        out.write_record([
            row.section,
            &row.vendor,
            &row.item,
            &row.value,
            &row.order_id,
            &row.detail,
        ])?;
    }
    out.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    fn window() -> Window {
        let (start, end) = china_day_bounds(NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        Window {
            start,
            end,
            now: end + chrono::Duration::hours(9),
            settlement_cutoff: start,
        }
    }

    fn stuck(order_id: &str, status: &str, since: DateTime<Utc>) -> Stuck {
        Stuck {
            vendor: "haoka172".into(),
            order_id: order_id.into(),
            status: status.into(),
            since,
            activated_at: None,
            overdue_secs: None,
            not_activated: true,
            no_first_top_up: false,
            past_settlement: false,
        }
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_reads_back_as_written() {
        // Order ids may hold commas and quotes (no spaces, no control
        // characters): the csv crate quotes them.
        let odd = [r#"X,1"#, r#"Y"2"#, "Z'3;", "中文4"];
        let report = Report {
            stuck: odd.iter().map(|id| stuck(id, "shipped", t(1))).collect(),
            vendors_with_waits: vec!["haoka172".into(), "damaijia".into()],
            ..Report::default()
        };
        let bytes = csv(day(), &window(), &report).unwrap();
        let mut r = csv::Reader::from_reader(bytes.as_slice());
        assert_eq!(r.headers().unwrap(), COLUMNS.as_slice());
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert!(rows.iter().all(|r| r.len() == COLUMNS.len()));
        let ids: Vec<&str> = rows
            .iter()
            .filter(|r| &r[0] == "stuck_not_activated" && &r[2] == "order")
            .map(|r| &r[4])
            .collect();
        assert_eq!(ids, odd);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#","X,1","#), "{text}");
        assert!(text.contains(r#","Y""2","#), "{text}");
    }

    #[test]
    fn text_says_a_day_in_progress_and_lists_at_most_20() {
        let mut w = window();
        w.now = w.start + chrono::Duration::hours(3);
        let report = Report {
            stuck: (0..21)
                .map(|i| stuck(&format!("B{i:02}"), "completed", w.start))
                .collect(),
            ..Report::default()
        };
        let out = text(day(), &w, &report);
        assert!(
            out.starts_with("haoka-sync report for 2026-12-01, China time (2026-12-01 00:00:00 +08:00 to 2026-12-02 00:00:00 +08:00): the day is not over, figures up to 2026-12-01 03:00:00 +08:00\n"),
            "{out}"
        );
        assert!(out.contains("\n   b. shipped or completed, card not activated (haoka172): 21 (haoka172 completed 21)\n"), "{out}");
        assert!(
            out.contains(
                "\n      - haoka172 B19: completed since 2026-12-01 00:00:00 +08:00 (3h ago)\n"
            ),
            "{out}"
        );
        assert!(!out.contains("B20"), "{out}");
        assert!(
            out.contains("\n      and 1 more (--format csv lists them all)\n"),
            "{out}"
        );
        // Neither vendor has overdue times recorded: said once each.
        assert_eq!(
            out.matches("not judged: no overdue times").count(),
            2,
            "{out}"
        );
    }
}
