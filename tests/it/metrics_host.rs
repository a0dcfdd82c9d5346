//! The filters' histograms and endpoint-set gauges in the wasmtime host, on the virtual clock: a call
//! answered after N ms records exactly N, the gauges hold the set sizes (metrics_envoy checks the same
//! names in real Envoy).

use std::time::{Duration, SystemTime};

use meshwasm_host::{
    CallReply, Host, HostOptions, Plugin, Proxy, Request, StreamState, Upstream, UpstreamReply,
};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::signer::{Signer, jwks, now};
use serde_json::json;

/// One engine for every test here: each module is compiled once (`Host::load` caches by content).
fn host() -> Host {
    static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
    HOST.get_or_init(|| Host::new(HostOptions::default()).unwrap()).clone()
}

fn json_reply(body: String, after_ms: u64) -> CallReply {
    CallReply::response(200, [("content-type", "application/json")], body)
        .after(Duration::from_millis(after_ms))
}

#[test]
fn jwt_auth_records_jwks_and_introspection_latency() {
    let host = host();
    let signer = Signer::rsa("rsa1.pem", "r1");
    let keys = jwks(&[&signer]);
    let cfg = json!({
        "providers": {"idp": {
            "issuer": "https://idp.test", "audiences": ["api"],
            "remote_jwks": {"cluster": "idp", "uri": "https://idp.test/jwks"},
            "introspection": {"cluster": "idp", "path": "/introspect", "authority": "idp.test",
                              "client_id": "api", "client_secret": "introspection-secret"},
        }},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    let mut p = Proxy::builder(&host)
        .start_time(SystemTime::now())
        .plugin(Plugin::new(host.load(wasm_path("meshwasm_jwt_auth")).unwrap()).name("jwt").config(cfg.to_string().as_bytes()))
        .upstream(
            "idp",
            Upstream::handler(move |call| match call.headers.get(":path") {
                Some("/jwks") => json_reply(keys.clone(), 80),
                _ => json_reply(
                    json!({"active": true, "iss": "https://idp.test", "aud": "api", "sub": "svc", "exp": now() + 600})
                        .to_string(),
                    40,
                ),
            }),
        )
        .build()
        .unwrap();
    // Defined at configure time, before any call or request: counters show 0 before their first event.
    for c in ["allowed", "passed", "jwks_fetch_failures", "introspection_failures"] {
        assert_eq!(p.metric(&format!("meshwasm_jwt_auth.{c}")), Some(0), "{c}");
    }
    assert_eq!(p.histogram("meshwasm_jwt_auth.jwks_fetch_latency_ms"), Some(vec![]));
    assert_eq!(p.histogram("meshwasm_jwt_auth.introspection_latency_ms"), Some(vec![]));

    let token =
        signer.mint(&json!({"iss": "https://idp.test", "aud": "api", "sub": "a", "exp": now() + 600}));
    let id = p.start(0, Request::get("/x").header("authorization", format!("Bearer {token}"))).unwrap();
    p.advance(Duration::from_secs(1));
    assert!(matches!(p.stream_state(id), Some(StreamState::WaitingUpstream)), "{:?}", p.stream_state(id));
    assert_eq!(p.finish(id, UpstreamReply::new(200)).unwrap().status, 200);
    assert_eq!(p.histogram("meshwasm_jwt_auth.jwks_fetch_latency_ms"), Some(vec![80]));

    let id = p.start(0, Request::get("/x").header("authorization", "Bearer opaque-token-1")).unwrap();
    p.advance(Duration::from_millis(100));
    assert_eq!(p.finish(id, UpstreamReply::new(200)).unwrap().status, 200);
    assert_eq!(p.histogram("meshwasm_jwt_auth.introspection_latency_ms"), Some(vec![40]));
    assert_eq!(p.metric("meshwasm_jwt_auth.introspections"), Some(1));
}

/// Without introspection (or remote keys) the histogram is not defined: nothing shows that cannot count.
#[test]
fn jwt_auth_defines_only_the_histograms_its_configuration_uses() {
    let host = host();
    let signer = Signer::rsa("rsa1.pem", "r1");
    let cfg = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["api"],
                              "local_jwks": {"keys": [signer.jwk()]}}},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    let p = Proxy::builder(&host)
        .plugin(
            Plugin::new(host.load(wasm_path("meshwasm_jwt_auth")).unwrap())
                .name("jwt")
                .config(cfg.to_string().as_bytes()),
        )
        .build()
        .unwrap();
    assert_eq!(p.histogram("meshwasm_jwt_auth.jwks_fetch_latency_ms"), None);
    assert_eq!(p.histogram("meshwasm_jwt_auth.introspection_latency_ms"), None);
}

