//! The transformation filter through real Envoy (two workers) and the echo upstream, with
//! `allow_on_headers_stop_iteration: true` and no buffer filter: request and response templates, header templates
//! that read the JSON body, extractors, path/method rewrite, header-only transformations that never buffer,
//! passthrough of a large body, chunked bodies, gzip bodies (and a zip bomb), header_body_transform, response
//! matchers, merge_extractors_to_body, error replies that never reach the upstream (with their response-code
//! details in the access log), a WebSocket upgrade through the filter, metrics, and bad configurations refused
//! with the template named.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use integration_tests::rls::proto::rate_limit_service_client::RateLimitServiceClient;
use integration_tests::rls::{proto, Mode, RateLimitServer};
use integration_tests::{Build, EchoUpstream, Envoy, EnvoyConfig};
use serde_json::{json, Value};

/// Where transformation.yaml's gRPC route goes.
const GRPC_UPSTREAM_PORT: u16 = 8090;

fn start(echo: &EchoUpstream) -> Envoy {
    EnvoyConfig::new("transformation.yaml")
        .upstream(8081, echo.port())
        .env("TRANSFORMATION_TEST_ENV", "from-env")
        .start()
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    // The plugin `transformation.yaml` names `transformation`.
    envoy.stat(&format!("wasmcustom.transformation.plugin=.=transformation;.;{name}")).unwrap_or(0)
}

/// gzip through the system's `gzip` (the test crate has no compression library).
fn gzip(data: &[u8], decompress: bool) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg(if decompress { "-dc" } else { "-c" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "gzip failed");
    output.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn request_templates_extractors_and_response_headers() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");

    // The issue's example: path extractor, header from extraction(), body template over the JSON body.
    let response = client().post(format!("{url}/users/42")).body(r#"{"name": "Ann", "x": 1}"#).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-by"], "gateway");
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-user-id"], "42");
    let body: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"user": "42", "name": "Ann"}));
    // The filter set the new body's length with the new body.
    assert_eq!(echoed["headers"]["content-length"], body_len(&echoed));

    // The same with a chunked request body (no content-length on the way in): the upstream gets a length.
    let request = "POST /users/7 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                   a\r\n{\"name\": \r\nd\r\n\"Bo\", \"x\": 2}\r\n0\r\n\r\n";
    let (status, _, body) = raw_http(envoy.port("front"), request.as_bytes());
    assert_eq!(status, 200);
    let echoed: Value = serde_json::from_slice(&body).unwrap();
    let body: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"user": "7", "name": "Bo"}));
    assert_eq!(echoed["headers"]["content-length"], body_len(&echoed));
    assert!(echoed["headers"].get("transfer-encoding").is_none(), "{echoed}");

    // And from an HTTP/2 client (its body is DATA frames, its length whatever the filter says).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2.post(format!("{url}/users/8")).body(r#"{"name": "Cy"}"#).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    let body: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"user": "8", "name": "Cy"}));
    assert_eq!(echoed["headers"]["content-length"], body_len(&echoed));

    // Path and method rewrite, query extractor, set/remove/append in Gloo's order, empty render removes.
    let response = client()
        .get(format!("{url}/rewrite/a/b?who=ann"))
        .header("x-secret", "s")
        .header("x-drop-by-empty", "d")
        .header("x-multi", "original")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["path"], "/v2/a/b?who=ann");
    // clear_route_cache: Envoy selected the route again for the new path (its route for /v2/ adds this header).
    assert_eq!(echoed["headers"]["x-routed-to"], "rewritten");
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["headers"]["x-who"], "ANN");
    assert_eq!(echoed["headers"]["x-env"], "from-env");
    assert_eq!(echoed["headers"]["x-multi"], "original,appended");
    assert!(echoed["headers"].get("x-secret").is_none(), "{echoed}");
    assert!(echoed["headers"].get("x-drop-by-empty").is_none(), "{echoed}");

    // Without clear_route_cache a dynamic module keeps the route selected for the original path, as Gloo and
    // Envoy's own filters do; the Wasm host selects it again after any request-header change.
    let echoed: Value = client().get(format!("{url}/keep-route")).send().await.unwrap().json().await.unwrap();
    assert_eq!(echoed["path"], "/v2/kept");
    let routed_again = echoed["headers"].get("x-routed-to").is_some();
    assert_eq!(routed_again, envoy.build() == Build::Wasm, "{echoed}");

    assert_eq!(stat(&envoy, "request_body_transformations"), 3);
    assert!(stat(&envoy, "request_header_transformations") >= 1);
    assert_eq!(stat(&envoy, "response_header_transformations"), 3);
}

