//! The filters as Envoy dynamic modules (`lib<filter>.so`): the same [`Filter`]s and [`Stream`]s as the Wasm build,
//! run by the same [`Driver`], on a [`NativeHost`] over Envoy's dynamic-module ABI ([`ffi`]).
//!
//! How the Wasm model maps onto a module loaded once into the Envoy process:
//! - a Wasm VM per worker becomes one instance of the filter per worker thread and configuration, built from the
//!   configuration's JSON on the worker's first request (thread-local). The configuration is first built once on
//!   the main thread when Envoy creates it: a bad configuration is refused there, and that instance defines the
//!   metrics and runs the ticks;
//! - shared data becomes one process-wide store with the same compare-and-swap semantics ([`store`]);
//! - ticks become a timer thread that schedules an event on the configuration (main thread);
//! - every event hook catches panics: a panic answers that request with a 500 and leaves Envoy running (the
//!   module must be built with `panic = "unwind"`: the `dynamic-module` profile; a module built to abort refuses
//!   to load).

#![allow(unsafe_code)] // the module's entry points take Envoy's pointers

pub mod ffi;
mod grpc;
pub mod hooks;
mod host;
mod metadata;
pub mod metrics;

use std::ffi::{c_char, c_void};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

pub use host::NativeHost;

use crate::host::{HostError, HostResult};
use crate::store::CasMap;

/// Envoy's callbacks, looked up when the module loads.
static API: OnceLock<ffi::Api> = OnceLock::new();

/// The process-wide shared data.
fn store() -> MutexGuard<'static, CasMap> {
    static STORE: OnceLock<Mutex<CasMap>> = OnceLock::new();
    // A panic never happens while the map is held (its operations do not panic); a poisoned lock is still sound.
    STORE.get_or_init(Mutex::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One filter configuration as Envoy created it, shared by every worker.
pub struct ModuleConfig {
    /// Unique in the process: keys the per-thread instances and the metrics.
    id: u64,
    /// Envoy's `DynamicModuleHttpFilterConfig`, alive until `config_destroy`.
    envoy: usize,
    /// The `filter_name` of the dynamic module filter: the plugin name of metrics and logs.
    name: String,
    /// The filter's JSON configuration.
    json: Vec<u8>,
    ticker: Mutex<Option<Ticker>>,
}

/// The timer thread behind [`crate::Host::set_tick_period`], and the scheduler it posts to.
struct Ticker {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    scheduler: usize,
}

impl ModuleConfig {
    fn envoy(&self) -> *mut c_void {
        self.envoy as *mut c_void
    }

    /// Posts a tick to the configuration (main thread) every `period`, replacing an earlier timer.
    fn start_ticks(&self, period: Duration) -> HostResult<()> {
        let api = API.get().ok_or(HostError::Unimplemented)?;
        self.stop_ticks();
        if period.is_zero() {
            return Ok(());
        }
        // SAFETY: the configuration is alive; the scheduler is deleted in `stop_ticks`.
        let scheduler = unsafe { (api.scheduler_new)(self.envoy()) } as usize;
        if scheduler == 0 {
            return Err(HostError::InternalFailure);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let commit = api.scheduler_commit;
        let thread = std::thread::Builder::new()
            .name(format!("{}-ticks", self.name))
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    // SAFETY: the scheduler outlives this thread (deleted after it is joined); safe from any thread.
                    unsafe { commit(scheduler as *mut c_void, 0) };
                }
            })
            .map_err(|_| HostError::InternalFailure)?;
        *self.ticker.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ticker { stop, thread, scheduler });
        Ok(())
    }

    fn stop_ticks(&self) {
        let ticker = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Ticker { stop, thread, scheduler }) = ticker {
            drop(stop);
            let _ = thread.join();
            if let Some(api) = API.get() {
                // SAFETY: made by `scheduler_new`, and its only user has stopped.
                unsafe { (api.scheduler_delete)(scheduler as *mut c_void) };
            }
        }
    }
}

impl Drop for ModuleConfig {
    /// The timer must stop before Envoy deletes what it posts to (also when a configuration fails to build).
    fn drop(&mut self) {
        self.stop_ticks();
    }
}

/// `envoy_dynamic_module_on_program_init`: loads the callback table and the logger. Returns the ABI version, or
/// null (Envoy then refuses the module, and says so) when a callback is missing or the module cannot catch panics.
pub fn program_init(filter: &'static str) -> *const c_char {
    if cfg!(panic = "abort") {
        eprintln!(
            "{filter}: this module was built with panic=abort, so a panic would abort Envoy: build it with \
             `cargo build --profile dynamic-module`"
        );
        return std::ptr::null();
    }
    match ffi::Api::load(ffi::process_symbol) {
        Ok(api) => {
            let _ = API.set(api);
        }
        Err(missing) => {
            let names: Vec<_> = missing.iter().map(|n| n.to_string_lossy()).collect();
            eprintln!(
                "{filter}: this Envoy lacks the dynamic-module callbacks {} (the module needs Envoy 1.40)",
                names.join(", ")
            );
            return std::ptr::null();
        }
    }
    init_logging(filter);
    ffi::ABI_VERSION.as_ptr()
}

