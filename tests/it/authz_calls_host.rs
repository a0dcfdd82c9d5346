//! What the authz filter costs its host per request, counted in the wasmtime host: it reads only the
//! attributes its policies look at (the bench's policy: the peer's URI SAN, method and path), defines
//! no metric and builds no log line on the allow path.

use std::collections::BTreeMap;

use meshwasm_host::{Host, HostOptions, LogLevel, Plugin, Proxy, Request, UpstreamReply, property};
use meshwasm_tests::artifacts;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// The bench's policy (`bench/src/mtls.rs`): DENY the rogue principal, ALLOW GET /* from frontend.
const BENCH: &str = r#"{"policies": [
    {"name": "deny-rogue", "action": "DENY",
     "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/rogue"]}}]}]},
    {"name": "frontend-reads", "action": "ALLOW",
     "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                "to": [{"operation": {"methods": ["GET"], "paths": ["/*"]}}]}]}
]}"#;

/// Hostcalls per request (by name) over `n` allowed requests from frontend over mTLS, after a warm-up.
fn per_request(config: &str, level: LogLevel, n: u64) -> BTreeMap<String, u64> {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_authz")).unwrap();
    let mut p = Proxy::builder(&host)
        .log_level(level)
        .plugin(Plugin::new(module).name("authz").config(config.as_bytes()))
        .build()
        .unwrap();
    let req = || {
        Request::get("/orders/1")
            .property("connection.mtls", property::boolean(true))
            .property("connection.uri_san_peer_certificate", FRONTEND)
            .property("connection.dns_san_peer_certificate", "frontend.shop.svc")
            .property("connection.subject_peer_certificate", "CN=frontend,O=shop")
            .property("connection.sha256_peer_certificate_digest", "0a1b2c")
    };
    for _ in 0..3 {
        assert_eq!(p.send(0, req(), UpstreamReply::new(200)).unwrap().status, 200);
    }
    p.reset_call_counts();
    for _ in 0..n {
        assert_eq!(p.send(0, req(), UpstreamReply::new(200)).unwrap().status, 200);
    }
    let counts = p.call_counts().remove("authz").unwrap();
    counts
        .hostcalls
        .into_iter()
        .filter(|(_, c)| *c > 0)
        .map(|(k, c)| {
            assert_eq!(c % n, 0, "{k}: {c} over {n} requests");
            (k, c / n)
        })
        .collect()
}

fn calls(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[test]
fn the_bench_policy_reads_only_what_it_looks_at() {
    // Before: 3 header reads (`:path`, `:method`, `:authority`) and 5 properties (`connection.mtls`
    // and all four certificate fields), 11 hostcalls in all.
    let got = per_request(BENCH, LogLevel::Info, 10);
    let want = calls(&[
        // `:path` and `:method`.
        ("proxy_get_header_map_value", 2),
        // `connection.mtls`, `connection.uri_san_peer_certificate`.
        ("proxy_get_property", 2),
        // The total and the deciding policy's counter.
        ("proxy_increment_metric", 2),
        // Whether to write the debug line of the deciding policy (the level can change at runtime).
        ("proxy_get_log_level", 1),
    ]);
    assert_eq!(got, want);
}

#[test]
fn a_principal_only_policy_reads_the_uri_san_and_mtls_only() {
    let only = r#"{"policies": [{"name": "frontend", "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]}]}"#;
    let got = per_request(only, LogLevel::Info, 10);
    assert_eq!(got.get("proxy_get_property"), Some(&2), "{got:?}");
    assert_eq!(got.get("proxy_get_header_map_value"), Some(&1), "`:path` only: {got:?}");
    assert_eq!(got.get("proxy_log"), None, "no debug line at info level: {got:?}");
    // At debug level the deciding policy is logged, one line per request.
    let got = per_request(only, LogLevel::Debug, 10);
    assert_eq!(got.get("proxy_log"), Some(&1), "{got:?}");
    assert_eq!(got.get("proxy_get_property"), Some(&2), "{got:?}");
}
