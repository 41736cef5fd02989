//! The module's event hooks, generic over the [`Filter`] (the `dynamic_module!` macro instantiates them in each
//! filter crate), and the hooks for ABI features the filters do not use. Each hook catches panics: a panic in a
//! stream's hook answers that request with a 500 and the stream sees nothing more; a panic in a configuration's
//! hook refuses the configuration (at creation) or is logged (ticks, callouts).

#![allow(unsafe_code)] // Envoy's pointers come in here

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::ffi::{body_status, headers_status, trailers_status, EnvoyBuffer, EnvoyHeader};
use super::host::{call_response, NativeHost, Scope};
use super::{grpc, metrics, ModuleConfig};
use crate::host::adapter::{Action, Driver, Filter};
use crate::host::{lossy, Side};
use crate::reply::LocalReply;

static NEXT_CONFIG: AtomicU64 = AtomicU64::new(1);

/// The configurations Envoy has not destroyed yet.
static LIVE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Per configuration id, this thread's instance of its filter (`None`: it could not be built here).
type Instances = Vec<(u64, Option<Rc<dyn Any>>)>;

thread_local! {
    static INSTANCES: RefCell<Instances> = const { RefCell::new(Vec::new()) };
}

fn live() -> std::sync::MutexGuard<'static, Vec<u64>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One stream: the Wasm build's HTTP context.
struct StreamState<F: Filter> {
    config: *const ModuleConfig,
    /// Borrowed for the length of a hook: a hook that Envoy runs from inside another (our local reply going
    /// through the response path) finds it taken and lets the message pass.
    driver: RefCell<Driver<F::Stream>>,
    /// Ids of the callouts that carry gRPC.
    grpc: RefCell<Vec<u64>>,
    /// A hook panicked: the request got a 500 and the filter sees nothing more of it.
    poisoned: Cell<bool>,
}

/// `envoy_dynamic_module_on_http_filter_config_new`: builds the configuration's first instance of the filter
/// (which validates it, defines its metrics and may start ticks). Null refuses the configuration.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn config_new<F: Filter>(envoy: *mut c_void, name: EnvoyBuffer, json: EnvoyBuffer) -> *const c_void {
    let created = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's buffers, alive for this hook.
        let (name, json) = unsafe { (lossy(name.to_vec()), json.to_vec()) };
        let config = Box::new(ModuleConfig {
            id: NEXT_CONFIG.fetch_add(1, Ordering::Relaxed),
            envoy: envoy as usize,
            name,
            json,
            ticker: Mutex::new(None),
        });
        let built = {
            let _building = metrics::Building::start(config.id, config.envoy, true);
            let host = NativeHost { config: &config, scope: Scope::Config { ticks: true } };
            F::configure(&host, &config.json, None)
        };
        match built {
            Ok(filter) => {
                live().push(config.id);
                INSTANCES
                    .with_borrow_mut(|instances| instances.push((config.id, Some(Rc::new(filter) as Rc<dyn Any>))));
                Box::into_raw(config) as *const c_void
            }
            Err(err) => {
                log::error!("{}: invalid configuration: {err}", F::NAME);
                metrics::forget(config.id);
                std::ptr::null()
            }
        }
    }));
    created.unwrap_or(std::ptr::null())
}

/// `envoy_dynamic_module_on_http_filter_config_destroy` (main thread, after the configuration's last stream).
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn config_destroy<F: Filter>(config: *const c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if config.is_null() {
            return;
        }
        // SAFETY: made by `config_new` with `Box::into_raw`; Envoy destroys it once.
        let config = unsafe { Box::from_raw(config as *mut ModuleConfig) };
        metrics::forget(config.id);
        live().retain(|id| *id != config.id);
        INSTANCES.with_borrow_mut(|instances| instances.retain(|(id, _)| *id != config.id));
    }));
}

