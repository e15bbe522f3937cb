//! Forwarding rules: when a failed delivery is tried again (exponential
//! backoff with jitter, honouring `Retry-After`, for `retry_for` in all),
//! when a target counts as failing and how gently it is probed then, and
//! the Standard Webhooks signature.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A `Retry-After` longer than this is taken as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// How deliveries are retried (`FORWARD_*`, docs/contract.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first retry waits this long; each later one twice the one before.
    pub first_retry: Duration,
    /// No wait between two attempts is longer than this.
    pub max_retry: Duration,
    /// Retries stop this long after the change (or a redeliver).
    pub retry_for: Duration,
    /// A target failing for this long is marked failing.
    pub failing_after: Duration,
    /// A failing target gets one delivery at a time, at most this often.
    pub probe_every: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            first_retry: Duration::from_secs(5),
            max_retry: Duration::from_secs(3600),
            retry_for: Duration::from_secs(3 * 86400),
            failing_after: Duration::from_secs(3600),
            probe_every: Duration::from_secs(300),
        }
    }
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx within the timeout.
    Delivered,
    /// Anything else; `retry_after` when the answer said when to come back.
    Failed { retry_after: Option<Duration> },
}

/// What to do with a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt(DateTime<Utc>),
    /// Past its retry time: kept as `exhausted`.
    Exhausted,
}

