//! jwt-auth: compact JWS parsing and validation, JWT claims through the whole engine (rules,
//! credentials, signature, claims, scopes, the verified-token cache), JWKS, PEM, RFC 7662
//! introspection answers, and the plugin configuration.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use meshwasm_jwt_auth::cache::TokenCache;
use meshwasm_jwt_auth::config::Plan;
use meshwasm_jwt_auth::engine::{Counters, IntroResult, KeyAccess, Keys, Outcome, Request, evaluate};
use meshwasm_jwt_auth::jwks::{self, KeySet};
use meshwasm_jwt_auth::validate::{self, Policy};
use meshwasm_jwt_auth::{crypto, introspection};
use serde_json::{Map, Value, json};

/// The shared secret of the `hs` provider (64 bytes: enough for HS512).
const SECRET: &[u8] = b"meshwasm-fuzz-hmac-secret-0123456789abcdef0123456789abcdef012345";
const EC_PRIVATE: &str = include_str!("../../../filters/jwt-auth/tests/keys/ec1.pem");
const EC_PUBLIC: &str = include_str!("../../../filters/jwt-auth/tests/keys/ec1.pub.pem");
const RSA_PUBLIC: &str = include_str!("../../../filters/jwt-auth/tests/keys/rsa1.pub.pem");
const WYCHEPROOF: &str =
    include_str!("../../../tests/vectors/wycheproof/json_web_signature_test.subset.json");
const RFC7520: [&str; 3] = [
    include_str!("../../../tests/vectors/rfc7520/4_1.rsa_v15_signature.json"),
    include_str!("../../../tests/vectors/rfc7520/4_2.rsa-pss_signature.json"),
    include_str!("../../../tests/vectors/rfc7520/4_4.hmac-sha2_integrity_protection.json"),
];

fn every_algorithm() -> Vec<Algorithm> {
    use Algorithm::*;
    vec![HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
}

/// The fixed key set of [`jws_validate`]: every public key of the Wycheproof and RFC 7520 vectors,
/// the test EC and RSA keys, and the HMAC secret.
fn vector_keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut set = KeySet::default();
        let mut add = |jwk: &Value| {
            if let Ok(k) = jwks::parse_jwks_value(&json!({ "keys": [jwk] })) {
                set.extend(k);
            }
        };
        if let Ok(w) = serde_json::from_str::<Value>(WYCHEPROOF) {
            for g in w["testGroups"].as_array().into_iter().flatten() {
                add(&g["public"]);
            }
        }
        for v in RFC7520 {
            if let Ok(v) = serde_json::from_str::<Value>(v) {
                add(&v["key"]);
            }
        }
        add(&json!({"kty": "oct", "kid": "h", "k": URL_SAFE_NO_PAD.encode(SECRET)}));
        for pem in [EC_PUBLIC, RSA_PUBLIC] {
            if let Ok(k) = jwks::parse_pem(pem) {
                set.keys.push(k);
            }
        }
        set
    })
}

/// The fixed configurations and keys that do not load (see [`crate::broken_fixtures`]).
pub(crate) fn broken_fixtures() -> Vec<&'static str> {
    let mut broken = Vec::new();
    if claims_plan().is_none() {
        broken.push("jwt_claims plan");
    }
    if introspection_plan().is_none() {
        broken.push("introspection plan");
    }
    if sign(Alg::Es256, "x").is_none() {
        broken.push("ES256 signing key");
    }
    // 3 Wycheproof groups, 3 RFC 7520 keys, the HMAC secret, the EC and RSA PEMs.
    if vector_keys().keys.len() < 9 {
        broken.push("jws_validate key set");
    }
    broken
}

