//! The `ratelimit` proxy-wasm filter (see README.md, section "ratelimit").

pub mod config;
pub mod engine;
mod filter;
pub mod gcra;
pub mod key;
pub mod rls;
pub mod store;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(filter::Root::default()));
}}
