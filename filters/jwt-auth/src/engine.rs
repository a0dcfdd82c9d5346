//! The per-request decision: which rule applies, where the token is, which provider verifies it, what
//! the upstream request gets (claim headers, payload header, token stripped) or which local reply the
//! client gets (status, RFC 6750 challenge and body). Pure: the glue passes the request's headers, the
//! key state and the cache in, and applies the [`Outcome`].
//!
//! [`evaluate`] runs these steps; each ends the decision early with an [`Outcome`] when it can:
//! 1. [`select_rule`]: the rule for the normalized path (400 when upstreams could read the path in
//!    different ways), or none (pass).
//! 2. extract ([`extract_credentials`]): each provider's token from its sources. A malformed or repeated
//!    credential, or one provider's token sent by two methods, is 401 `invalid_request`, also under
//!    `allow_missing`; no token is 401, or a pass under `allow_missing`.
//! 3. [`authenticate`]: each token verified (token cache, keys, unknown-kid refetch) or introspected.
//! 4. [`combine`]: the attempts under the rule's `requires_any` / `requires_all`: the accepted tokens, a
//!    wait, a 401, or a 503 (keys or introspection unavailable).
//! 5. [`authorize`]: scopes and claim matchers (403 `insufficient_scope`).
//!
//! Then [`allow`] builds what the upstream request gets.

use std::borrow::Cow;
use std::rc::Rc;

use serde_json::Value;

use crate::cache::TokenCache;
use crate::challenge::{Challenge, www_authenticate};
use crate::claims::{claim_header_value, claim_ok, token_scopes};
use crate::config::{Mode, Plan, ProviderPlan, RulePlan, Source};
use crate::credentials::{Found, extract, strip_query_param};
use crate::introspection::{self, Introspection, IntrospectionError};
use crate::jwks::KeySet;
use crate::keystore::{RemoteKeys, State};
use crate::validate::{TokenError, Verified, looks_like_jwt, validate};
use meshwasm_path as path;

pub use crate::introspection_state::IntroResult;

/// The state of one provider's keys, as the engine sees it.
pub enum Keys<'a> {
    Ready(&'a KeySet),
    /// Remote keys not loaded yet (first fetch in progress or pending).
    Loading,
    /// Remote keys could not be loaded (or are older than the maximum staleness).
    Unavailable,
}

impl<'a> Keys<'a> {
    /// A provider's keys: its remote key store's (which holds the inline keys too) when it fetches
    /// keys, else its inline keys.
    pub fn of(static_keys: Option<&'a KeySet>, remote: Option<&'a RemoteKeys>) -> Keys<'a> {
        match remote {
            None => static_keys.map_or(Keys::Unavailable, Keys::Ready),
            Some(r) => match (r.state(), r.keys()) {
                (State::Ready, Some(k)) => Keys::Ready(k),
                (State::Loading, _) => Keys::Loading,
                _ => Keys::Unavailable,
            },
        }
    }
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

/// What a paused request waits for; it decides the reply when the wait times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Remote keys loading, or an unknown-kid refetch.
    Keys,
    /// An introspection call.
    Introspection,
    /// Both, for different providers (`requires_all`, or one JWT and one opaque token).
    KeysAndIntrospection,
}

impl WaitFor {
    fn and(self, other: WaitFor) -> WaitFor {
        if self == other { self } else { WaitFor::KeysAndIntrospection }
    }
}

