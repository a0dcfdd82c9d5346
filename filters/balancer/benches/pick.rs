//! Pick cost per algorithm at 10, 1,000 and 10,000 endpoints (tables are built once per version, so a
//! pick should cost the same whatever the size). Run: `cargo bench -p meshwasm-balancer --bench pick`.

#![allow(clippy::unwrap_used)] // a benchmark, not filter code: a failed pick should stop it loudly

use std::hint::black_box;
use std::net::SocketAddr;
use std::rc::Rc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
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

criterion_group!(benches, pick);
criterion_main!(benches);
