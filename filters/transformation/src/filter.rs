//! proxy-wasm glue: picks the rule and transformations for each request, buffers bodies only when a
//! transformation needs them, decodes/re-encodes compressed bodies, applies the outcome, and answers errors. The
//! only module that talks to the host (through `shared::host` and a few hostcalls for maps and buffers).

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use shared::body::{BodyLimit, BodyProgress};
use shared::host::{self, RequestSnapshot};
use shared::metrics::{Counter, Gauge};
use shared::request::{is_grpc, RequestHeaders};
use shared::LocalReply;

use crate::body::{self, DecodeError, Encoding};
use crate::config::{self, Config, FILTER};
use crate::transform::{HeaderOp, Message, Part, Transformation};

struct Metrics {
    request_header: Counter,
    request_body: Counter,
    response_header: Counter,
    response_body: Counter,
    request_errors: Counter,
    response_errors: Counter,
    body_too_large: Counter,
}

impl Metrics {
    fn define() -> Self {
        let c = |name| Counter::define(&[FILTER, name]);
        Metrics {
            request_header: c("request_header_transformations"),
            request_body: c("request_body_transformations"),
            response_header: c("response_header_transformations"),
            response_body: c("response_body_transformations"),
            request_errors: c("request_errors"),
            response_errors: c("response_errors"),
            body_too_large: c("body_too_large"),
        }
    }

    /// Counts a transformation applied in full: a header-only one, or one that read the body.
    fn applied(&self, side: Side, read_body: bool) {
        let counter = match (side, read_body) {
            (Side::Request, false) => &self.request_header,
            (Side::Request, true) => &self.request_body,
            (Side::Response, false) => &self.response_header,
            (Side::Response, true) => &self.response_body,
        };
        counter.inc();
    }
}

struct State {
    config: Config,
    metrics: Metrics,
    limit: BodyLimit,
}

#[derive(Default)]
pub struct Root {
    state: Option<Rc<State>>,
    rules: Option<Gauge>,
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
        let rules = config.rule_count();
        self.rules.get_or_insert_with(|| Gauge::define(&[FILTER, "rules"])).set(rules as u64);
        log::info!("{FILTER}: configuration applied ({rules} rules)");
        let limit = BodyLimit::new(config.max_body);
        self.state = Some(Rc::new(State { config, metrics: Metrics::define(), limit }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { state: self.state.clone(), ..Stream::default() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Default)]
struct Stream {
    state: Option<Rc<State>>,
    /// The rule the request matched (its response matchers apply to the response).
    rule: Option<usize>,
    is_grpc: bool,
    /// The response transformation the request match chose.
    response: Option<Rc<Transformation>>,
    /// The request's headers, for `request_header()` in response transformations (Envoy no longer shows them to
    /// the filter once they went on). Kept only when a response transformation may run.
    request_headers: Option<Rc<Vec<(String, String)>>>,
    /// A transformation waiting for the end of the request / response body.
    request_pending: Option<Pending>,
    response_pending: Option<Pending>,
    /// After a response error: the rest of the upstream body is dropped and this body sent at its end.
    response_error_body: Option<Vec<u8>>,
}

/// What the body part of a transformation needs from the headers phase (headers cannot be read or changed once
/// the body is being read).
struct Pending {
    transformation: Rc<Transformation>,
    headers: Vec<(String, String)>,
    request_headers: Option<Rc<Vec<(String, String)>>>,
    encoding: Encoding,
}

/// Which side of the exchange a transformation applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn headers(self) -> MapType {
        match self {
            Side::Request => MapType::HttpRequestHeaders,
            Side::Response => MapType::HttpResponseHeaders,
        }
    }

    fn body(self) -> BufferType {
        match self {
            Side::Request => BufferType::HttpRequestBody,
            Side::Response => BufferType::HttpResponseBody,
        }
    }
}

fn read_response_headers() -> Vec<(String, String)> {
    hostcalls::get_map_bytes(MapType::HttpResponseHeaders)
        .map(|pairs| pairs.into_iter().map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned())).collect())
        .unwrap_or_default()
}

fn set_header(side: Side, name: &str, value: Option<&str>) {
    if let Err(status) = hostcalls::set_map_value(side.headers(), name, value) {
        log::warn!("{FILTER}: cannot change header {name}: {status:?}");
    }
}

fn apply_ops(side: Side, ops: &[HeaderOp]) {
    for op in ops {
        match op {
            HeaderOp::Set(name, value) => set_header(side, name, Some(value)),
            HeaderOp::Remove(name) => set_header(side, name, None),
            HeaderOp::Append(name, value) => {
                if let Err(status) = hostcalls::add_map_value(side.headers(), name, value) {
                    log::warn!("{FILTER}: cannot add header {name}: {status:?}");
                }
            }
        }
    }
}

/// Why a transformation failed, and the status that says so.
struct Failure {
    status: u32,
    reason: String,
}

