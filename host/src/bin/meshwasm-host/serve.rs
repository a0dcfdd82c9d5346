//! `meshwasm-host serve`: an HTTP/1.1 reverse proxy that passes each request through a filter chain.
//!
//! Threads mirror Envoy's: each of the `workers` threads runs its own single-threaded tokio runtime, owns
//! one [`Worker`] (its own VMs) per listener, and accepts connections from the shared listening sockets
//! (the kernel spreads them, like Envoy without exact balancing). A worker is a synchronous state machine:
//! this driver feeds it requests, performs the http calls and upstream requests it asks for, delivers the
//! answers, and fires its ticks on real time.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshwasm_host::{
    CallOutcome, Exchange, ForwardedRequest, Headers, Host, HostOptions, OutboundCall, Plugin, Proxy,
    ProxyState, RandomSource, Request, StreamId, StreamState, Upstream, UpstreamReply, Worker, WorkerEvent,
    property,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{LocalSet, spawn_local};

use crate::access_log::{AccessLogEntry, rfc3339_millis};
use crate::config::{Cluster, FailurePolicy, Listener, LogLevel, ServeConfig};
use crate::upstream::{HOP_BY_HOP, UpstreamCluster, UpstreamFailure};

/// Requests with a larger body get 413 (Envoy buffers at most its connection buffer limit per filter;
/// this proxy buffers whole requests, so it allows more).
const MAX_REQUEST_BODY: usize = 64 << 20;
/// How long in-flight requests may take to finish after Ctrl-C / SIGTERM.
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// Open connections to the admin endpoint (a few scrapers and probes; it answers small GETs).
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// http calls without a timeout get this one (Envoy's route default).
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(path: &Path, validate_only: bool) -> anyhow::Result<()> {
    let config = ServeConfig::load(path)?;
    // Filters draw hash keys, ids and nonces from WASI random_get: serve real traffic with the OS CSPRNG,
    // never the seeded generator tests may choose.
    let host = Host::new(HostOptions { random: RandomSource::Os, ..HostOptions::default() })?;
    warn_non_loopback(&config);

    // Start every VM first: a config a filter rejects stops here, before any port is opened.
    let mut per_listener = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        per_listener.push(build_workers(&host, &config, listener)?);
    }
    if validate_only {
        let filters: usize = config.listeners.iter().map(|l| l.filters.len()).sum();
        println!(
            "meshwasm-host serve: {} OK: {} listener(s), {filters} filter(s) started on {} worker(s), {} cluster(s)",
            path.display(),
            config.listeners.len(),
            config.workers,
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
            "meshwasm-host serve: listener `{}` on http://{local} → cluster `{}` through {} filter(s), {} worker(s)",
            listener.name,
            listener.route_cluster,
            listener.filters.len(),
            config.workers
        );
        sockets.push(socket);
    }

    let states: Vec<(String, ProxyState)> = config
        .listeners
        .iter()
        .zip(&per_listener)
        .filter_map(|(l, (_, state))| state.clone().map(|s| (l.name.clone(), s)))
        .collect();

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
    drop(fatal_tx);

    let outcome = rt.block_on(async {
        if let Some(socket) = admin {
            let socket = tokio::net::TcpListener::from_std(socket)?;
            tokio::spawn(admin_loop(socket, Arc::new(states)));
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
    let listeners = config.listeners.iter().map(|l| (format!("listener `{}`", l.name), l.address));
    for (what, address) in config.admin.map(|a| ("admin".to_string(), a)).into_iter().chain(listeners) {
        if !address.ip().is_loopback() {
            eprintln!(
                "meshwasm-host serve: warning: {what} binds {address}, not a loopback address: it is \
                 reachable from other hosts (plain HTTP, no authentication of its own)"
            );
        }
    }
}

/// The admin endpoint: `GET /stats` lists the filters' metrics (`<listener>.<metric>: <value>`, one per
/// line; histograms show their sample count), `GET /ready` answers `LIVE`.
async fn admin_loop(socket: tokio::net::TcpListener, states: Arc<Vec<(String, ProxyState)>>) {
    let limit = Arc::new(ConnectionLimit::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let stream = match socket.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. EMFILE: back off as accept_loop does instead of spinning.
                eprintln!("meshwasm-host serve: admin: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the cap the connection is closed at once, as on the listeners.
        let Ok(slot) = limit.acquire() else { continue };
        let states = states.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let states = states.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/ready" => (200, "LIVE\n".to_string()),
                        "/stats" => {
                            let filter = req.uri().query().and_then(|q| {
                                q.split('&').find_map(|kv| kv.strip_prefix("filter=")).map(str::to_string)
                            });
                            let mut out = String::new();
                            for (listener, state) in states.iter() {
                                for (name, value) in state.metrics() {
                                    let line = format!("{listener}.{name}: {value}\n");
                                    if filter.as_deref().is_none_or(|f| line.contains(f)) {
                                        out.push_str(&line);
                                    }
                                }
                            }
                            (200, out)
                        }
                        _ => (404, "admin: GET /stats[?filter=substring] or /ready\n".to_string()),
                    };
                    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                    r.headers_mut()
                        .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The workers of one listener (None when it has no filters) and its shared state.
fn build_workers(
    host: &Host,
    config: &ServeConfig,
    listener: &Listener,
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
    for f in &listener.filters {
        let module = host
            .load(&f.wasm)
            .with_context(|| format!("listener `{}`, filter `{}`", listener.name, f.name))?;
        builder = builder.plugin(
            Plugin::new(module)
                .name(&f.name)
                .root_id(&f.root_id)
                .vm_id(&f.vm_id)
                .config(&f.config)
                .vm_config(&f.vm_config),
        );
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

/// A listener's cap on open downstream connections, shared by its workers. Past the cap a new
/// connection is accepted and closed at once, without a response (as Envoy's listener connection
/// limit does), rather than left waiting in the kernel's backlog.
struct ConnectionLimit {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
}

impl ConnectionLimit {
    fn new(max: usize) -> Self {
        Self { max, open: AtomicUsize::new(0), refused: AtomicU64::new(0) }
    }

    /// A slot for one more connection, released when dropped; at the cap, how many were refused so far.
    fn acquire(self: &Arc<Self>) -> Result<ConnectionSlot, u64> {
        match self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
        {
            Ok(_) => Ok(ConnectionSlot(self.clone())),
            Err(_) => Err(self.refused.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }
}

/// One open connection's place under its listener's [`ConnectionLimit`].
struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
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

/// What one worker thread knows about one listener.
struct ListenerCtx {
    listener: Listener,
    upstreams: Rc<HashMap<String, UpstreamCluster>>,
    chain: Option<Rc<Chain>>,
    worker: usize,
    limit: Arc<ConnectionLimit>,
}

async fn accept_loop(
    socket: tokio::net::TcpListener,
    ctx: Rc<ListenerCtx>,
    active: Rc<Cell<usize>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                eprintln!("meshwasm-host serve: listener `{}`: accept: {e}", ctx.listener.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match ctx.limit.acquire() {
            Ok(slot) => slot,
            Err(refused) => {
                // Dropping the stream closes it. Logged at powers of two, so a flood cannot flood stderr.
                if refused.is_power_of_two() {
                    eprintln!(
                        "meshwasm-host serve: listener `{}`: {} connections open (max_connections), \
                         closed a new connection from {peer} ({refused} refused so far)",
                        ctx.listener.name, ctx.limit.max
                    );
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(ctx.listener.address);
        let ctx = ctx.clone();
        let active = active.clone();
        let mut shutdown = shutdown.clone();
        active.set(active.get() + 1);
        spawn_local(async move {
            let svc_ctx = ctx.clone();
            let service = service_fn(move |req| {
                let ctx = svc_ctx.clone();
                async move { handle(ctx, peer, local, req).await }
            });
            // A client must send its request head within 30 s (slowloris), as Envoy's
            // request_headers_timeout bounds it.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.wait_for(|stop| *stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN_TIME, conn).await;
                }
            }
            drop(slot);
            active.set(active.get() - 1);
        });
    }
}

/// An error that makes hyper drop the connection without a response (a reset stream).
#[derive(Debug)]
struct ResetStream(String);

impl std::fmt::Display for ResetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream reset: {}", self.0)
    }
}

impl std::error::Error for ResetStream {}

type ProxyResponse = hyper::Response<Full<Bytes>>;

/// The parts of a downstream request the access log needs.
struct Downstream {
    start: SystemTime,
    started: Instant,
    method: String,
    path: String,
    bytes_received: usize,
}

/// What the route did, for the access log.
#[derive(Default)]
struct RouteInfo {
    upstream: Option<SocketAddr>,
    flags: &'static str,
    details: String,
}

async fn handle(
    ctx: Rc<ListenerCtx>,
    peer: SocketAddr,
    local: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Result<ProxyResponse, ResetStream> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let mut down = Downstream {
        start: SystemTime::now(),
        started: Instant::now(),
        method: parts.method.as_str().to_string(),
        path,
        bytes_received: 0,
    };
    // The whole body within the listener's timeout, so a client that trickles or stalls it is cut off.
    let read = tokio::time::timeout(
        ctx.listener.request_body_timeout,
        Limited::new(body, MAX_REQUEST_BODY).collect(),
    );
    let Ok(read) = read.await else {
        let mut reply = text_response(408, "request timeout");
        // The rest of the body may still come: close instead of reading it as the next request.
        reply.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        let info = RouteInfo { flags: "-", details: "request_body_timeout".into(), upstream: None };
        log_access(&ctx, &down, reply.status().as_u16(), reply.body_len(), &info);
        return Ok(reply);
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            if !too_large {
                return Err(ResetStream(format!("reading the request body: {e}")));
            }
            let reply = text_response(413, "Payload Too Large");
            log_access(
                &ctx,
                &down,
                reply.status().as_u16(),
                0,
                &RouteInfo { flags: "-", details: "request_payload_too_large".into(), upstream: None },
            );
            return Ok(reply);
        }
    };
    down.bytes_received = body.len();
    let headers = request_headers(&parts, &down.path);

    match &ctx.chain {
        None => {
            let (response, info) =
                route(&ctx, &ForwardedRequest { headers, body: body.to_vec(), ..Default::default() }).await;
            let reply = to_hyper_response(&response.headers, response.body, &down.method)?;
            log_access(&ctx, &down, reply.status().as_u16(), reply.body_len(), &info);
            Ok(reply)
        }
        Some(chain) => run_chain(&ctx, chain, headers, body, peer, local, down).await,
    }
}

/// Downstream headers as Envoy's HTTP/1.1 codec and connection manager present them to filters:
/// pseudo-headers first, `host` as `:authority`, hop-by-hop headers removed, `x-forwarded-proto` and
/// `x-request-id` added when absent.
fn request_headers(parts: &hyper::http::request::Parts, path: &str) -> Headers {
    let authority = parts
        .headers
        .get(hyper::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes().to_vec()))
        .unwrap_or_default();
    let mut h = Headers::new()
        .with(":authority", authority)
        .with(":path", path)
        .with(":method", parts.method.as_str())
        .with(":scheme", "http");
    for (k, v) in &parts.headers {
        if k == hyper::header::HOST || HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        h.add(k.as_str(), v.as_bytes());
    }
    if !h.contains("x-forwarded-proto") {
        h.add("x-forwarded-proto", "http");
    }
    if !h.contains("x-request-id") {
        h.add("x-request-id", request_id());
    }
    h
}

/// A random UUID v4 (Envoy's x-request-id format), from the std hasher's per-process random keys.
fn request_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    thread_local!(static STATE: (RandomState, Cell<u64>) = (RandomState::new(), Cell::new(0)));
    let (a, b) = STATE.with(|(s, n)| {
        n.set(n.get() + 1);
        (s.hash_one((n.get(), 1u8)), s.hash_one((n.get(), 2u8)))
    });
    let v = (u128::from(a) << 64 | u128::from(b)) & !(0xf000u128 << 64) & !(0xc000u128 << 48);
    let v = v | (0x4000u128 << 64) | (0x8000u128 << 48);
    let s = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &s[0..8], &s[8..12], &s[12..16], &s[16..20], &s[20..32])
}

/// A response built here (upstream or failure), in the shape the worker takes.
struct RoutedResponse {
    headers: Headers,
    body: Vec<u8>,
}

trait BodyLen {
    fn body_len(&self) -> usize;
}

impl BodyLen for ProxyResponse {
    fn body_len(&self) -> usize {
        use hyper::body::Body;
        self.body().size_hint().exact().unwrap_or(0) as usize
    }
}

/// Sends the request that left the chain to the route's cluster; upstream failures become Envoy's
/// local replies (503 no healthy upstream / connect failure, 504 timeout).
async fn route(ctx: &ListenerCtx, req: &ForwardedRequest) -> (RoutedResponse, RouteInfo) {
    let l = &ctx.listener;
    let result = match ctx.upstreams.get(&l.route_cluster) {
        None => Err((UpstreamFailure::NoHealthyUpstream, None)),
        Some(cluster) => match cluster.pick_forwarded(req) {
            None => Err((UpstreamFailure::NoHealthyUpstream, None)),
            Some(addr) => match build_upstream_request(&req.headers, &req.body) {
                Err(e) => Err((UpstreamFailure::ConnectFailure(e), Some(addr))),
                Ok(hreq) => match cluster.send(addr, hreq, l.route_timeout).await {
                    Ok(r) => Ok((r, addr)),
                    Err(f) => Err((f, Some(addr))),
                },
            },
        },
    };
    match result {
        Ok((r, addr)) => {
            let mut headers = Headers::new().with(":status", r.status.to_string());
            for (k, v) in &r.headers {
                headers.add(k, v);
            }
            (
                RoutedResponse { headers, body: r.body.to_vec() },
                RouteInfo { upstream: Some(addr), flags: "-", details: "via_upstream".into() },
            )
        }
        Err((failure, addr)) => {
            let (status, body, flags, details) = failure.local_reply();
            let headers = Headers::new()
                .with(":status", status.to_string())
                .with("content-length", body.len().to_string())
                .with("content-type", "text/plain");
            (
                RoutedResponse { headers, body: body.into_bytes() },
                RouteInfo { upstream: addr, flags, details: details.into() },
            )
        }
    }
}

/// An HTTP/1.1 request for an upstream from a header map with pseudo-headers. Hop-by-hop headers and
/// `content-length` are dropped (the body may have been changed by a filter; hyper sets the length).
fn build_upstream_request(headers: &Headers, body: &[u8]) -> Result<hyper::Request<Full<Bytes>>, String> {
    let method = headers.get(":method").unwrap_or("GET");
    let path = headers.get(":path").unwrap_or("/");
    let mut b = hyper::Request::builder().method(method).uri(path);
    if let Some(authority) = headers.get_bytes(":authority") {
        let v = HeaderValue::from_bytes(authority).map_err(|_| "invalid :authority".to_string())?;
        b = b.header(hyper::header::HOST, v);
    }
    for (k, v) in headers.iter() {
        if k.starts_with(b":") || k == b"host" || k == b"content-length" {
            continue;
        }
        let name = HeaderName::from_bytes(k)
            .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(k)))?;
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let value =
            HeaderValue::from_bytes(v).map_err(|_| format!("invalid value for header {}", name.as_str()))?;
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| format!("invalid request: {e}"))
}

/// The downstream response from a header map with `:status`.
fn to_hyper_response(headers: &Headers, body: Vec<u8>, method: &str) -> Result<ProxyResponse, ResetStream> {
    let status = headers
        .get(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| ResetStream("response without a valid :status".into()))?;
    let mut b = hyper::Response::builder().status(status);
    for (k, v) in headers.iter() {
        if k.starts_with(b":") {
            continue;
        }
        // hyper sets content-length from the body (a filter may have changed it), except for HEAD.
        if k == b"content-length" && method != "HEAD" {
            continue;
        }
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) else { continue };
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::from(body))).map_err(|e| ResetStream(format!("invalid response: {e}")))
}

