//! The discovery engine of one VM: takes part in the poller election and, while elected, runs each
//! service's polls on its schedule, keeps the last good set through registry trouble, and publishes
//! real changes. It never does I/O itself: [`Engine::tick`] and [`Engine::on_reply`] return the
//! requests to send, and the host seam ([`Host`]) provides clock, shared data, queues, logs, metrics.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use meshwasm_endpoints::Endpoint;

use crate::config::{MIN_RETRY, Mode, Plan, ServicePlan};
use meshwasm_filter_runtime::backoff::Backoff;

use crate::host::{Counter, Host, Level};
use crate::http::{Reply, Request};
use crate::lease::{Lease, Transition};
use crate::policy::{Refusal, Screened};
use crate::publish::{Published, publish, read_published};
use crate::sources::{Outcome, Progress, Source, SourceError};

/// Extra time past a request's own timeout before the engine gives up on a reply that never came.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);

/// A request to send to `upstream` of service `service`; its reply goes back with the same ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub service: usize,
    pub poll: u64,
    pub tag: u32,
    pub request: Request,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    deadline_ms: u64,
    outstanding: BTreeSet<u32>,
}

#[derive(Debug)]
struct ServiceState {
    plan: ServicePlan,
    source: Source,
    next_due_ms: u64,
    poll: Option<InFlight>,
    /// The last set published (or found published when elected).
    last_good: Option<Vec<Endpoint>>,
    version: u64,
    errors_in_row: u32,
    /// What the address policy did to the last answer, so an unchanged refusal is logged at warn
    /// once, not on every poll.
    last_refused: Vec<(SocketAddr, Refusal)>,
    last_clamped: Vec<(SocketAddr, u32)>,
}

/// A set found published when elected went through the policy of whoever published it, which may be
/// an older, looser configuration (shared data outlives a plugin reload). Anything the current policy
/// refuses is taken back at once, even if that empties the service: waiting for the next acceptable
/// registry answer could mean waiting forever. Returns the set now published.
fn rescreen(host: &mut impl Host, i: usize, s: &mut ServiceState, inherited: Vec<Endpoint>) -> Vec<Endpoint> {
    let screened = s.plan.policy.screen(inherited.clone());
    if screened.refused.is_empty() && screened.clamped.is_empty() {
        return inherited;
    }
    let what = format!("service `{}` (published before this configuration)", s.plan.name);
    report_screening(host, i, &what, &screened, &mut s.last_refused, &mut s.last_clamped);
    match publish(host, &s.plan.name, &screened.endpoints) {
        Ok(Published::Updated { version, .. } | Published::Unchanged { version }) => {
            host.count(i, Counter::Updates);
            host.endpoints_gauge(i, screened.endpoints.len() as u64);
            s.version = version;
            screened.endpoints
        }
        Err(e) => {
            host.count(i, Counter::Errors);
            host.log(
                Level::Error,
                &format!("meshwasm discovery: service `{}`: cannot publish: {e}", s.plan.name),
            );
            inherited
        }
    }
}

/// At most this many addresses are named in one log line.
const LOG_ADDRESSES: usize = 8;

/// Logs and counts what the address policy refused or clamped in an answer of service `i`.
fn report_screening(
    host: &mut impl Host,
    i: usize,
    what: &str,
    screened: &Screened,
    last_refused: &mut Vec<(SocketAddr, Refusal)>,
    last_clamped: &mut Vec<(SocketAddr, u32)>,
) {
    for _ in &screened.refused {
        host.count(i, Counter::Refused);
    }
    for _ in &screened.clamped {
        host.count(i, Counter::WeightClamped);
    }
    if !screened.refused.is_empty() {
        let level = if screened.refused == *last_refused { Level::Debug } else { Level::Warn };
        let mut msg = format!(
            "meshwasm discovery: {what}: refused {} endpoint(s) by the address policy:",
            screened.refused.len()
        );
        for (addr, why) in screened.refused.iter().take(LOG_ADDRESSES) {
            let _ = write!(msg, " {addr} ({why});");
        }
        if screened.refused.len() > LOG_ADDRESSES {
            let _ = write!(msg, " and {} more", screened.refused.len() - LOG_ADDRESSES);
        }
        host.log(level, msg.trim_end_matches(';'));
    }
    if !screened.clamped.is_empty() {
        let level = if screened.clamped == *last_clamped { Level::Debug } else { Level::Warn };
        let mut msg = format!(
            "meshwasm discovery: {what}: clamped the weight of {} endpoint(s) to {}:",
            screened.clamped.len(),
            meshwasm_endpoints::MAX_WEIGHT
        );
        for (addr, w) in screened.clamped.iter().take(LOG_ADDRESSES) {
            let _ = write!(msg, " {addr} (was {w});");
        }
        if screened.clamped.len() > LOG_ADDRESSES {
            let _ = write!(msg, " and {} more", screened.clamped.len() - LOG_ADDRESSES);
        }
        host.log(level, msg.trim_end_matches(';'));
    }
    last_refused.clone_from(&screened.refused);
    last_clamped.clone_from(&screened.clamped);
}

