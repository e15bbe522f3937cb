//! Typed configuration, built once from the environment (and `.env`).
//!
//! Every variable (docs/contract.md#configuration):
//! - `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/haoka_sync`)
//! - `HAOKA_SYNC_BIND` (default `127.0.0.1:8080`)
//! - `HAOKA172_USER_ID`, `HAOKA172_SECRET`, `HAOKA172_SECRET_PREVIOUS` (rotation)
//! - `HAOKA172_BASE_URL`, `HAOKA172_OVERDUE`, `HAOKA172_MAX_CALLS_PER_MINUTE`,
//!   `HAOKA172_MAX_CALLS_PER_ORDER_PER_DAY`
//! - `DAMAIJIA_TOKEN`, `DAMAIJIA_OWNER_ID`, `DAMAIJIA_BASE_URL`,
//!   `DAMAIJIA_APP_ID`, `DAMAIJIA_APP_SECRET`, `DAMAIJIA_REFRESH`,
//!   `DAMAIJIA_BATCH_SIZE`, `DAMAIJIA_EDITION`, `DAMAIJIA_COOLOFF` (default
//!   30m), `DAMAIJIA_TIMEOUT_SECS` (default 15)
//! - `HAOKA172_COOLOFF` (default 10m), `HAOKA172_TIMEOUT_SECS` (default 10),
//!   `HAOKA172_CALLBACK_GAP` (default `silence=1h,expected=20,settle=15m,resweep=1d`),
//!   `HAOKA172_CONFIRM_TERMINAL` (default on)
//! - `TRACKING_HORIZON` (default 60d), `POLL_MIN_RECHECK` (default 1m),
//!   `POLL_LEASE` (default 5m)
//! - `POLL_CRON`, `ADMIN_TOKEN`
//! - `LOG_FORMAT` (default `text`; read by every command: `LogFormat`)
//! - `CALLBACK_MAX_BODY_BYTES` (default 65536), `DB_POOL_SIZE` (default 16),
//!   `DB_TIMEOUT_SECS` (default 3), `DB_WAIT_SECS` (default 60), `INGEST_WRITERS` (default 2),
//!   `INGEST_MAX_BATCH` (default 256)
//! - `CALLBACK_ALLOWED_SOURCES` (comma-separated CIDRs or bare IPs; unset =
//!   any source), `TRUSTED_PROXY_HEADER` (unset = judge the TCP peer),
//!   `TRUSTED_PROXIES` (default `127.0.0.0/8,::1/128`)
//! - `METRICS_REFRESH` (default 5s)
//! - `RETENTION` (default `inbound=90d,events=400d,vendor_calls=90d`; `off`)
//! - `FORWARD_TIMEOUT` (10s), `FORWARD_CONCURRENCY` (16), `FORWARD_RETRY_FOR` (3d),
//!   `FORWARD_FIRST_RETRY` (5s), `FORWARD_MAX_RETRY` (1h), `FORWARD_FAILING_AFTER` (1h),
//!   `FORWARD_PROBE_EVERY` (5m), `FORWARD_SECRET_GRACE` (1d), `FORWARD_YIELD_AT` (80:
//!   percent of the callback writers' time busy from which forwarding gives way; 0 never)
//!
//! Secrets never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use crate::db::DatabaseUrl;
use crate::rules::gaps::GapPolicy;
use crate::rules::retention::Retention;
use crate::rules::schedule::{parse_duration, Schedule, StatusDurations};
use crate::rules::Vendor;
pub use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Haoka172Config {
    pub user_id: Option<String>,
    pub secret: Option<Secret>,
    /// Accepted for callback signatures only, during a secret rotation.
    pub previous_secret: Option<Secret>,
    pub base_url: url::Url,
    pub overdue: StatusDurations,
    pub max_calls_per_minute: u32,
    pub max_calls_per_order_per_day: u32,
    /// How long 172 polling pauses after the vendor blocks us or keeps failing.
    pub cooloff: Duration,
    /// Connect + read timeout of one GetOrderInfo call.
    pub timeout: Duration,
    /// When a deployment-wide silence of callbacks triggers a recovery
    /// sweep; `None` when off.
    pub callback_gap: Option<GapPolicy>,
    /// Hold callbacks that would make an order terminal until GetOrderInfo
    /// confirms them (`HAOKA172_CONFIRM_TERMINAL`, on by default).
    pub confirm_terminal: bool,
}

