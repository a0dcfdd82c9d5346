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
    /// How long the IdP and the registry are down ((b), (c)); the issue's figure is 30 s.
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
        "Three etcd members on loopback; discovery polls them (`refresh: 250ms`, `timeout: 500ms`, `max_retry: 1s`) \
         through one Envoy cluster holding all three (round robin, active `/health` checks every 250 ms, outlier \
         detection on connect failures). Backends A B C registered. At 5 s the leader is killed (SIGKILL); as soon as the two \
         others have elected a new leader, E is registered. The old leader rejoins; then a follower is killed and \
         F registered. (The bound is tight: with the 1 s poll timeout of the other faults one of two runs took \
         2.1 s, with 500 ms one of four took 2.07 s: two failed polls after the election cost 2 × the 1 s retry \
         floor of `max_retry`.)"
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
        // A poll that a member holds during the election fails after 500 ms instead of 1 s.
        service: json!({"refresh": "250ms", "timeout": "500ms", "max_retry": "1s"}),
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

fn listener_spec(s: &Settings, envoy: &Envoy, listener: &str, rate: u32, seconds: u64) -> LoadSpec {
    LoadSpec {
        target: envoy.listener_addr(listener),
        path: "/".into(),
        rate,
        duration: Duration::from_secs(seconds),
        workers: s.connections,
        timeout: Duration::from_secs(10),
    }
}

