//! Differential conformance of the `connection.*` properties: one mTLS connection through real Envoy and
//! the same client certificate in the wasmtime host, with the probe filter (`filters/probe`) reading
//! every TLS attribute in both, compared exactly. Certificates are made at test time by Debian's
//! `openssl` (a CA, an SVID-style client leaf and a server leaf; no key is committed).
//!
//! The host side seeds the properties through the library (`tls::connection_properties` with
//! `CertInfo::parse` of the client's and the listener's DER certificates), so the certificate-derived
//! values (first URI/DNS SAN, RFC 2253 subject, SHA-256 digest, of peer and local) are computed by the
//! host and compared with what Envoy's handshake gave. The TLS version and the SNI are inputs there: they
//! are given the values the handshake with Envoy used (the client offers TLS 1.3 and sends SNI
//! `orders.shop.svc`; Envoy's listener has `tls_inspector`, which is what gives it the SNI).
//! A second test runs the real handshake in the host: `meshwasm-host serve` with an mTLS listener
//! (rustls) and the same curl clients, so there the TLS version and SNI are the host's own. It uses the
//! `meshwasm-host` binary next to the test binary (`cargo test --workspace` builds it; with
//! `-p meshwasm-tests` alone run `cargo build -p meshwasm-host` first).
//! A second client certificate has a subject that takes RFC 2253 apart (a multi-valued RDN, UTF-8,
//! special characters, an attribute without a short name) and no DNS SAN; Envoy prints the values of
//! a multi-valued RDN last first too (`OU=b+OU=a`), and so must the host.
//!
//! Without `tls_inspector` on the listener Envoy reports the SNI as "" although the client sent one
//! (the inspector sets the connection's requested server name, not the TLS transport socket); the host's
//! `connection_properties(.., None)` gives the same "". Plaintext: `connection.mtls` is false,
//! `requested_server_name` is "" and every other TLS attribute (`tls_version` too) is absent, in both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshwasm_host::{Plugin, Proxy, Request, StreamState, Upstream, tls};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::conformance::{STREAM_TRACE_PREFIX, normalize};
use meshwasm_tests::envoy::{Cluster, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::pki::Pki;
use serde_json::{Value, json};

/// SNI the client sends (and a DNS SAN of the server certificate, so the client verifies it).
const SNI: &str = "orders.shop.svc";

/// proxy-wasm's `NotFound` status (the property is absent).
const NOT_FOUND: u64 = 1;

/// Every `connection.*` attribute the host computes, in the order the probe reads them.
const STRING_PROPERTIES: &[&str] = &[
    "tls_version",
    "requested_server_name",
    "uri_san_peer_certificate",
    "dns_san_peer_certificate",
    "subject_peer_certificate",
    "sha256_peer_certificate_digest",
    "uri_san_local_certificate",
    "dns_san_local_certificate",
    "subject_local_certificate",
];

/// The CA and the leaves: `server`, `client` (two URI and two DNS SANs, an escaped subject) and `odd`.
fn make_pki() -> Pki {
    let pki = Pki::new("meshwasm-tls-conformance-");
    pki.leaf(
        "server",
        &format!("DNS:{SNI},URI:spiffe://cluster.local/ns/shop/sa/orders"),
        "/C=DE/O=shop/OU=mesh/CN=orders",
        &[],
    );
    // Two URI SANs and two DNS SANs: Envoy exposes only the first of each; a subject with an
    // RFC 2253 special character.
    pki.leaf(
        "client",
        "URI:spiffe://cluster.local/ns/shop/sa/frontend,URI:spiffe://cluster.local/ns/other/sa/x,\
         DNS:frontend.shop.svc,DNS:second.shop.svc",
        "/O=shop\\, inc/OU=web/CN=frontend",
        &[],
    );
    // A subject the RFC 2253 printer must get right byte for byte: a multi-valued RDN, UTF-8, the
    // special characters, an attribute without a short name (organizationIdentifier, 2.5.4.97,
    // unknown to BoringSSL); only a URI SAN (the DNS SAN attribute is absent).
    pki.leaf(
        "odd",
        "URI:spiffe://cluster.local/ns/shop/sa/odd",
        "/O=shop/OU=a+OU=b/CN=J\u{fc}rgen <x>;y\"z/2.5.4.97=VATDE-1",
        &["-utf8", "-multivalue-rdn"],
    );
    pki
}

/// The probe script: every `connection.*` attribute, read in `on_request_headers`.
fn probe_script() -> Value {
    let mut ops = vec![json!({"op":"get_property","path":["connection","mtls"],"as":"bool"})];
    ops.extend(STRING_PROPERTIES.iter().map(|p| json!({"op":"get_property","path":["connection", p]})));
    json!({"name": "tls", "request_headers": {"ops": ops}})
}

/// `connection.<name>` -> the probe's op result (`{"status": .., "value": ..}`) from a stream trace.
fn properties(trace: &Value) -> BTreeMap<String, Value> {
    let ev = trace.as_array().into_iter().flatten().find(|e| e["cb"] == "request_headers");
    let ops = ev.map(|e| e["ops"].as_array().cloned().unwrap_or_default()).unwrap_or_default();
    let names = std::iter::once("mtls").chain(STRING_PROPERTIES.iter().copied());
    names.zip(ops).map(|(n, op)| (n.to_owned(), op)).collect()
}

/// The probe's stream trace in `logs` (the last one).
fn trace_in(logs: &str) -> Value {
    logs.lines()
        .rev()
        .filter_map(|l| l.find(STREAM_TRACE_PREFIX).map(|i| &l[i + STREAM_TRACE_PREFIX.len()..]))
        .filter_map(|j| serde_json::from_str::<Value>(j.trim()).ok())
        .find(|l| l["probe"] == "tls")
        .map(|l| normalize(&l["events"]))
        .unwrap_or(Value::Null)
}

fn downstream_tls(pki: &Pki) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": pki.path("server.pem")},
                    "private_key": {"filename": pki.path("server.key")},
                }],
                "validation_context": {"trusted_ca": {"filename": pki.path("ca.pem")}},
            }
        }
    })
}

