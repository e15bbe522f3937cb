//! When the service counts PostgreSQL as up or down, and when it asks
//! again: the state machine behind `db::health`, fed one probe result at a
//! time.
//!
//! - Up → down on a probe that failed (an error: refused, reset, a server
//!   that says it is starting or shutting down), or on
//!   `SILENT_BEFORE_DOWN` probes in a row that brought no answer within
//!   their deadline once nothing has answered for `SILENCE_BEFORE_DOWN`
//!   (a black-holed network, a hung server). A slow answer on a loaded
//!   machine is not an outage, and an answer that comes after its deadline
//!   still counts.
//! - Down → up on the first probe that answered (late or not).
//! - While down a probe runs every `DOWN_INTERVAL`, so the state is up again
//!   within that (plus one round trip) of the database's return; while up,
//!   a liveness probe every `UP_INTERVAL`, and one at once when a caller
//!   suspects an outage (a connection error, a pool timeout, a slow commit),
//!   but never two closer than `MIN_GAP`.
//!
//! Pure: the caller passes `now`; no I/O, no logging.

use std::time::{Duration, Instant};

/// Probe cadence while the database is down.
pub const DOWN_INTERVAL: Duration = Duration::from_millis(250);
/// Liveness probe cadence while it is up (an outage with no traffic is
/// still seen).
pub const UP_INTERVAL: Duration = Duration::from_secs(2);
/// The closest two probes may follow each other, however many callers
/// suspect an outage.
pub const MIN_GAP: Duration = Duration::from_millis(50);
/// How long a probe may take before it counts as no answer.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(500);
/// Unanswered probes in a row that make an up database down…
pub const SILENT_BEFORE_DOWN: u32 = 2;
/// …once nothing has answered for this long.
pub const SILENCE_BEFORE_DOWN: Duration = Duration::from_millis(1500);

/// What one probe brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `SELECT 1` answered.
    Answered,
    /// It failed, with the driver's reason.
    Failed(String),
    /// No answer within `PROBE_DEADLINE`.
    NoAnswer,
}

/// A change of state, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Down { cause: String },
    Up { down_for: Duration },
}

#[derive(Debug, Clone)]
pub struct Tracker {
    up: bool,
    since: Instant,
    cause: Option<String>,
    /// Unanswered probes in a row while up.
    silent: u32,
    /// The latest answer (or the start).
    answered: Instant,
}

