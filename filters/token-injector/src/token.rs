//! The client-credentials token request (RFC 6749 §4.4) and strict parsing of the token response.

use meshwasm_oauth2::{AssertionError, ClientAuth, form_urlencode_into};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Plan;

/// Largest token response body read (64 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest access token accepted (16 KiB); it goes into a request header.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Headers and body of a token request.
pub type CallRequest = (Vec<(String, String)>, Vec<u8>);

/// The token request of one worker: the parts that never change, built once per plan, and the
/// client authentication, added per request ([`TokenRequest::build`]): `private_key_jwt` signs a
/// fresh assertion each time (see [`meshwasm_oauth2::assertion`]).
#[derive(Debug)]
pub struct TokenRequest {
    headers: Vec<(String, String)>,
    body: String,
    auth: Result<ClientAuth, AssertionError>,
}

impl TokenRequest {
    pub fn new(plan: &Plan) -> TokenRequest {
        let c = &plan.config;
        let mut body = String::from("grant_type=client_credentials");
        let mut param = |name: &str, value: &str| {
            body.push('&');
            body.push_str(name);
            body.push('=');
            form_urlencode_into(&mut body, value);
        };
        if !c.scopes.is_empty() {
            param("scope", &c.scopes.join(" "));
        }
        if let Some(a) = &c.audience {
            param("audience", a);
        }
        if let Some(r) = &c.resource {
            param("resource", r);
        }
        let ep = &c.token_endpoint;
        let headers = vec![
            (":method".to_owned(), "POST".to_owned()),
            (":path".to_owned(), ep.path.clone()),
            (":authority".to_owned(), ep.authority.clone()),
            ("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned()),
            ("accept".to_owned(), "application/json".to_owned()),
        ];
        let auth = ClientAuth::new(
            c.auth_method,
            &c.client_id,
            c.client_secret.as_ref(),
            c.client_assertion.as_ref(),
            format!("https://{}{}", ep.authority, ep.path),
        );
        TokenRequest { headers, body, auth }
    }

    /// Headers and body of a token request sent at `now_s` (Unix seconds); `jti` gives the random
    /// id of a client assertion. An error says why the client cannot authenticate (never a secret).
    pub fn build(
        &mut self,
        now_s: u64,
        jti: &mut dyn FnMut() -> Option<String>,
    ) -> Result<CallRequest, FetchError> {
        let auth = self.auth.as_mut().map_err(|e| FetchError::Credentials(e.to_string()))?;
        let mut headers = self.headers.clone();
        let mut body = self.body.clone();
        auth.apply(now_s, jti, &mut headers, &mut body)
            .map_err(|e| FetchError::Credentials(e.to_string()))?;
        Ok((headers, body.into_bytes()))
    }
}

/// Headers as the `&str` pairs `dispatch_http_call` takes.
pub fn header_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A usable token response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    /// `expires_in` seconds, if the response had one.
    pub expires_in: Option<u64>,
}

/// Why no token could be had. Messages never contain the token or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("token request timed out")]
    Timeout,
    #[error("token endpoint refused: HTTP {status}, error `{error}`{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused { status: u32, error: String, description: Option<String> },
    #[error("token endpoint answered HTTP {0}")]
    Status(u32),
    #[error("token response is malformed: {0}")]
    Malformed(String),
    #[error("cannot authenticate to the token endpoint: {0}")]
    Credentials(String),
}

impl FetchError {
    /// The reason told to downstream clients in the 503 reply: for a refusal only the status and the
    /// OAuth `error` code (RFC 6749 §5.2 limits it to printable ASCII; anything else is dropped). The
    /// IdP's free-text `error_description` stays in the proxy log ([`Display`](std::fmt::Display)),
    /// never in replies. Other kinds carry only meshwasm's own wording.
    pub fn client_reason(&self) -> String {
        match self {
            FetchError::Refused { status, error, .. } => {
                let code: String = error
                    .chars()
                    .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
                    .take(64)
                    .collect();
                format!("token endpoint refused: HTTP {status}, error `{code}`")
            }
            other => other.to_string(),
        }
    }
}

