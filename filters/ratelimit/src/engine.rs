//! Applies the configured rules to one request: which rules match, their keys, the local decisions, and what
//! to ask the global service. Pure: the filter supplies the request, the time and the shared store (per call:
//! the host is lent to each callback).

use std::time::Duration;

use crate::config::{Config, HitsAddend, KeySpec, Limit, OnMissingKey, Rule, MAX_HITS_ADDEND};
use crate::gcra::{Limiter, SlotTable, Verdict};
use crate::key::{bucket_hash, key_values, RequestFacts};
use shared::store::SharedStore;
use shared::HostError;

/// What happened to one rule for one request (becomes that rule's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleEvents {
    pub allowed: bool,
    pub limited: bool,
    pub shadow_limited: bool,
    pub missing_key: bool,
    pub cas_retries: u32,
    /// A new key found every slot it may use held by other keys' live buckets: admitted without a bucket.
    pub key_overflow: bool,
    /// Shared data failed for one of the rule's limits: admitted without a decision (fail open).
    pub store_error: Option<HostError>,
}

/// The `x-ratelimit-*` figures of the most restrictive limit that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
    /// Set when the request is rejected.
    pub retry_after_secs: Option<u64>,
}

impl RateHeaders {
    pub fn to_pairs(self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset_secs.to_string()),
        ];
        if let Some(retry) = self.retry_after_secs {
            pairs.push(("retry-after", retry.to_string()));
        }
        pairs
    }
}

/// A descriptor for the global service, from one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalDescriptor {
    pub rule: usize,
    pub entries: Vec<(String, String)>,
    /// The rule's `hits_addend`; `None`: not configured, or its header absent (the service counts 1).
    pub hits_addend: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Evaluation {
    /// (rule index, what happened) for every rule that matched.
    pub events: Vec<(usize, RuleEvents)>,
    /// `Some` when the request must be rejected locally; carries its headers.
    pub rejected: Option<RateHeaders>,
    /// Most restrictive figures of the limits that allowed the request.
    pub headers: Option<RateHeaders>,
    pub descriptors: Vec<GlobalDescriptor>,
    /// `Some(reason)` when the request must be answered 400: a non-shadow global rule's `hits_addend` header
    /// is not a number from 0 to 1000000000.
    pub bad_request: Option<String>,
}

struct CompiledRule {
    limits: Vec<(Limit, String, Limiter)>,
}

/// The rules of one configuration, with their limiters, built once at configure time.
pub struct Engine {
    rules: Vec<CompiledRule>,
}

/// Value standing for "any request missing a key part" with `on_missing_key: share`.
const MISSING: &str = "\u{0}missing";

impl Engine {
    /// `prefix` namespaces this plugin's shared-data keys: its table of `max_keys` bucket slots.
    pub fn new(config: &Config, prefix: &str) -> Result<Self, String> {
        let table = SlotTable::new(prefix, config.max_keys);
        let mut rules = Vec::with_capacity(config.rules.len());
        for rule in &config.rules {
            let mut limits = Vec::with_capacity(rule.limits.len());
            for (j, limit) in rule.limits.iter().enumerate() {
                // The id changes when the limit changes, so that a reload with other limits starts fresh buckets;
                // an unchanged rule keeps its buckets (and counts) across a reload.
                let id = format!(
                    "{prefix}{}#{j}:{}/{}/{}",
                    rule.name,
                    limit.requests,
                    limit.per.as_nanos_u64(),
                    limit.burst()
                );
                let limiter = Limiter::new(limit, &table)
                    .ok_or_else(|| format!("rule {:?}: limit {j} cannot be represented", rule.name))?;
                limits.push((*limit, id, limiter));
            }
            rules.push(CompiledRule { limits });
        }
        Ok(Engine { rules })
    }

