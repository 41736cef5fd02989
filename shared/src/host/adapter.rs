//! The proxy-wasm contexts, written once for every filter: a filter is a [`Filter`] (built from its
//! configuration, ticks, root-level callouts) and a [`Stream`] per request. The adapter turns each callback into
//! a [`Host`] call on [`super::WasmHost`] (or, in the dynamic-module build, on [`super::native::NativeHost`]),
//! applies the [`Flow`] the stream returns, and keeps what is the same for every filter out of the filters:
//! - a body that ends with trailers is complete: the stream sees the last body callback again with
//!   `end_of_stream` set (size 0 when the trailers follow the headers), so no filter needs a trailers path;
//! - a message held for a callout (`Pause`) stays held whatever its body callbacks say, until the callout's answer
//!   lets it go;
//! - once the filter has sent a local reply, that reply's own response callbacks do not reach the stream (a
//!   filter never transforms or signs its own error);
//! - a message held for its body whose body never arrived (Envoy without `allow_on_headers_stop_iteration`
//!   turns the hold into "stop all") is reported once per VM with the setting's name.
//!
//! The rules live in [`Driver`], generic over the [`Host`], and are unit-tested with [`super::FakeHost`].

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(target_arch = "wasm32")]
use proxy_wasm::traits::{Context, HttpContext, RootContext};
#[cfg(target_arch = "wasm32")]
use proxy_wasm::types::ContextType;

#[cfg(target_arch = "wasm32")]
use super::WasmHost;
use super::{CallResponse, Flow, GrpcResponse, Host, Side};
use crate::reply::LocalReply;

/// What the host does with the message after a callback: let it go on, or hold it (and, for a body, buffer it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

#[cfg(target_arch = "wasm32")]
impl From<Action> for proxy_wasm::types::Action {
    fn from(action: Action) -> Self {
        match action {
            Action::Continue => proxy_wasm::types::Action::Continue,
            Action::Pause => proxy_wasm::types::Action::Pause,
        }
    }
}

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

    /// The stream is over, completed or reset (e.g. the client went away while a callout was pending): release
    /// what the stream holds beyond its own memory (shared locks).
    fn on_done(&mut self, _host: &dyn Host) {}
}

/// Logged once per VM (a VM is one worker's instance of the module, and statics are per instance; once per process
/// for a dynamic module).
static MISSING_FLAG_REPORTED: AtomicBool = AtomicBool::new(false);

/// The root context of a filter.
#[cfg(target_arch = "wasm32")]
pub struct RootAdapter<F: Filter> {
    filter: Option<Rc<F>>,
}

#[cfg(target_arch = "wasm32")]
impl<F: Filter> Default for RootAdapter<F> {
    fn default() -> Self {
        RootAdapter { filter: None }
    }
}

#[cfg(target_arch = "wasm32")]
impl<F: Filter> Context for RootAdapter<F> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        if let Some(filter) = &self.filter {
            filter.on_http_call_response(&WasmHost, token, WasmHost.call_response(num_headers, body_size));
        }
    }
}

#[cfg(target_arch = "wasm32")]
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
        Some(Box::new(StreamAdapter::<F> { driver: Driver::new(self.filter.clone().map(F::stream)) }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The HTTP context of one request: the [`Driver`] on [`WasmHost`].
#[cfg(target_arch = "wasm32")]
pub struct StreamAdapter<F: Filter> {
    driver: Driver<F::Stream>,
}

#[cfg(target_arch = "wasm32")]
impl<F: Filter> Context for StreamAdapter<F> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        self.driver.http_call_response(&WasmHost, token, WasmHost.call_response(num_headers, body_size));
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, response_size: usize) {
        let response = GrpcResponse { status, message: WasmHost.grpc_message(response_size) };
        self.driver.grpc_call_response(&WasmHost, token, response);
    }
}

