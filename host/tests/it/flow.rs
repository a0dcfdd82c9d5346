//! Stream flow through a chain: order of callbacks, local replies, pause/resume with http calls and
//! ticks, body buffering, Envoy's deferred actions.

use crate::common::*;
use meshwasm_host::*;
use std::time::Duration;

/// Every callback continues; used as the "other" filters of a chain.
const PASS: &str = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
"#;

fn cb(ex: &Exchange) -> Vec<(usize, Callback)> {
    ex.callbacks.iter().map(|c| (c.filter, c.callback)).collect()
}

#[test]
fn chain_runs_requests_in_order_and_responses_in_reverse() {
    let host = host();
    let a = load(&host, "a", PASS);
    let b = load(&host, "b", PASS);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(a).name("a"))
        .plugin(Plugin::new(b).name("b"))
        .build()
        .unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200).body("x")).unwrap();
    use Callback::*;
    assert_eq!(
        cb(&ex),
        vec![
            (0, ContextCreate),
            (0, RequestHeaders),
            (1, ContextCreate),
            (1, RequestHeaders),
            (1, ResponseHeaders),
            (0, ResponseHeaders),
            (1, ResponseBody),
            (0, ResponseBody),
            // HTTP/1.1: the body's end is a second callback with 0 bytes and end_of_stream.
            (1, ResponseBody),
            (0, ResponseBody),
            (0, Log),
            (1, Log),
            (0, Done),
            (0, Delete),
            (1, Done),
            (1, Delete),
        ]
    );
    assert_eq!(ex.state, StreamState::Complete);
}

#[test]
fn local_reply_stops_the_chain_even_when_the_callback_continues() {
    let host = host();
    let hdrs = pairs(&[("X-Deny", "1")]);
    let deny = load(
        &host,
        "deny",
        &format!(
            r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (str "local") (call $local (i32.const 403) (str "denied by wasm") (str "no") (i32.const 1024) (i32.const {len}) (i32.const -1)))
        (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
      (data (i32.const 1024) "{data}")
    "#,
            len = hdrs.len(),
            data = wat_bytes(&hdrs)
        ),
    );
    let after = load(&host, "after", PASS);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(deny).name("deny"))
        .plugin(Plugin::new(after).name("after"))
        .build()
        .unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(proxy.metric("local"), Some(0));
    assert_eq!(ex.status, 403);
    assert_eq!(ex.body_text(), "no");
    assert!(ex.upstream_request.is_none());
    assert_eq!(ex.response_headers.get("x-deny"), Some("1"));
    assert_eq!(ex.response_headers.get("content-length"), Some("2"));
    let lr = ex.local_reply.clone().unwrap();
    assert_eq!(
        (lr.status, lr.details.as_str(), lr.plugin.as_str(), lr.grpc_status),
        (403, "denied_by_wasm", "deny", -1)
    );
    use Callback::*;
    let later: Vec<Callback> = ex.callbacks.iter().filter(|c| c.filter == 1).map(|c| c.callback).collect();
    assert_eq!(later, vec![ContextCreate, Log, Done, Delete], "filter 1 only takes part in the log phase");
    // The deferred local reply forced a stop although the callback returned Continue.
    assert_eq!(ex.actions(0)[0], (Callback::RequestHeaders, Action::Continue));
    assert!(
        ex.callbacks.iter().any(|c| c.callback == Callback::ResponseHeaders),
        "local reply passes response callbacks"
    );
}

#[test]
fn second_local_response_resets_the_stream() {
    let host = host();
    let m = load(
        &host,
        "twice",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $local (i32.const 401) (str "") (str "") (i32.const 0) (i32.const 0) (i32.const -1)))
        (drop (call $local (i32.const 403) (str "") (str "") (i32.const 0) (i32.const 0) (i32.const -1)))
        (i32.const 1))
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("twice")).build().unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.state, StreamState::Reset);
    assert_eq!(ex.status, 0);
    assert!(ex.error.as_deref().unwrap_or("").contains("hangs"), "{:?}", ex.error);
}

