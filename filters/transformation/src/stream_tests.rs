//! The stream driven end to end against `FakeHost`: what Envoy would forward, reply or hold at each callback.

use std::rc::Rc;

use serde_json::{json, Value};
use shared::host::{FakeHost, Filter, Flow, HostError, Side, Stream};
use shared::metrics::test_value;
use shared::reply::grpc;
use shared::LocalReply;

use crate::body::{self, Encoding};
use crate::stream::{TransformationFilter, TransformationStream};

const CONFIG: &str = r#"{"max_body_size": "64", "transformations": [
  {"match": {"prefix": "/headers"}, "route_transformations": {"request_transformation": {"transformation_template": {
     "headers": {"x-path": {"text": "{{ header(\":path\") }}"}}}}}},
  {"match": {"prefix": "/body"}, "route_transformations": {"request_transformation": {"transformation_template": {
     "headers": {"x-len": {"text": "{{ header(\"content-length\") }}"}},
     "body": {"text": "{\"user\": \"{{ name }}\"}"}}}}},
  {"match": {"prefix": "/json-header"}, "route_transformations": {"request_transformation": {"transformation_template": {
     "headers": {"x-name": {"text": "{{ user.name }}"}}}}}},
  {"match": {"prefix": "/response"}, "route_transformations": {"response_transformation": {"transformation_template": {
     "headers": {":status": {"text": "201"}, "x-req": {"text": "{{ request_header(\"x-in\") }}"},
                 "x-upstream-says": {"text": "{{ message }}"}},
     "body": {"text": "{{ upper(message) }}"}}}}},
  {"match": {"prefix": "/error-headers"}, "route_transformations": {"response_transformation": {"transformation_template": {
     "headers": {":status": {"text": "not a status"}}}}}},
  {"match": {"prefix": "/error-body"}, "route_transformations": {"response_transformation": {"transformation_template": {
     "body": {"text": "{{ missing_field }}"}}}}},
  {"match": {"prefix": "/no-change"}, "route_transformations": {"request_transformation": {"transformation_template": {
     "headers": {"x-a": {"text": "a"}}}}}},
  {"match": {"prefix": "/own-reply"}, "routeTransformations": {
     "requestTransformation": {"transformationTemplate": {"body": {"text": "{{ name }}"}}},
     "responseTransformation": {"transformationTemplate": {"headers": {"x-wrapped": {"text": "yes"}},
        "body": {"text": "wrapped"}}}}},
  {"match": {"prefix": "/empty"}, "route_transformations": {
     "request_transformation": {"transformation_template": {"body": {"text": ""}, "parse_body_behavior": "DontParse"}},
     "response_transformation": {"transformation_template": {"body": {"text": ""}, "parse_body_behavior": "DontParse"}}}},
  {"match": {"prefix": "/rewrite"}, "route_transformations": {"request_transformation": {"transformation_template": {
     "headers": {":path": {"text": "{{ header(\"x-path\") }}"}, ":authority": {"text": "{{ header(\"x-host\") }}"}}}}}},
  {"match": {"prefix": "/metadata"}, "route_transformations": {"request_transformation": {"transformation_template": {
     "string_delimiter": "/",
     "headers": {"x-c": {"text": "{{ cluster_metadata(\"a/b\") }}"}, "x-d": {"text": "{{ dynamic_metadata(\"k\", \"ns\") }}"},
                 "x-h": {"text": "[{{ host_metadata(\"k\") }}]"}}}}}}
]}"#;

fn filter(config: &str) -> Rc<TransformationFilter> {
    Rc::new(TransformationFilter::configure(&FakeHost::default(), config.as_bytes(), None).unwrap())
}

fn stream() -> TransformationStream {
    TransformationFilter::stream(filter(CONFIG))
}

fn post(path: &str, extra: &[(&str, &str)], body: &[u8]) -> FakeHost {
    let length = body.len().to_string();
    let mut headers =
        vec![(":method", "POST"), (":path", path), (":authority", "h"), ("content-length", length.as_str())];
    headers.extend_from_slice(extra);
    FakeHost::with_request(&headers).body(body)
}

fn metric(name: &str) -> u64 {
    // No plugin_name on the fake host: the plugin is named after the filter.
    test_value(&format!("transformation.plugin=.=transformation;.;{name}")).unwrap_or(0)
}

