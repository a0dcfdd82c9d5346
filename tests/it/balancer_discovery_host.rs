//! Discovery and balancer together in the wasmtime host (two plugins, one `vm_id`, two workers): real
//! etcd registrations shift the balancer's picks on the virtual clock, and etcd down keeps them going.

use std::collections::BTreeSet;
use std::time::Duration;

use meshwasm_host::{Host, HostOptions, Plugin, Proxy, Request, Upstream, UpstreamReply};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::etcd::Etcd;

const VM: &str = "meshwasm";

/// The endpoints the balancer steers to, over `n` requests on each worker (`"503"` for a request
/// that got no endpoint, e.g. before discovery published anything).
pub(crate) fn picks(p: &mut Proxy, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for worker in 0..2 {
        for _ in 0..n {
            let ex = p.send(worker, Request::get("/").authority("api"), UpstreamReply::new(200)).unwrap();
            match ex.upstream_request {
                Some(up) if ex.status == 200 => {
                    let picked = meshwasm_host::foreign::original_dst_from_filter_state(&up.filter_state);
                    seen.insert(picked.expect("steered").to_string());
                }
                _ => {
                    seen.insert(ex.status.to_string());
                }
            }
        }
    }
    seen
}

pub(crate) fn set(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|s| s.to_string()).collect()
}

/// Advances the virtual clock in 100 ms steps until `f` holds (at most `limit`).
pub(crate) fn advance_until(p: &mut Proxy, limit: Duration, mut f: impl FnMut(&mut Proxy) -> bool) -> bool {
    let mut waited = Duration::ZERO;
    while waited <= limit {
        if f(p) {
            return true;
        }
        p.advance(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    false
}

#[test]
fn etcd_registrations_shift_picks_in_both_workers() {
    let etcd = Etcd::start().unwrap();
    etcd.put("/services/api/a", "10.0.0.1:8080").unwrap();
    etcd.put("/services/api/b", "10.0.0.2:8080").unwrap();

    let host = Host::new(HostOptions::default()).unwrap();
    let discovery = host.load(wasm_path("meshwasm_discovery")).unwrap();
    let balancer = host.load(wasm_path("meshwasm_balancer")).unwrap();
    let mut p = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(discovery).name("discovery").vm_id(VM).config(
            br#"{"tick": "100ms", "services": [{"name": "api", "refresh": "500ms", "timeout": "1s",
                 "source": {"etcd": {"cluster": "etcd", "prefix": "/services/api/"}}}]}"#,
        ))
        .plugin(
            Plugin::new(balancer)
                .name("balancer")
                .vm_id(VM)
                .config(br#"{"seed": 5, "services": {"api": {}}}"#),
        )
        .upstream("etcd", Upstream::forward(etcd.addr()))
        .build()
        .unwrap();

    let first = set(&["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| picks(p, 4) == first));

    etcd.put("/services/api/c", r#"{"address": "10.0.0.3:8080"}"#).unwrap();
    let three = set(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| picks(p, 6) == three));

    etcd.delete("/services/api/a").unwrap();
    let rest = set(&["10.0.0.2:8080", "10.0.0.3:8080"]);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| picks(p, 6) == rest));

    // Registry down for a while: the last good set keeps serving.
    etcd.stop();
    p.advance(Duration::from_secs(5));
    assert_eq!(picks(&mut p, 6), rest);
    assert!(p.metric("meshwasm_balancer.api.endpoint_set_updates").unwrap_or(0) >= 3);
}
