//! The nats filter through real Envoy (two workers) and a real nats-server, observed by a real subscriber
//! (async-nats): what arrives, on which subject, with which payload and headers; what is refused and why.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use base64::Engine;
use futures::StreamExt;
use integration_tests::nats_server::{NatsOptions, NatsServer};
use integration_tests::{EchoUpstream, Envoy, EnvoyConfig};
use serde_json::{json, Value};

/// The gateway of `envoy-test/nats.yaml` with its echo upstream and nats-server moved to the test's own.
fn gateway(nats: &NatsServer, echo: &EchoUpstream) -> EnvoyConfig {
    EnvoyConfig::new("nats.yaml").upstream(8081, echo.port()).upstream(4222, nats.port())
}

fn with_config(nats: &NatsServer, echo: &EchoUpstream, config: &Value) -> Envoy {
    gateway(nats, echo).plugin_config("nats", config).start()
}

async fn subscriber(client: &Client, subject: &str) -> Subscriber {
    let subscriber = client.subscribe(subject.to_string()).await.expect("subscribe");
    // The subscription is registered on the server before the test publishes anything.
    client.flush().await.expect("flush");
    subscriber
}

async fn next_message(subscriber: &mut Subscriber) -> Message {
    tokio::time::timeout(Duration::from_secs(20), subscriber.next())
        .await
        .expect("no message within 20s")
        .expect("subscription ended")
}

/// Nothing (more) arrives: the server has nothing queued for us after a flush and a grace period.
async fn assert_nothing_more(client: &Client, subscriber: &mut Subscriber) {
    client.flush().await.expect("flush");
    if let Ok(message) = tokio::time::timeout(Duration::from_millis(700), subscriber.next()).await {
        panic!("unexpected message: {message:?}");
    }
}

fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message.headers.as_ref()?.get(name).map(|value| value.as_str())
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    // The plugin `nats.yaml` names `nats`.
    envoy.stat(&format!("wasmcustom.nats.plugin=.=nats;.;{name}")).unwrap_or(0)
}