/// Input: 8 bytes of clock (seconds, big-endian), then a compact JWS. Parsed, verified against
/// the fixed key set, and validated as a JWT (issuer, audience, lifetime) at that clock.
pub fn jws_validate(data: &[u8]) {
    let Some((clock, token)) = data.split_first_chunk::<8>() else { return };
    let Ok(token) = std::str::from_utf8(token) else { return };
    let now = u64::from_be_bytes(*clock);
    let keys = vector_keys();
    let permissive = Policy { algorithms: every_algorithm(), ..Policy::default() };
    let strict = Policy {
        issuer: Some("https://iss".into()),
        audiences: vec!["api".into()],
        max_lifetime_s: Some(86_400),
        required_claims: vec!["sub".into()],
        typ: Some("jwt".into()),
        ..permissive.clone()
    };
    let _ = validate::verify_jws(&permissive, keys, token);
    let _ = validate::validate(&permissive, keys, token, now);
    let _ = validate::validate(&strict, keys, token, now);
    let _ = validate::peek_issuer(token);
    let _ = validate::looks_like_jwt(token);
    if let Ok(p) = validate::parse(token, 1 << 16) {
        let _ = validate::check_signature(&permissive, keys, &p);
    }
}

/// The plan of [`jwt_claims`]: an HMAC provider and an ES256 (PEM) provider, every token source,
/// claim headers, and rules using each feature.
fn claims_plan() -> &'static Option<Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let cfg = json!({
            "realm": "api",
            "providers": {
                "hs": {"issuer": "https://iss", "audiences": ["api", "other"],
                       "algorithms": ["HS256", "HS384", "HS512"],
                       "local_jwks": {"keys": [{"kty": "oct", "kid": "h", "k": URL_SAFE_NO_PAD.encode(SECRET)}]},
                       "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-token"}],
                       "from_params": ["access_token"], "from_cookies": ["at"],
                       "forward_payload_header": "x-jwt-payload",
                       "claim_to_headers": [{"header": "x-sub", "claim": "sub"},
                                            {"header": "x-groups", "claim": "realm.groups"},
                                            {"header": "x-n", "claim": "n"}]},
                "ec": {"issuer": "https://iss-ec", "audiences": ["api"], "algorithms": ["ES256"],
                       "pem": [EC_PUBLIC], "max_lifetime": "1h", "required_claims": ["sub"], "typ": "JWT",
                       "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}]}
            },
            "rules": [
                {"match": {"prefix": "/public"}},
                {"match": {"prefix": "/opt"}, "requires_any": ["hs"], "allow_missing": true},
                {"match": {"prefix": "/admin"}, "requires_any": ["hs"], "scopes": ["admin"],
                 "claims": [{"claim": "realm.groups", "exact": "ops"}]},
                {"match": {"prefix": "/any"}, "requires_any": ["hs", "ec"]},
                {"match": {"prefix": "/all"}, "requires_all": ["hs", "ec"]},
                {"match": {"path": "/ec", "methods": ["GET", "POST"]}, "requires_any": ["ec"]},
                {"match": {"regex": "/re/[a-z]+"}, "requires_any": ["hs"], "allow_missing_or_failed": true},
                {"match": {"prefix": "/"}, "requires_any": ["hs"]}
            ]
        });
        Plan::from_json(cfg.to_string().as_bytes()).ok()
    })
}

/// A JSON value from fields; `Rel` is the clock plus an offset (lifetimes near now).
#[derive(Arbitrary, Debug)]
enum Val {
    Str(String),
    Known(u8),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    Rel(i32),
    Arr(Vec<Val>),
    Obj(Vec<(String, Val)>),
}

const KNOWN: [&str; 8] = ["https://iss", "https://iss-ec", "api", "other", "alice", "admin read", "ops", "h"];

impl Val {
    fn json(&self, now: u64, depth: u32) -> Value {
        if depth > 16 {
            return Value::Null;
        }
        match self {
            Val::Str(s) => Value::String(s.clone()),
            Val::Known(i) => Value::String(KNOWN[usize::from(*i) % KNOWN.len()].into()),
            Val::Int(i) => json!(i),
            Val::UInt(u) => json!(u),
            Val::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Val::Bool(b) => json!(b),
            Val::Null => Value::Null,
            Val::Rel(d) => json!(now.saturating_add_signed(i64::from(*d))),
            Val::Arr(a) => Value::Array(a.iter().map(|v| v.json(now, depth + 1)).collect()),
            Val::Obj(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), v.json(now, depth + 1))).collect())
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ClaimName {
    Iss,
    Aud,
    Sub,
    Exp,
    Nbf,
    Iat,
    Scope,
    Scp,
    Realm,
    N,
    Other(String),
}

