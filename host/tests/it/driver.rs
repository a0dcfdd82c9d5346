//! VM sharing by vm_id and module, and the real-time driver API (workers on their own threads).

use crate::common::*;
use meshwasm_host::*;
use std::time::Duration;

const COUNTER: &str = r#"
  (global $seen (mut i32) (i32.const 0))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $seen (i32.add (global.get $seen) (i32.const 1)))
    (call $report (str "seen") (global.get $seen))
    (drop (call $get_property (str "plugin_name") (i32.const 100) (i32.const 104)))
    (drop (call $add_header (i32.const 0) (str "x-plugin") (i32.load (i32.const 100)) (i32.load (i32.const 104))))
    (i32.const 0))
"#;

#[test]
fn plugins_with_the_same_vm_id_and_module_share_a_vm() {
    let host = host();
    let m = load(&host, "counter", COUNTER);
    let mut shared = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(m.clone()).name("first").vm_id("mesh"))
        .plugin(Plugin::new(m.clone()).name("second").vm_id("mesh"))
        .build()
        .unwrap();
    assert_eq!(shared.worker(0).unwrap().vm_count(), 1);
    let ex = shared.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(shared.metric("seen"), Some(2), "one VM: the second filter sees the first one's global");
    let up = ex.upstream_request.unwrap();
    assert_eq!(
        up.headers.get_all("x-plugin"),
        vec![&b"first"[..], &b"second"[..]],
        "each plugin has its own root context"
    );
    // Worker 1 has its own VM.
    shared.send(1, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(shared.metric("seen"), Some(2));

    let mut separate = Proxy::builder(&host)
        .plugin(Plugin::new(m.clone()).name("first").vm_id("a"))
        .plugin(Plugin::new(m).name("second").vm_id("b"))
        .build()
        .unwrap();
    assert_eq!(separate.worker(0).unwrap().vm_count(), 2);
    separate.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(separate.metric("seen"), Some(1));
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn workers_run_on_their_own_threads_with_real_time() {
    let host = host();
    let call = pairs(&[(":method", "GET"), (":path", "/token"), (":authority", "idp")]);
    let body = format!(
        r#"
      (global $sctx (mut i32) (i32.const 0))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (drop (call $set_tick (i32.const 20)))
        (i32.const 1))
      (func (export "proxy_on_tick") (param i32)
        (drop (call $log (i32.const 2) (str "tick"))))
      (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
        (global.set $sctx (local.get $ctx))
        (drop (call $http_call (str "idp") (i32.const 1024) (i32.const {len}) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 108)))
        (i32.const 1))
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (drop (call $set_effective (global.get $sctx)))
        (drop (call $get_buffer (i32.const 4) (i32.const 0) (i32.const 100) (i32.const 112) (i32.const 116)))
        (drop (call $add_header (i32.const 0) (str "x-token") (i32.load (i32.const 112)) (i32.load (i32.const 116))))
        (drop (call $continue (i32.const 0))))
      (data (i32.const 1024) "{data}")
    "#,
        len = call.len(),
        data = wat_bytes(&call)
    );
    let m = load(&host, "driver", &body);
    let (workers, state) = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(m).name("d"))
        .upstream("idp", Upstream::forward("127.0.0.1:9".parse().unwrap()))
        .build_workers()
        .unwrap();
    let handles: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            assert_send(&w);
            std::thread::spawn(move || {
                let id = w.start(Request::get("/").header("x-w", w.index().to_string()));
                assert!(matches!(w.state(id), Some(StreamState::Paused { .. })));
                let mut done = None;
                for _ in 0..10 {
                    for ev in w.take_events() {
                        match ev {
                            WorkerEvent::HttpCall(c) => {
                                assert_eq!(c.upstream, "idp");
                                assert_eq!(c.timeout, Duration::from_millis(500));
                                let body = format!("tok{}", w.index());
                                w.deliver_call(c.token, CallOutcome::response(200, Headers::new(), body));
                            }
                            WorkerEvent::Upstream { stream, request } => {
                                let token = request.headers.get("x-token").unwrap_or("").to_string();
                                w.deliver_upstream(stream, UpstreamReply::new(200).body(token)).unwrap();
                            }
                            WorkerEvent::Done(ex) => done = Some(ex),
                        }
                    }
                }
                let next = w.next_tick().expect("tick period set");
                // `next` is measured from the proxy's start, so sleeping that long makes it due.
                std::thread::sleep(next + Duration::from_millis(1));
                w.run_timers();
                (w.index(), done.expect("stream done"))
            })
        })
        .collect();
    for h in handles {
        let (i, ex) = h.join().unwrap();
        assert_eq!(ex.status, 200);
        assert_eq!(ex.body_text(), format!("tok{i}"));
    }
    let ticks = state.logs().iter().filter(|l| l.message == "tick").map(|l| l.worker).collect::<Vec<_>>();
    assert!(ticks.contains(&0) && ticks.contains(&1), "{ticks:?}");
}
