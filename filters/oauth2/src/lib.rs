//! How meshwasm's filters authenticate as OAuth2 clients: the `application/x-www-form-urlencoded`
//! encoding of token and introspection requests, and HTTP Basic client credentials as RFC 6749 §2.3.1
//! wants them (id and secret form-urlencoded *before* base64, so both may contain `:` or non-ASCII).
//! Used by `token-injector` (client-credentials grant) and `jwt-auth` (RFC 7662 introspection), which
//! also share the configuration of it: [`AuthMethod`] (the RFC 7591 names `client_secret_basic`,
//! `client_secret_post` and `private_key_jwt`), [`Secret`], whose `Debug` and `Display` never show the
//! secret, and [`ClientAssertionConfig`] for `private_key_jwt` (RFC 7523, [`assertion`]). A worker
//! authenticates its requests through one [`ClientAuth`].
//!
//! ```
//! let mut body = String::from("grant_type=client_credentials&scope=");
//! meshwasm_oauth2::form_urlencode_into(&mut body, "read write");
//! assert_eq!(body, "grant_type=client_credentials&scope=read+write");
//! assert_eq!(meshwasm_oauth2::basic_authorization("rs", "rs-secret"), "Basic cnM6cnMtc2VjcmV0");
//! ```

use std::fmt;

use base64::Engine as _;
use meshwasm_config::ConfigError;
use serde::Deserialize;

pub mod assertion;

pub use assertion::{
    ASSERTION_TYPE, AssertionAlg, AssertionError, AssertionSigner, ClientAssertionConfig, random_jti,
};

/// How a client authenticates to the authorization server (RFC 6749 §2.3.1), named as in the
/// RFC 7591 `token_endpoint_auth_method` registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AuthMethod {
    /// `Authorization: Basic base64(urlencode(client_id) ":" urlencode(client_secret))`.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT signed with the client's private key (RFC 7523, OpenID Connect Core §9):
    /// `client_assertion_type` and `client_assertion` in the form body; settings in `client_assertion`.
    PrivateKeyJwt,
}

/// A configured secret. `Debug` and `Display` print `<redacted>`, so a logged config, plan or
/// error never carries it; [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// The environment a configuration reads `client_secret_env` from: `std::env::var` in a filter
/// (WASI `environ_get`, which proxy-wasm hosts fill from `vm_config.environment_variables`), a map
/// in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Adds `client_secret_env` (read into `client_secret` by [`resolve_secret_env`] before
/// deserialization) to the JSON Schema of an object that has `client_secret`.
#[cfg(feature = "schema")]
pub fn schema_secret_env(schema: &mut schemars::Schema) {
    let prop = serde_json::json!({
        "type": "string",
        "minLength": 1,
        "description": "Name of the environment variable holding the client secret (instead of \
                        client_secret), read at configure time. Pass it to the VM: \
                        vm_config.environment_variables in Envoy, vmConfig.env in Istio.",
    });
    if let Some(serde_json::Value::Object(props)) = schema.get_mut("properties") {
        props.insert("client_secret_env".to_owned(), prop);
    }
}

