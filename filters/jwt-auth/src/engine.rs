//! The per-request decision: which rule applies, where the token is, which provider verifies it, what
//! the upstream request gets (claim headers, payload header, token stripped) or which local reply the
//! client gets (401/403/503 with an RFC 6750 challenge). Pure: the glue passes the request's headers, the
//! key state and the cache in, and applies the [`Outcome`].

use std::rc::Rc;

use serde_json::Value;

use crate::cache::{TokenCache, key};
use crate::challenge::{Challenge, www_authenticate};
use crate::config::{ClaimHeader, Mode, Plan, RulePlan, Source};
use crate::introspection::{self, Introspection, IntrospectionError};
use crate::jwks::KeySet;
use crate::validate::{TokenError, Verified, looks_like_jwt, validate};
use meshwasm_path as path;

/// The state of one provider's keys, as the engine sees it.
pub enum Keys<'a> {
    Ready(&'a KeySet),
    /// Remote keys not loaded yet (first fetch in progress or pending).
    Loading,
    /// Remote keys could not be loaded (or are older than the maximum staleness).
    Unavailable,
}

/// What the engine needs from the key store.
pub trait KeyAccess {
    fn keys(&self, provider: usize) -> Keys<'_>;
    /// A token carried a kid this provider's remote keys do not have. Returns true when a refetch was
    /// started (or is in flight) and the request should wait for it; false when refetches are
    /// rate-limited right now (the token is refused).
    fn unknown_kid(&mut self, provider: usize) -> bool;
    /// RFC 7662: the introspection answer for this opaque token (cached, or from a finished call), or
    /// `None` when a call was started (or is in flight) and the request should wait for it.
    fn introspect(&mut self, provider: usize, token: &str) -> Option<IntroResult> {
        let _ = (provider, token);
        Some(Err(IntrospectionError::Unreachable("introspection is not available in this host".into())))
    }
}

/// The result of asking the introspection endpoint.
pub type IntroResult = Result<Rc<Introspection>, IntrospectionError>;

/// What the glue must do with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No rule applies (or a CORS preflight): continue unchanged.
    Pass,
    /// Continue after removing and setting these headers, rewriting `:path` to `path` when set (a
    /// token query parameter removed) and removing the `strip_cookies` cookies from every `cookie`
    /// header (see [`strip_cookie_headers`]).
    Allow {
        remove: Vec<String>,
        set: Vec<(String, String)>,
        path: Option<String>,
        strip_cookies: Vec<String>,
    },
    /// Send a local reply.
    Deny { status: u32, www_authenticate: Option<String>, reason: &'static str, detail: String },
    /// Pause until these providers' keys change (bounded by `key_wait_timeout_ms`).
    Wait { providers: Vec<usize> },
}

/// Counters the glue turns into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub cache_hits: u32,
    pub verifications: u32,
}

/// The request as the engine sees it.
pub struct Request<'a> {
    pub method: &'a str,
    /// `:path` with query, as the client sent it.
    pub path: &'a str,
    /// A request header's value. A header sent more than once comes as its values joined with `,`
    /// (`; ` for `cookie`), as RFC 9110 §5.3 and RFC 9113 §8.2.3 combine them, so that a repeated
    /// credential is seen rather than only its first copy.
    pub header: &'a dyn Fn(&str) -> Option<Vec<u8>>,
}

/// `path` is the normalized path (query excluded), see [`meshwasm_path`].
fn rule_matches(rule: &RulePlan, method: &str, path: &str) -> bool {
    if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m == method) {
        return false;
    }
    if let Some(pre) = &rule.prefix {
        return path.starts_with(pre.as_str());
    }
    if let Some(e) = &rule.exact {
        return path::exact_matches(path, e);
    }
    rule.regex.as_ref().is_some_and(|r| r.is_match(path))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A token value must be visible ASCII without separators (`,` and `;` would let one header or cookie
/// carry two tokens).
fn clean_token(t: &str) -> Option<String> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b';') {
        None
    } else {
        Some(t.to_string())
    }
}

/// What one token source holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing for this source: the credential is missing here.
    Absent,
    Token(String),
    /// A credential is there but cannot be read unambiguously (a bad scheme separator, trailing data,
    /// bad characters, or the carrier repeated). It is refused: an upstream might read it differently,
    /// so it is never treated as missing and never forwarded unverified.
    Malformed(String),
}

/// A header value carrying `scheme`-prefixed credentials (`prefix` as configured, e.g. `Bearer `).
fn from_prefixed(name: &str, v: &str, prefix: &str) -> Found {
    let scheme = prefix.trim_end_matches(' ');
    let is_auth_scheme = scheme.len() < prefix.len();
    // Whether a (comma-separated) element is a credential of this scheme: anything that starts with
    // it (`Bearer`, `bearer <t>`, `Bearer\t<t>`, even `Bearer<t>`, which lenient upstreams strip and
    // accept); `Basic …` is another scheme's business.
    let ours = |e: &str| {
        let e = e.trim_start_matches([' ', '\t']);
        e.get(..scheme.len()).is_some_and(|h| h.eq_ignore_ascii_case(scheme))
    };
    if !v.split(',').any(ours) {
        return Found::Absent;
    }
    let malformed = |why: &str| Found::Malformed(format!("`{name}` {why}"));
    if v.contains(',') {
        return malformed("carries more than one credential");
    }
    let v = v.trim_start_matches([' ', '\t']);
    let rest = &v[scheme.len()..];
    if !is_auth_scheme {
        return clean_token(rest).map_or_else(|| malformed("has a malformed token"), Found::Token);
    }
    // RFC 7235: scheme 1*SP token68, nothing after it.
    let token = rest.trim_start_matches(' ');
    if token.len() == rest.len() {
        return malformed("has no space after the scheme");
    }
    // Whitespace or a separator inside is trailing data an upstream may read differently; any other
    // character is left to verification (an `invalid_token`, as jwt_authn answers).
    clean_token(token.trim_end_matches([' ', '\t']))
        .map_or_else(|| malformed("has trailing data"), Found::Token)
}

