//! Plugin configuration of the `nats` filter: serde types, validation, and what is built once from them (subject
//! templates, the `CONNECT` line with the credentials).

use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use shared::config::{self, non_empty, ConfigError};
use shared::{ByteSize, DurationStr, RouteMatch};

use crate::protocol::{self, Credentials};
use crate::subject::SubjectTemplate;

pub const FILTER: &str = "nats";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Envoy cluster that carries the NATS tunnel (HTTP/2 to the tunnel listener).
    pub cluster: String,
    pub rules: Vec<Rule>,
    /// Credentials for `CONNECT`.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// How long to wait for the server's answer (the whole tunnel round trip).
    #[serde(default = "default_timeout")]
    pub timeout: DurationStr,
    /// The largest request body the filter buffers and publishes.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// The `CONNECT` line, built by [`parse`] from `auth`.
    #[serde(skip)]
    pub connect: Vec<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    pub subject: SubjectTemplate,
    #[serde(default)]
    pub payload: PayloadMode,
    #[serde(default)]
    pub headers: HeaderSelection,
}

/// What the NATS message carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadMode {
    /// The raw request body.
    #[default]
    Body,
    /// The request as JSON (see [`crate::envelope`]).
    Envelope,
}

/// The request headers forwarded as NATS message headers (and listed in the envelope).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub enum HeaderSelection {
    #[default]
    None,
    /// Every request header except pseudo-headers (`:path`, ...).
    All,
    /// These headers (lower-case names), when present.
    Names(Vec<String>),
}

impl TryFrom<Value> for HeaderSelection {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        const EXPECTED: &str = r#"expected "all" or a list of header names, e.g. ["x-request-id", "content-type"]"#;
        match value {
            Value::String(s) if s == "all" => Ok(HeaderSelection::All),
            Value::Array(items) => {
                let mut names = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let name = item.as_str().map(|s| s.trim().to_ascii_lowercase()).unwrap_or_default();
                    if !protocol::is_valid_header(&name, "") || name.starts_with(':') {
                        return Err(format!("[{i}]: {EXPECTED} (pseudo-headers such as :path are not headers)"));
                    }
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                Ok(HeaderSelection::Names(names))
            }
            _ => Err(EXPECTED.to_string()),
        }
    }
}

impl HeaderSelection {
    /// The headers to forward, in order. `all` reads every request header (`all_headers`), a list reads each
    /// named one (`header`). Pseudo-headers are never forwarded; a header that a NATS header block cannot carry
    /// unchanged (CR, LF or NUL in its value) is an error naming it.
    pub fn select(
        &self,
        all_headers: &dyn Fn() -> Vec<(String, String)>,
        header: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, String> {
        let selected = match self {
            HeaderSelection::None => return Ok(Vec::new()),
            HeaderSelection::All => all_headers().into_iter().filter(|(name, _)| !name.starts_with(':')).collect(),
            HeaderSelection::Names(names) => {
                names.iter().filter_map(|name| header(name).map(|value| (name.clone(), value))).collect::<Vec<_>>()
            }
        };
        match selected.iter().find(|(name, value)| !protocol::is_valid_header(name, value)) {
            Some((name, _)) => Err(format!("header {name} cannot be forwarded to NATS")),
            None => Ok(selected),
        }
    }
}

/// `auth`: user and password, or a token; each literally or from an environment variable given to the VM
/// (`vm_config.environment_variables.host_env_keys`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "<hidden>");
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("password_env", &self.password_env)
            .field("token", &hidden(&self.token))
            .field("token_env", &self.token_env)
            .finish()
    }
}

fn default_timeout() -> DurationStr {
    DurationStr(std::time::Duration::from_secs(2))
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}

/// Parses and validates the plugin configuration, reading credentials from the VM's environment.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    parse_with_env(bytes, &|key| std::env::var(key).ok())
}

/// [`parse`] with the environment given as a lookup function (for tests).
pub fn parse_with_env(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut config: Config = config::parse(bytes)?;
    if config.cluster.trim().is_empty() {
        return Err(ConfigError::at("cluster", "must name the Envoy cluster of the NATS tunnel"));
    }
    non_empty(&config.rules, "rules")?;
    if config.timeout.0.is_zero() {
        return Err(ConfigError::at("timeout", "must be more than 0"));
    }
    let credentials = match &config.auth {
        None => Credentials::None,
        Some(auth) => credentials(auth, env).map_err(|e| e.under("auth"))?,
    };
    config.connect = protocol::connect_line(&credentials);
    Ok(config)
}

