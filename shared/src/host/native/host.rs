//! [`Host`] over Envoy's dynamic-module ABI. A `NativeHost` is made for one event hook: of a stream (headers,
//! body, callouts, local replies) or of a configuration (ticks, configuration-level callouts). Every callback
//! failure becomes a [`HostError`]; nothing here panics.

#![allow(unsafe_code)] // calls into the ABI; every pointer passed points into a live local or argument

use std::cell::RefCell;
use std::ffi::c_void;
use std::time::Duration;

use super::ffi::{self, attribute, body_type, callout_init, header_type, EnvoyBuffer, EnvoyHeader, ModuleBuffer};
use super::{grpc, metadata, ModuleConfig};
use crate::host::{lossy, CallResponse, GrpcCall, HostError, HostResult, HttpCall, Side};
use crate::reply::LocalReply;
use crate::store::SharedStore;

/// The Envoy object a hook runs for.
#[derive(Clone, Copy)]
pub(super) enum Scope<'a> {
    /// One HTTP stream; `grpc` collects the ids of the callouts that carry gRPC.
    Stream { filter: *mut c_void, grpc: &'a RefCell<Vec<u64>> },
    /// The configuration itself (main thread): ticks and configuration-level callouts. `ticks` is set for the one
    /// instance of the filter that ticks.
    Config { ticks: bool },
}

pub struct NativeHost<'a> {
    pub(super) config: &'a ModuleConfig,
    pub(super) scope: Scope<'a>,
}

fn api() -> HostResult<&'static ffi::Api> {
    super::API.get().ok_or(HostError::Unimplemented)
}

fn header_map(side: Side) -> u32 {
    match side {
        Side::Request => header_type::REQUEST_HEADER,
        Side::Response => header_type::RESPONSE_HEADER,
    }
}

fn body_types(side: Side) -> (u32, u32) {
    match side {
        Side::Request => (body_type::BUFFERED_REQUEST, body_type::RECEIVED_REQUEST),
        Side::Response => (body_type::BUFFERED_RESPONSE, body_type::RECEIVED_RESPONSE),
    }
}

