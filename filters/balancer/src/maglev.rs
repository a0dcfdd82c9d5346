//! Maglev consistent hashing (Envoy's MAGLEV): a lookup table of prime size M (65537 by default) filled
//! from per-candidate permutations `(offset + j·skip) mod M`, weighted the way Envoy does it. A pick is
//! `table[hash mod M]`; removing a candidate moves little more than its own share of keys.

use crate::hash::xxh64;

pub const DEFAULT_TABLE_SIZE: u64 = 65537;

#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

/// True when `n` is prime (trial division; table sizes are small).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

impl Maglev {
    /// `keys[i]` names candidate `i`; `size` must be prime (checked at configuration).
    pub fn new<K: AsRef<str>>(keys: &[K], weights: &[u32], size: u64) -> Self {
        if keys.is_empty() || size == 0 {
            return Self { table: Vec::new() };
        }
        struct Entry {
            offset: u64,
            skip: u64,
            weight: u64,
            target: u64,
            next: u64,
        }
        let max_w = weights.iter().map(|&w| u64::from(w.max(1))).max().unwrap_or(1);
        let mut entries: Vec<Entry> = keys
            .iter()
            .zip(weights)
            .map(|(k, &w)| Entry {
                offset: xxh64(k.as_ref().as_bytes(), 0) % size,
                skip: xxh64(k.as_ref().as_bytes(), 1) % (size - 1).max(1) + 1,
                weight: u64::from(w.max(1)),
                target: 0,
                next: 0,
            })
            .collect();
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < size {
            for (i, e) in entries.iter_mut().enumerate() {
                if filled >= size {
                    break;
                }
                // A candidate of maximum weight claims a slot every iteration, one of a third of it
                // every third iteration.
                if iteration * e.weight < e.target {
                    continue;
                }
                e.target += max_w;
                loop {
                    let c = ((e.offset + e.skip * e.next) % size) as usize;
                    e.next += 1;
                    if table[c] == u32::MAX {
                        table[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
            iteration += 1;
        }
        Self { table }
    }

    /// Position of the candidate owning `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        self.table.get((hash % self.table.len() as u64) as usize).map(|&c| c as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.1.{}.{}:80", i / 250, i % 250)).collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(2) && is_prime(251));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(0) && !is_prime(91));
    }

    #[test]
    fn slots_follow_weights() {
        let weights = [1, 2, 3, 4];
        let m = Maglev::new(&keys(4), &weights, 65537);
        let mut counts = [0u32; 4];
        for &c in &m.table {
            counts[c as usize] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            let expected = 65537.0 * f64::from(w) / 10.0;
            assert!((f64::from(*c) - expected).abs() / expected < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn minimal_disruption_when_one_is_removed() {
        let all = keys(20);
        let before = Maglev::new(&all, &[1; 20], 65537);
        let rest: Vec<String> = all.iter().filter(|k| *k != &all[7]).cloned().collect();
        let after = Maglev::new(&rest, &[1; 19], 65537);
        let mut moved_others = 0;
        let mut owned = 0;
        for slot in 0..65537u64 {
            let b = &all[before.pick(slot).unwrap()];
            let a = &rest[after.pick(slot).unwrap()];
            if b == &all[7] {
                owned += 1;
            } else if a != b {
                moved_others += 1;
            }
        }
        assert!(owned > 2800, "{owned}");
        // Maglev trades a little disruption for balance: far fewer than the removed share move.
        assert!(moved_others < owned / 5, "moved {moved_others} of others vs {owned} owned");
    }

    #[test]
    fn empty_and_small() {
        assert_eq!(Maglev::new::<&str>(&[], &[], 65537).pick(3), None);
        let m = Maglev::new(&keys(3), &[1; 3], 7);
        assert!((0..7).all(|h| m.pick(h).unwrap() < 3));
    }
}
