//! `meshwasm-host serve`: an HTTP/1.1 reverse proxy that passes each request through a filter chain.
//!
//! Threads mirror Envoy's: each of the `workers` threads runs its own single-threaded tokio runtime, owns
//! one [`Worker`] (its own VMs) per listener, and accepts connections from the shared listening sockets
//! (the kernel spreads them, like Envoy without exact balancing). A worker is a synchronous state machine:
//! this driver feeds it requests, performs the http calls and upstream requests it asks for, delivers the
//! answers, and fires its ticks on real time.
//!
//! This module starts everything up (VMs, sockets, worker threads, signals, drain); `admin` is the
//! admin endpoint, `downstream` the accept loop and the client side of a request (limits, conversion,
//! access log), `chain` drives a listener's [`Worker`], and `route` sends what leaves the chain upstream.

mod admin;
mod chain;
mod downstream;
mod route;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use meshwasm_host::{Host, HostOptions, Plugin, Proxy, ProxyState, RandomSource, Upstream, Worker};
use tokio::sync::{mpsc, watch};
use tokio::task::{LocalSet, spawn_local};

use crate::access_log::rfc3339_millis;
use crate::config::{Cluster, FailurePolicy, FilterSpec, Listener, LogLevel, ServeConfig};
use crate::upstream::UpstreamCluster;

use chain::Chain;
use downstream::{ConnectionLimit, ListenerCtx, accept_loop};

/// How long in-flight requests may take to finish after Ctrl-C / SIGTERM.
const DRAIN_TIME: Duration = Duration::from_secs(5);

pub fn run(path: &Path, validate_only: bool) -> anyhow::Result<()> {
    let config = ServeConfig::load(path)?;
    // Filters draw hash keys, ids and nonces from WASI random_get: serve real traffic with the OS CSPRNG,
    // never the seeded generator tests may choose.
    let host = Host::new(HostOptions { random: RandomSource::Os, ..HostOptions::default() })?;
    warn_non_loopback(&config);

    // Start every VM first: a config a filter rejects stops here, before any port is opened. The
    // singleton services first (as Envoy's bootstrap extensions); with them, every listener shares
    // their process state (shared data, queues, metrics by vm_id), as in Envoy.
    let services = build_services(&host, &config)?;
    let process = services.as_ref().map(|(_, state)| state.clone());
    let mut per_listener = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        per_listener.push(build_workers(&host, &config, listener, process.as_ref())?);
    }
    if validate_only {
        let filters: usize = config.listeners.iter().map(|l| l.filters.len()).sum();
        println!(
            "meshwasm-host serve: {} OK: {} listener(s), {filters} filter(s) started on {} worker(s), {} service(s), {} cluster(s)",
            path.display(),
            config.listeners.len(),
            config.workers,
            config.services.len(),
            config.clusters.len()
        );
        return Ok(());
    }

    // Signal handlers before the listener lines: a SIGTERM right after start must still drain cleanly.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut interrupt, mut terminate) = {
        let _guard = rt.enter();
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)
    };

    // Admin first: its line precedes the listener lines, so whoever waits for a listener line
    // already has the admin address.
    let admin = match config.admin {
        None => None,
        Some(address) => {
            let socket =
                StdListener::bind(address).with_context(|| format!("admin: cannot bind {address}"))?;
            socket.set_nonblocking(true)?;
            eprintln!("meshwasm-host serve: admin on http://{} (/stats, /ready)", socket.local_addr()?);
            Some(socket)
        }
    };
    let mut sockets = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let socket = StdListener::bind(listener.address)
            .with_context(|| format!("listener `{}`: cannot bind {}", listener.name, listener.address))?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        eprintln!(
            "meshwasm-host serve: listener `{}` on {}://{local} → cluster `{}` through {} filter(s), {} worker(s)",
            listener.name,
            if listener.tls.is_some() { "https" } else { "http" },
            listener.route_cluster,
            listener.filters.len(),
            config.workers
        );
        sockets.push(socket);
    }

    // With services every listener shares one process state: list its metrics once, as `proxy`.
    let states: Vec<(String, ProxyState)> = match &process {
        Some(state) => vec![("proxy".to_string(), state.clone())],
        None => config
            .listeners
            .iter()
            .zip(&per_listener)
            .filter_map(|(l, (_, state))| state.clone().map(|s| (l.name.clone(), s)))
            .collect(),
    };

    // One connection cap per listener, shared by all workers.
    let limits: Vec<Arc<ConnectionLimit>> =
        config.listeners.iter().map(|l| Arc::new(ConnectionLimit::new(l.max_connections))).collect();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<anyhow::Error>();
    let mut threads = Vec::with_capacity(config.workers);
    for index in 0..config.workers {
        let mut parts = Vec::with_capacity(config.listeners.len());
        for (l, listener) in config.listeners.iter().enumerate() {
            let (workers, state) = &mut per_listener[l];
            let worker = workers.as_mut().map(|w| w.remove(0));
            parts.push(ListenerPart {
                listener: listener.clone(),
                socket: sockets[l].try_clone()?,
                worker,
                state: state.clone(),
                limit: limits[l].clone(),
            });
        }
        let clusters = config.clusters.clone();
        let shutdown = shutdown_rx.clone();
        let fatal = fatal_tx.clone();
        let thread =
            std::thread::Builder::new().name(format!("meshwasm-worker-{index}")).spawn(move || {
                if let Err(e) = worker_thread(index, parts, clusters, shutdown) {
                    let _ = fatal.send(e.context(format!("worker {index}")));
                }
            })?;
        threads.push(thread);
    }
    if let Some((worker, state)) = services {
        let clusters = config.clusters.clone();
        let shutdown = shutdown_rx.clone();
        let fatal = fatal_tx.clone();
        let thread = std::thread::Builder::new().name("meshwasm-main".into()).spawn(move || {
            if let Err(e) = main_thread(worker, state, clusters, shutdown) {
                let _ = fatal.send(e.context("main thread (services)"));
            }
        })?;
        threads.push(thread);
    }
    drop(fatal_tx);

    let outcome = rt.block_on(async {
        if let Some(socket) = admin {
            let socket = tokio::net::TcpListener::from_std(socket)?;
            tokio::spawn(admin::serve(socket, Arc::new(states)));
        }
        tokio::select! {
            _ = interrupt.recv() => { eprintln!("meshwasm-host serve: interrupted, draining"); Ok(()) }
            _ = terminate.recv() => { eprintln!("meshwasm-host serve: SIGTERM, draining"); Ok(()) }
            Some(e) = fatal_rx.recv() => Err(e),
        }
    });
    let _ = shutdown_tx.send(true);
    for t in threads {
        let _ = t.join();
    }
    outcome?;
    eprintln!("meshwasm-host serve: stopped");
    Ok(())
}

