//! The 172号卡 order-status callback (docs/vendors.md#172号卡-order-status-callback): from the raw request
//! (content type, body bytes, `sign` header) to either a verified
//! [`Observation`], a test push, or a precise rejection.
//!
//! Pure and synchronous: no I/O, no clock. It never logs the body, the sign
//! or personal data; the handler stores the raw request whatever happens here.

use serde_json::{Map, Value};

use super::labels::status_of;
use super::sign::{verify_callback, CallbackKey, SignError};
use crate::rules::ids;
use crate::rules::inbound::{Outcome, Verdict};
use crate::rules::status::{Observation, OrderFields, Source};
use crate::rules::Vendor;
use crate::vendors::value::{flag, parse_china_time, text};

/// `OrderNo172` and `Remark` of the back office's test push.
pub const TEST_ORDER_172: &str = "TestOrder172";
pub const TEST_REMARK: &str = "推送测试";

/// The envelope and its `Data`, with every value read tolerantly.
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    pub request_id: String,
    /// `sign` from the body, when the sender put it there instead of a header.
    pub body_sign: Option<String>,
    pub order_no: String,
    pub order_no_172: Option<String>,
    pub order_status: String,
    pub fields: OrderFields,
}

impl Callback {
    pub fn is_test_push(&self) -> bool {
        self.order_no_172.as_deref() == Some(TEST_ORDER_172)
            && self.fields.remark.as_deref() == Some(TEST_REMARK)
    }

    pub fn into_observation(self) -> Observation {
        Observation {
            vendor: Vendor::Haoka172,
            status: status_of(&self.order_status),
            vendor_status: Some(self.order_status),
            order_id: self.order_no,
            source: Source::Callback,
            fields: self.fields,
        }
    }
}

/// Why a callback was not accepted. Each variant is one outcome in
/// `inbound_callbacks` and one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed callback: {0}")]
    Malformed(String),
    #[error("bad signature: {0}")]
    BadSignature(SignError),
    #[error("callback signature cannot be verified: HAOKA172_SECRET is not configured")]
    NotConfigured,
}

impl Rejection {
    fn outcome(&self) -> Outcome {
        match self {
            Rejection::Malformed(_) => Outcome::Malformed,
            Rejection::BadSignature(_) => Outcome::BadSignature,
            Rejection::NotConfigured => Outcome::NotConfigured,
        }
    }
}

/// Parse and verify. A signature that decrypts to `OrderNo172` still has to
/// be corroborated against the number we hold (`status::corroborate`),
/// which only the store can do. A rejection keeps what could be read
/// (request id, order id) so the quarantined row is as useful as possible.
pub fn check(
    content_type: Option<&str>,
    body: &[u8],
    sign_header: Option<&str>,
    keys: &[CallbackKey],
) -> Verdict {
    match judge(content_type, body, sign_header, keys) {
        Ok(v) => v,
        Err((rejection, partial)) => Verdict::Reject {
            outcome: rejection.outcome(),
            error: rejection.to_string(),
            request_id: partial.request_id,
            order_id: partial.order_id,
        },
    }
}

fn judge(
    content_type: Option<&str>,
    body: &[u8],
    sign_header: Option<&str>,
    keys: &[CallbackKey],
) -> Result<Verdict, (Rejection, Partial)> {
    let cb = parse(content_type, body)?;
    // Both ids passed `ids::check` in `parse`.
    let partial = Partial {
        request_id: Some(cb.request_id.clone()),
        order_id: Some(cb.order_no.clone()),
    };
    if cb.is_test_push() {
        return Ok(Verdict::Test {
            request_id: cb.request_id,
        });
    }
    if keys.is_empty() {
        return Err((Rejection::NotConfigured, partial));
    }
    let sign = sign_header
        .filter(|s| !s.trim().is_empty())
        .or(cb.body_sign.as_deref());
    match verify_callback(keys, sign, &cb.order_no, cb.order_no_172.as_deref()) {
        Ok(signed_over) => Ok(Verdict::Apply {
            request_id: cb.request_id.clone(),
            signed_over,
            observation: Box::new(cb.into_observation()),
        }),
        Err(e) => Err((Rejection::BadSignature(e), partial)),
    }
}