/// The process environment (in a wasm filter: what the VM config passes).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Resolves `client_secret_env` in the JSON object `obj` (at field path `at`, `""` for the top):
/// exactly one of `client_secret` and `client_secret_env` must be set; the latter names an
/// environment variable whose value replaces it as `client_secret`, read once at configure time.
/// Errors name the field or the variable, never a value.
pub fn resolve_secret_env(
    obj: &mut serde_json::Value,
    at: &str,
    env: Env<'_>,
) -> Result<(), meshwasm_config::ConfigError> {
    let field = |name: &str| if at.is_empty() { name.to_owned() } else { format!("{at}.{name}") };
    let Some(map) = obj.as_object_mut() else { return Ok(()) };
    if map.get("auth_method").and_then(serde_json::Value::as_str) == Some("private_key_jwt") {
        // The key signs; a secret as well would be a second credential nobody uses.
        for f in ["client_secret", "client_secret_env"] {
            if map.contains_key(f) {
                return Err(ConfigError::new(
                    field(f),
                    "is not used with auth_method private_key_jwt (set client_assertion instead)",
                ));
            }
        }
        return Ok(());
    }
    let Some(name) = map.remove("client_secret_env") else {
        if map.contains_key("client_secret") {
            return Ok(());
        }
        return Err(ConfigError::new(
            field("client_secret"),
            "set exactly one of client_secret and client_secret_env",
        ));
    };
    let env_field = field("client_secret_env");
    if map.contains_key("client_secret") {
        return Err(meshwasm_config::ConfigError::new(
            env_field,
            "set exactly one of client_secret and client_secret_env",
        ));
    }
    let Some(name) = name.as_str() else {
        return Err(meshwasm_config::ConfigError::new(env_field, "must be a string"));
    };
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(meshwasm_config::ConfigError::new(
            env_field,
            "must name an environment variable (non-empty, no `=`)",
        ));
    }
    match env(name) {
        Some(value) if !value.is_empty() => {
            map.insert("client_secret".to_owned(), serde_json::Value::String(value));
            Ok(())
        }
        // The name only: the value is the secret (and an empty one is not worth printing either).
        _ => Err(meshwasm_config::ConfigError::new(
            env_field,
            format!(
                "environment variable `{name}` is unset or empty (pass it to the VM: \
                 vm_config.environment_variables, or Istio's vmConfig.env)"
            ),
        )),
    }
}

/// Checks at configure time that the credential fits the method: a non-empty `client_secret` and no
/// `client_assertion` for the secret methods, a `client_assertion` (whose key
/// [`ClientAssertionConfig::load_key`] read) and no secret for `private_key_jwt`. `at` is the path
/// of the object holding these fields (`""` for the top).
pub fn check_client_auth(
    at: &str,
    method: AuthMethod,
    secret: Option<&Secret>,
    assertion: Option<&ClientAssertionConfig>,
) -> Result<(), ConfigError> {
    let field = |name: &str| if at.is_empty() { name.to_owned() } else { format!("{at}.{name}") };
    match method {
        AuthMethod::PrivateKeyJwt => {
            if secret.is_some() {
                return Err(ConfigError::new(
                    field("client_secret"),
                    "is not used with auth_method private_key_jwt",
                ));
            }
            match assertion {
                None => Err(ConfigError::new(
                    field("client_assertion"),
                    "is required with auth_method private_key_jwt",
                )),
                Some(a) if a.key.is_none() => Err(ConfigError::new(
                    field("client_assertion.private_key_env"),
                    "the private key was not read",
                )),
                Some(_) => Ok(()),
            }
        }
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
            if assertion.is_some() {
                return Err(ConfigError::new(
                    field("client_assertion"),
                    "is only used with auth_method private_key_jwt",
                ));
            }
            match secret {
                Some(s) if !s.is_empty() => Ok(()),
                _ => Err(ConfigError::new(field("client_secret"), "must not be empty")),
            }
        }
    }
}

/// How one worker authenticates its requests to one endpoint: a secret, or a signer of client
/// assertions (which keeps state, hence per worker). `Debug` shows no secret, key or assertion.
#[derive(Debug)]
pub enum ClientAuth {
    Secret { method: AuthMethod, client_id: String, secret: Secret },
    PrivateKeyJwt(Box<AssertionSigner>),
}

impl ClientAuth {
    /// From a configuration [`check_client_auth`] accepted; `default_audience` is the endpoint's
    /// URL (the assertion's `aud` unless `client_assertion.audience` is set).
    pub fn new(
        method: AuthMethod,
        client_id: &str,
        secret: Option<&Secret>,
        assertion: Option<&ClientAssertionConfig>,
        default_audience: String,
    ) -> Result<ClientAuth, AssertionError> {
        match (method, assertion) {
            (AuthMethod::PrivateKeyJwt, Some(a)) => {
                Ok(ClientAuth::PrivateKeyJwt(Box::new(AssertionSigner::new(a, client_id, default_audience)?)))
            }
            (AuthMethod::PrivateKeyJwt, None) => Err(AssertionError::NoKey),
            _ => Ok(ClientAuth::Secret {
                method,
                client_id: client_id.to_owned(),
                secret: secret.cloned().unwrap_or_else(|| Secret::new("")),
            }),
        }
    }

