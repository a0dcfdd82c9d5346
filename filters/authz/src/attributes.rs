//! What a request brings to the decision: the peer's identity from the mTLS connection, the token's
//! principal and claims handed on by jwt-auth, the source address and the request itself. The glue
//! reads them from Envoy's properties and headers (only those the policies use); here they are plain
//! values, so that evaluation is tested natively.
//!
//! ## Envoy attributes read (Envoy 1.40, `source/extensions/filters/common/expr/context.cc`)
//! - [`MTLS`]: true when the client presented a certificate (`peerCertificatePresented`);
//! - [`URI_SAN`], [`DNS_SAN`]: the **first** URI / DNS SAN of the peer certificate only (Envoy has no
//!   attribute listing them all);
//! - [`SUBJECT`]: the peer certificate's subject (RFC 2253);
//! - [`SHA256_DIGEST`]: the hex SHA-256 digest of the peer certificate.
//!
//! ## The identity jwt-auth hands on
//! jwt-auth writes these with `proxy_set_property` after it verified a token. Envoy stores a value
//! set through a single-segment path `p` as filter state `wasm.p` (a `CelState` of type bytes, living
//! as long as the filter chain), which a later wasm filter reads back with `get_property([p])` and
//! Envoy's RBAC matches as `filter_state` key `wasm.p`. A property that is absent means no verified
//! token: no request principal.

use std::net::IpAddr;

use meshwasm_filter_runtime::identity;

use crate::spiffe::SpiffeId;

/// `connection.mtls`: one byte, 1 when the peer presented a certificate.
pub const MTLS: &[&str] = &["connection", "mtls"];
pub const URI_SAN: &[&str] = &["connection", "uri_san_peer_certificate"];
pub const DNS_SAN: &[&str] = &["connection", "dns_san_peer_certificate"];
pub const SUBJECT: &[&str] = &["connection", "subject_peer_certificate"];
pub const SHA256_DIGEST: &[&str] = &["connection", "sha256_peer_certificate_digest"];
pub const SOURCE_ADDRESS: &[&str] = &["source", "address"];

/// The verified token's principal, `<iss>/<sub>` (Istio's `request.auth.principal`).
pub const REQUEST_PRINCIPAL: &str = identity::PRINCIPAL;
/// The name of the jwt-auth provider that verified the token.
pub const REQUEST_PROVIDER: &str = identity::PROVIDER;
/// Prefix of one property per claim jwt-auth is configured to hand on (`meshwasm.jwt.claim.groups`);
/// the value is the claim's JSON (`"admin"`, `["a","b"]`, `42`).
pub const REQUEST_CLAIM_PREFIX: &str = identity::CLAIM_PREFIX;
/// The prefix Envoy puts before a `set_property` path in filter state.
pub const FILTER_STATE_PREFIX: &str = identity::FILTER_STATE_PREFIX;

/// The caller as its mTLS connection shows it. A plaintext connection (or TLS without a client
/// certificate) has no identity at all: [`Peer::default`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub mtls: bool,
    pub uri_san: Option<String>,
    pub dns_san: Option<String>,
    pub subject: Option<String>,
    pub sha256: Option<String>,
    /// The SPIFFE ID in `uri_san`, when it is a valid one.
    pub spiffe: Option<SpiffeId>,
}

impl Peer {
    /// The peer of a connection: when `mtls` is false the certificate fields are ignored (a
    /// plaintext connection has no principal whatever else is set).
    pub fn new(
        mtls: bool,
        uri_san: Option<String>,
        dns_san: Option<String>,
        subject: Option<String>,
        sha256: Option<String>,
    ) -> Self {
        if !mtls {
            return Self::default();
        }
        let spiffe = uri_san.as_deref().and_then(SpiffeId::parse);
        Self { mtls, uri_san, dns_san, subject, sha256: sha256.map(|d| d.to_ascii_lowercase()), spiffe }
    }
}

/// Everything a decision may look at. Fields the policies do not use are left empty by the glue.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub method: Vec<u8>,
    /// The normalized path (`meshwasm_path::normalize`), query excluded.
    pub path: String,
    /// `:authority`, lower-cased.
    pub authority: Vec<u8>,
    pub peer: Peer,
    pub source_ip: Option<IpAddr>,
    /// `<iss>/<sub>` from jwt-auth, if a token was verified.
    pub request_principal: Option<Vec<u8>>,
    pub request_provider: Option<Vec<u8>>,
    /// Claims by name, each as its list of string values (a string claim is one value; an array
    /// claim its elements; a number or boolean its JSON text).
    pub claims: Vec<(String, Vec<Vec<u8>>)>,
    /// Request headers the policies name (lower-case), with every value the request carries.
    pub headers: Vec<(String, Vec<Vec<u8>>)>,
}

impl Attributes {
    pub fn header(&self, name: &str) -> &[Vec<u8>] {
        self.headers.iter().find(|(n, _)| n == name).map_or(&[], |(_, v)| v.as_slice())
    }

    pub fn claim(&self, name: &str) -> &[Vec<u8>] {
        self.claims.iter().find(|(n, _)| n == name).map_or(&[], |(_, v)| v.as_slice())
    }
}

/// The values of a claim property (its JSON, as jwt-auth writes it): a string is one value, an
/// array its elements (strings as they are, others as JSON), a number or boolean its JSON text,
/// `null` nothing. Bytes that are not JSON give nothing (fail closed: such a claim matches no rule).
pub fn claim_values(json: &[u8]) -> Vec<Vec<u8>> {
    fn one(v: &serde_json::Value) -> Option<Vec<u8>> {
        match v {
            serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
            serde_json::Value::Null => None,
            other => Some(other.to_string().into_bytes()),
        }
    }
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(serde_json::Value::Array(items)) => items.iter().filter_map(one).collect(),
        Ok(v) => one(&v).into_iter().collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_connection_has_no_identity() {
        let p = Peer::new(false, Some("spiffe://td/ns/a/sa/b".into()), Some("x".into()), None, None);
        assert_eq!(p, Peer::default());
        let p = Peer::new(true, Some("spiffe://td/ns/a/sa/b".into()), None, None, Some("AB12".into()));
        assert_eq!(p.spiffe.unwrap().principal, "td/ns/a/sa/b");
        assert_eq!(p.sha256.as_deref(), Some("ab12"));
    }

    #[test]
    fn a_san_that_is_not_spiffe_gives_no_spiffe_id() {
        let p = Peer::new(true, Some("spiffe://TD/ns/a/sa/b".into()), None, None, None);
        assert!(p.spiffe.is_none());
        assert_eq!(p.uri_san.as_deref(), Some("spiffe://TD/ns/a/sa/b"));
    }

    #[test]
    fn claim_values_from_json() {
        assert_eq!(claim_values(br#""admin""#), vec![b"admin".to_vec()]);
        assert_eq!(
            claim_values(br#"["a", 1, null, true]"#),
            vec![b"a".to_vec(), b"1".to_vec(), b"true".to_vec()]
        );
        assert_eq!(claim_values(b"42"), vec![b"42".to_vec()]);
        assert!(claim_values(b"null").is_empty());
        assert!(claim_values(b"not json").is_empty());
        assert_eq!(claim_values(br#"{"a":1}"#), vec![br#"{"a":1}"#.to_vec()]);
    }
}