/// The token from one source: absent, found, or present but unreadable.
pub fn extract(source: &Source, req: &Request<'_>) -> Found {
    match source {
        Source::Header { name, prefix } => {
            let Some(raw) = (req.header)(name) else { return Found::Absent };
            let Ok(v) = std::str::from_utf8(&raw) else {
                return Found::Malformed(format!("`{name}` is not UTF-8"));
            };
            match prefix {
                Some(pre) => from_prefixed(name, v, pre),
                None if v.contains(',') => {
                    Found::Malformed(format!("`{name}` carries more than one credential"))
                }
                None => clean_token(v.trim_matches([' ', '\t'])).map_or_else(
                    || Found::Malformed(format!("`{name}` has a malformed token")),
                    Found::Token,
                ),
            }
        }
        Source::Param(name) => {
            let Some((_, q)) = req.path.split_once('?') else { return Found::Absent };
            let q = q.split_once('#').map_or(q, |(q, _)| q);
            let mut found = Found::Absent;
            for kv in q.split('&') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                if !param_name_is(k, name) {
                    continue;
                }
                if found != Found::Absent {
                    return Found::Malformed(format!("query parameter `{name}` is repeated"));
                }
                found = percent_decode(v).and_then(|v| clean_token(&v)).map_or_else(
                    || Found::Malformed(format!("query parameter `{name}` has a malformed token")),
                    Found::Token,
                );
            }
            found
        }
        Source::Cookie(name) => {
            let Some(raw) = (req.header)("cookie") else { return Found::Absent };
            let Ok(v) = std::str::from_utf8(&raw) else {
                // Other cookies may be binary; ours cannot hide in bytes we cannot read.
                return if String::from_utf8_lossy(&raw).contains(name.as_str()) {
                    Found::Malformed("`cookie` is not UTF-8".into())
                } else {
                    Found::Absent
                };
            };
            let mut found = Found::Absent;
            for kv in v.split(';') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                if k.trim() != name {
                    continue;
                }
                if found != Found::Absent {
                    return Found::Malformed(format!("cookie `{name}` is repeated"));
                }
                found = clean_token(v.trim().trim_matches('"')).map_or_else(
                    || Found::Malformed(format!("cookie `{name}` has a malformed token")),
                    Found::Token,
                );
            }
            found
        }
    }
}

/// Whether a raw (possibly percent-encoded) query parameter name is `name`, as the upstream would
/// decode it.
fn param_name_is(raw: &str, name: &str) -> bool {
    raw == name || (raw.contains(['%', '+']) && percent_decode(raw).is_some_and(|d| d == name))
}

/// `path` without any `name` query parameter (every occurrence, whatever its value, also without `=`
/// or with a percent-encoded name), the other parameters kept byte for byte and in order, the `?`
/// dropped when none is left, a `#fragment` kept. `None` when the path has no such parameter.
pub fn strip_query_param(path: &str, name: &str) -> Option<String> {
    let (base, rest) = path.split_once('?')?;
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let is_token = |kv: &str| param_name_is(kv.split_once('=').map_or(kv, |(k, _)| k), name);
    if !query.split('&').any(is_token) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|kv| !is_token(kv)).collect();
    let mut out = String::with_capacity(path.len());
    out.push_str(base);
    // Empty segments (`a=1&&b=2`) are kept as they were, unless nothing else is left.
    if kept.iter().any(|kv| !kv.is_empty()) {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

/// One `cookie` header value without the `names` cookies, the others kept as written (joined with
/// `; `). `None` when it has none of them; `Some("")` when nothing is left.
pub fn strip_cookie_value(value: &str, names: &[String]) -> Option<String> {
    let is_token = |kv: &str| {
        let k = kv.split_once('=').map_or(kv, |(k, _)| k).trim();
        names.iter().any(|n| n == k)
    };
    if !value.split(';').any(is_token) {
        return None;
    }
    let kept: Vec<&str> =
        value.split(';').filter(|kv| !is_token(kv)).map(str::trim).filter(|kv| !kv.is_empty()).collect();
    Some(kept.join("; "))
}

/// The `cookie` header values to send upstream once the `names` cookies are removed from each (an
/// HTTP/2 client may send several `cookie` headers); values left empty are dropped. `None` when no
/// header carried such a cookie (leave the headers alone).
pub fn strip_cookie_headers(values: &[&[u8]], names: &[String]) -> Option<Vec<Vec<u8>>> {
    if names.is_empty() {
        return None;
    }
    let mut changed = false;
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        // A header that is not UTF-8 cannot hold a cookie we extracted; keep it as it is.
        match std::str::from_utf8(v).ok().and_then(|s| strip_cookie_value(s, names)) {
            Some(rest) => {
                changed = true;
                if !rest.is_empty() {
                    out.push(rest.into_bytes());
                }
            }
            None => out.push(v.to_vec()),
        }
    }
    changed.then_some(out)
}

/// Walks a claim path (`a.b.c`) through nested objects.
pub fn claim_at<'v>(claims: &'v serde_json::Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim rendered as a header value; `None` when absent or when it cannot be a safe header value.
pub fn claim_header_value(claims: &serde_json::Map<String, Value>, ch: &ClaimHeader) -> Option<String> {
    let v = claim_at(claims, &ch.path)?;
    let s = match v {
        Value::Array(items) => {
            let parts: Vec<String> =
                items.iter().map(|i| scalar_string(i).unwrap_or_else(|| i.to_string())).collect();
            parts.join(&ch.separator)
        }
        Value::Object(_) => v.to_string(),
        Value::Null => return None,
        other => scalar_string(other)?,
    };
    // Never let a claim inject header syntax (CR, LF, NUL or other controls).
    if s.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) { None } else { Some(s) }
}

