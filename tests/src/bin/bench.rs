//! `envoy-test/bench`: what each filter costs in Envoy, side by side with Envoy's native filters, in one run.
//!
//! For every scenario and Envoy concurrency (1 and 2 workers), seven Envoys run at once, pinned to core 0: no
//! filter (baseline), the same again (what two identical Envoys differ by), the no-op filter as Wasm and as a
//! dynamic module (the floor each build costs), Envoy's
//! native filter doing the same work, and ours as Wasm and as a dynamic module (same configuration JSON). They are
//! loaded in interleaved rounds (A B C ..., B C ... A, ...) with the same request count each, from this process
//! pinned to core 1, so that the machine's noise falls on all of them alike. Envoy's CPU time per request comes
//! from /proc. Each round's figure of a variant is paired with the baseline's of the same round; the report gives
//! the median of those differences with a distribution-free confidence interval ([`stats`]), and judges the
//! targets of issue #17 by the interval, not the median alone.
//!
//! `--before DIR` adds, in the same rounds, an earlier build of ours (`DIR/<filter>.wasm`, `DIR/lib<filter>.so`,
//! e.g. copied from target/ before a change) and reports what the change did as a paired difference: run to run,
//! this machine's medians move by about 1 µs, more than many changes are worth.

#[path = "bench/stats.rs"]
mod stats;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use integration_tests::bench::{rss_kib, run_round, CoreProfile, CpuSplit, RequestSpec, Round, Spread, PROFILE_HZ};
use integration_tests::envoy::to_dynamic_modules;
use integration_tests::nats_server::NatsServer;
use integration_tests::paths::{dynamic_module_dir, project_root, wasm_dir};
use integration_tests::rls::{Mode, RateLimitServer};
use integration_tests::{Build, Envoy, EnvoyConfig};
use serde_json::{json, Value};
use stats::MedianCi;

const RLS_PORT: u16 = 8089;

/// How to read the summary, and where the time goes (from the micro-benchmarks and the filters' code).
const NOTES: &str = "\
### Reading the figures

- The **no-op Wasm floor** is what any proxy-wasm filter costs in Envoy before it does anything: creating the \
  stream context and Envoy calling into the VM for every stream event. The **no-op dynamic module floor** is the \
  same for a dynamic module built on the filters' host layer (bench/noop as `libnoop.so`): Envoy calling the \
  module's hooks, no VM. Our figures include the floor of their build.
- **Where our time goes** is in the perf table above: the host side (Envoy answering the filter's calls) and our \
  code in the VM. The host calls are measured one by one below (\"What a host call costs\"): a header read about \
  1 µs, all headers at once 1.5–3 µs, a header write 0.5–2.5 µs, a shared-data read 1 µs and read + CAS write \
  1.5 µs, the first call of a kind in a request the dearest; a value read from Envoy costs a call back into the VM \
  to allocate it. The filters make the fewest calls their work needs: the rate-limit allow path reads the \
  request headers (a dynamic module: the key header alone; Wasm reads the whole map, because Envoy's Wasm host \
  answers a lookup by name with the first value of a repeated header only) and the clock, one shared-data value, \
  writes it back with compare-and-swap and counts; the transformation, aws and nats filters read all request headers once (matching included) and write only the \
  headers that change. On the header-only rows the host side of the Wasm build is most of its added cost: the \
  ABI, not the logic, sets that bound; the dynamic module's calls are plain function calls on the same worker.
- **Our code** in V8: SHA-256 of a 16 KiB body costs 33.6 µs inside Envoy (measured with `--before` against a \
  build hashing 64 bytes) and 27.5 µs in a hot loop under Node's V8 with simd128, where the dynamic module takes \
  9.3 µs with SHA instructions (Wasm has none); the perf split above puts the rest of the body filters' Wasm code \
  at about three times the module's. Natively (`cargo bench`): a GCRA decision 0.1 µs, a rate-limit rule 0.25 µs, \
  a SigV4 signature 1.5 µs, a header template 0.2 µs, a body template reading three fields of a parsed JSON body \
  0.3 µs, the 1 KiB order parsed as far as the row's template reads it 1.4 µs (4.6 µs whole), a NATS subject \
  0.2 µs; the header row's whole transformation (extraction regex, two templates, header list) 2.2 µs, a third of \
  it the extraction's regex.
- **Body work** (signed 16 KiB payload, Lambda, JSON body template, NATS publish): the filter holds the \
  request headers while Envoy delivers the body (`allow_on_headers_stop_iteration`), then changes headers and \
  body at once and lets the request go; no buffer filter. The aws filter signs (and for Lambda rewrites) the \
  request in place and Envoy routes it to the route's cluster, as the native filters do; the nats filter sends \
  one HTTP/2 stream per publish through Envoy's internal tunnel listener. The summary's floor is the no-op \
  filter; the body host-call table and the JSON row's steps below are measured against a filter that only holds \
  the headers until the body is complete.
- **Lambda**: Envoy's `aws_lambda` acts only on clusters marked as Lambda gateways (cluster metadata \
  `com.amazonaws.lambda: {egress_gateway: true}`, as bench.yaml's upstream is) and signs with credentials from \
  the environment. With payload passthrough it rewrites and signs the request in place and streams it to the \
  route's cluster; ours (`format: raw`) does the same in place. Stock Envoy has no NATS filter; its ceiling is \
  below.
- The ratios in the summary are ratios of medians, given without an interval: the targets table judges the \
  targets from the per-round figures and their intervals.";
const NATS_PORT: u16 = 4222;

#[derive(Clone, Copy)]
struct Settings {
    rounds: usize,
    requests: u64,
    warmup: u64,
    connections: usize,
}

/// One filter chain to measure.
struct Variant {
    name: &'static str,
    filters: Vec<Value>,
}

struct Scenario {
    name: &'static str,
    request: RequestSpec,
    native_name: &'static str,
    /// `None`: stock Envoy has no equivalent.
    native: Option<Vec<Value>>,
    /// Ours as Wasm (the dynamic-module variant is made from it: [`dynamic_module_filter`]).
    ours: Vec<Value>,
    checks: Vec<Check>,
}

