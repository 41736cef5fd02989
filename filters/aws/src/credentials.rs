//! Credentials, pure: from the environment, STS requests and responses, and the cache of temporary credentials
//! that all worker VMs share (through shared's [`SharedStore`]: Envoy's shared data in the filter, a
//! [`shared::store::MemoryStore`] with Envoy's semantics in the tests).
//!
//! Cache protocol: one key holds the credentials and their expiry (JSON), one key is a refresh lock holding the
//! time until which a worker owns the refresh. A worker that finds the credentials missing, or within
//! [`REFRESH_AHEAD_SECONDS`] of expiring, takes the lock with compare-and-swap and asks STS; the others keep using
//! the still-valid credentials (or, when there are none yet, answer 503 and retry on the next request). A lock
//! whose owner went away expires after its lease.

use serde::{Deserialize, Serialize};
use shared::store::{SharedStore, CREATE_CAS};
use shared::HostError;

use crate::config::{Sts, StsKind};
use crate::sigv4::{self, Credentials, PathRules, Request, Scope};

/// Temporary credentials are refreshed when less than this is left.
pub const REFRESH_AHEAD_SECONDS: u64 = 300;
/// Credentials this close to expiry are not used any more.
pub const EXPIRY_MARGIN_SECONDS: u64 = 15;
/// How long a refresh lock is held at most (its owner normally releases it when STS answers).
pub const LOCK_LEASE_SECONDS: u64 = 30;

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optional `AWS_SESSION_TOKEN` through `lookup`.
pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Credentials, String> {
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Credentials { access_key_id, secret_access_key, session_token: get("AWS_SESSION_TOKEN") })
        }
        _ => Err("no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set in the Wasm VM's \
                  environment (vm_config.environment_variables.host_env_keys)"
            .to_string()),
    }
}

/// A request to STS, ready for `dispatch_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRequest {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The ECS container-credentials request: `GET path` with the authorization token when there is one.
pub fn ecs_request(host: &str, path: Option<&str>, token: Option<&str>) -> Result<StsRequest, String> {
    let path = path.filter(|p| p.starts_with('/')).ok_or(
        "no container-credentials path: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is not set in the Wasm VM's environment",
    )?;
    let mut headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), host.to_string()),
        ("accept".to_string(), "application/json".to_string()),
    ];
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        headers.push(("authorization".to_string(), token.to_string()));
    }
    Ok(StsRequest { headers, body: Vec::new() })
}

/// Parses the container-credentials endpoint's JSON (`AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`).
pub fn parse_ecs_response(status: u32, body: &[u8]) -> Result<Temporary, String> {
    if status != 200 {
        return Err(format!("container-credentials endpoint answered {status}"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "container-credentials answer is not JSON".to_string())?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or(format!("container credentials without {name}"))
    };
    let expiration = field("Expiration")?;
    Ok(Temporary {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("Token")?,
        expires: sigv4::parse_iso8601(&expiration).ok_or("container credentials with an unreadable Expiration")?,
    })
}

/// Builds the STS call: `AssumeRole` signed with `base` (required for it), or `AssumeRoleWithWebIdentity`
/// (unsigned) with `web_token`.
pub fn sts_request(
    sts: &Sts,
    region: &str,
    base: Option<&Credentials>,
    web_token: Option<&str>,
    now_unix: u64,
) -> Result<StsRequest, String> {
    let enc = |v: &str| sigv4::encode(v.as_bytes(), false);
    let duration = sts.duration_seconds.to_string();
    let mut params: Vec<(&str, String)> = vec![
        ("RoleArn", sts.role_arn.clone()),
        ("RoleSessionName", sts.session_name.clone()),
        ("DurationSeconds", duration),
        ("Version", "2011-06-15".to_string()),
    ];
    match &sts.kind {
        StsKind::AssumeRole { external_id, .. } => {
            params.insert(0, ("Action", "AssumeRole".to_string()));
            if let Some(id) = external_id {
                params.push(("ExternalId", id.clone()));
            }
        }
        StsKind::Ecs { .. } => return Err("the ECS endpoint is not STS".to_string()),
        StsKind::WebIdentity { token_env } => {
            params.insert(0, ("Action", "AssumeRoleWithWebIdentity".to_string()));
            let token = web_token
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| format!("no web identity token: {token_env} is not set in the Wasm VM's environment"))?;
            params.push(("WebIdentityToken", token.trim().to_string()));
        }
    }
    let body: String = params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&");
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), "/".to_string()),
        (":authority".to_string(), sts.host.clone()),
        ("content-type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string()),
        ("accept".to_string(), "application/xml".to_string()),
    ];
    if let StsKind::AssumeRole { .. } = sts.kind {
        let base = base.ok_or("no base credentials for AssumeRole")?;
        let amz_date = sigv4::amz_date(now_unix);
        let mut signed: Vec<(String, String)> = vec![
            ("host".to_string(), sts.host.clone()),
            ("content-type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        if let Some(token) = &base.session_token {
            signed.push(("x-amz-security-token".to_string(), token.clone()));
        }
        let hash = sigv4::sha256_hex(body.as_bytes());
        let request = Request { method: "POST", path: "/", query: "", headers: &signed, payload_hash: &hash };
        let scope = Scope { amz_date: &amz_date, region, service: "sts" };
        let signature = sigv4::sign(&request, &scope, PathRules::for_service("sts"), base);
        headers.push(("x-amz-date".to_string(), amz_date));
        if let Some(token) = &base.session_token {
            headers.push(("x-amz-security-token".to_string(), token.clone()));
        }
        headers.push(("authorization".to_string(), signature.authorization));
    }
    Ok(StsRequest { headers, body: body.into_bytes() })
}

