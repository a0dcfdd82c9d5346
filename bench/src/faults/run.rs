//! The faults, each under a fixed-rate load through real Envoy, with the bound it must meet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meshwasm_tests::envoy::{Cluster, Envoy};
use meshwasm_tests::etcd::{Etcd, EtcdCluster};
use meshwasm_tests::oidc::{BASIC_CLIENT, OidcOptions, OidcProvider, RS256_RESOURCE};
use serde_json::json;

use super::load::{self, Load, LoadSpec, Record};
use super::mesh::{self, ETCD_PREFIX, JwtSpec, LISTENER, MeshSpec, ProcBackend};
use super::relay::Relay;

/// Settings shared by every fault.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests per second of the load.
    pub rate: u32,
    /// Load-generator connections.
    pub connections: usize,
    /// How long the IdP and the registry are down ((b), (c)); the figure is 30 s.
    pub outage: Duration,
    /// Envoy worker threads.
    pub workers: u32,
}

/// One checked bound.
#[derive(Debug, Clone)]
pub struct Check {
    pub bound: String,
    pub measured: String,
    pub pass: bool,
}

/// What one fault run measured.
#[derive(Debug, Clone)]
pub struct FaultRun {
    pub id: &'static str,
    pub title: &'static str,
    pub what: String,
    pub seconds: u64,
    pub sent: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub per_second: Vec<(u64, u64, u64)>,
    /// (seconds since the load started, what happened).
    pub events: Vec<(f64, String)>,
    pub figures: Vec<(String, String)>,
    pub checks: Vec<Check>,
    pub load_before: String,
    pub load_after: String,
}

impl FaultRun {
    fn new(id: &'static str, title: &'static str, what: String) -> Self {
        Self {
            id,
            title,
            what,
            seconds: 0,
            sent: 0,
            statuses: BTreeMap::new(),
            per_second: Vec::new(),
            events: Vec::new(),
            figures: Vec::new(),
            checks: Vec::new(),
            load_before: meshwasm_bench::machine::load_average(),
            load_after: String::new(),
        }
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }

    pub fn errors(&self) -> usize {
        self.statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum()
    }

    fn event(&mut self, load: &Load, what: impl Into<String>) -> u64 {
        let t = load.now_us();
        let what = what.into();
        eprintln!("  [{:6.2} s] {what}", t as f64 / 1e6);
        self.events.push((t as f64 / 1e6, what));
        t
    }

    fn figure(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.figures.push((name.into(), value.into()));
    }

    fn check(&mut self, bound: impl Into<String>, measured: impl Into<String>, pass: bool) {
        let c = Check { bound: bound.into(), measured: measured.into(), pass };
        eprintln!("  {} {} — measured {}", if c.pass { "PASS" } else { "FAIL" }, c.bound, c.measured);
        self.checks.push(c);
    }

    fn finish(&mut self, records: &[Record], seconds: u64) {
        self.seconds = seconds;
        self.sent = records.len();
        for r in records {
            *self.statuses.entry(r.status).or_default() += 1;
        }
        self.per_second = load::per_second(records, seconds);
        self.load_after = meshwasm_bench::machine::load_average();
    }
}

fn spec(s: &Settings, envoy: &Envoy, seconds: u64) -> LoadSpec {
    LoadSpec {
        target: envoy.listener_addr(LISTENER),
        path: "/".into(),
        rate: s.rate,
        duration: Duration::from_secs(seconds),
        workers: s.connections,
        timeout: Duration::from_secs(10),
    }
}

/// Sleeps until `t` seconds after the load started.
fn until(load: &Load, t: f64) {
    let now = load.elapsed().as_secs_f64();
    if t > now {
        std::thread::sleep(Duration::from_secs_f64(t - now));
    }
}

fn secs(us: u64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}

/// First due time ≥ `after_us` of a 200 answered by `instance`.
fn first_from(records: &[Record], instance: &str, after_us: u64) -> Option<u64> {
    records
        .iter()
        .filter(|r| r.due_us >= after_us && r.ok() && r.instance.as_deref() == Some(instance))
        .map(|r| r.due_us)
        .min()
}

