//! Wire encodings of the proxy-wasm ABI: header-map pairs and property values.

use base64::Engine;
use serde_json::{Value, json};

/// Encodes pairs in the proxy-wasm map format: u32 count, (u32 key_len, u32 value_len)*, then
/// `key\0value\0` for each pair, all little-endian.
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Decodes the map format; `None` when malformed. An empty slice is an empty map.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.len() < 4 {
        return if bytes.iter().all(|b| *b == 0) { Some(Vec::new()) } else { None };
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = bytes.get(at..at + kl)?.to_vec();
        at += kl + 1;
        let v = bytes.get(at..at + vl)?.to_vec();
        at += vl + 1;
        out.push((k, v));
    }
    Some(out)
}

/// Pairs as JSON `[[key, value], ...]` (lossy UTF-8).
pub fn pairs_json(pairs: &[(Vec<u8>, Vec<u8>)]) -> Value {
    Value::Array(pairs.iter().map(|(k, v)| json!([lossy(k), lossy(v)])).collect())
}

/// Lossy UTF-8.
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Base64 (standard alphabet, padded).
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// How to show a property value in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decode {
    /// Lossy UTF-8.
    #[default]
    String,
    /// Base64 of the raw bytes.
    Bytes,
    /// 8 bytes little-endian, unsigned.
    U64,
    /// 8 bytes little-endian, signed.
    I64,
    /// 1 byte.
    Bool,
    /// A map in the pairs format.
    Pairs,
    /// Only the length (for values that differ between hosts, e.g. times, ids).
    Len,
}

/// Decodes a property value for the trace; an undecodable value is shown as `{"undecodable": b64}`.
pub fn decode_value(bytes: &[u8], how: Decode) -> Value {
    let bad = || json!({ "undecodable": b64(bytes) });
    match how {
        Decode::String => json!(lossy(bytes)),
        Decode::Bytes => json!(b64(bytes)),
        Decode::U64 => {
            <[u8; 8]>::try_from(bytes).map(|b| json!(u64::from_le_bytes(b))).unwrap_or_else(|_| bad())
        }
        Decode::I64 => {
            <[u8; 8]>::try_from(bytes).map(|b| json!(i64::from_le_bytes(b))).unwrap_or_else(|_| bad())
        }
        Decode::Bool => match bytes {
            [b] => json!(*b != 0),
            _ => bad(),
        },
        Decode::Pairs => decode_pairs(bytes).map(|p| pairs_json(&p)).unwrap_or_else(bad),
        Decode::Len => json!(bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = vec![(b":path".to_vec(), b"/a".to_vec()), (b"x".to_vec(), b"".to_vec())];
        let enc = encode_pairs(&pairs);
        assert_eq!(&enc[..4], &2u32.to_le_bytes());
        assert_eq!(decode_pairs(&enc), Some(pairs));
        assert_eq!(decode_pairs(&[]), Some(vec![]));
        assert_eq!(decode_pairs(&[0]), Some(vec![]));
        assert_eq!(decode_pairs(&[5, 0, 0, 0, 1]), None);
    }

    #[test]
    fn values_decode() {
        assert_eq!(decode_value(&7u64.to_le_bytes(), Decode::U64), json!(7));
        assert_eq!(decode_value(&(-2i64).to_le_bytes(), Decode::I64), json!(-2));
        assert_eq!(decode_value(&[1], Decode::Bool), json!(true));
        assert_eq!(decode_value(b"abc", Decode::Len), json!(3));
        assert_eq!(decode_value(b"abc", Decode::U64), json!({"undecodable": "YWJj"}));
    }
}
