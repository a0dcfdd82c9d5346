//! The meshwasm filters as the benchmark loads them: artifact paths and plugin configurations, kept
//! in one place so each filter's config format (see `filters/<name>/src/config.rs` and README) is
//! wired once.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use meshwasm_tests::artifacts;
use meshwasm_tests::envoy::WasmFilter;
use serde_json::{Value, json};

use crate::jwt::{AUDIENCE, ISSUER, TokenSet};

/// The service name discovery publishes and the balancer looks up.
pub const SERVICE: &str = "bench";
/// discovery and balancer meet in shared data, which Envoy keys by vm_id: both use this one.
pub const MESH_VM_ID: &str = "meshwasm-mesh";
/// The noop filter with request-headers-only exports (bench/noop-headers.callbacks).
pub const NOOP_HEADERS: &str = "meshwasm_noop_headers";
/// The combined artifact: every filter in one module, selected by root_id.
pub const COMBINED: &str = "meshwasm";
/// The combined chains' one vm_id (one VM per worker for the whole chain).
pub const COMBINED_VM_ID: &str = "meshwasm-combined";
/// discovery's Wasm-service form and its balancer meet in this vm_id's shared data.
pub const SERVICE_VM_ID: &str = "meshwasm-mesh-service";
/// The cluster of the benchmark's IdP: a listener of every benchmark Envoy answering the token endpoint
/// directly, for token-injector.
pub const IDP_CLUSTER: &str = "bench_idp";
/// The token endpoint's path.
pub const IDP_TOKEN_PATH: &str = "/oauth2/token";
/// What the IdP answers: a client-credentials token response.
pub const IDP_TOKEN_RESPONSE: &str =
    r#"{"access_token":"bench-upstream-token","token_type":"Bearer","expires_in":86400}"#;
/// Verified-token cache entries, the same for jwt-auth and jwt_authn (`jwt_cache_size`).
pub const JWT_CACHE_ENTRIES: usize = 100;

/// The filters of a listener's HTTP chain and the Wasm services its Envoy must run.
#[derive(Debug, Clone)]
pub struct Chain {
    pub filters: Vec<WasmFilter>,
    pub services: Vec<WasmFilter>,
}

/// Where the artifacts are and which exist.
#[derive(Debug, Clone)]
pub struct FilterSet {
    pub dir: PathBuf,
}

impl FilterSet {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Path of `<crate_with_underscores>.wasm`, or an error saying it is not built.
    pub fn artifact(&self, file_stem: &str) -> Result<PathBuf> {
        match artifacts::find_wasm_in(&self.dir, file_stem) {
            Some(path) => Ok(path),
            None => bail!(
                "{file_stem}.wasm is not built in {}: {}",
                self.dir.display(),
                artifacts::build_hint(file_stem)
            ),
        }
    }

    pub fn noop(&self) -> Result<WasmFilter> {
        Ok(WasmFilter::new("noop", self.artifact("meshwasm_noop")?))
    }

    /// The noop filter with only its request-headers callback exported (`make wasm` writes it from
    /// meshwasm_noop.wasm with `bench/noop-headers.callbacks`). Its own vm_id: it is different code.
    pub fn noop_headers(&self) -> Result<WasmFilter> {
        let path = artifacts::find_wasm_in(&self.dir, NOOP_HEADERS).with_context(|| {
            format!(
                "{NOOP_HEADERS}.wasm is not in {}: run `make wasm` (its post-link step writes it from \
                 meshwasm_noop.wasm with bench/noop-headers.callbacks)",
                self.dir.display()
            )
        })?;
        Ok(WasmFilter::new("noop-headers", path))
    }

    /// jwt-auth with the benchmark's JWKS inline, every path requiring a token, token kept upstream
    /// (`forward`, like the native side), cache as large as jwt_authn's.
    pub fn jwt_auth(&self, tokens: &TokenSet) -> Result<WasmFilter> {
        let path = self.artifact("meshwasm_jwt_auth")?;
        Ok(WasmFilter::new("jwt-auth", path).config(jwt_auth_config(tokens)?.to_string()))
    }

    /// authz with `config` (a policy in authz's JSON).
    pub fn authz(&self, config: &Value) -> Result<WasmFilter> {
        Ok(WasmFilter::new("authz", self.artifact("meshwasm_authz")?).config(config.to_string()))
    }

    /// token-injector fetching its token from the benchmark's IdP (a direct-response listener of the
    /// same Envoy, [`IDP_CLUSTER`]), injecting it into every request.
    pub fn token_injector(&self) -> Result<WasmFilter> {
        let path = self.artifact("meshwasm_token_injector")?;
        Ok(WasmFilter::new("token-injector", path).config(token_injector_config().to_string()))
    }

    /// The whole chain's authz: requests from jwt-auth's verified `bench-user` may `GET`.
    pub fn authz_after_jwt(&self) -> Result<WasmFilter> {
        self.authz(&authz_after_jwt_config())
    }

    /// Discovery as a singleton Wasm service (`EnvoyConfig::wasm_service`: the bootstrap extension
    /// `envoy.bootstrap.wasm` with `singleton: true`) and the balancer in the
    /// HTTP chain, meeting in the shared data of [`SERVICE_VM_ID`] (not the filter form's vm_id, so the
    /// two forms never publish into one namespace when they run in the same Envoy).
    pub fn discovery_service_balancer(&self, backends: &[SocketAddr]) -> Result<(WasmFilter, WasmFilter)> {
        let discovery = self.artifact("meshwasm_discovery")?;
        let balancer = self.artifact("meshwasm_balancer")?;
        let service = WasmFilter::new("discovery", discovery)
            .vm_id(SERVICE_VM_ID)
            .config(discovery_service_config(backends).to_string());
        Ok((
            service,
            WasmFilter::new("balancer", balancer).vm_id(SERVICE_VM_ID).config(balancer_config().to_string()),
        ))
    }

