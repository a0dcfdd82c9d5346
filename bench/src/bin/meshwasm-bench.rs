//! `meshwasm-bench`: runs the side-by-side benchmark and writes the report.
//!
//! ```text
//! meshwasm-bench [--quick] [--out bench/report] [--rounds N] [--duration S] [--only wasm-jwt]
//! meshwasm-bench backend --port P --name N     # the load-test backend (started by the benchmark)
//! meshwasm-bench calls [--out bench/report]    # callbacks and hostcalls per request (CALLS.md), no Envoy
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use meshwasm_bench::results::Settings;

#[derive(Parser, Debug)]
#[command(
    name = "meshwasm-bench",
    about = "Side-by-side benchmarks of meshwasm filters against Envoy's native filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Short run for development (< 2 minutes): 2 rounds of 2 s, 1 s warm-up, 500 unique tokens,
    /// memory at 1 worker only, wasm-opt sizes only from the cache of earlier full runs.
    #[arg(long)]
    quick: bool,
    /// Where REPORT.md, the SVG plots and results.json go.
    #[arg(long, default_value = "bench/report")]
    out: PathBuf,
    /// Interleaved rounds (default 5, quick 2).
    #[arg(long)]
    rounds: Option<u32>,
    /// Seconds per configuration per round (default 8, quick 2).
    #[arg(long)]
    duration: Option<u64>,
    /// Warm-up seconds per configuration, excluded (default 3, quick 1).
    #[arg(long)]
    warmup: Option<u64>,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Envoy worker threads for the throughput rounds.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Distinct tokens for the unique-token loads (default 4000, quick 500).
    #[arg(long)]
    unique_tokens: Option<usize>,
    /// Do not pin Envoy and the load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Worker counts at which each listener's Envoy memory is read, comma-separated (default 1,4: the
    /// per-extra-worker figure averages over 3 extra workers; quick 1). Each listener is validated
    /// alone at the first.
    #[arg(long, value_delimiter = ',')]
    memory_workers: Option<Vec<u32>>,
    /// Re-render the report from a saved results.json instead of running (e.g. after changing the report).
    #[arg(long)]
    from_results: Option<PathBuf>,
    /// Only loads whose id contains this, or one of these comma-separated strings (plus their baselines
    /// and passthrough), e.g. `wasm-jwt` or `native-origdst,wasm-balancer`.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the minimal load-test backend (used by the benchmark itself).
    Backend {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// Count each filter's wasm entries and hostcalls per request in the meshwasm wasmtime host (exact,
    /// machine-independent; no Envoy, no load) and write the table at the head of `<out>/CALLS.md`
    /// (the file's `## ` sections are kept).
    Calls {
        #[arg(long, default_value = "bench/report")]
        out: PathBuf,
        /// Requests counted per load (after the warm-up).
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Directory of the .wasm artifacts (default: the one `make wasm` writes).
        #[arg(long)]
        wasm_dir: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Backend { port, name }) = &cli.command {
        return meshwasm_bench::backend::serve(*port, name);
    }
    if let Some(Cmd::Calls { out, requests, wasm_dir }) = &cli.command {
        let dir = wasm_dir.clone().unwrap_or_else(meshwasm_tests::artifacts::wasm_dir);
        let scratch = tempfile::Builder::new().prefix("meshwasm-bench-calls-").tempdir()?;
        let (rows, skipped) = meshwasm_bench::calls::measure(&dir, scratch.path(), *requests)?;
        let md = format!(
            "# Callbacks and hostcalls per request\n\nArtifacts: `{}`.\n\n{}{}",
            dir.display(),
            meshwasm_bench::calls::markdown(&rows),
            meshwasm_bench::calls::skipped_markdown(&skipped)
        );
        std::fs::create_dir_all(out)?;
        // The table replaces the generated head of an existing CALLS.md; its `## ` sections (the
        // before/after and the twiggy notes, written by hand) are kept.
        let path = out.join("CALLS.md");
        let kept = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| old.find("\n## ").map(|i| old[i + 1..].to_owned()));
        std::fs::write(&path, kept.map_or_else(|| md.clone(), |rest| format!("{md}\n{rest}")))?;
        print!("{md}");
        return Ok(());
    }
    if let Some(path) = &cli.from_results {
        let results: meshwasm_bench::results::RunResults = serde_json::from_slice(&std::fs::read(path)?)?;
        meshwasm_bench::report::write(&results, &cli.out)?;
        eprintln!("meshwasm-bench: wrote {} from {}", cli.out.join("REPORT.md").display(), path.display());
        return Ok(());
    }
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pinning = (!cli.no_pin && nproc >= 2).then(|| {
        // Envoy gets the last CPU to itself; wrk and the backends share the others.
        let last = nproc - 1;
        (last.to_string(), if last == 1 { "0".to_owned() } else { format!("0-{}", last - 1) })
    });
    let settings = Settings {
        quick: cli.quick,
        rounds: cli.rounds.unwrap_or(if cli.quick { 2 } else { 5 }),
        duration_s: cli.duration.unwrap_or(if cli.quick { 2 } else { 8 }),
        warmup_s: cli.warmup.unwrap_or(if cli.quick { 1 } else { 3 }),
        threads: cli.threads,
        connections: cli.connections,
        envoy_workers: cli.workers,
        unique_tokens: cli.unique_tokens.unwrap_or(if cli.quick { 500 } else { 4000 }),
        pinning,
        backends: 3,
        only: cli.only.clone(),
        memory_workers: cli
            .memory_workers
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| if cli.quick { vec![1] } else { vec![1, 4] }),
        wasm_opt: !cli.quick,
    };
    let scratch = tempfile::Builder::new().prefix("meshwasm-bench-").tempdir()?;
    let results = meshwasm_bench::run::run(settings, scratch.path())?;
    meshwasm_bench::report::write(&results, &cli.out)?;
    eprintln!("meshwasm-bench: wrote {} ({:.0} s)", cli.out.join("REPORT.md").display(), results.elapsed_s);
    Ok(())
}
