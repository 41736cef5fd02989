//! Subject templates: `orders.{header:x-tenant}.created`, compiled once at configuration time and rendered per
//! request.
//!
//! This is a security boundary. A substituted value goes into the `PUB <subject> <size>` line of the NATS
//! protocol, so a value carrying `\r\nPUB other 3\r\n...` would inject commands, and a value carrying `.`, `*` or
//! `>` would publish to another subject than the operator wrote. Every substituted value must therefore be 1 to
//! [`MAX_VALUE_LEN`] bytes of printable ASCII other than space, `.`, `*` and `>`; anything else refuses the request
//! (400) before a byte is sent to NATS.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use shared::request::{percent_decode, query_param, split_path};
use shared::RequestHeaders;

/// The longest value a placeholder may substitute, in bytes.
pub const MAX_VALUE_LEN: usize = 128;
/// The longest subject the filter publishes to, in bytes.
pub const MAX_SUBJECT_LEN: usize = 512;

/// A compiled subject template.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SubjectTemplate {
    parts: Vec<Part>,
    /// Bytes of literal text, to size the rendered subject without reallocating.
    literal_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(Placeholder),
}

/// What a placeholder substitutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `{header:NAME}`: the request header (lower-case name).
    Header(String),
    /// `{query:NAME}`: the first value of the query parameter, percent-decoded.
    Query(String),
    /// `{path:N}`: the N-th segment of the path (1-based), percent-decoded.
    Path(usize),
    /// `{method}`: the request method.
    Method,
    /// `{route}`: the name of the Envoy route the request matched.
    Route,
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Header(name) => write!(f, "{{header:{name}}}"),
            Placeholder::Query(name) => write!(f, "{{query:{name}}}"),
            Placeholder::Path(n) => write!(f, "{{path:{n}}}"),
            Placeholder::Method => write!(f, "{{method}}"),
            Placeholder::Route => write!(f, "{{route}}"),
        }
    }
}

/// Why a request's values cannot make a subject (answered with 400; the value itself is never echoed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectError {
    /// The header, query parameter, path segment or route the placeholder names is absent.
    Missing(Placeholder),
    /// The value is empty, too long, or has a character a subject token cannot carry.
    Invalid(Placeholder),
    /// The rendered subject is longer than [`MAX_SUBJECT_LEN`].
    TooLong,
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectError::Missing(p) => write!(f, "subject placeholder {p}: no such value in the request"),
            SubjectError::Invalid(p) => write!(
                f,
                "subject placeholder {p}: the value must be 1 to {MAX_VALUE_LEN} printable ASCII characters \
                 without spaces, '.', '*' or '>'"
            ),
            SubjectError::TooLong => write!(f, "subject longer than {MAX_SUBJECT_LEN} bytes"),
        }
    }
}

impl TryFrom<String> for SubjectTemplate {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        SubjectTemplate::parse(&text)
    }
}

