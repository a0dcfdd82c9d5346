//! Protocol fakes for registries that no package registry ships (Consul, Eureka, Nacos, the Kubernetes
//! API). Each follows the documented wire format, including blocking/long-poll semantics.

pub mod consul;
pub mod eureka;
pub mod kubernetes;
pub mod nacos;
pub mod server;
