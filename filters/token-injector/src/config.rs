//! Plugin configuration: parsed once in `on_configure` into an immutable, validated [`Plan`]
//! (`Plan::from_json`, the entry point every meshwasm filter has). Durations are strings like
//! `"2s"` ([`meshwasm_config::Duration`]); the integer `*_ms` / `*_s` spellings of earlier releases
//! are still accepted, with a warning in [`Plan::warnings`].

use meshwasm_config::{ConfigError, Duration, Legacy, Unit};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::matcher::{Matcher, Rule};

pub use meshwasm_oauth2::{AuthMethod, ClientAssertionConfig, Secret};

/// The token endpoint, reached through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_token_endpoint))]
pub struct TokenEndpoint {
    /// Envoy cluster of the OAuth2 authorization server.
    pub cluster: String,
    /// Path of the token endpoint, e.g. `/oauth2/token`.
    pub path: String,
    /// `:authority` of the token request (the authorization server's host).
    pub authority: String,
    /// `timeout`: timeout of one token request (default `"2s"`), kept in milliseconds.
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "timeout",
        default = "default_timeout_ms",
        deserialize_with = "meshwasm_config::millis"
    )]
    pub timeout_ms: u64,
}

/// When to refresh a token ahead of its expiry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_refresh))]
pub struct Refresh {
    /// Refresh once this fraction of the token's lifetime has passed (default 0.8).
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// `before_expiry`: ... or this long before it expires, whichever comes first (default `"60s"`;
    /// never earlier than half the lifetime). Whole seconds.
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "before_expiry",
        default = "default_before_expiry_s",
        deserialize_with = "meshwasm_config::secs"
    )]
    pub before_expiry_s: u64,
    /// `expiry_margin`: a token is not sent once it has less than this left (default `"5s"`; at most
    /// a tenth of the lifetime), so it does not expire in flight. Whole seconds.
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "expiry_margin",
        default = "default_expiry_margin_s",
        deserialize_with = "meshwasm_config::secs"
    )]
    pub expiry_margin_s: u64,
    /// `default_expires_in`: lifetime assumed when the token response has no `expires_in` (default
    /// `"5m"`). Whole seconds.
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "default_expires_in",
        default = "default_expires_in_s",
        deserialize_with = "meshwasm_config::secs"
    )]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_backoff))]
pub struct Backoff {
    /// `initial`: first wait after a failure (default `"1s"`), kept in milliseconds.
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "initial",
        default = "default_backoff_initial_ms",
        deserialize_with = "meshwasm_config::millis"
    )]
    pub initial_ms: u64,
    /// `max`: longest wait; doubles per consecutive failure up to this (default `"30s"`).
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "max",
        default = "default_backoff_max_ms",
        deserialize_with = "meshwasm_config::millis"
    )]
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial_ms: default_backoff_initial_ms(), max_ms: default_backoff_max_ms() }
    }
}

/// The plugin configuration as written by the user (JSON).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_config))]
pub struct Config {
    pub token_endpoint: TokenEndpoint,
    pub client_id: String,
    /// Never logged (its `Debug` is redacted). `client_secret_env` (the name of an environment
    /// variable) may stand in for it: `Plan::from_json` reads it into here at configure time.
    /// Required for the `client_secret_*` methods, refused with `private_key_jwt`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// The key and claims of `private_key_jwt` (RFC 7523 client assertions): required with it,
    /// refused otherwise. The private key comes from an environment variable.
    #[serde(default)]
    pub client_assertion: Option<ClientAssertionConfig>,
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
    /// Longest a request waits for a token before a 503 (default: the token timeout + 1s).
    #[serde(default)]
    pub max_wait: Option<Duration>,
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
    /// Deprecated spellings found in the configuration, logged by the glue at configure time.
    pub warnings: Vec<String>,
}

/// Rewrites the integer duration fields of earlier releases (one release of grace).
fn upgrade_legacy(v: &mut serde_json::Value, legacy: &mut Legacy) -> Result<(), ConfigError> {
    legacy.duration(v, "", "max_wait_ms", Unit::Millis, "max_wait")?;
    if let Some(ep) = v.get_mut("token_endpoint") {
        legacy.duration(ep, "token_endpoint", "timeout_ms", Unit::Millis, "timeout")?;
    }
    if let Some(r) = v.get_mut("refresh") {
        legacy.duration(r, "refresh", "before_expiry_s", Unit::Seconds, "before_expiry")?;
        legacy.duration(r, "refresh", "expiry_margin_s", Unit::Seconds, "expiry_margin")?;
        legacy.duration(r, "refresh", "default_expires_in_s", Unit::Seconds, "default_expires_in")?;
    }
    if let Some(b) = v.get_mut("retry_backoff") {
        legacy.duration(b, "retry_backoff", "initial_ms", Unit::Millis, "initial")?;
        legacy.duration(b, "retry_backoff", "max_ms", Unit::Millis, "max")?;
    }
    Ok(())
}

