//! JWKS and PEM parsing into verification keys, and key selection for a token.
//!
//! Keys that cannot be used for signature checks are skipped, not fatal: `use: enc` keys, unknown
//! `kty`/`crv`/`alg`. A JWK's `alg`, when present, must equal the token's `alg`; a key's family (RSA, EC
//! curve, OKP, oct) must match the token's algorithm, so an RSA public key can never be used as an HMAC
//! secret (HS/RS confusion). Symmetric (`oct`) keys only ever come from the configuration: a remote
//! JWKS is public, so an `oct` key in it is skipped ([`parse_remote_jwks`]). An `oct` key verifies an
//! HS* token only when it is at least as long as the hash output (RFC 7518 §3.2).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

use crate::crypto::Material;
use serde_json::Value;

/// What a key can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl KeyFamily {
    /// Whether a key of this family may verify a token signed with `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::EcP256 => alg == ES256,
            KeyFamily::EcP384 => alg == ES384,
            KeyFamily::Ed25519 => alg == EdDSA,
            KeyFamily::Hmac => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One verification key.
#[derive(Clone, Debug)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Option<Algorithm>,
    pub family: KeyFamily,
    pub key: Material,
}

/// A set of keys (one provider's JWKS, PEM or both).
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// How many JWKs were skipped (enc keys, unsupported types); reported in logs.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS must be a JSON object with a `keys` array")]
    Shape,
    #[error("JWKS has {0} keys, more than the limit of {1}")]
    TooManyKeys(usize, usize),
    #[error("JWKS has no usable signature key ({0} skipped)")]
    NoUsableKey(usize),
    #[error("PEM is not an RSA, EC or Ed25519 public key")]
    Pem,
    #[error("RSA key of {0} bits is too small (at least 2048, RFC 7518 §3.3)")]
    WeakRsa(usize),
}

/// Upper bound of keys in one JWKS; more is a misconfiguration or an attack on CPU/memory.
pub const MAX_KEYS: usize = 100;

/// Shortest `oct` key that may verify `alg` (RFC 7518 §3.2: a key at least as long as the hash output);
/// 0 for algorithms that are not HMAC.
pub fn hmac_min_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 0,
    }
}

/// Parses a JWK `alg` value into a JWS algorithm (only the ones this filter can verify).
pub fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

fn b64(v: Option<&Value>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(v?.as_str()?).ok()
}

/// Parses one JWK; `None` when the key is not a usable signature key (or is an `oct` key and
/// `symmetric` is false).
fn parse_jwk(v: &Value, symmetric: bool) -> Option<Key> {
    let obj = v.as_object()?;
    if let Some(u) = obj.get("use")
        && u.as_str() != Some("sig")
    {
        return None;
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return None,
    };
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(s)) => Some(parse_alg(s)?),
        Some(_) => return None,
    };
    let (family, key) = match obj.get("kty")?.as_str()? {
        "RSA" => {
            let n = b64(obj.get("n"))?;
            let e = b64(obj.get("e"))?;
            // Reject keys below 2048 bits (RFC 7518 §3.3) and empty exponents.
            let n_bits = n.iter().position(|b| *b != 0).map(|i| (n.len() - i) * 8).unwrap_or(0);
            if n_bits < 2041 || e.is_empty() || e.len() > 8 {
                return None;
            }
            (KeyFamily::Rsa, Material::rsa(&n, &e)?)
        }
        "EC" => {
            let (family, len) = match obj.get("crv")?.as_str()? {
                "P-256" => (KeyFamily::EcP256, 32),
                "P-384" => (KeyFamily::EcP384, 48),
                _ => return None,
            };
            let x = b64(obj.get("x"))?;
            let y = b64(obj.get("y"))?;
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key =
                if family == KeyFamily::EcP256 { Material::p256(&point)? } else { Material::p384(&point)? };
            (family, key)
        }
        "OKP" => {
            if obj.get("crv")?.as_str()? != "Ed25519" {
                return None;
            }
            let x = b64(obj.get("x"))?;
            if x.len() != 32 {
                return None;
            }
            (KeyFamily::Ed25519, Material::ed25519(&x)?)
        }
        "oct" => {
            if !symmetric {
                return None;
            }
            let k = b64(obj.get("k"))?;
            if k.is_empty() {
                return None;
            }
            (KeyFamily::Hmac, Material::Hmac(k))
        }
        _ => return None,
    };
    if let Some(a) = alg
        && !family.fits(a)
    {
        return None;
    }
    Some(Key { kid, alg, family, key })
}

