//! The one seam between the filters and Envoy.
//!
//! - [`Host`]: everything a filter asks of Envoy during a request (headers, body, local replies, properties,
//!   shared data, callouts, clocks). Every call returns a [`HostResult`]: a host status the filter did not expect
//!   is a typed [`HostError`] the caller must handle, never a panic.
//! - [`WasmHost`]: the implementation over the raw proxy-wasm ABI ([`abi`], the only code that calls it).
//! - [`native`]: the implementation over Envoy's dynamic-module ABI, and the module's entry points (every target
//!   but wasm32: the filter crates' cdylibs are then `lib<filter>.so`).
//! - [`FakeHost`]: an in-memory host with Envoy's semantics for unit tests of the filters' stream logic.
//! - [`adapter`]: implements proxy-wasm's `RootContext`/`HttpContext` once for every filter: a filter provides a
//!   [`Filter`] (configuration, ticks) and its [`Stream`] (one request's journey) and plugs them in with
//!   [`crate::proxy_filter!`].

pub mod abi;
pub mod adapter;
mod fake;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
#[cfg(target_arch = "wasm32")]
mod wasm;

use std::fmt;
use std::time::Duration;

pub use adapter::{Filter, Stream};
pub use fake::{FakeHost, RecordedCall, RecordedGrpcCall};
#[cfg(target_arch = "wasm32")]
pub use wasm::{init_logging, WasmHost};

use crate::reply::LocalReply;
use crate::store::SharedStore;

/// A host status other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The header, property or key is not there.
    NotFound,
    /// The host refused the call as made, e.g. a header map it cannot give in the current phase.
    BadArgument,
    SerializationFailure,
    ParseFailure,
    /// The buffer or map is empty (or absent).
    Empty,
    /// A shared-data write lost a compare-and-swap race.
    CasMismatch,
    /// The host could not do it (e.g. a callout to a cluster that does not exist).
    InternalFailure,
    /// The host does not offer this call (or this is not a proxy-wasm host).
    Unimplemented,
    /// A status code this ABI version does not define.
    Unknown(u32),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::NotFound => f.write_str("not found"),
            HostError::BadArgument => f.write_str("bad argument"),
            HostError::SerializationFailure => f.write_str("serialization failure"),
            HostError::ParseFailure => f.write_str("parse failure"),
            HostError::Empty => f.write_str("empty"),
            HostError::CasMismatch => f.write_str("CAS mismatch"),
            HostError::InternalFailure => f.write_str("internal failure"),
            HostError::Unimplemented => f.write_str("unimplemented"),
            HostError::Unknown(code) => write!(f, "unknown status {code}"),
        }
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// Which message of the exchange a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// What a stream callback tells the adapter to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Let the message go on.
    Continue,
    /// Hold the message until a callout answers (the adapter resumes it when a later callback says `Continue`).
    Pause,
    /// Hold the message and keep delivering its body: the filter needs more of it. From a headers callback this
    /// needs `allow_on_headers_stop_iteration: true` in the plugin config.
    Buffer,
    /// Answer the client with this reply; the request goes no further.
    Reply(LocalReply),
}

/// An HTTP callout to a cluster (`dispatch_http_call`).
#[derive(Debug, Clone, Copy)]
pub struct HttpCall<'a> {
    pub cluster: &'a str,
    /// Pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
    pub timeout: Duration,
}

/// A unary gRPC callout to a cluster.
#[derive(Debug, Clone, Copy)]
pub struct GrpcCall<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub message: &'a [u8],
    pub timeout: Duration,
}

/// The answer to an [`HttpCall`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResponse {
    /// `None` when the call ended without an answer (reset, timeout, no healthy upstream, unknown cluster).
    pub status: Option<u32>,
    /// Response headers, non-UTF-8 bytes replaced.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer to a [`GrpcCall`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcResponse {
    /// The gRPC status code (0: OK).
    pub status: u32,
    /// The response message (empty unless OK).
    pub message: Vec<u8>,
}

