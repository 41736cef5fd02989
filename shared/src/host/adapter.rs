//! The proxy-wasm contexts, written once for every filter: a filter is a [`Filter`] (built from its
//! configuration, ticks, root-level callouts) and a [`Stream`] per request. The adapter turns each callback into
//! a [`Host`] call on [`WasmHost`], applies the [`Flow`] the stream returns, and keeps what is the same for every
//! filter out of the filters:
//! - a body that ends with trailers is complete: the stream sees the last body callback again with
//!   `end_of_stream` set, so no filter needs a trailers path;
//! - once the filter has sent a local reply, that reply's own response callbacks do not reach the stream (a
//!   filter never transforms or signs its own error);
//! - a request held for its body whose body never arrived (Envoy without `allow_on_headers_stop_iteration`
//!   turns the hold into "stop all") is reported once per VM with the setting's name.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use super::{CallResponse, Flow, GrpcResponse, Host, Side, WasmHost};

/// One filter configuration (one per plugin config and worker VM), shared by that VM's streams.
pub trait Filter: Sized + 'static {
    /// The filter's name in logs, metrics and replies.
    const NAME: &'static str;
    type Stream: Stream;

    /// Builds the filter from its JSON configuration. `previous` is the configuration this one replaces in this
    /// VM, if any (to carry state across a reload). An error names what is wrong; Envoy then rejects the config.
    fn configure(host: &dyn Host, config: &[u8], previous: Option<&Self>) -> Result<Self, String>;

    /// Runs every tick period set with [`Host::set_tick_period`].
    fn on_tick(&self, _host: &dyn Host) {}

    /// The answer to a callout the filter made outside any request (e.g. from a tick).
    fn on_http_call_response(&self, _host: &dyn Host, _token: u32, _response: CallResponse) {}

    /// The state of one new request.
    fn stream(filter: Rc<Self>) -> Self::Stream;
}

