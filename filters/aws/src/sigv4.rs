//! AWS Signature Version 4 (header signing), pure: no hostcalls, no clock. The caller supplies the time, the
//! credentials and the request as it will be sent.
//!
//! The places signers get wrong, and what this one does:
//! - Canonical URI: for every service but S3 the path is normalized (dot segments removed, repeated slashes
//!   merged) and percent-encoded once more ("double encoding": `%3A` becomes `%253A`). For S3 it is used as it is,
//!   only characters that may not appear unencoded are encoded (existing `%XX` escapes are kept).
//! - Canonical query: each `key=value` is percent-decoded and re-encoded with AWS's unreserved set
//!   (`A-Z a-z 0-9 - _ . ~`), then sorted by key and value; a key without `=` gets an empty value.
//! - Header values: trimmed, inner runs of whitespace collapsed to one space, repeated headers joined with `,` in
//!   their order; names lower-cased and sorted. Values are bytes: a value that is not UTF-8 is signed as the very
//!   bytes that are sent (the canonical request is hashed as bytes).

use std::borrow::Cow;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use shared::request::percent_decode;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash of a request whose body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// AWS credentials. `Debug` never shows the secret or the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the canonical URI is built: S3 (`normalize: false, double_encode: false`) or every other service
/// (both true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub normalize: bool,
    pub double_encode: bool,
}

impl PathRules {
    pub fn for_service(service: &str) -> Self {
        let other = !is_s3(service);
        PathRules { normalize: other, double_encode: other }
    }
}

/// S3 and S3-like services whose paths are signed as they are.
pub fn is_s3(service: &str) -> bool {
    matches!(service, "s3" | "s3-outposts" | "s3express")
}

/// A request to sign. `headers` are the headers that will be signed (name, value as text or bytes), already
/// filtered; `host` must be among them. `amz_date` is `YYYYMMDDTHHMMSSZ`.
#[derive(Debug, Clone)]
pub struct Request<'a, V = String> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, V)],
    pub payload_hash: &'a str,
}

/// Everything the signature was computed from, for the caller (the headers to set) and for the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// For reading (bytes that are not UTF-8 replaced); the hash is over the exact bytes.
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signed_headers: String,
    pub signature: String,
    pub authorization: String,
}

/// The signing scope and key material.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Scope<'_> {
    fn date(&self) -> &str {
        self.amz_date.get(..8).unwrap_or(self.amz_date)
    }

    pub fn credential_scope(&self) -> String {
        [self.date(), "/", self.region, "/", self.service, "/aws4_request"].concat()
    }
}

/// Signs `request`.
pub fn sign<V: AsRef<[u8]>>(
    request: &Request<'_, V>,
    scope: &Scope<'_>,
    rules: PathRules,
    credentials: &Credentials,
) -> Signature {
    // Built with extend_from_slice, not format!: this runs on every request, and formatting was a fifth of it in
    // Wasm.
    let (canonical_headers, signed_headers) = canonical_headers(request.headers);
    let canonical_request = join_lines(&[
        request.method.as_bytes(),
        canonical_uri(request.path, rules).as_bytes(),
        canonical_query(request.query).as_bytes(),
        &canonical_headers,
        signed_headers.as_bytes(),
        request.payload_hash.as_bytes(),
    ]);
    let credential_scope = scope.credential_scope();
    let request_hash = sha256_hex(&canonical_request);
    let string_to_sign = join_lines(&[
        ALGORITHM.as_bytes(),
        scope.amz_date.as_bytes(),
        credential_scope.as_bytes(),
        request_hash.as_bytes(),
    ]);
    // The string to sign is ASCII; the canonical request may hold header bytes that are not UTF-8.
    let string_to_sign = text(string_to_sign);
    let canonical_request = text(canonical_request);
    let signature = match signing_mac(&credentials.secret_access_key, scope) {
        Some(mut mac) => {
            mac.update(string_to_sign.as_bytes());
            to_hex(&mac.finalize().into_bytes())
        }
        None => String::new(), // cannot happen (HMAC takes any key); a wrong signature, never a panic
    };
    // concat, not format!: one allocation, no formatting machinery (this runs per request).
    let authorization = [
        ALGORITHM,
        " Credential=",
        &credentials.access_key_id,
        "/",
        &credential_scope,
        ", SignedHeaders=",
        &signed_headers,
        ", Signature=",
        &signature,
    ]
    .concat();
    Signature { canonical_request, string_to_sign, signed_headers, signature, authorization }
}

