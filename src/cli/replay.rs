//! `haoka-sync replay [--since T] [--until T] [--outcome O,…] [--id N…]
//! [--dry-run]`: judge stored callback requests again with the
//! configuration of now, and commit those that now verify exactly as if
//! they had just arrived (docs/contract.md#haoka-sync-replay). The repair
//! for callbacks stored while `HAOKA172_SECRET` was missing or wrong, with
//! no vendor call.
//!
//! It never replays without being told what, never calls a vendor, never
//! touches a request's original outcome, and a dry run commits nothing.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::PgConnection;

use super::{failed, CliError, CliResult};
use crate::config::{DatabaseConfig, ReplayConfig};
use crate::db;
use crate::http::source::SourcePolicy;
use crate::rules::inbound::{Outcome, Verdict};
use crate::rules::schedule::{china_time, Schedule};
use crate::rules::status::Effect;
use crate::rules::Vendor;
use crate::store::ingest::Receipt;
use crate::store::replay::{self, Selection, StoredCallback};
use crate::vendors::haoka172::callback;
use crate::vendors::haoka172::sign::CallbackKey;

/// Requests judged and committed per transaction: the live group commit's
/// default batch, so a replay holds order locks no longer than live traffic
/// does.
const BATCH: usize = 256;
/// How often a long run says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Ids asked for but not selected, explained one by one at most.
const EXPLAIN_UNSELECTED: usize = 10;

#[derive(Debug, clap::Args)]
pub(super) struct ReplayArgs {
    /// Only requests received at or after TIME: RFC 3339
    /// (2026-12-02T05:30:00+08:00) or China time (2026-12-02 05:30:00, as
    /// `show` prints it; or a day, 2026-12-02).
    #[arg(long, value_name = "TIME", value_parser = crate::rules::time::parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only requests received before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = crate::rules::time::parse_time)]
    until: Option<DateTime<Utc>>,
    /// Only requests stored with these outcomes, comma-separated (default:
    /// every outcome that was never applied; applied, duplicate and test
    /// only when named).
    #[arg(long, value_name = "O[,O...]", value_delimiter = ',', value_parser = parse_outcome)]
    outcome: Vec<Outcome>,
    /// Only these stored requests (inbound_callbacks.id), space- or
    /// comma-separated.
    #[arg(long = "id", value_name = "N", num_args = 1.., value_delimiter = ',')]
    ids: Vec<i64>,
    /// Judge and report what would happen; commit nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_outcome(s: &str) -> Result<Outcome, String> {
    s.trim().parse().map_err(|_| {
        let all: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        format!("unknown callback outcome `{s}` (one of {})", all.join(", "))
    })
}

/// The outcomes replayed when `--outcome` is not given: every one that was
/// never applied. Replaying an applied, duplicate or test request is safe
/// (its `RequidId` is committed, so it comes out a duplicate), but only
/// asked for by name.
fn never_applied() -> Vec<Outcome> {
    Outcome::ALL
        .into_iter()
        .filter(|o| !o.is_success())
        .collect()
}

pub(super) async fn run(config: ReplayConfig, args: ReplayArgs) -> CliResult {
    let selection = selection(&args)?;
    let judge = Judge {
        keys: [&config.secret, &config.previous_secret]
            .into_iter()
            .flatten()
            .map(|s| CallbackKey::from_secret(s.expose()))
            .collect(),
        sources: SourcePolicy::new(config.callback_allowed_sources.clone(), None, Vec::new()),
    };
    if judge.keys.is_empty() {
        return Err(CliError::Usage(
            "HAOKA172_SECRET is not set, so every request would be judged not_configured again: \
             set it to the 172 API secret (and HAOKA172_SECRET_PREVIOUS to the old one while rotating)"
                .into(),
        ));
    }
    let dry_run = args.dry_run;
    let db = config.tracking.database.clone();
    let schedule = config.tracking.schedule.clone();
    let described = describe(&selection);
    let sel = selection.clone();
    let (tally, unselected) = tokio::task::spawn_blocking(move || {
        let mut conn = open(&db)?;
        let started = Instant::now();
        let mut last = Instant::now();
        run_blocking(
            &mut conn,
            &sel,
            &judge,
            &schedule,
            dry_run,
            |done, total| {
                if last.elapsed() >= PROGRESS_EVERY {
                    last = Instant::now();
                    let msg = format!(
                        "replay: {done} of {total} requests judged ({:.0}s)",
                        started.elapsed().as_secs_f64()
                    );
                    let kvs = [("judged", done), ("selected", total)];
                    super::log_format::note(log::Level::Info, module_path!(), "", &msg, &kvs);
                }
            },
        )
        .map_err(|e| {
            format!(
                "replay stopped: {e} (requests committed so far stay; running it again is safe)"
            )
        })
    })
    .await?
    .map_err(failed)?;
    for line in &unselected {
        let kvs: [(&str, &str); 0] = [];
        super::log_format::note(
            log::Level::Warn,
            module_path!(),
            "",
            &format!("replay: {line}"),
            &kvs,
        );
    }
    let line = tally.line(dry_run);
    println!("{line}");
    log::info!("{line}; selected by {described}");
    Ok(())
}

