//! Remote JWKS state of one provider, shared by every worker of the proxy.
//!
//! - One fetch per proxy: a worker that wants keys takes the lease `<key>.lease` in shared data
//!   ([`meshwasm_filter_runtime::lease`]); only the lease holder dispatches the fetch. The very first
//!   claim creates the key, which CAS cannot protect, so it is confirmed on the next tick (the old
//!   plain-text lease was read straight back, and two workers could both believe they held it).
//! - The holder publishes validated keys in shared data (`<key>.jwks` = the JWKS body, then
//!   `<key>.meta` = version, fetch time, last attempt, failure count); every worker reads the small meta
//!   record on its tick and parses the body once per new version.
//! - Keys are refreshed in the background at 90 % of `cache_duration_s`; a failed refresh keeps the old
//!   keys (stale-on-error) until `cache_duration_s + max_stale_s`, then they are dropped.
//! - A token with an unknown kid may trigger a refetch, at most one per `unknown_kid_refetch_interval_s`
//!   for the whole proxy (the last attempt time is in shared data).
//! - With no issuer-provided `uri`, the JWKS location comes from OIDC discovery first.
//! - `oct` (symmetric) keys in a fetched JWKS are skipped: shared secrets only come from the config.
//!
//! Time is passed in (milliseconds); nothing here reads a clock or calls the host.

use std::rc::Rc;

use meshwasm_filter_runtime::backoff::Backoff;
use meshwasm_filter_runtime::call_response::{CallError, CallResponse};
use meshwasm_filter_runtime::lease::Lease;
use meshwasm_filter_runtime::shared_data::SharedData;

use crate::config::{RemotePlan, split_url};
use crate::jwks::{KeySet, parse_remote_jwks};

/// An HTTP GET the glue must dispatch (and report back with [`RemoteKeys::on_response`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Discovery,
    Jwks,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    started_ms: u64,
    phase: Phase,
}

/// The shared record's header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Record {
    version: u64,
    fetched_at_ms: u64,
    last_attempt_ms: u64,
    failures: u32,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        format!("v1 {} {} {} {}", self.version, self.fetched_at_ms, self.last_attempt_ms, self.failures)
            .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        let head = std::str::from_utf8(bytes).ok()?;
        let mut it = head.split(' ');
        if it.next()? != "v1" {
            return None;
        }
        let r = Record {
            version: it.next()?.parse().ok()?,
            fetched_at_ms: it.next()?.parse().ok()?,
            last_attempt_ms: it.next()?.parse().ok()?,
            failures: it.next()?.parse().ok()?,
        };
        Some(r)
    }
}

/// Events for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// New keys installed on this worker (count of keys).
    Installed { version: u64, keys: usize },
    /// This worker fetched and published keys.
    Fetched { keys: usize },
    /// A fetch by this worker failed.
    FetchFailed { reason: String },
    /// Keys were older than cache_duration + max_stale and were dropped.
    Expired,
}

impl Event {
    /// Whether this worker's key set changed: then every verified token of the provider cached on this
    /// worker must be forgotten. The worker that fetched new keys gets `Fetched` (never `Installed`
    /// for them), the others `Installed`.
    pub fn changes_keys(&self) -> bool {
        matches!(self, Event::Installed { .. } | Event::Fetched { .. } | Event::Expired)
    }
}

/// Key state of one remote provider on one worker.
pub struct RemoteKeys {
    plan: RemotePlan,
    issuer: Option<String>,
    static_keys: Option<KeySet>,
    lease: Lease,
    record: Record,
    keys: Option<Rc<KeySet>>,
    in_flight: Option<InFlight>,
    jwks_target: Option<(String, String)>,
    want_refetch: bool,
    pub events: Vec<Event>,
}

/// The key state as requests see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Loading,
    Unavailable,
}

