//! The `nats` filter (see README.md, section "nats"): a proxy-wasm module on wasm32, an Envoy dynamic module
//! on other targets.

pub mod config;
pub mod envelope;
pub mod outcome;
pub mod protocol;
pub mod stream;
pub mod subject;

shared::proxy_filter!(stream::NatsFilter);