/// Temporary credentials with their expiry (Unix seconds), as cached in shared data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Temporary {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expires: u64,
}

impl Temporary {
    pub fn credentials(&self) -> Credentials {
        Credentials {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: Some(self.session_token.clone()),
        }
    }
}

/// Parses STS's XML answer (AssumeRole and AssumeRoleWithWebIdentity have the same `Credentials` element).
/// Errors carry STS's error code and message, never a credential.
pub fn parse_sts_response(status: u32, body: &[u8]) -> Result<Temporary, String> {
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        let code = xml_text(&text, "Code").unwrap_or("unknown");
        let message = xml_text(&text, "Message").unwrap_or("");
        return Err(format!("STS answered {status} ({code}: {message})"));
    }
    let field = |tag: &str| xml_text(&text, tag).map(str::to_string).ok_or(format!("STS answer without <{tag}>"));
    let expiration = field("Expiration")?;
    Ok(Temporary {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("SessionToken")?,
        expires: sigv4::parse_iso8601(&expiration).ok_or("STS answer with an unreadable <Expiration>")?,
    })
}

/// The text of the first `<tag>...</tag>` (STS credentials contain no markup; entities are decoded).
fn xml_text<'t>(text: &'t str, tag: &str) -> Option<&'t str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let rest = text.get(start..)?;
    let end = rest.find(&format!("</{tag}>"))?;
    rest.get(..end).map(str::trim)
}

/// What the cache holds for a request at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Usable; `refresh` says it is time to fetch new ones (ahead of expiry).
    Valid {
        credentials: Credentials,
        refresh: bool,
    },
    Missing,
}

/// The cache of one credential source, under `key` (e.g. `aws.creds.<hash of the role>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    key: String,
    lock_key: String,
}

impl Cache {
    pub fn new(key: &str) -> Self {
        Cache { key: key.to_string(), lock_key: format!("{key}.lock") }
    }

