//! The stream end to end against `FakeHost`: local decisions, the global service's answers and failures, shared
//! data failures and the tick. Rule names differ per test: metrics live in a per-thread registry.

use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use shared::host::{FakeHost, Filter, GrpcResponse, Stream};
use shared::metrics::{test_value, Scope};
use shared::reply::grpc as grpc_status;
use shared::store::SharedStore;
use shared::{Flow, HostError, LocalReply, Side};

use super::{details, RatelimitFilter, RatelimitStream};
use crate::rls;

const SECOND: Duration = Duration::from_secs(1);

fn configure(host: &FakeHost, config: Value) -> Rc<RatelimitFilter> {
    Rc::new(RatelimitFilter::configure(host, config.to_string().as_bytes(), None).unwrap())
}

/// A host at a nonzero monotonic time holding a GET with these extra headers, from 10.0.0.7.
fn host() -> FakeHost {
    let host = FakeHost::with_request(&[]);
    host.monotonic.set(1_000 * 1_000_000_000);
    host.set_property("source.address", "10.0.0.7:5555");
    host.set_property("plugin_name", "edge");
    host
}

/// Replaces the request the host holds (a new request on the same worker: same shared data).
fn set_request(host: &FakeHost, extra: &[(&str, &str)]) {
    let mut headers = vec![(":method", "GET"), (":path", "/api/items"), (":authority", "example.com")];
    headers.extend_from_slice(extra);
    *host.request_headers.borrow_mut() = headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
    host.response_headers.borrow_mut().clear();
}

/// Runs one request's headers through a new stream.
fn request(filter: &Rc<RatelimitFilter>, host: &FakeHost, extra: &[(&str, &str)]) -> (RatelimitStream, Flow) {
    set_request(host, extra);
    let mut stream = RatelimitFilter::stream(Rc::clone(filter));
    let flow = stream.on_request_headers(host, true);
    (stream, flow)
}

/// A rule's counter of the plugin `host()` names.
fn metric(rule: &str, event: &str) -> u64 {
    test_value(&Scope::new("ratelimit", "edge").rule_name(rule, event)).unwrap_or(0)
}

fn replied(flow: Flow) -> LocalReply {
    match flow {
        Flow::Reply(reply) => reply,
        other => panic!("expected a local reply, got {other:?}"),
    }
}

