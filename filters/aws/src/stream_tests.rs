//! The stream driven end to end against `FakeHost`: what Envoy would forward, reply or hold at each callback.

use super::*;
use crate::sigv4;
use shared::host::FakeHost;
use shared::metrics::test_value;
use shared::HostError;

const INLINE: &str = r#""credentials": {"access_key_id": "AKIDINLINE", "secret_access_key": "secret"}"#;

fn stream(host: &FakeHost, config: &str) -> AwsStream {
    let filter = AwsFilter::configure(host, config.as_bytes(), None).unwrap();
    AwsFilter::stream(Rc::new(filter))
}

fn s3(extra: &str) -> String {
    format!(r#"{{"region": "us-east-1", "service": "s3", {INLINE}{extra}}}"#)
}

fn lambda(lambda: &str) -> String {
    format!(r#"{{"region": "us-east-1", "service": "lambda", {INLINE}, "lambda": {lambda}}}"#)
}

fn header(host: &FakeHost, name: &str) -> Option<String> {
    host.header_of(Side::Request, name)
}

fn metric(name: &str) -> u64 {
    // No plugin_name on the fake host: the plugin is named after the filter.
    test_value(&format!("aws.plugin=.=aws;.;{name}")).unwrap_or(0)
}

fn reply_of(flow: Flow) -> LocalReply {
    match flow {
        Flow::Reply(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn a_get_is_signed_in_place_and_continues() {
    let host = FakeHost::with_request(&[
        (":method", "GET"),
        (":path", "/files/k"),
        (":authority", "gw"),
        ("authorization", "AWS4-HMAC-SHA256 smuggled"),
    ]);
    let mut s = stream(&host, &s3(""));
    let signed = metric("signed");
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    let auth = header(&host, "authorization").unwrap();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDINLINE/"), "{auth}");
    assert_eq!(header(&host, "x-amz-content-sha256").unwrap(), sigv4::sha256_hex(b""));
    assert!(header(&host, "x-amz-date").is_some());
    assert_eq!(header(&host, "content-length"), None, "a bodiless request stays bodiless");
    assert_eq!(header(&host, TIMEOUT_HEADER), None, "no timeout configured: the route's applies");
    assert_eq!(metric("signed"), signed + 1);
    // Not a Lambda: the answer streams back untouched.
    host.set_response(&[(":status", "503")], b"");
    assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
    assert!(host.replies.borrow().is_empty());
}

#[test]
fn a_signed_put_is_held_until_its_body_is_complete() {
    let host = FakeHost::with_request(&[
        (":method", "PUT"),
        (":path", "/files/k"),
        (":authority", "gw"),
        ("transfer-encoding", "chunked"),
    ])
    .body(b"hello world");
    let mut s = stream(&host, &s3(r#", "timeout": "2s""#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(header(&host, "authorization"), None, "nothing signed before the body is there");
    assert_eq!(s.on_request_body(&host, 5, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 11, true), Flow::Continue);
    let reads = host.calls.borrow().iter().filter(|call| **call == "headers").count();
    assert_eq!(reads, 1, "the held headers are read once");
    assert_eq!(header(&host, "x-amz-content-sha256").unwrap(), sigv4::sha256_hex(b"hello world"));
    assert_eq!(header(&host, "content-length").as_deref(), Some("11"));
    assert_eq!(header(&host, "transfer-encoding"), None);
    assert_eq!(header(&host, TIMEOUT_HEADER).as_deref(), Some("2000"));

    assert!(header(&host, "authorization").unwrap().contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
    assert_eq!(&*host.request_body.borrow(), b"hello world", "the body goes on as it came");

    // A body framed by a right `content-length` needs neither a new length nor a `transfer-encoding` removal: the
    // host calls are the signature's headers (and the timeout's).
    let host =
        FakeHost::with_request(&[(":method", "PUT"), (":path", "/k"), (":authority", "gw"), ("content-length", "11")])
            .body(b"hello world");
    let mut s = stream(&host, &s3(r#", "timeout": "2s""#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 11, true), Flow::Continue);
    let sets = host.calls.borrow().iter().filter(|call| **call == "set_header").count();
    assert_eq!(sets, 4, "{:?}", host.calls.borrow());
    assert!(!host.calls.borrow().contains(&"remove_header"));
    assert!(header(&host, "authorization").is_some());

    // On a cluster (upstream filter) the router has chosen the timeout already: no header for AWS to see.
    let host = FakeHost::with_request(&[(":method", "PUT"), (":path", "/files/k"), (":authority", "gw")]);
    host.set_property("upstream.address", "10.0.0.1:443");
    let mut s = stream(&host, &s3(r#", "timeout": "2s""#));
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    assert_eq!(header(&host, TIMEOUT_HEADER), None);
    assert!(header(&host, "authorization").is_some());
}

#[test]
fn bodies_over_max_body_are_413_declared_or_not() {
    let host =
        FakeHost::with_request(&[(":method", "PUT"), (":path", "/k"), (":authority", "gw"), ("content-length", "100")]);
    let mut s = stream(&host, &s3(r#", "max_body": "16B""#));
    let before = metric("body_too_large");
    let reply = reply_of(s.on_request_headers(&host, false));
    assert_eq!((reply.status, reply.details.as_str()), (413, "aws_body_too_large"));

    let host = FakeHost::with_request(&[(":method", "PUT"), (":path", "/k"), (":authority", "gw")]);
    let mut s = stream(&host, &s3(r#", "max_body": "16B""#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 10, false), Flow::Buffer);
    let reply = reply_of(s.on_request_body(&host, 20, false));
    assert_eq!((reply.status, reply.details.as_str()), (413, "aws_body_too_large"));
    assert_eq!(header(&host, "authorization"), None);
    assert_eq!(metric("body_too_large"), before + 2);
}

#[test]
fn unsigned_payloads_stream_without_buffering() {
    let host = FakeHost::with_request(&[(":method", "PUT"), (":path", "/k"), (":authority", "gw")]);
    let mut s = stream(&host, &s3(r#", "payload": "unsigned""#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(header(&host, "x-amz-content-sha256").as_deref(), Some("UNSIGNED-PAYLOAD"));
    assert_eq!(s.on_request_body(&host, 10, true), Flow::Continue);
}

#[test]
fn a_non_utf8_header_is_signed_as_its_bytes_and_forwarded_unchanged() {
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/k"), (":authority", "gw")]);
    host.request_headers.borrow_mut().push(("x-name".to_string(), b"caf\xe9".to_vec()));
    let request = host.request_headers.borrow().clone();
    let mut s = stream(&host, &s3(""));
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    assert_eq!(host.header(Side::Request, "x-name").unwrap().unwrap(), b"caf\xe9", "forwarded as the same bytes");
    let auth = header(&host, "authorization").unwrap();
    assert!(auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-name,"), "{auth}");
    // The signature is the one over the raw bytes, not over the U+FFFD form.
    let config = config::parse(s3("").as_bytes()).unwrap();
    let CredentialSource::Inline(creds) = &config.credentials else { panic!("inline") };
    let hash = sigv4::sha256_hex(b"");
    let raw = signing::sign(&request, &config, creds, host.unix_secs(), &hash).unwrap();
    assert_eq!(raw.get("authorization"), Some(auth.as_str()));
    let lossy: Vec<(String, String)> =
        request.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect();
    let replaced = signing::sign(&lossy, &config, creds, host.unix_secs(), &hash).unwrap();
    assert_ne!(replaced.get("authorization"), Some(auth.as_str()));
}

#[test]
fn a_sync_lambda_invocation_is_the_request_rewritten() {
    let host = FakeHost::with_request(&[
        (":method", "PUT"),
        (":path", "/orders/7?x=1"),
        (":authority", "api.example.com"),
        ("accept", "text/html"),
        ("cookie", "session=secret"),
        ("x-request-id", "abc"),
        ("content-type", "text/plain"),
    ])
    .body(br#"{"order": 42}"#);
    let mut s = stream(&host, &lambda(r#"{"function": "orders", "qualifier": "live", "timeout": "1s"}"#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 13, true), Flow::Continue);
    assert_eq!(header(&host, ":method").as_deref(), Some("POST"));
    assert_eq!(header(&host, ":path").as_deref(), Some("/2015-03-31/functions/orders/invocations?Qualifier=live"));
    assert_eq!(header(&host, ":authority").as_deref(), Some("lambda.us-east-1.amazonaws.com"));
    assert_eq!(header(&host, "x-amz-invocation-type").as_deref(), Some("RequestResponse"));
    assert_eq!(header(&host, "content-type").as_deref(), Some("application/json"));
    assert_eq!(header(&host, "content-length").as_deref(), Some("13"));
    assert_eq!(header(&host, TIMEOUT_HEADER).as_deref(), Some("1000"));
    assert_eq!((header(&host, "accept"), header(&host, "cookie")), (None, None), "client headers dropped");
    assert_eq!(header(&host, "x-request-id").as_deref(), Some("abc"), "Envoy's own kept");
    assert_eq!(&*host.request_body.borrow(), br#"{"order": 42}"#, "raw: the body is the payload");
    let auth = header(&host, "authorization").unwrap();
    assert!(
        auth.contains("/lambda/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-invocation-type,"),
        "{auth}"
    );

    // The function's result streams back.
    let invoked = metric("lambda.invoked");
    host.set_response(&[(":status", "200"), ("content-type", "application/json")], b"{}");
    assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
    assert_eq!(s.on_response_body(&host, 2, true), Flow::Continue);
    assert_eq!(metric("lambda.invoked"), invoked + 1);
}

#[test]
fn an_invocation_leaves_headers_that_are_already_right() {
    // What a JSON client sends: its content-type and content-length are the Invoke call's already.
    let host = FakeHost::with_request(&[
        (":method", "POST"),
        (":path", "/orders"),
        (":authority", "api.example.com"),
        ("content-type", "application/json"),
        ("content-length", "13"),
        ("accept", "*/*"),
    ])
    .body(br#"{"order": 42}"#);
    let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    host.calls.borrow_mut().clear();
    assert_eq!(s.on_request_body(&host, 13, true), Flow::Continue);
    let count = |method| host.calls.borrow().iter().filter(|c| **c == method).count();
    // accept removed; :path, :authority, x-amz-invocation-type, x-amz-date and authorization set.
    assert_eq!((count("remove_header"), count("set_header")), (1, 5), "{:?}", host.calls.borrow());
    assert_eq!(header(&host, "content-type").as_deref(), Some("application/json"));
    assert_eq!(header(&host, "content-length").as_deref(), Some("13"));
    assert_eq!(header(&host, "accept"), None);
    let auth = header(&host, "authorization").unwrap();
    assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-invocation-type,"), "{auth}");
}

#[test]
fn an_async_invocation_of_a_bodiless_request() {
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
    let mut s = stream(&host, &lambda(r#"{"function": "orders", "invocation": "async"}"#));
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    assert_eq!(header(&host, ":method").as_deref(), Some("POST"));
    assert_eq!(header(&host, "x-amz-invocation-type").as_deref(), Some("Event"));
    assert_eq!(header(&host, "content-length").as_deref(), Some("0"));
    host.set_response(&[(":status", "202")], b"");
    assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("202"));
}

#[test]
fn api_gateway_events_in_and_proxy_responses_unwrapped_out() {
    let host = FakeHost::with_request(&[
        (":method", "POST"),
        (":path", "/orders/7?id=1"),
        (":authority", "api.example.com"),
        ("x-client", "yes"),
    ])
    .body(b"hi");
    let mut s = stream(&host, &lambda(r#"{"function": "orders", "format": "api_gateway"}"#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 2, true), Flow::Continue);
    let event: serde_json::Value = serde_json::from_slice(&host.request_body.borrow()).unwrap();
    assert_eq!(event["httpMethod"], "POST");
    assert_eq!(event["path"], "/orders/7");
    assert_eq!(event["headers"]["host"], "api.example.com");
    assert_eq!(event["headers"]["x-client"], "yes");
    assert_eq!(event["queryStringParameters"]["id"], "1");
    assert_eq!(event["body"], "hi");
    let length = host.request_body.borrow().len().to_string();
    assert_eq!(header(&host, "content-length"), Some(length));
    assert_eq!(header(&host, "x-client"), None);
    // The signed hash is the event's.
    let auth = header(&host, "authorization").unwrap();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDINLINE/"));

    host.set_response(
        &[(":status", "200"), ("content-type", "application/json"), ("x-amzn-requestid", "r")],
        br#"{"statusCode": 201, "headers": {"x-fn": "1"}, "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]}, "body": "created"}"#,
    );
    let size = host.response_body.borrow().len();
    assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_response_body(&host, size, true), Flow::Continue);
    let response = host.response_headers.borrow().clone();
    let text: Vec<(String, String)> =
        response.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect();
    let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
    assert_eq!(
        text,
        vec![
            pair(":status", "201"),
            pair("x-fn", "1"),
            pair("set-cookie", "a=1"),
            pair("set-cookie", "b=2"),
            pair("content-length", "7")
        ]
    );
    assert_eq!(&*host.response_body.borrow(), b"created");
}

#[test]
fn a_bodiless_api_gateway_request_gets_its_event_where_the_host_can_add_a_body_else_a_400() {
    for can_add in [true, false] {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x?id=1"), (":authority", "gw")]);
        host.can_add_body_to_bodiless.set(can_add);
        let mut s = stream(&host, &lambda(r#"{"function": "orders", "format": "api_gateway"}"#));
        let flow = s.on_request_headers(&host, true);
        if !can_add {
            let reply = reply_of(flow);
            assert_eq!((reply.status, reply.details.as_str()), (400, "aws_bad_request"));
            assert!(String::from_utf8_lossy(&reply.body).contains("api_gateway"));
            continue;
        }
        // A dynamic module: the event is the new body of the Invoke call, signed as any other.
        assert_eq!(flow, Flow::Continue);
        let event: serde_json::Value = serde_json::from_slice(&host.request_body.borrow()).unwrap();
        assert_eq!((event["httpMethod"].as_str(), event["path"].as_str()), (Some("GET"), Some("/x")));
        assert_eq!(event["queryStringParameters"]["id"], "1");
        assert_eq!(event["body"], serde_json::Value::Null);
        let length = host.request_body.borrow().len().to_string();
        assert_eq!(header(&host, "content-length"), Some(length));
        assert_eq!(header(&host, ":method").as_deref(), Some("POST"));
        // Signed (moto checks the signature over the event in the integration test).
        let auth = header(&host, "authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDINLINE/"), "{auth}");
    }
}

#[test]
fn function_errors_and_aws_errors_are_502_with_details() {
    for (headers, body, details, message) in [
        (
            vec![(":status", "200"), ("x-amz-function-error", "Unhandled")],
            &br#"{"errorType": "ValueError"}"#[..],
            "aws_lambda_function_error",
            "Lambda function error: ValueError",
        ),
        (
            vec![(":status", "403"), ("x-amzn-errortype", "AccessDeniedException")],
            b"{}",
            "aws_lambda_invoke_failed",
            "AWS answered 403 (AccessDeniedException)",
        ),
    ] {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
        let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        host.set_response(&headers, body);
        assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
        let reply = reply_of(s.on_response_body(&host, body.len(), true));
        assert_eq!((reply.status, reply.details.as_str()), (502, details));
        assert!(String::from_utf8_lossy(&reply.body).contains(message), "{:?}", reply.body);
    }
}

#[test]
fn envoys_own_replies_are_not_taken_for_aws_answers() {
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
    let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "504")], b"upstream request timeout");
    host.set_property("response.code_details", "upstream_response_timeout");
    let failed = metric("upstream_failed");
    assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
    assert_eq!(s.on_response_body(&host, 24, true), Flow::Continue);
    assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("504"));
    assert_eq!(metric("upstream_failed"), failed + 1);
    // The same status from AWS is AWS's answer.
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
    let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
    assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
    host.set_response(&[(":status", "503")], b"{}");
    host.set_property("response.code_details", "via_upstream");
    assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
    assert_eq!(reply_of(s.on_response_body(&host, 2, true)).details, "aws_lambda_invoke_failed");
}

const STS_OK: &[u8] = br#"<AssumeRoleResponse><AssumeRoleResult><Credentials><SessionToken>TOKEN</SessionToken>
    <SecretAccessKey>SECRET</SecretAccessKey><Expiration>2099-01-01T00:00:00Z</Expiration>
    <AccessKeyId>ASIATEMP</AccessKeyId></Credentials></AssumeRoleResult></AssumeRoleResponse>"#;

fn assume_role() -> String {
    r#"{"region": "us-east-1", "service": "sqs", "credentials": {"access_key_id": "AKIDBASE",
        "secret_access_key": "base-secret", "assume_role": {"role_arn": "arn:aws:iam::123456789012:role/app",
        "cluster": "sts"}}}"#
        .to_string()
}

#[test]
fn an_upgrade_is_signed_as_a_request_without_a_body_and_never_invokes_lambda() {
    let upgrade = [(":method", "GET"), (":path", "/ws"), (":authority", "b.s3"), ("upgrade", "websocket")];
    let host = FakeHost::with_request(&upgrade);
    let mut s = stream(&host, &s3(""));
    // Signed payload, but no body to wait for: signed at once with the empty body's hash.
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
    assert!(header(&host, "authorization").is_some());
    assert_eq!(header(&host, "x-amz-content-sha256").as_deref(), Some(sigv4::sha256_hex(b"").as_str()));

    let host = FakeHost::with_request(&upgrade);
    let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
    assert_eq!(reply_of(s.on_request_headers(&host, false)).details, "aws_bad_request");
}

#[test]
fn a_request_that_ends_while_waiting_for_sts_releases_the_fetch_lock() {
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), (":authority", "sqs")]);
    let mut s = stream(&host, &assume_role());
    assert_eq!(s.on_request_headers(&host, true), Flow::Pause);
    assert_eq!(host.http_calls.borrow().len(), 1);
    // Another request meanwhile: the lock is taken, it is told to retry.
    let mut other = stream(&host, &assume_role());
    assert_eq!(reply_of(other.on_request_headers(&host, true)).status, 503);
    s.on_done(&host);
    // The lock is free again: the next request starts its own fetch.
    let mut next = stream(&host, &assume_role());
    assert_eq!(next.on_request_headers(&host, true), Flow::Pause);
    assert_eq!(host.http_calls.borrow().len(), 2);
}

#[test]
fn a_request_waits_for_sts_and_is_signed_with_the_temporary_credentials() {
    let host = FakeHost::with_request(&[(":method", "POST"), (":path", "/"), (":authority", "sqs")]).body(b"a=1");
    let mut s = stream(&host, &assume_role());
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 3, true), Flow::Pause);
    let call = host.last_call().unwrap();
    assert_eq!(call.cluster, "sts");
    assert!(String::from_utf8_lossy(&call.body).starts_with("Action=AssumeRole&"));
    assert!(call.header("authorization").unwrap().contains("Credential=AKIDBASE/"));
    assert_eq!(header(&host, "authorization"), None);

    let refreshed = metric("sts.refreshed");
    let response = CallResponse { status: Some(200), headers: Vec::new(), body: STS_OK.to_vec() };
    assert_eq!(s.on_http_call_response(&host, call.token, response), Flow::Continue);
    assert!(header(&host, "authorization").unwrap().contains("Credential=ASIATEMP/"));
    assert_eq!(header(&host, "x-amz-security-token").as_deref(), Some("TOKEN"));
    assert_eq!(header(&host, "content-length").as_deref(), Some("3"));
    assert_eq!(metric("sts.refreshed"), refreshed + 1);

    // The next request finds them in shared data: no call.
    let mut next = stream(&host, &assume_role());
    assert_eq!(next.on_request_headers(&host, true), Flow::Continue);
    assert_eq!(host.http_calls.borrow().len(), 1);
}

#[test]
fn an_api_gateway_invocation_waiting_for_sts_gets_its_event_when_the_credentials_arrive() {
    let config = r#"{"region": "us-east-1", "service": "lambda", "credentials": {"access_key_id": "AKIDBASE",
        "secret_access_key": "base-secret", "assume_role": {"role_arn": "arn:aws:iam::123456789012:role/app",
        "cluster": "sts"}}, "lambda": {"function": "orders", "format": "api_gateway"}}"#;
    let host = FakeHost::with_request(&[(":method", "POST"), (":path", "/o"), (":authority", "gw")]).body(b"{}");
    let mut s = stream(&host, config);
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 2, true), Flow::Pause);
    assert_eq!(&*host.request_body.borrow(), b"{}", "nothing changed while waiting");
    let token = host.last_call().unwrap().token;
    let response = CallResponse { status: Some(200), headers: Vec::new(), body: STS_OK.to_vec() };
    assert_eq!(s.on_http_call_response(&host, token, response), Flow::Continue);
    let event: serde_json::Value = serde_json::from_slice(&host.request_body.borrow()).unwrap();
    assert_eq!((event["path"].as_str(), event["body"].as_str()), (Some("/o"), Some("{}")));
    assert_eq!(header(&host, "content-length"), Some(host.request_body.borrow().len().to_string()));
    assert!(header(&host, "authorization").unwrap().contains("Credential=ASIATEMP/"));
    assert_eq!(header(&host, ":path").as_deref(), Some("/2015-03-31/functions/orders/invocations"));
}

#[test]
fn an_unsigned_raw_invocation_streams_its_body() {
    let config = format!(
        r#"{{"region": "us-east-1", "service": "lambda", "payload": "unsigned", {INLINE},
            "lambda": {{"function": "orders"}}}}"#
    );
    let host = FakeHost::with_request(&[
        (":method", "POST"),
        (":path", "/o"),
        (":authority", "gw"),
        ("content-length", "5"),
        ("accept", "*/*"),
    ]);
    let mut s = stream(&host, &config);
    assert_eq!(s.on_request_headers(&host, false), Flow::Continue, "not held: the body streams");
    assert_eq!(header(&host, "content-length").as_deref(), Some("5"), "the client's framing stays");
    assert_eq!(header(&host, "accept"), None);
    assert_eq!(header(&host, "x-amz-content-sha256").as_deref(), Some("UNSIGNED-PAYLOAD"));
    assert_eq!(s.on_request_body(&host, 5, true), Flow::Continue);
}

#[test]
fn an_api_gateway_answer_without_a_body_is_a_bad_response() {
    let host = FakeHost::with_request(&[(":method", "POST"), (":path", "/o"), (":authority", "gw")]).body(b"x");
    let mut s = stream(&host, &lambda(r#"{"function": "orders", "format": "api_gateway"}"#));
    assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
    assert_eq!(s.on_request_body(&host, 1, true), Flow::Continue);
    host.set_response(&[(":status", "200")], b"");
    let failed = metric("upstream_failed");
    let reply = reply_of(s.on_response_headers(&host, true));
    assert_eq!((reply.status, reply.details.as_str()), (502, "aws_lambda_bad_response"));
    assert_eq!(metric("upstream_failed"), failed + 1);
}

#[test]
fn a_refused_or_unanswered_sts_call_is_503() {
    for (status, body, expected) in [
        (Some(403), &b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"[..], "STS answered 403"),
        (None, b"", "STS unreachable"),
    ] {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), (":authority", "sqs")]);
        let mut s = stream(&host, &assume_role());
        assert_eq!(s.on_request_headers(&host, true), Flow::Pause);
        let token = host.last_call().unwrap().token;
        // Another request meanwhile: the lock is taken, it does not wait.
        let mut other = stream(&host, &assume_role());
        let busy = reply_of(other.on_request_headers(&host, true));
        assert!(String::from_utf8_lossy(&busy.body).contains("retry shortly"));
        // An unrelated callout answer changes nothing.
        assert_eq!(s.on_http_call_response(&host, token + 100, CallResponse::default()), Flow::Pause);
        let response = CallResponse { status, headers: Vec::new(), body: body.to_vec() };
        let reply = reply_of(s.on_http_call_response(&host, token, response));
        assert_eq!((reply.status, reply.details.as_str()), (503, "aws_credentials_unavailable"));
        assert!(String::from_utf8_lossy(&reply.body).contains(expected), "{:?}", reply.body);
        assert!(!String::from_utf8_lossy(&reply.body).contains("base-secret"));
        // The lock is released: the next request tries again.
        let mut again = stream(&host, &assume_role());
        assert_eq!(again.on_request_headers(&host, true), Flow::Pause);
    }
}

#[test]
fn missing_credentials_and_host_failures() {
    let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), (":authority", "gw")]);
    let config = r#"{"region": "us-east-1", "service": "s3", "credentials": {"source": "env"}}"#;
    // The test process has no AWS_ACCESS_KEY_ID unless a developer set one; only check when it is absent.
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        let reply = reply_of(stream(&host, config).on_request_headers(&host, true));
        assert_eq!((reply.status, reply.details.as_str()), (503, "aws_credentials_unavailable"));
        assert!(String::from_utf8_lossy(&reply.body).contains("AWS_ACCESS_KEY_ID"));
    }
    host.fail("set_header", HostError::BadArgument);
    let reply = reply_of(stream(&host, &s3("")).on_request_headers(&host, true));
    assert_eq!((reply.status, reply.details.as_str()), (500, "aws_internal_error"));
}

#[test]
fn the_tick_refreshes_credentials_ahead_of_expiry() {
    let host = FakeHost::default();
    host.unix.set(1_700_000_000_000_000_000);
    let filter = AwsFilter::configure(&host, assume_role().as_bytes(), None).unwrap();
    assert_eq!(host.tick_period.get(), Some(Duration::from_secs(1)));
    filter.on_tick(&host);
    let token = host.last_call().unwrap().token;
    filter.on_tick(&host);
    assert_eq!(host.http_calls.borrow().len(), 1, "one refresh at a time");
    filter.on_http_call_response(
        &host,
        token,
        CallResponse { status: Some(200), headers: Vec::new(), body: STS_OK.to_vec() },
    );
    filter.on_tick(&host);
    assert_eq!(host.http_calls.borrow().len(), 1, "fresh credentials: nothing to do");
    let (cache, _) = filter.cache.as_ref().unwrap();
    assert!(matches!(cache.lookup(&host, host.unix_secs()), Lookup::Valid { refresh: false, .. }));
}