fn static_source(backends: &[&ProcBackend]) -> serde_json::Value {
    let eps: Vec<_> = backends.iter().map(|b| json!({"address": b.addr.to_string()})).collect();
    json!({"static": {"endpoints": eps}})
}

fn errors_in(records: &[Record], from_us: u64, to_us: u64) -> Vec<&Record> {
    records.iter().filter(|r| r.due_us >= from_us && r.due_us < to_us && !r.ok()).collect()
}

/// (a) One backend killed (SIGKILL), then restarted on its port.
pub fn backend_kill(s: &Settings) -> Result<FaultRun> {
    const THRESHOLD: u64 = 5;
    const EJECTION_S: u64 = 10;
    const DOWN_S: u64 = 5;
    let mut run = FaultRun::new(
        "a-backend-kill",
        "(a) one backend killed, then restarted",
        format!(
            "Three backends A B C behind discovery (static source) + balancer (round robin, outlier detection \
             `consecutive_failures: {THRESHOLD}`, `base_ejection_time: {EJECTION_S}s`), {} Envoy workers. At 5 s B is \
             killed with SIGKILL (its open connections die with it); {DOWN_S} s later a new B process listens on the \
             same port.",
            s.workers
        ),
    );
    let backends = [ProcBackend::start("A")?, ProcBackend::start("B")?, ProcBackend::start("C")?];
    let refs: Vec<&ProcBackend> = backends.iter().collect();
    let envoy = MeshSpec {
        jwt: None,
        source: static_source(&refs),
        service: json!({}),
        outlier: json!({"consecutive_failures": THRESHOLD, "base_ejection_time": format!("{EJECTION_S}s")}),
        clusters: vec![],
        concurrency: s.workers,
    }
    .start()?;
    mesh::wait_serving(&envoy, None, 3)?;
    let seconds = 5 + DOWN_S + EJECTION_S + 5;
    let load = Load::start(spec(s, &envoy, seconds), None);
    until(&load, 5.0);
    let t_kill = run.event(&load, "B killed (SIGKILL)");
    backends[1].kill();
    until(&load, (5 + DOWN_S) as f64);
    backends[1].restart()?;
    let t_back = run.event(&load, "B restarted on its port");
    let records = load.finish();
    run.finish(&records, seconds);

    let errors = errors_in(&records, 0, u64::MAX);
    let in_flight = load::in_flight_at(&records, t_kill);
    let bound = u64::from(s.workers) * THRESHOLD + in_flight as u64;
    let last_error = errors.iter().map(|r| r.due_us).max();
    let ejections = mesh::stat_sum(&envoy, "meshwasm_balancer", ".ejections");
    run.figure("requests in flight when B died", in_flight.to_string());
    run.figure("balancer ejections (all workers)", ejections.to_string());
    if let Some(l) = last_error {
        run.figure("time to recover (kill → last failed request)", secs(l.saturating_sub(t_kill)));
    }
    run.check(
        format!(
            "errors ≤ workers × consecutive_failures + in flight = {} × {THRESHOLD} + {in_flight} = {bound}",
            s.workers
        ),
        format!("{} errors ({:?})", errors.len(), status_counts(&errors)),
        errors.len() as u64 <= bound,
    );
    let late = errors_in(&records, t_kill + 1_000_000, u64::MAX).len();
    run.check("then zero: no error from 1 s after the kill to the end", format!("{late} errors"), late == 0);
    let first_b = first_from(&records, "B", t_back);
    run.check(
        format!("B gets traffic again after its return (within the {EJECTION_S} s ejection + 1 s)"),
        match first_b {
            Some(t) => format!("first answer from B {} after its restart", secs(t - t_back)),
            None => "B got no request after its restart".into(),
        },
        first_b.is_some_and(|t| t - t_kill <= (EJECTION_S + 1) * 1_000_000),
    );
    Ok(run)
}

fn status_counts(records: &[&Record]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.status).or_default() += 1;
    }
    m
}

