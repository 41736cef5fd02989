//! One request's journey through the `aws` filter, driven through the shared [`Host`] trait (no proxy-wasm here).
//!
//! Everything is done to the request itself, which Envoy then sends to the route's cluster (retries, load
//! balancing and streaming of the answer stay Envoy's):
//! - a request without a body, or any request with `payload: "unsigned"`: signed on its headers, streamed;
//! - a request whose body is signed (`payload: "signed"`): held with its headers while Envoy buffers the body (up
//!   to `max_body`; over it, 413 and nothing reaches the upstream), then the body's hash is signed, the signing
//!   headers and `content-length` are set, and the request goes on;
//! - a Lambda invocation: the request becomes the `Invoke` call (`POST` to the function's invoke path at the
//!   Lambda host, `x-amz-invocation-type`, the client's own headers dropped; for `api_gateway` the body becomes
//!   the proxy event), signed, sent on. On the way back a function error or an AWS error becomes a 502 and an
//!   `api_gateway` result is unwrapped into the response (status, headers, body). Replies Envoy made itself (no
//!   healthy upstream, timeout, reset) pass untouched: they are not AWS's answer;
//! - temporary credentials (STS, web identity, ECS endpoint) live in shared data: a request that finds none waits
//!   while this worker fetches them with a callout (one worker at a time), and the filter refreshes them ahead of
//!   expiry on its tick.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use shared::body::{BodyLimit, BodyProgress};
use shared::host::{CallResponse, Filter, HttpCall, Stream};
use shared::metrics::{Counter, Scope};
use shared::request::{is_grpc, is_tunnel};
use shared::store::reserve_create_cas;
use shared::{Flow, Host, HostResult, LocalReply, RequestHeaders, Side};

use crate::config::{self, Config, CredentialSource, Format, Invocation, Lambda, Sts, StsKind, FILTER};
use crate::credentials::{self, Cache, Lookup};
use crate::lambda::{self, ClientRequest, Failure, Outcome};
use crate::signing;
use crate::sigv4::Credentials;

/// Response-code details of the filter's own replies (`%RESPONSE_CODE_DETAILS%`); Lambda answers' are in
/// `lambda::Failure::details`.
pub mod details {
    /// The request cannot be signed or invoked as it is.
    pub const BAD_REQUEST: &str = "aws_bad_request";
    /// No credentials, or they could not be fetched.
    pub const CREDENTIALS_UNAVAILABLE: &str = "aws_credentials_unavailable";
    /// The body is over `max_body`.
    pub const BODY_TOO_LARGE: &str = "aws_body_too_large";
    /// Envoy refused a header or body read or write.
    pub const INTERNAL_ERROR: &str = "aws_internal_error";
}

/// Envoy's response-code details of an answer that came from the upstream (anything else is Envoy's own reply).
const VIA_UPSTREAM: &str = "via_upstream";
/// The request header with which a filter sets the route's upstream timeout for one request.
const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";
/// The Invoke call's header naming how the function is invoked.
const INVOCATION_TYPE_HEADER: &str = "x-amz-invocation-type";
/// The largest answer a synchronous Lambda invocation can have (AWS's limit is 6 MB), buffered to unwrap it.
const MAX_LAMBDA_RESPONSE: usize = 6 << 20;

/// Counters, defined once per configuration.
struct Metrics {
    signed: Counter,
    lambda_invoked: Counter,
    lambda_function_errors: Counter,
    upstream_failed: Counter,
    credentials_unavailable: Counter,
    body_too_large: Counter,
    sts_refreshed: Counter,
    sts_failed: Counter,
}

impl Metrics {
    fn define(scope: &Scope) -> Self {
        Metrics {
            signed: scope.counter("signed"),
            lambda_invoked: scope.counter("lambda.invoked"),
            lambda_function_errors: scope.counter("lambda.function_errors"),
            upstream_failed: scope.counter("upstream_failed"),
            credentials_unavailable: scope.counter("credentials.unavailable"),
            body_too_large: scope.counter("body_too_large"),
            sts_refreshed: scope.counter("sts.refreshed"),
            sts_failed: scope.counter("sts.failed"),
        }
    }
}

