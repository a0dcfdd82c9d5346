//! RFC 7662 introspection in jwt-auth's .wasm in the wasmtime host, with a scripted introspection
//! endpoint and the virtual clock: the exact request (RFC 6749 §2.3.1 Basic encoding, `post`), active
//! answers cached until `exp` capped by `max_active_ttl_s`, inactive answers cached for
//! `inactive_ttl_s`, strictly parsed answers, and fail-closed / fail-open on errors and timeouts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use meshwasm_host::{
    CallReply, Exchange, Host, HostOptions, HttpCall, Module, Plugin, Proxy, Request, StreamState, Upstream,
    UpstreamReply,
};
use meshwasm_tests::artifacts::wasm_path;
use serde_json::{Value, json};

/// The virtual wall clock at t=0.
const T0: u64 = 1_800_000_000;

/// The last call the endpoint got: its `authorization` header and its form body.
type LastCall = (Option<String>, String);

/// The introspection endpoint: answers with the current reply, records what it was sent.
#[derive(Clone, Default)]
struct Endpoint {
    reply: Arc<Mutex<Option<CallReply>>>,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<LastCall>>>,
}

impl Endpoint {
    fn answer(&self, reply: CallReply) {
        *self.reply.lock().unwrap() = Some(reply);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn last(&self) -> LastCall {
        self.last.lock().unwrap().clone().unwrap()
    }
    fn upstream(&self) -> Upstream {
        let me = self.clone();
        Upstream::handler(move |call: &HttpCall| {
            me.calls.fetch_add(1, Ordering::SeqCst);
            *me.last.lock().unwrap() = Some((
                call.headers.get("authorization").map(str::to_owned),
                String::from_utf8_lossy(&call.body).into_owned(),
            ));
            me.reply.lock().unwrap().clone().unwrap_or_else(|| json_reply(200, json!({"active": false})))
        })
    }
}

fn json_reply(status: u16, body: Value) -> CallReply {
    CallReply::response(status, [("content-type", "application/json")], body.to_string())
}

fn proxy(ep: &Endpoint, extra: Value) -> Proxy {
    proxy_for(ep, extra, json!({}))
}

/// `extra` goes into the `introspection` object, `provider` into the provider.
fn proxy_for(ep: &Endpoint, extra: Value, provider: Value) -> Proxy {
    let mut introspection = json!({
        "cluster": "as", "path": "/introspect", "authority": "as.example.com",
        "client_id": "api", "client_secret": "api-secret", "timeout_ms": 500,
        "inactive_ttl_s": 10, "max_active_ttl_s": 60,
    });
    for (k, v) in extra.as_object().unwrap() {
        introspection[k] = v.clone();
    }
    let mut provider_cfg = json!({"introspection": introspection});
    for (k, v) in provider.as_object().unwrap() {
        provider_cfg[k] = v.clone();
    }
    let cfg = json!({
        "providers": {"as": provider_cfg},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["as"]}],
    });
    // One engine and compiled module for the whole test binary: each proxy only instantiates it.
    static HOST: OnceLock<(Host, Module)> = OnceLock::new();
    let (host, module) = HOST.get_or_init(|| {
        let host = Host::new(HostOptions::default()).unwrap();
        let module = host.load(wasm_path("meshwasm_jwt_auth")).unwrap();
        (host, module)
    });
    Proxy::builder(host)
        .start_time(UNIX_EPOCH + Duration::from_secs(T0))
        .plugin(Plugin::new(module.clone()).name("jwt").config(cfg.to_string().as_bytes()))
        .upstream("as", ep.upstream())
        .build()
        .unwrap()
}

fn send(p: &mut Proxy, token: &str) -> Exchange {
    p.send(
        0,
        Request::get("/orders").header("authorization", format!("Bearer {token}")),
        UpstreamReply::new(200),
    )
    .unwrap()
}

