//! Helpers over proxy-wasm hostcalls that every filter's glue needs, written once (wasm32 only).
//!
//! Each wraps the `Result`-returning hostcall, never the SDK's trait methods that unwrap (for example
//! `Context::get_current_time` or `RootContext::get_plugin_configuration` panic when the host returns
//! an error status): a failed hostcall becomes a neutral value, never a panic.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

pub use proxy_wasm::types::LogLevel;

use crate::call_response::{CallError, CallResponse, assemble};
use crate::shared_data::{SetError, SharedData};

/// Logs every panic at critical level, prefixed with the filter's name (call first in `main!`).
pub fn install_panic_hook(filter: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("meshwasm {filter}: panic: {info}"));
    }));
}

/// Logs `msg`; a failed log call is ignored.
pub fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Wall-clock milliseconds since the epoch (the same clock in every VM); 0 if the host fails.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Wall-clock nanoseconds since the epoch; 0 if the host fails.
pub fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// 64 random bits, different in every VM: std seeds `RandomState` from WASI `random_get` (which Envoy
/// and the meshwasm host provide); the clock is mixed in as well.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_nanos());
    h.finish()
}

/// The plugin configuration bytes (empty when there is none or the host fails).
pub fn plugin_config() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default()
}

/// Proxy-wide shared data over the hostcalls.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostShared;

impl SharedData for HostShared {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), cas)) => Some((v, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Other),
        }
    }
}

/// Reads the response of a `dispatch_http_call` inside `on_http_call_response`; a body over `cap`
/// bytes is refused without copying it into the VM. Rules: [`crate::call_response`].
pub fn read_call_response(
    num_headers: usize,
    body_size: usize,
    cap: usize,
) -> Result<CallResponse, CallError> {
    assemble(
        num_headers,
        // The bytes variant: the String one panics on a non-UTF-8 value from the upstream.
        || hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default(),
        body_size,
        cap,
        |size| {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default()
        },
    )
}

/// Metrics by name under a prefix, each defined once per VM and its id cached (Envoy merges the
/// same-named metrics of all workers). A metric the host refuses to define is skipped.
#[derive(Debug)]
pub struct Metrics {
    prefix: &'static str,
    ids: HashMap<String, Option<u32>>,
}

impl Metrics {
    /// `prefix` without the trailing dot, e.g. `meshwasm_jwt_auth`.
    pub fn new(prefix: &'static str) -> Self {
        Self { prefix, ids: HashMap::new() }
    }

    fn id(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = define(kind, &format!("{}.{name}", self.prefix));
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// Defines counters `<prefix>.<name>` now (at configure time), so they show as 0 before their first
    /// event instead of appearing with it.
    pub fn counters(&mut self, names: &[&str]) {
        for name in names {
            self.id(MetricType::Counter, name);
        }
    }

    /// Adds `by` to counter `<prefix>.<name>` (nothing for 0).
    pub fn inc(&mut self, name: &str, by: u64) {
        if by > 0
            && let Some(id) = self.id(MetricType::Counter, name)
        {
            increment(id, by);
        }
    }

    /// Sets gauge `<prefix>.<name>`.
    pub fn set_gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// Defines a metric by its full name; `None` if the host refuses.
pub fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

/// Adds `by` to a counter defined with [`define`].
pub fn increment(id: u32, by: u64) {
    let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
}

/// Sets a gauge, or adds a sample to a histogram, defined with [`define`] (`None`: nothing).
pub fn record(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}
