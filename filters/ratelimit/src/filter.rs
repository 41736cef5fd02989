//! proxy-wasm glue: builds the engine at configure time, asks it about each request, applies the verdict
//! (local reply, global call, response headers), keeps the metrics, and removes idle buckets on a tick.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};
use shared::clock::{Clock, MonotonicClock};
use shared::host::{self, HostRequest};
use shared::metrics::{Counter, Gauge};
use shared::reply::{grpc, LocalReply};
use shared::request::is_grpc;
use shared::RequestHeaders;

use crate::config::{self, Config, OnError, FILTER};
use crate::engine::{Engine, Evaluation, RateHeaders, RuleEvents};
use crate::gcra::sweep;
use crate::key::RequestFacts;
use crate::rls;
use crate::store::{read_counter, reserve_create_cas, CasMismatch, SharedStore};

/// Envoy's shared data (namespaced by vm_id).
#[derive(Debug, Clone, Copy, Default)]
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => (value.filter(|v| !v.is_empty()), cas),
            Err(_) => (None, None),
        }
    }

    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> Result<(), CasMismatch> {
        match hostcalls::set_shared_data(key, value, Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(CasMismatch),
            Err(status) => {
                log::warn!("{FILTER}: shared data write refused: {status:?}");
                Err(CasMismatch)
            }
        }
    }
}

struct RuleMetrics {
    allowed: Counter,
    limited: Counter,
    shadow_limited: Counter,
    missing_key: Counter,
    cas_retries: Counter,
    global_errors: Counter,
}

impl RuleMetrics {
    fn define(rule: &str) -> Self {
        let c = |event| Counter::define(&[FILTER, rule, event]);
        RuleMetrics {
            allowed: c("allowed"),
            limited: c("limited"),
            shadow_limited: c("shadow_limited"),
            missing_key: c("missing_key"),
            cas_retries: c("cas_retries"),
            global_errors: c("global_errors"),
        }
    }
}

/// Everything a configuration needs per request, built once.
struct State {
    config: Config,
    engine: Engine<HostStore>,
    rules: Vec<RuleMetrics>,
    key_overflow: Counter,
    keys: Gauge,
    keys_counter: String,
    /// Buckets this VM created: checked on each tick and removed once idle.
    tracked: RefCell<Vec<String>>,
}