#[test]
fn request_format_and_active_cache_until_exp_capped() {
    let ep = Endpoint::default();
    ep.answer(json_reply(200, json!({"active": true, "scope": "read", "sub": "svc", "exp": T0 + 30})));
    let mut p = proxy(&ep, json!({}));
    let ex = send(&mut p, "opaque+1/=");
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    let (auth, body) = ep.last();
    assert_eq!(auth.as_deref(), Some("Basic YXBpOmFwaS1zZWNyZXQ="), "base64(\"api:api-secret\")");
    assert_eq!(body, "token=opaque%2B1%2F%3D&token_type_hint=access_token");
    for _ in 0..3 {
        assert_eq!(send(&mut p, "opaque+1/=").status, 200);
    }
    assert_eq!(ep.calls(), 1, "active answer cached");
    // At exp (30 s) the cached answer is gone: asked again.
    p.advance(Duration::from_secs(29));
    assert_eq!(send(&mut p, "opaque+1/=").status, 200);
    assert_eq!(ep.calls(), 1);
    p.advance(Duration::from_secs(2));
    ep.answer(json_reply(200, json!({"active": false})));
    assert_eq!(send(&mut p, "opaque+1/=").status, 401);
    assert_eq!(ep.calls(), 2);

    // An `exp` far away is capped by max_active_ttl_s (60 s): a revocation is seen within a minute.
    ep.answer(json_reply(200, json!({"active": true, "exp": T0 + 100_000})));
    assert_eq!(send(&mut p, "long-lived").status, 200);
    p.advance(Duration::from_secs(59));
    assert_eq!(send(&mut p, "long-lived").status, 200);
    assert_eq!(ep.calls(), 3);
    p.advance(Duration::from_secs(2));
    ep.answer(json_reply(200, json!({"active": false})));
    assert_eq!(send(&mut p, "long-lived").status, 401, "revoked token refused after the cap");
    assert_eq!(ep.calls(), 4);
}

#[test]
fn inactive_answers_are_cached_briefly() {
    let ep = Endpoint::default();
    ep.answer(json_reply(200, json!({"active": false})));
    let mut p = proxy(&ep, json!({}));
    let ex = send(&mut p, "revoked");
    assert_eq!(ex.status, 401);
    let challenge = ex.response_headers.get("www-authenticate").unwrap_or_default().to_owned();
    assert!(challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""), "{challenge}");
    p.advance(Duration::from_secs(5));
    assert_eq!(send(&mut p, "revoked").status, 401);
    assert_eq!(ep.calls(), 1, "inactive answer cached for inactive_ttl_s");
    p.advance(Duration::from_secs(6));
    assert_eq!(send(&mut p, "revoked").status, 401);
    assert_eq!(ep.calls(), 2, "asked again after inactive_ttl_s");
}

#[test]
fn basic_credentials_are_form_encoded_and_post_puts_them_in_the_body() {
    let ep = Endpoint::default();
    ep.answer(json_reply(200, json!({"active": true})));
    let mut p = proxy(&ep, json!({"client_id": "svc:a b", "client_secret": "p@ss:w+rd/%&="}));
    assert_eq!(send(&mut p, "t").status, 200);
    // RFC 6749 §2.3.1: base64("svc%3Aa+b:p%40ss%3Aw%2Brd%2F%25%26%3D").
    assert_eq!(ep.last().0.as_deref(), Some("Basic c3ZjJTNBYStiOnAlNDBzcyUzQXclMkJyZCUyRiUyNSUyNiUzRA=="));

    let mut p = proxy(&ep, json!({"auth_method": "post", "client_secret": "s e&c", "token_type_hint": ""}));
    assert_eq!(send(&mut p, "t2").status, 200);
    let (auth, body) = ep.last();
    assert_eq!(auth, None);
    assert_eq!(body, "token=t2&client_id=api&client_secret=s+e%26c");
}

#[test]
fn bad_answers_errors_and_timeouts_fail_closed_or_open() {
    let ep = Endpoint::default();
    // The endpoint failing on its side (5xx) or not answering may fail open when configured.
    for down in
        [json_reply(500, json!({"error": "server_error"})), json_reply(503, json!({})), CallReply::failure()]
    {
        ep.answer(down);
        let mut closed = proxy(&ep, json!({}));
        let ex = send(&mut closed, "t");
        assert_eq!(ex.status, 503, "fail closed: {:?}", ex.local_reply);
        let mut open = proxy(&ep, json!({"fail_open": true}));
        assert_eq!(send(&mut open, "t").status, 200, "fail_open lets it through");
    }
    // A 4xx (our credentials refused, rate limited) or a malformed answer says nothing about an outage
    // and always fails closed, with a log line.
    for (bad, logged) in [
        (json_reply(401, json!({"error": "invalid_client"})), "answered HTTP 401"),
        (json_reply(403, json!({})), "answered HTTP 403"),
        (json_reply(429, json!({})), "answered HTTP 429"),
        (json_reply(200, json!({"active": "true"})), "`active` is not a boolean"),
        (json_reply(200, json!({"active": true, "exp": "soon"})), "`exp` is not a number"),
        (json_reply(200, json!(["active"])), "not a JSON object"),
    ] {
        ep.answer(bad);
        for fail_open in [false, true] {
            let mut p = proxy(&ep, json!({"fail_open": fail_open}));
            let ex = send(&mut p, "t");
            assert_eq!(ex.status, 503, "{logged} (fail_open {fail_open}): {:?}", ex.local_reply);
            assert!(p.logged(logged), "{logged}: {:?}", p.logs());
            assert!(ex.response_headers.get("www-authenticate").is_none());
        }
    }
    // fail_open never admits a token the endpoint says is inactive.
    ep.answer(json_reply(200, json!({"active": false})));
    let mut open = proxy(&ep, json!({"fail_open": true}));
    assert_eq!(send(&mut open, "t").status, 401);

    // No answer: the request waits, then gets 503 at the 500 ms call timeout.
    ep.answer(CallReply::no_answer());
    let mut closed = proxy(&ep, json!({}));
    let id = closed.start(0, Request::get("/").header("authorization", "Bearer slow")).unwrap();
    assert!(matches!(closed.stream_state(id), Some(StreamState::Paused { .. })));
    closed.advance(Duration::from_millis(400));
    assert!(matches!(closed.stream_state(id), Some(StreamState::Paused { .. })), "still waiting");
    closed.advance(Duration::from_millis(300));
    assert_eq!(closed.stream_state(id), Some(StreamState::Complete));
    assert_eq!(closed.exchange(id).unwrap().status, 503);
}

