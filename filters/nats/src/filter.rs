//! proxy-wasm glue: reads the configuration, hands each request to the logic, publishes through the tunnel
//! cluster with `dispatch_http_call`, answers with the outcome. The only module that talks to the host (through
//! `shared::host`, and the SDK's `Result`-returning hostcalls for buffers and the callout).

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use serde_json::json;
use shared::body::{BodyLimit, BodyProgress};
use shared::clock::{Clock, MonotonicClock};
use shared::host::{self, RequestSnapshot};
use shared::metrics::{Counter, Gauge};
use shared::request::{is_grpc, split_path};
use shared::{LocalReply, RequestHeaders};

use crate::config::{self, Config, PayloadMode, FILTER};
use crate::envelope;
use crate::outcome::{self, Event, Failure, TunnelResponse};
use crate::protocol::{self, MaxPayloadCache};

/// Counters, defined once per VM.
struct Metrics {
    events: [Counter; 6],
    published_bytes: Counter,
}

impl Metrics {
    fn define() -> Self {
        Metrics {
            events: Event::ALL.map(|event| Counter::define(&[FILTER, event.metric()])),
            published_bytes: Counter::define(&[FILTER, "published_bytes"]),
        }
    }

    fn count(&self, event: Event) {
        if let Some(counter) = self.events.get(event.index()) {
            counter.inc();
        }
    }
}

