//! jwt-auth hands the verified identity on to authz (issue 10, item 2): the principal `<iss>/<sub>`,
//! the provider and the configured claims, as filter state set with `proxy_set_property`. The same
//! chain (jwt-auth, then authz) runs in the wasmtime host and in real Envoy; authz allows alice (staff)
//! and refuses bob, a token-less request on a path where jwt-auth lets a missing token through, and a
//! client that sends the identity as headers.

use std::time::Duration;

use meshwasm_host::{Host, HostOptions, Plugin, Proxy, Request, UpstreamReply};
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, EnvoyConfig, HttpFilter, Listener, WasmFilter};
use meshwasm_tests::signer::{Signer, jwks, now};
use meshwasm_tests::{artifacts, process};
use serde_json::json;

const ISS: &str = "https://idp.test";

fn jwt_config(s: &Signer) -> String {
    json!({
        "providers": {"idp": {"issuer": ISS, "audiences": ["api"], "algorithms": ["RS256"],
                              "local_jwks": serde_json::from_str::<serde_json::Value>(&jwks(&[s])).unwrap(), "claims_to_filter_state": ["groups"]}},
        "rules": [{"match": {"prefix": "/public"}, "requires_any": ["idp"], "allow_missing": true},
                  {"match": {"prefix": "/"}, "requires_any": ["idp"]}]
    })
    .to_string()
}

fn authz_config() -> String {
    json!({"policies": [{"name": "staff-only", "action": "ALLOW", "rules": [{
        "from": [{"source": {"request_principals": [format!("{ISS}/*")]}}],
        "when": [{"key": "request.auth.claims[groups]", "values": ["staff"]}]
    }]}]})
    .to_string()
}

fn token(s: &Signer, sub: &str, groups: &[&str]) -> String {
    format!(
        "Bearer {}",
        s.mint(&json!({"iss": ISS, "aud": "api", "sub": sub, "exp": now() + 600, "groups": groups}))
    )
}

/// (path, headers, expected status): one request of [`cases`].
type Case = (&'static str, Vec<(&'static str, String)>, u16);

/// The requests both hosts must answer alike.
fn cases(s: &Signer) -> Vec<Case> {
    vec![
        ("/x", vec![("authorization", token(s, "alice", &["dev", "staff"]))], 200),
        ("/public/x", vec![("authorization", token(s, "alice", &["staff"]))], 200),
        ("/x", vec![("authorization", token(s, "bob", &["dev"]))], 403),
        // jwt-auth lets a missing token through here; authz sees no request principal.
        ("/public/x", vec![], 403),
        // Headers are not filter state: a client cannot claim an identity.
        (
            "/public/x",
            vec![
                ("meshwasm.jwt.principal", format!("{ISS}/alice")),
                ("x-meshwasm-principal", format!("{ISS}/alice")),
                ("meshwasm.jwt.claim.groups", "\"staff\"".into()),
            ],
            403,
        ),
    ]
}

#[test]
fn the_identity_reaches_authz_in_the_wasmtime_host() {
    let s = Signer::rsa("rsa1.pem", "r1");
    let host = Host::new(HostOptions::default()).unwrap();
    let jwt = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let authz = host.load(artifacts::wasm_path("meshwasm_authz")).unwrap();
    let mut p = Proxy::builder(&host)
        .plugin(Plugin::new(jwt).name("jwt").config(jwt_config(&s).as_bytes()))
        .plugin(Plugin::new(authz).name("authz").config(authz_config().as_bytes()))
        .build()
        .unwrap();
    for (path, headers, want) in cases(&s) {
        let mut req = Request::get(path);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let ex = p.send(0, req, UpstreamReply::new(200)).unwrap();
        assert_eq!(ex.status, want, "{path} {headers:?}");
    }
}

#[test]
fn the_identity_reaches_authz_in_envoy() {
    let s = Signer::rsa("rsa1.pem", "r1");
    let backend = Backend::start("b").unwrap();
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::new("main", "backend")
                .wasm(
                    WasmFilter::new("jwt", artifacts::wasm_path("meshwasm_jwt_auth")).config(jwt_config(&s)),
                )
                .wasm(
                    WasmFilter::new("authz", artifacts::wasm_path("meshwasm_authz")).config(authz_config()),
                ),
        )
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap();
    for (path, headers, want) in cases(&s) {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let before = backend.request_count();
        let resp =
            process::http_request(envoy.listener_addr("main"), "GET", path, &h, b"", Duration::from_secs(10))
                .unwrap();
        assert_eq!(resp.status, want, "{path} {h:?}");
        assert_eq!(
            backend.request_count() - before,
            u64::from(want == 200),
            "{path}: what reached the backend"
        );
    }
}

/// Envoy's native RBAC reads the same filter state (`wasm.meshwasm.jwt.principal`), as the README's
/// RBAC example shows.
#[test]
fn envoy_rbac_matches_the_handed_on_principal() {
    let s = Signer::rsa("rsa1.pem", "r1");
    let backend = Backend::start("b").unwrap();
    let rbac = format!(
        r#"
name: envoy.filters.http.rbac
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
  rules:
    action: ALLOW
    policies:
      alice-only:
        permissions: [{{any: true}}]
        principals:
        - filter_state:
            key: wasm.meshwasm.jwt.principal
            string_match: {{exact: "{ISS}/alice"}}
"#
    );
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::new("main", "backend")
                .wasm(
                    WasmFilter::new("jwt", artifacts::wasm_path("meshwasm_jwt_auth")).config(jwt_config(&s)),
                )
                .filter(HttpFilter::Raw(rbac)),
        )
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap();
    for (path, auth, want) in [
        ("/x", Some(token(&s, "alice", &[])), 200),
        ("/x", Some(token(&s, "bob", &[])), 403),
        ("/public/x", None, 403),
    ] {
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let resp =
            process::http_request(envoy.listener_addr("main"), "GET", path, &h, b"", Duration::from_secs(10))
                .unwrap();
        assert_eq!(resp.status, want, "{path} {auth:?}");
    }
}
