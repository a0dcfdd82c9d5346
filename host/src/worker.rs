//! One simulated Envoy worker: its own VMs (one per distinct vm_id + module), the filter chain, and the
//! streams it runs. A [`Worker`] is a synchronous state machine that never does I/O: it reports what it
//! needs through [`WorkerEvent`]s (an http call to dispatch, a request to forward upstream, a finished
//! exchange) and is fed answers later. [`crate::Proxy`] drives workers for tests; the `serve` command
//! drives each on its own thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::abi;
use crate::host::{Host, lock};
use crate::http::{
    Action, Callback, CallbackRecord, Exchange, ForwardedRequest, Headers, LocalReply, Phase, Request,
    StreamId, StreamState, UpstreamReply,
};
use crate::plugin::{CallOutcome, FailurePolicy, LogLevel, Plugin};
use crate::shared::{Shared, Waker};
use crate::vm::{
    BODY_REQ, BODY_RESP, Ctx, MAP_REQ_HEADERS, MAP_REQ_TRAILERS, MAP_RESP_HEADERS, MAP_RESP_TRAILERS,
    RootInfo, StreamAction, StreamData, StreamRef, Vm, sd,
};

/// An http call a filter dispatched, for the driver to perform.
#[derive(Clone, Debug)]
pub struct OutboundCall {
    /// Token; answer with [`Worker::deliver_call`].
    pub token: u32,
    /// Plugin name of the dispatching context.
    pub plugin: String,
    /// Upstream (cluster) name.
    pub upstream: String,
    /// Headers (including `:method`, `:path`, `:authority`).
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers.
    pub trailers: Headers,
    /// Timeout requested by the guest.
    pub timeout: Duration,
}

/// Something a worker needs from its driver, or reports to it.
#[derive(Clone, Debug)]
pub enum WorkerEvent {
    /// Perform this http call, then [`Worker::deliver_call`] its outcome (a timeout is the driver's job:
    /// deliver [`CallOutcome::Timeout`]).
    HttpCall(OutboundCall),
    /// The request went through the chain: send it upstream, then [`Worker::deliver_upstream`].
    Upstream {
        /// The stream.
        stream: StreamId,
        /// The request as it left the chain.
        request: ForwardedRequest,
    },
    /// The stream finished (response sent downstream, local reply, VM failure or reset).
    Done(Box<Exchange>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Req,
    Resp,
}

#[derive(Debug)]
enum Ev {
    Headers(bool),
    Data(Vec<u8>, bool),
    Trailers,
}

#[derive(Default)]
struct DirState {
    stopped_all: bool,
    headers_eos: bool,
    held: Vec<Ev>,
    buffering: bool,
    body_eos: bool,
    phase: Option<Phase>,
}

struct StreamRt {
    data: StreamRef,
    ctx: Vec<Option<u32>>,
    req: Vec<DirState>,
    resp: Vec<DirState>,
    callbacks: Vec<CallbackRecord>,
    forwarded: ForwardedRequest,
    req_done: bool,
    waiting_upstream: bool,
    /// The upstream response reached the filters (response headers exist in Envoy's terms).
    resp_started: bool,
    req_aborted: bool,
    down_headers: Option<Headers>,
    down_body: Vec<u8>,
    down_trailers: Option<Headers>,
    local_reply: Option<LocalReply>,
    error: Option<String>,
    reset: bool,
    finished: bool,
}

struct FilterSlot {
    plugin: Plugin,
    vm: usize,
    root: u32,
}

struct CallOwner {
    vm: usize,
    root: u32,
    stream: Option<u32>,
}

/// One simulated Envoy worker thread. `Send`: move it to the thread that runs it.
pub struct Worker {
    index: usize,
    host: Host,
    shared: Arc<Shared>,
    vms: Vec<Vm>,
    chain: Vec<FilterSlot>,
    streams: BTreeMap<u32, StreamRt>,
    next_stream: u32,
    calls: HashMap<u32, CallOwner>,
    ticks: BTreeMap<(usize, u32), (u64, u64)>,
    events: Vec<WorkerEvent>,
    policy: FailurePolicy,
}

fn first_error_line(shared: &Shared, worker: usize, plugin: &str) -> Option<String> {
    lock(&shared.logs)
        .iter()
        .rev()
        .find(|l| l.worker == worker && l.plugin == plugin && l.level >= LogLevel::Warn)
        .map(|l| l.message.clone())
}

impl Worker {
    pub(crate) fn new(
        host: &Host,
        shared: Arc<Shared>,
        index: usize,
        plugins: &[Plugin],
        policy: FailurePolicy,
    ) -> Result<Self> {
        let mut w = Worker {
            index,
            host: host.clone(),
            shared,
            vms: Vec::new(),
            chain: Vec::new(),
            streams: BTreeMap::new(),
            next_stream: 1,
            calls: HashMap::new(),
            ticks: BTreeMap::new(),
            events: Vec::new(),
            policy,
        };
        for p in plugins {
            let vm = match w.vms.iter().position(|v| v.vm_id == p.vm_id && v.module.same_as(&p.module)) {
                Some(i) => i,
                None => {
                    let vm = Vm::instantiate(host, w.shared.clone(), index, w.vms.len(), p).map_err(|e| {
                        anyhow!(
                            "meshwasm-host: plugin `{}` (module {}): {}",
                            p.display_name(),
                            p.module.name(),
                            e
                        )
                    })?;
                    w.vms.push(vm);
                    w.vms.len() - 1
                }
            };
            w.chain.push(FilterSlot { plugin: p.clone(), vm, root: 0 });
        }
        for f in 0..w.chain.len() {
            let root = w.start_root(f).map_err(|e| {
                let p = &w.chain[f].plugin;
                let hint = first_error_line(&w.shared, index, p.display_name())
                    .map(|l| format!(" (guest log: {l})"))
                    .unwrap_or_default();
                anyhow!(
                    "meshwasm-host: plugin `{}` (module {}): {}{}",
                    p.display_name(),
                    p.module.name(),
                    e,
                    hint
                )
            })?;
            w.chain[f].root = root;
        }
        Ok(w)
    }

