//! Gloo's extractors: a value taken from a header, the body or (beyond Gloo) a query parameter with a regex, in
//! one of three modes:
//! - `EXTRACT`: the regex must match the whole input; the value is the chosen subgroup (empty when it does not
//!   match);
//! - `SINGLE_REPLACE`: the regex must match the whole input; the subgroup's span is replaced by
//!   `replacement_text` (the input is returned unchanged when it does not match);
//! - `REPLACE_ALL`: every match of the regex (anywhere, non-empty) is replaced by `replacement_text`, in which
//!   `$1`, `$&` and `$$` refer to groups as in ECMAScript (`std::regex_replace`, which Gloo uses).

use shared::matcher::full_match_regex;
use shared::regex::Regex;

/// Where an extractor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A header of the message being transformed (its first value).
    Header(String),
    /// The message body.
    Body,
    /// A query parameter of the request (decoded; its first value).
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Extract,
    SingleReplace,
    ReplaceAll,
}

#[derive(Debug, Clone)]
pub struct Extractor {
    pub source: Source,
    mode: Mode,
    /// Anchored to the whole input (EXTRACT, SINGLE_REPLACE) or not (REPLACE_ALL).
    regex: Regex,
    subgroup: usize,
    replacement: String,
}

impl Extractor {
    /// Builds an extractor with Gloo's configuration checks.
    pub fn new(
        source: Source,
        pattern: &str,
        subgroup: u32,
        mode: Mode,
        replacement: Option<String>,
    ) -> Result<Self, String> {
        let anchored = full_match_regex(pattern, false)?;
        let groups = anchored.captures_len().saturating_sub(1);
        let subgroup = subgroup as usize;
        if subgroup > groups {
            return Err(format!("group {subgroup} requested for regex with only {groups} sub groups"));
        }
        let (regex, replacement) = match mode {
            Mode::Extract => (anchored, replacement.unwrap_or_default()),
            Mode::SingleReplace => {
                let Some(text) = replacement else {
                    return Err("SINGLE_REPLACE mode set but no replacement text provided".to_string());
                };
                (anchored, text)
            }
            Mode::ReplaceAll => {
                let Some(text) = replacement else {
                    return Err("REPLACE_ALL mode set but no replacement text provided".to_string());
                };
                if subgroup != 0 {
                    return Err("REPLACE_ALL mode set but subgroup is not 0".to_string());
                }
                let search = Regex::new(pattern, false).map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
                (search, ecmascript_to_rust_replacement(&text, groups))
            }
        };
        Ok(Extractor { source, mode, regex, subgroup, replacement })
    }

    /// The value for `input` (the header value, body or query parameter; `None` when the header or parameter is
    /// absent, which gives an empty value as in Gloo).
    pub fn run(&self, input: Option<&str>) -> String {
        let Some(input) = input else { return String::new() };
        match self.mode {
            Mode::Extract => self
                .regex
                .group(input, self.subgroup)
                .and_then(|group| input.get(group))
                .unwrap_or_default()
                .to_string(),
            Mode::SingleReplace => match self.regex.group(input, self.subgroup) {
                Some(group) => {
                    let mut out = String::with_capacity(input.len() + self.replacement.len());
                    out.push_str(input.get(..group.start).unwrap_or_default());
                    out.push_str(&self.replacement);
                    out.push_str(input.get(group.end..).unwrap_or_default());
                    out
                }
                None => input.to_string(),
            },
            // std::regex_constants::match_not_null: empty matches are not replaced.
            Mode::ReplaceAll => self.regex.replace_non_empty(input, &self.replacement),
        }
    }
}

