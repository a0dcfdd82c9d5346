//! Header-map hostcalls: the stream's request/response headers and trailers (while the filter may
//! use them) and an http-call response's headers and trailers.

use wasmtime::{Linker, Result};

use crate::http::Headers;
use crate::vm::{MAP_REQ_HEADERS, MAP_REQ_TRAILERS, MAP_RESP_HEADERS, MAP_RESP_TRAILERS, VmState, sd};

use super::{
    BAD_ARGUMENT, C, NOT_FOUND, OK, deserialize_pairs, guard, lower, read, return_bytes, serialize_pairs,
    stream_ctx, write_u32,
};

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

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
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
