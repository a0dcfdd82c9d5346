//! Unit tests of JWS validation: parsing, signatures, claims and the policy.

use super::*;
use jsonwebtoken::{EncodingKey, Header};

const NOW: u64 = 1_700_000_000;
/// 32 bytes: the least RFC 7518 §3.2 allows for HS256.
const SECRET: &[u8] = b"secret-secret-secret-secret-secr";

fn hs_keys() -> KeySet {
    crate::jwks::parse_jwks(
        br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I"}]}"#,
    )
    .unwrap()
}

fn hs_policy() -> Policy {
    Policy {
        algorithms: vec![Algorithm::HS256],
        issuer: Some("https://iss".into()),
        audiences: vec!["api".into()],
        ..Policy::default()
    }
}

fn mint(claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("h".into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn good() -> serde_json::Value {
    serde_json::json!({"iss": "https://iss", "aud": ["x", "api"], "sub": "svc-a", "exp": NOW + 100, "iat": NOW})
}

#[test]
fn accepts_a_good_token() {
    let v = validate(&hs_policy(), &hs_keys(), &mint(good()), NOW).unwrap();
    assert_eq!(v.exp, Some(NOW + 100));
    assert_eq!(v.claims["sub"], "svc-a");
}

#[test]
fn time_claims() {
    let p = hs_policy();
    let k = hs_keys();
    let mut c = good();
    c["exp"] = (NOW - 61).into();
    assert_eq!(validate(&p, &k, &mint(c.clone()), NOW).unwrap_err(), TokenError::Expired);
    c["exp"] = (NOW - 59).into(); // within the default 60 s skew
    assert!(validate(&p, &k, &mint(c.clone()), NOW).is_ok());
    c["exp"] = "1900000000".into();
    assert_eq!(validate(&p, &k, &mint(c.clone()), NOW).unwrap_err(), TokenError::BadTime("exp"));
    c["exp"] = serde_json::json!(1.9e19);
    assert_eq!(validate(&p, &k, &mint(c.clone()), NOW).unwrap_err(), TokenError::BadTime("exp"));
    c["exp"] = serde_json::json!(-5);
    assert_eq!(validate(&p, &k, &mint(c.clone()), NOW).unwrap_err(), TokenError::BadTime("exp"));
    let mut c = good();
    c["nbf"] = (NOW + 120).into();
    assert_eq!(validate(&p, &k, &mint(c.clone()), NOW).unwrap_err(), TokenError::NotYetValid);
    let mut c = good();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(validate(&p, &k, &mint(c), NOW).unwrap_err(), TokenError::MissingExp);
    let p2 = Policy { max_lifetime_s: Some(50), ..hs_policy() };
    assert_eq!(validate(&p2, &k, &mint(good()), NOW).unwrap_err(), TokenError::LifetimeTooLong);
}

#[test]
fn fractional_numeric_dates_round_toward_the_safe_side() {
    let p = Policy { clock_skew_s: 0, ..hs_policy() };
    let k = hs_keys();
    let with = |name: &str, v: serde_json::Value| {
        let mut c = good();
        c[name] = v;
        validate(&p, &k, &mint(c), NOW)
    };
    // RFC 7519 §2 allows non-integer NumericDates; Envoy's jwt_authn accepts them.
    let v = with("exp", serde_json::json!(NOW as f64 + 100.9)).unwrap();
    assert_eq!(v.exp, Some(NOW + 100), "exp rounds down");
    assert_eq!(with("exp", serde_json::json!(NOW as f64 + 0.5)).unwrap_err(), TokenError::Expired);
    assert!(with("nbf", serde_json::json!(NOW as f64 - 0.5)).is_ok());
    assert_eq!(
        with("nbf", serde_json::json!(NOW as f64 + 0.25)).unwrap_err(),
        TokenError::NotYetValid,
        "nbf rounds up"
    );
    assert_eq!(
        with("iat", serde_json::json!(NOW as f64 + 0.25)).unwrap_err(),
        TokenError::IssuedInFuture,
        "iat rounds up"
    );
    assert!(with("iat", serde_json::json!(NOW as f64 - 10.75)).is_ok());
    // Still refused: strings, negatives (also fractional), and values beyond 64 bits.
    for bad in [
        serde_json::json!("1700000100"),
        serde_json::json!(-0.5),
        serde_json::json!(-1),
        serde_json::json!(1.8446744073709552e19),
        serde_json::json!(1e300),
        serde_json::json!(null),
        serde_json::json!(true),
    ] {
        assert_eq!(with("exp", bad.clone()).unwrap_err(), TokenError::BadTime("exp"), "{bad}");
        assert_eq!(with("nbf", bad.clone()).unwrap_err(), TokenError::BadTime("nbf"), "{bad}");
        assert_eq!(with("iat", bad.clone()).unwrap_err(), TokenError::BadTime("iat"), "{bad}");
    }
    // serde_json has no NaN or infinity: they are not JSON at all.
    assert!(serde_json::from_str::<serde_json::Value>("NaN").is_err());
    let num = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
    assert_eq!(numeric_date_value(&num("18446744073709551615"), Round::Down), Some(u64::MAX));
    assert_eq!(numeric_date_value(&num("18446744073709551616"), Round::Down), None);
    assert_eq!(numeric_date_value(&num("0.1"), Round::Up), Some(1));
    assert_eq!(numeric_date_value(&num("0.1"), Round::Down), Some(0));
    assert_eq!(numeric_date_value(&num("-0.0"), Round::Up), Some(0));
}

#[test]
fn required_typ() {
    let k = hs_keys();
    let p = Policy { typ: Some("at+jwt".into()), ..hs_policy() };
    let mint_typ = |typ: Option<&str>| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("h".into());
        h.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&h, &good(), &EncodingKey::from_secret(SECRET)).unwrap()
    };
    for ok in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"] {
        assert!(validate(&p, &k, &mint_typ(Some(ok)), NOW).is_ok(), "{ok}");
    }
    for bad in [Some("JWT"), Some("jwt"), Some("application/jwt"), Some("at+jwt2"), None] {
        assert_eq!(validate(&p, &k, &mint_typ(bad), NOW).unwrap_err(), TokenError::TokenType, "{bad:?}");
    }
    // Without the requirement any typ (or none) is accepted.
    assert!(validate(&hs_policy(), &k, &mint_typ(Some("JWT")), NOW).is_ok());
    assert!(validate(&hs_policy(), &k, &mint_typ(None), NOW).is_ok());
    assert!(!typ_matches("at+jwt", Some("application/")));
}

