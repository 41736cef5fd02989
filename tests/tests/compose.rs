//! docker-compose.yaml cannot run here (no Docker engine), so check what can go wrong without one: every file it
//! mounts exists, the Envoy, moto and NATS images are the versions the tests use, Envoy waits for the service that
//! builds the .wasm files, and every Envoy config it names loads in `envoy --mode validate` with the .wasm files at
//! the mounted paths.

use std::path::PathBuf;
use std::process::Command;

use integration_tests::envoy::load_yaml;
use integration_tests::paths::{envoy_bin, project_root, wasm_dir};
use serde_json::Value;

/// Host path of a file seen at `container_path` through the service's `./host:/container` volumes.
fn host_path(volumes: &[(PathBuf, String)], container_path: &str) -> Option<PathBuf> {
    volumes.iter().find_map(|(host, mount)| {
        let rest = container_path.strip_prefix(mount.as_str())?;
        Some(host.join(rest.trim_start_matches('/')))
    })
}

#[test]
fn compose_mounts_exist_and_envoy_configs_validate() {
    let compose = load_yaml(&project_root().join("docker-compose.yaml"));
    let services = compose["services"].as_object().expect("services");
    assert!(services.contains_key("envoy") && services.contains_key("echo"), "{:?}", services.keys());

    let mut validated = 0;
    for (name, service) in services {
        let mut volumes = Vec::new();
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().expect("short volume syntax");
            let mut parts = spec.split(':');
            let (host, mount) = (parts.next().unwrap(), parts.next().expect("container path"));
            assert!(host.starts_with("./"), "{name}: mount {host} should be relative to the project");
            let host = project_root().join(host.trim_start_matches("./"));
            // The .wasm directory is build output: it exists once the filters are built, as the test command does.
            if host.ends_with("target/wasm32-wasip1/release") {
                assert_eq!(host.canonicalize().unwrap(), wasm_dir().canonicalize().unwrap());
            }
            assert!(host.exists(), "{name}: mounted path {} does not exist", host.display());
            volumes.push((host, mount.to_string()));
        }

        if name == "envoy" {
            let image = service["image"].as_str().unwrap();
            let version = Command::new(envoy_bin()).arg("--version").output().unwrap();
            let version = String::from_utf8_lossy(&version.stdout).to_string();
            let tag = image.rsplit(':').next().unwrap().trim_start_matches('v');
            let minor: String = tag.split('.').take(2).collect::<Vec<_>>().join(".");
            assert!(
                version.contains(&format!("/{minor}.")),
                "image {image} does not match the tested Envoy: {version}"
            );

            let args: Vec<&str> = service["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            let config = args.iter().position(|a| *a == "-c").map(|i| args[i + 1]).expect("-c CONFIG");
            let file = host_path(&volumes, config).unwrap_or_else(|| panic!("{config} is not mounted"));
            let working_dir = service["working_dir"].as_str().expect("working_dir");
            assert_eq!(
                host_path(&volumes, &format!("{working_dir}/envoy-test")),
                Some(project_root().join("envoy-test"))
            );
            let output = Command::new(envoy_bin())
                .current_dir(project_root())
                .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
                .arg(&file)
                .output()
                .unwrap();
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            assert!(output.status.success() && text.contains(" OK"), "{} does not validate:\n{text}", file.display());
            validated += 1;
        }
        if let Some(Value::String(mode)) = service.get("network_mode") {
            assert_eq!(mode, "host", "{name}: the configs use 127.0.0.1, so every service shares one network");
        }
    }
    assert_eq!(validated, 1);
}

#[test]
fn compose_builds_the_filters_first_with_the_tests_versions() {
    let compose = load_yaml(&project_root().join("docker-compose.yaml"));
    let services = &compose["services"];
    // `docker compose up` alone: the build service compiles the four filters before Envoy starts.
    let build = services["build"]["command"].as_array().expect("build command");
    let script: Vec<&str> = build.iter().filter_map(Value::as_str).collect();
    assert!(script.join(" ").contains("cargo build --release --target wasm32-wasip1 --locked"), "{script:?}");
    assert_eq!(services["build"]["volumes"][0], "./:/project");
    assert_eq!(services["envoy"]["depends_on"]["build"]["condition"], "service_completed_successfully");

    let tag = |service: &str| services[service]["image"].as_str().and_then(|i| i.rsplit(':').next()).unwrap_or("");
    let nats = Command::new("nats-server").arg("--version").output().expect("nats-server");
    let nats = String::from_utf8_lossy(&nats.stdout).to_string();
    assert!(nats.contains(&format!("v{}", tag("nats"))), "nats image {} but the tests run {nats}", tag("nats"));
    let install = std::fs::read_to_string(project_root().join("envoy-test/install")).expect("install script");
    assert!(install.contains(&format!("MOTO_VERSION={}", tag("aws"))), "moto image {}", tag("aws"));
}