impl Haoka172Config {
    /// The 172 poller (GetOrderInfo) has what it needs.
    pub fn can_poll(&self) -> bool {
        self.user_id.is_some() && self.secret.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct DamaijiaConfig {
    pub token: Option<Secret>,
    pub owner_id: Option<String>,
    pub base_url: url::Url,
    pub app_id: Option<String>,
    pub app_secret: Option<Secret>,
    pub refresh: StatusDurations,
    pub batch_size: u32,
    pub edition: Option<String>,
    /// How long 大麦家 polling pauses after an error that needs a fix or
    /// repeated failures.
    pub cooloff: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub bind: SocketAddr,
    pub haoka172: Haoka172Config,
    pub damaijia: DamaijiaConfig,
    pub poll_cron: String,
    /// Orders silent longer than this stop being polled (listed for ops).
    pub tracking_horizon: Duration,
    /// The shortest re-check interval after a poll.
    pub poll_min_recheck: Duration,
    /// How long a claimed order stays leased to the process that claimed
    /// it; a crashed process's orders are claimed again after it.
    pub poll_lease: Duration,
    pub admin_token: Option<Secret>,
    pub callback_max_body_bytes: usize,
    pub db_pool_size: u32,
    pub db_timeout: Duration,
    /// How long `serve` waits at start for PostgreSQL to answer.
    pub db_wait: Duration,
    pub ingest_writers: usize,
    pub ingest_max_batch: usize,
    /// Addresses callbacks are accepted from; `None` accepts any.
    pub callback_allowed_sources: Option<Vec<ipnet::IpNet>>,
    /// The header a reverse proxy sets with the client address; `None`
    /// judges the TCP peer.
    pub trusted_proxy_header: Option<String>,
    /// Peers whose `trusted_proxy_header` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often the database gauges of `GET /metrics` are read again.
    pub metrics_refresh: Duration,
    /// `RETENTION`: how long the append-only tables keep their rows.
    pub retention: Retention,
    /// `FORWARD_*`: how status changes are forwarded to the targets.
    pub forward: ForwardConfig,
}

/// One bad variable: the message is the one line the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {msg}")]
pub struct ConfigError {
    pub var: &'static str,
    pub msg: String,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/haoka_sync";

/// Loopback: a reverse proxy on the same host.
pub const DEFAULT_TRUSTED_PROXIES: &str = "127.0.0.0/8,::1/128";

/// What a command that only talks to the database needs (`migrate`,
/// `show`): parsed without the poller's and the server's variables, so a
/// mistake there does not stop them.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    /// How long a request waits for a pooled connection (`DB_TIMEOUT_SECS`).
    pub timeout: Duration,
}

impl DatabaseConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// `DATABASE_URL` and `DB_TIMEOUT_SECS` only.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        database(&Vars(&get))
    }
}

/// What `track` needs: the database and the "when to ask" rules, without
/// the server's, the callbacks' or the vendor clients' variables.
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    pub database: DatabaseConfig,
    pub schedule: Schedule,
}

impl TrackingConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars(&get);
        let database = database(&v)?;
        let rules = ScheduleVars::parse(&v)?;
        let can_poll_172 =
            v.var("HAOKA172_USER_ID").is_some() && v.var("HAOKA172_SECRET").is_some();
        Ok(TrackingConfig {
            database,
            schedule: rules.schedule(can_poll_172),
        })
    }
}

/// What `replay` needs: what `track` reads (the commit reschedules orders
/// as a live callback does), the callback secrets, and the source rule
/// callbacks are judged by; not the server's, the poll clients' or the
/// 大麦家 variables.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub tracking: TrackingConfig,
    pub secret: Option<Secret>,
    pub previous_secret: Option<Secret>,
    /// `CALLBACK_ALLOWED_SOURCES`; `None` accepts any address.
    pub callback_allowed_sources: Option<Vec<ipnet::IpNet>>,
}

impl ReplayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let tracking = TrackingConfig::from_lookup(&get)?;
        let v = Vars(&get);
        Ok(ReplayConfig {
            tracking,
            secret: v.var("HAOKA172_SECRET").map(Secret::new),
            previous_secret: v.var("HAOKA172_SECRET_PREVIOUS").map(Secret::new),
            callback_allowed_sources: allowed_sources(&v)?,
        })
    }
}

/// Forwarding (`FORWARD_*`): retries, timeouts, concurrency, the grace of
/// a rotated secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardConfig {
    pub policy: crate::rules::forward::Policy,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Percent of the callback writers' time busy from which forwarding
    /// gives way to callbacks (`FORWARD_YIELD_AT`; 0 never).
    pub yield_at: u8,
    pub secret_grace: Duration,
}

impl ForwardConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::parse(&Vars(&get))
    }

    fn parse(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let within = |k: &'static str, d: Duration, lo: u64, hi: u64, range: &str| {
            if (lo..=hi).contains(&d.as_secs()) {
                Ok(d)
            } else {
                Err(err(
                    k,
                    format!("{} s is out of range: use {range}", d.as_secs()),
                ))
            }
        };
        let first_retry = within(
            "FORWARD_FIRST_RETRY",
            v.dur("FORWARD_FIRST_RETRY", "5s")?,
            1,
            3600,
            "1s to 1h",
        )?;
        let max_retry = within(
            "FORWARD_MAX_RETRY",
            v.dur("FORWARD_MAX_RETRY", "1h")?,
            1,
            86400,
            "1s to 1d",
        )?;
        if max_retry < first_retry {
            return Err(err(
                "FORWARD_MAX_RETRY",
                format!(
                    "{} s is shorter than FORWARD_FIRST_RETRY ({} s)",
                    max_retry.as_secs(),
                    first_retry.as_secs()
                ),
            ));
        }
        let policy = crate::rules::forward::Policy {
            first_retry,
            max_retry,
            retry_for: within(
                "FORWARD_RETRY_FOR",
                v.dur("FORWARD_RETRY_FOR", "3d")?,
                1,
                30 * 86400,
                "1s to 30d",
            )?,
            failing_after: within(
                "FORWARD_FAILING_AFTER",
                v.dur("FORWARD_FAILING_AFTER", "1h")?,
                1,
                7 * 86400,
                "1s to 7d",
            )?,
            probe_every: within(
                "FORWARD_PROBE_EVERY",
                v.dur("FORWARD_PROBE_EVERY", "5m")?,
                1,
                86400,
                "1s to 1d",
            )?,
        };
        Ok(ForwardConfig {
            policy,
            timeout: within(
                "FORWARD_TIMEOUT",
                v.dur("FORWARD_TIMEOUT", "10s")?,
                1,
                300,
                "1s to 5m",
            )?,
            concurrency: v.num("FORWARD_CONCURRENCY", 16, 1, 256)? as usize,
            yield_at: v.num("FORWARD_YIELD_AT", 80, 0, 100)? as u8,
            secret_grace: within(
                "FORWARD_SECRET_GRACE",
                v.dur("FORWARD_SECRET_GRACE", "1d")?,
                0,
                30 * 86400,
                "0 to 30d",
            )?,
        })
    }
}