fn reply(flow: Flow) -> LocalReply {
    match flow {
        Flow::Reply(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn error_of(reply: &LocalReply) -> String {
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["filter"], "transformation");
    body["error"].as_str().unwrap().to_string()
}

fn request_body(host: &FakeHost) -> Vec<u8> {
    host.request_body.borrow().clone()
}

#[test]
fn configure_refuses_bad_configurations_with_the_path() {
    let err = TransformationFilter::configure(&FakeHost::default(), br#"{"stage": 11}"#, None).err().unwrap();
    assert_eq!(err, "stage: must be at most 10");
}

#[test]
fn header_only_transformations_never_hold_the_body() {
    let mut s = stream();
    let host = post("/headers/a", &[], b"any body, even over the limit of sixty-four bytes, is never buffered");
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(host.header_of(Side::Request, "x-path").as_deref(), Some("/headers/a"));
    assert_eq!(s.on_request_body(&host, 10, false), Flow::Continue);
    assert_eq!(s.on_request_body(&host, 80, true), Flow::Continue);
    assert!(request_body(&host).starts_with(b"any body"));
    assert_eq!(metric("request_header_transformations"), 1);
    assert_eq!(metric("request_body_transformations"), 0);
}

#[test]
fn no_rule_and_no_request_transformation_pass() {
    let mut s = stream();
    let host = post("/nothing", &[], b"{}");
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(s.on_request_body(&host, 2, true), Flow::Continue);
    assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
    assert_eq!(host.request_headers.borrow().len(), 4);
}

#[test]
fn body_template_holds_the_headers_then_sets_body_and_length_together() {
    let mut s = stream();
    let body = br#"{"name": "Ann", "extra": [1, 2, 3]}"#;
    let host = post("/body", &[("transfer-encoding", "chunked")], body);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    // Nothing changes while the body comes.
    assert_eq!(s.on_request_body(&host, 10, false), Flow::Buffer);
    assert_eq!(host.header_of(Side::Request, "x-len"), None);
    assert_eq!(request_body(&host), body);
    assert_eq!(s.on_request_body(&host, body.len(), true), Flow::Continue);
    assert_eq!(request_body(&host), br#"{"user": "Ann"}"#);
    // The header template saw the headers as they came; then the length of the new body is set.
    assert_eq!(host.header_of(Side::Request, "x-len"), Some(body.len().to_string()));
    assert_eq!(host.header_of(Side::Request, "content-length"), Some("15".to_string()));
    assert_eq!(host.header_of(Side::Request, "transfer-encoding"), None);
    assert!(host.replies.borrow().is_empty() && host.resumed.borrow().is_empty());
    assert_eq!(metric("request_body_transformations"), 1);

    // Without `transfer-encoding` there is nothing to remove: no host call for it.
    let mut s = stream();
    let host = post("/body", &[], body);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, body.len(), true), Flow::Continue);
    assert_eq!(host.header_of(Side::Request, "content-length"), Some("15".to_string()));
    assert!(!host.calls.borrow().contains(&"remove_header"), "{:?}", host.calls.borrow());
}

#[test]
fn a_header_template_reads_a_json_body_field() {
    let mut s = stream();
    let body = br#"{"user": {"name": "Bo"}}"#;
    let host = post("/json-header", &[], body);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, body.len(), true), Flow::Continue);
    assert_eq!(host.header_of(Side::Request, "x-name").as_deref(), Some("Bo"));
    // The body did not change: neither did it nor its length.
    assert_eq!(request_body(&host), body);
    assert_eq!(host.header_of(Side::Request, "content-length"), Some(body.len().to_string()));
}

#[test]
fn a_request_whose_headers_end_the_stream_is_transformed_without_a_body() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/body")]);
    // The body template renders over no body ({{ name }} is undefined): a 400, not a hold that never ends.
    let reply = reply(s.on_request_headers(&host, true));
    assert_eq!(reply.status, 400);
}