    /// Creates the root context of filter `f`, runs on_vm_start and on_configure.
    fn start_root(&mut self, f: usize) -> Result<u32, String> {
        let p = self.chain[f].plugin.clone();
        let vmi = self.chain[f].vm;
        let vm = &mut self.vms[vmi];
        let root = vm.new_ctx_id();
        vm.store.data_mut().contexts.insert(
            root,
            Ctx::Root(Arc::new(RootInfo {
                plugin_name: p.name.clone(),
                root_id: p.root_id.clone(),
                vm_id: p.vm_id.clone(),
            })),
        );
        if let Some(func) = vm.exports.on_context_create.clone() {
            vm.call(func, root, "proxy_on_context_create", (root, 0))?;
        }
        if let Some(func) = vm.exports.on_vm_start.clone() {
            let len = p.vm_config.len() as u32;
            let ok = vm.call(func, root, "proxy_on_vm_start", (root, len))?;
            if ok == 0 {
                return Err("on_vm_start returned false (VM configuration rejected)".into());
            }
        }
        if let Some(func) = vm.exports.on_configure.clone() {
            vm.store.data_mut().plugin_config = Some(p.config.clone());
            let r = vm.call(func, root, "proxy_on_configure", (root, p.config.len() as u32));
            vm.store.data_mut().plugin_config = None;
            if r? == 0 {
                return Err("on_configure returned false (plugin configuration rejected)".into());
            }
        }
        self.collect(vmi);
        Ok(root)
    }

    /// Recreates failed VMs (FailurePolicy::Reload).
    fn reload_failed(&mut self) {
        if self.policy != FailurePolicy::Reload {
            return;
        }
        for vmi in 0..self.vms.len() {
            if self.vms[vmi].failed.is_none() {
                continue;
            }
            let Some(first) = self.chain.iter().position(|s| s.vm == vmi) else { continue };
            let plugin = self.chain[first].plugin.clone();
            match Vm::instantiate(&self.host, self.shared.clone(), self.index, vmi, &plugin) {
                Ok(vm) => {
                    self.vms[vmi] = vm;
                    self.ticks.retain(|(v, _), _| *v != vmi);
                    self.calls.retain(|_, o| o.vm != vmi);
                    for f in 0..self.chain.len() {
                        if self.chain[f].vm == vmi {
                            match self.start_root(f) {
                                Ok(root) => self.chain[f].root = root,
                                Err(e) => {
                                    self.host_log(
                                        LogLevel::Error,
                                        format!(
                                            "reloading VM for plugin `{}` failed: {e}",
                                            plugin.display_name()
                                        ),
                                    );
                                    self.vms[vmi].failed = Some(e);
                                    break;
                                }
                            }
                        }
                    }
                    if self.vms[vmi].failed.is_none() {
                        self.host_log(
                            LogLevel::Info,
                            format!("VM for plugin `{}` reloaded after a failure", plugin.display_name()),
                        );
                    }
                }
                Err(e) => self.host_log(
                    LogLevel::Error,
                    format!("reloading VM for plugin `{}` failed: {e}", plugin.display_name()),
                ),
            }
        }
    }

    fn host_log(&self, level: LogLevel, msg: String) {
        self.shared.log(self.index, "meshwasm-host", level, msg);
    }

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

