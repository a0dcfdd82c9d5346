//! Discovery as a singleton Wasm service in real Envoy (`envoy.bootstrap.wasm`, `singleton: true`,
//! `"mode": "service"`), the balancer as the only wasm HTTP filter, same `vm_id`: the one main-thread
//! VM polls real etcd through `dispatch_http_call`, publishes into the vm_id's shared data, and the
//! balancer's worker VMs steer traffic by it. Discovery is never entered for a request.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use meshwasm_tests::artifacts::{self, wasm_path};
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::process::{http_request, wait_until};

const PREFIX: &str = "/services/api/";
const WAIT: Duration = Duration::from_secs(10);

fn register(etcd: &Etcd, b: &Backend) {
    etcd.put(&format!("{PREFIX}{}", b.addr()), &format!(r#"{{"address":"{}"}}"#, b.addr())).unwrap();
}

fn answered_by(envoy: &Envoy, path: &str) -> Option<String> {
    let r = http_request(envoy.listener_addr("main"), "GET", path, &[], b"", Duration::from_secs(5)).ok()?;
    (r.status == 200).then(|| r.header(INSTANCE_HEADER).unwrap_or_default().to_owned())
}

fn instances(envoy: &Envoy, path: &str, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| answered_by(envoy, path)).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The balancer: `/api/...` → `api` (etcd), anything else → `web` (static).
const BALANCER: &str = r#"{"service_from": [{"route": {"prefix": "/api/", "service": "api"}}, {"fixed": "web"}],
    "refresh_interval": "500ms", "services": {"api": {}, "web": {}}}"#;

fn discovery_config(web: &[&Backend], mode: &str) -> String {
    let web: Vec<String> = web.iter().map(|b| format!(r#"{{"address": "{}"}}"#, b.addr())).collect();
    format!(
        r#"{{"mode": "{mode}", "tick": "100ms", "services": [
            {{"name": "api", "refresh": "200ms", "timeout": "1s", "allow_loopback": true,
              "source": {{"etcd": {{"cluster": "etcd", "prefix": "{PREFIX}"}}}}}},
            {{"name": "web", "allow_loopback": true, "source": {{"static": {{"endpoints": [{}]}}}}}}]}}"#,
        web.join(", ")
    )
}

/// VMs Envoy created (`wasm.envoy.wasm.runtime.v8.created`) once traffic flowed.
fn vms_created(envoy: &Envoy) -> u64 {
    envoy.stat("wasm.envoy.wasm.runtime.v8.created").unwrap().unwrap_or(0)
}

