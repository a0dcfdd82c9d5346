//! `make soak`: steady fixed-rate load through the full meshwasm chain in real Envoy (jwt-auth with
//! keys from the OpenID Provider, discovery from real etcd, balancer) for a long time, with registry
//! churn (an endpoint added or removed every second) and the IdP's signing keys rotated every minute.
//! Recorded every 5 s: Envoy's RSS, the number of Envoy stats (all, and the meshwasm filters' own
//! metrics), the wasm VMs alive, and the services published in shared data (discovery's debug
//! endpoint). Must hold: memory flat (the slope is stated), the counts bounded, zero errors.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meshwasm_bench::host_soak::slope;
use meshwasm_tests::envoy::{Cluster, Envoy};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::oidc::{BASIC_CLIENT, OidcOptions, OidcProvider, RS256_RESOURCE};
use serde_json::json;

use crate::faults::load::{self, Load, LoadSpec};
use crate::faults::mesh::{self, ETCD_PREFIX, JwtSpec, LISTENER, MeshSpec, ProcBackend};
use crate::faults::plot::{self, Line};
use crate::faults::run::Settings;

/// Largest RSS slope (KiB per minute, fitted after the first fifth of the run) that counts as flat:
/// 1 MiB per 10 minutes.
pub const FLAT_KIB_PER_MIN: f64 = 102.4;

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    rss_kib: u64,
    stats: usize,
    meshwasm_stats: usize,
    vms: u64,
    services: usize,
}

fn sample(envoy: &Envoy, t: f64, token: &str) -> Sample {
    let stats = envoy.stats().unwrap_or_default();
    let bearer = format!("Bearer {token}");
    let services = meshwasm_tests::process::http_request(
        envoy.listener_addr(LISTENER),
        "GET",
        "/meshwasm/discovery",
        &[("authorization", &bearer)],
        b"",
        Duration::from_secs(5),
    )
    .ok()
    .filter(|r| r.status == 200)
    .and_then(|r| r.json().ok())
    .and_then(|v| v.as_object().map(serde_json::Map::len))
    .unwrap_or(0);
    Sample {
        t,
        rss_kib: meshwasm_bench::machine::rss_kib(envoy.pid()).unwrap_or(0),
        stats: stats.len(),
        meshwasm_stats: stats.keys().filter(|k| k.contains("meshwasm_")).count(),
        vms: stats
            .iter()
            .filter(|(k, _)| k.starts_with("wasm.envoy.wasm.runtime.") && k.ends_with(".active"))
            .map(|(_, v)| *v)
            .sum(),
        services,
    }
}

