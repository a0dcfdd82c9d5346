//! What a run measured (serialized to `results.json` next to the report) and the summaries the
//! report prints: min/median/max over rounds and round-paired ratios to baselines.

use serde::{Deserialize, Serialize};

use crate::machine::MachineFacts;
use crate::sizes::ArtifactSize;
use crate::wrk::WrkResult;

/// The settings a run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: u32,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub threads: u32,
    pub connections: u32,
    pub envoy_workers: u32,
    pub unique_tokens: usize,
    /// CPU lists when pinned: (Envoy, wrk + backends).
    pub pinning: Option<(String, String)>,
    pub backends: usize,
    pub only: Option<String>,
    /// Worker counts the memory of each listener is read at (the first also validates it alone).
    pub memory_workers: Vec<u32>,
    /// Run wasm-opt on artifacts whose optimized size is not cached (quick runs only reuse the cache).
    pub wasm_opt: bool,
}

/// One round of one load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub round: u32,
    pub wrk: WrkResult,
    /// Envoy's user+system CPU time during the run divided by requests, in µs.
    pub envoy_cpu_us_per_request: Option<f64>,
    /// Envoy's CPU use during the run in % of one core.
    pub envoy_cpu_percent: Option<f64>,
}

/// A load's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub id: String,
    pub title: String,
    pub listener: String,
    pub describe: String,
    pub baseline: Option<String>,
    pub target: Option<f64>,
    /// The target is on the Envoy CPU-cost ratio instead of the requests/s ratio.
    #[serde(default)]
    pub target_on_cpu: bool,
    /// Ran rounds of half the duration (no target depends on it).
    #[serde(default)]
    pub short: bool,
    /// Set when the load could not be measured (a filter not built, a config Envoy rejected, failed
    /// requests): the report says `not measured: <reason>`.
    pub not_measured: Option<String>,
    pub samples: Vec<Sample>,
}

/// Min, median and max.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Self { min: v[0], median, max: v[n - 1] })
    }
}

impl LoadResult {
    pub fn measured(&self) -> bool {
        self.not_measured.is_none() && !self.samples.is_empty()
    }

    pub fn rps(&self) -> Option<Spread> {
        Spread::of(&self.samples.iter().map(|s| s.wrk.rps()).collect::<Vec<_>>())
    }

    pub fn p50_us(&self) -> Option<Spread> {
        Spread::of(&self.samples.iter().map(|s| s.wrk.p50_us as f64).collect::<Vec<_>>())
    }

    pub fn p90_us(&self) -> Option<Spread> {
        Spread::of(&self.samples.iter().map(|s| s.wrk.p90_us as f64).collect::<Vec<_>>())
    }

    pub fn p99_us(&self) -> Option<Spread> {
        Spread::of(&self.samples.iter().map(|s| s.wrk.p99_us as f64).collect::<Vec<_>>())
    }

    pub fn cpu_us_per_request(&self) -> Option<Spread> {
        Spread::of(&self.samples.iter().filter_map(|s| s.envoy_cpu_us_per_request).collect::<Vec<_>>())
    }

    pub fn cpu_percent(&self) -> Option<Spread> {
        Spread::of(&self.samples.iter().filter_map(|s| s.envoy_cpu_percent).collect::<Vec<_>>())
    }

    /// Requests/s ratios to `base`, paired by round (the two ran seconds apart, so drift in the
    /// machine's load cancels), summarized over rounds.
    pub fn ratio_to(&self, base: &LoadResult) -> Option<Spread> {
        if !self.measured() || !base.measured() {
            return None;
        }
        let ratios: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| {
                let b = base.samples.iter().find(|b| b.round == s.round)?;
                let br = b.wrk.rps();
                (br > 0.0).then(|| s.wrk.rps() / br)
            })
            .collect();
        Spread::of(&ratios)
    }
}

impl LoadResult {
    /// Envoy CPU efficiency relative to `base`: base's CPU µs per request ÷ this one's, paired by
    /// round. It is the requests/s ratio Envoy would reach if it alone were the bottleneck.
    pub fn cpu_ratio_to(&self, base: &LoadResult) -> Option<Spread> {
        if !self.measured() || !base.measured() {
            return None;
        }
        let ratios: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| {
                let b = base.samples.iter().find(|b| b.round == s.round)?;
                let (mine, theirs) = (s.envoy_cpu_us_per_request?, b.envoy_cpu_us_per_request?);
                (mine > 0.0).then(|| theirs / mine)
            })
            .collect();
        Spread::of(&ratios)
    }
}

/// Memory of one Envoy running one listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRow {
    pub listener: String,
    pub workers: u32,
    /// VmRSS after start-up and warm traffic, KiB; or why it could not be measured.
    pub rss_kib: Result<u64, String>,
    /// Envoy's own heap accounting (admin `/memory` `allocated`), bytes.
    pub allocated_bytes: Option<u64>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub settings: Settings,
    pub machine: MachineFacts,
    pub loads: Vec<LoadResult>,
    pub memory: Vec<MemoryRow>,
    pub sizes: Vec<ArtifactSize>,
    /// Wasm entries and hostcalls per request, per filter (counted in the wasmtime host).
    #[serde(default)]
    pub calls: Vec<crate::calls::FilterCalls>,
    /// Wall time of the whole run, seconds.
    pub elapsed_s: f64,
    pub notes: Vec<String>,
}

impl RunResults {
    pub fn load(&self, id: &str) -> Option<&LoadResult> {
        self.loads.iter().find(|l| l.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: u32, requests: u64) -> Sample {
        Sample {
            round,
            wrk: WrkResult { requests, duration_us: 1_000_000, ..Default::default() },
            envoy_cpu_us_per_request: None,
            envoy_cpu_percent: None,
        }
    }

    fn load(samples: Vec<Sample>) -> LoadResult {
        LoadResult {
            id: "x".into(),
            title: "x".into(),
            listener: "x".into(),
            describe: String::new(),
            baseline: None,
            target: None,
            target_on_cpu: false,
            short: false,
            not_measured: None,
            samples,
        }
    }

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]), Some(Spread { min: 1.0, median: 2.0, max: 3.0 }));
        assert_eq!(Spread::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn ratios_pair_rounds() {
        let a = load(vec![sample(0, 800), sample(1, 450)]);
        let b = load(vec![sample(1, 500), sample(0, 1000)]);
        let r = a.ratio_to(&b).unwrap();
        assert!((r.min - 0.8).abs() < 1e-9 && (r.max - 0.9).abs() < 1e-9);
        let mut unmeasured = b.clone();
        unmeasured.not_measured = Some("not built".into());
        assert!(a.ratio_to(&unmeasured).is_none());
    }
}
