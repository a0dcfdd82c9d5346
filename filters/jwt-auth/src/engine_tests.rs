//! Unit tests of the engine: the whole decision through [`evaluate`] and each step on its own.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;
use crate::introspection::IntrospectionError;

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
    let get = |n: &str| map.get(n).map(|v| Cow::Borrowed(v.as_slice()));
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
            retry_after: None,
            reason: "missing",
            detail: "no token".into(),
            body: body::UNAUTHORIZED,
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
    assert_eq!(o, Outcome::Wait { providers: vec![0], on: WaitFor::Keys });
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
    assert_eq!(o, Outcome::Wait { providers: vec![0], on: WaitFor::Keys });
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
        let get = |n: &str| (n == "authorization").then(|| Cow::Borrowed(&b"Bearer opaque-123"[..]));
        let req = Request { method: "GET", path: "/", header: &get };
        evaluate(&plan, &req, k, &mut TokenCache::new(0, 0), NOW, &mut c)
    };
    let mut k = IntroKeys { answer: None, asked: 0 };
    assert_eq!(call(&mut k), Outcome::Wait { providers: vec![0], on: WaitFor::Introspection });
    k.answer = active("read");
    let Outcome::Allow { set, .. } = call(&mut k) else { panic!() };
    assert_eq!(set, vec![("x-sub".to_string(), "svc".to_string())]);
    k.answer = active("write");
    assert!(matches!(call(&mut k), Outcome::Deny { status: 403, .. }));
    k.answer = Some(Ok(Rc::new(crate::introspection::parse_response(200, br#"{"active":false}"#).unwrap())));
    assert!(matches!(call(&mut k), Outcome::Deny { status: 401, reason: "inactive", .. }));
    k.answer = Some(Err(IntrospectionError::Status(500)));
    assert!(matches!(call(&mut k), Outcome::Deny { status: 503, reason: "introspection_unavailable", .. }));
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
    let (o, _) =
        run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x?a=1", &[("cookie", &format!("z=1; at={t}"))]);
    let Outcome::Allow { remove, path, strip_cookies, .. } = o else { panic!("{o:?}") };
    assert!(remove.is_empty() && path.is_none());
    assert_eq!(strip_cookies, vec!["at".to_string()]);
    // A percent-encoded parameter name carries the token as well (the upstream decodes it).
    let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", &format!("/x?%61ccess_token={t}"), &[]);
    let Outcome::Allow { path, .. } = o else { panic!("{o:?}") };
    assert_eq!(path.as_deref(), Some("/x"));
    // forward: true keeps it.
    let fwd = Plan::from_json(
        br#"{"providers":{"p":{"algorithms":["HS256"],"forward":true,"from_params":["access_token"],
            "local_jwks":{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}}},
            "rules":[{"match":{"prefix":"/"},"requires_any":["p"]}]}"#,
    )
    .unwrap();
    let (o, _) = run(&fwd, &mut k, &mut TokenCache::new(0, 0), "GET", &format!("/x?access_token={t}"), &[]);
    let identity = vec![
        ("meshwasm.jwt.principal".to_string(), b"https://iss/alice".to_vec()),
        ("meshwasm.jwt.provider".to_string(), b"p".to_vec()),
    ];
    assert_eq!(
        o,
        Outcome::Allow {
            remove: vec![],
            set: vec![],
            path: None,
            strip_cookies: vec![],
            identity: identity.into()
        }
    );
}

