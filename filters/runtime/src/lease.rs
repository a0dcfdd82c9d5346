//! One worker per proxy does a job (polls a registry, fetches keys or a token): a lease in shared
//! data, claimed, confirmed, renewed and released with CAS writes, taken over when it expires.
//!
//! Every VM (one per Envoy worker, plus the main thread's) runs the same code. The rule that makes it
//! sound: a claim written by CAS over an existing value is atomic (the host checked the token), so it
//! holds at once; a claim that **created** the key is not (Envoy does not protect creation: two VMs
//! can both create it, the later write wins), so it holds only once this VM reads its own claim back
//! on a later call (a later tick). Reading it straight back is not enough: the other VM's write may
//! land just after that read, and both would believe they hold it (jwt-auth's old lease).
//!
//! [`Lease`] keeps the record under its own key. A filter that keeps the lease inside a record of its
//! own (token-injector: token, lease and last failure in one value) uses [`LeaseRecord`] and
//! [`Claimant`], the same rule without the key.
//!
//! ```
//! use meshwasm_filter_runtime::lease::{Lease, Transition};
//! use meshwasm_filter_runtime::shared_data::MemoryShared;
//! let shared = MemoryShared::default();
//! let (mut a, mut b) = (Lease::new("l", 5_000, 1), Lease::new("l", 5_000, 2));
//! let (mut sa, mut sb) = (shared.clone(), shared.clone());
//! assert_eq!(a.tick(0, &mut sa), Transition::None); // created: confirmed on a later tick
//! assert_eq!(b.tick(0, &mut sb), Transition::None); // held by a
//! assert_eq!(a.tick(100, &mut sa), Transition::Elected);
//! ```

use serde::{Deserialize, Serialize};

use crate::shared_data::SharedData;

/// The lease as stored (JSON): who holds it, until when (ms since the epoch). `until_ms` 0: free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub owner: u64,
    pub until_ms: u64,
}

/// Whose a lease is at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// `me` holds it and it has not expired.
    Mine,
    /// Another worker holds it and it has not expired.
    Other,
    /// Absent, unreadable, released or expired: anyone may claim it.
    Free,
}

impl LeaseRecord {
    /// How a lease read from shared data stands for worker `me` at `now_ms`.
    pub fn standing(record: Option<&LeaseRecord>, me: u64, now_ms: u64) -> Standing {
        match record {
            Some(r) if now_ms < r.until_ms && r.owner == me => Standing::Mine,
            Some(r) if now_ms < r.until_ms => Standing::Other,
            _ => Standing::Free,
        }
    }
}

/// This worker's side of a lease: whether its claim is confirmed (the rule in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Claimant {
    #[default]
    Idle,
    /// Created the key with a claim at this time; confirmed by reading it back later.
    Claimed {
        at_ms: u64,
    },
    Held,
}

impl Claimant {
    /// After reading the lease: true when this worker holds it now.
    pub fn on_read(&mut self, standing: Standing, now_ms: u64) -> bool {
        *self = match (standing, *self) {
            // Read back on a later call: no other creation can still overwrite it.
            (Standing::Mine, Claimant::Claimed { at_ms }) if now_ms > at_ms => Claimant::Held,
            (Standing::Mine, Claimant::Claimed { at_ms }) => Claimant::Claimed { at_ms },
            // The value says ours and unexpired (our confirmed claim or renewal).
            (Standing::Mine, _) => Claimant::Held,
            (Standing::Other | Standing::Free, _) => Claimant::Idle,
        };
        self.holds()
    }

    /// After this worker's claim was written with `cas` (the token it read, `None` if the key was
    /// absent): true when it holds at once (a CAS write over an existing value).
    pub fn on_claim_written(&mut self, cas: Option<u32>, now_ms: u64) -> bool {
        *self =
            if cas.is_some_and(|c| c != 0) { Claimant::Held } else { Claimant::Claimed { at_ms: now_ms } };
        self.holds()
    }

    pub fn holds(&self) -> bool {
        *self == Claimant::Held
    }
}

/// What a [`Lease::tick`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Elected,
    Lost,
}

/// A lease under its own shared-data key.
#[derive(Debug)]
pub struct Lease {
    key: String,
    ttl_ms: u64,
    owner: u64,
    claimant: Claimant,
}

