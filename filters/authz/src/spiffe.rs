//! SPIFFE IDs (SPIFFE ID spec §2): `spiffe://<trust-domain>/<path>`. A URI SAN that is not one gives
//! the peer no SPIFFE principal; it can then match only raw-SAN rules (`uri_sans`).

/// A valid SPIFFE ID, split into the parts rules match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    /// The ID without `spiffe://`: `<trust-domain>` or `<trust-domain>/<path>`, the form Istio calls
    /// a principal (`cluster.local/ns/default/sa/orders`).
    pub principal: String,
    /// Length of the trust domain at the start of `principal`.
    td_len: usize,
    /// `(namespace, service account)` when the path is exactly `ns/<ns>/sa/<sa>`.
    workload: Option<(String, String)>,
}

/// Longest SPIFFE ID the spec allows (§2.3: 2048 bytes for the URI).
const MAX_LEN: usize = 2048;
/// Longest trust domain (§2.1: 255 bytes).
const MAX_TD_LEN: usize = 255;

impl SpiffeId {
    /// Parses a URI SAN; `None` when it is not a valid SPIFFE ID: another scheme, an upper-case or
    /// empty trust domain, a port or user info, an empty, `.` or `..` segment, a trailing `/`, a
    /// query, a fragment, percent-encoding, or any character outside `[A-Za-z0-9._-]`.
    pub fn parse(uri: &str) -> Option<Self> {
        if uri.len() > MAX_LEN {
            return None;
        }
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let td_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
        if td.is_empty() || td.len() > MAX_TD_LEN || !td.bytes().all(td_ok) {
            return None;
        }
        let seg_ok = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
        if let Some(path) = path {
            for seg in path.split('/') {
                if seg.is_empty() || seg == "." || seg == ".." || !seg.bytes().all(seg_ok) {
                    return None;
                }
            }
        }
        let workload = path.and_then(|p| {
            let mut s = p.split('/');
            match (s.next(), s.next(), s.next(), s.next(), s.next()) {
                (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns.to_owned(), sa.to_owned())),
                _ => None,
            }
        });
        Some(Self { principal: rest.to_owned(), td_len: td.len(), workload })
    }

    pub fn trust_domain(&self) -> &str {
        &self.principal[..self.td_len]
    }

    /// The namespace, when the path is `ns/<ns>/sa/<sa>`.
    pub fn namespace(&self) -> Option<&str> {
        self.workload.as_ref().map(|(ns, _)| ns.as_str())
    }

    /// `<ns>/<sa>`, when the path is `ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<String> {
        self.workload.as_ref().map(|(ns, sa)| format!("{ns}/{sa}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_split_into_their_parts() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
        assert_eq!(id.principal, "cluster.local/ns/shop/sa/orders");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), Some("shop"));
        assert_eq!(id.service_account().as_deref(), Some("shop/orders"));
    }

    #[test]
    fn other_paths_are_ids_without_namespace() {
        for (uri, td) in [
            ("spiffe://example.org", "example.org"),
            ("spiffe://a-b_c.9/workload/x", "a-b_c.9"),
            ("spiffe://td/ns/a/sa/b/extra", "td"),
            ("spiffe://td/ns/a", "td"),
        ] {
            let id = SpiffeId::parse(uri).unwrap_or_else(|| panic!("{uri} refused"));
            assert_eq!(id.trust_domain(), td);
            assert_eq!(id.namespace(), None, "{uri}");
        }
    }

    #[test]
    fn invalid_ids_are_refused() {
        for uri in [
            "",
            "spiffe://",
            "spiffe:///ns/a/sa/b",
            "SPIFFE://td/ns/a/sa/b",
            "https://td/ns/a/sa/b",
            "spiffe://TD/ns/a/sa/b",
            "spiffe://td:8080/ns/a/sa/b",
            "spiffe://user@td/ns/a/sa/b",
            "spiffe://td/",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns/./sa/b",
            "spiffe://td/ns/../sa/b",
            "spiffe://td/ns/a/sa/b?x=1",
            "spiffe://td/ns/a/sa/b#f",
            "spiffe://td/ns/%61/sa/b",
            "spiffe://td/ns/a b/sa/b",
            "spiffe://td/ns/ä/sa/b",
        ] {
            assert_eq!(SpiffeId::parse(uri), None, "{uri:?} accepted");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_LEN));
        assert_eq!(SpiffeId::parse(&long), None);
        assert_eq!(SpiffeId::parse(&format!("spiffe://{}", "a".repeat(256))), None);
        assert!(SpiffeId::parse(&format!("spiffe://{}", "a".repeat(255))).is_some());
    }
}
