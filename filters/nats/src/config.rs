//! Plugin configuration of the `nats` filter (grows with the NATS issue).

use serde::Deserialize;
use shared::config::{self, non_empty, ConfigError};
use shared::{ByteSize, DurationStr, RouteMatch};

pub const FILTER: &str = "nats";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Envoy cluster that carries the NATS tunnel.
    pub cluster: String,
    pub rules: Vec<Rule>,
    #[serde(default = "default_timeout")]
    pub timeout: DurationStr,
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    pub subject: String,
}

fn default_timeout() -> DurationStr {
    DurationStr(std::time::Duration::from_secs(2))
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}

/// Parses and validates the plugin configuration.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let config: Config = config::parse(bytes)?;
    if config.cluster.trim().is_empty() {
        return Err(ConfigError::at("cluster", "must name the Envoy cluster of the NATS tunnel"));
    }
    non_empty(&config.rules, "rules")?;
    for (i, rule) in config.rules.iter().enumerate() {
        if rule.subject.trim().is_empty() {
            return Err(ConfigError::at(format!("rules[{i}].subject"), "must not be empty"));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_applies_defaults() {
        let config =
            parse(br#"{"cluster": "nats_tunnel", "rules": [{"match": {"prefix": "/e"}, "subject": "a.b"}]}"#).unwrap();
        assert_eq!(config.timeout.as_millis_u32(), 2000);
        assert_eq!(config.max_body.0, 1 << 20);
        let config =
            parse(br#"{"cluster": "n", "rules": [{"subject": "a"}], "timeout": "250ms", "max_body": "64KiB"}"#)
                .unwrap();
        assert_eq!(config.timeout.as_millis_u32(), 250);
        assert_eq!(config.max_body.0, 65536);
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"cluster": "", "rules": [{"subject": "a"}]}"#, "cluster: must name"),
            (br#"{"cluster": "n", "rules": []}"#, "rules: must not be empty"),
            (br#"{"cluster": "n", "rules": [{"subject": " "}]}"#, "rules[0].subject: must not be empty"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "timeout": "2"}"#, r#"timeout: invalid duration "2""#),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "max_body": "1MB"}"#, r#"max_body: invalid size "1MB""#),
        ];
        for (json, expected) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
