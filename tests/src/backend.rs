//! Real backend HTTP/1.1 servers on loopback for tests: each has an instance name, replies with
//! `x-backend-instance: <name>` and a JSON echo of the request it received, counts requests, and can
//! be stopped and restarted on the same port (a backend dying and coming back).
//!
//! Per instance the status, latency and extra response headers are configurable; per request the
//! headers `x-backend-status: <code>` and `x-backend-delay-ms: <ms>` override them.
//!
//! ```no_run
//! use meshwasm_tests::backend::Backend;
//! let b = Backend::start("blue").unwrap();
//! let resp = meshwasm_tests::process::http_get(b.addr(), "/hello").unwrap();
//! assert_eq!(resp.header("x-backend-instance"), Some("blue"));
//! assert_eq!(b.request_count(), 1);
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// Header carrying the instance name in every reply.
pub const INSTANCE_HEADER: &str = "x-backend-instance";

/// What a backend received, as echoed in its JSON body and kept in [`Backend::requests`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoedRequest {
    pub instance: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers in the order received, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as (lossy) UTF-8.
    pub body: String,
}

impl EchoedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// All values of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }
}

struct Shared {
    name: String,
    status: AtomicU16,
    delay_ms: AtomicU64,
    count: AtomicU64,
    extra_headers: Mutex<Vec<(String, String)>>,
    body_override: Mutex<Option<Vec<u8>>>,
    requests: Mutex<Vec<EchoedRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Running {
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// One backend instance. Stopped on drop.
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    running: Mutex<Option<Running>>,
}

impl Backend {
    /// Starts instance `name` on a free loopback port.
    pub fn start(name: &str) -> Result<Self> {
        Self::start_on(name, "127.0.0.1:0".parse()?)
    }

    /// Starts instance `name` on `addr` (port 0 = any free port).
    pub fn start_on(name: &str, addr: SocketAddr) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("backend-{name}"))
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
            extra_headers: Mutex::new(Vec::new()),
            body_override: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        });
        let mut backend = Self { addr, shared, rt, running: Mutex::new(None) };
        backend.addr = backend.listen(addr)?;
        Ok(backend)
    }

    /// Starts `n` instances named `<prefix>-0`, `<prefix>-1`, …
    pub fn start_many(prefix: &str, n: usize) -> Result<Vec<Self>> {
        (0..n).map(|i| Self::start(&format!("{prefix}-{i}"))).collect()
    }

    fn listen(&self, addr: SocketAddr) -> Result<SocketAddr> {
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("backend {}: cannot bind {addr}", self.shared.name))?;
        let local = listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let shared = self.shared.clone();
        let task = self.rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let shared = shared.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            // Dropping the listener and aborting connections: clients see the backend as gone.
            drop(listener);
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
        *lock(&self.running) = Some(Running { shutdown: tx, task });
        Ok(local)
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops accepting and drops open connections (idempotent). The port is released.
    pub fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(r) = running {
            let _ = r.shutdown.send(());
            let _ = self.rt.block_on(r.task);
        }
    }

    /// Starts again on the same port after [`Backend::stop`].
    pub fn restart(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let mut last = None;
        // The port was ours a moment ago; retry briefly in case the kernel still holds it.
        for _ in 0..50 {
            match self.listen(self.addr) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("restart failed")))
    }

    /// True while serving.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Sets the status of every later reply.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Sets a delay before every later reply.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Adds headers to every later reply.
    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        *lock(&self.shared.extra_headers) =
            headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    }

    /// Replaces the JSON echo by a fixed body (None restores the echo).
    pub fn set_body(&self, body: Option<&[u8]>) {
        *lock(&self.shared.body_override) = body.map(<[u8]>::to_vec);
    }

    /// Requests served since start (not reset by restart).
    pub fn request_count(&self) -> u64 {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// The requests received, oldest first.
    pub fn requests(&self) -> Vec<EchoedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The most recent request received.
    pub fn last_request(&self) -> Option<EchoedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Forgets the recorded requests and resets the counter.
    pub fn reset(&self) {
        lock(&self.shared.requests).clear();
        self.shared.count.store(0, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let echo = EchoedRequest {
        instance: shared.name.clone(),
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".to_owned()),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let status = echo
        .header("x-backend-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| shared.status.load(Ordering::SeqCst));
    let delay = echo
        .header("x-backend-delay-ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| shared.delay_ms.load(Ordering::SeqCst));
    shared.count.fetch_add(1, Ordering::SeqCst);
    lock(&shared.requests).push(echo.clone());
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let body =
        lock(&shared.body_override).clone().unwrap_or_else(|| serde_json::to_vec(&echo).unwrap_or_default());
    let mut resp = Response::builder()
        .status(status)
        .header(INSTANCE_HEADER, shared.name.as_str())
        .header("content-type", "application/json");
    for (k, v) in lock(&shared.extra_headers).iter() {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let resp = resp.body(Full::new(Bytes::from(body))).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"backend: bad response configuration")));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    Ok(resp)
}