/// What `prune` needs: the database and `RETENTION`.
#[derive(Debug, Clone)]
pub struct PruneConfig {
    pub database: DatabaseConfig,
    pub retention: Retention,
}

impl PruneConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars(&get);
        Ok(PruneConfig {
            database: database(&v)?,
            retention: retention(&v)?,
        })
    }
}

fn retention(v: &Vars<'_>) -> Result<Retention, ConfigError> {
    v.var("RETENTION")
        .map_or(Ok(Retention::default()), |s| Retention::parse(&s))
        .map_err(|m| err("RETENTION", m))
}

/// How log lines are written to stderr (`LOG_FORMAT`): env_logger's text,
/// or one JSON object a line for log shippers. Every command reads it, before
/// anything else is logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// `text` or `json`, any case; unset or empty is `text`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let Some(value) = Vars(&get).var("LOG_FORMAT") else {
            return Ok(LogFormat::Text);
        };
        match value.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(err(
                "LOG_FORMAT",
                format!(
                    "`{}` is not a log format: use text (the default) or json",
                    value.escape_debug()
                ),
            )),
        }
    }
}

/// The lookup every parser reads through: a value is trimmed, and an empty
/// one counts as unset.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn var(&self, k: &str) -> Option<String> {
        (self.0)(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A whole number in `min..=max`; every message states the range.
    fn num(&self, k: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        self.num_capped(k, default, min, max, None)
    }

    /// As `num`, with the reason for the upper bound when there is one
    /// worth telling.
    fn num_capped(
        &self,
        k: &'static str,
        default: u64,
        min: u64,
        max: u64,
        why_max: Option<&str>,
    ) -> Result<u64, ConfigError> {
        let range = format!("use a whole number from {min} to {max}");
        let Some(v) = self.var(k) else {
            return Ok(default);
        };
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(n) => Err(err(
                k,
                match why_max {
                    Some(why) if n > max => format!("{n} is above {max}, {why}: {range}"),
                    _ => format!("{n} is out of range: {range}"),
                },
            )),
            // Digits too many for a u64 are still a number, just too big.
            Err(_) if v.bytes().all(|b| b.is_ascii_digit()) => {
                Err(err(k, format!("{v} is out of range: {range}")))
            }
            Err(_) => Err(err(k, format!("`{v}` is not a whole number: {range}"))),
        }
    }

    fn dur(&self, k: &'static str, default: &str) -> Result<Duration, ConfigError> {
        parse_duration(&self.var(k).unwrap_or_else(|| default.to_owned())).map_err(|m| err(k, m))
    }

    fn switch(&self, k: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.var(k).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "on" | "true" | "1" | "yes" => Ok(true),
                "off" | "false" | "0" | "no" => Ok(false),
                _ => Err(err(k, format!("`{v}` is not on or off"))),
            },
        }
    }

    fn url(&self, k: &'static str, default: &str) -> Result<url::Url, ConfigError> {
        let v = self.var(k).unwrap_or_else(|| default.to_owned());
        let u = url::Url::parse(&v).map_err(|e| err(k, format!("`{v}` is not a URL ({e})")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(err(k, format!("`{v}` must be http:// or https://")));
        }
        Ok(u)
    }
}

fn err(var: &'static str, msg: String) -> ConfigError {
    ConfigError { var, msg }
}

fn database(v: &Vars) -> Result<DatabaseConfig, ConfigError> {
    let url = DatabaseUrl::parse(
        &v.var("DATABASE_URL")
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
    )
    .map_err(|m| err("DATABASE_URL", m))?;
    let timeout = Duration::from_secs(v.num("DB_TIMEOUT_SECS", 3, 1, 600)?);
    Ok(DatabaseConfig { url, timeout })
}

/// The variables behind `Schedule`, parsed once for `Config` and
/// `TrackingConfig` alike.
struct ScheduleVars {
    overdue: StatusDurations,
    refresh: StatusDurations,
    horizon: Duration,
    min_recheck: Duration,
    callback_gap: Option<GapPolicy>,
    confirm_terminal: bool,
}

impl ScheduleVars {
    fn parse(v: &Vars) -> Result<Self, ConfigError> {
        Ok(ScheduleVars {
            overdue: StatusDurations::parse(
                &v.var("HAOKA172_OVERDUE").unwrap_or_default(),
                &StatusDurations::haoka172_default(),
            )
            .map_err(|m| err("HAOKA172_OVERDUE", m))?,
            refresh: StatusDurations::parse(
                &v.var("DAMAIJIA_REFRESH").unwrap_or_default(),
                &StatusDurations::damaijia_default(),
            )
            .map_err(|m| err("DAMAIJIA_REFRESH", m))?,
            horizon: v.dur("TRACKING_HORIZON", "60d")?,
            min_recheck: v.dur("POLL_MIN_RECHECK", "1m")?,
            callback_gap: GapPolicy::parse(
                &v.var("HAOKA172_CALLBACK_GAP")
                    .unwrap_or_else(|| GapPolicy::DEFAULT_SPEC.into()),
            )
            .map_err(|m| err("HAOKA172_CALLBACK_GAP", m))?,
            confirm_terminal: v.switch("HAOKA172_CONFIRM_TERMINAL", true)?,
        })
    }

