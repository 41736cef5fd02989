//! The `transformation` proxy-wasm filter (see README.md, section "transformation").

pub mod config;
mod filter;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(filter::Root::default()));
}}
