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
use std::time::Duration;

use meshwasm_filter_runtime::call_response::CallError;
use meshwasm_filter_runtime::glue::{
    HostShared, define, increment, log, now_ms, plugin_config, random_u64, read_call_response, record,
};
use meshwasm_filter_runtime::shared_data::SharedData;
use meshwasm_filter_runtime::worker_id;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::config::Plan;
use crate::source::{FetchReport, State, TokenSource, Waiters};
use crate::token::{FetchError, MAX_RESPONSE_BYTES, TokenRequest, parse_token_response};

/// Shared-data counter behind the worker ids (decimal; an older 8-byte value restarts it).
const WORKER_SEQ_KEY: &str = "meshwasm.token-injector.v1.worker-seq";
const TICK: Duration = Duration::from_millis(100);

// The filter's own `.wasm` entry point; off (feature `standalone`) when linked into the combined
// meshwasm.wasm, whose entry point selects this filter by root_id through [`root_context`].
#[cfg(feature = "standalone")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    meshwasm_filter_runtime::glue::install_panic_hook("token-injector");
    proxy_wasm::set_root_context(root_context);
}}

/// This filter's root context (one per plugin and worker).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root { context_id, worker: None })
}

struct Metrics {
    injected: Option<u32>,
    skipped: Option<u32>,
    paused: Option<u32>,
    unavailable: Option<u32>,
    fetches: Option<u32>,
    fetch_failures: Option<u32>,
    /// Tokens obtained from the token endpoint: the first one and every refresh.
    refreshes: Option<u32>,
    /// Histogram: dispatch to answer (or failure) of every token call, in ms.
    fetch_latency_ms: Option<u32>,
}

impl Metrics {
    fn new() -> Self {
        let c = |name: &str| define(MetricType::Counter, &format!("meshwasm_token_injector.{name}"));
        Metrics {
            injected: c("injected"),
            skipped: c("skipped"),
            paused: c("paused"),
            unavailable: c("unavailable"),
            fetches: c("fetches"),
            fetch_failures: c("fetch_failures"),
            refreshes: c("refreshes"),
            fetch_latency_ms: define(MetricType::Histogram, "meshwasm_token_injector.fetch_latency_ms"),
        }
    }
}

