//! Where a worker gets its token: a per-worker copy, shared between workers through one shared-data
//! record, with one fetch per proxy (a lease taken by compare-and-swap), refresh ahead of expiry, and
//! back-off after failures.
//!
//! The record under the plan's shared key holds the current token, the lease of the worker fetching
//! one ([`LeaseRecord`], claimed by the rule of [`meshwasm_filter_runtime::lease`]: a CAS write over
//! the existing record holds at once, a claim that created the record only once read back on a later
//! poll), and the last failure. A worker asks [`TokenSource::poll`] for a token; the answer is a token
//! ([`State::Ready`]), "wait" ([`State::Pending`]: a fetch is in flight here or in another worker) or
//! "none to be had" ([`State::Unavailable`]: the last fetch failed and its back-off has not passed), and
//! whether this worker must now dispatch the fetch (it won the lease). The fetch result goes to
//! [`TokenSource::on_fetch_result`], which publishes it for every worker.

use std::rc::Rc;

use meshwasm_filter_runtime::backoff::Backoff;
pub use meshwasm_filter_runtime::lease::LeaseRecord;
use meshwasm_filter_runtime::lease::{Claimant, Standing};
use meshwasm_filter_runtime::shared_data::{SetError, SharedData};
use serde::{Deserialize, Serialize};

use crate::config::Plan;
use crate::token::{FetchError, Token, token_log_id};

/// The shared record (JSON in shared data; it never leaves the proxy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRecord {
    #[serde(default)]
    pub token: Option<SharedToken>,
    #[serde(default)]
    pub lease: Option<LeaseRecord>,
    #[serde(default)]
    pub failure: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedToken {
    pub access_token: String,
    /// Increases with every token obtained, so workers adopt only newer ones.
    pub generation: u64,
    pub obtained_ms: u64,
    pub refresh_ms: u64,
    pub usable_until_ms: u64,
    pub expires_ms: u64,
}

/// The last failed fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub at_ms: u64,
    /// No new fetch before this.
    pub retry_at_ms: u64,
    pub consecutive: u32,
    pub message: String,
}

/// This worker's copy of the token.
#[derive(Debug, Clone)]
struct Local {
    /// The whole header value, `Bearer <token>`, built once.
    header_value: Rc<str>,
    log_id: Rc<str>,
    generation: u64,
    refresh_ms: u64,
    usable_until_ms: u64,
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Inject this header value.
    Ready(Rc<str>),
    /// Wait: a token request is in flight.
    Pending,
    /// No token: the last request failed with this message and its back-off has not passed.
    Unavailable(Rc<str>),
}

/// The answer of [`TokenSource::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    pub state: State,
    /// This worker took the lease: dispatch the token request now and report its result.
    pub start_fetch: bool,
}

/// What [`TokenSource::on_fetch_result`] did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchReport {
    /// A token (log id, lifetime in seconds) is now current.
    Obtained { log_id: Rc<str>, lifetime_s: u64 },
    /// The fetch failed; the next attempt is not before `retry_in_ms`.
    Failed { error: FetchError, consecutive: u32, retry_in_ms: u64 },
}

/// One worker's view. Not shared: each worker (root context) has its own.
#[derive(Debug)]
pub struct TokenSource {
    plan: Rc<Plan>,
    worker: u64,
    /// Whether this worker's lease claim holds (see the module docs).
    claimant: Claimant,
    local: Option<Local>,
    fetch_started_ms: Option<u64>,
    /// Last shared failure seen, to answer [`State::Unavailable`] without re-reading.
    failure_message: Rc<str>,
}

const CAS_ATTEMPTS: usize = 8;

/// Longest token lifetime believed (1 day). The IdP's `expires_in` is any u64; beyond this the token is
/// refreshed as if it lived a day, which keeps every deadline far from overflow and bounds how long a
/// token revoked at the IdP keeps being sent.
pub const MAX_LIFETIME_S: u64 = 86_400;

impl TokenSource {
    /// `worker` must be unique among the proxy's workers (the glue takes it from a shared counter).
    pub fn new(plan: Rc<Plan>, worker: u64) -> TokenSource {
        TokenSource {
            plan,
            worker,
            claimant: Claimant::default(),
            local: None,
            fetch_started_ms: None,
            failure_message: Rc::from(""),
        }
    }

