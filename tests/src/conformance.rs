//! Differential conformance: scenarios written once and run in real Envoy and in the meshwasm
//! wasmtime host, with the probe filter (`filters/probe`) reporting what it saw in each.
//!
//! A [`Scenario`] is probe scripts (one filter each, in chain order) + requests + which extra
//! observations to compare (metrics, root-context events) + checks that must hold in both hosts (facts
//! about Envoy, so a scenario cannot "pass" by both hosts being equally wrong). [`run_envoy`] and
//! [`run_host`] produce comparable [`Observation`]s; [`diff`] lists where they differ.
//!
//! The upstream environment is the same real servers in both hosts: `backend` (the route's cluster),
//! `callout` (for http calls), `down` (a closed port) and `slow` (never answers within the call's
//! timeout: a delayed real server in Envoy, an unanswered call advanced past its timeout in the host).
//!
//! Normalization (what differs by environment, not by behaviour): keys starting with `~` in probe
//! traces (times, CAS values, tokens, ids), the header names Envoy or the HTTP codecs add
//! ([`TRANSPORT_HEADERS`]) in header lists, and therefore the header *counts* passed to
//! on_request_headers/on_response_headers (Envoy's include `x-forwarded-proto`, which its connection
//! manager adds before the filters run; the header lists themselves are compared).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::Value;

use crate::artifacts;
use crate::backend::{Backend, EchoedRequest};
use crate::envoy::{Cluster, EnvoyConfig, Listener, WasmFilter};
use crate::process::{self, HttpResponse};

mod scenarios;

pub use scenarios::{all as scenarios, named};

/// Probe log prefixes and header (kept in sync with `filters/probe/src/lib.rs`).
pub const STREAM_TRACE_PREFIX: &str = "meshwasm-probe-stream ";
pub const ROOT_TRACE_PREFIX: &str = "meshwasm-probe-root ";
pub const TRACE_HEADER_PREFIX: &str = "x-probe-trace-";

/// Header names added by Envoy's connection manager/router or by HTTP codecs, left out of comparisons.
pub const TRANSPORT_HEADERS: &[&str] = &[
    "date",
    "server",
    "connection",
    "content-length",
    "transfer-encoding",
    "host",
    "x-forwarded-proto",
    "x-request-id",
    "x-envoy-upstream-service-time",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-decorator-operation",
    // Envoy marks its own http-call requests; the host does not (a reported host gap).
    "x-envoy-internal",
];

/// One probe filter in the chain.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// Plugin name, root_id and probe name.
    pub name: String,
    pub vm_id: String,
    /// The probe script (its `name` is set to the plugin name).
    pub script: Value,
    /// The only `proxy_on_*` callbacks the probe module exports (`make wasm`'s post-link step run on
    /// the probe), or None for all of them.
    pub exports: Option<Vec<&'static str>>,
}

