//! Eureka's apps API: `GET <path_prefix>/apps/<APP>` with `Accept: application/json`.
//!
//! Spring Cloud serves `/eureka/apps`, Netflix's server `/eureka/v2/apps` (`path_prefix`). Only
//! instances with `status == "UP"` count, and a port only when its `@enabled` is true. The JSON is
//! converted from XML, so `instance` is an object when there is a single instance, and numbers and
//! booleans may arrive as strings.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_endpoints::Endpoint;
use serde::Deserialize;
use serde_json::Value;

use super::{Outcome, SourceError, canonicalize, expect_ok, socket_addr};
use crate::http::{Reply, Request, encode_component};

/// `{"eureka": {"cluster": "eureka", "app": "FOO", "path_prefix": "/eureka/v2"}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EurekaConfig {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Application name; defaults to the meshwasm service name, upper-cased as Eureka stores it.
    #[serde(default)]
    pub app: Option<String>,
    /// `/eureka` (Spring Cloud, default) or `/eureka/v2` (Netflix).
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Use `securePort` instead of `port`.
    #[serde(default)]
    pub secure_port: bool,
    /// Instance metadata key holding a weight (integer ≥ 1); absent → weight 1.
    #[serde(default = "default_weight_key")]
    pub weight_metadata_key: String,
}

fn default_prefix() -> String {
    "/eureka".into()
}
fn default_weight_key() -> String {
    "weight".into()
}

#[derive(Debug)]
pub struct Eureka {
    config: EurekaConfig,
    app: String,
    timeout: Duration,
}

impl Eureka {
    pub fn new(config: EurekaConfig, service_name: &str, timeout: Duration) -> Result<Self, String> {
        if !config.path_prefix.starts_with('/') {
            return Err("path_prefix must start with `/`".into());
        }
        let app = config.app.clone().unwrap_or_else(|| service_name.to_ascii_uppercase());
        Ok(Self { config, app, timeout })
    }

    pub fn request(&self) -> Request {
        let prefix = self.config.path_prefix.trim_end_matches('/');
        let mut req = Request::get(format!("{prefix}/apps/{}", encode_component(&self.app)), self.timeout)
            .header("accept", "application/json");
        req.headers.extend(self.config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        req
    }

    pub fn on_reply(&mut self, reply: Reply) -> Result<Outcome, SourceError> {
        // Eureka answers 404 for an application with no registered instance: an explicit empty answer.
        if let Reply::Response { status: 404, .. } = reply {
            return Ok(Outcome::Endpoints { endpoints: Vec::new(), skipped: 0, next: None });
        }
        let (_, body) = expect_ok(reply)?;
        let doc: Value = serde_json::from_slice(&body).map_err(SourceError::malformed)?;
        let app =
            doc.get("application").ok_or_else(|| SourceError::Malformed("no `application` object".into()))?;
        let instances: Vec<&Value> = match app.get("instance") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.iter().collect(),
            Some(obj @ Value::Object(_)) => vec![obj],
            Some(_) => {
                return Err(SourceError::Malformed("`instance` is neither a list nor an object".into()));
            }
        };
        let mut endpoints = Vec::with_capacity(instances.len());
        let mut skipped = 0;
        for inst in instances {
            if inst.get("status").and_then(Value::as_str) != Some("UP") {
                continue;
            }
            match self.endpoint(inst) {
                Some(e) => endpoints.push(e),
                None => skipped += 1,
            }
        }
        Ok(Outcome::Endpoints { endpoints: canonicalize(endpoints), skipped, next: None })
    }

