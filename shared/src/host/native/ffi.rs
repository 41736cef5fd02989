//! The part of Envoy's dynamic-module ABI (`source/extensions/dynamic_modules/abi/abi.h`, ABI `v0.2.0` of Envoy
//! 1.40) that this repository uses, declared by hand: the types, and the callbacks as a table of function pointers
//! looked up in the Envoy process when the module loads ([`Api::load`]). Looking them up instead of linking them
//! means that a missing callback (another Envoy version) refuses the module at load, naming the callback, instead
//! of killing Envoy on the first request that needs it; it also lets host unit tests link without Envoy.
//!
//! C enums are passed as `u32` (an `int` in C; every value used is small and positive).

#![allow(unsafe_code)] // the ABI itself

use std::ffi::{c_char, c_void, CStr};

/// Bytes owned by Envoy, valid until the current event hook returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const NULL: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// A copy of the bytes (none for a null buffer).
    ///
    /// # Safety
    /// The buffer must come from Envoy in the current event hook.
    pub unsafe fn to_vec(self) -> Vec<u8> {
        // SAFETY: the caller's contract.
        unsafe { self.as_slice() }.to_vec()
    }

    /// The bytes, borrowed (empty for a null buffer).
    ///
    /// # Safety
    /// The buffer must come from Envoy in the current event hook, and the slice must not outlive it.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy gave `length` readable bytes at `ptr`, alive for this hook (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// Bytes owned by the module, valid for the duration of the call they are passed to.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> Self {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    /// A null buffer: "remove" for `set_header`, "none" for a reply's details.
    pub const NULL: ModuleBuffer = ModuleBuffer { ptr: std::ptr::null(), length: 0 };
}

/// A header owned by Envoy (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHeader {
    pub key: EnvoyBuffer,
    pub value: EnvoyBuffer,
}

impl EnvoyHeader {
    pub const NULL: EnvoyHeader = EnvoyHeader { key: EnvoyBuffer::NULL, value: EnvoyBuffer::NULL };
}

/// A header owned by the module (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHeader {
    pub key: ModuleBuffer,
    pub value: ModuleBuffer,
}

impl ModuleHeader {
    pub fn of(key: &[u8], value: &[u8]) -> Self {
        ModuleHeader { key: ModuleBuffer::of(key), value: ModuleBuffer::of(value) }
    }
}

/// `envoy_dynamic_module_type_http_header_type`.
pub mod header_type {
    pub const REQUEST_HEADER: u32 = 0;
    pub const RESPONSE_HEADER: u32 = 2;
}

/// `envoy_dynamic_module_type_http_body_type`.
pub mod body_type {
    pub const RECEIVED_REQUEST: u32 = 0;
    pub const BUFFERED_REQUEST: u32 = 1;
    pub const RECEIVED_RESPONSE: u32 = 2;
    pub const BUFFERED_RESPONSE: u32 = 3;
}

/// `envoy_dynamic_module_type_attribute_id` (the ones the filters read).
pub mod attribute {
    pub const RESPONSE_CODE_DETAILS: u32 = 16;
    pub const SOURCE_ADDRESS: u32 = 24;
    pub const UPSTREAM_ADDRESS: u32 = 41;
    pub const XDS_ROUTE_NAME: u32 = 61;
}

/// `envoy_dynamic_module_type_log_level`.
pub mod log_level {
    pub const TRACE: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
    pub const CRITICAL: u32 = 5;
}

/// The status a request/response headers hook returns (`..._headers_status`).
pub mod headers_status {
    pub const CONTINUE: u32 = 0;
    pub const STOP_ITERATION: u32 = 1;
}

/// The status a body hook returns (`..._body_status`).
pub mod body_status {
    pub const CONTINUE: u32 = 0;
    pub const STOP_ITERATION_AND_BUFFER: u32 = 1;
}

/// The status a trailers hook returns (`..._trailers_status`).
pub mod trailers_status {
    pub const CONTINUE: u32 = 0;
    pub const STOP_ITERATION: u32 = 1;
}

/// `envoy_dynamic_module_type_http_callout_init_result`.
pub mod callout_init {
    pub const SUCCESS: u32 = 0;
    pub const MISSING_REQUIRED_HEADERS: u32 = 1;
    pub const CLUSTER_NOT_FOUND: u32 = 2;
}

