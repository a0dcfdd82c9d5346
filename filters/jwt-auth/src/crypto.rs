//! Signature verification: RS256/384/512 and ES256/384 through the host's `verify_signature` (Envoy's
//! foreign function, BoringSSL; [`set_native_verifier`]), EdDSA and HS* always in the guest, and the
//! RustCrypto RSA/ECDSA verifiers (rsa, p256, p384: the ones jsonwebtoken's `rust_crypto` backend
//! uses, called directly on keys parsed once) only where built: always natively, in .wasm builds with
//! the `guest-rsa` / `guest-ec` features (build.rs sets the `guest_rsa` / `guest_ec` cfgs). Without
//! them a token the host cannot verify fails (PS* always, RS*/ES* on a host without `verify_signature`):
//! they are most of the artifact's size (P-384 166 KB, RSA big integers 140 KB, P-256 ~60 KB).
//! Public keys (JWK members, PEM) are parsed here, with a small DER reader, in every build.

use hmac::Mac as _;
use jsonwebtoken::Algorithm;
#[cfg(guest_ec)]
use p256::ecdsa::signature::Verifier as _;
use sha2::{Sha256, Sha384, Sha512};

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

/// An RSA public key: its size, and the RustCrypto key where the in-guest verifier is built.
#[derive(Clone, Debug)]
pub struct RsaKey {
    bits: usize,
    #[cfg(guest_rsa)]
    key: rsa::RsaPublicKey,
}

impl RsaKey {
    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }
}

/// The in-guest P-256 / P-384 verifying keys (`()` where the ECDSA verifiers are not built).
#[cfg(guest_ec)]
pub type P256Key = p256::ecdsa::VerifyingKey;
#[cfg(not(guest_ec))]
pub type P256Key = ();
#[cfg(guest_ec)]
pub type P384Key = p384::ecdsa::VerifyingKey;
#[cfg(not(guest_ec))]
pub type P384Key = ();

/// A parsed verification key.
#[derive(Clone, Debug)]
pub enum Material {
    /// The key and its DER SubjectPublicKeyInfo (for the host verifier).
    Rsa(RsaKey, Vec<u8>),
    P256(P256Key, Vec<u8>),
    P384(P384Key, Vec<u8>),
    Ed25519(ed25519_dalek::VerifyingKey),
    Hmac(Vec<u8>),
}

/// Whether this build verifies `alg` in the guest, without the host (EdDSA and HS* always; RSA and
/// ECDSA with the `guest-rsa` / `guest-ec` features).
pub fn built_in(alg: Algorithm) -> bool {
    use Algorithm::*;
    let rsa = matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512);
    let ec = matches!(alg, ES256 | ES384);
    (!rsa || cfg!(guest_rsa)) && (!ec || cfg!(guest_ec))
}

/// Whether the host's `verify_signature` can verify `alg` (PKCS#1 v1.5 RSA and ECDSA; not PSS, whose
/// padding Envoy never selects, nor Ed25519, which takes no digest).
pub fn host_capable(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(alg, RS256 | RS384 | RS512 | ES256 | ES384)
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

impl Material {
    /// RSA from big-endian modulus and exponent: at most 4096 bits and an exponent in 2..2^33, the
    /// bounds of the rsa crate (the caller refuses keys below 2048 bits).
    pub fn rsa(n: &[u8], e: &[u8]) -> Option<Self> {
        let (n, e) = (strip_zeros(n), strip_zeros(e));
        let first = *n.first()?;
        let bits = n.len() * 8 - first.leading_zeros() as usize;
        let e_value = if e.len() > 8 { u64::MAX } else { e.iter().fold(0u64, |a, x| a << 8 | u64::from(*x)) };
        if bits > 4096 || !(2..1 << 33).contains(&e_value) {
            return None;
        }
        let spki = rsa_spki(n, e);
        #[cfg(guest_rsa)]
        let key =
            rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e)).ok()?;
        Some(Material::Rsa(
            RsaKey {
                bits,
                #[cfg(guest_rsa)]
                key,
            },
            spki,
        ))
    }

    /// EC P-256 from an uncompressed SEC1 point (65 bytes). With the in-guest verifier the point is
    /// checked to be on the curve here; without it the host refuses a bad point at verification.
    pub fn p256(point: &[u8]) -> Option<Self> {
        if point.len() != 65 || point[0] != 4 {
            return None;
        }
        #[cfg(guest_ec)]
        let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).ok()?;
        #[cfg(not(guest_ec))]
        let k = ();
        Some(Material::P256(k, ec_spki(point)))
    }

    /// EC P-384 from an uncompressed SEC1 point (97 bytes); as [`Material::p256`].
    pub fn p384(point: &[u8]) -> Option<Self> {
        if point.len() != 97 || point[0] != 4 {
            return None;
        }
        #[cfg(guest_ec)]
        let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).ok()?;
        #[cfg(not(guest_ec))]
        let k = ();
        Some(Material::P384(k, ec_spki(point)))
    }

    pub fn ed25519(x: &[u8]) -> Option<Self> {
        let bytes: [u8; 32] = x.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok().map(Material::Ed25519)
    }
}