/// (c) The registry (real etcd) down, then back; then changes must reach traffic within 1 s.
pub fn registry_down(s: &Settings) -> Result<FaultRun> {
    let outage = s.outage.as_secs();
    let mut run = FaultRun::new(
        "c-registry-down",
        "(c) registry down, then changes after its return",
        format!(
            "Discovery polls real etcd (`refresh: 250ms`, `tick: 100ms`, `max_retry: 1s`) through an Envoy cluster; \
             backends A B C registered. At 5 s etcd is killed for {outage} s; after it is back (same data), D is \
             registered and then A removed."
        ),
    );
    let backends = [
        ProcBackend::start("A")?,
        ProcBackend::start("B")?,
        ProcBackend::start("C")?,
        ProcBackend::start("D")?,
    ];
    let etcd = Etcd::start()?;
    for b in &backends[..3] {
        etcd.put(&format!("{ETCD_PREFIX}{}", b.name), &b.entry())?;
    }
    let envoy = MeshSpec {
        jwt: None,
        source: json!({"etcd": {"cluster": "registry", "prefix": ETCD_PREFIX}}),
        service: mesh::fast_service(),
        outlier: json!({}),
        clusters: vec![Cluster::static_hosts("registry", &[etcd.addr()])],
        concurrency: s.workers,
    }
    .start()?;
    mesh::wait_serving(&envoy, None, 3)?;
    let seconds = 5 + outage + 12;
    let load = Load::start(spec(s, &envoy, seconds), None);
    until(&load, 5.0);
    let errors_before = mesh::stat_sum(&envoy, "meshwasm_discovery", ".errors");
    run.event(&load, "etcd killed");
    etcd.stop();
    until(&load, (5 + outage) as f64);
    etcd.restart()?;
    let t_back = run.event(&load, "etcd back (healthy)");
    let poll_errors = mesh::stat_sum(&envoy, "meshwasm_discovery", ".errors") - errors_before;
    etcd.put(&format!("{ETCD_PREFIX}D"), &backends[3].entry())?;
    let t_put = run.event(&load, "D registered");
    until(&load, load.elapsed().as_secs_f64() + 3.0);
    etcd.delete(&format!("{ETCD_PREFIX}A"))?;
    let t_del = run.event(&load, "A removed");
    let records = load.finish();
    run.finish(&records, seconds);

    run.figure("failed polls during the outage (discovery `errors`)", poll_errors.to_string());
    let errors = errors_in(&records, 0, u64::MAX);
    run.check(
        "zero errors (last set kept while etcd is down)",
        format!("{} errors", errors.len()),
        errors.is_empty(),
    );
    let d = first_from(&records, "D", t_put);
    run.check(
        "a registration after the return reaches traffic within 1 s",
        d.map_or("D never got traffic".into(), |t| {
            format!(
                "first request to D {} after its registration ({} after etcd was back)",
                secs(t - t_put),
                secs(t - t_back)
            )
        }),
        d.is_some_and(|t| t - t_put <= 1_000_000),
    );
    let last_a =
        records.iter().filter(|r| r.ok() && r.instance.as_deref() == Some("A")).map(|r| r.due_us).max();
    let gone = last_a.map(|t| t.saturating_sub(t_del));
    run.check(
        "a removal after the return reaches traffic within 1 s",
        gone.map_or("A got no traffic at all".into(), |g| {
            format!("last request to A {} after its removal", secs(g))
        }),
        gone.is_some_and(|g| g <= 1_000_000),
    );
    Ok(run)
}

