//! Masking personal data for everything that leaves the process (the admin
//! API, CLI output, logs): one place that knows which fields are personal.

/// `15574757515` → `155****7515`; short values keep at most their first
/// character.
pub fn phone(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() >= 7 {
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}****{tail}")
    } else {
        let head: String = chars.iter().take(1).collect();
        format!("{head}***")
    }
}

/// `张三丰` → `张**`: the first character, one star for each other.
pub fn name(s: &str) -> String {
    let mut chars = s.trim().chars();
    match chars.next() {
        Some(first) => std::iter::once(first).chain(chars.map(|_| '*')).collect(),
        None => String::new(),
    }
}

/// Keep only the coarse region (province and city), never the street.
pub fn address(region: &str) -> String {
    format!("{}****", region.trim())
}

/// Mask every personal field in a JSON value, wherever it sits (an order,
/// an event's observed fields, a vendor's details): phones keep their first
/// three and last four digits, names their first character. Masking twice
/// changes nothing.
pub fn personal(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.to_ascii_lowercase().replace('_', "");
                match (key.as_str(), &*v) {
                    ("thirdphone" | "receiverphone" | "phone" | "mobile", Value::String(s)) => {
                        *v = Value::String(phone(s))
                    }
                    ("receivername" | "name", Value::String(s)) => *v = Value::String(name(s)),
                    _ => personal(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(personal),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn phone_keeps_only_the_first_three_and_last_four_digits() {
        assert_eq!(super::phone("15574757515"), "155****7515");
        assert_eq!(super::phone("123"), "1***");
        assert_eq!(super::phone(""), "***");
    }

    #[test]
    fn name_keeps_only_the_first_character() {
        assert_eq!(super::name("张三丰"), "张**");
        assert_eq!(super::name("lSDn"), "l***");
        assert_eq!(super::name(""), "");
    }

    #[test]
    fn personal_fields_are_masked_wherever_they_sit_and_masking_twice_changes_nothing() {
        let mut v = serde_json::json!({
            "third_phone": "13095541263", "express_code": "JD1",
            "details": {"receiver_name": "罗小明", "receiver_phone": "15574757515", "goods_name": "卡"},
            "history": [{"observed": {"ThirdPhone": "13012345678"}}]
        });
        super::personal(&mut v);
        assert_eq!(v["third_phone"], "130****1263");
        assert_eq!(v["express_code"], "JD1");
        assert_eq!(v["details"]["receiver_name"], "罗**");
        assert_eq!(v["details"]["receiver_phone"], "155****7515");
        assert_eq!(v["details"]["goods_name"], "卡");
        assert_eq!(v["history"][0]["observed"]["ThirdPhone"], "130****5678");
        let once = v.clone();
        super::personal(&mut v);
        assert_eq!(v, once);
    }

    #[test]
    fn address_keeps_only_the_region() {
        assert_eq!(super::address("广东省深圳市"), "广东省深圳市****");
    }
}