impl RemoteKeys {
    pub fn new(
        plan: RemotePlan,
        issuer: Option<String>,
        static_keys: Option<KeySet>,
        worker_id: u64,
    ) -> Self {
        let jwks_target = (!plan.discovery).then(|| (plan.authority.clone(), plan.path.clone()));
        // Held for one fetch (discovery and JWKS), released when it ends; expires if the worker stalls.
        let lease_ttl_ms = plan.timeout_ms.saturating_mul(2).saturating_add(2000);
        let lease = Lease::new(format!("{}.lease", plan.shared_key), lease_ttl_ms, worker_id);
        RemoteKeys {
            plan,
            issuer,
            static_keys,
            lease,
            record: Record::default(),
            keys: None,
            in_flight: None,
            jwks_target,
            want_refetch: false,
            events: Vec::new(),
        }
    }

    /// Creates the lease key when absent (configure time), so the first fetch is not delayed by a
    /// tick (see [`Lease::prepare`]).
    pub fn prepare(&self, shared: &mut dyn SharedData) {
        self.lease.prepare(shared);
    }

    fn jwks_key(&self) -> String {
        format!("{}.jwks", self.plan.shared_key)
    }

    fn meta_key(&self) -> String {
        format!("{}.meta", self.plan.shared_key)
    }

    fn stale_deadline_ms(&self) -> u64 {
        self.record.fetched_at_ms.saturating_add(
            self.plan.cache_duration_s.saturating_add(self.plan.max_stale_s).saturating_mul(1000),
        )
    }

    /// Keys usable now (remote merged with static ones).
    pub fn keys(&self) -> Option<&KeySet> {
        self.keys.as_deref()
    }

    pub fn state(&self) -> State {
        if self.keys.is_some() {
            State::Ready
        } else if self.record.failures == 0 {
            State::Loading
        } else {
            State::Unavailable
        }
    }

