//! The `nats` proxy-wasm filter (see README.md, section "nats").

pub mod config;
pub mod envelope;
pub mod outcome;
pub mod protocol;
pub mod stream;
pub mod subject;

shared::proxy_filter!(stream::NatsFilter);
