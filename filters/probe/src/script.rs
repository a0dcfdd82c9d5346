//! The probe's script: what to do in each callback. Parsed once in on_configure (or on_vm_start
//! for the VM configuration); unknown fields are rejected so a typo cannot silently drop a check.

use serde::{Deserialize, Deserializer};

use crate::codec::Decode;

/// A whole probe script (the plugin configuration, or the VM configuration for `vm_start`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Label of this probe in traces and the trace header name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Add `x-probe-trace-<name>` to the response headers at the end of on_response_headers.
    #[serde(default)]
    pub trace_response_header: bool,
    /// Add `x-probe-trace-<name>` to the request headers at the end of on_request_headers.
    #[serde(default)]
    pub trace_request_header: bool,
    /// Log the stream trace at on_delete (default true).
    #[serde(default = "yes")]
    pub trace_log: bool,
    #[serde(default)]
    pub vm_start: Step,
    #[serde(default)]
    pub configure: Step,
    #[serde(default)]
    pub tick: Step,
    #[serde(default)]
    pub queue_ready: Step,
    #[serde(default)]
    pub foreign_function: Step,
    #[serde(default)]
    pub context_create: Step,
    #[serde(default)]
    pub request_headers: Step,
    #[serde(default)]
    pub request_body: Step,
    #[serde(default)]
    pub request_trailers: Step,
    #[serde(default)]
    pub response_headers: Step,
    #[serde(default)]
    pub response_body: Step,
    #[serde(default)]
    pub response_trailers: Step,
    #[serde(default)]
    pub http_call_response: Step,
    #[serde(default)]
    pub done: Step,
    #[serde(default)]
    pub log: Step,
    #[serde(default)]
    pub delete: Step,
}

fn default_name() -> String {
    "probe".to_owned()
}

fn yes() -> bool {
    true
}

impl Script {
    /// Parses a script; empty input is the empty script.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self { name: default_name(), trace_log: true, ..Self::default() });
        }
        let s: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("meshwasm probe: bad script: {e}"))?;
        if s.name.is_empty() || !s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("meshwasm probe: name `{}` must be non-empty [A-Za-z0-9_-]", s.name));
        }
        Ok(s)
    }
}

/// What to do in one callback.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub ops: Vec<Op>,
    /// For header/body/trailer callbacks.
    #[serde(default)]
    pub action: StepAction,
    /// For vm_start, configure and done (default true).
    #[serde(default, rename = "return")]
    pub ret: Option<bool>,
    /// Run the ops only on the first invocation of this callback in the context.
    #[serde(default)]
    pub first_only: bool,
}

/// The action a header/body/trailers callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepAction {
    #[default]
    Continue,
    Pause,
    /// Pause unless end_of_stream (buffers a whole body).
    PauseUntilEos,
    /// A raw action code.
    Raw(u32),
}

impl StepAction {
    /// The ABI action code for a callback with end_of_stream `eos`.
    pub fn code(self, eos: bool) -> u32 {
        match self {
            Self::Continue => 0,
            Self::Pause => 1,
            Self::PauseUntilEos => u32::from(!eos),
            Self::Raw(c) => c,
        }
    }
}

impl<'de> Deserialize<'de> for StepAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => match s.as_str() {
                "continue" => Ok(Self::Continue),
                "pause" => Ok(Self::Pause),
                "pause_until_eos" => Ok(Self::PauseUntilEos),
                other => Err(serde::de::Error::custom(format!(
                    "action `{other}`: expected continue, pause, pause_until_eos or a number"
                ))),
            },
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Self::Raw)
                .ok_or_else(|| serde::de::Error::custom("action: bad number")),
            _ => Err(serde::de::Error::custom("action: expected a string or a number")),
        }
    }
}

macro_rules! named_code {
    ($ty:ident, $what:literal, [$($name:literal => $code:expr),* $(,)?]) => {
        /// An ABI enumeration value, given by name or number.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $ty(pub u32);

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match serde_json::Value::deserialize(d)? {
                    serde_json::Value::String(s) => match s.as_str() {
                        $($name => Ok(Self($code)),)*
                        other => Err(serde::de::Error::custom(format!(concat!($what, " `{}` is unknown"), other))),
                    },
                    serde_json::Value::Number(n) => n
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .map(Self)
                        .ok_or_else(|| serde::de::Error::custom(concat!($what, ": bad number"))),
                    _ => Err(serde::de::Error::custom(concat!($what, ": expected a name or a number"))),
                }
            }
        }
    };
}

named_code!(MapType, "map", [
    "request_headers" => 0, "request_trailers" => 1, "response_headers" => 2, "response_trailers" => 3,
    "grpc_initial_metadata" => 4, "grpc_trailing_metadata" => 5,
    "http_call_response_headers" => 6, "http_call_response_trailers" => 7,
]);
named_code!(BufferType, "buffer", [
    "request_body" => 0, "response_body" => 1, "downstream_data" => 2, "upstream_data" => 3,
    "http_call_response_body" => 4, "grpc_message" => 5, "vm_configuration" => 6,
    "plugin_configuration" => 7, "foreign_function_arguments" => 8,
]);
named_code!(StreamType, "stream", ["request" => 0, "response" => 1, "downstream" => 2, "upstream" => 3]);
named_code!(MetricKind, "metric type", ["counter" => 0, "gauge" => 1, "histogram" => 2]);

