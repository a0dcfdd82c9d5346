//! The benchmark run: backends, tokens, one Envoy per listener for memory and validation, then one
//! Envoy with every listener for the interleaved load rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meshwasm_tests::backend::INSTANCE_HEADER;
use meshwasm_tests::envoy::{Envoy, EnvoyConfig, WasmFilter};
use meshwasm_tests::process::{self, ChildGuard};

use crate::configs::{self, ListenerId, Load, Setup, TokenMode};
use crate::filters::FilterSet;
use crate::jwt::{Alg, TokenSet};
use crate::machine::{self, MachineFacts};
use crate::mtls::{Mtls, Sidecar};
use crate::results::{LoadResult, MemoryRow, RunResults, Sample, Settings};
use crate::sizes;
use crate::wrk::{self, LoadShape, Request};

/// Everything the loads need that is made once per run.
struct Fixture {
    tokens: TokenSet,
    repeated: BTreeMap<Alg, String>,
    unique_files: BTreeMap<Alg, std::path::PathBuf>,
    backends: Vec<SocketAddr>,
    _backend_procs: Vec<ChildGuard>,
    /// The benchmark IdP's listener address (token-injector's token endpoint), in every Envoy.
    idp: SocketAddr,
    filters: FilterSet,
    mtls: Mtls,
    /// The client sidecar in front of the mTLS listeners (when any is measured).
    sidecar: Option<Sidecar>,
}

impl Fixture {
    /// Where requests to listener `id` go: the listener itself, or for an mTLS listener the client
    /// sidecar's entry presenting `frontend`'s SVID (or `rogue`'s).
    fn entry(&self, envoy: &Envoy, id: ListenerId, rogue: bool) -> Result<SocketAddr> {
        if !id.mtls() {
            return Ok(envoy.listener_addr(id.name()));
        }
        let sidecar = self.sidecar.as_ref().context("the client sidecar is not running")?;
        Ok(sidecar.entry(id, rogue))
    }

    fn request(&self, mode: TokenMode) -> Request {
        match mode {
            TokenMode::None => Request::Plain,
            TokenMode::Repeated(a) => Request::BearerRepeated(self.repeated[&a].clone()),
            TokenMode::Unique(a) => Request::BearerUnique(self.unique_files[&a].clone()),
        }
    }

    /// A token for single validation requests.
    fn probe_token(&self, mode: TokenMode) -> Option<&str> {
        match mode {
            TokenMode::None => None,
            TokenMode::Repeated(a) | TokenMode::Unique(a) => Some(self.repeated[&a].as_str()),
        }
    }
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Progress on stderr, with seconds since the run started.
fn say(msg: impl AsRef<str>) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("meshwasm-bench [{t:5.1}s] {}", msg.as_ref());
}

/// An Envoy with `setups`' listeners and Wasm services (each service once), the benchmark IdP's
/// listener and the common clusters.
fn envoy_config(setups: Vec<Setup>, fixture: &Fixture, workers: u32) -> EnvoyConfig {
    let mut cfg = EnvoyConfig::new().concurrency(workers).log_level("warning");
    // Per-request debug logging would dominate the cost being measured.
    cfg.component_log_level = None;
    let mut services: Vec<WasmFilter> = Vec::new();
    for s in setups {
        cfg = cfg.listener(s.listener);
        for f in s.services {
            let same = |g: &WasmFilter| g.name == f.name && g.vm_id == f.vm_id && g.config == f.config;
            if !services.iter().any(same) {
                services.push(f);
            }
        }
    }
    for f in services {
        cfg = cfg.wasm_service(f);
    }
    cfg = cfg.listener(configs::idp_listener(fixture.idp.port()));
    for c in configs::clusters(&fixture.backends, fixture.idp) {
        cfg = cfg.cluster(c);
    }
    cfg
}

/// Starts an Envoy; on failure returns the reason with the relevant lines of Envoy's log.
fn start_envoy(cfg: &EnvoyConfig, scratch: &Path) -> Result<Envoy, String> {
    cfg.start().map_err(|e| diagnose(cfg, scratch).unwrap_or_else(|| format!("Envoy did not start: {e:#}")))
}

