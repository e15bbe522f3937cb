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

/// The rule for ids a person gives (`track`, the admin API), stated in
/// every refusal.
pub const RULE: &str = "order ids are at most 128 bytes, without spaces or control characters";

/// Order ids as a person lists them, each with where it came from (`line 3
/// of ids.txt`, `order_ids[2]`): trimmed, blanks dropped, repeats dropped
/// (first kept, in one pass, whatever the count), and the first unusable one
/// refused, saying where it was and the rule.
pub fn clean_list(
    items: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (place, id) in items {
        let id = id.trim();
        if id.is_empty() {
            continue;
        }
        let why = if id.chars().any(char::is_whitespace) {
            Some("contains a space".to_owned())
        } else {
            check("the id", id).err()
        };
        if let Some(why) = why {
            let shown: String = id.chars().take(40).filter(|c| !c.is_control()).collect();
            return Err(format!(
                "{place}: `{shown}` {}; {RULE}",
                why.trim_start_matches("the id ")
            ));
        }
        if seen.insert(id.to_owned()) {
            out.push(id.to_owned());
        }
    }
    if out.is_empty() {
        return Err("no order id given".into());
    }
    Ok(out)
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
    fn a_list_is_trimmed_deduplicated_in_order_and_a_bad_id_is_refused_with_its_place() {
        let items = |v: &[&str]| {
            v.iter()
                .enumerate()
                .map(|(i, s)| (format!("line {}", i + 1), (*s).to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            clean_list(items(&[" A1 ", "", "B2", "A1"])),
            Ok(vec!["A1".to_owned(), "B2".to_owned()])
        );
        let e = clean_list(items(&["A1", "B 2"])).unwrap_err();
        assert!(
            e.starts_with("line 2: `B 2` contains a space; order ids are at most 128 bytes"),
            "{e}"
        );
        let e = clean_list(items(&["x\u{7}y"])).unwrap_err();
        assert!(
            e.contains("line 1") && e.contains("control characters"),
            "{e}"
        );
        let e = clean_list(items(&[&"9".repeat(200)])).unwrap_err();
        assert!(e.contains("200 bytes long"), "{e}");
        assert_eq!(
            clean_list(items(&["", " "])),
            Err("no order id given".into())
        );
        // Linear in the count: 200,000 ids, most repeated.
        let many: Vec<(String, String)> = (0..200_000)
            .map(|i| (format!("line {i}"), format!("ID{}", i % 50_000)))
            .collect();
        assert_eq!(clean_list(many).unwrap().len(), 50_000);
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

            /// A list comes back as its trimmed, non-blank ids, first
            /// occurrences in order, when every one is usable and none holds
            /// whitespace; otherwise the first bad one is refused by its
            /// place, with the rule.
            #[test]
            fn clean_list_keeps_first_occurrences_or_names_the_first_bad_place(
                v in proptest::collection::vec(prop_oneof![
                    3 => "[A-C][0-2]",
                    1 => "[ ]{0,2}[A-C][0-2][ ]{0,2}",
                    1 => Just(String::new()),
                    1 => id(),
                ], 0..30)
            ) {
                let items: Vec<(String, String)> = v
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("line {}", i + 1), s.clone()))
                    .collect();
                let bad = v.iter().position(|s| {
                    let t = s.trim();
                    !t.is_empty()
                        && (t.chars().any(char::is_whitespace) || check("x", t).is_err())
                });
                let mut want: Vec<String> = Vec::new();
                for s in &v {
                    let t = s.trim();
                    if !t.is_empty() && !want.iter().any(|w| w == t) {
                        want.push(t.to_owned());
                    }
                }
                match (clean_list(items), bad) {
                    (Err(e), Some(i)) => {
                        let place = format!("line {}: ", i + 1);
                        prop_assert!(e.starts_with(&place), "{e}");
                        prop_assert!(e.ends_with(RULE), "{e}");
                    }
                    (Err(e), None) => prop_assert!(want.is_empty() && e == "no order id given", "{e}"),
                    (Ok(got), None) => prop_assert_eq!(got, want),
                    (Ok(got), Some(i)) => prop_assert!(false, "accepted {got:?} though line {} is bad", i + 1),
                }
            }
        }
    }
}
