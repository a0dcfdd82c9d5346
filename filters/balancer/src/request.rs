//! What the balancer reads from a request: the service name and the hash key. Pure functions over a
//! small view of the request, so they are tested natively.

use std::borrow::Cow;

use meshwasm_path::{PathError, normalize};

use crate::config::{HashSource, ServiceSource};
use crate::hash::xxh64;

/// The parts of a request the balancer looks at (header values as raw bytes: clients control them).
pub trait RequestView {
    fn header(&self, name: &str) -> Option<Vec<u8>>;
    /// The downstream peer address, `ip:port` or `[v6]:port`.
    fn source_address(&self) -> Option<String>;
}

/// The service this request is for: the first source that yields a name, `Ok(None)` when none does.
///
/// Route rules match the normalized `:path` (`meshwasm_path`), so `/%61pi/x`, `//api/x` and
/// `/x/../api/x` all count as `/api/x`. When a route rule is reached and the path cannot be
/// normalized (an encoded `/`, `;` parameters, …) the answer is the [`PathError`]: the caller
/// rejects the request (400) rather than guess which service an upstream would see.
pub fn service_name<'a>(
    sources: &'a [ServiceSource],
    req: &impl RequestView,
) -> Result<Option<Cow<'a, str>>, PathError> {
    // Read and normalized once, on the first route rule.
    let mut path: Option<Option<String>> = None;
    for source in sources {
        match source {
            ServiceSource::Header(h) => {
                if let Some(v) = req.header(h).and_then(|v| String::from_utf8(v).ok()) {
                    let v = v.trim();
                    if !v.is_empty() {
                        return Ok(Some(Cow::Owned(v.to_owned())));
                    }
                }
            }
            ServiceSource::Authority => {
                if let Some(v) = req.header(":authority").and_then(|v| String::from_utf8(v).ok()) {
                    let host = strip_port(&v);
                    if !host.is_empty() {
                        return Ok(Some(Cow::Owned(host.to_ascii_lowercase())));
                    }
                }
            }
            ServiceSource::Route { prefix, service } => {
                if path.is_none() {
                    path = Some(match req.header(":path") {
                        None => None,
                        Some(raw) => {
                            let raw = String::from_utf8(raw).map_err(|_| PathError::BadCharacter)?;
                            Some(normalize(&raw)?.into_owned())
                        }
                    });
                }
                if path.as_ref().and_then(Option::as_deref).is_some_and(|p| p.starts_with(prefix.as_str())) {
                    return Ok(Some(Cow::Borrowed(service)));
                }
            }
            ServiceSource::Fixed(service) => return Ok(Some(Cow::Borrowed(service))),
        }
    }
    Ok(None)
}

