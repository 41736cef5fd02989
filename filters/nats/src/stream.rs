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
use shared::metrics::{Counter, Gauge};
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

    fn configure(_host: &dyn Host, bytes: &[u8], _previous: Option<&Self>) -> Result<Self, String> {
        let config = config::parse(bytes).map_err(|err| err.to_string())?;
        let rules = config.rules.len();
        Gauge::define(&[FILTER, "rules"]).set(rules as u64);
        log::info!("{FILTER}: configuration applied ({rules} rules, cluster {})", config.cluster);
        Ok(NatsFilter {
            limit: BodyLimit::new(config.max_body.as_usize()),
            config,
            metrics: Metrics::define(),
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
    /// Set when this call is a probe for the server's `max_payload` after the publish lost its connection: the
    /// failure to answer unless the message turns out to be too large.
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
        let server_max = classified.info.and_then(|info| info.max_payload);
        if let Some(max_payload) = server_max {
            let mut cache = filter.max_payload.get();
            cache.update(max_payload, now);
            filter.max_payload.set(cache);
        }
        if let Some(original) = in_flight.probe_for {
            let failure = outcome::too_large(in_flight.wire_size, server_max).unwrap_or(original);
            return filter.fail(&failure, in_flight.is_grpc, Some(&in_flight.subject));
        }
        match classified.result {
            Ok(()) => filter.published(&in_flight),
            Err(failure) if classified.connection_lost => {
                let known_max = server_max.or_else(|| filter.max_payload.get().limit(now));
                if known_max.is_some() {
                    let failure = outcome::too_large(in_flight.wire_size, known_max).unwrap_or(failure);
                    return filter.fail(&failure, in_flight.is_grpc, Some(&in_flight.subject));
                }
                // nats-server drops the connection on a message over its max_payload and Envoy then loses the
                // -ERR: ask the server for its limit (CONNECT, PING; nothing is published) before answering.
                let probe = protocol::probe_request(&filter.config.connect);
                match filter.dispatch(host, &probe) {
                    Ok(token) => {
                        self.state =
                            State::Publishing(InFlight { token, started: now, probe_for: Some(failure), ..in_flight });
                        Flow::Pause
                    }
                    Err(err) => {
                        log::warn!("{FILTER}: the max_payload probe could not be sent: {err}");
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
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::Value;
    use shared::host::FakeHost;
    use shared::metrics::test_value;
    use shared::HostError;

    const SECOND: u64 = 1_000_000_000;

    fn filter() -> Rc<NatsFilter> {
        filter_with(json!({
            "cluster": "nats_tunnel",
            "timeout": "2s",
            "max_body": "16B",
            "rules": [
                {"match": {"prefix": "/events/", "methods": ["POST"]}, "subject": "events.{path:2}",
                 "headers": ["x-request-id"]},
                {"match": {"prefix": "/env/"}, "subject": "env.{method}", "payload": "envelope"}
            ]
        }))
    }

    fn filter_with(config: Value) -> Rc<NatsFilter> {
        let configured = NatsFilter::configure(&FakeHost::default(), config.to_string().as_bytes(), None);
        Rc::new(configured.unwrap_or_else(|err| panic!("{err}")))
    }

    fn post(path: &str, extra: &[(&str, &str)]) -> FakeHost {
        let mut headers = vec![(":method", "POST"), (":path", path), (":authority", "gw")];
        headers.extend_from_slice(extra);
        FakeHost::with_request(&headers)
    }

    fn answer(status: Option<u32>, body: &str) -> CallResponse {
        CallResponse { status, headers: Vec::new(), body: body.as_bytes().to_vec() }
    }

    const PONG: &str = "INFO {\"max_payload\":1048576}\r\nPONG\r\n";

    fn reply_of(flow: Flow) -> LocalReply {
        match flow {
            Flow::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn error(reply: &LocalReply) -> String {
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["filter"], "nats");
        body["error"].as_str().unwrap().to_string()
    }

    fn metric(event: &str) -> u64 {
        test_value(&format!("nats.{event}")).unwrap_or(0)
    }

    /// The only call made, and its token.
    fn only_call(host: &FakeHost) -> shared::host::RecordedCall {
        let calls = host.http_calls.borrow();
        assert_eq!(calls.len(), 1, "{calls:?}");
        calls[0].clone()
    }

    #[test]
    fn a_header_only_request_is_published_and_answered_202() {
        let filter = filter();
        let host = post("/events/orders", &[("x-request-id", "r1")]);
        let mut stream = NatsFilter::stream(filter);
        assert_eq!(stream.on_request_headers(&host, true), Flow::Pause, "held until the server answers");
        let call = only_call(&host);
        assert_eq!(call.cluster, "nats_tunnel");
        assert_eq!(call.timeout, Duration::from_secs(2));
        assert_eq!(call.header(":method").as_deref(), Some("POST"));
        let body = String::from_utf8(call.body).unwrap();
        assert!(body.starts_with("CONNECT {"), "{body}");
        assert!(
            body.ends_with("HPUB events.orders 30 30\r\nNATS/1.0\r\nx-request-id: r1\r\n\r\n\r\nPING\r\n"),
            "{body:?}"
        );

        assert_eq!(stream.on_request_body(&host, 0, true), Flow::Pause, "still waiting for the answer");
        let reply = reply_of(stream.on_http_call_response(&host, call.token, answer(Some(200), PONG)));
        assert_eq!(reply.status, 202);
        assert_eq!(reply.details, "nats_published");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body, json!({"subject": "events.orders", "bytes": 0}));
        assert_eq!(metric("published"), 1);
        assert!(host.resumed.borrow().is_empty(), "the request never goes on to the upstream");
    }

    #[test]
    fn an_upgrade_that_matches_a_rule_is_refused_not_held() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/env/ws"), ("upgrade", "websocket")]);
        let reply = reply_of(NatsFilter::stream(filter()).on_request_headers(&host, false));
        assert_eq!((reply.status, reply.details.as_str()), (400, "nats_bad_request"));
        assert!(error(&reply).contains("upgrade"), "{}", error(&reply));
        assert!(host.http_calls.borrow().is_empty());
    }

    #[test]
    fn a_body_is_buffered_then_published() {
        let host = post("/events/orders", &[]).body(b"hello world");
        let mut stream = NatsFilter::stream(filter());
        assert_eq!(stream.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(stream.on_request_body(&host, 5, false), Flow::Buffer);
        assert!(host.http_calls.borrow().is_empty(), "nothing is sent before the body is complete");
        assert_eq!(stream.on_request_body(&host, 11, true), Flow::Pause);
        let call = only_call(&host);
        let body = String::from_utf8(call.body).unwrap();
        assert!(body.ends_with("\r\nPUB events.orders 11\r\nhello world\r\nPING\r\n"), "{body:?}");
        let reply = reply_of(stream.on_http_call_response(&host, call.token, answer(Some(200), PONG)));
        assert_eq!((reply.status, reply.details.as_str()), (202, "nats_published"));
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["bytes"], 11);
        assert_eq!(metric("published_bytes"), 11);
    }

    #[test]
    fn the_envelope_carries_method_path_and_body() {
        let host = post("/env/a?k=v", &[]).body(b"hi");
        let mut stream = NatsFilter::stream(filter());
        assert_eq!(stream.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(stream.on_request_body(&host, 2, true), Flow::Pause);
        let body = only_call(&host).body;
        let start = body.iter().position(|&b| b == b'{').unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("PUB env.POST "), "{text}");
        let json_start = text[start..].find("\r\n{").map(|i| start + i + 2).unwrap();
        let json_end = text.rfind("\r\nPING").unwrap();
        let envelope: Value = serde_json::from_str(&text[json_start..json_end]).unwrap();
        assert_eq!(envelope, json!({"method": "POST", "path": "/env/a", "query": "k=v", "headers": {}, "body": "hi"}));
    }

    #[test]
    fn requests_that_match_no_rule_pass_untouched() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/events/orders")]);
        let mut stream = NatsFilter::stream(filter());
        assert_eq!(stream.on_request_headers(&host, false), Flow::Continue);
        assert_eq!(stream.on_request_body(&host, 3, true), Flow::Continue);
        let host = post("/elsewhere", &[]).body(b"abc");
        let mut stream = NatsFilter::stream(filter());
        assert_eq!(stream.on_request_headers(&host, false), Flow::Continue);
        assert_eq!(stream.on_request_body(&host, 3, true), Flow::Continue);
        assert!(host.http_calls.borrow().is_empty());
        assert!(host.replies.borrow().is_empty());
    }

    #[test]
    fn too_large_bodies_get_413_declared_or_buffered() {
        let host = post("/events/orders", &[("content-length", "17")]);
        let mut stream = NatsFilter::stream(filter());
        let reply = reply_of(stream.on_request_headers(&host, false));
        assert_eq!((reply.status, reply.details.as_str()), (413, "nats_too_large"));
        assert_eq!(error(&reply), "body larger than the limit of 16 bytes");

        // Without a content-length: refused as soon as the buffered body is over the limit.
        let host = post("/events/orders", &[]);
        let mut stream = NatsFilter::stream(filter());
        assert_eq!(stream.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(stream.on_request_body(&host, 16, false), Flow::Buffer);
        let reply = reply_of(stream.on_request_body(&host, 17, false));
        assert_eq!((reply.status, reply.details.as_str()), (413, "nats_too_large"));
        // The end of that body changes nothing.
        assert_eq!(stream.on_request_body(&host, 20, true), Flow::Continue);
        assert!(host.http_calls.borrow().is_empty());
        assert_eq!(metric("too_large"), 2);
    }

    #[test]
    fn an_invalid_subject_gets_400_and_nothing_is_sent() {
        let filter = filter_with(json!({"cluster": "nats_tunnel",
            "rules": [{"subject": "t.{header:x-tenant}"}]}));
        for tenant in [Some("a.b"), Some("*"), Some("a b"), None] {
            let extra: Vec<(&str, &str)> = tenant.map(|t| ("x-tenant", t)).into_iter().collect();
            let host = post("/x", &extra);
            let mut stream = NatsFilter::stream(Rc::clone(&filter));
            let reply = reply_of(stream.on_request_headers(&host, false));
            assert_eq!((reply.status, reply.details.as_str()), (400, "nats_bad_request"), "{tenant:?}");
            assert!(error(&reply).contains("{header:x-tenant}"), "{}", error(&reply));
            assert!(host.http_calls.borrow().is_empty());
        }
        // A selected header that a NATS header block cannot carry.
        let filter = filter_with(json!({"cluster": "nats_tunnel", "rules": [{"subject": "t", "headers": "all"}]}));
        let host = post("/x", &[("x-a", "a\rPUB x 1")]);
        let reply = reply_of(NatsFilter::stream(filter).on_request_headers(&host, true));
        assert_eq!((reply.status, reply.details.as_str()), (400, "nats_bad_request"));
        assert_eq!(error(&reply), "header x-a cannot be forwarded to NATS");
        assert_eq!(metric("invalid_request"), 5);
    }

    #[test]
    fn grpc_requests_get_a_grpc_status() {
        let filter = filter_with(json!({"cluster": "nats_tunnel", "rules": [{"subject": "t.{header:x-t}"}]}));
        let host = post("/svc/M", &[("content-type", "application/grpc")]);
        let reply = reply_of(NatsFilter::stream(filter).on_request_headers(&host, false));
        assert_eq!(reply.grpc_status, Some(shared::reply::grpc::INVALID_ARGUMENT));
        assert_eq!(reply.details, "nats_bad_request");
    }

    #[test]
    fn a_call_the_host_refuses_gets_503() {
        let host = post("/events/orders", &[]);
        host.fail("http_call", HostError::BadArgument);
        let mut stream = NatsFilter::stream(filter());
        let reply = reply_of(stream.on_request_headers(&host, true));
        assert_eq!((reply.status, reply.details.as_str()), (503, "nats_unavailable"));
        assert_eq!(error(&reply), r#"the NATS tunnel cluster "nats_tunnel" is not available"#);
        assert_eq!(metric("unavailable"), 1);
    }

    #[test]
    fn a_body_the_host_cannot_give_gets_500() {
        let host = post("/events/orders", &[]).body(b"abc");
        host.fail("body", HostError::InternalFailure);
        let mut stream = NatsFilter::stream(filter());
        assert_eq!(stream.on_request_headers(&host, false), Flow::Buffer);
        let reply = reply_of(stream.on_request_body(&host, 3, true));
        assert_eq!((reply.status, reply.details.as_str()), (500, "nats_internal_error"));
        assert!(host.http_calls.borrow().is_empty());
    }

    /// Publishes `/events/orders` with `body` and returns the stream waiting for the call's answer.
    fn publishing(filter: &Rc<NatsFilter>, host: &FakeHost, body: &[u8]) -> (NatsStream, u32) {
        *host.request_body.borrow_mut() = body.to_vec();
        let mut stream = NatsFilter::stream(Rc::clone(filter));
        assert_eq!(stream.on_request_headers(host, false), Flow::Buffer);
        assert_eq!(stream.on_request_body(host, body.len(), true), Flow::Pause);
        let token = host.last_call().unwrap().token;
        (stream, token)
    }

    #[test]
    fn server_refusals_and_tunnel_errors_map_to_their_status_and_details() {
        let cases = [
            (Some(200), "INFO {}\r\n-ERR 'Authorization Violation'\r\n", 502, "nats_rejected", "Authorization"),
            (Some(200), "INFO {}\r\n-ERR 'Maximum Payload Violation'\r\n", 413, "nats_too_large", "Maximum Payload"),
            (Some(503), "upstream connect error", 503, "nats_unavailable", "connection failed"),
            (Some(504), "", 504, "nats_timeout", "timeout"),
            (Some(404), "", 502, "nats_rejected", "HTTP 404"),
        ];
        for (status, body, expected, details, message) in cases {
            let host = post("/events/orders", &[]);
            let (mut stream, token) = publishing(&filter(), &host, b"x");
            let reply = reply_of(stream.on_http_call_response(&host, token, answer(status, body)));
            assert_eq!((reply.status, reply.details.as_str()), (expected, details), "{status:?} {body:?}");
            assert!(error(&reply).contains(message), "{}", error(&reply));
            assert_eq!(host.http_calls.borrow().len(), 1, "no probe for {status:?} {body:?}");
        }
        assert_eq!(metric("published"), 0);
        assert_eq!(metric("rejected"), 2);
    }

    #[test]
    fn a_failed_call_is_a_timeout_once_the_timeout_has_passed() {
        let host = post("/events/orders", &[]);
        let (mut stream, token) = publishing(&filter(), &host, b"x");
        host.advance(Duration::from_secs(2));
        let reply = reply_of(stream.on_http_call_response(&host, token, answer(None, "")));
        assert_eq!((reply.status, reply.details.as_str()), (504, "nats_timeout"));
        assert_eq!(error(&reply), "no answer from the NATS server within the timeout");
        assert_eq!(host.http_calls.borrow().len(), 1, "a timeout sends no probe");
        assert_eq!(metric("timeout"), 1);
    }

    #[test]
    fn a_lost_connection_probes_max_payload_and_answers_413_when_the_message_is_over_it() {
        let filter = filter_with(json!({"cluster": "nats_tunnel", "timeout": "2s",
            "rules": [{"match": {"prefix": "/events/"}, "subject": "events.{path:2}"}]}));
        let host = post("/events/orders", &[]);
        let (mut stream, token) = publishing(&filter, &host, b"0123456789");
        host.advance(Duration::from_millis(10));
        // A reset long before the timeout: the limit is unknown, so the filter asks the server.
        assert_eq!(stream.on_http_call_response(&host, token, answer(None, "")), Flow::Pause);
        let probe = host.last_call().unwrap();
        assert_ne!(probe.token, token);
        let text = String::from_utf8(probe.body.clone()).unwrap();
        assert!(text.starts_with("CONNECT ") && text.ends_with("\r\nPING\r\n"), "{text:?}");
        assert!(!text.contains("PUB"), "a probe publishes nothing: {text:?}");
        // The answer to the first call again is not the probe's.
        assert_eq!(stream.on_http_call_response(&host, token, answer(Some(200), PONG)), Flow::Pause);
        let reply = reply_of(stream.on_http_call_response(
            &host,
            probe.token,
            answer(Some(200), "INFO {\"max_payload\":8}\r\nPONG\r\n"),
        ));
        assert_eq!((reply.status, reply.details.as_str()), (413, "nats_too_large"));
        assert_eq!(error(&reply), "message of 10 bytes is larger than the NATS server's max_payload of 8 bytes");

        // The limit is now known to this VM: the next oversized message is refused without a call.
        let host = post("/events/orders", &[]).body(b"0123456789");
        let mut stream = NatsFilter::stream(Rc::clone(&filter));
        assert_eq!(stream.on_request_headers(&host, false), Flow::Buffer);
        let reply = reply_of(stream.on_request_body(&host, 10, true));
        assert_eq!(reply.status, 413);
        assert!(host.http_calls.borrow().is_empty());
        // ... and it is forgotten after a while (a restarted server may allow more).
        host.advance(Duration::from_nanos(MaxPayloadCache::TTL_NANOS + SECOND));
        let mut stream = NatsFilter::stream(Rc::clone(&filter));
        assert_eq!(stream.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(stream.on_request_body(&host, 10, true), Flow::Pause);
        assert_eq!(metric("too_large"), 2);
    }

    #[test]
    fn a_lost_connection_for_a_message_within_max_payload_is_unavailable() {
        let host = post("/events/orders", &[]);
        let (mut stream, token) = publishing(&filter(), &host, b"x");
        assert_eq!(stream.on_http_call_response(&host, token, answer(None, "")), Flow::Pause);
        let probe = host.last_call().unwrap().token;
        let reply = reply_of(stream.on_http_call_response(&host, probe, answer(Some(200), PONG)));
        assert_eq!((reply.status, reply.details.as_str()), (503, "nats_unavailable"));
        assert!(error(&reply).contains("reset"), "{}", error(&reply));
        assert_eq!(metric("unavailable"), 1);
        assert_eq!(metric("too_large"), 0);
    }

    #[test]
    fn a_probe_the_host_refuses_answers_the_original_failure() {
        let host = post("/events/orders", &[]);
        let (mut stream, token) = publishing(&filter(), &host, b"x");
        host.fail("http_call", HostError::InternalFailure);
        let reply = reply_of(stream.on_http_call_response(&host, token, answer(Some(200), "")));
        assert_eq!((reply.status, reply.details.as_str()), (503, "nats_unavailable"));
        assert!(error(&reply).contains("closed without an answer"), "{}", error(&reply));
    }

    #[test]
    fn a_known_max_payload_decides_a_lost_connection_without_a_probe() {
        let filter = filter();
        // A publish whose answer carries the server's INFO teaches the VM the limit.
        let host = post("/events/orders", &[]);
        let (mut stream, token) = publishing(&filter, &host, b"ok");
        let ok = answer(Some(200), "INFO {\"max_payload\":12}\r\nPONG\r\n");
        assert_eq!(reply_of(stream.on_http_call_response(&host, token, ok)).status, 202);
        // 12 bytes fit; the server then drops the connection anyway: unavailable, no probe.
        let host = post("/events/orders", &[]);
        let (mut stream, token) = publishing(&filter, &host, b"0123456789ab");
        let reply = reply_of(stream.on_http_call_response(&host, token, answer(None, "")));
        assert_eq!((reply.status, reply.details.as_str()), (503, "nats_unavailable"));
        assert_eq!(host.http_calls.borrow().len(), 1);
    }

    #[test]
    fn a_bad_configuration_names_the_field() {
        let err = NatsFilter::configure(&FakeHost::default(), br#"{"cluster": "", "rules": []}"#, None);
        assert!(err.is_err_and(|err| err.starts_with("cluster: ")));
    }
}