#[test]
fn active_answers_get_the_providers_policy() {
    let ep = Endpoint::default();
    let provider = json!({"issuer": "https://as.example.com", "audiences": ["orders"],
                          "subjects": {"prefix": "svc-"}, "required_claims": ["client_id"]});
    let good = json!({"active": true, "iss": "https://as.example.com", "aud": ["orders"], "sub": "svc-a",
                      "client_id": "c1", "exp": T0 + 30, "token_type": "Bearer"});
    let answer = |ep: &Endpoint, member: &str, value: Value| {
        let mut a = good.clone();
        if value.is_null() {
            a.as_object_mut().unwrap().remove(member);
        } else {
            a[member] = value;
        }
        ep.answer(json_reply(200, a));
    };
    for fail_open in [false, true] {
        let mut p = proxy_for(&ep, json!({"fail_open": fail_open}), provider.clone());
        answer(&ep, "sub", json!("svc-a"));
        assert_eq!(send(&mut p, &format!("good-{fail_open}")).status, 200);
        for (i, (member, value, why)) in [
            ("aud", json!("payments"), "token audience is not accepted"),
            ("aud", Value::Null, "token audience is not accepted"),
            ("iss", json!("https://other-as.example.com"), "token issuer is not accepted"),
            ("sub", json!("alice"), "token subject is not accepted"),
            ("client_id", Value::Null, "token lacks a required claim"),
            ("nbf", json!(T0 + 600), "token is not yet valid"),
            ("token_type", json!("refresh_token"), "token type is not accepted"),
            ("token_type", json!("DPoP"), "token type is not accepted"),
        ]
        .into_iter()
        .enumerate()
        {
            answer(&ep, member, value.clone());
            let ex = send(&mut p, &format!("t-{fail_open}-{i}"));
            assert_eq!(ex.status, 401, "{member}={value}: {:?}", ex.local_reply);
            let w = ex.response_headers.get("www-authenticate").unwrap_or_default().to_owned();
            assert!(w.contains(r#"error="invalid_token""#) && w.contains(why), "{member}={value}: {w}");
        }
    }
    assert!(!ep.last().1.is_empty());
}

#[test]
fn fractional_dates_in_answers_are_accepted() {
    let ep = Endpoint::default();
    ep.answer(json_reply(200, json!({"active": true, "exp": T0 as f64 + 30.75, "iat": T0 as f64 - 0.5})));
    let mut p = proxy(&ep, json!({}));
    let ex = send(&mut p, "frac");
    assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    // Cached until exp rounded down (T0 + 30).
    p.advance(Duration::from_secs(29));
    assert_eq!(send(&mut p, "frac").status, 200);
    assert_eq!(ep.calls(), 1);
    p.advance(Duration::from_millis(1500));
    ep.answer(json_reply(200, json!({"active": false})));
    assert_eq!(send(&mut p, "frac").status, 401);
    assert_eq!(ep.calls(), 2, "asked again once past exp rounded down");
}

#[test]
fn concurrent_calls_are_capped_per_worker_and_the_cap_never_fails_open() {
    let ep = Endpoint::default();
    // A slow endpoint: answers arrive 300 ms after each call.
    ep.answer(json_reply(200, json!({"active": true, "exp": T0 + 60})).after(Duration::from_millis(300)));
    let mut p = proxy(&ep, json!({"max_concurrent_calls": 2, "fail_open": true}));
    let first: Vec<_> = (0..2)
        .map(|i| p.start(0, Request::get("/").header("authorization", format!("Bearer flood-{i}"))).unwrap())
        .collect();
    for id in &first {
        assert!(matches!(p.stream_state(*id), Some(StreamState::Paused { .. })));
    }
    // A flood of unique opaque tokens past the cap: 503 at once, no call, even with fail_open.
    for i in 2..20 {
        let id = p.start(0, Request::get("/").header("authorization", format!("Bearer flood-{i}"))).unwrap();
        assert_eq!(p.stream_state(id), Some(StreamState::Complete), "flood-{i}");
        let ex = p.exchange(id).unwrap();
        assert_eq!(ex.status, 503, "flood-{i}");
    }
    assert!(p.logged("introspection calls already in flight"));
    // A request for a token whose call is in flight still waits for that call.
    let again = p.start(0, Request::get("/").header("authorization", "Bearer flood-0")).unwrap();
    assert!(matches!(p.stream_state(again), Some(StreamState::Paused { .. })));
    p.advance(Duration::from_millis(400));
    for id in first.into_iter().chain([again]) {
        let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
        assert_eq!(ex.status, 200, "{:?}", ex.local_reply);
    }
    assert_eq!(ep.calls(), 2, "the cap held the endpoint to two calls");
    // Slots free again once the answers are in.
    let id = p.start(0, Request::get("/").header("authorization", "Bearer later")).unwrap();
    p.advance(Duration::from_millis(400));
    assert_eq!(p.finish(id, UpstreamReply::new(200)).unwrap().status, 200);
    assert_eq!(ep.calls(), 3);
}

/// A request waiting for an introspection answer past `key_wait_timeout` gets the engine's timeout
/// reply, naming introspection: the glue used to answer every timed-out wait `signing keys
/// unavailable`. (Waits time out on the tick, which runs when some provider has remote keys.)
#[test]
fn a_timed_out_introspection_wait_says_introspection_not_keys() {
    let ep = Endpoint::default();
    ep.answer(CallReply::no_answer());
    let cfg = json!({
        "key_wait_timeout": "1s",
        "providers": {
            "as": {"introspection": {"cluster": "as", "path": "/introspect", "authority": "as.example.com",
                                     "client_id": "api", "client_secret": "api-secret", "timeout": "5s"}},
            "keys": {"issuer": "https://idp.example.com",
                     "remote_jwks": {"cluster": "idp", "uri": "https://idp.example.com/jwks"}},
        },
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["as"]}],
    });
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(wasm_path("meshwasm_jwt_auth")).unwrap();
    let mut p = Proxy::builder(&host)
        .start_time(UNIX_EPOCH + Duration::from_secs(T0))
        .plugin(Plugin::new(module).name("jwt").config(cfg.to_string().as_bytes()))
        .upstream("as", ep.upstream())
        .upstream(
            "idp",
            Upstream::handler(|_: &HttpCall| CallReply::response(503, [("content-length", "0")], "")),
        )
        .build()
        .unwrap();
    let id = p.start(0, Request::get("/").header("authorization", "Bearer slow")).unwrap();
    p.advance(Duration::from_millis(900));
    assert!(matches!(p.stream_state(id), Some(StreamState::Paused { .. })), "still waiting");
    p.advance(Duration::from_millis(400));
    let ex = p.exchange(id).unwrap();
    assert_eq!(ex.status, 503);
    assert_eq!(ex.response_headers.get("retry-after"), Some("1"));
    assert_eq!(String::from_utf8_lossy(&ex.response_body), "token introspection unavailable\n");
    assert_eq!(ep.calls(), 1);
}