fn header<'r>(reply: &'r LocalReply, name: &str) -> Option<&'r str> {
    reply.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn allowed_requests_continue_and_get_the_figures_on_the_response() {
    let host = host();
    let filter = configure(
        &host,
        json!({"rules": [{"name": "allow", "key": [{"header": "x-api-key"}],
                          "limits": [{"requests": 2, "per": "10s"}]}],
               "response": {"headers": true}}),
    );
    assert_eq!(host.tick_period.get(), Some(Duration::from_secs(10)), "cleanup_interval's default");
    let (mut stream, flow) = request(&filter, &host, &[("x-api-key", "a")]);
    assert_eq!(flow, Flow::Continue);
    assert!(host.replies.borrow().is_empty());
    host.set_response(&[(":status", "200")], b"");
    assert_eq!(stream.on_response_headers(&host, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-reset").as_deref(), Some("5"));
    assert_eq!(host.header_of(Side::Response, "retry-after"), None);
    assert_eq!(metric("allow", "allowed"), 1);
    // Buckets are named after the plugin, and the VM reserved the creation CAS before making one.
    let slots = host.store.get("ratelimit:edge:slots").unwrap();
    assert_eq!(slots.0, Some(1u64.to_le_bytes().to_vec()));
    assert_eq!(host.store.get("ratelimit:cas-reserve").unwrap().1, Some(1));
}

#[test]
fn where_single_reads_are_cheap_a_decision_reads_only_the_headers_its_rules_need() {
    let host = host();
    host.cheap_single_header_reads.set(true);
    let filter = configure(
        &host,
        json!({"rules": [{"name": "by-name", "key": [{"header": "x-api-key"}], "limits": [{"requests": 1, "per": "1m"}]}]}),
    );
    host.calls.borrow_mut().clear();
    // Two values of the key header are one key, their values joined, as when the whole map is read.
    let (_, flow) = request(&filter, &host, &[("x-api-key", "a"), ("x-api-key", "b"), ("x-other", "1")]);
    assert_eq!(flow, Flow::Continue);
    assert!(!host.calls.borrow().contains(&"headers"), "{:?}", host.calls.borrow());
    assert_eq!(host.calls.borrow().iter().filter(|c| **c == "header_joined_text").count(), 1);
    host.cheap_single_header_reads.set(false);
    let (_, flow) = request(&filter, &host, &[("x-api-key", "a,b")]);
    assert_eq!(replied(flow).status, 429, "the same bucket");
    assert_eq!(metric("by-name", "limited"), 1);
}

#[test]
fn without_response_headers_configured_nothing_is_added() {
    let host = host();
    let filter = configure(&host, json!({"rules": [{"name": "quiet", "limits": [{"requests": 5, "per": "1s"}]}]}));
    let (mut stream, flow) = request(&filter, &host, &[]);
    assert_eq!(flow, Flow::Continue);
    host.set_response(&[(":status", "200")], b"");
    stream.on_response_headers(&host, true);
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-limit"), None);
}

#[test]
fn a_limited_request_gets_the_configured_reply_with_details_and_headers() {
    let host = host();
    let filter = configure(
        &host,
        json!({"rules": [{"name": "limited", "limits": [{"requests": 2, "per": "10s"}]}],
               "response": {"status": 429, "body": "slow down"}}),
    );
    for _ in 0..2 {
        assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    }
    let reply = replied(request(&filter, &host, &[]).1);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, details::LIMITED);
    assert_eq!(reply.details, "ratelimit_limited");
    assert_eq!(reply.grpc_status, None);
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.body).unwrap(),
        json!({"error": "slow down", "filter": "ratelimit"})
    );
    assert_eq!(header(&reply, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header(&reply, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&reply, "x-ratelimit-reset"), Some("10"));
    assert_eq!(header(&reply, "retry-after"), Some("5"));
    assert_eq!((metric("limited", "allowed"), metric("limited", "limited")), (2, 1));
    // Five seconds later one more is earned.
    host.advance(5 * SECOND);
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    // A gRPC client gets RESOURCE_EXHAUSTED instead of a JSON body.
    let reply = replied(request(&filter, &host, &[("content-type", "application/grpc")]).1);
    assert_eq!(reply.grpc_status, Some(grpc_status::RESOURCE_EXHAUSTED));
    assert_eq!(reply.details, details::LIMITED);
}

#[test]
fn shadow_rules_count_but_let_the_request_pass() {
    let host = host();
    let filter = configure(
        &host,
        json!({"rules": [{"name": "shadow", "shadow": true, "limits": [{"requests": 1, "per": "10s"}]}]}),
    );
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    assert_eq!(metric("shadow", "shadow_limited"), 1);
    assert!(host.replies.borrow().is_empty());
}

#[test]
fn a_missing_key_part_is_skipped_or_denied_as_configured() {
    let rule = json!({"name": "missing", "key": [{"header": "x-api-key"}], "limits": [{"requests": 1, "per": "10s"}]});
    let host = host();
    let filter = configure(&host, json!({"rules": [rule]}));
    for _ in 0..3 {
        assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    }
    assert_eq!(metric("missing", "missing_key"), 3);
    assert_eq!(metric("missing", "allowed"), 0);
    let filter = configure(&host, json!({"rules": [rule], "on_missing_key": "deny"}));
    let reply = replied(request(&filter, &host, &[]).1);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, "ratelimit_missing_key");
    // With the key the rule applies as usual.
    assert_eq!(request(&filter, &host, &[("x-api-key", "k")]).1, Flow::Continue);
    assert_eq!(reply_details(request(&filter, &host, &[("x-api-key", "k")]).1), details::LIMITED);
}

fn reply_details(flow: Flow) -> String {
    replied(flow).details
}