/// The filter as configured in one worker VM.
pub struct AwsFilter {
    config: Config,
    limit: BodyLimit,
    metrics: Metrics,
    /// Environment or inline credentials, read once per configuration (the VM's environment does not change).
    fixed: Result<Rc<Credentials>, String>,
    /// The shared-data cache of temporary credentials, when they come from STS or the ECS endpoint.
    cache: Option<(Cache, Sts)>,
    /// `:authority` of Lambda invocations.
    lambda_host: String,
    /// The refresh callout the filter (not a request) is waiting for.
    refresh_call: Cell<Option<u32>>,
    /// A `timeout` that cannot apply (the filter runs on a cluster) was reported.
    timeout_unusable_reported: Cell<bool>,
}

impl Filter for AwsFilter {
    const NAME: &'static str = FILTER;
    type Stream = AwsStream;

    fn configure(host: &dyn Host, bytes: &[u8], previous: Option<&Self>) -> Result<Self, String> {
        let config = config::parse(bytes).map_err(|err| err.to_string())?;
        let rules = config.rules.len();
        let scope = Scope::of_plugin(host, FILTER);
        scope.gauge("rules").set(rules as u64);
        let env = credentials::from_env(|name| std::env::var(name).ok());
        let fixed = match &config.credentials {
            CredentialSource::Inline(c) => Ok(Rc::new(c.clone())),
            CredentialSource::Env => env.clone().map(Rc::new),
            CredentialSource::Sts(sts) => match &sts.kind {
                StsKind::AssumeRole { base, .. } => match base.as_ref() {
                    CredentialSource::Inline(c) => Ok(Rc::new(c.clone())),
                    _ => env.clone().map(Rc::new),
                },
                _ => Err("temporary credentials come from the cache".to_string()),
            },
        };
        let cache = match &config.credentials {
            CredentialSource::Sts(sts) => {
                let cache = Cache::new(&credentials::cache_key(sts, &config.region));
                if let Err(err) = reserve_create_cas(host, "aws.").and_then(|()| cache.init(host)) {
                    log::warn!("{FILTER}: shared data for the credential cache unavailable: {err}");
                }
                if let Err(err) = host.set_tick_period(Duration::from_secs(1)) {
                    log::warn!("{FILTER}: no tick, temporary credentials are not refreshed ahead of expiry: {err}");
                }
                Some((cache, sts.clone()))
            }
            _ => None,
        };
        let source = match &config.credentials {
            CredentialSource::Env if env.is_ok() => "environment",
            CredentialSource::Env => "environment (not set yet)",
            CredentialSource::Inline(_) => "inline",
            CredentialSource::Sts(Sts { kind: StsKind::AssumeRole { .. }, .. }) => "STS AssumeRole",
            CredentialSource::Sts(Sts { kind: StsKind::WebIdentity { .. }, .. }) => "STS AssumeRoleWithWebIdentity",
            CredentialSource::Sts(_) => "the ECS container-credentials endpoint",
        };
        log::info!("{FILTER}: configuration applied ({rules} rules, credentials from {source})");
        // A refresh the configuration this one replaces started is answered to this one: keep waiting for it if
        // it fills the same cache.
        let same_cache = |p: &AwsFilter| match (&p.cache, &cache) {
            (Some((old, _)), Some((new, _))) => old == new,
            _ => false,
        };
        let refresh_call = previous.filter(|p| same_cache(p)).and_then(|p| p.refresh_call.get());
        Ok(AwsFilter {
            limit: BodyLimit::new(config.max_body),
            lambda_host: config.host.clone().unwrap_or_else(|| format!("lambda.{}.amazonaws.com", config.region)),
            config,
            metrics: Metrics::define(&scope),
            fixed,
            cache,
            refresh_call: Cell::new(refresh_call),
            timeout_unusable_reported: Cell::new(false),
        })
    }

