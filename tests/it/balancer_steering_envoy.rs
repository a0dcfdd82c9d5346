//! The balancer steers Envoy's ORIGINAL_DST cluster through filter state, so a client's
//! `x-meshwasm-endpoint` header steers nothing — not even when the balancer is not in the path (a
//! route or listener without it, or its VM failed open). Route rules see the normalized path.

use std::time::Duration;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, ENDPOINT_HEADER, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::process::{HttpResponse, http_request};

fn balancer(config: &str) -> WasmFilter {
    WasmFilter::new("balancer", wasm_path("meshwasm_balancer")).vm_id("mesh").config(config)
}

/// The balancer as one `http_filters` entry (JSON, which is YAML), for a hand-written listener.
fn wasm_filter_json(config: &str) -> String {
    serde_json::json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "balancer",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
                "vm_config": {
                    "vm_id": "mesh",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm_path("meshwasm_balancer").display().to_string()}},
                },
            }
        }
    })
    .to_string()
}

fn fixed(backend: &Backend) -> String {
    format!(r#"{{"services": {{"api": {{"endpoints": ["{}"]}}}}}}"#, backend.addr())
}

fn get(envoy: &Envoy, listener: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(envoy.listener_addr(listener), "GET", path, headers, b"", Duration::from_secs(10)).unwrap()
}

/// Requests on `listener` that name the intruder in the client's steering header; none may reach it.
fn assert_header_does_not_steer(envoy: &Envoy, listener: &str, intruder: &Backend) {
    let target = intruder.addr().to_string();
    for _ in 0..5 {
        let r = get(envoy, listener, "/", &[(ENDPOINT_HEADER, &target)]);
        assert_ne!(r.header(INSTANCE_HEADER), Some("intruder"), "{listener}: {} {}", r.status, r.text());
        // Unsteered, the ORIGINAL_DST cluster has no address: Envoy's own 503.
        assert_eq!((r.status, r.text().as_str()), (503, "no healthy upstream"), "{listener}");
    }
    assert_eq!(intruder.request_count(), 0, "{listener}: the client's header steered Envoy");
}

#[test]
fn filter_state_steers_to_the_pick_without_any_header() {
    let api = Backend::start("api").unwrap();
    let intruder = Backend::start("intruder").unwrap();
    let envoy = EnvoyConfig::new()
        .listener(Listener::new("main", "picked").wasm(balancer(&fixed(&api))))
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap();
    let r = get(&envoy, "main", "/", &[(ENDPOINT_HEADER, &intruder.addr().to_string())]);
    assert_eq!((r.status, r.header(INSTANCE_HEADER)), (200, Some("api")), "{}", r.text());
    assert_eq!(intruder.request_count(), 0);
    // Nothing about the pick travels in the request.
    for req in api.requests() {
        assert!(req.header_all(ENDPOINT_HEADER).is_empty(), "{:?}", req.header_all(ENDPOINT_HEADER));
    }
}

#[test]
fn a_listener_without_the_balancer_cannot_be_steered_by_the_client() {
    let api = Backend::start("api").unwrap();
    let intruder = Backend::start("intruder").unwrap();
    let envoy = EnvoyConfig::new()
        .listener(Listener::new("main", "picked").wasm(balancer(&fixed(&api))))
        // Same cluster, no balancer in the path (a route or listener someone forgot to cover).
        .listener(Listener::new("bypass", "picked"))
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap();
    assert_header_does_not_steer(&envoy, "bypass", &intruder);
    assert_eq!(get(&envoy, "main", "/", &[]).header(INSTANCE_HEADER), Some("api"));
}

#[test]
fn a_route_that_disables_the_balancer_cannot_be_steered_by_the_client() {
    let api = Backend::start("api").unwrap();
    let intruder = Backend::start("intruder").unwrap();
    let envoy = EnvoyConfig::new()
        .raw_listener(&format!(
            r#"
name: main
address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: main
      route_config:
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: {{prefix: /skip}}
            route: {{cluster: picked}}
            typed_per_filter_config:
              envoy.filters.http.wasm:
                "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                disabled: true
          - match: {{prefix: /}}
            route: {{cluster: picked}}
      http_filters:
      - {wasm}
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#,
            wasm = wasm_filter_json(&fixed(&api))
        ))
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap();
    let target = intruder.addr().to_string();
    for _ in 0..5 {
        let r = get(&envoy, "main", "/skip", &[(ENDPOINT_HEADER, &target)]);
        assert_ne!(r.header(INSTANCE_HEADER), Some("intruder"), "{} {}", r.status, r.text());
        assert_eq!((r.status, r.text().as_str()), (503, "no healthy upstream"));
    }
    assert_eq!(intruder.request_count(), 0, "the client's header steered Envoy");
    assert_eq!(get(&envoy, "main", "/", &[]).header(INSTANCE_HEADER), Some("api"));
}

/// A stand-in for a balancer VM that failed: a proxy-wasm module whose request callback traps.
/// (Envoy 1.40 refuses to start when a plugin fails `on_configure`, even with `fail_open`, so a VM
/// can only fail open at run time.) Assembled from:
///
/// ```wat
/// (module
///   (memory (export "memory") 1)
///   (func (export "proxy_abi_version_0_2_1"))
///   (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
///   (func (export "proxy_on_context_create") (param i32 i32))
///   (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
///   (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
///   (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (unreachable)))
/// ```
#[rustfmt::skip]
const TRAPPING_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x1b, 0x05, 0x60, 0x02, 0x7f, 0x7f, 0x01,
    0x7f, 0x60, 0x00, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f, 0x60, 0x02, 0x7f, 0x7f, 0x00, 0x60, 0x03,
    0x7f, 0x7f, 0x7f, 0x01, 0x7f, 0x03, 0x07, 0x06, 0x01, 0x02, 0x03, 0x00, 0x00, 0x04, 0x05, 0x03,
    0x01, 0x00, 0x01, 0x07, 0x9d, 0x01, 0x07, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00,
    0x17, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x5f, 0x61, 0x62, 0x69, 0x5f, 0x76, 0x65, 0x72, 0x73, 0x69,
    0x6f, 0x6e, 0x5f, 0x30, 0x5f, 0x32, 0x5f, 0x31, 0x00, 0x00, 0x18, 0x70, 0x72, 0x6f, 0x78, 0x79,
    0x5f, 0x6f, 0x6e, 0x5f, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x5f, 0x61, 0x6c, 0x6c, 0x6f, 0x63,
    0x61, 0x74, 0x65, 0x00, 0x01, 0x17, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x5f, 0x6f, 0x6e, 0x5f, 0x63,
    0x6f, 0x6e, 0x74, 0x65, 0x78, 0x74, 0x5f, 0x63, 0x72, 0x65, 0x61, 0x74, 0x65, 0x00, 0x02, 0x11,
    0x70, 0x72, 0x6f, 0x78, 0x79, 0x5f, 0x6f, 0x6e, 0x5f, 0x76, 0x6d, 0x5f, 0x73, 0x74, 0x61, 0x72,
    0x74, 0x00, 0x03, 0x12, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x5f, 0x6f, 0x6e, 0x5f, 0x63, 0x6f, 0x6e,
    0x66, 0x69, 0x67, 0x75, 0x72, 0x65, 0x00, 0x04, 0x18, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x5f, 0x6f,
    0x6e, 0x5f, 0x72, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x5f, 0x68, 0x65, 0x61, 0x64, 0x65, 0x72,
    0x73, 0x00, 0x05, 0x0a, 0x1d, 0x06, 0x03, 0x00, 0x01, 0x0b, 0x05, 0x00, 0x41, 0x80, 0x08, 0x0b,
    0x03, 0x00, 0x01, 0x0b, 0x04, 0x00, 0x41, 0x01, 0x0b, 0x04, 0x00, 0x41, 0x01, 0x0b, 0x03, 0x00,
    0x00, 0x0b,
];

