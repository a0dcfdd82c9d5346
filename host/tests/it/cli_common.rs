//! Shared by the `cli_*` tests: the binary, artifact paths, and small proxy-wasm modules written in WAT.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshwasm-host");

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// A filter artifact built with `cargo build --profile wasm --target wasm32-wasip1 -p <crate>`.
/// `MESHWASM_WASM_DIR` (set by the Makefile) overrides the directory.
pub fn artifact(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MESHWASM_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip1/wasm"));
    let path = dir.join(file);
    path.is_file().then_some(path)
}

/// Like [`artifact`], but fails the test with the command that builds it.
pub fn required_artifact(file: &str, krate: &str) -> PathBuf {
    artifact(file).unwrap_or_else(|| {
        panic!(
            "missing filter artifact {file}: build it with \
             `cargo build --profile wasm --target wasm32-wasip1 -p {krate}` (or `make wasm`)"
        )
    })
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run meshwasm-host")
}

pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Writes a WAT module as a .wasm file into `dir`.
pub fn wasm_file(dir: &Path, name: &str, wat_text: &str) -> PathBuf {
    let bytes = wat::parse_str(wat_text).expect("valid WAT");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write wasm");
    path
}

/// A unique scratch directory under the target dir (tests run in parallel).
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The common part of the WAT proxy-wasm filters below: memory, a bump allocator that wraps (the
/// host copies data in and the guest reads it within one callback), the lifecycle callbacks.
pub const WAT_BASE: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $n)) (i32.const 1000000))
      (then (global.set $heap (i32.const 65536))))
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
"#;

/// A filter that rejects any non-empty plugin configuration, saying why at error level.
pub fn wat_config_rejecting() -> String {
    format!(
        r#"(module {WAT_BASE}
  (data (i32.const 1024) "wat-filter: configuration: must be empty")
  (func (export "proxy_on_configure") (param $ctx i32) (param $len i32) (result i32)
    (if (result i32) (i32.eqz (local.get $len))
      (then (i32.const 1))
      (else (drop (call $log (i32.const 4) (i32.const 1024) (i32.const 40))) (i32.const 0)))))"#
    )
}

/// A filter that answers requests carrying `x-deny` itself: 403, body `denied by wat-filter`,
/// header `x-denied-by: wat`; traps on requests carrying `x-crash`; lets all other requests through.
pub fn wat_local_reply() -> String {
    format!(
        r#"(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  {WAT_BASE}
  (data (i32.const 1024) "x-deny")
  (data (i32.const 1040) "denied by wat-filter")
  (data (i32.const 1072) "\01\00\00\00\0b\00\00\00\03\00\00\00x-denied-by\00wat\00")
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (data (i32.const 1120) "x-crash")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1120) (i32.const 7) (i32.const 2048) (i32.const 2052)))
      (then (unreachable)))
    (if (result i32)
      (i32.eqz (call $get_header (i32.const 0) (i32.const 1024) (i32.const 6) (i32.const 2048) (i32.const 2052)))
      (then
        (drop (call $reply (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 1040) (i32.const 20)
                           (i32.const 1072) (i32.const 28) (i32.const -1)))
        (i32.const 1))
      (else (i32.const 0)))))"#
    )
}

/// A filter whose vm_start traps.
pub fn wat_trapping_vm_start() -> String {
    let base = WAT_BASE.replace(
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))"#,
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (unreachable))"#,
    );
    format!(
        r#"(module {base} (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1)))"#
    )
}

/// A proxy-wasm filter that declares another ABI version.
pub fn wat_old_abi() -> String {
    let base = WAT_BASE.replace("proxy_abi_version_0_2_1", "proxy_abi_version_0_1_0");
    format!(
        r#"(module {base} (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1)))"#
    )
}

/// A filter importing a host function neither Envoy nor this host provides.
pub fn wat_unknown_import() -> String {
    format!(
        r#"(module (import "env" "proxy_teleport" (func (param i32) (result i32))) {WAT_BASE}
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1)))"#
    )
}

/// A wasm module that is not a proxy-wasm filter at all.
pub const WAT_NOT_PROXY_WASM: &str =
    r#"(module (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"#;

/// A filter whose configure never returns (Envoy would hang at start; the host's deadline stops it).
pub fn wat_looping_configure() -> String {
    format!(
        r#"(module {WAT_BASE}
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 1)))"#
    )
}
