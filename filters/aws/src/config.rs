//! Plugin configuration of the `aws` filter (grows with the AWS issue).

use serde::Deserialize;
use shared::config::{self, ConfigError};

pub const FILTER: &str = "aws";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub region: String,
    pub service: String,
    pub host: Option<String>,
}

/// Parses and validates the plugin configuration.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let config: Config = config::parse(bytes)?;
    if !is_region(&config.region) {
        return Err(ConfigError::at(
            "region",
            format!("invalid region {:?}, expected e.g. \"us-east-1\"", config.region),
        ));
    }
    if config.service.is_empty()
        || !config.service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ConfigError::at(
            "service",
            format!("invalid service {:?}, expected e.g. \"lambda\", \"s3\"", config.service),
        ));
    }
    Ok(config)
}

/// AWS region names: lower-case words and digits joined by `-` (`us-east-1`, `eu-central-2`, `us-gov-west-1`).
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_region_and_service() {
        let config =
            parse(br#"{"region": "us-east-1", "service": "lambda", "host": "lambda.us-east-1.amazonaws.com"}"#)
                .unwrap();
        assert_eq!(config.region, "us-east-1");
        assert_eq!(config.service, "lambda");
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases: [(&[u8], &str); 4] = [
            (br#"{"service": "s3"}"#, "missing field `region`"),
            (br#"{"region": "mars", "service": "s3"}"#, r#"region: invalid region "mars""#),
            (br#"{"region": "us-east-1", "service": "S 3"}"#, r#"service: invalid service "S 3""#),
            (br#"{"region": "us-east-1", "service": "s3", "extra": 1}"#, "unknown field `extra`"),
        ];
        for (json, expected) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
