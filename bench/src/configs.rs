//! The configurations under test: Envoy listeners that differ only in their HTTP filters, and the
//! loads driven through them.
//!
//! Listeners (all on one Envoy, all to the same backends):
//! - `passthrough`: router only, one backend: the physical limit of this Envoy on this machine.
//! - `noop`: meshwasm noop filter (per-callback cost of the wasm VM), one backend.
//! - `native-jwt` / `wasm-jwt`: Envoy jwt_authn vs meshwasm jwt-auth, same JWKS (an RSA-2048 and a
//!   P-256 key), same issuer and audience, one backend.
//! - `native-rr` / `wasm-balancer`: a STATIC cluster with round robin over three backends vs meshwasm
//!   discovery (static source, the same three backends) + balancer steering an ORIGINAL_DST cluster.
//! - `native-chain` / `wasm-chain`: jwt_authn + round robin vs jwt-auth + discovery + balancer.
//! - `native-rbac` / `wasm-authz`: Envoy RBAC vs meshwasm authz, the same policy on the caller's
//!   SPIFFE ID, method and path, behind an mTLS listener reached through a client sidecar
//!   ([`crate::mtls`]), one backend.

use std::net::SocketAddr;

use anyhow::Result;
use meshwasm_tests::envoy::{Cluster, HttpFilter, Listener};
use serde_json::json;

use crate::filters::FilterSet;
use crate::jwt::{AUDIENCE, Alg, ISSUER, TokenSet};
use crate::mtls::{self, Mtls};

/// Cluster with one backend (passthrough, noop, JWT listeners).
pub const ONE: &str = "one_backend";
/// Cluster with the three backends, round robin (native balancing).
pub const THREE: &str = "three_backends";
/// ORIGINAL_DST cluster steered by the balancer through filter state (no request header).
pub const PICKED: &str = "meshwasm_picked";

/// Which listeners exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerId {
    Passthrough,
    Noop,
    NativeJwt,
    WasmJwt,
    NativeRr,
    WasmBalancer,
    NativeChain,
    WasmChain,
    NativeRbac,
    WasmAuthz,
}

impl ListenerId {
    pub const ALL: [ListenerId; 10] = [
        ListenerId::Passthrough,
        ListenerId::Noop,
        ListenerId::NativeJwt,
        ListenerId::WasmJwt,
        ListenerId::NativeRr,
        ListenerId::WasmBalancer,
        ListenerId::NativeChain,
        ListenerId::WasmChain,
        ListenerId::NativeRbac,
        ListenerId::WasmAuthz,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ListenerId::Passthrough => "passthrough",
            ListenerId::Noop => "noop",
            ListenerId::NativeJwt => "native-jwt",
            ListenerId::WasmJwt => "wasm-jwt",
            ListenerId::NativeRr => "native-rr",
            ListenerId::WasmBalancer => "wasm-balancer",
            ListenerId::NativeChain => "native-chain",
            ListenerId::WasmChain => "wasm-chain",
            ListenerId::NativeRbac => "native-rbac",
            ListenerId::WasmAuthz => "wasm-authz",
        }
    }

    /// What the listener's filter chain is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            ListenerId::Passthrough => "router only → 1 backend (no filters)",
            ListenerId::Noop => "meshwasm noop → 1 backend",
            ListenerId::NativeJwt => "Envoy jwt_authn (local JWKS, jwt_cache_size 100) → 1 backend",
            ListenerId::WasmJwt => "meshwasm jwt-auth (same JWKS inline, caches on) → 1 backend",
            ListenerId::NativeRr => "router → STATIC cluster, ROUND_ROBIN over 3 backends",
            ListenerId::WasmBalancer => {
                "meshwasm discovery (static source, 3 backends) + balancer (round robin) → ORIGINAL_DST"
            }
            ListenerId::NativeChain => "jwt_authn → ROUND_ROBIN over 3 backends",
            ListenerId::WasmChain => "meshwasm jwt-auth + discovery + balancer → ORIGINAL_DST",
            ListenerId::NativeRbac => {
                "mTLS listener, Envoy RBAC (DENY rogue, ALLOW GET from frontend's SPIFFE ID) → 1 backend"
            }
            ListenerId::WasmAuthz => "mTLS listener, meshwasm authz (the same policy) → 1 backend",
        }
    }

    /// Whether requests must carry a token (and a request without one must get 401).
    pub fn needs_token(self) -> bool {
        matches!(
            self,
            ListenerId::NativeJwt | ListenerId::WasmJwt | ListenerId::NativeChain | ListenerId::WasmChain
        )
    }

    /// Whether the listener serves mTLS (reached through the client sidecar, never directly).
    pub fn mtls(self) -> bool {
        matches!(self, ListenerId::NativeRbac | ListenerId::WasmAuthz)
    }

    /// Whether requests must spread over the three backends.
    pub fn balances(self) -> bool {
        matches!(
            self,
            ListenerId::NativeRr | ListenerId::WasmBalancer | ListenerId::NativeChain | ListenerId::WasmChain
        )
    }
}