/// A target of issue #17 for one row.
#[derive(Clone, Copy)]
enum Check {
    /// `Σ weight × added(variant) ≤ 0`, judged round by round: each round's left side is a combination of that
    /// round's paired differences, and the verdict comes from the confidence interval of its median.
    Cpu { label: &'static str, terms: &'static [(&'static str, f64)] },
    /// The Wasm variant's own code (perf's Wasm column, 1 worker) at most half of its added CPU.
    OwnCodeHalf,
}

const DM_VS_NATIVE: Check =
    Check::Cpu { label: "dynamic module ≤ 1.2× native", terms: &[(DM, 1.0), (NATIVE, -1.2)] };
const DM_BELOW_LUA: Check = Check::Cpu { label: "dynamic module below Lua", terms: &[(DM, 1.0), (NATIVE, -1.0)] };
const WASM_OWN_CODE: Check = Check::OwnCodeHalf;

struct Measured {
    scenario: &'static str,
    concurrency: u32,
    native_name: &'static str,
    checks: Vec<Check>,
    variants: Vec<(&'static str, Vec<Round>)>,
    /// Per variant, µs per request by where the CPU went (perf, 1 worker only; empty without perf).
    profile: Vec<(&'static str, CpuSplit)>,
}

/// A Wasm filter from target/; a JSON string `config` is passed as its text, anything else as JSON.
fn wasm_filter(name: &str, config: &Value) -> Value {
    let config = config.as_str().map_or_else(|| config.to_string(), str::to_string);
    json!({"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name, "root_id": name,
            // As every configuration of ours (README): body filters hold the headers while reading the body.
            "allow_on_headers_stop_iteration": true, "failure_policy": "FAIL_RELOAD",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
            "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": format!("target/wasm32-wasip1/release/{name}.wasm")}}}
        }
    }})
}

/// The dynamic module standing for a Wasm filter made by [`wasm_filter`]: `lib<name>.so` with the same plugin
/// name and configuration JSON, as the test harness turns every Wasm filter into under
/// `FILTER_BUILD=dynamic-module`.
fn dynamic_module_filter(wasm: &Value) -> Value {
    let mut module = wasm.clone();
    to_dynamic_modules(&mut module);
    module
}

fn get(path: &str, headers: &[(&str, &str)]) -> RequestSpec {
    RequestSpec {
        method: "GET",
        path: path.to_string(),
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        body: Vec::new(),
        expect: vec![200],
    }
}

fn scenarios() -> Vec<Scenario> {
    let huge = json!({"requests": 1_000_000_000u64, "per": "1s"});
    let mut list = vec![
        Scenario {
            name: "rate limit, allowed path, per-header key",
            request: get("/api/items", &[("x-api-key", "key-1")]),
            native_name: "local_ratelimit (descriptor on x-api-key)",
            native: Some(vec![json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "local_rl",
                "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
                "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
                "descriptors": [{"entries": [{"key": "api_key"}],
                                 "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"}}],
                "max_dynamic_descriptors": 100_000
            }})]),
            ours: vec![wasm_filter(
                "ratelimit",
                &json!({"rules": [{"name": "per-key", "key": [{"header": "x-api-key"}], "limits": [huge]}]}),
            )],
            checks: vec![DM_VS_NATIVE, WASM_OWN_CODE],
        },
        Scenario {
            name: "rate limit, global (rate-limit service)",
            request: get("/api/items", &[("x-api-key", "key-1")]),
            native_name: "ratelimit (same RLS server)",
            native: Some(vec![json!({"name": "envoy.filters.http.ratelimit", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                "domain": "edge", "timeout": "1s",
                "rate_limit_service": {"transport_api_version": "V3", "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}}}
            }})]),
            ours: vec![wasm_filter(
                "ratelimit",
                &json!({
                "rules": [{"name": "global", "key": [{"header": "x-api-key"}], "global": true}],
                "global": {"cluster": "ratelimit", "domain": "edge", "timeout": "1s"}}),
            )],
            checks: vec![DM_VS_NATIVE],
        },
    ];
    list.extend(transformation_scenarios());
    list.extend(aws_scenarios());
    list.extend(nats_scenarios());
    list
}

fn lua_filter(code: &str) -> Value {
    json!({"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": code}}})
}

/// POST /orders with the 1 KiB JSON order.
fn order_request() -> RequestSpec {
    let mut order = get("/orders", &[("content-type", "application/json")]);
    order.method = "POST";
    order.body = order_json();
    order
}

/// A 1 KiB JSON order (1032 bytes: 23 order lines).
fn order_json() -> Vec<u8> {
    let items: Vec<Value> =
        (0..23).map(|i| json!({"sku": format!("sku-{i:04}"), "qty": i % 3 + 1, "price": 9.5 + f64::from(i)})).collect();
    let order = json!({"customer": {"name": "Ada Lovelace", "email": "ada@example.com", "tier": "gold"},
                       "items": items, "note": "leave at the door"});
    order.to_string().into_bytes()
}

/// The JSON body row's template: four fields of the order.
const ORDER_TEMPLATE: &str = "{\"customer\": \"{{ customer.name }}\", \"tier\": \"{{ upper(customer.tier) }}\", \
                              \"lines\": {{ length(items) }}, \"first\": \"{{ items.0.sku }}\"}";

/// A transformation filter configuration applying `template` (a `transformation_template`) to /orders requests.
fn order_transformation(template: Value) -> Value {
    json!({"transformations": [{"match": {"prefix": "/orders"}, "route_transformations": {
        "request_transformation": {"transformation_template": template}}}]})
}

