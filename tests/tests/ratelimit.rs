//! The ratelimit filter through real Envoy (two workers): exact limits across workers, headers, shadow mode,
//! gRPC status, key handling, the bounded bucket table (slot reuse, a million distinct keys, reloads), and global
//! limits through a real rate-limit service (tonic + limitador) shared by two Envoys.

use std::time::{Duration, Instant};

use integration_tests::rls::{limit_per_entry, proto, Mode, RateLimitServer};
use integration_tests::{Build, EchoUpstream, Envoy, EnvoyConfig};
use serde_json::{json, Value};

const RLS_PORT: u16 = 8089;
const GRPC_UPSTREAM_PORT: u16 = 8090;

fn start(echo: &EchoUpstream, config: Value) -> Envoy {
    EnvoyConfig::new("ratelimit.yaml").upstream(8081, echo.port()).plugin_config("ratelimit", config).start()
}

/// The access log has a line with `method path status details`.
fn assert_access_log(envoy: &Envoy, expected: &str) {
    assert!(envoy.wait_for_access_log(expected), "no {expected:?} in the access log:\n{}", envoy.access_log());
}

/// A rule's counter of the plugin `ratelimit.yaml` names `ratelimit`.
fn counter(envoy: &Envoy, rule: &str, event: &str) -> u64 {
    envoy.stat(&format!("wasmcustom.ratelimit.plugin=.=ratelimit;.;rule=.={rule};.;{event}")).unwrap_or(0)
}

/// A plugin-wide metric of the plugin `ratelimit`.
fn plugin_metric(event: &str) -> String {
    format!("wasmcustom.ratelimit.plugin=.=ratelimit;.;{event}")
}

/// What a burst of load saw. Envoy decided every request between `inner` and `outer` at the latest/earliest:
/// `inner` runs from the first answer to the last send, `outer` from the first send to the last answer.
struct Load {
    admitted: u64,
    rejected: u64,
    inner: Duration,
    outer: Duration,
}

/// Sends requests from `connections` concurrent clients (one connection each) for `duration`.
async fn hammer(url: &str, api_key: Option<&str>, connections: usize, duration: Duration) -> Load {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url = url.to_string();
        let key = api_key.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let (mut ok, mut limited) = (0u64, 0u64);
            let (mut first_answer, mut last_send) = (None, started);
            while Instant::now() < deadline {
                let mut request = client.get(&url);
                if let Some(key) = &key {
                    request = request.header("x-api-key", key);
                }
                last_send = Instant::now();
                let status = request.send().await.unwrap().status().as_u16();
                first_answer.get_or_insert_with(Instant::now);
                match status {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (ok, limited, first_answer.unwrap_or(last_send), last_send)
        }));
    }
    let mut load = Load { admitted: 0, rejected: 0, inner: Duration::ZERO, outer: Duration::ZERO };
    let (mut first_answer, mut last_send) = (None::<Instant>, started);
    for task in tasks {
        let (ok, limited, first, last) = task.await.unwrap();
        load.admitted += ok;
        load.rejected += limited;
        first_answer = Some(first_answer.map_or(first, |f| f.min(first)));
        last_send = last_send.max(last);
    }
    load.outer = started.elapsed();
    load.inner = last_send.saturating_duration_since(first_answer.unwrap_or(started));
    load
}

