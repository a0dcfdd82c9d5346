//! One VM: a wasmtime store with one instance of a module, its contexts, and the data hostcalls see.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use wasmtime::{Memory, Store, TypedFunc, WasmParams, WasmResults};

use crate::host::{Host, Module, lock};
use crate::http::{Headers, LocalReply, StreamId};
use crate::plugin::{LogLevel, Plugin};
use crate::shared::{Shared, Status};

/// Header-map availability bits (per filter of a stream).
pub(crate) const MAP_REQ_HEADERS: u8 = 1;
pub(crate) const MAP_REQ_TRAILERS: u8 = 2;
pub(crate) const MAP_RESP_HEADERS: u8 = 4;
pub(crate) const MAP_RESP_TRAILERS: u8 = 8;
/// Body-buffer availability bits.
pub(crate) const BODY_REQ: u8 = 1;
pub(crate) const BODY_RESP: u8 = 2;

/// What a hostcall asked for, carried out after the callback returns (like Envoy's after-VM-call actions).
#[derive(Clone, Debug)]
pub(crate) enum StreamAction {
    ContinueRequest(usize),
    ContinueResponse(usize),
    LocalReply(LocalReply, usize),
    Close,
}

/// `proxy_set_buffer_bytes` on a live body buffer. Envoy supports exactly three edits: insert at the
/// front (`start == 0, size == 0`), replace all (`start == 0, size >= len`) and append (`start >= len`);
/// anything else is BAD_ARGUMENT.
pub(crate) fn edit_body(buf: &mut Vec<u8>, start: usize, size: usize, bytes: Vec<u8>) -> Result<(), Status> {
    if start == 0 && size == 0 {
        buf.splice(0..0, bytes);
    } else if start == 0 && size >= buf.len() {
        *buf = bytes;
    } else if start >= buf.len() {
        buf.extend_from_slice(&bytes);
    } else {
        return Err(crate::status::BAD_ARGUMENT);
    }
    Ok(())
}

/// What a VM's module cost its host, counted exactly: the wasm entries (every `proxy_on_*` export the
/// host called, `proxy_on_memory_allocate` included, since each is a crossing into the VM) and the
/// hostcalls (`env` and WASI imports the module called), by name. See [`crate::Proxy::call_counts`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Wasm entries by export name.
    pub callbacks: BTreeMap<String, u64>,
    /// Hostcalls by import name (`proxy_*` from `env`, WASI functions by their own names).
    pub hostcalls: BTreeMap<String, u64>,
}

impl CallCounts {
    /// All wasm entries.
    pub fn total_callbacks(&self) -> u64 {
        self.callbacks.values().sum()
    }

    /// All hostcalls.
    pub fn total_hostcalls(&self) -> u64 {
        self.hostcalls.values().sum()
    }

    /// Adds another VM's counts (the same module on several workers).
    pub fn add(&mut self, other: &CallCounts) {
        for (k, v) in &other.callbacks {
            *self.callbacks.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.hostcalls {
            *self.hostcalls.entry(k.clone()).or_default() += v;
        }
    }
}

/// The counters behind [`CallCounts`]: keyed by the static names, so counting allocates nothing.
#[derive(Default)]
pub(crate) struct Counters {
    callbacks: HashMap<&'static str, u64>,
    hostcalls: HashMap<&'static str, u64>,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CallCounts {
        let conv = |m: &HashMap<&'static str, u64>| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        CallCounts { callbacks: conv(&self.callbacks), hostcalls: conv(&self.hostcalls) }
    }
}

