//! The discovery filter's defences as the real `.wasm` in the wasmtime host: a registry (the `file`
//! source, served by a real HTTP server) that advertises the cloud metadata address, an unspecified
//! address and Envoy's admin port on loopback gets none of them published; and the debug endpoint is
//! off by default and, when on, answers only loopback clients or the configured header, GET only.

use std::time::Duration;

use meshwasm_endpoints::{EndpointSet, MAX_WEIGHT, set_key};
use meshwasm_host::{Exchange, Host, HostOptions, Plugin, Proxy, Request, Upstream, UpstreamReply};
use meshwasm_tests::artifacts;
use meshwasm_tests::fakes::server::{FakeResponse, FakeServer};

const VM: &str = "mesh";
/// Where Envoy's admin listens in our examples: what a hostile registry entry would aim at.
const ADMIN: &str = "127.0.0.1:9901";

fn host_proxy(config: &str, upstreams: Vec<(&str, Upstream)>) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_discovery")).unwrap();
    let mut b = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(module).name("discovery").vm_id(VM).config(config.as_bytes()));
    for (name, u) in upstreams {
        b = b.upstream(name, u);
    }
    b.build().unwrap()
}

fn published(p: &Proxy, service: &str) -> Option<EndpointSet> {
    p.shared_data(VM, &set_key(service)).map(|(b, _)| EndpointSet::decode(&b).unwrap())
}

fn addrs(p: &Proxy, service: &str) -> Vec<String> {
    published(p, service)
        .map(|s| s.endpoints.iter().map(|e| e.address.to_string()).collect())
        .unwrap_or_default()
}

fn metric(p: &Proxy, service: &str, name: &str) -> u64 {
    p.metric(&format!("meshwasm_discovery.{service}.{name}")).unwrap_or(0)
}

/// Advances in 100 ms steps until `f` holds (at most `limit` of virtual time).
fn advance_until(p: &mut Proxy, limit: Duration, mut f: impl FnMut(&Proxy) -> bool) -> bool {
    let mut t = Duration::ZERO;
    while t < limit {
        if f(p) {
            return true;
        }
        p.advance(Duration::from_millis(100));
        t += Duration::from_millis(100);
    }
    f(p)
}

/// A registry serving the hostile document below, and a proxy running `services` against it.
fn hostile_registry(services: &str) -> (FakeServer, Proxy) {
    let doc = format!(
        r#"{{"endpoints": ["169.254.169.254:80", "0.0.0.0:8080", "{ADMIN}", "10.0.0.1:8080",
            "[::ffff:169.254.169.254]:80", "[fe80::1]:80", "224.0.0.1:80", "10.0.0.3:0",
            {{"address": "10.0.0.2:8080", "weight": 4000000000}}]}}"#
    );
    let server = FakeServer::start(
        "registry",
        std::sync::Arc::new(move |_req| {
            let doc = doc.clone();
            Box::pin(async move { FakeResponse::text(200, &doc) })
        }),
    )
    .unwrap();
    let config = format!(r#"{{"tick": "100ms", "services": [{services}]}}"#);
    let mut p = host_proxy(&config, vec![("registry", Upstream::forward(server.addr()))]);
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&format!("[{services}]"))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        advance_until(&mut p, Duration::from_secs(3), |p| names.iter().all(|n| published(p, n).is_some())),
        "nothing published"
    );
    (server, p)
}

const API: &str =
    r#"{"name": "api", "refresh": "1s", "source": {"file": {"cluster": "registry", "path": "/r.json"}}}"#;

#[test]
fn a_registry_cannot_publish_metadata_unspecified_or_loopback_addresses() {
    let (_server, mut p) = hostile_registry(API);

    // Only the good ones are published; the heavy one is clamped.
    assert_eq!(addrs(&p, "api"), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    let set = published(&p, "api").unwrap();
    assert_eq!(set.endpoints[1].weight, MAX_WEIGHT);
    assert!(metric(&p, "api", "refused") >= 7, "refusals counted: {}", metric(&p, "api", "refused"));
    assert!(metric(&p, "api", "weight_clamped") >= 1);
    assert!(p.logged("169.254.169.254:80 (link-local address)"));
    assert!(p.logged(&format!("{ADMIN} (loopback address (allow_loopback is false))")));
    assert!(p.logged("0.0.0.0:8080 (unspecified address)"));

    // Every answer is screened again (no cursor for a file without ETag): counted per answer.
    let before = metric(&p, "api", "refused");
    p.advance(Duration::from_secs(3));
    assert!(metric(&p, "api", "refused") >= before + 7, "later answers screened too");
    assert_eq!(published(&p, "api").unwrap().version, 1, "unchanged answers publish nothing");
}

#[test]
fn loopback_is_published_only_for_the_service_that_opts_in() {
    // Two services read the same document: `api` with the defaults, `local` opted in to loopback.
    let local = r#"{"name": "local", "refresh": "1s", "allow_loopback": true,
        "source": {"file": {"cluster": "registry", "path": "/r.json"}}}"#;
    let (_server, p) = hostile_registry(&format!("{API}, {local}"));
    assert_eq!(addrs(&p, "api"), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    // `local` publishes the loopback entry, and nothing else more.
    assert_eq!(addrs(&p, "local"), ["10.0.0.1:8080", "10.0.0.2:8080", ADMIN]);
    assert!(metric(&p, "local", "refused") >= 6);
}

const DEBUG: &str = "/meshwasm/discovery";
const KEY_HEADER: &str = "x-discovery-debug";
const KEY: &str = "0123456789abcdef-debug";

fn debug_proxy(debug: &str) -> Proxy {
    let config = format!(
        r#"{{"tick": "100ms", {debug} "services": [
            {{"name": "api", "source": {{"static": {{"endpoints": [{{"address": "10.0.0.1:80"}}]}}}}}}]}}"#
    );
    let mut p = host_proxy(&config, vec![]);
    assert!(advance_until(&mut p, Duration::from_secs(2), |p| published(p, "api").is_some()));
    p
}