pub fn run(settings: &Settings, duration: Duration, out: &Path) -> Result<bool> {
    let seconds = duration.as_secs().max(10);
    let load_before = meshwasm_bench::machine::load_average();
    let backends: Vec<ProcBackend> =
        ["A", "B", "C", "D"].iter().map(|n| ProcBackend::start(n)).collect::<Result<_>>()?;
    let etcd = Etcd::start()?;
    for b in &backends[..3] {
        etcd.put(&format!("{ETCD_PREFIX}{}", b.name), &b.entry())?;
    }
    let idp = OidcProvider::start(OidcOptions::default()).context("starting the OpenID Provider")?;
    let envoy = MeshSpec {
        jwt: Some(JwtSpec {
            issuer: idp.issuer().to_owned(),
            audience: RS256_RESOURCE.to_owned(),
            remote_jwks: json!({"unknown_kid_refetch_interval": "30s"}),
            cache_entries: 1024,
        }),
        source: json!({"etcd": {"cluster": "registry", "prefix": ETCD_PREFIX}}),
        service: mesh::fast_service(),
        outlier: json!({}),
        clusters: vec![
            Cluster::static_hosts("registry", &[etcd.addr()]),
            Cluster::static_hosts("idp", &[idp.addr()]),
        ],
        concurrency: settings.workers,
    }
    .start()?;
    let token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE))?;
    mesh::wait_serving(&envoy, Some(&token), 3)?;
    eprintln!("soak: {seconds} s at {} requests/s, load average {load_before}", settings.rate);

    let spec = LoadSpec {
        target: envoy.listener_addr(LISTENER),
        path: "/".into(),
        rate: settings.rate,
        duration: Duration::from_secs(seconds),
        workers: settings.connections,
        timeout: Duration::from_secs(10),
    };
    let load = Load::start(spec, Some(token.clone()));
    let mut token = token;
    // Registry churn: D registered / removed every second, from its own thread.
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churn = {
        let (stop, churned) = (stop.clone(), churned.clone());
        let key = format!("{ETCD_PREFIX}D");
        let entry = backends[3].entry();
        let addr = etcd.addr();
        std::thread::spawn(move || {
            let mut on = false;
            let start = Instant::now();
            let mut i = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_secs(i);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                on = !on;
                let body = if on {
                    json!({"key": b64(&key), "value": b64(&entry)})
                } else {
                    json!({"key": b64(&key)})
                };
                let path = if on { "/v3/kv/put" } else { "/v3/kv/deleterange" };
                let ok = meshwasm_tests::process::http_request(
                    addr,
                    "POST",
                    path,
                    &[("content-type", "application/json")],
                    body.to_string().as_bytes(),
                    Duration::from_secs(2),
                )
                .is_ok_and(|r| r.status == 200);
                if ok {
                    churned.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };
    let mut samples = Vec::new();
    let mut rotations = 0u32;
    let mut next_rotation = 60.0;
    let mut retire_at: Option<f64> = None;
    let mut next_sample = 0.0;
    loop {
        let t = load.elapsed().as_secs_f64();
        if t >= seconds as f64 {
            break;
        }
        if t >= next_sample {
            let s = sample(&envoy, t, &token);
            if samples.len() % 12 == 0 {
                eprintln!(
                    "  [{t:6.1} s] RSS {} KiB, {} stats ({} meshwasm), {} VMs, {} services",
                    s.rss_kib, s.stats, s.meshwasm_stats, s.vms, s.services
                );
            }
            samples.push(s);
            next_sample += 5.0;
        }
        if t >= next_rotation {
            idp.rotate_keys()?;
            token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE))?;
            load.set_token(Some(token.clone()));
            rotations += 1;
            retire_at = Some(t + 10.0);
            next_rotation += 60.0;
        }
        if retire_at.is_some_and(|r| t >= r) {
            idp.retire_old_keys()?;
            retire_at = None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let records = load.finish();
    let _ = churn.join();
    samples.push(sample(&envoy, seconds as f64, &token));
    let load_after = meshwasm_bench::machine::load_average();

    // Figures and bounds.
    let errors: Vec<_> = records.iter().filter(|r| !r.ok()).collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for r in &records {
        *statuses.entry(r.status).or_default() += 1;
    }
    let warm = seconds as f64 / 5.0;
    let steady: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.t >= warm).map(|s| (s.t / 60.0, s.rss_kib as f64)).collect();
    let kib_per_min = slope(&steady);
    let half = seconds as f64 / 2.0;
    let max_of = |f: fn(&Sample) -> usize, later: bool| {
        samples.iter().filter(|s| s.t >= warm && (s.t >= half) == later).map(f).max().unwrap_or(0)
    };
    let counts_ok = [
        (max_of(|s| s.stats, true), max_of(|s| s.stats, false)),
        (max_of(|s| s.meshwasm_stats, true), max_of(|s| s.meshwasm_stats, false)),
        (max_of(|s| s.services, true), max_of(|s| s.services, false)),
    ];
    let vms_max = samples.iter().map(|s| s.vms).max().unwrap_or(0);
    let vms_min = samples.iter().map(|s| s.vms).min().unwrap_or(0);
    let checks = [
        (
            format!("memory flat: RSS slope after the first {warm:.0} s ≤ {FLAT_KIB_PER_MIN:.1} KiB/min (1 MiB per 10 min)"),
            format!("{kib_per_min:+.1} KiB/min"),
            kib_per_min <= FLAT_KIB_PER_MIN,
        ),
        (
            "counts bounded: Envoy stats, meshwasm metrics and published services in the second half ≤ their maximum in the first half (after warm-up)".to_owned(),
            format!("stats {} vs {}, meshwasm metrics {} vs {}, services {} vs {}", counts_ok[0].0, counts_ok[0].1, counts_ok[1].0, counts_ok[1].1, counts_ok[2].0, counts_ok[2].1),
            counts_ok.iter().all(|(later, earlier)| later <= earlier),
        ),
        ("wasm VMs alive constant (no VM failed and was replaced)".to_owned(), format!("{vms_min} … {vms_max}"), vms_min == vms_max),
        ("zero errors".to_owned(), format!("{} errors", errors.len()), errors.is_empty()),
    ];
    let passed = checks.iter().all(|c| c.2);

    let mut md = String::new();
    let _ = writeln!(md, "# meshwasm soak\n");
    let _ = writeln!(
        md,
        "Generated by `make soak SOAK_SECONDS={seconds}` (`meshwasm-faults soak`, bench/src/soak.rs). Real Envoy \
         ({} workers) with jwt-auth (keys through OIDC discovery from the real OpenID Provider, verified-token cache \
         on), discovery (real etcd, `refresh: 250ms`) and balancer (round robin); an open-loop load of {} requests/s \
         over {} connections for {seconds} s. **Registry churn:** backend D registered / removed every second \
         ({} etcd writes). **Key rotation:** every 60 s the IdP rotates its signing keys and the load switches to a \
         token signed with the new key; 10 s later the old keys are retired from the JWKS ({rotations} rotations). \
         Every 5 s: Envoy's RSS (`/proc/<pid>/status` VmRSS), the number of Envoy stats (all, and the meshwasm \
         filters' metrics), the wasm VMs alive (`wasm.envoy.wasm.runtime.*.active`) and the services published in \
         shared data (discovery's debug endpoint). Envoy does not expose the number of shared-data keys or queues; \
         the published services and the meshwasm metrics stand for them. Load average before / after: `{load_before}` \
         / `{load_after}`.\n",
        settings.workers,
        settings.rate,
        settings.connections,
        churned.load(Ordering::Relaxed)
    );
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    let _ = writeln!(md, "| requests sent | {} |", records.len());
    let _ = writeln!(
        md,
        "| statuses | {} |",
        statuses.iter().map(|(s, n)| format!("{s} × {n}")).collect::<Vec<_>>().join(", ")
    );
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let _ = writeln!(md, "| Envoy RSS first / last sample | {} / {} KiB |", first.rss_kib, last.rss_kib);
        let _ = writeln!(md, "| Envoy stats first / last | {} / {} |", first.stats, last.stats);
        let _ = writeln!(
            md,
            "| meshwasm metrics first / last | {} / {} |",
            first.meshwasm_stats, last.meshwasm_stats
        );
    }
    let _ = writeln!(md, "| RSS slope after warm-up | {kib_per_min:+.1} KiB/min |");
    let _ = writeln!(md, "\n| bound | measured | |\n|---|---|---|");
    for (b, m, p) in &checks {
        let _ = writeln!(md, "| {b} | {m} | {} |", if *p { "✅" } else { "❌" });
    }
    // Errors by the token generation sent (0: the first token, n: the token after rotation n).
    let mut by_gen = std::collections::BTreeMap::<u32, std::collections::BTreeMap<u16, usize>>::new();
    for r in errors.iter() {
        *by_gen.entry(r.token_gen).or_default().entry(r.status).or_default() += 1;
    }
    if !by_gen.is_empty() {
        let _ =
            writeln!(md, "Errors by token generation (n: the token after the n-th rotation): {by_gen:?}\n");
        eprintln!("  errors by token generation: {by_gen:?}");
    }
    let per_s = load::per_second(&records, seconds);
    let failing: Vec<String> =
        per_s.iter().filter(|p| p.2 > 0).map(|p| format!("{} s: {}", p.0, p.2)).collect();
    let _ = writeln!(
        md,
        "\nErrors per second: {}\n",
        if failing.is_empty() { "none".to_owned() } else { failing.join(", ") }
    );
    let rss = plot::lines(
        "Envoy RSS during the soak",
        "MiB",
        &[Line {
            name: "Envoy RSS",
            color: "#1f77b4",
            points: samples.iter().map(|s| (s.t, s.rss_kib as f64 / 1024.0)).collect(),
        }],
    );
    let counts = plot::lines(
        "Counts during the soak",
        "count",
        &[
            Line {
                name: "Envoy stats",
                color: "#1f77b4",
                points: samples.iter().map(|s| (s.t, s.stats as f64)).collect(),
            },
            Line {
                name: "meshwasm metrics",
                color: "#2ca02c",
                points: samples.iter().map(|s| (s.t, s.meshwasm_stats as f64)).collect(),
            },
            Line {
                name: "wasm VMs",
                color: "#d62728",
                points: samples.iter().map(|s| (s.t, s.vms as f64)).collect(),
            },
        ],
    );
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("soak-rss.svg"), rss)?;
    std::fs::write(out.join("soak-counts.svg"), counts)?;
    let _ = writeln!(md, "![Envoy RSS](soak-rss.svg)\n\n![counts](soak-counts.svg)\n");
    let _ = writeln!(
        md,
        "Samples (every 5 s):\n\n| s | RSS KiB | stats | meshwasm metrics | VMs | services |\n|---|---|---|---|---|---|"
    );
    for s in &samples {
        let _ = writeln!(
            md,
            "| {:.0} | {} | {} | {} | {} | {} |",
            s.t, s.rss_kib, s.stats, s.meshwasm_stats, s.vms, s.services
        );
    }
    // The host-based section (`soak --host`) is kept as it was.
    if let Some(host) = std::fs::read_to_string(out.join("SOAK.md"))
        .ok()
        .and_then(|t| t.find(HOST_SECTION).map(|i| t[i..].to_owned()))
    {
        md.push_str(&host);
    }
    std::fs::write(out.join("SOAK.md"), md)?;
    for (b, m, p) in &checks {
        eprintln!("  {} {b} — measured {m}", if *p { "PASS" } else { "FAIL" });
    }
    eprintln!("wrote {}", out.join("SOAK.md").display());
    Ok(passed)
}