/// `host:port` → `host`; `[v6]:port` → `v6`; no port → unchanged.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The value of cookie `name` in a `cookie` header.
fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// The request's hash key for ring hash and Maglev: xxh64 of the first source present.
pub fn key_hash(sources: &[HashSource], req: &impl RequestView) -> Option<u64> {
    for source in sources {
        let hashed = match source {
            HashSource::Header(h) => req.header(h).map(|v| xxh64(&v, 0)),
            HashSource::Cookie(c) => req
                .header("cookie")
                .and_then(|v| cookie(&v, c).filter(|v| !v.is_empty()).map(|v| xxh64(v, 0))),
            HashSource::SourceIp => req.source_address().map(|a| xxh64(strip_port(&a).as_bytes(), 0)),
            HashSource::Path => req.header(":path").map(|p| {
                let end = p.iter().position(|&b| b == b'?').unwrap_or(p.len());
                xxh64(&p[..end], 0)
            }),
        };
        if hashed.is_some() {
            return hashed;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req(Vec<(&'static str, &'static [u8])>, Option<&'static str>);

    impl RequestView for Req {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_vec())
        }
        fn source_address(&self) -> Option<String> {
            self.1.map(str::to_owned)
        }
    }

    #[test]
    fn service_from_sources_in_order() {
        let sources = vec![
            ServiceSource::Route { prefix: "/api/".into(), service: "api".into() },
            ServiceSource::Header("x-svc".into()),
            ServiceSource::Authority,
        ];
        let name = |r: &Req| service_name(&sources, r).unwrap().map(Cow::into_owned);
        let r = Req(vec![(":path", b"/api/v1"), ("x-svc", b"web"), (":authority", b"Shop:8080")], None);
        assert_eq!(name(&r).as_deref(), Some("api"));
        let r = Req(vec![(":path", b"/x"), ("x-svc", b" web "), (":authority", b"shop")], None);
        assert_eq!(name(&r).as_deref(), Some("web"));
        let r = Req(vec![(":path", b"/x"), ("x-svc", b"\xff"), (":authority", b"Shop:8080")], None);
        assert_eq!(name(&r).as_deref(), Some("shop"));
        assert_eq!(name(&Req(vec![], None)), None);
        assert_eq!(
            service_name(&[ServiceSource::Fixed("f".into())], &Req(vec![], None)).unwrap().as_deref(),
            Some("f")
        );
    }

    fn route_then_fixed() -> Vec<ServiceSource> {
        vec![
            ServiceSource::Route { prefix: "/api/".into(), service: "api".into() },
            ServiceSource::Fixed("web".into()),
        ]
    }

    #[test]
    fn route_rules_match_the_normalized_path() {
        let sources = route_then_fixed();
        for path in ["/api/x", "/%61pi/x", "//api/x", "/x/../api/x", "/x/%2e%2e/api/x", "/./api/x?q=/web"] {
            let r = Req(vec![(":path", path.as_bytes())], None);
            assert_eq!(service_name(&sources, &r).unwrap().as_deref(), Some("api"), "{path}");
        }
        for path in ["/apix", "/web/api/x", "/api/../web", "/x?/api/"] {
            let r = Req(vec![(":path", path.as_bytes())], None);
            assert_eq!(service_name(&sources, &r).unwrap().as_deref(), Some("web"), "{path}");
        }
    }

    #[test]
    fn paths_that_do_not_normalize_select_nothing() {
        let sources = route_then_fixed();
        for (path, e) in [
            (&b"/api%2Fx"[..], PathError::EncodedSlash),
            (b"/api;x/y", PathError::PathParameter),
            (b"/api\\x", PathError::Backslash),
            (b"/api/\xffx", PathError::BadCharacter),
            (b"api/x", PathError::NotAbsolute),
        ] {
            let r = Req(vec![(":path", path)], None);
            assert_eq!(service_name(&sources, &r), Err(e), "{path:?}");
        }
        // A source before the route rule decides without looking at the path.
        let sources = [
            ServiceSource::Fixed("web".into()),
            ServiceSource::Route { prefix: "/api/".into(), service: "api".into() },
        ];
        let r = Req(vec![(":path", b"/api%2Fx")], None);
        assert_eq!(service_name(&sources, &r).unwrap().as_deref(), Some("web"));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("10.0.0.1:5"), "10.0.0.1");
    }

    #[test]
    fn hash_keys() {
        let sources = vec![
            HashSource::Header("x-user".into()),
            HashSource::Cookie("sid".into()),
            HashSource::SourceIp,
            HashSource::Path,
        ];
        let r = Req(vec![("x-user", b"alice"), ("cookie", b"sid=1")], Some("1.2.3.4:5"));
        assert_eq!(key_hash(&sources, &r), Some(xxh64(b"alice", 0)));
        let r = Req(vec![("cookie", b"a=b; sid = s1 ;c=d")], Some("1.2.3.4:5"));
        assert_eq!(key_hash(&sources, &r), Some(xxh64(b"s1", 0)));
        let r = Req(vec![("cookie", b"sidx=1")], Some("1.2.3.4:5"));
        assert_eq!(key_hash(&sources, &r), Some(xxh64(b"1.2.3.4", 0)), "source port does not matter");
        let r = Req(vec![(":path", b"/a/b?q=1")], None);
        assert_eq!(key_hash(&sources, &r), Some(xxh64(b"/a/b", 0)));
        assert_eq!(key_hash(&sources[..1], &Req(vec![], None)), None);
    }
}
