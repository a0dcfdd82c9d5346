//! Hostcalls of the calling context: logging, the clock, tick periods, the effective context,
//! `proxy_done` and foreign functions.

use wasmtime::{Linker, Result};

use crate::plugin::LogLevel;
use crate::vm::{VmState, sd};

use super::{BAD_ARGUMENT, C, NOT_FOUND, OK, guard, read, return_bytes, stream_ctx, write_u32, write_u64};

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap("env", "proxy_log", |c: C<'_>, level: u32, ptr: u32, len: u32| -> Result<u32> {
        c.data().count_hostcall("proxy_log");
        let Some(level) = LogLevel::from_u32(level) else { return Ok(BAD_ARGUMENT) };
        let msg = tri!(read(&c, ptr, len));
        c.data().log(level, String::from_utf8_lossy(&msg).into_owned());
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, ret: u32| -> Result<u32> {
        guard(&c, "proxy_get_log_level")?;
        let level = c.data().shared.as_ref().map(|s| s.log_level as u32).unwrap_or(2);
        tri!(write_u32(&mut c, ret, level));
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: C<'_>, ret: u32| -> Result<u32> {
        guard(&c, "proxy_get_current_time_nanoseconds")?;
        let now = c.data().shared.as_ref().map(|s| s.clock.unix_ns()).unwrap_or(0);
        tri!(write_u64(&mut c, ret, now));
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: C<'_>, ms: u32| -> Result<u32> {
        guard(&c, "proxy_set_tick_period_milliseconds")?;
        let st = c.data_mut();
        let root = st.root_of(st.effective);
        st.tick_changes.push((root, ms));
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_set_effective_context", |mut c: C<'_>, ctx: u32| -> Result<u32> {
        guard(&c, "proxy_set_effective_context")?;
        let st = c.data_mut();
        if !st.contexts.contains_key(&ctx) {
            return Ok(BAD_ARGUMENT);
        }
        st.effective = ctx;
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_done", |c: C<'_>| -> Result<u32> {
        guard(&c, "proxy_done")?;
        Ok(OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: u32, nl: u32, ap: u32, al: u32, rp: u32, rl: u32| -> Result<u32> {
            guard(&c, "proxy_call_foreign_function")?;
            let name = tri!(read(&c, np, nl));
            let args = tri!(read(&c, ap, al));
            let name = String::from_utf8_lossy(&name).into_owned();
            if name == crate::foreign::SET_ENVOY_FILTER_STATE {
                // Writes the calling stream's filter state (Envoy: the request's stream info).
                let (key, value) = match crate::foreign::set_envoy_filter_state(&args) {
                    Ok(kv) => kv,
                    Err(status) => return Ok(status),
                };
                let Some((data, _)) = stream_ctx(&c) else { return Ok(NOT_FOUND) };
                sd(&data).filter_state.push((key, value));
                return Ok(OK);
            }
            let f = c.data().shared.as_ref().and_then(|s| s.foreign.get(&name).cloned());
            let Some(f) = f else { return Ok(NOT_FOUND) };
            match f(&args) {
                // Envoy skips the allocation when the guest passes no result pointer.
                Ok(out) if rp == 0 => {
                    if rl != 0 {
                        tri!(write_u32(&mut c, rl, out.len() as u32));
                    }
                    Ok(OK)
                }
                Ok(out) => return_bytes(&mut c, &out, rp, rl),
                Err(status) => Ok(status),
            }
        },
    )?;
    Ok(())
}
