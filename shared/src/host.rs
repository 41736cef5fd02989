//! The thin adapter over proxy-wasm hostcalls that the filters' `filter.rs` glue uses.
//!
//! Two reasons it exists: the SDK's string-returning wrappers `unwrap` UTF-8 (a client sending a non-UTF-8 header
//! byte would panic the worker's VM), and its local-reply wrapper cannot pass a gRPC status with an HTTP status.
//! Everything here reads bytes and converts leniently, and never panics on a host status: a header map the host
//! cannot give in the current phase reads as absent.

use std::borrow::Cow;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType};

use crate::config::ConfigError;
use crate::reply::LocalReply;
use crate::request::RequestHeaders;

/// Routes the `log` crate to Envoy's log at Envoy's current level for Wasm (read once, when the VM starts).
pub fn init_logging() {
    let level = hostcalls::get_log_level().unwrap_or(LogLevel::Info);
    proxy_wasm::set_log_level(level);
}

/// Parses the plugin configuration. On error logs `<filter>: invalid configuration: <path>: <problem>` at error
/// level and returns `None`, so that `on_configure` returns false and Envoy rejects the configuration.
pub fn configure<T>(
    filter: &str,
    bytes: Option<Vec<u8>>,
    parse: impl FnOnce(&[u8]) -> Result<T, ConfigError>,
) -> Option<T> {
    match parse(bytes.as_deref().unwrap_or_default()) {
        Ok(config) => Some(config),
        Err(err) => {
            log::error!("{filter}: invalid configuration: {err}");
            None
        }
    }
}

/// The current request's headers, read one at a time from the host, on demand.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRequest;

impl RequestHeaders for HostRequest {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        request_header(name).map(Cow::Owned)
    }

    fn route_name(&self) -> Option<Cow<'_, str>> {
        property(&["xds", "route_name"]).map(Cow::Owned)
    }
}

/// The current request's headers, read all at once from the host on the first lookup and kept.
///
/// Each value the host returns costs a call back into the VM to allocate it (about as much as the lookup
/// itself), so a filter that needs more than one header, or all of them, reads the map once through this.
#[derive(Debug, Default)]
pub struct RequestSnapshot {
    headers: std::cell::OnceCell<Vec<(String, String)>>,
}

impl RequestSnapshot {
    /// All request headers, in order (read now if not yet).
    pub fn pairs(&self) -> &Vec<(String, String)> {
        self.headers.get_or_init(request_headers)
    }

    /// The headers, read now if not yet, taken out of the snapshot.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.headers.into_inner().unwrap_or_else(request_headers)
    }
}

impl RequestHeaders for RequestSnapshot {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.pairs().as_slice().header(name)
    }

    fn route_name(&self) -> Option<Cow<'_, str>> {
        HostRequest.route_name()
    }
}

/// A request header (lower-case name), non-UTF-8 bytes replaced.
pub fn request_header(name: &str) -> Option<String> {
    map_value(MapType::HttpRequestHeaders, name)
}

fn map_value(map: MapType, name: &str) -> Option<String> {
    abi::header_map_value(map, name).map(into_string)
}

/// All request headers, in order, non-UTF-8 bytes replaced. Empty when the host has none to give (e.g. after
/// the headers were sent on).
pub fn request_headers() -> Vec<(String, String)> {
    abi::header_map_pairs(MapType::HttpRequestHeaders)
        .map(|pairs| pairs.into_iter().map(|(name, value)| (name, into_string(value))).collect())
        .unwrap_or_default()
}

/// A host property as text (`["source", "address"]`, `["xds", "route_name"]`, ...).
pub fn property(path: &[&str]) -> Option<String> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(bytes)) if !bytes.is_empty() => Some(into_string(bytes)),
        _ => None,
    }
}

/// The downstream client's address without the port (Envoy's `source.address`), never a header.
pub fn client_ip() -> Option<String> {
    property(&["source", "address"]).map(|address| crate::request::strip_port(&address).to_string())
}

fn into_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

/// Sends a local reply for the current request. Errors are returned (and should be logged), never panicked on.
pub fn send_local_reply(reply: &LocalReply) -> Result<(), String> {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    abi::send_local_response(reply.status, &headers, &reply.body, reply.grpc_status)
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // ABI calls whose SDK wrappers panic on host statuses (or lack the gRPC status we need)
mod abi {
    use proxy_wasm::types::MapType;

    const OK: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    /// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`.
    fn take_host_buffer(data: *mut u8, size: usize, status: u32) -> Option<Vec<u8>> {
        if status != OK {
            return None; // NotFound, or a map the host cannot give in this phase (BadArgument)
        }
        if data.is_null() {
            return Some(Vec::new());
        }
        // SAFETY: the host filled `data`/`size` with a buffer allocated by this module's allocator with exactly
        // `size` bytes (the SDK's own wrappers take it back the same way).
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    pub fn header_map_value(map: MapType, name: &str) -> Option<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the key points into a live &str; the out-pointers are to locals.
        let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
        take_host_buffer(data, size, status)
    }

    pub fn header_map_pairs(map: MapType) -> Option<Vec<(String, Vec<u8>)>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the out-pointers are to locals.
        let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
        crate::pairs::deserialize(&take_host_buffer(data, size, status)?)
    }

    pub fn send_local_response(
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        grpc_status: Option<u32>,
    ) -> Result<(), String> {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let headers = crate::pairs::serialize(&headers);
        let details = b"wasm_filter_local_reply";
        let grpc_status = grpc_status.and_then(|s| i32::try_from(s).ok()).unwrap_or(-1);
        // SAFETY: every pointer/length pair points into a live buffer owned by this frame.
        let status = unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                grpc_status,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(format!("local reply refused by the host (status {status})"))
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod abi {
    use proxy_wasm::types::MapType;

    pub fn header_map_value(_: MapType, _: &str) -> Option<Vec<u8>> {
        None
    }

    pub fn header_map_pairs(_: MapType) -> Option<Vec<(String, Vec<u8>)>> {
        None
    }

    pub fn send_local_response(_: u32, _: &[(&str, &str)], _: &[u8], _: Option<u32>) -> Result<(), String> {
        Err("local replies need a proxy-wasm host".to_string())
    }
}
