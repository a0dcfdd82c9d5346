//! Property hostcalls (`crate::properties` resolves paths).

use wasmtime::{Linker, Result};

use crate::vm::{VmState, sd};

use super::{C, NOT_FOUND, OK, SERIALIZATION_FAILURE, guard, read, return_bytes, stream_ctx};

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
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