#[test]
fn verified_identity_is_handed_on_and_nothing_without_a_verified_token() {
    let p = Plan::from_json(
        br#"{"providers":{"p":{"issuer":"https://iss","algorithms":["HS256"],
            "claims_to_filter_state":["scope","realm.groups","absent"],
            "local_jwks":{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}}},
            "rules":[{"match":{"prefix":"/opt"},"requires_any":["p"],"allow_missing_or_failed":true},
                     {"match":{"prefix":"/"},"requires_any":["p"]}]}"#,
    )
    .unwrap();
    let mut k = keys();
    let auth = format!("Bearer {}", mint(claims()));
    let (o, _) = run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
    let Outcome::Allow { identity, .. } = o else { panic!("{o:?}") };
    let got: Vec<(&str, String)> =
        identity.iter().map(|(k, v)| (k.as_str(), String::from_utf8(v.clone()).unwrap())).collect();
    assert_eq!(
        got,
        vec![
            ("meshwasm.jwt.principal", "https://iss/alice".to_string()),
            ("meshwasm.jwt.provider", "p".to_string()),
            ("meshwasm.jwt.claim.scope", r#""read admin""#.to_string()),
            ("meshwasm.jwt.claim.realm.groups", r#"["dev","ops"]"#.to_string()),
        ]
    );
    // An invalid token let through by allow_missing_or_failed hands on nothing.
    let (o, _) =
        run(&p, &mut k, &mut TokenCache::new(0, 0), "GET", "/opt", &[("authorization", "Bearer x.y.z")]);
    let Outcome::Allow { identity, .. } = o else { panic!("{o:?}") };
    assert!(identity.is_empty());
    // Bad claim names are refused at configure time, naming the field.
    let e = Plan::from_json(
        br#"{"providers":{"p":{"issuer":"https://iss","algorithms":["HS256"],"claims_to_filter_state":["ok","a..b"],
            "local_jwks":{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}}},
            "rules":[]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("claims_to_filter_state[1]"), "{e}");
}

#[test]
fn allow_missing_or_failed() {
    let p = plan(r#"[{"match":{"prefix":"/"},"requires_any":["p"],"allow_missing_or_failed":true}]"#);
    let mut k = keys();
    let none = Outcome::Allow {
        remove: vec![],
        set: vec![],
        path: None,
        strip_cookies: vec![],
        identity: vec![].into(),
    };
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
    let (o, _) = run(&p, &mut loading, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
    assert_eq!(o, Outcome::Wait { providers: vec![0], on: WaitFor::Keys });
    loading.loading = false;
    let (o, _) = run(&p, &mut loading, &mut TokenCache::new(0, 0), "GET", "/x", &[("authorization", &auth)]);
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
        let get = |n: &str| (n == "authorization").then(|| Cow::Borrowed(&b"Bearer opaque-123"[..]));
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
        assert!(matches!(o, Outcome::Deny { status: 503, reason: "introspection_unavailable", .. }), "{o:?}");
    }
}

// ---- Each step on its own ----

fn get_from<'a>(headers: &[(&str, &str)]) -> impl Fn(&str) -> Option<Cow<'a, [u8]>> + use<'a> {
    let map: HashMap<String, Vec<u8>> =
        headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    move |n: &str| map.get(n).cloned().map(Cow::Owned)
}

/// Two providers with their own headers, for the any/all combinations.
fn two_providers() -> Plan {
    let jwks = r#"{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;
    let cfg = format!(
        r#"{{"realm":"api","providers":{{
          "a":{{"algorithms":["HS256"],"local_jwks":{jwks},"from_headers":[{{"name":"x-a"}}]}},
          "b":{{"algorithms":["HS256"],"local_jwks":{jwks},"from_headers":[{{"name":"x-b"}}]}}}},
          "rules":[{{"match":{{"prefix":"/any"}},"requires_any":["a","b"]}},
                   {{"match":{{"prefix":"/all"}},"requires_all":["a","b"]}},
                   {{"match":{{"prefix":"/lenient"}},"requires_all":["a","b"],"allow_missing_or_failed":true}},
                   {{"match":{{"prefix":"/scoped"}},"requires_all":["a","b"],"scopes":["read","write"],
                     "claims":[{{"claim":"team","exact":"ops"}}]}}]}}"#
    );
    Plan::from_json(cfg.as_bytes()).unwrap()
}

fn verified(claims: serde_json::Value) -> Rc<Authenticated> {
    let serde_json::Value::Object(claims) = claims else { panic!("claims must be an object") };
    let verified = Verified { claims, exp: None, payload_b64: String::new() };
    Rc::new(Authenticated { verified, identity: Vec::new().into() })
}

