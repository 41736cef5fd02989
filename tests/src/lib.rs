//! The integration-test harness: real Envoy processes with the filters' .wasm files, an in-process echo
//! upstream, and small helpers to read Envoy's admin interface.
//!
//! Every test starts its own Envoy (two workers, dynamic base id, every listener and the admin on port 0, its own
//! temporary directory), so tests run in parallel without sharing ports or files.

pub mod admin;
pub mod bench;
pub mod envoy;
pub mod moto;
pub mod nats_server;
pub mod paths;
pub mod rls;

pub use echo_upstream::{echo, server, EchoUpstream};
pub use envoy::{Build, Envoy, EnvoyConfig};
