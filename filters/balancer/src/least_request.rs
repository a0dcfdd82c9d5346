//! Least request with power-of-`choice_count` choices (Envoy's LEAST_REQUEST).
//!
//! Active requests are counted per worker by the caller (`active[endpoint]`). Equal weights: sample
//! `choice_count` candidates uniformly and take the one with the fewest active requests. Unequal weights:
//! sample in proportion to weight and take the lowest weight-normalized load `active^bias / weight` (the
//! earlier sample on a tie), so with no load picks follow the weights exactly and under load traffic
//! settles where active requests ∝ weight. (Envoy scores `weight / (active + 1)^bias` inside its EDF
//! scheduler; with sampling by weight that score would count the weight twice.)

use crate::random::Alias;
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct LeastRequest {
    choice_count: u32,
    bias: f64,
    /// Present only when the candidates' weights differ.
    weighted: Option<Alias>,
}

impl LeastRequest {
    pub fn new(weights: &[u32], choice_count: u32, bias: f64) -> Self {
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        Self { choice_count: choice_count.max(1), bias, weighted: (!equal).then(|| Alias::new(weights)) }
    }

    /// Position in the candidate list. `endpoint_of(pos)` maps a position to the endpoint index used in
    /// `active`; `weight_of(pos)` gives its effective weight.
    pub fn pick(
        &self,
        len: usize,
        rng: &mut Rng,
        active: &[u32],
        endpoint_of: impl Fn(usize) -> usize,
        weight_of: impl Fn(usize) -> u32,
    ) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let load = |pos: usize| active.get(endpoint_of(pos)).copied().unwrap_or(0);
        match &self.weighted {
            None => {
                let mut best = rng.below(len);
                for _ in 1..self.choice_count {
                    let c = rng.below(len);
                    if load(c) < load(best) {
                        best = c;
                    }
                }
                Some(best)
            }
            Some(alias) => {
                let score = |pos: usize| {
                    let a = f64::from(load(pos));
                    let load = if self.bias == 1.0 { a } else { a.powf(self.bias) };
                    load / f64::from(weight_of(pos).max(1))
                };
                let mut best = alias.pick(rng)?;
                let mut best_score = score(best);
                for _ in 1..self.choice_count {
                    let c = alias.pick(rng)?;
                    let s = score(c);
                    if s < best_score {
                        best = c;
                        best_score = s;
                    }
                }
                Some(best)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{chi_square_uniform, chi_square_weighted};

    #[test]
    fn prefers_less_loaded_endpoints() {
        let lr = LeastRequest::new(&[1; 4], 2, 1.0);
        let mut rng = Rng::new(3);
        let active = [10, 0, 10, 10];
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[lr.pick(4, &mut rng, &active, |p| p, |_| 1).unwrap()] += 1;
        }
        // Endpoint 1 wins whenever it is sampled: P = 1 - (3/4)^2 = 7/16.
        let share = f64::from(counts[1]) / 10_000.0;
        assert!((share - 7.0 / 16.0).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn uniform_when_idle_and_balances_under_load() {
        let lr = LeastRequest::new(&[1; 5], 2, 1.0);
        let mut rng = Rng::new(8);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[lr.pick(5, &mut rng, &[0; 5], |p| p, |_| 1).unwrap()] += 1;
        }
        assert!(chi_square_uniform(&counts) < 18.5, "{counts:?}");

        // Requests that never finish: P2C keeps the spread within a small band.
        let mut active = [0u32; 5];
        for _ in 0..1000 {
            let p = lr.pick(5, &mut rng, &active, |p| p, |_| 1).unwrap();
            active[p] += 1;
        }
        let (min, max) = (active.iter().min().unwrap(), active.iter().max().unwrap());
        assert!(max - min <= 10, "{active:?}");
    }

    #[test]
    fn weighted_follows_weights_when_idle_and_load_when_busy() {
        let weights = [1, 3];
        let lr = LeastRequest::new(&weights, 2, 1.0);
        let mut rng = Rng::new(4);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[lr.pick(2, &mut rng, &[0, 0], |p| p, |p| weights[p]).unwrap()] += 1;
        }
        assert!(chi_square_weighted(&counts, &weights) < 10.8, "{counts:?}"); // df 1, p=0.001

        let mut active = [0u32; 2];
        for _ in 0..4000 {
            let p = lr.pick(2, &mut rng, &active, |p| p, |p| weights[p]).unwrap();
            active[p] += 1;
        }
        let ratio = f64::from(active[1]) / f64::from(active[0]);
        assert!((2.5..3.5).contains(&ratio), "{active:?}");
    }
}
