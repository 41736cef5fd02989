//! Plugin configuration of the `ratelimit` filter: serde types and the checks done once, at configure time.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use shared::config::{self, non_empty, ConfigError};
use shared::matcher::header_name;
use shared::{DurationStr, RouteMatch};

pub const FILTER: &str = "ratelimit";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    #[serde(default)]
    pub response: Response,
    pub global: Option<Global>,
    /// Slots in the plugin's bucket table: the most buckets live at once and the most shared-data entries the
    /// plugin ever creates. A new key that finds its slots taken by live buckets is admitted without a bucket
    /// (fail open, `key_overflow`).
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    /// How often the `slots` gauge is refreshed and overflows are logged (idle buckets need no removal).
    #[serde(default = "default_cleanup_interval")]
    pub cleanup_interval: DurationStr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// What the bucket is per; empty: one bucket for every matching request.
    #[serde(default)]
    pub key: Vec<KeySpec>,
    /// Local limits, enforced in this Envoy across all its workers.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Also ask the rate-limit service configured in `global` (one descriptor from this rule's key parts).
    #[serde(default)]
    pub global: bool,
    /// Count and log what would be limited, never reject.
    #[serde(default)]
    pub shadow: bool,
    /// Hits this rule's descriptor adds at the service (Envoy's `RateLimit.hits_addend`); absent: 1.
    pub hits_addend: Option<HitsAddend>,
}

/// Envoy's largest `hits_addend`.
pub const MAX_HITS_ADDEND: u64 = 1_000_000_000;

/// How many hits a global descriptor adds: a number, or the value of a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HitsAddend {
    Number(u64),
    Header(String),
}

impl<'de> Deserialize<'de> for HitsAddend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        const FORMS: &str = r#"expected a number from 0 to 1000000000 or {"header": NAME}"#;
        let value = serde_json::Value::deserialize(deserializer)?;
        if let Some(number) = value.as_u64() {
            return if number <= MAX_HITS_ADDEND {
                Ok(HitsAddend::Number(number))
            } else {
                Err(D::Error::custom(format!("{number} is too large, {FORMS}")))
            };
        }
        match value.as_object().and_then(|o| o.get("header").filter(|_| o.len() == 1)) {
            Some(serde_json::Value::String(name)) => {
                Ok(HitsAddend::Header(header_name(name).map_err(D::Error::custom)?))
            }
            _ => Err(D::Error::custom(format!("invalid hits_addend {value}, {FORMS}"))),
        }
    }
}

/// One part of a rule's key and, for global rules, the descriptor entry key it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub part: KeyPart,
    /// `descriptor_key`; absent: [`KeyPart::default_descriptor_key`].
    pub descriptor_key: Option<String>,
}

impl From<KeyPart> for KeySpec {
    fn from(part: KeyPart) -> Self {
        KeySpec { part, descriptor_key: None }
    }
}

impl KeySpec {
    /// The part's name in logs.
    pub fn name(&self) -> &str {
        self.part.name()
    }

    /// The descriptor entry key this part becomes in a global request.
    pub fn descriptor_key(&self) -> &str {
        self.descriptor_key.as_deref().unwrap_or_else(|| self.part.default_descriptor_key())
    }
}

/// One part of a rule's key: `"client_ip"`, `"path"`, `"method"`, `"route"`, `{"header": name}`,
/// `{"query": name}` or `{"literal": value}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Header(String),
    Query(String),
    Literal(String),
    Named(NamedPart),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedPart {
    /// Envoy's `source.address` without the port: the peer of this connection, never a header.
    ClientIp,
    Path,
    Method,
    /// Envoy's `xds.route_name`.
    Route,
}

const KEY_PART_FORMS: &str = r#"expected "client_ip", "path", "method", "route", {"header": NAME}, {"query": NAME}, {"literal": VALUE} or {"part": "client_ip"|"path"|"method"|"route"}, each object with an optional "descriptor_key""#;

