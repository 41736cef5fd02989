//! The dynamic modules run most patterns on the `regex` crate and the .wasm files on regex-lite: on random
//! patterns (built from the constructs both crates have, those whose meaning differs included) and random text
//! (ASCII, accented letters, the Kelvin sign that Unicode case folding maps to `k`, new lines), `shared::regex`
//! finds exactly what regex-lite finds: the same match, the same groups, the same replacements.

// Test code: a broken strategy should stop the run loudly.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shared::regex::Regex;

fn atom() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "b",
        "k",
        "@",
        "é",
        "β",
        ".",
        r"\.",
        "[^@]",
        "[a-c]",
        "[^β]",
        "[[:alpha:]]",
        "[é-ü]",
        r"\d",
        r"\w",
        r"\s",
        r"[\w@]",
        r"\b",
        r"\B",
        "^",
        "$",
        "(?i)",
        "(?s)",
        "(?U)",
        r"\x{212a}",
    ])
    .prop_map(str::to_string)
}

fn pattern() -> impl Strategy<Value = String> {
    atom().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|parts| parts.concat()),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}|{b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("(?:{a})")),
            (inner, prop::sample::select(vec!["*", "+", "?", "{1,3}", "*?", "+?"]))
                .prop_map(|(a, r)| format!("({a}){r}")),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    let chars = prop::sample::select(vec!['a', 'b', 'k', 'K', '@', 'é', 'É', 'β', '\u{212a}', ' ', '\n', '1', '_']);
    prop::collection::vec(chars, 0..12).prop_map(|c| c.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn both_engines_find_the_same(pattern in pattern(), text in text(), case_insensitive in any::<bool>()) {
        let lite = regex_lite::RegexBuilder::new(&pattern).case_insensitive(case_insensitive).build();
        let ours = Regex::new(&pattern, case_insensitive);
        prop_assert_eq!(lite.is_ok(), ours.is_ok());
        let (Ok(lite), Ok(ours)) = (lite, ours) else { return Ok(()) };
        prop_assert_eq!(lite.is_match(&text), ours.is_match(&text));
        prop_assert_eq!(lite.captures_len(), ours.captures_len());
        for index in 0..lite.captures_len() {
            let expected = lite.captures(&text).and_then(|c| c.get(index)).map(|m| m.range());
            prop_assert_eq!(expected, ours.group(&text, index), "group {}", index);
        }
        let expected = lite
            .replace_all(&text, |caps: &regex_lite::Captures<'_>| {
                let mut out = String::new();
                if caps.get(0).is_some_and(|m| !m.is_empty()) {
                    caps.expand("<${1}>", &mut out);
                }
                out
            })
            .into_owned();
        prop_assert_eq!(expected, ours.replace_non_empty(&text, "<${1}>"));
    }
}