    /// Terminal callbacks wait for a confirmation only when the 172 poller
    /// can ask for it.
    fn schedule(self, can_poll_172: bool) -> Schedule {
        Schedule {
            waits: [
                (Vendor::Haoka172, self.overdue),
                (Vendor::Damaijia, self.refresh),
            ]
            .into(),
            horizon: self.horizon,
            min_recheck: self.min_recheck,
            callback_gap: self.callback_gap,
            confirm_terminal: self.confirm_terminal && can_poll_172,
        }
    }
}

impl Config {
    /// From the process environment (after `.env` was loaded by the caller).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any lookup; tests pass a map. Every variable: what `serve` and
    /// `poll-once` need (`DatabaseConfig` and `TrackingConfig` read less).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars(&get);
        let DatabaseConfig {
            url: database_url,
            timeout: db_timeout,
        } = database(&v)?;
        let bind_s = v
            .var("HAOKA_SYNC_BIND")
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let bind = bind_s.parse().map_err(|_| {
            err(
                "HAOKA_SYNC_BIND",
                format!("`{bind_s}` is not an address like 127.0.0.1:8080"),
            )
        })?;
        let rules = ScheduleVars::parse(&v)?;

        let haoka172 = Haoka172Config {
            user_id: v.var("HAOKA172_USER_ID"),
            secret: v.var("HAOKA172_SECRET").map(Secret::new),
            previous_secret: v.var("HAOKA172_SECRET_PREVIOUS").map(Secret::new),
            base_url: v.url("HAOKA172_BASE_URL", "https://haokaopenapi.lot-ml.com")?,
            overdue: rules.overdue,
            max_calls_per_minute: v.num_capped(
                "HAOKA172_MAX_CALLS_PER_MINUTE",
                150,
                1,
                200,
                Some("where the vendor blocks the account"),
            )? as u32,
            max_calls_per_order_per_day: v.num(
                "HAOKA172_MAX_CALLS_PER_ORDER_PER_DAY",
                10,
                1,
                1000,
            )? as u32,
            cooloff: v.dur("HAOKA172_COOLOFF", "10m")?,
            callback_gap: rules.callback_gap,
            timeout: Duration::from_secs(v.num("HAOKA172_TIMEOUT_SECS", 10, 1, 300)?),
            confirm_terminal: rules.confirm_terminal,
        };
        let damaijia = DamaijiaConfig {
            token: v.var("DAMAIJIA_TOKEN").map(Secret::new),
            owner_id: v.var("DAMAIJIA_OWNER_ID"),
            base_url: v.url("DAMAIJIA_BASE_URL", "http://www.damaijia168.com")?,
            app_id: v.var("DAMAIJIA_APP_ID"),
            app_secret: v.var("DAMAIJIA_APP_SECRET").map(Secret::new),
            refresh: rules.refresh,
            batch_size: v.num("DAMAIJIA_BATCH_SIZE", 20, 1, 100)? as u32,
            edition: v.var("DAMAIJIA_EDITION"),
            cooloff: v.dur("DAMAIJIA_COOLOFF", "30m")?,
            timeout: Duration::from_secs(v.num("DAMAIJIA_TIMEOUT_SECS", 15, 1, 300)?),
        };
        let poll_cron = v.var("POLL_CRON").unwrap_or_else(|| "0 * * * * *".into());
        validate_cron(&poll_cron).map_err(|m| err("POLL_CRON", m))?;

        let db_pool_size = v.num("DB_POOL_SIZE", 16, 3, 512)? as u32;
        // Two writers keep one batch executing while the other commits; more
        // only add contention on a small server (bench/ingest: 2 writers gave
        // the best throughput and p99 on 2 cores).
        let ingest_writers = v.num("INGEST_WRITERS", 2, 1, 64)? as usize;
        // Each writer keeps a connection; leave two for polling and the API.
        if ingest_writers + 2 > db_pool_size as usize {
            return Err(err(
                "INGEST_WRITERS",
                format!(
                    "{ingest_writers} {} DB_POOL_SIZE of at least {} (each keeps a connection; two more for polling and the API)",
                    if ingest_writers == 1 { "writer needs" } else { "writers need" },
                    ingest_writers + 2
                ),
            ));
        }
        let callback_allowed_sources = allowed_sources(&v)?;
        let trusted_proxy_header = v
            .var("TRUSTED_PROXY_HEADER")
            .map(|s| validate_header_name(&s))
            .transpose()
            .map_err(|m| err("TRUSTED_PROXY_HEADER", m))?;
        let trusted_proxies = parse_nets(
            &v.var("TRUSTED_PROXIES")
                .unwrap_or_else(|| DEFAULT_TRUSTED_PROXIES.into()),
        )
        .map_err(|m| err("TRUSTED_PROXIES", m))?;
        let metrics_refresh = v.dur("METRICS_REFRESH", "5s")?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&metrics_refresh) {
            return Err(err(
                "METRICS_REFRESH",
                format!(
                    "{} s is out of range: use 1s to 1h",
                    metrics_refresh.as_secs()
                ),
            ));
        }
        Ok(Config {
            database_url,
            bind,
            haoka172,
            damaijia,
            poll_cron,
            tracking_horizon: rules.horizon,
            poll_min_recheck: rules.min_recheck,
            poll_lease: v.dur("POLL_LEASE", "5m")?,
            admin_token: v.var("ADMIN_TOKEN").map(Secret::new),
            callback_max_body_bytes: v.num("CALLBACK_MAX_BODY_BYTES", 64 * 1024, 1024, 16 << 20)?
                as usize,
            db_pool_size,
            db_timeout,
            db_wait: Duration::from_secs(v.num("DB_WAIT_SECS", 60, 0, 86400)?),
            ingest_writers,
            ingest_max_batch: v.num("INGEST_MAX_BATCH", 256, 1, 10_000)? as usize,
            callback_allowed_sources,
            trusted_proxy_header,
            trusted_proxies,
            metrics_refresh,
            forward: ForwardConfig::parse(&v)?,
            retention: retention(&v)?,
        })
    }

    /// The "when to ask" rules this configuration sets, built once by the
    /// caller (startup, a CLI command) and shared.
    pub fn schedule(&self) -> Schedule {
        ScheduleVars {
            overdue: self.haoka172.overdue.clone(),
            refresh: self.damaijia.refresh.clone(),
            horizon: self.tracking_horizon,
            min_recheck: self.poll_min_recheck,
            callback_gap: self.haoka172.callback_gap.clone(),
            confirm_terminal: self.haoka172.confirm_terminal,
        }
        .schedule(self.haoka172.can_poll())
    }

    /// The database part, for code that takes only that.
    pub fn database(&self) -> DatabaseConfig {
        DatabaseConfig {
            url: self.database_url.clone(),
            timeout: self.db_timeout,
        }
    }

    /// A configuration for tests and tools: defaults, then `overrides`.
    pub fn with(overrides: &[(&str, &str)]) -> Result<Self, ConfigError> {
        let map: BTreeMap<String, String> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::from_lookup(|k| map.get(k).cloned())
    }
}

