//! The `aws` proxy-wasm filter (see README.md, section "aws").

pub mod config;
pub mod credentials;
pub mod lambda;
pub mod signing;
pub mod sigv4;
pub mod stream;

shared::proxy_filter!(stream::AwsFilter);
