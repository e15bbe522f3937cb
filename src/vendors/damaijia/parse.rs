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

    mod props {
        use super::*;
        use crate::vendors::damaijia::client::batch;
        use proptest::prelude::*;
        use proptest::sample::select;

        /// Every field of a real order, snake_case (the camelCase twin is
        /// derived), as in the 大麦家 document's field table.
        const FIELDS: [&str; 19] = [
            "order_sn",
            "order_status",
            "refund_status",
            "receiver_name",
            "receiver_phone",
            "receiver_address",
            "province",
            "city",
            "town",
            "goods_name",
            "goods_img",
            "goods_spec",
            "goods_count",
            "pay_amount",
            "pay_time",
            "last_ship_time",
            "is_pre_sale",
            "remark",
            "deduct_money",
        ];
        /// The fields whose value is personal data: a mutation only drops
        /// them or renames them to the other name the parser reads, so
        /// the check below always knows what they hold.
        const PERSONAL: [&str; 4] = [
            "receiver_name",
            "receiver_phone",
            "receiver_address",
            "town",
        ];

        /// Order numbers shared by requests and answers, so they overlap.
        fn sn() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => select(vec![
                    "201117-681808213123308",
                    "201117-1",
                    "201118-2",
                    "1234567",
                    "A",
                    "201117-9",
                ])
                .prop_map(str::to_owned),
                1 => (100_000u32..1_000_000, any::<u64>()).prop_map(|(d, n)| format!("{d}-{n}")),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            let mut known: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
            known.extend(FIELDS.iter().map(|f| camel(f)));
            known.extend(
                [
                    "content", "list", "orders", "data", "0", "1", "2", "status", "err", "msg",
                ]
                .map(str::to_owned),
            );
            prop_oneof![3 => select(known), 1 => chars(4)]
        }

        /// Up to `n` characters of any kind (cheaper than a regex).
        fn chars(n: usize) -> impl Strategy<Value = String> {
            proptest::collection::vec(any::<char>(), 0..=n).prop_map(String::from_iter)
        }

        /// `n` to `m` characters picked from `from`.
        fn of(from: &'static str, n: usize, m: usize) -> impl Strategy<Value = String> {
            let from: Vec<char> = from.chars().collect();
            proptest::collection::vec(select(from), n..=m).prop_map(String::from_iter)
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-5i64..5).prop_map(Value::from),
                any::<f64>().prop_map(|f| {
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }),
                chars(8).prop_map(Value::String),
                select(vec![
                    "0",
                    "1",
                    " 2 ",
                    "4",
                    "2020-11-19 14:50:41",
                    "1605768641000",
                    "-1",
                    "99999999999999999999",
                    "true",
                    "",
                    "1e3",
                    "2020-13-45 25:61:61",
                ])
                .prop_map(Value::from),
            ]
        }

        /// Any JSON value, nested up to five levels, its keys often the
        /// real ones.
        fn json() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(5, 64, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::vec((key(), inner), 0..6)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        /// Receiver data, from alphabets no other field uses, so that a
        /// raw value found in the output can only be a leak.
        #[derive(Debug, Clone)]
        struct Personal {
            name: String,
            phone: String,
            address: String,
            town: String,
        }

        fn personal() -> impl Strategy<Value = Personal> {
            (
                of("赵钱孙李周吴郑王冯陈褚卫", 2, 4),
                (13u64..20, 0u64..1_000_000_000),
                select(vec!["", "+86 ", " "]),
                (
                    0u16..10_000,
                    of("路街巷弄", 1, 1),
                    of("0123456789号栋室", 0, 5),
                ),
                of("区县镇", 1, 3),
                any::<bool>(),
            )
                .prop_map(
                    |(name, (head, tail), prefix, (no, way, rest), town, full)| {
                        let street = format!("{no}{way}{rest}");
                        Personal {
                            name,
                            phone: format!("{prefix}{head}{tail:09}"),
                            // Sometimes the whole address, region first.
                            address: if full {
                                format!("东省北市{town}{street}")
                            } else {
                                street
                            },
                            town,
                        }
                    },
                )
        }

        /// What a real order says, as the document's sample, with these
        /// receiver data and order number.
        fn real_order(sn: &str, p: &Personal, phone_as_number: bool) -> Map<String, Value> {
            let phone = if phone_as_number {
                p.phone
                    .trim()
                    .parse::<u64>()
                    .map_or_else(|_| Value::from(p.phone.clone()), Value::from)
            } else {
                Value::from(p.phone.clone())
            };
            let v = serde_json::json!({
                "order_sn": sn, "order_status": 1, "refund_status": 1,
                "receiver_name": p.name, "receiver_phone": phone,
                "receiver_address": p.address, "province": "东省", "city": "北市",
                "town": p.town, "goods_name": "ll card", "goods_img": "http://x/y.png",
                "goods_spec": "desc", "goods_count": 1, "pay_amount": 9.9,
                "pay_time": 1605595841000_i64, "last_ship_time": "2020-11-19 14:50:41",
                "is_pre_sale": false, "remark": "note", "deduct_money": 4
            });
            match v {
                Value::Object(m) => m,
                _ => unreachable!(),
            }
        }

        #[derive(Debug, Clone)]
        enum Mutation {
            Drop,
            Camel,
            Pascal,
            Upper,
            Retype(Value),
            Stringify,
        }

        fn mutation() -> impl Strategy<Value = (usize, Mutation)> {
            let m = prop_oneof![
                Just(Mutation::Drop),
                Just(Mutation::Camel),
                Just(Mutation::Pascal),
                Just(Mutation::Upper),
                leaf().prop_map(Mutation::Retype),
                Just(Mutation::Stringify),
            ];
            (0..FIELDS.len(), m)
        }

        /// A real order with some fields dropped, renamed (camelCase,
        /// PascalCase, UPPER), retyped or turned into strings. Personal
        /// fields are only renamed to the names the parser reads or
        /// dropped, so the check below always knows what they hold.
        fn mutate(mut m: Map<String, Value>, muts: &[(usize, Mutation)]) -> Map<String, Value> {
            for (i, mu) in muts {
                let f = FIELDS[*i];
                let Some(v) = m.remove(f) else { continue };
                let personal = PERSONAL.contains(&f);
                match mu {
                    Mutation::Drop => {}
                    Mutation::Camel => {
                        m.insert(camel(f), v);
                    }
                    Mutation::Pascal | Mutation::Upper if personal => {
                        m.insert(camel(f), v);
                    }
                    Mutation::Pascal => {
                        let c = camel(f);
                        let mut cs = c.chars();
                        let head = cs.next().map(|c| c.to_ascii_uppercase());
                        m.insert(head.into_iter().chain(cs).collect(), v);
                    }
                    Mutation::Upper => {
                        m.insert(f.to_uppercase(), v);
                    }
                    Mutation::Retype(_) | Mutation::Stringify if personal => {
                        m.insert(f.to_owned(), v);
                    }
                    Mutation::Retype(new) => {
                        m.insert(f.to_owned(), new.clone());
                    }
                    Mutation::Stringify => {
                        let s = match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        m.insert(f.to_owned(), Value::String(s));
                    }
                }
            }
            m
        }

        /// The ways the answer may hold its orders (vendors.md).
        fn wrap(orders: Vec<Value>, shape: u8, extra: Option<Value>) -> Value {
            let keyed = || {
                Value::Object(
                    orders
                        .iter()
                        .enumerate()
                        .map(|(i, o)| (i.to_string(), o.clone()))
                        .collect(),
                )
            };
            let mut data = match shape % 9 {
                0 => serde_json::json!({ "content": orders }),
                1 => serde_json::json!({ "list": orders }),
                2 => serde_json::json!({ "orders": orders }),
                3 => serde_json::json!({ "data": orders }),
                4 => Value::Array(orders.clone()),
                5 => keyed(),
                6 => orders.first().cloned().unwrap_or(Value::Null),
                7 => serde_json::json!({ "content": keyed() }),
                _ => serde_json::json!({ "data": { "content": orders } }),
            };
            if let (Value::Object(m), Some(x)) = (&mut data, extra) {
                m.insert("deduct_money".into(), x);
            }
            data
        }

        #[derive(Debug, Clone)]
        struct Answer {
            body: Vec<u8>,
            /// The receiver data in it.
            personal: Vec<Personal>,
        }

        /// Answers built from the real shapes: orders with fields dropped,
        /// renamed or retyped, in any of the shapes, under an envelope
        /// whose `status` is sometimes a string or missing; sometimes cut
        /// short.
        fn almost_valid() -> impl Strategy<Value = Answer> {
            let order = (
                sn(),
                personal(),
                any::<bool>(),
                proptest::collection::vec(mutation(), 0..4),
            );
            let status = prop_oneof![
                12 => Just(Some(Value::from(0))),
                1 => Just(Some(Value::from("0"))),
                1 => Just(Some(Value::from(" 0 "))),
                1 => Just(Some(Value::from(0.0))),
                1 => Just(None),
                1 => leaf().prop_map(Some),
            ];
            (
                proptest::collection::vec(order, 0..5),
                any::<u8>(),
                proptest::option::of(leaf()),
                status,
                prop_oneof![9 => Just(None), 1 => (0usize..400).prop_map(Some)],
                proptest::option::of((key(), json())),
            )
                .prop_map(|(orders, shape, extra, status, cut, junk)| {
                    let personal = orders.iter().map(|(_, p, ..)| p.clone()).collect();
                    let orders = orders
                        .iter()
                        .map(|(sn, p, num, muts)| {
                            Value::Object(mutate(real_order(sn, p, *num), muts))
                        })
                        .collect();
                    let mut env = Map::new();
                    if let Some(s) = status {
                        env.insert("status".into(), s);
                    }
                    env.insert("data".into(), wrap(orders, shape, extra));
                    if let Some((k, v)) = junk {
                        env.entry(k).or_insert(v);
                    }
                    let mut body = serde_json::to_vec(&Value::Object(env)).unwrap();
                    if let Some(n) = cut {
                        body.truncate(n);
                    }
                    Answer { body, personal }
                })
        }

        /// Anything at all: bytes, any JSON, any JSON as `data` of a
        /// successful envelope, and the almost valid answers.
        fn answer() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                1 => proptest::collection::vec(any::<u8>(), 0..200),
                1 => json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
                2 => json().prop_map(|v| serde_json::to_vec(&serde_json::json!({"status": 0, "data": v})).unwrap()),
                6 => almost_valid().prop_map(|a| a.body),
            ]
        }

        /// Sets of requested numbers (the poller never asks twice in a
        /// batch), in any order.
        fn requested() -> impl Strategy<Value = Vec<String>> {
            proptest::collection::btree_set(sn(), 0..8)
                .prop_map(|s| s.into_iter().collect::<Vec<_>>())
                .prop_shuffle()
        }

        /// Every string in a JSON value, keys included.
        fn strings(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
                Value::Object(m) => {
                    for (k, v) in m {
                        out.push(k.clone());
                        strings(v, out);
                    }
                }
                _ => {}
            }
        }

        /// The observations the parser makes of an answer, in order.
        fn observations(body: &[u8]) -> Vec<Observation> {
            match reply(body) {
                Ok(Reply::Orders { orders, .. }) => orders.iter().filter_map(observation).collect(),
                _ => Vec::new(),
            }
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(2000))]

            /// Whatever the vendor (or a proxy in front of it) answers,
            /// the envelope, the order extraction and the batch matching
            /// answer without a panic; the orders extracted are objects and
            /// each observation is a poll of a trimmed, non-empty number.
            #[test]
            fn reply_and_the_order_extraction_never_panic_on_any_answer(
                body in answer(),
                requested in requested(),
                http in prop_oneof![Just(200u16), 100u16..600],
            ) {
                if let Ok(Reply::Orders { orders, .. }) = reply(&body) {
                    for o in &orders {
                        prop_assert!(o.is_object(), "{o}");
                        if let Some(obs) = observation(o) {
                            prop_assert_eq!(obs.vendor, Vendor::Damaijia);
                            prop_assert_eq!(obs.source, Source::Poll);
                            prop_assert!(!obs.order_id.is_empty());
                            prop_assert_eq!(obs.order_id.trim(), obs.order_id.as_str());
                        }
                    }
                }
                let _ = batch(&requested, http, &body);
            }

            /// The batch matching: no order that was not asked for, none
            /// twice; every requested number is found or missing, never
            /// both, never lost; found exactly when the answer holds it
            /// (its first occurrence wins).
            #[test]
            fn a_batch_finds_only_requested_numbers_and_reports_every_one_once(
                body in answer(),
                requested in requested(),
            ) {
                let Ok(b) = batch(&requested, 200, &body) else {
                    return Ok(());
                };
                let found: Vec<&str> = b.found.iter().map(|o| o.order_id.as_str()).collect();
                for f in &found {
                    prop_assert!(requested.iter().any(|r| r == f), "{f} was not asked for");
                }
                let mut all: Vec<&str> = found.iter().copied().chain(b.missing.iter().map(String::as_str)).collect();
                all.sort_unstable();
                let mut want: Vec<&str> = requested.iter().map(String::as_str).collect();
                want.sort_unstable();
                prop_assert_eq!(all, want, "found {:?}, missing {:?}", found, b.missing);
                let seen = observations(&body);
                for r in &requested {
                    let first = seen.iter().find(|o| &o.order_id == r);
                    let got = b.found.iter().find(|o| &o.order_id == r);
                    prop_assert_eq!(got, first, "{}", r);
                }
            }

            /// Receiver names, phones and addresses never leave the parser
            /// verbatim, whatever the shape, casing or typing of the
            /// answer: no string of a produced observation (serialized)
            /// contains one.
            #[test]
            fn personal_data_never_appears_unmasked_in_an_observation(
                a in almost_valid(),
                requested in requested(),
            ) {
                let mut produced = observations(&a.body);
                if let Ok(b) = batch(&requested, 200, &a.body) {
                    produced.extend(b.found);
                }
                for obs in &produced {
                    let mut texts = Vec::new();
                    strings(&serde_json::to_value(obs).unwrap(), &mut texts);
                    for p in &a.personal {
                        for raw in [p.name.trim(), p.phone.trim(), p.address.trim(), p.town.trim()] {
                            prop_assert!(
                                !texts.iter().any(|t| t.contains(raw)),
                                "{raw:?} in {texts:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