/// Everything a filter asks of Envoy. Shared data comes through the [`SharedStore`] supertrait.
pub trait Host: SharedStore {
    /// One header of a message (lower-case name), as raw bytes; `Ok(None)` when absent.
    fn header(&self, side: Side, name: &str) -> HostResult<Option<Vec<u8>>>;
    /// All headers of a message, in order, as raw bytes.
    fn headers(&self, side: Side) -> HostResult<Vec<(String, Vec<u8>)>>;
    /// Replaces a header (adds it when absent).
    fn set_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()>;
    /// Adds one more value of a header.
    fn add_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()>;
    fn remove_header(&self, side: Side, name: &str) -> HostResult<()>;
    /// The body buffered so far (`size` as the body callback reported it).
    fn body(&self, side: Side, size: usize) -> HostResult<Vec<u8>>;
    /// Replaces the whole buffered body (`size` as the body callback reported it).
    fn set_body(&self, side: Side, size: usize, body: &[u8]) -> HostResult<()>;
    /// Answers the client instead of forwarding; `reply.details` shows as `%RESPONSE_CODE_DETAILS%`.
    fn send_reply(&self, reply: &LocalReply) -> HostResult<()>;
    /// Resumes a message held by an earlier `Pause`/`Buffer`.
    fn resume(&self, side: Side) -> HostResult<()>;
    /// A host attribute (`["source", "address"]`, `["xds", "route_name"]`, ...); `Ok(None)` when absent.
    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>>;
    /// Starts an HTTP callout; the answer comes to [`Stream::on_http_call_response`] with the returned token.
    fn http_call(&self, call: &HttpCall<'_>) -> HostResult<u32>;
    /// Starts a gRPC callout; the answer comes to [`Stream::on_grpc_call_response`].
    fn grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32>;
    /// How often [`Filter::on_tick`] runs (zero: never).
    fn set_tick_period(&self, period: Duration) -> HostResult<()>;
    /// Envoy's monotonic clock in nanoseconds: one epoch shared by every worker.
    fn monotonic_nanos(&self) -> u64;
    /// Wall-clock time, nanoseconds since the Unix epoch.
    fn unix_nanos(&self) -> u64;
    /// Makes Envoy select the route again for the request headers as they are now (Gloo's `clear_route_cache`).
    /// The Wasm host already does it after every request-header change, so there this call does nothing; a
    /// dynamic module keeps the route Envoy selected unless asked, as Envoy's own filters do.
    fn clear_route_cache(&self) -> HostResult<()>;

    /// A header as text (non-UTF-8 bytes replaced), for logic that compares text.
    fn header_text(&self, side: Side, name: &str) -> HostResult<Option<String>> {
        Ok(self.header(side, name)?.map(lossy))
    }

    /// All headers as text (non-UTF-8 bytes replaced).
    fn headers_text(&self, side: Side) -> HostResult<Vec<(String, String)>> {
        Ok(self.headers(side)?.into_iter().map(|(name, value)| (name, lossy(value))).collect())
    }

    /// Whether reading a few headers one by one costs less than reading the whole map: true where host calls are
    /// plain function calls (dynamic modules); false in Wasm, where every value returned is a call back into the VM.
    fn cheap_single_header_reads(&self) -> bool {
        false
    }

    /// Whether a message whose headers ended the stream can be given a body ([`Host::set_body`] with size 0, in
    /// its headers callback), as Gloo's filter does: a dynamic module can (Envoy adds it as the message's data);
    /// the proxy-wasm ABI has no way to.
    fn can_add_body_to_bodiless(&self) -> bool {
        false
    }

    /// Every value of a header, in order, joined with "," (how [`crate::RequestHeaders`] reads a repeated header),
    /// as text; `Ok(None)` when absent.
    fn header_joined_text(&self, side: Side, name: &str) -> HostResult<Option<String>> {
        let pairs = self.headers_text(side)?;
        Ok(crate::request::RequestHeaders::header(pairs.as_slice(), name).map(std::borrow::Cow::into_owned))
    }

    /// A property as text (non-UTF-8 bytes replaced); empty values read as absent.
    fn property_text(&self, path: &[&str]) -> HostResult<Option<String>> {
        Ok(self.property(path)?.filter(|bytes| !bytes.is_empty()).map(lossy))
    }

    /// The downstream client's address without the port (Envoy's `source.address`), never a header.
    fn client_ip(&self) -> HostResult<Option<String>> {
        Ok(self.property_text(&["source", "address"])?.map(|a| crate::request::strip_port(&a).to_string()))
    }

    /// Wall-clock time in whole seconds since the Unix epoch.
    fn unix_secs(&self) -> u64 {
        self.unix_nanos() / 1_000_000_000
    }
}

/// Bytes as text, invalid UTF-8 replaced (without a copy when valid).
pub fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

/// The request's headers, read all at once from the host on the first lookup and kept (each value the host
/// returns costs a call back into the VM, so one read of the whole map beats several single reads). A host that
/// cannot give them (it always can in the request-headers callback) reads as no headers, logged.
///
/// Made with [`RequestView::by_name`] on a host where single reads are cheap, lookups before any whole read go to
/// the host one name at a time (for a filter that needs a few known headers, such as a rate-limit key).
pub struct RequestView<'h> {
    host: &'h dyn Host,
    headers: std::cell::OnceCell<Vec<(String, String)>>,
    /// The names looked up one at a time and their values; `None` when the view reads the whole map.
    by_name: Option<NamedValues>,
}