fn rule_named<'p>(plan: &'p Plan, prefix: &str) -> &'p RulePlan {
    plan.rules.iter().find(|r| r.prefix.as_deref() == Some(prefix)).unwrap()
}

fn is_rule(found: Option<&RulePlan>, expected: &RulePlan) -> bool {
    found.is_some_and(|r| std::ptr::eq(r, expected))
}

#[test]
fn select_rule_matches_the_normalized_path_and_refuses_ambiguous_ones() {
    let p = default_plan();
    let none = get_from(&[]);
    let select = |method: &str, path: &str| select_rule(&p, &Request { method, path, header: &none });
    let admin = rule_named(&p, "/admin");
    for path in ["/admin", "/%61dmin", "//admin/x", "/public/../admin?q=1"] {
        assert!(is_rule(select("GET", path).unwrap(), admin), "{path}");
    }
    assert!(select("GET", "/public/x").unwrap().is_none(), "a rule without providers passes");
    for path in ["/a%2Fb", "/admin;x", "admin", "/a\\b"] {
        let o = select("GET", path).unwrap_err();
        assert!(
            matches!(o, Outcome::Deny { status: 400, reason: "bad_path", body: body::BAD_REQUEST, .. }),
            "{path}: {o:?}"
        );
    }
    let preflight = get_from(&[("origin", "o"), ("access-control-request-method", "GET")]);
    let req = Request { method: "OPTIONS", path: "/admin", header: &preflight };
    assert!(select_rule(&p, &req).unwrap().is_none(), "CORS preflight");
    // Not a preflight without both headers: the rule applies.
    let origin_only = get_from(&[("origin", "o")]);
    let req = Request { method: "OPTIONS", path: "/admin", header: &origin_only };
    assert!(is_rule(select_rule(&p, &req).unwrap(), admin));
}

