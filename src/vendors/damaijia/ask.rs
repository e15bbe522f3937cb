//! 大麦家 for the poller: batches of order numbers per `mpagingOrders` call,
//! under the vendor's rate (docs/vendors.md#大麦家-rate-batching-and-cost),
//! with a token that a login replaces.

use std::time::Duration;

use super::client::{DamaijiaClient, DamaijiaError};
use crate::rules::Vendor;
use crate::secret::Secret;
use crate::vendors::{Answer, Ask, Asked, Asker, Failure, FailureKind, Limits};

/// The vendor allows about 10 requests a second; stay under it.
const CALLS_PER_SECOND: i64 = 8;
/// Most calls (batches) one pass makes: calls are billed.
const MAX_CALLS_PER_PASS: i64 = 50;

/// What to set when the token is refused and the service cannot log in.
const NO_CREDENTIALS: &str = "token rejected (认证失败): set DAMAIJIA_TOKEN to a fresh token, or set DAMAIJIA_APP_ID and DAMAIJIA_APP_SECRET so the service can log in";

pub struct DamaijiaAsker {
    client: DamaijiaClient,
    token: Option<Secret>,
    limits: Limits,
}

impl DamaijiaAsker {
    pub fn new(
        client: DamaijiaClient,
        token: Option<Secret>,
        batch_size: usize,
        cooloff: Duration,
    ) -> Self {
        DamaijiaAsker {
            client,
            token,
            limits: Limits {
                per_call: batch_size.max(1),
                per_window: CALLS_PER_SECOND,
                window: Duration::from_secs(1),
                wait_for_slot: true,
                per_pass: Some(MAX_CALLS_PER_PASS),
                per_order_per_day: None,
                in_flight: 1,
                cooloff,
            },
        }
    }
}

impl Asker for DamaijiaAsker {
    fn vendor(&self) -> Vendor {
        Vendor::Damaijia
    }

    fn api(&self) -> &'static str {
        "mpagingOrders"
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn ask<'a>(&'a self, ids: &'a [String], token: Option<&'a Secret>) -> Ask<'a, Asked> {
        Box::pin(async move {
            let Some(token) = token else {
                return Asked {
                    result: Err(failure(&DamaijiaError::AuthFailed)),
                    http_status: None,
                    cost: None,
                };
            };
            match self.client.orders(token, ids).await {
                Ok(b) => Asked {
                    result: Ok(Answer {
                        found: b.found,
                        missing: b.missing,
                    }),
                    http_status: Some(200),
                    cost: b.cost,
                },
                Err(e) => Asked {
                    http_status: match e {
                        DamaijiaError::Http(s) => Some(s),
                        _ => None,
                    },
                    result: Err(failure(&e)),
                    cost: None,
                },
            }
        })
    }

    fn uses_token(&self) -> bool {
        true
    }

    fn configured_token(&self) -> Option<Secret> {
        self.token.clone()
    }

    fn login(&self) -> Option<Ask<'_, Result<Secret, Failure>>> {
        self.client.can_login().then(|| -> Ask<'_, _> {
            Box::pin(async { self.client.login().await.map_err(|e| failure(&e)) })
        })
    }

    fn token_help(&self) -> &'static str {
        if self.client.can_login() {
            "token rejected (认证失败) even after a new login: check DAMAIJIA_APP_ID / DAMAIJIA_APP_SECRET"
        } else {
            NO_CREDENTIALS
        }
    }
}

fn failure(e: &DamaijiaError) -> Failure {
    let kind = match e {
        DamaijiaError::AuthFailed => FailureKind::AuthFailed,
        DamaijiaError::NeedsFix { .. } => FailureKind::NeedsFix,
        DamaijiaError::NotFound => FailureKind::NotFound,
        DamaijiaError::BadRequest { .. } => FailureKind::BadRequest,
        DamaijiaError::Vendor { .. }
        | DamaijiaError::Http(_)
        | DamaijiaError::Transport(_)
        | DamaijiaError::Timeout(_)
        | DamaijiaError::Unparseable(_) => FailureKind::Trouble,
    };
    Failure::new(kind, e.outcome(), e.to_string())
}
