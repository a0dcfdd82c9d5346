//! Passive health checking (outlier ejection), after Envoy's outlier detection.
//!
//! A 5xx, reset or timeout counts as a failure; any other response resets the count. After
//! `consecutive_failures` failures in a row an endpoint is ejected for `base_ejection_time × times
//! ejected`, capped by `max_ejection_time`, unless that would eject more than `max_ejection_percent` of
//! the endpoints (at least one endpoint may always be ejected). The multiplier decays by one for every
//! `interval` the endpoint then stays in. Time is passed in (milliseconds on any monotonic clock).

/// Checked outlier-detection settings (see the README for defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejection_percent: u32,
    pub interval_ms: u64,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 10,
            interval_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostHealth {
    pub consecutive: u32,
    pub ejected_until: Option<u64>,
    pub times_ejected: u32,
    /// When the endpoint last came back (for the multiplier's decay).
    pub returned_at: u64,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Ejected { until: u64 },
}

#[derive(Debug, Clone, Default)]
pub struct Outlier {
    hosts: Vec<HostHealth>,
    ejected: usize,
    next_expiry: Option<u64>,
}

impl Outlier {
    pub fn new(len: usize) -> Self {
        Self { hosts: vec![HostHealth::default(); len], ejected: 0, next_expiry: None }
    }

    /// Rebuilds for a new endpoint list, keeping the state of endpoints that stay
    /// (`previous[i]` is the old index of new endpoint `i`).
    pub fn carried_over(&self, previous: &[Option<usize>]) -> Self {
        let hosts: Vec<HostHealth> =
            previous.iter().map(|p| p.and_then(|i| self.hosts.get(i).cloned()).unwrap_or_default()).collect();
        let ejected = hosts.iter().filter(|h| h.ejected_until.is_some()).count();
        let next_expiry = hosts.iter().filter_map(|h| h.ejected_until).min();
        Self { hosts, ejected, next_expiry }
    }

    pub fn is_ejected(&self, i: usize) -> bool {
        self.hosts.get(i).is_some_and(|h| h.ejected_until.is_some())
    }

    pub fn ejected_count(&self) -> usize {
        self.ejected
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.next_expiry
    }

    pub fn host(&self, i: usize) -> Option<&HostHealth> {
        self.hosts.get(i)
    }

    /// Records one response from endpoint `i`.
    pub fn record(&mut self, policy: &OutlierPolicy, i: usize, success: bool, now: u64) -> Change {
        let total = self.hosts.len();
        let allowed = ((total as u64 * u64::from(policy.max_ejection_percent)) / 100).max(1) as usize;
        let ejected = self.ejected;
        let Some(h) = self.hosts.get_mut(i) else { return Change::None };
        if h.ejected_until.is_some() {
            // Stragglers from before the ejection do not count.
            return Change::None;
        }
        if success {
            h.consecutive = 0;
            return Change::None;
        }
        h.consecutive = h.consecutive.saturating_add(1);
        if h.consecutive < policy.consecutive_failures || ejected >= allowed {
            return Change::None;
        }
        // Decay the multiplier by the intervals spent healthy since the last return.
        if h.times_ejected > 0 && policy.interval_ms > 0 {
            let healthy_intervals = now.saturating_sub(h.returned_at) / policy.interval_ms;
            h.times_ejected =
                h.times_ejected.saturating_sub(healthy_intervals.min(u64::from(u32::MAX)) as u32);
        }
        h.times_ejected = h.times_ejected.saturating_add(1);
        let duration = policy
            .base_ejection_ms
            .saturating_mul(u64::from(h.times_ejected))
            .min(policy.max_ejection_ms.max(policy.base_ejection_ms));
        let until = now.saturating_add(duration);
        h.ejected_until = Some(until);
        h.consecutive = 0;
        self.ejected += 1;
        self.next_expiry = Some(self.next_expiry.map_or(until, |e| e.min(until)));
        Change::Ejected { until }
    }

