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
use crate::http::Headers;
use crate::plugin::{LogEntry, LogLevel};
use crate::status;

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

struct Metric {
    kind: MetricKind,
    value: u64,
    samples: Vec<u64>,
}

/// A proxy-wasm status code (`crate::status`), the error of a hostcall rule.
pub(crate) type Status = u32;

/// The root context that registered a shared queue: it gets `on_queue_ready`.
#[derive(Clone)]
pub(crate) struct QueueOwner {
    pub(crate) worker: usize,
    pub(crate) vm: usize,
    pub(crate) root: u32,
    /// The proxy (chain) of the registering root context, whose worker runs `on_queue_ready`.
    pub(crate) chain: Weak<Shared>,
}

impl QueueOwner {
    /// Wakes the owner (if its proxy still exists).
    fn notify(&self, token: u32) {
        if let Some(s) = self.chain.upgrade() {
            s.notify_queue((self.worker, self.vm, self.root), token);
        }
    }
}

struct Queue {
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
}

/// vm_id → key → (value, cas).
type SharedData = HashMap<String, HashMap<String, (Vec<u8>, u32)>>;

/// Envoy's process-wide state: shared data, shared queues, metrics. The hostcall rules over them (CAS,
/// queue registration, metric kinds) are its methods; `abi` only moves bytes in and out of the guest.
pub(crate) struct Process {
    shared_data: Mutex<SharedData>,
    next_cas: AtomicU32,
    queues: Mutex<Queues>,
    next_queue: AtomicU32,
    metrics: Mutex<BTreeMap<String, Metric>>,
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
    fn next_cas(&self) -> u32 {
        // CAS values are never 0 (0 means "unconditional" to set_shared_data).
        loop {
            let v = self.next_cas.fetch_add(1, Ordering::SeqCst);
            if v != 0 {
                return v;
            }
        }
    }

