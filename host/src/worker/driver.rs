//! The driver API: what the code that runs a worker (the test [`crate::Proxy`] or `serve`) calls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::abi;
use crate::host::lock;
use crate::http::{
    Callback, CallbackRecord, Exchange, ForwardedRequest, Headers, Request, StreamId, StreamState,
    UpstreamReply,
};
use crate::plugin::CallOutcome;
use crate::shared::Waker;
use crate::vm::{CallCounts, Ctx, StreamData, sd};

use super::{Dir, DirState, Ev, StreamRt, Worker, WorkerEvent};

/// One VM of a worker as seen from outside: see [`Worker::vm_stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStats {
    /// The plugins running in this VM (`a, b` when plugins share it).
    pub plugins: String,
    /// The VM id (`vm_id` of its plugins).
    pub vm_id: String,
    /// The size of the module's linear memory in bytes (a whole number of 64 KiB pages).
    pub memory_bytes: u64,
    /// Root contexts alive (one per plugin of the VM).
    pub root_contexts: usize,
    /// Stream contexts alive (created at a stream's start, dropped at its end).
    pub stream_contexts: usize,
    /// The VM trapped and is out of service.
    pub failed: bool,
}

impl Worker {
    /// Worker index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Installs a waker, called (from any thread) when work was queued for this worker: call
    /// [`Worker::run_pending`] on the worker's thread then.
    pub fn set_waker(&mut self, waker: Waker) {
        if let Some(w) = self.shared.wakers.get(self.index) {
            *lock(w) = Some(waker);
        }
    }

    /// Removes and returns the events produced so far.
    pub fn take_events(&mut self) -> Vec<WorkerEvent> {
        std::mem::take(&mut self.events)
    }

    /// Starts a stream: runs the request through the chain as far as it goes (it may pause, end in a local
    /// reply, or reach the upstream: see the events).
    pub fn start(&mut self, req: Request) -> StreamId {
        self.reload_failed();
        let id = self.next_stream;
        self.next_stream += 1;
        let sid = StreamId { worker: self.index, id };
        let n = self.chain.len();
        let request_size = req.chunks.iter().map(|c| c.len() as u64).sum();
        let mut req = req;
        if self.shared.forwarded_proto && !req.headers.contains("x-forwarded-proto") {
            req.headers.add("x-forwarded-proto", "http");
        }
        let data = Arc::new(Mutex::new(StreamData {
            id: sid,
            req_headers: req.headers.clone(),
            req_trailers: req.trailers.clone(),
            resp_headers: Headers::new(),
            resp_trailers: None,
            req_bufs: vec![Vec::new(); n],
            resp_bufs: vec![Vec::new(); n],
            maps: vec![0; n],
            bodies: vec![0; n],
            actions: Vec::new(),
            local_replies: 0,
            properties_set: Vec::new(),
            filter_state: Vec::new(),
            props: req.properties.clone(),
            start_unix_ns: self.shared.clock.unix_ns(),
            response_code: None,
            request_size,
            response_size: 0,
            upstream_address: None,
            no_forwarded_proto: false,
        }));
        let rt = StreamRt {
            data,
            ctx: vec![None; n],
            req: (0..n).map(|_| DirState::default()).collect(),
            resp: (0..n).map(|_| DirState::default()).collect(),
            callbacks: Vec::new(),
            forwarded: ForwardedRequest::default(),
            req_done: false,
            waiting_upstream: false,
            resp_started: false,
            req_aborted: false,
            down_headers: None,
            down_body: Vec::new(),
            down_trailers: None,
            local_reply: None,
            error: None,
            reset: false,
            finished: false,
        };
        self.streams.insert(id, rt);
        let has_body = req.chunks.iter().any(|c| !c.is_empty());
        let has_trailers = req.trailers.is_some();
        self.deliver(id, Dir::Req, 0, Ev::Headers(!has_body && !has_trailers));
        if has_body {
            let chunks: Vec<Vec<u8>> = req.chunks.into_iter().filter(|c| !c.is_empty()).collect();
            self.deliver_body(id, Dir::Req, chunks, has_trailers);
        }
        if has_trailers {
            self.deliver(id, Dir::Req, 0, Ev::Trailers);
        }
        sid
    }