fn ok(done: bool) -> HostResult<()> {
    if done {
        Ok(())
    } else {
        Err(HostError::BadArgument)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Which attribute of the ABI answers a proxy-wasm property path (`None`: the ABI has no such attribute).
fn attribute_of(path: &[&str]) -> Option<u32> {
    Some(match path {
        ["source", "address"] => attribute::SOURCE_ADDRESS,
        ["xds", "route_name"] => attribute::XDS_ROUTE_NAME,
        ["response", "code_details"] => attribute::RESPONSE_CODE_DETAILS,
        ["upstream", "address"] => attribute::UPSTREAM_ADDRESS,
        _ => return None,
    })
}

/// The answer to a callout as the filters see it. `headers`/`chunks` are Envoy's, valid for the current hook.
///
/// # Safety
/// The pointers and sizes must be the ones Envoy passed to the callout hook being run.
pub(super) unsafe fn call_response(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> CallResponse {
    if result != ffi::CALLOUT_SUCCESS || headers.is_null() {
        return CallResponse::default();
    }
    // SAFETY: Envoy passes `headers_size` headers and `chunks_size` chunks, alive for this hook.
    let headers: Vec<(String, String)> = unsafe { std::slice::from_raw_parts(headers, headers_size) }
        .iter()
        // SAFETY: each buffer is Envoy's, alive for this hook.
        .map(|h| unsafe { (lossy(h.key.to_vec()), lossy(h.value.to_vec())) })
        .collect();
    let mut body = Vec::new();
    if !chunks.is_null() {
        // SAFETY: as above.
        for chunk in unsafe { std::slice::from_raw_parts(chunks, chunks_size) } {
            // SAFETY: as above.
            body.extend_from_slice(unsafe { chunk.as_slice() });
        }
    }
    let status = headers.iter().find(|(n, _)| n == ":status").and_then(|(_, v)| v.parse().ok());
    CallResponse { status, headers, body }
}

impl NativeHost<'_> {
    fn filter(&self) -> HostResult<*mut c_void> {
        match self.scope {
            Scope::Stream { filter, .. } => Ok(filter),
            Scope::Config { .. } => Err(HostError::BadArgument),
        }
    }

    /// The `index`-th value of a header (Envoy's buffer, valid for this hook) and how many values it has. Envoy
    /// answers `false` both for an absent header and for a failure, so the count (0 when absent) tells them apart.
    fn header_value(&self, side: Side, name: &str, index: usize) -> HostResult<(Option<EnvoyBuffer>, usize)> {
        let (api, filter) = (api()?, self.filter()?);
        let mut value = EnvoyBuffer::NULL;
        let mut count = 0usize;
        // SAFETY: the key points into a live &str; the out-pointers are to locals.
        let found = unsafe {
            (api.get_header)(filter, header_map(side), ModuleBuffer::of(name.as_bytes()), &mut value, index, &mut count)
        };
        match (found, count) {
            (_, 0) => Ok((None, 0)),
            (true, _) => Ok((Some(value), count)),
            (false, _) if index >= count => Ok((None, count)),
            (false, _) => Err(HostError::BadArgument),
        }
    }

    /// The chunks of one body buffer, concatenated onto `out`.
    fn read_body(&self, api: &ffi::Api, filter: *mut c_void, kind: u32, out: &mut Vec<u8>) {
        // SAFETY: `filter` is the stream's, alive during this hook.
        let count = unsafe { (api.get_body_chunks_size)(filter, kind) };
        if count == 0 {
            return;
        }
        let mut chunks = vec![EnvoyBuffer::NULL; count];
        // SAFETY: `chunks` has room for the `count` chunks Envoy just reported.
        if unsafe { (api.get_body_chunks)(filter, kind, chunks.as_mut_ptr()) } {
            for chunk in chunks {
                // SAFETY: Envoy's chunk, alive for this hook.
                out.extend_from_slice(unsafe { chunk.as_slice() });
            }
        }
    }

    /// Whether the body Envoy delivers now is the one it buffered (then it must not be counted twice).
    fn received_is_buffered(api: &ffi::Api, filter: *mut c_void, side: Side) -> bool {
        // SAFETY: `filter` is the stream's, alive during this hook.
        unsafe {
            match side {
                Side::Request => (api.received_buffered_request_body)(filter),
                Side::Response => (api.received_buffered_response_body)(filter),
            }
        }
    }

    /// The size of the body so far: what Envoy buffered plus what it delivers in this hook.
    pub(super) fn body_size(&self, side: Side) -> usize {
        let (Ok(api), Ok(filter)) = (api(), self.filter()) else { return 0 };
        let (buffered, received) = body_types(side);
        // SAFETY: `filter` is the stream's, alive during this hook.
        let received_size = unsafe { (api.get_body_size)(filter, received) };
        if Self::received_is_buffered(api, filter, side) {
            return received_size;
        }
        // SAFETY: as above.
        let buffered_size = unsafe { (api.get_body_size)(filter, buffered) };
        buffered_size.saturating_add(received_size)
    }

    fn callout(&self, cluster: &str, headers: &[(&str, &[u8])], body: &[u8], timeout: Duration) -> HostResult<u64> {
        let api = api()?;
        let mut module_headers: Vec<ffi::ModuleHeader> =
            headers.iter().map(|(name, value)| ffi::ModuleHeader::of(name.as_bytes(), value)).collect();
        let mut id = 0u64;
        let (cluster, body) = (ModuleBuffer::of(cluster.as_bytes()), ModuleBuffer::of(body));
        let (headers_ptr, headers_len) = (module_headers.as_mut_ptr(), module_headers.len());
        let result = match self.scope {
            // SAFETY: every buffer points into a live local or argument; `id` is a local.
            Scope::Stream { filter, .. } => unsafe {
                (api.http_callout)(filter, &mut id, cluster, headers_ptr, headers_len, body, millis(timeout))
            },
            // A worker's instance of the configuration: Envoy's configuration-level callouts are main-thread only.
            Scope::Config { ticks: false } => return Err(HostError::Unimplemented),
            // SAFETY: as above; the configuration pointer lives as long as `self.config`.
            Scope::Config { ticks: true } => unsafe {
                (api.config_http_callout)(
                    self.config.envoy(),
                    &mut id,
                    cluster,
                    headers_ptr,
                    headers_len,
                    body,
                    millis(timeout),
                )
            },
        };
        match result {
            callout_init::SUCCESS => Ok(id),
            callout_init::MISSING_REQUIRED_HEADERS => Err(HostError::BadArgument),
            callout_init::CLUSTER_NOT_FOUND => Err(HostError::NotFound),
            _ => Err(HostError::InternalFailure),
        }
    }
}

impl crate::host::Host for NativeHost<'_> {
    fn header(&self, side: Side, name: &str) -> HostResult<Option<Vec<u8>>> {
        // SAFETY: the value is copied before this hook returns.
        Ok(self.header_value(side, name, 0)?.0.map(|value| unsafe { value.to_vec() }))
    }

    fn cheap_single_header_reads(&self) -> bool {
        true
    }

    fn can_add_body_to_bodiless(&self) -> bool {
        true // `set_body` in a headers hook: Envoy's `addDecodedData`/`addEncodedData`
    }

    fn header_joined_text(&self, side: Side, name: &str) -> HostResult<Option<String>> {
        let (Some(first), count) = self.header_value(side, name, 0)? else { return Ok(None) };
        // SAFETY: the values are copied before this hook returns.
        let mut joined = unsafe { first.to_vec() };
        for index in 1..count {
            if let (Some(value), _) = self.header_value(side, name, index)? {
                joined.push(b',');
                // SAFETY: as above.
                joined.extend_from_slice(unsafe { value.as_slice() });
            }
        }
        Ok(Some(lossy(joined)))
    }

    fn headers(&self, side: Side) -> HostResult<Vec<(String, Vec<u8>)>> {
        let (api, filter) = (api()?, self.filter()?);
        // SAFETY: `filter` is the stream's, alive during this hook.
        let count = unsafe { (api.get_headers_size)(filter, header_map(side)) };
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut headers = vec![EnvoyHeader::NULL; count];
        // SAFETY: `headers` has room for the `count` headers Envoy just reported.
        ok(unsafe { (api.get_headers)(filter, header_map(side), headers.as_mut_ptr()) })?;
        // SAFETY: Envoy's buffers, alive for this hook.
        Ok(headers.into_iter().map(|h| unsafe { (lossy(h.key.to_vec()), h.value.to_vec()) }).collect())
    }

    fn set_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()> {
        let (api, filter) = (api()?, self.filter()?);
        let (name, value) = (ModuleBuffer::of(name.as_bytes()), ModuleBuffer::of(value));
        // SAFETY: both buffers point into live arguments.
        ok(unsafe { (api.set_header)(filter, header_map(side), name, value) })
    }

    fn add_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()> {
        let (api, filter) = (api()?, self.filter()?);
        let (name, value) = (ModuleBuffer::of(name.as_bytes()), ModuleBuffer::of(value));
        // SAFETY: both buffers point into live arguments.
        ok(unsafe { (api.add_header)(filter, header_map(side), name, value) })
    }

    fn remove_header(&self, side: Side, name: &str) -> HostResult<()> {
        let (api, filter) = (api()?, self.filter()?);
        // A null value removes the header.
        // SAFETY: the name points into a live &str.
        ok(unsafe { (api.set_header)(filter, header_map(side), ModuleBuffer::of(name.as_bytes()), ModuleBuffer::NULL) })
    }

    fn body(&self, side: Side, size: usize) -> HostResult<Vec<u8>> {
        let (api, filter) = (api()?, self.filter()?);
        let (buffered, received) = body_types(side);
        let mut body = Vec::with_capacity(size);
        if !Self::received_is_buffered(api, filter, side) {
            self.read_body(api, filter, buffered, &mut body);
        }
        self.read_body(api, filter, received, &mut body);
        Ok(body)
    }

    fn set_body(&self, side: Side, _size: usize, body: &[u8]) -> HostResult<()> {
        let (api, filter) = (api()?, self.filter()?);
        let (buffered, received) = body_types(side);
        // SAFETY: `filter` is the stream's; `body` is a live argument.
        unsafe {
            (api.drain_body)(filter, buffered, usize::MAX);
            (api.drain_body)(filter, received, usize::MAX);
            // In a body hook the new body goes with the data being delivered; at the trailers into the buffer; in
            // a headers hook that ended the stream, as the message's only data.
            if (api.append_body)(filter, received, ModuleBuffer::of(body)) {
                return Ok(());
            }
            ok((api.append_body)(filter, buffered, ModuleBuffer::of(body)))
        }
    }

    fn send_reply(&self, reply: &LocalReply) -> HostResult<()> {
        let (api, filter) = (api()?, self.filter()?);
        let grpc_reply = reply.grpc_status.map(|status| grpc::trailers_only(status, &reply.body));
        if grpc_reply.is_some() {
            // Envoy answers a gRPC request's local reply with a gRPC status of its own (not the one we mean, and
            // the ABI cannot pass one): marked as not gRPC, the request gets our trailers-only answer as it is.
            self.set_header(Side::Request, "content-type", grpc::NOT_GRPC)?;
        }
        let (status, headers, body) = match &grpc_reply {
            Some(headers) => (200, headers.as_slice(), &[][..]),
            None => (reply.status, reply.headers.as_slice(), reply.body.as_slice()),
        };
        let mut headers: Vec<ffi::ModuleHeader> =
            headers.iter().map(|(n, v)| ffi::ModuleHeader::of(n.as_bytes(), v.as_bytes())).collect();
        // SAFETY: the headers, body and details point into `reply` and the locals.
        unsafe {
            (api.send_response)(
                filter,
                status,
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(reply.details.as_bytes()),
            );
        }
        Ok(())
    }

    fn resume(&self, side: Side) -> HostResult<()> {
        let (api, filter) = (api()?, self.filter()?);
        // SAFETY: `filter` is the stream's, alive during this hook.
        unsafe {
            match side {
                Side::Request => (api.continue_decoding)(filter),
                Side::Response => (api.continue_encoding)(filter),
            }
        }
        Ok(())
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        // The Wasm plugin's name is the dynamic module filter's `filter_name`.
        if path == ["plugin_name"] {
            return Ok(Some(self.config.name.as_bytes().to_vec()));
        }
        let metadata_source = match path {
            ["metadata"] => Some(metadata::source::DYNAMIC),
            ["xds", "cluster_metadata"] => Some(metadata::source::CLUSTER),
            ["xds", "upstream_host_metadata"] => Some(metadata::source::HOST),
            _ => None,
        };
        if let Some(source) = metadata_source {
            return Ok(metadata::read(api()?, self.filter()?, source));
        }
        let id = attribute_of(path).ok_or(HostError::Unimplemented)?;
        let (api, filter) = (api()?, self.filter()?);
        let mut value = EnvoyBuffer::NULL;
        // SAFETY: the out-pointer is to a local.
        if unsafe { (api.get_attribute_string)(filter, id, &mut value) } {
            // SAFETY: Envoy's value, alive for this hook.
            Ok(Some(unsafe { value.to_vec() }))
        } else {
            Ok(None)
        }
    }

    fn http_call(&self, call: &HttpCall<'_>) -> HostResult<u32> {
        let id = self.callout(call.cluster, call.headers, call.body, call.timeout)?;
        u32::try_from(id).map_err(|_| HostError::InternalFailure)
    }

    /// A unary gRPC call over an HTTP/2 callout (the ABI has no gRPC client): a length-prefixed message, the
    /// answer read from the response's frame and its `grpc-status` header.
    fn grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32> {
        let Scope::Stream { grpc, .. } = self.scope else { return Err(HostError::Unimplemented) };
        let path = format!("/{}/{}", call.service, call.method);
        let headers: [(&str, &[u8]); 5] = [
            (":method", b"POST"),
            (":path", path.as_bytes()),
            (":authority", call.cluster.as_bytes()),
            ("content-type", b"application/grpc"),
            ("te", b"trailers"),
        ];
        let body = grpc::frame(call.message).ok_or(HostError::BadArgument)?;
        let id = self.callout(call.cluster, &headers, &body, call.timeout)?;
        grpc.borrow_mut().push(id);
        u32::try_from(id).map_err(|_| HostError::InternalFailure)
    }

    fn set_tick_period(&self, period: Duration) -> HostResult<()> {
        match self.scope {
            // One instance per configuration ticks (on the main thread); the workers' instances do not.
            Scope::Config { ticks: true } => self.config.start_ticks(period),
            _ => Ok(()),
        }
    }

    fn monotonic_nanos(&self) -> u64 {
        crate::clock::monotonic_nanos()
    }

    fn unix_nanos(&self) -> u64 {
        crate::clock::unix_nanos()
    }

    fn clear_route_cache(&self) -> HostResult<()> {
        let (api, filter) = (api()?, self.filter()?);
        // SAFETY: `filter` is the stream's, alive during this hook.
        unsafe { (api.clear_route_cache)(filter) };
        Ok(())
    }
}

/// Shared data lives in process memory: one store for every worker of every configuration of this module, as
/// one `vm_id` in Wasm.
impl SharedStore for NativeHost<'_> {
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        Ok(super::store().get(key))
    }

    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
        super::store().compare_and_set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_paths_map_to_attributes() {
        assert_eq!(attribute_of(&["source", "address"]), Some(attribute::SOURCE_ADDRESS));
        assert_eq!(attribute_of(&["xds", "route_name"]), Some(attribute::XDS_ROUTE_NAME));
        assert_eq!(attribute_of(&["xds", "cluster_metadata"]), None);
    }

    #[test]
    fn a_failed_callout_has_no_answer() {
        // SAFETY: null pointers with zero sizes.
        let response = unsafe { call_response(1, std::ptr::null(), 0, std::ptr::null(), 0) };
        assert_eq!(response, CallResponse::default());
        let (name, value, chunk) = (b":status", b"204", b"ok");
        let header = EnvoyHeader {
            key: EnvoyBuffer { ptr: name.as_ptr(), length: name.len() },
            value: EnvoyBuffer { ptr: value.as_ptr(), length: value.len() },
        };
        let body = [EnvoyBuffer { ptr: chunk.as_ptr(), length: 2 }, EnvoyBuffer { ptr: chunk.as_ptr(), length: 1 }];
        // SAFETY: pointers into the locals above with their sizes.
        let response = unsafe { call_response(ffi::CALLOUT_SUCCESS, &header, 1, body.as_ptr(), 2) };
        assert_eq!(response.status, Some(204));
        assert_eq!(response.body, b"oko");
    }
}
