//! Foreign functions (`proxy_call_foreign_function`) through a registry: Envoy's `verify_signature` and
//! `clear_route_cache` are built in; tests may register more. Unknown names give NOT_FOUND.
//!
//! `set_envoy_filter_state` writes the calling stream's filter state, so it is not in the registry:
//! the hostcall handles it ([`set_envoy_filter_state`] checks the arguments as Envoy does). The one
//! key with an object factory here is Envoy's ORIGINAL_DST override,
//! [`ORIGINAL_DST_FILTER_STATE_KEY`]; an `original_dst` cluster of `serve` reads it before any header
//! ([`original_dst_from_filter_state`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::abi::{BAD_ARGUMENT, NOT_FOUND};

/// A foreign function: arguments in, result bytes out, or a proxy-wasm status code on failure.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, u32> + Send + Sync>;

/// The built-in registry.
pub(crate) fn builtins() -> HashMap<String, ForeignFunction> {
    let mut m: HashMap<String, ForeignFunction> = HashMap::new();
    m.insert("verify_signature".into(), Arc::new(verify_signature));
    // Envoy clears the route cache; this host has no route cache, so it is a successful no-op.
    m.insert("clear_route_cache".into(), Arc::new(|_: &[u8]| Ok(Vec::new())));
    m
}

/// Reads a protobuf message's length-delimited and varint fields: (field number, bytes or varint).
fn parse_proto(mut b: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(&mut b)?;
                out.push((field, v.to_le_bytes().to_vec()));
            }
            2 => {
                let len = varint(&mut b)? as usize;
                let v = b.get(..len)?.to_vec();
                b = &b[len..];
                out.push((field, v));
            }
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

fn encode_result(ok: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if ok {
        out.extend_from_slice(&[0x08, 0x01]);
    }
    if !error.is_empty() {
        out.push(0x12);
        let mut len = error.len();
        loop {
            let mut byte = (len & 0x7f) as u8;
            len >>= 7;
            if len != 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(error.as_bytes());
    }
    out
}

enum Key {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

fn parse_key(der: Option<&[u8]>, pem: Option<&str>) -> Option<Key> {
    use rsa::pkcs8::DecodePublicKey;
    if let Some(der) = der {
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
            return Some(Key::Rsa(k));
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Some(Key::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Some(Key::P384(k));
        }
        return None;
    }
    let pem = pem?;
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(pem) {
        return Some(Key::Rsa(k));
    }
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Some(Key::P256(k));
    }
    if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Some(Key::P384(k));
    }
    None
}

/// Envoy's `verify_signature`: `VerifySignatureArguments { 1 hash_function, 2 public_key (DER SPKI),
/// 3 signature, 4 text, 5 public_key_pem }` → `VerifySignatureResult { 1 result, 2 error }`.
/// RSA is PKCS#1 v1.5; ECDSA (P-256, P-384) expects a DER signature. An unparseable message or key, or
/// both key forms at once, gives BAD_ARGUMENT; an unknown hash or a wrong signature gives OK with result false and Envoy's error text.
pub fn verify_signature(args: &[u8]) -> Result<Vec<u8>, u32> {
    use sha2::Digest;
    let fields = parse_proto(args).ok_or(BAD_ARGUMENT)?;
    let get = |n: u64| fields.iter().rev().find(|(f, _)| *f == n).map(|(_, v)| v.as_slice());
    let hash = String::from_utf8_lossy(get(1).unwrap_or_default()).into_owned();
    let der = get(2).filter(|k| !k.is_empty());
    let pem = get(5).and_then(|p| std::str::from_utf8(p).ok()).filter(|p| !p.is_empty());
    let signature = get(3).unwrap_or_default();
    let text = get(4).unwrap_or_default();
    if der.is_some() && pem.is_some() {
        // Envoy rejects a message carrying both key forms.
        return Err(BAD_ARGUMENT);
    }
    let key = parse_key(der, pem).ok_or(BAD_ARGUMENT)?;
    let digest: Vec<u8> = match hash.as_str() {
        "sha1" => sha1::Sha1::digest(text).to_vec(),
        "sha224" => sha2::Sha224::digest(text).to_vec(),
        "sha256" => sha2::Sha256::digest(text).to_vec(),
        "sha384" => sha2::Sha384::digest(text).to_vec(),
        "sha512" => sha2::Sha512::digest(text).to_vec(),
        other => return Ok(encode_result(false, &format!("{other} is not supported."))),
    };
    let ok = match key {
        Key::Rsa(k) => {
            let scheme = match hash.as_str() {
                "sha1" => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
                "sha224" => rsa::Pkcs1v15Sign::new::<sha2::Sha224>(),
                "sha256" => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                "sha384" => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                _ => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
            };
            k.verify(scheme, &digest, signature).is_ok()
        }
        Key::P256(k) => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            p256::ecdsa::Signature::from_der(signature).is_ok_and(|s| k.verify_prehash(&digest, &s).is_ok())
        }
        Key::P384(k) => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            p384::ecdsa::Signature::from_der(signature).is_ok_and(|s| k.verify_prehash(&digest, &s).is_ok())
        }
    };
    if ok {
        Ok(encode_result(true, ""))
    } else {
        Ok(encode_result(false, "Failed to verify digest. Error code: 0"))
    }
}

