//! Helpers shared by every filter of the set.
//!
//! Everything here except [`host`] is pure logic that runs and is unit-tested on the host with `cargo test`.
//! [`host`] is the thin adapter over proxy-wasm hostcalls; only the filters' `filter.rs` glue calls it.

pub mod body;
pub mod clock;
pub mod config;
pub mod host;
pub mod matcher;
pub mod metrics;
pub mod pairs;
pub mod reply;
pub mod request;
pub mod units;

pub use config::ConfigError;
pub use matcher::RouteMatch;
pub use reply::LocalReply;
pub use request::RequestHeaders;
pub use units::{ByteSize, DurationStr};
