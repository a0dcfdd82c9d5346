//! Smoke tests: the noop filter (a real Rust SDK module with WASI) and a minimal WAT guest.

use crate::common::*;
use meshwasm_host::*;

#[test]
fn noop_filter_passes_request_and_response() {
    let host = host();
    let m = host.load(artifact("meshwasm_noop")).unwrap();
    let mut proxy = Proxy::builder(&host).workers(2).plugin(Plugin::new(m).name("noop")).build().unwrap();
    for w in 0..2 {
        let ex = proxy
            .send(
                w,
                Request::post("/x").header("X-A", "1").body("hello"),
                UpstreamReply::new(201).header("x-b", "2").body("world"),
            )
            .unwrap();
        assert_eq!(ex.status, 201, "{ex:?}");
        assert_eq!(ex.body_text(), "world");
        let up = ex.upstream_request.clone().unwrap();
        assert_eq!(up.headers.get("x-a"), Some("1"));
        assert_eq!(up.body, b"hello");
        assert_eq!(ex.response_headers.get("x-b"), Some("2"));
        assert!(ex.error.is_none());
        assert_eq!(
            ex.actions(0),
            vec![
                (Callback::RequestHeaders, Action::Continue),
                // HTTP/1.1 as Envoy's codec: the data, then the end of the body (0 bytes, eos).
                (Callback::RequestBody, Action::Continue),
                (Callback::RequestBody, Action::Continue),
                (Callback::ResponseHeaders, Action::Continue),
                (Callback::ResponseBody, Action::Continue),
                (Callback::ResponseBody, Action::Continue)
            ]
        );
    }
}

#[test]
fn minimal_wat_guest_runs() {
    let host = host();
    let m = load(
        &host,
        "min",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (i32.const 1024) (i32.const 7) (local.get 1))
        (i32.const 0))
      (data (i32.const 1024) "headers")
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("min")).build().unwrap();
    let ex = proxy.send(0, Request::get("/").header("a", "b"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    assert_eq!(proxy.metric("headers"), Some(5));
}

#[test]
fn trailers_pass_both_ways_and_are_editable_in_their_callbacks() {
    let host = host();
    let m = load(
        &host,
        "trailers",
        r#"
      (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
        (call $report (str "req_trailers") (local.get 1))
        (drop (call $add_header (i32.const 1) (str "X-Added") (str "t")))
        (i32.const 0))
      (func (export "proxy_on_response_trailers") (param i32 i32) (result i32)
        (call $report (str "resp_get") (call $get_header (i32.const 3) (str "grpc-status") (i32.const 100) (i32.const 104)))
        (call $report (str "req_map_in_resp") (call $add_header (i32.const 1) (str "x") (str "y")))
        (i32.const 0))
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m)).build().unwrap();
    let ex = proxy
        .send(
            0,
            Request::post("/").body("b").trailer("x-t", "1"),
            UpstreamReply::new(200).body("r").trailer("grpc-status", "0"),
        )
        .unwrap();
    assert_eq!(ex.status, 200);
    assert_eq!(proxy.metric("req_trailers"), Some(1));
    assert_eq!(proxy.metric("resp_get"), Some(0));
    assert_eq!(proxy.metric("req_map_in_resp"), Some(status::BAD_ARGUMENT as u64));
    let up = ex.upstream_request.unwrap();
    assert_eq!(up.body, b"b");
    let t = up.trailers.unwrap();
    assert_eq!((t.get("x-t"), t.get("x-added")), (Some("1"), Some("t")));
    assert_eq!(ex.response_trailers.unwrap().get("grpc-status"), Some("0"));
}

#[test]
fn modules_are_cached_in_memory_and_on_disk() {
    let dir = std::env::temp_dir().join(format!("meshwasm-host-cache-{}", std::process::id()));
    let opts = HostOptions { cache_dir: Some(dir.clone()), ..Default::default() };
    let host = Host::new(opts.clone()).unwrap();
    let a = host.load(artifact("meshwasm_noop")).unwrap();
    let b = host.load(artifact("meshwasm_noop")).unwrap();
    assert!(a.same_as(&b));
    assert_eq!(a.abi(), Some(&AbiVersion::V0_2_1));
    drop(host);
    // A second host (as a second process would) loads from the on-disk cache and runs.
    let host = Host::new(opts).unwrap();
    let m = host.load(artifact("meshwasm_noop")).unwrap();
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m)).build().unwrap();
    assert_eq!(proxy.send(0, Request::get("/"), UpstreamReply::new(204)).unwrap().status, 204);
    assert!(std::fs::read_dir(&dir).map(|d| d.count() > 0).unwrap_or(false), "cache directory populated");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn buffer_availability_follows_envoy() {
    let host = host();
    let m = load(
        &host,
        "buffers",
        r#"
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (call $report (str "cfg") (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 100) (i32.const 104)))
        (call $report (str "cfg_len") (i32.load (i32.const 104)))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (str "body_early") (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 100) (i32.const 104)))
        (call $report (str "body_early_len") (i32.load (i32.const 104)))
        (call $report (str "body_set_early") (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (str "x")))
        (call $report (str "cfg_late") (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 100) (i32.const 104)))
        (call $report (str "call_body") (call $get_buffer (i32.const 4) (i32.const 0) (i32.const 100) (i32.const 100) (i32.const 104)))
        (call $report (str "vm_cfg") (call $get_buffer (i32.const 6) (i32.const 0) (i32.const 100) (i32.const 100) (i32.const 104)))
        (call $report (str "vm_cfg_len") (i32.load (i32.const 104)))
        (call $report (str "bad_type") (call $get_buffer (i32.const 9) (i32.const 0) (i32.const 100) (i32.const 100) (i32.const 104)))
        (call $report (str "overflow") (call $get_buffer (i32.const 6) (i32.const 1) (i32.const -1) (i32.const 100) (i32.const 104)))
        (i32.const 0))
    "#,
    );
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).vm_config("vmcfg").config("plugin-config"))
        .build()
        .unwrap();
    proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    let m = |n: &str| proxy.metric(n).unwrap_or_else(|| panic!("no report {n}"));
    assert_eq!((m("cfg"), m("cfg_len")), (0, 13));
    assert_eq!((m("body_early"), m("body_early_len")), (0, 0));
    assert_eq!(m("body_set_early"), status::NOT_FOUND as u64);
    assert_eq!(m("cfg_late"), status::NOT_FOUND as u64);
    assert_eq!(m("call_body"), status::NOT_FOUND as u64);
    assert_eq!((m("vm_cfg"), m("vm_cfg_len")), (0, 5));
    assert_eq!(m("bad_type"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("overflow"), status::BAD_ARGUMENT as u64);
}
