//! RFC 7662 token introspection for opaque access tokens: configuration, the request to the
//! introspection endpoint, strict parsing of its answer, and the decision it leads to. Pure logic (no
//! proxy_wasm); time is passed in as Unix seconds. The per-worker state (answer cache, calls in flight,
//! the call cap) is [`crate::introspection_state`].
//!
//! Dependencies: serde, serde_json, sha2, meshwasm-oauth2 (client authentication encodings) and std.
//!
//! # How jwt-auth uses it
//! 1. Configure: a provider's `introspection` object becomes an [`IntrospectionConfig`], checked by
//!    [`IntrospectionConfig::validate`] (errors name the field, e.g. `introspection.cluster: must not be
//!    empty`); the glue keeps one [`crate::introspection_state::IntrospectionState`] per provider and
//!    worker.
//! 2. Per request with an opaque token, the state answers from its cache, waits for a call in flight,
//!    refuses past `max_concurrent_calls` (`Err(IntrospectionError::Overloaded(..))`, never fail-open),
//!    or asks for a call: the glue dispatches the state's `build_request(token, now_ms, jti)` (see
//!    [`build_request`]) to `cfg.cluster` and pauses the request.
//! 3. On the call's answer: `parse_response(status, &body)` (at most [`MAX_RESPONSE_BYTES`]); a failed
//!    dispatch or a timeout (no headers) is `Err(IntrospectionError::Unreachable(..))`. The state caches
//!    it and wakes the waiting requests.
//! 4. [`decide`]`(&cfg, &policy, result, now_s)` gives the [`Outcome`]: `Active(i)` → continue (claims
//!    are in `i.claims`, scopes in `i.scope` for the rule checks); `Inactive(why)` or `Rejected(err)` (the
//!    provider's policy — issuer, audiences, subjects, required claims, lifetime, `exp`/`nbf` — refuses
//!    the answer, or its `token_type` is not an access token) → 401 with
//!    `WWW-Authenticate: Bearer ..., error="invalid_token"`; `Unavailable(err)` → 503 local reply and a log
//!    line with `err` (never the token: log [`token_log_id`]); `FailOpen(err)` → log and continue without
//!    claims, as configured by `fail_open`, and only for a transport failure, a timeout or a 5xx
//!    ([`IntrospectionError::may_fail_open`]).

use std::rc::Rc;

use meshwasm_oauth2::{AssertionError, ClientAssertionConfig, ClientAuth, form_urlencode_into};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::validate::{Policy, Round, TokenError, check_introspected_claims, numeric_date_value};

/// Largest introspection response body accepted (64 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest token sent to the introspection endpoint (8 KiB); longer ones are rejected without a call.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How the filter authenticates to the introspection endpoint, and its secret: shared with
/// token-injector. The jwt-auth config maps the deprecated `basic` / `post` spellings.
pub use meshwasm_oauth2::{AuthMethod, Secret};

/// A provider's introspection settings. Durations are written as strings (`"2s"`) and kept here in
/// the unit the field name says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_introspection))]
pub struct IntrospectionConfig {
    /// Envoy cluster of the introspection endpoint.
    pub cluster: String,
    /// Path of the introspection endpoint, e.g. `/token/introspection`.
    pub path: String,
    /// `:authority` sent with the call (the IdP's host name).
    pub authority: String,
    /// Client id the filter authenticates with.
    pub client_id: String,
    /// Client secret the filter authenticates with. Never logged (its `Debug` is redacted).
    /// `client_secret_env` (an environment variable's name) may stand in for it: `Plan::from_json`
    /// reads it into here at configure time. Required for the `client_secret_*` methods, refused
    /// with `private_key_jwt`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// The key and claims of `private_key_jwt` (RFC 7523 client assertions): required with it,
    /// refused otherwise. The private key comes from an environment variable.
    #[serde(default)]
    pub client_assertion: Option<ClientAssertionConfig>,
    /// `timeout`: timeout of one introspection call (default `"2s"`).
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "timeout",
        default = "default_timeout_ms",
        deserialize_with = "meshwasm_config::millis"
    )]
    pub timeout_ms: u64,
    /// `token_type_hint` sent with the token (default `access_token`; empty string: none sent).
    #[serde(default = "default_hint")]
    pub token_type_hint: String,
    /// Bound on cached answers per worker (default 1000; 0 disables caching).
    #[serde(default = "default_cache_max_entries")]
    pub cache_max_entries: usize,
    /// `inactive_ttl`: how long an `active: false` answer is cached (default `"10s"`; `"0s"`: not
    /// cached). Whole seconds.
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "inactive_ttl",
        default = "default_inactive_ttl_s",
        deserialize_with = "meshwasm_config::secs"
    )]
    pub inactive_ttl_s: u64,
    /// `max_active_ttl`: longest an `active: true` answer is cached even if the token's `exp` is
    /// later (default `"5m"`). Bounds how long a revoked token keeps working. Whole seconds.
    #[cfg_attr(feature = "schema", schemars(with = "meshwasm_config::Duration"))]
    #[serde(
        rename = "max_active_ttl",
        default = "default_max_active_ttl_s",
        deserialize_with = "meshwasm_config::secs"
    )]
    pub max_active_ttl_s: u64,
    /// When the endpoint cannot be reached (connection failure, timeout) or answers 5xx: false
    /// (default) fails closed with 503; true lets the request through without claims. A 4xx, a
    /// malformed answer or too many calls in flight always fail closed.
    #[serde(default)]
    pub fail_open: bool,
    /// Most introspection calls of this provider in flight at once per worker (default 64). Past it a request with a
    /// new token gets 503 (never fail-open), so a flood of unique opaque tokens cannot overload the
    /// endpoint.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_hint() -> String {
    "access_token".to_owned()
}
fn default_cache_max_entries() -> usize {
    1000
}
fn default_inactive_ttl_s() -> u64 {
    10
}
fn default_max_active_ttl_s() -> u64 {
    300
}
fn default_max_concurrent_calls() -> usize {
    64
}