/// Stream data shared between the worker and the VMs of the chain.
pub(crate) struct StreamData {
    pub(crate) id: StreamId,
    pub(crate) req_headers: Headers,
    pub(crate) req_trailers: Option<Headers>,
    pub(crate) resp_headers: Headers,
    pub(crate) resp_trailers: Option<Headers>,
    /// Per filter: request body buffered at that filter.
    pub(crate) req_bufs: Vec<Vec<u8>>,
    pub(crate) resp_bufs: Vec<Vec<u8>>,
    /// Per filter: MAP_* bits of the maps it may touch now.
    pub(crate) maps: Vec<u8>,
    /// Per filter: BODY_* bits.
    pub(crate) bodies: Vec<u8>,
    pub(crate) actions: Vec<StreamAction>,
    pub(crate) local_replies: u32,
    pub(crate) properties_set: Vec<(String, Vec<u8>)>,
    /// Envoy filter state set with `set_envoy_filter_state` (key, factory input), in order.
    pub(crate) filter_state: Vec<(String, Vec<u8>)>,
    pub(crate) props: Vec<(String, Vec<u8>)>,
    pub(crate) start_unix_ns: u64,
    pub(crate) response_code: Option<u16>,
    pub(crate) request_size: u64,
    pub(crate) response_size: u64,
    /// A filter dropped `x-forwarded-proto` from the request headers (set_header_map_pairs without it, or
    /// remove): Envoy's route lookup then finds no route (404 `route_not_found`).
    pub(crate) no_forwarded_proto: bool,
    pub(crate) upstream_address: Option<String>,
}

pub(crate) type StreamRef = Arc<Mutex<StreamData>>;

pub(crate) struct RootInfo {
    pub(crate) plugin_name: String,
    pub(crate) root_id: String,
    pub(crate) vm_id: String,
}

pub(crate) enum Ctx {
    Root(Arc<RootInfo>),
    Stream { root: u32, filter: usize, data: StreamRef },
}

/// A call dispatched by `proxy_http_call`, collected by the worker after the callback.
pub(crate) struct Dispatch {
    pub(crate) token: u32,
    pub(crate) ctx: u32,
    pub(crate) upstream: String,
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Headers,
    pub(crate) timeout_ms: u32,
}

/// The store data of a VM: everything hostcalls read or write.
pub(crate) struct VmState {
    pub(crate) shared: Option<Arc<Shared>>,
    pub(crate) worker: usize,
    pub(crate) vm_index: usize,
    pub(crate) vm_id: String,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<u32, u32>>,
    /// In `_initialize`/`main`: only proxy_log and WASI are allowed.
    pub(crate) in_init: bool,
    pub(crate) current: u32,
    pub(crate) effective: u32,
    pub(crate) contexts: HashMap<u32, Ctx>,
    /// Plugin config, available in on_configure only.
    pub(crate) plugin_config: Option<Vec<u8>>,
    /// http-call response (headers, body, trailers) during on_http_call_response.
    pub(crate) call_response: Option<(Headers, Vec<u8>, Headers)>,
    pub(crate) status: (u32, Vec<u8>),
    pub(crate) dispatched: Vec<Dispatch>,
    pub(crate) tick_changes: Vec<(u32, u32)>,
    pub(crate) touched: Vec<StreamRef>,
    pub(crate) metric_ids: HashMap<u32, String>,
    pub(crate) metric_by_name: HashMap<(String, u32), u32>,
    pub(crate) next_metric: u32,
    pub(crate) rng: crate::wasi::Rng,
    /// Per-VM memory cap (see `HostOptions::max_memory_bytes`).
    pub(crate) limits: wasmtime::StoreLimits,
    /// Wasm entries and hostcalls so far (a `RefCell` so hostcalls holding `&VmState` can count).
    pub(crate) counters: RefCell<Counters>,
}

impl VmState {
    /// A state with no proxy behind it (used to query the linker).
    pub(crate) fn placeholder() -> Self {
        Self::new(None, 0, 0, String::new(), Vec::new(), Vec::new())
    }

