//! Per-worker introspection state of one provider: the answer cache, the calls in flight (one per
//! token, at most `max_concurrent_calls`), and the answers of finished calls kept briefly. Pure: the
//! glue dispatches a call when [`IntrospectionState::lookup`] says [`Lookup::Call`], reports it with
//! [`IntrospectionState::started`], and hands the answer to [`IntrospectionState::finish`]. Time is
//! passed in as Unix milliseconds.

use std::collections::HashMap;
use std::rc::Rc;

use crate::introspection::{
    Introspection, IntrospectionCache, IntrospectionConfig, IntrospectionError, token_key,
};

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
    cache: IntrospectionCache,
    /// Token key → dispatch time (ms) of the call in flight.
    inflight: HashMap<u128, u64>,
    /// Token key → (answer of a finished call, remembered until ms).
    recent: HashMap<u128, (IntroResult, u64)>,
}

impl IntrospectionState {
    pub fn new(cfg: IntrospectionConfig) -> Self {
        Self { cache: IntrospectionCache::new(&cfg), cfg, inflight: HashMap::new(), recent: HashMap::new() }
    }

    pub fn config(&self) -> &IntrospectionConfig {
        &self.cfg
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
