//! discovery: every registry's wire format (etcd, Consul, Eureka, Nacos, Kubernetes
//! EndpointSlices, the JSON file, DNS-over-HTTPS messages) and the plugin configuration.
//!
//! Registry answers are fed to the source state machines the filter runs, twice (the second poll
//! sees the cursor the first one left: etcd revision, Consul index, file ETag), then screened by the
//! address policy and encoded as the endpoint set the balancer reads. What a source returns must
//! keep the publisher's contract: sorted by address, no duplicate address, weights at least 1.

use std::sync::OnceLock;

use meshwasm_discovery::config::{Plan, ServicePlan};
use meshwasm_discovery::http::Reply;
use meshwasm_discovery::sources::{Outcome, Progress, Source, dns};
use meshwasm_endpoints::{EndpointSet, MAX_WEIGHT};

/// The plan of one fixed service (`api`) with the given `source` JSON.
fn service(source: &str) -> Option<ServicePlan> {
    let cfg =
        format!(r#"{{"services": [{{"name": "api", "deny_cidrs": ["10.99.0.0/16"], "source": {source}}}]}}"#);
    Plan::from_json(cfg.as_bytes()).ok().and_then(|p| p.services.into_iter().next())
}

/// Splits an input into a reply: leading lines `#name: value` are response headers (`#:status: N`
/// sets the status, default 200), the rest is the body. JSON never starts with `#`.
fn reply(data: &[u8]) -> Reply {
    let mut status = 200;
    let mut headers = Vec::new();
    let mut rest = data;
    while let Some(line) = rest.strip_prefix(b"#") {
        let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
        let text = String::from_utf8_lossy(&line[..end]);
        if let Some((k, v)) = text.split_once(": ") {
            if k == ":status" {
                status = v.trim().parse().unwrap_or(200);
            } else {
                headers.push((k.to_ascii_lowercase(), v.to_owned()));
            }
        }
        rest = line.get(end + 1..).unwrap_or_default();
    }
    Reply::Response { status, headers, body: rest.to_vec() }
}

/// Checks one finished poll and pushes its endpoints through what the engine does with them.
fn check(plan: &ServicePlan, outcome: &Outcome) {
    let Outcome::Endpoints { endpoints, .. } = outcome else { return };
    assert!(
        endpoints.windows(2).all(|w| w[0].address < w[1].address),
        "a source returned endpoints out of order or with a duplicate address"
    );
    assert!(endpoints.iter().all(|e| e.weight >= 1), "a source returned weight 0");
    let screened = plan.policy.screen(endpoints.clone());
    assert!(screened.endpoints.iter().all(|e| (1..=MAX_WEIGHT).contains(&e.weight)));
    let set = EndpointSet { version: 1, endpoints: screened.endpoints };
    match EndpointSet::decode(&set.encode()) {
        Ok(back) => assert_eq!(back, set, "an endpoint set does not survive its encoding"),
        Err(e) => panic!("an endpoint set does not decode after encoding: {e}"),
    }
}

/// Two polls of a single-request source with the same answer.
fn drive(plan: &Option<ServicePlan>, data: &[u8]) {
    let Some(plan) = plan else { return };
    let Ok(mut source) = plan.new_source() else { return };
    let reply = reply(data);
    for round in 0..3 {
        let Ok(requests) = source.begin() else { return };
        let Some((tag, _)) = requests.first() else { return };
        if let Progress::Done(Ok(outcome)) = source.on_reply(*tag, reply.clone()) {
            check(plan, &outcome);
        }
        if round == 1 {
            source.invalidate();
        }
    }
    source.abandon();
    let _ = source.begin();
}

/// The registry sources, each with its fixed configuration (service `api`).
const REGISTRIES: [&str; 6] = [
    r#"{"etcd": {"cluster": "etcd", "prefix": "/services/api/"}}"#,
    r#"{"consul": {"cluster": "consul", "passing": true, "wait": "30s", "tag": "v1"}}"#,
    r#"{"eureka": {"cluster": "eureka", "app": "API"}}"#,
    r#"{"nacos": {"cluster": "nacos", "service_name": "api", "group_name": "DEFAULT_GROUP"}}"#,
    r#"{"kubernetes": {"cluster": "kube-api", "namespace": "default", "service": "api", "port_name": "http"}}"#,
    r#"{"file": {"cluster": "registry", "path": "/registry.json"}}"#,
];

fn registry(i: usize) -> &'static Option<ServicePlan> {
    static PLANS: OnceLock<Vec<Option<ServicePlan>>> = OnceLock::new();
    PLANS.get_or_init(|| REGISTRIES.iter().map(|s| service(s)).collect()).get(i).unwrap_or(&None)
}

