//! WASI preview 1 as Envoy provides it, under `wasi_snapshot_preview1` and `wasi_unstable`: stdout and
//! stderr go to the log (info and error), environment only from the VM config, clocks and random (the OS
//! CSPRNG unless a test asks for a seeded generator), and nothing else (no files, no sockets, no preopens).

use wasmtime::Result;
use wasmtime::{Caller, Linker};

use crate::abi::{read, write, write_u32, write_u64};
use crate::host::RandomSource;
use crate::plugin::LogLevel;
use crate::vm::VmState;

type C<'a> = Caller<'a, VmState>;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const IO: i32 = 29;
const NOENT: i32 = 44;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

/// The WASI functions this host provides (both module names).
pub const WASI_FUNCTIONS: &[&str] = &[
    "fd_write",
    "fd_pwrite",
    "fd_read",
    "fd_pread",
    "random_get",
    "clock_time_get",
    "clock_res_get",
    "environ_get",
    "environ_sizes_get",
    "args_get",
    "args_sizes_get",
    "fd_fdstat_get",
    "poll_oneoff",
    "sched_yield",
    "fd_advise",
    "fd_allocate",
    "fd_datasync",
    "fd_sync",
    "fd_tell",
    "fd_seek",
    "fd_close",
    "proc_exit",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "path_open",
    "path_filestat_get",
    "path_create_directory",
    "path_unlink_file",
    "path_remove_directory",
    "path_readlink",
    "path_rename",
    "path_symlink",
    "path_link",
    "path_filestat_set_times",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(_) => return Ok(FAULT),
        }
    };
}

/// At most this many iovecs per write (Linux `IOV_MAX`); more is `EINVAL`.
const MAX_IOVECS: u32 = 1024;
/// At most this many bytes are logged per write; the rest is dropped and reported as not written
/// (a short write), so a guest cannot make the host copy all of its memory many times over.
const MAX_WRITE_BYTES: usize = 1 << 20;

fn gather(c: &C<'_>, iovs: u32, n: u32) -> std::result::Result<Vec<u8>, u32> {
    if n > MAX_IOVECS {
        return Err(INVAL as u32);
    }
    let mut out = Vec::new();
    for i in 0..n {
        let at = i.checked_mul(8).and_then(|o| iovs.checked_add(o)).ok_or(FAULT as u32)?;
        let iov = read(c, at, 8).map_err(|_| FAULT as u32)?;
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let room = MAX_WRITE_BYTES - out.len();
        let take = (len as usize).min(room) as u32;
        out.extend_from_slice(&read(c, ptr, take).map_err(|_| FAULT as u32)?);
        if out.len() == MAX_WRITE_BYTES {
            break;
        }
    }
    Ok(out)
}

fn write_out(c: &mut C<'_>, fd: u32, iovs: u32, n: u32, ret: u32) -> Result<i32> {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Ok(BADF),
    };
    let bytes = match gather(c, iovs, n) {
        Ok(b) => b,
        Err(errno) => return Ok(errno as i32),
    };
    let mut s = String::from_utf8_lossy(&bytes).into_owned();
    if s.ends_with('\n') {
        s.pop();
    }
    c.data().log(level, s);
    tri!(write_u32(c, ret, bytes.len() as u32));
    Ok(SUCCESS)
}

/// One VM's WASI random generator, built from [`HostOptions::random`](crate::HostOptions::random).
pub(crate) enum Rng {
    Os,
    /// xorshift64* state (never 0).
    Seeded(u64),
}

