//! One simulated Envoy worker: its own VMs (one per distinct vm_id + module), the filter chain, and the
//! streams it runs. A [`Worker`] is a synchronous state machine that never does I/O: it reports what it
//! needs through [`WorkerEvent`]s (an http call to dispatch, a request to forward upstream, a finished
//! exchange) and is fed answers later. [`crate::Proxy`] drives workers for tests; the `serve` command
//! drives each on its own thread.
//!
//! By concern: `driver` is the API a driver calls, `chain` the stream state machine (events through the
//! filters, pauses, the ends of the chain, finishing), `dir` what differs between the request and the
//! response path, `local` local replies (filters', buffer overflows, failed VMs, missing routes), `vms`
//! the VMs (root contexts, reload, stream contexts, calls and what they produce).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::host::{Host, lock};
use crate::http::{CallbackRecord, Exchange, ForwardedRequest, Headers, LocalReply, StreamId};
use crate::plugin::{FailurePolicy, LogLevel, Plugin};
use crate::shared::Shared;
use crate::vm::{StreamRef, Vm};

mod chain;
mod dir;
mod driver;
mod local;
mod vms;

use dir::{Dir, DirState, Ev};
pub use driver::VmStats;

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
    /// deliver [`crate::CallOutcome::Timeout`]).
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

/// One stream's state in this worker: its contexts, both directions per filter, and what went up and
/// down so far.
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

/// One filter of the chain: its plugin, the VM that runs it and its root context there.
struct FilterSlot {
    plugin: Plugin,
    vm: usize,
    root: u32,
}

/// Who gets an http call's answer: a root context, and the stream it was made for (if any).
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
