//! proxy-wasm glue: maps root-context callbacks onto the [`Engine`] and implements the [`Host`] seam
//! over hostcalls. Nothing happens per request: the HTTP contexts this plugin gets (when configured
//! as an HTTP filter) just continue, except allowed requests for the debug path ([`crate::debug`]).
//! As a singleton Wasm service (`"mode": "service"`) it gets no HTTP contexts at all: only the root
//! context's callbacks (`on_vm_start`, `on_configure`, `on_tick`, `on_http_call_response`, `on_done`).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use meshwasm_filter_runtime::glue::{
    HostShared, define, increment, log, now_ms, plugin_config, random_u64, read_call_response,
};
use meshwasm_filter_runtime::shared_data::SharedData;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use crate::config::{Mode, Plan};
use crate::debug::{DebugAccess, Decision};
use crate::engine::{Engine, Outgoing};
use crate::host::{Counter, Host, Level, SetError};
use crate::http::{MAX_BODY_BYTES, Reply};
use crate::lease::allocate_id;

// The filter's own `.wasm` entry point; off (feature `standalone`) when linked into the combined
// meshwasm.wasm, whose entry point selects this filter by root_id through [`root_context`].
#[cfg(feature = "standalone")]
proxy_wasm::main! {{
    meshwasm_filter_runtime::glue::install_panic_hook("discovery");
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(root_context);
}}

/// This filter's root context (one per plugin and worker).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root::default())
}

/// Metric ids of one service.
struct ServiceMetrics {
    counters: [Option<u32>; Counter::ALL.len()],
    endpoints: Option<u32>,
}

#[derive(Default)]
struct ProxyHost {
    vm_id: String,
    metrics: Vec<ServiceMetrics>,
}

