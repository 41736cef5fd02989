//! Counters and gauges named `<filter>.<scope>.<event>`, defined once in the root context and shown by Envoy
//! under `/stats` (Envoy prefixes custom Wasm metrics with `wasmcustom.`).
//!
//! In Envoy the calls go to the host layer's ABI ([`crate::host::abi`]). In host unit tests they go to an in-memory registry, so that
//! logic that counts can be tested without a host.

/// Builds a metric name from its parts, replacing characters that would break Envoy's dotted stat names.
pub fn metric_name(parts: &[&str]) -> String {
    let mut name = String::new();
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(part.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }));
    }
    name
}

/// A monotonically increasing count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(Option<u32>);

/// A value that goes up and down (e.g. the number of configured rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge(Option<u32>);

impl Counter {
    /// Defines (or finds) the counter. A host that refuses the definition leaves a counter that counts nothing,
    /// which is logged once here instead of failing requests later.
    pub fn define(parts: &[&str]) -> Self {
        Counter(backend::define(backend::Kind::Counter, &metric_name(parts)))
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
    pub fn define(parts: &[&str]) -> Self {
        Gauge(backend::define(backend::Kind::Gauge, &metric_name(parts)))
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

#[cfg(not(target_arch = "wasm32"))]
mod backend {
    use std::cell::RefCell;

    pub enum Kind {
        Counter,
        Gauge,
    }

    thread_local! {
        static METRICS: RefCell<Vec<(String, u64)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn define(_kind: Kind, name: &str) -> Option<u32> {
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
        METRICS.with_borrow_mut(|metrics| {
            if let Some((_, value)) = metrics.get_mut(id as usize) {
                *value = value.saturating_add_signed(by);
            }
        });
    }

    pub fn record(id: u32, value: u64) {
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
    fn counters_and_gauges_record() {
        let c = Counter::define(&["t", "c"]);
        c.inc();
        c.add(2);
        assert_eq!(test_value("t.c"), Some(3));
        // Defining again finds the same counter.
        Counter::define(&["t", "c"]).inc();
        assert_eq!(test_value("t.c"), Some(4));
        let g = Gauge::define(&["t", "g"]);
        g.set(7);
        g.set(5);
        assert_eq!(test_value("t.g"), Some(5));
        assert_eq!(test_value("t.none"), None);
    }
}
