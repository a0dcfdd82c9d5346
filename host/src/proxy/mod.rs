//! The test-facing proxy: N workers, a filter chain, scripted or forwarded upstreams, a virtual clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::client;
use crate::host::Host;
use crate::http::{Exchange, ForwardedRequest, Headers, Request, StreamId, StreamState, UpstreamReply};
use crate::plugin::{Backend, CallOutcome, HttpCall, LogEntry, Upstream};
use crate::shared::ProxyState;
use crate::worker::{Worker, WorkerEvent};

mod builder;

pub use builder::{BuildError, ProxyBuilder};

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
        ProxyBuilder::new(host)
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

    /// Every shared-data key under `vm_id`, sorted.
    pub fn shared_data_keys(&self, vm_id: &str) -> Vec<String> {
        self.state.shared_data_keys(vm_id)
    }

    /// Every registered shared-queue name under `vm_id`, sorted.
    pub fn queue_names(&self, vm_id: &str) -> Vec<String> {
        self.state.queue_names(vm_id)
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

    /// The wasm entries (`proxy_on_*` exports called, `proxy_on_memory_allocate` included) and hostcalls
    /// of every VM so far, summed over the workers, by VM (named by its plugins). Exact: each is counted
    /// as it happens. Use [`Proxy::reset_call_counts`] after warming up to count a steady state.
    pub fn call_counts(&self) -> BTreeMap<String, crate::CallCounts> {
        let mut out: BTreeMap<String, crate::CallCounts> = BTreeMap::new();
        for w in &self.workers {
            for (name, c) in w.call_counts() {
                out.entry(name).or_default().add(&c);
            }
        }
        out
    }

    /// Starts counting wasm entries and hostcalls again from zero in every VM.
    pub fn reset_call_counts(&mut self) {
        for w in &mut self.workers {
            w.reset_call_counts();
        }
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
