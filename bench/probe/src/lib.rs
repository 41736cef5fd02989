//! The probe filter: on each request's headers it makes `count` host calls of one kind, configured as
//! `"<kind>:<count>"` (kinds: `get`, `miss`, `pairs`, `set`, `metric`, `shared_get`, `shared_cas`, `clock`;
//! `body_read`, `body_replace` at the end of the request body). The benchmark compares it with the no-op
//! filter to tell what one call costs, which is where most of a filter's time goes.
//!
//! A third part `:hold` (`"body_read:1:hold"`) makes the probe hold the request headers until the body is complete,
//! as the body filters do (it needs `allow_on_headers_stop_iteration: true`): the floor of the body rows.
//!
//! The kind `panic` is for the recovery test: it marks every request with `x-probe-vm: alive` and panics on a
//! request that carries `x-probe-panic`, which kills the worker's VM (Envoy replaces it under `FAIL_RELOAD`).
//!
//! The dynamic-module build (`libprobe.so`, every target but wasm32) has the `panic` kind only: there a panic
//! answers that request with a 500 and the filter goes on.

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(target_arch = "wasm32")]
mod wasm;