    /// Refreshes temporary credentials ahead of expiry (one worker at a time, through the shared lock).
    fn on_tick(&self, host: &dyn Host) {
        let Some((cache, _)) = &self.cache else { return };
        if self.refresh_call.get().is_some() {
            return;
        }
        let now = host.unix_secs();
        let due = match cache.lookup(host, now) {
            Lookup::Valid { refresh, .. } => refresh,
            Lookup::Missing => true,
        };
        if due {
            match self.start_fetch(host, now) {
                Ok(token) => self.refresh_call.set(token),
                Err(err) => log::warn!("{FILTER}: credential refresh not started: {err}"),
            }
        }
    }

    fn on_http_call_response(&self, host: &dyn Host, token: u32, response: CallResponse) {
        if self.refresh_call.get() == Some(token) {
            self.refresh_call.set(None);
            // Logged and counted in finish_fetch; the next tick tries again.
            let _ = self.finish_fetch(host, &response);
        }
    }

    fn stream(filter: Rc<Self>) -> AwsStream {
        AwsStream { filter, state: State::Idle, lambda: None, is_grpc: false, pending: None, request_headers: None }
    }
}

impl AwsFilter {
    /// Starts a credential fetch when this worker gets the refresh lock: `Ok(Some(token))`; `Ok(None)`: another
    /// worker is fetching.
    fn start_fetch(&self, host: &dyn Host, now: u64) -> Result<Option<u32>, String> {
        let Some((cache, sts)) = &self.cache else { return Err("no STS configuration".to_string()) };
        match cache.try_lock(host, now) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(err) => return Err(format!("the credential cache's lock is unavailable ({err})")),
        }
        let request = match &sts.kind {
            StsKind::AssumeRole { .. } => self
                .fixed
                .clone()
                .and_then(|base| credentials::sts_request(sts, &self.config.region, Some(&base), None, now)),
            StsKind::WebIdentity { token_env } => {
                let token = std::env::var(token_env).ok();
                credentials::sts_request(sts, &self.config.region, None, token.as_deref(), now)
            }
            StsKind::Ecs { path, token_env } => {
                let path = path.clone().or_else(|| std::env::var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").ok());
                let token = std::env::var(token_env).ok();
                credentials::ecs_request(&sts.host, path.as_deref(), token.as_deref())
            }
        };
        let started = request.and_then(|request| {
            let headers: Vec<(&str, &[u8])> = request.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
            let call = HttpCall {
                cluster: &sts.cluster,
                headers: &headers,
                body: &request.body,
                timeout: Duration::from_millis(u64::from(sts.timeout_ms)),
            };
            host.http_call(&call).map_err(|err| format!("cannot call through cluster {:?} ({err})", sts.cluster))
        });
        match started {
            Ok(token) => Ok(Some(token)),
            Err(err) => {
                self.unlock(host, cache);
                self.metrics.sts_failed.inc();
                Err(err)
            }
        }
    }

    /// Handles the answer to a fetch: caches the credentials and releases the lock.
    fn finish_fetch(&self, host: &dyn Host, response: &CallResponse) -> Result<Rc<Credentials>, String> {
        let Some((cache, sts)) = &self.cache else { return Err("no STS configuration".to_string()) };
        let result = match (response.status, &sts.kind) {
            (None, StsKind::Ecs { .. }) => Err("container-credentials endpoint unreachable".to_string()),
            (None, _) => Err("STS unreachable (no answer from its cluster)".to_string()),
            (Some(status), StsKind::Ecs { .. }) => credentials::parse_ecs_response(status, &response.body),
            (Some(status), _) => credentials::parse_sts_response(status, &response.body),
        };
        let result = result.map(|temporary| {
            if let Err(err) = cache.store(host, &temporary) {
                // This request still gets them; the next one fetches again.
                log::warn!("{FILTER}: temporary credentials not cached: {err}");
            }
            Rc::new(temporary.credentials())
        });
        self.unlock(host, cache);
        match &result {
            Ok(_) => {
                self.metrics.sts_refreshed.inc();
                log::info!("{FILTER}: temporary credentials refreshed");
            }
            Err(err) => {
                self.metrics.sts_failed.inc();
                log::warn!("{FILTER}: {err}");
            }
        }
        result
    }

