//! Shared data (per vm_id, CAS), shared queues (on_queue_ready on the registering root context),
//! ticks per worker, and metrics with Envoy's rules.

use crate::common::*;
use meshwasm_host::*;
use std::time::Duration;

#[test]
fn shared_data_is_keyed_by_vm_id_with_cas() {
    let host = host();
    let writer = load(
        &host,
        "writer",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $cas i32)
        (call $report (str "missing") (call $get_shared (str "k") (i32.const 100) (i32.const 104) (i32.const 108)))
        (call $report (str "set0") (call $set_shared (str "k") (str "v1") (i32.const 0)))
        (call $report (str "get") (call $get_shared (str "k") (i32.const 100) (i32.const 104) (i32.const 108)))
        (local.set $cas (i32.load (i32.const 108)))
        (call $report (str "cas_nonzero") (i32.ne (local.get $cas) (i32.const 0)))
        (call $report (str "stale") (call $set_shared (str "k") (str "v2") (i32.add (local.get $cas) (i32.const 1))))
        (call $report (str "match") (call $set_shared (str "k") (str "v3") (local.get $cas)))
        (call $report (str "new_key_any_cas") (call $set_shared (str "k2") (str "x") (i32.const 77)))
        (i32.const 0))
    "#,
    );
    let reader = load(
        &host,
        "reader",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (str "other_vm") (call $get_shared (str "k") (i32.const 100) (i32.const 104) (i32.const 108)))
        (i32.const 0))
    "#,
    );
    let mut proxy = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(writer.clone()).name("w").vm_id("one"))
        .plugin(Plugin::new(reader).name("r").vm_id("two"))
        .build()
        .unwrap();
    proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    let m = |p: &Proxy, n: &str| p.metric(n).unwrap_or_else(|| panic!("no report {n}"));
    assert_eq!(m(&proxy, "missing"), status::NOT_FOUND as u64);
    assert_eq!(m(&proxy, "set0"), 0);
    assert_eq!(m(&proxy, "get"), 0);
    assert_eq!(m(&proxy, "cas_nonzero"), 1);
    assert_eq!(m(&proxy, "stale"), status::CAS_MISMATCH as u64);
    assert_eq!(m(&proxy, "match"), 0);
    assert_eq!(m(&proxy, "new_key_any_cas"), 0);
    assert_eq!(m(&proxy, "other_vm"), status::NOT_FOUND as u64, "vm `two` does not see vm `one`'s data");
    assert_eq!(proxy.shared_data("one", "k").unwrap().0, b"v3");
    // Worker 1 has its own VM but the same shared data: its first get finds the key.
    proxy.send(1, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(m(&proxy, "missing"), 0);
}

const QUEUE: &str = r#"
  (func (export "proxy_on_configure") (param $root i32) (param i32) (result i32)
    (call $report (str "register") (call $register_queue (str "q") (i32.const 200)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $report (str "resolve") (call $resolve_queue (str "mesh") (str "q") (i32.const 204)))
    (call $report (str "resolve_missing") (call $resolve_queue (str "mesh") (str "nope") (i32.const 208)))
    (call $report (str "enqueue") (call $enqueue (i32.load (i32.const 204)) (str "from-request")))
    (i32.const 0))
  (func (export "proxy_on_queue_ready") (param $root i32) (param $id i32)
    (drop (call $log (i32.const 2) (str "queue ready")))
    (call $report (str "dequeue") (call $dequeue (local.get $id) (i32.const 100) (i32.const 104)))
    (call $report (str "item_len") (i32.load (i32.const 104)))
    (call $report (str "dequeue_empty") (call $dequeue (local.get $id) (i32.const 100) (i32.const 104)))
    (call $report (str "dequeue_unknown") (call $dequeue (i32.const 9999) (i32.const 100) (i32.const 104))))
"#;

#[test]
fn shared_queue_wakes_the_registering_root_context() {
    let host = host();
    let m = load(&host, "queue", QUEUE);
    let mut proxy =
        Proxy::builder(&host).workers(2).plugin(Plugin::new(m).name("q").vm_id("mesh")).build().unwrap();
    assert_eq!(proxy.metric("register"), Some(0));
    assert!(proxy.enqueue("mesh", "q", b"hello"));
    assert_eq!(proxy.metric("dequeue"), Some(0));
    assert_eq!(proxy.metric("item_len"), Some(5));
    assert_eq!(proxy.metric("dequeue_empty"), Some(status::EMPTY as u64));
    assert_eq!(proxy.metric("dequeue_unknown"), Some(status::NOT_FOUND as u64));
    assert!(!proxy.enqueue("mesh", "absent", b"x"));
    proxy.take_logs();
    // A request on worker 1 enqueues; the queue belongs to the first registrant (worker 0).
    proxy.send(1, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(proxy.metric("resolve"), Some(0));
    assert_eq!(proxy.metric("resolve_missing"), Some(status::NOT_FOUND as u64));
    assert_eq!(proxy.metric("enqueue"), Some(0));
    assert_eq!(proxy.metric("item_len"), Some(12));
    let ready: Vec<_> = proxy.logs().into_iter().filter(|l| l.message == "queue ready").collect();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].worker, 0);
}