/// (d) The introspection endpoint slow (answers after the filter's timeout), with `fail_open` false
/// and true side by side.
pub fn introspection_slow(s: &Settings) -> Result<FaultRun> {
    const TIMEOUT_MS: u64 = 300;
    const SLOW_S: u64 = 10;
    let mut run = FaultRun::new(
        "d-introspection-slow",
        "(d) introspection endpoint slow",
        format!(
            "jwt-auth introspects opaque tokens at the real OpenID Provider (`introspection.timeout: {TIMEOUT_MS}ms`, \
             answer cache off, so every request makes a call). Two listeners in one Envoy, one with `fail_open: \
             false` (*closed*), one with `fail_open: true` (*open*), each loaded at half the rate with its own opaque \
             token. At 5 s the endpoint starts answering after 1 s (past the timeout) for {SLOW_S} s. Expected: \
             *closed* answers 503 and *open* passes (200), nothing else; both all 200 after."
        ),
    );
    let idp = OidcProvider::start(OidcOptions::default()).context("starting the OpenID Provider")?;
    let backend = ProcBackend::start("A")?;
    let filter = |fail_open: bool| {
        let cfg = json!({
            "providers": {"idp": {"issuer": idp.issuer(), "introspection": {
                "cluster": "idp", "path": "/token/introspection", "authority": idp.addr().to_string(),
                "client_id": meshwasm_tests::oidc::INTROSPECTION_CLIENT.id,
                "client_secret": meshwasm_tests::oidc::INTROSPECTION_CLIENT.secret,
                "timeout": format!("{TIMEOUT_MS}ms"), "cache_max_entries": 0, "fail_open": fail_open,
            }}},
            "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
            "cache_entries": 0,
        });
        meshwasm_tests::envoy::WasmFilter::new(
            "jwt-auth",
            meshwasm_tests::artifacts::wasm_path("meshwasm_jwt_auth"),
        )
        .config(cfg.to_string())
    };
    let mut cfg = meshwasm_tests::envoy::EnvoyConfig::new()
        .concurrency(s.workers)
        .log_level("warn")
        .listener(meshwasm_tests::envoy::Listener::new("closed", "backend").wasm(filter(false)))
        .listener(meshwasm_tests::envoy::Listener::new("open", "backend").wasm(filter(true)))
        .cluster(Cluster::static_hosts("backend", &[backend.addr]))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]));
    cfg.component_log_level = Some("wasm:error".to_owned());
    let envoy = cfg.start()?;
    let opaque =
        || idp.client_credentials(&BASIC_CLIENT, "read", Some(meshwasm_tests::oidc::OPAQUE_RESOURCE));
    let (t_closed, t_open) = (opaque()?, opaque()?);
    for (l, t) in [("closed", &t_closed), ("open", &t_open)] {
        let r = meshwasm_tests::process::http_request(
            envoy.listener_addr(l),
            "GET",
            "/",
            &[("authorization", &format!("Bearer {t}"))],
            b"",
            Duration::from_secs(5),
        )?;
        anyhow::ensure!(
            r.status == 200,
            "listener {l}: an introspected token got {} before the fault",
            r.status
        );
    }
    let seconds = 5 + SLOW_S + 10;
    let half = (s.rate / 2).max(1);
    let closed = Load::start(listener_spec(s, &envoy, "closed", half, seconds), Some(t_closed));
    let open = Load::start(listener_spec(s, &envoy, "open", half, seconds), Some(t_open));
    until(&closed, 5.0);
    idp.delay_introspection_requests(Duration::from_secs(1))?;
    let t_slow = run.event(&closed, "introspection answers after 1 s");
    until(&closed, (5 + SLOW_S) as f64);
    idp.delay_introspection_requests(Duration::ZERO)?;
    let t_fast = run.event(&closed, "introspection fast again");
    let closed = closed.finish();
    let open = open.finish();
    let mut all = closed.clone();
    all.extend(open.iter().cloned());
    all.sort_by_key(|r| r.due_us);
    run.finish(&all, seconds);

    let settle = (TIMEOUT_MS + 200) * 1000;
    let by = |rs: &[Record], from: u64, to: u64| -> BTreeMap<u16, usize> {
        let v: Vec<&Record> = rs.iter().filter(|r| r.due_us >= from && r.due_us < to).collect();
        status_counts(&v)
    };
    let only = |m: &BTreeMap<u16, usize>, s: u16| m.keys().all(|k| *k == s);
    let c_all = by(&closed, 0, u64::MAX);
    let o_all = by(&open, 0, u64::MAX);
    run.figure("closed listener, all statuses", format!("{c_all:?}"));
    run.figure("open listener, all statuses", format!("{o_all:?}"));
    run.check(
        "closed (`fail_open: false`): only 200 and 503, ever",
        format!("{c_all:?}"),
        c_all.keys().all(|k| *k == 200 || *k == 503),
    );
    let c_slow = by(&closed, t_slow + settle, t_fast);
    run.check(
        "closed: every request while the endpoint is slow is 503",
        format!("{c_slow:?}"),
        only(&c_slow, 503) && !c_slow.is_empty(),
    );
    run.check(
        "open (`fail_open: true`): only 200, ever (passed without claims)",
        format!("{o_all:?}"),
        only(&o_all, 200),
    );
    let recovered_c = by(&closed, t_fast + settle + 1_000_000, u64::MAX);
    let recovered_o = by(&open, t_fast + settle + 1_000_000, u64::MAX);
    run.check(
        "full recovery: both listeners all 200 from 1.5 s after the endpoint is fast again",
        format!("closed {recovered_c:?}, open {recovered_o:?}"),
        only(&recovered_c, 200) && only(&recovered_o, 200) && !recovered_c.is_empty(),
    );
    let last_503 = closed.iter().filter(|r| r.status == 503).map(|r| r.due_us).max();
    if let Some(l) = last_503 {
        run.figure("time to recover (endpoint fast → last 503 on closed)", secs(l.saturating_sub(t_fast)));
    }
    Ok(run)
}

