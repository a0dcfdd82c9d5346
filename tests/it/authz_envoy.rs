//! The authz filter in real Envoy behind an mTLS listener: the peer identity is Envoy's, from a real
//! handshake with certificates made at test time (a CA and SVID-style leaf certificates with URI SAN
//! `spiffe://<td>/ns/<ns>/sa/<sa>`, by Debian's `openssl`; no key is committed). Shows which
//! `connection.*` attributes Envoy 1.40 fills for wasm, and the 403s; and the request matchers and
//! DENY / ALLOW / dry-run / AUDIT semantics on a listener without Envoy's path normalization.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::envoy::{Envoy, EnvoyConfig, Listener, Route, WasmFilter};
use meshwasm_tests::pki::Pki;
use serde_json::json;

fn tls(pki: &Pki, server: &(PathBuf, PathBuf), require_client: bool) -> serde_json::Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": require_client,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": server.0},
                    "private_key": {"filename": server.1},
                }],
                "validation_context": {"trusted_ca": {"filename": pki.path("ca.pem")}},
            }
        }
    })
}

/// `(status, body)` of `GET path` over HTTPS, presenting `client` if given.
fn get(pki: &Pki, addr: SocketAddr, path: &str, client: Option<&(PathBuf, PathBuf)>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())]);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(format!("https://localhost:{}{path}", addr.port())).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn plain_get(addr: SocketAddr, path: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

struct Mesh {
    pki: Pki,
    envoy: Envoy,
    frontend: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
    other_ca: (PathBuf, PathBuf),
    not_spiffe: (PathBuf, PathBuf),
    two_sans: (PathBuf, PathBuf),
    /// Keeps the other CA's files until the test ends.
    _other: Pki,
}

fn start() -> Mesh {
    let pki = Pki::new("meshwasm-authz-pki-");
    let server = pki.leaf(
        "orders",
        "DNS:localhost,URI:spiffe://cluster.local/ns/shop/sa/orders",
        "/O=shop/CN=orders",
        &[],
    );
    let frontend = pki.leaf(
        "frontend",
        "URI:spiffe://cluster.local/ns/shop/sa/frontend,DNS:frontend.shop.svc",
        "/O=shop/CN=frontend",
        &[],
    );
    let rogue = pki.leaf("rogue", "URI:spiffe://cluster.local/ns/shop/sa/rogue", "/O=shop/CN=rogue", &[]);
    let not_spiffe =
        pki.leaf("legacy", "URI:spiffe://Cluster.Local/ns/shop/sa/frontend", "/O=shop/CN=legacy", &[]);
    // Two URI SANs: Envoy hands wasm only the first.
    let two_sans = pki.leaf(
        "two-sans",
        "URI:spiffe://cluster.local/ns/other/sa/x,URI:spiffe://cluster.local/ns/shop/sa/frontend",
        "/O=shop/CN=two-sans",
        &[],
    );
    // A certificate from another CA, with the frontend's identity.
    let other = Pki::new("meshwasm-authz-pki-");
    let other_ca =
        other.leaf("impostor", "URI:spiffe://cluster.local/ns/shop/sa/frontend", "/O=shop/CN=impostor", &[]);
    let digest = pki.sha256(&frontend.0);

    let config = json!({"policies": [
        {"name": "deny-rogue", "action": "DENY",
         "rules": [{"from": [{"source": {"service_accounts": ["shop/rogue"]}}]}]},
        {"name": "shop", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}], "to": [{"operation": {"paths": ["/orders", "/orders/*"]}}]}]},
        {"name": "by-dns", "rules": [{"from": [{"source": {"dns_sans": ["*.shop.svc"]}}], "to": [{"operation": {"paths": ["/dns"]}}]}]},
        {"name": "by-subject", "rules": [{"from": [{"source": {"subjects": ["CN=frontend,*"]}}], "to": [{"operation": {"paths": ["/subject"]}}]}]},
        {"name": "by-digest", "rules": [{"from": [{"source": {"certificate_sha256": [digest]}}], "to": [{"operation": {"paths": ["/digest"]}}]}]},
        {"name": "by-raw-san", "rules": [{"from": [{"source": {"uri_sans": ["spiffe://Cluster.Local/*"]}}], "to": [{"operation": {"paths": ["/legacy"]}}]}]},
    ]});
    let authz = || WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(config.to_string());
    let listener = |name: &str| Listener::empty(name).route(Route::direct("/", 200, "backend")).wasm(authz());
    let envoy = EnvoyConfig::new()
        .listener(listener("mtls").transport_socket(tls(&pki, &server, true)))
        .listener(listener("tls").transport_socket(tls(&pki, &server, false)))
        .listener(listener("plain"))
        .start()
        .unwrap();
    Mesh { pki, envoy, frontend, rogue, other_ca, not_spiffe, two_sans, _other: other }
}

