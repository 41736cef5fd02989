//! One request's journey through the filter, driven through the shared [`Host`] trait: the engine decides on the
//! request headers (local reply, or a call to the global service and a pause), the service's answer resumes or
//! rejects, and the `x-ratelimit-*` figures go on the response. [`RatelimitFilter`] holds what a configuration
//! builds once (engine, metrics) and reports the slot table and overflows on a tick.

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;

use shared::host::{Filter, GrpcCall, GrpcResponse, RequestView, Stream};
use shared::metrics::{Counter, Gauge, Scope};
use shared::reply::{grpc, LocalReply};
use shared::request::is_grpc;
use shared::store::{reserve_create_cas, SharedStore};
use shared::{Flow, Host, HostError, RequestHeaders, Side};

use crate::config::{self, Config, OnError, FILTER};
use crate::engine::{Engine, Evaluation, RateHeaders, RuleEvents};
use crate::gcra::SlotTable;
use crate::key::RequestFacts;
use crate::rls;
use crate::store::read_counter;

/// Response-code details of the filter's local replies (`%RESPONSE_CODE_DETAILS%`).
pub mod details {
    /// A limit (local or global) rejected the request.
    pub const LIMITED: &str = "ratelimit_limited";
    /// The request lacks a key part and `on_missing_key` is `deny`.
    pub const MISSING_KEY: &str = "ratelimit_missing_key";
    /// The rate-limit service failed or timed out and `global.on_error` is `deny`.
    pub const SERVICE_ERROR: &str = "ratelimit_service_error";
    /// A global rule's `hits_addend` header is not a number from 0 to 1000000000.
    pub const BAD_REQUEST: &str = "ratelimit_bad_request";
}

struct RuleMetrics {
    allowed: Counter,
    limited: Counter,
    shadow_limited: Counter,
    missing_key: Counter,
    cas_retries: Counter,
    global_errors: Counter,
    store_errors: Counter,
}

impl RuleMetrics {
    fn define(scope: &Scope, rule: &str) -> Self {
        let c = |event| scope.rule_counter(rule, event);
        RuleMetrics {
            allowed: c("allowed"),
            limited: c("limited"),
            shadow_limited: c("shadow_limited"),
            missing_key: c("missing_key"),
            cas_retries: c("cas_retries"),
            global_errors: c("global_errors"),
            store_errors: c("store_errors"),
        }
    }
}

/// Problems counted by the streams and logged once per tick (not once per request: a full key table or a
/// failing store would flood the log).
#[derive(Default)]
struct Pending {
    overflows: Cell<u64>,
    store_errors: Cell<u64>,
    last_store_error: Cell<Option<HostError>>,
}

/// One configuration of the filter in one worker VM: everything a request needs, built once.
pub struct RatelimitFilter {
    config: Config,
    engine: Engine,
    rules: Vec<RuleMetrics>,
    key_overflow: Counter,
    /// Slots of the table written at least once: the shared-data entries the buckets hold (at most `max_keys`).
    slots: Gauge,
    slots_counter: String,
    pending: Pending,
}

impl Filter for RatelimitFilter {
    const NAME: &'static str = FILTER;
    type Stream = RatelimitStream;