/// Writes through the cluster, retrying while a leader is being elected; returns when it succeeded.
fn put_retrying(cluster: &EtcdCluster, key: &str, value: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cluster.put(key, value) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context("etcd write after the kill")),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// (f) A three-member etcd cluster: the leader killed under load, then a follower.
pub fn etcd_cluster(s: &Settings) -> Result<FaultRun> {
    let mut run = FaultRun::new(
        "f-etcd-cluster",
        "(f) real 3-member etcd cluster: leader killed, then a follower",
        "Three etcd members on loopback; discovery polls them (`refresh: 250ms`, `max_retry: 1s`) through one \
         Envoy cluster holding all three (round robin, active `/health` checks every 500 ms, outlier detection on \
         connect failures). Backends A B C registered. At 5 s the leader is killed (SIGKILL); as soon as the two \
         others have elected a new leader, E is registered. The old leader rejoins; then a follower is killed and \
         F registered."
            .into(),
    );
    let names = ["A", "B", "C", "E", "F"];
    let backends: Vec<ProcBackend> = names.iter().map(|n| ProcBackend::start(n)).collect::<Result<_>>()?;
    let cluster = EtcdCluster::start(3).context("starting a 3-member etcd cluster")?;
    for b in &backends[..3] {
        cluster.put(&format!("{ETCD_PREFIX}{}", b.name), &b.entry())?;
    }
    let envoy = MeshSpec {
        jwt: None,
        source: json!({"etcd": {"cluster": "registry", "prefix": ETCD_PREFIX}}),
        service: mesh::fast_service(),
        outlier: json!({}),
        clusters: vec![mesh::etcd_cluster("registry", &cluster.addrs())],
        concurrency: s.workers,
    }
    .start()?;
    mesh::wait_serving(&envoy, None, 3)?;
    let seconds = 32;
    let load = Load::start(spec(s, &envoy, seconds), None);
    until(&load, 5.0);
    let leader = cluster.leader().context("no etcd leader before the kill")?;
    let t_kill = run.event(&load, format!("leader (member {leader}) killed"));
    cluster.kill(leader);
    let elected = meshwasm_tests::process::wait_until(Duration::from_secs(15), || cluster.leader().is_some());
    let t_elect = run.event(&load, format!("new leader: member {:?}", cluster.leader()));
    anyhow::ensure!(elected, "no new etcd leader within 15 s");
    put_retrying(&cluster, &format!("{ETCD_PREFIX}E"), &backends[3].entry())?;
    let t_put_e = run.event(&load, "E registered");
    until(&load, 14.0);
    cluster.restart(leader)?;
    run.event(&load, format!("member {leader} restarted (rejoined)"));
    until(&load, 20.0);
    let follower = (0..3).find(|&i| Some(i) != cluster.leader()).context("no follower")?;
    let t_fkill = run.event(&load, format!("follower (member {follower}) killed"));
    cluster.kill(follower);
    put_retrying(&cluster, &format!("{ETCD_PREFIX}F"), &backends[4].entry())?;
    let t_put_f = run.event(&load, "F registered");
    until(&load, 27.0);
    cluster.restart(follower)?;
    run.event(&load, format!("member {follower} restarted"));
    let records = load.finish();
    run.finish(&records, seconds);

    run.figure("leader election (kill → new leader seen)", secs(t_elect - t_kill));
    run.figure("write accepted after the election", secs(t_put_e - t_elect));
    run.figure(
        "failed polls (discovery `errors`)",
        mesh::stat_sum(&envoy, "meshwasm_discovery", ".errors").to_string(),
    );
    let errors = errors_in(&records, 0, u64::MAX);
    run.check("zero failed client requests", format!("{} errors", errors.len()), errors.is_empty());
    let e = first_from(&records, "E", t_put_e);
    run.check(
        "after the leader's death: an update reaches traffic within 2 s of the new leader",
        e.map_or("E never got traffic".into(), |t| {
            format!(
                "first request to E {} after the election ({} after the write)",
                secs(t - t_elect),
                secs(t - t_put_e)
            )
        }),
        e.is_some_and(|t| t - t_elect <= 2_000_000),
    );
    let f = first_from(&records, "F", t_put_f);
    run.check(
        "after a follower's death: an update reaches traffic within 2 s",
        f.map_or("F never got traffic".into(), |t| {
            format!(
                "first request to F {} after the kill ({} after the write)",
                secs(t - t_fkill),
                secs(t - t_put_f)
            )
        }),
        f.is_some_and(|t| t - t_fkill <= 2_000_000),
    );
    Ok(run)
}

