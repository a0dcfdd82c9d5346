//! JWS compact token parsing and validation against one provider's policy and keys.
//!
//! The header is parsed here, not by jsonwebtoken, so that every decision is ours: `alg: none` and
//! unknown algorithms are rejected, `crit` is rejected (this filter understands no extension), keys
//! carried by the token (`jwk`, `jku`, `x5u`, `x5c`) are ignored. Time claims are parsed strictly (finite
//! non-negative JSON numbers below 2^64, fractions rounded toward the safe side) and `nbf` is checked by
//! default. Cheap claim checks run before the signature check so a
//! flood of expired or foreign tokens costs no public-key operation.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::jwks::{KeySet, Selection, parse_alg};

/// Why a token was refused. `reason()` is the metric label; `Display` is the `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("token is malformed")]
    Malformed,
    #[error("token header is malformed")]
    BadHeader,
    #[error("token payload is malformed")]
    BadPayload,
    #[error("token algorithm `none` is not accepted")]
    AlgNone,
    #[error("token algorithm is not accepted")]
    AlgNotAllowed,
    #[error("token uses unsupported critical header extensions")]
    Crit,
    #[error("token signing key is unknown")]
    UnknownKid,
    #[error("no key fits the token algorithm")]
    NoMatchingKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token lifetime is longer than allowed")]
    LifetimeTooLong,
    #[error("token has no expiration")]
    MissingExp,
    #[error("claim `{0}` is not a valid NumericDate")]
    BadTime(&'static str),
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("token subject is not accepted")]
    Subject,
    /// The JWS `typ` header, or an introspection answer's `token_type`, is not the required one.
    #[error("token type is not accepted")]
    TokenType,
    /// RFC 7662 answered `active: false` (or the token's own dates are out of range).
    #[error("{0}")]
    Inactive(&'static str),
}

impl TokenError {
    /// Short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge(_) => "too_large",
            TokenError::Malformed | TokenError::BadHeader | TokenError::BadPayload => "malformed",
            TokenError::AlgNone | TokenError::AlgNotAllowed => "alg",
            TokenError::Crit => "crit",
            TokenError::UnknownKid | TokenError::NoMatchingKey => "unknown_key",
            TokenError::BadSignature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid | TokenError::IssuedInFuture => "not_yet_valid",
            TokenError::LifetimeTooLong | TokenError::MissingExp | TokenError::BadTime(_) => "lifetime",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::MissingClaim | TokenError::Subject => "claims",
            TokenError::TokenType => "token_type",
            TokenError::Inactive(_) => "inactive",
        }
    }
}

/// The parts of a compact JWS this filter uses.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// The `typ` header, when it is a string.
    pub typ: Option<String>,
    /// `header.payload`, the signing input.
    pub signing_input: &'a str,
    pub signature: &'a str,
    /// The payload, base64url as received (for a payload header).
    pub payload_b64: &'a str,
    pub claims: Map<String, Value>,
}

fn decode_part(s: &str) -> Option<Vec<u8>> {
    // Strict base64url without padding; non-canonical trailing bits are rejected by the engine.
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// The header and raw parts of a compact JWS; the payload is not interpreted.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub signing_input: &'a str,
    pub signature: &'a str,
    pub payload_b64: &'a str,
}

/// Splits a compact JWS and checks its header (alg, crit, kid).
pub fn parse_jws(token: &str, max_bytes: usize) -> Result<Jws<'_>, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge(max_bytes));
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(TokenError::Malformed);
    };
    if h.is_empty() || p.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header: Value = serde_json::from_slice(&decode_part(h).ok_or(TokenError::BadHeader)?)
        .map_err(|_| TokenError::BadHeader)?;
    let header = header.as_object().ok_or(TokenError::BadHeader)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => return Err(TokenError::AlgNone),
        Some(Value::String(a)) => parse_alg(a).ok_or(TokenError::AlgNotAllowed)?,
        _ => return Err(TokenError::BadHeader),
    };
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: a recipient must reject a token whose `crit` lists an extension it does not
        // understand; this filter understands none (including RFC 7797 `b64`).
        return Err(TokenError::Crit);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::BadHeader),
    };
    if s.is_empty() {
        return Err(TokenError::BadSignature);
    }
    let typ = header.get("typ").and_then(Value::as_str).map(str::to_owned);
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Jws { alg, kid, typ, signing_input, signature: s, payload_b64: p })
}

