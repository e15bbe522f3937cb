//! When to ask a vendor about an order. Pure: the caller passes `now`.
//!
//! - After news (a callback, a registration, a poll that changed something)
//!   the next check is `now + overdue[status]`: callbacks that arrive on time
//!   keep pushing it out, so a healthy order is never queried. After news
//!   from a poll it is at least one minute, so a pass never re-asks at once.
//!   At most 30 days, whatever the configuration says.
//! - After a poll that brought nothing new (or failed) the interval grows:
//!   `max(overdue[status], 1 min) × 2^(quiet-1)`, ±20 % jitter, at most
//!   30 days, so a quiet order costs few calls.
//! - Terminal orders have no next check.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};

use std::collections::BTreeMap;

use super::gaps::GapPolicy;
use super::status::Status;
use super::vendor::Vendor;

/// The default shortest re-check after a poll (`POLL_MIN_RECHECK`).
pub const MIN_RECHECK: Duration = Duration::from_secs(60);
/// The longest wait before a re-check (quiet polls add ±20 % jitter to it).
pub const MAX_RECHECK: Duration = Duration::from_secs(30 * 86400);

/// Per-status durations, e.g. `new=30m,pending=6h,submitted=2d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusDurations(pub BTreeMap<&'static str, Duration>);

impl StatusDurations {
    /// Statuses that can be waited on (every non-terminal one).
    pub const KEYS: [Status; 6] = [
        Status::New,
        Status::Pending,
        Status::Submitted,
        Status::Shipped,
        Status::Completed,
        Status::Unknown,
    ];

    /// Parse `key=duration,...` over `defaults`; omitted keys keep the default.
    pub fn parse(spec: &str, defaults: &StatusDurations) -> Result<Self, String> {
        let mut out = defaults.clone();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=duration"))?;
            let k = k.trim();
            let key = Self::KEYS
                .into_iter()
                .find(|s| s.as_str() == k)
                .ok_or_else(|| {
                    format!("`{k}` is not a non-terminal status (new, pending, submitted, shipped, completed, unknown)")
                })?
                .as_str();
            out.0.insert(key, parse_duration(v.trim())?);
        }
        Ok(out)
    }

    pub fn get(&self, status: Status) -> Option<Duration> {
        self.0.get(status.as_str()).copied()
    }

    fn from_pairs(pairs: &[(Status, u64)]) -> Self {
        StatusDurations(
            pairs
                .iter()
                .map(|(s, secs)| (s.as_str(), Duration::from_secs(*secs)))
                .collect(),
        )
    }

    /// The 172 defaults from `contract.md`.
    pub fn haoka172_default() -> Self {
        const H: u64 = 3600;
        Self::from_pairs(&[
            (Status::New, 30 * 60),
            (Status::Pending, 6 * H),
            (Status::Submitted, 2 * 24 * H),
            (Status::Shipped, 7 * 24 * H),
            (Status::Completed, 15 * 24 * H),
            (Status::Unknown, H),
        ])
    }

    /// 大麦家: how stale an order may get before it is re-read.
    pub fn damaijia_default() -> Self {
        const H: u64 = 3600;
        Self::from_pairs(&[
            (Status::New, 0),
            (Status::Pending, 2 * H),
            (Status::Submitted, 6 * H),
            (Status::Shipped, 12 * H),
            (Status::Completed, 24 * H),
            (Status::Unknown, H),
        ])
    }
}

/// `30s`, `15m`, `6h`, `2d`, or a bare `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 15m, 6h or 2d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}` has no unit (s, m, h or d)")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// When the poller should next look at an order, and the quiet polls that
/// led there. `at: None` means never (terminal, or past the horizon).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextCheck {
    pub at: Option<DateTime<Utc>>,
    pub quiet_polls: i32,
}

/// What just happened to an order, as far as when to ask next is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Registered for tracking; nothing heard yet.
    Registered,
    /// A source that speaks on its own (a callback, ops) told us about it;
    /// `status` is the order's status after the merge.
    News { status: Status },
    /// A query answered and the order changed.
    PollNews { status: Status },
    /// A query brought nothing new, did not find the order, or failed.
    PollQuiet { status: Status },
    /// A callback waits for the vendor's word: ask at once (the caller
    /// allows this once per order and reason). `status` is the order's
    /// held status: a terminal order is not asked even then.
    Confirm { status: Status },
}

