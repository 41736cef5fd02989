//! Plugin configuration of the `aws` filter: parsing and validation (pure, unit-tested).

use std::rc::Rc;

use serde::Deserialize;
use shared::config::{self, ConfigError};
use shared::{ByteSize, DurationStr, RouteMatch};

use crate::lambda;
use crate::sigv4::Credentials;

pub const FILTER: &str = "aws";

/// Headers never signed, whatever the configuration says: Envoy or the path to the upstream may change them
/// after the filter ran (and `user-agent` / `expect`, which AWS's own SDKs leave out too). Names ending in `*`
/// are prefixes.
pub const NEVER_SIGNED: &[&str] = &[
    "x-envoy-*",
    "x-forwarded-*",
    "x-request-id",
    "x-amzn-trace-id",
    "user-agent",
    "expect",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
];

/// `cluster` (top-level and per function) named where the filter sent requests it made itself. It signs in place
/// now, so a leftover value is refused rather than ignored: the cluster it named is no longer needed either.
const NO_CLUSTER: &str = "no longer used: signed requests and Lambda invocations are rewritten in place and Envoy \
                          sends them to the route's cluster; remove `cluster` (and the extra cluster it named)";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    region: String,
    service: String,
    host: Option<String>,
    #[serde(default)]
    credentials: Option<RawCredentials>,
    #[serde(default)]
    payload: Payload,
    max_body: Option<ByteSize>,
    #[serde(default)]
    unsigned_headers: Vec<String>,
    cluster: Option<String>,
    timeout: Option<DurationStr>,
    lambda: Option<RawLambda>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match", default)]
    matcher: RouteMatch,
    lambda: Option<RawLambda>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLambda {
    function: String,
    qualifier: Option<String>,
    #[serde(default)]
    invocation: Invocation,
    #[serde(default)]
    format: Format,
    cluster: Option<String>,
    timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    source: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    assume_role: Option<RawAssumeRole>,
    web_identity: Option<RawWebIdentity>,
    ecs: Option<RawEcs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEcs {
    cluster: String,
    host: Option<String>,
    path: Option<String>,
    token_env: Option<String>,
    timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssumeRole {
    role_arn: String,
    cluster: String,
    session_name: Option<String>,
    duration: Option<DurationStr>,
    external_id: Option<String>,
    host: Option<String>,
    timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebIdentity {
    role_arn: String,
    cluster: String,
    session_name: Option<String>,
    duration: Option<DurationStr>,
    token_env: Option<String>,
    host: Option<String>,
    timeout: Option<DurationStr>,
}

/// `signed`: the body is buffered (up to `max_body`) and its SHA-256 signed; `unsigned`: `UNSIGNED-PAYLOAD`,
/// the body streams (S3 accepts this; most other services do not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    #[default]
    Signed,
    Unsigned,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invocation {
    #[default]
    Sync,
    Async,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Raw,
    ApiGateway,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub region: String,
    pub service: String,
    /// The host to sign for and send to (`:authority`); `None`: the request's own `:authority`.
    pub host: Option<String>,
    pub credentials: CredentialSource,
    pub payload: Payload,
    pub max_body: usize,
    /// Lower-case names (or `prefix*`) never signed: [`NEVER_SIGNED`] plus `unsigned_headers`.
    pub unsigned_headers: Vec<String>,
    /// `unsigned_headers` as configured (lower-case): the client headers a Lambda invocation keeps (tracing).
    pub extra_unsigned_headers: Vec<String>,
    /// The upstream timeout of the requests the filter signs or turns into Lambda invocations (set with
    /// `x-envoy-upstream-rq-timeout-ms`); `None`: the route's.
    pub timeout_ms: Option<u32>,
    pub lambda: Option<Rc<Lambda>>,
    pub rules: Vec<Rule>,
}

#[derive(Debug)]
pub struct Rule {
    pub matcher: RouteMatch,
    /// `None`: matching requests are only signed.
    pub lambda: Option<Rc<Lambda>>,
}

#[derive(Debug, Clone)]
pub struct Lambda {
    /// The function name, partial ARN or ARN as given.
    pub function: String,
    pub qualifier: Option<String>,
    pub invocation: Invocation,
    pub format: Format,
    /// This function's upstream timeout; `None`: the top-level `timeout`, else the route's.
    pub timeout_ms: Option<u32>,
}

/// Where the signing credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` from the VM's environment.
    Env,
    Inline(Credentials),
    /// Temporary credentials from STS (or the ECS endpoint), fetched with an HTTP callout, cached in shared data.
    Sts(Sts),
}

#[derive(Debug, Clone)]
pub struct Sts {
    pub kind: StsKind,
    pub role_arn: String,
    pub cluster: String,
    pub host: String,
    pub session_name: String,
    pub duration_seconds: u64,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone)]
pub enum StsKind {
    /// `AssumeRole`, signed with these base credentials.
    AssumeRole { base: Box<CredentialSource>, external_id: Option<String> },
    /// `AssumeRoleWithWebIdentity` with the token in this environment variable (a Wasm VM cannot read files).
    WebIdentity { token_env: String },
    /// The ECS container-credentials endpoint: `GET path` (default: `$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`)
    /// with `Authorization: $<token_env>` when that variable is set.
    Ecs { path: Option<String>, token_env: String },
}

impl Config {
    /// The Lambda settings that apply to a request: the first matching rule decides; with no matching rule the
    /// top-level `lambda` (or none: sign only).
    pub fn lambda_for<R: shared::RequestHeaders + ?Sized>(&self, request: &R) -> Option<&Rc<Lambda>> {
        match self.rules.iter().find(|rule| rule.matcher.matches(request)) {
            Some(rule) => rule.lambda.as_ref(),
            None => self.lambda.as_ref(),
        }
    }

    /// `true` when a header (lower-case name) must not be signed.
    pub fn is_unsigned_header(&self, name: &str) -> bool {
        self.unsigned_headers.iter().any(|pattern| matches_pattern(pattern, name))
    }

    /// `true` for a client header that a Lambda invocation keeps: Envoy's own (`x-envoy-*`, `x-forwarded-*`,
    /// `x-request-id`) and the configured `unsigned_headers` (tracing). Every other client header is dropped: the
    /// Invoke API is not the client's API.
    pub fn lambda_keeps_header(&self, name: &str) -> bool {
        name.starts_with("x-envoy-")
            || name.starts_with("x-forwarded-")
            || name == "x-request-id"
            || self.extra_unsigned_headers.iter().any(|pattern| matches_pattern(pattern, name))
    }

    /// The upstream timeout for a request (a function's own, else the top-level one).
    pub fn timeout_for(&self, lambda: Option<&Lambda>) -> Option<u32> {
        lambda.and_then(|l| l.timeout_ms).or(self.timeout_ms)
    }
}

/// `name` matches `pattern` (a name, or a prefix ending in `*`).
fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Parses and validates the plugin configuration.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let raw: RawConfig = config::parse(bytes)?;
    if !is_region(&raw.region) {
        return Err(ConfigError::at("region", format!("invalid region {:?}, expected e.g. \"us-east-1\"", raw.region)));
    }
    if !is_service(&raw.service) {
        return Err(ConfigError::at(
            "service",
            format!("invalid service {:?}, expected e.g. \"lambda\", \"s3\"", raw.service),
        ));
    }
    if let Some(host) = &raw.host {
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) {
            return Err(ConfigError::at("host", format!("invalid host {host:?}")));
        }
    }
    let credentials = match raw.credentials {
        None => CredentialSource::Env,
        Some(c) => credentials(c, &raw.region).map_err(|e| e.under("credentials"))?,
    };
    let mut unsigned_headers: Vec<String> = NEVER_SIGNED.iter().map(|s| s.to_string()).collect();
    let mut extra_unsigned_headers = Vec::with_capacity(raw.unsigned_headers.len());
    for (i, name) in raw.unsigned_headers.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_suffix('*').unwrap_or(&lower);
        if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ConfigError::at(format!("unsigned_headers[{i}]"), format!("invalid header name {name:?}")));
        }
        if bare == "host" || bare.starts_with("x-amz-") {
            return Err(ConfigError::at(
                format!("unsigned_headers[{i}]"),
                format!("{name:?} must be signed (host and x-amz-* always are)"),
            ));
        }
        extra_unsigned_headers.push(lower.clone());
        unsigned_headers.push(lower);
    }
    let uses_lambda = raw.lambda.is_some() || raw.rules.iter().any(|r| r.lambda.is_some());
    if uses_lambda && raw.service != "lambda" {
        return Err(ConfigError::at(
            "service",
            format!("Lambda invocations are signed for service \"lambda\", not {:?}", raw.service),
        ));
    }
    let lambda =
        raw.lambda.map(|l| lambda_config(l, &raw.region).map(Rc::new).map_err(|e| e.under("lambda"))).transpose()?;
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, rule) in raw.rules.into_iter().enumerate() {
        let lambda = rule
            .lambda
            .map(|l| lambda_config(l, &raw.region).map(Rc::new).map_err(|e| e.under(&format!("rules[{i}].lambda"))))
            .transpose()?;
        rules.push(Rule { matcher: rule.matcher, lambda });
    }
    if raw.cluster.is_some() {
        return Err(ConfigError::at("cluster", NO_CLUSTER));
    }
    Ok(Config {
        region: raw.region,
        service: raw.service,
        host: raw.host,
        credentials,
        payload: raw.payload,
        max_body: raw.max_body.map_or(1 << 20, ByteSize::as_usize),
        unsigned_headers,
        extra_unsigned_headers,
        timeout_ms: raw.timeout.map(DurationStr::as_millis_u32),
        lambda,
        rules,
    })
}

