//! Local replies: one shape for every filter's errors.
//!
//! HTTP clients get a JSON body `{"error": "...", "filter": "..."}`. gRPC clients get a trailers-only response
//! whose `grpc-status` says the same thing (Envoy builds it from the `grpc_status` we pass and uses the message as
//! `grpc-message`).

use serde_json::json;

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Set for gRPC requests: Envoy then answers with this grpc-status and the body as grpc-message.
    pub grpc_status: Option<u32>,
    /// Envoy's response-code details (`%RESPONSE_CODE_DETAILS%` in access logs): the filter and the reason, e.g.
    /// `ratelimit_limited`. No spaces.
    pub details: String,
}

/// gRPC status codes used by the filters.
pub mod grpc {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNKNOWN: u32 = 2;
    pub const UNAUTHENTICATED: u32 = 16;
}

impl LocalReply {
    /// An error reply from `filter` with an HTTP status and a message a client can act on (no secrets in it).
    pub fn error(filter: &str, status: u32, message: &str, is_grpc: bool) -> Self {
        if is_grpc {
            return LocalReply {
                status,
                headers: Vec::new(),
                body: message.as_bytes().to_vec(),
                grpc_status: Some(grpc_status_for(status)),
                details: format!("{filter}_error"),
            };
        }
        let body = json!({"error": message, "filter": filter}).to_string().into_bytes();
        LocalReply {
            status,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body,
            grpc_status: None,
            details: format!("{filter}_error"),
        }
    }

    /// A successful JSON reply (e.g. `202 {"subject": ...}`) with its response-code details.
    pub fn json(status: u32, body: &serde_json::Value, details: &str) -> Self {
        LocalReply {
            status,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: body.to_string().into_bytes(),
            grpc_status: None,
            details: details.to_string(),
        }
    }

    /// Overrides the gRPC status chosen from the HTTP status (e.g. RESOURCE_EXHAUSTED for a rate limit).
    pub fn with_grpc_status(mut self, code: u32) -> Self {
        if self.grpc_status.is_some() {
            self.grpc_status = Some(code);
        }
        self
    }

    /// Sets the response-code details (`<filter>_<reason>`, no spaces), e.g. `ratelimit_limited`.
    pub fn with_details(mut self, details: &str) -> Self {
        self.details = details.to_string();
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// The gRPC status that says what an HTTP error status says.
pub fn grpc_status_for(http_status: u32) -> u32 {
    match http_status {
        413 => grpc::RESOURCE_EXHAUSTED,
        400 => grpc::INVALID_ARGUMENT,
        401 => grpc::UNAUTHENTICATED,
        403 => grpc::PERMISSION_DENIED,
        404 => grpc::NOT_FOUND,
        429 => grpc::RESOURCE_EXHAUSTED,
        501 => grpc::UNIMPLEMENTED,
        500 => grpc::INTERNAL,
        502 | 503 => grpc::UNAVAILABLE,
        504 => grpc::DEADLINE_EXCEEDED,
        _ => grpc::UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_are_json() {
        let reply = LocalReply::error("nats", 400, "bad \"subject\"", false);
        assert_eq!(reply.status, 400);
        assert_eq!(reply.grpc_status, None);
        assert_eq!(reply.headers, vec![("content-type".to_string(), "application/json".to_string())]);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body, json!({"error": "bad \"subject\"", "filter": "nats"}));
        assert_eq!(reply.details, "nats_error");
        assert_eq!(reply.with_details("nats_bad_subject").details, "nats_bad_subject");
    }

    #[test]
    fn grpc_errors_carry_a_status_and_the_message() {
        let reply = LocalReply::error("ratelimit", 429, "rate limited", true);
        assert_eq!(reply.grpc_status, Some(grpc::RESOURCE_EXHAUSTED));
        assert_eq!(reply.body, b"rate limited");
        let reply = LocalReply::error("aws", 503, "no credentials", true).with_grpc_status(grpc::UNAUTHENTICATED);
        assert_eq!(reply.grpc_status, Some(grpc::UNAUTHENTICATED));
        // An HTTP reply stays HTTP.
        assert_eq!(LocalReply::error("aws", 503, "x", false).with_grpc_status(4).grpc_status, None);
    }

    #[test]
    fn status_mapping() {
        assert_eq!(grpc_status_for(400), grpc::INVALID_ARGUMENT);
        assert_eq!(grpc_status_for(413), grpc::RESOURCE_EXHAUSTED);
        assert_eq!(grpc_status_for(429), grpc::RESOURCE_EXHAUSTED);
        assert_eq!(grpc_status_for(503), grpc::UNAVAILABLE);
        assert_eq!(grpc_status_for(504), grpc::DEADLINE_EXCEEDED);
        assert_eq!(grpc_status_for(418), grpc::UNKNOWN);
    }

    #[test]
    fn json_replies_and_extra_headers() {
        let reply = LocalReply::json(202, &json!({"subject": "a.b"}), "nats_published").with_header("retry-after", "1");
        assert_eq!(reply.status, 202);
        assert_eq!(reply.body, br#"{"subject":"a.b"}"#);
        assert!(reply.headers.contains(&("retry-after".to_string(), "1".to_string())));
    }
}