/// Parses the token endpoint's answer (RFC 6749 §5.1/§5.2).
pub fn parse_token_response(status: u32, body: &[u8]) -> Result<Token, FetchError> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(FetchError::Malformed(format!(
            "{} bytes is over the {MAX_RESPONSE_BYTES}-byte cap",
            body.len()
        )));
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status != 200 {
        // §5.2 error response: report the IdP's `error` (a short ASCII code), never the body verbatim.
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(Value::as_str)
                .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
        };
        return match field("error") {
            Some(error) => {
                Err(FetchError::Refused { status, error, description: field("error_description") })
            }
            None => Err(FetchError::Status(status)),
        };
    }
    let malformed = |m: &str| FetchError::Malformed(m.to_owned());
    let Some(Value::Object(obj)) = json else {
        return Err(malformed("not a JSON object"));
    };
    let access_token = match obj.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(malformed("`access_token` is empty")),
        Some(_) => return Err(malformed("`access_token` is not a string")),
        None => return Err(malformed("`access_token` is missing")),
    };
    if access_token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("`access_token` is too long"));
    }
    // RFC 6750 §2.1 b64token: it goes into a header, so nothing else is accepted.
    if !is_b64token(&access_token) {
        return Err(malformed("`access_token` has characters not allowed in a Bearer token"));
    }
    match obj.get("token_type") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            let t: String = t.chars().filter(char::is_ascii_alphanumeric).take(32).collect();
            return Err(FetchError::Malformed(format!("`token_type` is `{t}`, not Bearer")));
        }
        Some(_) => return Err(malformed("`token_type` is not a string")),
    }
    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            Some(n.as_u64().ok_or_else(|| malformed("`expires_in` is not a non-negative integer"))?)
        }
        // Some servers send it as a string of digits; accept exactly that.
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        Some(_) => return Err(malformed("`expires_in` is not a number")),
    };
    if expires_in == Some(0) {
        return Err(malformed("`expires_in` is 0"));
    }
    Ok(Token { access_token, expires_in })
}

fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