fn text_response(status: u16, body: &'static str) -> ProxyResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn log_access(ctx: &ListenerCtx, down: &Downstream, status: u16, bytes_sent: usize, info: &RouteInfo) {
    AccessLogEntry {
        start: down.start,
        listener: &ctx.listener.name,
        method: &down.method,
        path: &down.path,
        status,
        flags: if info.flags.is_empty() { "-" } else { info.flags },
        details: &info.details,
        bytes_received: down.bytes_received,
        bytes_sent,
        duration: down.started.elapsed(),
        cluster: &ctx.listener.route_cluster,
        upstream: info.upstream,
        worker: ctx.worker,
    }
    .write();
}

// ---- the filter chain driver ----

/// What a request task waits for from its worker.
enum StreamEvent {
    Upstream(ForwardedRequest),
    Done(Box<Exchange>),
}

/// One listener's [`Worker`] on this thread, and the request tasks waiting on its streams.
struct Chain {
    worker: RefCell<Worker>,
    state: ProxyState,
    waiters: RefCell<HashMap<u32, mpsc::UnboundedSender<StreamEvent>>>,
    /// Signalled after every step, so the tick task re-reads the next tick time.
    timers_changed: Notify,
    upstreams: Rc<HashMap<String, UpstreamCluster>>,
}

