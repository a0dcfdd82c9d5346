//! Every discovery source not covered by `discovery_envoy.rs` / `balancer_discovery_envoy.rs`, in real
//! Envoy (2 workers) with discovery and balancer sharing a `vm_id`: requests reach exactly the real
//! backends the registry lists (`x-backend-instance`), and a registry change shifts traffic.
//! Eureka, Nacos and Kubernetes are protocol fakes; the `file` source reads a JSON document from a small
//! HTTP server in the test that honours `If-None-Match`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::fakes::eureka::{Eureka, EurekaInstance};
use meshwasm_tests::fakes::kubernetes::{Kubernetes, Slice, SliceEndpoint};
use meshwasm_tests::fakes::nacos::{Nacos, NacosInstance};
use meshwasm_tests::fakes::server::{FakeResponse, FakeServer};
use meshwasm_tests::process::{http_request, wait_until};

const WAIT: Duration = Duration::from_secs(8);

/// Envoy with discovery (one service `api` from `source`) and the balancer on the same VM.
fn envoy(source: &str, registry: Option<(&str, SocketAddr)>) -> Envoy {
    let discovery = format!(
        r#"{{"tick": "100ms", "services": [{{"name": "api", "refresh": "200ms", "timeout": "1s",
             "allow_loopback": true, "source": {source}}}]}}"#
    );
    let balancer =
        r#"{"service_from": [{"fixed": "api"}], "refresh_interval": "200ms", "services": {"api": {}}}"#;
    let mut config = EnvoyConfig::new()
        .concurrency(2)
        .listener(
            Listener::new("main", "picked")
                .wasm(
                    WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                        .vm_id("meshwasm")
                        .config(discovery),
                )
                .wasm(
                    WasmFilter::new("balancer", wasm_path("meshwasm_balancer"))
                        .vm_id("meshwasm")
                        .config(balancer),
                ),
        )
        .cluster(Cluster::original_dst("picked"));
    if let Some((name, addr)) = registry {
        config = config.cluster(Cluster::static_hosts(name, &[addr]));
    }
    config.start().unwrap()
}

fn answered_by(envoy: &Envoy) -> Option<String> {
    let r = http_request(envoy.listener_addr("main"), "GET", "/", &[], b"", Duration::from_secs(5)).ok()?;
    (r.status == 200).then(|| r.header(INSTANCE_HEADER).unwrap_or_default().to_owned())
}

/// Instances that answered `n` requests; `None` if any request failed.
fn instances(envoy: &Envoy, n: usize) -> Option<BTreeSet<String>> {
    (0..n).map(|_| answered_by(envoy)).collect()
}

fn names(backends: &[&Backend]) -> BTreeSet<String> {
    backends.iter().map(|b| b.name().to_owned()).collect()
}

/// Waits until traffic goes to exactly `expected` (every request succeeding), then checks it stays so.
fn assert_traffic_reaches_exactly(envoy: &Envoy, expected: &[&Backend], what: &str) {
    let want = names(expected);
    assert!(
        wait_until(WAIT, || instances(envoy, 12).as_ref() == Some(&want)),
        "{what}: traffic never went to exactly {want:?} (last: {:?})",
        instances(envoy, 12)
    );
    // Stable: a second sample, spread over both workers' connections, matches too.
    let again = instances(envoy, 20).expect("a request failed");
    assert_eq!(again, want, "{what}");
}

#[test]
fn eureka_registrations_shift_traffic() {
    let b = Backend::start_many("eu", 3).unwrap();
    let eureka = Eureka::start("/eureka").unwrap();
    eureka.set_instances(
        "api",
        vec![
            EurekaInstance::up(b[0].addr()),
            EurekaInstance::up(b[1].addr()),
            // Not UP: must not get traffic although it is a live backend.
            EurekaInstance::up(b[2].addr()).status("DOWN"),
        ],
    );
    let envoy = envoy(r#"{"eureka": {"cluster": "eureka"}}"#, Some(("eureka", eureka.addr())));
    assert_traffic_reaches_exactly(&envoy, &[&b[0], &b[1]], "eureka initial");

    eureka.set_instances("api", vec![EurekaInstance::up(b[1].addr()), EurekaInstance::up(b[2].addr())]);
    assert_traffic_reaches_exactly(&envoy, &[&b[1], &b[2]], "eureka after change");
    assert!(eureka.requests().iter().all(|r| r.path == "/eureka/apps/API"), "app defaults to API");
}

#[test]
fn nacos_registrations_shift_traffic() {
    let b = Backend::start_many("na", 3).unwrap();
    let nacos = Nacos::start().unwrap();
    nacos.set_instances(
        "api",
        vec![
            NacosInstance::new(b[0].addr()),
            NacosInstance::new(b[1].addr()).unhealthy(),
            NacosInstance::new(b[2].addr()).disabled(),
        ],
    );
    let envoy = envoy(r#"{"nacos": {"cluster": "nacos"}}"#, Some(("nacos", nacos.addr())));
    assert_traffic_reaches_exactly(&envoy, &[&b[0]], "nacos initial");

    nacos.set_instances(
        "api",
        vec![NacosInstance::new(b[1].addr()), NacosInstance::new(b[2].addr()).weight(2.0)],
    );
    assert_traffic_reaches_exactly(&envoy, &[&b[1], &b[2]], "nacos after change");
    assert!(nacos.requests().iter().all(|r| r.param("serviceName") == Some("api")));
}

/// One slice per backend: all backends share 127.0.0.1 and differ only by port.
fn slices(ready: &[&Backend], not_ready: &[&Backend]) -> Vec<Slice> {
    let slice = |b: &Backend, ready: bool| Slice {
        endpoints: vec![if ready {
            SliceEndpoint::ready(b.addr().ip())
        } else {
            SliceEndpoint::not_ready(b.addr().ip())
        }],
        ports: vec![("http".into(), b.port())],
    };
    ready.iter().map(|b| slice(b, true)).chain(not_ready.iter().map(|b| slice(b, false))).collect()
}

#[test]
fn kubernetes_endpointslices_shift_traffic() {
    let b = Backend::start_many("k8", 3).unwrap();
    let kube = Kubernetes::start().unwrap();
    kube.require_token("t0ken");
    kube.set_slices("shop", "api", slices(&[&b[0], &b[1]], &[&b[2]]));
    let envoy = envoy(
        r#"{"kubernetes": {"cluster": "kube", "namespace": "shop", "port_name": "http",
            "headers": {"authorization": "Bearer t0ken"}}}"#,
        Some(("kube", kube.addr())),
    );
    assert_traffic_reaches_exactly(&envoy, &[&b[0], &b[1]], "kubernetes initial");

    // b[0] goes away, b[2] becomes ready.
    kube.set_slices("shop", "api", slices(&[&b[1], &b[2]], &[]));
    assert_traffic_reaches_exactly(&envoy, &[&b[1], &b[2]], "kubernetes after change");
}