    fn configure(host: &dyn Host, bytes: &[u8], _previous: Option<&Self>) -> Result<Self, String> {
        let config = config::parse(bytes).map_err(|err| err.to_string())?;
        // Before any bucket is written in this VM: CAS 1 must never belong to a bucket (see shared::store).
        reserve_create_cas(host, "ratelimit:")
            .map_err(|err| format!("shared data unavailable (reserving the creation CAS): {err}"))?;
        // Shared data is per vm_id; the plugin name keeps two plugins in one VM from sharing buckets.
        let plugin = match host.property_text(&["plugin_name"]) {
            Ok(Some(name)) => name,
            Ok(None) => FILTER.to_string(),
            Err(err) => {
                log::warn!("{FILTER}: plugin_name unavailable ({err}): buckets are named after {FILTER:?}");
                FILTER.to_string()
            }
        };
        let prefix = format!("ratelimit:{plugin}:");
        let engine = Engine::new(&config, &prefix)?;
        let slots_counter = SlotTable::new(&prefix, config.max_keys).used_counter().to_string();
        let metrics = Scope::new(FILTER, &plugin);
        metrics.gauge("rules").set(config.rules.len() as u64);
        metrics.gauge("max_slots").set(u64::from(config.max_keys));
        let rules = config.rules.iter().map(|rule| RuleMetrics::define(&metrics, &rule.name)).collect();
        if let Err(err) = host.set_tick_period(config.cleanup_interval.0) {
            log::warn!("{FILTER}: cannot set the tick period ({err}): the slots gauge and overflow logs stop");
        }
        log::info!("{FILTER}: configuration applied ({} rules)", config.rules.len());
        Ok(RatelimitFilter {
            config,
            engine,
            rules,
            key_overflow: metrics.counter("key_overflow"),
            slots: metrics.gauge("slots"),
            slots_counter,
            pending: Pending::default(),
        })
    }

    fn on_tick(&self, host: &dyn Host) {
        // Nothing to sweep: idle buckets free their slots by themselves (see gcra::SlotTable).
        match read_counter(host, &self.slots_counter) {
            Ok(slots) => self.slots.set(slots),
            Err(err) => log::warn!("{FILTER}: cannot read the slot count: shared data failed ({err})"),
        }
        let overflows = self.pending.overflows.replace(0);
        if overflows > 0 {
            log::warn!(
                "{FILTER}: bucket table full (max_keys {}): {overflows} requests of new keys admitted without a bucket \
                 since the last tick",
                self.config.max_keys
            );
        }
        let store_errors = self.pending.store_errors.replace(0);
        if let Some(err) = self.pending.last_store_error.take().filter(|_| store_errors > 0) {
            log::warn!(
                "{FILTER}: shared data failed for {store_errors} decisions since the last tick (last: {err}): those \
                 requests were admitted without a limit"
            );
        }
    }

    fn stream(filter: Rc<Self>) -> RatelimitStream {
        RatelimitStream { filter, global_rules: Vec::new(), call: None, response_headers: Vec::new() }
    }
}

impl RatelimitFilter {
    /// Counts what the evaluation found.
    fn record(&self, evaluation: &Evaluation) {
        for (index, events) in &evaluation.events {
            let Some(metrics) = self.rules.get(*index) else { continue };
            let deferred = evaluation.descriptors.iter().any(|d| d.rule == *index);
            count(metrics, events, deferred);
            if events.key_overflow {
                self.key_overflow.inc();
                self.pending.overflows.set(self.pending.overflows.get().saturating_add(1));
            }
            if let Some(err) = events.store_error {
                metrics.store_errors.inc();
                self.pending.store_errors.set(self.pending.store_errors.get().saturating_add(1));
                self.pending.last_store_error.set(Some(err));
            }
        }
    }

    /// The reply to a rejected request: the configured status and body, the figures and extra headers.
    fn rejection(
        &self,
        grpc_request: bool,
        figures: Option<RateHeaders>,
        extra: &[(String, String)],
        details: &str,
    ) -> LocalReply {
        let response = &self.config.response;
        let mut reply = LocalReply::error(FILTER, response.status, &response.body, grpc_request)
            .with_grpc_status(grpc::RESOURCE_EXHAUSTED)
            .with_details(details);
        for (name, value) in figures.map(RateHeaders::to_pairs).unwrap_or_default() {
            reply = reply.with_header(name, &value);
        }
        for (name, value) in extra {
            reply = reply.with_header(name, value);
        }
        reply
    }
}

fn count(metrics: &RuleMetrics, events: &RuleEvents, deferred_to_global: bool) {
    if events.allowed && !deferred_to_global {
        metrics.allowed.inc();
    }
    if events.limited {
        metrics.limited.inc();
    }
    if events.shadow_limited {
        metrics.shadow_limited.inc();
    }
    if events.missing_key {
        metrics.missing_key.inc();
    }
    if events.cas_retries > 0 {
        metrics.cas_retries.add(u64::from(events.cas_retries));
    }
}