    pub fn is_fetching(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Picks up what other workers published. Returns true when anything changed (waiting requests
    /// should be re-evaluated).
    pub fn sync(&mut self, now_ms: u64, shared: &dyn SharedData) -> bool {
        let mut changed = false;
        if let Some((bytes, _)) = shared.get(&self.meta_key())
            && let Some(rec) = Record::decode(&bytes)
            && rec != self.record
        {
            if rec.version != self.record.version {
                match shared.get(&self.jwks_key()).map(|(b, _)| parse_remote_jwks(&b)) {
                    Some(Ok(set)) => {
                        self.install(set);
                        let keys = self.keys.as_ref().map_or(0, |k| k.keys.len());
                        self.events.push(Event::Installed { version: rec.version, keys });
                    }
                    Some(Err(e)) => self
                        .events
                        .push(Event::FetchFailed { reason: format!("published JWKS unusable: {e}") }),
                    None => {}
                }
            }
            // Another worker attempted a fetch since this one asked for a refetch: that attempt answers
            // the request. A refetch kept pending here would run one interval later for nothing, and
            // push the proxy-wide rate limit past the next key rotation.
            if rec.last_attempt_ms > self.record.last_attempt_ms {
                self.want_refetch = false;
            }
            self.record = rec;
            changed = true;
        }
        if self.keys.is_some() && self.record.version > 0 && now_ms > self.stale_deadline_ms() {
            self.keys = None;
            self.events.push(Event::Expired);
            changed = true;
        }
        changed
    }

    fn install(&mut self, mut set: KeySet) {
        if let Some(s) = &self.static_keys {
            set.extend(s.clone());
        }
        self.keys = Some(Rc::new(set));
    }

    /// Doubling from `retry_interval_s`, at most 64 times that and at most 5 minutes (unless the
    /// interval itself is longer).
    fn retry_delay_ms(&self) -> u64 {
        let base = self.plan.retry_interval_s.saturating_mul(1000);
        let backoff = Backoff { initial_ms: base, max_ms: base.saturating_mul(64).min(300_000.max(base)) };
        backoff.delay_ms(self.record.failures.max(1))
    }

    fn needs_fetch(&self, now_ms: u64) -> bool {
        let last = self.record.last_attempt_ms;
        if self.want_refetch
            && now_ms >= last.saturating_add(self.plan.unknown_kid_refetch_interval_s.saturating_mul(1000))
        {
            return true;
        }
        if self.record.failures > 0 && now_ms < last.saturating_add(self.retry_delay_ms()) {
            return false;
        }
        if self.keys.is_none() || self.record.version == 0 {
            return true;
        }
        let refresh_at =
            self.record.fetched_at_ms.saturating_add(self.plan.cache_duration_s.saturating_mul(900));
        now_ms >= refresh_at
    }

    /// Called on every tick (and after an unknown kid): syncs from shared data and, when a fetch is due
    /// and this worker wins the lease, returns the request to dispatch.
    pub fn poll(&mut self, now_ms: u64, shared: &mut dyn SharedData) -> Option<Fetch> {
        self.sync(now_ms, shared);
        if let Some(f) = self.in_flight {
            // A response that never came (the host lost it): give up after twice the timeout.
            if now_ms
                > f.started_ms.saturating_add(self.plan.timeout_ms.saturating_mul(2).saturating_add(1000))
            {
                self.in_flight = None;
                self.release(shared);
            } else {
                return None;
            }
        }
        if !self.needs_fetch(now_ms) || !self.acquire(now_ms, shared) {
            return None;
        }
        self.want_refetch = false;
        // Record the attempt at once so that the rate limit holds for every worker.
        self.record.last_attempt_ms = now_ms;
        self.publish(shared, None);
        Some(self.start(now_ms))
    }

    fn start(&mut self, now_ms: u64) -> Fetch {
        let (phase, authority, path) = match &self.jwks_target {
            Some((a, p)) => (Phase::Jwks, a.clone(), p.clone()),
            None => (Phase::Discovery, self.plan.authority.clone(), self.plan.path.clone()),
        };
        self.in_flight = Some(InFlight { started_ms: now_ms, phase });
        Fetch { cluster: self.plan.cluster.clone(), authority, path, timeout_ms: self.plan.timeout_ms }
    }

    /// A token carried an unknown kid. True when the request should wait for a refetch.
    pub fn unknown_kid(&mut self, now_ms: u64, shared: &mut dyn SharedData) -> bool {
        if self.in_flight.is_some() || self.lease.held_by_other(now_ms, shared) {
            return true;
        }
        let version = self.record.version;
        if self.sync(now_ms, shared) && self.record.version != version && self.keys.is_some() {
            // Keys another worker fetched were installed just now: the token waits and is checked
            // against them on the next tick instead of being refused under the rate limit.
            return true;
        }
        let allowed = now_ms
            >= self
                .record
                .last_attempt_ms
                .saturating_add(self.plan.unknown_kid_refetch_interval_s.saturating_mul(1000));
        if allowed {
            self.want_refetch = true;
        }
        allowed
    }

    fn acquire(&mut self, now_ms: u64, shared: &mut dyn SharedData) -> bool {
        self.lease.acquire(now_ms, shared)
    }

    fn release(&mut self, shared: &mut dyn SharedData) {
        self.lease.release(shared);
    }

    /// Writes the body (when new) and then the record, so a reader that sees a new version finds its
    /// body. Only the lease holder writes them: unconditional writes. A refused write leaves the other
    /// workers on the previous version (they fetch again when it is due).
    fn publish(&mut self, shared: &mut dyn SharedData, body: Option<&[u8]>) {
        if let Some(b) = body {
            let _ = shared.set(&self.jwks_key(), b, None);
        }
        let _ = shared.set(&self.meta_key(), &self.record.encode(), None);
    }

    fn fail(&mut self, now_ms: u64, shared: &mut dyn SharedData, reason: String) {
        self.in_flight = None;
        if let Some((b, _)) = shared.get(&self.meta_key())
            && let Some(rec) = Record::decode(&b)
        {
            self.record = rec;
        }
        self.record.last_attempt_ms = now_ms;
        self.record.failures = self.record.failures.saturating_add(1);
        self.publish(shared, None);
        self.release(shared);
        self.events.push(Event::FetchFailed { reason });
    }

    /// The response to the fetch this worker dispatched, as the glue read it (body capped at
    /// `max_body_bytes`). May return the next request (the JWKS after discovery).
    pub fn on_call(
        &mut self,
        now_ms: u64,
        shared: &mut dyn SharedData,
        response: Result<CallResponse, CallError>,
    ) -> Option<Fetch> {
        match response {
            Ok(r) => self.on_response(now_ms, shared, Some(u32::from(r.status)), Some(&r.body)),
            Err(CallError::BodyTooLarge { size, .. }) => {
                let what = match self.in_flight?.phase {
                    Phase::Discovery => "OIDC discovery",
                    Phase::Jwks => "JWKS fetch",
                };
                self.fail(now_ms, shared, format!("{what}: body of {size} bytes exceeds max_body_bytes"));
                None
            }
            Err(CallError::NoResponse | CallError::NoStatus) => self.on_response(now_ms, shared, None, None),
        }
    }

    /// The response to the fetch this worker dispatched: `status` is `None` when the call failed or
    /// timed out. May return the next request (the JWKS after discovery).
    pub fn on_response(
        &mut self,
        now_ms: u64,
        shared: &mut dyn SharedData,
        status: Option<u32>,
        body: Option<&[u8]>,
    ) -> Option<Fetch> {
        let f = self.in_flight?;
        let what = if f.phase == Phase::Discovery { "OIDC discovery" } else { "JWKS fetch" };
        let body = match (status, body) {
            (None, _) => {
                self.fail(now_ms, shared, format!("{what}: no response (cluster `{}`)", self.plan.cluster));
                return None;
            }
            (Some(200), Some(b)) if b.len() <= self.plan.max_body_bytes => b,
            (Some(200), Some(b)) => {
                self.fail(
                    now_ms,
                    shared,
                    format!("{what}: body of {} bytes exceeds max_body_bytes", b.len()),
                );
                return None;
            }
            (Some(s), _) => {
                self.fail(now_ms, shared, format!("{what}: HTTP status {s}"));
                return None;
            }
        };
        match f.phase {
            Phase::Discovery => match discovery_jwks_uri(body, self.issuer.as_deref()) {
                Ok((authority, path)) => {
                    self.jwks_target = Some((authority, path));
                    Some(self.start(now_ms))
                }
                Err(e) => {
                    self.fail(now_ms, shared, format!("OIDC discovery: {e}"));
                    None
                }
            },
            Phase::Jwks => {
                match parse_remote_jwks(body) {
                    Ok(set) => {
                        self.in_flight = None;
                        let n = set.keys.len();
                        let prev = shared.get(&self.meta_key()).and_then(|(b, _)| Record::decode(&b));
                        let version =
                            prev.map_or(self.record.version, |r| r.version.max(self.record.version)) + 1;
                        self.record =
                            Record { version, fetched_at_ms: now_ms, last_attempt_ms: now_ms, failures: 0 };
                        self.publish(shared, Some(body));
                        self.release(shared);
                        self.install(set);
                        self.events.push(Event::Fetched { keys: n });
                    }
                    Err(e) => self.fail(now_ms, shared, format!("JWKS unusable: {e}")),
                }
                None
            }
        }
    }
}

/// The JWKS location from an OIDC discovery document; its `issuer` must equal the configured one.
fn discovery_jwks_uri(body: &[u8], issuer: Option<&str>) -> Result<(String, String), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(iss) = issuer {
        let got = v.get("issuer").and_then(serde_json::Value::as_str).unwrap_or_default();
        if got.trim_end_matches('/') != iss.trim_end_matches('/') {
            return Err(format!("document issuer `{got}` differs from the configured issuer"));
        }
    }
    let uri = v.get("jwks_uri").and_then(serde_json::Value::as_str).ok_or("no `jwks_uri`")?;
    split_url(uri).ok_or_else(|| format!("jwks_uri `{uri}` is not an http(s) URL"))
}

#[cfg(test)]
mod tests {
    use meshwasm_filter_runtime::shared_data::MemoryShared;

