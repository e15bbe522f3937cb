//! Points in time as operators type them on the command line: RFC 3339, or
//! China time the way every person-facing line prints it (`show`:
//! `2026-12-02 05:30:00 +08:00`), so a time copied from the output can be
//! pasted back. Pure: no clock.

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