fn transformation_scenarios() -> Vec<Scenario> {
    let headers = json!({"transformations": [{"match": {"prefix": "/users"}, "route_transformations": {
        "request_transformation": {"transformation_template": {
            "extractors": {"name": {"header": "x-user", "regex": "([^@]+)@(.*)", "subgroup": 1}},
            "headers": {"x-user-name": {"text": "{{ extraction(\"name\") }}"},
                        "x-greeting": {"text": "hello {{ upper(extraction(\"name\")) }}"}},
            "passthrough": {}}}}}]});
    let lua_headers = r#"
function envoy_on_request(handle)
  local user = handle:headers():get("x-user")
  local name = user and string.match(user, "^([^@]+)@.*$")
  if name then
    handle:headers():replace("x-user-name", name)
    handle:headers():replace("x-greeting", "hello " .. string.upper(name))
  end
end"#;
    let body = order_transformation(json!({"body": {"text": ORDER_TEMPLATE}}));
    // Lua has no JSON parser in Envoy: the same fields are taken with string patterns (less strict than a parse).
    let lua_body = r#"
function envoy_on_request(handle)
  local body = handle:body()
  local text = body:getBytes(0, body:length())
  local name = string.match(text, '"name":"([^"]*)"') or ""
  local tier = string.match(text, '"tier":"([^"]*)"') or ""
  local first = string.match(text, '"sku":"([^"]*)"') or ""
  local _, lines = string.gsub(text, '"sku":', "")
  local out = '{"customer": "' .. name .. '", "tier": "' .. string.upper(tier) .. '", "lines": ' .. lines .. ', "first": "' .. first .. '"}'
  body:setBytes(out)
  handle:headers():replace("content-length", tostring(#out))
end"#;
    let order = order_request();
    vec![
        Scenario {
            name: "header extraction + header template",
            request: get("/users/42", &[("x-user", "ada@example.com")]),
            native_name: "lua (same extraction and headers)",
            native: Some(vec![lua_filter(lua_headers)]),
            ours: vec![wasm_filter("transformation", &headers)],
            checks: vec![DM_VS_NATIVE, DM_BELOW_LUA, WASM_OWN_CODE],
        },
        Scenario {
            name: "1 KiB JSON body -> templated body",
            request: order,
            native_name: "lua (string patterns, no JSON parse)",
            native: Some(vec![lua_filter(lua_body)]),
            ours: vec![wasm_filter("transformation", &body)],
            checks: vec![
                DM_VS_NATIVE,
                DM_BELOW_LUA,
                Check::Cpu { label: "Wasm ≤ Lua + Wasm floor", terms: &[(OURS, 1.0), (NATIVE, -1.0), (FLOOR, -1.0)] },
            ],
        },
    ]
}

const NATS_PAYLOAD: &[u8] = br#"{"order": 42, "customer": "c-1001", "items": [{"sku": "a-1", "qty": 2}, {"sku": "b-7", "qty": 1}], "note": "leave at the door, ring twice; fragile contents inside the parcel"}"#;

fn nats_scenarios() -> Vec<Scenario> {
    let mut publish = get("/events/orders", &[("content-type", "application/json"), ("x-tenant", "t1")]);
    publish.method = "POST";
    publish.body = NATS_PAYLOAD.to_vec();
    publish.expect = vec![200, 202]; // 202 from the nats filter, 200 from the upstream for the other variants
    let config = json!({"cluster": "nats_tunnel", "rules": [{"match": {"prefix": "/events/"},
        "subject": "bench.{header:x-tenant}.{path:2}", "headers": ["content-type"]}]});
    vec![Scenario {
        name: "HTTP -> NATS publish",
        request: publish,
        native_name: "none in stock Envoy",
        native: None,
        ours: vec![wasm_filter("nats", &config)],
        checks: vec![],
    }]
}

/// Messages per second (median, min–max over the rounds), p50 and p99 latency in µs of a native NATS client:
/// `connections` persistent connections, each sending `PUB` + `PING` and waiting for the `PONG` (the same
/// confirmation the filter waits for), so only the per-publish connection through Envoy differs.
async fn nats_client_ceiling(port: u16, settings: &Settings) -> (Spread, f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    let message =
        [format!("PUB bench.t1.orders {}\r\n", NATS_PAYLOAD.len()).as_bytes(), NATS_PAYLOAD, b"\r\nPING\r\n"].concat();
    for _ in 0..settings.rounds {
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..settings.connections {
            let (issued, total, message) = (issued.clone(), settings.requests, message.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("nats-server");
                let _ = stream.set_nodelay(true);
                stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").await.expect("connect");
                let mut buffer = vec![0u8; 4096];
                while issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    let sent = Instant::now();
                    stream.write_all(&message).await.expect("publish");
                    // Read until the PONG that answers our PING (the server's INFO comes first, once).
                    let mut seen = Vec::new();
                    while !seen.windows(6).any(|w| w == b"PONG\r\n") {
                        let n = stream.read(&mut buffer).await.expect("read");
                        assert!(n > 0, "nats-server closed the connection");
                        seen.extend_from_slice(&buffer[..n]);
                    }
                    lat.push(sent.elapsed().as_micros() as f64);
                }
                lat
            }));
        }
        for task in tasks {
            latencies.extend(task.await.unwrap_or_default());
        }
        rates.push(settings.requests as f64 / started.elapsed().as_secs_f64());
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies.get(((latencies.len().saturating_sub(1)) as f64 * q) as usize).copied().unwrap_or(0.0);
    (Spread::of(&rates), at(0.5), at(0.99))
}

const AWS_KEY_ID: &str = "AKIDEXAMPLE";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn aws_native_signing(unsigned: bool) -> Value {
    json!({"name": "envoy.filters.http.aws_request_signing", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning",
        "service_name": "s3", "region": "us-east-1", "host_rewrite": "bucket.s3.us-east-1.amazonaws.com",
        "use_unsigned_payload": unsigned,
        "credential_provider": {"inline_credential": {"access_key_id": AWS_KEY_ID, "secret_access_key": AWS_SECRET}}
    }})
}

