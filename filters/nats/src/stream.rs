//! One request's journey through the `nats` filter, driven through the shared [`Host`] trait.
//!
//! A request that matches a rule is held with its headers (nothing reaches the route's upstream), its body is
//! buffered up to `max_body`, the message is published through the tunnel cluster with an HTTP callout, and the
//! request is answered with a local reply: 202 when the server confirmed the publish, otherwise the failure's
//! status (see [`crate::outcome`]). Requests that match no rule pass untouched.

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;

use serde_json::json;
use shared::body::{BodyLimit, BodyProgress};
use shared::host::{CallResponse, Filter, HttpCall, RequestView, Stream};
use shared::metrics::{Counter, Scope};
use shared::request::{is_grpc, is_tunnel, split_path};
use shared::{Flow, Host, LocalReply, RequestHeaders, Side};

use crate::config::{self, Config, PayloadMode, FILTER};
use crate::envelope;
use crate::outcome::{self, Event, Failure, TunnelResponse};
use crate::protocol::{self, MaxPayloadCache};

/// Every tunnel request is the same HTTP/2 POST; its body is NATS protocol.
const TUNNEL_HEADERS: [(&str, &[u8]); 4] =
    [(":method", b"POST"), (":path", b"/"), (":authority", b"nats"), (":scheme", b"http")];

/// Counters, defined once per configuration.
struct Metrics {
    events: [Counter; Event::ALL.len()],
    published_bytes: Counter,
}

impl Metrics {
    fn define(scope: &Scope) -> Self {
        Metrics {
            events: Event::ALL.map(|event| scope.counter(event.metric())),
            published_bytes: scope.counter("published_bytes"),
        }
    }

    fn count(&self, event: Event) {
        if let Some(counter) = self.events.get(event.index()) {
            counter.inc();
        }
    }
}

/// The filter as configured in one worker VM.
pub struct NatsFilter {
    config: Config,
    limit: BodyLimit,
    metrics: Metrics,
    /// The server's `max_payload` as last seen by this VM (one per worker).
    max_payload: Cell<MaxPayloadCache>,
}

impl Filter for NatsFilter {
    const NAME: &'static str = FILTER;
    type Stream = NatsStream;

    fn configure(host: &dyn Host, bytes: &[u8], _previous: Option<&Self>) -> Result<Self, String> {
        let config = config::parse(bytes).map_err(|err| err.to_string())?;
        let rules = config.rules.len();
        let scope = Scope::of_plugin(host, FILTER);
        scope.gauge("rules").set(rules as u64);
        log::info!("{FILTER}: configuration applied ({rules} rules, cluster {})", config.cluster);
        Ok(NatsFilter {
            limit: BodyLimit::new(config.max_body.as_usize()),
            config,
            metrics: Metrics::define(&scope),
            max_payload: Cell::new(MaxPayloadCache::default()),
        })
    }

    fn stream(filter: Rc<Self>) -> NatsStream {
        NatsStream { filter, state: State::Passing }
    }
}

/// One request.
pub struct NatsStream {
    filter: Rc<NatsFilter>,
    state: State,
}

enum State {
    /// No rule matched, or the request has been answered: nothing more to do.
    Passing,
    /// A matched request whose body is being buffered.
    Buffering(Pending),
    /// A tunnel call is out; its answer decides the reply.
    Publishing(InFlight),
}

struct Pending {
    payload: PayloadMode,
    subject: String,
    headers: Vec<(String, String)>,
    /// `:method` and `:path`, for the envelope.
    method: String,
    path: String,
    is_grpc: bool,
}

struct InFlight {
    token: u32,
    subject: String,
    payload_bytes: usize,
    /// Header block and payload: what the server compares with its `max_payload`.
    wire_size: usize,
    started: u64,
    is_grpc: bool,
    /// Set when this call is a probe after the publish lost its connection: the failure to answer unless the
    /// probe shows why (see [`outcome::after_probe`]).
    probe_for: Option<Failure>,
}

