//! Plugin configuration of the `transformation` filter (grows with the transformation issue).

use serde::Deserialize;
use shared::config::{self, non_empty, ConfigError};
use shared::RouteMatch;

pub const FILTER: &str = "transformation";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub transformations: Vec<Transformation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transformation {
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
}

/// Parses and validates the plugin configuration.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let config: Config = config::parse(bytes)?;
    non_empty(&config.transformations, "transformations")?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_matchers() {
        let config = parse(br#"{"transformations": [{"match": {"prefix": "/users"}}, {}]}"#).unwrap();
        assert_eq!(config.transformations.len(), 2);
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases: [(&[u8], &str); 3] = [
            (br#"{"transformations": []}"#, "transformations: must not be empty"),
            (br#"{"transformations": [{"match": {"path": 1}}]}"#, "transformations[0].match.path: invalid type"),
            (br#"{"transformation": []}"#, "unknown field `transformation`"),
        ];
        for (json, expected) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
