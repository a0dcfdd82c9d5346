//! A Kubernetes API fake for EndpointSlices: `GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices
//! ?labelSelector=kubernetes.io/service-name=<svc>` → an `EndpointSliceList`. Optional bearer-token
//! check (401 `Status` otherwise), `resourceVersion` that grows with every change.

use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde_json::{Value, json};

use super::server::{Failure, FakeRequest, FakeResponse, FakeServer, lock};

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: IpAddr,
    /// `None` leaves `conditions.ready` out (unknown, which clients read as ready).
    pub ready: Option<bool>,
    pub zone: Option<String>,
}

impl SliceEndpoint {
    pub fn ready(ip: IpAddr) -> Self {
        Self { ip, ready: Some(true), zone: None }
    }
    pub fn not_ready(ip: IpAddr) -> Self {
        Self { ip, ready: Some(false), zone: None }
    }
    pub fn zone(mut self, z: &str) -> Self {
        self.zone = Some(z.into());
        self
    }
}

/// One EndpointSlice of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub endpoints: Vec<SliceEndpoint>,
    /// (name, port)
    pub ports: Vec<(String, u16)>,
}

#[derive(Default)]
struct State {
    version: u64,
    token: Option<String>,
    /// (namespace, service) → slices
    slices: Vec<((String, String), Vec<Slice>)>,
}

pub struct Kubernetes {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl Kubernetes {
    pub fn start() -> Result<Self> {
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        let server = FakeServer::start(
            "kube-apiserver",
            Arc::new(move |req| {
                let st = st.clone();
                Box::pin(async move { handle(req, &st) })
            }),
        )?;
        Ok(Self { server, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Requires `Authorization: Bearer <token>` from now on.
    pub fn require_token(&self, token: &str) {
        lock(&self.state).token = Some(token.into());
    }

    pub fn set_slices(&self, namespace: &str, service: &str, slices: Vec<Slice>) {
        let mut s = lock(&self.state);
        s.version += 1;
        let key = (namespace.to_owned(), service.to_owned());
        s.slices.retain(|(k, _)| *k != key);
        s.slices.push((key, slices));
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

fn status(code: u16, reason: &str, message: &str) -> FakeResponse {
    FakeResponse::json(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "code": code}),
    )
}

fn handle(req: FakeRequest, st: &Mutex<State>) -> FakeResponse {
    let s = lock(st);
    if let Some(token) = &s.token
        && req.header("authorization") != Some(&format!("Bearer {token}"))
    {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let rest = req.path.strip_prefix("/apis/discovery.k8s.io/v1/namespaces/");
    let Some(ns) = rest.and_then(|r| r.strip_suffix("/endpointslices")) else {
        return status(404, "NotFound", "the server could not find the requested resource");
    };
    let selector = req.param("labelSelector").unwrap_or("");
    let wanted = selector.strip_prefix("kubernetes.io/service-name=");
    let mut items = Vec::new();
    for ((n, svc), slices) in &s.slices {
        if n != ns || wanted.is_some_and(|w| w != svc) {
            continue;
        }
        for (i, slice) in slices.iter().enumerate() {
            let family =
                if slice.endpoints.first().is_some_and(|e| e.ip.is_ipv6()) { "IPv6" } else { "IPv4" };
            let endpoints: Vec<Value> = slice
                .endpoints
                .iter()
                .enumerate()
                .map(|(j, e)| {
                    let mut v = json!({"addresses": [e.ip.to_string()], "conditions": {},
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{svc}-{i}-{j}")}, "nodeName": "node-1"});
                    if let Some(r) = e.ready {
                        v["conditions"] = json!({"ready": r, "serving": r, "terminating": !r});
                    }
                    if let Some(z) = &e.zone {
                        v["zone"] = json!(z);
                    }
                    v
                })
                .collect();
            let ports: Vec<Value> = slice
                .ports
                .iter()
                .map(|(name, port)| json!({"name": name, "protocol": "TCP", "port": port}))
                .collect();
            items.push(json!({
                "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"name": format!("{svc}-{i:05}"), "namespace": ns, "resourceVersion": s.version.to_string(),
                             "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": family, "endpoints": endpoints, "ports": ports,
            }));
        }
    }
    FakeResponse::json(
        200,
        &json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": s.version.to_string()}, "items": items}),
    )
}
