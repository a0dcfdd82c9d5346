//! The Markdown report, its SVG plots and the raw `results.json`.

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;

use crate::results::{LoadResult, RunResults, Spread};
use crate::svg::{self, RefLine, Series};

fn f0(v: f64) -> String {
    format!("{v:.0}")
}

fn ratio(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.min == s.max => format!("{:.2}", s.median),
        Some(s) => format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "–".into(),
    }
}

fn spread0(s: Option<Spread>) -> String {
    match s {
        Some(s) if s.min == s.max => f0(s.median),
        Some(s) => format!("{} ({}–{})", f0(s.median), f0(s.min), f0(s.max)),
        None => "–".into(),
    }
}

fn median(s: Option<Spread>, digits: usize) -> String {
    s.map(|s| format!("{:.*}", digits, s.median)).unwrap_or_else(|| "–".into())
}

fn kb(bytes: u64) -> String {
    format!("{:.1} KB", bytes as f64 / 1000.0)
}

fn show_mib(v: Option<f64>, signed: bool) -> String {
    match v {
        Some(v) if signed => format!("{v:+.1}"),
        Some(v) => format!("{v:.1}"),
        None => "–".into(),
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ").replace('|', "\\|")
}

/// Ratio of `l` to its baseline and to passthrough.
fn ratios(r: &RunResults, l: &LoadResult) -> (Option<Spread>, Option<Spread>) {
    let to_base = l.baseline.as_deref().and_then(|b| r.load(b)).and_then(|b| l.ratio_to(b));
    let to_pass = r.load("passthrough").filter(|p| p.id != l.id).and_then(|p| l.ratio_to(p));
    (to_base, to_pass)
}

/// The ratio a load's target is judged on: the Envoy CPU-cost ratio (issue 11), or the requests/s
/// ratio for results saved before targets moved to CPU cost.
fn judged_ratio(r: &RunResults, l: &LoadResult) -> Option<Spread> {
    let base = l.baseline.as_deref().and_then(|b| r.load(b))?;
    if l.target_on_cpu { l.cpu_ratio_to(base) } else { l.ratio_to(base) }
}

/// Why a load (or its baseline) has no figure, if so.
fn unmeasured(r: &RunResults, l: &LoadResult) -> Option<String> {
    let base = l.baseline.as_deref().and_then(|b| r.load(b));
    match (&l.not_measured, base.and_then(|b| b.not_measured.as_ref())) {
        (Some(w), _) => Some(format!("not measured: {}", one_line(w))),
        (None, Some(w)) => Some(format!("baseline not measured: {}", one_line(w))),
        _ => None,
    }
}

fn verdict(ratio: Option<Spread>, target: Option<f64>) -> &'static str {
    match (ratio, target) {
        (Some(r), Some(t)) if r.median >= t => "meets target",
        (Some(_), Some(_)) => "**below target**",
        (Some(_), None) => "no target",
        (None, _) => "not measured",
    }
}

/// A bound verdict: `value ≤ bound`.
fn at_most(value: Option<f64>, bound: f64) -> &'static str {
    match value {
        Some(v) if v <= bound => "meets target",
        Some(_) => "**misses target**",
        None => "not measured",
    }
}

const MIB: f64 = 1024.0;

/// VmRSS of `listener`'s Envoy at `workers`, MiB.
fn rss_mib(r: &RunResults, listener: &str, workers: u32) -> Option<f64> {
    r.memory
        .iter()
        .find(|m| m.listener == listener && m.workers == workers)
        .and_then(|m| m.rss_kib.as_ref().ok())
        .map(|&k| k as f64 / MIB)
}

/// RSS over the passthrough-only Envoy at the same worker count, MiB.
fn delta_mib(r: &RunResults, listener: &str, workers: u32) -> Option<f64> {
    if listener == "passthrough" {
        return None;
    }
    Some(rss_mib(r, listener, workers)? - rss_mib(r, "passthrough", workers)?)
}

/// The largest worker count memory was read at (the per-extra-worker figure spans 1 to it).
fn most_workers(r: &RunResults) -> u32 {
    r.settings.memory_workers.iter().copied().max().unwrap_or(1)
}

/// What one more worker adds: (Δ at the most workers − Δ at 1) ÷ the extra workers, MiB.
fn per_extra_worker(r: &RunResults, listener: &str) -> Option<f64> {
    let n = most_workers(r);
    (n > 1).then(|| Some((delta_mib(r, listener, n)? - delta_mib(r, listener, 1)?) / f64::from(n - 1)))?
}

