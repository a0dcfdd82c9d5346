//! Slow start: an endpoint that just joined (or just came back from ejection) gets a weight that ramps up
//! over a window, as Envoy's slow start: `factor = max(min_weight_percent, (elapsed / window)^(1/aggression))`.

#[derive(Debug, Clone, PartialEq)]
pub struct SlowStartPolicy {
    pub window_ms: u64,
    pub aggression: f64,
    pub min_weight_percent: u32,
}

/// Weight scale while any endpoint is ramping: weights become `base × SCALE × factor`.
pub const SCALE: u32 = 20;

impl SlowStartPolicy {
    /// The weight factor of an endpoint that started at `since`, or `None` once the window is over.
    pub fn factor(&self, since: u64, now: u64) -> Option<f64> {
        let elapsed = now.saturating_sub(since);
        if self.window_ms == 0 || elapsed >= self.window_ms {
            return None;
        }
        let t = elapsed as f64 / self.window_ms as f64;
        let ramp = if self.aggression == 1.0 { t } else { t.powf(1.0 / self.aggression) };
        Some(ramp.max(f64::from(self.min_weight_percent) / 100.0))
    }

    /// How often weights are recomputed while something ramps.
    pub fn step_ms(&self) -> u64 {
        (self.window_ms / 20).max(100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_with_a_floor() {
        let p = SlowStartPolicy { window_ms: 10_000, aggression: 1.0, min_weight_percent: 10 };
        assert_eq!(p.factor(0, 0), Some(0.1));
        assert_eq!(p.factor(0, 5_000), Some(0.5));
        assert_eq!(p.factor(1_000, 10_000), Some(0.9));
        assert_eq!(p.factor(0, 10_000), None);
        let aggressive = SlowStartPolicy { aggression: 2.0, ..p.clone() };
        let f = aggressive.factor(0, 2_500).unwrap();
        assert!((f - 0.5).abs() < 1e-9, "{f}");
    }
}
