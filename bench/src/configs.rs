//! The configurations under test: Envoy listeners that differ only in their HTTP filters, and the
//! loads driven through them.
//!
//! Listeners (all on one Envoy, all to the same backends):
//! - `passthrough`: router only, one backend: the physical limit of this Envoy on this machine.
//! - `noop` / `noop-headers`: meshwasm noop exporting every callback / only request headers (the wasm
//!   floor per export set), one backend.
//! - `native-jwt` / `wasm-jwt`: Envoy jwt_authn vs meshwasm jwt-auth, same JWKS (an RSA-2048 and a
//!   P-256 key), same issuer and audience, one backend.
//! - `native-origdst`: no Wasm, Envoy's own header_mutation filter steering an ORIGINAL_DST cluster by
//!   header to one backend: what ORIGINAL_DST steering costs natively (no target; it splits the
//!   balancer's gap to native round robin).
//! - `native-rr` / `wasm-balancer` / `wasm-balancer-service`: a STATIC cluster with round robin over three
//!   backends vs meshwasm discovery (static source, the same three backends) + balancer steering an
//!   ORIGINAL_DST cluster, discovery as an HTTP filter (filter form) or as a singleton Wasm service.
//! - `native-chain` / `wasm-chain[-service|-combined]`: jwt_authn + round robin vs jwt-auth + discovery +
//!   balancer: separate artifacts, discovery as a service, the combined `meshwasm.wasm` (it has no fused
//!   mode: filters/meshwasm/README.md).
//! - `native-rbac` / `wasm-authz`: Envoy RBAC vs meshwasm authz, the same policy on the caller's
//!   SPIFFE ID, method and path, behind an mTLS listener reached through a client sidecar
//!   ([`crate::mtls`]), one backend.
//! - `whole-chain[-combined]`: memory only, jwt-auth + authz + token-injector + discovery + balancer.
//!
//! Targets are issue 11's (authz: issue 10), on the Envoy CPU-cost ratio.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use meshwasm_tests::envoy::{Cluster, HttpFilter, Listener, Route, WasmFilter};
use serde_json::json;

use crate::filters::{self, FilterSet};
use crate::jwt::{AUDIENCE, Alg, ISSUER, TokenSet};
use crate::mtls::{self, Mtls};

/// Cluster with one backend (passthrough, noop, JWT listeners).
pub const ONE: &str = "one_backend";
/// Cluster with the three backends, round robin (native balancing).
pub const THREE: &str = "three_backends";
/// ORIGINAL_DST cluster steered by the balancer through filter state (no request header).
pub const PICKED: &str = "meshwasm_picked";
/// ORIGINAL_DST cluster steered by a request header (`native-origdst`: what ORIGINAL_DST steering itself
/// costs natively, without any Wasm).
pub const ORIGDST_BY_HEADER: &str = "origdst_by_header";
/// The header `ORIGDST_BY_HEADER` reads (Envoy's default name for `use_http_header`).
const ORIGDST_HEADER: &str = "x-envoy-original-dst-host";

/// Which listeners exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenerId {
    Passthrough,
    Noop,
    NoopHeaders,
    NativeJwt,
    WasmJwt,
    NativeRr,
    NativeOrigDst,
    WasmBalancer,
    WasmBalancerService,
    NativeChain,
    WasmChain,
    WasmChainService,
    WasmChainCombined,
    NativeRbac,
    WasmAuthz,
    WholeChain,
    WholeChainCombined,
}