fn stat(envoy: &Envoy, suffix: &str) -> u64 {
    envoy.stats().unwrap().iter().filter(|(k, _)| k.ends_with(suffix)).map(|(_, v)| *v).sum()
}

#[test]
fn peer_identity_from_a_real_mtls_handshake() {
    let m = start();
    let mtls = m.envoy.listener_addr("mtls");
    assert_eq!(get(&m.pki, mtls, "/orders/1", Some(&m.frontend)), (200, "backend".into()));
    // Another workload of the same namespace: the DENY policy, with a body that names nothing.
    assert_eq!(get(&m.pki, mtls, "/orders/1", Some(&m.rogue)), (403, "access denied\n".into()));
    // Not under an allowed path: no ALLOW policy matches.
    assert_eq!(get(&m.pki, mtls, "/admin", Some(&m.frontend)).0, 403);
    // Envoy fills the DNS SAN, the subject and the digest for wasm.
    assert_eq!(get(&m.pki, mtls, "/dns", Some(&m.frontend)).0, 200);
    assert_eq!(get(&m.pki, mtls, "/subject", Some(&m.frontend)).0, 200);
    assert_eq!(get(&m.pki, mtls, "/digest", Some(&m.frontend)).0, 200);
    assert_eq!(get(&m.pki, mtls, "/digest", Some(&m.rogue)).0, 403);
    // A SAN that is not a valid SPIFFE ID: no namespace, only the raw-SAN rule.
    assert_eq!(get(&m.pki, mtls, "/orders/1", Some(&m.not_spiffe)).0, 403);
    assert_eq!(get(&m.pki, mtls, "/legacy", Some(&m.not_spiffe)).0, 200);
    // Only the first URI SAN is seen (`connection.uri_san_peer_certificate`): the second one, in
    // the allowed namespace, does not count.
    assert_eq!(get(&m.pki, mtls, "/orders/1", Some(&m.two_sans)).0, 403);
    // rogue on /orders/1 and on /digest.
    assert_eq!(stat(&m.envoy, "meshwasm_authz.policy.deny-rogue.denied"), 2);
    assert!(stat(&m.envoy, "meshwasm_authz.policy.shop.allowed") >= 1);
}

#[test]
fn callers_without_a_trusted_certificate_have_no_principal() {
    let m = start();
    // Required client certificate: no certificate, or one from another CA, fails the handshake.
    let mtls = m.envoy.listener_addr("mtls");
    assert_eq!(get(&m.pki, mtls, "/orders/1", None).0, 0);
    assert_eq!(get(&m.pki, mtls, "/orders/1", Some(&m.other_ca)).0, 0);
    // TLS without a client certificate, and plaintext: authz sees no principal and denies.
    let tls = m.envoy.listener_addr("tls");
    assert_eq!(
        get(&m.pki, tls, "/orders/1", Some(&m.frontend)).0,
        200,
        "the same listener with a certificate"
    );
    assert_eq!(get(&m.pki, tls, "/orders/1", None), (403, "access denied\n".into()));
    assert_eq!(plain_get(m.envoy.listener_addr("plain"), "/orders/1"), 403);
}