impl Chain {
    fn start(
        mut worker: Worker,
        state: ProxyState,
        upstreams: Rc<HashMap<String, UpstreamCluster>>,
    ) -> Rc<Self> {
        let pending = Arc::new(Notify::new());
        let waker = pending.clone();
        worker.set_waker(Arc::new(move || waker.notify_one()));
        let chain = Rc::new(Chain {
            worker: RefCell::new(worker),
            state,
            waiters: RefCell::new(HashMap::new()),
            timers_changed: Notify::new(),
            upstreams,
        });
        spawn_local(chain.clone().tick_loop());
        spawn_local(chain.clone().queue_loop(pending));
        chain
    }

    /// Handles everything the worker produced: http calls are started, upstream requests and finished
    /// exchanges go to their request tasks. Then prints the filters' log lines.
    fn pump(self: &Rc<Self>) {
        loop {
            let events = self.worker.borrow_mut().take_events();
            if events.is_empty() {
                break;
            }
            for event in events {
                match event {
                    WorkerEvent::HttpCall(call) => {
                        let chain = self.clone();
                        spawn_local(async move {
                            let token = call.token;
                            let outcome = chain.perform_call(call).await;
                            chain.worker.borrow_mut().deliver_call(token, outcome);
                            chain.pump();
                        });
                    }
                    WorkerEvent::Upstream { stream, request } => {
                        if let Some(tx) = self.waiters.borrow().get(&stream.id) {
                            let _ = tx.send(StreamEvent::Upstream(request));
                        }
                    }
                    WorkerEvent::Done(exchange) => {
                        if let Some(tx) = self.waiters.borrow_mut().remove(&exchange.stream.id) {
                            let _ = tx.send(StreamEvent::Done(exchange));
                        }
                    }
                }
            }
        }
        print_logs(&self.state);
        self.timers_changed.notify_one();
    }