#[cfg(target_arch = "wasm32")]
impl<F: Filter> HttpContext for StreamAdapter<F> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> proxy_wasm::types::Action {
        self.driver.headers(&WasmHost, Side::Request, end_of_stream).into()
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> proxy_wasm::types::Action {
        self.driver.body(&WasmHost, Side::Request, body_size, end_of_stream).into()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> proxy_wasm::types::Action {
        self.driver.trailers(&WasmHost, Side::Request).into()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> proxy_wasm::types::Action {
        self.driver.headers(&WasmHost, Side::Response, end_of_stream).into()
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> proxy_wasm::types::Action {
        self.driver.body(&WasmHost, Side::Response, body_size, end_of_stream).into()
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> proxy_wasm::types::Action {
        self.driver.trailers(&WasmHost, Side::Response).into()
    }

    fn on_log(&mut self) {
        self.driver.done(&WasmHost, F::NAME);
    }
}

/// Per side: what the driver knows about the message.
#[derive(Debug, Default, Clone, Copy)]
struct SideState {
    /// Held for a callout (`Pause`): a later `Continue` from a body callback must not let the message go.
    awaiting_callout: bool,
    /// Held with `Buffer` and no body callback has come yet.
    awaiting_body: bool,
    /// Body size of the last callback that said `Buffer` (0 after the headers), for a body that ends with trailers.
    buffered: Option<usize>,
}

/// One request's callbacks turned into [`Stream`] calls and Envoy actions, on any [`Host`] (so that the rules below
/// are unit-tested with [`super::FakeHost`]).
pub struct Driver<S: Stream> {
    /// `None` when the VM has no configuration: everything passes.
    stream: Option<S>,
    request: SideState,
    response: SideState,
    /// The filter answered the request itself: its reply passes untouched.
    replied: bool,
}

impl<S: Stream> Driver<S> {
    pub fn new(stream: Option<S>) -> Self {
        Driver { stream, request: SideState::default(), response: SideState::default(), replied: false }
    }

    fn side(&mut self, side: Side) -> &mut SideState {
        match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        }
    }

    pub fn headers(&mut self, host: &dyn Host, side: Side, end_of_stream: bool) -> Action {
        if self.replied {
            return self.after_reply(side);
        }
        let Some(stream) = &mut self.stream else { return Action::Continue };
        let flow = match side {
            Side::Request => stream.on_request_headers(host, end_of_stream),
            Side::Response => stream.on_response_headers(host, end_of_stream),
        };
        let buffering = flow == Flow::Buffer && !end_of_stream;
        let state = self.side(side);
        state.awaiting_body = buffering;
        // Headers then trailers, with no body in between: the end of an empty body.
        state.buffered = buffering.then_some(0);
        self.apply(host, side, flow)
    }

    pub fn body(&mut self, host: &dyn Host, side: Side, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return self.after_reply(side);
        }
        self.side(side).awaiting_body = false;
        let Some(stream) = &mut self.stream else { return Action::Continue };
        let flow = match side {
            Side::Request => stream.on_request_body(host, body_size, end_of_stream),
            Side::Response => stream.on_response_body(host, body_size, end_of_stream),
        };
        let state = self.side(side);
        state.buffered = (flow == Flow::Buffer && !end_of_stream).then_some(body_size);
        if flow == Flow::Continue && state.awaiting_callout {
            // The message waits for a callout: Envoy keeps what arrives until the answer lets it go.
            return Action::Pause;
        }
        self.apply(host, side, flow)
    }

    /// Trailers end a body that was being buffered: the stream sees the body's end.
    pub fn trailers(&mut self, host: &dyn Host, side: Side) -> Action {
        if self.replied {
            return self.after_reply(side);
        }
        match self.side(side).buffered.take() {
            Some(size) => self.body(host, side, size, true),
            None if self.side(side).awaiting_callout => Action::Pause,
            None => Action::Continue,
        }
    }

    pub fn http_call_response(&mut self, host: &dyn Host, token: u32, response: CallResponse) {
        let Some(stream) = &mut self.stream else { return };
        let flow = stream.on_http_call_response(host, token, response);
        self.apply_async(host, flow);
    }

    pub fn grpc_call_response(&mut self, host: &dyn Host, token: u32, response: GrpcResponse) {
        let Some(stream) = &mut self.stream else { return };
        let flow = stream.on_grpc_call_response(host, token, response);
        self.apply_async(host, flow);
    }

    /// The stream is over (completed or reset). Reports, once per VM, a message held for a body that never came:
    /// what Envoy does without `allow_on_headers_stop_iteration`.
    pub fn done(&mut self, host: &dyn Host, filter: &str) {
        if let Some(stream) = &mut self.stream {
            stream.on_done(host);
        }
        let starved = self.request.awaiting_body || self.response.awaiting_body;
        if starved && !self.replied && !MISSING_FLAG_REPORTED.swap(true, Ordering::Relaxed) {
            log::error!(
                "{filter}: a message held for its body ended without the body arriving: unless its client went away, \
                 set `allow_on_headers_stop_iteration: true` in this Wasm filter's config (Envoy >= 1.35); without it \
                 Envoy withholds the body from a filter that holds the headers"
            );
        }
    }

    /// After the filter's own reply: the request's remaining callbacks keep it stopped, the reply's own response
    /// callbacks pass untouched.
    fn after_reply(&self, side: Side) -> Action {
        match side {
            Side::Request => Action::Pause,
            Side::Response => Action::Continue,
        }
    }

    fn apply(&mut self, host: &dyn Host, side: Side, flow: Flow) -> Action {
        let state = self.side(side);
        match flow {
            Flow::Continue => {
                state.awaiting_callout = false;
                Action::Continue
            }
            Flow::Pause => {
                state.awaiting_callout = true;
                Action::Pause
            }
            Flow::Buffer => Action::Pause,
            Flow::Reply(reply) => {
                self.reply(host, &reply);
                Action::Pause
            }
        }
    }

    /// A flow returned outside a message callback (a callout's answer): `Continue` resumes the held message.
    fn apply_async(&mut self, host: &dyn Host, flow: Flow) {
        match flow {
            Flow::Continue => {
                for side in [Side::Request, Side::Response] {
                    let state = self.side(side);
                    if std::mem::take(&mut state.awaiting_callout) {
                        if let Err(err) = host.resume(side) {
                            log::warn!("cannot resume the stream: {err}");
                        }
                    }
                }
            }
            Flow::Pause | Flow::Buffer => {}
            Flow::Reply(reply) => self.reply(host, &reply),
        }
    }

    fn reply(&mut self, host: &dyn Host, reply: &LocalReply) {
        self.replied = true;
        self.request = SideState::default();
        self.response = SideState::default();
        if let Err(err) = host.send_reply(reply) {
            log::warn!("local reply ({}, {}) refused by the host: {err}", reply.status, reply.details);
        }
    }
}

/// Plugs a [`Filter`] into Envoy: `shared::proxy_filter!(MyFilter);` in the filter crate's `lib.rs`. On wasm32 it
/// is a proxy-wasm module; on other targets the crate's cdylib is an Envoy dynamic module
/// ([`crate::dynamic_module!`]).
#[macro_export]
macro_rules! proxy_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        proxy_wasm::main! {{
            proxy_wasm::set_root_context(|_| Box::new($crate::host::adapter::RootAdapter::<$filter>::default()));
        }}
        #[cfg(not(target_arch = "wasm32"))]
        $crate::dynamic_module!($filter);
    };
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;
    use crate::host::FakeHost;

