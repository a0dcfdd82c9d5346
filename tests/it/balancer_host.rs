//! The real balancer `.wasm` in the wasmtime host: distribution per algorithm, steering (filter state by
//! default, the header when opted in), service selection, passive health on the virtual clock, bounded
//! metrics, and endpoints published in shared data by (a stand-in for) discovery.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_endpoints::{Endpoint, EndpointSet, SUBSCRIBERS_KEY, Subscribers, set_key};
use meshwasm_host::foreign::original_dst_from_filter_state;
use meshwasm_host::{
    Backend as UpstreamTarget, Exchange, Host, HostOptions, Plugin, Proxy, Request, UpstreamReply,
};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend as TestBackend;

const HEADER: &str = "x-meshwasm-endpoint";
const VM: &str = "mesh";

fn proxy(config: &str, workers: usize) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(wasm_path("meshwasm_balancer")).unwrap();
    Proxy::builder(&host)
        .workers(workers)
        .plugin(Plugin::new(module).name("balancer").vm_id(VM).config(config.as_bytes()))
        .build()
        .unwrap()
}

fn try_proxy(config: &str) -> anyhow::Result<Proxy> {
    let host = Host::new(HostOptions::default())?;
    let module = host.load(wasm_path("meshwasm_balancer"))?;
    Proxy::builder(&host)
        .plugin(Plugin::new(module).name("balancer").vm_id(VM).config(config.as_bytes()))
        .build()
}

/// The endpoint the upstream request was steered to through filter state, or None. No steering
/// header travels upstream.
fn steered(ex: &Exchange) -> Option<String> {
    let up = ex.upstream_request.as_ref()?;
    let all = up.headers.get_all(HEADER);
    assert!(all.is_empty(), "no steering header upstream: {all:?}");
    original_dst_from_filter_state(&up.filter_state).map(|a| a.to_string())
}

fn send(p: &mut Proxy, worker: usize, req: Request) -> Exchange {
    p.send(worker, req, UpstreamReply::new(200)).unwrap()
}

fn api() -> Request {
    Request::get("/").authority("api")
}

fn count(p: &mut Proxy, n: usize, req: impl Fn(usize) -> Request) -> BTreeMap<String, u32> {
    let mut c = BTreeMap::new();
    for i in 0..n {
        let ex = send(p, 0, req(i));
        assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
        *c.entry(steered(&ex).expect("steered")).or_insert(0) += 1;
    }
    c
}

fn static_config(algorithm: &str, endpoints: &str, extra: &str) -> String {
    format!(
        r#"{{"seed": 7, "services": {{"api": {{"algorithm": "{algorithm}", "endpoints": [{endpoints}] {extra}}}}}}}"#
    )
}

const THREE: &str = r#""10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80""#;
const WEIGHTED: &str = r#"{"address": "10.0.0.1:80", "weight": 1}, {"address": "10.0.0.2:80", "weight": 2},
                          {"address": "10.0.0.3:80", "weight": 3}"#;

fn chi_square(counts: &BTreeMap<String, u32>, weights: &[(&str, u32)]) -> f64 {
    let total: f64 = counts.values().map(|&c| f64::from(c)).sum();
    let wsum: f64 = weights.iter().map(|(_, w)| f64::from(*w)).sum();
    weights
        .iter()
        .map(|(a, w)| {
            let e = total * f64::from(*w) / wsum;
            (f64::from(counts.get(*a).copied().unwrap_or(0)) - e).powi(2) / e
        })
        .sum()
}

#[test]
fn round_robin_spreads_evenly() {
    let mut p = proxy(&static_config("round_robin", THREE, ""), 1);
    let c = count(&mut p, 300, |_| api());
    assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![100, 100, 100], "{c:?}");
    assert_eq!(p.metric("meshwasm_balancer.api.endpoint.10_0_0_2_80.picks"), Some(100));
}

#[test]
fn weighted_round_robin_respects_weights_exactly() {
    let mut p = proxy(&static_config("weighted_round_robin", WEIGHTED, ""), 1);
    let c = count(&mut p, 600, |_| api());
    assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![100, 200, 300], "{c:?}");
}

#[test]
fn random_and_weighted_random_distributions() {
    let mut p = proxy(&static_config("random", WEIGHTED, ""), 1);
    let c = count(&mut p, 3000, |_| api());
    let uniform = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)];
    assert!(chi_square(&c, &uniform) < 13.8, "{c:?}"); // df 2, p = 0.001
    let mut p = proxy(&static_config("weighted_random", WEIGHTED, ""), 1);
    let c = count(&mut p, 3000, |_| api());
    let weights = [("10.0.0.1:80", 1), ("10.0.0.2:80", 2), ("10.0.0.3:80", 3)];
    assert!(chi_square(&c, &weights) < 13.8, "{c:?}");
}

