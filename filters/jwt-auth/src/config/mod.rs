//! Plugin configuration (JSON) and its validation into an immutable [`Plan`] (`Plan::from_json`,
//! the entry point every meshwasm filter has).
//!
//! Every struct denies unknown fields, so a typo such as `isuer` fails the configuration instead of
//! silently disabling a check. Errors name the provider, rule and field. Durations are strings like
//! `"5s"` ([`meshwasm_config::Duration`]); the integer `*_ms` / `*_s` fields and the `basic` / `post`
//! introspection methods of earlier releases are still accepted, with a warning in
//! [`Plan::warnings`].

use meshwasm_config::{Duration, Legacy, Unit, header_name};

use crate::jwks::{KeySet, parse_alg, parse_jwks_value, parse_pem};
use crate::validate::{Policy, StringMatch};

pub use input::*;

mod input;

// ---- Plan ----

#[derive(Debug, Clone)]
pub enum Source {
    Header { name: String, prefix: Option<String> },
    Param(String),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct ClaimHeader {
    pub header: String,
    pub path: Vec<String>,
    pub separator: String,
}

#[derive(Debug, Clone)]
pub struct RemotePlan {
    pub cluster: String,
    pub authority: String,
    /// Path of the JWKS, or of the discovery document when `discovery` is set.
    pub path: String,
    pub discovery: bool,
    pub timeout_ms: u64,
    pub cache_duration_s: u64,
    pub max_stale_s: u64,
    pub unknown_kid_refetch_interval_s: u64,
    pub retry_interval_s: u64,
    pub max_body_bytes: usize,
    /// Shared-data key prefix for this source (same for every worker with the same config).
    pub shared_key: String,
}

#[derive(Debug)]
pub struct ProviderPlan {
    pub name: String,
    pub policy: Policy,
    /// Inline keys (JWKS, PEM); used together with remote keys when both are set.
    pub static_keys: Option<KeySet>,
    pub remote: Option<RemotePlan>,
    pub sources: Vec<Source>,
    pub forward: bool,
    pub payload_header: Option<String>,
    pub claim_headers: Vec<ClaimHeader>,
    /// (property name `meshwasm.jwt.claim.<claim>`, claim path) handed on after verification.
    pub identity_claims: Vec<(String, Vec<String>)>,
    pub introspection: Option<crate::introspection::IntrospectionConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Any,
    All,
}

#[derive(Debug)]
pub struct ClaimMatch {
    pub path: Vec<String>,
    /// `None`: presence only.
    pub matcher: Option<StringMatch>,
    pub name: String,
}

#[derive(Debug)]
pub struct RulePlan {
    pub prefix: Option<String>,
    pub exact: Option<String>,
    pub regex: Option<regex_lite::Regex>,
    pub methods: Vec<String>,
    /// Indices into `Plan::providers`; empty = no check.
    pub providers: Vec<usize>,
    pub mode: Mode,
    pub allow_missing: bool,
    pub allow_missing_or_failed: bool,
    pub scopes: Vec<String>,
    pub claims: Vec<ClaimMatch>,
}

#[derive(Debug)]
pub struct Plan {
    pub providers: Vec<ProviderPlan>,
    pub rules: Vec<RulePlan>,
    pub realm: String,
    pub cache_entries: usize,
    pub cache_max_ttl_s: u64,
    pub key_wait_timeout_ms: u64,
    pub bypass_cors_preflight: bool,
    /// Every header this filter writes; client-sent copies are always removed.
    pub output_headers: Vec<String>,
    /// Legal but risky settings, logged by the glue at configure time.
    pub warnings: Vec<String>,
}

pub use meshwasm_config::ConfigError;

/// The checks here word their messages `<path>: <reason>`, where the path starts at the provider
/// (`provider `p`.remote_jwks.uri`) or rule (`rules[0].match`); the error keeps the two apart.
fn config_error(msg: impl Into<String>) -> ConfigError {
    let msg = msg.into();
    match msg.split_once(": ") {
        Some((path, reason)) => ConfigError::new(path, reason),
        None => ConfigError::new("", msg),
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(config_error(msg))
}

/// A duration field the plan keeps in whole seconds.
fn whole_secs(path: String, d: Duration) -> Result<u64, ConfigError> {
    d.as_whole_secs().map_err(|reason| ConfigError::new(path, reason))
}

/// Rewrites the spellings of earlier releases (one release of grace); each leaves a warning.
fn upgrade_legacy(v: &mut serde_json::Value, legacy: &mut Legacy) -> Result<(), ConfigError> {
    legacy.duration(v, "", "cache_max_ttl_s", Unit::Seconds, "cache_max_ttl")?;
    legacy.duration(v, "", "key_wait_timeout_ms", Unit::Millis, "key_wait_timeout")?;
    let Some(providers) = v.get_mut("providers").and_then(serde_json::Value::as_object_mut) else {
        return Ok(());
    };
    for (name, p) in providers.iter_mut() {
        let at = format!("providers.{name}");
        legacy.duration(p, &at, "clock_skew_s", Unit::Seconds, "clock_skew")?;
        legacy.duration(p, &at, "max_lifetime_s", Unit::Seconds, "max_lifetime")?;
        if let Some(r) = p.get_mut("remote_jwks") {
            let at = format!("{at}.remote_jwks");
            legacy.duration(r, &at, "timeout_ms", Unit::Millis, "timeout")?;
            legacy.duration(r, &at, "cache_duration_s", Unit::Seconds, "cache_duration")?;
            legacy.duration(r, &at, "max_stale_s", Unit::Seconds, "max_stale")?;
            legacy.duration(
                r,
                &at,
                "unknown_kid_refetch_interval_s",
                Unit::Seconds,
                "unknown_kid_refetch_interval",
            )?;
            legacy.duration(r, &at, "retry_interval_s", Unit::Seconds, "retry_interval")?;
        }
        if let Some(i) = p.get_mut("introspection") {
            let at = format!("{at}.introspection");
            legacy.duration(i, &at, "timeout_ms", Unit::Millis, "timeout")?;
            legacy.duration(i, &at, "inactive_ttl_s", Unit::Seconds, "inactive_ttl")?;
            legacy.duration(i, &at, "max_active_ttl_s", Unit::Seconds, "max_active_ttl")?;
            // RFC 7591 names, as token-injector spells them.
            legacy.value(i, &at, "auth_method", "basic", "client_secret_basic");
            legacy.value(i, &at, "auth_method", "post", "client_secret_post");
        }
    }
    Ok(())
}

/// Reads each introspection `client_secret_env` into `client_secret` (configure time only).
fn resolve_secrets(v: &mut serde_json::Value, env: meshwasm_oauth2::Env<'_>) -> Result<(), ConfigError> {
    let Some(providers) = v.get_mut("providers").and_then(serde_json::Value::as_object_mut) else {
        return Ok(());
    };
    for (name, p) in providers.iter_mut() {
        if let Some(i) = p.get_mut("introspection") {
            meshwasm_oauth2::resolve_secret_env(i, &format!("providers.{name}.introspection"), env)?;
        }
    }
    Ok(())
}

/// Reads the private key of each introspection `private_key_jwt` client from the environment
/// (configure time only).
fn load_assertion_keys(cfg: &mut Config, env: meshwasm_oauth2::Env<'_>) -> Result<(), ConfigError> {
    for (name, p) in cfg.providers.iter_mut() {
        if let Some(i) = p.introspection.as_mut()
            && i.auth_method == meshwasm_oauth2::AuthMethod::PrivateKeyJwt
            && let Some(a) = i.client_assertion.as_mut()
        {
            a.load_key(&format!("providers.{name}.introspection.client_assertion"), env)?;
        }
    }
    Ok(())
}

fn string_match(ctx: &str, m: &MatchConfig) -> Result<StringMatch, ConfigError> {
    let set = [&m.exact, &m.prefix, &m.suffix, &m.regex].iter().filter(|x| x.is_some()).count();
    if set != 1 {
        return err(format!("{ctx}: set exactly one of exact, prefix, suffix, regex"));
    }
    Ok(if let Some(e) = &m.exact {
        StringMatch::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        StringMatch::Prefix(p.clone())
    } else if let Some(s) = &m.suffix {
        StringMatch::Suffix(s.clone())
    } else {
        let r = m.regex.as_deref().unwrap_or_default();
        StringMatch::Regex(anchored(r).map_err(|e| config_error(format!("{ctx}.regex: {e}")))?)
    })
}

/// Regexes match the whole value, like Envoy's safe_regex.
fn anchored(r: &str) -> Result<regex_lite::Regex, regex_lite::Error> {
    regex_lite::Regex::new(&format!("^(?:{r})$"))
}

/// Splits an `http(s)://host[:port]/path` URL into (authority, path).
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() || host.contains(['@', ' ']) {
        return None;
    }
    Some((host.to_string(), path.to_string()))
}

fn short_hash(s: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn claim_path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_string).collect()
}

