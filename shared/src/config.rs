//! Plugin configuration loading: JSON into typed structs, errors that name the JSON path.

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration error a user can act on: where in the JSON, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path such as `rules[1].limits[0].per`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }

    /// Prefixes the path, for errors found by validating a nested part (`rules[2]` + `.limits[0].per`).
    pub fn under(self, prefix: &str) -> Self {
        let path = match (prefix.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => prefix.to_string(),
            (false, false) if self.path.starts_with('[') => format!("{prefix}{}", self.path),
            (false, false) => format!("{prefix}.{}", self.path),
        };
        ConfigError { path, message: self.message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a plugin configuration. An empty configuration is read as `{}` so that filters whose every field has a
/// default can be configured without one.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { bytes };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        if path == "." || e.inner().is_syntax() || e.inner().is_eof() {
            return ConfigError::at("", message);
        }
        // serde_json appends " at line 1 column 57" to data errors; the JSON path already says where.
        let message = match message.rfind(" at line ") {
            Some(cut) => message.get(..cut).unwrap_or(&message).to_string(),
            None => message,
        };
        ConfigError::at(path, message)
    })?;
    de.end().map_err(|e| ConfigError::at("", e.to_string()))?;
    Ok(value)
}

/// Checks that a list is not empty, with the field named.
pub fn non_empty<T>(items: &[T], path: &str) -> Result<(), ConfigError> {
    if items.is_empty() {
        Err(ConfigError::at(path, "must not be empty"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::DurationStr;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        #[allow(dead_code)]
        per: DurationStr,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        limits: Vec<Limit>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[allow(dead_code)]
        rules: Vec<Rule>,
    }

    #[test]
    fn error_names_the_json_path_and_the_problem() {
        let err = parse::<Config>(br#"{"rules": [{"limits": []}, {"limits": [{"per": "1x"}]}]}"#).unwrap_err();
        assert_eq!(err.path, "rules[1].limits[0].per");
        assert_eq!(
            err.to_string(),
            r#"rules[1].limits[0].per: invalid duration "1x", expected e.g. "1s", "500ms", "1m""#
        );
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err = parse::<Config>(br#"{"rules": [], "rulez": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `rulez`"), "{err}");
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = parse::<Config>(br#"{"rules": [}"#).unwrap_err();
        assert!(err.to_string().contains("line 1 column"), "{err}");
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        assert!(parse::<Config>(br#"{"rules": []} x"#).is_err());
    }

    #[test]
    fn empty_configuration_reads_as_empty_object() {
        #[derive(Deserialize, Default)]
        struct Defaults {
            #[serde(default)]
            n: u32,
        }
        assert_eq!(parse::<Defaults>(b"").unwrap().n, 0);
        assert_eq!(parse::<Defaults>(b"  \n").unwrap().n, 0);
    }

    #[test]
    fn under_joins_paths() {
        assert_eq!(ConfigError::at("per", "bad").under("rules[0].limits[1]").path, "rules[0].limits[1].per");
        assert_eq!(ConfigError::at("[2]", "bad").under("rules").path, "rules[2]");
        assert_eq!(ConfigError::at("", "bad").under("rules").path, "rules");
        assert_eq!(ConfigError::at("x", "bad").under("").path, "x");
    }

    #[test]
    fn non_empty_names_the_field() {
        assert_eq!(non_empty::<u8>(&[], "rules").unwrap_err().to_string(), "rules: must not be empty");
        assert!(non_empty(&[1], "rules").is_ok());
    }
}
