//! Reading loosely typed vendor values: the same field may come as a
//! string, a number, a bool or null, and times in China time. Shared by
//! every vendor parser, so each spelling is handled in one place.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// A value as trimmed text, whatever its JSON type; empty and null are None.
/// NULs are dropped (PostgreSQL text cannot hold them).
pub fn text(v: Option<&Value>) -> Option<String> {
    let s = match v? {
        Value::String(s) => s.replace('\0', ""),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    };
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// 0/1 as int, string or bool (also true/false, 是/否, yes/no); anything else
/// is "not said".
pub fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "是" | "yes" => Some(true),
            "0" | "false" | "否" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// An integer as a number or a numeric string.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `yyyy-MM-dd HH:mm:ss` in China time (UTC+8), or RFC 3339.
pub fn parse_china_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let china = chrono::FixedOffset::east_opt(8 * 3600)?;
    [
        "%Y-%m-%d %H:%M:%S",
        "%Y/%m/%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .and_then(|n| china.from_local_datetime(&n).single())
    .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_flag_and_int_read_every_spelling() {
        assert_eq!(text(Some(&json!(" a\0b "))), Some("ab".into()));
        assert_eq!(text(Some(&json!(50.5))), Some("50.5".into()));
        assert_eq!(text(Some(&json!(""))), None);
        assert_eq!(text(Some(&json!(null))), None);
        assert_eq!(text(None), None);
        for (v, want) in [
            (json!(1), Some(true)),
            (json!("0"), Some(false)),
            (json!("是"), Some(true)),
            (json!("x"), None),
        ] {
            assert_eq!(flag(Some(&v)), want, "{v}");
        }
        assert_eq!(int(&json!("12")), Some(12));
        assert_eq!(int(&json!(3.0)), Some(3));
        assert_eq!(int(&json!("x")), None);
    }
}
