//! Signature verification with the RustCrypto primitives jsonwebtoken's `rust_crypto` backend uses
//! (rsa, p256, p384, ed25519-dalek, hmac, sha2), called directly on keys parsed once when the JWKS is
//! loaded. Going through `jsonwebtoken::crypto::verify` would link its whole crypto provider, signers
//! and PEM/ASN.1 machinery included, and re-parse the key on every token.

use ed25519_dalek::Verifier as _;
use hmac::Mac as _;
use jsonwebtoken::Algorithm;
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// A host-provided verifier (Envoy's `verify_signature` foreign function, BoringSSL):
/// `(hash name, DER SubjectPublicKeyInfo, DER signature, message) -> Some(valid)`, or `None` when the call
/// failed (then the pure-Rust path decides).
pub type NativeVerifier = fn(&str, &[u8], &[u8], &[u8]) -> Option<bool>;

thread_local! {
    static NATIVE: std::cell::Cell<Option<NativeVerifier>> = const { std::cell::Cell::new(None) };
}

/// Installs (or removes) the host verifier used for RS256/384/512 and ES256/384.
pub fn set_native_verifier(v: Option<NativeVerifier>) {
    NATIVE.with(|n| n.set(v));
}

fn native() -> Option<NativeVerifier> {
    NATIVE.with(std::cell::Cell::get)
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(content.len() + 4);
    v.push(tag);
    der_len(&mut v, content.len());
    v.extend_from_slice(content);
    v
}

/// DER INTEGER of an unsigned big-endian number.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0u8][..],
    };
    let mut c = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        c.push(0);
    }
    c.extend_from_slice(trimmed);
    der(0x02, &c)
}

/// SubjectPublicKeyInfo of an RSA key.
pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut seq = der_uint(n);
    seq.extend(der_uint(e));
    let rsa_key = der(0x30, &seq);
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    // AlgorithmIdentifier { rsaEncryption, NULL }
    let mut body =
        vec![0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    body.extend(der(0x03, &bits));
    der(0x30, &body)
}

/// SubjectPublicKeyInfo of an uncompressed EC point (P-256: 65 bytes, P-384: 97 bytes).
pub fn ec_spki(point: &[u8]) -> Vec<u8> {
    let mut body: Vec<u8> = if point.len() == 65 {
        vec![
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
            0xce, 0x3d, 0x03, 0x01, 0x07,
        ]
    } else {
        vec![
            0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
            0x00, 0x22,
        ]
    };
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    body.extend(der(0x03, &bits));
    der(0x30, &body)
}

/// JWS ECDSA signature (r || s) to DER `SEQUENCE { INTEGER r, INTEGER s }`.
pub fn ecdsa_der(sig: &[u8]) -> Vec<u8> {
    let (r, s) = sig.split_at(sig.len() / 2);
    let mut seq = der_uint(r);
    seq.extend(der_uint(s));
    der(0x30, &seq)
}

/// A parsed verification key.
#[derive(Clone, Debug)]
pub enum Material {
    /// The key and its DER SubjectPublicKeyInfo (for the host verifier).
    Rsa(RsaPublicKey, Vec<u8>),
    P256(p256::ecdsa::VerifyingKey, Vec<u8>),
    P384(p384::ecdsa::VerifyingKey, Vec<u8>),
    Ed25519(ed25519_dalek::VerifyingKey),
    Hmac(Vec<u8>),
}

