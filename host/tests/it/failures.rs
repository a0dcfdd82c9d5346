//! Robustness: traps, panics, endless loops and bad pointers fail one stream with Envoy's 503 and a clear
//! error; the next request works (reload) or keeps failing (fail closed). Bad modules and rejected
//! configurations give one clear line naming the module and the cause.

use crate::common::*;
use meshwasm_host::*;
use std::time::Duration;

/// Traps (`unreachable`) when the request has more than 4 headers, loops forever with more than 5,
/// reads out of bounds with more than 6; otherwise checks bad pointers and continues.
const FRAGILE: &str = r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param i32) (result i32)
    (if (i32.gt_u (local.get $n) (i32.const 6)) (then (drop (i32.load (i32.const 0xFFFFFFF0)))))
    (if (i32.gt_u (local.get $n) (i32.const 5)) (then (loop $l (br $l))))
    (if (i32.gt_u (local.get $n) (i32.const 4)) (then unreachable))
    (call $report (str "bad_key_ptr") (call $get_header (i32.const 0) (i32.const 0xFFFFFFF0) (i32.const 64) (i32.const 100) (i32.const 104)))
    (call $report (str "bad_ret_ptr") (call $get_header (i32.const 0) (str ":path") (i32.const 0xFFFFFFFE) (i32.const 104)))
    (i32.const 0))
"#;

fn req(extra: usize) -> Request {
    (0..extra).fold(Request::get("/"), |r, i| r.header(&format!("x-{i}"), "1"))
}

#[test]
fn a_trap_fails_the_stream_and_the_vm_is_reloaded() {
    let host = host();
    let m = load(&host, "fragile.wat", FRAGILE);
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("fragile")).build().unwrap();
    let ok = proxy.send(0, req(0), UpstreamReply::new(200)).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(proxy.metric("bad_key_ptr"), Some(status::INVALID_MEMORY_ACCESS as u64));
    assert_eq!(proxy.metric("bad_ret_ptr"), Some(status::INVALID_MEMORY_ACCESS as u64));

    let ex = proxy.send(0, req(1), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert_eq!(ex.local_reply.as_ref().unwrap().details, "wasm_fail_stream");
    let err = ex.error.clone().unwrap();
    assert!(err.contains("fragile") && err.contains("fragile.wat") && err.contains("unreachable"), "{err}");
    assert!(err.contains("proxy_on_request_headers"), "{err}");
    assert!(ex.upstream_request.is_none());

    let again = proxy.send(0, req(0), UpstreamReply::new(200)).unwrap();
    assert_eq!(again.status, 200, "{:?}", again.error);
    assert!(proxy.logged("reloaded"));

    let oob = proxy.send(0, req(3), UpstreamReply::new(200)).unwrap();
    assert_eq!(oob.status, 503);
    assert!(oob.error.unwrap().contains("out-of-bounds"));
    assert_eq!(proxy.send(0, req(0), UpstreamReply::new(200)).unwrap().status, 200);
}

#[test]
fn an_endless_loop_hits_the_deadline() {
    let host = Host::new(HostOptions { callback_deadline: Duration::from_millis(300), ..Default::default() })
        .unwrap();
    let m = host.load_bytes("loop", guest(FRAGILE).as_bytes()).unwrap();
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("loop")).build().unwrap();
    let ex = proxy.send(0, req(2), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert!(ex.error.as_deref().unwrap_or("").contains("deadline"), "{:?}", ex.error);
    assert_eq!(proxy.send(0, req(0), UpstreamReply::new(200)).unwrap().status, 200);
}

#[test]
fn fail_closed_keeps_failing() {
    let host = host();
    let m = load(&host, "fragile", FRAGILE);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).name("fragile"))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    assert_eq!(proxy.send(0, req(1), UpstreamReply::new(200)).unwrap().status, 503);
    let ex = proxy.send(0, req(0), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert!(ex.error.unwrap().contains("VM failed earlier"));
}

