//! `proxy_http_call` (the rules are [`crate::shared::Shared::admit_http_call`]); gRPC is not
//! implemented.

use wasmtime::{Linker, Result};

use crate::http::Headers;
use crate::plugin::LogLevel;
use crate::shared::CallRefused;
use crate::vm::{Dispatch, VmState};

use super::{BAD_ARGUMENT, C, OK, UNIMPLEMENTED, deserialize_pairs, guard, lower, read, write_u32};

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout: u32,
         rt: u32|
         -> Result<u32> {
            guard(&c, "proxy_http_call")?;
            let upstream = String::from_utf8_lossy(&tri!(read(&c, up, ul))).into_owned();
            let hdrs = tri!(read(&c, hp, hl));
            let body = tri!(read(&c, bp, bl));
            let trl = tri!(read(&c, tp, tl));
            let Some(h) = deserialize_pairs(&hdrs) else { return Ok(BAD_ARGUMENT) };
            let Some(t) = deserialize_pairs(&trl) else { return Ok(BAD_ARGUMENT) };
            let mut headers = Headers::from_raw(h.into_iter().map(|(k, v)| (lower(&k), v)).collect());
            if !body.is_empty() {
                // Envoy sets content-length on a call with a body.
                headers.set("content-length", body.len().to_string());
            }
            let trailers = Headers::from_raw(t.into_iter().map(|(k, v)| (lower(&k), v)).collect());
            let Some(shared) = c.data().shared.clone() else { return Ok(BAD_ARGUMENT) };
            match shared.admit_http_call(&upstream, &headers, timeout) {
                Ok(()) => {}
                Err(CallRefused::UnknownUpstream) => {
                    c.data().log(
                        LogLevel::Debug,
                        format!("proxy_http_call: unknown upstream (cluster) `{upstream}`: BAD_ARGUMENT"),
                    );
                    return Ok(BAD_ARGUMENT);
                }
                Err(_) => return Ok(BAD_ARGUMENT),
            }
            let token = shared.next_call_token();
            tri!(write_u32(&mut c, rt, token));
            let st = c.data_mut();
            let ctx = st.effective;
            st.dispatched.push(Dispatch {
                token,
                ctx,
                upstream,
                headers,
                body,
                trailers,
                timeout_ms: timeout,
            });
            Ok(OK)
        },
    )?;
    type R = Result<u32>;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |c: C<'_>,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32|
         -> R {
            guard(&c, "proxy_grpc_call")?;
            Ok(UNIMPLEMENTED)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
            guard(&c, "proxy_grpc_stream")?;
            Ok(UNIMPLEMENTED)
        },
    )?;
    l.func_wrap("env", "proxy_grpc_send", |c: C<'_>, _: u32, _: u32, _: u32, _: u32| -> R {
        guard(&c, "proxy_grpc_send")?;
        Ok(UNIMPLEMENTED)
    })?;
    l.func_wrap("env", "proxy_grpc_cancel", |c: C<'_>, _: u32| -> R {
        guard(&c, "proxy_grpc_cancel")?;
        Ok(UNIMPLEMENTED)
    })?;
    l.func_wrap("env", "proxy_grpc_close", |c: C<'_>, _: u32| -> R {
        guard(&c, "proxy_grpc_close")?;
        Ok(UNIMPLEMENTED)
    })?;
    Ok(())
}
