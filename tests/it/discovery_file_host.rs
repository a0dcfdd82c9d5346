//! The discovery filter's `file` source (a JSON document over HTTP with ETag) as the real `.wasm` in the
//! wasmtime host, its calls forwarded to a small real HTTP server in the test that serves the document with
//! an ETag and answers a matching `If-None-Match` with 304. Virtual time drives the polls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwasm_endpoints::{EndpointSet, set_key};
use meshwasm_host::{CallOutcome, Host, HostOptions, Plugin, Proxy, Upstream};
use meshwasm_tests::artifacts;
use meshwasm_tests::fakes::server::{Failure, FakeResponse, FakeServer};

const VM: &str = "mesh";
const CONFIG: &str = r#"{"tick": "100ms", "services": [{"name": "api", "refresh": "1s", "timeout": "1s",
    "max_retry": "1s", "source": {"file": {"cluster": "registry", "path": "/registry.json"}}}]}"#;

/// The web server: document `(version, body)`, ETag `"v<version>"`.
struct FileServer {
    server: FakeServer,
    doc: Arc<Mutex<(u64, String)>>,
}

impl FileServer {
    fn start(body: &str) -> Self {
        let doc = Arc::new(Mutex::new((1, body.to_owned())));
        let d = doc.clone();
        let server = FakeServer::start(
            "file",
            Arc::new(move |req| {
                let (version, body) = d.lock().unwrap().clone();
                let etag = format!("\"v{version}\"");
                Box::pin(async move {
                    if req.path != "/registry.json" {
                        FakeResponse::text(404, "not found")
                    } else if req.header("if-none-match") == Some(etag.as_str()) {
                        FakeResponse::text(304, "").header("etag", &etag)
                    } else {
                        FakeResponse::text(200, &body).header("etag", &etag)
                    }
                })
            }),
        )
        .unwrap();
        Self { server, doc }
    }

    fn set(&self, body: &str) {
        let mut doc = self.doc.lock().unwrap();
        *doc = (doc.0 + 1, body.to_owned());
    }
}

fn proxy(file: &FileServer) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_discovery")).unwrap();
    Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(module).name("discovery").vm_id(VM).config(CONFIG.as_bytes()))
        .upstream("registry", Upstream::forward(file.server.addr()))
        .build()
        .unwrap()
}

fn published(p: &Proxy) -> Option<EndpointSet> {
    p.shared_data(VM, &set_key("api")).map(|(b, _)| EndpointSet::decode(&b).unwrap())
}

fn addrs(p: &Proxy) -> Vec<String> {
    published(p).map(|s| s.endpoints.iter().map(|e| e.address.to_string()).collect()).unwrap_or_default()
}

fn version(p: &Proxy) -> u64 {
    published(p).map_or(0, |s| s.version)
}

