//! Plugin configuration: parsed once in `on_configure` into an immutable, validated [`Plan`].

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::matcher::{Matcher, Rule};

/// How the filter authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `Authorization: Basic base64(urlencode(client_id) ":" urlencode(client_secret))`.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// The token endpoint, reached through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpoint {
    /// Envoy cluster of the OAuth2 authorization server.
    pub cluster: String,
    /// Path of the token endpoint, e.g. `/oauth2/token`.
    pub path: String,
    /// `:authority` of the token request (the authorization server's host).
    pub authority: String,
    /// Timeout of one token request, milliseconds (default 2000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// When to refresh a token ahead of its expiry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    /// Refresh once this fraction of the token's lifetime has passed (default 0.8).
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// ... or this many seconds before it expires, whichever comes first (default 60; never earlier than
    /// half the lifetime).
    #[serde(default = "default_before_expiry_s")]
    pub before_expiry_s: u64,
    /// A token is not sent once it has fewer seconds than this left (default 5; at most a tenth of the
    /// lifetime), so it does not expire in flight.
    #[serde(default = "default_expiry_margin_s")]
    pub expiry_margin_s: u64,
    /// Lifetime assumed when the token response has no `expires_in`, seconds (default 300).
    #[serde(default = "default_expires_in_s")]
    pub default_expires_in_s: u64,
}

impl Default for Refresh {
    fn default() -> Self {
        Self {
            fraction: default_fraction(),
            before_expiry_s: default_before_expiry_s(),
            expiry_margin_s: default_expiry_margin_s(),
            default_expires_in_s: default_expires_in_s(),
        }
    }
}

/// Retry back-off after a failed token request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First wait after a failure, milliseconds (default 1000).
    #[serde(default = "default_backoff_initial_ms")]
    pub initial_ms: u64,
    /// Longest wait; doubles per consecutive failure up to this, milliseconds (default 30000).
    #[serde(default = "default_backoff_max_ms")]
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial_ms: default_backoff_initial_ms(), max_ms: default_backoff_max_ms() }
    }
}

