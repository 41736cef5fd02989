//! The `ratelimit` filter (see README.md, section "ratelimit"): a proxy-wasm module on wasm32, an Envoy dynamic module
//! on other targets.

pub mod config;
pub mod engine;
pub mod gcra;
pub mod key;
pub mod rls;
pub mod store;
pub mod stream;

shared::proxy_filter!(stream::RatelimitFilter);
