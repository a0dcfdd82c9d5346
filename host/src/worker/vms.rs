//! VM management: root contexts and their start-up, reloading a failed VM, creating stream contexts,
//! calling into a VM and collecting what the call produced (http calls, tick periods, touched streams).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::http::{Action, Callback, CallbackRecord};
use crate::plugin::{FailurePolicy, LogLevel};
use crate::vm::{Ctx, RootInfo, Vm, sd};

use super::{CallOwner, OutboundCall, Worker, WorkerEvent, unique_in_order};

impl Worker {
    /// Creates the root context of filter `f`, runs on_vm_start and on_configure.
    pub(super) fn start_root(&mut self, f: usize) -> Result<u32, String> {
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
    pub(super) fn reload_failed(&mut self) {
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

    pub(super) fn host_log(&self, level: LogLevel, msg: String) {
        self.shared.log(self.index, "meshwasm-host", level, msg);
    }

    pub(super) fn vm_failed(&mut self, vmi: usize, ctx: u32, e: &str) {
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

    /// Creates the stream context of filter `f` (on_context_create). False if the stream failed.
    pub(super) fn create_ctx(&mut self, id: u32, f: usize) -> bool {
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
    pub(super) fn create_log_ctx(&mut self, id: u32, f: usize) {
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
    pub(super) fn call_filter(
        &mut self,
        id: u32,
        f: usize,
        cb: Callback,
        a: u32,
        b: Option<u32>,
    ) -> Option<Action> {
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
        // Envoy (proxy-wasm-cpp-host `ContextBase::onRequestBody` and the like): a callback the module
        // does not export is not called, and the filter continues. Nothing ran, so nothing is recorded.
        let Some(r) = r else { return Some(Action::Continue) };
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
    pub(super) fn collect(&mut self, vmi: usize) {
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
    pub(super) fn process_touched(&mut self, vmi: usize, except: Option<u32>) {
        let touched = self.vms[vmi].take_touched();
        let ids = unique_in_order(touched.iter().map(|s| sd(s).id.id));
        for id in ids {
            if Some(id) != except {
                self.process_actions(id);
            }
        }
    }

    pub(super) fn after_root_call(&mut self, vmi: usize) {
        self.collect(vmi);
        self.process_touched(vmi, None);
    }
}
