//! The parts every fault run starts: load-test backends as child processes (killable with SIGKILL
//! and restartable on their port), and real Envoy with the meshwasm chain (jwt-auth with keys from
//! the OpenID Provider, discovery, balancer over an ORIGINAL_DST cluster).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::process::{self, ChildGuard};
use serde_json::{Value, json};

pub const SERVICE: &str = "api";
pub const ETCD_PREFIX: &str = "/services/api/";
pub const LISTENER: &str = "mesh";

/// A `meshwasm-faults backend` child process (the benchmark's minimal keep-alive backend).
pub struct ProcBackend {
    pub name: String,
    pub addr: SocketAddr,
    child: Mutex<Option<ChildGuard>>,
}

impl ProcBackend {
    pub fn start(name: &str) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], process::free_port()));
        let b = Self { name: name.to_owned(), addr, child: Mutex::new(None) };
        b.spawn()?;
        Ok(b)
    }

    fn spawn(&self) -> Result<()> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["backend", "--port", &self.addr.port().to_string(), "--name", &self.name]);
        let child = ChildGuard::spawn(&format!("backend-{}", self.name), cmd)?;
        if !process::wait_until(Duration::from_secs(10), || process::port_open(self.addr)) {
            child.print_tail(20);
            bail!("backend {} did not listen on {}", self.name, self.addr);
        }
        *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies with its connections.
    pub fn kill(&self) {
        if let Some(c) = self.child.lock().unwrap_or_else(PoisonError::into_inner).take() {
            c.kill();
        }
    }

    /// A fresh process on the same port.
    pub fn restart(&self) -> Result<()> {
        self.kill();
        let mut last = None;
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("restart")))
    }

    /// The registry entry (`{"address": ...}`) of this backend.
    pub fn entry(&self) -> String {
        json!({"address": self.addr.to_string(), "metadata": {"instance": self.name}}).to_string()
    }
}

/// The jwt-auth provider of the mesh: issuer and keys from the OpenID Provider through cluster `idp`.
pub struct JwtSpec {
    pub issuer: String,
    pub audience: String,
    /// The `remote_jwks` object (without `cluster`, added here).
    pub remote_jwks: Value,
    /// Verified-token cache entries (0: every request verifies its signature with the cached keys).
    pub cache_entries: u32,
}

/// What one mesh Envoy runs.
pub struct MeshSpec {
    pub jwt: Option<JwtSpec>,
    /// Discovery `source` of the service.
    pub source: Value,
    /// Extra fields of the discovery service (refresh, max_retry, …).
    pub service: Value,
    /// Balancer `outlier_detection`.
    pub outlier: Value,
    /// Extra clusters (`idp`, `registry`).
    pub clusters: Vec<Cluster>,
    pub concurrency: u32,
}

/// The default discovery service settings of the fault runs: poll every 250 ms, retry at most every
/// 1 s after errors (the filter's floor), a 1 s poll timeout.
pub fn fast_service() -> Value {
    json!({"refresh": "250ms", "timeout": "1s", "max_retry": "1s"})
}

impl MeshSpec {
    pub fn start(&self) -> Result<Envoy> {
        let mut listener = Listener::new(LISTENER, "picked");
        if let Some(j) = &self.jwt {
            let mut remote = j.remote_jwks.clone();
            remote["cluster"] = json!("idp");
            let cfg = json!({
                "providers": {"idp": {"issuer": j.issuer, "audiences": [j.audience], "remote_jwks": remote}},
                "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
                "cache_entries": j.cache_entries,
            });
            listener = listener
                .wasm(WasmFilter::new("jwt-auth", wasm_path("meshwasm_jwt_auth")).config(cfg.to_string()));
        }
        let mut service = json!({"name": SERVICE, "allow_loopback": true, "source": self.source});
        if let (Some(s), Some(extra)) = (service.as_object_mut(), self.service.as_object()) {
            for (k, v) in extra {
                s.insert(k.clone(), v.clone());
            }
        }
        let discovery = json!({"tick": "100ms", "debug_path": "/meshwasm/discovery", "services": [service]});
        let balancer = json!({
            "service_from": [{"fixed": SERVICE}],
            "services": {SERVICE: {"algorithm": "round_robin", "outlier_detection": self.outlier}},
        });
        listener = listener
            .wasm(
                WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                    .vm_id("meshwasm")
                    .config(discovery.to_string()),
            )
            .wasm(
                WasmFilter::new("balancer", wasm_path("meshwasm_balancer"))
                    .vm_id("meshwasm")
                    .config(balancer.to_string()),
            );
        let mut cfg = EnvoyConfig::new().concurrency(self.concurrency).log_level("warn").listener(listener);
        cfg.component_log_level = Some("wasm:info".to_owned());
        cfg = cfg.cluster(Cluster::original_dst("picked"));
        for c in &self.clusters {
            cfg = cfg.cluster(c.clone());
        }
        cfg.start().context("starting Envoy with the meshwasm chain")
    }
}

/// An Envoy STATIC cluster over several etcd members, as a user would write it for a registry
/// cluster: active health checks on `/health` every 250 ms and outlier detection on connect
/// failures, so a dead member is skipped within a poll or two.
pub fn etcd_cluster(name: &str, members: &[SocketAddr]) -> Cluster {
    let endpoints: String = members
        .iter()
        .map(|a| {
            format!(
                "\n      - endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let yaml = format!(
        r#"name: {name}
type: STATIC
connect_timeout: 0.25s
lb_policy: ROUND_ROBIN
load_assignment:
  cluster_name: {name}
  endpoints:
    - lb_endpoints:{endpoints}
health_checks:
  - timeout: 0.2s
    interval: 0.25s
    unhealthy_threshold: 1
    healthy_threshold: 1
    http_health_check: {{path: /health}}
outlier_detection:
  consecutive_local_origin_failure: 1
  split_external_local_origin_errors: true
  interval: 0.5s
  base_ejection_time: 2s
  max_ejection_percent: 100
"#
    );
    Cluster::raw(name, &yaml)
}

/// Waits until `n` requests in a row succeed through the mesh (keys loaded, endpoints published).
pub fn wait_serving(envoy: &Envoy, token: Option<&str>, instances: usize) -> Result<()> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    let mut seen = std::collections::BTreeSet::new();
    let ok = process::wait_until(Duration::from_secs(30), || {
        match process::http_request(
            envoy.listener_addr(LISTENER),
            "GET",
            "/",
            &headers,
            b"",
            Duration::from_secs(5),
        ) {
            Ok(r) if r.status == 200 => {
                seen.insert(r.header("x-backend-instance").unwrap_or_default().to_owned());
                seen.len() >= instances
            }
            _ => false,
        }
    });
    if !ok {
        envoy.print_log_tail(60);
        bail!("the mesh did not serve requests from {instances} backends within 30 s (seen {seen:?})");
    }
    Ok(())
}

/// Sum of every stat whose name ends with `suffix` and contains `contains`.
pub fn stat_sum(envoy: &Envoy, contains: &str, suffix: &str) -> u64 {
    envoy
        .stats()
        .map(|s| s.iter().filter(|(k, _)| k.contains(contains) && k.ends_with(suffix)).map(|(_, v)| *v).sum())
        .unwrap_or(0)
}