/// After the `attempts`-th failed attempt (1 for the first) of a delivery
/// retried since `retry_from`: the wait doubles from `first_retry` up to
/// `max_retry`, spread by `jitter` (0 to 1: the wait is 50 % to 100 % of the
/// nominal one, so retries of many deliveries do not arrive together), never
/// sooner than a `Retry-After`; once `retry_for` has passed, the delivery is
/// exhausted.
pub fn after_failure(
    p: &Policy,
    attempts: u32,
    retry_from: DateTime<Utc>,
    now: DateTime<Utc>,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Next {
    let nominal = p
        .first_retry
        .checked_mul(1u32 << attempts.saturating_sub(1).min(20))
        .unwrap_or(p.max_retry)
        .min(p.max_retry);
    let spread = nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    let wait = match retry_after {
        Some(r) => spread.max(r.min(MAX_RETRY_AFTER)),
        None => spread,
    };
    let deadline =
        retry_from + chrono::Duration::from_std(p.retry_for).unwrap_or(chrono::Duration::MAX);
    let at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    if now >= deadline {
        return Next::Exhausted;
    }
    // The last attempt happens at the deadline, not after it.
    Next::RetryAt(at.min(deadline))
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    (at - now).to_std().ok().or(Some(Duration::ZERO))
}

/// Whether a target whose failures began at `failing_since` is failing now.
pub fn is_failing(p: &Policy, failing_since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    failing_since.is_some_and(|s| (now - s).to_std().is_ok_and(|d| d >= p.failing_after))
}

/// Whether forwarding gives way to callbacks, from the callback writers
/// over a window of `wall`: they spent `busy` of it (summed over `writers`)
/// committing batches, at least `yield_at` percent of what they could, and
/// callbacks spent `waited` queued for one of them, on average at least one
/// callback at any time. Busy writers alone are not enough (a writer waits
/// on every commit's flush to disk, so two writers are most of the time busy
/// long before they are the bottleneck); callbacks queueing behind them are
/// what says they cannot keep up. `yield_at` 0 never gives way. Forwarding
/// is asynchronous and retried for days; a callback the vendor does not see
/// acknowledged in time is sent again or lost.
pub fn callbacks_first(
    busy: Duration,
    waited: Duration,
    wall: Duration,
    writers: usize,
    yield_at: u8,
) -> bool {
    if yield_at == 0 || wall.is_zero() {
        return false;
    }
    let capacity = wall.as_secs_f64() * writers.max(1) as f64;
    busy.as_secs_f64() * 100.0 >= capacity * f64::from(yield_at.min(100)) && waited >= wall
}

/// The signing key of a Standard Webhooks secret: the bytes of the base64
/// after an optional `whsec_` prefix.
pub fn key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the secret is not whsec_<base64> ({e})"))
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The `webhook-signature` header: one signature per key, space-separated
/// (the current secret first; during a rotation's grace also the old one).
pub fn signatures(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| signature(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A new secret from 24 random bytes: `whsec_<base64>`.
pub fn new_secret(random: [u8; 24]) -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(random)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap()
    }

    const P: Policy = Policy {
        first_retry: Duration::from_secs(5),
        max_retry: Duration::from_secs(3600),
        retry_for: Duration::from_secs(3 * 86400),
        failing_after: Duration::from_secs(3600),
        probe_every: Duration::from_secs(300),
    };

    #[test]
    fn the_standard_webhooks_example_signature() {
        // The example of the Standard Webhooks specification's reference
        // libraries (msg_p5jXN8AQM9LWM0D4loKWxJek, 1614265330).
        let key = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn waits_double_from_five_seconds_up_to_an_hour() {
        let wait = |n| match after_failure(&P, n, t0(), t0(), None, 1.0) {
            Next::RetryAt(at) => (at - t0()).num_seconds(),
            Next::Exhausted => -1,
        };
        assert_eq!(
            (1..=12).map(wait).collect::<Vec<_>>(),
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        // Jitter 0 halves it.
        assert_eq!(
            after_failure(&P, 3, t0(), t0(), None, 0.0),
            Next::RetryAt(t0() + chrono::Duration::seconds(10))
        );
    }

    #[test]
    fn retry_after_is_honoured_and_the_deadline_exhausts() {
        assert_eq!(
            after_failure(&P, 1, t0(), t0(), Some(Duration::from_secs(120)), 1.0),
            Next::RetryAt(t0() + chrono::Duration::seconds(120))
        );
        let late = t0() + chrono::Duration::days(3);
        assert_eq!(
            after_failure(&P, 40, t0(), late, None, 1.0),
            Next::Exhausted
        );
        // The last retry is at the deadline.
        let near = late - chrono::Duration::seconds(10);
        assert_eq!(
            after_failure(&P, 40, t0(), near, None, 1.0),
            Next::RetryAt(late)
        );
        assert_eq!(retry_after("30", t0()), Some(Duration::from_secs(30)));
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 00:01:00 GMT", t0()),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after("soon", t0()), None);
    }

    #[test]
    fn failing_after_an_hour_of_failures() {
        assert!(!is_failing(&P, None, t0()));
        assert!(!is_failing(
            &P,
            Some(t0() - chrono::Duration::minutes(59)),
            t0()
        ));
        assert!(is_failing(
            &P,
            Some(t0() - chrono::Duration::minutes(60)),
            t0()
        ));
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_named() {
        let s = new_secret([7; 24]);
        assert!(s.starts_with("whsec_"));
        assert_eq!(key(&s).unwrap(), vec![7; 24]);
        assert!(key("whsec_***").unwrap_err().contains("not whsec_<base64>"));
    }

    #[test]
    fn callbacks_come_first_once_the_writers_are_busy_and_callbacks_queue() {
        let ms = Duration::from_millis;
        // Two writers, 1 s: 1.6 s busy is 80 %; 1 s waited is one callback
        // queued on average.
        assert!(callbacks_first(ms(1600), ms(1000), ms(1000), 2, 80));
        assert!(!callbacks_first(ms(1500), ms(3000), ms(1000), 2, 80));
        assert!(
            !callbacks_first(ms(2000), ms(900), ms(1000), 2, 80),
            "busy, but nothing queues"
        );
        assert!(
            !callbacks_first(ms(2000), ms(5000), ms(1000), 2, 0),
            "0 never gives way"
        );
        assert!(!callbacks_first(ms(5), ms(5), Duration::ZERO, 2, 80));
    }

    proptest! {
        #[test]
        fn giving_way_grows_with_the_writers_load(
            busy in 0u64..10_000, more in 0u64..10_000, waited in 0u64..10_000, wall in 1u64..5_000,
            writers in 1usize..8, yield_at in 0u8..=100,
        ) {
            let ms = Duration::from_millis;
            let less = callbacks_first(ms(busy), ms(waited), ms(wall), writers, yield_at);
            let busier = callbacks_first(ms(busy + more), ms(waited), ms(wall), writers, yield_at);
            let longer = callbacks_first(ms(busy), ms(waited + more), ms(wall), writers, yield_at);
            prop_assert!(!less || (busier && longer), "more load never makes forwarding go faster");
            if yield_at == 0 { prop_assert!(!busier && !longer); }
            // Idle writers, or nothing queued, never hold forwarding back.
            prop_assert!(!callbacks_first(Duration::ZERO, ms(waited), ms(wall), writers, yield_at));
            prop_assert!(!callbacks_first(ms(busy), Duration::ZERO, ms(wall), writers, yield_at));
        }

        #[test]
        fn a_retry_is_never_before_now_nor_after_the_deadline(
            attempts in 1u32..60,
            age in 0i64..400_000,
            after in proptest::option::of(0u64..100_000),
            jitter in 0.0f64..=1.0,
        ) {
            let now = t0() + chrono::Duration::seconds(age);
            match after_failure(&P, attempts, t0(), now, after.map(Duration::from_secs), jitter) {
                Next::RetryAt(at) => {
                    prop_assert!(at >= now);
                    prop_assert!(at <= t0() + chrono::Duration::days(3));
                    prop_assert!((at - now).num_seconds() <= MAX_RETRY_AFTER.as_secs() as i64);
                }
                Next::Exhausted => prop_assert!(now >= t0() + chrono::Duration::days(3)),
            }
        }

        #[test]
        fn waits_never_shrink_as_attempts_grow(attempts in 1u32..40, jitter in 0.0f64..=1.0) {
            let wait = |n| match after_failure(&P, n, t0(), t0(), None, jitter) {
                Next::RetryAt(at) => at - t0(),
                Next::Exhausted => chrono::Duration::MAX,
            };
            prop_assert!(wait(attempts + 1) >= wait(attempts));
        }
    }
}