/// Re-runs a configuration that failed to start, in the foreground for at most 15 s, to capture why
/// (the harness keeps the log of a failed start only on stderr).
fn diagnose(cfg: &EnvoyConfig, scratch: &Path) -> Option<String> {
    let path = scratch.join("failed-bootstrap.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg.bootstrap().ok()?).ok()?).ok()?;
    let out = Command::new("timeout")
        .arg("15s")
        .arg(meshwasm_tests::artifacts::envoy_binary())
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "1", "--disable-hot-restart", "--use-dynamic-base-id", "-l", "warning"])
        .args(&cfg.extra_args)
        .output()
        .ok()?;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[error]") || l.contains("[critical]") || l.contains("wasm"))
        .map(|l| l.split("] ").last().unwrap_or(l))
        .collect();
    (!lines.is_empty())
        .then(|| format!("Envoy rejected it: {}", lines[lines.len().saturating_sub(3)..].join(" | ")))
}

/// Checks a listener answers like its configuration must: 200 from a backend with a valid token,
/// 401 without one where a token is required, and all three backends reached where it balances.
fn validate(envoy: &Envoy, id: ListenerId, fixture: &Fixture, mode: TokenMode) -> Result<()> {
    let addr = fixture.entry(envoy, id, false)?;
    let token = fixture.probe_token(mode).map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = token.iter().map(|t| ("authorization", t.as_str())).collect();
    let timeout = Duration::from_secs(5);
    // A balancer answers 503 until discovery's first publication (its first tick): allow a few seconds.
    let ready = process::wait_until(Duration::from_secs(5), || {
        process::http_request(addr, "GET", "/", &headers, b"", timeout).is_ok_and(|r| r.status == 200)
    });
    if !ready {
        say(format!("`{}` did not answer 200 within 5 s", id.name()));
    }
    let mut seen = BTreeSet::new();
    for _ in 0..9 {
        let r = process::http_request(addr, "GET", "/", &headers, b"", timeout)?;
        if r.status != 200 {
            bail!(
                "`{}` answered {} instead of 200: {}",
                id.name(),
                r.status,
                r.text().chars().take(200).collect::<String>()
            );
        }
        let Some(instance) = r.header(INSTANCE_HEADER) else {
            bail!("`{}` answered 200 but not from a backend (no {INSTANCE_HEADER})", id.name());
        };
        seen.insert(instance.to_owned());
    }
    if id.balances() && seen.len() < fixture.backends.len() {
        bail!("`{}` reached only {:?} of {} backends in 9 requests", id.name(), seen, fixture.backends.len());
    }
    if id.mtls() {
        // The policy decides on the caller's identity and on the method.
        let rogue = fixture.entry(envoy, id, true)?;
        for (who, addr, method) in [("rogue", rogue, "GET"), ("frontend", addr, "POST")] {
            let r = process::http_request(addr, method, "/", &[], b"", timeout)?;
            if r.status != 403 {
                bail!(
                    "`{}` answered {} to {method} from {who} (403 expected): the policy is not enforced",
                    id.name(),
                    r.status
                );
            }
        }
    }
    if id.needs_token() {
        let r = process::http_request(addr, "GET", "/", &[], b"", timeout)?;
        if r.status != 401 {
            bail!(
                "`{}` answered {} without a token (401 expected): the filter is not enforcing",
                id.name(),
                r.status
            );
        }
    }
    Ok(())
}

/// Token mode used to validate a listener (the first load that uses it; a repeated RS256 token for a
/// memory-only listener that needs one).
fn validation_mode(id: ListenerId, loads: &[Load]) -> TokenMode {
    match loads.iter().find(|l| l.listener == id) {
        Some(l) => l.token,
        None if id.needs_token() => TokenMode::Repeated(Alg::Rs256),
        None => TokenMode::None,
    }
}

fn spawn_backends(n: usize, cpus: Option<&str>) -> Result<(Vec<SocketAddr>, Vec<ChildGuard>)> {
    let exe = std::env::current_exe()?;
    let mut addrs = Vec::new();
    let mut procs = Vec::new();
    for i in 0..n {
        let port = process::free_port();
        let name = format!("b{i}");
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c).arg(&exe);
                cmd
            }
            None => Command::new(&exe),
        };
        cmd.args(["backend", "--port", &port.to_string(), "--name", &name]);
        procs.push(ChildGuard::spawn(&format!("backend-{name}"), cmd)?);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        if !process::wait_until(Duration::from_secs(10), || process::port_open(addr)) {
            bail!("meshwasm bench: backend {name} did not start on {addr}");
        }
        addrs.push(addr);
    }
    Ok((addrs, procs))
}

/// Sends `n` requests of `mode` to warm a listener (caches, connection pools) before a reading.
fn warm(envoy: &Envoy, id: ListenerId, fixture: &Fixture, mode: TokenMode, n: usize) {
    let Ok(addr) = fixture.entry(envoy, id, false) else { return };
    let token = fixture.probe_token(mode).map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = token.iter().map(|t| ("authorization", t.as_str())).collect();
    for _ in 0..n {
        let _ = process::http_request(addr, "GET", "/", &headers, b"", Duration::from_secs(5));
    }
}

