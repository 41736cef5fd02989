//! Regexes, with one meaning in both builds.
//!
//! Patterns are compiled with regex-lite (small enough for the .wasm files): its syntax and its error messages are
//! the reference. The dynamic modules also compile each pattern with the `regex` crate (about eight times faster
//! on a typical extraction) unless it uses a construct whose meaning differs between the two crates: Perl classes
//! (`\d \s \w`), word boundaries and case-insensitive matching are ASCII-only in regex-lite and Unicode-aware in
//! `regex` (and `(?u)`/`(?-u)` switch that). Those patterns keep running on regex-lite; the others define the same
//! matches and the same groups in both (regex-lite documents these as its only differences in meaning).

/// A compiled regex.
#[derive(Debug, Clone)]
pub struct Regex {
    lite: regex_lite::Regex,
    /// The same pattern in the `regex` crate, where it means exactly what it means in regex-lite.
    #[cfg(not(target_arch = "wasm32"))]
    fast: Option<regex::Regex>,
}

impl Regex {
    /// Compiles `pattern`; the error is regex-lite's.
    pub fn new(pattern: &str, case_insensitive: bool) -> Result<Self, regex_lite::Error> {
        let lite = regex_lite::RegexBuilder::new(pattern).case_insensitive(case_insensitive).build()?;
        Ok(Regex {
            lite,
            #[cfg(not(target_arch = "wasm32"))]
            fast: if case_insensitive || means_something_else_in_regex(pattern) {
                None
            } else {
                regex::Regex::new(pattern).ok()
            },
        })
    }

    /// Whether the faster engine runs this pattern (only ever in the dynamic modules).
    pub fn is_fast(&self) -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        return self.fast.is_some();
        #[cfg(target_arch = "wasm32")]
        false
    }

    pub fn is_match(&self, text: &str) -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(fast) = &self.fast {
            return fast.is_match(text);
        }
        self.lite.is_match(text)
    }

    /// The number of groups, the whole match included.
    pub fn captures_len(&self) -> usize {
        self.lite.captures_len()
    }

    /// Where group `index` (0: the whole match) of the first match is in `text`, if it took part.
    pub fn group(&self, text: &str, index: usize) -> Option<std::ops::Range<usize>> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(fast) = &self.fast {
            return fast.captures(text)?.get(index).map(|m| m.range());
        }
        self.lite.captures(text)?.get(index).map(|m| m.range())
    }

    /// `text` with every non-empty match replaced by `replacement`, in which `${1}`, `${name}` and `$$` are
    /// expanded; empty matches are left as they are.
    pub fn replace_non_empty(&self, text: &str, replacement: &str) -> String {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(fast) = &self.fast {
            return fast
                .replace_all(text, |caps: &regex::Captures<'_>| {
                    let mut out = String::new();
                    if caps.get(0).is_some_and(|m| !m.is_empty()) {
                        caps.expand(replacement, &mut out);
                    }
                    out
                })
                .into_owned();
        }
        self.lite
            .replace_all(text, |caps: &regex_lite::Captures<'_>| {
                let mut out = String::new();
                if caps.get(0).is_some_and(|m| !m.is_empty()) {
                    caps.expand(replacement, &mut out);
                }
                out
            })
            .into_owned()
    }
}

/// Whether `pattern` uses a construct that the `regex` crate reads differently from regex-lite (see above).
#[cfg(not(target_arch = "wasm32"))]
fn means_something_else_in_regex(pattern: &str) -> bool {
    use regex_syntax::ast::{self, AssertionKind, Ast, ClassSetItem, Flag, GroupKind};

    struct Finder;
    impl ast::Visitor for Finder {
        type Output = ();
        /// Found one: stop the walk.
        type Err = ();

        fn finish(self) -> Result<(), ()> {
            Ok(())
        }

        fn visit_pre(&mut self, node: &Ast) -> Result<(), ()> {
            let sets_a_flag = |flags: &ast::Flags| {
                flags.flag_state(Flag::CaseInsensitive) == Some(true) || flags.flag_state(Flag::Unicode).is_some()
            };
            let differs = match node {
                Ast::ClassPerl(_) | Ast::ClassUnicode(_) => true,
                Ast::Assertion(assertion) => !matches!(
                    assertion.kind,
                    AssertionKind::StartLine
                        | AssertionKind::EndLine
                        | AssertionKind::StartText
                        | AssertionKind::EndText
                ),
                Ast::Flags(set) => sets_a_flag(&set.flags),
                Ast::Group(group) => matches!(&group.kind, GroupKind::NonCapturing(flags) if sets_a_flag(flags)),
                _ => false,
            };
            if differs {
                Err(())
            } else {
                Ok(())
            }
        }

        fn visit_class_set_item_pre(&mut self, item: &ClassSetItem) -> Result<(), ()> {
            match item {
                ClassSetItem::Perl(_) | ClassSetItem::Unicode(_) => Err(()),
                _ => Ok(()),
            }
        }
    }

    match ast::parse::Parser::new().parse(pattern) {
        Ok(parsed) => ast::visit(&parsed, Finder).is_err(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_whose_meaning_differs_between_the_crates_stay_on_regex_lite() {
        for pattern in
            [r"\w+", r"\d", r"\s", r"[\w-]", r"\D", r"\bfoo\b", r"\B", "(?i)abc", r"(?i:k)", r"(?-u:\w)", "(?u)a"]
        {
            assert!(!Regex::new(pattern, false).unwrap().is_fast(), "{pattern}");
        }
        assert!(!Regex::new("abc", true).unwrap().is_fast());
        for pattern in ["^(?:([^@]+)@(.*))$", "[[:alpha:]]+", "(?-i:x)", "é.", "[^β]", "(?s).", "(?U)a+", "/u/.*"] {
            assert!(Regex::new(pattern, false).unwrap().is_fast(), "{pattern}");
        }
    }

    #[test]
    fn unicode_text_matches_as_regex_lite_matches_it() {
        // `\w` and case-insensitivity are ASCII-only in regex-lite: so they are here, in both builds.
        assert!(!Regex::new(r"^\w$", false).unwrap().is_match("é"));
        assert!(!Regex::new("^k$", true).unwrap().is_match("\u{212a}"));
        let at = Regex::new("^(?:([^@]+)@(.*))$", false).unwrap();
        assert_eq!(at.group("ünï@ex.com", 1), Some(0..5));
        assert_eq!(at.group("nobody", 1), None);
        assert_eq!(Regex::new("(a)|b", false).unwrap().group("b", 1), None);
        let digits = Regex::new("[0-9]+", false).unwrap();
        assert_eq!(digits.replace_non_empty("a1b22", "<${0}>$$"), "a<1>$b<22>$");
        assert_eq!(Regex::new("x*", false).unwrap().replace_non_empty("axb", "-"), "a-b");
    }
}
