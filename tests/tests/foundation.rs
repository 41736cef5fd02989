//! The foundation through real Envoy: the demo configuration loads all four filters and serves traffic, bad
//! plugin configurations are refused with each filter's own message, and configurations reload without restart.

use integration_tests::{EchoUpstream, EnvoyConfig};
use serde_json::Value;

const FILTERS: [&str; 4] = ["ratelimit", "transformation", "aws", "nats"];

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

    // Every filter applied its configuration (aws runs as an upstream filter on the `aws` cluster).
    let stats = envoy.stats();
    for (filter, rules) in [("ratelimit", 1), ("transformation", 1), ("aws", 0), ("nats", 1)] {
        assert_eq!(stats.get(&format!("wasmcustom.{filter}.rules")), Some(&rules), "{filter}");
    }
    for filter in FILTERS {
        assert!(envoy.log().contains(&format!("{filter}: configuration applied")), "{filter} did not log");
    }
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
        (
            "transformation",
            r#"{"transformations": []}"#,
            "transformation: invalid configuration: transformations: must not be empty",
        ),
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
        let log = demo(&echo).plugin_config(filter, bad).start_expecting_failure();
        assert!(log.contains(message), "{filter}: expected {message:?} in Envoy's log:\n{log}");
        assert!(
            log.contains(&format!("Unable to create Wasm plugin {filter}")),
            "{filter}: Envoy did not refuse it:\n{log}"
        );
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
    assert_eq!(envoy.stat("wasmcustom.ratelimit.rules"), Some(1));
    let successes = envoy.stat("listener_manager.lds.update_success").unwrap();

    // A good new filter configuration applies without a restart.
    let two_rules = r#"{"rules": [{"name": "a", "match": {"prefix": "/a"}, "limits": [{"requests": 1, "per": "1m"}]},
                             {"name": "b", "limits": [{"requests": 1000, "per": "1s"}]}]}"#;
    envoy.update_lds("reload-listener.yaml", &[("ratelimit", two_rules)]);
    assert_eq!(envoy.wait_for_stat("listener_manager.lds.update_success", |n| n > successes), Some(successes + 1));
    assert_eq!(envoy.wait_for_stat("wasmcustom.ratelimit.rules", |n| n == 2), Some(2));
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
    assert_eq!(envoy.stat("wasmcustom.ratelimit.rules"), Some(2));
    assert_eq!(envoy.stat("listener_manager.lds.update_success"), Some(successes + 1));
}
