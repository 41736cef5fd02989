//! The NATS client protocol for one-shot publishes through an Envoy HTTP/2 POST tunnel.
//!
//! The filter sends, in one request body, `CONNECT {...}`, one `PUB` (or `HPUB` with headers) and a `PING`. The
//! server answers `INFO {...}` first, then processes the commands in order: a `PONG` proves that it processed the
//! publish; `-ERR '<reason>'` says why it did not. Some errors (authorization, maximum payload) close the
//! connection; others (permissions) are followed by the `PONG`, so any `-ERR` means the publish failed.

use serde::Deserialize;
use serde_json::json;

/// Credentials sent in `CONNECT` (never logged: `Debug` hides the secrets).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => write!(f, "None"),
            Credentials::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: <hidden> }}")
            }
            Credentials::Token(_) => write!(f, "Token(<hidden>)"),
        }
    }
}

/// The `CONNECT` line, built once per configuration. JSON-encoded by serde_json, so a credential cannot break it.
pub fn connect_line(credentials: &Credentials) -> Vec<u8> {
    let mut options = json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "headers": true,
        "echo": false,
        "protocol": 1,
        "lang": "rust-proxy-wasm",
        "version": env!("CARGO_PKG_VERSION"),
        "name": "envoy-nats-filter",
    });
    if let Some(map) = options.as_object_mut() {
        match credentials {
            Credentials::None => {}
            Credentials::UserPassword { user, password } => {
                map.insert("user".into(), user.as_str().into());
                map.insert("pass".into(), password.as_str().into());
            }
            Credentials::Token(token) => {
                map.insert("auth_token".into(), token.as_str().into());
            }
        }
    }
    let mut line = b"CONNECT ".to_vec();
    line.extend_from_slice(options.to_string().as_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

/// The NATS header block (`NATS/1.0\r\nname: value\r\n...\r\n`), or nothing without headers.
pub fn header_block(headers: &[(String, String)]) -> Vec<u8> {
    if headers.is_empty() {
        return Vec::new();
    }
    let size = 12 + headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    let mut block = Vec::with_capacity(size);
    block.extend_from_slice(b"NATS/1.0\r\n");
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// `true` when a header can go into a NATS header block unchanged: a name without `:`, whitespace or control
/// characters, a value without CR, LF or NUL.
pub fn is_valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

/// The whole tunnel request body: CONNECT, PUB/HPUB, PING. `subject` must come from a rendered
/// [`crate::subject::SubjectTemplate`] and the headers must satisfy [`is_valid_header`]; the payload is counted,
/// so it may hold any bytes.
pub fn publish_request(connect: &[u8], subject: &str, header_block: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(connect.len() + subject.len() + header_block.len() + payload.len() + 48);
    out.extend_from_slice(connect);
    if header_block.is_empty() {
        out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    } else {
        let total = header_block.len() + payload.len();
        out.extend_from_slice(format!("HPUB {subject} {} {total}\r\n", header_block.len()).as_bytes());
        out.extend_from_slice(header_block);
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    out
}

/// A request that publishes nothing: CONNECT and PING, to read the server's `INFO` (its `max_payload`).
pub fn probe_request(connect: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(connect.len() + 6);
    out.extend_from_slice(connect);
    out.extend_from_slice(b"PING\r\n");
    out
}

/// What the server's `INFO` says that the filter uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ServerInfo {
    #[serde(default)]
    pub max_payload: Option<u64>,
    #[serde(default)]
    pub headers: bool,
}

/// The server's answer to one tunnel request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerAnswer {
    pub info: Option<ServerInfo>,
    /// The reason of the first `-ERR`, without its quotes.
    pub error: Option<String>,
    /// A `PONG` came back: every command before the `PING` was processed.
    pub pong: bool,
}

/// Parses what the server sent back. Unknown lines (`+OK`, `PING`) are ignored; a body cut short just lacks a PONG.
pub fn parse_answer(body: &[u8]) -> ServerAnswer {
    let mut answer = ServerAnswer::default();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(info) = strip_prefix_ignore_case(line, b"INFO ") {
            answer.info = serde_json::from_slice(info).ok();
        } else if let Some(reason) = strip_prefix_ignore_case(line, b"-ERR") {
            if answer.error.is_none() {
                let reason = String::from_utf8_lossy(reason);
                let reason = reason.trim().trim_matches('\'').trim();
                answer.error =
                    Some(if reason.is_empty() { "unspecified error".to_string() } else { reason.to_string() });
            }
        } else if line.eq_ignore_ascii_case(b"PONG") {
            answer.pong = true;
        }
    }
    answer
}