fn admin_allocated(envoy: &Envoy) -> Option<u64> {
    let v = envoy.admin_get("/memory").ok()?.json().ok()?;
    v["allocated"].as_str().and_then(|s| s.parse().ok()).or_else(|| v["allocated"].as_u64())
}

/// One Envoy per listener (and the passthrough-only one as the "without filter" row), at each
/// worker count: validates the listener alone and reads its memory. Returns the memory rows and,
/// per listener, why it cannot be used (if so).
fn memory_and_validation(
    listeners: &BTreeMap<ListenerId, Result<Setup, String>>,
    fixture: &Fixture,
    loads: &[Load],
    worker_counts: &[u32],
    scratch: &Path,
) -> (Vec<MemoryRow>, BTreeMap<ListenerId, String>) {
    let mut rows = Vec::new();
    let mut broken = BTreeMap::new();
    for (&id, l) in listeners {
        let listener = match l {
            Ok(l) => l.clone(),
            Err(reason) => {
                broken.insert(id, reason.clone());
                rows.push(MemoryRow {
                    listener: id.name().into(),
                    workers: worker_counts.first().copied().unwrap_or(1),
                    rss_kib: Err(reason.clone()),
                    allocated_bytes: None,
                });
                continue;
            }
        };
        for &workers in worker_counts {
            say(format!(
                "start {} alone ({workers} worker{})",
                id.name(),
                if workers == 1 { "" } else { "s" }
            ));
            let cfg = envoy_config(vec![listener.clone()], fixture, workers);
            let envoy = match start_envoy(&cfg, scratch) {
                Ok(e) => e,
                Err(reason) => {
                    broken.insert(id, reason.clone());
                    rows.push(MemoryRow {
                        listener: id.name().into(),
                        workers,
                        rss_kib: Err(reason),
                        allocated_bytes: None,
                    });
                    break;
                }
            };
            let mode = validation_mode(id, loads);
            if let Err(e) = validate(&envoy, id, fixture, mode) {
                let reason = format!("{e:#}");
                broken.insert(id, reason.clone());
                rows.push(MemoryRow {
                    listener: id.name().into(),
                    workers,
                    rss_kib: Err(reason),
                    allocated_bytes: None,
                });
                break;
            }
            warm(&envoy, id, fixture, mode, 200);
            // Let lazily started work (VM clones per worker, pollers) settle before reading.
            std::thread::sleep(Duration::from_millis(300));
            rows.push(MemoryRow {
                listener: id.name().into(),
                workers,
                rss_kib: machine::rss_kib(envoy.pid()).context("reading VmRSS").map_err(|e| format!("{e:#}")),
                allocated_bytes: admin_allocated(&envoy),
            });
            envoy.stop();
        }
    }
    (rows, broken)
}

/// What every wrk run of the rounds shares.
struct Driver<'a> {
    envoy: &'a Envoy,
    fixture: &'a Fixture,
    shape: LoadShape,
    scripts: (std::path::PathBuf, std::path::PathBuf),
    ticks_per_s: f64,
}

impl Driver<'_> {
    /// Runs one wrk load, with Envoy's CPU time around it.
    fn measure(&self, load: &Load, duration: Duration, round: u32) -> Result<Sample> {
        let duration = if load.short { (duration / 2).max(Duration::from_secs(1)) } else { duration };
        let addr = self.fixture.entry(self.envoy, load.listener, false)?;
        let url = format!("http://{addr}/");
        let pid = self.envoy.pid();
        let t0 = Instant::now();
        let c0 = machine::cpu_ticks(pid);
        let result = wrk::run(&self.shape, &self.scripts, &url, &self.fixture.request(load.token), duration)?;
        let c1 = machine::cpu_ticks(pid);
        let wall = t0.elapsed().as_secs_f64();
        let cpu_s = match (c0, c1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / self.ticks_per_s),
            _ => None,
        };
        Ok(Sample {
            round,
            envoy_cpu_us_per_request: cpu_s
                .filter(|_| result.requests > 0)
                .map(|c| c * 1e6 / result.requests as f64),
            envoy_cpu_percent: cpu_s.map(|c| 100.0 * c / wall),
            wrk: result,
        })
    }
}

