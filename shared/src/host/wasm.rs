//! [`Host`] over the raw proxy-wasm ABI: every status becomes a [`HostError`], nothing panics.

use std::time::Duration;

use super::abi::{self, buffer, map};
use super::{lossy, CallResponse, GrpcCall, HostError, HostResult, HttpCall, Side};
use crate::reply::LocalReply;
use crate::store::SharedStore;

/// The current proxy-wasm context's host. Stateless: the host knows which context is current.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

fn header_map(side: Side) -> u32 {
    match side {
        Side::Request => map::REQUEST_HEADERS,
        Side::Response => map::RESPONSE_HEADERS,
    }
}

fn body_buffer(side: Side) -> u32 {
    match side {
        Side::Request => buffer::REQUEST_BODY,
        Side::Response => buffer::RESPONSE_BODY,
    }
}

/// NotFound means "absent" for lookups.
fn optional(result: HostResult<Vec<u8>>) -> HostResult<Option<Vec<u8>>> {
    match result {
        Ok(bytes) => Ok(Some(bytes)),
        Err(HostError::NotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Absent or empty buffers read as no bytes.
fn bytes_or_empty(result: HostResult<Vec<u8>>) -> HostResult<Vec<u8>> {
    match result {
        Err(HostError::NotFound | HostError::Empty) => Ok(Vec::new()),
        other => other,
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn sdk_status(status: proxy_wasm::types::Status) -> HostError {
    use proxy_wasm::types::Status;
    match status {
        Status::NotFound => HostError::NotFound,
        Status::BadArgument => HostError::BadArgument,
        Status::ParseFailure => HostError::ParseFailure,
        Status::Empty => HostError::Empty,
        Status::CasMismatch => HostError::CasMismatch,
        _ => HostError::InternalFailure,
    }
}

fn decode_pairs(bytes: &[u8]) -> HostResult<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    crate::pairs::deserialize(bytes).ok_or(HostError::ParseFailure)
}

impl super::Host for WasmHost {
    fn header(&self, side: Side, name: &str) -> HostResult<Option<Vec<u8>>> {
        optional(abi::header_map_value(header_map(side), name))
    }

    fn headers(&self, side: Side) -> HostResult<Vec<(String, Vec<u8>)>> {
        decode_pairs(&abi::header_map_pairs(header_map(side))?)
    }

    fn set_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()> {
        abi::replace_header(header_map(side), name, value)
    }

    fn add_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()> {
        abi::add_header(header_map(side), name, value)
    }

    fn remove_header(&self, side: Side, name: &str) -> HostResult<()> {
        abi::remove_header(header_map(side), name)
    }

    fn body(&self, side: Side, size: usize) -> HostResult<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        bytes_or_empty(abi::buffer_bytes(body_buffer(side), 0, size))
    }

    fn set_body(&self, side: Side, size: usize, body: &[u8]) -> HostResult<()> {
        abi::set_buffer_bytes(body_buffer(side), 0, size, body)
    }

    fn send_reply(&self, reply: &LocalReply) -> HostResult<()> {
        let headers: Vec<(&str, &[u8])> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        let headers = crate::pairs::serialize(&headers);
        let grpc_status = reply.grpc_status.and_then(|s| i32::try_from(s).ok()).unwrap_or(-1);
        abi::send_local_response(reply.status, &reply.details, &reply.body, &headers, grpc_status)
    }

    fn resume(&self, side: Side) -> HostResult<()> {
        abi::continue_stream(match side {
            Side::Request => 0,
            Side::Response => 1,
        })
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        // The ABI's path: each part followed by a NUL.
        let mut serialized = Vec::with_capacity(path.iter().map(|p| p.len() + 1).sum());
        for part in path {
            serialized.extend_from_slice(part.as_bytes());
            serialized.push(0);
        }
        optional(abi::property(&serialized))
    }

    // Callouts go through the SDK's own wrappers: its dispatcher delivers an answer only for a token that its
    // wrapper registered (and panics on any other). The wrappers panic only on statuses Envoy does not return for
    // these calls (it answers Ok, BadArgument or InternalFailure to an HTTP call, Ok, ParseFailure or
    // InternalFailure to a gRPC call); everything else becomes a HostError here.
    fn http_call(&self, call: &HttpCall<'_>) -> HostResult<u32> {
        let mut headers = Vec::with_capacity(call.headers.len());
        for (name, value) in call.headers {
            headers.push((*name, std::str::from_utf8(value).map_err(|_| HostError::BadArgument)?));
        }
        proxy_wasm::hostcalls::dispatch_http_call(call.cluster, headers, Some(call.body), Vec::new(), call.timeout)
            .map_err(sdk_status)
    }

    fn grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32> {
        proxy_wasm::hostcalls::dispatch_grpc_call(
            call.cluster,
            call.service,
            call.method,
            Vec::new(),
            Some(call.message),
            call.timeout,
        )
        .map_err(sdk_status)
    }

    fn set_tick_period(&self, period: Duration) -> HostResult<()> {
        abi::set_tick_period(millis(period))
    }

    fn monotonic_nanos(&self) -> u64 {
        crate::clock::monotonic_nanos()
    }

    fn unix_nanos(&self) -> u64 {
        crate::clock::unix_nanos()
    }

    fn clear_route_cache(&self) -> HostResult<()> {
        Ok(()) // Envoy cleared it at the request-header change (and without one the route stays the same)
    }
}

impl SharedStore for WasmHost {
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        match abi::shared_data(key) {
            Ok((value, cas)) => Ok(((!value.is_empty()).then_some(value), Some(cas))),
            Err(HostError::NotFound) => Ok((None, None)),
            Err(err) => Err(err),
        }
    }

    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
        abi::set_shared_data(key, value.unwrap_or_default(), cas)
    }
}

impl WasmHost {
    /// The plugin configuration (`configuration` in the Wasm filter's config); empty when none is set.
    pub fn plugin_configuration(&self, size: usize) -> HostResult<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        bytes_or_empty(abi::buffer_bytes(buffer::PLUGIN_CONFIGURATION, 0, size))
    }

    /// The answer to an HTTP callout, read in `on_http_call_response`. A call that failed without an answer has
    /// no headers: then `status` is `None` and nothing else is read.
    pub fn call_response(&self, num_headers: usize, body_size: usize) -> CallResponse {
        if num_headers == 0 {
            return CallResponse::default();
        }
        let headers: Vec<(String, String)> =
            match abi::header_map_pairs(map::CALL_RESPONSE_HEADERS).and_then(|bytes| decode_pairs(&bytes)) {
                Ok(pairs) => pairs.into_iter().map(|(name, value)| (name, lossy(value))).collect(),
                Err(err) => {
                    // Read as "no answer": the caller reports the call as failed.
                    log::warn!("callout answer's headers unavailable: {err}");
                    Vec::new()
                }
            };
        let status = headers.iter().find(|(n, _)| n == ":status").and_then(|(_, v)| v.parse().ok());
        let body = if body_size == 0 {
            Vec::new()
        } else {
            bytes_or_empty(abi::buffer_bytes(buffer::CALL_RESPONSE_BODY, 0, body_size)).unwrap_or_else(|err| {
                log::warn!("callout answer's body unavailable: {err}");
                Vec::new()
            })
        };
        CallResponse { status, headers, body }
    }

    /// The message of a gRPC callout's answer, read in `on_grpc_call_response`.
    pub fn grpc_message(&self, size: usize) -> Vec<u8> {
        if size == 0 {
            return Vec::new();
        }
        bytes_or_empty(abi::buffer_bytes(buffer::GRPC_RECEIVE, 0, size)).unwrap_or_else(|err| {
            log::warn!("gRPC answer unavailable: {err}");
            Vec::new()
        })
    }
}

/// Routes the `log` crate to Envoy's log (at Envoy's level for Wasm, read once when the VM starts), and panics to
/// a critical log line naming the filter before the VM aborts (Envoy then replaces the VM when the plugin's
/// `failure_policy` is `FAIL_RELOAD`). Neither path can panic itself: the SDK's own logger unwraps host statuses.
pub fn init_logging(filter: &'static str) {
    // 0 trace .. 4 error, 5 critical (then nothing of ours is logged).
    let level = match abi::log_level() {
        Ok(0) => log::LevelFilter::Trace,
        Ok(1) => log::LevelFilter::Debug,
        Ok(3) => log::LevelFilter::Warn,
        Ok(4) => log::LevelFilter::Error,
        Ok(5) => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        std::panic::set_hook(Box::new(move |info| {
            let _ = abi::log(5, &format!("{filter}: panic, the VM stops: {info}"));
        }));
    }
    log::set_max_level(level);
}

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        // Nowhere to report a refused log line.
        let _ = abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
