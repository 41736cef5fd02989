//! Starting real Envoy processes from the configuration files in `envoy-test/`.
//!
//! The files are the ones the demo and docker-compose use, with fixed ports. Before starting Envoy the harness
//! rewrites a copy: every listener and the admin move to port 0 (Envoy picks a free port; the harness reads it
//! back from the admin `/listeners`), cluster endpoints move to the ports the test says (its own upstreams),
//! `.wasm` file names point at the build output, file access logs written to `/dev/stdout` go to a file the test
//! can read ([`Envoy::access_log`]), and plugin configurations can be replaced per test.
//!
//! The same files and tests run against either build of the filters ([`Build`]): with
//! `FILTER_BUILD=dynamic-module` every Wasm filter of the file becomes the dynamic module of the same filter, with
//! the same plugin name and configuration JSON.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin;
use crate::paths;

/// Which build of the filters Envoy loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The `.wasm` files (`envoy.filters.http.wasm`).
    Wasm,
    /// The `lib<filter>.so` files (`envoy.filters.http.dynamic_modules`).
    DynamicModule,
}

impl Build {
    /// What starts the filters' own lines in Envoy's log (a plugin or filter name follows).
    pub fn log_marker(self) -> &'static str {
        match self {
            Build::Wasm => "wasm log",
            Build::DynamicModule => "[dynamic_modules] [:]",
        }
    }

    /// `FILTER_BUILD=dynamic-module` selects the dynamic modules; anything else (or nothing) the Wasm files.
    pub fn current() -> Build {
        match std::env::var("FILTER_BUILD").as_deref() {
            Ok("dynamic-module") => Build::DynamicModule,
            _ => Build::Wasm,
        }
    }
}

/// What to start: a file in `envoy-test/` and the changes this test needs.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    build: Build,
    file: String,
    lds_file: Option<String>,
    upstream_ports: HashMap<u64, u16>,
    plugin_configs: BTreeMap<String, String>,
    plugin_options: Vec<(String, String, Value)>,
    env: Vec<(String, String)>,
    concurrency: u32,
    http_filters: Option<(String, Vec<Value>)>,
    cpu: Option<u32>,
    log_level: &'static str,
    drain_time_secs: Option<u32>,
}

impl EnvoyConfig {
    /// `file` is a bootstrap in `envoy-test/` (e.g. `demo.yaml`).
    pub fn new(file: &str) -> Self {
        EnvoyConfig {
            build: Build::current(),
            file: file.to_string(),
            lds_file: None,
            upstream_ports: HashMap::new(),
            plugin_configs: BTreeMap::new(),
            plugin_options: Vec::new(),
            env: Vec::new(),
            concurrency: 2,
            http_filters: None,
            cpu: None,
            log_level: "info",
            drain_time_secs: None,
        }
    }

    /// Points cluster endpoints written with `fixed_port` at `port` (e.g. the demo's echo 8081 -> the test's).
    pub fn upstream(mut self, fixed_port: u16, port: u16) -> Self {
        self.upstream_ports.insert(u64::from(fixed_port), port);
        self
    }

    /// Which build of the filters this Envoy loads (by default [`Build::current`]).
    pub fn build(&self) -> Build {
        self.build
    }

    /// Replaces the plugin configuration of the Wasm filter whose `config.name` is `plugin`.
    pub fn plugin_config(mut self, plugin: &str, json: impl ToString) -> Self {
        self.plugin_configs.insert(plugin.to_string(), json.to_string());
        self
    }

    /// Sets a field of the Wasm `PluginConfig` named `plugin` (beside `name`, `vm_config`), or removes it when
    /// `value` is null: e.g. `allow_on_headers_stop_iteration`, `failure_policy`.
    pub fn plugin_option(mut self, plugin: &str, key: &str, value: Value) -> Self {
        self.plugin_options.push((plugin.to_string(), key.to_string(), value));
        self
    }

    /// For bootstraps with file-based LDS: the initial listener file from `envoy-test/`.
    pub fn lds(mut self, listener_file: &str) -> Self {
        self.lds_file = Some(listener_file.to_string());
        self
    }

    /// An environment variable for the Envoy process (given to VMs through `host_env_keys`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Replaces the HTTP filters of the listener `listener`'s HTTP connection manager (the router is added last).
    pub fn http_filters(mut self, listener: &str, filters: Vec<Value>) -> Self {
        self.http_filters = Some((listener.to_string(), filters));
        self
    }