#[test]
fn static_list_sends_traffic_to_exactly_the_listed_backends() {
    let b = Backend::start_many("st", 3).unwrap();
    let source = format!(
        r#"{{"static": {{"endpoints": [{{"address": "{}"}}, {{"address": "{}", "weight": 2}}]}}}}"#,
        b[0].addr(),
        b[2].addr()
    );
    let envoy = envoy(&source, None);
    assert_traffic_reaches_exactly(&envoy, &[&b[0], &b[2]], "static");
    assert_eq!(b[1].request_count(), 0, "an unlisted backend got traffic");
}

/// The `file` source's web server: one JSON document with a strong ETag, 304 on a matching
/// `If-None-Match`.
struct FileServer {
    server: FakeServer,
    doc: Arc<Mutex<(u64, String)>>,
}

impl FileServer {
    fn start() -> Self {
        let doc: Arc<Mutex<(u64, String)>> = Arc::new(Mutex::new((0, "[]".into())));
        let d = doc.clone();
        let server = FakeServer::start(
            "file",
            Arc::new(move |req| {
                let (version, body) = d.lock().unwrap().clone();
                let etag = format!("\"v{version}\"");
                Box::pin(async move {
                    if req.path != "/registry.json" {
                        return FakeResponse::text(404, "not found");
                    }
                    if req.header("if-none-match") == Some(etag.as_str()) {
                        return FakeResponse::text(304, "").header("etag", &etag);
                    }
                    FakeResponse {
                        status: 200,
                        headers: vec![
                            ("content-type".into(), "application/json".into()),
                            ("etag".into(), etag),
                        ],
                        body: body.into_bytes(),
                    }
                })
            }),
        )
        .unwrap();
        Self { server, doc }
    }

    fn publish(&self, backends: &[&Backend]) {
        let eps: Vec<String> = backends.iter().map(|b| format!(r#"{{"address": "{}"}}"#, b.addr())).collect();
        let mut doc = self.doc.lock().unwrap();
        *doc = (doc.0 + 1, format!(r#"{{"endpoints": [{}]}}"#, eps.join(", ")));
    }

    fn version(&self) -> u64 {
        self.doc.lock().unwrap().0
    }
}

#[test]
fn file_document_changes_shift_traffic_with_etag_round_trip() {
    let b = Backend::start_many("fi", 3).unwrap();
    let file = FileServer::start();
    file.publish(&[&b[0], &b[1]]);
    let envoy = envoy(
        r#"{"file": {"cluster": "registry", "path": "/registry.json"}}"#,
        Some(("registry", file.server.addr())),
    );
    assert_traffic_reaches_exactly(&envoy, &[&b[0], &b[1]], "file initial");

    // ETag round trip: after the first 200, polls send the ETag back and get 304s; the set stays.
    let etag = format!("\"v{}\"", file.version());
    assert!(
        wait_until(WAIT, || file.server.requests().iter().any(|r| r.header("if-none-match") == Some(&etag))),
        "the ETag was never sent back as If-None-Match"
    );
    assert_traffic_reaches_exactly(&envoy, &[&b[0], &b[1]], "file after 304s");

    // The document changes: traffic follows.
    file.publish(&[&b[2]]);
    assert_traffic_reaches_exactly(&envoy, &[&b[2]], "file after change");
    let etag = format!("\"v{}\"", file.version());
    assert!(
        wait_until(WAIT, || file.server.requests().iter().any(|r| r.header("if-none-match") == Some(&etag))),
        "the new ETag was never sent back"
    );
}
