//! The proxy-wasm ABI 0.2.1 hostcalls (module `env`) with Envoy's return codes and behaviours.
//!
//! Guest memory is only read through bounds-checked slices; a bad pointer gives INVALID_MEMORY_ACCESS.
//! Data returned to the guest is allocated with `proxy_on_memory_allocate` (or `malloc`); an empty value
//! is returned as (0, 0) without an allocation.

use wasmtime::{Caller, Linker};
use wasmtime::{Result, bail, format_err};

use crate::http::{Headers, LocalReply};
use crate::plugin::LogLevel;
use crate::shared::{CallRefused, MetricKind, QueueOwner, Shared};
use crate::vm::{
    BODY_REQ, BODY_RESP, Ctx, Dispatch, MAP_REQ_HEADERS, MAP_REQ_TRAILERS, MAP_RESP_HEADERS,
    MAP_RESP_TRAILERS, StreamAction, StreamRef, VmState, edit_body, sd,
};

// The status codes are the public `crate::status` constants (one definition for guests and tests).
pub(crate) use crate::status::{
    BAD_ARGUMENT, BROKEN_CONNECTION, INVALID_MEMORY_ACCESS, NOT_FOUND, OK, SERIALIZATION_FAILURE,
    UNIMPLEMENTED,
};

type C<'a> = Caller<'a, VmState>;

/// Early-returns a status from a `Result<T, u32>`.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status),
        }
    };
}

pub(crate) fn read(c: &C<'_>, ptr: u32, len: u32) -> Result<Vec<u8>, u32> {
    let mem = c.data().memory.ok_or(INVALID_MEMORY_ACCESS)?;
    mem.data(c)
        .get(ptr as usize..)
        .and_then(|s| s.get(..len as usize))
        .map(|s| s.to_vec())
        .ok_or(INVALID_MEMORY_ACCESS)
}

