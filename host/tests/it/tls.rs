//! `serve` with TLS: an mTLS listener whose filters see Envoy's `connection.*` properties from the real
//! handshake, the handshakes it refuses, and TLS (with a client certificate and a SPIFFE SAN check) to
//! upstreams. The CA and SPIFFE-style leaf certificates are made at test time; no key is committed.
#![allow(deprecated)] // rustls' ring provider (see src/serve_config/tls.rs)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

use crate::cli_common::*;
use crate::cli_serve::{Backend, Serve, serve_backend_conn};

const TRUST_DOMAIN: &str = "spiffe://cluster.local";

/// A test CA that issues SPIFFE workload certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, in DER and as PEM files.
struct Leaf {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A short-lived leaf for `ns/<ns>/sa/<sa>` with URI SAN `spiffe://cluster.local/ns/<ns>/sa/<sa>`,
    /// DNS SAN `<sa>.<ns>.svc` and subject CN `<sa>`, O `<ns>`, usable as server and client certificate.
    fn leaf(&self, dir: &Path, ns: &str, sa: &str) -> Leaf {
        let now = std::time::SystemTime::now();
        self.leaf_valid(dir, ns, sa, now - Duration::from_secs(60), now + Duration::from_secs(3600))
    }

    fn leaf_valid(
        &self,
        dir: &Path,
        ns: &str,
        sa: &str,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::OrganizationName, ns);
        params.distinguished_name.push(DnType::CommonName, sa);
        params.subject_alt_names = vec![
            SanType::URI(format!("{TRUST_DOMAIN}/ns/{ns}/sa/{sa}").try_into().unwrap()),
            SanType::DnsName(format!("{sa}.{ns}.svc").try_into().unwrap()),
        ];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{sa}.pem")), dir.join(format!("{sa}-key.pem")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            der: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            cert_path,
            key_path,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Ca) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    roots
}

/// A rustls client trusting `ca`, presenting `leaf` when given.
fn client_config(ca: &Ca, leaf: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca));
    Arc::new(match leaf {
        Some(l) => builder.with_client_auth_cert(vec![l.der.clone()], l.key.clone_key()).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// Sends `count` GETs on one TLS connection (server name `sni`), returning each response's status and
/// body, or the first I/O error (a refused handshake surfaces as the server's alert).
fn https_gets(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
    count: usize,
) -> std::io::Result<Vec<(u16, String)>> {
    let conn = rustls::ClientConnection::new(config, ServerName::try_from(sni.to_string()).unwrap()).unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut out = Vec::new();
    for i in 0..count {
        let close = if i + 1 == count { "close" } else { "keep-alive" };
        write!(tls, "GET /r{i} HTTP/1.1\r\nhost: orders.shop.svc\r\nconnection: {close}\r\n\r\n")?;
        tls.flush()?;
        out.push(read_response(&mut tls)?);
    }
    Ok(out)
}

/// One HTTP/1.1 response with a content-length body.
fn read_response(r: &mut impl Read) -> std::io::Result<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if r.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The properties the WAT filter below logs, in order.
const PROPS: &[&str] = &[
    "connection.mtls",
    "connection.tls_version",
    "connection.requested_server_name",
    "connection.uri_san_peer_certificate",
    "connection.dns_san_peer_certificate",
    "connection.subject_peer_certificate",
    "connection.sha256_peer_certificate_digest",
    "connection.uri_san_local_certificate",
    "connection.subject_local_certificate",
    "request.scheme",
];

/// A filter that, on every request, logs `prop <name>=<value>` for each property in [`PROPS`] that
/// `proxy_get_property` finds (the raw bytes: `connection.mtls` is one byte, 0 or 1).
fn wat_property_logger() -> String {
    let mut data = String::new();
    let mut calls = String::new();
    let mut at = 1024;
    for name in PROPS {
        data.push_str(&format!("  (data (i32.const {at}) \"{name}\")\n"));
        calls.push_str(&format!("    (call $show (i32.const {at}) (i32.const {}))\n", name.len()));
        at += name.len() + 8;
    }
    format!(
        r#"(module
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  {WAT_BASE}
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (data (i32.const 8192) "prop ")
{data}
  ;; "prop <name>=<value>" built at 8192, logged at info.
  (func $show (param $p i32) (param $n i32)
    (local $vl i32)
    (if (call $get_property (local.get $p) (local.get $n) (i32.const 2048) (i32.const 2052))
      (then (return)))
    (local.set $vl (i32.load (i32.const 2052)))
    (memory.copy (i32.const 8197) (local.get $p) (local.get $n))
    (i32.store8 (i32.add (i32.const 8197) (local.get $n)) (i32.const 61))
    (memory.copy (i32.add (i32.const 8198) (local.get $n)) (i32.load (i32.const 2048)) (local.get $vl))
    (drop (call $log (i32.const 2) (i32.const 8192) (i32.add (i32.add (local.get $n) (i32.const 6)) (local.get $vl)))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
{calls}    (i32.const 0)))"#
    )
}

/// A backend that speaks TLS with `leaf`, requiring a client certificate from `client_ca`.
fn tls_backend(name: &'static str, leaf: &Leaf, client_ca: &Ca) -> SocketAddr {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca)), provider())
            .build()
            .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let hits = std::sync::atomic::AtomicUsize::new(0);
                let seen = std::sync::Mutex::new(Vec::new());
                serve_backend_conn(rustls::StreamOwned::new(conn, tcp), name, &hits, &seen);
            });
        }
    });
    addr
}