/// (e) The token endpoint down: token-injector keeps its cached token until it nears expiry, then
/// answers 503; it recovers on the next successful refresh.
pub fn token_endpoint_down(s: &Settings) -> Result<FaultRun> {
    const TTL_S: u64 = 20;
    const MARGIN_S: f64 = 2.0;
    let mut run = FaultRun::new(
        "e-token-endpoint-down",
        "(e) token endpoint down",
        format!(
            "token-injector adds a client-credentials token from the real OpenID Provider (tokens live {TTL_S} s; \
             refresh at 80 %; `expiry_margin` capped at a tenth of the lifetime: {MARGIN_S} s; `retry_backoff` 1 s … \
             2 s) to every request to a backend. Envoy reaches the IdP through a TCP relay. Right after the first \
             token was fetched the relay is cut (connections refused); it is restored {} s after that fetch.",
            TTL_S + 6
        ),
    );
    let idp = OidcProvider::start(OidcOptions::default().token_ttl(TTL_S))
        .context("starting the OpenID Provider")?;
    let relay = Relay::start(idp.addr())?;
    let backend = ProcBackend::start("A")?;
    let cfg = json!({
        "token_endpoint": {"cluster": "idp", "path": "/token", "authority": idp.addr().to_string(), "timeout": "1s"},
        "client_id": BASIC_CLIENT.id,
        "client_secret": BASIC_CLIENT.secret,
        "scopes": ["read"],
        "refresh": {"fraction": 0.8, "before_expiry": "60s", "expiry_margin": "5s"},
        "retry_backoff": {"initial": "1s", "max": "2s"},
    });
    let mut ecfg = meshwasm_tests::envoy::EnvoyConfig::new()
        .concurrency(s.workers)
        .log_level("warn")
        .listener(
            meshwasm_tests::envoy::Listener::new(LISTENER, "backend").wasm(
                meshwasm_tests::envoy::WasmFilter::new(
                    "token-injector",
                    meshwasm_tests::artifacts::wasm_path("meshwasm_token_injector"),
                )
                .config(cfg.to_string()),
            ),
        )
        .cluster(Cluster::static_hosts("backend", &[backend.addr]))
        .cluster(Cluster::static_hosts("idp", &[relay.addr()]));
    ecfg.component_log_level = Some("wasm:error".to_owned());
    let envoy = ecfg.start()?;
    let before = idp.token_request_count()?;
    let issued = Instant::now();
    mesh::wait_serving(&envoy, None, 1)?;
    anyhow::ensure!(idp.token_request_count()? > before, "token-injector fetched no token");
    let seconds = TTL_S + 12;
    let load = Load::start(spec(s, &envoy, seconds), None);
    // Times relative to the load: the token was fetched `lead` before it started.
    let lead = issued.elapsed().as_micros() as u64;
    relay.cut();
    let t_cut = run.event(&load, "token endpoint unreachable");
    let expiry = (TTL_S * 1_000_000).saturating_sub(lead);
    run.events.push((expiry as f64 / 1e6, "first token expires".into()));
    until(&load, expiry as f64 / 1e6 + 6.0);
    relay.restore()?;
    let t_back = run.event(&load, "token endpoint reachable again");
    let records = load.finish();
    run.finish(&records, seconds);

    let statuses = status_counts(&records.iter().collect::<Vec<_>>());
    let first_503 = records.iter().filter(|r| r.status == 503).map(|r| r.due_us).min();
    let usable_until = expiry.saturating_sub((MARGIN_S * 1e6) as u64);
    run.figure("token fetched before the load started", secs(lead));
    run.check(
        "only 200 and 503, ever",
        format!("{statuses:?}"),
        statuses.keys().all(|k| *k == 200 || *k == 503),
    );
    run.check(
        format!("calls keep working until the cached token nears expiry (first 503 not before expiry − margin − 0.5 s = {})", secs(usable_until.saturating_sub(500_000))),
        first_503.map_or("no 503 at all".into(), |t| format!("first 503 at {}, {} after the endpoint went down", secs(t), secs(t - t_cut))),
        first_503.is_some_and(|t| t + 500_000 >= usable_until),
    );
    let gap = errors_in(&records, usable_until + 500_000, t_back);
    let gap_ok =
        records.iter().filter(|r| r.due_us >= expiry + 200_000 && r.due_us < t_back).all(|r| r.status == 503);
    run.check(
        "then a clear 503 for every call until the endpoint returns",
        format!("{} × 503 between expiry and the return", gap.len()),
        gap_ok && !gap.is_empty(),
    );
    let recovered = records.iter().filter(|r| r.due_us >= t_back && r.ok()).map(|r| r.due_us).min();
    let late =
        records.iter().filter(|r| recovered.is_some_and(|t| r.due_us > t + 500_000) && !r.ok()).count();
    run.check(
        "recovery on the next successful refresh (within the 2 s retry back-off + 1 s), then no errors",
        recovered.map_or("never recovered".into(), |t| {
            format!("first 200 {} after the return; {late} errors after it", secs(t - t_back))
        }),
        recovered.is_some_and(|t| t - t_back <= 3_000_000) && late == 0,
    );
    Ok(run)
}