/// What the glue must do with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No rule applies (or a CORS preflight): continue unchanged.
    Pass,
    /// Continue after removing and setting these headers, rewriting `:path` to `path` when set (a
    /// token query parameter removed) and removing the `strip_cookies` cookies from every `cookie`
    /// header (see [`crate::credentials::strip_cookie_headers`]). `identity`: the properties to set for
    /// later filters (see [`identity`]); empty when no token was verified.
    Allow {
        remove: Vec<String>,
        set: Vec<(String, String)>,
        path: Option<String>,
        strip_cookies: Vec<String>,
        identity: Identity,
    },
    /// Send this local reply: `status`, a `www-authenticate` challenge and a `retry-after` (seconds)
    /// when set, `body` as `text/plain`. `reason` names the counter (`denied.<reason>`); `detail` is
    /// for the log line (never a token).
    Deny {
        status: u32,
        www_authenticate: Option<String>,
        retry_after: Option<u32>,
        reason: &'static str,
        detail: String,
        body: &'static str,
    },
    /// Pause until these providers' keys or introspection answers change (bounded by
    /// `key_wait_timeout_ms`, then [`wait_timeout`]).
    Wait { providers: Vec<usize>, on: WaitFor },
}

/// Reply bodies, one per kind of refusal: the body says what failed, never more than the status.
pub mod body {
    pub const BAD_REQUEST: &str = "bad request\n";
    pub const UNAUTHORIZED: &str = "unauthorized\n";
    pub const FORBIDDEN: &str = "forbidden\n";
    pub const KEYS_UNAVAILABLE: &str = "signing keys unavailable\n";
    pub const INTROSPECTION_UNAVAILABLE: &str = "token introspection unavailable\n";
    pub const KEYS_OR_INTROSPECTION_UNAVAILABLE: &str = "signing keys or token introspection unavailable\n";
    pub const SERVICE_UNAVAILABLE: &str = "service unavailable\n";
}

/// Counters the glue turns into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub cache_hits: u32,
    pub verifications: u32,
}

/// The request as the engine sees it.
/// `'h`: the header values' (borrowed from the request's header map).
pub struct Request<'a, 'h> {
    pub method: &'a str,
    /// `:path` with query, as the client sent it.
    pub path: &'a str,
    /// A request header's value. A header sent more than once comes as its values joined with `,`
    /// (`; ` for `cookie`), as RFC 9110 §5.3 and RFC 9113 §8.2.3 combine them, so that a repeated
    /// credential is seen rather than only its first copy.
    /// Borrowed from the request's header map when the header came once.
    pub header: &'a dyn Fn(&str) -> Option<Cow<'h, [u8]>>,
}

/// A token found for one of the rule's providers, and where it came from.
#[derive(Debug, Clone)]
pub struct Credential<'p> {
    pub provider: usize,
    pub token: String,
    pub source: &'p Source,
}

/// A token accepted for one provider: its claims and the identity properties for later filters (see
/// [`identity`]), encoded once. The token cache keeps the whole of it, so a cache hit only copies the
/// identity's bytes out.
#[derive(Debug)]
pub struct Authenticated {
    pub verified: Verified,
    pub identity: Identity,
}

/// The properties to set for later filters: (single-segment path, value) pairs.
pub type Identity = Rc<[(String, Vec<u8>)]>;

impl Authenticated {
    fn new(p: &ProviderPlan, verified: Verified) -> Rc<Self> {
        let identity = identity::of(p, &verified).into();
        Rc::new(Authenticated { verified, identity })
    }
}

impl std::ops::Deref for Authenticated {
    type Target = Verified;
    fn deref(&self) -> &Verified {
        &self.verified
    }
}

/// What verifying or introspecting one token gave.
#[derive(Debug, Clone)]
pub enum Attempt {
    Ok(Rc<Authenticated>),
    /// The token is refused: 401 `invalid_token`.
    Err(TokenError),
    Wait(WaitFor),
    /// The provider's keys are unavailable: 503.
    KeysUnavailable,
    /// Introspection endpoint unusable and not fail-open: 503.
    IntroUnavailable(String),
}

/// A token accepted for a provider: its claims and where it came from.
pub type Accepted<'p> = (usize, Rc<Authenticated>, &'p Source);

/// A step's result: `Err` ends the decision with that outcome (a refusal, a wait, or a pass).
pub type Step<T> = Result<T, Outcome>;

fn deny(status: u32, reason: &'static str, detail: String, body: &'static str) -> Outcome {
    Outcome::Deny { status, www_authenticate: None, retry_after: None, reason, detail, body }
}