/// One warning line per listener (or admin endpoint) that binds an address other hosts can reach: a
/// bare port binds loopback, so any other address was written on purpose, but should be noticed.
fn warn_non_loopback(config: &ServeConfig) {
    let listeners = config.listeners.iter().map(|l| {
        let guard = match &l.tls {
            None => "plain HTTP, no authentication of its own",
            Some(t) if t.requires_client_certificate() => "TLS, clients authenticated by certificate",
            Some(_) => "TLS, no client authentication of its own",
        };
        (format!("listener `{}`", l.name), l.address, guard)
    });
    let admin = config.admin.map(|a| ("admin".to_string(), a, "plain HTTP, no authentication of its own"));
    for (what, address, guard) in admin.into_iter().chain(listeners) {
        if !address.ip().is_loopback() {
            eprintln!(
                "meshwasm-host serve: warning: {what} binds {address}, not a loopback address: it is \
                 reachable from other hosts ({guard})"
            );
        }
    }
}

/// The main thread's worker running the singleton services (None without services) and the process
/// state every listener then shares.
/// A filter or service of the config as the host's plugin: its module loaded, everything else as given.
fn plugin(host: &Host, f: &FilterSpec) -> anyhow::Result<Plugin> {
    let module = host.load(&f.wasm)?;
    let mut plugin = Plugin::new(module)
        .name(&f.name)
        .root_id(&f.root_id)
        .vm_id(&f.vm_id)
        .config(&f.config)
        .vm_config(&f.vm_config);
    for (k, v) in &f.env {
        plugin = plugin.env(k, v);
    }
    Ok(plugin)
}

fn build_services(host: &Host, config: &ServeConfig) -> anyhow::Result<Option<(Worker, ProxyState)>> {
    if config.services.is_empty() {
        return Ok(None);
    }
    let mut builder = Proxy::builder(host).workers(config.workers).log_level(to_host_level(config.log_level));
    for f in &config.services {
        builder = builder.service(plugin(host, f).with_context(|| format!("service `{}`", f.name))?);
    }
    let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
    for c in &config.clusters {
        builder = builder.upstream(&c.name, Upstream::forward(unspecified));
    }
    let (worker, state) = builder.build_main_thread().context("services")?;
    print_logs(&state);
    Ok(Some((worker, state)))
}

