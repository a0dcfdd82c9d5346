//! The combined `meshwasm.wasm` in real Envoy (issue 11, item 5): one module under one `vm_id` serves
//! jwt-auth → authz → discovery → balancer on one listener, each filter selected by its root_id, and
//! answers exactly like the four separate `.wasm` files (a valid token → 200, round robin over the
//! discovered backends; a bad or missing token → 401; a token authz refuses → 403), while Envoy runs one
//! VM per worker for the chain instead of one per filter and worker (`wasm.envoy.wasm.runtime.v8.*`).

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::process::{http_request, wait_until};
use meshwasm_tests::signer::{Signer, jwks, now};
use serde_json::json;

pub(crate) const ISS: &str = "https://idp.test";
/// The vm_id every filter of the chain shares (discovery publishes to the balancer through it).
pub(crate) const VM: &str = "meshwasm";

/// The chain in order: (plugin name, separate artifact, root_id in `meshwasm.wasm`).
pub(crate) const CHAIN: [(&str, &str, &str); 4] = [
    ("jwt", "meshwasm_jwt_auth", "meshwasm.jwt_auth"),
    ("authz", "meshwasm_authz", "meshwasm.authz"),
    ("discovery", "meshwasm_discovery", "meshwasm.discovery"),
    ("balancer", "meshwasm_balancer", "meshwasm.balancer"),
];

/// The plugin configurations of [`CHAIN`]: jwt-auth with `jwks` (a JWKS JSON value) or a remote JWKS on
/// cluster `idp`, authz allowing the issuer's principals in group `staff`, discovery with a static list of
/// `endpoints`, the balancer round robin over what discovery publishes.
pub(crate) fn configs(jwks: Option<serde_json::Value>, endpoints: &[String]) -> [String; 4] {
    let keys = match jwks {
        Some(local) => json!({"local_jwks": local}),
        None => {
            json!({"remote_jwks": {"cluster": "idp", "uri": "https://idp.test/jwks", "cache_duration_s": 60}})
        }
    };
    let mut provider = json!({"issuer": ISS, "audiences": ["api"], "algorithms": ["RS256"],
                              "claims_to_filter_state": ["groups"]});
    for (k, v) in keys.as_object().into_iter().flatten() {
        provider[k] = v.clone();
    }
    let jwt = json!({"providers": {"idp": provider}, "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
                     "key_wait_timeout_ms": 2000});
    let authz = json!({"policies": [{"name": "staff-only", "action": "ALLOW", "rules": [{
        "from": [{"source": {"request_principals": [format!("{ISS}/*")]}}],
        "when": [{"key": "request.auth.claims[groups]", "values": ["staff"]}]
    }]}]});
    let eps: Vec<_> = endpoints.iter().map(|a| json!({"address": a})).collect();
    let discovery = json!({"tick": "100ms", "services": [
        {"name": "web", "allow_loopback": true, "source": {"static": {"endpoints": eps}}}]});
    let balancer = json!({"seed": 7, "service_from": [{"fixed": "web"}], "refresh_interval": "200ms",
                          "services": {"web": {"algorithm": "round_robin"}}});
    [jwt, authz, discovery, balancer].map(|v| v.to_string())
}

pub(crate) fn bearer(s: &Signer, sub: &str, groups: &[&str]) -> String {
    format!(
        "Bearer {}",
        s.mint(&json!({"iss": ISS, "aud": "api", "sub": sub, "exp": now() + 600, "groups": groups}))
    )
}

/// Envoy with the chain from the separate artifacts (`combined == false`) or from `meshwasm.wasm`.
fn envoy(combined: bool, workers: u32, signer: &Signer, backends: &[Backend]) -> Envoy {
    let endpoints: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    let configs = configs(Some(serde_json::from_str(&jwks(&[signer])).unwrap()), &endpoints);
    let mut listener = Listener::new("main", "picked");
    for ((name, artifact, root_id), config) in CHAIN.iter().zip(configs) {
        let filter = if combined {
            WasmFilter::new(name, wasm_path("meshwasm")).root_id(root_id)
        } else {
            WasmFilter::new(name, wasm_path(artifact)).root_id("")
        };
        listener = listener.wasm(filter.vm_id(VM).config(config));
    }
    EnvoyConfig::new()
        .concurrency(workers)
        .listener(listener)
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap()
}

/// (status, instance that answered or "", www-authenticate present) of one GET / with `auth`.
fn get(envoy: &Envoy, auth: Option<&str>) -> (u16, String, bool) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let r = http_request(envoy.listener_addr("main"), "GET", "/", &headers, b"", Duration::from_secs(10))
        .unwrap();
    (
        r.status,
        r.header(INSTANCE_HEADER).unwrap_or_default().to_owned(),
        r.header("www-authenticate").is_some(),
    )
}

/// What one Envoy answers, to compare the combined module with the separate ones.
#[derive(Debug, PartialEq, Eq)]
struct Answers {
    /// Backend → requests it got out of 12 with a staff token.
    round_robin: BTreeMap<String, u32>,
    bad_signature: (u16, bool),
    no_token: (u16, bool),
    not_staff: u16,
    /// Requests that reached a backend for the three refused ones.
    refused_reached_backend: u64,
}

