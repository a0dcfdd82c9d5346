//! proxy-wasm glue: maps Envoy callbacks onto [`TokenSource`]. Compiled for wasm32 only.
//!
//! One `Worker` per root context (per Envoy worker thread), shared with that worker's HTTP contexts.
//! The token request is dispatched from whichever context needs it first (a request, or the root's
//! tick for background refresh); its response is forwarded to the `Worker` whichever context receives
//! it. A request waiting for a token is paused and resumed (or answered 503) from the callback that
//! settles it, through `set_effective_context`. The tick (100 ms) ends waits that run past
//! `max_wait_ms`, polls shared data for tokens fetched by other workers, and refreshes ahead of expiry.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::Plan;
use crate::source::{FetchReport, SharedStore, State, StoreError, TokenSource, Waiters};
use crate::token::{FetchError, MAX_RESPONSE_BYTES, TokenRequest, parse_token_response};

const WORKER_SEQ_KEY: &str = "meshwasm.token-injector.v1.worker-seq";
const TICK: Duration = Duration::from_millis(100);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("meshwasm token-injector: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, worker: None })
    });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Shared data through the proxy-wasm hostcalls.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => (value, cas),
            Err(_) => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Unavailable),
        }
    }
}

struct Metrics {
    injected: Option<u32>,
    skipped: Option<u32>,
    paused: Option<u32>,
    unavailable: Option<u32>,
    fetches: Option<u32>,
    fetch_failures: Option<u32>,
}

impl Metrics {
    fn new() -> Self {
        let c = |name: &str| {
            hostcalls::define_metric(MetricType::Counter, &format!("meshwasm_token_injector.{name}")).ok()
        };
        Metrics {
            injected: c("injected"),
            skipped: c("skipped"),
            paused: c("paused"),
            unavailable: c("unavailable"),
            fetches: c("fetches"),
            fetch_failures: c("fetch_failures"),
        }
    }
}

fn bump(metric: Option<u32>, by: usize) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, by as i64);
    }
}

/// Per-worker state shared by the root and HTTP contexts.
struct Worker {
    plan: Rc<Plan>,
    request: TokenRequest,
    source: TokenSource,
    waiters: Waiters,
    metrics: Metrics,
    /// The outstanding token call, if this worker dispatched one.
    call: Option<u32>,
    /// The context that dispatched it (the proxy cancels a stream's calls when the stream ends).
    call_owner: u32,
}

impl Worker {
    /// Dispatches the token request (this worker holds the lease) from context `owner`.
    fn dispatch(&mut self, now: u64, owner: u32) {
        let ep = &self.plan.config.token_endpoint;
        let result = hostcalls::dispatch_http_call(
            &ep.cluster,
            self.request.header_refs(),
            Some(&self.request.body),
            vec![],
            Duration::from_millis(ep.timeout_ms),
        );
        bump(self.metrics.fetches, 1);
        match result {
            Ok(token) => {
                self.call = Some(token);
                self.call_owner = owner;
            }
            Err(status) => {
                let error = FetchError::Unreachable(format!(
                    "cannot dispatch to cluster `{}` ({status:?}; is the cluster defined?)",
                    ep.cluster
                ));
                self.finish_fetch(now, Err(error));
            }
        }
    }

    /// Publishes a fetch result and logs it.
    fn finish_fetch(&mut self, now: u64, result: Result<crate::token::Token, FetchError>) {
        self.call = None;
        match self.source.on_fetch_result(now, &mut HostStore, result) {
            FetchReport::Obtained { log_id, lifetime_s } => log(
                LogLevel::Info,
                &format!(
                    "meshwasm token-injector: worker {}: obtained token {log_id}… (expires in {lifetime_s} s)",
                    self.source.worker()
                ),
            ),
            FetchReport::Failed { error, consecutive, retry_in_ms } => {
                bump(self.metrics.fetch_failures, 1);
                log(
                    LogLevel::Warn,
                    &format!(
                        "meshwasm token-injector: worker {}: no access token from `{}`: {error} \
                         (failure {consecutive} in a row; next attempt in {retry_in_ms} ms)",
                        self.source.worker(),
                        self.plan.config.token_endpoint.cluster
                    ),
                );
            }
        }
    }

