//! 大麦家 `mpagingOrders` answers, read tolerantly (docs/vendors.md#大麦家-answer-shapes): the order
//! list may be an object with `content`/`list`, a bare list, an object keyed
//! "0","1",…, or a single order; keys in snake_case or camelCase; statuses as
//! int or numeric string; times as epoch milliseconds or
//! `yyyy-MM-dd HH:mm:ss` (China time). Orders are matched by `order_sn`.
//!
//! Pure. Personal data (receiver name, phone, address) leaves this module
//! only masked.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use super::labels::status_of;
use crate::rules::mask;
use crate::rules::status::{Observation, OrderFields, Source};
use crate::vendors::value::{int, parse_china_time, text};
use crate::vendors::Vendor;

/// The envelope: `{"status":0,"data":…}` or `{"status":N,"err":"…"}`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Orders {
        orders: Vec<Value>,
        /// What the call cost (`deduct_money`), when the answer says.
        cost: Option<i64>,
    },
    Refused {
        status: i64,
        err: String,
    },
}

/// Read the envelope; `Err` when the body is not a JSON object with a status.
pub fn reply(body: &[u8]) -> Result<Reply, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "body is not JSON".to_owned())?;
    let Value::Object(env) = v else {
        return Err("body is not a JSON object".into());
    };
    let status = env
        .get("status")
        .and_then(int)
        .ok_or("no `status` in the answer")?;
    if status != 0 {
        let err = ["err", "msg", "message"]
            .iter()
            .find_map(|k| env.get(*k).and_then(Value::as_str))
            .unwrap_or("")
            .to_owned();
        return Ok(Reply::Refused { status, err });
    }
    let data = env.get("data").cloned().unwrap_or(Value::Null);
    let cost = match &data {
        Value::Object(m) => get(m, "deduct_money").and_then(int),
        _ => None,
    }
    .or_else(|| env.get("deduct_money").and_then(int));
    let orders = order_list(data);
    let cost = cost.or_else(|| {
        orders.iter().find_map(|o| {
            o.as_object()
                .and_then(|m| get(m, "deduct_money"))
                .and_then(int)
        })
    });
    Ok(Reply::Orders { orders, cost })
}

/// Every order object in `data`, whatever the shape.
fn order_list(data: Value) -> Vec<Value> {
    match data {
        Value::Array(items) => items.into_iter().filter(Value::is_object).collect(),
        Value::Object(m) => {
            for key in ["content", "list", "orders", "data"] {
                if let Some(inner) = get(&m, key) {
                    if inner.is_array() || inner.is_object() {
                        return order_list(inner.clone());
                    }
                }
            }
            if get(&m, "order_sn").is_some() {
                return vec![Value::Object(m)];
            }
            // Keyed "0", "1", …: the values are the orders.
            let mut keyed: Vec<(u64, Value)> = m
                .into_iter()
                .filter_map(|(k, v)| k.parse::<u64>().ok().map(|i| (i, v)))
                .filter(|(_, v)| v.is_object())
                .collect();
            keyed.sort_by_key(|(i, _)| *i);
            keyed.into_iter().map(|(_, v)| v).collect()
        }
        _ => Vec::new(),
    }
}

/// `order_sn` → `orderSn`.
fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A field under its snake_case or camelCase name.
fn get<'a>(m: &'a Map<String, Value>, snake: &str) -> Option<&'a Value> {
    m.get(snake)
        .or_else(|| m.get(&camel(snake)))
        .filter(|v| !v.is_null())
}

/// Epoch milliseconds (or seconds), or a China-time string.
pub fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    match v? {
        Value::Number(n) => n.as_i64().and_then(epoch),
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(n) => epoch(n),
                Err(_) => parse_china_time(s),
            }
        }
        _ => None,
    }
}

fn epoch(n: i64) -> Option<DateTime<Utc>> {
    if n <= 0 {
        return None;
    }
    // Before 2001-09 in milliseconds means it was seconds.
    if n < 1_000_000_000_000 {
        Utc.timestamp_opt(n, 0).single()
    } else {
        Utc.timestamp_millis_opt(n).single()
    }
}

/// PDD `order_status` labels.
fn order_status_label(s: Option<i64>) -> &'static str {
    match s {
        Some(1) => "待发货",
        Some(2) => "已发货待签收",
        Some(3) => "已签收",
        Some(0) => "异常",
        _ => "未知",
    }
}

/// PDD `refund_status` labels.
fn refund_label(s: i64) -> &'static str {
    match s {
        1 => "无售后或售后关闭",
        2 => "售后处理中",
        3 => "退款中",
        4 => "退款成功",
        _ => "未知售后状态",
    }
}

