//! The `nats` proxy-wasm filter (see README.md, section "nats").

pub mod config;
pub mod envelope;
mod filter;
pub mod outcome;
pub mod protocol;
pub mod subject;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(filter::Root::default()));
}}