/// The plugin configuration as written by the user (JSON).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub token_endpoint: TokenEndpoint,
    pub client_id: String,
    /// Never logged.
    pub client_secret: String,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// Scopes requested (sent space-separated as `scope`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Sent as `audience` (Auth0, Okta style).
    #[serde(default)]
    pub audience: Option<String>,
    /// Sent as `resource` (RFC 8707 resource indicator).
    #[serde(default)]
    pub resource: Option<String>,
    /// Which outbound requests get a token; absent or empty: all.
    #[serde(default, rename = "match")]
    pub match_rules: Vec<Rule>,
    /// Header the token goes into (default `authorization`, value `Bearer <token>`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Replace a header the client already sent (default true); false leaves such requests untouched.
    #[serde(default = "default_true")]
    pub overwrite_existing: bool,
    #[serde(default)]
    pub refresh: Refresh,
    #[serde(default)]
    pub retry_backoff: Backoff,
    /// Longest a request waits for a token before a 503, milliseconds (default: token timeout + 1000).
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_fraction() -> f64 {
    0.8
}
fn default_before_expiry_s() -> u64 {
    60
}
fn default_expiry_margin_s() -> u64 {
    5
}
fn default_expires_in_s() -> u64 {
    300
}
fn default_backoff_initial_ms() -> u64 {
    1000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_header() -> String {
    "authorization".to_owned()
}
fn default_true() -> bool {
    true
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("auth_method", &self.auth_method)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// A configuration error: the field (dotted path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("meshwasm token-injector: invalid configuration: {0}")]
    Json(String),
    #[error("meshwasm token-injector: `{field}` {reason}")]
    Field { field: &'static str, reason: String },
}

/// The validated, immutable plan the filter runs on.
#[derive(Debug)]
pub struct Plan {
    pub config: Config,
    pub matcher: Matcher,
    /// Lower-cased header name.
    pub header: String,
    pub max_wait_ms: u64,
    /// Shared-data key of this token (one per token endpoint, client and requested token), so plugins
    /// with the same client share one token and different ones never mix.
    pub shared_key: String,
}

impl Plan {
    /// Parses and validates a plugin configuration.
    pub fn parse(json: &[u8]) -> Result<Plan, ConfigError> {
        let config: Config = serde_json::from_slice(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        Plan::new(config)
    }

    pub fn new(config: Config) -> Result<Plan, ConfigError> {
        let bad =
            |field: &'static str, reason: &str| Err(ConfigError::Field { field, reason: reason.to_owned() });
        let ep = &config.token_endpoint;
        if ep.cluster.trim().is_empty() {
            return bad("token_endpoint.cluster", "must name an Envoy cluster");
        }
        if !ep.path.starts_with('/') || ep.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return bad(
                "token_endpoint.path",
                "must start with `/` and contain no spaces or control characters",
            );
        }
        if ep.authority.is_empty() || ep.authority.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/') {
            return bad("token_endpoint.authority", "must be a host[:port] without spaces or `/`");
        }
        if ep.timeout_ms == 0 || ep.timeout_ms > 60_000 {
            return bad("token_endpoint.timeout_ms", "must be between 1 and 60000");
        }
        if config.client_id.is_empty() {
            return bad("client_id", "must not be empty");
        }
        if config.client_secret.is_empty() {
            return bad("client_secret", "must not be empty");
        }
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
        if config
            .scopes
            .iter()
            .any(|s| s.is_empty() || s.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f))
        {
            return bad(
                "scopes",
                "entries must be non-empty scope tokens (no spaces, quotes or backslashes)",
            );
        }
        if config.audience.as_deref() == Some("") {
            return bad("audience", "must not be empty when set");
        }
        if config.resource.as_deref() == Some("") {
            return bad("resource", "must not be empty when set");
        }
        let header = config.header.to_ascii_lowercase();
        if header.is_empty()
            || header.starts_with(':')
            || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return bad("header", "must be a valid HTTP header name (not a pseudo-header)");
        }
        let r = &config.refresh;
        if !(r.fraction > 0.0 && r.fraction < 1.0) {
            return bad("refresh.fraction", "must be between 0 and 1 (exclusive)");
        }
        if r.default_expires_in_s == 0 {
            return bad("refresh.default_expires_in_s", "must be at least 1");
        }
        let b = &config.retry_backoff;
        if b.initial_ms == 0 {
            return bad("retry_backoff.initial_ms", "must be at least 1");
        }
        if b.max_ms < b.initial_ms {
            return bad("retry_backoff.max_ms", "must be at least retry_backoff.initial_ms");
        }
        let max_wait_ms = config.max_wait_ms.unwrap_or(ep.timeout_ms + 1000);
        if max_wait_ms == 0 || max_wait_ms > 300_000 {
            return bad("max_wait_ms", "must be between 1 and 300000");
        }
        let matcher = Matcher::new(&config.match_rules).map_err(|(i, reason)| ConfigError::Field {
            field: "match",
            reason: format!("entry {i}: {reason}"),
        })?;
        let shared_key = shared_key(&config);
        Ok(Plan { header, matcher, max_wait_ms, shared_key, config })
    }
}