pub struct Engine {
    services: Vec<ServiceState>,
    poller: Poller,
    next_poll_id: u64,
}

/// How this VM comes to poll.
enum Poller {
    /// Filter mode: one VM among many, elected through the lease.
    Lease(Lease),
    /// Service mode: the only VM; polls from its first tick (`started` once that tick ran).
    Alone { id: u64, started: bool },
}

impl Poller {
    fn id(&self) -> u64 {
        match self {
            Poller::Lease(l) => l.id(),
            Poller::Alone { id, .. } => *id,
        }
    }

    fn is_leader(&self) -> bool {
        match self {
            Poller::Lease(l) => l.is_leader(),
            Poller::Alone { started, .. } => *started,
        }
    }

    fn tick(&mut self, host: &mut impl Host) -> Transition {
        match self {
            Poller::Lease(l) => l.tick(host),
            Poller::Alone { started: true, .. } => Transition::None,
            Poller::Alone { started, .. } => {
                *started = true;
                Transition::Elected
            }
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Engine {
    /// An engine for `plan`; `me` is this VM's unique id (see [`crate::lease::allocate_id`]).
    pub fn new(plan: &Plan, me: u64) -> Result<Self, String> {
        let mut services = Vec::with_capacity(plan.services.len());
        for (i, p) in plan.services.iter().enumerate() {
            let source = p.new_source().map_err(|e| format!("services[{i}].{e}"))?;
            services.push(ServiceState {
                plan: p.clone(),
                source,
                next_due_ms: 0,
                poll: None,
                last_good: None,
                version: 0,
                errors_in_row: 0,
                last_refused: Vec::new(),
                last_clamped: Vec::new(),
            });
        }
        let poller = match plan.mode {
            Mode::Filter => Poller::Lease(Lease::new(&plan.lease_name, ms(plan.lease_ttl), me)),
            Mode::Service => Poller::Alone { id: me, started: false },
        };
        Ok(Self { services, poller, next_poll_id: 1 })
    }

    pub fn is_leader(&self) -> bool {
        self.poller.is_leader()
    }

    pub fn id(&self) -> u64 {
        self.poller.id()
    }

    /// Name of service `i`.
    pub fn service_name(&self, i: usize) -> Option<&str> {
        self.services.get(i).map(|s| s.plan.name.as_str())
    }

    /// Where service `i`'s requests go.
    pub fn upstream(&self, i: usize) -> Option<&crate::config::Upstream> {
        self.services.get(i).and_then(|s| s.plan.upstream.as_ref())
    }

    /// The periodic step: election (a service is the poller from its first tick), deadlines, polls
    /// that are due.
    pub fn tick(&mut self, host: &mut impl Host) -> Vec<Outgoing> {
        let now = host.now_ms();
        match self.poller.tick(host) {
            Transition::Elected => {
                let why = match self.poller {
                    Poller::Lease(_) => "",
                    Poller::Alone { .. } => " (a singleton service: no election)",
                };
                host.log(
                    Level::Info,
                    &format!("meshwasm discovery: VM {} is now the poller{why}", self.poller.id()),
                );
                for (i, s) in self.services.iter_mut().enumerate() {
                    // Continue from what the previous poller published: versions keep growing and
                    // registry trouble right after a takeover still cannot empty a service.
                    if let Some(set) = read_published(host, &s.plan.name) {
                        s.version = set.version;
                        s.last_good = Some(rescreen(host, i, s, set.endpoints));
                    }
                    s.next_due_ms = now;
                    s.errors_in_row = 0;
                }
            }
            Transition::Lost => {
                host.log(
                    Level::Info,
                    &format!("meshwasm discovery: VM {} is no longer the poller", self.poller.id()),
                );
                for s in &mut self.services {
                    if s.poll.take().is_some() {
                        s.source.abandon();
                    }
                }
            }
            Transition::None => {}
        }
        if !self.poller.is_leader() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in 0..self.services.len() {
            if let Some(p) = &self.services[i].poll {
                if now >= p.deadline_ms {
                    self.services[i].poll = None;
                    self.services[i].source.abandon();
                    let err = SourceError::Transport("no reply before the deadline".into());
                    self.finish(host, i, Err(err));
                }
                continue;
            }
            if now >= self.services[i].next_due_ms {
                self.start(host, i, &mut out);
            }
        }
        out
    }

    fn start(&mut self, host: &mut impl Host, i: usize, out: &mut Vec<Outgoing>) {
        host.count(i, Counter::Polls);
        let now = host.now_ms();
        let s = &mut self.services[i];
        match s.source.begin() {
            Err(outcome) => self.finish(host, i, Ok(outcome)),
            Ok(requests) => {
                let id = self.next_poll_id;
                self.next_poll_id += 1;
                let longest = requests.iter().map(|(_, r)| r.timeout).max().unwrap_or_default();
                s.poll = Some(InFlight {
                    id,
                    deadline_ms: now + ms(longest + DEADLINE_GRACE),
                    outstanding: requests.iter().map(|(t, _)| *t).collect(),
                });
                out.extend(requests.into_iter().map(|(tag, request)| Outgoing {
                    service: i,
                    poll: id,
                    tag,
                    request,
                }));
            }
        }
    }

    /// A reply (or a failure to get one) for an [`Outgoing`]. Stale replies are ignored.
    pub fn on_reply(
        &mut self,
        host: &mut impl Host,
        service: usize,
        poll: u64,
        tag: u32,
        reply: Reply,
    ) -> Vec<Outgoing> {
        let now = host.now_ms();
        let Some(s) = self.services.get_mut(service) else { return Vec::new() };
        let Some(p) = s.poll.as_mut().filter(|p| p.id == poll) else { return Vec::new() };
        if !p.outstanding.remove(&tag) {
            return Vec::new();
        }
        match s.source.on_reply(tag, reply) {
            Progress::Waiting => Vec::new(),
            Progress::More(more) => {
                let Some(p) = &mut s.poll else { return Vec::new() };
                let longest = more.iter().map(|(_, r)| r.timeout).max().unwrap_or_default();
                p.deadline_ms = p.deadline_ms.max(now + ms(longest + DEADLINE_GRACE));
                p.outstanding.extend(more.iter().map(|(t, _)| *t));
                more.into_iter().map(|(tag, request)| Outgoing { service, poll, tag, request }).collect()
            }
            Progress::Done(result) => {
                s.poll = None;
                self.finish(host, service, result);
                Vec::new()
            }
        }
    }

    /// Gives the lease up (the VM is going away; a service holds none).
    pub fn shutdown(&mut self, host: &mut impl Host) {
        if let Poller::Lease(l) = &mut self.poller {
            l.release(host);
        }
    }

    fn finish(&mut self, host: &mut impl Host, i: usize, result: Result<Outcome, SourceError>) {
        let now = host.now_ms();
        let s = &mut self.services[i];
        let name = s.plan.name.as_str();
        let kind = s.plan.kind;
        let kept = s.last_good.as_ref().map_or(0, Vec::len);
        let (endpoints, skipped, next) = match result {
            Err(e) => {
                s.errors_in_row = s.errors_in_row.saturating_add(1);
                host.count(i, Counter::Errors);
                host.log(
                    Level::Warn,
                    &format!("meshwasm discovery: service `{name}` ({kind}): poll failed, keeping the last {kept} endpoints: {e}"),
                );
                // Doubling from the smallest of 1 s, `refresh` and `max_retry` (so a poller that asks
                // every 250 ms retries after 250 ms, 500 ms, ...), at most 2^16 s and `max_retry`.
                let max_ms = ms(s.plan.max_retry).min(1_000 << 16);
                let initial_ms = ms(s.plan.refresh).clamp(ms(MIN_RETRY), 1_000).min(max_ms);
                let backoff = Backoff { initial_ms, max_ms };
                s.next_due_ms = now + backoff.delay_ms(s.errors_in_row);
                return;
            }
            Ok(Outcome::Unchanged { next }) => {
                s.errors_in_row = 0;
                s.next_due_ms = now + ms(next.unwrap_or(s.plan.refresh));
                return;
            }
            Ok(Outcome::Endpoints { endpoints, skipped, next }) => (endpoints, skipped, next),
        };
        s.errors_in_row = 0;
        s.next_due_ms = now + ms(next.unwrap_or(s.plan.refresh));
        // Every source's answer passes the address policy here, before anything is published.
        let screened = s.plan.policy.screen(endpoints);
        report_screening(
            host,
            i,
            &format!("service `{name}` ({kind})"),
            &screened,
            &mut s.last_refused,
            &mut s.last_clamped,
        );
        let refused = screened.refused.len();
        let endpoints = screened.endpoints;
        if endpoints.is_empty() && !s.plan.allow_empty {
            if s.last_good.as_ref().is_none_or(|l| !l.is_empty()) {
                host.count(i, Counter::EmptyRejected);
                let what =
                    if refused > 0 { "no endpoints the address policy accepts" } else { "no endpoints" };
                host.log(
                    Level::Warn,
                    &format!(
                        "meshwasm discovery: service `{name}` ({kind}): registry answered {what}; keeping the \
                         last {kept} (set allow_empty to publish empty answers)"
                    ),
                );
            }
            return;
        }
        if s.last_good.as_deref() == Some(&endpoints[..]) {
            return;
        }
        match publish(host, name, &endpoints) {
            Ok(Published::Updated { version, notified }) => {
                host.count(i, Counter::Updates);
                host.endpoints_gauge(i, endpoints.len() as u64);
                let note = if skipped > 0 {
                    format!(", {skipped} unusable entries left out")
                } else {
                    String::new()
                };
                host.log(
                    Level::Info,
                    &format!(
                        "meshwasm discovery: service `{name}` ({kind}): published {} endpoints, version {version}, \
                         {notified} subscribers notified{note}",
                        endpoints.len()
                    ),
                );
                s.version = version;
                s.last_good = Some(endpoints);
            }
            Ok(Published::Unchanged { version }) => {
                host.endpoints_gauge(i, endpoints.len() as u64);
                s.version = version;
                s.last_good = Some(endpoints);
            }
            Err(e) => {
                host.count(i, Counter::Errors);
                host.log(Level::Error, &format!("meshwasm discovery: service `{name}`: cannot publish: {e}"));
                // Try again soon: the answer was good. The source's cursor already moved past it, so
                // reset it, or the next poll would say "unchanged" and the set would stay unpublished.
                s.source.invalidate();
                s.next_due_ms = now + 1_000;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use base64::Engine as _;
    use meshwasm_endpoints::{EndpointSet, set_key};

    use super::*;
    use crate::host::fake::{FakeHost, Proxy};

    const CONFIG: &str = r#"{"tick":"100ms","lease":{"ttl":"1s"},"services":[
        {"name":"api","refresh":"2s","timeout":"1s","source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}},
        {"name":"web","source":{"static":{"endpoints":[{"address":"10.9.0.1:80"},{"address":"10.9.0.2:80","weight":3}]}}},
        {"name":"db","allow_empty":true,"source":{"consul":{"cluster":"consul","wait":"10s"}}}]}"#;

    struct Vm {
        host: FakeHost,
        engine: Engine,
    }

    fn proxy() -> Rc<RefCell<Proxy>> {
        Rc::new(RefCell::new(Proxy { now_ms: 10_000, ..Default::default() }))
    }

    fn vm(proxy: &Rc<RefCell<Proxy>>) -> Vm {
        let mut host = FakeHost::new(proxy.clone());
        let plan = Plan::from_json(CONFIG.as_bytes()).unwrap();
        let id = crate::lease::allocate_id(&mut host);
        Vm { engine: Engine::new(&plan, id).unwrap(), host }
    }

    fn advance(p: &Rc<RefCell<Proxy>>, ms: u64) {
        p.borrow_mut().now_ms += ms;
    }

    /// Ticks until service `service` sends a request (at most 200 s).
    fn next_request(p: &Rc<RefCell<Proxy>>, vm: &mut Vm, service: usize) -> Outgoing {
        for _ in 0..2_000 {
            if let Some(o) = run(p, vm, 100).into_iter().find(|o| o.service == service) {
                return o;
            }
        }
        panic!("no request for service {service}");
    }

    /// Lets `ms` pass in 100 ms ticks (as the host would), collecting the requests sent.
    fn run(p: &Rc<RefCell<Proxy>>, vm: &mut Vm, ms: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for _ in 0..ms / 100 {
            advance(p, 100);
            out.extend(vm.engine.tick(&mut vm.host));
        }
        out
    }

    fn etcd_reply(rev: u32, addrs: &[&str]) -> Reply {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kvs: Vec<_> = addrs
            .iter()
            .map(|a| serde_json::json!({"key": b64(&format!("/services/api/{a}")), "value": b64(a)}))
            .collect();
        Reply::ok(
            200,
            serde_json::to_vec(&serde_json::json!({"header": {"revision": rev.to_string()}, "kvs": kvs}))
                .unwrap(),
        )
    }

    fn consul_reply(index: u64, addrs: &[&str]) -> Reply {
        let entries: Vec<_> = addrs
            .iter()
            .map(|a| {
                let (ip, port) = a.split_once(':').unwrap();
                serde_json::json!({"Node": {"Address": ip}, "Service": {"Address": "", "Port": port.parse::<u16>().unwrap()}, "Checks": []})
            })
            .collect();
        Reply::Response {
            status: 200,
            headers: vec![("x-consul-index".into(), index.to_string())],
            body: serde_json::to_vec(&entries).unwrap(),
        }
    }

    fn published(vm: &Vm, service: &str) -> Option<EndpointSet> {
        vm.host.shared_get(&set_key(service)).map(|(b, _)| EndpointSet::decode(&b).unwrap())
    }

    fn addrs(set: &EndpointSet) -> Vec<String> {
        set.endpoints.iter().map(|e| e.address.to_string()).collect()
    }

    /// Elects `vm` (two ticks) and returns the requests of its first polls.
    fn elect(p: &Rc<RefCell<Proxy>>, vm: &mut Vm) -> Vec<Outgoing> {
        assert!(vm.engine.tick(&mut vm.host).is_empty());
        advance(p, 100);
        vm.engine.tick(&mut vm.host)
    }

    #[test]
    fn failed_publish_resets_the_cursor_so_the_set_is_published_later() {
        let p = proxy();
        let mut vm = vm(&p);
        let out = elect(&p, &mut vm);
        // Shared data refuses the set (e.g. full): the answer is good but cannot be published.
        p.borrow().shared.refuse_writes_under(Some(set_key("api")));
        let etcd = out.iter().find(|o| o.service == 0).unwrap().clone();
        vm.engine.on_reply(&mut vm.host, 0, etcd.poll, 0, etcd_reply(5, &["10.0.0.1:80"]));
        assert!(published(&vm, "api").is_none());
        assert!(vm.host.logged("cannot publish"));
        assert_eq!(vm.host.counter(0, Counter::Errors), 1);
        // Shared data accepts writes again; the registry has not changed (same revision 5). Without the
        // reset the next poll would say "unchanged" and the set would never be published.
        p.borrow().shared.refuse_writes_under(None);
        let o = next_request(&p, &mut vm, 0);
        vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, etcd_reply(5, &["10.0.0.1:80"]));
        let set = published(&vm, "api").expect("published after the failure");
        assert_eq!((set.version, addrs(&set)), (1, vec!["10.0.0.1:80".to_owned()]));
        assert_eq!(vm.host.counter(0, Counter::Updates), 1);
    }

    #[test]
    fn polls_publishes_and_keeps_last_good_set() {
        let p = proxy();
        let mut vm = vm(&p);
        let out = elect(&p, &mut vm);
        assert!(vm.engine.is_leader());
        // etcd and consul requests; the static list is published at once.
        assert_eq!(out.iter().map(|o| o.service).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(addrs(&published(&vm, "web").unwrap()), ["10.9.0.1:80", "10.9.0.2:80"]);
        let etcd = &out[0];
        assert_eq!(etcd.request.path, "/v3/kv/range");
        vm.engine.on_reply(&mut vm.host, 0, etcd.poll, 0, etcd_reply(5, &["10.0.0.2:80", "10.0.0.1:80"]));
        let set = published(&vm, "api").unwrap();
        assert_eq!((set.version, addrs(&set)), (1, vec!["10.0.0.1:80".to_owned(), "10.0.0.2:80".to_owned()]));
        assert_eq!(vm.host.counter(0, Counter::Updates), 1);

        // Not due before `refresh` (2 s).
        assert!(run(&p, &mut vm, 1_800).iter().all(|o| o.service != 0));
        // Due: same revision → unchanged, no write.
        let out = run(&p, &mut vm, 300);
        let o = out.iter().find(|o| o.service == 0).unwrap().clone();
        let writes = p.borrow().shared.writes();
        vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, etcd_reply(5, &["10.0.0.9:80"]));
        assert_eq!(p.borrow().shared.writes(), writes, "same revision is not even parsed");

        // Errors, garbage, timeouts and an empty answer (allow_empty false) never empty the service.
        for bad in [
            Reply::Failed("connection refused".into()),
            Reply::ok(200, "<html>"),
            Reply::ok(500, ""),
            etcd_reply(6, &[]),
        ] {
            let o = next_request(&p, &mut vm, 0);
            vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, bad);
            assert_eq!(published(&vm, "api").unwrap().version, 1);
        }
        let errors = vm.host.counter(0, Counter::Errors);
        assert_eq!(errors, 3);
        // No reply at all: the deadline (timeout 1 s + grace 2 s) fails the poll.
        let out = run(&p, &mut vm, 40_000);
        assert!(out.iter().any(|o| o.service == 0));
        assert!(vm.host.counter(0, Counter::Errors) > errors);
        assert_eq!(vm.host.counter(0, Counter::EmptyRejected), 1);
        assert!(vm.host.logged("keeping the last 2 endpoints"));
        assert_eq!(addrs(&published(&vm, "api").unwrap()).len(), 2);

        // A real change publishes version 2.
        let o = next_request(&p, &mut vm, 0);
        vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, etcd_reply(9, &["10.0.0.3:80"]));
        let set = published(&vm, "api").unwrap();
        assert_eq!((set.version, addrs(&set)), (2, vec!["10.0.0.3:80".to_owned()]));
        assert_eq!(vm.host.counter(0, Counter::Updates), 2);
    }

    #[test]
    fn error_backoff_doubles_up_to_max_retry() {
        let p = proxy();
        let mut vm = vm(&p);
        let mut o = elect(&p, &mut vm).into_iter().find(|o| o.service == 0).unwrap();
        let mut gaps = Vec::new();
        let mut last = p.borrow().now_ms;
        for _ in 0..7 {
            vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, Reply::Failed("refused".into()));
            o = next_request(&p, &mut vm, 0);
            let now = p.borrow().now_ms;
            gaps.push((now - last) / 100 * 100);
            last = now;
        }
        assert_eq!(gaps, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
    }

    /// Gaps between the polls of a service failing every time (rounded down to the 100 ms tick).
    fn failure_gaps(config: &str, n: usize) -> Vec<u64> {
        let p = proxy();
        let mut host = FakeHost::new(p.clone());
        let plan = Plan::from_json(config.as_bytes()).unwrap();
        let id = crate::lease::allocate_id(&mut host);
        let mut vm = Vm { engine: Engine::new(&plan, id).unwrap(), host };
        let mut o = next_request(&p, &mut vm, 0);
        let mut gaps = Vec::new();
        let mut last = p.borrow().now_ms;
        for _ in 0..n {
            vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, Reply::Failed("refused".into()));
            o = next_request(&p, &mut vm, 0);
            let now = p.borrow().now_ms;
            gaps.push((now - last) / 100 * 100);
            last = now;
        }
        gaps
    }

    #[test]
    fn fast_pollers_retry_soon_after_an_error() {
        // A poller that asks every 200 ms backs off from 200 ms, not 1 s (an etcd leader election
        // costs two failed polls: 200 + 400 ms instead of 1 s + 2 s).
        let fast = r#"{"tick":"100ms","services":[{"name":"api","refresh":"200ms","max_retry":"1s",
            "source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}}]}"#;
        assert_eq!(failure_gaps(fast, 5), [200, 400, 800, 1_000, 1_000]);
        // `max_retry` below 100 ms is raised to 100 ms: a failing registry is asked at most 10×/s.
        let floor = r#"{"tick":"100ms","services":[{"name":"api","refresh":"5s","max_retry":"10ms",
            "source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}}]}"#;
        assert_eq!(Plan::from_json(floor.as_bytes()).unwrap().services[0].max_retry, MIN_RETRY);
        assert_eq!(failure_gaps(floor, 3), [100, 100, 100]);
    }

    #[test]
    fn a_service_polls_from_its_first_tick_without_a_lease() {
        let config = r#"{"mode":"service","tick":"100ms","services":[
            {"name":"web","source":{"static":{"endpoints":[{"address":"10.9.0.1:80"}]}}},
            {"name":"api","refresh":"1s","source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}}]}"#;
        let p = proxy();
        // A set published earlier (by a filter-mode poller, or this service before a reload).
        let old = EndpointSet { version: 4, endpoints: vec![Endpoint::new("10.9.0.7:80".parse().unwrap())] };
        FakeHost::new(p.clone()).shared_set(&set_key("web"), &old.encode(), None).unwrap();
        let mut host = FakeHost::new(p.clone());
        let plan = Plan::from_json(config.as_bytes()).unwrap();
        let id = crate::lease::allocate_id(&mut host);
        let mut vm = Vm { engine: Engine::new(&plan, id).unwrap(), host };
        assert!(!vm.engine.is_leader());
        let out = run(&p, &mut vm, 100);
        assert!(vm.engine.is_leader(), "the first tick makes a service the poller");
        assert!(out.iter().any(|o| o.service == 1), "and its first tick polls");
        assert!(vm.host.logged("no election"));
        // The static set is published at once, continuing the versions found.
        let set = published(&vm, "web").unwrap();
        assert_eq!((set.version, addrs(&set)), (5, vec!["10.9.0.1:80".to_owned()]));
        // No lease key was ever written, nor is one released at shutdown.
        let lease_key = format!("{}default", crate::lease::LEASE_KEY_PREFIX);
        run(&p, &mut vm, 5_000);
        assert_eq!(p.borrow().shared.value(&lease_key), None);
        vm.engine.shutdown(&mut vm.host);
        assert_eq!(p.borrow().shared.value(&lease_key), None);
        assert!(vm.engine.is_leader());
    }

    #[test]
    fn consul_blocking_queries_and_allowed_empty() {
        let p = proxy();
        let mut vm = vm(&p);
        let out = elect(&p, &mut vm);
        let c = out.iter().find(|o| o.service == 2).unwrap().clone();
        assert!(!c.request.path.contains("index="));
        vm.engine.on_reply(&mut vm.host, 2, c.poll, 0, consul_reply(10, &["10.1.0.1:8000"]));
        assert_eq!(published(&vm, "db").unwrap().version, 1);
        // Re-polls on the next tick with the index, and a call timeout above the wait.
        advance(&p, 100);
        let c = vm.engine.tick(&mut vm.host).into_iter().find(|o| o.service == 2).unwrap();
        assert!(c.request.path.contains("index=10&wait=10000ms"));
        assert!(c.request.timeout > Duration::from_secs(10));
        // The blocking query is held for 9 s: no deadline failure, no second request.
        for _ in 0..90 {
            advance(&p, 100);
            assert!(vm.engine.tick(&mut vm.host).iter().all(|o| o.service != 2));
        }
        assert_eq!(vm.host.counter(2, Counter::Errors), 0);
        // allow_empty: an empty answer is published.
        vm.engine.on_reply(&mut vm.host, 2, c.poll, 0, consul_reply(11, &[]));
        let set = published(&vm, "db").unwrap();
        assert_eq!((set.version, set.endpoints.len()), (2, 0));
    }

    #[test]
    fn one_poller_among_vms_and_takeover_keeps_sets() {
        let p = proxy();
        let mut vms: Vec<Vm> = (0..3).map(|_| vm(&p)).collect();
        let mut requests = 0;
        for _ in 0..10 {
            for vm in &mut vms {
                let out = vm.engine.tick(&mut vm.host);
                requests += out.len();
                for o in out.into_iter().filter(|o| o.service == 0) {
                    vm.engine.on_reply(&mut vm.host, 0, o.poll, o.tag, etcd_reply(3, &["10.0.0.1:80"]));
                }
            }
            advance(&p, 100);
        }
        assert_eq!(vms.iter().filter(|v| v.engine.is_leader()).count(), 1);
        assert_eq!(requests, 2, "one etcd and one consul poll in total, not per VM");
        let leader = vms.iter().position(|v| v.engine.is_leader()).unwrap();
        // The leader goes away; a new one takes over, keeps the published set through errors
        // and continues the version sequence.
        let gone = vms.remove(leader);
        drop(gone);
        let mut new_leader = None;
        for _ in 0..30 {
            advance(&p, 100);
            for (i, vm) in vms.iter_mut().enumerate() {
                for o in vm.engine.tick(&mut vm.host).into_iter().filter(|o| o.service == 0) {
                    new_leader = Some(i);
                    vm.engine.on_reply(&mut vm.host, 0, o.poll, o.tag, Reply::Failed("etcd down".into()));
                }
            }
        }
        let n = new_leader.expect("takeover");
        assert_eq!(addrs(&published(&vms[n], "api").unwrap()), ["10.0.0.1:80"]);
        // Only the new leader ticks from here (the other would just stand by).
        let vm = &mut vms[n];
        let o = run(&p, vm, 3_000).into_iter().find(|o| o.service == 0).unwrap();
        vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, etcd_reply(4, &["10.0.0.1:80", "10.0.0.5:80"]));
        assert_eq!(published(vm, "api").unwrap().version, 2);
    }

    #[test]
    fn stale_and_unknown_replies_are_ignored() {
        let p = proxy();
        let mut vm = vm(&p);
        let out = elect(&p, &mut vm);
        let o = &out[0];
        assert!(
            vm.engine.on_reply(&mut vm.host, 0, o.poll + 100, 0, etcd_reply(1, &["10.0.0.1:1"])).is_empty()
        );
        assert!(vm.engine.on_reply(&mut vm.host, 0, o.poll, 7, etcd_reply(1, &["10.0.0.1:1"])).is_empty());
        assert!(vm.engine.on_reply(&mut vm.host, 99, o.poll, 0, etcd_reply(1, &["10.0.0.1:1"])).is_empty());
        assert!(published(&vm, "api").is_none());
    }

    /// An etcd answer at `rev` whose values are given as written (bare `ip:port` or endpoint JSON).
    fn etcd_values(rev: u32, values: &[&str]) -> Reply {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kvs: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| serde_json::json!({"key": b64(&format!("/services/api/{i}")), "value": b64(v)}))
            .collect();
        let body = serde_json::json!({"header": {"revision": rev.to_string()}, "kvs": kvs});
        Reply::ok(200, serde_json::to_vec(&body).unwrap())
    }

