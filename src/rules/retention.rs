//! How long the append-only tables are kept (`RETENTION`), and which of a
//! table's monthly partitions a prune drops whole and which it trims row by
//! row. `orders` (current state) is never pruned.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::duration::{format_duration, parse_duration};

/// What `RETENTION` keeps: `None` keeps everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `inbound_callbacks`, the raw requests.
    pub inbound: Option<Duration>,
    /// `order_events` and the change feed (`order_change_log`).
    pub events: Option<Duration>,
    /// `vendor_calls`.
    pub vendor_calls: Option<Duration>,
}

const DAY: u64 = 86_400;

/// The keys of `RETENTION`, in the order it is written.
pub const KEYS: [&str; 3] = ["inbound", "events", "vendor_calls"];

impl Default for Retention {
    /// `inbound=90d,events=400d,vendor_calls=90d`.
    fn default() -> Self {
        Retention {
            inbound: Some(Duration::from_secs(90 * DAY)),
            events: Some(Duration::from_secs(400 * DAY)),
            vendor_calls: Some(Duration::from_secs(90 * DAY)),
        }
    }
}

impl Retention {
    /// Keep everything.
    pub const OFF: Retention = Retention {
        inbound: None,
        events: None,
        vendor_calls: None,
    };

    /// `off`, or `key=value` pairs separated by commas, each value a
    /// duration of at least a day (`90d`, `36h`) or `off`; keys not given
    /// keep their defaults. Events must be kept at least as long as the raw
    /// inbox: the `RequidId` dedup key lives in `order_events`, so a
    /// callback whose inbox row is still kept must still find it.
    pub fn parse(s: &str) -> Result<Retention, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(Retention::OFF);
        }
        let mut r = Retention::default();
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "`{part}` is not key=value (e.g. inbound=90d,events=400d,vendor_calls=90d, or off)"
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(format!("`{key}` is given twice"));
            }
            let kept = match value {
                "off" => None,
                v => {
                    let d = parse_duration(v)?;
                    if d.as_secs() < DAY {
                        return Err(format!(
                            "{key}={v} is shorter than a day (the least is 1d; off keeps everything)"
                        ));
                    }
                    Some(d)
                }
            };
            match key {
                "inbound" => r.inbound = kept,
                "events" => r.events = kept,
                "vendor_calls" => r.vendor_calls = kept,
                other => {
                    return Err(format!(
                        "`{other}` is not one of {} (orders are never pruned)",
                        KEYS.join(", ")
                    ))
                }
            }
            seen.push(key);
        }
        let shorter = match (r.events, r.inbound) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(e), Some(i)) => e < i,
        };
        if shorter {
            return Err(format!(
                "events={} is shorter than inbound={}: the RequidId dedup keys are in order_events, so events must be kept at least as long as the raw callbacks",
                show(r.events),
                show(r.inbound)
            ));
        }
        Ok(r)
    }

    /// The setting as `parse` reads it back.
    pub fn describe(&self) -> String {
        if *self == Retention::OFF {
            return "off".to_owned();
        }
        format!(
            "inbound={},events={},vendor_calls={}",
            show(self.inbound),
            show(self.events),
            show(self.vendor_calls)
        )
    }

    /// The oldest time each table keeps at `now` (rows before it go).
    pub fn cutoffs(&self, now: DateTime<Utc>) -> Cutoffs {
        let before = |d: Option<Duration>| {
            d.and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| now.checked_sub_signed(d))
        };
        Cutoffs {
            inbound: before(self.inbound),
            events: before(self.events),
            vendor_calls: before(self.vendor_calls),
        }
    }
}

fn show(d: Option<Duration>) -> String {
    d.map_or("off".to_owned(), format_duration)
}

/// Per table, the time before which rows are past retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub inbound: Option<DateTime<Utc>>,
    pub events: Option<DateTime<Utc>>,
    pub vendor_calls: Option<DateTime<Utc>>,
}

