//! Per-worker introspection state of one provider: the answer cache, the calls in flight (one per
//! token, at most `max_concurrent_calls`), and the answers of finished calls kept briefly. Pure: the
//! glue dispatches a call when [`IntrospectionState::lookup`] says [`Lookup::Call`], reports it with
//! [`IntrospectionState::started`], and hands the answer to [`IntrospectionState::finish`]. Time is
//! passed in as Unix milliseconds.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use meshwasm_oauth2::{AssertionError, ClientAuth};

use crate::introspection::{Introspection, IntrospectionConfig, IntrospectionError, token_key};

/// The result of asking the introspection endpoint.
pub type IntroResult = Result<Rc<Introspection>, IntrospectionError>;

/// How long a finished call's answer (or failure) is remembered outside the cache, so that the
/// requests waiting for it see it even with caching off, and a down endpoint is not asked again for
/// every request.
pub const RECENT_MS: u64 = 1000;

/// A call the host has not answered this long after its own timeout is taken as lost: it no longer
/// holds its token or a slot of the call cap.
const LOST_AFTER_TIMEOUT_MS: u64 = 1000;

/// What to do for a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Decide with this answer (cached, just finished, or the call cap reached).
    Answer(IntroResult),
    /// A call for this token is in flight: wait for it.
    Wait,
    /// Ask the endpoint; report the dispatched call with [`IntrospectionState::started`].
    Call,
}

pub struct IntrospectionState {
    cfg: IntrospectionConfig,
    /// How the calls authenticate (a `private_key_jwt` signer keeps state, hence per worker).
    auth: Result<ClientAuth, AssertionError>,
    cache: IntrospectionCache,
    /// Token key → dispatch time (ms) of the call in flight.
    inflight: HashMap<u128, u64>,
    /// Token key → (answer of a finished call, remembered until ms).
    recent: HashMap<u128, (IntroResult, u64)>,
}

impl IntrospectionState {
    pub fn new(cfg: IntrospectionConfig) -> Self {
        Self {
            cache: IntrospectionCache::new(&cfg),
            auth: crate::introspection::client_auth(&cfg),
            cfg,
            inflight: HashMap::new(),
            recent: HashMap::new(),
        }
    }

    pub fn config(&self) -> &IntrospectionConfig {
        &self.cfg
    }

    /// Headers and body of the call for `token` at `now_ms` (see
    /// [`crate::introspection::build_request`]); `jti` gives a client assertion's random id.
    pub fn build_request(
        &mut self,
        token: &str,
        now_ms: u64,
        jti: &mut dyn FnMut() -> Option<String>,
    ) -> Result<crate::introspection::CallRequest, IntrospectionError> {
        let auth = self.auth.as_mut().map_err(|e| IntrospectionError::Credentials(e.to_string()))?;
        crate::introspection::build_request(&self.cfg, auth, token, now_ms / 1000, jti)
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn lost_after_ms(&self) -> u64 {
        self.cfg.timeout_ms.saturating_add(LOST_AFTER_TIMEOUT_MS)
    }

    /// What to do for `token` at `now_ms`.
    pub fn lookup(&mut self, token: &str, now_ms: u64) -> Lookup {
        if let Some(i) = self.cache.get(token, now_ms / 1000) {
            return Lookup::Answer(Ok(i));
        }
        let k = token_key(token);
        if let Some((r, until)) = self.recent.get(&k)
            && now_ms < *until
        {
            return Lookup::Answer(r.clone());
        }
        let lost_after_ms = self.lost_after_ms();
        if let Some(t) = self.inflight.get(&k)
            && now_ms < t.saturating_add(lost_after_ms)
        {
            return Lookup::Wait;
        }
        // Per-worker cap on calls in flight, so a flood of unique opaque tokens cannot overload the
        // endpoint (and, with fail_open, open the filter): past it, Overloaded (never fails open).
        if self.inflight.len() >= self.cfg.max_concurrent_calls {
            self.inflight.retain(|_, t| now_ms < t.saturating_add(lost_after_ms));
            if self.inflight.len() >= self.cfg.max_concurrent_calls {
                return Lookup::Answer(Err(IntrospectionError::Overloaded(self.inflight.len())));
            }
        }
        Lookup::Call
    }

    /// A call for `token` was dispatched at `now_ms`.
    pub fn started(&mut self, token: &str, now_ms: u64) {
        self.inflight.insert(token_key(token), now_ms);
    }

    /// The call for `token` finished at `now_ms` with this answer (`Unreachable` when the host gave
    /// none). Caches an answer, remembers the result briefly for the waiting requests, and returns it.
    pub fn finish(
        &mut self,
        token: &str,
        answer: Result<Introspection, IntrospectionError>,
        now_ms: u64,
    ) -> IntroResult {
        let k = token_key(token);
        self.inflight.remove(&k);
        self.recent.retain(|_, (_, until)| *until > now_ms);
        let result = answer.map(|i| self.cache.insert(token, i, now_ms / 1000));
        self.recent.insert(k, (result.clone(), now_ms.saturating_add(RECENT_MS)));
        result
    }
}

struct Entry {
    value: Rc<Introspection>,
    expires_s: u64,
    seq: u64,
}

/// Bounded per-worker cache of introspection answers keyed by [`token_key`]. Active answers live until
/// `min(exp, now + max_active_ttl_s)`, inactive ones for `inactive_ttl_s`. When full, expired entries go
/// first, then the oldest inserted (FIFO; O(1) amortized per operation).
pub struct IntrospectionCache {
    map: HashMap<u128, Entry>,
    order: VecDeque<(u128, u64)>,
    next_seq: u64,
    max_entries: usize,
    inactive_ttl_s: u64,
    max_active_ttl_s: u64,
}

impl IntrospectionCache {
    pub fn new(cfg: &IntrospectionConfig) -> Self {
        Self::with_limits(cfg.cache_max_entries, cfg.inactive_ttl_s, cfg.max_active_ttl_s)
    }