/// 401 or 403 with an RFC 6750 challenge.
fn challenge(plan: &Plan, status: u32, reason: &'static str, detail: String, c: &Challenge<'_>) -> Outcome {
    let body = if status == 403 { body::FORBIDDEN } else { body::UNAUTHORIZED };
    Outcome::Deny {
        status,
        www_authenticate: Some(www_authenticate(&plan.realm, c)),
        retry_after: None,
        reason,
        detail,
        body,
    }
}

fn deny_invalid(plan: &Plan, e: &TokenError) -> Outcome {
    let d = e.to_string();
    challenge(plan, 401, e.reason(), d.clone(), &Challenge::InvalidToken(&d))
}

fn deny_keys_unavailable(provider: &str) -> Outcome {
    let d = format!("signing keys of provider `{provider}` are unavailable");
    deny(503, "keys_unavailable", d, body::KEYS_UNAVAILABLE)
}

fn deny_introspection(provider: &str, err: &str) -> Outcome {
    let d = format!("provider `{provider}`: {err}");
    deny(503, "introspection_unavailable", d, body::INTROSPECTION_UNAVAILABLE)
}

/// The reply to a request that waited `timeout_ms` (`key_wait_timeout_ms`) in vain: 503 with
/// `retry-after: 1` (the client's token is not at fault), the body naming what did not come.
pub fn wait_timeout(on: WaitFor, timeout_ms: u64) -> Outcome {
    let (what, body) = match on {
        WaitFor::Keys => ("signing keys", body::KEYS_UNAVAILABLE),
        WaitFor::Introspection => ("introspection answer", body::INTROSPECTION_UNAVAILABLE),
        WaitFor::KeysAndIntrospection => {
            ("signing keys or introspection answer", body::KEYS_OR_INTROSPECTION_UNAVAILABLE)
        }
    };
    Outcome::Deny {
        status: 503,
        www_authenticate: None,
        retry_after: Some(1),
        reason: "keys_timeout",
        detail: format!("{what} not available within {timeout_ms} ms"),
        body,
    }
}

/// The reply when the filter cannot decide (not configured, worker state unavailable): 503, never a
/// pass.
pub fn internal_error(what: &str) -> Outcome {
    deny(503, "internal", format!("internal error: {what}"), body::SERVICE_UNAVAILABLE)
}

/// Continue without claims: nothing verified is vouched for.
fn pass_unverified() -> Outcome {
    Outcome::Allow {
        remove: Vec::new(),
        set: Vec::new(),
        path: None,
        strip_cookies: Vec::new(),
        identity: Rc::from(Vec::new()),
    }
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

/// Decides what to do with a request.
pub fn evaluate(
    plan: &Plan,
    req: &Request<'_, '_>,
    keys: &mut dyn KeyAccess,
    cache: &mut TokenCache,
    now_s: u64,
    counters: &mut Counters,
) -> Outcome {
    steps(plan, req, keys, cache, now_s, counters).unwrap_or_else(|decided| decided)
}

fn steps(
    plan: &Plan,
    req: &Request<'_, '_>,
    keys: &mut dyn KeyAccess,
    cache: &mut TokenCache,
    now_s: u64,
    counters: &mut Counters,
) -> Step<Outcome> {
    let Some(rule) = select_rule(plan, req)? else { return Ok(Outcome::Pass) };
    let credentials = extract_credentials(plan, rule, req)?;
    let attempts: Vec<Attempt> =
        credentials.iter().map(|c| authenticate(plan, c, keys, cache, now_s, counters)).collect();
    let accepted = combine(plan, rule, &credentials, &attempts)?;
    authorize(plan, rule, &accepted)?;
    Ok(allow(plan, req, &accepted))
}

/// Step 1: the rule for this request, `None` when it passes unchecked (no rule matches, the rule names
/// no provider, or a CORS preflight). Rules match the path as upstreams will route it; a path they
/// would read in different ways is refused (400) whatever the rules say, since no rule can be chosen
/// for it safely.
pub fn select_rule<'p>(plan: &'p Plan, req: &Request<'_, '_>) -> Step<Option<&'p RulePlan>> {
    let norm_path =
        path::normalize(req.path).map_err(|e| deny(400, "bad_path", e.to_string(), body::BAD_REQUEST))?;
    if plan.bypass_cors_preflight
        && req.method == "OPTIONS"
        && (req.header)("origin").is_some()
        && (req.header)("access-control-request-method").is_some()
    {
        return Ok(None);
    }
    Ok(plan
        .rules
        .iter()
        .find(|r| rule_matches(r, req.method, &norm_path))
        .filter(|r| !r.providers.is_empty()))
}