fn prop_line(log: &str, name: &str) -> Vec<String> {
    let needle = format!("prop {name}=");
    log.lines().filter_map(|l| l.split(&needle).nth(1)).map(str::to_string).collect()
}

/// One mTLS setup: a CA, the listener's `orders` certificate, a `frontend` client certificate, and
/// serve with an mTLS listener (running the property logger) in front of a plain backend.
struct MeshFixture {
    ca: Ca,
    frontend: Leaf,
    backend: Backend,
    serve: Serve,
    dir: PathBuf,
}

fn mtls_fixture(test: &str) -> MeshFixture {
    mtls_fixture_with(test, "client_ca: ca.pem")
}

/// Like [`mtls_fixture`], with these client-side fields in the listener's `tls:`.
fn mtls_fixture_with(test: &str, client_auth: &str) -> MeshFixture {
    let dir = scratch_dir(test);
    let ca = Ca::new("meshwasm test CA");
    ca.write(&dir, "ca.pem");
    let orders = ca.leaf(&dir, "shop", "orders");
    let frontend = ca.leaf(&dir, "shop", "frontend");
    wasm_file(&dir, "props.wasm", &wat_property_logger());
    let backend = Backend::start("plain");
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n\
             - name: inbound\n\
             \x20 address: '127.0.0.1:0'\n\
             \x20 filters: [{{name: props, wasm: props.wasm}}]\n\
             \x20 tls: {{cert: {}, key: {}, {client_auth}}}\n\
             \x20 route: {{cluster: backend}}\n\
             clusters: [{{name: backend, type: static, endpoints: ['{}']}}]\n",
            orders.cert_path.display(),
            orders.key_path.display(),
            backend.addr
        ),
    )
    .unwrap();
    let serve = Serve::start(&config);
    MeshFixture { ca, frontend, backend, serve, dir }
}

/// A client presenting a SPIFFE certificate from the listener's CA gets through, and every stream on
/// the connection sees Envoy's `connection.*` properties of that handshake.
#[test]
fn mtls_listener_fills_connection_properties_from_the_handshake() {
    let f = mtls_fixture("tls-mtls-ok");
    let replies =
        https_gets(f.serve.addr, client_config(&f.ca, Some(&f.frontend)), "orders.shop.svc", 2).unwrap();
    assert_eq!(replies.len(), 2);
    for (i, (status, body)) in replies.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body, &format!("plain GET /r{i} "));
    }
    assert_eq!(f.backend.hits(), 2);
    // The second stream's lines may still be on their way to the log.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while prop_line(&f.serve.log(), "request.scheme").len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = f.serve.log();
    let digest: String = Sha256::digest(f.frontend.der.as_ref()).iter().map(|b| format!("{b:02x}")).collect();
    let expected = [
        ("connection.mtls", "\u{1}".to_string()),
        ("connection.tls_version", "TLSv1.3".into()),
        ("connection.requested_server_name", "orders.shop.svc".into()),
        ("connection.uri_san_peer_certificate", format!("{TRUST_DOMAIN}/ns/shop/sa/frontend")),
        ("connection.dns_san_peer_certificate", "frontend.shop.svc".into()),
        // OpenSSL's RFC 2253 form, as Envoy prints it: last RDN first (rcgen encodes CN, then O;
        // `openssl x509 -noout -subject -nameopt RFC2253` prints the same).
        ("connection.subject_peer_certificate", "O=shop,CN=frontend".into()),
        ("connection.sha256_peer_certificate_digest", digest),
        ("connection.uri_san_local_certificate", format!("{TRUST_DOMAIN}/ns/shop/sa/orders")),
        ("connection.subject_local_certificate", "O=shop,CN=orders".into()),
        ("request.scheme", "https".into()),
    ];
    for (name, value) in expected {
        // Both streams of the one connection see the same value.
        assert_eq!(prop_line(&log, name), vec![value.clone(), value], "{name}\n{log}");
    }
    let _ = std::fs::remove_dir_all(&f.dir);
}

