//! Counters and gauges of one plugin instance, defined once in its root context and shown by Envoy under `/stats`
//! (Envoy prefixes custom Wasm metrics with `wasmcustom.`).
//!
//! Every name carries the filter, the plugin instance (Envoy's `plugin_name`) and, for per-rule metrics, the rule,
//! in Istio's tag encoding (`key=.=value;.;`), so that two instances never share a counter and Envoy's
//! `stats_config.stats_tags` (or Istio's `extraStatTags`) can turn plugin and rule into labels:
//!
//! ```text
//! wasmcustom.ratelimit.plugin=.=edge;.;rule=.=api;.;allowed    (/stats)
//! ratelimit_allowed{plugin="edge",rule="api"}                  (/stats/prometheus, with the tags below)
//! ```
//!
//! with the `stats_tags` of `envoy-test/demo.yaml` (the unit tests below check them). Values are sanitized to
//! `[A-Za-z0-9_-]`, so a plugin or rule name can never contain the `=`, `;` or `.` that delimit a tag.
//!
//! In Envoy the calls go to the host layer's ABI ([`crate::host::abi`], or the dynamic-module build's
//! [`crate::host::native::metrics`]). In host unit tests they go to an in-memory registry, so that logic that counts
//! can be tested without a host.

use crate::host::Host;

/// Builds a metric name from its parts, replacing characters that would break Envoy's dotted stat names.
pub fn metric_name(parts: &[&str]) -> String {
    let mut name = String::new();
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&sanitize(part));
    }
    name
}

/// A tag value or name part: `[A-Za-z0-9_-]` only, never empty (an empty tag value would not match the tag regex).
fn sanitize(part: &str) -> String {
    let clean: String =
        part.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if clean.is_empty() {
        "_".to_string()
    } else {
        clean
    }
}

/// The metrics of one plugin instance of a filter: `<filter>.plugin=.=<plugin>;.;[rule=.=<rule>;.;]<event>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    filter: &'static str,
    plugin: String,
}

impl Scope {
    /// The scope of the plugin being configured: its `plugin_name` (the `name` of the Wasm `PluginConfig`), or the
    /// filter's name when Envoy does not give one.
    pub fn of_plugin(host: &dyn Host, filter: &'static str) -> Self {
        let plugin = match host.property_text(&["plugin_name"]) {
            Ok(Some(name)) => name,
            Ok(None) => filter.to_string(),
            Err(err) => {
                log::warn!("{filter}: plugin_name unavailable ({err}): metrics are named after plugin {filter:?}");
                filter.to_string()
            }
        };
        Scope::new(filter, &plugin)
    }

    pub fn new(filter: &'static str, plugin: &str) -> Self {
        Scope { filter, plugin: plugin.to_string() }
    }

    /// The full name of a plugin-wide metric (`event` may be dotted, e.g. `lambda.invoked`).
    pub fn name(&self, event: &str) -> String {
        format!("{}.plugin=.={};.;{}", self.filter, sanitize(&self.plugin), event_name(event))
    }

    /// The full name of a per-rule metric.
    pub fn rule_name(&self, rule: &str, event: &str) -> String {
        format!(
            "{}.plugin=.={};.;rule=.={};.;{}",
            self.filter,
            sanitize(&self.plugin),
            sanitize(rule),
            event_name(event)
        )
    }

    pub fn counter(&self, event: &str) -> Counter {
        Counter::named(&self.name(event))
    }

    pub fn gauge(&self, event: &str) -> Gauge {
        Gauge::named(&self.name(event))
    }

    pub fn rule_counter(&self, rule: &str, event: &str) -> Counter {
        Counter::named(&self.rule_name(rule, event))
    }
}

fn event_name(event: &str) -> String {
    metric_name(&event.split('.').collect::<Vec<_>>())
}

/// A monotonically increasing count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(Option<u32>);

/// A value that goes up and down (e.g. the number of configured rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge(Option<u32>);