#[test]
fn extract_credentials_finds_refuses_or_passes() {
    let p = default_plan();
    let t = mint(claims());
    let auth = format!("Bearer {t}");
    let extract = |path: &str, headers: &[(&str, &str)]| {
        let get = get_from(headers);
        let req = Request { method: "GET", path, header: &get };
        let rule = select_rule(&p, &req).unwrap().unwrap();
        extract_credentials(&p, rule, &req)
    };
    let c = extract("/x", &[("authorization", &auth)]).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].provider, c[0].token.as_str()), (0, t.as_str()));
    assert!(matches!(c[0].source, Source::Header { name, .. } if name == "authorization"));
    let c = extract(&format!("/x?access_token={t}"), &[]).unwrap();
    assert!(matches!(c[0].source, Source::Param(name) if name == "access_token"));
    // Two methods, a repeated carrier or a malformed credential: 401 invalid_request, also where a
    // missing token is allowed.
    for (path, headers) in [
        (format!("/opt?access_token={t}"), vec![("authorization", auth.as_str())]),
        ("/opt".to_string(), vec![("authorization", "Bearer a, Bearer b")]),
        ("/opt".to_string(), vec![("authorization", "Bearer a b")]),
    ] {
        let o = extract(&path, &headers).unwrap_err();
        let Outcome::Deny { status: 401, reason: "invalid_request", www_authenticate: Some(w), body, .. } = o
        else {
            panic!("{path} {headers:?}: {o:?}")
        };
        assert!(w.contains(r#"error="invalid_request""#), "{w}");
        assert_eq!(body, body::UNAUTHORIZED);
    }
    assert_eq!(extract("/opt", &[]).unwrap_err(), pass_unverified(), "allow_missing: no token passes");
    assert!(extract("/opt", &[("authorization", "Basic dTpw")]).is_err(), "another scheme is no token");
    let o = extract("/x", &[]).unwrap_err();
    assert!(matches!(o, Outcome::Deny { status: 401, reason: "missing", body: body::UNAUTHORIZED, .. }));
}

#[test]
fn authenticate_verifies_caches_waits_or_refuses() {
    let p = default_plan();
    let t = mint(claims());
    let source = Source::Header { name: "authorization".into(), prefix: None };
    let cred = |token: &str| Credential { provider: 0, token: token.to_string(), source: &source };
    let mut cache = TokenCache::new(10, 3600);
    let mut c = Counters::default();
    let mut k = keys();
    assert!(matches!(authenticate(&p, &cred(&t), &mut k, &mut cache, NOW, &mut c), Attempt::Ok(_)));
    assert!(matches!(authenticate(&p, &cred(&t), &mut k, &mut cache, NOW, &mut c), Attempt::Ok(_)));
    assert_eq!(c, Counters { cache_hits: 1, verifications: 1 });
    let a = authenticate(&p, &cred("opaque"), &mut k, &mut cache, NOW, &mut c);
    assert!(matches!(a, Attempt::Err(TokenError::Malformed)), "{a:?}");
    let mut loading = FakeKeys { set: None, loading: true, refetch_allowed: false, refetches: 0 };
    let mut none = TokenCache::new(0, 0);
    let a = authenticate(&p, &cred(&t), &mut loading, &mut none, NOW, &mut c);
    assert!(matches!(a, Attempt::Wait(WaitFor::Keys)), "{a:?}");
    loading.loading = false;
    let a = authenticate(&p, &cred(&t), &mut loading, &mut none, NOW, &mut c);
    assert!(matches!(a, Attempt::KeysUnavailable), "{a:?}");
    // An unknown kid waits for a refetch when one may start, else is refused.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rotated".into());
    let rotated = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
    k.refetch_allowed = true;
    let a = authenticate(&p, &cred(&rotated), &mut k, &mut none, NOW, &mut c);
    assert!(matches!(a, Attempt::Wait(WaitFor::Keys)), "{a:?}");
    k.refetch_allowed = false;
    let a = authenticate(&p, &cred(&rotated), &mut k, &mut none, NOW, &mut c);
    assert!(matches!(a, Attempt::Err(TokenError::UnknownKid)), "{a:?}");

    // An introspecting provider: opaque tokens wait for the call; oversized ones never cause one.
    let ip = Plan::from_json(
        br#"{"providers":{"o":{"max_token_bytes":64,"introspection":{"cluster":"idp","path":"/i",
             "authority":"idp","client_id":"rs","client_secret":"s"}}},
             "rules":[{"match":{"prefix":"/"},"requires_any":["o"]}]}"#,
    )
    .unwrap();
    let mut ik = IntroKeys { answer: None, asked: 0 };
    let a = authenticate(&ip, &cred("opaque"), &mut ik, &mut none, NOW, &mut c);
    assert!(matches!(a, Attempt::Wait(WaitFor::Introspection)), "{a:?}");
    let a = authenticate(&ip, &cred(&"x".repeat(65)), &mut ik, &mut none, NOW, &mut c);
    assert!(matches!(a, Attempt::Err(TokenError::TooLarge(64))), "{a:?}");
    assert_eq!(ik.asked, 1);
    ik.answer = Some(Err(IntrospectionError::Status(503)));
    let a = authenticate(&ip, &cred("opaque"), &mut ik, &mut none, NOW, &mut c);
    assert!(matches!(a, Attempt::IntroUnavailable(_)), "{a:?}");
}

