//! The release artefacts (envoy-test/release): dist/ holds the four .wasm files, the four dynamic modules,
//! SHA256SUMS and one OCI image per .wasm filter in image-layout form; the output is reproducible; Envoy loads every
//! filter through `vm_config.code.remote` with the sha256 from SHA256SUMS and refuses a wrong one, and loads every
//! dynamic module from dist/; every image survives a push to a real registry (Debian's docker-registry, with
//! skopeo) with its single plugin.wasm layer intact.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use integration_tests::paths;
use integration_tests::{EchoUpstream, Envoy, EnvoyConfig};
use serde_json::{json, Value};

const FILTERS: [&str; 4] = ["ratelimit", "transformation", "aws", "nats"];
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Runs envoy-test/release once per test binary, into the target directory (never the user's dist/).
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let target = paths::wasm_dir().parent().and_then(Path::parent).unwrap().to_path_buf();
        let out = target.join("release-test").join("dist");
        run_release(&out, false);
        out
    })
}

fn run_release(out: &Path, skip_build: bool) {
    let mut command = Command::new(paths::envoy_test_file("release"));
    command.arg(out).current_dir(paths::project_root());
    if skip_build {
        command.env("RELEASE_SKIP_BUILD", "1");
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "envoy-test/release failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (run envoy-test/install)"));
    assert!(output.status.success(), "{program} {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

fn sha256(path: &Path) -> String {
    let out = String::from_utf8(run("sha256sum", &[path.to_str().unwrap()])).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

/// `name -> sha256` from SHA256SUMS.
fn sums() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(dist().join("SHA256SUMS")).unwrap();
    text.lines()
        .map(|line| {
            let (hash, name) = line.split_once("  ").unwrap_or_else(|| panic!("not sha256sum format: {line:?}"));
            (name.to_string(), hash.to_string())
        })
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of a .tar.gz, with their contents (through Debian's tar, as a user would unpack it).
fn untar_gz(archive: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    run("tar", &["-xzf", archive.to_str().unwrap(), "-C", dir.path().to_str().unwrap()]);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_file(), "{:?} in the layer is not a file", entry.file_name());
        files.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap());
    }
    files
}

#[test]
fn dist_holds_the_modules_their_sums_and_one_compat_image_per_filter() {
    let dist = dist();
    let sums = sums();
    assert_eq!(sums.keys().cloned().collect::<Vec<_>>(), {
        let mut names: Vec<String> = FILTERS.iter().flat_map(|f| [format!("{f}.wasm"), format!("lib{f}.so")]).collect();
        names.sort();
        names
    });
    for filter in FILTERS {
        let module = dist.join(format!("lib{filter}.so"));
        let bytes = std::fs::read(&module).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF", "lib{filter}.so is not a shared library");
        assert_eq!(
            bytes,
            std::fs::read(paths::dynamic_module_file(filter)).unwrap(),
            "lib{filter}.so is not the build"
        );
        assert_eq!(sums[&format!("lib{filter}.so")], sha256(&module));
    }
    for filter in FILTERS {
        let wasm = dist.join(format!("{filter}.wasm"));
        let bytes = std::fs::read(&wasm).unwrap();
        assert_eq!(&bytes[..4], b"\0asm", "{filter}.wasm is not a Wasm module");
        // The README promises every module under 1 MiB (Envoy fetches and compiles it on every worker).
        assert!(bytes.len() < 1 << 20, "{filter}.wasm is {} bytes, over 1 MiB", bytes.len());
        assert_eq!(bytes, std::fs::read(paths::wasm_file(filter)).unwrap(), "{filter}.wasm is not the build output");
        assert_eq!(sums[&format!("{filter}.wasm")], sha256(&wasm));

        // The image layout: oci-layout, index.json naming one manifest, every blob stored under its digest.
        let layout = dist.join("oci").join(filter);
        assert_eq!(read_json(&layout.join("oci-layout")), json!({"imageLayoutVersion": "1.0.0"}));
        let index = read_json(&layout.join("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{filter}: {index}");
        assert_eq!(manifests[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        let blob = |descriptor: &Value| {
            let digest = descriptor["digest"].as_str().unwrap();
            let path = layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap());
            assert_eq!(format!("sha256:{}", sha256(&path)), digest, "{filter}: blob {digest} does not match");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), descriptor["size"].as_u64().unwrap());
            path
        };
        let manifest = read_json(&blob(&manifests[0]));
        assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{filter}: the compat format has exactly one layer");
        assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);

        // The layer: a tar.gz holding plugin.wasm alone, byte-identical to the module.
        let layer = blob(&layers[0]);
        let files = untar_gz(&layer);
        assert_eq!(files.keys().collect::<Vec<_>>(), ["plugin.wasm"], "{filter}");
        assert!(files["plugin.wasm"] == bytes, "{filter}: plugin.wasm differs from {filter}.wasm");

        // The config: a standard image config whose diff_id is the digest of the uncompressed layer.
        let config = read_json(&blob(&manifest["config"]));
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip1");
        let tar = run("gzip", &["-dc", layer.to_str().unwrap()]);
        let tar_path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tar_path.path(), tar).unwrap();
        assert_eq!(
            config["rootfs"],
            json!({"type": "layers", "diff_ids": [format!("sha256:{}", sha256(tar_path.path()))]})
        );
    }
}

