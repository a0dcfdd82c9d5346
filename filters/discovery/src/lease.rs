//! Electing one poller per proxy: a lease in shared data, claimed and renewed with CAS writes.
//!
//! Every VM (one per Envoy worker, plus the main thread's) runs the same ticks. A VM claims the
//! lease when it is free or expired, but only polls after it has read its own claim back on a later
//! tick: proxy-wasm's CAS does not protect the creation of a key, so two VMs may both "create" it;
//! the later write wins and the earlier claimant sees that on its confirming read. The poller renews
//! well before expiry; if it stalls or its VM goes away, another VM takes over after `ttl`.

use serde::{Deserialize, Serialize};

use crate::host::{Host, SetError};

/// Shared-data key prefix of leases.
pub const LEASE_KEY_PREFIX: &str = "meshwasm.discovery.v1.lease.";
/// Shared-data key of the VM id counter.
pub const IDS_KEY: &str = "meshwasm.discovery.v1.ids";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseValue {
    owner: String,
    expires_ms: u64,
}

/// A unique id for this VM: a CAS-incremented counter plus a random part (in case two VMs create
/// the counter at the same moment, which proxy-wasm's CAS cannot prevent).
pub fn allocate_id(host: &mut impl Host) -> String {
    for _ in 0..16 {
        let (n, cas) = match host.shared_get(IDS_KEY) {
            Some((v, cas)) => {
                (std::str::from_utf8(&v).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0), Some(cas))
            }
            None => (0, None),
        };
        let next = n + 1;
        if host.shared_set(IDS_KEY, next.to_string().as_bytes(), cas).is_ok() {
            return format!("{next}.{:x}", host.random());
        }
    }
    format!("x.{:x}", host.random())
}

/// What a tick changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Elected,
    Lost,
}

#[derive(Debug)]
pub struct Lease {
    key: String,
    ttl_ms: u64,
    me: String,
    leader: bool,
}

impl Lease {
    pub fn new(name: &str, ttl_ms: u64, me: String) -> Self {
        Self { key: format!("{LEASE_KEY_PREFIX}{name}"), ttl_ms, me, leader: false }
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    pub fn id(&self) -> &str {
        &self.me
    }

    /// Claims, confirms, renews or gives up the lease; call on every tick.
    pub fn tick(&mut self, host: &mut impl Host) -> Transition {
        let now = host.now_ms();
        let current = host.shared_get(&self.key);
        let (value, cas) = match &current {
            Some((bytes, cas)) => (serde_json::from_slice::<LeaseValue>(bytes).ok(), Some(*cas)),
            None => (None, None),
        };
        let was = self.leader;
        let mine = value.as_ref().is_some_and(|v| v.owner == self.me && v.expires_ms > now);
        let free = value.as_ref().is_none_or(|v| v.expires_ms <= now);
        let claim = LeaseValue { owner: self.me.clone(), expires_ms: now + self.ttl_ms };
        let claim = serde_json::to_vec(&claim).unwrap_or_default();
        if mine {
            let remaining = value.as_ref().map_or(0, |v| v.expires_ms - now);
            self.leader = true;
            if remaining <= self.ttl_ms * 3 / 4 {
                match host.shared_set(&self.key, &claim, cas) {
                    Ok(()) => {}
                    // Someone wrote in between: re-read on the next tick before polling again.
                    Err(SetError::CasMismatch) | Err(SetError::Other) => self.leader = false,
                }
            }
        } else {
            self.leader = false;
            if free {
                // Claimed now, confirmed (and polling) on a later tick.
                let _ = host.shared_set(&self.key, &claim, cas);
            }
        }
        match (was, self.leader) {
            (false, true) => Transition::Elected,
            (true, false) => Transition::Lost,
            _ => Transition::None,
        }
    }

    /// Gives the lease up (VM shutting down) so another VM takes over without waiting for expiry.
    pub fn release(&mut self, host: &mut impl Host) {
        if !self.leader {
            return;
        }
        self.leader = false;
        if let Some((bytes, cas)) = host.shared_get(&self.key)
            && serde_json::from_slice::<LeaseValue>(&bytes).is_ok_and(|v| v.owner == self.me)
        {
            let free = LeaseValue { owner: String::new(), expires_ms: 0 };
            let _ = host.shared_set(&self.key, &serde_json::to_vec(&free).unwrap_or_default(), Some(cas));
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
        let mut a = Lease::new("x", 5_000, "a".into());
        let mut b = Lease::new("x", 5_000, "b".into());
        a.tick(&mut a_host);
        b.tick(&mut b_host);
        proxy.borrow_mut().now_ms += 100;
        assert_eq!(a.tick(&mut a_host), Transition::Elected);
        b.tick(&mut b_host);
        assert!(!b.is_leader());
        a.release(&mut a_host);
        b.tick(&mut b_host);
        proxy.borrow_mut().now_ms += 100;
        assert_eq!(b.tick(&mut b_host), Transition::Elected);
    }

    #[test]
    fn simultaneous_creation_resolves_to_one() {
        // Both read "absent" before either writes: both create; the later write wins.
        let proxy = Rc::new(RefCell::new(Proxy { now_ms: 1_000, ..Default::default() }));
        let mut ha = FakeHost::new(proxy.clone());
        let mut hb = FakeHost::new(proxy.clone());
        let mut a = Lease::new("x", 5_000, "a".into());
        let mut b = Lease::new("x", 5_000, "b".into());
        a.tick(&mut ha);
        proxy.borrow_mut().data.clear(); // as if b's read happened before a's write
        b.tick(&mut hb);
        proxy.borrow_mut().now_ms += 100;
        a.tick(&mut ha);
        b.tick(&mut hb);
        assert!(!a.is_leader());
        assert!(b.is_leader());
    }
}