/// The identifiers we could read from a rejected request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partial {
    pub request_id: Option<String>,
    pub order_id: Option<String>,
}

fn malformed(msg: impl Into<String>, partial: Partial) -> (Rejection, Partial) {
    (Rejection::Malformed(msg.into()), partial)
}

/// How a callback body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Form,
    Multipart,
}

/// Which format to read `body` in. A body that is a JSON object is JSON
/// whatever the content type says: some HTTP clients label every POST
/// `application/x-www-form-urlencoded` (or `text/plain`, or nothing), and a
/// JSON object read as a form would lose every field. Otherwise the content
/// type decides; without a usable one the body is sniffed (JSON if it
/// starts with `{`, so a broken JSON body is reported as such).
pub fn body_format(content_type: Option<&str>, body: &[u8]) -> BodyFormat {
    let mime = mime_of(content_type);
    let declared = match mime.as_str() {
        "multipart/form-data" => Some(BodyFormat::Multipart),
        "application/x-www-form-urlencoded" => Some(BodyFormat::Form),
        _ => None,
    };
    match declared {
        // A form that merely starts with `{` stays a form: only a whole JSON
        // object overrides what the sender declared.
        Some(_) if is_json_object(body) => BodyFormat::Json,
        Some(declared) => declared,
        None if mime.contains("json") || looks_like_json(body) => BodyFormat::Json,
        None => BodyFormat::Form,
    }
}

fn mime_of(content_type: Option<&str>) -> String {
    content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Parse the envelope from JSON, urlencoded or multipart bodies, in the
/// format `body_format` says.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Callback, (Rejection, Partial)> {
    let none = Partial::default();
    let fields: Map<String, Value> = match body_format(content_type, body) {
        BodyFormat::Multipart => {
            let boundary = content_type
                .and_then(|c| multer::parse_boundary(c).ok())
                .ok_or_else(|| malformed("multipart body without a boundary", none.clone()))?;
            parse_multipart(body, &boundary).map_err(|m| malformed(m, none.clone()))?
        }
        BodyFormat::Form => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| malformed(format!("form body does not decode: {e}"), none.clone()))?;
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect()
        }
        BodyFormat::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(malformed("JSON body is not an object", none)),
            Err(e) => return Err(malformed(format!("body is not valid JSON: {e}"), none)),
        },
    };
    from_envelope(&fields)
}

fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// The whole body is one JSON object (checked without building it).
fn is_json_object(body: &[u8]) -> bool {
    looks_like_json(body) && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

fn parse_multipart(body: &[u8], boundary: &str) -> Result<Map<String, Value>, String> {
    let bytes = bytes::Bytes::copy_from_slice(body);
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
    let mut mp = multer::Multipart::new(stream, boundary);
    // The whole body is already in memory; the stream never waits.
    futures_util::FutureExt::now_or_never(async move {
        let mut out = Map::new();
        while let Some(field) = mp.next_field().await.map_err(|e| e.to_string())? {
            let name = field.name().unwrap_or("").to_owned();
            let text = field.text().await.map_err(|e| e.to_string())?;
            out.insert(name, Value::String(text));
        }
        Ok(out)
    })
    .unwrap_or_else(|| Err("multipart body is incomplete".to_owned()))
    .map_err(|e| format!("multipart body does not decode: {e}"))
}

/// Case-insensitive key lookup.
fn get<'a>(m: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
        .map(|(_, v)| v)
}