fn aws_scenarios() -> Vec<Scenario> {
    let credentials = json!({"access_key_id": AWS_KEY_ID, "secret_access_key": AWS_SECRET});
    let signing = |payload: &str| {
        json!({"region": "us-east-1", "service": "s3", "host": "bucket.s3.us-east-1.amazonaws.com",
               "credentials": credentials, "payload": payload})
    };
    let mut post = get("/bucket/object.bin", &[("content-type", "application/octet-stream")]);
    post.method = "PUT";
    post.body = vec![b'x'; 16 * 1024];
    let mut invoke = get("/orders", &[("content-type", "application/json")]);
    invoke.method = "POST";
    invoke.body = br#"{"order": 42, "items": ["a", "b"]}"#.to_vec();
    vec![
        Scenario {
            name: "SigV4 sign, GET, unsigned payload",
            request: get("/bucket/object.txt?versionId=3", &[("x-custom", "a b  c")]),
            native_name: "aws_request_signing (inline credentials)",
            native: Some(vec![aws_native_signing(true)]),
            ours: vec![wasm_filter("aws", &signing("unsigned"))],
            checks: vec![DM_VS_NATIVE, WASM_OWN_CODE],
        },
        Scenario {
            name: "SigV4 sign, PUT 16 KiB, signed payload",
            request: post,
            native_name: "aws_request_signing (inline credentials)",
            native: Some(vec![aws_native_signing(false)]),
            ours: vec![wasm_filter("aws", &signing("signed"))],
            checks: vec![
                DM_VS_NATIVE,
                Check::Cpu { label: "Wasm ≤ 2.5× native", terms: &[(OURS, 1.0), (NATIVE, -2.5)] },
            ],
        },
        Scenario {
            name: "Lambda invoke wrapping",
            request: invoke,
            // Envoy's aws_lambda acts only on clusters marked as Lambda gateways (bench.yaml's upstream is) and
            // takes its credentials from the environment (`start` sets them).
            native_name: "aws_lambda (payload passthrough)",
            native: Some(vec![json!({"name": "envoy.filters.http.aws_lambda", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.aws_lambda.v3.Config",
                "arn": "arn:aws:lambda:us-east-1:123456789012:function:orders", "payload_passthrough": true}})]),
            ours: vec![wasm_filter(
                "aws",
                &json!({"region": "us-east-1", "service": "lambda", "credentials": credentials,
                    "lambda": {"function": "orders", "format": "raw"}}),
            )],
            checks: vec![
                DM_VS_NATIVE,
                Check::Cpu { label: "Wasm ≤ 1.5× native", terms: &[(OURS, 1.0), (NATIVE, -1.5)] },
            ],
        },
    ]
}

/// Where the measured Envoys' clusters point.
struct Ports {
    upstream: u16,
    rls: u16,
    nats: u16,
}

fn start(variant: &Variant, ports: &Ports, concurrency: u32) -> Envoy {
    EnvoyConfig::new("bench.yaml")
        .upstream(8081, ports.upstream)
        .upstream(RLS_PORT, ports.rls)
        .upstream(NATS_PORT, ports.nats)
        .http_filters("front", variant.filters.clone())
        .concurrency(concurrency)
        .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &dynamic_module_dir().display().to_string())
        .cpu(0)
        .log_level("warn")
        .start()
}

const BASELINE: &str = "baseline (no filter)";
/// A second Envoy without filters: what two identical Envoys differ by (the instance's own noise: memory layout,
/// ports), which the rounds' interval does not show.
const BASELINE_AGAIN: &str = "no filter, second Envoy";
const FLOOR: &str = "no-op wasm (floor)";
const DM_FLOOR: &str = "no-op dynamic module (floor)";
/// The body rows' floor: a filter that holds the headers until the body is complete and does nothing else.
const FLOOR_HOLDING: &str = "no-op wasm holding the body";
const NATIVE: &str = "native";
const OURS: &str = "ours (wasm)";
const DM: &str = "ours (dynamic module)";
/// `--before DIR`: the earlier builds of ours, beside the current ones.
const OURS_BEFORE: &str = "ours (wasm), before";
const DM_BEFORE: &str = "ours (dynamic module), before";

/// The variants of `--before DIR`: the same filters from the files in `dir` (a dynamic module is copied into the
/// modules' directory as `lib<filter>_before.so`, which Envoy loads as module `<filter>_before`).
fn before_variants(scenario: &Scenario, dir: &Path) -> Vec<Variant> {
    let mut wasm = Vec::new();
    let mut modules = Vec::new();
    for filter in &scenario.ours {
        let name = filter["name"].as_str().unwrap_or_default();
        let mut earlier = filter.clone();
        earlier["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
            json!(dir.join(format!("{name}.wasm")).display().to_string());
        wasm.push(earlier);
        let copy = dynamic_module_dir().join(format!("lib{name}_before.so"));
        std::fs::copy(dir.join(format!("lib{name}.so")), &copy)
            .unwrap_or_else(|e| panic!("--before: lib{name}.so from {} to {}: {e}", dir.display(), copy.display()));
        let mut module = dynamic_module_filter(filter);
        module["typed_config"]["dynamic_module_config"]["name"] = json!(format!("{name}_before"));
        modules.push(module);
    }
    vec![Variant { name: OURS_BEFORE, filters: wasm }, Variant { name: DM_BEFORE, filters: modules }]
}

async fn measure(
    scenario: &Scenario,
    concurrency: u32,
    ports: &Ports,
    settings: &Settings,
    before: Option<&Path>,
) -> Measured {
    let mut variants = vec![
        Variant { name: BASELINE, filters: vec![] },
        Variant { name: BASELINE_AGAIN, filters: vec![] },
        Variant { name: FLOOR, filters: vec![wasm_filter("noop", &json!({}))] },
        Variant { name: DM_FLOOR, filters: vec![dynamic_module_filter(&wasm_filter("noop", &json!({})))] },
    ];
    if let Some(native) = &scenario.native {
        variants.push(Variant { name: NATIVE, filters: native.clone() });
    }
    variants.push(Variant { name: OURS, filters: scenario.ours.clone() });
    variants.push(Variant { name: DM, filters: scenario.ours.iter().map(dynamic_module_filter).collect() });
    if let Some(dir) = before {
        variants.extend(before_variants(scenario, dir));
    }
    let profile = concurrency == 1;
    let (rounds, profile) =
        run_interleaved(scenario.name, &scenario.request, &variants, concurrency, ports, settings, profile).await;
    Measured {
        scenario: scenario.name,
        concurrency,
        native_name: scenario.native_name,
        checks: scenario.checks.clone(),
        variants: rounds,
        profile,
    }
}

/// Starts one Envoy per variant, warms each up, then loads them in rotating interleaved rounds. With `profile`
/// (and perf available), also where each variant's CPU went over the rounds, in µs per request.
async fn run_interleaved(
    label: &str,
    request: &RequestSpec,
    variants: &[Variant],
    concurrency: u32,
    ports: &Ports,
    settings: &Settings,
    profile: bool,
) -> (Vec<(&'static str, Vec<Round>)>, Vec<(&'static str, CpuSplit)>) {
    let envoys: Vec<Envoy> = variants.iter().map(|v| start(v, ports, concurrency)).collect();
    for envoy in &envoys {
        let warm = run_round(envoy.port("front"), envoy.pid(), request, settings.warmup, settings.connections).await;
        assert_eq!(warm.unexpected, 0, "{label}: unexpected answers while warming up:\n{}", envoy.log());
    }
    // The measured Envoys run on core 0 (see `start`), and only them: the samples of that core split by process.
    let recording = if profile { CoreProfile::start(0) } else { None };
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); variants.len()];
    for round in 0..settings.rounds {
        // Rotate the order every round, so that no variant always runs first (or right after another).
        for offset in 0..variants.len() {
            let i = (round + offset) % variants.len();
            let envoy = &envoys[i];
            let result =
                run_round(envoy.port("front"), envoy.pid(), request, settings.requests, settings.connections).await;
            assert_eq!(result.unexpected, 0, "{label} / {}: unexpected answers", variants[i].name);
            rounds[i].push(result);
        }
    }
    let requests = settings.rounds as f64 * settings.requests as f64;
    let splits = recording.map(CoreProfile::stop).unwrap_or_default();
    let profile = variants
        .iter()
        .zip(&envoys)
        .filter_map(|(v, envoy)| splits.get(&envoy.pid()).map(|split| (v.name, split.scaled(1e6 / requests))))
        .collect();
    (variants.iter().map(|v| v.name).zip(rounds).collect(), profile)
}

