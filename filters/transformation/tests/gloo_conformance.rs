//! Gloo conformance: what envoy-gloo's own transformation tests assert, restated as data cases
//! (`conformance/gloo/*.json`) and run through this filter: through the stream with the fake host (statuses,
//! local replies, `content-length` and `content-type` as Envoy would forward them), or through the pure
//! transformation when a case needs the environment or Envoy metadata.
//!
//! A case: `name`, `gloo` (the Gloo test it restates), then either `config` (the whole filter configuration) or
//! `transformation` (one Gloo `Transformation`, applied to every request, or to every response with
//! `"side": "response"`); `request` / `response` (`headers` as `[name, value]` pairs, `body`); optional `env`
//! and `metadata` (`cluster` / `dynamic` / `host`: `{namespace: {fields}}`, with `string_delimiter` from the
//! template), or `properties` the host gives (`response.code_details`). Expected: `config_error` (a substring), or `expect` with `status`, `error_contains`, `headers`
//! (`name: value`, `null` for absent, or a list for every value in order), `body` or `body_json`. A case where we
//! intentionally differ from Gloo says why in `differs` (or `unsupported`) and asserts our behaviour.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{Map, Value};
use shared::host::{FakeHost, Filter, Flow, Side, Stream};
use transformation::config;
use transformation::metadata::EnvoyMetadata;
use transformation::stream::TransformationFilter;
use transformation::transform::{HeaderOp, Message};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    gloo: String,
    config: Option<Value>,
    transformation: Option<Value>,
    #[serde(default)]
    side: CaseSide,
    #[serde(default)]
    request: Message_,
    response: Option<Message_>,
    #[serde(default)]
    env: HashMap<String, String>,
    metadata: Option<Map<String, Value>>,
    /// Envoy properties the fake host gives (e.g. `response.code_details`).
    #[serde(default)]
    properties: HashMap<String, String>,
    config_error: Option<String>,
    expect: Option<Expect>,
    differs: Option<String>,
    unsupported: Option<String>,
}

#[derive(Deserialize, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum CaseSide {
    #[default]
    Request,
    Response,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
#[allow(non_camel_case_types)]
struct Message_ {
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: Option<u32>,
    error_contains: Option<String>,
    #[serde(default)]
    headers: Map<String, Value>,
    body: Option<String>,
    body_json: Option<Value>,
}

/// The message after the filter: its headers (every value, in order), body, and the local reply's status and text.
struct Outcome {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: Option<u32>,
    error: Option<String>,
}

fn default_request() -> Vec<(String, String)> {
    vec![(":method".into(), "GET".into()), (":path".into(), "/".into()), (":authority".into(), "gloo".into())]
}

fn filter_config(case: &Case) -> Result<Value, String> {
    match (&case.config, &case.transformation) {
        (Some(config), None) => Ok(config.clone()),
        (None, Some(t)) => {
            let field = match case.side {
                CaseSide::Request => "request_transformation",
                CaseSide::Response => "response_transformation",
            };
            Ok(serde_json::json!({"transformations": [{"route_transformations": {field: t}}]}))
        }
        _ => Err("set one of `config`, `transformation`".to_string()),
    }
}

fn pairs(host: &FakeHost, side: Side) -> Vec<(String, String)> {
    let map = match side {
        Side::Request => &host.request_headers,
        Side::Response => &host.response_headers,
    };
    map.borrow().iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect()
}

/// Through the stream, as Envoy drives it.
fn run_stream(case: &Case, config: &[u8]) -> Result<Outcome, String> {
    let filter = Rc::new(TransformationFilter::configure(&FakeHost::default(), config, None)?);
    let mut stream = TransformationFilter::stream(filter);
    let mut request = case.request.clone();
    if request.headers.is_empty() {
        request.headers = default_request();
    }
    let refs: Vec<(&str, &str)> = request.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let host = FakeHost::with_request(&refs).body(request.body.as_bytes());
    for (path, value) in &case.properties {
        host.set_property(path, value);
    }
    let reply = |flow: Flow| match flow {
        Flow::Reply(reply) => {
            let text = serde_json::from_slice::<Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
            Some(Outcome {
                headers: reply.headers.clone(),
                body: reply.body.clone(),
                status: Some(reply.status),
                error: Some(text),
            })
        }
        _ => None,
    };
    let mut flow = stream.on_request_headers(&host, request.body.is_empty());
    if flow == Flow::Buffer {
        flow = stream.on_request_body(&host, request.body.len(), true);
    }
    if let Some(outcome) = reply(flow) {
        return Ok(outcome);
    }
    if case.side == CaseSide::Request {
        return Ok(Outcome {
            headers: pairs(&host, Side::Request),
            body: host.request_body.borrow().clone(),
            status: None,
            error: None,
        });
    }
    let response = case.response.clone().unwrap_or_default();
    let mut headers = response.headers.clone();
    if !headers.iter().any(|(n, _)| n == ":status") {
        headers.insert(0, (":status".into(), "200".into()));
    }
    let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    host.set_response(&refs, response.body.as_bytes());
    if stream.on_response_headers(&host, response.body.is_empty()) == Flow::Buffer {
        stream.on_response_body(&host, response.body.len(), true);
    }
    let headers = pairs(&host, Side::Response);
    let status = headers.iter().find(|(n, _)| n == ":status").and_then(|(_, v)| v.parse().ok());
    let body = host.response_body.borrow().clone();
    let error = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("error")?.as_str().map(str::to_string));
    Ok(Outcome { headers, body, status, error })
}