/// The status of a plaintext request through curl (`--path-as-is`: the path is sent as written).
fn plain(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &[&str]) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--path-as-is",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
    ])
    .args(["-H", &format!("host: {host}")]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("http://{addr}{path}")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn request_matchers_and_policy_semantics_in_envoy() {
    let config = json!({"policies": [
        {"name": "no-debug", "action": "DENY",
         "rules": [{"when": [{"key": "request.headers[x-debug]", "values": ["on"]}]}]},
        {"name": "watch-admin", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]},
        {"name": "would-deny-delete", "action": "DENY", "dry_run": true,
         "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]},
        {"name": "reads", "rules": [{
            "from": [{"source": {"ip_blocks": ["127.0.0.0/8"]}}],
            "to": [{"operation": {"methods": ["GET", "DELETE"], "hosts": ["orders.shop"], "paths": ["/orders/*", "/admin/*"]}}]}]},
    ]});
    let authz = WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(config.to_string());
    // Only dry-run ALLOW policies (no enforced one): what none of them matches is counted, let through.
    let dry = json!({"policies": [
        {"name": "would-allow-gets", "dry_run": true, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        {"name": "audit-all", "action": "AUDIT", "rules": [{}]},
    ]});
    let dry = WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(dry.to_string());
    // Without Envoy's own normalization: the filter normalizes on its own.
    let envoy = EnvoyConfig::new()
        .listener(Listener::empty("raw").raw_paths().route(Route::direct("/", 200, "backend")).wasm(authz))
        .listener(Listener::empty("dry").route(Route::direct("/", 200, "backend")).wasm(dry))
        .start()
        .unwrap();
    let addr = envoy.listener_addr("raw");
    let req =
        |method: &str, host: &str, path: &str, headers: &[&str]| plain(addr, method, host, path, headers);
    assert_eq!(req("GET", "orders.shop", "/orders/1", &[]), 200);
    assert_eq!(req("GET", "Orders.Shop:10000", "/orders/1", &[]), 200, "hosts: any case, port ignored");
    assert_eq!(req("GET", "evil.shop", "/orders/1", &[]), 403);
    assert_eq!(req("POST", "orders.shop", "/orders/1", &[]), 403);
    // Paths are matched normalized; ambiguous ones are refused before any policy.
    assert_eq!(req("GET", "orders.shop", "/%6Frders/1", &[]), 200);
    assert_eq!(req("GET", "orders.shop", "//orders/./1", &[]), 200);
    assert_eq!(req("GET", "orders.shop", "/orders/../secret", &[]), 403);
    assert_eq!(req("GET", "orders.shop", "/orders;x/1", &[]), 400);
    assert_eq!(req("GET", "orders.shop", "/orders%2F1", &[]), 400);
    // DENY first: a header value, also when a repeated header sends another value first.
    assert_eq!(req("GET", "orders.shop", "/orders/1", &["x-debug: on"]), 403);
    assert_eq!(req("GET", "orders.shop", "/orders/1", &["x-debug: off", "x-debug: on"]), 403);
    assert_eq!(req("GET", "orders.shop", "/orders/1", &["x-debug: off"]), 200);
    // Dry run and audit: counted, let through.
    assert_eq!(req("DELETE", "orders.shop", "/orders/1", &[]), 200);
    assert_eq!(req("GET", "orders.shop", "/admin/x", &[]), 200);
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.would-deny-delete.dry_run_denied"), 1);
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.watch-admin.audited"), 1);
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.no-debug.denied"), 2);
    assert_eq!(stat(&envoy, "meshwasm_authz.bad_path"), 2);
    // The ALLOW policy that allowed is counted; a request no ALLOW policy matched counts only in the
    // total (evil.shop, POST, /secret) and names no policy.
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.reads.allowed"), 7);
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.reads.denied"), 0);
    assert_eq!(stat(&envoy, "meshwasm_authz.denied"), 5);

    let dry = envoy.listener_addr("dry");
    assert_eq!(plain(dry, "GET", "orders.shop", "/x", &[]), 200);
    assert_eq!(plain(dry, "POST", "orders.shop", "/x", &[]), 200, "a dry-run ALLOW policy decides nothing");
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.would-allow-gets.dry_run_denied"), 1);
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.would-allow-gets.allowed"), 0);
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.audit-all.audited"), 2);
    // Totals over both listeners.
    assert_eq!(stat(&envoy, "meshwasm_authz.allowed"), 9);
    assert_eq!(stat(&envoy, "meshwasm_authz.dry_run_denied"), 2);
    assert_eq!(stat(&envoy, "meshwasm_authz.audited"), 3);
}

/// jwt-auth's hand-off stood in for by the probe filter, which writes the same properties with
/// `proxy_set_property` before authz runs: Envoy keeps them as filter state (`wasm.<path>`) that
/// authz reads back. This is the contract in `meshwasm_authz::attributes`.
#[test]
fn the_token_identity_reaches_authz_through_envoy_filter_state() {
    let config = json!({"policies": [{"name": "admins", "rules": [{
        "from": [{"source": {"request_principals": ["https://idp.example/*"]}}],
        "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]},
                 {"key": "request.auth.provider", "values": ["idp"]}]}]}]});
    let authz = || WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(config.to_string());
    let hand_on = |name: &str, groups: &str| {
        let set = |path: &str, value: &str| json!({"op": "set_property", "path": [path], "value": value});
        let script = json!({"name": name, "request_headers": {"ops": [
            set("meshwasm.jwt.principal", "https://idp.example/alice"),
            set("meshwasm.jwt.provider", "idp"),
            set("meshwasm.jwt.claim.groups", groups),
        ]}});
        WasmFilter::new(name, wasm_path("meshwasm_probe")).config(script.to_string())
    };
    let listener = |name: &str| Listener::empty(name).route(Route::direct("/", 200, "backend"));
    let envoy = EnvoyConfig::new()
        .listener(listener("admin").wasm(hand_on("jwt-admin", r#"["staff","admin"]"#)).wasm(authz()))
        .listener(listener("staff").wasm(hand_on("jwt-staff", r#"["staff"]"#)).wasm(authz()))
        .listener(listener("none").wasm(authz()))
        .start()
        .unwrap();
    let get = |l: &str| plain(envoy.listener_addr(l), "GET", "orders.shop", "/", &[]);
    assert_eq!(get("admin"), 200);
    assert_eq!(get("staff"), 403, "the claim does not match");
    assert_eq!(get("none"), 403, "no token handed on: no request principal");
    // A client cannot write filter state: the same names as headers change nothing.
    let addr = envoy.listener_addr("none");
    assert_eq!(
        plain(addr, "GET", "orders.shop", "/", &["meshwasm.jwt.principal: https://idp.example/alice"]),
        403
    );
}

/// Fail closed: Envoy does not start with an authz configuration the filter rejects (with
/// `fail_open: false`, the default: "Plugin configured to fail closed failed to load"). The log line
/// naming the field is the same as in the host (`authz_host::a_bad_config_is_rejected_naming_the_field`).
#[test]
fn envoy_refuses_a_rejected_configuration() {
    let bad = r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {"principal": ["x"]}}]}]}]}"#;
    let err = EnvoyConfig::new()
        .listener(
            Listener::empty("l")
                .route(Route::direct("/", 200, "backend"))
                .wasm(WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(bad)),
        )
        .start()
        .err()
        .expect("Envoy started with a rejected authz configuration");
    let text = format!("{err:#}");
    assert!(text.contains("exited during start-up"), "{text}");
}