    pub(crate) fn new(
        shared: Option<Arc<Shared>>,
        worker: usize,
        vm_index: usize,
        vm_id: String,
        vm_config: Vec<u8>,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            shared,
            worker,
            vm_index,
            vm_id,
            vm_config,
            env,
            memory: None,
            alloc: None,
            in_init: false,
            current: 0,
            effective: 0,
            contexts: HashMap::new(),
            plugin_config: None,
            call_response: None,
            status: (0, Vec::new()),
            dispatched: Vec::new(),
            tick_changes: Vec::new(),
            touched: Vec::new(),
            metric_ids: HashMap::new(),
            metric_by_name: HashMap::new(),
            next_metric: 1,
            // Replaced from the host's options in `Vm::instantiate`.
            rng: crate::wasi::Rng::Os,
            limits: wasmtime::StoreLimits::default(),
            counters: RefCell::new(Counters::default()),
        }
    }

    /// Counts one hostcall.
    pub(crate) fn count_hostcall(&self, name: &'static str) {
        *self.counters.borrow_mut().hostcalls.entry(name).or_default() += 1;
    }

    /// Counts one wasm entry.
    pub(crate) fn count_callback(&self, name: &'static str) {
        *self.counters.borrow_mut().callbacks.entry(name).or_default() += 1;
    }

    /// The plugin name of the effective context (for logs).
    pub(crate) fn plugin_name(&self) -> String {
        match self.contexts.get(&self.effective) {
            Some(Ctx::Root(r)) => r.plugin_name.clone(),
            Some(Ctx::Stream { root, .. }) => match self.contexts.get(root) {
                Some(Ctx::Root(r)) => r.plugin_name.clone(),
                _ => self.vm_id.clone(),
            },
            None => self.vm_id.clone(),
        }
    }

    pub(crate) fn root_info(&self, ctx: u32) -> Option<Arc<RootInfo>> {
        match self.contexts.get(&ctx)? {
            Ctx::Root(r) => Some(r.clone()),
            Ctx::Stream { root, .. } => match self.contexts.get(root)? {
                Ctx::Root(r) => Some(r.clone()),
                Ctx::Stream { .. } => None,
            },
        }
    }

    /// The root context id for the effective context.
    /// This VM's id of metric `name` of type `ty`, allocated on first definition. Like Envoy, the low
    /// bits of the id carry the metric type.
    pub(crate) fn metric_id(&mut self, name: String, ty: u32) -> u32 {
        if let Some(id) = self.metric_by_name.get(&(name.clone(), ty)) {
            return *id;
        }
        let id = (self.next_metric << 2) | ty;
        self.next_metric += 1;
        self.metric_by_name.insert((name.clone(), ty), id);
        self.metric_ids.insert(id, name);
        id
    }

    pub(crate) fn root_of(&self, ctx: u32) -> u32 {
        match self.contexts.get(&ctx) {
            Some(Ctx::Stream { root, .. }) => *root,
            _ => ctx,
        }
    }

    pub(crate) fn log(&self, level: LogLevel, message: String) {
        if let Some(s) = &self.shared
            && level >= s.log_level
        {
            s.log(self.worker, &self.plugin_name(), level, message);
        }
    }
}

/// `proxy_on_http_call_response(root, token, headers, body_len, trailers)`.
pub(crate) type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The exports a VM may call.
#[derive(Default, Clone)]
pub(crate) struct Exports {
    pub(crate) on_context_create: Option<TypedFunc<(u32, u32), ()>>,
    pub(crate) on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    pub(crate) on_configure: Option<TypedFunc<(u32, u32), u32>>,
    pub(crate) on_tick: Option<TypedFunc<u32, ()>>,
    pub(crate) on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    pub(crate) on_request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(crate) on_request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(crate) on_request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub(crate) on_response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(crate) on_response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub(crate) on_response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub(crate) on_http_call_response: Option<CallResponseFn>,
    pub(crate) on_done: Option<TypedFunc<u32, u32>>,
    pub(crate) on_log: Option<TypedFunc<u32, ()>>,
    pub(crate) on_delete: Option<TypedFunc<u32, ()>>,
}

pub(crate) struct Vm {
    pub(crate) store: Store<VmState>,
    pub(crate) exports: Exports,
    pub(crate) module: Module,
    pub(crate) vm_id: String,
    pub(crate) failed: Option<String>,
    pub(crate) next_ctx: u32,
    pub(crate) deadline_ticks: u64,
}

fn typed<P: WasmParams, R: WasmResults>(
    inst: &wasmtime::Instance,
    store: &mut Store<VmState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>> {
    match inst.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| anyhow!("export {name} has the wrong signature for proxy-wasm ABI 0.2.1: {e}")),
    }
}

