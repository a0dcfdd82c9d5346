//! The balancer's randomized, load-aware and hashing algorithms in real Envoy: an ORIGINAL_DST-by-header
//! cluster steered to real backends (static endpoints in the balancer config) that report which instance
//! answered. Round robin and weighted round robin are covered in `balancer_envoy.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::process::{HttpResponse, http_request};

const REQUESTS: u32 = 300;

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

fn answered_by(envoy: &Envoy, headers: &[(&str, &str)]) -> String {
    let r = get(envoy, headers);
    assert_eq!(r.status, 200, "{}", r.text());
    r.header(INSTANCE_HEADER).unwrap().to_owned()
}

/// Requests per backend, in backend order (0 for a backend that got none).
fn tally(envoy: &Envoy, backends: &[Backend], n: u32) -> Vec<u32> {
    let mut c: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..n {
        *c.entry(answered_by(envoy, &[])).or_insert(0) += 1;
    }
    let known: BTreeSet<&str> = backends.iter().map(Backend::name).collect();
    assert!(c.keys().all(|k| known.contains(k.as_str())), "an unknown instance answered: {c:?}");
    backends.iter().map(|b| c.get(b.name()).copied().unwrap_or(0)).collect()
}

fn config(algorithm: &str, backends: &[Backend], weights: &[u32], extra: &str) -> String {
    let eps: Vec<String> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| format!(r#"{{"address": "{}", "weight": {w}}}"#, b.addr()))
        .collect();
    format!(
        r#"{{"seed": 7, "service_from": [{{"fixed": "api"}}],
            "services": {{"api": {{"algorithm": "{algorithm}", "endpoints": [{}] {extra}}}}}}}"#,
        eps.join(", ")
    )
}

/// Checks each count against a binomial(n, p) with a 5-sigma tolerance (two-sided false alarm ≈ 6e-7 per
/// backend for a fair sampler), where p is the backend's share of the weights.
fn assert_binomial(counts: &[u32], weights: &[u32], n: u32) {
    let total: u32 = weights.iter().sum();
    for (i, (&got, &w)) in counts.iter().zip(weights).enumerate() {
        let p = f64::from(w) / f64::from(total);
        let mean = f64::from(n) * p;
        let sigma = (f64::from(n) * p * (1.0 - p)).sqrt();
        let (lo, hi) = (mean - 5.0 * sigma, mean + 5.0 * sigma);
        assert!(
            (lo..=hi).contains(&f64::from(got)),
            "backend {i} (weight {w}) got {got} of {n}, expected {mean:.0} ± {:.0}: {counts:?}",
            5.0 * sigma
        );
    }
}

#[test]
fn random_spreads_uniformly() {
    let backends = Backend::start_many("r", 3).unwrap();
    // Weights are ignored by `random`: uneven ones here must not skew it.
    let envoy = envoy(&config("random", &backends, &[1, 5, 1], ""));
    let counts = tally(&envoy, &backends, REQUESTS);
    eprintln!("random over weights 1,5,1 (ignored): {counts:?}");
    assert_binomial(&counts, &[1, 1, 1], REQUESTS);
}

#[test]
fn weighted_random_follows_weights() {
    let backends = Backend::start_many("wr", 4).unwrap();
    let weights = [1, 2, 3, 6];
    let envoy = envoy(&config("weighted_random", &backends, &weights, ""));
    let counts = tally(&envoy, &backends, REQUESTS);
    eprintln!("weighted_random over weights {weights:?}: {counts:?}");
    assert_binomial(&counts, &weights, REQUESTS);
    // The heaviest endpoint clearly beats the lightest (not implied by the bounds alone for small weights).
    assert!(counts[3] > counts[0] * 2, "{counts:?}");
}

#[test]
fn least_request_avoids_a_backend_holding_requests() {
    let backends = Backend::start_many("lr", 3).unwrap();
    // 20 samples with replacement over 3 endpoints: the loaded one wins only if all 20 samples hit it,
    // (1/3)^20 ≈ 3e-10 per pick; with equal loads the first sample wins, so idle picks stay uniform.
    let extra = r#", "least_request": {"choice_count": 20}"#;
    let envoy = envoy(&config("least_request", &backends, &[1, 1, 1], extra));
    let slow = &backends[0];
    slow.set_delay(Duration::from_secs(6));

    // Send requests one at a time, each on its own thread, until one is being held by the slow backend.
    let addr = envoy.listener_addr("main");
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(thread::spawn(move || {
            http_request(addr, "GET", "/", &[], b"", Duration::from_secs(10)).map(|r| r.status)
        }));
        let t = Instant::now();
        while slow.request_count() == 0 && t.elapsed() < Duration::from_millis(300) {
            thread::sleep(Duration::from_millis(5));
        }
        if slow.request_count() > 0 {
            break;
        }
    }
    assert_eq!(slow.request_count(), 1, "no request ever reached the slow backend");

    // While that request is in flight, new requests go to the two idle backends only.
    let counts = tally(&envoy, &backends, 30);
    eprintln!("least_request while one request is held on {}: {counts:?}", slow.name());
    // The held request was still in flight through the whole burst (else the check below proves nothing).
    assert!(held.iter().any(|h| !h.is_finished()), "the slow request finished during the burst");
    assert_eq!(counts[0], 0, "a new request went to the backend holding one: {counts:?}");
    assert!(counts[1] > 0 && counts[2] > 0, "both idle backends should serve: {counts:?}");
    assert_eq!(slow.request_count(), 1);

    // The held request completes normally.
    for h in held {
        assert_eq!(h.join().unwrap().unwrap(), 200);
    }

    // Once it is done, the slow backend is picked again.
    slow.set_delay(Duration::ZERO);
    let counts = tally(&envoy, &backends, 60);
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
}

fn sticky_and_spread(algorithm: &str) {
    let backends = Backend::start_many(&algorithm[..2], 4).unwrap();
    let extra = r#", "hash_key": [{"header": "x-user"}]"#;
    let envoy = envoy(&config(algorithm, &backends, &[1, 1, 1, 1], extra));
    let mut per_user = BTreeMap::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let first = answered_by(&envoy, &[("x-user", &key)]);
        for _ in 0..3 {
            assert_eq!(answered_by(&envoy, &[("x-user", &key)]), first, "{algorithm}: {key} moved");
        }
        per_user.insert(key, first);
    }
    let used: BTreeSet<&String> = per_user.values().collect();
    eprintln!("{algorithm}: 40 keys on {} of 4 backends", used.len());
    assert!(used.len() >= 2, "{algorithm}: 40 keys all on one backend: {per_user:?}");
    // Interleaved with other keys, a key still lands where it did.
    for (key, first) in per_user.iter().rev() {
        assert_eq!(&answered_by(&envoy, &[("x-user", key)]), first, "{algorithm}: {key} moved");
    }
}

#[test]
fn ring_hash_is_sticky_per_key_and_spreads_keys() {
    sticky_and_spread("ring_hash");
}

#[test]
fn maglev_is_sticky_per_key_and_spreads_keys() {
    sticky_and_spread("maglev");
}
