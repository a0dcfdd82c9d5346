//! The endpoint-set encoding in shared data (what the balancer reads from discovery), run through
//! the balancer, and the balancer's plugin configuration.

use std::rc::Rc;

use meshwasm_balancer::config::{Algorithm, EndpointSource, Plan, Policy};
use meshwasm_balancer::hash::xxh64;
use meshwasm_balancer::outlier::OutlierPolicy;
use meshwasm_balancer::service::{Outcome, ServiceBalancer};
use meshwasm_balancer::slow_start::SlowStartPolicy;
use meshwasm_endpoints::{EndpointSet, Subscribers};

const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RoundRobin,
    Algorithm::WeightedRoundRobin,
    Algorithm::Random,
    Algorithm::WeightedRandom,
    Algorithm::LeastRequest,
    Algorithm::RingHash,
    Algorithm::Maglev,
];

/// Installs `sets` in turn and picks after each, feeding outcomes from `ops` back (failures eject);
/// every pick must be an endpoint of the current set, and not an ejected one outside panic mode.
fn exercise(policy: Policy, sets: &[EndpointSet], ops: &[u8], seed: u64) {
    let mut lb = ServiceBalancer::new(Rc::new(policy), seed);
    let mut now = 1_000u64;
    let mut op = ops.iter().cycle();
    for set in sets {
        lb.set_endpoints(set.clone(), now);
        for i in 0..48u64 {
            let o = op.next().copied().unwrap_or(0);
            now += u64::from(o & 0x0f) * 250;
            let hash = (o & 0x10 != 0).then(|| xxh64(&i.to_le_bytes(), 0));
            let Ok(picked) = lb.pick(now, hash) else { continue };
            assert!(
                lb.endpoints().iter().any(|e| e.address == picked.address),
                "picked {} which is not in the set",
                picked.address
            );
            assert!(lb.in_panic() || !lb.is_ejected(picked.address), "picked ejected {}", picked.address);
            let outcome = match o >> 6 {
                0 | 1 => Outcome::Failure,
                2 => Outcome::Success,
                _ => Outcome::Neutral,
            };
            lb.complete(&picked, outcome, now);
            lb.drain_events().for_each(drop);
        }
    }
}

/// Input: one byte choosing the algorithm and options, then the encoded endpoint set (the bytes
/// discovery stores in shared data). The same bytes are also read as the subscriber list.
pub fn endpoint_set(data: &[u8]) {
    let Some((choice, encoded)) = data.split_first() else { return };
    if let Ok(mut subs) = Subscribers::decode(encoded) {
        subs.add("meshwasm.endpoints.v1.notify.1");
        let _ = Subscribers::decode(&subs.encode());
    }
    let Ok(set) = EndpointSet::decode(encoded) else { return };
    // Round trip: what decodes re-encodes to the same set.
    if let Ok(again) = EndpointSet::decode(&set.encode()) {
        assert_eq!(again, set, "an endpoint set changes through its encoding");
    }
    let policy = Policy {
        algorithm: ALGORITHMS[usize::from(choice & 7) % ALGORITHMS.len()],
        min_ring_size: 64,
        max_ring_size: 1 << 16,
        maglev_table_size: 65_537,
        outlier: Some(OutlierPolicy { consecutive_failures: 2, ..OutlierPolicy::default() }),
        slow_start: (choice & 0x08 != 0).then_some(SlowStartPolicy {
            window_ms: 5_000,
            aggression: 1.5,
            min_weight_percent: 10,
        }),
        panic_threshold_percent: if choice & 0x10 != 0 { 0 } else { 50 },
        ..Policy::default()
    };
    // The set, then the same endpoints as a newer version without the first half (they leave).
    let mut next = set.clone();
    next.version = next.version.wrapping_add(1);
    let half = next.endpoints.len() / 2;
    next.endpoints.drain(..half);
    exercise(policy, &[set, next], encoded, u64::from(*choice));
}

/// The balancer plugin configuration; the services of a plan that configures are balanced over
/// their static endpoints (ring and table sizes bounded to keep the fuzzer fast).
pub fn config(data: &[u8]) {
    let Ok(plan) = Plan::from_json(data) else { return };
    for s in plan.services.iter().take(4) {
        let EndpointSource::Static(endpoints) = &s.endpoints else { continue };
        if endpoints.len() > 256 || s.policy.min_ring_size > 1 << 16 || s.policy.maglev_table_size > 1 << 17 {
            continue;
        }
        let policy = Policy { max_ring_size: s.policy.max_ring_size.min(1 << 16), ..(*s.policy).clone() };
        let set = EndpointSet { version: 1, endpoints: endpoints.clone() };
        exercise(policy, &[set], &[0x10, 0x91, 0x00, 0x45], plan.seed.unwrap_or(7));
    }
}