pub(crate) fn write(c: &mut C<'_>, ptr: u32, bytes: &[u8]) -> Result<(), u32> {
    let mem = c.data().memory.ok_or(INVALID_MEMORY_ACCESS)?;
    let dst = mem
        .data_mut(c)
        .get_mut(ptr as usize..)
        .and_then(|s| s.get_mut(..bytes.len()))
        .ok_or(INVALID_MEMORY_ACCESS)?;
    dst.copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(c: &mut C<'_>, ptr: u32, v: u32) -> Result<(), u32> {
    write(c, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64(c: &mut C<'_>, ptr: u32, v: u64) -> Result<(), u32> {
    write(c, ptr, &v.to_le_bytes())
}

/// Allocates guest memory for `data` and writes (ptr, len) to the return slots.
pub(crate) fn return_bytes(c: &mut C<'_>, data: &[u8], ret_ptr: u32, ret_len: u32) -> Result<u32> {
    if data.is_empty() {
        tri!(write_u32(c, ret_ptr, 0));
        tri!(write_u32(c, ret_len, 0));
        return Ok(OK);
    }
    let alloc = c
        .data()
        .alloc
        .clone()
        .ok_or_else(|| format_err!("module exports neither proxy_on_memory_allocate nor malloc"))?;
    let p = alloc.call(&mut *c, data.len() as u32)?;
    if p == 0 {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    tri!(write(c, p, data));
    tri!(write_u32(c, ret_ptr, p));
    tri!(write_u32(c, ret_len, data.len() as u32));
    Ok(OK)
}

fn guard(c: &C<'_>, name: &str) -> Result<()> {
    if c.data().in_init {
        bail!(
            "hostcall {name} called during _initialize/main: only proxy_log and WASI are available there (as in Envoy)"
        );
    }
    Ok(())
}

fn lower(b: &[u8]) -> Vec<u8> {
    b.to_ascii_lowercase()
}

/// Serializes header pairs in the proxy-wasm map format.
pub(crate) fn serialize_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    if pairs.is_empty() {
        return Vec::new();
    }
    let mut size = 4 + pairs.len() * 8;
    for (k, v) in pairs {
        size += k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses the proxy-wasm map format; None if malformed. Like Envoy, a map over 1 MiB or 1024 pairs is
/// treated as empty.
pub(crate) fn deserialize_pairs(b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if b.len() <= 1 {
        return Some(Vec::new());
    }
    if b.len() > 1 << 20 {
        return Some(Vec::new());
    }
    let n = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    if n > 1024 {
        return Some(Vec::new());
    }
    let mut sizes = Vec::with_capacity(n);
    let mut p = 4;
    for _ in 0..n {
        let k = u32::from_le_bytes(b.get(p..p + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(b.get(p + 4..p + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
        p += 8;
    }
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = b.get(p..p.checked_add(k)?)?.to_vec();
        p += k + 1;
        let val = b.get(p..p.checked_add(v)?)?.to_vec();
        p += v + 1;
        if p > b.len() {
            return None;
        }
        out.push((key, val));
    }
    Some(out)
}

/// The stream and filter of the effective context, if it is a stream context.
fn stream_ctx(c: &C<'_>) -> Option<(StreamRef, usize)> {
    let st = c.data();
    match st.contexts.get(&st.effective)? {
        Ctx::Stream { data, filter, .. } => Some((data.clone(), *filter)),
        Ctx::Root(_) => None,
    }
}

fn map_bit(map: u32) -> u8 {
    match map {
        0 => MAP_REQ_HEADERS,
        1 => MAP_REQ_TRAILERS,
        2 => MAP_RESP_HEADERS,
        3 => MAP_RESP_TRAILERS,
        _ => 0,
    }
}

/// Runs `f` on a header map if it is available to the effective context now. Err(()) = unavailable.
fn with_map<R>(c: &mut C<'_>, map: u32, f: impl FnOnce(&mut Headers) -> R) -> std::result::Result<R, ()> {
    match map {
        0..=3 => {
            let (data, filter) = stream_ctx(c).ok_or(())?;
            let mut d = sd(&data);
            if d.maps.get(filter).copied().unwrap_or(0) & map_bit(map) == 0 {
                return Err(());
            }
            let m = match map {
                0 => &mut d.req_headers,
                1 => d.req_trailers.get_or_insert_with(Headers::new),
                2 => &mut d.resp_headers,
                _ => d.resp_trailers.get_or_insert_with(Headers::new),
            };
            Ok(f(m))
        }
        6 | 7 => {
            let st = c.data_mut();
            let (h, _, t) = st.call_response.as_mut().ok_or(())?;
            Ok(f(if map == 6 { h } else { t }))
        }
        _ => Err(()),
    }
}

const XFP: &[u8] = b"x-forwarded-proto";

/// The body shared by `proxy_add_header_map_value` and `proxy_replace_header_map_value`: read the
/// lower-cased key and the value, apply `op` to the map, note `x-forwarded-proto`, return the status.
fn put_header(
    c: &mut C<'_>,
    map: u32,
    (kp, kl): (u32, u32),
    (vp, vl): (u32, u32),
    op: impl FnOnce(&mut Headers, &[u8], &[u8]),
) -> u32 {
    let key = match read(c, kp, kl) {
        Ok(k) => lower(&k),
        Err(status) => return status,
    };
    let val = match read(c, vp, vl) {
        Ok(v) => v,
        Err(status) => return status,
    };
    match with_map(c, map, |m| op(m, &key, &val)) {
        Ok(()) => {
            track_forwarded_proto(c, map, &key, false);
            OK
        }
        Err(()) => BAD_ARGUMENT,
    }
}

/// Records whether a filter dropped `x-forwarded-proto` from the request headers (map 0; Envoy always
/// has it there, see `ProxyBuilder::forwarded_proto`), so the route lookup at the end of the chain fails
/// as in Envoy.
fn track_forwarded_proto(c: &C<'_>, map: u32, key: &[u8], dropped: bool) {
    if map != 0 || key != XFP {
        return;
    }
    if let Some((data, _)) = stream_ctx(c) {
        sd(&data).no_forwarded_proto = dropped;
    }
}

pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    add_logging(l)?;
    add_headers(l)?;
    add_buffers(l)?;
    add_stream(l)?;
    add_http_calls(l)?;
    add_shared(l)?;
    add_metrics(l)?;
    add_properties(l)?;
    Ok(())
}

fn add_logging(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap("env", "proxy_log", |c: C<'_>, level: u32, ptr: u32, len: u32| -> Result<u32> {
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

fn add_headers(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: u32, rp: u32, rl: u32| -> Result<u32> {
            guard(&c, "proxy_get_header_map_pairs")?;
            if map > 7 {
                return Ok(BAD_ARGUMENT);
            }
            // An unavailable map reads as empty (OK), as in Envoy.
            let bytes = with_map(&mut c, map, |m| serialize_pairs(m.pairs())).unwrap_or_default();
            return_bytes(&mut c, &bytes, rp, rl)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: u32, p: u32, len: u32| -> Result<u32> {
            guard(&c, "proxy_set_header_map_pairs")?;
            let bytes = tri!(read(&c, p, len));
            let Some(pairs) = deserialize_pairs(&bytes) else { return Ok(BAD_ARGUMENT) };
            let pairs: Vec<_> = pairs.into_iter().map(|(k, v)| (lower(&k), v)).collect();
            let has_xfp = pairs.iter().any(|(k, _)| k.as_slice() == XFP);
            match with_map(&mut c, map, |m| std::mem::replace(m.pairs_mut(), pairs)) {
                Ok(old) => {
                    let had_xfp = old.iter().any(|(k, _)| k.as_slice() == XFP);
                    track_forwarded_proto(&c, map, XFP, had_xfp && !has_xfp);
                    Ok(OK)
                }
                Err(()) => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    l.func_wrap("env", "proxy_get_header_map_size", |mut c: C<'_>, map: u32, ret: u32| -> Result<u32> {
        guard(&c, "proxy_get_header_map_size")?;
        // Envoy returns the map's byteSize(): the sum of key and value lengths.
        let Ok(size) =
            with_map(&mut c, map, |m| m.pairs().iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
        else {
            return Ok(BAD_ARGUMENT);
        };
        tri!(write_u32(&mut c, ret, size as u32));
        Ok(OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: u32, kp: u32, kl: u32, rp: u32, rl: u32| -> Result<u32> {
            guard(&c, "proxy_get_header_map_value")?;
            let key = lower(&tri!(read(&c, kp, kl)));
            let Ok(v) =
                with_map(&mut c, map, |m| m.pairs().iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
            else {
                return Ok(BAD_ARGUMENT);
            };
            match v {
                None => Ok(NOT_FOUND),
                Some(v) => return_bytes(&mut c, &v, rp, rl),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> Result<u32> {
            guard(&c, "proxy_add_header_map_value")?;
            Ok(put_header(&mut c, map, (kp, kl), (vp, vl), |m, k, v| m.add_copy(k, v)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> Result<u32> {
            guard(&c, "proxy_replace_header_map_value")?;
            Ok(put_header(&mut c, map, (kp, kl), (vp, vl), |m, k, v| m.set_copy(k, v)))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: u32, kp: u32, kl: u32| -> Result<u32> {
            guard(&c, "proxy_remove_header_map_value")?;
            let key = lower(&tri!(read(&c, kp, kl)));
            match with_map(&mut c, map, |m| {
                let had = m.pairs().iter().any(|(k, _)| *k == key);
                m.remove(&key);
                had
            }) {
                Ok(had) => {
                    if had {
                        track_forwarded_proto(&c, map, &key, true);
                    }
                    Ok(OK)
                }
                Err(()) => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    Ok(())
}

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

fn add_buffers(l: &mut Linker<VmState>) -> Result<()> {
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

fn add_stream(l: &mut Linker<VmState>) -> Result<()> {
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

fn add_http_calls(l: &mut Linker<VmState>) -> Result<()> {
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

fn add_shared(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: u32, kl: u32, rp: u32, rl: u32, rc: u32| -> Result<u32> {
            guard(&c, "proxy_get_shared_data")?;
            let key = String::from_utf8_lossy(&tri!(read(&c, kp, kl))).into_owned();
            let Some(shared) = c.data().shared.clone() else { return Ok(NOT_FOUND) };
            let Some((value, cas)) = shared.process.shared_data(&c.data().vm_id, &key) else {
                return Ok(NOT_FOUND);
            };
            let s = return_bytes(&mut c, &value, rp, rl)?;
            if s != OK {
                return Ok(s);
            }
            tri!(write_u32(&mut c, rc, cas));
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| -> Result<u32> {
            guard(&c, "proxy_set_shared_data")?;
            let key = String::from_utf8_lossy(&tri!(read(&c, kp, kl))).into_owned();
            let value = tri!(read(&c, vp, vl));
            let Some(shared) = c.data().shared.clone() else { return Ok(NOT_FOUND) };
            tri!(shared.process.set_shared(&c.data().vm_id, &key, value, cas));
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: u32, nl: u32, ret: u32| -> Result<u32> {
            guard(&c, "proxy_register_shared_queue")?;
            let name = String::from_utf8_lossy(&tri!(read(&c, np, nl))).into_owned();
            let Some(shared) = c.data().shared.clone() else { return Ok(NOT_FOUND) };
            let st = c.data();
            let owner = QueueOwner {
                worker: st.worker,
                vm: st.vm_index,
                root: st.root_of(st.effective),
                chain: std::sync::Arc::downgrade(&shared),
            };
            let token = shared.process.register_queue(&st.vm_id, &name, owner);
            tri!(write_u32(&mut c, ret, token));
            Ok(OK)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: u32, vl: u32, np: u32, nl: u32, ret: u32| -> Result<u32> {
            guard(&c, "proxy_resolve_shared_queue")?;
            let vm_id = String::from_utf8_lossy(&tri!(read(&c, vp, vl))).into_owned();
            let name = String::from_utf8_lossy(&tri!(read(&c, np, nl))).into_owned();
            let Some(shared) = c.data().shared.clone() else { return Ok(NOT_FOUND) };
            let Some(t) = shared.process.resolve_queue(&vm_id, &name) else { return Ok(NOT_FOUND) };
            tri!(write_u32(&mut c, ret, t));
            Ok(OK)
        },
    )?;
    l.func_wrap("env", "proxy_enqueue_shared_queue", |c: C<'_>, id: u32, p: u32, len: u32| -> Result<u32> {
        guard(&c, "proxy_enqueue_shared_queue")?;
        let item = tri!(read(&c, p, len));
        let Some(shared) = c.data().shared.clone() else { return Ok(NOT_FOUND) };
        tri!(shared.process.enqueue(id, item));
        Ok(OK)
    })?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: u32, rp: u32, rl: u32| -> Result<u32> {
            guard(&c, "proxy_dequeue_shared_queue")?;
            let Some(shared) = c.data().shared.clone() else { return Ok(NOT_FOUND) };
            let item = tri!(shared.process.dequeue(id));
            return_bytes(&mut c, &item, rp, rl)
        },
    )?;
    Ok(())
}

fn add_metrics(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, ty: u32, np: u32, nl: u32, ret: u32| -> Result<u32> {
            guard(&c, "proxy_define_metric")?;
            let Some(kind) = MetricKind::from_u32(ty) else { return Ok(BAD_ARGUMENT) };
            let name = String::from_utf8_lossy(&tri!(read(&c, np, nl))).into_owned();
            let Some(shared) = c.data().shared.clone() else { return Ok(NOT_FOUND) };
            shared.process.define_metric(&name, kind);
            let id = c.data_mut().metric_id(name, ty);
            tri!(write_u32(&mut c, ret, id));
            Ok(OK)
        },
    )?;
    /// The process and the metric name behind a VM's metric id.
    fn metric(c: &C<'_>, id: u32) -> std::result::Result<(std::sync::Arc<Shared>, String), u32> {
        let name = c.data().metric_ids.get(&id).ok_or(NOT_FOUND)?.clone();
        let shared = c.data().shared.clone().ok_or(NOT_FOUND)?;
        Ok((shared, name))
    }
    l.func_wrap("env", "proxy_increment_metric", |c: C<'_>, id: u32, offset: i64| -> Result<u32> {
        guard(&c, "proxy_increment_metric")?;
        // Envoy decides by the type bits of the id first: histograms (and unknown types) are BAD_ARGUMENT.
        if id & 3 >= 2 {
            return Ok(BAD_ARGUMENT);
        }
        let (shared, name) = tri!(metric(&c, id));
        tri!(shared.process.increment_metric(&name, offset));
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_record_metric", |c: C<'_>, id: u32, value: u64| -> Result<u32> {
        guard(&c, "proxy_record_metric")?;
        let (shared, name) = tri!(metric(&c, id));
        tri!(shared.process.record_metric(&name, value));
        Ok(OK)
    })?;
    l.func_wrap("env", "proxy_get_metric", |mut c: C<'_>, id: u32, ret: u32| -> Result<u32> {
        guard(&c, "proxy_get_metric")?;
        if id & 3 >= 2 {
            return Ok(BAD_ARGUMENT);
        }
        let (shared, name) = tri!(metric(&c, id));
        let value = tri!(shared.process.metric_value(&name));
        tri!(write_u64(&mut c, ret, value));
        Ok(OK)
    })?;
    Ok(())
}

fn add_properties(l: &mut Linker<VmState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: u32, pl: u32, rp: u32, rl: u32| -> Result<u32> {
            guard(&c, "proxy_get_property")?;
            let path = tri!(read(&c, pp, pl));
            // Envoy: no path segment leaves the whole attribute root, which does not serialize.
            if path.is_empty() {
                return Ok(SERIALIZATION_FAILURE);
            }
            let Some(v) = crate::properties::lookup(c.data(), &path) else { return Ok(NOT_FOUND) };
            return_bytes(&mut c, &v, rp, rl)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |c: C<'_>, pp: u32, pl: u32, vp: u32, vl: u32| -> Result<u32> {
            guard(&c, "proxy_set_property")?;
            let path = tri!(read(&c, pp, pl));
            let value = tri!(read(&c, vp, vl));
            let key = crate::properties::dotted(&path);
            // Envoy stores filter state `wasm.<path>` in the stream info: without a stream, NOT_FOUND.
            match stream_ctx(&c) {
                Some((data, _)) => sd(&data).properties_set.push((key, value)),
                None => return Ok(NOT_FOUND),
            }
            Ok(OK)
        },
    )?;
    Ok(())
}

/// The `get_status` value after a failed http call (Envoy: BrokenConnection, "reset").
pub(crate) fn failure_status() -> (u32, Vec<u8>) {
    (BROKEN_CONNECTION, b"reset".to_vec())
}
