//! The `ratelimit` proxy-wasm filter (see README.md, section "ratelimit").

pub mod config;
pub mod engine;
pub mod gcra;
pub mod key;
pub mod rls;
pub mod store;
pub mod stream;

shared::proxy_filter!(stream::RatelimitFilter);