/// Asserts the GCRA bound: admitted <= R*T + B (T: the outer span), and at least 99% of R*T + B with T the
/// inner span (a saturated bucket admits that many at least).
fn assert_exact(label: &str, load: &Load, rate: f64, burst: f64) {
    let ceiling = rate * load.outer.as_secs_f64() + burst;
    let floor = rate * load.inner.as_secs_f64() + burst;
    println!(
        "{label}: admitted {} (rejected {}); R*T + B = {floor:.1} .. {ceiling:.1} for T = {:.3}s .. {:.3}s",
        load.admitted,
        load.rejected,
        load.inner.as_secs_f64(),
        load.outer.as_secs_f64()
    );
    assert!(load.rejected > load.admitted, "{label}: the load must exceed the limit");
    assert!((load.admitted as f64) <= ceiling, "{label}: admitted {} > R*T + B = {ceiling:.1}", load.admitted);
    assert!((load.admitted as f64) >= floor * 0.99 - 1.0, "{label}: admitted {} < 99% of {floor:.1}", load.admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_is_exact_across_workers() {
    let echo = EchoUpstream::start();
    let config = json!({"rules": [{"name": "all", "limits": [{"requests": 100, "per": "1s", "burst": 50}]}]});
    let envoy = start(&echo, config);
    let load = hammer(&format!("{}/x", envoy.url("front")), None, 16, Duration::from_secs(3)).await;
    assert_exact("one bucket", &load, 100.0, 50.0);
    assert_eq!(counter(&envoy, "all", "allowed"), load.admitted);
    assert_eq!(counter(&envoy, "all", "limited"), load.rejected);
    // Both workers took connections, so the bucket really was shared.
    for worker in ["worker_0", "worker_1"] {
        // Listener stats are named after the configured address (port 0: the kernel picked the real one).
        let stat = format!("listener.127.0.0.1_0.{worker}.downstream_cx_total");
        assert!(
            envoy.stat(&stat).unwrap_or(0) > 0,
            "{stat} is 0: {:?}",
            envoy.stats().keys().filter(|k| k.contains("worker")).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_limits_are_exact_for_two_keys_at_once() {
    let echo = EchoUpstream::start();
    let config = json!({"rules": [{"name": "per-key", "key": [{"header": "x-api-key"}],
                                   "limits": [{"requests": 50, "per": "1s", "burst": 25}]}]});
    let envoy = start(&echo, config);
    let url = format!("{}/x", envoy.url("front"));
    let (a, b) = tokio::join!(
        hammer(&url, Some("key-a"), 8, Duration::from_secs(3)),
        hammer(&url, Some("key-b"), 8, Duration::from_secs(3))
    );
    assert_exact("key-a", &a, 50.0, 25.0);
    assert_exact("key-b", &b, 50.0, 25.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn limited_requests_get_status_retry_after_and_ratelimit_headers() {
    let echo = EchoUpstream::start();
    let config = json!({"rules": [{"name": "slow", "limits": [{"requests": 2, "per": "10s"}]}],
                        "response": {"status": 429, "body": "slow down", "headers": true}});
    let envoy = start(&echo, config);
    let url = format!("{}/x", envoy.url("front"));
    let first = reqwest::get(&url).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(first.headers()["x-ratelimit-reset"], "5");
    let second = reqwest::get(&url).await.unwrap();
    assert_eq!(second.headers()["x-ratelimit-remaining"], "0");
    let third = reqwest::get(&url).await.unwrap();
    assert_eq!(third.status(), 429);
    let headers = third.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((4..=5).contains(&retry_after), "retry-after {retry_after}: the next request is earned 5s after the first");
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let reset: u64 = headers["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((9..=10).contains(&reset), "reset {reset}");
    assert_eq!(third.json::<Value>().await.unwrap(), json!({"error": "slow down", "filter": "ratelimit"}));
    assert_eq!(echo.received().len(), 2, "the limited request must not reach the upstream");
    assert_access_log(&envoy, "GET /x 429 ratelimit_limited");
    assert_access_log(&envoy, "GET /x 200 via_upstream");
    assert_eq!((counter(&envoy, "slow", "allowed"), counter(&envoy, "slow", "limited")), (2, 1));
    // Prometheus output drops the `wasmcustom.` prefix of Wasm metrics (not of a dynamic module's, even in the same
    // namespace); stats_tags make plugin and rule labels.
    let prefix = match envoy.build() {
        Build::Wasm => "",
        Build::DynamicModule => "envoy_wasmcustom_",
    };
    let prometheus = envoy.admin_get("/stats/prometheus");
    let line = format!(r#"{prefix}ratelimit_limited{{plugin="ratelimit",rule="slow"}} 1"#);
    assert!(prometheus.lines().any(|l| l == line), "{prometheus}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_rules_count_but_never_reject() {
    let echo = EchoUpstream::start();
    let config = json!({"rules": [{"name": "trial", "shadow": true, "limits": [{"requests": 1, "per": "1m"}]}]});
    let envoy = start(&echo, config);
    for _ in 0..5 {
        assert_eq!(reqwest::get(format!("{}/x", envoy.url("front"))).await.unwrap().status(), 200);
    }
    assert_eq!(counter(&envoy, "trial", "shadow_limited"), 4);
    assert_eq!(counter(&envoy, "trial", "limited"), 0);
    assert_eq!(counter(&envoy, "trial", "allowed"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_clients_get_resource_exhausted() {
    let echo = EchoUpstream::start();
    let upstream = RateLimitServer::start(vec![], Mode::Answer); // any real gRPC service will do as the upstream
    let config =
        json!({"rules": [{"name": "grpc", "match": {"route_name": "grpc"}, "limits": [{"requests": 1, "per": "1m"}]}]});
    let envoy = EnvoyConfig::new("ratelimit.yaml")
        .upstream(8081, echo.port())
        .upstream(GRPC_UPSTREAM_PORT, upstream.port())
        .plugin_config("ratelimit", config)
        .start();
    let mut client =
        proto::rate_limit_service_client::RateLimitServiceClient::connect(envoy.url("front")).await.unwrap();
    let request = || proto::RateLimitRequest { domain: "d".into(), descriptors: vec![], hits_addend: 1 };
    client.should_rate_limit(request()).await.expect("first call passes");
    let status = client.should_rate_limit(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate limited");
    assert_eq!(upstream.calls(), 1);
    // The rule matched by route name only: plain HTTP requests are not counted.
    assert_eq!(reqwest::get(format!("{}/x", envoy.url("front"))).await.unwrap().status(), 200);
    assert_eq!(counter(&envoy, "grpc", "allowed") + counter(&envoy, "grpc", "limited"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_ip_is_the_peer_not_a_forwarded_header_and_missing_keys_follow_the_policy() {
    let echo = EchoUpstream::start();
    let config = json!({
        "rules": [
            {"name": "by-ip", "match": {"prefix": "/ip"}, "key": ["client_ip"], "limits": [{"requests": 1, "per": "1m"}]},
            {"name": "by-key", "match": {"prefix": "/key"}, "key": [{"header": "x-api-key"}], "limits": [{"requests": 1, "per": "1m"}]}
        ],
        "on_missing_key": "deny"
    });
    let envoy = start(&echo, config);
    let client = reqwest::Client::new();
    let get = |path: &str, header: Option<(&str, &str)>| {
        let mut request = client.get(format!("{}{path}", envoy.url("front")));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.send()
    };
    assert_eq!(get("/ip", Some(("x-forwarded-for", "1.1.1.1"))).await.unwrap().status(), 200);
    assert_eq!(
        get("/ip", Some(("x-forwarded-for", "2.2.2.2"))).await.unwrap().status(),
        429,
        "a spoofed XFF must not buy a new bucket"
    );
    assert_eq!(get("/key", None).await.unwrap().status(), 429, "on_missing_key: deny");
    assert_access_log(&envoy, "GET /key 429 ratelimit_missing_key");
    assert_eq!(counter(&envoy, "by-key", "missing_key"), 1);
    assert_eq!(get("/key", Some(("x-api-key", "a"))).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_key_header_is_one_key_of_its_values_joined() {
    let echo = EchoUpstream::start();
    let config = json!({"rules": [{"name": "joined", "key": [{"header": "x-api-key"}], "limits": [{"requests": 1, "per": "1m"}]}]});
    let envoy = start(&echo, config);
    let client = reqwest::Client::new();
    let send = |values: &[&str]| {
        let mut headers = reqwest::header::HeaderMap::new();
        for value in values {
            headers.append("x-api-key", value.parse().unwrap());
        }
        client.get(format!("{}/x", envoy.url("front"))).headers(headers).send()
    };
    assert_eq!(send(&["a", "b"]).await.unwrap().status(), 200);
    assert_eq!(send(&["a,b"]).await.unwrap().status(), 429, "the same key as a and b sent apart");
    assert_eq!(send(&["a"]).await.unwrap().status(), 200, "a key of its own");
    assert_eq!(send(&["b", "a"]).await.unwrap().status(), 200, "values in another order: another key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_table_fails_open_and_idle_buckets_give_their_slots_to_new_keys() {
    let echo = EchoUpstream::start();
    let config = json!({"rules": [{"name": "per-key", "key": [{"header": "x-api-key"}], "limits": [{"requests": 1, "per": "300ms"}]}],
                        "max_keys": 3, "cleanup_interval": "100ms"});
    let envoy = start(&echo, config);
    let client = reqwest::Client::new();
    let get = |key: String| client.get(format!("{}/x", envoy.url("front"))).header("x-api-key", key).send();
    for key in ["k1", "k2", "k3"] {
        assert_eq!(get(key.into()).await.unwrap().status(), 200);
    }
    // With every slot live, new keys are admitted without a bucket (fail open), and counted.
    for _ in 0..3 {
        assert_eq!(get("k4".into()).await.unwrap().status(), 200);
    }
    assert_eq!(envoy.stat(&plugin_metric("key_overflow")), Some(3));
    // Logged by the worker's tick; a dynamic module ticks once per configuration (main thread), not per worker:
    // the overflows of the workers are counted, not logged.
    if envoy.build() == Build::Wasm {
        assert!(envoy.wait_for_log("bucket table full (max_keys 3)"), "the overflow is logged");
    }
    assert_eq!(envoy.wait_for_stat(&plugin_metric("slots"), |n| n == 3), Some(3));
    assert_eq!(envoy.stat(&plugin_metric("max_slots")), Some(3));
    // Once idle, a bucket's slot is free: k4 gets one, and shared data holds no more entries than before.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get("k4".into()).await.unwrap().status(), 200);
    assert_eq!(get("k4".into()).await.unwrap().status(), 429, "k4 now has a bucket");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(envoy.stat(&plugin_metric("slots")), Some(3));
}

/// Envoy's allocated memory (admin `/memory`), in bytes.
fn allocated(envoy: &Envoy) -> u64 {
    let memory: Value = serde_json::from_str(&envoy.admin_get("/memory")).expect("/memory json");
    memory["allocated"].as_str().and_then(|n| n.parse().ok()).expect("allocated")
}

/// Sends one request for each of the keys `from..to` (`key-<n>`), over `connections` kept-alive connections;
/// returns how many were admitted.
async fn distinct_keys(url: &str, from: u64, to: u64, connections: u64) -> u64 {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let mut admitted = 0;
            let mut n = from + c;
            while n < to {
                let response = client.get(&url).header("x-api-key", format!("key-{n}")).send().await.unwrap();
                admitted += u64::from(response.status() == 200);
                n += connections;
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    admitted
}

/// Issue 14: distinct keys (random API keys from a client) must not grow Envoy's memory without bound. Drives
/// `RATELIMIT_CHURN_KEYS` distinct keys (default 1,000,000, about 2.5 minutes) through one
/// Envoy and samples the slots gauge and `/memory` as it goes: both stop growing once the table is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_distinct_keys_leave_shared_data_and_memory_bounded() {
    let total: u64 = std::env::var("RATELIMIT_CHURN_KEYS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let max_keys: u64 = std::env::var("RATELIMIT_CHURN_MAX_KEYS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let echo = EchoUpstream::start();
    let config = json!({"rules": [{"name": "churn", "key": [{"header": "x-api-key"}], "limits": [{"requests": 1, "per": "1s"}]}],
                        "max_keys": max_keys, "cleanup_interval": "100ms"});
    let envoy = EnvoyConfig::new("ratelimit.yaml")
        .upstream(8081, echo.port())
        .plugin_config("ratelimit", config)
        .log_level("warn")
        .start();
    let url = format!("{}/x", envoy.url("front"));
    let started = Instant::now();
    let baseline = allocated(&envoy);
    let steps = 10;
    let mut curve = Vec::new();
    let mut admitted = 0;
    for step in 0..steps {
        admitted += distinct_keys(&url, total * step / steps, total * (step + 1) / steps, 32).await;
        tokio::time::sleep(Duration::from_millis(250)).await; // a tick refreshes the gauge
        let slots = envoy.stat(&plugin_metric("slots")).unwrap_or(0);
        let memory = allocated(&envoy);
        println!(
            "keys {:>8}  slots {slots:>7}/{max_keys}  allocated {:>7.1} MiB  (+{:.1} MiB)  {:.0}s",
            total * (step + 1) / steps,
            memory as f64 / 1048576.0,
            (memory as f64 - baseline as f64) / 1048576.0,
            started.elapsed().as_secs_f64()
        );
        curve.push((slots, memory));
    }
    let overflow = envoy.stat(&plugin_metric("key_overflow")).unwrap_or(0);
    println!(
        "{total} distinct keys in {:.0}s: {admitted} admitted, {overflow} without a bucket",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(admitted, total, "one request per key: all admitted");
    // The table filled, and never beyond max_keys.
    assert!(curve.iter().all(|(slots, _)| *slots <= max_keys), "{curve:?}");
    let full = curve.iter().position(|(slots, _)| *slots * 100 >= max_keys * 99).expect("the table filled up");
    assert!(full < steps as usize / 2, "filled after half the keys: {curve:?}");
    // From the point the table is full, memory stays flat: no more than 2 MiB of noise, where a shared-data key
    // per distinct key would add about 155 bytes each (150 MiB per million keys).
    let (_, at_full) = curve[full];
    let (_, last) = curve[curve.len() - 1];
    let grown = last.saturating_sub(at_full);
    assert!(grown < 2 << 20, "allocated grew by {grown} bytes after the table was full: {curve:?}");
}

/// Reloads through file-based LDS: buckets of unchanged rules keep counting (a client cannot reset its limit by
/// waiting for a config push), new keys keep getting buckets after several reloads, changed rules start fresh.
#[tokio::test(flavor = "multi_thread")]
async fn reloads_keep_counting_unchanged_rules_and_keep_limiting_new_keys() {
    const RULES: &str = "wasmcustom.ratelimit.plugin=.=ratelimit;.;rules";
    let echo = EchoUpstream::start();
    // The per-key rule never changes; `extra` rules (never matched) make each reload a different listener.
    let config = |extra: usize, per: &str| {
        let mut rules = vec![json!({"name": "per-key", "key": [{"header": "x-api-key"}],
                                    "limits": [{"requests": 1, "per": per}]})];
        rules.extend((0..extra).map(|i| {
            json!({"name": format!("extra-{i}"), "match": {"prefix": "/never"},
                                              "limits": [{"requests": 1, "per": "1s"}]})
        }));
        json!({"rules": rules, "max_keys": 10_000}).to_string()
    };
    // A short drain (2 s, as in the issue's reproduction): replaced listeners and their VMs go quickly.
    let envoy = EnvoyConfig::new("reload-bootstrap.yaml")
        .lds("reload-listener.yaml")
        .upstream(8081, echo.port())
        .plugin_config("ratelimit", config(0, "1m"))
        .drain_time_secs(2)
        .start();
    // A new connection per request, so that each sees the listener's current configuration.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let status = |key: String| {
        let request = client.get(format!("{}/r", envoy.url("front"))).header("x-api-key", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for n in 0..400 {
        assert_eq!(status(format!("live-{n}")).await, 200);
    }
    for reload in 1..=3 {
        let successes = envoy.stat("listener_manager.lds.update_success").unwrap();
        envoy.update_lds("reload-listener.yaml", &[("ratelimit", &config(reload, "1m"))]);
        assert_eq!(envoy.wait_for_stat("listener_manager.lds.update_success", |n| n > successes), Some(successes + 1));
        assert_eq!(envoy.wait_for_stat(RULES, |n| n == reload as u64 + 1), Some(reload as u64 + 1));
        // The 400 live keys stay limited: their buckets kept counting across the reload.
        let mut limited = 0;
        for n in 0..400 {
            limited += u32::from(status(format!("live-{n}")).await == 429);
        }
        assert_eq!(limited, 400, "reload {reload}: live keys must stay limited");
        // New keys get a bucket and are limited.
        for n in 0..100 {
            let key = format!("new-{reload}-{n}");
            assert_eq!(status(key.clone()).await, 200);
            assert_eq!(status(key).await, 429, "reload {reload}: new key {n} not limited");
        }
    }
    let slots = envoy.wait_for_stat(&plugin_metric("slots"), |n| n >= 700).unwrap_or(0);
    assert_eq!(slots, 700, "one shared-data slot per key, across every reload");
    // A rule whose limits change starts fresh buckets.
    envoy.update_lds("reload-listener.yaml", &[("ratelimit", &config(0, "30s"))]);
    assert_eq!(envoy.wait_for_stat(RULES, |n| n == 1), Some(1));
    assert_eq!(status("live-0".into()).await, 200);
    assert_eq!(status("live-0".into()).await, 429);
}

fn global_config(on_error: &str, timeout: &str) -> Value {
    json!({
        "rules": [{"name": "global", "global": true, "key": [{"header": "x-api-key"}]}],
        "global": {"cluster": "ratelimit", "domain": "edge", "timeout": timeout, "on_error": on_error}
    })
}

fn start_global(echo: &EchoUpstream, rls_port: u16, config: Value) -> Envoy {
    EnvoyConfig::new("ratelimit.yaml")
        .upstream(8081, echo.port())
        .upstream(RLS_PORT, rls_port)
        .plugin_config("ratelimit", config)
        .start()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_envoys_share_one_global_limit() {
    let echo = EchoUpstream::start();
    let rls = RateLimitServer::start(vec![limit_per_entry("edge", 5, 60, "x-api-key")], Mode::Answer);
    let first = start_global(&echo, rls.port(), global_config("allow", "1s"));
    let second = start_global(&echo, rls.port(), global_config("allow", "1s"));
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let envoy = if i % 2 == 0 { &first } else { &second };
        let response =
            client.get(format!("{}/x", envoy.url("front"))).header("x-api-key", "shared").send().await.unwrap();
        if response.status() == 200 {
            assert_eq!(response.headers()["x-rls-response"], "checked", "response_headers_to_add applied");
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    assert_eq!(rls.calls(), 10);
    // request_headers_to_add reached the upstream.
    assert!(echo.received().iter().all(|r| r.header("x-rls-request") == Some("checked")));
    assert_eq!(echo.received().len(), 5);
    // Another key has its own global bucket.
    let other = client.get(format!("{}/x", first.url("front"))).header("x-api-key", "other").send().await.unwrap();
    assert_eq!(other.status(), 200);
    let limited = counter(&first, "global", "limited") + counter(&second, "global", "limited");
    assert_eq!(limited, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_rate_limit_service_follows_on_error() {
    let echo = EchoUpstream::start();
    // Down: nothing listens on the service's port.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let allow = start_global(&echo, down, global_config("allow", "200ms"));
    let deny = start_global(&echo, down, global_config("deny", "200ms"));
    let client = reqwest::Client::new();
    let get = |envoy: &Envoy| client.get(format!("{}/x", envoy.url("front"))).header("x-api-key", "k").send();
    assert_eq!(get(&allow).await.unwrap().status(), 200);
    let denied = get(&deny).await.unwrap();
    assert_eq!(denied.status(), 500);
    let body: Value = denied.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("rate-limit service unavailable"), "{body}");
    assert_access_log(&deny, "GET /x 500 ratelimit_service_error");
    assert_eq!(counter(&allow, "global", "global_errors"), 1);
    assert_eq!(counter(&deny, "global", "global_errors"), 1);

    // Slow: the service answers after the filter's timeout.
    let slow =
        RateLimitServer::start(vec![limit_per_entry("edge", 1, 60, "x-api-key")], Mode::Slow(Duration::from_secs(2)));
    let envoy = start_global(&echo, slow.port(), global_config("allow", "100ms"));
    assert_eq!(get(&envoy).await.unwrap().status(), 200);
    assert_eq!(counter(&envoy, "global", "global_errors"), 1);
    assert!(envoy.log().contains("rate-limit service ratelimit"), "the failure is logged");
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let echo = EchoUpstream::start();
    let log = EnvoyConfig::new("ratelimit.yaml")
        .upstream(8081, echo.port())
        .plugin_config("ratelimit", r#"{"rules": [{"name": "a", "limits": [{"requests": 0, "per": "1s"}]}]}"#)
        .start_expecting_failure();
    assert!(log.contains("ratelimit: invalid configuration: rules[0].limits[0].requests: must be at least 1"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_envoys_send_descriptor_keys_and_hits_addend_and_return_the_services_figures() {
    let echo = EchoUpstream::start();
    let rls = RateLimitServer::start(vec![limit_per_entry("edge", 10, 60, "api_key")], Mode::Answer);
    let config = json!({
        "rules": [{"name": "cost", "global": true, "hits_addend": {"header": "x-cost"},
                   "key": [{"header": "x-api-key", "descriptor_key": "api_key"}, "client_ip", {"literal": "v1"}]}],
        "global": {"cluster": "ratelimit", "domain": "edge", "timeout": "1s"},
        "response": {"headers": true}
    });
    let first = start_global(&echo, rls.port(), config.clone());
    let second = start_global(&echo, rls.port(), config);
    let client = reqwest::Client::new();
    let get = |envoy: &Envoy, cost: Option<&str>| {
        let mut request = client.get(format!("{}/x", envoy.url("front"))).header("x-api-key", "shared");
        if let Some(cost) = cost {
            request = request.header("x-cost", cost);
        }
        request.send()
    };
    let header = |response: &reqwest::Response, name: &str| {
        response.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    };
    // 4 + 5 + 1 (no header: one hit) of 10 per minute, through two Envoys.
    let mut remaining = Vec::new();
    for (envoy, cost) in [(&first, Some("4")), (&second, Some("5")), (&first, None)] {
        let response = get(envoy, cost).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit"), "10, 10;w=60", "Envoy's DRAFT_VERSION_03 form");
        let reset: u64 = header(&response, "x-ratelimit-reset").parse().unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
        remaining.push(header(&response, "x-ratelimit-remaining"));
    }
    assert_eq!(remaining, ["6", "1", "0"]);
    // The service says OVER_LIMIT: 429 with its figures, retry-after and its own headers.
    let limited = get(&second, Some("1")).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(header(&limited, "x-ratelimit-limit"), "10, 10;w=60");
    assert_eq!(header(&limited, "x-ratelimit-remaining"), "0");
    let retry_after: u64 = header(&limited, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(header(&limited, "x-rls-response"), "checked");
    assert_access_log(&second, "GET /x 429 ratelimit_limited");
    // A bad hits_addend header is refused before the service is asked.
    let calls = rls.calls();
    let bad = get(&first, Some("lots")).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_access_log(&first, "GET /x 400 ratelimit_bad_request");
    assert_eq!(rls.calls(), calls);
    // What reached the service: the configured and Envoy-default entry keys, the hits per descriptor and
    // per request (Limitador reads the latter).
    let received = rls.received();
    assert_eq!(received.len(), 4);
    let descriptor = &received[0].descriptors[0];
    let entries: Vec<_> = descriptor.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(entries, [("api_key", "shared"), ("remote_address", "127.0.0.1"), ("generic_key", "v1")]);
    let hits: Vec<_> =
        received.iter().map(|r| (r.hits_addend, r.descriptors[0].hits_addend.as_ref().map(|h| h.value))).collect();
    assert_eq!(hits, [(4, Some(4)), (5, Some(5)), (1, None), (1, Some(1))]);
}
