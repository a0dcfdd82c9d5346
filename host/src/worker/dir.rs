//! The two directions of a stream. What differs between the request and the response path (which end of
//! the chain comes first, which header maps and body buffer the filters see, which callbacks and pause
//! phases apply, where the chain ends) is answered here, so the chain state machine is written once.

use crate::http::{Callback, Headers, Phase};
use crate::vm::{
    BODY_REQ, BODY_RESP, MAP_REQ_HEADERS, MAP_REQ_TRAILERS, MAP_RESP_HEADERS, MAP_RESP_TRAILERS, StreamData,
    sd,
};

use super::StreamRt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Dir {
    Req,
    Resp,
}

/// An event travelling through the chain in one direction.
#[derive(Debug)]
pub(super) enum Ev {
    Headers(bool),
    Data(Vec<u8>, bool),
    Trailers,
}

/// Where one filter stands in one direction of a stream.
#[derive(Default)]
pub(super) struct DirState {
    pub(super) stopped_all: bool,
    pub(super) headers_eos: bool,
    pub(super) held: Vec<Ev>,
    pub(super) buffering: bool,
    pub(super) body_eos: bool,
    pub(super) phase: Option<Phase>,
}

impl Dir {
    /// The filter at position `pos` of this direction in a chain of `n`: requests go through the chain
    /// in order, responses in reverse (the mapping is its own inverse).
    pub(super) fn filter_at(self, n: usize, pos: usize) -> usize {
        match self {
            Dir::Req => pos,
            Dir::Resp => n - 1 - pos,
        }
    }

    /// Header map bit a filter may use while it handles this direction's headers.
    pub(super) fn headers_bit(self) -> u8 {
        match self {
            Dir::Req => MAP_REQ_HEADERS,
            Dir::Resp => MAP_RESP_HEADERS,
        }
    }

    /// Trailer map bit a filter may use while it handles this direction's trailers.
    pub(super) fn trailers_bit(self) -> u8 {
        match self {
            Dir::Req => MAP_REQ_TRAILERS,
            Dir::Resp => MAP_RESP_TRAILERS,
        }
    }

    /// Body buffer bit a filter may use while it handles this direction's body.
    pub(super) fn body_bit(self) -> u8 {
        match self {
            Dir::Req => BODY_REQ,
            Dir::Resp => BODY_RESP,
        }
    }

    pub(super) fn headers_callback(self) -> Callback {
        match self {
            Dir::Req => Callback::RequestHeaders,
            Dir::Resp => Callback::ResponseHeaders,
        }
    }

    pub(super) fn body_callback(self) -> Callback {
        match self {
            Dir::Req => Callback::RequestBody,
            Dir::Resp => Callback::ResponseBody,
        }
    }

    pub(super) fn trailers_callback(self) -> Callback {
        match self {
            Dir::Req => Callback::RequestTrailers,
            Dir::Resp => Callback::ResponseTrailers,
        }
    }

    pub(super) fn headers_phase(self) -> Phase {
        match self {
            Dir::Req => Phase::RequestHeaders,
            Dir::Resp => Phase::ResponseHeaders,
        }
    }

    pub(super) fn body_phase(self) -> Phase {
        match self {
            Dir::Req => Phase::RequestBody,
            Dir::Resp => Phase::ResponseBody,
        }
    }

    pub(super) fn trailers_phase(self) -> Phase {
        match self {
            Dir::Req => Phase::RequestTrailers,
            Dir::Resp => Phase::ResponseTrailers,
        }
    }

    /// This direction's headers as the filters see them.
    pub(super) fn headers(self, d: &StreamData) -> &Headers {
        match self {
            Dir::Req => &d.req_headers,
            Dir::Resp => &d.resp_headers,
        }
    }

    /// This direction's trailers as the filters see them.
    pub(super) fn trailers(self, d: &StreamData) -> Option<&Headers> {
        match self {
            Dir::Req => d.req_trailers.as_ref(),
            Dir::Resp => d.resp_trailers.as_ref(),
        }
    }

