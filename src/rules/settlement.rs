//! When 172号卡 is expected to have settled an order (对账): 172 pays the
//! commission at the end of the month after the card's activation (and
//! first top-up), for cards still in service then. So an order activated in
//! month M (China time) that is neither `settled` nor `settlement_failed`
//! once month M+1 has ended is past its expected settlement: the agent
//! should ask 172 about it. The rule counts from the activation time alone
//! (the time of the first top-up is not reported, only that it happened).
//! Pure: callers pass `now`.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::time::china_midnight;

/// The China midnight that starts the month `months` after the one (China
/// time) `t` falls in; the latest representable time when that is beyond
/// chrono's range.
fn month_start_after(t: DateTime<Utc>, months: i32) -> DateTime<Utc> {
    let day = super::schedule::china_day(t);
    let index = day.year() * 12 + day.month0() as i32 + months;
    let (year, month0) = (index.div_euclid(12), index.rem_euclid(12) as u32);
    NaiveDate::from_ymd_opt(year, month0 + 1, 1)
        .map(china_midnight)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When an order activated at `activated_at` is expected to be settled by:
/// the end of the month after its activation month (China time), i.e. the
/// China midnight that starts month M+2.
pub fn expected_settlement(activated_at: DateTime<Utc>) -> DateTime<Utc> {
    month_start_after(activated_at, 2)
}

/// Whether an order activated at `activated_at`, not settled (nor failed
/// settlement) at `now`, is past its expected settlement.
pub fn past_expected_settlement(activated_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now >= expected_settlement(activated_at)
}

/// The activations that are past their expected settlement at `now` are
/// exactly those before this instant: the China midnight that starts the
/// month before `now`'s (an activation in month M is past once `now` is in
/// M+2 or later). What a query selects the orders with.
pub fn activated_before_is_past_settlement(now: DateTime<Utc>) -> DateTime<Utc> {
    month_start_after(now, -1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::schedule::{china_day, china_time};
    use chrono::TimeZone;

    /// A China-time instant.
    fn cn(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        chrono::FixedOffset::east_opt(8 * 3600)
            .unwrap()
            .with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn an_activation_in_month_m_is_expected_settled_by_the_end_of_m_plus_1() {
        for (activated, want) in [
            (cn(2026, 9, 15, 12, 0, 0), "2026-11-01 00:00:00 +08:00"),
            (cn(2026, 9, 1, 0, 0, 0), "2026-11-01 00:00:00 +08:00"),
            (cn(2026, 9, 30, 23, 59, 59), "2026-11-01 00:00:00 +08:00"),
            // 2026-10-01 00:30 in China is still September in UTC.
            (cn(2026, 10, 1, 0, 30, 0), "2026-12-01 00:00:00 +08:00"),
            (cn(2026, 11, 20, 8, 0, 0), "2027-01-01 00:00:00 +08:00"),
            (cn(2026, 12, 31, 23, 0, 0), "2027-02-01 00:00:00 +08:00"),
        ] {
            assert_eq!(
                china_time(expected_settlement(activated)),
                want,
                "{activated}"
            );
        }
    }

    #[test]
    fn past_it_from_the_first_midnight_of_month_m_plus_2() {
        let activated = cn(2026, 9, 15, 12, 0, 0);
        assert!(!past_expected_settlement(
            activated,
            cn(2026, 10, 31, 23, 59, 59)
        ));
        assert!(past_expected_settlement(
            activated,
            cn(2026, 11, 1, 0, 0, 0)
        ));
        // What the query selects with, on 2026-11-01 and the day before.
        assert_eq!(
            china_time(activated_before_is_past_settlement(cn(
                2026, 11, 1, 0, 0, 0
            ))),
            "2026-10-01 00:00:00 +08:00"
        );
        assert_eq!(
            china_time(activated_before_is_past_settlement(cn(
                2026, 10, 31, 23, 59, 59
            ))),
            "2026-09-01 00:00:00 +08:00"
        );
        assert_eq!(
            china_time(activated_before_is_past_settlement(cn(
                2027, 1, 10, 0, 0, 0
            ))),
            "2026-12-01 00:00:00 +08:00"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// 2000 to 2100, to the second.
        fn instant() -> impl Strategy<Value = DateTime<Utc>> {
            (946_684_800i64..4_102_444_800).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap())
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(3000))]

            /// The expected settlement is the first China midnight of the
            /// second month after the activation's (China time): after the
            /// activation by at least a month (28 days) and at most two
            /// (62 days).
            #[test]
            fn expected_settlement_starts_month_m_plus_2(t in instant()) {
                let e = expected_settlement(t);
                let (m, d) = (china_day(t), china_day(e));
                prop_assert_eq!(china_time(e), format!("{} 00:00:00 +08:00", d.format("%Y-%m-%d")));
                prop_assert_eq!(d.day(), 1);
                prop_assert_eq!((d.year() * 12 + d.month0() as i32) - (m.year() * 12 + m.month0() as i32), 2);
                prop_assert!(e - t > chrono::Duration::days(28), "{} -> {}", t, e);
                prop_assert!(e - t <= chrono::Duration::days(62), "{} -> {}", t, e);
            }

            /// A later activation is never expected earlier; two in the
            /// same China month are expected at the same time.
            #[test]
            fn later_activations_are_never_expected_earlier(a in instant(), b in instant()) {
                let (a, b) = (a.min(b), a.max(b));
                prop_assert!(expected_settlement(a) <= expected_settlement(b));
                let (da, db) = (china_day(a), china_day(b));
                if (da.year(), da.month()) == (db.year(), db.month()) {
                    prop_assert_eq!(expected_settlement(a), expected_settlement(b));
                }
            }

            /// The query's cut-off selects exactly the orders the rule says
            /// are past their expected settlement, whenever it runs.
            #[test]
            fn the_cutoff_selects_exactly_the_orders_past_settlement(t in instant(), now in instant()) {
                prop_assert_eq!(
                    t < activated_before_is_past_settlement(now),
                    past_expected_settlement(t, now),
                    "activated {} at {}", china_time(t), china_time(now)
                );
            }
        }
    }
}