fn lambda_config(raw: RawLambda, region: &str) -> Result<Lambda, ConfigError> {
    lambda::validate_function(&raw.function, region).map_err(|e| ConfigError::at("function", e))?;
    if let Some(q) = &raw.qualifier {
        if !lambda::is_qualifier(q) {
            return Err(ConfigError::at(
                "qualifier",
                format!("invalid qualifier {q:?}, expected a version number or an alias name"),
            ));
        }
    }
    if raw.cluster.is_some() {
        return Err(ConfigError::at("cluster", NO_CLUSTER));
    }
    Ok(Lambda {
        function: raw.function,
        qualifier: raw.qualifier,
        invocation: raw.invocation,
        format: raw.format,
        timeout_ms: raw.timeout.map(DurationStr::as_millis_u32),
    })
}

fn credentials(raw: RawCredentials, region: &str) -> Result<CredentialSource, ConfigError> {
    let inline = raw.access_key_id.is_some() || raw.secret_access_key.is_some() || raw.session_token.is_some();
    let base = match (raw.source.as_deref(), inline) {
        (Some("env"), false) | (None, false) => CredentialSource::Env,
        (Some("env"), true) => {
            return Err(ConfigError::at("source", "\"env\" and inline keys exclude each other"));
        }
        (Some("inline") | None, true) => {
            let (Some(access_key_id), Some(secret_access_key)) = (raw.access_key_id, raw.secret_access_key) else {
                return Err(ConfigError::at("", "inline credentials need `access_key_id` and `secret_access_key`"));
            };
            if access_key_id.is_empty() || secret_access_key.is_empty() {
                return Err(ConfigError::at("access_key_id", "inline keys must not be empty"));
            }
            CredentialSource::Inline(Credentials { access_key_id, secret_access_key, session_token: raw.session_token })
        }
        (Some("inline"), false) => {
            return Err(ConfigError::at("", "inline credentials need `access_key_id` and `secret_access_key`"));
        }
        (Some(other), _) => {
            return Err(ConfigError::at("source", format!("unknown source {other:?}, expected \"env\" or \"inline\"")));
        }
    };
    if let Some(ecs) = raw.ecs {
        if raw.assume_role.is_some() || raw.web_identity.is_some() || inline || raw.source.is_some() {
            return Err(ConfigError::at("ecs", "set `ecs` alone (it is the whole credential source)"));
        }
        if ecs.cluster.is_empty() {
            return Err(ConfigError::at("ecs.cluster", "must not be empty"));
        }
        if let Some(path) = &ecs.path {
            if !path.starts_with('/') {
                return Err(ConfigError::at(
                    "ecs.path",
                    format!("invalid path {path:?}, expected e.g. \"/v2/credentials/...\""),
                ));
            }
        }
        return Ok(CredentialSource::Sts(Sts {
            kind: StsKind::Ecs {
                path: ecs.path,
                token_env: ecs.token_env.unwrap_or_else(|| "AWS_CONTAINER_AUTHORIZATION_TOKEN".to_string()),
            },
            role_arn: String::new(),
            cluster: ecs.cluster,
            host: ecs.host.unwrap_or_else(|| "169.254.170.2".to_string()),
            session_name: String::new(),
            duration_seconds: 0,
            timeout_ms: ecs.timeout.map_or(2000, DurationStr::as_millis_u32),
        }));
    }
    match (raw.assume_role, raw.web_identity) {
        (Some(_), Some(_)) => Err(ConfigError::at("", "set only one of `assume_role`, `web_identity`")),
        (None, None) => Ok(base),
        (Some(role), None) => {
            let sts = Sts {
                kind: StsKind::AssumeRole { base: Box::new(base), external_id: role.external_id },
                role_arn: role.role_arn,
                cluster: role.cluster,
                host: role.host.unwrap_or_else(|| format!("sts.{region}.amazonaws.com")),
                session_name: role.session_name.unwrap_or_else(|| "envoy-aws-filter".to_string()),
                duration_seconds: role.duration.map_or(3600, |d| d.0.as_secs()),
                timeout_ms: role.timeout.map_or(5000, DurationStr::as_millis_u32),
            };
            validate_sts(&sts).map(|()| CredentialSource::Sts(sts)).map_err(|e| e.under("assume_role"))
        }
        (None, Some(web)) => {
            if inline || raw.source.is_some() {
                return Err(ConfigError::at("web_identity", "needs no base credentials (`source` or inline keys)"));
            }
            let sts = Sts {
                kind: StsKind::WebIdentity {
                    token_env: web.token_env.unwrap_or_else(|| "AWS_WEB_IDENTITY_TOKEN".to_string()),
                },
                role_arn: web.role_arn,
                cluster: web.cluster,
                host: web.host.unwrap_or_else(|| format!("sts.{region}.amazonaws.com")),
                session_name: web.session_name.unwrap_or_else(|| "envoy-aws-filter".to_string()),
                duration_seconds: web.duration.map_or(3600, |d| d.0.as_secs()),
                timeout_ms: web.timeout.map_or(5000, DurationStr::as_millis_u32),
            };
            validate_sts(&sts).map(|()| CredentialSource::Sts(sts)).map_err(|e| e.under("web_identity"))
        }
    }
}

