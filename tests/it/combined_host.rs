//! The combined `meshwasm.wasm` in the wasmtime host (issue 11, item 5): the chain jwt-auth → authz →
//! discovery → balancer from one module under one `vm_id`, each filter selected by its root_id, answers
//! like the four separate `.wasm` files with one VM per worker instead of four, including the pause path
//! (a request waits in jwt-auth for the first remote JWKS fetch, which the combined root context delegates,
//! and is then resumed through authz, discovery and the balancer, not past them). An unknown or empty
//! root_id is refused at configure time, naming the valid ones; every filter's shipped configuration is
//! accepted under its root_id.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use meshwasm_host::{
    CallReply, Host, HostOptions, Plugin, Proxy, Request, StreamState, Upstream, UpstreamReply,
};
use meshwasm_tests::artifacts::{self, wasm_path};
use meshwasm_tests::signer::{Signer, jwks};

use crate::combined_envoy::{CHAIN, VM, bearer, configs};

const ENDPOINTS: [&str; 3] = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"];
const WORKERS: usize = 2;

/// One host for every test of this module: each artifact is compiled once (the host caches modules).
fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::new(HostOptions::default()).unwrap())
}

/// The chain on two workers, from `meshwasm.wasm` (`combined`) or the separate artifacts; JWKS from
/// `idp` (counting its calls).
fn proxy(combined: bool, signer: &Signer, jwks_calls: Arc<AtomicUsize>) -> Proxy {
    let host = host();
    let endpoints: Vec<String> = ENDPOINTS.iter().map(|s| s.to_string()).collect();
    let body = jwks(&[signer]);
    let mut b = Proxy::builder(host).workers(WORKERS).start_time(SystemTime::now()).upstream(
        "idp",
        Upstream::handler(move |_| {
            jwks_calls.fetch_add(1, Ordering::SeqCst);
            CallReply::response(200, [("content-type", "application/json")], body.clone())
        }),
    );
    for ((name, artifact, root_id), config) in CHAIN.iter().zip(configs(None, &endpoints)) {
        let plugin = if combined {
            Plugin::new(host.load(wasm_path("meshwasm")).unwrap()).root_id(root_id)
        } else {
            Plugin::new(host.load(wasm_path(artifact)).unwrap())
        };
        b = b.plugin(plugin.name(name).vm_id(VM).config(config.as_bytes()));
    }
    b.build().unwrap()
}

/// (status, picked endpoint or "") of one request on `worker` with `auth`.
fn send(p: &mut Proxy, worker: usize, auth: Option<&str>) -> (u16, String) {
    let mut req = Request::get("/").authority("api");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let ex = p.send(worker, req, UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.error, None);
    let picked = ex
        .upstream_request
        .and_then(|up| meshwasm_host::foreign::original_dst_from_filter_state(&up.filter_state))
        .map(|a| a.to_string())
        .unwrap_or_default();
    (ex.status, picked)
}

#[derive(Debug, PartialEq, Eq)]
struct Answers {
    /// The first request of each worker: paused for the JWKS, then (status, picked endpoint).
    first: Vec<(u16, bool)>,
    /// Worker → endpoint → picks out of 6 staff requests.
    picks: BTreeMap<usize, BTreeMap<String, u32>>,
    refused: Vec<u16>,
    jwks_calls: usize,
    /// VMs per worker.
    vms: Vec<usize>,
}