impl ClaimName {
    fn name(&self) -> &str {
        match self {
            ClaimName::Iss => "iss",
            ClaimName::Aud => "aud",
            ClaimName::Sub => "sub",
            ClaimName::Exp => "exp",
            ClaimName::Nbf => "nbf",
            ClaimName::Iat => "iat",
            ClaimName::Scope => "scope",
            ClaimName::Scp => "scp",
            ClaimName::Realm => "realm",
            ClaimName::N => "n",
            ClaimName::Other(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Es256,
}

#[derive(Arbitrary, Debug)]
enum Kid {
    Absent,
    Matching,
    Other(String),
    NotAString(i64),
}

#[derive(Arbitrary, Debug)]
enum Place {
    Bearer,
    XToken,
    Param,
    Cookie,
    BearerAndParam,
    Raw(Vec<(String, String)>),
}

#[derive(Arbitrary, Debug)]
enum Tamper {
    None,
    FlipSignature(u16),
    DropSignature,
    Truncate(u16),
    AlgNone,
}

#[derive(Arbitrary, Debug, Default)]
struct Req {
    method: u8,
    path: u8,
    suffix: String,
    advance_s: u16,
}

/// A JWT built from fields and signed with the providers' keys, so that the fuzzer reaches past
/// the signature into claim handling, rules, claim headers and the cache.
#[derive(Arbitrary, Debug)]
struct JwtInput {
    clock: u32,
    alg: Alg,
    kid: Kid,
    typ: Option<String>,
    header_extra: Vec<(String, Val)>,
    claims: Vec<(ClaimName, Val)>,
    tamper: Tamper,
    place: Place,
    requests: Vec<Req>,
}

const METHODS: [&str; 4] = ["GET", "POST", "OPTIONS", "DELETE"];
const PATHS: [&str; 10] = [
    "/",
    "/public",
    "/opt/x",
    "/admin",
    "/any",
    "/all",
    "/ec",
    "/re/abc",
    "/x?access_token=",
    "//admin/../admin",
];

fn sign(alg: Alg, input: &str) -> Option<String> {
    let (key, alg) = match alg {
        Alg::Hs256 => (EncodingKey::from_secret(SECRET), Algorithm::HS256),
        Alg::Hs384 => (EncodingKey::from_secret(SECRET), Algorithm::HS384),
        Alg::Hs512 => (EncodingKey::from_secret(SECRET), Algorithm::HS512),
        Alg::Es256 => {
            static EC: OnceLock<Option<EncodingKey>> = OnceLock::new();
            (
                EC.get_or_init(|| EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).ok()).clone()?,
                Algorithm::ES256,
            )
        }
    };
    jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).ok()
}

/// What the engine asks of the key store, answered from the plan's static keys.
struct StaticKeys<'p> {
    plan: &'p Plan,
    introspection: Option<IntroResult>,
}

impl KeyAccess for StaticKeys<'_> {
    fn keys(&self, provider: usize) -> Keys<'_> {
        Keys::of(self.plan.providers.get(provider).and_then(|p| p.static_keys.as_ref()), None)
    }
    fn unknown_kid(&mut self, _provider: usize) -> bool {
        false
    }
    fn introspect(&mut self, _provider: usize, _token: &str) -> Option<IntroResult> {
        self.introspection.clone()
    }
}

/// Runs one request through the engine and checks what it answers is well-formed.
fn run(
    plan: &Plan,
    keys: &mut StaticKeys<'_>,
    cache: &mut TokenCache,
    method: &str,
    path: &str,
    headers: &HashMap<String, Vec<u8>>,
    now: u64,
) -> Outcome {
    let get = |n: &str| headers.get(n).map(|v| std::borrow::Cow::Borrowed(v.as_slice()));
    let req = Request { method, path, header: &get };
    let mut counters = Counters::default();
    let outcome = evaluate(plan, &req, keys, cache, now, &mut counters);
    if let Outcome::Allow { set, .. } = &outcome {
        for (name, value) in set {
            assert!(
                !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0),
                "header {name} set to a value with a line break: {value:?}"
            );
        }
    }
    outcome
}

