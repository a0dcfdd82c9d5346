//! token-injector's .wasm in the meshwasm wasmtime host, with a scripted token endpoint and the
//! virtual clock: single flight across paused requests and workers, refresh ahead of expiry, failures
//! (IdP error, 5xx, connection failure, timeout) with back-off, and config rejection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use meshwasm_host::{
    CallReply, Host, HostOptions, HttpCall, Module, Plugin, Proxy, Request, StreamState, Upstream,
    UpstreamReply,
};
use meshwasm_tests::artifacts::wasm_path;
use serde_json::{Value, json};

const SECRET: &str = "host-test-secret";

fn config(extra: Value) -> String {
    let mut v = json!({
        "token_endpoint": {"cluster": "idp", "path": "/oauth2/token", "authority": "idp.example.com", "timeout_ms": 1000},
        "client_id": "orders",
        "client_secret": SECRET,
        "scopes": ["inventory:read"],
        "audience": "https://inventory/",
        "match": [{"authority": "inventory.internal"}],
        "retry_backoff": {"initial_ms": 1000, "max_ms": 4000},
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

/// A scripted token endpoint: answers from a queue of replies (the last one repeats), numbering tokens.
#[derive(Clone)]
struct Idp {
    script: Arc<Mutex<Vec<CallReply>>>,
    count: Arc<AtomicUsize>,
}

impl Idp {
    fn new() -> Self {
        Idp { script: Arc::new(Mutex::new(Vec::new())), count: Arc::new(AtomicUsize::new(0)) }
    }

    fn then(&self, reply: CallReply) -> &Self {
        self.script.lock().unwrap().push(reply);
        self
    }

    fn upstream(&self) -> Upstream {
        let me = self.clone();
        Upstream::handler(move |_call: &HttpCall| {
            let n = me.count.fetch_add(1, Ordering::SeqCst) + 1;
            let mut s = me.script.lock().unwrap();
            if s.len() > 1 { s.remove(0) } else { s.first().cloned().unwrap_or_else(|| token(n, 600)) }
        })
    }
}

fn token(n: usize, expires_in: u64) -> CallReply {
    CallReply::response(
        200,
        [("content-type", "application/json")],
        json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in})
            .to_string(),
    )
}

/// One engine and compiled module for the whole test binary: each proxy only instantiates it.
fn host() -> &'static (Host, Module) {
    static HOST: OnceLock<(Host, Module)> = OnceLock::new();
    HOST.get_or_init(|| {
        let host = Host::new(HostOptions::default()).unwrap();
        let module = host.load(wasm_path("meshwasm_token_injector")).unwrap();
        (host, module)
    })
}

fn proxy(idp: &Idp, workers: usize, cfg: String) -> Proxy {
    let (host, module) = host();
    Proxy::builder(host)
        .workers(workers)
        .plugin(Plugin::new(module.clone()).name("injector").vm_id("mesh").config(cfg.as_bytes()))
        .upstream("idp", idp.upstream())
        .build()
        .unwrap()
}

fn req() -> Request {
    Request::get("/items").authority("inventory.internal")
}

fn sent_auth(ex: &meshwasm_host::Exchange) -> Option<String> {
    ex.upstream_request.as_ref()?.headers.get("authorization").map(str::to_owned)
}

