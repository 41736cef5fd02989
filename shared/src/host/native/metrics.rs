//! Counters and gauges of the dynamic-module build. Envoy defines a module's metrics per configuration and only
//! while the configuration is being created (on the main thread); later definitions are refused. So the
//! configuration's first instance of the filter (made in `config_new`) defines them, and the workers' instances,
//! which make the same definitions, find them here by name. Updates go through the stream being served when
//! there is one (the ABI's per-stream calls, meant for worker threads), else through the configuration.

#![allow(unsafe_code)] // calls into the ABI with local buffers

use std::cell::Cell;
use std::sync::RwLock;

use super::ffi::{ModuleBuffer, METRICS_SUCCESS};

/// Set on ids from this registry so that they never mix with the in-memory test registry's.
pub const NATIVE_ID: u32 = 1 << 31;

struct Metric {
    config: u64,
    /// The configuration's Envoy pointer; 0 once the configuration is gone.
    envoy: usize,
    counter: bool,
    name: String,
    envoy_id: usize,
}

static REGISTRY: RwLock<Vec<Metric>> = RwLock::new(Vec::new());

/// What this thread is running a hook for.
#[derive(Clone, Copy)]
struct Current {
    config: u64,
    /// The configuration's Envoy pointer.
    envoy: usize,
    /// Whether Envoy still accepts definitions (only while it creates the configuration).
    may_define: bool,
    /// The stream's Envoy pointer, 0 outside a stream.
    stream: usize,
}

thread_local! {
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// Marks this thread as running a hook of a configuration (and of a stream, if `stream` is not 0) until dropped.
pub(super) struct Building;

impl Building {
    pub(super) fn start(config: u64, envoy: usize, may_define: bool) -> Building {
        Self::stream(config, envoy, may_define, 0)
    }

    pub(super) fn stream(config: u64, envoy: usize, may_define: bool, stream: usize) -> Building {
        CURRENT.set(Some(Current { config, envoy, may_define, stream }));
        Building
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        CURRENT.set(None);
    }
}

/// `None` when no configuration is being built on this thread (host unit tests: the caller keeps its own
/// registry); otherwise the metric's id, `Some(None)` when Envoy refused it (logged).
pub fn define(counter: bool, name: &str) -> Option<Option<u32>> {
    let Current { config, envoy, may_define, .. } = CURRENT.get()?;
    let mut registry = REGISTRY.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = registry.iter().position(|m| m.config == config && m.counter == counter && m.name == name);
    let index = match found {
        Some(index) => index,
        None if may_define => match define_in_envoy(envoy, counter, name) {
            Some(envoy_id) => {
                registry.push(Metric { config, envoy, counter, name: name.to_string(), envoy_id });
                registry.len() - 1
            }
            None => return Some(None),
        },
        None => {
            log::error!("metric {name} was not defined when the configuration was created: it counts nothing");
            return Some(None);
        }
    };
    Some(u32::try_from(index).ok().filter(|i| i & NATIVE_ID == 0).map(|i| i | NATIVE_ID))
}

fn define_in_envoy(envoy: usize, counter: bool, name: &str) -> Option<usize> {
    let api = super::API.get()?;
    let mut id = 0usize;
    let define = if counter { api.define_counter } else { api.define_gauge };
    // SAFETY: the name points into a live &str, no labels, the out-pointer is a local; `envoy` is the
    // configuration being created.
    let result =
        unsafe { define(envoy as *mut _, ModuleBuffer::of(name.as_bytes()), std::ptr::null_mut(), 0, &mut id) };
    if result == METRICS_SUCCESS {
        Some(id)
    } else {
        log::error!("metric {name} could not be defined: Envoy answered {result}");
        None
    }
}

/// Adds to a counter or sets a gauge (`id` from [`define`]). A refused update is not worth failing a request for.
pub fn update(id: u32, value: u64) {
    let Some(api) = super::API.get() else { return };
    let registry = REGISTRY.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(metric) = registry.get((id & !NATIVE_ID) as usize).filter(|m| m.envoy != 0) else { return };
    let stream = CURRENT.get().filter(|c| c.stream != 0 && c.config == metric.config).map(|c| c.stream);
    match stream {
        Some(stream) => {
            let update = if metric.counter { api.stream_increment_counter } else { api.stream_set_gauge };
            // SAFETY: the stream of the hook being run, made from the metric's configuration; no labels.
            unsafe { update(stream as *mut _, metric.envoy_id, std::ptr::null_mut(), 0, value) };
        }
        None => {
            let update = if metric.counter { api.increment_counter } else { api.set_gauge };
            // SAFETY: the configuration is alive (its pointer is cleared when Envoy destroys it); no labels.
            unsafe { update(metric.envoy as *mut _, metric.envoy_id, std::ptr::null_mut(), 0, value) };
        }
    }
}

/// Forgets a configuration's metrics (Envoy is destroying it).
pub(super) fn forget(config: u64) {
    let mut registry = REGISTRY.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    for metric in registry.iter_mut().filter(|m| m.config == config) {
        metric.envoy = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_configuration_the_caller_keeps_its_registry() {
        assert_eq!(define(true, "t.outside"), None);
    }

    #[test]
    fn a_worker_finds_only_what_the_configuration_defined() {
        let _building = Building::start(7, 0, false);
        // Not defined at configuration time: refused, and nothing is updated.
        assert_eq!(define(true, "t.late"), Some(None));
        update(NATIVE_ID, 1);
    }
}