    /// Decides for one request at `now` (monotonic nanoseconds), with the buckets in `store`.
    pub fn evaluate<R: RequestFacts + ?Sized>(
        &self,
        store: &dyn SharedStore,
        config: &Config,
        request: &R,
        now: u64,
    ) -> Evaluation {
        let mut evaluation = Evaluation::default();
        for (index, (rule, compiled)) in config.rules.iter().zip(&self.rules).enumerate() {
            if !rule.matcher.matches(request) {
                continue;
            }
            let mut events = RuleEvents::default();
            let values = match key_values(&rule.key, request) {
                Ok(values) => values,
                Err(missing) => {
                    events.missing_key = true;
                    log::debug!("ratelimit: rule {:?}: request has no {}", rule.name, missing.name());
                    match config.on_missing_key {
                        OnMissingKey::Skip => {
                            evaluation.events.push((index, events));
                            continue;
                        }
                        OnMissingKey::Share => vec![MISSING.to_string()],
                        OnMissingKey::Deny => {
                            let denied = RateHeaders { limit: 0, remaining: 0, reset_secs: 0, retry_after_secs: None };
                            let stop = reject(&mut evaluation, &mut events, rule.shadow, denied);
                            evaluation.events.push((index, events));
                            if stop {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            let mut stop = false;
            for (limit, id, limiter) in &compiled.limits {
                let decision = limiter.check_identity(store, bucket_hash(id, &values), now);
                events.cas_retries = events.cas_retries.saturating_add(decision.effects.cas_retries);
                events.key_overflow |= decision.effects.overflow;
                if let Some(err) = decision.effects.store_error {
                    events.store_error.get_or_insert(err);
                }
                let reset_secs = ceil_secs(decision.reset_after);
                match decision.verdict {
                    Verdict::Allowed { remaining } => {
                        let figures =
                            RateHeaders { limit: limit.requests, remaining, reset_secs, retry_after_secs: None };
                        if evaluation.headers.is_none_or(|h| remaining < h.remaining) {
                            evaluation.headers = Some(figures);
                        }
                    }
                    Verdict::Limited { retry_after } => {
                        let figures = RateHeaders {
                            limit: limit.requests,
                            remaining: 0,
                            reset_secs,
                            retry_after_secs: Some(ceil_secs(retry_after).max(1)),
                        };
                        stop = reject(&mut evaluation, &mut events, rule.shadow, figures);
                        break;
                    }
                }
            }
            if !events.limited && !events.shadow_limited {
                events.allowed = true;
            }
            if rule.global && !stop {
                match hits_addend(rule, request) {
                    Ok(hits_addend) => {
                        let entries = rule
                            .key
                            .iter()
                            .zip(&values)
                            .map(|(spec, value)| (spec.descriptor_key().to_string(), entry_value(spec, value)))
                            .collect();
                        evaluation.descriptors.push(GlobalDescriptor { rule: index, entries, hits_addend });
                    }
                    Err(reason) => {
                        events.allowed = false;
                        evaluation.bad_request = Some(reason);
                        stop = true;
                    }
                }
            }
            evaluation.events.push((index, events));
            if stop {
                break;
            }
        }
        if evaluation.rejected.is_some() || evaluation.bad_request.is_some() {
            evaluation.descriptors.clear();
        }
        evaluation
    }
}

/// Records a rejection by a rule; returns whether evaluation stops (not in shadow mode).
fn reject(evaluation: &mut Evaluation, events: &mut RuleEvents, shadow: bool, figures: RateHeaders) -> bool {
    if shadow {
        events.shadow_limited = true;
        false
    } else {
        events.limited = true;
        evaluation.rejected = Some(figures);
        true
    }
}

/// The rule's hits for the service. A header that is not a whole number from 0 to 1000000000 is an error for a
/// rule that rejects (a client must not escape counting with a bad value); a shadow rule counts it as 1.
fn hits_addend<R: RequestFacts + ?Sized>(rule: &Rule, request: &R) -> Result<Option<u64>, String> {
    let name = match &rule.hits_addend {
        None => return Ok(None),
        Some(HitsAddend::Number(n)) => return Ok(Some(*n)),
        Some(HitsAddend::Header(name)) => name,
    };
    let Some(value) = request.header(name) else { return Ok(None) };
    match value.trim().parse::<u64>() {
        Ok(hits) if hits <= MAX_HITS_ADDEND => Ok(Some(hits)),
        _ => {
            let reason = format!("invalid {name} header: expected a whole number from 0 to {MAX_HITS_ADDEND}");
            if rule.shadow {
                log::debug!("ratelimit: rule {:?}: {reason}; counted as 1", rule.name);
                Ok(None)
            } else {
                Err(reason)
            }
        }
    }
}

fn entry_value(_part: &KeySpec, value: &str) -> String {
    if value == MISSING {
        "missing".to_string()
    } else {
        value.to_string()
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use shared::store::{reserve_create_cas, MemoryStore};
    use shared::RequestHeaders;
    use std::borrow::Cow;

    const SECOND: u64 = 1_000_000_000;

    struct Req(Vec<(String, String)>);

    impl RequestHeaders for Req {
        fn header(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.header(name)
        }
    }

    impl RequestFacts for Req {
        fn client_ip(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed("10.1.1.1"))
        }
    }

    fn req(path: &str, extra: &[(&str, &str)]) -> Req {
        let mut headers = vec![(":path".to_string(), path.to_string()), (":method".to_string(), "GET".to_string())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Req(headers)
    }

    /// An engine over its own store.
    struct Built {
        config: Config,
        engine: Engine,
        store: MemoryStore,
    }

    impl Built {
        fn evaluate(&self, request: &Req, now: u64) -> Evaluation {
            self.engine.evaluate(&self.store, &self.config, request, now)
        }
    }

    fn build(json: &str) -> Built {
        let config = parse(json.as_bytes()).unwrap();
        let store = MemoryStore::default();
        reserve_create_cas(&store, "t:").unwrap();
        let engine = Engine::new(&config, "t:").unwrap();
        Built { config, engine, store }
    }

    #[test]
    fn per_key_buckets_and_headers() {
        let engine = build(
            r#"{"rules": [{"name": "k", "key": [{"header": "x-api-key"}], "limits": [{"requests": 2, "per": "10s"}]}]}"#,
        );
        let a = req("/", &[("x-api-key", "a")]);
        let b = req("/", &[("x-api-key", "b")]);
        let now = 10 * SECOND;
        let first = engine.evaluate(&a, now);
        assert_eq!(first.headers, Some(RateHeaders { limit: 2, remaining: 1, reset_secs: 5, retry_after_secs: None }));
        assert!(engine.evaluate(&a, now).rejected.is_none());
        let third = engine.evaluate(&a, now);
        assert_eq!(
            third.rejected,
            Some(RateHeaders { limit: 2, remaining: 0, reset_secs: 10, retry_after_secs: Some(5) })
        );
        assert_eq!(third.events, vec![(0, RuleEvents { limited: true, ..Default::default() })]);
        // Another key has its own bucket.
        assert!(engine.evaluate(&b, now).rejected.is_none());
        let pairs = third.rejected.unwrap().to_pairs();
        assert!(pairs.contains(&("retry-after", "5".to_string())));
        assert!(pairs.contains(&("x-ratelimit-remaining", "0".to_string())));
    }

    #[test]
    fn every_matching_rule_applies_and_the_first_rejection_stops() {
        let engine = build(
            r#"{"rules": [
                {"name": "all", "limits": [{"requests": 100, "per": "1s"}]},
                {"name": "api", "match": {"prefix": "/api"}, "limits": [{"requests": 1, "per": "1s"}]},
                {"name": "after", "limits": [{"requests": 100, "per": "1s"}]}
            ]}"#,
        );
        let now = SECOND;
        let ok = engine.evaluate(&req("/api/x", &[]), now);
        assert_eq!(ok.events.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        let limited = engine.evaluate(&req("/api/x", &[]), now);
        assert!(limited.rejected.is_some());
        assert_eq!(limited.events.iter().map(|(i, e)| (*i, e.limited)).collect::<Vec<_>>(), [(0, false), (1, true)]);
        let other = engine.evaluate(&req("/other", &[]), now);
        assert!(other.rejected.is_none());
        assert_eq!(other.events.len(), 2);
    }

    #[test]
    fn shadow_rules_count_but_never_reject() {
        let engine = build(r#"{"rules": [{"name": "s", "shadow": true, "limits": [{"requests": 1, "per": "1s"}]}]}"#);
        engine.evaluate(&req("/", &[]), SECOND);
        let second = engine.evaluate(&req("/", &[]), SECOND);
        assert!(second.rejected.is_none());
        assert_eq!(second.events, vec![(0, RuleEvents { shadow_limited: true, ..Default::default() })]);
    }

    #[test]
    fn missing_key_parts_follow_on_missing_key() {
        let rule = r#"{"name": "k", "key": [{"header": "x-api-key"}], "limits": [{"requests": 1, "per": "1s"}]}"#;
        let engine = build(&format!(r#"{{"rules": [{rule}]}}"#));
        for _ in 0..3 {
            let e = engine.evaluate(&req("/", &[]), SECOND);
            assert!(e.rejected.is_none());
            assert_eq!(e.events, vec![(0, RuleEvents { missing_key: true, ..Default::default() })]);
        }
        let engine = build(&format!(r#"{{"rules": [{rule}], "on_missing_key": "deny"}}"#));
        let e = engine.evaluate(&req("/", &[]), SECOND);
        assert!(e.rejected.is_some());
        assert!(e.events[0].1.missing_key && e.events[0].1.limited);
        let engine = build(&format!(r#"{{"rules": [{rule}], "on_missing_key": "share"}}"#));
        assert!(engine.evaluate(&req("/", &[]), SECOND).rejected.is_none());
        assert!(engine.evaluate(&req("/", &[]), SECOND).rejected.is_some(), "one shared bucket");
        assert!(engine.evaluate(&req("/", &[("x-api-key", "a")]), SECOND).rejected.is_none());
    }

    #[test]
    fn global_rules_produce_descriptors_named_after_key_parts() {
        let engine = build(
            r#"{"rules": [
                {"name": "g", "global": true, "key": [{"header": "x-api-key"}, "client_ip", {"literal": "v1"}]},
                {"name": "local", "limits": [{"requests": 1, "per": "1s"}]}
            ], "global": {"cluster": "rls", "domain": "edge"}}"#,
        );
        let e = engine.evaluate(&req("/", &[("x-api-key", "k")]), SECOND);
        assert_eq!(
            e.descriptors,
            vec![GlobalDescriptor {
                rule: 0,
                entries: vec![
                    ("x-api-key".into(), "k".into()),
                    ("remote_address".into(), "10.1.1.1".into()),
                    ("generic_key".into(), "v1".into())
                ],
                hits_addend: None,
            }]
        );
        // A local rejection means no global call.
        let e = engine.evaluate(&req("/", &[("x-api-key", "k")]), SECOND);
        assert!(e.rejected.is_some());
        assert!(e.descriptors.is_empty());
    }

    #[test]
    fn descriptor_keys_and_hits_addend_from_config_and_header() {
        let engine = build(
            r#"{"rules": [
                {"name": "n", "global": true, "hits_addend": 4,
                 "key": [{"header": "x-api-key", "descriptor_key": "api_key"}, {"part": "client_ip", "descriptor_key": "ip"}]},
                {"name": "h", "global": true, "hits_addend": {"header": "x-cost"}, "key": [{"literal": "x"}]},
                {"name": "s", "global": true, "shadow": true, "hits_addend": {"header": "x-cost"}}
            ], "global": {"cluster": "rls", "domain": "edge"}}"#,
        );
        let e = engine.evaluate(&req("/", &[("x-api-key", "k"), ("x-cost", " 7 ")]), SECOND);
        let got: Vec<_> = e.descriptors.iter().map(|d| (d.entries.clone(), d.hits_addend)).collect();
        assert_eq!(
            got,
            vec![
                (vec![("api_key".into(), "k".into()), ("ip".into(), "10.1.1.1".into())], Some(4)),
                (vec![("generic_key".into(), "x".into())], Some(7)),
                (vec![], Some(7)),
            ]
        );
        assert_eq!(e.bad_request, None);
        // Without the header the service counts 1.
        let e = engine.evaluate(&req("/", &[("x-api-key", "k")]), SECOND);
        assert_eq!(e.descriptors.iter().map(|d| d.hits_addend).collect::<Vec<_>>(), [Some(4), None, None]);
        // A bad value: 400 for a rule that rejects, no call at all.
        for bad in ["-1", "1.5", "lots", "1000000001"] {
            let e = engine.evaluate(&req("/", &[("x-api-key", "k"), ("x-cost", bad)]), SECOND);
            assert!(e.bad_request.as_deref().unwrap().contains("invalid x-cost header"), "{bad}");
            assert!(e.descriptors.is_empty());
            assert!(!e.events[1].1.allowed);
        }
        // A shadow rule counts it as 1.
        let shadow = build(
            r#"{"rules": [{"name": "s", "global": true, "shadow": true, "hits_addend": {"header": "x-cost"}}],
                "global": {"cluster": "rls", "domain": "edge"}}"#,
        );
        let e = shadow.evaluate(&req("/", &[("x-cost", "lots")]), SECOND);
        assert_eq!((e.bad_request, e.descriptors[0].hits_addend), (None, None));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(10)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