impl Plan {
    /// Parses and validates a JSON plugin configuration; the error names the field.
    pub fn from_json(bytes: &[u8]) -> Result<Plan, ConfigError> {
        Plan::from_json_with_env(bytes, &meshwasm_oauth2::process_env)
    }

    /// [`Plan::from_json`] reading introspection's `client_secret_env` and
    /// `client_assertion.private_key_env` from `env` instead of the process environment.
    pub fn from_json_with_env(bytes: &[u8], env: meshwasm_oauth2::Env<'_>) -> Result<Plan, ConfigError> {
        let mut value: serde_json::Value = meshwasm_config::from_json(bytes)?;
        let mut legacy = Legacy::default();
        upgrade_legacy(&mut value, &mut legacy)?;
        resolve_secrets(&mut value, env)?;
        let mut cfg: Config = meshwasm_config::from_value(value)?;
        load_assertion_keys(&mut cfg, env)?;
        let mut plan = Plan::from_config(cfg)?;
        // Deprecations first: they are about the spelling, the others about the settings.
        legacy.warnings.append(&mut plan.warnings);
        plan.warnings = legacy.warnings;
        Ok(plan)
    }

    pub fn from_config(cfg: Config) -> Result<Plan, ConfigError> {
        if cfg.providers.is_empty() {
            return err("providers: at least one provider is required");
        }
        let mut providers = Vec::new();
        let mut output_headers: Vec<String> = Vec::new();
        let mut warnings = Vec::new();
        for (name, p) in &cfg.providers {
            let ctx = format!("provider `{name}`");
            let plan = build_provider(&ctx, name, p)?;
            if plan.policy.issuer.is_none() && plan.policy.audiences.is_empty() {
                // RFC 8725 §3.8/§3.9: a token the same keys (or introspection endpoint) issued for
                // another service would be accepted here too.
                warnings.push(format!(
                    "{ctx}: neither `issuer` nor `audiences` is set, so tokens issued for any other \
                     service by the same keys or endpoint are accepted"
                ));
            }
            for h in plan.claim_headers.iter().map(|c| &c.header).chain(plan.payload_header.iter()) {
                if !output_headers.contains(h) {
                    output_headers.push(h.clone());
                }
            }
            providers.push(plan);
        }
        for (i, p) in providers.iter().enumerate() {
            for s in &p.sources {
                if let Source::Header { name, .. } = s
                    && output_headers.contains(name)
                {
                    return err(format!(
                        "provider `{}`: header `{name}` is both a token source and an output",
                        p.name
                    ));
                }
            }
            let _ = i;
        }
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            rules.push(build_rule(&format!("rules[{i}]"), r, &providers)?);
        }
        Ok(Plan {
            providers,
            rules,
            realm: cfg.realm,
            cache_entries: cfg.cache_entries.min(1_000_000),
            cache_max_ttl_s: whole_secs("cache_max_ttl".into(), cfg.cache_max_ttl)?,
            key_wait_timeout_ms: cfg.key_wait_timeout.as_millis().clamp(1, 60_000),
            bypass_cors_preflight: cfg.bypass_cors_preflight,
            output_headers,
            warnings,
        })
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

fn build_provider(ctx: &str, name: &str, p: &ProviderConfig) -> Result<ProviderPlan, ConfigError> {
    let mut policy = Policy::default();
    if let Some(algs) = &p.algorithms {
        if algs.is_empty() {
            return err(format!("{ctx}.algorithms: must not be empty"));
        }
        policy.algorithms.clear();
        for a in algs {
            match parse_alg(a) {
                Some(alg) if !crate::crypto::built_in(alg) && !crate::crypto::host_capable(alg) => {
                    return err(format!(
                        "{ctx}.algorithms: `{a}` is not built into this jwt-auth artifact (PS* verification \
                         is in-guest RSA: build meshwasm-jwt-auth with the `guest-rsa` feature, `make wasm-full`)"
                    ));
                }
                Some(alg) => policy.algorithms.push(alg),
                None => {
                    return err(format!(
                        "{ctx}.algorithms: `{a}` is not supported (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512)"
                    ));
                }
            }
        }
    } else {
        // The default list holds only what this artifact can verify (PS* needs `guest-rsa`).
        policy.algorithms.retain(|a| crate::crypto::built_in(*a) || crate::crypto::host_capable(*a));
    }
    policy.issuer = p.issuer.clone();
    policy.audiences = p.audiences.clone();
    policy.clock_skew_s = whole_secs(format!("{ctx}.clock_skew"), p.clock_skew)?.min(3600);
    policy.require_exp = p.require_expiration;
    policy.check_nbf = p.check_nbf;
    policy.max_lifetime_s = match p.max_lifetime {
        Some(d) => Some(whole_secs(format!("{ctx}.max_lifetime"), d)?),
        None => None,
    };
    policy.required_claims = p.required_claims.clone();
    if let Some(s) = &p.subjects {
        policy.subject = Some(string_match(&format!("{ctx}.subjects"), s)?);
    }
    if p.max_token_bytes < 64 || p.max_token_bytes > 1024 * 1024 {
        return err(format!("{ctx}.max_token_bytes: must be between 64 and 1048576"));
    }
    policy.max_token_bytes = p.max_token_bytes;
    if let Some(t) = &p.typ {
        // RFC 7515 §4.1.9: `application/` may be omitted, so compare without it.
        let bare = match t.get(..12) {
            Some(pre) if pre.eq_ignore_ascii_case("application/") => &t[12..],
            _ => t.as_str(),
        };
        if bare.is_empty() || !bare.bytes().all(|b| b.is_ascii_graphic()) {
            return err(format!("{ctx}.typ: `{t}` is not a media type name like `at+jwt`"));
        }
        policy.typ = Some(bare.to_string());
    }

    let mut static_keys: Option<KeySet> = None;
    if let Some(j) = &p.local_jwks {
        check_oct_lengths(ctx, j, &policy)?;
        let set = parse_jwks_value(j).map_err(|e| config_error(format!("{ctx}.local_jwks: {e}")))?;
        static_keys = Some(set);
    }
    for (i, pem) in p.pem.iter().enumerate() {
        let key = parse_pem(pem).map_err(|e| config_error(format!("{ctx}.pem[{i}]: {e}")))?;
        static_keys.get_or_insert_with(KeySet::default).keys.push(key);
    }
    let remote = match &p.remote_jwks {
        None => None,
        Some(r) => Some(build_remote(ctx, name, p.issuer.as_deref(), r)?),
    };
    if let Some(i) = &p.introspection {
        i.validate().map_err(|e| config_error(format!("{ctx}.{e}")))?;
    }
    if static_keys.is_none() && remote.is_none() && p.introspection.is_none() {
        return err(format!("{ctx}: set local_jwks, pem, remote_jwks or introspection"));
    }
    if let Some(keys) = &static_keys {
        let has_hmac = keys.keys.iter().any(|k| k.family == crate::jwks::KeyFamily::Hmac);
        let hs_allowed = policy.algorithms.iter().any(|a| crate::jwks::KeyFamily::Hmac.fits(*a));
        if has_hmac && !hs_allowed {
            return err(format!("{ctx}.algorithms: the JWKS has `oct` keys, list HS256/384/512 to use them"));
        }
    }
    if remote.is_some()
        && policy.algorithms.iter().any(|a| crate::jwks::KeyFamily::Hmac.fits(*a))
        && static_keys.is_none()
    {
        return err(format!("{ctx}.algorithms: HS* needs a shared secret in local_jwks, never remote keys"));
    }

    let mut sources = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        sources.push(Source::Header {
            name: header_name(&format!("{ctx}.from_headers[{i}].name"), &h.name)?,
            prefix: h.value_prefix.clone(),
        });
    }
    for q in &p.from_params {
        if q.is_empty() {
            return err(format!("{ctx}.from_params: empty name"));
        }
        sources.push(Source::Param(q.clone()));
    }
    for c in &p.from_cookies {
        if c.is_empty() {
            return err(format!("{ctx}.from_cookies: empty name"));
        }
        sources.push(Source::Cookie(c.clone()));
    }
    if sources.is_empty() {
        sources.push(Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) });
    }
    let payload_header = match &p.forward_payload_header {
        Some(h) => Some(header_name(&format!("{ctx}.forward_payload_header"), h)?),
        None => None,
    };
    let mut claim_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        let cctx = format!("{ctx}.claim_to_headers[{i}]");
        if c.claim.is_empty() || c.claim.split('.').any(str::is_empty) {
            return err(format!("{cctx}.claim: `{}` is not a claim path", c.claim));
        }
        claim_headers.push(ClaimHeader {
            header: header_name(&format!("{cctx}.header"), &c.header)?,
            path: claim_path(&c.claim),
            separator: c.separator.clone().unwrap_or_else(|| ",".into()),
        });
    }
    let mut identity_claims = Vec::new();
    for (i, c) in p.claims_to_filter_state.iter().enumerate() {
        let ok = c.len() <= 128
            && !c.split('.').any(str::is_empty)
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !ok {
            return err(format!(
                "{ctx}.claims_to_filter_state[{i}]: `{c}` is not a claim path (letters, digits, `_-.:`, dot-separated)"
            ));
        }
        identity_claims.push((format!("{}{c}", crate::engine::identity::CLAIM_PREFIX), claim_path(c)));
    }
    Ok(ProviderPlan {
        name: name.to_string(),
        policy,
        static_keys,
        remote,
        sources,
        forward: p.forward,
        payload_header,
        claim_headers,
        identity_claims,
        introspection: p.introspection.clone(),
    })
}

/// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output. An `oct` key with a JWK
/// `alg` is checked for it; one without is checked for every HS* algorithm the provider accepts (it
/// may verify any of them).
fn check_oct_lengths(ctx: &str, jwks: &serde_json::Value, policy: &Policy) -> Result<(), ConfigError> {
    use base64::Engine as _;
    let Some(list) = jwks.get("keys").and_then(serde_json::Value::as_array) else { return Ok(()) };
    for (i, k) in list.iter().enumerate() {
        // Keys the JWKS parser skips (not `oct`, or not for signatures) are never used.
        if k.get("kty").and_then(serde_json::Value::as_str) != Some("oct")
            || k.get("use").is_some_and(|u| u.as_str() != Some("sig"))
        {
            continue;
        }
        let Some(secret) = k
            .get("k")
            .and_then(serde_json::Value::as_str)
            .and_then(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b).ok())
        else {
            continue;
        };
        let algs: Vec<jsonwebtoken::Algorithm> =
            match k.get("alg").and_then(serde_json::Value::as_str).and_then(parse_alg) {
                Some(a) => vec![a],
                None => policy.algorithms.clone(),
            };
        let need = algs.iter().map(|a| (crate::jwks::hmac_min_len(*a), *a)).max_by_key(|(n, _)| *n);
        if let Some((n, alg)) = need
            && secret.len() < n
        {
            return err(format!(
                "{ctx}.local_jwks.keys[{i}].k: the oct key is {} bytes, {alg:?} needs at least {n} \
                 (RFC 7518 §3.2)",
                secret.len()
            ));
        }
    }
    Ok(())
}