fn named_part(name: &str) -> Option<KeyPart> {
    Some(KeyPart::Named(match name {
        "client_ip" => NamedPart::ClientIp,
        "path" => NamedPart::Path,
        "method" => NamedPart::Method,
        "route" => NamedPart::Route,
        _ => return None,
    }))
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let unknown = |name: &str| D::Error::custom(format!("unknown key part {name:?}, {KEY_PART_FORMS}"));
        let spec = match &value {
            serde_json::Value::String(name) => KeySpec::from(named_part(name).ok_or_else(|| unknown(name))?),
            serde_json::Value::Object(object) => {
                let descriptor_key = match object.get("descriptor_key") {
                    None => None,
                    Some(serde_json::Value::String(key)) if !key.is_empty() => Some(key.clone()),
                    Some(_) => return Err(D::Error::custom("descriptor_key: expected a non-empty string")),
                };
                let mut kinds = object.iter().filter(|(k, _)| k.as_str() != "descriptor_key");
                let (Some((kind, argument)), None) = (kinds.next(), kinds.next()) else {
                    return Err(D::Error::custom(format!("invalid key part {value}, {KEY_PART_FORMS}")));
                };
                let argument =
                    argument.as_str().ok_or_else(|| D::Error::custom(format!("{kind}: expected a string")))?;
                let part = match kind.as_str() {
                    "header" => KeyPart::Header(header_name(argument).map_err(D::Error::custom)?),
                    "query" => KeyPart::Query(argument.to_string()),
                    "literal" => KeyPart::Literal(argument.to_string()),
                    "part" => named_part(argument).ok_or_else(|| unknown(argument))?,
                    _ => return Err(unknown(kind)),
                };
                KeySpec { part, descriptor_key }
            }
            _ => return Err(D::Error::custom(format!("invalid key part {value}, {KEY_PART_FORMS}"))),
        };
        Ok(spec)
    }
}

impl KeyPart {
    /// The part's name in logs.
    pub fn name(&self) -> &str {
        match self {
            KeyPart::Header(name) | KeyPart::Query(name) => name,
            KeyPart::Literal(_) => "literal",
            KeyPart::Named(NamedPart::ClientIp) => "client_ip",
            KeyPart::Named(NamedPart::Path) => "path",
            KeyPart::Named(NamedPart::Method) => "method",
            KeyPart::Named(NamedPart::Route) => "route",
        }
    }

