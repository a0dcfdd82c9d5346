use super::*;
use crate::config::{Algorithm, Policy, ZonePolicy};
use crate::outlier::OutlierPolicy;
use crate::slow_start::SlowStartPolicy;
use crate::stats::{chi_square_uniform, chi_square_weighted};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
}

fn set(version: u64, weights: &[u32]) -> EndpointSet {
    let endpoints = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let mut e = Endpoint::new(addr(i));
            e.weight = w;
            e
        })
        .collect();
    EndpointSet { version, endpoints }
}

fn balancer(policy: Policy, weights: &[u32]) -> ServiceBalancer {
    let mut b = ServiceBalancer::new(Rc::new(policy), 42);
    assert!(b.set_endpoints(set(1, weights), 0));
    b
}

fn algo(algorithm: Algorithm) -> Policy {
    Policy { algorithm, ..Policy::default() }
}

/// Picks `n` times at `now`, completing each as `outcome`, and counts picks per endpoint index.
fn counts(b: &mut ServiceBalancer, n: usize, now: u64) -> Vec<u32> {
    let mut c = vec![0u32; b.endpoints().len()];
    for _ in 0..n {
        let p = b.pick(now, None).unwrap();
        c[p.index] += 1;
        b.complete(&p, Outcome::Success, now);
    }
    c
}

#[test]
fn round_robin_visits_each_once_per_cycle_and_ignores_weights() {
    let mut b = balancer(algo(Algorithm::RoundRobin), &[1, 5, 1, 1]);
    for _ in 0..3 {
        assert_eq!(counts(&mut b, 4, 0), vec![1, 1, 1, 1]);
    }
}

#[test]
fn weighted_round_robin_exact_per_period() {
    let mut b = balancer(algo(Algorithm::WeightedRoundRobin), &[1, 5, 2, 2]);
    assert_eq!(counts(&mut b, 100, 0), vec![10, 50, 20, 20]);
}

#[test]
fn random_and_weighted_random_distributions() {
    let mut b = balancer(algo(Algorithm::Random), &[1, 9, 1, 1, 1]);
    let c = counts(&mut b, 50_000, 0);
    assert!(chi_square_uniform(&c) < 18.5, "{c:?}");
    let weights = [1, 9, 1, 3, 1];
    let mut b = balancer(algo(Algorithm::WeightedRandom), &weights);
    let c = counts(&mut b, 50_000, 0);
    assert!(chi_square_weighted(&c, &weights) < 18.5, "{c:?}");
}

#[test]
fn least_request_tracks_in_flight_requests() {
    let mut b = balancer(algo(Algorithm::LeastRequest), &[1, 1, 1]);
    // Hold 30 requests open: P2C spreads them.
    let held: Vec<Picked> = (0..30).map(|_| b.pick(0, None).unwrap()).collect();
    let per: Vec<u32> = (0..3).map(|i| b.active(addr(i))).collect();
    assert_eq!(per.iter().sum::<u32>(), 30);
    assert!(per.iter().all(|&a| (6..=14).contains(&a)), "{per:?}");
    for p in &held {
        b.complete(p, Outcome::Neutral, 0);
    }
    assert!((0..3).all(|i| b.active(addr(i)) == 0));
}

#[test]
fn hash_algorithms_are_sticky_and_consistent() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let mut b = balancer(algo(algorithm), &[1; 10]);
        let keys: Vec<u64> = (0..2000u64).map(|k| crate::hash::xxh64(&k.to_le_bytes(), 0)).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|&h| b.pick(0, Some(h)).unwrap().address).collect();
        let again: Vec<SocketAddr> = keys.iter().map(|&h| b.pick(0, Some(h)).unwrap().address).collect();
        assert_eq!(before, again, "{algorithm:?}: same key, same endpoint");
        // Version 2 drops endpoint 4.
        let mut s = set(2, &[1; 10]);
        s.endpoints.remove(4);
        assert!(b.set_endpoints(s, 0));
        let mut moved = 0;
        for (&h, &was) in keys.iter().zip(&before) {
            let now = b.pick(0, Some(h)).unwrap().address;
            assert_ne!(now, addr(4));
            if was != addr(4) && now != was {
                moved += 1;
            }
        }
        let removed_share = before.iter().filter(|&&a| a == addr(4)).count();
        assert!(moved <= removed_share / 5, "{algorithm:?}: {moved} keys moved besides {removed_share}");
    }
}

