//! The JWT signer tests use: the PEM keys in `filters/jwt-auth/tests/keys`, their public JWKs, and
//! tokens signed with them (`jsonwebtoken`), so the wasmtime-host and real-Envoy tests of jwt-auth sign
//! alike.
//!
//! ```no_run
//! use meshwasm_tests::signer::{Signer, jwks, now};
//! let s = Signer::rsa("rsa1.pem", "r1");
//! let keys = jwks(&[&s]); // {"keys": [<public JWK with kid r1>]}
//! let token = s.mint(&serde_json::json!({"iss": "https://idp.test", "exp": now() + 3600}));
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::artifacts::workspace_root;

/// The bytes of a test key in `filters/jwt-auth/tests/keys` (e.g. `rsa1.pem`, `ec1.pem`).
///
/// # Panics
/// When the file cannot be read.
pub fn test_key(file: &str) -> Vec<u8> {
    let path = workspace_root().join("filters/jwt-auth/tests/keys").join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("meshwasm tests: test key {}: {e}", path.display()))
}

/// Seconds since the Unix epoch, for `exp`/`iat`/`nbf` claims.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A signing key with its algorithm and the `kid` its tokens and JWK carry (none when `None`).
pub struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
}

impl Signer {
    /// A PEM key from `filters/jwt-auth/tests/keys`: EC for `ES*`, RSA otherwise.
    ///
    /// # Panics
    /// When the file is missing or is not a key of that kind.
    pub fn new(file: &str, alg: Algorithm, kid: Option<&str>) -> Self {
        let pem = test_key(file);
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap_or_else(|e| panic!("meshwasm tests: test key {file} for {alg:?}: {e}"));
        Signer { key, alg, kid: kid.map(str::to_owned) }
    }

    /// RS256 with an RSA key file.
    pub fn rsa(file: &str, kid: &str) -> Self {
        Self::new(file, Algorithm::RS256, Some(kid))
    }

    /// ES256 with a P-256 key file.
    pub fn ec(file: &str, kid: &str) -> Self {
        Self::new(file, Algorithm::ES256, Some(kid))
    }

    /// HS256 keyed with `secret` (for the tests that show symmetric keys are refused).
    pub fn hs256(secret: &[u8], kid: Option<&str>) -> Self {
        Signer { key: EncodingKey::from_secret(secret), alg: Algorithm::HS256, kid: kid.map(str::to_owned) }
    }

    /// The public JWK (with `kid` when the signer has one).
    ///
    /// # Panics
    /// For an HMAC signer, which has no public JWK.
    pub fn jwk(&self) -> Value {
        let mut j = Jwk::from_encoding_key(&self.key, self.alg)
            .unwrap_or_else(|e| panic!("meshwasm tests: JWK of a {:?} key: {e}", self.alg));
        j.common.key_id = self.kid.clone();
        serde_json::to_value(j).unwrap_or_default()
    }

    /// A token with `claims`, header `alg` and `kid` (when the signer has one).
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with(claims, |_| {})
    }

    /// A token whose header names `kid` instead of the signer's own.
    pub fn mint_kid(&self, kid: &str, claims: &Value) -> String {
        self.mint_with(claims, |h| h.kid = Some(kid.to_owned()))
    }

    /// A token whose header `edit` changes after `alg` and `kid` are set (e.g. `typ`).
    ///
    /// # Panics
    /// When signing fails.
    pub fn mint_with(&self, claims: &Value, edit: impl FnOnce(&mut Header)) -> String {
        let mut h = Header::new(self.alg);
        h.kid = self.kid.clone();
        edit(&mut h);
        jsonwebtoken::encode(&h, claims, &self.key)
            .unwrap_or_else(|e| panic!("meshwasm tests: signing a {:?} token: {e}", self.alg))
    }
}

/// A JWKS document (`{"keys": [...]}`) listing the signers' public keys, as text.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>() }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

    fn verify(token: &str, jwk: &Value, alg: Algorithm) -> Value {
        let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &v).unwrap().claims
    }

    #[test]
    fn tokens_verify_against_the_published_jwk_and_carry_the_kid() {
        let claims = json!({"sub": "alice", "exp": now() + 60});
        for (s, alg) in [
            (Signer::rsa("rsa1.pem", "r1"), Algorithm::RS256),
            (Signer::ec("ec1.pem", "e1"), Algorithm::ES256),
        ] {
            let t = s.mint(&claims);
            assert_eq!(verify(&t, &s.jwk(), alg), claims);
            assert_eq!(decode_header(&t).unwrap().kid, s.kid);
            assert_eq!(s.jwk()["kid"], json!(s.kid));
        }
    }

    #[test]
    fn kid_can_be_absent_or_overridden_and_the_header_edited() {
        let claims = json!({"exp": now() + 60});
        let none = Signer::new("rsa2.pem", Algorithm::RS256, None);
        assert_eq!(decode_header(none.mint(&claims)).unwrap().kid, None);
        assert!(none.jwk().get("kid").is_none());
        let s = Signer::ec("ec1.pem", "e1");
        assert_eq!(decode_header(s.mint_kid("other", &claims)).unwrap().kid.as_deref(), Some("other"));
        let typed = s.mint_with(&claims, |h| h.typ = Some("at+jwt".into()));
        let h = decode_header(&typed).unwrap();
        assert_eq!((h.typ.as_deref(), h.kid.as_deref()), (Some("at+jwt"), Some("e1")));
        let list: Value = serde_json::from_str(&jwks(&[&s, &none])).unwrap();
        assert_eq!(list["keys"].as_array().map(Vec::len), Some(2));
    }
}
