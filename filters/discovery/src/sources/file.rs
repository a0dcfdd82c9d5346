//! A registry that is just a JSON document served over HTTP: a static file behind any web server (nginx,
//! a ConfigMap served by a sidecar, an object store). Filters cannot open files inside Envoy, so the
//! file is fetched through a cluster like any other registry.
//!
//! The document is `{"endpoints": [<endpoint>, ...]}` or a bare array, each endpoint an `"ip:port"`
//! string or `{"address":"ip:port","weight":2,"zone":"a","tags":["x"],"metadata":{"k":"v"}}`.
//! The server's `ETag` is sent back as `If-None-Match`, so an unchanged file costs a 304 and no parse.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{EndpointSpec, Outcome, SourceError, canonicalize};
use crate::http::{Reply, Request, header};

/// `{"file": {"cluster": "registry", "path": "/registry.json"}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Path (and query) of the document on the cluster; must start with `/`.
    pub path: String,
}

#[derive(Debug)]
pub struct File {
    request: Request,
    etag: Option<String>,
}

impl File {
    pub fn new(config: &FileConfig, timeout: Duration) -> Result<Self, String> {
        if !config.path.starts_with('/') {
            return Err(format!("path `{}` must start with `/`", config.path));
        }
        let mut request = Request::get(config.path.clone(), timeout).header("accept", "application/json");
        request.headers.extend(config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Self { request, etag: None })
    }

    /// Forgets the ETag: the next poll fetches the whole file.
    pub fn invalidate(&mut self) {
        self.etag = None;
    }

    pub fn request(&self) -> Request {
        let mut request = self.request.clone();
        if let Some(etag) = &self.etag {
            request.headers.push(("if-none-match".into(), etag.clone()));
        }
        request
    }

    pub fn on_reply(&mut self, reply: Reply) -> Result<Outcome, SourceError> {
        let (status, headers, body) = match reply {
            Reply::Failed(e) => return Err(SourceError::Transport(e)),
            Reply::Response { status, headers, body } => (status, headers, body),
        };
        if status == 304 && self.etag.is_some() {
            return Ok(Outcome::Unchanged { next: None });
        }
        if !(200..300).contains(&status) {
            self.etag = None;
            return Err(SourceError::Status(status));
        }
        let doc: Value = serde_json::from_slice(&body).map_err(SourceError::malformed)?;
        let entries = match &doc {
            Value::Array(a) => a,
            Value::Object(o) => match o.get("endpoints") {
                Some(Value::Array(a)) => a,
                _ => return Err(SourceError::Malformed("no `endpoints` array".into())),
            },
            _ => return Err(SourceError::Malformed("not a JSON object or array".into())),
        };
        let mut endpoints = Vec::with_capacity(entries.len());
        let mut skipped = 0;
        for entry in entries {
            match parse_entry(entry) {
                Some(e) => endpoints.push(e),
                None => skipped += 1,
            }
        }
        if !entries.is_empty() && endpoints.is_empty() {
            return Err(SourceError::Rejected(format!(
                "none of the {} entries in the document is an endpoint",
                entries.len()
            )));
        }
        self.etag = header(&headers, "etag").map(str::to_owned);
        Ok(Outcome::Endpoints { endpoints: canonicalize(endpoints), skipped, next: None })
    }
}

fn parse_entry(v: &Value) -> Option<meshwasm_endpoints::Endpoint> {
    match v {
        Value::String(s) => s.trim().parse().ok().map(meshwasm_endpoints::Endpoint::new),
        Value::Object(_) => EndpointSpec::deserialize(v).ok()?.into_endpoint().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> File {
        let cfg: FileConfig =
            serde_json::from_str(r#"{"cluster":"registry","path":"/registry.json"}"#).unwrap();
        File::new(&cfg, Duration::from_secs(2)).unwrap()
    }

    fn with_etag(status: u16, etag: &str, body: &str) -> Reply {
        Reply::Response { status, headers: vec![("etag".into(), etag.into())], body: body.into() }
    }

    #[test]
    fn parses_objects_strings_and_skips_bad_entries() {
        let mut s = file();
        let body = r#"{"endpoints": ["10.0.0.2:80", {"address": "10.0.0.1:80", "weight": 3, "zone": "z"},
                       {"address": "nowhere"}, 42]}"#;
        let Outcome::Endpoints { endpoints, skipped, .. } = s.on_reply(Reply::ok(200, body)).unwrap() else {
            panic!("expected endpoints")
        };
        assert_eq!(skipped, 2);
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].address.to_string(), "10.0.0.1:80");
        assert_eq!(endpoints[0].weight, 3);
        assert_eq!(endpoints[1].weight, 1);
    }

    #[test]
    fn bare_array_and_empty_document() {
        let mut s = file();
        assert!(matches!(
            s.on_reply(Reply::ok(200, r#"["127.0.0.1:1"]"#)).unwrap(),
            Outcome::Endpoints { ref endpoints, .. } if endpoints.len() == 1
        ));
        assert_eq!(
            s.on_reply(Reply::ok(200, r#"{"endpoints": []}"#)).unwrap(),
            Outcome::Endpoints { endpoints: vec![], skipped: 0, next: None }
        );
    }

    #[test]
    fn etag_round_trip_and_304() {
        let mut s = file();
        assert!(!s.request().headers.iter().any(|(k, _)| k == "if-none-match"));
        s.on_reply(with_etag(200, "\"v1\"", r#"["127.0.0.1:1"]"#)).unwrap();
        assert!(s.request().headers.contains(&("if-none-match".into(), "\"v1\"".into())));
        assert_eq!(s.on_reply(with_etag(304, "\"v1\"", "")).unwrap(), Outcome::Unchanged { next: None });
        // An error forgets the tag, so the next poll fetches the whole document again.
        assert_eq!(s.on_reply(Reply::ok(500, "")), Err(SourceError::Status(500)));
        assert!(!s.request().headers.iter().any(|(k, _)| k == "if-none-match"));
    }

    #[test]
    fn garbage_is_an_error_not_an_empty_service() {
        let mut s = file();
        assert!(matches!(s.on_reply(Reply::ok(200, "<html>")), Err(SourceError::Malformed(_))));
        assert!(matches!(s.on_reply(Reply::ok(200, r#"{"hosts": []}"#)), Err(SourceError::Malformed(_))));
        assert!(matches!(s.on_reply(Reply::ok(200, r#"["x", "y"]"#)), Err(SourceError::Rejected(_))));
        assert!(matches!(s.on_reply(Reply::Failed("reset".into())), Err(SourceError::Transport(_))));
    }

    #[test]
    fn path_must_be_absolute() {
        let cfg: FileConfig = serde_json::from_str(r#"{"cluster":"r","path":"registry.json"}"#).unwrap();
        assert!(File::new(&cfg, Duration::from_secs(1)).unwrap_err().contains("path"));
    }
}
