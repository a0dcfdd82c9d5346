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

/// `<dir>/<name>.wasm` when that file exists. `name` is a crate or file name: `meshwasm-probe`,
/// `meshwasm_probe` and `meshwasm_probe.wasm` all name `meshwasm_probe.wasm`.
pub fn find_wasm_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(format!("{}.wasm", wasm_file_stem(name)));
    path.is_file().then_some(path)
}

/// The command that builds the artifact `name`, for error messages.
pub fn build_hint(name: &str) -> String {
    format!(
        "run `make wasm` (or `cargo build --profile wasm --target wasm32-wasip1 -p {}`)",
        wasm_file_stem(name).replace('_', "-")
    )
}

fn wasm_file_stem(name: &str) -> String {
    name.trim_end_matches(".wasm").replace('-', "_")
}

/// Path of a filter artifact in [`wasm_dir`], e.g. `wasm_path("meshwasm_probe")`.
///
/// # Panics
/// When the file does not exist: the message says to run `make wasm`.
pub fn wasm_path(name: &str) -> PathBuf {
    let dir = wasm_dir();
    find_wasm_in(&dir, name).unwrap_or_else(|| {
        panic!(
            "meshwasm tests: filter artifact {} is missing: {}",
            dir.join(format!("{}.wasm", wasm_file_stem(name))).display(),
            build_hint(name)
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_and_file_names_find_the_same_artifact() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meshwasm_probe.wasm"), b"\0asm").unwrap();
        let want = Some(dir.path().join("meshwasm_probe.wasm"));
        for name in ["meshwasm-probe", "meshwasm_probe", "meshwasm_probe.wasm"] {
            assert_eq!(find_wasm_in(dir.path(), name), want, "{name}");
        }
        assert_eq!(find_wasm_in(dir.path(), "meshwasm_noop"), None);
        assert!(build_hint("meshwasm_noop.wasm").contains("-p meshwasm-noop"));
    }
}
