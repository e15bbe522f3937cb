//! When the settings of a vendor's schedule change (`HAOKA172_OVERDUE`,
//! `DAMAIJIA_REFRESH`, `POLL_MIN_RECHECK`), the orders already scheduled
//! move to where the new settings put them. Pure: what the settings are
//! (`ScheduleSettings`, recorded in the database to notice a change), how
//! a change reads in the log, and an order's next check decided again
//! (`Schedule::rescheduled`) by the one rule, `Schedule::next_check`, for
//! the last thing that happened to the order, as if it had happened under
//! the new settings.
//!
//! Never decides anything `next_check` would not: an order rescheduled with
//! the settings it was scheduled with keeps its next check to the
//! nanosecond, quiet-poll jitter included.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::duration::format_duration;
use super::schedule::{Event, NextCheck, Schedule, StatusDurations, MAX_RECHECK};
use super::status::{Source, Status};
use super::vendor::Vendor;

/// The version of the rules in `Schedule::next_check`: a build that changes
/// how next checks are computed bumps it, and its first start reschedules
/// every order as it would for a changed setting.
pub const RULE_VERSION: u32 = 1;

/// Everything that decides a vendor's next-check times and can differ
/// between two starts: the waits per status, the minimum re-check, and the
/// build's longest wait and rule version. The tracking horizon, the callback
/// gap policy and the confirmation of terminal callbacks are not in it:
/// none of them changes the time of an ordinary next check (the horizon is
/// applied when an order comes due; the others make orders due now, once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSettings {
    /// Seconds per non-terminal status (172: `HAOKA172_OVERDUE`; 大麦家:
    /// `DAMAIJIA_REFRESH`), every status listed.
    pub waits: BTreeMap<String, u64>,
    /// `POLL_MIN_RECHECK`, seconds.
    pub min_recheck: u64,
    /// `MAX_RECHECK`, seconds.
    pub max_recheck: u64,
    pub rule: u32,
}

impl Schedule {
    /// The settings this schedule computes `vendor`'s next checks with.
    pub fn settings(&self, vendor: Vendor) -> ScheduleSettings {
        ScheduleSettings {
            waits: StatusDurations::KEYS
                .iter()
                .filter_map(|s| Some((s.as_str().to_owned(), self.wait(vendor, *s)?.as_secs())))
                .collect(),
            min_recheck: self.min_recheck.as_secs(),
            max_recheck: MAX_RECHECK.as_secs(),
            rule: RULE_VERSION,
        }
    }
}

/// The variable that sets `vendor`'s waits per status.
pub fn waits_variable(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Haoka172 => "HAOKA172_OVERDUE",
        Vendor::Damaijia => "DAMAIJIA_REFRESH",
    }
}

/// Statuses in the order people read them (`new` to `unknown`), not
/// alphabetically.
fn status_order(key: &str) -> usize {
    StatusDurations::KEYS
        .iter()
        .position(|s| s.as_str() == key)
        .unwrap_or(usize::MAX)
}

impl ScheduleSettings {
    /// The settings as the configuration writes them:
    /// `HAOKA172_OVERDUE new=30m,pending=6h,…; POLL_MIN_RECHECK 1m`.
    pub fn describe(&self, vendor: Vendor) -> String {
        let mut waits: Vec<(&String, &u64)> = self.waits.iter().collect();
        waits.sort_by_key(|(k, _)| status_order(k));
        let waits: Vec<String> = waits
            .into_iter()
            .map(|(k, v)| format!("{k}={}", format_duration(Duration::from_secs(*v))))
            .collect();
        format!(
            "{} {}; POLL_MIN_RECHECK {}",
            waits_variable(vendor),
            waits.join(","),
            format_duration(Duration::from_secs(self.min_recheck))
        )
    }