/// This thread's instance of a configuration's filter, built on first use (the workers' instances; a failure is
/// logged once and the thread's streams pass untouched).
fn instance<F: Filter>(config: &ModuleConfig) -> Option<Rc<F>> {
    let found =
        INSTANCES.with_borrow(|instances| instances.iter().find(|(id, _)| *id == config.id).map(|e| e.1.clone()));
    let filter = match found {
        Some(filter) => filter,
        None => {
            let built = {
                let _building = metrics::Building::start(config.id, config.envoy, false);
                F::configure(&NativeHost { config, scope: Scope::Config { ticks: false } }, &config.json, None)
            };
            let filter = match built {
                Ok(filter) => Some(Rc::new(filter) as Rc<dyn Any>),
                Err(err) => {
                    log::error!("{}: the configuration accepted at creation failed on a worker: {err}", F::NAME);
                    None
                }
            };
            let live = live().clone();
            INSTANCES.with_borrow_mut(|instances| {
                // Instances of configurations Envoy has destroyed since.
                instances.retain(|(id, _)| live.contains(id));
                instances.push((config.id, filter.clone()));
            });
            filter
        }
    };
    filter?.downcast::<F>().ok()
}

/// This thread's instance, if built (ticks and configuration-level callouts run on the main thread's).
fn existing<F: Filter>(config: &ModuleConfig) -> Option<Rc<F>> {
    INSTANCES
        .with_borrow(|instances| instances.iter().find(|(id, _)| *id == config.id).and_then(|e| e.1.clone()))?
        .downcast::<F>()
        .ok()
}

/// `envoy_dynamic_module_on_http_filter_config_scheduled`: a tick.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn config_tick<F: Filter>(config: *const c_void) {
    // SAFETY: made by `config_new`; Envoy runs this hook only while the configuration lives.
    let Some(config) = (unsafe { (config as *const ModuleConfig).as_ref() }) else { return };
    let ticked = catch_unwind(AssertUnwindSafe(|| {
        let _building = metrics::Building::start(config.id, config.envoy, false);
        if let Some(filter) = existing::<F>(config) {
            filter.on_tick(&NativeHost { config, scope: Scope::Config { ticks: true } });
        }
    }));
    if ticked.is_err() {
        log::error!("{}: a tick panicked", F::NAME);
    }
}

/// `envoy_dynamic_module_on_http_filter_config_http_callout_done`: the answer to a callout made from a tick.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn config_callout_done<F: Filter>(
    config: *const c_void,
    id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: as in `config_tick`.
    let Some(config) = (unsafe { (config as *const ModuleConfig).as_ref() }) else { return };
    let answered = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy's arguments to this hook.
        let response = unsafe { call_response(result, headers, headers_size, chunks, chunks_size) };
        let _building = metrics::Building::start(config.id, config.envoy, false);
        if let (Some(filter), Ok(token)) = (existing::<F>(config), u32::try_from(id)) {
            filter.on_http_call_response(&NativeHost { config, scope: Scope::Config { ticks: true } }, token, response);
        }
    }));
    if answered.is_err() {
        log::error!("{}: a callout's answer panicked", F::NAME);
    }
}

/// `envoy_dynamic_module_on_http_filter_new`: a stream's state. Null (only after a panic) makes Envoy close the
/// stream.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn stream_new<F: Filter>(config: *const c_void, _filter: *mut c_void) -> *const c_void {
    let made = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: made by `config_new`; alive while Envoy creates streams from it.
        let config_ref = unsafe { (config as *const ModuleConfig).as_ref() }?;
        let _building = metrics::Building::start(config_ref.id, config_ref.envoy, false);
        let stream = instance::<F>(config_ref).map(F::stream);
        let state = StreamState::<F> {
            config: config as *const ModuleConfig,
            driver: RefCell::new(Driver::new(stream)),
            grpc: RefCell::default(),
            poisoned: Cell::new(false),
        };
        Some(Box::into_raw(Box::new(state)) as *const c_void)
    }));
    made.ok().flatten().unwrap_or(std::ptr::null())
}

