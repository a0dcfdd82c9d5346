//! The discovery filter's real `.wasm` in real Envoy (several workers): real etcd, real unbound over
//! an h2c cluster, and the Consul fake. The published sets are read back through the filter's debug
//! endpoint (served from shared data by whichever worker takes the request) and Envoy's admin stats.

use std::time::Duration;

use meshwasm_tests::artifacts;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::fakes::consul::{Consul, ConsulInstance};
use meshwasm_tests::process::{HttpResponse, http_get, http_request, wait_until};
use meshwasm_tests::unbound::Unbound;
use serde_json::Value;

const DEBUG: &str = "/meshwasm/discovery";

fn sets(envoy: &Envoy) -> Value {
    http_get(envoy.listener_addr("main"), DEBUG).ok().and_then(|r| r.json().ok()).unwrap_or(Value::Null)
}

fn addrs(sets: &Value, service: &str) -> Vec<String> {
    sets[service]["e"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["a"].as_str().map(str::to_owned))
        .collect()
}

/// A stat whose name ends with `suffix` (Envoy prefixes custom wasm metrics).
fn stat(envoy: &Envoy, suffix: &str) -> Option<u64> {
    envoy.stats().ok()?.into_iter().find(|(k, _)| k.ends_with(suffix)).map(|(_, v)| v)
}

#[test]
fn discovery_in_envoy_with_etcd_consul_and_doh() {
    let etcd = Etcd::start().unwrap();
    etcd.put("/services/api/a", r#"{"address":"127.0.0.1:18081","weight":2}"#).unwrap();
    etcd.put("/services/api/b", "127.0.0.1:18082").unwrap();
    let consul = Consul::start().unwrap();
    consul.set_instances("redis", vec![ConsulInstance::new("n1", "127.0.0.2:6379".parse().unwrap())]);
    let dns = Unbound::start(
        "svc.test.",
        &[
            "_http._tcp.search.svc.test. 30 IN SRV 10 5 8080 node1.svc.test.",
            "node1.svc.test. 30 IN A 127.0.0.11",
        ],
    )
    .unwrap();
    let backend = Backend::start("passthrough").unwrap();
    let config = format!(
        r#"{{"tick":"100ms","lease":{{"ttl":"3s"}},"debug_path":"{DEBUG}","services":[
        {{"name":"api","refresh":"500ms","timeout":"1s","allow_loopback":true,"source":{{"etcd":{{"cluster":"etcd","prefix":"/services/api/"}}}}}},
        {{"name":"redis","timeout":"2s","allow_loopback":true,"source":{{"consul":{{"cluster":"consul","wait":"2s"}}}}}},
        {{"name":"search","allow_loopback":true,"source":{{"dns":{{"cluster":"doh","name":"_http._tcp.search.svc.test","type":"SRV"}}}}}}]}}"#
    );
    let envoy = EnvoyConfig::new()
        .concurrency(3)
        .listener(
            Listener::new("main", "backend").wasm(
                WasmFilter::new("discovery", artifacts::wasm_path("meshwasm_discovery"))
                    .vm_id("mesh")
                    .config(config),
            ),
        )
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .cluster(Cluster::static_hosts("etcd", &[etcd.addr()]))
        .cluster(Cluster::static_hosts("consul", &[consul.addr()]))
        .cluster(Cluster::static_hosts("doh", &[dns.addr()]).http2(true))
        .start()
        .unwrap();

    // All three sources published, visible to every worker through shared data.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let s = sets(&envoy);
            addrs(&s, "api").len() == 2 && addrs(&s, "redis").len() == 1 && addrs(&s, "search").len() == 1
        }),
        "published: {}",
        sets(&envoy)
    );
    let s = sets(&envoy);
    assert_eq!(addrs(&s, "api"), ["127.0.0.1:18081", "127.0.0.1:18082"]);
    assert_eq!(s["api"]["e"][0]["w"], 2);
    assert_eq!(addrs(&s, "redis"), ["127.0.0.2:6379"]);
    assert_eq!(addrs(&s, "search"), ["127.0.0.11:8080"]);
    assert_eq!(s["search"]["e"][0]["w"], 5);
    // Other requests pass through the filter untouched.
    let r = http_get(envoy.listener_addr("main"), "/hello").unwrap();
    assert_eq!(r.header("x-backend-instance"), Some("passthrough"));

    // One poller per proxy: exactly one VM was elected (3 workers + the main thread run the filter).
    assert_eq!(envoy.logs().matches("is now the poller").count(), 1, "{}", envoy.logs());
    let configured = envoy.logs().matches("configured with 3 services").count();
    assert!(configured >= 3, "every worker VM configured: {configured}");

    // Changes in etcd and Consul are followed.
    etcd.put("/services/api/c", "127.0.0.1:18083").unwrap();
    consul.set_instances(
        "redis",
        vec![
            ConsulInstance::new("n1", "127.0.0.2:6379".parse().unwrap()),
            ConsulInstance::new("n2", "127.0.0.3:6379".parse().unwrap()),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = sets(&envoy);
            addrs(&s, "api").len() == 3 && addrs(&s, "redis").len() == 2
        }),
        "published: {}",
        sets(&envoy)
    );
    assert_eq!(sets(&envoy)["api"]["v"], 2);
    assert!(
        wait_until(Duration::from_secs(5), || stat(&envoy, "meshwasm_discovery.api.endpoints") == Some(3))
    );
    assert!(stat(&envoy, "meshwasm_discovery.redis.updates").unwrap_or(0) >= 2);

    // Consul blocking queries: the poller holds one query at a time, not one per worker.
    let before = consul.requests().len();
    std::thread::sleep(Duration::from_secs(4));
    let during = consul.requests().len() - before;
    assert!(during <= 4, "{during} Consul requests in 4 s with wait=2s: more than one poller?");

    // etcd down: errors are counted, the set stays.
    let errors = stat(&envoy, "meshwasm_discovery.api.errors").unwrap_or(0);
    etcd.stop();
    assert!(wait_until(Duration::from_secs(10), || stat(&envoy, "meshwasm_discovery.api.errors")
        .unwrap_or(0)
        > errors + 1));
    let s = sets(&envoy);
    assert_eq!(addrs(&s, "api").len(), 3, "registry down keeps the last set: {s}");
    assert_eq!(s["api"]["v"], 2);
    assert!(envoy.logs().contains("keeping the last 3 endpoints"));
}