#[test]
fn tests_in_parallel_do_not_share_state() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let host = host();
                let m = load(&host, "fragile", FRAGILE);
                let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m)).build().unwrap();
                for _ in 0..=i {
                    proxy.send(0, req(0), UpstreamReply::new(200)).unwrap();
                }
                proxy.calls().len() + proxy.logs().len()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 0);
    }
}

fn load_err(host: &Host, name: &str, bytes: &[u8]) -> String {
    format!("{:#}", host.load_bytes(name, bytes).unwrap_err())
}

#[test]
fn bad_modules_give_one_clear_line() {
    let host = host();
    let e = load_err(&host, "junk.wasm", b"\0asm\x01\0\0\0\xff\xff");
    assert!(e.contains("junk.wasm") && e.contains("malformed"), "{e}");
    let e = load_err(&host, "text.wasm", b"hello world");
    assert!(e.contains("text.wasm") && e.contains("malformed"), "{e}");
    assert!(!e.contains('\n'));

    let e = load_err(&host, "plain.wat", br#"(module (memory (export "memory") 1))"#);
    assert!(e.contains("plain.wat") && e.contains("not a proxy-wasm module"), "{e}");

    let e = load_err(
        &host,
        "old.wat",
        br#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_1_0")))"#,
    );
    assert!(e.contains("unsupported proxy-wasm ABI 0.1.0"), "{e}");

    let e = load_err(
        &host,
        "imports.wat",
        br#"(module
            (import "env" "proxy_bogus" (func (param i32)))
            (import "wasi_snapshot_preview1" "sock_open" (func (param i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_abi_version_0_2_1")))"#,
    );
    assert!(e.contains("env::proxy_bogus") && e.contains("wasi_snapshot_preview1::sock_open"), "{e}");

    let e = load_err(&host, "nomem.wat", br#"(module (func (export "proxy_abi_version_0_2_1")))"#);
    assert!(
        e.contains("missing required exports")
            && e.contains("memory")
            && e.contains("proxy_on_context_create"),
        "{e}"
    );

    let report = host
        .inspect_bytes(
            "imports.wat",
            br#"(module
            (import "env" "proxy_bogus" (func (param i32)))
            (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
            (func (export "proxy_abi_version_0_2_1")))"#,
        )
        .unwrap();
    assert_eq!(report.abi, Some(AbiVersion::V0_2_1));
    assert_eq!(report.missing_imports, vec!["env::proxy_bogus".to_string()]);
    assert!(report.exports.contains(&"proxy_abi_version_0_2_1".to_string()));
}

#[test]
fn a_rejected_configuration_names_plugin_module_and_guest_message() {
    let host = host();
    let m = load(
        &host,
        "strict.wasm",
        r#"
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (drop (call $log (i32.const 4) (str "meshwasm strict: unknown field `isuer`")))
        (i32.const 0))
    "#,
    );
    let e = format!(
        "{:#}",
        Proxy::builder(&host).plugin(Plugin::new(m).name("strict").config("{}")).build().err().unwrap()
    );
    assert!(
        e.contains("plugin `strict`") && e.contains("strict.wasm") && e.contains("configuration rejected"),
        "{e}"
    );
    assert!(e.contains("unknown field `isuer`"), "{e}");
}

#[test]
fn only_log_and_wasi_during_initialize() {
    let host = host();
    let m = load(
        &host,
        "init",
        r#"
      (func (export "_initialize")
        (drop (call $log (i32.const 2) (str "init ok")))
        (drop (call $get_property (str "plugin_name") (i32.const 100) (i32.const 104))))
    "#,
    );
    let e = format!("{:#}", Proxy::builder(&host).plugin(Plugin::new(m).name("init")).build().err().unwrap());
    assert!(
        e.contains("_initialize")
            && e.contains("proxy_get_property")
            && e.contains("only proxy_log and WASI"),
        "{e}"
    );
}

#[test]
fn a_guest_panic_message_is_quoted_in_the_error() {
    let host = host();
    let m = load(
        &host,
        "panics",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $log (i32.const 5) (str "panicked at src/lib.rs:10:5: bad header")))
        unreachable)
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("panics")).build().unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    let err = ex.error.unwrap();
    assert!(err.contains("unreachable") && err.contains("panicked at src/lib.rs:10:5: bad header"), "{err}");
}

#[test]
fn the_failure_reply_passes_healthy_filters_response_callbacks() {
    let host = host();
    let pass = load(
        &host,
        "pass",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (drop (call $add_header (i32.const 2) (str "x-seen-by") (str "pass")))
        (i32.const 0))
    "#,
    );
    let fragile = load(&host, "fragile", FRAGILE);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(pass).name("pass"))
        .plugin(Plugin::new(fragile).name("fragile"))
        .build()
        .unwrap();
    let ex = proxy.send(0, req(1), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert_eq!(ex.response_headers.get("x-seen-by"), Some("pass"));
    assert!(!ex.callbacks.iter().any(|c| c.filter == 1 && c.callback == Callback::ResponseHeaders));
    assert_eq!(proxy.send(0, req(0), UpstreamReply::new(200)).unwrap().status, 200);
}

