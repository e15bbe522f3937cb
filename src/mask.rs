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

#[cfg(test)]
mod tests {
    #[test]
    fn phone_keeps_only_the_first_three_and_last_four_digits() {
        assert_eq!(super::phone("15574757515"), "155****7515");
        assert_eq!(super::phone("123"), "1***");
        assert_eq!(super::phone(""), "***");
    }
}
