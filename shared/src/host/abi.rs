//! The raw proxy-wasm ABI (0.2.1) imports: the only `unsafe` FFI in the project (callouts excepted: they go through
//! the SDK's wrappers, whose dispatcher must register their tokens; see `wasm.rs`). Each function returns the host's
//! status as a [`HostError`]; none panics. On other targets every call answers `Unimplemented`, so host unit tests
//! link (they use [`super::FakeHost`] instead).

use super::{HostError, HostResult};

/// `MapType` of the ABI.
pub mod map {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const RESPONSE_HEADERS: u32 = 2;
    pub const CALL_RESPONSE_HEADERS: u32 = 6;
}

/// `BufferType` of the ABI.
pub mod buffer {
    pub const REQUEST_BODY: u32 = 0;
    pub const RESPONSE_BODY: u32 = 1;
    pub const CALL_RESPONSE_BODY: u32 = 4;
    pub const GRPC_RECEIVE: u32 = 5;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

/// `MetricType` of the ABI.
pub mod metric {
    pub const COUNTER: u32 = 0;
    pub const GAUGE: u32 = 1;
}

fn status(code: u32) -> HostResult<()> {
    match code {
        0 => Ok(()),
        1 => Err(HostError::NotFound),
        2 => Err(HostError::BadArgument),
        3 => Err(HostError::SerializationFailure),
        4 => Err(HostError::ParseFailure),
        7 => Err(HostError::Empty),
        8 => Err(HostError::CasMismatch),
        10 => Err(HostError::InternalFailure),
        12 => Err(HostError::Unimplemented),
        other => Err(HostError::Unknown(other)),
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the ABI itself; every pointer passed points into a live buffer of this frame
mod imp {
    use super::{status, HostResult};

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        fn proxy_get_log_level(return_level: *mut u32) -> u32;
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
        fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            data: *const u8,
            data_size: usize,
        ) -> u32;
        fn proxy_send_local_response(
            status_code: u32,
            details_data: *const u8,
            details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        fn proxy_continue_stream(stream_type: u32) -> u32;
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        fn proxy_set_tick_period_milliseconds(period_ms: u32) -> u32;
        fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
        fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    }

    /// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`.
    fn take(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() || size == 0 {
            return Vec::new();
        }
        // SAFETY: the host filled `data`/`size` with a buffer of exactly `size` bytes allocated by this module's
        // allocator (the SDK's exported `proxy_on_memory_allocate`, i.e. `Vec::with_capacity(size)`).
        unsafe { Vec::from_raw_parts(data, size, size) }
    }

    pub fn log(level: u32, message: &str) -> HostResult<()> {
        // SAFETY: points into a live &str.
        status(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
    }

    pub fn log_level() -> HostResult<u32> {
        let mut level = 0;
        // SAFETY: the out-pointer is to a local.
        status(unsafe { proxy_get_log_level(&mut level) })?;
        Ok(level)
    }

    pub fn header_map_value(map: u32, name: &str) -> HostResult<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the key points into a live &str; the out-pointers are to locals.
        status(unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) })?;
        Ok(take(data, size))
    }