/// `envoy_dynamic_module_type_http_callout_result`.
pub const CALLOUT_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_metrics_result`.
pub const METRICS_SUCCESS: u32 = 0;

/// The ABI version this module is written against; Envoy 1.40 logs "matched" for it and only warns on another.
pub const ABI_VERSION: &CStr = c"v0.2.0";

type FilterPtr = *mut c_void;
type ConfigPtr = *mut c_void;

/// Declares the callback table: one field per callback, its C name, and its signature as in `abi.h`.
macro_rules! callbacks {
    ($($field:ident = $symbol:literal : fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// Envoy's callbacks, resolved once per process.
        pub struct Api {
            $(pub $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Api {
            /// Every callback's C name.
            pub const SYMBOLS: &'static [&'static CStr] = &[$($symbol),*];

            /// Looks every callback up with `resolve`; `Err` lists the names it could not find.
            pub fn load(resolve: impl Fn(&CStr) -> *mut c_void) -> Result<Api, Vec<&'static CStr>> {
                let mut missing = Vec::new();
                $(
                    let $field = resolve($symbol);
                    if $field.is_null() {
                        missing.push($symbol);
                    }
                )*
                if !missing.is_empty() {
                    return Err(missing);
                }
                // SAFETY: each pointer is the process's definition of the named callback, whose C signature is the
                // one declared for it above (checked against Envoy 1.40 by the integration tests).
                Ok(unsafe {
                    Api {
                        $($field: std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                            $field,
                        ),)*
                    }
                })
            }
        }
    };
}

callbacks! {
    log = c"envoy_dynamic_module_callback_log": fn(u32, ModuleBuffer);
    log_enabled = c"envoy_dynamic_module_callback_log_enabled": fn(u32) -> bool;
    get_header = c"envoy_dynamic_module_callback_http_get_header":
        fn(FilterPtr, u32, ModuleBuffer, *mut EnvoyBuffer, usize, *mut usize) -> bool;
    get_headers_size = c"envoy_dynamic_module_callback_http_get_headers_size": fn(FilterPtr, u32) -> usize;
    get_headers = c"envoy_dynamic_module_callback_http_get_headers": fn(FilterPtr, u32, *mut EnvoyHeader) -> bool;
    set_header = c"envoy_dynamic_module_callback_http_set_header":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer) -> bool;
    add_header = c"envoy_dynamic_module_callback_http_add_header":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer) -> bool;
    send_response = c"envoy_dynamic_module_callback_http_send_response":
        fn(FilterPtr, u32, *mut ModuleHeader, usize, ModuleBuffer, ModuleBuffer);
    get_body_chunks_size = c"envoy_dynamic_module_callback_http_get_body_chunks_size": fn(FilterPtr, u32) -> usize;
    get_body_chunks = c"envoy_dynamic_module_callback_http_get_body_chunks":
        fn(FilterPtr, u32, *mut EnvoyBuffer) -> bool;
    get_body_size = c"envoy_dynamic_module_callback_http_get_body_size": fn(FilterPtr, u32) -> usize;
    append_body = c"envoy_dynamic_module_callback_http_append_body": fn(FilterPtr, u32, ModuleBuffer) -> bool;
    drain_body = c"envoy_dynamic_module_callback_http_drain_body": fn(FilterPtr, u32, usize) -> bool;
    received_buffered_request_body = c"envoy_dynamic_module_callback_http_received_buffered_request_body":
        fn(FilterPtr) -> bool;
    received_buffered_response_body = c"envoy_dynamic_module_callback_http_received_buffered_response_body":
        fn(FilterPtr) -> bool;
    clear_route_cache = c"envoy_dynamic_module_callback_http_clear_route_cache": fn(FilterPtr);
    metadata_namespaces_count = c"envoy_dynamic_module_callback_http_get_metadata_namespaces_count":
        fn(FilterPtr, u32) -> usize;
    metadata_namespaces = c"envoy_dynamic_module_callback_http_get_metadata_namespaces":
        fn(FilterPtr, u32, *mut EnvoyBuffer) -> bool;
    metadata_keys_count = c"envoy_dynamic_module_callback_http_get_metadata_keys_count":
        fn(FilterPtr, u32, ModuleBuffer) -> usize;
    metadata_keys = c"envoy_dynamic_module_callback_http_get_metadata_keys":
        fn(FilterPtr, u32, ModuleBuffer, *mut EnvoyBuffer) -> bool;
    metadata_string = c"envoy_dynamic_module_callback_http_get_metadata_string":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, *mut EnvoyBuffer) -> bool;
    metadata_number = c"envoy_dynamic_module_callback_http_get_metadata_number":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, *mut f64) -> bool;
    metadata_bool = c"envoy_dynamic_module_callback_http_get_metadata_bool":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, *mut bool) -> bool;
    metadata_list_size = c"envoy_dynamic_module_callback_http_get_metadata_list_size":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, *mut usize) -> bool;
    metadata_list_string = c"envoy_dynamic_module_callback_http_get_metadata_list_string":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, usize, *mut EnvoyBuffer) -> bool;
    metadata_list_number = c"envoy_dynamic_module_callback_http_get_metadata_list_number":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, usize, *mut f64) -> bool;
    metadata_list_bool = c"envoy_dynamic_module_callback_http_get_metadata_list_bool":
        fn(FilterPtr, u32, ModuleBuffer, ModuleBuffer, usize, *mut bool) -> bool;
    continue_decoding = c"envoy_dynamic_module_callback_http_filter_continue_decoding": fn(FilterPtr);
    continue_encoding = c"envoy_dynamic_module_callback_http_filter_continue_encoding": fn(FilterPtr);
    get_attribute_string = c"envoy_dynamic_module_callback_http_filter_get_attribute_string":
        fn(FilterPtr, u32, *mut EnvoyBuffer) -> bool;
    http_callout = c"envoy_dynamic_module_callback_http_filter_http_callout":
        fn(FilterPtr, *mut u64, ModuleBuffer, *mut ModuleHeader, usize, ModuleBuffer, u64) -> u32;
    config_http_callout = c"envoy_dynamic_module_callback_http_filter_config_http_callout":
        fn(ConfigPtr, *mut u64, ModuleBuffer, *mut ModuleHeader, usize, ModuleBuffer, u64) -> u32;
    define_counter = c"envoy_dynamic_module_callback_http_filter_config_define_counter":
        fn(ConfigPtr, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    define_gauge = c"envoy_dynamic_module_callback_http_filter_config_define_gauge":
        fn(ConfigPtr, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    increment_counter = c"envoy_dynamic_module_callback_http_filter_config_increment_counter":
        fn(ConfigPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    set_gauge = c"envoy_dynamic_module_callback_http_filter_config_set_gauge":
        fn(ConfigPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    stream_increment_counter = c"envoy_dynamic_module_callback_http_filter_increment_counter":
        fn(FilterPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    stream_set_gauge = c"envoy_dynamic_module_callback_http_filter_set_gauge":
        fn(FilterPtr, usize, *mut ModuleBuffer, usize, u64) -> u32;
    scheduler_new = c"envoy_dynamic_module_callback_http_filter_config_scheduler_new": fn(ConfigPtr) -> *mut c_void;
    scheduler_commit = c"envoy_dynamic_module_callback_http_filter_config_scheduler_commit": fn(*mut c_void, u64);
    scheduler_delete = c"envoy_dynamic_module_callback_http_filter_config_scheduler_delete": fn(*mut c_void);
}

extern "C" {
    /// glibc's symbol lookup; with a null handle (`RTLD_DEFAULT`) it searches the process, Envoy's binary first.
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// Looks a symbol up in the process (Envoy exports its callbacks in its dynamic symbol table).
pub fn process_symbol(name: &CStr) -> *mut c_void {
    // SAFETY: a NUL-terminated name and the RTLD_DEFAULT handle (null on glibc).
    unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_symbol_is_a_callback() {
        for symbol in Api::SYMBOLS {
            assert!(symbol.to_bytes().starts_with(b"envoy_dynamic_module_callback_"), "{symbol:?}");
        }
    }

    #[test]
    fn a_missing_callback_is_named() {
        let missing = Api::load(|name| {
            if name.to_bytes().ends_with(b"_log") {
                std::ptr::null_mut()
            } else {
                // Any non-null address: the table is never called here.
                process_symbol(c"dlsym")
            }
        });
        assert_eq!(missing.err(), Some(vec![c"envoy_dynamic_module_callback_log"]));
        // In a test binary (no Envoy) nothing is found.
        assert_eq!(Api::load(process_symbol).err().map(|m| m.len()), Some(Api::SYMBOLS.len()));
    }
}