/// curl's arguments for `GET /tls` over mTLS to `port` (TLS 1.3, SNI [`SNI`]) with client certificate `client`.
fn mtls_args(pki: &Pki, port: u16, client: &str) -> Vec<String> {
    let path = |p: &str| pki.path(p).display().to_string();
    vec![
        "--tlsv1.3".into(),
        "--cacert".into(),
        path("ca.pem"),
        "--cert".into(),
        path(&format!("{client}.pem")),
        "--key".into(),
        path(&format!("{client}.key")),
        "--resolve".into(),
        format!("{SNI}:{port}:127.0.0.1"),
        format!("https://{SNI}:{port}/tls"),
    ]
}

/// Runs curl with `args`, which must get a 200.
fn curl_ok(args: Vec<String>) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl: {}", String::from_utf8_lossy(&out.stderr));
}

/// What the probe saw in real Envoy, for one request each: over mTLS (TLS 1.3, SNI [`SNI`]) to a listener
/// with `tls_inspector`, the same to one without it, and plaintext.
struct EnvoySaw {
    tls: BTreeMap<String, Value>,
    tls_without_inspector: BTreeMap<String, Value>,
    /// Over mTLS with the `odd` client certificate.
    odd: BTreeMap<String, Value>,
    plain: BTreeMap<String, Value>,
}

fn in_envoy(pki: &Pki, backend: &Backend) -> EnvoySaw {
    let probe = || {
        WasmFilter::new("tls", wasm_path("meshwasm_probe")).root_id("tls").config(probe_script().to_string())
    };
    let mtls = |name: &str| {
        Listener::new(name, "backend")
            .without_envoy_headers()
            .wasm(probe())
            .transport_socket(downstream_tls(pki))
    };
    // The harness has no listener filters: take its JSON of the listener and add `tls_inspector`, which
    // is what sets the connection's requested server name (Envoy's TLS transport socket does not).
    let mut inspected =
        EnvoyConfig::new().listener(mtls("mtls")).bootstrap().unwrap()["static_resources"]["listeners"][0]
            .take();
    inspected["listener_filters"] = json!([{
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
        }
    }]);
    let envoy = EnvoyConfig::new()
        .raw_listener(&inspected.to_string())
        .listener(mtls("mtls-no-inspector"))
        .listener(Listener::new("plain", "backend").without_envoy_headers().wasm(probe()))
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap();
    let run = |args: Vec<String>| {
        let before = envoy.logs().len();
        curl_ok(args);
        // The probe logs its stream trace at on_delete, just after the response.
        let mut trace = Value::Null;
        meshwasm_tests::process::wait_until(Duration::from_secs(5), || {
            trace = trace_in(envoy.logs().get(before..).unwrap_or(""));
            !trace.is_null()
        });
        properties(&trace)
    };
    let over_mtls =
        |listener: &str, client: &str| run(mtls_args(pki, envoy.listener_addr(listener).port(), client));
    EnvoySaw {
        tls: over_mtls("mtls", "client"),
        tls_without_inspector: over_mtls("mtls-no-inspector", "client"),
        odd: over_mtls("mtls", "odd"),
        plain: run(vec![format!("http://{}/plain", envoy.listener_addr("plain"))]),
    }
}