#[test]
fn client_ip_keys_come_from_the_peer_address_not_headers() {
    let host = host();
    let filter = configure(
        &host,
        json!({"rules": [{"name": "ip", "key": ["client_ip"],
                                                   "limits": [{"requests": 1, "per": "10s"}]}]}),
    );
    assert_eq!(request(&filter, &host, &[("x-forwarded-for", "1.1.1.1")]).1, Flow::Continue);
    // Another x-forwarded-for, same peer: the same bucket.
    assert!(matches!(request(&filter, &host, &[("x-forwarded-for", "2.2.2.2")]).1, Flow::Reply(_)));
    host.set_property("source.address", "10.0.0.8:1");
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    // A host that cannot give the address: the key part is missing (skipped), not a crash.
    host.fail("property", HostError::InternalFailure);
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    assert_eq!(metric("ip", "missing_key"), 1);
}

fn global_config(on_error: &str) -> Value {
    json!({"rules": [{"name": "global-{on_error}", "global": true, "key": [{"header": "x-api-key"}, "client_ip"]},
                     {"name": "local-{on_error}", "limits": [{"requests": 100, "per": "1s"}]}],
           "global": {"cluster": "rls", "domain": "edge", "timeout": "50ms", "on_error": on_error},
           "response": {"headers": true}})
}

fn fix_names(config: Value, on_error: &str) -> Value {
    serde_json::from_str(&config.to_string().replace("{on_error}", on_error)).unwrap()
}

/// Starts a request that goes to the global service; returns the stream and the call's token.
fn global_request(filter: &Rc<RatelimitFilter>, host: &FakeHost) -> (RatelimitStream, u32) {
    let (stream, flow) = request(filter, host, &[("x-api-key", "k1")]);
    assert_eq!(flow, Flow::Pause);
    let call = host.grpc_calls.borrow().last().cloned().unwrap();
    (stream, call.token)
}

fn answer(code: rls::Code, headers: &[(&str, &str)], request_headers: &[(&str, &str)]) -> GrpcResponse {
    let pairs = |list: &[(&str, &str)]| {
        list.iter().map(|(k, v)| rls::HeaderValue { key: k.to_string(), value: v.to_string() }).collect()
    };
    let response = rls::RateLimitResponse {
        overall_code: code as i32,
        statuses: vec![rls::DescriptorStatus { code: code as i32, limit_remaining: 0, ..Default::default() }],
        response_headers_to_add: pairs(headers),
        request_headers_to_add: pairs(request_headers),
    };
    GrpcResponse { status: 0, message: response.encode_to_vec() }
}

#[test]
fn the_global_service_is_asked_with_the_rules_descriptors() {
    let host = host();
    let filter = configure(&host, fix_names(global_config("allow"), "allow"));
    let (mut stream, token) = global_request(&filter, &host);
    let call = host.grpc_calls.borrow().last().cloned().unwrap();
    assert_eq!(call.cluster, "rls");
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    assert_eq!(call.timeout, Duration::from_millis(50));
    let sent = rls::RateLimitRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(sent.domain, "edge");
    assert_eq!(sent.hits_addend, 1);
    assert_eq!(sent.descriptors.len(), 1, "only the global rule");
    let entries: Vec<_> = sent.descriptors[0].entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(entries, [("x-api-key", "k1"), ("remote_address", "10.0.0.7")], "Envoy's remote_address by default");
    // OK: the request goes on with the service's request headers; its response headers and the local figures
    // go on the response.
    let flow = stream.on_grpc_call_response(&host, token, answer(rls::Code::Ok, &[("x-rl", "7")], &[("x-up", "1")]));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(host.header_of(Side::Request, "x-up").as_deref(), Some("1"));
    host.set_response(&[(":status", "200")], b"");
    stream.on_response_headers(&host, false);
    assert_eq!(host.header_of(Side::Response, "x-rl").as_deref(), Some("7"));
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(metric("global-allow", "allowed"), 1);
    assert_eq!(metric("local-allow", "allowed"), 1);
}

