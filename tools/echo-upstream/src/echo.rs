//! An in-process HTTP/1.1 + HTTP/2 upstream that answers with what it received, as JSON:
//! `{"method", "path", "headers": {name: value}, "body", "body_base64"}` (repeated headers joined with `,`).
//!
//! Tests steer the answer through request headers, so that response-side behaviour can be exercised through
//! Envoy: `x-echo-status: 503`, `x-echo-header: name: value` (repeatable), `x-echo-body: text` or
//! `x-echo-body-base64: bytes in base64` (replaces the JSON). Every request is also recorded for the test to inspect.
//!
//! An HTTP/1.1 request with `upgrade` (e.g. a WebSocket handshake) gets `101 Switching Protocols`, and the
//! upgraded connection then echoes every byte back.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::server::BackgroundServer;

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The running upstream; stops when dropped.
pub struct EchoUpstream {
    server: BackgroundServer,
    received: Arc<Mutex<Vec<Received>>>,
}

impl EchoUpstream {
    /// Starts on a free loopback port.
    pub fn start() -> Self {
        Self::start_on(0).expect("echo upstream")
    }

    /// Starts on `port` (0: any free one).
    pub fn start_on(port: u16) -> std::io::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let server = BackgroundServer::start(port, {
            let received = received.clone();
            move |listener| serve(listener, received)
        })?;
        Ok(EchoUpstream { server, received })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Blocks until Ctrl-C (for the demo binary).
    pub fn run_until_ctrl_c(&self) {
        self.server.run_until_ctrl_c();
    }
}

async fn serve(listener: TcpListener, received: Arc<Mutex<Vec<Received>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let received = received.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, received.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    mut request: Request<Incoming>,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(protocol) = request.headers().get("upgrade").cloned() {
        return Ok(switch_protocols(&mut request, protocol, &received));
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let record = Received { method: parts.method.to_string(), path, headers, body };
    if let Ok(mut list) = received.lock() {
        list.push(record.clone());
    }

    let mut response =
        Response::builder().status(record.header("x-echo-status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(200));
    let mut content_type_set = false;
    for (_, value) in record.headers.iter().filter(|(n, _)| n == "x-echo-header") {
        if let Some((n, v)) = value.split_once(':') {
            content_type_set |= n.trim().eq_ignore_ascii_case("content-type");
            response = response.header(n.trim(), v.trim());
        }
    }
    let base64_body =
        record.header("x-echo-body-base64").and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    let body = match (base64_body, record.header("x-echo-body")) {
        (Some(bytes), _) => bytes,
        (None, Some(text)) => text.as_bytes().to_vec(),
        (None, None) => {
            if !content_type_set {
                response = response.header("content-type", "application/json");
            }
            echo_json(&record).to_string().into_bytes()
        }
    };
    Ok(response.body(Full::new(Bytes::from(body))).unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// Answers an upgrade request with 101 and echoes the upgraded connection's bytes.
fn switch_protocols(
    request: &mut Request<Incoming>,
    protocol: hyper::header::HeaderValue,
    received: &Arc<Mutex<Vec<Received>>>,
) -> Response<Full<Bytes>> {
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let path = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    if let Ok(mut list) = received.lock() {
        list.push(Received { method: request.method().to_string(), path, headers, body: Vec::new() });
    }
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let (mut reader, mut writer) = tokio::io::split(&mut io);
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", protocol)
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn echo_json(record: &Received) -> Value {
    let mut headers = Map::new();
    for (name, value) in &record.headers {
        match headers.get_mut(name) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(value);
            }
            _ => {
                headers.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    json!({
        "method": record.method,
        "path": record.path,
        "headers": headers,
        "body": String::from_utf8_lossy(&record.body),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&record.body),
    })
}
