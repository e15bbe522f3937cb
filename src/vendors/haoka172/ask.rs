//! 172号卡 for the poller: one `GetOrderInfo` per order, within the vendor's
//! limits (docs/vendors.md#172号卡-getorderinfo-limits), and the callback
//! judge for stored requests judged again after an answer.

use std::time::Duration;

use super::callback;
use super::client::{Haoka172Client, QueryError};
use super::sign::CallbackKey;
use crate::rules::inbound::Verdict;
use crate::rules::Vendor;
use crate::secret::Secret;
use crate::vendors::{Answer, Ask, Asked, Asker, Failure, FailureKind, Limits};

/// The vendor counts per minute; one second more covers the time between
/// our reservation and the request reaching it.
pub const RATE_WINDOW: Duration = Duration::from_secs(61);
/// Calls in flight at once within one pass.
const IN_FLIGHT: usize = 8;

pub struct Haoka172Asker {
    client: Haoka172Client,
    keys: Vec<CallbackKey>,
    limits: Limits,
}

impl Haoka172Asker {
    /// `keys`: the callback keys (current secret first), to judge stored
    /// callbacks again.
    pub fn new(
        client: Haoka172Client,
        keys: Vec<CallbackKey>,
        per_minute: u32,
        per_order_per_day: u32,
        cooloff: Duration,
    ) -> Self {
        Haoka172Asker {
            client,
            keys,
            limits: Limits {
                per_call: 1,
                per_window: i64::from(per_minute),
                window: RATE_WINDOW,
                wait_for_slot: false,
                per_pass: None,
                per_order_per_day: Some(i32::try_from(per_order_per_day).unwrap_or(i32::MAX)),
                in_flight: IN_FLIGHT,
                cooloff,
            },
        }
    }
}

impl Asker for Haoka172Asker {
    fn vendor(&self) -> Vendor {
        Vendor::Haoka172
    }

    fn api(&self) -> &'static str {
        "GetOrderInfo"
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn ask<'a>(&'a self, ids: &'a [String], _token: Option<&'a Secret>) -> Ask<'a, Asked> {
        Box::pin(async move {
            let Some(id) = ids.first() else {
                return Asked {
                    result: Ok(Answer::default()),
                    http_status: None,
                    cost: None,
                };
            };
            let result = self.client.get_order_info(id).await;
            let http_status = match &result {
                Ok(_) => Some(200),
                Err(QueryError::Http(s)) => Some(*s),
                Err(_) => None,
            };
            Asked {
                result: result
                    .map(|obs| Answer {
                        found: vec![obs],
                        missing: Vec::new(),
                    })
                    .map_err(|e| failure(&e)),
                http_status,
                cost: None,
            }
        })
    }

    fn pushes_callbacks(&self) -> bool {
        true
    }

    fn judge_stored(
        &self,
        content_type: Option<&str>,
        body: &[u8],
        sign: Option<&str>,
    ) -> Option<Verdict> {
        Some(callback::check(content_type, body, sign, &self.keys))
    }
}

fn failure(e: &QueryError) -> Failure {
    let kind = match e {
        QueryError::NotFound => FailureKind::NotFound,
        QueryError::Blocked(_) => FailureKind::Blocked,
        QueryError::Vendor { .. } => FailureKind::Refused,
        QueryError::Http(_)
        | QueryError::Transport(_)
        | QueryError::Timeout(_)
        | QueryError::Unparseable(_) => FailureKind::Trouble,
    };
    let message = match e {
        QueryError::Blocked(m) => m.clone(),
        e => e.to_string(),
    };
    Failure::new(kind, e.outcome(), message)
}
