//! Shared-data and shared-queue hostcalls (the rules are methods of [`crate::shared::Process`]).

use wasmtime::{Linker, Result};

use crate::shared::QueueOwner;
use crate::vm::VmState;

use super::{C, NOT_FOUND, OK, guard, read, return_bytes, write_u32};

pub(super) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
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
