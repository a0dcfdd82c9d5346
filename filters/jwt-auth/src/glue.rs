//! proxy-wasm glue: maps host callbacks onto the pure modules. Everything that decides lives elsewhere.
//!
//! - Root context: parses the configuration once into an `Rc<Plan>`, owns the per-worker state (key
//!   stores, token cache, waiting requests) shared with HTTP contexts through `Rc<RefCell<_>>`, ticks
//!   every 250 ms to sync keys from shared data, start fetches (only the root dispatches) and time out
//!   waiting requests.
//! - HTTP context: removes client-sent copies of output headers, runs the engine, applies the outcome.
//!   A paused request is resumed (or answered) by the root with `set_effective_context`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use meshwasm_filter_runtime::call_response::CallError;
use meshwasm_filter_runtime::glue::{
    HostShared, Metrics, define, increment, log, now_ms, plugin_config, random_u64, read_call_response,
    record,
};
use meshwasm_filter_runtime::worker_id;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::cache::TokenCache;
use crate::config::Plan;
use crate::credentials::{combined_header, parse_header_pairs, strip_cookie_headers};
use crate::engine::{
    Counters, IntroResult, KeyAccess, Keys, Outcome, Request, evaluate, internal_error, wait_timeout,
};
use crate::introspection::{IntrospectionError, MAX_RESPONSE_BYTES, parse_response, token_log_id};
use crate::introspection_state::{IntrospectionState, Lookup};
use crate::jwks::KeySet;
use crate::keystore::{Event, Fetch, RemoteKeys};
use crate::waiters::Waiters;

const TICK: Duration = Duration::from_millis(250);
/// Shared-data counter behind the worker ids (the high half of each, see `worker_id`).
const WORKER_IDS_KEY: &str = "meshwasm.jwt-auth.v1.worker-ids";

// The filter's own `.wasm` entry point; off (feature `standalone`) when linked into the combined
// meshwasm.wasm, whose entry point selects this filter by root_id through [`root_context`].
#[cfg(feature = "standalone")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    meshwasm_filter_runtime::glue::install_panic_hook("jwt-auth");
    proxy_wasm::set_root_context(root_context);
}}

/// This filter's root context (one per plugin and worker).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root { worker: None })
}

struct ProviderKeys {
    static_keys: Option<KeySet>,
    remote: Option<RemoteKeys>,
    intro: Option<IntrospectionState>,
}

/// What an outstanding `dispatch_http_call` was for, and when it was dispatched (ms, for the latency
/// histograms).
enum CallKind {
    Jwks {
        provider: usize,
        started_ms: u64,
    },
    /// The token is kept only until the answer arrives (to key the cache); never logged.
    Intro {
        provider: usize,
        token: String,
        started_ms: u64,
    },
}

/// Histograms, defined once at configure time (only those the configuration can record into).
struct Latency {
    /// `meshwasm_jwt_auth.jwks_fetch_latency_ms`: dispatch to answer (or failure) of every remote-keys
    /// call (a JWKS or an OIDC discovery document).
    jwks_ms: Option<u32>,
    /// `meshwasm_jwt_auth.introspection_latency_ms`: dispatch to answer (or failure) of every
    /// introspection call.
    introspection_ms: Option<u32>,
}

struct Worker {
    plan: Rc<Plan>,
    keys: Vec<ProviderKeys>,
    cache: TokenCache,
    waiters: Waiters,
    calls: HashMap<u32, CallKind>,
    metrics: Metrics,
    /// The per-request counters' ids, looked up once.
    hot: HotCounters,
    latency: Latency,
}

/// Counters that move on every request, by id (no lookup by name per request).
struct HotCounters {
    allowed: Option<u32>,
    passed: Option<u32>,
    paused: Option<u32>,
    cache_hits: Option<u32>,
    verifications: Option<u32>,
}