#[test]
fn combine_requires_any_and_requires_all() {
    let p = two_providers();
    let (sa, sb) = (&p.providers[0].sources[0], &p.providers[1].sources[0]);
    let creds = [
        Credential { provider: 0, token: "ta".into(), source: sa },
        Credential { provider: 1, token: "tb".into(), source: sb },
    ];
    let ok = || Attempt::Ok(verified(serde_json::json!({"sub": "x"})));
    let expired = || Attempt::Err(TokenError::Expired);
    let intro_down = || Attempt::IntroUnavailable("endpoint answered HTTP 500".into());
    let status = |r: Step<Vec<Accepted<'_>>>| match r {
        Ok(a) => a.iter().map(|(pi, _, _)| *pi as u32).collect::<Vec<_>>(),
        Err(Outcome::Deny { status, reason, .. }) => vec![status, reason.len() as u32],
        Err(o) => panic!("{o:?}"),
    };
    let deny_reason = |r: Step<Vec<Accepted<'_>>>| match r {
        Err(Outcome::Deny { status, reason, body, .. }) => (status, reason, body),
        other => panic!("{:?}", other.map(|a| a.len())),
    };

    let any = rule_named(&p, "/any");
    assert_eq!(status(combine(&p, any, &creds, &[expired(), ok()])), vec![1], "the first accepted token");
    assert_eq!(status(combine(&p, any, &creds, &[ok(), ok()])), vec![0], "only one is used");
    assert_eq!(
        combine(&p, any, &creds, &[expired(), Attempt::Wait(WaitFor::Keys)]).unwrap_err(),
        Outcome::Wait { providers: vec![1], on: WaitFor::Keys },
        "a pending token is waited for before refusing"
    );
    assert_eq!(deny_reason(combine(&p, any, &creds, &[Attempt::KeysUnavailable, expired()])).0, 401);
    assert_eq!(
        deny_reason(combine(&p, any, &creds, &[intro_down(), Attempt::KeysUnavailable])),
        (503, "keys_unavailable", body::KEYS_UNAVAILABLE)
    );
    assert_eq!(
        deny_reason(combine(&p, any, &creds[..1], &[intro_down()])),
        (503, "introspection_unavailable", body::INTROSPECTION_UNAVAILABLE),
        "an introspection outage does not answer `signing keys unavailable`"
    );

    let all = rule_named(&p, "/all");
    assert_eq!(status(combine(&p, all, &creds, &[ok(), ok()])), vec![0, 1]);
    assert_eq!(
        deny_reason(combine(&p, all, &creds, &[Attempt::Wait(WaitFor::Keys), expired()])).0,
        401,
        "a refused token is refused at once, without waiting"
    );
    assert_eq!(
        combine(&p, all, &creds, &[Attempt::Wait(WaitFor::Keys), Attempt::Wait(WaitFor::Introspection)])
            .unwrap_err(),
        Outcome::Wait { providers: vec![0, 1], on: WaitFor::KeysAndIntrospection }
    );
    assert_eq!(deny_reason(combine(&p, all, &creds, &[ok(), Attempt::KeysUnavailable])).0, 503);
    let (status_missing, reason, _) = deny_reason(combine(&p, all, &creds[..1], &[ok()]));
    assert_eq!((status_missing, reason), (401, "missing"), "every provider needs a token");

    let lenient = rule_named(&p, "/lenient");
    assert_eq!(status(combine(&p, lenient, &creds, &[ok(), expired()])), vec![0], "what verified is used");
    assert_eq!(
        combine(&p, lenient, &creds, &[ok(), Attempt::Wait(WaitFor::Keys)]).unwrap_err(),
        Outcome::Wait { providers: vec![1], on: WaitFor::Keys },
        "keys loading are waited for rather than passing unverified"
    );
    let any_lenient_plan =
        plan(r#"[{"match":{"prefix":"/"},"requires_any":["p"],"allow_missing_or_failed":true}]"#);
    let r = &any_lenient_plan.rules[0];
    let s = &any_lenient_plan.providers[0].sources[0];
    let one = [Credential { provider: 0, token: "t".into(), source: s }];
    assert_eq!(combine(&any_lenient_plan, r, &one, &[expired()]).unwrap_err(), pass_unverified());
}