    pub fn worker(&self) -> u64 {
        self.worker
    }

    /// True while this worker's token request is in flight.
    pub fn fetching(&self) -> bool {
        self.fetch_started_ms.is_some()
    }

    /// True when this worker has (had) a token: background refresh is worth doing.
    pub fn has_token(&self) -> bool {
        self.local.is_some()
    }

    /// The log id of the current token, if any.
    pub fn token_log_id(&self) -> Option<Rc<str>> {
        self.local.as_ref().map(|l| l.log_id.clone())
    }

    /// When this worker's in-flight request should have been answered by (the proxy enforces the
    /// timeout; this catches a response that never arrives, e.g. a cancelled call).
    pub fn fetch_overdue(&self, now_ms: u64) -> bool {
        self.fetch_started_ms.is_some_and(|t| now_ms > t.saturating_add(self.lease_ms()))
    }

    fn lease_ms(&self) -> u64 {
        self.plan.config.token_endpoint.timeout_ms + 1000
    }

    /// The token at `now_ms`, reading the shared record only when the local copy is due for refresh;
    /// starts a fetch when there is no usable token or a refresh is due (for the root context's tick,
    /// whose calls outlive any request).
    pub fn poll(&mut self, now_ms: u64, store: &mut dyn SharedData) -> Poll {
        self.poll_inner(now_ms, store, true)
    }

    /// Like [`Self::poll`] for a request: while the token is still usable, a due refresh is left to the
    /// tick (a call dispatched from a request dies with it); a fetch starts only when there is no
    /// usable token and the request waits for it anyway.
    pub fn poll_for_request(&mut self, now_ms: u64, store: &mut dyn SharedData) -> Poll {
        self.poll_inner(now_ms, store, false)
    }

    fn poll_inner(&mut self, now_ms: u64, store: &mut dyn SharedData, refresh_ahead: bool) -> Poll {
        if let Some(l) = &self.local
            && now_ms < l.refresh_ms
        {
            return Poll { state: State::Ready(l.header_value.clone()), start_fetch: false };
        }
        for _ in 0..CAS_ATTEMPTS {
            let (mut rec, cas) = self.read(store);
            self.adopt(&rec);
            let usable = self.usable(now_ms);
            let ready_or = |other: State| match &usable {
                Some(v) => State::Ready(v.clone()),
                None => other,
            };
            if let Some(l) = &self.local
                && now_ms < l.refresh_ms
            {
                return Poll { state: State::Ready(l.header_value.clone()), start_fetch: false };
            }
            if self.fetch_started_ms.is_some() {
                return Poll { state: ready_or(State::Pending), start_fetch: false };
            }
            if !refresh_ahead && let Some(v) = &usable {
                return Poll { state: State::Ready(v.clone()), start_fetch: false };
            }
            if let Some(f) = &rec.failure
                && now_ms < f.retry_at_ms
            {
                if *self.failure_message != *f.message {
                    self.failure_message = Rc::from(f.message.as_str());
                }
                return Poll {
                    state: ready_or(State::Unavailable(self.failure_message.clone())),
                    start_fetch: false,
                };
            }
            let standing = LeaseRecord::standing(rec.lease.as_ref(), self.worker, now_ms);
            if self.claimant.on_read(standing, now_ms) {
                // This worker's claim that created the record, read back on a later poll.
                self.fetch_started_ms = Some(now_ms);
                return Poll { state: ready_or(State::Pending), start_fetch: true };
            }
            if standing != Standing::Free {
                // Another worker's lease, or this worker's claim still to be confirmed.
                return Poll { state: ready_or(State::Pending), start_fetch: false };
            }
            rec.lease =
                Some(LeaseRecord { owner: self.worker, until_ms: now_ms.saturating_add(self.lease_ms()) });
            match self.write(store, &rec, cas) {
                Ok(()) => {
                    if !self.claimant.on_claim_written(cas, now_ms) {
                        return Poll { state: ready_or(State::Pending), start_fetch: false };
                    }
                    self.fetch_started_ms = Some(now_ms);
                    return Poll { state: ready_or(State::Pending), start_fetch: true };
                }
                Err(SetError::Other) => {
                    // Without shared data each worker fetches for itself; still correct.
                    self.fetch_started_ms = Some(now_ms);
                    return Poll { state: ready_or(State::Pending), start_fetch: true };
                }
                Err(SetError::CasMismatch) => continue,
            }
        }
        let state = match self.usable(now_ms) {
            Some(v) => State::Ready(v),
            None => State::Pending,
        };
        Poll { state, start_fetch: false }
    }

