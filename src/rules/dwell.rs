//! How long orders stay in a status before the next one, estimated from
//! stays that ended and stays still going on. A stay still going on is
//! right-censored: the order stayed at least that long, and may stay much
//! longer, so it is neither dropped nor counted as ended (either would make
//! statuses look shorter than they are). The Kaplan–Meier estimate: at each
//! time `t` at which `d` stays ended among the `n` still going on just
//! before it, the share still in the status is multiplied by `(n − d) / n`.
//!
//! Pure: the store hands over the stays (grouped by time), this computes
//! the quantiles and the share that outlived a given time.

/// Stays that lasted `secs`: how many ended then, and how many were still
/// going on when last looked at (at risk until then, included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stays {
    pub secs: u64,
    pub finished: u64,
    pub open: u64,
}

/// The estimate for one vendor and status.
#[derive(Debug, Clone, PartialEq)]
pub struct Dwell {
    pub finished: u64,
    pub open: u64,
    /// Seconds; `None` while too many stays are still going on to tell
    /// (the estimate never falls that far).
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    /// The estimated share of stays longer than the given time (0 to 1);
    /// `None` without stays, or when every stay seen ended or was cut off
    /// before it and some were still going on.
    pub outlived: Option<f64>,
}

/// Room for rounding in the running product: with no stay still going on,
/// the estimate after `k` of `n` stays is exactly `1 − k/n`, and a quantile
/// must not miss it by a rounding error.
const EPS: f64 = 1e-9;

/// The estimated share still in the status just after each time at which
/// some stay ended, times increasing. Empty without ended stays.
pub fn survival(stays: &[Stays]) -> Vec<(u64, f64)> {
    let mut by_time: Vec<Stays> = stays
        .iter()
        .copied()
        .filter(|s| s.finished + s.open > 0)
        .collect();
    by_time.sort_by_key(|s| s.secs);
    let mut at_risk: u64 = by_time.iter().map(|s| s.finished + s.open).sum();
    let mut share = 1.0;
    let mut curve = Vec::new();
    let mut i = 0;
    while i < by_time.len() {
        let secs = by_time[i].secs;
        let (mut ended, mut cut) = (0, 0);
        while i < by_time.len() && by_time[i].secs == secs {
            ended += by_time[i].finished;
            cut += by_time[i].open;
            i += 1;
        }
        // Ended stays before the ones cut off at the same time: those were
        // still at risk when the others ended.
        if ended > 0 {
            share *= (at_risk - ended) as f64 / at_risk as f64;
            curve.push((secs, share));
        }
        at_risk -= ended + cut;
    }
    curve
}

/// The smallest time by which a share `q` (0 to 1) of the stays have
/// ended, by the estimate; `None` when it never falls that far.
pub fn quantile(curve: &[(u64, f64)], q: f64) -> Option<u64> {
    curve
        .iter()
        .find(|(_, share)| *share <= 1.0 - q + EPS)
        .map(|(secs, _)| *secs)
}