/// One order object → an observation (source `poll`), personal data masked.
pub fn observation(order: &Value) -> Option<Observation> {
    let m = order.as_object()?;
    let sn = text(get(m, "order_sn"))?;
    let order_status = get(m, "order_status").and_then(int);
    let refund_status = get(m, "refund_status").and_then(int);
    let status = status_of(order_status, refund_status);
    let mut label = order_status_label(order_status).to_owned();
    if let Some(r) = refund_status.filter(|r| *r != 1) {
        label.push('|');
        label.push_str(refund_label(r));
    }
    let mut d: BTreeMap<String, Value> = BTreeMap::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            d.insert(k.to_owned(), v);
        }
    };
    put("order_status", order_status.map(Value::from));
    put("refund_status", refund_status.map(Value::from));
    put("goods_name", text(get(m, "goods_name")).map(Value::from));
    put("goods_spec", text(get(m, "goods_spec")).map(Value::from));
    put(
        "goods_count",
        get(m, "goods_count").and_then(int).map(Value::from),
    );
    put(
        "pay_amount",
        get(m, "pay_amount").and_then(|v| match v {
            Value::Number(n) => Some(Value::Number(n.clone())),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            _ => None,
        }),
    );
    put(
        "pay_time",
        time(get(m, "pay_time")).map(|t| Value::from(t.to_rfc3339())),
    );
    put(
        "last_ship_time",
        time(get(m, "last_ship_time")).map(|t| Value::from(t.to_rfc3339())),
    );
    put(
        "is_pre_sale",
        get(m, "is_pre_sale").and_then(|v| match v {
            Value::Bool(b) => Some(Value::Bool(*b)),
            Value::String(s) => Some(Value::Bool(s.trim() == "true" || s.trim() == "1")),
            Value::Number(n) => Some(Value::Bool(n.as_i64() == Some(1))),
            _ => None,
        }),
    );
    // Personal data: masked, never verbatim.
    put(
        "receiver_name",
        text(get(m, "receiver_name")).map(|s| Value::from(mask::name(&s))),
    );
    put(
        "receiver_phone",
        text(get(m, "receiver_phone")).map(|s| Value::from(mask::phone(&s))),
    );
    let region: String = ["province", "city"]
        .iter()
        .filter_map(|k| text(get(m, k)))
        .collect::<Vec<_>>()
        .join("");
    if text(get(m, "receiver_address")).is_some() || !region.is_empty() {
        put(
            "receiver_address",
            Some(Value::from(mask::address(&region))),
        );
    }
    Some(Observation {
        vendor: Vendor::Damaijia,
        order_id: sn,
        source: Source::Poll,
        vendor_status: Some(label),
        status,
        fields: OrderFields {
            remark: text(get(m, "remark")),
            details: d,
            ..OrderFields::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::status::Status;
    use serde_json::json;

    fn order_snake(sn: &str) -> Value {
        json!({
            "receiver_name": "lSDn", "receiver_phone": "15574757515", "province": "发的是我*省",
            "city": "蜂窝市", "town": "费伍德区", "receiver_address": "详细收货地址",
            "order_sn": sn, "goods_name": "流量卡", "goods_img": "x", "goods_spec": "描述",
            "is_pre_sale": false, "last_ship_time": 1605768641000_i64, "pay_time": 1605595841000_i64,
            "remark": "", "goods_count": 1, "pay_amount": 9.9, "order_status": 1,
            "refund_status": 1, "deduct_money": 4
        })
    }

    /// The seed's sample, as printed: camel and snake mixed.
    fn order_mixed(sn: &str) -> Value {
        json!({
            "receiverName": "lSDn", "receiverPhone": "15574757515", "province": "发的是我*省",
            "city": "蜂窝市", "town": "费伍德区", "receiverAddress": "详细收货地址",
            "order_sn": sn, "goods_name": "流量卡", "goods_img": "x", "goodsSpec": "描述",
            "is_pre_sale": false, "last_ship_time": 1605768641000_i64, "pay_time": 1605595841000_i64,
            "remark": "", "goods_count": 1, "pay_amount": 9.9, "order_status": 1,
            "refund_status": 1, "deduct_money": 4
        })
    }

    fn order_camel_strings(sn: &str) -> Value {
        json!({
            "receiverName": "lSDn", "receiverPhone": "15574757515", "province": "发的是我*省",
            "city": "蜂窝市", "receiverAddress": "详细收货地址",
            "orderSn": sn, "goodsName": "流量卡", "goodsSpec": "描述",
            "isPreSale": "false", "lastShipTime": "2020-11-19 14:50:41", "payTime": "2020-11-17 14:50:41",
            "remark": "", "goodsCount": "1", "payAmount": "9.9", "orderStatus": "1",
            "refundStatus": "1", "deductMoney": "4"
        })
    }

    fn parsed(body: Value) -> (Vec<Observation>, Option<i64>) {
        match reply(&serde_json::to_vec(&body).unwrap()).unwrap() {
            Reply::Orders { orders, cost } => {
                (orders.iter().filter_map(observation).collect(), cost)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_response_shape_and_casing_parses_into_the_same_result() {
        let (a, b) = ("201117-1", "201117-2");
        let shapes: Vec<(&str, Value)> = vec![
            (
                "content",
                json!({"status": 0, "data": {"content": [order_snake(a), order_snake(b)], "deduct_money": 4}}),
            ),
            (
                "list",
                json!({"status": 0, "data": {"list": [order_mixed(a), order_mixed(b)]}}),
            ),
            (
                "bare list",
                json!({"status": 0, "data": [order_camel_strings(a), order_camel_strings(b)]}),
            ),
            (
                "keyed",
                json!({"status": 0, "data": {"0": order_snake(a), "1": order_mixed(b), "deduct_money": 4}}),
            ),
            (
                "string status",
                json!({"status": "0", "data": [order_snake(a), order_camel_strings(b)]}),
            ),
        ];
        let mut results = Vec::new();
        for (name, body) in shapes {
            let (obs, cost) = parsed(body);
            assert_eq!(obs.len(), 2, "{name}");
            assert_eq!(cost, Some(4), "{name}");
            results.push((name, obs));
        }
        let (_, first) = &results[0];
        assert_eq!(first[0].order_id, a);
        assert_eq!(first[0].status, Status::Pending);
        assert_eq!(first[0].vendor_status.as_deref(), Some("待发货"));
        let d = &first[0].fields.details;
        assert_eq!(d["goods_name"], "流量卡");
        assert_eq!(d["goods_count"], 1);
        assert_eq!(d["pay_amount"], 9.9);
        assert_eq!(d["last_ship_time"], "2020-11-19T06:50:41+00:00");
        assert_eq!(d["pay_time"], "2020-11-17T06:50:41+00:00");
        assert_eq!(d["receiver_phone"], "155****7515");
        for (name, obs) in &results {
            assert_eq!(
                obs, first,
                "{name} differs from the snake_case content shape"
            );
        }
    }

    #[test]
    fn a_single_order_under_data_parses() {
        let (obs, cost) = parsed(json!({"status": 0, "data": order_mixed("201117-9")}));
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0].order_id, "201117-9");
        assert_eq!(cost, Some(4));
    }

    #[test]
    fn statuses_map_per_the_contract() {
        let cases = [
            (json!(1), json!(1), Status::Pending, "待发货"),
            (json!("2"), json!(1), Status::Shipped, "已发货待签收"),
            (json!(3), json!("1"), Status::Completed, "已签收"),
            (
                json!(2),
                json!(4),
                Status::Cancelled,
                "已发货待签收|退款成功",
            ),
            (json!(1), json!(2), Status::Pending, "待发货|售后处理中"),
            (json!(1), json!(3), Status::Pending, "待发货|退款中"),
            (json!(0), json!(1), Status::Unknown, "异常"),
            (json!(9), json!(1), Status::Unknown, "未知"),
        ];
        for (os, rs, want, label) in cases {
            let mut o = order_snake("S");
            o["order_status"] = os.clone();
            o["refund_status"] = rs.clone();
            let obs = observation(&o).unwrap();
            assert_eq!(obs.status, want, "{os} {rs}");
            assert_eq!(obs.vendor_status.as_deref(), Some(label));
        }
    }

    #[test]
    fn personal_data_never_leaves_unmasked() {
        for o in [order_snake("S"), order_mixed("S"), order_camel_strings("S")] {
            let text = serde_json::to_string(&observation(&o).unwrap()).unwrap();
            for secret in ["lSDn", "15574757515", "详细收货地址", "费伍德区"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(text.contains("155****7515"));
        }
    }

    #[test]
    fn refusals_and_garbage() {
        assert_eq!(
            reply(r#"{"status":200,"err":"认证失败","data":[]}"#.as_bytes()).unwrap(),
            Reply::Refused {
                status: 200,
                err: "认证失败".into()
            }
        );
        assert_eq!(
            reply(r#"{"status":"2011","msg":"店铺未绑定"}"#.as_bytes()).unwrap(),
            Reply::Refused {
                status: 2011,
                err: "店铺未绑定".into()
            }
        );
        assert!(reply(b"<html>").is_err());
        assert!(reply(b"[]").is_err());
        assert!(reply(br#"{"data":[]}"#).is_err());
        let (obs, cost) = parsed(json!({"status": 0, "data": []}));
        assert!(obs.is_empty());
        assert_eq!(cost, None);
    }

    #[test]
    fn times_in_seconds_milliseconds_or_china_strings() {
        let want = Utc.with_ymd_and_hms(2020, 11, 19, 6, 50, 41).unwrap();
        assert_eq!(time(Some(&json!(1605768641000_i64))), Some(want));
        assert_eq!(time(Some(&json!(1605768641))), Some(want));
        assert_eq!(time(Some(&json!("1605768641000"))), Some(want));
        assert_eq!(time(Some(&json!("2020-11-19 14:50:41"))), Some(want));
        assert_eq!(time(Some(&json!(""))), None);
        assert_eq!(time(Some(&json!(0))), None);
    }
}
