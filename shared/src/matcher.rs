//! Request matching with the JSON shapes of Envoy's `RouteMatch` and `HeaderMatcher` (snake_case), plus
//! `methods` and `route_name`. Regexes are compiled once, when the configuration is parsed ([`crate::regex`]:
//! linear time, like RE2) and must match the whole input, as Envoy's `safe_regex` does.

use crate::regex::Regex;
use serde::Deserialize;

use crate::request::{query_param, split_path, RequestHeaders};

/// A compiled request matcher. The default matches every request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawRouteMatch")]
pub struct RouteMatch {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query_parameters: Vec<QueryParameterMatcher>,
    methods: Vec<String>,
    route_name: Option<String>,
}

#[derive(Debug, Clone, Default)]
enum PathMatch {
    #[default]
    Any,
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

/// Envoy's `HeaderMatcher`: one of the value matchers (or none: the header must be present), `invert_match`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawHeaderMatcher")]
pub struct HeaderMatcher {
    name: String,
    value: ValueMatch,
    invert: bool,
}

/// Envoy's `QueryParameterMatcher`: `string_match` or `present_match` (none: the parameter must be present).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawQueryParameterMatcher")]
pub struct QueryParameterMatcher {
    name: String,
    value: ValueMatch,
}

#[derive(Debug, Clone)]
enum ValueMatch {
    Present(bool),
    String(StringMatch),
}

/// Envoy's `StringMatcher`: `exact` | `prefix` | `suffix` | `contains` | `safe_regex`, with `ignore_case`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawStringMatch")]
pub struct StringMatch {
    kind: StringMatchKind,
    ignore_case: bool,
}

#[derive(Debug, Clone)]
enum StringMatchKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

impl RouteMatch {
    /// A matcher for one path prefix, e.g. for rules built in code.
    pub fn prefix(prefix: &str) -> Self {
        RouteMatch { path: PathMatch::Prefix(prefix.to_string()), case_sensitive: true, ..Default::default() }
    }

    /// `true` when the request satisfies every condition. Reads only the headers the conditions name.
    pub fn matches<R: RequestHeaders + ?Sized>(&self, request: &R) -> bool {
        if !self.methods.is_empty() {
            let Some(method) = request.header(":method") else { return false };
            if !self.methods.iter().any(|m| *m == *method) {
                return false;
            }
        }
        if !self.path_matches(request) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(request)) {
            return false;
        }
        if !self.query_parameters.is_empty() {
            let path = request.header(":path").unwrap_or_default();
            let (_, query) = split_path(&path);
            if !self.query_parameters.iter().all(|q| q.matches(query)) {
                return false;
            }
        }
        match &self.route_name {
            None => true,
            Some(expected) => request.route_name().is_some_and(|actual| *actual == **expected),
        }
    }

    fn path_matches<R: RequestHeaders + ?Sized>(&self, request: &R) -> bool {
        if matches!(self.path, PathMatch::Any) {
            return true;
        }
        let Some(full) = request.header(":path") else { return false };
        let (path, _) = split_path(&full);
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) if self.case_sensitive => path.starts_with(prefix.as_str()),
            PathMatch::Prefix(prefix) => path.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
            PathMatch::Exact(exact) if self.case_sensitive => path == exact,
            PathMatch::Exact(exact) => path.eq_ignore_ascii_case(exact),
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }
}

impl HeaderMatcher {
    fn matches<R: RequestHeaders + ?Sized>(&self, request: &R) -> bool {
        match request.header(&self.name) {
            // Envoy: a missing header matches only `present_match: false`, or any inverted non-presence matcher.
            None => match self.value {
                ValueMatch::Present(expected) => expected == self.invert,
                ValueMatch::String(_) => self.invert,
            },
            Some(value) => self.value.matches(&value) != self.invert,
        }
    }
}

