//! One service's balancer: the endpoint set at its current version, passive health, slow start, zone
//! preference and the algorithm's table, all rebuilt together only when something changes (a new
//! version, an ejection or return, a slow-start step), never per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use meshwasm_endpoints::{Endpoint, EndpointSet};

use crate::config::{Algorithm, Policy};
use crate::least_request::LeastRequest;
use crate::maglev::Maglev;
use crate::outlier::{Change, Outlier};
use crate::random::{Alias, uniform};
use crate::ring_hash::Ring;
use crate::rng::Rng;
use crate::round_robin::RoundRobin;
use crate::slow_start::SCALE;
use crate::weighted::WeightedRoundRobin;

/// The endpoint chosen for one request; hand it back to [`ServiceBalancer::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    pub address: SocketAddr,
    pub version: u64,
}

/// How the upstream request ended, as far as passive health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx, a reset or a timeout.
    Failure,
    /// Ended without telling anything about the endpoint (e.g. the client went away).
    Neutral,
}

/// Envoy response flags that mean the upstream failed: UT, UR, UF, UC.
pub const UPSTREAM_FAILURE_FLAGS: u64 = 0x4 | 0x10 | 0x20 | 0x40;

impl Outcome {
    /// How a picked request ended, as far as the picked endpoint is concerned. Only a response from
    /// that endpoint (`upstream` — Envoy's `upstream.address` — is the pick) or an upstream failure
    /// flag (connect failure, reset, timeout: Envoy may record no address then) counts; a local reply
    /// (another filter, a route error, a rejected request) says nothing about the endpoint and must not
    /// eject it.
    pub fn classify(
        picked: SocketAddr,
        upstream: Option<SocketAddr>,
        flags: u64,
        status: Option<u32>,
    ) -> Self {
        match upstream {
            Some(a) if a != picked => Outcome::Neutral,
            _ if flags & UPSTREAM_FAILURE_FLAGS != 0 => Outcome::Failure,
            None => Outcome::Neutral,
            Some(_) => match status {
                Some(s) if s >= 500 => Outcome::Failure,
                Some(_) => Outcome::Success,
                None => Outcome::Neutral,
            },
        }
    }
}

impl Outcome {
    /// How a picked request ended, from what its response gives, reading more only when it can change
    /// the answer: `status` is Envoy's `response.code`; `more` reads `response.flags` and
    /// `upstream.address` and is called only when `status` is not a plain answer (none, or 5xx).
    ///
    /// - A status below 500 is a success of the pick, with no further read: the balancer knows which
    ///   endpoint it picked, and Envoy's retries of the steered ORIGINAL_DST request reuse that
    ///   endpoint (the override comes from the request), so no retry moves it elsewhere. A later
    ///   filter's local reply below 500 (a 403, a 429) therefore also counts as a success, which can
    ///   only delay an ejection, never cause one; so does an upstream reset after a 1xx–4xx status was
    ///   sent (counted by that status).
    /// - No status, or 5xx: [`Outcome::classify`] with the flags and the upstream address, so that a
    ///   local 5xx (no upstream, no upstream-failure flag) never ejects an endpoint, and a connect
    ///   failure, reset or timeout does.
    pub fn from_response(
        picked: SocketAddr,
        status: Option<u32>,
        more: impl FnOnce() -> (u64, Option<SocketAddr>),
    ) -> Self {
        match status {
            Some(s) if (100..500).contains(&s) => Outcome::Success,
            _ => {
                let (flags, upstream) = more();
                Outcome::classify(picked, upstream, flags, status)
            }
        }
    }
}

/// Something worth a log line and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ejected { address: SocketAddr, for_ms: u64 },
    Returned { address: SocketAddr },
    PanicEntered { healthy: usize, total: usize },
    PanicExited,
}

/// No endpoint can be picked: answer 503 "no healthy upstream".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no healthy upstream")]
pub struct NoHealthyUpstream;

#[derive(Debug, Clone)]
enum Table {
    Empty,
    RoundRobin(RoundRobin),
    Weighted(WeightedRoundRobin),
    Random,
    WeightedRandom(Alias),
    LeastRequest(LeastRequest),
    Ring(Ring),
    Maglev(Maglev),
}

