//! What the filter does to a request to sign it, pure: from the request's headers (pseudo-headers included, as
//! Envoy has them) to the list of header changes.
//!
//! - The client's `authorization`, `x-amz-*` and `x-amzn-*` headers are removed first: a client cannot smuggle
//!   its own token, date or payload hash into our signature.
//! - `:authority` becomes the configured `host` when there is one; the signed `host` is `:authority` without
//!   `:80` / `:443`.
//! - `:path` is rewritten to the form that is signed when they differ (the query re-encoded with AWS's set; for
//!   S3, characters that must be escaped escaped), so that what the server sees is what was signed.
//! - Headers that Envoy or the path to the upstream may change are never signed (config `NEVER_SIGNED` plus
//!   `unsigned_headers`).
//! - Header values are bytes: what is signed is exactly what is forwarded, UTF-8 or not. Only the pseudo-headers
//!   the signature is built from (`:method`, `:path`, `:authority`) must be text.

use std::borrow::Cow;

use crate::config::{Config, Payload};
use crate::sigv4::{self, Credentials, PathRules, Request, Scope};

/// Header changes to apply, in order: removals, then sets (a set replaces every value of that header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
}

impl Changes {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.set.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Client headers dropped before signing.
pub fn is_client_aws_header(name: &str) -> bool {
    let starts_with = |prefix: &str| name.get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix));
    name.eq_ignore_ascii_case("authorization") || starts_with("x-amz-") || starts_with("x-amzn-")
}

/// The `host` to sign: `:authority` without a default port.
pub fn signed_host(authority: &str) -> &str {
    authority.strip_suffix(":443").or_else(|| authority.strip_suffix(":80")).unwrap_or(authority)
}

/// The payload hash header value and whether `x-amz-content-sha256` is sent.
pub fn payload_hash(config: &Config, body: Option<&[u8]>) -> String {
    match (config.payload, body) {
        (Payload::Unsigned, _) => sigv4::UNSIGNED_PAYLOAD.to_string(),
        (Payload::Signed, body) => sigv4::sha256_hex(body.unwrap_or_default()),
    }
}

/// Signs a request. `headers` are the request's headers as they are now (pseudo-headers included; `:authority`
/// and `:path` required), values as text or bytes. `service` and `payload_hash` come from the caller (the hash of
/// the body, or `UNSIGNED-PAYLOAD`).
pub fn sign<V: AsRef<[u8]>>(
    headers: &[(String, V)],
    config: &Config,
    credentials: &Credentials,
    now_unix: u64,
    payload_hash: &str,
) -> Result<Changes, String> {
    sign_with_own(headers, &[], config, credentials, now_unix, payload_hash)
}