#[test]
fn authorize_needs_every_scope_and_each_claim() {
    let p = two_providers();
    let rule = rule_named(&p, "/scoped");
    let s = &p.providers[0].sources[0];
    let acc = |a: serde_json::Value, b: serde_json::Value| vec![(0, verified(a), s), (1, verified(b), s)];
    let both =
        acc(serde_json::json!({"scope": "read"}), serde_json::json!({"scp": ["write"], "team": "ops"}));
    assert_eq!(authorize(&p, rule, &both), Ok(()), "scopes may come from different tokens");
    let o =
        authorize(&p, rule, &acc(serde_json::json!({"scope": "read"}), serde_json::json!({"team": "ops"})))
            .unwrap_err();
    let Outcome::Deny { status: 403, reason: "scope", www_authenticate: Some(w), body, .. } = o else {
        panic!("{o:?}")
    };
    assert!(w.contains(r#"error="insufficient_scope""#) && w.contains(r#"scope="read write""#), "{w}");
    assert_eq!(body, body::FORBIDDEN);
    let o = authorize(
        &p,
        rule,
        &acc(serde_json::json!({"scope": "read write"}), serde_json::json!({"team": "dev"})),
    )
    .unwrap_err();
    assert!(matches!(o, Outcome::Deny { status: 403, reason: "claims", body: body::FORBIDDEN, .. }), "{o:?}");
    assert_eq!(authorize(&p, rule_named(&p, "/all"), &[]), Ok(()), "a rule without scopes or claims");
}

#[test]
fn timeouts_and_internal_errors_name_what_failed() {
    // The glue used to answer every timed-out wait with `signing keys unavailable`, also a wait for
    // an introspection answer.
    let o = wait_timeout(WaitFor::Introspection, 3000);
    assert_eq!(
        o,
        Outcome::Deny {
            status: 503,
            www_authenticate: None,
            retry_after: Some(1),
            reason: "keys_timeout",
            detail: "introspection answer not available within 3000 ms".into(),
            body: body::INTROSPECTION_UNAVAILABLE,
        }
    );
    let Outcome::Deny { status: 503, retry_after: Some(1), body, .. } = wait_timeout(WaitFor::Keys, 5) else {
        panic!()
    };
    assert_eq!(body, body::KEYS_UNAVAILABLE);
    let Outcome::Deny { body, .. } = wait_timeout(WaitFor::KeysAndIntrospection, 5) else { panic!() };
    assert_eq!(body, body::KEYS_OR_INTROSPECTION_UNAVAILABLE);
    let o = internal_error("worker state is busy");
    assert!(
        matches!(&o, Outcome::Deny { status: 503, reason: "internal", retry_after: None, body: body::SERVICE_UNAVAILABLE, detail, .. }
            if detail == "internal error: worker state is busy"),
        "{o:?}"
    );
}

#[test]
fn every_refusal_carries_its_own_body() {
    let p = default_plan();
    let mut k = keys();
    let mut none = TokenCache::new(0, 0);
    let body_of = |o: Outcome| match o {
        Outcome::Deny { body, .. } => body,
        o => panic!("{o:?}"),
    };
    let auth = format!("Bearer {}", mint(claims()));
    let (o, _) = run(&p, &mut k, &mut none, "GET", "/a%2Fb", &[]);
    assert_eq!(body_of(o), body::BAD_REQUEST);
    let (o, _) = run(&p, &mut k, &mut none, "GET", "/x", &[("authorization", "Bearer a.b.c")]);
    assert_eq!(body_of(o), body::UNAUTHORIZED);
    let mut c = claims();
    c["scope"] = "read".into();
    let (o, _) =
        run(&p, &mut k, &mut none, "GET", "/admin", &[("authorization", &format!("Bearer {}", mint(c)))]);
    assert_eq!(body_of(o), body::FORBIDDEN);
    let mut down = FakeKeys { set: None, loading: false, refetch_allowed: false, refetches: 0 };
    let (o, _) = run(&p, &mut down, &mut none, "GET", "/x", &[("authorization", &auth)]);
    assert_eq!(body_of(o), body::KEYS_UNAVAILABLE);
}

#[test]
fn a_providers_keys_come_from_its_remote_store_when_it_fetches() {
    let p = default_plan(); // inline keys and remote_jwks
    let inline = p.providers[0].static_keys.as_ref();
    assert!(inline.is_some());
    assert!(matches!(Keys::of(inline, None), Keys::Ready(_)));
    assert!(matches!(Keys::of(None, None), Keys::Unavailable));
    let plan = p.providers[0].remote.clone().unwrap();
    let remote = crate::keystore::RemoteKeys::new(plan, None, inline.cloned(), 1);
    assert!(
        matches!(Keys::of(inline, Some(&remote)), Keys::Loading),
        "a fetching provider waits for its first fetch, inline keys included"
    );
}