#[test]
fn issuer_audience_subject_required() {
    let k = hs_keys();
    let mut c = good();
    c["iss"] = "https://evil".into();
    assert_eq!(validate(&hs_policy(), &k, &mint(c), NOW).unwrap_err(), TokenError::Issuer);
    let mut c = good();
    c["aud"] = "other".into();
    assert_eq!(validate(&hs_policy(), &k, &mint(c), NOW).unwrap_err(), TokenError::Audience);
    let p = Policy { required_claims: vec!["tenant".into()], ..hs_policy() };
    assert_eq!(validate(&p, &k, &mint(good()), NOW).unwrap_err(), TokenError::MissingClaim);
    let p = Policy { subject: Some(StringMatch::Prefix("spiffe://".into())), ..hs_policy() };
    assert_eq!(validate(&p, &k, &mint(good()), NOW).unwrap_err(), TokenError::Subject);
}

#[test]
fn structural_attacks() {
    let p = hs_policy();
    let k = hs_keys();
    let t = mint(good());
    let (hp, sig) = t.rsplit_once('.').unwrap();
    // alg none with an empty signature.
    let none_h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
    let payload = hp.split('.').nth(1).unwrap();
    assert_eq!(validate(&p, &k, &format!("{none_h}.{payload}."), NOW).unwrap_err(), TokenError::AlgNone);
    // crit.
    let crit_h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"h","crit":["exp"],"exp":1}"#);
    assert_eq!(validate(&p, &k, &format!("{crit_h}.{payload}.{sig}"), NOW).unwrap_err(), TokenError::Crit);
    // Tampered signature.
    let mut bad = sig.to_string();
    bad.replace_range(0..1, if bad.starts_with('A') { "B" } else { "A" });
    assert_eq!(validate(&p, &k, &format!("{hp}.{bad}"), NOW).unwrap_err(), TokenError::BadSignature);
    // Wrong number of parts, bad base64, size cap.
    assert_eq!(validate(&p, &k, "a.b", NOW).unwrap_err(), TokenError::Malformed);
    assert_eq!(validate(&p, &k, "a.b.c.d", NOW).unwrap_err(), TokenError::Malformed);
    assert_eq!(validate(&p, &k, &format!("{hp}.{sig}*"), NOW).unwrap_err(), TokenError::BadSignature);
    assert_eq!(validate(&p, &k, "@@@.e30.sig", NOW).unwrap_err(), TokenError::BadHeader);
    let small = Policy { max_token_bytes: 10, ..hs_policy() };
    assert_eq!(validate(&small, &k, &t, NOW).unwrap_err(), TokenError::TooLarge(10));
    // An algorithm the provider does not allow.
    let rs_only = Policy { algorithms: vec![Algorithm::RS256], ..hs_policy() };
    assert_eq!(validate(&rs_only, &k, &t, NOW).unwrap_err(), TokenError::AlgNotAllowed);
}

#[test]
fn embedded_jwk_is_never_trusted() {
    // A token signed with the attacker's secret that carries the attacker's key in `jwk`.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("h".into());
    h.jwk = None;
    let header_json = serde_json::json!({"alg":"HS256","kid":"h","jwk":{"kty":"oct","k":"YXR0YWNrZXI"}});
    let hb = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header_json).unwrap());
    let pb = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good()).unwrap());
    let input = format!("{hb}.{pb}");
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(b"attacker"),
        Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        validate(&hs_policy(), &hs_keys(), &format!("{input}.{sig}"), NOW).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn jwt_shape_and_issuer_peek() {
    let t = mint(good());
    assert!(looks_like_jwt(&t));
    assert!(!looks_like_jwt("opaque-token_123"));
    assert!(!looks_like_jwt("a.b.c.d"));
    assert_eq!(peek_issuer(&t).as_deref(), Some("https://iss"));
}