impl Plan {
    /// Parses and validates a plugin configuration; the error names the field.
    pub fn from_json(json: &[u8]) -> Result<Plan, ConfigError> {
        Plan::from_json_with_env(json, &meshwasm_oauth2::process_env)
    }

    /// [`Plan::from_json`] reading `client_secret_env` and `client_assertion.private_key_env` from
    /// `env` instead of the process environment.
    pub fn from_json_with_env(json: &[u8], env: meshwasm_oauth2::Env<'_>) -> Result<Plan, ConfigError> {
        let mut value: serde_json::Value = meshwasm_config::from_json(json)?;
        let mut legacy = Legacy::default();
        upgrade_legacy(&mut value, &mut legacy)?;
        meshwasm_oauth2::resolve_secret_env(&mut value, "", env)?;
        let mut config: Config = meshwasm_config::from_value(value)?;
        if config.auth_method == AuthMethod::PrivateKeyJwt
            && let Some(a) = config.client_assertion.as_mut()
        {
            a.load_key("client_assertion", env)?;
        }
        let mut plan = Plan::from_config(config)?;
        plan.warnings = legacy.warnings;
        Ok(plan)
    }

    pub fn from_config(config: Config) -> Result<Plan, ConfigError> {
        let bad = |field: &str, reason: &str| Err(ConfigError::new(field, reason));
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
            return bad("token_endpoint.timeout", "must be between 1ms and 60s");
        }
        if config.client_id.is_empty() {
            return bad("client_id", "must not be empty");
        }
        meshwasm_oauth2::check_client_auth(
            "",
            config.auth_method,
            config.client_secret.as_ref(),
            config.client_assertion.as_ref(),
        )?;
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
        let header = meshwasm_config::header_name("header", &config.header)?;
        let r = &config.refresh;
        if !(r.fraction > 0.0 && r.fraction < 1.0) {
            return bad("refresh.fraction", "must be between 0 and 1 (exclusive)");
        }
        if r.default_expires_in_s == 0 {
            return bad("refresh.default_expires_in", "must be at least 1s");
        }
        let b = &config.retry_backoff;
        if b.initial_ms == 0 {
            return bad("retry_backoff.initial", "must be at least 1ms");
        }
        if b.max_ms < b.initial_ms {
            return bad("retry_backoff.max", "must be at least retry_backoff.initial");
        }
        let max_wait_ms = config.max_wait.map_or(ep.timeout_ms + 1000, Duration::as_millis);
        if max_wait_ms == 0 || max_wait_ms > 300_000 {
            return bad("max_wait", "must be between 1ms and 5m");
        }
        let matcher = Matcher::new(&config.match_rules)
            .map_err(|(i, reason)| ConfigError::new(format!("match[{i}]"), reason))?;
        let shared_key = shared_key(&config);
        Ok(Plan { header, matcher, max_wait_ms, shared_key, config, warnings: Vec::new() })
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
    // The secret (or private key) is part of the identity too (a rotated secret must not reuse a
    // token obtained with the old one), but only through the hash.
    if let Some(s) = &c.client_secret {
        h.update(s.expose().as_bytes());
    }
    if let Some(k) = c.client_assertion.as_ref().and_then(|a| a.key.as_ref()) {
        h.update(b"private_key_jwt");
        h.update(k.expose_pem().as_bytes());
    }
    let d = h.finalize();
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("meshwasm.token-injector.v1.{hex}")
}

#[cfg(feature = "schema")]
fn schema_token_endpoint(s: &mut schemars::Schema) {
    use meshwasm_config::schema::{legacy_duration, set_default};
    set_default(s, "timeout", serde_json::json!("2s"));
    legacy_duration(s, "timeout_ms", Unit::Millis, "timeout");
}

