//! Who may read the debug endpoint (`debug_path`). It shows every published endpoint set — a map of
//! the mesh — so it answers only clients on the proxy's own host (a loopback `source.address`) or
//! requests that carry a configured header. Everyone else's request passes through to the upstream
//! as if the endpoint did not exist, so its presence is not revealed either.

use std::net::{IpAddr, SocketAddr};

/// The debug endpoint, when configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugAccess {
    /// Exact `:path` the endpoint answers.
    pub path: String,
    /// A header (lower-case name, value) that also grants access, from any source address.
    pub header: Option<(String, Vec<u8>)>,
}

/// What to do with a request for the debug path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not allowed: pass it on untouched, like any other request.
    Pass,
    /// Answer with the published sets.
    Answer,
    /// Allowed, but not a GET: 405.
    MethodNotAllowed,
}

/// Whether a `source.address` property value (`"ip:port"`, or a bare IP) is a loopback address,
/// IPv4-mapped loopback included.
pub fn is_loopback_source(value: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(value) else { return false };
    let ip = s.parse::<SocketAddr>().map(|a| a.ip()).or_else(|_| s.parse::<IpAddr>()).ok();
    match ip {
        Some(IpAddr::V4(v4)) => v4.is_loopback(),
        Some(IpAddr::V6(v6)) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        None => false,
    }
}

/// Compares without stopping at the first difference, so response timing does not reveal how much
/// of a guessed header value was right. (The length is not hidden.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl DebugAccess {
    /// Decides for a request whose `:path` is [`DebugAccess::path`]: `method` is `:method`, `source`
    /// the `source.address` property, `header` the value of the configured header (if any).
    pub fn decide(&self, method: Option<&[u8]>, source: Option<&[u8]>, header: Option<&[u8]>) -> Decision {
        let by_source = source.is_some_and(is_loopback_source);
        let by_header = match (&self.header, header) {
            (Some((_, want)), Some(got)) => constant_time_eq(want, got),
            _ => false,
        };
        if !by_source && !by_header {
            Decision::Pass
        } else if method == Some(b"GET") {
            Decision::Answer
        } else {
            Decision::MethodNotAllowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(header: bool) -> DebugAccess {
        DebugAccess {
            path: "/debug".into(),
            header: header.then(|| ("x-debug-key".into(), b"s3cret-value".to_vec())),
        }
    }

    #[test]
    fn loopback_sources_are_recognised() {
        for yes in ["127.0.0.1:50000", "127.1.2.3:1", "[::1]:80", "[::ffff:127.0.0.1]:80", "127.0.0.1", "::1"]
        {
            assert!(is_loopback_source(yes.as_bytes()), "{yes}");
        }
        for no in
            ["10.0.0.1:5000", "[2001:db8::1]:80", "[::ffff:10.0.0.1]:80", "0.0.0.0:1", "", "localhost:80"]
        {
            assert!(!is_loopback_source(no.as_bytes()), "{no}");
        }
        assert!(!is_loopback_source(b"\xff127.0.0.1:1"));
    }

    #[test]
    fn only_loopback_or_the_header_get_an_answer() {
        let get = Some(&b"GET"[..]);
        let local = Some(&b"127.0.0.1:40000"[..]);
        let remote = Some(&b"192.0.2.10:40000"[..]);
        let a = access(false);
        assert_eq!(a.decide(get, local, None), Decision::Answer);
        assert_eq!(a.decide(get, remote, None), Decision::Pass);
        assert_eq!(a.decide(get, None, None), Decision::Pass);
        // Without a configured header, no header grants access.
        assert_eq!(a.decide(get, remote, Some(b"s3cret-value")), Decision::Pass);

        let a = access(true);
        assert_eq!(a.decide(get, remote, Some(b"s3cret-value")), Decision::Answer);
        assert_eq!(a.decide(get, remote, Some(b"s3cret-valuX")), Decision::Pass);
        assert_eq!(a.decide(get, remote, Some(b"s3cret")), Decision::Pass);
        assert_eq!(a.decide(get, remote, Some(b"")), Decision::Pass);
        assert_eq!(a.decide(get, remote, None), Decision::Pass);
        assert_eq!(a.decide(get, local, None), Decision::Answer);
    }

    #[test]
    fn allowed_clients_get_405_for_other_methods_and_others_pass() {
        let a = access(true);
        let local = Some(&b"127.0.0.1:40000"[..]);
        let remote = Some(&b"192.0.2.10:40000"[..]);
        for m in ["POST", "PUT", "DELETE", "HEAD", "get"] {
            assert_eq!(a.decide(Some(m.as_bytes()), local, None), Decision::MethodNotAllowed, "{m}");
            assert_eq!(
                a.decide(Some(m.as_bytes()), remote, Some(b"s3cret-value")),
                Decision::MethodNotAllowed
            );
            assert_eq!(a.decide(Some(m.as_bytes()), remote, None), Decision::Pass);
        }
        assert_eq!(a.decide(None, local, None), Decision::MethodNotAllowed);
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
