//! jwt-auth's real .wasm in the wasmtime host: remote JWKS scripted per test (first load with paused
//! requests, one fetch shared by all workers, key rotation with unknown-kid refetch and its rate limit,
//! failures and stale-on-error), claim headers, RFC 6750 replies and metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshwasm_host::{
    CallReply, Host, HostOptions, Plugin, Proxy, Request, StreamState, Upstream, UpstreamReply,
};
use meshwasm_tests::artifacts;
use meshwasm_tests::signer::{Signer, jwks, now};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test";

fn claims() -> Value {
    json!({"iss": ISS, "aud": "api", "sub": "alice", "exp": now() + 3600, "iat": now(),
           "scope": "read write", "groups": ["dev", "ops"], "tenant": {"id": 7}})
}

/// The JWKS endpoint: serves `body` (or fails while `down`), counts calls.
#[derive(Clone)]
struct Idp {
    body: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Idp {
    fn new(body: String) -> Self {
        Idp { body: Arc::new(Mutex::new(body)), down: Arc::default(), calls: Arc::default() }
    }
    fn upstream(&self) -> Upstream {
        let me = self.clone();
        Upstream::handler(move |call| {
            me.calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(call.headers.get(":path"), Some("/jwks"));
            assert_eq!(call.headers.get(":authority"), Some("idp.test"));
            if me.down.load(Ordering::SeqCst) {
                CallReply::failure()
            } else {
                CallReply::response(
                    200,
                    [("content-type", "application/json")],
                    me.body.lock().unwrap().clone(),
                )
            }
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn config() -> String {
    json!({
        "realm": "api",
        "providers": {"idp": {
            "issuer": ISS, "audiences": ["api"], "algorithms": ["RS256", "ES256"],
            "remote_jwks": {"cluster": "idp", "uri": "https://idp.test/jwks", "cache_duration_s": 60,
                            "max_stale_s": 600, "unknown_kid_refetch_interval_s": 30, "retry_interval_s": 1},
            "claim_to_headers": [{"header": "x-sub", "claim": "sub"}, {"header": "x-groups", "claim": "groups"},
                                 {"header": "x-tenant", "claim": "tenant.id"}],
        }},
        "rules": [
            {"match": {"prefix": "/admin"}, "requires_any": ["idp"], "scopes": ["admin"]},
            {"match": {"prefix": "/"}, "requires_any": ["idp"]}
        ],
        "key_wait_timeout_ms": 2000
    })
    .to_string()
}

fn proxy(idp: &Idp, workers: usize) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    Proxy::builder(&host)
        .workers(workers)
        .start_time(SystemTime::now())
        .plugin(Plugin::new(module).name("jwt").vm_id("jwt").config(config().as_bytes()))
        .upstream("idp", idp.upstream())
        .build()
        .unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn first_load_pauses_requests_and_one_fetch_serves_all_workers() {
    let s = Signer::rsa("rsa1.pem", "r1");
    let idp = Idp::new(jwks(&[&s]));
    let mut p = proxy(&idp, 3);
    let tok = s.mint(&claims());
    let ids: Vec<_> = (0..3)
        .map(|w| p.start(w, Request::get("/x").header("authorization", bearer(&tok))).unwrap())
        .collect();
    for id in &ids {
        assert!(matches!(p.stream_state(*id), Some(StreamState::Paused { .. })), "{:?}", p.stream_state(*id));
    }
    p.advance(Duration::from_millis(600));
    for id in ids {
        assert!(matches!(p.stream_state(id), Some(StreamState::WaitingUpstream)), "{:?}", p.stream_state(id));
        let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
        assert_eq!(ex.status, 200);
    }
    assert_eq!(idp.calls(), 1, "one JWKS fetch for the whole proxy");
    // This host offers verify_signature like Envoy, and it passed the filter's self-test.
    assert!(p.logged("RSA/ECDSA verification: host verify_signature foreign function"));
    assert_eq!(p.metric("meshwasm_jwt_auth.allowed"), Some(3));
}

#[test]
fn verdicts_headers_and_challenges() {
    let s = Signer::ec("ec1.pem", "e1");
    let idp = Idp::new(jwks(&[&s]));
    let mut p = proxy(&idp, 1);
    p.advance(Duration::from_millis(300));
    let tok = s.mint(&claims());
    let ex = p
        .send(
            0,
            Request::get("/x").header("authorization", bearer(&tok)).header("x-sub", "mallory"),
            UpstreamReply::new(200),
        )
        .unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    let up = ex.upstream_request.unwrap();
    assert_eq!(up.headers.get_all("x-sub"), vec![&b"alice"[..]], "client copy removed, claim set");
    assert_eq!(up.headers.get("x-groups"), Some("dev,ops"));
    assert_eq!(up.headers.get("x-tenant"), Some("7"));
    assert_eq!(up.headers.get("authorization"), None, "token stripped (forward: false)");

    let ex = p.send(0, Request::get("/x"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 401);
    assert_eq!(ex.response_headers.get("www-authenticate"), Some(r#"Bearer realm="api""#));

    let mut c = claims();
    c["exp"] = json!(now() - 600);
    let ex = p
        .send(0, Request::get("/x").header("authorization", bearer(&s.mint(&c))), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 401);
    assert_eq!(
        ex.response_headers.get("www-authenticate"),
        Some(r#"Bearer realm="api", error="invalid_token", error_description="token has expired""#)
    );

    let ex = p
        .send(0, Request::get("/admin").header("authorization", bearer(&tok)), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 403);
    let w = ex.response_headers.get("www-authenticate").unwrap().to_string();
    assert!(w.contains(r#"error="insufficient_scope""#) && w.contains(r#"scope="admin""#), "{w}");

    // Repeated token: served from the verified-token cache.
    let before = p.metric("meshwasm_jwt_auth.cache_hits").unwrap_or(0);
    p.send(0, Request::get("/x").header("authorization", bearer(&tok)), UpstreamReply::new(200)).unwrap();
    assert_eq!(p.metric("meshwasm_jwt_auth.cache_hits"), Some(before + 1));
    assert!(p.metric("meshwasm_jwt_auth.denied.expired").unwrap_or(0) >= 1);
}

#[test]
fn rotation_refetches_on_unknown_kid_at_most_once_per_interval() {
    let old = Signer::rsa("rsa1.pem", "old");
    let new = Signer::rsa("rsa2.pem", "new");
    let idp = Idp::new(jwks(&[&old]));
    let mut p = proxy(&idp, 2);
    p.advance(Duration::from_millis(300));
    assert_eq!(idp.calls(), 1);
    // The IdP rotates; a token signed with the new key arrives. First refetch needs the interval (30 s)
    // since the last fetch to have passed.
    *idp.body.lock().unwrap() = jwks(&[&old, &new]);
    p.advance(Duration::from_secs(31));
    let id = p.start(1, Request::get("/x").header("authorization", bearer(&new.mint(&claims())))).unwrap();
    assert!(matches!(p.stream_state(id), Some(StreamState::Paused { .. })));
    p.advance(Duration::from_millis(600));
    let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    assert_eq!(idp.calls(), 2);
    // A flood of random kids: refused without another fetch within the interval.
    for i in 0..50 {
        let t = new.mint_kid(&format!("random-{i}"), &claims());
        let ex = p
            .send(i % 2, Request::get("/x").header("authorization", bearer(&t)), UpstreamReply::new(200))
            .unwrap();
        assert_eq!(ex.status, 401);
        p.advance(Duration::from_millis(100));
    }
    assert_eq!(idp.calls(), 2, "no refetch within unknown_kid_refetch_interval_s");
    // After the interval: exactly one more.
    p.advance(Duration::from_secs(30));
    let t = new.mint_kid("random-x", &claims());
    let id = p.start(0, Request::get("/x").header("authorization", bearer(&t))).unwrap();
    p.advance(Duration::from_millis(600));
    assert_eq!(p.exchange(id).map(|e| e.status), Some(401));
    assert_eq!(idp.calls(), 3);
}

#[test]
fn idp_outage_keeps_stale_keys_and_fails_closed_without_keys() {
    let s = Signer::rsa("rsa1.pem", "r1");
    let idp = Idp::new(jwks(&[&s]));
    idp.down.store(true, Ordering::SeqCst);
    let mut p = proxy(&idp, 1);
    // No keys yet and the IdP is down: 503 (not 401: the client's token is not at fault).
    let tok = s.mint(&claims());
    let id = p.start(0, Request::get("/x").header("authorization", bearer(&tok))).unwrap();
    p.advance(Duration::from_millis(600));
    let ex = p.exchange(id).unwrap();
    assert_eq!(ex.status, 503);
    assert!(p.logged("JWKS fetch: no response"));
    // The IdP comes back: keys load on the next retry.
    idp.down.store(false, Ordering::SeqCst);
    p.advance(Duration::from_secs(3));
    let ex =
        p.send(0, Request::get("/x").header("authorization", bearer(&tok)), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    // Down again past cache_duration (60 s): refreshes fail, old keys stay in use.
    idp.down.store(true, Ordering::SeqCst);
    let fetches = idp.calls();
    p.advance(Duration::from_secs(120));
    assert!(idp.calls() > fetches, "background refresh attempted");
    let other = s.mint(&json!({"iss": ISS, "aud": "api", "sub": "bob", "exp": now() + 3600}));
    let ex = p
        .send(0, Request::get("/x").header("authorization", bearer(&other)), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 200, "stale-on-error");
    assert!(p.metric("meshwasm_jwt_auth.jwks_fetch_failures").unwrap_or(0) >= 2);
}

#[test]
fn bad_config_is_rejected_naming_the_field() {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let err = Proxy::builder(&host)
        .plugin(Plugin::new(module).name("jwt").config(br#"{"providers":{"p":{"isuer":"x"}}}"#))
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown field `isuer`"), "{err}");
}

#[test]
fn opaque_tokens_are_introspected_once_and_fail_closed() {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (c2, d2) = (calls.clone(), down.clone());
    let exp = now() + 600;
    let cfg = json!({
        "providers": {"opaque": {"introspection": {
            "cluster": "as", "path": "/introspect", "authority": "as.test",
            "client_id": "rs", "client_secret": "s3cret", "inactive_ttl_s": 0
        }, "claim_to_headers": [{"header": "x-sub", "claim": "sub"}]}},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["opaque"]}]
    });
    let mut p = Proxy::builder(&host)
        .start_time(SystemTime::now())
        .plugin(Plugin::new(module).name("jwt").config(cfg.to_string().as_bytes()))
        .upstream(
            "as",
            Upstream::handler(move |call| {
                c2.fetch_add(1, Ordering::SeqCst);
                assert_eq!(call.headers.get(":method"), Some("POST"));
                assert!(call.headers.get("authorization").unwrap().starts_with("Basic "));
                if d2.load(Ordering::SeqCst) {
                    return CallReply::response(500, [("content-type", "text/plain")], "boom");
                }
                let body = String::from_utf8_lossy(&call.body).to_string();
                let active = body.contains("token=good");
                CallReply::response(
                    200,
                    [("content-type", "application/json")],
                    json!({"active": active, "sub": "svc-a", "exp": exp}).to_string(),
                )
            }),
        )
        .build()
        .unwrap();
    let id = p.start(0, Request::get("/").header("authorization", "Bearer good-1")).unwrap();
    let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    assert_eq!(ex.upstream_request.unwrap().headers.get("x-sub"), Some("svc-a"));
    // Cached: no second call for the same token.
    let ex = p
        .send(0, Request::get("/").header("authorization", "Bearer good-1"), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let ex = p
        .send(0, Request::get("/").header("authorization", "Bearer bad-1"), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 401);
    down.store(true, Ordering::SeqCst);
    let ex = p
        .send(0, Request::get("/").header("authorization", "Bearer good-2"), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 503);
    assert!(!p.logs().iter().any(|l| l.message.contains("good-2")), "tokens are never logged");
}

#[test]
fn slow_jwks_bounds_the_wait_with_503_and_later_requests_pass() {
    let s = Signer::rsa("rsa1.pem", "r1");
    let body = jwks(&[&s]);
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let cfg = json!({
        "providers": {"idp": {"issuer": ISS, "remote_jwks": {"cluster": "idp", "uri": "https://idp.test/jwks",
                                                             "timeout_ms": 20000}}},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
        "key_wait_timeout_ms": 2000
    });
    let mut p = Proxy::builder(&host)
        .start_time(SystemTime::now())
        .plugin(Plugin::new(module).name("jwt").config(cfg.to_string().as_bytes()))
        .upstream(
            "idp",
            Upstream::handler(move |_| {
                CallReply::response(200, [("content-type", "application/json")], body.clone())
                    .after(Duration::from_secs(5))
            }),
        )
        .build()
        .unwrap();
    let tok = s.mint(&claims());
    let id = p.start(0, Request::get("/").header("authorization", bearer(&tok))).unwrap();
    p.advance(Duration::from_millis(1500));
    assert!(matches!(p.stream_state(id), Some(StreamState::Paused { .. })), "still waiting within the bound");
    p.advance(Duration::from_millis(1000));
    let ex = p.exchange(id).unwrap();
    assert_eq!(ex.status, 503, "the wait is bounded by key_wait_timeout_ms");
    assert_eq!(ex.response_headers.get("retry-after"), Some("1"));
    p.advance(Duration::from_secs(3));
    let ex =
        p.send(0, Request::get("/").header("authorization", bearer(&tok)), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "keys arrived after 5 s");
    assert_eq!(p.calls().len(), 1, "one fetch");
}

#[test]
fn a_lying_verify_signature_fails_the_self_test_and_is_not_used() {
    let s = Signer::rsa("rsa1.pem", "r1");
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let cfg = json!({
        "providers": {"idp": {"issuer": ISS, "local_jwks": serde_json::from_str::<Value>(&jwks(&[&s])).unwrap()}},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}]
    });
    let mut p = Proxy::builder(&host)
        .start_time(SystemTime::now())
        // Answers `result: true` to everything.
        .foreign_function("verify_signature", |_args| Ok(vec![0x08, 0x01]))
        .plugin(Plugin::new(module).name("jwt").config(cfg.to_string().as_bytes()))
        .build()
        .unwrap();
    assert!(p.logged("RSA/ECDSA verification: built-in"));
    let tok = s.mint(&claims());
    let ok =
        p.send(0, Request::get("/").header("authorization", bearer(&tok)), UpstreamReply::new(200)).unwrap();
    assert_eq!(ok.status, 200);
    let mut forged = tok.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let ex = p
        .send(0, Request::get("/").header("authorization", bearer(&forged)), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 401, "the pure-Rust path refuses the forged signature");
}

/// A proxy with `config` (JSON) in front of `idp`, keys loaded.
fn proxy_with(idp: &Idp, config: &Value) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let mut p = Proxy::builder(&host)
        .workers(1)
        .start_time(SystemTime::now())
        .plugin(Plugin::new(module).name("jwt").vm_id("jwt").config(config.to_string().as_bytes()))
        .upstream("idp", idp.upstream())
        .build()
        .unwrap();
    p.advance(Duration::from_millis(300));
    p
}

fn provider(extra: Value) -> Value {
    let mut p = json!({
        "issuer": ISS, "audiences": ["api"], "algorithms": ["ES256"],
        "remote_jwks": {"cluster": "idp", "uri": "https://idp.test/jwks"},
        "claim_to_headers": [{"header": "x-sub", "claim": "sub"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

#[test]
fn query_and_cookie_tokens_are_not_forwarded_upstream() {
    let s = Signer::ec("ec1.pem", "e1");
    let idp = Idp::new(jwks(&[&s]));
    let cfg = json!({
        "providers": {
            "idp": provider(json!({"from_params": ["access_token"], "from_cookies": ["at"]})),
            "keep": provider(json!({"from_params": ["kept_token"], "forward": true})),
        },
        "rules": [
            {"match": {"prefix": "/keep"}, "requires_any": ["keep"]},
            {"match": {"prefix": "/"}, "requires_any": ["idp"]},
        ],
    });
    let mut p = proxy_with(&idp, &cfg);
    let tok = s.mint(&claims());

    let ex = p
        .send(0, Request::get(&format!("/x?a=%2F1&access_token={tok}&b=&a=2")), UpstreamReply::new(200))
        .unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    let up = ex.upstream_request.unwrap();
    assert_eq!(
        up.headers.get(":path"),
        Some("/x?a=%2F1&b=&a=2"),
        "token parameter removed, the rest as sent"
    );
    assert_eq!(up.headers.get("x-sub"), Some("alice"));

    let ex = p.send(0, Request::get(&format!("/x?access_token={tok}")), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.upstream_request.unwrap().headers.get(":path"), Some("/x"), "no `?` left behind");

    let ex = p
        .send(
            0,
            Request::get("/x?q=1").header("cookie", format!("a=1; at={tok}; b=2")).header("cookie", "c=3"),
            UpstreamReply::new(200),
        )
        .unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    let up = ex.upstream_request.unwrap();
    assert_eq!(up.headers.get(":path"), Some("/x?q=1"));
    let cookies: Vec<&[u8]> = up.headers.get_all("cookie");
    assert_eq!(cookies, vec![&b"a=1; b=2"[..], &b"c=3"[..]], "token cookie removed, others kept");

    let ex =
        p.send(0, Request::get("/x").header("cookie", format!("at={tok}")), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    assert!(ex.upstream_request.unwrap().headers.get_all("cookie").is_empty(), "empty cookie header removed");

    // forward: true keeps the parameter.
    let path = format!("/keep?kept_token={tok}");
    let ex = p.send(0, Request::get(&path), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    assert_eq!(ex.upstream_request.unwrap().headers.get(":path"), Some(path.as_str()));
}

#[test]
fn allow_missing_or_failed_passes_but_only_vouches_for_verified_tokens() {
    let s = Signer::ec("ec1.pem", "e1");
    let idp = Idp::new(jwks(&[&s]));
    let cfg = json!({
        "providers": {"idp": provider(json!({}))},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"], "allow_missing_or_failed": true}],
    });
    let mut p = proxy_with(&idp, &cfg);

    let ex = p.send(0, Request::get("/x").header("x-sub", "mallory"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "missing token passes: {:?}", ex.local_reply);
    assert_eq!(
        ex.upstream_request.unwrap().headers.get("x-sub"),
        None,
        "client copy of a claim header removed"
    );

    let mut c = claims();
    c["exp"] = json!(now() - 600);
    // Expired, garbage, and a valid signature over another payload (sub swapped to mallory).
    let good = s.mint(&claims());
    let mut forged_claims = claims();
    forged_claims["sub"] = json!("mallory");
    let forged_payload = s.mint(&forged_claims).split('.').nth(1).unwrap().to_string();
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    for bad in [s.mint(&c), "x.y.z".to_string(), forged] {
        let ex = p
            .send(
                0,
                Request::get("/x").header("authorization", bearer(&bad)).header("x-sub", "mallory"),
                UpstreamReply::new(200),
            )
            .unwrap();
        assert_eq!(ex.status, 200, "invalid token passes: {:?}", ex.local_reply);
        let up = ex.upstream_request.unwrap();
        assert_eq!(up.headers.get("x-sub"), None, "an invalid token is not vouched for");
    }

    let ex = p
        .send(
            0,
            Request::get("/x").header("authorization", bearer(&s.mint(&claims()))).header("x-sub", "mallory"),
            UpstreamReply::new(200),
        )
        .unwrap();
    assert_eq!(ex.status, 200);
    let up = ex.upstream_request.unwrap();
    assert_eq!(up.headers.get_all("x-sub"), vec![&b"alice"[..]], "a valid token still sets its claims");
    assert_eq!(up.headers.get("authorization"), None, "and is stripped (forward: false)");
    assert!(p.metric("meshwasm_jwt_auth.denied.expired").is_none());
}

// ---- Issue 8: key rotation, remote symmetric keys, weak keys, NumericDates, `typ` ----

/// A proxy with `config` and `workers` workers in front of `idp`, keys loaded.
fn proxy_workers(idp: &Idp, config: &Value, workers: usize) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let mut p = Proxy::builder(&host)
        .workers(workers)
        .start_time(SystemTime::now())
        .plugin(Plugin::new(module).name("jwt").vm_id("jwt").config(config.to_string().as_bytes()))
        .upstream("idp", idp.upstream())
        .build()
        .unwrap();
    // One tick fetches, the next one installs the keys on the other workers.
    p.advance(Duration::from_millis(600));
    p
}

fn status(p: &mut Proxy, worker: usize, token: &str) -> u16 {
    let ex = p
        .send(worker, Request::get("/x").header("authorization", bearer(token)), UpstreamReply::new(200))
        .unwrap();
    ex.status
}

#[test]
fn key_rotation_invalidates_cached_tokens_on_every_worker_including_the_fetcher() {
    let old = Signer::ec("ec1.pem", "old");
    let new = Signer::rsa("rsa1.pem", "new");
    let idp = Idp::new(jwks(&[&old]));
    let remote = json!({"cluster": "idp", "uri": "https://idp.test/jwks", "cache_duration_s": 60});
    let cfg = json!({
        "providers": {"idp": provider(json!({"algorithms": ["ES256", "RS256"], "remote_jwks": remote}))},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    for workers in [1, 2] {
        *idp.body.lock().unwrap() = jwks(&[&old]);
        let mut p = proxy_workers(&idp, &cfg, workers);
        let tok = old.mint(&claims());
        for w in 0..workers {
            assert_eq!(status(&mut p, w, &tok), 200);
            assert_eq!(status(&mut p, w, &tok), 200, "served from worker {w}'s cache");
        }
        let hits = p.metric("meshwasm_jwt_auth.cache_hits").unwrap_or(0);
        assert_eq!(hits, workers as u64);
        // The IdP rotates the old key out; the background refresh (at 90 % of 60 s) fetches the new set.
        *idp.body.lock().unwrap() = jwks(&[&new]);
        let fetches = idp.calls();
        p.advance(Duration::from_secs(56));
        assert_eq!(idp.calls(), fetches + 1, "one refresh for the proxy");
        for w in 0..workers {
            assert_eq!(
                status(&mut p, w, &tok),
                401,
                "worker {w} ({workers} workers) forgot the old verification"
            );
            assert_eq!(status(&mut p, w, &new.mint(&claims())), 200);
        }
        assert_eq!(p.metric("meshwasm_jwt_auth.cache_hits").unwrap_or(0), hits, "no stale cache hit");
    }
}

fn oct(secret: &[u8], kid: &str) -> Value {
    use base64::Engine as _;
    json!({"kty": "oct", "kid": kid, "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)})
}

fn hs256(secret: &[u8], kid: &str) -> String {
    Signer::hs256(secret, Some(kid)).mint(&claims())
}

#[test]
fn symmetric_keys_from_a_remote_jwks_are_never_used() {
    const LOCAL: &[u8] = b"local-secret-local-secret-local!";
    const ATTACKER: &[u8] = b"attacker-chosen-secret-32-bytes!";
    let ec = Signer::ec("ec1.pem", "e1");
    // The JWKS endpoint (public, or tampered with) lists a shared secret the attacker knows.
    let body = json!({"keys": [ec.jwk(), oct(ATTACKER, "evil")]}).to_string();
    let idp = Idp::new(body);
    let cfg = json!({
        "providers": {"idp": provider(json!({"algorithms": ["HS256", "ES256"],
                                             "local_jwks": {"keys": [oct(LOCAL, "local")]}}))},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    let mut p = proxy_workers(&idp, &cfg, 1);
    assert_eq!(status(&mut p, 0, &hs256(ATTACKER, "evil")), 401, "remote oct key ignored");
    assert_eq!(status(&mut p, 0, &hs256(LOCAL, "local")), 200, "the configured secret works");
    assert_eq!(status(&mut p, 0, &ec.mint(&claims())), 200, "the remote public keys work");
}

#[test]
fn weak_keys_are_refused_at_configure_time() {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_jwt_auth")).unwrap();
    let build = |cfg: Value| {
        Proxy::builder(&host)
            .plugin(Plugin::new(module.clone()).name("jwt").config(cfg.to_string().as_bytes()))
            .build()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    let err = build(json!({"providers": {"p": {"issuer": ISS, "algorithms": ["HS256"],
                                              "local_jwks": {"keys": [oct(b"sixteen-byte-key", "k")]}}}}));
    assert!(
        err.contains("provider `p`.local_jwks.keys[0].k: the oct key is 16 bytes, HS256 needs at least 32"),
        "{err}"
    );
    let err = build(json!({"providers": {"p": {"issuer": ISS, "algorithms": ["HS512"],
                                              "local_jwks": {"keys": [oct(&[7u8; 48], "k")]}}}}));
    assert!(err.contains("HS512 needs at least 64"), "{err}");
    // A 1024-bit RSA public key (RFC 7518 §3.3 asks for 2048 at least).
    let pem = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDH1PQ7ODLVDx7LMu+ao1s+X1UB
Hjag9GbHDGeeRtF8vxfYW3jsbvX9X7QKpozRv7aS8c4yJAd1yZwciREU5vxry0qN
72yJk4tAT5EyqmWCZkgeMrST6oXTLALkZTIZjEPS5oMjKdSNLBKBa3KVv+6zFgS6
BE6Ry50kJEcudHapPwIDAQAB
-----END PUBLIC KEY-----
";
    let err = build(json!({"providers": {"p": {"issuer": ISS, "pem": [pem]}}}));
    assert!(err.contains("provider `p`.pem[0]: RSA key of 1024 bits is too small"), "{err}");
}

#[test]
fn fractional_numeric_dates_are_accepted_rounded_toward_the_safe_side() {
    let s = Signer::ec("ec1.pem", "e1");
    let idp = Idp::new(jwks(&[&s]));
    let cfg = json!({
        "providers": {"idp": provider(json!({"clock_skew_s": 0}))},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    let mut p = proxy_workers(&idp, &cfg, 1);
    let mut c = claims();
    c["exp"] = json!(now() as f64 + 3600.25);
    c["iat"] = json!(now() as f64 - 0.5);
    c["nbf"] = json!(now() as f64 - 10.75);
    assert_eq!(status(&mut p, 0, &s.mint(&c)), 200, "RFC 7519 §2: NumericDates may be fractional");
    let mut c = claims();
    c["nbf"] = json!(now() as f64 + 30.5);
    assert_eq!(status(&mut p, 0, &s.mint(&c)), 401, "nbf in the future");
    for bad in [json!("2000000000"), json!(-1.5), json!(1.9e19)] {
        let mut c = claims();
        c["exp"] = bad.clone();
        assert_eq!(status(&mut p, 0, &s.mint(&c)), 401, "{bad}");
    }
}

#[test]
fn typ_requirement_and_missing_issuer_audience_warning() {
    let s = Signer::ec("ec1.pem", "e1");
    let idp = Idp::new(jwks(&[&s]));
    let open =
        json!({"algorithms": ["ES256"], "remote_jwks": {"cluster": "idp", "uri": "https://idp.test/jwks"}});
    let cfg = json!({
        "providers": {"idp": provider(json!({"typ": "at+jwt"})), "open": open},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
    });
    let mut p = proxy_workers(&idp, &cfg, 1);
    assert!(p.logged("provider `open`: neither `issuer` nor `audiences` is set"), "configure-time warning");
    assert!(!p.logged("provider `idp`: neither"));
    let with_typ = |typ: Option<&str>| s.mint_with(&claims(), |h| h.typ = typ.map(str::to_owned));
    for ok in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        assert_eq!(status(&mut p, 0, &with_typ(Some(ok))), 200, "{ok}");
    }
    for bad in [Some("JWT"), None] {
        let ex = p
            .send(
                0,
                Request::get("/x").header("authorization", bearer(&with_typ(bad))),
                UpstreamReply::new(200),
            )
            .unwrap();
        assert_eq!(ex.status, 401, "{bad:?}");
        let w = ex.response_headers.get("www-authenticate").unwrap_or_default();
        assert!(w.contains("token type is not accepted"), "{w}");
    }
}