/// (b) The IdP (JWKS) unreachable, then a key rotation after its return.
pub fn idp_down(s: &Settings) -> Result<FaultRun> {
    const REFETCH_S: u64 = 5;
    let outage = s.outage.as_secs();
    let mut run = FaultRun::new(
        "b-idp-down",
        "(b) IdP/JWKS down, then a key rotation",
        format!(
            "jwt-auth finds its keys through OIDC discovery at the real OpenID Provider (`cache_duration: 10s`, \
             so background refreshes fall inside the outage; `unknown_kid_refetch_interval: {REFETCH_S}s`; \
             `cache_entries: 0`, so every request is verified with the cached keys). Envoy reaches the IdP through a \
             TCP relay; at 5 s the relay is cut (connections refused and reset) for {outage} s. 2 s after the \
             return the IdP rotates its signing keys and the load switches to tokens signed with the new key."
        ),
    );
    let backends = [ProcBackend::start("A")?, ProcBackend::start("B")?, ProcBackend::start("C")?];
    let refs: Vec<&ProcBackend> = backends.iter().collect();
    let idp = OidcProvider::start(OidcOptions::default()).context("starting the OpenID Provider")?;
    let relay = Relay::start(idp.addr())?;
    let envoy = MeshSpec {
        jwt: Some(JwtSpec {
            issuer: idp.issuer().to_owned(),
            audience: RS256_RESOURCE.to_owned(),
            remote_jwks: json!({"cache_duration": "10s", "unknown_kid_refetch_interval": format!("{REFETCH_S}s"), "timeout": "500ms"}),
            cache_entries: 0,
        }),
        source: static_source(&refs),
        service: json!({}),
        outlier: json!({}),
        clusters: vec![Cluster::static_hosts("idp", &[relay.addr()])],
        concurrency: s.workers,
    }
    .start()?;
    let token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE))?;
    mesh::wait_serving(&envoy, Some(&token), 3)?;
    let seconds = 5 + outage + 2 + REFETCH_S + 8;
    let load = Load::start(spec(s, &envoy, seconds), Some(token));
    until(&load, 5.0);
    let fetch_failures_before = mesh::stat_sum(&envoy, "meshwasm_jwt_auth", ".jwks_fetch_failures");
    run.event(&load, "IdP cut off");
    relay.cut();
    until(&load, (5 + outage) as f64);
    relay.restore()?;
    run.event(&load, "IdP reachable again");
    let fetch_failures =
        mesh::stat_sum(&envoy, "meshwasm_jwt_auth", ".jwks_fetch_failures") - fetch_failures_before;
    until(&load, (5 + outage + 2) as f64);
    let kids = idp.rotate_keys()?;
    let new_token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE))?;
    let generation = load.set_token(Some(new_token));
    let t_rot = run.event(
        &load,
        format!("keys rotated (new kids {:?}); load switches to new-key tokens", &kids[..kids.len().min(2)]),
    );
    let records = load.finish();
    run.finish(&records, seconds);

    run.figure("failed JWKS fetches during the outage (`jwks_fetch_failures`)", fetch_failures.to_string());
    let old = errors_in(&records, 0, t_rot);
    let old: Vec<&Record> = old.into_iter().filter(|r| r.token_gen < generation).collect();
    run.check(
        "zero errors while the IdP is down (cached keys)",
        format!("{} errors {:?}", old.len(), status_counts(&old)),
        old.is_empty(),
    );
    let first_new = records.iter().filter(|r| r.token_gen == generation).map(|r| r.start_us).min();
    let first_ok = records.iter().filter(|r| r.token_gen == generation && r.ok()).map(|r| r.end_us).min();
    let window = REFETCH_S * 1_000_000;
    let accepted = first_new.zip(first_ok).map(|(a, b)| b.saturating_sub(a));
    run.check(
        format!("new-key tokens accepted within the refetch interval ({REFETCH_S} s)"),
        accepted.map_or("no new-key token was accepted".into(), |d| {
            format!("first new-key token accepted {} after the first was sent", secs(d))
        }),
        accepted.is_some_and(|d| d <= window),
    );
    let late: Vec<&Record> = records
        .iter()
        .filter(|r| r.token_gen == generation && !r.ok() && r.start_us > first_new.unwrap_or(0) + window)
        .collect();
    let new_errors: Vec<&Record> = records.iter().filter(|r| r.token_gen == generation && !r.ok()).collect();
    run.figure(
        "new-key requests refused inside the interval",
        format!("{} {:?}", new_errors.len(), status_counts(&new_errors)),
    );
    run.check(
        "no new-key token refused after the interval",
        format!("{} errors", late.len()),
        late.is_empty(),
    );
    Ok(run)
}
