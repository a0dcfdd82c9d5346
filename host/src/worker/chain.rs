//! The chain state machine: events travel through the filters in one direction, pause, resume, reach
//! the end of the chain (upstream or downstream), and the stream finishes.

use crate::http::{Action, Callback, CallbackRecord, Phase, StreamId};
use crate::vm::{MAP_REQ_HEADERS, MAP_REQ_TRAILERS, MAP_RESP_HEADERS, MAP_RESP_TRAILERS, StreamAction, sd};

use super::{Dir, DirState, Ev, Worker, WorkerEvent};

impl Worker {
    /// Delivers body chunks (non-empty) into the chain. Over HTTP/1.1 (Envoy's codec) every chunk has
    /// eos=false and the message end is a separate empty chunk with eos=true; otherwise the last chunk
    /// carries eos. With trailers, eos is never set here.
    pub(super) fn deliver_body(&mut self, id: u32, dir: Dir, chunks: Vec<Vec<u8>>, has_trailers: bool) {
        if chunks.is_empty() {
            return;
        }
        let split = self.shared.split_body_end;
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            self.deliver(id, dir, 0, Ev::Data(c, i == last && !has_trailers && !split));
        }
        if split && !has_trailers {
            self.deliver(id, dir, 0, Ev::Data(Vec::new(), true));
        }
    }

    fn dir_state(&mut self, id: u32, dir: Dir, f: usize) -> Option<&mut DirState> {
        let rt = self.streams.get_mut(&id)?;
        dir.states_mut(rt).get_mut(f)
    }

    pub(super) fn active(&self, id: u32, dir: Dir) -> bool {
        self.streams.get(&id).is_some_and(|rt| dir.is_active(rt))
    }

    /// Whether a filter's callback left a local reply queued (then the event goes no further).
    fn local_reply_queued(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|rt| sd(&rt.data).actions.iter().any(|a| matches!(a, StreamAction::LocalReply(..))))
    }

    /// Delivers `ev` to the filter at position `pos` of direction `dir` (and on down the chain while the
    /// filters continue).
    pub(super) fn deliver(&mut self, id: u32, dir: Dir, pos: usize, ev: Ev) {
        if !self.active(id, dir) {
            return;
        }
        let n = self.chain.len();
        if pos >= n {
            self.sink(id, dir, ev);
            return;
        }
        let f = dir.filter_at(n, pos);
        let has_ctx = self.streams.get(&id).is_some_and(|rt| rt.ctx[f].is_some());
        let vm_failed = self.vms[self.chain[f].vm].failed.is_some();
        if dir.skips_absent_filters() && (!has_ctx || vm_failed) {
            // This filter never saw the request (an earlier filter replied locally), or its VM failed
            // (Envoy skips it: failure_local_reply_sent_).
            return self.deliver(id, dir, pos + 1, ev);
        }
        if !has_ctx && !self.create_ctx(id, f) {
            return;
        }
        let Some(st) = self.dir_state(id, dir, f) else { return };
        if st.stopped_all {
            st.held.push(ev);
            return;
        }
        match ev {
            Ev::Headers(eos) => self.deliver_headers(id, dir, f, pos, eos),
            Ev::Data(bytes, eos) => self.deliver_data(id, dir, f, pos, bytes, eos),
            Ev::Trailers => self.deliver_trailers(id, dir, f),
        }
    }

    fn deliver_headers(&mut self, id: u32, dir: Dir, f: usize, pos: usize, eos: bool) {
        let data = self.streams[&id].data.clone();
        let nh = {
            let mut d = sd(&data);
            d.maps[f] |= dir.headers_bit();
            dir.headers(&d).len()
        };
        if let Some(st) = self.dir_state(id, dir, f) {
            st.headers_eos = eos;
        }
        let cb = dir.headers_callback();
        let Some(action) = self.call_filter(id, f, cb, nh as u32, Some(u32::from(eos))) else { return };
        if action == Action::Continue && !self.local_reply_queued(id) {
            sd(&data).maps[f] &= !dir.headers_bit();
            self.process_actions(id);
            self.deliver(id, dir, pos + 1, Ev::Headers(eos));
        } else {
            if let Some(st) = self.dir_state(id, dir, f) {
                st.stopped_all = true;
                st.phase = Some(dir.headers_phase());
            }
            self.process_actions(id);
        }
    }

    fn deliver_data(&mut self, id: u32, dir: Dir, f: usize, pos: usize, bytes: Vec<u8>, eos: bool) {
        let data = self.streams[&id].data.clone();
        let len = {
            let mut d = sd(&data);
            let buf = &mut dir.bufs(&mut d)[f];
            buf.extend_from_slice(&bytes);
            let len = buf.len();
            d.bodies[f] |= dir.body_bit();
            len
        };
        if let Some(st) = self.dir_state(id, dir, f) {
            st.body_eos = eos;
        }
        let cb = dir.body_callback();
        let Some(action) = self.call_filter(id, f, cb, len as u32, Some(u32::from(eos))) else { return };
        let local = self.local_reply_queued(id);
        if action == Action::Continue && !local {
            let buf = dir.take_buffer(&mut sd(&data), f);
            if let Some(st) = self.dir_state(id, dir, f) {
                st.buffering = false;
                st.phase = None;
            }
            self.process_actions(id);
            self.deliver(id, dir, pos + 1, Ev::Data(buf, eos));
        } else {
            if let Some(st) = self.dir_state(id, dir, f) {
                st.buffering = true;
                if eos || local {
                    st.phase = Some(dir.body_phase());
                }
            }
            self.process_actions(id);
            if len > self.shared.buffer_limit && self.active(id, dir) {
                self.buffer_overflow(id, dir, f);
            }
        }
    }

    fn deliver_trailers(&mut self, id: u32, dir: Dir, f: usize) {
        let data = self.streams[&id].data.clone();
        let nt = {
            let mut d = sd(&data);
            d.maps[f] |= dir.trailers_bit();
            dir.trailers(&d).map_or(0, |t| t.len())
        };
        let cb = dir.trailers_callback();
        let Some(action) = self.call_filter(id, f, cb, nt as u32, None) else { return };
        if action == Action::Continue && !self.local_reply_queued(id) {
            sd(&data).maps[f] &= !dir.trailers_bit();
            self.process_actions(id);
            self.pass_buffer_then_trailers(id, dir, f);
        } else {
            if let Some(st) = self.dir_state(id, dir, f) {
                st.stopped_all = true;
                st.phase = Some(dir.trailers_phase());
            }
            self.process_actions(id);
        }
    }

    fn pass_buffer_then_trailers(&mut self, id: u32, dir: Dir, f: usize) {
        let pos = dir.filter_at(self.chain.len(), f);
        let Some(rt) = self.streams.get(&id) else { return };
        let data = rt.data.clone();
        let buf = dir.take_buffer(&mut sd(&data), f);
        if let Some(st) = self.dir_state(id, dir, f) {
            st.buffering = false;
        }
        if !buf.is_empty() {
            self.deliver(id, dir, pos + 1, Ev::Data(buf, false));
        }
        self.deliver(id, dir, pos + 1, Ev::Trailers);
    }

    /// Continues iteration at filter `f` after a pause (continue_stream).
    fn resume(&mut self, id: u32, dir: Dir, f: usize) {
        if !self.active(id, dir) {
            return;
        }
        let pos = dir.filter_at(self.chain.len(), f);
        let Some(st) = self.dir_state(id, dir, f) else { return };
        if st.stopped_all {
            st.stopped_all = false;
            let phase = st.phase.take();
            let held = std::mem::take(&mut st.held);
            let eos = st.headers_eos;
            let data = self.streams[&id].data.clone();
            match phase {
                Some(Phase::RequestHeaders) | Some(Phase::ResponseHeaders) => {
                    sd(&data).maps[f] &= !(MAP_REQ_HEADERS | MAP_RESP_HEADERS);
                    self.deliver(id, dir, pos + 1, Ev::Headers(eos));
                }
                Some(Phase::RequestTrailers) | Some(Phase::ResponseTrailers) => {
                    sd(&data).maps[f] &= !(MAP_REQ_TRAILERS | MAP_RESP_TRAILERS);
                    self.pass_buffer_then_trailers(id, dir, f);
                }
                _ => {}
            }
            // Data that arrived while stopped is delivered to this filter now, in one callback.
            let mut body = Vec::new();
            let mut body_eos = false;
            let mut any_data = false;
            let mut trailers = false;
            for ev in held {
                match ev {
                    Ev::Data(b, e) => {
                        any_data = true;
                        body.extend_from_slice(&b);
                        body_eos |= e;
                    }
                    Ev::Trailers => trailers = true,
                    Ev::Headers(_) => {}
                }
            }
            if any_data {
                self.deliver(id, dir, pos, Ev::Data(body, body_eos));
            }
            if trailers {
                self.deliver(id, dir, pos, Ev::Trailers);
            }
        } else if st.buffering {
            st.buffering = false;
            st.phase = None;
            let eos = st.body_eos;
            let data = self.streams[&id].data.clone();
            let buf = dir.take_buffer(&mut sd(&data), f);
            self.deliver(id, dir, pos + 1, Ev::Data(buf, eos));
        }
    }

    /// The end of the chain: the request as it leaves the filters goes upstream, the response downstream.
    fn sink(&mut self, id: u32, dir: Dir, ev: Ev) {
        if matches!((dir, &ev), (Dir::Req, Ev::Headers(_)))
            && self.streams.get(&id).is_some_and(|rt| sd(&rt.data).no_forwarded_proto)
        {
            return self.route_not_found(id);
        }
        let Some(rt) = self.streams.get_mut(&id) else { return };
        if !dir.arrive(rt, ev) {
            return;
        }
        match dir {
            Dir::Req => {
                rt.req_done = true;
                rt.waiting_upstream = true;
                rt.forwarded.filter_state = sd(&rt.data).filter_state.clone();
                let request = rt.forwarded.clone();
                self.events
                    .push(WorkerEvent::Upstream { stream: StreamId { worker: self.index, id }, request });
            }
            Dir::Resp => self.finish(id),
        }
    }

    pub(super) fn process_actions(&mut self, id: u32) {
        loop {
            let Some(rt) = self.streams.get(&id) else { return };
            if rt.finished {
                sd(&rt.data).actions.clear();
                return;
            }
            let action = {
                let mut d = sd(&rt.data);
                if d.actions.is_empty() {
                    return;
                }
                d.actions.remove(0)
            };
            match action {
                StreamAction::ContinueRequest(f) => self.resume(id, Dir::Req, f),
                StreamAction::ContinueResponse(f) => self.resume(id, Dir::Resp, f),
                StreamAction::Close => {
                    if let Some(rt) = self.streams.get_mut(&id) {
                        rt.reset = true;
                    }
                    self.finish(id);
                }
                StreamAction::LocalReply(reply, f) => self.send_local(id, reply, f),
            }
        }
    }

    /// Ends a stream: on_log for every filter with a context (chain order), then per filter on_done and
    /// on_delete.
    pub(super) fn finish(&mut self, id: u32) {
        let Some(rt) = self.streams.get_mut(&id) else { return };
        if rt.finished {
            return;
        }
        rt.finished = true;
        let data = rt.data.clone();
        // Envoy's access-log phase creates the context of a filter that never saw the stream (e.g. after
        // an earlier filter's local reply), so every filter gets on_log, on_done and on_delete.
        for f in 0..self.chain.len() {
            let has = self.streams.get(&id).is_some_and(|rt| rt.ctx[f].is_some());
            if !has && self.vms[self.chain[f].vm].failed.is_none() {
                self.create_log_ctx(id, f);
            }
        }
        let Some(rt) = self.streams.get(&id) else { return };
        let ctxs = rt.ctx.clone();
        {
            let mut d = sd(&data);
            d.actions.clear();
            for m in d.maps.iter_mut() {
                *m = MAP_REQ_HEADERS | MAP_REQ_TRAILERS | MAP_RESP_HEADERS | MAP_RESP_TRAILERS;
            }
        }
        let mut records = Vec::new();
        // Envoy logs (access-log phase) for every filter, then destroys the filters one by one
        // (onDone, then onDelete for each).
        let n = ctxs.len();
        let mut order: Vec<(Callback, u8, usize)> = (0..n).map(|f| (Callback::Log, 0, f)).collect();
        for f in 0..n {
            order.push((Callback::Done, 1, f));
            order.push((Callback::Delete, 2, f));
        }
        {
            for (cb, export, f) in order {
                let Some(ctx) = ctxs[f] else { continue };
                let vmi = self.chain[f].vm;
                let vm = &mut self.vms[vmi];
                if vm.failed.is_some() {
                    continue;
                }
                let r = match export {
                    0 => vm.exports.on_log.clone().map(|func| vm.call(func, ctx, "proxy_on_log", ctx)),
                    1 => vm
                        .exports
                        .on_done
                        .clone()
                        .map(|func| vm.call(func, ctx, "proxy_on_done", ctx).map(|_| ())),
                    _ => vm.exports.on_delete.clone().map(|func| vm.call(func, ctx, "proxy_on_delete", ctx)),
                };
                // Envoy skips each of these when the module does not export it (on_done then counts
                // as true): record only what ran.
                let Some(r) = r else { continue };
                records.push(CallbackRecord {
                    filter: f,
                    plugin: self.chain[f].plugin.display_name().to_string(),
                    callback: cb,
                    action: None,
                });
                if let Err(e) = r {
                    let plugin = self.chain[f].plugin.display_name().to_string();
                    let module = self.chain[f].plugin.module.name().to_string();
                    if let Some(rt) = self.streams.get_mut(&id)
                        && rt.error.is_none()
                    {
                        rt.error = Some(format!("plugin `{plugin}` (module {module}): {e}"));
                    }
                    self.vm_failed(vmi, ctx, &e);
                }
                self.collect(vmi);
                let _ = self.vms[vmi].take_touched();
            }
        }
        for (f, ctx) in ctxs.iter().enumerate() {
            if let Some(ctx) = ctx {
                self.vms[self.chain[f].vm].store.data_mut().contexts.remove(ctx);
            }
        }
        sd(&data).actions.clear();
        let Some(mut rt) = self.streams.remove(&id) else { return };
        rt.callbacks.extend(records);
        let ex = self.exchange_of(id, &rt);
        self.events.push(WorkerEvent::Done(Box::new(ex)));
    }
}
