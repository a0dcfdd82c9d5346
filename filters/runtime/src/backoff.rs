//! Retry delays after consecutive failures: doubling from `initial_ms`, capped at `max_ms`.

/// An exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1 → `initial_ms`, 2 → twice that, …), never
    /// above `max_ms`; 0 failures: no wait. Saturates instead of overflowing.
    pub fn delay_ms(&self, failures: u32) -> u64 {
        if failures == 0 {
            return 0;
        }
        let shift = (failures - 1).min(63);
        self.initial_ms.saturating_mul(1u64.checked_shl(shift).unwrap_or(u64::MAX)).min(self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff { initial_ms: 1_000, max_ms: 8_000 };
        let delays: Vec<u64> = (0..=6).map(|n| b.delay_ms(n)).collect();
        assert_eq!(delays, [0, 1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
        assert_eq!(b.delay_ms(u32::MAX), 8_000);
        let huge = Backoff { initial_ms: u64::MAX / 2, max_ms: u64::MAX };
        assert_eq!(huge.delay_ms(40), u64::MAX);
    }
}
