//! Consul's health API with blocking queries:
//! `GET /v1/health/service/<name>?passing&index=<X-Consul-Index>&wait=30s`.
//!
//! Consul holds the request until the service's index passes the one given or `wait` expires (plus
//! up to wait/16 of jitter), so the call timeout is set above that. A return does not guarantee a
//! change (the set comparison decides), and an index that goes backwards (a Consul restart or
//! snapshot restore) resets the cursor to 0, as Consul's documentation prescribes. An
//! `X-Consul-Index` of 0 (a Consul bug that still happens) is taken as 1, also per that guidance: a
//! blocking query with index 0 returns at once, which would poll in a hot loop. While the cursor is 0
//! (after a reset) the next query is a plain one at the normal `refresh` interval, never at once.

use std::collections::BTreeMap;
use std::time::Duration;

use meshwasm_endpoints::Endpoint;
use serde::Deserialize;
use serde_json::Value;

use super::{Outcome, SourceError, canonicalize, expect_ok, socket_addr, string_map, strings};
use crate::config::Dur;
use crate::http::{Reply, Request, encode_component, header};

/// `{"consul": {"cluster": "consul", "service": "api", "passing": true, "wait": "30s"}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    /// Extra request headers, e.g. `X-Consul-Token` (never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Consul service name; defaults to the meshwasm service name.
    #[serde(default)]
    pub service: Option<String>,
    /// Ask Consul for instances whose checks all pass (`?passing`); default true.
    #[serde(default = "yes")]
    pub passing: bool,
    /// Blocking-query wait; `"0s"` turns blocking off (plain polling every `refresh`). Default 30s.
    #[serde(default = "default_wait")]
    pub wait: Dur,
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Only instances with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Service (then node) meta key holding the zone; default `zone`.
    #[serde(default = "default_zone_key")]
    pub zone_meta_key: String,
}

fn yes() -> bool {
    true
}
fn default_wait() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_zone_key() -> String {
    "zone".into()
}

#[derive(Debug)]
pub struct Consul {
    config: ConsulConfig,
    service: String,
    timeout: Duration,
    index: u64,
}

impl Consul {
    pub fn new(config: ConsulConfig, service_name: &str, timeout: Duration) -> Self {
        let service = config.service.clone().unwrap_or_else(|| service_name.to_owned());
        Self { config, service, timeout, index: 0 }
    }

    pub fn is_blocking(&self) -> bool {
        !self.config.wait.0.is_zero()
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn reset_index(&mut self) {
        self.index = 0;
    }

    pub fn request(&self) -> Request {
        let mut path = format!("/v1/health/service/{}", encode_component(&self.service));
        let mut sep = '?';
        let mut push = |path: &mut String, kv: &str| {
            path.push(sep);
            path.push_str(kv);
            sep = '&';
        };
        if self.config.passing {
            push(&mut path, "passing");
        }
        if let Some(dc) = &self.config.datacenter {
            push(&mut path, &format!("dc={}", encode_component(dc)));
        }
        if let Some(tag) = &self.config.tag {
            push(&mut path, &format!("tag={}", encode_component(tag)));
        }
        let wait = self.config.wait.0;
        let mut timeout = self.timeout;
        if self.is_blocking() && self.index > 0 {
            push(&mut path, &format!("index={}&wait={}ms", self.index, wait.as_millis()));
            // Consul adds up to wait/16 of jitter before answering.
            timeout += wait + wait / 16;
        }
        let mut req = Request::get(path, timeout).header("accept", "application/json");
        req.headers.extend(self.config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        req
    }

    pub fn on_reply(&mut self, reply: Reply) -> Result<Outcome, SourceError> {
        let (headers, body) = match expect_ok(reply) {
            Ok(ok) => ok,
            Err(e) => {
                // Start over without blocking: the next answer must be a full, fresh one.
                self.index = 0;
                return Err(e);
            }
        };
        let entries = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(e)) => e,
            Ok(_) => {
                self.index = 0;
                return Err(SourceError::Malformed("answer is not a JSON list".into()));
            }
            Err(e) => {
                self.index = 0;
                return Err(SourceError::malformed(e));
            }
        };
        match header(&headers, "x-consul-index").map(|v| v.trim().parse::<u64>()) {
            // Going backwards resets; 0 is never a valid cursor, so an answer of 0 counts as 1.
            Some(Ok(i)) if i < self.index => self.index = 0,
            Some(Ok(i)) => self.index = i.max(1),
            _ if self.is_blocking() => {
                self.index = 0;
                return Err(SourceError::Malformed("missing or invalid X-Consul-Index header".into()));
            }
            _ => self.index = 0,
        }
        let mut endpoints = Vec::with_capacity(entries.len());
        let mut skipped = 0;
        for entry in &entries {
            let Some(service) = entry.get("Service").filter(|s| s.is_object()) else {
                self.index = 0;
                return Err(SourceError::Malformed("entry without a Service object".into()));
            };
            match self.endpoint(entry, service) {
                Ok(Some(e)) => endpoints.push(e),
                Ok(None) => {}
                Err(()) => skipped += 1,
            }
        }
        // Re-poll at once: a blocking query only returns when something changed or `wait` expired. With
        // no cursor (index reset) the next query would not block, so it waits for the normal refresh.
        let next = (self.is_blocking() && self.index > 0).then_some(Duration::ZERO);
        Ok(Outcome::Endpoints { endpoints: canonicalize(endpoints), skipped, next })
    }

