//! Unit tests of the RFC 7662 exchange: configuration, request, answer parsing and decision.

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
        ("client_secret", Box::new(|c| c.client_secret = Some(Secret::new("")))),
        ("client_secret", Box::new(|c| c.client_secret = None)),
        ("client_secret", Box::new(|c| c.auth_method = AuthMethod::PrivateKeyJwt)),
        (
            "client_assertion",
            Box::new(|c| {
                c.auth_method = AuthMethod::PrivateKeyJwt;
                c.client_secret = None;
            }),
        ),
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

fn request(c: &IntrospectionConfig, token: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let mut auth = client_auth(c).unwrap();
    build_request(c, &mut auth, token, 1_000, &mut || Some("jti".into())).unwrap()
}

#[test]
fn request_basic_auth() {
    let (h, body) = request(&cfg(), "tok+en/=");
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
    c.client_secret = Some(Secret::new("s e&c=r"));
    c.token_type_hint = String::new();
    let (h, body) = request(&c, "abc");
    assert_eq!(header(&h, "authorization"), None);
    assert_eq!(String::from_utf8(body).unwrap(), "token=abc&client_id=rs&client_secret=s+e%26c%3Dr");
}

#[test]
fn parse_active_answer() {
    let body = br#"{"active":true,"client_id":"c1","exp":2000,"iat":1000,"scope":"read  write","aud":"api",
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
    assert!(matches!(decide(&c, &skew, active(br#"{"active":true,"exp":100}"#), 159), Outcome::Active(_)));
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
    let with = |extra: &str| decide(&c, &p, active(format!(r#"{{"active":true{extra}}}"#).as_bytes()), 100);
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
    let i =
        parse_response(200, br#"{"active":true,"exp":2000.9,"iat":1000.1,"nbf":999.5,"x":null}"#).unwrap();
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

#[test]
fn keys_and_log_ids_do_not_leak_tokens() {
    assert_ne!(token_key("a"), token_key("b"));
    assert_eq!(token_key("a"), token_key("a"));
    let id = token_log_id("secret-token");
    assert_eq!(id.len(), 8);
    assert!(!id.contains("secret"));
}
