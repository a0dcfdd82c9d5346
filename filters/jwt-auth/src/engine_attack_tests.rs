//! The engine under attack: path spellings that route to a protected path upstream, and credentials
//! that are malformed, repeated or sent by more than one method (issue 8, defects 1, 6 and 7).

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;

const NOW: u64 = 1_700_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;

struct StaticKeys(KeySet);

impl KeyAccess for StaticKeys {
    fn keys(&self, _p: usize) -> Keys<'_> {
        Keys::Ready(&self.0)
    }
    fn unknown_kid(&mut self, _p: usize) -> bool {
        false
    }
}

fn plan() -> Plan {
    let cfg = format!(
        r#"{{"realm":"api","providers":{{
          "p":{{"issuer":"https://iss","audiences":["api"],"algorithms":["HS256"],"local_jwks":{JWKS},
               "from_headers":[{{"name":"authorization","value_prefix":"Bearer "}},{{"name":"x-token"}}],
               "from_params":["access_token"],"from_cookies":["at"]}}}},
          "rules":[{{"match":{{"prefix":"/public"}}}},
                   {{"match":{{"path":"/exact-admin"}},"requires_any":["p"],"scopes":["admin"]}},
                   {{"match":{{"prefix":"/admin"}},"requires_any":["p"],"scopes":["admin"]}},
                   {{"match":{{"prefix":"/opt"}},"requires_any":["p"],"allow_missing":true}},
                   {{"match":{{"prefix":"/"}},"requires_any":["p"]}}]}}"#
    );
    Plan::from_json(cfg.as_bytes()).unwrap()
}