/// How many calls of one kind the probe filter makes per request in its "many" variant: enough to lift the
/// figure out of the noise (the "one call" variant shows what a filter's single call really costs).
const PROBE_CALLS: u32 = 10;

/// The host calls the probe measures: (what the report calls it, the probe's kind).
const PROBE_KINDS: [(&str, &str); 8] = [
    ("read a header that is there (`:path`)", "get"),
    ("read a header that is not there", "miss"),
    ("read all request headers at once", "pairs"),
    ("set a request header", "set"),
    ("increment a counter", "metric"),
    ("read a shared-data value (8 bytes)", "shared_get"),
    ("read a shared-data value and write it back with its CAS token", "shared_cas"),
    ("read the monotonic clock (WASI)", "clock"),
];

/// What one host call costs, in Envoy CPU µs: the probe filter making one and `PROBE_CALLS` calls of one kind per
/// request, against the same filter making none, in interleaved rounds (1 worker). Returns the report table.
async fn host_call_costs(ports: &Ports, settings: &Settings) -> String {
    let probe = |name: &'static str, kind: &str, calls: u32| Variant {
        name,
        filters: vec![wasm_filter("probe", &Value::String(format!("{kind}:{calls}")))],
    };
    let mut variants = vec![probe("no call", "none", 0)];
    for (name, kind) in PROBE_KINDS {
        variants.push(probe(name, kind, 1));
        variants.push(probe(name, kind, PROBE_CALLS));
    }
    let request = get("/users/42", &[("x-user", "ada@example.com")]);
    let (measured, _) = run_interleaved("host calls", &request, &variants, 1, ports, settings, false).await;
    let Some((_, none)) = measured.first() else { return String::new() };
    let mut out = format!(
        "| host call | one call per request, µs | {PROBE_CALLS} calls per request, µs per call |\n|---|---|---|\n"
    );
    for pair in measured.get(1..).unwrap_or_default().chunks(2) {
        if let [(name, one), (_, many)] = pair {
            let (one, many) = (per_call(one, none, 1), per_call(many, none, PROBE_CALLS));
            let _ = writeln!(out, "| {name} | {one} | {many} |");
        }
    }
    out
}

/// The same for a request with a body (1 KiB of JSON) whose headers the probe holds until the body is complete,
/// as the body filters do: one call of each kind per request.
async fn body_call_costs(ports: &Ports, settings: &Settings) -> String {
    let probe = |name: &'static str, kind: &str, calls: u32| Variant {
        name,
        filters: vec![wasm_filter("probe", &Value::String(format!("{kind}:{calls}:hold")))],
    };
    let variants = vec![
        probe("no call", "none", 0),
        probe("set a request header", "set", 1),
        probe("remove `content-length` (as a filter that will change the body does)", "drop_length", 1),
        probe("read the whole body at its end", "body_read", 1),
        probe("read the whole body and replace it", "body_replace", 1),
    ];
    let (measured, _) = run_interleaved("body calls", &order_request(), &variants, 1, ports, settings, false).await;
    let Some((_, none)) = measured.first() else { return String::new() };
    let mut out =
        String::from("| with a 1 KiB body, headers held until its end | one call per request, µs |\n|---|---|\n");
    for (name, rounds) in measured.get(1..).unwrap_or_default() {
        let _ = writeln!(out, "| {name} | {} |", per_call(rounds, none, 1));
    }
    out
}

/// The JSON body row taken apart: the transformation filter doing more and more of that row's work on the same
/// request, each step against a filter that only holds the headers until the body is complete (1 worker, with the
/// perf split).
async fn body_steps(ports: &Ports, settings: &Settings) -> String {
    let step = |name: &'static str, template: Value| Variant {
        name,
        filters: vec![wasm_filter("transformation", &order_transformation(template))],
    };
    let constant = json!({"text": "{\"constant\": true}"});
    let variants = vec![
        Variant { name: FLOOR_HOLDING, filters: vec![wasm_filter("probe", &json!("none:0:hold"))] },
        step(
            "a static request header, body passed through",
            json!({"headers": {"x-a": {"text": "b"}}, "passthrough": {}}),
        ),
        step("a constant body, JSON not parsed", json!({"parse_body_behavior": "DontParse", "body": constant})),
        step("a constant body, JSON parsed", json!({"body": constant})),
        step("the row's template (four fields of the parsed JSON)", json!({"body": {"text": ORDER_TEMPLATE}})),
    ];
    let (measured, profile) =
        run_interleaved("body steps", &order_request(), &variants, 1, ports, settings, true).await;
    let Some((_, reference)) = measured.first() else { return String::new() };
    let split = |name: &str| profile.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
    let mut out = String::from(
        "| step | added CPU over the holding filter, µs | in Wasm code | in Envoy and libraries |\n|---|---|---|---|\n",
    );
    for (name, rounds) in measured.get(1..).unwrap_or_default() {
        let places = match (split(name), split(FLOOR_HOLDING)) {
            (Some(ours), Some(floor)) => format!(
                "{:.1} | {:.1}",
                ours.filter_code - floor.filter_code,
                ours.envoy + ours.libraries - floor.envoy - floor.libraries
            ),
            _ => "— | —".to_string(),
        };
        let _ = writeln!(out, "| {name} | {} | {places} |", per_call(rounds, reference, 1));
    }
    out
}