#[test]
fn least_request_prefers_idle_endpoints() {
    let mut p = proxy(&static_config("least_request", THREE, ""), 1);
    // Hold 30 requests open: power-of-two choices spreads them close to evenly.
    let mut held = Vec::new();
    let mut c: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let id = p.start(0, api()).unwrap();
        let ex = p.exchange(id).unwrap();
        *c.entry(steered(&ex).unwrap()).or_insert(0) += 1;
        held.push(id);
    }
    assert!(c.values().all(|&n| (6..=14).contains(&n)), "{c:?}");
    for id in held {
        p.finish(id, UpstreamReply::new(200)).unwrap();
    }
    // All finished: the next picks are spread over all three again.
    let c = count(&mut p, 300, |_| api());
    assert_eq!(c.len(), 3, "{c:?}");
}

#[test]
fn ring_hash_and_maglev_are_sticky_per_key() {
    for algorithm in ["ring_hash", "maglev"] {
        let extra = r#", "hash_key": [{"header": "x-user"}, {"cookie": "sid"}]"#;
        let mut p = proxy(&static_config(algorithm, THREE, extra), 1);
        let mut per_user = BTreeMap::new();
        for user in 0..60 {
            let first = steered(&send(&mut p, 0, api().header("x-user", format!("u{user}")))).unwrap();
            for _ in 0..3 {
                let again = steered(&send(&mut p, 0, api().header("x-user", format!("u{user}")))).unwrap();
                assert_eq!(again, first, "{algorithm}: user {user} moved");
            }
            per_user.insert(user, first);
        }
        let used: std::collections::BTreeSet<&String> = per_user.values().collect();
        assert_eq!(used.len(), 3, "{algorithm}: 60 users use every endpoint");
        // The cookie is the fallback key.
        let a = steered(&send(&mut p, 0, api().header("cookie", "a=1; sid=abc"))).unwrap();
        let b = steered(&send(&mut p, 0, api().header("cookie", "sid=abc"))).unwrap();
        assert_eq!(a, b, "{algorithm}");
    }
}

#[test]
fn client_sent_steering_header_is_replaced_or_removed() {
    let config = r#"{"service_from": ["authority"], "services": {"api": {"endpoints": ["10.0.0.1:80"]}}}"#;
    let mut p = proxy(config, 1);
    let ex = send(&mut p, 0, api().header(HEADER, "6.6.6.6:1").header(HEADER, "7.7.7.7:1"));
    assert_eq!(steered(&ex).as_deref(), Some("10.0.0.1:80"));
    // A request for no configured service passes through, but never with the client's copy.
    let ex = send(&mut p, 0, Request::get("/").authority("other").header(HEADER, "6.6.6.6:1"));
    assert_eq!(ex.status, 200);
    assert_eq!(steered(&ex), None);
}

#[test]
fn configured_steering_header_is_stripped_even_for_unknown_services() {
    let config = r#"{"steering": "header", "endpoint_header": "x-picked", "service_from": ["authority"],
                     "services": {"api": {"endpoints": ["10.0.0.1:80"]}}}"#;
    let mut p = proxy(config, 1);
    let ex = send(&mut p, 0, Request::get("/").authority("other").header("x-picked", "6.6.6.6:1"));
    assert_eq!(ex.status, 200);
    let up = ex.upstream_request.as_ref().expect("passed upstream");
    assert!(up.headers.get_all("x-picked").is_empty(), "client's steering header reached the upstream");
    let ex = send(&mut p, 0, api().header("x-picked", "6.6.6.6:1"));
    let up = ex.upstream_request.as_ref().expect("passed upstream");
    assert_eq!(up.headers.get_all("x-picked"), vec![b"10.0.0.1:80".to_vec()]);
    assert!(up.filter_state.is_empty(), "header steering sets no filter state");
    assert!(p.logged("steering by header x-picked"), "the opt-in is called out at configure time");
}