fn answers(envoy: &Envoy, signer: &Signer, backends: &[Backend]) -> Answers {
    let staff = bearer(signer, "alice", &["dev", "staff"]);
    assert!(
        wait_until(Duration::from_secs(10), || get(envoy, Some(&staff)).0 == 200),
        "the chain never answered 200 (discovery → balancer)"
    );
    let mut round_robin = BTreeMap::new();
    for _ in 0..12 {
        let (status, instance, _) = get(envoy, Some(&staff));
        assert_eq!(status, 200);
        *round_robin.entry(instance).or_insert(0) += 1;
    }
    let before: u64 = backends.iter().map(Backend::request_count).sum();
    let other = Signer::rsa("rsa2.pem", "r1");
    let (s, _, www) = get(envoy, Some(&bearer(&other, "mallory", &["staff"])));
    let bad_signature = (s, www);
    let (s, _, www) = get(envoy, None);
    let no_token = (s, www);
    let not_staff = get(envoy, Some(&bearer(signer, "bob", &["dev"]))).0;
    let after: u64 = backends.iter().map(Backend::request_count).sum();
    Answers { round_robin, bad_signature, no_token, not_staff, refused_reached_backend: after - before }
}

fn vm_stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("wasm.envoy.wasm.runtime.v8.{name}")).unwrap().unwrap_or(0)
}

#[test]
fn one_module_serves_the_chain_like_the_separate_artifacts_with_one_vm_per_worker() {
    let signer = Signer::rsa("rsa1.pem", "r1");
    let backends = Backend::start_many("c", 3).unwrap();
    let expected = Answers {
        round_robin: backends.iter().map(|b| (b.name().to_owned(), 4)).collect(),
        bad_signature: (401, true),
        no_token: (401, true),
        not_staff: 403,
        refused_reached_backend: 0,
    };

    let mut active = BTreeMap::new();
    for combined in [false, true] {
        let envoy = envoy(combined, 1, &signer, &backends);
        let got = answers(&envoy, &signer, &backends);
        assert_eq!(got, expected, "combined: {combined}");
        active.insert(combined, (vm_stat(&envoy, "active"), vm_stat(&envoy, "created")));
    }
    eprintln!(
        "v8 VMs (active, created) with 1 worker: separate {:?}, combined {:?}",
        active[&false], active[&true]
    );
    // Envoy 1.40 keeps, per (vm_id, module), a base VM, the main thread's and one per worker
    // (`wasm.envoy.wasm.runtime.v8.active`): four modules keep four of each, the combined module one.
    let (separate, combined) = (active[&false].0, active[&true].0);
    assert_eq!(combined, 3, "combined with 1 worker: base, main thread, worker");
    assert_eq!(separate, 4 * combined, "separate: one VM per filter where the combined module has one");
}

#[test]
fn two_workers_add_one_vm_each_for_the_whole_chain() {
    let signer = Signer::rsa("rsa1.pem", "r1");
    let backends = Backend::start_many("w", 3).unwrap();
    let envoy = envoy(true, 2, &signer, &backends);
    let staff = bearer(&signer, "alice", &["staff"]);
    assert!(wait_until(Duration::from_secs(10), || get(&envoy, Some(&staff)).0 == 200));
    let mut seen = BTreeMap::new();
    for _ in 0..12 {
        let (status, instance, _) = get(&envoy, Some(&staff));
        assert_eq!(status, 200);
        *seen.entry(instance).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "every backend got traffic: {seen:?}");
    assert_eq!(get(&envoy, Some(&bearer(&signer, "bob", &["dev"]))).0, 403);
    assert_eq!(get(&envoy, None).0, 401);
    let (active, created) = (vm_stat(&envoy, "active"), vm_stat(&envoy, "created"));
    eprintln!("v8 VMs with 2 workers: active {active}, created {created}");
    assert_eq!(active, 4, "base, main thread and one VM per worker, for all four filters");
}

#[test]
fn an_unknown_root_id_is_refused_at_startup_naming_the_valid_ones() {
    let [_, _, _, balancer] = configs(None, &["127.0.0.1:9".to_owned()]);
    // Envoy exits at start-up when a listener's Wasm filter fails on_configure.
    let (started, log) = EnvoyConfig::new()
        .listener(
            Listener::new("main", "picked").wasm(
                WasmFilter::new("balancer", wasm_path("meshwasm"))
                    .root_id("meshwasm.balancr")
                    .vm_id(VM)
                    .config(balancer),
            ),
        )
        .cluster(Cluster::original_dst("picked"))
        .log_level("warn")
        .run_until_exit(Duration::from_secs(60))
        .unwrap();
    assert!(!started, "Envoy accepted an unknown root_id:\n{log}");
    assert!(
        log.contains("meshwasm.wasm: root_id `meshwasm.balancr` selects no filter; valid root_ids: "),
        "{log}"
    );
    for (_, _, root_id) in CHAIN {
        assert!(log.contains(root_id), "{log}");
    }
}