/// Why `listener`'s memory was not read, if so.
fn memory_error<'a>(r: &'a RunResults, listener: &str) -> Option<&'a str> {
    r.memory
        .iter()
        .filter(|m| m.listener == listener)
        .find_map(|m| m.rss_kib.as_ref().err())
        .map(String::as_str)
}

/// Issue 11's memory target: the whole chain over passthrough.
pub const CHAIN_MEMORY_MIB: f64 = 30.0;
/// … and per extra worker.
pub const CHAIN_MEMORY_PER_WORKER_MIB: f64 = 1.0;
/// The whole-chain memory listeners: (listener, what it is).
const WHOLE_CHAINS: [(&str, &str); 2] = [
    ("whole-chain", "separate artifacts (5 VMs per worker)"),
    ("whole-chain-combined", "combined meshwasm.wasm (1 VM per worker)"),
];

/// The artifacts shipped to users, each with a size target.
fn shipped(file: &str) -> bool {
    file == "meshwasm.wasm"
        || ["jwt_auth", "token_injector", "discovery", "balancer", "authz"]
            .iter()
            .any(|n| file == format!("meshwasm_{n}.wasm"))
}

/// Writes REPORT.md, the plots and results.json into `out`.
pub fn write(r: &RunResults, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(out.join("throughput-ratio.svg"), throughput_plot(r))?;
    std::fs::write(out.join("latency.svg"), latency_plot(r))?;
    std::fs::write(out.join("envoy-cpu.svg"), cpu_plot(r))?;
    std::fs::write(out.join("REPORT.md"), markdown(r))?;
    Ok(())
}