impl Tracker {
    /// A process starts counting the database as up: `serve` has just
    /// migrated it, and the first probe runs at once.
    pub fn new(now: Instant) -> Tracker {
        Tracker {
            up: true,
            since: now,
            cause: None,
            silent: 0,
            answered: now,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why it is down (none while up).
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    /// Take one probe result; a change of state is returned once.
    pub fn observe(&mut self, probe: Probe, now: Instant) -> Option<Transition> {
        match (self.up, probe) {
            (true, Probe::Answered) => {
                self.silent = 0;
                self.answered = self.answered.max(now);
                None
            }
            (true, Probe::Failed(cause)) => Some(self.go_down(cause, now)),
            (true, Probe::NoAnswer) => {
                self.silent += 1;
                let silence = now.saturating_duration_since(self.answered);
                (self.silent >= SILENT_BEFORE_DOWN && silence >= SILENCE_BEFORE_DOWN).then(|| {
                    self.go_down(
                        format!(
                            "no answer for {} ms ({} probes in a row without an answer within {} ms)",
                            silence.as_millis(),
                            self.silent,
                            PROBE_DEADLINE.as_millis()
                        ),
                        now,
                    )
                })
            }
            (false, Probe::Answered) => {
                let down_for = now.saturating_duration_since(self.since);
                self.up = true;
                self.since = now;
                self.cause = None;
                self.silent = 0;
                self.answered = now;
                Some(Transition::Up { down_for })
            }
            (false, Probe::Failed(_) | Probe::NoAnswer) => None,
        }
    }

    fn go_down(&mut self, cause: String, now: Instant) -> Transition {
        self.up = false;
        self.since = now;
        self.cause = Some(cause.clone());
        self.silent = 0;
        Transition::Down { cause }
    }

    /// How long to wait before the next probe, `since_last` after the
    /// previous one started; `suspected` when a caller asked for one.
    pub fn next_probe(&self, since_last: Duration, suspected: bool) -> Duration {
        let interval = if !self.up {
            DOWN_INTERVAL
        } else if suspected || self.silent > 0 {
            // A probe without an answer is checked again at once.
            MIN_GAP
        } else {
            UP_INTERVAL
        };
        interval.max(MIN_GAP).saturating_sub(since_last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_down_at_once_and_one_answer_is_up_again_with_how_long() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        assert_eq!(t.observe(Probe::Answered, t0), None);
        let ms = Duration::from_millis;
        assert_eq!(
            t.observe(Probe::Failed("connection refused".into()), t0 + ms(10)),
            Some(Transition::Down {
                cause: "connection refused".into()
            })
        );
        assert!(!t.is_up());
        assert_eq!(t.cause(), Some("connection refused"));
        assert_eq!(t.observe(Probe::NoAnswer, t0 + ms(300)), None);
        assert_eq!(t.observe(Probe::Failed("x".into()), t0 + ms(600)), None);
        assert_eq!(
            t.observe(Probe::Answered, t0 + ms(1010)),
            Some(Transition::Up { down_for: ms(1000) })
        );
        assert_eq!(
            (t.is_up(), t.since(), t.cause()),
            (true, t0 + ms(1010), None)
        );
    }

    #[test]
    fn slow_probes_are_an_outage_only_when_nothing_answered_for_1_5_s() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Tracker::new(t0);
        assert_eq!(t.observe(Probe::NoAnswer, t0 + ms(500)), None);
        assert!(t.is_up());
        assert_eq!(t.observe(Probe::Answered, t0 + ms(700)), None, "late");
        assert_eq!(t.observe(Probe::NoAnswer, t0 + ms(1200)), None);
        assert_eq!(
            t.observe(Probe::NoAnswer, t0 + ms(1700)),
            None,
            "1 s silent"
        );
        let down = t.observe(Probe::NoAnswer, t0 + ms(2200));
        assert!(
            matches!(&down, Some(Transition::Down { cause }) if cause.contains("no answer for 1500 ms (3 probes in a row without an answer within 500 ms)")),
            "{down:?}"
        );
    }

    #[test]
    fn probes_come_every_250_ms_while_down_at_once_when_suspected_and_every_2_s_while_up() {
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        let ms = Duration::from_millis;
        assert_eq!(t.next_probe(ms(0), false), UP_INTERVAL);
        assert_eq!(t.next_probe(ms(500), false), ms(1500));
        assert_eq!(t.next_probe(ms(500), true), ms(0));
        assert_eq!(t.next_probe(ms(10), true), ms(40));
        t.observe(Probe::Failed("x".into()), t0);
        assert_eq!(t.next_probe(ms(0), false), DOWN_INTERVAL);
        assert_eq!(t.next_probe(ms(100), true), ms(150));
        assert_eq!(t.next_probe(ms(400), false), ms(0));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn probe() -> impl Strategy<Value = Probe> {
            prop_oneof![
                3 => Just(Probe::Answered),
                2 => any::<u8>().prop_map(|n| Probe::Failed(format!("cause {n}"))),
                2 => Just(Probe::NoAnswer),
            ]
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(1000))]

            /// Whatever the probes bring: transitions alternate, starting
            /// with a down; each is reported once; the state follows a
            /// simple model (an answer is up, an error is down, N silences
            /// in a row while up are down once nothing answered for
            /// `SILENCE_BEFORE_DOWN`); an up says how long the outage
            /// lasted.
            #[test]
            fn transitions_alternate_and_follow_the_probes(
                steps in proptest::collection::vec((probe(), 0u64..2000), 0..60)
            ) {
                let t0 = Instant::now();
                let mut t = Tracker::new(t0);
                let mut now = t0;
                let (mut up, mut silent, mut answered) = (true, 0u32, t0);
                let mut down_at = None;
                let mut last = None;
                for (p, dt) in steps {
                    now += Duration::from_millis(dt);
                    let want_up = match (&p, up) {
                        (Probe::Answered, _) => true,
                        (Probe::Failed(_), _) => false,
                        (Probe::NoAnswer, false) => false,
                        (Probe::NoAnswer, true) => {
                            silent + 1 < SILENT_BEFORE_DOWN || now - answered < SILENCE_BEFORE_DOWN
                        }
                    };
                    if p == Probe::Answered {
                        answered = now;
                    }
                    silent = match (&p, up && want_up) {
                        (Probe::NoAnswer, true) => silent + 1,
                        _ => 0,
                    };
                    let got = t.observe(p.clone(), now);
                    match (&got, up, want_up) {
                        (None, a, b) => prop_assert_eq!(a, b),
                        (Some(Transition::Down { cause }), true, false) => {
                            if let Probe::Failed(c) = &p {
                                prop_assert_eq!(cause, c);
                            }
                            let after_down = matches!(last, Some(Transition::Down { .. }));
                            prop_assert!(!after_down, "two downs in a row");
                            down_at = Some(now);
                        }
                        (Some(Transition::Up { down_for }), false, true) => {
                            let after_down = matches!(last, Some(Transition::Down { .. }));
                            prop_assert!(after_down, "an up without a down");
                            prop_assert_eq!(Some(*down_for), down_at.map(|d| now - d));
                        }
                        (other, a, b) => prop_assert!(false, "{:?} from up={} to up={}", other, a, b),
                    }
                    if got.is_some() {
                        prop_assert_eq!(t.since(), now);
                        last = got;
                    }
                    up = want_up;
                    prop_assert_eq!(t.is_up(), up);
                    prop_assert_eq!(t.cause().is_none(), up);
                }
            }

            /// Two probes are never closer than `MIN_GAP`; while down the
            /// next one is never more than `DOWN_INTERVAL` away, so the
            /// return of the database is seen within it.
            #[test]
            fn probes_are_spaced_and_frequent_while_down(
                since_last in 0u64..5000, suspected in any::<bool>(), fail in any::<bool>()
            ) {
                let t0 = Instant::now();
                let mut t = Tracker::new(t0);
                if fail {
                    t.observe(Probe::Failed("x".into()), t0);
                }
                let since_last = Duration::from_millis(since_last);
                let wait = t.next_probe(since_last, suspected);
                prop_assert!(since_last + wait >= MIN_GAP);
                if fail {
                    prop_assert!(wait <= DOWN_INTERVAL);
                    prop_assert!(since_last + wait <= DOWN_INTERVAL.max(since_last));
                } else if suspected {
                    prop_assert!(wait <= MIN_GAP);
                } else {
                    prop_assert!(wait <= UP_INTERVAL);
                }
            }
        }
    }
}
