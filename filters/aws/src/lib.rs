//! The `aws` filter (see README.md, section "aws"): a proxy-wasm module on wasm32, an Envoy dynamic module
//! on other targets.

pub mod config;
pub mod credentials;
pub mod lambda;
pub mod signing;
pub mod sigv4;
pub mod stream;

shared::proxy_filter!(stream::AwsFilter);
