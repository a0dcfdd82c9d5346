//! The downstream side: accepting connections under the listener's cap, reading a request (body
//! size and time limits), converting between hyper and the filters' header maps, and the access log.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshwasm_host::{ForwardedRequest, Headers};
use tokio::sync::watch;
use tokio::task::spawn_local;

use crate::access_log::AccessLogEntry;
use crate::config::Listener;
use crate::upstream::{HOP_BY_HOP, UpstreamCluster};

use super::DRAIN_TIME;
use super::chain::{Chain, run_chain};
use super::route::route;

/// Requests with a larger body get 413 (Envoy buffers at most its connection buffer limit per filter;
/// this proxy buffers whole requests, so it allows more).
pub(super) const MAX_REQUEST_BODY: usize = 64 << 20;

/// A listener's cap on open downstream connections, shared by its workers. Past the cap a new
/// connection is accepted and closed at once, without a response (as Envoy's listener connection
/// limit does), rather than left waiting in the kernel's backlog.
pub(super) struct ConnectionLimit {
    pub(super) max: usize,
    pub(super) open: AtomicUsize,
    pub(super) refused: AtomicU64,
}

impl ConnectionLimit {
    pub(super) fn new(max: usize) -> Self {
        Self { max, open: AtomicUsize::new(0), refused: AtomicU64::new(0) }
    }

    /// A slot for one more connection, released when dropped; at the cap, how many were refused so far.
    pub(super) fn acquire(self: &Arc<Self>) -> Result<ConnectionSlot, u64> {
        match self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
        {
            Ok(_) => Ok(ConnectionSlot(self.clone())),
            Err(_) => Err(self.refused.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }
}

/// One open connection's place under its listener's [`ConnectionLimit`].
pub(super) struct ConnectionSlot(pub(super) Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one worker thread knows about one listener.
pub(super) struct ListenerCtx {
    pub(super) listener: Listener,
    pub(super) upstreams: Rc<HashMap<String, UpstreamCluster>>,
    pub(super) chain: Option<Rc<Chain>>,
    pub(super) worker: usize,
    pub(super) limit: Arc<ConnectionLimit>,
    /// Failed TLS handshakes on this worker (for the log's powers of two).
    pub(super) tls_failures: Cell<u64>,
}

pub(super) async fn accept_loop(
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
        let shutdown = shutdown.clone();
        active.set(active.get() + 1);
        spawn_local(async move {
            match ctx.listener.tls.clone() {
                None => serve_connection(ctx, stream, peer, local, Rc::new(Vec::new()), shutdown).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                    // The handshake holds a connection slot: bound it like the request head.
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let props = Rc::new(tls.connection_properties(stream.get_ref().1));
                            serve_connection(ctx, stream, peer, local, props, shutdown).await
                        }
                        Ok(Err(e)) => ctx.tls_failure(peer, &e.to_string()),
                        Err(_) => ctx.tls_failure(peer, "handshake timeout"),
                    }
                }
            }
            drop(slot);
            active.set(active.get() - 1);
        });
    }
}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl ListenerCtx {
    /// A failed downstream handshake (no client certificate, an untrusted one, plaintext): the
    /// connection is closed, and a line is logged at the 1st, 2nd, 4th, 8th, … failure on this worker.
    fn tls_failure(&self, peer: SocketAddr, reason: &str) {
        let n = self.tls_failures.get() + 1;
        self.tls_failures.set(n);
        if n.is_power_of_two() {
            eprintln!(
                "meshwasm-host serve: listener `{}`: TLS handshake with {peer} failed: {reason} \
                 ({n} failed so far on worker {})",
                self.listener.name, self.worker
            );
        }
    }
}

/// Serves HTTP/1.1 on one accepted (and, on a TLS listener, handshaken) connection until it closes or
/// the proxy drains. `conn_props` are the connection's properties for every stream on it.
async fn serve_connection<S>(
    ctx: Rc<ListenerCtx>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    conn_props: Rc<Vec<(String, Vec<u8>)>>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        let conn_props = conn_props.clone();
        async move { handle(ctx, peer, local, &conn_props, req).await }
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
}

