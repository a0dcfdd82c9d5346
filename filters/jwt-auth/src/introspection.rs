//! RFC 7662 token introspection for opaque access tokens: configuration, the request to the
//! introspection endpoint, strict parsing of its answer, the decision it leads to, and a bounded cache
//! of answers. Pure logic (no proxy_wasm); time is passed in as Unix seconds.
//!
//! Dependencies: serde, serde_json, sha2, meshwasm-oauth2 (client authentication encodings) and std.
//!
//! # How the jwt-auth glue uses it
//! 1. `on_configure`: deserialize a provider's `introspection` object into [`IntrospectionConfig`] and
//!    call [`IntrospectionConfig::validate`]; on error log it (it names the field, e.g.
//!    `introspection.cluster: must not be empty`) and return false. Build one [`IntrospectionCache`] per
//!    root context (per worker) with [`IntrospectionCache::new`]`(&cfg)`.
//! 2. Per request with a token for that provider: `cache.get(token, now_s)`. On a hit, go to step 4
//!    with `Ok(cached)`.
//! 3. On a miss: `let (headers, body) = build_request(&cfg, token);` then
//!    `dispatch_http_call(&cfg.cluster, headers (as &str pairs), Some(&body), vec![],
//!    Duration::from_millis(cfg.timeout_ms))` and pause the request (`Action::Pause`). Requests carrying
//!    the same token while a call is in flight can wait on that call ([`token_key`] identifies it).
//!    In `on_http_call_response(_, _, body_size, _)`: read `:status` from the call's response headers
//!    and the body (refuse more than [`MAX_RESPONSE_BYTES`]: pass the size to [`check_body_size`]), then
//!    `parse_response(status, &body)`. A failed dispatch or a timeout (Envoy calls back with no headers)
//!    is `Err(IntrospectionError::Unreachable(..))`. On `Ok(i)`: `cache.insert(token, i.clone(), now_s)`.
//!    At most `max_concurrent_calls` calls are in flight per worker and provider; past that the request
//!    gets `Err(IntrospectionError::Overloaded(..))`, which never fails open.
//! 4. [`decide`]`(&cfg, &policy, result, now_s)` gives the [`Outcome`]: `Active(i)` → continue (claims
//!    are in `i.claims`, scopes in `i.scope` for the rule checks); `Inactive(why)` or `Rejected(err)` (the
//!    provider's policy — issuer, audiences, subjects, required claims, lifetime, `exp`/`nbf` — refuses
//!    the answer, or its `token_type` is not an access token) → 401 with
//!    `WWW-Authenticate: Bearer ..., error="invalid_token"`; `Unavailable(err)` → 503 local reply and a log
//!    line with `err` (never the token: log [`token_log_id`]); `FailOpen(err)` → log and continue without
//!    claims, as configured by `fail_open`, and only for a transport failure, a timeout or a 5xx
//!    ([`IntrospectionError::may_fail_open`]).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use meshwasm_oauth2::{authenticate, form_urlencode_into};
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
#[serde(deny_unknown_fields)]
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
    pub client_secret: Secret,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// `timeout`: timeout of one introspection call (default `"2s"`).
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
    #[serde(
        rename = "inactive_ttl",
        default = "default_inactive_ttl_s",
        deserialize_with = "meshwasm_config::secs"
    )]
    pub inactive_ttl_s: u64,
    /// `max_active_ttl`: longest an `active: true` answer is cached even if the token's `exp` is
    /// later (default `"5m"`). Bounds how long a revoked token keeps working. Whole seconds.
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
        if self.client_secret.is_empty() {
            return bad("client_secret", "must not be empty");
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
            | IntrospectionError::Overloaded(_) => false,
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

/// Headers and body of the introspection call.
pub fn build_request(cfg: &IntrospectionConfig, token: &str) -> (Vec<(String, String)>, Vec<u8>) {
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
    authenticate(cfg.auth_method, &cfg.client_id, &cfg.client_secret, &mut headers, &mut body);
    (headers, body.into_bytes())
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

struct Entry {
    value: Rc<Introspection>,
    expires_s: u64,
    seq: u64,
}

/// Bounded per-worker cache of introspection answers keyed by [`token_key`]. Active answers live until
/// `min(exp, now + max_active_ttl_s)`, inactive ones for `inactive_ttl_s`. When full, expired entries go
/// first, then the oldest inserted (FIFO; O(1) amortized per operation).
pub struct IntrospectionCache {
    map: HashMap<u128, Entry>,
    order: VecDeque<(u128, u64)>,
    next_seq: u64,
    max_entries: usize,
    inactive_ttl_s: u64,
    max_active_ttl_s: u64,
}

impl IntrospectionCache {
    pub fn new(cfg: &IntrospectionConfig) -> Self {
        Self::with_limits(cfg.cache_max_entries, cfg.inactive_ttl_s, cfg.max_active_ttl_s)
    }

    pub fn with_limits(max_entries: usize, inactive_ttl_s: u64, max_active_ttl_s: u64) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            max_entries,
            inactive_ttl_s,
            max_active_ttl_s,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The cached answer for `token` still fresh at `now_s`.
    pub fn get(&mut self, token: &str, now_s: u64) -> Option<Rc<Introspection>> {
        let key = token_key(token);
        let e = self.map.get(&key)?;
        if now_s < e.expires_s {
            return Some(e.value.clone());
        }
        self.map.remove(&key);
        None
    }

    /// Caches an answer received at `now_s`; returns the shared value (also when not cached: caching
    /// off, an inactive TTL of 0, or an active token already past its `exp`).
    pub fn insert(&mut self, token: &str, value: Introspection, now_s: u64) -> Rc<Introspection> {
        let value = Rc::new(value);
        let expires_s = if value.active {
            let cap = now_s.saturating_add(self.max_active_ttl_s);
            value.exp.map_or(cap, |exp| exp.min(cap))
        } else {
            now_s.saturating_add(self.inactive_ttl_s)
        };
        if self.max_entries == 0 || expires_s <= now_s {
            return value;
        }
        let key = token_key(token);
        if !self.map.contains_key(&key) && self.map.len() >= self.max_entries {
            self.evict(now_s);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.map.insert(key, Entry { value: value.clone(), expires_s, seq });
        self.order.push_back((key, seq));
        // Re-inserted keys leave stale order records behind; compact when they dominate.
        if self.order.len() > self.max_entries.saturating_mul(2).max(16) {
            let map = &self.map;
            self.order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
        value
    }

    fn evict(&mut self, now_s: u64) {
        let before = self.map.len();
        self.map.retain(|_, e| e.expires_s > now_s);
        if self.map.len() < before {
            return;
        }
        while let Some((key, seq)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&key);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> IntrospectionConfig {
        serde_json::from_value(serde_json::json!({
            "cluster": "idp",
            "path": "/token/introspection",
            "authority": "idp.example.com",
            "client_id": "rs",
            "client_secret": "rs-secret",
        }))
        .unwrap()
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c = cfg();
        assert_eq!(c.auth_method, AuthMethod::ClientSecretBasic);
        assert_eq!(c.timeout_ms, 2000);
        assert_eq!(c.token_type_hint, "access_token");
        assert_eq!(c.cache_max_entries, 1000);
        assert_eq!(c.inactive_ttl_s, 10);
        assert_eq!(c.max_active_ttl_s, 300);
        assert!(!c.fail_open);
        assert_eq!(c.max_concurrent_calls, 64);
        c.validate().unwrap();
        let err = serde_json::from_value::<IntrospectionConfig>(serde_json::json!({
            "cluster": "idp", "path": "/i", "authority": "a", "client_id": "x", "client_secret": "y",
            "fail_opne": true
        }))
        .unwrap_err();
        assert!(err.to_string().contains("fail_opne"), "{err}");
        let err = serde_json::from_value::<IntrospectionConfig>(serde_json::json!({
            "cluster": "idp", "path": "/i", "authority": "a", "client_id": "x", "client_secret": "y",
            "timeout": 100
        }))
        .unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let c: IntrospectionConfig = serde_json::from_value(serde_json::json!({
            "cluster": "idp", "path": "/i", "authority": "a", "client_id": "x", "client_secret": "y",
            "timeout": "1500ms", "inactive_ttl": "1m", "max_active_ttl": "1h", "auth_method": "client_secret_post"
        }))
        .unwrap();
        assert_eq!((c.timeout_ms, c.inactive_ttl_s, c.max_active_ttl_s), (1500, 60, 3600));
        assert_eq!(c.auth_method, AuthMethod::ClientSecretPost);
        let err = serde_json::from_value::<IntrospectionConfig>(serde_json::json!({
            "cluster": "idp", "path": "/i", "authority": "a", "client_id": "x", "client_secret": "y",
            "auth_method": "jwt"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("jwt"), "{err}");
    }

    #[test]
    fn validate_names_the_field() {
        type Mutation = Box<dyn Fn(&mut IntrospectionConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("cluster", Box::new(|c| c.cluster = " ".into())),
            ("path", Box::new(|c| c.path = "token".into())),
            ("path", Box::new(|c| c.path = "/a b".into())),
            ("authority", Box::new(|c| c.authority = "".into())),
            ("authority", Box::new(|c| c.authority = "http://x".into())),
            ("client_id", Box::new(|c| c.client_id = "".into())),
            ("client_secret", Box::new(|c| c.client_secret = Secret::new(""))),
            ("timeout", Box::new(|c| c.timeout_ms = 0)),
            ("timeout", Box::new(|c| c.timeout_ms = 600_000)),
            ("token_type_hint", Box::new(|c| c.token_type_hint = "a&b".into())),
            ("max_active_ttl", Box::new(|c| c.max_active_ttl_s = 0)),
            ("max_concurrent_calls", Box::new(|c| c.max_concurrent_calls = 0)),
            ("max_concurrent_calls", Box::new(|c| c.max_concurrent_calls = 10_001)),
        ];
        for (field, mutate) in cases {
            let mut c = cfg();
            mutate(&mut c);
            let err = c.validate().unwrap_err();
            assert_eq!(err.to_string().split(':').next().unwrap(), format!("introspection.{field}"), "{err}");
        }
        let mut c = cfg();
        c.max_active_ttl_s = 0;
        c.cache_max_entries = 0;
        c.validate().unwrap();
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = format!("{:?}", cfg());
        assert!(!s.contains("rs-secret") && s.contains("<redacted>"), "{s}");
    }

    #[test]
    fn request_basic_auth() {
        let (h, body) = build_request(&cfg(), "tok+en/=");
        assert_eq!(header(&h, ":method"), Some("POST"));
        assert_eq!(header(&h, ":path"), Some("/token/introspection"));
        assert_eq!(header(&h, ":authority"), Some("idp.example.com"));
        assert_eq!(header(&h, "content-type"), Some("application/x-www-form-urlencoded"));
        // base64("rs:rs-secret")
        assert_eq!(header(&h, "authorization"), Some("Basic cnM6cnMtc2VjcmV0"));
        assert_eq!(String::from_utf8(body).unwrap(), "token=tok%2Ben%2F%3D&token_type_hint=access_token");
    }

    #[test]
    fn request_post_auth_and_no_hint() {
        let mut c = cfg();
        c.auth_method = AuthMethod::ClientSecretPost;
        c.client_secret = Secret::new("s e&c=r");
        c.token_type_hint = String::new();
        let (h, body) = build_request(&c, "abc");
        assert_eq!(header(&h, "authorization"), None);
        assert_eq!(String::from_utf8(body).unwrap(), "token=abc&client_id=rs&client_secret=s+e%26c%3Dr");
    }

    #[test]
    fn parse_active_answer() {
        let body =
            br#"{"active":true,"client_id":"c1","exp":2000,"iat":1000,"scope":"read  write","aud":"api",
            "sub":"s","iss":"https://idp","ext":{"k":1}}"#;
        let i = parse_response(200, body).unwrap();
        assert!(i.active);
        assert_eq!(i.exp, Some(2000));
        assert_eq!(i.iat, Some(1000));
        assert_eq!(i.scope, vec!["read", "write"]);
        assert_eq!(i.aud, vec!["api"]);
        assert_eq!(i.client_id.as_deref(), Some("c1"));
        assert_eq!(i.sub.as_deref(), Some("s"));
        assert_eq!(i.iss.as_deref(), Some("https://idp"));
        assert_eq!(i.claims["ext"]["k"], 1);
        let i = parse_response(200, br#"{"active":true,"scope":["a","b"],"aud":["x","y"]}"#).unwrap();
        assert_eq!(i.scope, vec!["a", "b"]);
        assert_eq!(i.aud, vec!["x", "y"]);
        assert_eq!(i.exp, None);
    }

    #[test]
    fn parse_inactive_answer_ignores_other_members() {
        let i = parse_response(200, br#"{"active":false,"exp":"garbage"}"#).unwrap();
        assert!(!i.active);
        assert_eq!(i.exp, None);
    }

    #[test]
    fn parse_rejects_bad_answers() {
        assert_eq!(parse_response(500, br#"{"active":true}"#), Err(IntrospectionError::Status(500)));
        assert_eq!(parse_response(401, b"{}"), Err(IntrospectionError::Status(401)));
        let bad: &[&[u8]] = &[
            b"",
            b"not json",
            b"[]",
            b"{}",
            br#"{"active":"true"}"#,
            br#"{"active":1}"#,
            br#"{"active":null}"#,
            br#"{"active":true,"exp":"2000"}"#,
            br#"{"active":true,"exp":-0.5}"#,
            br#"{"active":true,"nbf":18446744073709551616}"#,
            br#"{"active":true,"token_type":1}"#,
            br#"{"active":true,"token_use":[]}"#,
            br#"{"active":true,"exp":-1}"#,
            br#"{"active":true,"exp":1e30}"#,
            br#"{"active":true,"iat":true}"#,
            br#"{"active":true,"nbf":[1]}"#,
            br#"{"active":true,"scope":5}"#,
            br#"{"active":true,"scope":["a",1]}"#,
            br#"{"active":true,"aud":{}}"#,
            br#"{"active":true,"sub":5}"#,
            br#"{"active":true,"client_id":[]}"#,
        ];
        for b in bad {
            let r = parse_response(200, b);
            assert!(
                matches!(r, Err(IntrospectionError::Malformed(_))),
                "{:?} → {r:?}",
                String::from_utf8_lossy(b)
            );
        }
        let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert_eq!(parse_response(200, &huge), Err(IntrospectionError::TooLarge(MAX_RESPONSE_BYTES + 1)));
        assert!(check_body_size(MAX_RESPONSE_BYTES).is_ok());
    }

    /// A policy without skew or issuer/audience checks: only the answer's own dates matter.
    fn lax() -> Policy {
        Policy { clock_skew_s: 0, ..Policy::default() }
    }

    fn active(body: &[u8]) -> Result<Rc<Introspection>, IntrospectionError> {
        Ok(Rc::new(parse_response(200, body).unwrap()))
    }

    #[test]
    fn decisions() {
        let c = cfg();
        let p = lax();
        assert!(matches!(decide(&c, &p, active(br#"{"active":true,"exp":200}"#), 100), Outcome::Active(_)));
        assert!(
            matches!(decide(&c, &p, active(br#"{"active":true}"#), 100), Outcome::Active(_)),
            "RFC 7662: exp is optional, require_expiration applies to JWTs only"
        );
        assert_eq!(
            decide(&c, &p, active(br#"{"active":false}"#), 100),
            Outcome::Inactive("the access token is not active")
        );
        assert_eq!(
            decide(&c, &p, active(br#"{"active":true,"exp":100}"#), 100),
            Outcome::Rejected(TokenError::Expired)
        );
        assert_eq!(
            decide(&c, &p, active(br#"{"active":true,"nbf":101}"#), 100),
            Outcome::Rejected(TokenError::NotYetValid)
        );
        // The provider's clock skew applies as for JWTs.
        let skew = Policy { clock_skew_s: 60, ..Policy::default() };
        assert!(matches!(
            decide(&c, &skew, active(br#"{"active":true,"exp":100}"#), 159),
            Outcome::Active(_)
        ));
        assert_eq!(
            decide(&c, &skew, active(br#"{"active":true,"exp":100}"#), 160),
            Outcome::Rejected(TokenError::Expired)
        );
        let err = IntrospectionError::Unreachable("timeout".into());
        assert_eq!(decide(&c, &p, Err(err.clone()), 100), Outcome::Unavailable(err.clone()));
        let mut open = cfg();
        open.fail_open = true;
        assert_eq!(decide(&open, &p, Err(err.clone()), 100), Outcome::FailOpen(err));
        // fail_open never turns an inactive token into an allowed one.
        assert!(matches!(decide(&open, &p, active(br#"{"active":false}"#), 100), Outcome::Inactive(_)));
    }

    #[test]
    fn active_answers_get_the_providers_policy() {
        let c = cfg();
        let policy = Policy {
            issuer: Some("https://idp".into()),
            audiences: vec!["orders".into()],
            subject: Some(crate::validate::StringMatch::Prefix("svc-".into())),
            required_claims: vec!["client_id".into()],
            max_lifetime_s: Some(600),
            ..Policy::default()
        };
        let good = serde_json::json!({"active": true, "iss": "https://idp", "aud": ["x", "orders"],
            "sub": "svc-a", "client_id": "c", "iat": 1000, "exp": 1300});
        let with = |k: &str, v: Value| {
            let mut b = good.clone();
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v;
            }
            decide(&c, &policy, active(b.to_string().as_bytes()), 1100)
        };
        assert!(matches!(with("sub", "svc-a".into()), Outcome::Active(_)));
        assert_eq!(with("iss", "https://evil".into()), Outcome::Rejected(TokenError::Issuer));
        assert_eq!(with("iss", Value::Null), Outcome::Rejected(TokenError::Issuer));
        assert_eq!(with("aud", "payments".into()), Outcome::Rejected(TokenError::Audience));
        assert_eq!(with("aud", Value::Null), Outcome::Rejected(TokenError::Audience));
        assert_eq!(with("sub", "admin".into()), Outcome::Rejected(TokenError::Subject));
        assert_eq!(with("client_id", Value::Null), Outcome::Rejected(TokenError::MissingClaim));
        assert_eq!(with("exp", 1601.into()), Outcome::Rejected(TokenError::LifetimeTooLong));
        assert_eq!(
            with("exp", Value::Null),
            Outcome::Rejected(TokenError::MissingExp),
            "max_lifetime_s needs exp"
        );
        assert_eq!(with("exp", 1000.into()), Outcome::Rejected(TokenError::Expired));
        assert_eq!(with("nbf", 1200.into()), Outcome::Rejected(TokenError::NotYetValid));
        assert_eq!(with("iat", 1200.into()), Outcome::Rejected(TokenError::IssuedInFuture));
        // fail_open does not change a policy refusal.
        let mut open = cfg();
        open.fail_open = true;
        let mut b = good.clone();
        b["aud"] = "payments".into();
        assert_eq!(
            decide(&open, &policy, active(b.to_string().as_bytes()), 1100),
            Outcome::Rejected(TokenError::Audience)
        );
    }

    #[test]
    fn only_access_tokens_are_accepted() {
        let c = cfg();
        let p = lax();
        let with =
            |extra: &str| decide(&c, &p, active(format!(r#"{{"active":true{extra}}}"#).as_bytes()), 100);
        for ok in [
            "",
            r#","token_type":null"#,
            r#","token_type":"access_token""#,
            r#","token_type":"Bearer""#,
            r#","token_type":"bearer""#,
            r#","token_type":"urn:ietf:params:oauth:token-type:access_token""#,
            r#","token_type":"Bearer","token_use":"access_token""#,
        ] {
            assert!(matches!(with(ok), Outcome::Active(_)), "{ok}");
        }
        for bad in [
            r#","token_type":"refresh_token""#,
            r#","token_type":"urn:ietf:params:oauth:token-type:refresh_token""#,
            r#","token_type":"urn:ietf:params:oauth:token-type:id_token""#,
            r#","token_type":"DPoP""#,
            r#","token_type":"","x":1"#,
            r#","token_type":"Bearer","token_use":"refresh_token""#,
        ] {
            assert_eq!(with(bad), Outcome::Rejected(TokenError::TokenType), "{bad}");
        }
    }

    #[test]
    fn only_an_unreachable_or_failing_endpoint_may_fail_open() {
        let mut open = cfg();
        open.fail_open = true;
        let p = lax();
        for e in [
            IntrospectionError::Unreachable("timeout".into()),
            IntrospectionError::Status(500),
            IntrospectionError::Status(503),
            IntrospectionError::Status(599),
        ] {
            assert_eq!(decide(&open, &p, Err(e.clone()), 100), Outcome::FailOpen(e));
        }
        for e in [
            IntrospectionError::Status(400),
            IntrospectionError::Status(401),
            IntrospectionError::Status(403),
            IntrospectionError::Status(429),
            IntrospectionError::Status(302),
            IntrospectionError::Status(204),
            IntrospectionError::Status(600),
            IntrospectionError::Malformed("x".into()),
            IntrospectionError::TooLarge(1 << 20),
            IntrospectionError::Overloaded(64),
            IntrospectionError::Config { field: "cluster", reason: "x".into() },
        ] {
            assert_eq!(decide(&open, &p, Err(e.clone()), 100), Outcome::Unavailable(e));
        }
    }

    #[test]
    fn fractional_dates_in_answers_round_toward_the_safe_side() {
        let i = parse_response(200, br#"{"active":true,"exp":2000.9,"iat":1000.1,"nbf":999.5,"x":null}"#)
            .unwrap();
        assert_eq!((i.exp, i.iat, i.nbf), (Some(2000), Some(1001), Some(1000)));
        let i = parse_response(200, br#"{"active":true,"exp":null,"nbf":null}"#).unwrap();
        assert_eq!((i.exp, i.nbf), (None, None));
        assert!(matches!(decide(&cfg(), &lax(), Ok(Rc::new(i)), 100), Outcome::Active(_)), "null is absent");
        let p = lax();
        let fr = |b: &[u8], now| decide(&cfg(), &p, active(b), now);
        assert_eq!(fr(br#"{"active":true,"exp":100.5}"#, 100), Outcome::Rejected(TokenError::Expired));
        assert_eq!(fr(br#"{"active":true,"nbf":100.5}"#, 100), Outcome::Rejected(TokenError::NotYetValid));
        assert!(matches!(fr(br#"{"active":true,"nbf":99.5,"exp":101.5}"#, 100), Outcome::Active(_)));
    }

    fn active_until(exp: Option<u64>) -> Introspection {
        let body = match exp {
            Some(e) => format!(r#"{{"active":true,"exp":{e}}}"#),
            None => r#"{"active":true}"#.to_owned(),
        };
        parse_response(200, body.as_bytes()).unwrap()
    }

    fn inactive() -> Introspection {
        parse_response(200, br#"{"active":false}"#).unwrap()
    }

    #[test]
    fn cache_active_until_exp_or_max_ttl() {
        let mut cache = IntrospectionCache::with_limits(10, 5, 300);
        cache.insert("a", active_until(Some(1100)), 1000);
        assert!(cache.get("a", 1099).is_some());
        assert!(cache.get("a", 1100).is_none(), "expires at exp");
        assert!(cache.is_empty());
        // exp further than the max TTL: capped.
        cache.insert("b", active_until(Some(10_000)), 1000);
        assert!(cache.get("b", 1299).is_some());
        assert!(cache.get("b", 1300).is_none());
        // no exp: max TTL.
        cache.insert("c", active_until(None), 1000);
        assert!(cache.get("c", 1299).is_some());
        assert!(cache.get("c", 1300).is_none());
        // already expired: not cached, but returned.
        let v = cache.insert("d", active_until(Some(900)), 1000);
        assert!(v.active);
        assert!(cache.get("d", 1000).is_none());
        assert!(cache.get("unknown", 1000).is_none());
    }

    #[test]
    fn cache_inactive_briefly() {
        let mut cache = IntrospectionCache::with_limits(10, 5, 300);
        cache.insert("x", inactive(), 1000);
        assert!(!cache.get("x", 1004).unwrap().active);
        assert!(cache.get("x", 1005).is_none());
        let mut no_inactive = IntrospectionCache::with_limits(10, 0, 300);
        no_inactive.insert("x", inactive(), 1000);
        assert!(no_inactive.get("x", 1000).is_none());
        let mut off = IntrospectionCache::with_limits(0, 5, 300);
        off.insert("x", active_until(None), 1000);
        assert!(off.get("x", 1000).is_none());
    }

    #[test]
    fn cache_is_bounded_evicting_expired_then_oldest() {
        let mut cache = IntrospectionCache::with_limits(3, 5, 300);
        cache.insert("short", inactive(), 1000); // expires 1005
        cache.insert("a", active_until(None), 1000);
        cache.insert("b", active_until(None), 1000);
        cache.insert("c", active_until(None), 1006); // "short" expired: evicted first
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get("a", 1006).is_some()
                && cache.get("b", 1006).is_some()
                && cache.get("c", 1006).is_some()
        );
        cache.insert("d", active_until(None), 1007); // full, nothing expired: oldest ("a") goes
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a", 1007).is_none());
        assert!(cache.get("d", 1007).is_some());
        // Re-inserting a key does not grow the cache, and its old order record does not evict it.
        for i in 0..100 {
            cache.insert("d", active_until(None), 1008 + i);
        }
        assert_eq!(cache.len(), 3);
        cache.insert("e", active_until(None), 1200);
        assert!(cache.get("d", 1200).is_some(), "re-inserted key is the newest");
        assert!(cache.get("b", 1200).is_none());
        assert!(cache.order.len() <= 16);
    }

    #[test]
    fn cache_many_tokens_stays_bounded() {
        let mut cache = IntrospectionCache::with_limits(50, 5, 300);
        for i in 0..10_000u64 {
            cache.insert(&format!("tok-{i}"), active_until(Some(5000)), 1000 + i / 100);
            assert!(cache.len() <= 50);
        }
        assert!(cache.order.len() <= 100);
        assert!(cache.get("tok-9999", 1100).is_some());
    }

    #[test]
    fn keys_and_log_ids_do_not_leak_tokens() {
        assert_ne!(token_key("a"), token_key("b"));
        assert_eq!(token_key("a"), token_key("a"));
        let id = token_log_id("secret-token");
        assert_eq!(id.len(), 8);
        assert!(!id.contains("secret"));
    }
}