/// The token a load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenMode {
    None,
    Repeated(Alg),
    Unique(Alg),
}

impl TokenMode {
    pub fn label(self) -> String {
        match self {
            TokenMode::None => String::new(),
            TokenMode::Repeated(a) => format!("{} repeated token", a.name()),
            TokenMode::Unique(a) => format!("{} unique tokens", a.name()),
        }
    }
}

/// One load: a listener driven with one kind of request.
#[derive(Debug, Clone)]
pub struct Load {
    /// Stable id, e.g. `wasm-jwt/rs256-unique`.
    pub id: String,
    pub listener: ListenerId,
    pub token: TokenMode,
    /// The native configuration this one is judged against (None for native ones and passthrough).
    pub baseline: Option<String>,
    /// The target ratio to the baseline from the filter issues, when one is set.
    pub target: Option<f64>,
    /// The target is on the Envoy CPU-cost ratio, not on the requests/s ratio.
    pub target_on_cpu: bool,
}

impl Load {
    fn new(listener: ListenerId, token: TokenMode) -> Self {
        let suffix = match token {
            TokenMode::None => String::new(),
            TokenMode::Repeated(a) => format!("/{}-repeated", a.slug()),
            TokenMode::Unique(a) => format!("/{}-unique", a.slug()),
        };
        Self {
            id: format!("{}{suffix}", listener.name()),
            listener,
            token,
            baseline: None,
            target: None,
            target_on_cpu: false,
        }
    }

    fn against(mut self, baseline: &Load, target: Option<f64>) -> Self {
        self.baseline = Some(baseline.id.clone());
        self.target = target;
        self
    }

    /// Human title for tables and plots.
    pub fn title(&self) -> String {
        match self.token {
            TokenMode::None => self.listener.name().to_owned(),
            t => format!("{} ({})", self.listener.name(), t.label()),
        }
    }
}

/// All loads, in the order each round runs them (baselines next to what they judge).
pub fn loads() -> Vec<Load> {
    use ListenerId::*;
    let mut out = vec![Load::new(Passthrough, TokenMode::None)];
    let pass = out[0].clone();
    out.push(Load::new(Noop, TokenMode::None).against(&pass, None));
    for alg in Alg::ALL {
        for (mode, target) in [(TokenMode::Repeated(alg), 1.0), (TokenMode::Unique(alg), 0.8)] {
            let native = Load::new(NativeJwt, mode);
            out.push(native.clone());
            out.push(Load::new(WasmJwt, mode).against(&native, Some(target)));
        }
    }
    let rr = Load::new(NativeRr, TokenMode::None);
    out.push(rr.clone());
    out.push(Load::new(WasmBalancer, TokenMode::None).against(&rr, Some(0.8)));
    let chain = Load::new(NativeChain, TokenMode::Repeated(Alg::Rs256));
    out.push(chain.clone());
    out.push(Load::new(WasmChain, TokenMode::Repeated(Alg::Rs256)).against(&chain, None));
    // Issue 10: an Envoy CPU-cost ratio of at least 0.9 (the load goes through the client sidecar,
    // which shares the load generator's CPU, so requests/s say less here).
    let rbac = Load::new(NativeRbac, TokenMode::None);
    out.push(rbac.clone());
    let mut authz = Load::new(WasmAuthz, TokenMode::None).against(&rbac, Some(0.9));
    authz.target_on_cpu = true;
    out.push(authz);
    out
}