/// The "when to ask" rules, built once at startup from the configuration.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Per vendor: how long an order may stay silent in each status before
    /// we ask (172: `HAOKA172_OVERDUE`; 大麦家: `DAMAIJIA_REFRESH`).
    pub waits: BTreeMap<Vendor, StatusDurations>,
    /// Orders silent for longer than this stop being polled.
    pub horizon: Duration,
    /// The shortest re-check after a poll, whatever `waits` says.
    pub min_recheck: Duration,
    /// Recovery from a deployment-wide silence of 172 callbacks (`gaps`).
    pub callback_gap: Option<GapPolicy>,
    /// Hold a callback that would make its order terminal until a query
    /// confirms it (`status::needs_confirmation`). Only when the 172 poller
    /// can make that query.
    pub confirm_terminal: bool,
}

impl Schedule {
    /// The one decision of when to ask next: every write of an order's
    /// schedule goes through here.
    ///
    /// - News (a callback, a registration, a poll that changed something)
    ///   waits the status's time; after a poll at least `min_recheck`; at
    ///   most 30 days.
    /// - A quiet poll backs off: `max(wait, min_recheck) × 2^(quiet-1)`,
    ///   ±20 % jitter, at most 30 days.
    /// - A confirmation is due now; it keeps the quiet count.
    /// - A terminal order is never checked again, whatever the event.
    pub fn next_check(
        &self,
        vendor: Vendor,
        order_id: &str,
        event: Event,
        held: NextCheck,
        now: DateTime<Utc>,
    ) -> NextCheck {
        let news = |at| NextCheck { at, quiet_polls: 0 };
        match event {
            Event::Registered => news(self.after(vendor, Status::New, now, Duration::ZERO)),
            Event::News { status } => news(self.after(vendor, status, now, Duration::ZERO)),
            Event::PollNews { status } => news(self.after(vendor, status, now, self.min_recheck)),
            Event::PollQuiet { status } => {
                let quiet = held.quiet_polls.saturating_add(1);
                NextCheck {
                    at: self.after_quiet(vendor, status, now, quiet, jitter(order_id, now)),
                    quiet_polls: quiet,
                }
            }
            Event::Confirm { status } => NextCheck {
                at: self.wait(vendor, status).map(|_| now),
                ..held
            },
        }
    }

    fn wait(&self, vendor: Vendor, status: Status) -> Option<Duration> {
        if status.is_terminal() {
            return None;
        }
        // Every non-terminal status has a default; be safe anyway.
        Some(
            self.waits
                .get(&vendor)
                .and_then(|t| t.get(status))
                .unwrap_or(Duration::from_secs(3600)),
        )
    }

    fn after(
        &self,
        vendor: Vendor,
        status: Status,
        now: DateTime<Utc>,
        at_least: Duration,
    ) -> Option<DateTime<Utc>> {
        self.wait(vendor, status)
            .map(|w| now + to_chrono(w.max(at_least).min(MAX_RECHECK)))
    }

    /// After `quiet` (≥ 1) consecutive polls that brought nothing new.
    /// `jitter` in [-1, 1] spreads re-checks so they do not bunch up.
    fn after_quiet(
        &self,
        vendor: Vendor,
        status: Status,
        now: DateTime<Utc>,
        quiet: i32,
        jitter: f64,
    ) -> Option<DateTime<Utc>> {
        let base = self.wait(vendor, status)?.max(self.min_recheck);
        let factor = 1u32 << quiet.clamp(1, 16).saturating_sub(1);
        let interval = base.saturating_mul(factor).min(MAX_RECHECK);
        let jittered = interval.as_secs_f64() * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
        let floor = self.min_recheck.min(MAX_RECHECK).as_secs_f64() * 0.8;
        Some(now + to_chrono(Duration::from_secs_f64(jittered.max(floor))))
    }

    /// Orders last heard of before this are past the tracking horizon.
    pub fn horizon_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - to_chrono(self.horizon)
    }

    /// When an order out of today's per-order budget may be asked again:
    /// the vendor counts per China-time day.
    pub fn after_daily_budget(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        next_china_midnight(now)
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// The China-time (UTC+8) calendar day of `t`: the vendor's per-order
/// daily limit counts in it.
pub fn china_day(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&china()).date_naive()
}

/// The next China-time midnight after `t`.
pub fn next_china_midnight(t: DateTime<Utc>) -> DateTime<Utc> {
    let next = china_day(t).succ_opt().unwrap_or(NaiveDate::MAX);
    china()
        .from_local_datetime(&next.and_hms_opt(0, 0, 0).unwrap_or_default())
        .single()
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or(t + chrono::Duration::days(1))
}

