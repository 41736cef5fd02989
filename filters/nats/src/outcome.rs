//! What a publish attempt came to, and how the filter answers it: 202 when the server confirmed the publish,
//! otherwise an error status that says where it failed. Each outcome is counted under its own metric and named in
//! the reply's response-code details (`%RESPONSE_CODE_DETAILS%` in Envoy's access log).

use crate::protocol::{self, ServerAnswer, ServerInfo};

/// Why a request was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 400: the request cannot make a valid subject or NATS headers. Nothing was sent.
    InvalidRequest(String),
    /// 413: the body is over `max_body`, or the message over the server's `max_payload`.
    TooLarge(String),
    /// 502: the server answered `-ERR` (its reason), or the tunnel answered something unexpected.
    Rejected(String),
    /// 503: the tunnel cluster is missing, or the server refused or dropped the connection.
    Unavailable(String),
    /// 504: no answer within `timeout`.
    Timeout,
    /// 500: Envoy refused what the filter needed from it (e.g. the buffered body). Nothing was sent.
    Internal(String),
}

/// The events counted per plugin as `<event>` (`wasmcustom.nats.plugin=.=<plugin>;.;<event>` in Envoy's /stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Published,
    InvalidRequest,
    TooLarge,
    Rejected,
    Unavailable,
    Timeout,
    Internal,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::Published,
        Event::InvalidRequest,
        Event::TooLarge,
        Event::Rejected,
        Event::Unavailable,
        Event::Timeout,
        Event::Internal,
    ];

    pub fn metric(self) -> &'static str {
        match self {
            Event::Published => "published",
            Event::InvalidRequest => "invalid_request",
            Event::TooLarge => "too_large",
            Event::Rejected => "rejected",
            Event::Unavailable => "unavailable",
            Event::Timeout => "timeout",
            Event::Internal => "internal_error",
        }
    }

    /// The response-code details of the reply (`%RESPONSE_CODE_DETAILS%`): the filter and the reason.
    pub fn details(self) -> &'static str {
        match self {
            Event::Published => "nats_published",
            Event::InvalidRequest => "nats_bad_request",
            Event::TooLarge => "nats_too_large",
            Event::Rejected => "nats_rejected",
            Event::Unavailable => "nats_unavailable",
            Event::Timeout => "nats_timeout",
            Event::Internal => "nats_internal_error",
        }
    }

    /// The index into [`Event::ALL`] (for metric tables).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Failure {
    pub fn status(&self) -> u32 {
        match self {
            Failure::InvalidRequest(_) => 400,
            Failure::TooLarge(_) => 413,
            Failure::Rejected(_) => 502,
            Failure::Unavailable(_) => 503,
            Failure::Timeout => 504,
            Failure::Internal(_) => 500,
        }
    }

    pub fn event(&self) -> Event {
        match self {
            Failure::InvalidRequest(_) => Event::InvalidRequest,
            Failure::TooLarge(_) => Event::TooLarge,
            Failure::Rejected(_) => Event::Rejected,
            Failure::Unavailable(_) => Event::Unavailable,
            Failure::Timeout => Event::Timeout,
            Failure::Internal(_) => Event::Internal,
        }
    }

    /// The reply's response-code details, e.g. `nats_rejected`.
    pub fn details(&self) -> &'static str {
        self.event().details()
    }

    /// The message for the client (no secrets: NATS's reasons do not carry credentials).
    pub fn message(&self) -> String {
        match self {
            Failure::InvalidRequest(why)
            | Failure::TooLarge(why)
            | Failure::Unavailable(why)
            | Failure::Rejected(why)
            | Failure::Internal(why) => why.clone(),
            Failure::Timeout => "no answer from the NATS server within the timeout".to_string(),
        }
    }
}

/// What came back from the tunnel call.
#[derive(Debug, Clone, Copy)]
pub struct TunnelResponse<'a> {
    /// The HTTP status, `None` when the call failed without a response (reset, or the timeout after the tunnel
    /// had already answered its headers).
    pub status: Option<u32>,
    pub body: &'a [u8],
    pub elapsed_nanos: u64,
    pub timeout_nanos: u64,
}

/// What the tunnel's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub result: Result<(), Failure>,
    /// The server's `INFO`, when it sent one.
    pub info: Option<ServerInfo>,
    /// The reason of the server's `-ERR`, when it sent one.
    pub server_error: Option<String>,
    /// The connection ended without `PONG` or `-ERR`. nats-server answers `-ERR` and closes the connection before
    /// it has read all the client's bytes on a message over its `max_payload`, and on a `CONNECT` with wrong
    /// credentials; the kernel then resets the connection and Envoy loses the `-ERR`. Such a failure is decided by
    /// a probe (see [`after_probe`]).
    pub connection_lost: bool,
}

/// Classifies the tunnel's answer.
pub fn classify(response: &TunnelResponse<'_>) -> Classified {
    let (result, answer) = classify_result(response);
    let connection_lost = match &result {
        Err(Failure::Unavailable(why)) | Err(Failure::Rejected(why)) => why.contains(LOST),
        _ => false,
    };
    let (info, server_error) = answer.map(|answer| (answer.info, answer.error)).unwrap_or_default();
    Classified { result, info, server_error, connection_lost }
}