    fn state_of(&self, rt: &StreamRt) -> StreamState {
        if rt.finished {
            return if rt.reset { StreamState::Reset } else { StreamState::Complete };
        }
        for (dir, states) in [(Dir::Req, &rt.req), (Dir::Resp, &rt.resp)] {
            if dir == Dir::Req && rt.req_aborted {
                continue;
            }
            let n = states.len();
            for pos in 0..n {
                let f = if dir == Dir::Req { pos } else { n - 1 - pos };
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

    fn exchange_of(&self, id: u32, rt: &StreamRt) -> Exchange {
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

    /// The failure of the VM running filter `filter`, if it failed.
    pub fn vm_failure(&self, filter: usize) -> Option<String> {
        self.chain.get(filter).and_then(|s| self.vms[s.vm].failed.clone())
    }

    // ---- internals ----

    /// Delivers body chunks (non-empty) into the chain. Over HTTP/1.1 (Envoy's codec) every chunk has
    /// eos=false and the message end is a separate empty chunk with eos=true; otherwise the last chunk
    /// carries eos. With trailers, eos is never set here.
    fn deliver_body(&mut self, id: u32, dir: Dir, chunks: Vec<Vec<u8>>, has_trailers: bool) {
        if chunks.is_empty() {
            return;
        }
        let split = self.shared.split_body_end;
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            self.deliver(id, dir, 0, Ev::Data(c, i == last && !has_trailers && !split));
        }
        if split && !has_trailers {
            self.deliver(id, dir, 0, Ev::Data(Vec::new(), true));
        }
    }

    fn pos_to_filter(&self, dir: Dir, pos: usize) -> usize {
        match dir {
            Dir::Req => pos,
            Dir::Resp => self.chain.len() - 1 - pos,
        }
    }

    fn filter_to_pos(&self, dir: Dir, f: usize) -> usize {
        self.pos_to_filter(dir, f)
    }

    fn dir_state(&mut self, id: u32, dir: Dir, f: usize) -> Option<&mut DirState> {
        let rt = self.streams.get_mut(&id)?;
        Some(match dir {
            Dir::Req => &mut rt.req[f],
            Dir::Resp => &mut rt.resp[f],
        })
    }

    fn active(&self, id: u32, dir: Dir) -> bool {
        match self.streams.get(&id) {
            Some(rt) => !(rt.finished || (dir == Dir::Req && rt.req_aborted)),
            None => false,
        }
    }

    fn deliver(&mut self, id: u32, dir: Dir, pos: usize, ev: Ev) {
        if !self.active(id, dir) {
            return;
        }
        let n = self.chain.len();
        if pos >= n {
            self.sink(id, dir, ev);
            return;
        }
        let f = self.pos_to_filter(dir, pos);
        let has_ctx = self.streams.get(&id).is_some_and(|rt| rt.ctx[f].is_some());
        let vm_failed = self.vms[self.chain[f].vm].failed.is_some();
        if dir == Dir::Resp && (!has_ctx || vm_failed) {
            // This filter never saw the request (an earlier filter replied locally), or its VM failed
            // (Envoy skips it: failure_local_reply_sent_).
            return self.deliver(id, dir, pos + 1, ev);
        }
        if !has_ctx && !self.create_ctx(id, f) {
            return;
        }
        let Some(st) = self.dir_state(id, dir, f) else { return };
        if st.stopped_all {
            st.held.push(ev);
            return;
        }
        let data = self.streams[&id].data.clone();
        let (map_h, map_t, body_bit) = match dir {
            Dir::Req => (MAP_REQ_HEADERS, MAP_REQ_TRAILERS, BODY_REQ),
            Dir::Resp => (MAP_RESP_HEADERS, MAP_RESP_TRAILERS, BODY_RESP),
        };
        match ev {
            Ev::Headers(eos) => {
                let nh = {
                    let mut d = sd(&data);
                    d.maps[f] |= map_h;
                    if dir == Dir::Req { d.req_headers.len() } else { d.resp_headers.len() }
                };
                if let Some(st) = self.dir_state(id, dir, f) {
                    st.headers_eos = eos;
                }
                let cb = if dir == Dir::Req { Callback::RequestHeaders } else { Callback::ResponseHeaders };
                let Some(action) = self.call_filter(id, f, cb, nh as u32, Some(u32::from(eos))) else {
                    return;
                };
                let local = sd(&data).actions.iter().any(|a| matches!(a, StreamAction::LocalReply(..)));
                if action == Action::Continue && !local {
                    sd(&data).maps[f] &= !map_h;
                    self.process_actions(id);
                    self.deliver(id, dir, pos + 1, Ev::Headers(eos));
                } else {
                    if let Some(st) = self.dir_state(id, dir, f) {
                        st.stopped_all = true;
                        st.phase = Some(if dir == Dir::Req {
                            Phase::RequestHeaders
                        } else {
                            Phase::ResponseHeaders
                        });
                    }
                    self.process_actions(id);
                }
            }
            Ev::Data(bytes, eos) => {
                let len = {
                    let mut d = sd(&data);
                    let bufs = if dir == Dir::Req { &mut d.req_bufs } else { &mut d.resp_bufs };
                    bufs[f].extend_from_slice(&bytes);
                    let len = bufs[f].len();
                    d.bodies[f] |= body_bit;
                    len
                };
                if let Some(st) = self.dir_state(id, dir, f) {
                    st.body_eos = eos;
                }
                let cb = if dir == Dir::Req { Callback::RequestBody } else { Callback::ResponseBody };
                let Some(action) = self.call_filter(id, f, cb, len as u32, Some(u32::from(eos))) else {
                    return;
                };
                let local = sd(&data).actions.iter().any(|a| matches!(a, StreamAction::LocalReply(..)));
                if action == Action::Continue && !local {
                    let buf = {
                        let mut d = sd(&data);
                        d.bodies[f] &= !body_bit;
                        let bufs = if dir == Dir::Req { &mut d.req_bufs } else { &mut d.resp_bufs };
                        std::mem::take(&mut bufs[f])
                    };
                    if let Some(st) = self.dir_state(id, dir, f) {
                        st.buffering = false;
                        st.phase = None;
                    }
                    self.process_actions(id);
                    self.deliver(id, dir, pos + 1, Ev::Data(buf, eos));
                } else {
                    if let Some(st) = self.dir_state(id, dir, f) {
                        st.buffering = true;
                        if eos || local {
                            st.phase =
                                Some(if dir == Dir::Req { Phase::RequestBody } else { Phase::ResponseBody });
                        }
                    }
                    self.process_actions(id);
                    if len > self.shared.buffer_limit && self.active(id, dir) {
                        self.buffer_overflow(id, dir, f);
                    }
                }
            }
            Ev::Trailers => {
                let nt = {
                    let mut d = sd(&data);
                    d.maps[f] |= map_t;
                    if dir == Dir::Req {
                        d.req_trailers.as_ref().map_or(0, |t| t.len())
                    } else {
                        d.resp_trailers.as_ref().map_or(0, |t| t.len())
                    }
                };
                let cb = if dir == Dir::Req { Callback::RequestTrailers } else { Callback::ResponseTrailers };
                let Some(action) = self.call_filter(id, f, cb, nt as u32, None) else { return };
                let local = sd(&data).actions.iter().any(|a| matches!(a, StreamAction::LocalReply(..)));
                if action == Action::Continue && !local {
                    sd(&data).maps[f] &= !map_t;
                    self.process_actions(id);
                    self.pass_buffer_then_trailers(id, dir, f);
                } else {
                    if let Some(st) = self.dir_state(id, dir, f) {
                        st.stopped_all = true;
                        st.phase = Some(if dir == Dir::Req {
                            Phase::RequestTrailers
                        } else {
                            Phase::ResponseTrailers
                        });
                    }
                    self.process_actions(id);
                }
            }
        }
    }

    fn pass_buffer_then_trailers(&mut self, id: u32, dir: Dir, f: usize) {
        let pos = self.filter_to_pos(dir, f);
        let Some(rt) = self.streams.get(&id) else { return };
        let data = rt.data.clone();
        let buf = {
            let mut d = sd(&data);
            let bit = if dir == Dir::Req { BODY_REQ } else { BODY_RESP };
            d.bodies[f] &= !bit;
            let bufs = if dir == Dir::Req { &mut d.req_bufs } else { &mut d.resp_bufs };
            std::mem::take(&mut bufs[f])
        };
        if let Some(st) = self.dir_state(id, dir, f) {
            st.buffering = false;
        }
        if !buf.is_empty() {
            self.deliver(id, dir, pos + 1, Ev::Data(buf, false));
        }
        self.deliver(id, dir, pos + 1, Ev::Trailers);
    }

    /// Continues iteration at filter `f` after a pause (continue_stream).
    fn resume(&mut self, id: u32, dir: Dir, f: usize) {
        if !self.active(id, dir) {
            return;
        }
        let pos = self.filter_to_pos(dir, f);
        let Some(st) = self.dir_state(id, dir, f) else { return };
        if st.stopped_all {
            st.stopped_all = false;
            let phase = st.phase.take();
            let held = std::mem::take(&mut st.held);
            let eos = st.headers_eos;
            let data = self.streams[&id].data.clone();
            match phase {
                Some(Phase::RequestHeaders) | Some(Phase::ResponseHeaders) => {
                    sd(&data).maps[f] &= !(MAP_REQ_HEADERS | MAP_RESP_HEADERS);
                    self.deliver(id, dir, pos + 1, Ev::Headers(eos));
                }
                Some(Phase::RequestTrailers) | Some(Phase::ResponseTrailers) => {
                    sd(&data).maps[f] &= !(MAP_REQ_TRAILERS | MAP_RESP_TRAILERS);
                    self.pass_buffer_then_trailers(id, dir, f);
                }
                _ => {}
            }
            // Data that arrived while stopped is delivered to this filter now, in one callback.
            let mut body = Vec::new();
            let mut body_eos = false;
            let mut any_data = false;
            let mut trailers = false;
            for ev in held {
                match ev {
                    Ev::Data(b, e) => {
                        any_data = true;
                        body.extend_from_slice(&b);
                        body_eos |= e;
                    }
                    Ev::Trailers => trailers = true,
                    Ev::Headers(_) => {}
                }
            }
            if any_data {
                self.deliver(id, dir, pos, Ev::Data(body, body_eos));
            }
            if trailers {
                self.deliver(id, dir, pos, Ev::Trailers);
            }
        } else if st.buffering {
            st.buffering = false;
            st.phase = None;
            let eos = st.body_eos;
            let data = self.streams[&id].data.clone();
            let buf = {
                let mut d = sd(&data);
                let bit = if dir == Dir::Req { BODY_REQ } else { BODY_RESP };
                d.bodies[f] &= !bit;
                let bufs = if dir == Dir::Req { &mut d.req_bufs } else { &mut d.resp_bufs };
                std::mem::take(&mut bufs[f])
            };
            self.deliver(id, dir, pos + 1, Ev::Data(buf, eos));
        }
    }

    fn sink(&mut self, id: u32, dir: Dir, ev: Ev) {
        if dir == Dir::Req
            && matches!(ev, Ev::Headers(_))
            && self.streams.get(&id).is_some_and(|rt| sd(&rt.data).no_forwarded_proto)
        {
            // Envoy's HCM adds x-forwarded-proto before the filters; a filter that dropped it leaves the
            // router without a route (VirtualHostImpl::getRouteFromEntries: no x-forwarded-proto, no
            // route): 404 with details route_not_found, through the response callbacks.
            if let Some(rt) = self.streams.get(&id) {
                sd(&rt.data).local_replies += 1;
            }
            let reply = LocalReply {
                plugin: "envoy.filters.http.router".into(),
                status: 404,
                details: "route_not_found".into(),
                headers: Headers::new(),
                body: Vec::new(),
                grpc_status: -1,
            };
            self.send_local(id, reply, self.chain.len().saturating_sub(1));
            return;
        }
        let Some(rt) = self.streams.get_mut(&id) else { return };
        let data = rt.data.clone();
        let complete = match (dir, ev) {
            (Dir::Req, Ev::Headers(eos)) => {
                rt.forwarded.headers = sd(&data).req_headers.clone();
                eos
            }
            (Dir::Req, Ev::Data(b, eos)) => {
                rt.forwarded.body.extend_from_slice(&b);
                eos
            }
            (Dir::Req, Ev::Trailers) => {
                rt.forwarded.trailers = sd(&data).req_trailers.clone();
                true
            }
            (Dir::Resp, Ev::Headers(eos)) => {
                rt.down_headers = Some(sd(&data).resp_headers.clone());
                eos
            }
            (Dir::Resp, Ev::Data(b, eos)) => {
                rt.down_body.extend_from_slice(&b);
                eos
            }
            (Dir::Resp, Ev::Trailers) => {
                rt.down_trailers = sd(&data).resp_trailers.clone();
                true
            }
        };
        if !complete {
            return;
        }
        match dir {
            Dir::Req => {
                rt.req_done = true;
                rt.waiting_upstream = true;
                rt.forwarded.filter_state = sd(&data).filter_state.clone();
                let request = rt.forwarded.clone();
                self.events
                    .push(WorkerEvent::Upstream { stream: StreamId { worker: self.index, id }, request });
            }
            Dir::Resp => self.finish(id),
        }
    }

    /// Creates the stream context of filter `f` (on_context_create). False if the stream failed.
    fn create_ctx(&mut self, id: u32, f: usize) -> bool {
        let vmi = self.chain[f].vm;
        let root = self.chain[f].root;
        if let Some(e) = self.vms[vmi].failed.clone() {
            self.fail_stream(id, f, &format!("VM failed earlier ({e})"));
            return false;
        }
        let data = self.streams[&id].data.clone();
        let vm = &mut self.vms[vmi];
        let ctx = vm.new_ctx_id();
        vm.store.data_mut().contexts.insert(ctx, Ctx::Stream { root, filter: f, data });
        if let Some(rt) = self.streams.get_mut(&id) {
            rt.ctx[f] = Some(ctx);
        }
        let plugin = self.chain[f].plugin.display_name().to_string();
        let Some(func) = self.vms[vmi].exports.on_context_create.clone() else { return true };
        let r = self.vms[vmi].call(func, ctx, "proxy_on_context_create", (ctx, root));
        if let Some(rt) = self.streams.get_mut(&id) {
            rt.callbacks.push(CallbackRecord {
                filter: f,
                plugin,
                callback: Callback::ContextCreate,
                action: None,
            });
        }
        match r {
            Ok(()) => {
                self.collect(vmi);
                true
            }
            Err(e) => {
                self.fail_stream(id, f, &e);
                false
            }
        }
    }

    /// Creates a stream context for the access-log phase only (no failure reply: the stream is ending).
    fn create_log_ctx(&mut self, id: u32, f: usize) {
        let vmi = self.chain[f].vm;
        let root = self.chain[f].root;
        let Some(data) = self.streams.get(&id).map(|rt| rt.data.clone()) else { return };
        let vm = &mut self.vms[vmi];
        let ctx = vm.new_ctx_id();
        vm.store.data_mut().contexts.insert(ctx, Ctx::Stream { root, filter: f, data });
        if let Some(rt) = self.streams.get_mut(&id) {
            rt.ctx[f] = Some(ctx);
        }
        let plugin = self.chain[f].plugin.display_name().to_string();
        if let Some(func) = self.vms[vmi].exports.on_context_create.clone() {
            let r = self.vms[vmi].call(func, ctx, "proxy_on_context_create", (ctx, root));
            if let Some(rt) = self.streams.get_mut(&id) {
                rt.callbacks.push(CallbackRecord {
                    filter: f,
                    plugin,
                    callback: Callback::ContextCreate,
                    action: None,
                });
            }
            if let Err(e) = r {
                self.vm_failed(vmi, ctx, &e);
            }
            self.collect(vmi);
        }
    }

    /// Calls a header/body/trailer callback of filter `f`. None if the VM failed (stream failed).
    fn call_filter(&mut self, id: u32, f: usize, cb: Callback, a: u32, b: Option<u32>) -> Option<Action> {
        let vmi = self.chain[f].vm;
        let ctx = self.streams.get(&id)?.ctx[f]?;
        let plugin = self.chain[f].plugin.display_name().to_string();
        let vm = &mut self.vms[vmi];
        let e = vm.exports.clone();
        let r = match (cb, b) {
            (Callback::RequestHeaders, Some(b)) => {
                e.on_request_headers.map(|func| vm.call(func, ctx, "proxy_on_request_headers", (ctx, a, b)))
            }
            (Callback::RequestBody, Some(b)) => {
                e.on_request_body.map(|func| vm.call(func, ctx, "proxy_on_request_body", (ctx, a, b)))
            }
            (Callback::RequestTrailers, _) => {
                e.on_request_trailers.map(|func| vm.call(func, ctx, "proxy_on_request_trailers", (ctx, a)))
            }
            (Callback::ResponseHeaders, Some(b)) => {
                e.on_response_headers.map(|func| vm.call(func, ctx, "proxy_on_response_headers", (ctx, a, b)))
            }
            (Callback::ResponseBody, Some(b)) => {
                e.on_response_body.map(|func| vm.call(func, ctx, "proxy_on_response_body", (ctx, a, b)))
            }
            (Callback::ResponseTrailers, _) => {
                e.on_response_trailers.map(|func| vm.call(func, ctx, "proxy_on_response_trailers", (ctx, a)))
            }
            _ => None,
        };
        let r = match r {
            None => Ok(0),
            Some(r) => r,
        };
        match r {
            Ok(v) => {
                // Envoy: 0 continues; anything else stops.
                let action = if v == 0 { Action::Continue } else { Action::Pause };
                if let Some(rt) = self.streams.get_mut(&id) {
                    rt.callbacks.push(CallbackRecord {
                        filter: f,
                        plugin,
                        callback: cb,
                        action: Some(action),
                    });
                }
                self.collect(vmi);
                self.process_touched(vmi, Some(id));
                Some(action)
            }
            Err(e) => {
                if let Some(rt) = self.streams.get_mut(&id) {
                    rt.callbacks.push(CallbackRecord { filter: f, plugin, callback: cb, action: None });
                }
                self.vm_failed(vmi, ctx, &e);
                self.fail_stream(id, f, &e);
                None
            }
        }
    }

    /// Picks up what the last calls into VM `vmi` produced: dispatched http calls and tick periods.
    fn collect(&mut self, vmi: usize) {
        let now = self.shared.clock.mono_ns();
        let (dispatched, ticks) = {
            let st = self.vms[vmi].store.data_mut();
            (std::mem::take(&mut st.dispatched), std::mem::take(&mut st.tick_changes))
        };
        for (root, ms) in ticks {
            if ms == 0 {
                self.ticks.remove(&(vmi, root));
            } else {
                let period = u64::from(ms) * 1_000_000;
                self.ticks.insert((vmi, root), (period, now + period));
            }
        }
        for d in dispatched {
            let st = self.vms[vmi].store.data();
            let root = st.root_of(d.ctx);
            let stream = match st.contexts.get(&d.ctx) {
                Some(Ctx::Stream { data, .. }) => Some(sd(data).id.id),
                _ => None,
            };
            let plugin = self.vms[vmi].plugin_name_of(d.ctx);
            self.calls.insert(d.token, CallOwner { vm: vmi, root, stream });
            self.events.push(WorkerEvent::HttpCall(OutboundCall {
                token: d.token,
                plugin,
                upstream: d.upstream,
                headers: d.headers,
                body: d.body,
                trailers: d.trailers,
                timeout: Duration::from_millis(u64::from(d.timeout_ms)),
            }));
        }
    }

    /// Carries out actions queued on streams other than `except` by the last calls into VM `vmi`.
    fn process_touched(&mut self, vmi: usize, except: Option<u32>) {
        let touched = self.vms[vmi].take_touched();
        let ids = unique_in_order(touched.iter().map(|s| sd(s).id.id));
        for id in ids {
            if Some(id) != except {
                self.process_actions(id);
            }
        }
    }

    fn after_root_call(&mut self, vmi: usize) {
        self.collect(vmi);
        self.process_touched(vmi, None);
    }

    fn process_actions(&mut self, id: u32) {
        loop {
            let Some(rt) = self.streams.get(&id) else { return };
            if rt.finished {
                sd(&rt.data).actions.clear();
                return;
            }
            let action = {
                let mut d = sd(&rt.data);
                if d.actions.is_empty() {
                    return;
                }
                d.actions.remove(0)
            };
            match action {
                StreamAction::ContinueRequest(f) => self.resume(id, Dir::Req, f),
                StreamAction::ContinueResponse(f) => self.resume(id, Dir::Resp, f),
                StreamAction::Close => {
                    if let Some(rt) = self.streams.get_mut(&id) {
                        rt.reset = true;
                    }
                    self.finish(id);
                }
                StreamAction::LocalReply(reply, f) => self.send_local(id, reply, f),
            }
        }
    }

    fn send_local(&mut self, id: u32, reply: LocalReply, _f: usize) {
        let Some(rt) = self.streams.get_mut(&id) else { return };
        if rt.local_reply.is_some() || rt.down_headers.is_some() {
            // Envoy hangs the request when a filter sends a second local response (or one after the
            // response started); the host resets the stream and says why.
            rt.error = Some(format!(
                "plugin `{}` called send_local_response({}) after a response was already started: Envoy hangs such a request; the host resets it",
                reply.plugin, reply.status
            ));
            rt.reset = true;
            self.finish(id);
            return;
        }
        rt.req_aborted = true;
        rt.waiting_upstream = false;
        if rt.resp_started {
            // Envoy's sendLocalReply once the upstream response headers exist but nothing went downstream
            // yet (a response filter replies): sendDirectLocalReply writes the reply straight to the
            // codec, so no filter sees it, and the stream ends.
            let headers = local_reply_headers(&reply);
            {
                let mut d = sd(&rt.data);
                d.response_code = u16::try_from(reply.status).ok();
                d.resp_headers = headers.clone();
                d.resp_trailers = None;
                d.response_size = reply.body.len() as u64;
            }
            rt.down_body = reply.body.clone();
            rt.down_headers = Some(headers);
            rt.down_trailers = None;
            rt.local_reply = Some(reply);
            self.finish(id);
            return;
        }
        let headers = local_reply_headers(&reply);
        let body = reply.body.clone();
        rt.local_reply = Some(reply);
        for s in rt.resp.iter_mut() {
            *s = DirState::default();
        }
        for s in rt.req.iter_mut() {
            *s = DirState::default();
        }
        {
            let mut d = sd(&rt.data);
            for m in d.maps.iter_mut() {
                *m = 0;
            }
            for b in d.bodies.iter_mut() {
                *b = 0;
            }
            for b in d.resp_bufs.iter_mut() {
                b.clear();
            }
            d.response_code = headers.get(":status").and_then(|s| s.parse().ok());
            d.resp_headers = headers;
            d.resp_trailers = None;
            d.response_size = body.len() as u64;
        }
        let empty = body.is_empty();
        self.deliver(id, Dir::Resp, 0, Ev::Headers(empty));
        if !empty {
            self.deliver(id, Dir::Resp, 0, Ev::Data(body, true));
        }
    }

    fn buffer_overflow(&mut self, id: u32, dir: Dir, f: usize) {
        let plugin = self.chain[f].plugin.display_name().to_string();
        let (status, details, body) = match dir {
            Dir::Req => (413, "request_payload_too_large", "Payload Too Large"),
            Dir::Resp => (500, "response_payload_too_large", "Internal Server Error"),
        };
        if let Some(rt) = self.streams.get(&id) {
            sd(&rt.data).local_replies += 1;
        }
        let reply = LocalReply {
            plugin,
            status,
            details: details.into(),
            headers: Headers::new(),
            body: body.as_bytes().to_vec(),
            grpc_status: -1,
        };
        if dir == Dir::Resp
            && let Some(rt) = self.streams.get_mut(&id)
        {
            // The response is replaced: headers were not sent downstream yet in this model.
            rt.down_headers = None;
            rt.down_body.clear();
        }
        self.send_local(id, reply, f);
    }

    fn vm_failed(&mut self, vmi: usize, ctx: u32, e: &str) {
        let plugin = self.vms[vmi].plugin_name_of(ctx);
        let module = self.vms[vmi].module.name().to_string();
        self.host_log(
            LogLevel::Error,
            format!(
                "plugin `{plugin}` (module {module}): VM failed: {e}; {}",
                match self.policy {
                    FailurePolicy::Reload => "it will be reloaded before the next stream",
                    FailurePolicy::FailClosed => "it stays failed (fail closed)",
                }
            ),
        );
        self.ticks.retain(|(v, _), _| *v != vmi);
        // Streams with contexts in the failed VM fail too.
        let affected: Vec<(u32, usize)> = self
            .streams
            .iter()
            .filter(|(_, rt)| !rt.finished)
            .filter_map(|(id, rt)| {
                rt.ctx
                    .iter()
                    .enumerate()
                    .find(|(f, c)| c.is_some() && self.chain[*f].vm == vmi)
                    .map(|(f, _)| (*id, f))
            })
            .collect();
        for (id, f) in affected {
            self.fail_stream(id, f, e);
        }
    }

    /// The stream gets Envoy's failed-VM reply: 503 with details `wasm_fail_stream`.
    fn fail_stream(&mut self, id: u32, f: usize, e: &str) {
        let plugin = self.chain[f].plugin.display_name().to_string();
        let module = self.chain[f].plugin.module.name().to_string();
        let Some(rt) = self.streams.get_mut(&id) else { return };
        if rt.finished {
            return;
        }
        if rt.error.is_none() {
            rt.error = Some(format!("plugin `{plugin}` (module {module}): {e}"));
        }
        rt.req_aborted = true;
        rt.waiting_upstream = false;
        if rt.down_headers.is_none() {
            // Like Envoy's failStream: a 503 local reply that still passes the response callbacks of the
            // filters whose VMs are healthy (it replaces any local reply sent before).
            rt.local_reply = None;
            let reply = LocalReply {
                plugin,
                status: 503,
                details: "wasm_fail_stream".into(),
                headers: Headers::new(),
                body: Vec::new(),
                grpc_status: 14,
            };
            self.send_local(id, reply, f);
        } else {
            rt.reset = true;
            self.finish(id);
        }
    }

    /// Ends a stream: on_log for every filter with a context (chain order), then per filter on_done and
    /// on_delete.
    fn finish(&mut self, id: u32) {
        let Some(rt) = self.streams.get_mut(&id) else { return };
        if rt.finished {
            return;
        }
        rt.finished = true;
        let data = rt.data.clone();
        // Envoy's access-log phase creates the context of a filter that never saw the stream (e.g. after
        // an earlier filter's local reply), so every filter gets on_log, on_done and on_delete.
        for f in 0..self.chain.len() {
            let has = self.streams.get(&id).is_some_and(|rt| rt.ctx[f].is_some());
            if !has && self.vms[self.chain[f].vm].failed.is_none() {
                self.create_log_ctx(id, f);
            }
        }
        let Some(rt) = self.streams.get(&id) else { return };
        let ctxs = rt.ctx.clone();
        {
            let mut d = sd(&data);
            d.actions.clear();
            for m in d.maps.iter_mut() {
                *m = MAP_REQ_HEADERS | MAP_REQ_TRAILERS | MAP_RESP_HEADERS | MAP_RESP_TRAILERS;
            }
        }
        let mut records = Vec::new();
        // Envoy logs (access-log phase) for every filter, then destroys the filters one by one
        // (onDone, then onDelete for each).
        let n = ctxs.len();
        let mut order: Vec<(Callback, u8, usize)> = (0..n).map(|f| (Callback::Log, 0, f)).collect();
        for f in 0..n {
            order.push((Callback::Done, 1, f));
            order.push((Callback::Delete, 2, f));
        }
        {
            for (cb, export, f) in order {
                let Some(ctx) = ctxs[f] else { continue };
                let vmi = self.chain[f].vm;
                let vm = &mut self.vms[vmi];
                if vm.failed.is_some() {
                    continue;
                }
                let r = match export {
                    0 => vm.exports.on_log.clone().map(|func| vm.call(func, ctx, "proxy_on_log", ctx)),
                    1 => vm
                        .exports
                        .on_done
                        .clone()
                        .map(|func| vm.call(func, ctx, "proxy_on_done", ctx).map(|_| ())),
                    _ => vm.exports.on_delete.clone().map(|func| vm.call(func, ctx, "proxy_on_delete", ctx)),
                };
                records.push(CallbackRecord {
                    filter: f,
                    plugin: self.chain[f].plugin.display_name().to_string(),
                    callback: cb,
                    action: None,
                });
                if let Some(Err(e)) = r {
                    let plugin = self.chain[f].plugin.display_name().to_string();
                    let module = self.chain[f].plugin.module.name().to_string();
                    if let Some(rt) = self.streams.get_mut(&id)
                        && rt.error.is_none()
                    {
                        rt.error = Some(format!("plugin `{plugin}` (module {module}): {e}"));
                    }
                    self.vm_failed(vmi, ctx, &e);
                }
                self.collect(vmi);
                let _ = self.vms[vmi].take_touched();
            }
        }
        for (f, ctx) in ctxs.iter().enumerate() {
            if let Some(ctx) = ctx {
                self.vms[self.chain[f].vm].store.data_mut().contexts.remove(ctx);
            }
        }
        sd(&data).actions.clear();
        let Some(mut rt) = self.streams.remove(&id) else { return };
        rt.callbacks.extend(records);
        let ex = self.exchange_of(id, &rt);
        self.events.push(WorkerEvent::Done(Box::new(ex)));
    }
}

/// A local reply's response headers in Envoy's order (`Utility::sendLocalReply`): `:status`, the filter's
/// headers, then with a body `content-length` (in place if the filter set one) and `content-type:
/// text/plain` unless the filter set a content type.
fn local_reply_headers(reply: &LocalReply) -> Headers {
    let mut headers = Headers::new().with(":status", reply.status.to_string());
    for (k, v) in reply.headers.iter() {
        headers.add(k, v);
    }
    if !reply.body.is_empty() {
        headers.set("content-length", reply.body.len().to_string());
        if !headers.contains("content-type") {
            headers.add("content-type", "text/plain");
        }
    }
    headers
}

/// Each id once, in the order first seen: a stream touched by several hostcalls appears several times,
/// not necessarily adjacent (so `Vec::dedup` is not enough).
fn unique_in_order(ids: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

#[cfg(test)]
mod unique_tests {
    use super::unique_in_order;

    #[test]
    fn touched_streams_are_processed_once_each_in_first_touch_order() {
        assert_eq!(unique_in_order([3, 1, 3, 2, 1, 3].into_iter()), vec![3, 1, 2]);
        assert_eq!(unique_in_order([].into_iter()), Vec::<u32>::new());
    }
}
