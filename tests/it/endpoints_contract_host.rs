//! The discovery ↔ balancer shared-data contract (`meshwasm-endpoints`) with both real `.wasm` filters
//! in the wasmtime host: balancer VMs name their notify queues with `notify_queue_name` and list them
//! under `SUBSCRIBERS_KEY`; a listed queue nobody registered (a VM that was reloaded) is pruned by the
//! publisher, without losing the live subscribers, and is not counted as notified.

use std::time::Duration;

use meshwasm_endpoints::{EndpointSet, NOTIFY_QUEUE_PREFIX, SUBSCRIBERS_KEY, Subscribers, set_key};
use meshwasm_host::{Host, HostOptions, Plugin, Proxy, Upstream};
use meshwasm_tests::artifacts;
use meshwasm_tests::etcd::Etcd;

const VM: &str = "mesh";

fn subscribers(p: &Proxy) -> Vec<String> {
    p.shared_data(VM, SUBSCRIBERS_KEY).map(|(b, _)| Subscribers::decode(&b).unwrap().0).unwrap_or_default()
}

fn version(p: &Proxy, service: &str) -> Option<u64> {
    p.shared_data(VM, &set_key(service)).map(|(b, _)| EndpointSet::decode(&b).unwrap().version)
}

#[test]
fn publisher_prunes_dead_subscriber_queues_and_keeps_live_ones() {
    let etcd = Etcd::start().unwrap();
    etcd.put("/services/api/a", "10.6.0.1:80").unwrap();
    let host = Host::new(HostOptions::default()).unwrap();
    let discovery = host.load(artifacts::wasm_path("meshwasm_discovery")).unwrap();
    let balancer = host.load(artifacts::wasm_path("meshwasm_balancer")).unwrap();
    let mut p = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(discovery).name("discovery").vm_id(VM).config(
            br#"{"tick":"100ms","services":[{"name":"api","refresh":"500ms",
                "source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}}]}"#,
        ))
        .plugin(
            Plugin::new(balancer)
                .name("balancer")
                .vm_id(VM)
                .config(br#"{"services":{"api":{"algorithm":"round_robin"}}}"#),
        )
        .upstream("etcd", Upstream::forward(etcd.addr()))
        .build()
        .unwrap();

    // Let the balancer VMs subscribe.
    let mut waited = Duration::ZERO;
    while subscribers(&p).is_empty() && waited < Duration::from_secs(3) {
        p.advance(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let live = subscribers(&p);
    assert!(!live.is_empty(), "no balancer VM subscribed");
    assert!(live.iter().all(|q| q.starts_with(NOTIFY_QUEUE_PREFIX)), "{live:?}");

    // Queues of VMs that are gone: listed, never registered in this proxy.
    let dead = [format!("{NOTIFY_QUEUE_PREFIX}dead.1"), format!("{NOTIFY_QUEUE_PREFIX}dead.2")];
    let mut listed = Subscribers(live.clone());
    for d in &dead {
        listed.add(d);
    }
    p.set_shared_data(VM, SUBSCRIBERS_KEY, &listed.encode());

    // A change in etcd makes discovery publish (again, if it already had) and notify.
    let before = version(&p, "api").unwrap_or(0);
    etcd.put("/services/api/b", "10.6.0.2:80").unwrap();
    let mut waited = Duration::ZERO;
    while version(&p, "api").unwrap_or(0) <= before && waited < Duration::from_secs(5) {
        p.advance(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let v = version(&p, "api").unwrap_or(0);
    assert!(v > before, "discovery did not publish the change");
    p.advance(Duration::from_millis(500));

    let now = subscribers(&p);
    for d in &dead {
        assert!(!now.contains(d), "dead queue {d} still listed: {now:?}");
    }
    for l in &live {
        assert!(now.contains(l), "live queue {l} lost: {now:?}");
    }
    assert!(p.logged("gone subscriber queue(s)"), "no prune log");
    let line = p
        .logs()
        .into_iter()
        .map(|l| l.message)
        .find(|m| m.contains(&format!("version {v},")))
        .expect("publish log");
    assert!(line.contains(&format!("{} subscribers notified", live.len())), "{line} (live: {live:?})");
}
