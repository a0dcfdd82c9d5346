//! How meshwasm's filters authenticate as OAuth2 clients: the `application/x-www-form-urlencoded`
//! encoding of token and introspection requests, and HTTP Basic client credentials as RFC 6749 §2.3.1
//! wants them (id and secret form-urlencoded *before* base64, so both may contain `:` or non-ASCII).
//! Used by `token-injector` (client-credentials grant) and `jwt-auth` (RFC 7662 introspection).
//!
//! ```
//! let mut body = String::from("grant_type=client_credentials&scope=");
//! meshwasm_oauth2::form_urlencode_into(&mut body, "read write");
//! assert_eq!(body, "grant_type=client_credentials&scope=read+write");
//! assert_eq!(meshwasm_oauth2::basic_authorization("rs", "rs-secret"), "Basic cnM6cnMtc2VjcmV0");
//! ```

use base64::Engine as _;

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let mut raw = String::with_capacity(client_id.len() + client_secret.len() + 1);
    form_urlencode_into(&mut raw, client_id);
    raw.push(':');
    form_urlencode_into(&mut raw, client_secret);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Appends `s` encoded as `application/x-www-form-urlencoded` (WHATWG URL standard: space → `+`,
/// alphanumerics and `*-._` kept, every other byte percent-encoded).
pub fn form_urlencode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(header: &str) -> String {
        let b64 = header.strip_prefix("Basic ").unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        // RFC 6749 §2.3.1: "svc:a b" / "p@ss:w+rd/%&=" → "svc%3Aa+b:p%40ss%3Aw%2Brd%2F%25%26%3D".
        assert_eq!(
            decoded(&basic_authorization("svc:a b", "p@ss:w+rd/%&=")),
            "svc%3Aa+b:p%40ss%3Aw%2Brd%2F%25%26%3D"
        );
        // Non-ASCII is UTF-8 percent-encoded.
        assert_eq!(decoded(&basic_authorization("ü", "x")), "%C3%BC:x");
    }

    #[test]
    fn form_encoding_keeps_only_unreserved() {
        let mut s = String::new();
        form_urlencode_into(&mut s, "aZ09*-._ ~+/=&%");
        assert_eq!(s, "aZ09*-._+%7E%2B%2F%3D%26%25");
    }
}