    use super::*;
    use crate::config::Plan;

    const JWKS1: &[u8] = br#"{"keys":[{"kty":"EC","kid":"k1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    const JWKS2: &[u8] = br#"{"keys":[{"kty":"EC","kid":"k2","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn plan(remote: &str) -> RemotePlan {
        let cfg =
            format!(r#"{{"providers":{{"p":{{"issuer":"https://idp.test","remote_jwks":{remote}}}}}}}"#);
        Plan::from_json(cfg.as_bytes()).unwrap().providers.remove(0).remote.unwrap()
    }

    fn store(id: u64) -> RemoteKeys {
        RemoteKeys::new(
            plan(
                r#"{"cluster":"idp","uri":"https://idp.test/jwks","cache_duration_s":100,"max_stale_s":50,"unknown_kid_refetch_interval_s":30,"retry_interval_s":5}"#,
            ),
            Some("https://idp.test".into()),
            None,
            id,
        )
    }

    /// The first fetch of a proxy: the claim creates the lease key, so it holds from the next tick.
    fn first_fetch(s: &mut RemoteKeys, shared: &mut MemoryShared, now: u64) -> Fetch {
        assert!(s.poll(now, shared).is_none(), "a created lease is confirmed on a later tick");
        s.poll(now + 1, shared).unwrap()
    }

