//! proxy-wasm glue: reads what the logic needs from the host, calls the logic, applies the result. The only
//! module that talks to the host (through `shared::host` and a few `proxy_wasm::hostcalls`).
//!
//! What the host allows shapes this: Envoy turns a pause in `on_http_request_headers` into "stop all" (the body
//! is not delivered until the headers are released), and once released the headers can no longer be changed. So:
//! - requests without a body, and any request with `payload: "unsigned"`, are signed in place while their
//!   headers are held, and stream on to their upstream (the upstream placement signs exactly what is sent);
//! - requests whose body must be hashed (`payload: "signed"`) and Lambda invocations release their headers, the
//!   body is buffered (bounded) here, and the filter sends the signed request (or the Invoke call) itself with
//!   `dispatch_http_call` to `cluster`; the answer becomes the client's response (a local reply). A buffer filter
//!   after this one holds the original request meanwhile (Envoy's `envoy.filters.http.buffer`);
//! - temporary credentials (STS, web identity, ECS endpoint) live in shared data; a worker that finds none takes
//!   the refresh lock and fetches them while its request waits; the root context refreshes ahead of expiry.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use shared::host;
use shared::metrics::{Counter, Gauge};
use shared::request::is_grpc;
use shared::LocalReply;

use crate::config::{self, Config, CredentialSource, Lambda, Payload, Sts, StsKind, FILTER};
use crate::credentials::{self, Cache, Lookup, SharedStore};
use crate::lambda::{self, ClientRequest, Outcome};
use crate::signing;
use crate::sigv4::Credentials;

/// Counters, defined once per configuration in the root context.
#[derive(Debug, Clone, Copy)]
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

/// What every stream of one configuration shares.
struct Shared {
    config: Config,
    metrics: Metrics,
    /// Environment credentials, read once per configuration (the VM's environment does not change).
    env: Result<Credentials, String>,
    /// The shared-data cache of temporary credentials, when the source is STS.
    cache: Option<(Cache, Sts)>,
    /// Random per VM: marks the requests this filter sends itself.
    nonce: String,
}

impl Shared {
    fn base_credentials(&self, source: &CredentialSource) -> Result<Credentials, String> {
        match source {
            CredentialSource::Env => self.env.clone(),
            CredentialSource::Inline(c) => Ok(c.clone()),
            CredentialSource::Sts(_) => Err("nested STS credential sources are not supported".to_string()),
        }
    }

    /// Starts an STS call from the current context when this worker gets the refresh lock. `Ok(None)`: another
    /// worker is already fetching.
    fn start_sts_fetch(&self, now: u64) -> Result<Option<u32>, String> {
        let Some((cache, sts)) = &self.cache else { return Err("no STS configuration".to_string()) };
        if !cache.try_lock(&HostStore, now) {
            return Ok(None);
        }
        let request = match &sts.kind {
            StsKind::AssumeRole { base, .. } => self
                .base_credentials(base)
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
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                cache.unlock(&HostStore);
                return Err(e);
            }
        };
        let headers: Vec<(&str, &str)> = request.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let timeout = Duration::from_millis(u64::from(sts.timeout_ms));
        let body = if request.body.is_empty() { None } else { Some(request.body.as_slice()) };
        match hostcalls::dispatch_http_call(&sts.cluster, headers, body, Vec::new(), timeout) {
            Ok(token) => Ok(Some(token)),
            Err(status) => {
                cache.unlock(&HostStore);
                Err(format!("cannot call STS through cluster {:?} ({status:?})", sts.cluster))
            }
        }
    }

    /// Handles STS's answer to a call this context made: caches the credentials and releases the lock.
    fn finish_sts_fetch(&self, body_size: usize) -> Result<Credentials, String> {
        let Some((cache, sts)) = &self.cache else { return Err("no STS configuration".to_string()) };
        let (status, _, body) = call_response(body_size);
        let result = match (status, &sts.kind) {
            (None, StsKind::Ecs { .. }) => Err("container-credentials endpoint unreachable".to_string()),
            (None, _) => Err("STS unreachable (no answer from its cluster)".to_string()),
            (Some(status), StsKind::Ecs { .. }) => credentials::parse_ecs_response(status, &body),
            (Some(status), _) => credentials::parse_sts_response(status, &body),
        };
        let result = result.map(|temporary| {
            cache.store(&HostStore, &temporary);
            temporary.credentials()
        });
        cache.unlock(&HostStore);
        match &result {
            Ok(_) => {
                self.metrics.sts_refreshed.inc();
                log::info!("{FILTER}: temporary credentials refreshed from STS");
            }
            Err(e) => {
                self.metrics.sts_failed.inc();
                log::warn!("{FILTER}: {e}");
            }
        }
        result
    }
}

