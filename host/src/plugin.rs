//! Plugin configuration (one filter in the chain) and the upstream side of dispatched HTTP calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::host::Module;
use crate::http::Headers;

/// One filter in the chain: a module plus Envoy's `PluginConfig` fields.
///
/// Plugins with the same `vm_id` and the same module share one VM per worker (each gets its own root
/// context), as in Envoy; shared data and shared queues are keyed by `vm_id`.
#[derive(Clone, Debug)]
pub struct Plugin {
    pub(crate) module: Module,
    pub(crate) name: String,
    pub(crate) root_id: String,
    pub(crate) vm_id: String,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) config: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
}

impl Plugin {
    /// A plugin with empty name, root_id, vm_id and configs.
    pub fn new(module: Module) -> Self {
        Self {
            module,
            name: String::new(),
            root_id: String::new(),
            vm_id: String::new(),
            vm_config: Vec::new(),
            config: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Plugin name (`plugin_name` property; used in logs, errors and records).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Root id (`plugin_root_id`; selects the root context in multi-root modules).
    pub fn root_id(mut self, root_id: &str) -> Self {
        self.root_id = root_id.to_string();
        self
    }

    /// VM id (`plugin_vm_id`; key for shared data and queues, and for VM sharing).
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.to_string();
        self
    }

    /// VM configuration (buffer 6, delivered with `on_vm_start`).
    pub fn vm_config(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.vm_config = bytes.as_ref().to_vec();
        self
    }

    /// Plugin configuration (buffer 7, delivered with `on_configure`).
    pub fn config(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.config = bytes.as_ref().to_vec();
        self
    }

    /// An environment variable visible through WASI `environ_get` (Envoy's `vm_config.environment_variables`;
    /// nothing else from the host environment is visible).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The display name: plugin name, else root id, else the module name.
    pub fn display_name(&self) -> &str {
        if !self.name.is_empty() {
            &self.name
        } else if !self.root_id.is_empty() {
            &self.root_id
        } else {
            self.module.name()
        }
    }

    /// The module.
    pub fn module(&self) -> &Module {
        &self.module
    }
}

/// Log levels of `proxy_log` (0 trace … 5 critical).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// 0
    Trace,
    /// 1
    Debug,
    /// 2
    Info,
    /// 3
    Warn,
    /// 4
    Error,
    /// 5
    Critical,
}

impl LogLevel {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// One log line from a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Worker index.
    pub worker: usize,
    /// Plugin name of the context that logged (the VM id when no plugin context is current, e.g. in
    /// `_initialize`), or `meshwasm-host` for the host's own lines (VM failures).
    pub plugin: String,
    /// Level.
    pub level: LogLevel,
    /// Message (WASI stdout/stderr lines without the trailing newline).
    pub message: String,
}

/// What happens to a VM after it traps (panic, `unreachable`, deadline, out-of-bounds access).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The failing stream gets 503 `wasm_fail_stream`; the VM is recreated (fresh instance, root contexts,
    /// `on_vm_start`, `on_configure`) before the next stream. Envoy's `failure_policy: FAIL_RELOAD`.
    #[default]
    Reload,
    /// The VM stays failed: every later stream through it gets 503 `wasm_fail_stream`. Envoy's default
    /// (`FAIL_CLOSED`).
    FailClosed,
}

/// A scripted answer function for dispatched HTTP calls.
pub type CallHandler = Arc<dyn Fn(&HttpCall) -> CallReply + Send + Sync>;

/// An upstream (Envoy cluster) that filters may `proxy_http_call`. Calls to names not declared are
/// rejected with BAD_ARGUMENT, like calls to unknown clusters in Envoy.
#[derive(Clone)]
pub enum Upstream {
    /// Answers computed by a function (scripted; may delay, fail or never answer).
    Handler(CallHandler),
    /// Forwards the call over HTTP/1.1 to a real server (blocking client in [`crate::Proxy`]; the
    /// `serve` driver does its own I/O).
    Forward(SocketAddr),
}

impl Upstream {
    /// Scripted answers.
    pub fn handler(f: impl Fn(&HttpCall) -> CallReply + Send + Sync + 'static) -> Self {
        Self::Handler(Arc::new(f))
    }

