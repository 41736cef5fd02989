//! The `envelope` payload: the HTTP request as JSON.
//!
//! ```json
//! {"method": "POST", "path": "/events/orders", "query": "a=1&b=2",
//!  "headers": {"content-type": "application/json"}, "body": "{\"id\": 1}"}
//! ```
//! `query` is the raw query string (without `?`, empty when there is none); `headers` holds the headers the rule
//! selects (repeated ones joined with `,`); the body is `body` when it is UTF-8 and `body_base64` (standard
//! alphabet, padded) when it is not — exactly one of the two is present.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

/// What the envelope is made of.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Serializes the envelope.
pub fn build(request: &Request<'_>) -> Vec<u8> {
    let mut headers = Map::new();
    for (name, value) in request.headers {
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(value);
            }
            _ => {
                headers.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    let mut envelope = Map::new();
    envelope.insert("method".into(), request.method.into());
    envelope.insert("path".into(), request.path.into());
    envelope.insert("query".into(), request.query.into());
    envelope.insert("headers".into(), Value::Object(headers));
    match std::str::from_utf8(request.body) {
        Ok(text) => envelope.insert("body".into(), text.into()),
        Err(_) => envelope.insert("body_base64".into(), STANDARD.encode(request.body).into()),
    };
    Value::Object(envelope).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utf8_bodies_are_text() {
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-a".to_string(), "1".to_string()),
            ("x-a".to_string(), "2".to_string()),
        ];
        let bytes = build(&Request {
            method: "POST",
            path: "/events/orders",
            query: "a=1",
            headers: &headers,
            body: "{\"id\": \"caf\u{e9}\"}".as_bytes(),
        });
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            json!({"method": "POST", "path": "/events/orders", "query": "a=1",
                   "headers": {"content-type": "application/json", "x-a": "1,2"}, "body": "{\"id\": \"caf\u{e9}\"}"})
        );
    }

    #[test]
    fn binary_bodies_are_base64() {
        let body = [0xff, 0x00, 0x10, b'a'];
        let bytes = build(&Request { method: "PUT", path: "/b", query: "", headers: &[], body: &body });
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["body_base64"], "/wAQYQ==");
        assert!(value.get("body").is_none());
        assert_eq!(value["headers"], json!({}));
        assert_eq!(value["query"], "");
    }
}