#[test]
fn a_bodiless_message_gets_its_new_body_where_the_host_can_add_one() {
    let config = r#"{"transformations": [{"match": {"prefix": "/envelope"}, "route_transformations": {
        "request_transformation": {"header_body_transform": {}},
        "response_transformation": {"transformation_template": {"parse_body_behavior": "DontParse",
            "body": {"text": "made at {{ header(\":status\") }}"}}}}}]}"#;
    // A dynamic module can add a body (as Gloo does); Wasm cannot, and the message stays bodiless.
    for can_add in [true, false] {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/envelope"), (":authority", "h")]);
        host.can_add_body_to_bodiless.set(can_add);
        let mut s = TransformationFilter::stream(filter(config));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        let body = host.request_body.borrow().clone();
        let length = host.header_of(Side::Request, "content-length");
        if can_add {
            let envelope: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(envelope["headers"][":path"], "/envelope");
            assert_eq!(length, Some(body.len().to_string()));
        } else {
            assert!(body.is_empty());
            assert_eq!(length, None);
        }
        host.set_response(&[(":status", "200")], b"");
        assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
        let expected: &[u8] = if can_add { b"made at 200" } else { b"" };
        assert_eq!(host.response_body.borrow().as_slice(), expected, "can add: {can_add}");
    }
    // No body goes with an answer to HEAD, nor with a 204 or a 304.
    for (method, status) in [("HEAD", "200"), ("GET", "204"), ("GET", "304")] {
        let host = FakeHost::with_request(&[(":method", method), (":path", "/envelope"), (":authority", "h")]);
        host.can_add_body_to_bodiless.set(true);
        let mut s = TransformationFilter::stream(filter(config));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        host.set_response(&[(":status", status)], b"");
        assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
        assert_eq!(host.response_body.borrow().as_slice(), b"", "{method} {status}");
        assert_eq!(host.header_of(Side::Response, "content-length"), None, "{method} {status}");
    }
}

#[test]
fn invalid_json_is_a_400_and_nothing_goes_on() {
    let mut s = stream();
    let host = post("/json-header", &[], b"{not json");
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    let reply = reply(s.on_request_body(&host, 9, true));
    assert_eq!(reply.status, 400);
    assert_eq!(reply.details, "transformation_bad_request");
    assert!(error_of(&reply).starts_with("bad request: body is not valid JSON"), "{}", error_of(&reply));
    // The request was neither resumed nor changed: the adapter sends the reply and the upstream sees nothing.
    assert!(host.resumed.borrow().is_empty());
    assert_eq!(host.header_of(Side::Request, "x-name"), None);
    assert_eq!(request_body(&host), b"{not json");
    assert_eq!(metric("request_errors"), 1);
}

#[test]
fn grpc_requests_get_a_grpc_status() {
    let mut s = stream();
    let host = post("/json-header", &[("content-type", "application/grpc")], b"\0\0\0\0\x01x");
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    let reply = reply(s.on_request_body(&host, 6, true));
    assert_eq!(reply.grpc_status, Some(grpc::INVALID_ARGUMENT));
    assert!(String::from_utf8_lossy(&reply.body).starts_with("bad request:"));
}

#[test]
fn a_declared_length_over_the_limit_is_413_before_any_byte() {
    let mut s = stream();
    let host = post("/body", &[], &[b'x'; 65]);
    let reply = reply(s.on_request_headers(&host, false));
    assert_eq!(reply.status, 413);
    assert_eq!(reply.details, "transformation_body_too_large");
    assert_eq!(error_of(&reply), "body larger than the limit of 64 bytes");
    assert_eq!(metric("body_too_large"), 1);
}

#[test]
fn a_buffered_body_over_the_limit_is_413() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "POST"), (":path", "/body")]).body(&[b'x'; 100]);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 64, false), Flow::Buffer);
    let reply = reply(s.on_request_body(&host, 65, false));
    assert_eq!(reply.status, 413);
    assert_eq!(reply.details, "transformation_body_too_large");
    // Later callbacks (none come after a reply, but nothing is held any more) pass.
    assert_eq!(s.on_request_body(&host, 100, true), Flow::Continue);
    assert_eq!(metric("body_too_large"), 1);
}

#[test]
fn a_host_that_refuses_the_body_is_a_500_and_nothing_goes_on() {
    let mut s = stream();
    let body = br#"{"name": "Ann"}"#;
    let host = post("/body", &[], body);
    host.fail("set_body", HostError::BadArgument);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    let reply = reply(s.on_request_body(&host, body.len(), true));
    assert_eq!(reply.status, 500);
    assert_eq!(reply.details, "transformation_host_error");
    assert!(error_of(&reply).contains("cannot replace the body"));
    // The headers were not touched before the body was in place.
    assert_eq!(host.header_of(Side::Request, "x-len"), None);
}

