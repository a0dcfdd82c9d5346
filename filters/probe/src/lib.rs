//! meshwasm probe: a test-only proxy-wasm filter that exercises every hostcall from a script in its
//! plugin configuration and reports what it saw, so the same scenario can run in real Envoy and in
//! the meshwasm wasmtime host and the observations can be compared.
//!
//! The plugin configuration is a JSON [`script::Script`]: for each callback a list of operations
//! (hostcalls with their arguments) and the value to return. The probe records, per stream, the
//! order of callbacks with their arguments, and each operation's raw status and returned value. It
//! reports the trace
//! - as a log line `meshwasm-probe-stream <json>` when the stream context is deleted, and
//!   `meshwasm-probe-root <json>` after each root callback (vm_start, configure, tick, queue_ready…);
//! - as header `x-probe-trace-<name>` (base64 of the JSON events so far) on the response
//!   (`trace_response_header`) and/or on the request sent upstream (`trace_request_header`);
//! - as a local reply body, when a `send_local_response` op has body `$trace`.
//!
//! Values that legitimately differ between hosts (times, CAS values, tokens, ids) are recorded under
//! keys starting with `~`, which comparisons ignore.
//!
//! ```json
//! {"name": "p", "trace_response_header": true,
//!  "request_headers": {"ops": [{"op": "get_header", "map": "request_headers", "key": ":path"}],
//!                      "action": "continue"}}
//! ```
//!
//! It speaks the raw ABI 0.2.1 (own exports and `extern "C"` imports) rather than the SDK, because
//! the SDK panics on several non-OK statuses and hides on_delete.

pub mod codec;
pub mod script;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod glue;

/// Log prefix of a stream trace line.
pub const STREAM_TRACE_PREFIX: &str = "meshwasm-probe-stream ";
/// Log prefix of a root event line.
pub const ROOT_TRACE_PREFIX: &str = "meshwasm-probe-root ";
/// Header carrying the trace (suffixed by `-<probe name>`).
pub const TRACE_HEADER_PREFIX: &str = "x-probe-trace-";
