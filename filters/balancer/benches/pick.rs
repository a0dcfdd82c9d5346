//! Pick cost per algorithm at 10, 1,000 and 10,000 endpoints (tables are built once per version, so a
//! pick should cost the same whatever the size). Run: `cargo bench -p meshwasm-balancer --bench pick`.

#![allow(clippy::unwrap_used)] // a benchmark, not filter code: a failed pick should stop it loudly

use std::hint::black_box;
use std::net::SocketAddr;
use std::rc::Rc;

use criterion::{BenchmarkId, Criterion, criterion_group};
use meshwasm_balancer::config::{Algorithm, Policy};
use meshwasm_balancer::service::{Outcome, ServiceBalancer};
use meshwasm_endpoints::{Endpoint, EndpointSet};

fn set(n: usize, weighted: bool) -> EndpointSet {
    let endpoints = (0..n)
        .map(|i| {
            let mut e =
                Endpoint::new(SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080)));
            if weighted {
                e.weight = 1 + (i % 4) as u32;
            }
            e
        })
        .collect();
    EndpointSet { version: 1, endpoints }
}

fn pick(c: &mut Criterion) {
    let algorithms = [
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("random", Algorithm::Random),
        ("weighted_random", Algorithm::WeightedRandom),
        ("least_request", Algorithm::LeastRequest),
        ("ring_hash", Algorithm::RingHash),
        ("maglev", Algorithm::Maglev),
    ];
    for (name, algorithm) in algorithms {
        let mut group = c.benchmark_group(name);
        for n in [10usize, 1_000, 10_000] {
            let policy = Policy { algorithm, ..Policy::default() };
            let mut lb = ServiceBalancer::new(Rc::new(policy), 1);
            lb.set_endpoints(set(n, algorithm.uses_weights()), 0);
            let mut key = 0u64;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let p = lb.pick(0, Some(key)).unwrap();
                    lb.complete(&p, Outcome::Success, 0);
                    black_box(p.address)
                })
            });
        }
        group.finish();
    }
}

/// Side-by-side 10 vs 10,000 endpoints: alternating batches, best batch of each (robust to other load
/// on the machine), printed as a ratio per algorithm.
fn ratio_report() {
    const BATCH: u32 = 200_000;
    println!("\npick cost, 10 vs 10,000 endpoints (best of 25 alternating batches of {BATCH} picks):");
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::WeightedRandom,
        Algorithm::LeastRequest,
        Algorithm::RingHash,
        Algorithm::Maglev,
    ] {
        let mut lbs: Vec<ServiceBalancer> = [10usize, 10_000]
            .iter()
            .map(|&n| {
                let mut lb = ServiceBalancer::new(Rc::new(Policy { algorithm, ..Policy::default() }), 1);
                lb.set_endpoints(set(n, algorithm.uses_weights()), 0);
                lb
            })
            .collect();
        let mut best = [f64::MAX; 2];
        let mut key = 0u64;
        for _ in 0..25 {
            for (lb, best) in lbs.iter_mut().zip(best.iter_mut()) {
                let start = std::time::Instant::now();
                for _ in 0..BATCH {
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let p = lb.pick(0, Some(key)).unwrap();
                    lb.complete(&p, Outcome::Success, 0);
                    black_box(p.address);
                }
                *best = best.min(start.elapsed().as_secs_f64() * 1e9 / f64::from(BATCH));
            }
        }
        println!("  {algorithm:?}: {:.1} ns vs {:.1} ns: ratio {:.2}", best[0], best[1], best[1] / best[0]);
    }
}

criterion_group!(benches, pick);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_report();
}
