//! `client_secret_env`: token-injector and jwt-auth introspection read their client secret from an
//! environment variable the VM config passes (Envoy's `vm_config.environment_variables`, the host's
//! `Plugin::env`), at configure time. Real Envoy against the real OpenID Provider (npm oidc-provider)
//! and the wasmtime host: the right secret works, a wrong one is refused by the IdP (401 → 503), a
//! missing variable or a secret set twice is a configure-time error naming the field or variable, and
//! no secret (nor its Basic encoding) ever appears in Envoy's log or the guest's log.
//!
//! `private_key_jwt` (RFC 7523, OpenID Connect Core §9) the same way: the client's private key comes
//! from an environment variable, the provider holds the client's public JWKS; the right key gets a
//! token (Envoy and the host) and passes introspection, a wrong key is refused by the provider
//! (401 `invalid_client` → 503), and no line of the key ever appears in a log.

use std::time::Duration;

use base64::Engine as _;
use meshwasm_host::{
    CallReply, Host, HostOptions, HttpCall, Plugin, Proxy, Request, Upstream, UpstreamReply,
};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::oidc::{
    AuthMethod, BASIC_CLIENT, Client, KeyClient, OPAQUE_RESOURCE, OidcOptions, OidcProvider,
};
use meshwasm_tests::process::{HttpResponse, http_request};
use meshwasm_tests::signer::{Signer, test_key};
use serde_json::{Value, json};

/// Distinctive values, so a grep of a log cannot match anything else.
const SECRET: &str = "Zq7envSecret41c9e";
const WRONG: &str = "Wr0ngEnvSecret5be8a";
const INLINE: &str = "InlineSecret93a0d";
const ENV_CLIENT: Client = Client { id: "meshwasm-env", secret: SECRET, method: AuthMethod::Basic };

/// The client that signs with `rsa1.pem` (its public key, kid `k1`, registered at the provider).
const KEY_CLIENT_ID: &str = "meshwasm-key";

fn key_client() -> KeyClient {
    let jwk = Signer::rsa("rsa1.pem", "k1").jwk();
    KeyClient { id: KEY_CLIENT_ID.into(), jwks: json!({"keys": [jwk]}) }
}

/// A PEM private key file's text.
fn pem(file: &str) -> String {
    String::from_utf8(test_key(file)).unwrap()
}

/// Every way a secret could leak into a log: as is, inside Basic credentials, and any line of the
/// private keys (rsa1: the right one, rsa2: the wrong one).
fn leaks(log: &str) -> Vec<String> {
    let mut found = Vec::new();
    for key in [pem("rsa1.pem"), pem("rsa2.pem")] {
        for line in key.lines().filter(|l| l.len() >= 40 && !l.starts_with("-----")) {
            if log.contains(line) {
                found.push(format!("a line of a private key: {line}"));
            }
        }
    }
    for s in [SECRET, WRONG, INLINE] {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{s}", ENV_CLIENT.id));
        for needle in [s.to_owned(), basic] {
            if log.contains(&needle) {
                found.push(needle);
            }
        }
    }
    found
}