fn validate_sts(sts: &Sts) -> Result<(), ConfigError> {
    let parts: Vec<&str> = sts.role_arn.split(':').collect();
    let valid_arn = parts.len() == 6
        && parts.first() == Some(&"arn")
        && parts.get(1).is_some_and(|p| p.starts_with("aws"))
        && parts.get(2) == Some(&"iam")
        && parts.get(4).is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        && parts.get(5).is_some_and(|r| r.starts_with("role/") && r.len() > 5);
    if !valid_arn {
        return Err(ConfigError::at(
            "role_arn",
            format!("invalid role ARN {:?}, expected arn:aws:iam::<account>:role/<name>", sts.role_arn),
        ));
    }
    if sts.cluster.is_empty() {
        return Err(ConfigError::at("cluster", "must not be empty"));
    }
    let name_ok = |c: u8| c.is_ascii_alphanumeric() || b"=,.@-_".contains(&c);
    if !(2..=64).contains(&sts.session_name.len()) || !sts.session_name.bytes().all(name_ok) {
        return Err(ConfigError::at("session_name", format!("invalid session name {:?}", sts.session_name)));
    }
    if !(900..=43_200).contains(&sts.duration_seconds) {
        return Err(ConfigError::at("duration", "must be between 15m and 12h"));
    }
    Ok(())
}