impl Lease {
    /// `owner`: this worker's id, unique in the proxy ([`crate::worker_id::allocate`]).
    pub fn new(key: impl Into<String>, ttl_ms: u64, owner: u64) -> Self {
        Self { key: key.into(), ttl_ms, owner, claimant: Claimant::Idle }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn owner(&self) -> u64 {
        self.owner
    }

    pub fn is_held(&self) -> bool {
        self.claimant.holds()
    }

    fn read(&self, shared: &dyn SharedData) -> (Option<LeaseRecord>, Option<u32>) {
        match shared.get(&self.key) {
            // An unreadable value (another format, a release by an older version) is a free lease.
            Some((bytes, cas)) => (serde_json::from_slice(&bytes).ok(), Some(cas)),
            None => (None, None),
        }
    }

    fn write(&self, shared: &mut dyn SharedData, record: LeaseRecord, cas: Option<u32>) -> bool {
        serde_json::to_vec(&record).is_ok_and(|bytes| shared.set(&self.key, &bytes, cas).is_ok())
    }

    /// Creates the key with a free lease when it is absent, so that the first claim is a CAS write
    /// that holds at once instead of waiting for a later tick. Call at configure time, well before
    /// the first claim: two VMs creating it together both write the same free value, and a claim
    /// comes a tick later. Never overwrites an existing lease.
    pub fn prepare(&self, shared: &mut dyn SharedData) {
        if shared.get(&self.key).is_none() {
            self.write(shared, LeaseRecord { owner: 0, until_ms: 0 }, None);
        }
    }

    /// Claims, confirms, renews or loses the lease; call on every tick. A holder renews once a
    /// quarter of the ttl has passed, so it stays held while the holder keeps ticking.
    pub fn tick(&mut self, now_ms: u64, shared: &mut dyn SharedData) -> Transition {
        let was = self.is_held();
        let (record, cas) = self.read(shared);
        let standing = LeaseRecord::standing(record.as_ref(), self.owner, now_ms);
        let claim = LeaseRecord { owner: self.owner, until_ms: now_ms.saturating_add(self.ttl_ms) };
        if self.claimant.on_read(standing, now_ms) {
            let remaining = record.map_or(0, |r| r.until_ms.saturating_sub(now_ms));
            // A failed renewal means someone wrote in between: re-read on the next tick.
            if remaining <= self.ttl_ms / 4 * 3 && !self.write(shared, claim, cas) {
                self.claimant = Claimant::Idle;
            }
        } else if standing == Standing::Free && self.write(shared, claim, cas) {
            self.claimant.on_claim_written(cas, now_ms);
        }
        match (was, self.is_held()) {
            (false, true) => Transition::Elected,
            (true, false) => Transition::Lost,
            _ => Transition::None,
        }
    }

    /// For a job done now and then: claims or confirms the lease; true when this worker holds it.
    pub fn acquire(&mut self, now_ms: u64, shared: &mut dyn SharedData) -> bool {
        self.tick(now_ms, shared);
        self.is_held()
    }

    /// True while another worker holds an unexpired lease.
    pub fn held_by_other(&self, now_ms: u64, shared: &dyn SharedData) -> bool {
        let (record, _) = self.read(shared);
        LeaseRecord::standing(record.as_ref(), self.owner, now_ms) == Standing::Other
    }

    /// Gives the lease up (job done, VM going away) so another worker can claim it at once.
    pub fn release(&mut self, shared: &mut dyn SharedData) {
        self.claimant = Claimant::Idle;
        if let (Some(r), Some(cas)) = self.read(shared)
            && r.owner == self.owner
        {
            self.write(shared, LeaseRecord { owner: self.owner, until_ms: 0 }, Some(cas));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_data::MemoryShared;

    fn workers(n: u64, ttl: u64) -> (MemoryShared, Vec<(Lease, MemoryShared)>) {
        let shared = MemoryShared::default();
        let v = (1..=n).map(|id| (Lease::new("lease", ttl, id), shared.clone())).collect();
        (shared, v)
    }

    fn leaders(ws: &[(Lease, MemoryShared)]) -> usize {
        ws.iter().filter(|(l, _)| l.is_held()).count()
    }

    #[test]
    fn one_holder_among_many_then_takeover_on_expiry() {
        let (_, mut ws) = workers(4, 5_000);
        let mut now = 1_000;
        for round in 0..20 {
            now += 200;
            for (l, s) in &mut ws {
                l.tick(now, s);
            }
            let expected = if round == 0 { 0 } else { 1 };
            assert_eq!(leaders(&ws), expected, "round {round}: a created claim holds from the next tick");
        }
        let first = ws.iter().position(|(l, _)| l.is_held()).unwrap();
        // The holder stalls: another takes over only once its last renewal has expired.
        let mut took_over_at = None;
        for round in 0..60 {
            now += 200;
            for (i, (l, s)) in ws.iter_mut().enumerate() {
                if i != first {
                    l.tick(now, s);
                }
            }
            if took_over_at.is_none() && ws.iter().enumerate().any(|(i, (l, _))| i != first && l.is_held()) {
                took_over_at = Some(round);
            }
        }
        let at = took_over_at.unwrap();
        assert!((18..=25).contains(&at), "taken over after about the ttl: round {at}");
        // The stalled holder comes back and steps down.
        let (l, s) = &mut ws[first];
        assert_eq!(l.tick(now, s), Transition::Lost);
        assert_eq!(leaders(&ws), 1);
    }

    #[test]
    fn two_creations_at_once_resolve_to_the_later_write() {
        // Both read "absent" before either writes: both create; the later write wins, and only its
        // writer confirms on the next tick.
        let (shared, mut ws) = workers(2, 5_000);
        let [(a, sa), (b, sb)] = &mut ws[..] else { unreachable!() };
        assert!(!a.acquire(0, sa));
        shared.remove("lease"); // as if b's read happened before a's write
        assert!(!b.acquire(0, sb));
        assert!(!a.acquire(10, sa), "a reads b's claim back: not a holder");
        assert!(b.acquire(10, sb));
        assert!(a.held_by_other(10, sa));
    }

    #[test]
    fn reading_a_created_claim_straight_back_does_not_confirm_it() {
        // jwt-auth's old lease: write, read back at once, hold. Here the same-time read stays a claim.
        let (shared, mut ws) = workers(2, 5_000);
        let [(a, sa), (b, sb)] = &mut ws[..] else { unreachable!() };
        assert!(!a.acquire(0, sa));
        assert!(!a.acquire(0, sa), "read back in the same instant: still only claimed");
        shared.remove("lease");
        assert!(!b.acquire(0, sb));
        assert_eq!(leaders(&ws), 0);
    }

    #[test]
    fn a_cas_claim_over_an_existing_value_holds_at_once() {
        let (_, mut ws) = workers(2, 5_000);
        let [(a, sa), (b, sb)] = &mut ws[..] else { unreachable!() };
        a.tick(0, sa);
        assert_eq!(a.tick(100, sa), Transition::Elected);
        assert!(!b.acquire(100, sb));
        a.release(sa);
        assert!(!a.is_held());
        assert!(b.acquire(101, sb), "released: b's CAS claim is atomic, no second tick needed");
        assert!(!a.acquire(102, sa));
    }

    #[test]
    fn a_racing_write_between_read_and_claim_loses_the_claim() {
        let (shared, mut ws) = workers(2, 5_000);
        let [(a, sa), (b, sb)] = &mut ws[..] else { unreachable!() };
        b.tick(0, sb);
        b.release(sb); // the key exists, free
        let theirs = serde_json::to_vec(&LeaseRecord { owner: 9, until_ms: 5_000 }).unwrap();
        shared.race_next_write(&theirs);
        assert!(!a.acquire(10, sa), "CAS mismatch: not a holder");
        assert!(a.held_by_other(10, sa));
    }

    #[test]
    fn renewal_keeps_it_and_a_lost_renewal_steps_down() {
        let (shared, mut ws) = workers(1, 4_000);
        let (l, s) = &mut ws[0];
        l.tick(0, s);
        l.tick(10, s);
        for t in (100..20_000).step_by(500) {
            assert!(l.acquire(t, s), "renewed at {t}");
        }
        shared.race_next_write(br#"{"owner":9,"until_ms":99999}"#);
        // The next renewal (a quarter of the ttl after the last) meets the racing write.
        let mut t = 20_000;
        while l.is_held() {
            t += 100;
            l.tick(t, s);
        }
        assert!(l.held_by_other(t, s));
    }

    #[test]
    fn garbage_and_released_values_are_free() {
        let (shared, mut ws) = workers(1, 1_000);
        let (l, s) = &mut ws[0];
        shared.put("lease", b"7 123456789"); // jwt-auth's old plain-text lease
        assert!(l.acquire(0, s), "replaced by CAS: held at once");
        l.release(s);
        let r: LeaseRecord = serde_json::from_slice(&shared.value("lease").unwrap()).unwrap();
        assert_eq!(r.until_ms, 0);
        assert_eq!(LeaseRecord::standing(Some(&r), 1, 0), Standing::Free);
    }

    #[test]
    fn a_prepared_lease_is_held_on_the_first_claim_and_prepare_never_overwrites() {
        let (shared, mut ws) = workers(2, 5_000);
        let [(a, sa), (b, sb)] = &mut ws[..] else { unreachable!() };
        a.prepare(sa);
        b.prepare(sb);
        assert_eq!(a.tick(0, sa), Transition::Elected, "CAS over the prepared free value");
        let before = shared.value("lease");
        b.prepare(sb);
        assert_eq!(shared.value("lease"), before, "an existing lease is left alone");
        assert!(!b.acquire(1, sb));
    }

    #[test]
    fn claimant_rule() {
        let mut c = Claimant::default();
        assert!(!c.on_claim_written(None, 5), "created: not yet");
        assert!(!c.on_read(Standing::Mine, 5), "same instant: not yet");
        assert!(c.on_read(Standing::Mine, 6));
        assert!(!c.on_read(Standing::Other, 7));
        assert!(c.on_claim_written(Some(3), 8), "CAS over an existing value");
        assert!(!Claimant::default().on_claim_written(Some(0), 8), "CAS 0 is unconditional");
    }
}