#[test]
fn traffic_follows_etcd_through_the_balancer_and_survives_registry_outage() {
    use meshwasm_tests::backend::INSTANCE_HEADER;
    use std::collections::BTreeSet;

    let backends = Backend::start_many("api", 3).unwrap();
    let etcd = Etcd::start().unwrap();
    for b in &backends[..2] {
        etcd.put(&format!("/services/api/{}", b.addr()), &b.addr().to_string()).unwrap();
    }
    let discovery = format!(
        r#"{{"tick":"100ms","debug_path":"{DEBUG}","services":[{{"name":"api","refresh":"300ms","timeout":"1s",
            "allow_loopback":true,"source":{{"etcd":{{"cluster":"etcd","prefix":"/services/api/"}}}}}}]}}"#
    );
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(
            Listener::new("main", "picked")
                .wasm(
                    WasmFilter::new("discovery", artifacts::wasm_path("meshwasm_discovery"))
                        .vm_id("mesh")
                        .config(discovery),
                )
                .wasm(
                    WasmFilter::new("balancer", artifacts::wasm_path("meshwasm_balancer"))
                        .vm_id("mesh")
                        .config(r#"{"services":{"api":{"algorithm":"round_robin"}}}"#),
                ),
        )
        .cluster(Cluster::original_dst("picked"))
        .cluster(Cluster::static_hosts("etcd", &[etcd.addr()]))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("main");
    let instances = |n: usize| -> BTreeSet<String> {
        (0..n)
            .filter_map(|_| {
                let r = http_request(
                    addr,
                    "GET",
                    "/",
                    &[("x-meshwasm-service", "api")],
                    b"",
                    Duration::from_secs(5),
                )
                .ok()?;
                r.header(INSTANCE_HEADER).map(str::to_owned)
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || instances(6)
            == BTreeSet::from(["api-0".to_owned(), "api-1".to_owned()])),
        "published: {}",
        sets(&envoy)
    );
    // Registering a third instance shifts traffic to it.
    let c = backends[2].addr();
    etcd.put(&format!("/services/api/{c}"), &c.to_string()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || instances(9).len() == 3), "published: {}", sets(&envoy));
    // The balancer VMs subscribed and the new set was announced on their shared queues.
    let logs = envoy.logs();
    let line =
        logs.lines().find(|l| l.contains("published 3 endpoints, version 2,")).expect("publish log line");
    assert!(!line.contains(" 0 subscribers"), "{line}");
    // etcd down: traffic keeps flowing to all three.
    etcd.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(instances(9).len(), 3);
    assert!(wait_until(Duration::from_secs(10), || stat(&envoy, "meshwasm_discovery.api.errors")
        .unwrap_or(0)
        >= 1));
    assert_eq!(instances(9).len(), 3);
}

const STATIC_API: &str =
    r#""services":[{"name":"api","source":{"static":{"endpoints":[{"address":"10.0.0.1:80"}]}}}]"#;

fn discovery_filter(vm: &str, config: String) -> WasmFilter {
    WasmFilter::new("discovery", artifacts::wasm_path("meshwasm_discovery")).vm_id(vm).config(config)
}

fn debug_request(envoy: &Envoy, listener: &str, method: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(envoy.listener_addr(listener), method, DEBUG, headers, b"", Duration::from_secs(5)).unwrap()
}

