//! Lambda invocation, pure: function names and ARNs, the Invoke request, the API Gateway proxy event, and what
//! the client gets back (raw payload, unwrapped API Gateway proxy response, or 502 on a function error).

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::config::{Format, Invocation, Lambda};
use crate::sigv4;

/// The Invoke API path for a function (name, partial ARN or ARN), with `?Qualifier=` when given. The function is
/// percent-encoded once here (`:` -> `%3A`), as on the wire; the signer encodes it again for the canonical URI.
pub fn invoke_path(function: &str, qualifier: Option<&str>) -> String {
    let mut path = format!("/2015-03-31/functions/{}/invocations", sigv4::encode(function.as_bytes(), false));
    if let Some(q) = qualifier {
        path.push_str("?Qualifier=");
        path.push_str(&sigv4::encode(q.as_bytes(), false));
    }
    path
}

/// `x-amz-invocation-type` for an invocation mode.
pub fn invocation_type(invocation: Invocation) -> &'static str {
    match invocation {
        Invocation::Sync => "RequestResponse",
        Invocation::Async => "Event",
    }
}

fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A version number or an alias name.
pub fn is_qualifier(q: &str) -> bool {
    q == "$LATEST"
        || ((1..=128).contains(&q.len()) && q.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn is_account(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a function given as a name (`orders`), a partial ARN (`123456789012:function:orders`) or an ARN
/// (`arn:aws:lambda:us-east-1:123456789012:function:orders[:qualifier]`). An ARN in another region than the
/// filter's is refused (the signature scope would not match it).
pub fn validate_function(function: &str, region: &str) -> Result<(), String> {
    if !function.contains(':') {
        return if is_function_name(function) {
            Ok(())
        } else {
            Err(format!(
                "invalid Lambda function name {function:?}, expected letters, digits, '-' and '_' (at most 64)"
            ))
        };
    }
    let parts: Vec<&str> = function.split(':').collect();
    let ok = match parts.as_slice() {
        [account, "function", name] => is_account(account) && is_function_name(name),
        ["arn", partition, "lambda", arn_region, account, "function", name, rest @ ..] => {
            partition.starts_with("aws")
                && *arn_region == region
                && is_account(account)
                && is_function_name(name)
                && match rest {
                    [] => true,
                    [q] => is_qualifier(q),
                    _ => false,
                }
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid Lambda function ARN {function:?}, expected arn:aws:lambda:{region}:<12-digit account>:function:<name>"
        ))
    }
}

/// What the filter knows about the client's request, for the API Gateway proxy event.
#[derive(Debug, Clone)]
pub struct ClientRequest<'a> {
    pub method: &'a str,
    /// `:path` with the query string.
    pub path: &'a str,
    /// Non-pseudo headers, in order (the `host` header is taken from `:authority` by the caller).
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// The Lambda payload for a request: the body itself (`raw`) or an API Gateway (REST, v1) proxy event.
pub fn payload(format: Format, request: &ClientRequest<'_>) -> Vec<u8> {
    match format {
        Format::Raw => request.body.to_vec(),
        Format::ApiGateway => api_gateway_event(request).to_string().into_bytes(),
    }
}

/// The API Gateway proxy event for a request.
pub fn api_gateway_event(request: &ClientRequest<'_>) -> Value {
    let (path, query) = shared::request::split_path(request.path);
    let mut headers = Map::new();
    let mut multi_headers: Map<String, Value> = Map::new();
    for (name, value) in request.headers {
        let name = name.to_ascii_lowercase();
        headers.insert(name.clone(), Value::String(value.clone()));
        push_multi(&mut multi_headers, name, value.clone());
    }
    let mut params = Map::new();
    let mut multi_params: Map<String, Value> = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (form_decode(key), form_decode(value));
        params.insert(key.clone(), Value::String(value.clone()));
        push_multi(&mut multi_params, key, value);
    }
    let (body, is_base64) = if request.body.is_empty() {
        (Value::Null, false)
    } else {
        match std::str::from_utf8(request.body) {
            Ok(text) => (Value::String(text.to_string()), false),
            Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(request.body)), true),
        }
    };
    let or_null = |m: Map<String, Value>| if m.is_empty() { Value::Null } else { Value::Object(m) };
    json!({
        "resource": path,
        "path": path,
        "httpMethod": request.method,
        "headers": Value::Object(headers),
        "multiValueHeaders": Value::Object(multi_headers),
        "queryStringParameters": or_null(params),
        "multiValueQueryStringParameters": or_null(multi_params),
        "pathParameters": Value::Null,
        "stageVariables": Value::Null,
        "requestContext": {"httpMethod": request.method, "path": path, "resourcePath": path},
        "body": body,
        "isBase64Encoded": is_base64,
    })
}

