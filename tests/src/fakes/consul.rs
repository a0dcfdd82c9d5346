//! A Consul fake: `GET /v1/health/service/<name>` with blocking queries, as Consul documents them.
//!
//! - `X-Consul-Index` on every answer: the raft index of the service's last change (≥ 1).
//! - `?index=N&wait=D`: when N is at least the current index, the request is held until the service
//!   changes or `wait` (default 5 min, max 10 min) plus up to wait/16 of jitter passes; then the
//!   current state is returned (possibly unchanged).
//! - `?passing`: only entries whose checks are all `passing`; `?tag=`: only entries with that tag.
//! - [`Consul::set_index`] moves the index (e.g. backwards, as after a snapshot restore).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::server::{Failure, FakeRequest, FakeResponse, FakeServer, go_duration, lock};

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulInstance {
    pub node: String,
    pub node_address: String,
    /// Empty → clients use the node address.
    pub service_address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weight_passing: u32,
    pub weight_warning: u32,
    /// Check statuses: "passing", "warning", "critical".
    pub checks: Vec<String>,
}

impl ConsulInstance {
    /// A passing instance on `addr` (service address set, weight 1).
    pub fn new(node: &str, addr: SocketAddr) -> Self {
        Self {
            node: node.to_owned(),
            node_address: addr.ip().to_string(),
            service_address: addr.ip().to_string(),
            port: addr.port(),
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weight_passing: 1,
            weight_warning: 1,
            checks: vec!["passing".into()],
        }
    }

    pub fn weight(mut self, w: u32) -> Self {
        self.weight_passing = w;
        self
    }

    pub fn status(mut self, s: &str) -> Self {
        self.checks = vec!["passing".into(), s.into()];
        self
    }

    pub fn tag(mut self, t: &str) -> Self {
        self.tags.push(t.into());
        self
    }

    /// Empties `Service.Address` so that clients fall back to `Node.Address`.
    pub fn node_address_only(mut self) -> Self {
        self.service_address.clear();
        self
    }

    fn to_json(&self, service: &str, modify_index: u64) -> Value {
        let id = format!("{service}-{}-{}", self.node, self.port);
        let checks: Vec<Value> = std::iter::once(json!({
            "Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": self.checks.first().cloned().unwrap_or_else(|| "passing".into()), "ServiceID": "", "ServiceName": ""}))
        .chain(self.checks.iter().skip(1).enumerate().map(|(i, s)| {
            json!({"Node": self.node, "CheckID": format!("service:{id}:{i}"), "Name": "Service check", "Status": s,
                   "ServiceID": id, "ServiceName": service})
        }))
        .collect();
        json!({
            "Node": {"ID": format!("00000000-0000-0000-0000-{:012}", self.port), "Node": self.node,
                     "Address": self.node_address, "Datacenter": "dc1", "TaggedAddresses": {"lan": self.node_address},
                     "Meta": {}, "CreateIndex": 1, "ModifyIndex": modify_index},
            "Service": {"ID": id, "Service": service, "Tags": self.tags, "Address": self.service_address,
                        "Meta": self.meta, "Port": self.port,
                        "Weights": {"Passing": self.weight_passing, "Warning": self.weight_warning},
                        "EnableTagOverride": false, "CreateIndex": modify_index, "ModifyIndex": modify_index},
            "Checks": checks,
        })
    }
}

#[derive(Default)]
struct State {
    index: u64,
    services: BTreeMap<String, (u64, Vec<ConsulInstance>)>,
}

/// A running Consul fake.
pub struct Consul {
    server: FakeServer,
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Consul {
    pub fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(State { index: 1, services: BTreeMap::new() }));
        let (tx, _) = tokio::sync::watch::channel(1u64);
        let changed = Arc::new(tx);
        let (st, ch) = (state.clone(), changed.clone());
        let server = FakeServer::start(
            "consul",
            Arc::new(move |req| {
                let (st, ch) = (st.clone(), ch.clone());
                Box::pin(async move { handle(req, st, ch).await })
            }),
        )?;
        Ok(Self { server, state, changed })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Replaces the instances of `service` (a change: the index advances, blocked queries return).
    pub fn set_instances(&self, service: &str, instances: Vec<ConsulInstance>) {
        let index = {
            let mut s = lock(&self.state);
            s.index += 1;
            let i = s.index;
            s.services.insert(service.to_owned(), (i, instances));
            i
        };
        self.changed.send_replace(index);
    }

    /// Sets the raft index (all services' indexes follow), e.g. backwards to simulate a restore.
    pub fn set_index(&self, index: u64) {
        {
            let mut s = lock(&self.state);
            s.index = index.max(1);
            let i = s.index;
            for v in s.services.values_mut() {
                v.0 = i;
            }
        }
        self.changed.send_replace(index);
    }

    pub fn index(&self) -> u64 {
        lock(&self.state).index
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

    pub fn stop(&mut self) {
        self.server.stop();
    }
}

fn service_index(st: &Mutex<State>, service: &str) -> u64 {
    let s = lock(st);
    s.services.get(service).map_or(s.index, |(i, _)| *i)
}

async fn handle(
    req: FakeRequest,
    st: Arc<Mutex<State>>,
    ch: Arc<tokio::sync::watch::Sender<u64>>,
) -> FakeResponse {
    let Some(service) = req.path.strip_prefix("/v1/health/service/").map(str::to_owned) else {
        return FakeResponse::text(404, "Invalid URL path: not a recognized HTTP API endpoint");
    };
    if req.method != "GET" {
        return FakeResponse::text(405, "method not allowed");
    }
    let index: u64 = match req.param("index").map(str::parse) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return FakeResponse::text(400, "Invalid index"),
    };
    if index > 0 && service_index(&st, &service) <= index {
        let wait = match req.param("wait") {
            None => Duration::from_secs(300),
            Some(w) => match go_duration(w) {
                Some(d) => d.min(Duration::from_secs(600)),
                None => return FakeResponse::text(400, "Invalid wait time"),
            },
        };
        // Consul adds up to wait/16 of random jitter.
        let jitter = wait / 16;
        let jitter = if jitter.is_zero() { Duration::ZERO } else { jitter.mul_f64(rand::random::<f64>()) };
        let mut rx = ch.subscribe();
        let deadline = tokio::time::Instant::now() + wait + jitter;
        loop {
            if service_index(&st, &service) > index {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                r = rx.changed() => if r.is_err() { break },
            }
        }
    }
    let (idx, entries) = {
        let s = lock(&st);
        match s.services.get(&service) {
            Some((i, list)) => (*i, list.iter().map(|inst| (inst.clone(), *i)).collect::<Vec<_>>()),
            None => (s.index, Vec::new()),
        }
    };
    let passing = req.param("passing").is_some_and(|v| v.is_empty() || v == "true" || v == "1");
    let tag = req.param("tag").map(str::to_owned);
    let body: Vec<Value> = entries
        .iter()
        .filter(|(i, _)| !passing || i.checks.iter().all(|c| c == "passing"))
        .filter(|(i, _)| tag.as_ref().is_none_or(|t| i.tags.contains(t)))
        .map(|(i, m)| i.to_json(&service, *m))
        .collect();
    FakeResponse::json(200, &Value::Array(body))
        .header("x-consul-index", &idx.to_string())
        .header("x-consul-knownleader", "true")
        .header("x-consul-lastcontact", "0")
}
