//! token-injector in real Envoy against the real OpenID Provider (npm oidc-provider): the backend
//! receives `Authorization: Bearer <token>` that verifies against the provider's JWKS, one token fetch
//! serves both Envoy workers, only matching requests get a token, client-sent credentials are
//! replaced, and an IdP that refuses or is down gives a clear 503 (its `error` in the log, never the
//! secret).

use std::net::SocketAddr;
use std::time::Duration;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::oidc::{
    BASIC_CLIENT, Client, ES256_RESOURCE, OidcOptions, OidcProvider, POST_CLIENT, RS256_RESOURCE,
    ResourceServer, SPECIAL_CLIENT,
};
use meshwasm_tests::process::{HttpResponse, free_port, http_request};
use serde_json::{Value, json};

fn injector_config(
    idp: &OidcProvider,
    client: &Client,
    secret: &str,
    resource: &str,
    cluster: &str,
) -> Value {
    json!({
        "token_endpoint": {"cluster": cluster, "path": "/token", "authority": idp.addr().to_string(), "timeout_ms": 2000},
        "client_id": client.id,
        "client_secret": secret,
        "auth_method": match client.method {
            meshwasm_tests::oidc::AuthMethod::Basic => "client_secret_basic",
            meshwasm_tests::oidc::AuthMethod::Post => "client_secret_post",
        },
        "scopes": ["read", "write"],
        "resource": resource,
        "match": [{"authority": "api.internal"}, {"authority": "*.svc.internal", "path_prefix": "/v1/"}],
        "retry_backoff": {"initial_ms": 200, "max_ms": 1000},
    })
}

fn listener(name: &str, config: Value) -> Listener {
    Listener::new(name, "api").wasm(
        WasmFilter::new(&format!("token-injector-{name}"), wasm_path("meshwasm_token_injector"))
            .vm_id("token-injector")
            .config(config.to_string()),
    )
}

fn get(addr: SocketAddr, host: &str, path: &str, auth: Option<&str>) -> HttpResponse {
    let mut headers = vec![("host", host)];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    http_request(addr, "GET", path, &headers, b"", Duration::from_secs(10)).unwrap()
}

/// The Authorization header the backend echoed.
fn echoed_auth(resp: &HttpResponse) -> Option<String> {
    let body: Value = resp.json().unwrap();
    body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "authorization")
        .and_then(|h| h[1].as_str())
        .map(str::to_owned)
}

struct Setup {
    idp: OidcProvider,
    _backend: Backend,
    envoy: Envoy,
}

fn setup() -> Setup {
    let idp = OidcProvider::start(OidcOptions::default()).unwrap();
    let backend = Backend::start("api").unwrap();
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(listener(
            "basic",
            injector_config(&idp, &BASIC_CLIENT, BASIC_CLIENT.secret, RS256_RESOURCE, "idp"),
        ))
        .listener(listener(
            "post",
            injector_config(&idp, &POST_CLIENT, POST_CLIENT.secret, ES256_RESOURCE, "idp"),
        ))
        .listener(listener(
            "special",
            injector_config(&idp, &SPECIAL_CLIENT, SPECIAL_CLIENT.secret, RS256_RESOURCE, "idp"),
        ))
        .listener(listener(
            "wrongsecret",
            injector_config(&idp, &BASIC_CLIENT, "definitely-wrong-secret", RS256_RESOURCE, "idp"),
        ))
        .listener(listener(
            "down",
            injector_config(&idp, &BASIC_CLIENT, BASIC_CLIENT.secret, RS256_RESOURCE, "idp_down"),
        ))
        .cluster(Cluster::static_hosts("api", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .cluster(Cluster::static_hosts("idp_down", &[closed]))
        .start()
        .unwrap();
    Setup { idp, _backend: backend, envoy }
}

#[test]
fn injects_verifiable_tokens_with_one_fetch_per_proxy() {
    let s = setup();
    let addr = s.envoy.listener_addr("basic");
    let before = s.idp.token_request_count().unwrap();

    // Concurrent first requests on both workers: all get the same token, from one fetch.
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || get(addr, "api.internal", "/x", Some("Bearer client-sent"))))
        .collect();
    let mut tokens = Vec::new();
    for h in handles {
        let resp = h.join().unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        tokens.push(echoed_auth(&resp).expect("backend got an Authorization header"));
    }
    for _ in 0..12 {
        let resp = get(addr, "api.internal:8080", "/y", None);
        assert_eq!(resp.status, 200);
        tokens.push(echoed_auth(&resp).unwrap());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "one token for all requests: {tokens:?}");
    let token = tokens[0].strip_prefix("Bearer ").expect("Bearer scheme");
    assert_ne!(token, "client-sent", "client-sent credentials are replaced");
    assert_eq!(
        s.idp.token_request_count().unwrap() - before,
        1,
        "one fetch per proxy, not per worker or request"
    );

    // The token verifies against the provider's JWKS, with the configured client, scopes and resource.
    let claims = s.idp.verify(token, RS256_RESOURCE).unwrap();
    assert_eq!(claims["client_id"], BASIC_CLIENT.id);
    assert_eq!(claims["scope"], "read write");

    // Rule with authority wildcard + path prefix.
    let resp = get(addr, "orders.svc.internal", "/v1/orders", None);
    assert_eq!(echoed_auth(&resp).as_deref(), Some(tokens[0].as_str()));
    // Not matching: untouched (the client's header passes, or none is added).
    let resp = get(addr, "orders.svc.internal", "/v2/orders", Some("Bearer mine"));
    assert_eq!(echoed_auth(&resp).as_deref(), Some("Bearer mine"));
    let resp = get(addr, "other.internal", "/", None);
    assert_eq!(echoed_auth(&resp), None);

    // Metrics.
    let stats = s.envoy.stats().unwrap();
    let injected: u64 =
        stats.iter().filter(|(k, _)| k.ends_with("meshwasm_token_injector.injected")).map(|(_, v)| v).sum();
    let fetches: u64 =
        stats.iter().filter(|(k, _)| k.ends_with("meshwasm_token_injector.fetches")).map(|(_, v)| v).sum();
    assert!(injected >= 21, "injected counter {injected}: {stats:?}");
    assert!(fetches >= 1);

    // The token and the secret never appear in Envoy's log.
    let logs = s.envoy.logs();
    assert!(!logs.contains(token), "token logged");
    assert!(!logs.contains(BASIC_CLIENT.secret), "secret logged");
}