#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
    rules: Option<Gauge>,
    metrics: Option<Metrics>,
    refresh_call: Option<u32>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if self.refresh_call == Some(token_id) {
            self.refresh_call = None;
            if let Some(shared) = &self.shared {
                let _ = shared.finish_sts_fetch(body_size);
            }
        }
    }
}

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
        let metrics = *self.metrics.get_or_insert_with(Metrics::define);
        let env = credentials::from_env(|name| std::env::var(name).ok());
        let cache = match &config.credentials {
            CredentialSource::Sts(sts) => {
                let cache = Cache::new(&credentials::cache_key(sts, &config.region));
                cache.init(&HostStore);
                Some((cache, sts.clone()))
            }
            _ => None,
        };
        if cache.is_some() {
            let _ = hostcalls::set_tick_period(Duration::from_secs(1));
        }
        let source = match &config.credentials {
            CredentialSource::Env if env.is_ok() => "environment",
            CredentialSource::Env => "environment (not set yet)",
            CredentialSource::Inline(_) => "inline",
            CredentialSource::Sts(Sts { kind: StsKind::AssumeRole { .. }, .. }) => "STS AssumeRole",
            CredentialSource::Sts(Sts { kind: StsKind::WebIdentity { .. }, .. }) => "STS AssumeRoleWithWebIdentity",
            CredentialSource::Sts(_) => "the ECS container-credentials endpoint",
        };
        log::info!("{FILTER}: configuration applied ({rules} rules, credentials from {source})");
        let nonce = self.shared.as_ref().map(|s| s.nonce.clone()).unwrap_or_else(random_nonce);
        self.shared = Some(Rc::new(Shared { config, metrics, env, cache, nonce }));
        true
    }

    /// Refreshes temporary credentials ahead of expiry (one worker at a time, through the shared lock).
    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        let Some((cache, _)) = &shared.cache else { return };
        if self.refresh_call.is_some() {
            return;
        }
        let now = unix_now();
        let due = match cache.lookup(&HostStore, now) {
            Lookup::Valid { refresh, .. } => refresh,
            Lookup::Missing => true,
        };
        if due {
            match shared.start_sts_fetch(now) {
                Ok(token) => self.refresh_call = token,
                Err(e) => log::warn!("{FILTER}: credential refresh not started: {e}"),
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            shared: self.shared.clone(),
            lambda: None,
            mode: Mode::Done,
            headers: Vec::new(),
            body: None,
            is_grpc: false,
            paused: false,
            waiting: Waiting::Nothing,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Sts(u32),
    Call(u32),
}

/// How a request is handled, decided when its headers arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not ours (our own side call coming back through the cluster's filters) or already handled.
    Done,
    /// Signed in place while the headers are held (no body, or `UNSIGNED-PAYLOAD`).
    InPlace,
    /// The body is needed first: buffered, then the request is sent (signed, or as a Lambda invocation) with
    /// `dispatch_http_call` and the answer becomes a local reply.
    SideCall,
}

/// One HTTP request.
struct Stream {
    shared: Option<Rc<Shared>>,
    lambda: Option<Lambda>,
    mode: Mode,
    /// The client's request headers, as read when they arrived (the host gives no access to them later).
    headers: Vec<(String, String)>,
    /// The buffered body, once complete.
    body: Option<Vec<u8>>,
    is_grpc: bool,
    /// The request is held at its headers and must be resumed from a callback.
    paused: bool,
    waiting: Waiting,
}