    fn kid(s: &RemoteKeys) -> Vec<String> {
        s.keys().map(|k| k.keys.iter().filter_map(|k| k.kid.clone()).collect()).unwrap_or_default()
    }

    #[test]
    fn one_fetch_shared_by_all_workers() {
        let mut shared = MemoryShared::default();
        let mut w: Vec<RemoteKeys> = (1..=4).map(store).collect();
        let claims: Vec<Option<Fetch>> = w.iter_mut().map(|s| s.poll(0, &mut shared)).collect();
        assert!(claims.iter().all(Option::is_none), "the first claim is confirmed on the next tick");
        let fetches: Vec<Option<Fetch>> = w.iter_mut().map(|s| s.poll(250, &mut shared)).collect();
        assert_eq!(fetches.iter().filter(|f| f.is_some()).count(), 1, "only the lease holder fetches");
        let f = fetches[0].clone().unwrap();
        assert_eq!((f.cluster.as_str(), f.authority.as_str(), f.path.as_str()), ("idp", "idp.test", "/jwks"));
        assert_eq!(w[1].state(), State::Loading);
        assert!(w[0].on_response(10, &mut shared, Some(200), Some(JWKS1)).is_none());
        assert_eq!(kid(&w[0]), ["k1"]);
        for s in &mut w[1..] {
            assert!(s.poll(20, &mut shared).is_none());
            assert_eq!(kid(s), ["k1"]);
            assert_eq!(s.state(), State::Ready);
        }
    }

    #[test]
    fn two_workers_creating_the_lease_together_fetch_once() {
        // Both read "absent" before either writes, and both create the lease key (creation is not
        // CAS-protected). The old lease read its claim straight back, so both fetched.
        let shared = MemoryShared::default();
        let (mut sa, mut sb) = (shared.clone(), shared.clone());
        let (mut a, mut b) = (store(1), store(2));
        let mut fetches = Vec::new();
        fetches.push(a.poll(0, &mut sa));
        shared.remove(a.lease.key()); // as if b's read happened before a's write
        fetches.push(b.poll(0, &mut sb));
        fetches.push(a.poll(250, &mut sa));
        fetches.push(b.poll(250, &mut sb));
        assert_eq!(fetches.iter().filter(|f| f.is_some()).count(), 1, "{fetches:?}");
        assert!(fetches[3].is_some(), "the later write won the lease");
        assert!(a.unknown_kid(300, &mut sa), "a waits for b's fetch");
        assert!(a.poll(300, &mut sa).is_none());
    }

