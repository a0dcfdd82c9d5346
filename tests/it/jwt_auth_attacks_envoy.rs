//! jwt-auth attacked in real Envoy (issue 8, defects 1, 6 and 7): paths that upstreams route to
//! `/admin` however the client spells them, and credentials that are malformed, repeated or sent by
//! two methods. Two listeners: one with Envoy's path normalization off, to show that the filter is
//! safe on its own, and one configured as our examples are (normalize_path, merge_slashes, escaped
//! slashes rejected). The backend records what reaches it: a refused request never does.

use std::time::Duration;

use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::signer::{Signer, now};
use meshwasm_tests::{artifacts, process};
use serde_json::json;

const ISS: &str = "https://idp.test";

fn signer() -> Signer {
    Signer::rsa("rsa1.pem", "k1")
}

fn token(scope: &str) -> String {
    signer().mint(&json!({"iss": ISS, "aud": "api", "sub": "alice", "exp": now() + 3600, "scope": scope}))
}

fn config() -> String {
    let jwk = signer().jwk();
    json!({
        "providers": {"idp": {"issuer": ISS, "audiences": ["api"], "algorithms": ["RS256"],
                              "local_jwks": {"keys": [jwk]},
                              "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                              "from_params": ["access_token"], "from_cookies": ["at"]}},
        "rules": [
            {"match": {"prefix": "/public"}},
            {"match": {"path": "/exact-admin"}, "requires_any": ["idp"], "scopes": ["admin"]},
            {"match": {"prefix": "/admin"}, "requires_any": ["idp"], "scopes": ["admin"]},
            {"match": {"prefix": "/opt"}, "requires_any": ["idp"], "allow_missing": true},
            {"match": {"prefix": "/"}, "requires_any": ["idp"]}
        ]
    })
    .to_string()
}

fn start(backend: &Backend) -> Envoy {
    let jwt = || WasmFilter::new("jwt", artifacts::wasm_path("meshwasm_jwt_auth")).config(config());
    EnvoyConfig::new()
        .listener(Listener::new("raw", "backend").raw_paths().wasm(jwt()))
        .listener(Listener::new("normalized", "backend").wasm(jwt()))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap()
}

fn send(envoy: &Envoy, listener: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    process::http_request(envoy.listener_addr(listener), "GET", path, headers, b"", Duration::from_secs(10))
        .unwrap()
        .status
}

#[test]
fn no_spelling_of_admin_gets_past_the_admin_rule() {
    let backend = Backend::start("b").unwrap();
    let envoy = start(&backend);
    let reader = format!("Bearer {}", token("read"));
    let admin = format!("Bearer {}", token("admin"));
    // Each reaches `/admin` in Go, Tomcat or Spring. A reader's token must get 403, or the request be
    // refused outright (400), on both listeners; nothing reaches the backend.
    let spellings = [
        "/%61dmin",
        "//admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public\\..\\admin",
        "/%2Fadmin",
        "/public/%2fadmin",
        "/admin;x",
        "/exact-admin;x",
        "/exact-admin/.",
        "/exact-admin/",
        "/%65xact-admin",
    ];
    for listener in ["raw", "normalized"] {
        for p in spellings {
            let before = backend.request_count();
            let s = send(&envoy, listener, p, &[("authorization", &reader)]);
            assert!(s == 403 || s == 400, "{listener} {p}: reader got {s}");
            let s = send(&envoy, listener, p, &[]);
            assert!(s == 401 || s == 400, "{listener} {p}: no token got {s}");
            assert_eq!(backend.request_count(), before, "{listener} {p}: reached the backend");
        }
        // The admin scope still gets in through the plain spelling.
        assert_eq!(send(&envoy, listener, "/admin/x", &[("authorization", &admin)]), 200, "{listener}");
        assert_eq!(send(&envoy, listener, "/public/x", &[]), 200, "{listener}");
    }
    // Without Envoy's normalization it is the filter that refuses the ambiguous ones with 400.
    for p in ["/%2Fadmin", "/public\\..\\admin", "/admin;x", "/a%zz"] {
        assert_eq!(send(&envoy, "raw", p, &[("authorization", &admin)]), 400, "raw {p}");
    }
}

#[test]
fn malformed_and_repeated_credentials_are_refused() {
    let backend = Backend::start("b").unwrap();
    let envoy = start(&backend);
    let t = token("read");
    let other = token("admin");
    let bearer = format!("Bearer {t}");
    assert_eq!(send(&envoy, "raw", "/opt", &[]), 200, "missing is allowed on /opt");
    assert_eq!(send(&envoy, "raw", "/opt", &[("authorization", &bearer)]), 200);
    let tab = format!("Bearer\t{t}");
    let extra = format!("Bearer {t} extra");
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        ("/opt".into(), vec![("authorization", tab)]),
        ("/opt".into(), vec![("authorization", extra)]),
        ("/opt".into(), vec![("authorization", "Bearer".into())]),
        (
            "/opt".into(),
            vec![("authorization", bearer.clone()), ("authorization", format!("Bearer {other}"))],
        ),
        ("/x".into(), vec![("authorization", bearer.clone()), ("authorization", format!("Bearer {other}"))]),
        (format!("/x?access_token={t}&access_token={other}"), vec![]),
        ("/x".into(), vec![("cookie", format!("at={t}")), ("cookie", format!("at={other}"))]),
        (format!("/x?access_token={other}"), vec![("authorization", bearer.clone())]),
    ];
    for (path, headers) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let before = backend.request_count();
        let resp =
            process::http_request(envoy.listener_addr("raw"), "GET", path, &h, b"", Duration::from_secs(10))
                .unwrap();
        assert_eq!(resp.status, 401, "{path} {h:?}");
        let w = resp.header("www-authenticate").unwrap_or_default();
        assert!(w.contains(r#"error="invalid_request""#), "{path}: {w}");
        assert_eq!(backend.request_count(), before, "{path} {h:?}: reached the backend");
    }
}