impl Vm {
    /// Instantiates a module and runs `_initialize` then `main`/`__main_void` (or `_start`).
    pub(crate) fn instantiate(
        host: &Host,
        shared: Arc<Shared>,
        worker: usize,
        vm_index: usize,
        plugin: &Plugin,
    ) -> Result<Self> {
        let state = VmState::new(
            Some(shared),
            worker,
            vm_index,
            plugin.vm_id.clone(),
            plugin.vm_config.clone(),
            plugin.env.clone(),
        );
        let mut state = state;
        state.limits =
            wasmtime::StoreLimitsBuilder::new().memory_size(host.inner.options.max_memory_bytes).build();
        state.rng = crate::wasi::Rng::new(host.inner.options.random, worker, vm_index);
        let mut store = Store::new(&host.inner.engine, state);
        store.limiter(|st| &mut st.limits);
        let deadline_ticks = (host.inner.options.callback_deadline.as_millis()
            / crate::host::EPOCH_TICK.as_millis())
        .max(1) as u64
            + 1;
        store.set_epoch_deadline(deadline_ticks);
        let inst = plugin
            .module
            .inner
            .pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("instantiation failed: {}", trap_text(&e)))?;
        let memory =
            inst.get_memory(&mut store, "memory").ok_or_else(|| anyhow!("module exports no memory"))?;
        let alloc = match typed::<u32, u32>(&inst, &mut store, "proxy_on_memory_allocate")? {
            Some(f) => Some(f),
            None => typed::<u32, u32>(&inst, &mut store, "malloc")?,
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = alloc;
        let exports = Exports {
            on_context_create: typed(&inst, &mut store, "proxy_on_context_create")?,
            on_vm_start: typed(&inst, &mut store, "proxy_on_vm_start")?,
            on_configure: typed(&inst, &mut store, "proxy_on_configure")?,
            on_tick: typed(&inst, &mut store, "proxy_on_tick")?,
            on_queue_ready: typed(&inst, &mut store, "proxy_on_queue_ready")?,
            on_request_headers: typed(&inst, &mut store, "proxy_on_request_headers")?,
            on_request_body: typed(&inst, &mut store, "proxy_on_request_body")?,
            on_request_trailers: typed(&inst, &mut store, "proxy_on_request_trailers")?,
            on_response_headers: typed(&inst, &mut store, "proxy_on_response_headers")?,
            on_response_body: typed(&inst, &mut store, "proxy_on_response_body")?,
            on_response_trailers: typed(&inst, &mut store, "proxy_on_response_trailers")?,
            on_http_call_response: typed(&inst, &mut store, "proxy_on_http_call_response")?,
            on_done: typed(&inst, &mut store, "proxy_on_done")?,
            on_log: typed(&inst, &mut store, "proxy_on_log")?,
            on_delete: typed(&inst, &mut store, "proxy_on_delete")?,
        };
        // WASI reactor start, then the C/Rust main if present (Envoy's order).
        store.data_mut().in_init = true;
        let init = (|| -> Result<()> {
            if let Some(f) = typed::<(), ()>(&inst, &mut store, "_initialize")? {
                f.call(&mut store, ()).map_err(|e| anyhow!("_initialize trapped: {}", trap_text(&e)))?;
                if let Some(m) = typed::<(), ()>(&inst, &mut store, "__main_void")? {
                    m.call(&mut store, ()).map_err(|e| anyhow!("__main_void trapped: {}", trap_text(&e)))?;
                } else if let Some(m) = typed::<(u32, u32), u32>(&inst, &mut store, "main")? {
                    m.call(&mut store, (0, 0)).map_err(|e| anyhow!("main trapped: {}", trap_text(&e)))?;
                }
            } else if let Some(f) = typed::<(), ()>(&inst, &mut store, "_start")? {
                f.call(&mut store, ()).map_err(|e| anyhow!("_start trapped: {}", trap_text(&e)))?;
            }
            Ok(())
        })();
        store.data_mut().in_init = false;
        init?;
        Ok(Self {
            store,
            exports,
            module: plugin.module.clone(),
            vm_id: plugin.vm_id.clone(),
            failed: None,
            next_ctx: 1,
            deadline_ticks,
        })
    }

    pub(crate) fn new_ctx_id(&mut self) -> u32 {
        let id = self.next_ctx;
        self.next_ctx += 1;
        id
    }

