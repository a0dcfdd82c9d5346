//! A Nacos fake: `GET /nacos/v1/ns/instance/list?serviceName=<s>[&groupName=][&namespaceId=][&healthyOnly=]`
//! answering like Nacos 2.x's v1 naming API (`hosts` with ip, port, float weight, healthy, enabled,
//! metadata; `cacheMillis`). `healthyOnly=true` drops unhealthy instances; disabled ones are always
//! listed (clients must skip them).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde_json::{Value, json};

use super::server::{Failure, FakeRequest, FakeResponse, FakeServer, lock};

#[derive(Debug, Clone, PartialEq)]
pub struct NacosInstance {
    pub addr: SocketAddr,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub cluster: String,
    pub metadata: BTreeMap<String, String>,
}

impl NacosInstance {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1.0,
            healthy: true,
            enabled: true,
            cluster: "DEFAULT".into(),
            metadata: BTreeMap::new(),
        }
    }
    pub fn weight(mut self, w: f64) -> Self {
        self.weight = w;
        self
    }
    pub fn unhealthy(mut self) -> Self {
        self.healthy = false;
        self
    }
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
}

pub struct Nacos {
    server: FakeServer,
    services: Arc<Mutex<BTreeMap<String, Vec<NacosInstance>>>>,
}

impl Nacos {
    pub fn start() -> Result<Self> {
        let services: Arc<Mutex<BTreeMap<String, Vec<NacosInstance>>>> = Arc::default();
        let st = services.clone();
        let server = FakeServer::start(
            "nacos",
            Arc::new(move |req| {
                let st = st.clone();
                Box::pin(async move { handle(req, &st) })
            }),
        )?;
        Ok(Self { server, services })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Replaces the instances of `service` in group DEFAULT_GROUP.
    pub fn set_instances(&self, service: &str, instances: Vec<NacosInstance>) {
        lock(&self.services).insert(format!("DEFAULT_GROUP@@{service}"), instances);
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.server.requests()
    }

    pub fn fail(&self, f: Failure) {
        self.server.fail(f);
    }

    pub fn recover(&self) {
        self.server.recover();
    }
}

fn handle(req: FakeRequest, st: &Mutex<BTreeMap<String, Vec<NacosInstance>>>) -> FakeResponse {
    if req.path != "/nacos/v1/ns/instance/list" {
        return FakeResponse::text(404, "no such api");
    }
    let Some(service) = req.param("serviceName") else {
        return FakeResponse::text(400, "caused: Param 'serviceName' is required.;");
    };
    let group = req.param("groupName").unwrap_or("DEFAULT_GROUP");
    let key = format!("{group}@@{service}");
    let healthy_only = req.param("healthyOnly") == Some("true");
    let list = lock(st).get(&key).cloned().unwrap_or_default();
    let hosts: Vec<Value> = list
        .iter()
        .filter(|i| !healthy_only || i.healthy)
        .map(|i| {
            let ip = i.addr.ip().to_string();
            json!({"instanceId": format!("{ip}#{}#{}#{key}", i.addr.port(), i.cluster), "ip": ip, "port": i.addr.port(),
                   "weight": i.weight, "healthy": i.healthy, "enabled": i.enabled, "ephemeral": true,
                   "clusterName": i.cluster, "serviceName": key, "metadata": i.metadata,
                   "instanceHeartBeatInterval": 5000, "instanceHeartBeatTimeOut": 15000, "ipDeleteTimeout": 30000})
        })
        .collect();
    FakeResponse::json(
        200,
        &json!({"name": key, "groupName": group, "clusters": "", "cacheMillis": 10000, "hosts": hosts,
                "lastRefTime": 0, "checksum": "", "allIPs": false, "reachProtectionThreshold": false, "valid": true}),
    )
}
