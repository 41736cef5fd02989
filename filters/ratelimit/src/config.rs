//! Plugin configuration of the `ratelimit` filter (grows with the rate-limit issue).

use serde::Deserialize;
use shared::config::{self, non_empty, ConfigError};
use shared::RouteMatch;

pub const FILTER: &str = "ratelimit";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
}

/// Parses and validates the plugin configuration.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let config: Config = config::parse(bytes)?;
    non_empty(&config.rules, "rules")?;
    for (i, rule) in config.rules.iter().enumerate() {
        if rule.name.trim().is_empty() {
            return Err(ConfigError::at(format!("rules[{i}].name"), "must not be empty"));
        }
        if config.rules.iter().take(i).any(|earlier| earlier.name == rule.name) {
            return Err(ConfigError::at(format!("rules[{i}].name"), format!("duplicate rule name {:?}", rule.name)));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rules_with_matchers() {
        let config = parse(br#"{"rules": [{"name": "a", "match": {"prefix": "/api"}}, {"name": "b"}]}"#).unwrap();
        assert_eq!(config.rules.len(), 2);
        assert_eq!(config.rules[1].name, "b");
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"rules": []}"#, "rules: must not be empty"),
            (b"", "missing field `rules`"),
            (br#"{"rules": [{"name": " "}]}"#, "rules[0].name: must not be empty"),
            (br#"{"rules": [{"name": "a"}, {"name": "a"}]}"#, r#"rules[1].name: duplicate rule name "a""#),
            (br#"{"rules": [{"name": "a", "match": {"safe_regex": {"regex": "("}}}]}"#, "rules[0].match: safe_regex"),
        ];
        for (json, expected) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