/// `CALLBACK_ALLOWED_SOURCES`: `None` (any address) when unset or empty.
fn allowed_sources(v: &Vars) -> Result<Option<Vec<ipnet::IpNet>>, ConfigError> {
    Ok(v.var("CALLBACK_ALLOWED_SOURCES")
        .map(|s| parse_nets(&s))
        .transpose()
        .map_err(|m| err("CALLBACK_ALLOWED_SOURCES", m))?
        .filter(|nets| !nets.is_empty()))
}

/// `203.0.113.0/24, 198.51.100.7, 2001:db8::/32`: operators copy single
/// addresses out of logs, so a bare IP is accepted as its /32 or /128.
fn parse_nets(spec: &str) -> Result<Vec<ipnet::IpNet>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("`{p}` is not an IP address or CIDR range (e.g. 203.0.113.0/24 or 2001:db8::/32)")
                })
        })
        .collect()
}

/// Checked here, without the HTTP types, so a typo stops the start instead
/// of silently disabling the header: a name is an RFC 9110 token.
fn validate_header_name(name: &str) -> Result<String, String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(tchar) {
        return Err(format!(
            "`{name}` is not a valid HTTP header name (e.g. X-Forwarded-For or X-Real-IP)"
        ));
    }
    Ok(name.to_owned())
}

