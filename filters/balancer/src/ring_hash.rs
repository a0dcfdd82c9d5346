//! Ring hash (ketama-style, as Envoy's RING_HASH): each candidate gets `weight × k` points on a 64-bit ring
//! at `xxh64("<address>_<i>")`; a key goes to the first point at or after its hash.
//!
//! `k` is the smallest power of two that makes the ring at least `min_size` points (lowered to stay within
//! `max_size`, at least 1); if even `k = 1` exceeds `max_size`, each candidate gets
//! `max(1, weight × max_size / total)` points instead, so huge weights never blow up the ring. Unlike Envoy, which rescales every host's point count whenever the total
//! changes, `k` only changes when the total weight crosses a power of two, so adding or removing one
//! endpoint moves only that endpoint's keys.
//!
//! Lookups use a bucket index over the top bits of the hash (one bucket per ring point, rounded up to a
//! power of two), so a pick is O(1) expected instead of a binary search that grows with the ring.

use crate::hash::xxh64;

#[derive(Debug, Clone)]
pub struct Ring {
    /// (point hash, candidate position), sorted by hash.
    points: Vec<(u64, u32)>,
    /// `index[b]`: first point whose hash's top `bits` bits are ≥ b.
    index: Vec<u32>,
    shift: u32,
}

impl Ring {
    /// `keys[i]` names candidate `i` (its address); `weights[i]` its weight.
    pub fn new<K: AsRef<str>>(keys: &[K], weights: &[u32], min_size: u64, max_size: u64) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        let mut points = Vec::new();
        if !keys.is_empty() {
            let mut k = min_size.div_ceil(total.max(1)).next_power_of_two();
            while k > 1 && total.saturating_mul(k) > max_size {
                k /= 2;
            }
            // When even one point per unit of weight exceeds `max_size` (huge registry weights), scale
            // every endpoint down instead: max(1, w × max_size / total) points, so the ring holds at most
            // `max_size + endpoints` points whatever the weights.
            let scaled = total.saturating_mul(k) > max_size;
            let count = |w: u32| -> u64 {
                let w = u64::from(w.max(1));
                if scaled {
                    let share = u128::from(w) * u128::from(max_size) / u128::from(total.max(1));
                    u64::try_from(share).unwrap_or(u64::MAX).max(1)
                } else {
                    w * k
                }
            };
            let planned: u64 = weights.iter().take(keys.len()).map(|&w| count(w)).sum();
            points.reserve(planned.min(max_size.saturating_add(keys.len() as u64)) as usize);
            let mut buf = String::new();
            for (i, (key, &w)) in keys.iter().zip(weights).enumerate() {
                for replica in 0..count(w) {
                    buf.clear();
                    buf.push_str(key.as_ref());
                    buf.push('_');
                    buf.push_str(&replica.to_string());
                    points.push((xxh64(buf.as_bytes(), 0), i as u32));
                }
            }
            points.sort_unstable();
        }
        let bits = (points.len().max(1).next_power_of_two().trailing_zeros()).max(1);
        let shift = 64 - bits;
        let mut index = vec![0u32; 1 << bits];
        let mut p = 0usize;
        for (b, slot) in index.iter_mut().enumerate() {
            while p < points.len() && (points[p].0 >> shift) < b as u64 {
                p += 1;
            }
            *slot = p as u32;
        }
        Self { points, index, shift }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Position of the candidate owning `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        let mut p = *self.index.get((hash >> self.shift) as usize)? as usize;
        while let Some(&(h, _)) = self.points.get(p) {
            if h >= hash {
                break;
            }
            p += 1;
        }
        let (_, c) = self.points.get(p).or_else(|| self.points.first())?;
        Some(*c as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250)).collect()
    }

    /// Reference lookup by binary search, to check the bucket index.
    fn slow_pick(ring: &Ring, hash: u64) -> usize {
        let p = ring.points.partition_point(|&(h, _)| h < hash);
        ring.points.get(p).unwrap_or(&ring.points[0]).1 as usize
    }

    #[test]
    fn index_agrees_with_binary_search() {
        let ring = Ring::new(&keys(37), &[1; 37], 1024, 8 << 20);
        let mut rng = Rng::new(1);
        for _ in 0..20_000 {
            let h = rng.next_u64();
            assert_eq!(ring.pick(h), Some(slow_pick(&ring, h)));
        }
        assert_eq!(ring.pick(u64::MAX), Some(slow_pick(&ring, u64::MAX)));
        assert_eq!(ring.pick(0), Some(slow_pick(&ring, 0)));
    }

    #[test]
    fn ring_size_and_weights() {
        let ring = Ring::new(&keys(4), &[1, 1, 1, 1], 1024, 8 << 20);
        assert_eq!(ring.len(), 1024);
        let ring = Ring::new(&keys(2), &[1, 3], 1024, 8 << 20);
        let a = ring.points.iter().filter(|p| p.1 == 0).count();
        assert_eq!(ring.len() - a, 3 * a);
        let capped = Ring::new(&keys(4), &[1; 4], 1 << 20, 4096);
        assert_eq!(capped.len(), 4096);
        assert_eq!(Ring::new::<&str>(&[], &[], 1024, 2048).pick(5), None);
    }

    #[test]
    fn huge_weights_are_scaled_to_the_maximum_size() {
        let max = 4096u64;
        let ring = Ring::new(&keys(3), &[u32::MAX, u32::MAX, 1], 1024, max);
        assert!(ring.len() as u64 <= max + 3, "{} points", ring.len());
        assert!(ring.len() as u64 >= max - 3, "{} points", ring.len());
        let per = |c: u32| ring.points.iter().filter(|p| p.1 == c).count();
        assert_eq!(per(2), 1, "a tiny weight keeps one point");
        assert!(per(0).abs_diff(per(1)) <= 1, "{} vs {}", per(0), per(1));
        // Total weight just over the cap: scaled, not one point per unit of weight.
        let ring = Ring::new(&keys(2), &[3000, 3000], 1024, max);
        assert_eq!(ring.len() as u64, max);
    }

    #[test]
    fn spreads_keys_by_weight() {
        let weights = [1, 2, 1, 4];
        let ring = Ring::new(&keys(4), &weights, 4096, 8 << 20);
        let mut counts = [0u32; 4];
        for i in 0..80_000u32 {
            counts[ring.pick(xxh64(&i.to_le_bytes(), 0)).unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            let expected = 80_000.0 * f64::from(w) / 8.0;
            assert!((f64::from(*c) - expected).abs() / expected < 0.15, "{counts:?}");
        }
    }

    #[test]
    fn consistent_when_one_is_removed() {
        let all = keys(10);
        let before = Ring::new(&all, &[1; 10], 4096, 8 << 20);
        let rest: Vec<String> = all.iter().filter(|k| *k != &all[3]).cloned().collect();
        let after = Ring::new(&rest, &[1; 9], 4096, 8 << 20);
        for i in 0..20_000u32 {
            let h = xxh64(&i.to_le_bytes(), 0);
            let b = &all[before.pick(h).unwrap()];
            let a = &rest[after.pick(h).unwrap()];
            if b != &all[3] {
                assert_eq!(a, b, "key {i} moved although its endpoint stayed");
            }
        }
    }
}