fn injector_config(secret: Value) -> Value {
    let mut v = json!({
        "token_endpoint": {"cluster": "idp", "path": "/token", "authority": "idp", "timeout": "2s"},
        "client_id": ENV_CLIENT.id,
        "scopes": ["read"],
        "retry_backoff": {"initial": "200ms", "max": "1s"},
    });
    for (k, x) in secret.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn introspection_config(idp: &OidcProvider, secret: Value) -> Value {
    let mut i = json!({
        "cluster": "idp",
        "path": "/token/introspection",
        "authority": idp.addr().to_string(),
        "client_id": ENV_CLIENT.id,
        "timeout": "1s",
    });
    for (k, x) in secret.as_object().unwrap() {
        i[k] = x.clone();
    }
    json!({
        "providers": {"idp": {"issuer": idp.issuer(), "introspection": i}},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    })
}

/// A listener whose one wasm filter (own VM) sees `env`.
fn listener(name: &str, module: &str, config: Value, env: &[(&str, &str)], fail_open: bool) -> Listener {
    let mut f =
        WasmFilter::new(name, wasm_path(module)).vm_id(name).config(config.to_string()).fail_open(fail_open);
    for (k, v) in env {
        f = f.env(k, v);
    }
    Listener::new(name, "api").wasm(f)
}

fn get(envoy: &Envoy, listener: &str, auth: Option<&str>) -> HttpResponse {
    let mut headers = vec![("host", "api.internal")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    http_request(envoy.listener_addr(listener), "GET", "/orders", &headers, b"", Duration::from_secs(10))
        .unwrap()
}

#[test]
fn envoy_reads_secrets_from_the_environment_and_never_logs_them() {
    let idp = OidcProvider::start(OidcOptions {
        clients: Some(vec![ENV_CLIENT, BASIC_CLIENT]),
        ..Default::default()
    })
    .unwrap();
    let backend = Backend::start("api").unwrap();
    let ti = "meshwasm_token_injector";
    let ja = "meshwasm_jwt_auth";
    let from_env = json!({"client_secret_env": "MESHWASM_IDP_SECRET"});
    let envoy = EnvoyConfig::new()
        .concurrency(1)
        .listener(listener(
            "inject",
            ti,
            injector_config(from_env.clone()),
            &[("MESHWASM_IDP_SECRET", SECRET)],
            false,
        ))
        .listener(listener(
            "inject-wrong",
            ti,
            injector_config(from_env.clone()),
            &[("MESHWASM_IDP_SECRET", WRONG)],
            false,
        ))
        .listener(listener(
            "introspect",
            ja,
            introspection_config(&idp, from_env.clone()),
            &[("MESHWASM_IDP_SECRET", SECRET)],
            false,
        ))
        .listener(listener(
            "introspect-wrong",
            ja,
            introspection_config(&idp, from_env.clone()),
            &[("MESHWASM_IDP_SECRET", WRONG)],
            false,
        ))
        .cluster(Cluster::static_hosts("api", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start()
        .unwrap();

    // The secret from the environment: the IdP issues a token, which reaches the backend.
    let resp = get(&envoy, "inject", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body: Value = resp.json().unwrap();
    let auth = body["headers"].as_array().unwrap().iter().find(|h| h[0] == "authorization").unwrap();
    assert!(auth[1].as_str().unwrap().starts_with("Bearer "), "{auth}");
    // A wrong secret from the environment: the IdP answers 401 invalid_client, the filter 503.
    let resp = get(&envoy, "inject-wrong", None);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("invalid_client"), "{}", resp.text());

    // Introspection with the secret from the environment accepts an active opaque token.
    let token = idp.client_credentials(&BASIC_CLIENT, "read", Some(OPAQUE_RESOURCE)).unwrap();
    let bearer = format!("Bearer {token}");
    let resp = get(&envoy, "introspect", Some(&bearer));
    assert_eq!(resp.status, 200, "{}", resp.text());
    // With a wrong one the endpoint refuses the filter (401): fail closed.
    let resp = get(&envoy, "introspect-wrong", Some(&bearer));
    assert_eq!(resp.status, 503, "{}", resp.text());

    let log = envoy.logs();
    assert!(log.contains("invalid_client"), "the IdP's refusal is logged");
    assert_eq!(leaks(&log), Vec::<String>::new(), "a secret leaked into Envoy's log");
}

/// Envoy's whole log when it refuses to start with `listener` (the filter rejects its configuration).
fn refused_start_log(idp: &OidcProvider, listener: Listener) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.log");
    let started = EnvoyConfig::new()
        .arg("--log-path")
        .arg(path.to_str().unwrap())
        .listener(listener)
        .cluster(Cluster::static_hosts("api", &[idp.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start();
    assert!(started.is_err(), "Envoy started with a rejected configuration");
    std::fs::read_to_string(&path).unwrap()
}

/// Configure-time errors in Envoy name the variable or the field, never a value: an unset variable,
/// and a secret set both inline and from the environment. Envoy refuses to start (fail closed).
#[test]
fn envoy_config_errors_name_the_variable_and_never_log_the_secret() {
    let idp = OidcProvider::start(OidcOptions::default()).unwrap();
    let log = refused_start_log(
        &idp,
        listener(
            "inject-unset",
            "meshwasm_token_injector",
            injector_config(json!({"client_secret_env": "MESHWASM_IDP_SECRET"})),
            &[("OTHER", SECRET)],
            false,
        ),
    );
    assert!(
        log.contains(
            "rejected configuration: client_secret_env: environment variable `MESHWASM_IDP_SECRET` is unset"
        ),
        "{log}"
    );
    assert_eq!(leaks(&log), Vec::<String>::new(), "a secret leaked into Envoy's log");

    let log = refused_start_log(
        &idp,
        listener(
            "introspect-both",
            "meshwasm_jwt_auth",
            introspection_config(
                &idp,
                json!({"client_secret_env": "MESHWASM_IDP_SECRET", "client_secret": INLINE}),
            ),
            &[("MESHWASM_IDP_SECRET", SECRET)],
            false,
        ),
    );
    assert!(
        log.contains(
            "providers.idp.introspection.client_secret_env: set exactly one of client_secret and client_secret_env"
        ),
        "{log}"
    );
    assert_eq!(leaks(&log), Vec::<String>::new(), "a secret leaked into Envoy's log");
}

/// The wasmtime host passes `Plugin::env` the way Envoy does; the guest's log never carries the
/// secret, on success, on the IdP's refusal or in a configure-time error.
#[test]
fn host_reads_secrets_from_the_environment_and_never_logs_them() {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(wasm_path("meshwasm_token_injector")).unwrap();
    let cfg = injector_config(json!({"client_secret_env": "MESHWASM_IDP_SECRET"})).to_string();
    // The IdP accepts SECRET in Basic credentials only.
    let idp = Upstream::handler(|call: &HttpCall| {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{}:{SECRET}", ENV_CLIENT.id));
        let want = format!("Basic {creds}");
        if call.headers.get("authorization") == Some(want.as_str()) {
            let body = json!({"access_token": "tok-1", "token_type": "Bearer", "expires_in": 600});
            CallReply::response(200, [("content-type", "application/json")], body.to_string())
        } else {
            CallReply::response(401, [("content-type", "application/json")], r#"{"error":"invalid_client"}"#)
        }
    });
    let proxy = |secret: &str| {
        Proxy::builder(&host)
            .plugin(
                Plugin::new(module.clone())
                    .name("injector")
                    .config(cfg.as_bytes())
                    .env("MESHWASM_IDP_SECRET", secret),
            )
            .upstream("idp", idp.clone())
            .build()
    };
    let req = || Request::get("/orders").authority("api.internal");

    let mut p = proxy(SECRET).unwrap();
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    let sent = ex.upstream_request.as_ref().and_then(|r| r.headers.get("authorization"));
    assert_eq!(sent, Some("Bearer tok-1"));
    let mut logs: String = p.logs().iter().map(|l| format!("{}\n", l.message)).collect();

    let mut p = proxy(WRONG).unwrap();
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert!(p.logged("invalid_client"));
    logs.extend(p.logs().iter().map(|l| format!("{}\n", l.message)));

    // An empty variable is a configure-time error naming it.
    let err = proxy("").err().expect("an empty secret variable must be rejected");
    let text = format!("{err:#}");
    assert!(text.contains("`MESHWASM_IDP_SECRET` is unset or empty"), "{text}");
    assert_eq!(leaks(&(logs + &text)), Vec::<String>::new(), "a secret leaked into the guest's log");
}

fn key_auth(audience: &str) -> Value {
    json!({
        "auth_method": "private_key_jwt",
        "client_assertion": {"private_key_env": "MESHWASM_IDP_KEY", "key_id": "k1", "audience": audience},
    })
}

fn key_injector_config(audience: &str) -> Value {
    let mut v = injector_config(key_auth(audience));
    v["client_id"] = json!(KEY_CLIENT_ID);
    v
}

fn key_introspection_config(idp: &OidcProvider) -> Value {
    let mut v = introspection_config(idp, key_auth(idp.issuer()));
    v["providers"]["idp"]["introspection"]["client_id"] = json!(KEY_CLIENT_ID);
    v
}

/// `private_key_jwt` in real Envoy against the real provider: the token-injector gets a token with
/// an assertion signed by the key from the environment (`aud`: the token endpoint), jwt-auth's
/// introspection calls authenticate the same way (`aud`: the issuer; two calls, two assertions: the
/// provider refuses a `jti` it has seen), and the wrong key is refused: 503, the provider's
/// `invalid_client` in the log, no line of either key anywhere in it.
#[test]
fn envoy_private_key_jwt_from_the_environment_and_never_logged() {
    let idp =
        OidcProvider::start(OidcOptions { key_clients: vec![key_client()], ..Default::default() }).unwrap();
    let backend = Backend::start("api").unwrap();
    let (ti, ja) = ("meshwasm_token_injector", "meshwasm_jwt_auth");
    let (right, wrong) = (pem("rsa1.pem"), pem("rsa2.pem"));
    let token_aud = idp.token_endpoint();
    let envoy = EnvoyConfig::new()
        .concurrency(1)
        .listener(listener(
            "inject-key",
            ti,
            key_injector_config(&token_aud),
            &[("MESHWASM_IDP_KEY", &right)],
            false,
        ))
        .listener(listener(
            "inject-wrong-key",
            ti,
            key_injector_config(&token_aud),
            &[("MESHWASM_IDP_KEY", &wrong)],
            false,
        ))
        .listener(listener(
            "introspect-key",
            ja,
            key_introspection_config(&idp),
            &[("MESHWASM_IDP_KEY", &right)],
            false,
        ))
        .listener(listener(
            "introspect-wrong-key",
            ja,
            key_introspection_config(&idp),
            &[("MESHWASM_IDP_KEY", &wrong)],
            false,
        ))
        .cluster(Cluster::static_hosts("api", &[backend.addr()]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .start()
        .unwrap();

    let resp = get(&envoy, "inject-key", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body: Value = resp.json().unwrap();
    let auth = body["headers"].as_array().unwrap().iter().find(|h| h[0] == "authorization").unwrap();
    let token = auth[1].as_str().unwrap().strip_prefix("Bearer ").unwrap();
    // The provider issued it to the key client (its introspection says so).
    let info = idp.introspect(token).unwrap();
    assert_eq!(info["client_id"], KEY_CLIENT_ID, "{info}");

    let resp = get(&envoy, "inject-wrong-key", None);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("invalid_client"), "{}", resp.text());

    // Two opaque tokens: two introspection calls, each with its own assertion, both accepted.
    for _ in 0..2 {
        let t = idp.client_credentials(&BASIC_CLIENT, "read", Some(OPAQUE_RESOURCE)).unwrap();
        let resp = get(&envoy, "introspect-key", Some(&format!("Bearer {t}")));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let t = idp.client_credentials(&BASIC_CLIENT, "read", Some(OPAQUE_RESOURCE)).unwrap();
    let resp = get(&envoy, "introspect-wrong-key", Some(&format!("Bearer {t}")));
    assert_eq!(resp.status, 503, "{}", resp.text());

    let log = envoy.logs();
    assert!(log.contains("invalid_client"), "the provider's refusal is logged");
    assert_eq!(leaks(&log), Vec::<String>::new(), "a key leaked into Envoy's log");
}

/// The wasmtime host runs the same: token-injector forwards its token request to the real provider
/// (the virtual clock starts now, since the provider checks `iat`/`exp`), a wrong key is refused,
/// and an unusable key is a configure-time error naming the field and variable, never the key.
#[test]
fn host_private_key_jwt_from_the_environment_and_never_logged() {
    let idp =
        OidcProvider::start(OidcOptions { key_clients: vec![key_client()], ..Default::default() }).unwrap();
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(wasm_path("meshwasm_token_injector")).unwrap();
    let cfg = key_injector_config(&idp.token_endpoint()).to_string();
    let proxy = |key: &str| {
        Proxy::builder(&host)
            .start_time(std::time::SystemTime::now())
            .plugin(
                Plugin::new(module.clone())
                    .name("injector")
                    .config(cfg.as_bytes())
                    .env("MESHWASM_IDP_KEY", key),
            )
            .upstream("idp", Upstream::forward(idp.addr()))
            .build()
    };
    let req = || Request::get("/orders").authority("api.internal");

    let mut p = proxy(&pem("rsa1.pem")).unwrap();
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    let sent = ex.upstream_request.as_ref().and_then(|r| r.headers.get("authorization")).unwrap();
    let token = sent.strip_prefix("Bearer ").unwrap();
    assert_eq!(idp.introspect(token).unwrap()["client_id"], KEY_CLIENT_ID);
    let mut logs: String = p.logs().iter().map(|l| format!("{}\n", l.message)).collect();

    let mut p = proxy(&pem("rsa2.pem")).unwrap();
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert!(p.logged("invalid_client"));
    logs.extend(p.logs().iter().map(|l| format!("{}\n", l.message)));

    // An EC key where the config says RS256 (the default alg is RS256 too): rejected at configure time.
    let err = proxy(&pem("ec1.pem")).err().expect("an EC key for RS256 must be rejected");
    let text = format!("{err:#}");
    assert!(
        text.contains("client_assertion.private_key_env: environment variable `MESHWASM_IDP_KEY` does not hold an RSA private key"),
        "{text}"
    );
    assert!(!text.contains(&pem("ec1.pem").lines().nth(1).unwrap()[..30]), "{text}");
    assert_eq!(leaks(&(logs + &text)), Vec::<String>::new(), "a key leaked into the guest's log");
}