fn token_scopes(claims: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|x| !x.is_empty())),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

fn claim_ok(claims: &serde_json::Map<String, Value>, m: &crate::config::ClaimMatch) -> bool {
    let Some(v) = claim_at(claims, &m.path) else { return false };
    let Some(matcher) = &m.matcher else { return !v.is_null() };
    match v {
        Value::Array(items) => items.iter().filter_map(scalar_string).any(|s| matcher.matches(&s)),
        other => scalar_string(other).is_some_and(|s| matcher.matches(&s)),
    }
}

enum Attempt {
    Ok(Rc<Verified>),
    Err(TokenError),
    Wait,
    Unavailable,
    /// Introspection endpoint unusable and not fail-open: 503.
    IntroUnavailable(String),
}

/// Verified-token view of an active introspection answer (claims for rules and headers).
fn from_introspection(i: &Introspection) -> Verified {
    use base64::Engine as _;
    let mut claims = i.claims.clone();
    if !claims.contains_key("scope") && !i.scope.is_empty() {
        claims.insert("scope".into(), Value::String(i.scope.join(" ")));
    }
    let payload_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&Value::Object(claims.clone())).unwrap_or_default());
    Verified { claims, exp: i.exp, payload_b64 }
}

fn deny_invalid(plan: &Plan, e: &TokenError) -> Outcome {
    let d = e.to_string();
    Outcome::Deny {
        status: 401,
        www_authenticate: Some(www_authenticate(&plan.realm, &Challenge::InvalidToken(&d))),
        reason: e.reason(),
        detail: d,
    }
}

fn deny_unavailable(provider: &str) -> Outcome {
    Outcome::Deny {
        status: 503,
        www_authenticate: None,
        reason: "keys_unavailable",
        detail: format!("signing keys of provider `{provider}` are unavailable"),
    }
}

fn deny_introspection(provider: &str, err: &str) -> Outcome {
    Outcome::Deny {
        status: 503,
        www_authenticate: None,
        reason: "introspection_unavailable",
        detail: format!("provider `{provider}`: {err}"),
    }
}