    /// Always the same answer.
    pub fn reply(reply: CallReply) -> Self {
        Self::Handler(Arc::new(move |_| reply.clone()))
    }

    /// Forward to a real HTTP server.
    pub fn forward(addr: SocketAddr) -> Self {
        Self::Forward(addr)
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handler(_) => f.write_str("Upstream::Handler"),
            Self::Forward(a) => write!(f, "Upstream::Forward({a})"),
        }
    }
}

/// A dispatched HTTP call as the host saw it, and how it ended.
#[derive(Clone, Debug)]
pub struct HttpCall {
    /// Token returned to the guest.
    pub token: u32,
    /// Worker that dispatched it.
    pub worker: usize,
    /// Plugin name of the dispatching context.
    pub plugin: String,
    /// Upstream (cluster) name.
    pub upstream: String,
    /// Request headers (lower-cased keys, including `:method`, `:path`, `:authority`).
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// Timeout the guest asked for.
    pub timeout: Duration,
    /// Virtual time of dispatch (since the proxy was built).
    pub dispatched_at: Duration,
    /// What was delivered to the guest (None while pending, or if cancelled with its stream).
    pub outcome: Option<CallOutcome>,
}

/// What a dispatched call ends with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// A response (headers include `:status`).
    Response {
        /// Headers.
        headers: Headers,
        /// Body.
        body: Vec<u8>,
        /// Trailers.
        trailers: Headers,
    },
    /// The call failed (connection reset/refused before a response): the guest gets
    /// `on_http_call_response(token, 0, 0, 0)` and `get_status` reports the failure.
    Failure,
    /// No answer within the timeout: like Envoy's async client, the guest gets a 504 response with body
    /// `upstream request timeout`.
    Timeout,
}

impl CallOutcome {
    /// A response with `:status` set.
    pub fn response(status: u16, headers: impl Into<Headers>, body: impl AsRef<[u8]>) -> Self {
        let mut h: Headers = headers.into();
        h.remove(":status");
        let mut all = Headers::new().with(":status", status.to_string());
        for (k, v) in h.iter() {
            all.add(k, v);
        }
        Self::Response { headers: all, body: body.as_ref().to_vec(), trailers: Headers::new() }
    }

    /// Status of a response outcome.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Response { headers, .. } => headers.get(":status").and_then(|s| s.parse().ok()),
            _ => None,
        }
    }
}

/// A scripted answer: an outcome, optionally delayed in virtual time, or no answer at all.
#[derive(Clone, Debug)]
pub struct CallReply {
    pub(crate) outcome: Option<CallOutcome>,
    pub(crate) delay: Duration,
}

impl CallReply {
    /// A response.
    pub fn response(status: u16, headers: impl Into<Headers>, body: impl AsRef<[u8]>) -> Self {
        Self { outcome: Some(CallOutcome::response(status, headers, body)), delay: Duration::ZERO }
    }

    /// A connection failure: the guest gets `(token, 0, 0, 0)`.
    pub fn failure() -> Self {
        Self { outcome: Some(CallOutcome::Failure), delay: Duration::ZERO }
    }

    /// No answer: the call times out after the guest's timeout (on [`crate::Proxy::advance`]).
    pub fn no_answer() -> Self {
        Self { outcome: None, delay: Duration::ZERO }
    }

    /// Delivers the answer only once virtual time has advanced by `delay` (if that is past the call's
    /// timeout, the call times out instead).
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds a response trailer.
    pub fn trailer(mut self, key: &str, value: &str) -> Self {
        if let Some(CallOutcome::Response { trailers, .. }) = &mut self.outcome {
            trailers.add(key, value);
        }
        self
    }
}

/// Where a stream's request goes after the chain: a scripted response, or a real server.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A scripted response.
    Reply(crate::http::UpstreamReply),
    /// Forward over HTTP/1.1 to a real server (blocking).
    Forward(SocketAddr),
}

impl From<crate::http::UpstreamReply> for Backend {
    fn from(r: crate::http::UpstreamReply) -> Self {
        Self::Reply(r)
    }
}

impl From<SocketAddr> for Backend {
    fn from(a: SocketAddr) -> Self {
        Self::Forward(a)
    }
}