    /// The per-filter body buffers of this direction.
    pub(super) fn bufs(self, d: &mut StreamData) -> &mut Vec<Vec<u8>> {
        match self {
            Dir::Req => &mut d.req_bufs,
            Dir::Resp => &mut d.resp_bufs,
        }
    }

    /// Filter `f`'s body buffer of this direction, emptied and no longer readable by the filter (it
    /// moves on down the chain).
    pub(super) fn take_buffer(self, d: &mut StreamData, f: usize) -> Vec<u8> {
        d.bodies[f] &= !self.body_bit();
        std::mem::take(&mut self.bufs(d)[f])
    }

    /// The per-filter states of this direction.
    pub(super) fn states(self, rt: &StreamRt) -> &[DirState] {
        match self {
            Dir::Req => &rt.req,
            Dir::Resp => &rt.resp,
        }
    }

    pub(super) fn states_mut(self, rt: &mut StreamRt) -> &mut [DirState] {
        match self {
            Dir::Req => &mut rt.req,
            Dir::Resp => &mut rt.resp,
        }
    }

    /// Whether this direction still runs: a local reply or failure aborts the request path, while the
    /// response path runs until the stream finishes.
    pub(super) fn is_active(self, rt: &StreamRt) -> bool {
        !rt.finished
            && match self {
                Dir::Req => !rt.req_aborted,
                Dir::Resp => true,
            }
    }

    /// Records `ev` as it leaves the last filter of this direction: into the request that goes upstream,
    /// or the response that goes downstream. True when that message is complete.
    pub(super) fn arrive(self, rt: &mut StreamRt, ev: Ev) -> bool {
        let d = sd(&rt.data);
        match (self, ev) {
            (Dir::Req, Ev::Headers(eos)) => {
                rt.forwarded.headers = d.req_headers.clone();
                eos
            }
            (Dir::Req, Ev::Data(b, eos)) => {
                rt.forwarded.body.extend_from_slice(&b);
                eos
            }
            (Dir::Req, Ev::Trailers) => {
                rt.forwarded.trailers = d.req_trailers.clone();
                true
            }
            (Dir::Resp, Ev::Headers(eos)) => {
                rt.down_headers = Some(d.resp_headers.clone());
                eos
            }
            (Dir::Resp, Ev::Data(b, eos)) => {
                rt.down_body.extend_from_slice(&b);
                eos
            }
            (Dir::Resp, Ev::Trailers) => {
                rt.down_trailers = d.resp_trailers.clone();
                true
            }
        }
    }

    /// Before a buffer-overflow local reply: a response overflow drops what was gathered for downstream,
    /// which the reply replaces (nothing went downstream yet in this model); a request overflow leaves
    /// the (not yet started) response alone.
    pub(super) fn discard_partial_response(self, rt: &mut StreamRt) {
        match self {
            Dir::Req => {}
            Dir::Resp => {
                rt.down_headers = None;
                rt.down_body.clear();
            }
        }
    }

    /// Whether a filter that has no context in the stream (it never saw the request, because an earlier
    /// filter replied locally) or whose VM failed is skipped rather than given a context. Envoy only
    /// creates contexts on the request path, and skips failed filters on the response path
    /// (`failure_local_reply_sent_`).
    pub(super) fn skips_absent_filters(self) -> bool {
        self == Dir::Resp
    }

    /// What the problem is called in a buffer-overflow local reply: the request is 413, a response the
    /// proxy cannot hold is 500 (Envoy's buffer filter and `sendLocalReply` details).
    pub(super) fn overflow_reply(self) -> (u32, &'static str, &'static str) {
        match self {
            Dir::Req => (413, "request_payload_too_large", "Payload Too Large"),
            Dir::Resp => (500, "response_payload_too_large", "Internal Server Error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dir;

    #[test]
    fn responses_walk_the_chain_in_reverse_and_the_mapping_is_its_own_inverse() {
        assert_eq!((0..3).map(|p| Dir::Req.filter_at(3, p)).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!((0..3).map(|p| Dir::Resp.filter_at(3, p)).collect::<Vec<_>>(), [2, 1, 0]);
        for p in 0..3 {
            assert_eq!(Dir::Resp.filter_at(3, Dir::Resp.filter_at(3, p)), p);
        }
    }
}