    async fn perform_call(&self, call: OutboundCall) -> CallOutcome {
        let Some(cluster) = self.upstreams.get(&call.upstream) else {
            return CallOutcome::Failure;
        };
        let Some(addr) = cluster.pick(|k| call.headers.get_bytes(k)) else {
            let (status, body, _, _) = UpstreamFailure::NoHealthyUpstream.local_reply();
            return CallOutcome::response(status, [("content-type", "text/plain")], body);
        };
        let request = match build_upstream_request(&call.headers, &call.body) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "meshwasm-host serve: http call from `{}` to `{}`: {e}",
                    call.plugin, call.upstream
                );
                return CallOutcome::Failure;
            }
        };
        let timeout = if call.timeout.is_zero() { DEFAULT_CALL_TIMEOUT } else { call.timeout };
        match cluster.send(addr, request, timeout).await {
            Ok(r) => {
                let mut headers = Headers::new().with(":status", r.status.to_string());
                for (k, v) in &r.headers {
                    headers.add(k, v);
                }
                CallOutcome::Response { headers, body: r.body.to_vec(), trailers: Headers::new() }
            }
            Err(UpstreamFailure::Timeout) => CallOutcome::Timeout,
            Err(_) => CallOutcome::Failure,
        }
    }

    /// Fires `on_tick` on real time.
    async fn tick_loop(self: Rc<Self>) {
        loop {
            let next = self.worker.borrow().next_tick();
            match next {
                Some(due) => {
                    let now = self.state.elapsed();
                    if due <= now {
                        self.worker.borrow_mut().run_timers();
                        self.pump();
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(due - now) => {}
                        _ = self.timers_changed.notified() => {}
                    }
                }
                None => self.timers_changed.notified().await,
            }
        }
    }

    /// Runs `on_queue_ready` when another worker enqueued onto a queue this worker's VMs registered.
    async fn queue_loop(self: Rc<Self>, pending: Arc<Notify>) {
        loop {
            pending.notified().await;
            self.worker.borrow_mut().run_pending();
            self.pump();
        }
    }
}

