//! Buffer hostcalls: bodies, the http-call response body, the VM and plugin configuration.

use wasmtime::{Linker, Result};

use crate::vm::{BODY_REQ, BODY_RESP, StreamRef, VmState, edit_body, sd};

use super::{
    BAD_ARGUMENT, C, NOT_FOUND, OK, UNIMPLEMENTED, guard, read, return_bytes, stream_ctx, write_u32,
};

/// Which buffer a buffer type names for the effective context. Err = NOT_FOUND (unavailable).
enum Buf {
    Empty,
    Body(StreamRef, usize, bool),
    CallBody,
    VmConfig,
    PluginConfig,
}

/// The buffer a type names for the effective context. Like Envoy's `getBuffer`: bodies, network data,
/// gRPC messages and call data always exist (empty when there is nothing: [`Buf::Empty`]); the http-call
/// body and the plugin configuration only exist in their callbacks (else NOT_FOUND); types > 8 are
/// BAD_ARGUMENT.
fn buffer_ref(c: &C<'_>, ty: u32) -> std::result::Result<Buf, u32> {
    match ty {
        0 | 1 => {
            let Some((data, filter)) = stream_ctx(c) else { return Ok(Buf::Empty) };
            let bit = if ty == 0 { BODY_REQ } else { BODY_RESP };
            if sd(&data).bodies.get(filter).copied().unwrap_or(0) & bit == 0 {
                return Ok(Buf::Empty);
            }
            Ok(Buf::Body(data, filter, ty == 0))
        }
        2 | 3 | 5 | 8 => Ok(Buf::Empty),
        4 if c.data().call_response.is_some() => Ok(Buf::CallBody),
        6 => Ok(Buf::VmConfig),
        7 if c.data().plugin_config.is_some() => Ok(Buf::PluginConfig),
        4 | 7 => Err(NOT_FOUND),
        _ => Err(BAD_ARGUMENT),
    }
}

fn buffer_slice(c: &C<'_>, b: &Buf, start: u32, max: u32) -> (Vec<u8>, usize) {
    let pick = |all: &[u8]| {
        let s = (start as usize).min(all.len());
        let e = s.saturating_add(max as usize).min(all.len());
        (all[s..e].to_vec(), all.len())
    };
    match b {
        Buf::Body(data, filter, req) => {
            let d = sd(data);
            let bufs = if *req { &d.req_bufs } else { &d.resp_bufs };
            pick(bufs.get(*filter).map(|v| v.as_slice()).unwrap_or(&[]))
        }
        Buf::Empty => (Vec::new(), 0),
        Buf::CallBody => pick(c.data().call_response.as_ref().map(|r| r.1.as_slice()).unwrap_or(&[])),
        Buf::VmConfig => pick(&c.data().vm_config),
        Buf::PluginConfig => pick(c.data().plugin_config.as_deref().unwrap_or(&[])),
    }
}

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, ty: u32, start: u32, max: u32, rp: u32, rl: u32| -> Result<u32> {
            guard(&c, "proxy_get_buffer_bytes")?;
            if start.checked_add(max).is_none() {
                return Ok(BAD_ARGUMENT);
            }
            let b = tri!(buffer_ref(&c, ty));
            let (bytes, _) = buffer_slice(&c, &b, start, max);
            return_bytes(&mut c, &bytes, rp, rl)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, ty: u32, rl: u32, rf: u32| -> Result<u32> {
            guard(&c, "proxy_get_buffer_status")?;
            let b = tri!(buffer_ref(&c, ty));
            let (_, len) = buffer_slice(&c, &b, 0, 0);
            tri!(write_u32(&mut c, rl, len as u32));
            tri!(write_u32(&mut c, rf, 0));
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |c: C<'_>, ty: u32, start: u32, size: u32, p: u32, len: u32| -> Result<u32> {
            guard(&c, "proxy_set_buffer_bytes")?;
            let b = tri!(buffer_ref(&c, ty));
            let Buf::Body(data, filter, req) = b else {
                return Ok(if matches!(b, Buf::Empty) { NOT_FOUND } else { UNIMPLEMENTED });
            };
            let bytes = tri!(read(&c, p, len));
            let mut d = sd(&data);
            let bufs = if req { &mut d.req_bufs } else { &mut d.resp_bufs };
            let Some(buf) = bufs.get_mut(filter) else { return Ok(NOT_FOUND) };
            tri!(edit_body(buf, start as usize, size as usize, bytes));
            Ok(OK)
        },
    )?;
    Ok(())
}