#[test]
fn token_injector_records_refreshes_and_fetch_latency() {
    let host = host();
    let cfg = json!({
        "token_endpoint": {"cluster": "idp", "path": "/oauth2/token", "authority": "idp.test"},
        "client_id": "orders", "client_secret": "token-secret",
    });
    let mut p = Proxy::builder(&host)
        .start_time(SystemTime::now())
        .plugin(
            Plugin::new(host.load(wasm_path("meshwasm_token_injector")).unwrap())
                .name("token")
                .config(cfg.to_string().as_bytes()),
        )
        .upstream(
            "idp",
            Upstream::handler(|_| {
                json_reply(
                    json!({"access_token": "t", "token_type": "Bearer", "expires_in": 60}).to_string(),
                    60,
                )
            }),
        )
        .build()
        .unwrap();
    assert_eq!(p.metric("meshwasm_token_injector.refreshes"), Some(0));
    let id = p.start(0, Request::get("/")).unwrap();
    p.advance(Duration::from_millis(200));
    assert_eq!(p.finish(id, UpstreamReply::new(200)).unwrap().status, 200);
    assert_eq!(p.histogram("meshwasm_token_injector.fetch_latency_ms"), Some(vec![60]));
    assert_eq!(p.metric("meshwasm_token_injector.refreshes"), Some(1));
    // The token lives 60 s: it is refreshed in the background at half its lifetime (the default
    // `refresh.before_expiry` of 60 s, never before half), without a request waiting.
    p.advance(Duration::from_secs(55));
    assert_eq!(p.metric("meshwasm_token_injector.refreshes"), Some(2));
    assert_eq!(p.histogram("meshwasm_token_injector.fetch_latency_ms"), Some(vec![60, 60]));
}

#[test]
fn discovery_and_balancer_gauge_the_endpoint_set_sizes() {
    let host = host();
    let discovery = json!({"services": [{"name": "api", "allow_loopback": true, "source": {"static": {"endpoints": [
        {"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}]}}}]});
    let balancer = json!({"service_from": [{"fixed": "api"}], "services": {
        "api": {},
        "web": {"endpoints": ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]},
    }});
    let mut p = Proxy::builder(&host)
        .workers(2)
        .plugin(
            Plugin::new(host.load(wasm_path("meshwasm_discovery")).unwrap())
                .name("discovery")
                .vm_id("mesh")
                .config(discovery.to_string().as_bytes()),
        )
        .plugin(
            Plugin::new(host.load(wasm_path("meshwasm_balancer")).unwrap())
                .name("balancer")
                .vm_id("mesh")
                .config(balancer.to_string().as_bytes()),
        )
        .build()
        .unwrap();
    // A static set is gauged at configure time.
    assert_eq!(p.metric("meshwasm_balancer.web.endpoints"), Some(3));
    p.advance(Duration::from_secs(2));
    assert_eq!(p.metric("meshwasm_discovery.api.endpoints"), Some(2));
    assert_eq!(p.metric("meshwasm_balancer.api.endpoints"), Some(2));
}