fn send(p: &mut Proxy, req: Request) -> Exchange {
    p.send(0, req, UpstreamReply::new(200).header("x-from", "upstream").body("upstream")).unwrap()
}

/// Answered by the filter with the published sets.
fn answered(ex: &Exchange) -> bool {
    ex.upstream_request.is_none()
        && ex.status == 200
        && String::from_utf8_lossy(&ex.response_body).contains(r#""a":"10.0.0.1:80""#)
}

/// Passed through untouched to the upstream.
fn passed(ex: &Exchange) -> bool {
    ex.local_reply.is_none()
        && ex.upstream_request.is_some()
        && ex.response_headers.get("x-from") == Some("upstream")
}

fn remote(req: Request) -> Request {
    req.property("source.address", "192.0.2.7:40000")
}

#[test]
fn debug_endpoint_is_off_by_default() {
    let mut p = debug_proxy("");
    let ex = send(&mut p, Request::get(DEBUG));
    assert!(passed(&ex), "without debug_path the request is a normal one: {:?}", ex.local_reply);
    let ex = send(&mut p, Request::get(DEBUG).header(KEY_HEADER, KEY));
    assert!(passed(&ex));
}

#[test]
fn debug_endpoint_answers_loopback_clients_only() {
    let mut p = debug_proxy(&format!(r#""debug_path": "{DEBUG}","#));
    assert!(answered(&send(&mut p, Request::get(DEBUG))), "a loopback client gets the sets");
    let ex = send(&mut p, remote(Request::get(DEBUG)));
    assert!(passed(&ex), "a remote client reached the debug endpoint: {:?}", ex.local_reply);
    let ex = send(&mut p, remote(Request::get(DEBUG).header(KEY_HEADER, KEY)));
    assert!(passed(&ex), "no header opens it unless configured");
    let ex = send(&mut p, Request::post(DEBUG));
    assert_eq!((ex.status, ex.response_headers.get("allow")), (405, Some("GET")));
}

#[test]
fn debug_endpoint_answers_loopback_clients_and_the_header_only() {
    let mut p = debug_proxy(&format!(
        r#""debug_path": "{DEBUG}", "debug_header": {{"name": "{KEY_HEADER}", "value": "{KEY}"}},"#
    ));
    // The host's default source address is loopback (127.0.0.1:50000), like a local curl.
    let ex = send(&mut p, Request::get(DEBUG));
    assert!(answered(&ex), "{:?}", ex.local_reply);
    assert_eq!(ex.response_headers.get("content-type"), Some("application/json"));
    let ex = send(&mut p, Request::get(DEBUG).property("source.address", "[::1]:40000"));
    assert!(answered(&ex));

    // A remote client: passed on as a normal request (the endpoint does not reveal itself).
    let ex = send(&mut p, remote(Request::get(DEBUG)));
    assert!(passed(&ex), "{:?}", ex.local_reply);
    let ex = send(&mut p, remote(Request::get(DEBUG)).property("source.address", "[::ffff:192.0.2.7]:1"));
    assert!(passed(&ex));
    let ex = send(&mut p, remote(Request::get(DEBUG).header(KEY_HEADER, "0123456789abcdef-debuX")));
    assert!(passed(&ex), "a wrong key passes through");
    let ex = send(&mut p, remote(Request::get(DEBUG).header("x-other", KEY)));
    assert!(passed(&ex));

    // The header opens it from anywhere.
    let ex = send(&mut p, remote(Request::get(DEBUG).header(KEY_HEADER, KEY)));
    assert!(answered(&ex), "{:?}", ex.local_reply);

    // GET only, for allowed clients; others still just pass.
    for method in ["POST", "PUT", "DELETE"] {
        let ex = send(&mut p, Request::new(method, DEBUG));
        assert_eq!(ex.status, 405, "{method}");
        assert_eq!(ex.response_headers.get("allow"), Some("GET"));
        assert!(ex.upstream_request.is_none());
        let ex = send(&mut p, remote(Request::new(method, DEBUG).header(KEY_HEADER, KEY)));
        assert_eq!(ex.status, 405, "{method} with the key");
        let ex = send(&mut p, remote(Request::new(method, DEBUG)));
        assert!(passed(&ex), "{method} from a remote client passes");
    }

    // Other paths pass, whoever asks.
    for path in ["/", "/meshwasm/discovery/", "/meshwasm/discovery?x=1", "/meshwasm/Discovery"] {
        let ex = send(&mut p, Request::get(path));
        assert!(passed(&ex), "{path}");
    }
}