    /// The upstream response for a stream waiting for it. Errors if the stream is not waiting.
    pub fn deliver_upstream(&mut self, stream: StreamId, reply: UpstreamReply) -> Result<()> {
        let id = stream.id;
        let Some(rt) = self.streams.get_mut(&id) else {
            return Err(anyhow!("meshwasm-host: stream {id} is not active"));
        };
        if !rt.waiting_upstream {
            return Err(anyhow!("meshwasm-host: stream {id} is not waiting for an upstream response"));
        }
        rt.waiting_upstream = false;
        rt.resp_started = true;
        {
            let mut d = sd(&rt.data);
            d.response_code = reply.headers.get(":status").and_then(|s| s.parse().ok());
            d.resp_headers = reply.headers.clone();
            d.resp_trailers = reply.trailers.clone();
            d.response_size = reply.chunks.iter().map(|c| c.len() as u64).sum();
        }
        let chunks: Vec<Vec<u8>> = reply.chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let has_trailers = reply.trailers.is_some();
        self.deliver(id, Dir::Resp, 0, Ev::Headers(chunks.is_empty() && !has_trailers));
        self.deliver_body(id, Dir::Resp, chunks, has_trailers);
        if has_trailers {
            self.deliver(id, Dir::Resp, 0, Ev::Trailers);
        }
        Ok(())
    }

    /// Records the address the request was sent to (`upstream.address` property).
    pub fn set_upstream_address(&mut self, stream: StreamId, address: &str) {
        if let Some(rt) = self.streams.get(&stream.id) {
            sd(&rt.data).upstream_address = Some(address.to_string());
        }
    }

    /// Delivers the outcome of a dispatched http call to its root context (`on_http_call_response`).
    /// Returns false (and does nothing) for unknown tokens: cancelled with their stream, already
    /// answered, or belonging to a VM that failed since.
    pub fn deliver_call(&mut self, token: u32, outcome: CallOutcome) -> bool {
        let Some(owner) = self.calls.remove(&token) else { return false };
        let vmi = owner.vm;
        if self.vms[vmi].failed.is_some() {
            return false;
        }
        let (headers, body, trailers, status) = match outcome {
            CallOutcome::Response { headers, body, trailers } => (headers, body, trailers, (0, Vec::new())),
            CallOutcome::Timeout => (
                Headers::new()
                    .with(":status", "504")
                    .with("content-length", "24")
                    .with("content-type", "text/plain"),
                b"upstream request timeout".to_vec(),
                Headers::new(),
                (0, Vec::new()),
            ),
            CallOutcome::Failure => (Headers::new(), Vec::new(), Headers::new(), abi::failure_status()),
        };
        let failed = status.0 != 0;
        let (nh, nb, nt) =
            if failed { (0, 0, 0) } else { (headers.len() as u32, body.len() as u32, trailers.len() as u32) };
        let vm = &mut self.vms[vmi];
        let Some(func) = vm.exports.on_http_call_response.clone() else { return true };
        {
            let st = vm.store.data_mut();
            st.status = status;
            st.call_response = if failed { None } else { Some((headers, body, trailers)) };
        }
        let r = vm.call(func, owner.root, "proxy_on_http_call_response", (owner.root, token, nh, nb, nt));
        {
            let st = vm.store.data_mut();
            st.call_response = None;
        }
        let plugin = vm.plugin_name_of(owner.root);
        if let Some(sid) = owner.stream
            && let Some(rt) = self.streams.get_mut(&sid)
        {
            let filter = self.chain.iter().position(|s| s.vm == vmi && s.root == owner.root).unwrap_or(0);
            rt.callbacks.push(CallbackRecord {
                filter,
                plugin: plugin.clone(),
                callback: Callback::HttpCallResponse,
                action: None,
            });
        }
        if let Err(e) = r {
            self.vm_failed(vmi, owner.root, &e);
        }
        self.after_root_call(vmi);
        true
    }

