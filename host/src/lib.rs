//! `meshwasm-host`: a wasmtime host for proxy-wasm filters (ABI 0.2.1) that behaves like Envoy, so the
//! same `.wasm` files can be tested fast without Envoy, and run in a small proxy. Tests run on a virtual
//! clock; WASI randomness comes from the OS unless seeded on request ([`HostOptions::random`] set to
//! [`RandomSource::Seeded`]).
//!
//! ```no_run
//! use meshwasm_host::{Host, HostOptions, Plugin, Proxy, Request, UpstreamReply, Upstream, CallReply};
//! # fn main() -> anyhow::Result<()> {
//! let host = Host::new(HostOptions::default())?;
//! let module = host.load("target/wasm32-wasip1/wasm/meshwasm_noop.wasm")?;
//! let mut proxy = Proxy::builder(&host)
//!     .workers(2)
//!     .plugin(Plugin::new(module).name("noop").config(b"{}"))
//!     .upstream("jwks", Upstream::handler(|_call| CallReply::response(200, [("content-type", "application/json")], "{}")))
//!     .build()?;
//! let ex = proxy.send(0, Request::get("/").header("authorization", "Bearer x"), UpstreamReply::new(200).body("hi"))?;
//! assert_eq!(ex.status, 200);
//! # Ok(()) }
//! ```
//!
//! Layout: [`host`](Host) (engine, linker, module cache, inspection), `abi` (the `env` hostcalls: they
//! only marshal), `shared` (process state: shared data, queues, metrics and the hostcall rules over them),
//! `wasi` (WASI preview 1 as Envoy provides it), `vm` (one instance and its contexts), [`Worker`] (one
//! simulated Envoy worker: `worker/chain` the stream state machine, `worker/vms` VM management,
//! `worker/local` local replies, `worker/driver` the driver API, `worker/dir` what differs between the
//! request and response paths), [`Proxy`] (test driver with a virtual clock), `properties`, `foreign`
//! (foreign-function registry).

mod abi;
mod client;
pub mod foreign;
mod host;
mod http;
mod plugin;
mod properties;
mod proxy;
pub mod serve_config;
mod shared;
pub mod tls;
mod vm;
mod wasi;
mod worker;

pub use host::{AbiVersion, Host, HostOptions, Module, ModuleReport, RandomSource};
pub use http::{
    Action, Callback, CallbackRecord, Exchange, ForwardedRequest, Headers, LocalReply, Phase, Request,
    StreamId, StreamState, UpstreamReply,
};
pub use plugin::{
    Backend, CallHandler, CallOutcome, CallReply, FailurePolicy, HttpCall, LogEntry, LogLevel, Plugin,
    Upstream,
};
pub use properties::encode as property;
pub use proxy::{BuildError, Proxy, ProxyBuilder};
pub use shared::{ProxyState, Waker};
pub use vm::CallCounts;
pub use wasi::WASI_FUNCTIONS;
pub use worker::{OutboundCall, VmStats, Worker, WorkerEvent};

/// proxy-wasm status codes as returned by hostcalls.
pub mod status {
    /// OK
    pub const OK: u32 = 0;
    /// NOT_FOUND
    pub const NOT_FOUND: u32 = 1;
    /// BAD_ARGUMENT
    pub const BAD_ARGUMENT: u32 = 2;
    /// SERIALIZATION_FAILURE (get_property of an empty path)
    pub const SERIALIZATION_FAILURE: u32 = 3;
    /// INVALID_MEMORY_ACCESS
    pub const INVALID_MEMORY_ACCESS: u32 = 6;
    /// EMPTY
    pub const EMPTY: u32 = 7;
    /// CAS_MISMATCH
    pub const CAS_MISMATCH: u32 = 8;
    /// BROKEN_CONNECTION (get_status after a failed http call)
    pub const BROKEN_CONNECTION: u32 = 11;
    /// UNIMPLEMENTED
    pub const UNIMPLEMENTED: u32 = 12;
}