fn build_remote(
    ctx: &str,
    name: &str,
    issuer: Option<&str>,
    r: &RemoteJwksConfig,
) -> Result<RemotePlan, ConfigError> {
    if r.cluster.is_empty() {
        return err(format!("{ctx}.remote_jwks.cluster: must not be empty"));
    }
    let (url, discovery) = match (&r.uri, issuer) {
        (Some(u), _) => (u.clone(), false),
        (None, Some(iss)) => {
            (format!("{}/.well-known/openid-configuration", iss.trim_end_matches('/')), true)
        }
        (None, None) => {
            return err(format!("{ctx}.remote_jwks.uri: set it, or set `issuer` for OIDC discovery"));
        }
    };
    let Some((host, path)) = split_url(&url) else {
        return err(format!("{ctx}.remote_jwks.uri: `{url}` must be an http(s) URL with a host"));
    };
    let at = format!("{ctx}.remote_jwks");
    if r.timeout.is_zero() {
        return err(format!("{at}.timeout: must be positive"));
    }
    let cache_duration_s = whole_secs(format!("{at}.cache_duration"), r.cache_duration)?;
    if cache_duration_s == 0 {
        return err(format!("{at}.cache_duration: must be positive"));
    }
    if r.max_body_bytes < 256 || r.max_body_bytes > 4 * 1024 * 1024 {
        return err(format!("{ctx}.remote_jwks.max_body_bytes: must be between 256 and 4194304"));
    }
    Ok(RemotePlan {
        cluster: r.cluster.clone(),
        authority: r.authority.clone().unwrap_or(host),
        shared_key: format!("meshwasm.jwt-auth.{name}.{}", short_hash(&format!("{}|{url}", r.cluster))),
        path,
        discovery,
        timeout_ms: r.timeout.as_millis(),
        cache_duration_s,
        max_stale_s: whole_secs(format!("{at}.max_stale"), r.max_stale)?,
        unknown_kid_refetch_interval_s: whole_secs(
            format!("{at}.unknown_kid_refetch_interval"),
            r.unknown_kid_refetch_interval,
        )?
        .max(1),
        retry_interval_s: whole_secs(format!("{at}.retry_interval"), r.retry_interval)?.max(1),
        max_body_bytes: r.max_body_bytes,
    })
}