    fn unlock(&self, host: &dyn Host, cache: &Cache) {
        if let Err(err) = cache.unlock(host) {
            // The lock's lease ends it after LOCK_LEASE_SECONDS.
            log::warn!("{FILTER}: credential refresh lock not released: {err}");
        }
    }
}

/// Where a request is on its journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Headers not seen yet, or nothing more to do.
    Idle,
    /// Held with its headers while Envoy buffers the body.
    AwaitingBody,
    /// Held until this credential callout answers.
    AwaitingCredentials(u32),
    /// Signed and sent on; the answer is to be looked at (Lambda).
    Sent,
    /// A Lambda answer held with its headers while its body is buffered (to unwrap it or to read its error).
    HoldingResponse,
}

/// A complete request body kept while the request waits for credentials.
struct Body {
    bytes: Vec<u8>,
    /// The size the body callback reported (for replacing the body).
    size: usize,
}

/// One request.
pub struct AwsStream {
    filter: Rc<AwsFilter>,
    state: State,
    /// The Lambda function this request invokes, if any.
    lambda: Option<Rc<Lambda>>,
    is_grpc: bool,
    /// The body, once complete, while credentials are fetched. `None` for a request whose body streams.
    pending: Option<Body>,
    /// The request's headers as read when they arrived: nothing can change them while the filter holds them, so
    /// signing does not read them again (a host call).
    request_headers: Option<Vec<(String, Vec<u8>)>>,
}