/// A proxy-wasm module (WAT) that lets requests through and traps (`unreachable`) in
/// `on_request_headers` when the request carries `x-crash`: a VM failing mid-stream on demand.
const TRAPPING_WAT: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $n)) (i32.const 1000000))
      (then (global.set $heap (i32.const 65536))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
  (data (i32.const 1120) "x-crash")
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1120) (i32.const 7) (i32.const 2048) (i32.const 2052)))
      (then (unreachable)))
    (i32.const 0)))
"#;

fn trapping_filter(
    dir: &std::path::Path,
    name: &str,
    policy: &str,
) -> Result<meshwasm_tests::envoy::HttpFilter> {
    let wat = dir.join("trap.wat");
    let wasm = dir.join("trap.wasm");
    if !wasm.exists() {
        std::fs::write(&wat, TRAPPING_WAT)?;
        let out = std::process::Command::new("wasm-opt")
            .arg(&wat)
            .arg("-o")
            .arg(&wasm)
            .output()
            .context("running wasm-opt (Debian binaryen, make setup) to assemble the trapping module")?;
        anyhow::ensure!(out.status.success(), "wasm-opt: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(meshwasm_tests::envoy::HttpFilter::Raw(format!(
        r#"name: envoy.filters.http.wasm
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
  config:
    name: {name}
    root_id: {name}
    failure_policy: {policy}
    vm_config:
      vm_id: {name}
      runtime: envoy.wasm.runtime.v8
      code: {{local: {{filename: "{}"}}}}
"#,
        wasm.display()
    )))
}