/// Addresses in 8 bytes each: IPv4 as `ip << 16 | port`; IPv6 as a flag bit plus an index into a side list.
#[derive(Debug, Default)]
struct Packed {
    words: Vec<u64>,
    v6: Vec<SocketAddr>,
}

const V6_FLAG: u64 = 1 << 63;

impl Packed {
    fn new(addrs: impl Iterator<Item = SocketAddr>) -> Self {
        let mut p = Self::default();
        for a in addrs {
            let word = match a {
                SocketAddr::V4(v4) => (u64::from(u32::from(*v4.ip())) << 16) | u64::from(v4.port()),
                SocketAddr::V6(_) => {
                    p.v6.push(a);
                    V6_FLAG | (p.v6.len() as u64 - 1)
                }
            };
            p.words.push(word);
        }
        p
    }

    fn get(&self, i: usize) -> Option<SocketAddr> {
        let w = *self.words.get(i)?;
        if w & V6_FLAG != 0 {
            return self.v6.get((w & !V6_FLAG) as usize).copied();
        }
        let ip = std::net::Ipv4Addr::from((w >> 16) as u32);
        Some(SocketAddr::from((ip, w as u16)))
    }
}

#[derive(Debug)]
pub struct ServiceBalancer {
    policy: Rc<Policy>,
    version: u64,
    initialized: bool,
    endpoints: Vec<Endpoint>,
    by_address: HashMap<SocketAddr, u32>,
    outlier: Outlier,
    /// Endpoint addresses packed into 8 bytes each (see [`Packed`]): a pick reads this rather than the
    /// much larger `endpoints`, which keeps picks cache-friendly at 10,000 endpoints.
    addresses: Packed,
    /// Requests in flight per endpoint (this worker only).
    active: Vec<u32>,
    /// When each endpoint's slow start began, while it lasts.
    ramp_since: Vec<Option<u64>>,
    /// Endpoint indices the table picks among.
    candidates: Vec<u32>,
    /// Effective weights of `candidates`.
    weights: Vec<u32>,
    table: Table,
    panic: bool,
    next_refresh: Option<u64>,
    rng: Rng,
    events: Vec<Event>,
}