fn from_envelope(env: &Map<String, Value>) -> Result<Callback, (Rejection, Partial)> {
    let request_id = text(get(env, &["RequidId", "RequestId"]));
    let no_order = || Partial {
        request_id: ids::usable(request_id.clone()),
        order_id: None,
    };
    let data = match get(env, &["Data"]) {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(malformed("Data is not a JSON object", no_order())),
            Err(e) => {
                return Err(malformed(
                    format!("Data is not valid JSON: {e}"),
                    no_order(),
                ))
            }
        },
        Some(_) => {
            return Err(malformed(
                "Data is neither a JSON string nor an object",
                no_order(),
            ))
        }
        None => return Err(malformed("Data missing", no_order())),
    };
    let order_no = text(get(&data, &["OrderNo"]));
    let order_no_172 = text(get(&data, &["OrderNo172"]));
    let partial = Partial {
        request_id: ids::usable(request_id.clone()),
        order_id: ids::usable(order_no.clone()),
    };
    let Some(request_id) = request_id else {
        return Err(malformed("RequidId missing", partial));
    };
    let Some(order_no) = order_no else {
        return Err(malformed("Data.OrderNo missing", partial));
    };
    // Every id is indexed and logged: bounded and printable, or the whole
    // callback is malformed (its raw body is kept).
    for (what, id) in [
        ("RequidId", Some(&request_id)),
        ("Data.OrderNo", Some(&order_no)),
        ("Data.OrderNo172", order_no_172.as_ref()),
    ] {
        if let Some(id) = id {
            ids::check(what, id).map_err(|m| malformed(m, partial.clone()))?;
        }
    }
    let Some(order_status) = text(get(&data, &["OrderStatus"])) else {
        return Err(malformed("Data.OrderStatus missing", partial));
    };
    let mut details = std::collections::BTreeMap::new();
    let active_raw = text(get(&data, &["ActiveTime"]));
    let activated_at = active_raw.as_deref().and_then(parse_china_time);
    if let (Some(raw), None) = (&active_raw, activated_at) {
        details.insert("active_time_raw".to_owned(), Value::String(raw.clone()));
    }
    let fields = OrderFields {
        vendor_order_no: order_no_172,
        express_name: text(get(&data, &["ExpressName"])),
        express_code: text(get(&data, &["ExpressCode"])),
        third_phone: text(get(&data, &["ThirdPhone"])),
        iccid: text(get(&data, &["Iccid", "ICCID"])),
        card_status: text(get(&data, &["CardStatus"])),
        activated_at,
        first_charge: flag(get(&data, &["IsFirstCharge"])),
        first_charge_amount: text(get(&data, &["FirstCharge"])),
        remark: text(get(&data, &["Remark"])),
        details,
    };
    Ok(Callback {
        request_id,
        // `sign` first, then `Sign`, as the PHP integration reads them (an
        // empty one counts as absent); any other spelling last.
        body_sign: ["sign", "Sign"]
            .into_iter()
            .find_map(|k| text(env.get(k)))
            .or_else(|| text(get(env, &["sign"]))),
        order_no_172: fields.vendor_order_no.clone(),
        order_no,
        order_status,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::status::{SignedOver, Status};
    use chrono::{TimeZone, Utc};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn data() -> Value {
        serde_json::json!({
            "OrderNo": "DOWN20240101001",
            "OrderNo172": "mlkj230412165954TEST",
            "OrderStatus": "已发货",
            "ThirdPhone": "13095541234",
            "Remark": "[已发货]",
            "ExpressName": "京东",
            "ExpressCode": "JDV010982421234",
            "CardStatus": "已激活",
            "ActiveTime": "2024-01-02 10:00:00",
            "Iccid": "89860012345678901234",
            "IsFirstCharge": 1,
            "FirstCharge": 50
        })
    }

    fn json_body(data: &Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"RequidId": "R1", "Data": data.to_string()}))
            .unwrap()
    }

    fn keys() -> Vec<CallbackKey> {
        vec![CallbackKey::from_secret(SECRET)]
    }

    #[test]
    fn json_envelope_with_data_string_parses_every_field() {
        let cb = parse(Some("application/json"), &json_body(&data())).unwrap();
        assert_eq!(cb.request_id, "R1");
        assert_eq!(cb.order_no, "DOWN20240101001");
        assert_eq!(cb.order_status, "已发货");
        let f = &cb.fields;
        assert_eq!(f.vendor_order_no.as_deref(), Some("mlkj230412165954TEST"));
        assert_eq!(f.express_code.as_deref(), Some("JDV010982421234"));
        assert_eq!(f.iccid.as_deref(), Some("89860012345678901234"));
        assert_eq!(f.first_charge, Some(true));
        assert_eq!(f.first_charge_amount.as_deref(), Some("50"));
        assert_eq!(
            f.activated_at,
            Some(Utc.with_ymd_and_hms(2024, 1, 2, 2, 0, 0).unwrap()),
            "China time is UTC+8"
        );
        let obs = cb.into_observation();
        assert_eq!(obs.status, Status::Shipped);
        assert_eq!(obs.vendor_status.as_deref(), Some("已发货"));
        assert_eq!(obs.source, Source::Callback);
    }

    #[test]
    fn data_as_object_and_lowercase_keys_parse() {
        let body =
            serde_json::to_vec(&serde_json::json!({"requidid": "R2", "data": data()})).unwrap();
        let cb = parse(Some("application/json; charset=utf-8"), &body).unwrap();
        assert_eq!(cb.request_id, "R2");
        assert_eq!(cb.order_no, "DOWN20240101001");
    }

    #[test]
    fn urlencoded_body_parses_and_a_body_sign_is_read() {
        let body = serde_urlencoded::to_string([
            ("RequidId", "R3"),
            ("Data", &data().to_string()),
            ("sign", "abc="),
        ])
        .unwrap();
        let cb = parse(Some("application/x-www-form-urlencoded"), body.as_bytes()).unwrap();
        assert_eq!(cb.request_id, "R3");
        assert_eq!(cb.body_sign.as_deref(), Some("abc="));
    }

    #[test]
    fn multipart_body_parses() {
        let d = data().to_string();
        let body = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"RequidId\"\r\n\r\nR4\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"Data\"\r\n\r\n{d}\r\n--XyZ--\r\n"
        );
        let cb = parse(Some("multipart/form-data; boundary=XyZ"), body.as_bytes()).unwrap();
        assert_eq!(cb.request_id, "R4");
        assert_eq!(cb.order_status, "已发货");
    }

    #[test]
    fn missing_content_type_is_sniffed() {
        assert_eq!(parse(None, &json_body(&data())).unwrap().request_id, "R1");
        let form = serde_urlencoded::to_string([("RequidId", "R5"), ("Data", &data().to_string())])
            .unwrap();
        assert_eq!(parse(None, form.as_bytes()).unwrap().request_id, "R5");
    }

    #[test]
    fn is_first_charge_as_int_string_or_bool() {
        for (v, want) in [
            (serde_json::json!(1), Some(true)),
            (serde_json::json!("1"), Some(true)),
            (serde_json::json!(0), Some(false)),
            (serde_json::json!("0"), Some(false)),
            (serde_json::json!(true), Some(true)),
            (serde_json::json!(null), None),
            (serde_json::json!(""), None),
        ] {
            let mut d = data();
            d["IsFirstCharge"] = v.clone();
            let cb = parse(Some("application/json"), &json_body(&d)).unwrap();
            assert_eq!(cb.fields.first_charge, want, "{v}");
        }
    }

    #[test]
    fn nulls_and_empty_strings_are_absent_and_bad_time_is_kept_raw() {
        let mut d = data();
        d["ExpressCode"] = Value::Null;
        d["CardStatus"] = Value::String(String::new());
        d["ActiveTime"] = Value::String("yesterday".into());
        let cb = parse(Some("application/json"), &json_body(&d)).unwrap();
        assert_eq!(cb.fields.express_code, None);
        assert_eq!(cb.fields.card_status, None);
        assert_eq!(cb.fields.activated_at, None);
        assert_eq!(cb.fields.details["active_time_raw"], "yesterday");
    }

    #[test]
    fn malformed_bodies_are_rejected_with_precise_reasons() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"{not json", "body is not valid JSON"),
            (b"[1,2]", "JSON body is not an object"),
            (br#"{"RequidId":"R"}"#, "Data missing"),
            (
                br#"{"RequidId":"R","Data":"{oops"}"#,
                "Data is not valid JSON",
            ),
            (
                br#"{"RequidId":"R","Data":"[1]"}"#,
                "Data is not a JSON object",
            ),
            (
                br#"{"RequidId":"R","Data":{"OrderStatus":"x"}}"#,
                "Data.OrderNo missing",
            ),
            (
                br#"{"RequidId":"R","Data":{"OrderNo":"D1"}}"#,
                "Data.OrderStatus missing",
            ),
            (
                br#"{"Data":{"OrderNo":"D1","OrderStatus":"x"}}"#,
                "RequidId missing",
            ),
        ];
        for (body, want) in cases {
            let (rej, _) = parse(Some("application/json"), body).unwrap_err();
            match rej {
                Rejection::Malformed(m) => assert!(m.contains(want), "{m} should contain {want}"),
                other => panic!("{other:?}"),
            }
        }
        let (_, partial) = parse(
            Some("application/json"),
            br#"{"RequidId":"R9","Data":{"OrderNo":"D9"}}"#,
        )
        .unwrap_err();
        assert_eq!(partial.request_id.as_deref(), Some("R9"));
        assert_eq!(partial.order_id.as_deref(), Some("D9"));
    }

    #[test]
    fn check_verifies_header_sign_over_either_number() {
        let key = CallbackKey::from_secret(SECRET);
        let body = json_body(&data());
        for (plain, want) in [
            ("DOWN20240101001", SignedOver::OrderId),
            ("mlkj230412165954TEST", SignedOver::VendorOrderNo),
        ] {
            let v = judge(
                Some("application/json"),
                &body,
                Some(&key.encrypt(plain)),
                &keys(),
            )
            .unwrap();
            match v {
                Verdict::Apply { signed_over, .. } => assert_eq!(signed_over, want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn check_reads_sign_from_the_body_when_no_header() {
        let key = CallbackKey::from_secret(SECRET);
        let body = serde_json::to_vec(&serde_json::json!({
            "RequidId": "R1", "Data": data().to_string(), "Sign": key.encrypt("DOWN20240101001")
        }))
        .unwrap();
        assert!(matches!(
            judge(Some("application/json"), &body, None, &keys()),
            Ok(Verdict::Apply { .. })
        ));
    }

    #[test]
    fn check_rejects_bad_signatures_and_unconfigured_keys() {
        let body = json_body(&data());
        let err = judge(Some("application/json"), &body, None, &keys()).unwrap_err();
        assert_eq!(err.0, Rejection::BadSignature(SignError::Missing));
        assert_eq!(err.1.request_id.as_deref(), Some("R1"));
        let err = judge(Some("application/json"), &body, Some("garbage!!"), &keys()).unwrap_err();
        assert_eq!(err.0, Rejection::BadSignature(SignError::NotBase64));
        let err = judge(Some("application/json"), &body, Some("x"), &[]).unwrap_err();
        assert_eq!(err.0, Rejection::NotConfigured);
    }

    #[test]
    fn test_push_needs_no_signature() {
        let d = serde_json::json!({"OrderNo": "T1", "OrderNo172": "TestOrder172", "OrderStatus": "待处理", "Remark": "推送测试"});
        let v = judge(Some("application/json"), &json_body(&d), None, &keys()).unwrap();
        assert_eq!(
            v,
            Verdict::Test {
                request_id: "R1".into()
            }
        );
        // Without keys configured too.
        assert!(matches!(
            judge(Some("application/json"), &json_body(&d), None, &[]),
            Ok(Verdict::Test { .. })
        ));
    }

    #[test]
    fn over_long_or_unprintable_ids_make_the_callback_malformed() {
        let long = "9".repeat(129);
        for (field, value) in [
            ("OrderNo", long.as_str()),
            ("OrderNo172", long.as_str()),
            ("OrderNo", "D1\nINFO forged log line"),
        ] {
            let mut d = data();
            d[field] = Value::String(value.into());
            let (rej, partial) = parse(Some("application/json"), &json_body(&d)).unwrap_err();
            let Rejection::Malformed(m) = rej else {
                panic!("{rej:?}")
            };
            assert!(m.contains(field), "{m}");
            assert_eq!(partial.request_id.as_deref(), Some("R1"));
            if field == "OrderNo" {
                assert_eq!(partial.order_id, None, "an unusable id is not kept");
            }
        }
        let body =
            serde_json::to_vec(&serde_json::json!({"RequidId": long, "Data": data()})).unwrap();
        let (rej, partial) = parse(Some("application/json"), &body).unwrap_err();
        assert!(rej.to_string().contains("RequidId is 129 bytes"), "{rej}");
        assert_eq!(partial.request_id, None);
        assert_eq!(partial.order_id.as_deref(), Some("DOWN20240101001"));
        // Exactly at the bound is fine.
        let mut d = data();
        d["OrderNo"] = Value::String("9".repeat(128));
        assert!(parse(Some("application/json"), &json_body(&d)).is_ok());
    }

    #[test]
    fn a_body_sign_spelled_sign_wins_over_sign_with_a_capital() {
        let key = CallbackKey::from_secret(SECRET);
        let good = key.encrypt("DOWN20240101001");
        // A sign that decrypts, but to another order: a wrong sign, not noise.
        let wrong = key.encrypt("DOWN20240101999");
        let judged = |sign: &str, capital: &str| {
            let mut env = serde_json::json!({"RequidId": "R1", "Data": data().to_string()});
            env["sign"] = Value::String(sign.into());
            env["Sign"] = Value::String(capital.into());
            judge(
                Some("application/json"),
                &serde_json::to_vec(&env).unwrap(),
                None,
                &keys(),
            )
        };
        assert!(matches!(judged(&good, &wrong), Ok(Verdict::Apply { .. })));
        assert!(matches!(
            judged(&good, "not base64!"),
            Ok(Verdict::Apply { .. })
        ));
        let (rejection, _) = judged(&wrong, &good).unwrap_err();
        assert_eq!(rejection, Rejection::BadSignature(SignError::Mismatch));
        // An empty `sign` is absent, as in the PHP integration: `Sign` counts.
        assert!(matches!(judged(" ", &good), Ok(Verdict::Apply { .. })));
        // Other spellings count only without either of the two.
        let body = serde_json::to_vec(&serde_json::json!({
            "RequidId": "R1", "Data": data().to_string(), "SIGN": good, "Sign": wrong
        }))
        .unwrap();
        assert!(judge(Some("application/json"), &body, None, &keys()).is_err());
    }

    #[test]
    fn a_header_sign_still_wins_over_any_body_sign() {
        let key = CallbackKey::from_secret(SECRET);
        let good = key.encrypt("DOWN20240101001");
        let wrong = key.encrypt("DOWN20240101999");
        let body = |sign: &str| {
            serde_json::to_vec(&serde_json::json!({
                "RequidId": "R1", "Data": data().to_string(), "sign": sign
            }))
            .unwrap()
        };
        assert!(judge(
            Some("application/json"),
            &body(&wrong),
            Some(&good),
            &keys()
        )
        .is_ok());
        assert!(judge(
            Some("application/json"),
            &body(&good),
            Some(&wrong),
            &keys()
        )
        .is_err());
        // A blank header is no header.
        assert!(judge(Some("application/json"), &body(&good), Some(" "), &keys()).is_ok());
    }

    #[test]
    fn a_json_object_is_read_as_json_whatever_the_content_type_says() {
        let body = json_body(&data());
        for ct in [
            Some("application/x-www-form-urlencoded"),
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            Some("multipart/form-data; boundary=XyZ"),
            Some("multipart/form-data"),
            Some("text/plain"),
            Some("application/octet-stream"),
            None,
        ] {
            assert_eq!(body_format(ct, &body), BodyFormat::Json, "{ct:?}");
            assert_eq!(parse(ct, &body).unwrap().request_id, "R1", "{ct:?}");
        }
        // Leading whitespace (a trailing newline from a client) changes nothing.
        let mut spaced = b" \r\n".to_vec();
        spaced.extend_from_slice(&body);
        spaced.push(b'\n');
        assert_eq!(
            body_format(Some("application/x-www-form-urlencoded"), &spaced),
            BodyFormat::Json
        );
    }

    #[test]
    fn everything_but_a_json_object_keeps_the_declared_format() {
        let form = serde_urlencoded::to_string([("RequidId", "R5"), ("Data", &data().to_string())])
            .unwrap();
        let form_ct = Some("application/x-www-form-urlencoded");
        assert_eq!(body_format(form_ct, form.as_bytes()), BodyFormat::Form);
        assert_eq!(body_format(None, form.as_bytes()), BodyFormat::Form);
        assert_eq!(
            body_format(Some("text/plain"), form.as_bytes()),
            BodyFormat::Form
        );
        // Starts like JSON but is not an object: the declared format stands.
        assert_eq!(body_format(form_ct, b"{not json"), BodyFormat::Form);
        assert_eq!(
            body_format(
                Some("multipart/form-data; boundary=XyZ"),
                b"{\"a\":1} trailing"
            ),
            BodyFormat::Multipart
        );
        // A JSON content type still reports a broken JSON body as JSON.
        assert_eq!(
            body_format(Some("application/json"), b"{not json"),
            BodyFormat::Json
        );
        assert_eq!(
            body_format(Some("application/json"), b"[1,2]"),
            BodyFormat::Json
        );
        assert_eq!(body_format(None, b"{not json"), BodyFormat::Json);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn content_type() -> impl Strategy<Value = Option<String>> {
            prop_oneof![
                Just(None),
                Just(Some("application/json".to_owned())),
                Just(Some("application/x-www-form-urlencoded".to_owned())),
                Just(Some("multipart/form-data; boundary=XyZ".to_owned())),
                Just(Some("text/plain".to_owned())),
                "[ -~]{0,40}".prop_map(Some),
            ]
        }

        /// Bodies that are often almost valid: real envelopes with fields
        /// dropped, retyped or replaced, and plain noise.
        fn body() -> impl Strategy<Value = Vec<u8>> {
            let field = prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                "[ -~]{0,20}".prop_map(Value::from),
                Just(Value::String("9".repeat(200))),
            ];
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                (
                    proptest::sample::select(vec![
                        "RequidId",
                        "Data",
                        "OrderNo",
                        "OrderStatus",
                        "OrderNo172"
                    ]),
                    field,
                    any::<bool>()
                )
                    .prop_map(|(k, v, data_as_object)| {
                        let mut d = data();
                        d[k] = v.clone();
                        let data = if data_as_object {
                            d
                        } else {
                            Value::String(d.to_string())
                        };
                        let mut env = serde_json::json!({"RequidId": "R1", "Data": data});
                        if k == "RequidId" || k == "Data" {
                            env[k] = v;
                        }
                        serde_json::to_vec(&env).unwrap()
                    }),
            ]
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(3000))]

            /// Whatever arrives, the judge answers, and it applies nothing
            /// whose sign does not decrypt to one of the callback's own
            /// order numbers.
            #[test]
            fn the_judge_never_panics_and_never_applies_without_a_valid_sign(
                ct in content_type(),
                body in body(),
                sign in prop_oneof![
                    Just(None),
                    "[A-Za-z0-9+/=]{0,64}".prop_map(Some),
                    Just(Some(CallbackKey::from_secret(SECRET).encrypt("DOWN20240101001"))),
                    Just(Some(CallbackKey::from_secret(SECRET).encrypt("mlkj230412165954TEST"))),
                    // Signs that decrypt, to anything at all.
                    "[ -~]{0,40}".prop_map(|p| Some(CallbackKey::from_secret(SECRET).encrypt(&p))),
                ],
            ) {
                let keys = keys();
                if let Verdict::Apply { signed_over, observation, .. } =
                    check(ct.as_deref(), &body, sign.as_deref(), &keys)
                {
                    let plain = keys[0].decrypt(sign.as_deref().unwrap_or_default()).unwrap();
                    let want = match signed_over {
                        SignedOver::OrderId => Some(observation.order_id.as_str()),
                        SignedOver::VendorOrderNo => observation.fields.vendor_order_no.as_deref(),
                    };
                    prop_assert_eq!(Some(plain.as_str()), want);
                    prop_assert!(observation.order_id.len() <= ids::MAX_BYTES);
                }
            }

            /// A body that is a JSON object is JSON under any content type,
            /// with any whitespace around it, and a valid callback in it
            /// reads the same as under `application/json`.
            #[test]
            fn a_json_object_is_json_under_any_content_type(
                ct in content_type(),
                pad in "[ \t\r\n]{0,3}",
                rid in "[A-Za-z0-9-]{1,40}",
                extra in proptest::collection::btree_map("[A-Za-z]{1,8}", "[ -~]{0,12}", 0..4),
            ) {
                let mut env = serde_json::json!({"RequidId": rid, "Data": data().to_string()});
                for (k, v) in &extra {
                    if !k.eq_ignore_ascii_case("RequidId") && !k.eq_ignore_ascii_case("Data") {
                        env[k] = Value::String(v.clone());
                    }
                }
                let mut body = pad.clone().into_bytes();
                body.extend(serde_json::to_vec(&env).unwrap());
                body.extend(pad.as_bytes());
                prop_assert_eq!(body_format(ct.as_deref(), &body), BodyFormat::Json);
                prop_assert_eq!(
                    parse(ct.as_deref(), &body).unwrap(),
                    parse(Some("application/json"), &body).unwrap()
                );
            }

            /// What is not a JSON object keeps the format its content type
            /// declares: any form body (keys never start with `{`) stays a
            /// form, any multipart body stays multipart.
            #[test]
            fn other_bodies_keep_their_declared_format(
                pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9]{0,8}", "[ -~]{0,20}"), 0..5),
                noise in proptest::collection::vec(any::<u8>(), 0..100),
            ) {
                let form = serde_urlencoded::to_string(&pairs).unwrap();
                for ct in [Some("application/x-www-form-urlencoded"), Some("text/plain"), None] {
                    prop_assert_eq!(body_format(ct, form.as_bytes()), BodyFormat::Form);
                }
                let multipart = format!("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n{form}\r\n--XyZ--\r\n");
                prop_assert_eq!(
                    body_format(Some("multipart/form-data; boundary=XyZ"), multipart.as_bytes()),
                    BodyFormat::Multipart
                );
                // Noise is JSON only when it is a JSON object.
                let declared = body_format(Some("application/x-www-form-urlencoded"), &noise);
                let is_object = matches!(serde_json::from_slice::<Value>(&noise), Ok(Value::Object(_)));
                prop_assert_eq!(declared == BodyFormat::Json, is_object);
            }

            /// A valid callback reads the same from every encoding.
            #[test]
            fn a_valid_callback_reads_the_same_from_json_form_and_multipart(
                rid in "[A-Za-z0-9-]{1,40}",
                order in "[A-Z0-9]{1,30}",
                label in proptest::sample::select(vec!["待处理", "已发货", "已结算", "已失效", "x y"]),
                phone in proptest::option::of("1[0-9]{10}"),
                first in proptest::option::of(any::<bool>()),
            ) {
                let d = serde_json::json!({
                    "OrderNo": order, "OrderNo172": format!("mlkj{order}"), "OrderStatus": label,
                    "ThirdPhone": phone, "IsFirstCharge": first.map(i32::from),
                }).to_string();
                let json = serde_json::to_vec(&serde_json::json!({"RequidId": rid, "Data": d})).unwrap();
                let form = serde_urlencoded::to_string([("RequidId", rid.as_str()), ("Data", d.as_str())]).unwrap();
                let multipart = format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"RequidId\"\r\n\r\n{rid}\r\n\
                     --XyZ\r\nContent-Disposition: form-data; name=\"Data\"\r\n\r\n{d}\r\n--XyZ--\r\n"
                );
                let a = parse(Some("application/json"), &json).unwrap();
                let b = parse(Some("application/x-www-form-urlencoded"), form.as_bytes()).unwrap();
                let c = parse(Some("multipart/form-data; boundary=XyZ"), multipart.as_bytes()).unwrap();
                prop_assert_eq!(&a, &b);
                prop_assert_eq!(&a, &c);
                prop_assert_eq!(a.into_observation().order_id, order);
            }
        }
    }
}
