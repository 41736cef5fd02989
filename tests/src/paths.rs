//! Where things are: the project root, the built .wasm and dynamic-module files, the Envoy binary.

use std::path::{Path, PathBuf};

/// The project root (the workspace directory).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `envoy-test/<name>`.
pub fn envoy_test_file(name: &str) -> PathBuf {
    project_root().join("envoy-test").join(name)
}

fn target_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| project_root().join("target"));
    if target.is_absolute() {
        target
    } else {
        project_root().join(target)
    }
}

/// The directory holding `ratelimit.wasm` and its siblings (`cargo build --release --target wasm32-wasip1`).
pub fn wasm_dir() -> PathBuf {
    target_dir().join("wasm32-wasip1").join("release")
}

/// The directory holding `libratelimit.so` and its siblings (`cargo build --profile dynamic-module`): Envoy's
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub fn dynamic_module_dir() -> PathBuf {
    target_dir().join("dynamic-module")
}

/// The dynamic module of a filter; panics with the command to run when it has not been built.
pub fn dynamic_module_file(filter: &str) -> PathBuf {
    let path = dynamic_module_dir().join(format!("lib{filter}.so"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --profile dynamic-module -p {filter}` first",
        path.display()
    );
    path
}

/// The .wasm file of a filter; panics with the command to run when it has not been built.
pub fn wasm_file(filter: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{filter}.wasm"));
    assert!(path.exists(), "{} is missing: run `cargo build --release --target wasm32-wasip1` first", path.display());
    path
}

/// Envoy: `ENVOY_BIN`, else the project's virtualenv (`envoy-test/install` puts it there), else `PATH`.
pub fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    let local = project_root().join(".venv").join("bin").join("envoy");
    if local.exists() {
        return local;
    }
    PathBuf::from("envoy")
}
