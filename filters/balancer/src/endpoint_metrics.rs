//! The per-endpoint `picks` counters of one service, bounded.
//!
//! proxy-wasm can define metrics but never remove one, so a counter per address ever seen would grow
//! without bound under registry churn (every pod restart is a new `ip:port`). The first `limit`
//! distinct endpoints of a service get their own counter; picks of any later endpoint are counted
//! in one shared `other` counter. Ids are cached, so a pick defines nothing after its first time.

use std::collections::HashMap;
use std::net::SocketAddr;

/// The label of the counter shared by endpoints past the limit.
pub const OTHER_LABEL: &str = "other";

/// Metric ids by endpoint, at most `limit` of them plus `other`.
#[derive(Debug)]
pub struct EndpointMetrics {
    limit: usize,
    ids: HashMap<SocketAddr, Option<u32>>,
    other: Option<Option<u32>>,
}

impl EndpointMetrics {
    pub fn new(limit: u32) -> Self {
        Self { limit: limit as usize, ids: HashMap::new(), other: None }
    }

    /// The counter for picks of `address`; `define(label)` defines a counter the first time a label
    /// is needed (`None` when the host refused it).
    pub fn id(&mut self, address: SocketAddr, define: impl FnOnce(&str) -> Option<u32>) -> Option<u32> {
        if let Some(id) = self.ids.get(&address) {
            return *id;
        }
        if self.ids.len() < self.limit {
            let id = define(&label(address));
            self.ids.insert(address, id);
            return id;
        }
        *self.other.get_or_insert_with(|| define(OTHER_LABEL))
    }

    /// How many counters were defined (own ones and `other`).
    pub fn defined(&self) -> usize {
        self.ids.len() + usize::from(self.other.is_some())
    }
}

/// `10.0.0.1:8080` → `10_0_0_1_8080`: stats names split on `.`, and `:` is not allowed everywhere.
pub fn label(address: SocketAddr) -> String {
    address.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
    }

    #[test]
    fn churn_defines_at_most_limit_plus_one_counters() {
        let mut m = EndpointMetrics::new(100);
        let mut defined: Vec<String> = Vec::new();
        // 10,000 endpoints come and go, each picked a few times while it is in the set.
        for i in 0..10_000 {
            for _ in 0..3 {
                let id = m.id(addr(i), |l| {
                    defined.push(l.to_owned());
                    Some(defined.len() as u32)
                });
                assert!(id.is_some());
            }
        }
        assert_eq!(defined.len(), 101);
        assert_eq!(m.defined(), 101);
        assert_eq!(defined[0], "10_0_0_0_8080");
        assert_eq!(defined[100], OTHER_LABEL);
        // An early endpoint keeps its own counter; a late one shares `other`.
        assert_eq!(m.id(addr(5), |_| panic!("defined again")), Some(6));
        assert_eq!(m.id(addr(9_999), |_| panic!("defined again")), Some(101));
    }

    #[test]
    fn limit_zero_counts_everything_in_other() {
        let mut m = EndpointMetrics::new(0);
        let mut n = 0;
        for i in 0..50 {
            m.id(addr(i), |l| {
                assert_eq!(l, OTHER_LABEL);
                n += 1;
                Some(1)
            });
        }
        assert_eq!((n, m.defined()), (1, 1));
    }

    #[test]
    fn labels() {
        assert_eq!(label("10.0.0.1:80".parse().unwrap()), "10_0_0_1_80");
        assert_eq!(label("[::1]:80".parse().unwrap()), "___1__80");
    }
}
