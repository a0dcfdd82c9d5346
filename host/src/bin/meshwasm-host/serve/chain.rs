//! The filter chain driver: one listener's [`Worker`] on this thread, fed requests, http-call answers,
//! upstream responses, ticks and queue wake-ups, and the request tasks waiting on its streams.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meshwasm_host::{
    CallOutcome, Exchange, ForwardedRequest, Headers, OutboundCall, ProxyState, Request, StreamId,
    StreamState, UpstreamReply, Worker, WorkerEvent, property,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::spawn_local;

use crate::upstream::{UpstreamCluster, UpstreamFailure};

use super::downstream::{
    BodyLen, Downstream, ListenerCtx, ProxyResponse, ResetStream, RouteInfo, log_access, text_response,
    to_hyper_response,
};
use super::print_logs;
use super::route::{build_upstream_request, route};

/// http calls without a timeout get this one (Envoy's route default).
pub(super) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What a request task waits for from its worker.
pub(super) enum StreamEvent {
    Upstream(ForwardedRequest),
    Done(Box<Exchange>),
}

/// One listener's [`Worker`] on this thread, and the request tasks waiting on its streams.
pub(super) struct Chain {
    pub(super) worker: RefCell<Worker>,
    pub(super) state: ProxyState,
    pub(super) waiters: RefCell<HashMap<u32, mpsc::UnboundedSender<StreamEvent>>>,
    /// Signalled after every step, so the tick task re-reads the next tick time.
    pub(super) timers_changed: Notify,
    pub(super) upstreams: Rc<HashMap<String, UpstreamCluster>>,
}

impl Chain {
    pub(super) fn start(
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
pub(super) struct StreamGuard {
    pub(super) chain: Rc<Chain>,
    pub(super) stream: StreamId,
    pub(super) finished: bool,
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
pub(super) async fn run_chain(
    ctx: &Rc<ListenerCtx>,
    chain: &Rc<Chain>,
    headers: Headers,
    body: Bytes,
    peer: SocketAddr,
    local: SocketAddr,
    conn_props: &[(String, Vec<u8>)],
    down: Downstream,
) -> Result<ProxyResponse, ResetStream> {
    // Request::new sets the pseudo-headers; :authority is replaced, the rest appended in order.
    let mut request = Request::new(&down.method, &down.path)
        .authority(headers.get(":authority").unwrap_or(""))
        .scheme(headers.get(":scheme").unwrap_or("http"))
        .property("source.address", peer.to_string())
        .property("source.port", property::int64(i64::from(peer.port())))
        .property("destination.address", local.to_string())
        .property("destination.port", property::int64(i64::from(local.port())));
    // TLS connection properties (connection.mtls, peer SANs, ...), the same for every stream on it.
    for (path, value) in conn_props {
        request = request.property(path, value);
    }
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

pub(super) fn finish(
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