#[test]
fn hash_algorithms_skip_ejected_endpoints_and_stay_sticky() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let mut b = balancer(algo(algorithm), &[1; 10]);
        let keys: Vec<u64> = (0..2000u64).map(|k| crate::hash::xxh64(&k.to_le_bytes(), 0)).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|&h| b.pick(0, Some(h)).unwrap().address).collect();
        // Eject endpoint 2 (a low index, so candidate positions after it shift by one).
        let bad = addr(2);
        let p = Picked { index: 2, address: bad, version: 1 };
        for _ in 0..5 {
            b.complete(&p, Outcome::Failure, 0);
        }
        assert!(b.is_ejected(bad), "{algorithm:?}");
        let mut moved = 0;
        for (&h, &was) in keys.iter().zip(&before) {
            let picked = b.pick(0, Some(h)).unwrap();
            assert_ne!(picked.address, bad, "{algorithm:?}: picked an ejected endpoint");
            assert_eq!(b.endpoints()[picked.index].address, picked.address, "{algorithm:?}");
            if was != bad && picked.address != was {
                moved += 1;
            }
            assert_eq!(b.pick(0, Some(h)).unwrap().address, picked.address, "{algorithm:?}: sticky");
        }
        let removed_share = before.iter().filter(|&&a| a == bad).count();
        assert!(removed_share > 0);
        assert!(moved <= removed_share / 5, "{algorithm:?}: {moved} keys moved besides {removed_share}");
    }
}

#[test]
fn ejects_after_failures_and_returns_on_the_virtual_clock() {
    let mut b = balancer(algo(Algorithm::RoundRobin), &[1; 10]);
    let bad = addr(3);
    let mut now = 1_000;
    let mut failures = 0;
    while failures < 5 {
        let p = b.pick(now, None).unwrap();
        let outcome = if p.address == bad { Outcome::Failure } else { Outcome::Success };
        failures += u32::from(p.address == bad);
        b.complete(&p, outcome, now);
        now += 10;
    }
    assert!(b.is_ejected(bad));
    let events: Vec<Event> = b.drain_events().collect();
    assert_eq!(events, vec![Event::Ejected { address: bad, for_ms: 30_000 }]);
    let c = counts(&mut b, 90, now);
    assert_eq!(c[3], 0, "an ejected endpoint gets no traffic");
    assert!(c.iter().enumerate().all(|(i, &n)| i == 3 || n == 10));
    // Still out just before base_ejection_time, back at it.
    let ejected_at = now - 10;
    assert!(counts(&mut b, 90, ejected_at + 29_999)[3] == 0);
    assert_eq!(counts(&mut b, 100, ejected_at + 30_000)[3], 10);
    assert_eq!(b.drain_events().collect::<Vec<_>>(), vec![Event::Returned { address: bad }]);
}

#[test]
fn max_ejection_percent_and_panic_mode() {
    // 4 endpoints, everyone may be ejected: after 3 ejections only 25% are healthy (< 50%): panic, so
    // all 4 get traffic again.
    let policy = Policy {
        outlier: Some(OutlierPolicy { max_ejection_percent: 100, ..Default::default() }),
        ..algo(Algorithm::RoundRobin)
    };
    let mut b = balancer(policy.clone(), &[1; 4]);
    let fail = |b: &mut ServiceBalancer, i: usize| {
        let p = Picked { index: i, address: addr(i), version: 1 };
        for _ in 0..5 {
            b.complete(&p, Outcome::Failure, 0);
        }
    };
    fail(&mut b, 0);
    fail(&mut b, 1);
    assert!(!b.in_panic());
    assert_eq!(counts(&mut b, 4, 0), vec![0, 0, 2, 2]);
    fail(&mut b, 2);
    assert!(b.in_panic());
    assert_eq!(counts(&mut b, 8, 0), vec![2, 2, 2, 2], "panic: balance over all");
    assert!(b.drain_events().any(|e| e == Event::PanicEntered { healthy: 1, total: 4 }));

    // Threshold 0: never panic; with everyone ejected there is nothing to pick.
    let mut b = balancer(Policy { panic_threshold_percent: 0, ..policy }, &[1; 4]);
    for i in 0..4 {
        fail(&mut b, i);
    }
    assert_eq!(b.pick(0, None), Err(NoHealthyUpstream));

    // Default max_ejection_percent (10%) of 4 endpoints: only one may be out.
    let mut b = balancer(algo(Algorithm::RoundRobin), &[1; 4]);
    fail(&mut b, 0);
    fail(&mut b, 1);
    assert!(b.is_ejected(addr(0)) && !b.is_ejected(addr(1)));
}

