//! The `aws` proxy-wasm filter (see README.md, section "aws").

pub mod config;
pub mod credentials;
mod filter;
pub mod lambda;
pub mod signing;
pub mod sigv4;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(filter::Root::default()));
}}
