//! Masking personal data for anything a person reads (logs, CLI output).

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
    fn address_keeps_only_the_region() {
        assert_eq!(super::address("广东省深圳市"), "广东省深圳市****");
    }
}
