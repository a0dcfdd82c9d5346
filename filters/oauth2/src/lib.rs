//! How meshwasm's filters authenticate as OAuth2 clients: the `application/x-www-form-urlencoded`
//! encoding of token and introspection requests, and HTTP Basic client credentials as RFC 6749 §2.3.1
//! wants them (id and secret form-urlencoded *before* base64, so both may contain `:` or non-ASCII).
//! Used by `token-injector` (client-credentials grant) and `jwt-auth` (RFC 7662 introspection), which
//! also share the configuration of it: [`AuthMethod`] (the RFC 7591 names `client_secret_basic` and
//! `client_secret_post`) and [`Secret`], whose `Debug` and `Display` never show the secret.
//!
//! ```
//! let mut body = String::from("grant_type=client_credentials&scope=");
//! meshwasm_oauth2::form_urlencode_into(&mut body, "read write");
//! assert_eq!(body, "grant_type=client_credentials&scope=read+write");
//! assert_eq!(meshwasm_oauth2::basic_authorization("rs", "rs-secret"), "Basic cnM6cnMtc2VjcmV0");
//! ```

use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

/// How a client authenticates to the authorization server (RFC 6749 §2.3.1), named as in the
/// RFC 7591 `token_endpoint_auth_method` registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `Authorization: Basic base64(urlencode(client_id) ":" urlencode(client_secret))`.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// A configured secret. `Debug` and `Display` print `<redacted>`, so a logged config, plan or
/// error never carries it; [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: only for building a request, never for a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Adds client authentication to a form-encoded request: an `authorization` header for
/// `client_secret_basic`, or `&client_id=..&client_secret=..` appended to `body` for
/// `client_secret_post`.
pub fn authenticate(
    method: AuthMethod,
    client_id: &str,
    secret: &Secret,
    headers: &mut Vec<(String, String)>,
    body: &mut String,
) {
    match method {
        AuthMethod::ClientSecretBasic => {
            headers.push(("authorization".to_owned(), basic_authorization(client_id, secret.expose())));
        }
        AuthMethod::ClientSecretPost => {
            body.push_str("&client_id=");
            form_urlencode_into(body, client_id);
            body.push_str("&client_secret=");
            form_urlencode_into(body, secret.expose());
        }
    }
}

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
    fn secret_never_prints() {
        let s: Secret = serde_json::from_str(r#""hunter2""#).unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(
            format!("{s:?} {s} {s:#?} {:?}", Some(&s)),
            "<redacted> <redacted> <redacted> Some(<redacted>)"
        );
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Cfg {
            client_secret: Secret,
        }
        assert!(!format!("{:?}", Cfg { client_secret: s }).contains("hunter2"));
    }

    #[test]
    fn auth_methods_use_the_rfc_7591_names() {
        let m = |j: &str| serde_json::from_str::<AuthMethod>(j);
        assert_eq!(m(r#""client_secret_basic""#).unwrap(), AuthMethod::ClientSecretBasic);
        assert_eq!(m(r#""client_secret_post""#).unwrap(), AuthMethod::ClientSecretPost);
        assert!(m(r#""basic""#).is_err());
        assert_eq!(AuthMethod::default(), AuthMethod::ClientSecretBasic);
    }

    #[test]
    fn authenticate_by_header_or_body() {
        let secret = Secret::new("p w");
        let (mut headers, mut body) = (Vec::new(), String::from("token=t"));
        authenticate(AuthMethod::ClientSecretBasic, "id", &secret, &mut headers, &mut body);
        assert_eq!(headers, [("authorization".to_owned(), basic_authorization("id", "p w"))]);
        assert_eq!(body, "token=t");
        let (mut headers, mut body) = (Vec::new(), String::from("token=t"));
        authenticate(AuthMethod::ClientSecretPost, "i d", &secret, &mut headers, &mut body);
        assert!(headers.is_empty());
        assert_eq!(body, "token=t&client_id=i+d&client_secret=p+w");
    }

    #[test]
    fn form_encoding_keeps_only_unreserved() {
        let mut s = String::new();
        form_urlencode_into(&mut s, "aZ09*-._ ~+/=&%");
        assert_eq!(s, "aZ09*-._+%7E%2B%2F%3D%26%25");
    }
}