/// The selection the arguments name; with none at all, a usage error that
/// says what to pass (a replay of everything is never what was meant).
fn selection(args: &ReplayArgs) -> Result<Selection, CliError> {
    if args.since.is_none()
        && args.until.is_none()
        && args.outcome.is_empty()
        && args.ids.is_empty()
    {
        return Err(CliError::Usage(
            "replay needs to be told which stored requests to judge again: --outcome O[,O...] \
             (e.g. --outcome not_configured,bad_signature), --since/--until TIME, and/or --id N...; \
             see haoka-sync replay --help"
                .into(),
        ));
    }
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            return Err(CliError::Usage(format!(
                "--since {} is not before --until {}",
                china_time(since),
                china_time(until)
            )));
        }
    }
    let mut outcomes = Vec::new();
    let asked = if args.outcome.is_empty() {
        never_applied()
    } else {
        args.outcome.clone()
    };
    for o in asked {
        if !outcomes.contains(&o) {
            outcomes.push(o);
        }
    }
    Ok(Selection {
        since: args.since,
        until: args.until,
        outcomes,
        ids: args.ids.clone(),
    })
}

/// The selection in words, for the log line.
fn describe(sel: &Selection) -> String {
    let mut parts = vec![format!(
        "outcome {}",
        sel.outcomes
            .iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join(",")
    )];
    if let Some(t) = sel.since {
        parts.push(format!("since {}", china_time(t)));
    }
    if let Some(t) = sel.until {
        parts.push(format!("until {}", china_time(t)));
    }
    if !sel.ids.is_empty() {
        parts.push(format!("{} id(s)", sel.ids.len()));
    }
    parts.join(", ")
}

/// One direct connection: a replay is one client working through batches,
/// and a database that is missing, down or behind is said at once, in one
/// line. Replay never creates or migrates the database it repairs.
fn open(db: &DatabaseConfig) -> Result<PgConnection, String> {
    let url = &db.url;
    let name = url.database_name();
    let mut conn = db::connect(
        url,
        url,
        &format!("to replay callbacks stored in the database {name}"),
    )
    .map_err(|e| {
        if e.to_string()
            .contains(&format!("database \"{name}\" does not exist"))
        {
            format!(
                "database {name} does not exist (DATABASE_URL): it holds no callbacks to replay"
            )
        } else {
            e.to_string()
        }
    })?;
    match db::schema(&mut conn, &db::latest_migration()).map_err(|e| format!("database {name}: {e}"))? {
        db::Schema::Current => Ok(conn),
        db::Schema::Behind { has, wants } => Err(format!(
            "database {name} is not migrated (has {}, this build needs {wants}): run `haoka-sync migrate`",
            has.as_deref().unwrap_or("no migration")
        )),
    }
}

/// How a stored request is judged again: as a live one, with the secrets and
/// the source rule of now.
struct Judge {
    keys: Vec<CallbackKey>,
    sources: SourcePolicy,
}

impl Judge {
    /// The sender first, on the address recorded when it arrived (the proxy
    /// header was judged then), then the body and its sign. `None`: it
    /// cannot be judged again, only a sample of its body was kept.
    fn verdict(&self, row: &StoredCallback) -> Option<Verdict> {
        if row.body_truncated {
            return None;
        }
        let addr = row
            .source_addr
            .as_deref()
            .and_then(|a| a.parse::<IpAddr>().ok());
        if let Some(refusal) = self.sources.refusal(addr) {
            return Some(Verdict::refused(Outcome::ForbiddenSource, refusal));
        }
        Some(callback::check(
            row.content_type.as_deref(),
            row.body(),
            row.sign.as_deref(),
            &self.keys,
        ))
    }
}