#[test]
fn no_client_header_selects_a_service_unless_configured() {
    // The old default read `x-meshwasm-service` first: a client could pick any configured service.
    let two =
        r#""services": {"api": {"endpoints": ["10.0.0.1:80"]}, "admin": {"endpoints": ["10.9.9.9:80"]}}"#;
    let err = try_proxy(&format!("{{{two}}}")).err().expect("several services need service_from");
    assert!(format!("{err:#}").contains("service_from is required"), "{err:#}");
    // One service and no service_from: that service, whatever the client sends.
    let mut p = proxy(r#"{"services": {"api": {"endpoints": ["10.0.0.1:80"]}}}"#, 1);
    let ex = send(&mut p, 0, Request::get("/").authority("admin").header("x-meshwasm-service", "admin"));
    assert_eq!(steered(&ex).as_deref(), Some("10.0.0.1:80"));
    let up = ex.upstream_request.as_ref().unwrap();
    assert_eq!(
        up.headers.get("x-meshwasm-service"),
        Some("admin"),
        "an unconfigured header is not ours to strip"
    );
    // A header named in service_from selects, and never reaches the upstream.
    let mut p =
        proxy(&format!(r#"{{"service_from": [{{"header": "x-svc"}}, {{"fixed": "api"}}], {two}}}"#), 1);
    let ex = send(&mut p, 0, api().header("x-svc", "admin"));
    assert_eq!(steered(&ex).as_deref(), Some("10.9.9.9:80"));
    assert!(
        ex.upstream_request.as_ref().unwrap().headers.get_all("x-svc").is_empty(),
        "selection header stripped"
    );
    let ex = send(&mut p, 0, api());
    assert_eq!(steered(&ex).as_deref(), Some("10.0.0.1:80"));
}

#[test]
fn route_rules_match_the_normalized_path_and_refuse_ambiguous_ones() {
    let config = r#"{"service_from": [{"route": {"prefix": "/api/", "service": "api"}}, {"fixed": "web"}],
                     "services": {"api": {"endpoints": ["10.0.0.1:80"]}, "web": {"endpoints": ["10.0.0.2:80"]}}}"#;
    let mut p = proxy(config, 1);
    for path in ["/api/x", "/%61pi/x", "//api/x", "/x/../api/x"] {
        assert_eq!(steered(&send(&mut p, 0, Request::get(path))).as_deref(), Some("10.0.0.1:80"), "{path}");
    }
    assert_eq!(steered(&send(&mut p, 0, Request::get("/web/api/"))).as_deref(), Some("10.0.0.2:80"));
    for path in ["/api%2Fx", "/api;v=1/x", "/api%2fx"] {
        let ex = send(&mut p, 0, Request::get(path));
        assert_eq!(ex.status, 400, "{path}");
        assert_eq!(String::from_utf8_lossy(&ex.response_body), "bad request path");
        assert!(ex.upstream_request.is_none(), "{path} was forwarded");
    }
}

#[test]
fn per_endpoint_metrics_stay_bounded_under_churn() {
    let mut p = proxy(r#"{"seed": 1, "endpoint_metrics_limit": 8, "services": {"api": {}}}"#, 1);
    let endpoint_metrics = |p: &Proxy| p.metrics().keys().filter(|k| k.contains(".endpoint.")).count();
    // 100 versions, each a fresh pair of endpoints (pods replaced), each picked.
    for v in 1..=100u64 {
        let a = format!("10.2.{}.1:80", v);
        let b = format!("10.2.{}.2:80", v);
        publish(&p, v, &[&a, &b]);
        notify(&mut p);
        let got: std::collections::BTreeSet<String> =
            (0..4).map(|_| steered(&send(&mut p, 0, api())).unwrap()).collect();
        assert_eq!(got, [a, b].into_iter().collect(), "version {v}");
    }
    assert_eq!(endpoint_metrics(&p), 9, "8 endpoints of their own plus `other`: {:?}", p.metrics());
    assert_eq!(p.metric("meshwasm_balancer.api.endpoint.10_2_1_1_80.picks"), Some(2));
    assert_eq!(p.metric("meshwasm_balancer.api.endpoint.other.picks"), Some(400 - 8 * 2));
}

/// Sends one request and forwards it to the real backend it was steered to (so `upstream.address` is
/// the pick); returns the pick.
fn send_forwarded(p: &mut Proxy) -> String {
    let id = p.start(0, api()).unwrap();
    let picked = steered(&p.exchange(id).unwrap()).unwrap();
    p.finish(id, UpstreamTarget::Forward(picked.parse().unwrap())).unwrap();
    picked
}

#[test]
fn failing_endpoint_is_ejected_and_returns_on_the_virtual_clock() {
    let backends = TestBackend::start_many("bal", 3).unwrap();
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr())).collect();
    let config = static_config(
        "round_robin",
        &list.join(", "),
        r#", "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "10s", "max_ejection_percent": 50}"#,
    );
    let mut p = proxy(&config, 1);
    let bad = backends[1].addr().to_string();
    backends[1].set_status(503);
    let mut failures = 0;
    while failures < 3 {
        failures += u32::from(send_forwarded(&mut p) == bad);
    }
    assert_eq!(p.metric("meshwasm_balancer.api.ejections"), Some(1));
    assert!(p.logged(&format!("ejected {bad}")));
    for _ in 0..40 {
        assert_ne!(send_forwarded(&mut p), bad, "ejected endpoint still picked");
    }
    backends[1].set_status(200);
    p.advance(Duration::from_secs(9));
    assert_ne!(send_forwarded(&mut p), bad);
    assert_ne!(send_forwarded(&mut p), bad);
    p.advance(Duration::from_secs(1));
    let back: Vec<String> = (0..6).map(|_| send_forwarded(&mut p)).collect();
    assert_eq!(back.iter().filter(|a| **a == bad).count(), 2, "{back:?}");
}

#[test]
fn local_replies_do_not_eject_endpoints() {
    // 5xx answers that never came from the picked endpoint (no `upstream.address`, no upstream failure
    // flag: a local reply) say nothing about it.
    let config = static_config(
        "round_robin",
        THREE,
        r#", "outlier_detection": {"consecutive_failures": 2, "max_ejection_percent": 100}"#,
    );
    let mut p = proxy(&config, 1);
    for _ in 0..30 {
        let ex = p.send(0, api(), UpstreamReply::new(503)).unwrap();
        assert_eq!(ex.status, 503);
    }
    assert_eq!(p.metric("meshwasm_balancer.api.ejections").unwrap_or(0), 0);
    let c = count(&mut p, 30, |_| api());
    assert_eq!(c.len(), 3, "every endpoint still gets traffic: {c:?}");
}

#[test]
fn nothing_to_pick_is_a_503() {
    // Discovery has not published anything for `api` yet.
    let mut p = proxy(r#"{"services": {"api": {}}}"#, 1);
    let ex = send(&mut p, 0, api());
    assert_eq!(ex.status, 503);
    assert_eq!(String::from_utf8_lossy(&ex.response_body), "no healthy upstream");
    assert!(ex.upstream_request.is_none());
    assert_eq!(p.metric("meshwasm_balancer.api.no_healthy_upstream"), Some(1));
}

fn publish(p: &Proxy, version: u64, addrs: &[&str]) {
    let set =
        EndpointSet { version, endpoints: addrs.iter().map(|a| Endpoint::new(a.parse().unwrap())).collect() };
    p.set_shared_data(VM, &set_key("api"), &set.encode());
}

fn notify(p: &mut Proxy) {
    let (bytes, _) = p.shared_data(VM, SUBSCRIBERS_KEY).expect("balancer VMs subscribed");
    let subs = Subscribers::decode(&bytes).unwrap();
    assert!(!subs.0.is_empty());
    for q in subs.0 {
        assert!(p.enqueue(VM, &q, b"api"));
    }
}

#[test]
fn endpoints_from_shared_data_follow_versions() {
    let mut p = proxy(r#"{"seed": 1, "services": {"api": {}}}"#, 2);
    // Each worker's VM registered its own notify queue.
    let subs = Subscribers::decode(&p.shared_data(VM, SUBSCRIBERS_KEY).unwrap().0).unwrap();
    assert_eq!(subs.0.len(), 2, "{subs:?}");

    // Version 1, picked up by the slow tick.
    publish(&p, 1, &["10.1.0.1:80", "10.1.0.2:80"]);
    p.advance(Duration::from_millis(1100));
    for worker in 0..2 {
        let got: std::collections::BTreeSet<String> =
            (0..4).map(|_| steered(&send(&mut p, worker, api())).unwrap()).collect();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec!["10.1.0.1:80", "10.1.0.2:80"]);
    }

    // Version 2 adds an endpoint; the queue notification applies it without waiting for a tick.
    publish(&p, 2, &["10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"]);
    notify(&mut p);
    for worker in 0..2 {
        let got: std::collections::BTreeSet<String> =
            (0..6).map(|_| steered(&send(&mut p, worker, api())).unwrap()).collect();
        assert!(got.contains("10.1.0.3:80"), "worker {worker}: {got:?}");
    }

    // Garbage in shared data keeps the last good set.
    p.set_shared_data(VM, &set_key("api"), b"not an endpoint set");
    notify(&mut p);
    assert!(p.logged("keeping the last set"));
    assert_eq!(send(&mut p, 0, api()).status, 200);
    assert!(p.metric("meshwasm_balancer.api.bad_endpoint_sets").unwrap_or(0) >= 1);
}

#[test]
fn bad_config_is_rejected_naming_the_field() {
    let err = try_proxy(r#"{"services": {"api": {"algoritm": "random"}}}"#).err().expect("rejected");
    assert!(format!("{err:#}").contains("algoritm"), "{err:#}");
    let err = try_proxy(r#"{"services": {"api": {"algorithm": "maglev", "hash_key": ["path"], "maglev": {"table_size": 100}}}}"#)
        .err()
        .expect("rejected");
    assert!(format!("{err:#}").contains("maglev.table_size"), "{err:#}");
}
