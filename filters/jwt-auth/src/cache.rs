//! Verified-token cache: bounded, per worker, keyed by (provider, token), entries expire at the token's
//! `exp` (or after a configured maximum). A repeated token costs one hash, one lookup and one byte
//! comparison instead of a signature check, and allocates nothing: the entry holds what the request
//! needs, the identity properties for later filters already encoded (see [`Authenticated`]).
//!
//! Safety of a hit: the token is hashed once with SipHash-1-3 under a random per-worker key (std's
//! `RandomState`), which only chooses the bucket; a hit also compares the provider and the **whole
//! token** with the one that was verified. Two different tokens never share an entry, whatever their
//! hashes: a collision (chance or crafted) is a miss, never an acceptance. The cost is the token's
//! header and signature kept in worker memory next to its claims (the payload segment is there already,
//! as `payload_b64`; never logged); the alternative, a collision-resistant digest such as SHA-256,
//! costs several times the keyed hash on every hit.
//!
//! Entries are tagged with their provider's key-set generation: [`TokenCache::invalidate`] (called on
//! every worker whenever a provider's keys change) bumps it, so a token verified with rotated-out keys is
//! never served again; the stale entries age out with the FIFO order.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::engine::Authenticated;

/// Short hex prefix of a token's hash, for logs (never log tokens).
pub fn log_id(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A token's hash under the cache's key ([`TokenCache::hash`]): computed once per token and request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(u64);

/// The map's keys are already keyed hashes: used as they are, not hashed again.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); anything else still hashes deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A verified token, kept to compare a presented one byte for byte: its payload segment is the
/// verification's `payload_b64`, so only what surrounds it is stored.
struct Token {
    /// Up to the payload (`header.`), or the whole token when its payload is not `payload_b64`.
    head: Box<str>,
    /// After the payload (`.signature`).
    tail: Box<str>,
    /// Whether `payload_b64` sits between `head` and `tail`.
    split: bool,
}

impl Token {
    fn new(token: &str, payload: &str) -> Token {
        if let Some(dot) = token.find('.') {
            let (head, rest) = token.split_at(dot + 1);
            if !payload.is_empty()
                && let Some(tail) = rest.strip_prefix(payload)
                && tail.starts_with('.')
            {
                return Token { head: head.into(), tail: tail.into(), split: true };
            }
        }
        Token { head: token.into(), tail: "".into(), split: false }
    }

    fn is(&self, token: &str, payload: &str) -> bool {
        if !self.split {
            return *self.head == *token;
        }
        let (h, t) = (self.head.len(), self.tail.len());
        token.len() == h + payload.len() + t
            && token.as_bytes().get(..h) == Some(self.head.as_bytes())
            && token.as_bytes().get(h..h + payload.len()) == Some(payload.as_bytes())
            && token.as_bytes().get(h + payload.len()..) == Some(self.tail.as_bytes())
    }
}

struct Entry {
    provider: usize,
    /// The verified token itself: a hit must be this exact token, not just the same hash.
    token: Token,
    authenticated: Rc<Authenticated>,
    expires_s: u64,
    /// When it was verified: a clock that went back before it is a miss (verified again, so `nbf` is
    /// checked again).
    verified_s: u64,
    /// The provider's key-set generation when the token was verified.
    generation: u64,
}

/// The cache. Eviction is FIFO by insertion after expired entries, which keeps it O(1) per operation.
pub struct TokenCache {
    map: HashMap<TokenHash, Entry, BuildHasherDefault<Prehashed>>,
    order: VecDeque<TokenHash>,
    key: RandomState,
    capacity: usize,
    max_ttl_s: u64,
    /// Key-set generation per provider index (missing: 0).
    generations: Vec<u64>,
}

impl TokenCache {
    pub fn new(capacity: usize, max_ttl_s: u64) -> Self {
        TokenCache {
            map: HashMap::default(),
            order: VecDeque::new(),
            key: RandomState::new(),
            capacity,
            max_ttl_s,
            generations: Vec::new(),
        }
    }

    /// The token's hash for `get` and `insert`: SipHash-1-3 of (provider, token) under this cache's
    /// random key.
    pub fn hash(&self, provider: usize, token: &str) -> TokenHash {
        let mut h = self.key.build_hasher();
        h.write_usize(provider);
        h.write(token.as_bytes());
        TokenHash(h.finish())
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

    /// The cached verification of exactly this `token` for `provider` (`hash` from [`Self::hash`]),
    /// still valid at `now_s`: before its `exp`, not before it was verified, verified with the
    /// provider's current keys.
    pub fn get(
        &mut self,
        provider: usize,
        token: &str,
        hash: TokenHash,
        now_s: u64,
    ) -> Option<Rc<Authenticated>> {
        let current = self.generation(provider);
        let e = self.map.get(&hash)?;
        if e.provider != provider || !e.token.is(token, &e.authenticated.verified.payload_b64) {
            // Another token in this slot: a miss, and the slot stays theirs.
            return None;
        }
        if now_s < e.expires_s && now_s >= e.verified_s && e.generation == current {
            return Some(Rc::clone(&e.authenticated));
        }
        self.map.remove(&hash);
        None
    }

    /// Stores a verification made at `now_s`. `clock_skew_s` is not added: a cached entry never
    /// outlives `exp` itself.
    pub fn insert(
        &mut self,
        provider: usize,
        token: &str,
        hash: TokenHash,
        authenticated: Rc<Authenticated>,
        now_s: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let cap = now_s.saturating_add(self.max_ttl_s);
        let expires_s = authenticated.verified.exp.map_or(cap, |e| e.min(cap));
        if expires_s <= now_s {
            return;
        }
        while self.map.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else { break };
            self.map.remove(&old);
        }
        let entry = Entry {
            provider,
            token: Token::new(token, &authenticated.verified.payload_b64),
            authenticated,
            expires_s,
            verified_s: now_s,
            generation: self.generation(provider),
        };
        // A token whose hash is another's replaces it: the other is verified again when next seen.
        if self.map.insert(hash, entry).is_none() {
            self.order.push_back(hash);
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
    use crate::validate::Verified;

    fn v(exp: Option<u64>) -> Rc<Authenticated> {
        Rc::new(Authenticated {
            verified: Verified { claims: Default::default(), exp, payload_b64: String::new() },
            identity: Rc::from(Vec::new()),
        })
    }

    fn put(c: &mut TokenCache, p: usize, t: &str, a: Rc<Authenticated>, now: u64) {
        let h = c.hash(p, t);
        c.insert(p, t, h, a, now);
    }

    fn hit(c: &mut TokenCache, p: usize, t: &str, now: u64) -> bool {
        c.get(p, t, c.hash(p, t), now).is_some()
    }

    #[test]
    fn expires_at_exp_and_is_bounded() {
        let mut c = TokenCache::new(2, 300);
        put(&mut c, 0, "a", v(Some(110)), 100);
        assert!(hit(&mut c, 0, "a", 109));
        assert!(!hit(&mut c, 0, "a", 110), "exp honoured on a hit");
        assert!(!hit(&mut c, 1, "a", 100), "providers do not share entries");
        put(&mut c, 0, "a", v(None), 100);
        assert!(hit(&mut c, 0, "a", 399));
        assert!(!hit(&mut c, 0, "a", 400), "max ttl caps tokens without exp");
        for t in ["x", "y", "z"] {
            put(&mut c, 0, t, v(Some(1000)), 100);
        }
        assert_eq!(c.len(), 2);
        assert!(!hit(&mut c, 0, "x", 100), "oldest evicted");
        assert!(hit(&mut c, 0, "z", 100));
        put(&mut c, 0, "expired", v(Some(50)), 100);
        assert!(!hit(&mut c, 0, "expired", 100));
    }

    #[test]
    fn a_hit_is_the_same_token_and_hands_back_what_was_stored() {
        let mut c = TokenCache::new(10, 300);
        let a = v(Some(1000));
        put(&mut c, 0, "header.payload.sig", Rc::clone(&a), 100);
        let h = c.hash(0, "header.payload.sig");
        let got = c.get(0, "header.payload.sig", h, 100).unwrap();
        assert!(Rc::ptr_eq(&got, &a));
        assert!(!hit(&mut c, 0, "header.payload.sig2", 100), "same prefix, longer");
        assert!(!hit(&mut c, 0, "header.payload.si", 100), "same prefix, shorter");
        assert!(!hit(&mut c, 0, "header.payload.siG", 100), "one byte differs");
        assert!(!hit(&mut c, 0, "", 100));
        assert_eq!(c.hash(0, "t"), c.hash(0, "t"), "one key per cache");
        assert_ne!(c.hash(0, "t"), c.hash(1, "t"), "the provider is hashed");
    }

    #[test]
    fn a_token_is_kept_without_its_payload_and_compared_whole() {
        let a = |payload: &str| {
            Rc::new(Authenticated {
                verified: Verified {
                    claims: Default::default(),
                    exp: Some(1000),
                    payload_b64: payload.into(),
                },
                identity: Rc::from(Vec::new()),
            })
        };
        let mut c = TokenCache::new(10, 300);
        put(&mut c, 0, "hdr.PAYLOAD.sig", a("PAYLOAD"), 100);
        assert!(hit(&mut c, 0, "hdr.PAYLOAD.sig", 100));
        for other in [
            "hdr.PAYLOAX.sig",
            "hdr.PAYLOAD.si",
            "hdr.PAYLOAD.sigX",
            "hdX.PAYLOAD.sig",
            "hdr.PAYLOADD.sig",
            "hdr.PAYLOAD",
            "hdrPAYLOAD.sig",
        ] {
            assert!(!hit(&mut c, 0, other, 100), "{other}");
        }
        // A verification whose payload is not the token's middle segment keeps the whole token.
        put(&mut c, 0, "x.y.z", a("other"), 100);
        assert!(hit(&mut c, 0, "x.y.z", 100));
        assert!(!hit(&mut c, 0, "x.y.zz", 100) && !hit(&mut c, 0, "x.y.", 100));
        put(&mut c, 0, "no-dots", a(""), 100);
        assert!(hit(&mut c, 0, "no-dots", 100) && !hit(&mut c, 0, "no-dot", 100));
        assert_eq!(Token::new("h.p.s", "p").head.len() + Token::new("h.p.s", "p").tail.len(), 4);
    }

    #[test]
    fn a_different_token_in_the_same_slot_never_hits() {
        // Force the worst case: another token presented under the cached token's hash (a collision,
        // chance or crafted). It must be a miss, and must not evict the cached token.
        let mut c = TokenCache::new(10, 300);
        put(&mut c, 0, "good.token.sig", v(Some(1000)), 100);
        let h = c.hash(0, "good.token.sig");
        assert!(c.get(0, "evil.token.sig", h, 100).is_none());
        assert!(c.get(0, "good.token.sig2", h, 100).is_none());
        assert!(c.get(1, "good.token.sig", h, 100).is_none(), "another provider under the same hash");
        assert!(c.get(0, "good.token.sig", h, 100).is_some(), "the cached token is still there");
        // A verified token that lands on the slot replaces the other (which is verified again later).
        c.insert(0, "other.token.sig", h, v(Some(1000)), 100);
        assert!(c.get(0, "good.token.sig", h, 100).is_none());
        assert!(c.get(0, "other.token.sig", h, 100).is_some());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_clock_that_went_back_is_a_miss() {
        // nbf was checked at verification time; before that time it is checked again.
        let mut c = TokenCache::new(10, 3600);
        put(&mut c, 0, "t", v(Some(1000)), 100);
        assert!(!hit(&mut c, 0, "t", 99));
        assert!(!hit(&mut c, 0, "t", 100), "the miss dropped the entry");
        put(&mut c, 0, "t", v(Some(1000)), 100);
        assert!(hit(&mut c, 0, "t", 100) && hit(&mut c, 0, "t", 999));
    }

    #[test]
    fn invalidate_forgets_only_that_providers_entries() {
        let mut c = TokenCache::new(10, 300);
        put(&mut c, 0, "a", v(Some(1000)), 100);
        put(&mut c, 1, "a", v(Some(1000)), 100);
        c.invalidate(0);
        assert!(!hit(&mut c, 0, "a", 100), "verified with the old keys");
        assert!(hit(&mut c, 1, "a", 100), "other providers keep theirs");
        put(&mut c, 0, "a", v(Some(1000)), 100);
        assert!(hit(&mut c, 0, "a", 100), "verified again with the new keys");
        c.invalidate(7);
        assert!(hit(&mut c, 0, "a", 100) && hit(&mut c, 1, "a", 100));
        assert!(c.len() <= 2);
    }

    #[test]
    fn capacity_zero_stores_nothing() {
        let mut c = TokenCache::new(0, 300);
        put(&mut c, 0, "a", v(Some(1000)), 100);
        assert!(c.is_empty() && !hit(&mut c, 0, "a", 100));
    }

    #[test]
    fn log_id_is_short_hex() {
        assert_eq!(log_id("secret").len(), 8);
    }
}
