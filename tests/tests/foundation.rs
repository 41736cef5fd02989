//! The foundation through real Envoy: the demo configuration loads all four filters and serves traffic, bad
//! plugin configurations are refused with each filter's own message, configurations reload without restart, a
//! crashed VM is replaced, local replies name their filter and reason in access logs, upgrades pass through, and a
//! body filter configured without `allow_on_headers_stop_iteration` says so.

use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::envoy::{load_yaml, to_dynamic_modules};
use integration_tests::{paths, Build, EchoUpstream, EnvoyConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FILTERS: [&str; 4] = ["ratelimit", "transformation", "aws", "nats"];

/// The rule count of the reload listener's plugin `ratelimit`.
const RATELIMIT_RULES: &str = "wasmcustom.ratelimit.plugin=.=ratelimit;.;rules";

fn demo(echo: &EchoUpstream) -> EnvoyConfig {
    EnvoyConfig::new("demo.yaml").upstream(8081, echo.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_gateway_loads_all_four_filters_and_serves() {
    let echo = EchoUpstream::start();
    let envoy = demo(&echo).start();

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/hello/world?x=1&y=%20", envoy.url("front")))
        .header("x-test", "abc")
        .body("payload bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/hello/world?x=1&y=%20");
    assert_eq!(echoed["headers"]["x-test"], "abc");
    assert_eq!(echoed["body"], "payload bytes");

    // The echo upstream's steering headers work through Envoy (response-side tests rely on them).
    let response = client
        .get(format!("{}/x", envoy.url("front")))
        .header("x-echo-status", "418")
        .header("x-echo-header", "x-from: upstream")
        .header("x-echo-body", "teapot")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["x-from"], "upstream");
    assert_eq!(response.text().await.unwrap(), "teapot");
    assert_eq!(echo.received().len(), 2);

    // Every filter applied its configuration (aws runs as an upstream filter on the `aws` cluster); each plugin
    // is named after its filter in the demo.
    let stats = envoy.stats();
    for (filter, rules) in [("ratelimit", 1), ("transformation", 1), ("aws", 0), ("nats", 1)] {
        // Envoy scopes a dynamic module's metrics in an upstream filter to the cluster.
        let cluster = match (envoy.build(), filter) {
            (Build::DynamicModule, "aws") => "cluster.aws.",
            _ => "",
        };
        let name = format!("{cluster}wasmcustom.{filter}.plugin=.={filter};.;rules");
        assert_eq!(stats.get(&name), Some(&rules), "{filter}");
    }
    for filter in FILTERS {
        assert!(envoy.log().contains(&format!("{filter}: configuration applied")), "{filter} did not log");
    }
    if envoy.build() == Build::DynamicModule {
        // The ABI version the modules declare is the one of this Envoy (it only warns on another).
        assert!(envoy.log().contains("Dynamic module ABI version v0.2.0 matched."), "{}", envoy.log());
    }
}

/// `envoy-test/dynamic-modules.py` (what users and `envoy-test/demo --dynamic-modules` convert a Wasm config with)
/// makes of the demo what this harness makes of it for the dynamic-module runs, and Envoy accepts the result with
/// the modules found in their directory.
#[test]
fn the_conversion_script_turns_the_demo_into_dynamic_modules_as_the_tests_do() {
    let root = paths::project_root();
    let out = tempfile::tempdir().unwrap();
    let converted = out.path().join("demo-modules.yaml");
    let status = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("envoy-test/dynamic-modules.py"))
        .arg(root.join("envoy-test/demo.yaml"))
        .arg(&converted)
        .status()
        .unwrap();
    assert!(status.success());
    let mut expected = load_yaml(&root.join("envoy-test/demo.yaml"));
    let mut modules = to_dynamic_modules(&mut expected);
    modules.sort();
    assert_eq!(modules, ["aws", "nats", "ratelimit", "transformation"]);
    assert_eq!(load_yaml(&converted), expected);

    let output = Command::new(paths::envoy_bin())
        .current_dir(&root)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", paths::dynamic_module_dir())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&converted)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains(" OK"), "the converted demo does not validate:\n{text}");
}

#[test]
fn each_filter_rejects_a_bad_configuration_with_its_own_message() {
    let echo = EchoUpstream::start();
    let cases = [
        (
            "ratelimit",
            r#"{"rules": [{"name": "a", "match": {"prefix": "/", "path": "/x"}}]}"#,
            "ratelimit: invalid configuration: rules[0].match: set only one of `prefix`, `path`, `safe_regex`",
        ),
        ("transformation", r#"{"stage": 11}"#, "transformation: invalid configuration: stage: must be at most 10"),
        (
            "aws",
            r#"{"region": "moon", "service": "lambda"}"#,
            r#"aws: invalid configuration: region: invalid region "moon""#,
        ),
        (
            "nats",
            r#"{"cluster": "nats_tunnel", "rules": [{"subject": "a"}], "timeout": "1x"}"#,
            r#"nats: invalid configuration: timeout: invalid duration "1x", expected e.g. "1s", "500ms", "1m""#,
        ),
    ];
    for (filter, bad, message) in cases {
        let envoy = demo(&echo);
        let refusal = match envoy.build() {
            Build::Wasm => format!("Unable to create Wasm plugin {filter}"),
            Build::DynamicModule => "Failed to initialize dynamic module".to_string(),
        };
        let log = envoy.plugin_config(filter, bad).start_expecting_failure();
        assert!(log.contains(message), "{filter}: expected {message:?} in Envoy's log:\n{log}");
        assert!(log.contains(&refusal), "{filter}: Envoy did not refuse it:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_reloads_without_restart_and_bad_updates_are_refused() {
    let echo = EchoUpstream::start();
    let envoy =
        EnvoyConfig::new("reload-bootstrap.yaml").lds("reload-listener.yaml").upstream(8081, echo.port()).start();
    let get_path = |path: &'static str| {
        let url = format!("{}{path}", envoy.url("front"));
        async move { reqwest::get(url).await.unwrap().status() }
    };
    let get = || get_path("/r");
    assert_eq!(get().await, 200);
    assert_eq!(envoy.stat(RATELIMIT_RULES), Some(1));
    let successes = envoy.stat("listener_manager.lds.update_success").unwrap();

    // A good new filter configuration applies without a restart.
    let two_rules = r#"{"rules": [{"name": "a", "match": {"prefix": "/a"}, "limits": [{"requests": 1, "per": "1m"}]},
                             {"name": "b", "limits": [{"requests": 1000, "per": "1s"}]}]}"#;
    envoy.update_lds("reload-listener.yaml", &[("ratelimit", two_rules)]);
    assert_eq!(envoy.wait_for_stat("listener_manager.lds.update_success", |n| n > successes), Some(successes + 1));
    assert_eq!(envoy.wait_for_stat(RATELIMIT_RULES, |n| n == 2), Some(2));
    assert_eq!(get().await, 200);
    // The new rule is enforced: one request per minute on /a.
    assert_eq!(get_path("/a").await, 200);
    assert_eq!(get_path("/a").await, 429);

    // A bad one is refused with the filter's own message, and the previous configuration keeps serving.
    let bad =
        r#"{"rules": [{"name": "a", "match": {"headers": [{"name": "x", "safe_regex_match": {"regex": "("}}]}}]}"#;
    envoy.update_lds("reload-listener.yaml", &[("ratelimit", bad)]);
    assert_eq!(envoy.wait_for_stat("listener_manager.lds.update_rejected", |n| n >= 1), Some(1));
    assert!(
        envoy.wait_for_log(
            "ratelimit: invalid configuration: rules[0].match.headers[0]: safe_regex_match: invalid regex"
        ),
        "no filter message in the log"
    );
    assert!(envoy.log().contains("lds: listener 'front' config rejected"));
    assert_eq!(get().await, 200);
    assert_eq!(get_path("/a").await, 429, "the previous configuration still limits /a");
    assert_eq!(envoy.stat(RATELIMIT_RULES), Some(2));
    assert_eq!(envoy.stat("listener_manager.lds.update_success"), Some(successes + 1));
}

/// The probe filter (bench/probe) in `panic` mode: it marks requests with `x-probe-vm: alive` and kills its VM on a
/// request with `x-probe-panic`.
fn probe_filter(failure_policy: Option<&str>) -> Value {
    let mut config = json!({
        "name": "probe", "root_id": "probe",
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "panic:1"},
        "vm_config": {"vm_id": "probe", "runtime": "envoy.wasm.runtime.v8",
                      "code": {"local": {"filename": "target/wasm32-wasip1/release/probe.wasm"}}}
    });
    if let Some(policy) = failure_policy {
        config["failure_policy"] = json!(policy);
        config["reload_config"] = json!({"backoff": {"base_interval": "0.2s", "max_interval": "1s"}});
    }
    json!({"name": "probe", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}})
}