impl ListenerId {
    pub const ALL: [ListenerId; 17] = [
        ListenerId::Passthrough,
        ListenerId::Noop,
        ListenerId::NoopHeaders,
        ListenerId::NativeJwt,
        ListenerId::WasmJwt,
        ListenerId::NativeRr,
        ListenerId::NativeOrigDst,
        ListenerId::WasmBalancer,
        ListenerId::WasmBalancerService,
        ListenerId::NativeChain,
        ListenerId::WasmChain,
        ListenerId::WasmChainService,
        ListenerId::WasmChainCombined,
        ListenerId::NativeRbac,
        ListenerId::WasmAuthz,
        ListenerId::WholeChain,
        ListenerId::WholeChainCombined,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ListenerId::Passthrough => "passthrough",
            ListenerId::Noop => "noop",
            ListenerId::NoopHeaders => "noop-headers",
            ListenerId::NativeJwt => "native-jwt",
            ListenerId::WasmJwt => "wasm-jwt",
            ListenerId::NativeRr => "native-rr",
            ListenerId::NativeOrigDst => "native-origdst",
            ListenerId::WasmBalancer => "wasm-balancer",
            ListenerId::WasmBalancerService => "wasm-balancer-service",
            ListenerId::NativeChain => "native-chain",
            ListenerId::WasmChain => "wasm-chain",
            ListenerId::WasmChainService => "wasm-chain-service",
            ListenerId::WasmChainCombined => "wasm-chain-combined",
            ListenerId::NativeRbac => "native-rbac",
            ListenerId::WasmAuthz => "wasm-authz",
            ListenerId::WholeChain => "whole-chain",
            ListenerId::WholeChainCombined => "whole-chain-combined",
        }
    }

    /// What the listener's filter chain is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            ListenerId::Passthrough => "router only → 1 backend (no filters)",
            ListenerId::Noop => "meshwasm noop, every callback exported (all callbacks) → 1 backend",
            ListenerId::NoopHeaders => "meshwasm noop, only request headers exported → 1 backend",
            ListenerId::NativeJwt => "Envoy jwt_authn (local JWKS, jwt_cache_size 100) → 1 backend",
            ListenerId::WasmJwt => "meshwasm jwt-auth (same JWKS inline, caches on) → 1 backend",
            ListenerId::NativeRr => "router → STATIC cluster, ROUND_ROBIN over 3 backends",
            ListenerId::NativeOrigDst => {
                "native steering, no Wasm: header_mutation sets x-envoy-original-dst-host (one backend) → ORIGINAL_DST (use_http_header)"
            }
            ListenerId::WasmBalancer => {
                "filter form: meshwasm discovery (static source, 3 backends) + balancer (round robin) → ORIGINAL_DST"
            }
            ListenerId::WasmBalancerService => {
                "service form: discovery as an envoy.bootstrap.wasm singleton service; balancer (round robin) alone in the HTTP chain → ORIGINAL_DST"
            }
            ListenerId::NativeChain => "jwt_authn → ROUND_ROBIN over 3 backends",
            ListenerId::WasmChain => {
                "meshwasm jwt-auth + discovery + balancer (separate artifacts) → ORIGINAL_DST"
            }
            ListenerId::WasmChainService => {
                "meshwasm jwt-auth + balancer, discovery as a singleton service (separate artifacts) → ORIGINAL_DST"
            }
            ListenerId::WasmChainCombined => {
                "meshwasm.wasm (the combined artifact, one vm_id): jwt-auth + discovery + balancer by root_id → ORIGINAL_DST"
            }
            ListenerId::NativeRbac => {
                "mTLS listener, Envoy RBAC (DENY rogue, ALLOW GET from frontend's SPIFFE ID) → 1 backend"
            }
            ListenerId::WasmAuthz => "mTLS listener, meshwasm authz (the same policy) → 1 backend",
            ListenerId::WholeChain => {
                "memory only: jwt-auth + authz + token-injector + discovery + balancer, separate artifacts → ORIGINAL_DST"
            }
            ListenerId::WholeChainCombined => {
                "memory only: the same five filters from meshwasm.wasm, one vm_id → ORIGINAL_DST"
            }
        }
    }

    /// Whether requests must carry a token (and a request without one must get 401).
    pub fn needs_token(self) -> bool {
        matches!(
            self,
            ListenerId::NativeJwt
                | ListenerId::WasmJwt
                | ListenerId::NativeChain
                | ListenerId::WasmChain
                | ListenerId::WasmChainService
                | ListenerId::WasmChainCombined
                | ListenerId::WholeChain
                | ListenerId::WholeChainCombined
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
            ListenerId::NativeRr
                | ListenerId::WasmBalancer
                | ListenerId::WasmBalancerService
                | ListenerId::NativeChain
                | ListenerId::WasmChain
                | ListenerId::WasmChainService
                | ListenerId::WasmChainCombined
                | ListenerId::WholeChain
                | ListenerId::WholeChainCombined
        )
    }

    /// Listeners whose memory is read but that no load drives (issue 11's whole-chain memory target).
    pub const MEMORY_ONLY: [ListenerId; 2] = [ListenerId::WholeChain, ListenerId::WholeChainCombined];
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
    /// Rounds of half the duration: a load no target depends on (keeps the full run's time down).
    pub short: bool,
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
            short: false,
        }
    }

    /// Judged against `baseline`; `target`, when set, is on the Envoy CPU-cost ratio (issue 11).
    fn against(mut self, baseline: &Load, target: Option<f64>) -> Self {
        self.baseline = Some(baseline.id.clone());
        self.target = target;
        self.target_on_cpu = target.is_some();
        self
    }

    fn short(mut self) -> Self {
        self.short = true;
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

/// Issue 11's targets, on the Envoy CPU-cost ratio (median of the rounds).
pub const JWT_REPEATED_TARGET: f64 = 1.0;
pub const JWT_UNIQUE_TARGET: f64 = 0.9;
pub const BALANCER_SERVICE_TARGET: f64 = 0.95;
pub const CHAIN_TARGET: f64 = 0.9;
/// Issue 10's target for authz against RBAC.
pub const AUTHZ_TARGET: f64 = 0.9;

/// All loads, in the order each round runs them (baselines next to what they judge). Loads no target
/// depends on run shorter rounds.
pub fn loads() -> Vec<Load> {
    use ListenerId::*;
    let mut out = vec![Load::new(Passthrough, TokenMode::None).short()];
    let pass = out[0].clone();
    out.push(Load::new(Noop, TokenMode::None).against(&pass, None).short());
    out.push(Load::new(NoopHeaders, TokenMode::None).against(&pass, None).short());
    for alg in Alg::ALL {
        for (mode, target) in
            [(TokenMode::Repeated(alg), JWT_REPEATED_TARGET), (TokenMode::Unique(alg), JWT_UNIQUE_TARGET)]
        {
            let native = Load::new(NativeJwt, mode);
            out.push(native.clone());
            out.push(Load::new(WasmJwt, mode).against(&native, Some(target)));
        }
    }
    let rr = Load::new(NativeRr, TokenMode::None);
    out.push(rr.clone());
    // No target: splits the balancer's gap to native round robin into ORIGINAL_DST steering (this row)
    // and what the Wasm filter adds on top of it.
    out.push(Load::new(NativeOrigDst, TokenMode::None).against(&rr, None));
    // The target is on the service form; the filter form is shown for platforms that load only filters.
    out.push(Load::new(WasmBalancer, TokenMode::None).against(&rr, None).short());
    out.push(Load::new(WasmBalancerService, TokenMode::None).against(&rr, Some(BALANCER_SERVICE_TARGET)));
    let chain = Load::new(NativeChain, TokenMode::Repeated(Alg::Rs256));
    out.push(chain.clone());
    // No fused form: meshwasm.wasm has none (filters/meshwasm/README.md, "No fused mode").
    for form in [WasmChain, WasmChainService, WasmChainCombined] {
        out.push(Load::new(form, TokenMode::Repeated(Alg::Rs256)).against(&chain, Some(CHAIN_TARGET)));
    }
    // The load goes through the client sidecar, which shares the load generator's CPU, so requests/s
    // say less here than the CPU-cost ratio.
    let rbac = Load::new(NativeRbac, TokenMode::None);
    out.push(rbac.clone());
    out.push(Load::new(WasmAuthz, TokenMode::None).against(&rbac, Some(AUTHZ_TARGET)));
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

/// Envoy's header_mutation filter setting the ORIGINAL_DST header to `backend` on every request.
fn steer_by_header(backend: SocketAddr) -> HttpFilter {
    let filter = json!({
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [{
                    "append": {
                        "header": { "key": ORIGDST_HEADER, "value": backend.to_string() },
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                }]
            }
        }
    });
    HttpFilter::Raw(filter.to_string())
}

/// A listener and what its Envoy needs besides the clusters every benchmark Envoy has.
#[derive(Debug, Clone)]
pub struct Setup {
    pub listener: Listener,
    /// Singleton Wasm services (`bootstrap_extensions`) its Envoy must run; listeners that share a
    /// service carry the same one, and an Envoy runs each once.
    pub services: Vec<WasmFilter>,
}

impl Setup {
    fn new(listener: Listener) -> Self {
        Self { listener, services: Vec::new() }
    }
}

/// Builds a listener, or says why it cannot be built (a filter not built yet, say).
pub fn listener(
    id: ListenerId,
    filters: &FilterSet,
    tokens: &TokenSet,
    backends: &[SocketAddr],
    mtls: &Mtls,
) -> Result<Setup> {
    let chain = |mut l: Listener, fs: Vec<WasmFilter>| {
        for f in fs {
            l = l.wasm(f);
        }
        l
    };
    let setup = match id {
        ListenerId::Passthrough => Setup::new(Listener::new(id.name(), ONE)),
        ListenerId::Noop => Setup::new(Listener::new(id.name(), ONE).wasm(filters.noop()?)),
        ListenerId::NoopHeaders => Setup::new(Listener::new(id.name(), ONE).wasm(filters.noop_headers()?)),
        ListenerId::NativeJwt => Setup::new(Listener::new(id.name(), ONE).filter(native_jwt_filter(tokens))),
        ListenerId::WasmJwt => Setup::new(Listener::new(id.name(), ONE).wasm(filters.jwt_auth(tokens)?)),
        ListenerId::NativeRr => Setup::new(Listener::new(id.name(), THREE)),
        ListenerId::NativeOrigDst => {
            let backend = backends.first().context("meshwasm bench: no backend for native-origdst")?;
            Setup::new(Listener::new(id.name(), ORIGDST_BY_HEADER).filter(steer_by_header(*backend)))
        }
        ListenerId::WasmBalancer => {
            Setup::new(chain(Listener::new(id.name(), PICKED), filters.discovery_balancer(backends)?))
        }
        ListenerId::WasmBalancerService => {
            let (service, balancer) = filters.discovery_service_balancer(backends)?;
            Setup { listener: Listener::new(id.name(), PICKED).wasm(balancer), services: vec![service] }
        }
        ListenerId::NativeChain => {
            Setup::new(Listener::new(id.name(), THREE).filter(native_jwt_filter(tokens)))
        }
        ListenerId::WasmChain => {
            let l = Listener::new(id.name(), PICKED).wasm(filters.jwt_auth(tokens)?);
            Setup::new(chain(l, filters.discovery_balancer(backends)?))
        }
        ListenerId::WasmChainService => {
            let (service, balancer) = filters.discovery_service_balancer(backends)?;
            let l = Listener::new(id.name(), PICKED).wasm(filters.jwt_auth(tokens)?).wasm(balancer);
            Setup { listener: l, services: vec![service] }
        }
        ListenerId::WasmChainCombined => {
            let c = filters.combined_chain(tokens, backends, false)?;
            Setup { listener: chain(Listener::new(id.name(), PICKED), c.filters), services: c.services }
        }
        ListenerId::NativeRbac => {
            let mut l = mtls.listener(id, ONE)?;
            for f in mtls::native_rbac_filters() {
                l = l.filter(f);
            }
            Setup::new(l)
        }
        ListenerId::WasmAuthz => {
            Setup::new(mtls.listener(id, ONE)?.wasm(filters.authz(&mtls::authz_config())?))
        }
        ListenerId::WholeChain => {
            let l = Listener::new(id.name(), PICKED)
                .wasm(filters.jwt_auth(tokens)?)
                .wasm(filters.authz_after_jwt()?)
                .wasm(filters.token_injector()?);
            Setup::new(chain(l, filters.discovery_balancer(backends)?))
        }
        ListenerId::WholeChainCombined => {
            let c = filters.combined_chain(tokens, backends, true)?;
            Setup { listener: chain(Listener::new(id.name(), PICKED), c.filters), services: c.services }
        }
    };
    Ok(setup)
}

/// The name of the benchmark IdP's listener (in every benchmark Envoy, see [`clusters`]).
pub const IDP_LISTENER: &str = "bench-idp";

/// The benchmark's IdP for token-injector: a listener on a fixed port answering the token endpoint
/// with a client-credentials token response. Every benchmark Envoy has it, passthrough included, so
/// memory differences do not include it.
pub fn idp_listener(port: u16) -> Listener {
    Listener::empty(IDP_LISTENER).port(port).route(Route::direct("/", 200, filters::IDP_TOKEN_RESPONSE))
}

/// The clusters every Envoy of the benchmark has (`idp`: the address of [`idp_listener`]).
pub fn clusters(backends: &[SocketAddr], idp: SocketAddr) -> Vec<Cluster> {
    vec![
        Cluster::static_hosts(ONE, &backends[..1]),
        Cluster::static_hosts(THREE, backends),
        Cluster::original_dst(PICKED),
        Cluster::original_dst_header(ORIGDST_BY_HEADER, ORIGDST_HEADER),
        Cluster::static_hosts(filters::IDP_CLUSTER, &[idp]),
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