/// The status of `GET path` over HTTPS from local address `from`, presenting `client`, with extra
/// `headers` (0 when there was no HTTP answer).
fn get_from(
    pki: &Pki,
    addr: SocketAddr,
    path: &str,
    client: &(PathBuf, PathBuf),
    from: &str,
    headers: &[String],
) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--interface", from])
        .arg("--cacert")
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .arg("--cert")
        .arg(&client.0)
        .arg("--key")
        .arg(&client.1);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("https://localhost:{}{path}", addr.port())).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Every matcher kind on the caller, in Envoy over real mTLS handshakes: one ALLOW policy per kind,
/// each on its own path, each with a certificate (or source address) that matches and ones that do
/// not. SANs that are not valid SPIFFE IDs (upper-case trust domain, a `..` segment, another scheme)
/// give no SPIFFE principal, not even for `*`, and match only the raw-SAN rules.
#[test]
fn every_caller_matcher_kind_matches_and_refuses_in_envoy() {
    let pki = Pki::new("meshwasm-authz-matchers-");
    let server = pki.leaf(
        "orders",
        "DNS:localhost,URI:spiffe://cluster.local/ns/shop/sa/orders",
        "/O=shop/CN=orders",
        &[],
    );
    let leaf =
        |name: &str, uri: &str| pki.leaf(name, &format!("URI:{uri}"), &format!("/O=shop/CN={name}"), &[]);
    let frontend = pki.leaf(
        "frontend",
        "URI:spiffe://cluster.local/ns/shop/sa/frontend,DNS:frontend.shop.svc",
        "/O=shop/CN=frontend",
        &[],
    );
    let rogue = leaf("rogue", "spiffe://cluster.local/ns/shop/sa/rogue");
    let billing = leaf("billing", "spiffe://cluster.local/ns/billing/sa/frontend");
    let other_td = leaf("other-td", "spiffe://other.td/ns/shop/sa/frontend");
    let upper = leaf("upper", "spiffe://Cluster.Local/ns/shop/sa/frontend");
    let dots = leaf("dots", "spiffe://cluster.local/ns/shop/sa/../sa/frontend");
    let https = leaf("https", "https://cluster.local/ns/shop/sa/frontend");
    let digest = pki.sha256(&frontend.0);

    /// A client certificate and the local address it connects from.
    type Caller<'a> = (&'a (PathBuf, PathBuf), &'a str);
    // (policy name, source, callers that match, callers that do not)
    let local = "127.0.0.1";
    let cases: Vec<(&str, serde_json::Value, Vec<Caller>, Vec<Caller>)> = vec![
        (
            "principal-exact",
            json!({"principals": ["cluster.local/ns/shop/sa/frontend"]}),
            vec![(&frontend, local)],
            vec![(&rogue, local), (&other_td, local), (&upper, local)],
        ),
        (
            "principal-uri-form",
            json!({"principals": ["spiffe://cluster.local/ns/shop/sa/frontend"]}),
            vec![(&frontend, local)],
            vec![(&billing, local)],
        ),
        (
            "principal-prefix",
            json!({"principals": ["cluster.local/ns/shop/*"]}),
            vec![(&frontend, local), (&rogue, local)],
            vec![(&billing, local), (&dots, local)],
        ),
        (
            "principal-suffix",
            json!({"principals": ["*/sa/frontend"]}),
            vec![(&frontend, local), (&other_td, local)],
            vec![(&rogue, local), (&upper, local)],
        ),
        (
            "principal-any",
            json!({"principals": ["*"]}),
            vec![(&rogue, local), (&other_td, local)],
            vec![(&upper, local), (&dots, local), (&https, local)],
        ),
        (
            "not-principal",
            json!({"not_principals": ["cluster.local/ns/shop/sa/rogue"]}),
            vec![(&frontend, local)],
            vec![(&rogue, local)],
        ),
        (
            "trust-domain",
            json!({"trust_domains": ["cluster.local"]}),
            vec![(&billing, local)],
            vec![(&other_td, local), (&upper, local)],
        ),
        (
            "namespace",
            json!({"namespaces": ["shop"]}),
            vec![(&rogue, local)],
            vec![(&billing, local), (&dots, local)],
        ),
        (
            "service-account",
            json!({"service_accounts": ["shop/frontend"]}),
            vec![(&frontend, local)],
            vec![(&rogue, local), (&billing, local), (&upper, local)],
        ),
        (
            "raw-uri-san",
            json!({"uri_sans": ["spiffe://Cluster.Local/*", "https://*"]}),
            vec![(&upper, local), (&https, local)],
            vec![(&frontend, local)],
        ),
        (
            "raw-uri-san-dots",
            json!({"uri_sans": ["*/sa/../sa/frontend"]}),
            vec![(&dots, local)],
            vec![(&frontend, local)],
        ),
        (
            "dns-san-suffix",
            json!({"dns_sans": ["*.shop.svc"]}),
            vec![(&frontend, local)],
            vec![(&rogue, local)],
        ),
        (
            "subject-prefix",
            json!({"subjects": ["CN=frontend,*"]}),
            vec![(&frontend, local)],
            vec![(&rogue, local)],
        ),
        (
            "digest",
            json!({"certificate_sha256": [digest.to_ascii_uppercase()]}),
            vec![(&frontend, local)],
            vec![(&rogue, local)],
        ),
        (
            "ip-block",
            json!({"ip_blocks": ["127.0.0.1/32"]}),
            vec![(&frontend, local)],
            vec![(&frontend, "127.0.0.2")],
        ),
        (
            "not-ip-block",
            json!({"not_ip_blocks": ["127.0.0.2"]}),
            vec![(&frontend, local)],
            vec![(&frontend, "127.0.0.2")],
        ),
    ];
    let mut policies: Vec<serde_json::Value> = cases
        .iter()
        .map(|(name, source, _, _)| {
            json!({"name": name, "rules": [{"from": [{"source": source}], "to": [{"operation": {"paths": [format!("/{name}")]}}]}]})
        })
        .collect();
    // `source.ip` as a `when` condition.
    policies.push(
        json!({"name": "when-source-ip", "rules": [{"to": [{"operation": {"paths": ["/when-source-ip"]}}],
        "when": [{"key": "source.ip", "values": ["127.0.0.2/32"]}]}]}),
    );
    let config = json!({"policies": policies});
    let authz = WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(config.to_string());
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::empty("mtls")
                .route(Route::direct("/", 200, "backend"))
                .transport_socket(tls(&pki, &server, true))
                .wasm(authz),
        )
        .start()
        .unwrap();
    let addr = envoy.listener_addr("mtls");
    for (name, _, yes, no) in &cases {
        for (cert, from) in yes {
            let who = cert.0.file_name().unwrap().to_string_lossy();
            assert_eq!(
                get_from(&pki, addr, &format!("/{name}"), cert, from, &[]),
                200,
                "{name}: {who} from {from}"
            );
        }
        for (cert, from) in no {
            let who = cert.0.file_name().unwrap().to_string_lossy();
            assert_eq!(
                get_from(&pki, addr, &format!("/{name}"), cert, from, &[]),
                403,
                "{name}: {who} from {from}"
            );
        }
        assert_eq!(
            stat(&envoy, &format!("meshwasm_authz.policy.{name}.allowed")),
            yes.len() as u64,
            "{name}: per-policy allowed counter"
        );
    }
    assert_eq!(get_from(&pki, addr, "/when-source-ip", &frontend, "127.0.0.2", &[]), 200);
    assert_eq!(get_from(&pki, addr, "/when-source-ip", &frontend, local, &[]), 403);
}

