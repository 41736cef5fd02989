//! The aws filter through real Envoy against moto, a local AWS that verifies every SigV4 signature with botocore's
//! algorithm (signature checking is switched on after setup). Each test starts its own moto and Envoy.

use integration_tests::moto::{Moto, MotoSetup};
use integration_tests::{Build, Envoy, EnvoyConfig};
use serde_json::{json, Value};

struct Stack {
    moto: Moto,
    setup: MotoSetup,
    envoy: Envoy,
}

/// moto set up, and Envoy (envoy-test/aws.yaml) with the given plugin configurations and the user's keys in the
/// environment (unless `env` is false).
fn stack(front: Value, down: Option<Value>, env: bool) -> Stack {
    let moto = Moto::start();
    let setup = moto.setup();
    let envoy = envoy(&moto, &setup, front, down, env);
    Stack { moto, setup, envoy }
}

/// Envoy for `moto`: the `front` plugin runs on the `aws` cluster, `down` (if given) as a downstream filter.
fn envoy(moto: &Moto, setup: &MotoSetup, front: Value, down: Option<Value>, env: bool) -> Envoy {
    let mut config = EnvoyConfig::new("aws.yaml").upstream(5000, moto.port()).plugin_config("aws", front);
    if let Some(down) = down {
        config = config.plugin_config("aws_down", down);
    }
    if env {
        config = config
            .env("AWS_ACCESS_KEY_ID", &setup.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &setup.secret_access_key);
    }
    config.start()
}