#[test]
fn ticks_run_per_root_context_per_worker() {
    let host = host();
    let m = load(
        &host,
        "tick",
        r#"
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (drop (call $set_tick (i32.const 1000)))
        (drop (call $define_metric (i32.const 0) (str "ticks") (i32.const 200)))
        (i32.const 1))
      (func (export "proxy_on_tick") (param i32)
        (drop (call $increment_metric (i32.load (i32.const 200)) (i64.const 1))))
    "#,
    );
    let mut proxy =
        Proxy::builder(&host).workers(3).main_thread(true).plugin(Plugin::new(m.clone())).build().unwrap();
    proxy.advance(Duration::from_millis(999));
    assert_eq!(proxy.metric("ticks"), Some(0));
    proxy.advance(Duration::from_millis(2001));
    assert_eq!(proxy.metric("ticks"), Some(12), "(3 workers + the main thread) × 3 periods");
    assert_eq!(proxy.worker_count(), 3);
    assert!(
        proxy.send(3, Request::get("/"), UpstreamReply::new(200)).is_err(),
        "no streams on the main thread"
    );

    let mut proxy = Proxy::builder(&host).workers(3).plugin(Plugin::new(m)).build().unwrap();
    proxy.advance(Duration::from_millis(3000));
    assert_eq!(proxy.metric("ticks"), Some(9), "3 workers × 3 periods");
}

#[test]
fn metrics_follow_envoy_rules() {
    let host = host();
    let m = load(
        &host,
        "metrics",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $c i32) (local $g i32) (local $h i32)
        (drop (call $define_metric (i32.const 0) (str "c") (i32.const 200)))
        (drop (call $define_metric (i32.const 1) (str "g") (i32.const 204)))
        (drop (call $define_metric (i32.const 2) (str "h") (i32.const 208)))
        (local.set $c (i32.load (i32.const 200)))
        (local.set $g (i32.load (i32.const 204)))
        (local.set $h (i32.load (i32.const 208)))
        (call $report (str "r_bad_type") (call $define_metric (i32.const 3) (str "x") (i32.const 212)))
        (call $report (str "r_inc0") (call $increment_metric (local.get $c) (i64.const 0)))
        (call $report (str "r_incneg") (call $increment_metric (local.get $c) (i64.const -1)))
        (call $report (str "r_inc5") (call $increment_metric (local.get $c) (i64.const 5)))
        (call $report (str "r_rec3") (call $record_metric (local.get $c) (i64.const 3)))
        (call $report (str "r_getc") (call $get_metric (local.get $c) (i32.const 216)))
        (call $report (str "r_cval") (i32.load (i32.const 216)))
        (drop (call $increment_metric (local.get $g) (i64.const 10)))
        (call $report (str "r_gdec") (call $increment_metric (local.get $g) (i64.const -3)))
        (call $report (str "r_hinc") (call $increment_metric (local.get $h) (i64.const 1)))
        (call $report (str "r_hrec") (call $record_metric (local.get $h) (i64.const 42)))
        (call $report (str "r_hget") (call $get_metric (local.get $h) (i32.const 216)))
        (call $report (str "r_unknown") (call $increment_metric (i32.const 1000) (i64.const 1)))
        (call $report (str "r_unknown_hist") (call $increment_metric (i32.const 1002) (i64.const 1)))
        (call $report (str "r_unknown_rec") (call $record_metric (i32.const 1002) (i64.const 1)))
        (i32.const 0))
    "#,
    );
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m)).build().unwrap();
    proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    let m = |n: &str| proxy.metric(n).unwrap_or_else(|| panic!("no report {n}"));
    assert_eq!(m("r_bad_type"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("r_inc0"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("r_incneg"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("r_inc5"), 0);
    assert_eq!(m("r_rec3"), 0);
    assert_eq!(m("r_getc"), 0);
    assert_eq!(m("r_cval"), 8, "record on a counter adds");
    assert_eq!(m("c"), 8);
    assert_eq!(m("r_gdec"), 0);
    assert_eq!(m("g"), 7);
    assert_eq!(m("r_hinc"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("r_hrec"), 0);
    assert_eq!(m("r_hget"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("r_unknown"), status::NOT_FOUND as u64);
    assert_eq!(m("r_unknown_hist"), status::BAD_ARGUMENT as u64, "type bits decide first");
    assert_eq!(m("r_unknown_rec"), status::NOT_FOUND as u64);
    assert_eq!(proxy.histogram("h"), Some(vec![42]));
}

#[test]
fn proxies_can_share_process_state() {
    let host = host();
    let m = load(&host, "queue", QUEUE);
    let mut a = Proxy::builder(&host).plugin(Plugin::new(m.clone()).name("a").vm_id("mesh")).build().unwrap();
    // A second listener of the same Envoy: same shared data, queues and metrics.
    let mut b = Proxy::builder(&host)
        .share_state(a.state())
        .plugin(Plugin::new(m.clone()).name("b").vm_id("mesh"))
        .build()
        .unwrap();
    a.set_shared_data("mesh", "k", b"v");
    assert_eq!(b.shared_data("mesh", "k").map(|(v, _)| v), Some(b"v".to_vec()));
    // b's request enqueues onto the queue a registered first: a's root context is woken.
    b.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(b.metric("enqueue"), Some(0));
    a.advance(Duration::ZERO);
    assert!(a.logged("queue ready"), "{:?}", a.logs());
    assert!(!b.logged("queue ready"));
    assert_eq!(a.metric("item_len"), Some(12), "metrics are process-wide too");

    // Without share_state, nothing is shared.
    let c = Proxy::builder(&host).plugin(Plugin::new(m).name("c").vm_id("mesh")).build().unwrap();
    assert_eq!(c.shared_data("mesh", "k"), None);
    assert_eq!(c.metric("item_len"), None);
}
