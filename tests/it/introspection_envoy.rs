//! RFC 7662 introspection in jwt-auth, in real Envoy against the real OpenID Provider (npm
//! oidc-provider): the filter's requests are accepted by a real introspection endpoint with
//! `client_secret_basic` (including RFC 6749 §2.3.1-encoded credentials) and `client_secret_post`;
//! answers are cached (one introspection per token, inactive ones too); a failing endpoint fails
//! closed with 503 or open when configured, and a slow one fails closed at the timeout.

use std::time::Duration;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::oidc::{
    BASIC_CLIENT, Client, INTROSPECTION_CLIENT, OPAQUE_RESOURCE, OidcOptions, OidcProvider, POST_CLIENT,
    SPECIAL_CLIENT,
};
use meshwasm_tests::process::{HttpResponse, http_request};
use serde_json::{Value, json};

fn filter_config(idp: &OidcProvider, client: &Client, extra: Value) -> String {
    filter_config_with(idp, client, extra, json!({}))
}

/// `extra` goes into the `introspection` object, `provider` into the provider.
fn filter_config_with(idp: &OidcProvider, client: &Client, extra: Value, provider: Value) -> String {
    let mut introspection = json!({
        "cluster": "idp",
        "path": "/token/introspection",
        "authority": idp.addr().to_string(),
        "client_id": client.id,
        "client_secret": client.secret,
        "timeout_ms": 1000,
        "inactive_ttl_s": 30,
        "max_active_ttl_s": 300,
    });
    for (k, v) in extra.as_object().unwrap() {
        introspection[k] = v.clone();
    }
    let mut p = json!({"issuer": idp.issuer(), "introspection": introspection});
    for (k, v) in provider.as_object().unwrap() {
        p[k] = v.clone();
    }
    json!({
        "providers": {"idp": p},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    })
    .to_string()
}

fn listener(name: &str, config: String) -> Listener {
    Listener::new(name, "api").wasm(
        WasmFilter::new(&format!("jwt-{name}"), wasm_path("meshwasm_jwt_auth")).vm_id("jwt").config(config),
    )
}

fn get(envoy: &Envoy, listener: &str, token: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    http_request(
        envoy.listener_addr(listener),
        "GET",
        "/orders",
        &[("host", "api.internal"), ("authorization", &auth)],
        b"",
        Duration::from_secs(10),
    )
    .unwrap()
}

struct Setup {
    idp: OidcProvider,
    backend: Backend,
    envoy: Envoy,
}

fn setup() -> Setup {
    let idp = OidcProvider::start(OidcOptions::default()).unwrap();
    let backend = Backend::start("api").unwrap();
    let envoy = EnvoyConfig::new()
        .concurrency(1)
        .listener(listener("closed", filter_config(&idp, &INTROSPECTION_CLIENT, json!({}))))
        .listener(listener("open", filter_config(&idp, &INTROSPECTION_CLIENT, json!({"fail_open": true}))))
        .listener(listener("post", filter_config(&idp, &POST_CLIENT, json!({"auth_method": "post"}))))
        .listener(listener("special", filter_config(&idp, &SPECIAL_CLIENT, json!({}))))
        .listener(listener(
            "aud",
            filter_config_with(
                &idp,
                &INTROSPECTION_CLIENT,
                json!({}),
                json!({"audiences": [OPAQUE_RESOURCE]}),
            ),
        ))
        .listener(listener(
            "other-aud",
            filter_config_with(
                &idp,
                &INTROSPECTION_CLIENT,
                json!({"fail_open": true}),
                json!({"audiences": ["urn:meshwasm:other-api"]}),
            ),
        ))
        .cluster(Cluster::static_hosts("api", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start()
        .unwrap();
    Setup { idp, backend, envoy }
}

fn opaque(idp: &OidcProvider) -> String {
    idp.client_credentials(&BASIC_CLIENT, "read", Some(OPAQUE_RESOURCE)).unwrap()
}

#[test]
fn active_inactive_revoked_and_cached() {
    let s = setup();
    let token = opaque(&s.idp);
    let before = s.idp.introspection_request_count().unwrap();
    let resp = get(&s.envoy, "closed", &token);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(s.backend.request_count(), 1);
    // Cached: the same token again costs no introspection.
    for _ in 0..5 {
        assert_eq!(get(&s.envoy, "closed", &token).status, 200);
    }
    assert_eq!(s.idp.introspection_request_count().unwrap() - before, 1, "one introspection per token");

    // client_secret_post, and Basic credentials that need form-encoding, are accepted by the real
    // endpoint (a wrong encoding would be refused: 401 from it, so 503 here).
    assert_eq!(get(&s.envoy, "post", &opaque(&s.idp)).status, 200);
    assert_eq!(get(&s.envoy, "special", &opaque(&s.idp)).status, 200);

    // Unknown token: inactive → 401 invalid_token; cached briefly (inactive_ttl_s).
    let before = s.idp.introspection_request_count().unwrap();
    for _ in 0..3 {
        let resp = get(&s.envoy, "closed", "bm90LWEtdG9rZW4");
        assert_eq!(resp.status, 401);
        let challenge = resp.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
            "{challenge}"
        );
    }
    assert_eq!(s.idp.introspection_request_count().unwrap() - before, 1);

    // Revoked before first use: inactive.
    let revoked = opaque(&s.idp);
    s.idp.revoke(&BASIC_CLIENT, &revoked).unwrap();
    assert_eq!(get(&s.envoy, "closed", &revoked).status, 401);
    assert_eq!(s.backend.request_count(), 8, "only allowed requests reached the backend");
}

#[test]
fn the_providers_policy_applies_to_real_introspection_answers() {
    let s = setup();
    // The real endpoint answers `active: true` with `iss`, `aud` (the resource) and `token_type`.
    let resp = get(&s.envoy, "aud", &opaque(&s.idp));
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The same kind of token at a provider that expects another audience: refused, also with fail_open.
    let resp = get(&s.envoy, "other-aud", &opaque(&s.idp));
    assert_eq!(resp.status, 401, "{}", resp.text());
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("token audience is not accepted"), "{challenge}");
    assert_eq!(s.backend.request_count(), 1);
}

#[test]
fn failing_endpoint_fails_closed_or_open() {
    let s = setup();
    s.idp.fail_introspection_requests(503, -1).unwrap();
    let resp = get(&s.envoy, "closed", &opaque(&s.idp));
    assert_eq!(resp.status, 503, "{}", resp.text());
    let resp = get(&s.envoy, "open", &opaque(&s.idp));
    assert_eq!(resp.status, 200, "fail_open lets it through: {}", resp.text());
    s.idp.fail_introspection_requests(503, 0).unwrap();

    // A 4xx is no outage (our credentials refused, rate limited): fail_open does not open.
    for status in [401, 429] {
        s.idp.fail_introspection_requests(status, -1).unwrap();
        let resp = get(&s.envoy, "open", &opaque(&s.idp));
        assert_eq!(resp.status, 503, "HTTP {status} from the endpoint: {}", resp.text());
    }
    s.idp.fail_introspection_requests(503, 0).unwrap();

    // Slow endpoint: the 1 s timeout fails closed.
    s.idp.delay_introspection_requests(Duration::from_secs(3)).unwrap();
    let resp = get(&s.envoy, "closed", &opaque(&s.idp));
    assert_eq!(resp.status, 503, "{}", resp.text());
    s.idp.delay_introspection_requests(Duration::ZERO).unwrap();
    assert_eq!(get(&s.envoy, "closed", &opaque(&s.idp)).status, 200, "recovers");
}