    /// Creates the lock key if it does not exist yet, so that taking the lock is always a real CAS. Call after
    /// [`shared::store::reserve_create_cas`].
    pub fn init(&self, store: &(impl SharedStore + ?Sized)) -> Result<(), HostError> {
        if store.get(&self.lock_key)?.1.is_none() {
            match store.compare_and_set(&self.lock_key, Some(b"0"), CREATE_CAS) {
                Ok(()) | Err(HostError::CasMismatch) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// What the cache holds at `now`. Shared data that cannot be read reads as missing (the caller fetches).
    pub fn lookup(&self, store: &(impl SharedStore + ?Sized), now: u64) -> Lookup {
        let bytes = match store.get(&self.key) {
            Ok((Some(bytes), _)) => bytes,
            Ok((None, _)) => return Lookup::Missing,
            Err(err) => {
                log::warn!("aws: cached credentials unreadable: {err}");
                return Lookup::Missing;
            }
        };
        match serde_json::from_slice::<Temporary>(&bytes) {
            Ok(t) if now.saturating_add(EXPIRY_MARGIN_SECONDS) < t.expires => Lookup::Valid {
                credentials: t.credentials(),
                refresh: now.saturating_add(REFRESH_AHEAD_SECONDS) >= t.expires,
            },
            _ => Lookup::Missing,
        }
    }

    /// Takes the refresh lock for [`LOCK_LEASE_SECONDS`]: `Ok(false)` when another worker holds it (or just took
    /// it).
    pub fn try_lock(&self, store: &(impl SharedStore + ?Sized), now: u64) -> Result<bool, HostError> {
        let (value, cas) = store.get(&self.lock_key)?;
        let held_until = value.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if cas.is_some() && held_until > now {
            return Ok(false);
        }
        // No key yet (init did not run): create it with the lease, create-only.
        let cas = cas.unwrap_or(CREATE_CAS);
        match store.compare_and_set(&self.lock_key, Some(lease(now).as_bytes()), cas) {
            Ok(()) => Ok(true),
            Err(HostError::CasMismatch) => Ok(false),
            Err(err) => Err(err),
        }
    }

    pub fn unlock(&self, store: &(impl SharedStore + ?Sized)) -> Result<(), HostError> {
        store.compare_and_set(&self.lock_key, Some(b"0"), 0)
    }

    pub fn store(&self, store: &(impl SharedStore + ?Sized), credentials: &Temporary) -> Result<(), HostError> {
        let bytes = serde_json::to_vec(credentials).map_err(|_| HostError::SerializationFailure)?;
        store.compare_and_set(&self.key, Some(&bytes), 0)
    }
}

fn lease(now: u64) -> String {
    now.saturating_add(LOCK_LEASE_SECONDS).to_string()
}

/// A stable shared-data key for a credential source (so that two plugin configurations with the same role share
/// the cache, and different roles do not).
pub fn cache_key(sts: &Sts, region: &str) -> String {
    let identity = format!("{:?}|{}|{}|{}|{}", sts.kind_name(), sts.role_arn, sts.session_name, sts.host, region);
    let hash = sigv4::sha256_hex(identity.as_bytes());
    format!("aws.creds.{}", hash.get(..16).unwrap_or(&hash))
}

impl Sts {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            StsKind::AssumeRole { .. } => "assume_role",
            StsKind::WebIdentity { .. } => "web_identity",
            StsKind::Ecs { .. } => "ecs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialSource;
    use shared::store::{reserve_create_cas, MemoryStore};
    use std::collections::HashMap;

    fn sts(kind: StsKind) -> Sts {
        Sts {
            kind,
            role_arn: "arn:aws:iam::123456789012:role/app".into(),
            cluster: "sts".into(),
            host: "sts.us-east-1.amazonaws.com".into(),
            session_name: "envoy".into(),
            duration_seconds: 900,
            timeout_ms: 1000,
        }
    }

    fn base() -> Credentials {
        Credentials { access_key_id: "AKIDEXAMPLE".into(), secret_access_key: "secret".into(), session_token: None }
    }

    #[test]
    fn env_credentials() {
        let env: HashMap<&str, &str> =
            [("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "S"), ("AWS_SESSION_TOKEN", "")].into();
        let c = from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!((c.access_key_id.as_str(), c.session_token), ("AKID", None));
        let err = from_env(|_| None).unwrap_err();
        assert!(err.contains("host_env_keys"), "{err}");
    }

    #[test]
    fn assume_role_request_is_signed_and_form_encoded() {
        let kind = StsKind::AssumeRole { base: Box::new(CredentialSource::Env), external_id: Some("x y".into()) };
        let req = sts_request(&sts(kind), "us-east-1", Some(&base()), None, 1_440_938_160).unwrap();
        let body = String::from_utf8(req.body).unwrap();
        assert_eq!(
            body,
            "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fapp&RoleSessionName=envoy\
             &DurationSeconds=900&Version=2011-06-15&ExternalId=x%20y"
        );
        let header = |n: &str| req.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(header("x-amz-date").as_deref(), Some("20150830T123600Z"));
        let auth = header("authorization").unwrap();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sts/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature="
        ));
        assert!(sts_request(
            &sts(StsKind::AssumeRole { base: Box::new(CredentialSource::Env), external_id: None }),
            "us-east-1",
            None,
            None,
            0
        )
        .is_err());
    }

    #[test]
    fn web_identity_request_is_unsigned_and_needs_the_token() {
        let kind = StsKind::WebIdentity { token_env: "AWS_WEB_IDENTITY_TOKEN".into() };
        let req = sts_request(&sts(kind.clone()), "us-east-1", None, Some("tok.en"), 0).unwrap();
        assert!(String::from_utf8(req.body).unwrap().contains("Action=AssumeRoleWithWebIdentity&"));
        assert!(!req.headers.iter().any(|(k, _)| k == "authorization"));
        let err = sts_request(&sts(kind), "us-east-1", None, None, 0).unwrap_err();
        assert!(err.contains("AWS_WEB_IDENTITY_TOKEN"), "{err}");
    }

    #[test]
    fn sts_responses() {
        let ok = br#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
            <Credentials><SessionToken>TOKEN</SessionToken><SecretAccessKey>SECRET</SecretAccessKey>
            <Expiration>2015-08-30T13:36:00.000Z</Expiration><AccessKeyId>ASIAEXAMPLE</AccessKeyId></Credentials>
            </AssumeRoleResult></AssumeRoleResponse>"#;
        let t = parse_sts_response(200, ok).unwrap();
        assert_eq!(t.access_key_id, "ASIAEXAMPLE");
        assert_eq!(t.credentials().session_token.as_deref(), Some("TOKEN"));
        assert_eq!(t.expires, 1_440_938_160 + 3600);
        let denied =
            br#"<ErrorResponse><Error><Code>AccessDenied</Code><Message>not allowed</Message></Error></ErrorResponse>"#;
        assert_eq!(parse_sts_response(403, denied).unwrap_err(), "STS answered 403 (AccessDenied: not allowed)");
        assert!(parse_sts_response(200, b"<x/>").unwrap_err().contains("without <Expiration>"));
    }

    #[test]
    fn ecs_requests_and_answers() {
        let req = ecs_request("169.254.170.2", Some("/v2/credentials/abc"), Some(" tok ")).unwrap();
        assert!(req.headers.contains(&(":path".to_string(), "/v2/credentials/abc".to_string())));
        assert!(req.headers.contains(&("authorization".to_string(), "tok".to_string())));
        assert!(!ecs_request("h", Some("/p"), None).unwrap().headers.iter().any(|(n, _)| n == "authorization"));
        assert!(ecs_request("h", None, None).unwrap_err().contains("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"));
        let ok =
            br#"{"AccessKeyId": "ASIA1", "SecretAccessKey": "S", "Token": "T", "Expiration": "2015-08-30T13:36:00Z"}"#;
        let t = parse_ecs_response(200, ok).unwrap();
        assert_eq!((t.access_key_id.as_str(), t.expires), ("ASIA1", 1_440_938_160 + 3600));
        assert_eq!(parse_ecs_response(401, b"").unwrap_err(), "container-credentials endpoint answered 401");
        assert!(parse_ecs_response(200, br#"{"AccessKeyId": "A"}"#).is_err());
    }

    #[test]
    fn cache_shares_refreshes_and_locks() {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "aws.").unwrap();
        let cache = Cache::new("aws.creds.k");
        cache.init(&store).unwrap();
        cache.init(&store).unwrap(); // idempotent
        assert_eq!(cache.lookup(&store, 1000), Lookup::Missing);

        // One worker takes the lock, the others cannot until it is released or its lease ran out.
        assert_eq!(cache.try_lock(&store, 1000), Ok(true));
        assert_eq!(cache.try_lock(&store, 1001), Ok(false));
        assert_eq!(cache.try_lock(&store, 1000 + LOCK_LEASE_SECONDS + 1), Ok(true));
        cache.unlock(&store).unwrap();
        assert_eq!(cache.try_lock(&store, 1100), Ok(true));
        let t = Temporary {
            access_key_id: "A".into(),
            secret_access_key: "S".into(),
            session_token: "T".into(),
            expires: 5000,
        };
        cache.store(&store, &t).unwrap();
        cache.unlock(&store).unwrap();

        assert_eq!(cache.lookup(&store, 1100), Lookup::Valid { credentials: t.credentials(), refresh: false });
        assert_eq!(
            cache.lookup(&store, 5000 - REFRESH_AHEAD_SECONDS),
            Lookup::Valid { credentials: t.credentials(), refresh: true }
        );
        assert_eq!(cache.lookup(&store, 5000 - EXPIRY_MARGIN_SECONDS), Lookup::Missing);
    }

    #[test]
    fn lock_creation_without_init_is_create_only() {
        let store = MemoryStore::default();
        reserve_create_cas(&store, "aws.").unwrap();
        let cache = Cache::new("k");
        assert_eq!(cache.try_lock(&store, 10), Ok(true));
        assert_eq!(cache.try_lock(&store, 11), Ok(false));
    }

    #[test]
    fn shared_data_errors_are_reported() {
        let host = shared::host::FakeHost::default();
        let cache = Cache::new("k");
        host.fail("shared_get", HostError::InternalFailure);
        assert_eq!(cache.lookup(&host, 10), Lookup::Missing);
        assert_eq!(cache.try_lock(&host, 10), Err(HostError::InternalFailure));
    }

    #[test]
    fn cache_keys_differ_per_role() {
        let a = sts(StsKind::WebIdentity { token_env: "T".into() });
        let mut b = a.clone();
        b.role_arn = "arn:aws:iam::123456789012:role/other".into();
        assert_ne!(cache_key(&a, "us-east-1"), cache_key(&b, "us-east-1"));
        assert_eq!(cache_key(&a, "us-east-1"), cache_key(&a.clone(), "us-east-1"));
        assert!(cache_key(&a, "us-east-1").starts_with("aws.creds."));
    }
}