#[test]
fn singleton_service_publishes_for_the_balancer_and_is_never_in_the_request_path() {
    let backends = Backend::start_many("s", 5).unwrap();
    let etcd = Etcd::start().unwrap();
    register(&etcd, &backends[0]);
    register(&etcd, &backends[1]);

    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .wasm_service(
            WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                .root_id("")
                .vm_id("meshwasm")
                .config(discovery_config(&[&backends[3], &backends[4]], "service")),
        )
        .listener(Listener::new("main", "picked").wasm(
            WasmFilter::new("balancer", wasm_path("meshwasm_balancer")).vm_id("meshwasm").config(BALANCER),
        ))
        .cluster(Cluster::original_dst("picked"))
        .cluster(Cluster::static_hosts("etcd", &[etcd.addr()]))
        .start()
        .unwrap();

    // The balancer's worker VMs read what the main-thread service published: both services.
    assert!(
        wait_until(WAIT, || instances(&envoy, "/api/x", 8) == set(&["s-0", "s-1"])),
        "the etcd instances never both got traffic"
    );
    assert_eq!(instances(&envoy, "/", 8), set(&["s-3", "s-4"]));

    // A registry change (the service's http calls leave from the main thread) reaches traffic.
    let t = Instant::now();
    register(&etcd, &backends[2]);
    etcd.delete(&format!("{PREFIX}{}", backends[0].addr())).unwrap();
    assert!(
        wait_until(WAIT, || instances(&envoy, "/api/x", 10) == set(&["s-1", "s-2"])),
        "the registry change never reached traffic"
    );
    eprintln!("registry change → traffic: {:?}", t.elapsed());

    // One discovery VM polls, the poller without an election. (Envoy configures a second one first,
    // its configuration canary, and kills it before it ever ticks.)
    let logs = envoy.logs();
    assert!(logs.contains("configured with 2 services as a singleton service (no lease)"), "{logs}");
    assert_eq!(logs.matches("is now the poller (a singleton service: no election)").count(), 1, "{logs}");
    assert!(envoy.stat("wasmcustom.meshwasm_discovery.api.polls").unwrap().unwrap_or(0) >= 2);
    assert!(envoy.stat("wasmcustom.meshwasm_discovery.api.updates").unwrap().unwrap_or(0) >= 2);

    // Never entered per request: Envoy never made an HTTP context on it (its first one would log
    // an error), and the requests create no VM. 1 discovery VM (main thread) + the balancer's
    // (main thread + 2 workers), counted with the same stat the filter form is compared with below.
    let created = vms_created(&envoy);
    for _ in 0..20 {
        assert!(answered_by(&envoy, "/").is_some());
    }
    assert_eq!(vms_created(&envoy), created);
    assert!(!envoy.logs().contains("loaded as an HTTP filter"), "{}", envoy.logs());
    assert!(!envoy.logs().contains("no longer the poller"));

    // The filter form of the same configuration runs one discovery VM per worker too.
    let filter_form = EnvoyConfig::new()
        .concurrency(2)
        .listener(
            Listener::new("main", "picked")
                .wasm(
                    WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                        .vm_id("meshwasm")
                        .config(discovery_config(&[&backends[3], &backends[4]], "filter")),
                )
                .wasm(
                    WasmFilter::new("balancer", wasm_path("meshwasm_balancer"))
                        .vm_id("meshwasm")
                        .config(BALANCER),
                ),
        )
        .cluster(Cluster::original_dst("picked"))
        .cluster(Cluster::static_hosts("etcd", &[etcd.addr()]))
        .start()
        .unwrap();
    assert!(wait_until(WAIT, || instances(&filter_form, "/", 8) == set(&["s-3", "s-4"])));
    eprintln!("VMs created: service form {created}, filter form {}", vms_created(&filter_form));
    assert_eq!(vms_created(&filter_form), created + 2, "the filter form adds one discovery VM per worker");
}

#[test]
fn a_service_configuration_with_a_lease_or_debug_path_is_refused_at_startup() {
    for (extra, field) in
        [(r#""lease": {"ttl": "5s"}, "#, "lease"), (r#""debug_path": "/d", "#, "debug_path")]
    {
        let config = format!(
            r#"{{"mode": "service", {extra}"services": [{{"name": "web", "allow_loopback": true,
                "source": {{"static": {{"endpoints": [{{"address": "127.0.0.1:9"}}]}}}}}}]}}"#
        );
        // Envoy exits at start-up when a bootstrap Wasm service fails on_configure (fail closed).
        let (started, log) = EnvoyConfig::new()
            .wasm_service(
                WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                    .vm_id("meshwasm")
                    .config(config),
            )
            .listener(Listener::new("main", "picked"))
            .cluster(Cluster::original_dst("picked"))
            .log_level("warn")
            .run_until_exit(Duration::from_secs(60))
            .unwrap();
        assert!(!started, "Envoy accepted a refused service configuration:\n{log}");
        assert!(log.contains(&format!("rejected configuration: {field}: ")), "{log}");
        assert!(log.contains("Unable to create Wasm plugin discovery"), "{log}");
    }
}

#[test]
fn the_service_example_is_accepted_by_envoy_and_its_service_config_by_discovery() {
    let out = Command::new(artifacts::envoy_binary())
        .current_dir(artifacts::workspace_root())
        .args(["--mode", "validate", "--log-level", "error", "-c", "examples/discovery/envoy-service.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `--mode validate` does not start bootstrap extensions: configure the example's discovery service
    // in the wasmtime host (the real .wasm's on_configure).
    let path = artifacts::workspace_root().join("examples/discovery/envoy-service.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let config = &doc["bootstrap_extensions"][0]["typed_config"];
    assert_eq!(config["singleton"], serde_yaml::Value::Bool(true));
    let value = config["config"]["configuration"]["value"].as_str().unwrap();
    let vm_id = config["config"]["vm_config"]["vm_id"].as_str().unwrap();
    let host = meshwasm_host::Host::new(meshwasm_host::HostOptions::default()).unwrap();
    let module = host.load(wasm_path("meshwasm_discovery")).unwrap();
    let plugin = meshwasm_host::Plugin::new(module).name("discovery").vm_id(vm_id).config(value);
    let proxy = meshwasm_host::Proxy::builder(&host).service(plugin).build();
    assert!(proxy.is_ok(), "{:#}", proxy.err().unwrap());
}