/// An answer whose one status carries the service's limit (`requests` per minute), remaining and reset.
fn answer_with_status(code: rls::Code, requests: u32, remaining: u32, reset_secs: i64) -> GrpcResponse {
    let response = rls::RateLimitResponse {
        overall_code: code as i32,
        statuses: vec![rls::DescriptorStatus {
            code: code as i32,
            current_limit: Some(rls::CurrentLimit { requests_per_unit: requests, unit: 2, ..Default::default() }),
            limit_remaining: remaining,
            duration_until_reset: Some(rls::ProtoDuration { seconds: reset_secs, nanos: 0 }),
        }],
        response_headers_to_add: vec![rls::HeaderValue { key: "x-rl".into(), value: "1".into() }],
        request_headers_to_add: vec![],
    };
    GrpcResponse { status: 0, message: response.encode_to_vec() }
}

#[test]
fn descriptor_keys_and_hits_addend_reach_the_service() {
    let host = host();
    let filter = configure(
        &host,
        json!({"rules": [{"name": "keys", "global": true, "hits_addend": {"header": "x-cost"},
                          "key": [{"header": "x-api-key", "descriptor_key": "api_key"}, "client_ip",
                                  {"literal": "v1"}]}],
               "global": {"cluster": "rls", "domain": "edge"}}),
    );
    let (_, flow) = request(&filter, &host, &[("x-api-key", "k1"), ("x-cost", "25")]);
    assert_eq!(flow, Flow::Pause);
    let sent = rls::RateLimitRequest::decode(host.grpc_calls.borrow().last().unwrap().message.as_slice()).unwrap();
    let entries: Vec<_> = sent.descriptors[0].entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(entries, [("api_key", "k1"), ("remote_address", "10.0.0.7"), ("generic_key", "v1")]);
    assert_eq!(sent.hits_addend, 25);
    assert_eq!(sent.descriptors[0].hits_addend, Some(rls::UInt64Value { value: 25 }));
    // A fixed number.
    let fixed = configure(
        &host,
        json!({"rules": [{"name": "fixed", "global": true, "hits_addend": 3, "key": [{"header": "x-api-key"}]}],
               "global": {"cluster": "rls", "domain": "edge"}}),
    );
    assert_eq!(request(&fixed, &host, &[("x-api-key", "k1")]).1, Flow::Pause);
    let sent = rls::RateLimitRequest::decode(host.grpc_calls.borrow().last().unwrap().message.as_slice()).unwrap();
    assert_eq!(sent.hits_addend, 3);
    // A bad header value is answered 400 without asking the service.
    let calls = host.grpc_calls.borrow().len();
    let reply = replied(request(&filter, &host, &[("x-api-key", "k1"), ("x-cost", "many")]).1);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.details, details::BAD_REQUEST);
    assert_eq!(reply.details, "ratelimit_bad_request");
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("invalid x-cost header"), "{body}");
    assert_eq!(host.grpc_calls.borrow().len(), calls);
    assert_eq!(metric("keys", "allowed"), 0);
}

#[test]
fn global_decisions_carry_the_services_figures() {
    let host = host();
    let config = |name: &str, headers: bool| {
        json!({"rules": [{"name": name, "global": true, "key": [{"header": "x-api-key"}]},
                         {"name": format!("{name}-local"), "limits": [{"requests": 100, "per": "1s"}]}],
               "global": {"cluster": "rls", "domain": "edge"}, "response": {"headers": headers}})
    };
    // OVER_LIMIT: the service's figures, retry-after from its reset, and its headers, even without
    // response.headers.
    let filter = configure(&host, config("fig-over", false));
    let (mut stream, token) = global_request(&filter, &host);
    let reply = replied(stream.on_grpc_call_response(&host, token, answer_with_status(rls::Code::OverLimit, 5, 0, 42)));
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply, "x-ratelimit-limit"), Some("5, 5;w=60"));
    assert_eq!(header(&reply, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&reply, "x-ratelimit-reset"), Some("42"));
    assert_eq!(header(&reply, "retry-after"), Some("42"));
    assert_eq!(header(&reply, "x-rl"), Some("1"));
    // OK with response.headers: the service's figures replace the local ones when fewer remain.
    let filter = configure(&host, config("fig-ok", true));
    let (mut stream, token) = global_request(&filter, &host);
    assert_eq!(stream.on_grpc_call_response(&host, token, answer_with_status(rls::Code::Ok, 5, 3, 30)), Flow::Continue);
    host.set_response(&[(":status", "200")], b"");
    stream.on_response_headers(&host, false);
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-limit").as_deref(), Some("5, 5;w=60"));
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-remaining").as_deref(), Some("3"));
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-reset").as_deref(), Some("30"));
    assert_eq!(host.response_headers.borrow().iter().filter(|(n, _)| n == "x-ratelimit-limit").count(), 1);
    // ... and stay local when the local limit is the tighter one.
    let (mut stream, token) = global_request(&filter, &host);
    let roomy = answer_with_status(rls::Code::Ok, 1000, 999, 30);
    assert_eq!(stream.on_grpc_call_response(&host, token, roomy), Flow::Continue);
    host.set_response(&[(":status", "200")], b"");
    stream.on_response_headers(&host, false);
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-limit").as_deref(), Some("100"));
    // OK without response.headers: nothing added but the service's own headers.
    let filter = configure(&host, config("fig-quiet", false));
    let (mut stream, token) = global_request(&filter, &host);
    assert_eq!(stream.on_grpc_call_response(&host, token, answer_with_status(rls::Code::Ok, 5, 3, 30)), Flow::Continue);
    host.set_response(&[(":status", "200")], b"");
    stream.on_response_headers(&host, false);
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-limit"), None);
    assert_eq!(host.header_of(Side::Response, "x-rl").as_deref(), Some("1"));
}