impl Stream {
    /// The headers part of a transformation, in the headers callback: applies the header changes, and prepares
    /// the body part (content-length and content-encoding, which can only change now). `headers` are the
    /// message's headers as read in this callback.
    fn transform_headers(
        &self,
        state: &State,
        side: Side,
        t: &Rc<Transformation>,
        whole: bool,
        headers: Vec<(String, String)>,
    ) -> Result<Option<Pending>, Failure> {
        let request_headers = match side {
            Side::Request => None,
            Side::Response => self.request_headers.clone(),
        };
        // The body part runs later, on the headers as they are now (a copy only when there is a body part).
        let for_body = if whole { None } else { Some(headers.clone()) };
        let part = if whole { Part::All } else { Part::HeadersOnly };
        let message = Message {
            part,
            headers,
            request_headers: request_headers.clone(),
            body: &[],
            is_request: side == Side::Request,
        };
        let outcome = t.apply(message).map_err(|reason| Failure { status: 400, reason })?;
        apply_ops(side, &outcome.ops);
        let Some(headers) = for_body else {
            state.metrics.applied(side, t.needs_body());
            return Ok(None);
        };
        let encoding = Encoding::from_header(headers.header("content-encoding").as_deref());
        if t.changes_body() {
            // The new body's length is not known yet: Envoy's buffer filter (requests) sets it again, responses go
            // out chunked.
            set_header(side, "content-length", None);
            if encoding.is_compressed() && !state.config.reencode {
                set_header(side, "content-encoding", None);
            }
        }
        Ok(Some(Pending { transformation: t.clone(), headers, request_headers, encoding }))
    }

    /// The body part, at the end of the body: decodes, transforms and replaces the body. No header access here.
    fn transform_body(&self, state: &State, side: Side, pending: &Pending, body_size: usize) -> Result<(), Failure> {
        let raw = hostcalls::get_buffer(side.body(), 0, body_size).ok().flatten().unwrap_or_default();
        let encoding = pending.encoding;
        let decoded = if encoding.is_compressed() && !raw.is_empty() {
            match body::decode(&raw, encoding, state.config.max_body) {
                Ok(decoded) => decoded,
                Err(DecodeError::TooLarge) => {
                    state.metrics.body_too_large.inc();
                    return Err(Failure { status: 413, reason: state.limit.too_large_message() });
                }
                Err(DecodeError::Corrupt(reason)) => return Err(Failure { status: 400, reason }),
            }
        } else {
            raw
        };
        let message = Message {
            part: Part::BodyOnly,
            headers: pending.headers.clone(),
            request_headers: pending.request_headers.clone(),
            body: &decoded,
            is_request: side == Side::Request,
        };
        let outcome = pending.transformation.apply(message).map_err(|reason| Failure { status: 400, reason })?;
        if let Some(new_body) = outcome.body {
            let encoded = if encoding.is_compressed() && state.config.reencode {
                body::encode(&new_body, encoding)
            } else {
                new_body
            };
            if let Err(status) = hostcalls::set_buffer(side.body(), 0, body_size, &encoded) {
                log::warn!("{FILTER}: cannot replace the body: {status:?}");
            }
        }
        state.metrics.applied(side, true);
        Ok(())
    }

    fn request_failed(&self, state: &State, failure: Failure) -> Action {
        let message = match failure.status {
            413 => failure.reason,
            _ => format!("bad request: {}", failure.reason),
        };
        if failure.status != 413 {
            state.metrics.request_errors.inc();
        }
        log::warn!("{FILTER}: request refused ({}): {message}", failure.status);
        if let Err(err) = host::send_local_reply(&LocalReply::error(FILTER, failure.status, &message, self.is_grpc)) {
            log::warn!("{FILTER}: {err}");
        }
        Action::Pause
    }

