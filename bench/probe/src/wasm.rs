//! The probe as a proxy-wasm module: every kind.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};

#[derive(Clone, Copy, Default)]
enum Kind {
    #[default]
    Nothing,
    /// Read a header that is there (`:path`): the host calls back into the VM to allocate the value.
    Get,
    /// Read a header that is not there: the call alone.
    Miss,
    /// Read all request headers at once.
    Pairs,
    /// Set a request header.
    Set,
    /// Increment a counter.
    Metric,
    /// Read an 8-byte shared-data value (what the rate-limit filter reads per bucket).
    SharedGet,
    /// Read it and write it back with its CAS token (the rate-limit filter's update).
    SharedCas,
    /// Read WASI's monotonic clock.
    Clock,
    /// Remove `content-length` (what a filter that will change the body does).
    DropLength,
    /// At the end of the request body: read it whole.
    BodyRead,
    /// At the end of the request body: read it whole and replace it with itself.
    BodyReplace,
    /// Mark the request; panic if it asks for it (`x-probe-panic`).
    Panic,
}

#[derive(Clone, Copy, Default)]
struct Probe {
    kind: Kind,
    count: u32,
    metric: u32,
    /// Hold the headers until the body is complete.
    hold: bool,
}

#[derive(Default)]
struct Root(Probe);

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let config = String::from_utf8_lossy(&config);
        let mut parts = config.split(':');
        let (kind, count) = (parts.next().unwrap_or(""), parts.next().unwrap_or("0"));
        let hold = parts.next() == Some("hold");
        let kind = match kind {
            "get" => Kind::Get,
            "miss" => Kind::Miss,
            "pairs" => Kind::Pairs,
            "set" => Kind::Set,
            "metric" => Kind::Metric,
            "shared_get" => Kind::SharedGet,
            "shared_cas" => Kind::SharedCas,
            "clock" => Kind::Clock,
            "drop_length" => Kind::DropLength,
            "body_read" => Kind::BodyRead,
            "body_replace" => Kind::BodyReplace,
            "panic" => Kind::Panic,
            _ => Kind::Nothing,
        };
        let metric = hostcalls::define_metric(MetricType::Counter, "probe").unwrap_or_default();
        let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&0u64.to_le_bytes()), None);
        self.0 = Probe { kind, count: count.parse().unwrap_or(0), metric, hold };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream(self.0)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The shared-data value the shared-data kinds read and write.
const SHARED_KEY: &str = "probe:bucket";

struct Stream(Probe);

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Probe { kind, count, metric, hold } = self.0;
        let headers = MapType::HttpRequestHeaders;
        if let Kind::Panic = kind {
            if let Ok(Some(_)) = hostcalls::get_map_value_bytes(headers, "x-probe-panic") {
                #[allow(clippy::panic)] // the point of this kind: a crash of the VM on demand
                {
                    panic!("probe: panic requested by the client");
                }
            }
            let _ = hostcalls::set_map_value(headers, "x-probe-vm", Some("alive"));
            return Action::Continue;
        }
        for i in 0..count {
            // Results are dropped: only the calls are measured.
            let _ = match kind {
                Kind::Nothing => Ok(()),
                Kind::Get => hostcalls::get_map_value_bytes(headers, ":path").map(drop),
                Kind::Miss => hostcalls::get_map_value_bytes(headers, "x-absent").map(drop),
                Kind::Pairs => hostcalls::get_map_bytes(headers).map(drop),
                Kind::Set => hostcalls::set_map_value(headers, &format!("x-probe-{i}"), Some("v")),
                Kind::Metric => hostcalls::increment_metric(metric, 1),
                Kind::SharedGet => hostcalls::get_shared_data(SHARED_KEY).map(drop),
                Kind::SharedCas => match hostcalls::get_shared_data(SHARED_KEY) {
                    Ok((Some(value), cas)) => hostcalls::set_shared_data(SHARED_KEY, Some(&value), cas),
                    other => other.map(drop),
                },
                Kind::Clock => {
                    std::hint::black_box(std::time::Instant::now());
                    Ok(())
                }
                Kind::DropLength => hostcalls::set_map_value(headers, "content-length", None),
                Kind::BodyRead | Kind::BodyReplace | Kind::Panic => Ok(()),
            };
        }
        if hold && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Probe { kind, count, hold, .. } = self.0;
        if !end_of_stream {
            return if hold { Action::Pause } else { Action::Continue };
        }
        if !matches!(kind, Kind::BodyRead | Kind::BodyReplace) {
            return Action::Continue;
        }
        let body = BufferType::HttpRequestBody;
        for _ in 0..count {
            let read = hostcalls::get_buffer(body, 0, body_size).ok().flatten().unwrap_or_default();
            if matches!(kind, Kind::BodyReplace) {
                let _ = hostcalls::set_buffer(body, 0, body_size, &read);
            }
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}