/// Short hex prefix of a token's SHA-256, for logs (never log tokens).
pub fn token_log_id(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn plan(extra: Value) -> Plan {
        let mut v = json!({
            "token_endpoint": {"cluster": "idp", "path": "/oauth/token", "authority": "idp.local"},
            "client_id": "svc:a b",
            "client_secret": "p@ss:w+rd/%&=",
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Plan::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn header<'a>(r: &'a Built, name: &str) -> Option<&'a str> {
        r.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    type Built = (Vec<(String, String)>, Vec<u8>);

    fn built(plan: &Plan) -> Built {
        TokenRequest::new(plan).build(1_000, &mut || Some("j".into())).unwrap()
    }

    #[test]
    fn basic_request() {
        let r = built(&plan(json!({"scopes": ["read", "write:all"], "audience": "https://api/"})));
        assert_eq!(header(&r, ":method"), Some("POST"));
        assert_eq!(header(&r, ":path"), Some("/oauth/token"));
        assert_eq!(header(&r, ":authority"), Some("idp.local"));
        assert_eq!(header(&r, "content-type"), Some("application/x-www-form-urlencoded"));
        let auth = header(&r, "authorization").unwrap();
        let raw =
            base64::engine::general_purpose::STANDARD.decode(auth.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(String::from_utf8(raw).unwrap(), "svc%3Aa+b:p%40ss%3Aw%2Brd%2F%25%26%3D");
        assert_eq!(
            String::from_utf8(r.1.clone()).unwrap(),
            "grant_type=client_credentials&scope=read+write%3Aall&audience=https%3A%2F%2Fapi%2F"
        );
        assert!(!String::from_utf8_lossy(&r.1).contains("client_secret"));
    }

    #[test]
    fn post_request() {
        let r = built(&plan(json!({"auth_method": "client_secret_post", "resource": "urn:x"})));
        assert_eq!(header(&r, "authorization"), None);
        assert_eq!(
            String::from_utf8(r.1.clone()).unwrap(),
            "grant_type=client_credentials&resource=urn%3Ax&client_id=svc%3Aa+b&client_secret=p%40ss%3Aw%2Brd%2F%25%26%3D"
        );
        assert_eq!(header_refs(&r.0).len(), r.0.len());
    }

    const EC_KEY: &str = include_str!("../../jwt-auth/tests/keys/ec1.pem");
    const EC_PUB: &str = include_str!("../../jwt-auth/tests/keys/ec1.pub.pem");

    fn key_plan(assertion: Value) -> Plan {
        let env = |k: &str| (k == "TI_KEY").then(|| EC_KEY.to_owned());
        let mut v = json!({
            "token_endpoint": {"cluster": "idp", "path": "/oauth/token", "authority": "idp.local"},
            "client_id": "svc", "auth_method": "private_key_jwt", "scopes": ["read"],
        });
        v["client_assertion"] = assertion;
        Plan::from_json_with_env(v.to_string().as_bytes(), &env).unwrap()
    }

    fn form(body: &[u8]) -> Vec<(String, String)> {
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let v = v.replace('+', " ");
                let mut out = Vec::new();
                let b = v.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' {
                        out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                (k.to_owned(), String::from_utf8(out).unwrap())
            })
            .collect()
    }

    #[test]
    fn private_key_jwt_request_carries_a_signed_assertion() {
        let p = key_plan(json!({"private_key_env": "TI_KEY", "alg": "ES256", "key_id": "k1"}));
        assert!(!format!("{p:?}").contains("PRIVATE KEY"), "{p:?}");
        let mut r = TokenRequest::new(&p);
        assert!(!format!("{r:?}").contains("PRIVATE KEY"));
        let (headers, body) = r.build(1_700_000_000, &mut || Some("jti-1".into())).unwrap();
        assert!(headers.iter().all(|(k, _)| k != "authorization"));
        let f = form(&body);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("grant_type").as_deref(), Some("client_credentials"));
        assert_eq!(get("scope").as_deref(), Some("read"));
        assert_eq!(get("client_secret"), None);
        assert_eq!(
            get("client_assertion_type").as_deref(),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        // Verified with the public key, as the authorization server does.
        let jwt = get("client_assertion").unwrap();
        let key = jsonwebtoken::DecodingKey::from_ec_pem(EC_PUB.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.validate_exp = false;
        v.set_audience(&["https://idp.local/oauth/token"]);
        v.set_issuer(&["svc"]);
        let t = jsonwebtoken::decode::<Value>(&jwt, &key, &v).unwrap();
        assert_eq!(t.header.kid.as_deref(), Some("k1"));
        assert_eq!(
            t.claims,
            json!({"iss": "svc", "sub": "svc", "aud": "https://idp.local/oauth/token", "jti": "jti-1",
                   "iat": 1_700_000_000u64, "exp": 1_700_000_060u64})
        );
        // The next request gets a new assertion (a new jti): OIDC Core §9 allows one use.
        let (_, body2) = r.build(1_700_000_001, &mut || Some("jti-2".into())).unwrap();
        assert!(String::from_utf8(body2).unwrap().contains("client_assertion="));
        // No randomness: no request, and the error says why.
        let e = r.build(1_700_000_002, &mut || None).unwrap_err();
        assert!(e.to_string().contains("jti"), "{e}");
    }

    #[test]
    fn private_key_jwt_config_errors_name_the_field() {
        let env = |k: &str| match k {
            "TI_KEY" => Some(EC_KEY.to_owned()),
            "NOT_PEM" => Some("hello".to_owned()),
            _ => None,
        };
        let run = |patch: Value| {
            let mut v = json!({
                "token_endpoint": {"cluster": "idp", "path": "/t", "authority": "idp"},
                "client_id": "svc", "auth_method": "private_key_jwt",
                "client_assertion": {"private_key_env": "TI_KEY", "alg": "ES256"},
            });
            for (k, x) in patch.as_object().unwrap() {
                if x.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = x.clone();
                }
            }
            Plan::from_json_with_env(v.to_string().as_bytes(), &env)
        };
        let field = |patch: Value| run(patch).unwrap_err();
        let e = field(json!({"client_assertion": null}));
        assert_eq!(
            (e.path(), e.reason()),
            ("client_assertion", "is required with auth_method private_key_jwt")
        );
        let e = field(json!({"client_secret": "x"}));
        assert_eq!(e.path(), "client_secret");
        let e = field(json!({"client_secret_env": "TI_KEY"}));
        assert_eq!(e.path(), "client_secret_env");
        let e = field(json!({"client_assertion": {"private_key_env": "UNSET"}}));
        assert_eq!(e.path(), "client_assertion.private_key_env");
        assert!(e.reason().contains("`UNSET` is unset or empty"), "{e}");
        let e = field(json!({"client_assertion": {"private_key_env": "NOT_PEM"}}));
        assert_eq!(e.path(), "client_assertion.private_key_env");
        assert!(e.reason().contains("does not hold an RSA private key"), "{e}");
        // An EC key for an RSA algorithm (the default RS256) or the other curve's ES384.
        let e = field(json!({"client_assertion": {"private_key_env": "TI_KEY", "alg": "ES384"}}));
        assert_eq!(e.path(), "client_assertion.alg", "{e}");
        let e = field(json!({"client_assertion": {"private_key_env": "TI_KEY", "alg": "HS256"}}));
        assert_eq!(e.path(), "client_assertion.alg", "{e}");
        for (patch, path) in [
            (json!({"lifetime": "0s"}), "client_assertion.lifetime"),
            (json!({"lifetime": "6m"}), "client_assertion.lifetime"),
            (json!({"lifetime": "1500ms"}), "client_assertion.lifetime"),
            (json!({"key_id": ""}), "client_assertion.key_id"),
            (json!({"audience": ""}), "client_assertion.audience"),
            (json!({"private_key": "inline"}), "client_assertion.private_key"),
        ] {
            let mut a = json!({"private_key_env": "TI_KEY", "alg": "ES256"});
            for (k, x) in patch.as_object().unwrap() {
                a[k] = x.clone();
            }
            let e = field(json!({"client_assertion": a}));
            assert_eq!(e.path(), path, "{e}");
        }
        // A client assertion with a secret method.
        let e = field(json!({"auth_method": "client_secret_basic", "client_secret": "s"}));
        assert_eq!(e.path(), "client_assertion");
        // No error message carries the key.
        let e = field(json!({"client_assertion": {"private_key_env": "TI_KEY", "alg": "ES384"}}));
        assert!(!format!("{e} {e:?}").contains("PRIVATE"), "{e}");
        assert!(run(json!({})).is_ok());
    }

    #[test]
    fn good_responses() {
        let t = parse_token_response(
            200,
            br#"{"access_token":"abc.def-_~+/==","token_type":"Bearer","expires_in":3600}"#,
        )
        .unwrap();
        assert_eq!(t, Token { access_token: "abc.def-_~+/==".into(), expires_in: Some(3600) });
        let t =
            parse_token_response(200, br#"{"access_token":"x","token_type":"bearer","expires_in":"3599"}"#)
                .unwrap();
        assert_eq!(t.expires_in, Some(3599));
        let t = parse_token_response(200, br#"{"access_token":"x"}"#).unwrap();
        assert_eq!(t.expires_in, None);
    }

    #[test]
    fn bad_responses() {
        let bad: &[&[u8]] = &[
            b"",
            b"[]",
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":""}"#,
            br#"{"access_token":5}"#,
            br#"{"access_token":"a b"}"#,
            br#"{"access_token":"a\r\nx-evil: 1"}"#,
            br#"{"access_token":"==="}"#,
            br#"{"access_token":"x","token_type":"mac"}"#,
            br#"{"access_token":"x","token_type":1}"#,
            br#"{"access_token":"x","expires_in":-1}"#,
            br#"{"access_token":"x","expires_in":1.5}"#,
            br#"{"access_token":"x","expires_in":"1h"}"#,
            br#"{"access_token":"x","expires_in":0}"#,
            br#"{"access_token":"x","expires_in":true}"#,
        ];
        for b in bad {
            let r = parse_token_response(200, b);
            assert!(matches!(r, Err(FetchError::Malformed(_))), "{} → {r:?}", String::from_utf8_lossy(b));
        }
        let long = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(parse_token_response(200, long.as_bytes()), Err(FetchError::Malformed(_))));
        let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert!(matches!(parse_token_response(200, &huge), Err(FetchError::Malformed(_))));
    }

    #[test]
    fn idp_errors_are_reported() {
        let e = parse_token_response(
            401,
            br#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            FetchError::Refused {
                status: 401,
                error: "invalid_client".into(),
                description: Some("client authentication failed".into())
            }
        );
        assert_eq!(
            e.to_string(),
            "token endpoint refused: HTTP 401, error `invalid_client`: client authentication failed"
        );
        assert_eq!(parse_token_response(503, b"<html>busy</html>").unwrap_err(), FetchError::Status(503));
        // 200 with an error body is malformed, not success.
        assert!(matches!(parse_token_response(200, br#"{"error":"x"}"#), Err(FetchError::Malformed(_))));
        // Control characters from the IdP do not reach the log line.
        let e = parse_token_response(400, b"{\"error\":\"bad\\r\\nline\"}").unwrap_err();
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn log_id_is_short_and_stable() {
        assert_eq!(token_log_id("abc"), token_log_id("abc"));
        assert_eq!(token_log_id("abc").len(), 8);
        assert_ne!(token_log_id("abc"), token_log_id("abd"));
    }
}
