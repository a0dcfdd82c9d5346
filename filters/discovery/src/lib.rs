//! meshwasm's `discovery` filter: finds each configured service's instances in a registry (etcd,
//! Consul, Eureka, Nacos, Kubernetes EndpointSlices), in DNS over HTTPS, or in a static list, and
//! publishes them as versioned endpoint sets in proxy-wasm shared data for the `balancer` filter
//! (format and keys: the `meshwasm-endpoints` crate).
//!
//! One VM per proxy polls (a CAS lease in shared data elects it; the others stand by and take over
//! when it stops renewing). Registry trouble never empties a service: errors, timeouts and garbage
//! keep the last good set, and an empty answer is published only with `allow_empty`.
//!
//! ```
//! use meshwasm_discovery::config::Plan;
//! let plan = Plan::from_json(br#"{"services": [
//!     {"name": "api", "refresh": "2s",
//!      "source": {"etcd": {"cluster": "etcd", "prefix": "/services/api/"}}},
//!     {"name": "web", "source": {"static": {"endpoints": [{"address": "10.0.0.1:8080", "weight": 2}]}}}
//! ]}"#).unwrap();
//! assert_eq!(plan.services[0].kind, "etcd");
//! ```
//!
//! Registries are not trusted: before anything is published, [`policy`] drops addresses that would
//! steer traffic to the proxy itself or to link-local services (cloud metadata), applies the
//! per-service CIDR lists and clamps weights.
//!
//! Layout: [`sources`] (one module per registry, wire format in and out), [`engine`] (schedule, keep
//! last good, screen, publish), [`policy`] and [`cidr`] (which addresses may be published),
//! [`lease`] (poller election), [`publish`] (shared-data contract), [`debug`] (who may read the debug
//! endpoint), [`host`] (the seam to the proxy); the proxy-wasm glue is compiled for wasm32 only.

pub mod cidr;
pub mod config;
pub mod debug;
pub mod engine;
pub mod host;
pub mod http;
pub mod lease;
pub mod policy;
pub mod publish;
pub mod sources;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
pub use glue::root_context;
