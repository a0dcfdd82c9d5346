//! Shared helpers for host tests: WAT guests with a bump allocator and a `report` helper, and the paths
//! of built filter artifacts.
#![allow(dead_code)]

use meshwasm_host::{Host, HostOptions, Module};
use std::path::PathBuf;

/// A fresh host per test (no shared state between tests).
pub fn host() -> Host {
    Host::new(HostOptions::default()).expect("host")
}

/// Path of a filter artifact built with `cargo build --profile wasm --target wasm32-wasip1`.
pub fn artifact(name: &str) -> PathBuf {
    let dir = std::env::var("MESHWASM_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "missing {}: build it with `cargo build --profile wasm --target wasm32-wasip1 -p {}`",
        p.display(),
        name.replace('_', "-")
    );
    p
}

/// Escapes bytes for a WAT data string.
pub fn wat_bytes(b: &[u8]) -> String {
    b.iter().map(|c| format!("\\{c:02x}")).collect()
}

/// The proxy-wasm map encoding.
pub fn pairs(p: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (p.len() as u32).to_le_bytes().to_vec();
    for (k, v) in p {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in p {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Every `env` import a test guest may use, with ABI 0.2.1 signatures.
const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close (param i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve_queue (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
"#;

/// Helpers every guest gets: a bump allocator, `$report(name_ptr, name_len, value)` that records a value
/// into a gauge (so tests read it with `proxy.metric(name)`), and `$mem32(addr)`.
const HELPERS: &str = r#"
  (memory (export "memory") 4)
  (global $bump (mut i32) (i32.const 131072))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    (if (i32.gt_u (i32.add (global.get $bump) (local.get $n)) (i32.const 262144))
      (then (global.set $bump (i32.const 131072))))
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (i32.add (local.get $n) (i32.const 8))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func $report (param $np i32) (param $nl i32) (param $v i32)
    (drop (call $define_metric (i32.const 1) (local.get $np) (local.get $nl) (i32.const 60)))
    (drop (call $record_metric (i32.load (i32.const 60)) (i64.extend_i32_u (local.get $v)))))
  (func $mem32 (param $a i32) (result i32) (i32.load (local.get $a)))
"#;

/// Default callbacks, each added unless the body exports the same name.
const DEFAULTS: &[(&str, &str)] = &[
    ("proxy_on_context_create", r#"(func (export "proxy_on_context_create") (param i32 i32))"#),
    (
        "proxy_on_vm_start",
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))"#,
    ),
    (
        "proxy_on_configure",
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))"#,
    ),
];

/// Replaces every `(str "text")` with `(i32.const ADDR) (i32.const LEN)` and adds the data segments
/// (from address 8192 on). Escapes inside the text are kept as WAT escapes.
fn expand_strings(body: &str) -> String {
    let mut out = String::new();
    let mut data = String::new();
    let mut addr = 8192usize;
    let mut rest = body;
    while let Some(i) = rest.find("(str \"") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 6..];
        let end = after.find("\")").expect("unterminated (str");
        let text = &after[..end];
        let mut len = 0;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' {
                chars.next();
                chars.next();
            }
            len += 1;
        }
        out.push_str(&format!("(i32.const {addr}) (i32.const {len})"));
        data.push_str(&format!("(data (i32.const {addr}) \"{text}\")\n"));
        addr += len + 8;
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out.push_str(&data);
    out
}

/// A WAT guest: imports, helpers, default callbacks, and `body` (more functions, exports, data).
/// Addresses below 1024 are scratch (60 = metric id slot, 100..200 return slots); put data at 1024..8192.
/// `(str "text")` expands to the address and length of a data segment holding `text`.
pub fn guest(body: &str) -> String {
    let body = &expand_strings(body);
    let mut s = String::from("(module\n");
    s.push_str(IMPORTS);
    s.push_str(HELPERS);
    for (name, def) in DEFAULTS {
        if !body.contains(&format!("\"{name}\"")) {
            s.push_str(def);
            s.push('\n');
        }
    }
    s.push_str(body);
    s.push_str("\n)\n");
    s
}

/// Loads a WAT guest.
pub fn load(host: &Host, name: &str, body: &str) -> Module {
    host.load_bytes(name, guest(body).as_bytes()).unwrap_or_else(|e| panic!("{e:#}"))
}