impl Stream {
    fn reply_error(&mut self, status: u32, message: &str) {
        self.mode = Mode::Done;
        let reply = LocalReply::error(FILTER, status, message, self.is_grpc);
        if let Err(e) = host::send_local_reply(&reply) {
            log::warn!("{FILTER}: {e}");
        }
    }

    /// Credentials for this request, or the STS call this request now waits for (`Ok(None)`), or a 503 sent.
    fn credentials(&mut self, shared: &Shared) -> Result<Option<Credentials>, ()> {
        let result = match &shared.config.credentials {
            CredentialSource::Env => shared.env.clone().map(Some),
            CredentialSource::Inline(c) => Ok(Some(c.clone())),
            CredentialSource::Sts(_) => match shared.cache.as_ref().map(|(c, _)| c.lookup(&HostStore, unix_now())) {
                Some(Lookup::Valid { credentials, .. }) => Ok(Some(credentials)),
                _ => match shared.start_sts_fetch(unix_now()) {
                    Ok(Some(token)) => {
                        self.waiting = Waiting::Sts(token);
                        Ok(None)
                    }
                    Ok(None) => Err("temporary AWS credentials are being fetched from STS; retry shortly".to_string()),
                    Err(e) => Err(format!("no AWS credentials: {e}")),
                },
            },
        };
        result.map_err(|message| {
            shared.metrics.credentials_unavailable.inc();
            log::warn!("{FILTER}: {message}");
            self.reply_error(503, &message);
        })
    }

    /// Signs in place or sends the side call, once the credentials (and for a side call the body) are there.
    /// `true`: the request may continue (in-place signing done).
    fn proceed(&mut self) -> bool {
        let Some(shared) = self.shared.clone() else { return true };
        let credentials = match self.credentials(&shared) {
            Ok(Some(c)) => c,
            Ok(None) | Err(()) => return false,
        };
        match (self.mode, self.lambda.clone()) {
            (Mode::InPlace, _) => self.sign_in_place(&shared, &credentials),
            (Mode::SideCall, Some(lambda)) => {
                self.invoke(&shared, &lambda, &credentials);
                false
            }
            (Mode::SideCall, None) => {
                self.forward_signed(&shared, &credentials);
                false
            }
            (Mode::Done, _) => true,
        }
    }

