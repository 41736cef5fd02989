//! The no-op filter: it does nothing, so a request pays only for what any filter of its build costs. The
//! benchmark reads every filter's cost against this floor.
//!
//! As a proxy-wasm module (`noop.wasm`) that is the ABI: Envoy calling into the VM for each event and the SDK's
//! dispatch. As a dynamic module (`libnoop.so`, every target but wasm32) it is the filters' own host layer
//! (`shared::dynamic_module!`) with a stream that lets everything pass.

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(target_arch = "wasm32")]
mod wasm;
