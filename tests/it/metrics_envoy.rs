//! Every filter's metrics as real Envoy exports them on `/stats/prometheus` (docs/METRICS.md lists
//! them from this run): the histograms (jwt-auth's JWKS-fetch and introspection latency,
//! token-injector's token-fetch latency) carry plausible values against the real OpenID Provider with
//! scripted delays, and the endpoint-set gauges of discovery and the balancer count the endpoints.
//! With `--nocapture` the scrape is printed.

use std::time::{Duration, Instant};

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::oidc::{
    BASIC_CLIENT, INTROSPECTION_CLIENT, OPAQUE_RESOURCE, OidcOptions, OidcProvider, RS256_RESOURCE,
};
use meshwasm_tests::process::{HttpResponse, http_request};
use serde_json::json;

const TOKEN_DELAY_MS: u64 = 150;
const INTROSPECTION_DELAY_MS: u64 = 120;

fn get(envoy: &Envoy, listener: &str, path: &str, token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("host", "api.internal")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    http_request(envoy.listener_addr(listener), "GET", path, &headers, b"", Duration::from_secs(10)).unwrap()
}

/// The samples of one metric in Prometheus text format: (labels, value) per line.
fn samples(text: &str, metric: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}').to_string()),
                None => (name_labels, String::new()),
            };
            (name == metric).then(|| (labels, value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

fn value(text: &str, metric: &str) -> Option<f64> {
    samples(text, metric).first().map(|s| s.1)
}

#[test]
fn every_filter_reports_its_metrics_to_prometheus() {
    let idp = OidcProvider::start(OidcOptions::default()).unwrap();
    let api = Backend::start("api").unwrap();
    let b1 = Backend::start("b1").unwrap();
    let b2 = Backend::start("b2").unwrap();
    let authority = idp.addr().to_string();
    let jwt = json!({
        "providers": {"idp": {
            "issuer": idp.issuer(),
            "audiences": [RS256_RESOURCE, OPAQUE_RESOURCE],
            "remote_jwks": {"cluster": "idp"},
            "introspection": {"cluster": "idp", "path": "/token/introspection", "authority": authority,
                              "client_id": INTROSPECTION_CLIENT.id, "client_secret": INTROSPECTION_CLIENT.secret},
        }},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    let authz = json!({"policies": [
        {"name": "no-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    ]});
    let injector = json!({
        "token_endpoint": {"cluster": "idp", "path": "/token", "authority": authority, "timeout": "3s"},
        "client_id": BASIC_CLIENT.id, "client_secret": BASIC_CLIENT.secret,
        "scopes": ["read"], "resource": RS256_RESOURCE,
    });
    let discovery = json!({"tick": "100ms", "services": [{"name": "api", "allow_loopback": true,
        "source": {"static": {"endpoints": [{"address": b1.addr().to_string()}, {"address": b2.addr().to_string()}]}}}]});
    let balancer =
        json!({"service_from": [{"fixed": "api"}], "refresh_interval": "200ms", "services": {"api": {}}});
    let envoy = EnvoyConfig::new()
        .concurrency(1)
        .listener(
            Listener::new("inbound", "api")
                .wasm(WasmFilter::new("jwt-auth", wasm_path("meshwasm_jwt_auth")).config(jwt.to_string()))
                .wasm(WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(authz.to_string())),
        )
        .listener(
            Listener::new("outbound", "picked")
                .wasm(
                    WasmFilter::new("token-injector", wasm_path("meshwasm_token_injector"))
                        .config(injector.to_string()),
                )
                .wasm(
                    WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                        .vm_id("meshwasm")
                        .config(discovery.to_string()),
                )
                .wasm(
                    WasmFilter::new("balancer", wasm_path("meshwasm_balancer"))
                        .vm_id("meshwasm")
                        .config(balancer.to_string()),
                ),
        )
        .cluster(Cluster::static_hosts("api", &[api.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap();

    // Outbound: one token fetch that the IdP answers after TOKEN_DELAY_MS, then two picks.
    idp.delay_token_requests(Duration::from_millis(TOKEN_DELAY_MS)).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // discovery publishes, the balancer reads it
    for _ in 0..2 {
        let r = get(&envoy, "outbound", "/", None);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    idp.delay_token_requests(Duration::ZERO).unwrap();

    // Inbound: a JWT (keys from OIDC discovery + JWKS), an opaque token introspected after
    // INTROSPECTION_DELAY_MS, and a request authz denies.
    let jwt_token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE)).unwrap();
    assert_eq!(get(&envoy, "inbound", "/x", Some(&jwt_token)).status, 200);
    idp.delay_introspection_requests(Duration::from_millis(INTROSPECTION_DELAY_MS)).unwrap();
    let opaque = idp.client_credentials(&BASIC_CLIENT, "read", Some(OPAQUE_RESOURCE)).unwrap();
    assert_eq!(get(&envoy, "inbound", "/x", Some(&opaque)).status, 200);
    idp.delay_introspection_requests(Duration::ZERO).unwrap();
    assert_eq!(get(&envoy, "inbound", "/admin", Some(&jwt_token)).status, 403);
    assert_eq!(get(&envoy, "inbound", "/x", None).status, 401);

    // Histograms reach the admin endpoint at Envoy's stats flush (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = envoy.admin_get("/stats/prometheus").unwrap().text().to_string();
        let done =
            ["jwks_fetch_latency_ms", "introspection_latency_ms", "fetch_latency_ms"].iter().all(|h| {
                text.lines().any(|l| l.contains(h) && l.contains("_count") && !l.trim_end().ends_with(" 0"))
            });
        if done || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("meshwasm")).collect();
    println!("{}", ours.join("\n"));

    // The new histograms, with plausible values.
    let h = |name: &str| {
        let count = value(&text, &format!("{name}_count")).unwrap_or_else(|| panic!("no {name}_count"));
        let sum = value(&text, &format!("{name}_sum")).unwrap_or_else(|| panic!("no {name}_sum"));
        let buckets = samples(&text, &format!("{name}_bucket"));
        assert!(!buckets.is_empty(), "{name}: no buckets");
        (count, sum, buckets)
    };
    let (count, sum, _) = h("meshwasm_jwt_auth_jwks_fetch_latency_ms");
    assert!(count >= 2.0, "OIDC discovery document and JWKS: {count}");
    assert!(sum < 5000.0 * count, "jwks latency sum {sum}");
    let (count, sum, buckets) = h("meshwasm_jwt_auth_introspection_latency_ms");
    assert_eq!(count, 1.0);
    assert!(sum >= INTROSPECTION_DELAY_MS as f64 && sum < 5000.0, "introspection latency {sum}");
    // Cumulative buckets: none below the delay holds the sample.
    for (labels, v) in &buckets {
        let le: f64 =
            labels.trim_start_matches("le=\"").trim_end_matches('"').parse().unwrap_or(f64::INFINITY);
        if le < INTROSPECTION_DELAY_MS as f64 {
            assert_eq!(*v, 0.0, "bucket {labels}");
        }
    }
    let (count, sum, _) = h("meshwasm_token_injector_fetch_latency_ms");
    assert_eq!(count, 1.0, "one token fetch");
    assert!(sum >= TOKEN_DELAY_MS as f64 && sum < 5000.0, "token fetch latency {sum}");
    assert_eq!(value(&text, "meshwasm_token_injector_refreshes"), Some(1.0));
    // The endpoint-set gauges: two endpoints, in discovery and in the balancer.
    assert_eq!(value(&text, "meshwasm_discovery_api_endpoints"), Some(2.0));
    assert_eq!(value(&text, "meshwasm_balancer_api_endpoints"), Some(2.0));
    // Existing counters of every filter are exported too.
    for c in [
        "meshwasm_jwt_auth_allowed",
        "meshwasm_jwt_auth_introspections",
        "meshwasm_authz_denied",
        "meshwasm_token_injector_injected",
        "meshwasm_discovery_api_updates",
        "meshwasm_balancer_api_endpoint_set_updates",
    ] {
        assert!(value(&text, c).is_some_and(|v| v >= 1.0), "{c}: {:?}", value(&text, c));
    }
}