/// Pauses on request headers, calls `auth`, and on the answer adds a header to the paused request and
/// resumes it from the root context through set_effective_context.
fn auth_guest() -> String {
    let call_hdrs = pairs(&[(":method", "GET"), (":path", "/check"), (":authority", "auth")]);
    format!(
        r#"
      (global $sctx (mut i32) (i32.const 0))
      (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
        (global.set $sctx (local.get $ctx))
        (call $report (str "dispatch") (call $http_call (str "auth") (i32.const 1024) (i32.const {len}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 108)))
        (call $report (str "continue_upstream") (call $continue (i32.const 3)))
        (i32.const 1))
      (func (export "proxy_on_http_call_response") (param $root i32) (param $token i32) (param $nh i32) (param $bl i32) (param $nt i32)
        (call $report (str "token_matches") (i32.eq (local.get $token) (i32.load (i32.const 108))))
        (call $report (str "nh") (local.get $nh))
        (call $report (str "bl") (local.get $bl))
        (call $report (str "status_get") (call $get_header (i32.const 6) (str ":status") (i32.const 100) (i32.const 104)))
        (call $report (str "body_get") (call $get_buffer (i32.const 4) (i32.const 0) (i32.const 100) (i32.const 112) (i32.const 116)))
        (call $report (str "body_first") (i32.load8_u (i32.load (i32.const 112))))
        (call $report (str "get_status") (call $get_status (i32.const 120) (i32.const 124) (i32.const 128)))
        (call $report (str "status_code") (i32.load (i32.const 120)))
        (call $report (str "add_on_root") (call $add_header (i32.const 0) (str "x-auth") (str "ok")))
        (call $report (str "effective") (call $set_effective (global.get $sctx)))
        (call $report (str "add_paused") (call $add_header (i32.const 0) (str "x-auth") (str "ok")))
        (call $report (str "resume") (call $continue (i32.const 0))))
      (data (i32.const 1024) "{data}")
    "#,
        len = call_hdrs.len(),
        data = wat_bytes(&call_hdrs)
    )
}

#[test]
fn http_call_pause_and_resume_from_the_root_context() {
    let host = host();
    let m = load(&host, "auth", &auth_guest());
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).name("auth"))
        .upstream(
            "auth",
            Upstream::reply(CallReply::response(200, [("x-r", "1")], "yes").after(Duration::from_millis(50))),
        )
        .build()
        .unwrap();
    let id = proxy.start(0, Request::get("/p")).unwrap();
    assert_eq!(proxy.metric("dispatch"), Some(0));
    assert_eq!(proxy.metric("continue_upstream"), Some(status::UNIMPLEMENTED as u64));
    assert_eq!(
        proxy.stream_state(id),
        Some(StreamState::Paused { filter: 0, plugin: "auth".into(), phase: Phase::RequestHeaders })
    );
    assert_eq!(proxy.calls().len(), 1);
    assert_eq!(proxy.calls()[0].upstream, "auth");
    assert_eq!(proxy.calls()[0].headers.get(":path"), Some("/check"));
    assert_eq!(proxy.calls()[0].timeout, Duration::from_secs(1));
    proxy.advance(Duration::from_millis(49));
    assert!(matches!(proxy.stream_state(id), Some(StreamState::Paused { .. })));
    proxy.advance(Duration::from_millis(1));
    assert_eq!(proxy.stream_state(id), Some(StreamState::WaitingUpstream));
    let m = |n: &str| proxy.metric(n).unwrap_or_else(|| panic!("no report {n}"));
    assert_eq!(m("token_matches"), 1);
    assert_eq!(m("nh"), 2);
    assert_eq!(m("bl"), 3);
    assert_eq!(m("status_get"), 0);
    assert_eq!(m("body_get"), 0);
    assert_eq!(m("body_first"), u64::from(b'y'));
    assert_eq!(m("status_code"), 0);
    assert_eq!(m("add_on_root"), status::BAD_ARGUMENT as u64, "root context has no request headers");
    assert_eq!(m("effective"), 0);
    assert_eq!(m("add_paused"), 0, "a paused request's headers stay available");
    assert_eq!(m("resume"), 0);
    let ex = proxy.finish(id, UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    assert_eq!(ex.upstream_request.unwrap().headers.get("x-auth"), Some("ok"));
    assert!(ex.callbacks.iter().any(|c| c.callback == Callback::HttpCallResponse));
}