impl ServiceBalancer {
    pub fn new(policy: Rc<Policy>, seed: u64) -> Self {
        Self {
            policy,
            version: 0,
            initialized: false,
            endpoints: Vec::new(),
            by_address: HashMap::new(),
            outlier: Outlier::new(0),
            addresses: Packed::default(),
            active: Vec::new(),
            ramp_since: Vec::new(),
            candidates: Vec::new(),
            weights: Vec::new(),
            table: Table::Empty,
            panic: false,
            next_refresh: None,
            rng: Rng::new(seed),
            events: Vec::new(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn in_panic(&self) -> bool {
        self.panic
    }

    pub fn is_ejected(&self, address: SocketAddr) -> bool {
        self.by_address.get(&address).is_some_and(|&i| self.outlier.is_ejected(i as usize))
    }

    pub fn active(&self, address: SocketAddr) -> u32 {
        self.by_address.get(&address).and_then(|&i| self.active.get(i as usize)).copied().unwrap_or(0)
    }

    /// Events since the last call, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// Installs a new endpoint set unless it is the version already in use; returns whether it changed.
    /// Health, in-flight counts and slow start carry over for endpoints that stay; endpoints that join an
    /// already-populated service start slow when slow start is configured.
    pub fn set_endpoints(&mut self, set: EndpointSet, now: u64) -> bool {
        if self.initialized && set.version == self.version {
            return false;
        }
        let mut endpoints = set.endpoints;
        // A registry could list an address twice; keep the first.
        let mut by_address = HashMap::with_capacity(endpoints.len());
        endpoints.retain(|e| {
            let fresh = !by_address.contains_key(&e.address);
            if fresh {
                by_address.insert(e.address, by_address.len() as u32);
            }
            fresh
        });
        let previous: Vec<Option<usize>> =
            endpoints.iter().map(|e| self.by_address.get(&e.address).map(|&i| i as usize)).collect();
        let ramping = self.initialized && self.policy.slow_start.is_some();
        self.outlier = self.outlier.carried_over(&previous);
        self.active =
            previous.iter().map(|p| p.and_then(|i| self.active.get(i).copied()).unwrap_or(0)).collect();
        self.ramp_since = previous
            .iter()
            .map(|p| match p {
                Some(i) => self.ramp_since.get(*i).copied().flatten(),
                None if ramping => Some(now),
                None => None,
            })
            .collect();
        self.addresses = Packed::new(endpoints.iter().map(|e| e.address));
        self.endpoints = endpoints;
        self.by_address = by_address;
        self.version = set.version;
        self.initialized = true;
        self.rebuild(now);
        true
    }

    /// Picks an endpoint. `hash` is the request's key hash for ring hash and Maglev (without one, they
    /// pick at random, as Envoy does).
    /// Whether [`Self::pick`] needs the current time: only while an ejection or a slow-start step is
    /// pending; otherwise any `now` gives the same pick and the caller need not read the clock.
    pub fn needs_clock(&self) -> bool {
        self.next_refresh.is_some()
    }

    pub fn pick(&mut self, now: u64, hash: Option<u64>) -> Result<Picked, NoHealthyUpstream> {
        if self.next_refresh.is_some_and(|t| now >= t) {
            self.refresh(now);
        }
        let len = self.candidates.len();
        if len == 0 {
            return Err(NoHealthyUpstream);
        }
        let pos = match &mut self.table {
            Table::Empty => None,
            Table::RoundRobin(rr) => Some(rr.pick(len)),
            Table::Weighted(w) => w.pick(),
            Table::Random => Some(uniform(len, &mut self.rng)),
            Table::WeightedRandom(a) => a.pick(&mut self.rng),
            Table::LeastRequest(lr) => {
                let (candidates, weights) = (&self.candidates, &self.weights);
                lr.pick(
                    len,
                    &mut self.rng,
                    &self.active,
                    |p| candidates.get(p).map_or(usize::MAX, |&i| i as usize),
                    |p| weights.get(p).copied().unwrap_or(1),
                )
            }
            Table::Ring(r) => match hash {
                Some(h) => r.pick(h),
                None => Some(uniform(len, &mut self.rng)),
            },
            Table::Maglev(m) => match hash {
                Some(h) => m.pick(h),
                None => Some(uniform(len, &mut self.rng)),
            },
        };
        // Every table is built over `candidates`, so its positions index that list, not the endpoints.
        let index = pos.and_then(|p| self.candidates.get(p)).map(|&i| i as usize);
        let index = index.ok_or(NoHealthyUpstream)?;
        let address = self.addresses.get(index).ok_or(NoHealthyUpstream)?;
        // In-flight counts matter only to least request; other algorithms skip the extra memory access.
        if self.policy.algorithm == Algorithm::LeastRequest
            && let Some(a) = self.active.get_mut(index)
        {
            *a = a.saturating_add(1);
        }
        Ok(Picked { index, address, version: self.version })
    }

    /// Reports how a picked request ended: releases its in-flight count and feeds passive health.
    pub fn complete(&mut self, picked: &Picked, outcome: Outcome, now: u64) {
        let index = if picked.version == self.version {
            Some(picked.index)
        } else {
            self.by_address.get(&picked.address).map(|&i| i as usize)
        };
        // The endpoint may have left the set since.
        let Some(index) = index.filter(|&i| self.addresses.get(i) == Some(picked.address)) else {
            return;
        };
        if self.policy.algorithm == Algorithm::LeastRequest
            && let Some(a) = self.active.get_mut(index)
        {
            *a = a.saturating_sub(1);
        }
        let Some(policy) = &self.policy.outlier else { return };
        let success = match outcome {
            Outcome::Success => true,
            Outcome::Failure => false,
            Outcome::Neutral => return,
        };
        if let Change::Ejected { until } = self.outlier.record(policy, index, success, now) {
            self.events.push(Event::Ejected { address: picked.address, for_ms: until.saturating_sub(now) });
            self.rebuild(now);
        }
    }

    /// Returns endpoints whose ejection is over and advances slow start, then rebuilds.
    fn refresh(&mut self, now: u64) {
        let mut returned = Vec::new();
        self.outlier.expire(now, |i| returned.push(i));
        for i in returned {
            if let Some(e) = self.endpoints.get(i) {
                self.events.push(Event::Returned { address: e.address });
            }
            if self.policy.slow_start.is_some()
                && let Some(r) = self.ramp_since.get_mut(i)
            {
                *r = Some(now);
            }
        }
        self.rebuild(now);
    }

    fn rebuild(&mut self, now: u64) {
        let policy = Rc::clone(&self.policy);
        let n = self.endpoints.len();
        let healthy = n - self.outlier.ejected_count().min(n);
        let threshold = u64::from(policy.panic_threshold_percent);
        let panic = n > 0 && (healthy as u64) * 100 < threshold * n as u64;
        if panic != self.panic {
            self.events.push(if panic {
                Event::PanicEntered { healthy, total: n }
            } else {
                Event::PanicExited
            });
            self.panic = panic;
        }
        self.candidates.clear();
        if panic {
            self.candidates.extend(0..n as u32);
        } else {
            self.candidates.extend((0..n as u32).filter(|&i| !self.outlier.is_ejected(i as usize)));
            if let Some(zone) = &policy.zone_aware {
                let in_zone = |i: usize| {
                    self.endpoints.get(i).and_then(|e| e.zone.as_deref()) == Some(&zone.local_zone)
                };
                let local_total = (0..n).filter(|&i| in_zone(i)).count() as u64;
                let local_healthy = self.candidates.iter().filter(|&&i| in_zone(i as usize)).count() as u64;
                if local_healthy > 0
                    && local_healthy * 100 >= u64::from(zone.min_healthy_percent) * local_total
                {
                    self.candidates.retain(|&i| in_zone(i as usize));
                }
            }
        }

        // Effective weights, with slow start.
        let mut ramping = false;
        if let Some(ss) = &policy.slow_start {
            for r in &mut self.ramp_since {
                if r.is_some_and(|since| ss.factor(since, now).is_none()) {
                    *r = None;
                }
                ramping |= r.is_some();
            }
        }
        let base = |e: &Endpoint| if policy.algorithm.uses_weights() { e.weight.max(1) } else { 1 };
        self.weights.clear();
        for &i in &self.candidates {
            let Some(e) = self.endpoints.get(i as usize) else { continue };
            let w = match (&policy.slow_start, ramping) {
                (Some(ss), true) => {
                    let f =
                        self.ramp_since.get(i as usize).copied().flatten().and_then(|s| ss.factor(s, now));
                    let scaled = f64::from(base(e)) * f64::from(SCALE) * f.unwrap_or(1.0);
                    (scaled.round() as u32).max(1)
                }
                _ => base(e),
            };
            self.weights.push(w);
        }

        let len = self.candidates.len();
        let equal = self.weights.windows(2).all(|w| w[0] == w[1]);
        self.table = if len == 0 {
            Table::Empty
        } else {
            match policy.algorithm {
                Algorithm::RoundRobin | Algorithm::WeightedRoundRobin if equal => match &self.table {
                    Table::RoundRobin(rr) => Table::RoundRobin(rr.rebuilt(len)),
                    _ => Table::RoundRobin(RoundRobin::new(len, &mut self.rng)),
                },
                Algorithm::RoundRobin | Algorithm::WeightedRoundRobin => {
                    Table::Weighted(WeightedRoundRobin::new(&self.weights, &mut self.rng))
                }
                Algorithm::Random | Algorithm::WeightedRandom if equal => Table::Random,
                Algorithm::Random | Algorithm::WeightedRandom => {
                    Table::WeightedRandom(Alias::new(&self.weights))
                }
                Algorithm::LeastRequest => Table::LeastRequest(LeastRequest::new(
                    &self.weights,
                    policy.choice_count,
                    policy.active_request_bias,
                )),
                Algorithm::RingHash | Algorithm::Maglev => {
                    let keys: Vec<String> = self
                        .candidates
                        .iter()
                        .filter_map(|&i| self.endpoints.get(i as usize).map(|e| e.address.to_string()))
                        .collect();
                    if policy.algorithm == Algorithm::RingHash {
                        Table::Ring(Ring::new(
                            &keys,
                            &self.weights,
                            policy.min_ring_size,
                            policy.max_ring_size,
                        ))
                    } else {
                        Table::Maglev(Maglev::new(&keys, &self.weights, policy.maglev_table_size))
                    }
                }
            }
        };

        let ramp_next = match &policy.slow_start {
            Some(ss) if ramping => Some(now + ss.step_ms()),
            _ => None,
        };
        self.next_refresh = match (self.outlier.next_expiry(), ramp_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