    /// What changed from `before`, each as the operator would write it:
    /// `HAOKA172_OVERDUE shipped 7d → 0`, `POLL_MIN_RECHECK 1m → 30s`.
    /// Empty when nothing did.
    pub fn changes_from(&self, before: &ScheduleSettings, vendor: Vendor) -> Vec<String> {
        let var = waits_variable(vendor);
        let d = |secs: Option<&u64>| match secs {
            Some(s) => format_duration(Duration::from_secs(*s)),
            None => "unset".to_owned(),
        };
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<&String> =
            before.waits.keys().chain(self.waits.keys()).collect();
        let mut keys: Vec<&String> = keys.into_iter().collect();
        keys.sort_by_key(|k| status_order(k));
        for k in keys {
            let (was, now) = (before.waits.get(k), self.waits.get(k));
            if was != now {
                out.push(format!("{var} {k} {} → {}", d(was), d(now)));
            }
        }
        if before.min_recheck != self.min_recheck {
            out.push(format!(
                "POLL_MIN_RECHECK {} → {}",
                d(Some(&before.min_recheck)),
                d(Some(&self.min_recheck))
            ));
        }
        if before.max_recheck != self.max_recheck {
            out.push(format!(
                "the longest wait {} → {}",
                d(Some(&before.max_recheck)),
                d(Some(&self.max_recheck))
            ));
        }
        if before.rule != self.rule {
            out.push(format!(
                "the schedule rule version {} → {}",
                before.rule, self.rule
            ));
        }
        out
    }
}

/// What the store keeps of a tracked order that its schedule was decided
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub status: Status,
    /// Consecutive quiet polls (`order_polls.quiet_polls`).
    pub quiet_polls: i32,
    /// The latest observation, applied or not (`orders.last_heard_at`,
    /// `last_source`).
    pub last_heard: Option<(DateTime<Utc>, Source)>,
    /// When tracking started or restarted (`order_polls.tracked_at`).
    pub tracked_at: DateTime<Utc>,
    /// When the latest query was recorded, answered or failed
    /// (`order_polls.last_polled_at`; unknown for polls recorded before it
    /// was kept).
    pub last_polled_at: Option<DateTime<Utc>>,
}

impl Heard {
    /// The last thing that decided the order's schedule, and when:
    ///
    /// - after quiet polls, the latest of them (when it is not known, the
    ///   latest thing known of the order), with the quiet count before it;
    /// - else the latest observation: a poll's news or a callback's;
    /// - else its registration (or re-registration: news from ops, waiting
    ///   the time of the status it has).
    pub fn last_event(&self) -> (Event, NextCheck, DateTime<Utc>) {
        let status = self.status;
        let heard_at = self.last_heard.map(|(t, _)| t);
        if self.quiet_polls > 0 {
            let at = self
                .last_polled_at
                .or(heard_at.map(|h| h.max(self.tracked_at)))
                .unwrap_or(self.tracked_at);
            let held = NextCheck {
                at: None,
                quiet_polls: self.quiet_polls - 1,
            };
            return (Event::PollQuiet { status }, held, at);
        }
        let none = NextCheck::default();
        match self.last_heard {
            Some((at, source)) if at >= self.tracked_at => match source {
                Source::Poll => (Event::PollNews { status }, none, at),
                Source::Callback | Source::Manual => (Event::News { status }, none, at),
            },
            _ if status == Status::New => (Event::Registered, none, self.tracked_at),
            _ => (Event::News { status }, none, self.tracked_at),
        }
    }
}