/// One request's journey through the filter. Each callback returns what to do next; the defaults let everything
/// pass.
pub trait Stream: 'static {
    fn on_request_headers(&mut self, _host: &dyn Host, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    /// `body_size` is the size of the whole body buffered so far (Envoy buffers while the stream says `Buffer`).
    fn on_request_body(&mut self, _host: &dyn Host, _body_size: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    fn on_response_headers(&mut self, _host: &dyn Host, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    fn on_response_body(&mut self, _host: &dyn Host, _body_size: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    /// The answer to an HTTP callout this stream made. `Continue` resumes the held message.
    fn on_http_call_response(&mut self, _host: &dyn Host, _token: u32, _response: CallResponse) -> Flow {
        Flow::Continue
    }

    /// The answer to a gRPC callout this stream made. `Continue` resumes the held message.
    fn on_grpc_call_response(&mut self, _host: &dyn Host, _token: u32, _response: GrpcResponse) -> Flow {
        Flow::Continue
    }
}

/// Logged once per VM (a VM is one worker's instance of the module, and statics are per instance).
static MISSING_FLAG_REPORTED: AtomicBool = AtomicBool::new(false);

/// The root context of a filter.
pub struct RootAdapter<F: Filter> {
    filter: Option<Rc<F>>,
}

impl<F: Filter> Default for RootAdapter<F> {
    fn default() -> Self {
        RootAdapter { filter: None }
    }
}

impl<F: Filter> Context for RootAdapter<F> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        if let Some(filter) = &self.filter {
            filter.on_http_call_response(&WasmHost, token, WasmHost.call_response(num_headers, body_size));
        }
    }
}

impl<F: Filter> RootContext for RootAdapter<F> {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        super::init_logging(F::NAME);
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let built = WasmHost
            .plugin_configuration(plugin_configuration_size)
            .map_err(|err| format!("cannot read the plugin configuration: {err}"))
            .and_then(|bytes| F::configure(&WasmHost, &bytes, self.filter.as_deref()));
        match built {
            Ok(filter) => {
                self.filter = Some(Rc::new(filter));
                true
            }
            Err(err) => {
                log::error!("{}: invalid configuration: {err}", F::NAME);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(filter) = &self.filter {
            filter.on_tick(&WasmHost);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(StreamAdapter::<F> {
            stream: self.filter.clone().map(F::stream),
            held: None,
            awaiting_body: false,
            replied: false,
            request_body_size: None,
            response_body_size: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The HTTP context of one request.
pub struct StreamAdapter<F: Filter> {
    /// `None` when the VM has no configuration: everything passes.
    stream: Option<F::Stream>,
    /// The message held by the last `Pause`/`Buffer`, to resume when a callout says `Continue`.
    held: Option<Side>,
    /// The request headers were held for the body and no body callback has come yet.
    awaiting_body: bool,
    /// The filter answered the request itself: its reply passes untouched.
    replied: bool,
    /// Body size of the last body callback that said `Buffer`, for a body that ends with trailers.
    request_body_size: Option<usize>,
    response_body_size: Option<usize>,
}

impl<F: Filter> StreamAdapter<F> {
    fn apply(&mut self, side: Side, flow: Flow) -> Action {
        match flow {
            Flow::Continue => {
                self.held = None;
                Action::Continue
            }
            Flow::Pause | Flow::Buffer => {
                self.held = Some(side);
                Action::Pause
            }
            Flow::Reply(reply) => {
                self.reply(&reply);
                Action::Pause
            }
        }
    }

    /// A flow returned outside a message callback (a callout's answer).
    fn apply_async(&mut self, flow: Flow) {
        match flow {
            Flow::Continue => {
                if let Some(side) = self.held.take() {
                    if let Err(err) = WasmHost.resume(side) {
                        log::warn!("{}: cannot resume the stream: {err}", F::NAME);
                    }
                }
            }
            Flow::Pause | Flow::Buffer => {}
            Flow::Reply(reply) => self.reply(&reply),
        }
    }

    fn reply(&mut self, reply: &super::LocalReply) {
        self.replied = true;
        self.held = None;
        self.awaiting_body = false;
        if let Err(err) = WasmHost.send_reply(reply) {
            log::warn!("{}: local reply ({}) refused by the host: {err}", F::NAME, reply.status);
        }
    }

    fn body(&mut self, side: Side, body_size: usize, end_of_stream: bool) -> Action {
        if side == Side::Request {
            self.awaiting_body = false;
        }
        let Some(stream) = &mut self.stream else { return Action::Continue };
        let flow = match side {
            Side::Request => stream.on_request_body(&WasmHost, body_size, end_of_stream),
            Side::Response => stream.on_response_body(&WasmHost, body_size, end_of_stream),
        };
        let buffering = (flow == Flow::Buffer && !end_of_stream).then_some(body_size);
        match side {
            Side::Request => self.request_body_size = buffering,
            Side::Response => self.response_body_size = buffering,
        }
        self.apply(side, flow)
    }

    /// Trailers end a body that was being buffered: deliver its end.
    fn trailers(&mut self, side: Side) -> Action {
        let size = match side {
            Side::Request => self.request_body_size.take(),
            Side::Response => self.response_body_size.take(),
        };
        match size {
            Some(size) => self.body(side, size, true),
            None => Action::Continue,
        }
    }
}

impl<F: Filter> Context for StreamAdapter<F> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let Some(stream) = &mut self.stream else { return };
        let flow = stream.on_http_call_response(&WasmHost, token, WasmHost.call_response(num_headers, body_size));
        self.apply_async(flow);
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, response_size: usize) {
        let Some(stream) = &mut self.stream else { return };
        let response = GrpcResponse { status, message: WasmHost.grpc_message(response_size) };
        let flow = stream.on_grpc_call_response(&WasmHost, token, response);
        self.apply_async(flow);
    }
}

impl<F: Filter> HttpContext for StreamAdapter<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(stream) = &mut self.stream else { return Action::Continue };
        let flow = stream.on_request_headers(&WasmHost, end_of_stream);
        self.awaiting_body = flow == Flow::Buffer && !end_of_stream;
        self.apply(Side::Request, flow)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Pause;
        }
        self.body(Side::Request, body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.replied {
            return Action::Pause;
        }
        self.trailers(Side::Request)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        let Some(stream) = &mut self.stream else { return Action::Continue };
        let flow = stream.on_response_headers(&WasmHost, end_of_stream);
        self.apply(Side::Response, flow)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        self.body(Side::Response, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.replied {
            return Action::Continue;
        }
        self.trailers(Side::Response)
    }

    fn on_log(&mut self) {
        if self.awaiting_body && !MISSING_FLAG_REPORTED.swap(true, Ordering::Relaxed) {
            log::error!(
                "{}: a request held for its body ended without the body arriving: set \
                 `allow_on_headers_stop_iteration: true` in this Wasm filter's config (Envoy >= 1.35); without it \
                 Envoy withholds the body from a filter that holds the headers",
                F::NAME
            );
        }
    }
}

/// Plugs a [`Filter`] into proxy-wasm: `shared::proxy_filter!(MyFilter);` in the filter crate's `lib.rs`.
#[macro_export]
macro_rules! proxy_filter {
    ($filter:ty) => {
        proxy_wasm::main! {{
            proxy_wasm::set_root_context(|_| Box::new($crate::host::adapter::RootAdapter::<$filter>::default()));
        }}
    };
}
