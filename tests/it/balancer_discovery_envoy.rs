//! Discovery and balancer together in real Envoy (same `vm_id`): instances registered in real etcd get
//! traffic, removed ones stop getting it, and traffic keeps flowing while etcd is down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::process::{http_request, wait_until};

const PREFIX: &str = "/services/api/";

fn register(etcd: &Etcd, b: &Backend) {
    etcd.put(&format!("{PREFIX}{}", b.addr()), &format!(r#"{{"address":"{}"}}"#, b.addr())).unwrap();
}

fn answered_by(envoy: &Envoy) -> Option<String> {
    let r = http_request(envoy.listener_addr("main"), "GET", "/", &[], b"", Duration::from_secs(5)).ok()?;
    (r.status == 200).then(|| r.header(INSTANCE_HEADER).unwrap_or_default().to_owned())
}

fn instances(envoy: &Envoy, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| answered_by(envoy)).collect()
}

#[test]
fn etcd_registrations_shift_traffic_and_etcd_down_keeps_it_flowing() {
    let backends = Backend::start_many("e", 3).unwrap();
    let etcd = Etcd::start().unwrap();
    register(&etcd, &backends[0]);
    register(&etcd, &backends[1]);

    let discovery = format!(
        r#"{{"tick": "100ms", "services": [{{"name": "api", "refresh": "200ms", "timeout": "1s",
             "allow_loopback": true, "source": {{"etcd": {{"cluster": "etcd", "prefix": "{PREFIX}"}}}}}}]}}"#
    );
    let balancer =
        r#"{"service_from": [{"fixed": "api"}], "refresh_interval": "500ms", "services": {"api": {}}}"#;
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(
            Listener::new("main", "picked")
                .wasm(
                    WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                        .vm_id("meshwasm")
                        .config(discovery),
                )
                .wasm(
                    WasmFilter::new("balancer", wasm_path("meshwasm_balancer"))
                        .vm_id("meshwasm")
                        .config(balancer),
                ),
        )
        .cluster(Cluster::original_dst("picked"))
        .cluster(Cluster::static_hosts("etcd", &[etcd.addr()]))
        .start()
        .unwrap();

    let both: BTreeSet<String> = ["e-0", "e-1"].iter().map(|s| s.to_string()).collect();
    assert!(
        wait_until(Duration::from_secs(10), || instances(&envoy, 6) == both),
        "the two registered instances never both got traffic"
    );

    // A new instance registered in etcd receives traffic.
    let t = Instant::now();
    register(&etcd, &backends[2]);
    assert!(
        wait_until(Duration::from_secs(10), || instances(&envoy, 6).contains("e-2")),
        "the newly registered instance never got traffic"
    );
    eprintln!("registration → traffic: {:?}", t.elapsed());

    // A removed instance stops receiving traffic.
    etcd.delete(&format!("{PREFIX}{}", backends[0].addr())).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !instances(&envoy, 10).contains("e-0")),
        "the removed instance kept getting traffic"
    );

    // Registry down: the last good set stays, every request still succeeds.
    etcd.stop();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = BTreeSet::new();
    while Instant::now() < deadline {
        seen.insert(answered_by(&envoy).expect("a request failed while etcd was down"));
    }
    let rest: BTreeSet<String> = ["e-1", "e-2"].iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, rest);
}
