//! Nacos v1 naming API: `GET /nacos/v1/ns/instance/list?serviceName=<s>&healthyOnly=true`.
//!
//! Instances count when `healthy && enabled` and their weight is above 0. Nacos weights are floats
//! (default 1.0); they are published as `round(weight × 100)` so that fractional weights keep their
//! ratios.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_endpoints::Endpoint;
use serde::Deserialize;

use super::{Outcome, SourceError, canonicalize, expect_ok, socket_addr};
use crate::http::{Reply, Request, encode_component};

/// `{"nacos": {"cluster": "nacos", "service_name": "api", "group_name": "DEFAULT_GROUP"}}`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NacosConfig {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Defaults to the meshwasm service name.
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub namespace_id: Option<String>,
    #[serde(default)]
    pub group_name: Option<String>,
    /// Comma-separated Nacos cluster names.
    #[serde(default)]
    pub clusters: Option<String>,
    /// Sent as `accessToken` (never logged).
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default = "default_path")]
    pub path: String,
}

fn default_path() -> String {
    "/nacos/v1/ns/instance/list".into()
}

#[derive(Debug)]
pub struct Nacos {
    request: Request,
}

#[derive(Deserialize)]
struct List {
    hosts: Vec<Host>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Host {
    ip: String,
    port: u16,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    healthy: bool,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

impl Nacos {
    pub fn new(config: &NacosConfig, service_name: &str, timeout: Duration) -> Self {
        let service = config.service_name.as_deref().unwrap_or(service_name);
        let mut path = format!("{}?serviceName={}&healthyOnly=true", config.path, encode_component(service));
        for (k, v) in [
            ("namespaceId", &config.namespace_id),
            ("groupName", &config.group_name),
            ("clusters", &config.clusters),
            ("accessToken", &config.access_token),
        ] {
            if let Some(v) = v {
                path.push_str(&format!("&{k}={}", encode_component(v)));
            }
        }
        let mut request = Request::get(path, timeout).header("accept", "application/json");
        request.headers.extend(config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self { request }
    }

    pub fn request(&self) -> Request {
        self.request.clone()
    }

    pub fn on_reply(&mut self, reply: Reply) -> Result<Outcome, SourceError> {
        let (_, body) = expect_ok(reply)?;
        let list: List = serde_json::from_slice(&body).map_err(SourceError::malformed)?;
        let mut endpoints = Vec::with_capacity(list.hosts.len());
        let mut skipped = 0;
        for h in list.hosts {
            // `weight > 0` is false for NaN too.
            let positive = h.weight > 0.0;
            if !h.healthy || !h.enabled || !positive {
                continue;
            }
            let Some(address) = socket_addr(&h.ip, h.port) else {
                skipped += 1;
                continue;
            };
            // Bounded: a huge weight cannot overflow or dominate absurdly.
            let weight = (h.weight * 100.0).round().clamp(1.0, 1_000_000.0) as u32;
            let metadata = h.metadata.unwrap_or_default();
            let zone =
                metadata.get("zone").cloned().or(h.cluster_name.filter(|c| !c.is_empty() && c != "DEFAULT"));
            endpoints.push(Endpoint { address, weight, zone, tags: Vec::new(), metadata });
        }
        Ok(Outcome::Endpoints { endpoints: canonicalize(endpoints), skipped, next: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nacos(extra: &str) -> Nacos {
        let cfg: NacosConfig = serde_json::from_str(&format!(r#"{{"cluster":"nacos"{extra}}}"#)).unwrap();
        Nacos::new(&cfg, "api", Duration::from_secs(1))
    }

    #[test]
    fn request() {
        assert_eq!(nacos("").request().path, "/nacos/v1/ns/instance/list?serviceName=api&healthyOnly=true");
        assert_eq!(
            nacos(r#","group_name":"G","namespace_id":"ns 1""#).request().path,
            "/nacos/v1/ns/instance/list?serviceName=api&healthyOnly=true&namespaceId=ns%201&groupName=G"
        );
    }

    #[test]
    fn parses_hosts() {
        let body = r#"{"name":"DEFAULT_GROUP@@api","groupName":"DEFAULT_GROUP","clusters":"","cacheMillis":10000,
          "hosts":[{"instanceId":"10.10.10.10#8888#DEFAULT#DEFAULT_GROUP@@api","ip":"10.10.10.10","port":8888,"weight":1.0,
            "healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT","serviceName":"DEFAULT_GROUP@@api","metadata":{}},
           {"ip":"10.10.10.11","port":8888,"weight":2.5,"healthy":true,"enabled":true,"clusterName":"c1","metadata":{"zone":"z1"}},
           {"ip":"10.10.10.12","port":8888,"weight":1,"healthy":false,"enabled":true},
           {"ip":"10.10.10.13","port":8888,"weight":1,"healthy":true,"enabled":false},
           {"ip":"10.10.10.14","port":8888,"weight":0,"healthy":true,"enabled":true},
           {"ip":"nacos-host","port":8888,"weight":1,"healthy":true,"enabled":true}],
          "lastRefTime":1,"checksum":"","allIPs":false,"reachProtectionThreshold":false,"valid":true}"#;
        let Outcome::Endpoints { endpoints, skipped, .. } = nacos("").on_reply(Reply::ok(200, body)).unwrap()
        else {
            panic!()
        };
        assert_eq!(skipped, 1);
        assert_eq!(endpoints.len(), 2);
        assert_eq!((endpoints[0].weight, endpoints[0].zone.as_deref()), (100, None));
        assert_eq!((endpoints[1].weight, endpoints[1].zone.as_deref()), (250, Some("z1")));
        assert!(nacos("").on_reply(Reply::ok(200, r#"{"dom":"x"}"#)).is_err());
        assert!(nacos("").on_reply(Reply::ok(403, "unknown user!")).is_err());
    }
}