    /// A stream that answers from a script and records what it was asked.
    #[derive(Default)]
    struct Scripted {
        flows: RefCell<VecDeque<Flow>>,
        calls: RefCell<Vec<String>>,
    }

    impl Scripted {
        fn with(flows: Vec<Flow>) -> Self {
            Scripted { flows: RefCell::new(flows.into()), calls: RefCell::default() }
        }

        fn next(&self, call: String) -> Flow {
            self.calls.borrow_mut().push(call);
            self.flows.borrow_mut().pop_front().unwrap_or(Flow::Continue)
        }
    }

    impl Stream for Scripted {
        fn on_request_headers(&mut self, _: &dyn Host, eos: bool) -> Flow {
            self.next(format!("request_headers eos={eos}"))
        }
        fn on_request_body(&mut self, _: &dyn Host, size: usize, eos: bool) -> Flow {
            self.next(format!("request_body {size} eos={eos}"))
        }
        fn on_response_headers(&mut self, _: &dyn Host, eos: bool) -> Flow {
            self.next(format!("response_headers eos={eos}"))
        }
        fn on_response_body(&mut self, _: &dyn Host, size: usize, eos: bool) -> Flow {
            self.next(format!("response_body {size} eos={eos}"))
        }
        fn on_http_call_response(&mut self, _: &dyn Host, token: u32, _: CallResponse) -> Flow {
            self.next(format!("call {token}"))
        }
        fn on_done(&mut self, _: &dyn Host) {
            self.calls.borrow_mut().push("done".to_string());
        }
    }

    fn calls(driver: &Driver<Scripted>) -> Vec<String> {
        driver.stream.as_ref().map(|s| s.calls.borrow().clone()).unwrap_or_default()
    }

