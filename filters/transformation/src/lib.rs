//! The `transformation` proxy-wasm filter (see README.md, section "transformation").

pub mod body;
pub mod config;
pub mod extractor;
mod filter;
pub mod functions;
pub mod inja;
pub mod template;
pub mod transform;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(filter::Root::default()));
}}
