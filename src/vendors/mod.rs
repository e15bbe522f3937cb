//! Everything vendor-specific: signing, request and response shapes, error
//! codes, label tables, limits (docs/vendors.md). A vendor is one folder
//! here; what the poller needs of it is the [`Asker`] interface below.
//! Nothing here touches the database or decides when to ask.

pub mod damaijia;
pub mod haoka172;
pub mod value;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::rules::inbound::Verdict;
use crate::rules::Observation;
use crate::secret::Secret;

pub use crate::rules::vendor::Vendor;

/// A future the poller can hold across vendors.
pub type Ask<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How to ask one vendor about orders, and within what limits. The poll
/// pass is one loop over this; a new vendor implements it in its folder.
pub trait Asker: Send + Sync {
    fn vendor(&self) -> Vendor;

    /// The endpoint the calls go to (`vendor_calls.api`).
    fn api(&self) -> &'static str;

    fn limits(&self) -> &Limits;

    /// Ask about `ids` (at most `limits().per_call` of them).
    fn ask<'a>(&'a self, ids: &'a [String], token: Option<&'a Secret>) -> Ask<'a, Asked>;

    /// Whether calls carry a token that a login replaces (every login kills
    /// the older tokens, so one process logs in for the whole deployment).
    fn uses_token(&self) -> bool {
        false
    }

    /// The token from the configuration, before any login.
    fn configured_token(&self) -> Option<Secret> {
        None
    }

    /// Log in for a new token; None when the vendor has no login or no
    /// credentials for it are configured.
    fn login(&self) -> Option<Ask<'_, Result<Secret, Failure>>> {
        None
    }

    /// What the operator must set when the token is refused and no login is
    /// possible.
    fn token_help(&self) -> &'static str {
        "the token was refused"
    }

    /// Whether the vendor pushes callbacks (and so has callback gaps and
    /// stored callbacks to judge again).
    fn pushes_callbacks(&self) -> bool {
        false
    }

    /// Judge a stored callback request again (vendors that push callbacks),
    /// exactly as on arrival.
    fn judge_stored(
        &self,
        _content_type: Option<&str>,
        _body: &[u8],
        _sign: Option<&str>,
    ) -> Option<Verdict> {
        None
    }
}

/// A vendor's limits, as the poller must respect them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Order ids per call.
    pub per_call: usize,
    /// Calls per `window` for the whole deployment.
    pub per_window: i64,
    pub window: Duration,
    /// When the window is full: wait for a slot (a short window) rather
    /// than leave the rest for the next pass.
    pub wait_for_slot: bool,
    /// Calls one pass makes at most (calls are billed).
    pub per_pass: Option<i64>,
    /// Calls per order per China-time day.
    pub per_order_per_day: Option<i32>,
    /// Calls in flight at once within one pass.
    pub in_flight: usize,
    /// How long polling pauses after a block, repeated trouble, or an error
    /// that needs a person.
    pub cooloff: Duration,
}

/// What one call brought, with what `vendor_calls` records of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    pub result: Result<Answer, Failure>,
    pub http_status: Option<u16>,
    /// What the vendor billed, in its unit.
    pub cost: Option<i64>,
}

/// An answer: one observation per order found, the others missing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    pub found: Vec<Observation>,
    /// Asked about but not in the answer: "not found".
    pub missing: Vec<String>,
}

/// Why a call brought no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    /// `vendor_calls.outcome` and `last_poll_outcome`.
    pub outcome: &'static str,
    pub message: String,
}

/// What a failure means for the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// None of the orders asked about exists at the vendor: they back off.
    NotFound,
    /// The vendor refuses us for calling too often: pause.
    Blocked,
    /// The token was refused: log in again once, else pause.
    AuthFailed,
    /// The account needs a person (balance, binding, subscription): pause;
    /// the message names the fix.
    NeedsFix,
    /// Our request was wrong: a bug to report; the orders back off.
    BadRequest,
    /// A well-formed refusal about these orders: they back off.
    Refused,
    /// The vendor or the path to it is in trouble (HTTP errors, timeouts,
    /// garbage): the orders back off, and enough in a row pause polling.
    Trouble,
}

impl Failure {
    pub fn new(kind: FailureKind, outcome: &'static str, message: impl Into<String>) -> Self {
        Failure {
            kind,
            outcome,
            message: message.into(),
        }
    }
}

/// Why a request never got an answer, for logs and pause reasons: the host
/// and the cause an operator can act on (refused, DNS, timeout, TLS), never
/// the full URL.
pub fn transport_cause(url: &url::Url, e: &reqwest::Error) -> String {
    let host = url.host_str().unwrap_or("the vendor");
    let mut innermost = e.to_string();
    let mut refused = false;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        innermost = s.to_string();
        source = s.source();
    }
    let lower = innermost.to_lowercase();
    let cause = if e.is_timeout() {
        "no answer before the timeout".to_owned()
    } else if refused || lower.contains("connection refused") {
        "connection refused".to_owned()
    } else if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") {
        format!("DNS lookup failed ({innermost})")
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        format!("TLS failed ({innermost})")
    } else {
        innermost
    };
    format!("{host}: {cause}")
}