impl Stream for AwsStream {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let filter = Rc::clone(&self.filter);
        let headers = match host.headers(Side::Request) {
            Ok(headers) => headers,
            Err(err) => return self.internal_error("request headers unavailable", err),
        };
        let view = ByteHeaders { pairs: &headers, host };
        self.is_grpc = is_grpc(view.header("content-type").as_deref());
        self.lambda = filter.config.lambda_for(&view).cloned();
        // A WebSocket upgrade or CONNECT: its body is a tunnel with no end to wait for. It is signed as a request
        // without a body; it cannot be a Lambda invocation.
        let tunnel = is_tunnel(&view);
        if tunnel && self.lambda.is_some() {
            return self.error(
                400,
                "an upgrade or CONNECT request cannot invoke a Lambda function",
                details::BAD_REQUEST,
            );
        }
        let api_gateway = self.lambda.as_ref().is_some_and(|l| l.format == Format::ApiGateway);
        // The event becomes the request's body: a dynamic module can give one to a request that has none.
        if api_gateway && end_of_stream && !host.can_add_body_to_bodiless() {
            return self.error(
                400,
                "this route invokes a Lambda function with format api_gateway, whose event is the request body: \
                 send the request with a body (a Wasm filter cannot give a body to a request that has none)",
                details::BAD_REQUEST,
            );
        }
        let needs_body = api_gateway || filter.config.payload == config::Payload::Signed;
        if needs_body && !end_of_stream && !tunnel {
            if filter.limit.declared_too_large(view.header("content-length").as_deref()) {
                return self.too_large();
            }
            self.state = State::AwaitingBody;
            self.request_headers = Some(headers);
            return Flow::Buffer;
        }
        self.request_headers = Some(headers);
        // Bodiless: the hash of the empty body. Streaming (unsigned payload): no body to hash.
        let body = (end_of_stream || tunnel).then(|| Body { bytes: Vec::new(), size: 0 });
        self.proceed(host, body)
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        if self.state != State::AwaitingBody {
            return Flow::Continue;
        }
        match self.filter.limit.progress(body_size, end_of_stream) {
            BodyProgress::Buffering => Flow::Buffer,
            BodyProgress::TooLarge => self.too_large(),
            BodyProgress::Complete => match host.body(Side::Request, body_size) {
                Ok(bytes) => self.proceed(host, Some(Body { bytes, size: body_size })),
                Err(err) => self.internal_error("request body unavailable", err),
            },
        }
    }

    fn on_http_call_response(&mut self, host: &dyn Host, token: u32, response: CallResponse) -> Flow {
        if self.state != State::AwaitingCredentials(token) {
            return Flow::Pause; // not ours to act on: leave the request as it is
        }
        self.state = State::Idle;
        let filter = Rc::clone(&self.filter);
        match filter.finish_fetch(host, &response) {
            Ok(credentials) => {
                let body = self.pending.take();
                self.sign(host, &credentials, body)
            }
            Err(err) => {
                filter.metrics.credentials_unavailable.inc();
                self.error(503, &format!("no AWS credentials: {err}"), details::CREDENTIALS_UNAVAILABLE)
            }
        }
    }

    fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let Some(lambda) = self.lambda.clone() else { return Flow::Continue };
        if self.state != State::Sent {
            return Flow::Continue;
        }
        let metrics = &self.filter.metrics;
        if let Some(details) = envoy_reply(host) {
            // Envoy answered itself (no healthy upstream, timeout, reset, ...): not AWS's answer, passed as it is.
            metrics.upstream_failed.inc();
            log::debug!("{FILTER}: Lambda invocation not answered by AWS: {details}");
            self.state = State::Idle;
            return Flow::Continue;
        }
        let headers = match host.headers_text(Side::Response) {
            Ok(headers) => headers,
            Err(err) => return self.internal_error("Lambda answer headers unavailable", err),
        };
        let status = headers.iter().find(|(n, _)| n == ":status").and_then(|(_, v)| v.parse::<u32>().ok());
        let function_error = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-amz-function-error"));
        let success = status.is_some_and(|s| (200..300).contains(&s)) && !function_error;
        if success && (lambda.invocation == Invocation::Async || lambda.format == Format::Raw) {
            // The function's result is the response: it streams to the client.
            metrics.lambda_invoked.inc();
            self.state = State::Idle;
            return Flow::Continue;
        }
        self.state = State::HoldingResponse;
        if end_of_stream {
            return self.finish_response(host, &lambda, Vec::new(), 0);
        }
        Flow::Buffer
    }

    fn on_response_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        if self.state != State::HoldingResponse {
            return Flow::Continue;
        }
        let Some(lambda) = self.lambda.clone() else { return Flow::Continue };
        match BodyLimit::new(MAX_LAMBDA_RESPONSE).progress(body_size, end_of_stream) {
            BodyProgress::Buffering => Flow::Buffer,
            BodyProgress::TooLarge => {
                self.filter.metrics.upstream_failed.inc();
                self.error(502, "Lambda answer larger than a Lambda result can be", Failure::BadResponse.details())
            }
            BodyProgress::Complete => match host.body(Side::Response, body_size) {
                Ok(body) => self.finish_response(host, &lambda, body, body_size),
                Err(err) => self.internal_error("Lambda answer unavailable", err),
            },
        }
    }
    fn on_done(&mut self, host: &dyn Host) {
        if let (State::AwaitingCredentials(_), Some((cache, _))) = (self.state, &self.filter.cache) {
            // The client went away before the credential fetch answered; its answer will not come here. Release
            // the refresh lock now rather than after its lease (every worker would answer 503 until then).
            self.filter.unlock(host, cache);
        }
    }
}

impl AwsStream {
    /// Signs once credentials are there, or waits for them.
    fn proceed(&mut self, host: &dyn Host, body: Option<Body>) -> Flow {
        match self.credentials(host) {
            Ok(Some(credentials)) => self.sign(host, &credentials, body),
            Ok(None) => {
                self.pending = body;
                Flow::Pause
            }
            Err(flow) => flow,
        }
    }

