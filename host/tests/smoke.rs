//! Smoke tests: the noop filter (a real Rust SDK module with WASI) and a minimal WAT guest.

mod common;
use common::*;
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
                (Callback::RequestBody, Action::Continue),
                (Callback::ResponseHeaders, Action::Continue),
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
