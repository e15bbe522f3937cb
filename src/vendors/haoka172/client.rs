//! The 172号卡 `GetOrderInfo` client (docs/vendors.md#172号卡-getorderinfo): one signed form POST per
//! order, answers parsed tolerantly into an [`Observation`] (source `poll`).
//!
//! It knows how to ask, not when or how often: budgets and schedules are the
//! poller's. Never logs the secret, the signature or personal data.

use std::time::Duration;

use serde_json::{Map, Value};

use super::labels::status_of;
use super::sign::user_sign;
use crate::rules::status::{Observation, OrderFields, Source};
use crate::secret::Secret;
use crate::vendors::value::{flag, parse_china_time, text};
use crate::vendors::Vendor;

/// Why a query produced no observation. Each variant is one recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `{"code":-1,"message":"订单不存在"}`.
    #[error("order not found at the vendor")]
    NotFound,
    /// The vendor refuses us for calling too often.
    #[error("blocked by the vendor: {0}")]
    Blocked(String),
    /// A well-formed refusal (`code != 0`) that is not one of the above.
    #[error("vendor error {code}: {message}")]
    Vendor { code: i64, message: String },
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

impl QueryError {
    /// The `vendor_calls.outcome` for this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::NotFound => "not_found",
            QueryError::Blocked(_) => "blocked",
            QueryError::Vendor { .. } => "vendor_error",
            QueryError::Http(_) => "http_error",
            QueryError::Transport(_) => "transport_error",
            QueryError::Timeout(_) => "timeout",
            QueryError::Unparseable(_) => "unparseable",
        }
    }

    /// Errors that say the vendor (or the path to it) is in trouble, as
    /// opposed to something about this one order.
    pub fn is_vendor_trouble(&self) -> bool {
        matches!(
            self,
            QueryError::Http(_)
                | QueryError::Transport(_)
                | QueryError::Timeout(_)
                | QueryError::Unparseable(_)
        )
    }
}

/// Words in a refusal that mean "too many calls" (the vendor's exact wording
/// is undocumented; HTTP 429/403 count too).
const BLOCK_WORDS: [&str; 8] = [
    "频繁",
    "拦截",
    "限流",
    "超过",
    "超出",
    "blocked",
    "too many",
    "rate limit",
];

#[derive(Clone)]
pub struct Haoka172Client {
    http: reqwest::Client,
    url: url::Url,
    user_id: String,
    secret: Secret,
}