/// The failure to answer for a publish whose connection was lost (`original`), given the answer to the probe
/// that followed it: a `CONNECT` with the same credentials and a `PING`, publishing nothing.
/// - The probe's credentials refused (`-ERR 'Authorization Violation'`): the publish's `CONNECT` was refused too,
///   before the server read its `PUB`; nothing was published. 502 with the server's reason, as when the `-ERR`
///   is not lost.
/// - Otherwise a message over the server's `max_payload` (from the probe's `INFO`) is a 413.
/// - Otherwise the original failure stands: whether the message was published is unknown.
pub fn after_probe(probe: &Classified, wire_size: usize, original: Failure) -> Failure {
    if let Some(reason) = probe.server_error.as_deref().filter(|reason| protocol::is_auth_error(reason)) {
        return refused(reason);
    }
    let server_max = probe.info.as_ref().and_then(|info| info.max_payload);
    too_large(wire_size, server_max).unwrap_or(original)
}

/// The server's `-ERR`, with its reason.
fn refused(reason: &str) -> Failure {
    Failure::Rejected(format!("the NATS server refused the publish: {reason}"))
}

/// Marks the messages of lost connections.
const LOST: &str = "the connection to the NATS server was";

/// A 413 when a message of `wire_size` bytes (headers and payload) is over the server's `max_payload`.
pub fn too_large(wire_size: usize, max_payload: Option<u64>) -> Option<Failure> {
    let max = max_payload?;
    (wire_size as u64 > max).then(|| {
        Failure::TooLarge(format!(
            "message of {wire_size} bytes is larger than the NATS server's max_payload of {max} bytes"
        ))
    })
}