impl Stream for NatsStream {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let filter = Rc::clone(&self.filter);
        // All headers at once: matching, the subject and the message need several.
        let request = RequestView::new(host);
        let Some(rule) = filter.config.rules.iter().find(|rule| rule.matcher.matches(&request)) else {
            return Flow::Continue;
        };
        let grpc = is_grpc(request.header("content-type").as_deref());
        if is_tunnel(&request) {
            // Its body is a tunnel with no end: there is no message to publish (and holding it would hang it).
            let failure = Failure::InvalidRequest("upgrade and CONNECT requests cannot be published".to_string());
            return filter.fail(&failure, grpc, None);
        }
        let subject = match rule.subject.render(&request) {
            Ok(subject) => subject,
            Err(err) => return filter.fail(&Failure::InvalidRequest(err.to_string()), grpc, None),
        };
        let headers = match rule
            .headers
            .select(&|| request.pairs().clone(), &|name| request.header(name).map(|value| value.into_owned()))
        {
            Ok(headers) => headers,
            Err(err) => return filter.fail(&Failure::InvalidRequest(err), grpc, Some(&subject)),
        };
        if filter.limit.declared_too_large(request.header("content-length").as_deref()) {
            return filter.fail(&Failure::TooLarge(filter.limit.too_large_message()), grpc, Some(&subject));
        }
        let (method, path) = match rule.payload {
            PayloadMode::Envelope => {
                let text = |name| request.header(name).map(|value| value.into_owned()).unwrap_or_default();
                (text(":method"), text(":path"))
            }
            PayloadMode::Body => (String::new(), String::new()),
        };
        let pending = Pending { payload: rule.payload, subject, headers, method, path, is_grpc: grpc };
        if end_of_stream {
            return self.publish(host, pending, &[]);
        }
        // Hold the headers (the route's upstream sees nothing of a published request) and keep receiving the
        // body: this needs `allow_on_headers_stop_iteration: true` in the plugin config.
        self.state = State::Buffering(pending);
        Flow::Buffer
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        let pending = match std::mem::replace(&mut self.state, State::Passing) {
            State::Buffering(pending) => pending,
            State::Passing => return Flow::Continue,
            // Not expected (the body ended before the call), but the answer is still to come: keep holding.
            publishing @ State::Publishing(_) => {
                self.state = publishing;
                return Flow::Pause;
            }
        };
        let filter = Rc::clone(&self.filter);
        match filter.limit.progress(body_size, end_of_stream) {
            BodyProgress::Buffering => {
                self.state = State::Buffering(pending);
                Flow::Buffer
            }
            BodyProgress::TooLarge => {
                let failure = Failure::TooLarge(filter.limit.too_large_message());
                filter.fail(&failure, pending.is_grpc, Some(&pending.subject))
            }
            BodyProgress::Complete => match host.body(Side::Request, body_size) {
                Ok(body) => self.publish(host, pending, &body),
                Err(err) => {
                    let failure = Failure::Internal(format!("the request body could not be read from Envoy: {err}"));
                    filter.fail(&failure, pending.is_grpc, Some(&pending.subject))
                }
            },
        }
    }

    fn on_http_call_response(&mut self, host: &dyn Host, token: u32, response: CallResponse) -> Flow {
        let in_flight = match std::mem::replace(&mut self.state, State::Passing) {
            State::Publishing(in_flight) if in_flight.token == token => in_flight,
            other => {
                // Not the answer this stream waits for: change nothing (`Pause` leaves a held request held).
                log::debug!("{FILTER}: ignored the answer to an unknown call {token}");
                self.state = other;
                return Flow::Pause;
            }
        };
        let filter = Rc::clone(&self.filter);
        let now = host.monotonic_nanos();
        let classified = outcome::classify(&TunnelResponse {
            status: response.status,
            body: &response.body,
            elapsed_nanos: now.saturating_sub(in_flight.started),
            timeout_nanos: filter.config.timeout.as_nanos_u64(),
        });
        let server_max = classified.info.as_ref().and_then(|info| info.max_payload);
        if let Some(max_payload) = server_max {
            let mut cache = filter.max_payload.get();
            cache.update(max_payload, now);
            filter.max_payload.set(cache);
        }
        if let Some(original) = in_flight.probe_for {
            let failure = outcome::after_probe(&classified, in_flight.wire_size, original);
            return filter.fail(&failure, in_flight.is_grpc, Some(&in_flight.subject));
        }
        match classified.result {
            Ok(()) => filter.published(&in_flight),
            Err(failure) if classified.connection_lost => {
                let known_max = server_max.or_else(|| filter.max_payload.get().limit(now));
                if let Some(too_large) = outcome::too_large(in_flight.wire_size, known_max) {
                    return filter.fail(&too_large, in_flight.is_grpc, Some(&in_flight.subject));
                }
                // nats-server answers -ERR and closes the connection before reading the whole message when it is
                // over its max_payload or when the CONNECT's credentials are refused, and Envoy then loses the
                // -ERR: ask the server (CONNECT, PING; nothing is published) before answering. A known limit
                // that the message fits does not answer the credentials question, so the probe goes anyway.
                let probe = protocol::probe_request(&filter.config.connect);
                match filter.dispatch(host, &probe) {
                    Ok(token) => {
                        self.state =
                            State::Publishing(InFlight { token, started: now, probe_for: Some(failure), ..in_flight });
                        Flow::Pause
                    }
                    Err(err) => {
                        log::warn!("{FILTER}: the probe after a lost connection could not be sent: {err}");
                        filter.fail(&failure, in_flight.is_grpc, Some(&in_flight.subject))
                    }
                }
            }
            Err(failure) => filter.fail(&failure, in_flight.is_grpc, Some(&in_flight.subject)),
        }
    }
}