#[cfg(feature = "schema")]
fn schema_refresh(s: &mut schemars::Schema) {
    use meshwasm_config::schema::{legacy_duration, set_default};
    for (new, old, default) in [
        ("before_expiry", "before_expiry_s", "60s"),
        ("expiry_margin", "expiry_margin_s", "5s"),
        ("default_expires_in", "default_expires_in_s", "5m"),
    ] {
        set_default(s, new, serde_json::json!(default));
        legacy_duration(s, old, Unit::Seconds, new);
    }
}

#[cfg(feature = "schema")]
fn schema_backoff(s: &mut schemars::Schema) {
    use meshwasm_config::schema::{legacy_duration, set_default};
    set_default(s, "initial", serde_json::json!("1s"));
    set_default(s, "max", serde_json::json!("30s"));
    legacy_duration(s, "initial_ms", Unit::Millis, "initial");
    legacy_duration(s, "max_ms", Unit::Millis, "max");
}

#[cfg(feature = "schema")]
fn schema_config(s: &mut schemars::Schema) {
    meshwasm_config::schema::legacy_duration(s, "max_wait_ms", Unit::Millis, "max_wait");
    meshwasm_oauth2::schema_secret_env(s);
}

/// The JSON Schema of this filter's configuration, as committed in `schemas/` (the `schema`
/// feature; never in a .wasm build).
#[cfg(feature = "schema")]
pub fn json_schema() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<Config>()
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
        Plan::from_json(v.to_string().as_bytes())
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
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn durations_in_the_new_and_the_deprecated_spelling() {
        let mut v = base();
        v["token_endpoint"]["timeout"] = json!("1500ms");
        v["refresh"] = json!({"before_expiry": "2m", "expiry_margin": "10s", "default_expires_in": "1h"});
        v["retry_backoff"] = json!({"initial": "250ms", "max": "1m"});
        v["max_wait"] = json!("4s");
        let new = parse(v).unwrap();
        assert!(new.warnings.is_empty(), "{:?}", new.warnings);
        let mut v = base();
        v["token_endpoint"]["timeout_ms"] = json!(1500);
        v["refresh"] = json!({"before_expiry_s": 120, "expiry_margin_s": 10, "default_expires_in_s": 3600});
        v["retry_backoff"] = json!({"initial_ms": 250, "max_ms": 60000});
        v["max_wait_ms"] = json!(4000);
        let old = parse(v).unwrap();
        assert_eq!(old.config, new.config);
        assert_eq!(old.max_wait_ms, 4000);
        let c = &old.config;
        assert_eq!(
            (c.token_endpoint.timeout_ms, c.refresh.before_expiry_s, c.refresh.expiry_margin_s),
            (1500, 120, 10)
        );
        assert_eq!(
            (c.refresh.default_expires_in_s, c.retry_backoff.initial_ms, c.retry_backoff.max_ms),
            (3600, 250, 60_000)
        );
        assert_eq!(old.warnings.len(), 7, "{:?}", old.warnings);
        assert!(old.warnings.iter().any(|w| w.starts_with("`token_endpoint.timeout_ms` is deprecated")));
        assert!(old.warnings.iter().any(|w| w.contains("write `\"before_expiry\": \"120s\"`")));
        // Bad values name the field, in either spelling.
        let bad = |patch: serde_json::Value| {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            parse(v).unwrap_err()
        };
        let e = bad(json!({"max_wait": "4"}));
        assert_eq!(e.path(), "max_wait");
        assert!(e.reason().contains("`4` is not a duration"), "{e}");
        let e = bad(json!({"refresh": {"before_expiry": "1500ms"}}));
        assert_eq!(e.path(), "refresh.before_expiry");
        assert!(e.reason().contains("whole number of seconds"), "{e}");
        let e = bad(json!({"retry_backoff": {"initial_ms": "250"}}));
        assert_eq!(
            (e.path(), e.reason()),
            ("retry_backoff.initial_ms", "must be a whole number of milliseconds")
        );
        let e = bad(json!({"max_wait_ms": 10, "max_wait": "10ms"}));
        assert_eq!(e.path(), "max_wait_ms");
        assert!(e.reason().contains("keep only `max_wait`"), "{e}");
    }

    #[test]
    fn unknown_fields_and_types_are_rejected() {
        let mut v = base();
        v["scoeps"] = json!(["a"]);
        let e = parse(v).unwrap_err();
        assert!(e.path() == "scoeps" && e.reason().contains("unknown field `scoeps`"), "{e}");
        let mut v = base();
        v["token_endpoint"]["timeot"] = json!(5);
        let e = parse(v).unwrap_err();
        assert!(e.path() == "token_endpoint.timeot" && e.reason().contains("timeot"), "{e}");
        let mut v = base();
        v["token_endpoint"]["timeout"] = json!(5);
        let e = parse(v).unwrap_err();
        assert!(e.path() == "token_endpoint.timeout" && e.reason().contains("invalid type"), "{e}");
        let mut v = base();
        v["refresh"] = json!({"fraction": "0.5"});
        let e = parse(v).unwrap_err();
        assert!(e.path() == "refresh.fraction" && e.reason().contains("invalid type"), "{e}");
        // Only the RFC 7591 names (jwt-auth's old `basic` was never accepted here).
        let mut v = base();
        v["auth_method"] = json!("basic");
        let e = parse(v).unwrap_err();
        assert!(e.path() == "auth_method" && e.reason().contains("basic"), "{e}");
        let mut v = base();
        v["auth_method"] = json!("client_secret_post");
        assert_eq!(parse(v).unwrap().config.auth_method, AuthMethod::ClientSecretPost);
        let mut v = base();
        v["match"] = json!([{"host": "x"}]);
        let e = parse(v).unwrap_err();
        assert!(e.path() == "match[0].host" && e.reason().contains("host"), "{e}");
        assert_eq!(Plan::from_json(b"not json").unwrap_err().path(), "");
    }

    #[test]
    fn client_secret_from_the_environment() {
        let env = |k: &str| (k == "TI_SECRET").then(|| "env-s3cret".to_owned());
        let with = |v: serde_json::Value| Plan::from_json_with_env(v.to_string().as_bytes(), &env);
        let mut v = base();
        v.as_object_mut().unwrap().remove("client_secret");
        v["client_secret_env"] = json!("TI_SECRET");
        let p = with(v.clone()).unwrap();
        assert_eq!(p.config.client_secret.as_ref().unwrap().expose(), "env-s3cret");
        // Same identity as the same secret inline: the token is shared.
        let mut inline = base();
        inline["client_secret"] = json!("env-s3cret");
        assert_eq!(p.shared_key, with(inline).unwrap().shared_key);
        assert!(!format!("{p:?}").contains("env-s3cret"));
        // Unset variable, both, neither: configure-time errors naming the field or the variable.
        v["client_secret_env"] = json!("TI_MISSING");
        let e = with(v.clone()).unwrap_err();
        assert_eq!(e.path(), "client_secret_env");
        assert!(e.reason().contains("`TI_MISSING` is unset or empty"), "{e}");
        v["client_secret_env"] = json!("TI_SECRET");
        v["client_secret"] = json!("inline");
        assert_eq!(with(v.clone()).unwrap_err().path(), "client_secret_env");
        let mut neither = base();
        neither.as_object_mut().unwrap().remove("client_secret");
        let e = with(neither).unwrap_err();
        assert_eq!(e.path(), "client_secret");
        assert!(e.reason().contains("exactly one of client_secret and client_secret_env"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("token_endpoint.cluster", json!({"token_endpoint": {"cluster": ""}})),
            ("token_endpoint.path", json!({"token_endpoint": {"path": "token"}})),
            ("token_endpoint.authority", json!({"token_endpoint": {"authority": "a b"}})),
            ("token_endpoint.timeout", json!({"token_endpoint": {"timeout_ms": 0}})),
            ("token_endpoint.timeout", json!({"token_endpoint": {"timeout": "61s"}})),
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
            ("refresh.default_expires_in", json!({"refresh": {"default_expires_in_s": 0}})),
            ("refresh.default_expires_in", json!({"refresh": {"default_expires_in": "0s"}})),
            ("retry_backoff.initial", json!({"retry_backoff": {"initial_ms": 0}})),
            ("retry_backoff.max", json!({"retry_backoff": {"initial_ms": 500, "max_ms": 100}})),
            ("retry_backoff.max", json!({"retry_backoff": {"initial": "500ms", "max": "100ms"}})),
            ("max_wait", json!({"max_wait_ms": 0})),
            ("max_wait", json!({"max_wait": "6m"})),
            ("match[0]", json!({"match": [{}]})),
            ("match[0]", json!({"match": [{"path_prefix": "v1"}]})),
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
                Err(e) => assert_eq!(e.path(), field, "{e}"),
                Ok(_) => panic!("{field}: expected a field error"),
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