    /// The response of the token call `token_id`, received by context `current` of this worker.
    fn on_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, current: u32) {
        if self.call != Some(token_id) {
            return;
        }
        let now = now_ms();
        let result = if num_headers == 0 {
            // Envoy answers a failed or timed-out call with no headers.
            Err(FetchError::Unreachable("no response (connection failure or timeout)".into()))
        } else {
            let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u32>().ok()))
                .unwrap_or(0);
            if body_size > MAX_RESPONSE_BYTES {
                Err(FetchError::Malformed(format!(
                    "{body_size} bytes is over the {MAX_RESPONSE_BYTES}-byte cap"
                )))
            } else {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                parse_token_response(status, &body)
            }
        };
        self.finish_fetch(now, result);
        self.settle_waiters(now, current);
    }

    /// Resumes or fails paused requests once their token question is settled; `current` is the
    /// context whose callback runs (a new fetch is dispatched from it).
    fn settle_waiters(&mut self, now: u64, current: u32) {
        let expired = self.waiters.take_expired(now, self.plan.max_wait_ms);
        if !expired.is_empty() {
            let msg = format!("timed out after {} ms waiting for an access token", self.plan.max_wait_ms);
            self.fail(&expired, &msg);
        }
        if self.waiters.is_empty() {
            return;
        }
        let poll = self.source.poll_for_request(now, &mut HostStore);
        if poll.start_fetch {
            self.dispatch(now, current);
        }
        // A synchronous dispatch failure settled the question already: poll again.
        let state = if poll.start_fetch && !self.source.fetching() {
            self.source.poll_for_request(now, &mut HostStore).state
        } else {
            poll.state
        };
        match state {
            State::Pending => {}
            State::Ready(value) => {
                let ids = self.waiters.take_all();
                for id in &ids {
                    if hostcalls::set_effective_context(*id).is_ok() {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            &self.plan.header,
                            Some(&value),
                        );
                        let _ = hostcalls::resume_http_request();
                    }
                }
                bump(self.metrics.injected, ids.len());
            }
            State::Unavailable(msg) => {
                let ids = self.waiters.take_all();
                self.fail(&ids, &msg);
            }
        }
    }

    fn fail(&self, ids: &[u32], reason: &str) {
        for id in ids {
            if hostcalls::set_effective_context(*id).is_ok() {
                send_unavailable(reason);
            }
        }
        bump(self.metrics.unavailable, ids.len());
    }
}

fn send_unavailable(reason: &str) {
    let body = format!("meshwasm token-injector: no access token available: {reason}\n");
    let _ = hostcalls::send_http_response(
        503,
        vec![("content-type", "text/plain; charset=utf-8"), ("x-meshwasm-token-injector", "no-token")],
        Some(body.as_bytes()),
    );
}