    /// Publishes the result of this worker's token request (received at `now_ms`).
    pub fn on_fetch_result(
        &mut self,
        now_ms: u64,
        store: &mut dyn SharedData,
        result: Result<Token, FetchError>,
    ) -> FetchReport {
        // Lifetimes count from when the request left: the token was issued after that.
        let started = self.fetch_started_ms.take().unwrap_or(now_ms).min(now_ms);
        self.claimant = Claimant::default();
        let mut report = None;
        for _ in 0..CAS_ATTEMPTS {
            let (mut rec, cas) = self.read(store);
            if rec.lease.is_some_and(|l| l.owner == self.worker) {
                rec.lease = None;
            }
            match &result {
                Ok(token) => {
                    let lifetime_s = token
                        .expires_in
                        .unwrap_or(self.plan.config.refresh.default_expires_in_s)
                        .min(MAX_LIFETIME_S);
                    let generation = rec
                        .token
                        .as_ref()
                        .map(|t| t.generation)
                        .max(self.local.as_ref().map(|l| l.generation))
                        .unwrap_or(0)
                        + 1;
                    let shared = self.schedule(&token.access_token, generation, started, lifetime_s);
                    rec.token = Some(shared);
                    rec.failure = None;
                    self.adopt(&rec);
                    report = Some(FetchReport::Obtained {
                        log_id: self.local.as_ref().map(|l| l.log_id.clone()).unwrap_or_else(|| Rc::from("")),
                        lifetime_s,
                    });
                }
                Err(error) => {
                    let consecutive = rec.failure.as_ref().map_or(1, |f| f.consecutive.saturating_add(1));
                    let b = &self.plan.config.retry_backoff;
                    let retry_in_ms =
                        Backoff { initial_ms: b.initial_ms, max_ms: b.max_ms }.delay_ms(consecutive);
                    // Shared with every worker and sent to downstream clients: no IdP free text.
                    let message = error.client_reason();
                    self.failure_message = Rc::from(message.as_str());
                    rec.failure = Some(Failure {
                        at_ms: now_ms,
                        retry_at_ms: now_ms.saturating_add(retry_in_ms),
                        consecutive,
                        message,
                    });
                    report = Some(FetchReport::Failed { error: error.clone(), consecutive, retry_in_ms });
                }
            }
            match self.write(store, &rec, cas) {
                Ok(()) | Err(SetError::Other) => break,
                Err(SetError::CasMismatch) => continue,
            }
        }
        report.unwrap_or_else(|| FetchReport::Failed {
            error: FetchError::Unreachable("shared data contention".into()),
            consecutive: 1,
            retry_in_ms: 0,
        })
    }

    /// This worker's token request was cancelled (the stream that dispatched it ended, and the proxy
    /// cancels a stream's calls): release the lease so the next poll can fetch again at once. Not a
    /// failure of the token endpoint: no back-off.
    pub fn abandon_fetch(&mut self, store: &mut dyn SharedData) {
        self.claimant = Claimant::default();
        if self.fetch_started_ms.take().is_none() {
            return;
        }
        for _ in 0..CAS_ATTEMPTS {
            let (mut rec, cas) = self.read(store);
            if rec.lease.is_none_or(|l| l.owner != self.worker) {
                return;
            }
            rec.lease = None;
            match self.write(store, &rec, cas) {
                Ok(()) | Err(SetError::Other) => return,
                Err(SetError::CasMismatch) => continue,
            }
        }
    }

