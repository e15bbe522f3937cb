//! Callback gaps: when the whole deployment stops hearing a vendor's
//! callbacks (our outage, the vendor's, a broken secret, a lost callback
//! registration), every order may have missed news, and waiting for each
//! order's own overdue time (days for a shipped order) repairs them slowly.
//! Pure: the store gathers the facts, these rules decide.
//!
//! - A silence is a **gap** when it lasts (or lasted: a restart after our
//!   own downtime finds it between two callbacks) at least `silence` and the
//!   same clock hours brought at least `expected` callbacks on an average day
//!   of the past week (so a quiet night, or a small deployment, is not a gap).
//! - While a gap is open, once every `resweep`, every tracked order not heard
//!   from since is made due (the poller then queries it within every budget).
//! - When callbacks come back, after `settle` (the vendor redelivers failed
//!   pushes first), every tracked order not heard from since the resumption
//!   is made due once, and the gap closes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::duration::parse_duration;

/// `HAOKA172_CALLBACK_GAP`; `None` when set to `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapPolicy {
    /// The shortest silence that can be a gap.
    pub silence: Duration,
    /// Callbacks the same hours must usually bring for the silence to count.
    pub expected: u32,
    /// Wait after callbacks resume before the recovery sweep.
    pub settle: Duration,
    /// Sweep again this often while the silence lasts.
    pub resweep: Duration,
}

impl Default for GapPolicy {
    fn default() -> Self {
        GapPolicy {
            silence: Duration::from_secs(3600),
            expected: 20,
            settle: Duration::from_secs(15 * 60),
            resweep: Duration::from_secs(86400),
        }
    }
}

/// Days of history the expectation averages over.
pub const HISTORY_DAYS: u32 = 7;
impl GapPolicy {
    pub const DEFAULT_SPEC: &'static str = "silence=1h,expected=20,settle=15m,resweep=1d";

    /// `off`, or `key=value,...` over the defaults (keys `silence`,
    /// `expected`, `settle`, `resweep`).
    pub fn parse(spec: &str) -> Result<Option<GapPolicy>, String> {
        let spec = spec.trim();
        if spec.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let mut p = GapPolicy::default();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not key=value"))?;
            let v = v.trim();
            match k.trim() {
                "silence" => p.silence = parse_duration(v)?,
                "expected" => {
                    p.expected = v
                        .parse()
                        .map_err(|_| format!("expected=`{v}` is not a whole number"))?
                }
                "settle" => p.settle = parse_duration(v)?,
                "resweep" => p.resweep = parse_duration(v)?,
                other => {
                    return Err(format!(
                        "`{other}` is not one of silence, expected, settle, resweep (or say off)"
                    ))
                }
            }
        }
        if p.silence < Duration::from_secs(60) {
            return Err("silence must be at least 1m".into());
        }
        if p.expected == 0 {
            return Err("expected must be at least 1".into());
        }
        if p.resweep < Duration::from_secs(3600) {
            return Err("resweep must be at least 1h".into());
        }
        Ok(Some(p))
    }

    /// Callbacks to count over the history before the silence is surely a
    /// gap; counting stops there, so the look-up stays cheap.
    pub fn count_cap(&self) -> i64 {
        i64::from(self.expected) * i64::from(HISTORY_DAYS) * 10
    }

    /// Worth asking how many callbacks these hours usually bring?
    pub fn long_enough(&self, last_heard: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        (now - last_heard).to_std().is_ok_and(|d| d >= self.silence)
    }

    /// `history` callbacks were heard over the past `HISTORY_DAYS` days in
    /// the same clock hours as the silence: is it a gap?
    pub fn is_gap(&self, history: i64) -> bool {
        history >= i64::from(self.expected) * i64::from(HISTORY_DAYS)
    }
}

/// Callbacks an average day of the history brought in the silent hours.
pub fn expected_per_day(history: i64) -> i64 {
    history / i64::from(HISTORY_DAYS)
}

