//! The HTTP exchange between a source and its registry, independent of how the host performs it
//! (`dispatch_http_call` in the glue, plain values in tests).

use std::time::Duration;

use meshwasm_filter_runtime::call_response::{CallError, CallResponse};

/// A request a source wants sent to its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    /// Path and query, already percent-encoded.
    pub path: String,
    /// Extra headers (besides `:method`, `:path`, `:authority`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Call timeout handed to the host; above any long-poll `wait`.
    pub timeout: Duration,
}

impl Request {
    pub fn get(path: String, timeout: Duration) -> Self {
        Self { method: "GET", path, headers: Vec::new(), body: Vec::new(), timeout }
    }

    /// Adds a header, builder style.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What came back for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A complete response. Header names lower-case.
    Response { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// No response: timeout, reset, no healthy upstream, or the dispatch itself failed.
    Failed(String),
}

impl Reply {
    /// Convenience for tests and sources: a response with a status and body.
    pub fn ok(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply::Response { status, headers: Vec::new(), body: body.into() }
    }
}

/// Largest registry response body read into the VM (4 MiB): the cap the glue passes to the shared
/// call-response reader. A bigger answer (a runaway registry, a wrong path returning a dump) fails
/// the poll, which is logged and keeps the last good set, instead of copying it into wasm memory and
/// parsing it.
pub const MAX_BODY_BYTES: usize = 4 << 20;

impl From<Result<CallResponse, CallError>> for Reply {
    /// A response as the shared reader returns it; every error is a failed poll, with its reason.
    fn from(r: Result<CallResponse, CallError>) -> Self {
        match r {
            Ok(CallResponse { status, headers, body }) => Reply::Response { status, headers, body },
            Err(e) => Reply::Failed(e.to_string()),
        }
    }
}

/// First value of header `name` (lower-case) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Percent-encodes a query or path component (RFC 3986 unreserved characters stay).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_over_the_cap_fail() {
        let ok = |size| {
            meshwasm_filter_runtime::call_response::assemble(
                1,
                || vec![(":status".into(), b"200".to_vec())],
                size,
                MAX_BODY_BYTES,
                |n| vec![b'x'; n],
            )
        };
        assert!(matches!(Reply::from(ok(MAX_BODY_BYTES)), Reply::Response { status: 200, .. }));
        assert!(matches!(Reply::from(ok(0)), Reply::Response { status: 200, .. }));
        let Reply::Failed(why) = Reply::from(ok(MAX_BODY_BYTES + 1)) else { panic!() };
        assert!(why.contains("4194305 bytes is over the 4194304-byte cap"), "{why}");
        let Reply::Failed(why) = Reply::from(Err(CallError::NoResponse)) else { panic!() };
        assert!(why.starts_with("no response"), "{why}");
    }

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(
            encode_component("kubernetes.io/service-name=api x"),
            "kubernetes.io%2Fservice-name%3Dapi%20x"
        );
        assert_eq!(encode_component("a~b_c"), "a~b_c");
    }
}