/// CPU per call of one probe variant, round by round against the no-call probe of the same round.
fn per_call(rounds: &[Round], none: &[Round], calls: u32) -> String {
    let values: Vec<f64> = rounds
        .iter()
        .zip(none)
        .map(|(with, without)| (with.cpu_us_per_request - without.cpu_us_per_request) / f64::from(calls))
        .collect();
    MedianCi::of(&values).show(2)
}

impl Measured {
    fn rounds(&self, name: &str) -> Option<&[Round]> {
        self.variants.iter().find(|(n, _)| *n == name).map(|(_, r)| r.as_slice())
    }

    /// Added CPU per request of a variant over the baseline, round by round (same round: same machine state).
    fn added_per_round(&self, name: &str) -> Option<Vec<f64>> {
        let (rounds, baseline) = (self.rounds(name)?, self.rounds(BASELINE)?);
        Some(rounds.iter().zip(baseline).map(|(r, b)| r.cpu_us_per_request - b.cpu_us_per_request).collect())
    }

    /// The median of a variant's paired differences to the baseline, with its confidence interval.
    fn added(&self, name: &str) -> Option<MedianCi> {
        Some(MedianCi::of(&self.added_per_round(name)?))
    }

    /// `Σ weight × added(variant)` round by round, its median and interval; `None` if a variant is missing.
    fn combined(&self, terms: &[(&str, f64)]) -> Option<MedianCi> {
        let mut sums = vec![0.0; self.rounds(BASELINE)?.len()];
        for (name, weight) in terms {
            for (sum, added) in sums.iter_mut().zip(self.added_per_round(name)?) {
                *sum += weight * added;
            }
        }
        Some(MedianCi::of(&sums))
    }
}

/// The profile summary rows of a scenario: what the floor and ours add over the baseline, by place.
fn profile_rows(m: &Measured) -> Vec<String> {
    let split = |name: &str| m.profile.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
    let Some(baseline) = split(BASELINE) else { return Vec::new() };
    [FLOOR, DM_FLOOR, NATIVE, OURS, DM]
        .iter()
        .filter_map(|name| {
            let added = split(name)?;
            Some(format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                m.scenario,
                label(m, name),
                added.filter_code - baseline.filter_code,
                added.envoy + added.libraries - baseline.envoy - baseline.libraries,
                added.kernel - baseline.kernel,
                added.total() - baseline.total()
            ))
        })
        .collect()
}

/// The label of a variant in the report.
fn label<'a>(m: &'a Measured, name: &'a str) -> &'a str {
    if name == NATIVE {
        m.native_name
    } else {
        name
    }
}

/// Appends the scenario's detail table to `out`; returns its summary row and its rows of the targets table.
fn report_scenario(out: &mut String, m: &Measured) -> (String, Vec<String>) {
    let _ = writeln!(out, "\n### {} — concurrency {}\n", m.scenario, m.concurrency);
    let _ = writeln!(
        out,
        "| variant | Envoy CPU µs/req | added µs/req over baseline (paired) | req/s | p50 µs | p99 µs |\n\
         |---|---|---|---|---|---|"
    );
    for (name, rounds) in &m.variants {
        let of = |f: fn(&Round) -> f64| MedianCi::of(&rounds.iter().map(f).collect::<Vec<_>>());
        let added = m.added(name).filter(|_| *name != BASELINE).map(|a| a.show(1)).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {added} | {} | {:.0} | {:.0} |",
            label(m, name),
            of(|r| r.cpu_us_per_request).show(1),
            of(|r| r.requests_per_second).show(0),
            of(|r| r.p50_us).median,
            of(|r| r.p99_us).median
        );
    }
    if !m.profile.is_empty() {
        let _ = writeln!(
            out,
            "\nWhere the CPU went (perf samples of the Envoys' core over the rounds, µs per request; filter \
             code is what V8 compiled from the .wasm, or the dynamic module's own library):\n\n\
             | variant | filter code | Envoy | other libraries | kernel | sampled total |\n|---|---|---|---|---|---|"
        );
        for (name, split) in &m.profile {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                label(m, name),
                split.filter_code,
                split.envoy,
                split.libraries,
                split.kernel,
                split.total()
            );
        }
    }
    let cell = |name: &str| m.added(name).map_or_else(|| "—".to_string(), |a| a.show(1));
    let ratio = |name: &str| match (m.added(name), m.added(NATIVE)) {
        (Some(a), Some(n)) if n.median > 0.0 => format!("{:.2}", a.median / n.median),
        _ => "—".to_string(),
    };
    let summary = format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        m.scenario,
        m.concurrency,
        cell(BASELINE_AGAIN),
        cell(FLOOR),
        cell(DM_FLOOR),
        if m.added(NATIVE).is_some() { cell(NATIVE) } else { m.native_name.to_string() },
        cell(OURS),
        cell(DM),
        ratio(OURS),
        ratio(DM)
    );
    for (now, before) in [(OURS, OURS_BEFORE), (DM, DM_BEFORE)] {
        if let Some(change) = m.combined(&[(now, 1.0), (before, -1.0)]) {
            let line = format!("{now} minus its earlier build, paired per round: {} µs", change.show(1));
            eprintln!("[bench] {} (concurrency {}): {line}", m.scenario, m.concurrency);
            let _ = writeln!(out, "\n{line}");
        }
    }
    let targets = m.checks.iter().filter_map(|check| check_row(m, check)).collect();
    (summary, targets)
}

