//! jwt-auth in real Envoy, with Envoy's native jwt_authn as the oracle: one Envoy, two listeners (native
//! jwt_authn and our filter) configured alike, the same corpus of tokens, the same allow/deny verdict.
//! Also: remote JWKS from a real HTTP server through an Envoy cluster (first request paused until keys
//! arrive), claim headers and token stripping as the backend sees them, and the filter's metrics.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use meshwasm_tests::backend::{Backend, EchoedRequest};
use meshwasm_tests::envoy::{Cluster, EnvoyConfig, HttpFilter, Listener, WasmFilter};
use meshwasm_tests::signer::{Signer, now};
use meshwasm_tests::{artifacts, process};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test";

fn good_claims() -> Value {
    json!({"iss": ISS, "aud": "api", "sub": "alice", "exp": now() + 3600, "iat": now(), "groups": ["a", "b"]})
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Replaces the payload of a signed token (signature no longer matches).
fn with_payload(token: &str, claims: &Value) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let p = b64(claims);
    parts[1] = &p;
    parts.join(".")
}

/// The corpus: (name, token or None for no token, expected to be allowed).
fn corpus(
    rsa: &Signer,
    ec: &Signer,
    no_kid: &Signer,
    stranger: &Signer,
) -> Vec<(&'static str, Option<String>, bool)> {
    let valid = rsa.mint(&good_claims());
    let mut c = Vec::new();
    c.push(("valid RS256", Some(valid.clone()), true));
    c.push(("valid ES256", Some(ec.mint(&good_claims())), true));
    c.push(("valid without kid", Some(no_kid.mint(&good_claims())), true));
    let mut x = good_claims();
    x["aud"] = json!(["other", "api"]);
    c.push(("audience in a list", Some(rsa.mint(&x)), true));
    let mut x = good_claims();
    x["exp"] = json!(now() - 3600);
    c.push(("expired", Some(rsa.mint(&x)), false));
    let mut x = good_claims();
    x["nbf"] = json!(now() + 3600);
    c.push(("not yet valid", Some(rsa.mint(&x)), false));
    let mut x = good_claims();
    x["aud"] = json!("someone-else");
    c.push(("wrong audience", Some(rsa.mint(&x)), false));
    let mut x = good_claims();
    x["iss"] = json!("https://evil.test");
    c.push(("wrong issuer", Some(rsa.mint(&x)), false));
    let mut x = good_claims();
    x.as_object_mut().unwrap().remove("exp");
    c.push(("no exp (required)", Some(rsa.mint(&x)), false));
    let mut x = good_claims();
    x["exp"] = json!((now() + 3600).to_string());
    c.push(("exp as a string", Some(rsa.mint(&x)), false));
    c.push(("unknown kid", Some(stranger.mint(&good_claims())), false));
    let mut sig_bad = valid.clone();
    let last = sig_bad.pop().unwrap();
    sig_bad.push(if last == 'A' { 'Q' } else { 'A' });
    c.push(("tampered signature", Some(sig_bad), false));
    let mut x = good_claims();
    x["sub"] = json!("admin");
    c.push(("tampered payload", Some(with_payload(&valid, &x)), false));
    c.push((
        "alg none",
        Some(format!("{}.{}.", b64(&json!({"alg": "none", "kid": "r1"})), b64(&good_claims()))),
        false,
    ));
    // HS/RS confusion: HS256 with the RSA public key (as JWK `n`, and as the JWKS text) as the secret.
    for (name, secret) in [
        ("HS256 keyed with the RSA modulus", rsa.jwk()["n"].as_str().unwrap().as_bytes().to_vec()),
        ("HS256 keyed with the JWK text", rsa.jwk().to_string().into_bytes()),
    ] {
        let t = Signer::hs256(&secret, Some("r1")).mint(&good_claims());
        c.push((name, Some(t), false));
    }
    c.push(("bad base64 header", Some(format!("*{}", &valid[1..])), false));
    c.push(("two parts", Some(valid.rsplit_once('.').unwrap().0.to_string()), false));
    c.push(("garbage", Some("not-a-jwt".into()), false));
    let mut x = good_claims();
    x["blob"] = json!("x".repeat(12_000));
    let huge = rsa.mint(&x);
    c.push(("huge valid (12 KB claim)", Some(huge.clone()), true));
    c.push(("huge tampered", Some(with_payload(&huge, &good_claims())), false));
    c.push(("no token", None, false));
    c
}