fn push_multi(map: &mut Map<String, Value>, key: String, value: String) {
    match map.get_mut(&key) {
        Some(Value::Array(values)) => values.push(Value::String(value)),
        _ => {
            map.insert(key, Value::Array(vec![Value::String(value)]));
        }
    }
}

fn form_decode(text: &str) -> String {
    let bytes = shared::request::percent_decode(&text.replace('+', " "));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply {
        status: u32,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// 502 with this message (no secrets: it names the status and the error type AWS gave).
    BadGateway(Failure, String),
}

/// Why an invocation ends in a 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The function ran and failed (`x-amz-function-error`).
    FunctionError,
    /// AWS refused the Invoke call (an AWS error status).
    InvokeFailed,
    /// The function's answer is not an API Gateway proxy response.
    BadResponse,
}

impl Failure {
    /// Envoy's response-code details for the 502.
    pub fn details(self) -> &'static str {
        match self {
            Failure::FunctionError => "aws_lambda_function_error",
            Failure::InvokeFailed => "aws_lambda_invoke_failed",
            Failure::BadResponse => "aws_lambda_bad_response",
        }
    }
}

/// Turns Lambda's answer to Invoke into the client's response.
pub fn outcome(lambda: &Lambda, status: u32, headers: &[(String, String)], body: &[u8]) -> Outcome {
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    if !(200..300).contains(&status) {
        let kind = header("x-amzn-errortype")
            .map(|t| t.split(':').next().unwrap_or(t).to_string())
            .or_else(|| json_field(body, &["Type", "__type", "code"]))
            .unwrap_or_else(|| "unknown error".to_string());
        return Outcome::BadGateway(
            Failure::InvokeFailed,
            format!("Lambda Invoke failed: AWS answered {status} ({kind})"),
        );
    }
    if let Some(kind) = header("x-amz-function-error") {
        let error_type = json_field(body, &["errorType"]).unwrap_or_else(|| kind.to_string());
        return Outcome::BadGateway(Failure::FunctionError, format!("Lambda function error: {error_type}"));
    }
    if lambda.invocation == Invocation::Async {
        return Outcome::Reply { status: 202, headers: Vec::new(), body: Vec::new() };
    }
    match lambda.format {
        Format::Raw => {
            let content_type = header("content-type").unwrap_or("application/json").to_string();
            Outcome::Reply {
                status: 200,
                headers: vec![("content-type".to_string(), content_type)],
                body: body.to_vec(),
            }
        }
        Format::ApiGateway => unwrap_api_gateway(body).unwrap_or_else(|problem| {
            Outcome::BadGateway(Failure::BadResponse, format!("malformed Lambda proxy response: {problem}"))
        }),
    }
}

fn json_field(body: &[u8], names: &[&str]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    names.iter().find_map(|n| value.get(*n).and_then(Value::as_str).map(str::to_string))
}