/// Six fields (with seconds), as tokio-cron-scheduler expects.
fn validate_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    if !(6..=7).contains(&fields) {
        return Err(format!(
            "`{expr}` has {fields} field{}; use six, starting with seconds (e.g. `0 * * * * *`)",
            if fields == 1 { "" } else { "s" }
        ));
    }
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| format!("`{expr}` is not a valid schedule ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Status;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::with(&[]).unwrap();
        assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.haoka172.base_url.as_str(),
            "https://haokaopenapi.lot-ml.com/"
        );
        assert_eq!(c.haoka172.max_calls_per_minute, 150);
        assert_eq!(c.haoka172.max_calls_per_order_per_day, 10);
        assert_eq!(c.damaijia.batch_size, 20);
        assert_eq!(c.poll_cron, "0 * * * * *");
        assert_eq!(
            c.haoka172.overdue.get(Status::Pending),
            Some(Duration::from_secs(6 * 3600))
        );
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn overdue_spec_overrides_only_the_keys_given() {
        let c = Config::with(&[("HAOKA172_OVERDUE", "pending=0, shipped=90s,new=1d")]).unwrap();
        let o = &c.haoka172.overdue;
        assert_eq!(o.get(Status::Pending), Some(Duration::ZERO));
        assert_eq!(o.get(Status::Shipped), Some(Duration::from_secs(90)));
        assert_eq!(o.get(Status::New), Some(Duration::from_secs(86400)));
        assert_eq!(
            o.get(Status::Submitted),
            Some(Duration::from_secs(2 * 86400))
        );
        assert_eq!(o.get(Status::Settled), None);
    }

    #[test]
    fn callback_gap_recovery_is_on_by_default_and_can_be_tuned_or_turned_off() {
        let c = Config::with(&[]).unwrap();
        assert_eq!(c.haoka172.callback_gap, Some(GapPolicy::default()));
        let c = Config::with(&[("HAOKA172_CALLBACK_GAP", "settle=0")]).unwrap();
        let p = c.haoka172.callback_gap.unwrap();
        assert_eq!(p.settle, Duration::ZERO);
        assert_eq!(p.silence, GapPolicy::default().silence);
        let c = Config::with(&[("HAOKA172_CALLBACK_GAP", "off")]).unwrap();
        assert_eq!(c.haoka172.callback_gap, None);
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for_and_nothing_else_is_taken() {
        let format = |v: &str| LogFormat::from_lookup(|k| (k == "LOG_FORMAT").then(|| v.into()));
        assert_eq!(LogFormat::from_lookup(|_| None), Ok(LogFormat::Text));
        for (v, want) in [
            ("", LogFormat::Text),
            ("text", LogFormat::Text),
            (" JSON ", LogFormat::Json),
            ("json", LogFormat::Json),
        ] {
            assert_eq!(format(v), Ok(want), "{v:?}");
        }
        let e = format("xml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "LOG_FORMAT: `xml` is not a log format: use text (the default) or json"
        );
        let e = format("js\non").unwrap_err();
        assert!(!e.msg.contains('\n'), "{e}");
    }

    #[test]
    fn invalid_values_name_the_variable_and_the_problem() {
        let cases = [
            ("HAOKA172_MAX_CALLS_PER_MINUTE", "201", "above 200"),
            (
                "HAOKA172_MAX_CALLS_PER_MINUTE",
                "lots",
                "not a whole number",
            ),
            (
                "HAOKA172_OVERDUE",
                "settled=1h",
                "not a non-terminal status",
            ),
            ("HAOKA172_OVERDUE", "pending=6x", "no unit"),
            ("HAOKA172_OVERDUE", "pending", "not key=duration"),
            ("DATABASE_URL", "mysql://x/y", "postgres://"),
            ("DATABASE_URL", "postgres://host", "must name a database"),
            ("HAOKA_SYNC_BIND", "localhost", "not an address"),
            ("HAOKA172_BASE_URL", "ftp://x", "http"),
            ("POLL_CRON", "* * * * *", "six"),
            ("POLL_CRON", "bogus", "has 1 field; use six"),
            ("POLL_CRON", "* * * * *", "has 5 fields; use six"),
            ("POLL_CRON", "x y z a b c", "not a valid schedule"),
            ("DAMAIJIA_BATCH_SIZE", "0", "out of range"),
            ("HAOKA172_CALLBACK_GAP", "silence=1h,quiet=2h", "not one of"),
            ("HAOKA172_CALLBACK_GAP", "expected=0", "at least 1"),
            ("CALLBACK_ALLOWED_SOURCES", "300.1.2.3/8", "`300.1.2.3/8`"),
            (
                "CALLBACK_ALLOWED_SOURCES",
                "203.0.113.0/24, 10.0.0.0/33",
                "`10.0.0.0/33` is not an IP address or CIDR range",
            ),
            ("TRUSTED_PROXIES", "localhost", "`localhost`"),
            ("TRUSTED_PROXY_HEADER", "bad header", "`bad header`"),
            (
                "TRUSTED_PROXY_HEADER",
                "X-Forwarded-For:",
                "not a valid HTTP header name",
            ),
        ];
        for (k, v, want) in cases {
            let e = Config::with(&[(k, v)]).unwrap_err();
            assert_eq!(e.var, k);
            assert!(
                e.to_string().contains(want),
                "{k}={v}: `{e}` should mention `{want}`"
            );
            assert!(!e.to_string().contains('\n'));
        }
    }

    /// Each numeric variable, its range as docs/contract.md states it.
    const NUMERIC: [(&str, u64, u64); 10] = [
        ("HAOKA172_MAX_CALLS_PER_MINUTE", 1, 200),
        ("HAOKA172_MAX_CALLS_PER_ORDER_PER_DAY", 1, 1000),
        ("HAOKA172_TIMEOUT_SECS", 1, 300),
        ("DAMAIJIA_BATCH_SIZE", 1, 100),
        ("DAMAIJIA_TIMEOUT_SECS", 1, 300),
        ("DB_POOL_SIZE", 3, 512),
        ("DB_TIMEOUT_SECS", 1, 600),
        ("INGEST_WRITERS", 1, 64),
        ("INGEST_MAX_BATCH", 1, 10_000),
        ("CALLBACK_MAX_BODY_BYTES", 1024, 16_777_216),
    ];

    #[test]
    fn metrics_refresh_is_a_duration_from_a_second_to_an_hour() {
        let refresh = |v| Config::with(&[("METRICS_REFRESH", v)]).map(|c| c.metrics_refresh);
        assert_eq!(
            Config::with(&[]).unwrap().metrics_refresh,
            Duration::from_secs(5)
        );
        assert_eq!(refresh("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(refresh("1h").unwrap(), Duration::from_secs(3600));
        for (bad, want) in [
            ("0", "0 s is out of range: use 1s to 1h"),
            ("61m", "3660 s is out of range: use 1s to 1h"),
            ("5", "no unit"),
        ] {
            let e = refresh(bad).unwrap_err();
            assert_eq!(e.var, "METRICS_REFRESH");
            assert!(e.msg.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn every_numeric_message_states_the_real_range() {
        for (k, min, max) in NUMERIC {
            let range = format!("from {min} to {max}");
            let (below, above) = ((min - 1).to_string(), (max + 1).to_string());
            for bad in [
                below.as_str(),
                above.as_str(),
                "lots",
                "-1",
                "99999999999999999999999",
            ] {
                let e = Config::with(&[(k, bad)]).unwrap_err();
                assert_eq!(e.var, k, "{k}={bad}: {e}");
                assert!(
                    e.msg.contains(&range),
                    "{k}={bad}: `{e}` should say `{range}`"
                );
                assert!(!e.msg.contains("18446744073709551615"), "{k}={bad}: `{e}`");
            }
            // The top of each range is accepted (with room in the pool for
            // the writers).
            let top = max.to_string();
            let vars = match k {
                "DB_POOL_SIZE" => vec![(k, top.as_str())],
                _ => vec![(k, top.as_str()), ("DB_POOL_SIZE", "512")],
            };
            let ok = Config::with(&vars);
            assert!(ok.is_ok(), "{k}={max}: {ok:?}");
        }
        let e = Config::with(&[("HAOKA172_MAX_CALLS_PER_MINUTE", "0")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "HAOKA172_MAX_CALLS_PER_MINUTE: 0 is out of range: use a whole number from 1 to 200"
        );
        let e = Config::with(&[("HAOKA172_MAX_CALLS_PER_MINUTE", "201")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "HAOKA172_MAX_CALLS_PER_MINUTE: 201 is above 200, where the vendor blocks the account: use a whole number from 1 to 200"
        );
    }

    #[test]
    fn the_database_commands_read_only_the_database_variables() {
        let poller_mistakes: &'static [(&str, &str)] = &[
            ("POLL_CRON", "bogus"),
            ("HAOKA172_MAX_CALLS_PER_MINUTE", "0"),
            ("HAOKA_SYNC_BIND", "nowhere"),
            ("HAOKA172_OVERDUE", "pending=6x"),
            ("TRUSTED_PROXIES", "localhost"),
        ];
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let db = DatabaseConfig::from_lookup(lookup(poller_mistakes)).unwrap();
        assert_eq!(db.url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(db.timeout, Duration::from_secs(3));
        let e =
            DatabaseConfig::from_lookup(lookup(&[("DATABASE_URL", "mysql://x/y")])).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        let e = DatabaseConfig::from_lookup(lookup(&[("DB_TIMEOUT_SECS", "0")])).unwrap_err();
        assert_eq!(e.var, "DB_TIMEOUT_SECS");

        // `track` needs the schedule too, not the server or the clients.
        let t = TrackingConfig::from_lookup(lookup(&[
            ("POLL_CRON", "bogus"),
            ("HAOKA_SYNC_BIND", "nowhere"),
            ("HAOKA172_BASE_URL", "ftp://x"),
        ]))
        .unwrap();
        assert_eq!(t.database.url.expose(), DEFAULT_DATABASE_URL);
        let e =
            TrackingConfig::from_lookup(lookup(&[("HAOKA172_OVERDUE", "pending=6x")])).unwrap_err();
        assert_eq!(e.var, "HAOKA172_OVERDUE");
        let e = TrackingConfig::from_lookup(lookup(&[("TRACKING_HORIZON", "long")])).unwrap_err();
        assert_eq!(e.var, "TRACKING_HORIZON");

        // `replay` adds the callback secrets and the source rule, nothing of
        // the server, the proxy or the clients.
        let r = ReplayConfig::from_lookup(lookup(&[
            ("POLL_CRON", "bogus"),
            ("HAOKA_SYNC_BIND", "nowhere"),
            ("TRUSTED_PROXIES", "localhost"),
            ("HAOKA172_SECRET", "s1"),
            ("HAOKA172_SECRET_PREVIOUS", "s0"),
            ("CALLBACK_ALLOWED_SOURCES", "203.0.113.0/24, 198.51.100.7"),
        ]))
        .unwrap();
        assert_eq!(r.secret.as_ref().map(Secret::expose), Some("s1"));
        assert_eq!(r.previous_secret.as_ref().map(Secret::expose), Some("s0"));
        assert_eq!(r.callback_allowed_sources.map(|n| n.len()), Some(2));
        let r = ReplayConfig::from_lookup(lookup(&[])).unwrap();
        assert!(r.secret.is_none() && r.callback_allowed_sources.is_none());
        let e =
            ReplayConfig::from_lookup(lookup(&[("CALLBACK_ALLOWED_SOURCES", "x")])).unwrap_err();
        assert_eq!(e.var, "CALLBACK_ALLOWED_SOURCES");
        let e = ReplayConfig::from_lookup(lookup(&[("HAOKA172_OVERDUE", "x=1")])).unwrap_err();
        assert_eq!(e.var, "HAOKA172_OVERDUE");
    }

    #[test]
    fn the_tracking_schedule_is_the_one_the_service_uses() {
        let cases: [&[(&str, &str)]; 4] = [
            &[],
            &[("HAOKA172_USER_ID", "u"), ("HAOKA172_SECRET", "s")],
            &[
                ("HAOKA172_SECRET", "s"),
                ("HAOKA172_CONFIRM_TERMINAL", "on"),
            ],
            &[
                ("HAOKA172_USER_ID", "u"),
                ("HAOKA172_SECRET", "s"),
                ("HAOKA172_CONFIRM_TERMINAL", "off"),
                ("HAOKA172_OVERDUE", "pending=1h"),
                ("DAMAIJIA_REFRESH", "shipped=3h"),
                ("TRACKING_HORIZON", "9d"),
                ("POLL_MIN_RECHECK", "30s"),
                ("HAOKA172_CALLBACK_GAP", "off"),
            ],
        ];
        for vars in cases {
            let map: BTreeMap<&str, &str> = vars.iter().copied().collect();
            let t = TrackingConfig::from_lookup(|k| map.get(k).map(|v| v.to_string())).unwrap();
            let full = Config::with(vars).unwrap().schedule();
            assert_eq!(format!("{:?}", t.schedule), format!("{full:?}"), "{vars:?}");
        }
    }

    /// The variables the parsing code above reads: every string literal in
    /// it that looks like an environment variable name.
    fn variables_parsed_here() -> std::collections::BTreeSet<String> {
        let src = include_str!("config.rs");
        let code = &src[..src.find("#[cfg(test)]").unwrap_or(src.len())];
        code.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| {
                s.contains('_')
                    && s.starts_with(|c: char| c.is_ascii_uppercase())
                    && s.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .map(str::to_owned)
            .collect()
    }

    fn manifest_file(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// `.env.example`'s commented-out assignments (`#NAME=value`).
    fn env_example() -> Vec<(String, String)> {
        manifest_file(".env.example")
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Every variable in docs/contract.md's configuration tables.
    fn contract_variables() -> std::collections::BTreeSet<String> {
        let doc = manifest_file("docs/contract.md");
        let start = doc
            .find("\n## Configuration")
            .expect("a Configuration section");
        let section = &doc[start + 1..];
        let section = &section[..section[1..].find("\n## ").map_or(section.len(), |i| i + 1)];
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .flat_map(|l| {
                let first_cell = l.split(" |").next().unwrap_or("");
                format!("`{first_cell}")
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_variable_is_in_the_env_example_and_the_contract() {
        let example: std::collections::BTreeSet<String> =
            env_example().into_iter().map(|(k, _)| k).collect();
        let parsed = variables_parsed_here();
        let documented = contract_variables();
        assert!(parsed.len() >= 35, "{parsed:?}");
        for k in &parsed {
            assert!(example.contains(k), "{k} is parsed but not in .env.example");
            assert!(
                documented.contains(k),
                "{k} is parsed but not in docs/contract.md"
            );
        }
        for k in &documented {
            assert!(
                example.contains(k),
                "{k} is in docs/contract.md but not in .env.example"
            );
        }
        for k in &example {
            assert!(
                documented.contains(k),
                "{k} is in .env.example but not in docs/contract.md"
            );
        }
    }

    #[test]
    fn the_env_example_uncommented_is_the_default_configuration() {
        // Uncommented, the example must be a valid .env whose values are
        // the defaults.
        let text: String = env_example()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        let mut map = BTreeMap::new();
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            let (k, v) = item.unwrap_or_else(|e| panic!(".env.example does not parse: {e}"));
            map.insert(k, v);
        }
        let from_example = Config::from_lookup(|k| map.get(k).cloned()).unwrap();
        assert_eq!(
            format!("{from_example:?}"),
            format!("{:?}", Config::with(&[]).unwrap())
        );
    }

    #[test]
    fn every_source_is_allowed_and_the_peer_judged_unless_configured() {
        let c = Config::with(&[]).unwrap();
        assert_eq!(c.callback_allowed_sources, None);
        assert_eq!(c.trusted_proxy_header, None);
        let loopback: Vec<ipnet::IpNet> =
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert_eq!(c.trusted_proxies, loopback);
        let c = Config::with(&[("CALLBACK_ALLOWED_SOURCES", " , ")]).unwrap();
        assert_eq!(c.callback_allowed_sources, None, "empty means unset");
    }

    #[test]
    fn allowed_sources_take_cidrs_and_bare_ips_of_both_families() {
        let c = Config::with(&[
            (
                "CALLBACK_ALLOWED_SOURCES",
                "203.0.113.0/24, 198.51.100.7,2001:db8::/32 , 2001:db8::1",
            ),
            ("TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
            ("TRUSTED_PROXIES", "10.1.2.3/8"),
        ])
        .unwrap();
        let nets: Vec<String> = c
            .callback_allowed_sources
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            nets,
            [
                "203.0.113.0/24",
                "198.51.100.7/32",
                "2001:db8::/32",
                "2001:db8::1/128"
            ]
        );
        assert_eq!(c.trusted_proxy_header.as_deref(), Some("X-Forwarded-For"));
        assert_eq!(c.trusted_proxies[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn ingest_writers_must_leave_connections_for_polling() {
        let c = Config::with(&[]).unwrap();
        assert_eq!((c.ingest_writers, c.db_pool_size), (2, 16));
        let ok = Config::with(&[("INGEST_WRITERS", "6"), ("DB_POOL_SIZE", "8")]).unwrap();
        assert_eq!(ok.ingest_writers, 6);
        let e = Config::with(&[("INGEST_WRITERS", "7"), ("DB_POOL_SIZE", "8")]).unwrap_err();
        assert_eq!(e.var, "INGEST_WRITERS");
        assert!(
            e.to_string()
                .contains("7 writers need DB_POOL_SIZE of at least 9"),
            "{e}"
        );
        let e = Config::with(&[("INGEST_WRITERS", "1"), ("DB_POOL_SIZE", "3")]);
        assert!(e.is_ok(), "the smallest pool takes one writer: {e:?}");
        let e = Config::with(&[("INGEST_WRITERS", "2"), ("DB_POOL_SIZE", "3")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("2 writers need DB_POOL_SIZE of at least 4"),
            "{e}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::with(&[
            ("HAOKA172_SECRET", "s3cr3t-172"),
            ("DAMAIJIA_TOKEN", "tok-damaijia"),
            ("DAMAIJIA_APP_SECRET", "app-s3cret"),
            ("ADMIN_TOKEN", "admin-t0ken"),
            ("DATABASE_URL", "postgres://u:dbpa55@localhost/x"),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        for secret in [
            "s3cr3t-172",
            "tok-damaijia",
            "app-s3cret",
            "admin-t0ken",
            "dbpa55",
        ] {
            assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
        }
        assert!(dbg.contains("[redacted]"));
        assert_eq!(c.database_url.to_string(), "postgres://u:***@localhost/x");
    }

    #[test]
    fn database_url_can_point_at_another_database_on_the_same_server() {
        let u = DatabaseUrl::parse("postgres://u:p@h:5433/app_db?sslmode=disable").unwrap();
        assert_eq!(u.database_name(), "app_db");
        assert_eq!(
            u.with_database("postgres").expose(),
            "postgres://u:p@h:5433/postgres?sslmode=disable"
        );
    }
}
