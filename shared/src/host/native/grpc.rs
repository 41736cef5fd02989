//! gRPC without gRPC support in the ABI: unary calls over an HTTP/2 callout (the message framed here, the answer
//! read back from the response), and local replies to gRPC requests written as trailers-only answers.

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::host::{CallResponse, GrpcResponse};

/// The request content type that keeps Envoy from rewriting a local reply as gRPC.
pub const NOT_GRPC: &[u8] = b"application/x-grpc-local-reply";

/// What `grpc-message` percent-encodes (besides non-ASCII): controls and `%`.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// The headers of a trailers-only gRPC answer with this status and message.
pub fn trailers_only(status: u32, message: &[u8]) -> Vec<(String, String)> {
    let message = String::from_utf8_lossy(message);
    vec![
        ("content-type".to_string(), "application/grpc".to_string()),
        ("grpc-status".to_string(), status.to_string()),
        ("grpc-message".to_string(), utf8_percent_encode(&message, GRPC_MESSAGE).to_string()),
    ]
}

/// gRPC's UNAVAILABLE: the call got no answer.
const UNAVAILABLE: u32 = 14;
/// gRPC's INTERNAL: the answer is not a gRPC message.
const INTERNAL: u32 = 13;

/// A message as gRPC sends it: not compressed, its length as 4 big-endian bytes, the message.
pub fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let length = u32::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len().saturating_add(5));
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

/// The gRPC answer in an HTTP answer. A trailers-only answer (errors) carries `grpc-status` in its headers; an OK
/// answer carries the message, and its status in trailers, which the callout does not deliver: a complete message
/// with no status in the headers is taken as OK.
pub fn response(http: &CallResponse) -> GrpcResponse {
    if http.status.is_none() {
        return GrpcResponse { status: UNAVAILABLE, message: Vec::new() };
    }
    let header_status = http.headers.iter().find(|(n, _)| n == "grpc-status").map(|(_, v)| v.trim().parse());
    match header_status {
        Some(Ok(0)) | None => match unframe(&http.body) {
            Some(message) => GrpcResponse { status: 0, message: message.to_vec() },
            None if http.status == Some(200) && header_status.is_some() => GrpcResponse::default(),
            None => GrpcResponse {
                status: if http.status == Some(200) { INTERNAL } else { UNAVAILABLE },
                message: Vec::new(),
            },
        },
        Some(Ok(status)) => GrpcResponse { status, message: Vec::new() },
        Some(Err(_)) => GrpcResponse { status: INTERNAL, message: Vec::new() },
    }
}

/// The message of one uncompressed frame that fills the body.
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    let (length, message) = rest.split_first_chunk::<4>()?;
    (flag == 0 && usize::try_from(u32::from_be_bytes(*length)).ok()? == message.len()).then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u32, headers: &[(&str, &str)], body: Vec<u8>) -> CallResponse {
        CallResponse {
            status: Some(status),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body,
        }
    }

    #[test]
    fn a_message_goes_and_comes_back_framed() {
        let framed = frame(b"abc").unwrap();
        assert_eq!(framed, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let ok = response(&answer(200, &[("content-type", "application/grpc")], framed));
        assert_eq!(ok, GrpcResponse { status: 0, message: b"abc".to_vec() });
    }

    #[test]
    fn a_local_reply_is_trailers_only() {
        let headers = trailers_only(8, "rate limited: 100%\né".as_bytes());
        assert_eq!(headers[1], ("grpc-status".to_string(), "8".to_string()));
        assert_eq!(headers[2].1, "rate limited: 100%25%0A%C3%A9");
        assert!(NOT_GRPC.starts_with(b"application/") && !NOT_GRPC.starts_with(b"application/grpc"));
    }

    #[test]
    fn errors_come_in_the_headers_or_as_no_answer() {
        assert_eq!(response(&answer(200, &[("grpc-status", "7")], Vec::new())).status, 7);
        assert_eq!(response(&CallResponse::default()).status, UNAVAILABLE);
        assert_eq!(response(&answer(503, &[], Vec::new())).status, UNAVAILABLE);
        // A body that is not one complete frame.
        assert_eq!(response(&answer(200, &[], vec![0, 0, 0, 0, 9, 1])).status, INTERNAL);
        assert_eq!(response(&answer(200, &[("grpc-status", "x")], Vec::new())).status, INTERNAL);
        // OK with an empty message.
        assert_eq!(response(&answer(200, &[("grpc-status", "0")], Vec::new())), GrpcResponse::default());
    }
}