/// Step 2: each of the rule's providers' token. A credential that is there but unreadable, or a
/// provider's token sent by more than one method (RFC 6750 §2), is refused outright (401
/// `invalid_request`), even where a missing token is allowed: it must never reach the upstream
/// unverified. No token at all: 401, or a pass under `allow_missing`.
pub fn extract_credentials<'p>(
    plan: &'p Plan,
    rule: &RulePlan,
    req: &Request<'_, '_>,
) -> Step<Vec<Credential<'p>>> {
    let mut found = Vec::new();
    let mut malformed: Option<String> = None;
    for &pi in &rule.providers {
        let p = &plan.providers[pi];
        let mut mine: Option<Credential<'p>> = None;
        for s in &p.sources {
            match extract(s, req) {
                Found::Absent => {}
                Found::Malformed(why) => {
                    malformed.get_or_insert(why);
                }
                Found::Token(token) => {
                    if mine.is_some() {
                        malformed.get_or_insert_with(|| {
                            format!("provider `{}`: a token is sent by more than one method", p.name)
                        });
                    } else {
                        mine = Some(Credential { provider: pi, token, source: s });
                    }
                }
            }
        }
        found.extend(mine);
    }
    if let Some(why) = malformed {
        if rule.allow_missing_or_failed {
            return Err(pass_unverified());
        }
        return Err(challenge(plan, 401, "invalid_request", why.clone(), &Challenge::InvalidRequest(&why)));
    }
    if found.is_empty() {
        if rule.allow_missing || rule.allow_missing_or_failed {
            return Err(pass_unverified());
        }
        return Err(challenge(plan, 401, "missing", "no token".into(), &Challenge::Missing));
    }
    Ok(found)
}

