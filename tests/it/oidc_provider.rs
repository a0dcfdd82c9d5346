//! The test OpenID Provider harness works: tokens by both client-authentication methods, JWTs that
//! verify against its JWKS (RS256 and ES256), introspection of opaque tokens, key rotation and
//! scripted failures.

use meshwasm_tests::oidc::{
    BASIC_CLIENT, ES256_RESOURCE, OPAQUE_RESOURCE, OidcOptions, OidcProvider, POST_CLIENT, RS256_RESOURCE,
    SPECIAL_CLIENT,
};

fn jwt_header(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let head = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap()
}

#[test]
fn provider_issues_verifiable_tokens_and_introspects() {
    let idp = OidcProvider::start(OidcOptions::default()).unwrap();

    // Discovery names our endpoints.
    let disc = meshwasm_tests::process::http_get(idp.addr(), "/.well-known/openid-configuration")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(disc["issuer"], idp.issuer());
    assert_eq!(disc["jwks_uri"], idp.jwks_uri());
    assert_eq!(disc["token_endpoint"], idp.token_endpoint());
    assert_eq!(disc["introspection_endpoint"], idp.introspection_endpoint());

    // JWKS holds an RS256 and an ES256 key, public parts only.
    let jwks = idp.jwks().unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert!(algs.contains(&"RS256") && algs.contains(&"ES256"), "{algs:?}");
    assert!(keys.iter().all(|k| k.get("d").is_none()), "private key material published");

    // client_secret_basic → RS256 JWT for the resource.
    let rs = idp.client_credentials(&BASIC_CLIENT, "read write", Some(RS256_RESOURCE)).unwrap();
    assert_eq!(jwt_header(&rs)["alg"], "RS256");
    let claims = idp.verify(&rs, RS256_RESOURCE).unwrap();
    assert_eq!(claims["client_id"], BASIC_CLIENT.id);
    assert_eq!(claims["scope"], "read write");
    assert!(idp.verify(&rs, ES256_RESOURCE).is_err(), "audience must be checked");

    // client_secret_post → ES256 JWT.
    let es = idp.client_credentials(&POST_CLIENT, "read", Some(ES256_RESOURCE)).unwrap();
    assert_eq!(jwt_header(&es)["alg"], "ES256");
    assert_eq!(idp.verify(&es, ES256_RESOURCE).unwrap()["client_id"], POST_CLIENT.id);

    // RFC 6749 §2.3.1: id and secret are form-urlencoded inside Basic credentials.
    idp.client_credentials(&SPECIAL_CLIENT, "", Some(RS256_RESOURCE)).unwrap();

    // A wrong secret is refused with the IdP's error.
    let mut bad = BASIC_CLIENT.clone();
    bad.secret = "wrong";
    let resp = idp.token_request(&bad, "read", None).unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json().unwrap()["error"], "invalid_client");

    // Opaque tokens: introspection says active with the scope, and inactive for garbage.
    let opaque = idp.client_credentials(&BASIC_CLIENT, "read admin", Some(OPAQUE_RESOURCE)).unwrap();
    assert_eq!(opaque.split('.').count(), 1, "opaque token expected");
    let intro = idp.introspect(&opaque).unwrap();
    assert_eq!(intro["active"], true, "{intro}");
    assert_eq!(intro["scope"], "read admin");
    assert_eq!(intro["client_id"], BASIC_CLIENT.id);
    assert!(intro["exp"].as_u64().is_some());
    assert_eq!(idp.introspect("not-a-token").unwrap()["active"], false);
    assert!(idp.introspection_request_count().unwrap() >= 2);

    // Revocation (RFC 7009) makes it inactive.
    idp.revoke(&BASIC_CLIENT, &opaque).unwrap();
    assert_eq!(idp.introspect(&opaque).unwrap()["active"], false);

    // Scripted introspection outage and delay.
    idp.fail_introspection_requests(503, 1).unwrap();
    assert!(idp.introspect("x").unwrap_err().to_string().contains("503"));
    assert_eq!(idp.introspect("x").unwrap()["active"], false);
    idp.delay_introspection_requests(std::time::Duration::from_millis(300)).unwrap();
    let t0 = std::time::Instant::now();
    idp.introspect("x").unwrap();
    assert!(t0.elapsed() >= std::time::Duration::from_millis(300));
    idp.delay_introspection_requests(std::time::Duration::ZERO).unwrap();
}

#[test]
fn provider_rotates_keys_and_scripts_failures() {
    let idp = OidcProvider::start(OidcOptions::default().token_ttl(120)).unwrap();
    let (rs_kid, es_kid) = idp.current_kids().unwrap();
    let before = idp.client_credentials(&BASIC_CLIENT, "", Some(RS256_RESOURCE)).unwrap();
    assert_eq!(jwt_header(&before)["kid"], rs_kid.as_str());

    let kids = idp.rotate_keys().unwrap();
    let (rs_new, es_new) = idp.current_kids().unwrap();
    assert_ne!(rs_new, rs_kid);
    assert_ne!(es_new, es_kid);
    assert_eq!(kids.len(), 4, "{kids:?}");
    let after = idp.client_credentials(&BASIC_CLIENT, "", Some(RS256_RESOURCE)).unwrap();
    assert_eq!(jwt_header(&after)["kid"], rs_new.as_str());
    // Both verify while the old key is still published.
    idp.verify(&before, RS256_RESOURCE).unwrap();
    idp.verify(&after, RS256_RESOURCE).unwrap();
    let es = idp.client_credentials(&BASIC_CLIENT, "", Some(ES256_RESOURCE)).unwrap();
    assert_eq!(jwt_header(&es)["kid"], es_new.as_str());

    // Retiring drops the old key: the old token no longer verifies.
    assert_eq!(idp.retire_old_keys().unwrap().len(), 2);
    assert!(idp.verify(&before, RS256_RESOURCE).is_err());
    idp.verify(&after, RS256_RESOURCE).unwrap();

    // Scripted outage: exactly the next two token requests fail with 503.
    let before_count = idp.token_request_count().unwrap();
    idp.fail_token_requests(503, 2).unwrap();
    for _ in 0..2 {
        let r = idp.token_request(&BASIC_CLIENT, "", None).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.json().unwrap()["error"], "temporarily_unavailable");
    }
    let ok = idp.token_response(&BASIC_CLIENT, "", None).unwrap();
    assert_eq!(ok.expires_in, 120);
    assert_eq!(idp.token_request_count().unwrap(), before_count + 3);
}