    /// Credentials for this request; `Ok(None)`: a fetch was started and the request waits for it.
    fn credentials(&mut self, host: &dyn Host) -> Result<Option<Rc<Credentials>>, Flow> {
        let filter = Rc::clone(&self.filter);
        let message = match (&filter.config.credentials, &filter.cache) {
            (CredentialSource::Sts(_), Some((cache, _))) => {
                let now = host.unix_secs();
                if let Lookup::Valid { credentials, .. } = cache.lookup(host, now) {
                    return Ok(Some(Rc::new(credentials)));
                }
                match filter.start_fetch(host, now) {
                    Ok(Some(token)) => {
                        self.state = State::AwaitingCredentials(token);
                        return Ok(None);
                    }
                    Ok(None) => "temporary AWS credentials are being fetched; retry shortly".to_string(),
                    Err(err) => format!("no AWS credentials: {err}"),
                }
            }
            _ => match &filter.fixed {
                Ok(credentials) => return Ok(Some(Rc::clone(credentials))),
                Err(err) => err.clone(),
            },
        };
        filter.metrics.credentials_unavailable.inc();
        log::warn!("{FILTER}: {message}");
        Err(self.error(503, &message, details::CREDENTIALS_UNAVAILABLE))
    }

    /// Rewrites (Lambda) and signs the request in place, then lets it go on. `body`: the complete body when the
    /// payload is signed or the request has none; `None` when it streams.
    fn sign(&mut self, host: &dyn Host, credentials: &Credentials, body: Option<Body>) -> Flow {
        let headers = match self.request_headers.take().map_or_else(|| host.headers(Side::Request), Ok) {
            Ok(headers) => headers,
            Err(err) => return self.internal_error("request headers unavailable", err),
        };
        let mut request = Rewrite { host, headers };
        match self.rewrite_and_sign(&mut request, credentials, body) {
            Ok(Ok(())) => {
                if self.lambda.is_none() {
                    self.filter.metrics.signed.inc();
                }
                self.state = State::Sent;
                Flow::Continue
            }
            Ok(Err(message)) => self.error(400, &message, details::BAD_REQUEST),
            Err(err) => self.internal_error("the request could not be rewritten", err),
        }
    }

    /// The host calls of [`AwsStream::sign`]: `Ok(Err(message))` for a request that cannot be signed.
    fn rewrite_and_sign(
        &self,
        request: &mut Rewrite<'_>,
        credentials: &Credentials,
        body: Option<Body>,
    ) -> HostResult<Result<(), String>> {
        let config = &self.filter.config;
        let mut new_body = None;
        let payload_hash = match &self.lambda {
            Some(lambda) => {
                let payload = match (lambda.format, &body) {
                    (Format::ApiGateway, Some(body)) => {
                        let event = lambda::payload(Format::ApiGateway, &client_request(&request.headers, body).view());
                        Some(new_body.insert(event).as_slice())
                    }
                    (_, body) => body.as_ref().map(|b| b.bytes.as_slice()),
                };
                let hash = signing::payload_hash(config, payload);
                // The client's headers are for the client's API, not for Invoke; Envoy's own and tracing stay.
                // Those set just below are not removed first: a value that is already right costs no host call.
                let mut dropped: Vec<String> = Vec::new();
                for (name, _) in &request.headers {
                    let set_below = match name.as_str() {
                        "content-type" | INVOCATION_TYPE_HEADER => true,
                        "content-length" => payload.is_some(),
                        _ => false,
                    };
                    let keep = name.starts_with(':')
                        || set_below
                        || (body.is_none() && matches!(name.as_str(), "content-length" | "transfer-encoding"))
                        || config.lambda_keeps_header(name);
                    if !keep && !dropped.contains(name) {
                        dropped.push(name.clone());
                    }
                }
                for name in &dropped {
                    request.remove(name)?;
                }
                request.set(":method", b"POST")?;
                let path = lambda::invoke_path(&lambda.function, lambda.qualifier.as_deref());
                request.set(":path", path.as_bytes())?;
                request.set(":authority", self.filter.lambda_host.as_bytes())?;
                request.set("content-type", b"application/json")?;
                request.set(INVOCATION_TYPE_HEADER, lambda::invocation_type(lambda.invocation).as_bytes())?;
                if let Some(payload) = payload {
                    request.set("content-length", payload.len().to_string().as_bytes())?;
                }
                hash
            }
            None => {
                if let Some(body) = body.as_ref().filter(|b| b.size > 0) {
                    // The buffered body is complete now: its length, whatever framing the client used.
                    request.remove("transfer-encoding")?;
                    request.set("content-length", body.bytes.len().to_string().as_bytes())?;
                }
                signing::payload_hash(config, body.as_ref().map(|b| b.bytes.as_slice()))
            }
        };
        if let Some(ms) = config.timeout_for(self.lambda.as_deref()) {
            if runs_on_a_cluster(request.host) {
                // The router chose the timeout before a cluster's filters run; the header would only reach AWS.
                if !self.filter.timeout_unusable_reported.replace(true) {
                    log::warn!(
                        "{FILTER}: `timeout` applies only when the filter is a downstream HTTP filter; on a cluster \
                         (upstream filter) the route's timeout applies: set `timeout` on the route instead"
                    );
                }
            } else {
                request.set(TIMEOUT_HEADER, ms.to_string().as_bytes())?;
            }
        }
        let own: &[&str] = if self.lambda.is_some() { &[INVOCATION_TYPE_HEADER] } else { &[] };
        let now = request.host.unix_secs();
        let changes = match signing::sign_with_own(&request.headers, own, config, credentials, now, &payload_hash) {
            Ok(changes) => changes,
            Err(message) => return Ok(Err(message)),
        };
        for name in &changes.remove {
            request.remove(name)?;
        }
        for (name, value) in &changes.set {
            request.set(name, value.as_bytes())?;
        }
        if let (Some(event), Some(body)) = (&new_body, &body) {
            request.host.set_body(Side::Request, body.size, event)?;
        }
        Ok(Ok(()))
    }