#[test]
fn empty_set_means_no_healthy_upstream() {
    let mut b = ServiceBalancer::new(Rc::new(Policy::default()), 1);
    assert_eq!(b.pick(0, None), Err(NoHealthyUpstream));
    b.set_endpoints(set(1, &[]), 0);
    assert_eq!(b.pick(0, None), Err(NoHealthyUpstream));
}

#[test]
fn same_version_is_not_rebuilt_and_state_carries_over() {
    let mut b = balancer(algo(Algorithm::LeastRequest), &[1; 5]);
    assert!(!b.set_endpoints(set(1, &[1; 6]), 0), "same version: ignored");
    assert_eq!(b.endpoints().len(), 5);
    let p = Picked { index: 2, address: addr(2), version: 1 };
    for _ in 0..5 {
        b.complete(&p, Outcome::Failure, 0);
    }
    let held = b.pick(0, None).unwrap();
    // Version 2 removes endpoint 0 and shifts indexes: ejection and in-flight counts follow the address.
    let mut s = set(2, &[1; 5]);
    s.endpoints.remove(0);
    assert!(b.set_endpoints(s, 0));
    assert!(b.is_ejected(addr(2)));
    if held.address != addr(0) {
        assert_eq!(b.active(held.address), 1);
        b.complete(&held, Outcome::Success, 0);
        assert_eq!(b.active(held.address), 0);
    }
    assert_eq!(counts(&mut b, 3, 0).iter().sum::<u32>(), 3);
}

#[test]
fn slow_start_ramps_new_endpoints() {
    let policy = Policy {
        slow_start: Some(SlowStartPolicy { window_ms: 10_000, aggression: 1.0, min_weight_percent: 10 }),
        ..algo(Algorithm::RoundRobin)
    };
    let mut b = balancer(policy, &[1; 3]);
    assert_eq!(counts(&mut b, 3, 0), vec![1, 1, 1], "the first set does not start slow");
    assert!(b.set_endpoints(set(2, &[1; 4]), 1_000));
    // Just joined: 10% of a normal share (weights 20,20,20,2 → 2 of 62 picks).
    let c = counts(&mut b, 620, 1_000);
    assert_eq!(c[3], 20, "{c:?}");
    // Half-way: 50%.
    let c = counts(&mut b, 700, 6_000);
    assert_eq!(c[3], 100, "{c:?}");
    // After the window: an equal share.
    let c = counts(&mut b, 400, 11_000);
    assert_eq!(c, vec![100; 4]);
}

#[test]
fn zone_aware_prefers_local_zone_and_spills_over() {
    let policy = Policy {
        zone_aware: Some(ZonePolicy { local_zone: "a".into(), min_healthy_percent: 70 }),
        outlier: Some(OutlierPolicy { max_ejection_percent: 100, ..Default::default() }),
        panic_threshold_percent: 0,
        ..algo(Algorithm::RoundRobin)
    };
    let mut s = set(1, &[1; 6]);
    for (i, e) in s.endpoints.iter_mut().enumerate() {
        e.zone = Some(if i < 3 { "a" } else { "b" }.into());
    }
    let mut b = ServiceBalancer::new(Rc::new(policy), 1);
    b.set_endpoints(s, 0);
    assert_eq!(counts(&mut b, 30, 0), vec![10, 10, 10, 0, 0, 0]);
    // One of three local endpoints out: 66% < 70% healthy locally → spill over to every healthy one.
    let p = Picked { index: 0, address: addr(0), version: 1 };
    for _ in 0..5 {
        b.complete(&p, Outcome::Failure, 0);
    }
    assert_eq!(counts(&mut b, 50, 0), vec![0, 10, 10, 10, 10, 10]);
}

