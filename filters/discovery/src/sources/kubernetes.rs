//! Kubernetes EndpointSlices: `GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices
//! ?labelSelector=kubernetes.io/service-name=<svc>`.
//!
//! A service's endpoints are spread over several slices, all merged here (an address present in two
//! slices during a transition counts once). An endpoint counts when `conditions.ready` is true or
//! absent (the API says to read "unknown" as ready); its port comes from its slice's `ports`, chosen
//! by `port_name` (or the slice's only port). FQDN slices are ignored: Envoy needs IP literals.
//! Watches never complete through `dispatch_http_call`, so the list is polled.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_endpoints::Endpoint;
use serde::Deserialize;
use serde_json::Value;

use super::{Outcome, SourceError, canonicalize, expect_ok, socket_addr};
use crate::http::{Reply, Request, encode_component};

/// `{"kubernetes": {"cluster": "kube-api", "namespace": "default", "service": "api", "port_name": "http",
///   "headers": {"authorization": "Bearer ..."}}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    /// E.g. `authorization: Bearer <token>` (never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_ns")]
    pub namespace: String,
    /// Kubernetes Service name; defaults to the meshwasm service name.
    #[serde(default)]
    pub service: Option<String>,
    /// Name of the port in the slices; when absent each slice must have exactly one port.
    #[serde(default)]
    pub port_name: Option<String>,
}

fn default_ns() -> String {
    "default".into()
}

#[derive(Debug)]
pub struct Kubernetes {
    request: Request,
    port_name: Option<String>,
}

impl Kubernetes {
    pub fn new(config: &KubernetesConfig, service_name: &str, timeout: Duration) -> Self {
        let service = config.service.as_deref().unwrap_or(service_name);
        let path = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector={}",
            encode_component(&config.namespace),
            encode_component(&format!("kubernetes.io/service-name={service}"))
        );
        let mut request = Request::get(path, timeout).header("accept", "application/json");
        request.headers.extend(config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self { request, port_name: config.port_name.clone() }
    }

    pub fn request(&self) -> Request {
        self.request.clone()
    }

