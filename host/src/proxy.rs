//! The test-facing proxy: N workers, a filter chain, scripted or forwarded upstreams, a virtual clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow, bail};

use crate::client;
use crate::foreign::{ForeignFunction, builtins};
use crate::host::Host;
use crate::http::{Exchange, ForwardedRequest, Headers, Request, StreamId, StreamState, UpstreamReply};
use crate::plugin::{Backend, CallOutcome, FailurePolicy, HttpCall, LogEntry, LogLevel, Plugin, Upstream};
use crate::shared::{Clock, ClockKind, Process, ProxyState, Shared, unix_ns};
use crate::worker::{Worker, WorkerEvent};

/// Builds a [`Proxy`] (or bare [`Worker`]s for a real-time driver).
pub struct ProxyBuilder {
    host: Host,
    workers: usize,
    plugins: Vec<Plugin>,
    upstreams: BTreeMap<String, Upstream>,
    seeds: Vec<(String, Vec<u8>)>,
    log_level: LogLevel,
    foreign: HashMap<String, ForeignFunction>,
    policy: FailurePolicy,
    buffer_limit: usize,
    start_time: SystemTime,
    split_body_end: bool,
    forwarded_proto: bool,
    main_thread: bool,
    process: Option<Arc<Process>>,
}

impl ProxyBuilder {
    /// Number of simulated workers (default 1); each has its own VMs.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Appends a filter to the chain (request callbacks run in this order, response callbacks in reverse).
    pub fn plugin(mut self, plugin: Plugin) -> Self {
        self.plugins.push(plugin);
        self
    }

    /// Declares an upstream (cluster) that `proxy_http_call` may target.
    pub fn upstream(mut self, name: &str, upstream: Upstream) -> Self {
        self.upstreams.insert(name.to_string(), upstream);
        self
    }

