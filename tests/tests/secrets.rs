//! Where credentials can and cannot show up. The filters' own guarantee: never in their log lines (even at debug
//! level), replies, access-log details or metrics. Envoy's own: an inline credential is part of the plugin
//! configuration, so `/config_dump` shows it; one passed through the environment (`host_env_keys`) is not.

use integration_tests::{EchoUpstream, EnvoyConfig};

const AWS_SECRET: &str = "SECRET-aws-1f2e3d";
const AWS_TOKEN: &str = "TOKEN-aws-9c8b7a";
const NATS_PASSWORD: &str = "PASSWORD-nats-4d5e6f";

fn inline_aws() -> String {
    format!(
        r#"{{"region": "us-east-1", "service": "lambda", "lambda": {{"function": "demo"}},
            "credentials": {{"access_key_id": "AKIDSECRETTEST", "secret_access_key": "{AWS_SECRET}",
                            "session_token": "{AWS_TOKEN}"}}}}"#
    )
}

fn nats_with_password() -> String {
    format!(
        r#"{{"cluster": "nats_tunnel", "auth": {{"user": "gw", "password": "{NATS_PASSWORD}"}},
            "rules": [{{"match": {{"prefix": "/events/"}}, "subject": "demo.events.{{path:2}}"}}]}}"#
    )
}

fn assert_clean(what: &str, text: &str) {
    for secret in [AWS_SECRET, AWS_TOKEN, NATS_PASSWORD] {
        assert!(!text.contains(secret), "{what} contains a credential:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_never_reach_the_filters_logs_replies_or_metrics() {
    let echo = EchoUpstream::start();
    // Debug level: the filters log everything they ever log. No moto and no nats-server: both filters fail, and
    // their failures are what could leak.
    let envoy = EnvoyConfig::new("demo.yaml")
        .upstream(8081, echo.port())
        .plugin_config("aws", inline_aws())
        .plugin_config("nats", nats_with_password())
        .log_level("debug")
        .start();
    let client = reqwest::Client::new();
    let url = envoy.url("front");
    for path in ["/aws/orders", "/aws/other?x=1"] {
        let response = client.post(format!("{url}{path}")).body("{\"a\": 1}").send().await.unwrap();
        assert!(response.status().is_server_error(), "{path}: {}", response.status());
        assert_clean("an aws reply", &response.text().await.unwrap());
    }
    let response = client.post(format!("{url}/events/orders")).body("hello").send().await.unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    assert_clean("a nats reply", &response.text().await.unwrap());
    // The aws filter really signed with the inline credentials (the upstream cluster is down, so Envoy answers).
    let marker = envoy.build().log_marker();
    assert!(envoy.wait_for_log(&format!("{marker} aws")), "no aws log line at debug level");

    let own_lines: String = envoy.log().lines().filter(|l| l.contains(marker)).collect::<Vec<_>>().join("\n");
    assert!(!own_lines.is_empty());
    assert_clean("the filters' log lines", &own_lines);
    assert_clean("the access log", &envoy.access_log());
    assert_clean("/stats", &envoy.admin_get("/stats"));
    assert_clean("/stats/prometheus", &envoy.admin_get("/stats/prometheus"));

    // Envoy itself shows inline credentials in /config_dump: why the README says to prefer the environment.
    let dump = envoy.admin_get("/config_dump");
    assert!(dump.contains(AWS_SECRET) && dump.contains(NATS_PASSWORD), "inline values are part of the config");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_the_environment_stay_out_of_config_dump() {
    let echo = EchoUpstream::start();
    let nats = r#"{"cluster": "nats_tunnel", "auth": {"user": "gw", "password_env": "NATS_PASSWORD"},
                   "rules": [{"match": {"prefix": "/events/"}, "subject": "demo.events.{path:2}"}]}"#;
    let envoy = EnvoyConfig::new("demo.yaml")
        .upstream(8081, echo.port())
        .plugin_config("nats", nats)
        .plugin_option(
            "nats",
            "vm_config",
            serde_json::json!({"vm_id": "nats", "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": "target/wasm32-wasip1/release/nats.wasm"}},
                "environment_variables": {"host_env_keys": ["NATS_PASSWORD"]}}),
        )
        .env("NATS_PASSWORD", NATS_PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "AKIDSECRETTEST")
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .start();
    assert!(envoy.log().contains("nats: configuration applied"));
    assert_clean("/config_dump", &envoy.admin_get("/config_dump"));
}

#[test]
fn a_refused_configuration_names_the_field_not_the_secret() {
    let echo = EchoUpstream::start();
    let bad = format!(
        r#"{{"region": "moon", "service": "lambda", "credentials": {{"access_key_id": "AKIDSECRETTEST",
            "secret_access_key": "{AWS_SECRET}"}}}}"#
    );
    let envoy = EnvoyConfig::new("demo.yaml").upstream(8081, echo.port());
    let marker = envoy.build().log_marker();
    let log = envoy.plugin_config("aws", bad).start_expecting_failure();
    assert!(log.contains("aws: invalid configuration: region"), "{log}");
    let own_lines: String = log.lines().filter(|l| l.contains(marker)).collect::<Vec<_>>().join("\n");
    assert_clean("the refusal", &own_lines);
}