/// Step 3: one token verified with its provider's keys (through the token cache; an unknown `kid` may
/// start a refetch to wait for), or, when it is opaque (or the provider has no keys) and the provider
/// introspects, the introspection answer put through the provider's policy.
pub fn authenticate(
    plan: &Plan,
    c: &Credential<'_>,
    keys: &mut dyn KeyAccess,
    cache: &mut TokenCache,
    now_s: u64,
    counters: &mut Counters,
) -> Attempt {
    let pi = c.provider;
    let p = &plan.providers[pi];
    let token = c.token.as_str();
    if let Some(icfg) = &p.introspection
        && (!looks_like_jwt(token) || (p.static_keys.is_none() && p.remote.is_none()))
    {
        if token.len() > p.policy.max_token_bytes {
            return Attempt::Err(TokenError::TooLarge(p.policy.max_token_bytes));
        }
        let Some(result) = keys.introspect(pi, token) else { return Attempt::Wait(WaitFor::Introspection) };
        // The answer goes through the provider's policy (issuer, audiences, subjects, required claims,
        // lifetime, exp/nbf) exactly as a JWT's claims do.
        return match introspection::decide(icfg, &p.policy, result, now_s) {
            introspection::Outcome::Active(i) => Attempt::Ok(Authenticated::new(p, from_introspection(&i))),
            introspection::Outcome::Inactive(d) => Attempt::Err(TokenError::Inactive(d)),
            introspection::Outcome::Rejected(e) => Attempt::Err(e),
            introspection::Outcome::Unavailable(e) => Attempt::IntroUnavailable(e.to_string()),
            introspection::Outcome::FailOpen(_) => Attempt::Ok(Authenticated::new(
                p,
                Verified { claims: Default::default(), exp: None, payload_b64: String::new() },
            )),
        };
    }
    // Hashed once: the lookup and, on a miss, the insertion.
    let hash = cache.hash(pi, token);
    if let Some(v) = cache.get(pi, token, hash, now_s) {
        counters.cache_hits += 1;
        return Attempt::Ok(v);
    }
    if !looks_like_jwt(token) {
        return Attempt::Err(TokenError::Malformed);
    }
    match keys.keys(pi) {
        Keys::Loading => Attempt::Wait(WaitFor::Keys),
        Keys::Unavailable => Attempt::KeysUnavailable,
        Keys::Ready(ks) => {
            counters.verifications += 1;
            match validate(&p.policy, ks, token, now_s) {
                Ok(v) => {
                    let v = Authenticated::new(p, v);
                    cache.insert(pi, token, hash, Rc::clone(&v), now_s);
                    Attempt::Ok(v)
                }
                Err(TokenError::UnknownKid) if p.remote.is_some() && keys.unknown_kid(pi) => {
                    Attempt::Wait(WaitFor::Keys)
                }
                Err(e) => Attempt::Err(e),
            }
        }
    }
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

/// Step 4: the attempts (one per credential, in order) under the rule's mode.
/// - `requires_any`: the first accepted token; else wait for any pending one; else (unless
///   `allow_missing_or_failed` passes the request unverified) 401 for the first refused token, then 503
///   for unavailable keys, then 503 for an unusable introspection endpoint.
/// - `requires_all`: a refused token is 401 at once; else wait for pending ones; then every provider
///   needs an accepted token (503 when keys or introspection are unavailable, else 401). Under
///   `allow_missing_or_failed` only the tokens that verified are accepted.
pub fn combine<'p>(
    plan: &Plan,
    rule: &RulePlan,
    credentials: &[Credential<'p>],
    attempts: &[Attempt],
) -> Step<Vec<Accepted<'p>>> {
    let all = || credentials.iter().zip(attempts);
    let mut waiting: Option<(Vec<usize>, WaitFor)> = None;
    for (c, a) in all() {
        if let Attempt::Wait(on) = a {
            match &mut waiting {
                None => waiting = Some((vec![c.provider], *on)),
                Some((providers, acc)) => {
                    providers.push(c.provider);
                    *acc = acc.and(*on);
                }
            }
        }
    }
    let wait = |(providers, on): (Vec<usize>, WaitFor)| Outcome::Wait { providers, on };
    let ok: Vec<Accepted<'p>> = all()
        .filter_map(|(c, a)| match a {
            Attempt::Ok(v) => Some((c.provider, v.clone(), c.source)),
            _ => None,
        })
        .collect();
    let first_err = attempts.iter().find_map(|a| match a {
        Attempt::Err(e) => Some(e),
        _ => None,
    });
    let unavailable = all().find_map(|(c, a)| matches!(a, Attempt::KeysUnavailable).then_some(c.provider));
    let intro_down = all().find_map(|(c, a)| match a {
        Attempt::IntroUnavailable(e) => Some((c.provider, e)),
        _ => None,
    });
    let unavailable_reply = || {
        if let Some(pi) = unavailable {
            return Some(deny_keys_unavailable(&plan.providers[pi].name));
        }
        intro_down.map(|(pi, e)| deny_introspection(&plan.providers[pi].name, e))
    };

    match rule.mode {
        Mode::Any => {
            if !ok.is_empty() {
                return Ok(ok.into_iter().take(1).collect());
            }
            if let Some(w) = waiting {
                return Err(wait(w));
            }
            if rule.allow_missing_or_failed {
                return Err(pass_unverified());
            }
            if let Some(e) = first_err {
                return Err(deny_invalid(plan, e));
            }
            Err(unavailable_reply().unwrap_or_else(|| deny_invalid(plan, &TokenError::Malformed)))
        }
        Mode::All => {
            if !rule.allow_missing_or_failed
                && let Some(e) = first_err
            {
                return Err(deny_invalid(plan, e));
            }
            if let Some(w) = waiting {
                return Err(wait(w));
            }
            if rule.allow_missing_or_failed {
                // Whatever verified is forwarded with its claims; the rest is not vouched for.
                return Ok(ok);
            }
            if let Some(o) = unavailable_reply() {
                return Err(o);
            }
            if let Some(pi) = rule.providers.iter().find(|pi| !ok.iter().any(|(o, _, _)| o == *pi)) {
                let d = format!("a token for `{}` is required", plan.providers[*pi].name);
                return Err(challenge(plan, 401, "missing", d.clone(), &Challenge::InvalidToken(&d)));
            }
            Ok(ok)
        }
    }
}