/// [`sign`] for a request to which the filter itself added `own` headers (e.g. `x-amz-invocation-type`): those
/// are signed, not removed as a client's `x-amz-*` would be.
pub fn sign_with_own<V: AsRef<[u8]>>(
    headers: &[(String, V)],
    own: &[&str],
    config: &Config,
    credentials: &Credentials,
    now_unix: u64,
    payload_hash: &str,
) -> Result<Changes, String> {
    let is_client_aws = |name: &str| is_client_aws_header(name) && !own.contains(&name);
    let value = |name: &str| -> Result<Option<&str>, String> {
        match headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            None => Ok(None),
            Some((_, v)) => {
                std::str::from_utf8(v.as_ref()).map(Some).map_err(|_| format!("request {name} is not valid UTF-8"))
            }
        }
    };
    let method = value(":method")?.ok_or("request without :method")?;
    let full_path = value(":path")?.ok_or("request without :path")?;
    let request_authority = value(":authority")?;
    let authority = match &config.host {
        Some(host) => host.as_str(),
        None => match request_authority {
            Some(authority) => authority,
            None => value("host")?.ok_or("request without :authority")?,
        },
    };
    let mut changes = Changes::default();

    for (name, _) in headers {
        if is_client_aws(name) && !changes.remove.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            changes.remove.push(name.to_ascii_lowercase());
        }
    }
    if config.host.is_some() && request_authority != Some(authority) {
        changes.set.push((":authority".to_string(), authority.to_string()));
    }

    // The path as it will be sent: for S3 escapes normalized, the query in AWS's encoding.
    let (path, query) = shared::request::split_path(full_path);
    let is_s3 = sigv4::is_s3(&config.service);
    let rules = PathRules::for_service(&config.service);
    let path = if is_s3 { sigv4::canonical_uri(path, rules) } else { path.to_string() };
    let query = sigv4::join_query(&sigv4::query_pairs(query));
    let sent_path = if query.is_empty() { path.clone() } else { [path.as_str(), "?", &query].concat() };
    if sent_path != full_path {
        changes.set.push((":path".to_string(), sent_path));
    }

    let amz_date = sigv4::amz_date(now_unix);
    let mut added = vec![("x-amz-date".to_string(), amz_date.clone())];
    if let Some(token) = &credentials.session_token {
        added.push(("x-amz-security-token".to_string(), token.clone()));
    }
    if is_s3 || payload_hash == sigv4::UNSIGNED_PAYLOAD {
        added.push(("x-amz-content-sha256".to_string(), payload_hash.to_string()));
    }

    let mut to_sign: Vec<(String, Cow<'_, [u8]>)> =
        vec![("host".to_string(), Cow::Borrowed(signed_host(authority).as_bytes()))];
    for (name, v) in headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with(':') || lower == "host" || is_client_aws(&lower) || config.is_unsigned_header(&lower) {
            continue;
        }
        to_sign.push((lower, Cow::Borrowed(v.as_ref())));
    }
    to_sign.extend(added.iter().map(|(n, v)| (n.clone(), Cow::Borrowed(v.as_bytes()))));

    let request = Request { method, path: &path, query: &query, headers: &to_sign, payload_hash };
    let scope = Scope { amz_date: &amz_date, region: &config.region, service: &config.service };
    let signature = sigv4::sign(&request, &scope, rules, credentials);
    changes.set.extend(added);
    changes.set.push(("authorization".to_string(), signature.authorization));
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_string),
        }
    }

    #[test]
    fn matches_the_suite_for_a_plain_get() {
        // aws-sig-v4-test-suite get-vanilla, through the filter's request preparation.
        let config = config::parse(br#"{"region": "us-east-1", "service": "service"}"#).unwrap();
        let h = headers(&[(":method", "GET"), (":path", "/"), (":authority", "example.amazonaws.com:443")]);
        let changes = sign(&h, &config, &creds(None), 1_440_938_160, &sigv4::sha256_hex(b"")).unwrap();
        assert_eq!(
            changes.get("authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
        assert_eq!(changes.get("x-amz-date"), Some("20150830T123600Z"));
        assert!(changes.remove.is_empty());
        assert_eq!(changes.get(":path"), None);
    }

    #[test]
    fn client_aws_headers_are_dropped_and_envoy_headers_not_signed() {
        let config =
            config::parse(br#"{"region": "us-east-1", "service": "sqs", "unsigned_headers": ["x-trace"]}"#).unwrap();
        let h = headers(&[
            (":method", "POST"),
            (":path", "/?b=2&a=x y"),
            (":authority", "localhost:8080"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=EVIL"),
            ("x-amz-security-token", "smuggled"),
            ("X-Amz-Date", "20000101T000000Z"),
            ("x-amzn-trace-id", "Root=1"),
            ("x-envoy-expected-rq-timeout-ms", "15000"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "abc"),
            ("x-trace", "1"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-custom", "  a   b  "),
        ]);
        let changes = sign(&h, &config, &creds(Some("real-token")), 0, "hash").unwrap();
        assert_eq!(changes.remove, vec!["authorization", "x-amz-security-token", "x-amz-date", "x-amzn-trace-id"]);
        assert_eq!(changes.get("x-amz-security-token"), Some("real-token"));
        assert_eq!(changes.get(":path"), Some("/?b=2&a=x%20y"));
        assert_eq!(changes.get("x-amz-content-sha256"), None);
        let auth = changes.get("authorization").unwrap();
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-custom,"), "{auth}");
    }

    #[test]
    fn s3_paths_and_configured_host() {
        let config = config::parse(
            br#"{"region": "us-east-1", "service": "s3", "host": "s3.amazonaws.com", "payload": "unsigned"}"#,
        )
        .unwrap();
        let h = headers(&[(":method", "PUT"), (":path", "/bucket/a%20b/c:d@e%25"), (":authority", "gw")]);
        let hash = payload_hash(&config, Some(b"x"));
        assert_eq!(hash, "UNSIGNED-PAYLOAD");
        let changes = sign(&h, &config, &creds(None), 0, &hash).unwrap();
        assert_eq!(changes.get(":path"), Some("/bucket/a%20b/c%3Ad%40e%25"));
        assert_eq!(changes.get(":authority"), Some("s3.amazonaws.com"));
        assert_eq!(changes.get("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert!(changes
            .get("authorization")
            .unwrap()
            .contains("/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
        assert_eq!(signed_host("a:80"), "a");
        assert_eq!(signed_host("a:8080"), "a:8080");
    }
}