/// A partition as the catalog bounds it: rows with `from <= t < to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// What a prune does to one partitioned table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionPlan {
    /// Every row is past retention: detach and drop it.
    pub drop: Vec<String>,
    /// Holds rows on both sides of the cutoff: delete its old rows.
    pub trim: Vec<String>,
}

/// Which partitions go whole (every row before `cutoff`) and which hold
/// rows on both sides of it; the rest are kept untouched.
pub fn plan_partitions(partitions: &[Partition], cutoff: DateTime<Utc>) -> PartitionPlan {
    let mut plan = PartitionPlan::default();
    for p in partitions {
        if p.to <= cutoff {
            plan.drop.push(p.name.clone());
        } else if p.from < cutoff {
            plan.trim.push(p.name.clone());
        }
    }
    plan
}

/// Dropping a partition stalls every committing session for about as long
/// as the DROP takes (the file system frees the files' extents at commit,
/// and the WAL flushes of concurrent commits wait behind it: 127 ms for a
/// 182 MB partition, measured in BENCHMARKS.md, "Retention"). The drop of
/// a partition larger than `DROP_STALL_BYTES` that took longer than
/// `DROP_STALL` is followed by a rest `DROP_PACE` times as long (at most
/// `DROP_REST_MAX`), so such stalls take at most 0.5 % of the time; any
/// other drop (a small partition, whatever a loaded machine makes its
/// catalog work cost) rests `pace` times its time, at most `REST_MAX`.
pub const DROP_PACE: u32 = 200;
pub const DROP_STALL: Duration = Duration::from_millis(20);
pub const DROP_STALL_BYTES: i64 = 16 << 20;
pub const DROP_REST_MAX: Duration = Duration::from_secs(30);
pub const REST_MAX: Duration = Duration::from_secs(5);

