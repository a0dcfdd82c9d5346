//! The demo mesh: workload identities (SVIDs from a CA made at start), the sidecar configurations of
//! `frontend` and the `orders` instances, and a curl-based client for the callers that have no sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::envoy::{Cluster, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::oidc::{AuthMethod, Client, OidcOptions, ResourceServer};
use meshwasm_tests::pki::Pki;
use serde_json::{Value, json};

use crate::registry::Registry;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const NAMESPACE: &str = "shop";
/// The name callers use for orders (frontend's token-injector matches it; orders' certificates carry
/// it as a DNS SAN for callers that check host names, like curl).
pub const ORDERS_HOST: &str = "orders.shop.svc";
/// The OAuth2 client frontend's sidecar gets its tokens as.
pub const FRONTEND_CLIENT: Client =
    Client { id: "frontend", secret: "frontend-demo-secret", method: AuthMethod::Basic };
/// The resource indicator (and so the token audience) orders accepts.
pub const ORDERS_AUDIENCE: &str = "urn:shop:orders";
/// Another API of the same issuer: its tokens are not for orders.
pub const PAYMENTS_AUDIENCE: &str = "urn:shop:payments";
const SECRET_ENV: &str = "FRONTEND_CLIENT_SECRET";
const AUTHZ_POLICY: &str = "frontend-calls-orders";

/// `spiffe://cluster.local/ns/shop/sa/<sa>`.
pub fn spiffe_id(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}")
}

/// The provider's clients and APIs: only frontend, and the two APIs.
pub fn oidc_options() -> OidcOptions {
    OidcOptions { clients: Some(vec![FRONTEND_CLIENT]), ..OidcOptions::default() }
        .resource(ORDERS_AUDIENCE, ResourceServer::jwt("RS256"))
        .resource(PAYMENTS_AUDIENCE, ResourceServer::jwt("RS256"))
}

/// An X.509 SVID: a certificate and its key.
#[derive(Clone, Debug)]
pub struct Svid {
    pub spiffe_id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The demo's CA and every workload's SVID.
pub struct Identities {
    pub pki: Pki,
    pub frontend: Svid,
    pub rogue: Svid,
    /// One per orders instance (each its own key), all with orders' SPIFFE ID.
    pub orders: Vec<Svid>,
}

impl Identities {
    /// A CA and short-lived (one day) SVIDs, made with openssl in a temporary directory.
    pub fn issue(orders_instances: usize) -> Self {
        let pki = Pki::new("meshwasm-demo-pki-");
        let svid = |file: &str, sa: &str, dns: Option<&str>| {
            let id = spiffe_id(sa);
            // One URI SAN, the SPIFFE ID, first (authz reads the first URI SAN).
            let sans = match dns {
                Some(d) => format!("URI:{id},DNS:{d}"),
                None => format!("URI:{id}"),
            };
            let (cert, key) = pki.leaf(file, &sans, &format!("/O={NAMESPACE}/CN={file}"), &[]);
            Svid { spiffe_id: id, cert, key }
        };
        let frontend = svid("frontend", "frontend", None);
        let rogue = svid("rogue", "rogue", None);
        let orders = (1..=orders_instances)
            .map(|i| svid(&format!("orders-{i}"), "orders", Some(ORDERS_HOST)))
            .collect();
        Self { pki, frontend, rogue, orders }
    }

    pub fn ca(&self) -> PathBuf {
        self.pki.path("ca.pem")
    }

    pub fn dir(&self) -> PathBuf {
        self.pki.path("")
    }
}

fn tls_certificate(svid: &Svid) -> Value {
    json!({"certificate_chain": {"filename": svid.cert}, "private_key": {"filename": svid.key}})
}

/// A listener's TLS that requires a client certificate from the demo CA.
fn inbound_mtls(svid: &Svid, ca: &Path) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [tls_certificate(svid)],
                "validation_context": {"trusted_ca": {"filename": ca}},
            }
        }
    })
}

/// A workload that is not orders (it has rogue's SVID, from the same CA) but gets itself registered
/// as an orders instance: an mTLS listener in front of its app, no filters.
pub fn impostor_sidecar(svid: &Svid, ca: &Path, app: SocketAddr) -> EnvoyConfig {
    let mut config = EnvoyConfig::new()
        .concurrency(1)
        .listener(Listener::new("inbound", "app").transport_socket(inbound_mtls(svid, ca)))
        .cluster(Cluster::static_hosts("app", &[app]));
    config.node_id = format!("impostor.{NAMESPACE}");
    config
}

/// An orders sidecar: an inbound listener that requires mTLS (a client certificate from the demo CA),
/// then authz (only frontend's SPIFFE ID may call), then jwt-auth (a token from the issuer for
/// orders), in front of the instance's app on loopback.
pub fn orders_sidecar(
    instance: &str,
    svid: &Svid,
    ca: &Path,
    app: SocketAddr,
    idp: SocketAddr,
    issuer: &str,
) -> EnvoyConfig {
    let authz = json!({"policies": [{
        "name": AUTHZ_POLICY, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": [spiffe_id("frontend")]}}]}]
    }]});
    let jwt = json!({
        "realm": "orders",
        "providers": {"shop-idp": {
            "issuer": issuer,
            "audiences": [ORDERS_AUDIENCE],
            // No `uri`: the keys are found through OIDC discovery from the issuer alone.
            "remote_jwks": {"cluster": "idp"},
            "claim_to_headers": [{"header": "x-client-id", "claim": "client_id"}]
        }},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["shop-idp"]}]
    });
    let mut config = EnvoyConfig::new()
        .concurrency(1)
        .listener(
            Listener::new("inbound", "app")
                .transport_socket(inbound_mtls(svid, ca))
                .wasm(WasmFilter::new("authz", wasm_path("meshwasm_authz")).config(authz.to_string()))
                .wasm(WasmFilter::new("jwt-auth", wasm_path("meshwasm_jwt_auth")).config(jwt.to_string())),
        )
        .cluster(Cluster::static_hosts("app", &[app]))
        .cluster(Cluster::static_hosts("idp", &[idp]));
    config.node_id = format!("{instance}.{NAMESPACE}");
    config.node_cluster = "orders".into();
    config
}

