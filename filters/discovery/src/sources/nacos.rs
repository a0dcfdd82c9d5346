//! Nacos v1 naming API: `GET /nacos/v1/ns/instance/list?serviceName=<s>&healthyOnly=true`.
//!
//! Instances count when `healthy && enabled` and their weight is above 0. Nacos weights are floats
//! (default 1.0); they are published as `round(weight × 100)` so that fractional weights keep their
//! ratios.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_endpoints::Endpoint;
use serde::Deserialize;
use serde_json::Value;

use super::{Outcome, SourceError, canonicalize, expect_ok, socket_addr, string_map};
use crate::http::{Reply, Request, encode_component};

/// `{"nacos": {"cluster": "nacos", "service_name": "api", "group_name": "DEFAULT_GROUP"}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
        let doc: Value = serde_json::from_slice(&body).map_err(SourceError::malformed)?;
        let hosts = doc
            .get("hosts")
            .and_then(Value::as_array)
            .ok_or_else(|| SourceError::Malformed("no `hosts` list".into()))?;
        let mut endpoints = Vec::with_capacity(hosts.len());
        let mut skipped = 0;
        for h in hosts {
            let flag = |k: &str, default: bool| h.get(k).and_then(Value::as_bool).unwrap_or(default);
            let weight = h.get("weight").and_then(Value::as_f64).unwrap_or(1.0);
            // `weight > 0` is false for NaN too.
            let positive = weight > 0.0;
            if !flag("healthy", false) || !flag("enabled", true) || !positive {
                continue;
            }
            let ip = h.get("ip").and_then(Value::as_str).unwrap_or("");
            let port = h.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
            let Some(address) = port.and_then(|port| socket_addr(ip, port)) else {
                skipped += 1;
                continue;
            };
            // Bounded: a huge weight cannot overflow or dominate absurdly.
            let weight =
                (weight * 100.0).round().clamp(1.0, f64::from(meshwasm_endpoints::MAX_WEIGHT)) as u32;
            let metadata = string_map(h.get("metadata"));
            let cluster =
                h.get("clusterName").and_then(Value::as_str).filter(|c| !c.is_empty() && *c != "DEFAULT");
            let zone = metadata.get("zone").cloned().or(cluster.map(str::to_owned));
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