/// Select, then judge and commit a batch at a time; `progress(done, total)`
/// after each batch. Also says why ids asked for were not selected.
fn run_blocking(
    conn: &mut PgConnection,
    sel: &Selection,
    judge: &Judge,
    schedule: &Schedule,
    dry_run: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Tally, Vec<String>), db::DbError> {
    let vendor = Vendor::Haoka172;
    let ids = replay::select(conn, vendor, sel)?;
    let unselected = explain_unselected(conn, vendor, sel, &ids)?;
    let mut tally = Tally::default();
    // A dry run rolls each batch back, so a later batch cannot see that an
    // earlier one would have committed a `RequidId`.
    let mut would_commit: HashSet<String> = HashSet::new();
    let mut done = 0;
    for chunk in ids.chunks(BATCH) {
        let rows = replay::load(conn, chunk)?;
        let mut reqs = Vec::with_capacity(rows.len());
        for row in &rows {
            match judge.verdict(row) {
                Some(v) => reqs.push(row.judged(v)),
                None => tally.not_replayable += 1,
            }
        }
        tally.selected += rows.len();
        for receipt in replay::commit(conn, &reqs, schedule, dry_run)? {
            let again = dry_run
                && receipt.outcome == Outcome::Applied
                && receipt
                    .request_id
                    .as_ref()
                    .is_some_and(|rid| !would_commit.insert(rid.clone()));
            tally.add(&receipt, again);
        }
        done += chunk.len();
        progress(done, ids.len());
    }
    Ok((tally, unselected))
}

/// For each id asked for that was not selected, why: not stored, stored
/// with an outcome not asked for, or received outside the window.
fn explain_unselected(
    conn: &mut PgConnection,
    vendor: Vendor,
    sel: &Selection,
    selected: &[i64],
) -> Result<Vec<String>, db::DbError> {
    let chosen: HashSet<i64> = selected.iter().copied().collect();
    let mut missing: Vec<i64> = sel
        .ids
        .iter()
        .copied()
        .filter(|i| !chosen.contains(i))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let found: BTreeMap<i64, (String, DateTime<Utc>)> = replay::describe(conn, vendor, &missing)?
        .into_iter()
        .map(|(id, outcome, at)| (id, (outcome, at)))
        .collect();
    let mut lines: Vec<String> = missing
        .iter()
        .take(EXPLAIN_UNSELECTED)
        .map(|id| match found.get(id) {
            None => format!("--id {id}: no stored {vendor} callback request has this id"),
            Some((outcome, _)) if !sel.outcomes.iter().any(|o| o.as_str() == outcome) => format!(
                "--id {id}: stored as {outcome}, not among the outcomes replayed (add --outcome {outcome} to replay it)"
            ),
            Some((_, at)) => format!(
                "--id {id}: received {}, outside --since/--until",
                china_time(*at)
            ),
        })
        .collect();
    if missing.len() > EXPLAIN_UNSELECTED {
        lines.push(format!(
            "and {} more id(s) not selected",
            missing.len() - EXPLAIN_UNSELECTED
        ));
    }
    Ok(lines)
}

/// What a replay did (or, in a dry run, would do), by result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tally {
    selected: usize,
    applied: usize,
    /// Of `applied`: terminal claims held until GetOrderInfo confirms them.
    held: usize,
    duplicate: usize,
    test: usize,
    /// Still not applied, by the outcome the request got now.
    rejected: BTreeMap<&'static str, usize>,
    /// Only a sample of the body was kept (`too_large`).
    not_replayable: usize,
}

impl Tally {
    /// `again`: a dry run already counted its `RequidId` as committed.
    fn add(&mut self, r: &Receipt, again: bool) {
        match r.outcome {
            Outcome::Applied if again => self.duplicate += 1,
            Outcome::Applied => {
                self.applied += 1;
                if matches!(r.effect, Some((Effect::Unconfirmed, _))) {
                    self.held += 1;
                }
            }
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Test => self.test += 1,
            other => *self.rejected.entry(other.as_str()).or_default() += 1,
        }
    }