impl IntrospectionConfig {
    /// Checks values serde cannot: every error names the field.
    pub fn validate(&self) -> Result<(), IntrospectionError> {
        let bad = |field: &'static str, reason: &str| {
            Err(IntrospectionError::Config { field, reason: reason.into() })
        };
        if self.cluster.trim().is_empty() {
            return bad("cluster", "must name an Envoy cluster");
        }
        if !self.path.starts_with('/') || self.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return bad("path", "must start with `/` and contain no spaces or control characters");
        }
        if self.authority.is_empty() || self.authority.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/') {
            return bad("authority", "must be a host[:port] without spaces or `/`");
        }
        if self.client_id.is_empty() {
            return bad("client_id", "must not be empty");
        }
        if let Err(e) = meshwasm_oauth2::check_client_auth(
            "",
            self.auth_method,
            self.client_secret.as_ref(),
            self.client_assertion.as_ref(),
        ) {
            let field = match e.path() {
                "client_secret" => "client_secret",
                "client_assertion" => "client_assertion",
                "client_assertion.private_key_env" => "client_assertion.private_key_env",
                _ => "auth_method",
            };
            return Err(IntrospectionError::Config { field, reason: e.reason().to_owned() });
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return bad("timeout", "must be between 1ms and 60s");
        }
        if self.token_type_hint.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'_')) {
            return bad("token_type_hint", "must be a token type name like `access_token`");
        }
        if self.max_concurrent_calls == 0 || self.max_concurrent_calls > 10_000 {
            return bad("max_concurrent_calls", "must be between 1 and 10000");
        }
        if self.max_active_ttl_s == 0 && self.cache_max_entries > 0 {
            return bad(
                "max_active_ttl",
                "must be at least 1s (set cache_max_entries to 0 to disable caching)",
            );
        }
        Ok(())
    }
}

/// Errors of configuration and of the introspection exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection.{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("introspection endpoint answered HTTP {0}")]
    Status(u32),
    #[error("introspection response of {0} bytes is over the {MAX_RESPONSE_BYTES}-byte cap")]
    TooLarge(usize),
    #[error("introspection response is malformed: {0}")]
    Malformed(String),
    #[error("introspection endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("{0} introspection calls already in flight on this worker (max_concurrent_calls)")]
    Overloaded(usize),
    #[error("cannot authenticate to the introspection endpoint: {0}")]
    Credentials(String),
}

impl IntrospectionError {
    /// Whether `fail_open` may let the request through: only when the endpoint could not be reached,
    /// timed out or failed on its side (5xx). A 4xx (bad resource-server credentials, 429), a malformed
    /// or oversized answer, our own call cap or a config error say nothing about the endpoint being down
    /// and could be provoked, so they always fail closed.
    pub fn may_fail_open(&self) -> bool {
        match self {
            IntrospectionError::Unreachable(_) => true,
            IntrospectionError::Status(s) => (500..600).contains(s),
            IntrospectionError::Config { .. }
            | IntrospectionError::TooLarge(_)
            | IntrospectionError::Malformed(_)
            | IntrospectionError::Overloaded(_)
            | IntrospectionError::Credentials(_) => false,
        }
    }
}

/// A parsed introspection answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Introspection {
    pub active: bool,
    /// Every member of the response object (including `active`), for claim rules and headers.
    pub claims: Map<String, Value>,
    pub exp: Option<u64>,
    pub iat: Option<u64>,
    pub nbf: Option<u64>,
    /// From `scope`: a space-delimited string (RFC 7662), or an array of strings.
    pub scope: Vec<String>,
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    /// From `aud`: a string or an array of strings.
    pub aud: Vec<String>,
}