impl Material {
    /// RSA from big-endian modulus and exponent (2048 to 4096 bits, as the rsa crate allows).
    pub fn rsa(n: &[u8], e: &[u8]) -> Option<Self> {
        let key = RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e)).ok()?;
        Some(Material::Rsa(key, rsa_spki(n, e)))
    }

    /// EC from an uncompressed SEC1 point of the given curve.
    pub fn p256(point: &[u8]) -> Option<Self> {
        let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).ok()?;
        Some(Material::P256(k, ec_spki(&k.to_encoded_point(false).to_bytes())))
    }

    pub fn p384(point: &[u8]) -> Option<Self> {
        let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).ok()?;
        Some(Material::P384(k, ec_spki(&k.to_encoded_point(false).to_bytes())))
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
    if let Some(native) = native() {
        let hash = match alg {
            Algorithm::RS256 | Algorithm::ES256 => "sha256",
            Algorithm::RS384 | Algorithm::ES384 => "sha384",
            Algorithm::RS512 => "sha512",
            _ => "",
        };
        let answer = match (key, alg) {
            (Material::Rsa(_, spki), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) => {
                native(hash, spki, sig, msg)
            }
            (Material::P256(_, spki), Algorithm::ES256) if sig.len() == 64 => {
                native(hash, spki, &ecdsa_der(sig), msg)
            }
            (Material::P384(_, spki), Algorithm::ES384) if sig.len() == 96 => {
                native(hash, spki, &ecdsa_der(sig), msg)
            }
            _ => None,
        };
        if let Some(valid) = answer {
            return valid;
        }
    }
    match (key, alg) {
        (Material::Rsa(k, _), _) => rsa_verify(k, alg, msg, sig),
        (Material::P256(k, _), Algorithm::ES256) => {
            p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        (Material::P384(k, _), Algorithm::ES384) => {
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
    use rsa::traits::PublicKeyParts as _;
    let rsa_key =
        RsaPublicKey::from_public_key_pem(pem).ok().or_else(|| RsaPublicKey::from_pkcs1_pem(pem).ok());
    if let Some(k) = rsa_key {
        return Material::rsa(&k.n().to_bytes_be(), &k.e().to_bytes_be());
    }
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Material::p256(&k.to_encoded_point(false).to_bytes());
    }
    if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Material::p384(&k.to_encoded_point(false).to_bytes());
    }
    // Ed25519 SubjectPublicKeyInfo: a fixed 12-byte prefix and the 32-byte key.
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    let key =
        der.strip_prefix(&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00][..])?;
    Material::ed25519(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_encodings() {
        assert_eq!(der_uint(&[0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_uint(&[0x00, 0x00]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_uint(&[0x7f]), vec![0x02, 0x01, 0x7f]);
        let sig = [[0x80u8; 32], [0x01u8; 32]].concat();
        let d = ecdsa_der(&sig);
        assert_eq!(&d[..4], &[0x30, 0x45, 0x02, 0x21]);
        // The SPKI built from n/e parses back to the same key.
        use rsa::pkcs8::DecodePublicKey as _;
        let n = [[0xc5u8].as_slice(), &[0x11u8; 255]].concat();
        let spki = rsa_spki(&n, &[1, 0, 1]);
        let k = RsaPublicKey::from_public_key_der(&spki).unwrap();
        use rsa::traits::PublicKeyParts as _;
        assert_eq!(k.n().to_bytes_be(), n);
        let point = p256::ecdsa::VerifyingKey::from_sec1_bytes(&[
            4, 0xd3, 0x83, 0x74, 0xc6, 0x2d, 0xb5, 0x86, 0xc8, 0x72, 0xbc, 0x1a, 0x7b, 0x23, 0x5e, 0xbb,
            0xb1, 0x31, 0x3f, 0x6d, 0x7a, 0xb2, 0xaa, 0x40, 0x0f, 0x7d, 0xe7, 0xdd, 0x92, 0x53, 0x0e, 0xef,
            0x06, 0x50, 0x8f, 0x1e, 0xc7, 0x2f, 0x82, 0xd3, 0xa6, 0xbb, 0x0d, 0x49, 0xe3, 0x21, 0xd1, 0x0d,
            0x93, 0x17, 0x85, 0xb4, 0x73, 0x38, 0xfa, 0x5f, 0xf8, 0xd4, 0xba, 0x84, 0xc3, 0xd9, 0xd5, 0x82,
            0x6c,
        ]);
        if let Ok(k) = point {
            let spki = ec_spki(&k.to_encoded_point(false).to_bytes());
            assert_eq!(p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap(), k);
        }
    }

    #[test]
    fn native_verifier_is_consulted_and_falls_back() {
        let secret = Material::Hmac(b"k".to_vec());
        set_native_verifier(Some(|_, _, _, _| Some(true)));
        // HMAC never goes to the host.
        assert!(!verify(&secret, Algorithm::HS256, b"m", b"bad"));
        set_native_verifier(None);
    }
}