impl SubjectTemplate {
    /// Compiles a template. Literal text must itself be a valid publish subject: tokens separated by single dots,
    /// no empty token, no wildcard, no whitespace or control character.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("must not be empty".to_string());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            let (before, from) = rest.split_at(open);
            literal.push_str(before);
            if from.starts_with('}') {
                return Err(format!("unexpected '}}' at byte {}", text.len() - from.len()));
            }
            let Some(close) = from.find('}') else {
                return Err(format!("unclosed placeholder at byte {}", text.len() - from.len()));
            };
            let inner = from.get(1..close).unwrap_or_default();
            let placeholder = parse_placeholder(inner)?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Placeholder(placeholder));
            rest = from.get(close + 1..).unwrap_or_default();
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let template = SubjectTemplate {
            literal_len: parts.iter().map(|p| if let Part::Literal(l) = p { l.len() } else { 0 }).sum(),
            parts,
        };
        template.check_literals(text)?;
        Ok(template)
    }

    /// Literal text may hold token characters and single dots between tokens; a placeholder counts as a
    /// (non-empty) token character, since its value can never be empty or hold a dot.
    fn check_literals(&self, text: &str) -> Result<(), String> {
        if self.literal_len > MAX_SUBJECT_LEN {
            return Err(format!("longer than {MAX_SUBJECT_LEN} bytes"));
        }
        let mut token_empty = true;
        for part in &self.parts {
            match part {
                Part::Placeholder(_) => token_empty = false,
                Part::Literal(literal) => {
                    for c in literal.chars() {
                        if c == '.' {
                            if token_empty {
                                return Err(format!("{text:?} has an empty token (subjects are non-empty tokens separated by single dots)"));
                            }
                            token_empty = true;
                        } else if c == '*' || c == '>' {
                            return Err(format!(
                                "{text:?} has a wildcard ('*' or '>'): publish subjects must be literal"
                            ));
                        } else if c.is_whitespace() || c.is_control() {
                            return Err(format!("{text:?} has whitespace or a control character"));
                        } else {
                            token_empty = false;
                        }
                    }
                }
            }
        }
        if token_empty {
            return Err(format!(
                "{text:?} ends with an empty token (subjects are non-empty tokens separated by single dots)"
            ));
        }
        Ok(())
    }

    /// The placeholders, in order (e.g. to know which headers a rule reads).
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(placeholder) => Some(placeholder),
            Part::Literal(_) => None,
        })
    }

    /// Renders the subject for a request, validating every substituted value.
    pub fn render<R: RequestHeaders + ?Sized>(&self, request: &R) -> Result<String, SubjectError> {
        let mut subject = String::with_capacity(self.literal_len + 32);
        for part in &self.parts {
            match part {
                Part::Literal(literal) => subject.push_str(literal),
                Part::Placeholder(placeholder) => {
                    let value =
                        lookup(placeholder, request).ok_or_else(|| SubjectError::Missing(placeholder.clone()))?;
                    if !is_valid_token_value(value.as_bytes()) {
                        return Err(SubjectError::Invalid(placeholder.clone()));
                    }
                    subject.push_str(&value);
                }
            }
            if subject.len() > MAX_SUBJECT_LEN {
                return Err(SubjectError::TooLong);
            }
        }
        Ok(subject)
    }
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    let bad = |why: &str| format!("placeholder {{{inner}}}: {why}");
    let (kind, arg) = match inner.split_once(':') {
        Some((kind, arg)) => (kind, Some(arg)),
        None => (inner, None),
    };
    match (kind, arg) {
        ("method", None) => Ok(Placeholder::Method),
        ("route", None) => Ok(Placeholder::Route),
        ("header", Some(name)) => {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(is_header_name_byte) {
                return Err(bad("expected a header name, e.g. {header:x-tenant}"));
            }
            Ok(Placeholder::Header(name))
        }
        ("query", Some(name)) => {
            if name.is_empty() {
                return Err(bad("expected a query parameter name, e.g. {query:tenant}"));
            }
            Ok(Placeholder::Query(name.to_string()))
        }
        ("path", Some(n)) => match n.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Placeholder::Path(n)),
            _ => Err(bad("expected a path segment number from 1, e.g. {path:2}")),
        },
        _ => Err(bad("unknown placeholder; use {header:NAME}, {query:NAME}, {path:N}, {method} or {route}")),
    }
}

/// Header names as HTTP tokens (and `:` for pseudo-headers such as `:authority`).
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b)
}

fn lookup<'r, R: RequestHeaders + ?Sized>(placeholder: &Placeholder, request: &'r R) -> Option<Cow<'r, str>> {
    match placeholder {
        Placeholder::Header(name) => request.header(name),
        Placeholder::Method => request.header(":method"),
        Placeholder::Route => request.route_name(),
        Placeholder::Query(name) => {
            let full = request.header(":path")?;
            let (_, query) = split_path(&full);
            query_param(query, name).map(|v| Cow::Owned(v.into_owned()))
        }
        Placeholder::Path(n) => {
            let full = request.header(":path")?;
            let (path, _) = split_path(&full);
            let segment = path.strip_prefix('/').unwrap_or(path).split('/').nth(n.checked_sub(1)?)?;
            // Decoded bytes that are not UTF-8 are not ASCII either: they are refused by the token check anyway.
            Some(Cow::Owned(String::from_utf8_lossy(&percent_decode(segment)).into_owned()))
        }
    }
}