impl QueryParameterMatcher {
    fn matches(&self, query: &str) -> bool {
        match query_param(query, &self.name) {
            None => matches!(self.value, ValueMatch::Present(false)),
            Some(value) => self.value.matches(&value),
        }
    }
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Present(expected) => *expected,
            ValueMatch::String(string) => string.matches(value),
        }
    }
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        match &self.kind {
            StringMatchKind::Exact(s) if ic => value.eq_ignore_ascii_case(s),
            StringMatchKind::Exact(s) => value == s,
            StringMatchKind::Prefix(s) if ic => value.get(..s.len()).is_some_and(|h| h.eq_ignore_ascii_case(s)),
            StringMatchKind::Prefix(s) => value.starts_with(s.as_str()),
            StringMatchKind::Suffix(s) if ic => {
                value.len() >= s.len() && value.get(value.len() - s.len()..).is_some_and(|t| t.eq_ignore_ascii_case(s))
            }
            StringMatchKind::Suffix(s) => value.ends_with(s.as_str()),
            StringMatchKind::Contains(s) if ic => value.to_ascii_lowercase().contains(&s.to_ascii_lowercase()),
            StringMatchKind::Contains(s) => value.contains(s.as_str()),
            StringMatchKind::Regex(regex) => regex.is_match(value),
        }
    }
}

/// Compiles a regex that must match the whole input.
pub fn full_match_regex(pattern: &str, ignore_case: bool) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"), ignore_case)
        .map_err(|e| format!("invalid regex {pattern:?}: {}", first_line(&e.to_string())))
}

fn first_line(text: &str) -> String {
    // regex's messages draw the pattern over several lines; the last line holds the reason.
    text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(text).trim().to_string()
}

// ---- JSON shapes ---------------------------------------------------------------------------------------------

/// Envoy's `RegexMatcher` (`{"regex": "..."}`; `google_re2` is accepted and ignored for pasted configs).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegex {
    regex: String,
    #[serde(default)]
    #[allow(dead_code)]
    #[serde(alias = "googleRe2")]
    google_re2: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteMatch {
    prefix: Option<String>,
    path: Option<String>,
    #[serde(alias = "safeRegex")]
    safe_regex: Option<RawRegex>,
    #[serde(alias = "caseSensitive")]
    case_sensitive: Option<bool>,
    #[serde(default)]
    headers: Vec<HeaderMatcher>,
    #[serde(default)]
    #[serde(alias = "queryParameters")]
    query_parameters: Vec<QueryParameterMatcher>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(alias = "routeName")]
    route_name: Option<String>,
}

impl TryFrom<RawRouteMatch> for RouteMatch {
    type Error = String;

