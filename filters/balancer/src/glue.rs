//! proxy-wasm glue: maps Envoy callbacks onto the pure logic. Compiled for wasm32 only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use meshwasm_endpoints::{
    EndpointSet, QUEUE_SEQ_KEY, SUBSCRIBERS_KEY, Subscribers, notify_queue_name, set_key,
};
use meshwasm_filter_runtime::glue::{
    HostShared, define, increment, log, now_ms, now_nanos, plugin_config, random_u64, record,
};
use meshwasm_filter_runtime::worker_id;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

use crate::config::{EndpointSource, Plan, Steering};
use crate::endpoint_metrics::EndpointMetrics;
use crate::hash::xxh64;
use crate::request::{RequestView, key_hash, service_name};
use crate::service::{Event, Outcome, Picked, ServiceBalancer};
use crate::steer::{SET_FILTER_STATE, original_dst_args};

/// The steering header before (or without) a configuration: the plan's default.
const DEFAULT_ENDPOINT_HEADER: &str = "x-meshwasm-endpoint";

// The filter's own `.wasm` entry point; off (feature `standalone`) when linked into the combined
// meshwasm.wasm, whose entry point selects this filter by root_id through [`root_context`].
#[cfg(feature = "standalone")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    meshwasm_filter_runtime::glue::install_panic_hook("balancer");
    proxy_wasm::set_root_context(root_context);
}}

/// This filter's root context (one per plugin and worker).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root { context_id, state: None, queue: None, header: Rc::from(DEFAULT_ENDPOINT_HEADER) })
}

fn counter(name: &str) -> Option<u32> {
    define(MetricType::Counter, name)
}

fn bump(metric: Option<u32>) {
    if let Some(id) = metric {
        increment(id, 1);
    }
}

struct ServiceState {
    /// The service's name (also its key in [`State::services`]), shared with the requests that picked
    /// from it.
    name: Rc<str>,
    lb: ServiceBalancer,
    discovered: bool,
    /// CAS of the shared-data entry last read, to skip unchanged sets.
    last_cas: Option<u32>,
    picks: EndpointMetrics,
    ejections: Option<u32>,
    panic_entries: Option<u32>,
    no_healthy: Option<u32>,
    updates: Option<u32>,
    bad_sets: Option<u32>,
    /// Gauge: endpoints in the set in use.
    endpoints: Option<u32>,
}

impl ServiceState {
    fn metric(name: &str, what: &str) -> Option<u32> {
        counter(&format!("meshwasm_balancer.{name}.{what}"))
    }

    fn count_pick(&mut self, name: &str, address: SocketAddr) {
        let id = self
            .picks
            .id(address, |label| counter(&format!("meshwasm_balancer.{name}.endpoint.{label}.picks")));
        bump(id);
    }

    fn flush_events(&mut self, name: &str) {
        let events: Vec<Event> = self.lb.drain_events().collect();
        for e in events {
            match e {
                Event::Ejected { address, for_ms } => {
                    bump(self.ejections);
                    log(
                        LogLevel::Warn,
                        &format!("meshwasm balancer: service `{name}`: ejected {address} for {for_ms} ms"),
                    );
                }
                Event::Returned { address } => {
                    log(LogLevel::Info, &format!("meshwasm balancer: service `{name}`: {address} is back"));
                }
                Event::PanicEntered { healthy, total } => {
                    bump(self.panic_entries);
                    log(
                        LogLevel::Warn,
                        &format!(
                            "meshwasm balancer: service `{name}`: panic mode, only {healthy} of {total} endpoints \
                             healthy: balancing over all"
                        ),
                    );
                }
                Event::PanicExited => {
                    log(LogLevel::Info, &format!("meshwasm balancer: service `{name}`: panic mode over"));
                }
            }
        }
    }
}

struct State {
    plan: Rc<Plan>,
    services: HashMap<Rc<str>, ServiceState>,
}