impl NatsStream {
    /// Builds the message and sends it through the tunnel; the answer arrives in `on_http_call_response`.
    fn publish(&mut self, host: &dyn Host, pending: Pending, body: &[u8]) -> Flow {
        let filter = Rc::clone(&self.filter);
        let payload: Cow<'_, [u8]> = match pending.payload {
            PayloadMode::Body => Cow::Borrowed(body),
            PayloadMode::Envelope => {
                let (path, query) = split_path(&pending.path);
                Cow::Owned(envelope::build(&envelope::Request {
                    method: &pending.method,
                    path,
                    query,
                    headers: &pending.headers,
                    body,
                }))
            }
        };
        let block = protocol::header_block(&pending.headers);
        let wire_size = block.len() + payload.len();
        let now = host.monotonic_nanos();
        if let Some(failure) = outcome::too_large(wire_size, filter.max_payload.get().limit(now)) {
            return filter.fail(&failure, pending.is_grpc, Some(&pending.subject));
        }
        let request = protocol::publish_request(&filter.config.connect, &pending.subject, &block, &payload);
        match filter.dispatch(host, &request) {
            Ok(token) => {
                self.state = State::Publishing(InFlight {
                    token,
                    subject: pending.subject,
                    payload_bytes: payload.len(),
                    wire_size,
                    started: now,
                    is_grpc: pending.is_grpc,
                    probe_for: None,
                });
                Flow::Pause
            }
            Err(err) => {
                log::warn!("{FILTER}: the call to cluster {} was refused: {err}", filter.config.cluster);
                let failure = Failure::Unavailable(format!(
                    "the NATS tunnel cluster {:?} is not available",
                    filter.config.cluster
                ));
                filter.fail(&failure, pending.is_grpc, Some(&pending.subject))
            }
        }
    }
}

impl NatsFilter {
    /// Sends one tunnel request to the configured cluster.
    fn dispatch(&self, host: &dyn Host, body: &[u8]) -> shared::HostResult<u32> {
        host.http_call(&HttpCall {
            cluster: &self.config.cluster,
            headers: &TUNNEL_HEADERS,
            body,
            timeout: self.config.timeout.0,
        })
    }

    /// Counts the publish and answers 202 with the subject and the payload's size.
    fn published(&self, in_flight: &InFlight) -> Flow {
        self.metrics.count(Event::Published);
        self.metrics.published_bytes.add(in_flight.payload_bytes as u64);
        log::debug!("{FILTER}: published {} bytes to {}", in_flight.payload_bytes, in_flight.subject);
        let body = json!({"subject": in_flight.subject, "bytes": in_flight.payload_bytes});
        Flow::Reply(LocalReply::json(202, &body, Event::Published.details()))
    }

    /// Counts, logs and answers a failure; the request goes no further.
    fn fail(&self, failure: &Failure, grpc: bool, subject: Option<&str>) -> Flow {
        self.metrics.count(failure.event());
        let subject = subject.unwrap_or("-");
        match failure {
            Failure::InvalidRequest(_) | Failure::TooLarge(_) => {
                log::debug!("{FILTER}: {} ({}), subject {subject}", failure.message(), failure.status());
            }
            _ => log::warn!("{FILTER}: not published to {subject}: {} ({})", failure.message(), failure.status()),
        }
        Flow::Reply(
            LocalReply::error(FILTER, failure.status(), &failure.message(), grpc).with_details(failure.details()),
        )
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