impl HotCounters {
    /// Defined at configure time, with the other counters (`Metrics` keeps those).
    fn define() -> Self {
        let id = |name: &str| define(MetricType::Counter, name);
        HotCounters {
            allowed: id("meshwasm_jwt_auth.allowed"),
            passed: id("meshwasm_jwt_auth.passed"),
            paused: id("meshwasm_jwt_auth.paused"),
            cache_hits: id("meshwasm_jwt_auth.cache_hits"),
            verifications: id("meshwasm_jwt_auth.verifications"),
        }
    }
}

fn bump(id: Option<u32>, by: u32) {
    if by > 0
        && let Some(id) = id
    {
        increment(id, u64::from(by));
    }
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// The request's header map as the host serializes it, in one buffer (see [`parse_header_pairs`]):
/// read in place instead of the SDK's two allocations per header. Empty when the host has none.
fn request_header_map() -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length into the two locals.
    let status =
        unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size) };
    if status != 0 || data.is_null() {
        return Vec::new();
    }
    // SAFETY: on success `data` holds `size` bytes the host obtained from this module's
    // `proxy_on_memory_allocate` (the SDK's: a boxed slice of exactly `size` bytes), now owned here,
    // exactly as the SDK's own `get_map_bytes` takes them.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// `proxy_set_property` at a single-segment path (which is the path's whole serialization), without
/// the SDK's per-call path buffer and without its panic when the host refuses: the status comes back.
fn set_property(name: &str, value: &[u8]) -> Result<(), u32> {
    // SAFETY: both pointers and lengths describe live slices for the duration of the call; the host
    // copies what it keeps.
    let status = unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    if status == 0 { Ok(()) } else { Err(status) }
}

/// The engine's view of this worker's keys. Unknown-kid refetches are started by the next tick.
struct Access<'a> {
    keys: &'a mut [ProviderKeys],
    calls: &'a mut HashMap<u32, CallKind>,
    now_ms: u64,
}

impl KeyAccess for Access<'_> {
    fn keys(&self, provider: usize) -> Keys<'_> {
        let Some(p) = self.keys.get(provider) else { return Keys::Unavailable };
        Keys::of(p.static_keys.as_ref(), p.remote.as_ref())
    }
    fn unknown_kid(&mut self, provider: usize) -> bool {
        match self.keys.get_mut(provider).and_then(|p| p.remote.as_mut()) {
            Some(r) => r.unknown_kid(self.now_ms, &mut HostShared),
            None => false,
        }
    }
    fn introspect(&mut self, provider: usize, token: &str) -> Option<IntroResult> {
        let now = self.now_ms;
        let Some(ip) = self.keys.get_mut(provider).and_then(|p| p.intro.as_mut()) else {
            return Some(Err(IntrospectionError::Unreachable("introspection is not configured".into())));
        };
        match ip.lookup(token, now) {
            Lookup::Answer(r) => return Some(r),
            Lookup::Wait => return None,
            Lookup::Call => {}
        }
        let (headers, body) = match ip.build_request(token, now, &mut meshwasm_oauth2::random_jti) {
            Ok(request) => request,
            Err(e) => return Some(Err(e)),
        };
        let cfg = ip.config();
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match hostcalls::dispatch_http_call(
            &cfg.cluster,
            pairs,
            Some(&body),
            vec![],
            Duration::from_millis(cfg.timeout_ms),
        ) {
            Ok(call) => {
                ip.started(token, now);
                self.calls
                    .insert(call, CallKind::Intro { provider, token: token.to_string(), started_ms: now });
                None
            }
            Err(e) => Some(Err(IntrospectionError::Unreachable(format!(
                "cannot call cluster `{}` ({e:?}); is it defined in Envoy?",
                cfg.cluster
            )))),
        }
    }
}

/// Rewrites every `cookie` request header without the token cookies (removing those left empty);
/// `all` is the request's header map as this callback read it.
fn strip_cookies_upstream(all: &[(&str, &[u8])], names: &[String]) {
    let values: Vec<&[u8]> =
        all.iter().filter(|(k, _)| k.eq_ignore_ascii_case("cookie")).map(|&(_, v)| v).collect();
    let Some(kept) = strip_cookie_headers(&values, names) else { return };
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, "cookie");
    for v in &kept {
        let _ = hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, "cookie", v);
    }
}

