//! State shared by all workers of one proxy: shared data, shared queues, metrics, logs, the clock, the
//! foreign-function registry. Envoy keeps shared data, queues and metrics per process; here they live in a
//! [`Process`] per [`crate::Proxy`] (so tests running in parallel never see each other's state) that
//! several proxies (listeners, chains) can share with [`crate::ProxyBuilder::share_state`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::foreign::ForeignFunction;
use crate::host::lock;
use crate::plugin::{LogEntry, LogLevel};

/// A wake-up function for a worker thread (the `serve` driver), called when work was queued for it
/// from another thread (a shared-queue notification).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

pub(crate) enum ClockKind {
    /// Virtual time: nanoseconds since start, moved by `Proxy::advance`.
    Virtual(AtomicU64),
    /// Real time since this instant.
    Real(Instant),
}

pub(crate) struct Clock {
    pub(crate) kind: ClockKind,
    /// Wall-clock time at start, ns since the Unix epoch.
    pub(crate) start_unix_ns: u64,
}

impl Clock {
    /// Monotonic ns since start.
    pub(crate) fn mono_ns(&self) -> u64 {
        match &self.kind {
            ClockKind::Virtual(a) => a.load(Ordering::SeqCst),
            ClockKind::Real(i) => i.elapsed().as_nanos() as u64,
        }
    }

    /// Wall-clock ns since the Unix epoch.
    pub(crate) fn unix_ns(&self) -> u64 {
        self.start_unix_ns.saturating_add(self.mono_ns())
    }

    pub(crate) fn set_virtual(&self, ns: u64) {
        if let ClockKind::Virtual(a) = &self.kind {
            a.store(ns, Ordering::SeqCst);
        }
    }
}

pub(crate) fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Counter),
            1 => Some(Self::Gauge),
            2 => Some(Self::Histogram),
            _ => None,
        }
    }
}

pub(crate) struct Metric {
    pub(crate) kind: MetricKind,
    pub(crate) value: u64,
    pub(crate) samples: Vec<u64>,
}

pub(crate) struct Queue {
    pub(crate) vm_id: String,
    pub(crate) name: String,
    /// (worker, vm index, root context id) of the registering root context.
    pub(crate) owner: (usize, usize, u32),
    /// The proxy (chain) of the registering root context, whose worker gets `on_queue_ready`.
    pub(crate) chain: Weak<Shared>,
    pub(crate) items: VecDeque<Vec<u8>>,
}

#[derive(Default)]
pub(crate) struct Queues {
    pub(crate) by_name: HashMap<(String, String), u32>,
    pub(crate) queues: HashMap<u32, Queue>,
}

/// vm_id → key → (value, cas).
pub(crate) type SharedData = HashMap<String, HashMap<String, (Vec<u8>, u32)>>;

/// Envoy's process-wide state: shared data, shared queues, metrics.
pub(crate) struct Process {
    /// vm_id → key → (value, cas).
    pub(crate) shared_data: Mutex<SharedData>,
    pub(crate) next_cas: AtomicU32,
    pub(crate) queues: Mutex<Queues>,
    pub(crate) next_queue: AtomicU32,
    pub(crate) metrics: Mutex<BTreeMap<String, Metric>>,
}

impl Default for Process {
    fn default() -> Self {
        Process {
            shared_data: Default::default(),
            next_cas: AtomicU32::new(1),
            queues: Default::default(),
            next_queue: AtomicU32::new(1),
            metrics: Default::default(),
        }
    }
}

impl Process {
    /// Wakes the owner of a queue (if its proxy still exists).
    pub(crate) fn notify_owner(owner: (usize, usize, u32), chain: &Weak<Shared>, token: u32) {
        if let Some(s) = chain.upgrade() {
            s.notify_queue(owner, token);
        }
    }
}

pub(crate) struct Shared {
    pub(crate) clock: Clock,
    pub(crate) upstreams: HashSet<String>,
    pub(crate) seeds: Vec<(String, Vec<u8>)>,
    pub(crate) log_level: LogLevel,
    pub(crate) foreign: HashMap<String, ForeignFunction>,
    pub(crate) buffer_limit: usize,
    /// HTTP/1.1 body ends: data with eos=false, then an empty eos=true.
    pub(crate) split_body_end: bool,
    /// Add `x-forwarded-proto: http` to requests without it, as Envoy's connection manager does.
    pub(crate) forwarded_proto: bool,
    /// Shared data, queues, metrics (possibly shared with other proxies).
    pub(crate) process: Arc<Process>,
    /// Per worker: pending queue notifications (vm index, root context, queue id).
    pub(crate) notify: Vec<Mutex<Vec<(usize, u32, u32)>>>,
    pub(crate) wakers: Vec<Mutex<Option<Waker>>>,
    pub(crate) logs: Mutex<Vec<LogEntry>>,
    pub(crate) next_token: AtomicU32,
}