impl ProbeSpec {
    /// The same probe, exporting only `callbacks`, so both hosts must skip the others.
    pub fn exporting_only(mut self, callbacks: &[&'static str]) -> Self {
        self.exports = Some(callbacks.to_vec());
        self
    }

    /// The probe module this spec runs: the built artifact, or a copy of it without the callbacks it
    /// does not keep (written once per process and export set).
    fn wasm(&self) -> Result<std::path::PathBuf> {
        let built = artifacts::wasm_path("meshwasm_probe");
        let Some(keep) = &self.exports else { return Ok(built) };
        let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        let trimmed = meshwasm_exports::keep_callbacks(&bytes, keep)?;
        let path = std::env::temp_dir().join(format!(
            "meshwasm-probe-{}-{}.wasm",
            std::process::id(),
            keep.join("-").replace("proxy_on_", "")
        ));
        std::fs::write(&path, trimmed.wasm).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// A probe named `name` in VM `conformance` running `script`.
pub fn probe(name: &str, script: Value) -> ProbeSpec {
    probe_in(name, "conformance", script)
}

/// A probe named `name` in VM `vm_id`.
pub fn probe_in(name: &str, vm_id: &str, mut script: Value) -> ProbeSpec {
    script["name"] = Value::String(name.to_owned());
    ProbeSpec { name: name.to_owned(), vm_id: vm_id.to_owned(), script, exports: None }
}

/// A downstream request.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Req {
    pub fn get(path: &str) -> Self {
        Self { method: "GET".into(), path: path.into(), headers: Vec::new(), body: String::new() }
    }

    /// A POST with a body and its content-length.
    pub fn post(path: &str, body: &str) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("content-length".into(), body.len().to_string())],
            body: body.into(),
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A scenario, run identically in both hosts.
pub struct Scenario {
    pub name: &'static str,
    pub probes: Vec<ProbeSpec>,
    /// Probes loaded as singleton Wasm services (Envoy's `envoy.bootstrap.wasm` with `singleton: true`,
    /// the host's `ProxyBuilder::service`): root context only, never in the chain.
    pub services: Vec<ProbeSpec>,
    pub requests: Vec<Req>,
    /// Status and body of the `backend` server.
    pub backend_status: u16,
    pub backend_body: String,
    pub backend_headers: Vec<(String, String)>,
    /// Metric names whose values are compared (Envoy: the admin stat ending in the name).
    pub metrics: Vec<&'static str>,
    /// Root callbacks whose first event per probe is compared (e.g. `tick`, `queue_ready`).
    pub root_callbacks: Vec<&'static str>,
    /// Time to let pass after the requests (real in Envoy, virtual in the host), for ticks/queues.
    pub settle: Duration,
    /// Facts that must hold in both hosts.
    pub check: fn(&Run),
    /// Known divergences of the wasmtime host from Envoy in this scenario (for the host engineer to
    /// fix). While non-empty the test asserts that the runs still differ, so a fix is noticed.
    pub host_gaps: Vec<&'static str>,
    /// Compare body callbacks exactly as delivered; otherwise [`merge_body_split`] is applied.
    pub exact_body_chunks: bool,
}

impl Scenario {
    pub fn new(name: &'static str, probes: Vec<ProbeSpec>, requests: Vec<Req>, check: fn(&Run)) -> Self {
        Self {
            name,
            probes,
            services: Vec::new(),
            requests,
            backend_status: 200,
            backend_body: "backend-body".into(),
            backend_headers: vec![("x-backend-says".into(), "hi".into())],
            metrics: Vec::new(),
            root_callbacks: Vec::new(),
            settle: Duration::ZERO,
            check,
            host_gaps: Vec::new(),
            exact_body_chunks: false,
        }
    }
}

/// What the upstream server received.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpstreamSeen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// What one request produced, normalized.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Observation {
    pub status: u16,
    /// Downstream response headers, without `:status`, transport headers and trace headers.
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
    pub upstream: Option<UpstreamSeen>,
    /// Stream traces from the log, per probe (events without `~` keys).
    pub traces: BTreeMap<String, Value>,
    /// Traces from `x-probe-trace-<name>` response headers.
    pub response_header_traces: BTreeMap<String, Value>,
    /// Traces from `x-probe-trace-<name>` request headers as the upstream received them.
    pub upstream_header_traces: BTreeMap<String, Value>,
}

/// A whole scenario run in one host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Run {
    pub host: &'static str,
    pub requests: Vec<Observation>,
    /// First event per (probe, root callback) for the scenario's `root_callbacks`.
    pub root_events: BTreeMap<String, Value>,
    /// How many root contexts ran each (probe, root callback) of `root_callbacks` at least once.
    pub root_contexts: BTreeMap<String, usize>,
    pub metrics: BTreeMap<String, Option<u64>>,
    /// Requests the `callout` server received.
    pub callouts: Vec<UpstreamSeen>,
}

impl Run {
    /// The trace of probe `name` for request `i`.
    pub fn trace(&self, i: usize, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.requests.get(i).and_then(|o| o.traces.get(name)).unwrap_or(&NULL)
    }

