//! The soak through meshwasm-host instead of Envoy (`meshwasm-faults soak --host`, and the 60 s
//! version in `make test`): the same chain (jwt-auth with keys from the real OpenID Provider, discovery
//! from a real etcd, balancer), the same churn (an endpoint registered / removed every second, the
//! signing keys rotated every minute and the old ones retired 10 s later), but run in-process in the
//! host, which can read what Envoy does not expose: each VM's linear memory, the shared-data keys and
//! queues, the metrics, and the streams, stream contexts and http calls each worker still holds.
//!
//! Real time: the host's clock follows the wall clock (it is advanced to it before every request), the
//! load is paced at `rate` requests per second and falls behind on a slow machine rather than bursting
//! (a slower machine sends fewer requests; nothing measured depends on the pace). The host's http calls
//! go to the real IdP and etcd over HTTP/1.1; the upstream answer of every request is scripted (200).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use meshwasm_host::{
    Host, HostOptions, Plugin, Proxy, Request, StreamId, StreamState, Upstream, UpstreamReply,
};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::oidc::{BASIC_CLIENT, OidcOptions, OidcProvider, RS256_RESOURCE};
use serde_json::json;

const SERVICE: &str = "api";
const PREFIX: &str = "/services/api/";

/// How a host soak runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Duration,
    /// Requests per second (paced; fewer when the machine cannot keep up).
    pub rate: u32,
    /// Stream workers (plus the main thread, as in Envoy).
    pub workers: usize,
    pub sample_every: Duration,
    /// Seconds between key rotations.
    pub rotate_every: Duration,
    /// Directory of the filter .wasm files (default: $MESHWASM_WASM_DIR or target/wasm32-wasip1/wasm).
    pub wasm_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(300),
            rate: 200,
            workers: 2,
            sample_every: Duration::from_secs(5),
            rotate_every: Duration::from_secs(60),
            wasm_dir: None,
        }
    }
}

/// One sample of the host's state.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// Linear memory of every VM in bytes, by `w<worker> <plugins>` (`main` for the main thread).
    pub vm_memory: BTreeMap<String, u64>,
    /// Shared-data keys over both VM ids (jwt-auth's and the discovery/balancer VM's).
    pub shared_keys: usize,
    pub queues: usize,
    pub metrics: usize,
    /// Streams, stream contexts and pending http calls held over all workers.
    pub live_streams: usize,
    pub stream_contexts: usize,
    pub pending_calls: usize,
    pub failed_vms: usize,
}

/// What a host soak measured.
#[derive(Clone, Debug)]
pub struct Soak {
    pub options: Options,
    pub samples: Vec<Sample>,
    pub requests: u64,
    /// Responses by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Seconds (since start) of each non-200 response, with its status.
    pub errors: Vec<(f64, u16)>,
    pub rotations: u32,
    pub churn_writes: u32,
    pub load_before: String,
    pub load_after: String,
    /// A sample after the last request finished (not in `samples`).
    pub end: Option<Sample>,
}

/// Least-squares slope of (x, y).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

impl Soak {
    /// The samples after the first fifth of the run (start-up allocations settle there).
    pub fn steady(&self) -> impl Iterator<Item = &Sample> {
        let warm = self.options.duration.as_secs_f64() / 5.0;
        self.samples.iter().filter(move |s| s.t >= warm)
    }

    /// Slope of each VM's linear memory after warm-up, KiB per minute.
    pub fn memory_slopes(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let names: Vec<String> =
            self.samples.last().map(|s| s.vm_memory.keys().cloned().collect()).unwrap_or_default();
        for name in names {
            let pts: Vec<(f64, f64)> = self
                .steady()
                .filter_map(|s| s.vm_memory.get(&name).map(|b| (s.t / 60.0, *b as f64 / 1024.0)))
                .collect();
            out.insert(name, slope(&pts));
        }
        out
    }

    /// Growth of the total linear memory from the first steady sample to the last, in bytes.
    pub fn memory_growth(&self) -> i64 {
        let total = |s: &Sample| s.vm_memory.values().sum::<u64>() as i64;
        let first = self.steady().next().map(total).unwrap_or(0);
        let last = self.samples.last().map(total).unwrap_or(0);
        last - first
    }

    /// The largest value of `f` in the second half vs in the first half (after warm-up).
    pub fn halves(&self, f: fn(&Sample) -> usize) -> (usize, usize) {
        let half = self.options.duration.as_secs_f64() / 2.0;
        let max = |later: bool| self.steady().filter(|s| (s.t >= half) == later).map(f).max().unwrap_or(0);
        (max(false), max(true))
    }
}