    pub fn on_reply(&mut self, reply: Reply) -> Result<Outcome, SourceError> {
        let (_, body) = expect_ok(reply)?;
        let list: Value = serde_json::from_slice(&body).map_err(SourceError::malformed)?;
        let items = match list.get("items") {
            Some(Value::Array(items)) => &items[..],
            None | Some(Value::Null)
                if list.get("kind").and_then(Value::as_str) == Some("EndpointSliceList") =>
            {
                &[][..]
            }
            _ => return Err(SourceError::Malformed("not an EndpointSliceList".into())),
        };
        let mut endpoints = Vec::new();
        let mut skipped = 0;
        for slice in items {
            let family = slice.get("addressType").and_then(Value::as_str);
            if family != Some("IPv4") && family != Some("IPv6") {
                if family.is_none() {
                    return Err(SourceError::Malformed("EndpointSlice without addressType".into()));
                }
                continue;
            }
            let eps = slice.get("endpoints").and_then(Value::as_array).map_or(&[][..], |a| &a[..]);
            let ports = slice.get("ports").and_then(Value::as_array).map_or(&[][..], |a| &a[..]);
            let port = match &self.port_name {
                Some(name) => {
                    ports.iter().find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == name)
                }
                None if ports.len() == 1 => ports.first(),
                None => None,
            };
            let Some(port) =
                port.and_then(|p| p.get("port")).and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok())
            else {
                skipped += eps.len();
                continue;
            };
            for ep in eps {
                if ep.pointer("/conditions/ready").and_then(Value::as_bool) == Some(false) {
                    continue;
                }
                // The addresses of one endpoint are fungible; the API says clients may use the first.
                let first = ep.pointer("/addresses/0").and_then(Value::as_str);
                let Some(address) = first.and_then(|a| socket_addr(a, port)) else {
                    skipped += 1;
                    continue;
                };
                let mut metadata = BTreeMap::new();
                if let Some(node) = ep.get("nodeName").and_then(Value::as_str) {
                    metadata.insert("node".to_owned(), node.to_owned());
                }
                if let Some(pod) = ep.pointer("/targetRef/name").and_then(Value::as_str) {
                    metadata.insert("pod".to_owned(), pod.to_owned());
                }
                let zone = ep.get("zone").and_then(Value::as_str).map(str::to_owned);
                endpoints.push(Endpoint { address, weight: 1, zone, tags: Vec::new(), metadata });
            }
        }
        Ok(Outcome::Endpoints { endpoints: canonicalize(endpoints), skipped, next: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s(extra: &str) -> Kubernetes {
        let cfg: KubernetesConfig = serde_json::from_str(&format!(r#"{{"cluster":"k8s"{extra}}}"#)).unwrap();
        Kubernetes::new(&cfg, "api", Duration::from_secs(1))
    }

    const LIST: &str = r#"{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"123"},
      "items":[
        {"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{"name":"api-abc","labels":{"kubernetes.io/service-name":"api"}},
         "addressType":"IPv4",
         "endpoints":[{"addresses":["10.1.0.1"],"conditions":{"ready":true,"serving":true,"terminating":false},"nodeName":"n1","zone":"us-a",
                       "targetRef":{"kind":"Pod","namespace":"default","name":"api-1"}},
                      {"addresses":["10.1.0.2"],"conditions":{"ready":false,"serving":true,"terminating":true},"zone":"us-a"},
                      {"addresses":["10.1.0.3"],"conditions":{}}],
         "ports":[{"name":"http","protocol":"TCP","port":8080},{"name":"metrics","protocol":"TCP","port":9090}]},
        {"metadata":{"name":"api-def"},"addressType":"IPv4",
         "endpoints":[{"addresses":["10.1.0.4"],"conditions":{"ready":true},"zone":"us-b"},
                      {"addresses":["10.1.0.1"],"conditions":{"ready":true}}],
         "ports":[{"name":"http","protocol":"TCP","port":8080}]},
        {"metadata":{"name":"api-fqdn"},"addressType":"FQDN","endpoints":[{"addresses":["x.example"]}],"ports":[{"name":"http","port":80}]}]}"#;

    #[test]
    fn request() {
        assert_eq!(
            k8s(r#","namespace":"prod""#).request().path,
            "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dapi"
        );
    }

    #[test]
    fn merges_slices_ready_endpoints_named_ports() {
        let Outcome::Endpoints { endpoints, skipped, .. } =
            k8s(r#","port_name":"http""#).on_reply(Reply::ok(200, LIST)).unwrap()
        else {
            panic!()
        };
        assert_eq!(skipped, 0);
        let addrs: Vec<String> = endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addrs, ["10.1.0.1:8080", "10.1.0.3:8080", "10.1.0.4:8080"]);
        assert_eq!(endpoints[0].zone.as_deref(), Some("us-a"));
        assert_eq!(endpoints[0].metadata.get("pod").map(String::as_str), Some("api-1"));
        assert_eq!(endpoints[2].zone.as_deref(), Some("us-b"));
        // Named port selection.
        let Outcome::Endpoints { endpoints, .. } =
            k8s(r#","port_name":"metrics""#).on_reply(Reply::ok(200, LIST)).unwrap()
        else {
            panic!()
        };
        assert_eq!(endpoints.iter().map(|e| e.address.port()).collect::<Vec<_>>(), [9090, 9090]);
        // Without a port name, the two-port slice is ambiguous and skipped.
        let Outcome::Endpoints { endpoints, skipped, .. } = k8s("").on_reply(Reply::ok(200, LIST)).unwrap()
        else {
            panic!()
        };
        assert_eq!((endpoints.len(), skipped), (2, 3));
    }

    #[test]
    fn errors() {
        assert!(k8s("").on_reply(Reply::ok(401, r#"{"kind":"Status"}"#)).is_err());
        assert!(k8s("").on_reply(Reply::ok(200, r#"{"items":[{"endpoints":[]}]}"#)).is_err());
    }
}