    /// The callback names in probe `name`'s trace for request `i`.
    pub fn callbacks(&self, i: usize, name: &str) -> Vec<String> {
        self.trace(i, name)
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["cb"].as_str().map(str::to_owned))
            .collect()
    }

    /// The event of callback `cb` (first occurrence) in probe `name`'s trace for request `i`.
    pub fn event(&self, i: usize, name: &str, cb: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.trace(i, name).as_array().into_iter().flatten().find(|e| e["cb"] == cb).unwrap_or(&NULL)
    }

    /// The statuses of the ops of callback `cb` of probe `name` for request `i`.
    pub fn statuses(&self, i: usize, name: &str, cb: &str) -> Vec<u64> {
        self.event(i, name, cb)["ops"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["status"].as_u64())
            .collect()
    }

    /// Response header `k` of request `i`.
    pub fn response_header(&self, i: usize, k: &str) -> Option<&str> {
        self.requests[i].response_headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// Upstream header `k` of request `i`.
    pub fn upstream_header(&self, i: usize, k: &str) -> Option<&str> {
        self.requests[i].upstream.as_ref()?.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// The real servers a scenario talks to.
struct Upstreams {
    backend: Backend,
    callout: Backend,
    slow: Backend,
    down: SocketAddr,
}

impl Upstreams {
    fn start(s: &Scenario) -> Result<Self> {
        let backend = Backend::start("backend")?;
        backend.set_status(s.backend_status);
        backend.set_body(Some(s.backend_body.as_bytes()));
        let hs: Vec<(&str, &str)> = s.backend_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        backend.set_response_headers(&hs);
        let callout = Backend::start("callout")?;
        callout.set_body(Some(b"callout-body"));
        callout.set_response_headers(&[("x-callout", "yes")]);
        let slow = Backend::start("slow")?;
        slow.set_delay(Duration::from_secs(5));
        let down = SocketAddr::from(([127, 0, 0, 1], process::free_port()));
        Ok(Self { backend, callout, slow, down })
    }
}

fn keep_header(name: &str) -> bool {
    !name.starts_with(':') && !TRANSPORT_HEADERS.contains(&name) && !name.starts_with(TRACE_HEADER_PREFIX)
}

fn upstream_seen(e: &EchoedRequest) -> UpstreamSeen {
    UpstreamSeen {
        method: e.method.clone(),
        path: e.path.clone(),
        headers: e.headers.iter().filter(|(k, _)| keep_header(k)).cloned().collect(),
        body: e.body.clone(),
    }
}

fn header_traces<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (k, v) in headers {
        if let Some(name) = k.strip_prefix(TRACE_HEADER_PREFIX) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(v)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .map(|v| normalize(&v))
                .unwrap_or_else(|| Value::String(format!("undecodable: {v}")));
            out.insert(name.to_owned(), decoded);
        }
    }
    out
}