/// The mTLS listener refuses a client without a certificate, a client certificate from another CA,
/// plaintext HTTP and an expired certificate; none of them reaches the filters or the backend.
#[test]
fn mtls_listener_refuses_missing_foreign_and_plaintext_clients() {
    let f = mtls_fixture("tls-mtls-refused");
    // The client sees the server's alert, or a reset or broken pipe when the close overtakes it; the
    // server's log line says why it refused (failures 1 and 2 on the one worker are both logged).
    let none = https_gets(f.serve.addr, client_config(&f.ca, None), "orders.shop.svc", 1);
    none.expect_err("no client certificate must be refused");
    assert!(f.serve.wait_log("failed: peer sent no certificates (1 failed so far"), "{}", f.serve.log());

    let other = Ca::new("another CA");
    let rogue = other.leaf(&f.dir, "shop", "rogue");
    let foreign = https_gets(f.serve.addr, client_config(&f.ca, Some(&rogue)), "orders.shop.svc", 1);
    foreign.expect_err("a certificate from another CA must be refused");
    assert!(f.serve.wait_log("UnknownIssuer (2 failed so far"), "{}", f.serve.log());

    let mut plain = TcpStream::connect(f.serve.addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/"), "plaintext got an HTTP answer: {:?}", String::from_utf8_lossy(&raw));

    // An expired certificate from the right CA (the 4th failure, logged).
    let day = Duration::from_secs(86_400);
    let now = std::time::SystemTime::now();
    let expired = f.ca.leaf_valid(&f.dir, "shop", "expired", now - 2 * day, now - day);
    let old = https_gets(f.serve.addr, client_config(&f.ca, Some(&expired)), "orders.shop.svc", 1);
    old.expect_err("an expired certificate must be refused");
    assert!(f.serve.wait_log("(4 failed so far"), "{}", f.serve.log());
    let log = f.serve.log();
    let line = log.lines().find(|l| l.contains("(4 failed so far")).unwrap_or_default();
    assert!(line.contains("xpired"), "{line}");

    assert_eq!(f.backend.hits(), 0);
    assert!(prop_line(&f.serve.log(), "connection.mtls").is_empty(), "{}", f.serve.log());
    let _ = std::fs::remove_dir_all(&f.dir);
}

/// A TLS cluster verifies the upstream against its CA and SPIFFE SAN (or its `sni` name) and presents
/// a client certificate: the right CA and SAN, or the right SNI, reach the TLS backend (which requires
/// that certificate); a wrong CA, SAN or SNI, or no client certificate, fails the request with 503.
#[test]
fn tls_cluster_verifies_the_upstream_and_presents_a_client_certificate() {
    let dir = scratch_dir("tls-upstream");
    let ca = Ca::new("mesh CA");
    ca.write(&dir, "ca.pem");
    let other = Ca::new("other CA");
    other.write(&dir, "other-ca.pem");
    let orders = ca.leaf(&dir, "shop", "orders");
    let frontend = ca.leaf(&dir, "shop", "frontend");
    let backend = tls_backend("tls-orders", &orders, &ca);
    let client_cert =
        format!("cert: {}, key: {},", frontend.cert_path.display(), frontend.key_path.display());
    let orders_id = format!("{TRUST_DOMAIN}/ns/shop/sa/orders");
    // (listener and cluster name, the cluster's tls fields)
    let cases = [
        ("good", format!("ca: ca.pem, {client_cert} verify_san: ['{orders_id}']")),
        ("wrong-ca", format!("ca: other-ca.pem, {client_cert} verify_san: ['{orders_id}']")),
        (
            "wrong-san",
            format!("ca: ca.pem, {client_cert} verify_san: ['{TRUST_DOMAIN}/ns/shop/sa/payments']"),
        ),
        ("sni", format!("ca: ca.pem, {client_cert} sni: orders.shop.svc")),
        ("wrong-sni", format!("ca: ca.pem, {client_cert} sni: payments.shop.svc")),
        ("no-client-cert", format!("ca: ca.pem, verify_san: ['{orders_id}']")),
    ];
    let mut yaml = String::from("listeners:\n");
    for (name, _) in &cases {
        yaml.push_str(&format!("- {{name: {name}, address: '127.0.0.1:0', route: {{cluster: {name}}}}}\n"));
    }
    yaml.push_str("clusters:\n");
    for (name, tls) in &cases {
        yaml.push_str(&format!(
            "- {{name: {name}, type: static, endpoints: ['{backend}'], tls: {{{tls}}}}}\n"
        ));
    }
    let config = dir.join("serve.yaml");
    std::fs::write(&config, yaml).unwrap();
    let serve = Serve::start_listeners(&config, cases.len());
    let get = |addr: SocketAddr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n").unwrap();
        read_response(&mut s).unwrap()
    };
    let ok = (200, "tls-orders GET /orders ".to_string());
    assert_eq!(get(serve.addrs[0]), ok, "right CA, SPIFFE SAN and client certificate");
    for (i, reason) in [(1, "UnknownIssuer"), (2, "NotValidForName"), (4, "not valid for name"), (5, "")] {
        let (status, body) = get(serve.addrs[i]);
        assert_eq!(status, 503, "{}: {body}", cases[i].0);
        assert!(
            body.contains("transport failure reason:") && body.contains(reason),
            "{}: {body}",
            cases[i].0
        );
    }
    assert_eq!(get(serve.addrs[3]), ok, "name checked against sni");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `require_client_certificate: false`: a client without a certificate gets through with
/// `connection.mtls` false and no peer identity; one with a certificate is verified and identified.
#[test]
fn optional_client_certificates_set_mtls_only_when_presented() {
    let f = mtls_fixture_with("tls-optional", "client_ca: ca.pem, require_client_certificate: false");
    let anonymous = https_gets(f.serve.addr, client_config(&f.ca, None), "orders.shop.svc", 1).unwrap();
    assert_eq!(anonymous[0].0, 200);
    let identified =
        https_gets(f.serve.addr, client_config(&f.ca, Some(&f.frontend)), "orders.shop.svc", 1).unwrap();
    assert_eq!(identified[0].0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while prop_line(&f.serve.log(), "request.scheme").len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = f.serve.log();
    assert_eq!(prop_line(&log, "connection.mtls"), ["\u{0}", "\u{1}"], "{log}");
    assert_eq!(prop_line(&log, "connection.tls_version"), ["TLSv1.3", "TLSv1.3"], "{log}");
    let frontend_id = format!("{TRUST_DOMAIN}/ns/shop/sa/frontend");
    assert_eq!(prop_line(&log, "connection.uri_san_peer_certificate"), [frontend_id], "{log}");
    let _ = std::fs::remove_dir_all(&f.dir);
}

/// Bad `tls:` blocks stop start-up with the field named.
#[test]
fn tls_config_errors_name_the_field() {
    let dir = scratch_dir("tls-config-errors");
    let ca = Ca::new("CA");
    ca.write(&dir, "ca.pem");
    let leaf = ca.leaf(&dir, "shop", "orders");
    let (cert, key) = (leaf.cert_path.display().to_string(), leaf.key_path.display().to_string());
    let cases = [
        (format!("tls: {{cert: {cert}, key: missing.pem}}"), "listeners[0].tls.key: cannot read"),
        (format!("tls: {{cert: {key}, key: {key}}}"), "listeners[0].tls.cert: no certificate"),
        (
            format!("tls: {{cert: {cert}, key: {key}, require_client_certificate: true}}"),
            "listeners[0].tls.require_client_certificate",
        ),
        (format!("tls: {{cert: {cert}, key: {key}, client_ca: nope.pem}}"), "listeners[0].tls.client_ca"),
        (format!("tls: {{cert: {cert}, key: {key}, ciphers: [x]}}"), "unknown field `ciphers`"),
    ];
    let write = |listener_extra: &str, cluster_extra: &str| {
        let path = dir.join("serve.yaml");
        std::fs::write(
            &path,
            format!(
                "listeners: [{{address: '127.0.0.1:0', {listener_extra} route: {{cluster: c}}}}]\n\
                 clusters: [{{name: c, type: static, endpoints: ['127.0.0.1:9'] {cluster_extra}}}]\n"
            ),
        )
        .unwrap();
        path
    };
    for (extra, want) in cases {
        let path = write(&format!("{extra},"), "");
        let (_, stderr) = text(&run(&["serve", "--validate", path.to_str().unwrap()]));
        assert!(stderr.contains(want), "{extra}: {stderr}");
    }
    let cluster_cases = [
        (", tls: {ca: nope.pem}".to_string(), "clusters[0].tls.ca"),
        (format!(", tls: {{ca: ca.pem, cert: {cert}}}"), "clusters[0].tls.key"),
        (", tls: {ca: ca.pem, sni: 'bad name!'}".to_string(), "clusters[0].tls.sni"),
        (", tls: {ca: ca.pem, verify_san: ['']}".to_string(), "clusters[0].tls.verify_san[0]"),
    ];
    for (extra, want) in cluster_cases {
        let path = write("", &extra);
        let (_, stderr) = text(&run(&["serve", "--validate", path.to_str().unwrap()]));
        assert!(stderr.contains(want), "{extra}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The library path: a test seeds a request with the properties of certificates it made
/// ([`meshwasm_host::tls::connection_properties`]), and the filter reads them as it would in Envoy.
#[test]
fn library_requests_carry_the_properties_of_real_certificates() {
    use meshwasm_host::{Host, HostOptions, Plugin, Proxy, Request, UpstreamReply, tls};
    let dir = scratch_dir("tls-library");
    let ca = Ca::new("CA");
    let frontend = ca.leaf(&dir, "shop", "frontend");
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load_bytes("props", wat_property_logger().as_bytes()).unwrap();
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(module).name("props")).build().unwrap();
    let peer = tls::CertInfo::parse(frontend.der.as_ref()).unwrap();
    let mut request = Request::get("/orders").scheme("https");
    for (path, value) in tls::connection_properties(Some(&peer), None, "TLSv1.3", None) {
        request = request.property(&path, value);
    }
    let ex = proxy.send(0, request, UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    let digest: String = Sha256::digest(frontend.der.as_ref()).iter().map(|b| format!("{b:02x}")).collect();
    for line in [
        "prop connection.mtls=\u{1}".to_string(),
        "prop connection.tls_version=TLSv1.3".into(),
        format!("prop connection.uri_san_peer_certificate={TRUST_DOMAIN}/ns/shop/sa/frontend"),
        "prop connection.subject_peer_certificate=O=shop,CN=frontend".into(),
        format!("prop connection.sha256_peer_certificate_digest={digest}"),
        "prop request.scheme=https".into(),
    ] {
        assert!(proxy.logged(&line), "{line}: {:?}", proxy.logs());
    }
    // No SNI: "" (Envoy 1.40 answers OK with an empty string); no local certificate: absent.
    let said = |line: &str| proxy.logs().iter().any(|l| l.message == line);
    assert!(said("prop connection.requested_server_name="), "{:?}", proxy.logs());
    assert!(!proxy.logged("prop connection.uri_san_local_certificate"));

    // A plaintext request, as Envoy 1.40 answers on a plaintext listener: mtls false, SNI "", no TLS
    // properties (NOT_FOUND).
    proxy.take_logs();
    let ex = proxy.send(0, Request::get("/plain"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    let said = |line: &str| proxy.logs().iter().any(|l| l.message == line);
    assert!(said("prop connection.mtls=\u{0}"), "{:?}", proxy.logs());
    assert!(said("prop connection.requested_server_name="), "{:?}", proxy.logs());
    assert!(said("prop request.scheme=http"), "{:?}", proxy.logs());
    for absent in ["tls_version", "uri_san_peer_certificate", "subject_peer_certificate", "sha256_peer"] {
        assert!(!proxy.logged(&format!("prop connection.{absent}")), "{absent}: {:?}", proxy.logs());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
