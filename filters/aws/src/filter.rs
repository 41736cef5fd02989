//! proxy-wasm glue: reads the configuration, hands each request to the logic. The only module that talks to the
//! host (through `shared::host`).

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use shared::host;
use shared::metrics::Gauge;

use crate::config::{self, Config, FILTER};

#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
    rules: Option<Gauge>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::init_logging();
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = host::configure(FILTER, self.get_plugin_configuration(), config::parse) else {
            return false;
        };
        let rules = 0usize; // rules arrive with the AWS issue
        self.rules.get_or_insert_with(|| Gauge::define(&[FILTER, "rules"])).set(rules as u64);
        log::info!("{FILTER}: configuration applied ({rules} rules)");
        self.config = Some(Rc::new(config));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { _config: self.config.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request. At this stage the filter passes every request through unchanged.
struct Stream {
    _config: Option<Rc<Config>>,
}

impl Context for Stream {}

impl HttpContext for Stream {}
