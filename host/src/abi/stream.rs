//! Stream hostcalls: continue, close, local replies, `get_status`.

use wasmtime::{Linker, Result};

use crate::http::{Headers, LocalReply};
use crate::vm::{StreamAction, VmState, sd};

use super::{
    BAD_ARGUMENT, C, OK, UNIMPLEMENTED, deserialize_pairs, guard, lower, read, return_bytes, stream_ctx,
    write_u32,
};

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    fn push(c: &mut C<'_>, action: impl FnOnce(usize) -> StreamAction) -> u32 {
        let Some((data, filter)) = stream_ctx(c) else { return OK };
        sd(&data).actions.push(action(filter));
        c.data_mut().touched.push(data);
        OK
    }
    l.func_wrap("env", "proxy_continue_stream", |mut c: C<'_>, ty: u32| -> Result<u32> {
        guard(&c, "proxy_continue_stream")?;
        Ok(match ty {
            0 => push(&mut c, StreamAction::ContinueRequest),
            1 => push(&mut c, StreamAction::ContinueResponse),
            // Envoy: downstream continues a network filter's reading (a no-op for HTTP); upstream is
            // not implemented.
            2 => OK,
            3 => UNIMPLEMENTED,
            _ => BAD_ARGUMENT,
        })
    })?;
    // ABI 0.2.0 names.
    l.func_wrap("env", "proxy_continue_request", |mut c: C<'_>| -> Result<u32> {
        guard(&c, "proxy_continue_request")?;
        Ok(push(&mut c, StreamAction::ContinueRequest))
    })?;
    l.func_wrap("env", "proxy_continue_response", |mut c: C<'_>| -> Result<u32> {
        guard(&c, "proxy_continue_response")?;
        Ok(push(&mut c, StreamAction::ContinueResponse))
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: C<'_>, ty: u32| -> Result<u32> {
        guard(&c, "proxy_close_stream")?;
        Ok(match ty {
            0 | 1 => push(&mut c, |_| StreamAction::Close),
            // Envoy closes the connection of a network filter; nothing to do for HTTP.
            2 | 3 => OK,
            _ => BAD_ARGUMENT,
        })
    })?;
    l.func_wrap("env", "proxy_get_status", |mut c: C<'_>, rc: u32, rp: u32, rl: u32| -> Result<u32> {
        guard(&c, "proxy_get_status")?;
        let (code, msg) = c.data().status.clone();
        tri!(write_u32(&mut c, rc, code));
        return_bytes(&mut c, &msg, rp, rl)
    })?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: u32,
         dp: u32,
         dl: u32,
         bp: u32,
         bl: u32,
         hp: u32,
         hl: u32,
         grpc: i32|
         -> Result<u32> {
            guard(&c, "proxy_send_local_response")?;
            let details = tri!(read(&c, dp, dl));
            let body = tri!(read(&c, bp, bl));
            let hdrs = tri!(read(&c, hp, hl));
            let Some(pairs) = deserialize_pairs(&hdrs) else { return Ok(BAD_ARGUMENT) };
            // Envoy: without a stream (a root context) the call does nothing and returns OK.
            let Some((data, filter)) = stream_ctx(&c) else { return Ok(OK) };
            let plugin = c.data().plugin_name();
            let reply = LocalReply {
                plugin,
                status: code,
                // Envoy replaces whitespace in response code details with `_`.
                details: String::from_utf8_lossy(&details)
                    .chars()
                    .map(|ch| if ch.is_whitespace() { '_' } else { ch })
                    .collect(),
                headers: Headers::from_raw(pairs.into_iter().map(|(k, v)| (lower(&k), v)).collect()),
                body,
                grpc_status: grpc,
            };
            {
                let mut d = sd(&data);
                d.local_replies += 1;
                d.actions.push(StreamAction::LocalReply(reply, filter));
            }
            c.data_mut().touched.push(data);
            Ok(OK)
        },
    )?;
    Ok(())
}