/// The caller's workload identity (mTLS) and the user's (a token verified by the real jwt-auth,
/// handed on as filter state) in one policy, with every token matcher: request principal (exact and
/// as a `when` key), provider and claim. Each part failing alone is a 403.
#[test]
fn workload_and_token_identity_together_over_mtls() {
    let iss = "https://idp.test";
    let s = meshwasm_tests::signer::Signer::rsa("rsa1.pem", "r1");
    let jwks: serde_json::Value = serde_json::from_str(&meshwasm_tests::signer::jwks(&[&s])).unwrap();
    let jwt = json!({
        "providers": {"idp": {"issuer": iss, "audiences": ["orders"], "algorithms": ["RS256"],
                              "local_jwks": jwks, "claims_to_filter_state": ["groups"]}},
        "rules": [{"match": {"prefix": "/public"}, "requires_any": ["idp"], "allow_missing": true},
                  {"match": {"prefix": "/"}, "requires_any": ["idp"]}]
    });
    let policy = json!({"policies": [
        {"name": "frontend-for-alice", "rules": [{
            "to": [{"operation": {"paths": ["/orders", "/public/orders"]}}],
            "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"],
                                 "request_principals": [format!("{iss}/alice")]}}],
            "when": [{"key": "request.auth.claims[groups]", "values": ["staff"]},
                     {"key": "request.auth.provider", "values": ["idp"]}]}]},
        {"name": "token-principal-key", "rules": [{
            "to": [{"operation": {"paths": ["/public/key"]}}],
            "when": [{"key": "request.auth.principal", "values": [format!("{iss}/bob")]}]}]},
        {"name": "other-provider", "rules": [{
            "to": [{"operation": {"paths": ["/public/other"]}}],
            "when": [{"key": "request.auth.provider", "values": ["other-idp"]}]}]},
    ]});
    let pki = Pki::new("meshwasm-authz-token-");
    let server = pki.leaf(
        "orders",
        "DNS:localhost,URI:spiffe://cluster.local/ns/shop/sa/orders",
        "/O=shop/CN=orders",
        &[],
    );
    let frontend =
        pki.leaf("frontend", "URI:spiffe://cluster.local/ns/shop/sa/frontend", "/O=shop/CN=frontend", &[]);
    let rogue = pki.leaf("rogue", "URI:spiffe://cluster.local/ns/shop/sa/rogue", "/O=shop/CN=rogue", &[]);
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::empty("mtls")
                .route(Route::direct("/", 200, "backend"))
                .transport_socket(tls(&pki, &server, true))
                .wasm(WasmFilter::new("jwt", wasm_path("meshwasm_jwt_auth")).config(jwt.to_string()))
                .wasm(WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(policy.to_string())),
        )
        .start()
        .unwrap();
    let addr = envoy.listener_addr("mtls");
    let bearer = |sub: &str, groups: &[&str]| {
        let t = s.mint(&json!({"iss": iss, "aud": "orders", "sub": sub, "groups": groups,
                               "exp": meshwasm_tests::signer::now() + 600}));
        vec![format!("authorization: Bearer {t}")]
    };
    let call = |path: &str, cert: &(PathBuf, PathBuf), h: &[String]| {
        get_from(&pki, addr, path, cert, "127.0.0.1", h)
    };
    assert_eq!(call("/orders", &frontend, &bearer("alice", &["dev", "staff"])), 200);
    assert_eq!(call("/orders", &frontend, &bearer("bob", &["staff"])), 403, "request principal");
    assert_eq!(call("/orders", &frontend, &bearer("alice", &["dev"])), 403, "claim");
    assert_eq!(call("/orders", &rogue, &bearer("alice", &["staff"])), 403, "peer principal");
    assert_eq!(call("/public/orders", &frontend, &[]), 403, "no token: no request principal");
    assert_eq!(call("/orders", &frontend, &[]), 401, "jwt-auth first");
    assert_eq!(call("/public/key", &rogue, &bearer("bob", &[])), 200, "request.auth.principal");
    assert_eq!(call("/public/key", &rogue, &bearer("alice", &[])), 403, "request.auth.principal");
    assert_eq!(call("/public/other", &frontend, &bearer("alice", &["staff"])), 403, "request.auth.provider");
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.frontend-for-alice.allowed"), 1);
    assert_eq!(stat(&envoy, "meshwasm_authz.policy.token-principal-key.allowed"), 1);
}
