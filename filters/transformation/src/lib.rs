//! The `transformation` filter (see README.md, section "transformation"): a proxy-wasm module on wasm32, an Envoy
//! dynamic module on other targets.

pub mod body;
pub mod config;
pub mod extractor;
pub mod functions;
pub mod inja;
pub mod json_reads;
pub mod metadata;
pub mod pseudo_headers;
pub mod stream;
pub mod template;
pub mod transform;

shared::proxy_filter!(stream::TransformationFilter);
