//! Call counting (wasm entries and hostcalls per VM) and Envoy's rule for callbacks a module does not
//! export: proxy-wasm-cpp-host's `ContextBase::onRequestBody` and the like return Continue without
//! calling, `onDone` counts as true, `onLog`/`onDelete` are skipped.

use crate::common::*;
use meshwasm_host::*;

/// Exports request headers only (plus the default root callbacks): adds `x-seen: 1` upstream.
const HEADERS_ONLY: &str = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 0) (str "x-seen") (str "1")))
    (i32.const 0))
"#;

#[test]
fn callbacks_a_module_does_not_export_are_skipped_and_the_stream_continues() {
    let host = host();
    let m = load(&host, "headers-only", HEADERS_ONLY);
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("h")).build().unwrap();
    let ex = proxy
        .send(
            0,
            Request::post("/x").header("content-length", "5").body("hello").trailer("x-t", "1"),
            UpstreamReply::new(201).header("x-b", "2").body("world"),
        )
        .unwrap();
    assert_eq!(ex.status, 201, "{ex:?}");
    assert_eq!(ex.body_text(), "world");
    let up = ex.upstream_request.clone().unwrap();
    assert_eq!(up.headers.get("x-seen"), Some("1"));
    assert_eq!(up.body, b"hello");
    assert_eq!(ex.response_headers.get("x-b"), Some("2"));
    // Only what ran is recorded: no body, trailer, response, log, done or delete callbacks.
    let cbs: Vec<Callback> = ex.callbacks.iter().map(|c| c.callback).collect();
    assert_eq!(cbs, vec![Callback::ContextCreate, Callback::RequestHeaders]);
    let counts = proxy.call_counts();
    let c = &counts["h"];
    assert_eq!(
        c.callbacks.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
        vec![
            // The root context and the stream's.
            ("proxy_on_configure", 1),
            ("proxy_on_context_create", 2),
            ("proxy_on_request_headers", 1),
            ("proxy_on_vm_start", 1),
        ]
    );
    assert_eq!(
        c.hostcalls.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
        vec![("proxy_add_header_map_value", 1)]
    );
}

#[test]
fn counts_are_exact_per_request_and_reset_to_zero() {
    let host = host();
    let m = load(
        &host,
        "counting",
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $get_header (i32.const 0) (str ":path") (i32.const 100) (i32.const 104)))
    (drop (call $log (i32.const 2) (str "hi")))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
"#,
    );
    let mut proxy = Proxy::builder(&host).workers(2).plugin(Plugin::new(m).name("c")).build().unwrap();
    proxy.send(0, Request::get("/warm"), UpstreamReply::new(200)).unwrap();
    proxy.reset_call_counts();
    assert_eq!(proxy.call_counts()["c"], CallCounts::default());
    for i in 0..10 {
        let ex = proxy.send(i % 2, Request::get("/a"), UpstreamReply::new(200).body("x")).unwrap();
        assert_eq!(ex.status, 200);
    }
    let c = &proxy.call_counts()["c"];
    let per = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    for (name, n) in [
        ("proxy_on_context_create", 10),
        ("proxy_on_request_headers", 10),
        ("proxy_on_response_headers", 10),
        ("proxy_on_log", 10),
        ("proxy_on_done", 10),
        ("proxy_on_delete", 10),
        // The :path value is returned in guest memory.
        ("proxy_on_memory_allocate", 10),
    ] {
        assert_eq!(per(&c.callbacks, name), n, "{name}: {c:?}");
    }
    assert_eq!(c.total_callbacks(), 70, "{c:?}");
    assert_eq!(per(&c.hostcalls, "proxy_get_header_map_value"), 10);
    assert_eq!(per(&c.hostcalls, "proxy_log"), 10);
    assert_eq!(c.total_hostcalls(), 20, "{c:?}");
}
