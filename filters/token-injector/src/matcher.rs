//! Which outbound requests get a token: rules on `:authority` and path prefix.

use serde::Deserialize;

/// One rule; a request matches when every field the rule sets matches. A request matches the filter
/// when any rule matches (or when there are no rules).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `api.example.com` (any port unless one is given: `api.example.com:8443`) or `*.example.com`
    /// (any subdomain). Case-insensitive.
    #[serde(default)]
    pub authority: Option<String>,
    /// Path prefix, e.g. `/v1/` (compared byte-wise, query string included in the path).
    #[serde(default)]
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Any,
    Exact { host: String, port: Option<String> },
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Compiled {
    host: Host,
    path_prefix: Option<String>,
}

/// Compiled rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    rules: Vec<Compiled>,
}

impl Matcher {
    /// Compiles rules; an error gives the index of the bad entry and the reason.
    pub fn new(rules: &[Rule]) -> Result<Matcher, (usize, String)> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            if r.authority.is_none() && r.path_prefix.is_none() {
                return Err((i, "sets neither `authority` nor `path_prefix`".into()));
            }
            let host = match r.authority.as_deref() {
                None => Host::Any,
                Some(a) => {
                    let a = a.to_ascii_lowercase();
                    if a.is_empty() || a.bytes().any(|b| b <= b' ' || b == b'/' || b >= 0x7f) {
                        return Err((i, format!("`authority` {a:?} is not a host[:port]")));
                    }
                    if let Some(suffix) = a.strip_prefix("*.") {
                        if suffix.is_empty() || suffix.contains('*') || suffix.contains(':') {
                            return Err((i, format!("`authority` {a:?}: wildcard form is `*.domain`")));
                        }
                        Host::Suffix(format!(".{suffix}"))
                    } else if a.contains('*') {
                        return Err((i, format!("`authority` {a:?}: `*` only as a leading `*.`")));
                    } else {
                        let (host, port) = split_port(&a);
                        Host::Exact { host: host.to_owned(), port: port.map(str::to_owned) }
                    }
                }
            };
            if let Some(p) = &r.path_prefix
                && !p.starts_with('/')
            {
                return Err((i, format!("`path_prefix` {p:?} must start with `/`")));
            }
            out.push(Compiled { host, path_prefix: r.path_prefix.clone() });
        }
        Ok(Matcher { rules: out })
    }

    /// True when there are no rules: every request matches (the glue then skips reading headers).
    pub fn matches_all(&self) -> bool {
        self.rules.is_empty()
    }

    /// True when the request should get a token.
    pub fn matches(&self, authority: &[u8], path: &[u8]) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let authority = String::from_utf8_lossy(authority).to_ascii_lowercase();
        let (host, port) = split_port(&authority);
        self.rules.iter().any(|r| {
            let host_ok = match &r.host {
                Host::Any => true,
                Host::Exact { host: h, port: p } => h == host && (p.is_none() || p.as_deref() == port),
                Host::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            };
            host_ok && r.path_prefix.as_ref().is_none_or(|p| path.starts_with(p.as_bytes()))
        })
    }
}

/// Splits `host:port` (IPv6 literals in brackets keep their colons).
fn split_port(a: &str) -> (&str, Option<&str>) {
    if a.starts_with('[') {
        return match a.find("]:") {
            Some(i) => (&a[..=i], Some(&a[i + 2..])),
            None => (a, None),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (a, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rules: &[(Option<&str>, Option<&str>)]) -> Matcher {
        let rules: Vec<Rule> = rules
            .iter()
            .map(|(a, p)| Rule { authority: a.map(str::to_owned), path_prefix: p.map(str::to_owned) })
            .collect();
        Matcher::new(&rules).unwrap()
    }

    #[test]
    fn no_rules_match_everything() {
        assert!(m(&[]).matches(b"anything", b"/"));
        assert!(m(&[]).matches_all());
        assert!(!m(&[(None, Some("/x"))]).matches_all());
    }

    #[test]
    fn exact_host_any_port_or_given_port() {
        let any = m(&[(Some("API.example.com"), None)]);
        assert!(any.matches(b"api.example.com", b"/"));
        assert!(any.matches(b"Api.Example.Com:8080", b"/x"));
        assert!(!any.matches(b"other.example.com", b"/"));
        assert!(!any.matches(b"xapi.example.com", b"/"));
        let port = m(&[(Some("api.example.com:8443"), None)]);
        assert!(port.matches(b"api.example.com:8443", b"/"));
        assert!(!port.matches(b"api.example.com", b"/"));
        assert!(!port.matches(b"api.example.com:80", b"/"));
        let v6 = m(&[(Some("[::1]:8080"), None)]);
        assert!(v6.matches(b"[::1]:8080", b"/"));
        assert!(!v6.matches(b"[::1]:9090", b"/"));
    }

    #[test]
    fn wildcard_and_path_prefix() {
        let r = m(&[(Some("*.example.com"), Some("/v1/")), (None, Some("/public-api/"))]);
        assert!(r.matches(b"a.example.com", b"/v1/x"));
        assert!(r.matches(b"a.b.example.com:81", b"/v1/"));
        assert!(!r.matches(b"example.com", b"/v1/x"));
        assert!(!r.matches(b"a.example.com", b"/v2/x"));
        assert!(r.matches(b"elsewhere", b"/public-api/x"));
        assert!(!r.matches(b"a.example.org", b"/v1/x"));
        // Non-UTF-8 bytes from a client never panic.
        assert!(!r.matches(b"\xff\xfe", b"\xff"));
    }

    #[test]
    fn bad_rules() {
        let bad = |a: Option<&str>, p: Option<&str>| {
            Matcher::new(&[Rule { authority: a.map(str::to_owned), path_prefix: p.map(str::to_owned) }])
                .unwrap_err()
        };
        assert_eq!(bad(None, None).0, 0);
        bad(Some("a*b"), None);
        bad(Some("*."), None);
        bad(Some("a/b"), None);
        bad(Some(""), None);
        bad(None, Some("v1"));
    }
}