/// Routes the `log` crate to Envoy's log (`dynamic_modules` component), at the level Envoy has for it now, and
/// panics to a critical line naming the filter (the hook then answers the request with a 500).
fn init_logging(filter: &'static str) {
    let Some(api) = API.get() else { return };
    let levels = [
        (ffi::log_level::TRACE, log::LevelFilter::Trace),
        (ffi::log_level::DEBUG, log::LevelFilter::Debug),
        (ffi::log_level::INFO, log::LevelFilter::Info),
        (ffi::log_level::WARN, log::LevelFilter::Warn),
        (ffi::log_level::ERROR, log::LevelFilter::Error),
    ];
    // SAFETY: a plain query.
    let level = levels.iter().find(|(l, _)| unsafe { (api.log_enabled)(*l) }).map_or(log::LevelFilter::Off, |l| l.1);
    if log::set_logger(&LOGGER).is_ok() {
        std::panic::set_hook(Box::new(move |info| {
            write_log(ffi::log_level::CRITICAL, &format!("{filter}: panic, the request gets a 500: {info}"));
        }));
    }
    log::set_max_level(level);
}

fn write_log(level: u32, message: &str) {
    if let Some(api) = API.get() {
        // SAFETY: the message points into a live &str.
        unsafe { (api.log)(level, ffi::ModuleBuffer::of(message.as_bytes())) };
    }
}

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => ffi::log_level::TRACE,
            log::Level::Debug => ffi::log_level::DEBUG,
            log::Level::Info => ffi::log_level::INFO,
            log::Level::Warn => ffi::log_level::WARN,
            log::Level::Error => ffi::log_level::ERROR,
        };
        write_log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Emits a filter's dynamic-module entry points: `shared::proxy_filter!` does it on every target but wasm32.
#[macro_export]
macro_rules! dynamic_module {
    ($filter:ty) => {
        const _: () = {
            use std::ffi::{c_char, c_void};
            use $crate::host::native::ffi::{EnvoyBuffer, EnvoyHeader};
            use $crate::host::native::hooks;
            use $crate::host::Side;

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
                $crate::host::native::program_init(<$filter as $crate::host::Filter>::NAME)
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
                envoy: *mut c_void,
                name: EnvoyBuffer,
                config: EnvoyBuffer,
            ) -> *const c_void {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::config_new::<$filter>(envoy, name, config) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::config_destroy::<$filter>(config) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
                _envoy: *mut c_void,
                config: *const c_void,
                _event: u64,
            ) {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::config_tick::<$filter>(config) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
                _envoy: *mut c_void,
                config: *const c_void,
                id: u64,
                result: u32,
                headers: *const EnvoyHeader,
                headers_size: usize,
                chunks: *const EnvoyBuffer,
                chunks_size: usize,
            ) {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe {
                    hooks::config_callout_done::<$filter>(
                        config,
                        id,
                        result,
                        headers,
                        headers_size,
                        chunks,
                        chunks_size,
                    )
                }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
                config: *const c_void,
                filter: *mut c_void,
            ) -> *const c_void {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::stream_new::<$filter>(config, filter) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
                filter: *mut c_void,
                stream: *const c_void,
                end_of_stream: bool,
            ) -> u32 {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::headers::<$filter>(filter, stream, Side::Request, end_of_stream) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
                filter: *mut c_void,
                stream: *const c_void,
                end_of_stream: bool,
            ) -> u32 {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::body::<$filter>(filter, stream, Side::Request, end_of_stream) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
                filter: *mut c_void,
                stream: *const c_void,
            ) -> u32 {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::trailers::<$filter>(filter, stream, Side::Request) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
                filter: *mut c_void,
                stream: *const c_void,
                end_of_stream: bool,
            ) -> u32 {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::headers::<$filter>(filter, stream, Side::Response, end_of_stream) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
                filter: *mut c_void,
                stream: *const c_void,
                end_of_stream: bool,
            ) -> u32 {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::body::<$filter>(filter, stream, Side::Response, end_of_stream) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
                filter: *mut c_void,
                stream: *const c_void,
            ) -> u32 {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::trailers::<$filter>(filter, stream, Side::Response) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
                filter: *mut c_void,
                stream: *const c_void,
                id: u64,
                result: u32,
                headers: *const EnvoyHeader,
                headers_size: usize,
                chunks: *const EnvoyBuffer,
                chunks_size: usize,
            ) {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe {
                    hooks::callout_done::<$filter>(
                        filter,
                        stream,
                        id,
                        result,
                        headers,
                        headers_size,
                        chunks,
                        chunks_size,
                    )
                }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
                filter: *mut c_void,
                stream: *const c_void,
            ) {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::stream_complete::<$filter>(filter, stream) }
            }

            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: *const c_void) {
                // SAFETY: Envoy's own arguments to this hook.
                unsafe { hooks::stream_destroy::<$filter>(stream) }
            }
        };
    };
}