/// The estimate for `stays`, and the share that outlived `overdue` seconds.
pub fn estimate(stays: &[Stays], overdue: Option<u64>) -> Dwell {
    let curve = survival(stays);
    let finished = stays.iter().map(|s| s.finished).sum();
    let open = stays.iter().map(|s| s.open).sum();
    let longest = stays
        .iter()
        .filter(|s| s.finished + s.open > 0)
        .map(|s| s.secs)
        .max();
    let outlived = overdue.zip(longest).and_then(|(t, longest)| {
        let share = curve
            .iter()
            .take_while(|(secs, _)| *secs <= t)
            .last()
            .map_or(1.0, |(_, s)| *s);
        // Past the longest stay seen, the estimate only knows it is not
        // above what it was; it is the share only when it reached zero or
        // nothing was still going on.
        (t < longest || share <= EPS || open == 0).then_some(share)
    });
    Dwell {
        finished,
        open,
        p50: quantile(&curve, 0.5),
        p90: quantile(&curve, 0.9),
        p99: quantile(&curve, 0.99),
        outlived,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stay(secs: u64, finished: bool) -> Stays {
        Stays {
            secs,
            finished: finished as u64,
            open: (!finished) as u64,
        }
    }

    #[test]
    fn without_open_stays_the_quantiles_are_the_plain_ones() {
        let stays: Vec<Stays> = (1..=10).map(|h| stay(h * 3600, true)).collect();
        let d = estimate(&stays, Some(6 * 3600));
        assert_eq!(
            (d.p50, d.p90, d.p99),
            (Some(5 * 3600), Some(9 * 3600), Some(10 * 3600))
        );
        assert_eq!(d.outlived, Some(0.4));
    }

    #[test]
    fn open_stays_are_censored_not_dropped_nor_counted_as_ended() {
        // Four ended after 1 h, 2 h, 3 h and 4 h; six still going on after
        // 5 h. Dropping the open ones gives a median of 2 h, counting them
        // as ended 5 h; they stayed at least 5 h, so more than half stay
        // longer than 4 h and the median is not known yet.
        let mut stays: Vec<Stays> = (1..=4).map(|h| stay(h * 3600, true)).collect();
        stays.push(Stays {
            secs: 5 * 3600,
            finished: 0,
            open: 6,
        });
        let d = estimate(&stays, Some(2 * 3600));
        assert_eq!(d.p50, None);
        assert_eq!((d.finished, d.open), (4, 6));
        assert!((d.outlived.unwrap() - 0.8).abs() < 1e-12);
        // Stays cut off early leave the later ones to tell: after 1 h half
        // of what is left ends at 2 h.
        let stays = [
            stay(3600, true),
            stay(1800, false),
            stay(1800, false),
            stay(7200, true),
        ];
        let curve = survival(&stays);
        assert_eq!(curve.len(), 2);
        assert!((curve[0].1 - 0.5).abs() < 1e-12, "{curve:?}");
        assert_eq!(quantile(&curve, 0.5), Some(3600));
        assert_eq!(estimate(&stays, Some(3 * 3600)).outlived, Some(0.0));
    }

    #[test]
    fn nothing_to_estimate_from_says_so() {
        let d = estimate(&[], Some(60));
        assert_eq!(
            d,
            Dwell {
                finished: 0,
                open: 0,
                p50: None,
                p90: None,
                p99: None,
                outlived: None
            }
        );
        let open_only = [stay(600, false)];
        assert_eq!(estimate(&open_only, Some(60)).outlived, Some(1.0));
        assert_eq!(estimate(&open_only, Some(6000)).outlived, None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One stay per entry: (seconds, ended).
        fn stays() -> impl Strategy<Value = Vec<(u64, bool)>> {
            proptest::collection::vec(
                (
                    prop_oneof![0u64..20, 0u64..1000, 0u64..10_000_000],
                    prop_oneof![3 => Just(true), 1 => Just(false)],
                ),
                0..60,
            )
        }

        fn grouped(stays: &[(u64, bool)]) -> Vec<Stays> {
            // Unsorted, and the same time in several entries.
            stays
                .iter()
                .map(|(s, f)| Stays {
                    secs: *s,
                    finished: *f as u64,
                    open: !*f as u64,
                })
                .collect()
        }

        /// The estimate by its definition, one stay at a time: at every
        /// time some stay ended, the ones that ended then over all that
        /// lasted at least that long.
        fn share_after(stays: &[(u64, bool)], t: u64) -> f64 {
            let mut times: Vec<u64> = stays
                .iter()
                .filter(|(s, f)| *f && *s <= t)
                .map(|(s, _)| *s)
                .collect();
            times.sort_unstable();
            times.dedup();
            times
                .iter()
                .map(|ti| {
                    let n = stays.iter().filter(|(s, _)| s >= ti).count() as f64;
                    let d = stays.iter().filter(|(s, f)| *f && s == ti).count() as f64;
                    1.0 - d / n
                })
                .product()
        }

        fn quantile_by_definition(stays: &[(u64, bool)], q: f64) -> Option<u64> {
            let mut times: Vec<u64> = stays.iter().filter(|(_, f)| *f).map(|(s, _)| *s).collect();
            times.sort_unstable();
            times
                .into_iter()
                .find(|t| share_after(stays, *t) <= 1.0 - q + 1e-9)
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(3000))]

            /// The quantiles and the share that outlived a time are the
            /// Kaplan–Meier estimate's, worked out from its definition.
            #[test]
            fn the_estimate_matches_kaplan_meier_by_its_definition(
                stays in stays(),
                overdue in prop_oneof![0u64..1000, 0u64..10_000_000],
            ) {
                let d = estimate(&grouped(&stays), Some(overdue));
                prop_assert_eq!(d.p50, quantile_by_definition(&stays, 0.5));
                prop_assert_eq!(d.p90, quantile_by_definition(&stays, 0.9));
                prop_assert_eq!(d.p99, quantile_by_definition(&stays, 0.99));
                prop_assert_eq!(d.finished as usize, stays.iter().filter(|(_, f)| *f).count());
                prop_assert_eq!(d.open as usize, stays.iter().filter(|(_, f)| !*f).count());
                if let Some(share) = d.outlived {
                    prop_assert!((share - share_after(&stays, overdue)).abs() < 1e-9, "{} vs {}", share, share_after(&stays, overdue));
                    prop_assert!((0.0..=1.0).contains(&share));
                } else {
                    let longest = stays.iter().map(|(s, _)| *s).max();
                    prop_assert!(longest.is_none_or(|l| l <= overdue), "known below the longest stay");
                }
                if let (Some(a), Some(b), Some(c)) = (d.p50, d.p90, d.p99) {
                    prop_assert!(a <= b && b <= c);
                }
            }

            /// With every stay ended, the quantiles are the plain ones (the
            /// ⌈q·n⌉-th shortest stay, as PostgreSQL's percentile_disc), and
            /// the share that outlived a time is the plain share.
            #[test]
            fn without_open_stays_the_estimate_is_the_plain_distribution(
                secs in proptest::collection::vec(prop_oneof![0u64..50, 0u64..10_000_000], 1..80),
                overdue in 0u64..10_000_000,
            ) {
                let stays: Vec<(u64, bool)> = secs.iter().map(|s| (*s, true)).collect();
                let d = estimate(&grouped(&stays), Some(overdue));
                let mut sorted = secs.clone();
                sorted.sort_unstable();
                // The ⌈p·n/100⌉-th, in whole numbers.
                let plain = |p: usize| sorted[(p * sorted.len()).div_ceil(100).max(1) - 1];
                prop_assert_eq!(d.p50, Some(plain(50)));
                prop_assert_eq!(d.p90, Some(plain(90)));
                prop_assert_eq!(d.p99, Some(plain(99)));
                let longer = secs.iter().filter(|s| **s > overdue).count() as f64 / secs.len() as f64;
                prop_assert!((d.outlived.unwrap() - longer).abs() < 1e-9);
            }
        }
    }
}