#[test]
fn a_failed_build_keeps_the_guest_log() {
    let host = host();
    let m = load(
        &host,
        "picky",
        r#"
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (drop (call $log (i32.const 1) (str "picky: starting")))
        (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (drop (call $log (i32.const 2) (str "picky: field `x` is required")))
        (drop (call $log (i32.const 4) (str "picky: configuration rejected")))
        (i32.const 0))
    "#,
    );
    let err =
        match Proxy::builder(&host).log_level(LogLevel::Debug).plugin(Plugin::new(m).name("picky")).build() {
            Ok(_) => panic!("on_configure returned false: build must fail"),
            Err(e) => e,
        };
    let line = err.to_string();
    assert!(line.contains("on_configure returned false"), "{line}");
    let b = err.downcast_ref::<BuildError>().expect("a BuildError");
    let msgs: Vec<&str> = b.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(msgs, ["picky: starting", "picky: field `x` is required", "picky: configuration rejected"]);
    assert_eq!(b.logs[2].level, LogLevel::Error);
    assert_eq!(b.logs[0].plugin, "picky");
}

#[test]
fn memory_growth_is_capped_per_vm() {
    // 1 MiB = 16 pages; the guest starts with 4.
    let host = Host::new(HostOptions { max_memory_bytes: 1 << 20, ..Default::default() }).unwrap();
    let body = r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $r i32)
        (call $report (str "grow_within") (memory.grow (i32.const 8)))
        (local.set $r (memory.grow (i32.const 8)))
        (call $report (str "grow_over") (local.get $r))
        (call $report (str "pages") (memory.size))
        ;; Like an allocator that cannot get memory: trap.
        (if (i32.eq (local.get $r) (i32.const -1)) (then unreachable))
        (i32.const 0))
    "#;
    let m = load(&host, "hungry", body);
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("hungry")).build().unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(proxy.metric("grow_within"), Some(4), "growing within the cap works (old size 4 pages)");
    assert_eq!(proxy.metric("grow_over"), Some(u32::MAX as u64), "growing past the cap returns -1");
    assert_eq!(proxy.metric("pages"), Some(12));
    assert_eq!(ex.status, 503, "the trap fails the stream");
    assert!(ex.error.as_deref().unwrap_or("").contains("unreachable"), "{:?}", ex.error);
    // The VM is reloaded with fresh memory and fails the same way, not worse.
    let again = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(again.status, 503);
    assert!(proxy.logged("reloaded"));
    assert_eq!(proxy.metric("pages"), Some(12));

    // The default cap (256 MiB) lets the same guest grow.
    let host = host_default();
    let m = load(&host, "hungry", body);
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("hungry")).build().unwrap();
    assert_eq!(proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap().status, 200);
    assert_eq!(proxy.metric("pages"), Some(20));
}

fn host_default() -> Host {
    Host::new(HostOptions::default()).unwrap()
}
