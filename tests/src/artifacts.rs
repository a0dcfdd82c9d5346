//! Paths of the artifacts tests need: filter `.wasm` files and the Envoy binary.
//!
//! Both fail loudly, naming the command that fixes the problem, instead of letting a test skip.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Directory holding the filter artifacts: `$MESHWASM_WASM_DIR`, else `<workspace>/target/wasm32-wasip1/wasm`.
pub fn wasm_dir() -> PathBuf {
    match std::env::var_os("MESHWASM_WASM_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("wasm32-wasip1").join("wasm"),
    }
}

/// Path of a filter artifact, e.g. `wasm_path("meshwasm_probe")` (a `-` in the name is accepted too).
///
/// # Panics
/// When the file does not exist: the message says to run `make wasm`.
pub fn wasm_path(name: &str) -> PathBuf {
    let file = name.trim_end_matches(".wasm").replace('-', "_");
    let path = wasm_dir().join(format!("{file}.wasm"));
    assert!(
        path.is_file(),
        "meshwasm tests: filter artifact {} is missing: run `make wasm` (or `cargo build --profile wasm \
         --target wasm32-wasip1 -p {}`)",
        path.display(),
        file.replace('_', "-"),
    );
    path
}

/// Path of the Envoy binary: `$MESHWASM_ENVOY`, else `<workspace>/.venv/bin/envoy-binary`.
///
/// # Panics
/// When the file does not exist: the message says to run `make setup-envoy`.
pub fn envoy_binary() -> PathBuf {
    let path = match std::env::var_os("MESHWASM_ENVOY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv").join("bin").join("envoy-binary"),
    };
    assert!(
        path.is_file(),
        "meshwasm tests: Envoy binary {} is missing: run `make setup-envoy`",
        path.display()
    );
    path
}