impl Rng {
    pub(crate) fn new(source: RandomSource, worker: usize, vm_index: usize) -> Self {
        match source {
            RandomSource::Os => Rng::Os,
            RandomSource::Seeded(seed) => {
                // Distinct streams per worker and VM, so two VMs of one seeded host still differ.
                let mixed = seed
                    ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (vm_index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                Rng::Seeded(mixed | 1)
            }
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> std::result::Result<(), getrandom::Error> {
        match self {
            Rng::Os => getrandom::fill(buf),
            Rng::Seeded(state) => {
                for chunk in buf.chunks_mut(8) {
                    let mut x = *state;
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    *state = x;
                    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                    chunk.copy_from_slice(&r[..chunk.len()]);
                }
                Ok(())
            }
        }
    }
}

fn env_block(st: &VmState) -> Vec<Vec<u8>> {
    st.env.iter().map(|(k, v)| format!("{k}={v}\0").into_bytes()).collect()
}

pub(crate) fn add_to_linker(l: &mut Linker<VmState>) -> Result<()> {
    for m in ["wasi_snapshot_preview1", "wasi_unstable"] {
        add_module(l, m)?;
    }
    Ok(())
}

fn add_module(l: &mut Linker<VmState>, m: &str) -> Result<()> {
    type R = Result<i32>;
    l.func_wrap(m, "fd_write", |mut c: C<'_>, fd: u32, iovs: u32, n: u32, ret: u32| -> R {
        c.data().count_hostcall("fd_write");
        write_out(&mut c, fd, iovs, n, ret)
    })?;
    l.func_wrap(m, "fd_pwrite", |mut c: C<'_>, fd: u32, iovs: u32, n: u32, _off: i64, ret: u32| -> R {
        c.data().count_hostcall("fd_pwrite");
        write_out(&mut c, fd, iovs, n, ret)
    })?;
    l.func_wrap(m, "fd_read", |c: C<'_>, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("fd_read");
        Ok(NOSYS)
    })?;
    l.func_wrap(m, "fd_pread", |c: C<'_>, _: u32, _: u32, _: u32, _: i64, _: u32| -> R {
        c.data().count_hostcall("fd_pread");
        Ok(NOSYS)
    })?;
    l.func_wrap(m, "random_get", |mut c: C<'_>, buf: u32, len: u32| -> R {
        c.data().count_hostcall("random_get");
        if len > 64 * 1024 {
            return Ok(INVAL);
        }
        let mut bytes = vec![0u8; len as usize];
        if c.data_mut().rng.fill(&mut bytes).is_err() {
            return Ok(IO);
        }
        tri!(write(&mut c, buf, &bytes));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "clock_time_get", |mut c: C<'_>, id: u32, _precision: i64, ret: u32| -> R {
        c.data().count_hostcall("clock_time_get");
        let Some(shared) = c.data().shared.clone() else { return Ok(NOTSUP) };
        let t = match id {
            0 => shared.clock.unix_ns(),
            1 => shared.clock.mono_ns(),
            _ => return Ok(NOTSUP),
        };
        tri!(write_u64(&mut c, ret, t));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "clock_res_get", |mut c: C<'_>, id: u32, ret: u32| -> R {
        c.data().count_hostcall("clock_res_get");
        if id > 1 {
            return Ok(NOTSUP);
        }
        tri!(write_u64(&mut c, ret, 1));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "environ_sizes_get", |mut c: C<'_>, count: u32, size: u32| -> R {
        c.data().count_hostcall("environ_sizes_get");
        let env = env_block(c.data());
        let total: usize = env.iter().map(|e| e.len()).sum();
        tri!(write_u32(&mut c, count, env.len() as u32));
        tri!(write_u32(&mut c, size, total as u32));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "environ_get", |mut c: C<'_>, environ: u32, buf: u32| -> R {
        c.data().count_hostcall("environ_get");
        let env = env_block(c.data());
        let mut p = buf;
        for (i, e) in env.iter().enumerate() {
            let slot = tri!(
                u32::try_from(i)
                    .ok()
                    .and_then(|i| i.checked_mul(4))
                    .and_then(|o| environ.checked_add(o))
                    .ok_or(())
            );
            tri!(write_u32(&mut c, slot, p));
            tri!(write(&mut c, p, e));
            p = tri!(u32::try_from(e.len()).ok().and_then(|l| p.checked_add(l)).ok_or(()));
        }
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "args_sizes_get", |mut c: C<'_>, argc: u32, size: u32| -> R {
        c.data().count_hostcall("args_sizes_get");
        tri!(write_u32(&mut c, argc, 0));
        tri!(write_u32(&mut c, size, 0));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "args_get", |c: C<'_>, _: u32, _: u32| -> R {
        c.data().count_hostcall("args_get");
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_fdstat_get", |mut c: C<'_>, fd: u32, ret: u32| -> R {
        c.data().count_hostcall("fd_fdstat_get");
        if fd != 1 && fd != 2 {
            return Ok(BADF);
        }
        // filetype character device, no flags, rights: fd_write.
        let mut st = [0u8; 24];
        st[0] = 2;
        st[8..16].copy_from_slice(&(1u64 << 6).to_le_bytes());
        tri!(write(&mut c, ret, &st));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "poll_oneoff", |mut c: C<'_>, _in: u32, _out: u32, _n: u32, ret: u32| -> R {
        c.data().count_hostcall("poll_oneoff");
        tri!(write_u32(&mut c, ret, 0));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "sched_yield", |c: C<'_>| -> R {
        c.data().count_hostcall("sched_yield");
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_advise", |c: C<'_>, _: u32, _: i64, _: i64, _: u32| -> R {
        c.data().count_hostcall("fd_advise");
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_allocate", |c: C<'_>, _: u32, _: i64, _: i64| -> R {
        c.data().count_hostcall("fd_allocate");
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_datasync", |c: C<'_>, _: u32| -> R {
        c.data().count_hostcall("fd_datasync");
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_sync", |c: C<'_>, _: u32| -> R {
        c.data().count_hostcall("fd_sync");
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_tell", |mut c: C<'_>, _: u32, ret: u32| -> R {
        c.data().count_hostcall("fd_tell");
        tri!(write_u64(&mut c, ret, 0));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_seek", |c: C<'_>, fd: u32, _: i64, _: u32, _: u32| -> R {
        c.data().count_hostcall("fd_seek");
        c.data().log(LogLevel::Warn, format!("WASI fd_seek({fd}) is not supported; returning 0"));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "fd_close", |c: C<'_>, fd: u32| -> R {
        c.data().count_hostcall("fd_close");
        c.data().log(LogLevel::Warn, format!("WASI fd_close({fd}) is not supported; returning 0"));
        Ok(SUCCESS)
    })?;
    l.func_wrap(m, "proc_exit", |c: C<'_>, code: u32| {
        c.data().count_hostcall("proc_exit");
        c.data().log(LogLevel::Warn, format!("WASI proc_exit({code}) ignored (Envoy does not exit the VM)"));
    })?;
    l.func_wrap(m, "fd_prestat_get", |c: C<'_>, _: u32, _: u32| -> R {
        c.data().count_hostcall("fd_prestat_get");
        Ok(BADF)
    })?;
    l.func_wrap(m, "fd_prestat_dir_name", |c: C<'_>, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("fd_prestat_dir_name");
        Ok(BADF)
    })?;
    l.func_wrap(
        m,
        "path_open",
        |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: i64, _: i64, _: u32, _: u32| -> R {
            c.data().count_hostcall("path_open");
            Ok(NOENT)
        },
    )?;
    l.func_wrap(m, "path_filestat_get", |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_filestat_get");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "path_create_directory", |c: C<'_>, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_create_directory");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "path_unlink_file", |c: C<'_>, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_unlink_file");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "path_remove_directory", |c: C<'_>, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_remove_directory");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "path_readlink", |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_readlink");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "path_rename", |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_rename");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "path_symlink", |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_symlink");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "path_link", |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("path_link");
        Ok(NOTSUP)
    })?;
    l.func_wrap(
        m,
        "path_filestat_set_times",
        |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: i64, _: i64, _: u32| -> R {
            c.data().count_hostcall("path_filestat_set_times");
            Ok(NOTSUP)
        },
    )?;
    l.func_wrap(m, "sock_accept", |c: C<'_>, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("sock_accept");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "sock_recv", |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("sock_recv");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "sock_send", |c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32| -> R {
        c.data().count_hostcall("sock_send");
        Ok(NOTSUP)
    })?;
    l.func_wrap(m, "sock_shutdown", |c: C<'_>, _: u32, _: u32| -> R {
        c.data().count_hostcall("sock_shutdown");
        Ok(NOTSUP)
    })?;
    Ok(())
}