/// The probe's properties in the wasmtime host for a request carrying `props`.
fn in_host(backend: SocketAddr, props: Vec<(String, Vec<u8>)>) -> BTreeMap<String, Value> {
    let host = meshwasm_host::Host::new(meshwasm_host::HostOptions::default()).unwrap();
    let module = host.load(wasm_path("meshwasm_probe")).unwrap();
    let mut proxy = Proxy::builder(&host)
        .upstream("backend", Upstream::forward(backend))
        .plugin(Plugin::new(module).name("tls").root_id("tls").config(probe_script().to_string()))
        .build()
        .unwrap();
    let mut req = Request::get("/tls");
    for (path, value) in props {
        req = req.property(&path, value);
    }
    let id = proxy.start(0, req).unwrap();
    if let Some(StreamState::WaitingUpstream) = proxy.stream_state(id) {
        proxy.finish(id, backend).unwrap();
    }
    assert_eq!(proxy.exchange(id).unwrap().status, 200);
    let logs: Vec<String> = proxy.take_logs().into_iter().map(|l| l.message).collect();
    properties(&trace_in(&logs.join("\n")))
}

#[test]
fn mtls_and_plaintext_connection_properties_match_envoy() {
    let pki = make_pki();
    let backend = Backend::start("backend").unwrap();
    let envoy = in_envoy(&pki, &backend);
    let (envoy_tls, envoy_plain) = (&envoy.tls, &envoy.plain);
    let value = |m: &BTreeMap<String, Value>, k: &str| m[k]["value"].clone();

    // Facts about Envoy (so both hosts cannot be equally wrong): the first SAN of each kind, the
    // RFC 2253 subject, the digest of the DER certificate, TLS 1.3 and the SNI the client sent.
    let client_der = pki.der("client");
    let digest: String = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&client_der))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(value(envoy_tls, "mtls"), true, "{envoy_tls:#?}");
    assert_eq!(value(envoy_tls, "tls_version"), "TLSv1.3");
    assert_eq!(value(envoy_tls, "requested_server_name"), SNI);
    assert_eq!(value(envoy_tls, "uri_san_peer_certificate"), "spiffe://cluster.local/ns/shop/sa/frontend");
    assert_eq!(value(envoy_tls, "dns_san_peer_certificate"), "frontend.shop.svc");
    assert_eq!(value(envoy_tls, "subject_peer_certificate"), "CN=frontend,OU=web,O=shop\\, inc");
    assert_eq!(value(envoy_tls, "sha256_peer_certificate_digest"), Value::String(digest));
    assert_eq!(value(envoy_tls, "uri_san_local_certificate"), "spiffe://cluster.local/ns/shop/sa/orders");
    assert_eq!(value(envoy_tls, "dns_san_local_certificate"), SNI);
    assert_eq!(value(envoy_tls, "subject_local_certificate"), "CN=orders,OU=mesh,O=shop,C=DE");
    assert_eq!(envoy.odd["dns_san_peer_certificate"]["status"], NOT_FOUND, "{:#?}", envoy.odd);
    // Without `tls_inspector` Envoy reports "" for the SNI the client did send; nothing else changes.
    let mut expected = envoy_tls.clone();
    expected.insert("requested_server_name".into(), json!({"op": "get_property", "status": 0, "value": ""}));
    assert_eq!(envoy.tls_without_inspector, expected, "without tls_inspector");
    assert_eq!(value(envoy_plain, "mtls"), false, "{envoy_plain:#?}");
    // Plaintext: no TLS attribute but the SNI, which is "" (found, empty) as without tls_inspector.
    assert_eq!(value(envoy_plain, "requested_server_name"), "");
    for absent in STRING_PROPERTIES.iter().filter(|p| **p != "requested_server_name") {
        assert_eq!(envoy_plain[*absent]["status"], NOT_FOUND, "plaintext {absent}: {envoy_plain:#?}");
    }

    // The same certificates in the host.
    let peer = tls::CertInfo::parse(&client_der).unwrap();
    let local = tls::CertInfo::parse(&pki.der("server")).unwrap();
    let host_tls =
        in_host(backend.addr(), tls::connection_properties(Some(&peer), Some(&local), "TLSv1.3", Some(SNI)));
    assert_eq!(&host_tls, envoy_tls, "mTLS: the wasmtime host differs from Envoy");
    let host_no_sni =
        in_host(backend.addr(), tls::connection_properties(Some(&peer), Some(&local), "TLSv1.3", None));
    assert_eq!(
        host_no_sni, envoy.tls_without_inspector,
        "mTLS, no SNI: the wasmtime host differs from Envoy"
    );
    let odd = tls::CertInfo::parse(&pki.der("odd")).unwrap();
    let host_odd =
        in_host(backend.addr(), tls::connection_properties(Some(&odd), Some(&local), "TLSv1.3", Some(SNI)));
    // Envoy's exact RFC 2253 subject, then the host's must be the same.
    assert_eq!(
        envoy.odd["subject_peer_certificate"]["value"].as_str().unwrap_or_default(),
        "2.5.4.97=#0C0756415444452D31,CN=J\\C3\\BCrgen \\<x\\>\\;y\\\"z,OU=b+OU=a,O=shop",
        "Envoy's RFC 2253 subject"
    );
    assert_eq!(host_odd, envoy.odd, "mTLS, odd subject: the wasmtime host differs from Envoy");
    let host_plain = in_host(backend.addr(), Vec::new());
    assert_eq!(&host_plain, envoy_plain, "plaintext: the wasmtime host differs from Envoy");
}