/// `$1`, `$12`, `$&`, `$$` of an ECMAScript replacement into the `regex` crate's `${1}`, `${0}`, `$$`; any other
/// `$` is literal.
fn ecmascript_to_rust_replacement(text: &str, groups: usize) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push_str("$$");
                i += 2;
            }
            Some('&') => {
                out.push_str("${0}");
                i += 2;
            }
            Some(d) if d.is_ascii_digit() => {
                let one = d.to_digit(10).unwrap_or(0) as usize;
                let two = chars.get(i + 2).and_then(|e| e.to_digit(10)).map(|e| one * 10 + e as usize);
                match two {
                    Some(n) if n <= groups && n > 0 => {
                        out.push_str(&format!("${{{n}}}"));
                        i += 3;
                    }
                    _ => {
                        out.push_str(&format!("${{{one}}}"));
                        i += 2;
                    }
                }
            }
            _ => {
                out.push_str("$$");
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(pattern: &str, subgroup: u32, mode: Mode, replacement: Option<&str>) -> Extractor {
        Extractor::new(Source::Body, pattern, subgroup, mode, replacement.map(str::to_string)).unwrap()
    }

    #[test]
    fn extract_needs_a_whole_match() {
        let e = ex(r"/users/(\d+)", 1, Mode::Extract, None);
        assert_eq!(e.run(Some("/users/42")), "42");
        assert_eq!(e.run(Some("/users/42/x")), "");
        assert_eq!(e.run(Some("x/users/42")), "");
        assert_eq!(e.run(None), "");
        assert_eq!(ex(".*", 0, Mode::Extract, None).run(Some("all of it")), "all of it");
        // An optional group that did not take part gives an empty value.
        assert_eq!(ex("a(b)?", 1, Mode::Extract, None).run(Some("a")), "");
    }

    #[test]
    fn single_replace_replaces_the_subgroup() {
        let e = ex(r"/users/(\d+)/(.*)", 1, Mode::SingleReplace, Some("ID"));
        assert_eq!(e.run(Some("/users/42/profile")), "/users/ID/profile");
        assert_eq!(e.run(Some("/other")), "/other");
        assert_eq!(ex("abc", 0, Mode::SingleReplace, Some("x")).run(Some("abc")), "x");
        assert_eq!(ex("abc", 0, Mode::SingleReplace, Some("x")).run(Some("zabc")), "zabc");
    }

    #[test]
    fn replace_all_replaces_every_match_with_group_references() {
        let e = ex(r"(\d+)", 0, Mode::ReplaceAll, Some("<$1>"));
        assert_eq!(e.run(Some("a1b22c")), "a<1>b<22>c");
        assert_eq!(ex(r"o", 0, Mode::ReplaceAll, Some("0")).run(Some("foo boo")), "f00 b00");
        assert_eq!(ex(r"(a)(b)", 0, Mode::ReplaceAll, Some("$2$1$&$$x$1z")).run(Some("ab")), "baab$xaz");
        // Empty matches are not replaced (match_not_null).
        assert_eq!(ex(r"x*", 0, Mode::ReplaceAll, Some("-")).run(Some("axb")), "a-b");
        assert_eq!(ex(r"q", 0, Mode::ReplaceAll, Some("-")).run(None), "");
    }

    #[test]
    fn config_checks_as_gloo() {
        let err = |pattern: &str, subgroup, mode, replacement: Option<&str>| {
            Extractor::new(Source::Header("x".into()), pattern, subgroup, mode, replacement.map(str::to_string))
                .unwrap_err()
        };
        assert_eq!(err("(a)", 2, Mode::Extract, None), "group 2 requested for regex with only 1 sub groups");
        assert_eq!(err("a", 0, Mode::SingleReplace, None), "SINGLE_REPLACE mode set but no replacement text provided");
        assert_eq!(err("a", 0, Mode::ReplaceAll, None), "REPLACE_ALL mode set but no replacement text provided");
        assert_eq!(err("(a)", 1, Mode::ReplaceAll, Some("x")), "REPLACE_ALL mode set but subgroup is not 0");
        assert!(err("(", 0, Mode::Extract, None).contains("invalid regex"));
    }

    #[test]
    fn replacement_translation() {
        assert_eq!(ecmascript_to_rust_replacement("$1a$$b$&$x$", 1), "${1}a$$b${0}$$x$$");
        assert_eq!(ecmascript_to_rust_replacement("$12", 12), "${12}");
        assert_eq!(ecmascript_to_rust_replacement("$12", 1), "${1}2");
    }
}