/// A protobuf message of length-delimited fields `(number, bytes)`, in the order given.
fn encode_bytes_fields(fields: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (field, v) in fields {
        out.push(field << 3 | 2);
        let mut len = v.len();
        loop {
            let mut byte = (len & 0x7f) as u8;
            len >>= 7;
            if len != 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(v);
    }
    out
}

/// Encodes `VerifySignatureArguments` (for tests and native callers).
pub fn encode_verify_args(hash: &str, public_key_der: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    encode_bytes_fields(&[(1, hash.as_bytes()), (2, public_key_der), (3, signature), (4, text)])
}

/// Decodes `VerifySignatureResult` into (result, error).
pub fn decode_verify_result(b: &[u8]) -> Option<(bool, String)> {
    let fields = parse_proto(b)?;
    let ok = fields.iter().any(|(f, v)| *f == 1 && v.first().copied().unwrap_or(0) != 0);
    let err = fields
        .iter()
        .find(|(f, _)| *f == 2)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    Some((ok, err))
}

/// The foreign function that sets Envoy filter state on the calling stream.
pub const SET_ENVOY_FILTER_STATE: &str = "set_envoy_filter_state";

/// The filter-state key Envoy's ORIGINAL_DST cluster takes the upstream `ip:port` from
/// (`OriginalDstClusterFilterStateFactory`, read before metadata and the optional header).
pub const ORIGINAL_DST_FILTER_STATE_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// Envoy's `set_envoy_filter_state`: `SetEnvoyFilterStateArguments { 1 path, 2 value, 3 span }` →
/// the (key, value) to store on the stream. As in Envoy (`Context::setEnvoyFilterState`): an
/// unparseable message is BAD_ARGUMENT, a key without an object factory NOT_FOUND, a value the
/// factory refuses (for the ORIGINAL_DST key: not an `ip:port` literal) BAD_ARGUMENT. The life span
/// is ignored: here filter state lives as long as the stream.
pub fn set_envoy_filter_state(args: &[u8]) -> Result<(String, Vec<u8>), u32> {
    let fields = parse_proto(args).ok_or(BAD_ARGUMENT)?;
    let get = |n: u64| fields.iter().rev().find(|(f, _)| *f == n).map(|(_, v)| v.as_slice());
    let key = std::str::from_utf8(get(1).unwrap_or_default()).map_err(|_| BAD_ARGUMENT)?;
    let value = get(2).unwrap_or_default();
    if key != ORIGINAL_DST_FILTER_STATE_KEY {
        return Err(NOT_FOUND);
    }
    parse_address(value).ok_or(BAD_ARGUMENT)?;
    Ok((key.to_owned(), value.to_vec()))
}

/// The ORIGINAL_DST override address in a stream's filter state (last write wins), if set.
pub fn original_dst_from_filter_state(filter_state: &[(String, Vec<u8>)]) -> Option<SocketAddr> {
    let (_, v) = filter_state.iter().rev().find(|(k, _)| k == ORIGINAL_DST_FILTER_STATE_KEY)?;
    parse_address(v)
}

/// An `ip:port` literal (IPv6 in brackets), as Envoy's address object factory parses it.
fn parse_address(v: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Encodes `SetEnvoyFilterStateArguments` (span left at its default), for tests and native callers.
pub fn encode_set_filter_state_args(key: &str, value: &[u8]) -> Vec<u8> {
    encode_bytes_fields(&[(1, key.as_bytes()), (2, value)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_envoy_filter_state_checks_like_envoy() {
        let ok = encode_set_filter_state_args(ORIGINAL_DST_FILTER_STATE_KEY, b"10.0.0.1:80");
        assert_eq!(
            set_envoy_filter_state(&ok),
            Ok((ORIGINAL_DST_FILTER_STATE_KEY.to_owned(), b"10.0.0.1:80".to_vec()))
        );
        // A span (field 3, varint) is accepted and ignored.
        let mut with_span = ok.clone();
        with_span.extend_from_slice(&[0x18, 0x01]);
        assert!(set_envoy_filter_state(&with_span).is_ok());
        let v6 = encode_set_filter_state_args(ORIGINAL_DST_FILTER_STATE_KEY, b"[::1]:8080");
        assert!(set_envoy_filter_state(&v6).is_ok());
        for bad in [&b"localhost:80"[..], b"10.0.0.1", b"", b"10.0.0.1:80 "] {
            let args = encode_set_filter_state_args(ORIGINAL_DST_FILTER_STATE_KEY, bad);
            assert_eq!(set_envoy_filter_state(&args), Err(BAD_ARGUMENT), "{bad:?}");
        }
        let unknown = encode_set_filter_state_args("my.key", b"x");
        assert_eq!(set_envoy_filter_state(&unknown), Err(NOT_FOUND));
        assert_eq!(set_envoy_filter_state(&[0x0a, 0x05, b'a']), Err(BAD_ARGUMENT));
    }

    #[test]
    fn the_last_original_dst_write_wins() {
        let fs = vec![
            (ORIGINAL_DST_FILTER_STATE_KEY.to_owned(), b"10.0.0.1:80".to_vec()),
            ("other".to_owned(), b"10.0.0.9:80".to_vec()),
            (ORIGINAL_DST_FILTER_STATE_KEY.to_owned(), b"10.0.0.2:80".to_vec()),
        ];
        assert_eq!(original_dst_from_filter_state(&fs), Some("10.0.0.2:80".parse().unwrap()));
        assert_eq!(original_dst_from_filter_state(&fs[1..2]), None);
    }
}
