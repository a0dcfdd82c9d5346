//! The response to a `dispatch_http_call`, read one way by every filter: `:status` parsed as a
//! three-digit code, headers with lower-case names, the body refused (never copied into the VM) when
//! it is over the caller's cap. The glue reads it with `glue::read_call_response` (wasm32); the rules
//! are here, testable natively.

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResponse {
    pub status: u16,
    /// Lower-case names; values decoded lossily (invalid UTF-8 becomes U+FFFD).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl CallResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why there is no usable response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No response at all: timeout, reset, no healthy upstream (Envoy reports no headers).
    NoResponse,
    /// Headers without a valid `:status`.
    NoStatus,
    /// The body is over the cap the caller chose for this call; it was not read.
    BodyTooLarge { size: usize, cap: usize },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NoResponse => f.write_str("no response (timeout, reset or no healthy upstream)"),
            CallError::NoStatus => f.write_str("response without a valid :status"),
            CallError::BodyTooLarge { size, cap } => {
                write!(f, "response body of {size} bytes is over the {cap}-byte cap")
            }
        }
    }
}

impl std::error::Error for CallError {}

/// `:status` as Envoy sends it: exactly three ASCII digits, 100 to 999.
pub fn parse_status(value: &[u8]) -> Option<u16> {
    match value {
        [a, b, c] if value.iter().all(u8::is_ascii_digit) && *a != b'0' => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// Builds the response from what the host reports: `num_headers` (0: no response), the header map,
/// the body size, and a reader called for the body only when it is within `cap`.
pub fn assemble(
    num_headers: usize,
    headers: impl FnOnce() -> Vec<(String, Vec<u8>)>,
    body_size: usize,
    cap: usize,
    body: impl FnOnce(usize) -> Vec<u8>,
) -> Result<CallResponse, CallError> {
    if num_headers == 0 {
        return Err(CallError::NoResponse);
    }
    let raw = headers();
    let status = raw.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| parse_status(v));
    let Some(status) = status else { return Err(CallError::NoStatus) };
    if body_size > cap {
        return Err(CallError::BodyTooLarge { size: body_size, cap });
    }
    let headers = raw
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let body = if body_size == 0 { Vec::new() } else { body(body_size) };
    Ok(CallResponse { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(status: &str) -> impl FnOnce() -> Vec<(String, Vec<u8>)> {
        let s = status.as_bytes().to_vec();
        move || vec![(":status".into(), s), ("Content-Type".into(), b"application/json".to_vec())]
    }

    #[test]
    fn status_is_three_digits() {
        assert_eq!(parse_status(b"200"), Some(200));
        assert_eq!(parse_status(b"503"), Some(503));
        for bad in [&b""[..], b"20", b"2000", b" 200", b"200 ", b"+20", b"099", b"abc", b"2\xff0"] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_response_with_status_headers_and_body() {
        let r = assemble(2, hdrs("200"), 2, 10, |n| vec![b'x'; n]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"xx"[..]));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.headers[1].0, "content-type", "names lower-cased");
    }

    #[test]
    fn no_headers_is_no_response_and_a_bad_status_is_refused() {
        assert_eq!(assemble(0, || unreachable!(), 5, 10, |_| unreachable!()), Err(CallError::NoResponse));
        assert_eq!(assemble(1, hdrs("2xx"), 0, 10, |_| unreachable!()), Err(CallError::NoStatus));
        assert_eq!(assemble(1, Vec::new, 0, 10, |_| unreachable!()), Err(CallError::NoStatus));
    }

    #[test]
    fn a_body_over_the_cap_is_never_read() {
        assert_eq!(
            assemble(1, hdrs("200"), 11, 10, |_| unreachable!()),
            Err(CallError::BodyTooLarge { size: 11, cap: 10 })
        );
        assert_eq!(assemble(1, hdrs("200"), 10, 10, |n| vec![0; n]).unwrap().body.len(), 10);
        assert_eq!(
            CallError::BodyTooLarge { size: 4_194_305, cap: 4_194_304 }.to_string(),
            "response body of 4194305 bytes is over the 4194304-byte cap"
        );
    }
}