    /// Token times from the plan's refresh policy: refresh at `fraction` of the lifetime or
    /// `before_expiry_s` before expiry, whichever is earlier but never before half the lifetime; stop
    /// sending it `expiry_margin_s` before expiry (at most a tenth of the lifetime).
    fn schedule(
        &self,
        access_token: &str,
        generation: u64,
        obtained_ms: u64,
        lifetime_s: u64,
    ) -> SharedToken {
        let r = &self.plan.config.refresh;
        let life = lifetime_s.saturating_mul(1000);
        let by_fraction = (life as f64 * r.fraction) as u64;
        let by_margin = life.saturating_sub(r.before_expiry_s.saturating_mul(1000)).max(life / 2);
        let margin = r.expiry_margin_s.saturating_mul(1000).min(life / 10);
        SharedToken {
            access_token: access_token.to_owned(),
            generation,
            obtained_ms,
            refresh_ms: obtained_ms.saturating_add(by_fraction.min(by_margin)),
            usable_until_ms: obtained_ms.saturating_add(life - margin),
            expires_ms: obtained_ms.saturating_add(life),
        }
    }

    fn usable(&self, now_ms: u64) -> Option<Rc<str>> {
        self.local.as_ref().filter(|l| now_ms < l.usable_until_ms).map(|l| l.header_value.clone())
    }

    fn adopt(&mut self, rec: &SharedRecord) {
        let Some(t) = &rec.token else { return };
        if self.local.as_ref().is_some_and(|l| l.generation >= t.generation) {
            return;
        }
        self.local = Some(Local {
            header_value: Rc::from(format!("Bearer {}", t.access_token)),
            log_id: Rc::from(token_log_id(&t.access_token)),
            generation: t.generation,
            refresh_ms: t.refresh_ms,
            usable_until_ms: t.usable_until_ms,
        });
    }

    fn read(&self, store: &dyn SharedData) -> (SharedRecord, Option<u32>) {
        let Some((bytes, cas)) = store.get(&self.plan.shared_key) else {
            return (SharedRecord::default(), None);
        };
        // An unreadable record (another version of the filter) is replaced.
        (serde_json::from_slice(&bytes).unwrap_or_default(), Some(cas))
    }

    fn write(
        &self,
        store: &mut dyn SharedData,
        rec: &SharedRecord,
        cas: Option<u32>,
    ) -> Result<(), SetError> {
        let bytes = serde_json::to_vec(rec).map_err(|_| SetError::Other)?;
        // An absent key has no CAS to check: the glue creates the record at start-up so that the lease
        // is normally taken by compare-and-swap (a claim that creates it waits for a later poll).
        store.set(&self.plan.shared_key, &bytes, cas)
    }
}

/// Requests paused waiting for a token, oldest first.
#[derive(Debug, Default)]
pub struct Waiters {
    list: Vec<(u32, u64)>,
}

impl Waiters {
    pub fn push(&mut self, context_id: u32, since_ms: u64) {
        self.list.push((context_id, since_ms));
    }