#[test]
fn ten_thousand_endpoints() {
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::WeightedRandom,
        Algorithm::LeastRequest,
        Algorithm::RingHash,
        Algorithm::Maglev,
    ] {
        let weights: Vec<u32> = (0..10_000).map(|i| 1 + (i % 3)).collect();
        let mut b = balancer(algo(algorithm), &weights);
        for k in 0..1000u64 {
            let p = b.pick(0, Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))).unwrap();
            assert!(p.index < 10_000);
        }
    }
}

#[test]
fn packed_addresses_round_trip() {
    let addrs: Vec<SocketAddr> =
        ["10.0.0.1:80", "[::1]:9000", "255.255.255.255:65535", "0.0.0.0:0", "[fe80::1]:1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
    let p = Packed::new(addrs.iter().copied());
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(p.get(i), Some(*a));
    }
    assert_eq!(p.get(5), None);
}

#[test]
fn only_the_picked_upstream_or_an_upstream_failure_counts() {
    let picked = addr(1);
    let uf = 0x20;
    // A local reply: no upstream contacted, no upstream flag.
    assert_eq!(Outcome::classify(picked, None, 0, Some(503)), Outcome::Neutral);
    assert_eq!(Outcome::classify(picked, None, 0, Some(200)), Outcome::Neutral);
    // Connect failure to the picked endpoint, with or without an address recorded.
    assert_eq!(Outcome::classify(picked, None, uf, Some(503)), Outcome::Failure);
    assert_eq!(Outcome::classify(picked, Some(picked), uf, Some(503)), Outcome::Failure);
    // The picked endpoint answered.
    assert_eq!(Outcome::classify(picked, Some(picked), 0, Some(503)), Outcome::Failure);
    assert_eq!(Outcome::classify(picked, Some(picked), 0, Some(404)), Outcome::Success);
    assert_eq!(Outcome::classify(picked, Some(picked), 0, None), Outcome::Neutral);
    // Some other endpoint answered: not this pick's outcome.
    assert_eq!(Outcome::classify(picked, Some(addr(2)), uf, Some(503)), Outcome::Neutral);
    // Flags that are not upstream failures (0x2 UH: no healthy upstream) do not count.
    assert_eq!(Outcome::classify(picked, None, 0x2, Some(503)), Outcome::Neutral);
}

#[test]
fn outcomes_from_the_response_read_more_only_for_5xx_or_no_status() {
    let picked = addr(1);
    let uf = 0x20;
    let never = || -> (u64, Option<SocketAddr>) { panic!("read flags/upstream for a plain answer") };
    for s in [100, 200, 204, 302, 404, 429, 499] {
        assert_eq!(Outcome::from_response(picked, Some(s), never), Outcome::Success, "{s}");
    }
    // 5xx or no status: decided as classify decides, from the flags and the upstream address.
    let mut read = 0;
    let mut more = |flags, upstream| {
        read += 1;
        move || (flags, upstream)
    };
    assert_eq!(Outcome::from_response(picked, Some(503), more(0, None)), Outcome::Neutral, "local 503");
    assert_eq!(Outcome::from_response(picked, Some(503), more(0, Some(picked))), Outcome::Failure);
    assert_eq!(
        Outcome::from_response(picked, Some(503), more(uf, None)),
        Outcome::Failure,
        "connect failure"
    );
    assert_eq!(
        Outcome::from_response(picked, Some(504), more(0x4, Some(picked))),
        Outcome::Failure,
        "timeout"
    );
    assert_eq!(Outcome::from_response(picked, Some(503), more(uf, Some(addr(2)))), Outcome::Neutral);
    assert_eq!(Outcome::from_response(picked, None, more(0, Some(picked))), Outcome::Neutral);
    assert_eq!(Outcome::from_response(picked, None, more(0x40, Some(picked))), Outcome::Failure, "reset");
    assert_eq!(Outcome::from_response(picked, Some(0), more(0, None)), Outcome::Neutral);
    assert_eq!(read, 8);
}
