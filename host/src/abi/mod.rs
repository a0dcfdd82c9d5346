//! The proxy-wasm ABI 0.2.1 hostcalls (module `env`) with Envoy's return codes and behaviours.
//!
//! Guest memory is only read through bounds-checked slices; a bad pointer gives INVALID_MEMORY_ACCESS.
//! Data returned to the guest is allocated with `proxy_on_memory_allocate` (or `malloc`); an empty value
//! is returned as (0, 0) without an allocation.
//!
//! Each area (context, headers, buffers, stream, http calls, shared data, metrics, properties) registers
//! its hostcalls with its own `add_to_linker`. The hostcalls only marshal: the rules over process state
//! (CAS, queues, metric kinds, http-call checks) are methods in `crate::shared`.

use wasmtime::{Caller, Linker};
use wasmtime::{Result, bail, format_err};

use crate::vm::{Ctx, StreamRef, VmState};

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

mod buffers;
mod context;
mod headers;
mod http_calls;
mod metrics;
mod properties;
mod shared_data;
mod stream;

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
    c.data().count_callback("proxy_on_memory_allocate");
    let p = alloc.call(&mut *c, data.len() as u32)?;
    if p == 0 {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    tri!(write(c, p, data));
    tri!(write_u32(c, ret_ptr, p));
    tri!(write_u32(c, ret_len, data.len() as u32));
    Ok(OK)
}

/// Counts the hostcall and refuses it during `_initialize`/`main`.
fn guard(c: &C<'_>, name: &'static str) -> Result<()> {
    c.data().count_hostcall(name);
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

pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    context::add_to_linker(l)?;
    headers::add_to_linker(l)?;
    buffers::add_to_linker(l)?;
    stream::add_to_linker(l)?;
    http_calls::add_to_linker(l)?;
    shared_data::add_to_linker(l)?;
    metrics::add_to_linker(l)?;
    properties::add_to_linker(l)?;
    Ok(())
}

/// The `get_status` value after a failed http call (Envoy: BrokenConnection, "reset").
pub(crate) fn failure_status() -> (u32, Vec<u8>) {
    (BROKEN_CONNECTION, b"reset".to_vec())
}