/// The heading of SOAK.md's host-based section (kept by the Envoy run, replaced by the host run).
const HOST_SECTION: &str = "## Host-based soak";

/// The largest slope of one VM's linear memory that counts as flat: one 64 KiB page a minute.
pub const FLAT_LINEAR_KIB_PER_MIN: f64 = 64.0;

/// `soak --host`: the same churn through meshwasm-host in-process, recording each VM's linear memory,
/// the shared-data keys, queues and metrics; writes SOAK.md's host section and soak-host-*.svg.
pub fn run_host(settings: &Settings, duration: Duration, out: &Path) -> Result<bool> {
    use meshwasm_bench::host_soak::{self, Options};
    let options =
        Options { duration, rate: settings.rate, workers: settings.workers as usize, ..Options::default() };
    eprintln!(
        "host soak: {} s at {} requests/s, {} workers, load average {}",
        duration.as_secs(),
        options.rate,
        options.workers,
        meshwasm_bench::machine::load_average()
    );
    let soak = host_soak::run(&options)?;
    let seconds = duration.as_secs();
    let warm = seconds as f64 / 5.0;
    let slopes = soak.memory_slopes();
    let worst = slopes.values().copied().fold(f64::MIN, f64::max);
    let (keys_a, keys_b) = soak.halves(|s| s.shared_keys);
    let (q_a, q_b) = soak.halves(|s| s.queues);
    let (m_a, m_b) = soak.halves(|s| s.metrics);
    let max_of = |f: fn(&host_soak::Sample) -> usize| soak.samples.iter().map(f).max().unwrap_or(0);
    let held = (max_of(|s| s.live_streams), max_of(|s| s.stream_contexts), max_of(|s| s.pending_calls));
    let end = soak.end.clone();
    let at_end = end.as_ref().map_or((usize::MAX, usize::MAX, usize::MAX), |e| {
        (e.live_streams, e.stream_contexts, e.pending_calls)
    });
    let failed = max_of(|s| s.failed_vms);
    let vm_count = soak.samples.last().map_or(0, |s| s.vm_memory.len());
    let checks = [
        (
            format!(
                "memory flat: every VM's linear memory slope after the first {warm:.0} s ≤ {FLAT_LINEAR_KIB_PER_MIN:.0} KiB/min (one page a minute)"
            ),
            format!("worst {worst:+.1} KiB/min; total growth after warm-up {} KiB", soak.memory_growth() / 1024),
            worst <= FLAT_LINEAR_KIB_PER_MIN,
        ),
        (
            "counts bounded: shared-data keys, queues and metrics in the second half ≤ their maximum in the first half (after warm-up)".to_owned(),
            format!("keys {keys_b} vs {keys_a}, queues {q_b} vs {q_a}, metrics {m_b} vs {m_a}"),
            keys_b <= keys_a && q_b <= q_a && m_b <= m_a,
        ),
        (
            "nothing left behind: once the last request finished, no stream and no stream context is held and at most one http call per VM (a registry poll) is pending".to_owned(),
            format!(
                "at the end: streams {}, stream contexts {}, pending calls {}; during the run at most {}, {}, {}",
                at_end.0, at_end.1, at_end.2, held.0, held.1, held.2
            ),
            at_end.0 == 0 && at_end.1 == 0 && at_end.2 <= vm_count,
        ),
        ("no VM failed".to_owned(), format!("{failed} failed"), failed == 0),
        ("zero errors".to_owned(), format!("{} errors", soak.errors.len()), soak.errors.is_empty()),
    ];
    let passed = checks.iter().all(|c| c.2);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "{HOST_SECTION}
"
    );
    let _ = writeln!(
        md,
        "Generated by `make soak-host SOAK_SECONDS={seconds}` (`meshwasm-faults soak --host`, bench/src/host_soak.rs). \
         The same chain and churn as above, run in meshwasm-host in-process instead of Envoy ({} workers and the \
         main thread, as Envoy runs them): jwt-auth (keys from the real OpenID Provider), discovery (real etcd, \
         `refresh: 250ms`) and balancer; requests paced at {} per second (the upstream answer is scripted); \
         backend D registered / removed every second ({} etcd writes); the signing keys rotated every 60 s and the \
         old ones retired 10 s later ({} rotations). The host reads what Envoy does not expose: every 5 s, each \
         VM's linear memory, the shared-data keys and queues (both VM ids), the metrics, and the streams, stream \
         contexts and http calls each worker still holds. Linear memory only grows (in 64 KiB pages), so a leak \
         in a filter shows as steps that keep coming. Load average before / after: `{}` / `{}`.\n",
        options.workers, options.rate, soak.churn_writes, soak.rotations, soak.load_before, soak.load_after
    );
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    let _ = writeln!(md, "| requests sent | {} |", soak.requests);
    let _ = writeln!(
        md,
        "| statuses | {} |",
        soak.statuses.iter().map(|(s, n)| format!("{s} × {n}")).collect::<Vec<_>>().join(", ")
    );
    if let (Some(first), Some(last)) = (soak.samples.first(), soak.samples.last()) {
        let kib = |s: &host_soak::Sample| s.vm_memory.values().sum::<u64>() / 1024;
        let _ = writeln!(
            md,
            "| linear memory, all VMs, first / last sample | {} / {} KiB |",
            kib(first),
            kib(last)
        );
        let _ =
            writeln!(md, "| shared-data keys first / last | {} / {} |", first.shared_keys, last.shared_keys);
        let _ = writeln!(md, "| queues first / last | {} / {} |", first.queues, last.queues);
        let _ = writeln!(md, "| metrics first / last | {} / {} |", first.metrics, last.metrics);
    }
    for (vm, slope) in &slopes {
        let last = soak.samples.last().and_then(|s| s.vm_memory.get(vm)).copied().unwrap_or(0);
        let _ = writeln!(
            md,
            "| `{vm}`: linear memory at the end, slope after warm-up | {} KiB, {slope:+.1} KiB/min |",
            last / 1024
        );
    }
    let _ = writeln!(md, "\n| bound | measured | |\n|---|---|---|");
    for (b, m, p) in &checks {
        let _ = writeln!(md, "| {b} | {m} | {} |", if *p { "✅" } else { "❌" });
    }
    if !soak.errors.is_empty() {
        let shown: Vec<String> = soak.errors.iter().take(20).map(|(t, s)| format!("{t:.1} s: {s}")).collect();
        let _ = writeln!(md, "\nErrors (first 20): {}\n", shown.join(", "));
    }
    const COLORS: [&str; 8] =
        ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
    let names: Vec<String> =
        soak.samples.last().map(|s| s.vm_memory.keys().cloned().collect()).unwrap_or_default();
    let memory_lines: Vec<Line<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Line {
            name: n,
            color: COLORS[i % COLORS.len()],
            points: soak
                .samples
                .iter()
                .map(|s| (s.t, s.vm_memory.get(n).copied().unwrap_or(0) as f64 / 1024.0))
                .collect(),
        })
        .collect();
    let memory = plot::lines("Linear memory per VM (meshwasm-host soak)", "KiB", &memory_lines);
    let counts = plot::lines(
        "Counts during the host soak",
        "count",
        &[
            Line {
                name: "shared-data keys",
                color: "#1f77b4",
                points: soak.samples.iter().map(|s| (s.t, s.shared_keys as f64)).collect(),
            },
            Line {
                name: "queues",
                color: "#ff7f0e",
                points: soak.samples.iter().map(|s| (s.t, s.queues as f64)).collect(),
            },
            Line {
                name: "metrics",
                color: "#2ca02c",
                points: soak.samples.iter().map(|s| (s.t, s.metrics as f64)).collect(),
            },
        ],
    );
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("soak-host-memory.svg"), memory)?;
    std::fs::write(out.join("soak-host-counts.svg"), counts)?;
    let _ = writeln!(
        md,
        "\n![linear memory per VM](soak-host-memory.svg)\n\n![host counts](soak-host-counts.svg)\n"
    );
    let _ = writeln!(md, "Samples (every 5 s), linear memory in KiB per VM:\n");
    let _ = writeln!(
        md,
        "| s | {} | keys | queues | metrics | pending calls |\n|---|{}---|---|---|---|",
        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" | "),
        "---|".repeat(names.len())
    );
    for s in &soak.samples {
        let _ = writeln!(
            md,
            "| {:.0} | {} | {} | {} | {} | {} |",
            s.t,
            names
                .iter()
                .map(|n| (s.vm_memory.get(n).copied().unwrap_or(0) / 1024).to_string())
                .collect::<Vec<_>>()
                .join(" | "),
            s.shared_keys,
            s.queues,
            s.metrics,
            s.pending_calls
        );
    }
    // Replace the host section of SOAK.md (or append it).
    let path = out.join("SOAK.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# meshwasm soak\n\n".to_owned());
    if let Some(i) = text.find(HOST_SECTION) {
        text.truncate(i);
    }
    if !text.ends_with("\n\n") {
        text.push('\n');
    }
    text.push_str(&md);
    std::fs::write(&path, text)?;
    for (b, m, p) in &checks {
        eprintln!("  {} {b} — measured {m}", if *p { "PASS" } else { "FAIL" });
    }
    eprintln!("wrote {}", path.display());
    Ok(passed)
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 1.0)]), 0.0);
        assert!(slope(&[(0.0, 5.0), (1.0, 4.0), (2.0, 6.0), (3.0, 5.0)]).abs() < 0.5);
    }
}