async fn send(
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.replace('%', "%25").replace('&', "%26").replace(' ', "%20").replace(':', "%3A").replace('/', "%2F")
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A metric of one plugin instance: `aws` on the `aws` cluster (the `front` listener's route), `aws_down` on
/// the `down` listener.
fn metric(plugin: &str, event: &str) -> String {
    // Envoy scopes the metrics of a dynamic module in an upstream filter to its cluster (`aws` runs on `aws`).
    let cluster = match Build::current() {
        Build::DynamicModule if plugin == "aws" => "cluster.aws.",
        _ => "",
    };
    format!("{cluster}wasmcustom.aws.plugin=.={plugin};.;{event}")
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded; charset=utf-8");

async fn caller_identity(envoy: &Envoy, listener: &str) -> (u16, String) {
    let body = form(&[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")]);
    let (status, _, text) = send("POST", format!("{}/", envoy.url(listener)), &[FORM], body).await;
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_sts_call_signed_with_env_credentials_and_a_wrong_secret_is_refused() {
    let s = stack(json!({"region": "us-east-1", "service": "sts"}), None, true);
    let (status, body) = caller_identity(&s.envoy, "front").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Arn>arn:aws:iam::123456789012:user/envoy</Arn>"), "{body}");
    assert_eq!(s.envoy.stat(&metric("aws", "signed")), Some(1));

    // Without the filter's signature moto refuses (it really checks): a wrong secret gets 403.
    let wrong = envoy(
        &s.moto,
        &s.setup,
        json!({"region": "us-east-1", "service": "sts",
               "credentials": {"access_key_id": s.setup.access_key_id, "secret_access_key": "wrong-secret"}}),
        None,
        false,
    );
    let (status, body) = caller_identity(&wrong, "front").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    assert!(!body.contains("wrong-secret") && !wrong.log().contains("wrong-secret"));
}

const SMUGGLED: [(&str, &str); 4] = [
    ("x-amz-security-token", "FQoGZXIvYXdzEJr//////////smuggled"),
    ("x-amz-date", "20000101T000000Z"),
    (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIAEVIL/20000101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
    ),
    ("x-amzn-trace-id", "Root=1-00000000-000000000000000000000000"),
];

#[tokio::test(flavor = "multi_thread")]
async fn bodyless_requests_are_signed_in_place_and_client_aws_headers_do_not_reach_the_signature() {
    // S3 GetObject, a request without a body: signed in place on the cluster, streamed. (moto cannot verify
    // bodyless requests of the JSON/query services: it hashes its own header dict as the body, and refuses
    // boto3's own ListFunctions too.)
    let s = stack(json!({"region": "us-east-1", "service": "s3"}), None, true);
    s.moto.python(&format!(
        "import boto3, os\nc = boto3.client('s3', endpoint_url=os.environ['MOTO_URL'], region_name='us-east-1', \
         aws_access_key_id={:?}, aws_secret_access_key={:?})\nc.put_object(Bucket='files', Key='k', Body=b'stored')",
        s.setup.access_key_id, s.setup.secret_access_key
    ));
    let url = format!("{}/files/k", s.envoy.url("front"));
    let (status, _, body) = send("GET", url.clone(), &[], "").await;
    assert_eq!((status, body.as_str()), (200, "stored"));
    // A client's own token, date, signature and trace id are dropped before signing.
    let (status, _, body) = send("GET", url, &SMUGGLED, "").await;
    assert_eq!((status, body.as_str()), (200, "stored"));
    assert_eq!(s.envoy.stat(&metric("aws", "signed")), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_reaches_the_upstream_is_our_token_date_and_signature_only() {
    let echo = integration_tests::EchoUpstream::start();
    let envoy = EnvoyConfig::new("aws.yaml")
        .upstream(5000, echo.port())
        .plugin_config(
            "aws",
            json!({"region": "us-east-1", "service": "s3", "credentials":
                   {"access_key_id": "AKIDINLINE", "secret_access_key": "inline-secret", "session_token": "our-token"}}),
        )
        .start();
    let (status, _, _) = send("GET", format!("{}/files/k", envoy.url("front")), &SMUGGLED, "").await;
    assert_eq!(status, 200);
    let received = echo.received();
    let headers = &received[0].headers;
    let values = |name: &str| headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(values("x-amz-security-token"), ["our-token"]);
    assert_eq!(values("x-amzn-trace-id"), Vec::<&str>::new());
    let date = values("x-amz-date");
    assert_eq!(date.len(), 1);
    assert_ne!(date[0], "20000101T000000Z");
    let authorization = values("authorization");
    assert_eq!(authorization.len(), 1, "{authorization:?}");
    assert!(authorization[0].starts_with("AWS4-HMAC-SHA256 Credential=AKIDINLINE/"), "{}", authorization[0]);
    let signed = authorization[0].split("SignedHeaders=").nth(1).and_then(|r| r.split(',').next()).unwrap();
    assert_eq!(signed, "accept;host;x-amz-content-sha256;x-amz-date;x-amz-security-token");
    assert!(!format!("{received:?}").contains("inline-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_put_reaches_the_upstream_once_with_its_body_length_and_signature() {
    // Before the port, a signed-payload request without a buffer filter reached the upstream twice (the filter's
    // signed copy and the client's original); now the request itself is signed and sent once.
    let echo = integration_tests::EchoUpstream::start();
    let config = json!({"region": "us-east-1", "service": "s3", "credentials":
                        {"access_key_id": "AKIDINLINE", "secret_access_key": "inline-secret"}});
    let envoy = EnvoyConfig::new("aws.yaml")
        .upstream(5000, echo.port())
        .plugin_config("aws", config.clone())
        .plugin_config("aws_down", config)
        .start();
    let body = "y".repeat(100_000);
    for (i, listener) in ["front", "down"].into_iter().enumerate() {
        let (status, _, text) = send("PUT", format!("{}/files/k{i}", envoy.url(listener)), &[], body.clone()).await;
        assert_eq!(status, 200, "{listener}: {text}");
        let received = echo.received();
        assert_eq!(received.len(), i + 1, "{listener}: one request per client request: {received:?}");
        let request = received.last().unwrap();
        assert_eq!((request.method.as_str(), request.body.len()), ("PUT", body.len()), "{listener}");
        assert_eq!(request.header("content-length"), Some("100000"));
        let hash = request.header("x-amz-content-sha256").unwrap();
        assert_eq!(hash.len(), 64, "the body's SHA-256, not UNSIGNED-PAYLOAD: {hash}");
        assert!(request.header("authorization").unwrap().starts_with("AWS4-HMAC-SHA256 Credential=AKIDINLINE/"));
    }
    assert_eq!(envoy.stat(&metric("aws", "signed")), Some(1));
    assert_eq!(envoy.stat(&metric("aws_down", "signed")), Some(1));
}

/// A plain TCP upstream that records each request's raw bytes, and either answers `200` or never answers.
struct RawUpstream {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl RawUpstream {
    fn start(answer: bool) -> RawUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let list = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let list = list.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    list.lock().unwrap().push(request);
                    if answer {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    }
                    // Silent: keep the connection open until the peer gives up.
                    let _ = stream.read(&mut chunk);
                });
            }
        });
        RawUpstream { port, received }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn header_bytes_that_are_not_utf8_are_forwarded_and_signed_as_they_are() {
    let upstream = RawUpstream::start(true);
    let config = json!({"region": "us-east-1", "service": "s3", "credentials":
                        {"access_key_id": "AKIDINLINE", "secret_access_key": "inline-secret"}});
    let envoy = EnvoyConfig::new("aws.yaml")
        .upstream(5000, upstream.port)
        .plugin_config("aws", config.clone())
        .plugin_config("aws_down", config)
        .start();
    for listener in ["front", "down"] {
        let value = reqwest::header::HeaderValue::from_bytes(b"caf\xe9 au lait").unwrap();
        let response = reqwest::Client::new()
            .get(format!("{}/files/k", envoy.url(listener)))
            .header("x-name", value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{listener}");
    }
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    for request in received {
        let text = String::from_utf8_lossy(&request).into_owned();
        let sent = b"x-name: caf\xe9 au lait\r\n";
        assert!(request.windows(sent.len()).any(|w| w == sent), "the same bytes: {text}");
        assert!(text.contains("SignedHeaders=accept;host;x-amz-content-sha256;x-amz-date;x-name,"), "{text}");
    }
    // (That the signature is computed over those bytes, not over U+FFFD, is proven by the unit tests: no AWS
    // emulator here decodes such a header the way it was sent.)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lambda_timeout_applies_and_envoys_own_errors_are_not_taken_for_aws_answers() {
    // Downstream placement: the filter sets the route's upstream timeout for the invocation
    // (x-envoy-upstream-rq-timeout-ms); the route says 30 s, the function 1 s.
    let silent = RawUpstream::start(false);
    let config = json!({"region": "us-east-1", "service": "lambda", "timeout": "20s",
                        "credentials": {"access_key_id": "AKIDINLINE", "secret_access_key": "inline-secret"},
                        "lambda": {"function": "orders", "timeout": "1s"}});
    let envoy = EnvoyConfig::new("aws.yaml")
        .upstream(5000, silent.port)
        .plugin_config("aws", config.clone())
        .plugin_config("aws_down", config.clone())
        .start();
    let started = std::time::Instant::now();
    let (status, _, body) = send("POST", format!("{}/x", envoy.url("down")), &[], "{}").await;
    let waited = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(waited < std::time::Duration::from_secs(5), "waited {waited:?}");
    assert!(!body.contains("AWS answered"), "Envoy's own timeout passes as it is: {body}");
    assert!(envoy.wait_for_access_log("504 response_timeout"), "{}", envoy.access_log());
    assert_eq!(silent.received().len(), 1);
    assert!(String::from_utf8_lossy(&silent.received()[0]).starts_with("POST /2015-03-31/functions/orders/invocations"));
    assert_eq!(envoy.wait_for_stat(&metric("aws_down", "upstream_failed"), |v| v == 1), Some(1));

    // No upstream at all (connection refused): Envoy's 503, not "AWS answered 503".
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let envoy = EnvoyConfig::new("aws.yaml")
        .upstream(5000, closed)
        .plugin_config("aws", config.clone())
        .plugin_config("aws_down", config.clone())
        .start();
    for listener in ["front", "down"] {
        let (status, _, body) = send("POST", format!("{}/x", envoy.url(listener)), &[], "{}").await;
        assert_eq!(status, 503, "{listener}: {body}");
        assert!(body.contains("upstream connect error"), "{listener}: Envoy's own reply: {body}");
    }
    assert!(envoy.wait_for_access_log("503 upstream_reset_before_response_started"), "{}", envoy.access_log());
    assert!(!envoy.access_log().contains("aws_lambda"), "{}", envoy.access_log());

    // On a cluster (upstream filter) the router chose the timeout before the filter ran: the filter says so once
    // and does not send the header on to AWS.
    let upstream = RawUpstream::start(true);
    let envoy = EnvoyConfig::new("aws.yaml").upstream(5000, upstream.port).plugin_config("aws", config).start();
    let (status, _, body) = send("POST", format!("{}/x", envoy.url("front")), &[], "{}").await;
    assert_eq!(status, 200, "{body}");
    let request = String::from_utf8_lossy(&upstream.received()[0]).into_owned();
    assert!(!request.contains("x-envoy-upstream-rq-timeout-ms"), "{request}");
    assert!(envoy.wait_for_log("`timeout` applies only when the filter is a downstream HTTP filter"));
}

#[test]
fn a_cluster_setting_left_from_the_side_call_design_is_refused_with_the_reason() {
    let log = EnvoyConfig::new("aws.yaml")
        .plugin_config("aws", json!({"region": "us-east-1", "service": "s3", "cluster": "aws_direct"}))
        .start_expecting_failure();
    assert!(log.contains("cluster: no longer used"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_invocations_in_place_by_name_and_arn_sync_async_and_api_gateway_in_both_placements() {
    // No buffer filter, no second cluster: the request itself becomes the Invoke call, signed (moto checks the
    // signature) and routed by Envoy to the route's cluster; the answer comes back through the filter.
    let s = stack(json!({"region": "us-east-1", "service": "lambda"}), None, true);
    let arn = s.setup.function_arn.clone();
    let config = json!({
        "region": "us-east-1", "service": "lambda",
        "rules": [
            {"match": {"prefix": "/by-name"}, "lambda": {"function": "orders"}},
            {"match": {"prefix": "/by-arn"}, "lambda": {"function": arn, "qualifier": "$LATEST"}},
            {"match": {"prefix": "/async"}, "lambda": {"function": "orders", "invocation": "async"}},
            {"match": {"prefix": "/gw"}, "lambda": {"function": arn, "format": "api_gateway"}}
        ]
    });
    let envoy = envoy(&s.moto, &s.setup, config.clone(), Some(config), true);
    assert_eq!(envoy.stat(&metric("aws", "rules")), Some(4));
    assert_eq!(envoy.stat(&metric("aws_down", "rules")), Some(4));

    for listener in ["front", "down"] {
        // Sync, raw: moto's Lambda echoes the payload, which is the request body.
        let (status, headers, body) =
            send("POST", format!("{}/by-name/x", envoy.url(listener)), &[], r#"{"order": 42}"#).await;
        assert_eq!(status, 200, "{listener}: {body}");
        assert_eq!(body, r#"{"order": 42}"#, "{listener}");
        assert_eq!(headers["content-type"], "application/json");
        // By ARN (the path carries %3A, signed as %253A; moto refuses single encoding) with a qualifier.
        let (status, _, body) = send("POST", format!("{}/by-arn", envoy.url(listener)), &[], r#"{"a": 1}"#).await;
        assert_eq!((status, body.as_str()), (200, r#"{"a": 1}"#), "{listener}");
        // Async: Lambda's 202 goes back as it is.
        let (status, _, body) = send("POST", format!("{}/async", envoy.url(listener)), &[], r#"{"b": 2}"#).await;
        assert_eq!(status, 202, "{listener}: {body}");
        // (A bodiless request to a raw function is an empty payload: unit-tested only, moto cannot verify the
        // signature of a request without a body.)

        // API Gateway format: the request's event in, the function's proxy response unwrapped out.
        s.moto.queue_lambda_results(&[
            r#"{"statusCode": 201, "headers": {"x-fn": "yes", "content-type": "text/plain"}, "body": "created"}"#,
            r#"{"statusCode": 404, "multiValueHeaders": {"x-multi": ["1", "2"]}, "body": "aGk=", "isBase64Encoded": true}"#,
            r#"{"not": "a proxy response"}"#,
        ]);
        let (status, headers, body) = send("POST", format!("{}/gw/orders?id=7", envoy.url(listener)), &[], "x").await;
        assert_eq!((status, body.as_str()), (201, "created"), "{listener}");
        assert_eq!(headers["x-fn"], "yes");
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["content-length"], "7");
        let (status, headers, body) = send("PUT", format!("{}/gw/orders", envoy.url(listener)), &[], "{}").await;
        assert_eq!((status, body.as_str()), (404, "hi"), "{listener}");
        let multi: Vec<&str> = headers.get_all("x-multi").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(multi, ["1", "2"]);
        let (status, _, body) = send("POST", format!("{}/gw/orders", envoy.url(listener)), &[], "{}").await;
        assert_eq!(status, 502, "{listener}: {body}");
        assert!(body.contains("malformed Lambda proxy response"), "{body}");
        // A request without a body: the dynamic module gives it the event as its body (moto checks the signature
        // over it); a Wasm filter cannot give it one: 400 with the reason.
        if envoy.build() == Build::DynamicModule {
            s.moto.queue_lambda_results(&[r#"{"statusCode": 200, "body": "listed"}"#]);
        }
        let (status, _, body) = send("GET", format!("{}/gw/orders", envoy.url(listener)), &[], "").await;
        match envoy.build() {
            Build::DynamicModule => assert_eq!((status, body.as_str()), (200, "listed"), "{listener}"),
            Build::Wasm => {
                assert_eq!(status, 400, "{listener}: {body}");
                assert!(body.contains("api_gateway"), "{body}");
            }
        }
    }

    // The API Gateway event itself is checked field by field in the unit tests: moto's Docker-less Lambda runs no
    // code that could inspect it. Per placement: 2 sync raw, 1 async, 2 API Gateway answered (3 with the bodiless
    // GET in the dynamic module).
    let invoked = if envoy.build() == Build::DynamicModule { 6 } else { 5 };
    for plugin in ["aws", "aws_down"] {
        assert_eq!(envoy.wait_for_stat(&metric(plugin, "lambda.invoked"), |v| v == invoked), Some(invoked), "{plugin}");
        assert_eq!(envoy.stat(&metric(plugin, "upstream_failed")), Some(1), "{plugin}");
    }
    // (The access log shows the request as sent: the Invoke path.)
    assert!(envoy.wait_for_access_log("/invocations 502 aws_lambda_bad_response"), "{}", envoy.access_log());
    if envoy.build() == Build::Wasm {
        assert!(envoy.access_log().contains("/gw/orders 400 aws_bad_request"), "{}", envoy.access_log());
    }
    assert!(!envoy.log().contains("allow_on_headers_stop_iteration"), "the flag is set: no warning");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_put_and_get_with_awkward_keys_signed_and_unsigned_payloads_in_both_placements() {
    // A signed PUT is held with its headers while its body arrives, then signed (the body's SHA-256) in place:
    // no buffer filter, no second cluster. moto verifies every signature.
    let signed = json!({"region": "us-east-1", "service": "s3"});
    let s = stack(signed.clone(), None, true);
    let signed = envoy(&s.moto, &s.setup, signed.clone(), Some(signed), true);
    let unsigned = json!({"region": "us-east-1", "service": "s3", "payload": "unsigned"});
    let unsigned = envoy(&s.moto, &s.setup, unsigned.clone(), Some(unsigned), true);
    let keys = [
        ("a b/c:d", "/files/a%20b/c:d"),
        ("100%", "/files/100%25"),
        ("x@y", "/files/x@y"),
        ("sp ace+plus", "/files/sp%20ace+plus"),
        ("big", "/files/big"),
    ];
    for (i, (key, path)) in keys.iter().enumerate() {
        let (gw, kind) = if i % 2 == 0 { (&signed, "signed") } else { (&unsigned, "unsigned") };
        let listener = if i % 4 < 2 { "front" } else { "down" };
        // The last one is 300 KB: Envoy delivers it in several chunks.
        let content = if *key == "big" { "x".repeat(300_000) } else { format!("content of {key}") };
        let (status, _, body) = send("PUT", format!("{}{path}", gw.url(listener)), &[], content.clone()).await;
        assert_eq!(status, 200, "PUT {key} ({kind}, {listener}): {body}");
        let (status, _, body) = send("GET", format!("{}{path}", gw.url(listener)), &[], "").await;
        assert_eq!((status, body.len()), (200, content.len()), "GET {key}");
        assert!(body == content, "GET {key}");
    }
    assert!(!signed.log().contains("allow_on_headers_stop_iteration"));
    // The objects have exactly the intended keys (read back with boto3, moto's own signer).
    let listed = s.moto.python(&format!(
        "import boto3, json, os\nc = boto3.client('s3', endpoint_url=os.environ['MOTO_URL'], region_name='us-east-1', aws_access_key_id={:?}, aws_secret_access_key={:?})\nprint(json.dumps(sorted(o['Key'] for o in c.list_objects_v2(Bucket='files')['Contents'])))",
        s.setup.access_key_id, s.setup.secret_access_key
    ));
    let listed: Vec<String> = serde_json::from_str(listed.trim()).unwrap();
    let mut expected: Vec<String> = keys.iter().map(|(k, _)| k.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_sts_assume_role_are_cached_and_used() {
    let moto = Moto::start();
    let setup = moto.setup();
    let config = json!({"region": "us-east-1", "service": "sts", "credentials": {"source": "env",
        "assume_role": {"role_arn": setup.role_arn, "cluster": "sts", "session_name": "envoy-test"}}});
    let envoy = envoy(&moto, &setup, config, None, true);
    for _ in 0..3 {
        let (status, body) = caller_identity(&envoy, "front").await;
        assert_eq!(status, 200, "{body}");
        // The identity is the assumed role, not the user whose keys are in the environment.
        assert!(body.contains("<Arn>arn:aws:sts::123456789012:assumed-role/app/envoy-test</Arn>"), "{body}");
    }
    let refreshed = envoy.stat(&metric("aws", "sts.refreshed")).unwrap();
    assert!((1..=2).contains(&refreshed), "STS called {refreshed} times for 3 requests");
    assert_eq!(envoy.stat(&metric("aws", "sts.failed")), Some(0));

    // An api_gateway invocation whose first request waits for STS: the event replaces the body and the signing
    // headers are set when the credentials arrive (in the callout's answer, not in a body callback).
    let config = json!({"region": "us-east-1", "service": "lambda", "credentials": {"source": "env",
        "assume_role": {"role_arn": setup.role_arn, "cluster": "sts", "session_name": "lambda-test"}},
        "lambda": {"function": "orders", "format": "api_gateway"}});
    let envoy = self::envoy(&moto, &setup, config.clone(), Some(config), true);
    moto.queue_lambda_results(&[r#"{"statusCode": 200, "body": "front"}"#, r#"{"statusCode": 200, "body": "down"}"#]);
    for listener in ["front", "down"] {
        let (status, _, body) = send("POST", format!("{}/orders", envoy.url(listener)), &[], "{}").await;
        assert_eq!((status, body.as_str()), (200, listener));
    }
    // Either placement may be the first to need the shared credentials.
    let refreshed = ["aws", "aws_down"].map(|plugin| envoy.stat(&metric(plugin, "sts.refreshed")).unwrap());
    assert!(refreshed.iter().sum::<u64>() >= 1, "{refreshed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_and_unreachable_sts_are_503_and_large_bodies_413() {
    let moto = Moto::start();
    let setup = moto.setup();
    // No keys in the environment.
    let envoy_without =
        envoy(&moto, &setup, json!({"region": "us-east-1", "service": "sqs", "max_body": "16B"}), None, false);
    let (status, _, body) = send("GET", format!("{}/?Action=ListQueues", envoy_without.url("front")), &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("AWS_ACCESS_KEY_ID") && body.contains(r#""filter":"aws""#), "{body}");
    assert_eq!(envoy_without.stat(&metric("aws", "credentials.unavailable")), Some(1));
    let (status, _, body) = send("POST", format!("{}/", envoy_without.url("front")), &[FORM], "x".repeat(100)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(envoy_without.stat(&metric("aws", "body_too_large")), Some(1));

    // STS refuses (unknown base key): 503 with STS's reason, no secret in it.
    let config = json!({"region": "us-east-1", "service": "sts", "credentials": {
        "access_key_id": "AKIAUNKNOWN0000000000", "secret_access_key": "not-the-secret",
        "assume_role": {"role_arn": setup.role_arn, "cluster": "sts"}}});
    let envoy_bad_sts = envoy(&moto, &setup, config, None, false);
    let (status, body) = caller_identity(&envoy_bad_sts, "front").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("STS answered 403"), "{body}");
    assert!(!body.contains("not-the-secret") && !envoy_bad_sts.log().contains("not-the-secret"));
    assert!(envoy_bad_sts.stat(&metric("aws", "sts.failed")).unwrap() >= 1);

    // The access log names the filter's reasons.
    assert!(envoy_without.wait_for_access_log(" 503 aws_credentials_unavailable"), "{}", envoy_without.access_log());
    assert!(envoy_without.wait_for_access_log(" 413 aws_body_too_large"), "{}", envoy_without.access_log());
    assert!(envoy_bad_sts.wait_for_access_log(" 503 aws_credentials_unavailable"), "{}", envoy_bad_sts.access_log());
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_sts_web_identity_with_the_token_from_the_environment() {
    // moto wants an Authorization header on AssumeRoleWithWebIdentity (AWS does not: the call is unsigned), so
    // this one runs with signature checking off. The identity moto reports is still the one behind the
    // credentials the filter fetched and used: the role session named here.
    let moto = Moto::start();
    let setup = moto.setup_with_auth(false);
    let config = json!({"region": "us-east-1", "service": "sts", "credentials": {
        "web_identity": {"role_arn": setup.role_arn, "cluster": "sts", "session_name": "web-test"}}});
    let envoy = EnvoyConfig::new("aws.yaml")
        .upstream(5000, moto.port())
        .plugin_config("aws", config)
        .env("AWS_WEB_IDENTITY_TOKEN", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2ln")
        .start();
    let (status, body) = caller_identity(&envoy, "front").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("assumed-role/app/web-test"), "{body}");
    assert_eq!(envoy.stat(&metric("aws", "sts.refreshed")), Some(1));
}

/// A container-credentials endpoint (what ECS serves at 169.254.170.2): a small Python HTTP server that answers
/// `GET /v2/credentials/test` carrying `Authorization: <token>` with the given credentials, and 401 otherwise.
struct EcsEndpoint {
    child: std::process::Child,
    port: u16,
}

impl EcsEndpoint {
    fn start(credentials: &str, token: &str) -> EcsEndpoint {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let script = format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def log_message(self, *args):\n\
             \x20       pass\n\
             \x20   def do_GET(self):\n\
             \x20       ok = self.path == '/v2/credentials/test' and self.headers.get('Authorization') == {token:?}\n\
             \x20       body = {credentials:?}.encode() if ok else b'{{}}'\n\
             \x20       self.send_response(200 if ok else 401)\n\
             \x20       self.send_header('content-length', str(len(body)))\n\
             \x20       self.end_headers()\n\
             \x20       self.wfile.write(body)\n\
             http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
        );
        let python = integration_tests::paths::project_root().join(".venv/bin/python");
        let child = std::process::Command::new(python).arg("-c").arg(script).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the ECS endpoint did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        EcsEndpoint { child, port }
    }
}

impl Drop for EcsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_the_ecs_container_endpoint() {
    let moto = Moto::start();
    let setup = moto.setup();
    // Temporary credentials of the role, as ECS would hand them to a task (made with boto3 and the user's keys).
    let credentials = moto.python(&format!(
        "import boto3, json, os\n\
         c = boto3.client('sts', endpoint_url=os.environ['MOTO_URL'], region_name='us-east-1', \
         aws_access_key_id={:?}, aws_secret_access_key={:?})\n\
         r = c.assume_role(RoleArn={:?}, RoleSessionName='ecs-task')['Credentials']\n\
         print(json.dumps({{'AccessKeyId': r['AccessKeyId'], 'SecretAccessKey': r['SecretAccessKey'], \
         'Token': r['SessionToken'], 'Expiration': r['Expiration'].strftime('%Y-%m-%dT%H:%M:%SZ')}}))",
        setup.access_key_id, setup.secret_access_key, setup.role_arn
    ));
    let endpoint = EcsEndpoint::start(credentials.trim(), "task-token");
    let config = json!({"region": "us-east-1", "service": "sts", "credentials": {"ecs": {"cluster": "ecs"}}});
    let start = |token: &str| {
        EnvoyConfig::new("aws.yaml")
            .upstream(5000, moto.port())
            .upstream(8082, endpoint.port)
            .plugin_config("aws", config.clone())
            .env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/test")
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", token)
            .start()
    };
    let envoy = start("task-token");
    let (status, body) = caller_identity(&envoy, "front").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("assumed-role/app/ecs-task"), "{body}");

    // A wrong authorization token: the endpoint refuses, the client gets 503 with the reason.
    let refused = start("wrong-token");
    let (status, body) = caller_identity(&refused, "front").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("container-credentials endpoint answered 401"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_lambda_route() {
    // envoy-test/demo.yaml, the demo gateway, with its own aws plugin configuration.
    let moto = Moto::start();
    let setup = moto.setup();
    moto.python(&format!(
        "import boto3, io, os, zipfile\n\
         z = io.BytesIO()\nzipfile.ZipFile(z, 'w').writestr('index.py', 'def handler(e, c):\\n    return e\\n')\n\
         boto3.client('lambda', endpoint_url=os.environ['MOTO_URL'], region_name='us-east-1', \
         aws_access_key_id={:?}, aws_secret_access_key={:?}).create_function(FunctionName='demo', \
         Runtime='python3.12', Role={:?}, Handler='index.handler', Code={{'ZipFile': z.getvalue()}})",
        setup.access_key_id, setup.secret_access_key, setup.role_arn
    ));
    let envoy = EnvoyConfig::new("demo.yaml")
        .upstream(5000, moto.port())
        .env("AWS_ACCESS_KEY_ID", &setup.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &setup.secret_access_key)
        .start();
    let (status, _, body) = send("POST", format!("{}/aws/orders", envoy.url("front")), &[], r#"{"order": 42}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"order": 42}"#));
    assert_eq!(envoy.stat(&metric("aws", "rules")), Some(0));
    assert_eq!(envoy.stat(&metric("aws", "lambda.invoked")), Some(1));
}