    fn sign_in_place(&mut self, shared: &Shared, credentials: &Credentials) -> bool {
        let hash = match (shared.config.payload, self.body.is_some()) {
            (Payload::Signed, true) => signing::payload_hash(&shared.config, Some(&[])),
            _ => crate::sigv4::UNSIGNED_PAYLOAD.to_string(),
        };
        match signing::sign(&self.headers, &shared.config, credentials, unix_now(), &hash) {
            Ok(changes) => {
                for name in &changes.remove {
                    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
                }
                for (name, value) in &changes.set {
                    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value.as_bytes()));
                }
                shared.metrics.signed.inc();
                self.mode = Mode::Done;
                true
            }
            Err(e) => {
                self.reply_error(400, &e);
                false
            }
        }
    }

    /// Generic mode with a signed body: the request as the client sent it, signed, sent from here.
    fn forward_signed(&mut self, shared: &Shared, credentials: &Credentials) {
        let body = self.body.take().unwrap_or_default();
        let hash = crate::sigv4::sha256_hex(&body);
        let changes = match signing::sign(&self.headers, &shared.config, credentials, unix_now(), &hash) {
            Ok(c) => c,
            Err(e) => return self.reply_error(400, &e),
        };
        let mut headers: Vec<(String, String)> =
            self.headers.iter().filter(|(n, _)| !changes.remove.contains(n) && !is_hop_by_hop(n)).cloned().collect();
        for (name, value) in changes.set {
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }
        shared.metrics.signed.inc();
        let cluster = shared.config.cluster.clone().or_else(|| host::property(&["xds", "cluster_name"]));
        self.dispatch(shared, cluster, headers, &body, shared.config.timeout_ms);
    }

    fn invoke(&mut self, shared: &Shared, lambda: &Lambda, credentials: &Credentials) {
        let header = |name: &str| self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let method = header(":method").unwrap_or_else(|| "GET".to_string());
        let path = header(":path").unwrap_or_else(|| "/".to_string());
        let mut client_headers: Vec<(String, String)> = Vec::new();
        if let Some(authority) = header(":authority") {
            client_headers.push(("host".to_string(), authority));
        }
        client_headers.extend(self.headers.iter().filter(|(n, _)| !n.starts_with(':') && n != "host").cloned());
        let body = self.body.take().unwrap_or_default();
        let request = ClientRequest { method: &method, path: &path, headers: &client_headers, body: &body };
        let payload = lambda::payload(lambda.format, &request);

        let host =
            shared.config.host.clone().unwrap_or_else(|| format!("lambda.{}.amazonaws.com", shared.config.region));
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), lambda::invoke_path(&lambda.function, lambda.qualifier.as_deref())),
            (":authority".to_string(), host),
            ("content-type".to_string(), "application/json".to_string()),
            ("x-amz-invocation-type".to_string(), lambda::invocation_type(lambda.invocation).to_string()),
        ];
        let hash = crate::sigv4::sha256_hex(&payload);
        let changes = match signing::sign(&headers, &shared.config, credentials, unix_now(), &hash) {
            Ok(c) => c,
            Err(e) => return self.reply_error(500, &e),
        };
        for (name, value) in changes.set {
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }
        let cluster = lambda
            .cluster
            .clone()
            .or_else(|| shared.config.cluster.clone())
            .or_else(|| host::property(&["xds", "cluster_name"]));
        self.dispatch(shared, cluster, headers, &payload, lambda.timeout_ms);
    }

    fn dispatch(
        &mut self,
        shared: &Shared,
        cluster: Option<String>,
        mut headers: Vec<(String, String)>,
        body: &[u8],
        timeout_ms: u32,
    ) {
        let Some(cluster) = cluster else {
            return self.reply_error(500, "no cluster to send the request to: set `cluster`");
        };
        headers.push(("content-length".to_string(), body.len().to_string()));
        // Marks our own call so that this filter, if it also runs on that cluster, lets it pass (never signed:
        // x-envoy-* headers are not).
        headers.push((INTERNAL_HEADER.to_string(), shared.nonce.clone()));
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        match hostcalls::dispatch_http_call(&cluster, pairs, Some(body), Vec::new(), timeout) {
            Ok(token) => self.waiting = Waiting::Call(token),
            Err(status) => {
                shared.metrics.upstream_failed.inc();
                self.reply_error(502, &format!("cannot send the request to cluster {cluster:?} ({status:?})"));
            }
        }
    }

    fn call_answered(&mut self, shared: &Shared, body_size: usize) {
        self.mode = Mode::Done;
        let (status, headers, body) = call_response(body_size);
        let reply = match &self.lambda {
            Some(lambda) => {
                let outcome = match status {
                    None => Outcome::BadGateway("Lambda unreachable (no answer from its cluster)".to_string()),
                    Some(status) => lambda::outcome(lambda, status, &headers, &body),
                };
                match outcome {
                    Outcome::Reply { status, headers, body } => {
                        shared.metrics.lambda_invoked.inc();
                        LocalReply { status, headers, body, grpc_status: None }
                    }
                    Outcome::BadGateway(message) => {
                        if message.starts_with("Lambda function error") {
                            shared.metrics.lambda_function_errors.inc();
                        } else {
                            shared.metrics.upstream_failed.inc();
                        }
                        log::warn!("{FILTER}: {message}");
                        LocalReply::error(FILTER, 502, &message, self.is_grpc)
                    }
                }
            }
            None => match status {
                Some(status) => {
                    let headers =
                        headers.into_iter().filter(|(n, _)| !n.starts_with(':') && !is_hop_by_hop(n)).collect();
                    LocalReply { status, headers, body, grpc_status: None }
                }
                None => {
                    shared.metrics.upstream_failed.inc();
                    LocalReply::error(FILTER, 503, "upstream unreachable (no answer from its cluster)", self.is_grpc)
                }
            },
        };
        if let Err(e) = host::send_local_reply(&reply) {
            log::warn!("{FILTER}: {e}");
        }
    }
}

/// Headers that belong to one connection or that the host sets itself.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "proxy-connection" | "te" | "upgrade"
    )
}