fn shared_key(c: &Config) -> String {
    let mut h = Sha256::new();
    for part in [
        c.token_endpoint.cluster.as_str(),
        c.token_endpoint.authority.as_str(),
        c.token_endpoint.path.as_str(),
        c.client_id.as_str(),
        &c.scopes.join(" "),
        c.audience.as_deref().unwrap_or(""),
        c.resource.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    // The secret is part of the identity too (a rotated secret must not reuse a token obtained with
    // the old one), but only through the hash.
    h.update(c.client_secret.as_bytes());
    let d = h.finalize();
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("meshwasm.token-injector.v1.{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "token_endpoint": {"cluster": "idp", "path": "/token", "authority": "idp.example.com"},
            "client_id": "svc",
            "client_secret": "s3cret",
        })
    }

    fn parse(v: serde_json::Value) -> Result<Plan, ConfigError> {
        Plan::parse(v.to_string().as_bytes())
    }

    #[test]
    fn defaults() {
        let p = parse(base()).unwrap();
        let c = &p.config;
        assert_eq!(c.auth_method, AuthMethod::ClientSecretBasic);
        assert_eq!(c.token_endpoint.timeout_ms, 2000);
        assert_eq!(p.header, "authorization");
        assert!(c.overwrite_existing);
        assert_eq!(c.refresh, Refresh::default());
        assert_eq!(c.retry_backoff, Backoff::default());
        assert_eq!(p.max_wait_ms, 3000);
        assert!(p.shared_key.starts_with("meshwasm.token-injector.v1."));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_fields_and_types_are_rejected() {
        let mut v = base();
        v["scoeps"] = json!(["a"]);
        assert!(matches!(parse(v), Err(ConfigError::Json(m)) if m.contains("scoeps")));
        let mut v = base();
        v["token_endpoint"]["timeout"] = json!(5);
        assert!(matches!(parse(v), Err(ConfigError::Json(m)) if m.contains("timeout")));
        let mut v = base();
        v["refresh"] = json!({"fraction": "0.5"});
        assert!(matches!(parse(v), Err(ConfigError::Json(m)) if m.contains("invalid type")));
        let mut v = base();
        v["auth_method"] = json!("basic");
        assert!(matches!(parse(v), Err(ConfigError::Json(m)) if m.contains("basic")));
        let mut v = base();
        v["match"] = json!([{"host": "x"}]);
        assert!(matches!(parse(v), Err(ConfigError::Json(m)) if m.contains("host")));
        assert!(matches!(Plan::parse(b"not json"), Err(ConfigError::Json(_))));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("token_endpoint.cluster", json!({"token_endpoint": {"cluster": ""}})),
            ("token_endpoint.path", json!({"token_endpoint": {"path": "token"}})),
            ("token_endpoint.authority", json!({"token_endpoint": {"authority": "a b"}})),
            ("token_endpoint.timeout_ms", json!({"token_endpoint": {"timeout_ms": 0}})),
            ("client_id", json!({"client_id": ""})),
            ("client_secret", json!({"client_secret": ""})),
            ("scopes", json!({"scopes": ["a b"]})),
            ("scopes", json!({"scopes": [""]})),
            ("audience", json!({"audience": ""})),
            ("resource", json!({"resource": ""})),
            ("header", json!({"header": ":authority"})),
            ("header", json!({"header": "x y"})),
            ("refresh.fraction", json!({"refresh": {"fraction": 1.0}})),
            ("refresh.fraction", json!({"refresh": {"fraction": 0.0}})),
            ("refresh.default_expires_in_s", json!({"refresh": {"default_expires_in_s": 0}})),
            ("retry_backoff.initial_ms", json!({"retry_backoff": {"initial_ms": 0}})),
            ("retry_backoff.max_ms", json!({"retry_backoff": {"initial_ms": 500, "max_ms": 100}})),
            ("max_wait_ms", json!({"max_wait_ms": 0})),
            ("match", json!({"match": [{}]})),
            ("match", json!({"match": [{"path_prefix": "v1"}]})),
        ];
        for (field, patch) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                if let (Some(obj), Some(p)) = (v[k].as_object_mut(), val.as_object()) {
                    for (k2, v2) in p {
                        obj.insert(k2.clone(), v2.clone());
                    }
                } else {
                    v[k] = val.clone();
                }
            }
            match parse(v) {
                Err(ConfigError::Field { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn shared_key_separates_clients_and_tokens() {
        let a = parse(base()).unwrap().shared_key;
        let mut v = base();
        v["scopes"] = json!(["read"]);
        let b = parse(v).unwrap().shared_key;
        let mut v = base();
        v["client_secret"] = json!("other");
        let c = parse(v).unwrap().shared_key;
        let mut v = base();
        v["match"] = json!([{"authority": "api.example.com"}]);
        let same = parse(v).unwrap().shared_key;
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, same, "match rules do not change which token is used");
    }
}