/// frontend's sidecar: an outbound listener for frontend's app on loopback, with token-injector
/// (client credentials for orders) and balancer (round robin, passive health), fed by discovery
/// (orders' instances from the registry) running beside the chain as a singleton Wasm service (one
/// VM on the main thread, same vm_id as the balancer, never in a request's path), steering an ORIGINAL_DST cluster whose upstream TLS presents
/// frontend's SVID and accepts only a peer with orders' SPIFFE ID.
pub fn frontend_sidecar(svid: &Svid, ca: &Path, idp: SocketAddr, registry: &Registry) -> EnvoyConfig {
    let injector = json!({
        "token_endpoint": {"cluster": "idp", "path": "/token", "authority": idp.to_string(), "timeout": "2s"},
        "client_id": FRONTEND_CLIENT.id,
        "client_secret_env": SECRET_ENV,
        "scopes": ["read"],
        "resource": ORDERS_AUDIENCE,
        "match": [{"authority": ORDERS_HOST}]
    });
    let discovery = json!({
        // A singleton Wasm service (envoy.bootstrap.wasm, singleton: true): the only discovery VM.
        "mode": "service",
        // The demo's instances listen on loopback, so the service opts in to loopback addresses.
        "services": [{"name": "orders", "refresh": "300ms", "timeout": "2s", "allow_loopback": true,
                      "source": registry.source()}]
    });
    let balancer = json!({
        "service_from": [{"fixed": "orders"}],
        "refresh_interval": "500ms",
        "services": {"orders": {
            "algorithm": "round_robin",
            // Eject on the first failure so the demo shows it at once (the default is 5, as Envoy's),
            // and let two of five endpoints be out at once (the default, 10 %, allows only one).
            "outlier_detection": {"consecutive_failures": 1, "base_ejection_time": "30s",
                                  "max_ejection_percent": 50}
        }}
    });
    let upstream_mtls = json!({
        "name": "orders",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        // Steered by the balancer through filter state only: no request header picks the address.
        "original_dst_lb_config": {"use_http_header": false},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificates": [tls_certificate(svid)],
                    "validation_context": {
                        "trusted_ca": {"filename": ca},
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": spiffe_id("orders")}}
                        ]
                    }
                }
            }
        }
    });
    let mut config = EnvoyConfig::new()
        .concurrency(1)
        .wasm_service(
            WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                .vm_id("meshwasm")
                .config(discovery.to_string()),
        )
        .listener(
            Listener::new("outbound", "orders")
                .wasm(
                    WasmFilter::new("token-injector", wasm_path("meshwasm_token_injector"))
                        .config(injector.to_string())
                        .env(SECRET_ENV, FRONTEND_CLIENT.secret),
                )
                .wasm(
                    WasmFilter::new("balancer", wasm_path("meshwasm_balancer"))
                        .vm_id("meshwasm")
                        .config(balancer.to_string()),
                ),
        )
        .cluster(Cluster::raw("orders", &upstream_mtls.to_string()))
        .cluster(Cluster::static_hosts("idp", &[idp]))
        .cluster(Cluster::static_hosts("registry", &[registry.addr()]).http2(registry.http2()));
    config.node_id = format!("frontend.{NAMESPACE}");
    config.node_cluster = "frontend".into();
    config
}

/// What curl got: a status (0: no HTTP answer) and, when there was none, curl's error.
#[derive(Debug)]
pub struct CurlReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub error: String,
}

impl CurlReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// One line for the transcript.
    pub fn summary(&self) -> String {
        if self.status == 0 {
            return format!("refused ({})", self.error);
        }
        let mut line = format!("{}", self.status);
        if let Some(c) = self.header("www-authenticate") {
            line.push_str(&format!("  www-authenticate: {c}"));
        } else if !self.body.trim().is_empty() && self.status != 200 {
            line.push_str(&format!("  ({})", self.body.trim()));
        }
        line
    }
}

/// How a caller without a sidecar reaches an orders instance.
pub enum Caller<'a> {
    /// Plain HTTP.
    Plaintext,
    /// TLS, checking the server against the demo CA, presenting `client` if given.
    Tls { ca: &'a Path, client: Option<&'a Svid> },
}

/// `GET /orders` at `addr` with curl (Debian's curl: OpenSSL, the same TLS a workload would use).
pub fn curl(addr: SocketAddr, caller: Caller<'_>, token: Option<&str>) -> Result<CurlReply> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-D", "-", "-w", "\n%{http_code}"]);
    match caller {
        Caller::Plaintext => {
            cmd.arg(format!("http://{addr}/orders"));
        }
        Caller::Tls { ca, client } => {
            cmd.arg("--cacert").arg(ca).arg("--resolve").arg(format!(
                "{ORDERS_HOST}:{}:{}",
                addr.port(),
                addr.ip()
            ));
            if let Some(svid) = client {
                cmd.arg("--cert").arg(&svid.cert).arg("--key").arg(&svid.key);
            }
            cmd.arg(format!("https://{ORDERS_HOST}:{}/orders", addr.port()));
        }
    }
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
    }
    let out = cmd.output().context("running curl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let status = code.trim().parse().unwrap_or(0);
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let error = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Ok(CurlReply { status, headers, body: body.to_owned(), error })
}