    /// Pins Envoy to one CPU core (`taskset`), for benchmarks.
    pub fn cpu(mut self, core: u32) -> Self {
        self.cpu = Some(core);
        self
    }

    /// Envoy's log level (default `info`; benchmarks use `warn`).
    pub fn log_level(mut self, level: &'static str) -> Self {
        self.log_level = level;
        self
    }

    /// How long a listener replaced through LDS drains before it (and its filters' VMs) goes (`--drain-time-s`).
    pub fn drain_time_secs(mut self, secs: u32) -> Self {
        self.drain_time_secs = Some(secs);
        self
    }

    /// Starts Envoy and waits until it is ready; panics with Envoy's log if it does not get there.
    pub fn start(self) -> Envoy {
        let mut envoy = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited ({status}) before it was ready:\n{}", envoy.log());
            }
            if let Some(admin) = envoy.read_admin_address() {
                if matches!(admin::request(admin, "GET", "/ready"), Ok((200, _))) {
                    envoy.admin = Some(admin);
                    envoy.load_listeners();
                    return envoy;
                }
            }
            assert!(Instant::now() < deadline, "Envoy was not ready within 60s:\n{}", envoy.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts Envoy expecting it to refuse the configuration; returns its log.
    pub fn start_expecting_failure(self) -> String {
        let mut envoy = self.spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                assert!(!status.success(), "Envoy exited successfully");
                return envoy.log();
            }
            if let Some(admin) = envoy.read_admin_address() {
                if matches!(admin::request(admin, "GET", "/ready"), Ok((200, _))) {
                    panic!("Envoy accepted the configuration:\n{}", envoy.log());
                }
            }
            assert!(Instant::now() < deadline, "Envoy neither failed nor got ready within 60s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(self) -> Envoy {
        let dir = tempfile::Builder::new().prefix("envoy-test-").tempdir().expect("temporary directory");
        let lds_path = dir.path().join("lds.json");
        if let Some(lds_file) = &self.lds_file {
            let listeners = self.rewrite(load_yaml(&paths::envoy_test_file(lds_file)), &lds_path, &BTreeMap::new());
            write_atomically(&lds_path, &listeners);
        }
        let bootstrap = self.rewrite(load_yaml(&paths::envoy_test_file(&self.file)), &lds_path, &BTreeMap::new());
        let config_path = dir.path().join("envoy.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&bootstrap).expect("json")).expect("write config");
        // Envoy's log goes to stderr, written unbuffered to a file (`--log-path` is flushed only every few seconds).
        let log_path = dir.path().join("envoy.log");
        let log_file = fs::File::create(&log_path).expect("log file");
        let admin_path = dir.path().join("admin-address");
        let mut command = match self.cpu {
            Some(core) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", &core.to_string()]).arg(paths::envoy_bin());
                taskset
            }
            None => Command::new(paths::envoy_bin()),
        };
        let child = command
            .current_dir(paths::project_root())
            .arg("-c")
            .arg(&config_path)
            .args(["--use-dynamic-base-id", "--concurrency", &self.concurrency.to_string(), "-l", self.log_level])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(
                self.drain_time_secs.map(|secs| ["--drain-time-s".to_string(), secs.to_string()]).into_iter().flatten(),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(
                (self.build == Build::DynamicModule)
                    .then(|| ("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", paths::dynamic_module_dir().into_os_string())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (run envoy-test/install)", paths::envoy_bin().display()));
        Envoy { child, dir, config: self, log_path, admin_path, lds_path, admin: None, listeners: BTreeMap::new() }
    }

    /// Applies the per-test changes to a bootstrap or an LDS listener file.
    fn rewrite(&self, mut config: Value, lds_path: &Path, listener_ports: &BTreeMap<String, u16>) -> Value {
        // Listeners (static, or the resources of an LDS file) and the admin: port 0, or the port the listener
        // already has when it is updated through LDS.
        for pointer in ["/static_resources/listeners", "/resources"] {
            let Some(Value::Array(list)) = config.pointer_mut(pointer) else { continue };
            for listener in list {
                let port = listener.get("name").and_then(Value::as_str).and_then(|n| listener_ports.get(n)).copied();
                if let Some(Value::Number(p)) = listener.pointer_mut("/address/socket_address/port_value") {
                    *p = port.unwrap_or(0).into();
                }
            }
        }
        if let Some(Value::Number(p)) = config.pointer_mut("/admin/address/socket_address/port_value") {
            *p = 0.into();
        }
        if let Some(Value::String(path)) = config.pointer_mut("/dynamic_resources/lds_config/path_config_source/path") {
            *path = lds_path.display().to_string();
        }
        if let Some((name, filters)) = &self.http_filters {
            let router = serde_json::json!({"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}});
            let listeners = config.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut);
            for listener in listeners.into_iter().flatten().filter(|l| l["name"] == name.as_str()) {
                walk(listener, &mut |object| {
                    if object.contains_key("http_filters") && object.contains_key("stat_prefix") {
                        let mut chain = filters.clone();
                        chain.push(router.clone());
                        object.insert("http_filters".into(), Value::Array(chain));
                    }
                });
            }
        }
        walk(&mut config, &mut |object| {
            // Cluster endpoints: to the test's upstream ports.
            if let Some(Value::Object(socket)) = object.get_mut("socket_address") {
                let fixed = socket.get("port_value").and_then(Value::as_u64);
                if let Some(port) = fixed.and_then(|p| self.upstream_ports.get(&p)) {
                    socket.insert("port_value".into(), (*port).into());
                }
            }
            // .wasm files named relative to the project: to the build output (an absolute path stays as it is).
            let wasm_file = if self.build == Build::Wasm { object.get_mut("filename") } else { None };
            if let Some(Value::String(filename)) = wasm_file {
                let relative = !filename.starts_with('/');
                if let Some(name) =
                    filename.strip_suffix(".wasm").and_then(|f| f.rsplit('/').next()).filter(|_| relative)
                {
                    *filename = paths::wasm_file(name).display().to_string();
                }
            }
            // File access logs to stdout: to a file in the temporary directory.
            let is_file_log =
                object.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".FileAccessLog"));
            if is_file_log && object.get("path").and_then(Value::as_str) == Some("/dev/stdout") {
                object
                    .insert("path".into(), Value::String(lds_path.with_file_name("access.log").display().to_string()));
            }
            // Plugin options set by the test.
            if object.contains_key("vm_config") {
                for (plugin, key, value) in &self.plugin_options {
                    if object.get("name").and_then(Value::as_str) == Some(plugin.as_str()) {
                        match value {
                            Value::Null => object.remove(key),
                            value => object.insert(key.clone(), value.clone()),
                        };
                    }
                }
            }
            // Plugin configurations replaced by the test.
            let plugin = object.get("name").and_then(Value::as_str).map(str::to_string);
            if let (Some(plugin), Some(Value::Object(configuration))) = (plugin, object.get_mut("configuration")) {
                if let Some(json) = self.plugin_configs.get(&plugin) {
                    configuration.insert("value".into(), Value::String(json.clone()));
                }
            }
        });
        if self.build == Build::DynamicModule {
            for filter in to_dynamic_modules(&mut config) {
                paths::dynamic_module_file(&filter);
            }
        }
        config
    }
}

/// Turns every Wasm filter of ours in `config` into the dynamic module of the same filter (as
/// `envoy-test/dynamic-modules.py` does for users); returns the modules' names.
pub fn to_dynamic_modules(config: &mut Value) -> Vec<String> {
    let mut modules = Vec::new();
    walk(config, &mut |object| {
        if let Some((filter, module)) = dynamic_module_filter(object) {
            modules.push(filter);
            *object = module;
        }
    });
    modules
}

/// The dynamic-module filter that stands for a Wasm filter's `typed_config` (`None` for anything else): the module
/// named after the `.wasm` file, the plugin's name as `filter_name`, its configuration as `filter_config`, and the
/// Wasm filter's metric prefix (so that metric names and `stats_tags` stay the same).
fn dynamic_module_filter(object: &serde_json::Map<String, Value>) -> Option<(String, serde_json::Map<String, Value>)> {
    if object.get("@type").and_then(Value::as_str)
        != Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
    {
        return None;
    }
    let plugin = object.get("config")?;
    let filename = plugin.pointer("/vm_config/code/local/filename").and_then(Value::as_str)?;
    let filter = Path::new(filename).file_stem()?.to_str()?;
    let configuration = plugin.pointer("/configuration/value").and_then(Value::as_str).unwrap_or("");
    let module = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": filter, "do_not_close": true, "metrics_namespace": "wasmcustom"},
        "filter_name": plugin.get("name").cloned().unwrap_or(Value::String(filter.to_string())),
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
    });
    Some((filter.to_string(), module.as_object()?.clone()))
}

fn walk(value: &mut Value, visit: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
    match value {
        Value::Object(object) => {
            visit(object);
            for child in object.values_mut() {
                walk(child, visit);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| walk(item, visit)),
        _ => {}
    }
}

/// Reads a YAML file as JSON values.
pub fn load_yaml(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes elsewhere and renames over the target, as Envoy's file-based xDS requires.
fn write_atomically(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value).expect("json")).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// A running Envoy; killed when dropped. If the test is failing, its log is printed first.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    config: EnvoyConfig,
    log_path: PathBuf,
    admin_path: PathBuf,
    lds_path: PathBuf,
    admin: Option<SocketAddr>,
    listeners: BTreeMap<String, u16>,
}

impl Envoy {
    /// `http://127.0.0.1:<port>` of a listener, by name.
    pub fn url(&self, listener: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(listener))
    }