/// Sends a `Deny` outcome as the local reply of the current (effective) HTTP context.
fn send_reply(outcome: &Outcome) {
    let Outcome::Deny { status, www_authenticate, retry_after, body, .. } = outcome else { return };
    let retry = retry_after.map(|s| s.to_string());
    let mut headers = vec![("content-type", "text/plain")];
    if let Some(w) = www_authenticate {
        headers.push(("www-authenticate", w.as_str()));
    }
    if let Some(r) = &retry {
        headers.push(("retry-after", r.as_str()));
    }
    let _ = hostcalls::send_http_response(*status, headers, Some(body.as_bytes()));
}

impl Worker {
    /// Runs the engine for the current (effective) HTTP context and applies the outcome; a Wait records
    /// the request among the waiters, paused since `since_ms` (now for a new request).
    fn process(&mut self, context_id: u32, since_ms: Option<u64>) -> Outcome {
        let plan = self.plan.clone();
        // One read of the whole map: a credential header sent twice must be seen twice (the single-value
        // hostcall returns only the first copy).
        let buf = request_header_map();
        // A map the host did not serialize as proxy-wasm says (never from Envoy): read as empty, so
        // the request carries no credential, and every output header is removed below.
        let parsed = parse_header_pairs(&buf);
        let unreadable = parsed.is_none();
        let mut all = parsed.unwrap_or_default();
        // Client-sent copies of the headers this filter writes are removed before anything else looks
        // at the request; only those the request carries (no hostcall per configured name otherwise).
        if !plan.output_headers.is_empty() {
            let is_output = |k: &str| plan.output_headers.iter().any(|h| h.eq_ignore_ascii_case(k));
            if unreadable || all.iter().any(|(k, _)| is_output(k)) {
                let present = |h: &&String| unreadable || all.iter().any(|(k, _)| h.eq_ignore_ascii_case(k));
                for h in plan.output_headers.iter().filter(present) {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, h);
                }
                all.retain(|(k, _)| !is_output(k));
            }
        }
        let get = |n: &str| combined_header(&all, n);
        let method_b = get(":method").unwrap_or_default();
        let path_b = get(":path").unwrap_or_default();
        let method = String::from_utf8_lossy(&method_b);
        let path = String::from_utf8_lossy(&path_b);
        let req = Request { method: &method, path: &path, header: &get };
        let now = now_ms();
        let mut counters = Counters::default();
        let outcome = {
            let mut access = Access { keys: &mut self.keys, calls: &mut self.calls, now_ms: now };
            evaluate(&plan, &req, &mut access, &mut self.cache, now / 1000, &mut counters)
        };
        bump(self.hot.cache_hits, counters.cache_hits);
        bump(self.hot.verifications, counters.verifications);
        match &outcome {
            Outcome::Pass => bump(self.hot.passed, 1),
            Outcome::Allow { remove, set, path: new_path, strip_cookies, identity } => {
                // Encoded when the token was verified (and cached with it): only the bytes are copied.
                // A property Envoy refuses is simply absent later: authz then sees no principal (deny).
                for (k, v) in identity.iter() {
                    if let Err(status) = set_property(k, v) {
                        log(
                            LogLevel::Warn,
                            &format!("meshwasm jwt-auth: cannot hand on `{k}` (status {status})"),
                        );
                    }
                }
                for h in remove {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, h);
                }
                if let Some(p) = new_path {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(p));
                }
                // `all` is still the cookies' state unless a token header named `cookie` was removed
                // above, and then there is nothing left to strip.
                if !strip_cookies.is_empty() && !remove.iter().any(|h| h == "cookie") {
                    strip_cookies_upstream(&all, strip_cookies);
                }
                for (h, v) in set {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, h, Some(v));
                }
                bump(self.hot.allowed, 1);
            }
            Outcome::Deny { status, reason, detail, .. } => {
                self.metrics.inc(&format!("denied.{reason}"), 1);
                let level = if *status >= 500 { LogLevel::Warn } else { LogLevel::Debug };
                log(
                    level,
                    &format!(
                        "meshwasm jwt-auth: ctx {context_id}: {status} {reason}: {detail} (path {})",
                        path.split_once('?').map_or(&*path, |(p, _)| p)
                    ),
                );
                send_reply(&outcome);
            }
            Outcome::Wait { providers, on } => {
                bump(self.hot.paused, 1);
                self.waiters.wait(context_id, providers.clone(), *on, since_ms.unwrap_or(now));
            }
        }
        outcome
    }

    /// Re-runs waiting requests of these providers (keys changed or a fetch finished).
    fn wake(&mut self, providers: &[usize]) {
        for w in self.waiters.take_ready(providers) {
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue;
            }
            // Still waiting (a refetch in flight elsewhere) keeps the original start time.
            match self.process(w.context_id, Some(w.since_ms)) {
                Outcome::Pass | Outcome::Allow { .. } => {
                    let _ = hostcalls::resume_http_request();
                }
                Outcome::Deny { .. } | Outcome::Wait { .. } => {}
            }
        }
    }

    fn expire_waiters(&mut self, now: u64) {
        let timeout = self.plan.key_wait_timeout_ms;
        for w in self.waiters.take_expired(now, timeout) {
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue;
            }
            let reply = wait_timeout(w.on, timeout);
            if let Outcome::Deny { status, reason, detail, .. } = &reply {
                self.metrics.inc(&format!("denied.{reason}"), 1);
                log(
                    LogLevel::Warn,
                    &format!("meshwasm jwt-auth: ctx {}: {status} {reason}: {detail}", w.context_id),
                );
            }
            send_reply(&reply);
        }
    }

    fn dispatch(&mut self, provider: usize, f: &Fetch) -> bool {
        let headers = vec![
            (":method", "GET"),
            (":path", f.path.as_str()),
            (":authority", f.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", "meshwasm-jwt-auth"),
        ];
        match hostcalls::dispatch_http_call(
            &f.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(f.timeout_ms),
        ) {
            Ok(token) => {
                self.calls.insert(token, CallKind::Jwks { provider, started_ms: now_ms() });
                self.metrics.inc("jwks_fetches", 1);
                true
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!(
                        "meshwasm jwt-auth: provider `{}`: cannot reach cluster `{}` ({e:?}); is it defined in Envoy?",
                        self.plan.providers[provider].name, f.cluster
                    ),
                );
                false
            }
        }
    }

    fn drain_events(&mut self, provider: usize) {
        let Some(r) = self.keys.get_mut(provider).and_then(|p| p.remote.as_mut()) else { return };
        let events = std::mem::take(&mut r.events);
        let name = self.plan.providers[provider].name.clone();
        for e in events {
            // Every change of this worker's key set (including the keys it fetched itself) forgets the
            // provider's verified tokens.
            if e.changes_keys() {
                self.cache.invalidate(provider);
            }
            match e {
                Event::Installed { version, keys } => {
                    log(
                        LogLevel::Info,
                        &format!(
                            "meshwasm jwt-auth: provider `{name}`: keys v{version} installed ({keys} keys)"
                        ),
                    );
                }
                Event::Fetched { keys } => {
                    log(
                        LogLevel::Info,
                        &format!("meshwasm jwt-auth: provider `{name}`: fetched {keys} keys"),
                    );
                }
                Event::FetchFailed { reason } => {
                    self.metrics.inc("jwks_fetch_failures", 1);
                    log(LogLevel::Warn, &format!("meshwasm jwt-auth: provider `{name}`: {reason}"));
                }
                Event::Expired => {
                    log(
                        LogLevel::Error,
                        &format!(
                            "meshwasm jwt-auth: provider `{name}`: keys exceeded max_stale_s and were dropped"
                        ),
                    );
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = now_ms();
        let mut changed = Vec::new();
        for i in 0..self.keys.len() {
            let fetch = match self.keys[i].remote.as_mut() {
                Some(r) => {
                    let before = (r.state(), r.keys().map(|k| k as *const KeySet));
                    let fetch = r.poll(now, &mut HostShared);
                    if (r.state(), r.keys().map(|k| k as *const KeySet)) != before || !r.events.is_empty() {
                        changed.push(i);
                    }
                    fetch
                }
                None => None,
            };
            self.drain_events(i);
            if let Some(f) = fetch
                && !self.dispatch(i, &f)
                && let Some(r) = self.keys[i].remote.as_mut()
            {
                r.on_response(now, &mut HostShared, None, None);
                self.drain_events(i);
                changed.push(i);
            }
        }
        if !changed.is_empty() {
            self.wake(&changed);
        }
        self.expire_waiters(now);
    }

    fn on_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let now = now_ms();
        let provider = match self.calls.remove(&token) {
            None => return,
            Some(CallKind::Jwks { provider, started_ms }) => {
                record(self.latency.jwks_ms, now.saturating_sub(started_ms));
                provider
            }
            Some(CallKind::Intro { provider, token, started_ms }) => {
                record(self.latency.introspection_ms, now.saturating_sub(started_ms));
                self.on_introspection_response(provider, &token, num_headers, body_size);
                return;
            }
        };
        // The body cap of a JWKS or discovery document is the provider's `max_body_bytes`.
        let max =
            self.plan.providers.get(provider).and_then(|p| p.remote.as_ref()).map_or(0, |r| r.max_body_bytes);
        let response = read_call_response(num_headers, body_size, max);
        let next = match self.keys.get_mut(provider).and_then(|p| p.remote.as_mut()) {
            Some(r) => r.on_call(now, &mut HostShared, response),
            None => None,
        };
        self.drain_events(provider);
        if let Some(f) = next
            && !self.dispatch(provider, &f)
            && let Some(r) = self.keys[provider].remote.as_mut()
        {
            r.on_response(now, &mut HostShared, None, None);
            self.drain_events(provider);
        }
        self.wake(&[provider]);
    }
}

impl Worker {
    fn on_introspection_response(
        &mut self,
        provider: usize,
        token: &str,
        num_headers: usize,
        body_size: usize,
    ) {
        let now = now_ms();
        let result = match read_call_response(num_headers, body_size, MAX_RESPONSE_BYTES) {
            Ok(r) => parse_response(u32::from(r.status), &r.body),
            Err(CallError::NoResponse) => {
                Err(IntrospectionError::Unreachable("no response (timeout or connection failure)".into()))
            }
            Err(CallError::BodyTooLarge { size, .. }) => Err(IntrospectionError::TooLarge(size)),
            Err(e @ CallError::NoStatus) => Err(IntrospectionError::Unreachable(e.to_string())),
        };
        let name = self.plan.providers.get(provider).map(|p| p.name.clone()).unwrap_or_default();
        let Some(ip) = self.keys.get_mut(provider).and_then(|p| p.intro.as_mut()) else { return };
        let result: IntroResult = ip.finish(token, result, now);
        if let Err(e) = &result {
            log(
                LogLevel::Warn,
                &format!("meshwasm jwt-auth: provider `{name}`: token {}: {e}", token_log_id(token)),
            );
            self.metrics.inc("introspection_failures", 1);
        }
        self.metrics.inc("introspections", 1);
        self.wake(&[provider]);
    }
}

struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
}

