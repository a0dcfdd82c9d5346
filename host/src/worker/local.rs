//! Local replies: a filter's `send_local_response`, buffer overflows, failed VMs (Envoy's `failStream`)
//! and the router's missing route, as Envoy's `sendLocalReply` answers them.

use crate::http::{Headers, LocalReply};
use crate::vm::sd;

use super::{Dir, DirState, Ev, Worker};

impl Worker {
    pub(super) fn send_local(&mut self, id: u32, reply: LocalReply, _f: usize) {
        let Some(rt) = self.streams.get_mut(&id) else { return };
        if rt.local_reply.is_some() || rt.down_headers.is_some() {
            // Envoy hangs the request when a filter sends a second local response (or one after the
            // response started); the host resets the stream and says why.
            rt.error = Some(format!(
                "plugin `{}` called send_local_response({}) after a response was already started: Envoy hangs such a request; the host resets it",
                reply.plugin, reply.status
            ));
            rt.reset = true;
            self.finish(id);
            return;
        }
        rt.req_aborted = true;
        rt.waiting_upstream = false;
        if rt.resp_started {
            // Envoy's sendLocalReply once the upstream response headers exist but nothing went downstream
            // yet (a response filter replies): sendDirectLocalReply writes the reply straight to the
            // codec, so no filter sees it, and the stream ends.
            let headers = local_reply_headers(&reply);
            {
                let mut d = sd(&rt.data);
                d.response_code = u16::try_from(reply.status).ok();
                d.resp_headers = headers.clone();
                d.resp_trailers = None;
                d.response_size = reply.body.len() as u64;
            }
            rt.down_body = reply.body.clone();
            rt.down_headers = Some(headers);
            rt.down_trailers = None;
            rt.local_reply = Some(reply);
            self.finish(id);
            return;
        }
        let headers = local_reply_headers(&reply);
        let body = reply.body.clone();
        rt.local_reply = Some(reply);
        for s in rt.resp.iter_mut() {
            *s = DirState::default();
        }
        for s in rt.req.iter_mut() {
            *s = DirState::default();
        }
        {
            let mut d = sd(&rt.data);
            for m in d.maps.iter_mut() {
                *m = 0;
            }
            for b in d.bodies.iter_mut() {
                *b = 0;
            }
            for b in d.resp_bufs.iter_mut() {
                b.clear();
            }
            d.response_code = headers.get(":status").and_then(|s| s.parse().ok());
            d.resp_headers = headers;
            d.resp_trailers = None;
            d.response_size = body.len() as u64;
        }
        let empty = body.is_empty();
        self.deliver(id, Dir::Resp, 0, Ev::Headers(empty));
        if !empty {
            self.deliver(id, Dir::Resp, 0, Ev::Data(body, true));
        }
    }

    pub(super) fn buffer_overflow(&mut self, id: u32, dir: Dir, f: usize) {
        let plugin = self.chain[f].plugin.display_name().to_string();
        let (status, details, body) = dir.overflow_reply();
        if let Some(rt) = self.streams.get(&id) {
            sd(&rt.data).local_replies += 1;
        }
        let reply = LocalReply {
            plugin,
            status,
            details: details.into(),
            headers: Headers::new(),
            body: body.as_bytes().to_vec(),
            grpc_status: -1,
        };
        if let Some(rt) = self.streams.get_mut(&id) {
            dir.discard_partial_response(rt);
        }
        self.send_local(id, reply, f);
    }

    /// Envoy's HCM adds x-forwarded-proto before the filters; a filter that dropped it leaves the router
    /// without a route (VirtualHostImpl::getRouteFromEntries: no x-forwarded-proto, no route): 404 with
    /// details route_not_found, through the response callbacks.
    pub(super) fn route_not_found(&mut self, id: u32) {
        if let Some(rt) = self.streams.get(&id) {
            sd(&rt.data).local_replies += 1;
        }
        let reply = LocalReply {
            plugin: "envoy.filters.http.router".into(),
            status: 404,
            details: "route_not_found".into(),
            headers: Headers::new(),
            body: Vec::new(),
            grpc_status: -1,
        };
        self.send_local(id, reply, self.chain.len().saturating_sub(1));
    }

    /// The stream gets Envoy's failed-VM reply: 503 with details `wasm_fail_stream`.
    pub(super) fn fail_stream(&mut self, id: u32, f: usize, e: &str) {
        let plugin = self.chain[f].plugin.display_name().to_string();
        let module = self.chain[f].plugin.module.name().to_string();
        let Some(rt) = self.streams.get_mut(&id) else { return };
        if rt.finished {
            return;
        }
        if rt.error.is_none() {
            rt.error = Some(format!("plugin `{plugin}` (module {module}): {e}"));
        }
        rt.req_aborted = true;
        rt.waiting_upstream = false;
        if rt.down_headers.is_none() {
            // Like Envoy's failStream: a 503 local reply that still passes the response callbacks of the
            // filters whose VMs are healthy (it replaces any local reply sent before).
            rt.local_reply = None;
            let reply = LocalReply {
                plugin,
                status: 503,
                details: "wasm_fail_stream".into(),
                headers: Headers::new(),
                body: Vec::new(),
                grpc_status: 14,
            };
            self.send_local(id, reply, f);
        } else {
            rt.reset = true;
            self.finish(id);
        }
    }
}

/// A local reply's response headers in Envoy's order (`Utility::sendLocalReply`): `:status`, the filter's
/// headers, then with a body `content-length` (in place if the filter set one) and `content-type:
/// text/plain` unless the filter set a content type.
fn local_reply_headers(reply: &LocalReply) -> Headers {
    let mut headers = Headers::new().with(":status", reply.status.to_string());
    for (k, v) in reply.headers.iter() {
        headers.add(k, v);
    }
    if !reply.body.is_empty() {
        headers.set("content-length", reply.body.len().to_string());
        if !headers.contains("content-type") {
            headers.add("content-type", "text/plain");
        }
    }
    headers
}