/// Marks requests this filter sends itself (value: a per-VM random nonce).
const INTERNAL_HEADER: &str = "x-envoy-aws-filter-call";

impl Context for Stream {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        let Some(shared) = self.shared.clone() else { return };
        match self.waiting {
            Waiting::Sts(token) if token == token_id => {
                self.waiting = Waiting::Nothing;
                if let Err(e) = shared.finish_sts_fetch(body_size) {
                    shared.metrics.credentials_unavailable.inc();
                    self.reply_error(503, &format!("no AWS credentials: {e}"));
                    return;
                }
                if self.proceed() && self.paused {
                    self.paused = false;
                    let _ = hostcalls::resume_http_request();
                }
            }
            Waiting::Call(token) if token == token_id => {
                self.waiting = Waiting::Nothing;
                self.call_answered(&shared, body_size);
            }
            _ => {}
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        self.headers = host::request_headers();
        if let Some((_, nonce)) = self.headers.iter().find(|(n, _)| n == INTERNAL_HEADER) {
            // Our own side call passing through the cluster's filters: already signed.
            if *nonce == shared.nonce {
                let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, INTERNAL_HEADER, None);
                self.mode = Mode::Done;
                return Action::Continue;
            }
        }
        self.is_grpc = is_grpc(self.headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.as_str()));
        self.lambda = shared.config.lambda_for(&self.headers).cloned();
        let body_needed = self.lambda.is_some() || shared.config.payload == Payload::Signed;
        self.mode = if body_needed && !end_of_stream { Mode::SideCall } else { Mode::InPlace };
        if self.lambda.is_some() && end_of_stream {
            self.mode = Mode::SideCall;
        }
        if end_of_stream {
            self.body = Some(Vec::new());
        }
        if self.mode == Mode::SideCall && self.body.is_none() {
            let limit = shared::body::BodyLimit::new(shared.config.max_body);
            let declared = self.headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.as_str());
            if limit.declared_too_large(declared) {
                shared.metrics.body_too_large.inc();
                self.reply_error(413, &limit.too_large_message());
                return Action::Pause;
            }
            // The host delivers the body only once the headers are released (it turns a pause here into
            // "stop all"); a buffer filter after this one, or the local reply, keeps them from the upstream.
            return Action::Continue;
        }
        if self.proceed() {
            Action::Continue
        } else {
            self.paused = true;
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        match self.mode {
            Mode::Done | Mode::InPlace => return Action::Continue,
            Mode::SideCall if self.body.is_some() || self.waiting != Waiting::Nothing => return Action::Pause,
            Mode::SideCall => {}
        }
        let limit = shared::body::BodyLimit::new(shared.config.max_body);
        match limit.progress(body_size, end_of_stream) {
            shared::body::BodyProgress::Buffering => Action::Pause,
            shared::body::BodyProgress::TooLarge => {
                shared.metrics.body_too_large.inc();
                self.reply_error(413, &limit.too_large_message());
                Action::Pause
            }
            shared::body::BodyProgress::Complete => {
                let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                    Ok(Some(bytes)) => bytes,
                    _ => Vec::new(),
                };
                self.body = Some(body);
                self.proceed();
                Action::Pause
            }
        }
    }
}

/// The answer to a `dispatch_http_call`: status (`None` when the call failed without one), headers, body.
fn call_response(body_size: usize) -> (Option<u32>, Vec<(String, String)>, Vec<u8>) {
    let headers: Vec<(String, String)> = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
        .map(|pairs| pairs.into_iter().map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned())).collect())
        .unwrap_or_default();
    let status = headers.iter().find(|(n, _)| n == ":status").and_then(|(_, v)| v.parse().ok());
    let body = match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
        Ok(Some(bytes)) => bytes,
        _ => Vec::new(),
    };
    (status, headers, body)
}

/// 64 random bits (std's hasher keys come from WASI's random source) as hex.
fn random_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_now());
    format!("{:016x}", hasher.finish())
}

/// Wall-clock time (WASI realtime clock in the VM), Unix seconds.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Proxy-wasm shared data (namespaced by `vm_id`) as the credential cache's store.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}