/// Splits and decodes a compact JWS (header and payload; the signature stays encoded).
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, TokenError> {
    let jws = parse_jws(token, max_bytes)?;
    let payload = decode_part(jws.payload_b64).ok_or(TokenError::BadPayload)?;
    let claims = match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(m)) => m,
        _ => return Err(TokenError::BadPayload),
    };
    Ok(Parsed {
        alg: jws.alg,
        kid: jws.kid,
        typ: jws.typ,
        signing_input: jws.signing_input,
        signature: jws.signature,
        payload_b64: jws.payload_b64,
        claims,
    })
}

/// Verifies a compact JWS whose payload need not be JWT claims (used for the public JWS test vectors):
/// header checks, allowed algorithms, key selection and signature. Returns the decoded payload.
pub fn verify_jws(policy: &Policy, keys: &KeySet, token: &str) -> Result<Vec<u8>, TokenError> {
    let jws = parse_jws(token, policy.max_token_bytes)?;
    if !policy.algorithms.contains(&jws.alg) {
        return Err(TokenError::AlgNotAllowed);
    }
    let payload = decode_part(jws.payload_b64).ok_or(TokenError::BadPayload)?;
    signature_ok(policy, keys, jws.alg, jws.kid.as_deref(), jws.signing_input, jws.signature)?;
    Ok(payload)
}

/// A string matcher for `sub` and claim checks.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(regex_lite::Regex),
}

impl StringMatch {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Exact(e) => s == e,
            StringMatch::Prefix(p) => s.starts_with(p.as_str()),
            StringMatch::Suffix(p) => s.ends_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(s),
        }
    }
}

/// One provider's validation policy (from the plan).
#[derive(Debug, Clone)]
pub struct Policy {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew_s: u64,
    pub require_exp: bool,
    pub check_nbf: bool,
    pub max_lifetime_s: Option<u64>,
    pub required_claims: Vec<String>,
    pub subject: Option<StringMatch>,
    /// Required JWS `typ` (RFC 8725 §3.11), stored without an `application/` prefix; compared
    /// case-insensitively.
    pub typ: Option<String>,
    pub max_token_bytes: usize,
    /// At most this many keys are tried for one token (kid missing or duplicated).
    pub max_keys_tried: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            issuer: None,
            audiences: Vec::new(),
            algorithms: vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
            ],
            clock_skew_s: 60,
            require_exp: true,
            check_nbf: true,
            max_lifetime_s: None,
            required_claims: Vec::new(),
            subject: None,
            typ: None,
            max_token_bytes: 8192,
            max_keys_tried: 8,
        }
    }
}

/// A verified token: its claims and when it stops being valid (seconds).
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub exp: Option<u64>,
    pub payload_b64: String,
}

/// Which way a fractional NumericDate is rounded: toward the safe side of its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// `exp`: an earlier expiry is safe.
    Down,
    /// `nbf`, `iat`: a later start is safe.
    Up,
}

/// An RFC 7519 §2 NumericDate as whole seconds: a finite non-negative JSON number below 2^64, a
/// fraction rounded as `round` says (Envoy's jwt_authn accepts fractions too). `None` for anything else
/// (strings, negatives, values beyond 64 bits; JSON has no NaN).
pub fn numeric_date_value(n: &serde_json::Number, round: Round) -> Option<u64> {
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    let f = n.as_f64()?;
    // 2^64 as f64; `u64::MAX as f64` rounds up to it, so the comparison must be strict.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    if !f.is_finite() || !(0.0..LIMIT).contains(&f) {
        return None;
    }
    let r = match round {
        Round::Down => f.floor(),
        Round::Up => f.ceil(),
    };
    // `r` is integral and in [0, 2^64): the cast is exact, except a ceil that reached 2^64.
    (r < LIMIT).then_some(r as u64)
}

/// The NumericDate claim `name` (`exp` rounds down, `nbf`/`iat` up). Any other JSON type is refused.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    let round = if name == "exp" { Round::Down } else { Round::Up };
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => numeric_date_value(n, round).map(Some).ok_or(TokenError::BadTime(name)),
        Some(_) => Err(TokenError::BadTime(name)),
    }
}

/// Checks everything but the signature (cheap, so done first).
pub fn check_claims(
    policy: &Policy,
    claims: &Map<String, Value>,
    now_s: u64,
) -> Result<Option<u64>, TokenError> {
    check_claim_set(policy, claims, now_s, policy.require_exp)
}

/// The same checks for the members of an active RFC 7662 introspection answer: `iss`, `aud`, `sub`,
/// required claims, `exp` (with the skew), `nbf`, `iat` and the lifetime, exactly as for a JWT, except
/// that `exp` may be absent (RFC 7662 §2.2 makes it optional and the endpoint vouches for the token
/// being active; such answers are cached at most `max_active_ttl_s`).
pub fn check_introspected_claims(
    policy: &Policy,
    claims: &Map<String, Value>,
    now_s: u64,
) -> Result<Option<u64>, TokenError> {
    check_claim_set(policy, claims, now_s, false)
}

