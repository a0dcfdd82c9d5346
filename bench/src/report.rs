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

fn one_line(s: &str) -> String {
    s.replace('\n', " ").replace('|', "\\|")
}

/// Ratio of `l` to its baseline and to passthrough.
fn ratios(r: &RunResults, l: &LoadResult) -> (Option<Spread>, Option<Spread>) {
    let to_base = l.baseline.as_deref().and_then(|b| r.load(b)).and_then(|b| l.ratio_to(b));
    let to_pass = r.load("passthrough").filter(|p| p.id != l.id).and_then(|p| l.ratio_to(p));
    (to_base, to_pass)
}

fn verdict(ratio: Option<Spread>, target: Option<f64>) -> &'static str {
    match (ratio, target) {
        (Some(r), Some(t)) if r.median >= t => "meets target",
        (Some(_), Some(_)) => "**below target**",
        (Some(_), None) => "no target",
        (None, _) => "not measured",
    }
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
    let _ = writeln!(md, "## Ratios against the targets\n");
    let _ = writeln!(
        md,
        "| meshwasm configuration | judged against | requests/s ratio, median (min–max over rounds) | target | verdict | Envoy CPU-cost ratio |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for l in r.loads.iter().filter(|l| l.baseline.is_some()) {
        let (to_base, _) = ratios(r, l);
        let base = l.baseline.as_deref().and_then(|b| r.load(b));
        let why = match (&l.not_measured, base.and_then(|b| b.not_measured.as_ref())) {
            (Some(w), _) => format!("not measured: {}", one_line(w)),
            (None, Some(w)) => format!("baseline not measured: {}", one_line(w)),
            _ if l.target_on_cpu => verdict(base.and_then(|b| l.cpu_ratio_to(b)), l.target).to_owned(),
            _ => verdict(to_base, l.target).to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            l.title,
            base.map(|b| b.title.as_str()).unwrap_or("–"),
            ratio(to_base),
            l.target
                .map(|t| format!("≥ {t:.1}×{}", if l.target_on_cpu { " CPU-cost" } else { "" }))
                .unwrap_or_else(|| "–".into()),
            why,
            ratio(base.and_then(|b| l.cpu_ratio_to(b)))
        );
    }
    let _ = writeln!(
        md,
        "\n*Envoy CPU-cost ratio* = the baseline's Envoy CPU time per request ÷ this configuration's, paired by \
         round: the requests/s ratio Envoy would show if it alone were the bottleneck. When it is well below the \
         requests/s ratio, the load generator or the shared machine limited the run and the requests/s ratio \
         flatters the slower configuration.\n"
    );

    let _ = writeln!(md, "\n## Throughput and latency per configuration\n");
    let _ = writeln!(
        md,
        "Requests/s are min/median/max over {} interleaved rounds of {} s; latencies and Envoy CPU are medians over rounds. \
         *Envoy CPU/req* is Envoy's user+system CPU time during a round divided by its requests: the cost the \
         filter adds, independent of whether Envoy or the load generator was the bottleneck.\n",
        s.rounds, s.duration_s
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
    let _ = writeln!(md, "\n![requests/s ratios](throughput-ratio.svg)\n");
    let _ = writeln!(md, "![latency percentiles](latency.svg)\n");
    let _ = writeln!(md, "![Envoy CPU per request](envoy-cpu.svg)\n");

    let _ = writeln!(md, "## Memory\n");
    if r.memory.is_empty() {
        let _ = writeln!(md, "Not measured in this run.\n");
    } else {
        let _ = writeln!(
            md,
            "Envoy resident set size (VmRSS) with only the named listener configured, after start-up and 200 warm \
             requests, at 1 and 2 workers. Δ is against the passthrough-only Envoy at the same worker count. Each \
             worker runs its own copy of every wasm VM, so *per extra worker* (Δ at 2 workers − Δ at 1) is what one \
             more VM instance of the filter chain costs. *Heap* is Envoy's own allocator accounting (admin \
             `/memory`, MiB); V8's wasm memory is outside it.\n"
        );
        if !r.settings.memory_workers.contains(&2) {
            let _ = writeln!(
                md,
                "This run read memory at {:?} worker(s) only (quick runs: 1; `make bench` reads 1 and 2).\n",
                r.settings.memory_workers
            );
        }
        let _ = writeln!(
            md,
            "| listener | RSS 1 worker MiB | Δ 1 worker | RSS 2 workers MiB | Δ 2 workers | per extra worker | heap 1 / 2 workers |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let mib = |k: u64| k as f64 / 1024.0;
        let find = |listener: &str, workers: u32| {
            r.memory.iter().find(|m| m.listener == listener && m.workers == workers)
        };
        let rss = |listener: &str, workers: u32| {
            find(listener, workers).and_then(|m| m.rss_kib.as_ref().ok().copied())
        };
        let mut listeners: Vec<&str> = Vec::new();
        for row in &r.memory {
            if !listeners.contains(&row.listener.as_str()) {
                listeners.push(&row.listener);
            }
        }
        for l in listeners {
            if let Some(err) = [1, 2].iter().find_map(|&w| find(l, w).and_then(|m| m.rss_kib.as_ref().err()))
            {
                let _ = writeln!(md, "| {l} | not measured: {} | | | | | |", one_line(err));
                continue;
            }
            let delta = |w: u32| match (rss(l, w), rss("passthrough", w)) {
                (Some(v), Some(b)) if l != "passthrough" => Some(mib(v) - mib(b)),
                _ => None,
            };
            let show = |v: Option<f64>, signed: bool| match v {
                Some(v) if signed => format!("{v:+.1}"),
                Some(v) => format!("{v:.1}"),
                None => "–".into(),
            };
            let per_worker = delta(2).zip(delta(1)).map(|(d2, d1)| d2 - d1);
            let heap = |w: u32| {
                find(l, w)
                    .and_then(|m| m.allocated_bytes)
                    .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = writeln!(
                md,
                "| {l} | {} | {} | {} | {} | {} | {} / {} |",
                show(rss(l, 1).map(mib), false),
                show(delta(1), true),
                show(rss(l, 2).map(mib), false),
                show(delta(2), true),
                show(per_worker, true),
                heap(1),
                heap(2)
            );
        }
        let _ = writeln!(
            md,
            "\nEach VM's linear memory: Envoy exposes no per-VM statistic and the wasmtime host has no API for it \
             yet; the initial linear memory each module declares is in the size table below (the Rust allocator \
             grows it on demand), and *per extra worker* above bounds what one more VM copy really uses.\n"
        );
    }

    let _ = writeln!(md, "## Callbacks and hostcalls per request\n");
    if r.calls.is_empty() {
        let _ = writeln!(md, "Not counted (see the notes).\n");
    } else {
        let _ = writeln!(md, "{}", crate::calls::markdown(&r.calls));
    }

    let _ = writeln!(md, "## Artifact sizes\n");
    let _ = writeln!(
        md,
        "Every `.wasm` in the artifact directory (`cargo build --profile wasm --target wasm32-wasip1`), raw and after \
         `wasm-opt -Oz --strip-debug` ({}; flags {}). Targets: jwt-auth ≤ 500 KB, the other filters ≤ 200 KB \
         (KB = 1000 bytes).\n",
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
    let mut base = series("to its native baseline", "#d62728");
    let mut pass = series("to passthrough", "#1f77b4");
    for l in &r.loads {
        base.not_applicable.push(l.baseline.is_none());
        pass.not_applicable.push(false);
        let (b, p) = ratios(r, l);
        let p = if l.id == "passthrough" && l.measured() {
            Some(Spread { min: 1.0, median: 1.0, max: 1.0 })
        } else {
            p
        };
        base.values.push(b.map(|s| s.median));
        base.whiskers.push(b.map(|s| (s.min, s.max)));
        pass.values.push(p.map(|s| s.median));
        pass.whiskers.push(p.map(|s| (s.min, s.max)));
    }
    svg::grouped_hbars(
        "Requests/s ratio (median, whiskers min–max over rounds)",
        "ratio (1.0 = as fast as the baseline)",
        &categories(r),
        &[pass, base],
        &[
            RefLine { x: 1.0, label: "1.0".into(), color: "#000" },
            RefLine { x: 0.8, label: "0.8".into(), color: "#d62728" },
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