/// An internal error on a request: the engine's 503 reply, `meshwasm_jwt_auth.denied.internal`
/// counted, never a pass.
fn reply_internal_error(context_id: u32, what: &str) {
    // Outside the worker (there may be none, or it is busy): defined here, once per call.
    if let Some(id) = define(MetricType::Counter, "meshwasm_jwt_auth.denied.internal") {
        increment(id, 1);
    }
    let reply = internal_error(what);
    if let Outcome::Deny { status, detail, .. } = &reply {
        log(LogLevel::Error, &format!("meshwasm jwt-auth: ctx {context_id}: {status}: {detail}"));
    }
    send_reply(&reply);
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(w) = &self.worker
            && let Ok(mut w) = w.try_borrow_mut()
        {
            w.on_call_response(token_id, num_headers, body_size);
        }
    }
}

/// A proxy-wide unique id for this worker's lease claims.
fn allocate_worker_id() -> u64 {
    worker_id::allocate(&mut HostShared, WORKER_IDS_KEY, random_u64())
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = plugin_config();
        let plan = match Plan::from_json(&bytes) {
            Ok(p) => Rc::new(p),
            Err(e) => {
                log(LogLevel::Error, &format!("meshwasm jwt-auth: rejected configuration: {e}"));
                return false;
            }
        };
        for w in &plan.warnings {
            log(LogLevel::Warn, &format!("meshwasm jwt-auth: {w}"));
        }
        let id = allocate_worker_id();
        let native = crate::native::install();
        let keys = plan
            .providers
            .iter()
            .map(|p| ProviderKeys {
                intro: p.introspection.clone().map(IntrospectionState::new),
                static_keys: p.static_keys.clone(),
                remote: p
                    .remote
                    .clone()
                    .map(|r| RemoteKeys::new(r, p.policy.issuer.clone(), p.static_keys.clone(), id)),
            })
            .collect::<Vec<_>>();
        for r in keys.iter().filter_map(|k| k.remote.as_ref()) {
            r.prepare(&mut HostShared);
        }
        let n_remote = plan.providers.iter().filter(|p| p.remote.is_some()).count();
        let plan_has_introspection = plan.providers.iter().any(|p| p.introspection.is_some());
        log(
            LogLevel::Info,
            &format!(
                "meshwasm jwt-auth: configured {} providers ({} remote), {} rules; RSA/ECDSA verification: {}",
                plan.providers.len(),
                n_remote,
                plan.rules.len(),
                if native { "host verify_signature foreign function" } else { "built-in" }
            ),
        );
        self.worker = Some(Rc::new(RefCell::new(Worker {
            cache: TokenCache::new(plan.cache_entries, plan.cache_max_ttl_s),
            plan,
            keys,
            waiters: Waiters::default(),
            calls: HashMap::new(),
            metrics: {
                let mut m = Metrics::new("meshwasm_jwt_auth");
                m.counters(&[
                    "jwks_fetches",
                    "jwks_fetch_failures",
                    "introspections",
                    "introspection_failures",
                ]);
                m
            },
            hot: HotCounters::define(),
            latency: Latency {
                jwks_ms: (n_remote > 0)
                    .then(|| define(MetricType::Histogram, "meshwasm_jwt_auth.jwks_fetch_latency_ms"))
                    .flatten(),
                introspection_ms: plan_has_introspection
                    .then(|| define(MetricType::Histogram, "meshwasm_jwt_auth.introspection_latency_ms"))
                    .flatten(),
            },
        })));
        // The tick refreshes remote keys and bounds every wait (`key_wait_timeout`), introspection
        // waits included.
        if n_remote > 0 || plan_has_introspection {
            let _ = hostcalls::set_tick_period(TICK);
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(w) = &self.worker
            && let Ok(mut w) = w.try_borrow_mut()
        {
            w.tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { context_id, worker: self.worker.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    context_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(w) = &self.worker
            && let Ok(mut w) = w.try_borrow_mut()
        {
            w.on_call_response(token_id, num_headers, body_size);
        }
    }
}

/// A stream waiting for keys leaves the waiter list when its context goes (on_delete drops it), so the
/// filter needs no on_done export: one VM entry less per request.
impl Drop for Http {
    fn drop(&mut self) {
        if let Some(w) = &self.worker
            && let Ok(mut w) = w.try_borrow_mut()
        {
            w.waiters.remove(self.context_id);
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(w) = &self.worker else {
            reply_internal_error(self.context_id, "jwt-auth is not configured");
            return Action::Pause;
        };
        // Fail closed: a request is never let through unchecked because the worker is busy.
        let Ok(mut w) = w.try_borrow_mut() else {
            reply_internal_error(self.context_id, "worker state is busy");
            return Action::Pause;
        };
        match w.process(self.context_id, None) {
            Outcome::Pass | Outcome::Allow { .. } => Action::Continue,
            Outcome::Deny { .. } | Outcome::Wait { .. } => Action::Pause,
        }
    }
}