    /// `Ok(None)`: not serving (critical, or warning with `passing`); `Err`: unusable entry.
    fn endpoint(&self, entry: &Value, svc: &Value) -> Result<Option<Endpoint>, ()> {
        let mut warning = false;
        for check in entry.get("Checks").and_then(Value::as_array).into_iter().flatten() {
            match check.get("Status").and_then(Value::as_str).unwrap_or("") {
                "passing" => {}
                "warning" => warning = true,
                // critical, maintenance or anything unknown: no traffic.
                _ => return Ok(None),
            }
        }
        if warning && self.config.passing {
            return Ok(None);
        }
        let node = entry.get("Node");
        let service_address = svc.get("Address").and_then(Value::as_str).unwrap_or("");
        let ip = if service_address.is_empty() {
            node.and_then(|n| n.get("Address")).and_then(Value::as_str).unwrap_or("")
        } else {
            service_address
        };
        let port = svc.get("Port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()).ok_or(())?;
        let address = socket_addr(ip, port).ok_or(())?;
        let weights = svc.get("Weights");
        let weight_of = |k: &str| weights.and_then(|w| w.get(k)).and_then(Value::as_u64).unwrap_or(1);
        let weight = if warning { weight_of("Warning") } else { weight_of("Passing") };
        if weight == 0 {
            return Ok(None);
        }
        let meta = string_map(svc.get("Meta"));
        let key = &self.config.zone_meta_key;
        let zone =
            meta.get(key).cloned().or_else(|| string_map(node.and_then(|n| n.get("Meta"))).remove(key));
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        Ok(Some(Endpoint { address, weight, zone, tags: strings(svc.get("Tags")), metadata: meta }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consul(extra: &str) -> Consul {
        let cfg: ConsulConfig = serde_json::from_str(&format!(r#"{{"cluster":"consul"{extra}}}"#)).unwrap();
        Consul::new(cfg, "redis", Duration::from_secs(2))
    }

    fn reply(index: &str, body: &str) -> Reply {
        Reply::Response {
            status: 200,
            headers: vec![("x-consul-index".into(), index.into())],
            body: body.into(),
        }
    }

    const DOC: &str = r#"[{"Node":{"ID":"40e4a748","Node":"n1","Address":"10.1.10.12","Datacenter":"dc1","Meta":{"zone":"z-node"}},
        "Service":{"ID":"redis","Service":"redis","Tags":["primary"],"Address":"10.1.10.12","Port":8000,
        "Meta":{"redis_version":"4.0"},"Weights":{"Passing":10,"Warning":1}},"Checks":[{"Status":"passing"}]},
      {"Node":{"Node":"n2","Address":"10.1.10.13"},"Service":{"ID":"redis2","Service":"redis","Tags":null,"Address":"",
        "Port":8001,"Meta":{"zone":"z2"},"Weights":{"Passing":1,"Warning":1}},"Checks":[{"Status":"passing"},{"Status":"warning"}]},
      {"Node":{"Node":"n3","Address":"10.1.10.14"},"Service":{"ID":"redis3","Service":"redis","Address":"redis3.internal","Port":8002},
        "Checks":[]}]"#;

    #[test]
    fn builds_blocking_query() {
        let mut c = consul(r#","tag":"primary","datacenter":"dc 1""#);
        let first = c.request();
        assert_eq!(first.path, "/v1/health/service/redis?passing&dc=dc%201&tag=primary");
        assert_eq!(first.timeout, Duration::from_secs(2));
        c.on_reply(reply("42", "[]")).unwrap();
        let next = c.request();
        assert_eq!(next.path, "/v1/health/service/redis?passing&dc=dc%201&tag=primary&index=42&wait=30000ms");
        assert!(next.timeout > Duration::from_secs(30) + Duration::from_millis(1875));
    }

    #[test]
    fn parses_entries_with_fallbacks_and_weights() {
        let mut c = consul(r#","passing":false"#);
        let Outcome::Endpoints { endpoints, skipped, next } = c.on_reply(reply("5", DOC)).unwrap() else {
            panic!()
        };
        assert_eq!(next, Some(Duration::ZERO));
        assert_eq!(skipped, 1, "hostname service address is not usable");
        assert_eq!(endpoints.len(), 2);
        let a = &endpoints[0];
        assert_eq!(a.address.to_string(), "10.1.10.12:8000");
        assert_eq!(
            (a.weight, a.zone.as_deref(), a.tags.as_slice()),
            (10, Some("z-node"), &["primary".to_owned()][..])
        );
        let b = &endpoints[1];
        assert_eq!(
            b.address.to_string(),
            "10.1.10.13:8001",
            "empty Service.Address falls back to Node.Address"
        );
        assert_eq!((b.weight, b.zone.as_deref()), (1, Some("z2")));
    }

    #[test]
    fn passing_excludes_warning_instances() {
        let mut c = consul("");
        let Outcome::Endpoints { endpoints, .. } = c.on_reply(reply("5", DOC)).unwrap() else { panic!() };
        assert_eq!(endpoints.len(), 1);
    }

    #[test]
    fn index_zero_counts_as_one_and_no_cursor_means_no_hot_loop() {
        let mut c = consul("");
        // Consul answering X-Consul-Index: 0: the next query blocks on index 1, re-polled at once.
        let out = c.on_reply(reply("0", "[]")).unwrap();
        assert_eq!(c.index(), 1);
        assert!(matches!(out, Outcome::Endpoints { next: Some(Duration::ZERO), .. }));
        assert!(c.request().path.contains("index=1&wait="), "{}", c.request().path);
        // The index goes backwards: reset to 0, and the next (non-blocking) query waits for the
        // normal refresh instead of running at once.
        c.on_reply(reply("100", "[]")).unwrap();
        let out = c.on_reply(reply("50", "[]")).unwrap();
        assert_eq!(c.index(), 0);
        assert!(matches!(out, Outcome::Endpoints { next: None, .. }), "{out:?}");
        assert!(!c.request().path.contains("index="));
        // The plain query answers a good index: blocking resumes.
        let out = c.on_reply(reply("51", "[]")).unwrap();
        assert_eq!(c.index(), 51);
        assert!(matches!(out, Outcome::Endpoints { next: Some(Duration::ZERO), .. }));
    }

    #[test]
    fn index_backwards_resets_and_errors_reset() {
        let mut c = consul("");
        c.on_reply(reply("100", "[]")).unwrap();
        assert_eq!(c.index(), 100);
        c.on_reply(reply("7", "[]")).unwrap();
        assert_eq!(c.index(), 0);
        assert!(!c.request().path.contains("index="));
        c.on_reply(reply("8", "[]")).unwrap();
        assert!(c.on_reply(reply("9", "{not json")).is_err());
        assert_eq!(c.index(), 0);
        assert!(c.on_reply(Reply::ok(200, "[]")).is_err(), "blocking needs X-Consul-Index");
        assert!(matches!(c.on_reply(Reply::ok(500, "")), Err(SourceError::Status(500))));
    }
}
