//! Electing one poller per proxy: the shared lease of [`meshwasm_filter_runtime::lease`] under
//! `meshwasm.discovery.v1.lease.<name>`, ticked with the proxy clock.
//!
//! Every VM (one per Envoy worker, plus the main thread's) runs the same ticks. A VM claims the
//! lease when it is free or expired. A claim that created the key only holds once the VM reads it
//! back on a later tick (proxy-wasm's CAS does not protect the creation of a key, so two VMs may both
//! "create" it; the later write wins); a claim written by CAS over an existing (expired or released)
//! lease holds at once. The poller renews well before expiry; if it stalls or its VM goes away,
//! another VM takes over after `ttl`.

use meshwasm_filter_runtime::lease::Lease as SharedLease;
pub use meshwasm_filter_runtime::lease::Transition;
use meshwasm_filter_runtime::shared_data::{SetError, SharedData};
use meshwasm_filter_runtime::worker_id;

use crate::host::Host;

/// Shared-data key prefix of leases.
pub const LEASE_KEY_PREFIX: &str = "meshwasm.discovery.v1.lease.";
/// Shared-data key of the VM id counter.
pub const IDS_KEY: &str = "meshwasm.discovery.v1.ids";

/// A host's shared data, as the shared lease and id allocation use it.
struct HostData<'a, H: Host>(&'a mut H);

impl<H: Host> SharedData for HostData<'_, H> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.shared_get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.0.shared_set(key, value, cas)
    }
}

/// A unique id for this VM ([`worker_id::allocate`]: a shared counter plus 32 random bits).
pub fn allocate_id(host: &mut impl Host) -> u64 {
    let random = host.random();
    worker_id::allocate(&mut HostData(host), IDS_KEY, random)
}

#[derive(Debug)]
pub struct Lease(SharedLease);

impl Lease {
    pub fn new(name: &str, ttl_ms: u64, me: u64) -> Self {
        Self(SharedLease::new(format!("{LEASE_KEY_PREFIX}{name}"), ttl_ms, me))
    }

    pub fn is_leader(&self) -> bool {
        self.0.is_held()
    }

    pub fn id(&self) -> u64 {
        self.0.owner()
    }

    /// Claims, confirms, renews or gives up the lease; call on every tick.
    pub fn tick(&mut self, host: &mut impl Host) -> Transition {
        let now = host.now_ms();
        self.0.tick(now, &mut HostData(host))
    }

    /// Gives the lease up (VM shutting down) so another VM takes over without waiting for expiry.
    pub fn release(&mut self, host: &mut impl Host) {
        if self.0.is_held() {
            self.0.release(&mut HostData(host));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::host::fake::{FakeHost, Proxy};

    #[test]
    fn unique_ids() {
        let proxy = Rc::new(RefCell::new(Proxy::default()));
        let mut h = FakeHost::new(proxy);
        let a = allocate_id(&mut h);
        let b = allocate_id(&mut h);
        assert_ne!(a, b);
    }

    #[test]
    fn one_leader_among_many_then_takeover() {
        let proxy = Rc::new(RefCell::new(Proxy { now_ms: 1_000, ..Default::default() }));
        let mut hosts: Vec<FakeHost> = (0..4).map(|_| FakeHost::new(proxy.clone())).collect();
        let mut leases: Vec<Lease> =
            hosts.iter_mut().map(|h| Lease::new("default", 5_000, allocate_id(h))).collect();
        for round in 0..20 {
            proxy.borrow_mut().now_ms += 200;
            for (l, h) in leases.iter_mut().zip(&mut hosts) {
                l.tick(h);
            }
            let leaders = leases.iter().filter(|l| l.is_leader()).count();
            if round == 0 {
                assert_eq!(leaders, 0, "a claim is only confirmed on a later tick");
            } else {
                assert_eq!(leaders, 1, "round {round}");
            }
        }
        let first = leases.iter().position(Lease::is_leader).unwrap();
        // The leader stops ticking (its VM stalls): another takes over only after the ttl.
        let mut took_over_at = None;
        for round in 0..60 {
            proxy.borrow_mut().now_ms += 200;
            for (i, (l, h)) in leases.iter_mut().zip(&mut hosts).enumerate() {
                if i != first {
                    l.tick(h);
                }
            }
            if took_over_at.is_none() && leases.iter().enumerate().any(|(i, l)| i != first && l.is_leader()) {
                took_over_at = Some(round);
            }
        }
        let at = took_over_at.expect("takeover");
        assert!((18..=30).contains(&at), "took over after about ttl: round {at}");
        // The stalled one comes back and steps down.
        assert_eq!(leases[first].tick(&mut hosts[first]), Transition::Lost);
        assert_eq!(leases.iter().filter(|l| l.is_leader()).count(), 1);
    }

    #[test]
    fn release_hands_over_quickly() {
        let proxy = Rc::new(RefCell::new(Proxy { now_ms: 1_000, ..Default::default() }));
        let mut a_host = FakeHost::new(proxy.clone());
        let mut b_host = FakeHost::new(proxy.clone());
        let mut a = Lease::new("x", 5_000, 1);
        let mut b = Lease::new("x", 5_000, 2);
        a.tick(&mut a_host);
        b.tick(&mut b_host);
        proxy.borrow_mut().now_ms += 100;
        assert_eq!(a.tick(&mut a_host), Transition::Elected);
        b.tick(&mut b_host);
        assert!(!b.is_leader());
        a.release(&mut a_host);
        assert!(!a.is_leader());
        // The released lease exists: b's CAS claim over it is atomic and holds on this very tick.
        assert_eq!(b.tick(&mut b_host), Transition::Elected);
        proxy.borrow_mut().now_ms += 100;
        assert_eq!(b.tick(&mut b_host), Transition::None);
        assert!(b.is_leader());
    }

    #[test]
    fn simultaneous_creation_resolves_to_one() {
        // Both read "absent" before either writes: both create; the later write wins.
        let proxy = Rc::new(RefCell::new(Proxy { now_ms: 1_000, ..Default::default() }));
        let mut ha = FakeHost::new(proxy.clone());
        let mut hb = FakeHost::new(proxy.clone());
        let mut a = Lease::new("x", 5_000, 1);
        let mut b = Lease::new("x", 5_000, 2);
        a.tick(&mut ha);
        proxy.borrow().shared.clear(); // as if b's read happened before a's write
        b.tick(&mut hb);
        proxy.borrow_mut().now_ms += 100;
        a.tick(&mut ha);
        b.tick(&mut hb);
        assert!(!a.is_leader());
        assert!(b.is_leader());
    }
}
