//! Points in time as operators type them on the command line: RFC 3339, or
//! China time the way every person-facing line prints it (`show`:
//! `2026-12-02 05:30:00 +08:00`), so a time copied from the output can be
//! pasted back; and the China-time day `haoka-sync report` covers (its
//! `--day`, its bounds in UTC, yesterday by default). Pure: no clock.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// What every message about a time that does not parse suggests.
const FORMS: &str = "use RFC 3339 (2026-12-02T05:30:00+08:00) or China time (2026-12-02 05:30:00, as `show` prints it; or a day, 2026-12-02)";

/// `2026-12-02T05:30:00+08:00` (RFC 3339, any offset, `Z`, fractions of a
/// second), `2026-12-02 05:30:00 +08:00` (as `show` prints), or without an
/// offset in China time (UTC+8, the vendors' and the operators' clock):
/// `2026-12-02 05:30:00`, `2026-12-02T05:30:00`, `2026-12-02 05:30`, or a
/// day alone, `2026-12-02` (its midnight).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S %:z", "%Y-%m-%d %H:%M:%S%.f %:z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    });
    naive
        .and_then(|n| china().from_local_datetime(&n).single())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("`{s}` is not a time: {FORMS}"))
}

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// What a message about a day that does not parse suggests.
const DAY_FORM: &str = "use YYYY-MM-DD, a China-time day (e.g. 2026-12-01)";

/// A China-time calendar day as `haoka-sync report --day` takes it:
/// exactly `YYYY-MM-DD` (four-digit year, two-digit month and day), a day
/// that exists.
pub fn parse_day(s: &str) -> Result<NaiveDate, String> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
    shaped
        .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| format!("`{s}` is not a day: {DAY_FORM}"))
}

/// The China-time midnight that starts `day`, in UTC (16:00 UTC the day
/// before).
pub fn china_midnight(day: NaiveDate) -> DateTime<Utc> {
    let naive = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    // A fixed offset has exactly one local time for each instant.
    (naive - chrono::Duration::hours(8)).and_utc()
}

/// The instants of the China-time `day`: from its midnight (included) to
/// the next one (excluded).
pub fn china_day_bounds(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = china_midnight(day);
    (start, start + chrono::Duration::days(1))
}

