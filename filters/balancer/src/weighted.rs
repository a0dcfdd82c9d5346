//! Smooth weighted round robin.
//!
//! The order is earliest-deadline-first (Envoy's scheduler): candidate `i`'s `k`-th turn (k = 0, 1, …) is
//! due at `(k + φᵢ) / wᵢ`, where the phases `φᵢ ∈ [0, 1)` follow the golden-ratio sequence so that light
//! endpoints' turns are spread around the period instead of clustering; heavy endpoints therefore never
//! run in long bursts, even across the end of a period (weights 5,1,1 give `A B A A A C A`). One period (Σwᵢ/gcd picks) is computed once per endpoint-set version into a table, so a
//! pick is one array read whatever the number of endpoints; the cursor starts at a random offset, so there
//! is no first-pick bias. A period longer than [`MAX_TABLE`] is served by the live EDF heap instead
//! (O(log n) per pick, same order).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::rng::Rng;

/// Largest precomputed schedule (4 bytes per entry).
pub const MAX_TABLE: u64 = 1 << 18;

/// Phase resolution: phases are `p / PHASE_ONE`.
const PHASE_ONE: u64 = 1 << 24;

/// A turn: candidate `idx`, due at `(k + p / PHASE_ONE) / w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Turn {
    k: u64,
    p: u64,
    w: u64,
    idx: u32,
}

impl Turn {
    fn numerator(&self) -> u128 {
        u128::from(self.k) * u128::from(PHASE_ONE) + u128::from(self.p)
    }
}

/// Golden-ratio phase of candidate `i`, in `0..PHASE_ONE`.
fn phase(i: usize) -> u64 {
    // frac((i + 1) * 0.6180339887...) in 40-bit fixed point, then scaled to PHASE_ONE.
    const GOLDEN_40: u64 = 679_491_924_311; // 0.6180339887 * 2^40
    (((i as u64 + 1).wrapping_mul(GOLDEN_40)) & ((1 << 40) - 1)) >> 16
}

impl Ord for Turn {
    // BinaryHeap is a max-heap: the earliest deadline (then the lowest index) must compare greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        let a = self.numerator() * u128::from(other.w);
        let b = other.numerator() * u128::from(self.w);
        b.cmp(&a).then(other.idx.cmp(&self.idx))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The live EDF scheduler over candidate positions.
#[derive(Debug, Clone)]
pub struct Edf {
    heap: BinaryHeap<Turn>,
}

impl Edf {
    /// `weights[i]` is candidate `i`'s weight; zero weights are treated as 1.
    pub fn new(weights: &[u32]) -> Self {
        let heap = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Turn { k: 0, p: phase(i), w: u64::from(w.max(1)), idx: i as u32 })
            .collect();
        Self { heap }
    }

    pub fn pick(&mut self) -> Option<usize> {
        let mut top = self.heap.peek_mut()?;
        let idx = top.idx as usize;
        top.k += 1;
        Some(idx)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[derive(Debug, Clone)]
pub enum WeightedRoundRobin {
    Table { order: Vec<u32>, next: usize },
    Live(Edf),
}

impl WeightedRoundRobin {
    pub fn new(weights: &[u32], rng: &mut Rng) -> Self {
        let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w.max(1))));
        let period: u64 = weights.iter().map(|&w| u64::from(w.max(1)) / g.max(1)).sum();
        if period > MAX_TABLE {
            let mut edf = Edf::new(weights);
            // Skip a random number of turns so workers do not start in lockstep.
            for _ in 0..rng.below(weights.len().min(1024)) {
                edf.pick();
            }
            return Self::Live(edf);
        }
        let reduced: Vec<u32> = weights.iter().map(|&w| (u64::from(w.max(1)) / g.max(1)) as u32).collect();
        let mut edf = Edf::new(&reduced);
        let order: Vec<u32> = (0..period).filter_map(|_| edf.pick().map(|i| i as u32)).collect();
        let next = rng.below(order.len());
        Self::Table { order, next }
    }

    /// Position in the candidate list of the next pick.
    pub fn pick(&mut self) -> Option<usize> {
        match self {
            Self::Table { order, next } => {
                let i = *order.get(*next)?;
                *next += 1;
                if *next >= order.len() {
                    *next = 0;
                }
                Some(i as usize)
            }
            Self::Live(edf) => edf.pick(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], n: usize, seed: u64) -> Vec<usize> {
        let mut w = WeightedRoundRobin::new(weights, &mut Rng::new(seed));
        (0..n).map(|_| w.pick().unwrap()).collect()
    }

    #[test]
    fn exact_shares_per_period() {
        let weights = [5, 1, 1, 3];
        for seed in 0..20 {
            let seq = sequence(&weights, 10 * 7, seed);
            let mut counts = [0; 4];
            for i in seq {
                counts[i] += 1;
            }
            assert_eq!(counts, [35, 7, 7, 21]);
        }
    }

    #[test]
    fn smooth_no_bursts() {
        // Weights 5,1,1: the heavy endpoint never runs more than 3 times in a row, even across periods
        // (nginx's smooth WRR reaches 4 across a period boundary; naive weighted RR sends 5 in a row).
        let seq = sequence(&[5, 1, 1], 70, 3);
        let longest = seq.chunk_by(|a, b| a == b).map(|run| run.len()).max().unwrap();
        assert!(longest <= 3, "{seq:?}");
    }

    #[test]
    fn no_first_pick_bias() {
        let mut first = [0; 3];
        for seed in 0..3000 {
            first[sequence(&[2, 1, 1], 1, seed)[0]] += 1;
        }
        // First picks follow the weights (2:1:1), not "always the heaviest".
        assert!(crate::stats::chi_square_weighted(&first, &[2, 1, 1]) < 13.8, "{first:?}"); // df 2, p=0.001
    }

    #[test]
    fn live_scheduler_for_huge_periods_keeps_ratios() {
        let weights: Vec<u32> = (0..300).map(|i| 1000 + i).collect();
        let mut w = WeightedRoundRobin::new(&weights, &mut Rng::new(1));
        assert!(matches!(w, WeightedRoundRobin::Live(_)));
        let mut counts = vec![0u32; 300];
        for _ in 0..300_000 {
            counts[w.pick().unwrap()] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (c, &wt) in counts.iter().zip(&weights) {
            let expected = 300_000.0 * f64::from(wt) / f64::from(total);
            assert!((f64::from(*c) - expected).abs() <= 2.0, "{c} vs {expected}");
        }
    }
}