fn build_rule(ctx: &str, r: &RuleConfig, providers: &[ProviderPlan]) -> Result<RulePlan, ConfigError> {
    let set = [r.route.prefix.is_some(), r.route.path.is_some(), r.route.regex.is_some()];
    if set.iter().filter(|x| **x).count() != 1 {
        return err(format!("{ctx}.match: set exactly one of prefix, path, regex"));
    }
    let regex = match &r.route.regex {
        Some(x) => Some(anchored(x).map_err(|e| config_error(format!("{ctx}.match.regex: {e}")))?),
        None => None,
    };
    if !r.requires_any.is_empty() && !r.requires_all.is_empty() {
        return err(format!("{ctx}: set requires_any or requires_all, not both"));
    }
    let (names, mode) =
        if r.requires_all.is_empty() { (&r.requires_any, Mode::Any) } else { (&r.requires_all, Mode::All) };
    let mut idx = Vec::new();
    for n in names {
        match providers.iter().position(|p| &p.name == n) {
            Some(i) => idx.push(i),
            None => return err(format!("{ctx}.requires: unknown provider `{n}`")),
        }
    }
    if idx.is_empty()
        && (!r.scopes.is_empty() || !r.claims.is_empty() || r.allow_missing || r.allow_missing_or_failed)
    {
        return err(format!(
            "{ctx}: scopes, claims, allow_missing and allow_missing_or_failed need requires_any or requires_all"
        ));
    }
    // Any client can send a garbage token to pass such a rule, so scope/claim checks there would be
    // an illusion of authorization: refuse the combination instead of silently weakening it.
    if r.allow_missing_or_failed && (!r.scopes.is_empty() || !r.claims.is_empty()) {
        return err(format!(
            "{ctx}: allow_missing_or_failed cannot be combined with scopes or claims (an invalid token \
             would skip them); check claims upstream from the claim headers"
        ));
    }
    let mut claims = Vec::new();
    for (i, c) in r.claims.iter().enumerate() {
        let cctx = format!("{ctx}.claims[{i}]");
        let m = MatchConfig {
            exact: c.exact.clone(),
            prefix: c.prefix.clone(),
            suffix: c.suffix.clone(),
            regex: c.regex.clone(),
        };
        let any = [&m.exact, &m.prefix, &m.suffix, &m.regex].iter().any(|x| x.is_some());
        let matcher = if c.present {
            if any {
                return err(format!("{cctx}: `present` excludes exact/prefix/suffix/regex"));
            }
            None
        } else {
            Some(string_match(&cctx, &m)?)
        };
        claims.push(ClaimMatch { path: claim_path(&c.claim), matcher, name: c.claim.clone() });
    }
    Ok(RulePlan {
        prefix: r.route.prefix.clone(),
        exact: r.route.path.clone(),
        regex,
        methods: r.route.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
        providers: idx,
        mode,
        allow_missing: r.allow_missing,
        allow_missing_or_failed: r.allow_missing_or_failed,
        scopes: r.scopes.clone(),
        claims,
    })
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
mod tests;
