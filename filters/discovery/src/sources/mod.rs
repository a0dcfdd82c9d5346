//! One module per discovery source. Each builds the request(s) its registry needs and parses the
//! registry's real wire format into endpoints; none of them does I/O or reads the clock.
//!
//! A poll is a small exchange: [`Source::begin`] returns the first request(s), every reply goes to
//! [`Source::on_reply`], which either asks for more (DNS follow-up queries) or finishes with an
//! [`Outcome`] or a [`SourceError`]. Sources keep their cursors (etcd revision, Consul index) across
//! polls, and reset them on errors where the protocol says so.

pub mod consul;
pub mod dns;
pub mod doh;
pub mod etcd;
pub mod eureka;
pub mod file;
pub mod kubernetes;
pub mod nacos;
pub mod static_list;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meshwasm_endpoints::Endpoint;
use serde::Deserialize;

use crate::http::{Reply, Request};

/// Why a poll produced no usable answer. The last good set stays published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("registry answered HTTP {0}")]
    Status(u16),
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer rejected: {0}")]
    Rejected(String),
}

impl SourceError {
    pub fn malformed(e: impl std::fmt::Display) -> Self {
        SourceError::Malformed(e.to_string())
    }
}

/// A finished poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The registry says nothing changed since the last poll (etcd revision, identical answer).
    Unchanged { next: Option<Duration> },
    /// The registry's current view of the service. `skipped` counts entries that were unusable
    /// (bad address, disabled port, ...) and left out; `next` overrides the refresh interval
    /// (DNS TTLs, blocking queries).
    Endpoints { endpoints: Vec<Endpoint>, skipped: usize, next: Option<Duration> },
}

/// What a source wants after a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Send these requests too (tagged) and wait for their replies.
    More(Vec<(u32, Request)>),
    /// Still waiting for other replies of this poll.
    Waiting,
    Done(Result<Outcome, SourceError>),
}

/// The per-service source state machine (enum dispatch keeps the wasm small).
#[derive(Debug)]
pub enum Source {
    Static(static_list::StaticList),
    File(file::File),
    Etcd(etcd::Etcd),
    Consul(consul::Consul),
    Eureka(eureka::Eureka),
    Nacos(nacos::Nacos),
    Kubernetes(kubernetes::Kubernetes),
    Dns(doh::Doh),
}

impl Source {
    /// Starts a poll: the tagged requests to send (none for a static list, which is done at once).
    pub fn begin(&mut self) -> Result<Vec<(u32, Request)>, Outcome> {
        match self {
            Source::Static(s) => Err(s.outcome()),
            Source::File(s) => Ok(vec![(0, s.request())]),
            Source::Etcd(s) => Ok(vec![(0, s.request())]),
            Source::Consul(s) => Ok(vec![(0, s.request())]),
            Source::Eureka(s) => Ok(vec![(0, s.request())]),
            Source::Nacos(s) => Ok(vec![(0, s.request())]),
            Source::Kubernetes(s) => Ok(vec![(0, s.request())]),
            Source::Dns(s) => Ok(s.begin()),
        }
    }

    /// Handles the reply to request `tag` of the current poll.
    pub fn on_reply(&mut self, tag: u32, reply: Reply) -> Progress {
        let single = |r: Result<Outcome, SourceError>| Progress::Done(r);
        match self {
            Source::Static(s) => single(Ok(s.outcome())),
            Source::File(s) => single(s.on_reply(reply)),
            Source::Etcd(s) => single(s.on_reply(reply)),
            Source::Consul(s) => single(s.on_reply(reply)),
            Source::Eureka(s) => single(s.on_reply(reply)),
            Source::Nacos(s) => single(s.on_reply(reply)),
            Source::Kubernetes(s) => single(s.on_reply(reply)),
            Source::Dns(s) => s.on_reply(tag, reply),
        }
    }

    /// The poll was abandoned (deadline passed without all replies): forget partial state.
    pub fn abandon(&mut self) {
        match self {
            Source::Consul(s) => s.reset_index(),
            Source::Dns(s) => s.abandon(),
            _ => {}
        }
    }

    /// The answer of the last poll was not published: forget the cursor (etcd revision, file ETag,
    /// Consul index) so the next poll returns the whole set instead of "unchanged". Without this a
    /// failed publish would leave the set unpublished until the registry next changes.
    pub fn invalidate(&mut self) {
        match self {
            Source::File(s) => s.invalidate(),
            Source::Etcd(s) => s.invalidate(),
            Source::Consul(s) => s.reset_index(),
            // The others keep no cursor: every poll returns the whole set.
            _ => {}
        }
    }

    /// Whether this source long-polls (its replies come back when something changed).
    pub fn is_blocking(&self) -> bool {
        matches!(self, Source::Consul(c) if c.is_blocking())
    }
}

type Headers = Vec<(String, String)>;

/// Splits a reply into a 2xx body or an error.
pub(crate) fn expect_ok(reply: Reply) -> Result<(Headers, Vec<u8>), SourceError> {
    match reply {
        Reply::Failed(e) => Err(SourceError::Transport(e)),
        Reply::Response { status, headers, body } if (200..300).contains(&status) => Ok((headers, body)),
        Reply::Response { status, .. } => Err(SourceError::Status(status)),
    }
}

/// Endpoint description used by the static list and by etcd values:
/// `{"address":"10.0.0.1:8080","weight":2,"zone":"a","tags":["x"],"metadata":{"k":"v"}}`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl EndpointSpec {
    pub fn into_endpoint(self) -> Result<Endpoint, String> {
        let weight = self.weight.unwrap_or(1);
        if weight == 0 {
            return Err(format!("endpoint {}: weight must be at least 1", self.address));
        }
        Ok(Endpoint {
            address: self.address,
            weight,
            zone: self.zone,
            tags: self.tags,
            metadata: self.metadata,
        })
    }
}

/// Sorts endpoints by address and merges duplicates (first wins), so that equal registry views
/// compare equal and publish nothing.
pub fn canonicalize(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort_by_key(|e| e.address);
    endpoints.dedup_by(|b, a| a.address == b.address);
    endpoints
}

/// A JSON object's string values (others are skipped): registry metadata maps.
pub(crate) fn string_map(v: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    v.and_then(serde_json::Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect())
        .unwrap_or_default()
}

/// A JSON array's strings (`null` or absent → empty).
pub(crate) fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Parses an IP literal (v4 or v6, brackets allowed) and a port into an address.
pub(crate) fn socket_addr(ip: &str, port: u16) -> Option<SocketAddr> {
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order_and_dedup() {
        let e = |a: &str, w| Endpoint { weight: w, ..Endpoint::new(a.parse().unwrap()) };
        let got = canonicalize(vec![e("10.0.0.2:80", 1), e("10.0.0.1:80", 2), e("10.0.0.2:80", 3)]);
        assert_eq!(got, vec![e("10.0.0.1:80", 2), e("10.0.0.2:80", 1)]);
    }

    #[test]
    fn socket_addr_accepts_ip_literals_only() {
        assert_eq!(socket_addr("10.1.2.3", 80), Some("10.1.2.3:80".parse().unwrap()));
        assert_eq!(socket_addr("[::1]", 80), Some("[::1]:80".parse().unwrap()));
        assert_eq!(socket_addr("fd00::1", 80), Some("[fd00::1]:80".parse().unwrap()));
        assert_eq!(socket_addr("db.internal", 80), None);
        assert_eq!(socket_addr("", 80), None);
    }
}
