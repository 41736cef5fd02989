//! Helpers shared by every filter of the set.
//!
//! Everything here except [`host`] is pure logic that runs and is unit-tested on the host with `cargo test`.
//! [`host`] is the one seam to Envoy: the `Host` trait, its proxy-wasm implementation and its dynamic-module
//! implementation (the only code that calls either ABI), a `FakeHost` for tests, and the adapter that runs every
//! filter's `Stream` in either.

pub mod body;
pub mod clock;
pub mod config;
pub mod host;
pub mod matcher;
pub mod metrics;
pub mod pairs;
pub mod regex;
pub mod reply;
pub mod request;
pub mod store;
pub mod units;

pub use config::ConfigError;
pub use host::{Flow, Host, HostError, HostResult, Side};
pub use matcher::RouteMatch;
pub use reply::LocalReply;
pub use request::RequestHeaders;
pub use units::{ByteSize, DurationStr};