#[test]
fn release_is_reproducible() {
    let again = tempfile::tempdir().unwrap();
    run_release(&again.path().join("dist"), true);
    for filter in FILTERS {
        let first = read_json(&dist().join("oci").join(filter).join("index.json"));
        let second = read_json(&again.path().join("dist/oci").join(filter).join("index.json"));
        assert_eq!(first, second, "{filter}: a second run gave another manifest digest");
    }
    assert_eq!(
        std::fs::read(dist().join("SHA256SUMS")).unwrap(),
        std::fs::read(again.path().join("dist/SHA256SUMS")).unwrap()
    );
}

/// A minimal HTTP/1.1 file server for Envoy's remote code fetch: `GET /<name>` answers dist/<name>.
struct CodeServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl CodeServer {
    fn start(dir: &'static Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve_file(stream, dir));
            }
        });
        CodeServer { port, requests }
    }
}

fn serve_file(mut stream: TcpStream, dir: &Path) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let file = dir.join(path.trim_start_matches('/'));
    let (status, body) = match std::fs::read(&file) {
        Ok(body) if !path.contains("..") => ("200 OK", body),
        _ => ("404 Not Found", Vec::new()),
    };
    let header = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
    let _ = stream.write_all(header.as_bytes());
    let _ = stream.write_all(&body);
}

/// The Wasm filter `filter` with its code fetched from the code server.
fn remote_filter(filter: &str, sha256: &str, configuration: Value) -> Value {
    let mut config = json!({
        "name": filter,
        "root_id": filter,
        "failure_policy": "FAIL_RELOAD",
        "reload_config": {"backoff": {"base_interval": "0.2s", "max_interval": "2s"}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration.to_string()},
        "vm_config": {
            "vm_id": filter,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"remote": {
                "http_uri": {"uri": format!("http://127.0.0.1/{filter}.wasm"), "cluster": "wasm_code", "timeout": "10s"},
                "sha256": sha256,
                "retry_policy": {"num_retries": 1, "retry_back_off": {"base_interval": "0.2s", "max_interval": "1s"}}
            }}
        }
    });
    if filter != "ratelimit" {
        config["allow_on_headers_stop_iteration"] = json!(true);
    }
    json!({"name": filter, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config}})
}

fn configuration(filter: &str) -> Value {
    match filter {
        "ratelimit" => json!({"rules": [{"name": "once", "match": {"prefix": "/limited"},
                                         "limits": [{"requests": 1, "per": "1h"}]}]}),
        "transformation" => json!({"transformations": [{"match": {"prefix": "/"}, "route_transformations": {
            "request_transformation": {"transformation_template": {"headers": {"x-transformed": {"text": "yes"}}}}}}]}),
        "aws" => json!({"region": "us-east-1", "service": "s3",
                        "credentials": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "not-a-secret"},
                        "rules": [{"match": {"prefix": "/signed"}}]}),
        // No tunnel cluster here: a publish fails, and the filter's own JSON error shows it ran.
        "nats" => json!({"cluster": "no_such_tunnel", "timeout": "1s",
                         "rules": [{"match": {"prefix": "/events/", "methods": ["POST"]}, "subject": "events.{path:2}"}]}),
        other => panic!("unknown filter {other}"),
    }
}

fn gateway(echo: &EchoUpstream, code: &CodeServer, sums: &BTreeMap<String, String>) -> EnvoyConfig {
    let filters = FILTERS.iter().map(|f| remote_filter(f, &sums[&format!("{f}.wasm")], configuration(f))).collect();
    EnvoyConfig::new("remote-code.yaml")
        .upstream(8081, echo.port())
        .upstream(8095, code.port)
        .http_filters("front", filters)
}