    #[test]
    fn a_prepared_lease_fetches_on_the_first_tick() {
        let mut shared = MemoryShared::default();
        let mut w: Vec<RemoteKeys> = (1..=3).map(store).collect();
        for s in &w {
            s.prepare(&mut shared);
        }
        let fetches: Vec<Option<Fetch>> = w.iter_mut().map(|s| s.poll(0, &mut shared)).collect();
        assert!(fetches[0].is_some(), "the first claim is a CAS over the prepared key");
        assert_eq!(fetches.iter().filter(|f| f.is_some()).count(), 1, "only the lease holder fetches");
    }

    #[test]
    fn refresh_before_expiry_and_stale_on_error() {
        let mut shared = MemoryShared::default();
        let mut s = store(1);
        first_fetch(&mut s, &mut shared, 0);
        s.on_response(0, &mut shared, Some(200), Some(JWKS1));
        assert!(s.poll(89_000, &mut shared).is_none(), "fresh");
        assert!(s.poll(90_000, &mut shared).is_some(), "refresh at 90% of cache_duration");
        s.on_response(90_100, &mut shared, Some(500), None);
        assert!(matches!(s.events.last(), Some(Event::FetchFailed { .. })));
        assert_eq!(kid(&s), ["k1"], "old keys kept");
        assert!(s.poll(94_000, &mut shared).is_none(), "retry waits retry_interval");
        let f = s.poll(95_200, &mut shared);
        assert!(f.is_some());
        s.on_response(95_300, &mut shared, None, None);
        // 2nd failure: backoff doubles to 10 s.
        assert!(s.poll(100_000, &mut shared).is_none());
        assert!(s.poll(105_400, &mut shared).is_some());
        s.on_response(105_500, &mut shared, Some(200), Some(b"{not json"));
        assert_eq!(kid(&s), ["k1"]);
        // Past cache_duration + max_stale (150 s) without success: dropped, unavailable.
        s.sync(150_001, &shared);
        assert!(s.keys().is_none());
        assert_eq!(s.state(), State::Unavailable);
        assert!(s.events.contains(&Event::Expired));
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited_proxy_wide() {
        let mut shared = MemoryShared::default();
        let mut a = store(1);
        let mut b = store(2);
        first_fetch(&mut a, &mut shared, 0);
        a.on_response(0, &mut shared, Some(200), Some(JWKS1));
        b.poll(0, &mut shared);
        // Within the interval after the last fetch: no refetch, the token is refused.
        assert!(!b.unknown_kid(10_000, &mut shared));
        assert!(b.poll(10_000, &mut shared).is_none());
        // After it: one refetch for the flood, whichever worker sees it.
        assert!(b.unknown_kid(31_000, &mut shared));
        let f = b.poll(31_000, &mut shared);
        assert!(f.is_some());
        assert!(a.unknown_kid(31_500, &mut shared), "a waits for b's fetch in flight");
        assert!(a.poll(31_500, &mut shared).is_none(), "a does not fetch too");
        b.on_response(31_600, &mut shared, Some(200), Some(JWKS2));
        assert!(a.sync(31_700, &shared));
        assert_eq!(kid(&a), ["k2"]);
        assert!(!a.unknown_kid(40_000, &mut shared), "next refetch only after the interval");
        let mut fetches = 0;
        for t in (40_000..61_000).step_by(100) {
            if a.unknown_kid(t, &mut shared) && a.poll(t, &mut shared).is_some() {
                fetches += 1;
                a.on_response(t, &mut shared, Some(200), Some(JWKS2));
            }
        }
        assert_eq!(fetches, 0);
        assert!(a.unknown_kid(61_600, &mut shared));
        assert!(a.poll(61_600, &mut shared).is_some());
    }

    #[test]
    fn keys_fetched_by_another_worker_are_used_not_refused() {
        // A rotation: b fetches the new keys for its unknown kid; a sees a new-kid token before its
        // tick has synced them. Refusing it under the rate limit gave a burst of 401s per rotation.
        let mut shared = MemoryShared::default();
        let (mut a, mut b) = (store(1), store(2));
        first_fetch(&mut a, &mut shared, 0);
        a.on_response(0, &mut shared, Some(200), Some(JWKS1));
        b.poll(0, &mut shared);
        assert!(b.unknown_kid(40_000, &mut shared));
        assert!(b.poll(40_000, &mut shared).is_some());
        b.on_response(40_100, &mut shared, Some(200), Some(JWKS2));
        assert!(a.unknown_kid(40_200, &mut shared), "a waits for the keys it just installed");
        assert_eq!(kid(&a), ["k2"]);
        assert!(a.events.iter().any(Event::changes_keys), "the tick wakes the waiting request");
        assert!(a.poll(40_300, &mut shared).is_none(), "no second fetch");
    }

    #[test]
    fn a_refetch_answered_by_another_worker_is_not_repeated_later() {
        // Both workers ask for a refetch; b wins the lease. a's request must not stay pending and
        // fire one interval later: that fetch would push the rate limit past the next rotation.
        let mut shared = MemoryShared::default();
        let (mut a, mut b) = (store(1), store(2));
        first_fetch(&mut a, &mut shared, 0);
        a.on_response(0, &mut shared, Some(200), Some(JWKS1));
        b.poll(0, &mut shared);
        assert!(a.unknown_kid(40_000, &mut shared));
        assert!(b.unknown_kid(40_000, &mut shared));
        assert!(b.poll(40_000, &mut shared).is_some());
        assert!(a.poll(40_000, &mut shared).is_none(), "b holds the lease");
        b.on_response(40_100, &mut shared, Some(200), Some(JWKS2));
        for t in (40_200..=75_000).step_by(100) {
            assert!(a.poll(t, &mut shared).is_none(), "a fetched again at {t} ms");
        }
        // The next rotation, 60 s after the last: its unknown kid is refetched at once.
        assert!(a.unknown_kid(100_100, &mut shared));
        assert!(a.poll(100_100, &mut shared).is_some());
    }

    #[test]
    fn first_load_failure_is_unavailable_then_recovers() {
        let mut shared = MemoryShared::default();
        let mut s = store(1);
        assert_eq!(s.state(), State::Loading);
        first_fetch(&mut s, &mut shared, 0);
        s.on_response(100, &mut shared, Some(503), Some(b""));
        assert_eq!(s.state(), State::Unavailable);
        s.poll(5_200, &mut shared).unwrap();
        s.on_response(5_300, &mut shared, Some(200), Some(JWKS1));
        assert_eq!(s.state(), State::Ready);
    }

    #[test]
    fn oidc_discovery_then_jwks() {
        let mut shared = MemoryShared::default();
        let mut s = RemoteKeys::new(plan(r#"{"cluster":"idp"}"#), Some("https://idp.test".into()), None, 1);
        let f = first_fetch(&mut s, &mut shared, 0);
        assert_eq!(f.path, "/.well-known/openid-configuration");
        let doc = br#"{"issuer":"https://idp.test","jwks_uri":"https://keys.idp.test/oauth/jwks"}"#;
        let f2 = s.on_response(1, &mut shared, Some(200), Some(doc)).unwrap();
        assert_eq!((f2.authority.as_str(), f2.path.as_str()), ("keys.idp.test", "/oauth/jwks"));
        s.on_response(2, &mut shared, Some(200), Some(JWKS1));
        assert_eq!(kid(&s), ["k1"]);
        // A discovery document for another issuer is refused.
        let mut s = RemoteKeys::new(plan(r#"{"cluster":"idp"}"#), Some("https://idp.test".into()), None, 1);
        let mut shared = MemoryShared::default();
        first_fetch(&mut s, &mut shared, 0);
        let evil = br#"{"issuer":"https://evil","jwks_uri":"https://evil/jwks"}"#;
        assert!(s.on_response(1, &mut shared, Some(200), Some(evil)).is_none());
        assert_eq!(s.state(), State::Unavailable);
    }

    #[test]
    fn every_key_change_is_an_invalidating_event_on_every_worker() {
        let mut shared = MemoryShared::default();
        let mut fetcher = store(1);
        let mut other = store(2);
        first_fetch(&mut fetcher, &mut shared, 0);
        fetcher.on_response(10, &mut shared, Some(200), Some(JWKS1));
        other.poll(20, &mut shared);
        // The fetching worker sees only `Fetched`; it must invalidate as the others do on `Installed`.
        assert_eq!(fetcher.events, vec![Event::Fetched { keys: 1 }]);
        assert!(matches!(other.events[..], [Event::Installed { version: 1, keys: 1 }]));
        assert!(fetcher.events.iter().chain(&other.events).all(Event::changes_keys));
        assert!(!Event::FetchFailed { reason: String::new() }.changes_keys());
        assert!(Event::Expired.changes_keys());
    }

    #[test]
    fn symmetric_keys_in_a_remote_jwks_are_never_installed() {
        let mut shared = MemoryShared::default();
        let mut s = store(1);
        let mixed = br#"{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
            {"kty":"EC","kid":"k1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        first_fetch(&mut s, &mut shared, 0);
        s.on_response(1, &mut shared, Some(200), Some(mixed));
        assert_eq!(kid(&s), ["k1"], "the oct key is dropped by the fetching worker");
        let mut other = store(2);
        other.poll(2, &mut shared);
        assert_eq!(kid(&other), ["k1"], "and by the workers that install the published JWKS");
        // A JWKS with only a shared secret is unusable (not installed).
        let mut s = store(3);
        let mut shared = MemoryShared::default();
        first_fetch(&mut s, &mut shared, 0);
        let only_oct =
            br#"{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;
        s.on_response(1, &mut shared, Some(200), Some(only_oct));
        assert!(s.keys().is_none());
        assert!(
            matches!(s.events.last(), Some(Event::FetchFailed { reason }) if reason.contains("no usable")),
            "{:?}",
            s.events
        );
    }

    #[test]
    fn call_errors_fail_the_fetch() {
        let mut shared = MemoryShared::default();
        let mut s = RemoteKeys::new(
            plan(r#"{"cluster":"idp","uri":"https://idp.test/jwks","max_body_bytes":256}"#),
            None,
            None,
            1,
        );
        first_fetch(&mut s, &mut shared, 0);
        s.on_call(2, &mut shared, Err(CallError::BodyTooLarge { size: 9_999, cap: 256 }));
        assert!(
            matches!(&s.events[..], [Event::FetchFailed { reason }] if reason == "JWKS fetch: body of 9999 bytes exceeds max_body_bytes"),
            "{:?}",
            s.events
        );
        assert!(!s.is_fetching());
        s.poll(5_100, &mut shared).unwrap();
        s.on_call(5_200, &mut shared, Err(CallError::NoResponse));
        assert!(matches!(&s.events[1], Event::FetchFailed { reason } if reason.contains("no response")));
        s.poll(15_300, &mut shared).unwrap();
        let ok = CallResponse { status: 200, headers: Vec::new(), body: JWKS1.to_vec() };
        s.on_call(15_400, &mut shared, Ok(ok));
        assert_eq!(kid(&s), ["k1"]);
    }

    #[test]
    fn oversized_body_is_refused() {
        let mut shared = MemoryShared::default();
        let mut s = RemoteKeys::new(
            plan(r#"{"cluster":"idp","uri":"https://idp.test/jwks","max_body_bytes":256}"#),
            None,
            None,
            1,
        );
        first_fetch(&mut s, &mut shared, 0);
        let big = vec![b' '; 300];
        s.on_response(1, &mut shared, Some(200), Some(&big));
        assert!(matches!(&s.events[0], Event::FetchFailed { reason } if reason.contains("max_body_bytes")));
    }
}