/// `meshwasm-host serve` next to this test binary (`cargo test --workspace` builds it; alone:
/// `cargo build -p meshwasm-host`), killed on drop, its stderr collected.
struct Serve {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Listener name -> address, from serve's start-up lines.
    addrs: BTreeMap<String, SocketAddr>,
}

impl Serve {
    fn start(config: &Path, listeners: usize) -> Serve {
        use std::io::BufRead;
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("meshwasm-host");
        assert!(bin.exists(), "{} is missing: build it with `cargo build -p meshwasm-host`", bin.display());
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut serve = Serve { child, log, addrs: BTreeMap::new() };
        // "meshwasm-host serve: listener `<name>` … on http(s)://<addr> …"
        meshwasm_tests::process::wait_until(Duration::from_secs(30), || {
            for line in serve.log().lines() {
                let Some(rest) = line.strip_prefix("meshwasm-host serve: listener `") else { continue };
                let name = rest.split('`').next().unwrap_or_default().to_owned();
                let addr = rest.split("://").nth(1).and_then(|a| a.split_whitespace().next());
                if let Some(addr) = addr.and_then(|a| a.parse().ok()) {
                    serve.addrs.insert(name, addr);
                }
            }
            serve.addrs.len() == listeners
        });
        assert_eq!(serve.addrs.len(), listeners, "serve did not start:\n{}", serve.log());
        serve
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same requests as [`in_envoy`] (but the listener without `tls_inspector`) through
/// `meshwasm-host serve`, whose mTLS listener fills `connection.*` from its own (rustls) handshake.
fn in_serve(
    pki: &Pki,
    backend: &Backend,
) -> (BTreeMap<String, Value>, BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let config = pki.path("serve.yaml");
    let filter = json!({"name": "tls", "root_id": "tls", "wasm": wasm_path("meshwasm_probe"), "config": probe_script().to_string()});
    let yaml = json!({
        "listeners": [
            {"name": "mtls", "address": "127.0.0.1:0", "filters": [filter],
             "tls": {"cert": pki.path("server.pem"), "key": pki.path("server.key"), "client_ca": pki.path("ca.pem")},
             "route": {"cluster": "backend"}},
            {"name": "plain", "address": "127.0.0.1:0", "filters": [filter], "route": {"cluster": "backend"}},
        ],
        "clusters": [{"name": "backend", "type": "static", "endpoints": [backend.addr().to_string()]}],
    });
    std::fs::write(&config, yaml.to_string()).unwrap();
    let serve = Serve::start(&config, 2);
    let run = |args: Vec<String>| {
        let before = serve.log().len();
        curl_ok(args);
        let mut trace = Value::Null;
        meshwasm_tests::process::wait_until(Duration::from_secs(5), || {
            trace = trace_in(serve.log().get(before..).unwrap_or(""));
            !trace.is_null()
        });
        properties(&trace)
    };
    let port = serve.addrs["mtls"].port();
    let tls = run(mtls_args(pki, port, "client"));
    let odd = run(mtls_args(pki, port, "odd"));
    let plain = run(vec![format!("http://{}/plain", serve.addrs["plain"])]);
    (tls, odd, plain)
}

/// The real handshake in the host: `serve`'s mTLS listener (rustls) against Envoy's (BoringSSL), the
/// same client certificates, TLS version and SNI; here the TLS version and SNI are the host's own.
#[test]
fn serve_mtls_handshake_connection_properties_match_envoy() {
    let pki = make_pki();
    let backend = Backend::start("backend").unwrap();
    let envoy = in_envoy(&pki, &backend);
    let (tls, odd, plain) = in_serve(&pki, &backend);
    assert_eq!(tls, envoy.tls, "mTLS: serve differs from Envoy (with tls_inspector)");
    assert_eq!(plain, envoy.plain, "plaintext: serve differs from Envoy");
    assert_eq!(odd, envoy.odd, "mTLS, odd subject: serve differs from Envoy");
}