/// The day a report covers: `asked`, or without it the day before today
/// (China time, at `now`). A day after today is refused (today is allowed:
/// its figures are those so far).
pub fn report_day(asked: Option<NaiveDate>, now: DateTime<Utc>) -> Result<NaiveDate, String> {
    let today = now.with_timezone(&china()).date_naive();
    match asked {
        None => Ok(today.pred_opt().unwrap_or(today)),
        Some(day) if day > today => Err(format!(
            "--day {day} is in the future (today is {today}, China time): give today or an earlier day as YYYY-MM-DD, or no --day for yesterday"
        )),
        Some(day) => Ok(day),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::schedule::china_time;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn every_accepted_form_names_the_same_instant() {
        // 2026-12-02 05:30:00 in China is 2026-12-01 21:30:00 UTC.
        let want = utc(2026, 12, 1, 21, 30, 0);
        for s in [
            "2026-12-02T05:30:00+08:00",
            "2026-12-01T21:30:00Z",
            "2026-12-01T21:30:00.000Z",
            "2026-12-01 21:30:00+00:00",
            "2026-12-02 05:30:00 +08:00",
            "2026-12-02 05:30:00",
            "2026-12-02T05:30:00",
            "2026-12-02 05:30",
            "  2026-12-02 05:30:00  ",
        ] {
            assert_eq!(parse_time(s), Ok(want), "{s}");
        }
        assert_eq!(parse_time("2026-12-02"), Ok(utc(2026, 12, 1, 16, 0, 0)));
        assert_eq!(parse_time(&china_time(want)), Ok(want), "show's output");
    }

    #[test]
    fn anything_else_is_refused_with_the_forms_to_use() {
        for s in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-12-02 25:00:00",
            "1733100000",
            "02.12.2026",
        ] {
            let e = parse_time(s).unwrap_err();
            assert!(e.contains("RFC 3339") && e.contains("China time"), "{e}");
        }
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn a_day_is_exactly_yyyy_mm_dd() {
        assert_eq!(parse_day("2026-12-01"), Ok(day(2026, 12, 1)));
        assert_eq!(parse_day("2028-02-29"), Ok(day(2028, 2, 29)));
        for s in [
            "",
            "2026-12-1",
            "2026-1-01",
            "26-12-01",
            "2026/12/01",
            "2026-12-01 ",
            " 2026-12-01",
            "2026-13-01",
            "2026-02-30",
            "2027-02-29",
            "2026-12-01T00:00",
            "+2026-12-01",
            "yesterday",
            "２０２６-12-01",
        ] {
            let e = parse_day(s).unwrap_err();
            assert_eq!(
                e,
                format!("`{s}` is not a day: use YYYY-MM-DD, a China-time day (e.g. 2026-12-01)")
            );
        }
    }

    #[test]
    fn a_china_day_runs_from_16_00_utc_the_day_before() {
        let (start, end) = china_day_bounds(day(2026, 12, 1));
        assert_eq!(start, utc(2026, 11, 30, 16, 0, 0));
        assert_eq!(end, utc(2026, 12, 1, 16, 0, 0));
        assert_eq!(china_time(start), "2026-12-01 00:00:00 +08:00");
        assert_eq!(china_time(end), "2026-12-02 00:00:00 +08:00");
        // New Year and a leap day move the same way.
        assert_eq!(
            china_day_bounds(day(2027, 1, 1)),
            (utc(2026, 12, 31, 16, 0, 0), utc(2027, 1, 1, 16, 0, 0))
        );
        assert_eq!(
            china_day_bounds(day(2028, 2, 29)).1,
            utc(2028, 2, 29, 16, 0, 0)
        );
    }

    #[test]
    fn the_report_day_is_yesterday_in_china_time_and_never_the_future() {
        // 2026-12-02 07:30 in China is still 2026-12-01 in UTC.
        let now = utc(2026, 12, 1, 23, 30, 0);
        assert_eq!(report_day(None, now), Ok(day(2026, 12, 1)));
        let just_before_midnight = utc(2026, 12, 1, 15, 59, 59);
        assert_eq!(
            report_day(None, just_before_midnight),
            Ok(day(2026, 11, 30))
        );
        assert_eq!(
            report_day(Some(day(2026, 12, 2)), now),
            Ok(day(2026, 12, 2))
        );
        assert_eq!(report_day(Some(day(2020, 1, 1)), now), Ok(day(2020, 1, 1)));
        assert_eq!(
            report_day(Some(day(2026, 12, 3)), now),
            Err("--day 2026-12-03 is in the future (today is 2026-12-02, China time): give today or an earlier day as YYYY-MM-DD, or no --day for yesterday".into())
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(2000))]

            /// Any instant, written in any accepted form (RFC 3339 at any
            /// offset, `show`'s form, China time without an offset), reads
            /// back as itself.
            #[test]
            fn every_form_reads_back_as_the_instant_it_names(
                secs in 0i64..253_402_214_400, // 1970 to 9999
                offset_min in -(14 * 60)..=(14 * 60i32),
            ) {
                let t = DateTime::from_timestamp(secs, 0).unwrap();
                let off = FixedOffset::east_opt(offset_min * 60).unwrap();
                let local = t.with_timezone(&off);
                let in_china = t.with_timezone(&china());
                let forms = [
                    local.to_rfc3339(),
                    local.format("%Y-%m-%d %H:%M:%S %:z").to_string(),
                    china_time(t),
                    in_china.format("%Y-%m-%d %H:%M:%S").to_string(),
                    in_china.format("%Y-%m-%dT%H:%M:%S").to_string(),
                ];
                for s in forms {
                    prop_assert_eq!(parse_time(&s), Ok(t), "{}", s);
                }
            }

            /// Every instant lies in the bounds of its own China day, which
            /// start at that day's midnight (China time) and last 24 hours;
            /// the day written as `--day` takes it reads back as itself.
            #[test]
            fn every_instant_lies_in_the_bounds_of_its_china_day(
                secs in 0i64..253_370_764_800, // 1970 to 9998
            ) {
                let t = DateTime::from_timestamp(secs, 0).unwrap();
                let d = crate::rules::schedule::china_day(t);
                let (start, end) = china_day_bounds(d);
                prop_assert!(start <= t && t < end, "{} not in [{}, {})", t, start, end);
                prop_assert_eq!(end - start, chrono::Duration::days(1));
                prop_assert_eq!(china_time(start), format!("{} 00:00:00 +08:00", d.format("%Y-%m-%d")));
                prop_assert_eq!(crate::rules::schedule::china_day(end), d.succ_opt().unwrap());
                prop_assert_eq!(parse_day(&d.format("%Y-%m-%d").to_string()), Ok(d));
                // Yesterday, China time: the day before the one `t` is in.
                prop_assert_eq!(report_day(None, t), Ok(d.pred_opt().unwrap()));
                prop_assert!(report_day(Some(d), t).is_ok());
                prop_assert!(report_day(Some(d.succ_opt().unwrap()), t).is_err());
            }

            /// Whatever is typed as a day, the parser answers, and a day it
            /// accepts is the text it was given.
            #[test]
            fn any_text_is_answered_as_a_day_or_refused(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9-]{0,12}|[ -~]{0,12}") {
                if let Ok(d) = parse_day(&s) {
                    prop_assert_eq!(d.format("%Y-%m-%d").to_string(), s);
                }
            }

            /// Whatever is typed, the parser answers (never panics), and a
            /// time it accepts prints back to a time it accepts the same.
            #[test]
            fn any_text_is_answered_and_accepted_ones_round_trip(s in "[ -~]{0,40}") {
                if let Ok(t) = parse_time(&s) {
                    prop_assert_eq!(parse_time(&china_time(t)), Ok(t.with_nanosecond_zero()));
                }
            }
        }

        trait NanoZero {
            fn with_nanosecond_zero(self) -> Self;
        }
        impl NanoZero for DateTime<Utc> {
            fn with_nanosecond_zero(self) -> Self {
                use chrono::Timelike;
                self.with_nanosecond(0).unwrap_or(self)
            }
        }
    }
}