/// A gap that still needs recovery (`closed_at` is null), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenGap {
    pub id: i64,
    pub silent_since: DateTime<Utc>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub detected_at: DateTime<Utc>,
    pub swept_at: Option<DateTime<Utc>>,
    /// A sweep of it in progress (possibly by a process that died) since.
    pub sweep_started_at: Option<DateTime<Utc>>,
}

/// A sweep in progress for longer than this was left by a process that
/// died; another takes it over.
pub const SWEEP_LEASE: Duration = Duration::from_secs(600);

/// What to do with an open gap at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapStep {
    /// Nothing yet (silent, swept recently; or resumed and redeliveries may
    /// still be arriving).
    Wait,
    /// Still silent for another `resweep`: make the orders not heard from
    /// since `since` due again.
    Resweep { since: DateTime<Utc> },
    /// Resumed and settled: make the orders not heard from since the
    /// resumption due, then close.
    Recover { since: DateTime<Utc> },
}

impl OpenGap {
    pub fn step(&self, policy: &GapPolicy, now: DateTime<Utc>) -> GapStep {
        if self
            .sweep_started_at
            .is_some_and(|started| elapsed(started, now) < SWEEP_LEASE)
        {
            return GapStep::Wait;
        }
        match self.resumed_at {
            // A resumption the clock has not reached yet (a clock step
            // backwards) has not settled, even with `settle=0`.
            Some(resumed) if resumed <= now && elapsed(resumed, now) >= policy.settle => {
                GapStep::Recover { since: resumed }
            }
            Some(_) => GapStep::Wait,
            None if elapsed(self.swept_at.unwrap_or(self.detected_at), now) >= policy.resweep => {
                GapStep::Resweep {
                    since: now - chrono::Duration::from_std(policy.resweep).unwrap_or_default(),
                }
            }
            None => GapStep::Wait,
        }
    }
}

fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64, m: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap()
            + chrono::Duration::hours(h)
            + chrono::Duration::minutes(m)
    }

    #[test]
    fn parses_the_default_off_and_partial_specs() {
        assert_eq!(
            GapPolicy::parse(GapPolicy::DEFAULT_SPEC).unwrap(),
            Some(GapPolicy::default())
        );
        assert_eq!(GapPolicy::parse(" OFF ").unwrap(), None);
        let p = GapPolicy::parse("silence=30m, expected=5")
            .unwrap()
            .unwrap();
        assert_eq!(p.silence, Duration::from_secs(1800));
        assert_eq!(p.expected, 5);
        assert_eq!(p.settle, GapPolicy::default().settle);
        assert_eq!(p.resweep, GapPolicy::default().resweep);
        assert_eq!(GapPolicy::parse("").unwrap(), Some(GapPolicy::default()));
    }

    #[test]
    fn refuses_bad_specs_with_the_reason() {
        for (spec, why) in [
            ("silence", "key=value"),
            ("quiet=1h", "not one of"),
            ("expected=lots", "whole number"),
            ("expected=0", "at least 1"),
            ("silence=10s", "at least 1m"),
            ("resweep=30m", "at least 1h"),
            ("settle=5", "no unit"),
        ] {
            let e = GapPolicy::parse(spec).unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn a_silence_is_a_gap_only_when_long_and_unusual() {
        let p = GapPolicy::default();
        assert!(!p.long_enough(t(10, 0), t(10, 59)));
        assert!(p.long_enough(t(10, 0), t(11, 0)));
        // A clock step backwards is no silence.
        assert!(!p.long_enough(t(11, 0), t(10, 0)));
        // 20 a day on average over 7 days: 140 in the history.
        assert!(!p.is_gap(139));
        assert!(p.is_gap(140));
        assert_eq!(expected_per_day(140), 20);
        assert!(p.count_cap() >= 140);
    }

    #[test]
    fn an_open_gap_resweeps_daily_then_settles_then_recovers() {
        let p = GapPolicy::default();
        let mut g = OpenGap {
            id: 1,
            silent_since: t(0, 0),
            resumed_at: None,
            detected_at: t(1, 0),
            swept_at: None,
            sweep_started_at: None,
        };
        assert_eq!(g.step(&p, t(2, 0)), GapStep::Wait);
        // A day after detection, and a day after each sweep: sweep the
        // orders not heard from during that day.
        assert_eq!(g.step(&p, t(25, 0)), GapStep::Resweep { since: t(1, 0) });
        g.swept_at = Some(t(25, 0));
        assert_eq!(g.step(&p, t(48, 59)), GapStep::Wait);
        assert_eq!(g.step(&p, t(49, 0)), GapStep::Resweep { since: t(25, 0) });
        g.resumed_at = Some(t(30, 0));
        assert_eq!(g.step(&p, t(30, 14)), GapStep::Wait);
        assert_eq!(g.step(&p, t(30, 15)), GapStep::Recover { since: t(30, 0) });
        // A clock step backwards waits.
        g.resumed_at = Some(t(40, 0));
        assert_eq!(g.step(&p, t(39, 0)), GapStep::Wait);
    }

    #[test]
    fn with_no_settle_time_a_resumption_still_ahead_of_the_clock_waits() {
        let p = GapPolicy::parse("settle=0").unwrap().unwrap();
        let g = OpenGap {
            id: 1,
            silent_since: t(0, 0),
            resumed_at: Some(t(2, 0)),
            detected_at: t(1, 0),
            swept_at: None,
            sweep_started_at: None,
        };
        assert_eq!(g.step(&p, t(1, 59)), GapStep::Wait);
        assert_eq!(g.step(&p, t(2, 0)), GapStep::Recover { since: t(2, 0) });
    }

    #[test]
    fn a_sweep_in_progress_is_left_alone_until_its_lease_runs_out() {
        let p = GapPolicy::default();
        let g = OpenGap {
            id: 1,
            silent_since: t(0, 0),
            resumed_at: Some(t(2, 0)),
            detected_at: t(1, 0),
            swept_at: None,
            sweep_started_at: Some(t(3, 0)),
        };
        assert_eq!(g.step(&p, t(3, 9)), GapStep::Wait);
        assert_eq!(g.step(&p, t(3, 10)), GapStep::Recover { since: t(2, 0) });
        // Still silent, its daily resweep begun at 25:00 by a process that died.
        let silent = OpenGap {
            resumed_at: None,
            sweep_started_at: Some(t(25, 0)),
            ..g
        };
        assert_eq!(silent.step(&p, t(25, 5)), GapStep::Wait);
        assert_eq!(
            silent.step(&p, t(25, 10)),
            GapStep::Resweep { since: t(1, 10) }
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        const MINUTE: u64 = 60;
        const HOUR: u64 = 3600;
        const DAY: u64 = 86400;

        /// Any policy `parse` can return, often with the defaults' values.
        fn policy() -> impl Strategy<Value = GapPolicy> {
            let secs = |lo: u64, hi: u64| {
                prop_oneof![
                    Just(lo),
                    lo..=hi,
                    Just(hi),
                    Just(15 * MINUTE),
                    Just(HOUR),
                    Just(DAY)
                ]
                .prop_map(move |s| Duration::from_secs(s.clamp(lo, hi)))
            };
            (
                secs(MINUTE, 2 * DAY),
                prop_oneof![1u32..=50, any::<u32>().prop_map(|e| e.max(1))],
                secs(0, 2 * DAY),
                secs(HOUR, 3 * DAY),
            )
                .prop_map(|(silence, expected, settle, resweep)| GapPolicy {
                    silence,
                    expected,
                    settle,
                    resweep,
                })
        }

        /// How far a time lies from `now`: anywhere within days, or just
        /// around the distances the rules compare with (the lease, the
        /// default settle, an hour, a day).
        fn offset() -> impl Strategy<Value = chrono::Duration> {
            let near = select(vec![0i64, 600, 900, 3600, 86400]);
            prop_oneof![
                (-3 * 86400i64..=3 * 86400).prop_map(chrono::Duration::seconds),
                (near, -2i64..=2, any::<bool>()).prop_map(|(d, e, neg)| {
                    chrono::Duration::seconds(if neg { -d } else { d } + e)
                }),
            ]
        }

        fn now() -> impl Strategy<Value = DateTime<Utc>> {
            (-86400i64..=86400).prop_map(|s| t(0, 0) + chrono::Duration::seconds(s))
        }

        /// A gap and the time it is looked at, its times near that time.
        fn gap_at() -> impl Strategy<Value = (OpenGap, DateTime<Utc>)> {
            (
                now(),
                offset(),
                proptest::option::of(offset()),
                offset(),
                proptest::option::of(offset()),
                proptest::option::of(offset()),
            )
                .prop_map(|(now, silent, resumed, detected, swept, started)| {
                    let at = |d: chrono::Duration| now - d;
                    let g = OpenGap {
                        id: 1,
                        silent_since: at(silent),
                        resumed_at: resumed.map(at),
                        detected_at: at(detected),
                        swept_at: swept.map(at),
                        sweep_started_at: started.map(at),
                    };
                    (g, now)
                })
        }

        fn dur(d: Duration) -> chrono::Duration {
            chrono::Duration::from_std(d).unwrap()
        }

        /// The module's rules, on the clock as it reads (a time after `now`
        /// has not happened yet): a sweep begun less than `SWEEP_LEASE`
        /// ago is left alone; once callbacks resumed, recover when `settle`
        /// has passed since, else wait; while silent, resweep once
        /// `resweep` has passed since the last sweep (or the detection).
        fn expected_step(g: &OpenGap, p: &GapPolicy, now: DateTime<Utc>) -> GapStep {
            if g.sweep_started_at
                .is_some_and(|s| now < s + dur(SWEEP_LEASE))
            {
                return GapStep::Wait;
            }
            match g.resumed_at {
                Some(r) if now >= r + dur(p.settle) => GapStep::Recover { since: r },
                Some(_) => GapStep::Wait,
                None if now >= g.swept_at.unwrap_or(g.detected_at) + dur(p.resweep) => {
                    GapStep::Resweep {
                        since: now - dur(p.resweep),
                    }
                }
                None => GapStep::Wait,
            }
        }

        fn duration_text() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u64..200, select(vec!["s", "m", "h", "d", "", "x"]))
                    .prop_map(|(n, u)| format!("{n}{u}")),
                any::<u64>().prop_map(|n| format!("{n}d")),
                Just("0".to_owned()),
                "[ -~]{0,5}",
            ]
        }

        fn spec() -> impl Strategy<Value = String> {
            let key = select(vec![
                "silence", "expected", "settle", "resweep", "", " settle ", "Silence", "off",
            ]);
            let piece = prop_oneof![
                (key.clone(), duration_text()).prop_map(|(k, v)| format!("{k}={v}")),
                key.prop_map(str::to_owned),
                "[ -~]{0,8}",
            ];
            prop_oneof![
                any::<String>(),
                select(vec!["off", " OFF ", "Off", "of", "off,"]).prop_map(str::to_owned),
                proptest::collection::vec(piece, 0..6).prop_map(|p| p.join(",")),
            ]
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(5000))]

            /// Any text: no panic; `off` in any case is no policy; an
            /// accepted policy keeps the documented bounds.
            #[test]
            fn gap_policy_parse_never_panics_and_keeps_its_bounds(spec in spec()) {
                let got = GapPolicy::parse(&spec);
                let off = spec.trim().eq_ignore_ascii_case("off");
                prop_assert_eq!(got == Ok(None), off, "{:?}: {:?}", spec, got);
                match got {
                    Ok(None) => {}
                    Ok(Some(p)) => {
                        prop_assert!(p.silence >= Duration::from_secs(MINUTE));
                        prop_assert!(p.expected >= 1);
                        prop_assert!(p.resweep >= Duration::from_secs(HOUR));
                    }
                    Err(_) => {}
                }
            }

            /// A well-formed spec sets the keys it names (the last one wins)
            /// and keeps the default of every other.
            #[test]
            fn gap_policy_parse_keeps_the_default_of_every_key_not_named(
                pairs in proptest::collection::vec(
                    (0usize..4, 1u64..200, select(vec![("m", MINUTE), ("h", HOUR), ("d", DAY)]), any::<bool>()),
                    0..6,
                ),
            ) {
                let keys = ["silence", "expected", "settle", "resweep"];
                let spec = pairs
                    .iter()
                    .map(|(k, n, (u, _), pad)| {
                        let v = if *k == 1 { n.to_string() } else { format!("{n}{u}") };
                        if *pad { format!(" {} = {v} ", keys[*k]) } else { format!("{}={v}", keys[*k]) }
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let mut want = GapPolicy::default();
                for (k, n, (_, unit), _) in &pairs {
                    let d = Duration::from_secs(n * unit);
                    match k {
                        0 => want.silence = d,
                        1 => want.expected = *n as u32,
                        2 => want.settle = d,
                        _ => want.resweep = d,
                    }
                }
                let got = GapPolicy::parse(&spec);
                if want.resweep < Duration::from_secs(HOUR) {
                    prop_assert!(got.is_err(), "{spec}: {got:?}");
                } else {
                    prop_assert_eq!(got, Ok(Some(want)), "{}", spec);
                }
            }

            /// Never a sweep before its time: no recovery before `settle`
            /// has passed after the resumption (a resumption the clock has
            /// not reached yet included), no resweep before `resweep` has
            /// passed, nothing while another sweep holds its lease; and
            /// each step comes as soon as it is due.
            #[test]
            fn a_gap_is_never_swept_before_its_time_and_always_once_it_is_due(
                (g, now) in gap_at(),
                p in policy(),
            ) {
                let got = g.step(&p, now);
                match got {
                    GapStep::Recover { since } => {
                        prop_assert_eq!(Some(since), g.resumed_at);
                        prop_assert!(now >= since + dur(p.settle), "recovered at {now}, resumed {since}");
                    }
                    GapStep::Resweep { since } => {
                        prop_assert_eq!(g.resumed_at, None);
                        prop_assert_eq!(since, now - dur(p.resweep));
                    }
                    GapStep::Wait => {}
                }
                prop_assert_eq!(got, expected_step(&g, &p, now));
            }

            /// A silence is a gap exactly when an average day of the
            /// history brought the expected callbacks in those hours;
            /// counting up to `count_cap` is enough to tell; a silence is
            /// long enough exactly when `silence` has passed (a clock step
            /// backwards is none).
            #[test]
            fn a_silence_is_a_gap_exactly_when_the_average_day_brought_the_expected_callbacks(
                p in policy(),
                history in prop_oneof![0i64..10_000, any::<i64>()],
                since in offset(),
                now in now(),
            ) {
                let threshold = i64::from(p.expected) * i64::from(HISTORY_DAYS);
                for h in [history, threshold - 1, threshold, p.count_cap()] {
                    prop_assert_eq!(p.is_gap(h), expected_per_day(h) >= i64::from(p.expected), "{}", h);
                }
                prop_assert!(p.is_gap(threshold) && !p.is_gap(threshold - 1));
                prop_assert!(p.count_cap() >= threshold);
                let last = now - since;
                prop_assert_eq!(p.long_enough(last, now), now >= last + dur(p.silence));
                let exactly = now - dur(p.silence);
                prop_assert!(p.long_enough(exactly, now));
                prop_assert!(!p.long_enough(exactly + chrono::Duration::seconds(1), now));
            }
        }
    }
}