/// A row of the targets table: what the check's left side came to, and the verdict from its interval.
fn check_row(m: &Measured, check: &Check) -> Option<String> {
    let (label, figure, verdict) = match *check {
        Check::Cpu { label, terms } => {
            let slack = m.combined(terms)?;
            (label.to_string(), slack.show(1), stats::verdict(&slack).to_string())
        }
        Check::OwnCodeHalf => {
            // perf gives one figure over all rounds, without an interval: compared with the added CPU's interval.
            let split = |name: &str| m.profile.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
            let code = split(OURS)?.filter_code - split(BASELINE)?.filter_code;
            let added = m.added(OURS)?;
            let half = |x: f64| code - x / 2.0;
            let slack = MedianCi { median: half(added.median), low: half(added.high), high: half(added.low) };
            ("Wasm: own code (perf) ≤ half of added".to_string(), slack.show(1), stats::verdict(&slack).to_string())
        }
    };
    Some(format!("| {} | {} | {label} | {figure} | {verdict} |", m.scenario, m.concurrency))
}

/// Envoy's start-to-ready time (ms) and resident memory (MiB), median of three starts.
fn startup(file: &str, ports: &Ports) -> (f64, f64) {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let envoy = EnvoyConfig::new(file)
            .upstream(8081, ports.upstream)
            .upstream(RLS_PORT, ports.rls)
            .upstream(NATS_PORT, ports.nats)
            .log_level("warn")
            .start();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        rss.push(rss_kib(envoy.pid()) as f64 / 1024.0);
    }
    (Spread::of(&times).median, Spread::of(&rss).median)
}

/// `1.40.0/Clean/RELEASE/BoringSSL` from `envoy --version` (`... version: <hash>/1.40.0/Clean/RELEASE/BoringSSL`).
fn envoy_version() -> String {
    let output = std::process::Command::new(integration_tests::paths::envoy_bin()).arg("--version").output();
    let text = output.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    let version = text.split("version:").nth(1).and_then(|v| v.split_whitespace().next()).unwrap_or("unknown");
    version.split_once('/').map_or(version, |(_, rest)| rest).to_string()
}

