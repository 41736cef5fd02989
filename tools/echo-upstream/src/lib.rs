//! An in-process HTTP upstream that echoes each request as JSON ([`echo`]), and the background server it runs on
//! ([`server`]). The integration tests use it as a library; the demo gateway runs it as a program.

pub mod echo;
pub mod server;

pub use echo::{EchoUpstream, Received};