    /// A response that cannot be transformed. In the headers callback its status becomes 500 (413 for a body
    /// over the limit) and its body the error, as Gloo does. Once the body is being read the headers are gone: the
    /// body is replaced by the error (the status stays).
    fn response_failed(&mut self, state: &State, failure: Failure, headers_phase: bool) {
        let status = if failure.status == 413 { 413 } else { 500 };
        if status == 500 {
            state.metrics.response_errors.inc();
        }
        let message = match status {
            413 => failure.reason,
            _ => format!("response transformation failed: {}", failure.reason),
        };
        log::warn!("{FILTER}: response replaced ({status}): {message}");
        let reply = LocalReply::error(FILTER, status, &message, false);
        if headers_phase {
            set_header(Side::Response, ":status", Some(&status.to_string()));
            for name in ["content-encoding", "content-length"] {
                set_header(Side::Response, name, None);
            }
            for (name, value) in &reply.headers {
                set_header(Side::Response, name, Some(value));
            }
        }
        // The upstream body is dropped as it streams and the error sent at its end.
        self.response_error_body = Some(reply.body);
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else { return Action::Continue };
        // All headers at once: matching and transforming need several, and each single read costs a VM call.
        let request = RequestSnapshot::default();
        let Some((index, rule)) = state.config.rules.iter().enumerate().find(|(_, r)| r.matcher.matches(&request))
        else {
            return Action::Continue;
        };
        self.rule = Some(index);
        let entry = rule.request_matches.iter().find(|m| m.matcher.matches(&request));
        self.response = entry.and_then(|e| e.response.clone());
        if self.response.is_some() || !rule.response_matches.is_empty() {
            self.request_headers = Some(Rc::new(request.pairs().clone()));
        }
        let Some(t) = entry.and_then(|e| e.request.clone()) else { return Action::Continue };
        self.is_grpc = is_grpc(request.header("content-type").as_deref());
        let whole = !t.needs_body() || end_of_stream;
        if !whole && state.limit.declared_too_large(request.header("content-length").as_deref()) {
            state.metrics.body_too_large.inc();
            let failure = Failure { status: 413, reason: state.limit.too_large_message() };
            return self.request_failed(&state, failure);
        }
        match self.transform_headers(&state, Side::Request, &t, whole, request.into_pairs()) {
            Ok(pending) => {
                self.request_pending = pending;
                // A paused headers callback would withhold the body from this filter too (Envoy turns it into
                // StopAllIterationAndWatermark): the headers continue, to Envoy's `buffer` filter next in the
                // chain, which holds them until the body is complete (see README).
                Action::Continue
            }
            Err(failure) => self.request_failed(&state, failure),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else { return Action::Continue };
        if self.request_pending.is_none() {
            return Action::Continue;
        }
        match state.limit.progress(body_size, end_of_stream) {
            BodyProgress::Buffering => Action::Pause,
            BodyProgress::TooLarge => {
                self.request_pending = None;
                state.metrics.body_too_large.inc();
                self.request_failed(&state, Failure { status: 413, reason: state.limit.too_large_message() })
            }
            BodyProgress::Complete => {
                let Some(pending) = self.request_pending.take() else { return Action::Continue };
                match self.transform_body(&state, Side::Request, &pending, body_size) {
                    Ok(()) => Action::Continue,
                    Err(failure) => self.request_failed(&state, failure),
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let (Some(state), Some(index)) = (self.state.clone(), self.rule) else { return Action::Continue };
        let Some(rule) = state.config.rules.get(index) else { return Action::Continue };
        if self.response.is_none() && rule.response_matches.is_empty() {
            return Action::Continue;
        }
        let headers = read_response_headers();
        let t = match self.response.clone() {
            Some(t) => t,
            None => {
                let details = host::property(&["response", "code_details"]).unwrap_or_default();
                let found = rule.response_matches.iter().find(|m| {
                    m.headers.matches(&headers) && m.response_code_details.as_ref().is_none_or(|d| d.matches(&details))
                });
                let Some(found) = found else { return Action::Continue };
                found.response.clone()
            }
        };
        let whole = !t.needs_body() || end_of_stream;
        if !whole && state.limit.declared_too_large(headers.header("content-length").as_deref()) {
            state.metrics.body_too_large.inc();
            let failure = Failure { status: 413, reason: state.limit.too_large_message() };
            self.response_failed(&state, failure, true);
            return Action::Continue;
        }
        match self.transform_headers(&state, Side::Response, &t, whole, headers) {
            Ok(pending) => self.response_pending = pending,
            Err(failure) => self.response_failed(&state, failure, true),
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(error_body) = &self.response_error_body {
            let replacement: &[u8] = if end_of_stream { error_body } else { &[] };
            if let Err(status) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, replacement) {
                log::warn!("{FILTER}: cannot replace the body: {status:?}");
            }
            return Action::Continue;
        }
        let Some(state) = self.state.clone() else { return Action::Continue };
        if self.response_pending.is_none() {
            return Action::Continue;
        }
        match state.limit.progress(body_size, end_of_stream) {
            BodyProgress::Buffering => Action::Pause,
            BodyProgress::TooLarge => {
                self.response_pending = None;
                state.metrics.body_too_large.inc();
                let failure = Failure { status: 413, reason: state.limit.too_large_message() };
                self.response_failed(&state, failure, false);
                // What is buffered so far is dropped now (replaced by the error at the end), the rest as it comes.
                self.on_http_response_body(body_size, end_of_stream)
            }
            BodyProgress::Complete => {
                let Some(pending) = self.response_pending.take() else { return Action::Continue };
                match self.transform_body(&state, Side::Response, &pending, body_size) {
                    Ok(()) => Action::Continue,
                    Err(failure) => {
                        self.response_failed(&state, failure, false);
                        self.on_http_response_body(body_size, end_of_stream)
                    }
                }
            }
        }
    }
}