/// The machine's cores (this process is pinned to one, so not `available_parallelism`).
fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0)
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(project_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only TEXT`: just the scenarios whose name contains TEXT (for working on one filter).
    let args: Vec<String> = std::env::args().collect();
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let before = args.iter().position(|a| a == "--before").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    // More short rounds rather than fewer long ones: the interval of a median narrows with the rounds.
    let settings = if quick {
        Settings { rounds: 3, requests: 1000, warmup: 200, connections: 8 }
    } else {
        Settings { rounds: 20, requests: 2000, warmup: 1000, connections: 8 }
    };
    // Every variant names its build itself; the harness's switch would turn the Wasm ones into dynamic modules.
    if Build::current() != Build::Wasm {
        eprintln!("[bench] unset FILTER_BUILD: the benchmark runs both builds side by side");
        std::process::exit(2);
    }
    let started = Instant::now();
    let rls = RateLimitServer::start(vec![], Mode::Answer);
    let nats = NatsServer::start_default();
    let upstream = EnvoyConfig::new("bench-upstream.yaml").concurrency(1).cpu(1).log_level("warn").start();
    let ports = Ports { upstream: upstream.port("upstream"), rls: rls.port(), nats: nats.port() };

    let mut details = String::new();
    let mut summary = Vec::new();
    let mut targets = Vec::new();
    let mut profile = Vec::new();
    for concurrency in [1, 2] {
        for scenario in scenarios() {
            if only.as_ref().is_some_and(|only| !scenario.name.contains(only.as_str())) {
                continue;
            }
            eprintln!("[bench] {} (concurrency {concurrency})", scenario.name);
            let measured = measure(&scenario, concurrency, &ports, &settings, before.as_deref()).await;
            let (row, checks) = report_scenario(&mut details, &measured);
            summary.push(row);
            targets.extend(checks);
            profile.extend(profile_rows(&measured));
        }
    }

    let ceiling = if only.as_ref().is_none_or(|only| "HTTP -> NATS publish".contains(only.as_str())) {
        eprintln!("[bench] native NATS client (the ceiling)");
        Some(nats_client_ceiling(nats.port(), &settings).await)
    } else {
        None
    };
    let host_calls = if only.as_ref().is_none_or(|only| "host calls".contains(only.as_str())) {
        eprintln!("[bench] host call costs (probe filter)");
        Some((host_call_costs(&ports, &settings).await, body_call_costs(&ports, &settings).await))
    } else {
        None
    };
    let steps = if only.as_ref().is_none_or(|only| "JSON body steps".contains(only.as_str())) {
        eprintln!("[bench] the JSON body row, step by step");
        Some(body_steps(&ports, &settings).await)
    } else {
        None
    };
    let (bare_ms, bare_mib) = startup("bench.yaml", &ports);
    let (demo_ms, demo_mib) = startup("demo.yaml", &ports);

    let mut doc = String::new();
    let date = std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output();
    let date = date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let cores = machine_cores();
    let (rank, coverage) = stats::interval_rank(settings.rounds);
    let _ = writeln!(doc, "# Benchmarks\n");
    let _ = writeln!(
        doc,
        "Generated by `envoy-test/bench` on {date}: {cores} cores, Envoy {}, commit {}, {} rounds of {} requests per \
         variant over {} keep-alive HTTP/1.1 connections, variants interleaved, measured Envoys pinned to core 0 and \
         the load generator and upstream to core 1. CPU is the measured Envoy's CPU time (sum of its threads' \
         /proc schedstat) divided by requests. \"Added\" is a variant's figure minus the no-filter baseline's in the \
         same round (a paired difference); every figure is the median over the rounds with, in brackets, a \
         distribution-free {:.1}% confidence interval for it (its bounds are the k-th smallest and the k-th largest \
         of the {} rounds, k = {rank}: order statistics of Binomial({}, 1/2)). Total run time: {:.0} s.\n",
        envoy_version(),
        git_commit(),
        settings.rounds,
        settings.requests,
        settings.connections,
        coverage * 100.0,
        settings.rounds,
        settings.rounds,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(doc, "## Summary: added Envoy CPU per request (µs)\n");
    let _ = writeln!(
        doc,
        "\"A second no-filter Envoy\" is the same as the baseline, started again: what it adds is what two identical \
         Envoys differ by. Its interval excludes 0 in some rows: each Envoy has a noise of its own (memory layout, \
         ports), which the rounds cannot show. A figure, or a target's left side, within that distance of another is \
         not told apart from it.\n"
    );
    let _ = writeln!(
        doc,
        "| scenario | workers | a second no-filter Envoy | no-op Wasm floor | no-op dynamic module floor | native | \
         ours, Wasm | ours, dynamic module | Wasm / native | dynamic module / native |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for line in &summary {
        let _ = writeln!(doc, "{line}");
    }
    let _ = writeln!(doc, "\n## Targets (issue #17)\n");
    let _ = writeln!(
        doc,
        "Each target is written as `left side ≤ 0` in µs per request and computed round by round from that round's \
         paired differences (e.g. `dynamic module ≤ 1.2× native`: added(dynamic module) − 1.2 × added(native)); \
         the median and {:.1}% interval of that per-round figure decide: **met** if the whole interval is at or \
         below 0, **missed** if it is wholly above, **undecided** if it straddles 0 (the machine's noise could go \
         either way). The own-code target compares perf's one figure for the Wasm code (over all rounds, 1 worker, \
         no interval) with half the interval of the added CPU.\n",
        coverage * 100.0
    );
    let _ = writeln!(doc, "| scenario | workers | target | left side, µs | verdict |\n|---|---|---|---|---|");
    for line in &targets {
        let _ = writeln!(doc, "{line}");
    }
    if !profile.is_empty() {
        let _ = writeln!(doc, "\n## Where the added time goes (1 worker, perf)\n");
        let _ = writeln!(
            doc,
            "`perf record` sampled the Envoys' core at {PROFILE_HZ} Hz during the rounds above; each sample is put \
             where the code lives. **Filter code** is what V8 compiled from the .wasm file (the filter's own logic, \
             the proxy-wasm SDK, the allocator inside the VM and the call stubs) or, for a dynamic module, the \
             module's own library (lib<filter>.so). **Envoy and libraries** is the host \
             side: Envoy answering the filter's calls (header maps, shared data, metrics, local replies, side \
             streams), V8's runtime around each call into and out of the VM, and libc (malloc, memcpy). \
             µs per request added over the no-filter baseline. perf estimates from samples (one core, {PROFILE_HZ} a \
             second), so the sampled total can differ from the summary's figure from /proc: read the columns as \
             where the time goes, not as exact sums.\n"
        );
        let _ = writeln!(doc, "| scenario | variant | filter code | Envoy and libraries | kernel | total |");
        let _ = writeln!(doc, "|---|---|---|---|---|---|");
        for line in &profile {
            let _ = writeln!(doc, "{line}");
        }
    }
    let _ = writeln!(doc, "\n{NOTES}");
    if let Some(c) = ceiling {
        let _ = writeln!(doc, "\n## HTTP -> NATS: the ceiling\n");
        let _ = writeln!(
            doc,
            "Stock Envoy has no NATS filter. The ceiling is a native client publishing the same {}-byte messages \
             over {} persistent connections, each publish confirmed by a PING/PONG round trip as the filter's are: \
             {} msg/s (median, min–max), p50 {:.0} µs, p99 {:.0} µs. Through the filter every publish also costs \
             one TCP connection through Envoy's internal tunnel listener, and the HTTP request around it.",
            NATS_PAYLOAD.len(),
            settings.connections,
            c.0.show(0),
            c.1,
            c.2
        );
    }
    if let Some((table, body_table)) = host_calls {
        let _ = writeln!(doc, "\n## What a host call costs\n");
        let _ = writeln!(
            doc,
            "Measured with the probe filter (bench/probe), which makes one or {PROBE_CALLS} calls of one kind per \
             request, against the same filter making none, 1 worker, in rounds as above (median of the paired \
             differences per call, with its interval). A \
             value the host returns is allocated by a call back into the VM, which is why a read costs several \
             times a miss; a filter's first call of a kind costs more than the next ones.\n"
        );
        let _ = writeln!(doc, "{table}");
        let _ = writeln!(
            doc,
            "With a body whose headers the probe holds until the body is complete, as the body filters do (measured \
             the same way): header changes and body reads or replacements made at the end of the body.\n"
        );
        let _ = writeln!(doc, "{body_table}");
    }
    if let Some(steps) = steps {
        let _ = writeln!(doc, "\n## The JSON body row, step by step\n");
        let _ = writeln!(
            doc,
            "The transformation filter on the JSON row's request (POST, the 1 KiB order): \
             first a header change alone (the body passes through), then the body steps: a constant new body \
             without parsing the JSON, the same after parsing it, and the row's template. Added CPU per request \
             over a filter that only holds the headers until the body is complete (median of the paired \
             differences, with its interval), and the perf split \
             of the same rounds.\n"
        );
        let _ = writeln!(doc, "{steps}");
    }
    let _ = writeln!(doc, "\n## Size and start-up\n");
    let _ = writeln!(doc, "| .wasm | bytes | under 1 MiB |\n|---|---|---|");
    for name in ["ratelimit", "transformation", "aws", "nats", "noop"] {
        let size = std::fs::metadata(wasm_dir().join(format!("{name}.wasm"))).map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(doc, "| {name}.wasm | {size} | {} |", if size < 1 << 20 { "yes" } else { "**no**" });
    }
    let _ = writeln!(doc, "\n| dynamic module | bytes |\n|---|---|");
    for name in ["ratelimit", "transformation", "aws", "nats", "noop"] {
        let size = std::fs::metadata(dynamic_module_dir().join(format!("lib{name}.so"))).map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(doc, "| lib{name}.so | {size} |");
    }
    let _ = writeln!(doc, "\n| Envoy (2 workers) | start to ready, ms | resident memory, MiB |\n|---|---|---|");
    let _ = writeln!(doc, "| no filters (bench.yaml) | {bare_ms:.0} | {bare_mib:.1} |");
    let _ = writeln!(doc, "| the four filters (demo.yaml) | {demo_ms:.0} | {demo_mib:.1} |");
    let _ = writeln!(doc, "\n## Details\n{details}");
    let path = project_root().join("docs").join("BENCHMARKS.md");
    std::fs::create_dir_all(path.parent().unwrap_or(&project_root())).ok();
    std::fs::write(&path, &doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("{doc}");
    eprintln!("[bench] wrote {} in {:.0} s", path.display(), started.elapsed().as_secs_f64());
    drop(upstream);
}