    /// Adds client authentication to a form-encoded request at `now_s` (Unix seconds): see
    /// [`authenticate`] for the secret methods; for `private_key_jwt`,
    /// `&client_assertion_type=..&client_assertion=..` appended to `body` (a `jti` from `jti`).
    pub fn apply(
        &mut self,
        now_s: u64,
        jti: &mut dyn FnMut() -> Option<String>,
        headers: &mut Vec<(String, String)>,
        body: &mut String,
    ) -> Result<(), AssertionError> {
        match self {
            ClientAuth::Secret { method, client_id, secret } => {
                authenticate(*method, client_id, secret, headers, body);
                Ok(())
            }
            ClientAuth::PrivateKeyJwt(signer) => {
                let jwt = signer.assertion(now_s, jti)?;
                body.push_str("&client_assertion_type=");
                form_urlencode_into(body, ASSERTION_TYPE);
                body.push_str("&client_assertion=");
                form_urlencode_into(body, jwt);
                Ok(())
            }
        }
    }
}

/// Adds client authentication with a secret to a form-encoded request: an `authorization` header
/// for `client_secret_basic`, or `&client_id=..&client_secret=..` appended to `body` for
/// `client_secret_post`. `private_key_jwt` needs state and a clock: [`ClientAuth::apply`] (here it
/// adds nothing).
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
        AuthMethod::PrivateKeyJwt => {}
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

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn secret_env_replaces_the_inline_secret() {
        let env = env_of(&[("IDP_SECRET", "from-env"), ("EMPTY", "")]);
        let mut v = serde_json::json!({"client_id": "a", "client_secret_env": "IDP_SECRET"});
        resolve_secret_env(&mut v, "", &env).unwrap();
        assert_eq!(v, serde_json::json!({"client_id": "a", "client_secret": "from-env"}));
        // An inline secret alone is left as it is.
        let mut v = serde_json::json!({"client_secret": "inline"});
        resolve_secret_env(&mut v, "x", &env).unwrap();
        assert_eq!(v, serde_json::json!({"client_secret": "inline"}));
    }

    #[test]
    fn secret_env_errors_name_the_field_or_variable_never_the_value() {
        let env = env_of(&[("IDP_SECRET", "s3cr3t-value"), ("EMPTY", "")]);
        let run = |v: serde_json::Value| {
            let mut v = v;
            resolve_secret_env(&mut v, "providers.idp.introspection", &env).unwrap_err()
        };
        let both =
            run(serde_json::json!({"client_secret": "s3cr3t-value", "client_secret_env": "IDP_SECRET"}));
        assert_eq!(both.path(), "providers.idp.introspection.client_secret_env");
        assert!(both.reason().contains("exactly one"), "{both}");
        let neither = run(serde_json::json!({"client_id": "a"}));
        assert_eq!(neither.path(), "providers.idp.introspection.client_secret");
        assert!(neither.reason().contains("exactly one"), "{neither}");
        for name in ["UNSET_VAR", "EMPTY"] {
            let e = run(serde_json::json!({"client_secret_env": name}));
            assert_eq!(e.path(), "providers.idp.introspection.client_secret_env");
            assert!(e.reason().contains(&format!("`{name}` is unset or empty")), "{e}");
        }
        for bad in [serde_json::json!(""), serde_json::json!("A=B"), serde_json::json!(5)] {
            let e = run(serde_json::json!({"client_secret_env": bad}));
            assert_eq!(e.path(), "providers.idp.introspection.client_secret_env", "{e}");
        }
        assert!(!format!("{both} {both:?} {neither:?}").contains("s3cr3t-value"));
    }
}