#[test]
fn http_call_failure_and_timeout() {
    let host = host();
    // Failure: (token, 0, 0, 0) and get_status = BROKEN_CONNECTION.
    let m = load(&host, "auth", &auth_guest());
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m.clone()).name("auth"))
        .upstream("auth", Upstream::reply(CallReply::failure()))
        .build()
        .unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    assert_eq!(proxy.metric("nh"), Some(0));
    assert_eq!(proxy.metric("bl"), Some(0));
    assert_eq!(proxy.metric("status_code"), Some(status::BROKEN_CONNECTION as u64));
    assert_eq!(proxy.calls()[0].outcome, Some(CallOutcome::Failure));

    // No answer: after the 1 s timeout the guest gets Envoy's 504.
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).name("auth"))
        .upstream("auth", Upstream::reply(CallReply::no_answer()))
        .build()
        .unwrap();
    let id = proxy.start(0, Request::get("/")).unwrap();
    proxy.advance(Duration::from_millis(999));
    assert!(matches!(proxy.stream_state(id), Some(StreamState::Paused { .. })));
    proxy.advance(Duration::from_millis(1));
    assert_eq!(proxy.calls()[0].outcome, Some(CallOutcome::Timeout));
    assert_eq!(proxy.metric("bl"), Some(24));
    assert_eq!(proxy.metric("body_first"), Some(u64::from(b'u')));
    let ex = proxy.finish(id, UpstreamReply::new(204)).unwrap();
    assert_eq!(ex.status, 204);
}

#[test]
fn http_call_requires_pseudo_headers_and_a_known_upstream() {
    let host = host();
    let no_authority = pairs(&[(":method", "GET"), (":path", "/")]);
    let ok = pairs(&[(":method", "GET"), (":path", "/"), (":authority", "x")]);
    let body = format!(
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (str "no_authority") (call $http_call (str "auth") (i32.const 1024) (i32.const {l1}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 108)))
        (call $report (str "unknown") (call $http_call (str "nope") (i32.const 2048) (i32.const {l2}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 108)))
        (call $report (str "grpc") (call $grpc_call (str "auth") (str "s") (str "m") (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 108)))
        (i32.const 0))
      (data (i32.const 1024) "{d1}")
      (data (i32.const 2048) "{d2}")
    "#,
        l1 = no_authority.len(),
        d1 = wat_bytes(&no_authority),
        l2 = ok.len(),
        d2 = wat_bytes(&ok)
    );
    let m = load(&host, "calls", &body);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m))
        .upstream("auth", Upstream::reply(CallReply::failure()))
        .build()
        .unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    assert_eq!(proxy.metric("no_authority"), Some(status::BAD_ARGUMENT as u64));
    assert_eq!(proxy.metric("unknown"), Some(status::BAD_ARGUMENT as u64));
    assert_eq!(proxy.metric("grpc"), Some(status::UNIMPLEMENTED as u64));
    assert!(proxy.calls().is_empty());
}

#[test]
fn http_call_forwarded_to_a_real_server() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).to_string();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-real: 1\r\n\r\nyes!!").unwrap();
        req
    });
    let host = host();
    let m = load(&host, "auth", &auth_guest());
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).name("auth"))
        .upstream("auth", Upstream::forward(addr))
        .build()
        .unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    let req = server.join().unwrap();
    assert!(req.starts_with("GET /check HTTP/1.1"), "{req}");
    assert_eq!(ex.status, 200);
    assert_eq!(proxy.metric("bl"), Some(5));
    assert_eq!(proxy.calls()[0].outcome.as_ref().and_then(|o| o.status()), Some(200));
}