/// Whether the request is gRPC (its replies are then gRPC statuses). Read only when replying: allowed requests
/// do not pay for the lookup.
fn request_is_grpc(host: &dyn Host) -> bool {
    match host.header_text(Side::Request, "content-type") {
        Ok(content_type) => is_grpc(content_type.as_deref()),
        Err(err) => {
            log::warn!("{FILTER}: request content-type unavailable ({err}): replying as to an HTTP client");
            false
        }
    }
}

/// The request as the key parts see it: the headers read once, the peer address from Envoy.
struct Facts<'a> {
    view: &'a RequestView<'a>,
    host: &'a dyn Host,
}

impl RequestHeaders for Facts<'_> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.view.header(name)
    }

    fn route_name(&self) -> Option<Cow<'_, str>> {
        self.view.route_name()
    }
}

impl RequestFacts for Facts<'_> {
    fn client_ip(&self) -> Option<Cow<'_, str>> {
        match self.host.client_ip() {
            Ok(ip) => ip.map(Cow::Owned),
            Err(err) => {
                log::warn!("{FILTER}: client address unavailable: {err}");
                None
            }
        }
    }
}

/// One request.
pub struct RatelimitStream {
    filter: Rc<RatelimitFilter>,
    /// Rules whose descriptors went to the global service, in descriptor order.
    global_rules: Vec<usize>,
    /// The token of the call to the global service, while it is pending.
    call: Option<u32>,
    /// Headers for the response: the `x-ratelimit-*` figures and what the global service asked for.
    response_headers: Vec<(String, String)>,
}

impl RatelimitStream {
    /// The global service failed, timed out or could not be called: `on_error` decides.
    fn global_failed(&self, host: &dyn Host, reason: &str) -> Flow {
        let filter = &self.filter;
        for index in &self.global_rules {
            if let Some(metrics) = filter.rules.get(*index) {
                metrics.global_errors.inc();
            }
        }
        let Some(global) = &filter.config.global else { return Flow::Continue };
        log::warn!("{FILTER}: rate-limit service {}: {reason}", global.cluster);
        match global.on_error {
            OnError::Allow => Flow::Continue,
            OnError::Deny => {
                let message = format!("rate-limit service unavailable: {reason}");
                let reply = LocalReply::error(FILTER, 500, &message, request_is_grpc(host));
                Flow::Reply(reply.with_details(details::SERVICE_ERROR))
            }
        }
    }

    fn global_answered(&mut self, host: &dyn Host, answer: rls::Answer) -> Flow {
        let filter = Rc::clone(&self.filter);
        let mut rejected = false;
        for (position, index) in self.global_rules.iter().enumerate() {
            let (Some(rule), Some(metrics)) = (filter.config.rules.get(*index), filter.rules.get(*index)) else {
                continue;
            };
            // A service that gives no per-descriptor statuses speaks for all descriptors with its overall code.
            let over = answer.over_limit.get(position).copied().unwrap_or(answer.overall_over_limit);
            match (over, rule.shadow) {
                (false, _) => metrics.allowed.inc(),
                (true, true) => metrics.shadow_limited.inc(),
                (true, false) => {
                    metrics.limited.inc();
                    rejected = true;
                }
            }
        }
        let figures: Vec<(String, String)> = answer
            .figures
            .as_ref()
            .map(|f| f.to_pairs().into_iter().map(|(n, v)| (n.to_string(), v)).collect())
            .unwrap_or_default();
        if rejected {
            let grpc = request_is_grpc(host);
            let mut headers = figures;
            if let Some(f) = &answer.figures {
                headers.push(("retry-after".to_string(), f.reset_secs.max(1).to_string()));
            }
            headers.extend(answer.response_headers);
            return Flow::Reply(filter.rejection(grpc, None, &headers, details::LIMITED));
        }
        // The most restrictive figures go on the response: the service's unless a local limit has fewer left.
        if filter.config.response.headers && !figures.is_empty() {
            let remaining = |headers: &[(String, String)]| {
                headers.iter().find(|(n, _)| n == "x-ratelimit-remaining").and_then(|(_, v)| v.parse::<u32>().ok())
            };
            if remaining(&self.response_headers).is_none_or(|local| remaining(&figures).is_some_and(|g| g <= local)) {
                self.response_headers.retain(|(name, _)| !name.starts_with("x-ratelimit-"));
                self.response_headers.extend(figures);
            }
        }
        for (name, value) in &answer.request_headers {
            if let Err(err) = host.add_header(Side::Request, name, value.as_bytes()) {
                log::warn!("{FILTER}: cannot add request header {name:?} from the rate-limit service: {err}");
            }
        }
        self.response_headers.extend(answer.response_headers);
        Flow::Continue
    }
}

