//! The mTLS side of the authorization loads (`native-rbac` vs `wasm-authz`): certificates, the
//! inbound TLS context of the listeners under test, the one policy both enforce, and the client
//! sidecar that wrk talks to.
//!
//! wrk cannot present a client certificate, so, as in a mesh, a second Envoy (the caller's sidecar,
//! not measured, pinned with wrk and the backends) takes wrk's plaintext requests and forwards them
//! over mTLS with the caller's SVID to the measured Envoy. Each listener under test gets two entry
//! listeners on that sidecar: one presenting `frontend`'s SVID (allowed), one presenting `rogue`'s
//! (denied), so that validation shows the policy decides on the peer identity.
//!
//! The measured listeners have fixed ports (chosen at start), so the sidecar reaches them in every
//! Envoy the run starts: the one-listener Envoys of the memory readings and the load Envoy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, HttpFilter, Listener};
use meshwasm_tests::pki::Pki;
use meshwasm_tests::process;
use serde_json::{Value, json};

use crate::configs::ListenerId;

/// The caller the policy allows.
pub const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
/// A caller of the same mesh the policy denies.
pub const ROGUE: &str = "spiffe://cluster.local/ns/shop/sa/rogue";

/// Certificates, the measured listeners' ports and the client sidecar's configuration.
pub struct Mtls {
    pki: Pki,
    server: (PathBuf, PathBuf),
    frontend: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
    /// The fixed port of each measured mTLS listener.
    ports: BTreeMap<ListenerId, u16>,
}

/// The running client sidecar.
pub struct Sidecar {
    envoy: Envoy,
}

impl Mtls {
    /// A CA and SVIDs for the server (`orders`) and the two callers; a free port per listener in `ids`.
    pub fn new(ids: &[ListenerId]) -> Self {
        let pki = Pki::new("meshwasm-bench-pki-");
        let server = pki.leaf(
            "orders",
            "DNS:orders.shop.svc,URI:spiffe://cluster.local/ns/shop/sa/orders",
            "/O=shop/CN=orders",
            &[],
        );
        let frontend = pki.leaf("frontend", &format!("URI:{FRONTEND}"), "/O=shop/CN=frontend", &[]);
        let rogue = pki.leaf("rogue", &format!("URI:{ROGUE}"), "/O=shop/CN=rogue", &[]);
        let ports = ids.iter().map(|&id| (id, process::free_port())).collect();
        Self { pki, server, frontend, rogue, ports }
    }

    /// The port of measured listener `id`.
    fn port(&self, id: ListenerId) -> Result<u16> {
        self.ports.get(&id).copied().with_context(|| format!("no mTLS port for `{}`", id.name()))
    }

    /// The inbound `DownstreamTlsContext`: a client certificate from the mesh CA is required (any
    /// SAN: the authorization filter under test decides on the identity).
    fn inbound_tls(&self) -> Value {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": {"filename": self.server.0},
                        "private_key": {"filename": self.server.1},
                    }],
                    "validation_context": {"trusted_ca": {"filename": self.pki.path("ca.pem")}},
                }
            }
        })
    }

    /// Measured listener `id` on its fixed port, serving mTLS.
    pub fn listener(&self, id: ListenerId, cluster: &str) -> Result<Listener> {
        Ok(Listener::new(id.name(), cluster).port(self.port(id)?).transport_socket(self.inbound_tls()))
    }

    /// Name of the sidecar's entry listener to `id` presenting `frontend`'s (or `rogue`'s) SVID.
    fn entry_name(id: ListenerId, rogue: bool) -> String {
        format!("to-{}{}", id.name(), if rogue { "-as-rogue" } else { "" })
    }

    /// Starts the client sidecar: per measured listener, an entry for each caller.
    pub fn start_sidecar(&self, cpus: Option<&str>) -> Result<Sidecar> {
        let mut cfg = EnvoyConfig::new().log_level("warning");
        cfg.component_log_level = None;
        for (&id, &port) in &self.ports {
            for rogue in [false, true] {
                let name = Self::entry_name(id, rogue);
                let svid = if rogue { &self.rogue } else { &self.frontend };
                cfg = cfg
                    .listener(Listener::new(&name, &name))
                    .cluster(Cluster::raw(&name, &self.upstream_cluster(&name, port, svid).to_string()));
            }
        }
        let envoy = cfg.start().context("meshwasm bench: the client sidecar did not start")?;
        if let Some(cpus) = cpus {
            crate::machine::pin(envoy.pid(), cpus)?;
        }
        Ok(Sidecar { envoy })
    }

    /// A cluster to `127.0.0.1:port` over mTLS presenting `svid`, verifying the server's SPIFFE ID.
    fn upstream_cluster(&self, name: &str, port: u16, svid: &(PathBuf, PathBuf)) -> Value {
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "orders.shop.svc",
                    "common_tls_context": {
                        "tls_certificates": [{
                            "certificate_chain": {"filename": svid.0},
                            "private_key": {"filename": svid.1},
                        }],
                        "validation_context": {
                            "trusted_ca": {"filename": self.pki.path("ca.pem")},
                            "match_typed_subject_alt_names": [{"san_type": "URI",
                                "matcher": {"exact": "spiffe://cluster.local/ns/shop/sa/orders"}}],
                        },
                    }
                }
            }
        })
    }
}

impl Sidecar {
    /// Where wrk and the validation requests go for measured listener `id` (as `frontend`, or as
    /// `rogue`).
    pub fn entry(&self, id: ListenerId, rogue: bool) -> SocketAddr {
        self.envoy.listener_addr(&Mtls::entry_name(id, rogue))
    }

    pub fn stop(&self) {
        self.envoy.stop();
    }
}

/// The policy both sides enforce, as Istio would write it:
/// `DENY` from `cluster.local/ns/shop/sa/rogue`; `ALLOW` `GET` on `/*` from
/// `cluster.local/ns/shop/sa/frontend`.
pub fn authz_config() -> Value {
    json!({"policies": [
        {"name": "deny-rogue", "action": "DENY",
         "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/rogue"]}}]}]},
        {"name": "frontend-reads", "action": "ALLOW",
         "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/*"]}}]}]},
    ]})
}

/// The same policy as Envoy RBAC, as Istio translates it: one RBAC filter per action, DENY first,
/// principals as `authenticated.principal_name` (the peer certificate's URI SAN).
pub fn native_rbac_filters() -> Vec<HttpFilter> {
    let rbac = |action: &str, name: &str, principal: &str, permissions: Value| {
        let filter = json!({
            "name": format!("envoy.filters.http.rbac.{}", action.to_ascii_lowercase()),
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": action, "policies": {name: {
                    "permissions": [permissions],
                    "principals": [{"authenticated": {"principal_name": {"exact": principal}}}],
                }}},
            }
        });
        HttpFilter::Raw(filter.to_string())
    };
    vec![
        rbac("DENY", "deny-rogue", ROGUE, json!({"any": true})),
        rbac(
            "ALLOW",
            "frontend-reads",
            FRONTEND,
            json!({"and_rules": {"rules": [
                {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                {"url_path": {"path": {"prefix": "/"}}},
            ]}}),
        ),
    ]
}