fn bump(metric: Option<u32>, by: usize) {
    if let Some(id) = metric {
        increment(id, by as u64);
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
    /// When it was dispatched (ms).
    call_started_ms: u64,
}

impl Worker {
    /// Dispatches the token request (this worker holds the lease) from context `owner`.
    fn dispatch(&mut self, now: u64, owner: u32) {
        let (headers, body) = match self.request.build(now / 1000, &mut meshwasm_oauth2::random_jti) {
            Ok(request) => request,
            Err(error) => return self.finish_fetch(now, Err(error)),
        };
        let ep = &self.plan.config.token_endpoint;
        let result = hostcalls::dispatch_http_call(
            &ep.cluster,
            crate::token::header_refs(&headers),
            Some(&body),
            vec![],
            Duration::from_millis(ep.timeout_ms),
        );
        bump(self.metrics.fetches, 1);
        match result {
            Ok(token) => {
                self.call = Some(token);
                self.call_owner = owner;
                self.call_started_ms = now;
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
        match self.source.on_fetch_result(now, &mut HostShared, result) {
            FetchReport::Obtained { log_id, lifetime_s } => {
                bump(self.metrics.refreshes, 1);
                log(
                    LogLevel::Info,
                    &format!(
                        "meshwasm token-injector: worker {}: obtained token {log_id}… (expires in {lifetime_s} s)",
                        self.source.worker()
                    ),
                )
            }
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
        record(self.metrics.fetch_latency_ms, now.saturating_sub(self.call_started_ms));
        // A token response over MAX_RESPONSE_BYTES is refused unread.
        let result = match read_call_response(num_headers, body_size, MAX_RESPONSE_BYTES) {
            Ok(r) => parse_token_response(u32::from(r.status), &r.body),
            // Envoy answers a failed or timed-out call with no headers.
            Err(CallError::NoResponse) => {
                Err(FetchError::Unreachable("no response (connection failure or timeout)".into()))
            }
            Err(CallError::BodyTooLarge { size, cap }) => {
                Err(FetchError::Malformed(format!("{size} bytes is over the {cap}-byte cap")))
            }
            Err(e @ CallError::NoStatus) => Err(FetchError::Malformed(e.to_string())),
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
        let poll = self.source.poll_for_request(now, &mut HostShared);
        if poll.start_fetch {
            self.dispatch(now, current);
        }
        // A synchronous dispatch failure settled the question already: poll again.
        let state = if poll.start_fetch && !self.source.fetching() {
            self.source.poll_for_request(now, &mut HostShared).state
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

/// Shared-data counter behind the worker ids ([`worker_id::allocate`]: counter and random bits).
impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _: usize) {
        // The worker is never borrowed across a hostcall, so this cannot fail; if it ever did, the answer
        // is dropped and the fetch times out (the next tick fetches again) instead of a panic.
        if let Some(w) = &self.worker
            && let Ok(mut w) = w.try_borrow_mut()
        {
            w.on_call_response(token_id, num_headers, body_size, self.context_id);
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = plugin_config();
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
        if HostShared.get(&plan.shared_key).is_none() {
            let _ = HostShared.set(&plan.shared_key, b"{}", None);
        }
        // Proxy-wide unique (root context ids repeat per worker): a shared counter and random bits.
        let worker_id = worker_id::allocate(&mut HostShared, WORKER_SEQ_KEY, random_u64());
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
            call_started_ms: 0,
            plan,
        })));
        let _ = hostcalls::set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let Some(w) = &self.worker else { return };
        let Ok(mut w) = w.try_borrow_mut() else { return };
        let now = now_ms();
        if w.source.fetch_overdue(now) {
            w.finish_fetch(now, Err(FetchError::Timeout));
        }
        if !w.waiters.is_empty() {
            w.settle_waiters(now, self.context_id);
        } else if w.source.has_token() && !w.source.fetching() {
            // Background refresh ahead of expiry, so requests never wait for it.
            let poll = w.source.poll(now, &mut HostShared);
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
        // The worker is never borrowed across a hostcall, so this cannot fail; if it ever did, the answer
        // is dropped and the fetch times out (the next tick fetches again) instead of a panic.
        if let Some(w) = &self.worker
            && let Ok(mut w) = w.try_borrow_mut()
        {
            w.on_call_response(token_id, num_headers, body_size, self.context_id);
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

/// A stream leaves the waiter list (and abandons a fetch it dispatched) when its context goes (on_delete
/// drops it), so the filter needs no on_done export: one VM entry less per request.
impl Drop for Http {
    fn drop(&mut self) {
        if let Some(w) = &self.worker
            && let Ok(mut w) = w.try_borrow_mut()
        {
            w.waiters.remove(self.context_id);
            if w.call.is_some() && w.call_owner == self.context_id {
                // This stream's call dies with it: the root's next tick fetches again (from the root
                // context, whose calls live on), for the requests still waiting.
                w.call = None;
                w.source.abandon_fetch(&mut HostShared);
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(w) = &self.worker else { return Action::Continue };
        // Never a panic on re-entry: a request that cannot reach the worker gets the clear 503 (fail
        // closed, as when no token can be had).
        let Ok(mut w) = w.try_borrow_mut() else {
            send_unavailable("token-injector is busy");
            return Action::Pause;
        };
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
        let poll = w.source.poll_for_request(now, &mut HostShared);
        let mut state = poll.state;
        if poll.start_fetch {
            w.dispatch(now, self.context_id);
            if !w.source.fetching() {
                state = w.source.poll_for_request(now, &mut HostShared).state;
            }
            // A failed dispatch answers the other waiting streams through set_effective_context:
            // back to this one. Without a dispatch nothing moved it (no hostcall per request).
            let _ = hostcalls::set_effective_context(self.context_id);
        }
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