    /// Forgets a request that ended while waiting.
    pub fn remove(&mut self, context_id: u32) {
        self.list.retain(|(id, _)| *id != context_id);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Takes every waiter.
    pub fn take_all(&mut self) -> Vec<u32> {
        self.list.drain(..).map(|(id, _)| id).collect()
    }

    /// Takes the waiters that have waited `max_wait_ms` or longer.
    pub fn take_expired(&mut self, now_ms: u64, max_wait_ms: u64) -> Vec<u32> {
        let mut out = Vec::new();
        self.list.retain(|&(id, since)| {
            let expired = now_ms.saturating_sub(since) >= max_wait_ms;
            if expired {
                out.push(id);
            }
            !expired
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use meshwasm_filter_runtime::shared_data::MemoryShared;

    use super::*;

    /// Shared data as the glue leaves it at start-up: the record exists (empty), so the lease is
    /// claimed by compare-and-swap.
    fn mem(p: &Plan) -> MemoryShared {
        let m = MemoryShared::default();
        m.put(&p.shared_key, b"{}");
        m
    }

    /// A host whose shared data refuses every write.
    fn broken() -> MemoryShared {
        let m = MemoryShared::default();
        m.refuse_writes_under(Some(String::new()));
        m
    }

    fn plan(extra: serde_json::Value) -> Rc<Plan> {
        let mut v = serde_json::json!({
            "token_endpoint": {"cluster": "idp", "path": "/token", "authority": "idp", "timeout_ms": 1000},
            "client_id": "svc", "client_secret": "s",
            "refresh": {"fraction": 0.8, "before_expiry_s": 60, "expiry_margin_s": 5},
            "retry_backoff": {"initial_ms": 1000, "max_ms": 8000},
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Rc::new(Plan::from_json(v.to_string().as_bytes()).unwrap())
    }

    fn token(t: &str, expires_in: u64) -> Result<Token, FetchError> {
        Ok(Token { access_token: t.into(), expires_in: Some(expires_in) })
    }

    fn ready(s: &str) -> State {
        State::Ready(Rc::from(format!("Bearer {s}")))
    }

    #[test]
    fn first_request_fetches_then_serves_from_memory() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut w = TokenSource::new(p, 1);
        let poll = w.poll(0, &mut store);
        assert_eq!(poll, Poll { state: State::Pending, start_fetch: true });
        // Single flight: more requests wait, no second fetch.
        for t in [1, 2, 3] {
            assert_eq!(w.poll(t, &mut store), Poll { state: State::Pending, start_fetch: false });
        }
        let rep = w.on_fetch_result(100, &mut store, token("t1", 1000));
        assert!(matches!(rep, FetchReport::Obtained { lifetime_s: 1000, .. }));
        assert_eq!(w.poll(100, &mut store), Poll { state: ready("t1"), start_fetch: false });
        assert!(!w.fetching());
        let rec: SharedRecord = serde_json::from_slice(&store.value(&w.plan.shared_key).unwrap()).unwrap();
        assert_eq!(rec.lease, None, "lease released");
        let t = rec.token.unwrap();
        // lifetime 1000 s from the request start (0): refresh at min(800 s, 940 s), usable to 995 s.
        assert_eq!(
            (t.obtained_ms, t.refresh_ms, t.usable_until_ms, t.expires_ms),
            (0, 800_000, 995_000, 1_000_000)
        );
    }

    #[test]
    fn refresh_ahead_keeps_serving_the_old_token() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut w = TokenSource::new(p, 1);
        w.poll(0, &mut store);
        w.on_fetch_result(0, &mut store, token("t1", 100));
        // lifetime 100 s: refresh at min(80, max(40, 50)) = 50 s; usable until 95 s.
        assert_eq!(w.poll(49_999, &mut store), Poll { state: ready("t1"), start_fetch: false });
        assert_eq!(w.poll(50_000, &mut store), Poll { state: ready("t1"), start_fetch: true });
        assert_eq!(w.poll(50_001, &mut store), Poll { state: ready("t1"), start_fetch: false });
        w.on_fetch_result(50_100, &mut store, token("t2", 100));
        assert_eq!(w.poll(50_200, &mut store).state, ready("t2"));
    }

    #[test]
    fn requests_leave_refresh_ahead_to_the_tick() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut w = TokenSource::new(p, 1);
        // No token: a request starts the fetch (it waits for it anyway).
        assert_eq!(w.poll_for_request(0, &mut store), Poll { state: State::Pending, start_fetch: true });
        w.on_fetch_result(0, &mut store, token("t1", 100));
        // Refresh due at 50 s, token usable until 95 s: requests get it and start nothing ...
        assert_eq!(w.poll_for_request(60_000, &mut store), Poll { state: ready("t1"), start_fetch: false });
        // ... the tick refreshes.
        assert_eq!(w.poll(60_100, &mut store), Poll { state: ready("t1"), start_fetch: true });
        w.on_fetch_result(60_200, &mut store, token("t2", 100));
        assert_eq!(w.poll_for_request(60_300, &mut store).state, ready("t2"));
        // Past usability without a refresh: the request fetches.
        assert_eq!(
            w.poll_for_request(200_000, &mut store),
            Poll { state: State::Pending, start_fetch: true }
        );
    }

    #[test]
    fn expired_token_is_not_sent() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut w = TokenSource::new(p, 1);
        w.poll(0, &mut store);
        w.on_fetch_result(0, &mut store, token("t1", 100));
        // Refresh due at 50 s: suppose the refresh keeps failing: the old token is served until 95 s.
        assert!(w.poll(50_000, &mut store).start_fetch);
        w.on_fetch_result(50_000, &mut store, Err(FetchError::Timeout));
        assert_eq!(w.poll(94_999, &mut store).state, ready("t1"));
        let p = w.poll(95_000, &mut store);
        assert_ne!(p.state, ready("t1"));
    }

    #[test]
    fn two_workers_share_one_fetch() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut a = TokenSource::new(p.clone(), 1);
        let mut b = TokenSource::new(p, 2);
        assert!(a.poll(0, &mut store).start_fetch);
        assert_eq!(
            b.poll(1, &mut store),
            Poll { state: State::Pending, start_fetch: false },
            "lease held by a"
        );
        a.on_fetch_result(10, &mut store, token("shared", 600));
        assert_eq!(b.poll(11, &mut store), Poll { state: ready("shared"), start_fetch: false });
        // Refresh: whoever comes first takes the lease; the other keeps serving and then adopts.
        let refresh_at = 480_000;
        assert_eq!(b.poll(refresh_at, &mut store), Poll { state: ready("shared"), start_fetch: true });
        assert_eq!(a.poll(refresh_at + 1, &mut store), Poll { state: ready("shared"), start_fetch: false });
        b.on_fetch_result(refresh_at + 5, &mut store, token("newer", 600));
        assert_eq!(a.poll(refresh_at + 6, &mut store).state, ready("newer"));
    }

    #[test]
    fn two_workers_creating_the_record_together_fetch_once() {
        // Without the record the glue creates at start-up, the lease claim creates it, which CAS cannot
        // protect: both workers read "absent" and both write. The old code fetched on both claims.
        let p = plan(serde_json::json!({}));
        let store = MemoryShared::default();
        let (mut sa, mut sb) = (store.clone(), store.clone());
        let mut a = TokenSource::new(p.clone(), 1);
        let mut b = TokenSource::new(p.clone(), 2);
        let mut fetches = 0;
        fetches += usize::from(a.poll(0, &mut sa).start_fetch);
        store.remove(&p.shared_key); // as if b's read happened before a's write
        fetches += usize::from(b.poll(0, &mut sb).start_fetch);
        let pa = a.poll(1, &mut sa);
        let pb = b.poll(1, &mut sb);
        fetches += usize::from(pa.start_fetch) + usize::from(pb.start_fetch);
        assert_eq!(fetches, 1);
        assert_eq!(pb, Poll { state: State::Pending, start_fetch: true }, "the later write won");
        assert_eq!(pa, Poll { state: State::Pending, start_fetch: false });
        b.on_fetch_result(5, &mut sb, token("t", 600));
        assert_eq!(a.poll(6, &mut sa).state, ready("t"));
    }

    #[test]
    fn expired_lease_is_taken_over() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut a = TokenSource::new(p.clone(), 1);
        let mut b = TokenSource::new(p, 2);
        assert!(a.poll(0, &mut store).start_fetch);
        // a's worker never answers; its lease (timeout 1000 + 1000 ms) runs out.
        assert!(!b.poll(1999, &mut store).start_fetch);
        assert!(b.poll(2000, &mut store).start_fetch);
        assert!(a.fetch_overdue(2001));
        assert!(!a.fetch_overdue(2000));
    }