fn wasm(dir: &std::path::Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(format!("{name}.wasm"));
    if !p.is_file() {
        bail!("missing {}: build the filters with `make wasm`", p.display());
    }
    Ok(p)
}

/// Runs the soak.
pub fn run(options: &Options) -> Result<Soak> {
    let dir = options.wasm_dir.clone().unwrap_or_else(|| {
        std::env::var("MESHWASM_WASM_DIR").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm")
        })
    });
    let load_before = crate::machine::load_average();
    let etcd = Etcd::start()?;
    let entry = |name: &str, port: u16| {
        json!({"address": format!("127.0.0.1:{port}"), "metadata": {"instance": name}}).to_string()
    };
    for (i, name) in ["A", "B", "C"].iter().enumerate() {
        etcd.put(&format!("{PREFIX}{name}"), &entry(name, 18_001 + i as u16))?;
    }
    let idp = OidcProvider::start(OidcOptions::default()).context("starting the OpenID Provider")?;

    let host = Host::new(HostOptions::default())?;
    let jwt = json!({
        "providers": {"idp": {"issuer": idp.issuer(), "audiences": [RS256_RESOURCE],
                              "remote_jwks": {"cluster": "idp", "unknown_kid_refetch_interval": "30s"}}},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}],
        "cache_entries": 1024,
    });
    let discovery = json!({"tick": "100ms", "services": [{
        "name": SERVICE, "allow_loopback": true, "refresh": "250ms", "timeout": "1s", "max_retry": "1s",
        "source": {"etcd": {"cluster": "registry", "prefix": PREFIX}}}]});
    let balancer = json!({
        "service_from": [{"fixed": SERVICE}],
        "services": {SERVICE: {"algorithm": "round_robin"}},
    });
    let mut proxy = Proxy::builder(&host)
        .workers(options.workers)
        .main_thread(true)
        .start_time(SystemTime::now())
        .plugin(
            Plugin::new(host.load(wasm(&dir, "meshwasm_jwt_auth")?)?)
                .name("jwt-auth")
                .config(jwt.to_string()),
        )
        .plugin(
            Plugin::new(host.load(wasm(&dir, "meshwasm_discovery")?)?)
                .name("discovery")
                .vm_id("meshwasm")
                .config(discovery.to_string()),
        )
        .plugin(
            Plugin::new(host.load(wasm(&dir, "meshwasm_balancer")?)?)
                .name("balancer")
                .vm_id("meshwasm")
                .config(balancer.to_string()),
        )
        .upstream("idp", Upstream::forward(idp.addr()))
        .upstream("registry", Upstream::forward(etcd.addr()))
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let mut token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE))?;
    let start = Instant::now();
    let follow_clock = |proxy: &mut Proxy| {
        let behind = start.elapsed().saturating_sub(proxy.now());
        if !behind.is_zero() {
            proxy.advance(behind);
        }
    };
    // Warm-up: the first poll of the registry and the first JWKS fetch, before the load counts.
    for worker in 0..options.workers {
        let mut ready = false;
        for _ in 0..100 {
            follow_clock(&mut proxy);
            let req = Request::get("/").header("authorization", format!("Bearer {token}"));
            let id = proxy.start(worker, req)?;
            follow_clock(&mut proxy);
            let _ = proxy.finish(id, UpstreamReply::new(200))?;
            for _ in 0..50 {
                if matches!(proxy.stream_state(id), Some(StreamState::Complete | StreamState::Reset)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                follow_clock(&mut proxy);
            }
            if proxy.exchange(id).is_some_and(|e| e.state == StreamState::Complete && e.status == 200) {
                ready = true;
                break;
            }
            proxy.cancel(id);
            std::thread::sleep(Duration::from_millis(100));
        }
        if !ready {
            bail!(
                "worker {worker}: the chain never answered 200 within 10 s: {:?}",
                proxy.take_logs().last()
            );
        }
    }
    let start = Instant::now();
    let origin = proxy.now();
    let t = |proxy: &Proxy| (proxy.now() - origin).as_secs_f64();

    let mut soak = Soak {
        options: options.clone(),
        samples: Vec::new(),
        requests: 0,
        statuses: BTreeMap::new(),
        errors: Vec::new(),
        rotations: 0,
        churn_writes: 0,
        load_before,
        load_after: String::new(),
        end: None,
    };
    let seconds = options.duration.as_secs_f64();
    let mut next_sample = 0.0;
    let mut next_churn = 1.0;
    let mut churn_on = false;
    let rotate = options.rotate_every.as_secs_f64();
    let mut next_rotation = rotate;
    let mut retire_at: Option<f64> = None;
    let mut waiting: Vec<(StreamId, f64)> = Vec::new();
    loop {
        let now = start.elapsed();
        let behind = (now + origin).saturating_sub(proxy.now());
        if !behind.is_zero() {
            proxy.advance(behind);
        }
        let t_now = t(&proxy);
        if t_now >= next_sample {
            soak.samples.push(sample(&proxy, t_now));
            next_sample += options.sample_every.as_secs_f64();
        }
        if t_now >= seconds {
            break;
        }
        if t_now >= next_churn {
            churn_on = !churn_on;
            let key = format!("{PREFIX}D");
            let ok = if churn_on { etcd.put(&key, &entry("D", 18_004)) } else { etcd.delete(&key) };
            soak.churn_writes += u32::from(ok.is_ok());
            next_churn += 1.0;
        }
        if t_now >= next_rotation {
            idp.rotate_keys()?;
            token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE))?;
            soak.rotations += 1;
            retire_at = Some(t_now + 10.0);
            next_rotation += rotate;
        }
        if retire_at.is_some_and(|r| t_now >= r) {
            idp.retire_old_keys()?;
            retire_at = None;
        }
        // Requests due by now at `rate`, at most a tenth of a second's worth at once.
        let due = (now.as_secs_f64() * f64::from(options.rate)) as u64;
        let burst = u64::from(options.rate / 10).max(1);
        let mut sent = 0;
        while soak.requests < due && sent < burst {
            let worker = (soak.requests % options.workers as u64) as usize;
            let req = Request::get("/").header("authorization", format!("Bearer {token}"));
            let id = proxy.start(worker, req)?;
            let _ = proxy.finish(id, UpstreamReply::new(200).body("ok"))?;
            waiting.push((id, t(&proxy)));
            soak.requests += 1;
            sent += 1;
        }
        // A request held by a filter (e.g. waiting for keys being fetched) completes on a later turn.
        let t_now = t(&proxy);
        waiting.retain(|(id, since)| settle(&proxy, &mut soak, *id, *since, t_now));
        if soak.requests >= due {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The last requests held get 10 s to finish.
    let end = Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let behind = (start.elapsed() + origin).saturating_sub(proxy.now());
        proxy.advance(behind);
        let t_now = t(&proxy);
        waiting.retain(|(id, since)| settle(&proxy, &mut soak, *id, *since, t_now));
    }
    for (id, since) in std::mem::take(&mut waiting) {
        settle(&proxy, &mut soak, id, since, f64::INFINITY);
    }
    // After the drain: what the host still holds once no request is in flight.
    let mut last = sample(&proxy, t(&proxy));
    last.t = seconds;
    soak.end = Some(last);
    soak.load_after = crate::machine::load_average();
    Ok(soak)
}