    /// The one-line summary (docs/contract.md#haoka-sync-replay).
    fn line(&self, dry_run: bool) -> String {
        let (head, applied) = if dry_run {
            ("replay (dry run, nothing committed)", "would apply")
        } else {
            ("replay", "applied")
        };
        let mut line = format!(
            "{head}: {} selected: {} {applied}",
            self.selected, self.applied
        );
        if self.held > 0 {
            line.push_str(&format!(
                " ({} held until GetOrderInfo confirms them)",
                self.held
            ));
        }
        line.push_str(&format!(", {} duplicate", self.duplicate));
        if self.test > 0 {
            line.push_str(&format!(", {} test push", self.test));
        }
        let rejected: usize = self.rejected.values().sum();
        line.push_str(&format!(", {rejected} still rejected"));
        if rejected > 0 {
            let by: Vec<String> = self
                .rejected
                .iter()
                .map(|(o, n)| format!("{o} {n}"))
                .collect();
            line.push_str(&format!(" ({})", by.join(", ")));
        }
        line.push_str(&format!(", {} not replayable", self.not_replayable));
        if self.not_replayable > 0 {
            line.push_str(" (too_large: only a sample of the body was kept)");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Status;

    fn receipt(outcome: Outcome, effect: Option<(Effect, Status)>) -> Receipt {
        Receipt {
            outcome,
            effect,
            error: None,
            expedited: false,
            request_id: Some("R".into()),
            order_id: Some("O".into()),
        }
    }

    #[test]
    fn the_summary_counts_every_selected_request_once() {
        let mut t = Tally {
            selected: 9,
            not_replayable: 1,
            ..Tally::default()
        };
        for (outcome, effect, again) in [
            (
                Outcome::Applied,
                Some((Effect::Advanced, Status::Shipped)),
                false,
            ),
            (
                Outcome::Applied,
                Some((Effect::Unconfirmed, Status::Settled)),
                false,
            ),
            (
                Outcome::Applied,
                Some((Effect::Advanced, Status::Shipped)),
                true,
            ),
            (Outcome::Duplicate, None, false),
            (Outcome::Test, None, false),
            (Outcome::BadSignature, None, false),
            (Outcome::BadSignature, None, false),
            (Outcome::Malformed, None, false),
        ] {
            t.add(&receipt(outcome, effect), again);
        }
        assert_eq!(
            t.line(false),
            "replay: 9 selected: 2 applied (1 held until GetOrderInfo confirms them), 2 duplicate, \
             1 test push, 3 still rejected (bad_signature 2, malformed 1), 1 not replayable \
             (too_large: only a sample of the body was kept)"
        );
        let sum = t.applied
            + t.duplicate
            + t.test
            + t.rejected.values().sum::<usize>()
            + t.not_replayable;
        assert_eq!(sum, t.selected);
        assert_eq!(
            Tally {
                selected: 3,
                applied: 3,
                ..Tally::default()
            }
            .line(true),
            "replay (dry run, nothing committed): 3 selected: 3 would apply, 0 duplicate, 0 still rejected, 0 not replayable"
        );
    }

    fn args(f: impl FnOnce(&mut ReplayArgs)) -> ReplayArgs {
        let mut a = ReplayArgs {
            since: None,
            until: None,
            outcome: Vec::new(),
            ids: Vec::new(),
            dry_run: false,
        };
        f(&mut a);
        a
    }

    #[test]
    fn without_any_filter_it_refuses_and_says_what_to_pass() {
        let Err(CliError::Usage(msg)) = selection(&args(|a| a.dry_run = true)) else {
            panic!("no filter must be refused")
        };
        assert!(
            msg.contains("--outcome") && msg.contains("--since") && msg.contains("--id"),
            "{msg}"
        );
    }

    #[test]
    fn the_default_outcomes_are_those_never_applied() {
        let s = selection(&args(|a| a.ids = vec![7])).unwrap();
        let names: Vec<&str> = s.outcomes.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "unverified",
                "bad_signature",
                "malformed",
                "too_large",
                "not_configured",
                "forbidden_source",
                "internal_error"
            ]
        );
        let s = selection(&args(|a| a.outcome = vec![Outcome::Applied])).unwrap();
        assert_eq!(s.outcomes, [Outcome::Applied]);
    }

    #[test]
    fn a_window_must_run_forward() {
        let t = |s| crate::rules::time::parse_time(s).unwrap();
        let Err(CliError::Usage(msg)) = selection(&args(|a| {
            a.since = Some(t("2026-12-02 10:00:00"));
            a.until = Some(t("2026-12-02 09:00:00"));
        })) else {
            panic!("a backwards window must be refused")
        };
        assert_eq!(
            msg,
            "--since 2026-12-02 10:00:00 +08:00 is not before --until 2026-12-02 09:00:00 +08:00"
        );
    }

    #[test]
    fn an_unknown_outcome_lists_the_known_ones() {
        let e = parse_outcome("applyed").unwrap_err();
        assert!(e.contains("applyed") && e.contains("not_configured"), "{e}");
        assert_eq!(parse_outcome(" bad_signature"), Ok(Outcome::BadSignature));
    }
}
