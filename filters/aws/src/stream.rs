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
use shared::metrics::{Counter, Gauge};
use shared::request::{is_grpc, is_tunnel};
use shared::store::reserve_create_cas;
use shared::{Flow, Host, HostResult, LocalReply, RequestHeaders, Side};

use crate::config::{self, Config, CredentialSource, Format, Invocation, Lambda, Sts, StsKind, FILTER};
use crate::credentials::{self, Cache, Lookup};
use crate::lambda::{self, ClientRequest, Failure, Outcome};
use crate::signing;
use crate::sigv4::Credentials;

/// Envoy's response-code details of an answer that came from the upstream (anything else is Envoy's own reply).
const VIA_UPSTREAM: &str = "via_upstream";
/// The request header with which a filter sets the route's upstream timeout for one request.
const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";
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
    fn define() -> Self {
        Metrics {
            signed: Counter::define(&[FILTER, "signed"]),
            lambda_invoked: Counter::define(&[FILTER, "lambda", "invoked"]),
            lambda_function_errors: Counter::define(&[FILTER, "lambda", "function_errors"]),
            upstream_failed: Counter::define(&[FILTER, "upstream_failed"]),
            credentials_unavailable: Counter::define(&[FILTER, "credentials", "unavailable"]),
            body_too_large: Counter::define(&[FILTER, "body_too_large"]),
            sts_refreshed: Counter::define(&[FILTER, "sts", "refreshed"]),
            sts_failed: Counter::define(&[FILTER, "sts", "failed"]),
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
        Gauge::define(&[FILTER, "rules"]).set(rules as u64);
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
            metrics: Metrics::define(),
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
        AwsStream { filter, state: State::Idle, lambda: None, is_grpc: false, pending: None }
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
            return self.error(400, "an upgrade or CONNECT request cannot invoke a Lambda function", "aws_bad_request");
        }
        let api_gateway = self.lambda.as_ref().is_some_and(|l| l.format == Format::ApiGateway);
        if api_gateway && end_of_stream {
            return self.error(
                400,
                "this route invokes a Lambda function with format api_gateway, whose event is the request body: \
                 send the request with a body (a filter cannot give a body to a request that has none)",
                "aws_bad_request",
            );
        }
        let needs_body = api_gateway || filter.config.payload == config::Payload::Signed;
        if needs_body && !end_of_stream && !tunnel {
            if filter.limit.declared_too_large(view.header("content-length").as_deref()) {
                return self.too_large();
            }
            self.state = State::AwaitingBody;
            return Flow::Buffer;
        }
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
                self.error(503, &format!("no AWS credentials: {err}"), "aws_credentials_unavailable")
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
        Err(self.error(503, &message, "aws_credentials_unavailable"))
    }

    /// Rewrites (Lambda) and signs the request in place, then lets it go on. `body`: the complete body when the
    /// payload is signed or the request has none; `None` when it streams.
    fn sign(&mut self, host: &dyn Host, credentials: &Credentials, body: Option<Body>) -> Flow {
        let headers = match host.headers(Side::Request) {
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
            Ok(Err(message)) => self.error(400, &message, "aws_bad_request"),
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
                let mut dropped: Vec<String> = Vec::new();
                for (name, _) in &request.headers {
                    let keep = name.starts_with(':')
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
                request.set("x-amz-invocation-type", lambda::invocation_type(lambda.invocation).as_bytes())?;
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
        let own: &[&str] = if self.lambda.is_some() { &["x-amz-invocation-type"] } else { &[] };
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
        self.error(413, &message, "aws_body_too_large")
    }

    fn error(&mut self, status: u32, message: &str, details: &str) -> Flow {
        self.state = State::Idle;
        Flow::Reply(LocalReply::error(FILTER, status, message, self.is_grpc).with_details(details))
    }

    /// The host refused a call the request cannot do without: 500, logged (the client sees no detail).
    fn internal_error(&mut self, what: &str, err: shared::HostError) -> Flow {
        log::warn!("{FILTER}: {what}: {err}");
        self.error(500, "the aws filter could not process the request", "aws_internal_error")
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
    fn set(&mut self, name: &str, value: &[u8]) -> HostResult<()> {
        self.host.set_header(Side::Request, name, value)?;
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_vec()));
        Ok(())
    }

    fn remove(&mut self, name: &str) -> HostResult<()> {
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
mod tests {
    use super::*;
    use crate::sigv4;
    use shared::host::FakeHost;
    use shared::metrics::test_value;
    use shared::HostError;

    const INLINE: &str = r#""credentials": {"access_key_id": "AKIDINLINE", "secret_access_key": "secret"}"#;

    fn stream(host: &FakeHost, config: &str) -> AwsStream {
        let filter = AwsFilter::configure(host, config.as_bytes(), None).unwrap();
        AwsFilter::stream(Rc::new(filter))
    }

    fn s3(extra: &str) -> String {
        format!(r#"{{"region": "us-east-1", "service": "s3", {INLINE}{extra}}}"#)
    }

    fn lambda(lambda: &str) -> String {
        format!(r#"{{"region": "us-east-1", "service": "lambda", {INLINE}, "lambda": {lambda}}}"#)
    }

    fn header(host: &FakeHost, name: &str) -> Option<String> {
        host.header_of(Side::Request, name)
    }

    fn metric(name: &str) -> u64 {
        test_value(&format!("aws.{name}")).unwrap_or(0)
    }

    fn reply_of(flow: Flow) -> LocalReply {
        match flow {
            Flow::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_get_is_signed_in_place_and_continues() {
        let host = FakeHost::with_request(&[
            (":method", "GET"),
            (":path", "/files/k"),
            (":authority", "gw"),
            ("authorization", "AWS4-HMAC-SHA256 smuggled"),
        ]);
        let mut s = stream(&host, &s3(""));
        let signed = metric("signed");
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        let auth = header(&host, "authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDINLINE/"), "{auth}");
        assert_eq!(header(&host, "x-amz-content-sha256").unwrap(), sigv4::sha256_hex(b""));
        assert!(header(&host, "x-amz-date").is_some());
        assert_eq!(header(&host, "content-length"), None, "a bodiless request stays bodiless");
        assert_eq!(header(&host, TIMEOUT_HEADER), None, "no timeout configured: the route's applies");
        assert_eq!(metric("signed"), signed + 1);
        // Not a Lambda: the answer streams back untouched.
        host.set_response(&[(":status", "503")], b"");
        assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
        assert!(host.replies.borrow().is_empty());
    }

    #[test]
    fn a_signed_put_is_held_until_its_body_is_complete() {
        let host = FakeHost::with_request(&[
            (":method", "PUT"),
            (":path", "/files/k"),
            (":authority", "gw"),
            ("transfer-encoding", "chunked"),
        ])
        .body(b"hello world");
        let mut s = stream(&host, &s3(r#", "timeout": "2s""#));
        assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(header(&host, "authorization"), None, "nothing signed before the body is there");
        assert_eq!(s.on_request_body(&host, 5, false), Flow::Buffer);
        assert_eq!(s.on_request_body(&host, 11, true), Flow::Continue);
        assert_eq!(header(&host, "x-amz-content-sha256").unwrap(), sigv4::sha256_hex(b"hello world"));
        assert_eq!(header(&host, "content-length").as_deref(), Some("11"));
        assert_eq!(header(&host, "transfer-encoding"), None);
        assert_eq!(header(&host, TIMEOUT_HEADER).as_deref(), Some("2000"));

        assert!(header(&host, "authorization")
            .unwrap()
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"));
        assert_eq!(&*host.request_body.borrow(), b"hello world", "the body goes on as it came");

        // On a cluster (upstream filter) the router has chosen the timeout already: no header for AWS to see.
        let host = FakeHost::with_request(&[(":method", "PUT"), (":path", "/files/k"), (":authority", "gw")]);
        host.set_property("upstream.address", "10.0.0.1:443");
        let mut s = stream(&host, &s3(r#", "timeout": "2s""#));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        assert_eq!(header(&host, TIMEOUT_HEADER), None);
        assert!(header(&host, "authorization").is_some());
    }

    #[test]
    fn bodies_over_max_body_are_413_declared_or_not() {
        let host = FakeHost::with_request(&[
            (":method", "PUT"),
            (":path", "/k"),
            (":authority", "gw"),
            ("content-length", "100"),
        ]);
        let mut s = stream(&host, &s3(r#", "max_body": "16B""#));
        let before = metric("body_too_large");
        let reply = reply_of(s.on_request_headers(&host, false));
        assert_eq!((reply.status, reply.details.as_str()), (413, "aws_body_too_large"));

        let host = FakeHost::with_request(&[(":method", "PUT"), (":path", "/k"), (":authority", "gw")]);
        let mut s = stream(&host, &s3(r#", "max_body": "16B""#));
        assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(s.on_request_body(&host, 10, false), Flow::Buffer);
        let reply = reply_of(s.on_request_body(&host, 20, false));
        assert_eq!((reply.status, reply.details.as_str()), (413, "aws_body_too_large"));
        assert_eq!(header(&host, "authorization"), None);
        assert_eq!(metric("body_too_large"), before + 2);
    }

    #[test]
    fn unsigned_payloads_stream_without_buffering() {
        let host = FakeHost::with_request(&[(":method", "PUT"), (":path", "/k"), (":authority", "gw")]);
        let mut s = stream(&host, &s3(r#", "payload": "unsigned""#));
        assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
        assert_eq!(header(&host, "x-amz-content-sha256").as_deref(), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(s.on_request_body(&host, 10, true), Flow::Continue);
    }

    #[test]
    fn a_non_utf8_header_is_signed_as_its_bytes_and_forwarded_unchanged() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/k"), (":authority", "gw")]);
        host.request_headers.borrow_mut().push(("x-name".to_string(), b"caf\xe9".to_vec()));
        let request = host.request_headers.borrow().clone();
        let mut s = stream(&host, &s3(""));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        assert_eq!(host.header(Side::Request, "x-name").unwrap().unwrap(), b"caf\xe9", "forwarded as the same bytes");
        let auth = header(&host, "authorization").unwrap();
        assert!(auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-name,"), "{auth}");
        // The signature is the one over the raw bytes, not over the U+FFFD form.
        let config = config::parse(s3("").as_bytes()).unwrap();
        let CredentialSource::Inline(creds) = &config.credentials else { panic!("inline") };
        let hash = sigv4::sha256_hex(b"");
        let raw = signing::sign(&request, &config, creds, host.unix_secs(), &hash).unwrap();
        assert_eq!(raw.get("authorization"), Some(auth.as_str()));
        let lossy: Vec<(String, String)> =
            request.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect();
        let replaced = signing::sign(&lossy, &config, creds, host.unix_secs(), &hash).unwrap();
        assert_ne!(replaced.get("authorization"), Some(auth.as_str()));
    }

    #[test]
    fn a_sync_lambda_invocation_is_the_request_rewritten() {
        let host = FakeHost::with_request(&[
            (":method", "PUT"),
            (":path", "/orders/7?x=1"),
            (":authority", "api.example.com"),
            ("accept", "text/html"),
            ("cookie", "session=secret"),
            ("x-request-id", "abc"),
            ("content-type", "text/plain"),
        ])
        .body(br#"{"order": 42}"#);
        let mut s = stream(&host, &lambda(r#"{"function": "orders", "qualifier": "live", "timeout": "1s"}"#));
        assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(s.on_request_body(&host, 13, true), Flow::Continue);
        assert_eq!(header(&host, ":method").as_deref(), Some("POST"));
        assert_eq!(header(&host, ":path").as_deref(), Some("/2015-03-31/functions/orders/invocations?Qualifier=live"));
        assert_eq!(header(&host, ":authority").as_deref(), Some("lambda.us-east-1.amazonaws.com"));
        assert_eq!(header(&host, "x-amz-invocation-type").as_deref(), Some("RequestResponse"));
        assert_eq!(header(&host, "content-type").as_deref(), Some("application/json"));
        assert_eq!(header(&host, "content-length").as_deref(), Some("13"));
        assert_eq!(header(&host, TIMEOUT_HEADER).as_deref(), Some("1000"));
        assert_eq!((header(&host, "accept"), header(&host, "cookie")), (None, None), "client headers dropped");
        assert_eq!(header(&host, "x-request-id").as_deref(), Some("abc"), "Envoy's own kept");
        assert_eq!(&*host.request_body.borrow(), br#"{"order": 42}"#, "raw: the body is the payload");
        let auth = header(&host, "authorization").unwrap();
        assert!(
            auth.contains("/lambda/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-invocation-type,"),
            "{auth}"
        );

        // The function's result streams back.
        let invoked = metric("lambda.invoked");
        host.set_response(&[(":status", "200"), ("content-type", "application/json")], b"{}");
        assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
        assert_eq!(s.on_response_body(&host, 2, true), Flow::Continue);
        assert_eq!(metric("lambda.invoked"), invoked + 1);
    }

    #[test]
    fn an_async_invocation_of_a_bodiless_request() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
        let mut s = stream(&host, &lambda(r#"{"function": "orders", "invocation": "async"}"#));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        assert_eq!(header(&host, ":method").as_deref(), Some("POST"));
        assert_eq!(header(&host, "x-amz-invocation-type").as_deref(), Some("Event"));
        assert_eq!(header(&host, "content-length").as_deref(), Some("0"));
        host.set_response(&[(":status", "202")], b"");
        assert_eq!(s.on_response_headers(&host, true), Flow::Continue);
        assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("202"));
    }

    #[test]
    fn api_gateway_events_in_and_proxy_responses_unwrapped_out() {
        let host = FakeHost::with_request(&[
            (":method", "POST"),
            (":path", "/orders/7?id=1"),
            (":authority", "api.example.com"),
            ("x-client", "yes"),
        ])
        .body(b"hi");
        let mut s = stream(&host, &lambda(r#"{"function": "orders", "format": "api_gateway"}"#));
        assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(s.on_request_body(&host, 2, true), Flow::Continue);
        let event: serde_json::Value = serde_json::from_slice(&host.request_body.borrow()).unwrap();
        assert_eq!(event["httpMethod"], "POST");
        assert_eq!(event["path"], "/orders/7");
        assert_eq!(event["headers"]["host"], "api.example.com");
        assert_eq!(event["headers"]["x-client"], "yes");
        assert_eq!(event["queryStringParameters"]["id"], "1");
        assert_eq!(event["body"], "hi");
        let length = host.request_body.borrow().len().to_string();
        assert_eq!(header(&host, "content-length"), Some(length));
        assert_eq!(header(&host, "x-client"), None);
        // The signed hash is the event's.
        let auth = header(&host, "authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDINLINE/"));

        host.set_response(
            &[(":status", "200"), ("content-type", "application/json"), ("x-amzn-requestid", "r")],
            br#"{"statusCode": 201, "headers": {"x-fn": "1"}, "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]}, "body": "created"}"#,
        );
        let size = host.response_body.borrow().len();
        assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
        assert_eq!(s.on_response_body(&host, size, true), Flow::Continue);
        let response = host.response_headers.borrow().clone();
        let text: Vec<(String, String)> =
            response.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect();
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            text,
            vec![
                pair(":status", "201"),
                pair("x-fn", "1"),
                pair("set-cookie", "a=1"),
                pair("set-cookie", "b=2"),
                pair("content-length", "7")
            ]
        );
        assert_eq!(&*host.response_body.borrow(), b"created");
    }

    #[test]
    fn a_bodiless_api_gateway_request_is_refused_with_the_reason() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
        let mut s = stream(&host, &lambda(r#"{"function": "orders", "format": "api_gateway"}"#));
        let reply = reply_of(s.on_request_headers(&host, true));
        assert_eq!((reply.status, reply.details.as_str()), (400, "aws_bad_request"));
        assert!(String::from_utf8_lossy(&reply.body).contains("api_gateway"));
    }

    #[test]
    fn function_errors_and_aws_errors_are_502_with_details() {
        for (headers, body, details, message) in [
            (
                vec![(":status", "200"), ("x-amz-function-error", "Unhandled")],
                &br#"{"errorType": "ValueError"}"#[..],
                "aws_lambda_function_error",
                "Lambda function error: ValueError",
            ),
            (
                vec![(":status", "403"), ("x-amzn-errortype", "AccessDeniedException")],
                b"{}",
                "aws_lambda_invoke_failed",
                "AWS answered 403 (AccessDeniedException)",
            ),
        ] {
            let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
            let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
            assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
            host.set_response(&headers, body);
            assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
            let reply = reply_of(s.on_response_body(&host, body.len(), true));
            assert_eq!((reply.status, reply.details.as_str()), (502, details));
            assert!(String::from_utf8_lossy(&reply.body).contains(message), "{:?}", reply.body);
        }
    }

    #[test]
    fn envoys_own_replies_are_not_taken_for_aws_answers() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
        let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        host.set_response(&[(":status", "504")], b"upstream request timeout");
        host.set_property("response.code_details", "upstream_response_timeout");
        let failed = metric("upstream_failed");
        assert_eq!(s.on_response_headers(&host, false), Flow::Continue);
        assert_eq!(s.on_response_body(&host, 24, true), Flow::Continue);
        assert_eq!(host.header_of(Side::Response, ":status").as_deref(), Some("504"));
        assert_eq!(metric("upstream_failed"), failed + 1);
        // The same status from AWS is AWS's answer.
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/x"), (":authority", "gw")]);
        let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
        assert_eq!(s.on_request_headers(&host, true), Flow::Continue);
        host.set_response(&[(":status", "503")], b"{}");
        host.set_property("response.code_details", "via_upstream");
        assert_eq!(s.on_response_headers(&host, false), Flow::Buffer);
        assert_eq!(reply_of(s.on_response_body(&host, 2, true)).details, "aws_lambda_invoke_failed");
    }

    const STS_OK: &[u8] = br#"<AssumeRoleResponse><AssumeRoleResult><Credentials><SessionToken>TOKEN</SessionToken>
        <SecretAccessKey>SECRET</SecretAccessKey><Expiration>2099-01-01T00:00:00Z</Expiration>
        <AccessKeyId>ASIATEMP</AccessKeyId></Credentials></AssumeRoleResult></AssumeRoleResponse>"#;

    fn assume_role() -> String {
        r#"{"region": "us-east-1", "service": "sqs", "credentials": {"access_key_id": "AKIDBASE",
            "secret_access_key": "base-secret", "assume_role": {"role_arn": "arn:aws:iam::123456789012:role/app",
            "cluster": "sts"}}}"#
            .to_string()
    }

    #[test]
    fn an_upgrade_is_signed_as_a_request_without_a_body_and_never_invokes_lambda() {
        let upgrade = [(":method", "GET"), (":path", "/ws"), (":authority", "b.s3"), ("upgrade", "websocket")];
        let host = FakeHost::with_request(&upgrade);
        let mut s = stream(&host, &s3(""));
        // Signed payload, but no body to wait for: signed at once with the empty body's hash.
        assert_eq!(s.on_request_headers(&host, false), Flow::Continue);
        assert!(header(&host, "authorization").is_some());
        assert_eq!(header(&host, "x-amz-content-sha256").as_deref(), Some(sigv4::sha256_hex(b"").as_str()));

        let host = FakeHost::with_request(&upgrade);
        let mut s = stream(&host, &lambda(r#"{"function": "orders"}"#));
        assert_eq!(reply_of(s.on_request_headers(&host, false)).details, "aws_bad_request");
    }

    #[test]
    fn a_request_that_ends_while_waiting_for_sts_releases_the_fetch_lock() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), (":authority", "sqs")]);
        let mut s = stream(&host, &assume_role());
        assert_eq!(s.on_request_headers(&host, true), Flow::Pause);
        assert_eq!(host.http_calls.borrow().len(), 1);
        // Another request meanwhile: the lock is taken, it is told to retry.
        let mut other = stream(&host, &assume_role());
        assert_eq!(reply_of(other.on_request_headers(&host, true)).status, 503);
        s.on_done(&host);
        // The lock is free again: the next request starts its own fetch.
        let mut next = stream(&host, &assume_role());
        assert_eq!(next.on_request_headers(&host, true), Flow::Pause);
        assert_eq!(host.http_calls.borrow().len(), 2);
    }

    #[test]
    fn a_request_waits_for_sts_and_is_signed_with_the_temporary_credentials() {
        let host = FakeHost::with_request(&[(":method", "POST"), (":path", "/"), (":authority", "sqs")]).body(b"a=1");
        let mut s = stream(&host, &assume_role());
        assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(s.on_request_body(&host, 3, true), Flow::Pause);
        let call = host.last_call().unwrap();
        assert_eq!(call.cluster, "sts");
        assert!(String::from_utf8_lossy(&call.body).starts_with("Action=AssumeRole&"));
        assert!(call.header("authorization").unwrap().contains("Credential=AKIDBASE/"));
        assert_eq!(header(&host, "authorization"), None);

        let refreshed = metric("sts.refreshed");
        let response = CallResponse { status: Some(200), headers: Vec::new(), body: STS_OK.to_vec() };
        assert_eq!(s.on_http_call_response(&host, call.token, response), Flow::Continue);
        assert!(header(&host, "authorization").unwrap().contains("Credential=ASIATEMP/"));
        assert_eq!(header(&host, "x-amz-security-token").as_deref(), Some("TOKEN"));
        assert_eq!(header(&host, "content-length").as_deref(), Some("3"));
        assert_eq!(metric("sts.refreshed"), refreshed + 1);

        // The next request finds them in shared data: no call.
        let mut next = stream(&host, &assume_role());
        assert_eq!(next.on_request_headers(&host, true), Flow::Continue);
        assert_eq!(host.http_calls.borrow().len(), 1);
    }

    #[test]
    fn an_api_gateway_invocation_waiting_for_sts_gets_its_event_when_the_credentials_arrive() {
        let config = r#"{"region": "us-east-1", "service": "lambda", "credentials": {"access_key_id": "AKIDBASE",
            "secret_access_key": "base-secret", "assume_role": {"role_arn": "arn:aws:iam::123456789012:role/app",
            "cluster": "sts"}}, "lambda": {"function": "orders", "format": "api_gateway"}}"#;
        let host = FakeHost::with_request(&[(":method", "POST"), (":path", "/o"), (":authority", "gw")]).body(b"{}");
        let mut s = stream(&host, config);
        assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(s.on_request_body(&host, 2, true), Flow::Pause);
        assert_eq!(&*host.request_body.borrow(), b"{}", "nothing changed while waiting");
        let token = host.last_call().unwrap().token;
        let response = CallResponse { status: Some(200), headers: Vec::new(), body: STS_OK.to_vec() };
        assert_eq!(s.on_http_call_response(&host, token, response), Flow::Continue);
        let event: serde_json::Value = serde_json::from_slice(&host.request_body.borrow()).unwrap();
        assert_eq!((event["path"].as_str(), event["body"].as_str()), (Some("/o"), Some("{}")));
        assert_eq!(header(&host, "content-length"), Some(host.request_body.borrow().len().to_string()));
        assert!(header(&host, "authorization").unwrap().contains("Credential=ASIATEMP/"));
        assert_eq!(header(&host, ":path").as_deref(), Some("/2015-03-31/functions/orders/invocations"));
    }

    #[test]
    fn an_unsigned_raw_invocation_streams_its_body() {
        let config = format!(
            r#"{{"region": "us-east-1", "service": "lambda", "payload": "unsigned", {INLINE},
                "lambda": {{"function": "orders"}}}}"#
        );
        let host = FakeHost::with_request(&[
            (":method", "POST"),
            (":path", "/o"),
            (":authority", "gw"),
            ("content-length", "5"),
            ("accept", "*/*"),
        ]);
        let mut s = stream(&host, &config);
        assert_eq!(s.on_request_headers(&host, false), Flow::Continue, "not held: the body streams");
        assert_eq!(header(&host, "content-length").as_deref(), Some("5"), "the client's framing stays");
        assert_eq!(header(&host, "accept"), None);
        assert_eq!(header(&host, "x-amz-content-sha256").as_deref(), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(s.on_request_body(&host, 5, true), Flow::Continue);
    }

    #[test]
    fn an_api_gateway_answer_without_a_body_is_a_bad_response() {
        let host = FakeHost::with_request(&[(":method", "POST"), (":path", "/o"), (":authority", "gw")]).body(b"x");
        let mut s = stream(&host, &lambda(r#"{"function": "orders", "format": "api_gateway"}"#));
        assert_eq!(s.on_request_headers(&host, false), Flow::Buffer);
        assert_eq!(s.on_request_body(&host, 1, true), Flow::Continue);
        host.set_response(&[(":status", "200")], b"");
        let failed = metric("upstream_failed");
        let reply = reply_of(s.on_response_headers(&host, true));
        assert_eq!((reply.status, reply.details.as_str()), (502, "aws_lambda_bad_response"));
        assert_eq!(metric("upstream_failed"), failed + 1);
    }

    #[test]
    fn a_refused_or_unanswered_sts_call_is_503() {
        for (status, body, expected) in [
            (Some(403), &b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"[..], "STS answered 403"),
            (None, b"", "STS unreachable"),
        ] {
            let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), (":authority", "sqs")]);
            let mut s = stream(&host, &assume_role());
            assert_eq!(s.on_request_headers(&host, true), Flow::Pause);
            let token = host.last_call().unwrap().token;
            // Another request meanwhile: the lock is taken, it does not wait.
            let mut other = stream(&host, &assume_role());
            let busy = reply_of(other.on_request_headers(&host, true));
            assert!(String::from_utf8_lossy(&busy.body).contains("retry shortly"));
            // An unrelated callout answer changes nothing.
            assert_eq!(s.on_http_call_response(&host, token + 100, CallResponse::default()), Flow::Pause);
            let response = CallResponse { status, headers: Vec::new(), body: body.to_vec() };
            let reply = reply_of(s.on_http_call_response(&host, token, response));
            assert_eq!((reply.status, reply.details.as_str()), (503, "aws_credentials_unavailable"));
            assert!(String::from_utf8_lossy(&reply.body).contains(expected), "{:?}", reply.body);
            assert!(!String::from_utf8_lossy(&reply.body).contains("base-secret"));
            // The lock is released: the next request tries again.
            let mut again = stream(&host, &assume_role());
            assert_eq!(again.on_request_headers(&host, true), Flow::Pause);
        }
    }

    #[test]
    fn missing_credentials_and_host_failures() {
        let host = FakeHost::with_request(&[(":method", "GET"), (":path", "/"), (":authority", "gw")]);
        let config = r#"{"region": "us-east-1", "service": "s3", "credentials": {"source": "env"}}"#;
        // The test process has no AWS_ACCESS_KEY_ID unless a developer set one; only check when it is absent.
        if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
            let reply = reply_of(stream(&host, config).on_request_headers(&host, true));
            assert_eq!((reply.status, reply.details.as_str()), (503, "aws_credentials_unavailable"));
            assert!(String::from_utf8_lossy(&reply.body).contains("AWS_ACCESS_KEY_ID"));
        }
        host.fail("set_header", HostError::BadArgument);
        let reply = reply_of(stream(&host, &s3("")).on_request_headers(&host, true));
        assert_eq!((reply.status, reply.details.as_str()), (500, "aws_internal_error"));
    }

    #[test]
    fn the_tick_refreshes_credentials_ahead_of_expiry() {
        let host = FakeHost::default();
        host.unix.set(1_700_000_000_000_000_000);
        let filter = AwsFilter::configure(&host, assume_role().as_bytes(), None).unwrap();
        assert_eq!(host.tick_period.get(), Some(Duration::from_secs(1)));
        filter.on_tick(&host);
        let token = host.last_call().unwrap().token;
        filter.on_tick(&host);
        assert_eq!(host.http_calls.borrow().len(), 1, "one refresh at a time");
        filter.on_http_call_response(
            &host,
            token,
            CallResponse { status: Some(200), headers: Vec::new(), body: STS_OK.to_vec() },
        );
        filter.on_tick(&host);
        assert_eq!(host.http_calls.borrow().len(), 1, "fresh credentials: nothing to do");
        let (cache, _) = filter.cache.as_ref().unwrap();
        assert!(matches!(cache.lookup(&host, host.unix_secs()), Lookup::Valid { refresh: false, .. }));
    }
}