/// etcd v3 JSON gateway `kv/range` answers (base64 keys and values).
pub fn etcd(data: &[u8]) {
    drive(registry(0), data);
}

/// Consul `/v1/health/service` answers, blocking (`X-Consul-Index`).
pub fn consul(data: &[u8]) {
    drive(registry(1), data);
}

/// Eureka `/apps/<app>` answers.
pub fn eureka(data: &[u8]) {
    drive(registry(2), data);
}

/// Nacos `/nacos/v1/ns/instance/list` answers.
pub fn nacos(data: &[u8]) {
    drive(registry(3), data);
}

/// Kubernetes `EndpointSliceList` answers.
pub fn kubernetes(data: &[u8]) {
    drive(registry(4), data);
}

/// The JSON file source (with ETag).
pub fn file(data: &[u8]) {
    drive(registry(5), data);
}

/// The DoH configurations [`doh`] picks from with its first byte.
const DOH: [&str; 4] = [
    r#"{"dns": {"cluster": "doh", "name": "api.svc.test", "type": "A", "port": 8080}}"#,
    r#"{"dns": {"cluster": "doh", "name": "api.svc.test", "type": "AAAA", "port": 8080, "method": "POST"}}"#,
    r#"{"dns": {"cluster": "doh", "name": "_http._tcp.api.svc.test", "type": "SRV"}}"#,
    r#"{"dns": {"cluster": "doh", "name": "_http._tcp.api.svc.test", "type": "SRV", "ipv6": true, "max_targets": 3}}"#,
];

fn doh_plans() -> &'static [Option<ServicePlan>] {
    static PLANS: OnceLock<Vec<Option<ServicePlan>>> = OnceLock::new();
    PLANS.get_or_init(|| DOH.iter().map(|s| service(s)).collect())
}

/// The fixed configurations that do not configure (see [`crate::broken_fixtures`]).
pub(crate) fn broken_fixtures() -> Vec<&'static str> {
    let registries = (0..REGISTRIES.len()).filter(|i| registry(*i).is_none()).map(|i| REGISTRIES[i]);
    let doh = doh_plans().iter().zip(DOH).filter(|(p, _)| p.is_none()).map(|(_, s)| s);
    registries.chain(doh).collect()
}

/// DNS-over-HTTPS: the first byte picks the configuration (A, AAAA, SRV, SRV with IPv6), then DNS
/// messages, each preceded by its length (2 bytes, big-endian), answer the poll's requests in the
/// order they are asked (the SRV follow-up queries for the targets' addresses too). Each message is
/// also parsed on its own as the answer to each query type.
pub fn doh(data: &[u8]) {
    let plans = doh_plans();
    let Some((choice, mut rest)) = data.split_first() else { return };
    let mut messages = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        messages.push(&tail[..len]);
        rest = &tail[len..];
    }
    for m in &messages {
        for (name, qtype) in [("api.svc.test", 1), ("api.svc.test.", 28), ("_http._tcp.api.svc.test", 33)] {
            if let Ok(resp) = dns::parse_response(m, name, qtype) {
                let _ = dns::alias_chain(&resp.answers, name);
            }
        }
    }
    let Some(Some(plan)) = plans.get(usize::from(*choice) % DOH.len()) else { return };
    let Ok(mut source) = plan.new_source() else { return };
    let mut messages = messages.into_iter();
    let Ok(mut pending) = source.begin() else { return };
    let mut steps = 0;
    while let Some((tag, _)) = pending.first().cloned() {
        pending.remove(0);
        steps += 1;
        if steps > 64 {
            return;
        }
        let Some(m) = messages.next() else {
            source.abandon();
            return;
        };
        let reply = Reply::Response {
            status: 200,
            headers: vec![("content-type".into(), "application/dns-message".into())],
            body: m.to_vec(),
        };
        match source.on_reply(tag, reply) {
            Progress::More(more) => pending.extend(more),
            Progress::Waiting => {}
            Progress::Done(Ok(outcome)) => {
                check(plan, &outcome);
                return;
            }
            Progress::Done(Err(_)) => return,
        }
    }
}

/// The discovery plugin configuration; every service of a plan that configures gets its source
/// built and its first poll started.
pub fn config(data: &[u8]) {
    let Ok(plan) = Plan::from_json(data) else { return };
    for s in &plan.services {
        if let Ok(mut source) = s.new_source() {
            let is_static = matches!(source, Source::Static(_));
            if let Err(outcome) = source.begin()
                && is_static
            {
                check(s, &outcome);
            }
        }
        let _ = s.policy.check(std::net::SocketAddr::from(([10, 0, 0, 1], 80)));
    }
}