/// Runs one step of a stream's driver for a hook, catching a panic (the request then gets a 500).
fn run<F: Filter>(
    filter: *mut c_void,
    stream: *const c_void,
    side: Side,
    step: impl FnOnce(&mut Driver<F::Stream>, &NativeHost<'_>, &RefCell<Vec<u64>>) -> Action,
) -> Action {
    // SAFETY: made by `stream_new`; Envoy runs a stream's hooks on one thread until `stream_destroy`.
    let Some(state) = (unsafe { (stream as *const StreamState<F>).as_ref() }) else { return Action::Continue };
    // A stream that panicked, or a hook inside one of ours: the request stays stopped (a reply is on its way),
    // the response (that reply) passes.
    let pass = match side {
        Side::Request => Action::Pause,
        Side::Response => Action::Continue,
    };
    if state.poisoned.get() {
        return pass;
    }
    let Ok(mut driver) = state.driver.try_borrow_mut() else { return pass };
    // SAFETY: the configuration outlives its streams.
    let Some(config) = (unsafe { state.config.as_ref() }) else { return pass };
    let host = NativeHost { config, scope: Scope::Stream { filter, grpc: &state.grpc } };
    let _building = metrics::Building::stream(config.id, config.envoy, false, filter as usize);
    match catch_unwind(AssertUnwindSafe(|| step(&mut driver, &host, &state.grpc))) {
        Ok(action) => action,
        Err(_) => {
            state.poisoned.set(true);
            let reply = LocalReply::error(F::NAME, 500, "internal error in the filter", false)
                .with_details(&format!("{}_panic", F::NAME));
            if let Err(err) = crate::Host::send_reply(&host, &reply) {
                log::error!("{}: cannot answer the request after a panic: {err}", F::NAME);
            }
            Action::Pause
        }
    }
}

fn status(action: Action, continue_status: u32, stop_status: u32) -> u32 {
    match action {
        Action::Continue => continue_status,
        Action::Pause => stop_status,
    }
}

/// `envoy_dynamic_module_on_http_filter_{request,response}_headers`.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn headers<F: Filter>(filter: *mut c_void, stream: *const c_void, side: Side, end_of_stream: bool) -> u32 {
    let action = run::<F>(filter, stream, side, |driver, host, _| driver.headers(host, side, end_of_stream));
    status(action, headers_status::CONTINUE, headers_status::STOP_ITERATION)
}

/// `envoy_dynamic_module_on_http_filter_{request,response}_body`: the driver sees the size of the whole body so far
/// (what Envoy buffered and what it delivers now), as in Wasm.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn body<F: Filter>(filter: *mut c_void, stream: *const c_void, side: Side, end_of_stream: bool) -> u32 {
    let action =
        run::<F>(filter, stream, side, |driver, host, _| driver.body(host, side, host.body_size(side), end_of_stream));
    status(action, body_status::CONTINUE, body_status::STOP_ITERATION_AND_BUFFER)
}

/// `envoy_dynamic_module_on_http_filter_{request,response}_trailers`.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn trailers<F: Filter>(filter: *mut c_void, stream: *const c_void, side: Side) -> u32 {
    let action = run::<F>(filter, stream, side, |driver, host, _| driver.trailers(host, side));
    status(action, trailers_status::CONTINUE, trailers_status::STOP_ITERATION)
}

/// `envoy_dynamic_module_on_http_filter_http_callout_done`: the answer to a stream's callout, HTTP or gRPC.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
#[allow(clippy::too_many_arguments)] // the hook's own arguments
pub unsafe fn callout_done<F: Filter>(
    filter: *mut c_void,
    stream: *const c_void,
    id: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: Envoy's arguments to this hook.
    let response = unsafe { call_response(result, headers, headers_size, chunks, chunks_size) };
    run::<F>(filter, stream, Side::Request, |driver, host, grpc_ids| {
        let is_grpc = {
            let mut ids = grpc_ids.borrow_mut();
            let before = ids.len();
            ids.retain(|i| *i != id);
            ids.len() != before
        };
        if let Ok(token) = u32::try_from(id) {
            if is_grpc {
                driver.grpc_call_response(host, token, grpc::response(&response));
            } else {
                driver.http_call_response(host, token, response);
            }
        }
        Action::Continue
    });
}