/// (g) A VM that traps mid-stream, with `failure_policy` FAIL_CLOSED and FAIL_RELOAD side by side.
pub fn vm_trap(s: &Settings) -> Result<FaultRun> {
    let mut run = FaultRun::new(
        "g-vm-trap",
        "(g) a VM that traps mid-stream: FAIL_CLOSED and FAIL_RELOAD",
        "Two listeners in one Envoy (1 worker, so one VM per plugin), each with a small proxy-wasm module that \
         traps in `on_request_headers` when a request carries `x-crash`: one with `failure_policy: FAIL_CLOSED`, one \
         with `FAIL_RELOAD`, each loaded at half the rate. At 5 s one `x-crash` request is sent to each. The \
         documented blast radius (README of meshwasm-host, Failures; examples/serve): the trapping request gets 503 \
         and so do the other streams of that VM in flight; then FAIL_CLOSED answers 503 for every later request of \
         that VM, FAIL_RELOAD recreates the VM so that the next request works."
            .into(),
    );
    let dir = tempfile::tempdir()?;
    let backend = ProcBackend::start("A")?;
    let mut cfg = meshwasm_tests::envoy::EnvoyConfig::new()
        .concurrency(1)
        .log_level("warn")
        .listener(meshwasm_tests::envoy::Listener::new("closed", "backend").filter(trapping_filter(
            dir.path(),
            "trap-closed",
            "FAIL_CLOSED",
        )?))
        .listener(meshwasm_tests::envoy::Listener::new("reload", "backend").filter(trapping_filter(
            dir.path(),
            "trap-reload",
            "FAIL_RELOAD",
        )?))
        .cluster(Cluster::static_hosts("backend", &[backend.addr]));
    cfg.component_log_level = Some("wasm:warn".to_owned());
    let envoy = cfg.start()?;
    let seconds = 15;
    let half = (s.rate / 2).max(1);
    let closed = Load::start(listener_spec(s, &envoy, "closed", half, seconds), None);
    let reload = Load::start(listener_spec(s, &envoy, "reload", half, seconds), None);
    until(&closed, 5.0);
    let crash = |l: &str| {
        meshwasm_tests::process::http_request(
            envoy.listener_addr(l),
            "GET",
            "/",
            &[("x-crash", "1")],
            b"",
            Duration::from_secs(5),
        )
        .map(|r| r.status)
    };
    let t_trap = run.event(&closed, "x-crash sent to both listeners");
    let c_status = crash("closed")?;
    let t_reload_crash = closed.now_us();
    let r_status = crash("reload")?;
    let t_trapped = closed.now_us();
    let closed = closed.finish();
    let reload = reload.finish();
    let mut all = closed.clone();
    all.extend(reload.iter().cloned());
    all.sort_by_key(|r| r.due_us);
    run.finish(&all, seconds);

    run.figure(
        "status of the x-crash request: FAIL_CLOSED / FAIL_RELOAD",
        format!("{c_status} / {r_status}"),
    );
    let before_c: Vec<&Record> = closed.iter().filter(|r| r.end_us < t_trap).collect();
    let before_r: Vec<&Record> = reload.iter().filter(|r| r.end_us < t_trap).collect();
    run.check(
        "before the trap: all 200 on both",
        format!("{:?} / {:?}", status_counts(&before_c), status_counts(&before_r)),
        before_c.iter().chain(&before_r).all(|r| r.ok()),
    );
    run.check(
        "the trapping request gets 503 (both policies)",
        format!("{c_status} / {r_status}"),
        c_status == 503 && r_status == 503,
    );
    let after_c: Vec<&Record> = closed.iter().filter(|r| r.start_us > t_trapped).collect();
    run.check(
        "FAIL_CLOSED: every later request of that VM is 503",
        format!("{:?}", status_counts(&after_c)),
        !after_c.is_empty() && after_c.iter().all(|r| r.status == 503),
    );
    // The VM traps somewhere inside the x-crash request to it: its streams in flight are the load's
    // requests that overlap that request.
    let in_flight = reload.iter().filter(|r| r.start_us < t_trapped && r.end_us > t_reload_crash).count();
    let reload_errors: Vec<&Record> = reload.iter().filter(|r| !r.ok()).collect();
    run.figure(
        "FAIL_RELOAD failed load requests (start … end, relative to the x-crash request's start; it took)",
        format!(
            "{}; x-crash took {}",
            reload_errors
                .iter()
                .map(|r| format!(
                    "{:+.1} ms … {:+.1} ms",
                    (r.start_us as f64 - t_reload_crash as f64) / 1e3,
                    (r.end_us as f64 - t_reload_crash as f64) / 1e3
                ))
                .collect::<Vec<_>>()
                .join(", "),
            secs(t_trapped - t_reload_crash)
        ),
    );
    let after_r: Vec<&Record> = reload.iter().filter(|r| r.start_us > t_trapped).collect();
    run.check(
        format!("FAIL_RELOAD: errors besides the trapping request ≤ its VM's streams in flight ({in_flight}), later requests all 200"),
        format!("{} errors {:?}; after the trap {:?}", reload_errors.len(), status_counts(&reload_errors), status_counts(&after_r)),
        reload_errors.len() <= in_flight && after_r.iter().all(|r| r.ok()),
    );
    Ok(run)
}