/// Whether a request through the probe reaches the upstream with the probe's mark (the filter is alive).
async fn probe_alive(client: &reqwest::Client, url: &str, echo: &EchoUpstream) -> bool {
    let before = echo.received().len();
    let Ok(response) = client.get(format!("{url}/alive")).send().await else { return false };
    response.status() == 200 && echo.received().get(before).and_then(|r| r.header("x-probe-vm")) == Some("alive")
}

/// A panic in a filter: in Wasm it kills the worker's VM (replaced under `FAIL_RELOAD`, otherwise the worker keeps
/// failing); a dynamic module answers that request with a 500 and goes on, Envoy unharmed.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_vm_is_replaced_under_fail_reload_and_stays_down_without_it() {
    let client = reqwest::Client::new();
    let build = demo(&EchoUpstream::start()).build();
    let policies = match build {
        Build::Wasm => vec![Some("FAIL_RELOAD"), None],
        Build::DynamicModule => vec![None],
    };
    for policy in policies {
        let echo = EchoUpstream::start();
        let envoy = demo(&echo).concurrency(1).http_filters("front", vec![probe_filter(policy)]).start();
        let url = envoy.url("front");
        assert!(probe_alive(&client, &url, &echo).await, "{policy:?}: the probe did not run before the crash");

        let crashed = client.get(format!("{url}/crash")).header("x-probe-panic", "1").send().await.unwrap();
        assert!(crashed.status().is_server_error(), "{policy:?}: {}", crashed.status());
        assert!(envoy.wait_for_log("probe: panic requested by the client"), "{policy:?}: the panic was not logged");

        // Bounded wait for the replacement VM (its backoff is 0.2 s); not a timing assertion.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut recovered = false;
        while !recovered && Instant::now() < deadline {
            recovered = probe_alive(&client, &url, &echo).await;
            if !recovered {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        match (build, policy) {
            (Build::DynamicModule, _) => {
                assert_eq!(crashed.status(), 500);
                assert!(envoy.wait_for_access_log(" 500 probe_panic"), "{}", envoy.access_log());
                assert!(recovered, "the filter stopped serving after a panic");
            }
            (Build::Wasm, Some(_)) => assert!(recovered, "the VM was not replaced within 10 s"),
            (Build::Wasm, None) => {
                assert!(!recovered, "without FAIL_RELOAD the crashed VM's worker should keep failing")
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_replies_name_their_filter_and_reason_in_the_access_log() {
    let echo = EchoUpstream::start();
    let body_template = r#"{"transformations": [{"match": {"prefix": "/transform"}, "route_transformations": {
        "request_transformation": {"transformation_template": {"body": {"text": "{{ name }}"}}}}}]}"#;
    // No AWS credentials in the environment, no nats-server: both filters answer themselves.
    let envoy = demo(&echo).plugin_config("transformation", body_template).start();
    let client = reqwest::Client::new();
    let url = envoy.url("front");
    for _ in 0..4 {
        client.get(format!("{url}/limited")).send().await.unwrap();
    }
    let bad_json = client.post(format!("{url}/transform")).body("{not json").send().await.unwrap();
    assert_eq!(bad_json.status(), 400);
    let aws = client.get(format!("{url}/aws/x")).send().await.unwrap();
    assert_eq!(aws.status(), 503);
    let nats = client.post(format!("{url}/events/x")).body("hello").send().await.unwrap();
    assert!(nats.status().is_server_error(), "{}", nats.status());

    for expected in [" 429 ratelimit_limited ", " 400 transformation_bad_request ", " 503 aws_credentials_unavailable "]
    {
        assert!(envoy.wait_for_access_log(expected), "no {expected:?} in the access log:\n{}", envoy.access_log());
    }
    assert!(
        envoy.wait_for_access_log(&format!("POST /events/x {} nats_", nats.status().as_u16())),
        "no nats reply in the access log:\n{}",
        envoy.access_log()
    );
    assert!(!envoy.access_log().contains("wasm_filter_local_reply"));
}

/// A Wasm filter of ours with the settings every configuration of ours has.
fn wasm_filter(name: &str, config: Value) -> Value {
    json!({"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name, "root_id": name,
            "allow_on_headers_stop_iteration": true, "failure_policy": "FAIL_RELOAD",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config.to_string()},
            "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": format!("target/wasm32-wasip1/release/{name}.wasm")}}}
        }
    }})
}