#[derive(Default)]
pub struct Root {
    state: Option<Rc<State>>,
    overflows_seen: u64,
    overflows_now: Rc<RefCell<u64>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::init_logging();
        // Before any bucket is written in this VM: CAS 1 must never belong to a bucket (see store.rs).
        reserve_create_cas(&HostStore, "ratelimit:");
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = host::configure(FILTER, self.get_plugin_configuration(), config::parse) else {
            return false;
        };
        // Shared data is per vm_id; the plugin name keeps two plugins in one VM from sharing buckets.
        let plugin = host::property(&["plugin_name"]).unwrap_or_else(|| FILTER.to_string());
        let prefix = format!("ratelimit:{plugin}:");
        let keys_counter = format!("{prefix}keys");
        let engine = match Engine::new(&config, &HostStore, &prefix, &keys_counter) {
            Ok(engine) => engine,
            Err(err) => {
                log::error!("{FILTER}: invalid configuration: {err}");
                return false;
            }
        };
        Gauge::define(&[FILTER, "rules"]).set(config.rules.len() as u64);
        let rules = config.rules.iter().map(|rule| RuleMetrics::define(&rule.name)).collect();
        self.set_tick_period(config.cleanup_interval.0);
        log::info!("{FILTER}: configuration applied ({} rules)", config.rules.len());
        self.state = Some(Rc::new(State {
            config,
            engine,
            rules,
            key_overflow: Counter::define(&[FILTER, "key_overflow"]),
            keys: Gauge::define(&[FILTER, "keys"]),
            keys_counter,
            tracked: RefCell::new(Vec::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = &self.state else { return };
        let now = MonotonicClock.now_nanos();
        let tracked = std::mem::take(&mut *state.tracked.borrow_mut());
        let live = sweep(&HostStore, &state.keys_counter, tracked, now);
        state.tracked.borrow_mut().extend(live);
        let keys = read_counter(&HostStore, &state.keys_counter);
        state.keys.set(keys);
        let overflows = *self.overflows_now.borrow();
        if overflows > self.overflows_seen {
            log::warn!(
                "{FILTER}: max_keys ({}) reached: {} new keys admitted without a bucket since the last tick",
                state.config.max_keys,
                overflows - self.overflows_seen
            );
            self.overflows_seen = overflows;
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { state: self.state.clone(), overflows: self.overflows_now.clone(), ..Stream::default() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The request as the key parts see it: headers on demand, the peer address from Envoy.
struct Facts;

impl RequestHeaders for Facts {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        HostRequest.header(name)
    }

    fn route_name(&self) -> Option<Cow<'_, str>> {
        HostRequest.route_name()
    }
}

impl RequestFacts for Facts {
    fn client_ip(&self) -> Option<Cow<'_, str>> {
        host::client_ip().map(Cow::Owned)
    }
}

#[derive(Default)]
struct Stream {
    state: Option<Rc<State>>,
    overflows: Rc<RefCell<u64>>,
    /// Rules whose descriptors went to the global service, in descriptor order.
    global_rules: Vec<usize>,
    response_headers: Vec<(String, String)>,
}

impl Stream {
    fn state(&self) -> Option<Rc<State>> {
        self.state.clone()
    }

    fn record(&self, state: &State, evaluation: &Evaluation) {
        for (index, events) in &evaluation.events {
            let Some(metrics) = state.rules.get(*index) else { continue };
            let deferred = evaluation.descriptors.iter().any(|d| d.rule == *index);
            count(metrics, events, deferred);
            if events.key_overflow {
                state.key_overflow.inc();
                *self.overflows.borrow_mut() += 1;
            }
        }
        state.tracked.borrow_mut().extend(evaluation.created_keys.iter().cloned());
    }

    fn reject(&self, state: &State, figures: Option<RateHeaders>, extra: &[(String, String)]) {
        let response = &state.config.response;
        let mut reply = LocalReply::error(FILTER, response.status, &response.body, request_is_grpc())
            .with_grpc_status(grpc::RESOURCE_EXHAUSTED);
        for (name, value) in figures.map(RateHeaders::to_pairs).unwrap_or_default() {
            reply = reply.with_header(name, &value);
        }
        for (name, value) in extra {
            reply = reply.with_header(name, value);
        }
        if let Err(err) = host::send_local_reply(&reply) {
            log::warn!("{FILTER}: {err}");
        }
    }

    /// The global service failed or timed out: `on_error` decides.
    fn global_failed(&mut self, state: &State, reason: &str) -> Action {
        for index in &self.global_rules {
            if let Some(metrics) = state.rules.get(*index) {
                metrics.global_errors.inc();
            }
        }
        let Some(global) = &state.config.global else { return Action::Continue };
        log::warn!("{FILTER}: rate-limit service {}: {reason}", global.cluster);
        match global.on_error {
            OnError::Allow => Action::Continue,
            OnError::Deny => {
                let message = format!("rate-limit service unavailable: {reason}");
                if let Err(err) = host::send_local_reply(&LocalReply::error(FILTER, 500, &message, request_is_grpc())) {
                    log::warn!("{FILTER}: {err}");
                }
                Action::Pause
            }
        }
    }

    fn global_answered(&mut self, state: &State, answer: rls::Answer) -> Action {
        let mut rejected = false;
        for (position, index) in self.global_rules.iter().enumerate() {
            let (Some(rule), Some(metrics)) = (state.config.rules.get(*index), state.rules.get(*index)) else {
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
        if rejected {
            self.reject(state, None, &answer.response_headers);
            return Action::Pause;
        }
        for (name, value) in &answer.request_headers {
            self.add_http_request_header(name, value);
        }
        self.response_headers.extend(answer.response_headers);
        Action::Continue
    }
}

/// Read only when replying: allowed requests do not pay for the header lookup.
fn request_is_grpc() -> bool {
    is_grpc(host::request_header("content-type").as_deref())
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

impl Context for Stream {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let Some(state) = self.state() else { return };
        let action = if status_code != 0 {
            self.global_failed(&state, &format!("gRPC status {status_code}"))
        } else {
            let body = self.get_grpc_call_response_body(0, response_size).unwrap_or_default();
            match rls::decode_response(&body) {
                Ok(answer) => self.global_answered(&state, answer),
                Err(err) => self.global_failed(&state, &err),
            }
        };
        if action == Action::Continue {
            self.resume_http_request();
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = self.state() else { return Action::Continue };
        let evaluation = state.engine.evaluate(&state.config, &Facts, MonotonicClock.now_nanos());
        self.record(&state, &evaluation);
        if let Some(figures) = evaluation.rejected {
            self.reject(&state, Some(figures), &[]);
            return Action::Pause;
        }
        if state.config.response.headers {
            if let Some(figures) = evaluation.headers {
                self.response_headers = figures.to_pairs().into_iter().map(|(n, v)| (n.to_string(), v)).collect();
            }
        }
        let Some(global) = &state.config.global else { return Action::Continue };
        if evaluation.descriptors.is_empty() {
            return Action::Continue;
        }
        self.global_rules = evaluation.descriptors.iter().map(|d| d.rule).collect();
        let descriptors: Vec<_> = evaluation.descriptors.into_iter().map(|d| d.entries).collect();
        let message = rls::encode_request(&global.domain, &descriptors);
        match self.dispatch_grpc_call(
            &global.cluster,
            rls::SERVICE,
            rls::METHOD,
            Vec::new(),
            Some(&message),
            global.timeout.0,
        ) {
            Ok(_token) => Action::Pause,
            Err(status) => {
                self.global_failed(&state, &format!("cannot call cluster {:?} ({status:?})", global.cluster))
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.add_http_response_header(&name, &value);
        }
        Action::Continue
    }
}