/// Header names (lower case) read one at a time, and their values.
type NamedValues = std::cell::RefCell<Vec<(String, Option<String>)>>;

impl<'h> RequestView<'h> {
    pub fn new(host: &'h dyn Host) -> Self {
        RequestView { host, headers: std::cell::OnceCell::new(), by_name: None }
    }

    /// A view that looks headers up one name at a time where the host makes that cheaper than reading them all.
    pub fn by_name(host: &'h dyn Host) -> Self {
        let by_name = host.cheap_single_header_reads().then(std::cell::RefCell::default);
        RequestView { host, headers: std::cell::OnceCell::new(), by_name }
    }

    /// All request headers, in order (read now if not yet).
    pub fn pairs(&self) -> &Vec<(String, String)> {
        self.headers.get_or_init(|| read_request_headers(self.host))
    }

    /// The headers, taken out of the view.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        let host = self.host;
        self.headers.into_inner().unwrap_or_else(|| read_request_headers(host))
    }

    /// One header read from the host by name, kept for the next lookup of the same name.
    fn read_by_name(&self, names: &NamedValues, name: &str) -> Option<String> {
        if let Some((_, value)) = names.borrow().iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return value.clone();
        }
        let lower = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        let value = self.host.header_joined_text(Side::Request, &lower).unwrap_or_else(|err| {
            log::warn!("request header {name} unavailable: {err}");
            None
        });
        names.borrow_mut().push((lower.into_owned(), value.clone()));
        value
    }
}

fn read_request_headers(host: &dyn Host) -> Vec<(String, String)> {
    host.headers_text(Side::Request).unwrap_or_else(|err| {
        log::warn!("request headers unavailable: {err}");
        Vec::new()
    })
}

impl crate::request::RequestHeaders for RequestView<'_> {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match &self.by_name {
            Some(names) if self.headers.get().is_none() => self.read_by_name(names, name).map(std::borrow::Cow::Owned),
            _ => self.pairs().as_slice().header(name),
        }
    }

    fn route_name(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.host.property_text(&["xds", "route_name"]).ok().flatten().map(std::borrow::Cow::Owned)
    }
}