impl Shared {
    pub(crate) fn log(&self, worker: usize, plugin: &str, level: LogLevel, message: String) {
        lock(&self.logs).push(LogEntry { worker, plugin: plugin.to_string(), level, message });
    }

    pub(crate) fn next_cas(&self) -> u32 {
        // CAS values are never 0 (0 means "unconditional" to set_shared_data).
        loop {
            let v = self.process.next_cas.fetch_add(1, Ordering::SeqCst);
            if v != 0 {
                return v;
            }
        }
    }

    pub(crate) fn notify_queue(&self, owner: (usize, usize, u32), token: u32) {
        let (worker, vm, ctx) = owner;
        if let Some(n) = self.notify.get(worker) {
            lock(n).push((vm, ctx, token));
        }
        let waker = self.wakers.get(worker).and_then(|w| lock(w).clone());
        if let Some(w) = waker {
            w();
        }
    }
}

/// A handle on a proxy's shared state (logs, metrics, shared data, queues), usable from any thread while
/// workers run elsewhere (the `serve` driver).
#[derive(Clone)]
pub struct ProxyState {
    pub(crate) shared: Arc<Shared>,
}

impl ProxyState {
    /// Every log line so far.
    pub fn logs(&self) -> Vec<LogEntry> {
        lock(&self.shared.logs).clone()
    }

    /// Removes and returns the log lines so far.
    pub fn take_logs(&self) -> Vec<LogEntry> {
        std::mem::take(&mut *lock(&self.shared.logs))
    }

    /// Counter and gauge values by name (as defined by the filters; Envoy's admin shows them with its
    /// custom-stat prefix). Histograms report their sample count here; see [`ProxyState::histogram`].
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.process.metrics)
            .iter()
            .map(|(k, m)| {
                (k.clone(), if m.kind == MetricKind::Histogram { m.samples.len() as u64 } else { m.value })
            })
            .collect()
    }

    /// One counter or gauge value.
    pub fn metric(&self, name: &str) -> Option<u64> {
        lock(&self.shared.process.metrics)
            .get(name)
            .filter(|m| m.kind != MetricKind::Histogram)
            .map(|m| m.value)
    }

    /// The samples recorded into a histogram.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        lock(&self.shared.process.metrics)
            .get(name)
            .filter(|m| m.kind == MetricKind::Histogram)
            .map(|m| m.samples.clone())
    }

    /// A shared-data value and its CAS.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared.process.shared_data).get(vm_id).and_then(|m| m.get(key)).cloned()
    }

    /// Sets a shared-data value (unconditionally), as another proxy component would.
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8]) {
        let cas = self.shared.next_cas();
        lock(&self.shared.process.shared_data)
            .entry(vm_id.to_string())
            .or_default()
            .insert(key.to_string(), (value.to_vec(), cas));
    }

    /// Enqueues onto a registered shared queue (by vm_id and name) from the host side; the registering
    /// root context gets `on_queue_ready`. Returns false if no such queue is registered.
    pub fn enqueue(&self, vm_id: &str, name: &str, item: &[u8]) -> bool {
        let mut q = lock(&self.shared.process.queues);
        let Some(&token) = q.by_name.get(&(vm_id.to_string(), name.to_string())) else { return false };
        let Some(queue) = q.queues.get_mut(&token) else { return false };
        queue.items.push_back(item.to_vec());
        let (owner, chain) = (queue.owner, queue.chain.clone());
        drop(q);
        Process::notify_owner(owner, &chain, token);
        true
    }

    /// The items currently in a shared queue.
    pub fn queue_items(&self, vm_id: &str, name: &str) -> Option<Vec<Vec<u8>>> {
        let q = lock(&self.shared.process.queues);
        let token = q.by_name.get(&(vm_id.to_string(), name.to_string()))?;
        q.queues.get(token).map(|q| q.items.iter().cloned().collect())
    }

    /// Time since the proxy was built (virtual or real).
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.shared.clock.mono_ns())
    }
}