    pub fn port(&self, listener: &str) -> u16 {
        *self.listeners.get(listener).unwrap_or_else(|| panic!("no listener {listener:?}: {:?}", self.listeners))
    }

    /// The Envoy process id (for CPU accounting in benchmarks).
    /// Which build of the filters this Envoy runs.
    pub fn build(&self) -> Build {
        self.config.build
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin.expect("admin address")
    }

    /// GET on the admin interface, returning the body (panics unless 200).
    pub fn admin_get(&self, path: &str) -> String {
        match admin::request(self.admin_address(), "GET", path) {
            Ok((200, body)) => body,
            other => panic!("admin GET {path}: {other:?}"),
        }
    }

    /// All counters and gauges.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        admin::parse_stats(&self.admin_get("/stats"))
    }

    /// One counter or gauge (`None` when Envoy has no such stat).
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().get(name).copied()
    }

    /// Waits until `stat` has a value satisfying `ok` (stats are flushed asynchronously); returns the last value.
    pub fn wait_for_stat(&self, name: &str, ok: impl Fn(u64) -> bool) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value = self.stat(name);
            if value.is_some_and(&ok) || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The access log so far (file access logs the configuration writes to `/dev/stdout`).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.lds_path.with_file_name("access.log")).unwrap_or_default()
    }

    /// Waits until the access log contains `text`; returns whether it did (Envoy flushes it every second).
    pub fn wait_for_access_log(&self, text: &str) -> bool {
        wait_until(|| self.access_log().contains(text))
    }

    /// Waits until Envoy's log contains `text`; returns whether it did.
    pub fn wait_for_log(&self, text: &str) -> bool {
        wait_until(|| self.log().contains(text))
    }

    /// Replaces the LDS listener file with `listener_file` from `envoy-test/` (rewritten like the bootstrap, with
    /// the plugin configurations given here), keeping each listener on the port it has.
    pub fn update_lds(&self, listener_file: &str, plugin_configs: &[(&str, &str)]) {
        let mut config = self.config.clone();
        for (plugin, json) in plugin_configs {
            config = config.plugin_config(plugin, json);
        }
        let listeners =
            config.rewrite(load_yaml(&paths::envoy_test_file(listener_file)), &self.lds_path, &self.listeners);
        write_atomically(&self.lds_path, &listeners);
    }

    /// The temporary directory of this Envoy (config, log, LDS file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn read_admin_address(&self) -> Option<SocketAddr> {
        fs::read_to_string(&self.admin_path).ok()?.trim().parse().ok()
    }

    fn load_listeners(&mut self) {
        let body = self.admin_get("/listeners?format=json");
        let parsed: Value = serde_json::from_str(&body).expect("listeners json");
        for status in parsed["listener_statuses"].as_array().into_iter().flatten() {
            let name = status["name"].as_str().unwrap_or_default().to_string();
            if let Some(port) = status.pointer("/local_address/socket_address/port_value").and_then(Value::as_u64) {
                self.listeners.insert(name, port as u16);
            }
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            print_log_tail(&format!("Envoy log ({})", self.config.file), &self.log(), 300);
        }
    }
}

/// Polls `done` for up to 20 s; returns whether it became true.
fn wait_until(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Prints the last `lines` lines of a log of a process the failing test ran.
pub fn print_log_tail(title: &str, log: &str, lines: usize) {
    let all: Vec<&str> = log.lines().collect();
    let tail = all.get(all.len().saturating_sub(lines)..).unwrap_or_default();
    eprintln!("---- {title} ----\n{}\n---- end of {title} ----", tail.join("\n"));
}
