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

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Control characters by their code points (Unicode category Cc),
        /// written out independently of `char::is_control`.
        fn is_cc(c: char) -> bool {
            matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f)
        }

        /// Strings of every kind, many of them near the 128-byte bound:
        /// ASCII, 2-, 3- and 4-byte characters, with and without a control
        /// character somewhere.
        fn id() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                4 => "[a-zA-Z0-9_-]{0,8}",
                2 => "[éü单号卡😀]{0,4}",
                1 => "[\\u{0}-\\u{1f}\\u{7f}-\\u{9f}]",
                1 => "[\\u{a0}-\\u{ff}\\u{2028}\\u{200b}\\u{feff}]",
            ];
            prop_oneof![
                any::<String>(),
                proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat()),
                // Exactly around the bound, in 1- to 4-byte characters.
                (
                    120usize..=132,
                    proptest::sample::select(vec!["x", "é", "单", "😀"])
                )
                    .prop_map(|(bytes, c)| c.repeat(bytes / c.len())
                        + &"y".repeat(bytes % c.len())),
            ]
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(3000))]

            /// An id is accepted exactly when it is at most 128 bytes of
            /// UTF-8 and holds no control character; an accepted id comes
            /// back unchanged and a refused one is named in the reason.
            #[test]
            fn check_accepts_exactly_the_short_ids_without_control_characters(s in id()) {
                let want = s.len() <= MAX_BYTES && !s.chars().any(is_cc);
                match check("OrderNo", &s) {
                    Ok(got) => {
                        prop_assert!(want, "accepted {s:?} ({} bytes)", s.len());
                        prop_assert_eq!(got, s.as_str());
                    }
                    Err(why) => {
                        prop_assert!(!want, "refused {s:?}: {why}");
                        prop_assert!(why.starts_with("OrderNo "), "{why}");
                    }
                }
                prop_assert_eq!(usable(Some(s.clone())).is_some(), want);
            }
        }
    }
}