/// Decides what to do with a request.
pub fn evaluate(
    plan: &Plan,
    req: &Request<'_>,
    keys: &mut dyn KeyAccess,
    cache: &mut TokenCache,
    now_s: u64,
    counters: &mut Counters,
) -> Outcome {
    // Rules match the path as upstreams will route it; a path they would read in different ways is
    // refused whatever the rules say, since no rule can be chosen for it safely.
    let norm_path = match path::normalize(req.path) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Deny {
                status: 400,
                www_authenticate: None,
                reason: "bad_path",
                detail: e.to_string(),
            };
        }
    };
    if plan.bypass_cors_preflight
        && req.method == "OPTIONS"
        && (req.header)("origin").is_some()
        && (req.header)("access-control-request-method").is_some()
    {
        return Outcome::Pass;
    }
    let Some(rule) = plan.rules.iter().find(|r| rule_matches(r, req.method, &norm_path)) else {
        return Outcome::Pass;
    };
    if rule.providers.is_empty() {
        return Outcome::Pass;
    }

    // (provider, token, where it came from). A credential that is there but unreadable, or a provider's
    // token sent by more than one method (RFC 6750 §2), is refused outright, even where a missing
    // token is allowed: it must never reach the upstream unverified.
    let mut found: Vec<(usize, String, &Source)> = Vec::new();
    let mut malformed: Option<String> = None;
    for &pi in &rule.providers {
        let p = &plan.providers[pi];
        let mut mine: Option<(String, &Source)> = None;
        for s in &p.sources {
            match extract(s, req) {
                Found::Absent => {}
                Found::Malformed(why) => {
                    malformed.get_or_insert(why);
                }
                Found::Token(t) => {
                    if mine.is_some() {
                        malformed.get_or_insert_with(|| {
                            format!("provider `{}`: a token is sent by more than one method", p.name)
                        });
                    } else {
                        mine = Some((t, s));
                    }
                }
            }
        }
        if let Some((t, s)) = mine {
            found.push((pi, t, s));
        }
    }
    let pass_unverified =
        || Outcome::Allow { remove: Vec::new(), set: Vec::new(), path: None, strip_cookies: Vec::new() };
    if let Some(why) = malformed {
        if rule.allow_missing_or_failed {
            return pass_unverified();
        }
        return Outcome::Deny {
            status: 401,
            www_authenticate: Some(www_authenticate(&plan.realm, &Challenge::InvalidRequest(&why))),
            reason: "invalid_request",
            detail: why,
        };
    }
    if found.is_empty() {
        if rule.allow_missing || rule.allow_missing_or_failed {
            return pass_unverified();
        }
        return Outcome::Deny {
            status: 401,
            www_authenticate: Some(www_authenticate(&plan.realm, &Challenge::Missing)),
            reason: "missing",
            detail: "no token".into(),
        };
    }

    let mut results: Vec<(usize, Attempt, &Source)> = Vec::with_capacity(found.len());
    for (pi, token, hname) in &found {
        let p = &plan.providers[*pi];
        if let Some(icfg) = &p.introspection
            && (!looks_like_jwt(token) || (p.static_keys.is_none() && p.remote.is_none()))
        {
            let attempt = if token.len() > p.policy.max_token_bytes {
                Attempt::Err(TokenError::TooLarge(p.policy.max_token_bytes))
            } else {
                match keys.introspect(*pi, token) {
                    None => Attempt::Wait,
                    // The answer goes through the provider's policy (issuer, audiences, subjects,
                    // required claims, lifetime, exp/nbf) exactly as a JWT's claims do.
                    Some(result) => match introspection::decide(icfg, &p.policy, result, now_s) {
                        introspection::Outcome::Active(i) => Attempt::Ok(Rc::new(from_introspection(&i))),
                        introspection::Outcome::Inactive(d) => Attempt::Err(TokenError::Inactive(d)),
                        introspection::Outcome::Rejected(e) => Attempt::Err(e),
                        introspection::Outcome::Unavailable(e) => Attempt::IntroUnavailable(e.to_string()),
                        introspection::Outcome::FailOpen(_) => Attempt::Ok(Rc::new(Verified {
                            claims: Default::default(),
                            exp: None,
                            payload_b64: String::new(),
                        })),
                    },
                }
            };
            results.push((*pi, attempt, *hname));
            continue;
        }
        let ck = key(*pi, token);
        if let Some(v) = cache.get(&ck, now_s) {
            counters.cache_hits += 1;
            results.push((*pi, Attempt::Ok(v), *hname));
            continue;
        }
        if !looks_like_jwt(token) {
            results.push((*pi, Attempt::Err(TokenError::Malformed), *hname));
            continue;
        }
        let attempt = match keys.keys(*pi) {
            Keys::Loading => Attempt::Wait,
            Keys::Unavailable => Attempt::Unavailable,
            Keys::Ready(ks) => {
                counters.verifications += 1;
                match validate(&p.policy, ks, token, now_s) {
                    Ok(v) => {
                        let v = Rc::new(v);
                        cache.insert(ck, v.clone(), now_s);
                        Attempt::Ok(v)
                    }
                    Err(TokenError::UnknownKid) if p.remote.is_some() && keys.unknown_kid(*pi) => {
                        Attempt::Wait
                    }
                    Err(e) => Attempt::Err(e),
                }
            }
        };
        results.push((*pi, attempt, *hname));
    }

    let waiting: Vec<usize> =
        results.iter().filter(|(_, a, _)| matches!(a, Attempt::Wait)).map(|(pi, _, _)| *pi).collect();
    let ok: Vec<(usize, Rc<Verified>, &Source)> = results
        .iter()
        .filter_map(|(pi, a, h)| match a {
            Attempt::Ok(v) => Some((*pi, v.clone(), *h)),
            _ => None,
        })
        .collect();
    let first_err = results.iter().find_map(|(_, a, _)| match a {
        Attempt::Err(e) => Some(e.clone()),
        _ => None,
    });
    let unavailable = results.iter().find_map(|(pi, a, _)| match a {
        Attempt::Unavailable => Some(*pi),
        _ => None,
    });
    let intro_down = results.iter().find_map(|(pi, a, _)| match a {
        Attempt::IntroUnavailable(e) => Some((*pi, e.clone())),
        _ => None,
    });

    let accepted: Vec<(usize, Rc<Verified>, &Source)> = match rule.mode {
        Mode::Any => {
            if ok.is_empty() {
                if !waiting.is_empty() {
                    return Outcome::Wait { providers: waiting };
                }
                if rule.allow_missing_or_failed {
                    return pass_unverified();
                }
                if let Some(e) = first_err {
                    return deny_invalid(plan, &e);
                }
                if let Some(pi) = unavailable {
                    return deny_unavailable(&plan.providers[pi].name);
                }
                if let Some((pi, e)) = intro_down {
                    return deny_introspection(&plan.providers[pi].name, &e);
                }
                return deny_invalid(plan, &TokenError::Malformed);
            }
            ok.into_iter().take(1).collect()
        }
        Mode::All => {
            if !rule.allow_missing_or_failed
                && let Some(e) = first_err
            {
                return deny_invalid(plan, &e);
            }
            if !waiting.is_empty() {
                return Outcome::Wait { providers: waiting };
            }
            if rule.allow_missing_or_failed {
                // Whatever verified is forwarded with its claims; the rest is not vouched for.
                return allow(plan, req, &ok);
            }
            if let Some(pi) = unavailable {
                return deny_unavailable(&plan.providers[pi].name);
            }
            if let Some((pi, e)) = intro_down {
                return deny_introspection(&plan.providers[pi].name, &e);
            }
            let missing = rule.providers.iter().find(|pi| !ok.iter().any(|(o, _, _)| o == *pi));
            if let Some(pi) = missing {
                let d = format!("a token for `{}` is required", plan.providers[*pi].name);
                return Outcome::Deny {
                    status: 401,
                    www_authenticate: Some(www_authenticate(&plan.realm, &Challenge::InvalidToken(&d))),
                    reason: "missing",
                    detail: d,
                };
            }
            ok
        }
    };

    // Authorization: scopes and claim matchers (403 insufficient_scope).
    if !rule.scopes.is_empty() {
        let have: Vec<&str> = accepted.iter().flat_map(|(_, v, _)| token_scopes(&v.claims)).collect();
        if let Some(missing) = rule.scopes.iter().find(|s| !have.contains(&s.as_str())) {
            let scope = rule.scopes.join(" ");
            let d = format!("scope `{missing}` is required");
            return Outcome::Deny {
                status: 403,
                www_authenticate: Some(www_authenticate(
                    &plan.realm,
                    &Challenge::InsufficientScope { description: &d, scope: &scope },
                )),
                reason: "scope",
                detail: d,
            };
        }
    }
    for m in &rule.claims {
        if !accepted.iter().any(|(_, v, _)| claim_ok(&v.claims, m)) {
            let d = format!("claim `{}` does not match", m.name);
            return Outcome::Deny {
                status: 403,
                www_authenticate: Some(www_authenticate(
                    &plan.realm,
                    &Challenge::InsufficientScope { description: &d, scope: "" },
                )),
                reason: "claims",
                detail: d,
            };
        }
    }

    allow(plan, req, &accepted)
}