fn from_backend(r: &HttpResponse) -> bool {
    r.header(meshwasm_tests::backend::INSTANCE_HEADER) == Some("passthrough")
}

/// Waits until `listener`'s debug endpoint answers a loopback GET with the published `api` set.
fn wait_for_debug_answer(envoy: &Envoy, listener: &str, headers: &[(&str, &str)]) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = debug_request(envoy, listener, "GET", headers);
            r.status == 200 && r.json().is_ok_and(|v: Value| !addrs(&v, "api").is_empty())
        }),
        "debug endpoint never answered"
    );
}

#[test]
fn debug_endpoint_in_envoy_is_off_by_default_and_answers_loopback_clients_only() {
    let backend = Backend::start("passthrough").unwrap();
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(
            Listener::new("off", "backend")
                .wasm(discovery_filter("off", format!(r#"{{"tick":"100ms",{STATIC_API}}}"#))),
        )
        .listener(Listener::new("on", "backend").wasm(discovery_filter(
            "on",
            format!(r#"{{"tick":"100ms","debug_path":"{DEBUG}",{STATIC_API}}}"#),
        )))
        .raw_listener(&edge_listener(&format!(
            r#"{{"tick":"100ms","lease":{{"name":"edge"}},"debug_path":"{DEBUG}",{STATIC_API}}}"#
        )))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap();

    // On: a loopback client gets the sets (once the static list is published).
    wait_for_debug_answer(&envoy, "on", &[]);

    // Envoy's trusted client address comes from X-Forwarded-For here (use_remote_address is off in
    // the test listeners), so this request has a non-loopback source.address: it passes through.
    let remote = [("x-forwarded-for", "192.0.2.7")];
    let r = debug_request(&envoy, "on", "GET", &remote);
    assert!(from_backend(&r), "a non-loopback client reached the debug endpoint: {}", r.status);
    let r = debug_request(&envoy, "on", "POST", &remote);
    assert!(from_backend(&r), "a non-loopback POST is a normal request: {}", r.status);

    let r = debug_request(&envoy, "on", "GET", &[]);
    assert!(!from_backend(&r));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Other methods: 405 with Allow.
    let r = debug_request(&envoy, "on", "POST", &[]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    assert!(!from_backend(&r));

    // With `use_remote_address: true` (as in examples/discovery/envoy.yaml) source.address is the
    // connection's peer whatever X-Forwarded-For says: here the loopback client still gets its answer
    // (and a remote client could not claim loopback through the header).
    let r = debug_request(&envoy, "edge", "GET", &remote);
    assert_eq!(r.status, 200);
    assert!(!from_backend(&r));

    // Off by default: the same requests are normal requests.
    for method in ["GET", "POST"] {
        let r = debug_request(&envoy, "off", method, &[]);
        assert!(from_backend(&r), "{method}: {}", r.status);
    }
}

#[test]
fn debug_header_in_envoy_opens_the_endpoint_to_remote_clients() {
    const KEY: &str = "0123456789abcdef-envoy";
    let backend = Backend::start("passthrough").unwrap();
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(Listener::new("keyed", "backend").wasm(discovery_filter(
            "keyed",
            format!(
                r#"{{"tick":"100ms","debug_path":"{DEBUG}","debug_header":{{"name":"x-debug-key","value":"{KEY}"}},{STATIC_API}}}"#
            ),
        )))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap();
    wait_for_debug_answer(&envoy, "keyed", &[]);
    let remote = ("x-forwarded-for", "192.0.2.7");
    let r = debug_request(&envoy, "keyed", "GET", &[remote]);
    assert!(from_backend(&r), "no key: passes");
    let r = debug_request(&envoy, "keyed", "GET", &[remote, ("x-debug-key", "0123456789abcdef-envoX")]);
    assert!(from_backend(&r), "a wrong key opens nothing");
    let r = debug_request(&envoy, "keyed", "GET", &[remote, ("x-debug-key", KEY)]);
    assert_eq!(r.status, 200);
    assert!(!from_backend(&r));
    assert!(!addrs(&r.json().unwrap(), "api").is_empty());
    let r = debug_request(&envoy, "keyed", "DELETE", &[remote, ("x-debug-key", KEY)]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
}

/// A listener like examples/discovery/envoy.yaml's: `use_remote_address: true`, discovery with `config`
/// (VM `on`, so it shares the published sets with the `on` listener), then the backend.
fn edge_listener(config: &str) -> String {
    let wasm = serde_json::json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "discovery",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
                "vm_config": {
                    "vm_id": "on",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": artifacts::wasm_path("meshwasm_discovery")}}
                }
            }
        }
    });
    format!(
        r#"
name: edge
address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: edge
      use_remote_address: true
      normalize_path: true
      merge_slashes: true
      path_with_escaped_slashes_action: REJECT_REQUEST
      route_config:
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: {{prefix: /}}
            route: {{cluster: backend}}
      http_filters:
      - {wasm}
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}