#[test]
fn over_limit_from_the_global_service_is_a_429() {
    let host = host();
    let filter = configure(&host, fix_names(global_config("allow"), "over"));
    let (mut stream, token) = global_request(&filter, &host);
    let flow = stream.on_grpc_call_response(&host, token, answer(rls::Code::OverLimit, &[("x-rl", "0")], &[]));
    let reply = replied(flow);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, details::LIMITED);
    assert_eq!(header(&reply, "x-rl"), Some("0"));
    assert_eq!(metric("global-over", "limited"), 1);
    assert_eq!(metric("global-over", "allowed"), 0);
}

#[test]
fn service_errors_follow_on_error() {
    // Unavailable, deadline exceeded (Envoy's timeout of the call), and an OK status with an undecodable answer.
    let failures = [
        GrpcResponse { status: grpc_status::UNAVAILABLE, message: Vec::new() },
        GrpcResponse { status: grpc_status::DEADLINE_EXCEEDED, message: Vec::new() },
        GrpcResponse { status: 0, message: b"\xff\xff".to_vec() },
    ];
    let host = host();
    let allow = configure(&host, fix_names(global_config("allow"), "err-allow"));
    let deny = configure(&host, fix_names(global_config("deny"), "err-deny"));
    for failure in failures {
        let (mut stream, token) = global_request(&allow, &host);
        assert_eq!(stream.on_grpc_call_response(&host, token, failure.clone()), Flow::Continue);
        let (mut stream, token) = global_request(&deny, &host);
        let reply = replied(stream.on_grpc_call_response(&host, token, failure));
        assert_eq!(reply.status, 500);
        assert_eq!(reply.details, details::SERVICE_ERROR);
        assert!(reply.details.starts_with("ratelimit_"));
    }
    assert_eq!(metric("global-err-allow", "global_errors"), 3);
    assert_eq!(metric("global-err-deny", "global_errors"), 3);
    // An answer to another call is not this one's.
    let (mut stream, token) = global_request(&deny, &host);
    assert_eq!(stream.on_grpc_call_response(&host, token + 100, answer(rls::Code::Ok, &[], &[])), Flow::Pause);
    assert_eq!(stream.on_grpc_call_response(&host, token, answer(rls::Code::Ok, &[], &[])), Flow::Continue);
}

#[test]
fn a_grpc_client_denied_by_a_failing_service_gets_a_grpc_status() {
    let host = host();
    let deny = configure(&host, fix_names(global_config("deny"), "grpc-deny"));
    let (mut stream, flow) = request(&deny, &host, &[("x-api-key", "k1"), ("content-type", "application/grpc")]);
    assert_eq!(flow, Flow::Pause);
    let token = host.grpc_calls.borrow().last().unwrap().token;
    let reply = replied(stream.on_grpc_call_response(&host, token, GrpcResponse { status: 14, message: vec![] }));
    assert_eq!(reply.grpc_status, Some(grpc_status::INTERNAL));
    assert_eq!(reply.details, details::SERVICE_ERROR);
}