#[test]
fn single_flight_across_paused_requests_and_workers() {
    let idp = Idp::new();
    idp.then(token(1, 600).after(Duration::from_millis(300)));
    let mut p = proxy(&idp, 2, config(json!({})));

    // Three requests on worker 0 and two on worker 1 arrive before the token: all pause.
    let ids: Vec<_> = [0, 0, 0, 1, 1].iter().map(|&w| p.start(w, req()).unwrap()).collect();
    for id in &ids {
        assert!(matches!(p.stream_state(*id), Some(StreamState::Paused { .. })), "{:?}", p.stream_state(*id));
    }
    assert_eq!(p.calls().len(), 1, "one token request for the whole proxy");
    let call = &p.calls()[0];
    assert_eq!(call.upstream, "idp");
    assert_eq!(call.headers.get(":path"), Some("/oauth2/token"));
    assert_eq!(call.headers.get(":authority"), Some("idp.example.com"));
    assert_eq!(call.timeout, Duration::from_millis(1000));
    assert_eq!(
        String::from_utf8(call.body.clone()).unwrap(),
        "grant_type=client_credentials&scope=inventory%3Aread&audience=https%3A%2F%2Finventory%2F"
    );
    assert!(call.headers.get("authorization").unwrap().starts_with("Basic "));

    // The token arrives: workers resume (worker 1 on its next tick, from shared data).
    p.advance(Duration::from_millis(500));
    for id in ids {
        assert_eq!(p.stream_state(id), Some(StreamState::WaitingUpstream));
        let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
        assert_eq!(sent_auth(&ex).as_deref(), Some("Bearer tok-1"));
    }
    assert_eq!(idp.count.load(Ordering::SeqCst), 1);

    // Later requests on both workers: no pause, no new call.
    for w in [0, 1] {
        let ex =
            p.send(w, req().header("authorization", "Bearer from-client"), UpstreamReply::new(200)).unwrap();
        assert_eq!(sent_auth(&ex).as_deref(), Some("Bearer tok-1"), "client header replaced");
    }
    assert_eq!(p.calls().len(), 1);
    assert!(p.metric("meshwasm_token_injector.injected").unwrap() >= 7);
    assert_eq!(p.metric("meshwasm_token_injector.paused"), Some(5));
    assert!(!p.logs().iter().any(|l| l.message.contains("tok-1") || l.message.contains(SECRET)));
}

#[test]
fn non_matching_requests_pass_untouched() {
    let idp = Idp::new();
    let mut p = proxy(&idp, 1, config(json!({"overwrite_existing": false})));
    let ex = p.send(0, Request::get("/").authority("other.internal"), UpstreamReply::new(200)).unwrap();
    assert_eq!(sent_auth(&ex), None);
    // overwrite_existing false: a client's own credentials are kept.
    let ex = p.send(0, req().header("authorization", "Bearer mine"), UpstreamReply::new(200)).unwrap();
    assert_eq!(sent_auth(&ex).as_deref(), Some("Bearer mine"));
    assert!(p.calls().is_empty());
    assert_eq!(p.metric("meshwasm_token_injector.skipped"), Some(2));
}

#[test]
fn refreshes_ahead_of_expiry_on_the_virtual_clock() {
    let idp = Idp::new();
    idp.then(token(1, 100)).then(token(2, 100));
    let mut p = proxy(&idp, 2, config(json!({"refresh": {"fraction": 0.8, "before_expiry_s": 30}})));
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    assert_eq!(sent_auth(&ex).as_deref(), Some("Bearer tok-1"));
    // Refresh is due at min(80 s, 70 s) = 70 s. Before: nothing.
    p.advance(Duration::from_secs(69));
    assert_eq!(p.calls().len(), 1);
    // At 70 s a tick refreshes in the background: one call for both workers.
    p.advance(Duration::from_secs(2));
    assert_eq!(p.calls().len(), 2, "background refresh");
    for w in [0, 1] {
        let id = p.start(w, req()).unwrap();
        assert_eq!(p.stream_state(id), Some(StreamState::WaitingUpstream), "no wait after refresh");
        let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
        assert_eq!(sent_auth(&ex).as_deref(), Some("Bearer tok-2"));
    }
    assert_eq!(p.calls().len(), 2);
}

#[test]
fn idp_error_gives_503_logs_the_error_and_backs_off() {
    let idp = Idp::new();
    idp.then(CallReply::response(
        401,
        [("content-type", "application/json")],
        r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
    ))
    .then(token(9, 600));
    let mut p = proxy(&idp, 1, config(json!({})));
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert!(ex.upstream_request.is_none());
    assert!(ex.body_text().contains("invalid_client"), "{}", ex.body_text());
    // The IdP's free-text description is for the operator's log, not for every client.
    assert!(!ex.body_text().contains("client authentication failed"), "{}", ex.body_text());
    assert_eq!(ex.response_headers.get("x-meshwasm-token-injector"), Some("no-token"));
    assert!(p.logged("invalid_client"));
    assert!(p.logged("client authentication failed"));
    assert!(!p.logs().iter().any(|l| l.message.contains(SECRET)));

    // Within the 1 s back-off: immediate 503, no new call.
    p.advance(Duration::from_millis(500));
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert_eq!(p.calls().len(), 1);
    // After it: the next request fetches again and succeeds.
    p.advance(Duration::from_millis(600));
    let id = p.start(0, req()).unwrap();
    let ex = p.finish(id, UpstreamReply::new(200)).unwrap();
    assert_eq!(sent_auth(&ex).as_deref(), Some("Bearer tok-9"));
    assert_eq!(p.calls().len(), 2);
    assert_eq!(p.metric("meshwasm_token_injector.fetch_failures"), Some(1));
}

