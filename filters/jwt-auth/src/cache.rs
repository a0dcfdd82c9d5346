//! Verified-token cache: bounded, per worker, keyed by a SHA-256 of (provider, token), entries expire at
//! the token's `exp` (or after a configured maximum). A repeated token costs a hash and a lookup instead
//! of a signature check. Tokens themselves are never stored.
//!
//! Entries are tagged with their provider's key-set generation: [`TokenCache::invalidate`] (called on
//! every worker whenever a provider's keys change) bumps it, so a token verified with rotated-out keys is
//! never served again; the stale entries age out with the FIFO order.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::validate::Verified;

/// Key of a token for one provider: the provider (to invalidate per provider) and a SHA-256 of both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    provider: usize,
    digest: [u8; 32],
}

/// Key of a token for one provider.
pub fn key(provider: usize, token: &str) -> CacheKey {
    let mut h = Sha256::new();
    h.update((provider as u64).to_le_bytes());
    h.update(token.as_bytes());
    CacheKey { provider, digest: h.finalize().into() }
}

/// Short hex prefix of a token's hash, for logs (never log tokens).
pub fn log_id(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

struct Entry {
    verified: Rc<Verified>,
    expires_s: u64,
    /// The provider's key-set generation when the token was verified.
    generation: u64,
}

/// The cache. Eviction is FIFO by insertion after expired entries, which keeps it O(1) per operation.
pub struct TokenCache {
    map: HashMap<CacheKey, Entry>,
    order: VecDeque<CacheKey>,
    capacity: usize,
    max_ttl_s: u64,
    /// Key-set generation per provider index (missing: 0).
    generations: Vec<u64>,
}

impl TokenCache {
    pub fn new(capacity: usize, max_ttl_s: u64) -> Self {
        TokenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            max_ttl_s,
            generations: Vec::new(),
        }
    }

    fn generation(&self, provider: usize) -> u64 {
        self.generations.get(provider).copied().unwrap_or(0)
    }

    /// The provider's keys changed (rotated, refetched, dropped): none of its cached verifications may
    /// be used again. O(1); the stale entries are dropped when met or evicted.
    pub fn invalidate(&mut self, provider: usize) {
        if self.generations.len() <= provider {
            self.generations.resize(provider + 1, 0);
        }
        if let Some(g) = self.generations.get_mut(provider) {
            *g = g.wrapping_add(1);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A cached verification that is still valid at `now_s`.
    pub fn get(&mut self, k: &CacheKey, now_s: u64) -> Option<Rc<Verified>> {
        let e = self.map.get(k)?;
        if now_s < e.expires_s && e.generation == self.generation(k.provider) {
            return Some(e.verified.clone());
        }
        self.map.remove(k);
        None
    }

    /// Stores a verification. `clock_skew_s` is not added: a cached entry never outlives `exp` itself.
    pub fn insert(&mut self, k: CacheKey, verified: Rc<Verified>, now_s: u64) {
        if self.capacity == 0 {
            return;
        }
        let cap = now_s.saturating_add(self.max_ttl_s);
        let expires_s = verified.exp.map_or(cap, |e| e.min(cap));
        if expires_s <= now_s {
            return;
        }
        while self.map.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
        let generation = self.generation(k.provider);
        if self.map.insert(k, Entry { verified, expires_s, generation }).is_none() {
            self.order.push_back(k);
        }
        // Keep the order queue from growing with keys already removed on expiry.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    /// Drops every entry (keys rotated out, config changed).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(exp: Option<u64>) -> Rc<Verified> {
        Rc::new(Verified { claims: Default::default(), exp, payload_b64: String::new() })
    }

    #[test]
    fn expires_at_exp_and_is_bounded() {
        let mut c = TokenCache::new(2, 300);
        c.insert(key(0, "a"), v(Some(110)), 100);
        assert!(c.get(&key(0, "a"), 109).is_some());
        assert!(c.get(&key(0, "a"), 110).is_none());
        assert!(c.get(&key(1, "a"), 100).is_none(), "providers do not share entries");
        c.insert(key(0, "a"), v(None), 100);
        assert!(c.get(&key(0, "a"), 399).is_some());
        assert!(c.get(&key(0, "a"), 400).is_none(), "max ttl caps tokens without exp");
        for t in ["x", "y", "z"] {
            c.insert(key(0, t), v(Some(1000)), 100);
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&key(0, "x"), 100).is_none(), "oldest evicted");
        assert!(c.get(&key(0, "z"), 100).is_some());
        c.insert(key(0, "expired"), v(Some(50)), 100);
        assert!(c.get(&key(0, "expired"), 100).is_none());
    }

    #[test]
    fn invalidate_forgets_only_that_providers_entries() {
        let mut c = TokenCache::new(10, 300);
        c.insert(key(0, "a"), v(Some(1000)), 100);
        c.insert(key(1, "a"), v(Some(1000)), 100);
        c.invalidate(0);
        assert!(c.get(&key(0, "a"), 100).is_none(), "verified with the old keys");
        assert!(c.get(&key(1, "a"), 100).is_some(), "other providers keep theirs");
        c.insert(key(0, "a"), v(Some(1000)), 100);
        assert!(c.get(&key(0, "a"), 100).is_some(), "verified again with the new keys");
        c.invalidate(7);
        assert!(c.get(&key(0, "a"), 100).is_some() && c.get(&key(1, "a"), 100).is_some());
        assert!(c.len() <= 2);
    }

    #[test]
    fn log_id_is_short_hex() {
        assert_eq!(log_id("secret").len(), 8);
    }
}