    #[test]
    fn failures_back_off_exponentially_and_fail_fast() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut w = TokenSource::new(p.clone(), 1);
        let mut other = TokenSource::new(p, 2);
        assert!(w.poll(0, &mut store).start_fetch);
        let err = FetchError::Refused {
            status: 401,
            error: "invalid_client".into(),
            description: Some("client acme-billing secret rotated 2026-11-01".into()),
        };
        let rep = w.on_fetch_result(10, &mut store, Err(err.clone()));
        // The log gets the description …
        assert!(err.to_string().contains("secret rotated"));
        assert_eq!(rep, FetchReport::Failed { error: err, consecutive: 1, retry_in_ms: 1000 });
        // … downstream clients do not. During back-off: immediate 503 with the IdP's error code, in every
        // worker, no fetch.
        let msg: Rc<str> = Rc::from("token endpoint refused: HTTP 401, error `invalid_client`");
        assert_eq!(
            w.poll(500, &mut store),
            Poll { state: State::Unavailable(msg.clone()), start_fetch: false }
        );
        assert_eq!(other.poll(500, &mut store), Poll { state: State::Unavailable(msg), start_fetch: false });
        // After it: one retry; consecutive failures double the wait up to the maximum.
        let mut now = 1010;
        for wait in [2000, 4000, 8000, 8000] {
            assert!(w.poll(now, &mut store).start_fetch, "retry at {now}");
            match w.on_fetch_result(now, &mut store, Err(FetchError::Status(503))) {
                FetchReport::Failed { retry_in_ms, .. } => assert_eq!(retry_in_ms, wait),
                r => panic!("{r:?}"),
            }
            assert!(!w.poll(now + wait - 1, &mut store).start_fetch);
            now += wait;
        }
        // Success clears the failure.
        assert!(other.poll(now, &mut store).start_fetch);
        other.on_fetch_result(now, &mut store, token("ok", 600));
        assert_eq!(w.poll(now + 1, &mut store).state, ready("ok"));
        let rec: SharedRecord = serde_json::from_slice(&store.value(&w.plan.shared_key).unwrap()).unwrap();
        assert_eq!(rec.failure, None);
    }

    #[test]
    fn cas_race_is_retried() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut a = TokenSource::new(p.clone(), 1);
        // Another worker takes the lease between a's read and write.
        let racing =
            SharedRecord { lease: Some(LeaseRecord { owner: 9, until_ms: 5000 }), ..Default::default() };
        store.race_next_write(&serde_json::to_vec(&racing).unwrap());
        assert_eq!(a.poll(0, &mut store), Poll { state: State::Pending, start_fetch: false });
        // The racing worker publishes; a adopts without fetching.
        let done = SharedRecord {
            token: Some(SharedToken {
                access_token: "theirs".into(),
                generation: 1,
                obtained_ms: 0,
                refresh_ms: 100_000,
                usable_until_ms: 200_000,
                expires_ms: 300_000,
            }),
            ..Default::default()
        };
        store.set(&p.shared_key, &serde_json::to_vec(&done).unwrap(), None).unwrap();
        assert_eq!(a.poll(10, &mut store), Poll { state: ready("theirs"), start_fetch: false });
    }

    #[test]
    fn abandoned_fetch_releases_the_lease_without_backoff() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut a = TokenSource::new(p.clone(), 1);
        let mut b = TokenSource::new(p, 2);
        assert!(a.poll(0, &mut store).start_fetch);
        assert!(!b.poll(10, &mut store).start_fetch);
        a.abandon_fetch(&mut store);
        assert!(!a.fetching());
        // Either worker can fetch again at once; no failure was recorded.
        assert_eq!(b.poll(20, &mut store), Poll { state: State::Pending, start_fetch: true });
        assert!(!a.poll(30, &mut store).start_fetch);
        b.on_fetch_result(40, &mut store, token("t", 600));
        assert_eq!(a.poll(50, &mut store).state, ready("t"));
        // Abandoning when nothing is in flight does nothing.
        a.abandon_fetch(&mut store);
        assert_eq!(a.poll(60, &mut store).state, ready("t"));
    }

    #[test]
    fn works_without_shared_data() {
        let p = plan(serde_json::json!({}));
        let mut w = TokenSource::new(p, 1);
        let mut broken = broken();
        assert!(w.poll(0, &mut broken).start_fetch);
        w.on_fetch_result(1, &mut broken, token("local", 600));
        assert_eq!(w.poll(2, &mut broken).state, ready("local"));
    }

    #[test]
    fn garbage_record_is_replaced() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        store.set(&p.shared_key, b"\xff not json", None).unwrap();
        let mut w = TokenSource::new(p, 1);
        assert!(w.poll(0, &mut store).start_fetch);
        w.on_fetch_result(1, &mut store, token("t", 600));
        assert_eq!(w.poll(2, &mut store).state, ready("t"));
    }

    #[test]
    fn short_lifetimes_and_default_lifetime() {
        let p = plan(serde_json::json!({"refresh": {"default_expires_in_s": 40}}));
        let mut store = mem(&p);
        let mut w = TokenSource::new(p, 1);
        w.poll(0, &mut store);
        w.on_fetch_result(0, &mut store, Ok(Token { access_token: "x".into(), expires_in: None }));
        let rec: SharedRecord = serde_json::from_slice(&store.value(&w.plan.shared_key).unwrap()).unwrap();
        let t = rec.token.unwrap();
        // 40 s: refresh at min(32, max(-20→0, 20)) = 20 s (never before half); margin min(5, 4) = 4 s.
        assert_eq!((t.refresh_ms, t.usable_until_ms, t.expires_ms), (20_000, 36_000, 40_000));
        // 1 s tokens still work: refresh at 0.5 s, usable until 0.9 s.
        let mut w2 = TokenSource::new(plan(serde_json::json!({})), 2);
        let mut s2 = mem(&w2.plan);
        w2.poll(0, &mut s2);
        w2.on_fetch_result(0, &mut s2, token("y", 1));
        assert_eq!(w2.poll(499, &mut s2).state, ready("y"));
        assert!(w2.poll(500, &mut s2).start_fetch);
        assert_eq!(w2.poll(899, &mut s2).state, ready("y"));
        assert_eq!(w2.poll(900, &mut s2).state, State::Pending);
    }

    #[test]
    fn huge_expires_in_is_clamped_to_a_day() {
        let p = plan(serde_json::json!({}));
        let mut store = mem(&p);
        let mut w = TokenSource::new(p, 1);
        let start = 1_700_000_000_000;
        w.poll(start, &mut store);
        let rep = w.on_fetch_result(start, &mut store, token("big", u64::MAX));
        assert!(matches!(rep, FetchReport::Obtained { lifetime_s: MAX_LIFETIME_S, .. }));
        let rec: SharedRecord = serde_json::from_slice(&store.value(&w.plan.shared_key).unwrap()).unwrap();
        let t = rec.token.unwrap();
        // One day: refresh at min(0.8 day, day - 60 s), usable until day - 5 s.
        let day = MAX_LIFETIME_S * 1000;
        assert_eq!(
            (t.refresh_ms, t.usable_until_ms, t.expires_ms),
            (start + day * 8 / 10, start + day - 5_000, start + day)
        );
        assert_eq!(w.poll(start + 1, &mut store).state, ready("big"));
        // It is refreshed, not kept for ever.
        assert!(w.poll(start + day * 8 / 10, &mut store).start_fetch);
        // Even at the end of time nothing overflows.
        let mut w2 = TokenSource::new(plan(serde_json::json!({})), 2);
        let mut s2 = mem(&w2.plan);
        w2.poll(u64::MAX - 10, &mut s2);
        w2.on_fetch_result(u64::MAX - 10, &mut s2, token("late", u64::MAX));
        let rec: SharedRecord = serde_json::from_slice(&s2.value(&w2.plan.shared_key).unwrap()).unwrap();
        assert_eq!(rec.token.unwrap().expires_ms, u64::MAX);
    }

    #[test]
    fn waiters_expire_and_drain() {
        let mut w = Waiters::default();
        w.push(1, 0);
        w.push(2, 500);
        w.push(3, 900);
        w.remove(3);
        assert_eq!(w.take_expired(999, 1000), Vec::<u32>::new());
        assert_eq!(w.take_expired(1000, 1000), vec![1]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.take_all(), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn refcell_store_usable_from_glue_shape() {
        // The glue keeps a TokenSource in a RefCell shared by the root and HTTP contexts.
        let p = plan(serde_json::json!({}));
        let src = RefCell::new(TokenSource::new(p.clone(), 7));
        let mut store = mem(&p);
        assert_eq!(src.borrow().worker(), 7);
        assert!(src.borrow_mut().poll(0, &mut store).start_fetch);
        assert!(src.borrow().fetching());
    }
}