    /// Runs queued work from other threads: shared-queue notifications (`on_queue_ready`).
    pub fn run_pending(&mut self) {
        let pending = match self.shared.notify.get(self.index) {
            Some(n) => std::mem::take(&mut *lock(n)),
            None => return,
        };
        for (vmi, ctx, token) in pending {
            let Some(vm) = self.vms.get_mut(vmi) else { continue };
            let Some(func) = vm.exports.on_queue_ready.clone() else { continue };
            if !vm.store.data().contexts.contains_key(&ctx) {
                continue;
            }
            if let Err(e) = vm.call(func, ctx, "proxy_on_queue_ready", (ctx, token)) {
                self.vm_failed(vmi, ctx, &e);
            }
            self.after_root_call(vmi);
        }
    }

    /// Whether queued work waits for [`Worker::run_pending`].
    pub fn has_pending(&self) -> bool {
        self.shared.notify.get(self.index).is_some_and(|n| !lock(n).is_empty())
    }

    /// When the next tick is due (time since the proxy started), if any root context set a tick period.
    pub fn next_tick(&self) -> Option<Duration> {
        self.ticks.values().map(|(_, due)| *due).min().map(Duration::from_nanos)
    }

    /// Fires every tick that is due now (`on_tick` on each root context whose period elapsed).
    pub fn run_timers(&mut self) {
        let now = self.shared.clock.mono_ns();
        let due: Vec<(usize, u32)> =
            self.ticks.iter().filter(|(_, (_, d))| *d <= now).map(|(k, _)| *k).collect();
        for (vmi, root) in due {
            if let Some((period, d)) = self.ticks.get_mut(&(vmi, root)) {
                *d = now + *period;
            }
            let vm = &mut self.vms[vmi];
            if vm.failed.is_some() {
                continue;
            }
            let Some(func) = vm.exports.on_tick.clone() else { continue };
            if let Err(e) = vm.call(func, root, "proxy_on_tick", root) {
                self.vm_failed(vmi, root, &e);
            }
            self.after_root_call(vmi);
        }
    }

    /// The downstream went away: the stream is reset (on_log, on_done, on_delete run). Http calls it
    /// dispatched still complete: like Envoy, calls belong to the root context.
    pub fn cancel(&mut self, stream: StreamId) {
        if let Some(rt) = self.streams.get_mut(&stream.id) {
            rt.reset = true;
            self.finish(stream.id);
        }
    }

    /// The state of an active stream (None once finished: see the Done event).
    pub fn state(&self, stream: StreamId) -> Option<StreamState> {
        let rt = self.streams.get(&stream.id)?;
        Some(self.state_of(rt))
    }

    pub(super) fn state_of(&self, rt: &StreamRt) -> StreamState {
        if rt.finished {
            return if rt.reset { StreamState::Reset } else { StreamState::Complete };
        }
        for dir in [Dir::Req, Dir::Resp] {
            if !dir.is_active(rt) {
                continue;
            }
            let states = dir.states(rt);
            let n = states.len();
            for pos in 0..n {
                let f = dir.filter_at(n, pos);
                if let Some(phase) = states[f].phase {
                    return StreamState::Paused {
                        filter: f,
                        plugin: self.chain[f].plugin.display_name().to_string(),
                        phase,
                    };
                }
            }
        }
        if rt.waiting_upstream {
            return StreamState::WaitingUpstream;
        }
        StreamState::WaitingUpstream
    }

    /// A snapshot of an active stream's exchange record.
    pub fn exchange(&self, stream: StreamId) -> Option<Exchange> {
        let rt = self.streams.get(&stream.id)?;
        Some(self.exchange_of(stream.id, rt))
    }