    #[test]
    fn trailers_end_a_buffered_body_even_an_empty_one() {
        let host = FakeHost::default();
        let mut driver = Driver::new(Some(Scripted::with(vec![Flow::Buffer, Flow::Buffer, Flow::Continue])));
        assert_eq!(driver.headers(&host, Side::Request, false), Action::Pause);
        assert_eq!(driver.body(&host, Side::Request, 5, false), Action::Pause);
        assert_eq!(driver.trailers(&host, Side::Request), Action::Continue);
        assert_eq!(
            calls(&driver),
            ["request_headers eos=false", "request_body 5 eos=false", "request_body 5 eos=true"]
        );

        let mut driver = Driver::new(Some(Scripted::with(vec![Flow::Buffer, Flow::Continue])));
        driver.headers(&host, Side::Request, false);
        assert_eq!(driver.trailers(&host, Side::Request), Action::Continue);
        assert_eq!(calls(&driver), ["request_headers eos=false", "request_body 0 eos=true"]);
        // Trailers of a message that was not buffered pass.
        assert_eq!(driver.trailers(&host, Side::Response), Action::Continue);
    }

    #[test]
    fn a_message_held_for_a_callout_stays_held_until_the_answer() {
        let host = FakeHost::default();
        let mut driver = Driver::new(Some(Scripted::with(vec![Flow::Pause])));
        assert_eq!(driver.headers(&host, Side::Request, false), Action::Pause);
        // The body says Continue, but the callout has not answered: still held, also at the trailers.
        assert_eq!(driver.body(&host, Side::Request, 3, true), Action::Pause);
        assert_eq!(driver.trailers(&host, Side::Request), Action::Pause);
        assert!(host.resumed.borrow().is_empty());
        driver.http_call_response(&host, 7, CallResponse::default());
        assert_eq!(*host.resumed.borrow(), vec![Side::Request]);
        // Resumed once only.
        driver.http_call_response(&host, 8, CallResponse::default());
        assert_eq!(host.resumed.borrow().len(), 1);
    }

    #[test]
    fn after_its_own_reply_the_filter_sees_nothing_more() {
        let host = FakeHost::default();
        let reply = LocalReply::error("t", 400, "no", false).with_details("t_bad_request");
        let mut driver = Driver::new(Some(Scripted::with(vec![Flow::Buffer, Flow::Reply(reply)])));
        driver.headers(&host, Side::Request, false);
        assert_eq!(driver.body(&host, Side::Request, 2, true), Action::Pause);
        assert_eq!(host.reply().map(|r| r.details), Some("t_bad_request".to_string()));
        assert_eq!(driver.body(&host, Side::Request, 4, true), Action::Pause);
        assert_eq!(driver.headers(&host, Side::Response, false), Action::Continue);
        assert_eq!(driver.body(&host, Side::Response, 9, true), Action::Continue);
        assert_eq!(calls(&driver), ["request_headers eos=false", "request_body 2 eos=true"]);
        driver.done(&host, "t");
        assert_eq!(calls(&driver).last().map(String::as_str), Some("done"));
    }

    #[test]
    fn a_callout_answer_can_reply_and_a_failed_resume_is_not_fatal() {
        let host = FakeHost::default();
        let reply = LocalReply::error("t", 503, "down", false);
        let mut driver = Driver::new(Some(Scripted::with(vec![Flow::Pause, Flow::Reply(reply)])));
        driver.headers(&host, Side::Request, true);
        driver.http_call_response(&host, 1, CallResponse::default());
        assert_eq!(host.reply().map(|r| r.status), Some(503));
        assert!(host.resumed.borrow().is_empty());

        let host = FakeHost::default();
        host.fail("resume", crate::host::HostError::BadArgument);
        let mut driver = Driver::new(Some(Scripted::with(vec![Flow::Pause])));
        driver.headers(&host, Side::Request, true);
        driver.http_call_response(&host, 1, CallResponse::default());
        assert!(host.resumed.borrow().is_empty());
    }

    #[test]
    fn without_a_configuration_everything_passes() {
        let host = FakeHost::default();
        let mut driver: Driver<Scripted> = Driver::new(None);
        assert_eq!(driver.headers(&host, Side::Request, false), Action::Continue);
        assert_eq!(driver.body(&host, Side::Request, 1, true), Action::Continue);
        assert_eq!(driver.headers(&host, Side::Response, true), Action::Continue);
        driver.done(&host, "t");
    }
}
