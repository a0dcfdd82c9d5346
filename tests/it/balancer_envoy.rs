//! The balancer `.wasm` in real Envoy, steering an ORIGINAL_DST cluster (through filter state, or by
//! header when opted in) to real backends that report which instance answered.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, ENDPOINT_HEADER, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::process::{HttpResponse, http_request, wait_until};

fn envoy(config: &str) -> Envoy {
    EnvoyConfig::new()
        .listener(
            Listener::new("main", "picked").wasm(
                WasmFilter::new("balancer", wasm_path("meshwasm_balancer")).vm_id("mesh").config(config),
            ),
        )
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap()
}

fn get(envoy: &Envoy, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(envoy.listener_addr("main"), "GET", "/", headers, b"", Duration::from_secs(10)).unwrap()
}

fn tally(envoy: &Envoy, n: usize) -> BTreeMap<String, u32> {
    let mut c = BTreeMap::new();
    for _ in 0..n {
        let r = get(envoy, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        *c.entry(r.header(INSTANCE_HEADER).unwrap().to_owned()).or_insert(0) += 1;
    }
    c
}

fn config(algorithm: &str, backends: &[Backend], weights: &[u32], extra: &str) -> String {
    let eps: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| format!(r#"{{"address": "{}", "weight": {w}}}"#, b.addr()))
        .collect();
    format!(
        r#"{{"seed": 3, "service_from": [{{"fixed": "api"}}],
            "services": {{"api": {{"algorithm": "{algorithm}", "endpoints": [{}] {extra}}}}}}}"#,
        eps.join(", ")
    )
}

/// A wasm custom counter, whatever prefix Envoy gives it.
fn counter(envoy: &Envoy, name: &str) -> u64 {
    envoy.stats().unwrap().iter().filter(|(k, _)| k.ends_with(name)).map(|(_, v)| *v).sum()
}

#[test]
fn round_robin_spreads_evenly_over_real_backends() {
    let backends = Backend::start_many("b", 3).unwrap();
    let envoy = envoy(&config("round_robin", &backends, &[1, 1, 1], ""));
    let c = tally(&envoy, 60);
    assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![20, 20, 20], "{c:?}");
    assert_eq!(
        counter(&envoy, &format!("meshwasm_balancer.api.endpoint.127_0_0_1_{}.picks", backends[0].port())),
        20
    );
}

#[test]
fn weighted_round_robin_respects_weights() {
    let backends = Backend::start_many("w", 3).unwrap();
    let envoy = envoy(&config("weighted_round_robin", &backends, &[1, 2, 3], ""));
    let c = tally(&envoy, 60);
    let by_name: Vec<u32> = backends.iter().map(|b| c.get(b.name()).copied().unwrap_or(0)).collect();
    assert_eq!(by_name, vec![10, 20, 30], "{c:?}");
}

#[test]
fn client_sent_endpoint_header_is_ignored() {
    let backends = Backend::start_many("c", 2).unwrap();
    let intruder = Backend::start("intruder").unwrap();
    let envoy = envoy(&config("round_robin", &backends, &[1, 1], ""));
    let target = intruder.addr().to_string();
    for _ in 0..10 {
        let r = get(&envoy, &[(ENDPOINT_HEADER, &target)]);
        assert_eq!(r.status, 200);
        assert_ne!(r.header(INSTANCE_HEADER), Some("intruder"));
    }
    assert_eq!(intruder.request_count(), 0);
    // Steering is through filter state: no steering header reaches the upstream.
    for b in &backends {
        for req in b.requests() {
            assert!(req.header_all(ENDPOINT_HEADER).is_empty(), "{:?}", req.header_all(ENDPOINT_HEADER));
        }
    }
}

#[test]
fn opt_in_header_steering_replaces_the_clients_header() {
    let backends = Backend::start_many("h", 2).unwrap();
    let intruder = Backend::start("intruder").unwrap();
    let config = config("round_robin", &backends, &[1, 1], "").replacen('{', r#"{"steering": "header", "#, 1);
    let envoy =
        EnvoyConfig::new()
            .listener(Listener::new("main", "picked").wasm(
                WasmFilter::new("balancer", wasm_path("meshwasm_balancer")).vm_id("mesh").config(config),
            ))
            .cluster(Cluster::original_dst_header("picked", ENDPOINT_HEADER))
            .start()
            .unwrap();
    let target = intruder.addr().to_string();
    for _ in 0..6 {
        let r = get(&envoy, &[(ENDPOINT_HEADER, &target)]);
        assert_eq!(r.status, 200);
    }
    assert_eq!(intruder.request_count(), 0);
    // Upstream saw exactly one steering header: ours, naming the instance that answered.
    for b in &backends {
        for req in b.requests() {
            assert_eq!(req.header_all(ENDPOINT_HEADER), vec![b.addr().to_string()]);
        }
    }
}

#[test]
fn killed_backend_is_ejected_traffic_continues_and_it_returns() {
    let backends = Backend::start_many("k", 3).unwrap();
    let extra = r#", "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "2s",
                                          "max_ejection_percent": 50}"#;
    let envoy = envoy(&config("round_robin", &backends, &[1, 1, 1], extra));
    assert_eq!(tally(&envoy, 6).len(), 3);

    backends[1].stop();
    // Round robin reaches the dead one every third request: two failures eject it.
    let mut failures = 0;
    for _ in 0..6 {
        if get(&envoy, &[]).status != 200 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "exactly consecutive_failures requests fail before the ejection");
    assert_eq!(counter(&envoy, "meshwasm_balancer.api.ejections"), 1);
    // Traffic continues on the other two.
    let c = tally(&envoy, 20);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(!c.contains_key(backends[1].name()));

    // Back up: after the ejection time it receives traffic again.
    backends[1].restart().unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let r = get(&envoy, &[]);
            r.status == 200 && r.header(INSTANCE_HEADER) == Some(backends[1].name())
        }),
        "the restarted backend never got traffic again"
    );
}

#[test]
fn no_endpoint_is_a_503_no_healthy_upstream() {
    // Endpoints expected from discovery, which is not running.
    let envoy = envoy(r#"{"service_from": [{"fixed": "api"}], "services": {"api": {}}}"#);
    let r = get(&envoy, &[]);
    assert_eq!((r.status, r.text().as_str()), (503, "no healthy upstream"));
    assert_eq!(counter(&envoy, "meshwasm_balancer.api.no_healthy_upstream"), 1);
}
