//! The configuration as written (JSON, deserialized with serde): every struct denies unknown fields,
//! so a typo such as `isuer` fails the configuration instead of silently disabling a check. The
//! parent module validates it into a [`super::Plan`].

use std::collections::BTreeMap;

use meshwasm_config::Duration;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_config))]
pub struct Config {
    /// Token issuers, by name (referenced from rules).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Rules, first match wins. A request that matches no rule is not checked.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// `realm` of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Verified-token cache size per worker (0 disables it).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Longest time a verified token stays cached (also for tokens without `exp`). Whole seconds.
    #[serde(default = "default_cache_max_ttl")]
    pub cache_max_ttl: Duration,
    /// How long a request waits for a provider's remote keys to first load (or refetch on an unknown
    /// kid) before it is answered 503.
    #[serde(default = "default_wait")]
    pub key_wait_timeout: Duration,
    /// Let CORS preflight requests (OPTIONS with Origin and Access-Control-Request-Method) through.
    #[serde(default = "yes")]
    pub bypass_cors_preflight: bool,
}

fn default_realm() -> String {
    "meshwasm".into()
}
fn default_cache_entries() -> usize {
    1024
}
fn default_cache_max_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_wait() -> Duration {
    Duration::from_secs(3)
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_provider))]
pub struct ProviderConfig {
    /// Required `iss`; also the base URL of OIDC discovery.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one); empty = audience not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted JWS algorithms. Default: every asymmetric one (RS*, PS*, ES256, ES384, EdDSA); HS* must be
    /// listed explicitly.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Inline JWKS object (`{"keys": [...]}`).
    #[serde(default)]
    pub local_jwks: Option<serde_json::Value>,
    /// Inline PEM public keys (SubjectPublicKeyInfo or PKCS#1).
    #[serde(default)]
    pub pem: Vec<String>,
    /// Keys fetched from a JWKS URI (or found by OIDC discovery) through an Envoy cluster.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
    /// Where the token is read from. Default: `Authorization: Bearer <token>`.
    #[serde(default)]
    pub from_headers: Vec<HeaderSource>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Keep the token in the request sent upstream (default: strip the header it came in).
    #[serde(default)]
    pub forward: bool,
    /// Header that receives the verified payload (base64url, as in the token).
    #[serde(default)]
    pub forward_payload_header: Option<String>,
    #[serde(default)]
    pub claim_to_headers: Vec<ClaimHeaderConfig>,
    /// Claims (paths such as `groups` or `realm.roles`) handed on to later filters as Envoy filter state
    /// `wasm.meshwasm.jwt.claim.<claim>` (see the README's "Identity for later filters").
    #[serde(default)]
    pub claims_to_filter_state: Vec<String>,
    /// Allowed clock difference for `exp`, `nbf` and `iat`. Whole seconds.
    #[serde(default = "default_skew")]
    pub clock_skew: Duration,
    #[serde(default = "yes")]
    pub require_expiration: bool,
    #[serde(default = "yes")]
    pub check_nbf: bool,
    /// Longest `exp - iat` accepted. Whole seconds.
    #[serde(default)]
    pub max_lifetime: Option<Duration>,
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default)]
    pub subjects: Option<MatchConfig>,
    /// Required JWS `typ` header (RFC 8725 §3.11), e.g. `at+jwt` (RFC 9068); compared
    /// case-insensitively, `application/at+jwt` matches `at+jwt`.
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// RFC 7662 introspection for opaque (non-JWT) tokens, instead of or besides keys.
    #[serde(default)]
    pub introspection: Option<crate::introspection::IntrospectionConfig>,
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}
fn default_max_token() -> usize {
    8192
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeaderSource {
    pub name: String,
    #[serde(default)]
    pub value_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(transform = schema_remote_jwks))]
pub struct RemoteJwksConfig {
    /// Envoy cluster that reaches the IdP.
    pub cluster: String,
    /// JWKS URL. Omitted: OIDC discovery from `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub uri: Option<String>,
    /// `:authority` of the fetch; default: the host of the URL.
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_fetch_timeout")]
    pub timeout: Duration,
    /// How long fetched keys are fresh; refreshed in the background before that. (This and the
    /// durations below are whole seconds.)
    #[serde(default = "default_cache_duration")]
    pub cache_duration: Duration,
    /// How long keys are still used after they went stale because refreshes failed.
    #[serde(default = "default_max_stale")]
    pub max_stale: Duration,
    /// At most one refetch per this interval for tokens with an unknown `kid`.
    #[serde(default = "default_refetch")]
    pub unknown_kid_refetch_interval: Duration,
    /// Wait between failed fetches.
    #[serde(default = "default_retry")]
    pub retry_interval: Duration,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_fetch_timeout() -> Duration {
    Duration::from_millis(1500)
}
fn default_cache_duration() -> Duration {
    Duration::from_secs(600)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(86_400)
}
fn default_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_retry() -> Duration {
    Duration::from_secs(5)
}
fn default_max_body() -> usize {
    64 * 1024
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimHeaderConfig {
    pub header: String,
    /// Claim name; `a.b.c` walks nested objects.
    pub claim: String,
    /// Separator used to join arrays (default `,`).
    #[serde(default)]
    pub separator: Option<String>,
}

/// Exactly one of the fields.
#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(rename = "match")]
    pub route: RouteConfig,
    #[serde(default)]
    pub requires_any: Vec<String>,
    #[serde(default)]
    pub requires_all: Vec<String>,
    /// A request without any token passes (a present but invalid token is still refused).
    #[serde(default)]
    pub allow_missing: bool,
    /// As Envoy jwt_authn's requirement of the same name: the request passes whether the token is
    /// missing or fails verification; a token that verifies still gets its claim headers.
    #[serde(default)]
    pub allow_missing_or_failed: bool,
    /// Scopes the token must carry (all of them), from `scope` or `scp`.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub claims: Vec<ClaimMatchConfig>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// Methods the rule applies to; empty = all.
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimMatchConfig {
    /// Claim name; `a.b` walks nested objects. Arrays match when one element matches.
    pub claim: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// Only require the claim to be present.
    #[serde(default)]
    pub present: bool,
}

#[cfg(feature = "schema")]
fn schema_config(s: &mut schemars::Schema) {
    use meshwasm_config::Unit;
    use meshwasm_config::schema::legacy_duration;
    legacy_duration(s, "cache_max_ttl_s", Unit::Seconds, "cache_max_ttl");
    legacy_duration(s, "key_wait_timeout_ms", Unit::Millis, "key_wait_timeout");
}

#[cfg(feature = "schema")]
fn schema_provider(s: &mut schemars::Schema) {
    use meshwasm_config::Unit;
    use meshwasm_config::schema::legacy_duration;
    legacy_duration(s, "clock_skew_s", Unit::Seconds, "clock_skew");
    legacy_duration(s, "max_lifetime_s", Unit::Seconds, "max_lifetime");
}

#[cfg(feature = "schema")]
fn schema_remote_jwks(s: &mut schemars::Schema) {
    use meshwasm_config::Unit;
    use meshwasm_config::schema::legacy_duration;
    legacy_duration(s, "timeout_ms", Unit::Millis, "timeout");
    legacy_duration(s, "cache_duration_s", Unit::Seconds, "cache_duration");
    legacy_duration(s, "max_stale_s", Unit::Seconds, "max_stale");
    legacy_duration(s, "unknown_kid_refetch_interval_s", Unit::Seconds, "unknown_kid_refetch_interval");
    legacy_duration(s, "retry_interval_s", Unit::Seconds, "retry_interval");
}