    /// Seeds a property for every stream (raw bytes in Envoy's encoding; see [`crate::property`]), e.g.
    /// `node.id`, `source.address`, `connection.mtls`, `connection.uri_san_peer_certificate`.
    pub fn property(mut self, path: &str, value: impl AsRef<[u8]>) -> Self {
        self.seeds.push((path.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Minimum level of `proxy_log` lines kept, and what `proxy_get_log_level` returns (default Info,
    /// Envoy's default for the wasm logger).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Registers (or replaces) a foreign function.
    pub fn foreign_function(
        mut self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, u32> + Send + Sync + 'static,
    ) -> Self {
        self.foreign.insert(name.to_string(), Arc::new(f));
        self
    }

    /// What happens to a VM that traps (default [`FailurePolicy::Reload`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Body buffer limit per filter (default 1 MiB, Envoy's default connection buffer limit): a filter
    /// buffering more gets 413 on requests, 500 on responses.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }

    /// How bodies end, by downstream/upstream protocol. `true` (default) is HTTP/1.1 as Envoy's codec
    /// does it: every chunk arrives with `end_of_stream = false`, then the body callback runs once more
    /// with 0 new bytes and `end_of_stream = true` (a filter that buffered sees the cumulative size
    /// again). `false` is HTTP/2 style: the last chunk carries `end_of_stream = true`.
    pub fn split_body_end(mut self, http1: bool) -> Self {
        self.split_body_end = http1;
        self
    }

    /// Whether the proxy has Envoy's main-thread root contexts as well as the workers' (default false;
    /// opt in for Envoy's exact root-context count). Envoy creates every plugin's root context on the
    /// main thread too (`on_vm_start`, `on_configure`, ticks, http calls, queues, shared data), so with N
    /// workers N+1 root contexts tick: a poller electing a leader through shared data sees N+1
    /// contenders. The main thread runs no streams; in logs and [`Proxy::worker`] it is worker index N
    /// ([`Proxy::worker_count`] stays N). [`ProxyBuilder::build_workers`] never creates it.
    pub fn main_thread(mut self, on: bool) -> Self {
        self.main_thread = on;
        self
    }

    /// Whether requests without `x-forwarded-proto` get `x-forwarded-proto: http` before the filters, as
    /// Envoy's connection manager adds it (default false: filters see the request as sent). With it,
    /// a filter that drops the header leaves the request without a route, as in Envoy: 404
    /// `route_not_found` at the end of the chain.
    pub fn forwarded_proto(mut self, on: bool) -> Self {
        self.forwarded_proto = on;
        self
    }

    /// Shares Envoy's process-wide state with another proxy: shared data (per vm_id), shared queues and
    /// metrics, as several listeners/filter chains of one Envoy do. Each proxy keeps its own logs,
    /// clock, workers and http calls. A queue's `on_queue_ready` goes to the registering root context,
    /// in whichever proxy that is.
    pub fn share_state(mut self, with: &ProxyState) -> Self {
        self.process = Some(with.shared.process.clone());
        self
    }

    /// Wall-clock time at virtual time zero (default 2026-01-01T00:00:00Z).
    pub fn start_time(mut self, t: SystemTime) -> Self {
        self.start_time = t;
        self
    }

    fn shared(&self, clock: ClockKind) -> Arc<Shared> {
        Arc::new(Shared {
            clock: Clock { kind: clock, start_unix_ns: unix_ns(self.start_time) },
            upstreams: self.upstreams.keys().cloned().collect(),
            seeds: self.seeds.clone(),
            log_level: self.log_level,
            foreign: self.foreign.clone(),
            buffer_limit: self.buffer_limit,
            split_body_end: self.split_body_end,
            forwarded_proto: self.forwarded_proto,
            process: self.process.clone().unwrap_or_default(),
            // One more slot for the main thread (see `main_thread`).
            notify: (0..=self.workers).map(|_| Default::default()).collect(),
            wakers: (0..=self.workers).map(|_| Default::default()).collect(),
            logs: Default::default(),
            next_token: AtomicU32::new(1),
        })
    }

    fn workers_with(&self, shared: &Arc<Shared>, main_thread: bool) -> Result<Vec<Worker>> {
        if self.plugins.is_empty() {
            bail!("meshwasm-host: a proxy needs at least one plugin");
        }
        // Envoy starts the main thread's root contexts first.
        let mut order: Vec<usize> = (0..self.workers).collect();
        if main_thread {
            order.insert(0, self.workers);
        }
        let mut workers: Vec<Worker> = order
            .into_iter()
            .map(|i| Worker::new(&self.host, shared.clone(), i, &self.plugins, self.policy))
            .collect::<Result<_>>()?;
        if main_thread {
            // Index order: workers 0..N, then the main thread.
            workers.rotate_left(1);
        }
        Ok(workers)
    }

    /// Starts every worker's VMs: `_initialize`/`main`, then per plugin `on_context_create(root)`,
    /// `on_vm_start`, `on_configure`. Err is one line naming the plugin, the module and the cause.
    pub fn build(self) -> Result<Proxy> {
        let shared = self.shared(ClockKind::Virtual(AtomicU64::new(0)));
        let workers =
            self.workers_with(&shared, self.main_thread).map_err(|e| BuildError::wrap(e, &shared))?;
        let mut p = Proxy {
            stream_workers: self.workers,
            host: self.host,
            workers,
            state: ProxyState { shared },
            upstreams: self.upstreams.into_iter().collect(),
            calls: Vec::new(),
            call_index: HashMap::new(),
            scheduled: Vec::new(),
            backends: HashMap::new(),
            done: HashMap::new(),
            ready_calls: VecDeque::new(),
            ready_upstream: VecDeque::new(),
            waiting: HashMap::new(),
        };
        p.pump();
        Ok(p)
    }

    /// For real-time drivers (`meshwasm-host serve`): the workers (each `Send`, to run on its own thread)
    /// and a handle on the shared state. Time is real; the driver performs http calls and upstream
    /// requests itself (see [`WorkerEvent`]) and calls [`Worker::run_timers`] when [`Worker::next_tick`]
    /// is due. Upstream values passed to [`ProxyBuilder::upstream`] only declare the names here.
    pub fn build_workers(self) -> Result<(Vec<Worker>, ProxyState)> {
        let shared = self.shared(ClockKind::Real(Instant::now()));
        let workers = self.workers_with(&shared, false).map_err(|e| BuildError::wrap(e, &shared))?;
        Ok((workers, ProxyState { shared }))
    }
}

/// Why [`ProxyBuilder::build`] / [`ProxyBuilder::build_workers`] failed, with every log line the guests
/// wrote until then (at the builder's log level). It is the error inside the returned `anyhow::Error`:
/// `err.downcast_ref::<BuildError>()` gets it; `Display` is the same one line as before.
#[derive(Clone, Debug)]
pub struct BuildError {
    /// One line naming the plugin, the module and the cause.
    pub message: String,
    /// The guest (and host) log lines written before the failure, in order.
    pub logs: Vec<LogEntry>,
}

impl BuildError {
    fn wrap(e: anyhow::Error, shared: &Shared) -> anyhow::Error {
        let logs = std::mem::take(&mut *crate::host::lock(&shared.logs));
        anyhow::Error::new(BuildError { message: format!("{e:#}"), logs })
    }
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {}

struct Scheduled {
    due_ns: u64,
    worker: usize,
    token: u32,
    outcome: CallOutcome,
}

/// A proxy for tests: N workers running a filter chain, with a virtual clock, scripted or forwarded
/// upstreams, and inspection of everything that happened. Deterministic: nothing happens unless a
/// method is called; http-call answers without delay are delivered before `send` returns.
pub struct Proxy {
    host: Host,
    /// Stream workers 0..stream_workers, then (optionally) the main thread.
    workers: Vec<Worker>,
    stream_workers: usize,
    state: ProxyState,
    upstreams: HashMap<String, Upstream>,
    calls: Vec<HttpCall>,
    call_index: HashMap<u32, usize>,
    scheduled: Vec<Scheduled>,
    backends: HashMap<StreamId, Backend>,
    done: HashMap<StreamId, Exchange>,
    ready_calls: VecDeque<(usize, u32, CallOutcome)>,
    ready_upstream: VecDeque<(StreamId, UpstreamReply)>,
    waiting: HashMap<StreamId, ForwardedRequest>,
}

impl Proxy {
    /// A builder with one worker, no plugins, Envoy's defaults.
    pub fn builder(host: &Host) -> ProxyBuilder {
        ProxyBuilder {
            host: host.clone(),
            workers: 1,
            plugins: Vec::new(),
            upstreams: BTreeMap::new(),
            seeds: Vec::new(),
            log_level: LogLevel::Info,
            foreign: builtins(),
            policy: FailurePolicy::default(),
            buffer_limit: 1 << 20,
            split_body_end: true,
            forwarded_proto: false,
            main_thread: false,
            process: None,
            start_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        }
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Number of workers (streams run on 0..count; the main thread, if any, is not counted).
    pub fn worker_count(&self) -> usize {
        self.stream_workers
    }

    /// A worker (for its chain and VM details); index [`Proxy::worker_count`] is the main thread.
    pub fn worker(&self, index: usize) -> Option<&Worker> {
        self.workers.get(index)
    }

    /// Virtual time since the proxy was built.
    pub fn now(&self) -> Duration {
        self.state.elapsed()
    }

    /// A handle on the shared state (logs, metrics, shared data, queues).
    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// Sends a request through the chain on `worker`; when it reaches the end of the chain it gets
    /// `backend`'s response. Runs until the stream completes or waits (e.g. on a delayed call answer:
    /// then [`Proxy::advance`] and [`Proxy::exchange`]). VM failures are reported in the exchange, not as
    /// Err; Err is misuse (no such worker).
    pub fn send(&mut self, worker: usize, req: Request, backend: impl Into<Backend>) -> Result<Exchange> {
        let id = self.start_with(worker, req, Some(backend.into()))?;
        self.exchange(id).ok_or_else(|| anyhow!("meshwasm-host: stream {id:?} vanished"))
    }

    /// Starts a stream without an upstream answer: it runs until it pauses or reaches the upstream
    /// ([`StreamState::WaitingUpstream`]); answer with [`Proxy::finish`].
    pub fn start(&mut self, worker: usize, req: Request) -> Result<StreamId> {
        self.start_with(worker, req, None)
    }

    fn start_with(&mut self, worker: usize, req: Request, backend: Option<Backend>) -> Result<StreamId> {
        let n = self.stream_workers;
        let w = self
            .workers
            .get_mut(worker)
            .filter(|_| worker < n)
            .ok_or_else(|| anyhow!("meshwasm-host: no worker {worker} (proxy has {n})"))?;
        let id = w.start(req);
        if let Some(b) = backend {
            self.backends.insert(id, b);
        }
        self.pump();
        Ok(id)
    }

    /// Where a stream is (Complete/Reset once finished; None for unknown ids).
    pub fn stream_state(&self, id: StreamId) -> Option<StreamState> {
        if let Some(ex) = self.done.get(&id) {
            return Some(ex.state.clone());
        }
        self.workers.get(id.worker)?.state(id)
    }

    /// Gives the stream its upstream answer (now if it waits for it, else when it gets there) and runs
    /// it as far as it goes.
    pub fn finish(&mut self, id: StreamId, backend: impl Into<Backend>) -> Result<Exchange> {
        self.backends.insert(id, backend.into());
        if let Some(req) = self.waiting.remove(&id) {
            self.resolve_upstream(id, req);
        }
        self.pump();
        self.exchange(id).ok_or_else(|| anyhow!("meshwasm-host: unknown stream {id:?}"))
    }

    /// The exchange record of a stream (final once it completed, else a snapshot).
    pub fn exchange(&self, id: StreamId) -> Option<Exchange> {
        if let Some(ex) = self.done.get(&id) {
            return Some(ex.clone());
        }
        self.workers.get(id.worker)?.exchange(id)
    }

    /// Cancels a stream as if the client went away.
    pub fn cancel(&mut self, id: StreamId) {
        if let Some(w) = self.workers.get_mut(id.worker) {
            w.cancel(id);
        }
        self.pump();
    }

    /// Advances virtual time: fires due ticks in every worker (in time order), delivers delayed call
    /// answers and call timeouts, and runs whatever they resume.
    pub fn advance(&mut self, by: Duration) {
        let now = self.state.shared.clock.mono_ns();
        let target = now.saturating_add(by.as_nanos() as u64);
        loop {
            let sched = self.scheduled.iter().map(|s| s.due_ns).min();
            let tick = self.workers.iter().filter_map(|w| w.next_tick()).map(|d| d.as_nanos() as u64).min();
            let next = [sched, tick].into_iter().flatten().min();
            let Some(t) = next.filter(|t| *t <= target) else { break };
            let cur = self.state.shared.clock.mono_ns();
            self.state.shared.clock.set_virtual(t.max(cur));
            let (due, rest): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.scheduled).into_iter().partition(|s| s.due_ns <= t);
            self.scheduled = rest;
            for s in due {
                self.ready_calls.push_back((s.worker, s.token, s.outcome));
            }
            for w in &mut self.workers {
                w.run_timers();
            }
            self.pump();
        }
        self.state.shared.clock.set_virtual(target);
        self.pump();
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.state.logs()
    }

    /// Removes and returns the log lines so far.
    pub fn take_logs(&self) -> Vec<LogEntry> {
        self.state.take_logs()
    }

    /// Whether any log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.state.logs().iter().any(|l| l.message.contains(needle))
    }

    /// Counters and gauges by name (histograms: sample count).
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        self.state.metrics()
    }

    /// One counter or gauge.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.state.metric(name)
    }

    /// Histogram samples.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.state.histogram(name)
    }

    /// A shared-data value and its CAS.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.state.shared_data(vm_id, key)
    }