    /// A shared-data value and its CAS (`proxy_get_shared_data`).
    pub(crate) fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared_data).get(vm_id).and_then(|m| m.get(key)).cloned()
    }

    /// `proxy_set_shared_data` as Envoy's `SharedData::set`: CAS 0 writes unconditionally; any other
    /// CAS must be the key's current one (CAS_MISMATCH otherwise); a key that does not exist yet is
    /// written whatever the CAS. Every write gets a new CAS.
    pub(crate) fn set_shared(&self, vm_id: &str, key: &str, value: Vec<u8>, cas: u32) -> Result<(), Status> {
        let mut all = lock(&self.shared_data);
        let map = all.entry(vm_id.to_string()).or_default();
        if let Some(existing) = map.get(key)
            && cas != 0
            && cas != existing.1
        {
            return Err(status::CAS_MISMATCH);
        }
        map.insert(key.to_string(), (value, self.next_cas()));
        Ok(())
    }

    /// `proxy_register_shared_queue`: the queue `name` of `vm_id`, created on first registration. Like
    /// Envoy, registering again returns the same token, and the first registrant stays the owner.
    pub(crate) fn register_queue(&self, vm_id: &str, name: &str, owner: QueueOwner) -> u32 {
        let mut q = lock(&self.queues);
        let key = (vm_id.to_string(), name.to_string());
        if let Some(t) = q.by_name.get(&key) {
            return *t;
        }
        let t = self.next_queue.fetch_add(1, Ordering::SeqCst);
        q.by_name.insert(key, t);
        q.queues.insert(t, Queue { owner, items: VecDeque::new() });
        t
    }

    /// `proxy_resolve_shared_queue`: the token of a registered queue.
    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        lock(&self.queues).by_name.get(&(vm_id.to_string(), name.to_string())).copied()
    }

    /// `proxy_enqueue_shared_queue`: appends an item and wakes the owner (NOT_FOUND for an unknown
    /// token).
    pub(crate) fn enqueue(&self, token: u32, item: Vec<u8>) -> Result<(), Status> {
        let owner = {
            let mut q = lock(&self.queues);
            let queue = q.queues.get_mut(&token).ok_or(status::NOT_FOUND)?;
            queue.items.push_back(item);
            queue.owner.clone()
        };
        // Outside the lock: the owner's waker may run arbitrary driver code.
        owner.notify(token);
        Ok(())
    }

    /// `proxy_dequeue_shared_queue`: the oldest item; NOT_FOUND for an unknown token, EMPTY when there
    /// is none.
    pub(crate) fn dequeue(&self, token: u32) -> Result<Vec<u8>, Status> {
        let mut q = lock(&self.queues);
        let queue = q.queues.get_mut(&token).ok_or(status::NOT_FOUND)?;
        queue.items.pop_front().ok_or(status::EMPTY)
    }

    /// `proxy_define_metric`: the metric exists from now on (defining it again keeps its value).
    pub(crate) fn define_metric(&self, name: &str, kind: MetricKind) {
        lock(&self.metrics).entry(name.to_string()).or_insert(Metric { kind, value: 0, samples: Vec::new() });
    }

    fn with_metric<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Metric) -> Result<T, Status>,
    ) -> Result<T, Status> {
        f(lock(&self.metrics).get_mut(name).ok_or(status::NOT_FOUND)?)
    }

    /// `proxy_increment_metric` as Envoy: a counter only goes up (a zero or negative offset is
    /// BAD_ARGUMENT), a gauge moves either way, a histogram cannot be incremented.
    pub(crate) fn increment_metric(&self, name: &str, offset: i64) -> Result<(), Status> {
        self.with_metric(name, |m| match m.kind {
            MetricKind::Counter if offset > 0 => {
                m.value = m.value.wrapping_add(offset as u64);
                Ok(())
            }
            MetricKind::Gauge => {
                m.value = m.value.wrapping_add(offset as u64);
                Ok(())
            }
            MetricKind::Counter | MetricKind::Histogram => Err(status::BAD_ARGUMENT),
        })
    }

    /// `proxy_record_metric`: a counter adds the value, a gauge takes it, a histogram records a sample.
    pub(crate) fn record_metric(&self, name: &str, value: u64) -> Result<(), Status> {
        self.with_metric(name, |m| {
            match m.kind {
                MetricKind::Counter => m.value = m.value.wrapping_add(value),
                MetricKind::Gauge => m.value = value,
                MetricKind::Histogram => m.samples.push(value),
            }
            Ok(())
        })
    }

    /// `proxy_get_metric`: a counter's or gauge's value; a histogram has none (BAD_ARGUMENT).
    pub(crate) fn metric_value(&self, name: &str) -> Result<u64, Status> {
        self.with_metric(name, |m| match m.kind {
            MetricKind::Histogram => Err(status::BAD_ARGUMENT),
            _ => Ok(m.value),
        })
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

/// Why `proxy_http_call` refuses a call (BAD_ARGUMENT in every case, as in Envoy).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CallRefused {
    /// The timeout, read as Envoy's signed milliseconds, is negative.
    NegativeTimeout,
    /// No upstream (cluster) of that name was declared.
    UnknownUpstream,
    /// `:method`, `:path` or `:authority` is missing.
    MissingPseudoHeader(&'static str),
}

impl Shared {
    /// `proxy_http_call`'s checks, in Envoy's order: the timeout, the cluster, the pseudo-headers the
    /// async client needs.
    pub(crate) fn admit_http_call(
        &self,
        upstream: &str,
        headers: &Headers,
        timeout_ms: u32,
    ) -> Result<(), CallRefused> {
        if (timeout_ms as i32) < 0 {
            return Err(CallRefused::NegativeTimeout);
        }
        if !self.upstreams.contains(upstream) {
            return Err(CallRefused::UnknownUpstream);
        }
        for required in [":method", ":path", ":authority"] {
            if !headers.contains(required) {
                return Err(CallRefused::MissingPseudoHeader(required));
            }
        }
        Ok(())
    }

    pub(crate) fn log(&self, worker: usize, plugin: &str, level: LogLevel, message: String) {
        lock(&self.logs).push(LogEntry { worker, plugin: plugin.to_string(), level, message });
    }

    /// A new http-call token (unique across the proxy's workers).
    pub(crate) fn next_call_token(&self) -> u32 {
        self.next_token.fetch_add(1, Ordering::SeqCst)
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
        self.shared.process.shared_data(vm_id, key)
    }

    /// Every shared-data key under `vm_id`, sorted.
    pub fn shared_data_keys(&self, vm_id: &str) -> Vec<String> {
        let all = lock(&self.shared.process.shared_data);
        let mut keys: Vec<String> = all.get(vm_id).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        keys.sort();
        keys
    }

    /// Every registered shared-queue name under `vm_id`, sorted.
    pub fn queue_names(&self, vm_id: &str) -> Vec<String> {
        let q = lock(&self.shared.process.queues);
        let mut names: Vec<String> =
            q.by_name.keys().filter(|(v, _)| v == vm_id).map(|(_, n)| n.clone()).collect();
        names.sort();
        names
    }

    /// Sets a shared-data value (unconditionally), as another proxy component would.
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8]) {
        // CAS 0 never mismatches.
        let _ = self.shared.process.set_shared(vm_id, key, value.to_vec(), 0);
    }

    /// Enqueues onto a registered shared queue (by vm_id and name) from the host side; the registering
    /// root context gets `on_queue_ready`. Returns false if no such queue is registered.
    pub fn enqueue(&self, vm_id: &str, name: &str, item: &[u8]) -> bool {
        let process = &self.shared.process;
        process.resolve_queue(vm_id, name).is_some_and(|token| process.enqueue(token, item.to_vec()).is_ok())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{BAD_ARGUMENT, CAS_MISMATCH, EMPTY, NOT_FOUND};

    fn shared(process: Arc<Process>, upstreams: &[&str]) -> Arc<Shared> {
        Arc::new(Shared {
            clock: Clock { kind: ClockKind::Virtual(AtomicU64::new(0)), start_unix_ns: 0 },
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            seeds: Vec::new(),
            log_level: LogLevel::Info,
            foreign: HashMap::new(),
            buffer_limit: 1 << 20,
            split_body_end: true,
            forwarded_proto: true,
            process,
            notify: (0..2).map(|_| Mutex::default()).collect(),
            wakers: (0..2).map(|_| Mutex::default()).collect(),
            logs: Mutex::default(),
            next_token: AtomicU32::new(1),
        })
    }

    fn owner(chain: &Arc<Shared>, worker: usize, root: u32) -> QueueOwner {
        QueueOwner { worker, vm: 0, root, chain: Arc::downgrade(chain) }
    }

    #[test]
    fn set_shared_follows_envoys_cas_rules() {
        let p = Process::default();
        // A key that does not exist is written whatever the CAS.
        assert_eq!(p.set_shared("vm", "k", b"a".to_vec(), 77), Ok(()));
        let (_, cas1) = p.shared_data("vm", "k").unwrap();
        assert_ne!(cas1, 0);
        // The current CAS writes and moves the CAS on.
        assert_eq!(p.set_shared("vm", "k", b"b".to_vec(), cas1), Ok(()));
        let (v, cas2) = p.shared_data("vm", "k").unwrap();
        assert_eq!((v.as_slice(), cas2 != cas1), (&b"b"[..], true));
        // A stale CAS is refused and changes nothing.
        assert_eq!(p.set_shared("vm", "k", b"c".to_vec(), cas1), Err(CAS_MISMATCH));
        assert_eq!(p.shared_data("vm", "k"), Some((b"b".to_vec(), cas2)));
        // CAS 0 is unconditional.
        assert_eq!(p.set_shared("vm", "k", b"d".to_vec(), 0), Ok(()));
        assert_eq!(p.shared_data("vm", "k").unwrap().0, b"d");
        // Keys are per vm_id.
        assert_eq!(p.shared_data("other", "k"), None);
    }

    #[test]
    fn a_queue_registered_twice_keeps_its_token_and_first_owner() {
        let process = Arc::new(Process::default());
        let chain = shared(process.clone(), &[]);
        let t = process.register_queue("vm", "q", owner(&chain, 0, 7));
        assert_eq!(process.register_queue("vm", "q", owner(&chain, 1, 9)), t);
        assert_ne!(process.register_queue("other", "q", owner(&chain, 1, 9)), t);
        assert_eq!(process.resolve_queue("vm", "q"), Some(t));
        assert_eq!(process.resolve_queue("vm", "nope"), None);
        assert_eq!(process.enqueue(t, b"x".to_vec()), Ok(()));
        // The first registrant (worker 0, root 7) is told; worker 1 is not.
        assert_eq!(*lock(&chain.notify[0]), vec![(0, 7, t)]);
        assert!(lock(&chain.notify[1]).is_empty());
    }

    #[test]
    fn queues_are_fifo_and_say_empty_or_not_found() {
        let process = Arc::new(Process::default());
        let chain = shared(process.clone(), &[]);
        let t = process.register_queue("vm", "q", owner(&chain, 0, 1));
        assert_eq!(process.dequeue(t), Err(EMPTY));
        process.enqueue(t, b"1".to_vec()).unwrap();
        process.enqueue(t, b"2".to_vec()).unwrap();
        assert_eq!(process.dequeue(t), Ok(b"1".to_vec()));
        assert_eq!(process.dequeue(t), Ok(b"2".to_vec()));
        assert_eq!(process.dequeue(t), Err(EMPTY));
        assert_eq!(process.dequeue(t + 100), Err(NOT_FOUND));
        assert_eq!(process.enqueue(t + 100, b"x".to_vec()), Err(NOT_FOUND));
    }

    #[test]
    fn an_owner_whose_proxy_is_gone_is_not_notified() {
        let process = Arc::new(Process::default());
        let chain = shared(process.clone(), &[]);
        let t = process.register_queue("vm", "q", owner(&chain, 0, 1));
        drop(chain);
        assert_eq!(process.enqueue(t, b"x".to_vec()), Ok(()));
        assert_eq!(process.dequeue(t), Ok(b"x".to_vec()));
    }

    #[test]
    fn metric_rules_by_kind() {
        let p = Process::default();
        p.define_metric("c", MetricKind::Counter);
        p.define_metric("g", MetricKind::Gauge);
        p.define_metric("h", MetricKind::Histogram);
        // Counters only go up.
        assert_eq!(p.increment_metric("c", 2), Ok(()));
        assert_eq!(p.increment_metric("c", 0), Err(BAD_ARGUMENT));
        assert_eq!(p.increment_metric("c", -1), Err(BAD_ARGUMENT));
        assert_eq!(p.record_metric("c", 3), Ok(()));
        assert_eq!(p.metric_value("c"), Ok(5));
        // Gauges move both ways; record sets.
        assert_eq!(p.increment_metric("g", 5), Ok(()));
        assert_eq!(p.increment_metric("g", -2), Ok(()));
        assert_eq!(p.metric_value("g"), Ok(3));
        assert_eq!(p.record_metric("g", 10), Ok(()));
        assert_eq!(p.metric_value("g"), Ok(10));
        // Histograms take samples and have no value.
        assert_eq!(p.increment_metric("h", 1), Err(BAD_ARGUMENT));
        assert_eq!(p.record_metric("h", 4), Ok(()));
        assert_eq!(p.metric_value("h"), Err(BAD_ARGUMENT));
        // Defining again keeps the value; unknown names are NOT_FOUND.
        p.define_metric("c", MetricKind::Counter);
        assert_eq!(p.metric_value("c"), Ok(5));
        assert_eq!(p.metric_value("nope"), Err(NOT_FOUND));
        assert_eq!(p.record_metric("nope", 1), Err(NOT_FOUND));
    }

    #[test]
    fn http_calls_need_a_timeout_a_known_cluster_and_the_pseudo_headers() {
        let s = shared(Arc::new(Process::default()), &["idp"]);
        let full = Headers::new().with(":method", "GET").with(":path", "/").with(":authority", "idp");
        assert_eq!(s.admit_http_call("idp", &full, 1000), Ok(()));
        assert_eq!(s.admit_http_call("idp", &full, u32::MAX), Err(CallRefused::NegativeTimeout));
        assert_eq!(s.admit_http_call("other", &full, 1000), Err(CallRefused::UnknownUpstream));
        // The timeout is checked before the cluster, as in Envoy.
        assert_eq!(s.admit_http_call("other", &full, u32::MAX), Err(CallRefused::NegativeTimeout));
        let no_path = Headers::new().with(":method", "GET").with(":authority", "idp");
        assert_eq!(s.admit_http_call("idp", &no_path, 0), Err(CallRefused::MissingPseudoHeader(":path")));
    }
}