fn classify_result(response: &TunnelResponse<'_>) -> (Result<(), Failure>, Option<ServerAnswer>) {
    let status = match response.status {
        Some(status) => status,
        None => {
            // Envoy reports a timeout after the tunnel's 200 as a failed call without headers, like a reset.
            // Only the clock tells them apart.
            let timed_out = response.elapsed_nanos.saturating_mul(10) >= response.timeout_nanos.saturating_mul(9);
            let failure = if timed_out { Failure::Timeout } else { Failure::Unavailable(format!("{LOST} reset")) };
            return (Err(failure), None);
        }
    };
    match status {
        200 => {}
        503 => {
            return (Err(Failure::Unavailable("the NATS server is unavailable (connection failed)".to_string())), None)
        }
        504 => return (Err(Failure::Timeout), None),
        other => return (Err(Failure::Rejected(format!("the NATS tunnel answered HTTP {other}"))), None),
    }
    let answer = protocol::parse_answer(response.body);
    let result = match (&answer.error, answer.pong) {
        (Some(reason), _) if protocol::is_max_payload_error(reason) => {
            Err(Failure::TooLarge(format!("the NATS server refused the message: {reason}")))
        }
        (Some(reason), _) => Err(refused(reason)),
        (None, true) => Ok(()),
        (None, false) if answer.info.is_none() && response.body.is_empty() => {
            Err(Failure::Unavailable(format!("{LOST} closed without an answer")))
        }
        (None, false) => Err(Failure::Rejected(format!("{LOST} closed before the server confirmed the publish"))),
    };
    (result, Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn call(status: Option<u32>, body: &[u8], elapsed_nanos: u64) -> (Result<(), Failure>, Option<ServerInfo>) {
        let classified = classify(&TunnelResponse { status, body, elapsed_nanos, timeout_nanos: 2 * SECOND });
        (classified.result, classified.info)
    }

    fn lost(status: Option<u32>, body: &[u8], elapsed_nanos: u64) -> bool {
        classify(&TunnelResponse { status, body, elapsed_nanos, timeout_nanos: 2 * SECOND }).connection_lost
    }

    #[test]
    fn lost_connections_are_flagged() {
        assert!(lost(None, b"", SECOND));
        assert!(lost(Some(200), b"", 1));
        assert!(lost(Some(200), b"INFO {}\r\n", 1));
        assert!(!lost(None, b"", 2 * SECOND), "a timeout is not a lost connection");
        assert!(!lost(Some(503), b"", 1), "a refused connection is not a lost one");
        assert!(!lost(Some(200), b"INFO {}\r\nPONG\r\n", 1));
        assert!(!lost(Some(200), b"INFO {}\r\n-ERR 'Authorization Violation'\r\n", 1));
    }

    #[test]
    fn too_large_compares_with_max_payload() {
        assert_eq!(too_large(10, None), None);
        assert_eq!(too_large(10, Some(10)), None);
        let failure = too_large(11, Some(10)).unwrap();
        assert_eq!(failure.status(), 413);
        assert_eq!(failure.message(), "message of 11 bytes is larger than the NATS server's max_payload of 10 bytes");
    }

    fn probe(body: &[u8]) -> Classified {
        classify(&TunnelResponse { status: Some(200), body, elapsed_nanos: 1, timeout_nanos: 2 * SECOND })
    }

    #[test]
    fn after_a_lost_connection_the_probe_decides() {
        let reset = || Failure::Unavailable(format!("{LOST} reset"));
        // Credentials refused: the publish's CONNECT was refused too, with the same words as an -ERR not lost.
        let refused = probe(b"INFO {\"max_payload\":8}\r\n-ERR 'Authorization Violation'\r\n");
        assert_eq!(refused.server_error.as_deref(), Some("Authorization Violation"));
        let failure = after_probe(&refused, 100, reset());
        assert_eq!(failure, Failure::Rejected("the NATS server refused the publish: Authorization Violation".into()));
        let direct = probe(b"INFO {}\r\n-ERR 'Authorization Violation'\r\n").result.unwrap_err();
        assert_eq!(failure, direct);
        // Accepted: over max_payload is 413, within it the reset stands.
        let accepted = probe(b"INFO {\"max_payload\":8}\r\nPONG\r\n");
        assert_eq!(accepted.server_error, None);
        assert_eq!(after_probe(&accepted, 9, reset()).status(), 413);
        assert_eq!(after_probe(&accepted, 8, reset()), reset());
        // Any other -ERR (not about the credentials) or no answer says nothing about the publish.
        let busy = probe(b"-ERR 'maximum connections exceeded'\r\n");
        assert_eq!(after_probe(&busy, 1, reset()), reset());
        assert_eq!(after_probe(&probe(b""), 1, reset()), reset());
    }

    #[test]
    fn pong_is_published_and_info_is_returned() {
        let (result, info) = call(Some(200), b"INFO {\"max_payload\":64}\r\nPONG\r\n", 1000);
        assert_eq!(result, Ok(()));
        assert_eq!(info.and_then(|i| i.max_payload), Some(64));
    }

    #[test]
    fn errors_map_to_statuses() {
        type Case = (Option<u32>, &'static [u8], u64, u32, &'static str);
        let cases: Vec<Case> = vec![
            (Some(200), b"INFO {}\r\n-ERR 'Authorization Violation'\r\n", 1, 502, "Authorization Violation"),
            (
                Some(200),
                b"INFO {}\r\n-ERR 'Permissions Violation for Publish to \"a\"'\r\nPONG\r\n",
                1,
                502,
                "Permissions",
            ),
            (Some(200), b"INFO {}\r\n-ERR 'Maximum Payload Violation'\r\n", 1, 413, "Maximum Payload Violation"),
            (Some(200), b"INFO {}\r\n", 1, 502, "closed before the server confirmed"),
            (Some(200), b"", 1, 503, "closed without an answer"),
            (Some(503), b"upstream connect error", 1, 503, "unavailable"),
            (Some(504), b"", 1, 504, "within the timeout"),
            (Some(404), b"", 1, 502, "HTTP 404"),
            (None, b"", SECOND, 503, "reset"),
            (None, b"", 2 * SECOND, 504, "within the timeout"),
            (None, b"", 2 * SECOND - 1, 504, "within the timeout"),
        ];
        for (status, body, elapsed, expected_status, expected_message) in cases {
            let (result, _) = call(status, body, elapsed);
            let failure = result.unwrap_err();
            assert_eq!(failure.status(), expected_status, "{status:?} {:?}", String::from_utf8_lossy(body));
            assert!(failure.message().contains(expected_message), "{}", failure.message());
        }
    }

    #[test]
    fn events_and_metric_names() {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.metric()).collect();
        assert_eq!(
            names,
            ["published", "invalid_request", "too_large", "rejected", "unavailable", "timeout", "internal_error"]
        );
        for (i, event) in Event::ALL.iter().enumerate() {
            assert_eq!(event.index(), i);
        }
        assert_eq!(Failure::Timeout.event(), Event::Timeout);
        assert_eq!(Failure::InvalidRequest("x".into()).event(), Event::InvalidRequest);
        assert_eq!(Failure::InvalidRequest("x".into()).status(), 400);
        assert_eq!(Failure::TooLarge("x".into()).event(), Event::TooLarge);
        assert_eq!(Failure::Rejected("x".into()).event(), Event::Rejected);
        assert_eq!(Failure::Unavailable("x".into()).event(), Event::Unavailable);
        assert_eq!(Failure::Internal("x".into()).event(), Event::Internal);
        assert_eq!(Failure::Internal("x".into()).status(), 500);
    }

    #[test]
    fn details_name_the_filter_and_the_reason() {
        let details: Vec<&str> = Event::ALL.iter().map(|e| e.details()).collect();
        assert_eq!(
            details,
            [
                "nats_published",
                "nats_bad_request",
                "nats_too_large",
                "nats_rejected",
                "nats_unavailable",
                "nats_timeout",
                "nats_internal_error"
            ]
        );
        assert_eq!(Failure::Rejected("x".into()).details(), "nats_rejected");
        assert_eq!(Failure::Timeout.details(), "nats_timeout");
        assert_eq!(Failure::InvalidRequest("x".into()).details(), "nats_bad_request");
    }
}