    /// Sets shared data from outside (unconditional).
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8]) {
        self.state.set_shared_data(vm_id, key, value)
    }

    /// Enqueues onto a shared queue from outside and runs `on_queue_ready`. False if no such queue.
    pub fn enqueue(&mut self, vm_id: &str, name: &str, item: &[u8]) -> bool {
        let ok = self.state.enqueue(vm_id, name, item);
        self.pump();
        ok
    }

    /// Every http call dispatched so far, with its outcome.
    pub fn calls(&self) -> &[HttpCall] {
        &self.calls
    }

    fn resolve_upstream(&mut self, id: StreamId, req: ForwardedRequest) {
        let Some(backend) = self.backends.get(&id).cloned() else {
            self.waiting.insert(id, req);
            return;
        };
        let reply = match backend {
            Backend::Reply(r) => r,
            Backend::Forward(addr) => {
                if let Some(w) = self.workers.get_mut(id.worker) {
                    w.set_upstream_address(id, &addr.to_string());
                }
                match client::send(addr, &req.headers, &req.body, Duration::from_secs(30)) {
                    Ok((h, b)) => UpstreamReply::from_parts(h, b, None),
                    Err(e) => UpstreamReply::new(503).header("content-type", "text/plain").body(format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {e}"
                    )),
                }
            }
        };
        self.ready_upstream.push_back((id, reply));
    }

    fn resolve_call(&mut self, worker: usize, call: crate::worker::OutboundCall) {
        let now = self.state.shared.clock.mono_ns();
        let timeout_ns = call.timeout.as_nanos() as u64;
        let mut record = HttpCall {
            token: call.token,
            worker,
            plugin: call.plugin.clone(),
            upstream: call.upstream.clone(),
            headers: call.headers.clone(),
            body: call.body.clone(),
            trailers: call.trailers.clone(),
            timeout: call.timeout,
            dispatched_at: Duration::from_nanos(now),
            outcome: None,
        };
        let reply = match self.upstreams.get(&call.upstream) {
            Some(Upstream::Handler(f)) => f(&record),
            Some(Upstream::Forward(addr)) => {
                match client::send(*addr, &call.headers, &call.body, call.timeout) {
                    Ok((h, b)) => crate::plugin::CallReply {
                        outcome: Some(CallOutcome::Response {
                            headers: h,
                            body: b,
                            trailers: Headers::new(),
                        }),
                        delay: Duration::ZERO,
                    },
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        crate::plugin::CallReply {
                            outcome: Some(CallOutcome::Timeout),
                            delay: Duration::ZERO,
                        }
                    }
                    // Envoy's async client (http calls) answers a refused connection with this exact body,
                    // without the transport failure reason the router adds for streams.
                    Err(_) => crate::plugin::CallReply::response(
                        503,
                        Headers::new().with("content-type", "text/plain"),
                        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
                    ),
                }
            }
            None => crate::plugin::CallReply::failure(),
        };
        let _ = &mut record;
        self.call_index.insert(call.token, self.calls.len());
        self.calls.push(record);
        let delay = reply.delay.as_nanos() as u64;
        match reply.outcome {
            None => {
                if timeout_ns > 0 {
                    self.scheduled.push(Scheduled {
                        due_ns: now + timeout_ns,
                        worker,
                        token: call.token,
                        outcome: CallOutcome::Timeout,
                    });
                }
            }
            Some(outcome) => {
                if timeout_ns > 0 && delay >= timeout_ns {
                    self.scheduled.push(Scheduled {
                        due_ns: now + timeout_ns,
                        worker,
                        token: call.token,
                        outcome: CallOutcome::Timeout,
                    });
                } else if delay == 0 {
                    self.ready_calls.push_back((worker, call.token, outcome));
                } else {
                    self.scheduled.push(Scheduled {
                        due_ns: now + delay,
                        worker,
                        token: call.token,
                        outcome,
                    });
                }
            }
        }
    }

    /// Runs everything that is ready: queue notifications, dispatched calls, answers, upstream replies.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for w in &mut self.workers {
                if w.has_pending() {
                    w.run_pending();
                    progressed = true;
                }
            }
            let mut events = Vec::new();
            for (i, w) in self.workers.iter_mut().enumerate() {
                events.extend(w.take_events().into_iter().map(|e| (i, e)));
            }
            progressed |= !events.is_empty();
            for (i, ev) in events {
                match ev {
                    WorkerEvent::HttpCall(c) => self.resolve_call(i, c),
                    WorkerEvent::Upstream { stream, request } => self.resolve_upstream(stream, request),
                    WorkerEvent::Done(ex) => {
                        self.backends.remove(&ex.stream);
                        self.done.insert(ex.stream, *ex);
                    }
                }
            }
            while let Some((w, token, outcome)) = self.ready_calls.pop_front() {
                progressed = true;
                let delivered =
                    self.workers.get_mut(w).is_some_and(|worker| worker.deliver_call(token, outcome.clone()));
                if delivered && let Some(&i) = self.call_index.get(&token) {
                    self.calls[i].outcome = Some(outcome);
                }
            }
            while let Some((id, reply)) = self.ready_upstream.pop_front() {
                progressed = true;
                if let Some(worker) = self.workers.get_mut(id.worker) {
                    let _ = worker.deliver_upstream(id, reply);
                }
            }
            if !progressed {
                break;
            }
        }
    }
}