fn strip_prefix_ignore_case<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = line.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        line.get(prefix.len()..)
    } else {
        None
    }
}

/// `true` for the server's "message too large" error (`-ERR 'Maximum Payload Violation'`).
pub fn is_max_payload_error(reason: &str) -> bool {
    reason.to_ascii_lowercase().contains("maximum payload")
}

/// `true` for the server's refusal of the `CONNECT`'s credentials (`-ERR 'Authorization Violation'`, or an
/// expired or revoked user): it comes before any `PUB` is read, and the same credentials get it again.
pub fn is_auth_error(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("authorization violation") || reason.contains("authentication")
}

/// The server's `max_payload` as the filter last saw it in an `INFO`, trusted for a while: an oversized message
/// is refused without a round trip, and a server restarted with a larger limit is noticed within `ttl_nanos`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxPayloadCache {
    seen: Option<(u64, u64)>,
}

impl MaxPayloadCache {
    /// How long a learned `max_payload` is trusted.
    pub const TTL_NANOS: u64 = 30_000_000_000;

    pub fn update(&mut self, max_payload: u64, now_nanos: u64) {
        self.seen = Some((max_payload, now_nanos));
    }

    /// The limit to check before publishing, if one is known and fresh.
    pub fn limit(&self, now_nanos: u64) -> Option<u64> {
        match self.seen {
            Some((limit, seen_at)) if now_nanos.saturating_sub(seen_at) < Self::TTL_NANOS => Some(limit),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn connect_carries_json_escaped_credentials() {
        let line = connect_line(&Credentials::None);
        assert!(line.starts_with(b"CONNECT {") && line.ends_with(b"}\r\n"));
        let json: serde_json::Value = serde_json::from_slice(&line[8..line.len() - 2]).unwrap();
        assert_eq!(json["verbose"], false);
        assert_eq!(json["headers"], true);
        assert!(json.get("user").is_none() && json.get("auth_token").is_none());

        let tricky = "p\"w\r\nPUB x 1\r\n";
        let line = connect_line(&Credentials::UserPassword { user: "gw".to_string(), password: tricky.to_string() });
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{}", text(&line));
        let json: serde_json::Value = serde_json::from_slice(&line[8..line.len() - 2]).unwrap();
        assert_eq!(json["user"], "gw");
        assert_eq!(json["pass"], tricky);

        let line = connect_line(&Credentials::Token("t0k".to_string()));
        let json: serde_json::Value = serde_json::from_slice(&line[8..line.len() - 2]).unwrap();
        assert_eq!(json["auth_token"], "t0k");
    }

    #[test]
    fn credentials_are_hidden_in_debug() {
        let shown = format!(
            "{:?} {:?}",
            Credentials::UserPassword { user: "gw".into(), password: "hunter2".into() },
            Credentials::Token("t0k".into())
        );
        assert!(!shown.contains("hunter2") && !shown.contains("t0k"), "{shown}");
        assert!(shown.contains("gw"));
    }

    #[test]
    fn pub_without_headers() {
        let body = publish_request(b"CONNECT {}\r\n", "a.b", &[], b"hello");
        assert_eq!(text(&body), "CONNECT {}\r\nPUB a.b 5\r\nhello\r\nPING\r\n");
        let body = publish_request(b"CONNECT {}\r\n", "a", &[], b"");
        assert_eq!(text(&body), "CONNECT {}\r\nPUB a 0\r\n\r\nPING\r\n");
    }

    #[test]
    fn payload_bytes_are_counted_not_parsed() {
        let payload = b"x\r\nPUB evil 1\r\ny\r\n";
        let body = publish_request(b"", "a", &[], payload);
        let expected = format!("PUB a {}\r\n", payload.len());
        assert!(text(&body).starts_with(&expected));
    }

    #[test]
    fn hpub_with_headers() {
        let headers =
            vec![("x-request-id".to_string(), "r1".to_string()), ("content-type".to_string(), "a/b".to_string())];
        let block = header_block(&headers);
        assert_eq!(text(&block), "NATS/1.0\r\nx-request-id: r1\r\ncontent-type: a/b\r\n\r\n");
        let body = publish_request(b"", "a.b", &block, b"hi");
        let expected = format!("HPUB a.b {} {}\r\n{}hi\r\nPING\r\n", block.len(), block.len() + 2, text(&block));
        assert_eq!(text(&body), expected);
        assert!(header_block(&[]).is_empty());
    }

    #[test]
    fn probe_publishes_nothing() {
        assert_eq!(text(&probe_request(b"CONNECT {}\r\n")), "CONNECT {}\r\nPING\r\n");
    }

    #[test]
    fn header_validity() {
        assert!(is_valid_header("x-a", "v a\tl"));
        assert!(!is_valid_header("x:a", "v"));
        assert!(!is_valid_header("x a", "v"));
        assert!(!is_valid_header("", "v"));
        assert!(!is_valid_header("x", "a\r\nb: c"));
        assert!(!is_valid_header("x", "a\0"));
    }

    #[test]
    fn answers_are_parsed() {
        let info =
            br#"INFO {"server_id":"X","version":"2.9.10","headers":true,"max_payload":1048576,"auth_required":true} "#;
        let mut body = info.to_vec();
        body.extend_from_slice(b"\r\nPONG\r\n");
        let answer = parse_answer(&body);
        assert_eq!(answer.info, Some(ServerInfo { max_payload: Some(1048576), headers: true }));
        assert!(answer.pong);
        assert_eq!(answer.error, None);

        let mut body = info.to_vec();
        body.extend_from_slice(b"\r\n-ERR 'Authorization Violation'\r\n");
        let answer = parse_answer(&body);
        assert_eq!(answer.error.as_deref(), Some("Authorization Violation"));
        assert!(!answer.pong);

        // Permission errors do not close the connection: the PONG follows, the publish still failed.
        let answer = parse_answer(b"INFO {}\r\n-ERR 'Permissions Violation for Publish to \"x\"'\r\nPONG\r\n");
        assert_eq!(answer.error.as_deref(), Some("Permissions Violation for Publish to \"x\""));
        assert!(answer.pong);

        let answer = parse_answer(b"INFO {\"max_payload\":10}\r\n");
        assert_eq!(answer.info.and_then(|i| i.max_payload), Some(10));
        assert!(!answer.pong && answer.error.is_none());

        assert_eq!(parse_answer(b""), ServerAnswer::default());
        assert_eq!(parse_answer(b"-ERR\r\n").error.as_deref(), Some("unspecified error"));
        let answer = parse_answer(b"INFO not json\r\n+OK\r\nPING\r\npong\r\n");
        assert_eq!(answer.info, None);
        assert!(answer.pong);
    }

    #[test]
    fn max_payload_errors() {
        assert!(is_max_payload_error("Maximum Payload Violation"));
        assert!(!is_max_payload_error("Authorization Violation"));
    }

    #[test]
    fn auth_errors() {
        assert!(is_auth_error("Authorization Violation"));
        assert!(is_auth_error("User Authentication Expired"));
        assert!(!is_auth_error("Permissions Violation for Publish to \"x\""));
        assert!(!is_auth_error("Maximum Payload Violation"));
        assert!(!is_auth_error("maximum connections exceeded"));
    }

    #[test]
    fn max_payload_cache_expires() {
        let mut cache = MaxPayloadCache::default();
        assert_eq!(cache.limit(0), None);
        cache.update(1024, 100);
        assert_eq!(cache.limit(100), Some(1024));
        assert_eq!(cache.limit(100 + MaxPayloadCache::TTL_NANOS - 1), Some(1024));
        assert_eq!(cache.limit(100 + MaxPayloadCache::TTL_NANOS), None);
        cache.update(2048, 200 + MaxPayloadCache::TTL_NANOS);
        assert_eq!(cache.limit(200 + MaxPayloadCache::TTL_NANOS), Some(2048));
    }
}