/// `envoy_dynamic_module_on_http_filter_stream_complete`: the stream is over, completed or reset.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn stream_complete<F: Filter>(filter: *mut c_void, stream: *const c_void) {
    run::<F>(filter, stream, Side::Response, |driver, host, _| {
        driver.done(host, F::NAME);
        Action::Continue
    });
}

/// `envoy_dynamic_module_on_http_filter_destroy`.
///
/// # Safety
/// The arguments are the ones Envoy passes to this hook.
pub unsafe fn stream_destroy<F: Filter>(stream: *const c_void) {
    if stream.is_null() {
        return;
    }
    // A panic while dropping leaks the rest of the stream's state, nothing more.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: made by `stream_new` with `Box::into_raw`; Envoy destroys it once, after its last hook.
        drop(unsafe { Box::from_raw(stream as *mut StreamState<F>) });
    }));
}

// Hooks Envoy requires of every HTTP filter module, for features the filters do not use: streamed callouts and
// per-stream scheduling (never started), and write-buffer watermarks (only for terminal filters).

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: *mut c_void,
    _stream: *const c_void,
    _id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: *mut c_void,
    _stream: *const c_void,
    _id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: *mut c_void,
    _stream: *const c_void,
    _id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: *mut c_void,
    _stream: *const c_void,
    _id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: *mut c_void,
    _stream: *const c_void,
    _id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter: *mut c_void,
    _stream: *const c_void,
    _event: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: *mut c_void,
    _stream: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: *mut c_void,
    _stream: *const c_void,
) {
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Flow, Host, Stream};

    /// A filter whose configuration must be `ok` and whose streams panic on every request.
    struct Boom;
    struct BoomStream;

    impl Filter for Boom {
        const NAME: &'static str = "boom";
        type Stream = BoomStream;

        fn configure(_host: &dyn Host, config: &[u8], _previous: Option<&Self>) -> Result<Self, String> {
            (config == b"ok").then_some(Boom).ok_or_else(|| "not ok".to_string())
        }

        fn stream(_filter: Rc<Self>) -> BoomStream {
            BoomStream
        }
    }

    impl Stream for BoomStream {
        fn on_request_headers(&mut self, _host: &dyn Host, _end_of_stream: bool) -> Flow {
            panic!("boom");
        }
    }

    fn buffer(bytes: &'static [u8]) -> EnvoyBuffer {
        EnvoyBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    #[test]
    fn a_bad_configuration_is_refused() {
        // SAFETY: buffers of static bytes; no Envoy pointer is dereferenced without the callback table.
        let config = unsafe { config_new::<Boom>(std::ptr::null_mut(), buffer(b"boom"), buffer(b"bad")) };
        assert!(config.is_null());
    }

    #[test]
    fn a_panic_stops_that_request_and_the_stream_sees_nothing_more() {
        // SAFETY: as above; the pointers passed back are the ones these hooks made.
        unsafe {
            let config = config_new::<Boom>(std::ptr::null_mut(), buffer(b"boom"), buffer(b"ok"));
            assert!(!config.is_null());
            let stream = stream_new::<Boom>(config, std::ptr::null_mut());
            assert!(!stream.is_null());
            let filter = std::ptr::null_mut();
            assert_eq!(headers::<Boom>(filter, stream, Side::Request, false), headers_status::STOP_ITERATION);
            // The request stays stopped (its 500 is on the way), the response (that 500) passes.
            assert_eq!(body::<Boom>(filter, stream, Side::Request, true), body_status::STOP_ITERATION_AND_BUFFER);
            assert_eq!(headers::<Boom>(filter, stream, Side::Response, true), headers_status::CONTINUE);
            stream_complete::<Boom>(filter, stream);
            stream_destroy::<Boom>(stream);
            // A second stream of the same configuration runs again (and panics again, on its own).
            let again = stream_new::<Boom>(config, filter);
            assert_eq!(headers::<Boom>(filter, again, Side::Request, true), headers_status::STOP_ITERATION);
            stream_destroy::<Boom>(again);
            config_destroy::<Boom>(config);
        }
    }
}