/// Unwraps `{statusCode, headers, multiValueHeaders, body, isBase64Encoded}`.
pub fn unwrap_api_gateway(body: &[u8]) -> Result<Outcome, String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "not JSON".to_string())?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let status = match object.get("statusCode") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|s| (100..=599).contains(s))
    .ok_or("`statusCode` missing or not an HTTP status")?;
    let mut headers: Vec<(String, String)> = Vec::new();
    let is_allowed = |name: &str| {
        let lower = name.to_ascii_lowercase();
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            && !matches!(lower.as_str(), "content-length" | "transfer-encoding" | "connection")
    };
    if let Some(Value::Object(map)) = object.get("headers") {
        for (name, value) in map {
            if let Some(v) = scalar(value) {
                if is_allowed(name) && shared::request::is_safe_header_value(&v) {
                    headers.push((name.to_ascii_lowercase(), v));
                }
            }
        }
    }
    if let Some(Value::Object(map)) = object.get("multiValueHeaders") {
        for (name, values) in map {
            let lower = name.to_ascii_lowercase();
            let Value::Array(values) = values else { continue };
            if !is_allowed(name) {
                continue;
            }
            // multiValueHeaders win over headers for the same name, as in API Gateway.
            headers.retain(|(n, _)| *n != lower);
            for v in values.iter().filter_map(scalar).filter(|v| shared::request::is_safe_header_value(v)) {
                headers.push((lower.clone(), v));
            }
        }
    }
    let is_base64 = object.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false);
    let body = match object.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if is_base64 => {
            base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| "`body` is not valid base64")?
        }
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(_) => return Err("`body` is not a string".to_string()),
    };
    Ok(Outcome::Reply { status: u32::try_from(status).unwrap_or(502), headers, body })
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lambda(invocation: Invocation, format: Format) -> Lambda {
        Lambda { function: "f".into(), qualifier: None, invocation, format, timeout_ms: Some(1000) }
    }

    #[test]
    fn invoke_paths() {
        assert_eq!(invoke_path("orders", None), "/2015-03-31/functions/orders/invocations");
        assert_eq!(invoke_path("orders", Some("live")), "/2015-03-31/functions/orders/invocations?Qualifier=live");
        assert_eq!(
            invoke_path("arn:aws:lambda:us-east-1:123456789012:function:orders", Some("$LATEST")),
            "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aorders/invocations?Qualifier=%24LATEST"
        );
        // The canonical URI double-encodes the ARN's colons.
        let path = invoke_path("arn:aws:lambda:us-east-1:123456789012:function:orders", None);
        let canonical = sigv4::canonical_uri(&path, sigv4::PathRules::for_service("lambda"));
        assert!(canonical.contains("arn%253Aaws%253Alambda"), "{canonical}");
        assert_eq!(invocation_type(Invocation::Async), "Event");
        assert_eq!(invocation_type(Invocation::Sync), "RequestResponse");
    }

    #[test]
    fn functions() {
        assert!(validate_function("orders", "us-east-1").is_ok());
        assert!(validate_function("123456789012:function:orders", "us-east-1").is_ok());
        assert!(validate_function("arn:aws:lambda:us-east-1:123456789012:function:orders", "us-east-1").is_ok());
        assert!(validate_function("arn:aws:lambda:us-east-1:123456789012:function:orders:live", "us-east-1").is_ok());
        for bad in [
            "",
            "a b",
            "arn:aws:lambda:eu-west-1:123456789012:function:orders",
            "arn:aws:lambda:us-east-1:1234:function:orders",
            "arn:aws:s3:us-east-1:123456789012:function:orders",
            "arn:aws:lambda:us-east-1:123456789012:function:orders:a:b",
        ] {
            assert!(validate_function(bad, "us-east-1").is_err(), "{bad}");
        }
        assert!(is_qualifier("7") && is_qualifier("$LATEST") && !is_qualifier("a/b") && !is_qualifier(""));
    }

    #[test]
    fn api_gateway_event_shape() {
        let headers = vec![
            ("host".to_string(), "api.example.com".to_string()),
            ("x-multi".to_string(), "1".to_string()),
            ("X-Multi".to_string(), "2".to_string()),
        ];
        let request =
            ClientRequest { method: "POST", path: "/orders/7?a=1&a=2&b=x+y%21&flag", headers: &headers, body: b"hi" };
        let event = api_gateway_event(&request);
        assert_eq!(event["httpMethod"], "POST");
        assert_eq!(event["path"], "/orders/7");
        assert_eq!(event["headers"]["x-multi"], "2");
        assert_eq!(event["multiValueHeaders"]["x-multi"], json!(["1", "2"]));
        assert_eq!(event["queryStringParameters"], json!({"a": "2", "b": "x y!", "flag": ""}));
        assert_eq!(event["multiValueQueryStringParameters"]["a"], json!(["1", "2"]));
        assert_eq!(event["body"], "hi");
        assert_eq!(event["isBase64Encoded"], false);

        let binary = ClientRequest { method: "GET", path: "/", headers: &[], body: &[0xff, 0x00] };
        let event = api_gateway_event(&binary);
        assert_eq!(event["body"], "/wA=");
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["queryStringParameters"], Value::Null);
        let empty = ClientRequest { method: "GET", path: "/", headers: &[], body: b"" };
        assert_eq!(api_gateway_event(&empty)["body"], Value::Null);
        assert_eq!(payload(Format::Raw, &request), b"hi");
    }

    #[test]
    fn raw_and_async_outcomes() {
        let ok = outcome(&lambda(Invocation::Sync, Format::Raw), 200, &[], br#"{"x":1}"#);
        assert_eq!(
            ok,
            Outcome::Reply {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: br#"{"x":1}"#.to_vec()
            }
        );
        let accepted = outcome(&lambda(Invocation::Async, Format::ApiGateway), 202, &[], b"");
        assert_eq!(accepted, Outcome::Reply { status: 202, headers: vec![], body: vec![] });
    }

    #[test]
    fn function_errors_and_aws_errors_are_502() {
        let headers = vec![("X-Amz-Function-Error".to_string(), "Unhandled".to_string())];
        let body = br#"{"errorType": "ValueError", "errorMessage": "boom"}"#;
        assert_eq!(
            outcome(&lambda(Invocation::Sync, Format::Raw), 200, &headers, body),
            Outcome::BadGateway(Failure::FunctionError, "Lambda function error: ValueError".into())
        );
        assert_eq!(
            outcome(&lambda(Invocation::Sync, Format::Raw), 200, &headers, b"not json"),
            Outcome::BadGateway(Failure::FunctionError, "Lambda function error: Unhandled".into())
        );
        let denied = vec![("x-amzn-ErrorType".to_string(), "AccessDeniedException:http://internal".to_string())];
        assert_eq!(
            outcome(&lambda(Invocation::Sync, Format::Raw), 403, &denied, b"{}"),
            Outcome::BadGateway(
                Failure::InvokeFailed,
                "Lambda Invoke failed: AWS answered 403 (AccessDeniedException)".into()
            )
        );
        assert_eq!(
            outcome(&lambda(Invocation::Sync, Format::Raw), 404, &[], br#"{"Type": "User"}"#),
            Outcome::BadGateway(Failure::InvokeFailed, "Lambda Invoke failed: AWS answered 404 (User)".into())
        );
    }

    #[test]
    fn api_gateway_responses_are_unwrapped() {
        let body = br#"{"statusCode": 201, "headers": {"X-A": "1", "content-length": "99"},
                        "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]}, "body": "aGk=", "isBase64Encoded": true}"#;
        let got = outcome(&lambda(Invocation::Sync, Format::ApiGateway), 200, &[], body);
        assert_eq!(
            got,
            Outcome::Reply {
                status: 201,
                headers: vec![
                    ("x-a".into(), "1".into()),
                    ("set-cookie".into(), "a=1".into()),
                    ("set-cookie".into(), "b=2".into())
                ],
                body: b"hi".to_vec()
            }
        );
        let text = br#"{"statusCode": "404", "body": "nope"}"#;
        assert!(matches!(
            outcome(&lambda(Invocation::Sync, Format::ApiGateway), 200, &[], text),
            Outcome::Reply { status: 404, .. }
        ));
        for bad in [&b"[]"[..], b"{}", br#"{"statusCode": 99}"#, br#"{"statusCode": 200, "body": 5}"#, b"x"] {
            assert!(
                matches!(outcome(&lambda(Invocation::Sync, Format::ApiGateway), 200, &[], bad), Outcome::BadGateway(Failure::BadResponse, ref m) if m.starts_with("malformed Lambda proxy response")),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