/// Through the pure transformation, with the case's environment and metadata.
fn run_pure(case: &Case, config: &[u8]) -> Result<Outcome, String> {
    let parsed = config::parse_with_env(config, case.env.clone()).map_err(|e| e.to_string())?;
    let entry = parsed.rules.first().and_then(|r| r.request_matches.first()).ok_or("no transformation")?;
    let (transformation, message) = match case.side {
        CaseSide::Request => (entry.request.clone(), case.request.clone()),
        CaseSide::Response => (entry.response.clone(), case.response.clone().unwrap_or_default()),
    };
    let transformation = transformation.ok_or("no transformation")?;
    let mut headers = message.headers.clone();
    if headers.is_empty() && case.side == CaseSide::Request {
        headers = default_request();
    }
    let metadata = case.metadata.clone().unwrap_or_default();
    let field = |name: &str| metadata.get(name).cloned().unwrap_or(Value::Null);
    let request_headers = (case.side == CaseSide::Response).then(|| Rc::new(case.request.headers.clone()));
    let result = transformation.apply(Message {
        headers: headers.clone(),
        request_headers,
        body: message.body.as_bytes(),
        is_request: case.side == CaseSide::Request,
        metadata: EnvoyMetadata { cluster: field("cluster"), dynamic: field("dynamic"), host: field("host") },
    });
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => return Ok(Outcome { headers, body: Vec::new(), status: Some(400), error: Some(error) }),
    };
    for op in outcome.ops {
        match op {
            HeaderOp::Set(name, value) => {
                headers.retain(|(n, _)| *n != name);
                headers.push((name, value));
            }
            HeaderOp::Remove(name) => headers.retain(|(n, _)| *n != name),
            HeaderOp::Append(name, value) => headers.push((name, value)),
        }
    }
    let body = outcome.body.unwrap_or_else(|| message.body.into_bytes());
    Ok(Outcome { headers, body, status: None, error: None })
}

/// Checks one case; the error says what differs.
fn check(case: &Case) -> Result<(), String> {
    let config = filter_config(case)?.to_string();
    let pure = !case.env.is_empty() || case.metadata.is_some();
    let result = if pure { run_pure(case, config.as_bytes()) } else { run_stream(case, config.as_bytes()) };
    let outcome = match (result, &case.config_error) {
        (Err(error), Some(expected)) if error.contains(expected.as_str()) => return Ok(()),
        (Err(error), _) => return Err(format!("configuration refused: {error}")),
        (Ok(_), Some(expected)) => return Err(format!("configuration accepted, expected an error with {expected:?}")),
        (Ok(outcome), None) => outcome,
    };
    let expect = case.expect.as_ref().ok_or("no `expect`")?;
    if expect.status != outcome.status && !(expect.status.is_none() && outcome.status == Some(200)) {
        return Err(format!("status {:?}, expected {:?} ({:?})", outcome.status, expect.status, outcome.error));
    }
    if let Some(text) = &expect.error_contains {
        let error = outcome.error.as_deref().unwrap_or_default();
        if !error.contains(text.as_str()) {
            return Err(format!("error {error:?} does not contain {text:?}"));
        }
    }
    for (name, expected) in &expect.headers {
        let values: Vec<&str> =
            outcome.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
        let matches = match expected {
            Value::Null => values.is_empty(),
            Value::String(value) => values.first() == Some(&value.as_str()) && values.len() == 1,
            Value::Array(list) => {
                list.iter().map(Value::as_str).collect::<Vec<_>>()
                    == values.iter().map(|v| Some(*v)).collect::<Vec<_>>()
            }
            _ => false,
        };
        if !matches {
            return Err(format!("header {name}: {values:?}, expected {expected}"));
        }
    }
    let body = String::from_utf8_lossy(&outcome.body);
    if let Some(expected) = &expect.body {
        if body != *expected {
            return Err(format!("body {body:?}, expected {expected:?}"));
        }
    }
    if let Some(expected) = &expect.body_json {
        let parsed: Value = serde_json::from_str(&body).map_err(|e| format!("body {body:?} is not JSON: {e}"))?;
        if parsed != *expected {
            return Err(format!("body {parsed}, expected {expected}"));
        }
    }
    Ok(())
}

#[test]
fn gloo_conformance_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/gloo");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (mut total, mut differs, mut unsupported) = (0, 0, 0);
    let mut failures = Vec::new();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "json")) {
        let text = std::fs::read_to_string(file).unwrap();
        let cases: Vec<Case> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut per_file = 0;
        for case in &cases {
            total += 1;
            per_file += 1;
            assert!(!case.gloo.is_empty(), "{}: which Gloo test?", case.name);
            differs += usize::from(case.differs.is_some());
            unsupported += usize::from(case.unsupported.is_some());
            if let Err(error) = check(case) {
                failures.push(format!("{file_name}: {}: {error}", case.name));
            }
        }
        println!("{file_name}: {per_file} cases");
    }
    let identical = total - differs - unsupported;
    println!(
        "Gloo conformance: {total} cases, {} pass ({identical} as Gloo, {differs} differ, {unsupported} unsupported), {} fail",
        total - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
    assert!(total > 0);
}