impl ProxyHost {
    fn define_metrics(&mut self, plan: &Plan) {
        self.metrics = plan
            .services
            .iter()
            .map(|s| {
                let metric =
                    |kind, what: &str| define(kind, &format!("meshwasm_discovery.{}.{what}", s.name));
                ServiceMetrics {
                    counters: Counter::ALL.map(|c| metric(MetricType::Counter, c.name())),
                    endpoints: metric(MetricType::Gauge, "endpoints"),
                }
            })
            .collect();
    }
}

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn random(&mut self) -> u64 {
        random_u64()
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        HostShared.get(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        HostShared.set(key, value, cas)
    }

    fn enqueue(&mut self, queue: &str, msg: &[u8]) -> bool {
        match hostcalls::resolve_shared_queue(&self.vm_id, queue) {
            Ok(Some(id)) => hostcalls::enqueue_shared_queue(id, Some(msg)).is_ok(),
            _ => false,
        }
    }

    fn log(&mut self, level: Level, msg: &str) {
        let level = match level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        log(level, msg);
    }

    fn count(&mut self, service: usize, counter: Counter) {
        let i = Counter::ALL.iter().position(|c| *c == counter).unwrap_or(0);
        if let Some(Some(id)) = self.metrics.get(service).map(|m| m.counters[i]) {
            increment(id, 1);
        }
    }

    fn endpoints_gauge(&mut self, service: usize, value: u64) {
        if let Some(Some(id)) = self.metrics.get(service).map(|m| m.endpoints) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

#[derive(Default)]
struct Root {
    host: ProxyHost,
    debug: Option<Rc<DebugAccess>>,
    engine: Option<Engine>,
    /// Dispatched calls: token → (service, poll, tag).
    calls: HashMap<u32, (usize, u64, u32)>,
    mode: Mode,
    /// A `mode: service` configuration loaded as an HTTP filter was already reported.
    misplaced_reported: Cell<bool>,
}

impl Root {
    /// Sends requests; a dispatch that fails at once is answered as a failed reply (which may lead
    /// to more requests, hence the work list).
    fn dispatch(&mut self, mut work: Vec<Outgoing>) {
        let Some(engine) = self.engine.as_mut() else { return };
        while let Some(o) = work.pop() {
            let Some(up) = engine.upstream(o.service) else { continue };
            let mut headers: Vec<(&str, &str)> = vec![
                (":method", o.request.method),
                (":path", &o.request.path),
                (":authority", &up.authority),
            ];
            headers.extend(o.request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let body = (!o.request.body.is_empty()).then_some(&o.request.body[..]);
            match hostcalls::dispatch_http_call(&up.cluster, headers, body, vec![], o.request.timeout) {
                Ok(token) => {
                    self.calls.insert(token, (o.service, o.poll, o.tag));
                }
                Err(status) => {
                    let why = format!(
                        "dispatch to cluster `{}` failed ({status:?}); is the cluster defined?",
                        up.cluster
                    );
                    work.extend(engine.on_reply(
                        &mut self.host,
                        o.service,
                        o.poll,
                        o.tag,
                        Reply::Failed(why),
                    ));
                }
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((service, poll, tag)) = self.calls.remove(&token_id) else { return };
        // An oversized body is never copied into the VM.
        let reply = Reply::from(read_call_response(num_headers, body_size, MAX_BODY_BYTES));
        let Some(engine) = self.engine.as_mut() else { return };
        let more = engine.on_reply(&mut self.host, service, poll, tag, reply);
        self.dispatch(more);
    }

    fn on_done(&mut self) -> bool {
        if let Some(engine) = self.engine.as_mut() {
            engine.shutdown(&mut self.host);
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = plugin_config();
        let plan = match Plan::from_json(&bytes) {
            Ok(p) => p,
            Err(e) => {
                log(LogLevel::Error, &format!("meshwasm discovery: rejected configuration: {e}"));
                return false;
            }
        };
        self.host.vm_id = hostcalls::get_property(vec!["plugin_vm_id"])
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        self.host.define_metrics(&plan);
        let id = allocate_id(&mut self.host);
        let engine = match Engine::new(&plan, id) {
            Ok(e) => e,
            Err(e) => {
                log(LogLevel::Error, &format!("meshwasm discovery: rejected configuration: {e}"));
                return false;
            }
        };
        let form = match plan.mode {
            Mode::Filter => "as a filter (one poller elected among the VMs)",
            Mode::Service => "as a singleton service (no lease)",
        };
        log(
            LogLevel::Info,
            &format!(
                "meshwasm discovery: VM {} configured with {} services {form}",
                engine.id(),
                plan.services.len()
            ),
        );
        self.mode = plan.mode;
        self.engine = Some(engine);
        self.debug = plan.debug.clone().map(Rc::new);
        let _ = hostcalls::set_tick_period(plan.tick.max(Duration::from_millis(10)));
        true
    }

    fn on_tick(&mut self) {
        let Some(engine) = self.engine.as_mut() else { return };
        let out = engine.tick(&mut self.host);
        self.dispatch(out);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.mode == Mode::Service && !self.misplaced_reported.replace(true) {
            // Without a lease, every VM of an HTTP filter polls on its own.
            log(
                LogLevel::Error,
                "meshwasm discovery: `mode: service` is loaded as an HTTP filter: every worker polls the \
                 registries without a lease; load it as a singleton Wasm service (envoy.bootstrap.wasm, \
                 singleton: true) or use `mode: filter`",
            );
        }
        Some(Box::new(Stream { debug: self.debug.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Per request: nothing, unless the request is for the debug path.
struct Stream {
    debug: Option<Rc<DebugAccess>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(debug) = &self.debug else { return Action::Continue };
        let header =
            |name: &str| hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten();
        if header(":path").as_deref() != Some(debug.path.as_bytes()) {
            return Action::Continue;
        }
        let method = header(":method");
        let source = hostcalls::get_property(vec!["source", "address"]).ok().flatten();
        let key = debug.header.as_ref().and_then(|(name, _)| header(name));
        match debug.decide(method.as_deref(), source.as_deref(), key.as_deref()) {
            Decision::Pass => Action::Continue,
            Decision::MethodNotAllowed => {
                let _ = hostcalls::send_http_response(405, vec![("allow", "GET")], None);
                Action::Pause
            }
            Decision::Answer => {
                let body = crate::publish::dump(&ProxyHost::default());
                let headers = vec![("content-type", "application/json"), ("cache-control", "no-store")];
                let _ = hostcalls::send_http_response(200, headers, Some(&body));
                Action::Pause
            }
        }
    }
}