fn token(scope: &str) -> String {
    let claims =
        serde_json::json!({"iss":"https://iss","aud":"api","sub":"alice","exp":NOW+300,"scope":scope});
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("h".into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

/// Headers as the glue passes them: repeated names joined with `,` (`; ` for cookie).
fn run(path: &str, headers: &[(&str, &str)]) -> Outcome {
    let mut map: HashMap<String, Vec<u8>> = HashMap::new();
    for (k, v) in headers {
        let sep: &[u8] = if *k == "cookie" { b"; " } else { b"," };
        map.entry(k.to_string())
            .and_modify(|e| {
                e.extend_from_slice(sep);
                e.extend_from_slice(v.as_bytes());
            })
            .or_insert_with(|| v.as_bytes().to_vec());
    }
    let get = |n: &str| map.get(n).map(|v| Cow::Borrowed(v.as_slice()));
    let req = Request { method: "GET", path, header: &get };
    let mut keys = StaticKeys(crate::jwks::parse_jwks(JWKS.as_bytes()).unwrap());
    evaluate(&plan(), &req, &mut keys, &mut TokenCache::new(0, 0), NOW, &mut Counters::default())
}

fn status(o: &Outcome) -> u32 {
    match o {
        Outcome::Deny { status, .. } => *status,
        Outcome::Pass | Outcome::Allow { .. } => 200,
        Outcome::Wait { .. } => 0,
    }
}

#[test]
fn admin_prefix_holds_for_every_spelling_of_admin() {
    let reader = format!("Bearer {}", token("read"));
    let admin = format!("Bearer {}", token("admin"));
    for p in [
        "/admin",
        "/%61dmin",
        "//admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/./admin/x",
        "/admin?x",
    ] {
        let o = run(p, &[("authorization", &reader)]);
        assert!(matches!(o, Outcome::Deny { status: 403, reason: "scope", .. }), "{p}: {o:?}");
        let o = run(p, &[]);
        assert!(
            matches!(o, Outcome::Deny { status: 401, reason: "missing", .. }),
            "{p} without a token: {o:?}"
        );
        assert!(
            matches!(run(p, &[("authorization", &admin)]), Outcome::Allow { .. }),
            "{p} with admin scope"
        );
    }
    // Exact rules: `/exact-admin/.` and `/exact-admin/` are the same resource upstream.
    for p in ["/exact-admin", "/exact-admin/", "/exact-admin/.", "/%65xact-admin", "//exact-admin"] {
        let o = run(p, &[("authorization", &reader)]);
        assert!(matches!(o, Outcome::Deny { status: 403, .. }), "{p}: {o:?}");
    }
}

#[test]
fn ambiguous_paths_get_400_and_are_never_forwarded() {
    let admin = format!("Bearer {}", token("admin"));
    for p in [
        "/%2Fadmin",
        "/public\\..\\admin",
        "/public%5C..%5Cadmin",
        "/admin;x",
        "/exact-admin;x",
        "/a%zz",
        "admin",
    ] {
        for h in [vec![], vec![("authorization", admin.as_str())]] {
            let o = run(p, &h);
            assert!(matches!(o, Outcome::Deny { status: 400, reason: "bad_path", .. }), "{p}: {o:?}");
        }
    }
    // An open rule still only sees normalized paths: `/public/x` passes, `/public/../admin` does not.
    assert_eq!(run("/public/x", &[]), Outcome::Pass);
    assert_eq!(status(&run("/public/../admin", &[])), 401);
}

#[test]
fn malformed_credentials_are_invalid_even_where_missing_is_allowed() {
    let t = token("read");
    assert!(matches!(run("/opt", &[]), Outcome::Allow { .. }), "missing is allowed on /opt");
    for v in [
        format!("Bearer\t{t}"),
        format!("Bearer {t} extra"),
        format!("bearer {t}x,y"),
        format!("Bearer{t}"),
        "Bearer".to_string(),
        "Bearer ".to_string(),
    ] {
        let o = run("/opt", &[("authorization", &v)]);
        let Outcome::Deny { status: 401, reason: "invalid_request", www_authenticate: Some(w), .. } = &o
        else {
            panic!("{v:?}: {o:?}")
        };
        assert!(w.contains(r#"error="invalid_request""#), "{w}");
    }
    // A single token with odd characters is a token that fails verification: `invalid_token`.
    let o = run("/opt", &[("authorization", &format!("Bearer *{t}"))]);
    assert!(matches!(o, Outcome::Deny { status: 401, reason: "malformed", .. }), "{o:?}");
    // RFC 6750 allows 1*SP and any case for the scheme: these verify (and are not "missing").
    for v in [format!("bearer   {t}"), format!("BEARER {t}")] {
        assert!(matches!(run("/x", &[("authorization", &v)]), Outcome::Allow { .. }), "{v}");
    }
    // Another scheme is not ours: missing (allowed on /opt, 401 missing elsewhere).
    assert!(matches!(run("/opt", &[("authorization", "Basic dTpw")]), Outcome::Allow { .. }));
    assert!(matches!(run("/x", &[("authorization", "Basic dTpw")]), Outcome::Deny { reason: "missing", .. }));
    // Malformed query and cookie carriers.
    assert_eq!(status(&run("/opt?access_token=a%20b", &[])), 401);
    assert_eq!(status(&run("/opt?access_token", &[])), 401);
    assert_eq!(status(&run("/opt", &[("cookie", "at=a,b")])), 401);
    assert_eq!(status(&run("/opt", &[("x-token", "a b")])), 401);
}

#[test]
fn repeated_carriers_and_several_methods_are_refused() {
    let good = token("read");
    let other = token("admin");
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        (
            "/x".into(),
            vec![("authorization", format!("Bearer {good}")), ("authorization", format!("Bearer {other}"))],
        ),
        (
            "/x".into(),
            vec![("authorization", format!("Bearer {good}")), ("authorization", "Basic dTpw".into())],
        ),
        (
            "/x".into(),
            vec![("authorization", "Basic dTpw".into()), ("authorization", format!("Bearer {good}"))],
        ),
        (format!("/x?access_token={good}&access_token={other}"), vec![]),
        (format!("/x?access_token={good}&%61ccess_token={other}"), vec![]),
        ("/x".into(), vec![("cookie", format!("at={good}; at={other}"))]),
        ("/x".into(), vec![("cookie", format!("at={good}")), ("cookie", format!("a=1; at={other}"))]),
        ("/x".into(), vec![("x-token", good.clone()), ("x-token", other.clone())]),
        // One provider, two methods (RFC 6750 §2: clients MUST NOT): the second copy would reach the
        // upstream unverified.
        (format!("/x?access_token={other}"), vec![("authorization", format!("Bearer {good}"))]),
        (format!("/x?access_token={good}"), vec![("authorization", format!("Bearer {good}"))]),
        ("/opt".into(), vec![("authorization", format!("Bearer {good}")), ("cookie", format!("at={other}"))]),
    ];
    for (path, headers) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = run(path, &h);
        assert!(
            matches!(o, Outcome::Deny { status: 401, reason: "invalid_request", .. }),
            "{path} {h:?}: {o:?}"
        );
    }
    // One copy of each is fine.
    assert!(matches!(run("/x", &[("authorization", &format!("Bearer {good}"))]), Outcome::Allow { .. }));
    assert!(matches!(run("/x", &[("cookie", &format!("a=1; at={good}; b=2"))]), Outcome::Allow { .. }));
}