/// A value in [-1, 1] that differs between orders and over time, the same
/// for the same inputs (no random-number crate, and repeatable in tests).
pub fn jitter(order_id: &str, now: DateTime<Utc>) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    order_id.hash(&mut h);
    now.timestamp_nanos_opt().unwrap_or_default().hash(&mut h);
    (h.finish() % 20_001) as f64 / 10_000.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            waits: [
                (Vendor::Haoka172, StatusDurations::haoka172_default()),
                (Vendor::Damaijia, StatusDurations::damaijia_default()),
            ]
            .into(),
            horizon: Duration::from_secs(60 * 86400),
            min_recheck: MIN_RECHECK,
            callback_gap: None,
            confirm_terminal: false,
        }
    }

    impl Schedule {
        fn after_news(
            &self,
            v: Vendor,
            status: Status,
            now: DateTime<Utc>,
        ) -> Option<DateTime<Utc>> {
            let e = if status == Status::New {
                Event::Registered
            } else {
                Event::News { status }
            };
            self.next_check(v, "D1", e, NextCheck::default(), now).at
        }

        fn after_poll_news(
            &self,
            v: Vendor,
            status: Status,
            now: DateTime<Utc>,
        ) -> Option<DateTime<Utc>> {
            self.next_check(
                v,
                "D1",
                Event::PollNews { status },
                NextCheck::default(),
                now,
            )
            .at
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
    }

    #[test]
    fn news_waits_the_overdue_time_of_the_status() {
        let s = schedule();
        let h = chrono::Duration::hours;
        assert_eq!(
            s.after_news(Vendor::Haoka172, Status::New, t0()),
            Some(t0() + chrono::Duration::minutes(30))
        );
        assert_eq!(
            s.after_news(Vendor::Haoka172, Status::Pending, t0()),
            Some(t0() + h(6))
        );
        assert_eq!(
            s.after_news(Vendor::Haoka172, Status::Shipped, t0()),
            Some(t0() + h(7 * 24))
        );
        assert_eq!(
            s.after_news(Vendor::Haoka172, Status::Unknown, t0()),
            Some(t0() + h(1))
        );
    }

    #[test]
    fn terminal_orders_are_never_checked_again() {
        let s = schedule();
        for st in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert_eq!(s.after_news(Vendor::Haoka172, st, t0()), None);
            assert_eq!(s.after_quiet(Vendor::Haoka172, st, t0(), 1, 0.0), None);
            assert_eq!(s.after_news(Vendor::Damaijia, st, t0()), None);
        }
    }

    #[test]
    fn quiet_polls_back_off_exponentially_with_bounded_jitter() {
        let s = schedule();
        let at = |q, j| {
            s.after_quiet(Vendor::Haoka172, Status::Pending, t0(), q, j)
                .unwrap()
                - t0()
        };
        assert_eq!(at(1, 0.0), chrono::Duration::hours(6));
        assert_eq!(at(2, 0.0), chrono::Duration::hours(12));
        assert_eq!(at(3, 0.0), chrono::Duration::hours(24));
        assert_eq!(at(2, 1.0), chrono::Duration::minutes(12 * 60 * 6 / 5));
        assert_eq!(at(2, -1.0), chrono::Duration::minutes(12 * 60 * 4 / 5));
        assert_eq!(at(40, 0.0), chrono::Duration::days(30), "capped");
    }

    #[test]
    fn a_zero_overdue_still_backs_off_from_one_minute() {
        let mut s = schedule();
        let pending_zero =
            StatusDurations::parse("pending=0", &s.waits[&Vendor::Haoka172]).unwrap();
        s.waits.insert(Vendor::Haoka172, pending_zero);
        assert_eq!(
            s.after_news(Vendor::Haoka172, Status::Pending, t0()),
            Some(t0())
        );
        assert_eq!(
            s.after_poll_news(Vendor::Haoka172, Status::Pending, t0()),
            Some(t0() + chrono::Duration::minutes(1))
        );
        let q1 = s
            .after_quiet(Vendor::Haoka172, Status::Pending, t0(), 1, 0.0)
            .unwrap();
        let q3 = s
            .after_quiet(Vendor::Haoka172, Status::Pending, t0(), 3, 0.0)
            .unwrap();
        assert_eq!(q1 - t0(), chrono::Duration::minutes(1));
        assert_eq!(q3 - t0(), chrono::Duration::minutes(4));
    }

    #[test]
    fn a_duration_too_long_to_count_is_refused_not_a_panic() {
        assert_eq!(
            parse_duration("213503982334601d"),
            Ok(Duration::from_secs(213503982334601 * 86400))
        );
        let e = parse_duration("213503982334602d").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse_duration("18446744073709551615s").is_ok());
        assert!(parse_duration("18446744073709551615m").is_err());
        assert!(StatusDurations::parse(
            "shipped=999999999999999d",
            &schedule().waits[&Vendor::Haoka172]
        )
        .is_err());
    }

    #[test]
    fn waits_configured_beyond_thirty_days_are_capped_not_a_panic() {
        let mut s = schedule();
        let far =
            StatusDurations::parse("shipped=100000000d", &s.waits[&Vendor::Haoka172]).unwrap();
        s.waits.insert(Vendor::Haoka172, far);
        s.min_recheck = Duration::from_secs(60 * 86400);
        let days = |d| Some(t0() + chrono::Duration::days(d));
        assert_eq!(
            s.after_news(Vendor::Haoka172, Status::Shipped, t0()),
            days(30)
        );
        assert_eq!(
            s.after_poll_news(Vendor::Haoka172, Status::Pending, t0()),
            days(30)
        );
        let quiet = s
            .after_quiet(Vendor::Haoka172, Status::Shipped, t0(), 1, 1.0)
            .unwrap();
        assert_eq!(quiet, days(36).unwrap());
        let quiet = s
            .after_quiet(Vendor::Haoka172, Status::Pending, t0(), 1, -1.0)
            .unwrap();
        assert_eq!(quiet, days(24).unwrap());
    }

    #[test]
    fn china_day_turns_at_utc_16_00() {
        let before = Utc.with_ymd_and_hms(2026, 11, 21, 15, 59, 59).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 21, 16, 0, 0).unwrap();
        assert_eq!(
            china_day(before),
            NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
        );
        assert_eq!(
            china_day(after),
            NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
        );
        assert_eq!(next_china_midnight(before), after);
        assert_eq!(
            next_china_midnight(after),
            after + chrono::Duration::days(1)
        );
    }

    #[test]
    fn a_quiet_poll_counts_up_and_a_confirmation_is_due_now_keeping_the_count() {
        let s = schedule();
        let held = NextCheck {
            at: Some(t0()),
            quiet_polls: 2,
        };
        let q = s.next_check(
            Vendor::Haoka172,
            "D1",
            Event::PollQuiet {
                status: Status::Pending,
            },
            held,
            t0(),
        );
        assert_eq!(q.quiet_polls, 3);
        let confirm = Event::Confirm {
            status: Status::Pending,
        };
        let c = s.next_check(Vendor::Haoka172, "D1", confirm, q, t0());
        assert_eq!(
            c,
            NextCheck {
                at: Some(t0()),
                quiet_polls: 3
            }
        );
        let n = s.next_check(
            Vendor::Haoka172,
            "D1",
            Event::News {
                status: Status::Shipped,
            },
            q,
            t0(),
        );
        assert_eq!(n.quiet_polls, 0, "news resets the backoff");
        assert_eq!(s.after_daily_budget(t0()), next_china_midnight(t0()));
    }

    #[test]
    fn a_terminal_order_is_not_asked_even_to_confirm() {
        let s = schedule();
        let held = NextCheck {
            at: None,
            quiet_polls: 2,
        };
        for st in Status::ALL {
            let c = s.next_check(
                Vendor::Haoka172,
                "D1",
                Event::Confirm { status: st },
                held,
                t0(),
            );
            let want = (!st.is_terminal()).then_some(t0());
            assert_eq!(
                c,
                NextCheck {
                    at: want,
                    quiet_polls: 2
                },
                "{st}"
            );
        }
    }

    #[test]
    fn jitter_is_the_same_for_the_same_order_and_time() {
        assert_eq!(jitter("D1", t0()), jitter("D1", t0()));
        assert_ne!(jitter("D1", t0()), jitter("D2", t0()));
    }

    #[test]
    fn jitter_stays_in_range() {
        for i in 0..1000 {
            let j = jitter(&format!("D{i}"), t0());
            assert!((-1.0..=1.0).contains(&j));
        }
    }
}