    fn endpoint(&self, inst: &Value) -> Option<Endpoint> {
        // Eureka's defaults when `@enabled` is absent: `port` is enabled, `securePort` is not
        // (InstanceInfo: isUnsecurePortEnabled = true, isSecurePortEnabled = false).
        let (port_field, enabled_by_default) =
            if self.config.secure_port { ("securePort", false) } else { ("port", true) };
        let port = match inst.get(port_field)? {
            Value::Object(p) => {
                if !p.get("@enabled").map_or(enabled_by_default, truthy) {
                    return None;
                }
                p.get("$")?
            }
            // A bare number (hand-written or converted documents): enabled as by default.
            bare => {
                if !enabled_by_default {
                    return None;
                }
                bare
            }
        };
        let port = u16::try_from(number(port)?).ok()?;
        let address = socket_addr(inst.get("ipAddr")?.as_str()?, port)?;
        let mut metadata = BTreeMap::new();
        if let Some(Value::Object(m)) = inst.get("metadata") {
            for (k, v) in m {
                if k.starts_with('@') {
                    continue; // XML attributes such as "@class"
                }
                if let Some(s) = v.as_str() {
                    metadata.insert(k.clone(), s.to_owned());
                }
            }
        }
        let zone = metadata.get("zone").cloned().or_else(|| {
            inst.pointer("/dataCenterInfo/metadata/availability-zone")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let weight = match metadata.get(&self.config.weight_metadata_key) {
            Some(w) => w.trim().parse::<u32>().ok().filter(|w| *w > 0)?,
            None => 1,
        };
        Some(Endpoint { address, weight, zone, tags: Vec::new(), metadata })
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eureka(extra: &str) -> Eureka {
        let cfg: EurekaConfig = serde_json::from_str(&format!(r#"{{"cluster":"eureka"{extra}}}"#)).unwrap();
        Eureka::new(cfg, "foo", Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn request_paths() {
        let r = eureka("").request();
        assert_eq!(r.path, "/eureka/apps/FOO");
        assert!(r.headers.contains(&("accept".into(), "application/json".into())));
        assert_eq!(
            eureka(r#","path_prefix":"/eureka/v2/","app":"bar""#).request().path,
            "/eureka/v2/apps/bar"
        );
    }

    #[test]
    fn parses_list_filters_status_and_ports() {
        let body = r#"{"application":{"name":"FOO","instance":[
          {"instanceId":"h:foo","ipAddr":"192.168.56.1","status":"UP","port":{"$":8080,"@enabled":"true"},
           "securePort":{"$":443,"@enabled":"false"},"metadata":{"@class":"java.util.Collections$EmptyMap","zone":"a","weight":"5"}},
          {"instanceId":"h2:foo","ipAddr":"192.168.56.2","status":"DOWN","port":{"$":8080,"@enabled":"true"}},
          {"instanceId":"h3:foo","ipAddr":"192.168.56.3","status":"UP","port":{"$":"8081","@enabled":"false"}},
          {"instanceId":"h4:foo","ipAddr":"192.168.56.4","status":"UP","port":{"$":"8082","@enabled":true},
           "dataCenterInfo":{"name":"Amazon","metadata":{"availability-zone":"us-east-1c"}}}]}}"#;
        let Outcome::Endpoints { endpoints, skipped, .. } =
            eureka("").on_reply(Reply::ok(200, body)).unwrap()
        else {
            panic!()
        };
        assert_eq!(skipped, 1, "disabled port");
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].address.to_string(), "192.168.56.1:8080");
        assert_eq!((endpoints[0].weight, endpoints[0].zone.as_deref()), (5, Some("a")));
        assert!(!endpoints[0].metadata.contains_key("@class"));
        assert_eq!(endpoints[1].address.to_string(), "192.168.56.4:8082");
        assert_eq!(endpoints[1].zone.as_deref(), Some("us-east-1c"));
        // Secure port selection: the first instance's secure port is disabled.
        let Outcome::Endpoints { endpoints, .. } =
            eureka(r#","secure_port":true"#).on_reply(Reply::ok(200, body)).unwrap()
        else {
            panic!()
        };
        assert!(endpoints.is_empty());
    }

    #[test]
    fn missing_enabled_means_port_on_secure_port_off() {
        let body = r#"{"application":{"name":"FOO","instance":[
          {"ipAddr":"10.0.0.1","status":"UP","port":{"$":8080},"securePort":{"$":8443}},
          {"ipAddr":"10.0.0.2","status":"UP","port":8081,"securePort":{"$":8444,"@enabled":"true"}}]}}"#;
        let Outcome::Endpoints { endpoints, skipped, .. } =
            eureka("").on_reply(Reply::ok(200, body)).unwrap()
        else {
            panic!()
        };
        let addrs: Vec<_> = endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!((addrs, skipped), (vec!["10.0.0.1:8080".to_owned(), "10.0.0.2:8081".to_owned()], 0));
        // securePort without `@enabled` is disabled; explicitly enabled it is used.
        let Outcome::Endpoints { endpoints, skipped, .. } =
            eureka(r#","secure_port":true"#).on_reply(Reply::ok(200, body)).unwrap()
        else {
            panic!()
        };
        let addrs: Vec<_> = endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!((addrs, skipped), (vec!["10.0.0.2:8444".to_owned()], 1));
    }

    #[test]
    fn single_instance_object_form() {
        let body = r#"{"application":{"name":"FOO","instance":{"ipAddr":"10.0.0.5","status":"UP","port":{"$":80,"@enabled":"true"}}}}"#;
        let Outcome::Endpoints { endpoints, .. } = eureka("").on_reply(Reply::ok(200, body)).unwrap() else {
            panic!()
        };
        assert_eq!(endpoints.len(), 1);
    }

    #[test]
    fn not_found_is_empty_and_garbage_is_error() {
        assert_eq!(
            eureka("").on_reply(Reply::ok(404, "")).unwrap(),
            Outcome::Endpoints { endpoints: vec![], skipped: 0, next: None }
        );
        assert!(eureka("").on_reply(Reply::ok(200, r#"{"applications":{}}"#)).is_err());
        assert!(eureka("").on_reply(Reply::ok(200, r#"{"application":{"instance":3}}"#)).is_err());
        assert!(eureka("").on_reply(Reply::ok(200, "<application/>")).is_err());
    }
}
