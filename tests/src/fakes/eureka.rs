//! A Eureka fake: `GET <prefix>/apps/<APP>` (`/eureka` as Spring Cloud serves it, `/eureka/v2` as
//! Netflix's server does) answering JSON when asked with `Accept: application/json`, XML otherwise
//! (which a JSON client must reject). Instance JSON as Eureka's XStream/Jackson codec writes it:
//! ports as `{"$": 8080, "@enabled": "true"}`, metadata with `@class`, and — like older servers —
//! `instance` as an object rather than a list when the application has one instance.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde_json::{Value, json};

use super::server::{Failure, FakeRequest, FakeResponse, FakeServer, lock};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EurekaInstance {
    pub addr: SocketAddr,
    /// "UP", "DOWN", "STARTING", "OUT_OF_SERVICE".
    pub status: String,
    pub port_enabled: bool,
    pub secure_port: Option<u16>,
    pub metadata: BTreeMap<String, String>,
    pub zone: Option<String>,
}

impl EurekaInstance {
    pub fn up(addr: SocketAddr) -> Self {
        Self {
            addr,
            status: "UP".into(),
            port_enabled: true,
            secure_port: None,
            metadata: BTreeMap::new(),
            zone: None,
        }
    }
    pub fn status(mut self, s: &str) -> Self {
        self.status = s.into();
        self
    }
    pub fn port_disabled(mut self) -> Self {
        self.port_enabled = false;
        self
    }
    pub fn meta(mut self, k: &str, v: &str) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }

    fn to_json(&self, app: &str) -> Value {
        let host = self.addr.ip().to_string();
        let mut metadata = json!({"@class": "java.util.Collections$EmptyMap"});
        for (k, v) in &self.metadata {
            metadata[k] = json!(v);
        }
        let mut dci =
            json!({"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"});
        if let Some(z) = &self.zone {
            dci = json!({"@class": "com.netflix.appinfo.AmazonInfo", "name": "Amazon", "metadata": {"availability-zone": z}});
        }
        json!({
            "instanceId": format!("{host}:{}:{}", app.to_ascii_lowercase(), self.addr.port()),
            "hostName": host, "app": app, "ipAddr": host, "status": self.status, "overriddenStatus": "UNKNOWN",
            "port": {"$": self.addr.port(), "@enabled": self.port_enabled.to_string()},
            "securePort": {"$": self.secure_port.unwrap_or(443), "@enabled": self.secure_port.is_some().to_string()},
            "countryId": 1, "dataCenterInfo": dci,
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90, "registrationTimestamp": 0,
                          "lastRenewalTimestamp": 0, "evictionTimestamp": 0, "serviceUpTimestamp": 0},
            "metadata": metadata,
            "homePageUrl": format!("http://{host}:{}/", self.addr.port()),
            "vipAddress": app.to_ascii_lowercase(), "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": "0", "lastDirtyTimestamp": "0", "actionType": "ADDED"
        })
    }
}

struct State {
    prefix: String,
    single_as_object: bool,
    apps: BTreeMap<String, Vec<EurekaInstance>>,
}

pub struct Eureka {
    server: FakeServer,
    state: Arc<Mutex<State>>,
}

impl Eureka {
    /// Serves under `prefix` (`/eureka` or `/eureka/v2`).
    pub fn start(prefix: &str) -> Result<Self> {
        let state = Arc::new(Mutex::new(State {
            prefix: prefix.trim_end_matches('/').to_owned(),
            single_as_object: true,
            apps: BTreeMap::new(),
        }));
        let st = state.clone();
        let server = FakeServer::start(
            "eureka",
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

    /// Replaces the instances of `app` (stored upper-cased, as Eureka does).
    pub fn set_instances(&self, app: &str, instances: Vec<EurekaInstance>) {
        lock(&self.state).apps.insert(app.to_ascii_uppercase(), instances);
    }

    /// Whether a single instance is written as an object (older servers) or a one-element list.
    pub fn single_as_object(&self, yes: bool) {
        lock(&self.state).single_as_object = yes;
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

fn handle(req: FakeRequest, st: &Mutex<State>) -> FakeResponse {
    let s = lock(st);
    let Some(app) = req.path.strip_prefix(&format!("{}/apps/", s.prefix)).map(str::to_ascii_uppercase) else {
        return FakeResponse::text(404, "Not Found");
    };
    let Some(instances) = s.apps.get(&app).filter(|l| !l.is_empty()) else {
        return FakeResponse::text(404, "");
    };
    if !req.header("accept").is_some_and(|a| a.contains("json")) {
        let mut r = FakeResponse::text(200, &format!("<application><name>{app}</name></application>"));
        r.headers = vec![("content-type".into(), "application/xml".into())];
        return r;
    }
    let list: Vec<Value> = instances.iter().map(|i| i.to_json(&app)).collect();
    let instance = if list.len() == 1 && s.single_as_object { list[0].clone() } else { Value::Array(list) };
    FakeResponse::json(200, &json!({"application": {"name": app, "instance": instance}}))
}