/// Structure-aware: a JWT from fields (see [`JwtInput`]), signed, placed in a request, and sent
/// through the engine a few times at advancing clocks (the second time from the cache).
pub fn jwt_claims(data: &[u8]) {
    claims_outcomes(data);
}

/// What [`jwt_claims`] got for each request (`allow`, `deny <status>`, `pass`, `wait`): the replay
/// test checks that the corpus gets past the signature into allowed requests.
pub fn claims_outcomes(data: &[u8]) -> Vec<String> {
    let mut outcomes = Vec::new();
    let Ok(input) = JwtInput::arbitrary_take_rest(Unstructured::new(data)) else { return outcomes };
    let Some(plan) = claims_plan() else { return outcomes };
    let now = 1_700_000_000 + u64::from(input.clock % 1_000_000);
    let mut header = Map::new();
    header.insert(
        "alg".into(),
        json!(match input.alg {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Es256 => "ES256",
        }),
    );
    match &input.kid {
        Kid::Absent => {}
        Kid::Matching => {
            header.insert("kid".into(), json!("h"));
        }
        Kid::Other(k) => {
            header.insert("kid".into(), json!(k));
        }
        Kid::NotAString(n) => {
            header.insert("kid".into(), json!(n));
        }
    }
    if let Some(t) = &input.typ {
        header.insert("typ".into(), json!(t));
    }
    for (k, v) in input.header_extra.iter().take(4) {
        if k != "alg" {
            header.insert(k.clone(), v.json(now, 0));
        }
    }
    let mut claims = Map::new();
    for (k, v) in &input.claims {
        claims.insert(k.name().to_owned(), v.json(now, 0));
    }
    let h = URL_SAFE_NO_PAD.encode(Value::Object(header).to_string());
    let p = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
    let signing_input = format!("{h}.{p}");
    let Some(sig) = sign(input.alg, &signing_input) else { return outcomes };
    let mut token = format!("{signing_input}.{sig}");
    match input.tamper {
        Tamper::None => {}
        Tamper::FlipSignature(i) => {
            let at = signing_input.len() + 1 + usize::from(i) % sig.len().max(1);
            if let Some(c) = token.get(at..=at) {
                let flipped = if c == "A" { "B" } else { "A" };
                token.replace_range(at..=at, flipped);
            }
        }
        Tamper::DropSignature => token.truncate(signing_input.len() + 1),
        Tamper::Truncate(n) => token.truncate(usize::from(n) % (token.len() + 1)),
        Tamper::AlgNone => {
            token = format!("{}.{p}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        }
    }
    let mut headers: HashMap<String, Vec<u8>> = HashMap::new();
    let mut query = String::new();
    match &input.place {
        Place::Bearer => {
            headers.insert("authorization".into(), format!("Bearer {token}").into_bytes());
        }
        Place::XToken => {
            headers.insert("x-token".into(), token.clone().into_bytes());
        }
        Place::Param => query = format!("?access_token={token}"),
        Place::Cookie => {
            headers.insert("cookie".into(), format!("a=b; at={token}").into_bytes());
        }
        Place::BearerAndParam => {
            headers.insert("authorization".into(), format!("Bearer {token}").into_bytes());
            query = format!("?access_token={token}");
        }
        Place::Raw(list) => {
            for (k, v) in list.iter().take(8) {
                headers.insert(k.to_ascii_lowercase(), v.replace("TOKEN", &token).into_bytes());
            }
        }
    }
    let mut keys = StaticKeys { plan, introspection: None };
    let mut cache = TokenCache::new(plan.cache_entries.min(64), plan.cache_max_ttl_s);
    let mut clock = now;
    // At least twice (the second time from the cache), at most six requests.
    let twice = [Req::default(), Req::default()];
    let requests =
        if input.requests.is_empty() { &twice[..] } else { &input.requests[..input.requests.len().min(6)] };
    for r in requests {
        clock += u64::from(r.advance_s);
        let method = METHODS[usize::from(r.method) % METHODS.len()];
        let path = format!("{}{}{query}", PATHS[usize::from(r.path) % PATHS.len()], r.suffix);
        outcomes.push(match run(plan, &mut keys, &mut cache, method, &path, &headers, clock) {
            Outcome::Pass => "pass".to_owned(),
            Outcome::Allow { .. } => "allow".to_owned(),
            Outcome::Deny { status, .. } => format!("deny {status}"),
            Outcome::Wait { .. } => "wait".to_owned(),
        });
    }
    outcomes
}

/// A JWKS document, as configured inline and as fetched from a remote `jwks_uri`; every key
/// selection on the result.
pub fn jwks(data: &[u8]) {
    let _ = jwks::parse_jwks(data);
    if let Ok(set) = jwks::parse_remote_jwks(data) {
        let kids: Vec<Option<String>> = set.keys.iter().map(|k| k.kid.clone()).chain([None]).collect();
        for alg in every_algorithm() {
            for kid in &kids {
                let _ = set.select(alg, kid.as_deref());
            }
        }
    }
}

/// A PEM public key (the `pem` provider field), and the raw key material reader.
pub fn pem(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = jwks::parse_pem(text);
    let _ = crypto::from_pem(text);
}

/// The plan of [`introspection`]: one introspection provider with scopes, claim rules and headers.
fn introspection_plan() -> &'static Option<Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        Plan::from_json(
            br#"{"providers":{"o":{"issuer":"https://iss","audiences":["api"],
                 "introspection":{"cluster":"idp","path":"/introspect","authority":"idp",
                                  "client_id":"rs","client_secret":"s"},
                 "claim_to_headers":[{"header":"x-sub","claim":"sub"},{"header":"x-groups","claim":"realm.groups"}]}},
                 "rules":[{"match":{"prefix":"/admin"},"requires_any":["o"],"scopes":["admin"],
                           "claims":[{"claim":"realm.groups","exact":"ops"}]},
                          {"match":{"prefix":"/"},"requires_any":["o"]}]}"#,
        )
        .ok()
    })
}

