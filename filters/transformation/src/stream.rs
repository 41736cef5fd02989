//! One request's journey through the transformation filter, driven through the shared [`Host`] trait (no
//! proxy-wasm here): picks the rule and transformations, holds a message until its body is complete when a
//! transformation reads the body (header templates included), then transforms headers and body at once, with
//! `content-length` set to the new body's length; decodes and re-encodes gzip/deflate bodies; answers errors.
//!
//! Holding the headers needs `allow_on_headers_stop_iteration: true` in the Wasm filter's config (Envoy >= 1.35).

use std::rc::Rc;

use shared::body::{BodyLimit, BodyProgress};
use shared::host::{Filter, Flow, Host, RequestView, Side, Stream};
use shared::metrics::{Counter, Scope};
use shared::request::{is_grpc, is_tunnel, RequestHeaders};
use shared::LocalReply;

use crate::body::{self, DecodeError, Encoding};
use crate::config::{self, Config, FILTER};
use crate::metadata::{self, EnvoyMetadata};
use crate::transform::{HeaderOp, Message, Transformation};

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
    fn define(scope: &Scope) -> Self {
        let c = |name| scope.counter(name);
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

    /// Counts a transformation applied in full: a header-only one, or one that reads the body.
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

/// The filter as configured (one per plugin configuration and worker VM).
pub struct TransformationFilter {
    config: Config,
    limit: BodyLimit,
    metrics: Metrics,
}

impl Filter for TransformationFilter {
    const NAME: &'static str = FILTER;
    type Stream = TransformationStream;

    fn configure(host: &dyn Host, bytes: &[u8], _previous: Option<&Self>) -> Result<Self, String> {
        let config = config::parse(bytes).map_err(|err| err.to_string())?;
        let rules = config.rule_count();
        let scope = Scope::of_plugin(host, FILTER);
        scope.gauge("rules").set(u64::try_from(rules).unwrap_or(u64::MAX));
        log::info!("{FILTER}: configuration applied ({rules} rules)");
        Ok(TransformationFilter { limit: BodyLimit::new(config.max_body), config, metrics: Metrics::define(&scope) })
    }

    fn stream(filter: Rc<Self>) -> TransformationStream {
        TransformationStream {
            filter,
            rule: None,
            is_grpc: false,
            response: None,
            clear_route_cache: false,
            request_headers: None,
            request: Phase::Pass,
            response_phase: Phase::Pass,
        }
    }
}

/// A transformation waiting for the end of its message's body, with the headers as they were when it was held
/// (nothing can change them while they are held).
struct Held {
    transformation: Rc<Transformation>,
    headers: Vec<(String, String)>,
}

/// Where one message of the exchange is.
enum Phase {
    /// Nothing to do (no transformation, or done).
    Pass,
    /// Held until the body is complete.
    Held(Held),
    /// Responses only: the upstream's response became an error; its body is dropped as it streams, and the
    /// error body (if not yet sent) goes out in place of the first chunk.
    Replacing(Option<Vec<u8>>),
}

/// Why a transformation failed.
#[derive(Debug)]
enum Failure {
    /// A render error, an unparsable JSON body, an unsafe header value, a corrupt compressed body.
    Invalid(String),
    /// The body (declared, buffered or decoded) is over `max_body_size`.
    TooLarge,
    /// The host refused to give or take the body.
    Host(String),
}

/// One request through the filter.
pub struct TransformationStream {
    filter: Rc<TransformationFilter>,
    /// The rule the request matched (its response matchers apply to the response).
    rule: Option<usize>,
    is_grpc: bool,
    /// The response transformation the request match chose.
    response: Option<Rc<Transformation>>,
    /// The request match asks Envoy to select the route again after its request transformation.
    clear_route_cache: bool,
    /// The request's headers, for `request_header()` in response transformations (Envoy no longer gives them
    /// once they went on). Kept only when a response transformation may run.
    request_headers: Option<Rc<Vec<(String, String)>>>,
    request: Phase,
    response_phase: Phase,
}

impl TransformationStream {
    /// Runs a transformation over the whole message and applies it: the body (`body_size` bytes buffered, or
    /// none when the message has no body to read), then the header changes, then `content-length` (and
    /// `content-encoding`) for a new body. `bodiless`: the headers ended the stream (not a tunnel).
    fn transform(
        &self,
        host: &dyn Host,
        side: Side,
        transformation: &Transformation,
        headers: Vec<(String, String)>,
        body_size: Option<usize>,
        bodiless: bool,
    ) -> Result<(), Failure> {
        let filter = &self.filter;
        let encoding = Encoding::from_header(headers.header("content-encoding").as_deref());
        let raw = match body_size {
            Some(size) => host.body(side, size).map_err(|err| Failure::Host(format!("cannot read the body: {err}")))?,
            None => Vec::new(),
        };
        let decoded = if encoding.is_compressed() && !raw.is_empty() {
            match body::decode(&raw, encoding, filter.config.max_body) {
                Ok(decoded) => decoded,
                Err(DecodeError::TooLarge) => return Err(Failure::TooLarge),
                Err(DecodeError::Corrupt(reason)) => return Err(Failure::Invalid(reason)),
            }
        } else {
            raw
        };
        let request_headers = match side {
            Side::Request => None,
            Side::Response => self.request_headers.clone(),
        };
        let metadata = read_metadata(host, transformation);
        // Removing a header that is not there would still cost a host call.
        let had = |name: &str| headers.iter().any(|(n, _)| n == name);
        let (had_content_type, had_transfer_encoding) = (had("content-type"), had("transfer-encoding"));
        let message = Message { headers, request_headers, body: &decoded, is_request: side == Side::Request, metadata };
        let outcome = transformation.apply(message).map_err(Failure::Invalid)?;
        let present = |name: &str, had: bool| had || outcome.ops.iter().any(|op| op.name() == name);
        let (has_content_type, has_transfer_encoding) =
            (present("content-type", had_content_type), present("transfer-encoding", had_transfer_encoding));
        // As Gloo: a body the transformation made empty is sent without `content-type`, with `content-length: 0`.
        let emptied = outcome.body.as_ref().is_some_and(Vec::is_empty);
        // A message whose headers ended the stream gets a body where the host can add one (a dynamic module, as
        // Gloo); the Wasm ABI has no way to, so there it stays bodiless.
        let can_set_body = body_size.is_some() || (bodiless && host.can_add_body_to_bodiless());
        let new_body = match outcome.body {
            Some(new_body) if new_body.is_empty() => {
                if let Some(size) = body_size {
                    host.set_body(side, size, &[])
                        .map_err(|err| Failure::Host(format!("cannot replace the body: {err}")))?;
                }
                Some(0)
            }
            Some(new_body) if can_set_body => {
                let encoded = if encoding.is_compressed() && filter.config.reencode {
                    body::encode(&new_body, encoding)
                } else {
                    new_body
                };
                host.set_body(side, body_size.unwrap_or(0), &encoded)
                    .map_err(|err| Failure::Host(format!("cannot replace the body: {err}")))?;
                Some(encoded.len())
            }
            _ => None,
        };
        apply_ops(host, side, &outcome.ops);
        if emptied && has_content_type {
            set_header(host, side, "content-type", None);
        }
        if let Some(length) = new_body {
            set_header(host, side, "content-length", Some(&length.to_string()));
            // The length delimits the body now (HTTP/1 chunked framing would contradict it).
            if has_transfer_encoding {
                set_header(host, side, "transfer-encoding", None);
            }
            if encoding.is_compressed() && !filter.config.reencode {
                set_header(host, side, "content-encoding", None);
            }
        }
        if side == Side::Request && self.clear_route_cache {
            if let Err(err) = host.clear_route_cache() {
                log::warn!("{FILTER}: cannot make Envoy select the route again: {err}");
            }
        }
        filter.metrics.applied(side, transformation.needs_body());
        Ok(())
    }

    /// The request cannot go on: the client gets the error and the upstream nothing. The reply is the filter's own:
    /// no response transformation applies to it.
    fn request_failed(&mut self, failure: Failure) -> Flow {
        self.rule = None;
        self.response = None;
        let metrics = &self.filter.metrics;
        let (status, message, details) = match failure {
            Failure::Invalid(reason) => {
                metrics.request_errors.inc();
                (400, format!("bad request: {reason}"), "transformation_bad_request")
            }
            Failure::TooLarge => {
                metrics.body_too_large.inc();
                (413, self.filter.limit.too_large_message(), "transformation_body_too_large")
            }
            Failure::Host(reason) => {
                metrics.request_errors.inc();
                (500, reason, "transformation_host_error")
            }
        };
        log::warn!("{FILTER}: request refused ({status}): {message}");
        Flow::Reply(LocalReply::error(FILTER, status, &message, self.is_grpc).with_details(details))
    }

    /// The response cannot be transformed: it becomes the error, as in Gloo (400 `bad request: <reason>` for a
    /// render or JSON error, 413 for a body over the limit; 500 when Envoy refused the body). Its headers are still held here, so status, headers and `content-length` are set now; the error body
    /// replaces the buffered body (`body_size`), or the first body chunk still to come (`None`).
    fn response_failed(&mut self, host: &dyn Host, failure: Failure, body_size: Option<usize>, end_of_stream: bool) {
        let metrics = &self.filter.metrics;
        let (status, message) = match failure {
            Failure::TooLarge => {
                metrics.body_too_large.inc();
                (413, self.filter.limit.too_large_message())
            }
            Failure::Invalid(reason) => {
                metrics.response_errors.inc();
                (400, format!("bad request: {reason}"))
            }
            Failure::Host(reason) => {
                metrics.response_errors.inc();
                (500, format!("response transformation failed: {reason}"))
            }
        };
        log::warn!("{FILTER}: response replaced ({status}): {message}");
        let reply = LocalReply::error(FILTER, status, &message, false);
        let length = match body_size {
            Some(size) => match host.set_body(Side::Response, size, &reply.body) {
                Ok(()) => Some(reply.body.len()),
                Err(err) => {
                    // What is buffered goes out instead; Envoy frames it.
                    log::warn!("{FILTER}: cannot replace the response body: {err}");
                    None
                }
            },
            // The headers end the response: it cannot get a body.
            None if end_of_stream => Some(0),
            None => Some(reply.body.len()),
        };
        set_header(host, Side::Response, ":status", Some(&status.to_string()));
        for name in ["content-encoding", "transfer-encoding"] {
            set_header(host, Side::Response, name, None);
        }
        set_header(host, Side::Response, "content-length", length.map(|n| n.to_string()).as_deref());
        for (name, value) in &reply.headers {
            set_header(host, Side::Response, name, Some(value));
        }
        self.response_phase = Phase::Replacing((body_size.is_none() && !end_of_stream).then_some(reply.body));
    }

    fn response_transformation(&self, host: &dyn Host, headers: &[(String, String)]) -> Option<Rc<Transformation>> {
        if let Some(t) = &self.response {
            return Some(t.clone());
        }
        let rule = self.rule.and_then(|index| self.filter.config.rules.get(index))?;
        if rule.response_matches.is_empty() {
            return None;
        }
        let details = host.property_text(&["response", "code_details"]).unwrap_or_else(|err| {
            log::warn!("{FILTER}: response.code_details unavailable: {err}");
            None
        });
        let details = details.unwrap_or_default();
        rule.response_matches
            .iter()
            .find(|m| {
                m.headers.matches(headers) && m.response_code_details.as_ref().is_none_or(|d| d.matches(&details))
            })
            .map(|m| m.response.clone())
    }
}

/// The Envoy metadata the transformation's templates read, and nothing else (each property is a host call).
fn read_metadata(host: &dyn Host, transformation: &Transformation) -> EnvoyMetadata {
    let needs = transformation.metadata_needs();
    let mut metadata = EnvoyMetadata::default();
    if needs.cluster {
        metadata.cluster = read_property(host, &metadata::CLUSTER);
    }
    if needs.dynamic {
        metadata.dynamic = read_property(host, &metadata::DYNAMIC);
    }
    if needs.host {
        metadata.host = read_property(host, &metadata::HOST);
    }
    metadata
}

/// A metadata property; `null` where Envoy has none here (no upstream host yet) or cannot give it.
fn read_property(host: &dyn Host, path: &[&str]) -> serde_json::Value {
    let bytes = match host.property(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return serde_json::Value::Null,
        Err(err) => {
            log::warn!("{FILTER}: metadata property {path:?} unavailable: {err}");
            return serde_json::Value::Null;
        }
    };
    metadata::decode(&bytes).unwrap_or_else(|err| {
        log::warn!("{FILTER}: metadata property {path:?}: {err}");
        serde_json::Value::Null
    })
}

fn set_header(host: &dyn Host, side: Side, name: &str, value: Option<&str>) {
    let result = match value {
        Some(value) => host.set_header(side, name, value.as_bytes()),
        None => host.remove_header(side, name),
    };
    if let Err(err) = result {
        log::warn!("{FILTER}: cannot change header {name}: {err}");
    }
}

fn apply_ops(host: &dyn Host, side: Side, ops: &[HeaderOp]) {
    for op in ops {
        match op {
            HeaderOp::Set(name, value) => set_header(host, side, name, Some(value)),
            HeaderOp::Remove(name) => set_header(host, side, name, None),
            HeaderOp::Append(name, value) => {
                if let Err(err) = host.add_header(side, name, value.as_bytes()) {
                    log::warn!("{FILTER}: cannot add header {name}: {err}");
                }
            }
        }
    }
}

impl Stream for TransformationStream {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let filter = self.filter.clone();
        // All headers at once: matching and transforming need several, and each single read costs a VM call.
        let request = RequestView::new(host);
        let Some((index, rule)) = filter.config.rules.iter().enumerate().find(|(_, r)| r.matcher.matches(&request))
        else {
            return Flow::Continue;
        };
        self.rule = Some(index);
        let entry = rule.request_matches.iter().find(|m| m.matcher.matches(&request));
        self.response = entry.and_then(|e| e.response.clone());
        self.clear_route_cache = entry.is_some_and(|e| e.clear_route_cache);
        if self.response.is_some() || !rule.response_matches.is_empty() {
            self.request_headers = Some(Rc::new(request.pairs().clone()));
        }
        let Some(t) = entry.and_then(|e| e.request.clone()) else { return Flow::Continue };
        self.is_grpc = is_grpc(request.header("content-type").as_deref());
        let headers = request.into_pairs();
        let tunnel = is_tunnel(headers.as_slice());
        if !t.needs_body() || end_of_stream || tunnel {
            return match self.transform(host, Side::Request, &t, headers, None, end_of_stream && !tunnel) {
                Ok(()) => Flow::Continue,
                Err(failure) => self.request_failed(failure),
            };
        }
        if filter.limit.declared_too_large(headers.header("content-length").as_deref()) {
            return self.request_failed(Failure::TooLarge);
        }
        self.request = Phase::Held(Held { transformation: t, headers });
        Flow::Buffer
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        if !matches!(self.request, Phase::Held(_)) {
            return Flow::Continue;
        }
        match self.filter.limit.progress(body_size, end_of_stream) {
            BodyProgress::Buffering => Flow::Buffer,
            BodyProgress::TooLarge => {
                self.request = Phase::Pass;
                self.request_failed(Failure::TooLarge)
            }
            BodyProgress::Complete => {
                let Phase::Held(held) = std::mem::replace(&mut self.request, Phase::Pass) else {
                    return Flow::Continue;
                };
                match self.transform(host, Side::Request, &held.transformation, held.headers, Some(body_size), false) {
                    Ok(()) => Flow::Continue,
                    Err(failure) => self.request_failed(failure),
                }
            }
        }
    }

    fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        // The response headers are read only when a response transformation may apply (a read costs a host call).
        let rule = self.rule.and_then(|index| self.filter.config.rules.get(index));
        if self.response.is_none() && rule.is_none_or(|rule| rule.response_matches.is_empty()) {
            return Flow::Continue;
        }
        let headers = match host.headers_text(Side::Response) {
            Ok(headers) => headers,
            Err(err) => {
                log::warn!("{FILTER}: response headers unavailable, response not transformed: {err}");
                return Flow::Continue;
            }
        };
        let Some(t) = self.response_transformation(host, &headers) else { return Flow::Continue };
        let tunnel = is_tunnel(headers.as_slice());
        if !t.needs_body() || end_of_stream || tunnel {
            // No body may go with an answer to HEAD, a 1xx, 204 or 304.
            let head = self.request_headers.as_ref().and_then(|r| r.header(":method")).is_some_and(|m| m == "HEAD");
            let status = headers.header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
            let may_have_body = !head && !matches!(status, 100..=199 | 204 | 304);
            let bodiless = end_of_stream && !tunnel && may_have_body;
            if let Err(failure) = self.transform(host, Side::Response, &t, headers, None, bodiless) {
                self.response_failed(host, failure, None, end_of_stream);
            }
            return Flow::Continue;
        }
        if self.filter.limit.declared_too_large(headers.header("content-length").as_deref()) {
            self.response_failed(host, Failure::TooLarge, None, false);
            return Flow::Continue;
        }
        self.response_phase = Phase::Held(Held { transformation: t, headers });
        Flow::Buffer
    }

    fn on_response_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        match &mut self.response_phase {
            Phase::Pass => Flow::Continue,
            Phase::Replacing(error_body) => {
                let replacement = error_body.take().unwrap_or_default();
                if let Err(err) = host.set_body(Side::Response, body_size, &replacement) {
                    log::warn!("{FILTER}: cannot replace the response body: {err}");
                }
                Flow::Continue
            }
            Phase::Held(_) => match self.filter.limit.progress(body_size, end_of_stream) {
                BodyProgress::Buffering => Flow::Buffer,
                BodyProgress::TooLarge => {
                    // What is buffered becomes the error now; the rest of the upstream body is dropped as it comes.
                    self.response_failed(host, Failure::TooLarge, Some(body_size), end_of_stream);
                    Flow::Continue
                }
                BodyProgress::Complete => {
                    let Phase::Held(held) = std::mem::replace(&mut self.response_phase, Phase::Pass) else {
                        return Flow::Continue;
                    };
                    let result = self.transform(
                        host,
                        Side::Response,
                        &held.transformation,
                        held.headers,
                        Some(body_size),
                        false,
                    );
                    if let Err(failure) = result {
                        self.response_failed(host, failure, Some(body_size), end_of_stream);
                    }
                    Flow::Continue
                }
            },
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