    fn warnings(vm: &Vm, needle: &str) -> usize {
        vm.host.logs.borrow().iter().filter(|(l, m)| *l == Level::Warn && m.contains(needle)).count()
    }

    #[test]
    fn registry_answers_pass_the_address_policy_before_publishing() {
        let p = proxy();
        let mut vm = vm(&p);
        let out = elect(&p, &mut vm);
        let o = out.iter().find(|o| o.service == 0).unwrap().clone();
        let answer = [
            "169.254.169.254:80",
            "0.0.0.0:8080",
            "127.0.0.1:9901",
            "10.0.0.1:80",
            "[::ffff:127.0.0.1]:9901",
            "10.0.0.2:0",
            "224.0.0.1:80",
            r#"{"address":"10.0.0.3:80","weight":4294967295}"#,
        ];
        vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, etcd_values(5, &answer));
        let set = published(&vm, "api").unwrap();
        assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.3:80"]);
        assert_eq!(set.endpoints[1].weight, meshwasm_endpoints::MAX_WEIGHT);
        assert_eq!(vm.host.counter(0, Counter::Refused), 6);
        assert_eq!(vm.host.counter(0, Counter::WeightClamped), 1);
        assert_eq!(warnings(&vm, "refused 6 endpoint(s) by the address policy"), 1);
        assert!(vm.host.logged("169.254.169.254:80 (link-local address)"));
        assert!(vm.host.logged("127.0.0.1:9901 (loopback address (allow_loopback is false))"));
        assert!(
            vm.host.logged("clamped the weight of 1 endpoint(s) to 1000000: 10.0.0.3:80 (was 4294967295)")
        );

