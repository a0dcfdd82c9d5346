//! Random and weighted random picks. Weighted random uses Vose's alias table, built once per endpoint-set
//! version: each pick is two random numbers and two array reads, whatever the number of endpoints.

use crate::rng::Rng;

/// One slot: keep it when a 32-bit coin is below `keep`, else go to `alias` (8 bytes, one cache line
/// access per pick).
#[derive(Debug, Clone, Copy)]
struct Slot {
    keep: u32,
    alias: u32,
}

#[derive(Debug, Clone)]
pub struct Alias {
    slots: Vec<Slot>,
}

impl Alias {
    pub fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().map(|&w| f64::from(w.max(1))).sum();
        let mut scaled: Vec<f64> = weights.iter().map(|&w| f64::from(w.max(1)) * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers (rounding) keep probability 1 on themselves.
        let slots = prob
            .iter()
            .zip(&alias)
            .map(|(&p, &a)| Slot {
                keep: if p >= 1.0 { u32::MAX } else { (p * 4_294_967_296.0) as u32 },
                alias: a,
            })
            .collect();
        Self { slots }
    }

    /// Position in the candidate list, with probability proportional to its weight.
    pub fn pick(&self, rng: &mut Rng) -> Option<usize> {
        // One random word: the high half picks the slot, the low half is the coin.
        let r = rng.next_u64();
        let i = (((r >> 32) * self.slots.len() as u64) >> 32) as usize;
        let slot = self.slots.get(i)?;
        if slot.keep == u32::MAX || (r as u32) < slot.keep { Some(i) } else { Some(slot.alias as usize) }
    }
}

/// Uniform position in `0..len`.
pub fn uniform(len: usize, rng: &mut Rng) -> usize {
    rng.below(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{chi_square_uniform, chi_square_weighted};

    #[test]
    fn uniform_distribution() {
        let mut rng = Rng::new(11);
        let mut counts = [0u32; 8];
        for _ in 0..80_000 {
            counts[uniform(8, &mut rng)] += 1;
        }
        assert!(chi_square_uniform(&counts) < 24.3, "{counts:?}"); // df 7, p = 0.001
    }

    #[test]
    fn weighted_distribution_matches_weights() {
        let weights = [1, 2, 3, 10, 4];
        let alias = Alias::new(&weights);
        let mut rng = Rng::new(5);
        let mut counts = [0u32; 5];
        for _ in 0..200_000 {
            counts[alias.pick(&mut rng).unwrap()] += 1;
        }
        assert!(chi_square_weighted(&counts, &weights) < 18.5, "{counts:?}"); // df 4, p = 0.001
    }

    #[test]
    fn equal_weights_are_uniform_and_single_is_always_chosen() {
        let alias = Alias::new(&[3, 3, 3]);
        assert!(alias.slots.iter().all(|s| s.keep == u32::MAX));
        let one = Alias::new(&[9]);
        let mut rng = Rng::new(1);
        assert_eq!(one.pick(&mut rng), Some(0));
        assert_eq!(Alias::new(&[]).pick(&mut rng), None);
    }
}