/// Records a finished request; false once it is recorded. A request not finished within 10 s is an
/// error (status 0).
fn settle(proxy: &Proxy, soak: &mut Soak, id: StreamId, since: f64, now: f64) -> bool {
    let done = matches!(proxy.stream_state(id), Some(StreamState::Complete | StreamState::Reset) | None);
    if !done && now - since < 10.0 {
        return true;
    }
    let status = if done { proxy.exchange(id).map_or(0, |e| e.status) } else { 0 };
    *soak.statuses.entry(status).or_default() += 1;
    if status != 200 {
        soak.errors.push((since, status));
    }
    false
}

fn sample(proxy: &Proxy, t: f64) -> Sample {
    let mut s = Sample {
        t,
        vm_memory: BTreeMap::new(),
        shared_keys: ["", "meshwasm"].iter().map(|v| proxy.shared_data_keys(v).len()).sum(),
        queues: ["", "meshwasm"].iter().map(|v| proxy.queue_names(v).len()).sum(),
        metrics: proxy.metrics().len(),
        live_streams: 0,
        stream_contexts: 0,
        pending_calls: 0,
        failed_vms: 0,
    };
    let mut w = 0;
    while let Some(worker) = proxy.worker(w) {
        let label = if w == proxy.worker_count() { "main".to_owned() } else { format!("w{w}") };
        for vm in worker.vm_stats() {
            s.vm_memory.insert(format!("{label} {}", vm.plugins), vm.memory_bytes);
            s.stream_contexts += vm.stream_contexts;
            s.failed_vms += usize::from(vm.failed);
        }
        s.live_streams += worker.live_streams();
        s.pending_calls += worker.pending_calls();
        w += 1;
    }
    s
}