    /// The whole Lambda answer is here: unwrap it into the response, or answer 502.
    fn finish_response(&mut self, host: &dyn Host, lambda: &Lambda, body: Vec<u8>, body_size: usize) -> Flow {
        self.state = State::Idle;
        let headers = match host.headers_text(Side::Response) {
            Ok(headers) => headers,
            Err(err) => return self.internal_error("Lambda answer headers unavailable", err),
        };
        let status = headers.iter().find(|(n, _)| n == ":status").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let metrics = &self.filter.metrics;
        match lambda::outcome(lambda, status, &headers, &body) {
            Outcome::Reply { status, headers: new_headers, body } => {
                let rewritten = (|| -> HostResult<()> {
                    let mut names: Vec<&str> = Vec::new();
                    for (name, _) in headers.iter().filter(|(n, _)| !n.starts_with(':')) {
                        if !names.contains(&name.as_str()) {
                            names.push(name);
                        }
                    }
                    for name in names {
                        host.remove_header(Side::Response, name)?;
                    }
                    host.set_header(Side::Response, ":status", status.to_string().as_bytes())?;
                    for (name, value) in &new_headers {
                        host.add_header(Side::Response, name, value.as_bytes())?;
                    }
                    host.set_header(Side::Response, "content-length", body.len().to_string().as_bytes())?;
                    host.set_body(Side::Response, body_size, &body)
                })();
                match rewritten {
                    Ok(()) => {
                        metrics.lambda_invoked.inc();
                        Flow::Continue
                    }
                    Err(err) => self.internal_error("the Lambda answer could not be unwrapped", err),
                }
            }
            Outcome::BadGateway(failure, message) => {
                match failure {
                    Failure::FunctionError => metrics.lambda_function_errors.inc(),
                    Failure::InvokeFailed | Failure::BadResponse => metrics.upstream_failed.inc(),
                }
                log::warn!("{FILTER}: {message}");
                self.error(502, &message, failure.details())
            }
        }
    }

    fn too_large(&mut self) -> Flow {
        self.filter.metrics.body_too_large.inc();
        let message = self.filter.limit.too_large_message();
        self.error(413, &message, details::BODY_TOO_LARGE)
    }

    fn error(&mut self, status: u32, message: &str, details: &str) -> Flow {
        self.state = State::Idle;
        Flow::Reply(LocalReply::error(FILTER, status, message, self.is_grpc).with_details(details))
    }