#[test]
fn an_upgrade_is_not_held_for_a_body_that_never_ends() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/json-header"), ("upgrade", "websocket")]);
    // Transformed as a message without a body: the JSON field is missing, which is an error, not a hang.
    assert_eq!(reply(s.on_request_headers(&host, false)).status, 400);
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/headers"), ("upgrade", "websocket")]);
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(host.header_of(Side::Request, "x-path").as_deref(), Some("/headers"));
}

#[test]
fn gzip_bodies_are_decoded_transformed_and_reencoded() {
    let mut s = stream();
    let compressed = body::encode(br#"{"name": "Zed"}"#, Encoding::Gzip);
    let host = post("/body", &[("content-encoding", "gzip")], &compressed);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, compressed.len(), true), Flow::Continue);
    let sent = request_body(&host);
    assert_eq!(body::decode(&sent, Encoding::Gzip, 1000).unwrap(), br#"{"user": "Zed"}"#);
    assert_eq!(host.header_of(Side::Request, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(host.header_of(Side::Request, "content-length"), Some(sent.len().to_string()));

    // compressed_bodies: identity sends the result uncompressed.
    let config =
        CONFIG.replacen(r#""max_body_size": "64""#, r#""max_body_size": "64", "compressed_bodies": "identity""#, 1);
    let mut s = TransformationFilter::stream(filter(&config));
    let host = post("/body", &[("content-encoding", "gzip")], &compressed);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, compressed.len(), true), Flow::Continue);
    assert_eq!(request_body(&host), br#"{"user": "Zed"}"#);
    assert_eq!(host.header_of(Side::Request, "content-encoding"), None);
    assert_eq!(host.header_of(Side::Request, "content-length").as_deref(), Some("15"));

    // A zip bomb is bounded by the limit on the decoded size: 413.
    let mut s = stream();
    let bomb = body::encode(&[0u8; 10_000], Encoding::Gzip);
    assert!(bomb.len() <= 64);
    let host = post("/body", &[("content-encoding", "gzip")], &bomb);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(reply(s.on_request_body(&host, bomb.len(), true)).status, 413);
}

#[test]
fn response_body_transformation_sets_status_headers_body_and_length() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/response"), ("x-in", "req")]);
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    let upstream = br#"{"message": "hello"}"#;
    host.set_response(&[(":status", "200"), ("content-length", "20"), ("content-type", "application/json")], upstream);
    assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_response_body(&host, 5, false), Flow::Buffer);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("200"));
    assert_eq!(s.on_response_body(&host, upstream.len(), true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("201"));
    assert_eq!(host.header_of(Side::Response, "x-req").as_deref(), Some("req"));
    assert_eq!(host.header_of(Side::Response, "x-upstream-says").as_deref(), Some("hello"));
    assert_eq!(*host.response_body.borrow(), b"HELLO");
    assert_eq!(host.header_of(Side::Response, "content-length").as_deref(), Some("5"));
    assert_eq!(metric("response_body_transformations"), 1);
}

#[test]
fn a_failing_header_only_response_transformation_becomes_a_400() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/error-headers")]);
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "200"), ("content-length", "11"), ("content-encoding", "gzip")], b"hello world");
    // Not held: the headers go on as the error, and the upstream's body is replaced as it streams.
    assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("400"));
    assert_eq!(host.header_of(Side::Response, "content-encoding"), None);
    assert_eq!(host.header_of(Side::Response, "content-type").as_deref(), Some("application/json"));
    let length: usize = host.header_of(Side::Response, "content-length").unwrap().parse().unwrap();
    // The first chunk Envoy delivers (its buffer holds just that chunk).
    *host.response_body.borrow_mut() = b"hello".to_vec();
    assert_eq!(s.on_response_body(&host, 5, false), Flow::Continue);
    let error = host.response_body.borrow().clone();
    assert_eq!(error.len(), length);
    let body: Value = serde_json::from_slice(&error).unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("bad request: header :status"), "{body}");
    // The rest of the upstream's body is dropped.
    *host.response_body.borrow_mut() = b"more".to_vec();
    assert_eq!(s.on_response_body(&host, 4, true), Flow::Continue);
    assert!(host.response_body.borrow().is_empty());
    assert_eq!(metric("response_errors"), 1);

    // A response without a body cannot get one: the status says it.
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/error-headers")]);
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "204")], b"");
    assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("400"));
    assert_eq!(host.header_of(Side::Response, "content-length").as_deref(), Some("0"));
}

