//! Load-balancing filter: picks one endpoint per request and steers Envoy to it.
//!
//! For each request the filter finds the service (a header, `:authority` or a path route), picks one of
//! its endpoints with the configured algorithm — round robin, smooth weighted round robin, random,
//! weighted random, least request (power of two choices), ring hash or Maglev — and records `ip:port`
//! in Envoy filter state (`set_envoy_filter_state`, see [`steer`]), which an Envoy `ORIGINAL_DST`
//! cluster reads to connect there; no request header steers it. Responses feed passive health (outlier ejection, panic
//! mode) and the least-request counters. Endpoints come from the config or from the `discovery` filter
//! through shared data (see `meshwasm-endpoints`).
//!
//! The decisions live in plain modules, tested natively; the proxy-wasm glue is compiled for wasm32 only.
//!
//! ```
//! use std::rc::Rc;
//! use meshwasm_balancer::{config::Policy, service::ServiceBalancer};
//! use meshwasm_endpoints::{Endpoint, EndpointSet};
//!
//! let mut lb = ServiceBalancer::new(Rc::new(Policy::default()), 7);
//! let endpoints = vec![Endpoint::new("10.0.0.1:80".parse().unwrap()), Endpoint::new("10.0.0.2:80".parse().unwrap())];
//! lb.set_endpoints(EndpointSet { version: 1, endpoints }, 0);
//! let a = lb.pick(0, None).unwrap();
//! let b = lb.pick(0, None).unwrap();
//! assert_ne!(a.address, b.address); // round robin
//! ```

pub mod config;
pub mod endpoint_metrics;
pub mod hash;
pub mod least_request;
pub mod maglev;
pub mod outlier;
pub mod random;
pub mod request;
pub mod ring_hash;
pub mod rng;
pub mod round_robin;
pub mod service;
pub mod slow_start;
pub mod steer;
pub mod weighted;

#[cfg(test)]
mod stats;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
pub use glue::root_context;