impl Counter {
    /// Defines (or finds) the counter; only through a [`Scope`], so that every name carries its plugin. A host
    /// that refuses the definition leaves a counter that counts nothing, which is logged once here instead of
    /// failing requests later.
    fn named(name: &str) -> Self {
        Counter(backend::define(backend::Kind::Counter, name))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        if let Some(id) = self.0 {
            backend::increment(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

impl Gauge {
    fn named(name: &str) -> Self {
        Gauge(backend::define(backend::Kind::Gauge, name))
    }

    pub fn set(&self, value: u64) {
        if let Some(id) = self.0 {
            backend::record(id, value);
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod backend {
    use crate::host::abi;

    pub enum Kind {
        Counter,
        Gauge,
    }

    pub fn define(kind: Kind, name: &str) -> Option<u32> {
        let kind = match kind {
            Kind::Counter => abi::metric::COUNTER,
            Kind::Gauge => abi::metric::GAUGE,
        };
        match abi::define_metric(kind, name) {
            Ok(id) => Some(id),
            Err(err) => {
                log::error!("metric {name} could not be defined: {err}");
                None
            }
        }
    }

    // A refused update is not worth failing or logging a request for.
    pub fn increment(id: u32, by: i64) {
        let _ = abi::increment_metric(id, by);
    }

    pub fn record(id: u32, value: u64) {
        let _ = abi::record_metric(id, value);
    }
}

/// The dynamic module's metrics while Envoy runs it ([`crate::host::native::metrics`]); otherwise (host unit tests)
/// a per-thread in-memory registry.
#[cfg(not(target_arch = "wasm32"))]
mod backend {
    use std::cell::RefCell;

    use crate::host::native::metrics as native;

    #[derive(PartialEq, Eq)]
    pub enum Kind {
        Counter,
        Gauge,
    }

    thread_local! {
        static METRICS: RefCell<Vec<(String, u64)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn define(kind: Kind, name: &str) -> Option<u32> {
        if let Some(id) = native::define(kind == Kind::Counter, name) {
            return id;
        }
        METRICS.with_borrow_mut(|metrics| {
            let index = match metrics.iter().position(|(n, _)| n == name) {
                Some(index) => index,
                None => {
                    metrics.push((name.to_string(), 0));
                    metrics.len() - 1
                }
            };
            u32::try_from(index).ok()
        })
    }

    pub fn increment(id: u32, by: i64) {
        if id & native::NATIVE_ID != 0 {
            return native::update(id, u64::try_from(by).unwrap_or(0));
        }
        METRICS.with_borrow_mut(|metrics| {
            if let Some((_, value)) = metrics.get_mut(id as usize) {
                *value = value.saturating_add_signed(by);
            }
        });
    }

    pub fn record(id: u32, value: u64) {
        if id & native::NATIVE_ID != 0 {
            return native::update(id, value);
        }
        METRICS.with_borrow_mut(|metrics| {
            if let Some((_, v)) = metrics.get_mut(id as usize) {
                *v = value;
            }
        });
    }

    /// The current value of a metric in this thread's test registry.
    pub fn value(name: &str) -> Option<u64> {
        METRICS.with_borrow(|metrics| metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
    }
}

/// Host unit tests: the value a metric has in this thread's in-memory registry.
#[cfg(not(target_arch = "wasm32"))]
pub fn test_value(name: &str) -> Option<u64> {
    backend::value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dotted_and_sanitized() {
        assert_eq!(metric_name(&["ratelimit", "free-tier", "allowed"]), "ratelimit.free-tier.allowed");
        assert_eq!(metric_name(&["ratelimit", "a.b c/d", "limited"]), "ratelimit.a_b_c_d.limited");
        assert_eq!(metric_name(&["nats", "", "published"]), "nats.published");
    }

    #[test]
    fn scoped_names_carry_plugin_and_rule_as_tags() {
        let scope = Scope::new("ratelimit", "edge");
        assert_eq!(scope.name("rules"), "ratelimit.plugin=.=edge;.;rules");
        assert_eq!(scope.rule_name("api", "allowed"), "ratelimit.plugin=.=edge;.;rule=.=api;.;allowed");
        assert_eq!(Scope::new("aws", "aws").name("lambda.invoked"), "aws.plugin=.=aws;.;lambda.invoked");
        // Istio names plugins `<namespace>.<name>`: no dot, `=` or `;` may reach a tag value.
        let istio = Scope::new("ratelimit", "istio-system.rl=x;y");
        assert_eq!(
            istio.rule_name("a.b;.;c", "limited"),
            "ratelimit.plugin=.=istio-system_rl_x_y;.;rule=.=a_b___c;.;limited"
        );
        assert_eq!(Scope::new("nats", "").name("published"), "nats.plugin=.=_;.;published");
    }

    /// The `stats_config.stats_tags` of `envoy-test/demo.yaml` and the README (anchored, so that Envoy runs them
    /// only on `wasmcustom.` names), and the unanchored form Istio generates for `extraStatTags`.
    pub const STATS_TAGS: [(&str, &str); 2] = [
        ("plugin", r"^wasmcustom\.\w+\.(plugin=\.=(.+?);\.;)"),
        ("rule", r"^wasmcustom\.\w+\.plugin=\.=.+?;\.;(rule=\.=(.+?);\.;)"),
    ];
    const ISTIO_TAGS: [(&str, &str); 2] = [("plugin", r"(plugin=\.=(.+?);\.;)"), ("rule", r"(rule=\.=(.+?);\.;)")];

    /// What Envoy's tag extraction does with `stats_tags`: each regex runs on the full name, its first group is
    /// removed from the name and its second group is the label value.
    #[test]
    fn the_documented_tag_regexes_split_every_name_unambiguously() {
        for tags in [STATS_TAGS, ISTIO_TAGS] {
            split_with(tags);
        }
    }

    fn split_with(tags: [(&str, &str); 2]) {
        // The labels and the name left once every matched first group is removed, as Envoy's tag producer does.
        let split = |name: &str| -> (Vec<(String, String)>, String) {
            let mut labels = Vec::new();
            let mut removed = Vec::new();
            for (key, pattern) in tags {
                let regex = regex_lite::Regex::new(pattern).unwrap();
                if let Some(captures) = regex.captures(name) {
                    removed.push(captures.get(1).unwrap().range());
                    labels.push((key.to_string(), captures.get(2).unwrap().as_str().to_string()));
                }
            }
            let rest = name.char_indices().filter(|(i, _)| !removed.iter().any(|r| r.contains(i))).map(|(_, c)| c);
            (labels, rest.collect())
        };
        let label = |key: &str, value: &str| (key.to_string(), sanitize(value));
        // Names that look like the keys themselves, or like each other, still split into the right labels.
        for (plugin, rule) in [("edge", "api"), ("rule", "plugin"), ("a.rule=.=x", "plugin=.=y;.;"), ("p", "r-1")] {
            let name = format!("wasmcustom.{}", Scope::new("ratelimit", plugin).rule_name(rule, "allowed"));
            let expected = vec![label("plugin", plugin), label("rule", rule)];
            assert_eq!(split(&name), (expected, "wasmcustom.ratelimit.allowed".to_string()), "{name}");
        }
        let plugin_wide = format!("wasmcustom.{}", Scope::new("aws", "rule").name("sts.refreshed"));
        assert_eq!(split(&plugin_wide), (vec![label("plugin", "rule")], "wasmcustom.aws.sts.refreshed".to_string()));
    }

    #[test]
    fn the_scope_is_named_after_envoys_plugin_name_or_the_filter() {
        let host = crate::host::FakeHost::with_request(&[]);
        assert_eq!(Scope::of_plugin(&host, "nats"), Scope::new("nats", "nats"));
        host.set_property("plugin_name", "edge.nats");
        assert_eq!(Scope::of_plugin(&host, "nats").name("published"), "nats.plugin=.=edge_nats;.;published");
        host.fail("property", crate::HostError::BadArgument);
        assert_eq!(Scope::of_plugin(&host, "nats"), Scope::new("nats", "nats"));
    }

    #[test]
    fn scoped_metrics_of_two_plugins_are_separate() {
        let a = Scope::new("f", "a");
        let b = Scope::new("f", "b");
        a.rule_counter("r", "allowed").add(3);
        b.rule_counter("r", "allowed").inc();
        a.gauge("rules").set(2);
        b.counter("events").inc();
        assert_eq!(test_value("f.plugin=.=a;.;rule=.=r;.;allowed"), Some(3));
        assert_eq!(test_value("f.plugin=.=b;.;rule=.=r;.;allowed"), Some(1));
        assert_eq!(test_value("f.plugin=.=a;.;rules"), Some(2));
        assert_eq!(test_value("f.plugin=.=b;.;events"), Some(1));
        assert_eq!(test_value("f.plugin=.=a;.;events"), None);
    }

    #[test]
    fn counters_and_gauges_record() {
        let c = Counter::named("t.c");
        c.inc();
        c.add(2);
        assert_eq!(test_value("t.c"), Some(3));
        // Defining again finds the same counter.
        Counter::named("t.c").inc();
        assert_eq!(test_value("t.c"), Some(4));
        let g = Gauge::named("t.g");
        g.set(7);
        g.set(5);
        assert_eq!(test_value("t.g"), Some(5));
        assert_eq!(test_value("t.none"), None);
    }
}
