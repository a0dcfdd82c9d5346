//! Test harness for meshwasm: starts real Envoy and the other real parts (etcd, unbound, an OpenID
//! Provider, backend servers, registry protocol fakes) on free loopback ports, and always cleans up.

pub mod artifacts;
pub mod backend;
pub mod conformance;
pub mod envoy;
pub mod etcd;
pub mod fakes;
pub mod oidc;
pub mod pki;
pub mod process;
pub mod schemas;
pub mod signer;
pub mod unbound;