#[test]
fn a_failing_response_body_transformation_replaces_the_response() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/error-body")]);
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "200"), ("content-length", "2")], b"{}");
    assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_response_body(&host, 2, true), Flow::Continue);
    // As Gloo: a failed response transformation is a 400 `bad request: <reason>`.
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("400"));
    let error = host.response_body.borrow().clone();
    assert_eq!(host.header_of(Side::Response, "content-length"), Some(error.len().to_string()));
    let body: Value = serde_json::from_slice(&error).unwrap();
    assert!(body["error"].as_str().unwrap().contains("not found"), "{body}");
    assert!(host.replies.borrow().is_empty(), "a response error is the response, not a local reply");
}

#[test]
fn a_response_over_the_limit_becomes_a_413() {
    // Declared.
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/response")]);
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "200"), ("content-length", "100")], &[b'x'; 100]);
    assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("413"));
    assert_eq!(s.on_response_body(&host, 100, true), Flow::Continue);
    let error: Value = serde_json::from_slice(&host.response_body.borrow()).unwrap();
    assert_eq!(error, json!({"error": "body larger than the limit of 64 bytes", "filter": "transformation"}));

    // Buffered: what is buffered becomes the error, the rest is dropped.
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/response")]);
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "200")], &[b'x'; 65]);
    assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_response_body(&host, 65, false), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("413"));
    let error = host.response_body.borrow().clone();
    assert_eq!(host.header_of(Side::Response, "content-length"), Some(error.len().to_string()));
    *host.response_body.borrow_mut() = vec![b'y'; 35];
    assert_eq!(s.on_response_body(&host, 35, true), Flow::Continue);
    assert!(host.response_body.borrow().is_empty());
    assert_eq!(metric("body_too_large"), 2);
}

#[test]
fn a_switching_protocols_answer_is_not_held() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/response"), ("upgrade", "websocket")]);
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    host.set_response(&[(":status", "101"), ("upgrade", "websocket")], b"");
    // The body template has no body to read: `message` is undefined, the response becomes the error at once.
    assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("400"));
}

#[test]
fn unchanged_bodies_keep_their_framing() {
    let mut s = stream();
    let host = post("/no-change", &[("transfer-encoding", "chunked")], b"abc");
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(host.header_of(Side::Request, "x-a").as_deref(), Some("a"));
    assert_eq!(host.header_of(Side::Request, "transfer-encoding").as_deref(), Some("chunked"));
}

#[test]
fn the_filters_own_reply_is_not_transformed() {
    let mut s = stream();
    let host = post("/own-reply", &[], b"not json");
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    let reply = reply(s.on_request_body(&host, 8, true));
    assert_eq!(reply.status, 400);
    // Envoy sends the local reply through the filter's response callbacks: they leave it alone.
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    host.set_response(&[&[(":status", "400")], headers.as_slice()].concat(), &reply.body);
    assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
    assert_eq!(s.on_response_body(&host, reply.body.len(), true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, "x-wrapped"), None);
    assert_eq!(*host.response_body.borrow(), reply.body);

    // An upstream's answer on the same rule is transformed (the camelCase config works).
    let mut s = stream();
    let host = post("/own-reply", &[], br#"{"name": "Ann"}"#);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 15, true), Flow::Continue);
    assert_eq!(request_body(&host), b"Ann");
    host.set_response(&[(":status", "200")], b"{}");
    assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_response_body(&host, 2, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, "x-wrapped").as_deref(), Some("yes"));
}

#[test]
fn an_emptied_body_has_no_content_type_and_a_zero_length() {
    let mut s = stream();
    let host = post("/empty", &[("content-type", "text/plain"), ("transfer-encoding", "chunked")], b"abc");
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 3, true), Flow::Continue);
    assert!(request_body(&host).is_empty());
    assert_eq!(host.header_of(Side::Request, "content-type"), None);
    assert_eq!(host.header_of(Side::Request, "content-length").as_deref(), Some("0"));
    assert_eq!(host.header_of(Side::Request, "transfer-encoding"), None);

    host.set_response(&[(":status", "200"), ("content-type", "application/json")], b"{}");
    assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_response_body(&host, 2, true), Flow::Continue);
    assert!(host.response_body.borrow().is_empty());
    assert_eq!(host.header_of(Side::Response, "content-type"), None);
    assert_eq!(host.header_of(Side::Response, "content-length").as_deref(), Some("0"));

    // A response whose headers end the stream: the headers say the same.
    let mut s = stream();
    let host = post("/empty", &[], b"");
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "200"), ("content-type", "text/plain")], b"");
    assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, "content-type"), None);
    assert_eq!(host.header_of(Side::Response, "content-length").as_deref(), Some("0"));
}

