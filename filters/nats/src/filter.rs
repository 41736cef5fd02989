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
use shared::host::{self, HostRequest};
use shared::metrics::{Counter, Gauge};
use shared::request::{is_grpc, split_path};
use shared::LocalReply;

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
    is_grpc: bool,
}

struct InFlight {
    subject: String,
    payload_bytes: usize,
    started: u64,
    is_grpc: bool,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(in_flight) = self.in_flight.take() else { return };
        let Some(active) = &self.active else { return };
        let status = match hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status") {
            Ok(Some(bytes)) => std::str::from_utf8(&bytes).ok().and_then(|s| s.parse().ok()),
            _ => None,
        };
        let body = match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
            Ok(Some(bytes)) => bytes,
            _ => Vec::new(),
        };
        let now = MonotonicClock.now_nanos();
        let (result, info) = outcome::classify(&TunnelResponse {
            status,
            body: &body,
            elapsed_nanos: now.saturating_sub(in_flight.started),
            timeout_nanos: active.config.timeout.as_nanos_u64(),
        });
        if let Some(max_payload) = info.and_then(|info| info.max_payload) {
            let mut cache = active.max_payload.get();
            cache.update(max_payload, now);
            active.max_payload.set(cache);
        }
        match result {
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
        let request = HostRequest;
        let Some((index, rule)) =
            active.config.rules.iter().enumerate().find(|(_, rule)| rule.matcher.matches(&request))
        else {
            return Action::Continue;
        };
        let grpc = is_grpc(host::request_header("content-type").as_deref());
        let subject = match rule.subject.render(&request) {
            Ok(subject) => subject,
            Err(err) => return fail(&active.metrics, &Failure::InvalidRequest(err.to_string()), grpc, None),
        };
        let headers = match rule.headers.select(&host::request_headers, &host::request_header) {
            Ok(headers) => headers,
            Err(err) => return fail(&active.metrics, &Failure::InvalidRequest(err), grpc, Some(&subject)),
        };
        let limit = BodyLimit::new(active.config.max_body.as_usize());
        if limit.declared_too_large(host::request_header("content-length").as_deref()) {
            return fail(&active.metrics, &Failure::TooLarge(limit.too_large_message()), grpc, Some(&subject));
        }
        self.pending = Some(Pending { rule: index, subject, headers, is_grpc: grpc });
        if end_of_stream {
            return self.publish(Vec::new());
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(active), Some(pending)) = (&self.active, &self.pending) else { return Action::Continue };
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
                let body = read_body(body_size);
                self.publish(body)
            }
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let (Some(active), Some(pending)) = (&self.active, &self.pending) else { return Action::Continue };
        // The body ended before the trailers: what is buffered is all of it.
        let max = active.config.max_body.as_usize();
        let body = read_body(max.saturating_add(1));
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
                let method = host::request_header(":method").unwrap_or_default();
                let full_path = host::request_header(":path").unwrap_or_default();
                let (path, query) = split_path(&full_path);
                Cow::Owned(envelope::build(&envelope::Request {
                    method: &method,
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
        if let Some(max_payload) = active.max_payload.get().limit(now) {
            if size as u64 > max_payload {
                let message = format!(
                    "message of {size} bytes is larger than the NATS server's max_payload of {max_payload} bytes"
                );
                return fail(&active.metrics, &Failure::TooLarge(message), pending.is_grpc, Some(&pending.subject));
            }
        }
        let request = protocol::publish_request(&config.connect, &pending.subject, &block, &payload);
        let headers = vec![(":method", "POST"), (":path", "/"), (":authority", "nats"), (":scheme", "http")];
        match self.dispatch_http_call(&config.cluster, headers, Some(&request), vec![], config.timeout.0) {
            Ok(_) => {
                self.in_flight = Some(InFlight {
                    subject: pending.subject,
                    payload_bytes: payload.len(),
                    started: now,
                    is_grpc: pending.is_grpc,
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

/// The buffered request body (up to `max` bytes); empty when the host has none.
fn read_body(max: usize) -> Vec<u8> {
    match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, max) {
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