    fn try_from(raw: RawRouteMatch) -> Result<Self, String> {
        let path = match (raw.prefix, raw.path, raw.safe_regex) {
            (None, None, None) => PathMatch::Any,
            (Some(prefix), None, None) => PathMatch::Prefix(prefix),
            (None, Some(path), None) => PathMatch::Exact(path),
            (None, None, Some(re)) => {
                PathMatch::Regex(full_match_regex(&re.regex, false).map_err(|e| format!("safe_regex: {e}"))?)
            }
            _ => return Err("set only one of `prefix`, `path`, `safe_regex`".to_string()),
        };
        let mut methods = Vec::with_capacity(raw.methods.len());
        for method in raw.methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("methods: invalid method {method:?}"));
            }
            methods.push(method.to_ascii_uppercase());
        }
        Ok(RouteMatch {
            path,
            case_sensitive: raw.case_sensitive.unwrap_or(true),
            headers: raw.headers,
            query_parameters: raw.query_parameters,
            methods,
            route_name: raw.route_name,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatcher {
    name: String,
    #[serde(alias = "exactMatch")]
    exact_match: Option<String>,
    #[serde(alias = "prefixMatch")]
    prefix_match: Option<String>,
    #[serde(alias = "suffixMatch")]
    suffix_match: Option<String>,
    #[serde(alias = "containsMatch")]
    contains_match: Option<String>,
    #[serde(alias = "safeRegexMatch")]
    safe_regex_match: Option<RawRegex>,
    #[serde(alias = "presentMatch")]
    present_match: Option<bool>,
    #[serde(alias = "stringMatch")]
    string_match: Option<StringMatch>,
    #[serde(default)]
    #[serde(alias = "invertMatch")]
    invert_match: bool,
}

impl TryFrom<RawHeaderMatcher> for HeaderMatcher {
    type Error = String;

    fn try_from(raw: RawHeaderMatcher) -> Result<Self, String> {
        let name = header_name(&raw.name)?;
        let string = |kind| ValueMatch::String(StringMatch { kind, ignore_case: false });
        let mut values: Vec<ValueMatch> = Vec::new();
        values.extend(raw.exact_match.map(|s| string(StringMatchKind::Exact(s))));
        values.extend(raw.prefix_match.map(|s| string(StringMatchKind::Prefix(s))));
        values.extend(raw.suffix_match.map(|s| string(StringMatchKind::Suffix(s))));
        values.extend(raw.contains_match.map(|s| string(StringMatchKind::Contains(s))));
        if let Some(re) = raw.safe_regex_match {
            let regex = full_match_regex(&re.regex, false).map_err(|e| format!("safe_regex_match: {e}"))?;
            values.push(string(StringMatchKind::Regex(regex)));
        }
        values.extend(raw.present_match.map(ValueMatch::Present));
        values.extend(raw.string_match.map(ValueMatch::String));
        if values.len() > 1 {
            return Err(format!(
                "header {name:?}: set only one of `exact_match`, `prefix_match`, `suffix_match`, `contains_match`, \
                 `safe_regex_match`, `present_match`, `string_match`"
            ));
        }
        let value = values.pop().unwrap_or(ValueMatch::Present(true));
        Ok(HeaderMatcher { name, value, invert: raw.invert_match })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueryParameterMatcher {
    name: String,
    #[serde(alias = "stringMatch")]
    string_match: Option<StringMatch>,
    #[serde(alias = "presentMatch")]
    present_match: Option<bool>,
}

impl TryFrom<RawQueryParameterMatcher> for QueryParameterMatcher {
    type Error = String;

    fn try_from(raw: RawQueryParameterMatcher) -> Result<Self, String> {
        if raw.name.is_empty() {
            return Err("query parameter name must not be empty".to_string());
        }
        let value = match (raw.string_match, raw.present_match) {
            (Some(string), None) => ValueMatch::String(string),
            (None, Some(present)) => ValueMatch::Present(present),
            (None, None) => ValueMatch::Present(true),
            (Some(_), Some(_)) => {
                return Err(format!("query parameter {:?}: set only one of `string_match`, `present_match`", raw.name))
            }
        };
        Ok(QueryParameterMatcher { name: raw.name, value })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    contains: Option<String>,
    #[serde(alias = "safeRegex")]
    safe_regex: Option<RawRegex>,
    #[serde(default)]
    #[serde(alias = "ignoreCase")]
    ignore_case: bool,
}

impl TryFrom<RawStringMatch> for StringMatch {
    type Error = String;

    fn try_from(raw: RawStringMatch) -> Result<Self, String> {
        let ignore_case = raw.ignore_case;
        let mut kinds = Vec::new();
        kinds.extend(raw.exact.map(StringMatchKind::Exact));
        kinds.extend(raw.prefix.map(StringMatchKind::Prefix));
        kinds.extend(raw.suffix.map(StringMatchKind::Suffix));
        kinds.extend(raw.contains.map(StringMatchKind::Contains));
        if let Some(re) = raw.safe_regex {
            let regex = full_match_regex(&re.regex, ignore_case).map_err(|e| format!("safe_regex: {e}"))?;
            kinds.push(StringMatchKind::Regex(regex));
        }
        match (kinds.pop(), kinds.is_empty()) {
            (Some(kind), true) => Ok(StringMatch { kind, ignore_case }),
            _ => Err("string matcher: set exactly one of `exact`, `prefix`, `suffix`, `contains`, `safe_regex`".into()),
        }
    }
}

/// Header names are matched lower-case, as Envoy stores them; a name that cannot be a header is a config error.
pub fn header_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| (b == b':' && i == 0) || b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("invalid header name {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    struct Req {
        headers: Vec<(String, String)>,
        route: Option<&'static str>,
    }

    impl RequestHeaders for Req {
        fn header(&self, name: &str) -> Option<Cow<'_, str>> {
            self.headers.header(name)
        }
        fn route_name(&self) -> Option<Cow<'_, str>> {
            self.route.map(Cow::Borrowed)
        }
    }

    fn req(method: &str, path: &str, extra: &[(&str, &str)]) -> Req {
        let mut headers = vec![(":method".to_string(), method.to_string()), (":path".to_string(), path.to_string())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Req { headers, route: None }
    }

    fn m(json: &str) -> RouteMatch {
        serde_json::from_str(json).unwrap()
    }

    fn err(json: &str) -> String {
        serde_json::from_str::<RouteMatch>(json).unwrap_err().to_string()
    }

    #[test]
    fn empty_matches_everything() {
        assert!(m("{}").matches(&req("GET", "/x", &[])));
        assert!(RouteMatch::default().matches(&req("GET", "/x", &[])));
    }

    #[test]
    fn prefix_path_and_regex_ignore_the_query() {
        assert!(m(r#"{"prefix": "/api"}"#).matches(&req("GET", "/api/v1?x=1", &[])));
        assert!(!m(r#"{"prefix": "/api"}"#).matches(&req("GET", "/ap", &[])));
        assert!(m(r#"{"path": "/a"}"#).matches(&req("GET", "/a?b", &[])));
        assert!(!m(r#"{"path": "/a"}"#).matches(&req("GET", "/a/", &[])));
        let re = m(r#"{"safe_regex": {"google_re2": {}, "regex": "/users/\\d+"}}"#);
        assert!(re.matches(&req("GET", "/users/42?x", &[])));
        assert!(!re.matches(&req("GET", "/users/42/x", &[])), "regex must match the whole path");
        assert!(RouteMatch::prefix("/x").matches(&req("GET", "/x/y", &[])));
    }

    #[test]
    fn camel_case_field_names_as_protobuf_json_writes_them() {
        let camel = m(r#"{"safeRegex": {"googleRe2": {}, "regex": "/u/\\d+"}, "caseSensitive": false,
            "headers": [{"name": "x-a", "exactMatch": "1"}, {"name": "x-b", "presentMatch": true, "invertMatch": true},
                        {"name": "x-c", "safeRegexMatch": {"regex": "c+"}},
                        {"name": "x-d", "stringMatch": {"safeRegex": {"regex": "D"}, "ignoreCase": true}}],
            "queryParameters": [{"name": "q", "stringMatch": {"exact": "v"}}], "routeName": "r"}"#);
        let mut request = req("GET", "/u/1?q=v", &[("x-a", "1"), ("x-c", "cc"), ("x-d", "d")]);
        request.route = Some("r");
        assert!(camel.matches(&request));
        request.headers.push(("x-b".to_string(), "present".to_string()));
        assert!(!camel.matches(&request), "invertMatch applies");
        for (name, json) in [
            ("prefixMatch", r#"{"headers": [{"name": "x", "prefixMatch": "a"}]}"#),
            ("suffixMatch", r#"{"headers": [{"name": "x", "suffixMatch": "a"}]}"#),
            ("containsMatch", r#"{"headers": [{"name": "x", "containsMatch": "a"}]}"#),
            ("presentMatch", r#"{"queryParameters": [{"name": "x", "presentMatch": true}]}"#),
        ] {
            assert!(serde_json::from_str::<RouteMatch>(json).is_ok(), "{name}");
        }
    }

    #[test]
    fn case_insensitive_paths() {
        let m1 = m(r#"{"prefix": "/API", "case_sensitive": false}"#);
        assert!(m1.matches(&req("GET", "/api/x", &[])));
        assert!(!m(r#"{"prefix": "/API"}"#).matches(&req("GET", "/api/x", &[])));
        assert!(m(r#"{"path": "/A", "case_sensitive": false}"#).matches(&req("GET", "/a", &[])));
        // A multi-byte character where the prefix would end must not panic.
        assert!(!m1.matches(&req("GET", "/é", &[])));
    }

    #[test]
    fn methods() {
        let get = m(r#"{"methods": ["get", "POST"]}"#);
        assert!(get.matches(&req("GET", "/", &[])));
        assert!(get.matches(&req("POST", "/", &[])));
        assert!(!get.matches(&req("PUT", "/", &[])));
        assert!(err(r#"{"methods": ["G T"]}"#).contains("invalid method"));
    }

    #[test]
    fn header_matchers() {
        let cases = [
            (r#"{"name": "x-t", "exact_match": "free"}"#, "free", true),
            (r#"{"name": "x-t", "exact_match": "free"}"#, "Free", false),
            (r#"{"name": "x-t", "prefix_match": "fr"}"#, "free", true),
            (r#"{"name": "x-t", "suffix_match": "ee"}"#, "free", true),
            (r#"{"name": "x-t", "contains_match": "re"}"#, "free", true),
            (r#"{"name": "x-t", "contains_match": "zz"}"#, "free", false),
            (r#"{"name": "x-t", "safe_regex_match": {"regex": "f.*"}}"#, "free", true),
            (r#"{"name": "x-t", "safe_regex_match": {"regex": "r"}}"#, "free", false),
            (r#"{"name": "x-t", "present_match": true}"#, "", true),
            (r#"{"name": "X-T"}"#, "x", true),
            (r#"{"name": "x-t", "exact_match": "free", "invert_match": true}"#, "free", false),
            (r#"{"name": "x-t", "string_match": {"exact": "FREE", "ignore_case": true}}"#, "free", true),
            (r#"{"name": "x-t", "string_match": {"suffix": "EE", "ignore_case": true}}"#, "free", true),
            (r#"{"name": "x-t", "string_match": {"prefix": "FR", "ignore_case": true}}"#, "free", true),
            (r#"{"name": "x-t", "string_match": {"contains": "RE", "ignore_case": true}}"#, "free", true),
            (
                r#"{"name": "x-t", "string_match": {"safe_regex": {"regex": "FR.*"}, "ignore_case": true}}"#,
                "free",
                true,
            ),
        ];
        for (json, value, expected) in cases {
            let matcher = m(&format!(r#"{{"headers": [{json}]}}"#));
            assert_eq!(matcher.matches(&req("GET", "/", &[("x-t", value)])), expected, "{json} vs {value:?}");
        }
    }

    #[test]
    fn missing_headers_follow_envoy() {
        let missing = req("GET", "/", &[]);
        let cases = [
            (r#"{"name": "x-t", "exact_match": "a"}"#, false),
            (r#"{"name": "x-t", "exact_match": "a", "invert_match": true}"#, true),
            (r#"{"name": "x-t", "present_match": true}"#, false),
            (r#"{"name": "x-t", "present_match": false}"#, true),
            (r#"{"name": "x-t", "present_match": true, "invert_match": true}"#, true),
        ];
        for (json, expected) in cases {
            assert_eq!(m(&format!(r#"{{"headers": [{json}]}}"#)).matches(&missing), expected, "{json}");
        }
    }

    #[test]
    fn query_parameters() {
        let q = m(r#"{"query_parameters": [{"name": "v", "string_match": {"exact": "a b"}}, {"name": "debug"}]}"#);
        assert!(q.matches(&req("GET", "/p?v=a+b&debug", &[])));
        assert!(!q.matches(&req("GET", "/p?v=a+b", &[])));
        assert!(!q.matches(&req("GET", "/p?v=ab&debug=1", &[])));
        let absent = m(r#"{"query_parameters": [{"name": "v", "present_match": false}]}"#);
        assert!(absent.matches(&req("GET", "/p", &[])));
    }

    #[test]
    fn route_name() {
        let r = m(r#"{"route_name": "orders"}"#);
        let mut request = req("GET", "/", &[]);
        assert!(!r.matches(&request));
        request.route = Some("orders");
        assert!(r.matches(&request));
        request.route = Some("other");
        assert!(!r.matches(&request));
    }

    #[test]
    fn bad_matchers_are_explained() {
        assert!(err(r#"{"prefix": "/a", "path": "/b"}"#).contains("set only one of `prefix`, `path`, `safe_regex`"));
        assert!(err(r#"{"safe_regex": {"regex": "("}}"#).contains("safe_regex: invalid regex \"(\""));
        assert!(
            err(r#"{"headers": [{"name": "x", "exact_match": "a", "prefix_match": "b"}]}"#).contains("set only one of")
        );
        assert!(err(r#"{"headers": [{"name": "bad name"}]}"#).contains("invalid header name"));
        assert!(err(r#"{"headers": [{"name": "x", "regex_match": "a"}]}"#).contains("unknown field `regex_match`"));
        assert!(err(r#"{"query_parameters": [{"name": "x", "string_match": {}}]}"#).contains("set exactly one"));
        assert!(err(r#"{"prefixx": "/"}"#).contains("unknown field `prefixx`"));
    }

    #[test]
    fn header_names() {
        assert_eq!(header_name("X-Api-Key").unwrap(), "x-api-key");
        assert_eq!(header_name(":path").unwrap(), ":path");
        assert!(header_name("a:b").is_err());
        assert!(header_name("").is_err());
        assert!(header_name("a\nb").is_err());
    }
}
