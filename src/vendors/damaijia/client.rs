//! The 大麦家 client: `mpagingOrders` for a batch of order numbers and
//! `user_login` for a new token. Knows how to ask and what each status code
//! means; when and how often is the poller's business.
//!
//! Never logs the token, the app secret, or any answer body (they carry
//! receiver names, phones and addresses).

use std::time::Duration;

use serde_json::{json, Value};

use super::parse::{self, Reply};
use crate::rules::status::Observation;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DamaijiaError {
    /// Status 200 (认证失败): the token is wrong or was replaced by a login.
    #[error("token rejected (认证失败)")]
    AuthFailed,
    /// Balance or account configuration: polling must pause until fixed.
    #[error("status {status}: {fix}")]
    NeedsFix { status: i64, fix: &'static str },
    /// Status 2004: the order (or, for a batch, none of them) exists.
    #[error("order does not exist (2004)")]
    NotFound,
    /// Status 132 or 422: our request is wrong.
    #[error("request rejected as invalid (status {status}: {err})")]
    BadRequest { status: i64, err: String },
    /// 2010, 500 or an undocumented status: try again later.
    #[error("vendor failure (status {status}: {err})")]
    Vendor { status: i64, err: String },
    #[error("HTTP {0}")]
    Http(u16),
    /// No answer: the host and why (`vendors::transport_cause`).
    #[error("transport: {0}")]
    Transport(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("unparseable answer: {0}")]
    Unparseable(String),
}

impl DamaijiaError {
    pub fn outcome(&self) -> &'static str {
        match self {
            DamaijiaError::AuthFailed => "auth_failed",
            DamaijiaError::NeedsFix { .. } => "needs_fix",
            DamaijiaError::NotFound => "not_found",
            DamaijiaError::BadRequest { .. } => "bad_request",
            DamaijiaError::Vendor { .. } => "vendor_error",
            DamaijiaError::Http(_) => "http_error",
            DamaijiaError::Transport(_) => "transport_error",
            DamaijiaError::Timeout(_) => "timeout",
            DamaijiaError::Unparseable(_) => "unparseable",
        }
    }

    /// The vendor or the path to it is in trouble (counts towards a pause).
    pub fn is_vendor_trouble(&self) -> bool {
        matches!(
            self,
            DamaijiaError::Vendor { .. }
                | DamaijiaError::Http(_)
                | DamaijiaError::Transport(_)
                | DamaijiaError::Timeout(_)
                | DamaijiaError::Unparseable(_)
        )
    }
}

/// What to fix for the statuses that pause polling.
fn needs_fix(status: i64) -> Option<&'static str> {
    Some(match status {
        209 => "大麦家 balance too low (余额不足): top up the account",
        2000 => "the order API is not enabled for this 大麦家 account: enable it in the 大麦家 back office",
        2011 => "the PDD shop is not bound to this 大麦家 account: check DAMAIJIA_OWNER_ID or bind the shop",
        2012 => "the app is not subscribed: subscribe it in the 大麦家 back office",
        _ => return None,
    })
}

/// The answer to one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// One per requested number that was in the answer.
    pub found: Vec<Observation>,
    /// Requested numbers absent from the answer: "not found".
    pub missing: Vec<String>,
    /// `deduct_money`, when the answer says.
    pub cost: Option<i64>,
}

#[derive(Clone)]
pub struct DamaijiaClient {
    http: reqwest::Client,
    orders_url: url::Url,
    login_url: url::Url,
    owner_id: String,
    edition: Option<String>,
    app: Option<(String, Secret)>,
}

impl std::fmt::Debug for DamaijiaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DamaijiaClient")
            .field("orders_url", &self.orders_url.as_str())
            .field("owner_id", &self.owner_id)
            .field("can_login", &self.app.is_some())
            .finish_non_exhaustive()
    }
}

impl DamaijiaClient {
    pub fn new(
        base_url: &url::Url,
        owner_id: &str,
        edition: Option<String>,
        app: Option<(String, Secret)>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let join = |p: &str| {
            base_url
                .join(p)
                .map_err(|e| format!("bad DAMAIJIA_BASE_URL: {e}"))
        };
        Ok(DamaijiaClient {
            http: reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .timeout(timeout)
                .build()
                .map_err(|e| format!("cannot build HTTP client: {e}"))?,
            orders_url: join("vv/external/mpagingOrders")?,
            login_url: join("vv/external/user_login")?,
            owner_id: owner_id.to_owned(),
            edition,
            app,
        })
    }