    /// The host refused a call the request cannot do without: 500, logged (the client sees no detail).
    fn internal_error(&mut self, what: &str, err: shared::HostError) -> Flow {
        log::warn!("{FILTER}: {what}: {err}");
        self.error(500, "the aws filter could not process the request", details::INTERNAL_ERROR)
    }
}

/// `true` when the filter runs as a cluster's (upstream) HTTP filter: the upstream host is already chosen when
/// the request headers arrive (a downstream filter sees them before routing).
fn runs_on_a_cluster(host: &dyn Host) -> bool {
    matches!(host.property(&["upstream", "address"]), Ok(Some(address)) if !address.is_empty())
}

/// The reason Envoy gave for a response it made itself; `None` for an upstream's answer (or when the host does
/// not say: an upstream filter only ever sees the upstream's answers).
fn envoy_reply(host: &dyn Host) -> Option<String> {
    match host.property_text(&["response", "code_details"]) {
        Ok(Some(details)) if details != VIA_UPSTREAM => Some(details),
        Ok(_) => None,
        Err(err) => {
            log::debug!("{FILTER}: response.code_details unavailable: {err}");
            None
        }
    }
}

/// The client's request as the API Gateway event describes it (`host` from `:authority`).
fn client_request<'a>(headers: &'a [(String, Vec<u8>)], body: &'a Body) -> ClientRequestOwned<'a> {
    let text =
        |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let mut client_headers: Vec<(String, String)> = Vec::with_capacity(headers.len());
    if let Some(authority) = text(":authority") {
        client_headers.push(("host".to_string(), authority));
    }
    client_headers.extend(
        headers
            .iter()
            .filter(|(n, _)| !n.starts_with(':') && n != "host")
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())),
    );
    ClientRequestOwned {
        method: text(":method").unwrap_or_else(|| "GET".to_string()),
        path: text(":path").unwrap_or_else(|| "/".to_string()),
        headers: client_headers,
        body: &body.bytes,
    }
}

/// The parts of a [`ClientRequest`] read from the host.
struct ClientRequestOwned<'a> {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

impl ClientRequestOwned<'_> {
    fn view(&self) -> ClientRequest<'_> {
        ClientRequest { method: &self.method, path: &self.path, headers: &self.headers, body: self.body }
    }
}

/// The request's headers as read from the host (bytes), kept in step with what the filter changes, so that the
/// signature is computed over exactly what is sent.
struct Rewrite<'h> {
    host: &'h dyn Host,
    headers: Vec<(String, Vec<u8>)>,
}

impl Rewrite<'_> {
    /// Sets a header; one that already has exactly this value costs no host call.
    fn set(&mut self, name: &str, value: &[u8]) -> HostResult<()> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        if values.next().is_some_and(|v| v == value) && values.next().is_none() {
            return Ok(());
        }
        self.host.set_header(Side::Request, name, value)?;
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_vec()));
        Ok(())
    }

    /// Removes a header; one that is not there costs no host call.
    fn remove(&mut self, name: &str) -> HostResult<()> {
        if !self.headers.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        self.host.remove_header(Side::Request, name)?;
        self.headers.retain(|(n, _)| n != name);
        Ok(())
    }
}

/// Request headers as bytes, seen as text by the rule matchers (bytes that are not UTF-8 replaced there only).
struct ByteHeaders<'a> {
    pairs: &'a [(String, Vec<u8>)],
    host: &'a dyn Host,
}

impl RequestHeaders for ByteHeaders<'_> {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut values = self.pairs.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
        let first = values.next()?;
        match values.next() {
            None => Some(String::from_utf8_lossy(first)),
            Some(second) => {
                let mut joined = String::from_utf8_lossy(first).into_owned();
                for more in std::iter::once(second).chain(values) {
                    joined.push(',');
                    joined.push_str(&String::from_utf8_lossy(more));
                }
                Some(std::borrow::Cow::Owned(joined))
            }
        }
    }

    fn route_name(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.host.property_text(&["xds", "route_name"]).ok().flatten().map(std::borrow::Cow::Owned)
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