struct Root {
    context_id: u32,
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Root {
    /// A proxy-wide unique worker number (root context ids repeat per worker): a shared counter in the
    /// high 32 bits and 32 random bits below. The counter alone is not enough: while the key is absent
    /// there is no CAS token to check, and Envoy treats a missing (0) CAS as an unconditional write, so
    /// two workers starting together could both write 1 and then share lease ownership.
    fn next_worker_id() -> u64 {
        let low = random_u32();
        for _ in 0..64 {
            let (value, cas) = hostcalls::get_shared_data(WORKER_SEQ_KEY).unwrap_or((None, None));
            let n = value
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
                .wrapping_add(1);
            if hostcalls::set_shared_data(WORKER_SEQ_KEY, Some(&n.to_le_bytes()), cas).is_ok() {
                return (n << 32) | u64::from(low);
            }
        }
        // Contention this long never happens in practice; the random bits alone then tell workers apart.
        (u64::from(random_u32()) << 32) | u64::from(low)
    }
}

/// 32 random bits: std seeds its hash keys from WASI `random_get`, which Envoy and the meshwasm host
/// provide; the clock is mixed in as well.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    let x = h.finish();
    (x ^ (x >> 32)) as u32
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _: usize) {
        if let Some(w) = &self.worker {
            w.borrow_mut().on_call_response(token_id, num_headers, body_size, self.context_id);
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let plan = match Plan::from_json(&raw) {
            Ok(p) => Rc::new(p),
            Err(e) => {
                log(LogLevel::Error, &format!("meshwasm token-injector: rejected configuration: {e}"));
                return false;
            }
        };
        for w in &plan.warnings {
            log(LogLevel::Warn, &format!("meshwasm token-injector: {w}"));
        }
        // Create the shared record so the lease is always taken by compare-and-swap.
        if let Ok((None, _)) = hostcalls::get_shared_data(&plan.shared_key) {
            let _ = hostcalls::set_shared_data(&plan.shared_key, Some(b"{}"), None);
        }
        let worker_id = Self::next_worker_id();
        log(
            LogLevel::Info,
            &format!(
                "meshwasm token-injector: worker {worker_id}: client `{}` at cluster `{}` {}, header `{}`",
                plan.config.client_id,
                plan.config.token_endpoint.cluster,
                plan.config.token_endpoint.path,
                plan.header
            ),
        );
        self.worker = Some(Rc::new(RefCell::new(Worker {
            request: TokenRequest::new(&plan),
            source: TokenSource::new(plan.clone(), worker_id),
            waiters: Waiters::default(),
            metrics: Metrics::new(),
            call: None,
            call_owner: 0,
            plan,
        })));
        let _ = hostcalls::set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let Some(w) = &self.worker else { return };
        let mut w = w.borrow_mut();
        let now = now_ms();
        if w.source.fetch_overdue(now) {
            w.finish_fetch(now, Err(FetchError::Timeout));
        }
        if !w.waiters.is_empty() {
            w.settle_waiters(now, self.context_id);
        } else if w.source.has_token() && !w.source.fetching() {
            // Background refresh ahead of expiry, so requests never wait for it.
            let poll = w.source.poll(now, &mut HostStore);
            if poll.start_fetch {
                w.dispatch(now, self.context_id);
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
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
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _: usize) {
        if let Some(w) = &self.worker {
            w.borrow_mut().on_call_response(token_id, num_headers, body_size, self.context_id);
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    fn on_done(&mut self) -> bool {
        if let Some(w) = &self.worker {
            let mut w = w.borrow_mut();
            w.waiters.remove(self.context_id);
            if w.call.is_some() && w.call_owner == self.context_id {
                // This stream's call dies with it: the root's next tick fetches again (from the root
                // context, whose calls live on), for the requests still waiting.
                w.call = None;
                w.source.abandon_fetch(&mut HostStore);
            }
        }
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(w) = &self.worker else { return Action::Continue };
        let mut w = w.borrow_mut();
        if !w.plan.matcher.matches_all() {
            let authority = self.get_http_request_header_bytes(":authority").unwrap_or_default();
            let path = self.get_http_request_header_bytes(":path").unwrap_or_default();
            if !w.plan.matcher.matches(&authority, &path) {
                bump(w.metrics.skipped, 1);
                return Action::Continue;
            }
        }
        if !w.plan.config.overwrite_existing && self.get_http_request_header_bytes(&w.plan.header).is_some() {
            bump(w.metrics.skipped, 1);
            return Action::Continue;
        }
        let now = now_ms();
        let poll = w.source.poll_for_request(now, &mut HostStore);
        let mut state = poll.state;
        if poll.start_fetch {
            w.dispatch(now, self.context_id);
            if !w.source.fetching() {
                state = w.source.poll_for_request(now, &mut HostStore).state;
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
        match state {
            State::Ready(value) => {
                self.set_http_request_header(&w.plan.header, Some(&value));
                bump(w.metrics.injected, 1);
                Action::Continue
            }
            State::Pending => {
                w.waiters.push(self.context_id, now);
                bump(w.metrics.paused, 1);
                Action::Pause
            }
            State::Unavailable(msg) => {
                bump(w.metrics.unavailable, 1);
                send_unavailable(&msg);
                Action::Pause
            }
        }
    }
}
