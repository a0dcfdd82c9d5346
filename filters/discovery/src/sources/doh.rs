//! DNS over HTTPS (RFC 8484) as a discovery source: `GET <path>?dns=<base64url>` or `POST` with
//! `content-type: application/dns-message`, through an Envoy cluster (unbound serves it over h2c).
//!
//! - `A` / `AAAA`: every address of the name (after CNAMEs) on the configured `port`.
//! - `SRV`: the targets of the lowest priority present (higher priorities are backups in RFC 2782),
//!   each with its port and weight (weight 0 is published as 1, the smallest weight the endpoint
//!   format has). Target addresses come from the additional section when the server included them,
//!   otherwise from follow-up `A` (and `AAAA` with `ipv6`) queries within the same poll.
//! - Refresh follows the smallest TTL of the records used, clamped to `[min_ttl, max_ttl]`; an
//!   empty answer (NXDOMAIN, NODATA, or SRV target ".") is re-checked every `refresh`.
//! - TC set, an rcode other than NOERROR/NXDOMAIN, a malformed message or a failed follow-up fail
//!   the whole poll, so the last good set stays.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meshwasm_endpoints::Endpoint;
use serde::Deserialize;

use super::dns::{self, RData, Record};
use super::{Outcome, Progress, SourceError, canonicalize, expect_ok};
use crate::config::Dur;
use crate::http::{Reply, Request, header};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RecordType {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
    #[serde(rename = "SRV")]
    Srv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Method {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

/// `{"dns": {"cluster": "doh", "name": "_http._tcp.api.svc.test", "type": "SRV"}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DohConfig {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The name to resolve.
    pub name: String,
    #[serde(rename = "type")]
    pub record_type: RecordType,
    /// Port for `A`/`AAAA` answers (required for them, not allowed for SRV).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_method")]
    pub method: Method,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_min_ttl")]
    pub min_ttl: Dur,
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Dur,
    /// Also resolve SRV targets to AAAA addresses.
    #[serde(default)]
    pub ipv6: bool,
    /// At most this many SRV targets are resolved per poll.
    #[serde(default = "default_max_targets")]
    pub max_targets: usize,
}

fn default_method() -> Method {
    Method::Get
}
fn default_path() -> String {
    "/dns-query".into()
}
fn default_min_ttl() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_max_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_max_targets() -> usize {
    64
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    port: u16,
    weight: u16,
    priority: u16,
    ttl: u32,
}

/// The state of one poll.
#[derive(Debug, Default)]
struct Pending {
    targets: Vec<Target>,
    /// Addresses per target name, with the smallest TTL seen.
    addrs: BTreeMap<String, Vec<IpAddr>>,
    min_ttl: Option<u32>,
    /// SRV targets beyond `max_targets`.
    skipped: usize,
    /// Follow-up queries still out: tag → (target name, qtype).
    outstanding: BTreeMap<u32, (String, u16)>,
    /// Targets with a failed follow-up query (left out of this poll), and the last such error.
    failed: BTreeSet<String>,
    last_error: Option<SourceError>,
}

#[derive(Debug)]
pub struct Doh {
    config: DohConfig,
    qname: String,
    timeout: Duration,
    refresh: Duration,
    pending: Option<Pending>,
}

impl Doh {
    pub fn new(config: DohConfig, timeout: Duration, refresh: Duration) -> Result<Self, String> {
        let qname = dns::normalize_name(&config.name).map_err(|e| format!("name: {e}"))?;
        match (config.record_type, config.port) {
            (RecordType::Srv, Some(_)) => return Err("port: SRV records carry their own ports".into()),
            (RecordType::A | RecordType::Aaaa, None) => return Err("port: required for A and AAAA".into()),
            _ => {}
        }
        if config.min_ttl.0 > config.max_ttl.0 {
            return Err("min_ttl must not exceed max_ttl".into());
        }
        if !config.path.starts_with('/') {
            return Err("path must start with `/`".into());
        }
        Ok(Self { config, qname, timeout, refresh, pending: None })
    }

    fn qtype(&self) -> u16 {
        match self.config.record_type {
            RecordType::A => dns::TYPE_A,
            RecordType::Aaaa => dns::TYPE_AAAA,
            RecordType::Srv => dns::TYPE_SRV,
        }
    }

    /// The HTTP request carrying a query for `name`/`qtype`.
    pub fn request_for(&self, name: &str, qtype: u16) -> Result<Request, dns::DnsError> {
        let query = dns::build_query(name, qtype)?;
        let mut req = match self.config.method {
            Method::Get => Request::get(
                format!("{}?dns={}", self.config.path, URL_SAFE_NO_PAD.encode(&query)),
                self.timeout,
            ),
            Method::Post => Request {
                method: "POST",
                path: self.config.path.clone(),
                headers: vec![("content-type".into(), "application/dns-message".into())],
                body: query,
                timeout: self.timeout,
            },
        };
        req.headers.push(("accept".into(), "application/dns-message".into()));
        req.headers.extend(self.config.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(req)
    }

    pub fn begin(&mut self) -> Vec<(u32, Request)> {
        self.pending = Some(Pending::default());
        // The name was validated in `new`, so building its query cannot fail.
        self.request_for(&self.qname, self.qtype()).map(|r| vec![(0, r)]).unwrap_or_default()
    }

    pub fn abandon(&mut self) {
        self.pending = None;
    }

    pub fn on_reply(&mut self, tag: u32, reply: Reply) -> Progress {
        match self.step(tag, reply) {
            Ok(p) => p,
            Err(e) => {
                self.pending = None;
                Progress::Done(Err(e))
            }
        }
    }

    fn parse(reply: Reply, name: &str, qtype: u16) -> Result<dns::Response, SourceError> {
        let (headers, body) = expect_ok(reply)?;
        // A DNS message is at most 65535 bytes; anything larger is not one.
        if body.len() > usize::from(u16::MAX) {
            return Err(SourceError::Malformed(format!(
                "{} byte answer exceeds the DNS message limit",
                body.len()
            )));
        }
        if let Some(ct) = header(&headers, "content-type")
            && !ct.trim().to_ascii_lowercase().starts_with("application/dns-message")
        {
            return Err(SourceError::Malformed(format!(
                "content-type {ct:?} is not application/dns-message"
            )));
        }
        dns::parse_response(&body, name, qtype).map_err(|e| match e {
            dns::DnsError::Truncated | dns::DnsError::Rcode(_) => SourceError::Rejected(e.to_string()),
            other => SourceError::malformed(other),
        })
    }

    fn step(&mut self, tag: u32, reply: Reply) -> Result<Progress, SourceError> {
        let mut pending =
            self.pending.take().ok_or_else(|| SourceError::Transport("reply outside a poll".into()))?;
        if tag == 0 {
            let resp = Self::parse(reply, &self.qname, self.qtype())?;
            let chain = dns::alias_chain(&resp.answers, &self.qname);
            let owned = |r: &&Record| chain.contains(&r.name);
            if let Some(port) = self.config.port {
                // A / AAAA: done with this one answer.
                let mut endpoints = Vec::new();
                let mut ttl: Option<u32> = None;
                for r in resp.answers.iter().filter(owned) {
                    let ip = match r.data {
                        RData::A(ip) => IpAddr::V4(ip),
                        RData::Aaaa(ip) => IpAddr::V6(ip),
                        _ => continue,
                    };
                    ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                    endpoints.push(Endpoint::new(SocketAddr::new(ip, port)));
                }
                return Ok(Progress::Done(Ok(self.finish(endpoints, 0, ttl))));
            }
            let mut srvs: Vec<Target> = resp
                .answers
                .iter()
                .filter(owned)
                .filter_map(|r| match &r.data {
                    RData::Srv { priority, weight, port, target } => Some(Target {
                        name: target.clone(),
                        port: *port,
                        weight: *weight,
                        priority: *priority,
                        ttl: r.ttl,
                    }),
                    _ => None,
                })
                .collect();
            // RFC 2782: a single "." target means the service is decidedly not available.
            srvs.retain(|t| !t.name.is_empty() && t.port != 0);
            let Some(best) = srvs.iter().map(|t| t.priority).min() else {
                return Ok(Progress::Done(Ok(self.finish(Vec::new(), 0, None))));
            };
            srvs.retain(|t| t.priority == best);
            pending.skipped = srvs.len().saturating_sub(self.config.max_targets);
            srvs.truncate(self.config.max_targets);
            pending.min_ttl = srvs.iter().map(|t| t.ttl).min();
            for r in &resp.additionals {
                let ip = match r.data {
                    RData::A(ip) => IpAddr::V4(ip),
                    RData::Aaaa(ip) if self.config.ipv6 => IpAddr::V6(ip),
                    _ => continue,
                };
                if srvs.iter().any(|t| t.name == r.name) {
                    pending.addrs.entry(r.name.clone()).or_default().push(ip);
                    pending.min_ttl = Some(pending.min_ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                }
            }
            let mut more = Vec::new();
            let mut next_tag = 1;
            let mut asked: Vec<&str> = Vec::new();
            for t in &srvs {
                if pending.addrs.contains_key(&t.name) || asked.contains(&t.name.as_str()) {
                    continue;
                }
                asked.push(&t.name);
                let mut types = vec![dns::TYPE_A];
                if self.config.ipv6 {
                    types.push(dns::TYPE_AAAA);
                }
                for qt in types {
                    let req = self.request_for(&t.name, qt).map_err(SourceError::malformed)?;
                    pending.outstanding.insert(next_tag, (t.name.clone(), qt));
                    more.push((next_tag, req));
                    next_tag += 1;
                }
            }
            pending.targets = srvs;
            if more.is_empty() {
                return Ok(Progress::Done(self.finish_srv(pending)));
            }
            self.pending = Some(pending);
            return Ok(Progress::More(more));
        }
        let (name, qtype) = pending
            .outstanding
            .remove(&tag)
            .ok_or_else(|| SourceError::Transport(format!("unexpected reply tag {tag}")))?;
        match Self::parse(reply, &name, qtype) {
            Ok(resp) => {
                let chain = dns::alias_chain(&resp.answers, &name);
                for r in resp.answers.iter().filter(|r| chain.contains(&r.name)) {
                    let ip = match r.data {
                        RData::A(ip) => IpAddr::V4(ip),
                        RData::Aaaa(ip) => IpAddr::V6(ip),
                        _ => continue,
                    };
                    pending.addrs.entry(name.clone()).or_default().push(ip);
                    pending.min_ttl = Some(pending.min_ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                }
            }
            // One target's lookup failing must not cost the others: leave that target out (counted
            // as skipped) and re-check soon.
            Err(e) => {
                pending.failed.insert(name);
                pending.last_error = Some(e);
            }
        }
        if pending.outstanding.is_empty() {
            return Ok(Progress::Done(self.finish_srv(pending)));
        }
        self.pending = Some(pending);
        Ok(Progress::Waiting)
    }

    /// The SRV poll's result. Targets whose lookup failed are left out; if that leaves nothing, the
    /// poll fails (the last good set is kept) rather than reporting an empty service.
    fn finish_srv(&self, pending: Pending) -> Result<Outcome, SourceError> {
        let mut endpoints = Vec::new();
        let mut skipped = pending.skipped;
        for t in &pending.targets {
            let ips = match pending.addrs.get(&t.name) {
                Some(ips) if !pending.failed.contains(&t.name) => ips,
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            for ip in ips {
                let mut e = Endpoint::new(SocketAddr::new(*ip, t.port));
                e.weight = u32::from(t.weight.max(1));
                e.metadata.insert("srv_target".into(), t.name.clone());
                e.metadata.insert("srv_priority".into(), t.priority.to_string());
                endpoints.push(e);
            }
        }
        if let Some(e) = pending.last_error {
            if endpoints.is_empty() {
                return Err(e);
            }
            // Partial answer: ask again at the shortest interval allowed.
            return Ok(self.finish(endpoints, skipped, Some(0)));
        }
        Ok(self.finish(endpoints, skipped, pending.min_ttl))
    }

    fn finish(&self, endpoints: Vec<Endpoint>, skipped: usize, ttl: Option<u32>) -> Outcome {
        let next = match ttl {
            Some(ttl) => {
                Duration::from_secs(u64::from(ttl)).clamp(self.config.min_ttl.0, self.config.max_ttl.0)
            }
            None => self.refresh,
        };
        Outcome::Endpoints { endpoints: canonicalize(endpoints), skipped, next: Some(next) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dns::tests::{Msg, SRV_ANSWER, SRV_QUERY, hex, srv_rdata};
    use super::*;

    fn doh(extra: &str) -> Doh {
        let cfg: DohConfig = serde_json::from_str(&format!(r#"{{"cluster":"doh"{extra}}}"#)).unwrap();
        Doh::new(cfg, Duration::from_secs(2), Duration::from_secs(7)).unwrap()
    }

    fn dns_reply(body: Vec<u8>) -> Reply {
        Reply::Response {
            status: 200,
            headers: vec![("content-type".into(), "application/dns-message".into())],
            body,
        }
    }

    fn endpoints(p: Progress) -> (Vec<String>, Option<Duration>) {
        match p {
            Progress::Done(Ok(Outcome::Endpoints { endpoints, next, .. })) => {
                (endpoints.iter().map(|e| format!("{}/{}", e.address, e.weight)).collect(), next)
            }
            other => panic!("not endpoints: {other:?}"),
        }
    }

    #[test]
    fn get_and_post_requests() {
        let mut d = doh(r#","name":"_http._tcp.api.svc.test","type":"SRV""#);
        let reqs = d.begin();
        let expected = URL_SAFE_NO_PAD.encode(hex(SRV_QUERY));
        assert_eq!(reqs[0].1.path, format!("/dns-query?dns={expected}"));
        assert!(!reqs[0].1.path.contains('='.to_string().repeat(2).as_str()));
        let mut d = doh(r#","name":"api.svc.test","type":"A","port":80,"method":"POST""#);
        let reqs = d.begin();
        assert_eq!(reqs[0].1.method, "POST");
        assert!(reqs[0].1.headers.contains(&("content-type".into(), "application/dns-message".into())));
        assert_eq!(reqs[0].1.body, dns::build_query("api.svc.test", dns::TYPE_A).unwrap());
    }

    #[test]
    fn config_checks() {
        let cfg = |s: &str| serde_json::from_str::<DohConfig>(&format!(r#"{{"cluster":"doh"{s}}}"#)).unwrap();
        let d = Duration::from_secs(1);
        assert!(Doh::new(cfg(r#","name":"a.test","type":"A""#), d, d).is_err());
        assert!(Doh::new(cfg(r#","name":"a.test","type":"SRV","port":1"#), d, d).is_err());
        assert!(Doh::new(cfg(r#","name":"a..test","type":"A","port":1"#), d, d).is_err());
    }

    #[test]
    fn srv_with_follow_up_a_queries() {
        let mut d = doh(r#","name":"_http._tcp.api.svc.test","type":"SRV""#);
        d.begin();
        let Progress::More(more) = d.on_reply(0, dns_reply(hex(SRV_ANSWER))) else { panic!() };
        assert_eq!(more.len(), 1);
        let (tag, req) = &more[0];
        let q = URL_SAFE_NO_PAD.encode(dns::build_query("node1.svc.test", dns::TYPE_A).unwrap());
        assert!(req.path.ends_with(&q));
        let mut m = Msg::new(0x8580, "node1.svc.test", dns::TYPE_A, [2, 0, 0]);
        m.rr_ptr(dns::TYPE_A, 12, &[127, 0, 0, 11]);
        m.rr_ptr(dns::TYPE_A, 40, &[127, 0, 0, 12]);
        let (eps, next) = endpoints(d.on_reply(*tag, dns_reply(m.buf)));
        assert_eq!(eps, ["127.0.0.11:8080/5", "127.0.0.12:8080/5"]);
        assert_eq!(next, Some(Duration::from_secs(12)), "smallest TTL of records used");
    }

    #[test]
    fn srv_lowest_priority_with_additionals() {
        let q = "_http._tcp.api.svc.test";
        let mut m = Msg::new(0x8180, q, dns::TYPE_SRV, [3, 0, 2]);
        m.rr_ptr(dns::TYPE_SRV, 300, &srv_rdata(10, 0, 8080, "a.svc.test"));
        m.rr_ptr(dns::TYPE_SRV, 300, &srv_rdata(10, 60, 8081, "b.svc.test"));
        m.rr_ptr(dns::TYPE_SRV, 300, &srv_rdata(20, 100, 8082, "c.svc.test"));
        m.rr("a.svc.test", dns::TYPE_A, 0, &[10, 0, 0, 1]);
        m.rr("b.svc.test", dns::TYPE_A, 500, &[10, 0, 0, 2]);
        let mut d = doh(&format!(r#","name":"{q}","type":"SRV""#));
        d.begin();
        let (eps, next) = endpoints(d.on_reply(0, dns_reply(m.buf)));
        assert_eq!(eps, ["10.0.0.1:8080/1", "10.0.0.2:8081/60"]);
        assert_eq!(next, Some(Duration::from_secs(1)), "TTL 0 clamps to min_ttl");
    }

    #[test]
    fn a_records_through_cname_and_empty_answers() {
        let q = "api.svc.test";
        let mut m = Msg::new(0x8180, q, dns::TYPE_A, [3, 0, 0]);
        m.rr_ptr(dns::TYPE_CNAME, 600, &[3, b'w', b'e', b'b', 0xc0, 16]);
        m.rr("web.svc.test", dns::TYPE_A, 900, &[10, 0, 0, 7]);
        m.rr("unrelated.test", dns::TYPE_A, 1, &[10, 0, 0, 8]);
        let mut d = doh(&format!(r#","name":"{q}","type":"A","port":9000"#));
        d.begin();
        let (eps, next) = endpoints(d.on_reply(0, dns_reply(m.buf)));
        assert_eq!(eps, ["10.0.0.7:9000/1"]);
        assert_eq!(next, Some(Duration::from_secs(300)), "clamped to max_ttl");
        d.begin();
        let (eps, next) =
            endpoints(d.on_reply(0, dns_reply(Msg::new(0x8183, q, dns::TYPE_A, [0, 0, 0]).buf)));
        assert!(eps.is_empty());
        assert_eq!(next, Some(Duration::from_secs(7)), "empty answers re-checked every refresh");
    }

    #[test]
    fn failures_fail_the_poll() {
        let q = "api.svc.test";
        let mut d = doh(&format!(r#","name":"{q}","type":"A","port":1"#));
        for bad in [
            dns_reply(Msg::new(0x8380, q, dns::TYPE_A, [0, 0, 0]).buf),
            dns_reply(Msg::new(0x8182, q, dns::TYPE_A, [0, 0, 0]).buf),
            dns_reply(vec![1, 2, 3]),
            Reply::Response {
                status: 200,
                headers: vec![("content-type".into(), "text/html".into())],
                body: vec![],
            },
            Reply::ok(502, ""),
            Reply::Failed("timeout".into()),
        ] {
            d.begin();
            assert!(matches!(d.on_reply(0, bad), Progress::Done(Err(_))));
        }
        // When the only target's follow-up fails, nothing is left: the SRV poll fails (last set kept).
        let mut d = doh(r#","name":"_http._tcp.api.svc.test","type":"SRV","ipv6":true"#);
        d.begin();
        let Progress::More(more) = d.on_reply(0, dns_reply(hex(SRV_ANSWER))) else { panic!() };
        assert_eq!(more.len(), 2, "A and AAAA");
        let mut m = Msg::new(0x8180, "node1.svc.test", dns::TYPE_A, [1, 0, 0]);
        m.rr_ptr(dns::TYPE_A, 12, &[127, 0, 0, 11]);
        assert_eq!(d.on_reply(more[0].0, dns_reply(m.buf)), Progress::Waiting);
        assert!(matches!(d.on_reply(more[1].0, Reply::Failed("reset".into())), Progress::Done(Err(_))));
    }

    #[test]
    fn one_failing_srv_target_is_skipped_not_the_whole_poll() {
        let q = "_http._tcp.api.svc.test";
        let mut m = Msg::new(0x8180, q, dns::TYPE_SRV, [3, 0, 0]);
        m.rr_ptr(dns::TYPE_SRV, 300, &srv_rdata(10, 5, 8080, "a.svc.test"));
        m.rr_ptr(dns::TYPE_SRV, 300, &srv_rdata(10, 6, 8081, "b.svc.test"));
        m.rr_ptr(dns::TYPE_SRV, 300, &srv_rdata(10, 7, 8082, "c.svc.test"));
        let mut d = doh(&format!(r#","name":"{q}","type":"SRV""#));
        d.begin();
        let Progress::More(more) = d.on_reply(0, dns_reply(m.buf)) else { panic!() };
        assert_eq!(more.len(), 3);
        let answer = |name: &str, ip: [u8; 4]| {
            let mut m = Msg::new(0x8180, name, dns::TYPE_A, [1, 0, 0]);
            m.rr_ptr(dns::TYPE_A, 60, &ip);
            dns_reply(m.buf)
        };
        assert_eq!(d.on_reply(more[0].0, answer("a.svc.test", [10, 0, 0, 1])), Progress::Waiting);
        // b's lookup fails (SERVFAIL): b is left out, a and c are still published.
        let servfail = dns_reply(Msg::new(0x8182, "b.svc.test", dns::TYPE_A, [0, 0, 0]).buf);
        assert_eq!(d.on_reply(more[1].0, servfail), Progress::Waiting);
        let done = d.on_reply(more[2].0, answer("c.svc.test", [10, 0, 0, 3]));
        let Progress::Done(Ok(Outcome::Endpoints { skipped, .. })) = &done else { panic!("{done:?}") };
        assert_eq!(*skipped, 1, "the failed target is counted");
        let (eps, next) = endpoints(done);
        assert_eq!(eps, ["10.0.0.1:8080/5", "10.0.0.3:8082/7"]);
        assert_eq!(next, Some(Duration::from_secs(1)), "partial answer: re-checked at min_ttl");
    }
}