#[test]
fn a_call_the_host_refuses_follows_on_error() {
    let host = host();
    host.fail("grpc_call", HostError::BadArgument);
    let allow = configure(&host, fix_names(global_config("allow"), "refused-allow"));
    assert_eq!(request(&allow, &host, &[("x-api-key", "k1")]).1, Flow::Continue);
    let deny = configure(&host, fix_names(global_config("deny"), "refused-deny"));
    let reply = replied(request(&deny, &host, &[("x-api-key", "k1")]).1);
    assert_eq!(reply.status, 500);
    assert_eq!(reply.details, details::SERVICE_ERROR);
    assert!(host.grpc_calls.borrow().is_empty());
    assert_eq!(metric("global-refused-allow", "global_errors"), 1);
    assert_eq!(metric("global-refused-deny", "global_errors"), 1);
}

#[test]
fn a_request_without_global_descriptors_does_not_call_the_service() {
    let host = host();
    let config = fix_names(global_config("allow"), "nokey");
    let filter = configure(&host, config);
    // No x-api-key: the global rule is skipped (on_missing_key: skip), only the local one applies.
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    assert!(host.grpc_calls.borrow().is_empty());
}

#[test]
fn shared_data_failures_admit_count_and_recover() {
    let host = host();
    let filter = configure(&host, json!({"rules": [{"name": "store", "limits": [{"requests": 1, "per": "60s"}]}]}));
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    assert!(matches!(request(&filter, &host, &[]).1, Flow::Reply(_)));
    // Reads fail: the request is admitted (fail open), counted, and the failure is kept for the tick's log.
    host.fail("shared_get", HostError::InternalFailure);
    assert_eq!(request(&filter, &host, &[]).1, Flow::Continue);
    assert_eq!(metric("store", "store_errors"), 1);
    assert_eq!(filter.pending.store_errors.get(), 1);
    // Writes fail (a new key): the same.
    host.failures.borrow_mut().clear();
    let other =
        json!({"rules": [{"name": "store2", "key": [{"header": "k"}], "limits": [{"requests": 1, "per": "60s"}]}]});
    let filter2 = configure(&host, other);
    host.fail("shared_set", HostError::InternalFailure);
    assert_eq!(request(&filter2, &host, &[("k", "new")]).1, Flow::Continue);
    assert_eq!(metric("store2", "store_errors"), 1);
    // The tick logs and resets the count; once the store works, limits apply again.
    filter.on_tick(&host);
    assert_eq!(filter.pending.store_errors.get(), 0);
    host.failures.borrow_mut().clear();
    assert!(matches!(request(&filter, &host, &[]).1, Flow::Reply(_)));
}