#[test]
fn body_buffering_is_cumulative_and_pause_on_headers_holds_the_body() {
    let host = host();
    // Filter 0 pauses on headers and resumes on its first tick; filter 1 buffers the body until the end.
    let waiter = load(
        &host,
        "waiter",
        r#"
      (global $sctx (mut i32) (i32.const 0))
      (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
        (global.set $sctx (local.get $ctx))
        (drop (call $set_tick (i32.const 10)))
        (i32.const 1))
      (func (export "proxy_on_request_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
        (drop (call $define_metric (i32.const 2) (str "waiter_sizes") (i32.const 60)))
        (drop (call $record_metric (i32.load (i32.const 60)) (i64.extend_i32_u (local.get $len))))
        (i32.const 0))
      (func (export "proxy_on_tick") (param $root i32)
        (drop (call $set_tick (i32.const 0)))
        (drop (call $set_effective (global.get $sctx)))
        (drop (call $continue (i32.const 0))))
    "#,
    );
    let buffer = load(
        &host,
        "buffer",
        r#"
      (func (export "proxy_on_request_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
        (drop (call $define_metric (i32.const 2) (str "buffer_sizes") (i32.const 60)))
        (drop (call $record_metric (i32.load (i32.const 60)) (i64.extend_i32_u (local.get $len))))
        (if (result i32) (local.get $eos)
          (then
            (drop (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (str "<")))
            (drop (call $set_buffer (i32.const 0) (i32.const 1000) (i32.const 0) (str ">")))
            (call $report (str "middle_edit") (call $set_buffer (i32.const 0) (i32.const 2) (i32.const 1) (str "?")))
            (i32.const 0))
          (else (i32.const 1))))
    "#,
    );
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(waiter).name("waiter"))
        .plugin(Plugin::new(buffer).name("buffer"))
        .build()
        .unwrap();
    let id = proxy.start(0, Request::post("/").chunk("abc").chunk("def").chunk("gh")).unwrap();
    assert!(matches!(
        proxy.stream_state(id),
        Some(StreamState::Paused { filter: 0, phase: Phase::RequestHeaders, .. })
    ));
    assert_eq!(proxy.histogram("waiter_sizes"), None, "no body callbacks while paused on headers");
    proxy.advance(Duration::from_millis(10));
    assert_eq!(proxy.histogram("waiter_sizes"), Some(vec![8]), "held body delivered in one callback");
    assert_eq!(proxy.histogram("buffer_sizes"), Some(vec![8]));
    assert_eq!(proxy.metric("middle_edit"), Some(status::BAD_ARGUMENT as u64));
    let ex = proxy.finish(id, UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.upstream_request.unwrap().body, b"<abcdefgh>");

    // Without the waiter, the buffering filter sees cumulative sizes per chunk.
    let buffer = load(
        &host,
        "buffer2",
        r#"
      (func (export "proxy_on_request_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
        (drop (call $define_metric (i32.const 2) (str "sizes") (i32.const 60)))
        (drop (call $record_metric (i32.load (i32.const 60)) (i64.extend_i32_u (local.get $len))))
        (i32.xor (local.get $eos) (i32.const 1)))
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(buffer.clone())).build().unwrap();
    let ex = proxy
        .send(0, Request::post("/").chunk("abc").chunk("def").chunk("gh"), UpstreamReply::new(200))
        .unwrap();
    // HTTP/1.1 (default): the end of the body comes as its own callback, with the cumulative size again.
    assert_eq!(proxy.histogram("sizes"), Some(vec![3, 6, 8, 8]));
    assert_eq!(ex.upstream_request.unwrap().body, b"abcdefgh");

    // HTTP/2 style: the last chunk carries end_of_stream.
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(buffer)).split_body_end(false).build().unwrap();
    let ex = proxy
        .send(0, Request::post("/").chunk("abc").chunk("def").chunk("gh"), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(proxy.histogram("sizes"), Some(vec![3, 6, 8]));
    assert_eq!(ex.upstream_request.unwrap().body, b"abcdefgh");
}

#[test]
fn buffering_past_the_limit_gives_413() {
    let host = host();
    let m = load(
        &host,
        "hold",
        r#"
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 1))
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m)).buffer_limit(4).build().unwrap();
    let ex = proxy.send(0, Request::post("/").chunk("abc").chunk("def"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 413);
    assert!(ex.upstream_request.is_none());
}