fn metric(p: &Proxy, name: &str) -> u64 {
    p.metric(&format!("meshwasm_discovery.api.{name}")).unwrap_or(0)
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

fn status(outcome: &Option<CallOutcome>) -> Option<u16> {
    match outcome {
        Some(CallOutcome::Response { headers, .. }) => headers.get(":status").and_then(|s| s.parse().ok()),
        _ => None,
    }
}

#[test]
fn file_source_publishes_and_a_304_with_etag_keeps_the_set() {
    let file = FileServer::start(
        r#"{"endpoints": ["10.0.0.1:8080", {"address": "10.0.0.2:8080", "weight": 3, "zone": "z1"}]}"#,
    );
    let mut p = proxy(&file);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p).is_some()), "nothing published");
    let set = published(&p).unwrap();
    assert_eq!(addrs(&p), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!((set.version, set.endpoints[1].weight, set.endpoints[1].zone.as_deref()), (1, 3, Some("z1")));

    // Unchanged document: every later poll sends the ETag back and gets a 304; the set stays.
    p.advance(Duration::from_secs(4));
    let calls = p.calls();
    assert!(calls.len() >= 4, "about one poll per second, got {}", calls.len());
    assert_eq!(calls[0].headers.get(":path"), Some("/registry.json"));
    assert_eq!(calls[0].headers.get("if-none-match"), None);
    assert_eq!(status(&calls[0].outcome), Some(200));
    for c in &calls[1..] {
        if c.outcome.is_none() {
            continue; // still in flight at the end of the window
        }
        assert_eq!(c.headers.get("if-none-match"), Some("\"v1\""));
        assert_eq!(status(&c.outcome), Some(304));
    }
    assert_eq!((version(&p), metric(&p, "updates"), metric(&p, "errors")), (1, 1, 0));
    assert_eq!(addrs(&p), ["10.0.0.1:8080", "10.0.0.2:8080"]);

    // The document changes (bare-array form this time): the new set is published, its ETag used next.
    file.set(r#"["10.0.0.3:8080", "10.0.0.1:8080"]"#);
    assert!(
        advance_until(&mut p, Duration::from_secs(3), |p| version(p) == 2),
        "the change was not followed"
    );
    assert_eq!(addrs(&p), ["10.0.0.1:8080", "10.0.0.3:8080"]);
    let before = p.calls().len();
    p.advance(Duration::from_secs(3));
    let later = &p.calls()[before..];
    assert!(!later.is_empty());
    assert!(later.iter().all(|c| c.headers.get("if-none-match") == Some("\"v2\"")), "new ETag not sent back");
    assert_eq!(version(&p), 2);
}

#[test]
fn garbage_and_unreadable_documents_keep_the_last_set() {
    let file = FileServer::start(r#"{"endpoints": ["10.1.0.1:80", "10.1.0.2:80"]}"#);
    let mut p = proxy(&file);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| version(p) == 1));

    // Not JSON at all (served as 200 without an ETag).
    file.server.fail(Failure::Garbage("<html>maintenance</html>".into()));
    p.advance(Duration::from_secs(4));
    assert!(metric(&p, "errors") >= 2, "garbage not counted as an error");
    assert_eq!((version(&p), addrs(&p)), (1, vec!["10.1.0.1:80".to_owned(), "10.1.0.2:80".to_owned()]));

    // JSON, but no entry readable: also an error, the last set stays.
    file.server.recover();
    file.set(r#"{"endpoints": ["nonsense", 42, {"address": "not-an-ip:80"}]}"#);
    let errors = metric(&p, "errors");
    p.advance(Duration::from_secs(4));
    assert!(metric(&p, "errors") > errors, "an unreadable document not counted as an error");
    assert_eq!(version(&p), 1);
    assert_eq!(addrs(&p), ["10.1.0.1:80", "10.1.0.2:80"]);

    // A server error keeps it too.
    file.server.fail(Failure::Status(500));
    let errors = metric(&p, "errors");
    p.advance(Duration::from_secs(3));
    assert!(metric(&p, "errors") > errors);
    assert_eq!(version(&p), 1);

    // Some entries readable: those are published, the rest skipped.
    file.server.recover();
    file.set(r#"{"endpoints": ["10.1.0.3:80", "garbage", {"address": "10.1.0.4:80", "weight": 0}]}"#);
    assert!(advance_until(&mut p, Duration::from_secs(4), |p| version(p) == 2), "recovery not published");
    assert_eq!(addrs(&p), ["10.1.0.3:80"]);
}

#[test]
fn oversized_document_fails_the_poll_and_keeps_the_last_set() {
    let file = FileServer::start(r#"{"endpoints": ["10.1.0.1:80"]}"#);
    let mut p = proxy(&file);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| version(p) == 1));

    // A valid document, but padded past the 4 MiB cap: not read, logged, the last set stays.
    let padding = " ".repeat(5 << 20);
    file.set(&format!(r#"{{"endpoints": ["10.1.0.9:80"]{padding}}}"#));
    let errors = metric(&p, "errors");
    p.advance(Duration::from_secs(3));
    assert!(metric(&p, "errors") > errors, "oversized answer not counted as an error");
    assert!(p.logged("over the 4194304-byte cap"));
    assert_eq!((version(&p), addrs(&p)), (1, vec!["10.1.0.1:80".to_owned()]));

    // Back under the cap: published.
    file.set(r#"{"endpoints": ["10.1.0.9:80"]}"#);
    assert!(advance_until(&mut p, Duration::from_secs(4), |p| version(p) == 2));
    assert_eq!(addrs(&p), ["10.1.0.9:80"]);
}