/// Native jwt_authn with the shared JWKS inline, as a filter JSON (JSON is valid YAML).
fn native_jwt_filter(tokens: &TokenSet) -> HttpFilter {
    let filter = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "bench": {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "local_jwks": { "inline_string": tokens.jwks_json },
                    "forward": true,
                    "jwt_cache_config": { "jwt_cache_size": crate::filters::JWT_CACHE_ENTRIES },
                }
            },
            "rules": [{ "match": { "prefix": "/" }, "requires": { "provider_name": "bench" } }],
        }
    });
    HttpFilter::Raw(filter.to_string())
}

/// Builds a listener, or says why it cannot be built (a filter not built yet, say).
pub fn listener(
    id: ListenerId,
    filters: &FilterSet,
    tokens: &TokenSet,
    backends: &[SocketAddr],
    mtls: &Mtls,
) -> Result<Listener> {
    let l = match id {
        ListenerId::Passthrough => Listener::new(id.name(), ONE),
        ListenerId::Noop => Listener::new(id.name(), ONE).wasm(filters.noop()?),
        ListenerId::NativeJwt => Listener::new(id.name(), ONE).filter(native_jwt_filter(tokens)),
        ListenerId::WasmJwt => Listener::new(id.name(), ONE).wasm(filters.jwt_auth(tokens)?),
        ListenerId::NativeRr => Listener::new(id.name(), THREE),
        ListenerId::WasmBalancer => {
            let mut l = Listener::new(id.name(), PICKED);
            for f in filters.discovery_balancer(backends)? {
                l = l.wasm(f);
            }
            l
        }
        ListenerId::NativeChain => Listener::new(id.name(), THREE).filter(native_jwt_filter(tokens)),
        ListenerId::WasmChain => {
            let mut l = Listener::new(id.name(), PICKED).wasm(filters.jwt_auth(tokens)?);
            for f in filters.discovery_balancer(backends)? {
                l = l.wasm(f);
            }
            l
        }
        ListenerId::NativeRbac => {
            let mut l = mtls.listener(id, ONE)?;
            for f in mtls::native_rbac_filters() {
                l = l.filter(f);
            }
            l
        }
        ListenerId::WasmAuthz => mtls.listener(id, ONE)?.wasm(filters.authz(&mtls::authz_config())?),
    };
    Ok(l)
}

/// The clusters every Envoy of the benchmark has.
pub fn clusters(backends: &[SocketAddr]) -> Vec<Cluster> {
    vec![
        Cluster::static_hosts(ONE, &backends[..1]),
        Cluster::static_hosts(THREE, backends),
        Cluster::original_dst(PICKED),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_baseline_exists_and_runs_before_what_it_judges() {
        let loads = loads();
        for (i, l) in loads.iter().enumerate() {
            if let Some(b) = &l.baseline {
                let j = loads.iter().position(|x| &x.id == b).unwrap();
                assert!(j < i, "{} before {}", b, l.id);
                assert_eq!(loads[j].token, l.token, "same load shape as the baseline");
            }
        }
        let ids: std::collections::BTreeSet<_> = loads.iter().map(|l| l.id.clone()).collect();
        assert_eq!(ids.len(), loads.len());
    }
}
