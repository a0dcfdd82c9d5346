//! mTLS failure modes at Envoy's inbound listener (issue 10, item 6), with certificates made at test
//! time (`meshwasm_tests::pki`): no client certificate, a certificate from another CA, an expired
//! one, one not valid yet, and a wrong SPIFFE ID. Each must fail the TLS handshake (curl gets no HTTP
//! status) for the reason Envoy's `ssl.*` listener stats name, and reach no backend. A wrong SPIFFE ID
//! is refused twice over: at the handshake by `match_typed_subject_alt_names` where the listener pins
//! the caller's ID, and by authz (403) where the validation context accepts any SAN of the mesh CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::pki::Pki;
use meshwasm_tests::process::free_port;
use serde_json::{Value, json};

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// curl's exit codes for a connection the server refused at the TLS layer: 35 (the handshake
/// failed); with TLS 1.3 the client finishes its side of the handshake before the server checks its
/// certificate, so it may learn of the refusal only when sending (55) or reading (56) the request.
const REFUSED: [i32; 3] = [35, 55, 56];

/// A `DownstreamTlsContext` requiring a client certificate from `pki`'s CA; with `san`, only a
/// certificate whose URI SAN is exactly `san`.
fn inbound_tls(pki: &Pki, server: &(PathBuf, PathBuf), san: Option<&str>) -> Value {
    let mut validation = json!({"trusted_ca": {"filename": pki.path("ca.pem")}});
    if let Some(san) = san {
        validation["match_typed_subject_alt_names"] = json!([{"san_type": "URI", "matcher": {"exact": san}}]);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": server.0},
                    "private_key": {"filename": server.1},
                }],
                "validation_context": validation,
            }
        }
    })
}

/// What curl got for `GET /orders/1` over HTTPS, presenting `client` if given: its exit code and the
/// HTTP status (0 when there was none).
fn curl(pki: &Pki, addr: SocketAddr, client: Option<&(PathBuf, PathBuf)>) -> (i32, u16) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())]);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(format!("https://localhost:{}/orders/1", addr.port())).output().unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.code().unwrap_or(-1), code)
}

/// The downstream TLS stat `name` of the listener at `addr` (`listener.127.0.0.1_<port>.ssl.<name>`:
/// Envoy names them by the configured address, so each listener needs its own port, not port 0).
fn ssl_stat(envoy: &Envoy, addr: SocketAddr, name: &str) -> u64 {
    let key = format!("listener.{}_{}.ssl.{name}", addr.ip(), addr.port());
    envoy.stat(&key).unwrap().unwrap_or(0)
}

struct Certs {
    frontend: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
    expired: (PathBuf, PathBuf),
    not_yet_valid: (PathBuf, PathBuf),
    other_ca: (PathBuf, PathBuf),
}

#[test]
fn handshakes_fail_without_a_valid_certificate_and_reach_no_backend() {
    let pki = Pki::new("meshwasm-tls-failures-");
    let server = pki.leaf(
        "orders",
        "DNS:localhost,URI:spiffe://cluster.local/ns/shop/sa/orders",
        "/O=shop/CN=orders",
        &[],
    );
    let other = Pki::new("meshwasm-tls-failures-other-");
    let certs = Certs {
        frontend: pki.leaf("frontend", &format!("URI:{FRONTEND}"), "/O=shop/CN=frontend", &[]),
        rogue: pki.leaf("rogue", "URI:spiffe://cluster.local/ns/shop/sa/rogue", "/O=shop/CN=rogue", &[]),
        // The frontend's identity, signed by the mesh CA, but no longer (or not yet) valid.
        expired: pki.leaf_between(
            "expired",
            &format!("URI:{FRONTEND}"),
            "/O=shop/CN=frontend",
            "20200101000000Z",
            "20200102000000Z",
        ),
        not_yet_valid: pki.leaf_between(
            "future",
            &format!("URI:{FRONTEND}"),
            "/O=shop/CN=frontend",
            "20990101000000Z",
            "20990102000000Z",
        ),
        // The frontend's identity from another CA.
        other_ca: other.leaf("impostor", &format!("URI:{FRONTEND}"), "/O=shop/CN=frontend", &[]),
    };
    let backend = Backend::start("orders").unwrap();
    let policy = json!({"policies": [{"name": "frontend",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]}]});
    let authz = || WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(policy.to_string());
    let envoy = EnvoyConfig::new()
        .listener(
            Listener::new("pinned", "backend")
                .port(free_port())
                .transport_socket(inbound_tls(&pki, &server, Some(FRONTEND)))
                .wasm(authz()),
        )
        .listener(
            Listener::new("any-san", "backend")
                .port(free_port())
                .transport_socket(inbound_tls(&pki, &server, None))
                .wasm(authz()),
        )
        .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
        .start()
        .unwrap();
    let pinned = envoy.listener_addr("pinned");
    let any_san = envoy.listener_addr("any-san");

    // The caller the policy and the pinned SAN name gets through both listeners.
    assert_eq!(curl(&pki, pinned, Some(&certs.frontend)), (0, 200));
    assert_eq!(curl(&pki, any_san, Some(&certs.frontend)), (0, 200));
    assert_eq!(backend.request_count(), 2);

    // (what, client certificate, the listener's ssl stat that counts the refusal)
    type Refusal<'a> = (&'a str, Option<&'a (PathBuf, PathBuf)>, &'a str);
    let refused: [Refusal; 5] = [
        ("no client certificate", None, "fail_verify_no_cert"),
        ("another CA", Some(&certs.other_ca), "fail_verify_error"),
        ("expired", Some(&certs.expired), "fail_verify_error"),
        ("not valid yet", Some(&certs.not_yet_valid), "fail_verify_error"),
        ("wrong SPIFFE ID", Some(&certs.rogue), "fail_verify_san"),
    ];
    for (what, cert, stat) in refused {
        let before = ssl_stat(&envoy, pinned, stat);
        let (exit, status) = curl(&pki, pinned, cert);
        assert_eq!(status, 0, "{what}: an HTTP status, the handshake did not fail");
        assert!(REFUSED.contains(&exit), "{what}: curl exit {exit}");
        assert_eq!(ssl_stat(&envoy, pinned, stat), before + 1, "{what}: ssl.{stat}");
    }
    // The same refusals where any SAN of the mesh CA is accepted, but for the wrong SPIFFE ID.
    for (what, cert, _) in &refused[..4] {
        let (exit, status) = curl(&pki, any_san, *cert);
        assert!(
            status == 0 && REFUSED.contains(&exit),
            "{what} on any-san: curl exit {exit}, status {status}"
        );
    }
    assert_eq!(ssl_stat(&envoy, any_san, "fail_verify_no_cert"), 1);
    assert_eq!(ssl_stat(&envoy, any_san, "fail_verify_error"), 3);
    assert_eq!(ssl_stat(&envoy, any_san, "fail_verify_san"), 0);
    // Without SAN pinning the handshake of the wrong SPIFFE ID succeeds, and authz refuses it.
    assert_eq!(curl(&pki, any_san, Some(&certs.rogue)), (0, 403));
    assert_eq!(ssl_stat(&envoy, pinned, "fail_verify_san"), 1);
    assert_eq!(backend.request_count(), 2, "a refused caller reached the backend");
    let denied = envoy
        .stats()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with("meshwasm_authz.denied"))
        .map(|(_, v)| *v)
        .sum::<u64>();
    assert_eq!(denied, 1, "authz saw only the one request that got through the handshake");
}