/// The workers of one listener (None when it has no filters) and its shared state (`process`: the
/// services' state, shared by every listener when there are services).
fn build_workers(
    host: &Host,
    config: &ServeConfig,
    listener: &Listener,
    process: Option<&ProxyState>,
) -> anyhow::Result<(Option<Vec<Worker>>, Option<ProxyState>)> {
    if listener.filters.is_empty() {
        return Ok((None, None));
    }
    let policy = match listener.failure_policy {
        FailurePolicy::FailClosed => meshwasm_host::FailurePolicy::FailClosed,
        FailurePolicy::FailReload => meshwasm_host::FailurePolicy::Reload,
    };
    let mut builder = Proxy::builder(host)
        .workers(config.workers)
        .log_level(to_host_level(config.log_level))
        .failure_policy(policy);
    if let Some(state) = process {
        builder = builder.share_state(state);
    }
    for f in &listener.filters {
        let p =
            plugin(host, f).with_context(|| format!("listener `{}`, filter `{}`", listener.name, f.name))?;
        builder = builder.plugin(p);
    }
    // Only the names matter here: the driver performs the calls itself.
    let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
    for c in &config.clusters {
        builder = builder.upstream(&c.name, Upstream::forward(unspecified));
    }
    let (workers, state) =
        builder.build_workers().with_context(|| format!("listener `{}`", listener.name))?;
    // Lines logged while the VMs started (on_vm_start, on_configure).
    print_logs(&state);
    Ok((Some(workers), Some(state)))
}

fn to_host_level(level: LogLevel) -> meshwasm_host::LogLevel {
    use meshwasm_host::LogLevel as H;
    match level {
        LogLevel::Trace => H::Trace,
        LogLevel::Debug => H::Debug,
        LogLevel::Info => H::Info,
        LogLevel::Warn => H::Warn,
        LogLevel::Error => H::Error,
        LogLevel::Critical => H::Critical,
    }
}

fn print_logs(state: &ProxyState) {
    let now = rfc3339_millis(SystemTime::now());
    for l in state.take_logs() {
        let level = format!("{:?}", l.level).to_ascii_lowercase();
        eprintln!("[{now}] [worker {}] [{level}] {}: {}", l.worker, l.plugin, l.message);
    }
}

struct ListenerPart {
    listener: Listener,
    socket: StdListener,
    worker: Option<Worker>,
    state: Option<ProxyState>,
    limit: Arc<ConnectionLimit>,
}

fn worker_thread(
    index: usize,
    parts: Vec<ListenerPart>,
    clusters: Vec<Cluster>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let upstreams: Rc<HashMap<String, UpstreamCluster>> =
            Rc::new(clusters.into_iter().map(|c| (c.name.clone(), UpstreamCluster::new(c))).collect());
        let active = Rc::new(Cell::new(0usize));
        for part in parts {
            let socket = tokio::net::TcpListener::from_std(part.socket)?;
            let chain = match (part.worker, part.state) {
                (Some(worker), Some(state)) => Some(Chain::start(worker, state, upstreams.clone())),
                _ => None,
            };
            let ctx = Rc::new(ListenerCtx {
                listener: part.listener,
                upstreams: upstreams.clone(),
                chain,
                worker: index,
                limit: part.limit,
                tls_failures: Cell::new(0),
            });
            spawn_local(accept_loop(socket, ctx, active.clone(), shutdown.clone()));
        }
        let _ = shutdown.wait_for(|stop| *stop).await;
        let deadline = Instant::now() + DRAIN_TIME;
        while active.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// serve's main thread: the singleton services' worker, driven like a listener's (ticks, http calls
/// through the clusters, queues) until shutdown; it never gets a stream.
fn main_thread(
    worker: Worker,
    state: ProxyState,
    clusters: Vec<Cluster>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let upstreams: Rc<HashMap<String, UpstreamCluster>> =
            Rc::new(clusters.into_iter().map(|c| (c.name.clone(), UpstreamCluster::new(c))).collect());
        let _chain = Chain::start(worker, state, upstreams);
        let _ = shutdown.wait_for(|stop| *stop).await;
        Ok::<_, anyhow::Error>(())
    })
}