/// How long to rest after dropping a partition of `bytes` that took `took`.
pub fn rest_after_drop(took: Duration, bytes: i64, pace: u32) -> Duration {
    if took > DROP_STALL && bytes > DROP_STALL_BYTES {
        (took * DROP_PACE).min(DROP_REST_MAX)
    } else {
        (took * pace).min(REST_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn days(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n * DAY))
    }

    #[test]
    fn defaults_and_off() {
        assert_eq!(
            Retention::parse("inbound=90d").unwrap(),
            Retention::default()
        );
        assert_eq!(Retention::parse("off").unwrap(), Retention::OFF);
        assert_eq!(
            Retention::default().describe(),
            "inbound=90d,events=400d,vendor_calls=90d"
        );
        let r = Retention::parse("vendor_calls=off, inbound=30d").unwrap();
        assert_eq!(r.vendor_calls, None);
        assert_eq!(r.inbound, days(30));
        assert_eq!(r.events, days(400));
        assert_eq!(
            Retention::parse("events=off,inbound=off").unwrap().events,
            None
        );
    }

    #[test]
    fn mistakes_are_named() {
        let e = Retention::parse("orders=30d").unwrap_err();
        assert!(
            e.contains("`orders` is not one of inbound, events, vendor_calls"),
            "{e}"
        );
        let e = Retention::parse("inbound=12h").unwrap_err();
        assert!(e.contains("shorter than a day"), "{e}");
        let e = Retention::parse("inbound=90").unwrap_err();
        assert!(e.contains("no unit"), "{e}");
        let e = Retention::parse("inbound").unwrap_err();
        assert!(e.contains("is not key=value"), "{e}");
        let e = Retention::parse("inbound=9d,inbound=8d").unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        let e = Retention::parse("events=30d").unwrap_err();
        assert!(e.contains("events=30d is shorter than inbound=90d"), "{e}");
        let e = Retention::parse("inbound=off").unwrap_err();
        assert!(e.contains("events=400d is shorter than inbound=off"), "{e}");
    }

    #[test]
    fn cutoffs_are_now_minus_each_retention() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap();
        let c = Retention::parse("inbound=2d,events=3d,vendor_calls=off")
            .unwrap()
            .cutoffs(now);
        assert_eq!(
            c.inbound,
            Some(Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap())
        );
        assert_eq!(
            c.events,
            Some(Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap())
        );
        assert_eq!(c.vendor_calls, None);
    }

    fn month(y: i32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn whole_months_before_the_cutoff_go_and_the_straddling_one_is_trimmed() {
        let parts: Vec<Partition> = (1..=6)
            .map(|m| Partition {
                name: format!("p{m}"),
                from: month(2026, m),
                to: month(2026, m + 1),
            })
            .collect();
        let cut = Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 0).unwrap();
        let plan = plan_partitions(&parts, cut);
        assert_eq!(plan.drop, ["p1", "p2"]);
        assert_eq!(plan.trim, ["p3"]);
        // On a boundary nothing straddles.
        let plan = plan_partitions(&parts, month(2026, 3));
        assert_eq!(plan.drop, ["p1", "p2"]);
        assert!(plan.trim.is_empty());
    }

    #[test]
    fn a_drop_that_stalled_commits_is_followed_by_a_long_rest_and_a_quick_one_by_a_short_one() {
        let ms = Duration::from_millis;
        let big = 182 << 20;
        assert_eq!(rest_after_drop(ms(5), big, 2), ms(10));
        assert_eq!(rest_after_drop(ms(20), big, 2), ms(40));
        assert_eq!(rest_after_drop(ms(127), big, 2), ms(25_400));
        assert_eq!(rest_after_drop(ms(400), big, 2), DROP_REST_MAX);
        // An empty partition on a loaded machine: no long rest.
        assert_eq!(rest_after_drop(ms(127), 8192, 2), ms(254));
    }

    proptest! {
        #[test]
        fn a_long_drop_rests_at_least_its_share_unless_capped(took in 0u64..10_000, bytes in 0i64..1 << 32) {
            let took = Duration::from_millis(took);
            let rest = rest_after_drop(took, bytes, 2);
            if bytes <= DROP_STALL_BYTES {
                prop_assert_eq!(rest, (took * 2).min(REST_MAX));
            } else if took > DROP_STALL && rest < DROP_REST_MAX {
                // The stall is at most 1 / (DROP_PACE + 1) of the time.
                prop_assert!(took * (DROP_PACE + 1) <= took + rest);
            } else {
                prop_assert!(rest <= DROP_REST_MAX.max(DROP_STALL * 2));
            }
        }
    }

    proptest! {
        #[test]
        fn what_it_writes_it_reads_back(
            i in proptest::option::of(1u64..2000),
            extra in 0u64..2000,
            v in proptest::option::of(1u64..2000),
        ) {
            let r = Retention {
                inbound: i.and_then(days),
                events: i.and_then(|i| days(i + extra)),
                vendor_calls: v.and_then(days),
            };
            // events off with inbound off is the one valid "events off".
            let r = if r.inbound.is_none() { Retention { events: None, ..r } } else { r };
            prop_assert_eq!(Retention::parse(&r.describe()).unwrap(), r);
        }

        #[test]
        fn no_row_at_or_after_the_cutoff_is_in_a_dropped_partition(
            bounds in proptest::collection::vec(0i64..100, 1..12),
            cut in 0i64..120,
        ) {
            let mut starts: Vec<i64> = bounds;
            starts.sort_unstable();
            starts.dedup();
            let day = |d: i64| month(2026, 1) + chrono::Duration::days(d);
            let parts: Vec<Partition> = starts
                .windows(2)
                .map(|w| Partition { name: format!("p{}", w[0]), from: day(w[0]), to: day(w[1]) })
                .collect();
            let plan = plan_partitions(&parts, day(cut));
            for p in &parts {
                let dropped = plan.drop.contains(&p.name);
                let trimmed = plan.trim.contains(&p.name);
                prop_assert!(!(dropped && trimmed));
                // Dropped: every row in it is before the cutoff.
                prop_assert_eq!(dropped, p.to <= day(cut));
                // Trimmed: some rows before, some after.
                prop_assert_eq!(trimmed, p.from < day(cut) && day(cut) < p.to);
            }
        }
    }
}
