//! When to ask a vendor about an order. Pure: the caller passes `now`.
//!
//! - After news (a callback, a registration, a poll that changed something)
//!   the next check is `now + overdue[status]`: callbacks that arrive on time
//!   keep pushing it out, so a healthy order is never queried. After news
//!   from a poll it is at least one minute, so a pass never re-asks at once.
//! - After a poll that brought nothing new (or failed) the interval grows:
//!   `max(overdue[status], 1 min) × 2^(quiet-1)`, ±20 % jitter, at most
//!   30 days, so a quiet order costs few calls.
//! - Terminal orders have no next check.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};

use super::gaps::GapPolicy;
use crate::config::{Config, StatusDurations};
use crate::status::Status;
use crate::vendors::Vendor;

/// The default shortest re-check after a poll (`POLL_MIN_RECHECK`).
pub const MIN_RECHECK: Duration = Duration::from_secs(60);
/// The longest re-check interval.
pub const MAX_RECHECK: Duration = Duration::from_secs(30 * 86400);

#[derive(Debug, Clone)]
pub struct Schedule {
    pub haoka172: StatusDurations,
    pub damaijia: StatusDurations,
    /// Orders silent for longer than this stop being polled.
    pub horizon: Duration,
    /// The shortest re-check after a poll, whatever `overdue` says.
    pub min_recheck: Duration,
    /// Recovery from a deployment-wide silence of 172 callbacks (`gaps`).
    pub callback_gap: Option<GapPolicy>,
    /// Hold a callback that would make its order terminal until a query
    /// confirms it (`status::needs_confirmation`). Only when the 172 poller
    /// can make that query.
    pub confirm_terminal: bool,
}

impl Schedule {
    pub fn from_config(c: &Config) -> Self {
        Schedule {
            haoka172: c.haoka172.overdue.clone(),
            damaijia: c.damaijia.refresh.clone(),
            horizon: c.tracking_horizon,
            min_recheck: c.poll_min_recheck,
            callback_gap: c.haoka172.callback_gap.clone(),
            confirm_terminal: c.haoka172.confirm_terminal && c.haoka172.can_poll(),
        }
    }

    fn wait(&self, vendor: Vendor, status: Status) -> Option<Duration> {
        if status.is_terminal() {
            return None;
        }
        let table = match vendor {
            Vendor::Haoka172 => &self.haoka172,
            Vendor::Damaijia => &self.damaijia,
        };
        // Every non-terminal status has a default; be safe anyway.
        Some(table.get(status).unwrap_or(Duration::from_secs(3600)))
    }

    /// After news about the order.
    pub fn after_news(
        &self,
        vendor: Vendor,
        status: Status,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.wait(vendor, status).map(|w| now + to_chrono(w))
    }

    /// After a poll that changed something.
    pub fn after_poll_news(
        &self,
        vendor: Vendor,
        status: Status,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.wait(vendor, status)
            .map(|w| now + to_chrono(w.max(self.min_recheck)))
    }

    /// After `quiet` (≥ 1) consecutive polls that brought nothing new.
    /// `jitter` in [-1, 1] spreads re-checks so they do not bunch up.
    pub fn after_quiet(
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
        Some(
            now + to_chrono(Duration::from_secs_f64(
                jittered.max(self.min_recheck.as_secs_f64() * 0.8),
            )),
        )
    }

    /// Orders last heard of before this are past the tracking horizon.
    pub fn horizon_cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - to_chrono(self.horizon)
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn china() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
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

/// A value in [-1, 1] that differs between orders and over time, without a
/// random-number crate.
pub fn jitter(order_id: &str, now: DateTime<Utc>) -> f64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    order_id.hash(&mut h);
    now.timestamp_nanos_opt().unwrap_or_default().hash(&mut h);
    (h.finish() % 20_001) as f64 / 10_000.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            haoka172: StatusDurations::haoka172_default(),
            damaijia: StatusDurations::damaijia_default(),
            horizon: Duration::from_secs(60 * 86400),
            min_recheck: MIN_RECHECK,
            callback_gap: None,
            confirm_terminal: false,
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
        s.haoka172 = StatusDurations::parse("pending=0", &s.haoka172).unwrap();
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
    fn jitter_stays_in_range() {
        for i in 0..1000 {
            let j = jitter(&format!("D{i}"), t0());
            assert!((-1.0..=1.0).contains(&j));
        }
    }
}
