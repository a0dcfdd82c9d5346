//! The request path as rules see it (`meshwasm-path`), and route matching on it: jwt-auth rules
//! and the balancer's service selection.

use std::collections::HashMap;
use std::sync::OnceLock;

use meshwasm_balancer::config::ServiceSource;
use meshwasm_balancer::request::{RequestView, key_hash, service_name};
use meshwasm_path::{exact_matches, normalize as norm};

/// Path normalization and its invariants: the result is absolute, has no empty, `.` or `..`
/// segment and no query, and normalizes to itself.
pub fn normalize(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(n) = norm(raw) else { return };
    assert!(n.starts_with('/'), "{raw:?} normalized to {n:?}, which is not absolute");
    assert!(!n.contains("//"), "{raw:?} normalized to {n:?}, which has an empty segment");
    assert!(!n.contains('?'), "{raw:?} normalized to {n:?}, which has a query");
    assert!(
        !n.split('/').any(|s| s == "." || s == ".."),
        "{raw:?} normalized to {n:?}, which has a dot segment"
    );
    match norm(&n) {
        Ok(again) => assert_eq!(again, n, "normalizing {raw:?} is not idempotent"),
        Err(e) => panic!("{raw:?} normalized to {n:?}, which is refused: {e}"),
    }
    let _ = exact_matches(&n, "/admin");
    let _ = exact_matches(&n, "/admin/");
}

struct View(HashMap<&'static str, Vec<u8>>);

impl RequestView for View {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.get(name).cloned()
    }
    fn source_address(&self) -> Option<String> {
        self.0.get("source").map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

fn sources() -> &'static [ServiceSource] {
    static S: OnceLock<Vec<ServiceSource>> = OnceLock::new();
    S.get_or_init(|| {
        vec![
            ServiceSource::Header("x-service".into()),
            ServiceSource::Route { prefix: "/api/".into(), service: "api".into() },
            ServiceSource::Route { prefix: "/admin".into(), service: "admin".into() },
            ServiceSource::Authority,
        ]
    })
}

/// Route matching: the input is split at the first two NUL bytes into `:path`, `:authority` and a
/// cookie header; the balancer picks a service and a hash key from them, and a path that
/// normalizes under a route prefix must select that route.
pub fn route(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0);
    let path = parts.next().unwrap_or_default();
    let authority = parts.next().unwrap_or_default();
    let cookie = parts.next().unwrap_or_default();
    let mut h: HashMap<&'static str, Vec<u8>> = HashMap::new();
    h.insert(":path", path.to_vec());
    h.insert(":authority", authority.to_vec());
    h.insert("cookie", cookie.to_vec());
    h.insert("source", authority.to_vec());
    let view = View(h);
    let picked = service_name(sources(), &view);
    if let Ok(Ok(n)) = std::str::from_utf8(path).map(norm) {
        let want = if n.starts_with("/api/") {
            Some("api")
        } else if n.starts_with("/admin") {
            Some("admin")
        } else {
            None
        };
        if let Some(want) = want {
            assert_eq!(picked.ok().flatten().as_deref(), Some(want), "path {n:?} routed elsewhere");
        }
    }
    use meshwasm_balancer::config::HashSource;
    let _ = key_hash(
        &[
            HashSource::Cookie("session".into()),
            HashSource::SourceIp,
            HashSource::Path,
            HashSource::Header(":authority".into()),
        ],
        &view,
    );
}