    pub(super) fn exchange_of(&self, id: u32, rt: &StreamRt) -> Exchange {
        let headers = rt.down_headers.clone().unwrap_or_default();
        let status =
            if rt.reset { 0 } else { headers.get(":status").and_then(|s| s.parse().ok()).unwrap_or(0) };
        Exchange {
            stream: StreamId { worker: self.index, id },
            state: self.state_of(rt),
            status,
            response_headers: headers,
            response_body: rt.down_body.clone(),
            response_trailers: rt.down_trailers.clone(),
            upstream_request: if rt.req_done { Some(rt.forwarded.clone()) } else { None },
            local_reply: rt.local_reply.clone(),
            callbacks: rt.callbacks.clone(),
            error: rt.error.clone(),
            properties_set: sd(&rt.data).properties_set.clone(),
        }
    }

    /// Number of filters in the chain.
    pub fn chain_len(&self) -> usize {
        self.chain.len()
    }

    /// Number of distinct VMs in this worker.
    pub fn vm_count(&self) -> usize {
        self.vms.len()
    }

    /// Each VM's linear memory and live contexts, in VM order (for soak runs and leak checks: a
    /// finished stream leaves no context behind, and memory that keeps growing is a leak in the module).
    pub fn vm_stats(&self) -> Vec<VmStats> {
        self.vms
            .iter()
            .enumerate()
            .map(|(vmi, vm)| {
                let state = vm.store.data();
                let mut roots = 0;
                for ctx in state.contexts.values() {
                    roots += usize::from(matches!(ctx, Ctx::Root(_)));
                }
                let plugins: Vec<&str> =
                    self.chain.iter().filter(|s| s.vm == vmi).map(|s| s.plugin.display_name()).collect();
                VmStats {
                    plugins: plugins.join(", "),
                    vm_id: vm.vm_id.clone(),
                    memory_bytes: state.memory.map_or(0, |m| m.data_size(&vm.store) as u64),
                    root_contexts: roots,
                    stream_contexts: state.contexts.len() - roots,
                    failed: vm.failed.is_some(),
                }
            })
            .collect()
    }

    /// A copy of VM `vm`'s linear memory (VMs in [`Worker::vm_stats`] order), e.g. for a test to check
    /// that nothing of another stream was ever written into it.
    pub fn vm_memory(&self, vm: usize) -> Option<Vec<u8>> {
        let vm = self.vms.get(vm)?;
        Some(vm.store.data().memory?.data(&vm.store).to_vec())
    }

    /// Streams this worker still holds (finished and reset streams are dropped).
    pub fn live_streams(&self) -> usize {
        self.streams.len()
    }

    /// http calls dispatched by this worker's VMs and not yet answered or timed out.
    pub fn pending_calls(&self) -> usize {
        self.calls.len()
    }

    /// The wasm entries and hostcalls of this worker's VMs, by VM, each named by the plugins it runs
    /// (`a, b` when plugins share a VM). Counting is always on and exact; see [`CallCounts`].
    pub fn call_counts(&self) -> BTreeMap<String, CallCounts> {
        let mut out = BTreeMap::new();
        for (vmi, vm) in self.vms.iter().enumerate() {
            let names: Vec<&str> =
                self.chain.iter().filter(|s| s.vm == vmi).map(|s| s.plugin.display_name()).collect();
            let mut seen = std::collections::HashSet::new();
            let names: Vec<&str> = names.into_iter().filter(|n| seen.insert(*n)).collect();
            let name = if names.is_empty() { vm.vm_id.clone() } else { names.join(", ") };
            out.entry(name).or_insert_with(CallCounts::default).add(&vm.call_counts());
        }
        out
    }

    /// Starts counting wasm entries and hostcalls again from zero.
    pub fn reset_call_counts(&mut self) {
        for vm in &mut self.vms {
            vm.reset_call_counts();
        }
    }

    /// The failure of the VM running filter `filter`, if it failed.
    pub fn vm_failure(&self, filter: usize) -> Option<String> {
        self.chain.get(filter).and_then(|s| self.vms[s.vm].failed.clone())
    }

    // ---- internals ----
}