/// Bytes as text, invalid UTF-8 replaced (without a copy when valid).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

/// Hex SHA-256 of `data` (the payload hash).
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// Lower-case hex of a 32-byte digest (the `hex` crate's slice encoder: no per-character iterator).
fn to_hex(digest: &[u8]) -> String {
    let mut out = [0u8; 64];
    match hex::encode_to_slice(digest, &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => hex::encode(digest), // not a 32-byte digest
    }
}

fn join_lines(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(part);
    }
    out
}

/// The derived key changes once a day (and with the secret, region or service), so an HMAC already keyed with
/// the last one is kept: four HMACs and the key's own two SHA-256 blocks fewer per request. A Wasm VM runs one
/// thread, so the cache is per VM.
struct KeyCache {
    secret: String,
    date: String,
    region: String,
    service: String,
    mac: Hmac<Sha256>,
}

thread_local! {
    static LAST_KEY: std::cell::RefCell<Option<KeyCache>> = const { std::cell::RefCell::new(None) };
}

/// An HMAC keyed with the signing key of `scope`, ready for the string to sign.
fn signing_mac(secret: &str, scope: &Scope<'_>) -> Option<Hmac<Sha256>> {
    let cached = LAST_KEY.with_borrow(|last| {
        last.as_ref()
            .filter(|c| {
                c.secret == secret && c.date == scope.date() && c.region == scope.region && c.service == scope.service
            })
            .map(|c| c.mac.clone())
    });
    if cached.is_some() {
        return cached;
    }
    let mac = Hmac::<Sha256>::new_from_slice(&derive_signing_key(secret, scope)).ok()?;
    LAST_KEY.set(Some(KeyCache {
        secret: secret.to_string(),
        date: scope.date().to_string(),
        region: scope.region.to_string(),
        service: scope.service.to_string(),
        mac: mac.clone(),
    }));
    Some(mac)
}

fn derive_signing_key(secret: &str, scope: &Scope<'_>) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), scope.date().as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; an empty MAC would only give a wrong
    // signature, never a panic.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// The canonical URI of a path as it is sent (percent-encoded as on the wire).
pub fn canonical_uri(path: &str, rules: PathRules) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let normalized;
    let path = if rules.normalize {
        normalized = normalize_path(path);
        normalized.as_str()
    } else {
        path
    };
    if rules.double_encode {
        encode(path.as_bytes(), true)
    } else {
        encode_keeping_escapes(path)
    }
}

/// Removes `.` and `..` segments and merges repeated slashes, keeping a leading and a trailing slash (the
/// algorithm AWS SDKs use).
pub fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical query string: decoded, re-encoded, sorted by key then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs = query_pairs(query);
    pairs.sort();
    join_query(&pairs)
}

/// `key=value` pairs joined with `&`.
pub fn join_query(pairs: &[(String, String)]) -> String {
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The query's `key=value` pairs, each re-encoded with AWS's unreserved set, in their order. Sending the query
/// in this form makes what the server sees equal what was signed.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (encode(&percent_decode(key), false), encode(&percent_decode(value), false))
        })
        .collect()
}

/// The canonical headers block (each `name:value\n`, values as bytes) and the signed-headers list.
pub fn canonical_headers<V: AsRef<[u8]>>(headers: &[(String, V)]) -> (Vec<u8>, String) {
    // Names and values are borrowed unless they need lower-casing, collapsing or merging (per request: no copy
    // of what is already canonical).
    let mut merged: Vec<(Cow<'_, str>, Cow<'_, [u8]>)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name.as_str())
        };
        let value = collapse_whitespace(value.as_ref());
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                let existing = existing.to_mut();
                existing.push(b',');
                existing.extend_from_slice(&value);
            }
            None => merged.push((name, value)),
        }
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let mut block = Vec::new();
    for (name, value) in &merged {
        block.extend_from_slice(name.as_bytes());
        block.push(b':');
        block.extend_from_slice(value);
        block.push(b'\n');
    }
    let signed = merged.iter().map(|(n, _)| n.as_ref()).collect::<Vec<_>>().join(";");
    (block, signed)
}

