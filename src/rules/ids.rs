//! Identifiers that come from outside (order ids, request ids, vendor order
//! numbers): bounded and printable before anything stores, indexes or logs
//! them. An id longer than a btree entry can hold would make an insert fail;
//! a control character in one would let a sender forge log lines.
//!
//! Pure: no I/O.

/// The longest id accepted anywhere (bytes of UTF-8). Real ones are far
/// shorter: 172 order numbers are about 20 characters, PDD `order_sn` 22.
pub const MAX_BYTES: usize = 128;

/// `Ok(id)` when `id` is usable as an identifier; otherwise why not, naming
/// `what` (e.g. `RequidId`). Does not trim: callers decide what blank means.
pub fn check<'a>(what: &str, id: &'a str) -> Result<&'a str, String> {
    if id.len() > MAX_BYTES {
        return Err(format!(
            "{what} is {} bytes long; ids are at most {MAX_BYTES} bytes",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(id)
}

/// The id when it passes [`check`], else None (for best-effort bookkeeping
/// of rejected requests).
pub fn usable(id: Option<String>) -> Option<String> {
    id.filter(|i| check("id", i).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_up_to_the_bound_pass_and_longer_ones_say_how_long() {
        let ok = "x".repeat(MAX_BYTES);
        assert_eq!(check("OrderNo", &ok), Ok(ok.as_str()));
        let long = "x".repeat(MAX_BYTES + 1);
        let e = check("OrderNo", &long).unwrap_err();
        assert!(e.contains("OrderNo is 129 bytes"), "{e}");
        // Bytes, not characters: 43 CJK characters are 129 bytes.
        assert!(check("OrderNo", &"单".repeat(43)).is_err());
        assert!(check("OrderNo", &"单".repeat(42)).is_ok());
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in ["a\nb", "a\rb", "\u{1b}[31m", "a\tb", "a\u{7f}"] {
            assert!(check("RequidId", bad).is_err(), "{bad:?}");
        }
        assert_eq!(usable(Some("ok-1".into())), Some("ok-1".into()));
        assert_eq!(usable(Some("x\n".into())), None);
        assert_eq!(usable(None), None);
    }
}