/// The Allow outcome for these verified tokens: claim and payload headers set, and (unless the
/// provider forwards it) each token removed from where it came from.
fn allow(plan: &Plan, req: &Request<'_>, accepted: &[(usize, Rc<Verified>, &Source)]) -> Outcome {
    let mut remove = Vec::new();
    let mut set = Vec::new();
    let mut path: Option<String> = None;
    let mut strip_cookies: Vec<String> = Vec::new();
    for (pi, v, source) in accepted {
        let p = &plan.providers[*pi];
        if !p.forward {
            match source {
                Source::Header { name, .. } => {
                    if !remove.iter().any(|x: &String| x == name) {
                        remove.push(name.clone());
                    }
                }
                Source::Param(name) => {
                    if let Some(stripped) = strip_query_param(path.as_deref().unwrap_or(req.path), name) {
                        path = Some(stripped);
                    }
                }
                Source::Cookie(name) => {
                    if !strip_cookies.contains(name) {
                        strip_cookies.push(name.clone());
                    }
                }
            }
        }
        if let Some(h) = &p.payload_header {
            set.push((h.clone(), v.payload_b64.clone()));
        }
        for ch in &p.claim_headers {
            if let Some(val) = claim_header_value(&v.claims, ch) {
                set.push((ch.header.clone(), val));
            }
        }
    }
    Outcome::Allow { remove, set, path, strip_cookies }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::collections::HashMap;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    struct FakeKeys {
        set: Option<KeySet>,
        loading: bool,
        refetch_allowed: bool,
        refetches: u32,
    }

    impl KeyAccess for FakeKeys {
        fn keys(&self, _p: usize) -> Keys<'_> {
            match &self.set {
                Some(s) => Keys::Ready(s),
                None if self.loading => Keys::Loading,
                None => Keys::Unavailable,
            }
        }
        fn unknown_kid(&mut self, _p: usize) -> bool {
            self.refetches += 1;
            self.refetch_allowed
        }
    }

    fn keys() -> FakeKeys {
        let set = crate::jwks::parse_jwks(
            br#"{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#,
        )
        .unwrap();
        FakeKeys { set: Some(set), loading: false, refetch_allowed: false, refetches: 0 }
    }

    fn plan(rules: &str) -> Plan {
        let cfg = format!(
            r#"{{"realm":"api","providers":{{
              "p":{{"issuer":"https://iss","audiences":["api"],"algorithms":["HS256"],
                   "local_jwks":{{"keys":[{{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}}]}},
                   "remote_jwks":{{"cluster":"idp","uri":"https://idp/jwks"}},
                   "from_headers":[{{"name":"authorization","value_prefix":"Bearer "}},{{"name":"x-token"}}],
                   "from_params":["access_token"],"from_cookies":["at"],
                   "forward_payload_header":"x-jwt-payload",
                   "claim_to_headers":[{{"header":"x-sub","claim":"sub"}},{{"header":"x-groups","claim":"realm.groups"}},
                                       {{"header":"x-n","claim":"n"}},{{"header":"x-admin","claim":"admin"}},
                                       {{"header":"x-evil","claim":"evil"}}]}}}},
              "rules":{rules}}}"#
        );
        Plan::from_json(cfg.as_bytes()).unwrap()
    }

    fn default_plan() -> Plan {
        plan(
            r#"[{"match":{"prefix":"/public"}},
                {"match":{"prefix":"/opt"},"requires_any":["p"],"allow_missing":true},
                {"match":{"prefix":"/admin"},"requires_any":["p"],"scopes":["admin"],
                 "claims":[{"claim":"realm.groups","exact":"ops"}]},
                {"match":{"prefix":"/"},"requires_any":["p"]}]"#,
        )
    }

    fn mint(claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("h".into());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss":"https://iss","aud":"api","sub":"alice","exp":NOW+300,
            "scope":"read admin","realm":{"groups":["dev","ops"]},"n":42,"admin":true,"evil":"a\r\nx-injected: 1"})
    }

    fn run(
        plan: &Plan,
        keys: &mut FakeKeys,
        cache: &mut TokenCache,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Outcome, Counters) {
        let map: HashMap<String, Vec<u8>> =
            headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        let get = move |n: &str| map.get(n).cloned();
        let req = Request { method, path, header: &get };
        let mut c = Counters::default();
        let o = evaluate(plan, &req, keys, cache, NOW, &mut c);
        (o, c)
    }

    #[test]
    fn allows_and_sets_claim_headers() {
        let p = default_plan();
        let mut k = keys();
        let mut cache = TokenCache::new(10, 3600);
        let t = mint(claims());
        let auth = format!("Bearer {t}");
        let (o, c) = run(&p, &mut k, &mut cache, "GET", "/x", &[("authorization", &auth)]);
        let Outcome::Allow { remove, set, .. } = o else { panic!("{o:?}") };
        assert_eq!(remove, vec!["authorization".to_string()]);
        let get = |h: &str| set.iter().find(|(k, _)| k == h).map(|(_, v)| v.as_str());
        assert_eq!(get("x-sub"), Some("alice"));
        assert_eq!(get("x-groups"), Some("dev,ops"));
        assert_eq!(get("x-n"), Some("42"));
        assert_eq!(get("x-admin"), Some("true"));
        assert_eq!(get("x-evil"), None, "control characters never reach a header");
        assert_eq!(get("x-jwt-payload"), t.split('.').nth(1));
        assert_eq!(c, Counters { cache_hits: 0, verifications: 1 });
        let (_, c) = run(&p, &mut k, &mut cache, "GET", "/x", &[("authorization", &auth)]);
        assert_eq!(c, Counters { cache_hits: 1, verifications: 0 });
        assert!(p.output_headers.contains(&"x-sub".to_string()));
    }

    #[test]
    fn token_sources() {
        let p = default_plan();
        let mut k = keys();
        let t = mint(claims());
        for (path, headers) in [
            (format!("/x?a=1&access_token={t}"), vec![]),
            ("/x".to_string(), vec![("cookie", format!("z=1; at={t}"))]),
            ("/x".to_string(), vec![("x-token", t.clone())]),
            ("/x".to_string(), vec![("authorization", format!("bearer {t}"))]),
        ] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (*a, b.as_str())).collect();
            let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", &path, &h);
            assert!(matches!(o, Outcome::Allow { .. }), "{path}: {o:?}");
        }
    }

    #[test]
    fn missing_invalid_scope_and_rules() {
        let p = default_plan();
        let mut k = keys();
        let mut cache = TokenCache::new(10, 3600);
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/x", &[]);
        assert_eq!(
            o,
            Outcome::Deny {
                status: 401,
                www_authenticate: Some(r#"Bearer realm="api""#.into()),
                reason: "missing",
                detail: "no token".into()
            }
        );
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/public/a", &[]);
        assert_eq!(o, Outcome::Pass);
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/opt", &[]);
        assert!(matches!(o, Outcome::Allow { .. }));
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/opt", &[("authorization", "Bearer a.b.c")]);
        assert!(matches!(o, Outcome::Deny { status: 401, .. }), "allow_missing still refuses a bad token");
        let mut c = claims();
        c["exp"] = (NOW - 1000).into();
        let auth = format!("Bearer {}", mint(c));
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/x", &[("authorization", &auth)]);
        let Outcome::Deny { status: 401, www_authenticate: Some(w), reason: "expired", .. } = o else {
            panic!("{o:?}")
        };
        assert_eq!(w, r#"Bearer realm="api", error="invalid_token", error_description="token has expired""#);
        // Scope present, claim matches: allowed. Without the admin scope: 403.
        let auth = format!("Bearer {}", mint(claims()));
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/admin", &[("authorization", &auth)]);
        assert!(matches!(o, Outcome::Allow { .. }), "{o:?}");
        let mut c = claims();
        c["scope"] = serde_json::json!(["read"]);
        let auth = format!("Bearer {}", mint(c));
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/admin", &[("authorization", &auth)]);
        let Outcome::Deny { status: 403, www_authenticate: Some(w), .. } = o else { panic!("{o:?}") };
        assert!(w.contains(r#"error="insufficient_scope""#) && w.contains(r#"scope="admin""#), "{w}");
        let mut c = claims();
        c["realm"]["groups"] = serde_json::json!(["dev"]);
        let auth = format!("Bearer {}", mint(c));
        let (o, _) = run(&p, &mut k, &mut cache, "GET", "/admin", &[("authorization", &auth)]);
        assert!(matches!(o, Outcome::Deny { status: 403, reason: "claims", .. }), "{o:?}");
        // CORS preflight passes.
        let (o, _) = run(
            &p,
            &mut k,
            &mut cache,
            "OPTIONS",
            "/x",
            &[("origin", "o"), ("access-control-request-method", "GET")],
        );
        assert_eq!(o, Outcome::Pass);
    }

    #[test]
    fn waits_for_keys_and_unknown_kid_refetch() {
        let p = default_plan();
        let auth = format!("Bearer {}", mint(claims()));
        let mut k = FakeKeys { set: None, loading: true, refetch_allowed: false, refetches: 0 };
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        assert_eq!(o, Outcome::Wait { providers: vec![0] });
        k.loading = false;
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        assert!(matches!(o, Outcome::Deny { status: 503, .. }), "{o:?}");

        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rotated".into());
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
        let auth = format!("Bearer {t}");
        let mut k = keys();
        k.refetch_allowed = true;
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        assert_eq!(o, Outcome::Wait { providers: vec![0] });
        k.refetch_allowed = false;
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        assert!(matches!(o, Outcome::Deny { status: 401, reason: "unknown_key", .. }), "{o:?}");
        assert_eq!(k.refetches, 2);
    }

    struct IntroKeys {
        answer: Option<IntroResult>,
        asked: u32,
    }

    impl KeyAccess for IntroKeys {
        fn keys(&self, _p: usize) -> Keys<'_> {
            Keys::Unavailable
        }
        fn unknown_kid(&mut self, _p: usize) -> bool {
            false
        }
        fn introspect(&mut self, _p: usize, _token: &str) -> Option<IntroResult> {
            self.asked += 1;
            self.answer.clone()
        }
    }

    #[test]
    fn opaque_tokens_go_to_introspection() {
        let plan = Plan::from_json(
            br#"{"providers":{"o":{"introspection":{"cluster":"idp","path":"/introspect","authority":"idp",
                 "client_id":"rs","client_secret":"s"},"claim_to_headers":[{"header":"x-sub","claim":"sub"}]}},
                 "rules":[{"match":{"prefix":"/"},"requires_any":["o"],"scopes":["read"]}]}"#,
        )
        .unwrap();
        let active = |scope: &str| {
            let body = serde_json::json!({"active": true, "sub": "svc", "scope": scope, "exp": NOW + 60});
            Some(Ok(Rc::new(crate::introspection::parse_response(200, body.to_string().as_bytes()).unwrap())))
        };
        let call = |k: &mut IntroKeys| {
            let mut c = Counters::default();
            let get = |n: &str| (n == "authorization").then(|| b"Bearer opaque-123".to_vec());
            let req = Request { method: "GET", path: "/", header: &get };
            evaluate(&plan, &req, k, &mut TokenCache::new(0, 0), NOW, &mut c)
        };
        let mut k = IntroKeys { answer: None, asked: 0 };
        assert_eq!(call(&mut k), Outcome::Wait { providers: vec![0] });
        k.answer = active("read");
        let Outcome::Allow { set, .. } = call(&mut k) else { panic!() };
        assert_eq!(set, vec![("x-sub".to_string(), "svc".to_string())]);
        k.answer = active("write");
        assert!(matches!(call(&mut k), Outcome::Deny { status: 403, .. }));
        k.answer =
            Some(Ok(Rc::new(crate::introspection::parse_response(200, br#"{"active":false}"#).unwrap())));
        assert!(matches!(call(&mut k), Outcome::Deny { status: 401, reason: "inactive", .. }));
        k.answer = Some(Err(IntrospectionError::Status(500)));
        assert!(matches!(
            call(&mut k),
            Outcome::Deny { status: 503, reason: "introspection_unavailable", .. }
        ));
    }

    #[test]
    fn strip_query_param_edge_cases() {
        let s = |p: &str| strip_query_param(p, "access_token");
        assert_eq!(s("/x?access_token=t"), Some("/x".into()), "the ? goes when nothing is left");
        assert_eq!(
            s("/x?a=1&access_token=t&b=%2F+2"),
            Some("/x?a=1&b=%2F+2".into()),
            "order and encoding kept"
        );
        assert_eq!(s("/x?access_token=t&a=1&access_token=u"), Some("/x?a=1".into()), "repeated: all removed");
        assert_eq!(s("/x?%61ccess_token=t&a=1"), Some("/x?a=1".into()), "percent-encoded name");
        assert_eq!(s("/x?access%5Ftoken=t"), Some("/x".into()));
        assert_eq!(s("/x?a=1&access_token=&b="), Some("/x?a=1&b=".into()), "empty values");
        assert_eq!(s("/x?access_token&a"), Some("/x?a".into()), "name without =");
        assert_eq!(s("/x?a=1&access_token=t#frag"), Some("/x?a=1#frag".into()), "fragment kept");
        assert_eq!(s("/x?access_token=t#f?access_token=u"), Some("/x#f?access_token=u".into()));
        assert_eq!(s("/x?a=1&&b=2&access_token=t"), Some("/x?a=1&&b=2".into()));
        assert_eq!(s("/x?&access_token=t"), Some("/x".into()));
        assert_eq!(s("/x?a=1&my_access_token=t&access_tokens=u"), None, "other names untouched");
        assert_eq!(s("/x?a=access_token"), None, "a value equal to the name is not the parameter");
        assert_eq!(s("/x"), None);
        assert_eq!(s("/x#access_token=t"), None, "a fragment is not a query");
        assert_eq!(s("/x?a=%zz&access_token=t"), Some("/x?a=%zz".into()), "bad encodings elsewhere kept");
    }

    #[test]
    fn strip_cookie_edge_cases() {
        let names = vec!["at".to_string()];
        let v = |c: &str| strip_cookie_value(c, &names);
        assert_eq!(v("a=1; at=t; b=2"), Some("a=1; b=2".into()));
        assert_eq!(v("at=t"), Some(String::new()));
        assert_eq!(v("a=1;at=t;b=2"), Some("a=1; b=2".into()), "no spaces after ;");
        assert_eq!(v("  at = t ;  a=1"), Some("a=1".into()), "spacing around the name");
        assert_eq!(v("at=t; a=1; at=u"), Some("a=1".into()), "repeated cookie");
        assert_eq!(v("at=; a="), Some("a=".into()), "empty values");
        assert_eq!(v("a=1; b=at; xat=1; at2=t"), None, "other cookies untouched");
        assert_eq!(v("a=1; b=2"), None);
        let h = |vals: &[&str]| {
            let b: Vec<&[u8]> = vals.iter().map(|v| v.as_bytes()).collect();
            strip_cookie_headers(&b, &names)
                .map(|o| o.into_iter().map(|v| String::from_utf8(v).unwrap()).collect::<Vec<_>>())
        };
        assert_eq!(h(&["a=1", "at=t", "b=2; at=u; c=3"]), Some(vec!["a=1".into(), "b=2; c=3".into()]));
        assert_eq!(h(&["at=t"]), Some(vec![]), "no cookie left: the header goes");
        assert_eq!(h(&["a=1", "b=2"]), None);
        assert_eq!(h(&[]), None);
        let bin: Vec<&[u8]> = vec![b"x=\xff", b"at=t; y=1"];
        assert_eq!(strip_cookie_headers(&bin, &names), Some(vec![b"x=\xff".to_vec(), b"y=1".to_vec()]));
        assert_eq!(strip_cookie_headers(&bin, &[]), None);
    }

    #[test]
    fn tokens_from_params_and_cookies_are_not_forwarded() {
        let p = default_plan();
        let mut k = keys();
        let t = mint(claims());
        let path = format!("/x?a=1&access_token={t}&b=2");
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", &path, &[]);
        let Outcome::Allow { remove, path, strip_cookies, .. } = o else { panic!("{o:?}") };
        assert!(remove.is_empty() && strip_cookies.is_empty());
        assert_eq!(path.as_deref(), Some("/x?a=1&b=2"));
        let (o, _) = run(
            &p,
            &mut k,
            &mut TokenCache::new(0, 0),
            "GET",
            "/x?a=1",
            &[("cookie", &format!("z=1; at={t}"))],
        );
        let Outcome::Allow { remove, path, strip_cookies, .. } = o else { panic!("{o:?}") };
        assert!(remove.is_empty() && path.is_none());
        assert_eq!(strip_cookies, vec!["at".to_string()]);
        // A percent-encoded parameter name carries the token as well (the upstream decodes it).
        let (o, _) =
            run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", &format!("/x?%61ccess_token={t}"), &[]);
        let Outcome::Allow { path, .. } = o else { panic!("{o:?}") };
        assert_eq!(path.as_deref(), Some("/x"));
        // forward: true keeps it.
        let fwd = Plan::from_json(
            br#"{"providers":{"p":{"algorithms":["HS256"],"forward":true,"from_params":["access_token"],
                "local_jwks":{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}}},
                "rules":[{"match":{"prefix":"/"},"requires_any":["p"]}]}"#,
        )
        .unwrap();
        let (o, _) =
            run(&fwd, &mut k, &mut TokenCache::new(0, 0), "GET", &format!("/x?access_token={t}"), &[]);
        assert_eq!(o, Outcome::Allow { remove: vec![], set: vec![], path: None, strip_cookies: vec![] });
    }

    #[test]
    fn allow_missing_or_failed() {
        let p = plan(r#"[{"match":{"prefix":"/"},"requires_any":["p"],"allow_missing_or_failed":true}]"#);
        let mut k = keys();
        let none = Outcome::Allow { remove: vec![], set: vec![], path: None, strip_cookies: vec![] };
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[]);
        assert_eq!(o, none, "missing passes");
        let (o, _) = run(
            &p,
            &mut k,
            &mut TokenCache::new(0, 0),
            "GET",
            "/x?access_token=a.b.c",
            &[("authorization", "Bearer x.y.z")],
        );
        assert_eq!(o, none, "invalid passes, without claims and with nothing vouched for");
        let mut c = claims();
        c["exp"] = (NOW - 1000).into();
        let auth = format!("Bearer {}", mint(c));
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        assert_eq!(o, none, "expired passes");
        let auth = format!("Bearer {}", mint(claims()));
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        let Outcome::Allow { remove, set, .. } = o else { panic!("{o:?}") };
        assert_eq!(remove, vec!["authorization".to_string()]);
        assert!(set.contains(&("x-sub".to_string(), "alice".to_string())), "a valid token still gets claims");
        // Keys still loading: wait for them rather than pass unverified.
        let mut loading = FakeKeys { set: None, loading: true, refetch_allowed: false, refetches: 0 };
        let (o, _) =
            run(&p, &mut loading, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        assert_eq!(o, Outcome::Wait { providers: vec![0] });
        loading.loading = false;
        let (o, _) =
            run(&p, &mut loading, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        assert_eq!(o, none, "keys unavailable: passes unverified");
        // requires_all: what verifies is applied, the rest ignored.
        let p = plan(r#"[{"match":{"prefix":"/"},"requires_all":["p"],"allow_missing_or_failed":true}]"#);
        let (o, _) =
            run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", "Bearer x.y.z")]);
        assert_eq!(o, none);
        let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
        let Outcome::Allow { set, .. } = o else { panic!("{o:?}") };
        assert!(set.contains(&("x-sub".to_string(), "alice".to_string())));
    }
    #[test]
    fn introspected_tokens_get_the_providers_policy_and_fail_open_only_on_outages() {
        let plan = Plan::from_json(
            br#"{"providers":{"o":{"issuer":"https://as","audiences":["orders"],"subjects":{"prefix":"svc-"},
                 "introspection":{"cluster":"idp","path":"/introspect","authority":"idp",
                 "client_id":"rs","client_secret":"s","fail_open":true}}},
                 "rules":[{"match":{"prefix":"/"},"requires_any":["o"]}]}"#,
        )
        .unwrap();
        let answer = |body: serde_json::Value| {
            Some(Ok(Rc::new(crate::introspection::parse_response(200, body.to_string().as_bytes()).unwrap())))
        };
        let call = |k: &mut IntroKeys| {
            let mut c = Counters::default();
            let get = |n: &str| (n == "authorization").then(|| b"Bearer opaque-123".to_vec());
            let req = Request { method: "GET", path: "/", header: &get };
            evaluate(&plan, &req, k, &mut TokenCache::new(0, 0), NOW, &mut c)
        };
        let good = serde_json::json!({"active": true, "iss": "https://as", "aud": "orders", "sub": "svc-a",
            "exp": NOW + 60, "token_type": "Bearer"});
        let mut k = IntroKeys { answer: answer(good.clone()), asked: 0 };
        assert!(matches!(call(&mut k), Outcome::Allow { .. }));
        for (member, value, reason) in [
            ("iss", serde_json::json!("https://other-as"), "issuer"),
            ("aud", serde_json::json!(["payments"]), "audience"),
            ("sub", serde_json::json!("alice"), "claims"),
            ("exp", serde_json::json!(NOW - 3600), "expired"),
            ("token_type", serde_json::json!("refresh_token"), "token_type"),
        ] {
            let mut b = good.clone();
            b[member] = value;
            k.answer = answer(b);
            let o = call(&mut k);
            assert!(
                matches!(&o, Outcome::Deny { status: 401, reason: r, www_authenticate: Some(w), .. }
                    if *r == reason && w.contains(r#"error="invalid_token""#)),
                "{member}: {o:?}"
            );
        }
        // fail_open: a 5xx or an unreachable endpoint lets the request through; a 4xx, a malformed
        // answer or the per-worker call cap answer 503.
        for e in [IntrospectionError::Status(502), IntrospectionError::Unreachable("timeout".into())] {
            k.answer = Some(Err(e));
            assert!(matches!(call(&mut k), Outcome::Allow { .. }));
        }
        for e in [
            IntrospectionError::Status(401),
            IntrospectionError::Status(429),
            IntrospectionError::Malformed("`active` is missing".into()),
            IntrospectionError::Overloaded(64),
        ] {
            k.answer = Some(Err(e));
            let o = call(&mut k);
            assert!(
                matches!(o, Outcome::Deny { status: 503, reason: "introspection_unavailable", .. }),
                "{o:?}"
            );
        }
    }
}

#[cfg(test)]
#[path = "engine_attack_tests.rs"]
mod attack_tests;