/// The four filters of `configuration` ran on requests through `envoy`'s front listener.
async fn assert_every_filter_runs(envoy: &Envoy, echo: &EchoUpstream) {
    let url = envoy.url("front");
    let client = reqwest::Client::new();

    // transformation and aws on one request: the header added, the request signed.
    let response = client.get(format!("{url}/signed/object")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-transformed"], "yes", "{echoed}");
    let authorization = echoed["headers"]["authorization"].as_str().unwrap_or_default();
    assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{echoed}");

    // ratelimit: one request an hour on /limited.
    assert_eq!(client.get(format!("{url}/limited")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{url}/limited")).send().await.unwrap().status(), 429);

    // nats: the publish is the filter's (its JSON error), never the upstream's.
    let response = client.post(format!("{url}/events/x")).body("event").send().await.unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["filter"], "nats", "{error}");
    assert!(echo.received().iter().all(|r| r.path != "/events/x"), "the publish reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_loads_every_filter_as_remote_code_with_its_sha256() {
    let echo = EchoUpstream::start();
    let code = CodeServer::start(dist());
    let envoy: Envoy = gateway(&echo, &code, &sums()).start();
    assert!(code.requests.load(Ordering::SeqCst) >= FILTERS.len(), "the code was not fetched over HTTP");
    assert_every_filter_runs(&envoy, &echo).await;
}

/// The dynamic modules as a user installs them: Envoy's search path pointed at dist/, the same configurations.
#[tokio::test(flavor = "multi_thread")]
async fn envoy_loads_every_dynamic_module_from_dist() {
    let echo = EchoUpstream::start();
    let modules = FILTERS
        .iter()
        .map(|filter| {
            json!({"name": filter, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {"name": filter},
                "filter_name": filter,
                "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": configuration(filter).to_string()}}})
        })
        .collect();
    let envoy = EnvoyConfig::new("remote-code.yaml")
        .upstream(8081, echo.port())
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dist().to_str().unwrap())
        .http_filters("front", modules)
        .start();
    // The libraries Envoy mapped come from dist/ (its only search path).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", envoy.pid())).unwrap();
    for filter in FILTERS {
        let loaded = dist().join(format!("lib{filter}.so"));
        assert!(maps.contains(loaded.to_str().unwrap()), "{} is not mapped:\n{maps}", loaded.display());
    }
    assert_every_filter_runs(&envoy, &echo).await;
}

/// Envoy fetches the code, finds another sha256 and never runs it: the plugin fails to load and, failing closed,
/// every request through it gets 503 (Envoy still starts: remote code loads after the listeners are up).
#[tokio::test(flavor = "multi_thread")]
async fn envoy_refuses_remote_code_whose_sha256_does_not_match() {
    let echo = EchoUpstream::start();
    let code = CodeServer::start(dist());
    let wrong = sha256(&dist().join("SHA256SUMS"));
    let filter = remote_filter("ratelimit", &wrong, configuration("ratelimit"));
    let envoy = EnvoyConfig::new("remote-code.yaml")
        .upstream(8081, echo.port())
        .upstream(8095, code.port)
        .http_filters("front", vec![filter])
        .start();
    assert!(envoy.wait_for_log("Plugin ratelimit failed to load"), "{}", envoy.log());
    assert!(code.requests.load(Ordering::SeqCst) >= 1, "the code was never fetched");
    assert!(envoy.log().contains("Retry limit exceeded for fetching data from remote data source"));
    let response = reqwest::get(format!("{}/anything", envoy.url("front"))).await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(echo.received().is_empty(), "a request passed a filter that never loaded");
    assert!(envoy.wait_for_access_log("GET /anything 503 wasm_fail_stream"), "{}", envoy.access_log());
}

/// Debian's docker-registry on a free loopback port, storing in a temporary directory; stopped on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n\
                 http: {{addr: \"127.0.0.1:{port}\"}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry: {e} (run envoy-test/install)"));
        let mut registry = Registry { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(registry.child.try_wait().unwrap().is_none(), "docker-registry exited");
            assert!(Instant::now() < deadline, "docker-registry did not listen within 20s");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn reference(&self, filter: &str) -> String {
        format!("docker://127.0.0.1:{}/envoy-wasm/{filter}:test", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_image_survives_a_push_to_a_registry_with_its_plugin_wasm() {
    let registry = Registry::start();
    for filter in FILTERS {
        let layout = dist().join("oci").join(filter);
        let reference = registry.reference(filter);
        run("skopeo", &["copy", "--dest-tls-verify=false", &format!("oci:{}", layout.display()), &reference]);

        // The manifest the registry serves: the one packed, byte for byte (so the same digest).
        let served = run("skopeo", &["inspect", "--raw", "--tls-verify=false", &reference]);
        let index = read_json(&layout.join("index.json"));
        let packed_digest = index["manifests"][0]["digest"].as_str().unwrap();
        let packed =
            std::fs::read(layout.join("blobs/sha256").join(packed_digest.strip_prefix("sha256:").unwrap())).unwrap();
        assert!(served == packed, "{filter}: the registry serves another manifest");
        let manifest: Value = serde_json::from_slice(&served).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], LAYER_MEDIA_TYPE);
        let layer_digest = layers[0]["digest"].as_str().unwrap();

        // The layer, pulled back from the registry: plugin.wasm, byte-identical to dist/<filter>.wasm.
        let pulled = tempfile::tempdir().unwrap();
        let target = format!("dir:{}", pulled.path().join("image").display());
        run("skopeo", &["copy", "--src-tls-verify=false", &reference, &target]);
        let layer = pulled.path().join("image").join(layer_digest.strip_prefix("sha256:").unwrap());
        assert_eq!(format!("sha256:{}", sha256(&layer)), layer_digest);
        let files = untar_gz(&layer);
        assert_eq!(files.keys().collect::<Vec<_>>(), ["plugin.wasm"], "{filter}");
        let wasm = std::fs::read(dist().join(format!("{filter}.wasm"))).unwrap();
        assert!(files["plugin.wasm"] == wasm, "{filter}: the pulled plugin.wasm differs from {filter}.wasm");
    }
}
