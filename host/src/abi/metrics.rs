//! Metric hostcalls (the rules are methods of [`crate::shared::Process`]; the ids are the VM's).

use wasmtime::{Linker, Result};

use crate::shared::{MetricKind, Shared};
use crate::vm::VmState;

use super::{BAD_ARGUMENT, C, NOT_FOUND, OK, guard, read, write_u32, write_u64};

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
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
