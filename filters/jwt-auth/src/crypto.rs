//! Signature verification with the RustCrypto primitives jsonwebtoken's `rust_crypto` backend uses
//! (rsa, p256, p384, ed25519-dalek, hmac, sha2), called directly on keys parsed once when the JWKS is
//! loaded. Going through `jsonwebtoken::crypto::verify` would link its whole crypto provider, signers
//! and PEM/ASN.1 machinery included, and re-parse the key on every token.

use ed25519_dalek::Verifier as _;
use hmac::Mac as _;
use jsonwebtoken::Algorithm;
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// A parsed verification key.
#[derive(Clone, Debug)]
pub enum Material {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Hmac(Vec<u8>),
}

impl Material {
    /// RSA from big-endian modulus and exponent (2048 to 4096 bits, as the rsa crate allows).
    pub fn rsa(n: &[u8], e: &[u8]) -> Option<Self> {
        let key = RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e)).ok()?;
        Some(Material::Rsa(key))
    }

    /// EC from an uncompressed SEC1 point of the given curve.
    pub fn p256(point: &[u8]) -> Option<Self> {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(point).ok().map(Material::P256)
    }

    pub fn p384(point: &[u8]) -> Option<Self> {
        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).ok().map(Material::P384)
    }

    pub fn ed25519(x: &[u8]) -> Option<Self> {
        let bytes: [u8; 32] = x.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok().map(Material::Ed25519)
    }
}

fn rsa_verify(key: &RsaPublicKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    use Algorithm::*;
    match alg {
        RS256 => key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg), sig).is_ok(),
        RS384 => key.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(msg), sig).is_ok(),
        RS512 => key.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(msg), sig).is_ok(),
        PS256 => key.verify(Pss::new::<Sha256>(), &Sha256::digest(msg), sig).is_ok(),
        PS384 => key.verify(Pss::new::<Sha384>(), &Sha384::digest(msg), sig).is_ok(),
        PS512 => key.verify(Pss::new::<Sha512>(), &Sha512::digest(msg), sig).is_ok(),
        _ => false,
    }
}

fn hmac_verify(secret: &[u8], alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    // `verify_slice` compares in constant time.
    macro_rules! check {
        ($h:ty) => {
            match hmac::Hmac::<$h>::new_from_slice(secret) {
                Ok(mut m) => {
                    m.update(msg);
                    m.verify_slice(sig).is_ok()
                }
                Err(_) => false,
            }
        };
    }
    match alg {
        Algorithm::HS256 => check!(Sha256),
        Algorithm::HS384 => check!(Sha384),
        Algorithm::HS512 => check!(Sha512),
        _ => false,
    }
}

/// Whether `sig` (raw bytes, JWS encoding: r||s for ECDSA) is a valid signature of `msg` under `key`
/// for `alg`. A key of another family never verifies.
pub fn verify(key: &Material, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    match (key, alg) {
        (Material::Rsa(k), _) => rsa_verify(k, alg, msg, sig),
        (Material::P256(k), Algorithm::ES256) => {
            p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        (Material::P384(k), Algorithm::ES384) => {
            p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        (Material::Ed25519(k), Algorithm::EdDSA) => {
            ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| k.verify_strict(msg, &s).is_ok())
        }
        (Material::Hmac(secret), _) => hmac_verify(secret, alg, msg, sig),
        _ => false,
    }
}

/// Parses a PEM public key: SubjectPublicKeyInfo (RSA, EC P-256/P-384, Ed25519) or PKCS#1 RSA.
pub fn from_pem(pem: &str) -> Option<Material> {
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    if let Ok(k) = RsaPublicKey::from_public_key_pem(pem) {
        return Some(Material::Rsa(k));
    }
    if let Ok(k) = RsaPublicKey::from_pkcs1_pem(pem) {
        return Some(Material::Rsa(k));
    }
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Some(Material::P256(k));
    }
    if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Some(Material::P384(k));
    }
    // Ed25519 SubjectPublicKeyInfo: a fixed 12-byte prefix and the 32-byte key.
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    let key =
        der.strip_prefix(&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00][..])?;
    Material::ed25519(key)
}