/// An error that makes hyper drop the connection without a response (a reset stream).
#[derive(Debug)]
pub(super) struct ResetStream(pub(super) String);

impl std::fmt::Display for ResetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream reset: {}", self.0)
    }
}

impl std::error::Error for ResetStream {}

pub(super) type ProxyResponse = hyper::Response<Full<Bytes>>;

/// The parts of a downstream request the access log needs.
pub(super) struct Downstream {
    pub(super) start: SystemTime,
    pub(super) started: Instant,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) bytes_received: usize,
}

/// What the route did, for the access log.
#[derive(Default)]
pub(super) struct RouteInfo {
    pub(super) upstream: Option<SocketAddr>,
    pub(super) flags: &'static str,
    pub(super) details: String,
}

pub(super) async fn handle(
    ctx: Rc<ListenerCtx>,
    peer: SocketAddr,
    local: SocketAddr,
    conn_props: &[(String, Vec<u8>)],
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
    let headers = request_headers(&parts, &down.path, ctx.listener.tls.is_some());

    match &ctx.chain {
        None => {
            let (response, info) =
                route(&ctx, &ForwardedRequest { headers, body: body.to_vec(), ..Default::default() }).await;
            let reply = to_hyper_response(&response.headers, response.body, &down.method)?;
            log_access(&ctx, &down, reply.status().as_u16(), reply.body_len(), &info);
            Ok(reply)
        }
        Some(chain) => run_chain(&ctx, chain, headers, body, peer, local, conn_props, down).await,
    }
}

/// Downstream headers as Envoy's HTTP/1.1 codec and connection manager present them to filters:
/// pseudo-headers first, `host` as `:authority`, hop-by-hop headers removed, `x-forwarded-proto` and
/// `x-request-id` added when absent; the scheme is `https` on a TLS listener.
pub(super) fn request_headers(parts: &hyper::http::request::Parts, path: &str, tls: bool) -> Headers {
    let scheme = if tls { "https" } else { "http" };
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
        .with(":scheme", scheme);
    for (k, v) in &parts.headers {
        if k == hyper::header::HOST || HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        h.add(k.as_str(), v.as_bytes());
    }
    if !h.contains("x-forwarded-proto") {
        h.add("x-forwarded-proto", scheme);
    }
    if !h.contains("x-request-id") {
        h.add("x-request-id", request_id());
    }
    h
}

/// A random UUID v4 (Envoy's x-request-id format), from the std hasher's per-process random keys.
pub(super) fn request_id() -> String {
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

pub(super) trait BodyLen {
    fn body_len(&self) -> usize;
}

impl BodyLen for ProxyResponse {
    fn body_len(&self) -> usize {
        use hyper::body::Body;
        self.body().size_hint().exact().unwrap_or(0) as usize
    }
}

/// The downstream response from a header map with `:status`.
pub(super) fn to_hyper_response(
    headers: &Headers,
    body: Vec<u8>,
    method: &str,
) -> Result<ProxyResponse, ResetStream> {
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

pub(super) fn text_response(status: u16, body: &'static str) -> ProxyResponse {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

pub(super) fn log_access(
    ctx: &ListenerCtx,
    down: &Downstream,
    status: u16,
    bytes_sent: usize,
    info: &RouteInfo,
) {
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
    fn downstream_responses_need_a_status() {
        let ok = Headers::new().with(":status", "201").with("content-length", "1").with("x-c", "v");
        let r = to_hyper_response(&ok, b"abc".to_vec(), "GET").unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().get("content-length").is_none(), "hyper sets it from the body");
        assert_eq!(r.body_len(), 3);
        assert!(to_hyper_response(&Headers::new(), Vec::new(), "GET").is_err());
    }
}