/// An RFC 7662 introspection answer (input: 8 bytes of clock, then the body), parsed and decided
/// on by the engine for an opaque token.
pub fn introspection(data: &[u8]) {
    let Some((clock, body)) = data.split_first_chunk::<8>() else { return };
    let now = u64::from_be_bytes(*clock);
    for status in [200, 500] {
        let _ = introspection::parse_response(status, body);
    }
    let Some(plan) = introspection_plan() else { return };
    let answer = introspection::parse_response(200, body).map(Rc::new);
    let mut keys = StaticKeys { plan, introspection: Some(answer) };
    let mut cache = TokenCache::new(16, 3600);
    let headers: HashMap<String, Vec<u8>> =
        [("authorization".to_owned(), b"Bearer opaque-token".to_vec())].into();
    for path in ["/", "/admin"] {
        run(plan, &mut keys, &mut cache, "GET", path, &headers, now);
    }
}

/// The jwt-auth plugin configuration (`client_secret_env` reads a fixed environment).
pub fn config(data: &[u8]) {
    let env = |name: &str| (name == "FUZZ_SECRET").then(|| "fuzz-secret-from-env".to_owned());
    let Ok(plan) = Plan::from_json_with_env(data, &env) else { return };
    // A plan that configures must decide requests without panicking.
    let mut keys = StaticKeys { plan: &plan, introspection: None };
    let mut cache = TokenCache::new(plan.cache_entries.min(64), plan.cache_max_ttl_s);
    let headers: HashMap<String, Vec<u8>> =
        [("authorization".to_owned(), b"Bearer a.b.c".to_vec()), ("cookie".to_owned(), b"at=x".to_vec())]
            .into();
    for (method, path) in [("GET", "/"), ("OPTIONS", "/api?access_token=x"), ("POST", "/admin/x")] {
        run(&plan, &mut keys, &mut cache, method, path, &headers, 1_700_000_000);
    }
}