/// The CAS to pass to set_shared_data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cas {
    /// 0: unconditional.
    #[default]
    None,
    /// The CAS returned by the last get_shared of this key in this VM.
    Last,
    /// That CAS plus one (a stale/wrong CAS).
    Wrong,
    Value(u32),
}

impl<'de> Deserialize<'de> for Cas {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "last" => Ok(Self::Last),
            serde_json::Value::String(s) if s == "wrong" => Ok(Self::Wrong),
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| if n == 0 { Self::None } else { Self::Value(n) })
                .ok_or_else(|| serde::de::Error::custom("cas: bad number")),
            _ => Err(serde::de::Error::custom("cas: expected \"last\", \"wrong\" or a number")),
        }
    }
}

/// Which context `set_effective_context` targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The root context of the current one.
    Root,
    /// The current context.
    #[serde(rename = "self")]
    This,
    /// A context id that does not exist.
    Invalid,
}

fn max_len() -> u32 {
    u32::MAX
}

/// One operation: a hostcall with its arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Log {
        #[serde(default = "info")]
        level: u32,
        msg: String,
    },
    GetLogLevel,
    GetCurrentTime,
    SetTickPeriod {
        ms: u32,
    },
    GetHeader {
        map: MapType,
        key: String,
    },
    GetHeaders {
        map: MapType,
    },
    GetHeaderMapSize {
        map: MapType,
    },
    AddHeader {
        map: MapType,
        key: String,
        value: String,
    },
    ReplaceHeader {
        map: MapType,
        key: String,
        value: String,
    },
    RemoveHeader {
        map: MapType,
        key: String,
    },
    SetHeaders {
        map: MapType,
        pairs: Vec<(String, String)>,
    },
    GetBuffer {
        buffer: BufferType,
        #[serde(default)]
        start: u32,
        #[serde(default = "max_len")]
        max: u32,
    },
    GetBufferStatus {
        buffer: BufferType,
    },
    SetBuffer {
        buffer: BufferType,
        #[serde(default)]
        start: u32,
        #[serde(default)]
        size: u32,
        value: String,
    },
    GetProperty {
        path: Vec<String>,
        #[serde(default, rename = "as")]
        decode: Decode,
    },
    SetProperty {
        path: Vec<String>,
        value: String,
    },
    GetShared {
        key: String,
    },
    SetShared {
        key: String,
        value: String,
        #[serde(default)]
        cas: Cas,
    },
    RegisterQueue {
        name: String,
    },
    ResolveQueue {
        #[serde(default)]
        vm_id: String,
        name: String,
    },
    Enqueue {
        queue: String,
        value: String,
    },
    Dequeue {
        queue: String,
    },
    /// Enqueue/dequeue on a queue id nobody registered.
    DequeueInvalid,
    DefineMetric {
        kind: MetricKind,
        name: String,
    },
    IncrementMetric {
        name: String,
        delta: i64,
    },
    RecordMetric {
        name: String,
        value: u64,
    },
    GetMetric {
        name: String,
    },
    HttpCall {
        upstream: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        body: String,
        #[serde(default)]
        trailers: Vec<(String, String)>,
        #[serde(default = "default_timeout")]
        timeout_ms: u32,
    },
    SendLocalResponse {
        status: u32,
        #[serde(default)]
        details: String,
        #[serde(default)]
        body: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default = "minus_one")]
        grpc_status: i32,
    },
    ContinueStream {
        stream: StreamType,
    },
    CloseStream {
        stream: StreamType,
    },
    GetStatus,
    CallForeign {
        name: String,
        #[serde(default)]
        args: String,
    },
    SetEffectiveContext {
        target: Target,
    },
    Done,
    /// From a root callback: continue every stream of this VM that a callback paused.
    ResumePaused {
        stream: StreamType,
    },
}

fn info() -> u32 {
    2
}

fn default_timeout() -> u32 {
    5000
}

fn minus_one() -> i32 {
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_script() {
        let s = Script::parse(
            br#"{"name":"p1","trace_response_header":true,
                 "request_headers":{"ops":[{"op":"get_header","map":"request_headers","key":":path"},
                                           {"op":"set_shared","key":"k","value":"v","cas":"last"},
                                           {"op":"get_property","path":["request","time"],"as":"len"}],
                                    "action":"pause"},
                 "done":{"return":false}}"#,
        )
        .unwrap();
        assert_eq!(s.name, "p1");
        assert!(s.trace_log);
        assert_eq!(s.request_headers.ops.len(), 3);
        assert_eq!(s.request_headers.action, StepAction::Pause);
        assert_eq!(s.done.ret, Some(false));
        assert!(matches!(s.request_headers.ops[1], Op::SetShared { cas: Cas::Last, .. }));
    }

    #[test]
    fn rejects_typos_and_bad_names() {
        assert!(Script::parse(br#"{"request_header":{}}"#).unwrap_err().contains("unknown field"));
        assert!(
            Script::parse(br#"{"request_headers":{"ops":[{"op":"get_header","mpa":0,"key":"a"}]}}"#).is_err()
        );
        assert!(Script::parse(br#"{"name":"a b"}"#).is_err());
        assert!(Script::parse(br#"{"tick":{"ops":[{"op":"get_header","map":"nope","key":"a"}]}}"#).is_err());
        assert_eq!(Script::parse(b"").unwrap().name, "probe");
    }

    #[test]
    fn actions_map_to_codes() {
        assert_eq!(StepAction::PauseUntilEos.code(false), 1);
        assert_eq!(StepAction::PauseUntilEos.code(true), 0);
        assert_eq!(StepAction::Raw(3).code(true), 3);
    }
}