fn native_filter(jwks: &str) -> String {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {
                "issuer": ISS,
                "audiences": ["api"],
                "require_expiration": true,
                "local_jwks": {"inline_string": jwks},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
        }
    })
    .to_string()
}

fn wasm_filter(provider_keys: Value) -> WasmFilter {
    let mut provider = json!({
        "issuer": ISS,
        "audiences": ["api"],
        "max_token_bytes": 32768,
        "claim_to_headers": [{"header": "x-sub", "claim": "sub"}, {"header": "x-groups", "claim": "groups"}],
    });
    for (k, v) in provider_keys.as_object().unwrap() {
        provider[k] = v.clone();
    }
    let cfg = json!({
        "realm": "api",
        "providers": {"idp": provider},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    WasmFilter::new("jwt-auth", artifacts::wasm_path("meshwasm_jwt_auth")).config(cfg.to_string())
}

fn get(addr: std::net::SocketAddr, token: Option<&str>) -> process::HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("x-sub", "mallory")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    process::http_request(addr, "GET", "/resource", &headers, b"", Duration::from_secs(10)).unwrap()
}

#[test]
fn same_verdicts_as_native_jwt_authn() {
    let rsa = Signer::new("rsa1.pem", Algorithm::RS256, Some("r1"));
    let ec = Signer::new("ec1.pem", Algorithm::ES256, Some("e1"));
    let no_kid = Signer::new("rsa2.pem", Algorithm::RS256, None);
    let stranger = Signer::new("rsa3.pem", Algorithm::RS256, Some("zz"));
    let jwks = json!({"keys": [rsa.jwk(), ec.jwk(), no_kid.jwk()]});
    let backend = Backend::start("b").unwrap();
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::new("native", "backend").filter(HttpFilter::Raw(native_filter(&jwks.to_string()))),
        )
        .listener(Listener::new("wasm", "backend").wasm(wasm_filter(json!({"local_jwks": jwks}))))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap();
    // In Envoy, RSA and ECDSA signatures go through its verify_signature foreign function (BoringSSL)
    // once the filter's self-test passed; the corpus below is then judged through that path.
    assert!(
        envoy.wait_for_log(
            "RSA/ECDSA verification: host verify_signature foreign function",
            Duration::from_secs(5)
        ),
        "the filter did not enable Envoy's verify_signature"
    );
    let mut mismatches = Vec::new();
    let corpus = corpus(&rsa, &ec, &no_kid, &stranger);
    for (name, token, expect_allow) in &corpus {
        let native = get(envoy.listener_addr("native"), token.as_deref());
        let ours = get(envoy.listener_addr("wasm"), token.as_deref());
        let (n_ok, o_ok) = (native.status == 200, ours.status == 200);
        if n_ok != o_ok || o_ok != *expect_allow {
            mismatches.push(format!(
                "{name}: native {} ours {} expected allow={expect_allow}",
                native.status, ours.status
            ));
        }
        // Never a 5xx for a client's token.
        assert!(ours.status < 500, "{name}: {}", ours.status);
        if !o_ok {
            let w = ours.header("www-authenticate").unwrap_or_default().to_string();
            if token.is_none() {
                assert_eq!(w, r#"Bearer realm="api""#, "{name}");
            } else {
                assert!(w.starts_with(r#"Bearer realm="api", error="invalid_token""#), "{name}: {w}");
            }
        } else {
            let echo: EchoedRequest = serde_json::from_slice(ours.body.as_slice()).unwrap();
            assert_eq!(echo.header_all("x-sub"), vec!["alice"], "{name}");
            assert_eq!(echo.header("authorization"), None, "{name}: token stripped");
        }
    }
    assert!(mismatches.is_empty(), "verdicts differ:\n{}", mismatches.join("\n"));
    assert!(corpus.len() >= 20);
    let stats = envoy.stats().unwrap();
    let allowed: u64 =
        stats.iter().filter(|(k, _)| k.ends_with("meshwasm_jwt_auth.allowed")).map(|(_, v)| *v).sum();
    assert_eq!(allowed, corpus.iter().filter(|c| c.2).count() as u64, "{stats:?}");
}

#[test]
fn remote_jwks_through_an_envoy_cluster() {
    let rsa = Signer::new("rsa1.pem", Algorithm::RS256, Some("r1"));
    let idp = Backend::start("idp").unwrap();
    idp.set_body(Some(json!({"keys": [rsa.jwk()]}).to_string().as_bytes()));
    let backend = Backend::start("b").unwrap();
    let wasm = wasm_filter(json!({"remote_jwks": {"cluster": "idp", "uri": "http://idp.test/jwks"}}));
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(Listener::new("wasm", "backend").wasm(wasm))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start()
        .unwrap();
    // The very first request may arrive before the keys: it waits and is then allowed.
    let tok = rsa.mint(&good_claims());
    let resp = get(envoy.listener_addr("wasm"), Some(&tok));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo: EchoedRequest = serde_json::from_slice(resp.body.as_slice()).unwrap();
    assert_eq!(echo.header("x-groups"), Some("a,b"));
    for _ in 0..10 {
        assert_eq!(get(envoy.listener_addr("wasm"), Some(&tok)).status, 200);
    }
    let mut bad = good_claims();
    bad["aud"] = json!("x");
    assert_eq!(get(envoy.listener_addr("wasm"), Some(&rsa.mint(&bad))).status, 401);
    // Two workers, one fetch for the proxy.
    let jwks_requests = idp.requests().iter().filter(|r| r.path == "/jwks").count();
    assert_eq!(jwks_requests, 1, "{:?}", idp.requests());
    assert_eq!(idp.requests()[0].header("host").or(idp.requests()[0].header(":authority")), Some("idp.test"));
}

/// Against a real OpenID Provider (npm oidc-provider): keys found by OIDC discovery from the issuer
/// alone, RS256 and ES256 client-credentials access tokens, scopes, and key rotation picked up through
/// the unknown-kid refetch.
#[test]
fn real_openid_provider_discovery_scopes_and_rotation() {
    use meshwasm_tests::oidc::{BASIC_CLIENT, ES256_RESOURCE, OidcOptions, OidcProvider, RS256_RESOURCE};
    let idp = OidcProvider::start(OidcOptions::default()).unwrap();
    let backend = Backend::start("b").unwrap();
    let cfg = json!({
        "realm": "api",
        "providers": {"idp": {
            "issuer": idp.issuer(),
            "audiences": [RS256_RESOURCE, ES256_RESOURCE],
            "algorithms": ["RS256", "ES256"],
            "remote_jwks": {"cluster": "idp", "unknown_kid_refetch_interval_s": 1},
            "claim_to_headers": [{"header": "x-client", "claim": "client_id"}],
        }},
        "rules": [
            {"match": {"prefix": "/write"}, "requires_any": ["idp"], "scopes": ["write"]},
            {"match": {"prefix": "/"}, "requires_any": ["idp"], "scopes": ["read"]}
        ],
    });
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(Listener::new("wasm", "backend").wasm(
            WasmFilter::new("jwt-auth", artifacts::wasm_path("meshwasm_jwt_auth")).config(cfg.to_string()),
        ))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("wasm");
    let call = |path: &str, token: &str| {
        let auth = format!("Bearer {token}");
        process::http_request(addr, "GET", path, &[("authorization", &auth)], b"", Duration::from_secs(10))
            .unwrap()
    };
    for resource in [RS256_RESOURCE, ES256_RESOURCE] {
        let tok = idp.client_credentials(&BASIC_CLIENT, "read", Some(resource)).unwrap();
        let resp = call("/orders", &tok);
        assert_eq!(resp.status, 200, "{resource}: {}", resp.text());
        let echo: EchoedRequest = serde_json::from_slice(resp.body.as_slice()).unwrap();
        assert_eq!(echo.header("x-client"), Some("meshwasm-basic"));
        let resp = call("/write", &tok);
        assert_eq!(resp.status, 403, "{resource}");
        assert!(resp.header("www-authenticate").unwrap_or_default().contains("insufficient_scope"));
    }
    // Rotation: tokens signed with the new keys carry kids the filter has not seen yet.
    std::thread::sleep(Duration::from_millis(1200));
    let kids = idp.rotate_keys().unwrap();
    assert!(kids.len() >= 4, "{kids:?}");
    for resource in [RS256_RESOURCE, ES256_RESOURCE] {
        let tok = idp.client_credentials(&BASIC_CLIENT, "read", Some(resource)).unwrap();
        let resp = call("/orders", &tok);
        assert_eq!(resp.status, 200, "after rotation, {resource}: {}", resp.text());
        std::thread::sleep(Duration::from_millis(1100));
    }
    let stats = envoy.stats().unwrap();
    let fetches: u64 =
        stats.iter().filter(|(k, _)| k.ends_with("meshwasm_jwt_auth.jwks_fetches")).map(|(_, v)| *v).sum();
    // Discovery + JWKS at start, then at most one refetch (JWKS) per rotated token.
    assert!((2..=4).contains(&fetches), "fetches {fetches}: {stats:?}");
}

/// Opaque tokens from the real OpenID Provider, checked by RFC 7662 introspection through an Envoy
/// cluster: active → allowed with claims, revoked → 401, endpoint down → 503 (fail closed), and a JWT for
/// the same provider still verified locally.
#[test]
fn real_openid_provider_introspection_of_opaque_tokens() {
    use meshwasm_tests::oidc::{
        BASIC_CLIENT, INTROSPECTION_CLIENT, OPAQUE_RESOURCE, OidcOptions, OidcProvider, RS256_RESOURCE,
    };
    let idp = OidcProvider::start(OidcOptions::default()).unwrap();
    let backend = Backend::start("b").unwrap();
    let authority = idp.addr().to_string();
    let cfg = json!({
        "providers": {"idp": {
            "issuer": idp.issuer(),
            // Introspection answers are checked against the audiences too (issue 8).
            "audiences": [RS256_RESOURCE, OPAQUE_RESOURCE],
            "remote_jwks": {"cluster": "idp"},
            "introspection": {
                "cluster": "idp", "path": "/token/introspection", "authority": authority,
                "client_id": INTROSPECTION_CLIENT.id, "client_secret": INTROSPECTION_CLIENT.secret,
                "inactive_ttl_s": 0, "max_active_ttl_s": 1
            },
            "claim_to_headers": [{"header": "x-client", "claim": "client_id"}],
        }},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"], "scopes": ["read"]}],
    });
    let envoy = EnvoyConfig::new()
        .listener(Listener::new("wasm", "backend").wasm(
            WasmFilter::new("jwt-auth", artifacts::wasm_path("meshwasm_jwt_auth")).config(cfg.to_string()),
        ))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("wasm");
    let call = |token: &str| {
        let auth = format!("Bearer {token}");
        process::http_request(addr, "GET", "/x", &[("authorization", &auth)], b"", Duration::from_secs(10))
            .unwrap()
    };
    let opaque = idp.client_credentials(&BASIC_CLIENT, "read", Some(OPAQUE_RESOURCE)).unwrap();
    assert_eq!(opaque.split('.').count(), 1, "an opaque token");
    let resp = call(&opaque);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo: EchoedRequest = serde_json::from_slice(resp.body.as_slice()).unwrap();
    assert_eq!(echo.header("x-client"), Some("meshwasm-basic"));
    let jwt = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE)).unwrap();
    assert_eq!(call(&jwt).status, 200, "JWTs are still verified locally");
    assert_eq!(call("made-up-opaque-token").status, 401);
    idp.revoke(&BASIC_CLIENT, &opaque).unwrap();
    std::thread::sleep(Duration::from_millis(2100)); // past max_active_ttl_s and the 1 s answer memory
    let resp = call(&opaque);
    assert_eq!(resp.status, 401, "revoked");
    assert!(resp.header("www-authenticate").unwrap_or_default().contains("invalid_token"));
    // The endpoint fails: fail closed with 503.
    idp.fail_introspection_requests(500, -1).unwrap();
    let fresh = idp.client_credentials(&BASIC_CLIENT, "read", Some(OPAQUE_RESOURCE)).unwrap();
    assert_eq!(call(&fresh).status, 503);
    idp.fail_introspection_requests(500, 0).unwrap();
}
