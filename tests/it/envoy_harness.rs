//! Smoke test of the Envoy harness: Envoy starts from a generated bootstrap, proxies to real backends,
//! routes by header to an ORIGINAL_DST cluster, and its admin stats are readable.

use std::time::Duration;

use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, ENDPOINT_HEADER, EnvoyConfig, Listener, Route};
use meshwasm_tests::process::{http_get, http_request};

#[test]
fn envoy_proxies_to_backends_and_reports_stats() {
    let a = Backend::start("a").unwrap();
    let b = Backend::start("b").unwrap();
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::new("main", "ab")
                .route_first(Route::to_cluster("/dst", "dst"))
                .route_first(Route::direct("/direct", 418, "teapot")),
        )
        .cluster(Cluster::static_hosts("ab", &[a.addr(), b.addr()]))
        .cluster(Cluster::original_dst_header("dst", ENDPOINT_HEADER))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("main");

    // Round robin over two instances: both serve, and the echo shows what went upstream.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = http_get(addr, "/hello?x=1").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.header("x-backend-instance").unwrap().to_owned());
        let echo = r.json().unwrap();
        assert_eq!(echo["path"], "/hello?x=1");
        assert_eq!(echo["method"], "GET");
    }
    assert_eq!(seen.len(), 2, "round robin should reach both backends: {seen:?}");
    assert_eq!(a.request_count() + b.request_count(), 4);

    // Direct response route.
    let r = http_get(addr, "/direct").unwrap();
    assert_eq!((r.status, r.text().as_str()), (418, "teapot"));

    // ORIGINAL_DST by header reaches exactly the named backend.
    let target = b.addr().to_string();
    let r = http_request(addr, "GET", "/dst", &[(ENDPOINT_HEADER, &target)], b"", Duration::from_secs(10))
        .unwrap();
    assert_eq!(r.header("x-backend-instance"), Some("b"));

    // Admin stats count the upstream requests.
    let stats = envoy.stats().unwrap();
    assert_eq!(
        stats.get("cluster.ab.upstream_rq_total"),
        Some(&4),
        "stats: {:?}",
        stats.get("cluster.ab.upstream_rq_total")
    );
    assert_eq!(stats.get("cluster.dst.upstream_rq_total"), Some(&1));
    assert!(envoy.logs().contains("starting main dispatch loop"));
}

#[test]
fn backend_stop_and_restart_on_same_port() {
    let a = Backend::start("a").unwrap();
    let envoy = EnvoyConfig::new()
        .listener(Listener::new("main", "a"))
        .cluster(Cluster::static_hosts("a", &[a.addr()]))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("main");
    assert_eq!(http_get(addr, "/").unwrap().status, 200);
    a.stop();
    assert_eq!(http_get(addr, "/").unwrap().status, 503, "backend down gives 503");
    a.restart().unwrap();
    assert!(meshwasm_tests::process::wait_until(Duration::from_secs(10), || {
        http_get(addr, "/").map(|r| r.status == 200).unwrap_or(false)
    }));
    assert_eq!(http_get(a.addr(), "/").unwrap().header("x-backend-instance"), Some("a"));
}

#[test]
fn envoy_loads_the_probe_filter() {
    use meshwasm_tests::artifacts::wasm_path;
    use meshwasm_tests::envoy::WasmFilter;
    let a = Backend::start("a").unwrap();
    let script = r#"{"name":"smoke","trace_response_header":true,
        "request_headers":{"ops":[{"op":"add_header","map":"request_headers","key":"X-Probe","value":"1"}]}}"#;
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::new("main", "a")
                .wasm(WasmFilter::new("smoke", wasm_path("meshwasm_probe")).config(script)),
        )
        .cluster(Cluster::static_hosts("a", &[a.addr()]))
        .start()
        .unwrap();
    let r = http_get(envoy.listener_addr("main"), "/").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-probe-trace-smoke").is_some(), "probe trace header missing: {:?}", r.headers);
    assert_eq!(a.last_request().unwrap().header("x-probe"), Some("1"));
    assert!(
        envoy.wait_for_log("meshwasm-probe-stream ", Duration::from_secs(5)),
        "no stream trace in the log"
    );
}

#[test]
fn raw_yaml_filter_and_cluster_and_http2_cluster_are_accepted() {
    use meshwasm_tests::envoy::HttpFilter;
    let a = Backend::start("a").unwrap();
    let raw_cluster = format!(
        "name: raw\ntype: STRICT_DNS\ndns_lookup_family: V4_ONLY\nconnect_timeout: 1s\nload_assignment:\n  cluster_name: raw\n  endpoints:\n  \
         - lb_endpoints:\n    - endpoint:\n        address:\n          socket_address: {{ address: localhost, port_value: {} }}\n",
        a.port()
    );
    // A native filter given as YAML: requests over 4 bytes are rejected with 413 by the buffer filter.
    let buffer = "name: envoy.filters.http.buffer\ntyped_config:\n  \
                  \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer\n  max_request_bytes: 4\n";
    let envoy = EnvoyConfig::new()
        .listener(Listener::new("main", "raw").filter(HttpFilter::Raw(buffer.to_owned())))
        .cluster(Cluster::raw("raw", &raw_cluster))
        .cluster(Cluster::static_hosts("h2", &[a.addr()]).http2(true))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("main");
    let ok = http_request(addr, "POST", "/", &[], b"abc", Duration::from_secs(10)).unwrap();
    assert_eq!(ok.header("x-backend-instance"), Some("a"), "{}", ok.text());
    let too_big = http_request(addr, "POST", "/", &[], b"abcdefgh", Duration::from_secs(10)).unwrap();
    assert_eq!(too_big.status, 413);
    let clusters = envoy.admin_get("/clusters").unwrap().text();
    assert!(clusters.contains("h2::") && clusters.contains("raw::"), "{clusters}");
}