/// A substituted value: 1..=MAX_VALUE_LEN bytes of printable ASCII (0x21..=0x7e) other than `.`, `*`, `>`.
pub fn is_valid_token_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b'.' && b != b'*' && b != b'>')
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        headers: Vec<(String, String)>,
        route: Option<String>,
    }

    impl RequestHeaders for Req {
        fn header(&self, name: &str) -> Option<Cow<'_, str>> {
            self.headers.header(name).map(|v| Cow::Owned(v.into_owned()))
        }
        fn route_name(&self) -> Option<Cow<'_, str>> {
            self.route.as_deref().map(Cow::Borrowed)
        }
    }

    fn req(method: &str, path: &str, extra: &[(&str, &str)]) -> Req {
        let mut headers = vec![(":method".to_string(), method.to_string()), (":path".to_string(), path.to_string())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Req { headers, route: Some("orders-route".to_string()) }
    }

    fn render(template: &str, request: &Req) -> Result<String, SubjectError> {
        SubjectTemplate::parse(template).unwrap().render(request)
    }

    #[test]
    fn literal_subjects_render_as_they_are() {
        assert_eq!(render("orders.created", &req("POST", "/", &[])).unwrap(), "orders.created");
        assert_eq!(render("a", &req("POST", "/", &[])).unwrap(), "a");
    }

    #[test]
    fn every_placeholder_kind_substitutes() {
        let r = req("POST", "/events/acme/o%2D1?tenant=t+1&x=%41b&tenant=t2", &[("x-tenant", "acme"), ("x-id", "7")]);
        assert_eq!(render("orders.{header:x-tenant}.created", &r).unwrap(), "orders.acme.created");
        assert_eq!(render("orders.{header:X-Tenant}-{header:x-id}", &r).unwrap(), "orders.acme-7");
        assert_eq!(render("q.{query:x}", &r).unwrap(), "q.Ab");
        assert_eq!(render("p.{path:1}.{path:2}.{path:3}", &r).unwrap(), "p.events.acme.o-1");
        assert_eq!(render("m.{method}", &r).unwrap(), "m.POST");
        assert_eq!(render("r.{route}", &r).unwrap(), "r.orders-route");
        assert_eq!(render("{method}", &r).unwrap(), "POST");
    }

    #[test]
    fn missing_values_are_refused() {
        let r = Req { headers: vec![(":path".to_string(), "/a".to_string())], route: None };
        assert_eq!(render("a.{header:x-t}", &r), Err(SubjectError::Missing(Placeholder::Header("x-t".into()))));
        assert_eq!(render("a.{query:t}", &r), Err(SubjectError::Missing(Placeholder::Query("t".into()))));
        assert_eq!(render("a.{path:2}", &r), Err(SubjectError::Missing(Placeholder::Path(2))));
        assert_eq!(render("a.{route}", &r), Err(SubjectError::Missing(Placeholder::Route)));
        assert_eq!(render("a.{method}", &r), Err(SubjectError::Missing(Placeholder::Method)));
    }

    #[test]
    fn injection_attempts_are_refused() {
        let attacks = [
            "a\r\nPUB other 3\r\nxyz",
            "a\nb",
            "a\rb",
            "a b",
            "a\tb",
            "*",
            ">",
            "a.b",
            "a*",
            "",
            "caf\u{e9}",
            "a\u{0}b",
            "a\u{7f}",
        ];
        for attack in attacks {
            let r = req("POST", "/", &[("x-t", attack)]);
            assert_eq!(
                render("orders.{header:x-t}", &r),
                Err(SubjectError::Invalid(Placeholder::Header("x-t".into()))),
                "{attack:?}"
            );
        }
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        assert!(render("o.{header:x-t}", &req("POST", "/", &[("x-t", &long)])).is_err());
        let max = "x".repeat(MAX_VALUE_LEN);
        assert!(render("o.{header:x-t}", &req("POST", "/", &[("x-t", &max)])).is_ok());
        // Encoded attacks in the query string and the path are decoded first, then refused.
        for path in ["/e?t=a%0D%0APUB%20x%201%0D%0Ay", "/e?t=a.b", "/e?t=%2A", "/e?t=a+b", "/e?t=%3E"] {
            assert!(matches!(render("o.{query:t}", &req("POST", path, &[])), Err(SubjectError::Invalid(_))), "{path}");
        }
        for path in ["/a%0D%0APUB", "/a%2Eb", "/a%20b", "/%2A", "/a%00", "/caf%C3%A9", "/%FF", "//x"] {
            assert!(matches!(render("o.{path:1}", &req("POST", path, &[])), Err(SubjectError::Invalid(_))), "{path}");
        }
    }

    #[test]
    fn long_subjects_are_refused() {
        let value = "x".repeat(MAX_VALUE_LEN);
        let template = ["{header:x-t}"; 5].join(".");
        let r = req("POST", "/", &[("x-t", &value)]);
        assert_eq!(render(&template, &r), Err(SubjectError::TooLong));
    }

    #[test]
    fn bad_templates_are_explained() {
        let cases = [
            ("", "must not be empty"),
            ("a..b", "empty token"),
            (".a", "empty token"),
            ("a.", "ends with an empty token"),
            ("a.*", "wildcard"),
            ("a.>", "wildcard"),
            ("a b", "whitespace"),
            ("a.{header:}", "expected a header name"),
            ("a.{header:x y}", "expected a header name"),
            ("a.{query:}", "expected a query parameter name"),
            ("a.{path:0}", "from 1"),
            ("a.{path:x}", "from 1"),
            ("a.{body}", "unknown placeholder"),
            ("a.{method:x}", "unknown placeholder"),
            ("a.{header:x", "unclosed placeholder"),
            ("a.}", "unexpected '}'"),
        ];
        for (template, expected) in cases {
            let err = SubjectTemplate::parse(template).unwrap_err();
            assert!(err.contains(expected), "{template:?}: {err}");
        }
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert!(SubjectTemplate::parse(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn placeholders_are_listed_and_displayed() {
        let t = SubjectTemplate::parse("a.{header:X-T}.{query:q}.{path:2}.{method}.{route}").unwrap();
        let shown: Vec<String> = t.placeholders().map(ToString::to_string).collect();
        assert_eq!(shown, ["{header:x-t}", "{query:q}", "{path:2}", "{method}", "{route}"]);
    }

    #[test]
    fn errors_do_not_echo_values() {
        let r = req("POST", "/", &[("x-t", "secret value")]);
        let err = render("a.{header:x-t}", &r).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        assert!(err.contains("{header:x-t}"), "{err}");
    }
}
