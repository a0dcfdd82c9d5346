//! etcd v3 through its JSON gateway: `POST /v3/kv/range` over a key prefix.
//!
//! One key per instance under the prefix, e.g. `/services/api/10.0.0.1:8080`. The value is either a
//! JSON object `{"address":"10.0.0.1:8080","weight":2,"zone":"a","tags":["x"],"metadata":{"k":"v"}}`
//! (only `address` required) or a bare `ip:port` string. The gateway encodes keys and values in
//! base64 and 64-bit numbers as JSON strings; `header.revision` (the store's revision) tells whether
//! anything changed since the last poll, in which case the kvs are not even looked at.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;

use super::{EndpointSpec, Outcome, SourceError, canonicalize, expect_ok};
use crate::http::{Reply, Request};

/// `{"etcd": {"cluster": "etcd", "prefix": "/services/api/"}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Key prefix holding one key per instance; must not be empty.
    pub prefix: String,
    /// Gateway path, `/v3/kv/range` (etcd ≥ 3.4).
    #[serde(default = "default_path")]
    pub path: String,
}

fn default_path() -> String {
    "/v3/kv/range".to_owned()
}

#[derive(Debug)]
pub struct Etcd {
    request: Request,
    last_revision: Option<i64>,
}

/// The smallest key greater than every key starting with `prefix` (etcd's `clientv3.GetPrefixRangeEnd`).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): range to the end of the keyspace.
    vec![0]
}

impl Etcd {
    pub fn new(config: &EtcdConfig, timeout: Duration) -> Result<Self, String> {
        if config.prefix.is_empty() {
            return Err("prefix must not be empty (it would select the whole keyspace)".into());
        }
        let body = serde_json::json!({
            "key": STANDARD.encode(config.prefix.as_bytes()),
            "range_end": STANDARD.encode(prefix_range_end(config.prefix.as_bytes())),
        });
        let mut request = Request {
            method: "POST",
            path: config.path.clone(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).map_err(|e| e.to_string())?,
            timeout,
        };
        request.headers.extend(config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Self { request, last_revision: None })
    }

    pub fn request(&self) -> Request {
        self.request.clone()
    }

    /// Forgets the last revision: the next reply is reported in full even if unchanged.
    pub fn invalidate(&mut self) {
        self.last_revision = None;
    }

    pub fn on_reply(&mut self, reply: Reply) -> Result<Outcome, SourceError> {
        let (_, body) = expect_ok(reply)?;
        let resp: Value = serde_json::from_slice(&body).map_err(SourceError::malformed)?;
        // The gateway writes int64 as strings; accept numbers too.
        let revision = match resp.pointer("/header/revision") {
            Some(Value::String(s)) => s.parse::<i64>().ok(),
            Some(Value::Number(n)) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| SourceError::Malformed("no header.revision".into()))?;
        if self.last_revision == Some(revision) {
            return Ok(Outcome::Unchanged { next: None });
        }
        let kvs = match resp.get("kvs") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => &a[..],
            Some(_) => return Err(SourceError::Malformed("kvs is not a list".into())),
        };
        let total = kvs.len();
        let mut endpoints = Vec::with_capacity(total);
        let mut skipped = 0;
        for kv in kvs {
            match parse_value(kv.get("value").and_then(Value::as_str).unwrap_or("")) {
                Some(e) => endpoints.push(e),
                None => skipped += 1,
            }
        }
        if total > 0 && endpoints.is_empty() {
            // Every value unreadable: that is garbage, not an empty service.
            return Err(SourceError::Rejected(format!(
                "none of the {total} values under the prefix is an endpoint"
            )));
        }
        self.last_revision = Some(revision);
        Ok(Outcome::Endpoints { endpoints: canonicalize(endpoints), skipped, next: None })
    }
}

/// Decodes one base64 value: a JSON endpoint object or a bare `ip:port`.
fn parse_value(b64: &str) -> Option<meshwasm_endpoints::Endpoint> {
    let raw = STANDARD.decode(b64).ok()?;
    let text = std::str::from_utf8(&raw).ok()?.trim();
    if text.starts_with('{') {
        let spec: EndpointSpec = serde_json::from_str(text).ok()?;
        spec.into_endpoint().ok()
    } else {
        text.parse().ok().map(meshwasm_endpoints::Endpoint::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd() -> Etcd {
        let cfg: EtcdConfig =
            serde_json::from_str(r#"{"cluster":"etcd","prefix":"/services/api/"}"#).unwrap();
        Etcd::new(&cfg, Duration::from_secs(2)).unwrap()
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn reply(rev: &str, kvs: &[(&str, &str)]) -> Reply {
        let kvs: Vec<_> = kvs
            .iter()
            .map(|(k, v)| serde_json::json!({"key": b64(k), "value": b64(v), "mod_revision": rev, "version": "1"}))
            .collect();
        let body = serde_json::json!({"header": {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437",
            "revision": rev, "raft_term": "2"}, "kvs": kvs, "count": kvs.len().to_string()});
        Reply::ok(200, serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn builds_prefix_range_request() {
        let req = etcd().request();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v3/kv/range");
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["key"], b64("/services/api/"));
        assert_eq!(body["range_end"], b64("/services/api0"));
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff"), b"\0");
    }

    #[test]
    fn parses_json_and_bare_values_and_detects_revision() {
        let mut s = etcd();
        let r = reply(
            "7",
            &[
                (
                    "/services/api/b",
                    r#"{"address":"10.0.0.2:80","weight":3,"zone":"z1","tags":["t"],"metadata":{"v":"2"}}"#,
                ),
                ("/services/api/a", "10.0.0.1:80"),
                ("/services/api/bad", "not an address"),
            ],
        );
        let Outcome::Endpoints { endpoints, skipped, .. } = s.on_reply(r.clone()).unwrap() else { panic!() };
        assert_eq!(skipped, 1);
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].address.to_string(), "10.0.0.1:80");
        assert_eq!(endpoints[1].weight, 3);
        assert_eq!(endpoints[1].zone.as_deref(), Some("z1"));
        assert_eq!(endpoints[1].metadata.get("v").map(String::as_str), Some("2"));
        assert_eq!(s.on_reply(r).unwrap(), Outcome::Unchanged { next: None });
    }

    #[test]
    fn empty_prefix_has_no_kvs_field() {
        let mut s = etcd();
        let body = r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"}}"#;
        assert_eq!(
            s.on_reply(Reply::ok(200, body)).unwrap(),
            Outcome::Endpoints { endpoints: vec![], skipped: 0, next: None }
        );
    }

    #[test]
    fn rejects_garbage() {
        let mut s = etcd();
        assert!(matches!(s.on_reply(Reply::ok(200, "<html>")), Err(SourceError::Malformed(_))));
        assert!(matches!(s.on_reply(Reply::ok(503, "")), Err(SourceError::Status(503))));
        assert!(matches!(s.on_reply(Reply::Failed("timeout".into())), Err(SourceError::Transport(_))));
        assert!(matches!(
            s.on_reply(reply("4", &[("/services/api/x", "junk")])),
            Err(SourceError::Rejected(_))
        ));
        // A rejected answer does not advance the revision.
        assert!(matches!(
            s.on_reply(reply("4", &[("/services/api/x", "10.0.0.9:1")])),
            Ok(Outcome::Endpoints { .. })
        ));
    }
}