    pub fn header_map_pairs(map: u32) -> HostResult<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the out-pointers are to locals.
        status(unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) })?;
        Ok(take(data, size))
    }

    pub fn replace_header(map: u32, name: &str, value: &[u8]) -> HostResult<()> {
        // SAFETY: both point into live slices.
        status(unsafe { proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
    }

    pub fn add_header(map: u32, name: &str, value: &[u8]) -> HostResult<()> {
        // SAFETY: both point into live slices.
        status(unsafe { proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
    }

    pub fn remove_header(map: u32, name: &str) -> HostResult<()> {
        // SAFETY: points into a live &str.
        status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
    }

    pub fn buffer_bytes(buffer: u32, start: usize, max_size: usize) -> HostResult<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the out-pointers are to locals.
        status(unsafe { proxy_get_buffer_bytes(buffer, start, max_size, &mut data, &mut size) })?;
        Ok(take(data, size))
    }

    pub fn set_buffer_bytes(buffer: u32, start: usize, size: usize, bytes: &[u8]) -> HostResult<()> {
        // SAFETY: points into a live slice.
        status(unsafe { proxy_set_buffer_bytes(buffer, start, size, bytes.as_ptr(), bytes.len()) })
    }

    pub fn send_local_response(code: u32, details: &str, body: &[u8], headers: &[u8], grpc: i32) -> HostResult<()> {
        // SAFETY: every pointer/length pair points into a live buffer of the caller.
        status(unsafe {
            proxy_send_local_response(
                code,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                grpc,
            )
        })
    }

    pub fn continue_stream(stream: u32) -> HostResult<()> {
        // SAFETY: no pointers.
        status(unsafe { proxy_continue_stream(stream) })
    }

    pub fn property(path: &[u8]) -> HostResult<Vec<u8>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the path points into a live slice; the out-pointers are to locals.
        status(unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) })?;
        Ok(take(data, size))
    }

    pub fn shared_data(key: &str) -> HostResult<(Vec<u8>, u32)> {
        let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
        // SAFETY: the key points into a live &str; the out-pointers are to locals.
        status(unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) })?;
        Ok((take(data, size), cas))
    }

    pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> HostResult<()> {
        // SAFETY: both point into live slices.
        status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
    }

    pub fn set_tick_period(period_ms: u32) -> HostResult<()> {
        // SAFETY: no pointers.
        status(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
    }

    pub fn define_metric(kind: u32, name: &str) -> HostResult<u32> {
        let mut id = 0;
        // SAFETY: the name points into a live &str; the id is a local.
        status(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    pub fn increment_metric(id: u32, offset: i64) -> HostResult<()> {
        // SAFETY: no pointers.
        status(unsafe { proxy_increment_metric(id, offset) })
    }

    pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
        // SAFETY: no pointers.
        status(unsafe { proxy_record_metric(id, value) })
    }
}

/// Not in a proxy-wasm host: every call is refused, so code reached by host unit tests links and fails cleanly.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{status, HostResult};

    const UNIMPLEMENTED: u32 = 12;

    pub fn log(_: u32, _: &str) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn log_level() -> HostResult<u32> {
        status(UNIMPLEMENTED).map(|()| 0)
    }
    pub fn header_map_value(_: u32, _: &str) -> HostResult<Vec<u8>> {
        status(UNIMPLEMENTED).map(|()| Vec::new())
    }
    pub fn header_map_pairs(_: u32) -> HostResult<Vec<u8>> {
        status(UNIMPLEMENTED).map(|()| Vec::new())
    }
    pub fn replace_header(_: u32, _: &str, _: &[u8]) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn add_header(_: u32, _: &str, _: &[u8]) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn remove_header(_: u32, _: &str) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn buffer_bytes(_: u32, _: usize, _: usize) -> HostResult<Vec<u8>> {
        status(UNIMPLEMENTED).map(|()| Vec::new())
    }
    pub fn set_buffer_bytes(_: u32, _: usize, _: usize, _: &[u8]) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn send_local_response(_: u32, _: &str, _: &[u8], _: &[u8], _: i32) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn continue_stream(_: u32) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn property(_: &[u8]) -> HostResult<Vec<u8>> {
        status(UNIMPLEMENTED).map(|()| Vec::new())
    }
    pub fn shared_data(_: &str) -> HostResult<(Vec<u8>, u32)> {
        status(UNIMPLEMENTED).map(|()| (Vec::new(), 0))
    }
    pub fn set_shared_data(_: &str, _: &[u8], _: u32) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn set_tick_period(_: u32) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn define_metric(_: u32, _: &str) -> HostResult<u32> {
        status(UNIMPLEMENTED).map(|()| 0)
    }
    pub fn increment_metric(_: u32, _: i64) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
    pub fn record_metric(_: u32, _: u64) -> HostResult<()> {
        status(UNIMPLEMENTED)
    }
}

pub use imp::*;