impl Schedule {
    /// The order's next check under these settings: `next_check` for its
    /// last event (`Heard::last_event`), at the time it happened. The quiet
    /// count is kept (the backoff goes on from the new base), and
    /// `min_recheck` applies exactly where it would have: after a poll.
    /// A time before now means the order is due now.
    pub fn rescheduled(&self, vendor: Vendor, order_id: &str, heard: &Heard) -> NextCheck {
        let (event, held, at) = heard.last_event();
        self.next_check(vendor, order_id, event, held, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::schedule::MIN_RECHECK;
    use chrono::TimeZone;

    fn schedule(overdue: &str) -> Schedule {
        Schedule {
            waits: [
                (
                    Vendor::Haoka172,
                    StatusDurations::parse(overdue, &StatusDurations::haoka172_default()).unwrap(),
                ),
                (Vendor::Damaijia, StatusDurations::damaijia_default()),
            ]
            .into(),
            horizon: Duration::from_secs(60 * 86400),
            min_recheck: MIN_RECHECK,
            callback_gap: None,
            confirm_terminal: false,
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn settings_list_every_status_and_say_what_changed() {
        let old = schedule("").settings(Vendor::Haoka172);
        assert_eq!(old.waits.len(), 6);
        assert_eq!(old.waits["shipped"], 7 * 86400);
        assert_eq!(old.min_recheck, 60);
        let mut s = schedule("shipped=0,pending=2h");
        s.min_recheck = Duration::from_secs(30);
        let new = s.settings(Vendor::Haoka172);
        assert_eq!(
            new.changes_from(&old, Vendor::Haoka172),
            [
                "HAOKA172_OVERDUE pending 6h → 2h",
                "HAOKA172_OVERDUE shipped 7d → 0",
                "POLL_MIN_RECHECK 1m → 30s"
            ]
        );
        assert!(old.changes_from(&old, Vendor::Haoka172).is_empty());
        assert_eq!(
            old.describe(Vendor::Haoka172),
            "HAOKA172_OVERDUE new=30m,pending=6h,submitted=2d,shipped=7d,completed=15d,unknown=1h; POLL_MIN_RECHECK 1m"
        );
        let d = s.settings(Vendor::Damaijia);
        let e = schedule("").settings(Vendor::Damaijia);
        assert_eq!(
            d.changes_from(&e, Vendor::Damaijia),
            ["POLL_MIN_RECHECK 1m → 30s"]
        );
    }

    #[test]
    fn a_shipped_order_heard_of_days_ago_is_due_at_once_when_shipped_waits_zero() {
        let heard = Heard {
            status: Status::Shipped,
            quiet_polls: 0,
            last_heard: Some((t0(), Source::Callback)),
            tracked_at: t0() - chrono::Duration::days(3),
            last_polled_at: None,
        };
        let old = schedule("");
        assert_eq!(
            old.rescheduled(Vendor::Haoka172, "A", &heard).at,
            Some(t0() + chrono::Duration::days(7))
        );
        let new = schedule("shipped=0s");
        assert_eq!(
            new.rescheduled(Vendor::Haoka172, "A", &heard).at,
            Some(t0())
        );
    }

    #[test]
    fn quiet_polls_keep_counting_from_the_last_poll() {
        let polled = t0() + chrono::Duration::hours(6);
        let heard = Heard {
            status: Status::Pending,
            quiet_polls: 2,
            last_heard: Some((t0(), Source::Callback)),
            tracked_at: t0(),
            last_polled_at: Some(polled),
        };
        let got = schedule("pending=1h").rescheduled(Vendor::Haoka172, "A", &heard);
        assert_eq!(got.quiet_polls, 2);
        let after = got.at.unwrap() - polled;
        // 1 h × 2^(2−1), ±20 %.
        assert!(
            after >= chrono::Duration::minutes(96) && after <= chrono::Duration::minutes(144),
            "{after}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        fn duration() -> impl Strategy<Value = Duration> {
            prop_oneof![
                3 => (0u64..=60 * 86400).prop_map(Duration::from_secs),
                1 => Just(Duration::ZERO),
                1 => (0u64..=u64::MAX / 4).prop_map(Duration::from_secs),
            ]
        }

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

        fn schedule() -> impl Strategy<Value = Schedule> {
            (waits(), waits(), prop_oneof![Just(MIN_RECHECK), duration()]).prop_map(
                |(h, d, min_recheck)| Schedule {
                    waits: [(Vendor::Haoka172, h), (Vendor::Damaijia, d)].into(),
                    min_recheck,
                    ..super::schedule("")
                },
            )
        }

        fn time() -> impl Strategy<Value = DateTime<Utc>> {
            (946_684_800i64..7_258_118_400, 0u32..1_000_000_000)
                .prop_map(|(s, n)| Utc.timestamp_opt(s, n).unwrap())
        }

        fn status() -> impl Strategy<Value = Status> {
            select(Status::ALL.to_vec())
        }

        /// What last happened to an order, at `now`, and what the store
        /// keeps of it afterwards (as `store` writes it: an observation
        /// sets `last_heard_at` to its time, a recorded query sets
        /// `last_polled_at`, a registration `tracked_at`).
        #[derive(Debug, Clone, Copy)]
        enum Last {
            Registered,
            Callback(Status),
            PollNews(Status),
            /// `answered`: the query brought an observation (nothing new).
            PollQuiet {
                status: Status,
                answered: bool,
            },
        }

        fn last() -> impl Strategy<Value = Last> {
            prop_oneof![
                Just(Last::Registered),
                status().prop_map(Last::Callback),
                status().prop_map(Last::PollNews),
                (status(), any::<bool>())
                    .prop_map(|(status, answered)| Last::PollQuiet { status, answered }),
            ]
        }

        /// The event `next_check` was called with, and the order as stored
        /// after it. `earlier` are times not after `now` for what happened
        /// before (tracking, an older observation).
        fn happened(
            last: Last,
            held_quiet: i32,
            now: DateTime<Utc>,
            earlier: (DateTime<Utc>, DateTime<Utc>, Option<Source>),
        ) -> (Event, NextCheck, Heard) {
            let (tracked, heard_before, source_before) = earlier;
            let tracked = tracked.min(now);
            let heard_before = source_before.map(|s| (heard_before.clamp(tracked, now), s));
            let quiet = NextCheck {
                at: None,
                quiet_polls: held_quiet,
            };
            match last {
                Last::Registered => (
                    Event::Registered,
                    NextCheck::default(),
                    Heard {
                        status: Status::New,
                        quiet_polls: 0,
                        last_heard: None,
                        tracked_at: now,
                        last_polled_at: None,
                    },
                ),
                Last::Callback(status) => (
                    Event::News { status },
                    NextCheck::default(),
                    Heard {
                        status,
                        quiet_polls: 0,
                        last_heard: Some((now, Source::Callback)),
                        tracked_at: tracked,
                        last_polled_at: None,
                    },
                ),
                Last::PollNews(status) => (
                    Event::PollNews { status },
                    quiet,
                    Heard {
                        status,
                        quiet_polls: 0,
                        last_heard: Some((now, Source::Poll)),
                        tracked_at: tracked,
                        last_polled_at: Some(now),
                    },
                ),
                Last::PollQuiet { status, answered } => (
                    Event::PollQuiet { status },
                    quiet,
                    Heard {
                        status,
                        quiet_polls: held_quiet + 1,
                        last_heard: if answered {
                            Some((now, Source::Poll))
                        } else {
                            heard_before
                        },
                        tracked_at: tracked,
                        last_polled_at: Some(now),
                    },
                ),
            }
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(3000))]

            /// Whatever the settings an order was scheduled with, and
            /// whatever last happened to it: rescheduled under settings
            /// `b`, it gets exactly what `next_check` under `b` would have
            /// decided for that event at that time, quiet count included.
            /// With `b` the settings it was scheduled with, nothing moves.
            #[test]
            fn a_rescheduled_order_gets_what_next_check_decides_for_its_last_event(
                a in schedule(),
                b in schedule(),
                same in any::<bool>(),
                vendor in select(Vendor::ALL.to_vec()),
                id in "[A-Z0-9]{1,12}",
                last in last(),
                held_quiet in 0i32..40,
                now in time(),
                earlier in (time(), time(), proptest::option::of(select(vec![Source::Callback, Source::Poll, Source::Manual]))),
            ) {
                let b = if same { a.clone() } else { b };
                let (event, held, heard) = happened(last, held_quiet, now, earlier);
                let scheduled = a.next_check(vendor, &id, event, held, now);
                let want = b.next_check(vendor, &id, event, held, now);
                let got = b.rescheduled(vendor, &id, &heard);
                prop_assert_eq!(got, want, "{:?} {:?}", event, heard);
                prop_assert_eq!(got.quiet_polls, scheduled.quiet_polls, "the quiet count is kept");
                if same {
                    prop_assert_eq!(got, scheduled, "unchanged settings move nothing");
                }
                if heard.status.is_terminal() {
                    prop_assert_eq!(got.at, None);
                }
            }

            /// Settings are equal exactly when they say no change, and they
            /// survive the trip through the database (JSON).
            #[test]
            fn settings_differ_exactly_when_a_change_is_named(
                a in schedule(),
                b in schedule(),
                vendor in select(Vendor::ALL.to_vec()),
            ) {
                let (sa, sb) = (a.settings(vendor), b.settings(vendor));
                let changes = sb.changes_from(&sa, vendor);
                prop_assert_eq!(changes.is_empty(), sa == sb, "{:?}", changes);
                prop_assert_eq!(sa.changes_from(&sa, vendor), Vec::<String>::new());
                let json = serde_json::to_value(&sa).unwrap();
                let back: ScheduleSettings = serde_json::from_value(json).unwrap();
                prop_assert_eq!(back, sa);
            }
        }
    }
}