    pub fn can_login(&self) -> bool {
        self.app.is_some()
    }

    /// Read a batch of orders. `edition` is sent only when configured.
    pub async fn orders(
        &self,
        token: &Secret,
        order_sns: &[String],
    ) -> Result<Batch, DamaijiaError> {
        let mut body = json!({"owner_id": self.owner_id, "order_sns": order_sns});
        if let Some(e) = &self.edition {
            body["edition"] = Value::String(e.clone());
        }
        let resp = self
            .http
            .post(self.orders_url.clone())
            .header(reqwest::header::AUTHORIZATION, token.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| transport(&self.orders_url, e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport(&self.orders_url, e))?;
        batch(order_sns, status, &bytes)
    }

    /// Log in for a new token (this invalidates every older token).
    pub async fn login(&self) -> Result<Secret, DamaijiaError> {
        let Some((app_id, secret)) = &self.app else {
            return Err(DamaijiaError::AuthFailed);
        };
        let resp = self
            .http
            .post(self.login_url.clone())
            .json(&json!({"app_id": app_id, "app_secret": secret.expose()}))
            .send()
            .await
            .map_err(|e| transport(&self.login_url, e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport(&self.login_url, e))?;
        login_token(status, &bytes)
    }
}

fn transport(url: &url::Url, e: reqwest::Error) -> DamaijiaError {
    let cause = crate::vendors::transport_cause(url, &e);
    if e.is_timeout() {
        DamaijiaError::Timeout(cause)
    } else {
        DamaijiaError::Transport(cause)
    }
}

fn refused(status: i64, err: String) -> DamaijiaError {
    if let Some(fix) = needs_fix(status) {
        return DamaijiaError::NeedsFix { status, fix };
    }
    match status {
        200 => DamaijiaError::AuthFailed,
        2004 => DamaijiaError::NotFound,
        132 | 422 => DamaijiaError::BadRequest { status, err },
        _ => DamaijiaError::Vendor { status, err },
    }
}

/// An HTTP answer to a batch → what was found and what was missing. Pure.
pub fn batch(requested: &[String], http_status: u16, body: &[u8]) -> Result<Batch, DamaijiaError> {
    match parse::reply(body) {
        Err(why) if http_status >= 400 => {
            let _ = why;
            Err(DamaijiaError::Http(http_status))
        }
        Err(why) => Err(DamaijiaError::Unparseable(why)),
        Ok(Reply::Refused { status, err }) => Err(refused(status, err)),
        Ok(Reply::Orders { orders, cost }) => {
            let mut found = Vec::new();
            for o in &orders {
                // Match by order_sn, never by position; ignore what we did not ask.
                if let Some(obs) =
                    parse::observation(o).filter(|ob| requested.contains(&ob.order_id))
                {
                    if !found
                        .iter()
                        .any(|f: &Observation| f.order_id == obs.order_id)
                    {
                        found.push(obs);
                    }
                }
            }
            let missing = requested
                .iter()
                .filter(|r| !found.iter().any(|f| &f.order_id == *r))
                .cloned()
                .collect();
            Ok(Batch {
                found,
                missing,
                cost,
            })
        }
    }
}

/// The token in a login answer (`data.access_token`, `data.token`, or
/// `data` itself).
pub fn login_token(http_status: u16, body: &[u8]) -> Result<Secret, DamaijiaError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        if http_status >= 400 {
            DamaijiaError::Http(http_status)
        } else {
            DamaijiaError::Unparseable("login answer is not JSON".into())
        }
    })?;
    let status = v
        .get("status")
        .and_then(|s| s.as_i64().or_else(|| s.as_str()?.parse().ok()));
    match status {
        Some(0) => {}
        Some(s) => {
            let err = v
                .get("err")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            // A refused login is a credentials problem.
            return Err(match refused(s, err) {
                DamaijiaError::Vendor { status, err }
                | DamaijiaError::BadRequest { status, err }
                    if status != 2010 && status != 500 =>
                {
                    let _ = (status, err);
                    DamaijiaError::AuthFailed
                }
                e => e,
            });
        }
        None => {
            return Err(DamaijiaError::Unparseable(
                "login answer has no status".into(),
            ))
        }
    }
    let data = v.get("data");
    let token = match data {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(m)) => ["access_token", "accessToken", "token"]
            .iter()
            .find_map(|k| m.get(*k).and_then(Value::as_str).map(str::to_owned)),
        _ => None,
    };
    token
        .filter(|t| !t.trim().is_empty())
        .map(|t| Secret::new(t.trim()))
        .ok_or_else(|| DamaijiaError::Unparseable("login answer has no token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(sn: &str) -> Value {
        json!({"order_sn": sn, "order_status": 2, "refund_status": 1, "receiverName": "x"})
    }

    #[test]
    fn requested_numbers_absent_from_the_answer_are_missing() {
        let req = vec!["A".to_owned(), "B".to_owned(), "C".to_owned()];
        let body = serde_json::to_vec(
            &json!({"status": 0, "data": {"content": [order("C"), order("A"), order("ZZZ")]}}),
        )
        .unwrap();
        let b = batch(&req, 200, &body).unwrap();
        let ids: Vec<_> = b.found.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["C", "A"], "matched by order_sn; unasked ZZZ ignored");
        assert_eq!(b.missing, ["B"]);
    }

    #[test]
    fn every_documented_status_maps_to_its_handling() {
        let req = vec!["A".to_owned()];
        type Check = fn(&DamaijiaError) -> bool;
        let cases: Vec<(i64, Check)> = vec![
            (132, |e| {
                matches!(e, DamaijiaError::BadRequest { status: 132, .. })
            }),
            (422, |e| {
                matches!(e, DamaijiaError::BadRequest { status: 422, .. })
            }),
            (200, |e| *e == DamaijiaError::AuthFailed),
            (
                209,
                |e| matches!(e, DamaijiaError::NeedsFix { status: 209, fix } if fix.contains("top up")),
            ),
            (2000, |e| {
                matches!(e, DamaijiaError::NeedsFix { status: 2000, .. })
            }),
            (
                2011,
                |e| matches!(e, DamaijiaError::NeedsFix { status: 2011, fix } if fix.contains("DAMAIJIA_OWNER_ID")),
            ),
            (2012, |e| {
                matches!(e, DamaijiaError::NeedsFix { status: 2012, .. })
            }),
            (2004, |e| *e == DamaijiaError::NotFound),
            (2010, |e| {
                matches!(e, DamaijiaError::Vendor { status: 2010, .. }) && e.is_vendor_trouble()
            }),
            (500, |e| {
                matches!(e, DamaijiaError::Vendor { status: 500, .. }) && e.is_vendor_trouble()
            }),
        ];
        for (status, check) in cases {
            let body =
                serde_json::to_vec(&json!({"status": status, "err": "x", "data": []})).unwrap();
            let e = batch(&req, 200, &body).unwrap_err();
            assert!(check(&e), "{status}: {e:?}");
        }
        assert_eq!(
            batch(&req, 502, b"<html>").unwrap_err(),
            DamaijiaError::Http(502)
        );
        assert!(matches!(
            batch(&req, 200, b"<html>").unwrap_err(),
            DamaijiaError::Unparseable(_)
        ));
    }

    #[test]
    fn login_answers_yield_the_token() {
        for body in [
            json!({"status": 0, "data": {"access_token": "t1"}}),
            json!({"status": 0, "data": {"accessToken": "t1"}}),
            json!({"status": 0, "data": {"token": "t1"}}),
            json!({"status": 0, "data": "t1"}),
        ] {
            let t = login_token(200, &serde_json::to_vec(&body).unwrap()).unwrap();
            assert_eq!(t.expose(), "t1");
        }
        let bad = serde_json::to_vec(&json!({"status": 422, "err": "app_secret 错误"})).unwrap();
        assert_eq!(
            login_token(200, &bad).unwrap_err(),
            DamaijiaError::AuthFailed
        );
    }
}