/// Step 5: the rule's scopes (all of them, across the accepted tokens) and claim matchers (each met by
/// one accepted token); failing, 403 `insufficient_scope`.
pub fn authorize(plan: &Plan, rule: &RulePlan, accepted: &[Accepted<'_>]) -> Step<()> {
    if !rule.scopes.is_empty() {
        let have: Vec<&str> = accepted.iter().flat_map(|(_, v, _)| token_scopes(&v.claims)).collect();
        if let Some(missing) = rule.scopes.iter().find(|s| !have.contains(&s.as_str())) {
            let scope = rule.scopes.join(" ");
            let d = format!("scope `{missing}` is required");
            let c = Challenge::InsufficientScope { description: &d, scope: &scope };
            return Err(challenge(plan, 403, "scope", d.clone(), &c));
        }
    }
    for m in &rule.claims {
        if !accepted.iter().any(|(_, v, _)| claim_ok(&v.claims, m)) {
            let d = format!("claim `{}` does not match", m.name);
            let c = Challenge::InsufficientScope { description: &d, scope: "" };
            return Err(challenge(plan, 403, "claims", d.clone(), &c));
        }
    }
    Ok(())
}

/// The Allow outcome for these verified tokens: claim and payload headers set, and (unless the
/// provider forwards it) each token removed from where it came from.
pub fn allow(plan: &Plan, req: &Request<'_, '_>, accepted: &[Accepted<'_>]) -> Outcome {
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
    // Encoded when the token was accepted (and cached with it): shared, not rebuilt.
    let identity = accepted.first().map_or_else(|| Rc::from(Vec::new()), |(_, v, _)| Rc::clone(&v.identity));
    Outcome::Allow { remove, set, path, strip_cookies, identity }
}

/// The identity jwt-auth hands on to later filters (authz, Envoy RBAC) through `proxy_set_property`.
/// Envoy keeps a value set at the single-segment path `p` as filter state `wasm.p` for the rest of the
/// filter chain; a client cannot set filter state, so only a verified token is ever seen there.
pub mod identity {
    use serde_json::Value;

    use crate::claims::claim_at;
    use crate::config::ProviderPlan;
    use crate::validate::Verified;

    pub use meshwasm_filter_runtime::identity::{CLAIM_PREFIX, PRINCIPAL, PROVIDER};

    /// The properties to set for the token `v` verified by provider `p`. No principal when the token
    /// has no string `sub` (an opaque token's answer may lack one); `iss` may be empty.
    pub fn of(p: &ProviderPlan, v: &Verified) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::with_capacity(2 + p.identity_claims.len());
        if let Some(Value::String(sub)) = v.claims.get("sub") {
            let iss = v.claims.get("iss").and_then(Value::as_str).unwrap_or_default();
            out.push((PRINCIPAL.to_string(), format!("{iss}/{sub}").into_bytes()));
        }
        out.push((PROVIDER.to_string(), p.name.clone().into_bytes()));
        for (name, path) in &p.identity_claims {
            if let Some(c) = claim_at(&v.claims, path) {
                out.push((name.clone(), c.to_string().into_bytes()));
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "engine_attack_tests.rs"]
mod attack_tests;