        // The same refusals in the next answer are counted again but not warned about again.
        let o = next_request(&p, &mut vm, 0);
        vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, etcd_values(6, &answer));
        assert_eq!(vm.host.counter(0, Counter::Refused), 12);
        assert_eq!(warnings(&vm, "refused 6 endpoint(s)"), 1);
        assert_eq!(warnings(&vm, "clamped the weight"), 1);

        // An answer with nothing acceptable is an empty answer: the last set stays.
        let o = next_request(&p, &mut vm, 0);
        vm.engine.on_reply(
            &mut vm.host,
            0,
            o.poll,
            0,
            etcd_values(7, &["127.0.0.1:9901", "169.254.169.254:80"]),
        );
        assert_eq!(addrs(&published(&vm, "api").unwrap()), ["10.0.0.1:80", "10.0.0.3:80"]);
        assert_eq!(vm.host.counter(0, Counter::EmptyRejected), 1);
        assert!(vm.host.logged("registry answered no endpoints the address policy accepts"));
    }

    #[test]
    fn loopback_opt_in_and_cidr_lists_apply_to_registry_answers() {
        let p = proxy();
        let config = r#"{"tick":"100ms","lease":{"ttl":"1s"},"services":[
            {"name":"api","allow_loopback":true,"allow_cidrs":["127.0.0.0/8","10.1.0.0/16"],"deny_cidrs":["127.0.0.1/32"],
             "source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}}]}"#;
        let mut host = FakeHost::new(p.clone());
        let id = crate::lease::allocate_id(&mut host);
        let engine = Engine::new(&Plan::from_json(config.as_bytes()).unwrap(), id).unwrap();
        let mut vm = Vm { host, engine };
        let o = elect(&p, &mut vm).remove(0);
        let answer = ["127.0.0.2:8080", "127.0.0.1:9901", "10.1.2.3:80", "10.2.0.1:80", "169.254.169.254:80"];
        vm.engine.on_reply(&mut vm.host, 0, o.poll, 0, etcd_values(1, &answer));
        assert_eq!(addrs(&published(&vm, "api").unwrap()), ["10.1.2.3:80", "127.0.0.2:8080"]);
        assert_eq!(vm.host.counter(0, Counter::Refused), 3);
        assert!(vm.host.logged("127.0.0.1:9901 (in deny_cidrs 127.0.0.1/32)"));
        assert!(vm.host.logged("10.2.0.1:80 (not in allow_cidrs)"));
    }

    #[test]
    fn a_set_published_under_a_looser_configuration_is_screened_on_election() {
        let p = proxy();
        let mut old = EndpointSet { version: 4, endpoints: vec![] };
        for a in ["10.0.0.1:80", "127.0.0.1:9901", "169.254.169.254:80"] {
            old.endpoints.push(Endpoint::new(a.parse().unwrap()));
        }
        old.endpoints.sort_by_key(|e| e.address);
        p.borrow().shared.put(&set_key("api"), &old.encode());
        let mut v = vm(&p);
        elect(&p, &mut v);
        // Taken back at election, before any registry answer.
        let set = published(&v, "api").unwrap();
        assert_eq!((set.version, addrs(&set)), (5, vec!["10.0.0.1:80".to_owned()]));
        assert_eq!(v.host.counter(0, Counter::Refused), 2);
        assert!(v.host.logged("service `api` (published before this configuration): refused 2 endpoint(s)"));

        // Everything refused: the service is emptied rather than left pointing at them.
        let p = proxy();
        let bad =
            EndpointSet { version: 2, endpoints: vec![Endpoint::new("127.0.0.1:9901".parse().unwrap())] };
        p.borrow().shared.put(&set_key("api"), &bad.encode());
        let mut v = vm(&p);
        elect(&p, &mut v);
        let set = published(&v, "api").unwrap();
        assert_eq!((set.version, set.endpoints.len()), (3, 0));

        // An acceptable inherited set is kept as it is: no write.
        let p = proxy();
        let good = EndpointSet { version: 7, endpoints: vec![Endpoint::new("10.0.0.1:80".parse().unwrap())] };
        p.borrow().shared.put(&set_key("api"), &good.encode());
        let mut v = vm(&p);
        elect(&p, &mut v);
        assert_eq!(published(&v, "api").unwrap(), good);
        assert_eq!(v.host.counter(0, Counter::Refused), 0);
    }
}