/// Cancels the stream if the request task is dropped before it finished (the client went away).
struct StreamGuard {
    chain: Rc<Chain>,
    stream: StreamId,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            if let Ok(mut waiters) = self.chain.waiters.try_borrow_mut() {
                waiters.remove(&self.stream.id);
            }
            // Dropped while the worker is borrowed (a panic unwinding through it): cancel and pump
            // only when the borrow is free, so a second borrow_mut in pump() cannot panic in Drop.
            let cancelled = match self.chain.worker.try_borrow_mut() {
                Ok(mut w) => {
                    w.cancel(self.stream);
                    true
                }
                Err(_) => false,
            };
            if cancelled {
                self.chain.pump();
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_chain(
    ctx: &Rc<ListenerCtx>,
    chain: &Rc<Chain>,
    headers: Headers,
    body: Bytes,
    peer: SocketAddr,
    local: SocketAddr,
    down: Downstream,
) -> Result<ProxyResponse, ResetStream> {
    // Request::new sets the pseudo-headers; :authority is replaced, the rest appended in order.
    let mut request = Request::new(&down.method, &down.path)
        .authority(headers.get(":authority").unwrap_or(""))
        .property("source.address", peer.to_string())
        .property("source.port", property::int64(i64::from(peer.port())))
        .property("destination.address", local.to_string())
        .property("destination.port", property::int64(i64::from(local.port())));
    for (k, v) in headers.iter() {
        if !k.starts_with(b":") {
            request = request.header(&String::from_utf8_lossy(k), v);
        }
    }
    if !body.is_empty() {
        request = request.body(&body);
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = {
        let mut w = chain.worker.borrow_mut();
        let stream = w.start(request);
        chain.waiters.borrow_mut().insert(stream.id, tx);
        stream
    };
    let mut guard = StreamGuard { chain: chain.clone(), stream, finished: false };
    chain.pump();

    let mut info = RouteInfo { flags: "-", ..RouteInfo::default() };
    loop {
        let event = match tokio::time::timeout(ctx.listener.stream_idle_timeout, rx.recv()).await {
            Ok(event) => event,
            Err(_) => {
                // Envoy's stream idle timeout: the stream is reset towards the filters, the client gets 408.
                guard.finished = true;
                chain.waiters.borrow_mut().remove(&stream.id);
                chain.worker.borrow_mut().cancel(stream);
                chain.pump();
                let reply = text_response(408, "stream timeout");
                let info = RouteInfo { flags: "SI", details: "stream_idle_timeout".into(), upstream: None };
                log_access(ctx, &down, 408, reply.body_len(), &info);
                return Ok(reply);
            }
        };
        let Some(event) = event else {
            guard.finished = true;
            return Err(ResetStream("the worker dropped the stream".into()));
        };
        match event {
            StreamEvent::Upstream(forwarded) => {
                let (response, route_info) = route(ctx, &forwarded).await;
                info = route_info;
                let reply = UpstreamReply::from_parts(response.headers, response.body, None);
                {
                    let mut w = chain.worker.borrow_mut();
                    if let Some(addr) = info.upstream {
                        w.set_upstream_address(stream, &addr.to_string());
                    }
                    if let Err(e) = w.deliver_upstream(stream, reply) {
                        eprintln!("meshwasm-host serve: {e:#}");
                    }
                }
                chain.pump();
            }
            StreamEvent::Done(exchange) => {
                guard.finished = true;
                return finish(ctx, &down, *exchange, info);
            }
        }
    }
}

fn finish(
    ctx: &ListenerCtx,
    down: &Downstream,
    exchange: Exchange,
    mut info: RouteInfo,
) -> Result<ProxyResponse, ResetStream> {
    if let Some(e) = &exchange.error {
        eprintln!("meshwasm-host serve: [worker {}] {} {}: {e}", ctx.worker, down.method, down.path);
    }
    if let Some(local) = &exchange.local_reply {
        info.details = if local.details.is_empty() {
            format!("local_reply_by_{}", local.plugin)
        } else {
            local.details.clone()
        };
        info.flags = "-";
    }
    if exchange.state == StreamState::Reset || exchange.status == 0 {
        log_access(
            ctx,
            down,
            0,
            0,
            &RouteInfo { flags: "-", details: "reset_by_filter".into(), upstream: info.upstream },
        );
        return Err(ResetStream(exchange.error.unwrap_or_else(|| "reset by a filter".into())));
    }
    let reply = to_hyper_response(&exchange.response_headers, exchange.response_body, &down.method)?;
    log_access(ctx, down, reply.status().as_u16(), reply.body_len(), &info);
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_uuid_v4s() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
            assert!(groups[2].starts_with('4'), "version nibble: {id}");
            assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "variant: {id}");
        }
    }