    pub fn with_limits(max_entries: usize, inactive_ttl_s: u64, max_active_ttl_s: u64) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            max_entries,
            inactive_ttl_s,
            max_active_ttl_s,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The cached answer for `token` still fresh at `now_s`.
    pub fn get(&mut self, token: &str, now_s: u64) -> Option<Rc<Introspection>> {
        let key = token_key(token);
        let e = self.map.get(&key)?;
        if now_s < e.expires_s {
            return Some(e.value.clone());
        }
        self.map.remove(&key);
        None
    }

    /// Caches an answer received at `now_s`; returns the shared value (also when not cached: caching
    /// off, an inactive TTL of 0, or an active token already past its `exp`).
    pub fn insert(&mut self, token: &str, value: Introspection, now_s: u64) -> Rc<Introspection> {
        let value = Rc::new(value);
        let expires_s = if value.active {
            let cap = now_s.saturating_add(self.max_active_ttl_s);
            value.exp.map_or(cap, |exp| exp.min(cap))
        } else {
            now_s.saturating_add(self.inactive_ttl_s)
        };
        if self.max_entries == 0 || expires_s <= now_s {
            return value;
        }
        let key = token_key(token);
        if !self.map.contains_key(&key) && self.map.len() >= self.max_entries {
            self.evict(now_s);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.map.insert(key, Entry { value: value.clone(), expires_s, seq });
        self.order.push_back((key, seq));
        // Re-inserted keys leave stale order records behind; compact when they dominate.
        if self.order.len() > self.max_entries.saturating_mul(2).max(16) {
            let map = &self.map;
            self.order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
        value
    }

    fn evict(&mut self, now_s: u64) {
        let before = self.map.len();
        self.map.retain(|_, e| e.expires_s > now_s);
        if self.map.len() < before {
            return;
        }
        while let Some((key, seq)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::introspection::parse_response;

    fn state(extra: serde_json::Value) -> IntrospectionState {
        let mut v = serde_json::json!({"cluster": "idp", "path": "/introspect", "authority": "idp",
            "client_id": "rs", "client_secret": "s", "timeout": "2s"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let cfg: IntrospectionConfig = serde_json::from_value(v).unwrap();
        cfg.validate().unwrap();
        IntrospectionState::new(cfg)
    }

    fn active(exp_s: u64) -> Introspection {
        let body = serde_json::json!({"active": true, "sub": "svc", "exp": exp_s});
        crate::introspection::parse_response(200, body.to_string().as_bytes()).unwrap()
    }

    const T: u64 = 1_700_000_000_000;

    #[test]
    fn one_call_per_token_and_the_waiters_see_its_answer() {
        let mut s = state(serde_json::json!({}));
        assert_eq!(s.lookup("a", T), Lookup::Call);
        s.started("a", T);
        assert_eq!(s.lookup("a", T + 10), Lookup::Wait, "the same token waits for the call in flight");
        assert_eq!(s.lookup("b", T + 10), Lookup::Call, "another token gets its own call");
        let r = s.finish("a", Ok(active(T / 1000 + 60)), T + 50);
        assert!(r.as_ref().is_ok_and(|i| i.active));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.lookup("a", T + 60), Lookup::Answer(r), "cached");
    }

    #[test]
    fn failures_are_remembered_briefly_then_asked_again() {
        let mut s = state(serde_json::json!({}));
        s.started("a", T);
        let e = IntrospectionError::Status(503);
        assert_eq!(s.finish("a", Err(e.clone()), T + 5), Err(e.clone()));
        assert_eq!(
            s.lookup("a", T + 5 + RECENT_MS - 1),
            Lookup::Answer(Err(e)),
            "a down endpoint is not asked per request"
        );
        assert_eq!(s.lookup("a", T + 5 + RECENT_MS), Lookup::Call);
    }

    #[test]
    fn answers_reach_waiters_with_caching_off() {
        let mut s = state(serde_json::json!({"cache_max_entries": 0}));
        s.started("a", T);
        let r = s.finish("a", Ok(active(T / 1000 + 60)), T + 5);
        assert_eq!(s.lookup("a", T + 6), Lookup::Answer(r));
        assert_eq!(s.lookup("a", T + 5 + RECENT_MS), Lookup::Call, "not cached");
    }

    #[test]
    fn the_call_cap_answers_overloaded_and_lost_calls_free_their_slot() {
        let mut s = state(serde_json::json!({"max_concurrent_calls": 2}));
        for t in ["a", "b"] {
            assert_eq!(s.lookup(t, T), Lookup::Call);
            s.started(t, T);
        }
        assert_eq!(s.lookup("c", T + 1), Lookup::Answer(Err(IntrospectionError::Overloaded(2))));
        assert_eq!(s.lookup("a", T + 1), Lookup::Wait, "a token in flight still waits for its call");
        // An answer frees a slot.
        assert!(s.finish("a", Err(IntrospectionError::Status(500)), T + 2).is_err());
        assert_eq!(s.lookup("c", T + 3), Lookup::Call);
        s.started("c", T + 3);
        assert_eq!(s.lookup("d", T + 4), Lookup::Answer(Err(IntrospectionError::Overloaded(2))));
        // A call the host never answered (timeout 2000 ms + 1000 ms) stops holding its slot and token.
        let lost = T + 2000 + LOST_AFTER_TIMEOUT_MS;
        assert_eq!(s.lookup("b", lost), Lookup::Call, "the lost call's token is asked again");
        assert_eq!(s.lookup("d", lost), Lookup::Call);
    }

    fn active_until(exp: Option<u64>) -> Introspection {
        let body = match exp {
            Some(e) => format!(r#"{{"active":true,"exp":{e}}}"#),
            None => r#"{"active":true}"#.to_owned(),
        };
        parse_response(200, body.as_bytes()).unwrap()
    }

    fn inactive() -> Introspection {
        parse_response(200, br#"{"active":false}"#).unwrap()
    }

    #[test]
    fn cache_active_until_exp_or_max_ttl() {
        let mut cache = IntrospectionCache::with_limits(10, 5, 300);
        cache.insert("a", active_until(Some(1100)), 1000);
        assert!(cache.get("a", 1099).is_some());
        assert!(cache.get("a", 1100).is_none(), "expires at exp");
        assert!(cache.is_empty());
        // exp further than the max TTL: capped.
        cache.insert("b", active_until(Some(10_000)), 1000);
        assert!(cache.get("b", 1299).is_some());
        assert!(cache.get("b", 1300).is_none());
        // no exp: max TTL.
        cache.insert("c", active_until(None), 1000);
        assert!(cache.get("c", 1299).is_some());
        assert!(cache.get("c", 1300).is_none());
        // already expired: not cached, but returned.
        let v = cache.insert("d", active_until(Some(900)), 1000);
        assert!(v.active);
        assert!(cache.get("d", 1000).is_none());
        assert!(cache.get("unknown", 1000).is_none());
    }

    #[test]
    fn cache_inactive_briefly() {
        let mut cache = IntrospectionCache::with_limits(10, 5, 300);
        cache.insert("x", inactive(), 1000);
        assert!(!cache.get("x", 1004).unwrap().active);
        assert!(cache.get("x", 1005).is_none());
        let mut no_inactive = IntrospectionCache::with_limits(10, 0, 300);
        no_inactive.insert("x", inactive(), 1000);
        assert!(no_inactive.get("x", 1000).is_none());
        let mut off = IntrospectionCache::with_limits(0, 5, 300);
        off.insert("x", active_until(None), 1000);
        assert!(off.get("x", 1000).is_none());
    }

    #[test]
    fn cache_is_bounded_evicting_expired_then_oldest() {
        let mut cache = IntrospectionCache::with_limits(3, 5, 300);
        cache.insert("short", inactive(), 1000); // expires 1005
        cache.insert("a", active_until(None), 1000);
        cache.insert("b", active_until(None), 1000);
        cache.insert("c", active_until(None), 1006); // "short" expired: evicted first
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get("a", 1006).is_some()
                && cache.get("b", 1006).is_some()
                && cache.get("c", 1006).is_some()
        );
        cache.insert("d", active_until(None), 1007); // full, nothing expired: oldest ("a") goes
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a", 1007).is_none());
        assert!(cache.get("d", 1007).is_some());
        // Re-inserting a key does not grow the cache, and its old order record does not evict it.
        for i in 0..100 {
            cache.insert("d", active_until(None), 1008 + i);
        }
        assert_eq!(cache.len(), 3);
        cache.insert("e", active_until(None), 1200);
        assert!(cache.get("d", 1200).is_some(), "re-inserted key is the newest");
        assert!(cache.get("b", 1200).is_none());
        assert!(cache.order.len() <= 16);
    }

    #[test]
    fn cache_many_tokens_stays_bounded() {
        let mut cache = IntrospectionCache::with_limits(50, 5, 300);
        for i in 0..10_000u64 {
            cache.insert(&format!("tok-{i}"), active_until(Some(5000)), 1000 + i / 100);
            assert!(cache.len() <= 50);
        }
        assert!(cache.order.len() <= 100);
        assert!(cache.get("tok-9999", 1100).is_some());
    }
}