/// Parses a JWKS document (`{"keys": [...]}`) from the configuration (`oct` keys allowed).
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, JwksError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| JwksError::Json(e.to_string()))?;
    parse_jwks_value(&v)
}

/// Parses a JWKS fetched from a remote JWKS URI (or found by OIDC discovery): `oct` keys are skipped,
/// since a shared secret published on the network is no secret, and anyone could sign with it.
pub fn parse_remote_jwks(body: &[u8]) -> Result<KeySet, JwksError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| JwksError::Json(e.to_string()))?;
    parse_keys(&v, false)
}

/// Parses an already decoded JWKS document from the configuration (`oct` keys allowed).
pub fn parse_jwks_value(v: &Value) -> Result<KeySet, JwksError> {
    parse_keys(v, true)
}

fn parse_keys(v: &Value, symmetric: bool) -> Result<KeySet, JwksError> {
    let list = v.get("keys").and_then(Value::as_array).ok_or(JwksError::Shape)?;
    if list.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys(list.len(), MAX_KEYS));
    }
    let mut set = KeySet::default();
    for k in list {
        match parse_jwk(k, symmetric) {
            Some(key) => set.keys.push(key),
            None => set.skipped += 1,
        }
    }
    if set.keys.is_empty() {
        return Err(JwksError::NoUsableKey(set.skipped));
    }
    Ok(set)
}

/// Parses a PEM public key (SubjectPublicKeyInfo of RSA, EC or Ed25519, or PKCS#1 RSA).
pub fn parse_pem(pem: &str) -> Result<Key, JwksError> {
    let key = crate::crypto::from_pem(pem).ok_or(JwksError::Pem)?;
    let family = match &key {
        Material::Rsa(k, _) => {
            let bits = k.bits();
            if bits < 2048 {
                return Err(JwksError::WeakRsa(bits));
            }
            KeyFamily::Rsa
        }
        Material::P256(..) => KeyFamily::EcP256,
        Material::P384(..) => KeyFamily::EcP384,
        Material::Ed25519(_) => KeyFamily::Ed25519,
        Material::Hmac(_) => return Err(JwksError::Pem),
    };
    Ok(Key { kid: None, alg: None, family, key })
}

/// Result of looking for keys for a token.
#[derive(Debug)]
pub enum Selection<'a> {
    /// Keys to try, in order (bounded by the caller).
    Candidates(Vec<&'a Key>),
    /// The token names a kid that no key has.
    UnknownKid,
    /// No key of a family (or JWK `alg`) that fits the token's alg.
    NoMatchingKey,
}

impl KeySet {
    /// Merges another key set (a provider with a PEM and a JWKS).
    pub fn extend(&mut self, other: KeySet) {
        self.keys.extend(other.keys);
        self.skipped += other.skipped;
    }