struct Answer {
    status: u16,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, body }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_with_subject_payload_and_headers_in_each_payload_mode() {
    let nats = NatsServer::start_default();
    let echo = EchoUpstream::start();
    let config = json!({
        "cluster": "nats_tunnel",
        "rules": [
            {"match": {"prefix": "/events/orders", "methods": ["POST"]},
             "subject": "orders.{header:x-tenant}.created", "payload": "body",
             "headers": ["x-request-id", "content-type"]},
            {"match": {"prefix": "/envelope/"},
             "subject": "env.{path:2}.{query:kind}.{method}.{route}", "payload": "envelope", "headers": "all"}
        ],
        "timeout": "5s"
    });
    let envoy = with_config(&nats, &echo, &config);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut orders = subscriber(&client, "orders.>").await;
    let mut envelopes = subscriber(&client, "env.>").await;
    let http = reqwest::Client::new();
    let url = envoy.url("front");

    // Body mode: the raw body, the selected headers, the subject from a header.
    let answer = send(
        http.post(format!("{url}/events/orders"))
            .header("x-tenant", "acme")
            .header("x-request-id", "req-1")
            .header("content-type", "application/json")
            .header("x-secret", "not forwarded")
            .body(r#"{"id": 1}"#),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body, json!({"subject": "orders.acme.created", "bytes": 9}));
    let message = next_message(&mut orders).await;
    assert_eq!(message.subject.as_str(), "orders.acme.created");
    assert_eq!(&message.payload[..], br#"{"id": 1}"#);
    assert_eq!(header(&message, "x-request-id"), Some("req-1"));
    assert_eq!(header(&message, "content-type"), Some("application/json"));
    assert_eq!(header(&message, "x-secret"), None);
    assert_eq!(header(&message, "x-tenant"), None);

    // Body mode with bytes that are not text, including CR LF and what looks like protocol: counted, not parsed.
    let binary: Vec<u8> = [&[0u8, 255, 13, 10][..], b"PUB evil 1\r\nx\r\n", &[0xc3, 0x28]].concat();
    let answer = send(http.post(format!("{url}/events/orders")).header("x-tenant", "beta").body(binary.clone())).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["bytes"], binary.len());
    let message = next_message(&mut orders).await;
    assert_eq!(message.subject.as_str(), "orders.beta.created");
    assert_eq!(&message.payload[..], &binary[..]);
    // Envoy gives every request an x-request-id; content-type was not sent, so it is not forwarded.
    assert!(header(&message, "x-request-id").is_some_and(|id| !id.is_empty()));
    assert_eq!(header(&message, "content-type"), None);

    // Envelope mode, binary body: JSON with method, path, query, all headers and the body in base64; the
    // subject from a path segment, a query parameter, the method and Envoy's route name.
    let answer = send(
        http.put(format!("{url}/envelope/orders?kind=created&x=1"))
            .header("x-custom", "v1")
            .header("content-type", "application/octet-stream")
            .body(binary.clone()),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["subject"], "env.orders.created.PUT.echo");
    let message = next_message(&mut envelopes).await;
    assert_eq!(message.subject.as_str(), "env.orders.created.PUT.echo");
    assert_eq!(answer.body["bytes"], message.payload.len());
    let envelope: Value = serde_json::from_slice(&message.payload).expect("envelope is JSON");
    assert_eq!(envelope["method"], "PUT");
    assert_eq!(envelope["path"], "/envelope/orders");
    assert_eq!(envelope["query"], "kind=created&x=1");
    assert_eq!(envelope["headers"]["x-custom"], "v1");
    assert_eq!(envelope["headers"]["content-type"], "application/octet-stream");
    assert!(envelope["headers"].get(":path").is_none(), "pseudo-headers are not headers: {envelope}");
    assert!(envelope.get("body").is_none());
    let decoded = base64::engine::general_purpose::STANDARD.decode(envelope["body_base64"].as_str().unwrap()).unwrap();
    assert_eq!(decoded, binary);
    assert_eq!(header(&message, "x-custom"), Some("v1"));

    // Envelope mode, text body.
    let answer = send(http.post(format!("{url}/envelope/a?kind=b")).body("héllo")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let message = next_message(&mut envelopes).await;
    assert_eq!(message.subject.as_str(), "env.a.b.POST.echo");
    let envelope: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(envelope["body"], "héllo");
    assert_eq!(envelope["query"], "kind=b");

    // Requests that match no rule pass through untouched (a rule's method is part of its match).
    let response = http.get(format!("{url}/events/orders")).header("x-tenant", "acme").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["path"], "/events/orders");
    let response = http.post(format!("{url}/elsewhere")).body("to the upstream").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["body"], "to the upstream");
    assert_eq!(echo.received().len(), 2, "only the two unmatched requests reach the upstream");

    assert_nothing_more(&client, &mut orders).await;
    assert_nothing_more(&client, &mut envelopes).await;
    assert_eq!(stat(&envoy, "published"), 4);
    assert_eq!(envoy.stat("wasmcustom.nats.plugin=.=nats;.;rules"), Some(2));
    let envelope_bytes = answer.body["bytes"].as_u64().unwrap();
    assert!(stat(&envoy, "published_bytes") > 9 + binary.len() as u64 + envelope_bytes);
    for event in ["invalid_request", "too_large", "rejected", "unavailable", "timeout", "internal_error"] {
        assert_eq!(stat(&envoy, event), 0, "{event}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_publishes_arrive_exactly_once() {
    const N: usize = 1000;
    let nats = NatsServer::start_default();
    let echo = EchoUpstream::start();
    let config = json!({"cluster": "nats_tunnel", "timeout": "20s",
                        "rules": [{"match": {"prefix": "/load"}, "subject": "load.{header:x-worker}"}]});
    let envoy = with_config(&nats, &echo, &config);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut load = subscriber(&client, "load.*").await;

    // Collect while publishing, so that the subscriber's buffer never overflows.
    let collector = tokio::spawn(async move {
        let mut received = Vec::new();
        while received.len() < N {
            match tokio::time::timeout(Duration::from_secs(60), load.next()).await {
                Ok(Some(message)) => received.push(message),
                _ => break,
            }
        }
        (received, load)
    });

    let http = reqwest::Client::builder().pool_max_idle_per_host(N).build().unwrap();
    let url = envoy.url("front");
    let requests = (0..N).map(|i| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let response = http
                .post(format!("{url}/load"))
                .header("x-worker", format!("w{}", i % 7))
                .body(format!("message-{i}"))
                .send()
                .await
                .expect("request");
            (i, response.status().as_u16(), response.text().await.unwrap_or_default())
        }
    });
    let started = std::time::Instant::now();
    let answers = futures::future::join_all(requests).await;
    let elapsed = started.elapsed();
    let failures: Vec<_> = answers.iter().filter(|(_, status, _)| *status != 202).take(5).collect();
    assert!(failures.is_empty(), "not every publish got 202: {failures:?}");

    let (received, mut load) = collector.await.unwrap();
    assert_nothing_more(&client, &mut load).await;
    let payloads: Vec<String> = received.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();
    let unique: HashSet<&String> = payloads.iter().collect();
    let expected: HashSet<String> = (0..N).map(|i| format!("message-{i}")).collect();
    println!(
        "{N} published (all answered within {elapsed:?}), {} received, {} duplicates",
        payloads.len(),
        payloads.len() - unique.len()
    );
    assert_eq!(payloads.len(), N, "received count");
    assert_eq!(unique.len(), N, "duplicates");
    assert_eq!(unique.into_iter().cloned().collect::<HashSet<_>>(), expected);
    for message in &received {
        let i: usize = String::from_utf8_lossy(&message.payload).trim_start_matches("message-").parse().unwrap();
        assert_eq!(message.subject.as_str(), format!("load.w{}", i % 7));
    }
    assert_eq!(stat(&envoy, "published"), N as u64);
    // Both Envoy workers took connections (and so ran publishes in their own Wasm VMs).
    // (Listener stats are named after the configured address, which the harness set to port 0.)
    let stats = envoy.stats();
    for worker in ["worker_0", "worker_1"] {
        let connections: u64 = stats
            .iter()
            .filter(|(name, _)| name.starts_with("listener.127.0.0.1_"))
            .filter(|(name, _)| name.ends_with(&format!(".{worker}.downstream_cx_total")))
            .map(|(_, n)| n)
            .sum();
        println!("front listener connections on {worker}: {connections}");
        assert!(connections > 0, "{worker} took no connection");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_jetstream_every_202_is_in_the_stream() {
    const N: usize = 200;
    let nats = NatsOptions::new().jetstream().start();
    let echo = EchoUpstream::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let jetstream = async_nats::jetstream::new(client.clone());
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".to_string(),
            subjects: vec!["js.orders.>".to_string()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    let config = json!({"cluster": "nats_tunnel", "timeout": "10s",
                        "rules": [{"match": {"prefix": "/js/"}, "subject": "js.orders.{path:2}"}]});
    let envoy = with_config(&nats, &echo, &config);
    let http = reqwest::Client::new();
    let url = envoy.url("front");
    let requests = (0..N).map(|i| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let response = http.post(format!("{url}/js/o{i}")).body(format!("order-{i}")).send().await.unwrap();
            (i, response.status().as_u16())
        }
    });
    let answers = futures::future::join_all(requests).await;
    let accepted: HashSet<String> =
        answers.iter().filter(|(_, status)| *status == 202).map(|(i, _)| format!("order-{i}")).collect();
    assert_eq!(accepted.len(), N, "every publish was accepted: {answers:?}");

    // The stream stores asynchronously after the server accepted the publish: wait until it has them all.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut stored = 0;
    while std::time::Instant::now() < deadline {
        stored = stream.get_info().await.expect("stream info").state.messages;
        if stored >= N as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, N as u64, "messages in the stream");
    let mut in_stream = HashSet::new();
    for sequence in 1..=stored {
        let message = stream.get_raw_message(sequence).await.expect("stream message");
        let payload = String::from_utf8(message.payload.to_vec()).unwrap();
        let i = payload.trim_start_matches("order-");
        assert_eq!(message.subject.as_str(), format!("js.orders.o{i}"));
        in_stream.insert(payload);
    }
    assert_eq!(in_stream, accepted, "the stream holds exactly the accepted publishes");
    assert_eq!(stat(&envoy, "published"), N as u64);
}

/// 10 B fits in nats-server's first read of the connection; the larger bodies do not.
const AUTH_BODY_SIZES: [usize; 4] = [10, 1024, 64 * 1024, 512 * 1024];

#[tokio::test(flavor = "multi_thread")]
async fn auth_right_credentials_publish_and_wrong_ones_get_502_with_the_server_reason() {
    let echo = EchoUpstream::start();
    let http = reqwest::Client::new();

    // User and password, the password from the environment given to the VM.
    let nats = NatsOptions::new().user("gw", "s3cret pass").start();
    let client = async_nats::ConnectOptions::with_user_and_password("gw".into(), "s3cret pass".into())
        .connect(nats.url())
        .await
        .expect("connect");
    let mut subscription = subscriber(&client, "auth.>").await;
    let config = |auth: Value| {
        json!({"cluster": "nats_tunnel", "auth": auth, "timeout": "5s",
               "rules": [{"match": {"prefix": "/p"}, "subject": "auth.ok"}]})
    };
    let envoy = gateway(&nats, &echo)
        .plugin_config("nats", config(json!({"user": "gw", "password_env": "NATS_PASSWORD"})))
        .env("NATS_PASSWORD", "s3cret pass")
        .start();
    let answer = send(http.post(format!("{}/p", envoy.url("front"))).body("with password")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(&next_message(&mut subscription).await.payload[..], b"with password");
    // Bodies of every size are published: nats-server reads the whole message.
    for (i, size) in AUTH_BODY_SIZES.into_iter().enumerate() {
        let body = vec![b'a' + i as u8; size];
        let answer = send(http.post(format!("{}/p", envoy.url("front"))).body(body.clone())).await;
        assert_eq!(answer.status, 202, "{size} bytes: {}", answer.body);
        assert_eq!(answer.body["bytes"], size);
        assert!(next_message(&mut subscription).await.payload[..] == body[..], "{size} bytes arrive intact");
    }
    assert!(!envoy.log().contains("s3cret"), "the password is not logged");
    drop(envoy);

    // A wrong password: nats-server answers -ERR and closes the connection after CONNECT, before reading the
    // message; for a body that is still unread in its socket the kernel resets the connection and the -ERR is
    // lost. Every size still gets the server's reason (each twice, so that a worker which already knows the
    // server's max_payload answers too).
    let envoy = gateway(&nats, &echo)
        .plugin_config("nats", config(json!({"user": "gw", "password_env": "NATS_PASSWORD"})))
        .env("NATS_PASSWORD", "wrong")
        .start();
    for size in AUTH_BODY_SIZES.into_iter().chain(AUTH_BODY_SIZES) {
        let answer = send(http.post(format!("{}/p", envoy.url("front"))).body(vec![b'w'; size])).await;
        assert_eq!(answer.status, 502, "{size} bytes: {}", answer.body);
        assert_eq!(answer.body["filter"], "nats");
        assert_eq!(
            answer.body["error"], "the NATS server refused the publish: Authorization Violation",
            "{size} bytes"
        );
    }
    let refused = 2 * AUTH_BODY_SIZES.len() as u64;
    assert_eq!(stat(&envoy, "rejected"), refused);
    assert_eq!(stat(&envoy, "unavailable"), 0);
    assert_eq!(stat(&envoy, "published"), 0);
    assert_logged(&envoy, "POST /p", "502 nats_rejected -");
    drop(envoy);

    // No credentials at all: the same refusal.
    let envoy = gateway(&nats, &echo).plugin_config("nats", config(Value::Null)).start();
    let answer = send(http.post(format!("{}/p", envoy.url("front"))).body("anonymous")).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert!(answer.body["error"].as_str().unwrap().contains("Authorization Violation"));
    drop(envoy);
    assert_nothing_more(&client, &mut subscription).await;

    // A variable the VM was not given makes Envoy refuse the configuration, naming the field.
    let log = gateway(&nats, &echo)
        .plugin_config("nats", config(json!({"user": "gw", "password_env": "NATS_PASSWORD"})))
        .start_expecting_failure();
    assert!(
        log.contains(
            r#"nats: invalid configuration: auth.password_env: environment variable "NATS_PASSWORD" is not set"#
        ),
        "{log}"
    );

    // A token, literally and from the environment.
    let nats = NatsOptions::new().token("t0ken").start();
    let client = async_nats::ConnectOptions::with_token("t0ken".into()).connect(nats.url()).await.expect("connect");
    let mut subscription = subscriber(&client, "auth.>").await;
    let envoy = gateway(&nats, &echo)
        .plugin_config("nats", config(json!({"token_env": "NATS_TOKEN"})))
        .env("NATS_TOKEN", "t0ken")
        .start();
    let answer = send(http.post(format!("{}/p", envoy.url("front"))).body("with token")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(&next_message(&mut subscription).await.payload[..], b"with token");
    drop(envoy);
    let envoy = gateway(&nats, &echo).plugin_config("nats", config(json!({"token": "nope"}))).start();
    for body in [b"wrong token".to_vec(), vec![b't'; 64 * 1024]] {
        let answer = send(http.post(format!("{}/p", envoy.url("front"))).body(body)).await;
        assert_eq!(answer.status, 502, "{}", answer.body);
        assert!(answer.body["error"].as_str().unwrap().contains("Authorization Violation"), "{}", answer.body);
    }
    assert_nothing_more(&client, &mut subscription).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subject_injection_attempts_get_400_and_publish_nothing() {
    let nats = NatsServer::start_default();
    let echo = EchoUpstream::start();
    let config = json!({"cluster": "nats_tunnel", "timeout": "5s", "rules": [
        {"match": {"prefix": "/h"}, "subject": "tenant.{header:x-tenant}.created"},
        {"match": {"prefix": "/q"}, "subject": "tenant.{query:t}.created"},
        {"match": {"prefix": "/p/"}, "subject": "tenant.{path:2}.created"}
    ]});
    let envoy = with_config(&nats, &echo, &config);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    // Everything published anywhere on this server.
    let mut everything = subscriber(&client, ">").await;
    let http = reqwest::Client::new();
    let url = envoy.url("front");

    let header_attacks: [&[u8]; 8] = [b"a b", b"a\tb", b"*", b">", b"a.b", b"a.*", b"acme.>", b"caf\xc3\xa9"];
    let query_attacks = [
        "a%0D%0APUB%20other%203%0D%0Axyz",
        "a%0Ab",
        "a%0Db",
        "a%20b",
        "a+b",
        "%2A",
        "%3E",
        "a.b",
        "a%2Eb",
        "a%00b",
        "",
    ];
    let path_attacks = ["a%0D%0APUB%20other%203%0D%0Axyz", "a%20b", "a%2Eb", "%2A", "%3E", "a%09b", "%FF"];
    let mut attempts = 0;
    for value in header_attacks {
        let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
        let answer = send(http.post(format!("{url}/h")).header("x-tenant", value.clone()).body("x")).await;
        assert_eq!(answer.status, 400, "{value:?}: {}", answer.body);
        assert!(answer.body["error"].as_str().unwrap().contains("{header:x-tenant}"), "{}", answer.body);
        attempts += 1;
    }
    for value in query_attacks {
        let answer = send(http.post(format!("{url}/q?t={value}")).body("x")).await;
        assert_eq!(answer.status, 400, "{value:?}: {}", answer.body);
        attempts += 1;
    }
    for value in path_attacks {
        let answer = send(http.post(format!("{url}/p/{value}")).body("x")).await;
        assert_eq!(answer.status, 400, "{value:?}: {}", answer.body);
        attempts += 1;
    }
    // A missing value is refused the same way.
    let answer = send(http.post(format!("{url}/h")).body("x")).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    attempts += 1;

    // A bare CR inside a header value: Envoy's HTTP/1 codec lets it through to the filters, and the filter
    // refuses it like the others.
    let raw =
        "POST /h HTTP/1.1\r\nhost: x\r\nx-tenant: a\rPUB other 1\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx";
    let (status, text) = raw_http(envoy.port("front"), raw.as_bytes());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#""filter":"nats""#), "{text}");
    attempts += 1;

    // Then one good publish: it is the only message the server saw.
    let answer = send(http.post(format!("{url}/q?t=acme")).body("good")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let message = next_message(&mut everything).await;
    assert_eq!(message.subject.as_str(), "tenant.acme.created");
    assert_eq!(&message.payload[..], b"good");
    assert_nothing_more(&client, &mut everything).await;
    assert_eq!(stat(&envoy, "invalid_request"), attempts);
    assert_eq!(stat(&envoy, "published"), 1);
    assert_logged(&envoy, "POST /h", "400 nats_bad_request -");
    assert_logged(&envoy, "POST /q?t=acme", "202 nats_published -");
    assert!(echo.received().is_empty(), "refused requests do not reach the upstream either");
}

/// Sends raw bytes to a listener (one request, `connection: close` or an error ends it) and returns the HTTP
/// status and the rest of the answer.
fn raw_http(port: u16, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_down_gives_503_or_504_and_publishing_resumes_when_it_is_back() {
    let mut nats = NatsServer::start_default();
    let echo = EchoUpstream::start();
    // The configuration of envoy-test/nats.yaml as it is: POST /events/<name> -> events.<name>, timeout 2s.
    let envoy = gateway(&nats, &echo).start();
    let http = reqwest::Client::new();
    let publish = |body: &'static str| http.post(format!("{}/events/status", envoy.url("front"))).body(body);

    let answer = send(publish("before")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);

    // Stopped: connection refused -> 503.
    nats.stop();
    for _ in 0..3 {
        let answer = send(publish("while stopped")).await;
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert_eq!(answer.body["filter"], "nats");
    }
    assert_eq!(stat(&envoy, "unavailable"), 3);
    assert_logged(&envoy, "POST /events/status", "503 nats_unavailable -");

    // Started again on the same port: publishing resumes, same Envoy.
    nats.start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut events = subscriber(&client, "events.>").await;
    let answer = send(publish("after restart")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let message = next_message(&mut events).await;
    assert_eq!(message.subject.as_str(), "events.status");
    assert_eq!(&message.payload[..], b"after restart");

    // Frozen (accepts connections, answers nothing): 504 once the filter's timeout has passed.
    nats.pause();
    let answer = send(publish("while frozen")).await;
    nats.resume();
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert!(answer.body["error"].as_str().unwrap().contains("timeout"), "{}", answer.body);
    assert_eq!(stat(&envoy, "timeout"), 1);
    assert_logged(&envoy, "POST /events/status", "504 nats_timeout -");

    // And back to normal.
    let answer = send(publish("after thaw")).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    // The frozen publish may or may not have been processed after the thaw (see README: a 504 is "unknown").
    let mut payloads = Vec::new();
    while payloads.last().map(Vec::as_slice) != Some(&b"after thaw"[..]) {
        payloads.push(next_message(&mut events).await.payload.to_vec());
    }
    assert!(payloads.len() <= 2, "{payloads:?}");
    assert_eq!(stat(&envoy, "published"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413() {
    // The server accepts at most 512 bytes per message; the filter at most 1 KiB of body.
    let nats = NatsOptions::new().max_payload(512).start();
    let echo = EchoUpstream::start();
    let config = json!({"cluster": "nats_tunnel", "timeout": "5s", "max_body": "1KiB",
                        "rules": [{"match": {"prefix": "/big"}, "subject": "big"}]});
    let envoy = with_config(&nats, &echo, &config);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut big = subscriber(&client, "big").await;
    let http = reqwest::Client::new();
    let url = format!("{}/big", envoy.url("front"));

    // Over max_body with a content-length: refused before buffering.
    let answer = send(http.post(&url).body(vec![b'x'; 2048])).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body["error"].as_str().unwrap().contains("1024 bytes"), "{}", answer.body);

    // Over max_body without a content-length (chunked): refused while buffering.
    let chunk = format!("190\r\n{}\r\n", "y".repeat(400));
    let request = format!(
        "POST /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(4)
    );
    let (status, text) = raw_http(envoy.port("front"), request.as_bytes());
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("body larger than the limit of 1024 bytes"), "{text}");

    // Within max_body but over the server's max_payload: 413 too. The server refuses the message and closes the
    // connection before reading it, which Envoy reports as a reset (its -ERR is usually lost); the filter then
    // reads the server's INFO with a probe that publishes nothing, and from then on knows the limit and refuses
    // without a round trip.
    let answer = send(http.post(&url).body(vec![b'z'; 800])).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    let error = answer.body["error"].as_str().unwrap();
    assert!(error.contains("max_payload of 512 bytes") || error.contains("Maximum Payload"), "{error}");
    let answer = send(http.post(&url).body(vec![b'z'; 600])).await;
    assert_eq!(answer.status, 413, "{}", answer.body);

    // What fits is published.
    let answer = send(http.post(&url).body(vec![b'k'; 500])).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let message = next_message(&mut big).await;
    assert_eq!(message.payload.len(), 500);
    // After that publish the limit is known to this worker: a second 600-byte body is refused by the filter
    // with the server's max_payload in the message (a worker that has not seen an INFO yet asks the server).
    let mut saw_known_limit = false;
    for _ in 0..6 {
        let answer = send(http.post(&url).body(vec![b'z'; 600])).await;
        assert_eq!(answer.status, 413, "{}", answer.body);
        saw_known_limit |= answer.body["error"].as_str().unwrap().contains("max_payload of 512 bytes");
    }
    assert!(saw_known_limit, "the filter never used the server's max_payload from INFO");
    assert_nothing_more(&client, &mut big).await;
    assert_eq!(stat(&envoy, "too_large"), 10);
    assert_eq!(stat(&envoy, "published"), 1);
    assert_logged(&envoy, "POST /big", "413 nats_too_large -");
    assert!(echo.received().is_empty(), "no refused or published request reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_tunnel_cluster_gives_503() {
    let nats = NatsServer::start_default();
    let echo = EchoUpstream::start();
    let config = json!({"cluster": "no_such_cluster", "rules": [{"match": {"prefix": "/x"}, "subject": "x"}]});
    let envoy = with_config(&nats, &echo, &config);
    let answer = send(reqwest::Client::new().post(format!("{}/x", envoy.url("front"))).body("x")).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body["error"].as_str().unwrap().contains("no_such_cluster"), "{}", answer.body);
    assert_eq!(stat(&envoy, "unavailable"), 1);
    assert_logged(&envoy, "POST /x", "503 nats_unavailable -");
    let counts: BTreeMap<String, u64> =
        envoy.stats().into_iter().filter(|(name, _)| name.starts_with("wasmcustom.nats.plugin=.=nats;.;")).collect();
    assert_eq!(counts.get("wasmcustom.nats.plugin=.=nats;.;published"), Some(&0), "{counts:?}");
}

/// Sends a request's head and the first part of its body, waits, then the rest; returns the status and answer.
async fn slow_request(port: u16, head: &str, first: &[u8], pause: Duration, rest: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(pause).await;
    stream.write_all(rest).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await.expect("answer").unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// An HTTP/2 POST (prior knowledge) whose body is `chunks` followed by trailers.
async fn h2_post_with_trailers(port: u16, path: &str, chunks: Vec<Vec<u8>>) -> Answer {
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("x-checksum", hyper::header::HeaderValue::from_static("abc"));
    let mut frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> =
        chunks.into_iter().map(|chunk| Ok(Frame::data(bytes::Bytes::from(chunk)))).collect();
    frames.push(Ok(Frame::trailers(trailers)));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let request = hyper::Request::post(format!("http://127.0.0.1:{port}{path}")).body(body).unwrap();
    let response = sender.send_request(request).await.expect("HTTP/2 request");
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.expect("HTTP/2 answer").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// The access log has a line for `method path` with this status and response-code details.
fn assert_logged(envoy: &Envoy, method_path: &str, outcome: &str) {
    let expected = format!("{method_path} {outcome} ");
    assert!(envoy.wait_for_access_log(&expected), "no {expected:?} in the access log:\n{}", envoy.access_log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_published_request_never_reaches_the_upstream_and_unmatched_bodies_reach_it_intact() {
    let nats = NatsServer::start_default();
    let echo = EchoUpstream::start();
    // envoy-test/nats.yaml as it is: POST /events/<name> -> events.<name>, max_body 1MiB; no buffer filter.
    let envoy = gateway(&nats, &echo).start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut events = subscriber(&client, "events.>").await;
    let http = reqwest::Client::new();
    let url = envoy.url("front");
    let port = envoy.port("front");

    // The body arrives in two parts with a pause between: the headers are held meanwhile (nothing reaches the
    // upstream, nothing is published), then the whole body is published.
    let head = "POST /events/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\nconnection: close\r\n\r\n";
    let slow = slow_request(port, head, b"hello", Duration::from_millis(800), b" world");
    let watch = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        echo.received().len()
    };
    let ((status, text), seen_meanwhile) = tokio::join!(slow, watch);
    assert_eq!(status, 202, "{text}");
    assert_eq!(seen_meanwhile, 0, "the upstream saw the request while its body was arriving");
    let message = next_message(&mut events).await;
    assert_eq!(message.subject.as_str(), "events.slow");
    assert_eq!(&message.payload[..], b"hello world");

    // A large body (300 KB, many chunks inside Envoy) and a chunked one are published whole.
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let answer = send(http.post(format!("{url}/events/large")).body(large.clone())).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["bytes"], large.len());
    assert_eq!(&next_message(&mut events).await.payload[..], &large[..]);
    let chunked = "POST /events/chunked HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";
    let (status, text) =
        slow_request(port, chunked, b"4\r\nabcd\r\n", Duration::from_millis(300), b"3\r\nefg\r\n0\r\n\r\n").await;
    assert_eq!(status, 202, "{text}");
    assert_eq!(&next_message(&mut events).await.payload[..], b"abcdefg");

    // A client that waits for `100 Continue` (curl does for bodies over 1 KiB) gets it while the headers are held.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = "POST /events/expect HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\
                    connection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut interim = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim)).await.expect("100").unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(b"ping").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.expect("answer").unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 202 "), "{answer}");
        assert_eq!(&next_message(&mut events).await.payload[..], b"ping");
    }

    // A body that ends with trailers (HTTP/2): the trailers end it, and all of it is published.
    let answer =
        h2_post_with_trailers(port, "/events/trailers", vec![b"part one, ".to_vec(), b"part two".to_vec()]).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body, json!({"subject": "events.trailers", "bytes": 18}));
    assert_eq!(&next_message(&mut events).await.payload[..], b"part one, part two");

    assert!(echo.received().is_empty(), "published requests reached the upstream: {:?}", echo.received());
    assert_nothing_more(&client, &mut events).await;

    // Requests that match no rule pass untouched, bodies included: a 300 KB binary body with its
    // content-length, a chunked one, one with trailers, and a GET (the rule is for POST).
    let response = http.post(format!("{url}/elsewhere")).body(large.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, text) = slow_request(
        port,
        "POST /other HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5\r\nfirst\r\n",
        Duration::from_millis(300),
        b"6\r\nsecond\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer = h2_post_with_trailers(port, "/third", vec![b"x".repeat(70_000), b"y".repeat(10)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response = http.get(format!("{url}/events/get")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let received = echo.received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/elsewhere", "/other", "/third", "/events/get"], "only the unmatched requests");
    assert_eq!(received[0].body, large);
    assert_eq!(received[0].header("content-length"), Some("300000"));
    assert_eq!(received[1].body, b"firstsecond");
    assert_eq!(received[2].body, [b"x".repeat(70_000), b"y".repeat(10)].concat());
    assert!(received[3].body.is_empty());
    assert_eq!(stat(&envoy, "published"), 5);

    // The access log names every outcome, and a published request had no upstream host.
    assert_logged(&envoy, "POST /events/slow", "202 nats_published -");
    assert_logged(&envoy, "POST /events/trailers", "202 nats_published -");
    assert_logged(&envoy, "POST /elsewhere", &format!("200 via_upstream 127.0.0.1:{}", echo.port()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_envoys_buffer_limit_is_refused_by_envoy_before_the_filter_sees_it_whole() {
    // max_body above the listener's per_connection_buffer_limit_bytes (1 MiB by default): Envoy stops buffering
    // the held request first and answers 413 itself. Nothing is published, nothing reaches the upstream.
    let nats = NatsServer::start_default();
    let echo = EchoUpstream::start();
    let config = json!({"cluster": "nats_tunnel", "max_body": "4MiB",
                        "rules": [{"match": {"prefix": "/events/"}, "subject": "events.{path:2}"}]});
    let envoy = with_config(&nats, &echo, &config);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut events = subscriber(&client, "events.>").await;
    let url = envoy.url("front");
    let response =
        reqwest::Client::new().post(format!("{url}/events/huge")).body(vec![b'h'; 2 << 20]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_logged(&envoy, "POST /events/huge", "413 request_payload_too_large -");
    assert_nothing_more(&client, &mut events).await;
    assert!(echo.received().is_empty());
    assert_eq!(stat(&envoy, "published"), 0);
}