impl std::fmt::Debug for Haoka172Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Haoka172Client")
            .field("url", &self.url.as_str())
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl Haoka172Client {
    pub fn new(
        base_url: &url::Url,
        user_id: &str,
        secret: Secret,
        timeout: Duration,
    ) -> Result<Self, String> {
        let url = base_url
            .join("api/order/GetOrderInfo")
            .map_err(|e| format!("bad HAOKA172_BASE_URL: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(Haoka172Client {
            http,
            url,
            user_id: user_id.to_owned(),
            secret,
        })
    }

    /// Query one order (`DownOrderID` = our order id).
    pub async fn get_order_info(&self, order_id: &str) -> Result<Observation, QueryError> {
        let ts = chrono::Utc::now().timestamp().to_string();
        let sign = user_sign(
            &[
                ("DownOrderID", order_id),
                ("Timestamp", &ts),
                ("user_id", &self.user_id),
            ],
            self.secret.expose(),
        );
        let form = [
            ("user_id", self.user_id.as_str()),
            ("Timestamp", ts.as_str()),
            ("DownOrderID", order_id),
            ("user_sign", sign.as_str()),
        ];
        let resp = self
            .http
            .post(self.url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| transport(&self.url, e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| transport(&self.url, e))?;
        parse_answer(order_id, status, &body)
    }
}

fn transport(url: &url::Url, e: reqwest::Error) -> QueryError {
    let cause = crate::vendors::transport_cause(url, &e);
    if e.is_timeout() {
        QueryError::Timeout(cause)
    } else {
        QueryError::Transport(cause)
    }
}

/// Turn an HTTP answer into an observation or a typed error. Pure.
pub fn parse_answer(
    order_id: &str,
    http_status: u16,
    body: &[u8],
) -> Result<Observation, QueryError> {
    if http_status == 429 || http_status == 403 {
        return Err(QueryError::Blocked(format!("HTTP {http_status}")));
    }
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let Ok(Value::Object(env)) = parsed else {
        return Err(if http_status >= 400 {
            QueryError::Http(http_status)
        } else {
            QueryError::Unparseable(format!("HTTP {http_status}, body is not a JSON object"))
        });
    };
    let code = match env.get("code") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let message = env
        .get("message")
        .or_else(|| env.get("msg"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_owned();
    let Some(code) = code else {
        return Err(if http_status >= 400 {
            QueryError::Http(http_status)
        } else {
            QueryError::Unparseable("no `code` in the answer".into())
        });
    };
    if code != 0 {
        let lower = message.to_lowercase();
        if BLOCK_WORDS.iter().any(|w| lower.contains(w)) {
            return Err(QueryError::Blocked(message));
        }
        if message.contains("不存在") {
            return Err(QueryError::NotFound);
        }
        return Err(QueryError::Vendor { code, message });
    }
    if http_status >= 400 {
        return Err(QueryError::Http(http_status));
    }
    let data = match env.get("data") {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(QueryError::Unparseable(
                "success without a `data` object".into(),
            ))
        }
    };
    observation(order_id, data)
}

fn get<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn observation(order_id: &str, d: &Map<String, Value>) -> Result<Observation, QueryError> {
    if let Some(down) = text(get(d, "downOrderNo")) {
        if down != order_id && !down.contains('*') {
            return Err(QueryError::Unparseable(format!(
                "answer is for another order ({down}, asked {order_id})"
            )));
        }
    }
    let label = text(get(d, "orderStatus"))
        .ok_or_else(|| QueryError::Unparseable("no orderStatus".into()))?;
    // The vendor number is indexed and corroborates callback signatures:
    // an answer with an unusable one is not an answer.
    let vendor_order_no = text(get(d, "orderNo"));
    if let Some(n) = &vendor_order_no {
        crate::rules::ids::check("orderNo", n).map_err(QueryError::Unparseable)?;
    }
    let mut details = std::collections::BTreeMap::new();
    if let Some(t) = text(get(d, "createTime")) {
        details.insert("create_time".to_owned(), Value::String(t));
    }
    let active_raw = text(get(d, "activationTime"));
    let activated_at = active_raw.as_deref().and_then(parse_china_time);
    if let (Some(raw), None) = (&active_raw, activated_at) {
        details.insert("active_time_raw".to_owned(), Value::String(raw.clone()));
    }
    Ok(Observation {
        vendor: Vendor::Haoka172,
        order_id: order_id.to_owned(),
        source: Source::Poll,
        status: status_of(&label),
        vendor_status: Some(label),
        fields: OrderFields {
            vendor_order_no,
            express_name: text(get(d, "expressName")),
            express_code: text(get(d, "expressCode")),
            third_phone: text(get(d, "thirdPhone")),
            iccid: text(get(d, "iccid")),
            card_status: text(get(d, "cardStatus")),
            activated_at,
            first_charge: flag(get(d, "isFirstCharge")),
            first_charge_amount: text(get(d, "firstCharge")),
            remark: text(get(d, "remark")),
            details,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::status::Status;

    const SEED_SUCCESS: &str = r#"{"data":{"orderNo":"mlkj230412165954****","downOrderNo":"4278****",
        "name":"田**","expressName":"京东","expressCode":"JDV01098242****","orderStatus":"已发货",
        "createTime":"2023-04-12 16:59:54","thirdPhone":"1309554****","remark":"[已发货]",
        "cardStatus":"未激活","activationTime":"","isFirstCharge":"0","firstCharge":""},
        "code":0,"message":"成功","errs":null}"#;

    #[test]
    fn the_seed_success_answer_parses_into_a_poll_observation() {
        let obs = parse_answer("4278****", 200, SEED_SUCCESS.as_bytes()).unwrap();
        assert_eq!(obs.status, Status::Shipped);
        assert_eq!(obs.vendor_status.as_deref(), Some("已发货"));
        assert_eq!(obs.source, Source::Poll);
        assert_eq!(
            obs.fields.vendor_order_no.as_deref(),
            Some("mlkj230412165954****")
        );
        assert_eq!(obs.fields.express_code.as_deref(), Some("JDV01098242****"));
        assert_eq!(obs.fields.first_charge, Some(false));
        assert_eq!(obs.fields.first_charge_amount, None);
        assert_eq!(obs.fields.activated_at, None);
        assert_eq!(obs.fields.details["create_time"], "2023-04-12 16:59:54");
        assert!(
            !serde_json::to_string(&obs).unwrap().contains("田"),
            "the name is not kept"
        );
    }

    #[test]
    fn numeric_flags_and_amounts_and_a_string_code_are_tolerated() {
        let body = r#"{"code":"0","data":{"downOrderNo":"D1","orderStatus":"已完成","isFirstCharge":1,
            "firstCharge":50.5,"activationTime":"2024-01-02 10:00:00","cardStatus":"已激活"}}"#;
        let obs = parse_answer("D1", 200, body.as_bytes()).unwrap();
        assert_eq!(obs.status, Status::Completed);
        assert_eq!(obs.fields.first_charge, Some(true));
        assert_eq!(obs.fields.first_charge_amount.as_deref(), Some("50.5"));
        assert!(obs.fields.activated_at.is_some());
    }

    #[test]
    fn errors_are_typed() {
        let cases: Vec<(u16, &str, QueryError)> = vec![
            (
                200,
                r#"{"code":-1,"message":"订单不存在","errs":null}"#,
                QueryError::NotFound,
            ),
            (
                200,
                r#"{"code":-1,"message":"请求过于频繁,已拦截"}"#,
                QueryError::Blocked("请求过于频繁,已拦截".into()),
            ),
            (429, "", QueryError::Blocked("HTTP 429".into())),
            (
                200,
                r#"{"code":-2,"message":"签名错误"}"#,
                QueryError::Vendor {
                    code: -2,
                    message: "签名错误".into(),
                },
            ),
            (500, "<html>oops</html>", QueryError::Http(500)),
            (502, r#"{"code":0,"data":{}}"#, QueryError::Http(502)),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                parse_answer("D1", status, body.as_bytes()).unwrap_err(),
                want,
                "{status} {body}"
            );
        }
        for garbage in [
            "not json",
            "[]",
            r#"{"message":"x"}"#,
            r#"{"code":0}"#,
            r#"{"code":0,"data":{"downOrderNo":"D1"}}"#,
        ] {
            assert!(
                matches!(
                    parse_answer("D1", 200, garbage.as_bytes()),
                    Err(QueryError::Unparseable(_))
                ),
                "{garbage}"
            );
        }
    }

    #[test]
    fn an_answer_with_an_unusable_vendor_number_is_unparseable() {
        let long = "9".repeat(200);
        let body = format!(r#"{{"code":0,"data":{{"orderNo":"{long}","orderStatus":"已发货"}}}}"#);
        assert!(matches!(
            parse_answer("D1", 200, body.as_bytes()),
            Err(QueryError::Unparseable(m)) if m.contains("orderNo is 200 bytes")
        ));
    }

    #[test]
    fn an_answer_about_another_order_is_rejected() {
        let body = r#"{"code":0,"data":{"downOrderNo":"OTHER","orderStatus":"已发货"}}"#;
        assert!(matches!(
            parse_answer("D1", 200, body.as_bytes()),
            Err(QueryError::Unparseable(_))
        ));
    }
}