/// With introspection-only providers (no remote keys to refresh), `key_wait_timeout` still bounds a wait:
/// the tick that expires waiters runs whenever a provider introspects.
#[test]
fn key_wait_timeout_bounds_introspection_waits_without_remote_keys() {
    let ep = Endpoint::default();
    ep.answer(CallReply::no_answer());
    let cfg = json!({
        "key_wait_timeout": "1s",
        "providers": {
            "as": {"introspection": {"cluster": "as", "path": "/introspect", "authority": "as.example.com",
                                     "client_id": "api", "client_secret": "api-secret", "timeout": "30s"}},
        },
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["as"]}],
    });
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(wasm_path("meshwasm_jwt_auth")).unwrap();
    let mut p = Proxy::builder(&host)
        .start_time(UNIX_EPOCH + Duration::from_secs(T0))
        .plugin(Plugin::new(module).name("jwt").config(cfg.to_string().as_bytes()))
        .upstream("as", ep.upstream())
        .build()
        .unwrap();
    let id = p.start(0, Request::get("/").header("authorization", "Bearer slow")).unwrap();
    p.advance(Duration::from_millis(900));
    assert!(matches!(p.stream_state(id), Some(StreamState::Paused { .. })), "still waiting");
    p.advance(Duration::from_millis(400));
    let ex = p.exchange(id).unwrap();
    assert_eq!(ex.status, 503, "the 30 s call timeout, not key_wait_timeout, ended the wait");
    assert_eq!(String::from_utf8_lossy(&ex.response_body), "token introspection unavailable\n");
}