#[test]
fn rendered_pseudo_headers_are_checked_and_the_path_normalised() {
    let rewrite = |path: &str, authority: &str| {
        let mut s = stream();
        let host = FakeHost::with_request(&[
            (":method", "GET"),
            (":path", "/rewrite"),
            (":authority", "in"),
            ("x-path", path),
            ("x-host", authority),
        ]);
        let flow = s.on_request_headers(&host, true);
        (flow, host)
    };
    let (flow, host) = rewrite("/api/../../admin/./x?q=/../", "example.com:8080");
    assert_eq!(flow, Flow::Continue);
    assert_eq!(host.header_of(Side::Request, ":path").as_deref(), Some("/admin/x?q=/../"));
    assert_eq!(host.header_of(Side::Request, ":authority").as_deref(), Some("example.com:8080"));
    for (path, authority, reason) in [
        ("/api/a HTTP/1.0 x", "h", "whitespace"),
        ("/a\tb", "h", "whitespace"),
        ("/a", "h h", "not host[:port]"),
        ("/a", "user@h", "not host[:port]"),
    ] {
        let (flow, host) = rewrite(path, authority);
        let error = error_of(&reply(flow));
        assert!(error.contains(reason), "{path:?} {authority:?}: {error}");
        assert_eq!(host.header_of(Side::Request, ":path").as_deref(), Some("/rewrite"), "nothing changed");
    }
}

#[test]
fn metadata_functions_read_envoy_metadata() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/metadata")]);
    let cluster = json!({"io.solo.transformation": {"a": {"b": "nested"}}});
    let dynamic = json!({"ns": {"k": 7}});
    host.properties.borrow_mut().insert("xds.cluster_metadata".into(), crate::metadata::tests::encode(&cluster));
    host.properties.borrow_mut().insert("metadata".into(), crate::metadata::tests::encode(&dynamic));
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Request, "x-c").as_deref(), Some("nested"));
    assert_eq!(host.header_of(Side::Request, "x-d").as_deref(), Some("7.0"));
    // No upstream host in a request filter: null, printed as nothing.
    assert_eq!(host.header_of(Side::Request, "x-h").as_deref(), Some("[]"));
}

#[test]
fn a_response_no_transformation_can_apply_to_costs_no_host_call() {
    let mut s = stream();
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/headers")]);
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "200")], b"");
    host.calls.borrow_mut().clear();
    assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
    assert_eq!(*host.calls.borrow(), Vec::<&str>::new());
}

#[test]
fn the_route_is_selected_again_only_where_clear_route_cache_asks() {
    let config = r#"{"transformations": [
      {"match": {"prefix": "/clear"}, "route_transformations": {"clear_route_cache": true,
         "request_transformation": {"transformation_template": {"headers": {":path": {"text": "/v2"}}}}}},
      {"match": {"prefix": "/matched"}, "route_transformations": {"transformations": [{"request_match": {
         "clearRouteCache": true, "request_transformation": {"transformation_template": {"body": {"text": "{{ a }}"}}}}}]}},
      {"match": {"prefix": "/keep"}, "route_transformations": {
         "request_transformation": {"transformation_template": {"headers": {":path": {"text": "/v2"}}}}}}
    ]}"#;
    let filter = filter(config);
    let cleared = |path: &str| {
        let host = post(path, &[], br#"{"a": "b"}"#);
        let mut s = TransformationFilter::stream(Rc::clone(&filter));
        if s.on_request_headers(&host, false) == Flow::Buffer {
            assert_eq!(s.on_request_body(&host, 10, true), Flow::Continue);
            assert_eq!(*host.request_body.borrow(), b"b");
        }
        let calls = host.calls.borrow();
        // After the transformation's changes, never before them.
        let last_change = calls.iter().rposition(|c| c.ends_with("_header") || *c == "set_body");
        match calls.iter().position(|c| *c == "clear_route_cache") {
            Some(at) => {
                assert!(last_change.is_some_and(|last| last < at), "{calls:?}");
                true
            }
            None => false,
        }
    };
    assert!(cleared("/clear"));
    assert!(cleared("/matched"), "after the body's transformation");
    assert!(!cleared("/keep"));
}