/// One HTTP/1.1 exchange over a plain TCP connection (`connection: close` in the request): status, head, body.
fn raw_http(port: u16, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Written from another thread: Envoy may answer (and close) before it has read the whole request.
    let mut writer = stream.try_clone().unwrap();
    let request = request.to_vec();
    let writing = std::thread::spawn(move || writer.write_all(&request));
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // A reset after the answer (the rest of the request was refused) ends the exchange too.
            Err(err) if !response.is_empty() => {
                eprintln!("read ended with {err}");
                break;
            }
            Err(err) => panic!("no response: {err}"),
        }
    }
    drop(writing.join());
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, head, response[split + 4..].to_vec())
}

fn body_len(echoed: &Value) -> String {
    echoed["body"].as_str().unwrap().len().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn header_templates_read_the_json_body_and_invalid_json_never_reaches_the_upstream() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");

    // Header templates over JSON body fields: the headers were held until the body was read, then changed.
    let body = r#"{"order": {"id": "A-17", "items": [1, 2, 3]}}"#;
    let response = client().post(format!("{url}/json-header")).body(body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-order-id"], "A-17");
    assert_eq!(echoed["headers"]["x-items"], "3");
    // The body is forwarded as it came, with its length.
    assert_eq!(echoed["body"], body);
    assert_eq!(echoed["headers"]["content-length"], body.len().to_string());

    // A large body within the limit (several chunks through Envoy) is read whole.
    let padding = "x".repeat(300 * 1024);
    let large = format!(r#"{{"order": {{"id": "big", "items": []}}, "padding": "{padding}"}}"#);
    let response = client().post(format!("{url}/json-header")).body(large.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-order-id"], "big");
    assert_eq!(echoed["body"].as_str().unwrap().len(), large.len());
    assert_eq!(echo.received().len(), 2);

    // Invalid JSON: 400 with the reason, and the upstream sees nothing at all (no headers went ahead).
    let response = client().post(format!("{url}/json-header")).body("{\"order\": ").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["filter"], "transformation");
    assert!(error["error"].as_str().unwrap().starts_with("bad request: body is not valid JSON"), "{error}");
    // A body over max_body_size (1 MiB) without a declared length: 413, and nothing upstream either. (Envoy may
    // reset the connection once it answered, before the rest of the request is read, which can cut the answer's
    // body: the access log below shows whose 413 it is.)
    let request = format!(
        "POST /json-header HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{}\r\n0\r\n\r\n",
        1100 * 1024,
        "y".repeat(1100 * 1024)
    );
    let (status, _, body) = raw_http(envoy.port("front"), request.as_bytes());
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(echo.received().len(), 2, "refused requests never reach the upstream");
    // The access log names the filter and the reason.
    assert!(envoy.wait_for_log("access: /json-header 400 transformation_bad_request"), "{}", envoy.log());
    assert!(envoy.wait_for_log("access: /json-header 413 transformation_body_too_large"), "{}", envoy.log());
    assert_eq!(stat(&envoy, "request_errors"), 1);
    assert_eq!(stat(&envoy, "body_too_large"), 1);
    assert!(!envoy.log().contains("allow_on_headers_stop_iteration"), "the flag is set: no complaint");
}

#[test]
fn websocket_upgrades_pass_through_when_no_rule_matches() {
    // An upstream that switches protocols and then echoes every byte (what a WebSocket server does at the TCP
    // level; the frames are opaque to Envoy and to the filter).
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            conn.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
              sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .unwrap();
        let mut buffer = [0u8; 64];
        loop {
            match conn.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.write_all(&buffer[..n]).unwrap(),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    });
    let echo = EchoUpstream::start();
    let envoy =
        EnvoyConfig::new("transformation.yaml").upstream(8081, echo.port()).upstream(8082, upstream_port).start();

    let mut client = TcpStream::connect(("127.0.0.1", envoy.port("front"))).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client
        .write_all(
            b"GET /ws/chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).expect("the 101 answer (a hold on the upgrade would time out here)");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // Bytes both ways through the tunnel.
    for message in [&b"\x81\x04ping"[..], b"\x81\x05hello"] {
        client.write_all(message).unwrap();
        let mut answer = vec![0u8; message.len()];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(answer, message);
    }
    drop(client);
    let upstream_saw = server.join().unwrap().to_lowercase();
    assert!(upstream_saw.starts_with("get /ws/chat"), "{upstream_saw}");
    assert!(upstream_saw.contains("upgrade: websocket"), "{upstream_saw}");
    assert!(echo.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn header_only_and_passthrough_never_buffer_large_bodies() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");
    // 3 MiB: three times max_body_size (and above Envoy's own 1 MiB buffer limit): only a filter that does not
    // buffer lets it through.
    let large = vec![b'x'; 3 * 1024 * 1024];
    for (path, header, value) in [("/headers-only", "x-length", "3145728"), ("/passthrough", "x-passed", "yes")] {
        let response = client().post(format!("{url}{path}")).body(large.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let echoed: Value = response.json().await.unwrap();
        assert_eq!(echoed["headers"][header], value, "{path}");
        assert_eq!(echoed["body"].as_str().unwrap().len(), large.len(), "{path}");
    }
    // A body template on the same size is refused: 413.
    let response = client().post(format!("{url}/users/1")).body(large).send().await.unwrap();
    assert_eq!(response.status(), 413);
    // The filter's own reply is not transformed (the rule's response transformation adds x-served-by).
    assert!(response.headers().get("x-served-by").is_none(), "{:?}", response.headers());
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["filter"], "transformation");
    assert!(error["error"].as_str().unwrap().contains("larger than the limit"), "{error}");
    assert!(stat(&envoy, "body_too_large") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_bodies_are_decoded_transformed_and_reencoded() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");
    let response = client()
        .post(format!("{url}/gzip"))
        .header("content-encoding", "gzip")
        .body(gzip(br#"{"message": "hello"}"#, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["content-encoding"], "gzip");
    let sent = base64::engine::general_purpose::STANDARD.decode(echoed["body_base64"].as_str().unwrap()).unwrap();
    assert_eq!(sent.get(..2), Some(&[0x1f, 0x8b][..]), "the upstream gets gzip again");
    assert_eq!(gzip(&sent, true), br#"{"greeting": "HELLO"}"#);
    assert_eq!(echoed["headers"]["content-length"], sent.len().to_string());

    // A zip bomb: 8 MiB of zeros in a few KiB; the decoded size is bounded by max_body_size: 413.
    let bomb = gzip(&vec![0u8; 8 * 1024 * 1024], false);
    assert!(bomb.len() < 64 * 1024);
    let response =
        client().post(format!("{url}/gzip")).header("content-encoding", "gzip").body(bomb).send().await.unwrap();
    assert_eq!(response.status(), 413);

    // With compressed_bodies: identity the result goes upstream uncompressed.
    let identity = r#"{"compressed_bodies": "identity", "transformations": [{"route_transformations": {
        "request_transformation": {"transformation_template": {"body": {"text": "{{ upper(message) }}"}}}}}]}"#;
    let envoy2 = EnvoyConfig::new("transformation.yaml")
        .upstream(8081, echo.port())
        .plugin_config("transformation", identity)
        .start();
    let response = client()
        .post(format!("{}/any", envoy2.url("front")))
        .header("content-encoding", "gzip")
        .body(gzip(br#"{"message": "plain"}"#, false))
        .send()
        .await
        .unwrap();
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["body"], "PLAIN");
    assert!(echoed["headers"].get("content-encoding").is_none(), "{echoed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_body_transform_and_merge_extractors_to_body() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");
    let response = client()
        .post(format!("{url}/envelope/x?a=1&b=2&b=3"))
        .header("x-one", "1")
        .body("raw body")
        .send()
        .await
        .unwrap();
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["content-type"], "application/json");
    let envelope: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["body"], "raw body");
    assert_eq!(envelope["headers"]["x-one"], "1");
    assert_eq!(envelope["httpMethod"], "POST");
    assert_eq!(envelope["path"], "/envelope/x");
    assert_eq!(envelope["queryString"], "a=1&b=2&b=3");
    assert_eq!(envelope["queryStringParameters"], json!({"a": "1", "b": "3"}));
    assert_eq!(envelope["multiValueQueryStringParameters"], json!({"b": ["2", "3"]}));

    let response = client()
        .post(format!("{url}/merge"))
        .header("x-tenant", "tenant-acme")
        .header("x-card", "4111-1111")
        .body(r#"{"order": 7}"#)
        .send()
        .await
        .unwrap();
    let echoed: Value = response.json().await.unwrap();
    let merged: Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(merged, json!({"order": 7, "meta": {"tenant": "acme"}, "masked": "****-****"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_responses_are_decoded_transformed_and_reencoded() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let upstream_body = base64::engine::general_purpose::STANDARD.encode(gzip(br#"{"message": "hello"}"#, false));
    let response = client()
        .get(format!("{}/gz-response", envoy.url("front")))
        .header("x-echo-header", "content-encoding: gzip")
        .header("x-echo-body-base64", upstream_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let received = response.bytes().await.unwrap();
    assert_eq!(received.get(..2), Some(&[0x1f, 0x8b][..]), "the client gets gzip again");
    assert_eq!(gzip(&received, true), br#"{"greeting": "HELLO"}"#);
    assert_eq!(stat(&envoy, "response_body_transformations"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_pass_untouched_and_failures_are_grpc_statuses() {
    let echo = EchoUpstream::start();
    let service = RateLimitServer::start(vec![], Mode::Answer); // any real gRPC service will do as the upstream
    let envoy = EnvoyConfig::new("transformation.yaml")
        .upstream(8081, echo.port())
        .upstream(GRPC_UPSTREAM_PORT, service.port())
        .start();
    let mut client = RateLimitServiceClient::connect(envoy.url("front")).await.unwrap();
    let call = |break_it: bool| {
        let mut request =
            tonic::Request::new(proto::RateLimitRequest { domain: "d".into(), descriptors: vec![], hits_addend: 1 });
        if break_it {
            request.metadata_mut().insert("x-break", "yes".parse().unwrap());
        }
        request
    };
    // No rule matches: the call goes through as it came.
    client.should_rate_limit(call(false)).await.expect("an untransformed call passes");
    assert_eq!(service.calls(), 1);
    // A matching rule whose template fails: a gRPC status with the reason, and the service never sees the call.
    let status = client.should_rate_limit(call(true)).await.unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(status.message().starts_with("bad request:"), "{status:?}");
    assert_eq!(service.calls(), 1);
    assert_eq!(stat(&envoy, "request_errors"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn response_transformations_and_response_matchers() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");

    // Response body template over the upstream's JSON, :status and request_header().
    let response = client().delete(format!("{url}/response/r")).header("x-in", "req").send().await.unwrap();
    assert_eq!(response.status(), 203);
    assert_eq!(response.headers()["x-request-header"], "req");
    // A response header template that reads the upstream's JSON body.
    assert_eq!(response.headers()["x-upstream-method"], "DELETE");
    let content_length = response.headers().get("content-length").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(body, json!({"upstream_saw": "/response/r", "method": "DELETE", "words": 3}));
    assert_eq!(content_length, Some(text.len().to_string()), "the new body's length");

    // An upstream answer over max_body_size (declared): the filter's 413 in its place, status, headers and body.
    let response = client().post(format!("{url}/response/big")).body("z".repeat(800 * 1024)).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let content_length = response.headers().get("content-length").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert_eq!(content_length, Some(text.len().to_string()));
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error, json!({"error": "body larger than the limit of 1048576 bytes", "filter": "transformation"}));

    // Response matchers: on :status 404 the body is rewritten; on a header, a header is added; otherwise nothing.
    let response = client()
        .get(format!("{url}/matchers"))
        .header("x-echo-status", "404")
        .header("x-echo-body", "gone")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "not here: gone");
    let response = client().get(format!("{url}/matchers")).header("x-echo-header", "x-flag: on").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-flag-seen"], "on");
    let response = client().get(format!("{url}/matchers")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-flag-seen").is_none());
    assert_eq!(stat(&envoy, "response_body_transformations"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_400_on_requests_and_on_responses_as_in_gloo() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");

    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    // A body template that reads a JSON field the body does not have: 400 with the reason, nothing forwarded.
    let response = client()
        .post(format!("{url}/errors/request"))
        .header("x-in", b64("ok"))
        .body(r#"{"other": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().starts_with("bad request: "), "{error}");
    assert!(error["error"].as_str().unwrap().contains("not found"), "{error}");
    // An unparsable JSON body: 400.
    let response = client().post(format!("{url}/errors/request")).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("not valid JSON"), "{error}");
    // A header value that would carry CR/LF into the upstream request: refused.
    let response = client()
        .post(format!("{url}/errors/request"))
        .header("x-in", b64("a\r\nx-injected: yes"))
        .body(r#"{"needed_field": "b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("CR, LF or NUL"), "{error}");
    // The good case goes through.
    let response = client()
        .post(format!("{url}/errors/request"))
        .header("x-in", b64("ab"))
        .body(r#"{"needed_field": "b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-value"], "ab");
    assert_eq!(echoed["body"], "b");
    assert!(echo.received().iter().all(|r| r.header("x-injected").is_none()));
    assert_eq!(echo.received().len(), 1, "refused requests never reach the upstream");

    // A response template that fails: 400 with the reason, as Gloo answers (its status for a template error).
    let response = client().get(format!("{url}/errors/response")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["filter"], "transformation");
    assert!(error["error"].as_str().unwrap().starts_with("bad request: header :status"), "{error}");
    assert_eq!(stat(&envoy, "request_errors"), 3);
    assert_eq!(stat(&envoy, "response_errors"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_filters_own_reply_is_never_transformed() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");
    // The rule has a response transformation (camelCase config): the filter's 400 goes out as it is.
    let response = client().post(format!("{url}/own-reply")).body("not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("x-wrapped").is_none());
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("not valid JSON"), "{error}");
    // The upstream's answer on the same rule is transformed.
    let response = client().post(format!("{url}/own-reply")).body(r#"{"name": "Ann"}"#).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-wrapped"], "yes");
    assert_eq!(response.text().await.unwrap(), "wrapped");
    assert_eq!(echo.received().len(), 1);
    assert_eq!(echo.received()[0].body, b"Ann");
}

/// A body template on a request or response whose headers ended the stream: a dynamic module gives it the body
/// (Envoy adds it as the message's data, as Gloo's filter does); the Wasm ABI cannot, and the message stays
/// bodiless.
#[tokio::test(flavor = "multi_thread")]
async fn a_bodiless_message_gets_its_templated_body_in_the_dynamic_module_only() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    // The upstream answers with an empty body: Envoy ends the stream with the response headers.
    let response =
        client().get(format!("{}/made-body/x", envoy.url("front"))).header("x-echo-body", "").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let length = response.headers().get("content-length").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let received = echo.received();
    let upstream = received.last().unwrap();
    let upstream_body = String::from_utf8_lossy(&upstream.body).to_string();
    match envoy.build() {
        Build::DynamicModule => {
            assert_eq!(upstream.method, "GET");
            assert_eq!(upstream_body, "made for /made-body/x");
            assert_eq!(upstream.header("content-length"), Some("21"));
            assert_eq!(text, "made at 200");
            assert_eq!(length.as_deref(), Some("11"));
        }
        Build::Wasm => {
            assert_eq!((upstream_body.as_str(), upstream.header("content-length")), ("", None));
            assert_eq!((text.as_str(), length.as_deref()), ("", Some("0")));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_body_has_no_content_type_and_a_zero_length() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let request = "POST /empty-body HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\
                   connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let (status, head, body) = raw_http(envoy.port("front"), request.as_bytes());
    assert_eq!(status, 200);
    // The upstream got no body, no content-type, and a zero length (not chunked).
    let received = echo.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].body.is_empty());
    assert_eq!(received[0].header("content-type"), None, "{:?}", received[0].headers);
    assert_eq!(received[0].header("content-length"), Some("0"), "{:?}", received[0].headers);
    assert_eq!(received[0].header("transfer-encoding"), None);
    // The client the same, for the upstream's JSON answer emptied by the response transformation.
    let head = head.to_ascii_lowercase();
    assert!(body.is_empty(), "{body:?}");
    assert!(head.contains("\r\ncontent-length: 0"), "{head}");
    assert!(!head.contains("content-type"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_pseudo_headers_are_validated_and_the_path_normalised() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");
    // A query value copied into :path: a space would put "HTTP/1.0" into the upstream's request line, a tab too.
    for to in ["a%20HTTP/1.0%20x", "a%09b", "a%0b", "%C3%A9"] {
        let response = client().get(format!("{url}/pseudo/path?to={to}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{to}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains("rendered :path"), "{error}");
    }
    // Dot segments are resolved before Envoy selects the route again: the upstream sees /admin, not /api/../../admin.
    let response = client().get(format!("{url}/pseudo/path?to=../../admin/./x/%2e%2E/y")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["path"], "/admin/y");
    // :authority must be host[:port], :method a token.
    for (host, method, reason) in [
        ("bad host", "GET", ":authority"),
        ("user@h", "GET", ":authority"),
        ("h:99999", "GET", ":authority"),
        ("h", "GE T", ":method"),
        ("h", "G(T", ":method"),
    ] {
        let response = client()
            .get(format!("{url}/pseudo/authority"))
            .header("x-host", host)
            .header("x-method", method)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{host} {method}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains(reason), "{error}");
    }
    let response = client()
        .get(format!("{url}/pseudo/authority"))
        .header("x-host", "example.com:8080")
        .header("x-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["method"], "PATCH");
    assert_eq!(echo.received().len(), 2, "refused requests never reach the upstream");
    assert_eq!(echo.received()[1].header("host"), Some("example.com:8080"));
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_functions_read_cluster_dynamic_and_host_metadata() {
    let echo = EchoUpstream::start();
    let envoy = start(&echo);
    let url = envoy.url("front");
    let response = client().get(format!("{url}/metadata")).header("x-tenant", "t-1").send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The upstream host is known once the response comes (in a downstream filter it is not chosen before).
    assert_eq!(response.headers()["x-host-md"], "zone-a");
    let echoed: Value = response.json().await.unwrap();
    let headers = &echoed["headers"];
    // The cluster's metadata (Gloo's namespace; `:` separates the parts of a key, Gloo's default).
    assert_eq!(headers["x-cluster"], "payments", "{echoed}");
    // A dynamic module reads metadata value by value: a nested struct (`limits: {rps: 5}`) is out of its reach.
    let deep = match envoy.build() {
        Build::Wasm => json!("5.0"),
        Build::DynamicModule => Value::Null,
    };
    assert_eq!(headers["x-cluster-deep"], deep, "{echoed}");
    // Dynamic metadata set by header_to_metadata before this filter.
    assert_eq!(headers["x-dynamic"], "t-1", "{echoed}");
    assert_eq!(headers["x-host-md"], "[]", "{echoed}");
}

#[test]
fn bad_configurations_are_refused_with_the_template_named() {
    let echo = EchoUpstream::start();
    let cases = [
        (
            r#"{"transformations": [{"route_transformations": {"request_transformation": {"transformation_template":
                {"headers": {"x-a": {"text": "{{ unclosed"}}}}}}]}"#,
            "transformation: invalid configuration: transformations[0].route_transformations.request_transformation\
             .transformation_template.headers.x-a.text: syntax error",
        ),
        (
            r#"{"transformations": [{"route_transformations": {"request_transformation": {"transformation_template":
                {"extractors": {"e": {"header": "x", "regex": "(a)", "subgroup": 3}}}}}}]}"#,
            "transformation_template.extractors.e: group 3 requested for regex with only 1 sub groups",
        ),
        (r#"{"stage": 11}"#, "transformation: invalid configuration: stage: must be at most 10"),
    ];
    for (config, message) in cases {
        let envoy = EnvoyConfig::new("transformation.yaml").upstream(8081, echo.port());
        let build = envoy.build();
        let log = envoy.plugin_config("transformation", config).start_expecting_failure();
        assert!(log.contains(message), "expected {message:?} in Envoy's log:\n{log}");
        let refusal = match build {
            Build::Wasm => "Unable to create Wasm plugin transformation",
            Build::DynamicModule => "Failed to initialize dynamic module",
        };
        assert!(log.contains(refusal), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_gateway_shows_a_transformation_route() {
    let echo = EchoUpstream::start();
    let envoy = EnvoyConfig::new("demo.yaml").upstream(8081, echo.port()).start();
    let response = client().get(format!("{}/transform/abc?x=1", envoy.url("front"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-by"], "transformation");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"user": "abc", "upstream_path": "/users/abc", "asked": "/transform/abc?x=1"}));
    assert_eq!(echo.received()[0].path, "/users/abc");
}