    /// Calls an export with `ctx` as current and effective context. A trap marks the VM failed and
    /// returns its one-line description.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        f: TypedFunc<P, R>,
        ctx: u32,
        name: &'static str,
        args: P,
    ) -> std::result::Result<R, String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.store.data().count_callback(name);
        self.store.set_epoch_deadline(self.deadline_ticks);
        {
            let d = self.store.data_mut();
            d.current = ctx;
            d.effective = ctx;
        }
        let logs_before = self.store.data().shared.as_ref().map_or(0, |s| lock(&s.logs).len());
        let r = f.call(&mut self.store, args);
        {
            let d = self.store.data_mut();
            d.current = 0;
            d.effective = 0;
        }
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                // A Rust guest's panic hook logs the panic message at critical level just before the
                // trap: quote it, it says what went wrong.
                let worker = self.store.data().worker;
                let guest_says = self.store.data().shared.as_ref().and_then(|s| {
                    lock(&s.logs)
                        .iter()
                        .skip(logs_before)
                        .rev()
                        .find(|l| l.worker == worker && l.level >= LogLevel::Error)
                        .map(|l| l.message.clone())
                });
                let mut msg = format!("{name} failed: {}", trap_text(&e));
                if let Some(g) = guest_says {
                    msg.push_str(&format!(" (guest log: {g})"));
                }
                self.failed = Some(msg.clone());
                Err(msg)
            }
        }
    }

    pub(crate) fn plugin_name_of(&self, ctx: u32) -> String {
        self.store.data().root_info(ctx).map(|r| r.plugin_name.clone()).unwrap_or_else(|| self.vm_id.clone())
    }

    /// The wasm entries and hostcalls of this VM so far.
    pub(crate) fn call_counts(&self) -> CallCounts {
        self.store.data().counters.borrow().snapshot()
    }

    /// Starts counting again from zero.
    pub(crate) fn reset_call_counts(&mut self) {
        *self.store.data().counters.borrow_mut() = Counters::default();
    }

    /// Streams whose actions changed during the last calls.
    pub(crate) fn take_touched(&mut self) -> Vec<StreamRef> {
        std::mem::take(&mut self.store.data_mut().touched)
    }
}

/// A short description of a trap or error: the trap kind, a guest panic message if the guest logged one,
/// without the multi-line wasm backtrace.
pub(crate) fn trap_text(e: &wasmtime::Error) -> String {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        let what = match t {
            wasmtime::Trap::Interrupt => {
                "deadline exceeded (callback ran too long: infinite loop?)".to_string()
            }
            wasmtime::Trap::MemoryOutOfBounds => "out-of-bounds memory access".to_string(),
            wasmtime::Trap::UnreachableCodeReached => {
                "wasm `unreachable` executed (guest panic or abort)".to_string()
            }
            other => other.to_string(),
        };
        return what;
    }
    let s = e.to_string();
    let first = s.lines().next().unwrap_or("").to_string();
    let mut out = first;
    for c in e.chain().skip(1) {
        let line = c.to_string();
        let l = line.lines().next().unwrap_or("");
        if !l.is_empty() && !l.starts_with("wasm backtrace") {
            out.push_str(": ");
            out.push_str(l);
        }
    }
    out
}

/// Locks stream data.
pub(crate) fn sd(s: &StreamRef) -> std::sync::MutexGuard<'_, StreamData> {
    lock(s)
}

#[cfg(test)]
mod tests {
    use super::edit_body;
    use crate::status::BAD_ARGUMENT;

    #[test]
    fn a_live_body_takes_exactly_envoys_three_edits() {
        let mut b = b"body".to_vec();
        assert_eq!(edit_body(&mut b, 0, 0, b">".to_vec()), Ok(()));
        assert_eq!(b, b">body");
        assert_eq!(edit_body(&mut b, 5, 0, b"<".to_vec()), Ok(()));
        assert_eq!(b, b">body<");
        assert_eq!(edit_body(&mut b, 0, 6, b"new".to_vec()), Ok(()));
        assert_eq!(b, b"new");
        assert_eq!(edit_body(&mut b, 0, 99, b"all".to_vec()), Ok(()));
        assert_eq!(b, b"all");
        // A splice in the middle (or a partial replace at the front) is not supported.
        assert_eq!(edit_body(&mut b, 1, 1, b"x".to_vec()), Err(BAD_ARGUMENT));
        assert_eq!(edit_body(&mut b, 0, 1, b"x".to_vec()), Err(BAD_ARGUMENT));
        assert_eq!(b, b"all");
    }
}