impl State {
    /// Re-reads a discovered service's set from shared data; rebuilds only on a new version.
    fn refresh(&mut self, name: &str, now: u64) {
        let Some(s) = self.services.get_mut(name) else { return };
        if !s.discovered {
            return;
        }
        let (bytes, cas) = match hostcalls::get_shared_data(&set_key(name)) {
            Ok(v) => v,
            Err(_) => return,
        };
        let Some(bytes) = bytes else { return };
        if cas.is_some() && cas == s.last_cas {
            return;
        }
        s.last_cas = cas;
        match EndpointSet::decode(&bytes) {
            Ok(set) => {
                let (version, len) = (set.version, set.endpoints.len());
                if s.lb.set_endpoints(set, now) {
                    bump(s.updates);
                    record(s.endpoints, len as u64);
                    log(
                        LogLevel::Info,
                        &format!(
                            "meshwasm balancer: service `{name}`: endpoint set version {version}, {len} endpoints"
                        ),
                    );
                    s.flush_events(name);
                }
            }
            Err(e) => {
                bump(s.bad_sets);
                log(
                    LogLevel::Warn,
                    &format!("meshwasm balancer: service `{name}`: keeping the last set: {e}"),
                );
            }
        }
    }
}

struct Root {
    context_id: u32,
    state: Option<Rc<RefCell<State>>>,
    queue: Option<u32>,
    /// The steering header name, which every stream strips from the client's request.
    header: Rc<str>,
}

impl Root {
    /// Registers this VM's notify queue (once) and makes sure it is on the subscriber list.
    fn subscribe(&mut self) {
        let name = match self.queue {
            Some(_) => None,
            None => {
                let name = notify_queue_name(next_queue_seq());
                match hostcalls::register_shared_queue(&name) {
                    Ok(id) => {
                        self.queue = Some(id);
                        Some(name)
                    }
                    Err(e) => {
                        log(
                            LogLevel::Warn,
                            &format!("meshwasm balancer: cannot register queue {name}: {e:?}"),
                        );
                        return;
                    }
                }
            }
        };
        if let Some(name) = name {
            QUEUE_NAME.with(|q| *q.borrow_mut() = Some(name));
        }
        let Some(name) = QUEUE_NAME.with(|q| q.borrow().clone()) else { return };
        for _ in 0..10 {
            let (bytes, cas) = hostcalls::get_shared_data(SUBSCRIBERS_KEY).unwrap_or((None, None));
            let mut subs = match Subscribers::decode(bytes.as_deref().unwrap_or_default()) {
                Ok(s) => s,
                Err(e) => {
                    log(
                        LogLevel::Warn,
                        &format!("meshwasm balancer: subscriber list is not valid, replacing it: {e}"),
                    );
                    Subscribers::default()
                }
            };
            if !subs.add(&name) {
                return;
            }
            match hostcalls::set_shared_data(SUBSCRIBERS_KEY, Some(&subs.encode()), cas) {
                Ok(()) => {}
                Err(Status::CasMismatch) => continue,
                Err(e) => {
                    log(LogLevel::Warn, &format!("meshwasm balancer: cannot subscribe: {e:?}"));
                    return;
                }
            }
            // Without a CAS (first writer) a concurrent writer may have won: loop to verify.
        }
    }
}