/// Drops `~` keys and transport headers inside `pairs` lists, recursively.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('~') && (k.as_str() != "headers" || !m.contains_key("cb")))
                .map(|(k, v)| {
                    if k == "pairs"
                        && let Value::Array(pairs) = v
                    {
                        let kept =
                            pairs.iter().filter(|p| p[0].as_str().is_none_or(keep_trace_pair)).cloned();
                        return (k.clone(), Value::Array(kept.collect()));
                    }
                    (k.clone(), normalize(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn keep_trace_pair(name: &str) -> bool {
    !TRANSPORT_HEADERS.contains(&name) || name == "content-length"
}

/// Parses the probe's log lines out of free text (one JSON object per matching line).
fn parse_lines(text: &str, prefix: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.find(prefix).map(|i| &l[i + prefix.len()..]))
        .filter_map(|j| serde_json::from_str::<Value>(j.trim()).ok())
        .collect()
}

fn stream_traces(lines: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for l in lines {
        if let Some(name) = l["probe"].as_str() {
            out.insert(name.to_owned(), normalize(&l["events"]));
        }
    }
    out
}

fn root_contexts(s: &Scenario, lines: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in lines {
        let (Some(p), Some(cb)) = (l["probe"].as_str(), l["cb"].as_str()) else { continue };
        if s.root_callbacks.contains(&cb) && l["n"] == 1 {
            *out.entry(format!("{p}/{cb}")).or_insert(0) += 1;
        }
    }
    out
}

fn root_events(s: &Scenario, lines: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for l in lines {
        let (Some(p), Some(cb)) = (l["probe"].as_str(), l["cb"].as_str()) else { continue };
        if s.root_callbacks.contains(&cb) {
            out.entry(format!("{p}/{cb}")).or_insert_with(|| normalize(l));
        }
    }
    out
}

// ---------------------------------------------------------------- Envoy

/// Runs the scenario in real Envoy (one worker).
pub fn run_envoy(s: &Scenario) -> Result<Run> {
    let up = Upstreams::start(s)?;
    let mut listener = Listener::new("main", "backend").without_envoy_headers();
    for p in &s.probes {
        listener = listener.wasm(
            WasmFilter::new(&p.name, p.wasm()?).root_id(&p.name).vm_id(&p.vm_id).config(p.script.to_string()),
        );
    }
    let mut envoy = EnvoyConfig::new();
    for p in &s.services {
        envoy = envoy.wasm_service(
            WasmFilter::new(&p.name, p.wasm()?).root_id(&p.name).vm_id(&p.vm_id).config(p.script.to_string()),
        );
    }
    let envoy = envoy
        .listener(listener)
        .cluster(Cluster::static_hosts("backend", &[up.backend.addr()]))
        .cluster(Cluster::static_hosts("callout", &[up.callout.addr()]))
        .cluster(Cluster::static_hosts("slow", &[up.slow.addr()]))
        .cluster(Cluster::static_hosts("down", &[up.down]));
    // MESHWASM_CONFORMANCE_ENVOY_LOG=router:debug,http:debug prints Envoy's log for those components.
    let debug_log = std::env::var("MESHWASM_CONFORMANCE_ENVOY_LOG").ok();
    let mut envoy = envoy;
    if let Some(c) = &debug_log {
        envoy.component_log_level = Some(format!("wasm:debug,{c}"));
    }
    let envoy = envoy.start()?;
    let addr = envoy.listener_addr("main");
    // Probes log their trace in on_delete: one without it never does.
    let tracing =
        s.probes.iter().filter(|p| p.exports.as_ref().is_none_or(|e| e.contains(&"proxy_on_delete"))).count();
    let mut requests = Vec::new();
    for r in &s.requests {
        let before_log = envoy.logs().len();
        let before_up = up.backend.request_count();
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let resp = process::http_request(
            addr,
            &r.method,
            &r.path,
            &headers,
            r.body.as_bytes(),
            Duration::from_secs(15),
        )
        .with_context(|| format!("scenario {}: request to Envoy", s.name))?;
        // Stream traces are logged at on_delete, just after the response: wait for all probes.
        let mut lines = Vec::new();
        process::wait_until(Duration::from_secs(5), || {
            let logs = envoy.logs();
            lines = parse_lines(logs.get(before_log..).unwrap_or(""), STREAM_TRACE_PREFIX);
            lines.len() >= tracing
        });
        let upstream = (up.backend.request_count() > before_up).then(|| up.backend.last_request()).flatten();
        requests.push(envoy_observation(&resp, upstream.as_ref(), &lines));
    }
    if debug_log.is_some() {
        eprintln!("== Envoy log of scenario {}:\n{}", s.name, envoy.logs());
    }
    if !s.settle.is_zero() {
        std::thread::sleep(s.settle);
    }
    let root = parse_lines(&envoy.logs(), ROOT_TRACE_PREFIX);
    let stats = envoy.stats()?;
    let metrics = s
        .metrics
        .iter()
        .map(|m| {
            let v = stats.iter().find(|(k, _)| *k == m || k.ends_with(&format!(".{m}"))).map(|(_, v)| *v);
            ((*m).to_owned(), v)
        })
        .collect();
    Ok(Run {
        host: "envoy",
        requests,
        root_events: root_events(s, &root),
        root_contexts: root_contexts(s, &root),
        metrics,
        callouts: up.callout.requests().iter().map(upstream_seen).collect(),
    })
}

fn envoy_observation(resp: &HttpResponse, upstream: Option<&EchoedRequest>, lines: &[Value]) -> Observation {
    Observation {
        status: resp.status,
        response_headers: resp.headers.iter().filter(|(k, _)| keep_header(k)).cloned().collect(),
        response_body: resp.text(),
        upstream: upstream.map(upstream_seen),
        traces: stream_traces(lines),
        response_header_traces: header_traces(resp.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        upstream_header_traces: upstream
            .map(|u| header_traces(u.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------- wasmtime host

fn shared_host() -> Result<&'static (meshwasm_host::Host, meshwasm_host::Module)> {
    static HOST: OnceLock<std::result::Result<(meshwasm_host::Host, meshwasm_host::Module), String>> =
        OnceLock::new();
    HOST.get_or_init(|| {
        let host =
            meshwasm_host::Host::new(meshwasm_host::HostOptions::default()).map_err(|e| format!("{e:#}"))?;
        let module = host.load(artifacts::wasm_path("meshwasm_probe")).map_err(|e| format!("{e:#}"))?;
        Ok((host, module))
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the scenario in the meshwasm wasmtime host (one worker, virtual clock).
pub fn run_host(s: &Scenario) -> Result<Run> {
    use meshwasm_host::{CallReply, Plugin, Proxy, Request, StreamState, Upstream};
    let up = Upstreams::start(s)?;
    let (host, module) = shared_host()?;
    // Envoy runs --concurrency 1: one worker plus the main thread's root contexts.
    let mut b = Proxy::builder(host)
        .workers(1)
        .main_thread(true)
        .forwarded_proto(true)
        .upstream("backend", Upstream::forward(up.backend.addr()))
        .upstream("callout", Upstream::forward(up.callout.addr()))
        .upstream("slow", Upstream::handler(|_| CallReply::no_answer()))
        .upstream("down", Upstream::forward(up.down));
    for p in &s.probes {
        let module = match &p.exports {
            None => module.clone(),
            Some(_) => host.load(p.wasm()?)?,
        };
        b = b.plugin(
            Plugin::new(module).name(&p.name).root_id(&p.name).vm_id(&p.vm_id).config(p.script.to_string()),
        );
    }
    for p in &s.services {
        let module = match &p.exports {
            None => module.clone(),
            Some(_) => host.load(p.wasm()?)?,
        };
        b = b.service(
            Plugin::new(module).name(&p.name).root_id(&p.name).vm_id(&p.vm_id).config(p.script.to_string()),
        );
    }
    let mut proxy = b.build()?;
    let mut all_logs: Vec<String> = Vec::new();
    let mut requests = Vec::new();
    for r in &s.requests {
        let before_up = up.backend.request_count();
        let mut req = Request::new(&r.method, &r.path);
        for (k, v) in &r.headers {
            req = req.header(k, v);
        }
        if !r.body.is_empty() {
            req = req.body(&r.body);
        }
        let id = proxy.start(0, req)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut virtual_waited = Duration::ZERO;
        loop {
            match proxy.stream_state(id) {
                Some(StreamState::WaitingUpstream) => {
                    proxy.finish(id, up.backend.addr())?;
                }
                Some(StreamState::Paused { .. }) if virtual_waited < Duration::from_secs(30) => {
                    proxy.advance(Duration::from_millis(50));
                    virtual_waited += Duration::from_millis(50);
                }
                _ => break,
            }
            if Instant::now() > deadline {
                bail!("scenario {}: host stream did not complete", s.name);
            }
        }
        let ex = proxy.exchange(id).context("no exchange")?;
        let logs: Vec<String> = proxy.take_logs().into_iter().map(|l| l.message).collect();
        let text = logs.join("\n");
        all_logs.extend(logs);
        let lines = parse_lines(&text, STREAM_TRACE_PREFIX);
        let upstream = (up.backend.request_count() > before_up).then(|| up.backend.last_request()).flatten();
        let headers: Vec<(String, String)> = ex
            .response_headers
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let mut obs = Observation {
            status: ex.status,
            response_headers: headers.iter().filter(|(k, _)| keep_header(k)).cloned().collect(),
            response_body: ex.body_text(),
            upstream: upstream.as_ref().map(upstream_seen),
            traces: stream_traces(&lines),
            response_header_traces: header_traces(headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            upstream_header_traces: upstream
                .as_ref()
                .map(|u| header_traces(u.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
                .unwrap_or_default(),
        };
        if let Some(err) = &ex.error {
            obs.response_headers.push(("meshwasm-host-error".into(), err.clone()));
        }
        requests.push(obs);
    }
    if !s.settle.is_zero() {
        proxy.advance(s.settle);
    }
    all_logs.extend(proxy.take_logs().into_iter().map(|l| l.message));
    let root = parse_lines(&all_logs.join("\n"), ROOT_TRACE_PREFIX);
    let metrics = s.metrics.iter().map(|m| ((*m).to_owned(), proxy.metric(m))).collect();
    Ok(Run {
        host: "wasmtime",
        requests,
        root_events: root_events(s, &root),
        root_contexts: root_contexts(s, &root),
        metrics,
        callouts: up.callout.requests().iter().map(upstream_seen).collect(),
    })
}

// ---------------------------------------------------------------- comparison

/// Known host gap, normalized away except in scenarios with `exact_body_chunks`: over an HTTP/1.1
/// upstream Envoy delivers a body as `on_*_body(n, eos=false)` followed by `on_*_body(0, eos=true)`
/// (the codec's message-complete), and when the first call paused, the second gets the cumulative
/// size with eos=true. The host delivers one `on_*_body(n, eos=true)`. This merges Envoy's pair into
/// the host's single callback so that the other observations stay comparable.
pub fn merge_body_split(run: &mut Run) {
    for obs in &mut run.requests {
        for trace in obs.traces.values_mut() {
            let Value::Array(events) = trace else { continue };
            let mut out: Vec<Value> = Vec::with_capacity(events.len());
            for ev in events.drain(..) {
                let cb = ev["cb"].as_str().unwrap_or_default();
                let is_body = cb == "request_body" || cb == "response_body";
                if is_body
                    && ev["eos"] == true
                    && let Some(prev) = out.last_mut()
                    && prev["cb"] == cb
                    && prev["eos"] == false
                {
                    if ev["size"] == 0 && prev["action"] == 0 {
                        prev["eos"] = Value::Bool(true);
                        continue;
                    }
                    if prev["action"] == 1 && ev["size"] == prev["size"] {
                        *prev = ev;
                        continue;
                    }
                }
                out.push(ev);
            }
            *events = out;
        }
    }
}

/// Paths where two runs differ (empty when they match), e.g. `requests[0].traces.p.2.ops.1.status: 2 != 0`.
pub fn diff(envoy: &Run, host: &Run) -> Vec<String> {
    let mut a = serde_json::to_value(envoy).unwrap_or(Value::Null);
    let mut b = serde_json::to_value(host).unwrap_or(Value::Null);
    a["host"] = Value::Null;
    b["host"] = Value::Null;
    let mut out = Vec::new();
    diff_values("", &a, &b, &mut out);
    out
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let n = Value::Null;
                diff_values(&format!("{path}.{k}"), x.get(k).unwrap_or(&n), y.get(k).unwrap_or(&n), out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_values(&format!("{path}[{i}]"), p, q, out);
            }
            if x.len() != y.len() {
                let n = x.len().min(y.len());
                out.push(format!(
                    "{path}: envoy has {} items, wasmtime {}; from [{n}]: envoy {} / wasmtime {}",
                    x.len(),
                    y.len(),
                    Value::Array(x[n..].to_vec()),
                    Value::Array(y[n..].to_vec())
                ));
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: envoy {a} != wasmtime {b}")),
    }
}

/// Runs `s` in both hosts: the checks must hold in Envoy and the host must observe the same.
/// Returns both runs and the differences.
pub fn run_both(s: &Scenario) -> Result<(Run, Run, Vec<String>)> {
    let mut envoy = run_envoy(s)?;
    let mut host = run_host(s)?;
    if !s.exact_body_chunks {
        merge_body_split(&mut envoy);
        merge_body_split(&mut host);
    }
    let d = diff(&envoy, &host);
    Ok((envoy, host, d))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run_with(events: Value) -> Run {
        Run {
            host: "t",
            requests: vec![Observation {
                status: 200,
                response_headers: Vec::new(),
                response_body: String::new(),
                upstream: None,
                traces: BTreeMap::from([("p".to_owned(), events)]),
                response_header_traces: BTreeMap::new(),
                upstream_header_traces: BTreeMap::new(),
            }],
            root_events: BTreeMap::new(),
            root_contexts: BTreeMap::new(),
            metrics: BTreeMap::new(),
            callouts: Vec::new(),
        }
    }

    #[test]
    fn normalize_drops_volatile_keys_counts_and_transport_headers() {
        let v = json!({"cb":"request_headers","headers":5,"ops":[{"~token":3,"status":0,
            "pairs":[[":path","/"],["x-request-id","abc"],["x-forwarded-proto","http"],["content-length","3"],["x-a","1"]]}]});
        assert_eq!(
            normalize(&v),
            json!({"cb":"request_headers","ops":[{"status":0,"pairs":[[":path","/"],["content-length","3"],["x-a","1"]]}]})
        );
        // A `headers` key outside a callback event is data, not a count.
        assert_eq!(normalize(&json!({"headers":[1]})), json!({"headers":[1]}));
    }

    #[test]
    fn body_split_merges_into_one_end_of_stream_callback() {
        let mut plain = run_with(json!([
            {"cb":"response_body","size":12,"eos":false,"action":0,"ops":[]},
            {"cb":"response_body","size":0,"eos":true,"action":0,"ops":[]}]));
        merge_body_split(&mut plain);
        assert_eq!(
            plain.requests[0].traces["p"],
            json!([{"cb":"response_body","size":12,"eos":true,"action":0,"ops":[]}])
        );
        let mut paused = run_with(json!([
            {"cb":"request_body","size":5,"eos":false,"action":1,"ops":["first"]},
            {"cb":"request_body","size":5,"eos":true,"action":0,"ops":["second"]}]));
        merge_body_split(&mut paused);
        assert_eq!(
            paused.requests[0].traces["p"],
            json!([{"cb":"request_body","size":5,"eos":true,"action":0,"ops":["second"]}])
        );
        // Two real chunks stay two callbacks.
        let mut chunks = run_with(json!([
            {"cb":"request_body","size":2,"eos":false,"action":0,"ops":[]},
            {"cb":"request_body","size":3,"eos":true,"action":0,"ops":[]}]));
        merge_body_split(&mut chunks);
        assert_eq!(chunks.requests[0].traces["p"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn diff_names_paths_and_length_changes() {
        let a = run_with(json!([{"cb":"a","ops":[{"status":0}]}]));
        let b = run_with(json!([{"cb":"a","ops":[{"status":2}]},{"cb":"b"}]));
        let d = diff(&a, &b);
        assert!(
            d.iter().any(|l| l.starts_with(".requests[0].traces.p[0].ops[0].status: envoy 0 != wasmtime 2")),
            "{d:?}"
        );
        assert!(d.iter().any(|l| l.contains("envoy has 1 items, wasmtime 2")), "{d:?}");
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn probe_log_lines_are_found_in_envoy_log_format() {
        let text = "[2026-01-01][1][info][wasm] [context.cc:1151] wasm log p p: meshwasm-probe-stream {\"probe\":\"p\",\"events\":[]}\nother";
        let lines = parse_lines(text, STREAM_TRACE_PREFIX);
        assert_eq!(lines, vec![json!({"probe":"p","events":[]})]);
    }
}