/// Headers and body of an introspection call.
pub type CallRequest = (Vec<(String, String)>, Vec<u8>);

/// How this provider authenticates its introspection calls (per worker: `private_key_jwt` keeps
/// state). The assertion's default `aud` is the endpoint's URL, `https://<authority><path>`.
pub fn client_auth(cfg: &IntrospectionConfig) -> Result<ClientAuth, AssertionError> {
    ClientAuth::new(
        cfg.auth_method,
        &cfg.client_id,
        cfg.client_secret.as_ref(),
        cfg.client_assertion.as_ref(),
        format!("https://{}{}", cfg.authority, cfg.path),
    )
}

/// Headers and body of the introspection call at `now_s` (Unix seconds), authenticated by `auth`
/// (`jti` gives a client assertion's random id).
pub fn build_request(
    cfg: &IntrospectionConfig,
    auth: &mut ClientAuth,
    token: &str,
    now_s: u64,
    jti: &mut dyn FnMut() -> Option<String>,
) -> Result<CallRequest, IntrospectionError> {
    let mut body = String::with_capacity(token.len() + 64);
    body.push_str("token=");
    form_urlencode_into(&mut body, token);
    if !cfg.token_type_hint.is_empty() {
        body.push_str("&token_type_hint=");
        form_urlencode_into(&mut body, &cfg.token_type_hint);
    }
    let mut headers = vec![
        (":method".to_owned(), "POST".to_owned()),
        (":path".to_owned(), cfg.path.clone()),
        (":authority".to_owned(), cfg.authority.clone()),
        ("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned()),
        ("accept".to_owned(), "application/json".to_owned()),
    ];
    auth.apply(now_s, jti, &mut headers, &mut body)
        .map_err(|e| IntrospectionError::Credentials(e.to_string()))?;
    Ok((headers, body.into_bytes()))
}

/// Rejects a response body over [`MAX_RESPONSE_BYTES`] before it is read.
pub fn check_body_size(size: usize) -> Result<(), IntrospectionError> {
    if size > MAX_RESPONSE_BYTES { Err(IntrospectionError::TooLarge(size)) } else { Ok(()) }
}

/// Parses the introspection endpoint's answer. Anything but HTTP 200 with a JSON object whose `active`
/// is a boolean is an error; `exp`, `iat`, `nbf` must be NumericDates when present (finite non-negative
/// numbers below 2^64; a fraction is rounded toward the safe side, `exp` down and `nbf`/`iat` up; no
/// strings or negatives; `null` counts as absent), `scope` a string or array of strings, `aud` a string
/// or array, `sub`, `iss`, `client_id`, `token_type`, `token_use` strings.
pub fn parse_response(status: u32, body: &[u8]) -> Result<Introspection, IntrospectionError> {
    if status != 200 {
        return Err(IntrospectionError::Status(status));
    }
    check_body_size(body.len())?;
    let malformed = |m: &str| IntrospectionError::Malformed(m.to_owned());
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed(&format!("not JSON ({e})")))?;
    let Value::Object(mut claims) = value else {
        return Err(malformed("not a JSON object"));
    };
    let active = match claims.get("active") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(malformed("`active` is not a boolean")),
        None => return Err(malformed("`active` is missing")),
    };
    if !active {
        // RFC 7662 §2.2: other members of an inactive answer carry no meaning.
        return Ok(Introspection {
            active,
            claims,
            exp: None,
            iat: None,
            nbf: None,
            scope: Vec::new(),
            client_id: None,
            sub: None,
            iss: None,
            aud: Vec::new(),
        });
    }
    let exp = numeric_date(&claims, "exp", Round::Down)?;
    let iat = numeric_date(&claims, "iat", Round::Up)?;
    let nbf = numeric_date(&claims, "nbf", Round::Up)?;
    // `null` means absent; drop it so the provider's claim checks see the same.
    claims.retain(|k, v| !(v.is_null() && matches!(k.as_str(), "exp" | "iat" | "nbf")));
    let scope = match claims.get("scope") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        Some(Value::Array(a)) => strings(a, "scope")?,
        Some(_) => return Err(malformed("`scope` is not a string or an array of strings")),
    };
    let aud = match claims.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => strings(a, "aud")?,
        Some(_) => return Err(malformed("`aud` is not a string or an array of strings")),
    };
    let client_id = opt_string(&claims, "client_id")?;
    let sub = opt_string(&claims, "sub")?;
    let iss = opt_string(&claims, "iss")?;
    opt_string(&claims, "token_type")?;
    opt_string(&claims, "token_use")?;
    Ok(Introspection { active, claims, exp, iat, nbf, scope, client_id, sub, iss, aud })
}

fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    round: Round,
) -> Result<Option<u64>, IntrospectionError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => numeric_date_value(n, round)
            .map(Some)
            .ok_or_else(|| IntrospectionError::Malformed(format!("`{name}` is not a NumericDate ({n})"))),
        Some(_) => Err(IntrospectionError::Malformed(format!("`{name}` is not a number"))),
    }
}

fn opt_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, IntrospectionError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(IntrospectionError::Malformed(format!("`{name}` is not a string"))),
    }
}

fn strings(a: &[Value], name: &str) -> Result<Vec<String>, IntrospectionError> {
    a.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| IntrospectionError::Malformed(format!("`{name}` array holds a non-string")))
        })
        .collect()
}

/// What the filter does with a request after introspection.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Token active: continue, with its claims.
    Active(Rc<Introspection>),
    /// Token not active: 401 `invalid_token` with this description.
    Inactive(&'static str),
    /// Active, but the provider's policy refuses it (issuer, audience, subject, required claims,
    /// lifetime, `exp`/`nbf`/`iat`, token type): 401 `invalid_token`.
    Rejected(TokenError),
    /// The endpoint could not answer usefully and `fail_open` is false: 503.
    Unavailable(IntrospectionError),
    /// The endpoint could not answer usefully and `fail_open` is true: continue without claims.
    FailOpen(IntrospectionError),
}

/// Whether an active answer is for an access token. RFC 7662 §2.2 `token_type` (RFC 6749 §7.1
/// types, or an RFC 8693 token type URI): absent, `access_token`, `Bearer`, or
/// `urn:ietf:params:oauth:token-type:access_token` (any case). Anything else — `refresh_token`, an ID
/// token, `DPoP` (this filter checks no DPoP proof, RFC 9449 §7) — is refused. Ory Hydra's `token_use`,
/// when present, must be `access_token`.
pub fn is_access_token(claims: &Map<String, Value>) -> bool {
    let type_ok = match claims.get("token_type") {
        None | Some(Value::Null) => true,
        Some(Value::String(t)) => ["access_token", "bearer", "urn:ietf:params:oauth:token-type:access_token"]
            .iter()
            .any(|ok| t.eq_ignore_ascii_case(ok)),
        Some(_) => false,
    };
    let use_ok = match claims.get("token_use") {
        None | Some(Value::Null) => true,
        Some(Value::String(u)) => u.eq_ignore_ascii_case("access_token"),
        Some(_) => false,
    };
    type_ok && use_ok
}

/// Maps an introspection result to the filter's decision at `now_s`: an active answer goes through the
/// provider's `policy` exactly as a JWT's claims do ([`check_introspected_claims`]).
pub fn decide(
    cfg: &IntrospectionConfig,
    policy: &Policy,
    result: Result<Rc<Introspection>, IntrospectionError>,
    now_s: u64,
) -> Outcome {
    match result {
        Ok(i) if !i.active => Outcome::Inactive("the access token is not active"),
        Ok(i) if !is_access_token(&i.claims) => Outcome::Rejected(TokenError::TokenType),
        Ok(i) => match check_introspected_claims(policy, &i.claims, now_s) {
            Ok(_) => Outcome::Active(i),
            Err(e) => Outcome::Rejected(e),
        },
        Err(e) if cfg.fail_open && e.may_fail_open() => Outcome::FailOpen(e),
        Err(e) => Outcome::Unavailable(e),
    }
}

/// Cache key of a token: the first 128 bits of its SHA-256 (the token itself is never stored).
pub fn token_key(token: &str) -> u128 {
    let d = Sha256::digest(token.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    u128::from_be_bytes(k)
}

/// Short hex prefix of a token's hash, for logs (never log tokens).
pub fn token_log_id(token: &str) -> String {
    format!("{:08x}", (token_key(token) >> 96) as u32)
}

#[cfg(test)]
#[path = "introspection_tests.rs"]
mod tests;

#[cfg(feature = "schema")]
fn schema_introspection(s: &mut schemars::Schema) {
    use meshwasm_config::Unit;
    use meshwasm_config::schema::{legacy_duration, legacy_value, set_default};
    for (new, old, unit, default) in [
        ("timeout", "timeout_ms", Unit::Millis, "2s"),
        ("inactive_ttl", "inactive_ttl_s", Unit::Seconds, "10s"),
        ("max_active_ttl", "max_active_ttl_s", Unit::Seconds, "5m"),
    ] {
        set_default(s, new, serde_json::json!(default));
        legacy_duration(s, old, unit, new);
    }
    legacy_value(s, "auth_method", "basic", "client_secret_basic");
    legacy_value(s, "auth_method", "post", "client_secret_post");
    meshwasm_oauth2::schema_secret_env(s);
}