/// The whole benchmark.
pub fn run(settings: Settings, scratch: &Path) -> Result<RunResults> {
    let started = *STARTED.get_or_init(Instant::now);
    let envoy_bin = meshwasm_tests::artifacts::envoy_binary();
    let mut machine = MachineFacts::collect(&envoy_bin);
    let mut notes = Vec::new();
    let ticks_per_s = machine::clock_ticks();

    // Artifact sizes need nothing running: measured (wasm-opt is slow on large modules) while tokens are
    // minted and listeners are validated, and joined before the timed rounds start.
    let wasm_dir = meshwasm_tests::artifacts::wasm_dir();
    say(format!("artifact sizes in {} (in the background)", wasm_dir.display()));
    let sizes_job = {
        let (dir, scratch) = (wasm_dir.clone(), scratch.to_owned());
        let cache = meshwasm_tests::artifacts::workspace_root()
            .join("target")
            .join("meshwasm-bench")
            .join("wasm-opt");
        let run_wasm_opt = settings.wasm_opt;
        std::thread::spawn(move || {
            sizes::measure(&dir, &scratch, &cache, run_wasm_opt).map_err(|e| format!("{e:#}"))
        })
    };
    if settings.unique_tokens <= 2 * crate::filters::JWT_CACHE_ENTRIES {
        notes.push(format!(
            "only {} unique tokens for caches of {} entries: the unique-token loads may hit the caches",
            settings.unique_tokens,
            crate::filters::JWT_CACHE_ENTRIES
        ));
    }
    say("keys and tokens");
    let tokens = TokenSet::generate(scratch)?;
    let mut repeated = BTreeMap::new();
    let mut unique_files = BTreeMap::new();
    for alg in Alg::ALL {
        repeated.insert(alg, tokens.mint(alg, "repeated")?);
        let t = Instant::now();
        unique_files.insert(alg, tokens.unique_token_file(alg, settings.unique_tokens)?);
        say(format!(
            "{} unique {} tokens minted in {:.1}s",
            settings.unique_tokens,
            alg.name(),
            t.elapsed().as_secs_f64()
        ));
    }

    let (envoy_cpus, client_cpus) = match &settings.pinning {
        Some((e, c)) => (Some(e.as_str()), Some(c.as_str())),
        None => (None, None),
    };
    let (backends, backend_procs) = spawn_backends(settings.backends, client_cpus)?;
    let idp = SocketAddr::from(([127, 0, 0, 1], process::free_port()));

    let mut loads = configs::loads();
    if let Some(only) = &settings.only {
        // Keep matching loads and whatever they are judged against.
        let keep: BTreeSet<String> = loads
            .iter()
            .filter(|l| only.split(',').any(|o| l.id.contains(o)))
            .flat_map(|l| [Some(l.id.clone()), l.baseline.clone()])
            .flatten()
            .chain(std::iter::once("passthrough".to_owned()))
            .collect();
        loads.retain(|l| keep.contains(&l.id));
    }
    let mut used: BTreeSet<ListenerId> = loads.iter().map(|l| l.listener).collect();
    // The memory-only listeners (the whole chain, separate and combined), unless a subset excludes them.
    used.extend(
        ListenerId::MEMORY_ONLY
            .into_iter()
            .filter(|id| settings.only.as_ref().is_none_or(|o| o.split(',').any(|o| id.name().contains(o)))),
    );
    let mtls_ids: Vec<ListenerId> = used.iter().copied().filter(|id| id.mtls()).collect();
    let mtls = Mtls::new(&mtls_ids);
    let sidecar = if mtls_ids.is_empty() {
        None
    } else {
        say("start the client sidecar (mTLS to the authorization listeners)");
        Some(mtls.start_sidecar(client_cpus)?)
    };
    let fixture = Fixture {
        tokens,
        repeated,
        unique_files,
        backends,
        _backend_procs: backend_procs,
        idp,
        filters: FilterSet::new(wasm_dir),
        mtls,
        sidecar,
    };
    let listeners: BTreeMap<ListenerId, Result<Setup, String>> = used
        .iter()
        .map(|&id| {
            let l =
                configs::listener(id, &fixture.filters, &fixture.tokens, &fixture.backends, &fixture.mtls)
                    .map_err(|e| format!("{e:#}"));
            (id, l)
        })
        .collect();

    let (memory, mut broken) =
        memory_and_validation(&listeners, &fixture, &loads, &settings.memory_workers, scratch);

    let sizes = match sizes_job.join() {
        Ok(Ok(sizes)) => sizes,
        Ok(Err(e)) => {
            notes.push(format!("artifact sizes not measured: {e}"));
            Vec::new()
        }
        Err(_) => {
            notes.push("artifact sizes not measured: the measuring thread panicked".into());
            Vec::new()
        }
    };
    say("artifact sizes done");

    // Exact and machine-independent, in the wasmtime host: seconds.
    say("callbacks and hostcalls per request (wasmtime host)");
    let calls_scratch = scratch.join("calls");
    let calls = std::fs::create_dir_all(&calls_scratch)
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::calls::measure(&fixture.filters.dir, &calls_scratch, 200))
        .map(|(rows, skipped)| {
            for s in skipped {
                notes.push(format!("callbacks per request of `{}` not counted: {}", s.load, s.reason));
            }
            rows
        })
        .unwrap_or_else(|e| {
            notes.push(format!("callbacks per request not counted: {e:#}"));
            Vec::new()
        });

    // The load Envoy: every listener that works, one worker, pinned apart from the load generator.
    let working: Vec<Setup> = listeners
        .iter()
        .filter(|(id, _)| !broken.contains_key(id) && loads.iter().any(|l| l.listener == **id))
        .filter_map(|(_, l)| l.as_ref().ok().cloned())
        .collect();
    let shape = LoadShape {
        threads: settings.threads,
        connections: settings.connections,
        cpus: client_cpus.map(str::to_owned),
    };
    let scripts = wrk::write_scripts(scratch)?;
    let mut results: Vec<LoadResult> = loads
        .iter()
        .map(|l| LoadResult {
            id: l.id.clone(),
            title: l.title(),
            listener: l.listener.name().to_owned(),
            describe: l.listener.describe().to_owned(),
            baseline: l.baseline.clone(),
            target: l.target,
            target_on_cpu: l.target_on_cpu,
            short: l.short,
            not_measured: broken.get(&l.listener).cloned(),
            samples: Vec::new(),
        })
        .collect();

    say(format!(
        "start the load Envoy with {} listeners, {} worker(s)",
        working.len(),
        settings.envoy_workers
    ));
    let cfg = envoy_config(working, &fixture, settings.envoy_workers);
    let envoy = cfg.start().context("meshwasm bench: the load Envoy did not start")?;
    if let Some(cpus) = envoy_cpus {
        machine::pin(envoy.pid(), cpus)?;
    }
    for l in &loads {
        if broken.contains_key(&l.listener) {
            continue;
        }
        if let Err(e) = validate(&envoy, l.listener, &fixture, l.token) {
            broken.insert(l.listener, format!("{e:#}"));
        }
    }
    for r in &mut results {
        if let Some(reason) = loads.iter().find(|l| l.id == r.id).and_then(|l| broken.get(&l.listener)) {
            r.not_measured = Some(reason.clone());
        }
    }

    let runnable: Vec<usize> = (0..loads.len()).filter(|&i| results[i].not_measured.is_none()).collect();
    let driver = Driver { envoy: &envoy, fixture: &fixture, shape, scripts, ticks_per_s };
    say(format!("warm-up: {}s per load, excluded", settings.warmup_s));
    for &i in &runnable {
        if settings.warmup_s > 0
            && let Err(e) = driver.measure(&loads[i], Duration::from_secs(settings.warmup_s), 0)
        {
            results[i].not_measured = Some(format!("warm-up failed: {e:#}"));
        }
    }
    for round in 1..=settings.rounds {
        say(format!("round {round}/{}", settings.rounds));
        for &i in &runnable {
            if results[i].not_measured.is_some() {
                continue;
            }
            match driver.measure(&loads[i], Duration::from_secs(settings.duration_s), round) {
                Ok(s) => {
                    say(format!(
                        "  {:<34} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
                        loads[i].id,
                        s.wrk.rps(),
                        s.wrk.p50_us,
                        s.wrk.p99_us,
                        s.wrk.error_count()
                    ));
                    if s.wrk.error_count() > 0 {
                        results[i].not_measured = Some(format!(
                            "round {round}: {} failed requests ({} non-2xx, {} timeouts, {} socket errors)",
                            s.wrk.error_count(),
                            s.wrk.status_errors,
                            s.wrk.timeouts,
                            s.wrk.connect_errors + s.wrk.read_errors + s.wrk.write_errors
                        ));
                    }
                    results[i].samples.push(s);
                }
                Err(e) => results[i].not_measured = Some(format!("round {round}: {e:#}")),
            }
        }
    }
    if !envoy.is_running() {
        notes.push("the load Envoy exited during the run: figures after that point are invalid".into());
    }
    envoy.stop();
    if let Some(sidecar) = &fixture.sidecar {
        sidecar.stop();
    }
    machine.load_average_after = machine::load_average();
    Ok(RunResults {
        settings,
        machine,
        loads: results,
        memory,
        sizes,
        calls,
        elapsed_s: started.elapsed().as_secs_f64(),
        notes,
    })
}