#[test]
fn a_configuration_without_shared_data_is_refused() {
    let host = host();
    host.fail("shared_get", HostError::InternalFailure);
    let err = RatelimitFilter::configure(
        &host,
        json!({"rules": [{"name": "x", "limits": [{"requests": 1, "per": "1s"}]}]}).to_string().as_bytes(),
        None,
    )
    .err()
    .unwrap();
    assert!(err.contains("shared data unavailable"), "{err}");
    let err = RatelimitFilter::configure(&host, br#"{"rules": []}"#, None).err().unwrap();
    assert!(err.contains("rules"), "{err}");
}

#[test]
fn the_tick_reports_the_slots_and_a_full_table_fails_open() {
    let host = host();
    let filter = configure(
        &host,
        json!({"rules": [{"name": "tick", "key": [{"header": "x-api-key"}],
                          "limits": [{"requests": 1, "per": "1s"}]}], "max_keys": 2}),
    );
    assert_eq!(test_value("ratelimit.plugin=.=edge;.;max_slots"), Some(2));
    for key in ["a", "b", "c"] {
        assert_eq!(request(&filter, &host, &[("x-api-key", key)]).1, Flow::Continue);
    }
    assert_eq!(filter.pending.overflows.get(), 1, "the third key found both slots live");
    assert_eq!(test_value("ratelimit.plugin=.=edge;.;key_overflow"), Some(1));
    filter.on_tick(&host);
    assert_eq!(test_value("ratelimit.plugin=.=edge;.;slots"), Some(2));
    assert_eq!(filter.pending.overflows.get(), 0, "logged once for the tick");
    // Once idle, the buckets give their slots to new keys: no sweep, and no new shared-data entry.
    host.advance(2 * SECOND);
    let entries = host.store.len_keys();
    for key in ["d", "e"] {
        assert_eq!(request(&filter, &host, &[("x-api-key", key)]).1, Flow::Continue);
        assert!(replied_or_none(request(&filter, &host, &[("x-api-key", key)]).1), "{key} has a bucket");
    }
    assert_eq!(host.store.len_keys(), entries);
    filter.on_tick(&host);
    assert_eq!(test_value("ratelimit.plugin=.=edge;.;slots"), Some(2));
    // A slot count that cannot be read leaves the gauge as it was.
    host.fail("shared_get", HostError::InternalFailure);
    filter.on_tick(&host);
    assert_eq!(test_value("ratelimit.plugin=.=edge;.;slots"), Some(2));
}

/// Whether the flow is a local reply (the request was limited).
fn replied_or_none(flow: Flow) -> bool {
    matches!(flow, Flow::Reply(_))
}

#[test]
fn a_reload_keeps_unchanged_rules_counting_and_starts_changed_ones_fresh() {
    let host = host();
    let rules = |per: &str| {
        json!({"rules": [
            {"name": "kept", "key": [{"header": "x-api-key"}], "limits": [{"requests": 2, "per": "60s"}]},
            {"name": "changed", "match": {"prefix": "/other"}, "limits": [{"requests": 1, "per": per}]}
        ]})
    };
    let old = configure(&host, rules("60s"));
    for _ in 0..2 {
        assert_eq!(request(&old, &host, &[("x-api-key", "a")]).1, Flow::Continue);
    }
    let entries = host.store.len_keys();
    // Several reloads (new configurations in the same VM, as LDS does): the client cannot reset its bucket.
    for reload in 0..3 {
        let new = Rc::new(RatelimitFilter::configure(&host, rules("60s").to_string().as_bytes(), Some(&old)).unwrap());
        assert!(replied_or_none(request(&new, &host, &[("x-api-key", "a")]).1));
        let fresh = format!("new-{reload}");
        assert_eq!(request(&new, &host, &[("x-api-key", &fresh)]).1, Flow::Continue);
        assert_eq!(request(&new, &host, &[("x-api-key", &fresh)]).1, Flow::Continue);
        assert!(replied_or_none(request(&new, &host, &[("x-api-key", &fresh)]).1), "new keys are limited");
    }
    assert!(host.store.len_keys() <= entries + 3, "at most one slot per new key, nothing else");
    // A rule whose limits changed starts fresh.
    *host.request_headers.borrow_mut() =
        vec![(":path".into(), b"/other".to_vec()), (":method".into(), b"GET".to_vec())];
    let mut stream = RatelimitFilter::stream(Rc::clone(&old));
    assert_eq!(stream.on_request_headers(&host, true), Flow::Continue);
    let mut stream = RatelimitFilter::stream(Rc::clone(&old));
    assert!(replied_or_none(stream.on_request_headers(&host, true)));
    let changed = configure(&host, rules("30s"));
    let mut stream = RatelimitFilter::stream(Rc::clone(&changed));
    assert_eq!(stream.on_request_headers(&host, true), Flow::Continue);
}

#[test]
fn response_header_failures_are_not_fatal() {
    let host = host();
    let filter = configure(
        &host,
        json!({"rules": [{"name": "hdr", "limits": [{"requests": 3, "per": "1s"}]}], "response": {"headers": true}}),
    );
    let (mut stream, _) = request(&filter, &host, &[]);
    host.fail("add_header", HostError::BadArgument);
    assert_eq!(stream.on_response_headers(&host, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, "x-ratelimit-limit"), None);
}