#[test]
fn backoff_doubles_on_consecutive_failures() {
    let idp = Idp::new();
    idp.then(CallReply::response(500, [("content-type", "text/plain")], "oops"));
    let mut p = proxy(&idp, 1, config(json!({})));
    // Failures at t=0, then retries allowed after 1 s, 2 s, 4 s, 4 s (max).
    let mut expected_calls = 0;
    for wait_ms in [1000u64, 2000, 4000, 4000] {
        let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
        expected_calls += 1;
        assert_eq!(ex.status, 503);
        assert!(ex.body_text().contains("HTTP 500"), "{}", ex.body_text());
        assert_eq!(p.calls().len(), expected_calls);
        p.advance(Duration::from_millis(wait_ms - 10));
        assert_eq!(p.send(0, req(), UpstreamReply::new(200)).unwrap().status, 503);
        assert_eq!(p.calls().len(), expected_calls, "no retry within the back-off of {wait_ms} ms");
        p.advance(Duration::from_millis(10));
    }
}

#[test]
fn connection_failure_and_timeout_fail_waiting_requests() {
    let idp = Idp::new();
    idp.then(CallReply::failure());
    let mut p = proxy(&idp, 1, config(json!({})));
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert!(ex.body_text().contains("no response"), "{}", ex.body_text());

    // Timeout: the IdP never answers; the paused requests get 503 at the call timeout (1 s).
    let idp = Idp::new();
    idp.then(CallReply::no_answer());
    let mut p = proxy(&idp, 1, config(json!({})));
    let a = p.start(0, req()).unwrap();
    let b = p.start(0, req()).unwrap();
    assert!(matches!(p.stream_state(a), Some(StreamState::Paused { .. })));
    p.advance(Duration::from_millis(900));
    assert!(
        matches!(p.stream_state(b), Some(StreamState::Paused { .. })),
        "still waiting before the timeout"
    );
    p.advance(Duration::from_millis(300));
    for id in [a, b] {
        assert_eq!(p.stream_state(id), Some(StreamState::Complete));
        let ex = p.exchange(id).unwrap();
        assert_eq!(ex.status, 503, "{}", ex.body_text());
    }
    assert_eq!(p.calls().len(), 1);
}

#[test]
fn unknown_cluster_gives_503_and_bad_config_is_rejected() {
    let idp = Idp::new();
    let cfg = config(json!({"token_endpoint": {"cluster": "nope", "path": "/t", "authority": "x"}}));
    let mut p = proxy(&idp, 1, cfg);
    let ex = p.send(0, req(), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 503);
    assert!(ex.body_text().contains("cluster `nope`"), "{}", ex.body_text());

    let (host, module) = host();
    for (bad, field) in [
        (config(json!({"scopse": ["x"]})), "scopse"),
        (config(json!({"refresh": {"fraction": 2.0}})), "refresh.fraction"),
        (config(json!({"client_secret": ""})), "client_secret"),
    ] {
        let err = Proxy::builder(host)
            .plugin(Plugin::new(module.clone()).name("injector").config(bad.as_bytes()))
            .upstream("idp", idp.upstream())
            .build()
            .err()
            .expect("config must be rejected");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn waiting_requests_survive_the_dispatching_request_going_away() {
    let idp = Idp::new();
    idp.then(token(1, 600).after(Duration::from_millis(500)))
        .then(token(2, 600).after(Duration::from_millis(50)));
    let mut p = proxy(&idp, 1, config(json!({})));
    let first = p.start(0, req()).unwrap();
    let second = p.start(0, req()).unwrap();
    assert_eq!(p.calls().len(), 1);
    // The client of the request whose context dispatched the token call goes away: the proxy cancels
    // that call. The waiting request must still get a token, from a new call, well before max_wait.
    p.cancel(first);
    p.advance(Duration::from_millis(400));
    assert_eq!(p.calls().len(), 2, "token request re-dispatched after the cancellation");
    assert_eq!(p.stream_state(second), Some(StreamState::WaitingUpstream));
    let ex = p.finish(second, UpstreamReply::new(200)).unwrap();
    assert_eq!(sent_auth(&ex).as_deref(), Some("Bearer tok-2"));
}