#[test]
fn a_failed_open_balancer_vm_cannot_be_steered_by_the_client() {
    let intruder = Backend::start("intruder").unwrap();
    let dir = std::env::temp_dir().join(format!("meshwasm-trap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("trap.wasm");
    std::fs::write(&module, TRAPPING_MODULE).unwrap();
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::new("main", "picked")
                .wasm(WasmFilter::new("balancer", &module).vm_id("mesh").fail_open(true)),
        )
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap();
    assert_header_does_not_steer(&envoy, "main", &intruder);
    assert!(envoy.logs().contains("unreachable"), "the VM trapped (the filter failed open)");
}

/// What the opt-in header steering risks: the same bypass with a header-reading cluster is steered.
/// (This is the configuration the filter-state default replaces.)
#[test]
fn with_opt_in_header_steering_a_bypass_is_steered() {
    let intruder = Backend::start("intruder").unwrap();
    let envoy = EnvoyConfig::new()
        .listener(Listener::new("bypass", "picked"))
        .cluster(Cluster::original_dst_header("picked", ENDPOINT_HEADER))
        .start()
        .unwrap();
    let r = get(&envoy, "bypass", "/", &[(ENDPOINT_HEADER, &intruder.addr().to_string())]);
    assert_eq!(r.header(INSTANCE_HEADER), Some("intruder"));
}

#[test]
fn route_rules_see_the_normalized_path_even_when_envoy_passes_it_raw() {
    let api = Backend::start("api").unwrap();
    let web = Backend::start("web").unwrap();
    let config = format!(
        r#"{{"service_from": [{{"route": {{"prefix": "/api/", "service": "api"}}}}, {{"fixed": "web"}}],
            "services": {{"api": {{"endpoints": ["{}"]}}, "web": {{"endpoints": ["{}"]}}}}}}"#,
        api.addr(),
        web.addr()
    );
    let envoy = EnvoyConfig::new()
        .listener(Listener::new("raw", "picked").raw_paths().wasm(balancer(&config)))
        .listener(Listener::new("normalizing", "picked").wasm(balancer(&config)))
        .cluster(Cluster::original_dst("picked"))
        .start()
        .unwrap();
    for listener in ["raw", "normalizing"] {
        for path in ["/api/x", "/%61pi/x", "//api/x", "/x/../api/x"] {
            let r = get(&envoy, listener, path, &[]);
            assert_eq!((r.status, r.header(INSTANCE_HEADER)), (200, Some("api")), "{listener} {path}");
        }
        assert_eq!(get(&envoy, listener, "/web/x", &[]).header(INSTANCE_HEADER), Some("web"));
        // An encoded slash: Envoy (normalizing) or the filter (raw) answers 400; nothing is forwarded.
        let before = api.request_count() + web.request_count();
        let r = get(&envoy, listener, "/api%2Fx", &[]);
        assert_eq!(r.status, 400, "{listener}: {}", r.text());
        assert_eq!(api.request_count() + web.request_count(), before, "{listener}");
    }
}
