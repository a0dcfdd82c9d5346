//! The meshwasm filters as the benchmark loads them: artifact paths and plugin configurations, kept
//! in one place so each filter's config format (see `filters/<name>/src/config.rs` and README) is
//! wired once.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use meshwasm_tests::artifacts;
use meshwasm_tests::envoy::WasmFilter;
use serde_json::{Value, json};

use crate::jwt::{AUDIENCE, ISSUER, TokenSet};

/// The service name discovery publishes and the balancer looks up.
pub const SERVICE: &str = "bench";
/// discovery and balancer meet in shared data, which Envoy keys by vm_id: both use this one.
pub const MESH_VM_ID: &str = "meshwasm-mesh";
/// Verified-token cache entries, the same for jwt-auth and jwt_authn (`jwt_cache_size`).
pub const JWT_CACHE_ENTRIES: usize = 100;

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
        meshwasm_balancer::config::Plan::from_json(balancer_config().to_string().as_bytes()).unwrap();
    }

    #[test]
    fn missing_artifacts_say_how_to_build_them() {
        let set = FilterSet::new(PathBuf::from("/nonexistent"));
        let err = set.noop().unwrap_err().to_string();
        assert!(err.contains("meshwasm_noop.wasm is not built") && err.contains("make wasm"), "{err}");
    }
}