fn check_claim_set(
    policy: &Policy,
    claims: &Map<String, Value>,
    now_s: u64,
    require_exp: bool,
) -> Result<Option<u64>, TokenError> {
    let skew = policy.clock_skew_s;
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    match exp {
        Some(exp) if now_s >= exp.saturating_add(skew) => return Err(TokenError::Expired),
        None if require_exp => return Err(TokenError::MissingExp),
        _ => {}
    }
    if policy.check_nbf
        && let Some(nbf) = nbf
        && nbf > now_s.saturating_add(skew)
    {
        return Err(TokenError::NotYetValid);
    }
    if let Some(iat) = iat
        && iat > now_s.saturating_add(skew)
    {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(max) = policy.max_lifetime_s {
        let Some(exp) = exp else { return Err(TokenError::MissingExp) };
        let start = iat.or(nbf).unwrap_or(now_s);
        if exp.saturating_sub(start) > max {
            return Err(TokenError::LifetimeTooLong);
        }
    }
    if let Some(iss) = &policy.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(iss.as_str())
    {
        return Err(TokenError::Issuer);
    }
    if !policy.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => policy.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => {
                list.iter().filter_map(Value::as_str).any(|a| policy.audiences.iter().any(|x| x == a))
            }
            _ => false,
        };
        if !ok {
            return Err(TokenError::Audience);
        }
    }
    for c in &policy.required_claims {
        if !claims.contains_key(c) {
            return Err(TokenError::MissingClaim);
        }
    }
    if let Some(m) = &policy.subject {
        match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if m.matches(sub) => {}
            _ => return Err(TokenError::Subject),
        }
    }
    Ok(exp)
}

fn signature_ok(
    policy: &Policy,
    keys: &KeySet,
    alg: Algorithm,
    kid: Option<&str>,
    signing_input: &str,
    signature: &str,
) -> Result<(), TokenError> {
    let candidates = match keys.select(alg, kid) {
        Selection::Candidates(c) => c,
        Selection::UnknownKid => return Err(TokenError::UnknownKid),
        Selection::NoMatchingKey => return Err(TokenError::NoMatchingKey),
    };
    let sig = decode_part(signature).ok_or(TokenError::BadSignature)?;
    for key in candidates.into_iter().take(policy.max_keys_tried) {
        if crate::crypto::verify(&key.key, alg, signing_input.as_bytes(), &sig) {
            return Ok(());
        }
    }
    Err(TokenError::BadSignature)
}

/// Whether a JWS `typ` header satisfies the required one (already stored without `application/`):
/// compared case-insensitively, with an optional `application/` prefix (RFC 7515 §4.1.9, RFC 8725 §3.11).
pub fn typ_matches(required: &str, typ: Option<&str>) -> bool {
    let Some(t) = typ else { return false };
    let t = match t.get(..12) {
        Some(pre) if pre.eq_ignore_ascii_case("application/") => &t[12..],
        _ => t,
    };
    t.eq_ignore_ascii_case(required)
}

/// Checks the signature with the provider's keys.
pub fn check_signature(policy: &Policy, keys: &KeySet, parsed: &Parsed<'_>) -> Result<(), TokenError> {
    signature_ok(policy, keys, parsed.alg, parsed.kid.as_deref(), parsed.signing_input, parsed.signature)
}

/// Full validation of a token string with one provider.
pub fn validate(policy: &Policy, keys: &KeySet, token: &str, now_s: u64) -> Result<Verified, TokenError> {
    let parsed = parse(token, policy.max_token_bytes)?;
    if !policy.algorithms.contains(&parsed.alg) {
        return Err(TokenError::AlgNotAllowed);
    }
    if let Some(req) = &policy.typ
        && !typ_matches(req, parsed.typ.as_deref())
    {
        return Err(TokenError::TokenType);
    }
    let exp = check_claims(policy, &parsed.claims, now_s)?;
    check_signature(policy, keys, &parsed)?;
    Ok(Verified { exp, payload_b64: parsed.payload_b64.to_string(), claims: parsed.claims })
}

/// The unverified `iss` of a token, used only to pick which provider should verify it.
pub fn peek_issuer(token: &str) -> Option<String> {
    let p = token.split('.').nth(1)?;
    if p.len() > 64 * 1024 {
        return None;
    }
    let v: Value = serde_json::from_slice(&decode_part(p)?).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// Whether a token looks like a compact JWS (three base64url parts), used to send opaque tokens to
/// introspection instead.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut n = 0;
    for part in token.split('.') {
        n += 1;
        if n > 3 || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return false;
        }
    }
    n == 3
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
