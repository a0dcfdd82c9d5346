//! Round robin over a candidate list: a cursor that starts at a random position, so that workers and
//! restarts do not all send their first request to the same endpoint.

use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn new(len: usize, rng: &mut Rng) -> Self {
        Self { next: rng.below(len) }
    }

    /// Keeps the rotation going across a rebuild (the cursor is reduced into the new length).
    pub fn rebuilt(&self, len: usize) -> Self {
        Self { next: if len == 0 { 0 } else { self.next % len } }
    }

    /// Position in the candidate list of the next pick; `len` must be > 0.
    pub fn pick(&mut self, len: usize) -> usize {
        let i = self.next % len;
        self.next = i + 1;
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_each_once_per_cycle_from_a_random_start() {
        let mut starts = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let mut rr = RoundRobin::new(5, &mut Rng::new(seed));
            let cycle: Vec<usize> = (0..5).map(|_| rr.pick(5)).collect();
            let mut sorted = cycle.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
            for w in cycle.windows(2) {
                assert_eq!(w[1], (w[0] + 1) % 5);
            }
            starts.insert(cycle[0]);
        }
        assert_eq!(starts.len(), 5, "first picks are spread over all endpoints");
    }

    #[test]
    fn survives_shrinking() {
        let mut rr = RoundRobin::new(10, &mut Rng::new(1));
        for _ in 0..9 {
            rr.pick(10);
        }
        let mut rr = rr.rebuilt(3);
        assert!(rr.pick(3) < 3);
    }
}