fn credentials(auth: &Auth, env: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, ConfigError> {
    let secret =
        |literal: &Option<String>, from_env: &Option<String>, name: &str| -> Result<Option<String>, ConfigError> {
            match (literal, from_env) {
                (Some(_), Some(_)) => Err(ConfigError::at("", format!("set only one of `{name}`, `{name}_env`"))),
                (Some(value), None) => Ok(Some(value.clone())),
                (None, Some(key)) => match env(key) {
                    Some(value) if !value.is_empty() => Ok(Some(value)),
                    _ => Err(ConfigError::at(
                        format!("{name}_env"),
                        format!(
                            "environment variable {key:?} is not set in the Wasm VM (give it to the VM with \
                         vm_config.environment_variables.host_env_keys)"
                        ),
                    )),
                },
                (None, None) => Ok(None),
            }
        };
    let password = secret(&auth.password, &auth.password_env, "password")?;
    let token = secret(&auth.token, &auth.token_env, "token")?;
    match (&auth.user, password, token) {
        (Some(_), _, Some(_)) => Err(ConfigError::at(
            "",
            "set either `user` with `password`/`password_env`, or `token`/`token_env`, not both",
        )),
        (Some(user), Some(password), None) if !user.is_empty() => {
            Ok(Credentials::UserPassword { user: user.clone(), password })
        }
        (Some(_), _, None) => {
            Err(ConfigError::at("", "`user` must be non-empty and needs `password` or `password_env`"))
        }
        (None, Some(_), _) => Err(ConfigError::at("", "`password` needs `user`")),
        (None, None, Some(token)) => Ok(Credentials::Token(token)),
        (None, None, None) => {
            Err(ConfigError::at("", "set `user` with `password`/`password_env`, or `token`/`token_env`"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env(key: &str) -> Option<String> {
        match key {
            "NATS_PASSWORD" => Some("s3cret".to_string()),
            "NATS_TOKEN" => Some("t0k".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn connect_json(config: &Config) -> serde_json::Value {
        let line = &config.connect;
        serde_json::from_slice(&line[8..line.len() - 2]).unwrap()
    }

    #[test]
    fn accepts_and_applies_defaults() {
        let config =
            parse(br#"{"cluster": "nats_tunnel", "rules": [{"match": {"prefix": "/e"}, "subject": "a.b"}]}"#).unwrap();
        assert_eq!(config.timeout.as_millis_u32(), 2000);
        assert_eq!(config.max_body.0, 1 << 20);
        assert_eq!(config.rules[0].payload, PayloadMode::Body);
        assert_eq!(config.rules[0].headers, HeaderSelection::None);
        assert!(config.auth.is_none());
        assert!(connect_json(&config).get("user").is_none());
        let config =
            parse(br#"{"cluster": "n", "rules": [{"subject": "a"}], "timeout": "250ms", "max_body": "64KiB"}"#)
                .unwrap();
        assert_eq!(config.timeout.as_millis_u32(), 250);
        assert_eq!(config.max_body.0, 65536);
    }

    #[test]
    fn the_issue_example_parses() {
        let json = br#"{
          "cluster": "nats_tunnel",
          "rules": [
            {"match": {"prefix": "/events/orders", "methods": ["POST"]},
             "subject": "orders.{header:x-tenant}.created",
             "payload": "body",
             "headers": ["x-request-id", "Content-Type"]},
            {"subject": "all.{method}", "payload": "envelope", "headers": "all"}
          ],
          "auth": {"user": "gw", "password_env": "NATS_PASSWORD"},
          "timeout": "2s",
          "max_body": "1MiB"
        }"#;
        let config = parse_with_env(json, &env).unwrap();
        assert_eq!(
            config.rules[0].headers,
            HeaderSelection::Names(vec!["x-request-id".to_string(), "content-type".to_string()])
        );
        assert_eq!(config.rules[1].headers, HeaderSelection::All);
        assert_eq!(config.rules[1].payload, PayloadMode::Envelope);
        let connect = connect_json(&config);
        assert_eq!(connect["user"], "gw");
        assert_eq!(connect["pass"], "s3cret");
        // The secret is in the CONNECT line only, never in Debug output.
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn auth_variants() {
        let with = |auth: &str| {
            let json = format!(r#"{{"cluster": "n", "rules": [{{"subject": "a"}}], "auth": {auth}}}"#);
            parse_with_env(json.as_bytes(), &env).map(|c| connect_json(&c))
        };
        assert_eq!(with(r#"{"user": "u", "password": "p"}"#).unwrap()["pass"], "p");
        assert_eq!(with(r#"{"token": "lit"}"#).unwrap()["auth_token"], "lit");
        assert_eq!(with(r#"{"token_env": "NATS_TOKEN"}"#).unwrap()["auth_token"], "t0k");
        let literal = parse_with_env(
            br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"user": "u", "password": "hunter2"}}"#,
            &no_env,
        )
        .unwrap();
        assert!(!format!("{literal:?}").contains("hunter2"));
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"cluster": "", "rules": [{"subject": "a"}]}"#, "cluster: must name"),
            (br#"{"cluster": "n", "rules": []}"#, "rules: must not be empty"),
            (br#"{"cluster": "n", "rules": [{"subject": " "}]}"#, "rules[0].subject: must not be empty"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "timeout": "2"}"#, r#"timeout: invalid duration "2""#),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "timeout": "0s"}"#, "timeout: must be more than 0"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "max_body": "1MB"}"#, r#"max_body: invalid size "1MB""#),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}, {"subject": "a.*"}]}"#, "rules[1].subject: \"a.*\" has a wildcard"),
            (br#"{"cluster": "n", "rules": [{"subject": "a.{x}"}]}"#, "rules[0].subject: placeholder {x}: unknown placeholder"),
            (br#"{"cluster": "n", "rules": [{"subject": "a", "payload": "raw"}]}"#, "rules[0].payload: unknown variant `raw`"),
            (br#"{"cluster": "n", "rules": [{"subject": "a", "headers": "some"}]}"#, r#"rules[0].headers: expected "all""#),
            (br#"{"cluster": "n", "rules": [{"subject": "a", "headers": ["ok", 1]}]}"#, "rules[0].headers: [1]: expected"),
            (br#"{"cluster": "n", "rules": [{"subject": "a", "headers": [":path"]}]}"#, "rules[0].headers: [0]: expected"),
            (br#"{"cluster": "n", "rules": [{"subject": "a", "header": []}]}"#, "rules[0].header: unknown field `header`"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {}}"#, "auth: set `user`"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"user": "u"}}"#, "auth: `user` must be non-empty and needs"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"password": "p"}}"#, "auth: `password` needs `user`"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"user": "u", "password": "p", "token": "t"}}"#, "auth: set either"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"token": "t", "token_env": "NATS_TOKEN"}}"#, "auth: set only one of `token`, `token_env`"),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"user": "u", "password_env": "NOPE"}}"#, r#"auth.password_env: environment variable "NOPE" is not set in the Wasm VM"#),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"token_env": "EMPTY"}}"#, r#"auth.token_env: environment variable "EMPTY""#),
            (br#"{"cluster": "n", "rules": [{"subject": "a"}], "auth": {"nkey": "x"}}"#, "auth.nkey: unknown field `nkey`"),
        ];
        for (json, expected) in cases {
            let err = parse_with_env(json, &env).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn header_selection() {
        let all = || {
            vec![
                (":path".to_string(), "/x".to_string()),
                ("x-a".to_string(), "1".to_string()),
                ("x-a".to_string(), "2".to_string()),
                ("content-type".to_string(), "text/plain".to_string()),
            ]
        };
        let one = |name: &str| all().into_iter().find(|(n, _)| n == name).map(|(_, v)| v);
        assert_eq!(HeaderSelection::None.select(&all, &one).unwrap(), vec![]);
        let selected = HeaderSelection::All.select(&all, &one).unwrap();
        assert_eq!(selected.len(), 3);
        assert!(selected.iter().all(|(n, _)| !n.starts_with(':')));
        let names = HeaderSelection::Names(vec!["content-type".into(), "x-missing".into()]);
        assert_eq!(names.select(&all, &one).unwrap(), vec![("content-type".to_string(), "text/plain".to_string())]);
        let bad = || vec![("x-b".to_string(), "a\r\nb".to_string())];
        let err = HeaderSelection::All.select(&bad, &one).unwrap_err();
        assert_eq!(err, "header x-b cannot be forwarded to NATS");
    }

    #[test]
    fn the_foundation_bad_config_message_is_unchanged() {
        let err = parse(br#"{"cluster": "nats_tunnel", "rules": [{"subject": "a"}], "timeout": "1x"}"#).unwrap_err();
        assert_eq!(err.to_string(), r#"timeout: invalid duration "1x", expected e.g. "1s", "500ms", "1m""#);
    }
}