#[cfg(guest_rsa)]
fn rsa_verify(key: &rsa::RsaPublicKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    use Algorithm::*;
    use rsa::{Pkcs1v15Sign, Pss};
    use sha2::Digest as _;
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
/// for `alg`. A key of another family never verifies, nor does an algorithm neither the host nor
/// this build can verify (fail closed).
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
        #[cfg(guest_rsa)]
        (Material::Rsa(k, _), _) => rsa_verify(&k.key, alg, msg, sig),
        #[cfg(guest_ec)]
        (Material::P256(k, _), Algorithm::ES256) => {
            p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        #[cfg(guest_ec)]
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

/// One DER element: (tag, content, what follows). Definite lengths up to 64 KiB.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l, b) = b.split_first()?;
    let (len, b) = match l {
        0..=0x7f => (usize::from(l), b),
        0x81 => (usize::from(*b.first()?), b.get(1..)?),
        0x82 => (usize::from(*b.first()?) << 8 | usize::from(*b.get(1)?), b.get(2..)?),
        _ => return None,
    };
    let (content, rest) = b.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (PKCS#1).
fn rsa_public_key(der: &[u8]) -> Option<Material> {
    let (0x30, seq, []) = tlv(der)? else { return None };
    let (0x02, n, rest) = tlv(seq)? else { return None };
    let (0x02, e, []) = tlv(rest)? else { return None };
    Material::rsa(n, e)
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// `SubjectPublicKeyInfo` of RSA, EC P-256/P-384 (uncompressed point) or Ed25519.
fn spki(der: &[u8]) -> Option<Material> {
    let (0x30, body, []) = tlv(der)? else { return None };
    let (0x30, alg, rest) = tlv(body)? else { return None };
    let (0x03, bits, []) = tlv(rest)? else { return None };
    let (0, key) = bits.split_first()? else { return None };
    let (0x06, oid, params) = tlv(alg)? else { return None };
    match oid {
        OID_RSA => rsa_public_key(key),
        OID_EC => match tlv(params)? {
            (0x06, OID_P256, []) => Material::p256(key),
            (0x06, OID_P384, []) => Material::p384(key),
            _ => None,
        },
        OID_ED25519 if params.is_empty() => Material::ed25519(key),
        _ => None,
    }
}

/// Parses a PEM public key: SubjectPublicKeyInfo (RSA, EC P-256/P-384, Ed25519) or PKCS#1 RSA.
pub fn from_pem(pem: &str) -> Option<Material> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    spki(&der).or_else(|| rsa_public_key(&der))
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
        let k = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
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

    fn pem(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn pem_public_keys_of_every_family_parse_as_the_rustcrypto_parsers_read_them() {
        use rsa::pkcs8::DecodePublicKey as _;
        use rsa::traits::PublicKeyParts as _;
        let rsa_pem = pem("rsa1.pub.pem");
        let Some(Material::Rsa(k, spki)) = from_pem(&rsa_pem) else { panic!("rsa1.pub.pem") };
        let reference = rsa::RsaPublicKey::from_public_key_pem(&rsa_pem).unwrap();
        assert_eq!(k.bits(), reference.n().bits());
        assert_eq!(rsa::RsaPublicKey::from_public_key_der(&spki).unwrap(), reference);
        // PKCS#1 (`RSA PUBLIC KEY`).
        use rsa::pkcs1::DecodeRsaPublicKey as _;
        let pkcs1 = pem("rsa1.pkcs1.pem");
        let Some(Material::Rsa(_, spki)) = from_pem(&pkcs1) else { panic!("PKCS#1") };
        assert_eq!(
            rsa::RsaPublicKey::from_public_key_der(&spki).unwrap(),
            rsa::RsaPublicKey::from_pkcs1_pem(&pkcs1).unwrap()
        );
        let ec_pem = pem("ec1.pub.pem");
        let Some(Material::P256(k, spki)) = from_pem(&ec_pem) else { panic!("ec1.pub.pem") };
        assert_eq!(k, p256::ecdsa::VerifyingKey::from_public_key_pem(&ec_pem).unwrap());
        assert_eq!(p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap(), k);
        assert!(matches!(from_pem(&pem("ed1.pub.pem")), Some(Material::Ed25519(_))));
        // P-384 SPKI, built from a generated key.
        use p384::pkcs8::EncodePublicKey as _;
        let k384 = *p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap().verifying_key();
        let pem384 = k384.to_public_key_pem(p384::pkcs8::LineEnding::LF).unwrap();
        let Some(Material::P384(k, _)) = from_pem(&pem384) else { panic!("P-384") };
        assert_eq!(k, k384);
        // Private keys, truncated or garbled input are no public keys.
        for bad in [
            pem("rsa1.pem"),
            pem("ec1.pem"),
            rsa_pem[..200].to_string(),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n".into(),
        ] {
            assert!(from_pem(&bad).is_none());
        }
    }

    #[test]
    fn rsa_bounds_are_the_rsa_crates() {
        let n = [[0xc5u8].as_slice(), &[0x11u8; 255]].concat();
        assert_eq!(
            Material::rsa(&[&[0u8, 0][..], &n].concat(), &[1, 0, 1]).map(|m| match m {
                Material::Rsa(k, _) => k.bits(),
                _ => 0,
            }),
            Some(2048)
        );
        assert!(Material::rsa(&[0xffu8; 513], &[1, 0, 1]).is_none(), "above 4096 bits");
        assert!(Material::rsa(&n, &[1]).is_none(), "exponent 1");
        assert!(Material::rsa(&n, &[2, 0, 0, 0, 0]).is_none(), "exponent 2^33");
        assert!(Material::rsa(&[], &[1, 0, 1]).is_none());
        // An off-curve point is refused where the ECDSA verifier is built (natively, always).
        let mut point = [4u8; 65];
        point[64] = 5;
        assert!(Material::p256(&point).is_none());
        assert!(Material::p256(&point[..33]).is_none(), "compressed points are not taken");
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