/// Trims and collapses every run of ASCII whitespace (spaces, tabs, folded line breaks) to one space; other
/// bytes, UTF-8 or not, are kept as they are.
fn collapse_whitespace(value: &[u8]) -> Cow<'_, [u8]> {
    // Already collapsed: no whitespace at either end, and each space alone and followed by a non-space.
    let is_space = |b: Option<&u8>| b.is_some_and(u8::is_ascii_whitespace);
    let single_spaces = value.windows(2).all(|pair| match pair {
        [a, b] => !a.is_ascii_whitespace() || (*a == b' ' && !b.is_ascii_whitespace()),
        _ => true,
    });
    if !is_space(value.first()) && !is_space(value.last()) && single_spaces {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    for word in value.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    Cow::Owned(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Percent-encodes every byte outside AWS's unreserved set (and `/` when `keep_slash`), upper-case hex.
pub fn encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            push_escape(&mut out, b);
        }
    }
    out
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
    out.push(char::from(HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0')));
}

/// Encodes what may not appear in a path unencoded, keeping `/` and valid `%XX` escapes (as upper-case hex).
fn encode_keeping_escapes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let Some(value) = hex_pair(bytes.get(i + 1).copied(), bytes.get(i + 2).copied()) {
                push_escape(&mut out, value);
                i += 3;
                continue;
            }
        }
        if is_unreserved(b) || b == b'/' {
            out.push(char::from(b));
        } else {
            push_escape(&mut out, b);
        }
        i += 1;
    }
    out
}

fn hex_pair(high: Option<u8>, low: Option<u8>) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    Some(digit(high?)? << 4 | digit(low?)?)
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time in seconds. Requests signed within the same second share the text (kept
/// per thread: formatting six numbers was a tenth of a signature).
pub fn amz_date(unix_seconds: u64) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    LAST.with_borrow_mut(|(second, text)| {
        if *second != unix_seconds {
            let days = i64::try_from(unix_seconds / 86_400).unwrap_or(0);
            let rem = unix_seconds % 86_400;
            let (y, m, d) = civil_from_days(days);
            *text = format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60);
            *second = unix_seconds;
        }
        text.clone()
    })
}

/// Parses an ISO 8601 UTC time as AWS writes it (`2015-08-30T12:36:00Z`, fractional seconds allowed) into Unix
/// seconds.
pub fn parse_iso8601(text: &str) -> Option<u64> {
    let text = text.trim();
    let num = |range: std::ops::Range<usize>| text.get(range).and_then(|s| s.parse::<i64>().ok());
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if !seps.iter().all(|(i, c)| text.as_bytes().get(*i) == Some(c)) || !(1..=12).contains(&mo) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()
}