/// What the chain answers, and the wasm entries per request of a steady-state allowed request by export.
fn answers(combined: bool) -> (Answers, BTreeMap<String, u64>) {
    let signer = Signer::rsa("rsa1.pem", "r1");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut p = proxy(combined, &signer, calls.clone());
    let staff = bearer(&signer, "alice", &["dev", "staff"]);

    // No keys yet: jwt-auth pauses the first request of each worker until the root's JWKS fetch.
    let ids: Vec<_> = (0..WORKERS)
        .map(|w| p.start(w, Request::get("/").authority("api").header("authorization", &staff)).unwrap())
        .collect();
    for id in &ids {
        assert!(matches!(p.stream_state(*id), Some(StreamState::Paused { .. })), "{:?}", p.stream_state(*id));
    }
    p.advance(Duration::from_millis(600));
    let mut first = Vec::new();
    for id in ids {
        // Resumed through authz, discovery and the balancer: steered to a discovered endpoint.
        assert!(matches!(p.stream_state(id), Some(StreamState::WaitingUpstream)), "{:?}", p.stream_state(id));
        let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
        let steered = ex
            .upstream_request
            .and_then(|up| meshwasm_host::foreign::original_dst_from_filter_state(&up.filter_state))
            .is_some_and(|a| ENDPOINTS.contains(&a.to_string().as_str()));
        first.push((ex.status, steered));
    }

    let mut picks = BTreeMap::new();
    for w in 0..WORKERS {
        for _ in 0..6 {
            let (status, picked) = send(&mut p, w, Some(&staff));
            assert_eq!(status, 200);
            *picks.entry(w).or_insert_with(BTreeMap::new).entry(picked).or_insert(0) += 1;
        }
    }
    let refused = vec![
        send(&mut p, 0, Some(&bearer(&Signer::rsa("rsa2.pem", "r1"), "mallory", &["staff"]))).0,
        send(&mut p, 1, None).0,
        send(&mut p, 0, Some(&bearer(&signer, "bob", &["dev"]))).0,
    ];
    let vms = (0..WORKERS).map(|w| p.worker(w).unwrap().vm_count()).collect();
    p.reset_call_counts();
    for _ in 0..10 {
        assert_eq!(send(&mut p, 0, Some(&staff)).0, 200);
    }
    let mut entries = BTreeMap::new();
    for c in p.call_counts().values() {
        for (export, n) in &c.callbacks {
            *entries.entry(export.clone()).or_insert(0) += n / 10;
        }
    }
    (Answers { first, picks, refused, jwks_calls: calls.load(Ordering::SeqCst), vms }, entries)
}

#[test]
fn one_module_serves_the_chain_like_the_separate_artifacts_with_one_vm_per_worker() {
    let (separate, separate_entries) = answers(false);
    let (combined, combined_entries) = answers(true);
    eprintln!(
        "wasm entries per allowed request: separate {separate_entries:?}, combined {combined_entries:?}"
    );
    let even: BTreeMap<String, u32> = ENDPOINTS.iter().map(|e| (e.to_string(), 2)).collect();
    let expected = |vms: usize| Answers {
        first: vec![(200, true); WORKERS],
        picks: (0..WORKERS).map(|w| (w, even.clone())).collect(),
        refused: vec![401, 401, 403],
        jwks_calls: 1,
        vms: vec![vms; WORKERS],
    };
    assert_eq!(separate, expected(4));
    assert_eq!(combined, expected(1));
}

fn build(host: &Host, root_id: &str, config: &str) -> anyhow::Result<Proxy> {
    let module = host.load(wasm_path("meshwasm"))?;
    Proxy::builder(host)
        .plugin(
            Plugin::new(module)
                .name("combined")
                .root_id(root_id)
                .config(config.as_bytes())
                .env("ORDERS_CLIENT_SECRET", "example"),
        )
        .build()
}

#[test]
fn an_unknown_or_empty_root_id_is_refused_at_configure_time_naming_the_valid_ones() {
    let [_, _, _, balancer] = configs(None, &["10.0.0.1:8080".to_owned()]);
    let host = host();
    for bad in ["", "meshwasm.balancr", "balancer", "meshwasm_balancer"] {
        let err =
            format!("{:#}", build(host, bad, &balancer).err().expect("an unknown root_id was accepted"));
        assert!(err.contains(&format!("root_id `{bad}` selects no filter; valid root_ids: ")), "{err}");
        for (_, _, root_id) in CHAIN {
            assert!(err.contains(root_id), "{err}");
        }
        assert!(err.contains("meshwasm.token_injector"), "{err}");
    }
}

/// Every filter's shipped configuration (examples/istio/config) is accepted through its root_id, and
/// refused under another filter's root_id: the root_id, not the configuration, selects the filter.
#[test]
fn every_filter_is_selected_by_its_root_id() {
    let host = host();
    let dir = artifacts::workspace_root().join("examples/istio/config");
    let ids = [
        ("meshwasm_jwt_auth", "meshwasm.jwt_auth"),
        ("meshwasm_token_injector", "meshwasm.token_injector"),
        ("meshwasm_discovery", "meshwasm.discovery"),
        ("meshwasm_balancer", "meshwasm.balancer"),
        ("meshwasm_authz", "meshwasm.authz"),
    ];
    for (file, root_id) in ids {
        let config = std::fs::read_to_string(dir.join(format!("{file}.json"))).unwrap();
        build(host, root_id, &config).unwrap_or_else(|e| panic!("{file} as {root_id}: {e:#}"));
    }
    let jwt = std::fs::read_to_string(dir.join("meshwasm_jwt_auth.json")).unwrap();
    assert!(
        build(host, "meshwasm.balancer", &jwt).is_err(),
        "the balancer accepted jwt-auth's configuration"
    );
}