#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
    rules: Option<Gauge>,
    metrics: Option<Rc<Metrics>>,
    /// The server's `max_payload` as last seen by this VM (one per worker).
    max_payload: Rc<Cell<MaxPayloadCache>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::init_logging();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = host::configure(FILTER, self.get_plugin_configuration(), config::parse) else {
            return false;
        };
        let rules = config.rules.len();
        self.rules.get_or_insert_with(|| Gauge::define(&[FILTER, "rules"])).set(rules as u64);
        self.metrics.get_or_insert_with(|| Rc::new(Metrics::define()));
        self.max_payload.set(MaxPayloadCache::default());
        log::info!("{FILTER}: configuration applied ({rules} rules, cluster {})", config.cluster);
        self.config = Some(Rc::new(config));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let active = match (&self.config, &self.metrics) {
            (Some(config), Some(metrics)) => {
                Some(Active { config: config.clone(), metrics: metrics.clone(), max_payload: self.max_payload.clone() })
            }
            _ => None,
        };
        Some(Box::new(Stream { active, pending: None, in_flight: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Active {
    config: Rc<Config>,
    metrics: Rc<Metrics>,
    max_payload: Rc<Cell<MaxPayloadCache>>,
}

/// One HTTP request. Requests that match no rule pass through untouched.
struct Stream {
    active: Option<Active>,
    /// A matched request whose body is being buffered.
    pending: Option<Pending>,
    /// A publish sent to the tunnel, waiting for the answer.
    in_flight: Option<InFlight>,
}

struct Pending {
    rule: usize,
    subject: String,
    headers: Vec<(String, String)>,
    /// `:method` and `:path`, for the envelope (request headers cannot be read once they have continued).
    method: String,
    path: String,
    is_grpc: bool,
    /// Body bytes buffered so far.
    buffered: usize,
}

struct InFlight {
    subject: String,
    payload_bytes: usize,
    /// Header block and payload: what the server compares with its `max_payload`.
    wire_size: usize,
    started: u64,
    is_grpc: bool,
    /// Set when this call is a probe for the server's `max_payload` after the publish lost its connection: the
    /// failure to answer unless the message turns out to be too large.
    probe_for: Option<Failure>,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(in_flight) = self.in_flight.take() else { return };
        let Some(active) = &self.active else { return };
        // A failed call (reset, timeout) has no headers and no body, and the SDK's getters panic on reading them.
        let status = if num_headers == 0 {
            None
        } else {
            match hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status") {
                Ok(Some(bytes)) => std::str::from_utf8(&bytes).ok().and_then(|s| s.parse().ok()),
                _ => None,
            }
        };
        let body = read_buffer(BufferType::HttpCallResponseBody, body_size);
        let now = MonotonicClock.now_nanos();
        let classified = outcome::classify(&TunnelResponse {
            status,
            body: &body,
            elapsed_nanos: now.saturating_sub(in_flight.started),
            timeout_nanos: active.config.timeout.as_nanos_u64(),
        });
        let server_max = classified.info.and_then(|info| info.max_payload);
        if let Some(max_payload) = server_max {
            let mut cache = active.max_payload.get();
            cache.update(max_payload, now);
            active.max_payload.set(cache);
        }
        if let Some(original) = in_flight.probe_for {
            let failure = outcome::too_large(in_flight.wire_size, server_max).unwrap_or(original);
            fail(&active.metrics, &failure, in_flight.is_grpc, Some(&in_flight.subject));
            return;
        }
        match classified.result {
            Err(failure) if classified.connection_lost => {
                let known_max = server_max.or_else(|| active.max_payload.get().limit(now));
                if known_max.is_some() {
                    let failure = outcome::too_large(in_flight.wire_size, known_max).unwrap_or(failure);
                    fail(&active.metrics, &failure, in_flight.is_grpc, Some(&in_flight.subject));
                    return;
                }
                // Unknown limit: ask the server (CONNECT, PING; nothing is published) before answering.
                let probe = protocol::probe_request(&active.config.connect);
                match dispatch(&active.config, &probe) {
                    Ok(_) => {
                        self.in_flight = Some(InFlight { probe_for: Some(failure), started: now, ..in_flight });
                    }
                    Err(_) => {
                        fail(&active.metrics, &failure, in_flight.is_grpc, Some(&in_flight.subject));
                    }
                }
            }
            Ok(()) => {
                active.metrics.count(Event::Published);
                active.metrics.published_bytes.add(in_flight.payload_bytes as u64);
                log::debug!("{FILTER}: published {} bytes to {}", in_flight.payload_bytes, in_flight.subject);
                let body = json!({"subject": in_flight.subject, "bytes": in_flight.payload_bytes});
                send(&LocalReply::json(202, &body));
            }
            Err(failure) => {
                fail(&active.metrics, &failure, in_flight.is_grpc, Some(&in_flight.subject));
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(active) = &self.active else { return Action::Continue };
        // All headers at once: matching, the subject and the message need several, and each single read costs a
        // call back into the VM.
        let request = RequestSnapshot::default();
        let Some((index, rule)) =
            active.config.rules.iter().enumerate().find(|(_, rule)| rule.matcher.matches(&request))
        else {
            return Action::Continue;
        };
        let grpc = is_grpc(request.header("content-type").as_deref());
        let subject = match rule.subject.render(&request) {
            Ok(subject) => subject,
            Err(err) => return fail(&active.metrics, &Failure::InvalidRequest(err.to_string()), grpc, None),
        };
        let headers = match rule
            .headers
            .select(&|| request.pairs().clone(), &|name| request.header(name).map(|value| value.into_owned()))
        {
            Ok(headers) => headers,
            Err(err) => return fail(&active.metrics, &Failure::InvalidRequest(err), grpc, Some(&subject)),
        };
        let limit = BodyLimit::new(active.config.max_body.as_usize());
        if limit.declared_too_large(request.header("content-length").as_deref()) {
            return fail(&active.metrics, &Failure::TooLarge(limit.too_large_message()), grpc, Some(&subject));
        }
        let (method, path) = match rule.payload {
            PayloadMode::Envelope => {
                let text = |name| request.header(name).map(|value| value.into_owned()).unwrap_or_default();
                (text(":method"), text(":path"))
            }
            PayloadMode::Body => (String::new(), String::new()),
        };
        self.pending = Some(Pending { rule: index, subject, headers, method, path, is_grpc: grpc, buffered: 0 });
        if end_of_stream {
            return self.publish(Vec::new());
        }
        // Envoy turns a paused request-headers callback into StopAllIterationAndWatermark, which withholds the body
        // from this filter too: to see the body the headers must continue. They stop at the next filter, Envoy's
        // `buffer` filter, which the configuration puts between this filter and the router (see README), so the
        // route's upstream never sees a request that is published instead.
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(active), Some(pending)) = (&self.active, &mut self.pending) else { return Action::Continue };
        pending.buffered = body_size;
        let limit = BodyLimit::new(active.config.max_body.as_usize());
        match limit.progress(body_size, end_of_stream) {
            BodyProgress::Buffering => Action::Pause,
            BodyProgress::TooLarge => {
                let failure = Failure::TooLarge(limit.too_large_message());
                let action = fail(&active.metrics, &failure, pending.is_grpc, Some(&pending.subject));
                self.pending = None;
                action
            }
            BodyProgress::Complete => {
                let body = read_buffer(BufferType::HttpRequestBody, body_size);
                self.publish(body)
            }
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let (Some(active), Some(pending)) = (&self.active, &self.pending) else { return Action::Continue };
        // The body ended before the trailers: what is buffered is all of it.
        let max = active.config.max_body.as_usize();
        let body = read_buffer(BufferType::HttpRequestBody, pending.buffered);
        if body.len() > max {
            let limit = BodyLimit::new(max);
            let action = fail(
                &active.metrics,
                &Failure::TooLarge(limit.too_large_message()),
                pending.is_grpc,
                Some(&pending.subject),
            );
            self.pending = None;
            return action;
        }
        self.publish(body)
    }
}

impl Stream {
    /// Builds the message and sends it through the tunnel; the answer arrives in `on_http_call_response`.
    fn publish(&mut self, body: Vec<u8>) -> Action {
        let (Some(active), Some(pending)) = (&self.active, self.pending.take()) else { return Action::Continue };
        let config = &active.config;
        let Some(rule) = config.rules.get(pending.rule) else { return Action::Continue };
        let payload: Cow<'_, [u8]> = match rule.payload {
            PayloadMode::Body => Cow::Borrowed(&body),
            PayloadMode::Envelope => {
                let (path, query) = split_path(&pending.path);
                Cow::Owned(envelope::build(&envelope::Request {
                    method: &pending.method,
                    path,
                    query,
                    headers: &pending.headers,
                    body: &body,
                }))
            }
        };
        let block = protocol::header_block(&pending.headers);
        let size = block.len() + payload.len();
        let now = MonotonicClock.now_nanos();
        if let Some(failure) = outcome::too_large(size, active.max_payload.get().limit(now)) {
            return fail(&active.metrics, &failure, pending.is_grpc, Some(&pending.subject));
        }
        let request = protocol::publish_request(&config.connect, &pending.subject, &block, &payload);
        match dispatch(config, &request) {
            Ok(_) => {
                self.in_flight = Some(InFlight {
                    subject: pending.subject,
                    payload_bytes: payload.len(),
                    wire_size: size,
                    started: now,
                    is_grpc: pending.is_grpc,
                    probe_for: None,
                });
                Action::Pause
            }
            Err(status) => {
                log::debug!("{FILTER}: dispatch to cluster {} failed: {status:?}", config.cluster);
                let failure =
                    Failure::Unavailable(format!("the NATS tunnel cluster {:?} is not available", config.cluster));
                fail(&active.metrics, &failure, pending.is_grpc, Some(&pending.subject))
            }
        }
    }
}

/// Sends one tunnel request (an HTTP/2 POST whose body is NATS protocol) to the configured cluster.
fn dispatch(config: &Config, body: &[u8]) -> Result<u32, proxy_wasm::types::Status> {
    let headers = vec![(":method", "POST"), (":path", "/"), (":authority", "nats"), (":scheme", "http")];
    hostcalls::dispatch_http_call(&config.cluster, headers, Some(body), vec![], config.timeout.0)
}

/// A host buffer of `size` bytes. Only asked for when the host said it has bytes: the SDK's getter panics when the
/// buffer is absent.
fn read_buffer(buffer: BufferType, size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    match hostcalls::get_buffer(buffer, 0, size) {
        Ok(Some(bytes)) => bytes,
        _ => Vec::new(),
    }
}

/// Counts, logs and answers a failure; the request goes no further.
fn fail(metrics: &Metrics, failure: &Failure, grpc: bool, subject: Option<&str>) -> Action {
    metrics.count(failure.event());
    let subject = subject.unwrap_or("-");
    match failure {
        Failure::InvalidRequest(_) | Failure::TooLarge(_) => {
            log::debug!("{FILTER}: {} ({}), subject {subject}", failure.message(), failure.status());
        }
        _ => log::warn!("{FILTER}: not published to {subject}: {} ({})", failure.message(), failure.status()),
    }
    send(&LocalReply::error(FILTER, failure.status(), &failure.message(), grpc));
    Action::Pause
}

fn send(reply: &LocalReply) {
    if let Err(err) = host::send_local_reply(reply) {
        log::warn!("{FILTER}: {err}");
    }
}