#[test]
fn a_call_outlives_its_stream_and_still_reaches_the_root_context() {
    let host = host();
    let m = load(&host, "auth", &auth_guest());
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).name("auth"))
        .upstream(
            "auth",
            Upstream::reply(
                CallReply::response(200, Headers::new(), "late").after(Duration::from_millis(10)),
            ),
        )
        .build()
        .unwrap();
    let id = proxy.start(0, Request::get("/")).unwrap();
    proxy.cancel(id);
    assert_eq!(proxy.stream_state(id), Some(StreamState::Reset));
    proxy.advance(Duration::from_millis(10));
    assert_eq!(proxy.metric("bl"), Some(4), "the root context got the answer");
    assert_eq!(proxy.metric("effective"), Some(status::BAD_ARGUMENT as u64), "the stream context is gone");
    assert!(proxy.calls()[0].outcome.is_some());
}

#[test]
fn local_reply_from_an_http_call_answer_ends_the_paused_stream() {
    let host = host();
    let call = pairs(&[(":method", "GET"), (":path", "/check"), (":authority", "auth")]);
    let body = format!(
        r#"
      (global $sctx (mut i32) (i32.const 0))
      (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
        (global.set $sctx (local.get $ctx))
        (drop (call $http_call (str "auth") (i32.const 1024) (i32.const {len}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 108)))
        (i32.const 1))
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (drop (call $set_effective (global.get $sctx)))
        (call $report (str "local") (call $local (i32.const 401) (str "auth_denied") (str "denied") (i32.const 0) (i32.const 0) (i32.const -1))))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (call $report (str "resp_headers_seen") (i32.const 1))
        (i32.const 0))
      (data (i32.const 1024) "{data}")
    "#,
        len = call.len(),
        data = wat_bytes(&call)
    );
    let m = load(&host, "deny_after_call", &body);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).name("auth"))
        .upstream("auth", Upstream::reply(CallReply::response(403, Headers::new(), "")))
        .build()
        .unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(proxy.metric("local"), Some(0));
    assert_eq!(ex.status, 401);
    assert_eq!(ex.body_text(), "denied");
    assert_eq!(ex.state, StreamState::Complete);
    assert!(ex.upstream_request.is_none());
    assert_eq!(ex.local_reply.unwrap().details, "auth_denied");
    assert_eq!(proxy.metric("resp_headers_seen"), Some(1));
}

#[test]
fn response_body_can_be_buffered_and_replaced() {
    let host = host();
    let m = load(
        &host,
        "rewrite",
        r#"
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (drop (call $remove_header (i32.const 2) (str "content-length")))
        (i32.const 0))
      (func (export "proxy_on_response_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
        (drop (call $define_metric (i32.const 2) (str "resp_sizes") (i32.const 60)))
        (drop (call $record_metric (i32.load (i32.const 60)) (i64.extend_i32_u (local.get $len))))
        (if (result i32) (local.get $eos)
          (then
            (drop (call $set_buffer (i32.const 1) (i32.const 0) (local.get $len) (str "rewritten")))
            (i32.const 0))
          (else (i32.const 1))))
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m)).build().unwrap();
    let ex = proxy
        .send(
            0,
            Request::get("/"),
            UpstreamReply::new(200).header("content-length", "6").chunk("abc").chunk("def"),
        )
        .unwrap();
    assert_eq!(proxy.histogram("resp_sizes"), Some(vec![3, 6, 6]));
    assert_eq!(ex.body_text(), "rewritten");
    assert!(!ex.response_headers.contains("content-length"));
}