    /// Returns ejected endpoints whose time is up; calls `returned(i)` for each. Cheap unless something is due.
    pub fn expire(&mut self, now: u64, mut returned: impl FnMut(usize)) -> bool {
        match self.next_expiry {
            Some(t) if now >= t => {}
            _ => return false,
        }
        let mut next = None::<u64>;
        for (i, h) in self.hosts.iter_mut().enumerate() {
            match h.ejected_until {
                Some(until) if now >= until => {
                    h.ejected_until = None;
                    h.returned_at = now;
                    self.ejected -= 1;
                    returned(i);
                }
                Some(until) => next = Some(next.map_or(until, |n| n.min(until))),
                None => {}
            }
        }
        self.next_expiry = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail_n(o: &mut Outlier, p: &OutlierPolicy, i: usize, n: u32, now: u64) -> Change {
        let mut last = Change::None;
        for _ in 0..n {
            last = o.record(p, i, false, now);
        }
        last
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let p = OutlierPolicy::default();
        let mut o = Outlier::new(10);
        assert_eq!(fail_n(&mut o, &p, 2, 4, 0), Change::None);
        o.record(&p, 2, true, 0);
        assert_eq!(fail_n(&mut o, &p, 2, 4, 0), Change::None, "a success resets the count");
        assert_eq!(o.record(&p, 2, false, 0), Change::Ejected { until: 30_000 });
        assert!(o.is_ejected(2));
        assert_eq!(o.ejected_count(), 1);
    }

    #[test]
    fn ejection_time_grows_is_capped_and_returns_on_time() {
        let p = OutlierPolicy { max_ejection_ms: 70_000, interval_ms: 1_000_000, ..Default::default() };
        let mut o = Outlier::new(10);
        let mut now = 0;
        for expected in [30_000, 60_000, 70_000, 70_000] {
            assert_eq!(fail_n(&mut o, &p, 0, 5, now), Change::Ejected { until: now + expected });
            assert!(!o.expire(now + expected - 1, |_| {}) || o.is_ejected(0));
            assert!(o.is_ejected(0), "still out 1 ms before the end");
            let mut back = vec![];
            assert!(o.expire(now + expected, |i| back.push(i)));
            assert_eq!(back, vec![0]);
            assert!(!o.is_ejected(0));
            now += expected;
        }
    }

    #[test]
    fn multiplier_decays_while_healthy() {
        let p = OutlierPolicy::default();
        let mut o = Outlier::new(10);
        fail_n(&mut o, &p, 0, 5, 0);
        o.expire(30_000, |_| {});
        fail_n(&mut o, &p, 0, 5, 30_000);
        o.expire(90_000, |_| {});
        assert_eq!(o.host(0).unwrap().times_ejected, 2);
        // 20 s healthy = 2 intervals: back to 0, so the next ejection is the base time again.
        assert_eq!(fail_n(&mut o, &p, 0, 5, 110_000), Change::Ejected { until: 140_000 });
    }

    #[test]
    fn max_ejection_percent_with_at_least_one() {
        let p = OutlierPolicy::default(); // 10%
        let mut o = Outlier::new(5); // 10% of 5 = 0 → still one
        assert!(matches!(fail_n(&mut o, &p, 0, 5, 0), Change::Ejected { .. }));
        assert_eq!(fail_n(&mut o, &p, 1, 5, 0), Change::None);
        assert_eq!(o.ejected_count(), 1);
        let p = OutlierPolicy { max_ejection_percent: 50, ..Default::default() };
        let mut o = Outlier::new(4);
        for i in 0..4 {
            fail_n(&mut o, &p, i, 5, 0);
        }
        assert_eq!(o.ejected_count(), 2);
    }

    #[test]
    fn state_carries_over_by_endpoint() {
        let p = OutlierPolicy::default();
        let mut o = Outlier::new(3);
        fail_n(&mut o, &p, 2, 5, 0);
        let n = o.carried_over(&[Some(2), None]);
        assert!(n.is_ejected(0) && !n.is_ejected(1));
        assert_eq!((n.ejected_count(), n.next_expiry()), (1, Some(30_000)));
    }
}