fn markdown(r: &RunResults) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut md = String::new();
    let _ = writeln!(md, "# meshwasm benchmark report\n");
    let _ = writeln!(
        md,
        "Produced by `{}` on {} ({} run, {:.0} s). Every figure below was measured side by side in this one run: \
         absolute requests/s on a shared 2-core machine are noisy, the **ratios** are the result. \
         How to read it: [bench/README.md](../README.md).\n",
        if s.quick { "make bench-quick" } else { "make bench" },
        m.date_utc,
        if s.quick { "quick" } else { "full" },
        r.elapsed_s
    );

    let busiest = [&m.load_average_before, &m.load_average_after]
        .iter()
        .filter_map(|l| l.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0f64, f64::max);
    if busiest > m.nproc as f64 {
        let _ = writeln!(
            md,
            "> **Busy machine:** the 1-minute load average reached {busiest:.1} on {} CPUs during this run (other \
             work was running), so Envoy did not get its CPU to itself and requests/s vary widely between rounds. \
             The round-paired ratios absorb part of that; the *Envoy CPU-cost ratio* (CPU time per request, \
             insensitive to being starved) is the steadier figure.\n",
            m.nproc
        );
    }
    targets_summary(r, &mut md);

    let _ = writeln!(md, "## Ratios against the targets\n");
    let _ = writeln!(
        md,
        "Judged on the **Envoy CPU-cost ratio** (issue 11: median of the rounds, 1 worker): the baseline's Envoy \
         CPU time per request ÷ this configuration's, paired by round. It is the requests/s ratio Envoy would \
         show if it alone were the bottleneck; the requests/s ratio itself is in the last column (on a shared \
         machine, or when the load generator limits the run, it flatters the slower configuration).\n"
    );
    let _ = writeln!(
        md,
        "| meshwasm configuration | judged against | Envoy CPU-cost ratio, median (min–max over rounds) | target | verdict | requests/s ratio, median (min–max) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for l in r.loads.iter().filter(|l| l.baseline.is_some()) {
        let base = l.baseline.as_deref().and_then(|b| r.load(b));
        let why = unmeasured(r, l).unwrap_or_else(|| verdict(judged_ratio(r, l), l.target).to_owned());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            l.title,
            base.map(|b| b.title.as_str()).unwrap_or("–"),
            ratio(base.and_then(|b| l.cpu_ratio_to(b))),
            l.target
                .map(|t| format!("≥ {t:.2}×{}", if l.target_on_cpu { " CPU-cost" } else { " requests/s" }))
                .unwrap_or_else(|| "–".into()),
            why,
            ratio(base.and_then(|b| l.ratio_to(b))),
        );
    }
    let _ = writeln!(
        md,
        "\n*noop* rows are the wasm floor: a filter that does nothing, exporting every callback (what the Rust \
         SDK links) or only request headers (what `make wasm`'s post-link step leaves a filter that implements \
         only those). The *service form* runs discovery as an `envoy.bootstrap.wasm` singleton service, off the \
         request path; the filter form is for platforms that load only HTTP filters. There is no *fused* row: \
         the combined `meshwasm.wasm` has no fused mode ([filters/meshwasm/README.md](../../filters/meshwasm/README.md#no-fused-mode) \
         says why).\n"
    );

    let _ = writeln!(md, "\n## Throughput and latency per configuration\n");
    let _ = writeln!(
        md,
        "Requests/s are min/median/max over {} interleaved rounds of {} s (half that for the loads no target depends \
         on: {}); latencies and Envoy CPU are medians over rounds. \
         *Envoy CPU/req* is Envoy's user+system CPU time during a round divided by its requests: the cost the \
         filter adds, independent of whether Envoy or the load generator was the bottleneck.\n",
        s.rounds,
        s.duration_s,
        {
            let short: Vec<&str> = r.loads.iter().filter(|l| l.short).map(|l| l.title.as_str()).collect();
            if short.is_empty() { "none in this run".to_owned() } else { short.join(", ") }
        }
    );
    let _ = writeln!(
        md,
        "| configuration | filter chain | requests/s | ratio to baseline | ratio to passthrough | p50 µs | p90 µs | p99 µs | Envoy CPU µs/req | Envoy CPU % |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for l in &r.loads {
        if let Some(why) = &l.not_measured {
            let _ = writeln!(
                md,
                "| {} | {} | not measured: {} | | | | | | | |",
                l.title,
                l.describe,
                one_line(why)
            );
            continue;
        }
        let (to_base, to_pass) = ratios(r, l);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.title,
            l.describe,
            spread0(l.rps()),
            if l.baseline.is_some() { ratio(to_base) } else { "(baseline)".into() },
            if l.id == "passthrough" { "1 (baseline)".into() } else { ratio(to_pass) },
            median(l.p50_us(), 0),
            median(l.p90_us(), 0),
            median(l.p99_us(), 0),
            median(l.cpu_us_per_request(), 1),
            median(l.cpu_percent(), 0),
        );
    }
    let _ = writeln!(md, "\n![ratios to baselines](throughput-ratio.svg)\n");
    let _ = writeln!(md, "![latency percentiles](latency.svg)\n");
    let _ = writeln!(md, "![Envoy CPU per request](envoy-cpu.svg)\n");

    let _ = writeln!(md, "## Memory\n");
    if r.memory.is_empty() {
        let _ = writeln!(md, "Not measured in this run.\n");
    } else {
        let n = most_workers(r);
        let _ = writeln!(
            md,
            "Envoy resident set size (VmRSS) with only the named listener configured (and its Wasm services), after \
             start-up and 200 warm requests, at 1 and {n} workers. Δ is against the passthrough-only Envoy at the same \
             worker count. Each worker runs its own copy of every wasm VM of an HTTP filter (a singleton service has \
             one VM on the main thread), so *per extra worker* ({}) is what one more copy of the \
             chain's VMs costs. *Heap* is Envoy's own allocator accounting (admin `/memory`, MiB); V8's wasm memory \
             is outside it. *whole-chain* listeners are read for memory only: jwt-auth + authz + token-injector + \
             discovery + balancer, the issue's whole chain.\n",
            if n > 2 {
                format!("(Δ at {n} − Δ at 1) ÷ {}", n - 1)
            } else {
                format!("Δ at {n} − Δ at 1")
            }
        );
        if n < 2 {
            let _ = writeln!(
                md,
                "This run read memory at {:?} worker(s) only (quick runs: 1; `make bench` reads 1 and 4), so there is \
                 no per-extra-worker figure.\n",
                r.settings.memory_workers
            );
        }
        let _ = writeln!(md, "### Memory against the targets\n");
        let _ = writeln!(
            md,
            "Issue 11: the whole chain adds ≤ {CHAIN_MEMORY_MIB:.0} MiB RSS over passthrough at 1 worker, and ≤ \
             {CHAIN_MEMORY_PER_WORKER_MIB:.0} MiB per extra worker.\n"
        );
        let _ = writeln!(
            md,
            "| whole chain | Δ 1 worker MiB | verdict (≤ {CHAIN_MEMORY_MIB:.0} MiB) | per extra worker MiB | verdict (≤ {CHAIN_MEMORY_PER_WORKER_MIB:.0} MiB) |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for (l, what) in WHOLE_CHAINS {
            if let Some(err) = memory_error(r, l) {
                let _ = writeln!(md, "| {l}: {what} | not measured: {} | | | |", one_line(err));
                continue;
            }
            let d1 = delta_mib(r, l, 1);
            let pw = per_extra_worker(r, l);
            let _ = writeln!(
                md,
                "| {l}: {what} | {} | {} | {} | {} |",
                show_mib(d1, true),
                at_most(d1, CHAIN_MEMORY_MIB),
                show_mib(pw, true),
                if n < 2 { "not measured (1 worker only)" } else { at_most(pw, CHAIN_MEMORY_PER_WORKER_MIB) }
            );
        }
        let _ = writeln!(md, "\n### Every configuration\n");
        let _ = writeln!(
            md,
            "| listener | RSS 1 worker MiB | Δ 1 worker | RSS {n} workers MiB | Δ {n} workers | per extra worker | heap 1 / {n} workers |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let mut listeners: Vec<&str> = Vec::new();
        for row in &r.memory {
            if !listeners.contains(&row.listener.as_str()) {
                listeners.push(&row.listener);
            }
        }
        for l in listeners {
            if let Some(err) = memory_error(r, l) {
                let _ = writeln!(md, "| {l} | not measured: {} | | | | | |", one_line(err));
                continue;
            }
            let heap = |w: u32| {
                r.memory
                    .iter()
                    .find(|m| m.listener == l && m.workers == w)
                    .and_then(|m| m.allocated_bytes)
                    .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = writeln!(
                md,
                "| {l} | {} | {} | {} | {} | {} | {} / {} |",
                show_mib(rss_mib(r, l, 1), false),
                show_mib(delta_mib(r, l, 1), true),
                if n > 1 { show_mib(rss_mib(r, l, n), false) } else { "–".into() },
                if n > 1 { show_mib(delta_mib(r, l, n), true) } else { "–".into() },
                show_mib(per_extra_worker(r, l), true),
                heap(1),
                if n > 1 { heap(n) } else { "–".into() }
            );
        }
        let _ = writeln!(
            md,
            "\nEach VM's linear memory: Envoy exposes no per-VM statistic; the initial linear memory each module \
             declares is in the size table below (the Rust allocator grows it on demand), and *per extra worker* \
             above bounds what one more VM copy really uses.\n"
        );
    }

    let _ = writeln!(md, "## Callbacks and hostcalls per request\n");
    let _ = writeln!(
        md,
        "The per-callback table: wasm entries and hostcalls each filter makes per request, counted exactly in the \
         meshwasm wasmtime host for the same artifacts and configurations. [CALLS.md](CALLS.md) has the same table \
         (`meshwasm-bench calls`) with the before/after of the post-link step and where the bytes go (twiggy).\n"
    );
    if r.calls.is_empty() {
        let _ = writeln!(md, "Not counted (see the notes).\n");
    } else {
        let _ = writeln!(md, "{}", crate::calls::markdown(&r.calls));
    }

    let _ = writeln!(md, "## Artifact sizes\n");
    let _ = writeln!(
        md,
        "Every `.wasm` in the artifact directory (`cargo build --profile wasm --target wasm32-wasip1`), raw and after \
         `wasm-opt -Oz --strip-debug` ({}; flags {}). Targets (issue 11, after wasm-opt): jwt-auth ≤ 500 KB, every \
         other filter ≤ 200 KB, the combined `meshwasm.wasm` ≤ 1 MB (our own target: it replaces five artifacts \
         whose targets add up to 1.3 MB and links once the code each of them carries a copy of: the proxy-wasm \
         SDK, alloc/core, serde_json, float formatting, the filter runtime). KB = 1000 bytes. \
         `meshwasm_noop*.wasm` and `meshwasm_probe.wasm` are test modules, not shipped.\n",
        m.wasm_opt_version,
        crate::sizes::WASM_OPT_FEATURES.join(" ")
    );
    if r.sizes.is_empty() {
        let _ = writeln!(md, "No artifacts found: run `make wasm`.\n");
    } else {
        let _ = writeln!(
            md,
            "| artifact | raw | after wasm-opt | target | within target | initial linear memory |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for a in &r.sizes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | ≤ {} | {} | {} |",
                a.file,
                kb(a.raw_bytes),
                match &a.opt_bytes {
                    Ok(b) => kb(*b),
                    Err(e) => format!("failed: {}", one_line(e)),
                },
                kb(a.target_bytes),
                if !a.is_proxy_wasm {
                    "not a filter yet (no `proxy_abi_version_*` export)"
                } else if a.within_target() {
                    "yes"
                } else {
                    "**no**"
                },
                a.initial_pages.map(|p| format!("{p} pages ({} KiB)", p * 64)).unwrap_or_else(|| "–".into())
            );
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## Machine and method\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPUs (nproc) | {} × {} |", m.nproc, m.cpu_model);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| Envoy | {} |", m.envoy_version);
    let _ = writeln!(md, "| load generator | {} |", m.wrk_version);
    let _ = writeln!(md, "| Envoy workers (`--concurrency`) | {} |", s.envoy_workers);
    let _ = writeln!(
        md,
        "| wrk | `-t{} -c{} -d{}s --latency`, HTTP/1.1 keep-alive over loopback, `GET /` |",
        s.threads, s.connections, s.duration_s
    );
    let _ = writeln!(
        md,
        "| rounds | {} interleaved (every configuration once per round, same order) |",
        s.rounds
    );
    let _ = writeln!(md, "| warm-up | {} s per configuration before round 1, excluded |", s.warmup_s);
    let _ = writeln!(
        md,
        "| CPU pinning | {} |",
        match &s.pinning {
            Some((e, c)) => format!("Envoy on CPU {e}; wrk and the backends on CPU {c} (`taskset`)"),
            None => "none".into(),
        }
    );
    let _ = writeln!(
        md,
        "| backends | {} minimal keep-alive HTTP/1.1 servers (2-byte body), child processes |",
        s.backends
    );
    let _ = writeln!(
        md,
        "| tokens | RS256 (RSA-2048) and ES256 (P-256); repeated = one token on every request; unique = {} distinct \
         tokens cycled by a wrk Lua script (more than either verified-token cache holds) |",
        s.unique_tokens
    );
    let _ =
        writeln!(md, "| load average | {} before, {} after |", m.load_average_before, m.load_average_after);
    if let Some(only) = &s.only {
        let _ = writeln!(md, "| subset | only loads matching `{only}` (and their baselines) |");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

/// Every issue-11 target in one table, met or missed, before the details.
fn targets_summary(r: &RunResults, md: &mut String) {
    let _ = writeln!(md, "## Issue 11 targets\n");
    let _ = writeln!(
        md,
        "Every target of issue 11 with this run's figure; the sections below have the details. CPU-cost ratios are \
         medians over the rounds (min–max in the next section).\n"
    );
    let _ = writeln!(md, "| target | configuration | measured | verdict |");
    let _ = writeln!(md, "|---|---|---|---|");
    for l in r.loads.iter().filter(|l| l.target.is_some()) {
        let t = l.target.unwrap_or_default();
        let base = l.baseline.as_deref().and_then(|b| r.load(b)).map(|b| b.title.as_str()).unwrap_or("–");
        let judged = judged_ratio(r, l);
        let (measured, why) = match unmeasured(r, l) {
            Some(w) => ("–".to_owned(), w),
            None => (
                judged.map(|s| format!("{:.2}×", s.median)).unwrap_or_else(|| "–".into()),
                verdict(judged, l.target).to_owned(),
            ),
        };
        let _ = writeln!(
            md,
            "| ≥ {t:.2}× {} of {base} | {} | {measured} | {why} |",
            if l.target_on_cpu { "Envoy CPU-cost" } else { "requests/s" },
            l.title
        );
    }
    for (l, what) in WHOLE_CHAINS {
        let err = memory_error(r, l).map(|e| format!("not measured: {}", one_line(e)));
        let d1 = delta_mib(r, l, 1);
        let pw = per_extra_worker(r, l);
        let _ = writeln!(
            md,
            "| whole chain ≤ {CHAIN_MEMORY_MIB:.0} MiB RSS over passthrough, 1 worker | {l}: {what} | {} | {} |",
            show_mib(d1, true) + if d1.is_some() { " MiB" } else { "" },
            err.clone().unwrap_or_else(|| at_most(d1, CHAIN_MEMORY_MIB).to_owned())
        );
        let _ = writeln!(
            md,
            "| whole chain ≤ {CHAIN_MEMORY_PER_WORKER_MIB:.0} MiB per extra worker | {l} | {} | {} |",
            show_mib(pw, true) + if pw.is_some() { " MiB" } else { "" },
            err.unwrap_or_else(|| if most_workers(r) < 2 {
                "not measured (memory read at 1 worker only)".to_owned()
            } else {
                at_most(pw, CHAIN_MEMORY_PER_WORKER_MIB).to_owned()
            })
        );
    }
    let mut seen_combined = false;
    for a in r.sizes.iter().filter(|a| shipped(&a.file)) {
        seen_combined |= a.file == "meshwasm.wasm";
        let (measured, why) = match &a.opt_bytes {
            Ok(b) => {
                (kb(*b), if a.within_target() { "meets target" } else { "**misses target**" }.to_owned())
            }
            Err(e) => (format!("{} raw", kb(a.raw_bytes)), format!("wasm-opt not run: {}", one_line(e))),
        };
        let _ =
            writeln!(md, "| ≤ {} after wasm-opt -Oz | {} | {measured} | {why} |", kb(a.target_bytes), a.file);
    }
    if !seen_combined {
        let _ = writeln!(
            md,
            "| ≤ {} after wasm-opt -Oz | meshwasm.wasm (combined) | – | not measured: not in the artifact directory (`make wasm`) |",
            kb(crate::sizes::COMBINED_TARGET)
        );
    }
    let _ = writeln!(md);
}

fn categories(r: &RunResults) -> Vec<String> {
    r.loads.iter().map(|l| l.title.clone()).collect()
}

fn throughput_plot(r: &RunResults) -> String {
    let series = |name: &str, color| Series {
        name: name.into(),
        color,
        values: vec![],
        whiskers: vec![],
        not_applicable: vec![],
    };
    let mut pass = series("requests/s to passthrough", "#1f77b4");
    let mut base = series("requests/s to its baseline", "#d62728");
    let mut cpu = series("Envoy CPU-cost to its baseline (judged)", "#2ca02c");
    for l in &r.loads {
        base.not_applicable.push(l.baseline.is_none());
        cpu.not_applicable.push(l.baseline.is_none());
        pass.not_applicable.push(false);
        let (b, p) = ratios(r, l);
        let p = if l.id == "passthrough" && l.measured() {
            Some(Spread { min: 1.0, median: 1.0, max: 1.0 })
        } else {
            p
        };
        let c = l.baseline.as_deref().and_then(|b| r.load(b)).and_then(|b| l.cpu_ratio_to(b));
        for (s, v) in [(&mut pass, p), (&mut base, b), (&mut cpu, c)] {
            s.values.push(v.map(|s| s.median));
            s.whiskers.push(v.map(|s| (s.min, s.max)));
        }
    }
    svg::grouped_hbars(
        "Ratios (median, whiskers min–max over rounds)",
        "ratio (1.0 = as cheap / fast as the baseline)",
        &categories(r),
        &[pass, base, cpu],
        &[
            RefLine { x: 1.0, label: "1.0".into(), color: "#000" },
            RefLine { x: 0.9, label: "0.9".into(), color: "#d62728" },
        ],
    )
}

fn latency_plot(r: &RunResults) -> String {
    let mk = |name: &str, color: &'static str, f: &dyn Fn(&LoadResult) -> Option<Spread>| Series {
        name: name.into(),
        color,
        values: r
            .loads
            .iter()
            .map(|l| l.not_measured.is_none().then(|| f(l)).flatten().map(|s| s.median))
            .collect(),
        whiskers: r.loads.iter().map(|_| None).collect(),
        not_applicable: r.loads.iter().map(|_| false).collect(),
    };
    svg::grouped_hbars(
        "Latency percentiles (median over rounds)",
        "µs",
        &categories(r),
        &[
            mk("p50", "#2ca02c", &LoadResult::p50_us),
            mk("p90", "#ff7f0e", &LoadResult::p90_us),
            mk("p99", "#9467bd", &LoadResult::p99_us),
        ],
        &[],
    )
}

fn cpu_plot(r: &RunResults) -> String {
    let series = Series {
        name: "Envoy CPU µs per request".into(),
        color: "#8c564b",
        values: r
            .loads
            .iter()
            .map(|l| l.not_measured.is_none().then(|| l.cpu_us_per_request()).flatten().map(|s| s.median))
            .collect(),
        whiskers: r
            .loads
            .iter()
            .map(|l| {
                l.not_measured.is_none().then(|| l.cpu_us_per_request()).flatten().map(|s| (s.min, s.max))
            })
            .collect(),
        not_applicable: r.loads.iter().map(|_| false).collect(),
    };
    svg::grouped_hbars(
        "Envoy CPU time per request (median, whiskers min–max)",
        "µs of Envoy CPU per request",
        &categories(r),
        &[series],
        &[],
    )
}