    /// The combined artifact `meshwasm.wasm`, or why it is not there.
    fn combined(&self) -> Result<PathBuf> {
        artifacts::find_wasm_in(&self.dir, COMBINED).with_context(|| {
            format!(
                "{COMBINED}.wasm (the combined artifact, issue 11 item 5) is not in {}: run `make wasm` once it \
                 builds it",
                self.dir.display()
            )
        })
    }

    /// jwt-auth + discovery + balancer (`whole`: jwt-auth + authz + token-injector + discovery +
    /// balancer) from the combined artifact, each selected by its root_id, all in one vm_id: one VM per
    /// worker for the whole chain.
    pub fn combined_chain(&self, tokens: &TokenSet, backends: &[SocketAddr], whole: bool) -> Result<Chain> {
        let path = self.combined()?;
        // meshwasm.wasm selects the filter by root_id: `meshwasm.jwt_auth`, `meshwasm.discovery`, …
        let plugin = |name: &str, config: Value| {
            WasmFilter::new(name, &path)
                .root_id(&format!("meshwasm.{}", name.replace('-', "_")))
                .vm_id(COMBINED_VM_ID)
                .config(config.to_string())
        };
        let mut filters = vec![plugin("jwt-auth", jwt_auth_config(tokens)?)];
        if whole {
            filters.push(plugin("authz", authz_after_jwt_config()));
            filters.push(plugin("token-injector", token_injector_config()));
        }
        filters.push(plugin("discovery", discovery_config(backends)));
        filters.push(plugin("balancer", balancer_config()));
        Ok(Chain { filters, services: Vec::new() })
    }

    /// discovery (static source over `backends`) followed by balancer (round robin), sharing a vm_id.
    pub fn discovery_balancer(&self, backends: &[SocketAddr]) -> Result<Vec<WasmFilter>> {
        let discovery = self.artifact("meshwasm_discovery")?;
        let balancer = self.artifact("meshwasm_balancer")?;
        Ok(vec![
            WasmFilter::new("discovery", discovery)
                .vm_id(MESH_VM_ID)
                .config(discovery_config(backends).to_string()),
            WasmFilter::new("balancer", balancer).vm_id(MESH_VM_ID).config(balancer_config().to_string()),
        ])
    }
}

fn jwt_auth_config(tokens: &TokenSet) -> Result<Value> {
    let jwks: Value = serde_json::from_str(&tokens.jwks_json)?;
    Ok(json!({
        "providers": {
            "bench": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": jwks,
                "forward": true,
            }
        },
        "rules": [{ "match": { "prefix": "/" }, "requires_any": ["bench"] }],
        "cache_entries": JWT_CACHE_ENTRIES,
    }))
}

fn discovery_config(backends: &[SocketAddr]) -> Value {
    let endpoints: Vec<Value> = backends.iter().map(|a| json!({ "address": a.to_string() })).collect();
    json!({
        "lease": { "name": SERVICE },
        // The benchmark backends listen on loopback: opt in.
        "services": [{ "name": SERVICE, "refresh": "5s", "allow_loopback": true,
                       "source": { "static": { "endpoints": endpoints } } }],
    })
}

/// Discovery's configuration as a Wasm service: the same source, `mode: service`, no lease (it is the
/// only discovery VM).
fn discovery_service_config(backends: &[SocketAddr]) -> Value {
    let mut c = discovery_config(backends);
    if let Some(o) = c.as_object_mut() {
        o.remove("lease");
        o.insert("mode".into(), json!("service"));
    }
    c
}

fn token_injector_config() -> Value {
    json!({
        "token_endpoint": { "cluster": IDP_CLUSTER, "path": IDP_TOKEN_PATH, "authority": "idp.bench.meshwasm.test" },
        "client_id": "bench",
        "client_secret": "bench-secret",
    })
}

fn authz_after_jwt_config() -> Value {
    json!({"policies": [
        {"name": "bench-user-reads", "action": "ALLOW",
         "rules": [{"from": [{"source": {"request_principals": [format!("{ISSUER}/{}", crate::jwt::SUBJECT)]}}],
                    "to": [{"operation": {"methods": ["GET"]}}]}]},
    ]})
}

fn balancer_config() -> Value {
    json!({
        "service_from": [{ "fixed": SERVICE }],
        "services": { SERVICE: { "algorithm": "round_robin" } },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configurations the benchmark loads are accepted by each filter's own parser, so a change of a
    /// filter's config format fails here instead of as a "not measured" row.
    #[test]
    fn configs_are_accepted_by_the_filters_own_parsers() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = TokenSet::generate(dir.path()).unwrap();
        let jwt = jwt_auth_config(&tokens).unwrap().to_string();
        meshwasm_jwt_auth::config::Plan::from_json(jwt.as_bytes()).unwrap();
        let backends: Vec<SocketAddr> =
            (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], 8000 + p))).collect();
        meshwasm_discovery::config::Plan::from_json(discovery_config(&backends).to_string().as_bytes())
            .unwrap();
        let service = meshwasm_discovery::config::Plan::from_json(
            discovery_service_config(&backends).to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(service.mode, meshwasm_discovery::config::Mode::Service);
        meshwasm_balancer::config::Plan::from_json(balancer_config().to_string().as_bytes()).unwrap();
    }

    #[test]
    fn missing_artifacts_say_how_to_build_them() {
        let set = FilterSet::new(PathBuf::from("/nonexistent"));
        let err = set.noop().unwrap_err().to_string();
        assert!(err.contains("meshwasm_noop.wasm is not built") && err.contains("make wasm"), "{err}");
    }
}