// Howard Hinnant's civil-calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapsing_whitespace_borrows_only_what_is_already_collapsed() {
        // Every value of up to six bytes over a letter, a space, a tab and a byte that is not UTF-8.
        let alphabet = [b'a', b' ', b'\t', 0xe9];
        for length in 0..=6u32 {
            for mut n in 0..4usize.pow(length) {
                let mut value = Vec::new();
                for _ in 0..length {
                    value.push(alphabet[n % 4]);
                    n /= 4;
                }
                let expected: Vec<&[u8]> = value.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()).collect();
                let collapsed = collapse_whitespace(&value);
                assert_eq!(*collapsed, expected.join(&b' '), "{value:?}");
                assert_eq!(matches!(collapsed, Cow::Borrowed(_)), *collapsed == value, "{value:?}");
            }
        }
    }

    #[test]
    fn dates_round_trip() {
        let t = parse_iso8601("2015-08-30T12:36:00Z").unwrap();
        assert_eq!(t, 1_440_938_160);
        assert_eq!(amz_date(t), "20150830T123600Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(parse_iso8601("2024-02-29T23:59:59.123Z").map(amz_date).as_deref(), Some("20240229T235959Z"));
        assert_eq!(parse_iso8601("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_iso8601("yesterday"), None);
    }

    #[test]
    fn paths() {
        let s3 = PathRules::for_service("s3");
        let other = PathRules::for_service("lambda");
        assert_eq!(canonical_uri("/bucket/a%20b/c:d", s3), "/bucket/a%20b/c%3Ad");
        assert_eq!(canonical_uri("/bucket/100%25/x@y", s3), "/bucket/100%25/x%40y");
        assert_eq!(canonical_uri("/b//x/../y", s3), "/b//x/../y");
        assert_eq!(canonical_uri("/b//x/../y/", other), "/b/y/");
        assert_eq!(canonical_uri("/f/arn%3Aaws%3Alambda/invocations", other), "/f/arn%253Aaws%253Alambda/invocations");
        assert_eq!(canonical_uri("", other), "/");
        assert_eq!(normalize_path("/a/./b/../../.."), "/");
    }

    #[test]
    fn queries() {
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("k=a%20b+c&x=%7e~"), "k=a%20b%2Bc&x=~~");
        assert_eq!(canonical_query(""), "");
        assert_eq!(
            query_pairs("Action=List&Version=2012-11-05&q=%2f"),
            vec![
                ("Action".to_string(), "List".to_string()),
                ("Version".to_string(), "2012-11-05".to_string()),
                ("q".to_string(), "%2F".to_string())
            ]
        );
    }

    #[test]
    fn the_cached_signing_key_follows_secret_date_region_and_service() {
        let scope = |amz_date, region, service| Scope { amz_date, region, service };
        let cases = [
            ("s1", scope("20150830T123600Z", "us-east-1", "s3")),
            ("s1", scope("20150830T235959Z", "us-east-1", "s3")),
            ("s1", scope("20150831T000000Z", "us-east-1", "s3")),
            ("s2", scope("20150831T000000Z", "us-east-1", "s3")),
            ("s2", scope("20150831T000000Z", "eu-west-1", "s3")),
            ("s2", scope("20150831T000000Z", "eu-west-1", "sqs")),
            ("s1", scope("20150830T123600Z", "us-east-1", "s3")),
        ];
        let with_cache =
            |secret, scope| signing_mac(secret, scope).unwrap().chain_update(b"data").finalize().into_bytes();
        for (secret, scope) in &cases {
            let fresh = hmac(&derive_signing_key(secret, scope), b"data");
            assert_eq!(with_cache(secret, scope).to_vec(), fresh, "{secret} {}", scope.amz_date);
        }
        assert_ne!(derive_signing_key("s1", &cases[0].1), derive_signing_key("s1", &cases[2].1));
    }

    #[test]
    fn header_values_are_signed_as_bytes() {
        // A Latin-1 byte (not UTF-8) is signed as that byte, not as U+FFFD; whitespace around it is collapsed.
        let headers =
            vec![("host".to_string(), b"h".to_vec()), ("x-name".to_string(), b"  caf\xe9   au lait ".to_vec())];
        let (block, signed) = canonical_headers(&headers);
        assert_eq!(block, b"host:h\nx-name:caf\xe9 au lait\n");
        assert_eq!(signed, "host;x-name");
        let scope = Scope { amz_date: "20150830T123600Z", region: "us-east-1", service: "s3" };
        let creds = Credentials { access_key_id: "A".into(), secret_access_key: "S".into(), session_token: None };
        let raw = sign(
            &Request { method: "GET", path: "/", query: "", headers: &headers, payload_hash: UNSIGNED_PAYLOAD },
            &scope,
            PathRules::for_service("s3"),
            &creds,
        );
        let replaced: Vec<(String, String)> =
            vec![("host".into(), "h".into()), ("x-name".into(), "caf\u{fffd} au lait".into())];
        let lossy = sign(
            &Request { method: "GET", path: "/", query: "", headers: &replaced, payload_hash: UNSIGNED_PAYLOAD },
            &scope,
            PathRules::for_service("s3"),
            &creds,
        );
        assert_ne!(raw.signature, lossy.signature, "the replaced form is a different request");
        let mut expected = b"GET\n/\n\n".to_vec();
        expected.extend_from_slice(&block);
        expected.extend_from_slice(b"\nhost;x-name\nUNSIGNED-PAYLOAD");
        assert!(raw.string_to_sign.ends_with(&sha256_hex(&expected)), "{}", raw.string_to_sign);
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let c = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("tok-secret".into()),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKID") && !shown.contains("very-secret") && !shown.contains("tok-secret"), "{shown}");
    }
}