/// A WebSocket handshake through Envoy's front listener, then bytes both ways through the tunnel.
async fn websocket_round_trip(envoy: &integration_tests::Envoy) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", envoy.port("front"))).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: demo\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(read, 1, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    stream.write_all(b"frames both ways").await.unwrap();
    let mut echoed = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"frames both ways");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_pass_through_the_filters_when_no_rule_matches() {
    // The demo's chain: ratelimit, transformation, nats.
    let echo = EchoUpstream::start();
    let envoy = demo(&echo).start();
    websocket_round_trip(&envoy).await;
    assert_eq!(echo.received().last().and_then(|r| r.header("upgrade")), Some("websocket"));

    // All four, aws signing everything (an upgrade is signed as a request without a body, never held).
    let echo = EchoUpstream::start();
    let filters = vec![
        wasm_filter(
            "ratelimit",
            json!({"rules": [{"name": "r", "match": {"prefix": "/limited"},
            "limits": [{"requests": 1, "per": "1m"}]}]}),
        ),
        wasm_filter(
            "transformation",
            json!({"transformations": [{"match": {"prefix": "/transform"},
            "route_transformations": {"request_transformation": {"transformation_template": {
                "body": {"text": "{{ name }}"}}}}}]}),
        ),
        wasm_filter(
            "aws",
            json!({"region": "us-east-1", "service": "s3",
            "credentials": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "secret"}}),
        ),
        wasm_filter(
            "nats",
            json!({"cluster": "nats_tunnel", "rules": [{"match": {"prefix": "/events/"},
            "subject": "demo.{path:2}"}]}),
        ),
    ];
    let envoy = demo(&echo).http_filters("front", filters).start();
    websocket_round_trip(&envoy).await;
    let upgrade = echo.received().last().cloned().expect("the upgrade reached the upstream");
    assert_eq!(upgrade.header("upgrade"), Some("websocket"));
    assert!(upgrade.header("authorization").is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 ")), "{upgrade:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_filter_without_allow_on_headers_stop_iteration_says_so() {
    let echo = EchoUpstream::start();
    let envoy = demo(&echo).plugin_option("nats", "allow_on_headers_stop_iteration", Value::Null).start();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    // Envoy withholds the body from a filter that holds the headers: the request hangs until the client gives up.
    let outcome = client.post(format!("{}/events/x", envoy.url("front"))).body("hello").send().await;
    if envoy.build() == Build::DynamicModule {
        // No such setting for a dynamic module: the body reaches the filter, which answers (no nats-server here).
        assert!(outcome.is_ok_and(|r| r.status().is_server_error()), "the body did not reach the filter");
        return;
    }
    assert!(outcome.is_err() || outcome.is_ok_and(|r| r.status() != 202), "published without the flag?");
    assert!(
        envoy.wait_for_log("set `allow_on_headers_stop_iteration: true`"),
        "no log line naming the missing setting"
    );
}

/// Two instances of one filter (two Wasm plugins of the same code, in one VM, each with its own name) count
/// separately, and the demo's `stats_config.stats_tags` make plugin and rule Prometheus labels. One plugin is named
/// as Istio names them (`<namespace>.<name>`): the dot cannot break the label split.
#[tokio::test(flavor = "multi_thread")]
async fn each_plugin_instance_counts_apart_and_prometheus_shows_plugin_and_rule_labels() {
    let ratelimit = |plugin: &str, prefix: &str, requests: u32| {
        let config = json!({"rules": [{"name": "demo", "match": {"prefix": prefix},
                                       "limits": [{"requests": requests, "per": "1m"}]}]});
        json!({"name": plugin, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": plugin, "root_id": "ratelimit", "failure_policy": "FAIL_RELOAD",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": config.to_string()},
                "vm_config": {"vm_id": "ratelimit", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": "target/wasm32-wasip1/release/ratelimit.wasm"}}}
            }
        }})
    };
    let echo = EchoUpstream::start();
    let filters = vec![ratelimit("edge", "/a", 2), ratelimit("team-b.api", "/b", 10)];
    let envoy = demo(&echo).http_filters("front", filters).start();
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for path in ["/a", "/a", "/a", "/b"] {
        statuses.push(client.get(format!("{}{path}", envoy.url("front"))).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200]);

    // /stats: one counter per plugin instance, the same rule name in both.
    let stats = envoy.stats();
    let stat = |plugin: &str, event: &str| {
        stats.get(&format!("wasmcustom.ratelimit.plugin=.={plugin};.;rule=.=demo;.;{event}")).copied()
    };
    assert_eq!((stat("edge", "allowed"), stat("edge", "limited")), (Some(2), Some(1)));
    assert_eq!((stat("team-b_api", "allowed"), stat("team-b_api", "limited")), (Some(1), Some(0)));

    // /stats/prometheus: the event is the metric, plugin and rule are labels. Envoy drops the `wasmcustom.` prefix
    // of Wasm metrics only.
    let prefix = match envoy.build() {
        Build::Wasm => "",
        Build::DynamicModule => "envoy_wasmcustom_",
    };
    let prometheus = envoy.admin_get("/stats/prometheus");
    for line in [
        "# TYPE {}ratelimit_allowed counter",
        r#"{}ratelimit_allowed{plugin="edge",rule="demo"} 2"#,
        r#"{}ratelimit_allowed{plugin="team-b_api",rule="demo"} 1"#,
        r#"{}ratelimit_limited{plugin="edge",rule="demo"} 1"#,
        r#"{}ratelimit_limited{plugin="team-b_api",rule="demo"} 0"#,
        r#"{}ratelimit_rules{plugin="edge"} 1"#,
        r#"{}ratelimit_rules{plugin="team-b_api"} 1"#,
    ] {
        let line = line.replacen("{}", prefix, 1);
        assert!(prometheus.lines().any(|l| l == line), "no {line:?} in /stats/prometheus:\n{prometheus}");
    }
    assert!(!prometheus.contains("=.="), "a tag left in a metric name:\n{prometheus}");
}
