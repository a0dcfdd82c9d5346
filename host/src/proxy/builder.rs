//! [`ProxyBuilder`]: the chain, upstreams and options of a [`Proxy`] (or of bare [`Worker`]s for a
//! real-time driver), and [`BuildError`] when a VM does not start.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};

use crate::foreign::{ForeignFunction, builtins};
use crate::host::Host;
use crate::plugin::{FailurePolicy, LogEntry, LogLevel, Plugin, Upstream};
use crate::shared::{Clock, ClockKind, Process, ProxyState, Shared, unix_ns};
use crate::worker::Worker;

use super::Proxy;

/// Builds a [`Proxy`] (or bare [`Worker`]s for a real-time driver).
pub struct ProxyBuilder {
    host: Host,
    workers: usize,
    plugins: Vec<Plugin>,
    services: Vec<Plugin>,
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
    /// One worker, no plugins, Envoy's defaults ([`Proxy::builder`]).
    pub(super) fn new(host: &Host) -> Self {
        ProxyBuilder {
            host: host.clone(),
            workers: 1,
            plugins: Vec::new(),
            services: Vec::new(),
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

    /// Adds a singleton Wasm service, as Envoy's bootstrap extension `envoy.bootstrap.wasm` with
    /// `singleton: true`: one VM for the whole proxy, on the main thread (worker index N, see
    /// [`ProxyBuilder::main_thread`], created for it even when that option is off), with a root
    /// context only: `on_vm_start`, `on_configure`, ticks, http calls, queues, shared data of its
    /// `vm_id` (the same as the filters' VMs of that vm_id see), never an HTTP context. It is in no
    /// filter chain, so requests never enter it. As in Envoy, it shares a VM with a main-thread filter
    /// root context of the same vm_id and module.
    pub fn service(mut self, plugin: Plugin) -> Self {
        self.services.push(plugin);
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
        if self.plugins.is_empty() && self.services.is_empty() {
            bail!("meshwasm-host: a proxy needs at least one plugin or service");
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.services {
            if !names.insert(s.display_name()) {
                bail!("meshwasm-host: two services are named `{}`; give each its own name", s.display_name());
            }
        }
        // The main thread runs the services, and the filters' root contexts when asked for.
        let main_plugins: Vec<Plugin> = if main_thread { self.plugins.clone() } else { Vec::new() }
            .into_iter()
            .chain(self.services.iter().cloned())
            .collect();
        let with_main = !main_plugins.is_empty();
        // Envoy starts the main thread's root contexts (and bootstrap services) first.
        let mut order: Vec<usize> = (0..self.workers).collect();
        if with_main {
            order.insert(0, self.workers);
        }
        let n = self.workers;
        let mut workers: Vec<Worker> = order
            .into_iter()
            .map(|i| {
                let plugins = if i == n { &main_plugins } else { &self.plugins };
                Worker::new(&self.host, shared.clone(), i, plugins, self.policy)
            })
            .collect::<Result<_>>()?;
        if with_main {
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
    /// requests itself (see [`WorkerEvent`](crate::WorkerEvent)) and calls [`Worker::run_timers`] when
    /// [`Worker::next_tick`] is due. Upstream values passed to [`ProxyBuilder::upstream`] only declare the names here.
    pub fn build_workers(self) -> Result<(Vec<Worker>, ProxyState)> {
        if let Some(s) = self.services.first() {
            bail!(
                "meshwasm-host: service `{}`: build_workers runs no main thread; build the services with \
                 build_main_thread",
                s.display_name()
            );
        }
        let shared = self.shared(ClockKind::Real(Instant::now()));
        let workers = self.workers_with(&shared, false).map_err(|e| BuildError::wrap(e, &shared))?;
        Ok((workers, ProxyState { shared }))
    }

    /// For real-time drivers: the main thread's worker running the [services](ProxyBuilder::service)
    /// (and nothing else: filters given with [`ProxyBuilder::plugin`] are refused), with its shared
    /// state. Build the filters' workers with [`ProxyBuilder::share_state`] on that state so that they
    /// see the services' shared data. The driver runs it like any worker (ticks, http calls, queues);
    /// it never gets a stream.
    pub fn build_main_thread(self) -> Result<(Worker, ProxyState)> {
        if self.services.is_empty() {
            bail!("meshwasm-host: build_main_thread needs at least one service");
        }
        if let Some(p) = self.plugins.first() {
            bail!(
                "meshwasm-host: plugin `{}`: build_main_thread runs services only; build filters with \
                 build_workers",
                p.display_name()
            );
        }
        let shared = self.shared(ClockKind::Real(Instant::now()));
        let mut workers = self.workers_with(&shared, false).map_err(|e| BuildError::wrap(e, &shared))?;
        // Stream workers with no plugins, then the main thread's.
        let main = workers.pop().ok_or_else(|| anyhow::anyhow!("meshwasm-host: no main-thread worker"))?;
        Ok((main, ProxyState { shared }))
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
