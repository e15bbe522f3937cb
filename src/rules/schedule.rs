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

pub use super::duration::parse_duration;
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

    /// The 172 defaults (docs/contract.md#172号卡-variables).
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
    /// A callback gap may have hidden news of the order: ask at once, the
    /// earlier statuses a moment first (they change soonest).
    Swept { status: Status },
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
                at: (!status.is_terminal()).then_some(now),
                ..held
            },
            Event::Swept { status } => NextCheck {
                at: swept_at(status, now),
                ..held
            },
        }
    }

    /// How long an order of `status` waits before a check (none when
    /// terminal); every decision and the recorded settings read it here.
    pub(super) fn wait(&self, vendor: Vendor, status: Status) -> Option<Duration> {
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

/// When an order of `status` that a callback gap may have hidden news of
/// comes due (`Event::Swept`): now, the earlier statuses a moment first
/// (they change soonest); never for a terminal order. The same for every
/// vendor and order, so a sweep can apply it to many orders in one update.
pub fn swept_at(status: Status, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let lead = match status {
        _ if status.is_terminal() => return None,
        Status::Submitted => 2,
        Status::Shipped => 1,
        Status::Completed => 0,
        _ => 3,
    };
    Some(now - chrono::Duration::seconds(lead))
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// A time as every person-facing line shows it: China time with its
/// offset, `2026-12-02 05:30:00 +08:00`.
pub fn china_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&china())
        .format("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
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
/// Time counts to the microsecond, as PostgreSQL keeps it: the stored time
/// of a poll gives the jitter that poll was scheduled with (a reschedule
/// relies on it).
pub fn jitter(order_id: &str, now: DateTime<Utc>) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    order_id.hash(&mut h);
    now.timestamp_micros().hash(&mut h);
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
        let c = s.next_check(
            Vendor::Haoka172,
            "D1",
            Event::Confirm {
                status: Status::Pending,
            },
            q,
            t0(),
        );
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

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        const DAY: u64 = 86400;

        fn duration() -> impl Strategy<Value = Duration> {
            prop_oneof![
                4 => (0u64..=60 * DAY).prop_map(Duration::from_secs),
                1 => Just(Duration::ZERO),
                1 => any::<u64>().prop_map(Duration::from_secs),
            ]
        }

        /// Per-status waits with keys possibly missing (the rule falls back).
        fn waits() -> impl Strategy<Value = StatusDurations> {
            proptest::collection::vec(proptest::option::of(duration()), 6).prop_map(|d| {
                StatusDurations(
                    StatusDurations::KEYS
                        .iter()
                        .zip(d)
                        .filter_map(|(k, d)| d.map(|d| (k.as_str(), d)))
                        .collect(),
                )
            })
        }

        /// Any configuration, the defaults included, a vendor's waits
        /// possibly missing altogether.
        fn schedule() -> impl Strategy<Value = Schedule> {
            let defaults = Just(super::schedule());
            let any = (
                proptest::option::of(waits()),
                proptest::option::of(waits()),
                prop_oneof![Just(MIN_RECHECK), duration()],
            )
                .prop_map(|(h, d, min_recheck)| Schedule {
                    waits: [(Vendor::Haoka172, h), (Vendor::Damaijia, d)]
                        .into_iter()
                        .filter_map(|(v, w)| w.map(|w| (v, w)))
                        .collect(),
                    min_recheck,
                    ..super::schedule()
                });
            prop_oneof![1 => defaults, 3 => any]
        }

        fn vendor() -> impl Strategy<Value = Vendor> {
            select(vec![Vendor::Haoka172, Vendor::Damaijia])
        }

        fn status() -> impl Strategy<Value = Status> {
            select(Status::ALL.to_vec())
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                Just(Event::Registered),
                status().prop_map(|status| Event::News { status }),
                status().prop_map(|status| Event::PollNews { status }),
                status().prop_map(|status| Event::PollQuiet { status }),
                status().prop_map(|status| Event::Confirm { status }),
                status().prop_map(|status| Event::Swept { status }),
            ]
        }

        /// The order's status the event speaks of.
        fn status_of(e: Event) -> Status {
            match e {
                Event::Registered => Status::New,
                Event::News { status }
                | Event::PollNews { status }
                | Event::PollQuiet { status }
                | Event::Confirm { status }
                | Event::Swept { status } => status,
            }
        }

        /// A clock between 2000 and 2200, to the nanosecond.
        fn now() -> impl Strategy<Value = DateTime<Utc>> {
            (946_684_800i64..7_258_118_400, 0u32..1_000_000_000)
                .prop_map(|(s, n)| Utc.timestamp_opt(s, n).unwrap())
        }

        fn held() -> impl Strategy<Value = NextCheck> {
            (proptest::option::of(now()), any::<i32>())
                .prop_map(|(at, quiet_polls)| NextCheck { at, quiet_polls })
        }

        fn order_id() -> impl Strategy<Value = String> {
            prop_oneof![any::<u32>().prop_map(|n| format!("D{n}")), "\\PC{0,12}"]
        }

        fn secs(d: chrono::Duration) -> f64 {
            d.num_nanoseconds().unwrap_or(i64::MAX) as f64 / 1e9
        }

        /// The status's wait as configured (an hour when missing).
        fn wait(s: &Schedule, v: Vendor, st: Status) -> Duration {
            s.waits
                .get(&v)
                .and_then(|w| w.get(st))
                .unwrap_or(Duration::from_secs(3600))
        }

        fn render(d: &StatusDurations) -> String {
            d.0.iter()
                .map(|(k, v)| format!("{k}={}s", v.as_secs()))
                .collect::<Vec<_>>()
                .join(",")
        }

        /// What `parse_duration` must read `s` as, worked out in u128: a
        /// bare `0`, or ASCII digits then one of s, m, h, d, when the
        /// seconds fit in u64.
        fn duration_of(s: &str) -> Option<u64> {
            if s == "0" {
                return Some(0);
            }
            let unit = s.chars().last()?;
            let digits = &s[..s.len() - unit.len_utf8()];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mult: u128 = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86400,
                _ => return None,
            };
            let n: u128 = digits.parse().unwrap_or(u128::MAX);
            u64::try_from(n.checked_mul(mult)?).ok()
        }

        fn duration_text() -> impl Strategy<Value = String> {
            let unit = select(vec!["s", "m", "h", "d", "", "x", "ms", " s", "S", "秒"]);
            prop_oneof![
                any::<String>(),
                "[0-9smhd +.-]{0,8}",
                (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
                (0u64..1000, unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
                ("[0-9]{15,25}", unit).prop_map(|(n, u)| format!("{n}{u}")),
                Just("0".to_owned()),
            ]
        }

        fn spec() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                select(Status::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
                select(vec!["", " pending ", "Pending", "x"]),
            ];
            let piece = prop_oneof![
                (key.clone(), duration_text()).prop_map(|(k, v)| format!("{k}={v}")),
                key.prop_map(str::to_owned),
                "[ -~]{0,6}",
            ];
            prop_oneof![
                any::<String>(),
                proptest::collection::vec(piece, 0..6).prop_map(|p| p.join(",")),
            ]
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(3000))]

            /// Whatever the event, the configuration and the held schedule:
            /// a terminal order gets no next check (not even to confirm a
            /// callback); any other order gets one, never before `now` (a
            /// swept one at most 3 s before) and never later than 30 days
            /// plus 20 % jitter after it; a confirmation is due at `now`.
            #[test]
            fn next_check_never_schedules_a_terminal_order_and_stays_within_thirty_days_and_jitter(
                s in schedule(),
                v in vendor(),
                e in event(),
                held in held(),
                id in order_id(),
                now in now(),
            ) {
                let got = s.next_check(v, &id, e, held, now);
                if status_of(e).is_terminal() {
                    prop_assert_eq!(got.at, None, "{:?}", e);
                } else if let Event::Swept { status } = e {
                    // A sweep puts the earlier statuses a few seconds first.
                    let at = got.at.expect("a swept order is checked again");
                    prop_assert_eq!(Some(at), swept_at(status, now));
                    prop_assert!(at <= now && now - at <= chrono::Duration::seconds(3));
                } else {
                    let at = got.at.expect("a non-terminal order is checked again");
                    prop_assert!(at >= now, "{at} before {now}");
                    let most = MAX_RECHECK.as_secs_f64() * 1.2;
                    prop_assert!(secs(at - now) <= most + 1e-3, "{at} is {:?} after {now}", at - now);
                    if matches!(e, Event::Confirm { .. }) {
                        prop_assert_eq!(at, now);
                    }
                }
            }

            /// A quiet poll waits `max(wait, min_recheck) × 2^(quiet − 1)`,
            /// at most 30 days, ±20 % jitter; with the same jitter (same
            /// order, same time) more quiet polls never mean a shorter wait.
            #[test]
            fn a_quiet_poll_backs_off_by_the_contract_and_never_sooner_after_more_quiet_polls(
                s in schedule(),
                v in vendor(),
                st in status().prop_filter("non-terminal", |s| !s.is_terminal()),
                q in any::<i32>(),
                more in 0i32..40,
                id in order_id(),
                now in now(),
            ) {
                let quiet = |q: i32| {
                    let held = NextCheck { at: None, quiet_polls: q };
                    s.next_check(v, &id, Event::PollQuiet { status: st }, held, now)
                };
                let (a, b) = (quiet(q), quiet(q.saturating_add(more)));
                prop_assert_eq!(a.quiet_polls, q.saturating_add(1));
                prop_assert!(a.at.unwrap() <= b.at.unwrap(), "{a:?} then {b:?}");
                let base = wait(&s, v, st).max(s.min_recheck).as_secs_f64();
                let n = a.quiet_polls.clamp(1, 16) - 1;
                let interval = (base * 2f64.powi(n)).min(MAX_RECHECK.as_secs_f64());
                let got = secs(a.at.unwrap() - now);
                prop_assert!(
                    got >= interval * 0.8 - 1e-3 && got <= interval * 1.2 + 1e-3,
                    "waited {got}s for an interval of {interval}s"
                );
            }

            /// News (a registration, a callback, a poll that changed
            /// something) resets the quiet count and waits the status's
            /// time exactly (at least `min_recheck` after a poll), at most
            /// 30 days; a confirmation and a quiet poll keep counting.
            #[test]
            fn news_resets_the_quiet_count_and_waits_the_status_time(
                s in schedule(),
                v in vendor(),
                e in event(),
                held in held(),
                id in order_id(),
                now in now(),
            ) {
                let got = s.next_check(v, &id, e, held, now);
                let st = status_of(e);
                match e {
                    Event::Confirm { .. } | Event::Swept { .. } => {
                        prop_assert_eq!(got.quiet_polls, held.quiet_polls)
                    }
                    Event::PollQuiet { .. } => {
                        prop_assert_eq!(got.quiet_polls, held.quiet_polls.saturating_add(1))
                    }
                    _ => {
                        prop_assert_eq!(got.quiet_polls, 0);
                        if !st.is_terminal() {
                            let at_least = match e {
                                Event::PollNews { .. } => s.min_recheck,
                                _ => Duration::ZERO,
                            };
                            let want = wait(&s, v, st).max(at_least).min(MAX_RECHECK);
                            prop_assert_eq!(got.at, Some(now + chrono::Duration::from_std(want).unwrap()));
                        }
                    }
                }
            }

            /// Reading a per-status list never panics; what it accepts has
            /// every key the defaults have, only non-terminal keys, and
            /// reads back the same when written out again.
            #[test]
            fn status_durations_parse_never_panics_and_round_trips_what_it_accepts(
                spec in spec(),
                defaults in prop_oneof![
                    Just(StatusDurations::haoka172_default()),
                    Just(StatusDurations::damaijia_default()),
                    Just(StatusDurations(BTreeMap::new())),
                ],
            ) {
                if let Ok(d) = StatusDurations::parse(&spec, &defaults) {
                    prop_assert!(defaults.0.keys().all(|k| d.0.contains_key(k)));
                    let keys: Vec<&str> = StatusDurations::KEYS.iter().map(|s| s.as_str()).collect();
                    prop_assert!(d.0.keys().all(|k| keys.contains(k)), "{d:?}");
                    let again = StatusDurations::parse(&render(&d), &StatusDurations(BTreeMap::new()));
                    prop_assert_eq!(again, Ok(d));
                }
            }

            /// A well-formed list sets the keys it names (the last one
            /// wins) and keeps the default of every other; a terminal
            /// status as a key is refused.
            #[test]
            fn status_durations_keep_the_default_of_every_key_not_named(
                pairs in proptest::collection::vec(
                    (status(), 0u64..100_000, select(vec![("s", 1u64), ("m", 60), ("h", 3600), ("d", 86400)]), any::<bool>()),
                    0..8,
                ),
                defaults in prop_oneof![
                    Just(StatusDurations::haoka172_default()),
                    Just(StatusDurations::damaijia_default()),
                ],
            ) {
                let spec = pairs
                    .iter()
                    .map(|(k, n, (u, _), pad)| if *pad { format!(" {k} = {n}{u} ") } else { format!("{k}={n}{u}") })
                    .collect::<Vec<_>>()
                    .join(",");
                let got = StatusDurations::parse(&spec, &defaults);
                if pairs.iter().any(|(k, ..)| k.is_terminal()) {
                    prop_assert!(got.is_err(), "{spec}: {got:?}");
                } else {
                    let mut want = defaults.clone();
                    for (k, n, (_, mult), _) in &pairs {
                        want.0.insert(k.as_str(), Duration::from_secs(n * mult));
                    }
                    prop_assert_eq!(got, Ok(want), "{}", spec);
                }
            }

            /// A duration is a bare `0` or a whole number and one unit, and
            /// nothing else: never a panic, never a wrapped count.
            #[test]
            fn parse_duration_never_panics_and_reads_exactly_a_count_and_a_unit(s in duration_text()) {
                let got = parse_duration(&s).ok().map(|d| d.as_secs());
                prop_assert_eq!(got, duration_of(&s), "{:?}", s);
            }
        }
    }
}