    /// Keys that may verify a token with this `alg` and `kid`: with a kid only keys carrying that kid
    /// (duplicates allowed), without one every key; always only keys whose family and JWK `alg` fit
    /// (and `oct` keys long enough for the hash).
    pub fn select(&self, alg: Algorithm, kid: Option<&str>) -> Selection<'_> {
        let strong = |k: &Key| match &k.key {
            Material::Hmac(secret) => secret.len() >= hmac_min_len(alg),
            _ => true,
        };
        let fits = |k: &&Key| k.family.fits(alg) && k.alg.is_none_or(|a| a == alg) && strong(k);
        match kid {
            Some(kid) => {
                let mut any_kid = false;
                let c: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .inspect(|_| any_kid = true)
                    .filter(fits)
                    .collect();
                if !any_kid {
                    // Keys without a kid (a PEM) may still verify a token that carries one.
                    let kidless: Vec<&Key> =
                        self.keys.iter().filter(|k| k.kid.is_none()).filter(fits).collect();
                    if kidless.is_empty() { Selection::UnknownKid } else { Selection::Candidates(kidless) }
                } else if c.is_empty() {
                    Selection::NoMatchingKey
                } else {
                    Selection::Candidates(c)
                }
            }
            None => {
                let c: Vec<&Key> = self.keys.iter().filter(fits).collect();
                if c.is_empty() { Selection::NoMatchingKey } else { Selection::Candidates(c) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn parses_keys_and_skips_enc_and_unknown() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "EC", "kid": "e1", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "badalg", "alg": "ES256", "n": RSA_N, "e": "AQAB"},
            {"kty": "XYZ"}
        ]});
        let set = parse_jwks_value(&jwks).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1", "h1"]);
        assert_eq!(set.skipped, 4);
    }

    #[test]
    fn selection_never_crosses_families() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "k", "n": RSA_N, "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": HMAC_32},
        ]});
        let set = parse_jwks_value(&jwks).unwrap();
        // HS256 token naming the RSA key's kid: the RSA key is never an HMAC secret.
        assert!(matches!(set.select(Algorithm::HS256, Some("k")), Selection::NoMatchingKey));
        assert!(matches!(set.select(Algorithm::RS256, Some("missing")), Selection::UnknownKid));
        match set.select(Algorithm::RS256, None) {
            Selection::Candidates(c) => assert_eq!(c.len(), 1),
            other => panic!("{other:?}"),
        }
        match set.select(Algorithm::HS256, None) {
            Selection::Candidates(c) => assert_eq!(c[0].kid.as_deref(), Some("h")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jwk_alg_must_equal_token_alg() {
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "k", "alg": "RS256", "n": RSA_N, "e": "AQAB"}]});
        let set = parse_jwks_value(&jwks).unwrap();
        assert!(matches!(set.select(Algorithm::PS256, Some("k")), Selection::NoMatchingKey));
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(matches!(parse_jwks(b"nope"), Err(JwksError::Json(_))));
        assert_eq!(parse_jwks(b"{}").unwrap_err(), JwksError::Shape);
        assert_eq!(
            parse_jwks(br#"{"keys":[{"kty":"RSA","use":"enc"}]}"#).unwrap_err(),
            JwksError::NoUsableKey(1)
        );
        let many = serde_json::json!({"keys": vec![serde_json::json!({"kty":"oct","k":"AA"}); 101]});
        assert_eq!(parse_jwks_value(&many).unwrap_err(), JwksError::TooManyKeys(101, 100));
    }

    /// 32 bytes: enough for HS256 only.
    const HMAC_32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";

    #[test]
    fn remote_jwks_never_yields_symmetric_keys() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": HMAC_32, "alg": "HS256"},
            {"kty": "RSA", "kid": "r", "n": RSA_N, "e": "AQAB"},
        ]})
        .to_string();
        let set = parse_remote_jwks(body.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].family, KeyFamily::Rsa);
        assert_eq!(set.skipped, 1);
        assert!(matches!(set.select(Algorithm::HS256, Some("h")), Selection::UnknownKid));
        let only_oct = br#"{"keys":[{"kty":"oct","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;
        assert_eq!(parse_remote_jwks(only_oct).unwrap_err(), JwksError::NoUsableKey(1));
        // The configuration's JWKS keeps them.
        assert_eq!(parse_jwks(body.as_bytes()).unwrap().keys.len(), 2);
    }

    #[test]
    fn hmac_keys_shorter_than_the_hash_are_never_selected() {
        let jwks = serde_json::json!({"keys": [{"kty": "oct", "kid": "h", "k": HMAC_32}]});
        let set = parse_jwks_value(&jwks).unwrap();
        assert!(matches!(set.select(Algorithm::HS256, Some("h")), Selection::Candidates(_)));
        assert!(matches!(set.select(Algorithm::HS384, Some("h")), Selection::NoMatchingKey));
        assert!(matches!(set.select(Algorithm::HS512, None), Selection::NoMatchingKey));
        let short = serde_json::json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]});
        let set = parse_jwks_value(&short).unwrap();
        assert!(matches!(set.select(Algorithm::HS256, Some("h")), Selection::NoMatchingKey));
    }

    #[test]
    fn pem_rsa_keys_below_2048_bits_are_refused() {
        const RSA_1024: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDH1PQ7ODLVDx7LMu+ao1s+X1UB
Hjag9GbHDGeeRtF8vxfYW3jsbvX9X7QKpozRv7aS8c4yJAd1yZwciREU5vxry0qN
72yJk4tAT5EyqmWCZkgeMrST6oXTLALkZTIZjEPS5oMjKdSNLBKBa3KVv+6zFgS6
BE6Ry50kJEcudHapPwIDAQAB
-----END PUBLIC KEY-----";
        assert_eq!(parse_pem(RSA_1024).unwrap_err(), JwksError::WeakRsa(1024));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa1.pub.pem");
        let pem = std::fs::read_to_string(path).unwrap();
        assert_eq!(parse_pem(&pem).unwrap().family, KeyFamily::Rsa);
    }

    #[test]
    fn small_rsa_keys_are_skipped() {
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]});
        assert_eq!(parse_jwks_value(&jwks).unwrap_err(), JwksError::NoUsableKey(1));
    }
}