#[test]
fn post_auth_es256_and_encoded_basic_credentials() {
    let s = setup();
    let resp = get(s.envoy.listener_addr("post"), "api.internal", "/", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let auth = echoed_auth(&resp).unwrap();
    let claims = s.idp.verify(auth.strip_prefix("Bearer ").unwrap(), ES256_RESOURCE).unwrap();
    assert_eq!(claims["client_id"], POST_CLIENT.id);

    // Client id and secret with `:`, space, `+`, `%`, `&`, `=`: RFC 6749 §2.3.1 encoding must be right.
    let resp = get(s.envoy.listener_addr("special"), "api.internal", "/", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let auth = echoed_auth(&resp).unwrap();
    let claims = s.idp.verify(auth.strip_prefix("Bearer ").unwrap(), RS256_RESOURCE).unwrap();
    assert_eq!(claims["client_id"], SPECIAL_CLIENT.id);
}

#[test]
fn refused_or_unreachable_idp_gives_503_with_the_reason() {
    let s = setup();
    // Wrong secret: the IdP's `invalid_client` is reported; the secret is not.
    let resp = get(s.envoy.listener_addr("wrongsecret"), "api.internal", "/", None);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("x-meshwasm-token-injector"), Some("no-token"));
    assert!(resp.text().contains("invalid_client"), "{}", resp.text());
    assert!(s.envoy.wait_for_log("invalid_client", Duration::from_secs(5)));
    assert!(!s.envoy.logs().contains("definitely-wrong-secret"));
    // During back-off: an immediate 503 without another token request.
    let count = s.idp.token_request_count().unwrap();
    let resp = get(s.envoy.listener_addr("wrongsecret"), "api.internal", "/", None);
    assert_eq!(resp.status, 503);
    assert!(s.idp.token_request_count().unwrap() <= count + 1);

    // Token endpoint down (connection refused): 503 naming the failure.
    let resp = get(s.envoy.listener_addr("down"), "api.internal", "/", None);
    assert_eq!(resp.status, 503);
    assert!(resp.text().contains("no access token available"), "{}", resp.text());

    // Scripted outage of the real IdP: the first request fails, and after the back-off a retry
    // succeeds without any configuration change.
    s.idp.fail_token_requests(503, 1).unwrap();
    let post = s.envoy.listener_addr("post");
    let resp = get(post, "api.internal", "/", None);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("temporarily_unavailable"), "{}", resp.text());
    let ok = meshwasm_tests::process::wait_until(Duration::from_secs(10), || {
        get(post, "api.internal", "/", None).status == 200
    });
    assert!(ok, "recovered after the back-off");
}

#[test]
fn short_lived_tokens_are_refreshed_before_they_expire() {
    // 4 s tokens: refreshed in the background at half their lifetime, never sent expired.
    let idp = OidcProvider::start(
        OidcOptions::default().resource(RS256_RESOURCE, ResourceServer::jwt("RS256").ttl(4)),
    )
    .unwrap();
    let backend = Backend::start("api").unwrap();
    let envoy = EnvoyConfig::new()
        .concurrency(2)
        .listener(listener(
            "basic",
            injector_config(&idp, &BASIC_CLIENT, BASIC_CLIENT.secret, RS256_RESOURCE, "idp"),
        ))
        .cluster(Cluster::static_hosts("api", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("basic");
    let mut tokens: Vec<String> = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        let resp = get(addr, "api.internal", "/", None);
        assert_eq!(resp.status, 200, "{}", resp.text());
        let auth = echoed_auth(&resp).unwrap();
        let token = auth.strip_prefix("Bearer ").unwrap().to_owned();
        // Verified right after it was received: signature, audience and not expired.
        let claims = idp.verify(&token, RS256_RESOURCE).unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        assert_eq!(exp - claims["iat"].as_u64().unwrap(), 4);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(exp >= now, "an expired token was sent (exp {exp}, now {now})");
        if tokens.last() != Some(&token) {
            tokens.push(token);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // 9 s of 4 s tokens refreshed at 2 s: several distinct tokens, one fetch per refresh for the proxy.
    assert!(tokens.len() >= 3, "tokens were refreshed: {}", tokens.len());
    let fetches = idp.token_request_count().unwrap() as usize;
    assert!(fetches <= tokens.len() + 1, "{fetches} token requests for {} tokens", tokens.len());
}
