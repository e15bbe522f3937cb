//! Durations as operators write them in the configuration.

use std::time::Duration;

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

/// `d` as the configuration writes it, in the largest unit that divides
/// it exactly: `7d`, `36h`, `90m`, `45s`, `0`. `parse_duration` reads it
/// back (whole seconds).
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0".to_owned();
    }
    let (n, unit) = [(86400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(u, _)| secs % u == 0)
        .map_or((secs, "s"), |(u, name)| (secs / u, name));
    format!("{n}{unit}")
}

/// A length of time for a person, in its two largest units: `2d 3h`,
/// `5h 2m`, `40m 10s`, `12s`.
pub fn human_duration(secs: u64) -> String {
    let units = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let Some(first) = units.iter().position(|(u, _)| secs >= *u) else {
        return "0s".to_owned();
    };
    let (u, name) = units[first];
    let mut out = format!("{}{name}", secs / u);
    if let Some((v, next)) = units.get(first + 1) {
        let rest = secs % u / v;
        if rest > 0 {
            out.push_str(&format!(" {rest}{next}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_show_the_two_largest_units() {
        for (secs, want) in [
            (0, "0s"),
            (12, "12s"),
            (60, "1m"),
            (2410, "40m 10s"),
            (3600 * 5 + 120 + 7, "5h 2m"),
            (86400 * 2 + 3 * 3600 + 59, "2d 3h"),
            (86400 * 9, "9d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(3000))]

            /// What the configuration is told about a setting reads back as
            /// the same duration, in the largest unit that divides it.
            #[test]
            fn format_duration_reads_back_as_the_same_whole_seconds(secs in prop_oneof![
                any::<u64>(),
                0u64..1_000_000,
                (0u64..10_000).prop_map(|n| n * 86400),
                (0u64..10_000).prop_map(|n| n * 3600),
            ]) {
                let text = format_duration(Duration::from_secs(secs));
                prop_assert_eq!(parse_duration(&text), Ok(Duration::from_secs(secs)), "{}", text);
                let unit = text.trim_start_matches(|c: char| c.is_ascii_digit());
                let bigger: &[u64] = match unit {
                    "s" => &[60, 3600, 86400],
                    "m" => &[3600, 86400],
                    "h" => &[86400],
                    _ => &[],
                };
                prop_assert!(bigger.iter().all(|u| secs % u != 0), "{} is not in its largest unit", text);
            }

            /// Never more than two units, never a zero unit, and never more
            /// than the length itself: what is left out is less than the
            /// smaller unit shown.
            #[test]
            fn human_durations_round_down_to_their_two_largest_units(secs in any::<u64>()) {
                let text = human_duration(secs);
                let mut shown = 0u64;
                let parts: Vec<&str> = text.split(' ').collect();
                prop_assert!(parts.len() <= 2, "{}", text);
                let mut smallest = u64::MAX;
                for p in &parts {
                    let d = parse_duration(p).map_err(TestCaseError::fail)?.as_secs();
                    prop_assert!(d > 0 || secs == 0, "{}", text);
                    shown += d;
                    let unit = match p.chars().last() { Some('d') => 86400, Some('h') => 3600, Some('m') => 60, _ => 1 };
                    smallest = smallest.min(unit);
                }
                prop_assert!(shown <= secs && secs - shown < smallest.max(1), "{} for {}", text, secs);
            }
        }
    }
}