    #[test]
    fn upstream_requests_drop_hop_by_hop_headers_and_take_host_from_authority() {
        let headers = Headers::new()
            .with(":authority", "api.test")
            .with(":path", "/v1?q=1")
            .with(":method", "PUT")
            .with(":scheme", "http")
            .with("connection", "keep-alive")
            .with("content-length", "999")
            .with("x-a", "1");
        let r = build_upstream_request(&headers, b"body").unwrap();
        assert_eq!(r.method(), "PUT");
        assert_eq!(r.uri(), "/v1?q=1");
        assert_eq!(r.headers()["host"], "api.test");
        assert_eq!(r.headers()["x-a"], "1");
        assert!(r.headers().get("connection").is_none() && r.headers().get("content-length").is_none());

        let bad = Headers::new().with(":path", "/").with("x-b", "a\nb");
        assert!(build_upstream_request(&bad, b"").unwrap_err().contains("x-b"));
    }

    #[test]
    fn downstream_responses_need_a_status() {
        let ok = Headers::new().with(":status", "201").with("content-length", "1").with("x-c", "v");
        let r = to_hyper_response(&ok, b"abc".to_vec(), "GET").unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().get("content-length").is_none(), "hyper sets it from the body");
        assert_eq!(r.body_len(), 3);
        assert!(to_hyper_response(&Headers::new(), Vec::new(), "GET").is_err());
    }
}