impl Stream for RatelimitStream {
    fn on_request_headers(&mut self, host: &dyn Host, _end_of_stream: bool) -> Flow {
        let filter = Rc::clone(&self.filter);
        // A rule reads a few known headers: one by one where that is cheaper than the whole map.
        let view = RequestView::by_name(host);
        let facts = Facts { view: &view, host };
        let store: &dyn SharedStore = host;
        let evaluation = filter.engine.evaluate(store, &filter.config, &facts, host.monotonic_nanos());
        filter.record(&evaluation);
        if let Some(figures) = evaluation.rejected {
            // A rejection for a missing key part (on_missing_key: deny) says so in the access log.
            let missing = evaluation.events.iter().any(|(_, e)| e.limited && e.missing_key);
            let reason = if missing { details::MISSING_KEY } else { details::LIMITED };
            let grpc = is_grpc(view.header("content-type").as_deref());
            return Flow::Reply(filter.rejection(grpc, Some(figures), &[], reason));
        }
        if let Some(reason) = &evaluation.bad_request {
            log::debug!("{FILTER}: {reason}");
            let reply = LocalReply::error(FILTER, 400, reason, is_grpc(view.header("content-type").as_deref()));
            return Flow::Reply(reply.with_details(details::BAD_REQUEST));
        }
        if filter.config.response.headers {
            if let Some(figures) = evaluation.headers {
                self.response_headers = figures.to_pairs().into_iter().map(|(n, v)| (n.to_string(), v)).collect();
            }
        }
        let Some(global) = &filter.config.global else { return Flow::Continue };
        if evaluation.descriptors.is_empty() {
            return Flow::Continue;
        }
        self.global_rules = evaluation.descriptors.iter().map(|d| d.rule).collect();
        let descriptors: Vec<_> = evaluation
            .descriptors
            .into_iter()
            .map(|d| rls::Descriptor { entries: d.entries, hits_addend: d.hits_addend })
            .collect();
        let message = rls::encode_request(&global.domain, &descriptors);
        let call = GrpcCall {
            cluster: &global.cluster,
            service: rls::SERVICE,
            method: rls::METHOD,
            message: &message,
            timeout: global.timeout.0,
        };
        match host.grpc_call(&call) {
            Ok(token) => {
                log::debug!("{FILTER}: asked the rate-limit service (call {token})");
                self.call = Some(token);
                Flow::Pause
            }
            Err(err) => self.global_failed(host, &format!("cannot call cluster {:?}: {err}", global.cluster)),
        }
    }

    fn on_response_headers(&mut self, host: &dyn Host, _end_of_stream: bool) -> Flow {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            if let Err(err) = host.add_header(Side::Response, &name, value.as_bytes()) {
                log::warn!("{FILTER}: cannot add response header {name:?}: {err}");
            }
        }
        Flow::Continue
    }

    fn on_grpc_call_response(&mut self, host: &dyn Host, token: u32, response: GrpcResponse) -> Flow {
        if self.call != Some(token) {
            log::warn!("{FILTER}: answer to an unknown gRPC call ({token}) ignored");
            return Flow::Pause;
        }
        self.call = None;
        if response.status != 0 {
            return self.global_failed(host, &format!("gRPC status {}", response.status));
        }
        match rls::decode_response(&response.message) {
            Ok(answer) => self.global_answered(host, answer),
            Err(err) => self.global_failed(host, &err),
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