/// AWS region names: lower-case words and digits joined by `-` (`us-east-1`, `eu-central-2`, `us-gov-west-1`).
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// Service signing names: `lambda`, `s3`, `execute-api`, `es`, `sqs`, `sts`, ...
fn is_service(service: &str) -> bool {
    !service.is_empty()
        && service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !service.starts_with('-')
        && !service.ends_with('-')
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
        assert!(matches!(config.credentials, CredentialSource::Env));
        assert_eq!(config.payload, Payload::Signed);
        assert_eq!(config.max_body, 1 << 20);
        assert!(config.lambda.is_none() && config.rules.is_empty());
        assert_eq!(config.timeout_ms, None);
    }

    #[test]
    fn full_contract() {
        let config = parse(
            br#"{
              "region": "us-east-1", "service": "lambda", "host": "lambda.us-east-1.amazonaws.com",
              "credentials": {"source": "env"}, "payload": "signed", "max_body": "64KiB",
              "unsigned_headers": ["X-Trace-*", "x-b3-traceid"], "timeout": "5s",
              "lambda": {"function": "arn:aws:lambda:us-east-1:123456789012:function:orders", "qualifier": "live",
                         "invocation": "sync", "format": "raw", "timeout": "2s"},
              "rules": [{"match": {"prefix": "/orders"}, "lambda": {"function": "orders", "format": "api_gateway",
                         "invocation": "async"}}, {"match": {"prefix": "/plain"}}]
            }"#,
        )
        .unwrap();
        assert_eq!(config.max_body, 65536);
        assert!(config.is_unsigned_header("x-trace-id"));
        assert!(config.is_unsigned_header("x-b3-traceid"));
        assert!(config.is_unsigned_header("x-envoy-expected-rq-timeout-ms"));
        assert!(!config.is_unsigned_header("content-type"));
        let lambda = config.lambda.as_ref().unwrap();
        assert_eq!(lambda.qualifier.as_deref(), Some("live"));
        assert_eq!(config.timeout_for(Some(lambda)), Some(2000));
        assert_eq!(config.timeout_for(config.rules[0].lambda.as_deref()), Some(5000));
        assert_eq!(config.timeout_for(None), Some(5000));
        assert!(config.lambda_keeps_header("x-trace-id") && config.lambda_keeps_header("x-envoy-original-path"));
        assert!(!config.lambda_keeps_header("accept") && !config.lambda_keeps_header("x-envoy"));
        let rule = config.rules[0].lambda.as_ref().unwrap();
        assert_eq!((rule.invocation, rule.format), (Invocation::Async, Format::ApiGateway));
        let req = |path: &str| vec![(":path".to_string(), path.to_string())];
        assert_eq!(config.lambda_for(&req("/orders/1")).unwrap().function, "orders");
        assert!(config.lambda_for(&req("/plain")).is_none());
        assert_eq!(config.lambda_for(&req("/other")).unwrap().qualifier.as_deref(), Some("live"));
    }

    #[test]
    fn credential_sources() {
        let inline = parse(
            br#"{"region": "us-east-1", "service": "s3",
                 "credentials": {"access_key_id": "AKID", "secret_access_key": "S", "session_token": "T"}}"#,
        )
        .unwrap();
        let CredentialSource::Inline(c) = inline.credentials else { panic!("inline") };
        assert_eq!((c.access_key_id.as_str(), c.session_token.as_deref()), ("AKID", Some("T")));

        let role = parse(
            br#"{"region": "eu-west-1", "service": "sqs", "credentials": {"source": "env",
                 "assume_role": {"role_arn": "arn:aws:iam::123456789012:role/app", "cluster": "sts",
                                 "duration": "15m"}}}"#,
        )
        .unwrap();
        let CredentialSource::Sts(sts) = role.credentials else { panic!("sts") };
        assert_eq!(sts.host, "sts.eu-west-1.amazonaws.com");
        assert_eq!(sts.duration_seconds, 900);
        assert!(matches!(sts.kind, StsKind::AssumeRole { ref base, .. } if matches!(**base, CredentialSource::Env)));

        let ecs =
            parse(br#"{"region": "eu-west-1", "service": "sqs", "credentials": {"ecs": {"cluster": "ecs"}}}"#).unwrap();
        let CredentialSource::Sts(sts) = ecs.credentials else { panic!("ecs") };
        assert_eq!(sts.host, "169.254.170.2");
        assert!(
            matches!(sts.kind, StsKind::Ecs { path: None, ref token_env } if token_env == "AWS_CONTAINER_AUTHORIZATION_TOKEN")
        );
        let err = parse(
            br#"{"region": "eu-west-1", "service": "sqs", "credentials": {"ecs": {"cluster": "e", "path": "x"}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), r#"credentials.ecs.path: invalid path "x", expected e.g. "/v2/credentials/...""#);

        let web = parse(
            br#"{"region": "eu-west-1", "service": "sqs", "credentials": {"web_identity":
                 {"role_arn": "arn:aws:iam::123456789012:role/app", "cluster": "sts"}}}"#,
        )
        .unwrap();
        let CredentialSource::Sts(sts) = web.credentials else { panic!("sts") };
        assert!(matches!(sts.kind, StsKind::WebIdentity { ref token_env } if token_env == "AWS_WEB_IDENTITY_TOKEN"));
    }

    #[test]
    fn rejects_bad_configs_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"service": "s3"}"#, "missing field `region`"),
            (r#"{"region": "mars", "service": "s3"}"#, r#"region: invalid region "mars""#),
            (r#"{"region": "us-east-1", "service": "S 3"}"#, r#"service: invalid service "S 3""#),
            (r#"{"region": "us-east-1", "service": "s3", "extra": 1}"#, "unknown field `extra`"),
            (r#"{"region": "us-east-1", "service": "s3", "payload": "maybe"}"#, "payload: unknown variant `maybe`"),
            (
                r#"{"region": "us-east-1", "service": "lambda", "lambda": {"function": "arn:aws:lambda:us-east-1:12:function:x"}}"#,
                "lambda.function: invalid Lambda function ARN",
            ),
            (
                r#"{"region": "us-east-1", "service": "lambda", "rules": [{"lambda": {"function": "a b"}}]}"#,
                "rules[0].lambda.function: invalid Lambda function name",
            ),
            (
                r#"{"region": "us-east-1", "service": "lambda", "lambda": {"function": "f", "qualifier": "a/b"}}"#,
                "lambda.qualifier: invalid qualifier",
            ),
            (
                r#"{"region": "us-east-1", "service": "lambda", "lambda": {"function": "f", "format": "soap"}}"#,
                "lambda.format: unknown variant `soap`",
            ),
            (
                r#"{"region": "us-east-1", "service": "s3", "credentials": {"source": "file"}}"#,
                r#"credentials.source: unknown source "file""#,
            ),
            (
                r#"{"region": "us-east-1", "service": "s3", "credentials": {"access_key_id": "A"}}"#,
                "credentials: inline credentials need `access_key_id` and `secret_access_key`",
            ),
            (
                r#"{"region": "us-east-1", "service": "s3", "credentials": {"assume_role": {"role_arn": "x", "cluster": "sts"}}}"#,
                r#"credentials.assume_role.role_arn: invalid role ARN "x""#,
            ),
            (
                r#"{"region": "us-east-1", "service": "s3", "credentials": {"assume_role": {"role_arn": "arn:aws:iam::123456789012:role/a", "cluster": "sts", "duration": "1m"}}}"#,
                "credentials.assume_role.duration: must be between 15m and 12h",
            ),
            (r#"{"region": "us-east-1", "service": "s3", "unsigned_headers": ["host"]}"#, "unsigned_headers[0]"),
            (
                r#"{"region": "us-east-1", "service": "s3", "unsigned_headers": ["x-ok", "x-amz-*"]}"#,
                r#"unsigned_headers[1]: "x-amz-*" must be signed"#,
            ),
            (r#"{"region": "us-east-1", "service": "s3", "host": "a b"}"#, r#"host: invalid host "a b""#),
            (r#"{"region": "us-east-1", "service": "s3", "cluster": "aws_direct"}"#, "cluster: no longer used"),
            (
                r#"{"region": "us-east-1", "service": "lambda", "lambda": {"function": "f", "cluster": "c"}}"#,
                "lambda.cluster: no longer used",
            ),
            (
                r#"{"region": "us-east-1", "service": "s3", "lambda": {"function": "f"}}"#,
                r#"service: Lambda invocations are signed for service "lambda", not "s3""#,
            ),
        ];
        for (json, expected) in cases {
            let err = parse(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }
}