thread_local! {
    static QUEUE_NAME: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Draws this VM's notify-queue number ([`worker_id::allocate`]): the CAS-incremented counter in the
/// high bits plus 32 random bits, which keep two VMs apart when both create the counter at once.
fn next_queue_seq() -> u64 {
    worker_id::allocate(&mut HostShared, QUEUE_SEQ_KEY, random_u64())
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = plugin_config();
        let plan = match Plan::from_json(&bytes) {
            Ok(p) => Rc::new(p),
            Err(e) => {
                log(LogLevel::Error, &format!("meshwasm balancer: rejected configuration: {e}"));
                return false;
            }
        };
        let now = now_ms();
        let base_seed = plan.seed.unwrap_or_else(|| {
            let nanos = now_nanos();
            nanos ^ u64::from(self.context_id).rotate_left(32)
        });
        let mut services = HashMap::new();
        let mut any_discovered = false;
        for sp in &plan.services {
            let mut lb =
                ServiceBalancer::new(Rc::clone(&sp.policy), base_seed ^ xxh64(sp.name.as_bytes(), 0));
            let endpoints = define(MetricType::Gauge, &format!("meshwasm_balancer.{}.endpoints", sp.name));
            let discovered = match &sp.endpoints {
                EndpointSource::Static(eps) => {
                    lb.set_endpoints(EndpointSet { version: 1, endpoints: eps.clone() }, now);
                    record(endpoints, eps.len() as u64);
                    false
                }
                EndpointSource::Discovery => true,
            };
            any_discovered |= discovered;
            let name = &sp.name;
            let key: Rc<str> = Rc::from(name.as_str());
            services.insert(
                Rc::clone(&key),
                ServiceState {
                    name: key,
                    lb,
                    discovered,
                    last_cas: None,
                    picks: EndpointMetrics::new(plan.endpoint_metrics_limit),
                    ejections: ServiceState::metric(name, "ejections"),
                    panic_entries: ServiceState::metric(name, "panic_entries"),
                    no_healthy: ServiceState::metric(name, "no_healthy_upstream"),
                    updates: ServiceState::metric(name, "endpoint_set_updates"),
                    bad_sets: ServiceState::metric(name, "bad_endpoint_sets"),
                    endpoints,
                },
            );
        }
        let mut state = State { plan: Rc::clone(&plan), services };
        let names: Vec<Rc<str>> = state.services.keys().cloned().collect();
        for n in &names {
            state.refresh(n, now);
        }
        self.state = Some(Rc::new(RefCell::new(state)));
        self.header = Rc::from(plan.endpoint_header.as_str());
        if any_discovered {
            self.subscribe();
        }
        self.set_tick_period(Duration::from_millis(plan.refresh_interval_ms));
        if plan.steering == Steering::Header {
            log(
                LogLevel::Warn,
                &format!(
                    "meshwasm balancer: steering by header {}: every route to the ORIGINAL_DST cluster must run \
                     this filter and it must not fail open, or clients steer the cluster themselves",
                    plan.endpoint_header
                ),
            );
        }
        log(
            LogLevel::Info,
            &match plan.steering {
                Steering::FilterState => format!(
                    "meshwasm balancer: configured {} services, steering through filter state",
                    names.len()
                ),
                Steering::Header => format!(
                    "meshwasm balancer: configured {} services, steering header {}",
                    names.len(),
                    plan.endpoint_header
                ),
            },
        );
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else { return };
        let now = now_ms();
        let discovered = {
            let Ok(mut st) = state.try_borrow_mut() else { return };
            let names: Vec<Rc<str>> =
                st.services.iter().filter(|(_, s)| s.discovered).map(|(n, _)| Rc::clone(n)).collect();
            for n in &names {
                st.refresh(n, now);
            }
            !names.is_empty()
        };
        if discovered {
            self.subscribe();
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(state) = self.state.clone() else { return };
        let now = now_ms();
        let Ok(mut st) = state.try_borrow_mut() else { return };
        while let Ok(Some(msg)) = hostcalls::dequeue_shared_queue(queue_id) {
            if let Ok(name) = std::str::from_utf8(&msg) {
                st.refresh(name.trim(), now);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on a missing context. Without a configuration, streams pass.
        Some(Box::new(Http { state: self.state.clone(), header: Rc::clone(&self.header), ticket: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    state: Option<Rc<RefCell<State>>>,
    header: Rc<str>,
    /// The service and endpoint picked for this request.
    ticket: Option<(Rc<str>, Picked)>,
}

struct View<'a>(&'a Http);

impl RequestView for View<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.get_http_request_header_bytes(name)
    }
    fn source_address(&self) -> Option<String> {
        self.0.get_property(vec!["source", "address"]).and_then(|b| String::from_utf8(b).ok())
    }
}

impl Http {
    fn finish(&mut self, outcome: Outcome) {
        let Some((name, picked)) = self.ticket.take() else { return };
        let Some(state) = &self.state else { return };
        let Ok(mut st) = state.try_borrow_mut() else { return };
        if let Some(s) = st.services.get_mut(&name) {
            // The time only stamps an ejection, which only a failure can cause: the clock is read
            // for failures alone (a success or a neutral end ignores it).
            let now = match outcome {
                Outcome::Failure => now_ms(),
                Outcome::Success | Outcome::Neutral => 0,
            };
            s.lb.complete(&picked, outcome, now);
            s.flush_events(&name);
        }
    }
}

impl Context for Http {}

impl Http {
    fn reply(&self, status: u32, body: &str) -> Action {
        self.send_http_response(status, vec![("content-type", "text/plain")], Some(body.as_bytes()));
        Action::Pause
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        // Never let a client steer: drop any copy it sent before anything else can return early, so
        // the client's value never reaches the ORIGINAL_DST cluster.
        self.set_http_request_header(&self.header, None);
        let Some(state) = self.state.clone() else { return Action::Continue };
        let Ok(mut st) = state.try_borrow_mut() else { return Action::Continue };
        let plan = Rc::clone(&st.plan);
        let selected = service_name(&plan.service_from, &View(self));
        // Selection headers are for this filter only: the upstream never sees them.
        for h in &plan.selection_headers {
            self.set_http_request_header(h, None);
        }
        let name = match selected {
            Ok(Some(name)) => name,
            Ok(None) => return Action::Continue,
            // A path some upstream would read differently: no route rule may pick its service.
            Err(_) => {
                drop(st);
                return self.reply(400, "bad request path");
            }
        };
        let Some(s) = st.services.get_mut(name.as_ref()) else { return Action::Continue };
        // The clock only while an ejection or a slow-start step is pending (any time gives the same
        // pick otherwise).
        let now = if s.lb.needs_clock() { now_ms() } else { 0 };
        let hash = if s.lb.policy().algorithm.is_hash() {
            key_hash(&s.lb.policy().hash_key, &View(self))
        } else {
            None
        };
        let picked = s.lb.pick(now, hash);
        s.flush_events(&name);
        match picked {
            Ok(p) => {
                let steered = match plan.steering {
                    Steering::FilterState => hostcalls::call_foreign_function(
                        SET_FILTER_STATE,
                        Some(&original_dst_args(p.address)),
                    )
                    .map(drop),
                    Steering::Header => {
                        self.add_http_request_header(&plan.endpoint_header, &p.address.to_string());
                        Ok(())
                    }
                };
                if let Err(e) = steered {
                    // Unsteered, the request would go wherever the cluster falls back to: fail closed.
                    s.lb.complete(&p, Outcome::Neutral, now);
                    bump(s.no_healthy);
                    drop(st);
                    log(
                        LogLevel::Error,
                        &format!("meshwasm balancer: {SET_FILTER_STATE} failed ({e:?}): answering 503"),
                    );
                    return self.reply(503, "no healthy upstream");
                }
                s.count_pick(&name, p.address);
                self.ticket = Some((Rc::clone(&s.name), p));
                Action::Continue
            }
            Err(e) => {
                bump(s.no_healthy);
                drop(st);
                self.reply(503, &e.to_string())
            }
        }
    }

    fn on_log(&mut self) {
        let Some((_, picked)) = &self.ticket else { return };
        let picked = picked.address;
        let int = |path: Vec<&str>| {
            self.get_property(path)
                .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map(u64::from_le_bytes)
        };
        // The status Envoy answered with, read here: no VM entry for the response headers per request
        // (the filter exports no proxy_on_response_headers, see `callbacks`). A status below 500 is
        // the whole answer; `response.flags` and `upstream.address` are read only for 5xx or no status
        // (see `Outcome::from_response` for why that is enough).
        let status = int(vec!["response", "code"]).and_then(|c| u32::try_from(c).ok());
        let outcome = Outcome::from_response(picked, status, || {
            let flags = int(vec!["response", "flags"]).unwrap_or(0);
            let upstream = self
                .get_property(vec!["upstream", "address"])
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            (flags, upstream)
        });
        self.finish(outcome);
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // A stream that ended without on_log still releases its in-flight count.
        self.finish(Outcome::Neutral);
    }
}