    /// The descriptor entry key without `descriptor_key`: Envoy's where one of its rate-limit actions has a fixed
    /// key (`remote_address`, `generic_key`); elsewhere Envoy makes the user choose, and we take the part's name.
    pub fn default_descriptor_key(&self) -> &str {
        match self {
            KeyPart::Named(NamedPart::ClientIp) => "remote_address",
            KeyPart::Literal(_) => "generic_key",
            other => other.name(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub requests: u32,
    pub per: DurationStr,
    pub burst: Option<u32>,
}

impl Limit {
    /// The burst (bucket size): `burst`, or `requests` when not set.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests)
    }

    /// Time to earn back one request: `per / requests`.
    pub fn emission_interval(&self) -> Duration {
        self.per.0 / self.requests.max(1)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    /// The rule does not apply to a request that lacks a key part.
    #[default]
    Skip,
    /// Such a request is rejected.
    Deny,
    /// Such requests share one bucket.
    Share,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Response {
    pub status: u32,
    pub body: String,
    /// Add `x-ratelimit-*` headers to allowed responses too.
    pub headers: bool,
}

impl Default for Response {
    fn default() -> Self {
        Response { status: 429, body: "rate limited".to_string(), headers: false }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// The Envoy cluster of the rate-limit service (gRPC, HTTP/2).
    pub cluster: String,
    pub domain: String,
    #[serde(default = "default_global_timeout")]
    pub timeout: DurationStr,
    #[serde(default)]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Allow,
    Deny,
}

/// Largest `max_keys`: 10 million slots bound the table at about 2 GB of Envoy memory.
const MAX_KEYS_LIMIT: u32 = 10_000_000;

fn default_max_keys() -> u32 {
    100_000
}

fn default_cleanup_interval() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}

fn default_global_timeout() -> DurationStr {
    DurationStr(Duration::from_millis(20))
}

/// Parses and validates the plugin configuration.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let config: Config = config::parse(bytes)?;
    non_empty(&config.rules, "rules")?;
    for (i, rule) in config.rules.iter().enumerate() {
        validate_rule(rule, config.global.is_some(), config.rules.get(..i).unwrap_or_default())
            .map_err(|e| e.under(&format!("rules[{i}]")))?;
    }
    if !(200..=599).contains(&config.response.status) {
        return Err(ConfigError::at(
            "response.status",
            format!("{} is not an HTTP error status", config.response.status),
        ));
    }
    if config.max_keys == 0 {
        return Err(ConfigError::at("max_keys", "must be at least 1"));
    }
    if config.max_keys > MAX_KEYS_LIMIT {
        return Err(ConfigError::at(
            "max_keys",
            format!("must be at most {MAX_KEYS_LIMIT} (each slot can hold about 200 bytes of Envoy's memory)"),
        ));
    }
    if config.cleanup_interval.0 < Duration::from_millis(10) {
        return Err(ConfigError::at("cleanup_interval", "must be at least 10ms"));
    }
    if let Some(global) = &config.global {
        if global.cluster.trim().is_empty() {
            return Err(ConfigError::at("global.cluster", "must name the Envoy cluster of the rate-limit service"));
        }
        if global.domain.trim().is_empty() {
            return Err(ConfigError::at("global.domain", "must not be empty"));
        }
        if global.timeout.0.is_zero() {
            return Err(ConfigError::at("global.timeout", "must be more than 0"));
        }
    }
    Ok(config)
}

fn validate_rule(rule: &Rule, has_global: bool, earlier: &[Rule]) -> Result<(), ConfigError> {
    if rule.name.trim().is_empty() {
        return Err(ConfigError::at("name", "must not be empty"));
    }
    if earlier.iter().any(|e| e.name == rule.name) {
        return Err(ConfigError::at("name", format!("duplicate rule name {:?}", rule.name)));
    }
    if rule.global && !has_global {
        return Err(ConfigError::at("global", "needs the top-level `global` rate-limit service"));
    }
    if rule.limits.is_empty() && !rule.global {
        return Err(ConfigError::at("limits", "must not be empty (or set `global: true`)"));
    }
    for (j, limit) in rule.limits.iter().enumerate() {
        let at = |field: &str| format!("limits[{j}].{field}");
        if limit.requests == 0 {
            return Err(ConfigError::at(at("requests"), "must be at least 1"));
        }
        if limit.per.0.is_zero() {
            return Err(ConfigError::at(at("per"), "must be more than 0"));
        }
        if limit.emission_interval().is_zero() {
            return Err(ConfigError::at(at("requests"), "more than one request per nanosecond cannot be measured"));
        }
        if limit.burst.is_some_and(|b| NonZeroU32::new(b).is_none()) {
            return Err(ConfigError::at(at("burst"), "must be at least 1"));
        }
    }
    if rule.hits_addend.is_some() && !rule.global {
        return Err(ConfigError::at("hits_addend", "applies to the rate-limit service only: set `global: true`"));
    }
    for (j, spec) in rule.key.iter().enumerate() {
        if let KeyPart::Query(name) | KeyPart::Literal(name) = &spec.part {
            if name.is_empty() {
                return Err(ConfigError::at(format!("key[{j}]"), "must not be empty"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "rules": [{
        "name": "free-tier",
        "match": {"prefix": "/api", "methods": ["GET", "POST"], "headers": [{"name": "x-tier", "exact_match": "free"}]},
        "key": [{"header": "X-Api-Key"}, "client_ip", {"query": "q"}, "path", "method", "route", {"literal": "v1"}],
        "limits": [{"requests": 100, "per": "1s", "burst": 20}, {"requests": 1000, "per": "1h"}],
        "shadow": false,
        "global": true
      }],
      "on_missing_key": "share",
      "response": {"status": 429, "body": "rate limited", "headers": true},
      "global": {"cluster": "ratelimit", "domain": "edge", "timeout": "20ms", "on_error": "deny"}
    }"#;

    #[test]
    fn accepts_the_documented_example() {
        let config = parse(FULL.as_bytes()).unwrap();
        let rule = &config.rules[0];
        assert_eq!(
            rule.key.iter().map(|k| k.part.clone()).collect::<Vec<_>>(),
            vec![
                KeyPart::Header("x-api-key".into()),
                KeyPart::Named(NamedPart::ClientIp),
                KeyPart::Query("q".into()),
                KeyPart::Named(NamedPart::Path),
                KeyPart::Named(NamedPart::Method),
                KeyPart::Named(NamedPart::Route),
                KeyPart::Literal("v1".into()),
            ]
        );
        assert_eq!(
            rule.key.iter().map(KeySpec::name).collect::<Vec<_>>(),
            ["x-api-key", "client_ip", "q", "path", "method", "route", "literal"]
        );
        // Descriptor keys: Envoy's remote_address and generic_key, else the part's name.
        assert_eq!(
            rule.key.iter().map(KeySpec::descriptor_key).collect::<Vec<_>>(),
            ["x-api-key", "remote_address", "q", "path", "method", "route", "generic_key"]
        );
        assert_eq!(rule.hits_addend, None);
        assert_eq!(rule.limits[0].burst(), 20);
        assert_eq!(rule.limits[1].burst(), 1000);
        assert_eq!(rule.limits[0].emission_interval(), Duration::from_millis(10));
        assert_eq!(config.on_missing_key, OnMissingKey::Share);
        assert!(config.response.headers);
        assert_eq!(config.global.as_ref().unwrap().on_error, OnError::Deny);
        assert_eq!(config.max_keys, 100_000);
    }

    #[test]
    fn descriptor_keys_and_hits_addend() {
        let config = parse(
            br#"{"rules": [
              {"name": "a", "global": true, "hits_addend": 5, "key": [
                {"header": "X-Api-Key", "descriptor_key": "api_key"}, {"part": "client_ip"},
                {"part": "path", "descriptor_key": "p"}, {"literal": "v1", "descriptor_key": "version"},
                {"query": "q", "descriptor_key": "query"}]},
              {"name": "b", "global": true, "hits_addend": {"header": "X-Hits"}},
              {"name": "c", "global": true, "hits_addend": 1000000000}
            ], "global": {"cluster": "c", "domain": "d"}}"#,
        )
        .unwrap();
        let rule = &config.rules[0];
        assert_eq!(
            rule.key[0],
            KeySpec { part: KeyPart::Header("x-api-key".into()), descriptor_key: Some("api_key".into()) }
        );
        assert_eq!(
            rule.key.iter().map(KeySpec::descriptor_key).collect::<Vec<_>>(),
            ["api_key", "remote_address", "p", "version", "query"]
        );
        assert_eq!(rule.hits_addend, Some(HitsAddend::Number(5)));
        assert_eq!(config.rules[1].hits_addend, Some(HitsAddend::Header("x-hits".into())));
        assert_eq!(config.rules[2].hits_addend, Some(HitsAddend::Number(MAX_HITS_ADDEND)));
    }

    #[test]
    fn defaults() {
        let config = parse(br#"{"rules": [{"name": "a", "limits": [{"requests": 1, "per": "1s"}]}]}"#).unwrap();
        assert_eq!(config.on_missing_key, OnMissingKey::Skip);
        assert_eq!(config.response.status, 429);
        assert_eq!(config.response.body, "rate limited");
        assert!(!config.response.headers);
        assert_eq!(config.cleanup_interval.0, Duration::from_secs(10));
        let global = parse(br#"{"rules": [{"name": "a", "global": true}], "global": {"cluster": "c", "domain": "d"}}"#)
            .unwrap()
            .global
            .unwrap();
        assert_eq!(global.timeout.0, Duration::from_millis(20));
        assert_eq!(global.on_error, OnError::Allow);
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let limit = r#""limits": [{"requests": 1, "per": "1s"}]"#;
        let cases = [
            (r#"{"rules": []}"#.to_string(), "rules: must not be empty"),
            (
                r#"{"rules": [{"name": "a", "limits": [{"requests": 0, "per": "1s"}]}]}"#.into(),
                "rules[0].limits[0].requests: must be at least 1",
            ),
            (
                r#"{"rules": [{"name": "a", "limits": [{"requests": 1, "per": "1x"}]}]}"#.into(),
                r#"rules[0].limits[0].per: invalid duration "1x""#,
            ),
            (
                r#"{"rules": [{"name": "a", "limits": [{"requests": 1, "per": "0s"}]}]}"#.into(),
                "rules[0].limits[0].per: must be more than 0",
            ),
            (
                r#"{"rules": [{"name": "a", "limits": [{"requests": 1, "per": "1s", "burst": 0}]}]}"#.into(),
                "rules[0].limits[0].burst: must be at least 1",
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "key": ["user"]}}]}}"#),
                r#"rules[0].key[0]: unknown key part "user", expected "client_ip""#,
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "key": [{{"cookie": "x"}}]}}]}}"#),
                r#"rules[0].key[0]: unknown key part "cookie""#,
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "key": [{{"header": "a b"}}]}}]}}"#),
                "rules[0].key[0]: invalid header name",
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "key": [{{"query": ""}}]}}]}}"#),
                "rules[0].key[0]: must not be empty",
            ),
            (r#"{"rules": [{"name": "a"}]}"#.into(), "rules[0].limits: must not be empty"),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "key": [{{"header": "h", "descriptor_key": ""}}]}}]}}"#),
                "rules[0].key[0]: descriptor_key: expected a non-empty string",
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "key": [{{"header": "h", "query": "q"}}]}}]}}"#),
                "rules[0].key[0]: invalid key part",
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "key": [{{"part": "user"}}]}}]}}"#),
                r#"rules[0].key[0]: unknown key part "user""#,
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "hits_addend": 2}}]}}"#),
                "rules[0].hits_addend: applies to the rate-limit service only",
            ),
            (
                r#"{"rules": [{"name": "a", "global": true, "hits_addend": 1000000001}], "global": {"cluster": "c", "domain": "d"}}"#.into(),
                "rules[0].hits_addend: 1000000001 is too large",
            ),
            (
                r#"{"rules": [{"name": "a", "global": true, "hits_addend": "3"}], "global": {"cluster": "c", "domain": "d"}}"#.into(),
                "rules[0].hits_addend: invalid hits_addend",
            ),
            (
                r#"{"rules": [{"name": "a", "global": true, "hits_addend": -1}], "global": {"cluster": "c", "domain": "d"}}"#.into(),
                "rules[0].hits_addend: invalid hits_addend",
            ),
            (r#"{"rules": [{"name": "a", "global": true}]}"#.into(), "rules[0].global: needs the top-level"),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}}}, {{"name": "a", {limit}}}]}}"#),
                r#"rules[1].name: duplicate rule name "a""#,
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}, "match": {{"safe_regex": {{"regex": "("}}}}}}]}}"#),
                "rules[0].match: safe_regex: invalid regex",
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}}}], "on_missing_key": "ignore"}}"#),
                "on_missing_key: unknown variant `ignore`",
            ),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}}}], "response": {{"status": 99}}}}"#),
                "response.status: 99 is not an HTTP error status",
            ),
            (format!(r#"{{"rules": [{{"name": "a", {limit}}}], "max_keys": 0}}"#), "max_keys: must be at least 1"),
            (
                format!(r#"{{"rules": [{{"name": "a", {limit}}}], "global": {{"cluster": "", "domain": "d"}}}}"#),
                "global.cluster: must name",
            ),
            (
                format!(
                    r#"{{"rules": [{{"name": "a", {limit}}}], "global": {{"cluster": "c", "domain": "d", "on_error": "retry"}}}}"#
                ),
                "global.on_error: unknown variant `retry`",
            ),
        ];
        for (json, expected) in cases {
            let err = parse(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}\n  gave: {err}\n  expected: {expected}");
        }
    }
}
